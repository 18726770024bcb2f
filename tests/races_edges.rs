//! Races and ordering bugs in the control plane, from a review: the admin
//! API, the rollout driver, the evaluator's automatic fallback and config
//! reloads acting on one route at once. Each test states the invariant
//! that must hold for every interleaving, forces the interleaving that
//! breaks it (without sleeps: a reload held inside the control plane's
//! lock by a listener hook, or a gate that waits to be released), and
//! failed on the code it was written against.
//!
//! Every test uses a route name of its own: the data plane's latency
//! histograms are process-wide, keyed by route and pool.

use crate::support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A config of one route `route` over `pools` (name, address, weight);
/// the first pool is the baseline.
fn route_config(route: &str, pools: &[(&str, SocketAddr, i64)]) -> Value {
    let mut pool_map = serde_json::Map::new();
    let mut weights = serde_json::Map::new();
    for (name, addr, weight) in pools {
        pool_map.insert(name.to_string(), json!({"endpoints": [addr.to_string()]}));
        weights.insert(name.to_string(), json!(weight));
    }
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": pool_map,
        "routes": [{"name": route, "split": {"baseline": pools[0].0, "weights": weights}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

/// The same config with the data plane listening elsewhere: a reload of
/// it calls the listener hook, inside the control plane's lock.
fn with_moved_listener(mut config: Value) -> Value {
    let port = support::free_port();
    config["listeners"] = json!([{"address": format!("127.0.0.1:{port}")}]);
    config
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let (_, _, body) = support::get(&support::client(), admin, path, &[]).await;
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {path}: {body}"))
}

async fn events(admin: SocketAddr) -> Vec<Value> {
    get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .clone()
}

async fn events_of(admin: SocketAddr, kind: &str) -> Vec<Value> {
    events(admin)
        .await
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

async fn admin_request(
    admin: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !text.is_empty() {
        all.push(("content-type", "application/json"));
    }
    let (status, headers, body) = support::admin_call(admin, method, path, &all, &text).await;
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, headers, value)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-races-review-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write_config(path: &Path, config: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(config).expect("json")).expect("write");
}

/// Holds the next reload that changes the listeners inside the control
/// plane's lock (its listener hook runs there, after the table is built
/// and before anything is persisted or swapped), as a slow rebind or a
/// slow disk would. `entered` says it is held; a send on `release` lets
/// it go on.
struct HeldReload {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn hold_next_listener_change(plane: &switchyard_admin::ControlPlane) -> HeldReload {
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let armed = AtomicBool::new(true);
    let entered_tx = Mutex::new(entered_tx);
    let release_rx = Mutex::new(release_rx);
    plane.set_listener_hook(Box::new(move |_config| {
        if armed.swap(false, Ordering::SeqCst) {
            let _ = entered_tx.lock().expect("not poisoned").send(());
            let _ = release_rx
                .lock()
                .expect("not poisoned")
                .recv_timeout(Duration::from_secs(20));
        }
        Ok(Box::new(|| {}) as switchyard_admin::ListenerCommit)
    }));
    HeldReload { entered, release }
}

/// Reloads `path` on a thread of its own with its own runtime, as the
/// config watch and SIGHUP do.
fn reload_on_thread(
    plane: Arc<switchyard_admin::ControlPlane>,
    path: PathBuf,
) -> std::thread::JoinHandle<Result<Option<u64>, String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(plane.reload(&path, "config-reload"))
            .map_err(|e| e.to_string())
    })
}

/// Waits (on a blocking thread) until the held reload is inside the lock.
async fn wait_entered(held: &HeldReload) {
    tokio::task::block_in_place(|| {
        held.entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the reload reached the listener hook")
    });
}

/// Polls the evaluator's board until `pool` of `route` has a verdict: an
/// arm's S at or over the threshold (the evaluator then calls
/// `fall_back`, which waits for the lock).
async fn wait_for_verdict(api: &switchyard_admin::AdminApi, route: &str, pool: &str) -> Value {
    let board = api.board().clone();
    let status = support::poll_for(
        Duration::from_secs(10),
        || {
            let board = board.clone();
            async move { board.describe(route)["canaries"][pool].clone() }
        },
        |status| {
            let threshold = status["threshold"].as_f64().unwrap_or(f64::MAX);
            status["arms"].as_array().is_some_and(|arms| {
                arms.iter()
                    .any(|a| a["s"].as_f64().is_some_and(|s| s >= threshold))
            })
        },
    )
    .await;
    let threshold = status["threshold"].as_f64().unwrap_or(f64::MAX);
    assert!(
        status["arms"].as_array().is_some_and(|arms| arms
            .iter()
            .any(|a| a["s"].as_f64().is_some_and(|s| s >= threshold))),
        "no verdict on {pool}: {status:#}"
    );
    status
}

/// Polls once, so that a future waiting for the control plane's lock
/// takes its place in the lock's queue; returns whether it finished.
async fn poll_once<F: Future + ?Sized>(future: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await
}

fn weights(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(p, w)| (p.to_string(), *w)).collect()
}

