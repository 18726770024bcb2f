//! The HTTP/1.1 fast path (`proxy/src/fast.rs`) through real sockets:
//! what it does that hyper's path did for it (response framing, interim
//! answers, a stalled body), and a connection that moves from the fast
//! path to hyper in the middle and keeps being served.

use crate::support;

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::After;

/// Sends `request` on a new connection to a proxy in front of a scripted
/// upstream that answers `reply`; returns the upstream and the answer.
async fn through(
    reply: &'static [u8],
    request: &[u8],
) -> (support::Scripted, support::RawResponse) {
    let upstream = support::scripted_upstream(reply, After::Close).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let response = support::read_response(&mut stream, &mut buf, false).await;
    (upstream, response)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn a_connection_moves_to_hyper_mid_way_and_keeps_serving() {
    let upstream = support::upstream("stable").await;
    let proxy = support::proxy(&support::split_config(&[(&upstream, 10000)], json!({})));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();

    // Fast path: a plain GET.
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!((first.status, &first.body[..]), (200, &b"stable"[..]));

    // A chunked body is hyper's: the connection moves over with the bytes
    // already read, and the body arrives whole.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
    let second = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, b"hello world");

    // And hyper serves the rest of the connection.
    stream
        .write_all(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let third = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(third.status, 200);

    let seen: Vec<String> = upstream.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/one", "/echo", "/three"]);
}

#[tokio::test]
async fn a_fast_path_body_arrives_whole_with_forwarding_fields() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    // The body arrives in a second packet, after the head.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"PUT /a?b=c HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 11\r\nX-Forwarded-For: 10.0.0.9\r\nConnection: keep-alive\r\n\r\nhello")
        .await
        .expect("write");
    stream.write_all(b" world").await.expect("write");
    let mut buf = Vec::new();
    let response = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let head = &seen[0].head;
    assert!(head.starts_with("PUT /a?b=c HTTP/1.1\r\n"), "{head}");
    assert_eq!(seen[0].body, b"hello world");
    assert_eq!(support::header_values(head, "host"), ["Example.com:8080"]);
    assert_eq!(
        support::header_values(head, "x-forwarded-for"),
        ["10.0.0.9, 127.0.0.1"]
    );
    assert_eq!(support::header_values(head, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        support::header_values(head, "x-forwarded-host"),
        ["Example.com:8080"]
    );
    assert!(
        support::header_values(head, "connection").is_empty(),
        "{head}"
    );
    assert_eq!(support::header_values(head, "content-length"), ["11"]);
}

#[tokio::test]
async fn a_response_delimited_by_close_is_rechunked_and_the_client_keeps_its_connection() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..2 {
        let response = support::get_on(&mut stream, &mut buf).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("transfer-encoding"), ["chunked"]);
        assert_eq!(response.body, b"until the upstream closes");
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn interim_responses_are_skipped_and_the_final_one_relayed() {
    let (_, response) = through(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        GET,
    )
    .await;
    assert_eq!((response.status, &response.body[..]), (200, &b"final"[..]));
}

#[tokio::test]
async fn a_response_with_both_length_and_chunked_is_502() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (status, _, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("sent a malformed response"), "{body}");
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes",
        After::Hang,
    )
    .await;
    let proxy = support::proxy_to(
        "stalls",
        upstream.addr,
        json!({"timeouts": {"idle": "300ms", "drain": "1s"}}),
    );
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "still open after 5 s: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("first bytes"), "{text:?}");
    // The upstream saw its connection closed by the proxy.
    assert!(
        support::eventually(Duration::from_secs(5), || {
            upstream.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await
    );
}

#[tokio::test]
async fn a_target_with_bytes_a_uri_cannot_hold_is_left_to_hyper_and_refused() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET /a\"b<c> HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "{text:?}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let upstream = support::upstream("stable").await;
    // A drain timeout far longer than the test may take: shutdown must
    // not wait for idle connections to time out.
    let proxy = support::proxy_with_workers(
        &support::pool_config(
            "stable",
            upstream.addr,
            json!({"timeouts": {"drain": "60s"}}),
        ),
        1,
    );
    let mut idle = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    let response = support::get_on(&mut idle, &mut buf).await;
    assert_eq!(response.status, 200);

    let server = proxy.server;
    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("shutdown waited on an idle connection")
        .expect("shutdown");
    let (rest, closed) = support::read_until_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn an_error_answer_to_head_has_no_body_and_the_next_answer_is_intact() {
    let upstream = support::upstream("stable").await;
    let proxy = support::proxy(&support::split_config(
        &[(&upstream, 10000)],
        json!({"match": {"path_prefix": "/only"}}),
    ));
    // Pipelined: a HEAD nothing routes, then a GET that routes.
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"HEAD /other HTTP/1.1\r\nHost: x\r\n\r\nGET /only HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let responses = support::parse_responses(&out, &[true, false]);
    assert_eq!(responses.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(responses[0].status, 404);
    assert_ne!(responses[0].header("content-length"), ["0"]);
    assert_eq!(
        (responses[1].status, &responses[1].body[..]),
        (200, &b"stable"[..])
    );
}

#[tokio::test]
async fn the_status_line_is_restated_from_the_parsed_status() {
    // Blank lines before a status line are skipped (RFC 9112 §2.2); the
    // client's status line must not be copied from fixed offsets.
    let (_, response) = through(b"\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", GET).await;
    assert!(
        response.head.starts_with("HTTP/1.1 204 No Content\r\n"),
        "{:?}",
        response.head
    );
}

#[tokio::test]
async fn an_empty_transfer_encoding_line_does_not_hide_chunked_beside_a_length() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\nhello",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("flaky", upstream.addr, json!({}));
    let (status, _, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn a_request_length_goes_upstream_restated() {
    let (upstream, response) = through(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0005\r\n\r\nhello",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = upstream.requests();
    assert_eq!(
        support::header_values(&seen[0].head, "content-length"),
        ["5"]
    );
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_the_idle_timeout_unused() {
    // A reload that removes an endpoint leaves its pooled connections
    // where no request takes them again: they must close on their own.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Hang,
    )
    .await;
    let timeouts = json!({"connect": "2s", "response_header": "5s", "idle": "1s"});
    let proxy = support::proxy_to("stable", upstream.addr, json!({"timeouts": timeouts}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    assert_eq!(support::get_on(&mut stream, &mut buf).await.status, 200);
    assert_eq!(
        upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Nothing more is sent; the pooled connection goes within two idle
    // timeouts (a sweep runs once per idle timeout).
    let closed = support::eventually(Duration::from_secs(5), || {
        upstream.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed, "the idle upstream connection stayed open");
}
