//! Upstream HTTP/1.1 connections, pooled per worker thread.
//!
//! Each worker owns its pool, so taking and returning a connection is a
//! plain `RefCell` borrow on one thread: no lock, and the upstream socket's
//! I/O stays on the same thread as the client's (no cross-thread wake-up
//! per request).

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{BodyOverLimit, ClientBodyFailed, RequestBody, Sending};
use crate::error::ForwardError;
use crate::route::EndpointEntry;

/// Idle connections kept per endpoint and worker; more are closed. nginx's
/// `keepalive 32` per worker is the usual setting; a worker under wrk with
/// 50 connections needs about that many.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// A connection's request side, and its task (to end it when the
/// connection cannot carry another request).
struct Sender {
    send: SendRequest<RequestBody>,
    task: tokio::task::AbortHandle,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Idle connections are kept by address and TLS settings (0: plain), so
/// a plain pool and a TLS pool on one address never share a connection.
pub type IdleKey = (SocketAddr, u64);

/// The key an endpoint's idle connections are kept under.
pub fn idle_key(endpoint: &EndpointEntry) -> IdleKey {
    (
        endpoint.addr,
        endpoint.tls.as_ref().map_or(0, |tls| tls.pool_key),
    )
}

/// One worker's upstream connections.
pub struct Upstreams {
    idle: RefCell<FxHashMap<IdleKey, Vec<Idle>>>,
}

/// Hands a connection back to its pool when the response body is done.
pub struct Release {
    sender: Sender,
    addr: IdleKey,
    upstreams: Rc<Upstreams>,
    /// The streamed request body, if the request has one.
    sending: Option<Arc<Sending>>,
}

impl Release {
    /// The answer is complete: the connection can carry another request,
    /// unless the upstream answered before it took the whole request body
    /// (a 413 to an upload, say). Then the connection ends: it cannot carry
    /// another request, and the client's body it holds goes with it, so
    /// the client's connection closes rather than wait on an upload that
    /// nobody reads.
    pub fn finish(self) {
        if self.sending.as_ref().is_some_and(|s| !s.ended()) {
            self.sender.task.abort();
            return;
        }
        let mut idle = self.upstreams.idle.borrow_mut();
        let list = idle.entry(self.addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT && !self.sender.send.is_closed() {
            list.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// A failed exchange, with the request when none of it was sent.
pub struct Failed {
    /// What went wrong.
    pub error: ForwardError,
    /// The request, whole, when no connection carried any of it.
    pub unsent: Option<Request<RequestBody>>,
    /// The upstream answered with an interim (1xx) response before it
    /// failed: it had the request, which is then never sent again.
    pub answered: bool,
}

impl From<ForwardError> for Failed {
    fn from(error: ForwardError) -> Failed {
        Failed {
            error,
            unsent: None,
            answered: false,
        }
    }
}

/// Timeouts that apply to one exchange.
#[derive(Clone, Copy)]
pub struct ExchangeTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent to response head.
    pub response_header: Duration,
    /// An idle pooled connection older than this is not reused.
    pub idle: Duration,
}

impl Upstreams {
    /// An empty pool.
    pub fn new() -> Rc<Upstreams> {
        Rc::new(Upstreams {
            idle: RefCell::new(FxHashMap::default()),
        })
    }

    /// Sends `request` to `endpoint` on a pooled connection or a new one,
    /// and returns the response head with what returns the connection. When
    /// no connection could be had, nothing was sent: the request comes back
    /// with the error, whole, for another endpoint.
    pub async fn send(
        self: &Rc<Self>,
        endpoint: &EndpointEntry,
        mut request: Request<RequestBody>,
        timeouts: ExchangeTimeouts,
    ) -> Result<(Response<Incoming>, Release), Failed> {
        if !request.headers().contains_key(http::header::HOST) {
            // An HTTP/1.0 request may come without a Host; HTTP/1.1 must
            // send one (RFC 9112 §3.2): the endpoint's address, as
            // nginx's `$proxy_host`.
            let address = endpoint
                .label
                .split_once('/')
                .map_or(&*endpoint.label, |(_, a)| a);
            if let Ok(value) = http::HeaderValue::from_str(address) {
                request.headers_mut().insert(http::header::HOST, value);
            }
        }
        // A copy of the request for the keep-alive race (see STALE_AFTER),
        // and whether the next try must take a new connection.
        let mut spare: Option<Request<RequestBody>> = None;
        let mut fresh = false;
        loop {
            let pooled = match fresh {
                true => None,
                false => self.take_idle(idle_key(endpoint), timeouts.idle),
            };
            let (mut sender, reused) = match pooled {
                Some((sender, idle_for)) => {
                    spare = (idle_for >= STALE_AFTER)
                        .then(|| copy_if_retryable(&request))
                        .flatten();
                    (sender, true)
                }
                None => match self.connect(endpoint, timeouts.connect).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            unsent: Some(request),
                            answered: false,
                        })
                    }
                },
            };
            // A pooled connection whose last request body is still being
            // written (the upstream answered early and stopped reading)
            // never becomes ready: after the connect timeout it is dropped
            // and a new one taken, instead of waiting without end.
            let ready = tokio::time::timeout(timeouts.connect, sender.send.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                if reused {
                    fresh |= ready.is_err();
                    continue;
                }
                return Err(Failed {
                    error: ForwardError::Connect {
                        what: "closed",
                        backend: endpoint.label.to_string(),
                        addr: endpoint.addr,
                        source: std::io::Error::from(ErrorKind::ConnectionAborted),
                    },
                    unsent: Some(request),
                    answered: false,
                });
            }
            // Only the upgrades the client asked for keep these fields.
            let upgrade = request.headers().contains_key(http::header::UPGRADE);
            let sending = request.body().sending();
            // hyper's client takes 1xx answers itself; whether one came
            // decides whether a request that then fails may go again
            // (only an idempotent one ever may).
            let interim = is_idempotent(request.method()).then(|| {
                let interim = Arc::new(AtomicBool::new(false));
                let seen = Arc::clone(&interim);
                hyper::ext::on_informational(&mut request, move |_| {
                    seen.store(true, Ordering::Relaxed);
                });
                interim
            });
            let exchange = sender.send.try_send_request(request);
            match answer_within(exchange, timeouts.response_header, sending.as_deref()).await {
                None => {
                    // No final answer in time; an interim one means the
                    // upstream has the request, which never goes again.
                    return Err(Failed {
                        error: ForwardError::Timeout {
                            backend: endpoint.label.to_string(),
                            after: timeouts.response_header,
                        },
                        unsent: None,
                        answered: interim.is_some_and(|i| i.load(Ordering::Relaxed)),
                    });
                }
                Some(Ok(response)) => {
                    // Codings other than chunked would be lost as the body
                    // is re-framed (the fast path refuses them too), and a
                    // length beside a coding is ambiguous (RFC 9112 §6.3:
                    // relayed, it would cut the body short); a protocol
                    // switch nobody asked for is as wrong.
                    let headers = response.headers();
                    if !crate::headers::is_chunked_or_unencoded(headers)
                        || !crate::headers::has_valid_length(headers)
                        || (headers.contains_key(http::header::TRANSFER_ENCODING)
                            && headers.contains_key(http::header::CONTENT_LENGTH))
                        || (response.status() == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade)
                    {
                        return Err(ForwardError::Exchange {
                            what: crate::fast::MALFORMED,
                            backend: endpoint.label.to_string(),
                            kind: crate::stats::ErrorKind::Malformed,
                        }
                        .into());
                    }
                    // hyper's read buffer limit holds a head in pieces
                    // only: one that came in a few large reads is measured
                    // here, as the fast path measures it, status line too.
                    let reason = response
                        .extensions()
                        .get::<hyper::ext::ReasonPhrase>()
                        .map(|reason| reason.as_bytes().len())
                        .or_else(|| response.status().canonical_reason().map(str::len))
                        .unwrap_or(0);
                    let head: usize = "HTTP/1.1 200 \r\n".len()
                        + reason
                        + headers
                            .iter()
                            .map(|(name, value)| name.as_str().len() + value.len() + 4)
                            .sum::<usize>();
                    if head > crate::fast::MAX_RESPONSE_HEAD {
                        return Err(ForwardError::Exchange {
                            what: crate::fast::HEAD_TOO_LARGE,
                            backend: endpoint.label.to_string(),
                            kind: crate::stats::ErrorKind::Malformed,
                        }
                        .into());
                    }
                    let release = Release {
                        sender,
                        addr: idle_key(endpoint),
                        upstreams: Rc::clone(self),
                        sending,
                    };
                    return Ok((response, release));
                }
                Some(Err(mut err)) => {
                    // A pooled connection that the upstream closed before
                    // the request was written: nothing was sent, so the
                    // request is whole and goes out on a fresh connection.
                    if let Some(unsent) = err.take_message() {
                        if reused {
                            request = unsent;
                            continue;
                        }
                    }
                    let error = err.into_error();
                    let answered = interim.is_some_and(|i| i.load(Ordering::Relaxed));
                    // The request went out on a connection that had been
                    // idle, and the upstream closed it without a word: the
                    // keep-alive race. An idempotent request goes again on
                    // a new connection, as Go's and nginx's clients do.
                    if reused && !answered && is_closed_unanswered(&error) {
                        if let Some(copy) = spare.take() {
                            tracing::debug!(backend = %endpoint.label, "stale pooled connection; sending again on a new one");
                            request = copy;
                            fresh = true;
                            continue;
                        }
                    }
                    return Err(Failed {
                        error: classify(endpoint, error),
                        unsent: None,
                        answered,
                    });
                }
            }
        }
    }

