//! Upstream faults through real sockets: refused connections, silence,
//! malformed answers, resets before and during a response, and pooled
//! connections the upstream has closed.

use crate::support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::After;

const OK_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Sends one GET through a fresh connection; returns status and body.
async fn get_once(proxy: &support::TestProxy) -> (u16, String) {
    let (status, _, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn refused_connection_is_502_naming_pool_and_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let proxy = support::proxy_to("gone", addr, json!({}));

    // Two requests on one client connection: an upstream failure does not
    // close the client's connection.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..2 {
        let response = support::get_on(&mut stream, &mut buf).await;
        let body = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, 502, "{body}");
        assert!(
            body.contains(&format!("upstream connect refused: gone/{addr}")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn silent_upstream_is_504_naming_the_backend() {
    let upstream = support::scripted_upstream(b"", After::Hang).await;
    let proxy = support::proxy(&support::pool_config(
        "slow",
        upstream.addr,
        json!({"timeouts": {"response_header": "300ms", "connect": "2s", "drain": "2s"}}),
    ));
    let start = Instant::now();
    let (status, body) = get_once(&proxy).await;
    let elapsed = start.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains(&format!(
            "upstream sent no response head within 300ms: slow/{}",
            upstream.addr
        )),
        "{body}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    // The request did reach the upstream, and the proxy then gave up on
    // the connection rather than pooling it.
    assert_eq!(upstream.requests().len(), 1);
    assert!(
        support::eventually(Duration::from_secs(2), || upstream
            .closed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the proxy kept the timed-out upstream connection open"
    );
}

#[tokio::test]
async fn garbage_response_is_502_malformed() {
    let upstream = support::scripted_upstream(b"HELLO\r\n\r\n", After::Close).await;
    let proxy = support::proxy_to("bad", upstream.addr, json!({}));
    let (status, body) = get_once(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!(
            "upstream sent a malformed response: bad/{}",
            upstream.addr
        )),
        "{body}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn differing_content_lengths_in_response_are_502() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("bad", upstream.addr, json!({}));
    let (status, body) = get_once(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&format!("bad/{}", upstream.addr)), "{body}");
    assert!(!body.contains("hello"), "{body}");
}

#[tokio::test]
async fn close_before_any_response_is_502() {
    let upstream = support::scripted_upstream(b"", After::Close).await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (status, body) = get_once(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&format!("flaky/{}", upstream.addr)), "{body}");
    assert_eq!(upstream.requests().len(), 1, "the request reached it");
}

#[tokio::test]
async fn reset_before_any_response_is_502() {
    let upstream = support::scripted_upstream(b"", After::Reset).await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (status, body) = get_once(&proxy).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&format!("flaky/{}", upstream.addr)), "{body}");
    assert_eq!(upstream.requests().len(), 1, "the request reached it");
}

/// Sends a GET over raw TCP and reads until the proxy closes; returns the
/// response head and the body bytes after it.
async fn raw_get(proxy: &support::TestProxy) -> (String, Vec<u8>) {
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        closed,
        "client connection left open after a truncated body: {:?}",
        String::from_utf8_lossy(&out)
    );
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or_else(|| panic!("no head: {:?}", String::from_utf8_lossy(&out)));
    (
        String::from_utf8_lossy(&out[..end]).into_owned(),
        out[end..].to_vec(),
    )
}

#[tokio::test]
async fn close_mid_body_is_passed_on_as_a_truncation() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));

    let (head, body) = raw_get(&proxy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    assert_eq!(support::header_values(&head, "content-length"), ["1000"]);
    assert!(
        body.len() < 1000,
        "a complete-looking body: {} bytes",
        body.len()
    );
    assert!(b"0123456789".starts_with(&body), "{body:?}");

    // A real client sees an error, not a short success.
    let response = support::client()
        .request(
            http::Request::get(format!("http://{}/", proxy.addr))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response head");
    let collected = response.into_body().collect().await;
    assert!(collected.is_err(), "body completed: {collected:?}");
}

#[tokio::test]
async fn reset_mid_body_is_passed_on_as_a_truncation() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        After::Reset,
    )
    .await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "client connection left open: {text:?}");
    // Either a 502 (the reset won the race with the head) or a truncated
    // 200; never a complete 1000-byte body.
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match head_end {
        Some(end) if text.starts_with("HTTP/1.1 200") => {
            assert!(out.len() - end < 1000, "complete-looking body: {text:?}");
        }
        Some(_) => assert!(text.starts_with("HTTP/1.1 502"), "{text:?}"),
        None => assert!(out.is_empty(), "partial head: {text:?}"),
    }
}

