//! Review tests for the fast path's streamed request bodies (a
//! `Content-Length` body over the 64 KiB read-ahead, sent upstream as it
//! comes): bodies in odd pieces with a request pipelined in the same write
//! as their end, a request pipelined behind an early answer, `Expect:
//! 100-continue`, HTTP/1.0 without keep-alive, an upstream that closes or
//! resets mid-body, answers early and closes, answers 101, or answers
//! 100 and a final answer in one write; `max_body_bytes` at the edge, the
//! connection's request limit, a shutdown mid-upload, a stale pooled
//! connection, a refused endpoint, a half-close, the access log, and the
//! memory a paused upstream costs. Real loopback sockets. Three failed on
//! the first version: an interim and a final answer in one read, and a
//! `103` with more than 16 fields, stopped the upload (504); an answer to
//! an upload under way when a shutdown began did not say
//! `Connection: close`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::After;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, RwLock};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const HANG: Duration = Duration::from_secs(10);

/// Taken for writing by the one test that measures this process's RSS,
/// for reading by every test that moves large bodies: the proxy runs in
/// this process, so another test's buffers would count as its growth.
static RSS_GATE: RwLock<()> = RwLock::const_new(());

/// Byte `i` of a test body; 251 is prime, so a lost, repeated or
/// reordered piece shows.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn body(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern).collect()
}

/// A config to `addr` with the fast path on (or off), and `timeouts` and
/// `limits` merged into the defaults.
fn config(addr: SocketAddr, fast_path: bool, timeouts: Value, limits: Value) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["fast_path"] = json!(fast_path);
    if let (Some(all), Value::Object(more)) = (config["timeouts"].as_object_mut(), timeouts) {
        all.extend(more);
    }
    if !limits.is_null() {
        config["limits"] = limits;
    }
    config
}

fn proxy(addr: SocketAddr, fast_path: bool, timeouts: Value) -> support::TestProxy {
    support::proxy(&config(addr, fast_path, timeouts, Value::Null))
}

/// The fast path keeps a field name's case; hyper's path lowercases it.
fn by_fast_path(head: &str) -> bool {
    head.contains("\r\nX-Probe: ")
}

/// A POST head with a `len` byte body and `extra` fields (each ending in
/// CRLF).
fn post(version: &str, len: usize, extra: &str) -> String {
    format!("POST /up {version}\r\nHost: x\r\nX-Probe: 1\r\n{extra}Content-Length: {len}\r\n\r\n")
}

/// A POST head and its `len` byte body.
fn upload(len: usize) -> Vec<u8> {
    let mut bytes = post("HTTP/1.1", len, "").into_bytes();
    bytes.extend_from_slice(&body(len));
    bytes
}

async fn connect(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.into_split()
}

/// Reads until the proxy ends the connection: true once it has, false if
/// 10 s pass. What came is added to `got`.
async fn ends(read: &mut OwnedReadHalf, got: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(HANG, read.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads a `Content-Length` body of `len` off `stream`, checking each byte
/// against [`pattern`]: the count read (until the length or the close) and
/// whether every byte matched.
async fn read_pattern(stream: &mut TcpStream, len: u64) -> (u64, bool) {
    let (mut got, mut same) = (0u64, true);
    let mut chunk = vec![0u8; 64 * 1024];
    while got < len {
        let want = chunk.len().min((len - got) as usize);
        match stream.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                same &= chunk[..n].iter().zip(got..).all(|(b, i)| *b == pattern(i));
                got += n as u64;
            }
        }
    }
    (got, same)
}

fn content_length(head: &str) -> u64 {
    support::header_values(head, "content-length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An upstream that reads a request head and does `then` with the
/// connection (reading nothing more itself); each head is reported.
async fn head_then<F, Fut>(then: F) -> (SocketAddr, mpsc::UnboundedReceiver<String>)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (heads, got) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let (heads, then) = (heads.clone(), then.clone());
        async move {
            let head = String::from_utf8_lossy(&support::read_head(&mut stream).await).into_owned();
            let _ = heads.send(head.clone());
            then(stream, head).await;
        }
    })
    .await;
    (addr, got)
}

