//! Second differential review of the request paths: the same request,
//! served by the HTTP/1.1 fast path, hyper's HTTP/1.1 path, the HTTP/2
//! raw path and the HTTP/2 path through `Proxy::handle` — in plaintext and
//! over TLS — must be routed the same, reach the upstream the same and
//! come back the same. Each test failed on the code it was written
//! against. (A request leaves the fast path here by naming, in
//! `Connection`, a field it does not have; an HTTP/2 request goes through
//! `Proxy::handle` with `te: trailers`.)

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::After;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer, whichever protocol carried it.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// Field names lower case, in order (shown when a test fails).
    #[allow(dead_code)]
    fields: Vec<(String, String)>,
    body: String,
}

/// Writes `request` on `stream` and reads until the proxy closes it (5 s
/// at most); parses the one answer.
async fn h1_on<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Answer {
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    parse_h1(&out)
}

fn parse_h1(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Answer {
            status: 0,
            fields: Vec::new(),
            body: text,
        };
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = fields
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        support::decode_chunked(rest.as_bytes())
            .map(|(d, _)| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_else(|| rest.to_string())
    } else {
        rest.to_string()
    };
    Answer {
        status,
        fields,
        body,
    }
}

/// One HTTP/2 request on `stream` (prior knowledge or ALPN h2).
async fn h2_on<S>(stream: S, request: http::Request<Full<Bytes>>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status.as_u16(),
        fields: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The four paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Fast,
    Hyper,
    H2Raw,
    H2Handled,
}

const PATHS: [Path; 4] = [Path::Fast, Path::Hyper, Path::H2Raw, Path::H2Handled];

/// A request, as each path is to carry it.
struct Req<'a> {
    method: &'a str,
    host: &'a str,
    target: &'a str,
    fields: &'a [(&'a str, &'a str)],
}

impl Req<'_> {
    fn get<'a>(host: &'a str, target: &'a str) -> Req<'a> {
        Req {
            method: "GET",
            host,
            target,
            fields: &[],
        }
    }

    fn h1_bytes(&self, path: Path) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.target, self.host
        );
        for (n, v) in self.fields {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        match path {
            Path::Fast => out.push_str("Connection: close\r\n"),
            _ => out.push_str("Connection: close, x-unused\r\n"),
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn h2_request(&self, path: Path, scheme: &str) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(format!("{scheme}://{}{}", self.host, self.target));
        for (n, v) in self.fields {
            request = request.header(*n, *v);
        }
        if path == Path::H2Handled {
            request = request.header("te", "trailers");
        }
        request.body(Full::new(Bytes::new())).expect("request")
    }
}

/// Sends `req` on `path` to a plaintext proxy.
async fn send(proxy: SocketAddr, path: Path, req: &Req<'_>) -> Answer {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    match path {
        Path::Fast | Path::Hyper => h1_on(stream, &req.h1_bytes(path)).await,
        Path::H2Raw | Path::H2Handled => h2_on(stream, req.h2_request(path, "http")).await,
    }
}

/// The message of a proxy's error body, without the detail of the library
/// that saw the fault (the part in parentheses).
fn message(body: &str) -> String {
    body.split(" (")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn ok_upstream_reply() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
}

// ---------------------------------------------------------------------------
// The same upstream fault, the same answer

#[tokio::test]
async fn a_response_head_with_too_many_fields_gets_the_same_message_on_every_path() {
    // An upstream answer with 120 header fields (under 64 KiB): every path
    // refuses it with 502, as it should (hyper's client and the fast path
    // both take 100 fields at most, as Envoy's max_headers_count). But the
    // fast path and the HTTP/2 raw path said "upstream sent too many
    // header fields", while hyper's path (the same request leaving the
    // fast path, or HTTP/2 through `Proxy::handle`) said "upstream sent a
    // malformed response … (message head is too large)". Same fault, same
    // status: the same message, as for an upstream that closes unanswered
    // (paths_edges).
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    for i in 0..120 {
        reply.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
    }
    reply.extend_from_slice(b"\r\nok");
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    let upstream = support::scripted_upstream(reply, After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));

    let mut got = Vec::new();
    for path in PATHS {
        got.push((
            path,
            send(proxy.addr, path, &Req::get("app.test", "/p")).await,
        ));
    }
    let first = message(&got[0].1.body);
    assert!(first.starts_with("upstream sent "), "{:?}", got[0]);
    let wrong: Vec<String> = got
        .iter()
        .filter(|(_, answer)| answer.status != 502 || message(&answer.body) != first)
        .map(|(path, answer)| format!("{path:?}: {} {:?}", answer.status, answer.body))
        .collect();
    assert!(
        wrong.is_empty(),
        "the fast path says {first:?}; the others: {wrong:#?}"
    );
}

// ---------------------------------------------------------------------------
// Limits

/// Sends `GET /p` with `Host: app.test` and `fields` on a new connection,
/// as the fast path takes it (no Connection field), and reads the answer.
async fn h1_keep_alive(proxy: SocketAddr, fields: &[(String, String)]) -> u16 {
    let mut request = "GET /p HTTP/1.1\r\nHost: app.test\r\n".to_string();
    for (name, value) in fields {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    support::read_response(&mut stream, &mut buf, false)
        .await
        .status
}

#[tokio::test]
async fn the_field_limit_counts_the_authority_as_the_host_it_becomes() {
    // limits.max_headers = 10. Over HTTP/1.1, `Host` and 9 more fields pass
    // and `Host` and 10 more get 431 (hyper's max_headers; the fast path
    // hands such a head to hyper). Over HTTP/2 the same request is
    // `:authority` and the same 10 fields, and only regular fields were
    // counted: it passed, and went upstream with Host and the 10 fields —
    // a head the HTTP/1.1 listener refuses. `:authority` is
    // the request's Host (RFC 9113 §8.3.1: it stands in for the Host
    // field, and the proxy writes it upstream as one), so it must count
    // as Host counts: the same request must get the same 431 over either
    // protocol. (Envoy counts the same head the same way on both, its
    // HTTP/1.1 Host being its :authority.)
    let upstream = support::scripted_upstream(ok_upstream_reply(), After::Again).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({"limits": {"max_headers": 10}}));
    let fields = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("x-f{i}"), "v".to_string()))
            .collect()
    };

    assert_eq!(h1_keep_alive(proxy.addr, &fields(9)).await, 200);
    assert_eq!(h1_keep_alive(proxy.addr, &fields(10)).await, 431);

    let ten = fields(10);
    let refs: Vec<(&str, &str)> = ten.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let req = Req {
        method: "GET",
        host: "app.test",
        target: "/p",
        fields: &refs,
    };
    let before = upstream.requests().len();
    let answer = send(proxy.addr, Path::H2Raw, &req).await;
    let forwarded = upstream.requests().len() > before;
    assert_eq!(
        answer.status, 431,
        "HTTP/2 `:authority` and 10 fields (forwarded: {forwarded}); \
         the same request over HTTP/1.1 got 431: {answer:?}"
    );
}
