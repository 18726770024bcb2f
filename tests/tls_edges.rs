//! TLS edges, from a review (each test failed on the code it was written
//! against, for the reason its comment gives): the admin client CA file
//! reloads; ALPN `http/1.0` is served; an edit elsewhere in the config
//! keeps TLS sessions resumable; a weight change does not read a TLS
//! pool's files again; HTTP/1.1 after agreeing on `h2` is not served; the
//! expiry gauge drops a certificate no longer in use; a file written
//! beside unchanged certificates records no reload. Real sockets over
//! loopback, certificates made by rcgen, the proxy in-process or the real
//! binary.

use crate::support;

use support::pki::{
    admin_serves, client_config, client_config_with_cert, get_h1, handshake, handshake_shared,
    presented, replace_file, start_tls_proxy, temp_dir, tls_config, write_leaf, Ca, Leaf,
};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::ClientConfig;
use serde_json::{json, Value};
use switchyard_proxy::tls::{provider, TlsTerminator};
use switchyard_proxy::{Listen, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

// ---------------------------------------------------------------------
// 1. The admin API's client CA file is not reloaded.
// ---------------------------------------------------------------------

/// README (Admin over TLS): "with `--admin-client-ca FILE` a client must
/// present a certificate issued by one of those CAs ... These files are
/// watched and reloaded too." Rotating the operators' CA file (here beside
/// the admin certificate, whose own rotation proves the watch ran) must
/// let the new CA's clients in and keep the old CA's out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_client_ca_file_is_reloaded_like_the_certificate() {
    let upstream = support::upstream("app").await;
    let dir = temp_dir("admin-ca-reload");
    let ca = Ca::new("server CA");
    let old_clients = Ca::new("old operators CA");
    let new_clients = Ca::new("new operators CA");
    let (cert, key) = write_leaf(&dir, "admin", &ca.leaf(&["localhost"]));
    let clients_file = dir.join("clients.pem");
    std::fs::write(&clients_file, old_clients.pem()).expect("write");
    let stable = upstream.addr.to_string();
    let (cert_s, key_s, clients_s) = (path_str(&cert), path_str(&key), path_str(&clients_file));
    let (mut child, _proxy, admin) = support::start_binary(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--stable",
        &stable,
        "--admin",
        "127.0.0.1:0",
        "--admin-tls-cert",
        &cert_s,
        "--admin-tls-key",
        &key_s,
        "--admin-client-ca",
        &clients_s,
        "--workers",
        "1",
    ])
    .await;
    let old_operator = old_clients.leaf(&["operator"]);
    let new_operator = new_clients.leaf(&["operator"]);
    assert!(
        admin_serves(admin, client_config_with_cert(ca.roots(), &old_operator)).await,
        "the old CA's operator is served before the rotation"
    );

    // Rotate the operators' CA, then the admin certificate (same directory).
    replace_file(&clients_file, &new_clients.pem());
    let new_admin = ca.leaf(&["localhost"]);
    replace_file(&key, &new_admin.key_pem);
    replace_file(&cert, &new_admin.cert_pem);
    // Sync point: the new admin certificate is served, so the watch fired
    // and the terminator reloaded.
    let served = support::poll_for(
        Duration::from_secs(10),
        || async {
            handshake(
                admin,
                "localhost",
                client_config_with_cert(ca.roots(), &new_operator),
            )
            .await
            .map(|s| presented(&s))
            .ok()
        },
        |der| der.as_ref() == Some(&new_admin.der),
    )
    .await;
    assert_eq!(served.as_ref(), Some(&new_admin.der), "admin cert reloaded");

    let new_ok = support::poll_for(
        Duration::from_secs(5),
        || admin_serves(admin, client_config_with_cert(ca.roots(), &new_operator)),
        |ok| *ok,
    )
    .await;
    let old_ok = admin_serves(admin, client_config_with_cert(ca.roots(), &old_operator)).await;
    let _ = child.kill().await;
    assert!(
        new_ok,
        "after the client CA file was replaced, an operator with a certificate from the new CA is still refused"
    );
    assert!(
        !old_ok,
        "after the client CA file was replaced, an operator with a certificate from the old CA is still served"
    );
}

