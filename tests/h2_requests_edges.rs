//! Edges of HTTP/2 client requests (RFC 9113 §8, RFC 9110) as a real
//! upstream receives them and as the client is answered: `host` without
//! `:authority`, cookie crumbs on the bodiless path, a repeated
//! `content-length`, padding, bodies without a length (small, empty and
//! past every window), trailers after a length-framed body, malformed
//! trailers in the middle of a streamed upload, many interleaved uploads
//! with one reset, and the upstream's answers an HTTP/2 client must not
//! see as they came (101, a 204 with a body, a 304 with a length, hop-by-
//! hop and mixed-case fields, a body cut short).

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;

use support::h2::*;
use support::{After, RawRequest};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A request head without `:authority`: the three other pseudo-fields,
/// then `extra`.
fn without_authority(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![(":method", method), (":scheme", "http"), (":path", path)];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// The body a raw upstream read, decoded: None when its framing says it
/// never ended, or when it was framed both ways (RFC 9112 §6.3: a
/// smuggling risk a proxy must not create).
fn body_of(request: &RawRequest) -> Option<Vec<u8>> {
    let chunked = support::header_values(&request.head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let lengths = support::header_values(&request.head, "content-length");
    match (chunked, lengths.first()) {
        (true, Some(_)) => None,
        (true, None) => support::decode_chunked(&request.body).map(|(data, _)| data),
        (false, Some(len)) => {
            let len: usize = len.parse().ok()?;
            (request.body.len() == len).then(|| request.body.clone())
        }
        (false, None) => Some(Vec::new()),
    }
}

/// Stream `id`'s first answer: its first HEADERS or RST_STREAM.
async fn first_answer(client: &mut RawClient, id: u32) -> Frame {
    loop {
        let frame = client.next().await.expect("an answer before the close");
        if frame.id == id && matches!(frame.kind, HEADERS | RST_STREAM) {
            return frame;
        }
    }
}

/// How stream `id` ended once its head came: with END_STREAM (true) or a
/// RST_STREAM (false); the DATA before.
async fn how_it_ends(client: &mut RawClient, id: u32) -> (bool, Vec<u8>) {
    let mut data = Vec::new();
    loop {
        let frame = client
            .next()
            .await
            .expect("the stream's end before the close");
        if frame.id != id {
            continue;
        }
        match frame.kind {
            RST_STREAM => return (false, data),
            DATA => data.extend_from_slice(&frame.payload),
            _ => {}
        }
        if frame.flags & END_STREAM != 0 {
            return (true, data);
        }
    }
}

/// A client whose windows never hold the proxy's answers back.
async fn open_client(addr: std::net::SocketAddr) -> RawClient {
    let mut client = RawClient::connect(addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;
    let grow = (MAX_WINDOW - 65_535).to_be_bytes();
    client.send(&frame(WINDOW_UPDATE, 0, 0, &grow)).await;
    client
}

/// RFC 9113 §8.3.1: a request may carry `host` in place of `:authority`;
/// it is routed on it, and the upstream gets it as its one `Host`, on the
/// bodiless path and with a body. With both, equal, there is still one.
#[tokio::test]
async fn a_host_field_stands_for_the_authority_and_goes_upstream_once() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let host = [("host", "app.test")];
    let cases: [(u32, Vec<u8>, bool); 4] = [
        (1, without_authority("GET", "/host-only", &host), false),
        (3, without_authority("POST", "/host-only-body", &host), true),
        (5, request("GET", "/both", &host), false),
        (7, request("POST", "/both-body", &host), true),
    ];
    for (id, head, with_body) in cases {
        client.send(&header_frames(id, !with_body, &head)).await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, id, b"hello")).await;
        }
        let response = client.response(id).await;
        assert_eq!(response.field(":status"), Some("200"), "{id}: {response:?}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for request in &seen {
        assert_eq!(
            support::header_values(&request.head, "host"),
            ["app.test"],
            "{}",
            request.head
        );
    }
    assert_eq!(body_of(&seen[1]).as_deref(), Some(&b"hello"[..]));
    proxy.server.shutdown();
}

/// RFC 9113 §8.2.3: cookie crumbs go to an HTTP/1.1 upstream as one field
/// joined with "; ", whichever path the request takes: the raw one (no
/// body) and hyper's (`te: trailers`), with another field between them.
#[tokio::test]
async fn cookie_crumbs_of_a_bodiless_request_go_upstream_joined() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let crumbs = [
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("x-between", "1"),
        ("cookie", "c=3"),
    ];
    let with_te = [&crumbs[..], &[("te", "trailers")]].concat();
    for (id, extra) in [(1, &crumbs[..]), (3, &with_te[..])] {
        client
            .send(&frame(HEADERS, HEAD_ONLY, id, &request("GET", "/c", extra)))
            .await;
        let response = client.response(id).await;
        assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            support::header_values(&request.head, "cookie"),
            ["a=1; b=2; c=3"],
            "{}",
            request.head
        );
        assert_eq!(support::header_values(&request.head, "x-between"), ["1"]);
    }
    proxy.server.shutdown();
}