#[tokio::test]
async fn an_interim_and_a_final_answer_in_one_write_reach_the_client_as_the_final_one() {
    // The upstream refuses the body at once with "100 Continue" and a 413
    // in one write, and reads nothing more: the client must get the 413
    // (as it does when the 413 comes alone: `an_early_answer_ends_both_
    // connections`), not a 504 once the proxy's writes have stalled.
    let _gate = RSS_GATE.read().await;
    let (addr, _heads) = head_then(|mut stream, _| async move {
        let _ = stream
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\n\
                  HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!",
            )
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    // hyper's path first: it relays the 413 (and reads the rest of the
    // body); the fast path must too, closing the connection.
    for fast_path in [false, true] {
        let proxy = proxy(addr, fast_path, json!({"response_header": "3s"}));
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(32 << 20));
        let mut buf = Vec::new();
        let answer = support::read_response(&mut read, &mut buf, false).await;
        writer.abort();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (413, &b"big!"[..]),
            "fast_path {fast_path}: {}",
            answer.head
        );
        if fast_path {
            assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
        }
    }
}

#[tokio::test]
async fn a_body_in_odd_pieces_with_a_request_in_its_last_write_goes_whole_and_the_request_next() {
    // The head with 60 KiB, then the rest in pieces of 1 byte (across the
    // 64 KiB read-ahead's edge), of a prime count, and of 64 KiB; the last
    // write holds the body's last 3 bytes and the whole next request.
    let _gate = RSS_GATE.read().await;
    for (len, piece) in [(64 * 1024 + 1, 1usize), (300_007, 7_919), (200_000, 65_536)] {
        let what = format!("{len} bytes in {piece} byte pieces");
        let upstream = support::scripted_upstream(OK, After::Again).await;
        let proxy = proxy(upstream.addr, true, json!({}));
        let (mut read, mut write) = connect(proxy.addr).await;
        let head = post("HTTP/1.1", len, "");
        let whole = body(len);
        // The head with the first 60 KiB, then the pieces.
        let first = 60 * 1024;
        let mut start = head.into_bytes();
        start.extend_from_slice(&whole[..first]);
        write.write_all(&start).await.expect("write");
        let tail = len - 3;
        let mut at = first;
        while at < tail {
            let end = (at + piece).min(tail);
            write.write_all(&whole[at..end]).await.expect("write");
            at = end;
        }
        let mut last = whole[tail..].to_vec();
        last.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
        write.write_all(&last).await.expect("write");
        let mut buf = Vec::new();
        let first = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(first.status, 200, "{what}: {}", first.head);
        let second = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(second.status, 200, "{what}: the next request");
        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{what}");
        assert!(seen[0].body == whole, "{what}: the body differs");
        assert!(
            seen[1].head.starts_with("GET /next "),
            "{what}: {}",
            seen[1].head
        );
        assert!(
            by_fast_path(&seen[0].head) && by_fast_path(&seen[1].head),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_request_pipelined_behind_an_early_answered_body_is_never_sent_upstream() {
    // The upstream refuses the body after the head; the client has sent
    // the body and a GET behind it. The rest of the body is unread, so
    // the GET cannot be found: one answer, then the close.
    let _gate = RSS_GATE.read().await;
    let (addr, mut heads) = head_then(|mut stream, head| async move {
        let reply: &[u8] = match head.starts_with("POST") {
            true => b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!",
            false => OK,
        };
        let _ = stream.write_all(reply).await;
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = proxy(addr, true, json!({}));
    let (mut read, write) = connect(proxy.addr).await;
    let mut bytes = upload(16 << 20);
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(
        ends(&mut read, &mut buf).await,
        "the connection stayed open"
    );
    writer.abort();
    assert!(
        buf.is_empty(),
        "more after the 413: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let mut later = Vec::new();
    while let Ok(head) = heads.try_recv() {
        later.push(head);
    }
    assert_eq!(later.len(), 1, "the upstream got {later:?}");
}

#[tokio::test]
async fn a_large_upload_that_expects_100_continue_gets_it_and_goes_whole_without_the_expectation() {
    let _gate = RSS_GATE.read().await;
    for fast_path in [true, false] {
        let what = format!("fast_path {fast_path}");
        let upstream = support::scripted_upstream(OK, After::Again).await;
        let proxy = proxy(upstream.addr, fast_path, json!({}));
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        const LEN: usize = 1 << 20;
        let head = post("HTTP/1.1", LEN, "Expect: 100-continue\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        // The client waits (up to 5 s) for the go-ahead.
        let interim = tokio::time::timeout(Duration::from_secs(5), support::read_head(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{what}: no 100 Continue"));
        let interim = String::from_utf8_lossy(&interim).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100 "), "{what}: {interim:?}");
        stream.write_all(&body(LEN)).await.expect("write");
        let mut buf = Vec::new();
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1, "{what}");
        assert!(seen[0].body == body(LEN), "{what}: the body differs");
        assert!(
            support::header_values(&seen[0].head, "expect").is_empty(),
            "{what}: the expectation went upstream: {}",
            seen[0].head
        );
        assert_eq!(by_fast_path(&seen[0].head), fast_path, "{what}");
    }
}

#[tokio::test]
async fn an_http10_upload_without_keep_alive_is_answered_then_closed() {
    let _gate = RSS_GATE.read().await;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}));
    const LEN: usize = 1 << 20;
    let mut bytes = post("HTTP/1.0", LEN, "").into_bytes();
    bytes.extend_from_slice(&body(LEN));
    let (mut read, write) = connect(proxy.addr).await;
    let (_, writer) = support::write_in_task(write, bytes);
    let mut got = Vec::new();
    assert!(
        ends(&mut read, &mut got).await,
        "the connection stayed open"
    );
    writer.abort();
    let (head, rest) = support::split_head(&got);
    assert!(
        head.starts_with("HTTP/1.1 200 ") || head.starts_with("HTTP/1.0 200 "),
        "{head}"
    );
    assert_eq!(rest, b"ok", "{head}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body == body(LEN), "the body differs");
    assert!(
        seen[0].head.starts_with("POST /up HTTP/1.1\r\n"),
        "{}",
        seen[0].head
    );
    assert!(by_fast_path(&seen[0].head), "{}", seen[0].head);
}

#[tokio::test]
async fn an_upstream_that_closes_or_resets_mid_body_without_answering_gets_502() {
    let _gate = RSS_GATE.read().await;
    for reset in [false, true] {
        let what = match reset {
            true => "reset",
            false => "closed",
        };
        let (addr, _heads) = head_then(move |mut stream, _| async move {
            let (got, _) = read_pattern(&mut stream, 100 * 1024).await;
            assert_eq!(got, 100 * 1024);
            if reset {
                let _ = stream.set_zero_linger();
                drop(stream);
                return;
            }
            // A FIN, and the rest read and dropped: no reset to tell.
            let _ = stream.shutdown().await;
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let proxy = proxy(addr, true, json!({"response_header": "3s"}));
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(16 << 20));
        let mut buf = Vec::new();
        let answer = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(answer.status, 502, "{what}: {}", answer.head);
        assert_eq!(
            answer.header("connection"),
            ["close"],
            "{what}: {}",
            answer.head
        );
        assert!(
            ends(&mut read, &mut buf).await,
            "{what}: the connection stayed open"
        );
        writer.abort();
    }
}

#[tokio::test]
async fn an_early_answer_followed_by_the_upstreams_close_reaches_the_client() {
    let _gate = RSS_GATE.read().await;
    let (addr, _heads) = head_then(|mut stream, _| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            .await;
        let _ = stream.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let proxy = proxy(addr, true, json!({}));
    let (mut read, write) = connect(proxy.addr).await;
    let (_, writer) = support::write_in_task(write, upload(16 << 20));
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (403, &b"nope"[..]),
        "{}",
        answer.head
    );
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(
        ends(&mut read, &mut buf).await,
        "the connection stayed open"
    );
    writer.abort();
}

#[tokio::test]
async fn an_early_101_to_an_upload_is_not_relayed_as_a_switch() {
    // A 101 to a request that asked for no upgrade is not a valid answer
    // (RFC 9110 §15.2.2): the client must not see it, nor the upstream's
    // next bytes as a tunnel.
    let _gate = RSS_GATE.read().await;
    let (addr, _heads) = head_then(|mut stream, _| async move {
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
            )
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = proxy(addr, true, json!({"response_header": "3s"}));
    let (mut read, write) = connect(proxy.addr).await;
    let (_, writer) = support::write_in_task(write, upload(16 << 20));
    let mut got = Vec::new();
    assert!(
        ends(&mut read, &mut got).await,
        "the connection stayed open"
    );
    writer.abort();
    let (head, _) = support::split_head(&got);
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
}

#[tokio::test]
async fn max_body_bytes_holds_at_its_edge_for_a_streamed_body() {
    let _gate = RSS_GATE.read().await;
    const MAX: usize = 200_000;
    for (len, status) in [(MAX, 200), (MAX + 1, 413)] {
        let upstream = support::scripted_upstream(OK, After::Again).await;
        let config = config(
            upstream.addr,
            true,
            json!({}),
            json!({"max_body_bytes": MAX}),
        );
        let proxy = support::proxy(&config);
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(len));
        let mut buf = Vec::new();
        let answer = support::read_response(&mut read, &mut buf, false).await;
        writer.abort();
        assert_eq!(answer.status, status, "{len} bytes: {}", answer.head);
        let seen = upstream.requests();
        if status == 200 {
            assert_eq!(seen.len(), 1);
            assert!(seen[0].body == body(len), "the body differs");
            assert!(by_fast_path(&seen[0].head), "{}", seen[0].head);
        } else {
            assert!(seen.is_empty(), "{} requests went upstream", seen.len());
        }
    }
}

#[tokio::test]
async fn a_streamed_upload_as_the_connections_last_request_is_answered_and_closes() {
    let _gate = RSS_GATE.read().await;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let config = config(
        upstream.addr,
        true,
        json!({}),
        json!({"max_requests_per_connection": 2}),
    );
    let proxy = support::proxy(&config);
    let (mut read, mut write) = connect(proxy.addr).await;
    write
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let first = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(first.status, 200);
    assert!(first.header("connection").is_empty(), "{}", first.head);
    const LEN: usize = 1 << 20;
    let (_, writer) = support::write_in_task(write, upload(LEN));
    let second = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.header("connection"), ["close"], "{}", second.head);
    assert!(
        ends(&mut read, &mut buf).await,
        "the connection stayed open"
    );
    writer.abort();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].body == body(LEN), "the body differs");
}

/// Starts an 8 MiB upload, begins a shutdown once its head is upstream
/// (and the listener refuses), then lets the upstream read: the upload
/// must go whole, its answer come, the connection end and the shutdown
/// return. The answer, for the caller to judge further.
async fn shutdown_during_an_upload() -> support::RawResponse {
    let go = Arc::new(Notify::new());
    let (reports, mut reported) = mpsc::unbounded_channel();
    let waiting = go.clone();
    let (addr, mut heads) = head_then(move |mut stream, head| {
        let (go, reports) = (waiting.clone(), reports.clone());
        async move {
            go.notified().await;
            let len = content_length(&head);
            let read = read_pattern(&mut stream, len).await;
            let _ = reports.send(read);
            let _ = stream.write_all(OK).await;
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    let support::TestProxy {
        addr: proxy_addr,
        server,
        ..
    } = proxy(addr, true, json!({"drain": "10s"}));
    const LEN: usize = 8 << 20;
    let (mut read, write) = connect(proxy_addr).await;
    let (_, writer) = support::write_in_task(write, upload(LEN));
    tokio::time::timeout(HANG, heads.recv())
        .await
        .expect("the head went upstream")
        .expect("a head");
    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    // The shutdown has begun once the listener refuses.
    assert!(
        support::eventually(HANG, || std::net::TcpStream::connect(proxy_addr).is_err()).await,
        "still accepting after the shutdown began"
    );
    go.notify_one();
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(reported.recv().await, Some((LEN as u64, true)));
    assert!(
        ends(&mut read, &mut buf).await,
        "the connection stayed open"
    );
    assert!(buf.is_empty(), "more after the answer");
    writer.abort();
    tokio::time::timeout(HANG, stopped)
        .await
        .expect("the shutdown ended")
        .expect("joined");
    answer
}

#[tokio::test]
async fn a_shutdown_during_an_upload_lets_it_finish_and_then_ends_the_connection() {
    let _gate = RSS_GATE.read().await;
    shutdown_during_an_upload().await;
}

#[tokio::test]
async fn a_shutdown_during_an_upload_says_connection_close_in_its_answer() {
    let _gate = RSS_GATE.read().await;
    let answer = shutdown_during_an_upload().await;
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
}

#[tokio::test]
async fn a_256_mib_upload_through_a_paused_upstream_holds_little_memory() {
    let _gate = RSS_GATE.write().await;
    const LEN: u64 = 256 << 20;
    let go = Arc::new(Notify::new());
    let (reports, mut reported) = mpsc::unbounded_channel();
    let waiting = go.clone();
    let (addr, _heads) = head_then(move |mut stream, head| {
        let (go, reports) = (waiting.clone(), reports.clone());
        async move {
            go.notified().await;
            let read = read_pattern(&mut stream, content_length(&head)).await;
            let _ = reports.send(read);
            let _ = stream.write_all(OK).await;
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    let proxy = proxy(addr, true, json!({"response_header": "60s", "idle": "60s"}));
    let (mut read, mut write) = connect(proxy.addr).await;
    // The body is made as it goes, a piece of a whole number of pattern
    // periods at a time: the test itself must not hold 256 MiB.
    let piece: Vec<u8> = body(251 * 256);
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    let rss_before = support::vm_rss_kib();
    let writer = tokio::spawn(async move {
        let head = post("HTTP/1.1", LEN as usize, "");
        write.write_all(head.as_bytes()).await.expect("write");
        let mut left = LEN;
        while left > 0 {
            let n = left.min(piece.len() as u64) as usize;
            if write.write_all(&piece[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
            count.fetch_add(n as u64, Ordering::SeqCst);
        }
        std::future::pending::<()>().await;
    });
    let last = support::until_still(&written, Duration::from_secs(60)).await;
    let grown_kib = support::vm_rss_kib().saturating_sub(rss_before);
    assert!(last < LEN, "the whole body was taken from the client");
    assert!(
        grown_kib < 8 * 1024,
        "RSS grew by {grown_kib} KiB with {last} bytes written and the upstream paused"
    );
    go.notify_one();
    let (got, same) = tokio::time::timeout(Duration::from_secs(120), reported.recv())
        .await
        .expect("the upstream read on")
        .expect("a report");
    assert_eq!(got, LEN);
    assert!(same, "the body's bytes differ");
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    writer.abort();
}

#[tokio::test]
async fn an_upload_after_the_upstream_closed_its_pooled_connection_goes_whole_on_a_new_one() {
    let _gate = RSS_GATE.read().await;
    // One request per upstream connection, then its close: the pooled
    // connection is closed by the time the upload comes.
    let upstream = support::scripted_upstream(OK, After::Close).await;
    let config = config(upstream.addr, true, json!({}), Value::Null);
    let proxy = support::proxy_with_workers(&config, 1);
    let (mut read, mut write) = connect(proxy.addr).await;
    write
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    assert_eq!(
        support::read_response(&mut read, &mut buf, false)
            .await
            .status,
        200
    );
    assert!(
        support::eventually(HANG, || upstream.closed.load(Ordering::SeqCst) == 1).await,
        "the upstream did not close"
    );
    const LEN: usize = 2 << 20;
    let (_, writer) = support::write_in_task(write, upload(LEN));
    let answer = support::read_response(&mut read, &mut buf, false).await;
    writer.abort();
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].body == body(LEN),
        "the body differs ({} bytes)",
        seen[1].body.len()
    );
}

#[tokio::test]
async fn an_upload_to_a_refused_endpoint_moves_on_to_another_whole() {
    let _gate = RSS_GATE.read().await;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let (_socket, refusing) = support::refusing_addr();
    let mut config = config(upstream.addr, true, json!({}), Value::Null);
    config["pools"]["web"]["endpoints"] = json!([refusing.to_string(), upstream.addr.to_string()]);
    let proxy = support::proxy(&config);
    const LEN: usize = 1 << 20;
    for attempt in 0..4 {
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(LEN));
        let mut buf = Vec::new();
        let answer = support::read_response(&mut read, &mut buf, false).await;
        writer.abort();
        assert_eq!(answer.status, 200, "upload {attempt}: {}", answer.head);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.body == body(LEN)), "a body differs");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_body_is_served_as_after_a_small_one() {
    // The upstream answers only once the client has half-closed: the
    // proxy sees the FIN while the answer is awaited, for a small body and
    // a streamed one alike, and must treat both alike.
    let _gate = RSS_GATE.read().await;
    let mut outcomes = Vec::new();
    for len in [1000usize, 1 << 20] {
        let go = Arc::new(Notify::new());
        let waiting = go.clone();
        let (addr, _heads) = head_then(move |mut stream, head| {
            let go = waiting.clone();
            async move {
                let _ = read_pattern(&mut stream, content_length(&head)).await;
                go.notified().await;
                let _ = stream.write_all(OK).await;
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        })
        .await;
        let proxy = proxy(addr, true, json!({}));
        let (mut read, mut write) = connect(proxy.addr).await;
        write.write_all(&upload(len)).await.expect("write");
        write.shutdown().await.expect("half-close");
        go.notify_one();
        let mut got = Vec::new();
        assert!(
            ends(&mut read, &mut got).await,
            "{len} bytes: the connection stayed open"
        );
        outcomes.push(got.starts_with(b"HTTP/1.1 200 "));
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "answered (small, streamed): {outcomes:?}"
    );
}

#[tokio::test]
async fn the_access_log_says_how_each_streamed_upload_ended() {
    let _gate = RSS_GATE.read().await;
    let dir = support::scratch_dir("streamed-uploads-edges-log");
    let log = dir.join("access.log");
    // /whole is answered; /late (the client leaves before the answer),
    // /stall and /gone (the client stops or leaves mid-body) are not.
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (addr, _heads) = head_then(move |mut stream, head| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            if head.starts_with("POST /whole") {
                let _ = read_pattern(&mut stream, content_length(&head)).await;
                // Not pooled: each later request has a connection of its own.
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                return;
            }
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    let mut config = config(addr, true, json!({"idle": "1s"}), Value::Null);
    config["access_log"] = json!({"path": log.to_str().expect("UTF-8")});
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;
    const LEN: usize = 1 << 20;
    let request = |target: &str, sent: usize| {
        let mut bytes =
            format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n")
                .into_bytes();
        bytes.extend_from_slice(&body(sent));
        bytes
    };

    let mut whole = TcpStream::connect(proxy).await.expect("connect");
    whole
        .write_all(&request("/whole", LEN))
        .await
        .expect("write");
    let mut buf = Vec::new();
    assert_eq!(
        support::read_response(&mut whole, &mut buf, false)
            .await
            .status,
        200
    );

    let mut late = TcpStream::connect(proxy).await.expect("connect");
    late.write_all(&request("/late", LEN)).await.expect("write");
    let mut gone = TcpStream::connect(proxy).await.expect("connect");
    gone.write_all(&request("/gone", 200 * 1024))
        .await
        .expect("write");
    let mut stall = TcpStream::connect(proxy).await.expect("connect");
    stall
        .write_all(&request("/stall", 200 * 1024))
        .await
        .expect("write");
    // Each request's connection is upstream before its client leaves.
    assert!(
        support::eventually(HANG, || accepted.load(Ordering::SeqCst) == 4).await,
        "the requests did not all reach the upstream"
    );
    drop(late);
    drop(gone);
    let mut stalled = Vec::new();
    let (answer, closed) = support::read_until_close(&mut stall, HANG).await;
    stalled.extend_from_slice(&answer);
    assert!(
        closed && stalled.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&stalled)
    );

    let lines = support::wait_for_json_lines(&log, 4).await;
    let status = |target: &str| {
        let found: Vec<&Value> = lines.iter().filter(|l| l["target"] == target).collect();
        assert_eq!(found.len(), 1, "one line for {target}: {lines:#?}");
        found[0]["status"].clone()
    };
    assert_eq!(status("/whole"), 200);
    assert_eq!(status("/late"), 499);
    assert_eq!(status("/gone"), 400);
    assert_eq!(status("/stall"), 408);
}

#[tokio::test]
async fn an_interim_answer_with_many_fields_during_the_upload_is_dropped_and_the_body_goes_on() {
    // A 103 Early Hints with 20 `Link` fields (a page's preloads), sent
    // after the head; the upstream then reads the whole body and answers.
    let _gate = RSS_GATE.read().await;
    let (addr, _heads) = head_then(|mut stream, head| async move {
        let mut hints = String::from("HTTP/1.1 103 Early Hints\r\n");
        for i in 0..20 {
            hints.push_str(&format!("Link: </style{i}.css>; rel=preload; as=style\r\n"));
        }
        hints.push_str("\r\n");
        let _ = stream.write_all(hints.as_bytes()).await;
        let len = content_length(&head);
        if read_pattern(&mut stream, len).await == (len, true) {
            let _ = stream.write_all(OK).await;
        }
        std::future::pending::<()>().await;
    })
    .await;
    // hyper's path first, then the fast path.
    for fast_path in [false, true] {
        let proxy = proxy(addr, fast_path, json!({"response_header": "3s"}));
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(4 << 20));
        let mut buf = Vec::new();
        let answer = support::read_response(&mut read, &mut buf, false).await;
        writer.abort();
        assert_eq!(answer.status, 200, "fast_path {fast_path}: {}", answer.head);
    }
}

#[tokio::test]
async fn uploads_one_after_another_on_one_connection_reuse_the_upstream_connection() {
    let _gate = RSS_GATE.read().await;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy =
        support::proxy_with_workers(&config(upstream.addr, true, json!({}), Value::Null), 1);
    let (mut read, mut write) = connect(proxy.addr).await;
    let lens = [1 << 20, 64 * 1024 + 1, 3 << 20];
    let mut buf = Vec::new();
    for len in lens {
        write.write_all(&upload(len)).await.expect("write");
        let answer = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{len} bytes: {}", answer.head);
        assert!(answer.header("connection").is_empty(), "{}", answer.head);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), lens.len());
    for (request, len) in seen.iter().zip(lens) {
        assert!(request.body == body(len), "the {len} byte body differs");
    }
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test]
async fn an_early_answer_and_then_a_reset_still_reach_the_client() {
    // The upstream answers 403 after the head and closes with the body
    // unread, which makes its close a reset. The answer came first: it
    // must reach the client (a 502 would hide why the upload failed).
    let _gate = RSS_GATE.read().await;
    for round in 0..5 {
        let (addr, _heads) = head_then(|mut stream, _| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
                .await;
            let _ = stream.set_zero_linger();
        })
        .await;
        let proxy = proxy(addr, true, json!({}));
        let (mut read, write) = connect(proxy.addr).await;
        let (_, writer) = support::write_in_task(write, upload(16 << 20));
        let mut got = Vec::new();
        assert!(
            ends(&mut read, &mut got).await,
            "round {round}: the connection stayed open"
        );
        writer.abort();
        let answers = support::parse_responses(&got, &[false]);
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(403),
            "round {round}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test]
async fn an_upload_that_expects_100_continue_and_is_refused_early_gets_100_then_the_refusal() {
    let _gate = RSS_GATE.read().await;
    let (addr, _heads) = head_then(|mut stream, _| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = proxy(addr, true, json!({}));
    let (mut read, mut write) = connect(proxy.addr).await;
    const LEN: usize = 16 << 20;
    let head = post("HTTP/1.1", LEN, "Expect: 100-continue\r\n");
    write.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    // The proxy says 100 before it connects upstream; the client sends on.
    let interim = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    let (_, writer) = support::write_in_task(write, body(LEN));
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (413, &b"big!"[..]),
        "{}",
        answer.head
    );
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(
        ends(&mut read, &mut buf).await,
        "the connection stayed open"
    );
    writer.abort();
}
