//! TLS end to end over loopback, with certificates made here by rcgen:
//! SNI choice (exact, wildcard, default, none), TLS 1.2/1.3 only, ALPN h2
//! and http/1.1 routing, X-Forwarded-Proto, certificate hot reload, TLS
//! to upstreams (verification, mTLS) and the admin API over mutual TLS.

use crate::support;

use support::pki::{
    admin_serves, client_config, client_config_with_cert, get_h1, handshake, handshake_shared,
    presented, replace_file, send, start_tls_proxy, temp_dir, text, tls_config, write_leaf, Ca,
    Leaf,
};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::ClientConfig;
use serde_json::{json, Value};
use switchyard_proxy::tls::{provider, TlsTerminator};
use switchyard_proxy::{Listen, RouteTable, Routes, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default_certificates() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("sni");
    let exact = ca.leaf(&["api.example.com"]);
    let wildcard = ca.leaf(&["*.example.org"]);
    let fallback = ca.leaf(&["fallback.example.net", "127.0.0.1"]);
    let (exact_cert, exact_key) = write_leaf(&dir, "exact", &exact);
    let (wild_cert, wild_key) = write_leaf(&dir, "wild", &wildcard);
    let (fallback_cert, fallback_key) = write_leaf(&dir, "fallback", &fallback);
    let config = tls_config(
        &upstream,
        json!([
            {"cert_file": exact_cert, "key_file": exact_key},
            {"cert_file": wild_cert, "key_file": wild_key},
            {"cert_file": fallback_cert, "key_file": fallback_key, "default": true},
        ]),
    );
    let (server, addr, _) = start_tls_proxy(&config);
    let cert_for = |sni: &'static str| {
        let roots = ca.roots();
        async move {
            let stream = handshake(addr, sni, client_config(roots, &[]))
                .await
                .expect("handshake");
            presented(&stream)
        }
    };

    assert_eq!(cert_for("api.example.com").await, exact.der);
    assert_eq!(
        cert_for("API.Example.com").await,
        exact.der,
        "SNI is case-blind"
    );
    assert_eq!(cert_for("www.example.org").await, wildcard.der);
    // No SNI at all (an IP address is never sent as SNI): the default,
    // which here also names 127.0.0.1.
    assert_eq!(cert_for("127.0.0.1").await, fallback.der);
    // A wildcard covers one label only, as in RFC 6125: a.b.example.org
    // gets the default, whose names do not include it.
    let err = handshake(addr, "a.b.example.org", client_config(ca.roots(), &[]))
        .await
        .expect_err("the default's names do not match");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    server.shutdown();

    // Without a default, a client without a known name gets a clean
    // handshake failure (an alert), not a wrong certificate.
    let config = tls_config(
        &upstream,
        json!([{"cert_file": exact_cert, "key_file": exact_key}]),
    );
    let (server, addr, _) = start_tls_proxy(&config);
    let err = handshake(addr, "other.example.com", client_config(ca.roots(), &[]))
        .await
        .expect_err("no certificate for this name");
    assert!(
        err.to_string().contains("received fatal alert"),
        "a TLS alert, got: {err}"
    );
    let stream = handshake(addr, "api.example.com", client_config(ca.roots(), &[]))
        .await
        .expect("the listed name still works");
    assert_eq!(presented(&stream), exact.der);
    server.shutdown();
}

/// A TLS 1.0 or 1.1 ClientHello (legacy version 3.`minor`, no
/// supported_versions extension), with the CBC suites such a client offers.
fn old_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor]; // client_version: 3.1 is TLS 1.0, 3.2 TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("versions");
    let leaf = ca.leaf(&["api.example.com"]);
    let (cert, key) = write_leaf(&dir, "api", &leaf);
    let config = tls_config(
        &upstream,
        json!([{"cert_file": cert, "key_file": key, "default": true}]),
    );
    let (server, addr, _) = start_tls_proxy(&config);

    for (version, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let config = ClientConfig::builder_with_provider(Arc::clone(provider()))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        let config = Arc::new(config);
        let stream = handshake_shared(addr, "api.example.com", Arc::clone(&config))
            .await
            .expect("handshake");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // A request lets the client read the session ticket (TLS 1.3
        // sends it after the handshake); the next connection resumes.
        let (status, _) = get_h1(stream, "api.example.com", "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        let again = handshake_shared(addr, "api.example.com", config)
            .await
            .expect("second handshake");
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{expected:?} resumes"
        );
    }

    // rustls cannot offer TLS 1.0 or 1.1, so hand-made ClientHellos do:
    // the proxy answers each with a fatal alert and no ServerHello.
    for minor in [1, 2] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&old_client_hello(minor))
            .await
            .expect("send hello");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(answer.len() >= 7, "an alert record, got {answer:?}");
        assert_eq!(answer[0], 0x15, "an alert, not a ServerHello: {answer:?}");
        assert_eq!(answer[5], 2, "a fatal alert: {answer:?}");
        // protocol_version (70) or handshake_failure (40): either refuses.
        assert!(
            [70, 40].contains(&answer[6]),
            "3.{minor}: alert {}",
            answer[6]
        );
    }
    server.shutdown();
}

