//! `SessionStore`: refresh-secret rotation (once per secret) and revocation.

use super::Subject;
use super::fixtures::{
    T0, expect_conflict, hash, meta, new_session, open_challenge, race, session_id, signed_in, single_winner,
    stored_session, stored_user,
};
use crate::domain::{RequestMeta, Session, User};
use crate::error::Conflict;

const RACERS: usize = 50;

pub async fn rotate_session_once_per_hash(s: &Subject) {
    let (_, session) = signed_in(s).await;

    let (h1, seal1, at1, m1) = (hash(), hash(), T0 + 100, meta());
    s.sessions
        .rotate_session(&session.id, &session.refresh_hash, &h1, &seal1, at1, &m1)
        .await
        .expect("rotate with the current hash");
    let rotated = Session {
        refresh_hash: h1.clone(),
        retry_seal: Some(seal1),
        refreshed_at: at1,
        generation: session.generation + 1,
        meta: m1,
        ..session.clone()
    };
    assert_eq!(
        stored_session(s, &session.id).await,
        rotated,
        "a rotate sets the hash, the seal, refreshed_at, generation + 1 and meta"
    );

    expect_conflict(
        s.sessions.rotate_session(&session.id, &session.refresh_hash, &hash(), &hash(), T0 + 200, &meta()).await,
        Conflict::Stale,
        "a second rotate with the old hash",
    );
    assert_eq!(stored_session(s, &session.id).await, rotated, "a refused rotate changed the session");

    let (h2, seal2, at2, m2) = (hash(), hash(), T0 + 300, meta());
    s.sessions.rotate_session(&session.id, &h1, &h2, &seal2, at2, &m2).await.expect("rotate with the new current hash");
    assert_eq!(
        stored_session(s, &session.id).await,
        Session {
            refresh_hash: h2,
            retry_seal: Some(seal2),
            refreshed_at: at2,
            generation: session.generation + 2,
            meta: m2,
            ..session.clone()
        }
    );

    let unknown = session_id();
    expect_conflict(
        s.sessions.rotate_session(&unknown, &session.refresh_hash, &hash(), &hash(), T0 + 400, &meta()).await,
        Conflict::Stale,
        "rotate of an unknown session",
    );
    assert_eq!(s.sessions.session(&unknown).await.expect("session"), None, "rotating an unknown session created it");
}

pub async fn rotate_session_has_one_winner(s: &Subject) {
    let (_, session) = signed_in(s).await;
    let new_hashes: Vec<String> = (0..RACERS).map(|_| hash()).collect();
    let seals: Vec<String> = (0..RACERS).map(|_| hash()).collect();
    let metas: Vec<RequestMeta> = (0..RACERS).map(|_| meta()).collect();
    let now = T0 + 100;
    let results = race(RACERS, |i| {
        let sessions = s.sessions.clone();
        let (id, old, new, m) = (session.id, session.refresh_hash.clone(), new_hashes[i].clone(), metas[i].clone());
        let seal = seals[i].clone();
        async move { sessions.rotate_session(&id, &old, &new, &seal, now, &m).await }
    })
    .await;
    let (w, (), losers) = single_winner(results, "concurrent rotations of one refresh secret");
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} rotating a rotated secret"));
    }
    assert_eq!(
        stored_session(s, &session.id).await,
        Session {
            refresh_hash: new_hashes[w].clone(),
            retry_seal: Some(seals[w].clone()),
            refreshed_at: now,
            generation: session.generation + 1,
            meta: metas[w].clone(),
            ..session
        },
        "the session holds the winner's hash, seal and meta, rotated once"
    );
}