/// A `content-length` given twice with one value is one length (RFC 9110
/// §8.6 lets a recipient take it so); an HTTP/1.1 upstream must get it
/// once, or a strict one refuses the request and a lax one may frame it
/// differently from the next hop.
#[tokio::test]
async fn a_content_length_given_twice_goes_upstream_once() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let twice = [("content-length", "5"), ("content-length", "5")];
    let head = request("POST", "/twice", &twice);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    client.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let lengths = support::header_values(&seen[0].head, "content-length");
    assert!(lengths.len() <= 1, "{}", seen[0].head);
    assert_eq!(body_of(&seen[0]).as_deref(), Some(&b"hello"[..]));
    proxy.server.shutdown();
}

/// RFC 9113 §6.1: padding is not data. It never reaches the upstream, and
/// a padded frame does not count its padding toward the `content-length`
/// (§8.1.1); padded HEADERS are a head like any other.
#[tokio::test]
async fn padding_never_reaches_the_upstream_nor_counts_toward_the_length() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let padded = |pad: u8, data: &[u8]| [&[pad][..], data, &vec![0xee; usize::from(pad)]].concat();

    // A padded head, then a length of 10 in padded frames of 5 each.
    let head = request("POST", "/padded", &[("content-length", "10")]);
    client
        .send(&frame(HEADERS, END_HEADERS | PADDED, 1, &padded(7, &head)))
        .await;
    client
        .send(&frame(DATA, PADDED, 1, &padded(200, b"hello")))
        .await;
    client
        .send(&frame(DATA, PADDED | END_STREAM, 1, &padded(0, b"world")))
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");

    // Without a length: padding only, then data.
    let head = request("PUT", "/padded-unknown", &[]);
    client.send(&frame(HEADERS, END_HEADERS, 3, &head)).await;
    client.send(&frame(DATA, PADDED, 3, &padded(50, b""))).await;
    client
        .send(&frame(DATA, PADDED | END_STREAM, 3, &padded(3, b"abc")))
        .await;
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(body_of(&seen[0]).as_deref(), Some(&b"helloworld"[..]));
    assert_eq!(body_of(&seen[1]).as_deref(), Some(&b"abc"[..]));
}

/// A body of more DATA than its `content-length` in one frame is malformed
/// (RFC 9113 §8.1.1): the stream is reset and nothing is forwarded.
#[tokio::test]
async fn one_data_frame_past_the_length_is_reset_unforwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("POST", "/over", &[("content-length", "3")]);
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 1, &head),
                frame(DATA, END_STREAM, 1, b"hello"),
            ]
            .concat(),
        )
        .await;
    let answer = first_answer(&mut client, 1).await;
    assert_eq!(answer.kind, RST_STREAM, "{answer:?}");
    assert_eq!(answer.error_code(), PROTOCOL_ERROR);
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            3,
            &request("GET", "/after", &[]),
        ))
        .await;
    assert_eq!(client.response(3).await.field(":status"), Some("200"));
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/after"]);
}

/// Bodies without a `content-length`: a few frames, and an empty body
/// ended by an empty DATA frame, go upstream framed so that the upstream
/// reads exactly them.
#[tokio::test]
async fn bodies_without_a_length_are_framed_for_the_upstream() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 1, &request("POST", "/pieces", &[])),
                frame(DATA, 0, 1, b"abc"),
                frame(DATA, 0, 1, b""),
                frame(DATA, 0, 1, b"def"),
                frame(DATA, END_STREAM, 1, b"ghi"),
            ]
            .concat(),
        )
        .await;
    assert_eq!(client.response(1).await.field(":status"), Some("200"));
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 3, &request("POST", "/empty", &[])),
                frame(DATA, END_STREAM, 3, b""),
            ]
            .concat(),
        )
        .await;
    assert_eq!(client.response(3).await.field(":status"), Some("200"));
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(body_of(&seen[0]).as_deref(), Some(&b"abcdefghi"[..]));
    assert_eq!(body_of(&seen[1]).as_deref(), Some(&b""[..]));
    proxy.server.shutdown();
}

/// An upload of unknown length three times both windows: it moves only as
/// WINDOW_UPDATEs come, and the upstream gets every byte in order.
#[tokio::test]
async fn an_upload_of_unknown_length_past_every_window_arrives_in_order() {
    const LEN: usize = 3 * 1024 * 1024;
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let initial = client
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_INITIAL_WINDOW_SIZE)
        .map_or(65_535, |(_, v)| i64::from(*v));
    let (mut stream_window, mut conn_window) = (initial, 65_535i64);
    client
        .send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &request("POST", "/big", &[]),
        ))
        .await;
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent < LEN {
        assert!(tokio::time::Instant::now() < deadline, "stalled at {sent}");
        let room = stream_window.min(conn_window).min(16_384);
        if room > 0 {
            let n = (room as usize).min(LEN - sent);
            client.send(&frame(DATA, 0, 1, &body[sent..sent + n])).await;
            sent += n;
            stream_window -= n as i64;
            conn_window -= n as i64;
            continue;
        }
        let frame = client
            .next()
            .await
            .expect("a WINDOW_UPDATE before the close");
        match (frame.kind, frame.id) {
            (WINDOW_UPDATE, 0) => conn_window += i64::from(frame.error_code()),
            (WINDOW_UPDATE, 1) => stream_window += i64::from(frame.error_code()),
            (HEADERS | RST_STREAM, 1) => panic!("answered mid-upload at {sent}: {frame:?}"),
            _ => {}
        }
    }
    client.send(&frame(DATA, END_STREAM, 1, b"")).await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let got = body_of(&seen[0]).expect("a whole body");
    assert_eq!(got.len(), LEN);
    assert!(got == body, "the upstream got other bytes");
    proxy.server.shutdown();
}

