//! TLS with rustls: termination on listeners (certificates chosen by SNI,
//! swapped on reload without a lock on the handshake path), and TLS to
//! upstream endpoints.
//!
//! The crypto provider is `ring`: it builds with a C compiler alone (no
//! cmake or nasm as aws-lc-rs needs), and its P-256 ECDSA signing and
//! AES-GCM are assembly-optimised, which is what a handshake-heavy load
//! with an ECDSA certificate spends its time in.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{IntGaugeVec, Opts};
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard_config::{CertificateFiles, ListenerTls, UpstreamTls};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::ForwardError;

/// TLS 1.3 and 1.2 only: 1.0 and 1.1 are deprecated (RFC 8996), and rustls
/// does not implement them.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Sessions kept for resumption by session id, per listener. A stored
/// session is a few hundred bytes, so this bounds the cache near 2 MiB;
/// nginx's `ssl_session_cache shared:SSL:1m` holds about 4,000.
const SESSION_CACHE_ENTRIES: usize = 8192;

/// The process's crypto provider: `ring`, with rustls' default (safe)
/// cipher suites and key exchange groups.
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn file_error(
    origin: &str,
    what: &'static str,
    file: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ForwardError {
    ForwardError::TlsFile {
        origin: origin.to_string(),
        what,
        file: file.to_path_buf(),
        source: source.into(),
    }
}

/// Reads a PEM certificate chain, leaf first; an empty file is an error.
fn read_chain(origin: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, ForwardError> {
    let chain = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| file_error(origin, "reading the certificates in", file, err))?;
    if chain.is_empty() {
        return Err(file_error(
            origin,
            "reading the certificates in",
            file,
            "no PEM certificate in the file",
        ));
    }
    Ok(chain)
}

fn read_key(origin: &str, file: &Path) -> Result<PrivateKeyDer<'static>, ForwardError> {
    PrivateKeyDer::from_pem_file(file)
        .map_err(|err| file_error(origin, "reading the private key in", file, err))
}

/// Reads a PEM file of CA certificates into a root store.
pub fn read_roots(origin: &str, file: &Path) -> Result<RootCertStore, ForwardError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(origin, file)? {
        roots
            .add(cert)
            .map_err(|err| file_error(origin, "adding a CA certificate from", file, err))?;
    }
    Ok(roots)
}

/// What a loaded certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The SNI names it serves.
    pub names: Vec<String>,
    /// Whether clients without a known SNI name get it.
    pub is_default: bool,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateSummary {
    /// Whole days until it expires (negative once expired).
    pub fn days_left(&self) -> i64 {
        (self.not_after - unix_now()) / 86_400
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    summary: CertificateSummary,
}

/// Reads a certificate's dates and names, and checks that it is valid
/// now; returns its `notAfter` and its DNS names.
fn check_dates(
    origin: &str,
    cert_file: &Path,
    cert: &CertificateDer<'_>,
) -> Result<(i64, Vec<String>), ForwardError> {
    let (not_before, not_after, dns_names) = inspect(cert)
        .map_err(|reason| file_error(origin, "reading the certificate", cert_file, reason))?;
    let now = unix_now();
    if not_after < now {
        return Err(file_error(
            origin,
            "using the certificate",
            cert_file,
            format!("it expired at {}", humantime_utc(not_after)),
        ));
    }
    if not_before > now {
        return Err(file_error(
            origin,
            "using the certificate",
            cert_file,
            format!("it is not valid before {}", humantime_utc(not_before)),
        ));
    }
    Ok((not_after, dns_names))
}

/// Loads one certificate and its key, and checks that they belong
/// together, that the certificate is valid now, and that it covers the
/// names listed for it.
fn load_certificate(files: &CertificateFiles) -> Result<LoadedCertificate, ForwardError> {
    let origin = files.origin.as_str();
    let chain = read_chain(origin, &files.cert_file)?;
    let key = read_key(origin, &files.key_file)?;
    let (not_after, dns_names) = check_dates(origin, &files.cert_file, &chain[0])?;
    let names = if files.names.is_empty() {
        dns_names
    } else {
        if let Some(uncovered) = files
            .names
            .iter()
            .find(|name| !dns_names.iter().any(|dns| covers(dns, name)))
        {
            return Err(file_error(
                origin,
                "using the certificate",
                &files.cert_file,
                format!(
                    "it does not cover the listed name {uncovered:?} (its names: {})",
                    dns_names.join(", ")
                ),
            ));
        }
        files.names.clone()
    };
    if names.is_empty() && !files.is_default {
        return Err(file_error(
            origin,
            "using the certificate",
            &files.cert_file,
            "it names no DNS name: list names for it or make it the default",
        ));
    }
    let key = CertifiedKey::from_der(chain, key, provider()).map_err(|err| {
        file_error(
            origin,
            "pairing the private key with the certificate",
            &files.key_file,
            err,
        )
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(key),
        summary: CertificateSummary {
            cert_file: files.cert_file.clone(),
            names,
            is_default: files.is_default,
            not_after,
        },
    })
}

fn humantime_utc(unix: i64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The leaf's validity and its DNS names (lower case), from its DER.
fn inspect(leaf: &CertificateDer<'_>) -> Result<(i64, i64, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|err| format!("not an X.509 certificate: {err}"))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let dns = dns.to_ascii_lowercase();
                if !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        names,
    ))
}

