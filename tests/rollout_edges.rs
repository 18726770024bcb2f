//! Rollouts over time and across restarts, from a review: each test
//! failed on the code as it was reviewed.
//!
//! 1. A rollout on a route with a third pool that holds weight was
//!    accepted but could never reach its 100% step: it stayed "running"
//!    with nothing left of its pause, retrying every second, and `promote`
//!    was refused. (At 100% every other pool now goes to 0, and a step that
//!    cannot fit is refused at the start.)
//! 2. A step whose stored start lies in the future (the wall clock was
//!    ahead when it began, or stepped back since) held for that much
//!    longer than its pause after a restart.
//! 3. Fields that do not belong to the strategy or preset given (a
//!    preset's `interval`, a canary's `bake`, ...) were silently ignored.
//! 4. An out-of-range linear `step` was refused without naming the field.
//! 5. A state file whose rollout names a step it does not have started,
//!    and then the rollout driver and the route's status panicked.
//! 6. After a reload that made the rollout's target the baseline, an
//!    `abort` was acknowledged but left the traffic split as it was.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use support::admin_call as call;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let (status, _, body) = call(admin, Method::GET, path, &[], "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn post(admin: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = call(admin, Method::POST, path, &[JSON], &body.to_string()).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status.as_u16(), value)
}

async fn rollout(admin: SocketAddr) -> Value {
    get_json(admin, "/v1/routes/web/rollout").await["rollout"].clone()
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A route `web` over three pools: stable (the baseline), canary and other.
async fn three_pools(stable: i64, canary: i64, other: i64) -> support::AdminSetup {
    let a = support::upstream("stable").await;
    let b = support::upstream("canary").await;
    let c = support::upstream("other").await;
    support::admin_setup(
        &support::split_config(&[(&a, stable), (&b, canary), (&c, other)], json!({})),
        None,
    )
}

// ---------------------------------------------------------------------
// 1. Three pools, the third holding weight: the first step fits, so the
//    rollout is accepted, but its last (100%) step never can. The driver
//    fails to advance, logs "will retry", and retries every second for
//    good; the status says "running" with 0 ms left. `promote` is refused
//    with 400. Either the rollout is refused at the start (every step is
//    checked, not only the first), or reaching 100% takes the other pools
//    to 0 as "all traffic on the target" says.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_rollout_on_a_route_with_a_third_weighted_pool_is_refused_or_completes() {
    let setup = three_pools(8000, 1000, 1000).await;
    let spec = json!({"strategy": "canary", "target": "canary",
        "steps": [{"weight": 2000, "pause": "150ms"}]});
    let (status, started) = post(setup.admin, "/v1/routes/web/rollout", &spec).await;
    if status == 400 {
        // Refused up front: fine, as long as nothing changed.
        assert_eq!(rollout(setup.admin).await, Value::Null, "{started}");
        return;
    }
    assert_eq!(status, 200, "{started}");
    let last = support::poll_for(
        Duration::from_secs(5),
        || rollout(setup.admin),
        |r| r["state"] != "running",
    )
    .await;
    assert_eq!(
        last["state"], "completed",
        "an accepted rollout never reaches its last step (100% to canary): the pool \
         \"other\" keeps 1000 bp, so the step cannot be applied and is retried forever: {last}"
    );
    let route = get_json(setup.admin, "/v1/routes/web").await;
    assert_eq!(route["weights"]["canary"], 10_000, "{route}");
}

#[tokio::test]
async fn promote_on_a_route_with_a_third_weighted_pool_puts_all_traffic_on_the_target() {
    let setup = three_pools(8000, 1000, 1000).await;
    let spec = json!({"strategy": "canary", "target": "canary", "steps": [{"weight": 2000}]});
    let (status, started) = post(setup.admin, "/v1/routes/web/rollout", &spec).await;
    if status == 400 {
        // Refused up front, as a rollout that cannot reach 100%: fine.
        assert_eq!(rollout(setup.admin).await, Value::Null, "{started}");
        return;
    }
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["rollout"]["state"], "waiting", "{started}");
    let (status, promoted) = post(setup.admin, "/v1/routes/web/rollout/promote", &json!({})).await;
    assert_eq!(
        status, 200,
        "promote (\"goes to 100% at once\") is refused on a rollout the API accepted: {promoted}"
    );
    assert_eq!(promoted["rollout"]["state"], "completed", "{promoted}");
    let route = get_json(setup.admin, "/v1/routes/web").await;
    assert_eq!(route["weights"]["canary"], 10_000, "{route}");
}

