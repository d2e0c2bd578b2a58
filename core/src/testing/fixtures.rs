//! Fresh records with random keys, the clock the cases reason in, and the
//! race helper.

use super::Subject;
use crate::clock::Timestamp;
use crate::domain::{
    Challenge, ChallengeId, Email, OtpRecord, RequestMeta, ResetLink, Session, SessionId, User, UserId, Username,
    VerificationRecord,
};
use crate::error::{Conflict, StoreError};
use crate::ports::{LimitKey, LockCheck, StoreResult};
use crate::rng::{OsSecureRng, SecureRng};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

/// Every record starts life at this instant; the cases count from it.
pub(super) const T0: Timestamp = 1_700_000_000;
pub(super) const DAY: i64 = 86_400;
/// How long a fresh challenge's or standalone code's code lives.
pub(super) const CODE_TTL: i64 = 600;

/// A random 256-bit hex string: a token, code or refresh-secret hash.
pub(super) fn hash() -> String {
    hex::encode(OsSecureRng.bytes32())
}

/// 48 random bits in hex: enough that no two cases' names ever meet.
fn tag() -> String {
    let mut b = [0u8; 6];
    OsSecureRng.fill(&mut b);
    hex::encode(b)
}

pub(super) fn username() -> Username {
    Username::parse(&format!("u{}", tag())).expect("a valid generated username")
}

pub(super) fn email() -> Email {
    Email::parse(&format!("e{}@example.test", tag())).expect("a valid generated email")
}

pub(super) fn user_id() -> UserId {
    UserId::random(&OsSecureRng)
}

pub(super) fn challenge_id() -> ChallengeId {
    ChallengeId::random(&OsSecureRng)
}

pub(super) fn session_id() -> SessionId {
    SessionId::random(&OsSecureRng)
}

/// A filled-in meta, so a store that drops it is caught on read-back.
pub(super) fn meta() -> RequestMeta {
    RequestMeta {
        request_id: Some(format!("req-{}", tag())),
        ip: Some("203.0.113.7".into()),
        user_agent: Some("latchkey-contract-suite".into()),
    }
}

/// A reset link made at `issued_at` when its account had `resets` resets.
pub(super) fn link(issued_at: Timestamp, resets: u32) -> ResetLink {
    ResetLink { issued_at, resets, email_changes: 0 }
}

/// A new unverified user, as registration builds it, with its first
/// verification token.
pub(super) fn user_with(username: Username, email: Email) -> (User, VerificationRecord) {
    let user = User {
        id: user_id(),
        username,
        email,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${}", tag()),
        verified: false,
        created_at: T0,
        failed_logins: 0,
        locked_until: None,
        otp_failures: 0,
        verification_sent_at: Some(T0),
        sessions_valid_after: None,
        password_reset_at: None,
        password_resets: 0,
        password_epoch: 0,
        email_changes: 0,
        meta: meta(),
    };
    let verification = verification_for(user.id, T0);
    (user, verification)
}

pub(super) fn new_user() -> (User, VerificationRecord) {
    user_with(username(), email())
}

/// A verification token issued at `at`, valid for a day.
pub(super) fn verification_for(user_id: UserId, at: Timestamp) -> VerificationRecord {
    VerificationRecord {
        token_hash: hash(),
        user_id,
        created_at: at,
        expires_at: at + DAY,
        used_at: None,
        meta: meta(),
    }
}

/// A user that exists in the store.
pub(super) async fn registered(s: &Subject) -> (User, VerificationRecord) {
    let (user, verification) = new_user();
    s.users.create_user(&user, &verification, i64::MIN).await.expect("create_user of a fresh user");
    (user, verification)
}

/// The stored user, which must exist.
pub(super) async fn stored_user(s: &Subject, id: &UserId) -> User {
    s.users.user_by_id(id).await.expect("user_by_id").expect("the user exists")
}

/// A challenge issued at `T0`, its code valid for `CODE_TTL`.
pub(super) fn new_challenge(user_id: UserId) -> Challenge {
    Challenge {
        id: challenge_id(),
        user_id,
        code_hash: hash(),
        created_at: T0,
        expires_at: T0 + CODE_TTL,
        last_sent_at: T0,
        resends: 0,
        failures: 0,
        attempts: 0,
        password_epoch: 0,
        used_at: None,
        meta: meta(),
    }
}

/// A stored user with a stored pending challenge.
pub(super) async fn pending_challenge(s: &Subject) -> (User, Challenge) {
    let (user, _) = registered(s).await;
    let challenge = open_challenge(s, user.id).await;
    (user, challenge)
}

