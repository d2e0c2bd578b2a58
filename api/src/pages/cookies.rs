//! The browser cookies. All are `__Host-` cookies: `Secure`, `Path=/`, no
//! `Domain`, so only this exact origin over HTTPS can set or read them.
//!
//! - [`SESSION`] holds `<session id>.<secret>` from `verify_login_code`
//!   (the refresh-token shape). It is opaque; the session store keeps only
//!   its hash, and logout revokes it server-side.
//!   **`SameSite=Lax`**, not Strict: a person arriving from a link in a mail
//!   (a cross-site top-level GET) should see their dashboard, not a sign-in
//!   form. Lax still withholds the cookie from cross-site POSTs, frames and
//!   subresources, GETs change nothing, and every POST also needs a CSRF
//!   token and a same-origin Origin / `Sec-Fetch-Site`.
//! - [`PRE`] is the pre-session: a random id (what anonymous forms' CSRF
//!   tokens are bound to) and, between the password and the code step, the
//!   login challenge id and when a resend is allowed. Signed with an HMAC
//!   key derived from the code HMAC key; replaced by a fresh id when the
//!   password is accepted and dropped when the session starts.
//! - [`CSRF`] is the double-submit half of the CSRF token (`SameSite=Lax`:
//!   with Strict, a page opened from another site arrived without it and
//!   set a new one, so the forms already open in other tabs failed).
//! - [`DEVICE`] is the device token of the last login finished in this
//!   browser (`SameSite=Strict`, 90 days; `flows::device`): with it, the
//!   owner can still sign in while someone else's guessing has the account
//!   locked. Logout leaves it: it names a device, not a session. A reset,
//!   a password change and a "sign out everywhere else" replace it (they
//!   end every older one).
//!
//! All are `HttpOnly`: no script on the pages reads them.

use latchkey_core::domain::OtpCode;
use latchkey_core::flows::Auth;

pub const SESSION: &str = "__Host-latchkey_session";
pub const PRE: &str = "__Host-latchkey_pre";
pub const CSRF: &str = "__Host-latchkey_csrf";
pub const DEVICE: &str = "__Host-latchkey_device";

/// How long a pre-session lives after the last form page shown with it: as
/// long as a login's code can be re-sent (`Challenge::MAX_AGE_SECS`; the
/// code itself lives 5 minutes).
pub const PRE_TTL_SECS: i64 = latchkey_core::domain::Challenge::MAX_AGE_SECS;

/// A `Set-Cookie` value with the `__Host-` attributes.
pub fn set(name: &str, value: &str, max_age: i64, same_site: &str) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite={same_site}")
}

/// The `Set-Cookie` value of [`DEVICE`] holding `token`, for as long as
/// the token lives.
pub fn device(token: &str, auth: &Auth) -> String {
    set(DEVICE, token, auth.policy().device_token_ttl_secs, "Strict")
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear(name: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax")
}

/// The first value of cookie `name` in the request's `Cookie` headers.
/// Read crumb by crumb from the bytes: a cookie of another site on the
/// same domain whose value is not ASCII (which the browser sends in the
/// same header) must not hide ours. Our values are ASCII.
pub fn get(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|kv| kv.iter().position(|&b| b == b'=').map(|i| (&kv[..i], &kv[i + 1..])))
        .find(|(k, _)| k.trim_ascii() == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v.trim_ascii()).ok())
        .filter(|v| !v.is_empty() && v.len() <= 512 && v.is_ascii())
        .map(str::to_string)
}

/// The signed pre-session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pre {
    /// 128 random bits, URL-safe base64.
    pub id: String,
    /// The login challenge waiting for its code.
    pub challenge: Option<String>,
    /// When a resend of the code is allowed (UTC seconds; 0 without one).
    pub resend_at: i64,
}

const PRE_MAC_DOMAIN: &str = "pre-session";

impl Pre {
    pub fn fresh(auth: &Auth) -> Self {
        Pre { id: auth.browser_nonce(), challenge: None, resend_at: 0 }
    }

    /// `<id>.<challenge|none>.<resend_at>.<mac>`.
    pub fn encode(&self, auth: &Auth) -> String {
        let challenge = self.challenge.as_deref().unwrap_or("none");
        let resend_at = self.resend_at.to_string();
        let mac = auth.browser_mac(PRE_MAC_DOMAIN, &[&self.id, challenge, &resend_at]);
        format!("{}.{challenge}.{resend_at}.{mac}", self.id)
    }

    /// The pre-session of a cookie value whose signature checks out.
    pub fn decode(auth: &Auth, value: &str) -> Option<Self> {
        let mut it = value.split('.');
        let (id, challenge, resend_at, mac) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || id.len() != 22 {
            return None;
        }
        let want = auth.browser_mac(PRE_MAC_DOMAIN, &[id, challenge, resend_at]);
        if !OtpCode::hashes_equal(&want, mac) {
            return None;
        }
        Some(Pre {
            id: id.to_string(),
            challenge: (challenge != "none").then(|| challenge.to_string()),
            resend_at: resend_at.parse().ok()?,
        })
    }

    pub fn cookie(&self, auth: &Auth) -> String {
        set(PRE, &self.encode(auth), PRE_TTL_SECS, "Lax")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header::COOKIE};

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_cookie_is_found_beside_one_that_is_not_ascii() {
        let h = headers(&[b"theme=caf\xc3\xa9; __Host-latchkey_csrf=abc.def; other=1"]);
        assert_eq!(get(&h, CSRF).as_deref(), Some("abc.def"));
        assert_eq!(get(&h, "theme"), None, "not ASCII: not one of ours");
        assert_eq!(get(&h, "other").as_deref(), Some("1"));
    }

    #[test]
    fn the_first_crumb_of_a_name_counts_across_headers_and_bad_ones_are_none() {
        let h = headers(&[b"a=1", b" __Host-latchkey_csrf = x ;__Host-latchkey_csrf=y"]);
        assert_eq!(get(&h, CSRF).as_deref(), Some("x"));
        assert_eq!(get(&headers(&[b"__Host-latchkey_csrf="]), CSRF), None, "empty");
        let long = format!("__Host-latchkey_csrf={}", "v".repeat(513));
        assert_eq!(get(&headers(&[long.as_bytes()]), CSRF), None, "too long");
        assert_eq!(get(&headers(&[b"__Host-latchkey_csrfx=1; latchkey_csrf=2"]), CSRF), None, "other names");
    }
}
