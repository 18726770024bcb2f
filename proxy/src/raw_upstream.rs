//! HTTP/2 requests sent upstream on the fast path's raw HTTP/1.1
//! connections. The HTTP/2 server (`h2`) serves the client's side; the
//! upstream side is the fast path's: the request head (and a body read
//! whole) is written in one buffer ([`write_request`]) on a pooled
//! connection of the worker's `RawPool`, driven by the stream's own
//! future, and the response head is parsed and rewritten by the same code
//! as the fast path's ([`send`]). A body that came whole with the head is
//! answered at once and its connection pooled again; a longer one streams
//! through [`RawBody`].
//!
//! Requests this does not take stay on hyper's client (`upstream`): a body
//! over the read-ahead size or with trailers, `TE: trailers` (the upstream
//! may send trailers, which a raw chunked body would not carry), and
//! routes whose `fast_path` is off.

use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;

use crate::access_log::Line;
use crate::body::{BoxError, InFlight, Origin, ProxyBody};
use crate::error::ForwardError;
use crate::fast::{
    exchange_retrying, make_room, put_field, put_number, Deadline, Exchange, Framing, RawPool,
    ResponseContext, MALFORMED,
};
use crate::forward::count_failure;
use crate::headers::{is_connection_specific, put_forwarding, ClientInfo};
use crate::route::{EndpointEntry, RouteEntry, RouteTable};
use crate::stats::ErrorKind;
use crate::upstream::{idle_key, is_idempotent, IdleKey, RawConn};

/// A request routed for the raw path, its HTTP/1.1 head (and body)
/// written by [`write_request`]: one without hop-by-hop fields (HTTP/2
/// has none but `TE: trailers`).
pub(crate) struct Request<'a> {
    pub(crate) method: &'a Method,
    pub(crate) route: &'a RouteEntry,
    pub(crate) pool: u16,
    pub(crate) endpoint: &'a EndpointEntry,
    pub(crate) set_cookie: Option<&'a HeaderValue>,
    pub(crate) started: Instant,
    pub(crate) now_ms: u64,
    /// The response head is for an HTTP/2 client: an HPACK block.
    pub(crate) hpack: bool,
}

/// Sends `request`, whose head is in `out` (a buffer from the worker's
/// head spares, given back here), and returns the response: its head as
/// `convert` makes it from the status and the head rewritten for the
/// client (HTTP/1.1 lines, or an HPACK block if `request.hpack`; `convert`
/// may take the buffer, leaving one from the spares), and its body; a body
/// that came whole with the head goes to `whole`, which may keep it in the
/// response or return it. The access-log `line` is told the endpoint that
/// answered when a retry moved the request on.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send<R>(
    raw: &Rc<RawPool>,
    table: &RouteTable,
    request: Request<'_>,
    mut out: Vec<u8>,
    mut in_flight: Option<InFlight>,
    line: Option<&mut Line>,
    convert: impl FnOnce(u16, &mut Vec<u8>) -> Option<R>,
    whole: impl FnOnce(&mut R, &[u8]) -> ProxyBody,
) -> Result<(R, ProxyBody), ForwardError> {
    let Request {
        method,
        route,
        pool: pool_index,
        endpoint,
        set_cookie,
        started,
        now_ms,
        hpack,
    } = request;
    let pool = table.pool(pool_index);
    let stats = route.stats(pool_index);
    let context = ResponseContext {
        head_request: *method == Method::HEAD,
        set_cookie,
        close: false,
        hpack,
        http10: false,
        stopping: None,
    };
    let timeouts = &table.timeouts;
    let mut buffer = raw.upstream_buffers.take();
    let mut deadline = raw.deadlines.take(timeouts.response_header);
    let mut ex = Exchange {
        raw,
        out: &mut out,
        buffer: &mut buffer,
        context: &context,
        idempotent: is_idempotent(method),
        table,
        deadline: &mut deadline,
        probe: false,
        trying: endpoint.addr,
    };
    let pending = stats.send(started, now_ms);
    let request_endpoint = endpoint;
    let (endpoint, sent) = exchange_retrying(
        &mut ex,
        route,
        pool,
        stats,
        &pending,
        endpoint,
        now_ms,
        &mut in_flight,
    )
    .await;
    if let (Some(line), false) = (line, std::ptr::eq(endpoint, request_endpoint)) {
        line.served(&route.name, &pool.name, endpoint.addr);
    }
    let converted = sent
        .map_err(|failed| failed.error)
        .and_then(|(conn, head)| {
            // `out` holds the head rewritten for the client.
            let response =
                convert(head.status, &mut out).ok_or_else(|| ForwardError::Exchange {
                    what: MALFORMED,
                    backend: endpoint.label.to_string(),
                    kind: ErrorKind::Malformed,
                })?;
            Ok((conn, head, response))
        });
    raw.head_buffers.give(out);
    let (conn, head, mut response) = match converted {
        Ok(converted) => converted,
        Err(error) => {
            count_failure(pool, pending, endpoint, &error, now_ms);
            raw.upstream_buffers.give(buffer);
            raw.deadlines.give(deadline);
            return Err(error);
        }
    };
    pending.answered(head.status, None);
    endpoint.health.succeeded();

    buffer.advance(head.len);
    let key = idle_key(endpoint);
    let whole_len = match head.framing {
        Framing::Empty => Some(0),
        Framing::Length(n) if buffer.len() as u64 >= n => Some(n as usize),
        _ => None,
    };
    let body = match whole_len {
        Some(len) => {
            // The whole body came with the head: the connection is free
            // now, unless the upstream sent more than it announced.
            let extra = buffer.len() > len;
            if head.keep_alive && !extra {
                raw.put(key, conn, timeouts.idle);
            }
            let body = match len {
                0 => ProxyBody::Local(None),
                _ => whole(&mut response, &buffer[..len]),
            };
            raw.upstream_buffers.give(buffer);
            raw.deadlines.give(deadline);
            body
        }
        None => {
            deadline.set(timeouts.idle);
            ProxyBody::Raw(Box::new(RawBody {
                conn: Some(conn),
                buffer,
                framing: head.framing,
                keep_alive: head.keep_alive,
                pool: Rc::clone(raw),
                key,
                idle: timeouts.idle,
                deadline: Some(deadline),
                in_flight,
                origin: Origin::new(route.index, pool_index),
            }))
        }
    };
    Ok((response, body))
}

