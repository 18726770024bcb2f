//! Hot reload of the real binary: a valid edit of the config file takes
//! effect, an invalid one keeps the running table and is recorded with its
//! line, SIGHUP re-reads the file, and no request fails meanwhile.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

async fn get_json(client: &support::HttpClient, admin: SocketAddr, path: &str) -> Value {
    let (_, _, body) = support::get(client, admin, path, &[]).await;
    serde_json::from_str(&body).expect("JSON")
}

/// Replaces the file the way config managers do: write aside, then rename.
fn replace_file(path: &Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

async fn events_of_kind(client: &support::HttpClient, admin: SocketAddr, kind: &str) -> Vec<Value> {
    let events = get_json(client, admin, "/v1/events").await;
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reload_and_bad_edits_are_refused_without_a_failed_request() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = std::env::temp_dir().join(format!("switchyard-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    let config = |stable_bp: i64| {
        serde_json::to_string_pretty(&support::split_config(
            &[(&stable, stable_bp), (&canary, 10_000 - stable_bp)],
            json!({}),
        ))
        .expect("json")
    };
    std::fs::write(&file, config(10_000)).expect("config");
    let state = dir.join("state");
    let (child, proxy, admin) = support::start_binary(&[
        "run",
        "--config",
        file.to_str().expect("utf-8"),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().expect("utf-8"),
    ])
    .await;

    let running = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let running = running.clone();
        let served = served.clone();
        load.push(tokio::spawn(async move {
            let client = support::client();
            while running.load(Ordering::Relaxed) {
                let (status, _, body) = support::get(&client, proxy, "/", &[]).await;
                assert_eq!(status, 200, "a request failed during a reload: {body}");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let client = support::client();
    // A valid edit: everything to the canary.
    replace_file(&file, &config(0));
    let routes = support::poll_for(
        Duration::from_secs(10),
        || get_json(&client, admin, "/v1/routes/web"),
        |r| r["weights"]["canary"] == 10_000,
    )
    .await;
    assert_eq!(
        routes["weights"]["canary"], 10_000,
        "the edit never took effect"
    );
    assert_eq!(
        support::send_many(proxy, "/", 20).await.get("canary"),
        Some(&20)
    );
    assert_eq!(
        events_of_kind(&client, admin, "config_reload").await.len(),
        1
    );

    // An invalid edit: weights that do not sum, on a known line.
    let before = get_json(&client, admin, "/v1/routes").await;
    let broken = config(0).replace("\"canary\": 10000", "\"canary\": 9000");
    assert_ne!(broken, config(0));
    replace_file(&file, &broken);
    let rejected = support::poll_for(
        Duration::from_secs(10),
        || events_of_kind(&client, admin, "config_rejected"),
        |r| !r.is_empty(),
    )
    .await;
    assert_eq!(rejected.len(), 1, "the bad edit was not recorded");
    let reason = rejected[0]["reason"].as_str().expect("reason");
    let line = broken
        .lines()
        .position(|l| l.contains("\"weights\""))
        .expect("weights line")
        + 1;
    assert!(
        reason.contains(&format!("config.json:{line}:")) && reason.contains("sum to 9000"),
        "{reason}"
    );
    assert_eq!(
        get_json(&client, admin, "/v1/routes").await,
        before,
        "the bad edit changed the table"
    );

    // SIGHUP re-reads the file (still broken: a second rejection).
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -HUP {pid}")])
        .status()
        .expect("kill");
    assert!(status.success());
    let rejected = support::poll_for(
        Duration::from_secs(10),
        || events_of_kind(&client, admin, "config_rejected"),
        |r| r.len() == 2,
    )
    .await;
    assert_eq!(rejected.len(), 2, "SIGHUP did not re-read the file");

    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    assert!(served.load(Ordering::Relaxed) > 50, "too little load");
}

#[tokio::test]
async fn put_config_replaces_the_file_and_bad_configs_change_nothing() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = std::env::temp_dir().join(format!("switchyard-putconfig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    let config = |stable_bp: i64| {
        support::split_config(
            &[(&stable, stable_bp), (&canary, 10_000 - stable_bp)],
            json!({}),
        )
    };
    std::fs::write(&file, config(10_000).to_string()).expect("config");
    let (_child, proxy, admin) = support::start_on_config(&file).await;
    let put = |body: String| support::put_config(admin, body);

    let (status, body) = put(serde_json::to_string_pretty(&config(0)).expect("json")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["routes"][0]["weights"]["canary"], 10_000);
    assert_eq!(
        support::send_many(proxy, "/", 20).await.get("canary"),
        Some(&20)
    );
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    assert_eq!(on_disk, config(0), "the file was not replaced");
    let client = support::client();
    let reloads = events_of_kind(&client, admin, "config_reload").await;
    assert!(
        reloads
            .iter()
            .all(|e| !e["reason"].as_str().unwrap_or_default().contains("restart")),
        "{reloads:?}"
    );

    let broken = serde_json::to_string_pretty(&config(0))
        .expect("json")
        .replace("\"canary\": 10000", "\"canary\": 10");
    let (status, body) = put(broken).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(body["error"]["field"], "routes[0].split.weights");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("sum to 10 basis points"));
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    assert_eq!(on_disk, config(0), "a refused config touched the file");
    assert_eq!(
        support::send_many(proxy, "/", 20).await.get("canary"),
        Some(&20)
    );
}

#[tokio::test]
async fn state_wins_over_file_weights_and_removed_routes_drop_their_state() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = std::env::temp_dir().join(format!("switchyard-precedence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    let route = |name: &str, host: &str, stable_bp: i64| {
        json!({"name": name, "match": {"host": host},
               "split": {"baseline": "stable", "weights": {"stable": stable_bp, "canary": 10_000 - stable_bp}}})
    };
    let config = |routes: Vec<Value>| {
        json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"stable": {"endpoints": [stable.addr.to_string()]},
                      "canary": {"endpoints": [canary.addr.to_string()]}},
            "routes": routes,
        })
        .to_string()
    };
    std::fs::write(
        &file,
        config(vec![
            route("web", "web", 10_000),
            route("old", "old", 10_000),
        ]),
    )
    .expect("write");
    let state = dir.join("state");
    let (_child, _proxy, admin) = support::start_binary(&[
        "run",
        "--config",
        file.to_str().expect("utf-8"),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().expect("utf-8"),
    ])
    .await;
    let client = support::client();
    for name in ["web", "old"] {
        let request = http::Request::put(format!("http://{admin}/v1/routes/{name}/weights"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"weights": {"stable": 5000, "canary": 5000}}).to_string(),
            )))
            .expect("request");
        assert_eq!(
            client.request(request).await.expect("response").status(),
            200
        );
    }

    // The file now gives web other weights, drops old, adds new.
    replace_file(
        &file,
        &config(vec![route("web", "web", 9000), route("new", "new", 2000)]),
    );
    let routes = support::poll_for(
        Duration::from_secs(10),
        || get_json(&client, admin, "/v1/routes"),
        |routes| {
            routes["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == "new"))
        },
    )
    .await;
    let by_name = |name: &str| {
        routes["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
    };
    let web = by_name("web").expect("web stays");
    assert_eq!(
        web["weights"],
        json!({"stable": 5000, "canary": 5000}),
        "the API's weights must win"
    );
    let new = by_name("new").expect("new route loaded");
    assert_eq!(
        new["weights"],
        json!({"stable": 2000, "canary": 8000}),
        "a new route starts at its configured weights"
    );
    assert!(by_name("old").is_none(), "removed route still served");
    let dropped = events_of_kind(&client, admin, "state_dropped").await;
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["route"], "old");
    // And the state file agrees: old's state is gone.
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).expect("state"))
            .expect("json");
    assert!(saved["routes"].get("old").is_none(), "{saved}");
    assert_eq!(saved["routes"]["web"]["weights"]["canary"], 5000);
}