/// Trailers after a body framed by its `content-length`: the upstream gets
/// the body whole and framed one way, whether the trailers go too or not.
#[tokio::test]
async fn trailers_after_a_length_framed_body_leave_it_whole() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("POST", "/sum", &[("content-length", "5")]);
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 1, &head),
                frame(DATA, 0, 1, b"hello"),
                header_frames(1, true, &block(&[("x-sum", "1")])),
            ]
            .concat(),
        )
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        body_of(&seen[0]).as_deref(),
        Some(&b"hello"[..]),
        "{seen:?}"
    );
    proxy.server.shutdown();
}

/// What an upstream read of a streamed upload: the bytes after the head,
/// and whether the proxy closed the connection.
#[derive(Clone, Default)]
struct Streamed {
    bytes: Vec<u8>,
    closed: bool,
}

/// An upstream that reads one request head and then reports each byte
/// that follows, never answering.
async fn streamed_upstream() -> (std::net::SocketAddr, watch::Receiver<Streamed>) {
    let (report, reports) = watch::channel(Streamed::default());
    let report = Arc::new(report);
    let addr = support::raw_upstream(move |mut stream| {
        let report = Arc::clone(&report);
        async move {
            support::read_head(&mut stream).await;
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                report.send_modify(|s| s.bytes.extend_from_slice(&buf[..n]));
            }
            report.send_modify(|s| s.closed = true);
        }
    })
    .await;
    (addr, reports)
}

/// Malformed trailers (RFC 9113 §8.1, §8.2.1, §8.2.2) end an upload that
/// is already streaming upstream: the stream is reset, and the upstream
/// must never get the last chunk that would make it a whole request.
#[tokio::test]
async fn malformed_trailers_never_complete_a_streamed_upload() {
    const LEN: usize = 100_000;
    let cases: [(&str, &str); 4] = [
        ("X-Upper", "1"),
        (":path", "/late"),
        ("connection", "close"),
        ("x-nul", "a\0b"),
    ];
    for (name, value) in cases {
        let (addr, mut seen) = streamed_upstream().await;
        let proxy = support::proxy_to("app", addr, json!({}));
        let mut client = RawClient::connect(proxy.addr, &[]).await;
        client
            .send(&frame(
                HEADERS,
                END_HEADERS,
                1,
                &request("POST", "/up", &[]),
            ))
            .await;
        for piece in vec![b'x'; LEN].chunks(16_384) {
            client.send(&frame(DATA, 0, 1, piece)).await;
        }
        // Chunk framing adds to the bytes: all the data is there once the
        // upstream has more than LEN.
        timeout(
            Duration::from_secs(10),
            seen.wait_for(|s| s.bytes.len() >= LEN),
        )
        .await
        .expect("the body streamed within 10 s")
        .expect("upstream running");
        client
            .send(&header_frames(1, true, &block(&[(name, value)])))
            .await;
        let answer = first_answer(&mut client, 1).await;
        assert_eq!(answer.kind, RST_STREAM, "{name}: {answer:?}");
        let got = timeout(Duration::from_secs(10), seen.wait_for(|s| s.closed))
            .await
            .expect("the upstream connection closed within 10 s")
            .expect("upstream running")
            .clone();
        assert!(
            support::decode_chunked(&got.bytes).is_none(),
            "{name}: the upstream got a whole request"
        );
        proxy.server.shutdown();
    }
}

/// RFC 9113 §8.6: HTTP/2 has no 101. An upstream that answers a plain
/// request with one must not have it passed on as an interim or final
/// answer; the client gets an error status or a reset.
#[tokio::test]
async fn an_upstream_101_never_reaches_an_http2_client() {
    let reply =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    for with_body in [false, true] {
        let upstream = support::scripted_upstream(reply, After::Close).await;
        let proxy = support::proxy_to("app", upstream.addr, json!({}));
        let mut client = RawClient::connect(proxy.addr, &[]).await;
        let method = if with_body { "POST" } else { "GET" };
        client
            .send(&header_frames(1, !with_body, &request(method, "/ws", &[])))
            .await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
        }
        loop {
            let answer = first_answer(&mut client, 1).await;
            if answer.kind == RST_STREAM {
                break;
            }
            let fields = decode(&answer.payload);
            let status = fields
                .iter()
                .find(|(n, _)| n == ":status")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            assert_ne!(status, "101", "{method}: {fields:?}");
            if !status.starts_with('1') {
                assert!(status.starts_with('5'), "{method}: {fields:?}");
                break;
            }
        }
        proxy.server.shutdown();
    }
}