// ---------------------------------------------------------------------------
// 1. A verdict judged before a reload falls back the reloaded route
// ---------------------------------------------------------------------------

/// Invariant: a fallback acts on the pool its verdict judged, on the
/// weights that pool was judged under. The evaluator judges a snapshot of
/// the table and then calls `fall_back(route, ..)` with no version: when a
/// reload (the config watch, SIGHUP) holds the lock meanwhile and replaces
/// the route's canary pool `green` by `green2`, the stale verdict on
/// `green` — a pool the route no longer has — sends all of the new pool's
/// traffic back to the baseline, and `green2` never served a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_judged_before_a_reload_falls_back_the_pool_the_reload_put_in() {
    let route = "rr_reload_verdict";
    let stable = support::knob_upstream("stable").await;
    let green = support::knob_upstream("green").await;
    let green2 = support::knob_upstream("green2").await;
    let config = route_config(
        route,
        &[("stable", stable.addr, 5000), ("green", green.addr, 5000)],
    );
    let setup = support::admin_setup(&config, None);
    let held = hold_next_listener_change(&setup.plane);
    let _load = support::open_loop(setup.proxy, 400);

    // The file now puts green2 where green was (and moves the listener,
    // so that the reload is held inside the lock).
    let dir = temp_dir("reload-verdict");
    let file = dir.join("switchyard.json");
    let mut next = with_moved_listener(route_config(
        route,
        &[("stable", stable.addr, 5000), ("green2", green2.addr, 5000)],
    ));
    next["pools"]["green"] = json!({"endpoints": [green.addr.to_string()]});
    write_config(&file, &next);
    let reload = reload_on_thread(setup.plane.clone(), file);
    wait_entered(&held).await;

    // While the reload is held, the old table serves: green goes bad and
    // is judged so.
    green.error_permille.store(1000, Ordering::Relaxed);
    wait_for_verdict(&setup.api, route, "green").await;
    green.error_permille.store(0, Ordering::Relaxed);
    held.release.send(()).expect("release");
    let reloaded = tokio::task::block_in_place(|| reload.join().expect("reload thread"));
    let version = reloaded.expect("reload applied").expect("a new version");

    // green2 is healthy: nothing may move its traffic. A fallback, if one
    // comes, comes at once (its verdict is already made).
    let fallbacks = support::poll_for(
        Duration::from_secs(3),
        || events_of(setup.admin, "fallback"),
        |f| !f.is_empty(),
    )
    .await;
    let live = get_json(setup.admin, &format!("/v1/routes/{route}")).await;
    assert!(
        fallbacks.is_empty() && live["weights"] == json!({"stable": 5000, "green2": 5000}),
        "the reload (version {version}) put green2 in at 50%, and green2 never \
         failed; yet a verdict on green, judged before the reload, fell back: \
         weights now {}\nfallbacks: {fallbacks:#?}",
        live["weights"]
    );
}

// ---------------------------------------------------------------------------
// 2. An acknowledged weight change is undone by a stale fallback
// ---------------------------------------------------------------------------

