//! The control plane's edges, from a review (each test failed on the code
//! as it was reviewed): a last step with a pause completes the rollout; a
//! 405 names the allowed methods; duplicate keys in a weights body are
//! refused; the audit log survives a torn last line; `PUT /v1/config`
//! takes relative certificate files from the config file's directory; the
//! rollout metrics are right after a restart; a reload whose endpoint does
//! not resolve is recorded with its line; a refused `PUT /v1/config`
//! leaves the file as it was. And: a pause or resume that would change
//! nothing is refused, rollout calls honour `If-Match`, and an abort
//! reason sent without its type is refused.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");

use support::admin_call as call;

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let (status, _, body) = call(admin, Method::GET, path, &[], "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn in_process(stable_bp: i64) -> (support::AdminSetup, support::Upstream, support::Upstream) {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(
            &[(&stable, stable_bp), (&canary, 10_000 - stable_bp)],
            json!({}),
        ),
        None,
    );
    (setup, stable, canary)
}

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-admin-edges-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Two upstreams, and a directory with `config.json` splitting between
/// them (all to stable), for the real binary with `--state-dir DIR/state`.
async fn upstreams_and_config(name: &str) -> (support::Upstream, support::Upstream, PathBuf) {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = temp_dir(name);
    let config = support::split_config(&[(&stable, 10_000), (&canary, 0)], json!({}));
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    (stable, canary, dir)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Sets route `web` to `canary_bp` on the canary, the rest on stable;
/// the call must succeed.
async fn put_weights(admin: SocketAddr, canary_bp: i64) {
    let body = json!({"weights": {"stable": 10_000 - canary_bp, "canary": canary_bp}});
    let (status, _, answer) = call(
        admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[JSON],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// `switchyard run` on `config` with an admin API on a free port and its
/// state in `state`, then `extra`.
fn run_args<'a>(config: &'a Path, state: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--config",
        utf8(config),
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        utf8(state),
    ];
    args.extend_from_slice(extra);
    args
}

// ---------------------------------------------------------------------
// 1. A canary whose last step is 100% with a pause never completes: the
//    driver "advances" past the last step forever, persisting a new
//    version and recording an event about every millisecond.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_canary_whose_last_step_has_a_pause_completes_after_it() {
    let (setup, _stable, _canary) = in_process(10_000).await;
    // Argo's `setWeight: 100` followed by `pause: {duration: ...}` as the
    // last step: the rollout is complete once that pause is over.
    let spec = json!({"strategy": "canary", "steps": [
        {"weight": 5000, "pause": "200ms"},
        {"weight": 10000, "pause": "300ms"},
    ]});
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        &spec.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let started_version = get_json(setup.admin, "/v1/routes").await["version"]
        .as_u64()
        .expect("version");

    let rollout = support::poll_for(
        Duration::from_secs(5),
        || async { get_json(setup.admin, "/v1/routes/web/rollout").await["rollout"].clone() },
        |r| r["state"] == "completed",
    )
    .await;
    let version = get_json(setup.admin, "/v1/routes").await["version"]
        .as_u64()
        .expect("version");
    let events = get_json(setup.admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .len();
    assert_eq!(
        rollout["state"], "completed",
        "the rollout never completed 5 s after its last pause (0.5 s) ended; \
         meanwhile the table version went from {started_version} to {version} \
         and {events} events were recorded: {rollout}"
    );
    assert!(
        version - started_version <= 3 && events <= 4,
        "a two-step rollout took {} versions and {events} events",
        version - started_version
    );
}

// ---------------------------------------------------------------------
// 2. 405 answers carry no Allow header (RFC 9110 §15.5.6: MUST).
// ---------------------------------------------------------------------

#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let (setup, _stable, _canary) = in_process(9000).await;
    let cases = [
        (Method::POST, "/v1/routes", "GET"),
        (Method::DELETE, "/v1/routes/web", "GET"),
        (Method::POST, "/v1/routes/web/weights", "PUT"),
        (Method::GET, "/v1/routes/web/rollout/abort", "POST"),
        (Method::POST, "/v1/config", "PUT"),
        (Method::PUT, "/healthz", "GET"),
    ];
    for (method, path, allowed) in cases {
        let (status, headers, body) = call(setup.admin, method.clone(), path, &[JSON], "{}").await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(answer["error"]["code"], "method_not_allowed", "{answer}");
        let allow = headers
            .get("allow")
            .map(|v| v.to_str().expect("ASCII").to_string());
        assert!(
            allow
                .as_deref()
                .is_some_and(|a| a.split(',').any(|m| m.trim() == allowed)),
            "405 for {method} {path} without an Allow header naming {allowed}: \
             allow = {allow:?}, headers = {headers:?}"
        );
    }
}

