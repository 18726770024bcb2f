//! One request's way through the proxy: check it, route it, pick a pool and
//! an endpoint, send it upstream, stream the answer back.

use std::borrow::Cow;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Uri;
use http::HeaderMap;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::debug;

use crate::access_log::{Asked, Line};
use crate::body::{ClientBody, InFlight, Origin, ProxyBody, RequestBody, Sending};
use crate::error::ForwardError;
use crate::fast::{RawPool, Stopping};
use crate::headers::{
    byte_set, field_bits, is_chunked_or_unencoded, is_websocket_upgrade, set_forwarded,
    strip_hop_headers, strip_present, strip_trailers, ClientInfo, FIELD_EXPECT, HOP_CONNECTION,
    HOP_FIELDS, HOP_TRANSFER_ENCODING, HOP_UPGRADE,
};
use crate::route::{EndpointEntry, PoolEntry, RouteEntry, RouteTable, Routes};
use crate::stats::{ErrorKind, Pending, PoolStats};
use crate::upstream::{copy_if_retryable, ExchangeTimeouts, Upstreams};

/// A request body up to this size is read whole before anything goes
/// upstream, as nginx's `proxy_request_buffering` does: a malformed chunked
/// body is then refused before the upstream sees a byte of the request.
/// Larger bodies stream after this much has been read.
pub(crate) const READ_AHEAD_BYTES: usize = 64 * 1024;

/// One worker's request handler.
pub struct Proxy {
    pub(crate) routes: Routes,
    upstreams: Rc<Upstreams>,
    /// The fast path's upstream connections, shared with HTTP/2 requests'
    /// bodies.
    pub(crate) raw: Rc<RawPool>,
    /// Ends the fast path's waits between requests at shutdown.
    pub(crate) stopping: Stopping,
    /// The worker's open tunnels (WebSocket), which the drain waits for:
    /// hyper's connection, and its watch, end at the upgrade.
    pub(crate) tunnels: Rc<Tunnels>,
}

/// A count of open tunnels, and a wake-up when the last one closes.
#[derive(Default)]
pub(crate) struct Tunnels {
    open: std::cell::Cell<usize>,
    closed: tokio::sync::Notify,
}

impl Tunnels {
    /// Counts a tunnel open until the guard drops.
    fn open(self: &Rc<Self>) -> TunnelGuard {
        self.open.set(self.open.get() + 1);
        TunnelGuard(Rc::clone(self))
    }

    /// Once no tunnel is open.
    pub(crate) async fn all_closed(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }
}

