//! The admin HTTP API: routing of paths to handlers, authentication, body
//! limits, and JSON in and out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::{ControlPlane, RolloutAction};
use crate::error::AdminError;
use crate::evaluator::HealthBoard;
use crate::events::Event;
use crate::rollout::RolloutSpec;

/// A JSON answer, or an event stream.
pub type AdminBody = Either<Full<Bytes>, Channel<Bytes>>;

/// Admin request bodies are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A whole config may be larger: many routes and pools.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// The API: the control plane and the token that guards it.
pub struct AdminApi {
    plane: Arc<ControlPlane>,
    token: Option<Vec<u8>>,
    board: Arc<HealthBoard>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    #[serde(deserialize_with = "switchyard_config::raw::unique_keys")]
    weights: BTreeMap<String, Value>,
}

impl AdminApi {
    /// An API over `plane`; with a token, every call but the health checks
    /// needs `Authorization: Bearer <token>`.
    pub fn new(plane: Arc<ControlPlane>, token: Option<String>) -> Arc<AdminApi> {
        Arc::new(AdminApi {
            plane,
            token: token.map(String::into_bytes),
            board: Arc::new(HealthBoard::default()),
        })
    }

    /// Serves one request; every error becomes a JSON answer.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<AdminBody>, Infallible> {
        Ok(match self.route(request).await {
            Ok(response) => response,
            Err(err) => err.to_response().map(Either::Left),
        })
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<AdminBody>, AdminError> {
        let path = request.uri().path().to_string();
        let not_found = || AdminError::NotFound {
            method: request.method().to_string(),
            path: path.clone(),
        };
        // Percent-encoded bytes name the same thing (RFC 3986 §6.2.2.2).
        let decoded: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decoded)
            .collect::<Option<_>>()
            .ok_or_else(not_found)?;
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        // HEAD is GET without the body (RFC 9110 §9.3.2): hyper drops it.
        let head = request.method() == Method::HEAD;
        let method = match head {
            true => Method::GET,
            false => request.method().clone(),
        };
        // RFC 9110 §15.5.6: a 405 says which methods the path takes.
        let not_allowed = |allow: &'static str| AdminError::MethodNotAllowed {
            method: request.method().to_string(),
            path: path.clone(),
            allow,
        };
        match segments.as_slice() {
            ["healthz"] if method == Method::GET => {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": "ok"}),
                    None,
                ))
            }
            ["readyz"] if method == Method::GET => {
                let version = self.plane.version();
                return Ok(if self.plane.is_draining() {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "draining", "version": version}),
                        None,
                    )
                } else {
                    json_response(
                        StatusCode::OK,
                        &json!({"status": "ready", "version": version}),
                        None,
                    )
                });
            }
            ["healthz"] | ["readyz"] => return Err(not_allowed("GET, HEAD")),
            _ => {}
        }
        self.authenticate(&request)?;
        match segments.as_slice() {
            ["metrics"] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                let mut response = Response::new(Either::Left(Full::new(Bytes::from(
                    crate::metrics::render(),
                ))));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(response)
            }
            ["v1", "routes"] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                let (version, body) = self.plane.describe(None).await?;
                Ok(json_response(StatusCode::OK, &body, Some(version)))
            }
            ["v1", "routes", route] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                let (version, body) = self.plane.describe(Some(route)).await?;
                Ok(json_response(StatusCode::OK, &body, Some(version)))
            }
            ["v1", "routes", route, "weights"] => {
                if method != Method::PUT {
                    return Err(not_allowed("PUT"));
                }
                let route = route.to_string();
                let if_match = if_match(&request);
                let body: WeightsBody = read_json(request).await?;
                let weights = weights_to_basis_points(&body.weights)?;
                self.plane
                    .set_weights(&route, &weights, if_match.as_deref(), "admin-api")
                    .await?;
                // The ETag is the described table's (a reload may have
                // come between), so it always names the body's version.
                let (version, body) = self.plane.describe(Some(&route)).await?;
                Ok(json_response(StatusCode::OK, &body, Some(version)))
            }
            ["v1", "routes", route, "health"] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                let (version, described) = self.plane.describe(Some(route)).await?;
                let mut body = self.board.describe(route);
                body["version"] = json!(version);
                body["weights"] = described["weights"].clone();
                body["rollout"] = described["rollout"].clone();
                Ok(json_response(StatusCode::OK, &body, Some(version)))
            }
            ["v1", "routes", route, "rollout"] => {
                let route = route.to_string();
                if method == Method::POST {
                    let if_match = if_match(&request);
                    let spec: RolloutSpec = read_json(request).await?;
                    self.plane
                        .start_rollout(&route, &spec, if_match.as_deref(), "admin-api")
                        .await?;
                } else if method != Method::GET {
                    return Err(not_allowed("GET, HEAD, POST"));
                }
                self.rollout_status(&route).await
            }
            ["v1", "routes", route, "rollout", action @ ("pause" | "resume" | "promote" | "abort")] =>
            {
                if method != Method::POST {
                    return Err(not_allowed("POST"));
                }
                let route = route.to_string();
                let if_match = if_match(&request);
                let action = match *action {
                    "pause" => RolloutAction::Pause,
                    "resume" => RolloutAction::Resume,
                    "promote" => RolloutAction::Promote,
                    "abort" => {
                        // The body is optional: none at all (whatever the
                        // type says), or a JSON reason; a reason sent
                        // without its type is refused, not dropped.
                        let typed = request.headers().contains_key(header::CONTENT_TYPE);
                        let json = is_json(&request);
                        let bytes = read_any(request).await?;
                        let reason = if bytes.is_empty() {
                            None
                        } else if !typed || !json {
                            return Err(AdminError::UnsupportedMediaType);
                        } else {
                            let body: AbortBody = parse_json(&bytes)?;
                            body.reason
                        };
                        RolloutAction::Abort(
                            reason.unwrap_or_else(|| "aborted by an operator".into()),
                        )
                    }
                    _ => {
                        return Err(AdminError::NotFound {
                            method: method.to_string(),
                            path,
                        })
                    }
                };
                self.plane
                    .control_rollout(&route, action, if_match.as_deref(), "admin-api")
                    .await?;
                self.rollout_status(&route).await
            }
            ["v1", "config"] => {
                if method != Method::PUT {
                    return Err(not_allowed("PUT"));
                }
                let if_match = if_match(&request);
                let text = read_body(request, MAX_CONFIG_BYTES).await?;
                let text = switchyard_config::utf8_text(text.to_vec()).map_err(|err| {
                    AdminError::Invalid {
                        code: "invalid_config",
                        message: err.to_string(),
                        field: "config".into(),
                    }
                })?;
                self.plane
                    .replace_config(&text, if_match.as_deref(), "admin-api")
                    .await?;
                let (version, body) = self.plane.describe(None).await?;
                Ok(json_response(StatusCode::OK, &body, Some(version)))
            }
            ["v1", "events", "stream"] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                // An EventSource that reconnects says where it was with
                // `Last-Event-ID`; `?since=` wins when both are given.
                let since = match query_param(request.uri().query(), "since") {
                    Some(_) => since_param(request.uri().query())?,
                    None => last_event_id(&request)?,
                };
                if head {
                    // A body of no known length, as GET's: the same fields,
                    // and no stream behind it.
                    let (_, body) = Channel::new(1);
                    return Ok(event_stream_head(Response::new(Either::Right(body))));
                }
                Ok(self.event_stream(since))
            }
            ["v1", "events"] => {
                if method != Method::GET {
                    return Err(not_allowed("GET, HEAD"));
                }
                let since = since_param(request.uri().query())?;
                let events = self.plane.events().since(since);
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"events": events}),
                    None,
                ))
            }
            _ => Err(not_found()),
        }
    }

    async fn rollout_status(&self, route: &str) -> Result<Response<AdminBody>, AdminError> {
        let (version, described) = self.plane.describe(Some(route)).await?;
        let body = json!({"route": route, "version": version, "rollout": described["rollout"]});
        Ok(json_response(StatusCode::OK, &body, Some(version)))
    }

    /// Server-Sent Events: the events after `since`, then each new one
    /// as it happens, with a comment every 15 s to keep proxies from
    /// closing an idle stream.
    fn event_stream(&self, since: u64) -> Response<AdminBody> {
        let (mut sender, body) = Channel::new(16);
        // Subscribe before reading the history, so nothing falls between.
        let mut live = self.plane.events().subscribe();
        let history = self.plane.events().since(since);
        tokio::spawn(async move {
            let mut last = since;
            for event in history {
                last = event.id;
                if sender.send_data(sse_frame(&event)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::time::timeout(Duration::from_secs(15), live.recv()).await;
                let frame = match next {
                    Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                    Ok(Ok(event)) if event.id <= last => continue,
                    Ok(Ok(event)) => {
                        last = event.id;
                        sse_frame(&event)
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => Bytes::from(
                        format!("event: lagged\ndata: {{\"resume_with\": \"?since={last}\"}}\n\n"),
                    ),
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                };
                if sender.send_data(frame).await.is_err() {
                    return;
                }
            }
        });
        event_stream_head(Response::new(Either::Right(body)))
    }

    /// The canary health board the evaluator writes.
    pub fn board(&self) -> &Arc<HealthBoard> {
        &self.board
    }

    /// The control plane behind this API.
    pub fn plane(&self) -> &Arc<ControlPlane> {
        &self.plane
    }

    fn authenticate(&self, request: &Request<Incoming>) -> Result<(), AdminError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given =
            request
                .headers()
                .get(header::AUTHORIZATION)
                .ok_or(AdminError::Unauthorized(
                    "an Authorization: Bearer token is required",
                ))?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let given = given.as_bytes();
        let given = match given.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                token.trim_ascii_start()
            }
            _ => {
                return Err(AdminError::Unauthorized(
                    "the Authorization scheme must be Bearer",
                ))
            }
        };
        if constant_time_eq(given, token) {
            Ok(())
        } else {
            Err(AdminError::Unauthorized("the bearer token is wrong"))
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, AdminError> {
    let body = read_body(request, MAX_BODY_BYTES).await?;
    parse_json(&body)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|err| AdminError::BadJson {
        reason: err.to_string(),
        field: None,
    })
}

