//! HTTP/2 clients' requests sent upstream on raw HTTP/1.1 connections
//! (`proxy/src/raw_upstream.rs`), through real sockets: connection reuse,
//! each response framing turned into HTTP/2 data, hop-by-hop fields, a
//! request body, cookies and forwarding fields, and upstream failures before and after the
//! head.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream does after writing a reply.
enum Then {
    /// Reads the next request on the connection.
    KeepOpen,
    Close,
    /// Keeps the connection open and sends nothing more.
    Hang,
}

/// A request as the upstream read it: head and body.
type Seen = (String, Vec<u8>);

/// A raw upstream that serves any number of requests per connection,
/// answering each from `reply(head)`, and records every request.
#[derive(Clone)]
struct KeepAlive {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Each request's head and body.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl KeepAlive {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn keep_alive_upstream(reply: fn(&str) -> (Vec<u8>, Then)) -> KeepAlive {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = KeepAlive {
        addr: listener.local_addr().expect("addr"),
        accepted: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let state = upstream.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            state.accepted.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((head, body)) = read_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    let (bytes, then) = reply(&head);
                    state.seen.lock().expect("not poisoned").push((head, body));
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    match then {
                        Then::KeepOpen => {}
                        Then::Close => return,
                        Then::Hang => {
                            let mut sink = [0u8; 1024];
                            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                            return;
                        }
                    }
                }
            });
        }
    });
    upstream
}

/// Reads one request (head, then a `Content-Length` body) from `stream`,
/// keeping what follows in `buf`; None at the end of the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = support::header_values(&head, "content-length")
        .first()
        .map_or(0, |v| v.parse().expect("numeric content-length"));
    while buf.len() < head_end + len {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((head, body))
}

/// The request line's target.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

fn request(method: &str, path: &str, body: &'static [u8]) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"))
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

/// Sends a request; returns status, headers, and the body or the error
/// that ended it.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, Result<Bytes, String>) {
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status.as_u16(), parts.headers, body)
}

fn answer(head: &str) -> (Vec<u8>, Then) {
    let path = target(head);
    let body = format!("answer to {path}");
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Path: {path}\r\n\r\n{body}",
        body.len()
    );
    (reply.into_bytes(), Then::KeepOpen)
}

#[tokio::test]
async fn h2_requests_share_pooled_upstream_connections() {
    let upstream = keep_alive_upstream(answer).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    for i in 0..20 {
        let path = format!("/one/{i}");
        let (status, headers, body) = send(&mut sender, request("GET", &path, b"")).await;
        assert_eq!(status, 200);
        assert_eq!(body.expect("body"), format!("answer to {path}"));
        assert_eq!(headers["x-path"], path.as_str());
    }
    // Five at once on the one HTTP/2 connection.
    let concurrent = (0..5).map(|i| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            let path = format!("/many/{i}");
            let (status, _, body) = send(&mut sender, request("GET", &path, b"")).await;
            (status, body.expect("body"), path)
        })
    });
    for task in concurrent {
        let (status, body, path) = task.await.expect("task");
        assert_eq!(
            (status, body),
            (200, Bytes::from(format!("answer to {path}")))
        );
    }

    let seen = upstream.seen();
    assert_eq!(seen.len(), 25);
    // One request at a time for the first twenty: one connection served
    // them; the five at once needed at most four more.
    let accepted = upstream.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=5).contains(&accepted),
        "{accepted} upstream connections"
    );
    let (head, body) = &seen[0];
    assert!(head.starts_with("GET /one/0 HTTP/1.1\r\n"), "{head}");
    assert_eq!(support::header_values(head, "host"), ["app.test"]);
    assert_eq!(
        support::header_values(head, "x-forwarded-for"),
        ["127.0.0.1"]
    );
    assert_eq!(support::header_values(head, "x-forwarded-proto"), ["http"]);
    assert!(support::header_values(head, "content-length").is_empty());
    assert!(body.is_empty());
}