pub async fn revoke_session_is_idempotent(s: &Subject) {
    let (_, session) = signed_in(s).await;

    let at = T0 + 100;
    let m = meta();
    s.sessions.revoke_session(&session.id, at, "logout", &m).await.expect("revoke");
    let revoked = Session { revoked_at: Some(at), revoke_reason: Some("logout".into()), meta: m, ..session.clone() };
    assert_eq!(stored_session(s, &session.id).await, revoked, "a revoke sets revoked_at = now, the reason and meta");

    s.sessions
        .revoke_session(&session.id, T0 + 200, "refresh_reuse", &meta())
        .await
        .expect("revoking a revoked session succeeds");
    assert_eq!(stored_session(s, &session.id).await, revoked, "a second revoke changed the session");

    let unknown = session_id();
    s.sessions.revoke_session(&unknown, T0, "logout", &meta()).await.expect("revoking an unknown session succeeds");
    assert_eq!(s.sessions.session(&unknown).await.expect("session"), None, "revoking an unknown session created it");
}

pub async fn rotate_session_refused_after_revoke(s: &Subject) {
    let (_, session) = signed_in(s).await;
    s.sessions.revoke_session(&session.id, T0 + 100, "logout", &meta()).await.expect("revoke");
    let revoked = stored_session(s, &session.id).await;

    expect_conflict(
        s.sessions.rotate_session(&session.id, &session.refresh_hash, &hash(), &hash(), T0 + 200, &meta()).await,
        Conflict::Stale,
        "rotate of a revoked session with its current hash",
    );
    assert_eq!(stored_session(s, &session.id).await, revoked, "a refused rotate changed the revoked session");
}

/// A retry answered within the grace is counted, with its request, only
/// while the session is live and still has the hash the answer gives.
pub async fn record_refresh_retry_counts_only_on_the_current_hash(s: &Subject) {
    let (_, session) = signed_in(s).await;
    let (m1, m2) = (meta(), meta());
    s.sessions.record_refresh_retry(&session.id, &session.refresh_hash, &m1).await.expect("record");
    s.sessions.record_refresh_retry(&session.id, &session.refresh_hash, &m2).await.expect("record");
    let counted = Session { retries_answered: 2, meta: m2, ..session.clone() };
    assert_eq!(stored_session(s, &session.id).await, counted, "two retries counted, the last one's meta kept");

    expect_conflict(
        s.sessions.record_refresh_retry(&session.id, &hash(), &meta()).await,
        Conflict::Stale,
        "a retry counted against a hash the session no longer has",
    );
    assert_eq!(stored_session(s, &session.id).await, counted, "a refused count changed the session");
    let unknown = session_id();
    expect_conflict(
        s.sessions.record_refresh_retry(&unknown, &session.refresh_hash, &meta()).await,
        Conflict::Stale,
        "a retry counted on an unknown session",
    );
    assert_eq!(s.sessions.session(&unknown).await.expect("session"), None, "counting created a session");

    s.sessions.revoke_session(&session.id, T0 + 100, "logout", &meta()).await.expect("revoke");
    let revoked = stored_session(s, &session.id).await;
    expect_conflict(
        s.sessions.record_refresh_retry(&session.id, &session.refresh_hash, &meta()).await,
        Conflict::Stale,
        "a retry counted on a revoked session",
    );
    assert_eq!(stored_session(s, &session.id).await, revoked, "a refused count changed the revoked session");
}