/// Invariant: a change acknowledged to an operator is not undone by a
/// verdict judged on the weights it replaced (the evaluator itself starts
/// its test over on a weight change: "a weight change starts the test
/// over"). Here the operator moves the canary share from c1 to a new
/// release c2 and is told 200; a verdict on c1 judged just before (both
/// waited for the lock while a reload held it) then applies after it and
/// sends c2's share back to stable — c2 never served a request, and the
/// operator is never told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fallback_undoes_an_acknowledged_weight_change() {
    let route = "rr_stale_fallback";
    let stable = support::knob_upstream("stable").await;
    let c1 = support::knob_upstream("c1").await;
    let c2 = support::knob_upstream("c2").await;
    let config = route_config(
        route,
        &[
            ("stable", stable.addr, 8000),
            ("c1", c1.addr, 2000),
            ("c2", c2.addr, 0),
        ],
    );
    let setup = support::admin_setup(&config, None);
    let held = hold_next_listener_change(&setup.plane);
    let _load = support::open_loop(setup.proxy, 400);

    // A reload that only moves the listener, held inside the lock.
    let dir = temp_dir("stale-fallback");
    let file = dir.join("switchyard.json");
    write_config(&file, &with_moved_listener(config.clone()));
    let reload = reload_on_thread(setup.plane.clone(), file);
    wait_entered(&held).await;

    // The operator's change queues for the lock first ...
    let moved = weights(&[("stable", 8000), ("c1", 0), ("c2", 2000)]);
    let plane = setup.plane.clone();
    let mut put = Box::pin(async move {
        plane
            .set_weights(route, &moved, None, "admin-api")
            .await
            .map_err(|e| e.to_string())
    });
    assert!(!poll_once(&mut put).await, "the change waits for the lock");
    // ... then c1 goes bad and is judged so on the old weights.
    c1.error_permille.store(1000, Ordering::Relaxed);
    wait_for_verdict(&setup.api, route, "c1").await;
    c1.error_permille.store(0, Ordering::Relaxed);
    held.release.send(()).expect("release");
    let acknowledged = put.await.expect("the weight change is acknowledged");
    tokio::task::block_in_place(|| reload.join().expect("reload thread")).expect("reload");

    let fallbacks = support::poll_for(
        Duration::from_secs(3),
        || events_of(setup.admin, "fallback"),
        |f| !f.is_empty(),
    )
    .await;
    let live = get_json(setup.admin, &format!("/v1/routes/{route}")).await;
    assert!(
        live["weights"] == json!({"stable": 8000, "c1": 0, "c2": 2000}),
        "the operator's change (version {acknowledged}: c2 at 20%, c1 at 0) was \
         acknowledged, c2 never failed, yet the weights are now {}\nfallbacks: {fallbacks:#?}",
        live["weights"]
    );
}

// ---------------------------------------------------------------------------
// 3. A gate's abort, judged on one rollout, aborts the next one
// ---------------------------------------------------------------------------

/// A gate that, the first time it is asked, says it is asked and waits to
/// be released, then aborts; it lets any later step proceed.
struct SlowAbortGate {
    asked: AtomicBool,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl switchyard_admin::StepGate for SlowAbortGate {
    fn check(
        &self,
        _route: &str,
        _rollout: &switchyard_admin::rollout::Rollout,
    ) -> switchyard_admin::GateVerdict {
        if self.asked.swap(true, Ordering::SeqCst) {
            return switchyard_admin::GateVerdict::Proceed;
        }
        let _ = self.entered.lock().expect("not poisoned").send(());
        let _ = self
            .release
            .lock()
            .expect("not poisoned")
            .recv_timeout(Duration::from_secs(20));
        switchyard_admin::GateVerdict::Abort("gate: rollout A's canary failed its step".into())
    }
}

/// Invariant: a gate's verdict acts on the rollout it judged. The driver
/// takes a copy of the due rollout under the lock, asks the gate with the
/// lock released, and then aborts whatever rollout the route has by then:
/// when an operator aborted rollout A and started rollout B meanwhile (an
/// embedder calling the plane from its own thread, as the tests do), A's
/// verdict aborts B, which the gate never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_abort_judged_on_one_rollout_aborts_the_next() {
    let route = "web";
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})),
        None,
    );
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    setup.plane.set_gate(Arc::new(SlowAbortGate {
        asked: AtomicBool::new(false),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    }));
    // Rollout A: its first step is due after 100 ms, and the gate is asked.
    let a = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "100ms"}]});
    let (status, _, body) = admin_request(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[],
        Some(a),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::task::block_in_place(|| {
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the gate is asked about rollout A")
    });

    // While the gate deliberates: A is aborted, and B (a manual gate at
    // 20%: nothing for the driver or the gate to do) starts.
    setup
        .plane
        .control_rollout(
            route,
            switchyard_admin::RolloutAction::Abort("operator: wrong build".into()),
            None,
            "admin-api",
        )
        .await
        .expect("A aborted");
    let b: switchyard_admin::rollout::RolloutSpec =
        serde_json::from_value(json!({"strategy": "canary", "steps": [{"weight": 2000}]}))
            .expect("spec");
    let b_version = setup
        .plane
        .start_rollout(route, &b, None, "admin-api")
        .await
        .expect("B started");
    release.send(()).expect("release the gate");

    let aborted = support::poll_for(
        Duration::from_secs(3),
        || events_of(setup.admin, "rollout_aborted"),
        |a| a.iter().any(|e| e["who"] == "gate"),
    )
    .await;
    let (_, _, status) = admin_request(
        setup.admin,
        Method::GET,
        "/v1/routes/web/rollout",
        &[],
        None,
    )
    .await;
    let rollout = &status["rollout"];
    assert!(
        rollout["state"] == "waiting" && rollout["weight"] == 2000,
        "rollout B (version {b_version}) waits at 20% for an operator, and the gate \
         never judged it; yet it is {rollout:#}\naborts: {aborted:#?}"
    );
}

