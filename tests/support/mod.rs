//! Test helpers: real upstream servers on loopback, a proxy started on a
//! config, and clients. Plain functions, no macros.
#![allow(dead_code)]

pub mod dns;
pub mod h2;
pub mod pki;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use switchyard_proxy::{RouteTable, Routes, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a test upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A test upstream: answers every request with its name as the body and
/// records what it received.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Everything received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

/// Starts an upstream named `name` on 127.0.0.1:0.
///
/// Paths it understands: `/echo` answers with the request body; anything
/// else answers with the name. A `x-reply-header: name=value` request
/// header is copied into the response.
pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = Upstream {
        name: name.to_string(),
        addr,
        seen: seen.clone(),
    };
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    let name = name.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.lock().expect("not poisoned").push(Seen {
                            method: parts.method.clone(),
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts.headers.clone(),
                            body: body.clone(),
                        });
                        let reply = if parts.uri.path() == "/echo" {
                            body
                        } else {
                            Bytes::from(name.clone())
                        };
                        let mut response = Response::new(Full::new(reply));
                        if let Some(extra) = parts.headers.get("x-reply-header") {
                            let text = extra.to_str().unwrap_or_default();
                            if let Some((k, v)) = text.split_once('=') {
                                response.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                    http::HeaderValue::from_str(v).expect("value"),
                                );
                            }
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    upstream
}

/// Reads until the end of a request or response head (`\r\n\r\n`) or EOF.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// A config with one route that splits between `pools` (upstream, basis
/// points); the first pool is the baseline. `route_extra` is merged into
/// the route object (sticky, override, match).
pub fn split_config(pools: &[(&Upstream, i64)], route_extra: Value) -> Value {
    let mut pool_map = serde_json::Map::new();
    let mut weights = serde_json::Map::new();
    for (upstream, weight) in pools {
        pool_map.insert(
            upstream.name.clone(),
            json!({"endpoints": [upstream.addr.to_string()]}),
        );
        weights.insert(upstream.name.clone(), json!(weight));
    }
    let mut route = json!({
        "name": "web",
        "split": {"baseline": pools[0].0.name, "weights": weights},
    });
    if let (Some(route), Value::Object(extra)) = (route.as_object_mut(), route_extra) {
        route.extend(extra);
    }
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": pool_map,
        "routes": [route],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub routes: Routes,
    pub server: Server,
}

/// Starts the proxy (two workers) on a config value.
pub fn proxy(config: &Value) -> TestProxy {
    proxy_with_workers(config, 2)
}

/// Starts the proxy with `workers` workers; with one, every client
/// connection shares one upstream pool.
pub fn proxy_with_workers(config: &Value, workers: usize) -> TestProxy {
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    let routes = Routes::new(RouteTable::build(&config, 1).expect("table builds"));
    let server = Server::start(routes.clone(), &config.listeners, workers).expect("proxy starts");
    TestProxy {
        addr: server.local_addrs()[0],
        routes,
        server,
    }
}

/// Builds a table from a config value, for swaps.
pub fn table(config: &Value, version: u64) -> RouteTable {
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    RouteTable::build(&config, version).expect("table builds")
}

/// An HTTP/1.1 keep-alive client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The `fallback` events the admin API at `admin` has recorded, oldest
/// first.
pub async fn fallbacks(admin: SocketAddr) -> Vec<Value> {
    let (_, _, body) = get(&client(), admin, "/v1/events", &[]).await;
    let events: Value = serde_json::from_str(&body).expect("events");
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "fallback")
        .cloned()
        .collect()
}

/// Sends one GET with extra headers; returns status, headers and body.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, HeaderMap, String) {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = client.request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends a request with `client`; returns the status and the body as text.
pub async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (u16, String) {
    answer(client.request(request).await.expect("response")).await
}

