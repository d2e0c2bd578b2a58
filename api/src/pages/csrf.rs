//! CSRF protection for every POST: a signed double-submit token plus an
//! origin check.
//!
//! The token is `<nonce>.<HMAC(binding id, nonce)>`, where the binding id is
//! the session id for a signed-in visitor and the pre-session id otherwise.
//! It goes in a hidden `csrf` field and in the [`super::cookies::CSRF`]
//! cookie; a POST passes when the field equals the cookie and the MAC
//! matches the visitor's current binding. Because the binding changes at
//! login and at the code step, old tokens die with the old (pre-)session.
//!
//! On top, a browser that says where the request came from must say it came
//! from this origin: `Sec-Fetch-Site` must be `same-origin`, or without it
//! the `Origin` must be this service's scheme and this request's host.
//! Clients that send neither, or `Origin: null` (see [`same_origin`]), still
//! need the token.

use super::cookies;
use axum::http::{HeaderMap, header};
use latchkey_core::domain::OtpCode;
use latchkey_core::flows::Auth;

const DOMAIN: &str = "csrf";

fn mac(auth: &Auth, binding: &str, nonce: &str) -> String {
    auth.browser_mac(DOMAIN, &[binding, nonce])
}

/// Whether `token` is a valid token for `binding`.
pub fn valid(auth: &Auth, binding: &str, token: &str) -> bool {
    token.split_once('.').is_some_and(|(nonce, m)| OtpCode::hashes_equal(&mac(auth, binding, nonce), m))
}

/// The token a form should carry, and the cookie to set when the visitor's
/// cookie does not already hold a valid one.
pub fn token(auth: &Auth, binding: &str, cookie: Option<&str>) -> (String, Option<String>) {
    if let Some(c) = cookie.filter(|c| valid(auth, binding, c)) {
        return (c.to_string(), None);
    }
    let nonce = auth.browser_nonce();
    let t = format!("{nonce}.{}", mac(auth, binding, &nonce));
    // Lax, like the session and pre-session cookies: a page opened from
    // another site (a cross-site top-level GET) then still sends it, and
    // does not replace the token the forms open in other tabs carry. No
    // cross-site POST carries it either way.
    let set = cookies::set(cookies::CSRF, &t, cookies::PRE_TTL_SECS.max(auth.policy().refresh_ttl_secs), "Lax");
    (t, Some(set))
}

/// Whether the request comes from this origin, as far as the browser says.
/// `Origin: null` says nothing: a browser without `Sec-Fetch-Site` sends it
/// on a form post from our own pages, which are served with
/// `Referrer-Policy: no-referrer` (Fetch's rule for that policy), so only
/// the token decides then, as for a client that sends no `Origin`.
///
/// `scheme` is this service's (`https`, or `http` for a local host): the
/// Host header names no scheme, and a page served over plain HTTP on the
/// same host is another origin.
pub fn same_origin(headers: &HeaderMap, scheme: &str) -> bool {
    let text = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site.eq_ignore_ascii_case("same-origin");
    }
    match text(header::ORIGIN.as_str()) {
        None | Some("null") => true,
        Some(origin) => {
            let host = text(header::HOST.as_str()).unwrap_or("");
            let Some((origin_scheme, origin_host)) = origin.split_once("://") else { return false };
            !host.is_empty() && origin_scheme.eq_ignore_ascii_case(scheme) && origin_host.eq_ignore_ascii_case(host)
        }
    }
}

/// The whole POST check.
pub fn check(auth: &Auth, headers: &HeaderMap, scheme: &str, binding: Option<&str>, field: Option<&str>) -> bool {
    let cookie = cookies::get(headers, cookies::CSRF);
    let (Some(binding), Some(field), Some(cookie)) = (binding, field, cookie) else { return false };
    same_origin(headers, scheme) && OtpCode::hashes_equal(field, &cookie) && valid(auth, binding, field)
}
