//! The HTTP/1.1 fast path: the common request is proxied here without
//! hyper. Its head is parsed in place (httparse), routed, and rewritten
//! into one buffer that goes upstream in one write; the response head is
//! parsed in place and rewritten; the body is relayed as it comes, with
//! back-pressure. No header map, no per-request allocation, and no hand-off
//! to an upstream connection's task: the client's task drives both sockets.
//!
//! "Common" means: HTTP/1.1 or 1.0 (which goes upstream as 1.1, its
//! answer framed for it), an origin-form target, one `Host`, no body,
//! a `Content-Length` body or a chunked one, read whole up to the
//! read-ahead size (a chunked one then goes upstream decoded, with its
//! length, if it has no extensions or trailers) and sent on as it comes
//! past it ([`Streamed`]; a chunked one as it came, chunked), asked for
//! with `Expect: 100-continue` or not, and nothing hop-by-hop
//! but `Connection: keep-alive` or `close`; on a route whose `fast_path`
//! is not off. A route's retries are made here too (the
//! request is whole in one buffer; a streamed one is not retried). Upstream
//! pools may speak plain TCP or TLS (`RawConn`).
//!
//! Anything else hands the connection, with the bytes already read, to
//! hyper (`listener::serve`), which serves it from there on with the checks
//! and answers of `forward`: HTTP/2's preface, HTTP/1.0 without a `Host`
//! or with a chunked body, chunked request bodies with extensions in
//! their first 64 KiB or trailers within it, other expectations,
//! upgrades, absolute-form targets, and anything
//! malformed or over a limit. So each rule about bad input has one
//! implementation, hyper's and `forward`'s; the fast path only ever takes
//! what is plainly well-formed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::access_log::{Asked, Line};
use crate::body::InFlight;
use crate::client_io::TIMEOUT_RESPONSE;
use crate::error::ForwardError;
use crate::forward::{
    count_failure, count_try_failure, healthy_endpoint, host_for_matching, move_on, Proxy,
    READ_AHEAD_BYTES,
};
use crate::headers::{byte_set, put_forwarding, ClientInfo};
use crate::route::{EndpointEntry, Fields, PoolEntry, RouteEntry, RouteTable};
use crate::stats::{ErrorKind, Pending, PoolStats};
use crate::upstream::{connect_raw, idle_key, is_idempotent, IdleKey, RawConn, STALE_AFTER};

/// Field lines parsed in place; a head with more goes to hyper, which
/// answers 431 when it is over the configured limit.
const MAX_FIELDS: usize = 100;
/// A client connection's read buffer grows by this much.
const CLIENT_BUFFER: usize = 8 * 1024;
/// The buffer a client connection's upstream heads and answers are
/// written in starts at this size.
const OUT_BUFFER: usize = 1024;
/// An upstream response is read this much at a time.
const UPSTREAM_BUFFER: usize = 16 * 1024;
/// Spare upstream buffers a worker keeps.
const SPARE_BUFFERS: usize = 256;
/// What an upstream did whose response head is over [`MAX_RESPONSE_HEAD`]
/// or has more than [`MAX_FIELDS`] fields (one message on every path:
/// hyper's client does not say which).
pub(crate) const HEAD_TOO_LARGE: &str = "sent a response head over the limits (64 KiB, 100 fields)";
/// A response head over this size is refused (502), here and by hyper's
/// client (its read buffer limit).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Idle connections kept per endpoint and worker (as `upstream`'s pool).
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// Bytes a request target may hold here: RFC 3986's unreserved and
/// sub-delims, ":", "@", "/", "?" and the "%" of pct-encoding. A target
/// with any other byte goes to hyper, whose URI parser decides.
const TARGET_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=:@/?%");

/// How a connection left the fast path.
pub enum Outcome<S> {
    /// It is over: closed by either side, timed out, or answered and closed.
    Closed,
    /// A request the fast path does not take: hyper serves the connection
    /// from here on, starting with `buffered`.
    Fallback {
        /// The client stream.
        stream: S,
        /// What was read and not yet served: the next request's head first.
        buffered: BytesMut,
        /// Requests answered before (if any, the next wait is idle).
        served: u64,
    },
}

/// One worker's pooled upstream connections for the fast path, and the
/// buffers its connections borrow while they are busy: an idle client
/// connection holds none.
#[derive(Default)]
pub struct RawPool {
    idle: RefCell<FxHashMap<IdleKey, Vec<(RawConn, Instant)>>>,
    /// Upstream read buffers between exchanges.
    pub(crate) upstream_buffers: Spares<BytesMut, UPSTREAM_BUFFER>,
    /// Client read buffers between requests.
    input_buffers: Spares<BytesMut, CLIENT_BUFFER>,
    /// Head buffers (requests going upstream, answers going back) between
    /// requests.
    pub(crate) head_buffers: Spares<Vec<u8>, OUT_BUFFER>,
    /// Timers between requests (see [`DeadlineSpares`]).
    pub(crate) deadlines: DeadlineSpares,
    /// What a client connection waiting for its next request reads into;
    /// borrowed only for one `poll_read`.
    scratch: RefCell<Vec<u8>>,
}

impl RawPool {
    /// Reads the start of a request into `input` (empty, and without a
    /// buffer while the connection waited) through the worker's scratch
    /// buffer, taking a buffer for `input` only once bytes arrive.
    async fn read_fresh<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        input: &mut BytesMut,
    ) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut scratch = self.scratch.borrow_mut();
            if scratch.len() < CLIENT_BUFFER {
                scratch.resize(CLIENT_BUFFER, 0);
            }
            let mut read = tokio::io::ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if !filled.is_empty() {
                        if input.capacity() == 0 {
                            *input = self.input_buffers.take();
                        }
                        input.extend_from_slice(filled);
                    }
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// A pooled connection to `addr` that is still open, and how long it
    /// was idle.
    fn take(&self, addr: IdleKey, max_idle: Duration, probe: bool) -> Option<(RawConn, Duration)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((mut stream, since)) = list.pop() {
            let idle_for = now.duration_since(since);
            if idle_for < max_idle && still_open(&mut stream, probe) {
                return Some((stream, idle_for));
            }
        }
        None
    }

    /// Closes the connections idle for `max_idle` or more, and those of
    /// endpoints not `live` (no longer in the table: never taken again).
    pub(crate) fn sweep(&self, max_idle: Duration, live: &rustc_hash::FxHashSet<IdleKey>) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|key, list| {
            if !live.contains(key) {
                return false;
            }
            // The oldest come first.
            let expired = list
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= max_idle)
                .count();
            list.drain(..expired);
            !list.is_empty()
        });
    }

    pub(crate) fn put(&self, addr: IdleKey, stream: RawConn, max_idle: Duration) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        let now = Instant::now();
        // The oldest come first: those idle too long are closed here, so
        // a quiet pool does not keep sockets the upstream has closed.
        let expired = list
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= max_idle)
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((stream, now));
        }
    }
}

/// Buffers a worker keeps between uses (at most [`SPARE_BUFFERS`]), each
/// made with `SIZE` bytes of room; one that grew past four times that is
/// let go rather than kept.
pub(crate) struct Spares<B, const SIZE: usize>(RefCell<Vec<B>>);

impl<B, const SIZE: usize> Default for Spares<B, SIZE> {
    fn default() -> Self {
        Spares(RefCell::new(Vec::new()))
    }
}

/// What [`Spares`] keeps: a byte buffer.
pub(crate) trait SpareBuffer {
    fn with_room(bytes: usize) -> Self;
    fn room(&self) -> usize;
    fn empty(&mut self);
}

impl SpareBuffer for BytesMut {
    fn with_room(bytes: usize) -> Self {
        BytesMut::with_capacity(bytes)
    }
    fn room(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

impl SpareBuffer for Vec<u8> {
    fn with_room(bytes: usize) -> Self {
        Vec::with_capacity(bytes)
    }
    fn room(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

impl<B: SpareBuffer, const SIZE: usize> Spares<B, SIZE> {
    pub(crate) fn take(&self) -> B {
        self.0
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| B::with_room(SIZE))
    }

    pub(crate) fn give(&self, mut buffer: B) {
        buffer.empty();
        let mut spare = self.0.borrow_mut();
        if spare.len() < SPARE_BUFFERS && buffer.room() <= 4 * SIZE {
            spare.push(buffer);
        }
    }
}

/// Timers a worker keeps between requests (at most [`SPARE_BUFFERS`]).
/// A new [`Deadline`] costs an allocation and a timer-wheel entry; one
/// taken from here is usually still armed, for a time a little before the
/// new request's, so setting it changes one field: it fires early once
/// and is moved then (see [`Deadline::set`]), not once per request.
#[derive(Default)]
pub(crate) struct DeadlineSpares(RefCell<Vec<Deadline>>);

impl DeadlineSpares {
    /// A deadline `after` from now.
    pub(crate) fn take(&self, after: Duration) -> Deadline {
        match self.0.borrow_mut().pop() {
            Some(mut deadline) => {
                deadline.set(after);
                deadline
            }
            None => Deadline::new(after),
        }
    }

    pub(crate) fn give(&self, deadline: Deadline) {
        let mut spare = self.0.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(deadline);
        }
    }
}

/// A connection's two timers (the client's and the upstream's), borrowed
/// from the worker's spares while it is on the fast path and given back
/// however it leaves.
struct Timers<'p> {
    spares: &'p DeadlineSpares,
    both: Option<(Deadline, Deadline)>,
}

impl<'p> Timers<'p> {
    fn take(proxy: &'p Proxy) -> Timers<'p> {
        let timeouts = proxy.routes.timeouts();
        let spares = &proxy.raw.deadlines;
        let head = spares.take(timeouts.request_header);
        let upstream = spares.take(timeouts.response_header);
        Timers {
            spares,
            both: Some((head, upstream)),
        }
    }

    fn both(&mut self) -> (&mut Deadline, &mut Deadline) {
        let (head, upstream) = self.both.as_mut().expect("given back only on drop");
        (head, upstream)
    }
}

impl Drop for Timers<'_> {
    fn drop(&mut self) {
        if let Some((head, upstream)) = self.both.take() {
            self.spares.give(head);
            self.spares.give(upstream);
        }
    }
}

/// A worker's shutdown signal for fast-path connections waiting between
/// requests. Each connection registers its task's waker once, and `stop`
/// wakes them all: no lock and no allocation per request.
#[derive(Default)]
pub struct Stopping {
    stopped: Cell<bool>,
    next: Cell<u64>,
    waiting: RefCell<FxHashMap<u64, Waker>>,
}

impl Stopping {
    /// Whether the worker is stopping.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Ends every wait between requests, now and from now on.
    pub fn stop(&self) {
        self.stopped.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

/// A connection's registration with [`Stopping`], removed when dropped.
#[derive(Default)]
pub(crate) struct Waiting<'a> {
    registered: Option<(&'a Stopping, u64)>,
}

impl<'a> Waiting<'a> {
    pub(crate) fn register(&mut self, stopping: &'a Stopping, waker: &Waker) {
        if self.registered.is_none() {
            let id = stopping.next.get();
            stopping.next.set(id + 1);
            stopping.waiting.borrow_mut().insert(id, waker.clone());
            self.registered = Some((stopping, id));
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some((stopping, id)) = self.registered {
            stopping.waiting.borrow_mut().remove(&id);
        }
    }
}

/// Whether an idle upstream connection is still usable: nothing to read
/// (an idle connection that is readable was closed, or sent garbage).
/// tokio clears read readiness after a short read, so the common case
/// costs no system call.
fn still_open(conn: &mut RawConn, syscall: bool) -> bool {
    // tokio's readiness may not yet know what came after the last answer
    // (see `Exchange::probe`): the kernel is asked.
    if syscall {
        let tcp = match conn {
            RawConn::Plain(stream) => &*stream,
            RawConn::Tls(stream) => stream.get_ref().0,
        };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(tcp).peek(&mut byte) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            // The end, stray bytes, or an error.
            _ => return false,
        }
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut probe = [0u8; 1];
    let mut probe = tokio::io::ReadBuf::new(&mut probe);
    match conn {
        RawConn::Plain(stream) => match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(stream.poll_peek(&mut cx, &mut probe), Poll::Pending),
        },
        // Under TLS, bytes may wait inside the session, read off the
        // socket along with the last answer's: a stray answer there would
        // go to the next request. Only a read that would block says there
        // are none; whatever it takes (stray bytes, an alert, the end)
        // leaves the connection unused.
        RawConn::Tls(stream) => matches!(
            Pin::new(stream.as_mut()).poll_read(&mut cx, &mut probe),
            Poll::Pending
        ),
    }
}

/// A timer for one connection's reads and writes, moved only when it must
/// fire sooner: a later deadline (a phase per request) lets it fire early
/// and be pushed back, which saves a timer-wheel update per request.
pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
}

impl Deadline {
    pub(crate) fn new(after: Duration) -> Deadline {
        let due = Instant::now() + after;
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
        }
    }