/// A response's status and whole body (lossy UTF-8).
pub async fn answer(response: Response<Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `n` GETs over 8 concurrent keep-alive connections; counts bodies.
pub async fn send_many(addr: SocketAddr, path: &str, n: usize) -> HashMap<String, usize> {
    let client = client();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let path = path.to_string();
        let count = n / 8 + usize::from(worker < n % 8);
        tasks.push(tokio::spawn(async move {
            let mut seen = HashMap::new();
            for _ in 0..count {
                let (status, _, body) = get(&client, addr, &path, &[]).await;
                assert_eq!(status, 200, "body: {body}");
                *seen.entry(body).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut total = HashMap::new();
    for task in tasks {
        for (body, count) in task.await.expect("task") {
            *total.entry(body).or_insert(0) += count;
        }
    }
    total
}

/// Polls `check` every 10 ms until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// A one-pool, one-route config sending everything to `addr` as pool
/// `pool`; the top-level keys of `extra` (`timeouts`, `limits`) replace
/// the defaults.
pub fn pool_config(pool: &str, addr: SocketAddr, extra: Value) -> Value {
    let mut config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {pool: {"endpoints": [addr.to_string()]}},
        "routes": [{"name": "web", "split": {"baseline": pool, "weights": {pool: 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    config
}

/// A proxy whose one pool `pool` is `addr`, with `extra` merged into the
/// config.
pub fn proxy_to(pool: &str, addr: SocketAddr, extra: Value) -> TestProxy {
    proxy(&pool_config(pool, addr, extra))
}

/// Sends `GET / HTTP/1.1` (`Host: x`) on `stream` and reads the answer,
/// keeping extra bytes in `buf`.
pub async fn get_on(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawResponse {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_response(stream, buf, false).await
}

/// What a scripted upstream does once it has written its reply.
#[derive(Clone, Copy, Debug)]
pub enum After {
    /// Closes the connection (FIN).
    Close,
    /// Resets the connection (RST, via `SO_LINGER` 0).
    Reset,
    /// Keeps the connection open until the proxy closes it.
    Hang,
    /// Reads the next request on the connection and answers it the same
    /// way, until the proxy closes the connection.
    Again,
}

/// A request as a raw upstream read it off the wire.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The request line and header fields, with their CRLFs.
    pub head: String,
    /// The body bytes as framed: `Content-Length` bytes, or the chunked
    /// encoding up to and including its last chunk.
    pub body: Vec<u8>,
}

/// A raw upstream that answers one request per connection from a script.
#[derive(Clone)]
pub struct Scripted {
    pub addr: SocketAddr,
    /// Requests read, in order.
    pub requests: Arc<Mutex<Vec<RawRequest>>>,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Connections this upstream has closed or seen closed.
    pub closed: Arc<AtomicUsize>,
}

impl Scripted {
    /// Everything received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().expect("not poisoned").clone()
    }
}

/// Starts a raw upstream: for each connection it reads one request (head
/// and body, by `Content-Length` or chunked framing), writes `reply`
/// verbatim (nothing if empty), then does `after`.
pub async fn scripted_upstream(reply: &'static [u8], after: After) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let scripted = Scripted {
        addr: listener.local_addr().expect("addr"),
        requests: Arc::new(Mutex::new(Vec::new())),
        accepted: Arc::new(AtomicUsize::new(0)),
        closed: Arc::new(AtomicUsize::new(0)),
    };
    let state = scripted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            state.accepted.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let head = read_head(&mut stream).await;
                    if head.is_empty() {
                        break;
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let body = read_framed_body(&mut stream, &head).await;
                    state
                        .requests
                        .lock()
                        .expect("not poisoned")
                        .push(RawRequest { head, body });
                    let _ = stream.write_all(reply).await;
                    if !matches!(after, After::Again) {
                        break;
                    }
                }
                match after {
                    After::Close => {
                        let _ = stream.shutdown().await;
                    }
                    After::Reset => {
                        let _ = stream.set_zero_linger();
                    }
                    After::Again => {}
                    After::Hang => {
                        let mut sink = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                }
                drop(stream);
                state.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    scripted
}

/// Reads a request body framed as `head` says, returning its wire bytes.
async fn read_framed_body(stream: &mut TcpStream, head: &str) -> Vec<u8> {
    let mut body = Vec::new();
    if header_values(head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut buf = [0u8; 8192];
        while decode_chunked(&body).is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    } else if let Some(len) = header_values(head, "content-length").first() {
        let len: usize = len.parse().expect("numeric content-length upstream");
        body.resize(len, 0);
        if stream.read_exact(&mut body).await.is_err() {
            body.clear();
        }
    }
    body
}

/// Values of every `name` field in a raw head (case-insensitive name,
/// values trimmed), in order.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// A raw upstream that answers a WebSocket handshake with `101` and then
/// echoes every byte it gets; records each handshake's head.
pub async fn websocket_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                record
                    .lock()
                    .expect("not poisoned")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, seen)
}

/// A raw upstream that answers every request with a `total`-byte body
/// written in 64 KiB chunks, counting the body bytes the socket accepted.
pub async fn streaming_upstream(total: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len() as u64);
                    if stream.write_all(&chunk[..n as usize]).await.is_err() {
                        return;
                    }
                    left -= n;
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written)
}

/// This process's resident set size in KiB, from `/proc/self/status`.
pub fn vm_rss_kib() -> u64 {
    rss_kib_of("self")
}

/// The resident set of process `pid` (a child), in KiB.
pub fn child_rss_kib(pid: u32) -> u64 {
    rss_kib_of(&pid.to_string())
}

fn rss_kib_of(process: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Writes raw bytes to the proxy and reads until the proxy closes the
/// connection or `deadline` passes; returns the bytes and whether it closed
/// (EOF or reset).
pub async fn raw_exchange_until_close(
    addr: SocketAddr,
    request: &[u8],
    deadline: Duration,
) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let (out, closed) = read_until_close(&mut stream, deadline).await;
    (out, closed)
}

/// Reads until EOF or reset, or until `deadline` passes; returns the bytes
/// and whether the peer closed.
pub async fn read_until_close(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, bool) {
    let end = tokio::time::Instant::now() + deadline;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response's head (text, with its CRLFs) and what follows it, for a
/// body delimited by the connection's close.
pub fn split_head(bytes: &[u8]) -> (String, &[u8]) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)))
        + 4;
    (
        String::from_utf8_lossy(&bytes[..at]).into_owned(),
        &bytes[at..],
    )
}

/// Writes `bytes` in 64 KiB pieces from a task; the count written so far
/// is in the returned counter. The write side then stays open.
pub fn write_in_task(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    let task = tokio::spawn(async move {
        for piece in bytes.chunks(64 * 1024) {
            if write.write_all(piece).await.is_err() {
                return;
            }
            count.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        std::future::pending::<()>().await;
    });
    (written, task)
}

/// A client connection to a proxy in front of a scripted upstream that
/// answers every request with the same reply, and the connection's read
/// buffer.
pub struct Conn {
    pub upstream: Scripted,
    pub proxy: TestProxy,
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    /// A proxy on the config `config` makes for the upstream's address,
    /// and a connection to it (without Nagle's delay).
    pub async fn to(reply: &'static [u8], config: impl FnOnce(SocketAddr) -> Value) -> Conn {
        let upstream = scripted_upstream(reply, After::Again).await;
        let proxy = proxy(&config(upstream.addr));
        let stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            upstream,
            proxy,
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }
}

/// A raw upstream that reads a request head and then everything until
/// the proxy closes the connection, and reports what came after the head.
pub async fn draining_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_upstream(move |mut stream| {
        let report = report.clone();
        async move {
            let _ = read_head(&mut stream).await;
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all).await;
            let _ = report.send(all);
        }
    })
    .await;
    (addr, reports)
}