// ---------------------------------------------------------------------
// 3. A weights body with duplicate pool keys is applied (last one wins)
//    instead of being refused; the config file refuses the same thing.
// ---------------------------------------------------------------------

#[tokio::test]
async fn duplicate_keys_in_a_weights_body_are_refused_and_change_nothing() {
    let (setup, _stable, _canary) = in_process(9000).await;
    let (_, before_headers, before) = call(setup.admin, Method::GET, "/v1/routes", &[], "").await;
    // Read one way it moves all traffic to stable, the other way to canary.
    let body = r#"{"weights": {"stable": 10000, "canary": 0, "stable": 0, "canary": 10000}}"#;
    let (status, _, answer) = call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[JSON],
        body,
    )
    .await;
    let (_, after_headers, after) = call(setup.admin, Method::GET, "/v1/routes", &[], "").await;
    let served = support::send_many(setup.proxy, "/", 20).await;
    assert_eq!(
        status, 400,
        "an ambiguous body with duplicate keys was accepted: {answer}; \
         traffic now {served:?}"
    );
    let answer: Value = serde_json::from_str(&answer).expect("a JSON error");
    assert_eq!(answer["error"]["code"], "invalid_json", "{answer}");
    assert_eq!(before, after, "a refused call changed the table");
    assert_eq!(before_headers["etag"], after_headers["etag"]);
}

// ---------------------------------------------------------------------
// 4. The audit log after a torn append: the next event is glued onto the
//    cut line and lost at the next restart, and its id is handed out again.
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_event_recorded_after_a_torn_audit_line_survives_the_next_restart() {
    let (_stable, _canary, dir) = upstreams_and_config("torn-events").await;
    let (config, state) = (dir.join("config.json"), dir.join("state"));
    let args = run_args(&config, &state, &[]);
    let (mut child, _, admin) = support::start_binary(&args).await;
    put_weights(admin, 1000).await;
    put_weights(admin, 2000).await;
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    // A crash in the middle of the last append (power loss after part of
    // the line reached the disk): the code reads such a line as skipped,
    // "not fatal".
    let log = state.join("events.jsonl");
    let bytes = std::fs::read(&log).expect("events.jsonl");
    std::fs::write(&log, &bytes[..bytes.len() - 20]).expect("tear the last line");

    let (mut child, _, admin) = support::start_binary(&args).await;
    put_weights(admin, 3000).await; // acknowledged, and its event synced
    let acknowledged: Vec<Value> = get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .clone();
    let last = acknowledged
        .last()
        .expect("the event of the change")
        .clone();
    assert_eq!(last["new_weights"]["canary"], 3000, "{last}");
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    let (_child, _, admin) = support::start_binary(&args).await;
    let after: Vec<Value> = get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .clone();
    let kept = after
        .iter()
        .any(|e| e["id"] == last["id"] && e["new_weights"]["canary"] == 3000);
    let tail = String::from_utf8_lossy(&std::fs::read(&log).expect("events.jsonl")).into_owned();
    assert!(
        kept,
        "event {} (canary 3000), recorded and synced before the answer, is gone after a restart; \
         events now: {after:?}\nevents.jsonl: {tail}",
        last["id"]
    );
}

// ---------------------------------------------------------------------
// 5. PUT /v1/config resolves relative TLS file names against the
//    process's working directory, not the config file's directory, so a
//    config that `switchyard check` accepts (and a file reload would load)
//    is refused through the API.
// ---------------------------------------------------------------------

