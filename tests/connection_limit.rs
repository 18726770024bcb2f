//! `limits.max_requests_per_connection` (nginx's `keepalive_requests`,
//! Envoy's `max_requests_per_connection`): the last request's answer
//! closes the connection, on the fast path, on hyper's path, across the
//! two, and on HTTP/2 (a `GOAWAY` naming the last stream served). Requests
//! the client sent past the limit are never forwarded.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::h2::{header_frames, request, RawClient, GOAWAY, HEADERS, NO_ERROR};

/// One upstream behind a route limited to `limit` requests per client
/// connection, with `route_extra` on the route.
async fn limited(limit: u64, route_extra: Value) -> (support::Upstream, support::TestProxy) {
    let upstream = support::upstream("stable").await;
    let mut config = support::split_config(&[(&upstream, 10_000)], route_extra);
    config["limits"] = json!({"max_requests_per_connection": limit});
    let proxy = support::proxy(&config);
    (upstream, proxy)
}

fn closes(response: &support::RawResponse) -> bool {
    response
        .header("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("close"))
}

/// Sends `requests` one at a time on one connection; each answer must be
/// 200, the last alone saying `Connection: close`, then the connection
/// ends.
async fn serves_then_closes(addr: SocketAddr, requests: &[&[u8]]) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        stream.write_all(request).await.expect("write");
        let response = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(response.status, 200, "request {n}: {}", response.head);
        let last = n + 1 == requests.len();
        assert_eq!(
            closes(&response),
            last,
            "request {n} of {}: {}",
            requests.len(),
            response.head
        );
    }
    let (rest, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed && rest.is_empty(),
        "the connection stays open after its last request: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const CHUNKED_POST: &[u8] =
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

#[tokio::test]
async fn the_fast_path_closes_after_the_last_request() {
    let (upstream, proxy) = limited(3, json!({})).await;
    serves_then_closes(proxy.addr, &[GET, GET, GET]).await;
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn hypers_path_closes_after_the_last_request() {
    // A route whose fast path is off is served on hyper's path.
    let (upstream, proxy) = limited(2, json!({"fast_path": false})).await;
    serves_then_closes(proxy.addr, &[GET, GET]).await;
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn requests_count_across_the_fast_path_and_hypers() {
    // The GETs go the fast path, the chunked upload hyper's.
    let (upstream, proxy) = limited(3, json!({})).await;
    serves_then_closes(proxy.addr, &[GET, GET, CHUNKED_POST]).await;
    assert_eq!(upstream.requests().len(), 3);
    let (upstream, proxy) = limited(2, json!({})).await;
    serves_then_closes(proxy.addr, &[CHUNKED_POST, GET]).await;
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn pipelined_requests_past_the_limit_are_not_forwarded() {
    let (upstream, proxy) = limited(2, json!({})).await;
    let (bytes, closed) =
        support::raw_exchange_until_close(proxy.addr, &GET.repeat(5), Duration::from_secs(5)).await;
    assert!(closed, "the connection stays open");
    let responses = support::parse_responses(&bytes, &[false; 5]);
    assert_eq!(
        responses.len(),
        2,
        "answers: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(!closes(&responses[0]) && closes(&responses[1]));
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn an_answer_of_the_proxys_own_counts_and_closes_at_the_limit() {
    // The first request matches no route: a 404 of the proxy's own, on a
    // connection that stays open; the next is its second and last.
    let (upstream, proxy) = limited(2, json!({"match": {"path_prefix": "/api"}})).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    stream.write_all(GET).await.expect("write");
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(first.status, 404, "{}", first.head);
    assert!(!closes(&first), "{}", first.head);
    stream
        .write_all(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let second = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert!(closes(&second), "{}", second.head);
    let (_, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn http2_sends_goaway_naming_the_last_stream_served() {
    let (upstream, proxy) = limited(2, json!({})).await;
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    // Three streams at once: the second is the last served, the third is
    // refused by the GOAWAY (the client may retry it elsewhere).
    let mut streams = Vec::new();
    for id in [1, 3, 5] {
        streams.extend(header_frames(id, true, &request("GET", "/", &[])));
    }
    client.send(&streams).await;
    let mut answered = Vec::new();
    let mut goaway = None;
    while let Some(frame) = client.next().await {
        match frame.kind {
            HEADERS => answered.push(frame.id),
            GOAWAY => goaway = Some((frame.last_stream(), frame.error_code())),
            _ => {}
        }
    }
    answered.sort_unstable();
    assert_eq!(goaway, Some((3, NO_ERROR)));
    assert_eq!(answered, [1, 3]);
    assert_eq!(upstream.requests().len(), 2);
}
