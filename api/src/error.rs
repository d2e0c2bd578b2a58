//! The one place where domain outcomes become HTTP: a status and a stable
//! JSON body `{"error": "<code>", "message": "<text>"}`. The match has no
//! `_` arm, so a new domain variant cannot ship unmapped. Internal detail is
//! logged, never returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::Error;
use serde_json::{Value, json};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<(&'static str, Value)>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), extra: None, retry_after: None }
    }

    /// 400 naming the offending field.
    pub fn field(field: &str, reason: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{field}: {reason}"));
        e.extra = Some(("field", Value::String(field.to_string())));
        e
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let simple = |status, code, e: &Error| ApiError::new(status, code, e.to_string());
        match &e {
            Error::Validation { field, reason } => ApiError::field(field, reason),
            Error::UsernameTaken => simple(S::CONFLICT, "username_taken", &e),
            Error::InvalidCredentials => simple(S::UNAUTHORIZED, "invalid_credentials", &e),
            Error::VerificationInvalid => simple(S::BAD_REQUEST, "verification_token_invalid", &e),
            Error::VerificationExpired => simple(S::BAD_REQUEST, "verification_token_expired", &e),
            Error::VerificationUsed => simple(S::BAD_REQUEST, "verification_token_used", &e),
            Error::ResetLinkInvalid => simple(S::BAD_REQUEST, "reset_link_invalid", &e),
            Error::EmailChangeLinkInvalid => simple(S::BAD_REQUEST, "email_change_link_invalid", &e),
            Error::EmailTaken => simple(S::CONFLICT, "email_taken", &e),
            Error::ChallengeNotFound | Error::ResendsSpent => simple(S::UNAUTHORIZED, "challenge_invalid", &e),
            Error::OtpInvalid { attempts_left } => {
                let mut r = simple(S::UNAUTHORIZED, "otp_invalid", &e);
                r.message = format!("wrong code; {attempts_left} attempts left");
                r.extra = Some(("attempts_left", json!(attempts_left)));
                r
            }
            Error::OtpExpired => simple(S::UNAUTHORIZED, "otp_expired", &e),
            Error::OtpExhausted => simple(S::UNAUTHORIZED, "otp_exhausted", &e),
            Error::OtpUsed => simple(S::UNAUTHORIZED, "otp_used", &e),
            Error::SessionNotFound => simple(S::NOT_FOUND, "session_not_found", &e),
            Error::RateLimited { retry_after } => {
                let mut r = simple(S::TOO_MANY_REQUESTS, "rate_limited", &e);
                r.message = format!("too many requests; retry in {retry_after} s");
                r.retry_after = Some(*retry_after);
                r
            }
            Error::Unauthorized => simple(S::UNAUTHORIZED, "unauthorized", &e),
            Error::InvalidRefreshToken => simple(S::UNAUTHORIZED, "invalid_refresh_token", &e),
            // Nobody reads it: logged as a refusal (info), not as a fault.
            Error::ClientGone => simple(client_closed_request(), "client_gone", &e),
            Error::Unavailable(source) => {
                tracing::error!(error = %source, "dependency unavailable");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is briefly unavailable; retry shortly",
                )
            }
            Error::Internal(source) => {
                tracing::error!(error = %source, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
            }
        }
    }
}

/// 499, the status proxies log for a request whose client closed the
/// connection before the answer.
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        if let Some(s) = self.retry_after {
            body["retry_after"] = json!(s);
        }
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(crate::refusals::ErrorCode(self.code));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "unauthorized" {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
