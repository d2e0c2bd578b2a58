//! The landing page of an address change link. Its GET only shows a
//! button; the POST that button sends checks and uses the token, so mail
//! scanners that prefetch links change nothing. The token travels in a
//! hidden field (every page is `Referrer-Policy: no-referrer`).

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

/// Longer than any address change token the service mails (an address of
/// 254 bytes makes one of about 500 characters).
const MAX_TOKEN_LEN: usize = 640;

/// `GET /email/confirm?token=`: shows the button, changes nothing.
pub async fn confirm_form(mut v: Visitor, PageQuery(q): PageQuery<LinkQuery>) -> Response {
    let Some(token) = q.token(MAX_TOKEN_LEN) else {
        return render::message(
            StatusCode::BAD_REQUEST,
            "Link incomplete",
            "This link is incomplete. Open the link from the mail again, or ask for a new one from your account's page.",
        );
    };
    let (csrf, cookies) = v.form_token();
    let ctx = context! { title => "Confirm your new address", csrf, token, signed_in => v.session.is_some() };
    with_cookies(page(StatusCode::OK, "email_confirm.html", ctx), cookies)
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    csrf: Option<String>,
    token: Option<String>,
}

/// `POST /email/confirm`: moves the account to the address the link was
/// mailed to.
pub async fn confirm(State(s): State<AppState>, v: Visitor, PageForm(f): PageForm<ConfirmForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let (link, link_text) = match v.session.is_some() {
        true => ("/dashboard", "Back to your account"),
        false => ("/login", "Sign in"),
    };
    match s.auth.confirm_email_change(&f.token.unwrap_or_default(), &v.meta).await {
        Ok(email) => {
            let text = format!(
                "Your account's address is now {}: sign-in codes and every mail of the account go there from now on.",
                email.as_str()
            );
            let ctx = context! { title => "Address changed", text, link, link_text, signed_in => v.session.is_some() };
            page(StatusCode::OK, "message.html", ctx)
        }
        Err(e) => {
            let text = match &e {
                Error::RateLimited { .. } => "Too many attempts. Please wait a minute and try again.",
                Error::Unavailable(_) | Error::Internal(_) => "Something went wrong. Please try again.",
                Error::EmailTaken => {
                    "This address got an account of its own since the link was sent, so the account keeps its address."
                }
                _ => {
                    "This link is not valid: it may have expired or been used already, or the account's address or \
                     password changed since it was sent. Ask for a new one from your account's page."
                }
            };
            let (status, retry) = render::status_of(e);
            let ctx = context! { title => "Could not change the address", text, link, link_text };
            render::retry_after(page(status, "message.html", ctx), retry)
        }
    }
}