// ---------------------------------------------------------------------
// 2. The persisted step start is wall-clock time; one in the future (the
//    clock was ahead when the step began and was corrected before the
//    restart) makes a 300 ms step hold for ten minutes and more: the
//    time left is taken as `start + pause - now`, never bounded by the
//    step's own pause.
// ---------------------------------------------------------------------

/// A state directory holding a running canary rollout on `web` at 30%,
/// whose 300 ms step started at `started_ms`.
fn state_with_rollout(dir: &Path, started_ms: u64, step: usize) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let body = json!({
        "format": 1,
        "version": 7,
        "routes": {"web": {
            "weights": {"stable": 7000, "canary": 3000},
            "rollout": {
                "strategy": "canary",
                "target": "canary",
                "steps": [{"weight": 3000, "pause_ms": 300}, {"weight": 10000}],
                "step": step,
                "state": "running",
                "step_started_ms": started_ms,
            },
        }},
    });
    std::fs::write(
        state.join("state.json"),
        serde_json::to_vec_pretty(&body).expect("json"),
    )
    .expect("state.json");
    state
}

async fn config_file(dir: &Path) -> (support::Upstream, support::Upstream, PathBuf) {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})).to_string(),
    )
    .expect("config");
    (stable, canary, config)
}

#[tokio::test]
async fn a_step_started_in_the_future_holds_no_longer_than_its_pause() {
    let dir = support::pki::temp_dir("future-step");
    let (_stable, _canary, config) = config_file(&dir).await;
    let state = state_with_rollout(&dir, now_ms() + 600_000, 0);
    let args = [
        "run",
        "--config",
        utf8(&config),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        utf8(&state),
        "--min-step-requests",
        "0",
    ];
    let (_child, _, admin) = support::start_binary(&args).await;
    let now = rollout(admin).await;
    assert_eq!(
        (&now["step"], &now["weight"]),
        (&json!(1), &json!(3000)),
        "{now}"
    );
    let left = now["remaining_ms"].as_u64().unwrap_or(0);
    assert!(
        left <= 300,
        "a step whose pause is 300 ms has {left} ms left after a restart: {now}"
    );
    let done = support::poll_for(
        Duration::from_secs(5),
        || rollout(admin),
        |r| r["state"] == "completed",
    )
    .await;
    assert_eq!(done["state"], "completed", "{done}");
}

// ---------------------------------------------------------------------
// 3. Fields that belong to another strategy are refused for `step` and
//    `interval` on a canary, but a preset takes any of them, and `bake`
//    or `steps` are taken by any strategy, all silently ignored: an
//    operator who asks for `Linear10PercentEvery1Minute` with
//    `"interval": "10s"` gets one-minute steps and a 200.
// ---------------------------------------------------------------------

#[tokio::test]
async fn fields_foreign_to_the_strategy_are_refused_and_change_nothing() {
    for (spec, field) in [
        (
            json!({"preset": "Linear10PercentEvery1Minute", "interval": "10s"}),
            "interval",
        ),
        (
            json!({"preset": "Canary10Percent5Minutes", "step": 2000}),
            "step",
        ),
        (
            json!({"preset": "AllAtOnce", "steps": [{"weight": 500, "pause": "1m"}]}),
            "steps",
        ),
        (
            json!({"strategy": "canary", "steps": [{"weight": 500, "pause": "1m"}], "bake": "10m"}),
            "bake",
        ),
        (
            json!({"strategy": "blue_green", "bake": "10m", "steps": [{"weight": 500}]}),
            "steps",
        ),
        (
            json!({"strategy": "linear", "step": 1000, "interval": "1m", "bake": "10m"}),
            "bake",
        ),
    ] {
        let stable = support::upstream("stable").await;
        let canary = support::upstream("canary").await;
        let setup = support::admin_setup(
            &support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})),
            None,
        );
        let (status, body) = post(setup.admin, "/v1/routes/web/rollout", &spec).await;
        assert_eq!(
            status, 400,
            "{spec}: a field the strategy does not use was silently ignored: {body}"
        );
        assert_eq!(body["error"]["field"], field, "{spec}: {body}");
        assert_eq!(rollout(setup.admin).await, Value::Null, "{spec}");
    }
}

