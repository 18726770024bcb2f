//! Endpoints given by host name, resolved by a name server the test runs
//! (UDP on loopback, answering A queries from a table the test changes):
//! every address of a name is an endpoint, a changed answer moves the
//! traffic within `dns.refresh`, a name server that stops answering keeps
//! the last addresses, and a weight change never waits on it.

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use support::dns::{name_server, upstreams_on, Zone};

/// 127.0.0.`last`.
fn ip(last: u8) -> IpAddr {
    support::dns::ip(0, last)
}

/// One route over `pools` (name → endpoints), the first the baseline, with
/// names resolved by `server` every 200 ms.
fn config(server: SocketAddr, pools: &[(&str, Vec<String>, i64)]) -> Value {
    let mut pool_map = serde_json::Map::new();
    let mut weights = serde_json::Map::new();
    for (name, endpoints, weight) in pools {
        pool_map.insert(name.to_string(), json!({ "endpoints": endpoints }));
        weights.insert(name.to_string(), json!(weight));
    }
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": pool_map,
        "routes": [{"name": "web", "split": {"baseline": pools[0].0, "weights": weights}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
        "dns": {"servers": [server.to_string()], "refresh": "200ms"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_name_is_an_endpoint_and_a_new_answer_moves_traffic() {
    let port = upstreams_on(&[ip(2), ip(3), ip(4)]).await;
    let zone = Zone::default();
    zone.set("svc.test", &[ip(2), ip(3)]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            &[("stable", vec![format!("svc.test:{port}")], 10_000)],
        ),
        None,
    );

    // Both addresses serve, by the pool's round robin.
    let seen = support::send_many(setup.proxy, "/", 200).await;
    assert_eq!(seen.get("127.0.0.2"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("127.0.0.3"), Some(&100), "{seen:?}");

    // The name moves: within a few refreshes every request goes there.
    zone.set("svc.test", &[ip(4)]);
    let moved = Instant::now();
    let client = support::client();
    let mut last = String::new();
    while moved.elapsed() < Duration::from_secs(5) {
        let (status, _, body) = support::get(&client, setup.proxy, "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        last = body;
        if last == "127.0.0.4" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, "127.0.0.4", "the new address never served");
    let seen = support::send_many(setup.proxy, "/", 100).await;
    assert_eq!(seen.get("127.0.0.4"), Some(&100), "{seen:?}");

    // The admin API shows the endpoint as configured, and what it
    // resolves to now.
    let (status, _, body) =
        support::admin_call(setup.admin, Method::GET, "/v1/routes/web", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let route: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        route["pools"]["stable"]["endpoints"],
        json!([{
            "address": format!("svc.test:{port}"),
            "weight": 1,
            "resolved": [format!("127.0.0.4:{port}")],
        }]),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_that_fails_keeps_the_last_addresses_and_weights_still_change() {
    let port = upstreams_on(&[ip(2)]).await;
    let stable = support::upstream("stable").await;
    let zone = Zone::default();
    zone.set("canary.test", &[ip(2)]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            &[
                ("stable", vec![stable.addr.to_string()], 5_000),
                ("canary", vec![format!("canary.test:{port}")], 5_000),
            ],
        ),
        None,
    );
    let seen = support::send_many(setup.proxy, "/", 200).await;
    assert!(seen.get("127.0.0.2").is_some_and(|n| *n > 50), "{seen:?}");

    // SERVFAIL from now on; wait until the proxy has asked again, twice.
    zone.failing.store(true, Ordering::SeqCst);
    let asked = zone.asked_for("canary.test").len();
    assert!(
        support::eventually(Duration::from_secs(5), || {
            zone.asked_for("canary.test").len() >= asked + 2
        })
        .await,
        "the name was not asked again"
    );
    let seen = support::send_many(setup.proxy, "/", 200).await;
    assert_eq!(
        seen.values().sum::<usize>(),
        200,
        "every request answered: {seen:?}"
    );
    assert!(seen.get("127.0.0.2").is_some_and(|n| *n > 50), "{seen:?}");

    // A weight change builds a table from the addresses known: it neither
    // waits on the failing name server nor fails with it.
    let started = Instant::now();
    let body = json!({"weights": {"stable": 0, "canary": 10_000}}).to_string();
    let (status, _, answer) = support::admin_call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the weight change took {:?}",
        started.elapsed()
    );
    let seen = support::send_many(setup.proxy, "/", 50).await;
    assert_eq!(seen.get("127.0.0.2"), Some(&50), "{seen:?}");
}

#[tokio::test]
async fn check_resolves_names_with_the_configured_name_servers() {
    let zone = Zone::default();
    zone.set("svc.test", &[ip(2)]);
    let server = name_server(zone.clone()).await;
    let dir = support::scratch_dir("dns-check");
    let write = |file: &str, endpoint: &str| {
        let text = serde_json::to_string_pretty(&config(
            server,
            &[("stable", vec![endpoint.into()], 10_000)],
        ))
        .expect("json");
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write");
        path
    };

    let good = write("good.json", "svc.test:8080");
    let checked = tokio::task::spawn_blocking(move || support::check_file(&good))
        .await
        .expect("check");
    assert!(checked.0, "{checked:?}");
    assert!(
        checked.1.contains(&format!(
            "endpoint names (svc.test:8080) resolved by name servers {server}"
        )),
        "{checked:?}"
    );

    // NXDOMAIN from the configured server, though the system's resolver
    // would not be asked at all: refused at the endpoint's line.
    let bad = write("bad.json", "nowhere.test:8080");
    let text = std::fs::read_to_string(&bad).expect("read");
    let line = text
        .lines()
        .position(|l| l.contains("nowhere.test"))
        .expect("the endpoint's line")
        + 1;
    let checked = tokio::task::spawn_blocking(move || support::check_file(&bad))
        .await
        .expect("check");
    assert!(!checked.0, "{checked:?}");
    assert!(
        checked.2.contains(&format!("bad.json:{line}:")) && checked.2.contains("does not resolve"),
        "{checked:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
