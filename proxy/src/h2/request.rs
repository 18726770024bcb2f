//! One HTTP/2 request: its head as decoded and checked (RFC 9113 §8.1-8.3),
//! and how it is served.
//!
//! A request without a body, the common case, is routed on its fields as
//! decoded and sent upstream on the fast path's raw connections; the
//! upstream's head becomes an HPACK block straight from its bytes. No
//! `http::Request`, `HeaderMap` or `Uri` is built for it. Anything else
//! (a body, `TE: trailers`, `Expect`, a route whose `fast_path` is off, anything that
//! would be answered with an error) becomes an `http::Request` for
//! [`Proxy::handle`], which checks and answers it as it does HTTP/1.1.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use tracing::debug;

use crate::access_log::{Asked, Line};
use crate::body::{ClientBody, InFlight, ProxyBody};
use crate::forward::{healthy_endpoint, host_for_matching, Proxy};
use crate::headers::{byte_set, is_connection_specific, ClientInfo};
use crate::route::{Fields, RouteTable};

/// Bytes of a field name: lower-case `tchar`s (RFC 9110 §5.6.2).
const NAME_BYTES: [bool; 256] = {
    let mut set = byte_set(b"!#$%&'*+-.^_`|~");
    let mut b = b'A';
    while b <= b'Z' {
        set[b as usize] = false;
        b += 1;
    }
    set
};

/// Bytes of a `:path` the raw path sends on as they are, as the HTTP/1.1
/// fast path takes a target; others (`|`, `[`, UTF-8, …) go through
/// [`Proxy::handle`], as hyper's parser takes them.
const PATH_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=:@/?%");

/// The port a URI of `scheme` means when it names none (`:80` for http,
/// `:443` for https), as the suffix an authority would carry.
fn default_port(scheme: Option<&[u8]>) -> Option<&'static [u8]> {
    match scheme {
        Some(s) if s.eq_ignore_ascii_case(b"http") => Some(b":80"),
        Some(s) if s.eq_ignore_ascii_case(b"https") => Some(b":443"),
        _ => None,
    }
}

/// Whether a `host` and an `:authority` name the same entity (RFC 9113
/// §8.3.1): equal but for case, or but for the scheme's default port on one
/// side (`app.test:80` and `app.test` over http, RFC 9110 §4.2.3).
fn same_entity(host: &[u8], authority: &[u8], default_port: Option<&[u8]>) -> bool {
    fn strip<'a>(a: &'a [u8], port: Option<&[u8]>) -> &'a [u8] {
        match port {
            Some(port) if a.len() > port.len() && a.ends_with(port) => &a[..a.len() - port.len()],
            _ => a,
        }
    }
    host.eq_ignore_ascii_case(authority)
        || strip(host, default_port).eq_ignore_ascii_case(strip(authority, default_port))
}

/// Bytes of an `:authority` (host, port, IP literal).
const AUTHORITY_BYTES: [bool; 256] = byte_set(b"-._~%!$&'()*+,;=:[]");

/// A request head as decoded: the values in one buffer, the regular
/// fields as ranges of it.
#[derive(Default)]
pub(super) struct RawHead {
    bytes: Vec<u8>,
    /// Name start, value start (the name's end), value end.
    fields: Vec<[u32; 3]>,
    method: Option<Method>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    /// The `content-length`, if given.
    pub(super) length: Option<u64>,
    /// Why the head is malformed, if it is.
    malformed: Option<&'static str>,
    /// RFC 9113 §6.5.2's size: names, values and 32 bytes per field.
    pub(super) list_size: usize,
    /// The most `list_size` may be; past it, fields are no longer kept
    /// (a block of small references to a large table entry would
    /// otherwise decode to hundreds of megabytes).
    limit: usize,
    /// Regular fields taken, and the most there may be (the configured
    /// `max_headers`, as HTTP/1.1 has it).
    count: usize,
    max_count: usize,
    /// A `cookie` field was counted.
    cookie_seen: bool,
    regular_seen: bool,
    /// `TE: trailers` or `Expect`: for hyper's path.
    needs_hyper: bool,
    /// `Expect: 100-continue`: the client waits for a `100` before its body.
    pub(super) expects_continue: bool,
    /// A `host` field that is not empty.
    has_host: bool,
}

