//! A signed-in user's view of their own sessions (ASVS 5.0 7.5.2): the
//! live ones listed, and any one of them ended once the user has typed
//! their password again. "Sign out everywhere else" (`password.rs`) ends
//! all the others at once.

use super::Auth;
use super::browser::BrowserSession;
use crate::clock::Timestamp;
use crate::domain::{RequestMeta, Session, SessionId, User, UserId};
use crate::error::Error;

/// Who is asking, as the API or a page identified them.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// An API client: its access token, not yet checked.
    Bearer(&'a str),
    /// A browser whose session cookie `Auth::browser_session` checked,
    /// earlier in the same request: the session and account it read then
    /// are taken as they were, not read again.
    Browser(&'a BrowserSession),
}

/// One of a user's live sessions, as they are shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: SessionId,
    /// The session the list was asked through.
    pub current: bool,
    pub created_at: Timestamp,
    /// Its sign-in or its last refresh, whichever came last.
    pub last_active_at: Timestamp,
    pub expires_at: Timestamp,
    /// The client address and user agent of that request.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl SessionView {
    fn of(s: &Session, current: &SessionId) -> Self {
        SessionView {
            id: s.id,
            current: s.id == *current,
            created_at: s.created_at,
            last_active_at: s.refreshed_at,
            expires_at: s.expires_at,
            ip: s.meta.ip.clone(),
            user_agent: s.meta.user_agent.clone(),
        }
    }
}

/// How many sessions a list shows at most (the most recently active).
pub const MAX_LISTED: usize = 100;

impl Auth {
    /// The user and session `caller` names, not yet known to be live.
    pub(crate) fn caller_ids(&self, caller: Caller<'_>, now: Timestamp) -> Result<(UserId, SessionId), Error> {
        match caller {
            Caller::Bearer(token) => {
                let claims = self.tokens.verify(token, now)?;
                let uid = UserId::parse(&claims.sub).ok_or(Error::Unauthorized)?;
                let sid = SessionId::parse(&claims.sid).ok_or(Error::Unauthorized)?;
                Ok((uid, sid))
            }
            Caller::Browser(b) => Ok((b.profile.id, b.profile.session_id)),
        }
    }

    /// `caller`'s session and account, if the session is live and theirs.
    pub(super) async fn caller_session(&self, caller: Caller<'_>, now: Timestamp) -> Result<(Session, User), Error> {
        let (uid, sid) = self.caller_ids(caller, now)?;
        self.caller_records(caller, &uid, &sid, now).await
    }

    /// The session `sid` and account `uid` that `caller_ids` gave for
    /// `caller`: a browser's as its cookie's check read them, earlier in
    /// the same request; a bearer's read now, if the session is live and
    /// theirs.
    pub(super) async fn caller_records(
        &self,
        caller: Caller<'_>,
        uid: &UserId,
        sid: &SessionId,
        now: Timestamp,
    ) -> Result<(Session, User), Error> {
        match caller {
            Caller::Browser(b) => Ok((b.session.clone(), b.user.clone())),
            Caller::Bearer(_) => self.session_of(uid, sid, now).await,
        }
    }

    /// Session `sid` and its account, if the session is live and `uid`'s.
    pub(super) async fn session_of(
        &self,
        uid: &UserId,
        sid: &SessionId,
        now: Timestamp,
    ) -> Result<(Session, User), Error> {
        match self.live_session(sid, now).await? {
            Some((s, u)) if s.user_id == *uid => Ok((s, u)),
            _ => Err(Error::Unauthorized),
        }
    }

    /// The live sessions of the caller's account (not revoked, not over,
    /// not ended by a password change or reset), the most recently active
    /// first, at most [`MAX_LISTED`]; the caller's own is among them.
    /// A bearer's read counts against `RateLimits::activity`, as a read of
    /// the trail does (a query each); a page counts its reads itself.
    pub async fn sessions(&self, caller: Caller<'_>, meta: &RequestMeta) -> Result<Vec<SessionView>, Error> {
        let now = self.now();
        let (current, user) = self.caller_session(caller, now).await?;
        if let Caller::Bearer(_) = caller {
            self.limit_activity(&user.id, meta).await?;
        }
        let mut live: Vec<Session> = self
            .ports
            .sessions
            .live_sessions_of(&user.id, now)
            .await?
            .into_iter()
            .filter(|s| s.id != current.id && !user.ended_by_password_change(s))
            .collect();
        // The index behind the list can lag the session just made; the
        // caller's own, just read, is listed as it is now.
        live.push(current.clone());
        live.sort_by(|a, b| b.refreshed_at.cmp(&a.refreshed_at).then(b.created_at.cmp(&a.created_at)));
        let mut others = 0;
        live.retain(|s| {
            s.id == current.id || {
                others += 1;
                others < MAX_LISTED
            }
        });
        Ok(live.iter().map(|s| SessionView::of(s, &current.id)).collect())
    }

    /// Ends session `target` of the caller's account once `current` is the
    /// account's password (checked and limited as for a password change:
    /// a wrong one counts toward the lock). `SessionNotFound` when
    /// `target` is no live session of the account (unknown, another
    /// account's, already ended), said only after the password, so the
    /// answer tells nobody without it whether a session exists. Ending the
    /// caller's own session is signing out. The trail records
    /// `session_revoked`, reason `ended_by_user`.
    pub async fn end_session(
        &self,
        caller: Caller<'_>,
        target: &str,
        current: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let target = SessionId::parse(target);
        let (uid, sid, user) = self.check_current_password(caller, current, "session sign-out", meta).await?;
        let target = target.ok_or(Error::SessionNotFound)?;
        let now = self.now();
        match self.ports.sessions.session(&target).await? {
            Some(s) if s.user_id == uid && s.is_open_at(now) && !user.ended_by_password_change(&s) => {}
            _ => return Err(Error::SessionNotFound),
        }
        self.ports.sessions.revoke_session(&target, now, "ended_by_user", meta).await?;
        tracing::info!(user_id = %uid, session_id = %sid, ended = %target, "session ended by its user");
        Ok(())
    }
}
