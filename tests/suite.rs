//! The integration tests, one binary: each file under `tests/` is a module
//! of it, so the workspace links one test executable instead of sixty
//! (each about 50 MB with tokio, hyper and rustls in it: a fresh build's
//! test binaries took 3.3 GB and filled a CI machine's disk).
//!
//! Three files stay binaries of their own (`[[test]]` in Cargo.toml): they
//! measure this process's resident memory, which tests of other files
//! running beside them would move.

mod support;

mod access_log;
mod access_log_edges;
mod admin;
mod admin_edges;
mod admin_fuzz;
mod admin_http;
mod canary_edges;
mod canary_health;
mod chaos;
mod chunked_requests;
mod chunked_requests_edges;
mod chunked_streamed_edges;
mod churn_edges;
mod cli;
mod cli_edges;
mod client_scan_and_tunnels;
mod connection_limit;
mod ctl;
mod deploy;
mod detector_edges;
mod dns;
mod dns_edges;
mod drain_edges;
mod endpoint_health;
mod expect_continue;
mod expect_continue_edges;
mod fast_path;
mod fast_path_edges;
mod fast_path_framing;
mod h1_fuzz;
mod h2_fuzz;
mod h2_requests_edges;
mod h2_send_edges;
mod h2_upstream;
mod health_edges;
mod http10;
mod http10_edges;
mod hyper_path;
mod later_refusals_and_resets_edges;
mod limits_edges;
mod metrics;
mod openapi;
mod paths_edges;
mod paths_limits;
mod races_edges;
mod readme;
mod refusals;
mod refusals_edges;
mod reload;
mod reload_edges;
mod retries;
mod retries_edges;
mod rollout;
mod rollout_edges;
mod routing;
mod routing_edges;
mod streamed_uploads;
mod tls;
mod tls_edges;
mod upgrade_edges;
mod upload_latency;
mod upload_latency_edges;
mod upstream_blame;
mod upstream_faults;
mod upstream_fuzz;
mod upstream_reuse;

/// Every file under `tests/` is built: a module of this binary, or a
/// `[[test]]` of its own. With `autotests` off, cargo would not say that a
/// new file is left out; this test does.
#[test]
fn every_test_file_is_built() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = std::fs::read_to_string(root.join("tests/suite.rs")).expect("tests/suite.rs");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut left_out = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let path = entry.expect("an entry of tests/").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        let built = module == "suite"
            || suite.lines().any(|line| line == format!("mod {module};"))
            || manifest.contains(&format!("path = \"tests/{name}\""));
        if !built {
            left_out.push(name.to_string());
        }
    }
    assert!(
        left_out.is_empty(),
        "test files neither in tests/suite.rs nor a [[test]] in Cargo.toml: {left_out:?}"
    );
}
