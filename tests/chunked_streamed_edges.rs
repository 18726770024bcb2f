//! Edges of a chunked request body streamed on the fast path past its
//! 64 KiB read-ahead: framing split across reads at and after the
//! boundary, the last chunk and trailers byte by byte, a pipelined request
//! in the same read as the last chunk, odd size lines, extensions early,
//! `Expect: 100-continue`, HTTP/1.0, an early answer, a client that stalls
//! or leaves, `max_body_bytes` exact edges and a huge chunk size. Real
//! loopback sockets; a relay upstream reports each byte it gets, so a
//! test can wait for the proxy to have forwarded a piece before it writes
//! the next one (each piece is then its own read at the proxy).

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::After;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const HANG: Duration = Duration::from_secs(10);
/// The fast path's read-ahead: a chunked body scanned past it streams.
const READ_AHEAD: usize = 64 * 1024;

const CHUNKED_POST: &str =
    "POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

fn body(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i % 251) as u8).collect()
}

/// `data` as chunks of `piece` bytes, without the last chunk.
fn chunks(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `data` as a whole chunked body of `piece`-byte chunks.
fn chunked(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = chunks(data, piece);
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The fast path keeps a field name's case; hyper's lowercases it.
fn by_fast_path(head: &str) -> bool {
    head.contains("\r\nX-Probe: ")
}

/// A proxy to `addr`, the fast path on or off, `extra` merged (`limits`),
/// `timeouts` merged into the timeouts.
fn proxy(addr: SocketAddr, fast_path: bool, extra: Value, timeouts: Value) -> support::TestProxy {
    let mut config = support::pool_config("web", addr, extra);
    config["routes"][0]["fast_path"] = json!(fast_path);
    if let (Some(all), Value::Object(more)) = (config["timeouts"].as_object_mut(), timeouts) {
        all.extend(more);
    }
    support::proxy(&config)
}

/// Whether the connection ends (EOF or reset) within `HANG`.
async fn ends(read: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(HANG, read.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Everything until EOF or reset (true) or `HANG` (false).
async fn read_to_close(read: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(HANG, read.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream that reads one request per connection (a chunked body),
/// reporting how many body bytes it has got so far; answers `OK` once the
/// body is whole, then closes.
struct Relay {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    got: watch::Receiver<usize>,
}

impl Relay {
    async fn start() -> Relay {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (count, got) = watch::channel(0usize);
        let count = Arc::new(count);
        let (h, b) = (heads.clone(), bodies.clone());
        let addr = support::raw_upstream(move |mut stream| {
            let (heads, bodies, count) = (h.clone(), b.clone(), count.clone());
            async move {
                let head = support::read_head(&mut stream).await;
                heads
                    .lock()
                    .expect("not poisoned")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let mut body = Vec::new();
                let mut buf = [0u8; 8192];
                while support::decode_chunked(&body).is_none() {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            body.extend_from_slice(&buf[..n]);
                            count.send_replace(body.len());
                        }
                    }
                }
                bodies.lock().expect("not poisoned").push(body);
                let _ = stream.write_all(OK).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        Relay {
            addr,
            heads,
            bodies,
            got,
        }
    }

    /// Waits until the upstream has got `n` body bytes in all.
    async fn reached(&mut self, n: usize) {
        let waited = tokio::time::timeout(HANG, self.got.wait_for(|got| *got >= n))
            .await
            .map(|r| r.is_ok());
        assert!(
            matches!(waited, Ok(true)),
            "the upstream got {} of {n} bytes",
            *self.got.borrow()
        );
    }
}

/// Sends `wire` as a chunked POST body: the head and the first `cut`
/// body bytes, then (each once the upstream has all before it) the rest in
/// `pieces`-sized writes (1 for byte by byte). Returns the client's answer
/// and what the upstream got.
async fn send_in_pieces(wire: &[u8], cut: usize, piece: usize) -> (u16, String, Vec<u8>) {
    let mut relay = Relay::start().await;
    let proxy = proxy(relay.addr, true, json!({}), json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut first = CHUNKED_POST.as_bytes().to_vec();
    first.extend_from_slice(&wire[..cut]);
    stream.write_all(&first).await.expect("write");
    let mut at = cut;
    relay.reached(at).await;
    for rest in wire[cut..].chunks(piece) {
        stream.write_all(rest).await.expect("write");
        at += rest.len();
        if at < wire.len() {
            relay.reached(at).await;
        }
    }
    let mut buf = Vec::new();
    let answer = support::read_response(&mut stream, &mut buf, false).await;
    let head = relay.heads.lock().expect("not poisoned")[0].clone();
    let got = relay.bodies.lock().expect("not poisoned")[0].clone();
    assert!(by_fast_path(&head), "not by the fast path: {head}");
    assert_eq!(
        support::header_values(&head, "transfer-encoding"),
        ["chunked"]
    );
    (answer.status, head, got)
}

/// A wire body whose byte `READ_AHEAD + 1` (the first read past the
/// read-ahead ends there) falls `into` bytes after the start of a chunk's
/// size line `size` (`into` may be past the line, into the data).
fn straddling(size_line: &str, into: usize) -> (Vec<u8>, usize) {
    let cut = READ_AHEAD + 1;
    // One chunk filling up to the straddling line.
    let lead_data = cut - into - "ffff\r\n".len() - 2;
    let mut wire = format!("{lead_data:x}\r\n").into_bytes();
    assert_eq!(wire.len(), 6, "a four-digit lead chunk");
    wire.extend_from_slice(&body(lead_data));
    wire.extend_from_slice(b"\r\n");
    assert_eq!(wire.len() + into, cut);
    let size =
        usize::from_str_radix(size_line.trim().trim_start_matches('0'), 16).expect("hex size line");
    wire.extend_from_slice(size_line.as_bytes());
    wire.extend_from_slice(&body(size));
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(&chunked(&body(70_000), 4096));
    (wire, cut)
}

#[tokio::test]
async fn a_size_line_split_at_the_read_ahead_boundary_goes_on_whole() {
    for into in [1, 2, 4, 5] {
        let (wire, cut) = straddling("1000\r\n", into);
        let (status, _, got) = send_in_pieces(&wire, cut, 1 << 20).await;
        assert_eq!(status, 200, "split {into} bytes into the size line");
        assert!(got == wire, "split {into}: the body changed on its way");
    }
}

#[tokio::test]
async fn a_split_inside_chunk_data_and_its_crlf_goes_on_whole() {
    // The boundary falls in the data, and on the CR of its CRLF.
    for into in [6 + 100, 6 + 0x1000, 6 + 0x1000 + 1] {
        let (wire, cut) = straddling("1000\r\n", into);
        let (status, _, got) = send_in_pieces(&wire, cut, 1 << 20).await;
        assert_eq!(status, 200, "split {into} bytes in");
        assert!(got == wire, "split {into}: the body changed on its way");
    }
}

#[tokio::test]
async fn the_rest_byte_by_byte_after_the_boundary_goes_on_whole() {
    // Past the boundary, every byte its own read: a size line, data, the
    // CRLFs and the last chunk.
    let mut wire = chunks(&body(READ_AHEAD + 10), 8000);
    let cut = wire.len();
    wire.extend_from_slice(b"1f\r\n");
    wire.extend_from_slice(&body(0x1f));
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _, got) = send_in_pieces(&wire, cut, 1).await;
    assert_eq!(status, 200);
    assert!(got == wire, "the body changed on its way");
}

#[tokio::test]
async fn trailers_byte_by_byte_after_the_boundary_go_on_as_they_came() {
    let mut wire = chunks(&body(100 * 1024), 4096);
    let cut = wire.len();
    wire.extend_from_slice(b"0\r\nX-Sum: 7\r\nX-Other:\tx y\r\n\r\n");
    let (status, _, got) = send_in_pieces(&wire, cut, 1).await;
    assert_eq!(status, 200);
    assert!(got == wire, "{:?}", String::from_utf8_lossy(&got[cut..]));
}

#[tokio::test]
async fn leading_zeros_and_whitespace_after_the_size_go_on_as_they_came() {
    let mut wire = chunks(&body(100 * 1024), 4096);
    let cut = wire.len();
    wire.extend_from_slice(b"0000010\r\n");
    wire.extend_from_slice(&body(16));
    wire.extend_from_slice(b"\r\n10 \t \r\n");
    wire.extend_from_slice(&body(16));
    wire.extend_from_slice(b"\r\n000\r\n\r\n");
    let (status, _, got) = send_in_pieces(&wire, cut, 1 << 20).await;
    assert_eq!(status, 200);
    assert!(got == wire, "{:?}", String::from_utf8_lossy(&got[cut..]));
}

/// Sends `good` (past the read-ahead) then `bad` on the fast path: the
/// answer's status, and what the upstream got before its connection ended.
async fn refused_mid_way(good: &[u8], bad: &[u8], limits: Value) -> (u16, Vec<u8>) {
    let (addr, mut got) = support::draining_upstream().await;
    let proxy = proxy(addr, true, limits, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(good);
    bytes.extend_from_slice(bad);
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(ends(&mut read).await, "the client's connection stayed open");
    writer.abort();
    let received = tokio::time::timeout(HANG, got.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("what it got");
    (answer.status, received)
}

#[tokio::test]
async fn whitespace_before_a_size_past_the_boundary_gets_400() {
    // hyper refuses it too (a size line starts with a digit).
    // 200 KiB, so the body streams before the bad bytes are read (read
    // with the first 64 KiB they send it to hyper's path, never upstream).
    let good = chunks(&body(200 * 1024), 4096);
    let (status, received) = refused_mid_way(&good, b" 10\r\n", json!({})).await;
    assert_eq!(status, 400);
    assert!(
        good.starts_with(&received),
        "more than the good chunks went up"
    );
}

#[tokio::test]
async fn a_bare_lf_after_the_size_past_the_boundary_gets_400() {
    // 200 KiB, so the body streams before the bad bytes are read (read
    // with the first 64 KiB they send it to hyper's path, never upstream).
    let good = chunks(&body(200 * 1024), 4096);
    let (status, received) = refused_mid_way(&good, b"10\n", json!({})).await;
    assert_eq!(status, 400);
    assert!(
        good.starts_with(&received),
        "more than the good chunks went up"
    );
}

#[tokio::test]
async fn a_huge_chunk_size_past_the_boundary_gets_413_at_the_limit() {
    // 2^60 - 1 declared; the data runs past max_body_bytes: 413 once the
    // data goes over, not a wait for the chunk's end.
    let good = chunks(&body(100 * 1024), 4096);
    let mut bad = b"fffffffffffffff\r\n".to_vec();
    bad.extend_from_slice(&body(400 * 1024));
    let limits = json!({"limits": {"max_body_bytes": 200 * 1024}});
    let (status, received) = refused_mid_way(&good, &bad, limits).await;
    assert_eq!(status, 413);
    assert!(
        received.len() <= 200 * 1024 + 64 * 1024,
        "{} bytes",
        received.len()
    );
}

#[tokio::test]
async fn a_chunk_size_over_sixty_bits_past_the_boundary_is_refused() {
    // 200 KiB, so the body streams before the bad bytes are read (read
    // with the first 64 KiB they send it to hyper's path, never upstream).
    let good = chunks(&body(200 * 1024), 4096);
    let (status, received) = refused_mid_way(&good, b"ffffffffffffffff\r\nabc", json!({})).await;
    assert!(
        status == 400 || status == 413,
        "a 16-digit size got {status}"
    );
    assert!(
        good.starts_with(&received),
        "more than the good chunks went up"
    );
}

/// The data of a request body as an upstream read it: decoded if chunked.
fn data_of(request: &support::RawRequest) -> Vec<u8> {
    match support::header_values(&request.head, "transfer-encoding").is_empty() {
        true => request.body.clone(),
        false => support::decode_chunked(&request.body)
            .map(|(d, _)| d)
            .unwrap_or_default(),
    }
}

/// A POST of `data` bytes in 4000-byte chunks on the fast path with
/// `max_body_bytes` = `max`: the status.
async fn post_against_limit(data: usize, max: usize) -> (u16, usize) {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(
        upstream.addr,
        true,
        json!({"limits": {"max_body_bytes": max}}),
        json!({}),
    );
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&chunked(&body(data), 4000));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    writer.abort();
    let whole = upstream
        .requests()
        .iter()
        .filter(|r| data_of(r).len() == data)
        .count();
    (answer.status, whole)
}

#[tokio::test]
async fn max_body_bytes_exactly_is_taken_and_one_over_is_413() {
    const MAX: usize = 100_000;
    assert_eq!(
        post_against_limit(MAX, MAX).await,
        (200, 1),
        "exactly the limit"
    );
    let (status, whole) = post_against_limit(MAX + 1, MAX).await;
    assert_eq!(status, 413, "one byte over");
    assert_eq!(whole, 0, "a body over the limit went up whole");
}

#[tokio::test]
async fn the_last_chunk_in_the_same_read_as_a_pipelined_request() {
    // The body streams; its last piece, the last chunk and the next
    // request come in one write after the upstream has the start.
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}), json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let wire = chunked(&body(200 * 1024), 5000);
    let tail = wire.len() - 5003;
    let mut first = CHUNKED_POST.as_bytes().to_vec();
    first.extend_from_slice(&wire[..tail]);
    stream.write_all(&first).await.expect("write");
    let mut second = wire[tail..].to_vec();
    second.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
    second.extend_from_slice(b"GET /third HTTP/1.1\r\nHost: x\r\nX-Probe: 3\r\n\r\n");
    stream.write_all(&second).await.expect("write");
    let mut buf = Vec::new();
    for what in ["the upload", "the next", "the third"] {
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].body == wire, "the body changed on its way");
    assert!(seen[1].head.starts_with("GET /next "), "{}", seen[1].head);
    assert!(by_fast_path(&seen[1].head), "{}", seen[1].head);
    assert!(seen[2].head.starts_with("GET /third "), "{}", seen[2].head);
}

#[tokio::test]
async fn a_pipelined_post_right_after_a_streamed_one() {
    // Two streamed chunked uploads back to back in one stream of bytes.
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}), json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let one = chunked(&body(150 * 1024), 7000);
    let two = chunked(&body(90 * 1024), 333);
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&one);
    bytes.extend_from_slice(CHUNKED_POST.as_bytes());
    bytes.extend_from_slice(&two);
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    for what in ["one", "two"] {
        let answer = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
    }
    writer.abort();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    // The second body may come whole in one read with the first one's
    // end: it then goes decoded, with a Content-Length.
    assert!(data_of(&seen[0]) == body(150 * 1024), "one changed");
    assert!(data_of(&seen[1]) == body(90 * 1024), "two changed");
}

#[tokio::test]
async fn an_extension_in_the_first_64_kib_goes_to_hyper_and_still_works() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}), json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let data = body(256 * 1024);
    let mut wire = b"10;name=value\r\n".to_vec();
    wire.extend_from_slice(&data[..16]);
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(&chunked(&data[16..], 4096));
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&wire);
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    for what in ["the upload", "the next"] {
        let answer = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
    }
    writer.abort();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(!by_fast_path(&seen[0].head), "{}", seen[0].head);
    let sent = match support::decode_chunked(&seen[0].body) {
        Some((decoded, _)) => decoded,
        None => seen[0].body.clone(),
    };
    assert!(sent == data, "the data changed on hyper's path");
}

