//! Routing and upstream TLS at their edges, from a review: a path is
//! matched as RFC 3986 normalizes it (percent-encoded unreserved bytes,
//! dot segments) on all three paths, so `..` cannot reach one route's
//! upstream path through another route's rules; an HTTP/2 request with no
//! authority is refused; HTTP/2 cookie crumbs go upstream as one field on
//! every path; a CA file replaced at the same path applies to the next
//! request, pooled connections or not. Loopback sockets and upstreams
//! started here.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use switchyard_proxy::tls::provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------- helpers

/// One raw HTTP/1.1 request on a fresh connection; returns status and body.
async fn raw_h1(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let response = support::read_response(&mut stream, &mut buf, false).await;
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

/// The HTTP/1.1 fast path: a plain GET.
async fn fast_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw_h1(addr, &request).await
}

/// Hyper's HTTP/1.1 path: the same GET with `TE: trailers`, which the fast
/// path leaves to hyper.
async fn hyper_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    raw_h1(addr, &request).await
}

/// HTTP/2 with prior knowledge: one GET with `extra` fields.
async fn h2_get(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut request = http::Request::get(format!("http://x{target}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    support::h2_exchange(&mut sender, request).await
}

/// A config with one pool per upstream (named as it) and `routes`.
fn routes_config(pools: &[&support::Upstream], routes: Value) -> Value {
    let mut map = serde_json::Map::new();
    for upstream in pools {
        map.insert(
            upstream.name.clone(),
            json!({"endpoints": [upstream.addr.to_string()]}),
        );
    }
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": map,
        "routes": routes,
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

fn route(name: &str, matcher: Value, to: &str) -> Value {
    json!({"name": name, "match": matcher, "split": {"baseline": to, "weights": {to: 10000}}})
}

/// `admin` for paths under /admin, `api` under /api/, `other` else.
async fn path_routed_proxy() -> (support::TestProxy, [support::Upstream; 3]) {
    let api = support::upstream("api").await;
    let admin = support::upstream("admin").await;
    let other = support::upstream("other").await;
    let config = routes_config(
        &[&api, &admin, &other],
        json!([
            route("admin", json!({"path_prefix": "/admin/"}), "admin"),
            route("api", json!({"path_prefix": "/api/"}), "api"),
            route("other", json!({}), "other"),
        ]),
    );
    (support::proxy(&config), [api, admin, other])
}

// ------------------------------------------------------------- routing

/// `/%61pi/x` is the same URI as `/api/x`: `a` is unreserved, and RFC 3986
/// §6.2.2.2 / RFC 9110 §4.2.3 make a percent-encoded unreserved octet
/// equivalent to the octet (nginx decodes before matching locations). The
/// upstream serves it as /api/x, yet the route for /api/ is not taken, on
/// any of the three paths.
#[tokio::test]
async fn percent_encoded_unreserved_bytes_match_the_path_rule_they_spell() {
    let (proxy, _upstreams) = path_routed_proxy().await;
    let addr = proxy.addr;
    assert_eq!(
        fast_get(addr, "/%61pi/x").await,
        (200, "api".into()),
        "fast path"
    );
    assert_eq!(
        hyper_get(addr, "/%61pi/x").await,
        (200, "api".into()),
        "hyper path"
    );
    assert_eq!(
        h2_get(addr, "/%61pi/x", &[]).await,
        (200, "api".into()),
        "HTTP/2"
    );
    proxy.server.shutdown();
}

/// `/api/../admin/x` names /admin/x (RFC 3986 §5.2.4 / §6.2.2.3; nginx
/// resolves dot segments before matching, Envoy with normalize_path). The
/// proxy matches the raw string, so the request goes to the /api/ route's
/// pool, which serves /admin/x: the /admin/ route (its pool, its split,
/// its header and method rules) is bypassed.
#[tokio::test]
async fn dot_segments_are_resolved_before_path_rules_match() {
    let (proxy, _upstreams) = path_routed_proxy().await;
    let addr = proxy.addr;
    for target in ["/api/../admin/x", "/api/%2e%2e/admin/x"] {
        assert_eq!(
            fast_get(addr, target).await,
            (200, "admin".into()),
            "fast path {target}"
        );
        assert_eq!(
            hyper_get(addr, target).await,
            (200, "admin".into()),
            "hyper path {target}"
        );
        assert_eq!(
            h2_get(addr, target, &[]).await,
            (200, "admin".into()),
            "HTTP/2 {target}"
        );
    }
    proxy.server.shutdown();
}

fn h2_frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of literals without indexing (RFC 7541 §6.2.2).
fn h2_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Sends one HTTP/2 request head (END_STREAM) with exactly `fields` on a
/// raw connection and waits for the proxy's answer to it: the kind of the
/// first frame for stream 1 (HEADERS or RST_STREAM), or a GOAWAY.
async fn raw_h2(addr: SocketAddr, fields: &[(&str, &str)]) -> u8 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    out.extend(h2_frame(1, 0x5, 1, &h2_block(fields)));
    stream.write_all(&out).await.expect("write");
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
            .await
            .expect("a frame within 5 s")
            .expect("read");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == 7 || (id == 1 && (head[3] == 1 || head[3] == 3)) {
            return head[3];
        }
    }
}

/// RFC 9113 §8.3.1: an `http`/`https` request MUST carry `:authority` or
/// `Host`; without either it is malformed. HTTP/1.1 without `Host` gets
/// 400 here, but an HTTP/2 request without both is routed as host "" and
/// sent upstream as an HTTP/1.1 request with no `Host` at all (RFC 9112
/// §3.2 violation), GET and POST alike.
#[tokio::test]
async fn an_http2_request_without_authority_or_host_is_not_forwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy(&support::split_config(&[(&upstream, 10_000)], json!({})));
    // Control: HTTP/1.1 without Host is refused.
    let (status, _) = raw_h1(proxy.addr, "GET /h1 HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400);
    for method in ["GET", "POST"] {
        let fields = [
            (":method", method),
            (":scheme", "http"),
            (":path", "/no-host"),
        ];
        // The answer (a 400, a reset or a forwarded reply) comes after the
        // upstream would have seen the request.
        raw_h2(proxy.addr, &fields).await;
    }
    let forwarded: Vec<_> = upstream
        .requests()
        .iter()
        .map(|seen| {
            (
                seen.method.to_string(),
                seen.uri.clone(),
                seen.headers.get("host").cloned(),
            )
        })
        .collect();
    assert!(
        forwarded.is_empty(),
        "malformed HTTP/2 requests went upstream without a Host: {forwarded:?}"
    );
    proxy.server.shutdown();
}

/// RFC 9113 §8.3.1: a `host` that names another entity than `:authority`
/// makes the request malformed. Routing by one while the upstream goes by
/// the other is how a request slips past a host's rules.
#[tokio::test]
async fn an_http2_request_whose_host_differs_from_its_authority_is_not_forwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy(&support::split_config(&[(&upstream, 10_000)], json!({})));
    for (path, host) in [("/differs", "admin.internal"), ("/same", "APP.example")] {
        let fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "app.example"),
            (":path", path),
            ("host", host),
        ];
        raw_h2(proxy.addr, &fields).await;
    }
    let forwarded: Vec<_> = upstream
        .requests()
        .iter()
        .map(|seen| seen.uri.clone())
        .collect();
    assert_eq!(forwarded, ["/same"], "{forwarded:?}");
    proxy.server.shutdown();
}