// ---------------------------------------------------------------------
// 2. ALPN "http/1.0" (curl --http1.0) is refused with an alert.
// ---------------------------------------------------------------------

/// `curl --http1.0 https://...` offers ALPN `http/1.0` only. nginx lists
/// `http/1.1`, `http/1.0` and `http/0.9` for HTTP/1.x servers and serves
/// it; the fast path serves HTTP/1.0 over plain TCP. Switchyard's
/// listener offers only `h2` and `http/1.1`, so rustls answers such a
/// client with a `no_application_protocol` alert.
#[tokio::test]
async fn a_client_offering_alpn_http_1_0_is_served() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("alpn-10");
    let leaf = ca.leaf(&["api.example.com"]);
    let (cert, key) = write_leaf(&dir, "api", &leaf);
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let (server, addr, _) = start_tls_proxy(&config);

    let result = handshake(
        addr,
        "api.example.com",
        client_config(ca.roots(), &["http/1.0"]),
    )
    .await;
    let mut stream = match result {
        Ok(stream) => stream,
        Err(err) => {
            server.shutdown();
            panic!("a client offering ALPN http/1.0 (curl --http1.0) is refused: {err}");
        }
    };
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: api.example.com\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    server.shutdown();
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
        "{answer}"
    );
    assert!(answer.ends_with("app"), "{answer}");
}

// ---------------------------------------------------------------------
// 3. A config reload that leaves a TLS listener unchanged rebinds it
//    (and so drops every TLS session) when its lines move in the file.
// ---------------------------------------------------------------------

