//! HTTP/1.0 clients, through real sockets, on the fast path and on
//! hyper's (a route whose `fast_path` is off). ApacheBench (`ab`) and
//! nginx's `proxy_pass` (its default `proxy_http_version` is 1.0) speak
//! HTTP/1.0. A connection stays open only when the client asks with
//! `Connection: keep-alive`, and then the answer says so; the request goes
//! upstream as HTTP/1.1 (RFC 9112 §2.3); an answer of no known length
//! (chunked, or ended by the upstream's close) reaches the client decoded
//! and ends with its connection, since HTTP/1.0 has no chunked framing.
//! The fast path passes a field's name on as the client wrote it and
//! hyper's path lowercases it: that tells which path served each request.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["match"] = json!({"path_prefix": "/app"});
    config["routes"][0]["fast_path"] = json!(fast_path);
    config
}

/// An upstream that answers every request with `reply`, a proxy to it
/// (the route's fast path on or off), and a connection to the proxy.
async fn start(
    reply: &'static [u8],
    fast_path: bool,
) -> (support::Scripted, support::TestProxy, TcpStream) {
    let upstream = support::scripted_upstream(reply, support::After::Again).await;
    let proxy = support::proxy(&config(upstream.addr, fast_path));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    (upstream, proxy, stream)
}

/// Whether the upstream saw the client's `X-Probe` as written: the fast
/// path served it.
fn fast(request: &support::RawRequest) -> bool {
    request.head.contains("\r\nX-Probe: ")
}

/// Whether an answer says its connection stays (to an HTTP/1.0 client,
/// whose default is to close).
fn says_keep_alive(answer: &support::RawResponse) -> bool {
    let values = answer.header("connection");
    values.iter().any(|v| v.eq_ignore_ascii_case("keep-alive"))
}

/// The request line an upstream received.
fn request_line(request: &support::RawRequest) -> &str {
    request.head.split("\r\n").next().unwrap_or_default()
}

const KEEP_ALIVE: &[u8] =
    b"GET /app/1 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Probe: 1\r\n\r\n";

