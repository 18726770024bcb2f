//! The admin API through real sockets: weight shifts under load, If-Match,
//! bad input that changes nothing, authentication, and durable state
//! across a `kill -9` of the real binary.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use support::admin_call as call;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn put_weights(admin: SocketAddr, stable: i64, canary: i64) -> (StatusCode, String) {
    let body = json!({"weights": {"stable": stable, "canary": canary}}).to_string();
    let (status, _, body) =
        call(admin, Method::PUT, "/v1/routes/web/weights", &[JSON], &body).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_shifts_under_load_fail_nothing_and_apply_at_once() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({})),
        None,
    );

    let running = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..6 {
        let running = running.clone();
        let served = served.clone();
        let proxy = setup.proxy;
        load.push(tokio::spawn(async move {
            let client = support::client();
            while running.load(Ordering::Relaxed) {
                let (status, _, body) = support::get(&client, proxy, "/", &[]).await;
                assert_eq!(status, 200, "a request failed during shifts: {body}");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let probe = support::client();
    for shift in 0..200 {
        let to_canary = shift % 2 == 0;
        let (status, body) = if to_canary {
            put_weights(setup.admin, 0, 10_000).await
        } else {
            put_weights(setup.admin, 10_000, 0).await
        };
        assert_eq!(status, 200, "{body}");
        // Acknowledged means live: the very next request follows it.
        let (_, _, answer) = support::get(&probe, setup.proxy, "/", &[]).await;
        assert_eq!(
            answer,
            if to_canary { "canary" } else { "stable" },
            "shift {shift}"
        );
    }
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.expect("load client");
    }
    assert!(served.load(Ordering::Relaxed) > 200, "too little load");
}

#[tokio::test]
async fn concurrent_puts_with_the_same_if_match_one_wins() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        None,
    );
    for _ in 0..20 {
        let (_, headers, _) = call(setup.admin, Method::GET, "/v1/routes", &[], "").await;
        let etag = headers["etag"].to_str().expect("etag").to_string();
        let put = |stable: i64, canary: i64| {
            let etag = etag.clone();
            let admin = setup.admin;
            async move {
                let body = json!({"weights": {"stable": stable, "canary": canary}}).to_string();
                call(
                    admin,
                    Method::PUT,
                    "/v1/routes/web/weights",
                    &[JSON, ("if-match", &etag)],
                    &body,
                )
                .await
            }
        };
        let (a, b) = tokio::join!(put(5000, 5000), put(2500, 7500));
        let statuses = [a.0.as_u16(), b.0.as_u16()];
        assert!(
            statuses == [200, 412] || statuses == [412, 200],
            "{statuses:?}: {} / {}",
            a.2,
            b.2
        );
        let winner: Value =
            serde_json::from_str(if a.0 == 200 { &a.2 } else { &b.2 }).expect("json");
        let loser = if a.0 == 412 { &a.2 } else { &b.2 };
        assert!(loser.contains("version_mismatch"), "{loser}");
        let (_, _, now) = call(setup.admin, Method::GET, "/v1/routes/web", &[], "").await;
        let now: Value = serde_json::from_str(&now).expect("json");
        assert_eq!(
            now["weights"], winner["weights"],
            "the loser changed something"
        );
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        Some("s3cret"),
    );
    let auth = ("authorization", "Bearer s3cret");
    let (_, before_headers, before) =
        call(setup.admin, Method::GET, "/v1/routes", &[auth], "").await;
    let weights = "/v1/routes/web/weights";
    let big = format!(
        "{{\"weights\": {{\"stable\": 10000, \"x\": \"{}\"}}}}",
        "a".repeat(70_000)
    );
    // method, path, headers, body, expected status, expected error code
    type Case<'a> = (
        Method,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 10000}, "extra": 1}"#.into(),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 9000, "canary": 900}}"#.into(),
            400,
            "weights_do_not_sum",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 9000, "green": 1000}}"#.into(),
            400,
            "invalid_weight",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 11000, "canary": -1000}}"#.into(),
            400,
            "invalid_weight",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 20000, "canary": 0}}"#.into(),
            400,
            "invalid_weight",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": "9000", "canary": 1000}}"#.into(),
            400,
            "invalid_weight",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 90.005, "canary": 9.995}}"#.into(),
            400,
            "invalid_weight",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            r#"{"weights": [9000, 1000]}"#.into(),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            weights,
            vec![auth],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth],
            big,
            413,
            "body_too_large",
        ),
        (
            Method::PUT,
            "/v1/routes/nope/weights",
            vec![JSON, auth],
            r#"{"weights": {"stable": 10000}}"#.into(),
            404,
            "unknown_route",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, auth, ("if-match", "\"999\"")],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            412,
            "version_mismatch",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            401,
            "unauthorized",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, ("authorization", "Bearer wrong")],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            401,
            "unauthorized",
        ),
        (
            Method::PUT,
            weights,
            vec![JSON, ("authorization", "Basic czNjcmV0")],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            401,
            "unauthorized",
        ),
        // The scheme is case-insensitive (RFC 9110 §11.1): this call gets
        // as far as the method check.
        (
            Method::POST,
            weights,
            vec![JSON, ("authorization", "bearer s3cret")],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            weights,
            vec![JSON, auth],
            r#"{"weights": {"stable": 5000, "canary": 5000}}"#.into(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/nothing",
            vec![auth],
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/events?since=abc",
            vec![auth],
            String::new(),
            400,
            "invalid_query",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got, response_headers, answer) =
            call(setup.admin, method.clone(), path, &headers, &body).await;
        assert_eq!(got.as_u16(), status, "{method} {path} {body:.80}: {answer}");
        let answer: Value = serde_json::from_str(&answer).expect("error body is JSON");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if status == 401 {
            assert!(response_headers.contains_key("www-authenticate"));
        }
    }
    let (_, after_headers, after) = call(setup.admin, Method::GET, "/v1/routes", &[auth], "").await;
    assert_eq!(before, after, "a refused call changed the table");
    assert_eq!(before_headers["etag"], after_headers["etag"]);
    // Health checks need no token.
    let (status, _, _) = call(setup.admin, Method::GET, "/healthz", &[], "").await;
    assert_eq!(status, 200);
}

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-admin-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn acknowledged_weights_survive_kill_9() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = state_dir("kill9");
    let config = dir.with_extension("json");
    std::fs::write(
        &config,
        support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})).to_string(),
    )
    .expect("config");
    let args = [
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        dir.to_str().expect("utf-8"),
    ];
    let (mut child, proxy, admin) = support::start_binary(&args).await;
    let (status, body) = put_weights(admin, 2500, 7500).await;
    assert_eq!(status, 200, "{body}");
    let version: Value = serde_json::from_str(&body).expect("json");
    let acknowledged = version["version"].as_u64().expect("version");
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    let (_child, proxy2, admin2) = support::start_binary(&args).await;
    let (_, _, routes) = call(admin2, Method::GET, "/v1/routes/web", &[], "").await;
    let routes: Value = serde_json::from_str(&routes).expect("json");
    assert_eq!(routes["weights"], json!({"stable": 2500, "canary": 7500}));
    assert!(
        routes["version"].as_u64().expect("version") > acknowledged,
        "version went back"
    );
    let (_, _, events) = call(admin2, Method::GET, "/v1/events", &[], "").await;
    assert!(
        events.contains("\"weights\""),
        "the audit log lost the change: {events}"
    );
    // The data plane serves the restored weights: the canary has 75%.
    let seen = support::send_many(proxy2, "/", 400).await;
    let canary_count = seen.get("canary").copied().unwrap_or(0);
    // Binomial(400, 0.75): sd ≈ 8.7; 240..=360 is over ±6.9 sd.
    assert!((240..=360).contains(&canary_count), "{seen:?}");
    let _ = proxy;
}

#[tokio::test]
async fn a_truncated_state_file_stops_the_start_unless_reset() {
    let stable = support::upstream("stable").await;
    let dir = state_dir("truncated");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("state.json"),
        b"{\"format\": 1, \"version\": 3, \"rou",
    )
    .expect("write");
    let run = |reset: bool| {
        let mut command = std::process::Command::new(BIN);
        command.args([
            "run",
            "--stable",
            &stable.addr.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            dir.to_str().expect("utf-8"),
        ]);
        if reset {
            command.arg("--reset-state");
        }
        command
    };
    let output = run(false).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is corrupt"), "{stderr}");
    assert!(stderr.contains("--reset-state"), "{stderr}");

    let mut child = tokio::process::Command::from(run(true))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("started in time")
        .expect("stdout");
    assert!(
        first.is_some_and(|l| l.contains("listening")),
        "did not start with --reset-state"
    );
}

#[test]
fn non_loopback_admin_without_a_token_refuses_to_start() {
    let output = std::process::Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("give it a token"), "{stderr}");
}
