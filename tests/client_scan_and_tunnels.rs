//! The client-side checks on hyper's path and upgraded connections,
//! through real sockets: every pipelined head is checked whatever came
//! before it (chunk sizes with leading zeros, upgrades answered without a
//! 101, a lower-case `connect`), a long but valid `Content-Length` is
//! taken, a refusal found while an answer is under way comes after that
//! answer, a body after `100 Continue` gets no head timeout, and a tunnel
//! ends after the idle timeout however its sides are stuck; a refused
//! head behind a body leaves the body to hyper, a broken chunk in the
//! body being read is answered, and a head finished after an answer is
//! still timed; a held refusal never replaces or splits an answer, nor
//! follows one that closes, and an answer nobody reads ends after the
//! idle timeout. Each test failed on 299060c, f0693dd or 9628135 (three
//! reviews' findings).

use crate::support;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let proxy = support::proxy(&hyper_only(support::pool_config(
        "slow",
        upstream.addr,
        json!({"timeouts": timeouts}),
    )));
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

/// The config with its route's fast path off: the requests below test
/// `ClientIo`, which serves hyper's path.
fn hyper_only(mut config: serde_json::Value) -> serde_json::Value {
    config["routes"][0]["fast_path"] = json!(false);
    config
}

/// Sends `head` (with `Expect: 100-continue`, so that the `100 Continue`
/// says the proxy has taken the request and is reading its body), and
/// reads the 100.
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
    let proxy = support::proxy(&hyper_only(support::pool_config(
        "web",
        upstream.addr,
        json!({}),
    )));
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
    let proxy = support::proxy(&hyper_only(support::pool_config(
        "web",
        upstream.addr,
        json!({}),
    )));
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