/// One open tunnel.
struct TunnelGuard(Rc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let open = self.0.open.get() - 1;
        self.0.open.set(open);
        if open == 0 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Proxy {
    /// A handler for one worker thread.
    pub fn new(routes: Routes) -> Rc<Proxy> {
        Rc::new(Proxy {
            routes,
            upstreams: Upstreams::new(),
            raw: Rc::default(),
            stopping: Stopping::default(),
            tunnels: Rc::default(),
        })
    }

    /// Closes the worker's upstream connections idle past the table's idle
    /// timeout, and those to endpoints the table no longer has; run every
    /// so often and at each swap, so that a removed endpoint is let go at
    /// once (as Envoy drains a removed host's connections).
    pub fn sweep_idle(&self) {
        let table = self.routes.snapshot();
        let live = table.idle_keys();
        let idle = table.timeouts.idle;
        self.raw.sweep(idle, &live);
        self.upstreams.sweep(idle, &live);
    }

    /// Serves one request; every failure becomes an answer to the client.
    pub async fn handle(
        self: Rc<Self>,
        client: Rc<ClientInfo>,
        request: Request<ClientBody>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let table = self.routes.snapshot();
        let http1 = request.version() != Version::HTTP_2;
        let mut line = log_line(&request, &client, started);
        match self
            .forward(&table, &client, request, started, &mut line)
            .await
        {
            Ok(mut response) => {
                if let Some(line) = line {
                    let status = response.status().as_u16();
                    response.body_mut().attach_log(line, status);
                }
                response.body_mut().attach_table(table);
                Ok(response)
            }
            Err(err) => {
                debug!(client = %client.peer, error = %err, status = %err.status(), "request failed");
                if let Some(line) = line {
                    line.finish(
                        err.status().as_u16(),
                        err.message().len() as u64,
                        Some(&err),
                    );
                }
                Ok(err.to_response(http1 && err.closes_connection()))
            }
        }
    }

    async fn forward(
        &self,
        table: &RouteTable,
        client: &ClientInfo,
        request: Request<ClientBody>,
        started: Instant,
        line: &mut Option<Line>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (mut parts, body) = request.into_parts();
        let limits = &table.limits;
        let http2 = parts.version == Version::HTTP_2;

        if parts.method == Method::CONNECT {
            return Err(ForwardError::BadRequest {
                reason: "CONNECT is not supported",
            });
        }
        // RFC 9112 §3.2.4: the asterisk form is OPTIONS's alone.
        if parts.method != Method::OPTIONS && parts.uri.path() == "*" {
            return Err(ForwardError::BadRequest {
                reason: "an asterisk-form target outside OPTIONS",
            });
        }
        // The target as sent: an absolute form's scheme and authority count
        // too (nginx counts the request line).
        let uri = &parts.uri;
        let uri_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            + uri.authority().map_or(0, |a| {
                a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + 3)
            });
        if uri_len > limits.max_uri_bytes {
            return Err(ForwardError::UriTooLong {
                len: uri_len,
                limit: limits.max_uri_bytes,
            });
        }
        let host_value = request_host(&parts, client)?;
        // Only `chunked` alone is accepted: hyper refuses a body whose last
        // coding is not chunked, and other codings before it are refused
        // here, as nginx does, since nothing downstream would decode them.
        let fields = field_bits(&parts.headers);
        if fields & HOP_TRANSFER_ENCODING != 0 && !is_chunked_or_unencoded(&parts.headers) {
            return Err(ForwardError::BadRequest {
                reason: "transfer-encoding other than chunked",
            });
        }
        if body.size_hint().lower() > limits.max_body_bytes {
            return Err(ForwardError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }

        let host = match &host_value {
            Some(value) => host_for_matching(value.as_bytes())?,
            None => Cow::Borrowed(""),
        };
        let route = table
            .find_route(&parts.method, &host, parts.uri.path(), &parts.headers)
            .ok_or_else(|| ForwardError::NoRoute {
                host: host.to_string(),
                path: parts.uri.path().to_string(),
            })?;
        let choice = table.choose_pool(route, &parts.headers);
        let now_ms = crate::stats::ms_of(started);
        let (pool_index, endpoint) = if choice.pinned {
            (choice.pool, table.pool(choice.pool).pick_pinned(now_ms))
        } else {
            healthy_endpoint(table, route, choice.pool, now_ms)?
        };
        let pool = table.pool(pool_index);
        debug!(route = %route.name, backend = %endpoint.label, "forwarding");
        if let Some(line) = line.as_mut() {
            line.served(&route.name, &pool.name, endpoint.addr);
        }

        let body = read_ahead(body, limits.max_body_bytes).await?;
        // The upstream's time runs from when the request is whole here
        // (see `Pending`): a body read ahead took the client's time; a
        // streamed one is timed from when it went whole.
        let (whole_at, whole_ms) = match &body {
            RequestBody::Full { .. } => {
                let now = Instant::now();
                (now, crate::stats::ms_of(now))
            }
            _ => (started, now_ms),
        };
        // HTTP/2's common request goes upstream on a raw connection, its
        // head written from the fields as they are.
        let whole = match &body {
            RequestBody::Empty => Some(None),
            RequestBody::Full {
                data,
                trailers: None,
            } => Some(data.as_deref()),
            _ => None,
        };
        if let (true, true, 0, Some(whole), Some(host)) = (
            http2,
            route.fast_path,
            fields & HOP_FIELDS,
            whole,
            &host_value,
        ) {
            let mut out = self.raw.head_buffers.take();
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let fields = || {
                parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
            };
            crate::raw_upstream::write_request(
                &mut out,
                &parts.method,
                target.as_bytes(),
                fields,
                host.as_bytes(),
                client,
                whole,
            );
            let request = crate::raw_upstream::Request {
                method: &parts.method,
                route,
                pool: pool_index,
                endpoint,
                set_cookie: choice.set_cookie.as_ref(),
                started: whole_at,
                now_ms: whole_ms,
                hpack: false,
            };
            let in_flight = pool
                .counts_in_flight()
                .then(|| InFlight::start(&endpoint.in_flight));
            let (response, body) = crate::raw_upstream::send(
                &self.raw,
                table,
                request,
                out,
                in_flight,
                line.as_mut(),
                |status, head| crate::raw_upstream::to_response(status, head),
                crate::raw_upstream::copy_body,
            )
            .await?;
            let (parts, ()) = response.into_parts();
            return Ok(Response::from_parts(parts, body));
        }

        // HTTP/1.1 only: an HTTP/1.0 request's Upgrade is ignored, and no
        // 1xx may go to its client (RFC 9110 §7.8, §15.2).
        let upgrade = fields & (HOP_UPGRADE | HOP_CONNECTION) == (HOP_UPGRADE | HOP_CONNECTION)
            && parts.version == Version::HTTP_11
            && is_websocket_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        strip_present(&mut parts.headers, upgrade, fields);
        if fields & FIELD_EXPECT != 0 {
            // The proxy answers `Expect: 100-continue` itself when it reads the body.
            parts.headers.remove(header::EXPECT);
        }
        set_forwarded(&mut parts.headers, client, host_value.as_ref(), fields);
        if parts.uri.scheme().is_some() || parts.version == Version::HTTP_2 {
            // Absolute-form (RFC 9112 §3.2.2) and HTTP/2: the authority
            // becomes the Host, and the target goes out in origin form.
            if let Some(host_value) = host_value {
                parts.headers.insert(header::HOST, host_value);
            }
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            parts.uri = Uri::from(path);
        }
        let http10 = parts.version == Version::HTTP_10;
        parts.version = Version::HTTP_11;

        let mut body = body;
        match &mut body {
            RequestBody::Full {
                data,
                trailers: None,
            } => {
                // The body was re-framed: its length is now known exactly.
                let len = data.as_ref().map_or(0, |d| d.len());
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            RequestBody::Full {
                trailers: Some(trailers),
                ..
            } => {
                // Trailers go on a chunked body only, and hyper sends those
                // that `Trailer` names.
                strip_trailers(trailers);
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(header::TRANSFER_ENCODING, CHUNKED);
                let names: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
                if let Ok(names) = HeaderValue::from_str(&names.join(", ")) {
                    parts.headers.insert(header::TRAILER, names);
                }
            }
            // A streamed body of unknown length goes chunked: left unframed,
            // hyper's client sends a GET's or a DELETE's body as none at all.
            RequestBody::Stream { .. } if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
                parts.headers.insert(header::TRANSFER_ENCODING, CHUNKED);
            }
            _ => {}
        }

        let mut in_flight = pool
            .counts_in_flight()
            .then(|| InFlight::start(&endpoint.in_flight));
        let timeouts = ExchangeTimeouts {
            connect: table.timeouts.connect,
            response_header: table.timeouts.response_header,
            idle: table.timeouts.idle,
        };
        let stats = route.stats(pool_index);
        let retries = &route.retries;
        // A copy for retries, made only when the route retries sent
        // requests and this one may be sent twice.
        let mut request = Request::from_parts(parts, body);
        let mut spare = (retries.attempts > 0)
            .then(|| copy_if_retryable(&request))
            .flatten();
        let mut retries_left = retries.attempts;
        let mut endpoint = endpoint;
        let sending = request.body().sending();
        let pending = match &sending {
            Some(_) => stats.send_streaming(started),
            None => stats.send(whole_at, whole_ms),
        };
        let (response, release) = loop {
            let send = self.upstreams.send(endpoint, request, timeouts);
            let mut sent = watching_body(send, sending.as_deref(), &pending).await;
            // A connect failure sent nothing: the request goes once to another
            // endpoint of the same pool, as nginx's proxy_next_upstream error.
            if let Err(failed) = &mut sent {
                if let (Some(kind), true) = (failed.error.upstream_kind(), failed.unsent.is_some())
                {
                    if let Some(other) = move_on(pool, stats, endpoint, kind, now_ms) {
                        let request = failed.unsent.take().expect("checked above");
                        debug!(route = %route.name, from = %endpoint.label, to = %other.label, "retrying on another endpoint");
                        endpoint = other;
                        if in_flight.is_some() {
                            in_flight = Some(InFlight::start(&endpoint.in_flight));
                        }
                        let send = self.upstreams.send(endpoint, request, timeouts);
                        sent = watching_body(send, sending.as_deref(), &pending).await;
                    }
                }
            }
            // A request that was sent goes again only when it is idempotent,
            // its body is at hand, and the route retries this failure.
            let retry = retries_left > 0
                && spare.is_some()
                && match &sent {
                    Ok((response, _)) => retries.on(response.status().as_u16()),
                    Err(failed) => {
                        failed.unsent.is_none()
                            && !failed.answered
                            && match failed.error.upstream_kind() {
                                Some(ErrorKind::Reset) => retries.on_reset,
                                Some(ErrorKind::Timeout) => retries.on_timeout,
                                _ => false,
                            }
                    }
                };
            match sent {
                Ok((response, release)) if !retry => {
                    if let Some(line) = line.as_mut() {
                        line.served(&route.name, &pool.name, endpoint.addr);
                    }
                    pending.answered(response.status().as_u16(), None);
                    endpoint.health.succeeded();
                    break (response, release);
                }
                Ok((response, _)) => {
                    // Each try is an answer the detector must see: a retry
                    // must not hide a failing canary.
                    pending.answered_try(response.status().as_u16(), None);
                    endpoint.health.succeeded();
                }
                Err(failed) if !retry => {
                    if let Some(line) = line.as_mut() {
                        line.served(&route.name, &pool.name, endpoint.addr);
                    }
                    let err = failed.error;
                    // The client's body broke off or grew over the limit:
                    // no answer of the pool's (as on the fast path).
                    if !matches!(
                        err,
                        ForwardError::ClientBody { .. } | ForwardError::BodyTooLarge { .. }
                    ) {
                        count_failure(pool, pending, endpoint, &err, now_ms);
                    }
                    return Err(err);
                }
                Err(failed) => {
                    count_try_failure(pool, &pending, endpoint, &failed.error, now_ms);
                }
            }
            retries_left -= 1;
            let copy = spare.take().expect("checked by retry");
            if retries_left > 0 {
                spare = copy_if_retryable(&copy);
            }
            request = copy;
            if let Some(other) = pool.pick_other(endpoint, now_ms) {
                endpoint = other;
                if in_flight.is_some() {
                    in_flight = Some(InFlight::start(&endpoint.in_flight));
                }
            }
            debug!(route = %route.name, backend = %endpoint.label, "retrying a sent request");
        };

        let (mut parts, mut body) = response.into_parts();
        // A chunked body broken in the bytes that came with its head gets
        // a 502 while nothing is sent (hyper's server would close the
        // connection with no answer at all); only what is there at once.
        let first = match parts.headers.contains_key(header::TRANSFER_ENCODING) {
            true => match ready_frame(&mut body).await {
                Some(Err(_)) => {
                    return Err(ForwardError::Exchange {
                        what: crate::fast::MALFORMED,
                        backend: endpoint.label.to_string(),
                        kind: ErrorKind::Malformed,
                    })
                }
                Some(Ok(frame)) => Some(frame),
                None => None,
            },
            false => None,
        };
        // RFC 9112 §2.3: a proxy sends its own version; hyper's server
        // frames an HTTP/1.0 answer by closing the client's connection.
        // To an HTTP/1.0 client, an answer of no known length can only end
        // with the connection: left at 1.0, hyper says so rather than
        // keep-alive (RFC 9112 §9.3, as nginx).
        parts.version = match http10 && body.size_hint().exact().is_none() {
            true => Version::HTTP_10,
            false => Version::HTTP_11,
        };
        single_content_length(&mut parts.headers);
        // RFC 9110 §8.6: never on a 204 (hyper's server drops it for a
        // GET's, not for a HEAD's).
        if parts.status == StatusCode::NO_CONTENT {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_headers(&mut parts.headers, switching && upgrade);
        if let Some(cookie) = choice.set_cookie {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        if switching {
            // Only to the protocol the client asked for (RFC 9110 §7.8).
            let asked = parts
                .headers
                .get(header::UPGRADE)
                .is_some_and(|v| crate::headers::has_token(v.as_bytes(), b"websocket"));
            if !asked {
                return Err(ForwardError::Exchange {
                    what: "switched to a protocol the client did not ask for",
                    backend: endpoint.label.to_string(),
                    kind: crate::stats::ErrorKind::Malformed,
                });
            }
            if let Some(client_upgrade) = client_upgrade {
                let mut upstream_response = Response::from_parts(parts.clone(), ());
                let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
                let backend = endpoint.label.clone();
                let idle = timeouts.idle;
                let open = self.tunnels.open();
                // A tunnel is outstanding for its whole life (least
                // outstanding balances open WebSockets, as nginx's
                // least_conn does).
                let in_flight = in_flight.take();
                tokio::task::spawn_local(async move {
                    tunnel(client_upgrade, upstream_upgrade, &backend, idle).await;
                    drop(in_flight);
                    drop(open);
                });
                // The upstream connection is now the tunnel's: not pooled.
                drop(release);
                return Ok(Response::from_parts(parts, ProxyBody::local(Bytes::new())));
            }
        }
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream_after(
                first,
                body,
                release,
                in_flight,
                Origin::new(route.index, pool_index),
            ),
        ))
    }
}

/// The body's first frame if it is there at once: polled, and polled
/// again after the connection's task has had a turn to decode what it
/// read with the head. None if it is not there yet, or the body is empty.
async fn ready_frame(
    body: &mut hyper::body::Incoming,
) -> Option<Result<http_body::Frame<Bytes>, hyper::Error>> {
    if let Some(frame) = poll_once(body).await {
        return frame;
    }
    tokio::task::yield_now().await;
    poll_once(body).await.flatten()
}

/// One poll of `body`: what it gave, or None if it was not ready.
async fn poll_once(
    body: &mut hyper::body::Incoming,
) -> Option<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *body).poll_frame(cx) {
            std::task::Poll::Ready(frame) => Some(frame),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// After a connect failure (nothing sent): counts it against `failed` and
/// picks another endpoint of the pool that is up, if there is one — the
/// request goes there once, as with nginx's `proxy_next_upstream error`.
pub(crate) fn move_on<'t>(
    pool: &'t PoolEntry,
    stats: &PoolStats,
    failed: &EndpointEntry,
    kind: ErrorKind,
    now_ms: u64,
) -> Option<&'t EndpointEntry> {
    let other = pool.pick_other(failed, now_ms)?;
    stats.record_late_error(kind);
    pool.endpoint_failed(failed, now_ms);
    Some(other)
}