/// A password change sets the hash, `sessions_valid_after` and the next
/// `password_epoch`, and gives the session that made it that epoch, so it
/// alone outlives the change; it is refused for another user's or a
/// revoked session, or when the stored hash or epoch is no longer the one
/// the current password was checked against (a reset or another change
/// meanwhile), and then writes nothing.
pub async fn change_password_keeps_only_the_changing_session(s: &Subject) {
    let (user, mine) = signed_in(s).await;
    let (_, theirs) = signed_in(s).await;
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$changed";
    let now = T0 + 50;
    let before = stored_user(s, &user.id).await;
    expect_conflict(
        s.users.change_password(&user.id, &user.password_hash, 0, phc, &theirs.id, now, &meta()).await,
        Conflict::Stale,
        "a change through another user's session",
    );
    expect_conflict(
        s.users.change_password(&user.id, "$argon2id$reset-meanwhile", 0, phc, &mine.id, now, &meta()).await,
        Conflict::Stale,
        "a change checked against a hash replaced meanwhile",
    );
    expect_conflict(
        s.users.change_password(&user.id, &user.password_hash, 1, phc, &mine.id, now, &meta()).await,
        Conflict::Stale,
        "a change checked at another epoch",
    );
    assert_eq!(stored_session(s, &mine.id).await, mine, "a refused change wrote the session");
    assert_eq!(stored_user(s, &user.id).await, before, "a refused change wrote the user");
    assert_eq!(stored_session(s, &theirs.id).await, theirs, "a refused change wrote the session");

    let m = meta();
    s.users.change_password(&user.id, &user.password_hash, 0, phc, &mine.id, now, &m).await.expect("change_password");
    let after = stored_user(s, &user.id).await;
    let expected = User {
        password_hash: phc.into(),
        sessions_valid_after: Some(now),
        password_epoch: 1,
        meta: m.clone(),
        ..before
    };
    assert_eq!(after, expected);
    let kept = stored_session(s, &mine.id).await;
    assert_eq!(kept, Session { password_epoch: Some(1), meta: m, ..mine.clone() });
    assert!(!after.ended_by_password_change(&kept), "the changing session ended");
    let other = Session { id: session_id(), ..mine.clone() };
    assert!(after.ended_by_password_change(&other), "an older session survived");
    // By count, not by clock: a session of the old epoch ends whenever it
    // was made, and one of the new epoch lives whenever it was made.
    let late = Session { created_at: now + 9, ..other.clone() };
    assert!(after.ended_by_password_change(&late), "a later session of the old epoch survived");
    let early = Session { created_at: now - 9, password_epoch: Some(1), ..other.clone() };
    assert!(!after.ended_by_password_change(&early), "a session of the new epoch ended");
    // Sessions from before the epoch keep the time rule.
    let legacy = Session { password_epoch: None, ..other };
    assert!(after.ended_by_password_change(&legacy), "an older session without an epoch survived");
    assert!(
        !after.ended_by_password_change(&Session { created_at: now + 1, ..legacy }),
        "a later session without an epoch ended"
    );

    s.sessions.revoke_session(&mine.id, now + 1, "logout", &meta()).await.expect("revoke");
    expect_conflict(
        s.users.change_password(&user.id, phc, 1, "$argon2id$again", &mine.id, now + 2, &meta()).await,
        Conflict::Stale,
        "a change through a revoked session",
    );
}

/// Another session of `user`, through a challenge of its own, expiring at
/// `expires_at`.
async fn another_session(s: &Subject, user: &User, expires_at: i64) -> Session {
    let challenge = open_challenge(s, user.id).await;
    let session = Session { expires_at, ..new_session(user.id) };
    s.challenges
        .redeem_challenge(&challenge.id, &challenge.code_hash, T0 + 1, 5, u32::MAX, 0, &session, &meta())
        .await
        .expect("redeem_challenge");
    session
}

pub async fn live_sessions_of_lists_only_the_users_unrevoked_unexpired_sessions(s: &Subject) {
    let (user, first) = signed_in(s).await;
    let (_, someone_elses) = signed_in(s).await;
    let second = another_session(s, &user, T0 + 1_000).await;
    let revoked = another_session(s, &user, T0 + 1_000).await;
    s.sessions.revoke_session(&revoked.id, T0 + 2, "logout", &meta()).await.expect("revoke");
    let now = T0 + 10;
    let mut got = s.sessions.live_sessions_of(&user.id, now).await.expect("live_sessions_of");
    got.sort_by_key(|x| x.id.to_string());
    let mut want = vec![first.clone(), second.clone()];
    want.sort_by_key(|x| x.id.to_string());
    assert_eq!(got, want, "the user's live sessions, as stored (not another user's, not a revoked one)");
    assert!(!got.iter().any(|x| x.id == someone_elses.id));

    // At its `expires_at` a session is over.
    let got = s.sessions.live_sessions_of(&user.id, T0 + 1_000).await.expect("live_sessions_of");
    assert_eq!(got.iter().map(|x| x.id).collect::<Vec<_>>(), [first.id], "an expired session listed");
    let unknown = crate::domain::UserId::random(&crate::rng::OsSecureRng);
    assert!(s.sessions.live_sessions_of(&unknown, now).await.expect("live_sessions_of").is_empty());
}