/// A raw upstream that answers every request with a 200 whose body
/// (`Content-Length`, 1 GiB of `x`) it writes until a write fails, then
/// reports on `ended`: the proxy has given the connection up.
async fn flooding_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ended, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                support::read_head(&mut stream).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
                let chunk = vec![b'x'; 64 * 1024];
                if stream.write_all(head).await.is_ok() {
                    while stream.write_all(&chunk).await.is_ok() {}
                }
                let _ = ended.send(());
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_held_refusal_does_not_take_the_place_of_a_slow_answer() {
    // The first request (sent to hyper by `TE: trailers`) waits on an
    // upstream slower than `idle`, which on its own is fine: in
    // `Phase::Request` the idle timer disarms itself and the answer comes
    // when the upstream's does (`response_header` is 10 s). An ambiguous
    // head pipelined behind it is held (`refusal`), and `poll_held` arms
    // `idle` for it; when that fires, `end_with` writes the 400 at once,
    // while the first answer is still being made, and the end-of-file
    // hyper reads then kills that answer. The client takes the 400 for the
    // answer to its first request. Expected: the 200, then the 400.
    let mut upstream = held_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms", "response_header": "10s"});
    let proxy = support::proxy_to("slow", upstream.addr, json!({"timeouts": timeouts}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        .await
        .expect("write first");
    let head = upstream
        .arrived
        .recv()
        .await
        .expect("the first request upstream");
    assert!(head.starts_with("GET /first "), "{head:?}");
    stream.write_all(AMBIGUOUS).await.expect("write second");
    // The scenario: the upstream takes six idle timeouts to answer.
    let mut buf = Vec::new();
    let early = tokio::time::timeout(
        Duration::from_secs(3),
        support::read_response(&mut stream, &mut buf, false),
    )
    .await;
    if let Ok(early) = early {
        panic!(
            "answered {} before the upstream answered the first request",
            early.status
        );
    }
    upstream.release.send(()).expect("upstream still there");
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!((first.status, &first.body[..]), (200, &b"first"[..]));
    let second = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(second.status, 400, "{:?}", second.head);
}

#[tokio::test]
async fn a_held_refusal_is_not_spliced_into_a_response_body() {
    // The client stops reading a large answer and pipelines an ambiguous
    // head; hyper reads it while the body streams (`is_answering`), so
    // the refusal is held. After `idle` with no progress the connection
    // may well end (nginx's send_timeout), but `poll_held` writes the 400
    // then, straight to the socket, ahead of the body bytes hyper still
    // holds: once the client reads again it finds `HTTP/1.1 400` in the
    // middle of the 200's body. Expected: body bytes only, then the close.
    let (addr, _ended) = flooding_upstream().await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms"});
    let proxy = support::proxy_to("big", addr, json!({"timeouts": timeouts}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        .await
        .expect("write first");
    // The answer has started: its head and some body.
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..20]);
    stream.write_all(AMBIGUOUS).await.expect("write second");
    // The scenario: the client reads nothing for four idle timeouts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rest, closed) = support::read_until_close(&mut stream, Duration::from_secs(10)).await;
    got.extend_from_slice(&rest);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let body = &got[head_end..];
    let foreign = body.iter().position(|&b| b != b'x');
    assert!(
        closed,
        "still open after the client read {} bytes",
        got.len()
    );
    if let Some(at) = foreign {
        let end = (at + 40).min(body.len());
        panic!(
            "after {at} body bytes of the 200: {:?}",
            String::from_utf8_lossy(&body[at..end])
        );
    }
}

#[tokio::test]
async fn a_chunked_body_the_scan_cannot_follow_is_refused_and_nothing_after_it_read() {
    // hyper's chunked decoder takes any byte in a trailer section but CR,
    // and httparse ends a field line at a bare LF, so `0\r\nX: a\n\r\n\r\n`
    // is a valid end to hyper; the scan does not take it, so it cannot
    // tell where the next head starts. It fails closed: hyper reads
    // nothing past that point, answers the request 400 (its body did not
    // end), and the ambiguous request behind it never goes upstream.
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut sent = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\nX: a\n\r\n\r\n"
        .to_vec();
    sent.extend_from_slice(AMBIGUOUS);
    stream.write_all(&sent).await.expect("write");
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    let responses = support::parse_responses(&out, &[]);
    assert_eq!(responses.len(), 1, "{text:?}");
    assert_eq!(responses[0].status, 400, "{text:?}");
    assert!(closed, "{text:?}");
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn a_refusal_is_not_appended_to_a_close_delimited_answer() {
    // An HTTP/1.0 request and an ambiguous one behind it, in one write.
    // The upstream answers chunked, so hyper answers the HTTP/1.0 client
    // with a body delimited by the close. The refusal is held (`from >
    // 0`); at hyper's flush after that body, `answered() >= heads` holds
    // and the 400 is written, as more bytes of that body: the client's
    // body ends in `HTTP/1.1 400 Bad Request ...`. hyper was closing the
    // connection anyway (HTTP/1.0 without keep-alive: nothing after the
    // first answer is served). Expected: the body is the upstream's.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
        support::After::Again,
    )
    .await;
    // hyper's path: the fast path serves HTTP/1.0 itself (tests/http10.rs).
    let proxy = support::proxy(&hyper_only(support::pool_config(
        "chunked",
        upstream.addr,
        json!({}),
    )));
    let (out, closed) = support::raw_exchange_until_close(
        proxy.addr,
        &[&b"GET /first HTTP/1.0\r\nHost: x\r\n\r\n"[..], AMBIGUOUS].concat(),
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "{text:?}");
    assert!(text.starts_with("HTTP/1.0 200"), "{text:?}");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "not the close-delimited answer this test is about: {text:?}"
    );
    assert!(text.ends_with("\r\n\r\nfirst"), "{text:?}");
}

#[tokio::test]
async fn a_stalled_answer_ends_after_idle_even_with_a_pipelined_head_buffered() {
    // "A response that makes no progress for `idle` also ends it, as
    // nginx's send_timeout does": the timer is only looked at in
    // `ClientIo::poll_read`, and hyper reads while it answers only to
    // detect an end of file, and only with nothing buffered
    // (`mid_message_detect_eof`). A client that pipelines the start of a
    // second head behind its request and then stops reading leaves bytes
    // in hyper's buffer: hyper never reads again, the timer is never
    // looked at, and the connection, the upstream's and the upstream's
    // writes stay stuck for good. Expected: the upstream's writes fail
    // once the proxy gives up after `idle`, as they do without the
    // pipelined bytes.
    let (addr, mut ended) = flooding_upstream().await;
    let timeouts = json!({"request_header": "300ms", "idle": "500ms"});
    let proxy = support::proxy_to("big", addr, json!({"timeouts": timeouts}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\nGET /next HTTP/1.1\r\n")
        .await
        .expect("write");
    let closed = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "a stalled answer is still being sent after 10 idle timeouts"
    );
}