/// Writes an HTTP/1.1 request head, as `forward` rewrites a request for
/// hyper's client: the origin-form target (a `target` of "?a=1" goes on as
/// "/?a=1"), the client's `fields` but those rewritten, `host` as the
/// `Host`, the forwarding fields, cookies joined, the length restated;
/// then the body. `fields` gives the lower-case names with their values,
/// afresh each time it is called.
pub(crate) fn write_request<'f, F, I>(
    out: &mut Vec<u8>,
    method: &Method,
    target: &[u8],
    fields: F,
    host: &[u8],
    client: &ClientInfo,
    body: Option<&[u8]>,
) where
    F: Fn() -> I,
    I: Iterator<Item = (&'f [u8], &'f [u8])>,
{
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    if !target.starts_with(b"/") && target != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields() {
        // Written below, not as the client sent them.
        let rewritten = matches!(
            name,
            b"host"
                | b"cookie"
                | b"content-length"
                | b"x-forwarded-for"
                | b"x-forwarded-proto"
                | b"x-forwarded-host"
                | b"forwarded"
        );
        if !rewritten {
            put_field(out, name, value);
        }
    }
    put_field(out, b"host", host);
    let values = |wanted: &'static [u8]| {
        fields()
            .filter(move |(name, _)| *name == wanted)
            .map(|(_, value)| value)
    };
    put_forwarding(
        out,
        client,
        host,
        values(b"x-forwarded-for"),
        values(b"forwarded"),
    );
    let mut cookies = values(b"cookie");
    // HTTP/2 may split a cookie into several fields; HTTP/1.1 wants one
    // (RFC 9113 §8.2.3).
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first);
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more);
        }
        out.extend_from_slice(b"\r\n");
    }
    match body {
        Some(body) => {
            out.extend_from_slice(b"content-length: ");
            put_number(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        // A method that defines a body states that it has none.
        None if !matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        ) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
}

/// A whole body as a response body of its own (a copy).
pub(crate) fn copy_body<R>(_: &mut R, data: &[u8]) -> ProxyBody {
    ProxyBody::Local(Some(Bytes::copy_from_slice(data)))
}

/// Calls `field` with each name and value of the head `fast::parse_response`
/// wrote for an HTTP/1.1 client, but the connection-specific ones, which
/// HTTP/2 does not have; `field` answers whether to go on. That head is
/// well-formed by construction (a status line, then `name: value` lines,
/// each ending in CRLF, then an empty line), so it is split, not parsed
/// again. None when a line is not `name: value`, or `field` stopped.
pub(crate) fn for_each_field(
    head: &[u8],
    mut field: impl FnMut(&[u8], &[u8]) -> bool,
) -> Option<()> {
    let first = memchr::memchr(b'\n', head)? + 1;
    let mut start = first;
    for end in memchr::memchr_iter(b'\n', &head[first..]).map(|at| first + at) {
        let line = &head[start..end.checked_sub(1)?];
        start = end + 1;
        if line.is_empty() {
            break;
        }
        let colon = memchr::memchr(b':', line)?;
        let name = &line[..colon];
        if !is_connection_specific(name) && !field(name, line.get(colon + 2..)?) {
            return None;
        }
    }
    Some(())
}

/// The response for hyper from the head `fast::parse_response` wrote for
/// an HTTP/1.1 client ([`for_each_field`]); names and values are still
/// checked as they become a `HeaderMap`. The values share one copy of the
/// head.
pub(crate) fn to_response(status: u16, head: &[u8]) -> Option<Response<()>> {
    let head = Bytes::copy_from_slice(head);
    let mut headers = HeaderMap::with_capacity(16);
    for_each_field(&head, |name, value| {
        let name = HeaderName::from_bytes(name);
        let value = HeaderValue::from_maybe_shared(head.slice_ref(value));
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
                true
            }
            _ => false,
        }
    })?;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    *response.headers_mut() = headers;
    Some(response)
}

