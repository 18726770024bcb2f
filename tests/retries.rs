//! A route's retries of sent requests, on every path: the fast path
//! (HTTP/1.1, and HTTP/2's raw path) and hyper's (the same route with
//! `"fast_path": false`). Real upstreams on loopback answer from a script:
//! a bad endpoint (503, silence, a reset) and a good one, in one pool.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use support::After;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn config(name: &str, endpoints: [SocketAddr; 2], retries: Value, fast_path: bool) -> Value {
    support::retry_config(name, &endpoints, retries, fast_path)
}

/// Sends `requests` on one keep-alive connection, one at a time, and
/// returns each answer's status and body.
async fn send_all(addr: SocketAddr, requests: &[Vec<u8>]) -> Vec<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for request in requests {
        stream.write_all(request).await.expect("write");
        let response = support::read_response(&mut stream, &mut buf, false).await;
        answers.push((response.status, response.body));
    }
    answers
}

fn get_with_body(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Trace: t\r\nX-Forwarded-For: 192.0.2.7\r\n\
         Content-Length: 7\r\n\r\npayload"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_listed_status_goes_again_byte_for_byte_and_each_try_is_counted() {
    for (name, fast_path) in [("again_fast", true), ("again_hyper", false)] {
        let bad = support::scripted_upstream(BUSY, After::Close).await;
        let good = support::scripted_upstream(OK, After::Again).await;
        let retries = json!({"attempts": 1, "on": ["503"]});
        let proxy = support::proxy(&config(name, [bad.addr, good.addr], retries, fast_path));
        let requests: Vec<_> = (0..8).map(|i| get_with_body(&format!("/n{i}"))).collect();
        for (status, body) in send_all(proxy.addr, &requests).await {
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{name}");
        }
        let tried = bad.requests();
        assert!(
            tried.len() >= 3,
            "{name}: round robin sent {} of 8 to the bad endpoint",
            tried.len()
        );
        // The request that went again is the one that went first: the
        // same head (forwarding fields added once) and body.
        let retried = good.requests();
        for first in &tried {
            assert!(
                retried
                    .iter()
                    .any(|r| r.head == first.head && r.body == first.body),
                "{name}: {:?} was not sent again as it was",
                first.head
            );
            assert_eq!(
                support::header_values(&first.head, "x-forwarded-for"),
                ["192.0.2.7, 127.0.0.1"],
                "{name}"
            );
            // The fast path passes a field's name on as the client wrote
            // it; hyper's client writes it in lower case: which path sent.
            let verbatim = first.head.contains("\r\nX-Trace: t\r\n");
            assert_eq!(verbatim, fast_path, "{name}: {:?}", first.head);
        }
        assert_eq!(
            retried.len(),
            8,
            "{name}: every request ended at the good endpoint"
        );
        // The detector sees the 503s a retry hid.
        let series =
            format!(r#"switchyard_requests_total{{class="5xx",pool="web",route="{name}"}}"#);
        assert_eq!(support::metric(&series), tried.len() as f64, "{name}");
        proxy.server.shutdown();
    }
}

#[tokio::test]
async fn the_last_try_is_answered_as_it_came_and_a_post_goes_once() {
    for (name, fast_path) in [("last_fast", true), ("last_hyper", false)] {
        let first = support::scripted_upstream(BUSY, After::Close).await;
        let second = support::scripted_upstream(BUSY, After::Close).await;
        let retries = json!({"attempts": 3, "on": ["5xx"]});
        let proxy = support::proxy(&config(name, [first.addr, second.addr], retries, fast_path));
        // Every try fails: the client gets the last 503, body and all, and
        // the connection serves on.
        let answers = send_all(proxy.addr, &[get_with_body("/a"), get_with_body("/b")]).await;
        for (status, body) in answers {
            assert_eq!((status, body.as_slice()), (503, &b"busy"[..]), "{name}");
        }
        let tries = first.requests().len() + second.requests().len();
        assert_eq!(tries, 8, "{name}: 2 requests, 4 tries each");

        // A POST may not be sent twice.
        let post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let answers = send_all(proxy.addr, &[post]).await;
        assert_eq!(answers[0].0, 503, "{name}");
        let tries_after = first.requests().len() + second.requests().len();
        assert_eq!(tries_after, tries + 1, "{name}: the POST went once");
        proxy.server.shutdown();
    }
}

#[tokio::test]
async fn a_try_without_an_answer_in_time_goes_to_the_next_endpoint_when_timeouts_are_retried() {
    for (name, fast_path) in [("slow_fast", true), ("slow_hyper", false)] {
        let silent = support::scripted_upstream(b"", After::Hang).await;
        let good = support::scripted_upstream(OK, After::Again).await;
        let endpoints = [silent.addr, good.addr];
        let retries = json!({"attempts": 1, "on": ["timeout"]});
        let proxy = support::proxy(&config(name, endpoints, retries, fast_path));
        let requests: Vec<_> = (0..4).map(|i| get_with_body(&format!("/t{i}"))).collect();
        for (status, body) in send_all(proxy.addr, &requests).await {
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{name}");
        }
        assert!(
            !silent.requests().is_empty(),
            "{name}: the silent endpoint saw none"
        );

        // Not listed: the timeout is the answer (504).
        let other = format!("{name}_not");
        let retries = json!({"attempts": 1, "on": ["reset"]});
        let strict = support::proxy(&config(&other, endpoints, retries, fast_path));
        let requests: Vec<_> = (0..2).map(|i| get_with_body(&format!("/u{i}"))).collect();
        let statuses: Vec<u16> = send_all(strict.addr, &requests)
            .await
            .into_iter()
            .map(|(status, _)| status)
            .collect();
        assert!(statuses.contains(&504), "{name}: {statuses:?}");
        proxy.server.shutdown();
        strict.server.shutdown();
    }
}

#[tokio::test]
async fn a_request_answered_with_an_interim_response_is_not_retried_when_the_upstream_then_closes()
{
    // README: "A request the upstream answered with a 1xx is never sent
    // again." hyper's client swallows 1xx answers: a 102 Processing (the
    // upstream is at work on the request) followed by the connection's end
    // must not look like a reset before any answer.
    for fast_path in [true, false] {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let addr = support::raw_upstream(move |mut stream| {
            let count = count.clone();
            async move {
                if support::read_head(&mut stream).await.is_empty() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                // A 102, then the end of the stream (FIN, so the 102 is
                // surely read first): no final answer.
                let _ = stream.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").await;
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        })
        .await;
        let mut config = support::pool_config("web", addr, json!({}));
        config["routes"][0]["retries"] = json!({"attempts": 2, "on": ["reset"]});
        config["routes"][0]["fast_path"] = json!(fast_path);
        let proxy = support::proxy(&config);
        let (text, _) = support::raw_exchange_until_close(
            proxy.addr,
            b"PUT /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            std::time::Duration::from_secs(5),
        )
        .await;
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.starts_with("HTTP/1.1 502"),
            "fast path {fast_path}: {text:?}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "fast path {fast_path}: a request answered 102 went again"
        );
        proxy.server.shutdown();
    }
}

#[tokio::test]
async fn http2_requests_are_retried_on_the_raw_path_and_on_hypers() {
    for (name, fast_path) in [("h2_fast", true), ("h2_hyper", false)] {
        let bad = support::scripted_upstream(BUSY, After::Close).await;
        let good = support::scripted_upstream(OK, After::Again).await;
        let retries = json!({"attempts": 1, "on": ["503"]});
        let proxy = support::proxy(&config(name, [bad.addr, good.addr], retries, fast_path));
        let mut client = support::h2c_client(proxy.addr).await;
        for i in 0..6 {
            let request = http::Request::get(format!("http://x/h{i}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let answer = support::h2_exchange(&mut client, request).await;
            assert_eq!(answer, (200, "ok".to_string()), "{name}");
        }
        assert!(
            bad.requests().len() >= 2,
            "{name}: {}",
            bad.requests().len()
        );
        assert_eq!(good.requests().len(), 6, "{name}");
        proxy.server.shutdown();
    }
}