/// A fresh challenge of `user_id`'s, stored as a password step makes it
/// (unlocked, failures kept).
pub(super) async fn open_challenge(s: &Subject, user_id: UserId) -> Challenge {
    let challenge = new_challenge(user_id);
    s.challenges
        .create_challenge(&challenge, LockCheck::Unlocked { reset_failures: false }, &meta())
        .await
        .expect("create_challenge");
    challenge
}

/// The stored challenge, which must exist.
pub(super) async fn stored_challenge(s: &Subject, id: &ChallengeId) -> Challenge {
    s.challenges.challenge(id).await.expect("challenge").expect("the challenge exists")
}

/// A session as a redeemed challenge creates it, at `T0`.
pub(super) fn new_session(user_id: UserId) -> Session {
    Session {
        id: session_id(),
        user_id,
        refresh_hash: hash(),
        created_at: T0,
        refreshed_at: T0,
        expires_at: T0 + 30 * DAY,
        generation: 0,
        revoked_at: None,
        revoke_reason: None,
        valid_from: None,
        password_epoch: Some(0),
        retry_seal: None,
        retries_answered: 0,
        meta: meta(),
    }
}

/// A stored user with a live session (sessions come only from redeemed
/// challenges).
pub(super) async fn signed_in(s: &Subject) -> (User, Session) {
    let (user, challenge) = pending_challenge(s).await;
    let session = new_session(user.id);
    s.challenges
        .redeem_challenge(
            &challenge.id,
            &challenge.code_hash,
            T0 + 1,
            5,
            u32::MAX,
            challenge.password_epoch,
            &session,
            &meta(),
        )
        .await
        .expect("redeem_challenge of a fresh challenge");
    (user, session)
}

/// The stored session, which must exist.
pub(super) async fn stored_session(s: &Subject, id: &SessionId) -> Session {
    s.sessions.session(id).await.expect("session").expect("the session exists")
}

/// A standalone code sent at `T0` to a fresh address.
pub(super) fn new_otp() -> OtpRecord {
    OtpRecord {
        address_hash: hash(),
        code_hash: hash(),
        created_at: T0,
        expires_at: T0 + CODE_TTL,
        last_sent_at: T0,
        failures: 0,
        attempts: 0,
        budget_failures: 0,
        used_at: None,
        meta: meta(),
    }
}

/// A stored standalone code.
pub(super) async fn sent_otp(s: &Subject) -> OtpRecord {
    let otp = new_otp();
    s.otps.put_otp(&otp, None).await.expect("put_otp of a fresh address");
    otp
}

/// The stored standalone code, which must exist.
pub(super) async fn stored_otp(s: &Subject, address_hash: &str) -> OtpRecord {
    s.otps.otp(address_hash).await.expect("otp").expect("the code exists")
}

pub(super) fn limit_key(limit: u32, window_secs: i64) -> LimitKey {
    LimitKey { key: format!("contract:{}", tag()), limit, window_secs }
}

/// Panics unless `result` is exactly `Conflict(want)`.
#[track_caller]
pub(super) fn expect_conflict<T: Debug>(result: StoreResult<T>, want: Conflict, what: &str) {
    match result {
        Err(StoreError::Conflict(got)) if got == want => {}
        other => panic!("{what}: expected Err(Conflict({want:?})), got {other:?}"),
    }
}

/// Runs `n` attempts as spawned tasks released together by a barrier, and
/// returns their results in the order of `i`.
pub(super) async fn race<T, F, Fut>(n: usize, mut attempt: F) -> Vec<T>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let attempt = attempt(i);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                attempt.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("a racing call panicked"));
    }
    results
}

/// Splits race results into the index of the single winner (panicking
/// unless there is exactly one) and the losers' results.
#[track_caller]
pub(super) fn single_winner<T: Debug>(
    results: Vec<StoreResult<T>>,
    what: &str,
) -> (usize, T, Vec<(usize, StoreResult<T>)>) {
    let summary = format!("{results:?}");
    let mut winner = None;
    let mut losers = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => match winner {
                None => winner = Some((i, v)),
                Some(_) => panic!("{what}: more than one call succeeded: {summary}"),
            },
            Err(e) => losers.push((i, Err(e))),
        }
    }
    let Some((i, v)) = winner else { panic!("{what}: no call succeeded: {summary}") };
    (i, v, losers)
}
