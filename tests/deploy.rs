//! The files in `deploy/`: Prometheus rules that `promtool` accepts and
//! whose unit tests pass, and a Grafana dashboard that charts what the
//! alerts are about. Every `switchyard_*` name in them is one Switchyard
//! exports, so a typo cannot hide in a rule that never matches.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RULES: &str = "deploy/prometheus/switchyard.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/switchyard.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/switchyard.json";

/// What `GET /metrics` exports (README, "Metrics"), with the histogram's
/// series.
const EXPORTED: [&str; 13] = [
    "switchyard_requests_total",
    "switchyard_upstream_errors_total",
    "switchyard_request_duration_seconds_bucket",
    "switchyard_request_duration_seconds_sum",
    "switchyard_request_duration_seconds_count",
    "switchyard_route_weight_basis_points",
    "switchyard_table_version",
    "switchyard_rollout_state",
    "switchyard_fallbacks_total",
    "switchyard_rollout_held",
    "switchyard_active_connections",
    "switchyard_config_reloads_total",
    "switchyard_build_info",
];

fn deploy_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = deploy_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The `promtool` on `PATH`, or `None` where it is missing and may be.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        // CI installs promtool (.ci/run); there a missing one is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed"
        );
        eprintln!("promtool not installed; skipping (apt-get install prometheus)");
    }
    found
}

/// Runs `promtool <command> rules <file>` and fails with its output.
fn promtool_rules(promtool: &Path, command: &str, relative: &str) {
    let output = Command::new(promtool)
        .args([command, "rules"])
        .arg(deploy_file(relative))
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {command} rules {relative}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `switchyard_*` metric name in `text`. Recorded series
/// (`switchyard:...`) and file names (`switchyard.rules.yml`) are not.
fn metric_names(text: &str) -> Vec<&str> {
    text.match_indices("switchyard_")
        .map(|(start, _)| {
            let len = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
            &text[start..start + len]
        })
        .collect()
}

fn assert_all_exported(relative: &str, text: &str) {
    for name in metric_names(text) {
        assert!(
            EXPORTED.contains(&name),
            "{relative} names {name}, which Switchyard does not export"
        );
    }
}

/// The query of every target of every panel, rows' nested panels included.
fn panel_queries(panels: &[Value], queries: &mut Vec<String>) {
    for panel in panels {
        let targets = panel["targets"].as_array().map(Vec::as_slice);
        for target in targets.unwrap_or_default() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push(expr.to_string());
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_queries(nested, queries);
        }
    }
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(promtool) = promtool() else { return };
    promtool_rules(&promtool, "check", RULES);
}

#[test]
fn rule_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    promtool_rules(&promtool, "test", RULE_TESTS);
}

#[test]
fn rules_name_only_exported_metrics() {
    assert_all_exported(RULES, &read(RULES));
    assert_all_exported(RULE_TESTS, &read(RULE_TESTS));
}

#[test]
fn dashboard_charts_weights_fallbacks_and_latency() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");

    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    assert!(
        variables.contains(&"datasource"),
        "variables: {variables:?}"
    );
    assert!(variables.contains(&"route"), "variables: {variables:?}");

    let mut queries = Vec::new();
    panel_queries(
        dashboard["panels"].as_array().expect("panels"),
        &mut queries,
    );
    for metric in [
        "switchyard_route_weight_basis_points",
        "switchyard_fallbacks_total",
        "switchyard_request_duration_seconds_bucket",
    ] {
        assert!(
            queries.iter().any(|query| query.contains(metric)),
            "no panel queries {metric}"
        );
    }
    for query in &queries {
        assert_all_exported(DASHBOARD, query);
    }
}