    pub(crate) fn set(&mut self, after: Duration) {
        let due = Instant::now() + after;
        self.due = due;
        if self.sleep.deadline() > due {
            self.sleep.as_mut().reset(due);
        }
    }

    /// `work`'s output, or None if the deadline passed first.
    async fn run<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            match self.poll_passed(cx) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await
    }

    /// Whether the deadline has passed; if not, `cx` is woken when it may.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.due {
                return true;
            }
            // Fired for an earlier deadline: wait on.
            let due = self.due;
            self.sleep.as_mut().reset(due);
        }
        false
    }
}

/// Raw fields as routing reads them.
struct RawFields<'h, 'b>(&'h [httparse::Header<'b>]);

impl Fields for RawFields<'_, '_> {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str();
        self.0
            .iter()
            .filter(move |field| field.name.eq_ignore_ascii_case(name))
            .map(|field| field.value)
    }
}

/// The fields the fast path acts on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    ContentLength,
    Connection,
    /// Hop-by-hop fields the fast path leaves to hyper (requests) or
    /// drops (responses): TE, Upgrade, Keep-Alive, Proxy-Connection.
    Hop,
    /// `Expect`: the proxy answers `100-continue` itself (any other
    /// expectation is hyper's); dropped from responses.
    Expect,
    TransferEncoding,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Forwarded,
    Date,
    Other,
}

fn classify(name: &str) -> Field {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        4 if is("host") => Field::Host,
        4 if is("date") => Field::Date,
        14 if is("content-length") => Field::ContentLength,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::Hop,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        2 if is("te") => Field::Hop,
        7 if is("upgrade") => Field::Hop,
        6 if is("expect") => Field::Expect,
        16 if is("proxy-connection") => Field::Hop,
        15 if is("x-forwarded-for") => Field::XForwardedFor,
        17 if is("x-forwarded-proto") => Field::XForwardedProto,
        16 if is("x-forwarded-host") => Field::XForwardedHost,
        9 if is("forwarded") => Field::Forwarded,
        _ => Field::Other,
    }
}

/// A `Content-Length` value: digits only, or a list of equal ones.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

fn tokens(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What to do with the bytes read so far.
enum Step<'t> {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: hyper takes the connection.
    Fallback,
    /// Answered by the proxy; the request (head and body) is `consumed`
    /// bytes long.
    Answer {
        error: ForwardError,
        consumed: usize,
        close: bool,
        head_request: bool,
        /// A body withheld for a `100 Continue` that was not sent: it may
        /// still come, so the close lingers.
        unasked: bool,
        http10: bool,
    },
    /// Goes upstream: the head is in `out`, the body follows.
    Forward(Plan<'t>),
}

/// A routed request whose upstream head is written.
struct Plan<'t> {
    head_len: usize,
    body_len: usize,
    route: &'t RouteEntry,
    pool: u16,
    endpoint: &'t EndpointEntry,
    set_cookie: Option<HeaderValue>,
    head_request: bool,
    idempotent: bool,
    close: bool,
    /// `Expect: 100-continue`, and none of the body has come yet.
    expects_continue: bool,
    /// `Transfer-Encoding: chunked` (`body_len` is then 0): the body is
    /// read to its end, up to the read-ahead size, and goes upstream
    /// decoded, with a `Content-Length`.
    chunked: bool,
    /// A `Content-Length` body over the read-ahead size: what came with
    /// the head goes upstream with it, the rest as it comes ([`Streamed`]).
    streamed: bool,
    /// An HTTP/1.0 request: it goes upstream as HTTP/1.1 (RFC 9112 §2.3),
    /// and its answer says `Connection: keep-alive` when the connection
    /// stays, and ends with the connection when its length is not known.
    http10: bool,
}

/// Parses and routes a request head at the start of `input`; for a
/// request that goes upstream, writes the upstream head into `out`.
fn plan<'t>(
    input: &[u8],
    table: &'t RouteTable,
    client: &ClientInfo,
    out: &mut Vec<u8>,
    now_ms: u64,
) -> Step<'t> {
    let limits = &table.limits;
    // Uninitialised slots: filling 100 empty ones would cost more than
    // parsing a common head.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        input,
        &mut fields,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(_) => return Step::Fallback,
    };
    let (Some(method), Some(target), Some(version @ (0 | 1))) =
        (request.method, request.path, request.version)
    else {
        return Step::Fallback;
    };
    let http10 = version == 0;
    if head_len > limits.max_header_bytes
        || request.headers.len() > limits.max_headers
        || !target.starts_with('/')
        || target.len() > limits.max_uri_bytes
        || !target.bytes().all(|b| TARGET_BYTES[usize::from(b)])
        || method == "CONNECT"
    {
        return Step::Fallback;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut lengths = 0;
    let mut close = false;
    // HTTP/1.0 keeps its connection only when it asks to (RFC 9112 §9.3).
    let mut keep_alive = !http10;
    let mut expects = 0;
    let mut codings = 0;
    // Each name is classified once; the second pass reads the kinds.
    let mut kinds = [Field::Other; MAX_FIELDS];
    for (field, kind) in request.headers.iter().zip(kinds.iter_mut()) {
        *kind = classify(field.name);
        match *kind {
            Field::Host => {
                hosts += 1;
                host = Some(field.value);
            }
            Field::ContentLength => {
                lengths += 1;
                length = parse_length(field.value);
                // A list (`5, 5`) is hyper's to refuse, so that both paths
                // answer it alike (400); an upstream's is taken as one.
                if length.is_none() || field.value.contains(&b',') {
                    return Step::Fallback;
                }
            }
            Field::Connection => {
                for token in tokens(field.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        return Step::Fallback;
                    }
                }
            }
            Field::Expect => {
                expects += 1;
                if expects > 1
                    || !field
                        .value
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"100-continue")
                {
                    return Step::Fallback;
                }
            }
            Field::TransferEncoding => {
                // `chunked` alone; any other coding or list is hyper's.
                codings += 1;
                if codings > 1 || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Step::Fallback;
                }
            }
            Field::Hop => return Step::Fallback,
            _ => {}
        }
    }
    let body_len = length.unwrap_or(0);
    let chunked = codings > 0;
    // Chunked framing from an HTTP/1.0 client is a smuggling attempt
    // (RFC 9112 §6.1): hyper's to refuse.
    if http10 && chunked {
        return Step::Fallback;
    }
    let close = close || !keep_alive;
    let (Some(host_value), 1, 0 | 1, false) = (host, hosts, lengths, chunked && lengths > 0) else {
        return Step::Fallback;
    };
    if body_len > limits.max_body_bytes {
        // hyper answers 413.
        return Step::Fallback;
    }
    let streamed = body_len > READ_AHEAD_BYTES as u64;
    let Ok(host) = host_for_matching(host_value) else {
        return Step::Fallback;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Step::Fallback;
    };
    let path = memchr::memchr(b'?', target.as_bytes()).map_or(target, |at| &target[..at]);
    let fields = RawFields(request.headers);
    // A client that asked before sending its body waits for a `100
    // Continue`; one that sent some already (or has none to send) does not.
    // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1); it
    // goes no further either way.
    let expects_continue =
        !http10 && expects > 0 && (body_len > 0 || chunked) && input.len() == head_len;
    // Answered without a 100, such a client may never send the body the
    // answer would wait for: the answer comes at once and the connection
    // ends (lingering, in case the body comes anyway).
    let (consumed, answer_closes) = match expects_continue {
        true => (head_len, true),
        false => (head_len + body_len as usize, close),
    };
    let answer = |error| match chunked || streamed {
        // A chunked body's end is known only once it is read, and a large
        // one is not read whole here: hyper answers, reading and dropping
        // it.
        true => Step::Fallback,
        false => Step::Answer {
            error,
            consumed,
            close: answer_closes,
            head_request: method == Method::HEAD,
            unasked: expects_continue,
            http10,
        },
    };
    let Some(route) = table.find_route(&method, &host, path, &fields) else {
        return answer(ForwardError::NoRoute {
            host: host.into_owned(),
            path: path.to_string(),
        });
    };
    if !route.fast_path {
        return Step::Fallback;
    }
    let choice = table.choose_pool(route, &fields);
    let (pool, endpoint) = if choice.pinned {
        (choice.pool, table.pool(choice.pool).pick_pinned(now_ms))
    } else {
        match healthy_endpoint(table, route, choice.pool, now_ms) {
            Ok(found) => found,
            Err(error) => return answer(error),
        }
    };
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (field, kind) in request.headers.iter().zip(kinds) {
        match kind {
            Field::Connection
            | Field::XForwardedProto
            | Field::XForwardedHost
            | Field::ContentLength
            | Field::XForwardedFor
            | Field::Forwarded
            | Field::Expect
            | Field::TransferEncoding => {}
            _ => put_field(out, field.name.as_bytes(), field.value),
        }
    }
    // The client is appended to X-Forwarded-For and Forwarded; the proto
    // and host are set (a client's own are not trusted), as `headers`
    // does for hyper's path.
    let values_of = |which: Field| {
        let fields = request.headers.iter().zip(kinds);
        fields
            .filter(move |(_, k)| *k == which)
            .map(|(f, _)| f.value)
    };
    put_forwarding(
        out,
        client,
        host_value,
        values_of(Field::XForwardedFor),
        values_of(Field::Forwarded),
    );
    if length.is_some() {
        // Restated from the parsed value: `0044` or `44, 44` never goes on.
        out.extend_from_slice(b"content-length: ");
        put_number(out, body_len);
        out.extend_from_slice(b"\r\n");
    }
    if !chunked {
        // A chunked body goes on with the length it decodes to, written
        // once it is read (`read_chunked`).
        out.extend_from_slice(b"\r\n");
    }

    let head_request = method == Method::HEAD;
    Step::Forward(Plan {
        head_len,
        body_len: body_len as usize,
        route,
        pool,
        endpoint,
        set_cookie: choice.set_cookie,
        head_request,
        idempotent: is_idempotent(&method),
        close,
        expects_continue,
        chunked,
        streamed,
        http10,
    })
}

pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Date` field line, formatted once a second per thread.
fn put_date(out: &mut Vec<u8>) {
    with_date(|date| {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    });
}

/// Calls `f` with the current `Date` value, formatted once a second.
pub(crate) fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = secs;
            }
        }
        f(&date.1)
    })
}

pub(crate) fn put_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(number(n, &mut digits));
}

/// `n` in decimal, written at the end of `digits`.
fn number(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// The proxy's own answer to a request, as bytes.
fn put_error(
    out: &mut Vec<u8>,
    error: &ForwardError,
    close: bool,
    head_request: bool,
    http10: bool,
) {
    let message = error.message();
    let status = error.status();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    put_number(out, message.len() as u64);
    out.extend_from_slice(b"\r\n");
    put_date(out);
    put_connection(out, close, http10);
    out.extend_from_slice(b"\r\n");
    // A HEAD answer has the body's length and no body (RFC 9110 §9.3.2).
    if !head_request {
        out.extend_from_slice(message.as_bytes());
    }
}

/// The `Connection` field an answer needs: `close` when the connection
/// ends after it, `keep-alive` to an HTTP/1.0 client when it does not (its
/// default is to close), as nginx and hyper's server write them; none
/// for an HTTP/1.1 client that stays.
fn put_connection(out: &mut Vec<u8>, close: bool, http10: bool) {
    match (close, http10) {
        (true, _) => out.extend_from_slice(b"connection: close\r\n"),
        (false, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (false, false) => {}
    }
}

/// The access-log line of the request whose head starts `input`, parsed
/// again (only when the log is on); its method and target are missing
/// from a head too malformed to parse.
fn log_line(input: &[u8], client: &ClientInfo, started: std::time::Instant) -> Option<Line> {
    if !crate::access_log::enabled() {
        return None;
    }
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        input,
        &mut fields,
    );
    let field = |name: &str| {
        request
            .headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    let whole = parsed.is_ok();
    Line::begin(
        &Asked {
            protocol: match request.version {
                Some(0) => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            client: client.peer,
            method: request.method.filter(|_| whole).map(str::as_bytes),
            target: request.path.filter(|_| whole).map(str::as_bytes),
            host: field("host").filter(|_| whole),
            user_agent: field("user-agent").filter(|_| whole),
        },
        started,
    )
}

/// The access-log line of a head [`plan`] took (so well-formed): its
/// request line and fields read by a plain scan, cheaper than parsing it
/// again.
fn logged_head(head: &[u8], client: &ClientInfo, started: std::time::Instant) -> Option<Line> {
    let mut lines = head.split(|&b| b == b'\n');
    let mut request_line = lines.next()?.splitn(3, |&b| b == b' ');
    let method = request_line.next();
    let target = request_line.next();
    let version = request_line.next().unwrap_or_default();
    let (mut host, mut user_agent) = (None, None);
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        let slot = if name.eq_ignore_ascii_case(b"host") {
            &mut host
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            &mut user_agent
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(line[colon + 1..].trim_ascii());
        }
    }
    Line::begin(
        &Asked {
            protocol: match version.trim_ascii_end() {
                b"HTTP/1.0" => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            client: client.peer,
            method,
            target,
            host,
            user_agent,
        },
        started,
    )
}

/// How a response body is delimited (RFC 9112 §6.3).
pub(crate) enum Framing {
    /// No body: HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked(ChunkScan),
    /// Until the upstream closes; re-framed as chunked for an HTTP/1.1
    /// client.
    Close,
}

/// A final response head, rewritten for the client into `out`.
pub(crate) struct ResponseHead {
    /// Its length in the upstream's bytes.
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// Whether the upstream keeps the connection open after the body.
    pub(crate) keep_alive: bool,
    /// The body goes to the client decoded and ends with its connection
    /// (an HTTP/1.0 client's answer of no known length).
    pub(crate) close_delimited: bool,
}

enum Parsed {
    Partial,
    /// A 1xx answer of this length: skipped, the final one follows.
    Interim(usize),
    Final(ResponseHead),
}

/// What the response rewrite needs from the request.
#[derive(Clone, Copy)]
pub(crate) struct ResponseContext<'a> {
    pub(crate) head_request: bool,
    pub(crate) set_cookie: Option<&'a HeaderValue>,
    pub(crate) close: bool,
    /// The head is for an HTTP/2 client: written as an HPACK block (see
    /// [`HeadOut`]).
    pub(crate) hpack: bool,
    /// The client speaks HTTP/1.0: no chunked framing (an answer of no
    /// known length is delimited by the connection's close), and
    /// `Connection: keep-alive` when the connection stays.
    pub(crate) http10: bool,
    /// The worker's shutdown, for an HTTP/1 client: an answer whose head
    /// comes once it began says `Connection: close`.
    pub(crate) stopping: Option<&'a Stopping>,
}

/// Where [`parse_response`] writes the rewritten head: HTTP/1.1 lines, or,
/// for an HTTP/2 client, an HPACK block (`:status`, no reason, nothing
/// connection-specific), so the head is not written twice.
struct HeadOut<'o> {
    out: &'o mut Vec<u8>,
    hpack: bool,
}

impl HeadOut<'_> {
    fn status(&mut self, status: u16, reason: Option<&str>) {
        if self.hpack {
            crate::h2::put_status(self.out, status);
            return;
        }
        let out = &mut *self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        put_number(out, u64::from(status));
        out.push(b' ');
        match reason {
            Some(reason) if !reason.is_empty() => out.extend_from_slice(reason.as_bytes()),
            _ => out.extend_from_slice(
                StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .as_bytes(),
            ),
        }
        out.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        match self.hpack {
            true => crate::h2::put_field(self.out, name, value),
            false => put_field(self.out, name, value),
        }
    }

    fn length(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        self.field(b"content-length", number(n, &mut digits));
    }

    /// The body is re-framed as chunked: HTTP/2 frames it itself.
    fn chunked(&mut self) {
        if !self.hpack {
            self.out
                .extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }

    fn date(&mut self) {
        with_date(|date| self.field(b"date", date));
    }

    /// The `Connection` field (HTTP/2 ends a connection with GOAWAY
    /// instead), and the head's end.
    fn end(&mut self, close: bool, http10: bool) {
        if !self.hpack {
            put_connection(self.out, close, http10);
            self.out.extend_from_slice(b"\r\n");
        }
    }
}

pub(crate) const MALFORMED: &str = "sent a malformed response";

/// Parses a response head at the start of `input`; a final one is
/// rewritten into `out` for the client: hop-by-hop fields dropped, the
/// framing restated, `Date`, the sticky cookie and `Connection: close`
/// added where due.
fn parse_response(
    input: &[u8],
    context: &ResponseContext<'_>,
    out: &mut Vec<u8>,
) -> Result<Parsed, &'static str> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        input,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HEAD_TOO_LARGE),
        Err(_) => return Err(MALFORMED),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err(MALFORMED);
    };
    if status < 100 {
        return Err(MALFORMED);
    }
    if (100..200).contains(&status) {
        // No upgrade was asked for, so a 101 is as wrong as garbage.
        return match status {
            101 => Err(MALFORMED),
            _ => Ok(Parsed::Interim(len)),
        };
    }
    let mut keep_alive = version == 1;
    let mut connection: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    // Whether a Transfer-Encoding came: `chunked` alone, as any other
    // coding is refused (see `headers::is_chunked_or_unencoded`).
    let mut transfer_encoded = false;
    let mut close_asked = false;
    let mut connections = 0;
    let mut kinds = [Field::Other; MAX_FIELDS];
    for (field, kind) in response.headers.iter().zip(kinds.iter_mut()) {
        *kind = classify(field.name);
        match *kind {
            Field::Connection => {
                connections += 1;
                for token in tokens(field.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close_asked = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        keep_alive = true;
                    }
                }
                // Several Connection fields are rare: names in the others
                // are found by `named_in_connection` below.
                connection = Some(field.value);
            }
            Field::ContentLength => {
                let n = parse_length(field.value).ok_or(MALFORMED)?;
                if length.is_some_and(|l| l != n) {
                    return Err(MALFORMED);
                }
                length = Some(n);
            }
            Field::TransferEncoding => {
                if transfer_encoded || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(MALFORMED);
                }
                transfer_encoded = true;
            }
            _ => {}
        }
    }
    // A close never gives way to a keep-alive.
    keep_alive &= !close_asked;
    // Both framings, or chunked from HTTP/1.0 (RFC 9112 §6.1): a smuggling
    // attempt or a broken server; never relayed.
    if transfer_encoded && (length.is_some() || version == 0) {
        return Err(MALFORMED);
    }
    let framing = if context.head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if transfer_encoded {
        Framing::Chunked(ChunkScan::default())
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if matches!(framing, Framing::Close) {
        keep_alive = false;
    }
    // An HTTP/1.0 client knows no chunked framing: a body of no known
    // length goes to it as it comes, ended by closing the connection
    // (RFC 9112 §6.3), as hyper's server and nginx send it.
    let close_delimited = context.http10 && matches!(framing, Framing::Chunked(_) | Framing::Close);
    let many_connections = connections > 1;

    out.clear();
    let mut head = HeadOut {
        out,
        hpack: context.hpack,
    };
    head.status(status, response.reason);
    // A `Date` named in `Connection` is dropped like any field named there,
    // and one of the proxy's own goes in its place (RFC 9110 §6.6.1).
    let mut date_written = false;
    for (field, kind) in response.headers.iter().zip(kinds) {
        match kind {
            Field::Connection
            | Field::Hop
            | Field::Expect
            | Field::TransferEncoding
            | Field::ContentLength => {}
            _ => {
                let named = match connection {
                    Some(list) if many_connections => {
                        named_in_connection(response.headers, &kinds, field.name)
                            || tokens(list).any(|t| t.eq_ignore_ascii_case(field.name.as_bytes()))
                    }
                    Some(list) => {
                        tokens(list).any(|t| t.eq_ignore_ascii_case(field.name.as_bytes()))
                    }
                    None => false,
                };
                if !named {
                    head.field(field.name.as_bytes(), field.value);
                    date_written |= matches!(kind, Field::Date);
                }
            }
        }
    }
    match &framing {
        Framing::Length(n) => head.length(*n),
        Framing::Chunked(_) | Framing::Close if !close_delimited => head.chunked(),
        Framing::Chunked(_) | Framing::Close => {}
        Framing::Empty => {
            // A list of equal lengths goes on as one (RFC 9110 §8.6).
            if let (Some(n), false) = (length, status == 204) {
                head.length(n);
            }
        }
    }
    if !date_written {
        head.date();
    }
    if let Some(cookie) = context.set_cookie {
        head.field(b"set-cookie", cookie.as_bytes());
    }
    // A shutdown begun while the answer was awaited (an upload may take
    // minutes): this is the connection's last answer, and it says so.
    let stopping = context.stopping.is_some_and(Stopping::is_stopped);
    head.end(context.close || close_delimited || stopping, context.http10);
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
        close_delimited,
    }))
}

fn named_in_connection(fields: &[httparse::Header<'_>], kinds: &[Field], name: &str) -> bool {
    fields
        .iter()
        .zip(kinds)
        .filter(|(_, &k)| k == Field::Connection)
        .any(|(f, _)| tokens(f.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Finds where a chunked body ends in the bytes relayed through it
/// (RFC 9112 §7.1): sizes, extensions, data, the last chunk, trailers.
#[derive(Default)]
pub(crate) struct ChunkScan {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Extensions may hold any byte but CR and LF, as hyper's decoder
    /// takes them (for following a request body as hyper reads it).
    lenient: bool,
    /// Where the trailer section began in the bytes last fed, if it did.
    trailers_at: Option<usize>,
    /// Chunk data bytes scanned so far (the body without its framing).
    data: u64,
    /// Whether a chunk had extensions.
    extended: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: an extension or the line end follows.
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A byte of a field name (`tchar`, RFC 9110 §5.6.2).
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a field value (an extension or a trailer line) may hold.
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

impl ChunkScan {
    /// A scan that takes the chunk extensions hyper takes.
    pub(crate) fn lenient() -> ChunkScan {
        ChunkScan {
            lenient: true,
            ..ChunkScan::default()
        }
    }

    /// Scans `bytes`; returns how many belong to the body (all of them,
    /// unless its end is among them), or None if the framing is broken.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        self.decode(bytes, |_| {})
    }

    /// As `feed`, and hands each run of chunk data in `bytes` to `data`.
    pub(crate) fn decode(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            if self.state == ChunkState::Done {
                return Some(at);
            }
            if self.state == ChunkState::Data {
                let take = (bytes.len() - at).min(self.size as usize);
                data(at..at + take);
                at += take;
                self.size -= take as u64;
                self.data += take as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let b = bytes[at];
            at += 1;
            self.state = match (self.state, b) {
                (ChunkState::Size, b) if b.is_ascii_hexdigit() => {
                    // Leading zeros are allowed, any number of them; a size
                    // of 2^60 or more is not taken.
                    if self.size >> 56 != 0 {
                        return None;
                    }
                    self.digits = self.digits.saturating_add(1);
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16)?);
                    ChunkState::Size
                }
                (ChunkState::Size, b' ' | b'\t') if self.digits > 0 => ChunkState::SizeWs,
                (ChunkState::SizeWs, b' ' | b'\t') => ChunkState::SizeWs,
                (ChunkState::Size | ChunkState::SizeWs, b';') if self.digits > 0 => {
                    self.extended = true;
                    ChunkState::Extension
                }
                (ChunkState::Size | ChunkState::SizeWs, b'\r') if self.digits > 0 => {
                    ChunkState::SizeLf
                }
                (ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Extension, b) if field_byte(b) || (self.lenient && b != b'\n') => {
                    ChunkState::Extension
                }
                (ChunkState::SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        self.trailers_at = Some(at);
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    }
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Size,
                (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                (ChunkState::Trailer, b'\r') => ChunkState::TrailerLf,
                (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
                // A trailer line is `name: value` (RFC 9112 §7.1.2).
                (ChunkState::TrailerStart | ChunkState::TrailerName, b) if name_byte(b) => {
                    ChunkState::TrailerName
                }
                (ChunkState::TrailerName, b':') => ChunkState::Trailer,
                (ChunkState::Trailer, b) if field_byte(b) => ChunkState::Trailer,
                (ChunkState::EndLf, b'\n') => ChunkState::Done,
                _ => return None,
            };
        }
        Some(at)
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// As `feed`, for a response relayed to a client that did not ask for
    /// trailers (one that does takes hyper's path): how many of `bytes`
    /// belong to the body, and how many of those to relay. The trailer
    /// section is left out (hyper's server drops trailers too, and they
    /// may carry fields no trailer may, such as `Content-Length`); the
    /// relay ends the body with the bare CRLF of an empty one.
    fn feed_without_trailers(&mut self, bytes: &[u8]) -> Option<(usize, usize)> {
        let in_trailers = matches!(
            self.state,
            ChunkState::TrailerStart
                | ChunkState::TrailerName
                | ChunkState::Trailer
                | ChunkState::TrailerLf
                | ChunkState::EndLf
        );
        self.trailers_at = None;
        let take = self.feed(bytes)?;
        let relay = match (in_trailers, self.trailers_at) {
            (true, _) => 0,
            (false, Some(at)) => at,
            (false, None) => take,
        };
        Some((take, relay))
    }
}

/// Serves a client connection on the fast path until it ends or a request
/// needs hyper.
///
/// One async fn, not one around another: an awaited inner future is kept
/// twice in its caller's state by rustc, which doubled the connection's
/// future (11.8 KiB), copied whole several times as its task is spawned.
pub async fn serve<S: ClientStream>(
    mut stream: S,
    client: &ClientInfo,
    proxy: &Proxy,
) -> Outcome<S> {
    let mut timers = Timers::take(proxy);
    let (deadline, upstream_deadline) = timers.both();
    // Taken from the worker's spares while a request is under way.
    let mut input = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    // Requests answered, for the idle wait and the per-connection limit.
    let mut served = 0u64;
    let mut waiting = Waiting::default();
    loop {
        // Shutting down: a request already read is answered (with
        // `Connection: close`); else the connection is closed, lingering
        // if it served (a request sent meanwhile, unread, would make the
        // kernel reset it and cut the tail of the answer just written).
        if proxy.stopping.stopped.get() && input.is_empty() {
            close_client(&mut stream, served > 0, deadline).await;
            return Outcome::Closed;
        }
        // The table is taken once the head is whole: a request that
        // arrives after a swap is acknowledged follows the new table.
        let mut table: std::sync::Arc<RouteTable>;
        let timeouts = &proxy.routes.timeouts();
        // Nothing yet: the first request must start within the head
        // timeout, later ones within the idle timeout; then the head must
        // be whole within the head timeout.
        deadline.set(match (input.is_empty(), served > 0) {
            (true, true) => timeouts.idle,
            _ => timeouts.request_header,
        });
        let mut head_started = !input.is_empty();
        // Bytes of this request were read with the one before: served in
        // the same poll, with no turn of the reactor between.
        let pipelined = head_started;
        let (plan, started, now_ms) = loop {
            if !input.is_empty() {
                let started = std::time::Instant::now();
                let now_ms = crate::stats::ms_of(started);
                table = proxy.routes.snapshot();
                if out.capacity() == 0 {
                    out = proxy.raw.head_buffers.take();
                }
                match plan(&input, &table, client, &mut out, now_ms) {
                    Step::Partial => {}
                    Step::Fallback => {
                        return Outcome::Fallback {
                            stream,
                            buffered: input,
                            served,
                        }
                    }
                    Step::Answer {
                        error,
                        consumed,
                        close,
                        head_request,
                        unasked,
                        http10,
                    } => {
                        if let Some(line) = log_line(&input, client, started) {
                            let bytes = if head_request {
                                0
                            } else {
                                error.message().len()
                            };
                            line.finish(error.status().as_u16(), bytes as u64, Some(&error));
                        }
                        // The body is read (and dropped) so that the
                        // connection can serve on; one that stops coming
                        // gets the answer anyway, and the connection ends.
                        let read =
                            read_to(&mut stream, &mut input, consumed, deadline, timeouts.idle)
                                .await;
                        if read == Rest::Gone {
                            return Outcome::Closed;
                        }
                        served += 1;
                        let close = close
                            || error.closes_connection()
                            || read == Rest::Stalled
                            || table.limits.is_last_request(served);
                        put_error(&mut out, &error, close, head_request, http10);
                        if !write_out(&mut stream, &out, deadline, timeouts.idle).await {
                            return Outcome::Closed;
                        }
                        if close {
                            let pipelined = read == Rest::Read && input.len() > consumed;
                            close_client(&mut stream, pipelined || unasked, deadline).await;
                            return Outcome::Closed;
                        }
                        input.advance(consumed);
                        break (None, started, now_ms);
                    }
                    Step::Forward(plan) => break (Some(plan), started, now_ms),
                }
                if input.len() > table.limits.max_header_bytes {
                    // hyper answers 431.
                    return Outcome::Fallback {
                        stream,
                        buffered: input,
                        served,
                    };
                }
            }
            let read = if input.is_empty() {
                // Between requests, holding no buffer: a shutdown ends the
                // wait.
                if input.capacity() > 0 {
                    proxy.raw.input_buffers.give(std::mem::take(&mut input));
                }
                if out.capacity() > 0 {
                    proxy.raw.head_buffers.give(std::mem::take(&mut out));
                }
                let stopping = &proxy.stopping;
                let waiting = &mut waiting;
                let fresh = proxy.raw.read_fresh(&mut stream, &mut input);
                let mut read = std::pin::pin!(deadline.run(fresh));
                let read = std::future::poll_fn(|cx| {
                    if stopping.stopped.get() {
                        return Poll::Ready(None);
                    }
                    waiting.register(stopping, cx.waker());
                    read.as_mut().poll(cx).map(Some)
                })
                .await;
                match read {
                    Some(read) => read,
                    None => return Outcome::Closed,
                }
            } else {
                if input.capacity() - input.len() < CLIENT_BUFFER / 2 {
                    // An emptied buffer takes back the space before its start.
                    input.reserve(CLIENT_BUFFER);
                }
                deadline.run(stream.read_buf(&mut input)).await
            };
            match read {
                Some(Ok(n)) if n > 0 => {
                    if !head_started {
                        head_started = true;
                        deadline.set(timeouts.request_header);
                    }
                }
                Some(_) => return Outcome::Closed,
                None => {
                    if !input.is_empty() {
                        crate::access_log::refused(client.peer, TIMEOUT_RESPONSE);
                        deadline.set(timeouts.request_header);
                        let _ = deadline
                            .run(async {
                                stream.write_all(TIMEOUT_RESPONSE).await?;
                                stream.shutdown().await
                            })
                            .await;
                    }
                    return Outcome::Closed;
                }
            }
        };
        let Some(plan) = plan else { continue };
        // The access-log line, once the request is known to be served
        // here (a chunked body may yet send it to hyper, which logs it).
        let line_of = |input: &BytesMut| match crate::access_log::enabled() {
            false => None,
            true => logged_head(&input[..plan.head_len], client, started),
        };

        // The body, read whole (it is at most READ_AHEAD_BYTES), asked for
        // first if the client waits to be.
        if plan.expects_continue
            && input.len() == plan.head_len
            && !write_out(&mut stream, CONTINUE_RESPONSE, deadline, timeouts.idle).await
        {
            // A request whose body never came: 400, as nginx logs it
            // ("client prematurely closed connection") and hyper's path.
            if let Some(line) = line_of(&input) {
                line.finish(
                    400,
                    0,
                    Some(&"client closed the connection before its body"),
                );
            }
            return Outcome::Closed;
        }
        // A body over the read-ahead size: what came with the head goes
        // with it, the rest as it comes, once the upstream connection is
        // there (`Streamed`).
        let mut left = None;
        let read = match plan.chunked {
            false if plan.streamed => {
                let end = input.len().min(plan.head_len + plan.body_len);
                out.extend_from_slice(&input[plan.head_len..end]);
                left = Some(BodyLeft::Length(plan.head_len + plan.body_len - end));
                Ok(end)
            }
            false => {
                let end = plan.head_len + plan.body_len;
                match read_to(&mut stream, &mut input, end, deadline, timeouts.idle).await {
                    Rest::Read => {
                        out.extend_from_slice(&input[plan.head_len..end]);
                        Ok(end)
                    }
                    rest => Err(rest),
                }
            }
            true => {
                let max_data = table.limits.max_body_bytes;
                let chunked = (plan.head_len, max_data, &mut out);
                match read_chunked(&mut stream, &mut input, chunked, deadline, timeouts.idle).await
                {
                    Chunked::Read(end) => Ok(end),
                    Chunked::Rest(rest) => Err(rest),
                    Chunked::Stream(scan, end) => {
                        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                        out.extend_from_slice(&input[plan.head_len..end]);
                        left = Some(BodyLeft::Chunked {
                            scan,
                            ahead: 0,
                            max: max_data,
                        });
                        Ok(end)
                    }
                    Chunked::Hyper => {
                        if plan.expects_continue {
                            // The 100 is sent: hyper must not send another.
                            input = without_expect(input, plan.head_len);
                        }
                        return Outcome::Fallback {
                            stream,
                            buffered: input,
                            served,
                        };
                    }
                }
            }
        };
        let mut line = line_of(&input);
        let end = match read {
            Ok(end) => end,
            Err(rest) => {
                end_mid_body(&mut stream, rest, line, deadline, timeouts.idle).await;
                return Outcome::Closed;
            }
        };
        input.advance(end);
        served += 1;

        let pool = table.pool(plan.pool);
        let stats = plan.route.stats(plan.pool);
        let mut in_flight = pool
            .counts_in_flight()
            .then(|| InFlight::start(&plan.endpoint.in_flight));
        // A shutdown under way, or the connection's request limit: this is
        // its last answer.
        let close =
            plan.close || proxy.stopping.stopped.get() || table.limits.is_last_request(served);
        let context = ResponseContext {
            head_request: plan.head_request,
            set_cookie: plan.set_cookie.as_ref(),
            close,
            hpack: false,
            http10: plan.http10,
            stopping: Some(&proxy.stopping),
        };
        // From the worker's spares: an idle client holds no upstream buffer.
        let mut upstream_buffer = proxy.raw.upstream_buffers.take();
        let mut ex = Exchange {
            raw: &proxy.raw,
            out: &mut out,
            buffer: &mut upstream_buffer,
            context: &context,
            // A streamed body cannot go again: it is not kept.
            idempotent: plan.idempotent && left.is_none(),
            table: &table,
            deadline: upstream_deadline,
            probe: pipelined,
            trying: plan.endpoint.addr,
        };
        // The upstream's time runs from when the request is whole here
        // (see `Pending`): a body read ahead took the client's time.
        let pending = match (&left, plan.body_len > 0 || plan.chunked) {
            (Some(_), _) => stats.send_streaming(started),
            (None, true) => {
                let now = std::time::Instant::now();
                stats.send(now, crate::stats::ms_of(now))
            }
            (None, false) => stats.send(started, now_ms),
        };
        // Some of a streamed body is unread, or the upstream answered
        // before it had it all: neither connection can serve on.
        let mut unread = false;
        let exchanged = if let Some(left) = left {
            let mut body = Streamed {
                client: &mut stream,
                input: &mut input,
                left,
                deadline: &mut *deadline,
                idle: timeouts.idle,
                end: StreamEnd::Whole,
                pending: &pending,
            };
            let sent = exchange_moving_on(
                &mut ex,
                pool,
                stats,
                plan.endpoint,
                now_ms,
                &mut in_flight,
                Some(&mut body),
            )
            .await;
            unread = !body.left.done() || body.end == StreamEnd::Early;
            match body.end {
                StreamEnd::Whole | StreamEnd::Early => Some(sent),
                StreamEnd::Left => None,
                StreamEnd::Body(rest) => {
                    if let Some(line) = line.as_mut() {
                        line.served(&plan.route.name, &pool.name, ex.trying);
                    }
                    proxy.raw.upstream_buffers.give(upstream_buffer);
                    end_mid_body(&mut stream, rest, line, deadline, timeouts.idle).await;
                    return Outcome::Closed;
                }
                StreamEnd::Refused(fault) => {
                    if let Some(mut line) = line {
                        line.served(&plan.route.name, &pool.name, ex.trying);
                        line.finish(fault.status(), 0, Some(&fault.why()));
                    }
                    proxy.raw.upstream_buffers.give(upstream_buffer);
                    // The rest of the body may be on its way.
                    if write_out(&mut stream, fault.answer(), deadline, timeouts.idle).await {
                        close_client(&mut stream, true, deadline).await;
                    }
                    return Outcome::Closed;
                }
            }
        } else {
            let exchange = std::pin::pin!(exchange_retrying(
                &mut ex,
                plan.route,
                pool,
                stats,
                &pending,
                plan.endpoint,
                now_ms,
                &mut in_flight,
            ));
            unless_client_leaves(&mut stream, &mut input, exchange).await
        };
        let Some((endpoint, sent)) = exchanged else {
            if let Some(mut line) = line {
                line.served(&plan.route.name, &pool.name, ex.trying);
                // nginx's 499: the client closed before the answer.
                line.finish(499, 0, None);
            }
            tracing::debug!(client = %client.peer, "client closed the connection before its answer");
            proxy.raw.upstream_buffers.give(upstream_buffer);
            return Outcome::Closed;
        };
        let (mut upstream, head) = match sent {
            Ok(exchanged) => exchanged,
            Err(failed) => {
                let error = failed.error;
                if let Some(mut line) = line {
                    line.served(&plan.route.name, &pool.name, endpoint.addr);
                    let bytes = if plan.head_request {
                        0
                    } else {
                        error.message().len()
                    };
                    line.finish(error.status().as_u16(), bytes as u64, Some(&error));
                }
                count_failure(pool, pending, endpoint, &error, now_ms);
                tracing::debug!(client = %client.peer, error = %error, "request failed");
                let close = close || unread || proxy.stopping.stopped.get();
                put_error(&mut out, &error, close, plan.head_request, plan.http10);
                proxy.raw.upstream_buffers.give(upstream_buffer);
                if !write_out(&mut stream, &out, deadline, timeouts.idle).await || close {
                    close_after_error(&mut stream, unread, deadline).await;
                    return Outcome::Closed;
                }
                continue;
            }
        };
        pending.answered(head.status, None);
        endpoint.health.succeeded();

        let status = head.status;
        let delimited_by_close = head.close_delimited;
        let close = close || delimited_by_close || unread || proxy.stopping.stopped.get();
        let mut body_bytes = 0;
        let relayed = relay(
            &mut stream,
            &mut upstream,
            &mut upstream_buffer,
            &mut out,
            head,
            deadline,
            upstream_deadline,
            timeouts.idle,
            &mut body_bytes,
        )
        .await;
        if let Some(kind) = relayed.late_error {
            stats.record_broken(kind);
        }
        if let Some(line) = line.as_mut() {
            line.served(&plan.route.name, &pool.name, endpoint.addr);
        }
        if relayed.unsent {
            // Logged below, as the 502 it becomes.
        } else if let Some(line) = line.take() {
            match relayed.late_error {
                Some(kind) => line.finish(status, body_bytes, Some(&kind.broke_off())),
                None => line.finish(status, body_bytes, None),
            }
        }
        if relayed.reusable && !unread {
            proxy.raw.put(idle_key(endpoint), upstream, timeouts.idle);
        }
        proxy.raw.upstream_buffers.give(upstream_buffer);
        if !relayed.client_ok {
            if delimited_by_close && relayed.late_error.is_some() {
                stream.reset_on_close();
            }
            return Outcome::Closed;
        }
        if relayed.unsent {
            // Malformed from its first bytes: a 502, as for a bad head.
            let error = ForwardError::Exchange {
                what: MALFORMED,
                backend: endpoint.label.to_string(),
                kind: ErrorKind::Malformed,
            };
            if let Some(line) = line {
                let bytes = if plan.head_request {
                    0
                } else {
                    error.message().len()
                };
                line.finish(error.status().as_u16(), bytes as u64, Some(&error));
            }
            put_error(&mut out, &error, close, plan.head_request, plan.http10);
            if !write_out(&mut stream, &out, deadline, timeouts.idle).await || close {
                close_after_error(&mut stream, unread, deadline).await;
                return Outcome::Closed;
            }
            continue;
        }
        if close {
            // The rest of an early-answered body may be on its way.
            let linger = !input.is_empty() || unread || proxy.stopping.stopped.get();
            close_client(&mut stream, linger, deadline).await;
            return Outcome::Closed;
        }
    }
}

/// `work`'s output, or None if the client closed its connection (or it
/// broke) first. The exchange is then dropped, which closes its upstream
/// connection: the answer has nowhere to go (nginx's 499; hyper's side,
/// with half-closes off, does the same). Bytes the client sends meanwhile,
/// a pipelined request, are kept in `input` and end the watch.
///
/// On a TCP stream the watch costs no system call: tokio cleared the read
/// readiness when the request's read came up short.
fn unless_client_leaves<'a, S: AsyncRead + Unpin, F: Future>(
    client: &'a mut S,
    input: &'a mut BytesMut,
    mut work: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    let mut watching = input.is_empty();
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        poll_client(client, input, &mut watching, cx)
    })
}

/// `work`'s output; with a client to watch (a streamed request's, whose
/// connection the exchange holds), as [`unless_client_leaves`].
async fn watching<'c, F: Future>(
    mut client: Option<(&mut (dyn AsyncRead + Unpin + 'c), &mut BytesMut)>,
    mut work: Pin<&mut F>,
) -> Option<F::Output> {
    let mut watching = client.as_ref().is_some_and(|(_, input)| input.is_empty());
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        match client.as_mut() {
            Some((client, input)) => poll_client(*client, input, &mut watching, cx),
            None => Poll::Pending,
        }
    })
    .await
}

/// Pending while the client of an exchange under way stays; `None` once
/// it closed its connection (or it broke). Bytes it sends meanwhile (a
/// pipelined request) are kept in `input` and end the watch.
fn poll_client<S: AsyncRead + Unpin + ?Sized, T>(
    client: &mut S,
    input: &mut BytesMut,
    watching: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<T>> {
    if *watching {
        let mut bytes = [MaybeUninit::<u8>::uninit(); 1024];
        let mut read = tokio::io::ReadBuf::uninit(&mut bytes);
        match Pin::new(client).poll_read(cx, &mut read) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                input.extend_from_slice(read.filled());
                *watching = false;
            }
            Poll::Ready(_) => return Poll::Ready(None),
        }
    }
    Poll::Pending
}

/// A client connection's transport, as the fast path ends it.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    /// Whether ending the connection is said in the stream first (TLS's
    /// `close_notify`, RFC 8446 §6.1); plain TCP's FIN goes with the close.
    const SAYS_CLOSE: bool;

    /// Makes the close, when the stream is dropped, a reset: for an answer
    /// the upstream broke off whose body the close delimits (to an
    /// HTTP/1.0 client), a FIN would say it is whole.
    fn reset_on_close(&self);
}

impl ClientStream for tokio::net::TcpStream {
    const SAYS_CLOSE: bool = false;

    fn reset_on_close(&self) {
        // SO_LINGER 0: the close sends RST, and does not block.
        let _ = self.set_zero_linger();
    }
}

impl<IO: ClientStream> ClientStream for tokio_rustls::server::TlsStream<IO> {
    const SAYS_CLOSE: bool = true;

    fn reset_on_close(&self) {
        // No close_notify is sent either: TLS says the end is cut.
        self.get_ref().0.reset_on_close();
    }
}

/// Ends a client connection after the proxy's own error answer: lingering
/// when the rest of a streamed request body (`unread`) may be on its way.
async fn close_after_error<S: ClientStream>(stream: &mut S, unread: bool, deadline: &mut Deadline) {
    match unread {
        true => close_client(stream, true, deadline).await,
        false => drop(stream.shutdown().await),
    }
}

/// How long a closing client connection is read on (see [`close_client`]).
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Ends a client connection after its last answer, with a FIN behind the
/// answer. When bytes of further requests were read (`pipelined`), more
/// may be on the way: closing with them unread would make the kernel
/// reset the connection and drop the tail of the answer still queued. So
/// what comes is read and dropped until the client closes or [`LINGER`]
/// passes (nginx's lingering close).
async fn close_client<S: ClientStream>(stream: &mut S, pipelined: bool, deadline: &mut Deadline) {
    if !pipelined {
        // The close itself sends the FIN: a `shutdown` first would cost a
        // system call per connection that ends here.
        if S::SAYS_CLOSE {
            let _ = stream.shutdown().await;
        }
        return;
    }
    let _ = stream.shutdown().await;
    deadline.set(LINGER);
    // On the heap: on the stack it would make every connection's future
    // 4 KiB larger, for a wait few connections make.
    let mut sink = vec![0u8; 4096];
    while let Some(Ok(n)) = deadline.run(stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// Answers an HTTP/2 preface on a connection that agreed on HTTP/1.1
/// (by TLS's ALPN, or by the requests before it) with a 400, and closes.
pub(crate) async fn refuse_preface<S: ClientStream>(
    mut stream: S,
    client: &ClientInfo,
    proxy: &Proxy,
) {
    let idle = proxy.routes.timeouts().idle;
    let mut deadline = proxy.raw.deadlines.take(idle);
    let error = ForwardError::BadRequest {
        reason: "an HTTP/2 preface on a connection that speaks HTTP/1.1",
    };
    let mut out = Vec::new();
    put_error(&mut out, &error, true, false, false);
    crate::access_log::refused(client.peer, &out);
    if write_out(&mut stream, &out, &mut deadline, idle).await {
        close_client(&mut stream, true, &mut deadline).await;
    }
    proxy.raw.deadlines.give(deadline);
}

/// How reading the rest of a request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rest {
    Read,
    /// The client closed (or broke) its connection.
    Gone,
    /// Nothing came for the idle timeout.
    Stalled,
}

/// What a client that sent `Expect: 100-continue` waits for.
const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The answer to a request whose body stopped coming.
const BODY_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 41\r\nconnection: close\r\n\r\nrequest body not received within timeout\n";

/// Reads until `input` holds `end` bytes.
async fn read_to<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    end: usize,
    deadline: &mut Deadline,
    idle: Duration,
) -> Rest {
    while input.len() < end {
        input.reserve(end - input.len());
        deadline.set(idle);
        match deadline.run(stream.read_buf(input)).await {
            Some(Ok(n)) if n > 0 => {}
            Some(_) => return Rest::Gone,
            None => return Rest::Stalled,
        }
    }
    Rest::Read
}

/// Ends a connection whose client stopped sending its request body
/// (408, nginx's `client_body_timeout`) or left mid-body (logged 400, as
/// nginx logs it and hyper's path; 499 is for a client that leaves while
/// its whole request waits for the upstream).
async fn end_mid_body<S: ClientStream>(
    stream: &mut S,
    rest: Rest,
    line: Option<Line>,
    deadline: &mut Deadline,
    idle: Duration,
) {
    if rest == Rest::Stalled {
        if let Some(line) = line {
            line.finish(408, 0, Some(&"request body timed out"));
        }
        let _ = write_out(stream, BODY_TIMEOUT_RESPONSE, deadline, idle).await;
        let _ = stream.shutdown().await;
    } else if let Some(line) = line {
        line.finish(400, 0, Some(&"client closed the connection mid-body"));
    }
}

/// How reading a chunked request body ended.
enum Chunked {
    /// Whole, and decoded after the upstream head: it ends at this offset
    /// of the input.
    Read(usize),
    /// The client left, or stopped sending.
    Rest(Rest),
    /// Over the read-ahead size, well-framed so far and without
    /// extensions: it goes upstream chunked, as it came, with what is
    /// still to come; the scan so far, and the offset it reached.
    Stream(ChunkScan, usize),
    /// Not for the fast path: trailers, chunk extensions, a body over
    /// `max_body_bytes`, framing the strict scan refuses (hyper decides).
    /// Nothing went upstream, and the input is as read.
    Hyper,
}

/// `input` without the `Expect` field line of the head it starts with
/// (`head_len` bytes long), for a request handed to hyper once the fast
/// path has sent its `100 Continue`.
fn without_expect(input: BytesMut, head_len: usize) -> BytesMut {
    let head = &input[..head_len];
    let mut at = 0;
    while let Some(end) = memchr::memchr(b'\n', &head[at..]).map(|n| at + n + 1) {
        let line = &head[at..end];
        if line.len() > 7 && line[..7].eq_ignore_ascii_case(b"expect:") {
            let mut kept = BytesMut::with_capacity(input.len() - line.len());
            kept.extend_from_slice(&input[..at]);
            kept.extend_from_slice(&input[end..]);
            return kept;
        }
        at = end;
    }
    input
}

/// Reads a chunked request body that starts at `start` in `input` to its
/// end; once whole, ends the upstream head in `out` with its decoded
/// length and appends the decoded data.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    (start, max_data, out): (usize, u64, &mut Vec<u8>),
    deadline: &mut Deadline,
    idle: Duration,
) -> Chunked {
    let mut scan = ChunkScan::default();
    let mut scanned = start;
    let mut trailers_at = None;
    loop {
        if input.len() > scanned {
            scan.trailers_at = None;
            let Some(taken) = scan.feed(&input[scanned..]) else {
                return Chunked::Hyper;
            };
            trailers_at = scan.trailers_at.map(|at| scanned + at).or(trailers_at);
            scanned += taken;
            if scan.done() {
                break;
            }
        }
        if scan.data > max_data || (scan.extended && scanned - start > READ_AHEAD_BYTES) {
            return Chunked::Hyper;
        }
        if scanned - start > READ_AHEAD_BYTES {
            return Chunked::Stream(scan, scanned);
        }
        if input.capacity() - input.len() < CLIENT_BUFFER / 2 {
            input.reserve(CLIENT_BUFFER);
        }
        deadline.set(idle);
        match deadline.run(stream.read_buf(input)).await {
            Some(Ok(n)) if n > 0 => {}
            Some(_) => return Chunked::Rest(Rest::Gone),
            None => return Chunked::Rest(Rest::Stalled),
        }
    }
    // A trailer section that is more than the last CRLF is hyper's (it
    // passes trailers on where the upstream takes them), and so are chunk
    // extensions (it bounds their size; they would not go on anyway).
    // A body that ended in the read that took it past the read-ahead
    // size is whole here, at most one read over: decoded as a smaller one.
    let trailers = trailers_at.is_some_and(|at| scanned - at > 2);
    if scan.data > max_data || trailers || scan.extended {
        return Chunked::Hyper;
    }
    out.extend_from_slice(b"content-length: ");
    put_number(out, scan.data);
    out.extend_from_slice(b"\r\n\r\n");
    let body = &input[start..scanned];
    let mut decode = ChunkScan::default();
    decode.decode(body, |data| out.extend_from_slice(&body[data]));
    Chunked::Read(scanned)
}

/// Writes `bytes` to the client; false if it went away or did not read
/// for `idle` (nginx's `send_timeout`).
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    deadline: &mut Deadline,
    idle: Duration,
) -> bool {
    deadline.set(idle);
    matches!(
        deadline
            .run(async {
                stream.write_all(bytes).await?;
                stream.flush().await
            })
            .await,
        Some(Ok(()))
    )
}

/// A failed exchange.
pub(crate) struct Failed {
    pub(crate) error: ForwardError,
    /// Whether any of the request may have reached the endpoint.
    sent: bool,
    /// Whether an interim (1xx) answer came before the failure: the
    /// upstream has the request, which never goes again.
    answered: bool,
}

impl Failed {
    fn unsent(error: ForwardError) -> Failed {
        Failed {
            error,
            sent: false,
            answered: false,
        }
    }

    fn sent(error: ForwardError, answered: bool) -> Failed {
        Failed {
            error,
            sent: true,
            answered,
        }
    }

    /// The client of a streamed request stopped sending, or left: nothing
    /// for the upstream's account. The caller looks no further than
    /// [`Streamed::end`], which says what happened.
    fn client(endpoint: &EndpointEntry) -> Failed {
        let error = ForwardError::Exchange {
            what: "the client stopped sending its body or left",
            backend: endpoint.label.to_string(),
            kind: ErrorKind::Reset,
        };
        Failed::sent(error, false)
    }
}

/// One request's exchange with an upstream, and what it needs.
pub(crate) struct Exchange<'a> {
    pub(crate) raw: &'a RawPool,
    /// The request, then the response head rewritten for the client.
    pub(crate) out: &'a mut Vec<u8>,
    /// The upstream's bytes.
    pub(crate) buffer: &'a mut BytesMut,
    pub(crate) context: &'a ResponseContext<'a>,
    pub(crate) idempotent: bool,
    pub(crate) table: &'a RouteTable,
    pub(crate) deadline: &'a mut Deadline,
    /// Whether a pooled connection is checked with a system call rather
    /// than tokio's cached readiness: for a pipelined request, the
    /// connection may have been put back in this same poll, before tokio
    /// saw the upstream's close or stray bytes that came after its answer.
    pub(crate) probe: bool,
    /// The endpoint tried last (a retry or a failed connect moves on): the
    /// one an access-log line names if the client leaves first.
    pub(crate) trying: std::net::SocketAddr,
}

/// [`exchange_moving_on`], then, on a route that retries sent requests,
/// the request again on another endpoint of the pool while the route
/// retries what came of it, as `forward` does on hyper's path: a status
/// the route names, or a reset or a timeout before any answer. Only an
/// idempotent request goes again; its head and body are all in `ex.out`,
/// a copy of which is kept aside for the next try (the response head is
/// written over it). A try that is retried is counted as an answer of its
/// own: a retry must not hide a failing canary. Returns the endpoint last
/// tried with the outcome.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange_retrying<'t>(
    ex: &mut Exchange<'_>,
    route: &RouteEntry,
    pool: &'t PoolEntry,
    stats: &PoolStats,
    pending: &Pending<'_>,
    endpoint: &'t EndpointEntry,
    now_ms: u64,
    in_flight: &mut Option<InFlight>,
) -> (&'t EndpointEntry, Result<(RawConn, ResponseHead), Failed>) {
    let retries = &route.retries;
    if retries.attempts == 0 || !ex.idempotent {
        return exchange_moving_on(ex, pool, stats, endpoint, now_ms, in_flight, None).await;
    }
    let mut request = ex.raw.head_buffers.take();
    request.extend_from_slice(ex.out);
    let mut left = retries.attempts;
    let mut endpoint = endpoint;
    let last = loop {
        let (tried, sent) =
            exchange_moving_on(ex, pool, stats, endpoint, now_ms, in_flight, None).await;
        let retry = left > 0
            && match &sent {
                Ok((_, head)) => retries.on(head.status),
                Err(failed) => {
                    failed.sent
                        && !failed.answered
                        && match failed.error.upstream_kind() {
                            Some(ErrorKind::Reset) => retries.on_reset,
                            Some(ErrorKind::Timeout) => retries.on_timeout,
                            _ => false,
                        }
                }
            };
        if !retry {
            break (tried, sent);
        }
        match sent {
            // Not relayed: its connection closes with its unread body.
            Ok((_, head)) => {
                pending.answered_try(head.status, None);
                tried.health.succeeded();
            }
            Err(failed) => count_try_failure(pool, pending, tried, &failed.error, now_ms),
        }
        left -= 1;
        ex.out.clear();
        ex.out.extend_from_slice(&request);
        endpoint = pool.pick_other(tried, now_ms).unwrap_or(tried);
        if in_flight.is_some() {
            *in_flight = Some(InFlight::start(&endpoint.in_flight));
        }
        tracing::debug!(route = %route.name, backend = %endpoint.label, "retrying a sent request");
    };
    ex.raw.head_buffers.give(request);
    last
}

/// `exchange`, and after a connect failure (nothing sent) once more with
/// another endpoint of the same pool, as nginx's `proxy_next_upstream
/// error`. Returns the endpoint last tried with the outcome.
async fn exchange_moving_on<'t>(
    ex: &mut Exchange<'_>,
    pool: &'t PoolEntry,
    stats: &PoolStats,
    mut endpoint: &'t EndpointEntry,
    now_ms: u64,
    in_flight: &mut Option<InFlight>,
    mut body: Option<&mut Streamed<'_>>,
) -> (&'t EndpointEntry, Result<(RawConn, ResponseHead), Failed>) {
    let mut moved = false;
    loop {
        ex.trying = endpoint.addr;
        let sent = exchange(ex, endpoint, body.as_deref_mut()).await;
        if let Err(Failed {
            error, sent: false, ..
        }) = &sent
        {
            if let (Some(kind), false) = (error.upstream_kind(), moved) {
                if let Some(other) = move_on(pool, stats, endpoint, kind, now_ms) {
                    endpoint = other;
                    moved = true;
                    // The request is in flight where it went.
                    if in_flight.is_some() {
                        *in_flight = Some(InFlight::start(&other.in_flight));
                    }
                    continue;
                }
            }
        }
        return (endpoint, sent);
    }
}

