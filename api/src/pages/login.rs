//! Signing in: password (by username or email), then the emailed code,
//! then the session cookie; and signing out.
//!
//! Cookie rotation: the password step replaces the pre-session with a new
//! one (new id, bound to the challenge), so a token or cookie planted
//! before cannot ride along; the code step drops the pre-session and sets a
//! brand-new session cookie, ending any session whose cookie it replaces.
//! A signed-in browser is not shown the password step. Logout revokes the
//! session in the store and clears the cookies.

use super::account::{FieldErrors, sentence};
use super::cookies::{self, Pre};
use super::extract::{PageForm, PageQuery};
use super::render::{self, page};
use super::visitor::Visitor;
use super::with_cookies;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use latchkey_core::Error;
use minijinja::context;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct LoginQuery {
    bye: Option<String>,
    deleted: Option<String>,
}

fn login_page(
    v: &mut Visitor,
    status: StatusCode,
    identifier: &str,
    errors: FieldErrors,
    form_error: Option<String>,
    notice: Option<&str>,
    unverified: bool,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let ctx = context! { title => "Sign in", csrf, identifier, errors, form_error, notice, unverified };
    with_cookies(page(status, "login.html", ctx), cookies)
}

pub async fn login_form(mut v: Visitor, PageQuery(q): PageQuery<LoginQuery>) -> Response {
    if v.session.is_some() {
        return Redirect::to("/dashboard").into_response();
    }
    let notice = match (q.bye, q.deleted) {
        (_, Some(_)) => Some("Your account is deleted. A notice is on its way to its address."),
        (Some(_), None) => Some("You are signed out."),
        (None, None) => None,
    };
    login_page(&mut v, StatusCode::OK, "", FieldErrors::new(), None, notice, false)
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    identifier: Option<String>,
    password: Option<String>,
}

pub async fn login(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<LoginForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    if v.session.is_some() {
        // As the form: signed in already. Signing in as someone else is
        // signing out first.
        return Redirect::to("/dashboard").into_response();
    }
    let identifier = f.identifier.unwrap_or_default();
    let password = f.password.unwrap_or_default();
    let mut errors = FieldErrors::new();
    let device = cookies::get(&v.headers, cookies::DEVICE);
    match s.auth.login(&identifier, password, device.as_deref(), &v.meta).await {
        Ok(started) => {
            let pre = Pre {
                id: s.auth.browser_nonce(),
                challenge: Some(started.challenge_id.to_string()),
                resend_at: s.auth.now() + started.resend_after,
            };
            let r = Redirect::to("/login/code").into_response();
            with_cookies(r, vec![pre.cookie(&s.auth), cookies::clear(cookies::CSRF)])
        }
        Err(Error::Validation { field, reason }) => {
            let field = if field == "password" { "password" } else { "identifier" };
            errors.insert(field, sentence(&reason));
            login_page(&mut v, StatusCode::BAD_REQUEST, &identifier, errors, None, None, false)
        }
        // An unconfirmed address answers as a wrong password does (else a
        // registration followed by a sign-in would tell whether the address
        // had an account): the page names both reasons.
        Err(Error::InvalidCredentials) => {
            let text = "The username, email address or password is not right, or the email address \
                        is not confirmed yet (open the link we mailed you)."
                .to_string();
            login_page(&mut v, StatusCode::UNAUTHORIZED, &identifier, errors, Some(text), None, true)
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Please wait {retry_after} seconds and try again.");
            let r = login_page(&mut v, StatusCode::TOO_MANY_REQUESTS, &identifier, errors, Some(text), None, false);
            render::retry_after(r, Some(retry_after))
        }
        Err(e) => render::failure(e),
    }
}

fn code_page(
    s: &AppState,
    v: &mut Visitor,
    status: StatusCode,
    errors: FieldErrors,
    form_error: Option<String>,
    notice: Option<&str>,
) -> Response {
    let wait = v.pre.as_ref().map(|p| (p.resend_at - s.auth.now()).max(0)).unwrap_or(0);
    let (csrf, cookies) = v.form_token();
    let ctx = context! { title => "Enter your code", csrf, errors, form_error, notice, wait };
    with_cookies(page(status, "code.html", ctx), cookies)
}

fn challenge(v: &Visitor) -> Option<String> {
    v.pre.as_ref().and_then(|p| p.challenge.clone())
}

#[derive(Deserialize)]
pub struct CodeQuery {
    resent: Option<String>,
}

pub async fn code_form(State(s): State<AppState>, mut v: Visitor, PageQuery(q): PageQuery<CodeQuery>) -> Response {
    if v.session.is_some() {
        return Redirect::to("/dashboard").into_response();
    }
    if challenge(&v).is_none() {
        return Redirect::to("/login").into_response();
    }
    let notice = q.resent.is_some().then_some("A new code is on its way. The old one no longer works.");
    code_page(&s, &mut v, StatusCode::OK, FieldErrors::new(), None, notice)
}

#[derive(Deserialize)]
pub struct CodeForm {
    csrf: Option<String>,
    code: Option<String>,
}

