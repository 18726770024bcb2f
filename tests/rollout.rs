//! Rollouts through the admin API and the real data plane: every strategy
//! runs to completion on short intervals, pause stops the clock, abort
//! returns all traffic to the baseline at once, and a rollout survives a
//! `kill -9` of the real binary.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

async fn setup() -> support::AdminSetup {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    support::admin_setup(
        &support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})),
        None,
    )
}

/// POSTs a rollout spec for the route `web`.
async fn start_rollout(admin: SocketAddr, spec: &Value) -> (StatusCode, Value) {
    call(
        admin,
        Method::POST,
        "/v1/routes/web/rollout",
        Some(spec.clone()),
    )
    .await
}

async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    let bytes = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(bytes)).expect("request");
    let (status, body) = support::exchange(&support::client(), request).await;
    (
        StatusCode::from_u16(status).expect("status"),
        serde_json::from_str(&body).expect("JSON body"),
    )
}

async fn rollout(admin: SocketAddr) -> Value {
    call(admin, Method::GET, "/v1/routes/web/rollout", None)
        .await
        .1["rollout"]
        .clone()
}

/// Polls the rollout until `done` holds, with a deadline.
async fn wait_for(admin: SocketAddr, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let now = rollout(admin).await;
        if done(&now) {
            return now;
        }
        assert!(
            start.elapsed() < deadline,
            "rollout did not get there: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pools_seen(proxy: SocketAddr, n: usize) -> std::collections::HashMap<String, usize> {
    support::send_many(proxy, "/", n).await
}

#[tokio::test]
async fn each_strategy_runs_to_completion() {
    let specs = [
        json!({"strategy": "canary", "steps": [{"weight": 2000, "pause": "150ms"}, {"weight": 5000, "pause": "150ms"}]}),
        json!({"strategy": "linear", "step": 5000, "interval": "150ms"}),
        json!({"strategy": "all_at_once"}),
        json!({"strategy": "blue_green", "bake": "200ms"}),
        json!({"preset": "AllAtOnce"}),
    ];
    for spec in specs {
        let setup = setup().await;
        let (status, started) = start_rollout(setup.admin, &spec).await;
        assert_eq!(status, 200, "{spec}: {started}");
        let done = wait_for(setup.admin, Duration::from_secs(10), |r| {
            r["state"] == "completed"
        })
        .await;
        assert_eq!(done["weight"], 10_000, "{spec}");
        let seen = pools_seen(setup.proxy, 40).await;
        assert_eq!(seen.get("canary"), Some(&40), "{spec}: {seen:?}");
        let (_, events) = call(setup.admin, Method::GET, "/v1/events", None).await;
        let kinds: Vec<&str> = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"rollout_started"), "{spec}: {kinds:?}");
        let steps = done["steps"].as_u64().expect("steps") as usize;
        // One event per step after the first.
        assert_eq!(kinds.len(), steps, "{spec}: {kinds:?}");
        if steps > 1 {
            assert_eq!(
                kinds.last(),
                Some(&"rollout_completed"),
                "{spec}: {kinds:?}"
            );
        }
    }
}

#[tokio::test]
async fn canary_steps_move_weights_in_order() {
    let setup = setup().await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "200ms"}, {"weight": 4000, "pause": "200ms"}]});
    start_rollout(setup.admin, &spec).await;
    let mut seen_weights = vec![];
    let done = wait_for(setup.admin, Duration::from_secs(10), |r| {
        r["state"] == "completed"
    })
    .await;
    let (_, events) = call(setup.admin, Method::GET, "/v1/events", None).await;
    for event in events["events"].as_array().expect("events") {
        seen_weights.push(event["new_weights"]["canary"].as_u64().expect("weight"));
    }
    assert_eq!(seen_weights, vec![1000, 4000, 10_000], "{done}");
}

#[tokio::test]
async fn pause_stops_the_clock_and_resume_finishes() {
    let setup = setup().await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "300ms"}]});
    start_rollout(setup.admin, &spec).await;
    let (status, paused) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/pause",
        None,
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["rollout"]["state"], "paused");
    let left = paused["rollout"]["remaining_ms"]
        .as_u64()
        .expect("remaining");
    // Watch it past the step's original end: it must stay paused at 10%
    // with the same time left.
    let watch_until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < watch_until {
        let now = rollout(setup.admin).await;
        assert_eq!(now["state"], "paused", "{now}");
        assert_eq!(now["weight"], 1000);
        assert_eq!(now["remaining_ms"].as_u64(), Some(left));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, resumed) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/resume",
        None,
    )
    .await;
    assert_eq!(resumed["rollout"]["state"], "running");
    wait_for(setup.admin, Duration::from_secs(10), |r| {
        r["state"] == "completed"
    })
    .await;
}