/// Sends the request in `out` on a pooled or new connection (and then a
/// streamed `body`'s rest) and reads the final response head into
/// `buffer`; on success `out` holds the head rewritten for the client.
async fn exchange(
    ex: &mut Exchange<'_>,
    endpoint: &EndpointEntry,
    mut body: Option<&mut Streamed<'_>>,
) -> Result<(RawConn, ResponseHead), Failed> {
    let Exchange {
        raw,
        out,
        buffer,
        context,
        idempotent,
        table,
        deadline,
        probe,
        ..
    } = ex;
    let timeouts = &table.timeouts;
    let mut fresh = false;
    loop {
        let pooled = match fresh {
            true => None,
            false => raw.take(idle_key(endpoint), timeouts.idle, *probe),
        };
        let reused = pooled.is_some();
        // An idempotent request on a connection idle long enough that the
        // upstream may be closing it just now may go again on a new one
        // (the keep-alive race; see STALE_AFTER), as may a pipelined one
        // (its connection was put back just now).
        let may_resend = *idempotent
            && pooled
                .as_ref()
                .is_some_and(|(_, idle)| *idle >= STALE_AFTER || *probe);
        let mut upstream = match pooled {
            Some((stream, _)) => stream,
            None => match connect_raw(endpoint, timeouts.connect).await {
                Ok(stream) => stream,
                Err(error) => return Err(Failed::unsent(error)),
            },
        };
        // The request must be written and answered within the timeout.
        deadline.set(timeouts.response_header);
        let mut written = deadline.run(upstream.write_all(out)).await;
        // rustls may keep the tail of a write that filled the socket until
        // the next write or a flush, and a request's last bytes have none.
        if let (Some(Ok(())), RawConn::Tls(tls)) = (&written, &mut upstream) {
            written = deadline.run(tls.flush()).await;
        }
        if written.is_none() {
            let error = ForwardError::Timeout {
                backend: endpoint.label.to_string(),
                after: timeouts.response_header,
            };
            return Err(Failed::sent(error, false));
        }
        if written.is_some_and(|w| w.is_err()) {
            // A pooled connection the upstream closed: nothing was taken.
            if reused {
                fresh = true;
                continue;
            }
            let error = ForwardError::Exchange {
                what: "reset before the response",
                backend: endpoint.label.to_string(),
                kind: ErrorKind::Reset,
            };
            return Err(Failed::sent(error, false));
        }
        buffer.clear();
        let mut interim = false;
        // A streamed body's rest first. Boxed: inline, its state would
        // make every connection's future larger.
        let mut early = false;
        if let Some(body) = body.as_deref_mut() {
            let timer = (&mut **deadline, timeouts.response_header);
            match Box::pin(send_rest(&mut upstream, buffer, body, timer)).await {
                Pumped::Whole => body.pending.body_sent(std::time::Instant::now()),
                Pumped::Early => {
                    body.end = StreamEnd::Early;
                    early = true;
                }
                Pumped::UpstreamStalled => {
                    let error = ForwardError::Timeout {
                        backend: endpoint.label.to_string(),
                        after: timeouts.response_header,
                    };
                    return Err(Failed::sent(error, false));
                }
                Pumped::Client(rest) => {
                    body.end = StreamEnd::Body(rest);
                    return Err(Failed::client(endpoint));
                }
                Pumped::Refused(fault) => {
                    body.end = StreamEnd::Refused(fault);
                    return Err(Failed::client(endpoint));
                }
            }
        }
        // An early answer ends the connection: it says so.
        let early_context;
        let context = match early {
            false => *context,
            true => {
                early_context = ResponseContext {
                    close: true,
                    ..**context
                };
                &early_context
            }
        };
        // One call of `read_head` (a second one would not be inlined). A
        // streamed request's client is watched here while its answer is
        // awaited (the others' by the caller).
        let client = body
            .as_deref_mut()
            .filter(|body| body.end == StreamEnd::Whole)
            .map(|body| (&mut *body.client, &mut *body.input));
        let read = {
            let head = std::pin::pin!(read_head(&mut upstream, buffer, context, out, &mut interim));
            deadline.run(watching(client, head)).await
        };
        let read = match read {
            None => None,
            Some(Some(read)) => Some(read),
            Some(None) => {
                if let Some(body) = body.as_deref_mut() {
                    body.end = StreamEnd::Left;
                }
                return Err(Failed::client(endpoint));
            }
        };
        match read {
            None => {
                let error = ForwardError::Timeout {
                    backend: endpoint.label.to_string(),
                    after: timeouts.response_header,
                };
                return Err(Failed::sent(error, interim));
            }
            Some(Ok(head)) => return Ok((upstream, head)),
            Some(Err(HeadError::Unanswered(_))) if may_resend => {
                tracing::debug!(backend = %endpoint.label, "stale pooled connection; sending again on a new one");
                fresh = true;
            }
            Some(Err(HeadError::Unanswered(what) | HeadError::Broken(what))) => {
                let kind = match what {
                    MALFORMED | HEAD_TOO_LARGE => ErrorKind::Malformed,
                    _ => ErrorKind::Reset,
                };
                let error = ForwardError::Exchange {
                    what,
                    backend: endpoint.label.to_string(),
                    kind,
                };
                return Err(Failed::sent(error, interim));
            }
        }
    }
}