/// An upstream answering `reply` (then `after`), a proxy to it, and a
/// client that has asked on stream 1: a POST of five bytes (`with_body`)
/// or a GET with the `get_fields`. Returns them with the method.
async fn asked(
    reply: &'static [u8],
    after: After,
    with_body: bool,
    get_fields: &[(&str, &str)],
) -> (
    support::Scripted,
    support::TestProxy,
    RawClient,
    &'static str,
) {
    let upstream = support::scripted_upstream(reply, after).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let (method, fields) = match with_body {
        true => ("POST", &[][..]),
        false => ("GET", get_fields),
    };
    let head = request(method, "/asked", fields);
    client.send(&header_frames(1, !with_body, &head)).await;
    if with_body {
        client.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
    }
    (upstream, proxy, client, method)
}

/// A 304 that states its representation's length, and a 204 with bytes
/// after its head, have no content (RFC 9110 §6.4.1, RFC 9112 §6.3): the
/// HTTP/2 answer ends with its head, with no DATA, and the 204 has no
/// `content-length` (RFC 9110 §8.6). The upstream keeps its connection
/// open, so an answer that waits for a body never ends.
#[tokio::test]
async fn a_304_with_a_length_and_a_204_with_bytes_end_at_their_head() {
    let replies: [&[u8]; 2] = [
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\nETag: \"v\"\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for reply in replies {
        for with_body in [false, true] {
            let (_upstream, proxy, mut client, method) =
                asked(reply, After::Hang, with_body, &[]).await;
            let head = first_answer(&mut client, 1).await;
            let case = String::from_utf8_lossy(&reply[..12]);
            assert_eq!(head.kind, HEADERS, "{case} {method}: {head:?}");
            let fields = decode(&head.payload);
            let status = &fields[0].1;
            assert!(reply.starts_with(format!("HTTP/1.1 {status}").as_bytes()));
            if status == "204" {
                assert!(
                    fields.iter().all(|(n, _)| n != "content-length"),
                    "{case} {method}: {fields:?}"
                );
            }
            let (ended, data) = match head.flags & END_STREAM {
                0 => how_it_ends(&mut client, 1).await,
                _ => (true, Vec::new()),
            };
            assert!(
                ended && data.is_empty(),
                "{case} {method}: {ended} {data:?}"
            );
            proxy.server.shutdown();
        }
    }
}