// ---------------------------------------------------------------------
// 4. A linear `step` is a u32 in the spec: a negative one (or one past
//    u32) fails in serde, before validation, and comes back as
//    `invalid_json` with no field, where 20000 gets `invalid_rollout`
//    naming `step`.
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_out_of_range_linear_step_is_refused_naming_the_field() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})),
        None,
    );
    for step in [json!(20_000), json!(-1000), json!(5_000_000_000u64)] {
        let spec = json!({"strategy": "linear", "step": step, "interval": "1m"});
        let (status, body) = post(setup.admin, "/v1/routes/web/rollout", &spec).await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert_eq!(
            body["error"]["field"], "step",
            "{spec}: the refusal does not name the field: {body}"
        );
    }
    assert_eq!(rollout(setup.admin).await, Value::Null);
}

// ---------------------------------------------------------------------
// 5. A state file whose rollout's `step` is past its `steps` parses, so
//    the start goes on; then the driver's task panics on
//    `steps[step]` (no rollout of any route moves again) and every
//    status call for the route panics its connection. The README: "A
//    corrupt state file stops the start with a message naming it".
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_state_whose_rollout_step_is_out_of_range_is_refused_or_dropped() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let dir = support::pki::temp_dir("step-out-of-range");
    let (_stable, _canary, config) = config_file(&dir).await;
    let state = state_with_rollout(&dir, now_ms(), 5);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "run",
            "--config",
            utf8(&config),
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            utf8(&state),
        ])
        .env("SWITCHYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let mut admin: Option<SocketAddr> = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        if let Some(rest) = line.strip_prefix("Admin API on ") {
            let at = rest.find("://").expect("a URL") + 3;
            let addr = rest[at..].split(['/', ' ']).next().expect("address");
            admin = Some(addr.parse().expect("socket address"));
            break;
        }
    }
    let Some(admin) = admin else {
        // Refused at the start: it must say why, naming the file.
        let status = child.wait().await.expect("status");
        let stderr = stderr.await.expect("stderr");
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains("state.json") && !stderr.contains("panicked"),
            "the refusal names the state file, without a panic: {stderr}"
        );
        return;
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Started (the bad rollout dropped, say): the route must answer.
    let request = http::Request::get(format!("http://{admin}/v1/routes/web"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer =
        tokio::time::timeout(Duration::from_secs(5), support::client().request(request)).await;
    let status = answer
        .ok()
        .and_then(Result::ok)
        .map(|r| r.status().as_u16());
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let stderr = stderr.await.expect("stderr");
    assert_eq!(
        status,
        Some(200),
        "started on a state whose rollout is at step 6 of 2, and GET /v1/routes/web \
         has no answer; stderr: {stderr}"
    );
}

// ---------------------------------------------------------------------
// 6. A reload that makes the rollout's target the route's baseline (the
//    config brought in line with the release) keeps the rollout running;
//    `abort` then computes "everything to the baseline" with the target
//    and the baseline the same pool, and changes nothing: 20% stays on
//    the canary, acknowledged as aborted. (Its next step could never be
//    applied either.)
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_abort_after_a_reload_that_made_the_target_the_baseline_moves_all_traffic() {
    let dir = support::pki::temp_dir("reload-baseline");
    let (stable, canary, file) = config_file(&dir).await;
    let (_child, _proxy, admin) = support::start_on_config(&file).await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 2000, "pause": "10m"}]});
    let (status, started) = post(admin, "/v1/routes/web/rollout", &spec).await;
    assert_eq!(status, 200, "{started}");

    let mut flipped = support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({}));
    flipped["routes"][0]["split"]["baseline"] = json!("canary");
    let (status, answer) = support::put_config(admin, flipped.to_string()).await;
    if status != 200 {
        return; // refused while the rollout runs: fine
    }
    let now = rollout(admin).await;
    if !["running", "paused", "waiting"].contains(&now["state"].as_str().unwrap_or("")) {
        return; // the reload ended the rollout: fine
    }
    let (status, aborted) = post(
        admin,
        "/v1/routes/web/rollout/abort",
        &json!({"reason": "bad release"}),
    )
    .await;
    assert_eq!(status, 200, "{aborted} (after {answer})");
    let route = get_json(admin, "/v1/routes/web").await;
    let weights: Vec<u64> = route["weights"]
        .as_object()
        .expect("weights")
        .values()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        weights.contains(&10_000),
        "an acknowledged abort left traffic split: {route}"
    );
}
