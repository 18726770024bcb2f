//! Switchyard's own HTTP/2 server (`proxy/src/h2`) through real sockets:
//! flow control both ways, many streams on one connection, PING and
//! SETTINGS, malformed requests and protocol errors, a client's cancel,
//! the head size limit, trailers, HEAD, the idle timeout and a graceful
//! shutdown; and what the review's fixes hold: header lists over the limit
//! (huge trailers, an HPACK bomb), a download once the socket fills,
//! responses in turn, rapid-reset and malformed-request floods, a
//! self-dependent stream, `:path` bytes, the first frame, empty and
//! unfinished CONTINUATIONs, local answers' fields, a reset stream's
//! window given back, an upload its client never ended, late frames on
//! closed streams, and PRIORITY's rules. Frame-level tests speak HTTP/2 through the small raw
//! client below; the others use hyper's client.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, Instant};

use support::h2::*;

/// A raw upstream for one request: it reports the request head once it is
/// in, writes `reply` when released, and reports when the proxy closes the
/// connection.
struct Held {
    addr: SocketAddr,
    arrived: oneshot::Receiver<String>,
    release: oneshot::Sender<()>,
    closed: oneshot::Receiver<()>,
}

async fn held_upstream(reply: &'static [u8]) -> Held {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<()>();
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let head = support::read_head(&mut stream).await;
        let _ = arrived_tx.send(String::from_utf8_lossy(&head).into_owned());
        // A dropped sender is not a release.
        let released = async {
            if release_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let answer = tokio::select! {
            () = released => true,
            () = read_to_eof(&mut stream) => false,
        };
        if answer {
            let _ = stream.write_all(reply).await;
            read_to_eof(&mut stream).await;
        }
        let _ = closed_tx.send(());
    });
    Held {
        addr,
        arrived,
        release,
        closed,
    }
}

async fn read_to_eof(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A pattern that shows a byte moved or lost.
fn pattern(len: usize) -> Vec<u8> {
    pattern_at(0, len)
}

/// `len` bytes of `pattern` from offset `start` on.
fn pattern_at(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_request_body_larger_than_both_windows_arrives_whole() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    // 3 MiB: three stream windows (1 MiB) and three connection windows
    // (1 MiB), so it passes only if what the upstream takes is granted
    // back.
    let body = Bytes::from(pattern(3 * 1024 * 1024));
    let request = http::Request::post("http://app.test/echo")
        .body(Full::new(body.clone()))
        .expect("request");
    let response = timeout(Duration::from_secs(60), async {
        let response = sender.send_request(request).await.expect("response head");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body");
        (status, bytes.to_bytes())
    })
    .await
    .expect("answered within 60 s");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), body.len());
    assert!(seen[0].body == body, "the upstream got other bytes");
    assert_eq!(response.0, 200);
    assert!(response.1 == body, "the echo came back changed");
}

/// An upstream that holds every request until `n` are in at once, then
/// answers each with its path.
async fn barrier_upstream(n: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let barrier = barrier.clone();
            let service = service_fn(move |request: http::Request<Incoming>| {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    let path = Bytes::from(request.uri().path().to_string());
                    Ok::<_, Infallible>(http::Response::new(Full::new(path)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn a_hundred_streams_on_one_connection_are_served_at_once() {
    // The upstream answers none until all 100 are in, so this passes only
    // if the server runs them side by side.
    let upstream = barrier_upstream(100).await;
    let proxy = support::proxy_to("app", upstream, json!({}));
    let sender = support::h2c_client(proxy.addr).await;

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let path = format!("/stream/{i}");
                let request = http::Request::get(format!("http://app.test{path}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let response = sender.send_request(request).await.expect("response");
                let status = response.status();
                let body = response.into_body().collect().await.expect("body");
                (path, status.as_u16(), body.to_bytes())
            })
        })
        .collect();
    for task in tasks {
        let (path, status, body) = timeout(Duration::from_secs(20), task)
            .await
            .expect("all 100 answered within 20 s")
            .expect("task");
        assert_eq!((status, body), (200, Bytes::from(path)));
    }
}

#[tokio::test]
async fn a_stream_past_the_concurrency_limit_is_refused() {
    // None of the first 256 can finish before all are in, so the 257th
    // finds the limit (SETTINGS_MAX_CONCURRENT_STREAMS) reached.
    let upstream = barrier_upstream(256).await;
    let proxy = support::proxy_to("app", upstream, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let heads: Vec<u8> = (0..257u32)
        .flat_map(|i| {
            frame(
                HEADERS,
                HEAD_ONLY,
                2 * i + 1,
                &request("GET", &format!("/s/{i}"), &[]),
            )
        })
        .collect();
    client.send(&heads).await;

    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let (mut ended, mut resets) = (0, Vec::new());
    while ended < 256 || resets.is_empty() {
        let frame = client.next().await.expect("answers before the close");
        match frame.kind {
            RST_STREAM => resets.push((frame.id, frame.error_code())),
            DATA => bodies.entry(frame.id).or_default().extend(frame.payload),
            HEADERS => assert_eq!(decode(&frame.payload)[0].1, "200"),
            _ => continue,
        }
        if frame.kind != RST_STREAM && frame.flags & END_STREAM != 0 {
            ended += 1;
        }
    }
    assert_eq!(resets, [(513, REFUSED_STREAM)]);
    for i in 0..256 {
        assert_eq!(bodies[&(2 * i + 1)], format!("/s/{i}").as_bytes());
    }
}

#[tokio::test]
async fn a_response_waits_for_the_clients_stream_window() {
    let body = pattern(2000);
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec();
    reply.extend_from_slice(&body);
    let upstream = support::scripted_upstream(reply.leak(), support::After::Close).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 100)]).await;

    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/", &[])))
        .await;
    let mut response = RawResponse::default();
    assert!(!client.read_into(1, &mut response, 100).await);
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body.len(), 100, "past the initial window");
    // A PING is answered at once: DATA sent before its ACK would come
    // before it.
    let early = client.frames_before_ping_ack(*b"window 1").await;
    assert!(early.iter().all(|f| f.kind != DATA), "{early:?}");

    client
        .send(&frame(WINDOW_UPDATE, 0, 1, &900u32.to_be_bytes()))
        .await;
    assert!(!client.read_into(1, &mut response, 1000).await);
    assert_eq!(response.body.len(), 1000, "past the WINDOW_UPDATE");
    let early = client.frames_before_ping_ack(*b"window 2").await;
    assert!(early.iter().all(|f| f.kind != DATA), "{early:?}");

    // A new initial window size moves an open stream's window by the
    // difference (RFC 9113 §6.9.2): 1000 more.
    let larger = [
        &SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes()[..],
        &1100u32.to_be_bytes(),
    ]
    .concat();
    client.send(&frame(SETTINGS, 0, 0, &larger)).await;
    assert!(client.read_into(1, &mut response, usize::MAX).await);
    assert!(response.body == body, "the body arrived changed");
}