/// Whether a certificate name (`api.example.com`, `*.example.com`) covers
/// `name`; a wildcard covers one label, as in RFC 6125.
fn covers(cert_name: &str, name: &str) -> bool {
    if cert_name == name {
        return true;
    }
    match (cert_name.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => label != "*" && rest == suffix,
        _ => false,
    }
}

/// One listener's certificates, by SNI name.
#[derive(Default)]
struct CertificateSet {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertificateSet {
    fn build(loaded: &[LoadedCertificate]) -> CertificateSet {
        let mut set = CertificateSet::default();
        for certificate in loaded {
            for name in &certificate.summary.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix),
                    None => (&mut set.exact, name.as_str()),
                };
                // The first certificate listed for a name wins, as in HAProxy.
                map.entry(key.into())
                    .or_insert_with(|| Arc::clone(&certificate.key));
            }
            if certificate.summary.is_default {
                set.default = Some(Arc::clone(&certificate.key));
            }
        }
        set
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        // rustls hands over the name as the client sent it; clients send
        // lower case, so the copy is almost never made.
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        if let Some(key) = self.exact.get(sni) {
            return Some(Arc::clone(key));
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(Arc::clone(key));
            }
        }
        self.default.clone()
    }
}

/// Picks a listener's certificate by SNI from the current set; a reload
/// swaps the set, and a handshake reads it without a lock.
struct CertResolver {
    set: ArcSwap<CertificateSet>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None ends the handshake with an alert: no certificate for this
        // name and no default.
        self.set.load().find(client_hello.server_name())
    }
}

/// The certificates of one TLS listener (or of the admin listener): the
/// rustls server config that serves them, and what reloads them.
pub struct TlsTerminator {
    label: String,
    files: Vec<CertificateFiles>,
    resolver: Arc<CertResolver>,
    /// The server config; a reload of the client CA file makes a new one
    /// (same certificates, sessions and ticket keys).
    config: ArcSwap<ServerConfig>,
    /// Where the client CA setting was given, and its file, with the
    /// roots as last loaded.
    client_ca: Option<(String, PathBuf, std::sync::Mutex<RootCertStore>)>,
    summaries: ArcSwap<Vec<CertificateSummary>>,
    /// The loaded certificates and keys, in the order of `files`.
    keys: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// The certificate files whose expiry series this terminator set.
    published: std::sync::Mutex<Vec<String>>,
}

impl TlsTerminator {
    /// Loads and checks the certificates of `listener`, and builds its
    /// server config: ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3, session
    /// resumption by tickets and by a bounded session cache.
    pub fn load(listener: &ListenerTls) -> Result<TlsTerminator, ForwardError> {
        Self::new(
            &listener.address.to_string(),
            &listener.certificates,
            // `http/1.0` for clients that offer only it (`curl --http1.0`),
            // as nginx lists it.
            &["h2", "http/1.1", "http/1.0"],
            None,
        )
    }

