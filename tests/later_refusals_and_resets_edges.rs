//! Edges of two changes, from a review, through loopback sockets: the
//! admin listener's JSON answer in place of hyper's bare refusal of a
//! later head (`AdminIo`), and the reset that ends a client connection
//! whose close-delimited answer the upstream broke off
//! (`ClientStream::reset_on_close`, `ConnPhase.broken`). Four failed on
//! the first version of those changes: hyper's path reset HTTP/1.1
//! connections too (and lost the bytes still queued for a slow client),
//! and a later HTTP/2 preface on an admin connection got no answer.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a read may wait before the test calls it a hang.
const HANG: Duration = Duration::from_secs(5);

const GOOD: &[u8] = b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n\r\n";
const BAD: &[u8] = b"GET /v1/routes HTTP/1.1\r\nHo st: x\r\n\r\n";

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

async fn admin() -> (support::AdminSetup, support::Upstream, support::Upstream) {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        None,
    );
    (setup, stable, canary)
}

/// The table's version and body, as `GET /v1/routes` reports them.
async fn routes(admin: SocketAddr) -> (u64, String) {
    let (status, _, body) = support::admin_call(admin, Method::GET, "/v1/routes", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    (value["version"].as_u64().expect("a version"), body)
}

/// Reads one answer framed by its `content-length` (keeping what follows
/// in `buf`): the head and the body.
async fn one_answer(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> (String, String) {
    let answer = support::read_response(stream, buf, false).await;
    (
        answer.head,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

/// The status line and the `error` object of a JSON answer.
fn status_and_error(answer: &str) -> (&str, Value) {
    let status = answer.lines().next().unwrap_or_default();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let error = serde_json::from_str::<Value>(body).map_or(Value::Null, |v| v["error"].clone());
    (status, error)
}

/// Checks that `rest` (all the server wrote after the answers before it,
/// up to its close) is exactly one JSON refusal with `status` and `code`,
/// nothing after it; returns its message.
fn one_json_refusal(rest: &[u8], status: &str, code: &str) -> String {
    let text = String::from_utf8_lossy(rest);
    let (answer, used) = support::parse_response(rest, false)
        .unwrap_or_else(|| panic!("no whole answer in {text:?}"));
    assert!(answer.head.starts_with(status), "{text:?}");
    assert!(
        answer.head.contains("content-type: application/json"),
        "{text:?}"
    );
    let error =
        serde_json::from_slice::<Value>(&answer.body).expect("a JSON body")["error"].clone();
    assert_eq!(error["code"], code, "{text:?}");
    assert_eq!(
        &rest[used..],
        b"",
        "bytes after the refusal: {:?}",
        String::from_utf8_lossy(&rest[used..])
    );
    error["message"].as_str().unwrap_or_default().to_string()
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Fin,
    Reset,
}

/// Reads to the end of the connection (panics if it stays open past
/// `HANG`): the bytes and how it ended.
async fn read_to_end(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, End) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(HANG, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the connection stayed open after {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Ok(0)) => return (bytes, End::Fin),
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                return (bytes, End::Reset);
            }
        }
    }
}

/// One route (`/app`) to `addr`, its fast path on or off.
fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["match"] = json!({"path_prefix": "/app"});
    config["routes"][0]["fast_path"] = json!(fast_path);
    config
}

