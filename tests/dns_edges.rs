//! Endpoint-name edges, from a review, each against a name server the
//! test runs: many addresses (TCP after a truncated answer), AAAA-only
//! names, the refresh interval, a silent name beside a moving one, a
//! reload racing a refresh, a weight change during a slow reload, and
//! `check` against a silent server.

use crate::support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use support::dns::{ip, name_server, upstream_on, upstreams_on, Zone};

fn config(server: SocketAddr, refresh: &str, pools: &[(&str, Vec<String>, i64)]) -> Value {
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
        "dns": {"servers": [server.to_string()], "refresh": refresh},
    })
}

async fn resolved(admin: SocketAddr, pool: &str) -> Vec<Value> {
    let (status, _, body) =
        support::admin_call(admin, Method::GET, "/v1/routes/web", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let route: Value = serde_json::from_str(&body).expect("not poisoned");
    route["pools"][pool]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// 60 A records: over 512 bytes, so the UDP answer is truncated and the
/// name is asked again over TCP. Every address is an endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_many_addresses_is_asked_over_tcp_and_all_serve() {
    let ips: Vec<IpAddr> = (1..=60).map(|i| ip(7, i)).collect();
    let port = upstreams_on(&ips).await;
    let zone = Zone::default();
    zone.set("many.test", &ips);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            "5s",
            &[("stable", vec![format!("many.test:{port}")], 10_000)],
        ),
        None,
    );
    let endpoints = resolved(setup.admin, "stable").await;
    assert_eq!(
        endpoints[0]["resolved"].as_array().map(Vec::len),
        Some(60),
        "{endpoints:?}"
    );
    assert!(zone.tcp.load(Ordering::SeqCst) >= 1, "asked over TCP");
    let seen = support::send_many(setup.proxy, "/", 120).await;
    assert_eq!(seen.len(), 60, "{seen:?}");
}

/// Small answers: README says UDP, TCP only when an answer is truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_answers_are_asked_over_udp_only_and_once_per_refresh() {
    let port = upstreams_on(&[ip(8, 2)]).await;
    let zone = Zone::default();
    zone.set("one.test", &[ip(8, 2)]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            "500ms",
            &[("stable", vec![format!("one.test:{port}")], 10_000)],
        ),
        None,
    );
    let start = Instant::now();
    let base = zone.asked_for("one.test").len();
    assert!(
        support::eventually(Duration::from_secs(10), || zone.asked_for("one.test").len()
            >= base + 6)
        .await,
        "refreshes happen"
    );
    let elapsed = start.elapsed();
    let asked = zone.asked_for("one.test").len() - base;
    // 500 ms refresh: 6 questions need ≥ ~2.5 s (one per round).
    assert!(
        elapsed >= Duration::from_millis(2000),
        "{asked} questions in {elapsed:?}"
    );
    assert_eq!(
        zone.tcp.load(Ordering::SeqCst),
        0,
        "TCP connections for small answers"
    );
    let _ = setup;
}

/// A name with only AAAA records resolves to its IPv6 addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aaaa_only_name_resolves_to_ipv6() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let port = upstream_on(v6, 0).await.expect("[::1] bind");
    let zone = Zone::default();
    zone.set("six.test", &[v6]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            "5s",
            &[("stable", vec![format!("six.test:{port}")], 10_000)],
        ),
        None,
    );
    let endpoints = resolved(setup.admin, "stable").await;
    assert_eq!(
        endpoints[0]["resolved"],
        json!([format!("[::1]:{port}")]),
        "{endpoints:?}"
    );
    let client = support::client();
    let (status, _, body) = support::get(&client, setup.proxy, "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "::1"));
}