    /// As [`TlsTerminator::load`], for any listener: `label` names it in
    /// logs and metrics, `alpn` lists its protocols, and with `client_ca`
    /// (where the setting was given, and the PEM file of CAs) a client must
    /// present a certificate issued by one of those CAs.
    pub fn new(
        label: &str,
        files: &[CertificateFiles],
        alpn: &[&str],
        client_ca: Option<(&str, &Path)>,
    ) -> Result<TlsTerminator, ForwardError> {
        let loaded = files
            .iter()
            .map(load_certificate)
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = Arc::new(CertResolver {
            set: ArcSwap::from_pointee(CertificateSet::build(&loaded)),
        });
        let config_error = |source: rustls::Error| ForwardError::TlsConfig {
            listener: label.to_string(),
            source,
        };
        let roots = match client_ca {
            Some((origin, file)) => Some(read_roots(origin, file)?),
            None => None,
        };
        let mut config = server_config(label, &resolver, client_ca.zip(roots.clone()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // The server's suite order (AEADs with forward secrecy, strongest
        // first) wins over the client's, as nginx's ssl_prefer_server_ciphers.
        config.ignore_client_order = true;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_error)?;
        let client_ca = client_ca
            .zip(roots)
            .map(|((origin, file), roots)| (origin.to_string(), file.to_path_buf(), roots.into()));
        let keys: Vec<Arc<CertifiedKey>> = loaded.iter().map(|l| Arc::clone(&l.key)).collect();
        let summaries: Vec<CertificateSummary> =
            loaded.into_iter().map(|loaded| loaded.summary).collect();
        let terminator = TlsTerminator {
            label: label.to_string(),
            files: files.to_vec(),
            resolver,
            config: ArcSwap::from_pointee(config),
            client_ca,
            summaries: ArcSwap::from_pointee(summaries),
            keys: ArcSwap::from_pointee(keys),
            published: std::sync::Mutex::default(),
        };
        terminator.publish();
        Ok(terminator)
    }

    /// The acceptor that runs handshakes with the current certificates.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// The listener this terminates TLS for.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The certificate and key files, and the client CA file, for a
    /// watcher.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files
            .iter()
            .flat_map(|f| [f.cert_file.as_path(), f.key_file.as_path()])
            .chain(self.client_ca.as_ref().map(|(_, file, _)| file.as_path()))
    }

    /// The certificates in use.
    pub fn summaries(&self) -> Arc<Vec<CertificateSummary>> {
        self.summaries.load_full()
    }

    /// Reads the files again. When every certificate loads and checks, new
    /// handshakes get them and `Ok(true)` says so (`Ok(false)`: nothing
    /// changed); on an error the certificates in use stay.
    pub fn reload(&self) -> Result<bool, ForwardError> {
        let loaded = self
            .files
            .iter()
            .map(load_certificate)
            .collect::<Result<Vec<_>, _>>()?;
        let ca_changed = self.reload_client_ca()?;
        // Each certificate against the one loaded from the same files
        // (two listed for one name would otherwise be compared with the
        // first, and every write beside them would count as a change).
        let keys = self.keys.load();
        let unchanged = loaded.len() == keys.len()
            && loaded
                .iter()
                .zip(self.summaries().iter())
                .zip(keys.iter())
                .all(|((new, old), key)| {
                    new.summary == *old
                        && key.cert == new.key.cert
                        && key.key.public_key() == new.key.key.public_key()
                });
        if unchanged {
            return Ok(ca_changed);
        }
        self.resolver
            .set
            .store(Arc::new(CertificateSet::build(&loaded)));
        self.keys.store(Arc::new(
            loaded.iter().map(|l| Arc::clone(&l.key)).collect(),
        ));
        self.summaries.store(Arc::new(
            loaded.into_iter().map(|loaded| loaded.summary).collect(),
        ));
        self.publish();
        Ok(true)
    }

    /// Reads the client CA file again; when its CAs changed, new
    /// handshakes verify clients against them. Whether they changed.
    fn reload_client_ca(&self) -> Result<bool, ForwardError> {
        let Some((origin, file, current)) = &self.client_ca else {
            return Ok(false);
        };
        let roots = read_roots(origin, file)?;
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if roots.roots == current.roots {
            return Ok(false);
        }
        let old = self.config.load();
        let mut config = server_config(
            &self.label,
            &self.resolver,
            Some(((origin.as_str(), file.as_path()), roots.clone())),
        )?;
        config.alpn_protocols = old.alpn_protocols.clone();
        config.ignore_client_order = old.ignore_client_order;
        config.session_storage = Arc::clone(&old.session_storage);
        config.ticketer = Arc::clone(&old.ticketer);
        self.config.store(Arc::new(config));
        *current = roots;
        tracing::info!(listener = %self.label, file = %file.display(), "client CA reloaded");
        Ok(true)
    }

    /// Logs each certificate's expiry and sets its gauge; the series of
    /// certificates it no longer has go (unless another terminator of the
    /// same listener still serves them).
    fn publish(&self) {
        let files: Vec<String> = self
            .summaries()
            .iter()
            .map(|s| s.cert_file.to_string_lossy().into_owned())
            .collect();
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for file in files.iter().filter(|f| !published.contains(f)) {
            expiry_series(&self.label, file, 1);
        }
        for file in published.iter().filter(|f| !files.contains(f)) {
            expiry_series(&self.label, file, -1);
        }
        *published = files;
        drop(published);
        for summary in self.summaries().iter() {
            tracing::info!(
                listener = %self.label,
                file = %summary.cert_file.display(),
                names = %summary.names.join(","),
                not_after = summary.not_after,
                days_left = summary.days_left(),
                "certificate loaded"
            );
            expiry_gauge()
                .with_label_values(&[self.label.as_str(), &summary.cert_file.to_string_lossy()])
                .set(summary.not_after);
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let published = self.published.get_mut().unwrap_or_else(|e| e.into_inner());
        for file in published.iter() {
            expiry_series(&self.label, file, -1);
        }
    }
}

/// A server config for `resolver`'s certificates, TLS 1.2 and 1.3, that
/// verifies clients against `client_ca`'s roots when given.
fn server_config(
    label: &str,
    resolver: &Arc<CertResolver>,
    client_ca: Option<((&str, &Path), RootCertStore)>,
) -> Result<ServerConfig, ForwardError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|source| ForwardError::TlsConfig {
            listener: label.to_string(),
            source,
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(((origin, file), roots)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(provider()),
            )
            .build()
            .map_err(|err| file_error(origin, "using the client CA", file, err))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_cert_resolver(Arc::clone(resolver) as _))
}