/// A raw upstream that answers each connection's first request with
/// `answer` and then ends with a FIN.
async fn fin_upstream(answer: &'static [u8]) -> SocketAddr {
    support::raw_upstream(move |mut stream| async move {
        if support::read_head(&mut stream).await.is_empty() {
            return;
        }
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------
// Admin: later heads get JSON refusals, and nothing else is touched
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_bad_head_after_a_put_with_a_body_gets_a_json_400_that_says_why() {
    let (setup, _stable, _canary) = admin().await;
    let body = r#"{"weights": {"stable": 5000, "canary": 5000}}"#;
    let puts = [
        format!(
            "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        format!(
            "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
        format!(
            "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    ];
    for put in puts {
        let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
        let mut buf = Vec::new();
        stream.write_all(put.as_bytes()).await.expect("write");
        if put.contains("100-continue") {
            let head = support::read_head(&mut stream).await;
            assert!(head.starts_with(b"HTTP/1.1 100 "), "{head:?}");
            stream.write_all(body.as_bytes()).await.expect("write");
        }
        let (head, answer) = one_answer(&mut stream, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{put:?}: {head}{answer}");
        let after_put = routes(setup.admin).await;

        stream.write_all(BAD).await.expect("write");
        let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
        assert!(closed, "{put:?}: the connection stayed open");
        buf.append(&mut rest);
        let message = one_json_refusal(&buf, "HTTP/1.1 400 ", "malformed_request");
        assert!(
            message.contains("invalid header name"),
            "{put:?}: {message:?}"
        );
        assert_eq!(routes(setup.admin).await, after_put, "{put:?}");
    }
}

#[tokio::test]
async fn a_bad_head_that_comes_a_byte_at_a_time_later_gets_a_json_400_that_says_why() {
    let (setup, _stable, _canary) = admin().await;
    let before = routes(setup.admin).await;
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::new();
    stream.write_all(GOOD).await.expect("write");
    let (head, _) = one_answer(&mut stream, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let bad = b"PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n";
    for byte in bad {
        // The server may refuse before the last byte is written.
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        stream.flush().await.expect("flush");
    }
    let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    buf.append(&mut rest);
    let message = one_json_refusal(&buf, "HTTP/1.1 400 ", "malformed_request");
    assert!(
        message.contains("Content-Length is not a number"),
        "{message:?}"
    );
    assert_eq!(routes(setup.admin).await, before);
}

/// The API's own error answers on a kept-alive connection (written by
/// hyper like any other) are neither replaced nor cut, and the connection
/// stays open after each.
#[tokio::test]
async fn the_apis_own_error_answers_on_a_kept_alive_connection_are_untouched() {
    let (setup, _stable, _canary) = admin().await;
    let before = routes(setup.admin).await;
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let mut buf = Vec::new();
    let requests: [(String, &str, &str); 7] = [
        (
            "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 5\r\n\r\n{nope"
                .to_string(),
            "HTTP/1.1 400 ",
            "invalid_json",
        ),
        (
            "GET /v1/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "HTTP/1.1 404 ",
            "not_found",
        ),
        (
            "DELETE /v1/routes HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "HTTP/1.1 405 ",
            "method_not_allowed",
        ),
        (
            "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 0\r\n\r\n"
                .to_string(),
            "HTTP/1.1 400 ",
            "invalid_json",
        ),
        (
            "HEAD /v1/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "HTTP/1.1 404 ",
            "",
        ),
        // A 400 with no body on the wire: the shape hyper's bare refusal
        // has, but the API's own, so it must go through as it is.
        (
            "HEAD /v1/events/stream?since=abc HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "HTTP/1.1 400 ",
            "",
        ),
        (
            "GET /v1/events/stream?since=abc HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            "HTTP/1.1 400 ",
            "invalid_query",
        ),
    ];
    for (request, status, code) in requests {
        stream.write_all(request.as_bytes()).await.expect("write");
        let is_head = request.starts_with("HEAD ");
        let answer = support::read_response(&mut stream, &mut buf, is_head).await;
        assert!(
            answer.head.starts_with(status),
            "{request:?}: {}",
            answer.head
        );
        assert!(
            answer.head.contains("content-type: application/json"),
            "{request:?}: {}",
            answer.head
        );
        if !is_head {
            let value: Value = serde_json::from_slice(&answer.body).expect("JSON");
            assert_eq!(value["error"]["code"], code, "{request:?}");
        }
    }
    // Still open, and still served.
    stream.write_all(GOOD).await.expect("write");
    let (head, body) = one_answer(&mut stream, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}{body}");
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    assert_eq!(routes(setup.admin).await, before);
}

/// A change and a bad head in one write: the change is answered (and
/// made), then a JSON refusal, and nothing of hyper's after it.
#[tokio::test]
async fn a_bad_head_pipelined_behind_a_put_is_refused_in_json_after_the_puts_answer() {
    let (setup, _stable, _canary) = admin().await;
    let (version, _) = routes(setup.admin).await;
    let body = r#"{"weights": {"stable": 5000, "canary": 5000}}"#;
    let mut bytes = format!(
        "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(BAD);
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    stream.write_all(&bytes).await.expect("write");
    let (all, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    let (first, used) = support::parse_response(&all, false)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&all)));
    assert_eq!(first.status, 200, "{first:?}");
    one_json_refusal(&all[used..], "HTTP/1.1 400 ", "malformed_request");
    let (after, body) = routes(setup.admin).await;
    assert!(after > version, "the PUT before the refusal was lost");
    assert!(body.contains("5000"), "{body}");
}

/// hyper refuses a head with more than 100 fields with a bare 431; later
/// on a connection it gets JSON too.
#[tokio::test]
async fn a_later_head_with_too_many_fields_gets_a_json_431() {
    let (setup, _stable, _canary) = admin().await;
    let before = routes(setup.admin).await;
    let mut head = "GET /v1/routes HTTP/1.1\r\nHost: x\r\n".to_string();
    for i in 0..150 {
        head.push_str(&format!("X-F{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let mut buf = Vec::new();
    stream.write_all(GOOD).await.expect("write");
    let (status, _) = one_answer(&mut stream, &mut buf).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    let _ = stream.write_all(head.as_bytes()).await;
    let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    buf.append(&mut rest);
    let message = one_json_refusal(&buf, "HTTP/1.1 431 ", "head_too_large");
    assert!(message.contains("100 fields"), "{message:?}");
    assert_eq!(routes(setup.admin).await, before);
}

/// A later head whose target is over what `http::Uri` takes: whatever
/// status hyper gives it (414 or 431), the answer is JSON whose code goes
/// with the status, and nothing follows.
#[tokio::test]
async fn a_later_head_with_a_huge_target_gets_a_json_refusal() {
    let (setup, _stable, _canary) = admin().await;
    let before = routes(setup.admin).await;
    for length in [65_000, 65_534, 65_535, 70_000] {
        let request = format!(
            // `close`: a target short enough to be served gets its 404
            // and the connection ends all the same.
            "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(length - 1)
        );
        let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
        let mut buf = Vec::new();
        stream.write_all(GOOD).await.expect("write");
        let (status, _) = one_answer(&mut stream, &mut buf).await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
        let _ = stream.write_all(request.as_bytes()).await;
        let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
        assert!(closed, "{length}: the connection stayed open");
        buf.append(&mut rest);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (status, error) = status_and_error(&text);
        let code = match status.get(..13) {
            Some("HTTP/1.1 404 ") => "not_found",
            Some("HTTP/1.1 414 ") => "uri_too_long",
            Some("HTTP/1.1 431 ") => "head_too_large",
            _ => panic!("{length}: {text:?}"),
        };
        // `http::Uri` takes up to 65,534 bytes: shorter is served (404);
        // longer is hyper's 414, or its 431 if its buffer fills first.
        if length <= 65_534 {
            assert_eq!(code, "not_found", "{length}: {text:?}");
        } else {
            assert_ne!(code, "not_found", "{length}: {text:?}");
        }
        assert_eq!(error["code"], code, "{length}: {text:?}");
        assert!(text.contains("content-type: application/json"), "{text:?}");
    }
    assert_eq!(routes(setup.admin).await, before);
}

/// A config with `n` routes, so that `GET /v1/routes` is a long answer.
fn many_routes(upstream: &support::Upstream, n: usize) -> Value {
    let routes: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "name": format!("route-with-a-rather-long-name-{i:05}"),
                "match": {"path_prefix": format!("/a-fairly-long-path-prefix-{i:05}")},
                "split": {"baseline": "app", "weights": {"app": 10000}},
            })
        })
        .collect();
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"app": {"endpoints": [upstream.addr.to_string()]}},
        "routes": routes,
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

/// A long answer the client does not read yet, with a bad head pipelined
/// behind it: hyper parses the bad head while the long answer is still
/// in its write buffer. The client must get the whole long answer, then
/// the JSON refusal.
#[tokio::test]
async fn a_bad_head_pipelined_behind_a_long_unread_answer_gets_json_after_it() {
    let upstream = support::upstream("app").await;
    let setup = support::admin_setup(&many_routes(&upstream, 3000), None);
    let (_, whole) = routes(setup.admin).await;
    assert!(
        whole.len() > 512 * 1024,
        "answer only {} bytes",
        whole.len()
    );

    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(setup.admin).await.expect("connect");
    let mut bytes = GOOD.to_vec();
    bytes.extend_from_slice(BAD);
    stream.write_all(&bytes).await.expect("write");
    let (all, closed) = support::read_until_close(&mut stream, Duration::from_secs(20)).await;
    assert!(closed, "the connection stayed open");
    let (first, used) = support::parse_response(&all, false).unwrap_or_else(|| {
        panic!(
            "the long answer was cut at {} bytes: {:?}",
            all.len(),
            String::from_utf8_lossy(&all[all.len().saturating_sub(300)..])
        )
    });
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), whole.len());
    one_json_refusal(&all[used..], "HTTP/1.1 400 ", "malformed_request");
}

#[tokio::test]
async fn over_tls_a_later_bad_head_gets_a_json_400() {
    use support::pki::{client_config, handshake, temp_dir, write_leaf, Ca};
    let upstream = support::upstream("app").await;
    let config = support::split_config(&[(&upstream, 10000)], json!({}));
    let config = switchyard_config::parse(&config.to_string()).expect("valid");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane = switchyard_admin::ControlPlane::start(config, None, store, state).expect("plane");
    let dir = temp_dir("review-admin-tls");
    let ca = Ca::new("test CA");
    let (cert_file, key_file) = write_leaf(&dir, "admin", &ca.leaf(&["localhost"]));
    let files = switchyard_config::CertificateFiles {
        cert_file,
        key_file,
        names: Vec::new(),
        is_default: true,
        origin: "--admin-tls-cert".to_string(),
    };
    let tls = switchyard_proxy::tls::TlsTerminator::new("admin", &[files], &["http/1.1"], None)
        .expect("admin TLS");
    let api = switchyard_admin::AdminApi::new(plane, None);
    let admin = switchyard_admin::server::start_with_tls(
        "127.0.0.1:0".parse().expect("addr"),
        api,
        Some(Arc::new(tls)),
    )
    .expect("admin starts");

    for bad in [BAD, b"hello there\r\n\r\n"] {
        let mut stream = handshake(admin, "localhost", client_config(ca.roots(), &[]))
            .await
            .expect("handshake");
        let mut buf = Vec::new();
        stream.write_all(GOOD).await.expect("write");
        let (head, _) = one_answer(&mut stream, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        stream.write_all(bad).await.expect("write");
        stream.flush().await.expect("flush");
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(HANG, stream.read(&mut chunk)).await {
                Err(_) => panic!("stayed open: {:?}", String::from_utf8_lossy(&buf)),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        one_json_refusal(&buf, "HTTP/1.1 400 ", "malformed_request");
    }
}

// ---------------------------------------------------------------------
// Reset: only a broken close-delimited answer ends with one
// ---------------------------------------------------------------------

/// HTTP/1.1 clients were not part of the change: a chunked answer the
/// upstream cuts mid-body still reaches an HTTP/1.1 client without its
/// last chunk, and the connection ends as before, with a FIN, on both
/// paths (the fast path only resets for a close-delimited answer).
#[tokio::test]
async fn a_chunked_answer_cut_mid_body_ends_an_http11_connection_as_before() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc";
    for fast_path in [true, false] {
        let addr = fin_upstream(ANSWER).await;
        let proxy = support::proxy(&config(addr, fast_path));
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let (bytes, end) = read_to_end(&mut stream).await;
        let (head, body) = support::split_head(&bytes);
        assert!(head.contains(" 200 "), "{head}");
        // The client can tell: the last chunk never came.
        assert!(support::decode_chunked(body).is_none(), "{body:?}");
        assert!(
            String::from_utf8_lossy(body).contains("0123456789"),
            "{body:?}"
        );
        assert_eq!(end, End::Fin, "fast path {fast_path}");
    }
}

/// Whatever the upstream sent before it broke off an HTTP/1.1 chunked
/// answer reaches the client, even one that reads slowly: a reset would
/// throw away what still waits in the proxy's send buffer.
#[tokio::test]
async fn a_slow_http11_client_gets_every_byte_relayed_before_the_cut() {
    let request = b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut got = Vec::new();
    for fast_path in [true, false] {
        got.push((fast_path, slow_client_cut(fast_path, request).await));
    }
    assert!(
        got.iter().all(|(_, (data, _))| *data == SENT),
        "of {SENT} bytes, (fast path, (got, end)): {got:?}"
    );
}

/// A whole close-delimited answer (an HTTP/1.0 upstream, no length, a
/// FIN at its end) to a slow HTTP/1.0 client: every byte, then a FIN, on
/// both paths.
#[tokio::test]
async fn a_slow_http10_client_gets_a_whole_close_delimited_answer_and_a_fin() {
    for fast_path in [true, false] {
        let request = b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        let (data, end) = slow_client(fast_path, request, b"HTTP/1.0 200 OK\r\n\r\n").await;
        assert_eq!((data, end), (SENT, End::Fin), "fast path {fast_path}");
    }
}

/// Bytes of a chunked answer the upstream sends before it ends the
/// connection with a FIN (its chunk says more).
const SENT: usize = 256 * 1024;

/// Sends `request` through a proxy to an upstream that sends [`SENT`]
/// bytes of a chunked body and then a FIN, from a client with a small
/// receive buffer that reads nothing until the proxy has closed its
/// upstream connection: the body bytes the client got, and how its
/// connection ended.
async fn slow_client_cut(fast_path: bool, request: &[u8]) -> (usize, End) {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n";
    slow_client(fast_path, request, CHUNKED).await
}

/// As [`slow_client_cut`], the answer starting with `head` (then [`SENT`]
/// bytes of `x` and a FIN).
async fn slow_client(fast_path: bool, request: &[u8], head: &'static [u8]) -> (usize, End) {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let addr = support::raw_upstream(move |mut stream| {
        let closed_tx = closed_tx.clone();
        async move {
            if support::read_head(&mut stream).await.is_empty() {
                return;
            }
            let mut answer = head.to_vec();
            answer.extend(std::iter::repeat_n(b'x', SENT));
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            // The proxy closes its side once it has taken it all.
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            let _ = closed_tx.send(());
        }
    })
    .await;
    let proxy = support::proxy(&config(addr, fast_path));
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(proxy.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    // Read nothing until the proxy is done with the upstream (if it never
    // is, its send buffer was full: read anyway).
    let _ = tokio::time::timeout(HANG, closed_rx.recv()).await;
    let (bytes, end) = read_to_end(&mut stream).await;
    let (head, body) = support::split_head(&bytes);
    assert!(head.contains(" 200 "), "{head}");
    // Chunk size lines (hex) have no `x`.
    (body.iter().filter(|b| **b == b'x').count(), end)
}

/// A close-delimited answer the upstream ends at its true end (an
/// HTTP/1.0 upstream with no length, then FIN) is whole: it ends with a
/// FIN for HTTP/1.0 and HTTP/1.1 clients, on both paths.
#[tokio::test]
async fn a_whole_close_delimited_answer_ends_with_a_fin() {
    const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nX-Up: 1\r\n\r\nthe whole body";
    let requests: [&[u8]; 3] = [
        b"GET /app HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"GET /app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for fast_path in [true, false] {
        for request in requests {
            let addr = fin_upstream(ANSWER).await;
            let proxy = support::proxy(&config(addr, fast_path));
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            stream.write_all(request).await.expect("write");
            let (bytes, end) = read_to_end(&mut stream).await;
            let label = format!(
                "fast path {fast_path}, {:?}",
                String::from_utf8_lossy(request)
            );
            let (head, body) = support::split_head(&bytes);
            assert!(head.contains(" 200 "), "{label}: {head}");
            let body = if support::header_values(&head, "transfer-encoding").is_empty() {
                body.to_vec()
            } else {
                support::decode_chunked(body)
                    .expect("a whole chunked body")
                    .0
            };
            assert_eq!(body, b"the whole body", "{label}");
            assert_eq!(end, End::Fin, "{label}");
        }
    }
}

/// Kept-alive connections after normal answers are not reset when they
/// end: the proxy closes after a `Connection: close` request (HTTP/1.1)
/// or one without keep-alive (HTTP/1.0) with a FIN.
#[tokio::test]
async fn a_kept_alive_connection_ends_with_a_fin_after_normal_answers() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let cases: [(&[u8], &[u8]); 2] = [
        (
            b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            b"GET /app HTTP/1.0\r\nHost: x\r\n\r\n",
        ),
    ];
    for fast_path in [true, false] {
        let upstream = support::scripted_upstream(OK, support::After::Again).await;
        let proxy = support::proxy(&config(upstream.addr, fast_path));
        for (first, last) in cases {
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            let mut buf = Vec::new();
            for _ in 0..3 {
                stream.write_all(first).await.expect("write");
                let answer = support::read_response(&mut stream, &mut buf, false).await;
                assert_eq!(answer.body, b"ok");
            }
            stream.write_all(last).await.expect("write");
            let (mut rest, end) = read_to_end(&mut stream).await;
            buf.append(&mut rest);
            let answers = support::parse_responses(&buf, &[false]);
            assert_eq!(answers.len(), 1, "{:?}", String::from_utf8_lossy(&buf));
            assert_eq!(end, End::Fin, "fast path {fast_path}, {last:?}");
        }
    }
}

/// A broken answer on one connection does not leak into the next: after
/// an HTTP/1.0 connection was reset, a new connection's whole
/// close-delimited answer ends with a FIN.
#[tokio::test]
async fn a_reset_stays_with_its_own_connection() {
    const CUT: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc";
    const WHOLE: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nwhole";
    for fast_path in [true, false] {
        let (answers, next) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
        let next_answer = Arc::new(tokio::sync::Mutex::new(next));
        let addr = support::raw_upstream(move |mut stream| {
            let next_answer = next_answer.clone();
            async move {
                if support::read_head(&mut stream).await.is_empty() {
                    return;
                }
                let answer = next_answer.lock().await.recv().await.expect("an answer");
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        // One worker: both connections share it and its upstream pool.
        let proxy = support::proxy_with_workers(&config(addr, fast_path), 1);
        let request = b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";

        answers.send(CUT).expect("upstream");
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let (_, end) = read_to_end(&mut stream).await;
        assert_eq!(end, End::Reset, "fast path {fast_path}: the cut one");

        answers.send(WHOLE).expect("upstream");
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let (bytes, end) = read_to_end(&mut stream).await;
        assert!(bytes.ends_with(b"\r\n\r\nwhole"), "{bytes:?}");
        assert_eq!(end, End::Fin, "fast path {fast_path}: the whole one");
    }
}

/// HTTP/2: a stream whose answer breaks off is reset, not the connection:
/// the next stream on it is served.
#[tokio::test]
async fn h2c_a_broken_stream_leaves_the_connection_serving() {
    const CUT: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let addr = support::raw_upstream(move |mut stream| async move {
        let head = support::read_head(&mut stream).await;
        let answer = if head.starts_with(b"GET /app/cut ") {
            CUT
        } else {
            OK
        };
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let proxy = support::proxy(&config(addr, false));
    let mut sender = support::h2c_client(proxy.addr).await;
    let request = |path: &str| {
        http::Request::get(format!("http://x{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let response = sender
        .send_request(request("/app/cut"))
        .await
        .expect("the head");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(HANG, response.into_body().collect())
        .await
        .expect("the body ends");
    assert!(body.is_err(), "a cut body read as whole: {body:?}");
    for _ in 0..3 {
        let (status, body) =
            tokio::time::timeout(HANG, support::h2_exchange(&mut sender, request("/app/ok")))
                .await
                .expect("an answer");
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
}

/// How a TLS connection ended, as its client reads it.
#[derive(Debug, PartialEq, Eq)]
enum TlsEnd {
    /// `close_notify`, then the close.
    Clean,
    /// A FIN without `close_notify`.
    Truncated,
    Reset,
}

/// Over TLS, an HTTP/1.0 client's close-delimited answer: a whole one ends
/// with `close_notify`, one the upstream broke off with a reset (and no
/// `close_notify`), on both paths.
#[tokio::test]
async fn over_tls_only_the_broken_close_delimited_answer_is_reset() {
    use support::pki::{client_config, handshake, start_tls_proxy, temp_dir, write_leaf, Ca};
    const WHOLE: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nthe whole body";
    const CUT: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc";
    let dir = temp_dir("review-reset-tls");
    let ca = Ca::new("test CA");
    let (cert, key) = write_leaf(&dir, "site", &ca.leaf(&["localhost"]));
    for fast_path in [true, false] {
        for (answer, expected) in [(WHOLE, TlsEnd::Clean), (CUT, TlsEnd::Reset)] {
            let addr = fin_upstream(answer).await;
            let mut config = config(addr, fast_path);
            config["listeners"] = json!([{
                "address": "127.0.0.1:0",
                "tls": {"certificates": [{"cert_file": cert, "key_file": key}]},
            }]);
            let (_server, proxy, _) = start_tls_proxy(&config);
            let mut stream = handshake(proxy, "localhost", client_config(ca.roots(), &[]))
                .await
                .expect("handshake");
            stream
                .write_all(
                    b"GET /app HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
                )
                .await
                .expect("write");
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 4096];
            let end = loop {
                match tokio::time::timeout(HANG, stream.read(&mut chunk)).await {
                    Err(_) => panic!("stayed open: {:?}", String::from_utf8_lossy(&bytes)),
                    Ok(Ok(0)) => break TlsEnd::Clean,
                    Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
                    Ok(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                        break TlsEnd::Truncated
                    }
                    Ok(Err(err)) => {
                        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                        break TlsEnd::Reset;
                    }
                }
            };
            let (head, body) = support::split_head(&bytes);
            assert!(head.contains(" 200 "), "{head}");
            let label = format!(
                "fast path {fast_path}, {:?}",
                String::from_utf8_lossy(answer)
            );
            assert_eq!(
                end,
                expected,
                "{label}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// A first head longer than the first-head check reads (16 KiB) is left
/// to hyper; a fault past that point is refused by hyper, and the JSON
/// answer in its place still says what the fault is.
#[tokio::test]
async fn a_long_first_head_with_a_late_fault_gets_a_json_400_that_says_why() {
    let (setup, _stable, _canary) = admin().await;
    let before = routes(setup.admin).await;
    let head = format!(
        "GET /v1/routes HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nHo st: x\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let _ = stream.write_all(head.as_bytes()).await;
    let (all, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    let message = one_json_refusal(&all, "HTTP/1.1 400 ", "malformed_request");
    assert!(message.contains("invalid header name"), "{message:?}");
    assert_eq!(routes(setup.admin).await, before);
}

/// hyper's buffer (64 KiB) bounds a head, not a head and its body: a
/// 40 KiB head with a body near the body limit, in one write, is served.
#[tokio::test]
async fn a_large_head_with_a_large_body_is_served_not_refused_as_too_large() {
    let (setup, _stable, _canary) = admin().await;
    let (version, _) = routes(setup.admin).await;
    // Whitespace is JSON too: a body just under the 64 KiB body limit.
    let body = format!(
        "{}{{\"weights\": {{\"stable\": 5000, \"canary\": 5000}}}}",
        " ".repeat(60 * 1024)
    );
    let request = format!(
        "PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "a".repeat(40 * 1024),
        body.len()
    );
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let (status, answer) = one_answer(&mut stream, &mut buf).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}{answer}");
    let (after, now) = routes(setup.admin).await;
    assert!(after > version && now.contains("5000"), "{now}");
}

/// The HTTP/2 preface gets a JSON 400 as a first head ("HTTP/2 is not
/// served"); later on a kept-alive connection it must not get less.
#[tokio::test]
async fn a_later_http2_preface_gets_a_json_400() {
    let (setup, _stable, _canary) = admin().await;
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let mut buf = Vec::new();
    stream.write_all(GOOD).await.expect("write");
    let (status, _) = one_answer(&mut stream, &mut buf).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    buf.append(&mut rest);
    one_json_refusal(&buf, "HTTP/1.1 400 ", "malformed_request");
}

/// An answer with a `Content-Length` the upstream cuts short says itself
/// that it is short: the two paths end the HTTP/1.0 client's connection
/// the same way.
#[tokio::test]
async fn a_content_length_answer_cut_short_ends_alike_on_both_paths() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    let mut ends = Vec::new();
    for fast_path in [true, false] {
        let addr = fin_upstream(ANSWER).await;
        let proxy = support::proxy(&config(addr, fast_path));
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let (bytes, end) = read_to_end(&mut stream).await;
        let (head, body) = support::split_head(&bytes);
        assert_eq!(support::header_values(&head, "content-length"), ["100"]);
        assert_eq!(body, b"0123456789", "fast path {fast_path}");
        ends.push((fast_path, end));
    }
    assert_eq!(ends[0].1, ends[1].1, "{ends:?}");
}

/// The bytes a refusal is judged from start anew after each answer, however
/// many came before.
#[tokio::test]
async fn a_bad_head_after_many_answers_is_judged_from_its_own_bytes() {
    let (setup, _stable, _canary) = admin().await;
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..50 {
        stream.write_all(GOOD).await.expect("write");
        let (status, _) = one_answer(&mut stream, &mut buf).await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    }
    stream
        .write_all(b"GET /v1/routes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
        .await
        .expect("write");
    let (mut rest, closed) = support::read_until_close(&mut stream, HANG).await;
    assert!(closed, "the connection stayed open");
    buf.append(&mut rest);
    let message = one_json_refusal(&buf, "HTTP/1.1 400 ", "malformed_request");
    assert!(message.contains("does not end in chunked"), "{message:?}");
}