enum HeadError {
    /// Closed or reset before a byte of the answer.
    Unanswered(&'static str),
    /// Broken off or malformed.
    Broken(&'static str),
}

async fn read_head(
    upstream: &mut RawConn,
    buffer: &mut BytesMut,
    context: &ResponseContext<'_>,
    out: &mut Vec<u8>,
    interim: &mut bool,
) -> Result<ResponseHead, HeadError> {
    // An interim answer (1xx) came: the upstream has the request, so a
    // close after it is never "unanswered" (and never sent again).
    loop {
        if !buffer.is_empty() {
            match parse_response(buffer, context, out).map_err(HeadError::Broken)? {
                // However it came in: whole in one read or in pieces.
                Parsed::Final(head) if head.len > MAX_RESPONSE_HEAD => {
                    return Err(HeadError::Broken(HEAD_TOO_LARGE))
                }
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim(len) => {
                    buffer.advance(len);
                    *interim = true;
                    continue;
                }
                Parsed::Partial => {}
            }
            if buffer.len() > MAX_RESPONSE_HEAD {
                return Err(HeadError::Broken(HEAD_TOO_LARGE));
            }
        }
        make_room(buffer);
        let empty = buffer.is_empty() && !*interim;
        match upstream.read_buf(buffer).await {
            Ok(n) if n > 0 => {}
            Ok(_) if empty => {
                return Err(HeadError::Unanswered(
                    "closed the connection before a complete response",
                ))
            }
            Err(_) if empty => return Err(HeadError::Unanswered("reset before the response")),
            _ => {
                return Err(HeadError::Broken(
                    "closed the connection before a complete response",
                ))
            }
        }
    }
}

/// A request body over the read-ahead size, sent upstream as it comes
/// from the client after the part that came with the head.
pub(crate) struct Streamed<'s> {
    client: &'s mut (dyn AsyncRead + Unpin),
    /// The client's bytes read and not yet sent: the body's, then perhaps
    /// a pipelined request's.
    input: &'s mut BytesMut,
    /// What of the body is still to go.
    left: BodyLeft,
    /// The client's timer: each read must come within `idle`.
    deadline: &'s mut Deadline,
    idle: Duration,
    /// How it ended.
    end: StreamEnd,
    /// The request's wait for its answer, told when the body went whole.
    pending: &'s Pending<'s>,
}

/// How a [`Streamed`] body's exchange ended, for the caller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// Sent whole, and its answer waited for.
    Whole,
    /// The upstream answered (or closed) before the body was whole. The
    /// answer goes to the client, and neither connection serves on: the
    /// rest of the body is unread.
    Early,
    /// The client stopped sending (`Stalled`) or left (`Gone`) mid-body.
    Body(Rest),
    /// The rest of a chunked body broke its framing, or went over
    /// `max_body_bytes`: what came before went upstream, the rest never.
    Refused(BodyFault),
    /// The client left while its answer was awaited (nginx's 499).
    Left,
}