/// A response body read from a raw upstream connection as hyper asks for
/// it (back-pressure: nothing is read ahead of the client). At its end the
/// connection goes back to the pool; an upstream that fails or goes quiet
/// for the idle timeout mid-body ends it with an error, so the client sees
/// the truncation (its stream is reset).
pub struct RawBody {
    /// None once the body has ended.
    conn: Option<RawConn>,
    /// Read and not yet passed on.
    buffer: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Rc<RawPool>,
    key: IdleKey,
    idle: Duration,
    /// Given back to the pool's spares when the body is dropped.
    deadline: Option<Deadline>,
    /// Kept until the body is done.
    in_flight: Option<InFlight>,
    origin: Origin,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl RawBody {
    pub(crate) fn origin_mut(&mut self) -> &mut Origin {
        &mut self.origin
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }

    /// The body is over; `reusable`: nothing came after it.
    fn finish(&mut self, reusable: bool) {
        self.in_flight.take();
        if let Some(conn) = self.conn.take() {
            if reusable && self.keep_alive {
                self.pool.put(self.key, conn, self.idle);
            }
        }
    }

    fn fail(&mut self, kind: ErrorKind, what: &'static str) -> Polled {
        self.conn = None;
        self.in_flight.take();
        self.origin.count(kind);
        Poll::Ready(Some(Err(what.into())))
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if self.conn.is_none() {
                return Poll::Ready(None);
            }
            if !self.buffer.is_empty() {
                let (data, ended) = match self.take_data() {
                    Some(taken) => taken,
                    None => {
                        return self.fail(ErrorKind::Malformed, "upstream: bad chunked framing")
                    }
                };
                if let Some(reusable) = ended {
                    self.finish(reusable);
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            make_room(&mut self.buffer);
            let read = std::pin::pin!(conn.read_buf(&mut self.buffer)).poll(cx);
            match read {
                Poll::Ready(Ok(0)) if matches!(self.framing, Framing::Close) => {
                    self.finish(false);
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return self.fail(ErrorKind::Reset, "upstream closed mid-body");
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(deadline) = self.deadline.as_mut() {
                        deadline.set(self.idle);
                    }
                }
                Poll::Ready(Err(_)) => {
                    return self.fail(ErrorKind::Reset, "upstream reset mid-body");
                }
                Poll::Pending => {
                    let passed = self.deadline.as_mut().is_some_and(|d| d.poll_passed(cx));
                    if passed {
                        return self.fail(ErrorKind::Timeout, "upstream went quiet mid-body");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The body's next data from the buffer, and whether it ended there
    /// (Some(reusable)); None if its chunked framing is broken.
    fn take_data(&mut self) -> Option<(Bytes, Option<bool>)> {
        let buffer = &mut self.buffer;
        Some(match &mut self.framing {
            Framing::Length(left) => {
                let take = (*left).min(buffer.len() as u64);
                *left -= take;
                let data = buffer.split_to(take as usize).freeze();
                (data, (*left == 0).then(|| buffer.is_empty()))
            }
            Framing::Chunked(scan) => {
                // One run of data (the common case) is passed on without a
                // copy; several are joined.
                let mut first: Option<Range<usize>> = None;
                let mut joined = BytesMut::new();
                let used = scan.decode(buffer, |run| match first.take() {
                    None if joined.is_empty() => first = Some(run),
                    earlier => {
                        if let Some(earlier) = earlier {
                            joined.extend_from_slice(&buffer[earlier]);
                        }
                        joined.extend_from_slice(&buffer[run]);
                    }
                })?;
                let data = match first {
                    Some(run) => {
                        let mut taken = buffer.split_to(used);
                        taken.advance(run.start);
                        taken.truncate(run.len());
                        taken.freeze()
                    }
                    None => {
                        buffer.advance(used);
                        joined.freeze()
                    }
                };
                (data, scan.done().then(|| buffer.is_empty()))
            }
            Framing::Close => (buffer.split().freeze(), None),
            Framing::Empty => (Bytes::new(), Some(buffer.is_empty())),
        })
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        self.pool
            .upstream_buffers
            .give(std::mem::take(&mut self.buffer));
        if let Some(deadline) = self.deadline.take() {
            self.pool.deadlines.give(deadline);
        }
    }
}
