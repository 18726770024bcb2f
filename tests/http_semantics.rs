//! HTTP semantics through real sockets (RFC 9110, RFC 9112): keep-alive
//! and pipelining, h2c, request bodies, back-pressure, hop-by-hop and
//! forwarding fields, absolute-form targets, WebSocket upgrades, and
//! malformed or ambiguous requests that must be refused, not forwarded.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLock;
use tokio::time::Instant;

/// The back-pressure test measures this process's RSS, so it runs alone:
/// it takes this for writing, and tests that move more than a few KiB of
/// body take it for reading.
static RSS_GATE: RwLock<()> = RwLock::const_new(());

const OK_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A proxy in front of one `support::upstream` named `name`.
async fn proxied(name: &str) -> (support::Upstream, support::TestProxy) {
    let upstream = support::upstream(name).await;
    let proxy = support::proxy(&support::split_config(&[(&upstream, 10_000)], json!({})));
    (upstream, proxy)
}

/// Sends `request` and expects `status`, a closed connection, and nothing
/// forwarded.
async fn assert_refused(request: &[u8], status: u16) {
    assert_refused_with(request, status, json!({})).await;
}

async fn assert_refused_with(request: &[u8], status: u16, extra: serde_json::Value) {
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, extra));
    let (out, closed) =
        support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&out);
    let responses = support::parse_responses(&out, &[]);
    assert_eq!(responses.len(), 1, "one answer expected: {text:?}");
    assert_eq!(responses[0].status, status, "{text:?}");
    assert!(closed, "connection left open after {status}: {text:?}");
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream.requests()
    );
}

// ---------------------------------------------------------------------------
// Connections

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (upstream, proxy) = proxied("web").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
        let request = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let response = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(response.status, 200, "request {i}: {:?}", response.head);
        assert_eq!(response.body, b"web");
        assert!(
            response.header("connection").is_empty(),
            "{:?}",
            response.head
        );
    }
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    // RFC 9112 §9.3.2: responses in the order the requests were received.
    let (upstream, proxy) = proxied("web").await;
    // Three requests in one write; the last asks to close so the read ends.
    let requests = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst\
        POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond\
        GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, closed) =
        support::raw_exchange_until_close(proxy.addr, requests, Duration::from_secs(2)).await;
    assert!(closed);
    let bodies: Vec<Vec<u8>> = support::parse_responses(&out, &[])
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(
        bodies,
        [b"first".to_vec(), b"second".to_vec(), b"web".to_vec()],
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let seen: Vec<(String, Bytes)> = upstream
        .requests()
        .into_iter()
        .map(|s| (s.uri, s.body))
        .collect();
    assert_eq!(
        seen,
        [
            ("/echo".to_string(), Bytes::from_static(b"first")),
            ("/echo".to_string(), Bytes::from_static(b"second")),
            ("/third".to_string(), Bytes::new()),
        ]
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_routes_like_http1_on_the_same_port() {
    let example = support::upstream("example").await;
    let other = support::upstream("other").await;
    let pool = |u: &support::Upstream| json!({"endpoints": [u.addr.to_string()]});
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"example": pool(&example), "other": pool(&other)},
        "routes": [
            {"name": "example", "match": {"host": "example.com"},
             "split": {"baseline": "example", "weights": {"example": 10000}}},
            {"name": "rest", "split": {"baseline": "other", "weights": {"other": 10000}}},
        ],
    });
    let proxy = support::proxy(&config);

    // HTTP/1.1 on the port first, for comparison.
    let (status, _, body) = support::get(
        &support::client(),
        proxy.addr,
        "/h1",
        &[("host", "example.com")],
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "example"));

    // The connection goes to the proxy; the :authority names another host.
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    for (uri, body, expected) in [
        ("http://example.com/h2?q=1", "", "example"),
        ("http://example.com/echo", "over h2", "over h2"),
        ("http://other.org/h2", "", "other"),
    ] {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let got = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&got[..], expected.as_bytes(), "{uri}");
    }

    let seen = example.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].uri, "/h1");
    for (request, uri) in seen[1..].iter().zip(["/h2?q=1", "/echo"]) {
        assert_eq!(request.version, http::Version::HTTP_11);
        assert_eq!(request.uri, uri);
        assert_eq!(request.headers["host"], "example.com");
        assert_eq!(request.headers["x-forwarded-host"], "example.com");
    }
    assert_eq!(&seen[2].body[..], b"over h2");
    assert_eq!(seen[2].headers["content-length"], "7");
    let other_seen = other.requests();
    assert_eq!(other_seen.len(), 1);
    assert_eq!(other_seen[0].headers["host"], "other.org");
}