/// The value of `counter` once it stops moving: read every 500 ms until
/// two reads agree, for at most `limit`. Polled: the event waited for, no
/// more progress, has no signal of its own.
pub async fn until_still(counter: &AtomicU64, limit: Duration) -> u64 {
    let end = tokio::time::Instant::now() + limit;
    let mut last = u64::MAX;
    while tokio::time::Instant::now() < end {
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// A response parsed off the wire.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Status line and fields, with their CRLFs.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Values of every `name` field.
    pub fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

/// Parses one response from the start of `bytes`; `None` if incomplete.
/// Returns it and the bytes it used. A response to HEAD (`is_head`), a 1xx,
/// 204 or 304 has no body; otherwise the body is framed by chunked or
/// `Content-Length` (a body delimited by close is not supported).
pub fn parse_response(bytes: &[u8], is_head: bool) -> Option<(RawResponse, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let rest = &bytes[head_end..];
    if is_head || status < 200 || status == 204 || status == 304 {
        let response = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        return Some((response, head_end));
    }
    let chunked = header_values(&head, "transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    let (body, used) = if chunked {
        decode_chunked(rest)?
    } else {
        let lengths = header_values(&head, "content-length");
        assert_eq!(lengths.len(), 1, "one content-length expected: {head:?}");
        let len: usize = lengths[0].parse().expect("numeric content-length");
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    };
    Some((RawResponse { status, head, body }, head_end + used))
}

/// Parses consecutive responses; `heads[i]` says whether the i-th answers
/// a HEAD. Stops at the first incomplete one.
pub fn parse_responses(mut bytes: &[u8], heads: &[bool]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let is_head = heads.get(out.len()).copied().unwrap_or(false);
        let Some((response, used)) = parse_response(bytes, is_head) else {
            break;
        };
        out.push(response);
        bytes = &bytes[used..];
    }
    out
}

/// Reads one response from `stream`, keeping extra bytes in `buf` for the
/// next call. Panics if the connection closes first or 5 s pass.
pub async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    is_head: bool,
) -> RawResponse {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((response, used)) = parse_response(buf, is_head) {
            buf.drain(..used);
            return response;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before a complete response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Decodes a chunked body at the start of `bytes` (trailers skipped);
/// `None` if incomplete. Returns the data and the bytes used.
pub fn decode_chunked(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&bytes[at..line_end]).expect("ascii chunk size");
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        at = line_end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((data, at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&bytes[at..at + size]);
        assert_eq!(
            &bytes[at + size..at + size + 2],
            b"\r\n",
            "chunk not CRLF-terminated"
        );
        at += size + 2;
    }
}

/// Sends `request` on an HTTP/2 connection; returns the answer's status
/// and body (lossy UTF-8).
pub async fn h2_exchange(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (u16, String) {
    answer(sender.send_request(request).await.expect("response")).await
}

/// Route `name` over one pool of `endpoints` (round robin, no ejection),
/// retrying as `retries` says, on the fast path or not; a response head is
/// waited for 400 ms.
pub fn retry_config(
    name: &str,
    endpoints: &[SocketAddr],
    retries: Value,
    fast_path: bool,
) -> Value {
    let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {
            "endpoints": endpoints,
            "outlier_detection": {"consecutive_failures": 0},
        }},
        "routes": [{
            "name": name,
            "split": {"baseline": "web", "weights": {"web": 10000}},
            "retries": retries,
            "fast_path": fast_path,
        }],
        "timeouts": {"drain": "1s", "connect": "1s", "response_header": "400ms"},
    })
}

