//! Body types on both sides of the proxy.
//!
//! - [`ClientBody`]: the body as the client sends it: hyper's (HTTP/1.1
//!   on hyper's path) or the HTTP/2 server's.
//! - [`RequestBody`]: what goes upstream: nothing, a small body read whole
//!   (so a malformed one is refused before anything is forwarded), or a
//!   large one streamed after the part already read.
//! - [`ProxyBody`]: what goes back to the client: the upstream's body,
//!   streamed with back-pressure, or a short local answer. When the
//!   upstream body ends, its connection goes back to the worker's pool.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Line;
use crate::raw_upstream::RawBody;
use crate::route::RouteTable;
use crate::stats::ErrorKind;
use crate::upstream::Release;

/// The error type of both bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the client sends it.
pub enum ClientBody {
    /// Read by hyper's HTTP/1.1 server.
    Hyper(Incoming),
    /// Read by the HTTP/2 server, stream by stream.
    H2(crate::h2::RecvBody),
    /// The request said it has none (HTTP/2 `END_STREAM` on its head).
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            ClientBody::H2(body) => body.poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body on its way upstream.
pub enum RequestBody {
    /// No body.
    Empty,
    /// The whole body, read before forwarding; hyper frames it with a
    /// `Content-Length`.
    Full {
        /// The bytes.
        data: Option<Bytes>,
        /// Trailers, if the client sent any.
        trailers: Option<HeaderMap>,
    },
    /// A body over the read-ahead size: what was read, then the rest.
    Stream {
        /// The part read ahead.
        prefix: Option<Bytes>,
        /// The rest, straight from the client.
        rest: ClientBody,
        /// Bytes seen so far, checked against the limit.
        seen: u64,
        /// The body limit.
        limit: u64,
        /// How it moves, for the exchange's timeout.
        sending: Arc<Sending>,
    },
}

impl RequestBody {
    /// A body over the read-ahead size: `prefix`, then the rest of `rest`.
    pub fn stream(prefix: Bytes, rest: ClientBody, limit: u64) -> RequestBody {
        RequestBody::Stream {
            seen: prefix.len() as u64,
            prefix: Some(prefix),
            rest,
            limit,
            sending: Arc::new(Sending::new()),
        }
    }

    /// A streamed body's progress; None for a body sent whole.
    pub fn sending(&self) -> Option<Arc<Sending>> {
        match self {
            RequestBody::Stream { sending, .. } => Some(Arc::clone(sending)),
            _ => None,
        }
    }
}

/// A streamed request body's progress, shared with the exchange that sends
/// it. The upstream's time for an answer runs from the body's end (nginx's
/// `proxy_read_timeout` starts once the request is sent), and while the
/// body streams, from the upstream's last take of it (`proxy_send_timeout`):
/// a long upload is not cut off. Time the body waits for the client is the
/// client's (`client_io` times it out), not the upstream's.
#[derive(Debug)]
pub struct Sending {
    base: std::time::Instant,
    /// Milliseconds from `base` to the upstream's last take of the body.
    last_ms: AtomicU64,
    /// The body waits for the client's bytes.
    waiting_for_client: AtomicBool,
    /// The upstream has taken the whole body.
    ended: AtomicBool,
    /// The exchange waiting for the body's end (to time the answer from it).
    on_end: futures_util::task::AtomicWaker,
}

impl Sending {
    fn new() -> Sending {
        Sending {
            base: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_for_client: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            on_end: futures_util::task::AtomicWaker::new(),
        }
    }

    /// The upstream has taken the whole body: says so to the exchange.
    fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
        self.on_end.wake();
    }

    /// When the upstream took the body's last part; pending (woken then)
    /// until it has.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<std::time::Instant> {
        if let Some(at) = self.ended_at() {
            return Poll::Ready(at);
        }
        self.on_end.register(cx.waker());
        self.ended_at().map_or(Poll::Pending, Poll::Ready)
    }

    /// Whether the upstream has taken the whole body.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// When the upstream took the body's last part, once it has.
    pub fn ended_at(&self) -> Option<std::time::Instant> {
        self.ended().then(|| {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            self.base + last
        })
    }

    /// The request goes out now: the upstream's time runs from here, not
    /// from the end of the read-ahead (connecting takes time too).
    pub fn start(&self) {
        self.taken(false);
    }

    /// The upstream took (asked for) more of the body.
    fn taken(&self, waiting_for_client: bool) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        self.waiting_for_client
            .store(waiting_for_client, Ordering::Relaxed);
    }

    /// When the upstream has had `after` since its last take of the body;
    /// None while the body waits for the client.
    pub fn due(&self, after: Duration) -> Option<std::time::Instant> {
        if self.waiting_for_client.load(Ordering::Relaxed) {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.base + last + after)
    }
}