#[tokio::test]
async fn settings_are_sent_and_acknowledged_and_pings_answered() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"limits": {"max_header_bytes": 10_000}}),
    );
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    for expected in [
        (SETTINGS_MAX_CONCURRENT_STREAMS, 256),
        (SETTINGS_INITIAL_WINDOW_SIZE, 1024 * 1024),
        (SETTINGS_MAX_HEADER_LIST_SIZE, 10_000),
    ] {
        assert!(
            client.settings.contains(&expected),
            "{expected:?} not in {:?}",
            client.settings
        );
    }
    // The connection window is raised from 65 535 to 1 MiB, and our empty
    // SETTINGS is acknowledged.
    let update = client.next().await.expect("WINDOW_UPDATE");
    assert_eq!((update.kind, update.id), (WINDOW_UPDATE, 0));
    assert_eq!(update.payload, (1_048_576u32 - 65_535).to_be_bytes());
    let ack = client.next().await.expect("SETTINGS ACK");
    assert_eq!((ack.kind, ack.flags, ack.payload.len()), (SETTINGS, ACK, 0));

    // Settings sent later are acknowledged too.
    let later = [
        &SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes()[..],
        &[0, 1, 0, 0],
    ]
    .concat();
    client.send(&frame(SETTINGS, 0, 0, &later)).await;
    let ack = client.next().await.expect("SETTINGS ACK");
    assert_eq!((ack.kind, ack.flags, ack.payload.len()), (SETTINGS, ACK, 0));

    client.send(&frame(PING, 0, 0, b"12345678")).await;
    let pong = client.next().await.expect("PING ACK");
    assert_eq!(
        (pong.kind, pong.flags, pong.id, &pong.payload[..]),
        (PING, ACK, 0, &b"12345678"[..])
    );
    // An ACK is not answered: the next PING's ACK is the next frame.
    client.send(&frame(PING, ACK, 0, b"ignoreme")).await;
    assert!(client.frames_before_ping_ack(*b"87654321").await.is_empty());
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn malformed_requests_are_reset_and_never_forwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    let no_path = block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "app.test"),
    ]);
    let short_body = [
        frame(
            HEADERS,
            END_HEADERS,
            11,
            &request("POST", "/short", &[("content-length", "10")]),
        ),
        frame(DATA, END_STREAM, 11, b"12345"),
    ]
    .concat();
    let cases: [(&str, Vec<u8>); 6] = [
        (
            "an upper-case name",
            frame(
                HEADERS,
                HEAD_ONLY,
                1,
                &request("GET", "/upper", &[("X-Upper", "1")]),
            ),
        ),
        (
            "a connection-specific field",
            frame(
                HEADERS,
                HEAD_ONLY,
                3,
                &request("GET", "/conn", &[("connection", "keep-alive")]),
            ),
        ),
        ("no :path", frame(HEADERS, HEAD_ONLY, 5, &no_path)),
        (
            "TE other than trailers",
            frame(
                HEADERS,
                HEAD_ONLY,
                7,
                &request("GET", "/te", &[("te", "gzip")]),
            ),
        ),
        (
            "a content-length and no body",
            frame(
                HEADERS,
                HEAD_ONLY,
                9,
                &request("POST", "/none", &[("content-length", "3")]),
            ),
        ),
        // Head and body in one write, so the body is there before the
        // request could be forwarded.
        ("a body shorter than its content-length", short_body),
    ];
    for (i, (case, bytes)) in cases.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        client.send(bytes).await;
        let reset = loop {
            let frame = client.next().await.expect("a reset before the close");
            if frame.kind != SETTINGS && frame.kind != WINDOW_UPDATE {
                break frame;
            }
        };
        assert_eq!(
            (reset.kind, reset.id),
            (RST_STREAM, id),
            "{case}: {reset:?}"
        );
        assert_eq!(reset.error_code(), PROTOCOL_ERROR, "{case}");
    }

    // The connection still serves.
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            13,
            &request("GET", "/good", &[]),
        ))
        .await;
    let response = client.response(13).await;
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body, b"app");
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/good"], "a malformed request was forwarded");
}

#[tokio::test]
async fn protocol_errors_end_the_connection_with_goaway_and_its_code() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));

    let get = request("GET", "/", &[]);
    // Only the head of the oversized frame: the server judges it by its
    // length and must not be left with unread bytes, which would turn its
    // close into a reset.
    let oversized = frame(DATA, 0, 1, &[0; 16_385])[..9].to_vec();
    let cases: [(&str, Vec<u8>, u32); 6] = [
        (
            "DATA on stream 0",
            frame(DATA, 0, 0, b"data"),
            PROTOCOL_ERROR,
        ),
        ("a 16 385-byte frame", oversized, FRAME_SIZE_ERROR),
        (
            "a connection window over 2^31-1",
            frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            FLOW_CONTROL_ERROR,
        ),
        (
            "an even stream id",
            frame(HEADERS, HEAD_ONLY, 2, &get),
            PROTOCOL_ERROR,
        ),
        (
            "HEADERS without END_HEADERS, then PING",
            [
                frame(HEADERS, END_STREAM, 1, &get),
                frame(PING, 0, 0, &[0; 8]),
            ]
            .concat(),
            PROTOCOL_ERROR,
        ),
        (
            "HPACK index 0",
            frame(HEADERS, HEAD_ONLY, 1, &[0x80]),
            COMPRESSION_ERROR,
        ),
    ];
    for (case, bytes, code) in cases {
        let mut client = RawClient::connect(proxy.addr, &[]).await;
        client.send(&bytes).await;
        let goaway = client.goaway().await;
        assert_eq!(goaway.error_code(), code, "{case}: {goaway:?}");
        assert_eq!(goaway.last_stream(), 0, "{case}: no stream was opened");
        client.assert_closed().await;
    }
    assert!(upstream.requests().is_empty(), "something was forwarded");
}

#[tokio::test]
async fn a_bad_preface_closes_the_connection_unforwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));

    // At once, "XX" where "SM" belongs: not HTTP/2 from the first read,
    // so the HTTP/1.1 side refuses it.
    let bad = [
        &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..],
        &frame(SETTINGS, 0, 0, &[]),
        &frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/", &[])),
    ]
    .concat();
    let (answer, closed) =
        support::raw_exchange_until_close(proxy.addr, &bad, Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");

    // In two parts: the first is the start of a preface, so the HTTP/2
    // server takes the connection (its SETTINGS say so); then the rest is
    // wrong.
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut client = RawClient::new(stream);
    client.send(b"PRI * HTTP/2.0\r\n\r\n").await;
    let first = client.next().await.expect("the server's SETTINGS");
    assert_eq!(first.kind, SETTINGS, "{first:?}");
    client.send(b"XX\r\n\r\n").await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), PROTOCOL_ERROR, "{goaway:?}");
    client.assert_closed().await;
    assert!(upstream.requests().is_empty(), "something was forwarded");
}

#[tokio::test]
async fn a_client_reset_closes_the_upstream_connection() {
    // Waiting for the head, then part-way through the body.
    for mid_body in [false, true] {
        let upstream =
            held_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst ten.").await;
        let proxy = support::proxy_to("app", upstream.addr, json!({}));
        let mut client = RawClient::connect(proxy.addr, &[]).await;

        client
            .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/hold", &[])))
            .await;
        let head = timeout(Duration::from_secs(5), upstream.arrived)
            .await
            .expect("forwarded within 5 s")
            .expect("head");
        assert!(head.starts_with("GET /hold HTTP/1.1\r\n"), "{head}");
        let mut release = Some(upstream.release);
        if mid_body {
            let release = release.take().expect("not sent yet");
            release.send(()).expect("upstream waiting");
            let mut response = RawResponse::default();
            assert!(!client.read_into(1, &mut response, 10).await);
            assert_eq!(response.body, b"first ten.");
        }

        client
            .send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
            .await;
        timeout(Duration::from_secs(5), upstream.closed)
            .await
            .unwrap_or_else(|_| panic!("mid-body {mid_body}: upstream still open after 5 s"))
            .expect("closed");
        // Nothing more comes on the cancelled stream; the connection lives.
        let after = client.frames_before_ping_ack(*b"still ok").await;
        assert!(
            after.iter().all(|f| f.id != 1),
            "after the cancel: {after:?}"
        );
        drop(release);
    }
}

#[tokio::test]
async fn a_request_head_over_the_limit_gets_431_unforwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"limits": {"max_header_bytes": 8192}}),
    );
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    assert!(client
        .settings
        .contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, 8192)));

    let big = "v".repeat(9000);
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            1,
            &request("GET", "/big", &[("x-big", &big)]),
        ))
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("431"), "{response:?}");
    assert!(response.body.is_empty());

    // With a body to follow: answered the same, and the stream is reset
    // (NO_ERROR) so the client sends no more of it.
    client
        .send(&frame(
            HEADERS,
            END_HEADERS,
            3,
            &request("POST", "/big", &[("x-big", &big)]),
        ))
        .await;
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("431"), "{response:?}");
    let reset = client.next().await.expect("RST_STREAM");
    assert_eq!((reset.kind, reset.id), (RST_STREAM, 3), "{reset:?}");
    assert_eq!(reset.error_code(), NO_ERROR);

    // Under the limit, in a HEADERS and a CONTINUATION: forwarded whole.
    let fits = "v".repeat(7000);
    let head = request("GET", "/fits", &[("x-big", &fits)]);
    let (first, second) = head.split_at(3000);
    let split = [
        frame(HEADERS, END_STREAM, 5, first),
        frame(CONTINUATION, END_HEADERS, 5, second),
    ];
    client.send(&split.concat()).await;
    let response = client.response(5).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = upstream.requests();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/fits"], "the large head was forwarded");
    assert_eq!(seen[0].headers["x-big"], fits.as_str());
}

#[tokio::test]
async fn response_trailers_reach_the_client() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    // `TE: trailers` says the client takes them.
    let request = http::Request::get("http://app.test/t")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered within 10 s")
        .expect("response");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(trailers["x-checksum"], "abc123");

    let seen = upstream.requests();
    assert_eq!(support::header_values(&seen[0].head, "te"), ["trailers"]);
}

