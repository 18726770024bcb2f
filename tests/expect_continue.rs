//! `Expect: 100-continue` on HTTP/1.1 (RFC 9110 §10.1.1), on the fast
//! path and on hyper's (a route whose `fast_path` is off), through real
//! sockets: the client is asked for its body once the request is routed,
//! the upstream gets the body and never the expectation, and the
//! connection serves on. The fast path passes a field's name on as the
//! client wrote it and hyper's path lowercases it: that tells which path
//! served each request.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// One route to `addr`, for requests to `Host: x` only, with its fast
/// path on or off.
fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["fast_path"] = json!(fast_path);
    config["routes"][0]["match"] = json!({"host": "x"});
    config
}

/// An upstream that answers every request `OK`, a proxy to it (`config`),
/// and a connection to the proxy on which `request` was sent.
async fn start(
    fast_path: bool,
    request: &[u8],
) -> (support::Scripted, support::TestProxy, TcpStream) {
    let upstream = support::scripted_upstream(OK, support::After::Again).await;
    let proxy = support::proxy(&config(upstream.addr, fast_path));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    (upstream, proxy, stream)
}

/// The next response on `stream`, or None if none is whole within 3 s
/// (a proxy waiting for a body the client withholds).
async fn next_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<support::RawResponse> {
    let read = support::read_response(stream, buf, false);
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()
}

/// Whether the upstream saw the client's `X-Probe` as written: the fast
/// path served it.
fn fast(request: &support::RawRequest) -> bool {
    request.head.contains("\r\nX-Probe: ")
}

#[tokio::test]
async fn the_client_is_asked_for_its_body_and_the_connection_serves_on() {
    for fast_path in [true, false] {
        let (upstream, _proxy, mut stream) = start(
            fast_path,
            b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\n\
                  Content-Length: 5\r\n\r\n",
        )
        .await;
        let mut buf = Vec::new();
        // The body is withheld until the proxy asks for it.
        let interim = next_response(&mut stream, &mut buf).await;
        let interim = interim.unwrap_or_else(|| panic!("fast path {fast_path}: no 100 in 3 s"));
        assert_eq!(
            interim.status, 100,
            "fast path {fast_path}: {:?}",
            interim.head
        );
        stream.write_all(b"hello").await.expect("write body");
        let last = next_response(&mut stream, &mut buf)
            .await
            .expect("the answer");
        assert_eq!((last.status, &last.body[..]), (200, &b"ok"[..]));
        // A second request on the same connection.
        stream
            .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n")
            .await
            .expect("write the next request");
        let next = next_response(&mut stream, &mut buf)
            .await
            .expect("the next answer");
        assert_eq!(next.status, 200);

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "fast path {fast_path}: {seen:?}");
        let (upload, after) = (&seen[0], &seen[1]);
        assert!(upload.head.starts_with("POST /up "), "{:?}", upload.head);
        assert_eq!(upload.body, b"hello", "fast path {fast_path}");
        assert!(
            support::header_values(&upload.head, "expect").is_empty(),
            "fast path {fast_path}: the expectation is the proxy's to meet, not passed on: {:?}",
            upload.head
        );
        // The route's path served both, the upload and the request after
        // it (a connection hyper took for the upload stays with hyper).
        assert_eq!(
            (fast(upload), fast(after)),
            (fast_path, fast_path),
            "fast path {fast_path}: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_body_sent_with_the_head_is_not_asked_for_again() {
    // A client that does not wait (the RFC lets it) sent the body, and a
    // pipelined request after it: answered in order, with no needless
    // 100 on the fast path (RFC 9110 §10.1.1: a server MAY omit it once
    // some of the content has come).
    let (upstream, _proxy, mut stream) = start(
        true,
        b"PUT /a HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\n\
              Content-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n",
    )
    .await;
    let mut buf = Vec::new();
    for path in ["/a", "/b"] {
        let answer = next_response(&mut stream, &mut buf).await;
        let status = answer.map(|a| a.status);
        assert_eq!(status, Some(200), "the answer to {path}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].body, b"abc");
    assert!(seen.iter().all(fast), "{seen:?}");
}

#[tokio::test]
async fn an_expectation_without_a_body_is_forwarded_at_once() {
    // `Content-Length: 0`: there is nothing to ask for.
    let (upstream, _proxy, mut stream) = start(
        true,
        b"POST /empty HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\n\
              Content-Length: 0\r\n\r\n",
    )
    .await;
    let mut buf = Vec::new();
    let answer = next_response(&mut stream, &mut buf)
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200);
    let seen = upstream.requests();
    assert!(seen.len() == 1 && fast(&seen[0]), "{seen:?}");
    assert!(support::header_values(&seen[0].head, "expect").is_empty());
}

#[tokio::test]
async fn a_request_refused_before_its_body_is_asked_for_is_answered_and_the_connection_ends() {
    // No route for the host: the proxy answers at once, never asks for
    // the body, and ends the connection (else the next bytes, the body
    // the client may send anyway, would be read as a request).
    for fast_path in [true, false] {
        let (upstream, _proxy, mut stream) = start(
            fast_path,
            b"POST /up HTTP/1.1\r\nHost: elsewhere\r\nExpect: 100-continue\r\n\
                  Content-Length: 5\r\n\r\n",
        )
        .await;
        let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(3)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 404 ") && closed,
            "fast path {fast_path}: after 3 s, closed {closed}: {text:?}"
        );
        assert!(upstream.requests().is_empty());
    }
}