#[tokio::test]
async fn abort_returns_all_traffic_to_the_baseline_at_once() {
    let setup = setup().await;
    call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        Some(json!({"strategy": "blue_green", "bake": "10m"})),
    )
    .await;
    assert_eq!(pools_seen(setup.proxy, 40).await.get("canary"), Some(&40));
    let (status, aborted) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/abort",
        Some(json!({"reason": "error rate too high"})),
    )
    .await;
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(aborted["rollout"]["state"], "aborted");
    assert_eq!(aborted["rollout"]["reason"], "error rate too high");
    // Acknowledged means live: every request from now on is the baseline's.
    assert_eq!(pools_seen(setup.proxy, 40).await.get("stable"), Some(&40));
    let (_, events) = call(setup.admin, Method::GET, "/v1/events", None).await;
    let last = events["events"]
        .as_array()
        .expect("events")
        .last()
        .cloned()
        .expect("event");
    assert_eq!(last["kind"], "rollout_aborted");
    assert_eq!(last["new_weights"], json!({"stable": 10000, "canary": 0}));
    // Once aborted, the operator can set weights again.
    let (status, _) = call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        Some(json!({"weights": {"stable": 9000, "canary": 1000}})),
    )
    .await;
    assert_eq!(status, 200);
}

/// Blue-green as it is run: a release flips to the idle copy, the next
/// release goes to the copy that is now idle and flips back. A rollout
/// done with all traffic on its target makes the target the baseline (as
/// Argo Rollouts makes it stable), so the next rollout's default target is
/// the old pool, and an abort returns to the pool that was serving.
#[tokio::test]
async fn blue_green_flips_alternate_and_the_baseline_follows() {
    let setup = setup().await;
    let baseline = |admin| async move {
        let (_, route) = call(admin, Method::GET, "/v1/routes/web", None).await;
        route["baseline"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(baseline(setup.admin).await, "stable");
    for (to, from) in [("canary", "stable"), ("stable", "canary")] {
        let spec = json!({"strategy": "blue_green", "bake": "100ms"});
        let (status, started) = start_rollout(setup.admin, &spec).await;
        assert_eq!(status, 200, "flip to {to}: {started}");
        assert_eq!(started["rollout"]["target"], to, "{started}");
        wait_for(setup.admin, Duration::from_secs(10), |r| {
            r["state"] == "completed"
        })
        .await;
        assert_eq!(pools_seen(setup.proxy, 40).await.get(to), Some(&40));
        assert_eq!(
            baseline(setup.admin).await,
            to,
            "after the flip from {from}"
        );
    }
    // A third release, aborted during its bake: back to the serving pool.
    let spec = json!({"strategy": "blue_green", "bake": "10m"});
    let (status, started) = start_rollout(setup.admin, &spec).await;
    assert_eq!(
        (status, &started["rollout"]["target"]),
        (StatusCode::OK, &json!("canary"))
    );
    assert_eq!(pools_seen(setup.proxy, 40).await.get("canary"), Some(&40));
    let (status, _) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/abort",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(pools_seen(setup.proxy, 40).await.get("stable"), Some(&40));
}

#[tokio::test]
async fn manual_gate_waits_for_resume_and_weights_are_locked_meanwhile() {
    let setup = setup().await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 500}]});
    let (_, started) = start_rollout(setup.admin, &spec).await;
    assert_eq!(started["rollout"]["state"], "waiting");
    assert_eq!(started["rollout"]["weight"], 500);
    let (status, refused) = call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        Some(json!({"weights": {"stable": 5000, "canary": 5000}})),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    let (status, _) = start_rollout(setup.admin, &spec).await;
    assert_eq!(status, 409, "a second rollout started");
    let (_, resumed) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/resume",
        None,
    )
    .await;
    assert_eq!(resumed["rollout"]["state"], "completed");
    let (status, _) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/pause",
        None,
    )
    .await;
    assert_eq!(status, 409, "paused a finished rollout");
}

#[tokio::test]
async fn bad_rollout_specs_are_refused() {
    let setup = setup().await;
    for (spec, field) in [
        (json!({"strategy": "sideways"}), "strategy"),
        (json!({"strategy": "linear", "interval": "1m"}), "step"),
        (
            json!({"strategy": "linear", "step": 1000, "interval": "soon"}),
            "interval",
        ),
        (
            json!({"strategy": "canary", "steps": [{"weight": 5000}, {"weight": 1000}]}),
            "steps",
        ),
        (
            json!({"strategy": "canary", "steps": [{"weight": 20000}]}),
            "steps",
        ),
        (json!({"strategy": "blue_green"}), "bake"),
        (json!({"preset": "Canary99Percent"}), "preset"),
        (
            json!({"strategy": "all_at_once", "target": "stable"}),
            "target",
        ),
    ] {
        let (status, body) = start_rollout(setup.admin, &spec).await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert_eq!(body["error"]["field"], field, "{spec}: {body}");
    }
    assert_eq!(rollout(setup.admin).await, Value::Null);
}

