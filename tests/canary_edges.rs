//! Canary health's edges, from a review of the fallback detector, its
//! evaluator, the rollout gates and the reporting: each test states what
//! the specification (or the README) promises, and failed on the code it
//! was written against.
//!
//! Every test uses a route name of its own: the data plane's latency
//! histograms are process-wide, keyed by route and pool.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let (_, _, body) = support::get(&support::client(), admin, path, &[]).await;
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {path}: {body}"))
}

async fn events_of(admin: SocketAddr, kind: &str) -> Vec<Value> {
    get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

async fn health(admin: SocketAddr, route: &str) -> Value {
    get_json(admin, &format!("/v1/routes/{route}/health")).await
}

/// Polls the events until a fallback shows up or `limit` passes.
async fn wait_for_fallback(admin: SocketAddr, limit: Duration) -> Option<Value> {
    let start = Instant::now();
    loop {
        if let Some(event) = events_of(admin, "fallback").await.into_iter().next() {
            return Some(event);
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config of one route `route` over `pools` (name, address, weight);
/// the first pool is the baseline.
fn route_config(route: &str, pools: &[(&str, SocketAddr, i64)], health: Value) -> Value {
    let mut pool_map = serde_json::Map::new();
    let mut weights = serde_json::Map::new();
    for (name, addr, weight) in pools {
        pool_map.insert(name.to_string(), json!({"endpoints": [addr.to_string()]}));
        weights.insert(name.to_string(), json!(weight));
    }
    let mut config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": pool_map,
        "routes": [{"name": route, "split": {"baseline": pools[0].0, "weights": weights}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    if !health.is_null() {
        config["routes"][0]["canary_health"] = health;
    }
    config
}

async fn admin_request(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: &[(&str, &str)] = if text.is_empty() {
        &[]
    } else {
        &[("content-type", "application/json")]
    };
    let (status, _, body) = support::admin_call(admin, method, path, headers, &text).await;
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

async fn rollout_of(admin: SocketAddr, route: &str) -> Value {
    admin_request(
        admin,
        Method::GET,
        &format!("/v1/routes/{route}/rollout"),
        None,
    )
    .await
    .1["rollout"]
        .clone()
}

async fn wait_rollout(
    admin: SocketAddr,
    route: &str,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    support::poll_for(deadline, || rollout_of(admin, route), done).await
}

// ---------------------------------------------------------------------------
// 1. Route settings silently dropped when long_window is short
// ---------------------------------------------------------------------------

/// README: "Every other parameter of the test can be set there too ...
/// a bad value is refused with its line and path." A `long_window` of 3 s
/// is accepted by the config (and so is a threshold and an SLO next to
/// it), but the default short window (5 s) and burst window are then
/// longer than it: the detector refuses the combination, and the evaluator
/// silently swaps in the *default* detector — dropping the route's
/// threshold and its absolute error SLO with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_long_window_silently_drops_the_routes_threshold_and_slo() {
    let stable = support::knob_upstream("stable").await;
    let canary = support::knob_upstream("canary").await;
    let config = route_config(
        "rv_longwin",
        &[("stable", stable.addr, 9000), ("canary", canary.addr, 1000)],
        json!({"long_window": "3s", "threshold": 7, "max_error_rate": 0.05}),
    );
    // The config is accepted: nothing says the settings will not apply.
    switchyard_config::parse(&config.to_string()).expect("the config validates");
    let setup = support::admin_setup(&config, None);
    let status = support::poll_for(
        Duration::from_secs(5),
        || health(setup.admin, "rv_longwin"),
        |h| h["canaries"]["canary"].is_object(),
    )
    .await;
    let canary_status = &status["canaries"]["canary"];
    let arms: Vec<&str> = canary_status["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .filter_map(|a| a["arm"].as_str())
        .collect();
    assert_eq!(
        (canary_status["threshold"].as_f64(), arms.contains(&"slo_errors")),
        (Some(7.0), true),
        "the route's threshold (7) and max_error_rate SLO must be in force; health: {canary_status}"
    );
}

// ---------------------------------------------------------------------------
// 2. A reset mid-body is never an error for the detector
// ---------------------------------------------------------------------------

/// Specification: "An error is a 5xx from the upstream, a connect
/// failure, a reset, a timeout." A canary that sends a 200 head and then
/// resets the connection before the body is complete breaks every request
/// it gets (the proxy even counts each in
/// `switchyard_upstream_errors_total{kind="reset"}`), yet the detector's
/// tick counts never see an error: `record_late_error` only bumps the
/// Prometheus counter. No fallback ever happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_resets_mid_body_every_time_is_never_judged_bad() {
    let stable = support::knob_upstream("stable").await;
    let canary_served = Arc::new(AtomicUsize::new(0));
    let counter = canary_served.clone();
    let canary = support::raw_upstream(move |mut stream| {
        let counter = counter.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let mut have = Vec::new();
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have.extend_from_slice(&buf[..n]),
                }
                if have.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                .await;
            let _ = stream.flush().await;
            // Abort: RST instead of the rest of the body.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    })
    .await;
    let config = route_config(
        "rv_reset",
        &[("stable", stable.addr, 9000), ("canary", canary, 1000)],
        json!(null),
    );
    let setup = support::admin_setup(&config, None);
    let load = support::open_loop(setup.proxy, 200);
    let fallback = wait_for_fallback(setup.admin, Duration::from_secs(10)).await;
    let canary_requests = canary_served.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    let status = health(setup.admin, "rv_reset").await;
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    let resets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_errors_total") && l.contains("rv_reset"))
        .collect();
    assert!(
        fallback.is_some(),
        "no fallback after 10 s although the canary broke all {canary_requests} of its requests \
         ({failed} client-visible failures; the proxy's own counters: {resets:?}); canary health: {}",
        status["canaries"]["canary"]
    );
}

// ---------------------------------------------------------------------------
// 3. A baseline change (config reload) leaves the canary judged against
//    the old baseline's latency
// ---------------------------------------------------------------------------

/// Starts a proxy, control plane and admin API on a config *file*, so that
/// it can be reloaded.
fn admin_setup_on_file(config: &Value, file: &std::path::Path) -> support::AdminSetup {
    std::fs::write(file, serde_json::to_string_pretty(config).expect("json")).expect("write");
    let parsed = switchyard_config::load(file).expect("valid config");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane = switchyard_admin::ControlPlane::start(
        parsed.clone(),
        Some(file.to_path_buf()),
        store,
        state,
    )
    .expect("plane");
    let server =
        switchyard_proxy::Server::start(plane.routes(), &parsed.listeners, 2).expect("proxy");
    let api = switchyard_admin::AdminApi::new(plane.clone(), None);
    let admin = switchyard_admin::server::start("127.0.0.1:0".parse().expect("addr"), api.clone())
        .expect("admin");
    support::AdminSetup {
        proxy: server.local_addrs()[0],
        admin,
        server,
        plane,
        api,
    }
}

/// The spec: "a canary response is slow when it takes longer than
/// max(1.5 × the baseline's p99 over 60 s, …)". A reload that makes
/// another pool the route's baseline keeps the canary's watch (same
/// settings, same key), and with it the *old* baseline's stats handle:
/// the latency bar keeps coming from the old baseline's histogram. Here
/// the new baseline and the canary both take 40 ms, so the canary is no
/// slower than its baseline — yet it falls back on latency, measured
/// against the old, fast baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_changes_the_baseline_the_canary_is_judged_against_the_old_one() {
    let fast = support::knob_upstream("fast").await;
    let slow = support::knob_upstream("slow").await;
    let canary = support::knob_upstream("canary").await;
    slow.delay_ms.store(40, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchyard-review-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    let before = route_config(
        "rv_rebase",
        &[
            ("fast", fast.addr, 9000),
            ("slow", slow.addr, 0),
            ("canary", canary.addr, 1000),
        ],
        json!(null),
    );
    let setup = admin_setup_on_file(&before, &file);
    let _load = support::open_loop(setup.proxy, 200);
    // Warm up until the canary's latency bar has been published from the
    // fast baseline's histogram (≥ 100 samples) and the canary is judged.
    let warm = support::poll_for(
        Duration::from_secs(10),
        || health(setup.admin, "rv_rebase"),
        |h| h["pools"]["fast"]["requests_60s"].as_u64().unwrap_or(0) >= 400,
    )
    .await;
    assert!(
        events_of(setup.admin, "fallback").await.is_empty(),
        "fell back before the reload: {warm}"
    );
    // The reload: `slow` becomes the baseline with all but the canary's
    // share; the canary now takes as long as its new baseline.
    let after = route_config(
        "rv_rebase",
        &[
            ("slow", slow.addr, 9000),
            ("fast", fast.addr, 0),
            ("canary", canary.addr, 1000),
        ],
        json!(null),
    );
    std::fs::write(&file, serde_json::to_string_pretty(&after).expect("json")).expect("write");
    let applied = setup.plane.reload(&file, "test").await.expect("reload");
    assert!(applied.is_some(), "the reload changed the config");
    let (_, described) =
        admin_request(setup.admin, Method::GET, "/v1/routes/rv_rebase", None).await;
    assert_eq!(described["baseline"], "slow", "{described}");
    // The new baseline builds a latency history of its own (well over the
    // 100 samples a bar needs, and several of the evaluator's once-a-second
    // publications) while the canary is still fast ...
    let rebased = support::poll_for(
        Duration::from_secs(10),
        || health(setup.admin, "rv_rebase"),
        |h| h["pools"]["slow"]["requests_60s"].as_u64().unwrap_or(0) >= 500,
    )
    .await;
    assert!(
        events_of(setup.admin, "fallback").await.is_empty(),
        "fell back while the canary was fast: {rebased}"
    );
    // ... and only then takes as long as its new baseline (40 ms).
    canary.delay_ms.store(40, Ordering::Relaxed);
    let fallback = wait_for_fallback(setup.admin, Duration::from_secs(8)).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        fallback.is_none(),
        "a canary as fast as its (new) baseline fell back: {}\npools before the slowdown: {}",
        fallback.unwrap_or_default(),
        rebased["pools"]
    );
}

// ---------------------------------------------------------------------------
// 4. Rollout gate: requests "at that step"
// ---------------------------------------------------------------------------

fn two_pool_rollout_config(route: &str, stable: SocketAddr, canary: SocketAddr) -> Value {
    route_config(
        route,
        &[("stable", stable, 10_000), ("canary", canary, 0)],
        json!(null),
    )
}

/// Runs a canary rollout with a gate of 50 canary requests a step, serves
/// 200 requests (about half to the canary) while step 1 holds for lack of
/// traffic, and checks that step 2, which has served nothing, holds.
async fn assert_step_2_holds_without_requests(route: &str, steps: Value) {
    let stable = support::knob_upstream("stable").await;
    let canary = support::knob_upstream("canary").await;
    let setup = support::admin_setup(
        &two_pool_rollout_config(route, stable.addr, canary.addr),
        None,
    );
    setup.api.board().set_min_step_requests(50);
    let spec = json!({"strategy": "canary", "steps": steps});
    let (status, body) = admin_request(
        setup.admin,
        Method::POST,
        &format!("/v1/routes/{route}/rollout"),
        Some(spec),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Step 1 holds for lack of traffic.
    let held = wait_rollout(setup.admin, route, Duration::from_secs(10), |r| {
        !r["held"].is_null()
    })
    .await;
    assert_eq!(held["step"], 1, "{held}");
    // Traffic for step 1 only.
    let client = support::client();
    for _ in 0..200 {
        support::get(&client, setup.proxy, "/", &[]).await;
    }
    let canary_at_step_1 = canary.served.load(Ordering::Relaxed);
    assert!(canary_at_step_1 >= 50, "{canary_at_step_1}");
    // Step 1 moves on; step 2 has served nothing at all and must hold.
    let r = wait_rollout(setup.admin, route, Duration::from_secs(10), |r| {
        r["step"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert!(
        r["step"].as_u64().unwrap_or(0) >= 2,
        "step 1 never moved on: {r}"
    );
    let later = wait_rollout(setup.admin, route, Duration::from_secs(3), |r| {
        r["step"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    let served_since = canary.served.load(Ordering::Relaxed) - canary_at_step_1;
    assert_eq!(
        later["step"], 2,
        "step 2 moved on after the canary served {served_since} requests at it (min 50): {later}"
    );
}

/// Spec: "a step advances only when its pause is over AND the canary
/// served at least a minimum number of requests at that step". The gate
/// counted requests since the route's weights last changed, not since the
/// step began: a step at the same weight as the one before it inherited the
/// previous step's count, and moved on with no request served at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_at_the_same_weight_inherits_the_previous_steps_requests() {
    let steps = json!([
        {"weight": 5000, "pause": "100ms"},
        {"weight": 5000, "pause": "100ms"},
        {"weight": 8000, "pause": "100ms"}]);
    assert_step_2_holds_without_requests("rv_gate_same", steps).await;
}

/// The same gate, with a step whose weight *does* change but whose pause
/// (1 ms) is shorter than the evaluator's 100 ms tick: the gate read the
/// previous step's count, which the evaluator had not yet reset, and the
/// step moved on with no request served at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_step_is_judged_on_the_previous_steps_requests() {
    let steps = json!([
        {"weight": 5000, "pause": "100ms"},
        {"weight": 6000, "pause": "1ms"},
        {"weight": 8000, "pause": "100ms"}]);
    assert_step_2_holds_without_requests("rv_gate_short", steps).await;
}

// ---------------------------------------------------------------------------
// 5. Two canaries judged bad in the same tick: two fallbacks for one
// ---------------------------------------------------------------------------

/// Spec: "Falling back = one table swap sending all of the route's
/// traffic to its baseline; … an event with evidence;
/// `switchyard_fallbacks_total{route,reason}` counts it." A route with two
/// canary pools that go bad together gets a verdict per pool in the same
/// tick, and the evaluator calls `fall_back` once per verdict: two table
/// swaps, two `fallback` events (the second from an already fallen-back
/// route, old weights = new weights) and the counter counts 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_canaries_going_bad_together_fall_back_once() {
    let route = "rv_two_canaries";
    let stable = support::knob_upstream("stable").await;
    let c1 = support::knob_upstream("c1").await;
    let c2 = support::knob_upstream("c2").await;
    let config = route_config(
        route,
        &[
            ("stable", stable.addr, 6000),
            ("c1", c1.addr, 2000),
            ("c2", c2.addr, 2000),
        ],
        json!(null),
    );
    let setup = support::admin_setup(&config, None);
    let _load = support::open_loop(setup.proxy, 600);
    // Warm up until the baseline has some history.
    support::poll_for(
        Duration::from_secs(10),
        || health(setup.admin, route),
        |h| {
            h["canaries"]["c2"]["baseline_requests"]
                .as_u64()
                .unwrap_or(0)
                >= 1000
        },
    )
    .await;
    assert!(events_of(setup.admin, "fallback").await.is_empty());
    // Both canaries break at the start of a detector tick, so that the
    // first bad tick is a whole one for both (~12 errors each: either
    // alone is far past the threshold).
    loop {
        let into_tick = switchyard_proxy::stats::ms_of(Instant::now()) % 100;
        if into_tick < 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c1.error_permille.store(1000, Ordering::Relaxed);
    c2.error_permille.store(1000, Ordering::Relaxed);
    let first = wait_for_fallback(setup.admin, Duration::from_secs(5))
        .await
        .expect("a fallback");
    // Let the evaluator settle: poll for a second fallback event a while.
    let all = support::poll_for(
        Duration::from_secs(2),
        || events_of(setup.admin, "fallback"),
        |events| events.len() > 1,
    )
    .await;
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    let counted: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_fallbacks_total") && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        (all.len(), counted),
        (1, 1.0),
        "one incident, one fallback; first: {first}\nall: {all:#?}"
    );
}

// ---------------------------------------------------------------------------
// 6. A canary that appears is judged against a baseline with no history
// ---------------------------------------------------------------------------

/// Spec: "p0 = the baseline's error rate over the last 60 s". The
/// evaluator takes every pool's ticks all along (its own comment: "so the
/// ring holds no stale counts when a pool becomes a canary later"), but a
/// canary that appears — a rollout's first step, or an operator putting a
/// canary back after a fallback — gets a detector with empty baseline
/// windows: p0 comes from the baseline's last few ticks only, inflated by
/// the smoothing's tiny n, exactly when a bad release is most likely. (At
/// T5's 20 rps, a canary failing from its first request needs ~5.3 s with
/// the fresh detector against ~2.3 s with the baseline's 60 s, fed the
/// same ticks through the public detector API.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_canary_is_judged_without_the_baselines_last_60_s() {
    let route = "rv_fresh";
    let stable = support::knob_upstream("stable").await;
    let canary = support::knob_upstream("canary").await;
    let config = route_config(
        route,
        &[("stable", stable.addr, 10_000), ("canary", canary.addr, 0)],
        json!(null),
    );
    let setup = support::admin_setup(&config, None);
    let _load = support::open_loop(setup.proxy, 200);
    // The baseline serves alone until it has a history of 1,000 requests
    // (the evaluator tracks it: `pools.stable.requests_60s`).
    let warm = support::poll_for(
        Duration::from_secs(15),
        || health(setup.admin, route),
        |h| h["pools"]["stable"]["requests_60s"].as_u64().unwrap_or(0) >= 1000,
    )
    .await;
    let history = warm["pools"]["stable"]["requests_60s"]
        .as_u64()
        .unwrap_or(0);
    assert!(history >= 1000, "{warm}");
    // The canary appears (as at a rollout's first step).
    let (status, body) = admin_request(
        setup.admin,
        Method::PUT,
        &format!("/v1/routes/{route}/weights"),
        Some(json!({"weights": {"stable": 9000, "canary": 1000}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let judged = support::poll_for(
        Duration::from_secs(5),
        || health(setup.admin, route),
        |h| h["canaries"]["canary"].is_object(),
    )
    .await;
    let canary_status = &judged["canaries"]["canary"];
    let seen = canary_status["baseline_requests"].as_u64().unwrap_or(0);
    assert!(
        seen >= history,
        "p0 is computed from {seen} baseline requests, not the baseline's last 60 s \
         (at least {history}): p0 {} instead of the 0.001 floor; {canary_status}",
        canary_status["p0"]
    );
}

/// A held step records one `rollout_held` event when the hold begins, not
/// one per recheck while traffic trickles in (the reason, with its count,
/// changed at each, and each change was an event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_recorded_once_while_traffic_trickles_in() {
    let route = "rv_gate_trickle";
    let stable = support::knob_upstream("stable").await;
    let canary = support::knob_upstream("canary").await;
    let setup = support::admin_setup(
        &two_pool_rollout_config(route, stable.addr, canary.addr),
        None,
    );
    setup.api.board().set_min_step_requests(1_000_000);
    let spec = json!({"strategy": "canary", "steps": [{"weight": 5000, "pause": "100ms"}]});
    let (status, body) = admin_request(
        setup.admin,
        Method::POST,
        &format!("/v1/routes/{route}/rollout"),
        Some(spec),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let client = support::client();
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let held = wait_rollout(setup.admin, route, Duration::from_secs(10), |r| {
            r["held"]
                .as_str()
                .is_some_and(|h| !reasons.contains(&h.to_string()))
        })
        .await;
        reasons.push(held["held"].as_str().expect("held").to_string());
        for _ in 0..20 {
            support::get(&client, setup.proxy, "/", &[]).await;
        }
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let held = events_of(setup.admin, "rollout_held").await;
    assert_eq!(held.len(), 1, "{held:?}");
}

/// A blue-green bake sends the baseline nothing. Its error windows used to
/// empty out with time, leaving p0 at its smoothed 50%, so a new version
/// that failed half its requests after the first long window was never
/// judged bad. The baseline's windows now keep what it served last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_bake_is_judged_after_the_baseline_went_quiet() {
    let route = "rv_bake";
    let blue = support::knob_upstream("blue").await;
    let green = support::knob_upstream("green").await;
    let windows = json!({"long_window": "2s", "short_window": "1s", "burst_window": "500ms"});
    let config = route_config(
        route,
        &[("blue", blue.addr, 10_000), ("green", green.addr, 0)],
        windows,
    );
    let setup = support::admin_setup(&config, None);
    setup.api.board().set_min_step_requests(0);
    let _load = support::open_loop(setup.proxy, 200);
    // The baseline serves alone until it has a long window of history.
    let start = Instant::now();
    while blue.served.load(Ordering::Relaxed) < 400 {
        assert!(start.elapsed() < Duration::from_secs(20), "no load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spec = json!({"strategy": "blue_green", "bake": "1h"});
    let (status, body) = admin_request(
        setup.admin,
        Method::POST,
        &format!("/v1/routes/{route}/rollout"),
        Some(spec),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Green takes everything; after two long windows the baseline's own
    // windows hold nothing it served during the bake.
    let flipped = green.served.load(Ordering::Relaxed);
    while green.served.load(Ordering::Relaxed) < flipped + 800 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "green got no load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    green.error_permille.store(500, Ordering::Relaxed);
    let event = wait_for_fallback(setup.admin, Duration::from_secs(10)).await;
    let state = health(setup.admin, route).await;
    let event = event.unwrap_or_else(|| {
        panic!("a green failing half its requests in the bake was never judged bad: {state}")
    });
    assert_eq!(event["route"], route, "{event}");
}