#[tokio::test]
async fn a_reload_adds_and_removes_listeners_and_a_taken_address_changes_nothing() {
    let stable = support::upstream("stable").await;
    let dir = std::env::temp_dir().join(format!("switchyard-listeners-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    let with_listeners = |addresses: &[String]| {
        let mut config = support::split_config(&[(&stable, 10_000)], json!({}));
        let listeners: Vec<Value> = addresses.iter().map(|a| json!({"address": a})).collect();
        config["listeners"] = json!(listeners);
        serde_json::to_string_pretty(&config).expect("json")
    };
    let first = format!("127.0.0.1:{}", support::free_port());
    std::fs::write(&file, with_listeners(std::slice::from_ref(&first))).expect("config");
    let (_child, first_addr, admin) = support::start_on_config(&file).await;
    let put = |body: String| support::put_config(admin, body);

    // A second listener: bound before the call returns, and it answers.
    let second = format!("127.0.0.1:{}", support::free_port());
    let (status, body) = put(with_listeners(&[first.clone(), second.clone()])).await;
    assert_eq!(status, 200, "{body}");
    let second_addr: SocketAddr = second.parse().expect("address");
    assert_eq!(
        support::send_many(second_addr, "/", 5).await.get("stable"),
        Some(&5)
    );
    assert_eq!(
        support::send_many(first_addr, "/", 5).await.get("stable"),
        Some(&5)
    );

    // The first goes: no new connections there, but one it accepted is
    // served on to its end.
    let mut open = tokio::net::TcpStream::connect(first_addr)
        .await
        .expect("connect");
    let mut buf = Vec::new();
    assert_eq!(support::get_on(&mut open, &mut buf).await.status, 200);
    let (status, body) = put(with_listeners(std::slice::from_ref(&second))).await;
    assert_eq!(status, 200, "{body}");
    let closed = support::eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(first_addr).is_err()
    })
    .await;
    assert!(closed, "{first_addr} still accepts connections");
    assert_eq!(support::get_on(&mut open, &mut buf).await.status, 200);
    assert_eq!(
        support::send_many(second_addr, "/", 5).await.get("stable"),
        Some(&5)
    );

    // An address someone else holds: refused with the reason, and nothing
    // changes, neither the listeners (a free address in the same reload
    // is not bound either) nor the file.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let fresh = format!("127.0.0.1:{}", support::free_port());
    let listed = [second.clone(), fresh.clone(), taken.clone()];
    let (status, body) = put(with_listeners(&listed)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "listener_unavailable");
    assert_eq!(body["error"]["field"], "listeners");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(&taken), "{message}");
    assert!(
        std::net::TcpStream::connect(&fresh).is_err(),
        "{fresh} was bound"
    );
    let on_disk = std::fs::read_to_string(&file).expect("read");
    assert_eq!(on_disk, with_listeners(std::slice::from_ref(&second)));
    assert_eq!(
        support::send_many(second_addr, "/", 5).await.get("stable"),
        Some(&5)
    );
    let client = support::client();
    let rejected = events_of_kind(&client, admin, "config_rejected").await;
    let last = rejected.last().expect("a rejection event");
    assert!(
        last["reason"].as_str().is_some_and(|r| r.contains(&taken)),
        "{last}"
    );
    drop(holder);

    // The same port on another address of this host: bound beside ours,
    // which then closes (the probe for strangers would have refused it).
    let wider = format!("0.0.0.0:{}", second_addr.port());
    let (status, body) = put(with_listeners(std::slice::from_ref(&wider))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        support::send_many(second_addr, "/", 5).await.get("stable"),
        Some(&5)
    );
}