/// A streamed request body broke on the client's side: it closed, reset
/// its stream, sent a malformed chunk or stopped sending. The upstream is
/// not to blame for the failed exchange.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke off")]
pub struct ClientBodyFailed(#[source] pub BoxError);

/// Error for a streamed body that grows over its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit of {limit} bytes")]
pub struct BodyOverLimit {
    /// The limit.
    pub limit: u64,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Stream {
                prefix,
                rest,
                seen,
                limit,
                sending,
            } => {
                if let Some(prefix) = prefix.take() {
                    sending.taken(false);
                    if rest.is_end_stream() {
                        sending.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                let frame = Pin::new(&mut *rest).poll_frame(cx);
                sending.taken(frame.is_pending());
                match frame {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyOverLimit {
                                    limit: *limit,
                                }))));
                            }
                        }
                        // The last frame: hyper's client may not ask again.
                        if frame.is_trailers() || rest.is_end_stream() {
                            sending.end();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(err))) => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyFailed(err)))))
                    }
                    Poll::Ready(None) => {
                        sending.end();
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// Decrements an endpoint's in-flight count when the exchange ends.
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    /// Counts one more request in flight on `counter`.
    pub fn start(counter: &Arc<AtomicU32>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body on its way to the client.
pub enum ProxyBody {
    /// The upstream's body. `release` hands the connection back to the
    /// pool once the body has ended; dropped early, the connection closes.
    Upstream {
        /// The body.
        inner: Incoming,
        /// Returns the connection to the pool at the end.
        release: Option<Release>,
        /// Keeps the endpoint's in-flight count until the body is done.
        in_flight: Option<InFlight>,
        /// Where a failure mid-body is counted: the request's table (handed
        /// over by the request, not cloned), route and pool.
        origin: Origin,
        /// The body ends with an error when the upstream sends nothing for
        /// the table's `timeouts.idle`, as a raw body does (boxed: the
        /// variant stays small, and bodies that never wait need none).
        quiet: Option<Box<Quiet>>,
        /// A first frame read before the head went out (see
        /// [`ProxyBody::upstream_after`]), given before `inner`'s.
        first: Option<Box<Frame<Bytes>>>,
    },
    /// A body read straight from a raw upstream connection (HTTP/2
    /// clients; see `raw_upstream`).
    Raw(Box<RawBody>),
    /// A short answer made by the proxy, or a whole upstream body.
    Local(Option<Bytes>),
}

/// An upstream body's wait for its next frame.
pub struct Quiet {
    timer: crate::fast::Deadline,
    /// The timer counts a wait under way (set at its start).
    waiting: bool,
}

/// The route and pool that served a response, for counting a failure
/// that comes after the head.
pub struct Origin {
    table: Option<Arc<RouteTable>>,
    route: u16,
    pool: u16,
    /// The request's access-log line, written when the body is over.
    log: Option<Box<Logged>>,
}

/// A response's access-log line while its body goes out.
struct Logged {
    line: Line,
    status: u16,
    bytes: u64,
    broke: Option<ErrorKind>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let Logged {
                line,
                status,
                bytes,
                broke,
            } = *log;
            match broke {
                Some(kind) => line.finish(status, bytes, Some(&kind.broke_off())),
                None => line.finish(status, bytes, None),
            }
        }
    }
}

impl Origin {
    /// The route's and pool's indices in the table the request used.
    pub fn new(route: u16, pool: u16) -> Origin {
        Origin {
            table: None,
            route,
            pool,
            log: None,
        }
    }

    /// Counts what a body frame carries, for the access log.
    fn sent(&mut self, frame: &Frame<Bytes>) {
        if let (Some(log), Some(data)) = (self.log.as_mut(), frame.data_ref()) {
            log.bytes += data.len() as u64;
        }
    }

    /// Counts a failure after the head, once.
    pub(crate) fn count(&mut self, kind: ErrorKind) {
        if let Some(log) = self.log.as_mut() {
            log.broke.get_or_insert(kind);
        }
        if let Some(table) = self.table.take() {
            if let Some(route) = table.routes().get(usize::from(self.route)) {
                route.stats(self.pool).record_broken(kind);
            }
        }
    }
}

