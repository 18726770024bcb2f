//! Chunked request bodies on HTTP/1.1, through real sockets, on the fast
//! path and on hyper's (a route whose `fast_path` is off). The fast path
//! takes a chunked body without extensions or trailers up to 64 KiB: it
//! reads it whole and sends it on decoded, with a `Content-Length` (as
//! nginx does with request buffering on); anything else about a chunked
//! body is hyper's, from the bytes already read. The fast path passes a
//! field's name on as the client wrote it and hyper's path lowercases
//! it: that tells which path served each request.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["fast_path"] = json!(fast_path);
    config
}

/// An upstream that answers every request `OK`, a proxy to it with
/// `config`, and a connection to the proxy.
async fn start(
    config: impl FnOnce(SocketAddr) -> Value,
) -> (support::Scripted, support::TestProxy, TcpStream) {
    let upstream = support::scripted_upstream(OK, support::After::Again).await;
    let proxy = support::proxy(&config(upstream.addr));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    (upstream, proxy, stream)
}

/// The next response's status on `stream`; None if none is whole within
/// 5 s or the connection closed first.
async fn status(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((response, used)) = support::parse_response(buf, false) {
                buf.drain(..used);
                return Some(response.status);
            }
            match tokio::io::AsyncReadExt::read(stream, &mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// Whether the upstream saw the client's `X-Probe` as written: the fast
/// path served it.
fn fast(request: &support::RawRequest) -> bool {
    request.head.contains("\r\nX-Probe: ")
}

/// The body the upstream received, decoded if it came chunked.
fn body_of(request: &support::RawRequest) -> Vec<u8> {
    let chunked = support::header_values(&request.head, "transfer-encoding");
    match chunked.is_empty() {
        true => request.body.clone(),
        false => {
            support::decode_chunked(&request.body)
                .expect("a whole chunked body")
                .0
        }
    }
}

const UPLOAD_HEAD: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn a_chunked_upload_goes_on_decoded_and_the_connection_serves_on() {
    for fast_path in [true, false] {
        let (upstream, _proxy, mut stream) = start(|addr| config(addr, fast_path)).await;
        // In pieces: the head, a chunk, a chunk split across writes, the end.
        for piece in [
            UPLOAD_HEAD,
            b"5\r\nhello\r\n",
            b"8\r\n, wor",
            b"ld!\r\n",
            b"0\r\n\r\n",
        ] {
            stream.write_all(piece).await.expect("write");
        }
        let mut buf = Vec::new();
        assert_eq!(
            status(&mut stream, &mut buf).await,
            Some(200),
            "fast path {fast_path}"
        );
        stream
            .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n")
            .await
            .expect("write the next request");
        assert_eq!(
            status(&mut stream, &mut buf).await,
            Some(200),
            "fast path {fast_path}"
        );

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "fast path {fast_path}: {seen:?}");
        assert_eq!(body_of(&seen[0]), b"hello, world!", "fast path {fast_path}");
        // Both paths served both requests (an upload hyper took would
        // have kept the connection with hyper).
        assert_eq!(
            (fast(&seen[0]), fast(&seen[1])),
            (fast_path, fast_path),
            "{seen:?}"
        );
        if fast_path {
            // Decoded, with its length, as nginx buffers it.
            let head = &seen[0].head;
            assert_eq!(
                support::header_values(head, "content-length"),
                ["13"],
                "{head:?}"
            );
            assert!(
                support::header_values(head, "transfer-encoding").is_empty(),
                "{head:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_chunked_body_pipelined_with_the_next_request_is_answered_in_order() {
    let (upstream, _proxy, mut stream) = start(|addr| config(addr, true)).await;
    let pipelined = [
        UPLOAD_HEAD,
        b"3\r\nabc\r\n0\r\n\r\n",
        b"GET /after HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n",
    ]
    .concat();
    stream.write_all(&pipelined).await.expect("write");
    let mut buf = Vec::new();
    for _ in 0..2 {
        assert_eq!(status(&mut stream, &mut buf).await, Some(200));
    }
    let seen = upstream.requests();
    let targets: Vec<&str> = seen
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(targets, ["/up", "/after"]);
    assert_eq!(body_of(&seen[0]), b"abc");
    assert!(seen.iter().all(fast), "{seen:?}");
}

#[tokio::test]
async fn a_chunked_upload_that_expects_continue_is_asked_for_its_body() {
    let (upstream, _proxy, mut stream) = start(|addr| config(addr, true)).await;
    stream
        .write_all(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .expect("write head");
    let mut buf = Vec::new();
    assert_eq!(status(&mut stream, &mut buf).await, Some(100));
    stream
        .write_all(b"2\r\nhi\r\n0\r\n\r\n")
        .await
        .expect("write body");
    assert_eq!(status(&mut stream, &mut buf).await, Some(200));
    let seen = upstream.requests();
    assert!(seen.len() == 1 && fast(&seen[0]), "{seen:?}");
    assert_eq!(body_of(&seen[0]), b"hi");
}

#[tokio::test]
async fn chunked_bodies_the_fast_path_leaves_to_hyper_are_served_there() {
    // Each is served whole by hyper's path, from the bytes the fast path
    // had read: trailers (passed on), a chunk extension. (A body over the
    // fast path's 64 KiB stays on it: tests/streamed_uploads.rs.)
    let cases: [(&str, Vec<u8>, &[u8]); 2] = [
        (
            "trailers",
            b"2\r\nhi\r\n0\r\nX-Sum: 1\r\n\r\n".to_vec(),
            b"hi",
        ),
        (
            "extension",
            b"2;name=value\r\nhi\r\n0\r\n\r\n".to_vec(),
            b"hi",
        ),
    ];
    for (name, body, data) in cases {
        let (upstream, _proxy, mut stream) = start(|addr| config(addr, true)).await;
        stream
            .write_all(&[UPLOAD_HEAD, &body].concat())
            .await
            .expect("write");
        let mut buf = Vec::new();
        assert_eq!(status(&mut stream, &mut buf).await, Some(200), "{name}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1, "{name}");
        assert!(!fast(&seen[0]), "{name}: hyper's path serves it");
        assert_eq!(body_of(&seen[0]), data, "{name}");
    }
}

#[tokio::test]
async fn bad_chunked_framing_is_refused_and_never_forwarded() {
    // hyper refuses what the fast path's strict scan does not take; the
    // fast path forwards nothing before its scan has seen the end.
    let cases: [(&str, &[u8]); 4] = [
        ("a size that is not hex", b"zz\r\nhi\r\n0\r\n\r\n"),
        ("data longer than its size", b"2\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF after the size", b"2\nhi\r\n0\r\n\r\n"),
        ("a size of 2^64", b"10000000000000000\r\nhi\r\n0\r\n\r\n"),
    ];
    for (name, body) in cases {
        let (text, seen) =
            until_close(|addr| config(addr, true), &[UPLOAD_HEAD, body].concat()).await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{name}: {text:?}");
        assert!(seen.is_empty(), "{name}: forwarded");
    }
    // Chunked and a Content-Length: ambiguous (RFC 9112 §6.3).
    let both = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
        Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (text, seen) = until_close(|addr| config(addr, true), both).await;
    assert!(
        text.starts_with("HTTP/1.1 400 ") && seen.is_empty(),
        "{text:?}"
    );
}

/// Sends `request` on a fresh connection to a proxy with `config`; what
/// came back until the proxy closed (or 5 s), and what the upstream got.
async fn until_close(
    config: impl FnOnce(SocketAddr) -> Value,
    request: &[u8],
) -> (String, Vec<support::RawRequest>) {
    let (upstream, _proxy, mut stream) = start(config).await;
    stream.write_all(request).await.expect("write");
    let (out, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        upstream.requests(),
    )
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_refused_with_413() {
    let limited = |addr| {
        let mut config = config(addr, true);
        config["limits"] = json!({"max_body_bytes": 4});
        config
    };
    let upload = [UPLOAD_HEAD, b"5\r\nhello\r\n0\r\n\r\n"].concat();
    let (text, seen) = until_close(limited, &upload).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text:?}");
    assert!(
        seen.iter().all(|r| body_of(r).len() <= 4),
        "a body over the limit reached the upstream: {seen:?}"
    );
}

#[tokio::test]
async fn a_chunked_upload_is_retried_whole_on_the_next_endpoint() {
    // The first endpoint resets; the upload, read whole on the fast path,
    // goes again to the second, decoded, once.
    let reset = support::scripted_upstream(b"", support::After::Reset).await;
    let good = support::scripted_upstream(OK, support::After::Again).await;
    let retries = json!({"attempts": 1, "on": ["reset"]});
    let config = support::retry_config("up", &[reset.addr, good.addr], retries, true);
    let proxy = support::proxy(&config);
    let mut buf = Vec::new();
    for _ in 0..2 {
        // Two uploads: the round robin starts one of them on each endpoint.
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let put =
            b"PUT /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream
            .write_all(&[&put[..], b"4\r\ndata\r\n0\r\n\r\n"].concat())
            .await
            .expect("write");
        assert_eq!(status(&mut stream, &mut buf).await, Some(200));
    }
    let seen = good.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|r| fast(r) && body_of(r) == b"data"),
        "{seen:?}"
    );
}
