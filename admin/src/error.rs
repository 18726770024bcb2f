//! The admin crate's one error type, and its JSON answer.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why an admin call or a state operation failed. Every variant that
/// answers a call names a stable code and, where one field was wrong, the
/// field.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The bytes are not an HTTP/1.1 request head.
    #[error("malformed request: {reason}")]
    MalformedRequest {
        /// What is wrong with them.
        reason: String,
    },
    /// The request head is over the admin listener's limits.
    #[error("request head over the limits ({limits})")]
    HeadTooLarge {
        /// The limits.
        limits: &'static str,
    },
    /// The request target is over the length hyper takes.
    #[error("request target too long")]
    UriTooLong,
    /// The body is not JSON of the expected shape.
    #[error("invalid JSON body: {reason}")]
    BadJson {
        /// serde_json's message.
        reason: String,
        /// The JSON path of the bad field, when known.
        field: Option<String>,
    },
    /// A value breaks a rule.
    #[error("{message}")]
    Invalid {
        /// Stable code, such as `weights_do_not_sum`.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The field.
        field: String,
    },
    /// The route does not exist.
    #[error("no route named {route:?}")]
    UnknownRoute {
        /// The name asked for.
        route: String,
    },
    /// No such endpoint.
    #[error("no such endpoint: {method} {path}")]
    NotFound {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The method is not allowed on this path.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The methods the path takes, for `Allow`.
        allow: &'static str,
    },
    /// The call does not fit the route's current state (a rollout is or is
    /// not in progress).
    #[error("{message}")]
    Conflict {
        /// What is in the way.
        message: String,
    },
    /// `If-Match` named a version that is no longer current.
    #[error("the table is at version {current}, not {given}")]
    Stale {
        /// The version the caller had.
        given: String,
        /// The current version.
        current: u64,
    },
    /// No or wrong bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The body is over the limit.
    #[error("request body over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body is not `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The body did not arrive in time.
    #[error("request body not received within {seconds} s")]
    BodyTimeout {
        /// The limit.
        seconds: u64,
    },
    /// Reading or writing the state directory failed.
    #[error("{what} {path}")]
    Storage {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be used.
    #[error("state file {path} is corrupt: {reason} (start with --reset-state to discard it)")]
    CorruptState {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A table could not be built (an endpoint name does not resolve).
    #[error("building the routing table")]
    Build(#[source] switchyard_proxy::ForwardError),
}

impl AdminError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadJson { .. } | Self::Invalid { .. } | Self::MalformedRequest { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownRoute { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::Stale { .. } => StatusCode::PRECONDITION_FAILED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Build(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Storage { .. } | Self::CorruptState { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedRequest { .. } => "malformed_request",
            Self::HeadTooLarge { .. } => "head_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::BadJson { .. } => "invalid_json",
            Self::Invalid { code, .. } => code,
            Self::UnknownRoute { .. } => "unknown_route",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Stale { .. } => "version_mismatch",
            Self::Conflict { .. } => "conflict",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::Storage { .. } => "storage_failed",
            Self::CorruptState { .. } => "corrupt_state",
            Self::Build(_) => "build_failed",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::BadJson { field, .. } => field.as_deref(),
            Self::Invalid { field, .. } => Some(field),
            Self::UnknownRoute { .. } => Some("route"),
            Self::Stale { .. } => Some("If-Match"),
            _ => None,
        }
    }

    /// What went wrong, with its cause: the answer's `message`.
    pub fn to_response_message(&self) -> String {
        let mut message = self.to_string();
        if let Some(source) = std::error::Error::source(self) {
            message.push_str(": ");
            message.push_str(&source.to_string());
        }
        message
    }

    /// `{"error":{"code":…,"message":…,"field":…}}`.
    pub fn body(&self) -> Vec<u8> {
        let message = self.to_response_message();
        let mut error = serde_json::json!({"code": self.code(), "message": message});
        if let Some(field) = self.field() {
            error["field"] = serde_json::Value::from(field);
        }
        serde_json::to_vec(&serde_json::json!({ "error": error }))
            .unwrap_or_else(|_| b"{}".to_vec())
    }

    /// [`AdminError::body`] with the status.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::MethodNotAllowed { allow, .. } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchyard\""),
            );
        }
        response
    }
}