#[tokio::test]
async fn a_head_response_has_the_length_and_no_data() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kept: Yes\r\n\r\n",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("HEAD", "/h", &[])))
        .await;
    let head = loop {
        let frame = client.next().await.expect("the response");
        if frame.id == 1 {
            break frame;
        }
    };
    assert_eq!(head.kind, HEADERS, "{head:?}");
    let fields = decode(&head.payload);
    assert!(
        fields.contains(&(":status".into(), "200".into())),
        "{fields:?}"
    );
    // Names in lower case, as HTTP/2 wants them (RFC 9113 §8.2.1).
    for field in [("content-length", "1000"), ("x-kept", "Yes")] {
        let field = (field.0.to_string(), field.1.to_string());
        assert!(fields.contains(&field), "{field:?} not in {fields:?}");
    }
    if head.flags & END_STREAM == 0 {
        let end = client.next().await.expect("the end of the stream");
        assert_eq!((end.kind, end.id, end.flags), (DATA, 1, END_STREAM));
        assert!(end.payload.is_empty(), "a HEAD response with a body");
    }
    let after = client.frames_before_ping_ack(*b"no body!").await;
    assert!(after.iter().all(|f| f.id != 1), "after the end: {after:?}");
    let seen = upstream.requests();
    assert!(seen[0].head.starts_with("HEAD /h HTTP/1.1\r\n"));
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_is_closed() {
    let upstream = support::upstream("app").await;
    let idle = Duration::from_millis(300);
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"timeouts": {"connect": "2s", "response_header": "5s", "idle": "300ms"}}),
    );
    // Never used: closed once the preface is idle that long.
    let started = Instant::now();
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let goaway = client.goaway().await;
    assert!(started.elapsed() >= idle, "after {:?}", started.elapsed());
    assert_eq!((goaway.error_code(), goaway.last_stream()), (NO_ERROR, 0));
    client.assert_closed().await;

    // Used: the timer runs from the end of the last stream.
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let started = Instant::now();
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/", &[])))
        .await;
    assert_eq!(client.response(1).await.body, b"app");
    let goaway = client.goaway().await;
    assert!(started.elapsed() >= idle, "after {:?}", started.elapsed());
    assert_eq!((goaway.error_code(), goaway.last_stream()), (NO_ERROR, 1));
    client.assert_closed().await;
}

#[tokio::test]
async fn an_open_stream_keeps_its_connection_from_idling() {
    let upstream = held_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate").await;
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"timeouts": {"connect": "2s", "response_header": "5s", "idle": "300ms"}}),
    );
    let mut busy = RawClient::connect(proxy.addr, &[]).await;
    busy.send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/slow", &[])))
        .await;
    timeout(Duration::from_secs(5), upstream.arrived)
        .await
        .expect("forwarded within 5 s")
        .expect("head");

    // A connection opened after the stream, idle from its start: its
    // GOAWAY says the idle timeout has passed for the busy one too.
    let mut clock = RawClient::connect(proxy.addr, &[]).await;
    assert_eq!(clock.goaway().await.error_code(), NO_ERROR);
    let early = busy.frames_before_ping_ack(*b"busy yet").await;
    assert!(early.iter().all(|f| f.kind != GOAWAY), "{early:?}");

    upstream.release.send(()).expect("upstream waiting");
    assert_eq!(busy.response(1).await.body, b"late");
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_the_open_stream_finish() {
    let upstream = held_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone").await;
    let support::TestProxy { addr, server, .. } =
        support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(addr, &[]).await;
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/slow", &[])))
        .await;
    timeout(Duration::from_secs(5), upstream.arrived)
        .await
        .expect("forwarded within 5 s")
        .expect("head");

    // What SIGTERM does in the binary; it returns once the drain is done.
    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    // First a GOAWAY that refuses no stream yet, and a PING (RFC 9113
    // §6.8): streams opened before the client reads them are still served.
    let first = client.goaway().await;
    assert_eq!(first.error_code(), NO_ERROR, "{first:?}");
    assert_eq!(first.last_stream(), 0x7fff_ffff, "{first:?}");
    let ping = client.next().await.expect("the shutdown's PING");
    assert_eq!((ping.kind, ping.flags & ACK), (PING, 0), "{ping:?}");
    // Its answer brings the final GOAWAY, with the last stream served.
    client.send(&frame(PING, ACK, 0, &ping.payload)).await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), NO_ERROR, "{goaway:?}");
    assert_eq!(goaway.last_stream(), 1, "{goaway:?}");

    // A stream opened after the GOAWAY is not served; the open one is.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "/late", &[])))
        .await;
    upstream.release.send(()).expect("upstream waiting");
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body, b"done");
    loop {
        match client.next().await {
            None => break,
            Some(frame) => assert_ne!(frame.id, 3, "the late stream got {frame:?}"),
        }
    }
    timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the server stopped within 5 s")
        .expect("shutdown");
}

/// An upstream that takes any number of connections and reads what comes,
/// but never answers.
async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move { read_to_eof(&mut stream).await });
        }
    });
    addr
}

/// A raw upstream that answers `GET /large` with its body of `pattern`,
/// written 16 KiB at a time, and anything else with `small`.
struct Paced {
    addr: SocketAddr,
    /// The bytes of the large body the upstream's socket took so far.
    written: watch::Receiver<usize>,
}

async fn paced_upstream(len: usize) -> Paced {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (written_tx, written) = watch::channel(0);
    let written_tx = Arc::new(written_tx);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let written_tx = Arc::clone(&written_tx);
            tokio::spawn(async move {
                let head = support::read_head(&mut stream).await;
                if !head.starts_with(b"GET /large ") {
                    let small = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall";
                    let _ = stream.write_all(small).await;
                    read_to_eof(&mut stream).await;
                    return;
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut at = 0;
                while at < len {
                    let piece = pattern_at(at, (len - at).min(16 * 1024));
                    if stream.write_all(&piece).await.is_err() {
                        return;
                    }
                    at += piece.len();
                    written_tx.send_replace(at);
                }
                read_to_eof(&mut stream).await;
            });
        }
    });
    Paced { addr, written }
}

/// An upstream that reads each request's head, then neither answers,
/// reads nor closes: a body sent to it stops once the sockets between are
/// full.
async fn unread_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                support::read_head(&mut stream).await;
                // Neither an answer nor a read: `stream` is held open
                // until the test's runtime ends.
                std::future::pending::<()>().await;
            });
        }
    });
    addr
}

/// A raw client's view of its upload on one stream: the windows it may
/// send in, what it sent, and whether the response's head came.
struct Uploader {
    id: u32,
    conn_window: i64,
    stream_window: i64,
    total: usize,
    answered: bool,
}

impl Uploader {
    /// An upload on stream `id` with `conn_window` bytes of connection
    /// window, its stream window as the server's SETTINGS say.
    fn new(id: u32, conn_window: i64, client: &RawClient) -> Uploader {
        let initial = client
            .settings
            .iter()
            .find(|(setting, _)| *setting == SETTINGS_INITIAL_WINDOW_SIZE)
            .map_or(65_535, |(_, value)| i64::from(*value));
        Uploader {
            id,
            conn_window,
            stream_window: initial,
            total: 0,
            answered: false,
        }
    }

    /// How much of `want` bytes may be sent now.
    fn room(&self, want: usize) -> usize {
        let room = self.conn_window.min(self.stream_window).max(0);
        want.min(room as usize)
    }

    fn sent(&mut self, n: usize) {
        self.conn_window -= n as i64;
        self.stream_window -= n as i64;
        self.total += n;
    }

    /// Takes in a frame from the server; whether it opened a window.
    fn see(&mut self, frame: &Frame) -> bool {
        let increment = || {
            let bytes = frame.payload[..4].try_into().expect("4 bytes");
            i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff)
        };
        match (frame.kind, frame.id) {
            (WINDOW_UPDATE, 0) => self.conn_window += increment(),
            (WINDOW_UPDATE, id) if id == self.id => self.stream_window += increment(),
            (HEADERS, id) if id == self.id => {
                self.answered = true;
                return false;
            }
            (RST_STREAM, id) if id == self.id => panic!("the upload was reset: {frame:?}"),
            (GOAWAY, _) => panic!("GOAWAY during the upload: {frame:?}"),
            _ => return false,
        }
        true
    }
}

/// Resets this process's peak resident set size (VmHWM) to its current
/// size (Linux 4.0 and later).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
}