/// What of a streamed body is still to go.
enum BodyLeft {
    /// A `Content-Length` body: this many bytes.
    Length(usize),
    /// A chunked body, sent as it comes (extensions and trailers too), its
    /// framing followed to find its end: `ahead` bytes at the front of the
    /// input are scanned and not yet sent; its data may be `max` bytes.
    Chunked {
        scan: ChunkScan,
        ahead: usize,
        max: u64,
    },
}

impl BodyLeft {
    fn done(&self) -> bool {
        match self {
            BodyLeft::Length(left) => *left == 0,
            BodyLeft::Chunked { scan, ahead, .. } => *ahead == 0 && scan.done(),
        }
    }

    /// How many bytes at the front of `input` belong to the body and may
    /// go now.
    fn ready(&mut self, input: &[u8]) -> Result<usize, BodyFault> {
        match self {
            BodyLeft::Length(left) => Ok(input.len().min(*left)),
            BodyLeft::Chunked { scan, ahead, max } => {
                if *ahead == 0 && !scan.done() && !input.is_empty() {
                    *ahead = scan.feed(input).ok_or(BodyFault::Malformed)?;
                    if scan.data > *max {
                        return Err(BodyFault::TooLarge);
                    }
                }
                Ok(*ahead)
            }
        }
    }