// ---------------------------------------------------------------------------
// Request bodies

#[tokio::test]
async fn chunked_request_body_arrives_intact() {
    let (upstream, proxy) = proxied("web").await;
    let request = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n";
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let response = support::read_response(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello world");
}

#[tokio::test]
async fn content_length_request_body_arrives_intact() {
    let (upstream, proxy) = proxied("web").await;
    let request = http::Request::post(format!("http://{}/echo", proxy.addr))
        .body(Full::new(Bytes::from_static(b"a body with a length")))
        .expect("request");
    let response = support::client().request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"a body with a length");
    let seen = upstream.requests();
    assert_eq!(&seen[0].body[..], b"a body with a length");
    assert_eq!(seen[0].headers["content-length"], "20");
}

#[tokio::test]
async fn large_streamed_chunked_body_arrives_intact() {
    let _gate = RSS_GATE.read().await;
    let (upstream, proxy) = proxied("web").await;
    // 1 MiB, well over the 64 KiB read-ahead, in a pattern that shows any
    // reordered, lost or repeated chunk.
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("write head");
    for chunk in body.chunks(10_000) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        stream.write_all(&framed).await.expect("write chunk");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("write end");
    let response = support::read_response(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(response.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].body == body[..],
        "upstream got {} bytes",
        seen[0].body.len()
    );
    assert!(
        response.body == body,
        "client got {} bytes",
        response.body.len()
    );
}

#[tokio::test]
async fn expect_100_continue_gets_interim_then_final_response() {
    // RFC 9110 §10.1.1.
    let (upstream, proxy) = proxied("web").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write head");
    let mut buf = Vec::new();
    // The body is withheld until the 100 arrives; read_response would time
    // out if the proxy waited for the body first.
    let interim = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{:?}", interim.head);
    stream.write_all(b"hello").await.expect("write body");
    let last = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.body, b"hello");
    let seen = upstream.requests();
    assert_eq!(&seen[0].body[..], b"hello");
    // The proxy answered the expectation itself.
    assert!(seen[0].headers.get("expect").is_none(), "{seen:?}");
}

#[tokio::test]
async fn head_response_has_headers_and_no_body() {
    // RFC 9110 §9.3.2: the fields of a GET, no content.
    let (upstream, proxy) = proxied("web").await;
    // A HEAD then a GET in one write: if the HEAD answer carried a body,
    // the GET's answer would not parse where it should start.
    let requests = b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n\
        GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, closed) =
        support::raw_exchange_until_close(proxy.addr, requests, Duration::from_secs(2)).await;
    assert!(closed);
    let text = String::from_utf8_lossy(&out);
    let responses = support::parse_responses(&out, &[true, false]);
    assert_eq!(responses.len(), 2, "{text:?}");
    assert_eq!(responses[0].status, 200);
    assert_eq!(responses[0].header("content-length"), ["3"], "{text:?}");
    assert!(
        text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "the GET answer does not follow the HEAD head directly: {text:?}"
    );
    assert_eq!(responses[1].body, b"web");
    let methods: Vec<String> = upstream
        .requests()
        .into_iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_to_a_paused_client_is_not_buffered() {
    let _gate = RSS_GATE.write().await;
    const TOTAL: u64 = 100 * 1024 * 1024;
    let (addr, written) = support::streaming_upstream(TOTAL).await;
    let proxy = support::proxy(&support::pool_config("big", addr, json!({})));
    let rss_before = support::vm_rss_kib();

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let head = support::read_head(&mut stream).await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    assert_eq!(
        support::header_values(&head, "content-length"),
        ["104857600"]
    );

    // The client reads nothing more. Wait until every buffer between the
    // upstream and the client is full: the upstream's count stops moving.
    let start = Instant::now();
    let mut last = written.load(std::sync::atomic::Ordering::SeqCst);
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if now > 0 && still_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "upstream never stalled: {now} bytes written"
        );
    }
    let grown_kib = support::vm_rss_kib().saturating_sub(rss_before);
    // Without back-pressure the proxy would hold most of 100 MiB; with it,
    // only hyper's buffers (well under 1 MiB). 8 MiB leaves room for
    // allocator noise.
    assert!(
        grown_kib < 8 * 1024 && last < TOTAL,
        "RSS grew by {grown_kib} KiB while the client was paused, \
         with {last} of {TOTAL} bytes written by the upstream"
    );

    // Resume: exactly the announced body, then the close the client asked for.
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("body keeps coming")
            .expect("read");
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    assert_eq!(received, TOTAL);
}

