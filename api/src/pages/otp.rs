//! The standalone one-time-code page (the OTP seed's UI): send a code to an
//! address, then check it. Same flows, limits and answers as `POST /otp`:
//! sending says the same whether or not anything was sent.

use super::account::FieldErrors;
use super::extract::PageForm;
use super::render::{self, page};
use super::visitor::Visitor;
use super::with_cookies;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use latchkey_core::Error;
use minijinja::context;
use serde::Deserialize;

fn otp_page(
    v: &mut Visitor,
    status: StatusCode,
    email: &str,
    send_errors: FieldErrors,
    verify_errors: FieldErrors,
    notice: Option<&str>,
    form_error: Option<String>,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => "One-time code", csrf, email, send_errors, verify_errors, notice, form_error,
        signed_in => v.session.is_some(),
    };
    with_cookies(page(status, "otp.html", ctx), cookies)
}

pub async fn form(mut v: Visitor) -> Response {
    otp_page(&mut v, StatusCode::OK, "", FieldErrors::new(), FieldErrors::new(), None, None)
}

#[derive(Deserialize)]
pub struct OtpForm {
    csrf: Option<String>,
    email: Option<String>,
    otp: Option<String>,
}

fn limited(v: &mut Visitor, email: &str, retry_after: u64) -> Response {
    let text = format!("Too many requests. Please wait {retry_after} seconds and try again.");
    let r = otp_page(v, StatusCode::TOO_MANY_REQUESTS, email, FieldErrors::new(), FieldErrors::new(), None, Some(text));
    render::retry_after(r, Some(retry_after))
}

pub async fn send(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<OtpForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let email = f.email.unwrap_or_default();
    let mut errors = FieldErrors::new();
    match s.auth.send_otp(&email, &v.meta).await {
        Ok(_) => {
            let minutes = s.auth.policy().otp_ttl_secs / 60;
            let unit = if minutes == 1 { "minute" } else { "minutes" };
            let notice = format!("Code sent. It works for {minutes} {unit}; enter it below.");
            otp_page(&mut v, StatusCode::OK, &email, errors, FieldErrors::new(), Some(&notice), None)
        }
        Err(Error::Validation { .. }) => {
            errors.insert("email", "Please enter a valid email address.".into());
            otp_page(&mut v, StatusCode::BAD_REQUEST, &email, errors, FieldErrors::new(), None, None)
        }
        Err(Error::RateLimited { retry_after }) => limited(&mut v, &email, retry_after),
        Err(e) => render::failure(e),
    }
}

pub async fn verify(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<OtpForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let email = f.email.unwrap_or_default();
    let code = f.otp.unwrap_or_default();
    let mut errors = FieldErrors::new();
    let (status, text) = match s.auth.verify_otp(&email, code.trim(), &v.meta).await {
        Ok(()) => {
            let notice = "Code verified.";
            return otp_page(&mut v, StatusCode::OK, "", FieldErrors::new(), errors, Some(notice), None);
        }
        Err(Error::Validation { field: "email", .. }) => {
            errors.insert("verify_email", "Please enter a valid email address.".into());
            return otp_page(&mut v, StatusCode::BAD_REQUEST, &email, FieldErrors::new(), errors, None, None);
        }
        Err(Error::Validation { .. }) => (StatusCode::BAD_REQUEST, "The code is 6 digits.".to_string()),
        Err(Error::ChallengeNotFound) => {
            (StatusCode::NOT_FOUND, "No code is waiting for this address. Send one first.".into())
        }
        Err(Error::OtpExpired) => (StatusCode::BAD_REQUEST, "This code has expired. Send a new one.".into()),
        Err(Error::OtpExhausted) => {
            let minutes = (s.auth.policy().otp_ttl_secs + 59) / 60;
            (
                StatusCode::FORBIDDEN,
                format!(
                    "Too many wrong codes. You can send a new one once this one expires, within {minutes} minutes."
                ),
            )
        }
        Err(Error::OtpInvalid { attempts_left }) => {
            (StatusCode::UNAUTHORIZED, format!("That code is not right. {attempts_left} attempts left."))
        }
        Err(Error::RateLimited { retry_after }) => return limited(&mut v, &email, retry_after),
        Err(e) => return render::failure(e),
    };
    errors.insert("otp", text);
    otp_page(&mut v, status, &email, FieldErrors::new(), errors, None, None)
}