#[tokio::test]
async fn put_config_takes_relative_tls_files_relative_to_the_config_file() {
    let stable = support::upstream("stable").await;
    let dir = temp_dir("put-config-tls");
    // A self-signed certificate for localhost beside the config file.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join("site.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("site.key"), key.serialize_pem()).expect("key");

    let file = dir.join("config.json");
    let plain = support::split_config(&[(&stable, 10_000)], json!({}));
    std::fs::write(&file, plain.to_string()).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;

    // The same config plus a TLS listener whose files are named relative
    // to the config file, as the README says they are.
    let tls_port = support::free_port();
    let mut with_tls = plain.clone();
    with_tls["listeners"] = json!([
        {"address": "127.0.0.1:0"},
        {"address": format!("127.0.0.1:{tls_port}"),
         "tls": {"certificates": [{"cert_file": "site.pem", "key_file": "site.key"}]}},
    ]);
    let text = serde_json::to_string_pretty(&with_tls).expect("json");
    // `switchyard check` accepts this text as the config file.
    let checked = dir.join("checked.json");
    std::fs::write(&checked, &text).expect("write");
    let (ok, _, stderr) = support::check_file(&checked);
    assert!(ok, "switchyard check refused the config: {stderr}");

    let (status, body) = support::put_config(admin, text).await;
    assert_eq!(
        status, 200,
        "PUT /v1/config refused a config that `switchyard check` accepts from the same \
         directory: {body}"
    );
}

// ---------------------------------------------------------------------
// 6. After a restart, a running rollout is back (state.json) but the
//    metrics say no rollout is running.
// ---------------------------------------------------------------------

async fn metric_line(admin: SocketAddr, prefix: &str) -> Option<String> {
    let (_, _, text) = call(admin, Method::GET, "/metrics", &[], "").await;
    text.lines()
        .find(|line| line.starts_with(prefix))
        .map(str::to_string)
}

#[tokio::test]
async fn a_running_rollout_is_reported_by_the_metrics_after_a_restart() {
    let (_stable, _canary, dir) = upstreams_and_config("rollout-metrics").await;
    let (config, state) = (dir.join("config.json"), dir.join("state"));
    let args = run_args(&config, &state, &["--min-step-requests", "0"]);
    let running = r#"switchyard_rollout_state{route="web",state="running"}"#;
    let (mut child, _, admin) = support::start_binary(&args).await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 2500, "pause": "1h"}]});
    let (status, _, body) = call(
        admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        &spec.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric_line(admin, running).await.as_deref(),
        Some(format!("{running} 1").as_str()),
        "before the restart"
    );
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    let (_child, _, admin) = support::start_binary(&args).await;
    let rollout = get_json(admin, "/v1/routes/web/rollout").await["rollout"].clone();
    assert_eq!(
        rollout["state"], "running",
        "the rollout came back: {rollout}"
    );
    let line = metric_line(admin, running).await;
    assert_eq!(
        line.as_deref(),
        Some(format!("{running} 1").as_str()),
        "after a restart the API says the rollout runs but /metrics does not"
    );
}

// ---------------------------------------------------------------------
// 7. A reloaded file whose endpoint does not resolve is refused (the
//    table cannot be built) but with no `config_rejected` event, no line
//    and no reason: only the metric moves.
// ---------------------------------------------------------------------