// ---------------------------------------------------------------------------
// Header fields

#[tokio::test]
async fn request_hop_by_hop_fields_are_removed() {
    // RFC 9110 §7.6.1; `TE: trailers` alone may go on (§10.1.4).
    let (upstream, proxy) = proxied("web").await;
    let request = b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close, x-foo\r\nX-Foo: secret\r\n\
        Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\n\
        Upgrade: h2c\r\nX-Kept: yes\r\n\r\n";
    let (out, closed) =
        support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(2)).await;
    assert!(closed, "Connection: close not honoured");
    let responses = support::parse_responses(&out, &[]);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(responses[0].status, 200);
    let seen = upstream.requests();
    let headers = &seen[0].headers;
    for name in ["x-foo", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(headers.get(name).is_none(), "{name} forwarded: {headers:?}");
    }
    // The client's Connection goes; the TE kept names itself in a new one.
    let te: Vec<_> = headers.get_all("te").iter().collect();
    assert_eq!(te, ["trailers"]);
    let connection: Vec<_> = headers.get_all("connection").iter().collect();
    assert_eq!(connection, ["te"], "{headers:?}");
    assert_eq!(headers["x-kept"], "yes");
}

#[tokio::test]
async fn response_hop_by_hop_fields_are_removed() {
    // RFC 9110 §7.6.1, in the response direction.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-bar\r\nX-Bar: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nok",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let (status, headers, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    for name in ["connection", "x-bar", "keep-alive", "proxy-connection"] {
        assert!(headers.get(name).is_none(), "{name} passed on: {headers:?}");
    }
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn forwarding_fields_are_set_and_host_is_kept() {
    let (upstream, proxy) = proxied("web").await;
    let (status, _, _) = support::get(
        &support::client(),
        proxy.addr,
        "/fwd",
        &[
            ("host", "example.com:8080"),
            ("x-forwarded-for", "10.0.0.1"),
            // A client's own proto and host claims are not trusted.
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.requests();
    let headers = &seen[0].headers;
    assert_eq!(headers["host"], "example.com:8080");
    assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "example.com:8080");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.1;host=\"example.com:8080\";proto=http"
    );
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert_eq!(
            headers.get_all(name).iter().count(),
            1,
            "{name}: {headers:?}"
        );
    }
}

#[tokio::test]
async fn forwarded_is_appended_to_the_clients_own() {
    let (upstream, proxy) = proxied("web").await;
    let (status, _, _) = support::get(
        &support::client(),
        proxy.addr,
        "/",
        &[("host", "example.com"), ("forwarded", "for=10.0.0.1")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.requests()[0].headers["forwarded"],
        "for=10.0.0.1, for=127.0.0.1;host=\"example.com\";proto=http"
    );
}

#[tokio::test]
async fn absolute_form_target_goes_upstream_in_origin_form() {
    let (upstream, proxy) = proxied("web").await;
    // RFC 9112 §3.2.2: the target's authority wins over the Host field.
    let request =
        b"GET http://example.com/x?q=1 HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n";
    let (out, _) =
        support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(2)).await;
    let responses = support::parse_responses(&out, &[]);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(responses[0].status, 200);
    let seen = upstream.requests();
    assert_eq!(seen[0].uri, "/x?q=1");
    let hosts: Vec<_> = seen[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["example.com"]);
    assert_eq!(seen[0].headers["x-forwarded-host"], "example.com");
}