/// This process's peak resident set size in KiB since the last reset.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

#[tokio::test]
async fn trailers_of_tens_of_thousands_of_fields_reset_only_their_stream() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    client
        .send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &request("POST", "/echo", &[]),
        ))
        .await;
    // 32 KiB of 0x90, each byte a field (static index 16, `accept-encoding:
    // gzip, deflate`): 32 768 fields, more than a HeaderMap can hold, in a
    // HEADERS (END_STREAM) and a CONTINUATION.
    client
        .send(&header_frames(1, true, &[0x90; 32 * 1024]))
        .await;
    let frames = client.frames_before_ping_ack(*b"survived").await;
    let answer = frames.iter().find(|f| f.id == 1).expect("stream 1 reset");
    assert_eq!(answer.kind, RST_STREAM, "{answer:?}");
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "{frames:?}");

    // The connection still serves.
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            3,
            &request("GET", "/after", &[]),
        ))
        .await;
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body, b"app");
}

#[tokio::test]
async fn an_hpack_bomb_gets_431_without_being_expanded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // A 4 000-byte value into the server's dynamic table (4 038 of its
    // 4 096 bytes), on a request that is served.
    let value = "b".repeat(4000);
    let mut first = request("GET", "/first", &[]);
    first.extend(indexed_literal("x-bomb", &value));
    client.send(&frame(HEADERS, HEAD_ONLY, 1, &first)).await;
    assert_eq!(client.response(1).await.field(":status"), Some("200"));

    // Blocks of 48 000 bytes (a HEADERS and two CONTINUATIONs, under the
    // 32 KiB limit and a frame), nearly all 0xbe, a reference to that
    // entry: each block would decode to some 190 MB of fields.
    let mut bomb = request("GET", "/bomb", &[]);
    bomb.resize(48_000, 0xbe);
    // The peak, not the current size: memory the decoder took and gave
    // back (a freed allocation this large goes back to the system) shows
    // only there. Other tests of this binary run beside this one, hence
    // the margin: 64 MiB against about 190 MB a block.
    reset_peak_rss();
    let before = support::vm_rss_kib();
    for i in 0..4 {
        let id = 3 + 2 * i;
        client.send(&header_frames(id, true, &bomb)).await;
        let response = client.response(id).await;
        assert_eq!(response.field(":status"), Some("431"), "{response:?}");
    }
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the peak RSS grew by {grown} KiB");

    let seen = upstream.requests();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/first"], "a bomb was forwarded");
    assert_eq!(seen[0].headers["x-bomb"], value.as_str());
}

#[tokio::test]
async fn a_large_download_goes_on_after_the_socket_fills() {
    const LEN: usize = 16 * 1024 * 1024;
    let upstream = paced_upstream(LEN).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    // A small receive buffer read a little at a time: the proxy outruns the
    // client, so its socket fills and its backlog waits, again and again.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(proxy.addr).await.expect("connect");
    let mut client = RawClient::start(stream, &[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;
    client.read_size = 512;

    // Both windows wide open: only the socket holds the proxy back.
    let open = frame(WINDOW_UPDATE, 0, 0, &(MAX_WINDOW - 65_535).to_be_bytes());
    let get = frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/large", &[]));
    client.send(&[open, get].concat()).await;
    let received = timeout(Duration::from_secs(120), async {
        let mut received = 0;
        loop {
            // Each frame waits at most 5 s: a stalled connection fails here.
            let frame = client.next().await.expect("the body before the close");
            tokio::task::yield_now().await;
            if frame.id != 1 {
                continue;
            }
            match frame.kind {
                HEADERS => {
                    let fields = decode(&frame.payload);
                    assert!(fields.contains(&(":status".into(), "200".into())));
                }
                DATA => {
                    let expected = pattern_at(received, frame.payload.len());
                    assert!(frame.payload == expected, "changed after {received} bytes");
                    received += frame.payload.len();
                }
                _ => panic!("stream 1 got {frame:?}"),
            }
            if frame.flags & END_STREAM != 0 {
                return received;
            }
        }
    })
    .await
    .expect("the download done within 120 s");
    assert_eq!(received, LEN);
}

#[tokio::test]
async fn a_small_response_is_not_held_behind_a_large_one() {
    const LEN: usize = 1024 * 1024;
    let mut upstream = paced_upstream(LEN).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    // Stream windows wide open and the connection's left at 65 535: the
    // client says when the responses may move, and how far.
    let mut client =
        RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)]).await;

    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            1,
            &request("GET", "/large", &[]),
        ))
        .await;
    let mut large = RawResponse::default();
    assert!(!client.read_into(1, &mut large, 65_535).await);
    assert_eq!(large.body.len(), 65_535);
    // With the window shut the proxy reads no more of the large body, which
    // gathers in its socket: more than the window opened below.
    timeout(
        Duration::from_secs(5),
        upstream.written.wait_for(|n| *n >= 256 * 1024),
    )
    .await
    .expect("the upstream wrote 256 KiB within 5 s")
    .expect("upstream running");

    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            3,
            &request("GET", "/small", &[]),
        ))
        .await;
    let head = loop {
        let frame = client.next().await.expect("the small response's head");
        assert_ne!(frame.kind, DATA, "DATA with the window shut: {frame:?}");
        if frame.id == 3 {
            break frame;
        }
    };
    assert_eq!(
        (head.kind, head.flags & END_STREAM),
        (HEADERS, 0),
        "{head:?}"
    );

    // Room for a frame of the large body (16 384 bytes at most) and the
    // small body, if the streams take turns.
    const OPENED: usize = 20_000;
    client
        .send(&frame(WINDOW_UPDATE, 0, 0, &(OPENED as u32).to_be_bytes()))
        .await;
    let mut frames = Vec::new();
    let mut data = 0;
    while data < OPENED {
        let frame = client.next().await.expect("DATA before the close");
        if frame.kind == DATA {
            data += frame.payload.len();
        }
        frames.push(frame);
    }
    frames.extend(client.frames_before_ping_ack(*b"in turns").await);
    let ends = |id: u32| {
        let end = |f: &&Frame| f.id == id && f.kind == DATA && f.flags & END_STREAM != 0;
        frames.iter().any(|f| end(&f))
    };
    assert!(
        ends(3) && !ends(1),
        "the small response did not end within the window while the large one went on"
    );
    let small: Vec<u8> = frames
        .iter()
        .filter(|f| f.id == 3 && f.kind == DATA)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(small, b"small");

    // The rest of the large body, whole.
    for frame in frames.iter().filter(|f| f.id == 1 && f.kind == DATA) {
        large.body.extend_from_slice(&frame.payload);
    }
    let rest = MAX_WINDOW - 65_535 - OPENED as u32;
    client
        .send(&frame(WINDOW_UPDATE, 0, 0, &rest.to_be_bytes()))
        .await;
    assert!(client.read_into(1, &mut large, usize::MAX).await);
    assert!(large.body == pattern(LEN), "the large body arrived changed");
}

#[tokio::test]
async fn a_client_resetting_every_stream_gets_enhance_your_calm() {
    let upstream = silent_upstream().await;
    let proxy = support::proxy_to("app", upstream, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // Each stream reset before its answer (the rapid-reset attack).
    let get = request("GET", "/never", &[]);
    let flood: Vec<u8> = (0..1000u32)
        .flat_map(|i| {
            let id = 2 * i + 1;
            let reset = frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes());
            [frame(HEADERS, HEAD_ONLY, id, &get), reset].concat()
        })
        .collect();
    client.send(&flood).await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    // A hundred such resets are let through; the flood's end is not.
    assert!((201..2001).contains(&goaway.last_stream()), "{goaway:?}");
    client.assert_closed().await;
}

#[tokio::test]
async fn a_flood_of_malformed_requests_ends_the_connection() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let upper = request("GET", "/upper", &[("X-Upper", "1")]);
    let heads = |n: u32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| frame(HEADERS, HEAD_ONLY, 2 * i + 1, &upper))
            .collect()
    };

    // Ten: each is reset, and the connection goes on.
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client.send(&heads(10)).await;
    let frames = client.frames_before_ping_ack(*b"ten only").await;
    let resets: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM)
        .map(|f| (f.id, f.error_code()))
        .collect();
    let expected: Vec<(u32, u32)> = (0..10).map(|i| (2 * i + 1, PROTOCOL_ERROR)).collect();
    assert_eq!(resets, expected);
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "{frames:?}");

    // 1 100: the connection ends.
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client.send(&heads(1100)).await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    client.assert_closed().await;
    assert!(upstream.requests().is_empty(), "something was forwarded");
}

