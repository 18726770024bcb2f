//! Endpoint health through real sockets: active HTTP health checks (fall,
//! rise, fail open with events), the pool's outlier-ejection settings,
//! retries of sent requests, and resets mid-body counted as upstream errors.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::After;

/// An upstream whose `/healthz` answers with a status the test sets; every
/// other path answers 200 with the upstream's name.
#[derive(Clone)]
struct Checked {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

async fn checked_upstream(name: &'static str) -> Checked {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let checked = Checked {
        addr: listener.local_addr().expect("addr"),
        health: Arc::new(AtomicU16::new(200)),
        checks: Arc::new(AtomicUsize::new(0)),
        served: Arc::new(AtomicUsize::new(0)),
    };
    let state = checked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let mut response = if request.uri().path() == "/healthz" {
                            assert_eq!(request.headers()["user-agent"], "switchyard-health-check");
                            state.checks.fetch_add(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() =
                                http::StatusCode::from_u16(state.health.load(Ordering::SeqCst))
                                    .expect("status");
                            response
                        } else {
                            state.served.fetch_add(1, Ordering::SeqCst);
                            Response::new(Full::new(Bytes::from(name)))
                        };
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    checked
}

/// Quick checks, with a timeout that a busy CI machine still meets.
const FAST_CHECK: &str =
    r#"{"path": "/healthz", "interval": "250ms", "timeout": "250ms", "rise": 2, "fall": 2}"#;

/// Bodies of `n` GETs, one after another.
async fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    let client = support::client();
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, _, body) = support::get(&client, addr, "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        out.push(body);
    }
    out
}

#[tokio::test]
async fn failing_checks_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let a = checked_upstream("a").await;
    let b = checked_upstream("b").await;
    let check: Value = serde_json::from_str(FAST_CHECK).expect("json");
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": [a.addr.to_string(), b.addr.to_string()], "health_check": check}},
        "routes": [{"name": "checks", "split": {"baseline": "web", "weights": {"web": 10000}}}],
    }));
    // Both take traffic while their checks pass.
    let first = bodies(proxy.addr, 10).await;
    assert!(first.contains(&"a".to_string()) && first.contains(&"b".to_string()));
    assert!(
        support::eventually(Duration::from_secs(5), || a.checks.load(Ordering::SeqCst)
            >= 2)
        .await,
        "no health checks reached the endpoint"
    );

    // A's checks fail (its real answers would still be 200): after two
    // failed checks it takes no requests.
    a.health.store(503, Ordering::SeqCst);
    let down = support::poll_for(
        Duration::from_secs(5),
        || bodies(proxy.addr, 6),
        |seen| seen.iter().all(|b| b == "b"),
    )
    .await;
    assert!(down.iter().all(|b| b == "b"), "a still served: {down:?}");
    let served = a.served.load(Ordering::SeqCst);
    assert!(bodies(proxy.addr, 40).await.iter().all(|b| b == "b"));
    assert_eq!(
        a.served.load(Ordering::SeqCst),
        served,
        "a down endpoint got requests"
    );

    // Two passing checks bring it back.
    a.health.store(204, Ordering::SeqCst);
    let back = support::poll_for(
        Duration::from_secs(5),
        || bodies(proxy.addr, 6),
        |seen| seen.iter().any(|b| b == "a"),
    )
    .await;
    assert!(back.iter().any(|b| b == "a"), "a never came back: {back:?}");
}

async fn events(admin: SocketAddr) -> Vec<Value> {
    let (status, _, body) = support::get(&support::client(), admin, "/v1/events", &[]).await;
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).expect("json");
    value["events"].as_array().cloned().unwrap_or_default()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test]
async fn a_pool_whose_checks_all_fail_fails_open_to_the_baseline_and_says_so() {
    let stable = checked_upstream("stable").await;
    let canary = checked_upstream("canary").await;
    let check: Value = serde_json::from_str(FAST_CHECK).expect("json");
    let setup = support::admin_setup(
        &json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"stable": {"endpoints": [stable.addr.to_string()], "health_check": check},
                      "canary": {"endpoints": [canary.addr.to_string()], "health_check": check}},
            "routes": [{"name": "failopen", "split": {"baseline": "stable", "weights": {"stable": 5000, "canary": 5000}}}],
        }),
        None,
    );
    canary.health.store(500, Ordering::SeqCst);
    let down = support::poll_for(
        Duration::from_secs(5),
        || events(setup.admin),
        |e| !of_kind(e, "pool_down").is_empty(),
    )
    .await;
    let pool_down = of_kind(&down, "pool_down");
    assert_eq!(pool_down.len(), 1, "{down:?}");
    assert_eq!(pool_down[0]["route"], "failopen");
    let reason = pool_down[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("pool canary is down") && reason.contains("fail open to pool stable"),
        "{reason}"
    );
    let endpoint_down = of_kind(&down, "endpoint_down");
    assert!(
        endpoint_down.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("canary/{}", canary.addr))
                && r.contains("active health checks"))),
        "{endpoint_down:?}"
    );
    // The canary's half goes to the baseline: no request fails.
    assert!(bodies(setup.proxy, 30).await.iter().all(|b| b == "stable"));

    canary.health.store(200, Ordering::SeqCst);
    let up = support::poll_for(
        Duration::from_secs(5),
        || events(setup.admin),
        |e| !of_kind(e, "pool_up").is_empty(),
    )
    .await;
    assert_eq!(of_kind(&up, "pool_up").len(), 1, "{up:?}");
    let back = support::poll_for(
        Duration::from_secs(5),
        || bodies(setup.proxy, 10),
        |seen| seen.iter().any(|b| b == "canary"),
    )
    .await;
    assert!(back.iter().any(|b| b == "canary"), "{back:?}");
}