/// An upstream that closes mid-body: the HTTP/2 client's stream is reset,
/// never ended as if whole, on the paths a request with a body or with
/// `te: trailers` takes (hyper's client), for a length and for chunks.
#[tokio::test]
async fn an_upstream_cut_mid_body_resets_the_stream_on_hyper_s_path() {
    let replies: [&[u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ];
    for reply in replies {
        for with_body in [false, true] {
            let (_upstream, proxy, mut client, method) =
                asked(reply, After::Close, with_body, &[("te", "trailers")]).await;
            let head = first_answer(&mut client, 1).await;
            let case = String::from_utf8_lossy(&reply[17..40]);
            if head.kind == HEADERS {
                assert_eq!(head.flags & END_STREAM, 0, "{case} {method}: {head:?}");
                let (ended, data) = how_it_ends(&mut client, 1).await;
                assert!(!ended, "{case} {method}: ended cleanly after {data:?}");
            }
            proxy.server.shutdown();
        }
    }
}

/// Streams `ids`' answers, read together: the answer, or the RST code.
async fn answers(client: &mut RawClient, ids: &[u32]) -> HashMap<u32, Result<RawResponse, u32>> {
    let mut open: HashMap<u32, RawResponse> =
        ids.iter().map(|&id| (id, RawResponse::default())).collect();
    let mut done = HashMap::new();
    while !open.is_empty() {
        let frame = client.next().await.expect("the answers before the close");
        let Some(response) = open.get_mut(&frame.id) else {
            continue;
        };
        match frame.kind {
            HEADERS if response.fields.is_empty() => response.fields = decode(&frame.payload),
            HEADERS => response.trailers = decode(&frame.payload),
            DATA => response.body.extend_from_slice(&frame.payload),
            RST_STREAM => {
                open.remove(&frame.id);
                done.insert(frame.id, Err(frame.error_code()));
                continue;
            }
            _ => {}
        }
        if frame.flags & END_STREAM != 0 {
            let response = open.remove(&frame.id).expect("open");
            done.insert(frame.id, Ok(response));
        }
    }
    done
}

/// Five uploads on one connection, their DATA frames interleaved, one of
/// them reset by the client halfway: each other gets its own body echoed,
/// and the reset one never reaches the upstream whole.
#[tokio::test]
async fn interleaved_uploads_get_their_own_answers_and_one_reset_disturbs_none() {
    const LEN: usize = 40_000;
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = open_client(proxy.addr).await;
    let ids = [1u32, 3, 5, 7, 9];
    let bodies: HashMap<u32, Vec<u8>> = ids
        .iter()
        .map(|&id| {
            (
                id,
                (0..LEN)
                    .map(|i| ((i * id as usize + id as usize) % 251) as u8)
                    .collect(),
            )
        })
        .collect();
    let length = LEN.to_string();
    for &id in &ids {
        let path = format!("/echo?s={id}");
        let head = request("POST", &path, &[("content-length", &length)]);
        client.send(&frame(HEADERS, END_HEADERS, id, &head)).await;
    }
    let pieces = LEN / 4_000;
    for piece in 0..pieces {
        for &id in &ids {
            if id == 5 && piece == pieces / 2 {
                client
                    .send(&frame(RST_STREAM, 0, 5, &CANCEL.to_be_bytes()))
                    .await;
            }
            if id == 5 && piece >= pieces / 2 {
                continue;
            }
            let last = piece + 1 == pieces;
            let data = &bodies[&id][piece * 4_000..(piece + 1) * 4_000];
            client
                .send(&frame(DATA, if last { END_STREAM } else { 0 }, id, data))
                .await;
        }
    }
    let served = [1u32, 3, 7, 9];
    let got = answers(&mut client, &served).await;
    for id in served {
        let response = got[&id]
            .as_ref()
            .unwrap_or_else(|code| panic!("{id} reset: {code}"));
        assert_eq!(response.field(":status"), Some("200"), "{id}");
        assert!(response.body == bodies[&id], "{id}: another body came back");
    }
    // The reset upload, if it got upstream at all, did not get there whole.
    let whole_five = upstream
        .requests()
        .iter()
        .any(|s| s.uri.ends_with("s=5") && s.body.len() == LEN);
    assert!(!whole_five, "the reset upload reached the upstream whole");
    proxy.server.shutdown();
}

/// The upstream's field names reach an HTTP/2 client in lower case (RFC
/// 9113 §8.2.1: upper case makes the response malformed), and none of the
/// connection-specific fields, nor those `Connection` names, do (§8.2.2),
/// on both paths.
#[tokio::test]
async fn upstream_fields_reach_the_client_lower_case_and_without_hop_by_hop() {
    let reply = b"HTTP/1.1 200 OK\r\nX-Mixed-Case: v\r\nProxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\nKeep-Alive: timeout=5\r\nConnection: X-Secret\r\nX-Secret: s\r\n\
        Content-Length: 2\r\n\r\nok";
    let upstream = support::scripted_upstream(reply, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    for (id, with_body) in [(1, false), (3, true)] {
        let method = if with_body { "POST" } else { "GET" };
        client
            .send(&header_frames(id, !with_body, &request(method, "/f", &[])))
            .await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, id, b"hello")).await;
        }
        let response = client.response(id).await;
        assert_eq!(response.body, b"ok");
        let names: Vec<&str> = response.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| !n.bytes().any(|b| b.is_ascii_uppercase())),
            "{method}: {names:?}"
        );
        for hop in [
            "proxy-connection",
            "upgrade",
            "keep-alive",
            "connection",
            "x-secret",
        ] {
            assert!(!names.contains(&hop), "{method}: {hop} in {names:?}");
        }
        assert_eq!(response.field("x-mixed-case"), Some("v"), "{method}");
    }
    proxy.server.shutdown();
}

/// `te`'s one value allowed in HTTP/2 is `trailers`, a token, and tokens
/// are case-insensitive (RFC 9110 §10.1.4, RFC 9113 §8.2.2): `Trailers`
/// is taken as `trailers` is, and the request answered.
#[tokio::test]
async fn a_te_of_trailers_in_any_case_is_taken() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    for (i, value) in ["trailers", "Trailers", "TRAILERS"].into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let head = request("GET", "/te", &[("te", value)]);
        client.send(&header_frames(id, true, &head)).await;
        let answer = first_answer(&mut client, id).await;
        assert_eq!(answer.kind, HEADERS, "te: {value}: {answer:?}");
        let fields = decode(&answer.payload);
        assert!(
            fields.contains(&(":status".to_string(), "200".to_string())),
            "te: {value}: {fields:?}"
        );
    }
    proxy.server.shutdown();
}

/// Malformed heads the fuzz campaign does not pick (RFC 9113 §8.2.1,
/// §8.3.1, §8.5): each resets its stream and is never forwarded.
#[tokio::test]
async fn more_malformed_heads_are_reset_and_never_forwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("NUL in a value", request("GET", "/nul", &[("x-v", "a\0b")])),
        ("a trailing tab", request("GET", "/tab", &[("x-v", "a\t")])),
        (
            "te: trailers, gzip",
            request("GET", "/te", &[("te", "trailers, gzip")]),
        ),
        (
            "userinfo in :authority",
            block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "user@app.test"),
                (":path", "/userinfo"),
            ]),
        ),
        (
            "CONNECT without :authority",
            block(&[(":method", "CONNECT")]),
        ),
        (
            "CONNECT with a :path",
            block(&[
                (":method", "CONNECT"),
                (":authority", "app.test:80"),
                (":path", "/"),
            ]),
        ),
        (
            ":protocol without the setting",
            block(&[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":authority", "app.test"),
                (":path", "/chat"),
            ]),
        ),
        (
            "an empty host",
            without_authority("GET", "/e", &[("host", "")]),
        ),
        (
            "neither :authority nor host",
            without_authority("GET", "/none", &[]),
        ),
        (
            "a negative length",
            request("POST", "/neg", &[("content-length", "-1")]),
        ),
        ("a fragment in :path", request("GET", "/a#frag", &[])),
    ];
    for (i, (case, head)) in cases.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        client.send(&header_frames(id, true, head)).await;
        let answer = first_answer(&mut client, id).await;
        assert_eq!(answer.kind, RST_STREAM, "{case}: {answer:?}");
        assert_eq!(answer.error_code(), PROTOCOL_ERROR, "{case}");
    }
    let id = 2 * cases.len() as u32 + 1;
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            id,
            &request("GET", "/good", &[]),
        ))
        .await;
    assert_eq!(client.response(id).await.body, b"app");
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/good"], "a malformed request was forwarded");
}