/// A series' value in this process's metrics (0 when absent).
pub fn metric(series: &str) -> f64 {
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    sender
}

/// `switchyard run` on the embedded default (the demo's blue and green
/// upstreams) with an admin API, both on free ports, one worker, then
/// `extra`; returns the child, the proxy's and the admin's addresses.
pub async fn start_demo(extra: &[&str]) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    start_binary(&args).await
}

/// Starts the `switchyard` binary and waits until it has printed its
/// data-plane and admin addresses (`http://ADDR` or `https://ADDR` on
/// stdout, in that order).
pub async fn start_binary(args: &[&str]) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    addresses_of(child).await
}

/// As [`start_on_config`] with one worker, and the child's stderr
/// collected (for a test that asserts it never panicked) rather than
/// passed through.
pub async fn start_on_config_capturing(
    file: &std::path::Path,
) -> (
    tokio::process::Child,
    SocketAddr,
    SocketAddr,
    Arc<Mutex<String>>,
) {
    let file = file.to_str().expect("a UTF-8 path");
    let args = [
        "run",
        "--config",
        file,
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    start_binary_capturing(&args).await
}

/// As [`start_binary`], with the child's stderr collected.
pub async fn start_binary_capturing(
    args: &[&str],
) -> (
    tokio::process::Child,
    SocketAddr,
    SocketAddr,
    Arc<Mutex<String>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let stderr = child.stderr.take().expect("stderr");
    let captured = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&captured);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = sink.lock().expect("not poisoned");
            text.push_str(&line);
            text.push('\n');
        }
    });
    let (child, proxy, admin) = addresses_of(child).await;
    (child, proxy, admin, captured)
}

