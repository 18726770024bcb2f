//! One request's way through the proxy: check it, route it, pick a pool and
//! an endpoint, send it upstream, stream the answer back.

use std::convert::Infallible;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use crate::body::{InFlight, ProxyBody, RequestBody};
use crate::error::ForwardError;
use crate::headers::{is_websocket_upgrade, set_forwarded, strip_hop_headers, ClientInfo};
use crate::route::{RouteTable, Routes};
use crate::upstream::{ExchangeTimeouts, Upstreams};

/// A request body up to this size is read whole before anything goes
/// upstream, as nginx's `proxy_request_buffering` does: a malformed chunked
/// body is then refused before the upstream sees a byte of the request.
/// Larger bodies stream after this much has been read.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// One worker's request handler.
pub struct Proxy {
    routes: Routes,
    upstreams: Rc<Upstreams>,
}

impl Proxy {
    /// A handler for one worker thread.
    pub fn new(routes: Routes) -> Rc<Proxy> {
        Rc::new(Proxy {
            routes,
            upstreams: Upstreams::new(),
        })
    }

    /// Serves one request; every failure becomes an answer to the client.
    pub async fn handle(
        self: Rc<Self>,
        client: Rc<ClientInfo>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let table = self.routes.snapshot();
        let http1 = request.version() != Version::HTTP_2;
        match self.forward(&table, &client, request).await {
            Ok(response) => Ok(response),
            Err(err) => {
                debug!(client = %client.peer, error = %err, status = %err.status(), "request failed");
                Ok(err.to_response(http1 && err.closes_connection()))
            }
        }
    }

    async fn forward(
        &self,
        table: &RouteTable,
        client: &ClientInfo,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (mut parts, body) = request.into_parts();
        let limits = &table.limits;

        if parts.method == Method::CONNECT {
            return Err(ForwardError::BadRequest {
                reason: "CONNECT is not supported",
            });
        }
        let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if uri_len > limits.max_uri_bytes {
            return Err(ForwardError::UriTooLong {
                len: uri_len,
                limit: limits.max_uri_bytes,
            });
        }
        let authority = request_authority(&parts)?;
        // Only `chunked` alone is accepted: hyper refuses a body whose last
        // coding is not chunked, and other codings before it are refused
        // here, as nginx does, since nothing downstream would decode them.
        if let Some(te) = parts.headers.get(header::TRANSFER_ENCODING) {
            if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
                || parts
                    .headers
                    .get_all(header::TRANSFER_ENCODING)
                    .iter()
                    .count()
                    > 1
            {
                return Err(ForwardError::BadRequest {
                    reason: "transfer-encoding other than chunked",
                });
            }
        }
        if body.size_hint().lower() > limits.max_body_bytes {
            return Err(ForwardError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }

        let host = host_for_matching(&authority);
        let route = table
            .find_route(&parts.method, &host, parts.uri.path(), &parts.headers)
            .ok_or_else(|| ForwardError::NoRoute {
                host: host.to_string(),
                path: parts.uri.path().to_string(),
            })?;
        let choice = table.choose_pool(route, &parts.headers);
        let pool = table.pool(choice.pool);
        let endpoint = pool.pick();
        debug!(route = %route.name, backend = %endpoint.label, "forwarding");

        let upgrade = is_h1(&parts) && is_websocket_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let host_value =
            HeaderValue::from_maybe_shared(Bytes::copy_from_slice(authority.as_str().as_bytes()))
                .ok();
        strip_hop_headers(&mut parts.headers, upgrade);
        // The proxy answers `Expect: 100-continue` itself when it reads the body.
        parts.headers.remove(header::EXPECT);
        set_forwarded(&mut parts.headers, client, host_value.as_ref());
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
        parts.version = Version::HTTP_11;

        let body = read_ahead(body, limits.max_body_bytes).await?;
        if let RequestBody::Full { data, .. } = &body {
            // The body was re-framed: its length is now known exactly.
            let len = data.as_ref().map_or(0, |d| d.len());
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }

        let in_flight = pool
            .counts_in_flight()
            .then(|| InFlight::start(&endpoint.in_flight));
        let timeouts = ExchangeTimeouts {
            connect: table.timeouts.connect,
            response_header: table.timeouts.response_header,
            idle: table.timeouts.idle,
        };
        let (response, release) = self
            .upstreams
            .send(endpoint, Request::from_parts(parts, body), timeouts)
            .await?;

        let (mut parts, body) = response.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_headers(&mut parts.headers, switching && upgrade);
        if let Some(cookie) = choice.set_cookie {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        if switching {
            if let Some(client_upgrade) = client_upgrade {
                let mut upstream_response = Response::from_parts(parts.clone(), ());
                let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
                let backend = endpoint.label.clone();
                tokio::task::spawn_local(async move {
                    tunnel(client_upgrade, upstream_upgrade, &backend).await;
                });
                // The upstream connection is now the tunnel's: not pooled.
                drop(release);
                return Ok(Response::from_parts(parts, ProxyBody::local(Bytes::new())));
            }
        }
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, release, in_flight),
        ))
    }
}

fn is_h1(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11 || parts.version == Version::HTTP_10
}

/// The request's authority: the absolute-form target's, HTTP/2's
/// `:authority`, or the single `Host` field (RFC 9112 §3.2).
fn request_authority(parts: &http::request::Parts) -> Result<Authority, ForwardError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ForwardError::BadRequest {
            reason: "more than one Host field",
        });
    }
    if let Some(authority) = parts.uri.authority() {
        return Ok(authority.clone());
    }
    match host {
        Some(value) => {
            if value.is_empty() && parts.version == Version::HTTP_11 {
                return Err(ForwardError::BadRequest {
                    reason: "empty Host field",
                });
            }
            Authority::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())).map_err(|_| {
                ForwardError::BadRequest {
                    reason: "invalid Host field",
                }
            })
        }
        None if parts.version == Version::HTTP_11 => Err(ForwardError::BadRequest {
            reason: "HTTP/1.1 request without a Host field",
        }),
        None => Ok(Authority::from_static("")),
    }
}

/// The host part, lower case; borrowed unless it had upper-case letters.
fn host_for_matching(authority: &Authority) -> std::borrow::Cow<'_, str> {
    let host = authority.host();
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Reads up to [`READ_AHEAD_BYTES`] of the body before forwarding.
async fn read_ahead(mut body: Incoming, limit: u64) -> Result<RequestBody, ForwardError> {
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
            return Ok(RequestBody::Stream {
                seen: prefix.len() as u64,
                prefix: Some(prefix),
                rest: body,
                limit,
            });
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

/// Copies bytes both ways between an upgraded client and upstream.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    backend: &str,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(err), _) | (_, Err(err)) => {
            debug!(backend = %backend, error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(backend = %backend, error = %err, "tunnel ended");
    }
}