/// Counts a failed exchange: its answer for the route's pool, and an
/// upstream failure against the endpoint (ejecting it after a run).
pub(crate) fn count_failure(
    pool: &PoolEntry,
    pending: Pending<'_>,
    endpoint: &EndpointEntry,
    error: &ForwardError,
    now_ms: u64,
) {
    pending.answered(error.status().as_u16(), error.upstream_kind());
    note_failure(pool, endpoint, error, now_ms);
}

/// As [`count_failure`], for a try a retry follows.
pub(crate) fn count_try_failure(
    pool: &PoolEntry,
    pending: &Pending<'_>,
    endpoint: &EndpointEntry,
    error: &ForwardError,
    now_ms: u64,
) {
    pending.answered_try(error.status().as_u16(), error.upstream_kind());
    note_failure(pool, endpoint, error, now_ms);
}

fn note_failure(pool: &PoolEntry, endpoint: &EndpointEntry, error: &ForwardError, now_ms: u64) {
    if error.upstream_kind().is_some() && pool.endpoint_failed(endpoint, now_ms) {
        tracing::warn!(backend = %endpoint.label, "endpoint ejected after repeated failures");
    }
}

/// An endpoint that is not ejected: from the chosen pool, else — when
/// every endpoint of it is down — from the baseline, else from any other
/// pool of the split (failing open). None left: 503.
pub(crate) fn healthy_endpoint<'t>(
    table: &'t RouteTable,
    route: &RouteEntry,
    chosen: u16,
    now_ms: u64,
) -> Result<(u16, &'t EndpointEntry), ForwardError> {
    if let Some(endpoint) = table.pool(chosen).pick_healthy(now_ms) {
        return Ok((chosen, endpoint));
    }
    for pool in route.fail_open_order(chosen) {
        if let Some(endpoint) = table.pool(pool).pick_healthy(now_ms) {
            debug!(route = %route.name, from = %table.pool(chosen).name, to = %table.pool(pool).name, "pool down; failing open");
            return Ok((pool, endpoint));
        }
    }
    Err(ForwardError::NoHealthyEndpoint {
        route: route.name.to_string(),
    })
}

