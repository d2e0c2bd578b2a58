//! Server-rendered pages for people with nothing but a browser: register,
//! verify the address, sign in with password and emailed code, the
//! dashboard, logout, the standalone one-time-code page and the admin
//! stats. They work without JavaScript, call the same flows as the JSON API
//! (so the same rate limits and enumeration rules apply) and never change
//! anything on a GET.
//!
//! Security, in one place:
//! - [`cookies`]: the `__Host-` session, pre-session and CSRF cookies.
//! - [`csrf`]: a signed double-submit token on every POST plus an
//!   Origin / `Sec-Fetch-Site` check; a failure is a 403 before any flow runs.
//! - Every page keeps the default `Cache-Control: no-store` set by
//!   [`crate::headers`]; only the stylesheet is cacheable.

pub mod account;
pub mod admin;
pub mod cookies;
pub mod csrf;
pub mod dashboard;
pub mod email;
pub mod extract;
pub mod login;
pub mod otp;
pub mod render;
pub mod reset;
pub mod visitor;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The one stylesheet, embedded in the binary.
const STYLE_CSS: &str = include_str!("../../static/style.css");

/// `GET /static/style.css`.
pub async fn stylesheet() -> Response {
    let mut r = STYLE_CSS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    r
}

/// `GET /`: the dashboard for a signed-in visitor, else the sign-in page.
pub async fn home(v: visitor::Visitor) -> Response {
    if v.session.is_some() { Redirect::to("/dashboard") } else { Redirect::to("/login") }.into_response()
}

/// Appends `Set-Cookie` headers to a response.
pub(crate) fn with_cookies(mut r: Response, cookies: Vec<String>) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}
