//! Certificates for the TLS tests (a CA that issues leaves, made by
//! rcgen), their files, and a rustls client that speaks to the proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use std::time::Duration;
use switchyard_proxy::tls::{provider, TlsTerminator};
use switchyard_proxy::{Listen, RouteTable, Routes, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A certificate authority that issues leaves for the tests.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A leaf certificate and its key, as PEM and as the DER a client sees.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root");
        roots
    }
}

/// A fresh directory for one test's files.
pub fn temp_dir(test: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-tls-{}-{test}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes a leaf's PEM files as `NAME.pem` and `NAME.key`.
pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    (cert, key)
}

/// Replaces a file the way deploy tools do: write aside, then rename.
pub fn replace_file(path: &Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

pub fn client_config(roots: RootCertStore, alpn: &[&str]) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

pub fn client_config_with_cert(roots: RootCertStore, leaf: &Leaf) -> ClientConfig {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
    ClientConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], key)
        .expect("client cert")
}

/// Connects and completes a handshake, sending `sni` (no SNI when it is
/// an IP address, as clients do).
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    handshake_shared(addr, sni, Arc::new(config)).await
}

/// As [`handshake`], with a config (and so a resumption store) that
/// several connections share.
pub async fn handshake_shared(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    TlsConnector::from(config).connect(name, stream).await
}

/// The leaf certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .clone()
}

/// A config whose one route sends everything to `upstream`, on a TLS
/// listener with `certificates`.
pub fn tls_config(upstream: &super::Upstream, certificates: Value) -> Value {
    let mut config = super::split_config(&[(upstream, 10_000)], json!({}));
    config["listeners"] =
        json!([{"address": "127.0.0.1:0", "tls": {"certificates": certificates}}]);
    config
}

/// A proxy with one worker on `config`, its TLS listener's terminator
/// returned for reloads.
pub fn start_tls_proxy(config: &Value) -> (Server, SocketAddr, Arc<TlsTerminator>) {
    let config = switchyard_config::parse(&config.to_string()).expect("valid test config");
    let routes = Routes::new(RouteTable::build(&config, 1).expect("table builds"));
    let terminator = Arc::new(TlsTerminator::load(&config.tls[0]).expect("certificates load"));
    let listen: Vec<Listen> = vec![(config.listeners[0], Some(Arc::clone(&terminator)))];
    let server = Server::start_with_tls(routes, &listen, 1).expect("proxy starts");
    let addr = server.local_addrs()[0];
    (server, addr, terminator)
}

/// Whether the admin API answers a request from a client with `config`.
pub async fn admin_serves(admin: SocketAddr, config: ClientConfig) -> bool {
    let Ok(mut stream) = handshake(admin, "localhost", config).await else {
        return false;
    };
    let _ = stream
        .write_all(b"GET /v1/routes HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).contains("200 OK")
}

/// One HTTP/1.1 GET on a TLS stream; returns status and body.
pub async fn get_h1(
    stream: TlsStream<TcpStream>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, String) {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http1 handshake");
    tokio::spawn(connection);
    send(&mut sender, host, path, headers).await
}

/// One GET on an HTTP/1.1 connection; returns status and body.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, String) {
    let mut request = http::Request::get(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(
            request
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    (response.status(), text(response).await)
}

/// A response's body as text.
pub async fn text(response: http::Response<hyper::body::Incoming>) -> String {
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await;
    String::from_utf8_lossy(&body.expect("body").to_bytes()).into_owned()
}