#[tokio::test]
async fn chunked_body_cut_short_is_not_terminated() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (head, body) = raw_get(&proxy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    // The last-chunk would make the truncated body look complete.
    assert!(
        support::decode_chunked(&body).is_none(),
        "the client got a terminated chunked body: {:?}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn pooled_connection_closed_by_upstream_is_not_a_failure() {
    // The upstream answers keep-alive style, then closes the idle
    // connection, as servers with a short keep-alive timeout do.
    let upstream = support::scripted_upstream(OK_REPLY, After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for round in 1..=3 {
        let response = support::get_on(&mut stream, &mut buf).await;
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ok"[..]),
            "round {round}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        // Wait until the upstream has closed this round's connection, so
        // the next request finds a stale one in the pool.
        assert!(
            support::eventually(Duration::from_secs(2), || upstream
                .closed
                .load(Ordering::SeqCst)
                == round)
            .await
        );
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn back_to_back_requests_survive_upstream_closing_each_connection() {
    // Here the next request races the upstream's close: the proxy may
    // write into a connection that is already closing.
    let upstream = support::scripted_upstream(OK_REPLY, After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for round in 0..50 {
        let response = support::get_on(&mut stream, &mut buf).await;
        assert_eq!(
            response.status,
            200,
            "round {round}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_once_on_another_endpoint() {
    // Nothing was sent to the dead endpoint, so the request goes to the
    // live one (nginx's proxy_next_upstream error); no client sees a 502.
    let live = support::upstream("live").await;
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": [dead_addr().to_string(), live.addr.to_string()]}},
        "routes": [{"name": "retry", "split": {"baseline": "web", "weights": {"web": 10000}}}],
        "timeouts": {"connect": "1s"},
    });
    let proxy = support::proxy(&config);
    let client = support::client();
    for _ in 0..20 {
        let (status, _, body) = support::get(&client, proxy.addr, "/", &[]).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "live"));
    }
    assert_eq!(live.requests().len(), 20);

    // With a single endpoint there is nowhere else to go: 502. (Another
    // closed port: the first one is ejected by now.)
    let alone = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": [dead_addr().to_string()]}},
        "routes": [{"name": "alone", "split": {"baseline": "web", "weights": {"web": 10000}}}],
    });
    let proxy = support::proxy(&alone);
    let (status, _, body) = support::get(&client, proxy.addr, "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream connect refused"), "{body}");
}

/// A closed port: connecting to it is refused.
fn dead_addr() -> std::net::SocketAddr {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    dead.local_addr().expect("addr")
}

/// The connect failures counted for `route`'s pool `web`.
pub(crate) fn connect_errors(route: &str) -> f64 {
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    let series =
        format!(r#"switchyard_upstream_errors_total{{kind="connect",pool="web",route="{route}"}}"#);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_no_longer_tried() {
    let live = support::upstream("live").await;
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": [dead_addr().to_string(), live.addr.to_string()]}},
        "routes": [{"name": "eject", "split": {"baseline": "web", "weights": {"web": 10000}}}],
        "timeouts": {"connect": "1s"},
    });
    let proxy = support::proxy(&config);
    let client = support::client();
    for _ in 0..100 {
        let (status, _, _) = support::get(&client, proxy.addr, "/", &[]).await;
        assert_eq!(status, 200);
    }
    // Round robin sends every other request to the dead endpoint first;
    // without ejection that is 50 refused connects, with it 5.
    let refused = connect_errors("eject");
    assert!(refused <= 6.0, "{refused} connects to an ejected endpoint");
    assert!(refused >= 5.0, "the failures were not counted: {refused}");
}