/// An upload the upstream answers before it has read it: the answer
/// reaches the client whole and ends the stream (RFC 9113 §8.1 lets the
/// server stop the rest of the body), and the connection goes on serving.
#[tokio::test]
async fn an_early_answer_ends_an_upload_and_the_connection_goes_on() {
    let seen = Arc::new(Mutex::new(0usize));
    let counted = Arc::clone(&seen);
    let addr = support::raw_upstream(move |mut stream| {
        let counted = Arc::clone(&counted);
        async move {
            let head = support::read_head(&mut stream).await;
            *counted.lock().expect("not poisoned") += 1;
            let reply: &[u8] = match String::from_utf8_lossy(&head).contains("/early") {
                true => b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbig",
                false => OK,
            };
            let _ = stream.write_all(reply).await;
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(1..)) {}
        }
    })
    .await;
    let proxy = support::proxy_to("app", addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("POST", "/early", &[]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    // Past the read-ahead, so the body streams and the answer comes first.
    for piece in vec![b'x'; 100_000].chunks(16_384) {
        client.send(&frame(DATA, 0, 1, piece)).await;
    }
    let head = first_answer(&mut client, 1).await;
    assert_eq!(head.kind, HEADERS, "{head:?}");
    assert_eq!(decode(&head.payload)[0].1, "413");
    let (ended, data) = match head.flags & END_STREAM {
        0 => how_it_ends(&mut client, 1).await,
        _ => (true, Vec::new()),
    };
    assert!(ended, "the answer was cut: {data:?}");
    assert_eq!(data, b"big");
    client
        .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "/next", &[])))
        .await;
    assert_eq!(client.response(3).await.field(":status"), Some("200"));
}

/// RFC 9110 §7.2 and RFC 9112 §3.2: a request with two `host` fields
/// (and no `:authority` to settle it) is refused, never forwarded under
/// either; so is one whose second `host` repeats the first, unless taken
/// as one. Either way no upstream gets two Hosts.
#[tokio::test]
async fn two_host_fields_without_an_authority_are_never_forwarded_as_two() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let differ = [("host", "app.test"), ("host", "other.test")];
    client
        .send(&header_frames(
            1,
            true,
            &without_authority("GET", "/two", &differ),
        ))
        .await;
    let answer = first_answer(&mut client, 1).await;
    if answer.kind == HEADERS {
        let status = decode(&answer.payload)[0].1.clone();
        assert!(status.starts_with('4'), "answered {status}");
    }
    let same = [("host", "app.test"), ("host", "app.test")];
    client
        .send(&header_frames(
            3,
            true,
            &without_authority("GET", "/same", &same),
        ))
        .await;
    first_answer(&mut client, 3).await;
    for request in upstream.requests() {
        assert!(!request.head.contains("/two"), "{}", request.head);
        assert_eq!(
            support::header_values(&request.head, "host"),
            ["app.test"],
            "{}",
            request.head
        );
    }
    proxy.server.shutdown();
}

/// A HEAD on hyper's path (`te: trailers`): the answer keeps the upstream's
/// length and ends with its head, whatever the upstream then does (RFC
/// 9110 §9.3.2).
#[tokio::test]
async fn a_head_on_hyper_s_path_ends_at_its_head() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let upstream = support::scripted_upstream(reply, After::Hang).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("HEAD", "/h", &[("te", "trailers")]);
    client.send(&frame(HEADERS, HEAD_ONLY, 1, &head)).await;
    let answer = first_answer(&mut client, 1).await;
    assert_eq!(answer.kind, HEADERS, "{answer:?}");
    let fields = decode(&answer.payload);
    assert_eq!(fields[0].1, "200");
    assert!(
        fields.contains(&("content-length".to_string(), "1000".to_string())),
        "{fields:?}"
    );
    assert_ne!(
        answer.flags & END_STREAM,
        0,
        "the head did not end the stream"
    );
    proxy.server.shutdown();
}