/// RFC 9113 §8.2.3: HTTP/2 cookie crumbs MUST be joined with "; " before
/// going on over HTTP/1.1. The raw HTTP/2 path joins them; a request that
/// goes through hyper's path (here because of `TE: trailers`; also a body
/// over 64 KiB, trailers, `Expect`, or a route whose fast path is off) reaches the
/// upstream with several `Cookie` lines.
#[tokio::test]
async fn http2_cookie_crumbs_are_joined_on_every_path() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy(&support::split_config(&[(&upstream, 10_000)], json!({})));
    let crumbs = [("cookie", "a=1"), ("cookie", "b=2")];
    h2_get(proxy.addr, "/raw-path", &crumbs).await;
    h2_get(
        proxy.addr,
        "/hyper-path",
        &[crumbs[0], crumbs[1], ("te", "trailers")],
    )
    .await;
    for seen in upstream.requests() {
        let cookies: Vec<_> = seen.headers.get_all("cookie").iter().cloned().collect();
        assert_eq!(cookies, ["a=1; b=2"], "{}", seen.uri);
    }
    proxy.server.shutdown();
}

// ------------------------------------------------------------- TLS

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

struct Leaf {
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf");
        Leaf {
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-routing-tls-review-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// An HTTPS/1.1 upstream presenting `leaf` that answers `name`.
async fn tls_upstream(name: &'static str, leaf: &Leaf) -> SocketAddr {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |_: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(name),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A reload that changes what a TLS pool trusts (new contents of its
/// `ca_file`, same path) must apply to the next request. Pooled upstream
/// connections are keyed by a hash of the CA file's *path*, so the
/// connection verified under the old CA keeps serving: requests go to an
/// upstream the live config no longer trusts (a fresh proxy on the same
/// config gets the 502 every request should get).
#[tokio::test]
async fn a_reloaded_ca_file_is_not_bypassed_by_pooled_connections() {
    let dir = temp_dir("ca-reload");
    let trusted = Ca::new("upstream CA");
    let revoked_trust = Ca::new("another CA");
    let addr = tls_upstream("backend", &trusted.leaf(&["backend.internal"])).await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, trusted.cert.pem()).expect("write CA");
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"app": {"endpoints": [addr.to_string()],
                           "tls": {"server_name": "backend.internal", "ca_file": ca_file}}},
        "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    // One worker: its pool holds the upstream connection.
    let proxy = support::proxy_with_workers(&config, 1);
    let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_h1(proxy.addr, request).await, (200, "backend".into()));

