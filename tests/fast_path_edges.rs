//! The HTTP/1.1 fast path's edges (`proxy/src/fast.rs`) and its raw
//! upstream connections, from a review, through real loopback sockets:
//! a pipelined request takes a pooled connection only after the kernel
//! says it is clean, and goes again if the upstream closed it unanswered;
//! trailers are checked and not relayed to clients that did not ask for
//! them; a shutdown does not cut the answer under way; a `Date` named in
//! `Connection` is replaced. Every test failed on the code as reviewed;
//! each names what it expects and why.

use crate::support;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::After;

/// Reads from `stream` until EOF, a reset or `deadline`: the bytes, and
/// how it ended ("eof", "reset: ..." or "timeout").
async fn read_to_end(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, String) {
    let end = tokio::time::Instant::now() + deadline;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return (out, "timeout".to_string()),
            Ok(Ok(0)) => return (out, "eof".to_string()),
            Ok(Err(err)) => return (out, format!("reset: {err}")),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------
// 1. A pooled connection is taken again with no real check under pipelining

#[tokio::test]
async fn pipelined_gets_survive_an_upstream_that_closes_after_each_answer() {
    // The upstream answers one request per connection, keep-alive style,
    // then closes it (a server with a short keep-alive timeout, or
    // max-requests 1). `back_to_back_requests_survive_upstream_closing_each_connection`
    // shows the proxy surviving that race when the client waits for each
    // answer. Pipelined, the next request takes the pooled connection in
    // the same task poll that relayed the answer, before tokio's reactor
    // has seen the upstream's FIN: `still_open` trusts tokio's cached
    // readiness, so the GET goes into the closed connection and the client
    // gets a 502 for a request no upstream ever read.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy =
        support::proxy_with_workers(&support::pool_config("web", upstream.addr, json!({})), 1);
    for round in 0..10 {
        let mut request = Vec::new();
        for i in 0..5 {
            request.extend_from_slice(
                format!("GET /{round}-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
        }
        request.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (out, closed) =
            support::raw_exchange_until_close(proxy.addr, &request, Duration::from_secs(5)).await;
        assert!(closed, "round {round}: left open");
        let statuses: Vec<u16> = support::parse_responses(&out, &[])
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(
            statuses,
            [200; 6],
            "round {round}: idempotent GETs the upstream never read got 502; upstream read {} requests: {:?}",
            upstream.requests().len(),
            String::from_utf8_lossy(&out)
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Trailers are relayed raw, framing and hop-by-hop fields included

#[tokio::test]
async fn response_trailers_never_carry_framing_or_hop_by_hop_fields() {
    // RFC 9110 §6.5.1 and §7.6.1: `Content-Length`, `Transfer-Encoding`,
    // `Connection` (and the rest of `headers::strip_trailers`'s list) are
    // never valid trailers and are removed by hyper's path. The fast path
    // passes the chunked body through byte for byte, trailer section
    // included, to a client that did not even say `TE: trailers`.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\
          Content-Length: 99\r\nConnection: close\r\nTransfer-Encoding: gzip\r\nX-Sum: 1\r\n\r\n",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(closed, "{text:?}");
    let response = support::parse_responses(&out, &[]).pop();
    assert_eq!(response.map(|r| r.body), Some(b"ok".to_vec()), "{text:?}");
    let trailers = text
        .split_once("\r\n0\r\n")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    for name in ["content-length:", "connection:", "transfer-encoding:"] {
        assert!(
            !trailers.contains(name),
            "{name} relayed in the trailer section: {trailers:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. A graceful shutdown resets a pipelining client mid-answer

#[tokio::test]
async fn a_graceful_shutdown_does_not_cut_the_answer_under_way() {
    // A conforming pipelining client has an answer under way and sends its
    // next request; meanwhile the proxy is asked to shut down. The answer
    // under way must be delivered whole (the drain timeout is 10 s), then
    // the connection closed. The fast path returns `Outcome::Closed` at the
    // top of its loop and drops the socket with the next request unread,
    // so the kernel resets the connection and the answer's tail still
    // queued is lost (the lingering close `close_client` does elsewhere is
    // skipped).
    const TOTAL: u64 = 8 * 1024 * 1024;
    let (addr, _) = support::streaming_upstream(TOTAL).await;
    let config = support::pool_config(
        "web",
        addr,
        json!({"timeouts": {"drain": "10s", "connect": "2s", "response_header": "5s"}}),
    );
    let support::TestProxy {
        addr: proxy_addr,
        server,
        ..
    } = support::proxy_with_workers(&config, 1);
    // A small receive buffer keeps part of the answer queued in the proxy.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut stream = socket.connect(proxy_addr).await.expect("connect");
    stream
        .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let head = support::read_head(&mut stream).await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );

    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    // The proxy no longer accepts: its workers are stopping.
    let refused = support::poll_for(
        Duration::from_secs(5),
        || async { TcpStream::connect(proxy_addr).await.is_err() },
        |refused| *refused,
    )
    .await;
    assert!(refused, "the proxy still accepts");
    // The next pipelined request, sent before the answer is read.
    stream
        .write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (body, ended) = read_to_end(&mut stream, Duration::from_secs(20)).await;
    stopped.await.expect("shutdown");
    assert!(
        body.len() as u64 >= TOTAL,
        "the answer under way was cut: {} of {TOTAL} body bytes, then {ended}",
        body.len()
    );
}

#[tokio::test]
async fn a_malformed_trailer_section_is_not_relayed_as_if_well_formed() {
    // `not a field` is no field line (RFC 9112 §7.1.2, §5): the chunked
    // framing is broken, and hyper's path ends the answer without its last
    // chunk (the client sees the truncation). `ChunkScan` takes any line of
    // field bytes as a trailer, so the fast path passes the broken message
    // on, complete-looking, for the client's parser to choke on.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nnot a field\r\n\r\n",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "{text:?}");
    assert!(!text.contains("not a field"), "relayed: {text:?}");
}

// ---------------------------------------------------------------------------
// 4. A response can go out with no Date

#[tokio::test]
async fn a_date_named_in_connection_is_replaced_not_lost() {
    // RFC 9110 §6.6.1: a recipient with a clock that forwards a response
    // without `Date` MUST add one. `parse_response` notes a `Date` field
    // (`date = true`, so it adds none) before dropping it as named in
    // `Connection`: the client gets no `Date` at all. hyper's path adds one.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: date\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
          Content-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    let response = support::get_on(&mut stream, &mut buf).await;
    assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
    assert_eq!(
        response.header("date").len(),
        1,
        "no Date on the answer: {:?}",
        response.head
    );
}