/// CONNECT (RFC 9113 §8.5) is answered by the proxy, which does not
/// tunnel: never forwarded as a plain request.
#[tokio::test]
async fn connect_is_answered_locally_and_never_forwarded() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = block(&[(":method", "CONNECT"), (":authority", "app.test:80")]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    let answer = first_answer(&mut client, 1).await;
    if answer.kind == HEADERS {
        let status = decode(&answer.payload)[0].1.clone();
        assert!(!status.starts_with('2'), "a tunnel was granted: {status}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    proxy.server.shutdown();
}

/// An upstream head's fields, as an HTTP/2 client gets them: white space
/// around a value is not part of it (RFC 9112 §5.1), and in HTTP/2 a value
/// that starts or ends with it makes the response malformed (RFC 9113
/// §8.2.1); `set-cookie` stays one field per cookie, commas and all (RFC
/// 9110 §5.3), and an empty value stays a field. On both paths.
#[tokio::test]
async fn upstream_values_reach_the_client_trimmed_and_cookies_apart() {
    let reply = b"HTTP/1.1 200 OK\r\nX-Trail: v \t\r\nX-Lead: \t w\r\n\
        Set-Cookie: a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\nSet-Cookie: b=2\r\n\
        X-Empty:\r\nContent-Length: 2\r\n\r\nok";
    let upstream = support::scripted_upstream(reply, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    for (id, with_body) in [(1, false), (3, true)] {
        let method = if with_body { "POST" } else { "GET" };
        client
            .send(&header_frames(id, !with_body, &request(method, "/v", &[])))
            .await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, id, b"hello")).await;
        }
        let response = client.response(id).await;
        assert_eq!(
            response.field(":status"),
            Some("200"),
            "{method}: {response:?}"
        );
        assert_eq!(response.field("x-trail"), Some("v"), "{method}");
        assert_eq!(response.field("x-lead"), Some("w"), "{method}");
        assert_eq!(response.field("x-empty"), Some(""), "{method}");
        let cookies: Vec<&str> = response
            .fields
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            cookies,
            ["a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "b=2"],
            "{method}"
        );
    }
    proxy.server.shutdown();
}

/// A response head larger than one frame goes as HEADERS and then
/// CONTINUATION frames on the same stream with nothing between them, the
/// last with END_HEADERS (RFC 9113 §4.3, §6.10), and decodes whole; the
/// body follows. On both paths.
#[tokio::test]
async fn a_response_head_past_one_frame_goes_on_in_continuations() {
    let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..40 {
        reply.extend_from_slice(format!("x-big-{i}: {}\r\n", "v".repeat(1000)).as_bytes());
    }
    reply.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    let upstream = support::scripted_upstream(reply, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    for (id, with_body) in [(1, false), (3, true)] {
        let method = if with_body { "POST" } else { "GET" };
        client
            .send(&header_frames(
                id,
                !with_body,
                &request(method, "/big", &[]),
            ))
            .await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, id, b"hello")).await;
        }
        let first = first_answer(&mut client, id).await;
        assert_eq!(first.kind, HEADERS, "{method}: {first:?}");
        let mut block = first.payload.clone();
        let mut flags = first.flags;
        let mut pieces = 1;
        while flags & END_HEADERS == 0 {
            assert!(
                block.len() <= 16_384 * pieces,
                "{method}: a frame past 16 KiB"
            );
            let next = client.next().await.expect("a CONTINUATION");
            assert_eq!(
                (next.kind, next.id),
                (CONTINUATION, id),
                "{method}: {next:?}"
            );
            block.extend_from_slice(&next.payload);
            flags = next.flags;
            pieces += 1;
        }
        assert!(pieces > 1, "{method}: a 40 KB head in one frame");
        let fields = decode(&block);
        assert_eq!(fields[0], (":status".to_string(), "200".to_string()));
        for i in 0..40 {
            let name = format!("x-big-{i}");
            assert!(
                fields.iter().any(|(n, v)| *n == name && v.len() == 1000),
                "{method}: {name} missing"
            );
        }
        let (ended, data) = match first.flags & END_STREAM {
            0 => how_it_ends(&mut client, id).await,
            _ => (true, Vec::new()),
        };
        assert!(ended, "{method}: reset");
        assert_eq!(data, b"ok", "{method}");
    }
    proxy.server.shutdown();
}

/// Trailers after an upload too large to be read whole (it streams): the
/// upstream gets the body whole and its chunked framing well-formed, with
/// none of the fields no trailer may carry (RFC 9110 §6.5.1).
#[tokio::test]
async fn trailers_after_a_streamed_upload_leave_it_whole() {
    const LEN: usize = 100_000;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(HEADERS, END_HEADERS, 1, &request("POST", "/s", &[])))
        .await;
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    for piece in body.chunks(16_384) {
        client.send(&frame(DATA, 0, 1, piece)).await;
    }
    let trailers = block(&[
        ("x-sum", "1"),
        ("content-length", "9"),
        ("host", "evil.test"),
    ]);
    client.send(&header_frames(1, true, &trailers)).await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(body_of(&seen[0]) == Some(body), "{}", seen[0].head);
    let wire = String::from_utf8_lossy(&seen[0].body).to_lowercase();
    let section = wire.rsplit("\r\n0\r\n").next().unwrap_or_default();
    assert!(!section.contains("content-length"), "{section:?}");
    assert!(!section.contains("evil.test"), "{section:?}");
    proxy.server.shutdown();
}