#[tokio::test]
async fn a_stream_that_depends_on_itself_is_reset_unforwarded() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnext",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // The PRIORITY flag's fields: stream 1 depends on stream 1, weight 16.
    let mut payload = vec![0, 0, 0, 1, 15];
    payload.extend(request("GET", "/self", &[]));
    client
        .send(&frame(HEADERS, HEAD_ONLY | PRIORITY_FLAG, 1, &payload))
        .await;
    let frames = client.frames_before_ping_ack(*b"priority").await;
    let on_1: Vec<(u8, Vec<u8>)> = frames
        .iter()
        .filter(|f| f.id == 1)
        .map(|f| (f.kind, f.payload.clone()))
        .collect();
    let reset = (RST_STREAM, PROTOCOL_ERROR.to_be_bytes().to_vec());
    assert_eq!(on_1, [reset], "stream 1's frames");

    // The connection still serves. Had stream 1 been forwarded, its
    // upstream connection would have been accepted before this one.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "/next", &[])))
        .await;
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body, b"next");
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        1,
        "stream 1 was forwarded"
    );
    let heads: Vec<String> = upstream.requests().into_iter().map(|r| r.head).collect();
    assert!(
        matches!(&heads[..], [only] if only.starts_with("GET /next HTTP/1.1\r\n")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_path_hyper_takes_is_proxied_and_one_without_a_slash_is_reset() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // `|`, `[` and `]`: bytes the raw path does not send as they are, but
    // http's PathAndQuery takes (in the path and in the query).
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            1,
            &request("GET", "/a|b?q=[1]", &[]),
        ))
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    assert_eq!(response.body, b"ok");

    // Neither origin form nor `*` (RFC 9113 §8.3.1): malformed.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "foo", &[])))
        .await;
    let frames = client.frames_before_ping_ack(*b"no slash").await;
    let answer = frames.iter().find(|f| f.id == 3).expect("stream 3 reset");
    assert_eq!(answer.kind, RST_STREAM, "{answer:?}");
    assert_eq!(answer.error_code(), PROTOCOL_ERROR);

    let heads: Vec<String> = upstream.requests().into_iter().map(|r| r.head).collect();
    assert!(
        matches!(&heads[..], [only] if only.starts_with("GET /a|b?q=[1] HTTP/1.1\r\n")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_first_frame_other_than_settings_is_a_protocol_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut client = RawClient::new(stream);

    // The preface, then a PING where its SETTINGS belongs (RFC 9113 §3.4).
    client
        .send(&[PREFACE, &frame(PING, 0, 0, b"settings")].concat())
        .await;
    let mut before = Vec::new();
    let goaway = loop {
        let frame = client.next().await.expect("a GOAWAY before the close");
        if frame.kind == GOAWAY {
            break frame;
        }
        before.push(frame);
    };
    assert_eq!(goaway.error_code(), PROTOCOL_ERROR, "{goaway:?}");
    assert!(before.iter().all(|f| f.kind != PING), "{before:?}");
    client.assert_closed().await;
}

#[tokio::test]
async fn empty_continuation_frames_end_the_connection() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    let get = request("GET", "/", &[]);
    let mut flood = frame(HEADERS, END_STREAM, 1, &get);
    for _ in 0..20 {
        flood.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    client.send(&flood).await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.last_stream(), 0, "no stream was opened");
    client.assert_closed().await;
    assert!(upstream.requests().is_empty(), "something was forwarded");
}

#[tokio::test]
async fn a_header_block_left_unfinished_is_timed_out() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"timeouts": {"connect": "2s", "response_header": "5s", "request_header": "300ms"}}),
    );
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // Half a block, then nothing.
    let get = request("GET", "/", &[]);
    client
        .send(&frame(HEADERS, END_STREAM, 1, &get[..get.len() / 2]))
        .await;
    let goaway = client.goaway().await;
    assert_eq!(goaway.error_code(), PROTOCOL_ERROR, "{goaway:?}");
    assert_eq!(goaway.last_stream(), 0, "no stream was opened");
    client.assert_closed().await;
    assert!(upstream.requests().is_empty(), "something was forwarded");
}

#[tokio::test]
async fn trailers_without_end_stream_reset_only_their_stream() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    let post = [
        frame(HEADERS, END_HEADERS, 1, &request("POST", "/echo", &[])),
        frame(DATA, 0, 1, b"body"),
        // A trailer section that does not end the stream: malformed.
        frame(HEADERS, END_HEADERS, 1, &block(&[("x-trailer", "1")])),
    ];
    client.send(&post.concat()).await;
    let frames = client.frames_before_ping_ack(*b"trailers").await;
    let answer = frames.iter().find(|f| f.id == 1).expect("stream 1 reset");
    assert_eq!(answer.kind, RST_STREAM, "{answer:?}");
    assert_eq!(answer.error_code(), PROTOCOL_ERROR);
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "{frames:?}");

    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            3,
            &request("GET", "/after", &[]),
        ))
        .await;
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("200"));
    assert_eq!(response.body, b"app");
}

#[tokio::test]
async fn a_local_answer_has_a_date_and_a_content_length() {
    let upstream = support::upstream("app").await;
    let routes = json!([{
        "name": "other",
        "match": {"host": "other.test"},
        "split": {"baseline": "app", "weights": {"app": 10000}},
    }]);
    let proxy = support::proxy_to("app", upstream.addr, json!({"routes": routes}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // `app.test` has no route: the proxy answers 404 itself.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/", &[])))
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("404"), "{response:?}");
    let date = response.field("date").expect("a date");
    // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date:?}");
    let length = response.body.len().to_string();
    assert!(!response.body.is_empty());
    assert_eq!(response.field("content-length"), Some(length.as_str()));
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_reset_streams_unread_body_is_granted_back_at_once() {
    let unread = unread_upstream().await;
    let reader = support::upstream("app").await;
    let pool = |addr: SocketAddr| json!({"endpoints": [addr.to_string()]});
    let route = |name: &str, rule: serde_json::Value| {
        let split = json!({"baseline": name, "weights": {name: 10000}});
        json!({"name": name, "match": rule, "split": split})
    };
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stuck": pool(unread), "app": pool(reader.addr)},
        "routes": [route("stuck", json!({"path_prefix": "/stuck"})), route("app", json!({}))],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    }));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let mut first = Uploader::new(1, 65_535, &client);

    // Stream 1's body goes to the upstream that reads none of it (the
    // proxy's reader is hyper's upstream connection, which holds the body
    // while it waits to write), until the sockets between are
    // full and that reader takes no more: a window shuts and two PINGs
    // bring no WINDOW_UPDATE. As the proxy grants a window back once half
    // of it is taken, over half a window (512 KiB) is then in the stream's
    // unread data, and all the connection could grant without those bytes
    // is under half a window.
    client
        .send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &request("POST", "/stuck", &[]),
        ))
        .await;
    let piece = [b'u'; 16 * 1024];
    loop {
        let n = first.room(piece.len());
        if n > 0 {
            first.sent(n);
            client.send(&frame(DATA, 0, 1, &piece[..n])).await;
            continue;
        }
        let mut opened = false;
        for ping in [*b"shut? 1 ", *b"shut? 2 "] {
            for frame in client.frames_before_ping_ack(ping).await {
                opened |= first.see(&frame);
            }
            if opened {
                break;
            }
        }
        if !opened {
            break;
        }
        assert!(
            first.total < 256 * 1024 * 1024,
            "the upstream's sockets never filled"
        );
    }

    // The reset gives its unread bytes back at once, not when (or if) the
    // reader gets to them: a second upload, to an upstream that reads it,
    // goes through. Without them it would stall under half a window.
    client
        .send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
        .await;
    let mut second = Uploader::new(3, first.conn_window, &client);
    let body = pattern(900 * 1024);
    let length = body.len().to_string();
    let head = request("POST", "/upload", &[("content-length", &length)]);
    let room_for_answer = frame(WINDOW_UPDATE, 0, 3, &1000u32.to_be_bytes());
    client
        .send(&[frame(HEADERS, END_HEADERS, 3, &head), room_for_answer].concat())
        .await;
    while second.total < body.len() {
        let n = second.room(piece.len().min(body.len() - second.total));
        if n > 0 {
            let at = second.total;
            let flags = if at + n == body.len() { END_STREAM } else { 0 };
            second.sent(n);
            client.send(&frame(DATA, flags, 3, &body[at..at + n])).await;
            continue;
        }
        let frame = client
            .next_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|_| {
                let sent = second.total;
                panic!("the upload stalled after {sent} bytes: no window within 5 s")
            })
            .expect("the upload's windows before the close");
        second.see(&frame);
    }
    let response = client.response(3).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let seen = reader.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body == body, "the upload arrived changed");
}

