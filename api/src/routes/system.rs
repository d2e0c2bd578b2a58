//! Health, the public signing keys, and the OpenAPI document of the JSON API.

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

/// The OpenAPI document of the JSON API (the browser pages are not in it),
/// written by hand and checked against the Router by `tests/tests/openapi.rs`
/// and schemathesis (`scripts/schemathesis`). Embedded as text: no
/// generator crate in the Lambda package.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI_JSON).into_response()
}

/// Whether `path` belongs to the browser pages rather than the JSON API
/// (whose paths `openapi.json` lists): a browser is answered with a page.
fn is_page_path(path: &str) -> bool {
    !(path.starts_with("/v1/")
        || path.starts_with("/.well-known/")
        || matches!(path, "/v1" | "/healthz" | "/openapi.json" | "/otp"))
}

pub async fn not_found(uri: axum::http::Uri) -> Response {
    if is_page_path(uri.path()) {
        return crate::pages::render::message(
            axum::http::StatusCode::NOT_FOUND,
            "Page not found",
            "There is no page at this address.",
        );
    }
    ApiError::not_found().into_response()
}

pub async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if is_page_path(uri.path()) {
        return crate::pages::render::message(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This page cannot be used that way.",
        );
    }
    ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
        .into_response()
}
