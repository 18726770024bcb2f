//! Test helpers: real upstream servers on loopback, a proxy started on a
//! config, and clients. Plain functions, no macros.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A raw TCP upstream: for each connection, reads one request head (and
/// nothing more), records the raw bytes, and writes `reply` verbatim.
/// `reply` of `None` closes the connection without answering.
pub async fn raw_upstream(reply: Option<&'static [u8]>) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
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
                record.lock().expect("not poisoned").push(head);
                if let Some(reply) = reply {
                    let _ = stream.write_all(reply).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
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
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    let routes = Routes::new(RouteTable::build(&config, 1).expect("table builds"));
    let server = Server::start(routes.clone(), &config.listeners, 2).expect("proxy starts");
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

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
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

/// Writes raw bytes to the proxy and reads everything it sends back until
/// it closes the connection (or 5 s pass with nothing more to read).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