/// main.rs keeps a TLS listener's terminator "whose settings did not
/// change", comparing `ListenerTls` with `==`; but `CertificateFiles`
/// holds `origin`, which carries the config line. An edit elsewhere that
/// moves the listener's lines (here: one blank line at the top) makes it
/// "changed": a new terminator (new ticket keys, empty session cache) and
/// a rebind. Every client then does a full handshake again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_elsewhere_keeps_tls_sessions_resumable() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("reload-sessions");
    let (cert, key) = write_leaf(&dir, "site", &ca.leaf(&["localhost"]));
    let config = |weight_note: &str| {
        let mut config = tls_config(
            &upstream,
            json!([{"cert_file": cert, "key_file": key, "default": true}]),
        );
        config["timeouts"] = json!({"drain": "1s", "idle": weight_note});
        serde_json::to_string_pretty(&config).expect("json")
    };
    let file = dir.join("switchyard.json");
    std::fs::write(&file, config("60s")).expect("write");
    let (mut child, proxy, admin) = support::start_on_config(&file).await;

    // TLS 1.3 tickets: one shared client config keeps them.
    let tls13 = Arc::new(
        ClientConfig::builder_with_provider(Arc::clone(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("version")
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    );
    let request = |config: Arc<ClientConfig>| async move {
        let stream = handshake_shared(proxy, "localhost", config)
            .await
            .expect("handshake");
        let kind = stream.get_ref().1.handshake_kind();
        let (status, body) = get_h1(stream, "localhost", "/", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
        kind
    };
    assert_eq!(
        request(Arc::clone(&tls13)).await,
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        request(Arc::clone(&tls13)).await,
        Some(rustls::HandshakeKind::Resumed),
        "resumes before any reload"
    );

    // Control: a reload that changes a timeout only, lines unchanged.
    let (status, body) = support::put_config(admin, config("61s")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        request(Arc::clone(&tls13)).await,
        Some(rustls::HandshakeKind::Resumed),
        "resumes after a reload that leaves the listener's lines in place"
    );

    // The same change, with one blank line added at the top of the file.
    let (status, body) = support::put_config(admin, format!("\n{}", config("62s"))).await;
    assert_eq!(status, 200, "{body}");
    let kind = request(Arc::clone(&tls13)).await;
    let _ = child.kill().await;
    assert_eq!(
        kind,
        Some(rustls::HandshakeKind::Resumed),
        "a config edit that moved the unchanged TLS listener down one line replaced its terminator: the session no longer resumes"
    );
}

// ---------------------------------------------------------------------
// Upstream helpers
// ---------------------------------------------------------------------

fn tls_server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server config");
    Arc::new(config)
}

/// An HTTPS upstream that reads one request head, answers with `reply`
/// and then closes: with close_notify when `notify`, else a bare FIN.
async fn closing_tls_upstream(leaf: &Leaf, reply: &'static [u8], notify: bool) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(leaf));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.flush().await;
                if notify {
                    let _ = stream.shutdown().await;
                } else {
                    let (mut tcp, _) = stream.into_inner();
                    let _ = tcp.shutdown().await;
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------
// 4. Every weight change re-reads every TLS pool's CA / client cert files.
// ---------------------------------------------------------------------

/// A weight change (and so a rollout step, an abort, an automatic
/// fallback) rebuilds the routing table, and `RouteTable::build_in` calls
/// `UpstreamTlsClient::build` for every endpoint of every TLS pool, which
/// reads the pool's `ca_file` (and client certificate) from disk again.
/// With a pool's CA file mid-rotation (absent for a moment, here removed),
/// sending all traffic back to the plain baseline is refused, though no
/// TLS setting changed and the running table still talks TLS fine.
#[tokio::test]
async fn a_weight_change_does_not_depend_on_a_tls_pools_files_on_disk() {
    let dir = temp_dir("weights-ca");
    let blue = support::upstream("blue").await;
    let ca = Ca::new("upstream CA");
    let green_leaf = ca.leaf(&["backend.internal"]);
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ngreen";
    let green = closing_tls_upstream(&green_leaf, reply, true).await;
    let ca_file = dir.join("green-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "blue": {"endpoints": [blue.addr.to_string()]},
            "green": {"endpoints": [green.to_string()],
                      "tls": {"server_name": "backend.internal", "ca_file": ca_file}},
        },
        "routes": [{"name": "web", "split": {"baseline": "blue",
                    "weights": {"blue": 5000, "green": 5000}}}],
    });
    let setup = support::admin_setup(&config, None);
    let (status, _, body) = support::get(
        &support::client(),
        setup.proxy,
        "/",
        &[("x-switchyard-pool", "green")],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "green"),
        "green speaks TLS"
    );

    // The CA bundle is being rotated: gone for a moment.
    std::fs::remove_file(&ca_file).expect("remove");
    let (status, _, body) = support::admin_call(
        setup.admin,
        http::Method::PUT,
        "/v1/routes/web/weights",
        &[("content-type", "application/json")],
        r#"{"weights": {"blue": 10000, "green": 0}}"#,
    )
    .await;
    setup.server.shutdown();
    assert_eq!(
        status,
        StatusCode::OK,
        "sending all traffic back to the plain baseline was refused because the TLS pool's CA file is re-read: {body}"
    );
}

// ---------------------------------------------------------------------
// 5. ALPN h2 agreed, HTTP/1.1 spoken: served.
// ---------------------------------------------------------------------

/// listener.rs: "RFC 7301: the protocol agreed is the one spoken"; the
/// README has a client that agreed on http/1.1 and sends the HTTP/2
/// preface refused. The mirror case is not: a client that agreed on `h2`
/// and then sends an HTTP/1.1 request is served as HTTP/1.1 (nginx and
/// Envoy treat the bytes as a bad HTTP/2 preface and close).
#[tokio::test]
async fn http1_after_agreeing_on_h2_is_not_served() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("h2-then-h1");
    let (cert, key) = write_leaf(&dir, "api", &ca.leaf(&["api.example.com"]));
    let config = tls_config(&upstream, json!([{"cert_file": cert, "key_file": key}]));
    let (server, addr, _) = start_tls_proxy(&config);
    let mut stream = handshake(addr, "api.example.com", client_config(ca.roots(), &["h2"]))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
        .write_all(
            b"GET /after-h2-alpn HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let forwarded = upstream.requests().len();
    server.shutdown();
    assert_eq!(
        forwarded, 0,
        "an HTTP/1.1 request on a connection that agreed on h2 was forwarded; answer: {answer:?}"
    );
}

// ---------------------------------------------------------------------
// 6. The expiry gauge keeps certificates no longer in use.
// ---------------------------------------------------------------------

