//! The client-side checks on hyper's path and upgraded connections,
//! through real sockets: every pipelined head is checked whatever came
//! before it (chunk sizes with leading zeros, upgrades answered without a
//! 101, a lower-case `connect`), a long but valid `Content-Length` is
//! taken, a refusal found while an answer is under way comes after that
//! answer, a body after `100 Continue` gets no head timeout, and a tunnel
//! ends after the idle timeout however its sides are stuck; a refused
//! head behind a body leaves the body to hyper, a broken chunk in the
//! body being read is answered, and a head finished after an answer is
//! still timed. Each test failed on 299060c or f0693dd (two reviews'
//! findings).

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The request targets a test upstream received, in order.
fn uris(upstream: &support::Upstream) -> Vec<String> {
    upstream.requests().iter().map(|r| r.uri.clone()).collect()
}

/// A request with both framings: it must never reach an upstream.
const AMBIGUOUS: &[u8] = b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\
    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// Sends `first` (a request the upstream answers with 200) and then
/// [`AMBIGUOUS`] on one connection: the second must get a 400 and the
/// connection closed, and never reach the upstream.
async fn refused_after(first: &[u8]) {
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(first).await.expect("write first");
    let mut buf = Vec::new();
    let answer = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{:?}", answer.head);
    stream.write_all(AMBIGUOUS).await.expect("write second");
    let (rest, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    buf.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let first_line = String::from_utf8_lossy(first);
    let target = first_line.split(' ').nth(1).unwrap_or_default();
    assert_eq!(uris(&upstream), [target], "the client read {text:?}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
}

#[tokio::test]
async fn a_chunk_size_with_leading_zeros_does_not_end_the_scan() {
    // RFC 9112 §7.1: chunk-size = 1*HEXDIG, so leading zeros are valid,
    // and hyper decodes any number of them; the scan must follow such a
    // body to the head after it.
    refused_after(
        b"POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            0000000000000005\r\nhello\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn an_upgrade_answered_without_101_does_not_end_the_scan() {
    // `Upgrade: h2c` is what curl sends with --http2 on an http:// URL;
    // the proxy does not pass it on, the upstream answers 200, and the
    // connection goes on as HTTP/1.1: later heads are checked as before.
    refused_after(
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_refused_websocket_upgrade_does_not_end_the_scan() {
    // The same with a WebSocket handshake the upstream declines (a plain
    // 200 here; a 403 or 426 is as common).
    refused_after(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_sixteen_digit_content_length_is_not_refused() {
    // A valid length with leading zeros (16 digits, the line's CR aside)
    // is taken, as hyper takes it. HTTP/1.0 goes to hyper, so ClientIo
    // scans it.
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        b"POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 0000000000000005\r\n\r\nhello",
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "{text:?}");
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text:?}"
    );
    assert!(text.ends_with("hello"), "{text:?}");
}

/// A raw upstream that answers the first request on each connection with
/// `101 Switching Protocols`, then (`flood`) writes until a write fails,
/// or sends nothing and never reads, keeping its side open. `ended` gets
/// a message once a write failed: the proxy has closed the connection.
async fn tunnel_upstream(
    flood: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ended, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            support::read_head(&mut stream).await;
            let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\n\r\n";
            if stream.write_all(reply).await.is_err() {
                continue;
            }
            if flood {
                let ended = ended.clone();
                tokio::spawn(async move {
                    let chunk = vec![b'x'; 64 * 1024];
                    while stream.write_all(&chunk).await.is_ok() {}
                    let _ = ended.send(());
                });
            } else {
                held.push(stream);
            }
        }
    });
    (addr, rx)
}

/// Sends a WebSocket handshake through `proxy` and reads the 101.
async fn open_tunnel(proxy: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut byte)
            .await
            .expect("read 101");
        assert_eq!(n, 1, "closed in the handshake: {head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test]
async fn a_tunnel_quiet_both_ways_ends_even_if_the_upstream_keeps_its_side_open() {
    // The commit: an upgraded connection "ends after `idle` with no bytes
    // either way". At `idle`, ClientIo only makes the client's side read
    // as end-of-file: `copy_bidirectional` half-closes the upstream and
    // waits on for the upstream's end-of-file. An upstream that does not
    // read (a push-only WebSocket server) never sends one, so the quiet
    // tunnel and both sockets stay open for good.
    let (addr, _ended) = tunnel_upstream(false).await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms"});
    let proxy = support::proxy(&support::pool_config(
        "ws",
        addr,
        json!({"timeouts": timeouts}),
    ));
    let mut stream = open_tunnel(proxy.addr).await;
    let (rest, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a tunnel quiet both ways for 10 idle timeouts is still open ({} bytes)",
        rest.len()
    );
}

#[tokio::test]
async fn a_tunnel_whose_client_stops_reading_ends_after_idle() {
    // No byte moves either way once the client stops reading: the
    // upstream's writes block, and so do the proxy's to the client. The
    // timer is only looked at in `poll_read`, so the proxy never closes
    // the tunnel, and the upstream's writes block for good instead of
    // failing once the proxy gives up after `idle`.
    let (addr, mut ended) = tunnel_upstream(true).await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms"});
    let proxy = support::proxy(&support::pool_config(
        "ws",
        addr,
        json!({"timeouts": timeouts}),
    ));
    let _stream = open_tunnel(proxy.addr).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "a stalled tunnel is still open after 10 idle timeouts"
    );
}

#[tokio::test]
async fn an_ambiguous_request_pipelined_during_a_slow_answer_does_not_take_its_place() {
    // The scan also runs while a request is served, as hyper reads then
    // (it looks for the client's EOF). A refusal found there must wait
    // for the answer under way: answers keep the requests' order (RFC
    // 9112 §9.3.2), the first request's 200, then the 400.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let head = support::read_head(&mut stream).await;
        let _ = arrived_tx.send(String::from_utf8_lossy(&head).into_owned());
        let _ = released.await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            .await;
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
    });
    let proxy = support::proxy_to("slow", addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    // `TE: trailers` sends it to hyper.
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        .await
        .expect("write first");
    let head = arrived.await.expect("the first request upstream");
    assert!(head.starts_with("GET /first "), "{head:?}");
    stream.write_all(AMBIGUOUS).await.expect("write second");
    let mut buf = Vec::new();
    // Nothing may come before the upstream answers the first request.
    let early = tokio::time::timeout(
        Duration::from_secs(2),
        support::read_response(&mut stream, &mut buf, false),
    )
    .await;
    if let Ok(early) = early {
        panic!(
            "answered before the upstream answered the first request: {:?}",
            early.head
        );
    }
    let _ = release.send(());
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!((first.status, &first.body[..]), (200, &b"first"[..]));
    let second = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(second.status, 400, "{:?}", second.head);
}

