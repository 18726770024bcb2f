//! Request bodies over the fast path's 64 KiB read-ahead: sent upstream
//! as they come (they went to hyper's path, and the connection with them).
//! Whole bodies, back-pressure from a slow upstream, a client that stops
//! or leaves mid-body, an upstream that stops reading or answers early, an
//! interim answer during the upload, and a refused connect. Real loopback
//! sockets, raw upstreams that count what they read.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::After;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const HANG: Duration = Duration::from_secs(10);

/// Byte `i` of a test body.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn body(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern).collect()
}

/// A proxy to `addr` with the fast path on (or off), `timeouts` merged.
fn proxy(addr: SocketAddr, fast_path: bool, timeouts: Value) -> support::TestProxy {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["fast_path"] = json!(fast_path);
    if let (Some(all), Value::Object(more)) = (config["timeouts"].as_object_mut(), timeouts) {
        all.extend(more);
    }
    support::proxy(&config)
}

/// The fast path keeps a field name's case; hyper's path lowercases it.
fn by_fast_path(head: &str) -> bool {
    head.contains("\r\nX-Probe: ")
}

/// A POST head with a `len` byte body (an HTTP/1.0 one asks to keep its
/// connection).
fn post(version: &str, len: usize) -> String {
    let keep = match version {
        "HTTP/1.0" => "Connection: keep-alive\r\n",
        _ => "",
    };
    format!("POST /up {version}\r\nHost: x\r\nX-Probe: 1\r\n{keep}Content-Length: {len}\r\n\r\n")
}

/// Reads until the proxy ends the connection: true once it has, false if
/// 10 s pass.
async fn ends(read: &mut tokio::net::tcp::OwnedReadHalf) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(HANG, read.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A raw upstream that reads a request head, then (once `go` is
/// notified) reads its `Content-Length` body, counting the bytes and
/// checking each against [`pattern`], until the length or the close; it
/// reports the count (and whether every byte matched) and answers `OK`
/// if the body was whole.
async fn counting_upstream(
    go: Option<Arc<Notify>>,
) -> (SocketAddr, mpsc::UnboundedReceiver<(u64, bool)>) {
    let (report, reports) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let (report, go) = (report.clone(), go.clone());
        async move {
            let head = String::from_utf8_lossy(&support::read_head(&mut stream).await).into_owned();
            let len: u64 = support::header_values(&head, "content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if let Some(go) = go {
                go.notified().await;
            }
            let (mut got, mut same) = (0u64, true);
            let mut chunk = vec![0u8; 64 * 1024];
            while got < len {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        same &= chunk[..n].iter().zip(got..).all(|(b, i)| *b == pattern(i));
                        got += n as u64;
                    }
                }
            }
            let _ = report.send((got, same));
            if got == len {
                let _ = stream.write_all(OK).await;
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
    })
    .await;
    (addr, reports)
}

#[tokio::test]
async fn a_large_upload_goes_whole_on_the_fast_path_and_the_connection_serves_on() {
    for (version, len) in [
        ("HTTP/1.1", 64 * 1024 + 1),
        ("HTTP/1.1", 3 << 20),
        ("HTTP/1.0", 1 << 20),
    ] {
        let what = format!("{version}, {len} bytes");
        let upstream = support::scripted_upstream(OK, After::Again).await;
        let proxy = proxy(upstream.addr, true, json!({}));
        let stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let (mut read, write) = stream.into_split();
        // The body and a request pipelined behind it, in one stream of
        // writes.
        let mut bytes = post(version, len).into_bytes();
        bytes.extend_from_slice(&body(len));
        let next = format!("GET /next {version}\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
        bytes.extend_from_slice(next.as_bytes());
        let (_, writer) = support::write_in_task(write, bytes);
        let mut buf = Vec::new();
        let first = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"ok"[..]),
            "{what}"
        );
        let second = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(second.status, 200, "{what}: the request after the body");
        writer.abort();
        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{what}");
        assert!(seen[0].body == body(len), "{what}: the body differs");
        assert_eq!(
            support::header_values(&seen[0].head, "content-length"),
            [len.to_string()]
        );
        assert!(
            seen[0].head.starts_with("POST /up HTTP/1.1\r\n"),
            "{what}: {}",
            seen[0].head
        );
        assert!(by_fast_path(&seen[0].head), "{what}: {}", seen[0].head);
        assert!(
            by_fast_path(&seen[1].head),
            "{what}: the next request left the fast path"
        );
    }
}