/// README: each certificate's expiry is exported as
/// `switchyard_tls_certificate_expiry_timestamp_seconds{listener,file}`,
/// to alert on `- time() < 14d`. A config reload that gives the listener
/// another certificate file replaces its terminator, but the old file's
/// series is never removed (`publish` only sets; nothing deletes): the
/// old certificate's expiry keeps being exported, and alerts on a file
/// that is no longer served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauge_drops_a_certificate_no_longer_in_use() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("gauge");
    let (old_cert, old_key) = write_leaf(&dir, "retired", &ca.leaf(&["localhost"]));
    let current = ca.leaf(&["localhost"]);
    let (new_cert, new_key) = write_leaf(&dir, "current", &current);
    let config = |cert: &Path, key: &Path| {
        let config = tls_config(
            &upstream,
            json!([{"cert_file": cert, "key_file": key, "default": true}]),
        );
        serde_json::to_string_pretty(&config).expect("json")
    };
    let file = dir.join("switchyard.json");
    std::fs::write(&file, config(&old_cert, &old_key)).expect("write");
    let (mut child, proxy, admin) = support::start_on_config(&file).await;
    let series = || async {
        let (_, _, metrics) =
            support::admin_call(admin, http::Method::GET, "/metrics", &[], "").await;
        metrics
            .lines()
            .filter(|l| l.starts_with("switchyard_tls_certificate_expiry_timestamp_seconds{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = series().await;
    assert!(
        before.iter().any(|l| l.contains("retired.pem")),
        "{before:?}"
    );

    let (status, body) = support::put_config(admin, config(&new_cert, &new_key)).await;
    assert_eq!(status, 200, "{body}");
    let stream = handshake(proxy, "localhost", client_config(ca.roots(), &[]))
        .await
        .expect("handshake");
    let served = presented(&stream);
    let after = series().await;
    let _ = child.kill().await;
    assert_eq!(served, current.der, "the listener serves the new file");
    assert!(after.iter().any(|l| l.contains("current.pem")), "{after:?}");
    assert!(
        !after.iter().any(|l| l.contains("retired.pem")),
        "the retired certificate is still exported after the listener stopped using it: {after:?}"
    );
}

// ---------------------------------------------------------------------
// 7. Unrelated changes beside the certificates record reloads.
// ---------------------------------------------------------------------

type Watched = (
    Arc<switchyard_admin::ControlPlane>,
    Server,
    SocketAddr,
    switchyard_admin::watch::CertificateWatch,
);

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

/// watch.rs: "A reload that finds the same certificates changes nothing
/// and records nothing, so unrelated files in the directory ... are
/// fine." `TlsTerminator::reload` decides "unchanged" by looking each
/// certificate up by its first name; when two certificates share a name
/// (here a specific one, then the default that also covers it), the
/// lookup finds the first for both, the second never compares equal, and
/// every unrelated write beside the files swaps the set and records a
/// `certificate_reload` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_file_beside_the_certificates_records_no_reload() {
    let upstream = support::upstream("app").await;
    let ca = Ca::new("test CA");
    let dir = temp_dir("spurious");
    let (api_cert, api_key) = write_leaf(&dir, "api", &ca.leaf(&["api.example.com"]));
    let (main_cert, main_key) = write_leaf(
        &dir,
        "main",
        &ca.leaf(&["api.example.com", "www.example.com"]),
    );
    let config = tls_config(
        &upstream,
        json!([
            {"cert_file": api_cert, "key_file": api_key},
            {"cert_file": main_cert, "key_file": main_key, "default": true},
        ]),
    );
    let (plane, server, _addr, _watch) = start_watched(&config);

    std::fs::write(dir.join("access.log"), "a line\n").expect("write log");
    let events = support::poll_for(
        Duration::from_secs(5),
        || async { plane.events().since(0) },
        |events| events.iter().any(|e| e.kind.starts_with("certificate_")),
    )
    .await;
    server.shutdown();
    let reloads: Vec<_> = events
        .iter()
        .filter(|e| e.kind.starts_with("certificate_"))
        .map(|e| format!("{}: {}", e.kind, e.reason))
        .collect();
    assert!(
        reloads.is_empty(),
        "a log file written beside unchanged certificates recorded: {reloads:?}"
    );
}