#[tokio::test]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let (addr, handshakes) = support::websocket_upstream().await;
    let proxy = support::proxy(&support::pool_config("ws", addr, json!({})));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write handshake");
    let mut buf = Vec::new();
    let response = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(response.status, 101, "{:?}", response.head);
    assert_eq!(response.header("upgrade"), ["websocket"]);
    assert!(
        response.header("connection")[0].eq_ignore_ascii_case("upgrade"),
        "{:?}",
        response.head
    );
    assert_eq!(
        response.header("sec-websocket-accept"),
        ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    );
    assert!(buf.is_empty(), "bytes after the 101 head: {buf:?}");

    for message in [&b"first frame"[..], b"\x81\x05hello", &[0u8; 3000]] {
        stream.write_all(message).await.expect("write frame");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echoed))
            .await
            .expect("echo within 2 s")
            .expect("read echo");
        assert_eq!(echoed, message);
    }

    let heads = handshakes.lock().expect("not poisoned").clone();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    assert_eq!(support::header_values(head, "upgrade"), ["websocket"]);
    assert!(
        support::header_values(head, "connection")[0].eq_ignore_ascii_case("upgrade"),
        "{head:?}"
    );
    assert_eq!(
        support::header_values(head, "sec-websocket-key"),
        ["dGhlIHNhbXBsZSBub25jZQ=="]
    );
}

/// A WebSocket is a tunnel, not HTTP: a client message that waits longer
/// than the head timeout for its answer is not cut off with a 408, and
/// the tunnel ends once quiet for the idle timeout both ways.
#[tokio::test]
async fn a_websocket_quiet_past_the_head_timeout_stays_open_until_idle() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        support::read_head(&mut stream).await;
        let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\n\r\n";
        stream.write_all(reply).await.expect("write 101");
        // A server that takes three head timeouts to answer a message.
        let mut message = [0u8; 5];
        stream.read_exact(&mut message).await.expect("read message");
        tokio::time::sleep(Duration::from_millis(900)).await;
        stream.write_all(&message).await.expect("echo");
        // Then quiet until the proxy closes the tunnel.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let timeouts = json!({"request_header": "300ms", "idle": "2s"});
    let proxy = support::proxy(&support::pool_config(
        "ws",
        addr,
        json!({"timeouts": timeouts}),
    ));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write handshake");
    let mut buf = Vec::new();
    let response = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(response.status, 101, "{:?}", response.head);
    stream
        .write_all(b"\x81\x03hi!")
        .await
        .expect("write message");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo within 5 s")
        .expect("echo, not a closed connection");
    assert_eq!(&echoed, b"\x81\x03hi!");
    // Looks like a head with two lengths; is tunnel bytes.
    stream
        .write_all(b"content-length: 1\r\ncontent-length: 2\r\n\r\n")
        .await
        .expect("write field-like bytes");
    // Quiet both ways from here: closed after the idle timeout, with
    // nothing written into the tunnel.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 10 s")
        .expect("read to end");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

// ---------------------------------------------------------------------------
// Malformed and ambiguous requests: a clean 4xx, never forwarded, closed

#[tokio::test]
async fn malformed_requests_are_closed_and_never_forwarded() {
    // The part of the refusal that holds even where the 4xx itself is lost
    // (see the ignored tests below): the connection is closed, nothing
    // reaches the upstream, and the only answer allowed is a 4xx.
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(33 * 1024)
    );
    let mut many_headers = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many_headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let cases: Vec<&[u8]> = vec![
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
        many_headers.as_bytes(),
        big_head.as_bytes(),
    ];
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    for request in cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(120)]).into_owned();
        let (out, closed) =
            support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(2)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(closed, "left open: {shown:?} got {text:?}");
        assert!(
            out.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{shown:?} got {text:?}"
        );
        assert!(
            upstream.requests().is_empty(),
            "{shown:?} forwarded: {:?}",
            upstream.requests()
        );
    }
}

#[tokio::test]
async fn differing_duplicate_content_length_is_refused() {
    assert_refused(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    )
    .await;
}