/// Counts the terminators that publish an expiry series (a reload may make
/// a new one for a listener before the old one goes); the series goes with
/// the last.
fn expiry_series(listener: &str, file: &str, change: i32) {
    static USERS: OnceLock<std::sync::Mutex<HashMap<(String, String), i32>>> = OnceLock::new();
    let mut users = USERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (listener.to_string(), file.to_string());
    let count = users.entry(key.clone()).or_insert(0);
    *count += change;
    if *count <= 0 {
        users.remove(&key);
        let _ = expiry_gauge().remove_label_values(&[listener, file]);
    }
}

/// `switchyard_tls_certificate_expiry_timestamp_seconds{listener, file}`:
/// when each loaded certificate expires, for an alert on `- time() < 14d`.
fn expiry_gauge() -> &'static IntGaugeVec {
    static GAUGE: OnceLock<IntGaugeVec> = OnceLock::new();
    GAUGE.get_or_init(|| {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "switchyard_tls_certificate_expiry_timestamp_seconds",
                "When each loaded TLS certificate expires (notAfter), as a Unix time",
            ),
            &["listener", "file"],
        )
        .expect("valid metric");
        let _ = crate::stats::Metrics::global()
            .registry
            .register(Box::new(gauge.clone()));
        gauge
    })
}

/// How the proxy speaks TLS to one endpoint.
pub struct UpstreamTlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// Tells pooled connections made with different settings apart.
    pub pool_key: u64,
}

impl UpstreamTlsClient {
    /// The client side for `pool`'s endpoint `address` (`host:port`): SNI
    /// and verification against the pool's server name or the host.
    pub fn build(
        pool: &str,
        tls: &UpstreamTls,
        address: &str,
    ) -> Result<UpstreamTlsClient, ForwardError> {
        let origin = tls.origin.as_str();
        let roots = match &tls.ca_file {
            Some(file) => read_roots(origin, file)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let config_error = |source: rustls::Error| ForwardError::TlsConfig {
            listener: format!("pool {pool}"),
            source,
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(provider()))
            .with_protocol_versions(VERSIONS)
            .map_err(config_error)?
            .with_root_certificates(roots);
        let mut config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = read_chain(origin, cert_file)?;
                let key = read_key(origin, key_file)?;
                // Checks the dates and the pair before use: either would
                // only show as handshakes the endpoint refuses.
                check_dates(origin, cert_file, &chain[0])?;
                CertifiedKey::from_der(chain.clone(), key.clone_key(), provider()).map_err(
                    |err| {
                        file_error(
                            origin,
                            "pairing the client key with its certificate",
                            key_file,
                            err,
                        )
                    },
                )?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(config_error)?
            }
        };
        // The upstream side speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = match &tls.server_name {
            Some(name) => name.clone(),
            None => host_of(address).to_string(),
        };
        let name = ServerName::try_from(host.clone()).map_err(|err| ForwardError::TlsName {
            pool: pool.to_string(),
            name: host.clone(),
            source: err,
        })?;
        // The files' contents, not only their names: a CA or client
        // certificate replaced at the same path (a reload) must not find
        // connections made under the old one.
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (&host, &tls.ca_file, &tls.client_cert).hash(&mut hasher);
            let files = tls
                .ca_file
                .iter()
                .chain(tls.client_cert.iter().flat_map(|(cert, key)| [cert, key]));
            for file in files {
                std::fs::read(file).ok().hash(&mut hasher);
            }
            hasher.finish() | 1
        };
        Ok(UpstreamTlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            pool_key,
        })
    }

    /// Runs the handshake over a connected stream.
    pub async fn connect(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), stream).await
    }
}

/// `host` of `host:port`, `[v6]:port` or `v4:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("*.example.com", "api.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("api.example.com", "api.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "*.other.com"));
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("api.internal:443"), "api.internal");
        assert_eq!(host_of("10.0.0.3:8443"), "10.0.0.3");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }
}