/// The request's `Host` value: the absolute-form target's authority,
/// HTTP/2's `:authority`, or the single `Host` field (RFC 9112 §3.2).
/// `None` only for an HTTP/1.0 request without one.
fn request_host(
    parts: &http::request::Parts,
    client: &ClientInfo,
) -> Result<Option<HeaderValue>, ForwardError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ForwardError::BadRequest {
            reason: "more than one Host field",
        });
    }
    if let Some(authority) = parts.uri.authority() {
        // RFC 9112 §3.2.3: the authority form is CONNECT's alone.
        if parts.uri.scheme().is_none() {
            return Err(ForwardError::BadRequest {
                reason: "an authority-form target outside CONNECT",
            });
        }
        // RFC 9112 §3.2: the target's authority wins, but a Host field
        // that is not valid still makes the request bad.
        if let Some(value) = host {
            host_for_matching(value.as_bytes())?;
        }
        return Ok(Some(client.header_value(&[authority.as_str().as_bytes()])));
    }
    match host {
        // The common case: the value hyper parsed, shared, not copied.
        Some(value) => Ok(Some(value.clone())),
        None if parts.version == Version::HTTP_11 => Err(ForwardError::BadRequest {
            reason: "HTTP/1.1 request without a Host field",
        }),
        None => Ok(None),
    }
}