#[tokio::test]
async fn a_config_rotated_like_a_kubernetes_config_map_reloads_each_time() {
    // Kubernetes' atomic writer: config.json is a symlink through `..data`
    // to a timestamped directory; a rotation writes a new directory, swaps
    // `..data` by a rename and deletes the old directory.
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = std::env::temp_dir().join(format!("switchyard-configmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = |canary_bp: i64| {
        let pools = [(&stable, 10_000 - canary_bp), (&canary, canary_bp)];
        support::split_config(&pools, json!({})).to_string()
    };
    let rotate = |generation, text: String| {
        support::kubernetes_write(&dir, generation, &[("config.json", text.as_bytes())]);
    };
    rotate(0, config(0));
    let file = dir.join("config.json");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;
    assert_eq!(
        support::send_many(proxy, "/", 10).await.get("stable"),
        Some(&10)
    );

    for (generation, (canary_bp, pool)) in [(10_000, "canary"), (0, "stable")].iter().enumerate() {
        rotate(generation + 1, config(*canary_bp));
        let counts = support::poll_for(
            Duration::from_secs(10),
            || support::send_many(proxy, "/", 10),
            |counts| counts.get(*pool) == Some(&10),
        )
        .await;
        assert_eq!(
            counts.get(*pool),
            Some(&10),
            "rotation {} not applied",
            generation + 1
        );
    }
}
