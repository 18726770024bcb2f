//! `GET /metrics`: counts that match the traffic sent, gauges that follow
//! the live table, and output that `promtool check metrics` accepts.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::json;

/// Parses the text format into `name{labels}` → value.
fn scrape_text(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(admin: SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, headers, body) = support::get(&support::client(), admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    let parsed = scrape_text(&body);
    (body, parsed)
}

#[tokio::test]
async fn metrics_count_requests_errors_and_follow_weights() {
    let stable = support::upstream("mstable").await;
    // A pool whose endpoint refuses connections: every request to it is a
    // 502 and a connect error.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = refused.local_addr().expect("addr");
    drop(refused);
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"mstable": {"endpoints": [stable.addr.to_string()]},
                  "mgone": {"endpoints": [gone.to_string()]}},
        "routes": [{"name": "mroute", "split": {"baseline": "mstable", "weights": {"mstable": 10000, "mgone": 0}}}],
        "timeouts": {"connect": "1s"},
    });
    let setup = support::admin_setup(&config, None);
    let (_, before) = scrape(setup.admin).await;
    let count = |m: &HashMap<String, f64>, key: &str| m.get(key).copied().unwrap_or(0.0);

    let client = support::client();
    for _ in 0..30 {
        let (status, _, _) = support::get(&client, setup.proxy, "/", &[]).await;
        assert_eq!(status, 200);
    }
    for _ in 0..7 {
        let (status, _, _) =
            support::get(&client, setup.proxy, "/", &[("x-switchyard-pool", "mgone")]).await;
        assert_eq!(status, 502);
    }
    let (text, after) = scrape(setup.admin).await;
    let ok = r#"switchyard_requests_total{class="2xx",pool="mstable",route="mroute"}"#;
    let bad = r#"switchyard_requests_total{class="5xx",pool="mgone",route="mroute"}"#;
    let connect = r#"switchyard_upstream_errors_total{kind="connect",pool="mgone",route="mroute"}"#;
    let durations = r#"switchyard_request_duration_seconds_count{pool="mstable",route="mroute"}"#;
    assert_eq!(count(&after, ok) - count(&before, ok), 30.0, "{text}");
    assert_eq!(count(&after, bad) - count(&before, bad), 7.0, "{text}");
    assert_eq!(
        count(&after, connect) - count(&before, connect),
        7.0,
        "{text}"
    );
    assert_eq!(
        count(&after, durations) - count(&before, durations),
        30.0,
        "{text}"
    );
    assert_eq!(
        count(
            &after,
            r#"switchyard_route_weight_basis_points{pool="mgone",route="mroute"}"#
        ),
        0.0
    );

    let request = http::Request::put(format!("http://{}/v1/routes/mroute/weights", setup.admin))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"weights": {"mstable": 7500, "mgone": 2500}}).to_string(),
        )))
        .expect("request");
    assert_eq!(
        client.request(request).await.expect("response").status(),
        200
    );
    let (_, after) = scrape(setup.admin).await;
    assert_eq!(
        count(
            &after,
            r#"switchyard_route_weight_basis_points{pool="mgone",route="mroute"}"#
        ),
        2500.0
    );
    assert_eq!(
        count(
            &after,
            r#"switchyard_route_weight_basis_points{pool="mstable",route="mroute"}"#
        ),
        7500.0
    );
    assert!(count(&after, "switchyard_table_version") >= 2.0);
    assert_eq!(
        count(&after, r#"switchyard_build_info{version="0.1.0"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_held_rollout_shows_in_the_metrics_until_it_moves_on() {
    let stable = support::upstream("hstable").await;
    let canary = support::upstream("hcanary").await;
    let mut config = support::split_config(&[(&stable, 10000), (&canary, 0)], json!({}));
    config["routes"][0]["name"] = json!("hroute");
    let setup = support::admin_setup(&config, None);
    setup.api.board().set_min_step_requests(50);
    let request = http::Request::post(format!("http://{}/v1/routes/hroute/rollout", setup.admin))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"strategy": "canary", "steps": [{"weight": 5000, "pause": "100ms"}]})
                .to_string(),
        )))
        .expect("request");
    let (status, body) = support::exchange(&support::client(), request).await;
    assert_eq!(status, 200, "{body}");
    let held = r#"switchyard_rollout_held{route="hroute"}"#;
    let value = |m: &HashMap<String, f64>| m.get(held).copied();
    // No traffic: the due step holds.
    let (_, metrics) = support::poll_for(
        std::time::Duration::from_secs(10),
        || scrape(setup.admin),
        |(_, m)| value(m) == Some(1.0),
    )
    .await;
    assert_eq!(value(&metrics), Some(1.0));
    // Traffic lets it move on and complete: no longer held.
    support::send_many(setup.proxy, "/", 200).await;
    let (text, metrics) = support::poll_for(
        std::time::Duration::from_secs(10),
        || scrape(setup.admin),
        |(_, m)| value(m) == Some(0.0),
    )
    .await;
    assert_eq!(value(&metrics), Some(0.0), "{text}");
    assert_eq!(
        metrics.get(r#"switchyard_rollout_state{route="hroute",state="completed"}"#),
        Some(&1.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_route_says_which_answers_count_as_errors() {
    // Both routes' pools answer 429; only the route that lists 429 as an
    // error counts them so (the canary detector reads the same counts).
    let busy = support::scripted_upstream(
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nbusy",
        support::After::Close,
    )
    .await;
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"busy": {"endpoints": [busy.addr.to_string()]}},
        "routes": [
            {"name": "strict", "match": {"path_prefix": "/strict"},
             "split": {"baseline": "busy", "weights": {"busy": 10000}},
             "canary_health": {"error_statuses": ["5xx", 429]}},
            {"name": "lenient", "split": {"baseline": "busy", "weights": {"busy": 10000}}},
        ],
    });
    let setup = support::admin_setup(&config, None);
    let client = support::client();
    for path in ["/strict", "/lenient"] {
        for _ in 0..10 {
            let (status, _, _) = support::get(&client, setup.proxy, path, &[]).await;
            assert_eq!(status, 429);
        }
    }
    let counts = |route: &'static str| {
        let client = client.clone();
        async move {
            let (_, _, body) = support::get(
                &client,
                setup.admin,
                &format!("/v1/routes/{route}/health"),
                &[],
            )
            .await;
            let health: serde_json::Value = serde_json::from_str(&body).expect("json");
            (
                health["pools"]["busy"]["requests_60s"].as_u64(),
                health["pools"]["busy"]["errors_60s"].as_u64(),
            )
        }
    };
    let strict = support::poll_for(
        std::time::Duration::from_secs(5),
        || counts("strict"),
        |&(requests, _)| requests == Some(10),
    )
    .await;
    assert_eq!(strict, (Some(10), Some(10)));
    let lenient = support::poll_for(
        std::time::Duration::from_secs(5),
        || counts("lenient"),
        |&(requests, _)| requests == Some(10),
    )
    .await;
    assert_eq!(lenient, (Some(10), Some(0)));
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let Ok(promtool) = which_promtool() else {
        // CI installs promtool (.ci/run); there a missing one is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed"
        );
        eprintln!("promtool not installed; skipping (apt-get install prometheus)");
        return;
    };
    let stable = support::upstream("pstable").await;
    let canary = support::upstream("pcanary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        None,
    );
    support::send_many(setup.proxy, "/", 50).await;
    let (text, _) = scrape(setup.admin).await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn which_promtool() -> Result<String, ()> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = format!("{dir}/promtool");
        if std::path::Path::new(&candidate).exists() {
            return Ok(candidate);
        }
    }
    Err(())
}