/// The fields of an event stream's answer.
fn event_stream_head(mut response: Response<AdminBody>) -> Response<AdminBody> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Where a reconnecting EventSource was: its `Last-Event-ID` (0: none).
fn last_event_id(request: &Request<Incoming>) -> Result<u64, AdminError> {
    let Some(value) = request.headers().get("last-event-id") else {
        return Ok(0);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    text.trim().parse::<u64>().map_err(|_| AdminError::Invalid {
        code: "invalid_query",
        message: format!("Last-Event-ID {text:?} is not an event id"),
        field: "Last-Event-ID".into(),
    })
}

/// A path segment with its `%XX` escapes decoded; None if one is broken,
/// decodes to a `/`, or the result is not UTF-8.
fn percent_decoded(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if byte == b'/' {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `If-Match` value, if given.
fn if_match(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A body of any type, of at most [`MAX_BODY_BYTES`].
async fn read_any(request: Request<Incoming>) -> Result<Bytes, AdminError> {
    read_limited(request, MAX_BODY_BYTES).await
}

/// How long a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The body, of at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_limited(request: Request<Incoming>, limit: usize) -> Result<Bytes, AdminError> {
    let collect = Limited::new(request.into_body(), limit).collect();
    Ok(tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .map_err(|_| AdminError::BodyTimeout {
            seconds: BODY_TIMEOUT.as_secs(),
        })?
        .map_err(|err| match err.downcast_ref::<LengthLimitError>() {
            Some(_) => AdminError::TooLarge { limit },
            None => AdminError::BadJson {
                reason: format!("the body could not be read: {err}"),
                field: None,
            },
        })?
        .to_bytes())
}

/// Whether the request says its body is JSON.
fn is_json(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// A JSON body of at most `limit` bytes.
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, AdminError> {
    if !is_json(&request) {
        return Err(AdminError::UnsupportedMediaType);
    }
    read_limited(request, limit).await
}

/// Integers are basis points; numbers with a decimal point are percentages
/// with at most two decimals (`25.5` is 2550).
fn weights_to_basis_points(
    weights: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, i64>, AdminError> {
    let mut out = BTreeMap::new();
    for (pool, value) in weights {
        let invalid = |message: String| AdminError::Invalid {
            code: "invalid_weight",
            message,
            field: format!("weights.{pool}"),
        };
        let bp = if let Some(bp) = value.as_i64() {
            bp
        } else if let Some(percent) = value.as_f64() {
            let scaled = percent * 100.0;
            let rounded = scaled.round();
            if (scaled - rounded).abs() > 1e-6 {
                return Err(invalid(format!(
                    "pool {pool:?}: {percent}% has more than two decimals"
                )));
            }
            if !(-1e9..=1e9).contains(&rounded) {
                return Err(invalid(format!(
                    "pool {pool:?}: {percent}% is out of range"
                )));
            }
            rounded as i64
        } else {
            return Err(invalid(format!(
                "pool {pool:?}: weight must be a number (basis points, or a percentage with a decimal point), not {value}"
            )));
        };
        out.insert(pool.clone(), bp);
    }
    Ok(out)
}

fn sse_frame(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).expect("events serialize");
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.id, event.kind
    ))
}

fn since_param(query: Option<&str>) -> Result<u64, AdminError> {
    query_param(query, "since")
        .map(|v| {
            v.parse::<u64>().map_err(|_| AdminError::Invalid {
                code: "invalid_query",
                message: format!("since={v:?} is not an event id"),
                field: "since".into(),
            })
        })
        .transpose()
        .map(|since| since.unwrap_or(0))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn json_response(status: StatusCode, body: &Value, version: Option<u64>) -> Response<AdminBody> {
    let bytes = serde_json::to_vec_pretty(body).expect("JSON values serialize");
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(bytes))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(version) = version {
        if let Ok(etag) = HeaderValue::try_from(format!("\"{version}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn percentages_convert_exactly() {
        let weights: BTreeMap<String, Value> =
            serde_json::from_str(r#"{"a": 7500, "b": 25.0, "c": 0.01, "d": 12.34}"#).expect("json");
        let bp = weights_to_basis_points(&weights).expect("valid");
        assert_eq!(bp["a"], 7500);
        assert_eq!(bp["b"], 2500);
        assert_eq!(bp["c"], 1);
        assert_eq!(bp["d"], 1234);
        let bad: BTreeMap<String, Value> = serde_json::from_str(r#"{"a": 1.234}"#).expect("json");
        assert!(weights_to_basis_points(&bad).is_err());
        let bad: BTreeMap<String, Value> = serde_json::from_str(r#"{"a": "10"}"#).expect("json");
        assert!(weights_to_basis_points(&bad).is_err());
    }
}