/// A closed port: connecting to it is refused.
fn dead_addr() -> SocketAddr {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    dead.local_addr().expect("addr")
}

/// A series' value in the process's metrics (0 when absent).
fn metric(series: &str) -> f64 {
    support::metric(series)
}

#[tokio::test]
async fn the_pools_outlier_settings_govern_ejection() {
    let live = support::upstream("live").await;
    for (route, failures, lowest, highest) in [("eject2", 2, 2.0, 3.0), ("never", 0, 50.0, 50.0)] {
        let proxy = support::proxy(&json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"web": {
                "endpoints": [dead_addr().to_string(), live.addr.to_string()],
                "outlier_detection": {"consecutive_failures": failures, "base_ejection": "1m"},
            }},
            "routes": [{"name": route, "split": {"baseline": "web", "weights": {"web": 10000}}}],
            "timeouts": {"connect": "1s"},
        }));
        let client = support::client();
        for _ in 0..100 {
            let (status, _, _) = support::get(&client, proxy.addr, "/", &[]).await;
            assert_eq!(status, 200);
        }
        // Round robin sends every other request to the dead endpoint
        // first: 50 refused connects unless ejection stops them.
        let refused = metric(&format!(
            r#"switchyard_upstream_errors_total{{kind="connect",pool="web",route="{route}"}}"#
        ));
        assert!(
            (lowest..=highest).contains(&refused),
            "{route}: {refused} refused connects, expected {lowest}..={highest}"
        );
    }
}

/// A pool of a bad endpoint and a good one, with retries and ejection off.
fn retry_config(route: &str, bad: SocketAddr, good: SocketAddr, retries: Value) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {
            "endpoints": [bad.to_string(), good.to_string()],
            "outlier_detection": {"consecutive_failures": 0},
        }},
        "routes": [{"name": route, "split": {"baseline": "web", "weights": {"web": 10000}}, "retries": retries}],
        "timeouts": {"connect": "1s", "response_header": "2s"},
    })
}

async fn send(addr: SocketAddr, method: &str) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    support::exchange(&support::client(), request).await
}

#[tokio::test]
async fn an_idempotent_request_is_retried_after_a_reset_and_a_post_is_not() {
    let bad = support::scripted_upstream(b"", After::Reset).await;
    let good = support::upstream("good").await;
    let proxy = support::proxy(&retry_config(
        "retryreset",
        bad.addr,
        good.addr,
        json!({"attempts": 1, "on": ["reset"]}),
    ));
    for _ in 0..10 {
        let (status, body) = send(proxy.addr, "PUT").await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    let reached = bad.requests().len();
    assert!(reached >= 4, "the bad endpoint saw {reached} of 10 PUTs");
    // The bad endpoint got the request whole before it reset: a retry.
    assert!(bad.requests().iter().all(|r| r.body == b"payload"));

    // A POST may not be sent twice: the reset reaches the client as a 502.
    let mut failed = 0;
    for _ in 0..10 {
        let (status, body) = send(proxy.addr, "POST").await;
        match status {
            200 => assert_eq!(body, "good"),
            502 => failed += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        failed,
        bad.requests().len() - reached,
        "every POST the bad endpoint saw failed"
    );
    assert!(
        failed >= 4,
        "round robin sent {failed} POSTs to the bad endpoint"
    );

    // Without retries a reset PUT is a 502 too.
    let plain = support::proxy(&retry_config("noretry", bad.addr, good.addr, Value::Null));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(plain.addr, "PUT").await.0);
    }
    assert!(statuses.contains(&502), "{statuses:?}");
}

#[tokio::test]
async fn a_listed_5xx_answer_is_retried_and_still_counted_for_the_pool() {
    let bad = support::scripted_upstream(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        After::Close,
    )
    .await;
    let good = support::upstream("good").await;
    let proxy = support::proxy(&retry_config(
        "retry503",
        bad.addr,
        good.addr,
        json!({"attempts": 2, "on": ["503"]}),
    ));
    for _ in 0..10 {
        let (status, body) = send(proxy.addr, "GET").await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    let retried = bad.requests().len() as f64;
    assert!(retried >= 4.0, "{retried}");
    // The detector must see the canary's 503s even when a retry hid them.
    assert_eq!(
        metric(r#"switchyard_requests_total{class="5xx",pool="web",route="retry503"}"#),
        retried
    );
    // A status not listed is passed on.
    let only_502 = support::proxy(&retry_config(
        "retry502",
        bad.addr,
        good.addr,
        json!({"attempts": 2, "on": ["502"]}),
    ));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(only_502.addr, "GET").await.0);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[tokio::test]
async fn a_reset_mid_body_counts_as_an_upstream_reset() {
    // The upstream sends a head and part of the body, waits until the
    // client has that part, then resets.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go, mut reset) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        support::read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .expect("write");
        reset.recv().await;
        stream.set_zero_linger().expect("linger");
        drop(stream);
    });
    let proxy = support::proxy(&support::pool_config("web", addr, json!({})));
    let series = r#"switchyard_upstream_errors_total{kind="reset",pool="web",route="web"}"#;
    let before = metric(series);

    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"0123456789") {
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(metric(series), before, "nothing failed yet");
    go.send(()).await.expect("signal");
    let after = support::poll_for(
        Duration::from_secs(5),
        || async { metric(series) },
        |&v| v > before,
    )
    .await;
    assert_eq!(after, before + 1.0);
}