// ---------------------------------------------------------------------------
// 4. The watch reloads the file PUT /v1/config just wrote as a new config
// ---------------------------------------------------------------------------

/// `path` (absolute) as a path relative to the current directory.
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("cwd");
    let mut relative = PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.join(path.strip_prefix("/").expect("absolute"))
}

/// Invariant: the config file on disk and the live config agree, and a
/// reload of a file that is already live changes nothing — whichever of
/// the three reload paths (startup and SIGHUP, `PUT /v1/config`, the
/// watch) reads it. Started as `--config <relative path>` with a file that
/// names another file relatively (a pool's `ca_file`), startup, SIGHUP and
/// `PUT /v1/config` resolve that file against the relative directory but
/// the watch against an absolute one: the watch's reload of the very file
/// `PUT /v1/config` just wrote compares unequal and is applied again as a
/// new version (a second `config_reload`, pools rebuilt), so the ETag the
/// PUT answered is stale at once and the operator's next `If-Match` gets
/// 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reapplies_the_file_put_config_just_wrote() {
    let dir = temp_dir("put-config-watch");
    std::fs::write(dir.join("ca.pem"), support::pki::Ca::new("review CA").pem()).expect("ca");
    let app = support::upstream("app").await;
    let config = |connect: &str| {
        json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"app": {"endpoints": [app.addr.to_string()],
                              "tls": {"server_name": "backend.internal", "ca_file": "ca.pem"}}},
            "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
            "timeouts": {"drain": "1s", "connect": connect, "response_header": "5s"},
        })
    };
    let file = dir.join("switchyard.json");
    write_config(&file, &config("2s"));
    let relative = relative_to_cwd(&file);
    let relative = relative.to_str().expect("utf-8");
    let (_child, _proxy, admin) =
        support::start_binary(&["run", "--config", relative, "--admin", "127.0.0.1:0"]).await;

    let (status, body) = support::put_config(admin, config("3s").to_string()).await;
    assert_eq!(status, 200, "{body}");
    let acknowledged = body["version"].as_u64().expect("version");
    // The watch sees the PUT's own rename; if it reloads, it does so
    // within its settle time (100 ms, at most 1 s).
    let reloads = support::poll_for(
        Duration::from_secs(3),
        || events_of(admin, "config_reload"),
        |r| r.iter().any(|e| e["who"] == "config-reload"),
    )
    .await;
    let (_, headers, _) = admin_request(admin, Method::GET, "/v1/routes", &[], None).await;
    let live = headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        live == format!("\"{acknowledged}\""),
        "PUT /v1/config answered version {acknowledged}; the file on disk is what it \
         wrote, yet the live version is now {live}: the watch applied the same file \
         again\n{reloads:#?}"
    );
}