/// A request body the client stops sending fails after the idle timeout:
/// the stream is answered 408 (nginx's `client_body_timeout`), whether
/// the body was being read ahead (short) or streamed upstream (over
/// 64 KiB), and the connection's other streams go on.
#[tokio::test]
async fn a_body_that_stops_coming_is_answered_408() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to(
        "app",
        upstream.addr,
        json!({"timeouts": {"connect": "2s", "response_header": "30s", "idle": "500ms"}}),
    );
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let cases: [(u32, usize); 2] = [(1, 10), (3, 70_000)];
    for (id, sent) in cases {
        let head = request("POST", "/echo", &[("content-length", "200000")]);
        client.send(&frame(HEADERS, END_HEADERS, id, &head)).await;
        // Within the server's windows (1 MiB), in frames of the default
        // 16 KiB size; the rest never comes.
        for part in pattern(sent).chunks(16_384) {
            client.send(&frame(DATA, 0, id, part)).await;
        }
        let response = timeout(Duration::from_secs(10), client.response(id))
            .await
            .expect("an answer within 10 s");
        let status = response.fields.iter().find(|(name, _)| name == ":status");
        assert_eq!(
            status.map(|(_, value)| value.as_str()),
            Some("408"),
            "stream {id}: {:?} {:?}",
            response.fields,
            String::from_utf8_lossy(&response.body)
        );
    }
    // The connection serves on.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 5, &request("GET", "/", &[])))
        .await;
    assert_eq!(client.response(5).await.body, b"app");
}

/// A body our own flow control holds back is not the client's delay:
/// stream 1's upload to a pool whose connect hangs (3 s) lies unread and
/// fills the connection's window (1 MiB), so stream 3's 10-byte body can
/// go only once stream 1 fails and its bytes are granted back. With an
/// idle timeout of 1 s, stream 3 is still served.
#[tokio::test]
async fn a_body_held_back_by_the_connection_window_is_not_timed_out() {
    let (_held, _filler, held_addr) = support::full_listener().await;
    let fine = support::upstream("fine").await;
    let route = |name: &str, m: serde_json::Value, to: &str| json!({"name": name, "match": m, "split": {"baseline": to, "weights": {to: 10000}}});
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"held": {"endpoints": [held_addr.to_string()]},
                  "fine": {"endpoints": [fine.addr.to_string()]}},
        "routes": [
            route("held", json!({"path_prefix": "/held"}), "held"),
            route("fine", json!({"path_prefix": "/"}), "fine"),
        ],
        "timeouts": {"drain": "1s", "connect": "3s", "response_header": "5s", "idle": "1s"},
    }));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    // The protocol's initial connection window, and the server's
    // WINDOW_UPDATEs as they come.
    let mut window: i64 = 65_535;
    let head = request("POST", "/held", &[("content-length", "2097152")]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    let piece = vec![b'a'; 16_384];
    for _ in 0..64 {
        client.send(&frame(DATA, 0, 1, &piece)).await;
    }
    window -= 64 * 16_384;
    let head = request("POST", "/echo", &[("content-length", "10")]);
    client.send(&frame(HEADERS, END_HEADERS, 3, &head)).await;
    let mut sent = false;
    let status = loop {
        let got = timeout(Duration::from_secs(10), client.next())
            .await
            .expect("stream 3 answered within 10 s")
            .expect("the connection stays open");
        match (got.kind, got.id) {
            (WINDOW_UPDATE, 0) => {
                let bytes: [u8; 4] = got.payload[..4].try_into().expect("4 bytes");
                window += i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
            }
            (HEADERS, 3) => break decode(&got.payload),
            (GOAWAY, _) => panic!("GOAWAY: {got:?}"),
            _ => {}
        }
        if !sent && window >= 10 {
            client
                .send(&frame(DATA, END_STREAM, 3, b"0123456789"))
                .await;
            sent = true;
        }
    };
    assert!(sent, "stream 3 was answered before its body could go");
    assert!(
        status.contains(&(":status".to_string(), "200".to_string())),
        "stream 3's client sent its body as soon as the window let it: {status:?}"
    );
}

/// A 204 or 304 carries no invented `content-length` (RFC 9110 §8.6),
/// whichever way its request went: with a body (the raw path, answered as
/// a `Response`) or with `te: trailers` (hyper's client).
#[tokio::test]
async fn a_204_or_304_gets_no_invented_content_length() {
    type Fields<'a> = &'a [(&'a str, &'a str)];
    let te: Fields = &[("te", "trailers")];
    let cases: [(&str, Fields, &[u8]); 3] = [
        ("POST", &[], b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", te, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (
            "GET",
            te,
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
        ),
    ];
    for (method, extra, reply) in cases {
        let upstream = support::scripted_upstream(reply, support::After::Close).await;
        let proxy = support::proxy_to("app", upstream.addr, json!({}));
        let mut client = RawClient::connect(proxy.addr, &[]).await;
        let with_body = method == "POST";
        let flags = if with_body { END_HEADERS } else { HEAD_ONLY };
        client
            .send(&frame(HEADERS, flags, 1, &request(method, "/r", extra)))
            .await;
        if with_body {
            client.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
        }
        let response = client.response(1).await;
        assert!(
            matches!(response.field(":status"), Some("204" | "304")),
            "{response:?}"
        );
        assert_eq!(
            response.field("content-length"),
            None,
            "{method} {extra:?}: {response:?}"
        );
    }
}

/// `TE` is a request's field: an upstream's, in its head or its
/// trailers, never reaches an HTTP/2 client (RFC 9113 §8.2.2: the client
/// would take the response as malformed); nor do framing fields in
/// trailers (RFC 9110 §6.5.1). The other trailers do.
#[tokio::test]
async fn te_and_framing_fields_from_the_upstream_never_reach_an_http2_client() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n\
        2\r\nok\r\n0\r\nX-Checksum: 1\r\nTE: gzip\r\nContent-Length: 9\r\n\r\n",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("GET", "/t", &[("te", "trailers")]);
    client.send(&frame(HEADERS, HEAD_ONLY, 1, &head)).await;
    let response = client.response(1).await;
    assert_eq!(response.body, b"ok");
    assert_eq!(response.field("te"), None, "{response:?}");
    let names: Vec<&str> = response.trailers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-checksum"], "{response:?}");
}

/// A request with `expect: 100-continue` is asked for its body with a
/// `100` once the body is wanted (RFC 9110 §10.1.1), as on HTTP/1.1; the
/// client then sends it and gets the answer.
#[tokio::test]
async fn expect_100_continue_gets_a_100_over_http2() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request(
        "POST",
        "/echo",
        &[("expect", "100-continue"), ("content-length", "5")],
    );
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    let interim = loop {
        let got = client.next().await.expect("the connection open");
        if got.id == 1 && got.kind != WINDOW_UPDATE {
            break got;
        }
    };
    assert_eq!(
        (interim.kind, interim.flags & END_STREAM),
        (HEADERS, 0),
        "{interim:?}"
    );
    assert_eq!(
        decode(&interim.payload),
        [(":status".to_string(), "100".to_string())]
    );
    client.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
}

/// What a [`counting_upstream`] made of its one request: the body bytes
/// it read after the head, and whether the proxy has closed the
/// connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counted {
    body: usize,
    closed: bool,
}

/// An upstream that counts the body bytes of its one request (after a
/// head with `content-length: len`), answers 200 once it has them all, and
/// reads on until the proxy closes.
async fn counting_upstream(len: usize) -> (SocketAddr, watch::Receiver<Counted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (count, counted) = watch::channel(Counted::default());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        support::read_head(&mut stream).await;
        let mut buf = [0u8; 16 * 1024];
        let mut body = 0;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            let before = body;
            body += n;
            count.send_replace(Counted {
                body,
                closed: false,
            });
            if before < len && body >= len {
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                let _ = stream.write_all(reply).await;
            }
        }
        count.send_replace(Counted { body, closed: true });
    });
    (addr, counted)
}