pub async fn code(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<CodeForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let Some(challenge_id) = challenge(&v) else { return Redirect::to("/login").into_response() };
    let code = f.code.unwrap_or_default();
    let mut errors = FieldErrors::new();
    match s.auth.verify_login_code(&challenge_id, code.trim(), &v.meta).await {
        Ok(pair) => {
            // The cookie below replaces a session this browser still holds
            // (a sign-in started before it signed in elsewhere): end that
            // one too, or it would stay usable with nothing to sign it out.
            if let Some((old, _)) = &v.session
                && let Err(e) = s.auth.logout(old, &v.meta).await
            {
                tracing::warn!(error = %e, "the session this sign-in replaces could not be ended");
            }
            let policy = s.auth.policy();
            let mut set = vec![
                cookies::set(cookies::SESSION, &pair.refresh_token, policy.refresh_ttl_secs, "Lax"),
                cookies::clear(cookies::PRE),
                cookies::clear(cookies::CSRF),
            ];
            if let Some(device) = &pair.device_token {
                set.push(cookies::device(device, &s.auth));
            }
            with_cookies(Redirect::to("/dashboard").into_response(), set)
        }
        Err(Error::Validation { reason, .. }) => {
            errors.insert("code", sentence(&reason));
            code_page(&s, &mut v, StatusCode::BAD_REQUEST, errors, None, None)
        }
        Err(Error::OtpInvalid { attempts_left }) => {
            let text = match attempts_left {
                1 => "That code is not right. 1 attempt left.".to_string(),
                n => format!("That code is not right. {n} attempts left."),
            };
            errors.insert("code", text);
            code_page(&s, &mut v, StatusCode::UNAUTHORIZED, errors, None, None)
        }
        Err(e @ (Error::OtpExpired | Error::OtpExhausted | Error::OtpUsed | Error::ChallengeNotFound)) => {
            let (title, text, link_text) = match e {
                Error::OtpExpired => ("Please sign in again", "This code has expired.", "Sign in again"),
                Error::OtpExhausted => ("Please sign in again", "Too many wrong codes.", "Sign in again"),
                // Most often the same form sent twice (a double click, a
                // reload): the first one signed this browser in, and
                // `/login` takes a signed-in browser to its dashboard.
                Error::OtpUsed => (
                    "This code was used",
                    "This code has been used already. If you entered it a moment ago, you are signed in.",
                    "Continue",
                ),
                _ => ("Please sign in again", "This sign-in attempt is over.", "Sign in again"),
            };
            let ctx = context! { title, text, link => "/login", link_text };
            with_cookies(page(StatusCode::UNAUTHORIZED, "message.html", ctx), vec![cookies::clear(cookies::PRE)])
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Please wait {retry_after} seconds and try again.");
            let r = code_page(&s, &mut v, StatusCode::TOO_MANY_REQUESTS, errors, Some(text), None);
            render::retry_after(r, Some(retry_after))
        }
        Err(e) => render::failure(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

pub async fn resend(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<CsrfOnly>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let (Some(challenge_id), Some(pre)) = (challenge(&v), v.pre.clone()) else {
        return Redirect::to("/login").into_response();
    };
    match s.auth.resend_login_code(&challenge_id, &v.meta).await {
        Ok(started) => {
            let pre = Pre {
                challenge: Some(started.challenge_id.to_string()),
                resend_at: s.auth.now() + started.resend_after,
                ..pre
            };
            with_cookies(Redirect::to("/login/code?resent=1").into_response(), vec![pre.cookie(&s.auth)])
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Please wait {retry_after} seconds before asking for a new code.");
            let r = code_page(&s, &mut v, StatusCode::TOO_MANY_REQUESTS, FieldErrors::new(), Some(text), None);
            render::retry_after(r, Some(retry_after))
        }
        // No more new codes for this sign-in while its last one still works
        // (the code step does not count resends): the page stays.
        Err(Error::ResendsSpent) => {
            let text = "No more new codes can be sent for this sign-in. Enter the last code we sent, or start again.";
            code_page(&s, &mut v, StatusCode::BAD_REQUEST, FieldErrors::new(), Some(text.into()), None)
        }
        Err(Error::OtpExpired | Error::OtpExhausted | Error::OtpUsed | Error::ChallengeNotFound) => {
            with_cookies(Redirect::to("/login").into_response(), vec![cookies::clear(cookies::PRE)])
        }
        Err(e) => render::failure(e),
    }
}

/// `POST /logout`: revokes the session server-side and clears the cookies.
pub async fn logout(State(s): State<AppState>, v: Visitor, PageForm(f): PageForm<CsrfOnly>) -> Response {
    let clear = vec![cookies::clear(cookies::SESSION), cookies::clear(cookies::PRE), cookies::clear(cookies::CSRF)];
    let Some((value, _)) = &v.session else {
        // Nothing to end: tidy the cookies, but only for this origin's own
        // forms (a cross-site POST arrives without the Lax session cookie).
        if !v.same_origin() {
            return v.csrf_refusal(None).unwrap_or_else(|| Redirect::to("/login").into_response());
        }
        return with_cookies(Redirect::to("/login").into_response(), clear);
    };
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    if let Err(e) = s.auth.logout(value, &v.meta).await {
        return render::failure(e);
    }
    let mut r = with_cookies(Redirect::to("/login?bye=1").into_response(), clear);
    r.headers_mut().insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    r
}