/// Waits until `child` has printed its data-plane and admin addresses.
async fn addresses_of(
    mut child: tokio::process::Child,
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let parse = |line: &str| -> SocketAddr {
        let at = line.find("://").expect("a URL") + 3;
        let addr = line[at..].split(['/', ' ']).next().expect("address");
        addr.parse().expect("socket address")
    };
    let (mut proxy, mut admin) = (None, None);
    while admin.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("switchyard printed its addresses in time")
            .expect("read stdout")
            .expect("switchyard exited early");
        if line.starts_with("Admin API on ") {
            admin = Some(parse(&line));
        } else if proxy.is_none() && line.contains("://") {
            proxy = Some(parse(&line));
        }
    }
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        child,
        proxy.expect("proxy address"),
        admin.expect("admin address"),
    )
}

/// A proxy with its control plane and admin API (state in memory).
pub struct AdminSetup {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub server: Server,
    pub plane: Arc<switchyard_admin::ControlPlane>,
    pub api: Arc<switchyard_admin::AdminApi>,
}

/// Starts a proxy (two workers) and an admin API on `config`.
pub fn admin_setup(config: &Value, token: Option<&str>) -> AdminSetup {
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane =
        switchyard_admin::ControlPlane::start(config.clone(), None, store, state).expect("plane");
    let server = Server::start(plane.routes(), &config.listeners, 2).expect("proxy starts");
    let api = switchyard_admin::AdminApi::new(plane.clone(), token.map(str::to_string));
    let admin = switchyard_admin::server::start("127.0.0.1:0".parse().expect("addr"), api.clone())
        .expect("admin starts");
    AdminSetup {
        proxy: server.local_addrs()[0],
        admin,
        server,
        plane,
        api,
    }
}

/// The HTTP/1.1 client type the helpers use.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Fetches a value every 20 ms until `done` holds for it or `deadline`
/// passes; returns the last value fetched, for the caller to assert on.
pub async fn poll_for<T, F, Fut>(deadline: Duration, mut fetch: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let start = tokio::time::Instant::now();
    loop {
        let value = fetch().await;
        if done(&value) || start.elapsed() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `PUT /v1/config` with `body`; the status and the JSON answer.
pub async fn put_config(admin: SocketAddr, body: String) -> (u16, Value) {
    let request = http::Request::put(format!("http://{admin}/v1/config"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let (status, body) = exchange(&client(), request).await;
    (status, serde_json::from_str::<Value>(&body).expect("JSON"))
}

/// A fuzz campaign's knob: the environment variable `name` (decimal, or
/// hex with `0x`), else `default`. `FUZZ_SEED`, `FUZZ_CASES`, `FUZZ_ONLY`.
pub fn fuzz_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        })
        .unwrap_or(default)
}

/// An empty directory of this test process's own, named after `name`.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The lines of the JSON-lines file at `path` (an access log), each
/// parsed: a line that is not JSON fails the test.
pub fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Waits (10 s at most) until the file at `path` holds `n` JSON lines
/// (the access log's workers write within a second); returns them.
pub async fn wait_for_json_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(10), || {
        found = json_lines(path);
        found.len() >= n
    })
    .await;
    found
}

/// A loopback address that refuses connections for as long as the
/// returned socket lives: bound and not listening, so no other test's
/// listener can take its port meanwhile (as it can a `free_port`'s).
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

/// Runs the binary on the config file `file`, with the admin API on a free
/// loopback port: the child, the first listener and the admin address.
pub async fn start_on_config(
    file: &std::path::Path,
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let file = file.to_str().expect("a UTF-8 path");
    start_binary(&["run", "--config", file, "--admin", "127.0.0.1:0"]).await
}

