//! Churn, from a review: what a long-running proxy keeps as config
//! reloads, weight changes, connections and endpoints come and go. Each
//! test measures something with a baseline, asserts a bound, and failed on
//! the code it was written against.

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// `GET /metrics` of an admin API, as text.
async fn metrics_text(admin: SocketAddr) -> String {
    let (status, _, body) = support::get(&support::client(), admin, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The distinct values of label `label` on the series of metric `name`.
fn label_values(text: &str, name: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with("_"))
        })
        .filter_map(|l| {
            let at = l.find(&needle)? + needle.len();
            let end = l[at..].find('"')?;
            Some(l[at..at + end].to_string())
        })
        .collect()
}

/// A config with one route `route` whose one pool `pool` is `addr`.
fn named_config(route: &str, pool: &str, addr: SocketAddr) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {pool: {"endpoints": [addr.to_string()]}},
        "routes": [{"name": route, "split": {"baseline": pool, "weights": {pool: 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

/// Starts the binary on `config`, written to `dir/config.json`.
async fn start_on(dir: &Path, config: &Value) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let file = dir.join("config.json");
    std::fs::write(&file, serde_json::to_string_pretty(config).expect("json")).expect("write");
    support::start_on_config(&file).await
}

// ---------------------------------------------------------------------
// Prometheus series of removed routes and pools.
// ---------------------------------------------------------------------

/// A reload that renames the route and its pool leaves the old names'
/// request, error and latency series exported for ever (and their
/// `PoolStats` held by the plane's `StatsScope`): 30 reloads, 30 routes
/// in `/metrics`, though one is live.
#[tokio::test]
async fn request_series_of_removed_routes_and_pools_go_on_reload() {
    let upstream = support::upstream("u").await;
    let dir = support::pki::temp_dir("series");
    let (child, proxy, admin) = start_on(&dir, &named_config("r0", "p0", upstream.addr)).await;
    let client = support::client();
    const CYCLES: usize = 30;
    for i in 1..=CYCLES {
        let config = named_config(&format!("r{i}"), &format!("p{i}"), upstream.addr);
        let (status, body) = support::put_config(admin, config.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let (status, _, _) = support::get(&client, proxy, "/", &[]).await;
        assert_eq!(status, 200);
    }
    let text = metrics_text(admin).await;
    let weights = label_values(&text, "switchyard_route_weight_basis_points", "route");
    assert_eq!(
        weights.len(),
        1,
        "weight gauges already follow the table: {weights:?}"
    );
    for metric in [
        "switchyard_requests_total",
        "switchyard_upstream_errors_total",
        "switchyard_request_duration_seconds",
    ] {
        let routes = label_values(&text, metric, "route");
        let pools = label_values(&text, metric, "pool");
        assert!(
            routes.len() <= 2 && pools.len() <= 2,
            "{metric}: after {CYCLES} reloads that each renamed the route and pool, \
             {} routes and {} pools are still exported (live: r{CYCLES}/p{CYCLES}): {routes:?}",
            routes.len(),
            pools.len()
        );
    }
    drop(child);
}

// ---------------------------------------------------------------------
// The canary health board.
// ---------------------------------------------------------------------

/// A config whose route `route` splits 90/10 between pools `stable` and
/// `canary`, both `addr`.
fn canary_config(route: &str, addr: SocketAddr) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [addr.to_string()]},
                  "canary": {"endpoints": [addr.to_string()]}},
        "routes": [{"name": route, "split": {"baseline": "stable",
                    "weights": {"stable": 9000, "canary": 1000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

/// The evaluator's health board keeps an entry per route name it ever
/// saw: reloads that rename the route prune each entry's pools but never
/// the entry (nor its `total` and `step_mark` maps), so the board grows
/// by one `RouteHealth` per route a reload removed.
#[tokio::test]
async fn health_board_forgets_routes_a_reload_removed() {
    let upstream = support::upstream("board").await;
    let dir = support::pki::temp_dir("board");
    let file = dir.join("config.json");
    let first = canary_config("r0", upstream.addr);
    std::fs::write(&file, first.to_string()).expect("write");
    let config = switchyard_config::parse(&first.to_string()).expect("valid config");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane =
        switchyard_admin::ControlPlane::start(config, Some(file), store, state).expect("plane");
    let api = switchyard_admin::AdminApi::new(Arc::clone(&plane), None);
    let admin = switchyard_admin::server::start("127.0.0.1:0".parse().expect("addr"), api.clone())
        .expect("admin starts");
    let board = Arc::clone(api.board());
    // The board has an entry for `route` (its `describe` then carries
    // `served_at_step`; for a route it has none, it does not).
    let has_entry = |route: &str| board.describe(route).get("served_at_step").is_some();

    const CYCLES: usize = 6;
    for i in 0..=CYCLES {
        let route = format!("r{i}");
        if i > 0 {
            let config = canary_config(&route, upstream.addr);
            let (status, body) = support::put_config(admin, config.to_string()).await;
            assert_eq!(status, 200, "{body}");
        }
        let seen = support::eventually(Duration::from_secs(5), || has_entry(&route)).await;
        assert!(seen, "the evaluator never saw {route}");
    }
    // One more evaluator pass after the last reload, so any pruning ran.
    let marker = board.describe(&format!("r{CYCLES}"))["canaries"].clone();
    let _ = support::eventually(Duration::from_secs(2), || {
        board.describe(&format!("r{CYCLES}"))["canaries"] != marker
    })
    .await;
    let kept: Vec<String> = (0..CYCLES)
        .map(|i| format!("r{i}"))
        .filter(|r| has_entry(r))
        .collect();
    assert!(
        kept.is_empty(),
        "the health board still holds {} routes removed by reloads: {kept:?}",
        kept.len()
    );
}