/// Sends stream 1, a POST of `len` bytes with their `content-length`, in
/// 16 KiB DATA frames and without END_STREAM, to a proxy in front of a
/// [`counting_upstream`].
async fn upload_without_end(
    len: usize,
) -> (support::TestProxy, RawClient, watch::Receiver<Counted>) {
    let (addr, counted) = counting_upstream(len).await;
    let proxy = support::proxy_to("app", addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let length = len.to_string();
    let head = request("POST", "/upload", &[("content-length", &length)]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    for piece in pattern(len).chunks(16_384) {
        client.send(&frame(DATA, 0, 1, piece)).await;
    }
    (proxy, client, counted)
}

/// RFC 9113 §8.1.1: a request whose DATA adds up to more than its
/// `content-length` is malformed, and the client may say so by sending
/// more only after the declared bytes. The bytes that complete the length
/// therefore wait for END_STREAM: the upstream never holds a whole request
/// that the client then made malformed (it answered such a request before,
/// while the client's stream was still open). Both sides of 64 KiB: a
/// body read whole before it goes, and one that streams.
#[tokio::test]
async fn the_bytes_that_complete_a_content_length_wait_for_end_stream() {
    for (len, last) in [(100_000, 100_000 % 16_384), (1_000, 1_000)] {
        let (proxy, mut client, mut counted) = upload_without_end(len).await;
        // What comes before the last frame goes on at once; the last frame
        // waits for the stream's end.
        if len > last {
            timeout(
                Duration::from_secs(10),
                counted.wait_for(|c| c.body >= len - last),
            )
            .await
            .expect("the first frames forwarded within 10 s")
            .expect("upstream running");
        }
        // One byte more, with END_STREAM: the request is malformed.
        client.send(&frame(DATA, END_STREAM, 1, b"!")).await;
        let answer = loop {
            let frame = client.next().await.expect("an answer to stream 1");
            if frame.id == 1 && matches!(frame.kind, HEADERS | RST_STREAM) {
                break frame;
            }
        };
        assert_eq!(answer.kind, RST_STREAM, "{len}: answered {answer:?}");
        let seen = counted.borrow().body;
        assert!(
            seen < len,
            "{len}: the upstream got a whole request ({seen} bytes)"
        );
        proxy.server.shutdown();
    }
}

/// The other side: the stream's end (an empty DATA frame, after the body)
/// lets the held bytes go, and the request is answered.
#[tokio::test]
async fn a_body_ended_by_an_empty_data_frame_is_forwarded_whole() {
    for len in [100_000, 1_000] {
        let (proxy, mut client, mut counted) = upload_without_end(len).await;
        client.send(&frame(DATA, END_STREAM, 1, &[])).await;
        let response = client.response(1).await;
        assert_eq!(response.field(":status"), Some("200"), "{len}");
        assert_eq!(counted.borrow_and_update().body, len);
        proxy.server.shutdown();
    }
}

/// A connection that began with HTTP/1.1 requests stays HTTP/1.1: an
/// HTTP/2 preface after them is a malformed request, answered with 400
/// and never forwarded (hyper's `http1_only` does not hold on a
/// connection that serves upgrades, so it was served as HTTP/2).
#[tokio::test]
async fn a_preface_after_http1_requests_gets_400() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .expect("write");
    let first = support::read_response(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(first.status, 200, "{}", first.head);
    stream
        .write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
        .await
        .expect("write");
    stream
        .write_all(&header_frames(1, true, &request("GET", "/second", &[])))
        .await
        .expect("write");
    let mut answer = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(paths, ["/first"]);
    proxy.server.shutdown();
}

/// Request trailers from an HTTP/2 client reach the upstream: the body
/// goes chunked, with a `Trailer` field naming them (they were dropped).
#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let (got, seen) = watch::channel(Vec::<u8>::new());
    let got = Arc::new(got);
    let addr = support::raw_upstream(move |mut stream| {
        let got = Arc::clone(&got);
        async move {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 4096];
            // The request ends with the last chunk and its trailer section.
            while !bytes.windows(5).any(|w| w == b"\r\n0\r\n") || !bytes.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(n @ 1..) => bytes.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            got.send_replace(bytes);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let proxy = support::proxy_to("app", addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("POST", "/upload", &[]);
    let trailers = block(&[("x-checksum", "abc123")]);
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 1, &head),
                frame(DATA, 0, 1, b"hello"),
                frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers),
            ]
            .concat(),
        )
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"), "{response:?}");
    let upstream = String::from_utf8_lossy(&seen.borrow()).to_lowercase();
    assert!(
        upstream.contains("transfer-encoding: chunked"),
        "{upstream}"
    );
    assert!(
        upstream.contains("\r\n0\r\nx-checksum: abc123\r\n"),
        "{upstream}"
    );
    proxy.server.shutdown();
}

// ---------------------------------------------------------------------
// From a review of the request path and flow control: a client gone
// before END_STREAM, late frames on closed streams (RFC 9113 §5.1), PRIORITY
// (§5.3.1, §6.3), and a window made negative by SETTINGS (§6.9.2).
// ---------------------------------------------------------------------

/// RFC 9113 §8.1: a request is complete only with END_STREAM; the server
/// holds back the bytes that complete a `content-length` until then, so
/// that the upstream never holds a whole request the client did not
/// finish (see `the_bytes_that_complete_a_content_length_wait_for_end_stream`
/// above). A client that goes away instead — its socket closed after the
/// last DATA frame, with no END_STREAM — must not have its upload
/// completed for it: the held-back chunk of a stream marked reset went to
/// the upstream.
#[tokio::test]
async fn a_client_gone_before_end_stream_never_completes_the_upload() {
    const LEN: usize = 100_000;
    const LAST: usize = LEN % 16_384;
    let (_proxy, mut client, mut counted) = upload_without_end(LEN).await;
    // Over 64 KiB, so the body streams: all but the last frame go on.
    timeout(
        Duration::from_secs(10),
        counted.wait_for(|c| c.body >= LEN - LAST),
    )
    .await
    .expect("the first frames forwarded within 10 s")
    .expect("upstream running");

    // The client goes away (a crash closes its socket the same way).
    client.stream.shutdown().await.expect("shutdown");
    let last = timeout(Duration::from_secs(10), counted.wait_for(|c| c.closed))
        .await
        .expect("the proxy ended the upstream exchange within 10 s")
        .expect("upstream running")
        .body;
    assert!(
        last < LEN,
        "the upstream got a whole request ({last} of {LEN} bytes) that the client never ended"
    );
}

/// Sends a PING and returns the frames before its ACK, or before the
/// close: a GOAWAY may end the connection first.
async fn frames_until_ack_or_close(client: &mut RawClient, data: [u8; 8]) -> Vec<Frame> {
    client.send(&frame(PING, 0, 0, &data)).await;
    let mut before = Vec::new();
    while let Some(frame) = client.next().await {
        if frame.kind == PING && frame.flags & ACK != 0 && frame.payload == data {
            break;
        }
        let goaway = frame.kind == GOAWAY;
        before.push(frame);
        if goaway {
            break;
        }
    }
    before
}

/// Reads frames until one on stream `id` or a GOAWAY, skipping the
/// connection's housekeeping (SETTINGS, WINDOW_UPDATE, PING).
async fn answer_on(client: &mut RawClient, id: u32) -> Option<Frame> {
    loop {
        let frame = client.next().await?;
        if frame.kind == GOAWAY || (frame.id == id && frame.kind != WINDOW_UPDATE) {
            return Some(frame);
        }
    }
}

/// The error code of stream 1's RST_STREAM or the connection's GOAWAY,
/// whichever comes first before the answer to a PING (`data`).
async fn error_on_stream_1(client: &mut RawClient, data: [u8; 8]) -> Option<u32> {
    let frames = frames_until_ack_or_close(client, data).await;
    frames
        .iter()
        .find(|f| (f.id == 1 && f.kind == RST_STREAM) || f.kind == GOAWAY)
        .map(Frame::error_code)
}

/// RFC 9113 §5.1.1: "The identifier of a newly established stream MUST be
/// numerically greater than all streams that the initiating endpoint has
/// opened ... An endpoint that receives an unexpected stream identifier
/// MUST respond with a connection error of type PROTOCOL_ERROR" (h2spec
/// 5.1.1 #2; nginx: "client sent HEADERS frame with incorrect
/// identifier"). Stream 3 was never opened, so a HEADERS on it after
/// stream 5 is no trailer section of a stream the server closed (it was
/// answered with RST_STREAM(STREAM_CLOSED), and the connection went on).
#[tokio::test]
async fn a_new_stream_id_lower_than_the_last_is_a_connection_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    client
        .send(&frame(HEADERS, HEAD_ONLY, 5, &request("GET", "/five", &[])))
        .await;
    assert_eq!(client.response(5).await.body, b"app");
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            3,
            &request("GET", "/three", &[]),
        ))
        .await;
    let answer = answer_on(&mut client, 3).await.expect("an answer");
    assert_eq!(answer.kind, GOAWAY, "stream 3 got {answer:?}");
    assert_eq!(answer.error_code(), PROTOCOL_ERROR, "{answer:?}");
    assert_eq!(answer.last_stream(), 5, "{answer:?}");
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/five"]);
}

