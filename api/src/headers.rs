//! Security headers on every response, errors included (SECURITY.md), a
//! request id, and `Cache-Control: no-store` unless a route chose otherwise.

use crate::extract::RequestId;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

pub const CSP: &str =
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

pub async fn security_headers(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let bodiless = matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=63072000; includeSubDomains");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(h, HeaderName::from_static("cross-origin-resource-policy"), "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
        set(h, header::PRAGMA, "no-cache");
    }
    // Every textual body says its charset; a 204 or 304 has no body to type.
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match ct.as_deref() {
        Some("application/json") => set(h, header::CONTENT_TYPE, "application/json; charset=utf-8"),
        Some("text/plain") => set(h, header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        None if !bodiless => set(h, header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        _ => {}
    }
    h.remove(header::SERVER);
    h.remove("x-powered-by");
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    resp
}
