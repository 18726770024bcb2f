//! Config reloads' edges, from a review of the file watch and the
//! metrics, against the real binary: a read of the file is not a change
//! (it set off a reload ten times a second), a symlinked directory swapped
//! Capistrano-style is followed, and a reload takes away the rollout and
//! weight series of what it removed.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// `GET /metrics` parsed into `name{labels}` → value, with the text.
async fn scrape(admin: SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, _, body) = support::get(&support::client(), admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let parsed = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect();
    (body, parsed)
}

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

/// Replaces the file the way config managers do: write aside, then rename.
fn replace_file(path: &Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

const UNCHANGED: &str = r#"switchyard_config_reloads_total{result="unchanged"}"#;
const APPLIED: &str = r#"switchyard_config_reloads_total{result="applied"}"#;

/// Reading the config file is not a change to it. The watch took every
/// event on the file's name, and notify reports opens (`IN_OPEN`), so the
/// reload's own read of the file was an event that set off the next
/// reload: once anything opened the file, Switchyard re-read it about ten
/// times a second for ever, counting each as an "unchanged" reload.
#[tokio::test]
async fn reading_the_config_file_does_not_set_off_reloads() {
    let stable = support::upstream("stable").await;
    let dir = support::pki::temp_dir("read-loop");
    let file = dir.join("config.json");
    let config = support::split_config(&[(&stable, 10_000)], json!({})).to_string();
    std::fs::write(&file, &config).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;

    // Someone (a backup agent, `cat`, a config checker) reads the file.
    assert_eq!(std::fs::read_to_string(&file).expect("read"), config);

    // A later real edit is applied: once it is, the watch has long seen
    // the read as well.
    replace_file(&file, &format!("{config}\n"));
    let (_, metrics) = support::poll_for(
        Duration::from_secs(10),
        || scrape(admin),
        |(_, m)| value(m, APPLIED) + value(m, UNCHANGED) >= 1.0,
    )
    .await;
    assert!(value(&metrics, APPLIED) + value(&metrics, UNCHANGED) >= 1.0);
    // Over the next two seconds nothing touches the file: no more reloads.
    let settled = value(&metrics, UNCHANGED) + value(&metrics, APPLIED);
    let (text, metrics) = support::poll_for(
        Duration::from_secs(2),
        || scrape(admin),
        |(_, m)| value(m, UNCHANGED) + value(m, APPLIED) > settled + 2.0,
    )
    .await;
    let reloads = value(&metrics, UNCHANGED) + value(&metrics, APPLIED);
    assert!(
        reloads <= settled + 1.0,
        "the file was reloaded {} more times while nobody changed it:\n{}",
        reloads - settled,
        text.lines()
            .filter(|l| l.contains("config_reloads"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `PUT path` on the admin API with a JSON body: status and JSON answer.
async fn admin_json(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let (status, _, text) = support::admin_call(
        admin,
        method,
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    (
        status.as_u16(),
        serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
    )
}

/// Two routes, `web` and `old`, each splitting `stable` 90% and `pool`
/// 10%, by host.
fn two_routes(stable: &support::Upstream, other: &support::Upstream, pool: &str) -> String {
    let route = |name: &str| {
        json!({"name": name, "match": {"host": name},
               "split": {"baseline": "stable", "weights": {"stable": 9000, pool: 1000}}})
    };
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [stable.addr.to_string()]},
                  pool: {"endpoints": [other.addr.to_string()]}},
        "routes": [route("web"), route("old")],
    })
    .to_string()
}

/// A reload that changes a route's pools drops its runtime state, the
/// rollout with it (README, "Precedence"): the API then shows no rollout,
/// and `switchyard_rollout_state{state="running"}` must not stay 1: the
/// shipped `SwitchyardRolloutHeld` alert fired 30 minutes later for a
/// rollout that no longer existed, and the dashboard showed it running.
#[tokio::test]
async fn a_rollout_dropped_by_a_reload_is_not_reported_running() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = support::pki::temp_dir("dropped-rollout");
    let file = dir.join("config.json");
    std::fs::write(&file, two_routes(&stable, &canary, "canary")).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;

    let rollout = json!({"strategy": "canary", "steps": [{"weight": 1000, "pause": "10m"}]});
    let (status, body) = admin_json(
        admin,
        http::Method::POST,
        "/v1/routes/web/rollout",
        &rollout,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let running = r#"switchyard_rollout_state{route="web",state="running"}"#;
    let (text, metrics) = scrape(admin).await;
    assert_eq!(value(&metrics, running), 1.0, "{text}");

    // The canary pool is renamed: web's state, rollout and all, goes.
    let (status, body) = support::put_config(admin, two_routes(&stable, &canary, "canary2")).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, web) = support::get(&support::client(), admin, "/v1/routes/web", &[]).await;
    let web: Value = serde_json::from_str(&web).expect("json");
    assert!(web["rollout"].is_null(), "{web}");

    let (text, metrics) = scrape(admin).await;
    assert_eq!(
        value(&metrics, running),
        0.0,
        "the API shows no rollout on web, the metrics one running:\n{}",
        text.lines()
            .filter(|l| l.starts_with("switchyard_rollout_state{route=\"web\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `switchyard_route_weight_basis_points` was set for the pools of the new
/// table but never removed for the ones it no longer had: after a reload
/// that removed a pool from a split, or a whole route, their last weights
/// stayed exported, so a route's weights summed to more than 100% and a
/// route that was gone still showed a split.
#[tokio::test]
async fn weights_of_pools_and_routes_a_reload_removed_are_not_exported() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = support::pki::temp_dir("stale-weights");
    let file = dir.join("config.json");
    // Own route names: the metrics registry is per process, but this
    // binary is a process of its own anyway.
    std::fs::write(&file, two_routes(&stable, &canary, "canary")).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;
    let (text, metrics) = scrape(admin).await;
    let old_canary = r#"switchyard_route_weight_basis_points{pool="canary",route="web"}"#;
    assert_eq!(value(&metrics, old_canary), 1000.0, "{text}");

    // web's canary pool is now canary2, and route old is gone.
    let mut next: Value =
        serde_json::from_str(&two_routes(&stable, &canary, "canary2")).expect("json");
    next["routes"].as_array_mut().expect("routes").truncate(1);
    let (status, body) = support::put_config(admin, next.to_string()).await;
    assert_eq!(status, 200, "{body}");

    let (text, _) = scrape(admin).await;
    let weights: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_route_weight_basis_points{"))
        .collect();
    let sum_for = |route: &str| -> f64 {
        weights
            .iter()
            .filter(|l| l.contains(&format!("route=\"{route}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        sum_for("web"),
        10_000.0,
        "web's exported weights do not add up to 100%:\n{}",
        weights.join("\n")
    );
    assert!(
        !weights.iter().any(|l| l.contains("route=\"old\"")),
        "route old was removed but its weights are still exported:\n{}",
        weights.join("\n")
    );
}

/// A config named through a symlinked directory (a Capistrano-style
/// `current -> releases/N`, or a Helm chart's versioned directory) is
/// switched by swapping the directory link. The README says the file is
/// "read by the name it was given, following symlinks afresh", but the
/// watch was on the directory the link led to at start, and the swap
/// happens one level up, where nothing watched: the new config was never
/// loaded. After the swap, an edit in the new release is loaded too.
#[tokio::test]
async fn a_swapped_symlink_to_the_config_directory_reloads() {
    use std::os::unix::fs::symlink;
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let dir = support::pki::temp_dir("dir-link");
    let config = |canary_bp: i64| {
        let pools = [(&stable, 10_000 - canary_bp), (&canary, canary_bp)];
        support::split_config(&pools, json!({})).to_string()
    };
    for (release, canary_bp) in [("1", 0), ("2", 10_000)] {
        std::fs::create_dir_all(dir.join("releases").join(release)).expect("dir");
        std::fs::write(
            dir.join("releases").join(release).join("config.json"),
            config(canary_bp),
        )
        .expect("config");
    }
    symlink("releases/1", dir.join("current")).expect("symlink");
    let (_child, proxy, _admin) = support::start_on_config(&dir.join("current/config.json")).await;
    assert_eq!(
        support::send_many(proxy, "/", 10).await.get("stable"),
        Some(&10)
    );

    // Deploy release 2: a new link renamed over the old one (atomic).
    symlink("releases/2", dir.join("current.tmp")).expect("symlink");
    std::fs::rename(dir.join("current.tmp"), dir.join("current")).expect("swap");
    let counts = support::poll_for(
        Duration::from_secs(10),
        || support::send_many(proxy, "/", 10),
        |counts| counts.get("canary") == Some(&10),
    )
    .await;
    assert_eq!(
        counts.get("canary"),
        Some(&10),
        "release 2's config was never loaded: {counts:?}"
    );
    // The watch followed the swap: an edit in release 2 is seen.
    replace_file(&dir.join("releases/2/config.json"), &config(0));
    let counts = support::poll_for(
        Duration::from_secs(10),
        || support::send_many(proxy, "/", 10),
        |counts| counts.get("stable") == Some(&10),
    )
    .await;
    assert_eq!(
        counts.get("stable"),
        Some(&10),
        "an edit in release 2 after the swap was never loaded: {counts:?}"
    );
}

/// The same fault seen in the audit log: a broken config file is
/// refused once per change (each refusal's read of the file set off the
/// next, and `config_rejected` events piled up about ten a second until
/// someone fixed the file).
#[tokio::test]
async fn a_broken_config_file_is_refused_once() {
    let stable = support::upstream("stable").await;
    let dir = support::pki::temp_dir("refused-once");
    let file = dir.join("config.json");
    let config = support::split_config(&[(&stable, 10_000)], json!({})).to_string();
    std::fs::write(&file, &config).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;

    replace_file(&file, "{\"listeners\": ");
    let rejected = |text: String| -> usize {
        let events: Value = serde_json::from_str(&text).expect("json");
        events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["kind"] == "config_rejected")
            .count()
    };
    let client = support::client();
    let fetch = || async {
        let (_, _, body) = support::get(&client, admin, "/v1/events", &[]).await;
        rejected(body)
    };
    let first = support::poll_for(Duration::from_secs(10), fetch, |n| *n >= 1).await;
    assert!(first >= 1, "the broken edit was not refused");
    // Nothing changes the file for two seconds: no further refusal.
    let later = support::poll_for(Duration::from_secs(2), fetch, |n| *n > first + 1).await;
    assert_eq!(
        later, first,
        "one broken edit, {later} config_rejected events while nobody touched the file"
    );
}

/// `switchyard_fallbacks_total{route,reason}` of a route a reload removed
/// goes with the route (a counter of a route that no longer exists stayed
/// for ever). Route `old`'s canary fails every request and falls back;
/// then a reload leaves only `web`.
#[tokio::test]
async fn the_fallback_count_of_a_removed_route_goes() {
    let stable = support::upstream("stable").await;
    let failing = support::knob_upstream("canary").await;
    failing
        .error_permille
        .store(1000, std::sync::atomic::Ordering::Relaxed);
    let route = |name: &str| {
        json!({"name": name, "match": {"host": name},
               "split": {"baseline": "stable", "weights": {"stable": 5000, "canary": 5000}}})
    };
    let config = |routes: Vec<Value>| {
        json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"stable": {"endpoints": [stable.addr.to_string()]},
                      "canary": {"endpoints": [failing.addr.to_string()],
                                 "outlier_detection": {"consecutive_failures": 0}}},
            "routes": routes,
        })
        .to_string()
    };
    let dir = support::pki::temp_dir("fallback-series");
    let file = dir.join("config.json");
    std::fs::write(&file, config(vec![route("web"), route("old")])).expect("config");
    let (_child, proxy, admin) = support::start_on_config(&file).await;
    // Traffic for `old` until its canary has fallen back.
    let client = support::client();
    let fell_back = support::poll_for(
        Duration::from_secs(10),
        || async {
            for _ in 0..20 {
                support::get(&client, proxy, "/", &[("host", "old")]).await;
            }
            scrape(admin).await
        },
        |(text, _)| text.contains("switchyard_fallbacks_total{") && text.contains("route=\"old\""),
    )
    .await;
    assert!(
        fell_back.0.contains("route=\"old\""),
        "old never fell back:\n{}",
        fell_back.0
    );
    let (status, body) = support::put_config(admin, config(vec![route("web")])).await;
    assert_eq!(status, 200, "{body}");
    let (text, _) = scrape(admin).await;
    let stale: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_fallbacks_total{") && l.contains("route=\"old\""))
        .collect();
    assert!(stale.is_empty(), "route old was removed: {stale:?}");
}