#[tokio::test]
async fn expect_100_continue_with_a_large_chunked_body() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}), json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = Vec::new();
    let interim = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    let (mut read, write) = stream.into_split();
    let wire = chunked(&body(300 * 1024), 8192);
    let (_, writer) = support::write_in_task(write, wire.clone());
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(buf.is_empty(), "more after the answer: {buf:?}");
    writer.abort();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(by_fast_path(&seen[0].head), "{}", seen[0].head);
    assert!(seen[0].body == wire, "the body changed on its way");
}

#[tokio::test]
async fn http_1_0_with_a_large_chunked_body_is_refused_and_never_forwarded() {
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}), json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = b"POST /up HTTP/1.0\r\nHost: x\r\nX-Probe: 1\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    bytes.extend_from_slice(&chunked(&body(256 * 1024), 4096));
    let (_, writer) = support::write_in_task(write, bytes);
    let (out, closed) = read_to_close(&mut read).await;
    writer.abort();
    assert!(
        out.starts_with(b"HTTP/1.1 400 ") || out.starts_with(b"HTTP/1.0 400 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(closed, "the connection stayed open");
    assert_eq!(
        upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn an_early_answer_mid_stream_reaches_the_client_and_ends_both() {
    // The upstream answers once it has the head; the body is still coming.
    let (report, mut reports) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let report = report.clone();
        async move {
            let _ = support::read_head(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                .await;
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all).await;
            let _ = report.send(all.len());
        }
    })
    .await;
    let proxy = proxy(addr, true, json!({}), json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    // The body never ends: the client keeps its write side open.
    bytes.extend_from_slice(&chunks(&body(200 * 1024), 4096));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 403, "{}", answer.head);
    assert_eq!(answer.body, b"no");
    assert!(ends(&mut read).await, "the client's connection stayed open");
    writer.abort();
    tokio::time::timeout(HANG, reports.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("a report");
}

#[tokio::test]
async fn a_client_that_stalls_mid_stream_gets_408_and_the_upstream_is_dropped() {
    let (addr, mut got) = support::draining_upstream().await;
    let proxy = proxy(addr, true, json!({}), json!({"idle": "1s"}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let good = chunks(&body(100 * 1024), 4096);
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&good);
    bytes.extend_from_slice(b"100\r\nabc");
    stream.write_all(&bytes).await.expect("write");
    let (out, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the connection stayed open");
    assert!(
        out.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let received = tokio::time::timeout(HANG, got.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("what it got");
    assert!(received.len() <= good.len() + 8, "{} bytes", received.len());
    assert!(received.len() > READ_AHEAD, "the body did not stream");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_ends_the_upstream_connection() {
    let (addr, mut got) = support::draining_upstream().await;
    let proxy = proxy(addr, true, json!({}), json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let good = chunks(&body(100 * 1024), 4096);
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&good);
    bytes.extend_from_slice(b"100\r\nabc");
    stream.write_all(&bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let received = tokio::time::timeout(HANG, got.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("what it got");
    assert!(
        support::decode_chunked(&received).is_none(),
        "an unfinished body reached the upstream as a whole one"
    );
    let (_, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the client's connection stayed open");
}