#[tokio::test]
async fn an_upstream_that_reads_slowly_holds_the_upload_back() {
    // 96 MiB to an upstream that reads nothing until told: what the
    // client gets written meanwhile is bounded by the socket buffers on
    // the way (a few MiB each) and the proxy's own (64 KiB), not by the
    // body. Then every byte arrives, in order.
    const LEN: usize = 96 << 20;
    let go = Arc::new(Notify::new());
    let (addr, mut reports) = counting_upstream(Some(go.clone())).await;
    let proxy = proxy(addr, true, json!({"response_header": "30s", "idle": "30s"}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(LEN));
    let (written, writer) = support::write_in_task(write, bytes);
    let last = support::until_still(&written, Duration::from_secs(30)).await;
    assert!(
        last < 48 << 20,
        "{last} bytes of {LEN} taken while the upstream read nothing"
    );
    go.notify_one();
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200);
    let (got, same) = reports.recv().await.expect("a report");
    assert_eq!(got, LEN as u64);
    assert!(same, "the body's bytes differ");
    writer.abort();
}

#[tokio::test]
async fn a_client_that_stops_mid_body_gets_408_and_the_upstream_connection_ends() {
    let (addr, mut reports) = counting_upstream(None).await;
    let proxy = proxy(addr, true, json!({"idle": "1s"}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    const LEN: usize = 1 << 20;
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(200 * 1024));
    write.write_all(&bytes).await.expect("write");
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(ends(&mut read).await, "the connection stayed open");
    let (got, same) = tokio::time::timeout(HANG, reports.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("a report");
    assert!(
        same && got == 200 * 1024,
        "{got} bytes reached the upstream"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_ends_the_upstream_connection() {
    let (addr, mut reports) = counting_upstream(None).await;
    let proxy = proxy(addr, true, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut bytes = post("HTTP/1.1", 1 << 20).into_bytes();
    bytes.extend_from_slice(&body(300 * 1024));
    stream.write_all(&bytes).await.expect("write");
    // The upstream has it all before the client leaves.
    let upstream_has = bytes.len() - post("HTTP/1.1", 1 << 20).len();
    drop(stream);
    let (got, same) = tokio::time::timeout(HANG, reports.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("a report");
    assert!(same && got as usize <= upstream_has, "{got} bytes");
    // The proxy serves on.
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        HANG,
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn an_upstream_that_stops_reading_gets_504_and_the_client_connection_ends() {
    // The upstream reads the head and nothing more: the proxy's writes
    // stop, and after the response-header timeout with no progress the
    // client gets a 504 that closes its connection (the rest of its body
    // is unread). (hyper's path reads the rest and drops it, and the
    // connection serves on: also what RFC 9112 §9.3 allows.)
    let go = Arc::new(Notify::new());
    let (addr, _reports) = counting_upstream(Some(go)).await;
    let proxy = proxy(addr, true, json!({"response_header": "1s"}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    const LEN: usize = 64 << 20;
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(LEN));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 504, "{}", answer.head);
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(ends(&mut read).await, "the connection stayed open");
    writer.abort();
}

#[tokio::test]
async fn an_interim_answer_during_the_upload_is_dropped_and_the_body_goes_on() {
    let (heads, mut got) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let heads = heads.clone();
        async move {
            let head = String::from_utf8_lossy(&support::read_head(&mut stream).await).into_owned();
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let len: usize = support::header_values(&head, "content-length")[0]
                .parse()
                .expect("a length");
            let mut body = vec![0u8; len];
            let whole = stream.read_exact(&mut body).await.is_ok() && body == self::body(len);
            let _ = heads.send(whole);
            let _ = stream.write_all(OK).await;
        }
    })
    .await;
    let proxy = proxy(addr, true, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    const LEN: usize = 2 << 20;
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(LEN));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(
        got.recv().await,
        Some(true),
        "the body did not arrive whole"
    );
    writer.abort();
}

#[tokio::test]
async fn an_early_answer_ends_both_connections() {
    // The upstream answers 413 after the head and reads nothing more: the
    // answer reaches the client saying `connection: close`, the client's
    // connection ends, and the upstream's is not used again.
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = support::raw_upstream(move |mut stream| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let head = String::from_utf8_lossy(&support::read_head(&mut stream).await).into_owned();
            if head.starts_with("POST") {
                let _ = stream
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                    .await;
                std::future::pending::<()>().await;
            }
            let _ = stream.write_all(OK).await;
            std::future::pending::<()>().await;
        }
    })
    .await;
    let proxy = proxy(addr, true, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    const LEN: usize = 32 << 20;
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(LEN));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (413, &b"big!"[..]));
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    assert!(ends(&mut read).await, "the connection stayed open");
    writer.abort();
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        HANG,
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the upstream connection was used again"
    );
}

#[tokio::test]
async fn a_refused_connect_gets_502_and_the_client_connection_ends() {
    let (_socket, addr) = support::refusing_addr();
    let proxy = proxy(addr, true, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    const LEN: usize = 8 << 20;
    let mut bytes = post("HTTP/1.1", LEN).into_bytes();
    bytes.extend_from_slice(&body(LEN));
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 502, "{}", answer.head);
    assert_eq!(answer.header("connection"), ["close"], "{}", answer.head);
    // The body is never taken for a request: the connection ends.
    assert!(ends(&mut read).await, "the connection stayed open");
    writer.abort();
}

/// `data` as a chunked body of `piece`-byte chunks, with `extra` written
/// in before the last chunk (an extension line or a broken size).
fn chunked(data: &[u8], piece: usize, extra: &[u8], trailers: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
    out
}

const CHUNKED_POST: &str =
    "POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn a_large_chunked_upload_goes_on_chunked_on_the_fast_path_as_it_comes() {
    // Over the 64 KiB read-ahead a chunked body is not read whole (it went
    // to hyper's path): it goes upstream chunked, as it came — a chunk
    // extension and trailers that come after the first 64 KiB included —
    // and the request pipelined behind it is served on the same connection.
    const LEN: usize = 1 << 20;
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let proxy = proxy(upstream.addr, true, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let data = body(LEN);
    let wire = chunked(&data, 4000, b"5;ext=1\r\nhello\r\n", b"X-Sum: 7\r\n");
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&wire);
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    for what in ["the upload", "the request after it"] {
        let answer = support::read_response(&mut read, &mut buf, false).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.head);
    }
    writer.abort();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(by_fast_path(&seen[0].head), "{}", seen[0].head);
    assert!(
        by_fast_path(&seen[1].head),
        "the next request left the fast path"
    );
    assert_eq!(
        support::header_values(&seen[0].head, "transfer-encoding"),
        ["chunked"]
    );
    assert!(support::header_values(&seen[0].head, "content-length").is_empty());
    assert!(
        seen[0].body == wire,
        "the chunked body did not go on as it came"
    );
}