impl RawHead {
    /// Empties the head for the next block, whose fields may take
    /// `limit` bytes (RFC 9113 §6.5.2's count) and be `max_count` at most;
    /// its buffers are kept.
    pub(super) fn clear(&mut self, limit: usize, max_count: usize) {
        let (mut bytes, mut fields) = (
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.fields),
        );
        bytes.clear();
        fields.clear();
        *self = RawHead {
            bytes,
            fields,
            limit,
            max_count,
            ..RawHead::default()
        };
    }

    /// Whether the fields took more than the limits.
    pub(super) fn is_over_limit(&self) -> bool {
        // `:authority` goes upstream as the Host, and counts as one where
        // no `host` field does (RFC 9113 §8.3.1), as HTTP/1.1's Host does.
        let host = usize::from(self.authority.is_some() && !self.has_host);
        self.list_size > self.limit || self.count + host > self.max_count
    }

    fn fail(&mut self, reason: &'static str) {
        self.malformed.get_or_insert(reason);
    }

    /// Marks the head malformed for a field whose bytes are not: false.
    fn refuse(&mut self, reason: &'static str) -> bool {
        self.fail(reason);
        false
    }

    #[inline(always)]
    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    /// Takes one decoded field, checking it as RFC 9113 §8.2 and §8.3 say;
    /// the bytes of a regular field are not checked again when `good` says
    /// they were before. Returns whether they are well-formed (false when
    /// not looked at).
    pub(super) fn field(&mut self, name: &[u8], value: &[u8], trailers: bool, good: bool) -> bool {
        self.list_size = self.list_size.saturating_add(name.len() + value.len() + 32);
        // Cookie crumbs (RFC 9113 §8.2.3) go upstream as one field.
        let crumb = name == b"cookie" && std::mem::replace(&mut self.cookie_seen, true);
        self.count += usize::from(!name.starts_with(b":") && !crumb);
        if self.malformed.is_some() || self.list_size > self.limit || self.count > self.max_count {
            return false;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen || trailers {
                return self.refuse("pseudo-header field after a regular one");
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        return self.refuse("pseudo-header field given twice");
                    }
                    match Method::from_bytes(value) {
                        Ok(method) => self.method = Some(method),
                        Err(_) => return self.refuse("invalid :method"),
                    }
                    return true;
                }
                b"scheme" => &self.scheme,
                b"authority" => &self.authority,
                b"path" => &self.path,
                _ => return self.refuse("unknown pseudo-header field"),
            };
            if slot.is_some() {
                return self.refuse("pseudo-header field given twice");
            }
            // A table entry that was checked when added passed this same test.
            let valid = good
                || match pseudo {
                    b"scheme" => !value.is_empty() && value.iter().all(u8::is_ascii_alphanumeric),
                    b"authority" => value.iter().all(|&b| AUTHORITY_BYTES[usize::from(b)]),
                    // Origin form, or `*` (for OPTIONS, checked with the
                    // method); no control byte, space or fragment (§8.3.1).
                    _ => {
                        (value.first() == Some(&b'/') || value == b"*")
                            && value.iter().all(|&b| b > b' ' && b != 0x7f && b != b'#')
                    }
                };
            if !valid {
                return self.refuse("invalid pseudo-header field value");
            }
            let range = Some(self.keep(value));
            match pseudo {
                b"scheme" => self.scheme = range,
                b"authority" => self.authority = range,
                _ => self.path = range,
            }
            return true;
        }
        self.regular_seen = true;
        if !good && (name.is_empty() || !name.iter().all(|&b| NAME_BYTES[usize::from(b)])) {
            return self.refuse("invalid field name (upper case, or not a token)");
        }
        if is_connection_specific(name) {
            return self.refuse("connection-specific field");
        }
        match name {
            // `trailers` is a token: any case (RFC 9110 §10.1.4).
            b"te" if !value.eq_ignore_ascii_case(b"trailers") => {
                return self.refuse("TE other than trailers")
            }
            b"te" => self.needs_hyper = true,
            // RFC 9113 §8.3.1: present, it must not be empty.
            b"host" if !trailers && value.is_empty() => return self.refuse("an empty host"),
            b"host" if !trailers => self.has_host = true,
            b"expect" => {
                self.needs_hyper = true;
                self.expects_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        // As `HeaderValue` takes them: no control bytes but HTAB (so no
        // NUL, CR or LF), and no white space at either end.
        if !good
            && (value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                || value.first().is_some_and(|b| *b == b' ' || *b == b'\t')
                || value.last().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            return self.refuse("invalid field value");
        }
        if name == b"content-length" && !trailers {
            let parsed =
                (!value.is_empty() && value.len() <= 18 && value.iter().all(u8::is_ascii_digit))
                    .then(|| value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
            match (parsed, self.length) {
                (Some(n), None) => self.length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    // Well-formed bytes, a bad request.
                    self.fail("invalid content-length");
                    return true;
                }
            }
        }
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        let middle = self.bytes.len() as u32;
        self.bytes.extend_from_slice(value);
        self.fields.push([start, middle, self.bytes.len() as u32]);
        true
    }

    /// Checks the head as a whole: why it is malformed, if it is.
    pub(super) fn check(&mut self, end_stream: bool) -> Result<(), &'static str> {
        if let Some(reason) = self.malformed {
            return Err(reason);
        }
        let method = self.method.as_ref().ok_or("no :method")?;
        if *method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || self.authority.is_none() {
                return Err("CONNECT with :scheme or :path, or without :authority");
            }
        } else if self.scheme.is_none() || self.path.is_none() {
            return Err("no :scheme or no :path");
        } else if *method != Method::OPTIONS && self.value(&self.path) == Some(b"*") {
            // RFC 9113 §8.3.1: `*` is OPTIONS's alone.
            return Err(":path * with a method other than OPTIONS");
        } else if self.value(&self.authority).is_some_and(<[u8]>::is_empty) {
            // RFC 9113 §8.3.1: present, it must not be empty.
            return Err("an empty :authority");
        } else if !self.has_host && self.authority.is_none() {
            // RFC 9113 §8.3.1: http and https have a mandatory authority.
            return Err("no :authority or host");
        } else if self.has_host {
            // RFC 9113 §8.3.1: a host that names another entity than the
            // :authority makes the request malformed. Routing goes by one,
            // the upstream may go by the other.
            if let Some(authority) = self.value(&self.authority).filter(|a| !a.is_empty()) {
                let default_port = default_port(self.value(&self.scheme));
                if self
                    .values(&http::header::HOST)
                    .any(|host| !same_entity(host, authority, default_port))
                {
                    return Err(":authority and host differ");
                }
            }
        }
        if end_stream && self.length.is_some_and(|n| n != 0) {
            return Err("content-length with no body");
        }
        Ok(())
    }

    /// The regular fields, names and values.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|&[start, middle, end]| {
            let (start, middle, end) = (start as usize, middle as usize, end as usize);
            (&self.bytes[start..middle], &self.bytes[middle..end])
        })
    }

    fn value(&self, range: &Option<Range<usize>>) -> Option<&[u8]> {
        range.as_ref().map(|r| &self.bytes[r.clone()])
    }

    /// Whether the request is a HEAD.
    pub(super) fn is_head(&self) -> bool {
        self.method == Some(Method::HEAD)
    }

    /// The fields as a `HeaderMap` (all checked already; their number is
    /// bounded by the limit, whose largest value is 1 MiB, 32 bytes a
    /// field: under the map's 24,576).
    fn header_map(&self) -> Result<HeaderMap, &'static str> {
        let mut headers =
            HeaderMap::try_with_capacity(self.fields.len()).map_err(|_| "too many fields")?;
        for (name, value) in self.fields() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers
                    .try_append(name, value)
                    .map_err(|_| "too many fields")?;
            }
        }
        Ok(headers)
    }

    /// The fields of a trailer section.
    pub(super) fn trailers(&self) -> Result<HeaderMap, &'static str> {
        if self.is_over_limit() {
            return Err("trailer section over the size limit");
        }
        match self.malformed {
            Some(reason) => Err(reason),
            None => self.header_map(),
        }
    }

    /// The request for [`Proxy::handle`].
    pub(super) fn request(&self, body: ClientBody) -> Result<Request<ClientBody>, &'static str> {
        let mut uri = http::uri::Parts::default();
        if let Some(authority) = self.value(&self.authority) {
            let authority = Authority::try_from(authority).map_err(|_| "invalid :authority")?;
            if let Some(scheme) = self.value(&self.scheme) {
                uri.scheme = Some(match scheme {
                    b"http" => Scheme::HTTP,
                    b"https" => Scheme::HTTPS,
                    other => Scheme::try_from(other).map_err(|_| "invalid :scheme")?,
                });
            }
            uri.authority = Some(authority);
        }
        if let Some(path) = self.value(&self.path) {
            uri.path_and_query = Some(PathAndQuery::try_from(path).map_err(|_| "invalid :path")?);
        }
        let uri = Uri::from_parts(uri).map_err(|_| "invalid request target")?;
        let mut headers = self.header_map()?;
        // Cookie crumbs go upstream as one field (RFC 9113 §8.2.3), as the
        // raw path writes them.
        let mut cookies = headers.get_all(http::header::COOKIE).iter();
        if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
            let mut joined = first.as_bytes().to_vec();
            for crumb in headers.get_all(http::header::COOKIE).iter().skip(1) {
                joined.extend_from_slice(b"; ");
                joined.extend_from_slice(crumb.as_bytes());
            }
            let joined = HeaderValue::from_bytes(&joined).map_err(|_| "invalid cookie")?;
            headers.insert(http::header::COOKIE, joined);
        }
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone().ok_or("no :method")?;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