    // The operator stops trusting the upstream's CA and reloads.
    std::fs::write(&ca_file, revoked_trust.cert.pem()).expect("write CA");
    proxy.routes.replace(support::table(&config, 2));

    // Control: the new settings refuse this upstream.
    let fresh = support::proxy_with_workers(&config, 1);
    let (status, body) = raw_h1(fresh.addr, request).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    fresh.server.shutdown();

    let (status, body) = raw_h1(proxy.addr, request).await;
    assert_eq!(
        (status, body.contains("UnknownIssuer")),
        (502, true),
        "served over a connection the reloaded config does not trust: {status} {body}"
    );
    proxy.server.shutdown();
}

/// An empty `:authority` beside `host: app.test` was routed as a request
/// without a host (to the catch-all route, with an empty `Host` upstream)
/// on HTTP/2's raw path, and refused on its other path.
#[tokio::test]
async fn an_empty_authority_beside_a_host_is_refused_not_routed_as_no_host() {
    // RFC 9113 §8.3.1: for http and https, `:authority` and `host` "MUST
    // NOT be empty" when present; such a request is malformed (§8.1.1) and
    // an intermediary must not forward it.
    let app = support::upstream("app").await;
    let other = support::upstream("other").await;
    let pool = |u: &support::Upstream| json!({"endpoints": [u.addr.to_string()]});
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"app": pool(&app), "other": pool(&other)},
        "routes": [
            {"name": "app", "match": {"host": "app.test"},
             "split": {"baseline": "app", "weights": {"app": 10000}}},
            {"name": "other", "split": {"baseline": "other", "weights": {"other": 10000}}},
        ],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    let proxy = support::proxy(&config);
    let answer = raw_h2(
        proxy.addr,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", ""),
            (":path", "/p"),
            ("host", "app.test"),
        ],
    )
    .await;
    let forwarded: Vec<String> = app
        .requests()
        .iter()
        .chain(other.requests().iter())
        .map(|seen| format!("{:?}", seen.headers))
        .collect();
    assert!(
        forwarded.is_empty(),
        "a malformed request (empty :authority) was forwarded: app got {}, other got {}: {forwarded:?}",
        app.requests().len(),
        other.requests().len(),
    );
    // RST_STREAM, as for every other malformed head.
    assert_eq!(answer, 3, "answered with frame type {answer}");
}