// Names were once asked one after another, so a silent name held up the
// round: a moved name was seen after ~12 s with a 200 ms refresh. Now each
// name gets the refresh interval (a second at least) per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_name_does_not_hold_up_another_names_refresh() {
    let port = upstreams_on(&[ip(9, 2), ip(9, 3), ip(9, 4)]).await;
    let zone = Zone::default();
    // "a..." sorts first, whatever order names are asked in; both tried.
    zone.set("a-silent.test", &[ip(9, 4)]);
    zone.set("moving.test", &[ip(9, 2)]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            "200ms",
            &[(
                "stable",
                vec![
                    format!("a-silent.test:{port}"),
                    format!("moving.test:{port}"),
                ],
                10_000,
            )],
        ),
        None,
    );
    zone.silent
        .lock()
        .expect("not poisoned")
        .insert("a-silent.test".into());
    let asked = zone.asked_for("a-silent.test").len();
    assert!(
        support::eventually(Duration::from_secs(5), || zone
            .asked_for("a-silent.test")
            .len()
            > asked)
        .await,
        "the silent name asked again"
    );
    zone.set("moving.test", &[ip(9, 3)]);
    let moved = Instant::now();
    let mut seen_new = false;
    while moved.elapsed() < Duration::from_secs(30) {
        let endpoints = resolved(setup.admin, "stable").await;
        if endpoints
            .iter()
            .any(|e| e["resolved"] == json!([format!("127.0.9.3:{port}")]))
        {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = moved.elapsed();
    assert!(
        seen_new,
        "never moved in {took:?}; silent name asked {} times",
        zone.asked_for("a-silent.test").len()
    );
    // At most a round under way (1 s), the 200 ms pause, and a round.
    assert!(
        took < Duration::from_secs(3),
        "the moved name took {took:?} with a 200 ms refresh"
    );
}

/// A refresh in flight (its answer slow) while a reload removes the name:
/// the late answer must not bring the name's addresses back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_name_wins_over_a_refresh_in_flight() {
    let port = upstreams_on(&[ip(10, 2), ip(10, 3)]).await;
    let stable = support::upstream("stable").await;
    let zone = Zone::default();
    zone.set("gone.test", &[ip(10, 2)]);
    let server = name_server(zone.clone()).await;
    let first = config(
        server,
        "100ms",
        &[("stable", vec![format!("gone.test:{port}")], 10_000)],
    );
    let dir = support::scratch_dir("dnsr-reload");
    let file = dir.join("config.json");
    std::fs::write(&file, first.to_string()).expect("not poisoned");
    let (_child, proxy, admin) = support::start_on_config(&file).await;
    let client = support::client();
    let (status, _, body) = support::get(&client, proxy, "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "127.0.10.2"));
    // From now on the name's answers are slow, and then say 127.0.10.3.
    zone.slow
        .lock()
        .expect("not poisoned")
        .insert("gone.test".into(), Duration::from_millis(1500));
    zone.set("gone.test", &[ip(10, 3)]);
    let asked = zone.asked_for("gone.test").len();
    assert!(
        support::eventually(Duration::from_secs(5), || zone.asked_for("gone.test").len()
            > asked)
        .await,
        "a refresh is in flight"
    );
    let second = config(
        server,
        "100ms",
        &[("stable", vec![stable.addr.to_string()], 10_000)],
    );
    let (status, answer) = support::put_config(admin, second.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    // Past the slow answer, and a few rounds more.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (status, _, body) = support::get(&client, proxy, "/", &[]).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoints = resolved(admin, "stable").await;
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["address"], stable.addr.to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `switchyard check` against a name server that never answers fails,
/// names the endpoint, and does not hang.
#[tokio::test]
async fn check_with_a_silent_name_server_fails_in_bounded_time() {
    let zone = Zone::default();
    zone.set("svc.test", &[ip(11, 2)]);
    zone.silent
        .lock()
        .expect("not poisoned")
        .insert("svc.test".into());
    let server = name_server(zone.clone()).await;
    let dir = support::scratch_dir("dnsr-check");
    let path = dir.join("c.json");
    let text = serde_json::to_string_pretty(&config(
        server,
        "5s",
        &[("stable", vec!["svc.test:8080".into()], 10_000)],
    ))
    .expect("not poisoned");
    std::fs::write(&path, &text).expect("not poisoned");
    let line = text
        .lines()
        .position(|l| l.contains("svc.test"))
        .expect("not poisoned")
        + 1;
    let started = Instant::now();
    let checked = tokio::task::spawn_blocking(move || support::check_file(&path))
        .await
        .expect("not poisoned");
    assert!(!checked.0, "{checked:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        checked.2.contains(&format!("c.json:{line}:")) && checked.2.contains("does not resolve"),
        "{checked:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Control for the test above: with no silent name, a moved name is seen
/// within a few 200 ms refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_name_is_seen_within_a_few_refreshes() {
    let port = upstreams_on(&[ip(12, 2), ip(12, 3), ip(12, 4)]).await;
    let zone = Zone::default();
    zone.set("other.test", &[ip(12, 4)]);
    zone.set("moving.test", &[ip(12, 2)]);
    let server = name_server(zone.clone()).await;
    let setup = support::admin_setup(
        &config(
            server,
            "200ms",
            &[(
                "stable",
                vec![format!("other.test:{port}"), format!("moving.test:{port}")],
                10_000,
            )],
        ),
        None,
    );
    zone.set("moving.test", &[ip(12, 3)]);
    let moved = Instant::now();
    let mut seen_new = false;
    while moved.elapsed() < Duration::from_secs(10) {
        let endpoints = resolved(setup.admin, "stable").await;
        if endpoints
            .iter()
            .any(|e| e["resolved"] == json!([format!("127.0.12.3:{port}")]))
        {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen_new && moved.elapsed() < Duration::from_secs(2),
        "{:?}",
        moved.elapsed()
    );
}

// A reload once resolved its names holding the control plane's lock, so a
// weight change made meanwhile waited on the name server (1.5 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_does_not_wait_on_a_reloads_slow_name_server() {
    let port = upstreams_on(&[ip(13, 2)]).await;
    let stable = support::upstream("stable").await;
    let zone = Zone::default();
    zone.set("slow.test", &[ip(13, 2)]);
    let server = name_server(zone.clone()).await;
    let first = config(
        server,
        "300s",
        &[
            ("stable", vec![stable.addr.to_string()], 5_000),
            ("canary", vec![format!("slow.test:{port}")], 5_000),
        ],
    );
    let dir = support::scratch_dir("dnsr-weights");
    let file = dir.join("config.json");
    std::fs::write(&file, first.to_string()).expect("not poisoned");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;
    zone.slow
        .lock()
        .expect("not poisoned")
        .insert("slow.test".into(), Duration::from_millis(1500));
    let asked = zone.asked_for("slow.test").len();
    let mut second = first.clone();
    second["timeouts"]["connect"] = json!("3s");
    let reload = tokio::spawn(support::put_config(admin, second.to_string()));
    assert!(
        support::eventually(Duration::from_secs(5), || zone.asked_for("slow.test").len()
            > asked)
        .await,
        "the reload asks the name"
    );
    let started = Instant::now();
    let body = json!({"weights": {"stable": 0, "canary": 10_000}}).to_string();
    let (status, _, answer) = support::admin_call(
        admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    let took = started.elapsed();
    let (reloaded, reload_answer) = reload.await.expect("not poisoned");
    assert_eq!(reloaded, 200, "{reload_answer}");
    assert!(
        status == 200 || status == 409 || status == 412,
        "{status} {answer}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the weight change took {took:?} (status {status})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
