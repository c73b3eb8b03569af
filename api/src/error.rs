//! The one error shape of the API: `{"error": {"status": 400, "code": "bad_request", "message": …,
//! "field": "page_size"}}`, for every 4xx and 5xx, including the ones poem and poem-openapi raise
//! themselves (unparsable parameters, unknown routes, failed authorization), which
//! [`json_errors`] rewrites into the same shape.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};

/// Body of every error response.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`bad_request`, `unauthorized`, `not_found`, …).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The parameter or body field at fault, when there is one.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

/// Every error an operation documents.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// A parameter or body field is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, where one is needed.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// A bearer token that is not one of the configured tokens.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// Not found.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Conflicts with the current state.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is too large.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The request body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Unexpected failure (logged).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// An agent failed to carry out the request.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency is unavailable (NATS, the database).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// An agent did not answer in time.
    #[oai(status = 504)]
    Timeout(Json<ErrorBody>),
}

fn body(status: u16, code: &str, message: impl Into<String>, field: Option<&str>) -> Json<ErrorBody> {
    Json(ErrorBody { error: ErrorDetail { status, code: code.to_string(), message: message.into(), field: field.map(str::to_string) } })
}

impl ApiError {
    /// 400 naming the field.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(400, "bad_request", message, Some(field)))
    }

    /// 401 (no token) or 403 (a wrong one), from [`crate::auth::check_header`]'s verdict.
    pub fn auth(status: StatusCode, what: &str) -> Self {
        if status == StatusCode::UNAUTHORIZED {
            Self::Unauthorized(body(401, "unauthorized", format!("bearer token required for {what}"), None))
        } else {
            Self::Forbidden(body(403, "forbidden", "invalid bearer token", None))
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(body(404, "not_found", message, None))
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(body(409, "conflict", message, None))
    }

    /// 502.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::BadGateway(body(502, "agent_failed", message, None))
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(body(503, "unavailable", message, None))
    }

    /// 504.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::Timeout(body(504, "timeout", message, None))
    }

    /// 500, logged with the cause; the client sees no internals.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(message = "Request failed.", error = %err);
        Self::Internal(body(500, "internal", "internal error (logged on the server)", None))
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::internal(&e)
    }
}

/// Rewrites any error poem produced (bad parameters, 404 routes, 405, 401 from the security
/// scheme) into the JSON error shape; JSON error bodies pass through unchanged.
pub async fn json_errors(err: poem::Error) -> Response {
    let resp = err.into_response();
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || status.is_success() {
        return resp;
    }
    let (parts, b) = resp.into_parts();
    let text = b.into_string().await.unwrap_or_default();
    let field = parameter_name(&text);
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "client_error",
        _ => "internal",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let json = body(status.as_u16(), code, message, field.as_deref());
    let mut out = Json(json.0).into_response();
    out.set_status(parts.status);
    if status == StatusCode::UNAUTHORIZED {
        out.headers_mut().insert(poem::http::header::WWW_AUTHENTICATE, poem::http::HeaderValue::from_static("Bearer"));
    }
    out
}

/// The methods a path supports, for the `Allow` header of a 405 (RFC 9110).
pub fn allowed_methods(path: &str) -> &'static str {
    let post = ["/api/ntp/history/search", "/api/ntp/history/export", "/api/ntp/history/cleanup"];
    if post.contains(&path) || (path.starts_with("/api/ntp/interfaces/") && (path.ends_with("/start") || path.ends_with("/stop"))) {
        "POST"
    } else {
        "GET, HEAD"
    }
}

/// poem-openapi names the parameter in backticks: "failed to parse parameter `page_size`: …".
fn parameter_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}