/// An upstream's framing that HTTP/1.1 tolerates must reach an HTTP/2
/// client as one valid `content-length` or none (RFC 9110 §8.6: the field
/// is `1*DIGIT`; an h2 client takes anything else, or a length that
/// disagrees with the DATA, as malformed, RFC 9113 §8.1.1): a length
/// repeated as a list or as two fields, and a length beside chunked
/// framing, which the intermediary must drop (RFC 9112 §6.3). On both
/// paths.
#[tokio::test]
async fn an_upstreams_repeated_or_overridden_length_reaches_the_client_valid() {
    let replies: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n",
    ];
    for reply in replies {
        let case = String::from_utf8_lossy(&reply[17..reply.len() - 5]).into_owned();
        for with_body in [false, true] {
            let (_upstream, proxy, mut client, method) =
                asked(reply, After::Close, with_body, &[]).await;
            let head = first_answer(&mut client, 1).await;
            if head.kind == RST_STREAM {
                continue;
            }
            let fields = decode(&head.payload);
            let status = fields[0].1.clone();
            if status.starts_with('5') {
                // Refused as malformed: no length to get wrong.
                continue;
            }
            let lengths: Vec<&str> = fields
                .iter()
                .filter(|(n, _)| n == "content-length")
                .map(|(_, v)| v.as_str())
                .collect();
            let (ended, data) = match head.flags & END_STREAM {
                0 => how_it_ends(&mut client, 1).await,
                _ => (true, Vec::new()),
            };
            assert!(ended, "{case:?} {method}: reset after {data:?}");
            assert_eq!(data, b"hello", "{case:?} {method}");
            assert!(
                lengths.is_empty() || lengths == ["5"],
                "{case:?} {method}: content-length {lengths:?}"
            );
            proxy.server.shutdown();
        }
    }
}

/// A stream the client resets while its answer streams (held back by the
/// client's window) takes its upstream connection with it: the next
/// requests, on the same client connection, get their own answers, never
/// the rest of the reset one's body from a pooled connection.
#[tokio::test]
async fn a_stream_reset_mid_answer_leaves_no_bytes_for_the_next_request() {
    const BIG: usize = 1_000_000;
    let addr = support::raw_upstream(|mut stream| async move {
        loop {
            let head = support::read_head(&mut stream).await;
            if head.is_empty() {
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let reply = match head.starts_with("GET /big ") {
                true => [
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes(),
                    vec![b'B'; BIG],
                ]
                .concat(),
                false => OK.to_vec(),
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = support::proxy_to("app", addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/big", &[])))
        .await;
    let mut response = RawResponse::default();
    // The default window: 65 535 bytes come, then the answer waits.
    let ended = client.read_into(1, &mut response, 60_000).await;
    assert!(!ended && response.field(":status") == Some("200"));
    // The connection window is granted back, the stream's is not: stream
    // 1 stays held back until its reset lands.
    let grant = (1u32 << 20).to_be_bytes();
    client
        .send(
            &[
                frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()),
                frame(WINDOW_UPDATE, 0, 0, &grant),
            ]
            .concat(),
        )
        .await;
    for id in [3, 5, 7] {
        client
            .send(&frame(
                HEADERS,
                HEAD_ONLY,
                id,
                &request("GET", "/small", &[]),
            ))
            .await;
        let response = client.response(id).await;
        assert_eq!(response.field(":status"), Some("200"), "{id}: {response:?}");
        assert_eq!(response.body, b"ok", "{id}");
    }
    proxy.server.shutdown();
}

/// RFC 9113 §8.3.1 refuses a `host` that names another entity than the
/// `:authority`; `app.test:80` and `app.test` over http are one entity
/// (RFC 9110 §4.2.3: the default port may be left out), as are names that
/// differ in case. They are taken, with one Host upstream; a host with
/// another port is refused and never forwarded.
#[tokio::test]
async fn a_host_that_differs_from_the_authority_only_by_the_default_port_is_taken() {
    let cases = [
        ("app.test:80", true),
        ("APP.test", true),
        ("app.test:443", false),
        ("app.test:8080", false),
        ("other.test:80", false),
    ];
    for (host, taken) in cases {
        let (upstream, proxy, mut client, _) =
            asked(OK, After::Again, false, &[("host", host)]).await;
        let answer = first_answer(&mut client, 1).await;
        let requests = upstream.requests();
        if taken {
            assert_eq!(answer.kind, HEADERS, "host {host}: {answer:?}");
            assert_eq!(decode(&answer.payload)[0].1, "200", "host {host}");
            assert_eq!(requests.len(), 1, "host {host}");
            let hosts = support::header_values(&requests[0].head, "host");
            assert_eq!(hosts.len(), 1, "host {host}: {}", requests[0].head);
            let sent = hosts[0].to_ascii_lowercase();
            assert!(
                sent == "app.test" || sent == "app.test:80",
                "host {host}: sent {sent}"
            );
        } else {
            if answer.kind == HEADERS {
                let status = decode(&answer.payload)[0].1.clone();
                assert!(status.starts_with('4'), "host {host}: answered {status}");
            }
            assert!(
                requests.is_empty(),
                "host {host} was forwarded: {}",
                requests[0].head
            );
        }
        proxy.server.shutdown();
    }
}