/// Replaces the file the way config managers do: write aside, then rename.
fn replace_file(path: &Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

async fn events_of_kind(admin: SocketAddr, kind: &str) -> Vec<Value> {
    get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_reload_whose_endpoint_does_not_resolve_is_recorded_with_its_line() {
    let stable = support::upstream("stable").await;
    let dir = temp_dir("reload-unresolvable");
    let file = dir.join("config.json");
    let good = support::split_config(&[(&stable, 10_000)], json!({}));
    std::fs::write(&file, serde_json::to_string_pretty(&good).expect("json")).expect("config");
    let (_child, proxy, admin) = support::start_on_config(&file).await;

    let mut bad = good.clone();
    bad["pools"]["stable"]["endpoints"] = json!(["no-such-host.invalid:8080"]);
    let bad_text = serde_json::to_string_pretty(&bad).expect("json");
    // `switchyard check` refuses it with its line.
    let checked = dir.join("checked.json");
    std::fs::write(&checked, &bad_text).expect("write");
    let (ok, _, stderr) = support::check_file(&checked);
    assert!(!ok && stderr.contains("does not resolve"), "{stderr}");

    replace_file(&file, &bad_text);
    let rejected = r#"switchyard_config_reloads_total{result="rejected"}"#;
    let seen = support::poll_for(
        Duration::from_secs(10),
        || async {
            (
                metric_line(admin, rejected).await,
                events_of_kind(admin, "config_rejected").await,
            )
        },
        |(metric, events)| metric.is_some() && !events.is_empty(),
    )
    .await;
    // The running table stays, as it should.
    let (status, _, body) = support::get(&support::client(), proxy, "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
    assert_eq!(
        seen.0.as_deref(),
        Some(format!("{rejected} 1").as_str()),
        "the reload was not even processed"
    );
    assert_eq!(
        seen.1.len(),
        1,
        "the reload was refused (metric: {:?}) but no config_rejected event says where or why",
        seen.0
    );
    let reason = seen.1[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("config.json:") && reason.contains("does not resolve"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------
// 8. PUT /v1/config writes the config file before persisting the state;
//    when the state cannot be persisted the call is refused (500) but the
//    file stays replaced, and the next start serves the refused config.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_refused_put_config_leaves_the_config_file_untouched() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = temp_dir("put-config-atomic");
    let file = dir.join("config.json");
    let config = |canary_bp: i64| {
        support::split_config(
            &[(&stable, 10_000 - canary_bp), (&canary, canary_bp)],
            json!({}),
        )
    };
    let original = config(0).to_string();
    std::fs::write(&file, &original).expect("config");
    let state = dir.join("state");
    let args = run_args(&file, &state, &[]);
    let (mut child, _, admin) = support::start_binary(&args).await;

    // The state can no longer be written (as with a full or read-only
    // disk): its temp file's name is taken by a directory.
    std::fs::create_dir(state.join("state.json.tmp")).expect("block the state file");
    let (status, body) = support::put_config(admin, config(10_000).to_string()).await;
    assert!(
        status >= 500,
        "the state could not be persisted, yet the call was acknowledged: {status} {body}"
    );
    let on_disk = std::fs::read_to_string(&file).expect("read");

    // Restart (the disk is fine again): what is served must be what was
    // acknowledged, i.e. the original config.
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");
    std::fs::remove_dir(state.join("state.json.tmp")).expect("unblock");
    let (_child, _, admin) = support::start_binary(&args).await;
    let weights = get_json(admin, "/v1/routes/web").await["weights"].clone();
    assert!(
        on_disk == original && weights["canary"] == 0,
        "PUT /v1/config answered {status} {body}, yet the file was replaced \
         (file changed: {}) and after a restart the refused config is served: {weights}",
        on_disk != original
    );
}

/// A pause of a rollout whose clock is not running, or a resume of one
/// whose clock is, changes nothing: 409, no event, the same version.
#[tokio::test]
async fn a_pause_or_resume_that_changes_nothing_is_refused() {
    let (setup, _stable, _canary) = in_process(10_000).await;
    let spec = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "1h"}]});
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        &spec.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let action = |name: &'static str| {
        let path = format!("/v1/routes/web/rollout/{name}");
        async move { call(setup.admin, Method::POST, &path, &[], "").await }
    };
    for (name, refused) in [
        ("resume", true),
        ("pause", false),
        ("pause", true),
        ("resume", false),
    ] {
        let before = get_json(setup.admin, "/v1/events").await["events"].clone();
        let (status, _, body) = action(name).await;
        let after = get_json(setup.admin, "/v1/events").await["events"].clone();
        if refused {
            assert_eq!(status, 409, "{name}: {body}");
            assert!(body.contains("nothing") || body.contains("only"), "{body}");
            assert_eq!(before, after, "{name} recorded a change");
        } else {
            assert_eq!(status, 200, "{name}: {body}");
            assert_ne!(before, after, "{name} recorded nothing");
        }
    }
}

/// Rollout calls take `If-Match` like the weights and the config: a stale
/// version gets 412 and changes nothing.
#[tokio::test]
async fn rollout_calls_honour_if_match() {
    let (setup, _stable, _canary) = in_process(10_000).await;
    let version = get_json(setup.admin, "/v1/routes").await["version"]
        .as_u64()
        .expect("version");
    let stale = format!("\"{}\"", version + 7);
    let current = format!("\"{version}\"");
    let spec = json!({"strategy": "blue_green", "bake": "1h"}).to_string();
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON, ("if-match", &stale)],
        &spec,
    )
    .await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(
        get_json(setup.admin, "/v1/routes/web/rollout").await["rollout"],
        Value::Null
    );
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON, ("if-match", &current)],
        &spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/abort",
        &[("if-match", &current)],
        "",
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let rollout = get_json(setup.admin, "/v1/routes/web/rollout").await["rollout"].clone();
    assert_eq!(rollout["state"], "running", "{rollout}");
}