    /// Closes the connections idle for `max_idle` or more, and those of
    /// endpoints not `live` (see `RawPool::sweep`).
    pub fn sweep(&self, max_idle: Duration, live: &rustc_hash::FxHashSet<IdleKey>) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|key, list| {
            if !live.contains(key) {
                return false;
            }
            list.retain(|entry| now.duration_since(entry.since) < max_idle);
            !list.is_empty()
        });
    }

    /// A pooled connection to `addr` and how long it was idle.
    fn take_idle(&self, addr: IdleKey, max_idle: Duration) -> Option<(Sender, Duration)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            let idle_for = now.duration_since(entry.since);
            if !entry.sender.send.is_closed() && idle_for < max_idle {
                return Some((entry.sender, idle_for));
            }
        }
        None
    }

    async fn connect(
        &self,
        endpoint: &EndpointEntry,
        timeout: Duration,
    ) -> Result<Sender, ForwardError> {
        handshake(endpoint, connect_raw(endpoint, timeout).await?).await
    }
}

/// A connection to an endpoint: TCP, or TLS over it for a TLS pool.
pub enum RawConn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS to a pool that speaks it.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for RawConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawConn::Plain(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
            RawConn::Tls(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for RawConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            RawConn::Plain(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
            RawConn::Tls(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawConn::Plain(stream) => std::pin::Pin::new(stream).poll_flush(cx),
            RawConn::Tls(stream) => std::pin::Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RawConn::Plain(stream) => std::pin::Pin::new(stream).poll_shutdown(cx),
            RawConn::Tls(stream) => std::pin::Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// A connection to `endpoint` within `timeout`: TCP, then TLS for a TLS
/// pool (the handshake shares the connect timeout: both are about reaching
/// the endpoint, before any of the request is sent).
pub async fn connect_raw(
    endpoint: &EndpointEntry,
    timeout: Duration,
) -> Result<RawConn, ForwardError> {
    let deadline = Instant::now() + timeout;
    let stream = connect_tcp(endpoint, timeout).await?;
    let Some(tls) = &endpoint.tls else {
        return Ok(RawConn::Plain(stream));
    };
    // What the TCP connect left of the timeout. Boxed: the handshake's
    // state (1.3 KiB) would otherwise be room in every fast-path
    // connection's future, plain ones too.
    match Box::pin(tokio::time::timeout_at(deadline, tls.connect(stream))).await {
        Err(_) => Err(ForwardError::ConnectTimeout {
            backend: endpoint.label.to_string(),
            after: timeout,
        }),
        Ok(Err(source)) => Err(ForwardError::UpstreamTls {
            backend: endpoint.label.to_string(),
            addr: endpoint.addr,
            source,
        }),
        Ok(Ok(stream)) => Ok(RawConn::Tls(Box::new(stream))),
    }
}

/// A TCP connection to `endpoint`, with Nagle off, within `timeout`.
async fn connect_tcp(
    endpoint: &EndpointEntry,
    timeout: Duration,
) -> Result<TcpStream, ForwardError> {
    let connect_error = |source: std::io::Error| ForwardError::Connect {
        what: match source.kind() {
            ErrorKind::ConnectionRefused => "refused",
            ErrorKind::ConnectionReset => "reset",
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable",
            _ => "failed",
        },
        backend: endpoint.label.to_string(),
        addr: endpoint.addr,
        source,
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(endpoint.addr)).await {
        Err(_) => {
            return Err(ForwardError::ConnectTimeout {
                backend: endpoint.label.to_string(),
                after: timeout,
            })
        }
        Ok(Err(err)) => return Err(connect_error(err)),
        Ok(Ok(stream)) => stream,
    };
    // Small requests and responses must not wait for Nagle.
    stream.set_nodelay(true).map_err(connect_error)?;
    Ok(stream)
}

/// Starts HTTP/1.1 on a connected stream (TCP or TLS) and spawns the
/// connection's task.
async fn handshake<S>(endpoint: &EndpointEntry, stream: S) -> Result<Sender, ForwardError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A response head over the fast path's limit is refused here too
    // (hyper's default read buffer is ~400 KiB): as nginx's "upstream sent
    // too big header", and alike on every path.
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(crate::fast::MAX_RESPONSE_HEAD)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ForwardError::Upstream {
            what: "handshake failed",
            backend: endpoint.label.to_string(),
            source,
        })?;
    let backend = endpoint.label.clone();
    let task = tokio::task::spawn_local(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(backend = %backend, error = %err, "upstream connection ended");
        }
    });
    Ok(Sender {
        send: sender,
        task: task.abort_handle(),
    })
}