impl Fields for RawHead {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str().as_bytes();
        self.fields()
            .filter(move |(n, _)| *n == name)
            .map(|(_, value)| value)
    }
}

/// A stream's answer.
pub(super) enum Answer {
    /// From [`Proxy::handle`].
    Response(Response<ProxyBody>),
    /// From the raw path: the head as an HPACK block, and the body.
    Encoded(Encoded, ProxyBody),
}

/// A response head as an HPACK block (`bytes[..head]`), and, after it, a
/// short body that came whole (the rest of `bytes`).
pub(super) struct Encoded {
    pub(super) bytes: Vec<u8>,
    pub(super) head: usize,
}

/// Whole bodies up to this size ride in the head's buffer.
const INLINE_BODY: usize = 4096;

/// A request without a body, routed and written for the raw path: what
/// its stream's future needs, owned.
pub(super) struct Prepared {
    table: Arc<RouteTable>,
    /// The upstream request head, in a buffer from the worker's spares.
    out: Vec<u8>,
    method: Method,
    route: u16,
    pool: u16,
    endpoint: usize,
    set_cookie: Option<HeaderValue>,
    started: Instant,
    now_ms: u64,
    /// Its access-log line, when the log is on.
    line: Option<Line>,
}

/// Routes a request without a body and writes its upstream head, or None
/// when [`Proxy::handle`] is to take it (see [`plan`]).
pub(super) fn prepare(proxy: &Proxy, client: &ClientInfo, head: &RawHead) -> Option<Prepared> {
    let started = Instant::now();
    let table = proxy.routes.snapshot();
    let now_ms = crate::stats::ms_of(started);
    let planned = plan(&table, head, now_ms)?;
    let pool = table.pool(planned.pool);
    let endpoint = pool
        .endpoints
        .iter()
        .position(|e| std::ptr::eq(e, planned.endpoint))?;
    let mut out = proxy.raw.head_buffers.take();
    crate::raw_upstream::write_request(
        &mut out,
        &planned.method,
        planned.target,
        || head.fields(),
        planned.host,
        client,
        None,
    );
    let line = match crate::access_log::enabled() {
        false => None,
        true => Line::begin(
            &Asked {
                protocol: "HTTP/2",
                client: client.peer,
                method: Some(planned.method.as_str().as_bytes()),
                target: Some(planned.target),
                host: Some(planned.host),
                user_agent: head.values(&http::header::USER_AGENT).next(),
            },
            started,
        )
        .map(|mut line| {
            line.served(&planned.route.name, &pool.name, planned.endpoint.addr);
            line
        }),
    };
    let (route, pool) = (planned.route.index, planned.pool);
    Some(Prepared {
        line,
        out,
        method: planned.method,
        route,
        pool,
        endpoint,
        set_cookie: planned.set_cookie,
        started,
        now_ms,
        table,
    })
}