#[tokio::test]
async fn a_rollout_continues_after_kill_9() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = std::env::temp_dir().join(format!("switchyard-rollout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})).to_string(),
    )
    .expect("config");
    let state = dir.join("state");
    let args = [
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().expect("utf-8"),
        // No traffic in this test: no minimum per step.
        "--min-step-requests",
        "0",
    ];
    let (mut child, _, admin) = support::start_binary(&args).await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 3000, "pause": "1500ms"}]});
    let (status, _) = start_rollout(admin, &spec).await;
    assert_eq!(status, 200);
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    let (_child, proxy, admin) = support::start_binary(&args).await;
    let now = rollout(admin).await;
    assert_eq!(now["weight"], 3000, "{now}");
    assert!(
        now["state"] == "running" || now["state"] == "completed",
        "{now}"
    );
    wait_for(admin, Duration::from_secs(10), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(pools_seen(proxy, 20).await.get("canary"), Some(&20));
}

/// A gate that holds while `open` is false, or aborts when told to.
struct TestGate {
    open: std::sync::atomic::AtomicBool,
    abort: std::sync::atomic::AtomicBool,
}

impl switchyard_admin::StepGate for TestGate {
    fn check(
        &self,
        _route: &str,
        _rollout: &switchyard_admin::rollout::Rollout,
    ) -> switchyard_admin::GateVerdict {
        use std::sync::atomic::Ordering::SeqCst;
        if self.abort.load(SeqCst) {
            switchyard_admin::GateVerdict::Abort("canary error rate above the baseline's".into())
        } else if self.open.load(SeqCst) {
            switchyard_admin::GateVerdict::Proceed
        } else {
            switchyard_admin::GateVerdict::Hold("too little traffic at this step".into())
        }
    }
}

#[tokio::test]
async fn a_gate_holds_a_due_step_and_can_abort_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let setup = setup().await;
    let gate = std::sync::Arc::new(TestGate {
        open: false.into(),
        abort: false.into(),
    });
    setup.plane.set_gate(gate.clone());
    let spec = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "100ms"}, {"weight": 3000, "pause": "100ms"}]});
    start_rollout(setup.admin, &spec).await;
    // The step is due after 100 ms, but the gate holds it, and says why.
    let held = wait_for(setup.admin, Duration::from_secs(10), |r| {
        !r["held"].is_null()
    })
    .await;
    assert_eq!(held["step"], 1, "{held}");
    assert_eq!(held["weight"], 1000);
    assert_eq!(held["held"], "too little traffic at this step");
    gate.open.store(true, SeqCst);
    let next = wait_for(setup.admin, Duration::from_secs(10), |r| r["step"] == 2).await;
    assert_eq!(next["weight"], 3000);
    assert!(next["held"].is_null(), "{next}");
    gate.abort.store(true, SeqCst);
    let aborted = wait_for(setup.admin, Duration::from_secs(10), |r| {
        r["state"] == "aborted"
    })
    .await;
    assert_eq!(aborted["reason"], "canary error rate above the baseline's");
    assert_eq!(pools_seen(setup.proxy, 20).await.get("stable"), Some(&20));
    let (_, events) = call(setup.admin, Method::GET, "/v1/events", None).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "rollout_started",
            "rollout_held",
            "rollout_step",
            "rollout_aborted"
        ]
    );
}

#[tokio::test]
async fn a_step_holds_until_the_canary_has_served_enough_requests() {
    let setup = setup().await;
    setup.api.board().set_min_step_requests(50);
    let spec = json!({"strategy": "canary", "steps": [{"weight": 5000, "pause": "100ms"}]});
    start_rollout(setup.admin, &spec).await;
    // Without traffic the due step holds, and says so.
    let held = wait_for(setup.admin, Duration::from_secs(10), |r| {
        !r["held"].is_null()
    })
    .await;
    assert_eq!(held["step"], 1, "{held}");
    assert!(
        held["held"]
            .as_str()
            .is_some_and(|h| h.contains("of the 50 requests")),
        "{held}"
    );
    // With traffic (half of it to the canary) it moves on.
    let traffic = pools_seen(setup.proxy, 200).await;
    assert!(
        traffic.get("canary").copied().unwrap_or(0) >= 50,
        "{traffic:?}"
    );
    let done = wait_for(setup.admin, Duration::from_secs(10), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["weight"], 10_000);
}