/// Bytes of an RFC 3986 `reg-name` (unreserved, pct-encoded, sub-delims).
const REG_NAME_BYTES: [bool; 256] = byte_set(b"-._~%!$&'()*+,;=");

/// The host part of a `Host` value (RFC 3986 `host [ ":" port ]`), lower
/// case for matching and without a trailing dot (`example.com.` is the same
/// name, as nginx takes it); borrowed unless it had upper-case letters.
pub(crate) fn host_for_matching(value: &[u8]) -> Result<Cow<'_, str>, ForwardError> {
    let invalid = ForwardError::BadRequest {
        reason: "invalid Host field",
    };
    let (host, port) = if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']').ok_or(invalid)?;
        let (host, rest) = value.split_at(close + 1);
        if !host[1..close]
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(ForwardError::BadRequest {
                reason: "invalid Host field",
            });
        }
        (host, rest)
    } else {
        let colon = value.iter().rposition(|&b| b == b':');
        let (host, port) = value.split_at(colon.unwrap_or(value.len()));
        if !host.iter().all(|&b| REG_NAME_BYTES[usize::from(b)]) {
            return Err(ForwardError::BadRequest {
                reason: "invalid Host field",
            });
        }
        (host, port)
    };
    if let Some(digits) = port.strip_prefix(b":") {
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(ForwardError::BadRequest {
                reason: "invalid Host field",
            });
        }
    } else if !port.is_empty() {
        return Err(ForwardError::BadRequest {
            reason: "invalid Host field",
        });
    }
    let host = match host {
        [name @ .., b'.'] if !name.is_empty() => name,
        host => host,
    };
    let host = std::str::from_utf8(host).map_err(|_| ForwardError::BadRequest {
        reason: "invalid Host field",
    })?;
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// `Transfer-Encoding: chunked`.
const CHUNKED: HeaderValue = HeaderValue::from_static("chunked");

