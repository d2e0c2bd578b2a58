//! Health and the public signing keys.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Public keys may be cached briefly by verifiers.
pub async fn jwks(State(s): State<AppState>) -> Response {
    let mut r = Json(s.auth.tokens().jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
}