#[tokio::test]
async fn h2_and_http1_over_tls_route_and_say_https() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("alpn");
    let leaf = ca.leaf(&["api.example.com"]);
    let (cert, key) = write_leaf(&dir, "api", &leaf);
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let (server, addr, _) = start_tls_proxy(&config);

    // ALPN h2: HTTP/2 over TLS, routed like h2c.
    let stream = handshake(
        addr,
        "api.example.com",
        client_config(ca.roots(), &["h2", "http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::get("https://api.example.com/over-h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(text(response).await, "app");

    // ALPN http/1.1.
    let stream = handshake(
        addr,
        "api.example.com",
        client_config(ca.roots(), &["http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get_h1(stream, "api.example.com", "/over-h1", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));

    // ALPN http/1.1, then HTTP/2 anyway: the connection is HTTP/1.1, as
    // agreed (RFC 7301), so the preface is a malformed HTTP/1.1 request,
    // refused with a 4xx and never forwarded.
    let stream = handshake(
        addr,
        "api.example.com",
        client_config(ca.roots(), &["http/1.1"]),
    )
    .await
    .expect("handshake");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake (the client side)");
    tokio::spawn(connection);
    let request = Request::get("https://api.example.com/h2-after-http1-alpn")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer or an error within 10 s");
    assert!(answer.is_err(), "served as HTTP/2: {answer:?}");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            request.headers["x-forwarded-proto"], "https",
            "{}",
            request.uri
        );
        let forwarded = request.headers["forwarded"].to_str().expect("ascii");
        assert!(forwarded.contains("proto=https"), "{forwarded}");
    }
    server.shutdown();
}

/// Writes a new leaf for api.example.com over `cert` and `key`; the leaf,
/// and whether handshakes with `addr` present it within 10 s.
async fn replace_leaf(ca: &Ca, cert: &Path, key: &Path, addr: SocketAddr) -> (Leaf, bool) {
    let new = ca.leaf(&["api.example.com"]);
    replace_file(key, &new.key_pem);
    replace_file(cert, &new.cert_pem);
    let served = serves_within_10_s(ca, addr, &new).await;
    (new, served)
}

/// Whether handshakes with `addr` for api.example.com present `leaf`
/// within 10 s.
async fn serves_within_10_s(ca: &Ca, addr: SocketAddr, leaf: &Leaf) -> bool {
    let seen = support::poll_for(
        Duration::from_secs(10),
        || async {
            let config = client_config(ca.roots(), &[]);
            let stream = handshake(addr, "api.example.com", config).await;
            stream.map(|s| presented(&s)).ok()
        },
        |der| der.as_ref() == Some(&leaf.der),
    )
    .await;
    seen.as_ref() == Some(&leaf.der)
}

/// A proxy with a control plane whose TLS listener's certificate files
/// are watched: the plane, the server, its address and the watch.
fn start_watched(config: &Value) -> Watched {
    let parsed = switchyard_config::parse(&config.to_string()).expect("valid");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane =
        switchyard_admin::ControlPlane::start(parsed.clone(), None, store, state).expect("plane");
    let terminator = Arc::new(TlsTerminator::load(&parsed.tls[0]).expect("loads"));
    let listen: Vec<Listen> = vec![(parsed.listeners[0], Some(Arc::clone(&terminator)))];
    let server = Server::start_with_tls(plane.routes(), &listen, 1).expect("proxy starts");
    let addr = server.local_addrs()[0];
    let watch = switchyard_admin::watch::watch_certificates(Arc::clone(&plane), vec![terminator])
        .expect("watch");
    (plane, server, addr, watch)
}

type Watched = (
    Arc<switchyard_admin::ControlPlane>,
    Server,
    SocketAddr,
    switchyard_admin::watch::CertificateWatch,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("reload");
    let old = ca.leaf(&["api.example.com"]);
    let (cert, key) = write_leaf(&dir, "api", &old);
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let (plane, server, addr, _watch) = start_watched(&config);

    let client = || client_config(ca.roots(), &[]);
    let stream = handshake(addr, "api.example.com", client())
        .await
        .expect("handshake");
    assert_eq!(presented(&stream), old.der);
    let (mut open, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1");
    tokio::spawn(connection);
    assert_eq!(
        send(&mut open, "api.example.com", "/", &[]).await.0,
        StatusCode::OK
    );

    // A new certificate and key: new handshakes get it.
    let (new, served) = replace_leaf(&ca, &cert, &key, addr).await;
    assert!(served, "the new certificate is served");
    // The connection opened before the reload still works.
    assert_eq!(
        send(&mut open, "api.example.com", "/", &[]).await.0,
        StatusCode::OK
    );
    let events = plane.events().since(0);
    assert!(
        events.iter().any(|e| e.kind == "certificate_reload"),
        "{events:?}"
    );

    // A certificate whose key is not the one on disk: refused, with an
    // event that says why; the current certificate stays.
    let stranger = ca.leaf(&["api.example.com"]);
    replace_file(&cert, &stranger.cert_pem);
    let rejected = support::poll_for(
        Duration::from_secs(10),
        || async { plane.events().since(0) },
        |events| events.iter().any(|e| e.kind == "certificate_rejected"),
    )
    .await;
    let event = rejected
        .iter()
        .find(|e| e.kind == "certificate_rejected")
        .expect("a certificate_rejected event");
    assert!(
        event.reason.contains("pairing the private key"),
        "{}",
        event.reason
    );
    assert!(
        event.reason.contains("api.key"),
        "names the file: {}",
        event.reason
    );
    let stream = handshake(addr, "api.example.com", client())
        .await
        .expect("handshake");
    assert_eq!(
        presented(&stream),
        new.der,
        "the last good certificate stays"
    );

    // A file that is not PEM at all: refused too.
    replace_file(&cert, "not a certificate\n");
    let rejected = support::poll_for(
        Duration::from_secs(10),
        || async { plane.events().since(0) },
        |events| {
            events
                .iter()
                .filter(|e| e.kind == "certificate_rejected")
                .count()
                >= 2
        },
    )
    .await;
    let last = rejected.last().expect("event");
    assert_eq!(last.kind, "certificate_rejected");
    assert!(last.reason.contains("api.pem"), "{}", last.reason);
    let stream = handshake(addr, "api.example.com", client())
        .await
        .expect("handshake");
    assert_eq!(presented(&stream), new.der);
    assert_eq!(
        send(&mut open, "api.example.com", "/", &[]).await.0,
        StatusCode::OK
    );
    server.shutdown();
}

/// An HTTPS upstream with its own CA; with `client_ca`, it requires a
/// client certificate from that CA. Reads the request body, answers with
/// its name (and the body's length and sum in `x-body`), and counts the
/// health checks it receives and the TLS connections it accepts.
async fn tls_upstream(
    name: &'static str,
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                Arc::clone(provider()),
            )
            .build()
            .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let checks = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&checks);
    let connections = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let service = service_fn(move |request: Request<Incoming>| {
                    if request.headers().get("user-agent").map(|v| v.as_bytes())
                        == Some(b"switchyard-health-check")
                    {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        let body = body.unwrap_or_default();
                        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                        let mut response = Response::new(Full::new(Bytes::from(name)));
                        let value = format!("{} {sum}", body.len());
                        response
                            .headers_mut()
                            .insert("x-body", value.parse().expect("a field value"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, checks, accepted)
}

#[tokio::test]
async fn upstream_tls_is_verified_and_presents_a_client_certificate() {
    let dir = temp_dir("upstream");
    let server_ca = Ca::new("upstream CA");
    let client_ca = Ca::new("proxy client CA");
    let other_ca = Ca::new("someone else's CA");
    let backend = server_ca.leaf(&["backend.internal"]);
    let (plain, _, _) = tls_upstream("plain-tls", &backend, None).await;
    let (mutual, _, _) = tls_upstream("mutual-tls", &backend, Some(&client_ca)).await;
    let server_ca_file = dir.join("server-ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&server_ca_file, server_ca.pem()).expect("write");
    std::fs::write(&other_ca_file, other_ca.pem()).expect("write");
    let (client_cert, client_key) = write_leaf(&dir, "proxy-client", &client_ca.leaf(&["proxy"]));
    let pool = |addr: SocketAddr, tls: Value| json!({"endpoints": [addr.to_string()], "tls": tls});
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "good": pool(plain, json!({"server_name": "backend.internal", "ca_file": server_ca_file})),
            "wrong_ca": pool(plain, json!({"server_name": "backend.internal", "ca_file": other_ca_file})),
            "wrong_name": pool(plain, json!({"server_name": "other.internal", "ca_file": server_ca_file})),
            "system_roots": pool(plain, json!({"server_name": "backend.internal"})),
            "mtls": pool(mutual, json!({
                "server_name": "backend.internal", "ca_file": server_ca_file,
                "cert_file": client_cert, "key_file": client_key})),
            "mtls_without_cert": pool(mutual, json!({
                "server_name": "backend.internal", "ca_file": server_ca_file})),
        },
        // Every pool is in the split (the override pins only those).
        "routes": [{"name": "web", "split": {"baseline": "good", "weights": {
            "good": 10000, "wrong_ca": 0, "wrong_name": 0, "system_roots": 0,
            "mtls": 0, "mtls_without_cert": 0}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    let proxy = support::proxy(&config);
    let client = support::client();
    let get = |pool: &'static str| {
        let client = client.clone();
        async move {
            let (status, _, body) =
                support::get(&client, proxy.addr, "/", &[("x-switchyard-pool", pool)]).await;
            (status, body)
        }
    };

    assert_eq!(get("good").await, (StatusCode::OK, "plain-tls".to_string()));
    assert_eq!(
        get("mtls").await,
        (StatusCode::OK, "mutual-tls".to_string())
    );
    for (pool, reason) in [
        ("wrong_ca", "invalid peer certificate: UnknownIssuer"),
        ("system_roots", "invalid peer certificate: UnknownIssuer"),
        ("wrong_name", "not valid for name \"other.internal\""),
    ] {
        let (status, body) = get(pool).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{pool}: {body}");
        assert!(
            body.contains("upstream TLS handshake failed"),
            "{pool}: {body}"
        );
        assert!(body.contains(reason), "{pool}: {body}");
    }
    // TLS 1.3 finishes the client side before the server checks the
    // client certificate, so the refusal arrives as an alert on the
    // first read: still a 502, never the upstream's answer.
    let (status, body) = get("mtls_without_cert").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.contains("mutual-tls"), "{body}");
    proxy.server.shutdown();
}

/// A config whose one pool, `app`, is `addr` over TLS for the name
/// `backend.internal`, verified with `ca` (written under `dir`), with
/// `extra` fields on the pool.
fn tls_pool_config(dir: &Path, ca: &Ca, addr: SocketAddr, extra: Value) -> Value {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let mut pool = json!({
        "endpoints": [addr.to_string()],
        "tls": {"server_name": "backend.internal", "ca_file": ca_file},
    });
    if let (Some(pool), Value::Object(extra)) = (pool.as_object_mut(), extra) {
        pool.extend(extra);
    }
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"app": pool},
        "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

#[tokio::test]
async fn a_large_upload_goes_whole_to_a_tls_upstream() {
    // Over the fast path's read-ahead, the body is streamed to the
    // upstream as it comes, through rustls.
    let dir = temp_dir("upload");
    let ca = Ca::new("upstream CA");
    let (addr, _, _) = tls_upstream("uploaded", &ca.leaf(&["backend.internal"]), None).await;
    let proxy = support::proxy(&tls_pool_config(&dir, &ca, addr, json!({})));
    const LEN: usize = 8 << 20;
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.expect("head");
        write.write_all(&body).await.expect("body");
        write
    });
    let mut buf = Vec::new();
    let answer = support::read_response(&mut read, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.body, b"uploaded");
    assert_eq!(answer.header("x-body"), [format!("{LEN} {sum}")]);
    drop(writer.await);
    proxy.server.shutdown();
}

#[tokio::test]
async fn health_checks_of_a_tls_pool_speak_tls() {
    let dir = temp_dir("health");
    let ca = Ca::new("upstream CA");
    let (addr, checks, _) = tls_upstream("checked", &ca.leaf(&["backend.internal"]), None).await;
    let health_check =
        json!({"path": "/healthz", "interval": "100ms", "timeout": "100ms", "fall": 1});
    let config = tls_pool_config(&dir, &ca, addr, json!({"health_check": health_check}));
    let proxy = support::proxy(&config);
    // A check sent in plaintext would never reach the upstream's HTTP
    // layer, and with fall 1 would take the only endpoint down.
    let seen = support::poll_for(
        Duration::from_secs(10),
        || async { checks.load(Ordering::Relaxed) },
        |n| *n >= 3,
    )
    .await;
    assert!(seen >= 3, "{seen} health checks arrived over TLS");
    let (status, _, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "checked"));
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_tls_pool_reuses_its_connections() {
    let dir = temp_dir("reuse");
    let ca = Ca::new("upstream CA");
    let (addr, _, accepted) = tls_upstream("reused", &ca.leaf(&["backend.internal"]), None).await;
    let config = tls_pool_config(&dir, &ca, addr, json!({}));
    // One worker: every request finds the connection the first one left.
    let proxy = support::proxy_with_workers(&config, 1);
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for _ in 0..5 {
        let response = support::get_on(&mut stream, &mut buf).await;
        assert_eq!((response.status, &response.body[..]), (200, &b"reused"[..]));
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "TLS connections opened"
    );
    proxy.server.shutdown();
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_load_with_the_file_named() {
    let ca = Ca::new("test CA");
    let dir = temp_dir("bad-files");
    let leaf = ca.leaf(&["api.example.com"]);
    let (cert, key) = write_leaf(&dir, "api", &leaf);
    let (_, other_key) = write_leaf(&dir, "other", &ca.leaf(&["api.example.com"]));
    let missing = dir.join("missing.pem");
    let upstream = support::upstream("app").await;
    let cases = [
        (
            json!([{"cert_file": missing, "key_file": key}]),
            "reading the certificates in",
            "missing.pem",
        ),
        (
            json!([{"cert_file": cert, "key_file": other_key}]),
            "pairing the private key with the certificate",
            "other.key",
        ),
        (
            json!([{"cert_file": cert, "key_file": key, "names": ["www.example.com"]}]),
            "does not cover the listed name \"www.example.com\"",
            "api.pem",
        ),
    ];
    for (certificates, reason, file) in cases {
        let config = tls_config(&upstream, certificates);
        let config = switchyard_config::parse(&config.to_string()).expect("valid shape");
        let err = match TlsTerminator::load(&config.tls[0]) {
            Ok(_) => panic!("{reason}: loaded"),
            Err(err) => err,
        };
        let text = format!(
            "{err} ({})",
            std::error::Error::source(&err).expect("cause")
        );
        assert!(text.contains(reason), "{text}");
        assert!(text.contains(file), "{text}");
        assert!(
            text.contains("listeners[0].tls.certificates[0] (line"),
            "{text}"
        );
    }

    // An expired certificate is refused too.
    let mut params = CertificateParams::new(vec!["api.example.com".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key_pair = KeyPair::generate().expect("key");
    let expired = params
        .signed_by(&key_pair, &ca.cert, &ca.key)
        .expect("cert");
    std::fs::write(dir.join("expired.pem"), expired.pem()).expect("write");
    std::fs::write(dir.join("expired.key"), key_pair.serialize_pem()).expect("write");
    let config = tls_config(
        &upstream,
        json!([{"cert_file": dir.join("expired.pem"), "key_file": dir.join("expired.key")}]),
    );
    let config = switchyard_config::parse(&config.to_string()).expect("valid shape");
    let err = TlsTerminator::load(&config.tls[0]).err().expect("expired");
    let cause = std::error::Error::source(&err).expect("cause").to_string();
    assert!(cause.contains("expired at 2021-01-01"), "{cause}");
}

#[tokio::test]
async fn admin_over_tls_requires_a_client_certificate() {
    let upstream = support::upstream("app").await;
    let dir = temp_dir("admin");
    let ca = Ca::new("admin CA");
    let clients = Ca::new("admin clients CA");
    let (cert, key) = write_leaf(&dir, "admin", &ca.leaf(&["localhost"]));
    let clients_file = dir.join("clients.pem");
    std::fs::write(&clients_file, clients.pem()).expect("write");
    let config = support::split_config(&[(&upstream, 10_000)], json!({}));
    let config = switchyard_config::parse(&config.to_string()).expect("valid");
    let (store, state) = switchyard_admin::StateStore::open(None, false).expect("store");
    let plane = switchyard_admin::ControlPlane::start(config, None, store, state).expect("plane");
    let files = switchyard_config::CertificateFiles {
        cert_file: cert,
        key_file: key,
        names: Vec::new(),
        is_default: true,
        origin: "--admin-tls-cert".to_string(),
    };
    let tls = TlsTerminator::new(
        "admin",
        &[files],
        &["http/1.1"],
        Some(("--admin-client-ca", &clients_file)),
    )
    .expect("admin TLS");
    let api = switchyard_admin::AdminApi::new(plane, None);
    let admin = switchyard_admin::server::start_with_tls(
        "127.0.0.1:0".parse().expect("addr"),
        api,
        Some(Arc::new(tls)),
    )
    .expect("admin starts");

    // With a client certificate from the clients' CA: served.
    let config = client_config_with_cert(ca.roots(), &clients.leaf(&["operator"]));
    let stream = handshake(admin, "localhost", config)
        .await
        .expect("handshake");
    let (status, body) = get_h1(stream, "localhost", "/v1/routes", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"web\""), "{body}");

    // Without one: refused. TLS 1.3 clients finish their side first, so
    // the refusal may come on the first read rather than the handshake.
    let config = client_config(ca.roots(), &[]);
    assert!(
        !admin_serves(admin, config).await,
        "a client without a certificate must not be served"
    );
    // A certificate from another CA: refused as well.
    let stranger = Ca::new("stranger").leaf(&["operator"]);
    let config = client_config_with_cert(ca.roots(), &stranger);
    assert!(
        !admin_serves(admin, config).await,
        "a certificate from another CA must not be served"
    );
}

#[tokio::test]
async fn the_binary_serves_https_and_admin_mtls_from_flags() {
    let upstream = support::upstream("app").await;
    let dir = temp_dir("binary");
    let ca = Ca::new("test CA");
    let clients = Ca::new("admin clients CA");
    let (cert, key) = write_leaf(&dir, "site", &ca.leaf(&["localhost"]));
    let clients_file = dir.join("clients.pem");
    std::fs::write(&clients_file, clients.pem()).expect("write");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let stable = upstream.addr.to_string();
    let (cert, key, clients_file) = (path(&cert), path(&key), path(&clients_file));
    let (mut child, proxy, admin) = support::start_binary(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--stable",
        &stable,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--admin",
        "127.0.0.1:0",
        "--admin-tls-cert",
        &cert,
        "--admin-tls-key",
        &key,
        "--admin-client-ca",
        &clients_file,
        "--workers",
        "1",
    ])
    .await;

    let stream = handshake(proxy, "localhost", client_config(ca.roots(), &[]))
        .await
        .expect("handshake");
    let (status, body) = get_h1(stream, "localhost", "/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    assert_eq!(upstream.requests()[0].headers["x-forwarded-proto"], "https");

    // The admin API wants a client certificate; with one, its metrics
    // show when the certificates expire.
    assert!(!admin_serves(admin, client_config(ca.roots(), &[])).await);
    let config = client_config_with_cert(ca.roots(), &clients.leaf(&["operator"]));
    let stream = handshake(admin, "localhost", config)
        .await
        .expect("handshake");
    let (status, metrics) = get_h1(stream, "localhost", "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let expiry: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_tls_certificate_expiry_timestamp_seconds{"))
        .collect();
    assert_eq!(
        expiry.len(),
        2,
        "the listener's and the admin's: {expiry:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64;
    for line in expiry {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a value");
        assert!(value > now, "{line}");
    }
    child.kill().await.expect("kill");
}

#[test]
fn check_verifies_the_tls_files() {
    let dir = temp_dir("check");
    let ca = Ca::new("test CA");
    let (cert, key) = write_leaf(&dir, "api", &ca.leaf(&["api.example.com", "*.example.org"]));
    let (_, stranger_key) = write_leaf(&dir, "stranger", &ca.leaf(&["api.example.com"]));
    let config = |key_file: &Path| {
        json!({
            "listeners": [{"address": "127.0.0.1:8443", "tls": {"certificates": [
                {"cert_file": "api.pem", "key_file": key_file, "default": true}]}}],
            "pools": {"app": {"endpoints": ["127.0.0.1:9000"]}},
            "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
        })
    };
    let check = |config: Value| {
        let file = dir.join("switchyard.json");
        std::fs::write(&file, serde_json::to_string_pretty(&config).expect("json")).expect("write");
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", file.to_str().expect("utf-8")])
            .output()
            .expect("run check")
    };

    // A relative cert_file is found next to the config file.
    let output = check(config(&key));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("127.0.0.1:8443 (tls)"), "{stdout}");
    assert!(
        stdout.contains("names api.example.com, *.example.org (default), expires in"),
        "{stdout}"
    );
    assert!(cert.exists());

    let output = check(config(&stranger_key));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("listeners[0].tls.certificates[0] (line"),
        "{stderr}"
    );
    assert!(stderr.contains("stranger.key"), "{stderr}");
    assert!(stderr.contains("pairing the private key"), "{stderr}");
}

#[tokio::test]
async fn the_config_file_gives_the_admin_listener_and_its_tls() {
    let upstream = support::upstream("app").await;
    let dir = temp_dir("admin-config");
    let ca = Ca::new("test CA");
    let clients = Ca::new("admin clients CA");
    write_leaf(&dir, "admin", &ca.leaf(&["localhost"]));
    let (_, stranger_key) = write_leaf(&dir, "stranger", &ca.leaf(&["localhost"]));
    std::fs::write(dir.join("clients.pem"), clients.pem()).expect("write");
    let config = |key_file: &str| {
        json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {"app": {"endpoints": [upstream.addr.to_string()]}},
            "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
            // Relative file names are found next to the config file.
            "admin": {"address": "127.0.0.1:0", "tls": {
                "cert_file": "admin.pem", "key_file": key_file, "client_ca_file": "clients.pem"}},
        })
    };
    let file = dir.join("switchyard.json");
    let write = |config: Value| {
        std::fs::write(&file, serde_json::to_string_pretty(&config).expect("json")).expect("write")
    };

    write(config("admin.key"));
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", file.to_str().expect("utf-8")])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.contains("tls admin: "), "{stdout}");

    // No --admin flag: the address and the TLS come from the file.
    let (mut child, _proxy, admin) =
        support::start_binary(&["run", "--config", file.to_str().expect("utf-8")]).await;
    assert!(!admin_serves(admin, client_config(ca.roots(), &[])).await);
    let with_cert = client_config_with_cert(ca.roots(), &clients.leaf(&["operator"]));
    let stream = handshake(admin, "localhost", with_cert)
        .await
        .expect("handshake");
    let (status, routes) = get_h1(stream, "localhost", "/v1/routes", &[]).await;
    assert_eq!(status, StatusCode::OK, "{routes}");
    assert!(routes.contains("\"web\""), "{routes}");
    child.kill().await.expect("kill");

    // A key that does not go with the certificate is refused, naming where.
    write(config(stranger_key.to_str().expect("utf-8")));
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", file.to_str().expect("utf-8")])
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(stderr.contains("admin.tls (line"), "{stderr}");
}

#[tokio::test]
async fn a_plain_listener_becomes_tls_on_the_same_port() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("relisten");
    let (cert, key) = write_leaf(&dir, "leaf", &ca.leaf(&["app.test"]));
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    let routes = Routes::new(RouteTable::build(&config, 1).expect("table builds"));
    let configured = config.listeners[0];
    let server = Server::start_with_tls(routes, &[(configured, None)], 2).expect("starts");
    let addr = server.local_addrs()[0];
    assert_eq!(support::send_many(addr, "/", 3).await.get("app"), Some(&3));

    // The same configured address, now with TLS: bound again on the port
    // it has, and the plain socket closes.
    let terminator = Arc::new(TlsTerminator::load(&config.tls[0]).expect("certificates load"));
    let bound = server
        .listeners()
        .apply(&[(configured, Some(terminator))])
        .expect("applied");
    assert_eq!(bound, [addr]);
    let mut tls_served = false;
    for _ in 0..50 {
        // Until the old socket is gone, a connection may still land on it.
        let config = client_config(ca.roots(), &["http/1.1"]);
        if let Ok(stream) = handshake(addr, "app.test", config).await {
            let (status, body) = get_h1(stream, "app.test", "/", &[]).await;
            assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
            tls_served = true;
            break;
        }
    }
    assert!(tls_served, "no TLS on {addr}");
    let plain_refused = support::eventually(Duration::from_secs(5), || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return true;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut head = [0u8; 12];
        // A TLS listener answers plain HTTP with an alert or a close,
        // never an HTTP response.
        !matches!(stream.read(&mut head), Ok(n) if n >= 5 && head.starts_with(b"HTTP/"))
    })
    .await;
    assert!(plain_refused, "{addr} still serves plain HTTP");
    server.shutdown();
}

#[tokio::test]
async fn a_reload_adds_a_tls_listener_and_refuses_one_whose_key_does_not_fit() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("reload-listener");
    let (cert, key) = write_leaf(&dir, "leaf", &ca.leaf(&["app.test"]));
    let (_, stranger_key) = write_leaf(&dir, "stranger", &ca.leaf(&["other.test"]));
    let port = support::free_port();
    let config = |listeners: Value| {
        let mut config = support::split_config(&[(&upstream, 10_000)], json!({}));
        config["listeners"] = listeners;
        serde_json::to_string_pretty(&config).expect("json")
    };
    let plain = json!([{"address": "127.0.0.1:0"}]);
    let file = dir.join("switchyard.json");
    std::fs::write(&file, config(plain)).expect("write");
    let (_child, proxy, admin) = support::start_on_config(&file).await;
    let with_tls = |key: &Path| {
        config(json!([
            {"address": "127.0.0.1:0"},
            {"address": format!("127.0.0.1:{port}"),
             "tls": {"certificates": [{"cert_file": cert, "key_file": key}]}},
        ]))
    };
    let tls_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");

    // A key that does not go with its certificate: refused, saying which
    // listener; nothing is bound.
    let (status, body) = support::put_config(admin, with_tls(&stranger_key)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(&tls_addr.to_string()), "{message}");
    assert!(TcpStream::connect(tls_addr).await.is_err());

    // With its own key: the new listener speaks TLS; the old one goes on.
    let (status, body) = support::put_config(admin, with_tls(&key)).await;
    assert_eq!(status, 200, "{body}");
    let stream = handshake(
        tls_addr,
        "app.test",
        client_config(ca.roots(), &["http/1.1"]),
    )
    .await
    .expect("handshake");
    let (status, body) = get_h1(stream, "app.test", "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
    assert_eq!(support::send_many(proxy, "/", 3).await.get("app"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_does_not_hold_off_a_certificate_reload() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("busy-dir");
    let (cert, key) = write_leaf(&dir, "api", &ca.leaf(&["api.example.com"]));
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let (_plane, _server, addr, _watch) = start_watched(&config);

    // A log written beside the certificates, every few milliseconds.
    let writing = Arc::new(AtomicUsize::new(1));
    let writer = {
        let (writing, log) = (Arc::clone(&writing), dir.join("busy.log"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(log).expect("log");
            while writing.load(Ordering::Relaxed) == 1 {
                let _ = writeln!(file, "a line");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (_, served) = replace_leaf(&ca, &cert, &key, addr).await;
    writing.store(0, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(served, "the new certificate waited on the busy directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_like_a_kubernetes_secret_reload_each_time() {
    // Kubernetes' atomic writer: the files are symlinks through `..data`
    // to a timestamped directory; a rotation writes a new directory,
    // swaps `..data` by a rename, and deletes the old directory.
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("k8s-secret");
    let rotate = |generation, leaf: &Leaf| {
        let files = [
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
        ];
        support::kubernetes_write(&dir, generation, &files);
    };
    rotate(0, &ca.leaf(&["api.example.com"]));
    let certificates = json!([{"cert_file": dir.join("tls.crt"), "key_file": dir.join("tls.key")}]);
    let config = tls_config(&upstream, certificates);
    let (_plane, _server, addr, _watch) = start_watched(&config);

    for generation in 1..=2 {
        let new = ca.leaf(&["api.example.com"]);
        rotate(generation, &new);
        let served = serves_within_10_s(&ca, addr, &new).await;
        assert!(served, "rotation {generation} not served");
    }
}