/// A response's `Content-Length` as one value: hyper's client takes a list
/// of equal values (`5, 5`, or two fields), which some clients refuse.
fn single_content_length(headers: &mut HeaderMap) {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return;
    };
    if lengths.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    // hyper checked that the values agree.
    let one = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    if let Some(one) = one {
        headers.insert(header::CONTENT_LENGTH, one);
    }
}

/// Awaits `send`; once the upstream has taken a streamed body whole, the
/// request's wait for its answer runs from then (see `Pending`), and the
/// detector watches it from then.
async fn watching_body<F: std::future::Future>(
    send: F,
    sending: Option<&Sending>,
    pending: &Pending<'_>,
) -> F::Output {
    let Some(sending) = sending else {
        return send.await;
    };
    let mut send = std::pin::pin!(send);
    let mut told = false;
    let output = std::future::poll_fn(|cx| {
        if !told {
            if let std::task::Poll::Ready(at) = sending.poll_ended(cx) {
                pending.body_sent(at);
                told = true;
            }
        }
        send.as_mut().poll(cx)
    })
    .await;
    // Taken whole in the poll that brought the answer.
    if let (false, Some(at)) = (told, sending.ended_at()) {
        pending.body_sent(at);
    }
    output
}

/// Reads up to [`READ_AHEAD_BYTES`] of the body before forwarding.
async fn read_ahead(mut body: ClientBody, limit: u64) -> Result<RequestBody, ForwardError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let mut first: Option<Bytes> = None;
    let mut buffer = BytesMut::new();
    let mut trailers = None;
    loop {
        let len = first.as_ref().map_or(0, |f| f.len()) + buffer.len();
        if len as u64 > limit {
            return Err(ForwardError::BodyTooLarge { limit });
        }
        if len > READ_AHEAD_BYTES {
            let prefix = join(first, buffer);
            return Ok(RequestBody::stream(prefix, body, limit));
        }
        match body.frame().await {
            None => break,
            Some(Err(source)) => return Err(ForwardError::ClientBody { source }),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => match &first {
                    None if buffer.is_empty() => first = Some(data),
                    _ => {
                        if let Some(first) = first.take() {
                            buffer.extend_from_slice(&first);
                        }
                        buffer.extend_from_slice(&data);
                    }
                },
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
        }
    }
    Ok(RequestBody::Full {
        data: Some(join(first, buffer)),
        trailers,
    })
}