/// Sends a prepared request on the raw path.
pub(super) async fn send(proxy: Rc<Proxy>, client: Rc<ClientInfo>, prepared: Prepared) -> Answer {
    let Prepared {
        table,
        out,
        method,
        route,
        pool,
        endpoint,
        set_cookie,
        started,
        now_ms,
        line,
    } = prepared;
    let route = &table.routes()[usize::from(route)];
    let endpoint = &table.pool(pool).endpoints[endpoint];
    let in_flight = table
        .pool(pool)
        .counts_in_flight()
        .then(|| InFlight::start(&endpoint.in_flight));
    let request = crate::raw_upstream::Request {
        method: &method,
        route,
        pool,
        endpoint,
        set_cookie: set_cookie.as_ref(),
        started,
        now_ms,
        hpack: true,
    };
    // The head came as an HPACK block: taken as it is, a spare buffer in
    // its place.
    let status = std::cell::Cell::new(0);
    let encode = |answered, block: &mut Vec<u8>| {
        status.set(answered);
        let bytes = std::mem::replace(block, proxy.raw.head_buffers.take());
        Some(Encoded {
            head: bytes.len(),
            bytes,
        })
    };
    // A short body that came whole rides in the block's buffer, after the
    // head: no allocation of its own.
    let keep = |block: &mut Encoded, data: &[u8]| {
        if data.len() > INLINE_BODY {
            return crate::raw_upstream::copy_body(block, data);
        }
        block.bytes.extend_from_slice(data);
        ProxyBody::Local(None)
    };
    let mut line = line;
    let sent = crate::raw_upstream::send(
        &proxy.raw,
        &table,
        request,
        out,
        in_flight,
        line.as_mut(),
        encode,
        keep,
    )
    .await;
    match sent {
        Ok((block, mut body)) => {
            if let Some(line) = line {
                match body {
                    // A short body rides after the head.
                    ProxyBody::Local(None) => {
                        let inline = (block.bytes.len() - block.head) as u64;
                        line.finish(status.get(), inline, None);
                    }
                    _ => body.attach_log(line, status.get()),
                }
            }
            body.attach_table(Arc::clone(&table));
            Answer::Encoded(block, body)
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
            Answer::Response(err.to_response(false))
        }
    }
}