/// RFC 9113 §5.1 (closed): "An endpoint that receives any frame other than
/// PRIORITY after receiving a RST_STREAM MUST treat that as a stream error
/// of type STREAM_CLOSED" (h2spec 5.1 #8). Here the client itself reset
/// stream 1, so it cannot have DATA in flight that it did not know was
/// unwanted (it was dropped without a word: the server could not tell a
/// stream the client reset from one it reset itself).
#[tokio::test]
async fn data_after_the_clients_own_reset_is_stream_closed() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    let head = request("POST", "/echo", &[]);
    client
        .send(
            &[
                frame(HEADERS, END_HEADERS, 1, &head),
                frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()),
                frame(DATA, END_STREAM, 1, b"after the reset"),
            ]
            .concat(),
        )
        .await;
    let code = error_on_stream_1(&mut client, *b"closed?!").await;
    assert_eq!(code, Some(STREAM_CLOSED), "DATA on a reset stream ignored");
}

/// RFC 9113 §5.3.1: "A stream cannot depend on itself. An endpoint MUST
/// treat this as a stream error of type PROTOCOL_ERROR" (h2spec 5.3.1 #2).
/// It was checked for HEADERS only, not for PRIORITY frames.
#[tokio::test]
async fn a_priority_frame_making_a_stream_depend_on_itself_resets_it() {
    let upstream = support::scripted_upstream(b"", support::After::Hang).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    // Stream 1 is open: its request waits on an upstream that never answers.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/open", &[])))
        .await;
    // Stream 1 depends on stream 1, weight 16.
    client.send(&frame(PRIORITY, 0, 1, &[0, 0, 0, 1, 15])).await;
    let code = error_on_stream_1(&mut client, *b"priority").await;
    assert_eq!(code, Some(PROTOCOL_ERROR), "self-dependency ignored");
}

/// RFC 9113 §6.3: "A PRIORITY frame with a length other than 5 octets MUST
/// be treated as a stream error of type FRAME_SIZE_ERROR" (h2spec 6.3 #2).
/// On an idle stream a RST_STREAM may not be sent (§6.4), so the error is
/// the connection's (§5.4.1 lets any stream error be one; nginx sends
/// GOAWAY(FRAME_SIZE_ERROR)). Such a frame was ignored.
#[tokio::test]
async fn a_priority_frame_of_the_wrong_length_is_a_frame_size_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;

    client.send(&frame(PRIORITY, 0, 1, &[0, 0, 0, 0])).await;
    let code = error_on_stream_1(&mut client, *b"length 4").await;
    assert_eq!(code, Some(FRAME_SIZE_ERROR), "a 4-byte PRIORITY ignored");
}

/// Regression (passes): RFC 9113 §6.9.2: a smaller
/// SETTINGS_INITIAL_WINDOW_SIZE can make an open stream's send window
/// negative, and the server then sends nothing until WINDOW_UPDATEs bring
/// it above zero: here -100, then +150 lets exactly 50 bytes go.
#[tokio::test]
async fn a_window_made_negative_by_settings_holds_the_response_back() {
    let body: Vec<u8> = (0..2000).map(|i| (i % 251) as u8).collect();
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec();
    reply.extend_from_slice(&body);
    let upstream = support::scripted_upstream(reply.leak(), support::After::Close).await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 100)]).await;

    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &request("GET", "/", &[])))
        .await;
    let mut response = RawResponse::default();
    assert!(!client.read_into(1, &mut response, 100).await);
    assert_eq!(response.body.len(), 100);

    let zero = [
        &SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes()[..],
        &0u32.to_be_bytes(),
    ]
    .concat();
    client.send(&frame(SETTINGS, 0, 0, &zero)).await;
    client
        .send(&frame(WINDOW_UPDATE, 0, 1, &150u32.to_be_bytes()))
        .await;
    // DATA the WINDOW_UPDATE lets go follows the PING's ACK of the same
    // read, so it is read first, then a PING shows nothing more comes.
    assert!(!client.read_into(1, &mut response, 150).await);
    assert_eq!(response.body.len(), 150, "-100 + 150 lets 50 bytes go");
    let frames = client.frames_before_ping_ack(*b"negative").await;
    assert!(
        frames.iter().all(|f| f.kind != DATA),
        "past the window: {frames:?}"
    );

    client
        .send(&frame(WINDOW_UPDATE, 0, 1, &2000u32.to_be_bytes()))
        .await;
    assert!(client.read_into(1, &mut response, usize::MAX).await);
    assert!(response.body == body, "the body arrived changed");
}

/// RFC 9113 §6.8: a GOAWAY shorter than its 8 fixed octets is a
/// connection error FRAME_SIZE_ERROR (it was taken as the client's end).
#[tokio::test]
async fn a_goaway_too_short_is_a_frame_size_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client.send(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0])).await;
    let code = error_on_stream_1(&mut client, *b"goaway-4").await;
    assert_eq!(code, Some(FRAME_SIZE_ERROR), "a 4-byte GOAWAY accepted");
}

/// RFC 9113 §5.1.1: even stream ids are the server's, and it opens none,
/// so a WINDOW_UPDATE or RST_STREAM on one is a frame on an idle stream:
/// a connection error PROTOCOL_ERROR (§6.9, §6.4), below the client's
/// last stream too (it was ignored there).
#[tokio::test]
async fn frames_on_an_even_stream_are_a_protocol_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    for (kind, payload) in [
        (WINDOW_UPDATE, 100u32.to_be_bytes()),
        (RST_STREAM, CANCEL.to_be_bytes()),
    ] {
        let mut client = RawClient::connect(proxy.addr, &[]).await;
        client
            .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "/", &[])))
            .await;
        assert_eq!(client.response(3).await.body, b"app");
        client.send(&frame(kind, 0, 2, &payload)).await;
        let code = error_on_stream_1(&mut client, *b"even-id!").await;
        assert_eq!(code, Some(PROTOCOL_ERROR), "frame {kind} on stream 2");
    }
}

/// RFC 9113 §6.2: padding that leaves less than the priority fields of a
/// HEADERS frame is a PROTOCOL_ERROR (the frame itself is long enough; it
/// was answered FRAME_SIZE_ERROR).
#[tokio::test]
async fn padding_over_a_headers_priority_is_a_protocol_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    // Pad length 6 of 7 octets after it: the 5 priority octets are eaten.
    let payload = [6, 0, 0, 0, 0, 16, 0, 0];
    let flags = HEAD_ONLY | PADDED | PRIORITY_FLAG;
    client.send(&frame(HEADERS, flags, 1, &payload)).await;
    let code = error_on_stream_1(&mut client, *b"pad-prio").await;
    assert_eq!(code, Some(PROTOCOL_ERROR));
}

/// RFC 9113 §5.1: frames that arrive after our own RST_STREAM are ignored,
/// as the client may have sent them before it saw the reset: here the
/// trailers of an upload the answer cut short (they got a RST_STREAM of
/// STREAM_CLOSED). The connection goes on.
#[tokio::test]
async fn trailers_after_our_reset_are_ignored() {
    let addr = support::raw_upstream(|mut stream| async move {
        support::read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let mut sink = [0u8; 1024];
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
    let proxy = support::proxy_to("app", addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let head = request("POST", "/upload", &[]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    // Over 64 KiB, so the body streams and the upstream's early answer
    // comes back while the stream is still open.
    for _ in 0..5 {
        client.send(&frame(DATA, 0, 1, &[b'x'; 16_384])).await;
    }
    assert_eq!(client.response(1).await.body, b"ok");
    client
        .send(&frame(HEADERS, HEAD_ONLY, 1, &block(&[("x-done", "1")])))
        .await;
    let frames = client.frames_before_ping_ack(*b"trailers").await;
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == GOAWAY || (f.kind == RST_STREAM && f.error_code() != NO_ERROR)),
        "trailers after our reset were answered: {frames:?}"
    );
}
