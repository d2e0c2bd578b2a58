//! What the server-rendered browser pages need beyond the JSON flows: the
//! session behind a session cookie, and keyed MACs for the signed
//! pre-session cookie and the CSRF tokens.
//!
//! The session cookie holds the same `<session id>.<secret>` a refresh token
//! holds; the session store keeps only its hash. Browsers never rotate it
//! through `/v1/token/refresh`, so its hash stays the session's current one
//! until logout revokes the session. A cookie this service issued for the
//! session that is no longer its current secret was rotated by someone
//! else (a stolen cookie presented as a refresh token): as with a reused
//! refresh token, the whole session is revoked, so the thief's rotated
//! tokens die with it.

use super::Auth;
use super::session::Profile;
use crate::domain::{OtpCode, RequestMeta, Session, SessionId, User};
use crate::error::Error;
use crate::keys::token_hash;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefixed to every browser MAC domain, so these MACs can never equal a
/// code or address hash made with the same key.
const DOMAIN_PREFIX: &str = "latchkey/browser/v1/";

/// A browser's live session, as [`Auth::browser_session`] read it: what its
/// pages show, and the session and account records themselves, which the
/// flows the same request asks for (`Caller::Browser`) take as read
/// instead of reading them again.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    pub profile: Profile,
    pub(crate) session: Session,
    pub(crate) user: User,
}

impl Auth {
    /// The session behind a session cookie value `<session id>.<secret>`,
    /// if the secret was issued for the session under the current code key,
    /// the session exists, is neither revoked nor expired, and the secret is
    /// its current one (constant-time). Anything else is `Unauthorized`; a secret
    /// this service issued for the session that is no longer its current
    /// one also revokes the session (`refresh_reuse`).
    pub async fn browser_session(&self, cookie: &str, meta: &RequestMeta) -> Result<BrowserSession, Error> {
        let (sid, secret) = cookie.split_once('.').ok_or(Error::Unauthorized)?;
        let sid = SessionId::parse(sid).ok_or(Error::Unauthorized)?;
        // A secret this service did not issue for the session under its
        // current code key (forged, or made before the key was rotated) is
        // refused as refresh and logout refuse it: a cookie they would not
        // end must not keep a browser signed in.
        if secret.len() != super::session::REFRESH_SECRET_LEN || !self.issued_refresh_secret(&sid, secret) {
            return Err(Error::Unauthorized);
        }
        let now = self.now();
        let (s, u) = self.live_session(&sid, now).await?.ok_or(Error::Unauthorized)?;
        if !OtpCode::hashes_equal(&token_hash(secret), &s.refresh_hash) {
            tracing::warn!(user_id = %s.user_id, session_id = %sid, "session cookie rotated elsewhere: session revoked");
            self.ports.sessions.revoke_session(&sid, now, "refresh_reuse", meta).await?;
            return Err(Error::Unauthorized);
        }
        Ok(BrowserSession { profile: Profile::of(u.clone(), sid), session: s, user: u })
    }

    /// HMAC-SHA256 (hex) under the code HMAC key, in a browser-only domain.
    pub fn browser_mac(&self, domain: &str, parts: &[&str]) -> String {
        self.code_key.mac(&format!("{DOMAIN_PREFIX}{domain}"), parts)
    }

    /// 128 random bits from the secure RNG, URL-safe base64.
    pub fn browser_nonce(&self) -> String {
        let mut b = [0u8; 16];
        self.ports.rng.fill(&mut b);
        URL_SAFE_NO_PAD.encode(b)
    }
}