#[tokio::test]
async fn a_body_split_cookies_and_forwarding_fields_go_upstream_as_http1() {
    let upstream = keep_alive_upstream(answer).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    let mut post = request("POST", "/form", b"name=value&more=1");
    // HTTP/2 lets a client send a cookie in pieces (RFC 9113 §8.2.3).
    post.headers_mut()
        .append("cookie", "a=1".parse().expect("value"));
    post.headers_mut()
        .append("cookie", "b=2".parse().expect("value"));
    // Earlier proxies' fields are appended to; a client's own proto and
    // host are not trusted.
    for (name, value) in [
        ("x-forwarded-for", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
        ("content-length", "17"),
    ] {
        post.headers_mut()
            .insert(name, value.parse().expect("value"));
    }
    let (status, _, _) = send(&mut sender, post).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(&mut sender, request("PUT", "/empty", b"")).await;
    assert_eq!(status, 200);

    let seen = upstream.seen();
    let (head, body) = &seen[0];
    assert!(head.starts_with("POST /form HTTP/1.1\r\n"), "{head}");
    assert_eq!(body, b"name=value&more=1");
    assert_eq!(support::header_values(head, "content-length"), ["17"]);
    assert_eq!(support::header_values(head, "cookie"), ["a=1; b=2"]);
    assert_eq!(support::header_values(head, "host"), ["app.test"]);
    let forwarding = [
        ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
        (
            "forwarded",
            "for=10.0.0.1, for=127.0.0.1;host=\"app.test\";proto=http",
        ),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.test"),
    ];
    for (name, value) in forwarding {
        assert_eq!(support::header_values(head, name), [value], "{name}");
    }
    // A method that defines a body says when it has none.
    let (head, body) = &seen[1];
    assert!(head.starts_with("PUT /empty HTTP/1.1\r\n"), "{head}");
    assert_eq!(support::header_values(head, "content-length"), ["0"]);
    assert!(body.is_empty());
}

fn framed(head: &str) -> (Vec<u8>, Then) {
    let reply: &[u8] = match target(head) {
        // Two chunks, one with an extension, and a trailer.
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        }
        "/close" => b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes",
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        "/hop" => {
            b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\n\
            Keep-Alive: timeout=5\r\nX-Secret: 1\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        }
        "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
        // Interim answers first: skipped, the final one goes on.
        "/interim" => {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\
            Link: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        }
        other => panic!("unexpected {other}"),
    };
    let then = match target(head) {
        "/close" => Then::Close,
        _ => Then::KeepOpen,
    };
    (reply.to_vec(), then)
}

#[tokio::test]
async fn each_response_framing_becomes_http2_data() {
    let upstream = keep_alive_upstream(framed).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    // Chunked: decoded; the connection is reused after the last chunk.
    let (status, headers, body) = send(&mut sender, request("GET", "/chunked", b"")).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), "hello world");
    assert!(headers.get("transfer-encoding").is_none());
    let (_, _, body) = send(&mut sender, request("GET", "/chunked", b"")).await;
    assert_eq!(body.expect("body"), "hello world");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);

    // HEAD: the length of the body it would have, no body; 204: none.
    let (status, headers, body) = send(&mut sender, request("HEAD", "/head", b"")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "1000");
    assert_eq!(body.expect("body"), "");
    let (status, _, body) = send(&mut sender, request("GET", "/empty", b"")).await;
    assert_eq!((status, body.expect("body")), (204, Bytes::new()));
    let (status, headers, body) = send(&mut sender, request("GET", "/interim", b"")).await;
    assert_eq!((status, body.expect("body")), (200, Bytes::from("final")));
    assert!(
        headers.get("link").is_none(),
        "an interim answer's field leaked"
    );

    // Hop-by-hop fields, and those Connection names, stay behind.
    let (status, headers, body) = send(&mut sender, request("GET", "/hop", b"")).await;
    assert_eq!((status, body.expect("body")), (200, Bytes::from("ok")));
    assert_eq!(headers["x-kept"], "yes");
    for gone in ["connection", "keep-alive", "x-secret"] {
        assert!(headers.get(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);

    // Delimited by the close: whole, and the next request needs a new
    // connection.
    let (status, _, body) = send(&mut sender, request("GET", "/close", b"")).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("body"), "until the upstream closes");
    let (_, _, body) = send(&mut sender, request("GET", "/chunked", b"")).await;
    assert_eq!(body.expect("body"), "hello world");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_large_body_streams_byte_for_byte() {
    fn large(_: &str) -> (Vec<u8>, Then) {
        let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        let mut reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        reply.extend_from_slice(&body);
        (reply, Then::KeepOpen)
    }
    let upstream = keep_alive_upstream(large).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;
    for _ in 0..2 {
        let (status, headers, body) = send(&mut sender, request("GET", "/big", b"")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-length"], "1048576");
        let body = body.expect("body");
        assert_eq!(body.len(), 1_048_576);
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_cut_short_resets_the_stream() {
    fn short(head: &str) -> (Vec<u8>, Then) {
        let then = match target(head) {
            "/closed" => Then::Close,
            _ => Then::Hang,
        };
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..";
        (reply.to_vec(), then)
    }
    let upstream = keep_alive_upstream(short).await;
    let proxy = support::proxy_to(
        "stable",
        upstream.addr,
        json!({"timeouts": {"connect": "2s", "response_header": "5s", "idle": "1s"}}),
    );
    let mut sender = support::h2c_client(proxy.addr).await;

    // The upstream closes after 10 of 100 bytes: the client is told, by a
    // reset of its stream — before the head even, when the close came
    // before the head was sent.
    let response = sender.send_request(request("GET", "/closed", b"")).await;
    let whole = match response {
        Ok(response) => response.into_body().collect().await.is_ok(),
        Err(_) => false,
    };
    assert!(!whole, "a short body passed as whole");
    // It stalls after 10 bytes: cut off after the idle timeout.
    let (status, _, body) = send(&mut sender, request("GET", "/stalled", b"")).await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "a stalled body passed as whole: {body:?}");
    // The HTTP/2 connection itself is fine.
    let (status, _, body) = send(&mut sender, request("HEAD", "/closed", b"")).await;
    assert_eq!((status, body.expect("no body")), (200, Bytes::new()));
}

#[tokio::test]
async fn upstream_failures_before_the_head_are_answered() {
    fn broken(head: &str) -> (Vec<u8>, Then) {
        match target(head) {
            "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), Then::Close),
            "/two-lengths" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
                Then::Close,
            ),
            _ => (Vec::new(), Then::Close),
        }
    }
    let upstream = keep_alive_upstream(broken).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;
    for path in ["/garbage", "/two-lengths", "/nothing"] {
        let (status, _, body) = send(&mut sender, request("GET", path, b"")).await;
        let body = body.expect("an error answer has a body");
        assert_eq!(status, 502, "{path}: {body:?}");
        assert!(
            String::from_utf8_lossy(&body).contains(&upstream.addr.to_string()),
            "{path}: {body:?}"
        );
    }

    // Nothing listens: 502 naming the endpoint, and nothing hangs.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let proxy = support::proxy_to("stable", addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        send(&mut sender, request("GET", "/", b"")),
    )
    .await
    .expect("answered");
    assert_eq!(status, 502);
    let body = body.expect("body");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("refused") && text.contains(&addr.to_string()),
        "{text}"
    );
}