#[tokio::test]
async fn a_chunked_upload_that_breaks_its_framing_mid_way_gets_400_and_nothing_after_goes_up() {
    // 200 KiB of good chunks, then a size that is not hex: the client gets
    // 400 and its connection ends; the upstream got the good chunks only,
    // and its connection ends (the body never ended).
    let (addr, mut got) = support::draining_upstream().await;
    let proxy = proxy(addr, true, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let good = chunked(&body(200 * 1024), 4096, b"", b"");
    let good = &good[..good.len() - 5]; // without the last chunk
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(good);
    bytes.extend_from_slice(b"zz\r\nbroken\r\n0\r\n\r\n");
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(answer.body, b"malformed chunked request body\n");
    assert_eq!(answer.header("connection"), ["close"]);
    assert!(ends(&mut read).await, "the connection stayed open");
    writer.abort();
    let received = tokio::time::timeout(HANG, got.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("what it got");
    // The good chunks read with the bad size in one read are not sent
    // either: the scan refuses the read.
    assert!(
        !received.is_empty() && good.starts_with(&received),
        "{} bytes reached the upstream, not a part of the {} good ones",
        received.len(),
        good.len()
    );
}

#[tokio::test]
async fn a_chunked_upload_over_max_body_bytes_gets_413_mid_way() {
    let (addr, mut got) = support::draining_upstream().await;
    let mut config = support::pool_config(
        "web",
        addr,
        json!({"limits": {"max_body_bytes": 300 * 1024}}),
    );
    config["routes"][0]["fast_path"] = json!(true);
    let proxy = support::proxy(&config);
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let mut bytes = CHUNKED_POST.as_bytes().to_vec();
    bytes.extend_from_slice(&chunked(&body(1 << 20), 8192, b"", b""));
    let (_, writer) = support::write_in_task(write, bytes);
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(ends(&mut read).await, "the connection stayed open");
    writer.abort();
    let received = tokio::time::timeout(HANG, got.recv())
        .await
        .expect("the upstream's connection ended")
        .expect("what it got");
    assert!(
        received.len() <= 300 * 1024 + 16 * 1024,
        "{} bytes reached the upstream",
        received.len()
    );
}