    fn sent(&mut self, n: usize) {
        match self {
            BodyLeft::Length(left) => *left -= n,
            BodyLeft::Chunked { ahead, .. } => *ahead -= n,
        }
    }
}

/// Why the rest of a streamed chunked body is refused.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    Malformed,
    TooLarge,
}

impl BodyFault {
    fn status(self) -> u16 {
        match self {
            BodyFault::Malformed => 400,
            BodyFault::TooLarge => 413,
        }
    }

    fn why(self) -> &'static str {
        match self {
            BodyFault::Malformed => "malformed chunked request body",
            BodyFault::TooLarge => "request body over the limit",
        }
    }

    /// The whole answer, which ends the connection.
    fn answer(self) -> &'static [u8] {
        match self {
            BodyFault::Malformed => b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\nmalformed chunked request body\n",
            BodyFault::TooLarge => b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\nconnection: close\r\n\r\nrequest body over the limit\n",
        }
    }
}

/// How sending a [`Streamed`] body ended.
enum Pumped {
    Whole,
    /// The upstream's bytes came (other than interim answers), or it
    /// closed, or a write to it failed: what it sent is its answer.
    Early,
    /// No progress writing to the upstream within its timeout.
    UpstreamStalled,
    Client(Rest),
    Refused(BodyFault),
}

/// Sends `body`'s rest (see [`pump`]) and flushes it: TLS may keep the
/// tail of the last write (as in [`exchange`]). The answer's head is read
/// after, within `wait` of the body's end.
async fn send_rest(
    upstream: &mut RawConn,
    buffer: &mut BytesMut,
    body: &mut Streamed<'_>,
    (deadline, wait): (&mut Deadline, Duration),
) -> Pumped {
    match pump(upstream, buffer, body, deadline, wait).await {
        Pumped::Whole => {}
        other => return other,
    }
    deadline.set(wait);
    let flushed = deadline.run(upstream.flush()).await;
    deadline.set(wait);
    match flushed {
        Some(Ok(())) => Pumped::Whole,
        Some(Err(_)) => Pumped::Early,
        None => Pumped::UpstreamStalled,
    }
}

/// Sends `body`'s rest upstream as it comes from the client, a read's
/// worth at a time: the client is read only once what it sent is
/// written, so a slow upstream slows the client (back-pressure). Each read
/// must come within the client's idle timeout, each write within `wait`.
/// Meanwhile the upstream's bytes are read into `answer`: interim (1xx)
/// answers are dropped, anything else ends the sending.
async fn pump(
    upstream: &mut RawConn,
    answer: &mut BytesMut,
    body: &mut Streamed<'_>,
    deadline: &mut Deadline,
    wait: Duration,
) -> Pumped {
    let Streamed {
        client,
        input,
        left,
        deadline: client_deadline,
        idle,
        ..
    } = body;
    loop {
        if left.done() {
            return Pumped::Whole;
        }
        let ready = match left.ready(input) {
            Ok(ready) => ready,
            Err(fault) => return Pumped::Refused(fault),
        };
        let sending = ready > 0;
        let timer = match sending {
            true => {
                deadline.set(wait);
                &mut *deadline
            }
            false => {
                client_deadline.set(*idle);
                &mut **client_deadline
            }
        };
        let step = std::future::poll_fn(|cx| {
            loop {
                make_room(answer);
                match std::pin::pin!(upstream.read_buf(&mut *answer)).poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        // Every whole interim answer read, however many
                        // came in one read.
                        loop {
                            match interim_len(answer) {
                                Some(0) => break,
                                Some(len) => answer.advance(len),
                                None => return Poll::Ready(Some(Pumped::Early)),
                            }
                        }
                    }
                    Poll::Ready(_) => return Poll::Ready(Some(Pumped::Early)),
                }
            }
            if sending {
                return match Pin::new(&mut *upstream).poll_write(cx, &input[..ready]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        input.advance(n);
                        left.sent(n);
                        Poll::Ready(None)
                    }
                    Poll::Ready(_) => Poll::Ready(Some(Pumped::Early)),
                    Poll::Pending => Poll::Pending,
                };
            }
            if input.capacity() - input.len() < CLIENT_BUFFER / 2 {
                input.reserve(CLIENT_BUFFER);
            }
            match std::pin::pin!(client.read_buf(&mut **input)).poll(cx) {
                Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(None),
                Poll::Ready(_) => Poll::Ready(Some(Pumped::Client(Rest::Gone))),
                Poll::Pending => Poll::Pending,
            }
        });
        match timer.run(step).await {
            Some(None) => {}
            Some(Some(end)) => return end,
            None if sending => return Pumped::UpstreamStalled,
            None => return Pumped::Client(Rest::Stalled),
        }
    }
}

