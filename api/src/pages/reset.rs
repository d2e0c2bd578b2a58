//! A forgotten password: the form that asks for a link, and the link's
//! landing page with the new-password form.
//!
//! The link's GET only shows the form; the token is checked and used by the
//! POST that form sends, so mail scanners that prefetch links change
//! nothing. The token travels in a hidden field, and every page is served
//! with `Referrer-Policy: no-referrer`, so it never leaves in a Referer.

use super::account::{FieldErrors, sentence};
use super::cookies;
use super::extract::{LinkQuery, PageForm, PageQuery};
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

/// Longer than any token the service mails.
const MAX_TOKEN_LEN: usize = 256;

fn forgot_page(
    v: &mut Visitor,
    status: StatusCode,
    email: &str,
    errors: FieldErrors,
    notice: Option<&str>,
    form_error: Option<String>,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let signed_in = v.session.is_some();
    let ctx = context! { title => "Forgot your password?", csrf, email, errors, notice, form_error, signed_in };
    with_cookies(page(status, "forgot.html", ctx), cookies)
}

/// `GET /password/forgot`.
pub async fn forgot_form(mut v: Visitor) -> Response {
    forgot_page(&mut v, StatusCode::OK, "", FieldErrors::new(), None, None)
}

#[derive(Deserialize)]
pub struct ForgotForm {
    csrf: Option<String>,
    email: Option<String>,
}

/// `POST /password/forgot`: the same answer whether or not the address
/// has an account.
pub async fn forgot(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<ForgotForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let email = f.email.unwrap_or_default();
    match s.auth.request_password_reset(&email, &v.meta).await {
        Ok(()) => forgot_page(
            &mut v,
            StatusCode::OK,
            &email,
            FieldErrors::new(),
            Some("If the address belongs to a verified account, a link to choose a new password is on its way."),
            None,
        ),
        Err(Error::Validation { reason, .. }) => {
            let mut errors = FieldErrors::new();
            errors.insert("email", sentence(&reason));
            forgot_page(&mut v, StatusCode::BAD_REQUEST, &email, errors, None, None)
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many requests. Please wait {retry_after} seconds and try again.");
            let r = forgot_page(&mut v, StatusCode::TOO_MANY_REQUESTS, &email, FieldErrors::new(), None, Some(text));
            render::retry_after(r, Some(retry_after))
        }
        Err(e) => render::failure(e),
    }
}

fn reset_page(v: &mut Visitor, status: StatusCode, token: &str, errors: FieldErrors) -> Response {
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => "Choose a new password", csrf, token, errors, signed_in => v.session.is_some(),
        password_min => v.password_min_chars(),
    };
    with_cookies(page(status, "reset.html", ctx), cookies)
}

/// `GET /password/reset?token=`: shows the form, changes nothing.
pub async fn reset_form(mut v: Visitor, PageQuery(q): PageQuery<LinkQuery>) -> Response {
    let Some(token) = q.token(MAX_TOKEN_LEN) else {
        return render::message(
            StatusCode::BAD_REQUEST,
            "Link incomplete",
            "This link is incomplete. Open the link from the mail again, or ask for a new one.",
        );
    };
    reset_page(&mut v, StatusCode::OK, &token, FieldErrors::new())
}

#[derive(Deserialize)]
pub struct ResetForm {
    csrf: Option<String>,
    token: Option<String>,
    new_password: Option<String>,
}

/// `POST /password/reset`: sets the new password.
pub async fn reset(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<ResetForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let token = f.token.unwrap_or_default();
    match s.auth.reset_password(&token, f.new_password.unwrap_or_default(), &v.meta).await {
        // This browser proved the mailbox: its device cookie lets it past a
        // lock someone else keeps up (the reset ended every older one).
        Ok(device) => with_cookies(
            page(
                StatusCode::OK,
                "message.html",
                context! {
                    title => "Password changed",
                    text => "Your new password is set, and every session of your account was signed out. Sign in with it now.",
                    link => "/login", link_text => "Sign in",
                },
            ),
            vec![cookies::device(&device, &s.auth)],
        ),
        // The link is still good: say what is wrong with the password.
        Err(Error::Validation { reason, .. }) if token.len() <= MAX_TOKEN_LEN => {
            let mut errors = FieldErrors::new();
            errors.insert("new_password", sentence(&reason));
            reset_page(&mut v, StatusCode::BAD_REQUEST, &token, errors)
        }
        Err(e) => {
            let text = match &e {
                Error::RateLimited { .. } => "Too many attempts. Please wait a minute and try again.",
                Error::Unavailable(_) | Error::Internal(_) => "Something went wrong. Please try again.",
                _ => "This link is not valid: it may have expired or been used already. Ask for a new one.",
            };
            let (status, retry) = render::status_of(e);
            let ctx = context! {
                title => "Could not set the password", text,
                link => "/password/forgot", link_text => "Ask for a new link",
            };
            render::retry_after(page(status, "message.html", ctx), retry)
        }
    }
}
