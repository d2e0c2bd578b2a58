//! Who is at the browser: their session (checked against the session
//! store), their signed pre-session, and what a form or a POST needs from
//! them.

use super::cookies::{self, Pre};
use super::{csrf, render};
use crate::extract::request_meta;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::Response;
use latchkey_core::Error;
use latchkey_core::domain::RequestMeta;
use latchkey_core::flows::{Auth, BrowserSession};

pub struct Visitor {
    /// The session cookie's value and its session, if the session is alive.
    pub session: Option<(String, BrowserSession)>,
    /// A session cookie was sent but is no longer good.
    pub stale_session: bool,
    pub pre: Option<Pre>,
    pub headers: HeaderMap,
    pub meta: RequestMeta,
    auth: Auth,
    /// This service's scheme (`AppState::scheme`).
    scheme: &'static str,
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let auth = state.auth.clone();
        let headers = parts.headers.clone();
        let meta = request_meta(parts, state.trust_forwarded_for);
        let mut stale_session = false;
        let session = match cookies::get(&headers, cookies::SESSION) {
            None => None,
            Some(value) => match auth.browser_session(&value, &meta).await {
                Ok(b) => Some((value, b)),
                Err(Error::Unauthorized) => {
                    stale_session = true;
                    None
                }
                Err(e) => return Err(render::failure(e)),
            },
        };
        let pre = cookies::get(&headers, cookies::PRE).and_then(|v| Pre::decode(&auth, &v));
        Ok(Visitor { session, stale_session, pre, headers, meta, auth, scheme: state.scheme })
    }
}

impl Visitor {
    /// The configured least length of a new password, for the forms' hints.
    pub fn password_min_chars(&self) -> usize {
        self.auth.policy().password.min_chars
    }

    /// Whether the request comes from this origin, as far as the browser
    /// says ([`csrf::same_origin`]).
    pub fn same_origin(&self) -> bool {
        csrf::same_origin(&self.headers, self.scheme)
    }

    /// What this visitor's CSRF tokens are bound to right now.
    pub fn binding(&self) -> Option<String> {
        match (&self.session, &self.pre) {
            (Some((_, b)), _) => Some(b.profile.session_id.to_string()),
            (None, Some(pre)) => Some(pre.id.clone()),
            (None, None) => None,
        }
    }

    /// A CSRF token for a form on the page being rendered, and the cookies
    /// to set with it (a fresh pre-session for a new visitor or the renewed
    /// one of a visitor not signed in, the CSRF cookie, the removal of a
    /// dead session cookie).
    pub fn form_token(&mut self) -> (String, Vec<String>) {
        let mut set = Vec::new();
        if self.stale_session {
            set.push(cookies::clear(cookies::SESSION));
            self.stale_session = false;
        }
        let binding = match self.binding() {
            Some(b) => {
                // A pre-session lives its time past the last form shown with
                // it, not past the first: sent again, as it is.
                if self.session.is_none()
                    && let Some(pre) = &self.pre
                {
                    set.push(pre.cookie(&self.auth));
                }
                b
            }
            None => {
                let pre = Pre::fresh(&self.auth);
                set.push(pre.cookie(&self.auth));
                let id = pre.id.clone();
                self.pre = Some(pre);
                id
            }
        };
        let cookie = cookies::get(&self.headers, cookies::CSRF);
        let (token, cookie) = csrf::token(&self.auth, &binding, cookie.as_deref());
        set.extend(cookie);
        (token, set)
    }

    /// The POST check: `None` when the token and the origin are good, else
    /// the 403 page to answer with (before any flow runs).
    pub fn csrf_refusal(&self, field: Option<&str>) -> Option<Response> {
        if csrf::check(&self.auth, &self.headers, self.scheme, self.binding().as_deref(), field) {
            None
        } else {
            tracing::warn!(request_id = ?self.meta.request_id, "browser POST refused: CSRF token or origin check failed");
            Some(render::page(
                StatusCode::FORBIDDEN,
                "forbidden.html",
                minijinja::context! { title => "Request refused" },
            ))
        }
    }
}