#[tokio::test]
async fn invalid_content_length_is_refused() {
    for value in ["5x", "-1", "+5", "0x5", "5, 6"] {
        let request = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello");
        assert_refused(request.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn transfer_coding_before_chunked_is_refused() {
    // hyper accepts it (chunked is last); nothing downstream would decode gzip.
    assert_refused(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_coding_not_ending_in_chunked_is_refused() {
    for coding in ["identity", "chunked, gzip", "gzip"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        assert_refused(request.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn repeated_transfer_encoding_field_is_refused() {
    assert_refused(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_chunk_size_is_refused_before_forwarding() {
    // The body is under the read-ahead size, so it is read whole first.
    assert_refused(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bare_cr_in_a_header_value_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bare_lf_inside_a_header_value_is_refused() {
    // "b" after the LF is neither a field line nor a continuation.
    assert_refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n", 400).await;
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    // RFC 9112 §5.2: obs-fold outside message/http is rejected or replaced
    // by spaces; never passed on as a new field line.
    assert_refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn space_before_colon_is_refused() {
    // RFC 9112 §5.1: whitespace between field name and colon gets a 400.
    assert_refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn missing_host_on_http11_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn duplicate_host_is_refused() {
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        400,
    )
    .await;
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn uri_over_8_kib_is_refused() {
    let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    assert_refused(request.as_bytes(), 414).await;
}

#[tokio::test]
async fn more_than_100_headers_are_refused() {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("\r\n");
    assert_refused(request.as_bytes(), 431).await;
}

#[tokio::test]
async fn header_section_over_32_kib_is_refused() {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(33 * 1024)
    );
    assert_refused(request.as_bytes(), 431).await;
}

#[tokio::test]
async fn content_length_over_the_body_limit_is_refused() {
    // Only the head is sent: the answer must not wait for the body.
    assert_refused_with(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
        413,
        json!({"limits": {"max_body_bytes": 1000}}),
    )
    .await;
}

#[tokio::test]
async fn chunked_body_over_the_body_limit_is_refused() {
    let body = "a".repeat(1500);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    assert_refused_with(
        request.as_bytes(),
        413,
        json!({"limits": {"max_body_bytes": 1000}}),
    )
    .await;
}

#[tokio::test]
async fn content_length_with_chunked_is_refused_and_never_forwarded() {
    // RFC 9112 §6.3: a request with both is how smuggling starts; the proxy
    // refuses it (hyper alone would keep one and carry on), in either order.
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let upstream = support::scripted_upstream(OK_REPLY, support::After::Close).await;
        let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
        let request =
            format!("POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let (out, closed) = support::raw_exchange_until_close(
            proxy.addr,
            request.as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(closed, "connection left open after CL+TE: {text:?}");
        assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
        assert!(
            upstream.requests().is_empty(),
            "forwarded: {:?}",
            upstream.requests()
        );
    }
}

#[tokio::test]
async fn identical_duplicate_content_length_is_refused() {
    let upstream = support::scripted_upstream(OK_REPLY, support::After::Close).await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let request =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello";
    let (out, closed) =
        support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "connection left open: {text:?}");
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Slow clients

#[tokio::test]
async fn unfinished_request_head_is_timed_out() {
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config(
        "web",
        upstream.addr,
        json!({"timeouts": {"request_header": "300ms", "drain": "2s"}}),
    ));
    let start = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: still typing")
        .await
        .expect("write");
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "connection still open after 2 s: {text:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed early"
    );
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "unexpected answer: {text:?}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_head_timeout_and_closes_when_idle() {
    // The head timeout (200 ms) is shorter than the idle one (1.5 s): an
    // idle keep-alive connection is kept for the idle time, not the head
    // time, and closed once that is over.
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config(
        "web",
        upstream.addr,
        json!({"timeouts": {"request_header": "200ms", "idle": "1500ms", "drain": "2s"}}),
    ));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for pause_ms in [0, 500] {
        // The pause is the thing under test: longer than the head timeout.
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let response = support::read_response(&mut stream, &mut buf, false).await;
        assert_eq!(response.status, 200, "after a {pause_ms} ms pause");
    }
    let idle_since = Instant::now();
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "idle connection left open: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(1300) && idle < Duration::from_millis(4500),
        "closed after {idle:?} idle"
    );
}

#[tokio::test]
async fn silent_client_is_timed_out() {
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&support::pool_config(
        "web",
        upstream.addr,
        json!({"timeouts": {"request_header": "300ms", "drain": "2s"}}),
    ));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(2)).await;
    assert!(
        closed,
        "a connection with no bytes is still open after 2 s: {:?}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn response_trailers_reach_a_client_that_accepts_them() {
    // RFC 9110 §6.5: trailers travel with a chunked body; hyper sends them
    // to an HTTP/1.1 client that said `TE: trailers`.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
        support::After::Close,
    )
    .await;
    let proxy = support::proxy(&support::pool_config("web", upstream.addr, json!({})));
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.contains("hello"), "{text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nx-checksum: abc123\r\n"),
        "trailer lost: {text:?}"
    );
    // The upstream was asked with `TE: trailers` too, so it may send them.
    let seen = upstream.requests();
    assert_eq!(support::header_values(&seen[0].head, "te"), ["trailers"]);
}