/// Writes `files` into `dir` as Kubernetes' atomic writer does for a
/// ConfigMap or Secret: into a new timestamped directory, made current by
/// renaming a `..data` symlink over the old one, whose directory is then
/// deleted. Generation 0 also links each name to `..data/NAME`.
pub fn kubernetes_write(dir: &std::path::Path, generation: usize, files: &[(&str, &[u8])]) {
    use std::os::unix::fs::symlink;
    let target = dir.join(format!("..2026_11_26_{generation}"));
    std::fs::create_dir(&target).expect("dir");
    for (name, contents) in files {
        std::fs::write(target.join(name), contents).expect("write");
    }
    let staged = dir.join("..data_tmp");
    symlink(target.file_name().expect("name"), &staged).expect("symlink");
    std::fs::rename(&staged, dir.join("..data")).expect("swap");
    match generation {
        0 => {
            for (name, _) in files {
                symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
            }
        }
        _ => {
            let old = dir.join(format!("..2026_11_26_{}", generation - 1));
            std::fs::remove_dir_all(old).expect("old generation");
        }
    }
}

/// A listener whose accept queue is full (backlog 0, one connection
/// queued): the kernel drops a connecting SYN until the queue has room,
/// and the connecting side sends it again 1 s later. A connect to it
/// hangs until the listener accepts. Returns the listener, the queued
/// connection and the address.
pub async fn full_listener() -> (TcpListener, TcpStream, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let filler = TcpStream::connect(addr).await.expect("filler connects");
    (listener, filler, addr)
}

/// `switchyard check FILE`: whether it passed, its stdout and stderr.
pub fn check_file(path: &std::path::Path) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(path)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .expect("run switchyard check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One admin API call with `headers` and a text `body`: the status, the
/// headers and the body as text.
pub async fn admin_call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::StatusCode, HeaderMap, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = client().request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A raw upstream on an ephemeral loopback port: each connection it
/// accepts is served by `serve` in a task of its own.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Requests sent to a proxy at a fixed rate, whatever the answers take
/// (open loop), until dropped. `failed` counts answers that failed at the
/// client: a transport error or a body cut short.
pub struct Load {
    pub sent: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts sending `rate` GET / a second to `proxy`.
pub fn open_loop(proxy: SocketAddr, rate: u32) -> Load {
    let load = Load {
        sent: Arc::new(AtomicUsize::new(0)),
        failed: Arc::new(AtomicUsize::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let (stop, sent, failed) = (load.stop.clone(), load.sent.clone(), load.failed.clone());
    tokio::spawn(async move {
        let client = client();
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            interval.tick().await;
            sent.fetch_add(1, Ordering::Relaxed);
            let client = client.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let request = Request::get(format!("http://{proxy}/"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let ok = match client.request(request).await {
                    Ok(response) => response.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    load
}

/// An upstream whose added latency and error share (per mille) can be
/// changed while it runs; answers with its name.
#[derive(Clone)]
pub struct Knob {
    pub addr: SocketAddr,
    pub delay_ms: Arc<AtomicU32>,
    pub error_permille: Arc<AtomicU32>,
    pub served: Arc<AtomicUsize>,
}

pub async fn knob_upstream(name: &str) -> Knob {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let knob = Knob {
        addr: listener.local_addr().expect("addr"),
        delay_ms: Arc::new(AtomicU32::new(0)),
        error_permille: Arc::new(AtomicU32::new(0)),
        served: Arc::new(AtomicUsize::new(0)),
    };
    let state = knob.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let state = state.clone();
                    let name = name.clone();
                    async move {
                        let delay = state.delay_ms.load(Ordering::Relaxed);
                        if delay > 0 {
                            // Simulated service time, not synchronisation.
                            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                        }
                        let n = state.served.fetch_add(1, Ordering::Relaxed) as u32;
                        let mut response = Response::new(Full::new(Bytes::from(name)));
                        if n % 1000 < state.error_permille.load(Ordering::Relaxed) {
                            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    knob
}
