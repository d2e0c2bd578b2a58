//! One log line for every request the service refuses (4xx) or fails (5xx):
//! the route (its template, never the query, which may hold a link's
//! token), the status, the error code, the wait of a 429, the client IP and
//! the request id. Refusals are what an operator looks for after an attack
//! (unknown names, forged tokens, wrong admin keys, rate limits), and most
//! of them have no other line.

use crate::AppState;
use crate::extract::request_meta;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

/// The stable error code of an `ApiError` response, for the log line.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

pub async fn log_refusals(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let (parts, body) = req.into_parts();
    let meta = request_meta(&parts, state.trust_forwarded_for);
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        let code = resp.extensions().get::<ErrorCode>().map_or("", |c| c.0);
        let retry_after = resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).unwrap_or("");
        let route = route.as_ref().map_or("(no route)", MatchedPath::as_str);
        let (ip, request_id) = (meta.ip.as_deref().unwrap_or(""), meta.request_id.as_deref().unwrap_or(""));
        if status.is_server_error() {
            tracing::warn!(%method, route, status = status.as_u16(), error = code, ip, request_id, "request failed");
        } else {
            tracing::info!(
                %method, route, status = status.as_u16(), error = code, retry_after, ip, request_id,
                "request refused"
            );
        }
    }
    resp
}
