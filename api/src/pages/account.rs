//! Creating an account: the register form, "check your mail" (with a
//! resend form), and the landing page of the verification link.
//!
//! The link's GET only shows a button; the token is consumed by the POST
//! that button sends. Mail scanners that prefetch links therefore neither
//! verify nor burn the token.

use super::extract::{LinkQuery, PageForm, PageQuery};
use super::render::{self, page};
use super::visitor::Visitor;
use super::with_cookies;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use latchkey_core::Error;
use minijinja::context;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Field errors for a form, keyed by input name.
pub(crate) type FieldErrors = BTreeMap<&'static str, String>;

/// A validation reason as a sentence.
pub(crate) fn sentence(reason: &str) -> String {
    let mut c = reason.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect::<String>() + ".",
        None => String::new(),
    }
}

#[derive(Deserialize, Default)]
pub struct RegisterForm {
    csrf: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

fn register_page(
    v: &mut Visitor,
    status: StatusCode,
    username: &str,
    email: &str,
    errors: FieldErrors,
    form_error: Option<String>,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let signed_in = v.session.is_some();
    let password_min = v.password_min_chars();
    let ctx =
        context! { title => "Create your account", csrf, username, email, errors, form_error, signed_in, password_min };
    with_cookies(page(status, "register.html", ctx), cookies)
}

pub async fn register_form(mut v: Visitor) -> Response {
    register_page(&mut v, StatusCode::OK, "", "", FieldErrors::new(), None)
}

pub async fn register(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<RegisterForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let username = f.username.unwrap_or_default();
    let email = f.email.unwrap_or_default();
    let password = f.password.unwrap_or_default();
    match s.auth.register(&username, &email, password, &v.meta).await {
        Ok(()) => Redirect::to("/register/sent").into_response(),
        Err(Error::Validation { field, reason }) => {
            let mut errors = FieldErrors::new();
            errors.insert(field, sentence(&reason));
            register_page(&mut v, StatusCode::BAD_REQUEST, &username, &email, errors, None)
        }
        Err(Error::UsernameTaken) => {
            let mut errors = FieldErrors::new();
            errors.insert("username", "This username is already taken. Please choose another.".into());
            register_page(&mut v, StatusCode::CONFLICT, &username, &email, errors, None)
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Please wait {retry_after} seconds and try again.");
            let r =
                register_page(&mut v, StatusCode::TOO_MANY_REQUESTS, &username, &email, FieldErrors::new(), Some(text));
            render::retry_after(r, Some(retry_after))
        }
        Err(e) => render::failure(e),
    }
}

fn check_mail_page(
    v: &mut Visitor,
    status: StatusCode,
    email: &str,
    errors: FieldErrors,
    notice: Option<&str>,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let signed_in = v.session.is_some();
    let ctx = context! { title => "Check your mail", csrf, email, errors, notice, signed_in };
    with_cookies(page(status, "check_mail.html", ctx), cookies)
}

pub async fn check_mail(mut v: Visitor) -> Response {
    check_mail_page(&mut v, StatusCode::OK, "", FieldErrors::new(), None)
}

#[derive(Deserialize)]
pub struct ResendForm {
    csrf: Option<String>,
    email: Option<String>,
}

pub async fn resend(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<ResendForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let email = f.email.unwrap_or_default();
    match s.auth.resend_verification(&email, &v.meta).await {
        Ok(()) => check_mail_page(
            &mut v,
            StatusCode::OK,
            &email,
            FieldErrors::new(),
            Some("If the address belongs to an unverified account, a new link is on its way."),
        ),
        Err(Error::Validation { reason, .. }) => {
            let mut errors = FieldErrors::new();
            errors.insert("email", sentence(&reason));
            check_mail_page(&mut v, StatusCode::BAD_REQUEST, &email, errors, None)
        }
        Err(e) => render::failure(e),
    }
}

/// `GET /verify-email?token=`: shows the button, changes nothing.
pub async fn verify_landing(mut v: Visitor, PageQuery(q): PageQuery<LinkQuery>) -> Response {
    let Some(token) = q.token(256) else {
        return render::message(
            StatusCode::BAD_REQUEST,
            "Link incomplete",
            "This verification link is incomplete. Open the link from the mail again, or ask for a new one.",
        );
    };
    let (csrf, cookies) = v.form_token();
    let ctx = context! { title => "Confirm your email address", csrf, token, signed_in => v.session.is_some() };
    with_cookies(page(StatusCode::OK, "verify.html", ctx), cookies)
}

#[derive(Deserialize)]
pub struct VerifyForm {
    csrf: Option<String>,
    token: Option<String>,
}

/// `POST /verify-email`: consumes the token.
pub async fn verify(State(s): State<AppState>, v: Visitor, PageForm(f): PageForm<VerifyForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let token = f.token.unwrap_or_default();
    match s.auth.verify_email(&token, &v.meta).await {
        Ok(()) => page(
            StatusCode::OK,
            "message.html",
            context! {
                title => "Email confirmed",
                text => "Your address is confirmed. You can sign in now.",
                link => "/login", link_text => "Sign in",
            },
        ),
        Err(e) => {
            let text = match &e {
                Error::VerificationExpired => "This link has expired. Ask for a new one below.",
                Error::VerificationUsed => {
                    "This link has already been used. If your address is confirmed, just sign in."
                }
                Error::RateLimited { .. } => "Too many attempts. Please wait a minute and try again.",
                Error::Unavailable(_) | Error::Internal(_) => "Something went wrong. Please try again.",
                _ => "This link is not valid. Open the link from the mail again, or ask for a new one.",
            };
            let (status, retry) = render::status_of(e);
            let ctx = context! {
                title => "Could not confirm", text,
                link => "/register/sent", link_text => "Ask for a new link",
            };
            render::retry_after(page(status, "message.html", ctx), retry)
        }
    }
}