#[tokio::test]
async fn a_pool_with_every_endpoint_down_fails_open_to_the_baseline() {
    let stable = support::upstream("stable").await;
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [stable.addr.to_string()]},
                  "canary": {"endpoints": [dead_addr().to_string()]}},
        "routes": [{"name": "failopen", "split": {"baseline": "stable", "weights": {"stable": 5000, "canary": 5000}}}],
        "timeouts": {"connect": "1s"},
    });
    let proxy = support::proxy(&config);
    let client = support::client();
    let mut failures = 0;
    for _ in 0..100 {
        let (status, _, body) = support::get(&client, proxy.addr, "/", &[]).await;
        match status.as_u16() {
            200 => assert_eq!(body, "stable"),
            502 => failures += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Five refused connects eject the canary's only endpoint; from then on
    // its half of the traffic goes to the baseline.
    assert_eq!(failures, 5, "the dead pool kept its share");

    // Nothing left anywhere: 503.
    let gone = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [dead_addr().to_string()]}},
        "routes": [{"name": "nothing", "split": {"baseline": "stable", "weights": {"stable": 10000}}}],
    });
    let proxy = support::proxy(&gone);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(support::get(&client, proxy.addr, "/", &[]).await.0.as_u16());
    }
    assert_eq!(statuses, [502, 502, 502, 502, 502, 503]);
    let (_, _, body) = support::get(&client, proxy.addr, "/", &[]).await;
    assert!(
        body.contains("no healthy endpoint left for route nothing"),
        "{body}"
    );
}

/// An upstream that answers the first request on each connection, keeps
/// the connection, and closes it without a word when a second request
/// comes: a keep-alive timeout that fires as the request arrives.
async fn closes_on_second_request() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let unanswered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&unanswered);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                if support::read_head(&mut stream).await.is_empty() {
                    return;
                }
                let _ = stream.write_all(OK_REPLY).await;
                if !support::read_head(&mut stream).await.is_empty() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped unanswered.
            });
        }
    });
    (addr, unanswered)
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_the_upstream_is_closing_goes_again() {
    let (addr, unanswered) = closes_on_second_request().await;
    // One worker: upstream connections are pooled per worker, and the
    // second request must find the first one's connection.
    let proxy = support::proxy_with_workers(&support::pool_config("racy", addr, json!({})), 1);
    let proxy_addr = proxy.addr;
    let send = |method: &'static str| async move {
        let mut stream = TcpStream::connect(proxy_addr).await.expect("connect");
        stream
            .write_all(
                format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut buf = Vec::new();
        support::read_response(&mut stream, &mut buf, false)
            .await
            .status
    };
    assert_eq!(send("GET").await, 200);
    // The pause is the subject: the pooled connection has been idle long
    // enough (over a second) to be one an upstream may be closing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(send("GET").await, 200, "the GET was not sent again");
    assert_eq!(
        unanswered.load(Ordering::SeqCst),
        1,
        "the race did not happen"
    );

    // A POST may not be sent twice: the client gets the 502.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(send("POST").await, 502);
    assert_eq!(unanswered.load(Ordering::SeqCst), 2);
}

/// An upstream that takes one request head, says so, and then never
/// answers: it reports when the proxy closes the connection.
async fn unanswering_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = events.send("closed");
                            return;
                        }
                        Ok(n) => {
                            let had_head = seen.windows(4).any(|w| w == b"\r\n\r\n");
                            seen.extend_from_slice(&buf[..n]);
                            if !had_head && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = events.send("request");
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, receiver)
}

/// A client that leaves while its request waits for the upstream's answer
/// ends the exchange: the upstream connection is closed at once (nginx's
/// 499), not held until the response-header timeout (60 s here), on the
/// fast path (a GET) and on hyper's (a chunked POST).
#[tokio::test]
async fn a_client_that_leaves_before_its_answer_closes_the_upstream_connection() {
    let (addr, mut events) = unanswering_upstream().await;
    let proxy = support::proxy_to(
        "slow",
        addr,
        json!({"timeouts": {"response_header": "60s", "connect": "2s", "drain": "1s"}}),
    );
    let requests: [&[u8]; 2] = [
        b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /wait HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ];
    for request in requests {
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        client.write_all(request).await.expect("send");
        let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        assert_eq!(first.ok().flatten(), Some("request"));
        drop(client);
        // Bounded well below the 60 s the proxy would otherwise wait.
        let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        assert_eq!(
            next.ok().flatten(),
            Some("closed"),
            "the upstream connection outlived its client ({})",
            String::from_utf8_lossy(&request[..4])
        );
    }
}