/// `exchange`'s outcome, or None once the upstream has had `after` to
/// answer: from now, or for a streamed body, from the upstream's last take
/// of it (see [`Sending`]).
async fn answer_within<F: std::future::Future>(
    exchange: F,
    after: Duration,
    sending: Option<&Sending>,
) -> Option<F::Output> {
    let mut exchange = std::pin::pin!(exchange);
    let start = Instant::now();
    if let Some(sending) = sending {
        sending.start();
    }
    loop {
        let due = match sending {
            None => start + after,
            // While the body waits for the client, look again later.
            Some(sending) => sending
                .due(after)
                .map_or_else(|| Instant::now() + after, Into::into),
        };
        if let Ok(outcome) = tokio::time::timeout_at(due, exchange.as_mut()).await {
            return Some(outcome);
        }
        let now = std::time::Instant::now();
        if sending.is_none_or(|sending| sending.due(after).is_some_and(|due| due <= now)) {
            return None;
        }
    }
}

/// A pooled connection idle this long may be one the upstream is closing
/// just now (its keep-alive timeout: 2 s for gunicorn, 5 s for Node.js and
/// Apache). Requests sent on one are copied first, so that an idempotent
/// one can go again if the upstream closes without answering. Under load
/// connections are reused within milliseconds and nothing is copied.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// Whether the upstream closed or reset the connection before any of its
/// answer: the sign of a keep-alive race rather than of a failing request.
fn is_closed_unanswered(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
            );
        }
        source = cause.source();
    }
    false
}