/// The length of an interim (1xx, not 101) answer at the start of
/// `answer`, read while a request body still goes: it is dropped. `Some(0)`
/// while what came may yet be one; `None` for anything else (the final
/// answer's start, or bytes [`read_head`] refuses).
fn interim_len(answer: &[u8]) -> Option<usize> {
    // As many fields as a final head may have (`103 Early Hints` may
    // carry many `Link` fields).
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let parsed = response.parse(answer);
    let interim = response
        .code
        .is_none_or(|code| (100..200).contains(&code) && code != 101);
    match parsed {
        Ok(httparse::Status::Partial) if interim => Some(0),
        Ok(httparse::Status::Complete(len)) if interim => Some(len),
        _ => None,
    }
}

/// How a relayed body ended.
struct Relayed {
    /// The client connection can serve another request.
    client_ok: bool,
    /// The upstream connection can go back to the pool.
    reusable: bool,
    /// An upstream failure after the head.
    late_error: Option<ErrorKind>,
    /// Nothing was written: the body broke in the bytes that came with
    /// the head, and the client can still be told (502).
    unsent: bool,
}

impl Relayed {
    /// The client went away.
    const GONE: Relayed = Relayed {
        unsent: false,
        client_ok: false,
        reusable: false,
        late_error: None,
    };

    /// The upstream failed mid-body. Closing the client connection shows
    /// the truncation (fewer bytes than Content-Length, or no last chunk).
    fn broken(kind: ErrorKind) -> Relayed {
        Relayed {
            client_ok: false,
            reusable: false,
            late_error: Some(kind),
            unsent: false,
        }
    }
}

/// Writes the rewritten head (in `out`) and the body to the client.
#[allow(clippy::too_many_arguments)]
async fn relay<S: AsyncWrite + Unpin>(
    client: &mut S,
    upstream: &mut RawConn,
    buffer: &mut BytesMut,
    out: &mut Vec<u8>,
    head: ResponseHead,
    deadline: &mut Deadline,
    upstream_deadline: &mut Deadline,
    idle: Duration,
    sent: &mut u64,
) -> Relayed {
    buffer.advance(head.len);
    let mut body = match head.framing {
        Framing::Empty => Delimited::Length(0),
        Framing::Length(n) => Delimited::Length(n),
        Framing::Chunked(scan) if head.close_delimited => Delimited::Decoded(scan),
        Framing::Chunked(scan) => Delimited::Chunked(scan),
        Framing::Close => {
            let chunk = !head.close_delimited;
            let closing = (deadline, upstream_deadline, idle);
            return relay_until_close(client, upstream, buffer, out, closing, chunk, sent).await;
        }
    };
    let Some((take, relay)) = body.feed_into(buffer, out) else {
        return Relayed {
            client_ok: true,
            unsent: true,
            ..Relayed::broken(ErrorKind::Malformed)
        };
    };
    *sent = body.body_bytes(*sent + relay as u64);
    // Bytes after the body: the upstream is not speaking HTTP/1.1 as it
    // should, and its connection is not used again.
    let mut clean = buffer.len() == take;
    if !write_out(client, out, deadline, idle).await {
        return Relayed::GONE;
    }
    while !body.done() {
        match read_body(upstream, buffer, upstream_deadline, idle).await {
            Ok(n) if n > 0 => {}
            Ok(_) => return Relayed::broken(ErrorKind::Reset),
            Err(kind) => return Relayed::broken(kind),
        }
        if let Delimited::Decoded(_) = body {
            // Only the chunks' data goes on: copied out of their framing.
            out.clear();
            let Some((take, _)) = body.feed_into(buffer, out) else {
                return Relayed::broken(ErrorKind::Malformed);
            };
            clean = buffer.len() == take;
            *sent = body.body_bytes(0);
            if !out.is_empty() && !write_out(client, out, deadline, idle).await {
                return Relayed::GONE;
            }
            continue;
        }
        let Some((take, relay)) = body.feed(buffer) else {
            return Relayed::broken(ErrorKind::Malformed);
        };
        clean = buffer.len() == take;
        *sent = body.body_bytes(*sent + relay as u64);
        let end = body.end();
        if end.is_empty() || relay == 0 {
            if relay > 0 && !write_out(client, &buffer[..relay], deadline, idle).await {
                return Relayed::GONE;
            }
            if !end.is_empty() && !write_out(client, end, deadline, idle).await {
                return Relayed::GONE;
            }
        } else {
            // The body's last bytes and its end, in one write.
            out.clear();
            out.extend_from_slice(&buffer[..relay]);
            out.extend_from_slice(end);
            if !write_out(client, out, deadline, idle).await {
                return Relayed::GONE;
            }
        }
    }
    Relayed {
        client_ok: true,
        reusable: clean && head.keep_alive,
        late_error: None,
        unsent: false,
    }
}

/// A body delimited by its length or by chunked framing, as it passes.
enum Delimited {
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkScan),
    /// Chunked, relayed decoded (to an HTTP/1.0 client).
    Decoded(ChunkScan),
}

impl Delimited {
    /// As `feed`, appending what to relay to `out` (and the body's end,
    /// if it came): how many of `bytes` belong to the body, and how many
    /// were relayed.
    fn feed_into(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Option<(usize, usize)> {
        let (take, relay) = match self {
            Delimited::Decoded(scan) => {
                let before = out.len();
                let take = scan.decode(bytes, |data| out.extend_from_slice(&bytes[data]))?;
                (take, out.len() - before)
            }
            _ => {
                let (take, relay) = self.feed(bytes)?;
                out.extend_from_slice(&bytes[..relay]);
                (take, relay)
            }
        };
        out.extend_from_slice(self.end());
        Some((take, relay))
    }

    /// How many of `bytes` belong to the body, and how many of those to
    /// relay (all but a chunked body's trailers); None if its framing
    /// broke.
    fn feed(&mut self, bytes: &[u8]) -> Option<(usize, usize)> {
        match self {
            Delimited::Length(left) => {
                let take = (bytes.len() as u64).min(*left);
                *left -= take;
                Some((take as usize, take as usize))
            }
            Delimited::Chunked(scan) => scan.feed_without_trailers(bytes),
            Delimited::Decoded(_) => unreachable!("a decoded body is fed by `feed_into`"),
        }
    }

    /// What ends the relayed body after what `feed` said to relay: the
    /// empty trailer section that stands for the one left out.
    fn end(&self) -> &'static [u8] {
        match self {
            Delimited::Chunked(scan) if scan.done() => b"\r\n",
            _ => b"",
        }
    }

    fn done(&self) -> bool {
        match self {
            Delimited::Length(left) => *left == 0,
            Delimited::Chunked(scan) | Delimited::Decoded(scan) => scan.done(),
        }
    }

    /// The body's bytes relayed so far, given `relayed` (what was passed
    /// on): a chunked body's without its framing.
    fn body_bytes(&self, relayed: u64) -> u64 {
        match self {
            Delimited::Length(_) => relayed,
            Delimited::Chunked(scan) | Delimited::Decoded(scan) => scan.data,
        }
    }
}

/// Relays a body that ends when the upstream closes: re-framed as chunked
/// (`chunk`) so that the client connection can stay open, or as it comes,
/// to a client whose connection ends with it. `timers` are the client's
/// and the upstream's deadlines, and how long either may stall.
async fn relay_until_close<S: AsyncWrite + Unpin>(
    client: &mut S,
    upstream: &mut RawConn,
    buffer: &mut BytesMut,
    out: &mut Vec<u8>,
    timers: (&mut Deadline, &mut Deadline, Duration),
    chunk: bool,
    sent: &mut u64,
) -> Relayed {
    let (deadline, upstream_deadline, idle) = timers;
    loop {
        if !buffer.is_empty() {
            *sent += buffer.len() as u64;
            if chunk {
                let _ = write!(out, "{:x}\r\n", buffer.len());
            }
            out.extend_from_slice(buffer);
            if chunk {
                out.extend_from_slice(b"\r\n");
            }
        }
        if !out.is_empty() && !write_out(client, out, deadline, idle).await {
            return Relayed::GONE;
        }
        out.clear();
        match read_body(upstream, buffer, upstream_deadline, idle).await {
            Ok(0) => {
                // The upstream closed: the body is complete.
                let client_ok = !chunk || write_out(client, b"0\r\n\r\n", deadline, idle).await;
                return Relayed {
                    client_ok,
                    reusable: false,
                    late_error: None,
                    unsent: false,
                };
            }
            Ok(_) => {}
            Err(kind) => return Relayed::broken(kind),
        }
    }
}

/// Reads the next part of a response body into the emptied `buffer`:
/// the bytes read (0 at the end of the stream), or how it failed. An
/// upstream that sends nothing for `idle` mid-body has failed (nginx's
/// `proxy_read_timeout`).
async fn read_body(
    upstream: &mut RawConn,
    buffer: &mut BytesMut,
    deadline: &mut Deadline,
    idle: Duration,
) -> Result<usize, ErrorKind> {
    buffer.clear();
    make_room(buffer);
    deadline.set(idle);
    match deadline.run(upstream.read_buf(buffer)).await {
        None => Err(ErrorKind::Timeout),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(ErrorKind::Reset),
    }
}

/// Room for a full read: `read_buf` on a full `BytesMut` would add only
/// 64 bytes. An emptied buffer takes back the space before its start.
pub(crate) fn make_room(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < UPSTREAM_BUFFER / 4 {
        buffer.reserve(UPSTREAM_BUFFER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Option<(usize, bool)> {
        let mut scan = ChunkScan::default();
        let mut total = 0;
        for chunk in chunks {
            total += scan.feed(chunk)?;
        }
        Some((total, scan.done()))
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(scan_all(&[body]), Some((body.len(), true)));
        // Split anywhere, with extensions and trailers, and extra bytes.
        let body = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                scan_all(&[a, b]),
                Some((body.len() - 4, true)),
                "cut at {cut}"
            );
        }
        assert_eq!(scan_all(&[b"5\r\nhel"]), Some((6, false)));
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        assert_eq!(scan_all(&[b"zz\r\n"]), None);
        assert_eq!(scan_all(&[b"\r\n"]), None);
        assert_eq!(scan_all(&[b"5\r\nhelloX"]), None);
        assert_eq!(scan_all(&[b"1234567890abcdef0\r\n"]), None);
        // Only an extension or the line end after whitespace; field bytes
        // in extensions and trailers; CRLF line ends.
        assert_eq!(scan_all(&[b"5 xyz\r\n"]), None);
        assert_eq!(
            scan_all(&[b"5 ;a=b\r\nhello\r\n0\r\n\r\n"]),
            Some((20, true))
        );
        assert_eq!(scan_all(&[b"5;a\0b\r\n"]), None);
        assert_eq!(scan_all(&[b"0\r\nX: 1\n\r\n"]), None);
        assert_eq!(scan_all(&[b"0\r\nX: \x01\r\n\r\n"]), None);
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b"7, 7"), Some(7));
        assert_eq!(parse_length(b"7, 8"), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"+5"), None);
    }
}