/// Serves a request through [`Proxy::handle`].
pub(super) async fn handle(
    proxy: Rc<Proxy>,
    client: Rc<ClientInfo>,
    request: Request<ClientBody>,
) -> Answer {
    match proxy.handle(client, request).await {
        Ok(response) => Answer::Response(response),
        Err(never) => match never {},
    }
}

/// A request routed for the raw path.
struct Planned<'h, 't> {
    method: Method,
    host: &'h [u8],
    target: &'h [u8],
    route: &'t crate::route::RouteEntry,
    pool: u16,
    endpoint: &'t crate::route::EndpointEntry,
    set_cookie: Option<HeaderValue>,
}

/// Routes a request for the raw path, or None when [`Proxy::handle`] is
/// to take it: a CONNECT, `TE`/`Expect`, a target over the limit, a host
/// that is missing or not well-formed, no route, a route whose `fast_path`
/// is off, no healthy endpoint — all of which that path answers as for
/// HTTP/1.1.
fn plan<'h, 't>(table: &'t RouteTable, head: &'h RawHead, now_ms: u64) -> Option<Planned<'h, 't>> {
    let method = head.method.clone()?;
    if method == Method::CONNECT || head.needs_hyper {
        return None;
    }
    let target = head.value(&head.path)?;
    if target.len() > table.limits.max_uri_bytes
        || !target.iter().all(|&b| PATH_BYTES[usize::from(b)])
    {
        return None;
    }
    let host = match head.value(&head.authority) {
        Some(authority) => authority,
        None => {
            let mut hosts = head.values(&http::header::HOST);
            let host = hosts.next()?;
            if hosts.next().is_some() {
                return None;
            }
            host
        }
    };
    let matched_host = host_for_matching(host).ok()?;
    let path = memchr::memchr(b'?', target).map_or(target, |at| &target[..at]);
    // PATH_BYTES are ASCII.
    let path_str = std::str::from_utf8(path).ok()?;
    let route = table.find_route(
        &method,
        &matched_host,
        if path_str.is_empty() { "/" } else { path_str },
        head,
    )?;
    if !route.fast_path {
        return None;
    }
    let choice = table.choose_pool(route, head);
    let (pool, endpoint) = if choice.pinned {
        (choice.pool, table.pool(choice.pool).pick_pinned(now_ms))
    } else {
        healthy_endpoint(table, route, choice.pool, now_ms).ok()?
    };
    Some(Planned {
        method,
        host,
        target,
        route,
        pool,
        endpoint,
        set_cookie: choice.set_cookie,
    })
}