impl ProxyBody {
    /// Gives an upstream body the table its request was routed with, so
    /// that a reset mid-body is counted for its route and pool.
    pub fn attach_table(&mut self, table: Arc<RouteTable>) {
        match self {
            ProxyBody::Upstream {
                release: Some(_),
                origin,
                ..
            } => origin.table = Some(table),
            ProxyBody::Raw(body) => body.origin_mut().table = Some(table),
            _ => {}
        }
    }

    /// Gives the body the access-log line of its request, answered with
    /// `status`: written when the body is over (a local body's now).
    pub fn attach_log(&mut self, line: Line, status: u16) {
        let logged = |line| {
            Some(Box::new(Logged {
                line,
                status,
                bytes: 0,
                broke: None,
            }))
        };
        match self {
            ProxyBody::Upstream { origin, .. } => origin.log = logged(line),
            ProxyBody::Raw(body) => body.origin_mut().log = logged(line),
            ProxyBody::Local(bytes) => {
                line.finish(status, bytes.as_ref().map_or(0, |b| b.len() as u64), None)
            }
        }
    }

    /// A local answer.
    pub fn local(bytes: Bytes) -> ProxyBody {
        ProxyBody::Local(Some(bytes))
    }

    /// The upstream's body. A body that is already over (HEAD, 204, 304,
    /// `Content-Length: 0`) is never polled by hyper, so its connection
    /// goes back to the pool now.
    pub fn upstream(
        inner: Incoming,
        release: Release,
        in_flight: Option<InFlight>,
        origin: Origin,
    ) -> ProxyBody {
        Self::upstream_after(None, inner, release, in_flight, origin)
    }

    /// As [`upstream`](Self::upstream), the body's `first` frame already
    /// read from `inner`.
    pub fn upstream_after(
        first: Option<Frame<Bytes>>,
        inner: Incoming,
        release: Release,
        in_flight: Option<InFlight>,
        origin: Origin,
    ) -> ProxyBody {
        let ended = first.is_none() && inner.is_end_stream();
        let release = match ended {
            true => {
                release.finish();
                None
            }
            false => Some(release),
        };
        ProxyBody::Upstream {
            inner,
            release,
            in_flight: in_flight.filter(|_| !ended),
            origin,
            quiet: None,
            first: first.map(Box::new),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Raw(body) => {
                let polled = body.poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    body.origin_mut().sent(frame);
                }
                polled
            }
            ProxyBody::Upstream {
                inner,
                release,
                in_flight,
                origin,
                quiet,
                first,
            } => match first.take().map_or_else(
                || Pin::new(&mut *inner).poll_frame(cx),
                |frame| Poll::Ready(Some(Ok(*frame))),
            ) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(quiet) = quiet.as_mut() {
                        quiet.waiting = false;
                    }
                    if inner.is_end_stream() {
                        if let Some(release) = release.take() {
                            release.finish();
                        }
                        in_flight.take();
                    }
                    let frame = match frame.into_trailers() {
                        Ok(mut trailers) => {
                            crate::headers::strip_trailers(&mut trailers);
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    };
                    origin.sent(&frame);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    if let Some(release) = release.take() {
                        release.finish();
                    }
                    in_flight.take();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(err))) => {
                    // A reset mid-body: the connection is not reusable, and
                    // the client must see the truncation, so the error goes on.
                    release.take();
                    in_flight.take();
                    origin.count(ErrorKind::Reset);
                    Poll::Ready(Some(Err(Box::new(err))))
                }
                Poll::Pending => {
                    // Only a body still coming is timed (its release is
                    // taken at the end).
                    let (Some(_), Some(table)) = (release.as_ref(), &origin.table) else {
                        return Poll::Pending;
                    };
                    let idle = table.timeouts.idle;
                    let quiet = quiet.get_or_insert_with(|| {
                        Box::new(Quiet {
                            timer: crate::fast::Deadline::new(idle),
                            waiting: true,
                        })
                    });
                    // The wait starts now, not at the last frame: a body
                    // the client was slow to ask for did not go quiet.
                    if !quiet.waiting {
                        quiet.timer.set(idle);
                        quiet.waiting = true;
                    }
                    if !quiet.timer.poll_passed(cx) {
                        return Poll::Pending;
                    }
                    release.take();
                    in_flight.take();
                    origin.count(ErrorKind::Timeout);
                    let quiet = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream went quiet mid-body",
                    );
                    Poll::Ready(Some(Err(Box::new(quiet))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(bytes) => bytes.is_none(),
            ProxyBody::Raw(body) => body.is_end_stream(),
            ProxyBody::Upstream { inner, first, .. } => first.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Raw(body) => body.size_hint(),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