/// A `:path` that is not origin form (`?a=1`, no leading `/`) is a
/// malformed request (RFC 9113 §8.3.1): reset, never forwarded (it went
/// upstream as `/?a=1`; nginx refuses it).
#[tokio::test]
async fn a_target_without_a_path_is_refused() {
    let upstream = keep_alive_upstream(answer).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority("app.test")
        .path_and_query("?a=1")
        .build()
        .expect("uri");
    let request = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = sender.send_request(request).await;
    assert!(answer.is_err(), "answered: {answer:?}");
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn a_connection_with_bytes_past_the_body_is_not_reused_and_long_chunks_stream() {
    fn reply(head: &str) -> (Vec<u8>, Then) {
        match target(head) {
            // Five bytes more than announced.
            "/extra" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_vec(),
                Then::KeepOpen,
            ),
            // Three 40 KiB chunks: read in many parts, each passed on.
            _ => {
                let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for byte in [b'a', b'b', b'c'] {
                    reply.extend_from_slice(format!("{:x}\r\n", 40 * 1024).as_bytes());
                    reply.extend(std::iter::repeat_n(byte, 40 * 1024));
                    reply.extend_from_slice(b"\r\n");
                }
                reply.extend_from_slice(b"0\r\n\r\n");
                (reply, Then::KeepOpen)
            }
        }
    }
    let upstream = keep_alive_upstream(reply).await;
    let proxy = support::proxy_to("stable", upstream.addr, json!({}));
    let mut sender = support::h2c_client(proxy.addr).await;

    let (status, _, body) = send(&mut sender, request("GET", "/extra", b"")).await;
    assert_eq!((status, body.expect("body")), (200, Bytes::from("ok")));
    let (_, _, body) = send(&mut sender, request("GET", "/long", b"")).await;
    let body = body.expect("body");
    assert_eq!(body.len(), 3 * 40 * 1024);
    let expected: Vec<u8> = [b'a', b'b', b'c']
        .iter()
        .flat_map(|&b| std::iter::repeat_n(b, 40 * 1024))
        .collect();
    assert!(body == expected, "the chunks arrived changed");
    // The first connection had bytes past its body: not used again.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    // The chunked one was read to its end: used again.
    let (_, _, body) = send(&mut sender, request("GET", "/long", b"")).await;
    assert_eq!(body.expect("body").len(), 3 * 40 * 1024);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}