fn join(first: Option<Bytes>, buffer: BytesMut) -> Bytes {
    match first {
        Some(first) => first,
        None => buffer.freeze(),
    }
}

/// Copies bytes both ways between an upgraded client and upstream, until
/// either side closes or no byte moves either way for `idle` (as nginx's
/// `proxy_read_timeout` ends a quiet WebSocket): both connections are
/// closed then, whichever side is stuck.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    backend: &str,
    idle: std::time::Duration,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(err), _) | (_, Err(err)) => {
            debug!(backend = %backend, error = %err, "upgrade failed");
            return;
        }
    };
    let moved = std::cell::Cell::new(tokio::time::Instant::now());
    let mut client = Watched {
        io: hyper_util::rt::TokioIo::new(client),
        moved: &moved,
    };
    let mut upstream = Watched {
        io: hyper_util::rt::TokioIo::new(upstream),
        moved: &moved,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    let quiet = tokio::time::sleep(idle);
    let mut quiet = std::pin::pin!(quiet);
    loop {
        tokio::select! {
            copied = &mut copy => {
                if let Err(err) = copied {
                    debug!(backend = %backend, error = %err, "tunnel ended");
                }
                return;
            }
            () = &mut quiet => {
                let until = moved.get() + idle;
                if tokio::time::Instant::now() >= until {
                    debug!(backend = %backend, "tunnel idle; closed");
                    return;
                }
                quiet.as_mut().reset(until);
            }
        }
    }
}

/// A tunnel's side, noting when bytes last moved through it.
struct Watched<'m, T> {
    io: T,
    moved: &'m std::cell::Cell<tokio::time::Instant>,
}

impl<T> Watched<'_, T> {
    fn note<R>(&self, progress: bool, result: R) -> R {
        if progress {
            self.moved.set(tokio::time::Instant::now());
        }
        result
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let progress = buf.filled().len() > before;
        self.note(progress, polled)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        let progress = matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0);
        self.note(progress, polled)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The access-log line of a request on hyper's path (None when the log
/// is off).
fn log_line(request: &Request<ClientBody>, client: &ClientInfo, started: Instant) -> Option<Line> {
    if !crate::access_log::enabled() {
        return None;
    }
    let protocol = match request.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let uri = request.uri();
    // The target as sent: origin form, or an absolute form whole.
    let target = match uri.scheme() {
        Some(_) => uri.to_string(),
        None => uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
    };
    let host = request
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()));
    Line::begin(
        &Asked {
            protocol,
            client: client.peer,
            method: Some(request.method().as_str().as_bytes()),
            target: Some(target.as_bytes()),
            host,
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .map(HeaderValue::as_bytes),
        },
        started,
    )
}

#[cfg(test)]
mod tests {
    use super::host_for_matching;

    #[test]
    fn host_values_parse_like_rfc_3986() {
        let host = |v: &str| host_for_matching(v.as_bytes()).map(|h| h.into_owned()).ok();
        assert_eq!(host("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("Example.com.:443").as_deref(), Some("example.com"));
        assert_eq!(host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host("a b"), None);
        assert_eq!(host("example.com:80x"), None);
        assert_eq!(host("[::1"), None);
        assert_eq!(host("a/b"), None);
        assert_eq!(host("a@b"), None);
    }
}