#[tokio::test]
async fn an_http10_client_that_asks_for_keep_alive_is_served_on_one_connection() {
    for fast_path in [true, false] {
        let (upstream, _proxy, mut stream) = start(OK, fast_path).await;
        let mut buf = Vec::new();
        stream.write_all(KEEP_ALIVE).await.expect("write");
        let first = support::read_response(&mut stream, &mut buf, false).await;
        // Two more, pipelined in one write; `Keep-Alive` spelled as ab does.
        stream
            .write_all(
                b"GET /app/2 HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\nX-Probe: 2\r\n\r\n\
                  GET /app/3 HTTP/1.0\r\nConnection: keep-alive\r\nHost: x\r\nX-Probe: 3\r\n\r\n",
            )
            .await
            .expect("write");
        let second = support::read_response(&mut stream, &mut buf, false).await;
        let third = support::read_response(&mut stream, &mut buf, false).await;
        for answer in [&first, &second, &third] {
            assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
            assert_eq!(answer.body, b"ok", "fast path {fast_path}");
            // The client's default is to close: the answer must say it stays.
            assert!(says_keep_alive(answer), "fast path {fast_path}: {answer:?}");
            assert_eq!(
                answer.header("content-length"),
                ["2"],
                "fast path {fast_path}"
            );
        }

        let seen = upstream.requests();
        assert_eq!(seen.len(), 3, "fast path {fast_path}: {seen:?}");
        for (i, request) in seen.iter().enumerate() {
            assert_eq!(
                request_line(request),
                format!("GET /app/{} HTTP/1.1", i + 1),
                "fast path {fast_path}"
            );
            // The client's keep-alive is hop-by-hop: it never goes on.
            assert!(
                support::header_values(&request.head, "connection")
                    .iter()
                    .all(|v| !v.eq_ignore_ascii_case("keep-alive")),
                "fast path {fast_path}: {}",
                request.head
            );
            assert_eq!(support::header_values(&request.head, "host"), ["x"]);
            assert_eq!(fast(request), fast_path, "request {i}: {}", request.head);
        }
        // One upstream connection served all three.
        assert_eq!(
            upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}

#[tokio::test]
async fn without_keep_alive_an_http10_connection_ends_after_its_answer() {
    for fast_path in [true, false] {
        let upstream = support::scripted_upstream(OK, support::After::Again).await;
        let proxy = support::proxy(&config(upstream.addr, fast_path));
        for request in [
            &b"GET /app HTTP/1.0\r\nHost: x\r\nX-Probe: 1\r\n\r\n"[..],
            b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: close\r\nX-Probe: 1\r\n\r\n",
            // close wins over keep-alive
            b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\nX-Probe: 1\r\n\r\n",
        ] {
            let (bytes, closed) =
                support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(5))
                    .await;
            assert!(closed, "fast path {fast_path}: the connection stayed open");
            let answers = support::parse_responses(&bytes, &[false]);
            assert_eq!(answers.len(), 1, "fast path {fast_path}: {bytes:?}");
            assert_eq!(answers[0].status, 200);
            assert_eq!(answers[0].body, b"ok");
            assert!(
                answers[0]
                    .header("connection")
                    .iter()
                    .all(|v| !v.eq_ignore_ascii_case("keep-alive")),
                "fast path {fast_path}: {:?}",
                answers[0].head
            );
        }
        let seen = upstream.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
        assert!(seen.iter().all(|r| request_line(r) == "GET /app HTTP/1.1"));
    }
}

/// An upstream that answers each request with a chunked body of `pieces`,
/// one chunk per write (so that the proxy reads it in many parts), and a
/// trailer; it keeps the connection for the next request.
async fn chunking_upstream(
    pieces: Vec<Vec<u8>>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let pieces = std::sync::Arc::new(pieces);
    let addr = support::raw_upstream(move |mut stream| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pieces = pieces.clone();
        async move {
            loop {
                if support::read_head(&mut stream).await.is_empty() {
                    return;
                }
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                for piece in pieces.iter() {
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                if stream
                    .write_all(b"0\r\nX-Trailer: t\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

#[tokio::test]
async fn a_chunked_answer_reaches_an_http10_client_decoded_and_ends_its_connection() {
    // Small, and 300 KB in 1,000 chunks of varied sizes (many reads).
    let small = vec![b"hello".to_vec(), b", world".to_vec()];
    let large: Vec<Vec<u8>> = (0..1_000u32)
        .map(|i| {
            let len = 1 + (i as usize * 37) % 600;
            (0..len)
                .map(|j| b'a' + ((i as usize + j) % 26) as u8)
                .collect()
        })
        .collect();
    for pieces in [small, large] {
        let expected: Vec<u8> = pieces.concat();
        for fast_path in [true, false] {
            let (addr, accepted) = chunking_upstream(pieces.clone()).await;
            // One worker: its upstream connections serve every client's.
            let proxy = support::proxy_with_workers(&config(addr, fast_path), 1);
            for round in 0..2 {
                let (bytes, closed) = support::raw_exchange_until_close(
                    proxy.addr,
                    KEEP_ALIVE,
                    Duration::from_secs(10),
                )
                .await;
                assert!(closed, "fast path {fast_path}: the connection stayed open");
                let head_end = bytes
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a head")
                    + 4;
                let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
                assert!(head.starts_with("HTTP/1."), "{head}");
                assert!(head.contains(" 200 "), "{head}");
                assert!(
                    support::header_values(&head, "transfer-encoding").is_empty(),
                    "fast path {fast_path}: chunked to an HTTP/1.0 client: {head}"
                );
                assert!(
                    support::header_values(&head, "content-length").is_empty(),
                    "{head}"
                );
                assert!(
                    support::header_values(&head, "connection")
                        .iter()
                        .all(|v| !v.eq_ignore_ascii_case("keep-alive")),
                    "fast path {fast_path}: {head}"
                );
                assert_eq!(support::header_values(&head, "x-up"), ["1"], "{head}");
                assert!(
                    bytes[head_end..] == expected[..],
                    "fast path {fast_path}, round {round}: {} bytes of body, {} expected",
                    bytes.len() - head_end,
                    expected.len()
                );
            }
            // The upstream's connection was whole after each answer: the
            // fast path keeps it (hyper's path does not, as its body ends
            // with the client's connection).
            if fast_path {
                assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
            }
        }
    }
}

#[tokio::test]
async fn an_answer_ended_by_the_upstreams_close_reaches_an_http10_client_as_it_came() {
    for fast_path in [true, false] {
        let upstream =
            support::scripted_upstream(b"HTTP/1.0 200 OK\r\n\r\nold server", support::After::Close)
                .await;
        let proxy = support::proxy(&config(upstream.addr, fast_path));
        let (bytes, closed) =
            support::raw_exchange_until_close(proxy.addr, KEEP_ALIVE, Duration::from_secs(5)).await;
        assert!(closed, "fast path {fast_path}");
        let text = String::from_utf8_lossy(&bytes);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains(" 200 "), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "fast path {fast_path}: {head}"
        );
        assert_eq!(body, "old server", "fast path {fast_path}");
        assert!(upstream.requests().iter().all(|r| fast(r) == fast_path));
    }
}

#[tokio::test]
async fn an_http10_upload_goes_on_with_its_length_and_the_connection_serves_on() {
    for fast_path in [true, false] {
        let (upstream, _proxy, mut stream) = start(OK, fast_path).await;
        // The head, then the body in a second write.
        stream
            .write_all(
                b"POST /app/up HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Probe: 1\r\n\
                  Content-Length: 11\r\n\r\n",
            )
            .await
            .expect("write");
        stream.write_all(b"hello world").await.expect("write");
        let mut buf = Vec::new();
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200);
        stream.write_all(KEEP_ALIVE).await.expect("write");
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200);

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(request_line(&seen[0]), "POST /app/up HTTP/1.1");
        assert_eq!(seen[0].body, b"hello world");
        assert_eq!(
            support::header_values(&seen[0].head, "content-length"),
            ["11"]
        );
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
    }
}

#[tokio::test]
async fn the_proxys_own_answer_keeps_an_http10_keep_alive_connection() {
    for fast_path in [true, false] {
        let (upstream, proxy, mut stream) = start(OK, fast_path).await;
        let mut buf = Vec::new();
        // No route matches `/elsewhere`: the proxy answers 404 itself.
        stream
            .write_all(b"GET /elsewhere HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 404, "{answer:?}");
        assert!(
            says_keep_alive(&answer),
            "fast path {fast_path}: {answer:?}"
        );
        stream.write_all(KEEP_ALIVE).await.expect("write");
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(upstream.requests().len(), 1);

        // Without keep-alive the 404 ends the connection.
        let (bytes, closed) = support::raw_exchange_until_close(
            proxy.addr,
            b"GET /elsewhere HTTP/1.0\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(closed, "fast path {fast_path}");
        let answers = support::parse_responses(&bytes, &[false]);
        assert_eq!(answers.len(), 1, "{bytes:?}");
        assert_eq!(answers[0].status, 404);
    }
}

#[tokio::test]
async fn an_http10_head_request_gets_the_length_and_no_body() {
    for fast_path in [true, false] {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n";
        let (upstream, _proxy, mut stream) = start(reply, fast_path).await;
        stream
            .write_all(
                b"HEAD /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Probe: 1\r\n\r\n",
            )
            .await
            .expect("write");
        let mut buf = Vec::new();
        let answer = support::read_response(&mut stream, &mut buf, true).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-length"),
            ["1234"],
            "{:?}",
            answer.head
        );
        // Nothing follows the head: the next bytes are the next answer's.
        stream
            .write_all(
                b"HEAD /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Probe: 2\r\n\r\n",
            )
            .await
            .expect("write");
        let answer = support::read_response(&mut stream, &mut buf, true).await;
        assert_eq!(answer.status, 200);
        // A body after the first head would have been read as this head.
        assert!(buf.is_empty(), "{buf:?}");
        assert!(upstream.requests().iter().all(|r| fast(r) == fast_path));
    }
}