/// An abort's reason sent without `content-type: application/json` is
/// refused (415) rather than dropped, and the rollout runs on.
#[tokio::test]
async fn an_abort_reason_without_its_type_is_refused() {
    let (setup, _stable, _canary) = in_process(10_000).await;
    let spec = json!({"strategy": "blue_green", "bake": "1h"}).to_string();
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        &spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reason = json!({"reason": "p99 too high"}).to_string();
    let (status, _, body) = call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/abort",
        &[],
        &reason,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let rollout = get_json(setup.admin, "/v1/routes/web/rollout").await["rollout"].clone();
    assert_eq!(rollout["state"], "running", "{rollout}");
}

/// Versions never go back: after `--reset-state` (a corrupt state file
/// discarded) the table's version starts above every version the audit
/// log recorded (it restarted at 1,
/// so an ETag handed out before could name another table later).
#[tokio::test]
async fn versions_do_not_go_back_after_a_reset_state() {
    let (_stable, _canary, dir) = upstreams_and_config("reset-versions").await;
    let (config, state) = (dir.join("config.json"), dir.join("state"));
    let args = run_args(&config, &state, &[]);
    let (mut child, _, admin) = support::start_binary(&args).await;
    for canary_bp in [1000, 2000, 3000] {
        put_weights(admin, canary_bp).await;
    }
    let before = get_json(admin, "/v1/routes").await["version"]
        .as_u64()
        .expect("version");
    child.start_kill().expect("kill");
    child.wait().await.expect("reaped");

    // A corrupt state file, started again with `--reset-state`.
    std::fs::write(state.join("state.json"), "{ torn").expect("corrupt the state");
    let args = run_args(&config, &state, &["--reset-state"]);
    let (_child, _, admin) = support::start_binary(&args).await;
    let after = get_json(admin, "/v1/routes").await["version"]
        .as_u64()
        .expect("version");
    assert!(
        after > before,
        "version {after} after a reset, {before} before"
    );
}

/// The events of an audit file, in order.
fn audit_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
        .collect()
}

/// The audit log is rotated at `--audit-log-max-bytes` (to
/// `events.jsonl.1`, as logrotate names it), ids carry on across the
/// rotation and a restart, and a file moved away by logrotate is followed:
/// the next event goes to a new `events.jsonl`. (It grew for ever, and
/// after an outside rename every event went on into the renamed file.)
#[tokio::test]
async fn the_audit_log_is_rotated_and_followed_after_an_outside_rename() {
    let (_stable, _canary, dir) = upstreams_and_config("audit-rotation").await;
    let (config, state) = (dir.join("config.json"), dir.join("state"));
    let args = run_args(&config, &state, &["--audit-log-max-bytes", "4096"]);
    let (mut child, _, admin) = support::start_binary(&args).await;
    let (log, rotated) = (state.join("events.jsonl"), state.join("events.jsonl.1"));
    let mut changes = 0;
    while !rotated.exists() {
        changes += 1;
        assert!(changes < 100, "no rotation after {changes} changes");
        put_weights(admin, 100 + changes).await;
    }
    put_weights(admin, 5000).await;
    for file in [&log, &rotated] {
        let size = std::fs::metadata(file).expect("audit file").len();
        assert!(size <= 4096, "{} holds {size} bytes", file.display());
    }
    let mut both = audit_lines(&rotated);
    both.extend(audit_lines(&log));
    let ids: Vec<u64> = both.iter().map(|e| e["id"].as_u64().expect("id")).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids across the rotation: {ids:?}"
    );
    let last = *ids.last().expect("events");
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");

    // A restart reads both files back: the API still lists the rotated
    // events and ids carry on.
    let (_child, _, admin) = support::start_binary(&args).await;
    let listed = get_json(admin, "/v1/events").await["events"]
        .as_array()
        .expect("events")
        .clone();
    assert!(
        listed.iter().any(|e| e["id"] == ids[0]),
        "the rotated file's first event {} is not listed: {listed:?}",
        ids[0]
    );
    let moved = state.join("events.jsonl.old");
    std::fs::rename(&log, &moved).expect("logrotate's rename");
    let before = audit_lines(&moved).len();
    put_weights(admin, 6000).await;
    let fresh = audit_lines(&log);
    let ids_now: Vec<u64> = fresh
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert!(
        fresh
            .last()
            .is_some_and(|e| e["new_weights"]["canary"] == 6000),
        "the change after the rename is not in a new events.jsonl: {fresh:?}"
    );
    assert!(
        ids_now.iter().all(|&id| id > last),
        "ids went back after the restart: {ids_now:?} after {last}"
    );
    assert_eq!(
        audit_lines(&moved).len(),
        before,
        "the renamed file was written to"
    );
}