/// A raw upstream for one connection: reports each request head, then
/// answers it with `reply` once released.
struct HeldUpstream {
    addr: std::net::SocketAddr,
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    release: tokio::sync::mpsc::UnboundedSender<()>,
}

async fn held_upstream(reply: &'static [u8]) -> HeldUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (release, mut released) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        loop {
            let head = support::read_head(&mut stream).await;
            if head.is_empty() {
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let length: usize = support::header_values(&head, "content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            if tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body)
                .await
                .is_err()
            {
                return;
            }
            let _ = arrived_tx.send(head);
            if released.recv().await.is_none() || stream.write_all(reply).await.is_err() {
                return;
            }
        }
    });
    HeldUpstream {
        addr,
        arrived,
        release,
    }
}

#[tokio::test]
async fn an_expect_100_continue_request_is_not_cut_off_with_408_while_served() {
    // hyper's `100 Continue` is a write, so ClientIo takes the request as
    // answered (`Phase::Idle`); the body that follows starts a "head"
    // (`Phase::Head`, head timeout armed), and while the upstream takes
    // longer than the head timeout the client gets a 408 written into the
    // exchange. (From 40d5045's ClientIo; the new tunnel work left it.)
    let mut upstream = held_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let timeouts = json!({"request_header": "300ms", "response_header": "10s"});
    let proxy = support::proxy_to("slow", upstream.addr, json!({"timeouts": timeouts}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .expect("write head");
    let mut buf = Vec::new();
    let interim = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{:?}", interim.head);
    stream.write_all(b"hello").await.expect("write body");
    let head = upstream.arrived.recv().await.expect("the request upstream");
    assert!(head.starts_with("POST /upload "), "{head:?}");
    // Ten head timeouts: the answer may only come once the upstream's has.
    let early = tokio::time::timeout(
        Duration::from_secs(3),
        support::read_response(&mut stream, &mut buf, false),
    )
    .await;
    if let Ok(early) = early {
        panic!("answered before the upstream: {:?}", early.head);
    }
    upstream.release.send(()).expect("upstream still there");
    let answer = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn a_lower_case_connect_method_does_not_end_the_scan() {
    // Methods are case-sensitive (RFC 9110 §9.1): `connect` is an
    // extension method, not CONNECT, and hyper and the proxy serve it as
    // any other. (`TE: trailers` sends the request to hyper.)
    refused_after(b"connect /first HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n").await;
}

/// Reads one response within `within`, or None if none came by then.
async fn response_within(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Option<support::RawResponse> {
    tokio::time::timeout(within, support::read_response(stream, buf, false))
        .await
        .ok()
}

/// Sends `head` (with `Expect: 100-continue`, so hyper serves it and the
/// `100 Continue` says the proxy has taken the request and is reading
/// its body), and reads the 100.
async fn start_expecting(proxy: std::net::SocketAddr, head: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(head).await.expect("write head");
    let mut buf = Vec::new();
    let interim = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{:?}", interim.head);
    (stream, buf)
}

#[tokio::test]
async fn a_refused_head_behind_a_body_does_not_swallow_the_body() {
    // The body of a request being served and a bad pipelined head come in
    // one read. `is_answering` holds (the request started), so the refusal
    // is held and `buf.set_filled(before)` drops the whole read, the
    // body's 5 bytes with it. `read_ahead` waits for them for good, no
    // answer comes, so the refusal is never written either, and nothing
    // times the connection out (`Phase::Request`, the timer is off while
    // `refusal` is set). Expected: the echo, then the 400.
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let (mut stream, mut buf) = start_expecting(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    stream
        .write_all(&[&b"hello"[..], AMBIGUOUS].concat())
        .await
        .expect("write body and the next head");
    // Three seconds for an echo on loopback: a hang, not a slow answer.
    let first = response_within(&mut stream, &mut buf, Duration::from_secs(3)).await;
    let first = first.unwrap_or_else(|| {
        panic!(
            "no answer to the first request within 3 s (the upstream saw {} requests)",
            upstream.requests().len()
        )
    });
    assert_eq!((first.status, &first.body[..]), (200, &b"hello"[..]));
    let second = response_within(&mut stream, &mut buf, Duration::from_secs(3)).await;
    assert_eq!(second.map(|r| r.status), Some(400));
    assert!(upstream.requests().iter().all(|r| r.uri != "/smuggled"));
}

#[tokio::test]
async fn a_malformed_chunk_in_the_body_being_read_is_answered() {
    // A malformed chunk in the body of the request being served (not a
    // pipelined one) is found while `is_answering` holds: the refusal is
    // held "until the answer is out", and the bytes are dropped. But the
    // answer is waiting for that very body, so neither ever comes. On
    // 299060c hyper got the bytes and the body error made a 400.
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let (mut stream, _) = start_expecting(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    stream
        .write_all(b"zz\r\n")
        .await
        .expect("write a bad chunk");
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        closed && text.starts_with("HTTP/1.1 400"),
        "after 5 s: closed {closed}, read {text:?}"
    );
}

#[tokio::test]
async fn a_pipelined_head_finished_after_the_answer_still_times_out() {
    // The first read holds a whole request and the start of the next
    // head. Once the first is answered the phase is Idle, and the rest of
    // the second head is "not at a message start" (the scan is mid-head),
    // so it is taken for a body after `100 Continue`: `Phase::Request`, no
    // head timeout. In Request the idle timer, when it fires, disarms
    // itself, and nothing rearms it: a client that never ends the head
    // holds the connection for good (a slowloris past the head timeout).
    let upstream = support::upstream("web").await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms"});
    let proxy = support::proxy(&support::pool_config(
        "web",
        upstream.addr,
        json!({"timeouts": timeouts}),
    ));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    // `TE: trailers` sends the connection to hyper.
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\nGET /b HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(first.status, 200, "{:?}", first.head);
    stream
        .write_all(b"Host: x\r\n")
        .await
        .expect("write more head");
    // The scenario: ten head timeouts with the head unfinished.
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        closed,
        "a head left unfinished for 5 s (head timeout 300 ms, idle 500 ms) is still open: {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
}
