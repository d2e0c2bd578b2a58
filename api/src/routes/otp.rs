//! The standalone OTP API, wire-compatible with the OTP Lambda seed:
//! `POST /otp` with `{"action": "send_otp" | "verify_otp", ...}`, answered
//! with `{"message": ...}` and the seed's status codes (200, 400, 401, 403,
//! 404), plus 429 with `Retry-After` for the cooldown and rate limits the
//! seed lacked.

use crate::error::ApiError;
use crate::extract::{Meta, is_json, parse_json};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::Error;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct OtpReq {
    action: Option<String>,
    email: Option<String>,
    otp: Option<String>,
}

fn msg(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// A 400 in the seed's shape, naming the member at fault.
fn bad(message: &str, field: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message, "field": field }))).into_response()
}

pub async fn otp(State(s): State<AppState>, Meta(meta): Meta, headers: HeaderMap, body: Body) -> Response {
    // Read here, not by the `Bytes` extractor: its over-limit rejection is
    // axum's plain-text 413 rather than the seed's `{"message": ...}`.
    let body = match axum::body::to_bytes(body, crate::extract::MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) if crate::extract::timed_out(&e) => {
            return msg(StatusCode::REQUEST_TIMEOUT, "Request body did not arrive in time");
        }
        Err(_) => return msg(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    // The seed took any body; a browser form or text post from another
    // site (no CORS preflight) must not send codes or guesses.
    if !is_json(&headers) {
        return msg(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    let req: OtpReq = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => {
            // A member of the request, or else the body as a whole (an array
            // body fails at "[0]", which names nothing the caller sent).
            let member =
                e.extra.as_ref().and_then(|(_, v)| v.as_str()).filter(|f| ["action", "email", "otp"].contains(f));
            return bad("Invalid request body", member.unwrap_or("body"));
        }
    };
    let email = req.email.filter(|e| !e.trim().is_empty());
    match req.action.as_deref() {
        Some("send_otp") => {
            let Some(email) = email else { return bad("Email is required", "email") };
            match s.auth.send_otp(&email, &meta).await {
                Ok(_) => msg(StatusCode::OK, "OTP sent successfully"),
                Err(e) => otp_error(e, s.auth.policy().otp_ttl_secs),
            }
        }
        Some("verify_otp") => {
            let missing = if email.is_none() { "email" } else { "otp" };
            let (Some(email), Some(code)) = (email, req.otp.filter(|o| !o.trim().is_empty())) else {
                return bad("Email and OTP are required", missing);
            };
            match s.auth.verify_otp(&email, &code, &meta).await {
                Ok(()) => msg(StatusCode::OK, "OTP verified successfully"),
                Err(e) => otp_error(e, s.auth.policy().otp_ttl_secs),
            }
        }
        _ => bad("Invalid action", "action"),
    }
}

/// The answer to a refused `send_otp` or `verify_otp`; `ttl_secs` is a
/// code's life (an exhausted code is not replaced before it ends).
fn otp_error(e: Error, ttl_secs: i64) -> Response {
    use StatusCode as S;
    match e {
        Error::Validation { field: "email", .. } => bad("Invalid email address", "email"),
        Error::Validation { .. } => bad("OTP must be 6 digits", "otp"),
        Error::ChallengeNotFound => msg(S::NOT_FOUND, "OTP not found. Please request a new one."),
        Error::OtpExpired => msg(S::BAD_REQUEST, "OTP has expired. Please request a new one."),
        Error::OtpExhausted => {
            let minutes = (ttl_secs + 59) / 60;
            let text = format!(
                "Maximum attempts exceeded. Request a new OTP once this one expires (within {minutes} minutes)."
            );
            msg(S::FORBIDDEN, &text)
        }
        Error::OtpInvalid { attempts_left } => {
            (S::UNAUTHORIZED, Json(json!({ "message": "Invalid OTP", "attempts_left": attempts_left }))).into_response()
        }
        Error::RateLimited { retry_after } => {
            let mut r = (S::TOO_MANY_REQUESTS, Json(json!({ "message": "Too many requests. Please wait before trying again.", "retry_after": retry_after }))).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r
        }
        other => {
            // Everything else is ours, not the caller's: log it, say little.
            let status = ApiError::from(other).status;
            msg(status, "Internal server error")
        }
    }
}
