//! The proxy crate's one error type, and how each error is answered.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::stats::ErrorKind;

/// What went wrong while building a table, binding, or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No route matches the request.
    #[error("no route matches host {host:?} path {path:?}")]
    NoRoute {
        /// The request's host.
        host: String,
        /// The request's path.
        path: String,
    },
    /// Every endpoint of every pool of the route is ejected.
    #[error("no healthy endpoint left for route {route}")]
    NoHealthyEndpoint {
        /// The route.
        route: String,
    },
    /// The request is malformed or ambiguous; it is never forwarded.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request target is longer than the limit.
    #[error("request target is {len} bytes, over the limit of {limit}")]
    UriTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body is larger than the limit.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's body broke off or was malformed (a bad chunk size).
    #[error("reading the request body")]
    ClientBody {
        /// hyper's parse or I/O error, or the HTTP/2 stream's reset.
        #[source]
        source: crate::body::BoxError,
    },
    /// Connecting to the endpoint failed.
    #[error("upstream connect {what}: {backend}")]
    Connect {
        /// `refused`, `reset`, `unreachable` or `failed`.
        what: &'static str,
        /// `pool/address`.
        backend: String,
        /// The address tried.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("upstream connect timed out after {after:?}: {backend}")]
    ConnectTimeout {
        /// `pool/address`.
        backend: String,
        /// The timeout.
        after: Duration,
    },
    /// The endpoint sent no response head within the timeout.
    #[error("upstream sent no response head within {after:?}: {backend}")]
    Timeout {
        /// `pool/address`.
        backend: String,
        /// The timeout.
        after: Duration,
    },
    /// The endpoint's answer was unusable: reset, closed early, or malformed.
    #[error("upstream {what}: {backend}")]
    Upstream {
        /// `reset before the response`, `sent a malformed response`, ...
        what: &'static str,
        /// `pool/address`.
        backend: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The endpoint's answer was unusable, as the HTTP/1.1 fast path's own
    /// client found: reset, closed early, or malformed.
    #[error("upstream {what}: {backend}")]
    Exchange {
        /// `reset before the response`, `sent a malformed response`, ...
        what: &'static str,
        /// `pool/address`.
        backend: String,
        /// How it counts.
        kind: ErrorKind,
    },
    /// An endpoint name did not resolve while building a table.
    #[error("resolving endpoint {address} of pool {pool}")]
    Resolve {
        /// Pool name.
        pool: String,
        /// `host:port` as configured.
        address: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate, key or CA file is missing, unreadable, or unfit
    /// (expired, not matching its key, not covering a listed name).
    #[error("{origin}: {what} {}", file.display())]
    TlsFile {
        /// Where the config names the file: `listeners[0].tls.certificates[1] (line 7)`.
        origin: String,
        /// `reading the certificates in`, `pairing the private key with the certificate`, ...
        what: &'static str,
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused a TLS setting.
    #[error("setting up TLS for {listener}")]
    TlsConfig {
        /// The listener's address, or `pool NAME`.
        listener: String,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A pool's TLS server name is not a DNS name or IP address.
    #[error("pool {pool}: {name:?} cannot be a TLS server name")]
    TlsName {
        /// The pool.
        pool: String,
        /// The name.
        name: String,
        /// Why not.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake with an endpoint failed, its certificate
    /// verification included.
    #[error("upstream TLS handshake failed: {backend}")]
    UpstreamTls {
        /// `pool/address`.
        backend: String,
        /// The address.
        addr: SocketAddr,
        /// rustls' reason, inside an I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("binding listener {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A thread or runtime of the data plane could not be started.
    #[error("starting {what}")]
    Start {
        /// Which part.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl ForwardError {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // A body the client stopped sending (client_io's timeout).
            Self::ClientBody { source } if is_timeout(&**source) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest { .. } | Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Connect { .. }
            | Self::Upstream { .. }
            | Self::Exchange { .. }
            | Self::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } | Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Resolve { .. }
            | Self::Bind { .. }
            | Self::Start { .. }
            | Self::TlsFile { .. }
            | Self::TlsConfig { .. }
            | Self::TlsName { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The upstream failure this error counts as, if it is one.
    pub fn upstream_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Connect { .. } | Self::UpstreamTls { .. } => Some(ErrorKind::Connect),
            Self::ConnectTimeout { .. } | Self::Timeout { .. } => Some(ErrorKind::Timeout),
            Self::Upstream { source, .. } if source.is_parse() || source.is_parse_status() => {
                Some(ErrorKind::Malformed)
            }
            Self::Upstream { .. } => Some(ErrorKind::Reset),
            Self::Exchange { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the client connection must be closed after the answer: the
    /// request was malformed, so where it ends is uncertain (RFC 9112 §6.3).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest { .. }
                | Self::ClientBody { .. }
                | Self::UriTooLong { .. }
                | Self::BodyTooLarge { .. }
        )
    }

    /// The one-line text body that says what happened, with its cause.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        if let Some(source) = std::error::Error::source(self) {
            message.push_str(" (");
            message.push_str(&source.to_string());
            message.push(')');
        }
        message.push('\n');
        message
    }

    /// The answer to the client: the status and a one-line text body that
    /// says what happened.
    pub fn to_response(&self, close: bool) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::local(Bytes::from(self.message())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Whether an I/O timeout is among `error`'s causes.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    cause::<std::io::Error>(error).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// The first error of type `T` in `error`'s chain of causes.
pub(crate) fn cause<'e, T: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}
