//! The shape of the tokens this service signs and never stores (device
//! tokens, password reset and address change links): `<nonce>.<user id>.<issued>.<tag>`. The
//! nonce is 128 random bits in URL-safe base64, `issued` a string the kind
//! of token gives meaning to, and the tag a hex HMAC-SHA256 under the code
//! key over the other three, in a domain of its own per kind (so a token of
//! one kind is never taken for the other), cut to the kind's length.
//! A mailed link is opened by one rule for every kind ([`Auth::open_link`]).

use super::Auth;
use crate::domain::{OtpCode, RequestMeta, User, UserId};
use crate::error::Error;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Characters of the nonce (16 bytes, URL-safe base64).
const NONCE_LEN: usize = 22;

/// Whether a token issued at `issued_at` is within its `life` (seconds) at
/// `now`: from its issue, up to but not at its end.
pub(crate) fn alive(issued_at: crate::clock::Timestamp, now: crate::clock::Timestamp, life: i64) -> bool {
    issued_at <= now && now < issued_at.saturating_add(life)
}

/// What a mailed link (a password reset, an address change) says once its
/// `issued` part is read.
pub(crate) trait MailedLink {
    fn issued_at(&self) -> crate::clock::Timestamp;
    /// Whether `user` is still as it was when the link was made.
    fn current_for(&self, user: &User) -> bool;
}

/// One kind of mailed link: how [`Auth::open_link`] reads and refuses it.
pub(crate) struct MailedLinkKind<T> {
    pub token: &'static TokenKind,
    pub parse: fn(&str) -> Option<T>,
    /// The scope of the client's limit on tries (`<scope>:ip:<client>`).
    pub scope: &'static str,
    /// What the log calls it ("<name> link refused").
    pub name: &'static str,
    /// Why a link the account has moved on from is refused, in the log.
    pub stale: &'static str,
    pub refusal: fn() -> Error,
}

impl<T> MailedLinkKind<T> {
    /// The refusal of a link of this kind, logged with `why`.
    pub fn refuse(&self, why: &str, meta: &RequestMeta) -> Error {
        tracing::info!(reason = why, ip = meta.ip.as_deref().unwrap_or("-"), "{} link refused", self.name);
        (self.refusal)()
    }
}

/// One kind of signed token.
pub(crate) struct TokenKind {
    /// The HMAC domain.
    pub domain: &'static str,
    /// Hex characters of the tag kept (at most 64).
    pub tag_len: usize,
    /// Longer than any token of this kind.
    pub max_len: usize,
}

/// The signed parts of a token whose tag checks out.
pub(crate) struct Signed<'a> {
    pub nonce: &'a str,
    pub user: &'a str,
    pub issued: &'a str,
}

impl Auth {
    /// A new token of `kind` for `user_id`, with `issued`.
    pub(crate) fn sign_token(&self, kind: &TokenKind, user_id: &UserId, issued: &str) -> String {
        let mut nonce = [0u8; 16];
        self.ports.rng.fill(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let user = user_id.to_string();
        let tag = self.token_tag(kind, &nonce, &user, issued);
        format!("{nonce}.{user}.{issued}.{tag}")
    }

    /// The parts of `token` if it has the shape of `kind` and its tag is the
    /// one this service makes (compared in constant time); else `None`.
    pub(crate) fn signed_parts<'a>(&self, kind: &TokenKind, token: &'a str) -> Option<Signed<'a>> {
        if token.len() > kind.max_len || !token.is_ascii() {
            return None;
        }
        let mut parts = token.split('.');
        let (nonce, user, issued, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.len() != NONCE_LEN || tag.len() != kind.tag_len {
            return None;
        }
        OtpCode::hashes_equal(&self.token_tag(kind, nonce, user, issued), tag).then_some(Signed { nonce, user, issued })
    }

    /// The account and the `issued` part (as `parse` reads it) of a mailed
    /// link's `token` of `kind`, or why it is refused: its tag first, so
    /// nothing of a forged token is read.
    pub(crate) fn link_parts<T>(
        &self,
        kind: &TokenKind,
        token: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<(UserId, T), &'static str> {
        let signed = self.signed_parts(kind, token).ok_or("malformed or forged")?;
        match (UserId::parse(signed.user), parse(signed.issued)) {
            (Some(user_id), Some(issued)) => Ok((user_id, issued)),
            _ => Err("malformed"),
        }
    }

    /// The account a mailed link's `token` names and the link itself, if
    /// it opens: within the client's limit on link tries, signed, within
    /// `life` seconds of its issue, for an account that is still as it was
    /// when the link was made. Anything else is `kind`'s refusal, logged
    /// with its reason.
    pub(crate) async fn open_link<T: MailedLink>(
        &self,
        kind: &MailedLinkKind<T>,
        life: i64,
        token: &str,
        meta: &RequestMeta,
    ) -> Result<(User, T), Error> {
        let l = &self.policy.limits;
        self.limit(&[l.code_verify_ip.key(format!("{}:ip:{}", kind.scope, super::client_key(meta)))]).await?;
        let now = self.now();
        let refused = |why: &str| kind.refuse(why, meta);
        let (user_id, link) = self.link_parts(kind.token, token, kind.parse).map_err(refused)?;
        if !alive(link.issued_at(), now, life) {
            return Err(refused("expired"));
        }
        let user = self.ports.users.user_by_id(&user_id).await?.ok_or_else(|| refused("no such account"))?;
        if !link.current_for(&user) {
            return Err(refused(kind.stale));
        }
        Ok((user, link))
    }

    fn token_tag(&self, kind: &TokenKind, nonce: &str, user: &str, issued: &str) -> String {
        let mut tag = self.code_key.mac(kind.domain, &[nonce, user, issued]);
        tag.truncate(kind.tag_len);
        tag
    }
}