/// Whether a method is idempotent (RFC 9110 §9.2.2): a request with it
/// may be sent twice.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A copy of a request that may be sent twice: an idempotent method
/// whose body was read whole. `None` otherwise.
pub fn copy_if_retryable(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !is_idempotent(request.method()) {
        return None;
    }
    let body = match request.body() {
        RequestBody::Empty => RequestBody::Empty,
        RequestBody::Full { data, trailers } => RequestBody::Full {
            data: data.clone(),
            trailers: trailers.clone(),
        },
        RequestBody::Stream { .. } => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Names what went wrong with an exchange, for the error body and metrics.
fn classify(endpoint: &EndpointEntry, source: hyper::Error) -> ForwardError {
    // The request body failed on the client's side, or grew over the limit:
    // the client's fault, not the upstream's.
    if source.is_user() {
        if let Some(over) = crate::error::cause::<BodyOverLimit>(&source) {
            return ForwardError::BodyTooLarge { limit: over.limit };
        }
        if crate::error::cause::<ClientBodyFailed>(&source).is_some() {
            return ForwardError::ClientBody {
                source: Box::new(source),
            };
        }
    }
    let what = if source.is_parse_too_large() {
        crate::fast::HEAD_TOO_LARGE
    } else if source.is_parse() || source.is_parse_status() {
        "sent a malformed response"
    } else if source.is_incomplete_message() {
        "closed the connection before a complete response"
    } else if source.is_body_write_aborted() || source.is_user() {
        "request body failed"
    } else if source.is_canceled() || source.is_closed() {
        "reset before the response"
    } else {
        "failed"
    };
    ForwardError::Upstream {
        what,
        backend: endpoint.label.to_string(),
        source,
    }
}
