//! `ChallengeStore`: login challenges, their single redemption, the capped
//! failure count, and code resends.

use super::Subject;
use super::fixtures::{
    T0, challenge_id, expect_conflict, hash, meta, new_challenge, new_session, open_challenge, pending_challenge, race,
    registered, single_winner, stored_challenge, stored_user, user_id,
};
use crate::domain::{Challenge, Email, RequestMeta, Session, User};
use crate::error::Conflict;
use crate::ports::{CodeFailure, LockCheck};

/// The cap on wrong codes the cases pass as `max_failures`.
const MAX_FAILURES: u32 = 6;
const RACERS: usize = 50;
const COOLDOWN: i64 = 30;

pub async fn create_challenge_reads_back_and_resets_login_failures(s: &Subject) {
    let (user, _) = registered(s).await;
    for now in [T0, T0 + 1] {
        s.users.record_login_failure(&user.id, now, 5, 600, &meta()).await.expect("record_login_failure");
    }

    let kept = new_challenge(user.id);
    s.challenges
        .create_challenge(&kept, LockCheck::Unlocked { reset_failures: false }, &meta())
        .await
        .expect("create_challenge without reset");
    assert_eq!(s.challenges.challenge(&kept.id).await.expect("challenge"), Some(kept));
    assert_eq!(
        stored_user(s, &user.id).await.failed_logins,
        2,
        "create_challenge without reset_failures changed the count"
    );

    let reset = new_challenge(user.id);
    let m = meta();
    s.challenges
        .create_challenge(&reset, LockCheck::Unlocked { reset_failures: true }, &m)
        .await
        .expect("create_challenge with reset");
    assert_eq!(s.challenges.challenge(&reset.id).await.expect("challenge"), Some(reset));
    assert_eq!(
        stored_user(s, &user.id).await,
        User { meta: m, ..user },
        "create_challenge with reset_failures resets the count, sets meta and nothing else"
    );

    assert_eq!(s.challenges.challenge(&challenge_id()).await.expect("challenge of an unknown id"), None);
}

/// A lock set after the caller read the user (others' failures during its
/// password check) refuses a challenge that checks it, with or without the
/// reset, and is never cleared: nothing is written. A trusted device's
/// challenge leaves it to run out.
pub async fn create_challenge_never_clears_a_running_lock(s: &Subject) {
    let (user, _) = registered(s).await;
    let locked = s.users.record_login_failure(&user.id, T0, 1, 600, &meta()).await.expect("lock").user;
    assert_eq!(locked.locked_until, Some(T0 + 600));
    for reset_failures in [true, false] {
        let c = Challenge { created_at: T0 + 599, ..new_challenge(user.id) };
        expect_conflict(
            s.challenges.create_challenge(&c, LockCheck::Unlocked { reset_failures }, &meta()).await,
            Conflict::Stale,
            &format!("a challenge during a lock (reset_failures = {reset_failures})"),
        );
        assert_eq!(s.challenges.challenge(&c.id).await.expect("challenge"), None, "the refused challenge is readable");
        assert_eq!(stored_user(s, &user.id).await, locked, "the lock and its count are untouched");
    }
    let trusted = Challenge { created_at: T0 + 599, ..new_challenge(user.id) };
    s.challenges.create_challenge(&trusted, LockCheck::TrustedDevice, &meta()).await.expect("a trusted device");
    assert_eq!(s.challenges.challenge(&trusted.id).await.expect("challenge"), Some(trusted));
    assert_eq!(stored_user(s, &user.id).await, locked, "a trusted device's challenge left the lock alone");
    // Once it has run out, a challenge is stored again, and the reset clears it.
    let c = Challenge { created_at: T0 + 600, ..new_challenge(user.id) };
    s.challenges.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &meta()).await.expect("after");
    assert_eq!(stored_user(s, &user.id).await, locked, "no reset asked for");
    let c = Challenge { created_at: T0 + 600, ..new_challenge(user.id) };
    s.challenges.create_challenge(&c, LockCheck::Unlocked { reset_failures: true }, &meta()).await.expect("reset");
    assert_eq!(stored_user(s, &user.id).await.locked_until, None);
}

/// A challenge whose code goes to an address the account has left since
/// the caller read it (an index's copy behind an address change) is
/// refused for every kind of lock check, writing nothing (no reset of the
/// count either); at the account's address it is stored. For an account
/// that is gone, a trusted device's challenge is refused too.
pub async fn create_challenge_to_an_address_the_account_left_writes_nothing(s: &Subject) {
    let (user, v) = registered(s).await;
    s.users.consume_verification(&v, T0 + 1, &meta()).await.expect("verify");
    s.users.record_login_failure(&user.id, T0 + 1, 5, 600, &meta()).await.expect("a failure");
    let read = stored_user(s, &user.id).await;
    let moved = Email::parse("left-for-another@example.com").expect("email");
    s.users.change_email(&read, &moved, &meta()).await.expect("change_email");
    let now = stored_user(s, &user.id).await;
    let locks = [
        LockCheck::Unlocked { reset_failures: true },
        LockCheck::Unlocked { reset_failures: false },
        LockCheck::TrustedDevice,
    ];
    for lock in locks {
        let c = new_challenge(user.id);
        expect_conflict(
            s.challenges.create_challenge_to(&c, Some(&read.email), lock, &meta()).await,
            Conflict::Stale,
            &format!("the old address ({lock:?})"),
        );
        assert_eq!(s.challenges.challenge(&c.id).await.expect("challenge"), None, "{lock:?}: written");
        assert_eq!(stored_user(s, &user.id).await, now, "{lock:?}: the account changed");
    }
    for lock in locks {
        let c = new_challenge(user.id);
        s.challenges.create_challenge_to(&c, Some(&moved), lock, &meta()).await.expect("the account's address");
        assert_eq!(s.challenges.challenge(&c.id).await.expect("challenge"), Some(c));
    }
    let gone = stored_user(s, &user.id).await;
    s.users.delete_account(&gone, &meta()).await.expect("delete_account");
    let c = new_challenge(user.id);
    expect_conflict(
        s.challenges.create_challenge_to(&c, Some(&moved), LockCheck::TrustedDevice, &meta()).await,
        Conflict::Stale,
        "a trusted device's challenge for an account that is gone",
    );
    assert_eq!(s.challenges.challenge(&c.id).await.expect("challenge"), None);
}

/// `challenge` redeemed with `code_hash` into `session` a second after
/// `T0`, under the default caps and at the challenge's own epoch.
async fn redeem_at_t1(
    s: &Subject,
    challenge: &Challenge,
    code_hash: &str,
    session: &Session,
) -> crate::ports::StoreResult<()> {
    s.challenges
        .redeem_challenge(
            &challenge.id,
            code_hash,
            T0 + 1,
            MAX_FAILURES,
            u32::MAX,
            challenge.password_epoch,
            session,
            &meta(),
        )
        .await
}

pub async fn redeem_challenge_has_one_winner(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    // Two wrong codes first, so the reset of the account-wide count shows.
    for _ in 0..2 {
        s.challenges
            .record_challenge_failure(
                &challenge.id,
                &user.id,
                MAX_FAILURES,
                u32::MAX,
                challenge.password_epoch,
                &meta(),
            )
            .await
            .expect("record_challenge_failure");
    }
    assert_eq!(stored_user(s, &user.id).await.otp_failures, 2);

    let now = T0 + 1;
    let sessions: Vec<Session> = (0..RACERS).map(|_| new_session(user.id)).collect();
    let metas: Vec<RequestMeta> = (0..RACERS).map(|_| meta()).collect();
    let results =
        race(RACERS, |i| {
            let challenges = s.challenges.clone();
            let (id, code_hash, step, session, m) = (
                challenge.id,
                challenge.code_hash.clone(),
                challenge.password_epoch,
                sessions[i].clone(),
                metas[i].clone(),
            );
            async move {
                challenges.redeem_challenge(&id, &code_hash, now, MAX_FAILURES, u32::MAX, step, &session, &m).await
            }
        })
        .await;
    let (w, (), losers) = single_winner(results, "concurrent redeems of one challenge");
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} redeeming a used challenge"));
        assert_eq!(
            s.sessions.session(&sessions[i].id).await.expect("session"),
            None,
            "racer {i} lost but its session was created"
        );
    }
    assert_eq!(
        s.sessions.session(&sessions[w].id).await.expect("session"),
        Some(sessions[w].clone()),
        "the winner's session is readable"
    );
    assert_eq!(
        stored_challenge(s, &challenge.id).await,
        Challenge { used_at: Some(now), failures: 2, meta: metas[w].clone(), ..challenge.clone() },
        "a redeem sets used_at = now and the winner's meta and nothing else on the challenge"
    );
    assert_eq!(stored_user(s, &user.id).await.otp_failures, 0, "a redeem resets the user's otp_failures");

    expect_conflict(
        s.challenges
            .record_challenge_failure(
                &challenge.id,
                &user.id,
                MAX_FAILURES,
                u32::MAX,
                challenge.password_epoch,
                &meta(),
            )
            .await,
        Conflict::Stale,
        "a wrong code on a used challenge",
    );
    assert_eq!(stored_user(s, &user.id).await.otp_failures, 0, "a refused failure counted on the user");
}

pub async fn redeem_challenge_refused_at_expiry_boundary(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;

    let late = new_session(user.id);
    expect_conflict(
        s.challenges
            .redeem_challenge(
                &challenge.id,
                &challenge.code_hash,
                challenge.expires_at,
                MAX_FAILURES,
                u32::MAX,
                challenge.password_epoch,
                &late,
                &meta(),
            )
            .await,
        Conflict::Stale,
        "redeem at expires_at",
    );
    assert_eq!(s.sessions.session(&late.id).await.expect("session"), None, "an expired redeem created a session");
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge, "an expired redeem changed the challenge");

    let on_time = new_session(user.id);
    s.challenges
        .redeem_challenge(
            &challenge.id,
            &challenge.code_hash,
            challenge.expires_at - 1,
            MAX_FAILURES,
            u32::MAX,
            challenge.password_epoch,
            &on_time,
            &meta(),
        )
        .await
        .expect("redeem one second before expires_at");
    assert_eq!(s.sessions.session(&on_time.id).await.expect("session"), Some(on_time));
}

pub async fn redeem_challenge_refused_with_another_code(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;

    let wrong = new_session(user.id);
    expect_conflict(
        redeem_at_t1(s, &challenge, &hash(), &wrong).await,
        Conflict::Stale,
        "redeem with another code hash",
    );
    assert_eq!(s.sessions.session(&wrong.id).await.expect("session"), None);
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge, "a refused redeem changed the challenge");

    // The right code, but a session (or a wrong code) for another user.
    let others = new_session(user_id());
    expect_conflict(
        redeem_at_t1(s, &challenge, &challenge.code_hash, &others).await,
        Conflict::Stale,
        "redeem into another user's session",
    );
    assert_eq!(s.sessions.session(&others.id).await.expect("session"), None);
    expect_conflict(
        s.challenges
            .record_challenge_failure(
                &challenge.id,
                &others.user_id,
                MAX_FAILURES,
                u32::MAX,
                challenge.password_epoch,
                &meta(),
            )
            .await,
        Conflict::Stale,
        "a wrong code counted against another user",
    );
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge, "a refused redeem changed the challenge");

    let unknown = challenge_id();
    let stray = new_session(user.id);
    expect_conflict(
        s.challenges
            .redeem_challenge(&unknown, &challenge.code_hash, T0 + 1, MAX_FAILURES, u32::MAX, 0, &stray, &meta())
            .await,
        Conflict::Stale,
        "redeem of an unknown challenge",
    );
    assert_eq!(s.sessions.session(&stray.id).await.expect("session"), None);
    assert_eq!(
        s.challenges.challenge(&unknown).await.expect("challenge"),
        None,
        "redeeming an unknown challenge created it"
    );
}

pub async fn challenge_failures_capped_under_concurrency(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    let results = race(RACERS, |_| {
        let challenges = s.challenges.clone();
        let (id, user_id) = (challenge.id, user.id);
        async move { challenges.record_challenge_failure(&id, &user_id, MAX_FAILURES, u32::MAX, 0, &meta()).await }
    })
    .await;

    let mut counts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(f) => counts.push(f.failures),
            Err(e) => expect_conflict::<CodeFailure>(Err(e), Conflict::Stale, &format!("racer {i} over the cap")),
        }
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=MAX_FAILURES).collect::<Vec<_>>(),
        "the successful failures count 1..=max exactly once each"
    );
    assert_eq!(stored_challenge(s, &challenge.id).await.failures, MAX_FAILURES);
    assert_eq!(
        stored_user(s, &user.id).await.otp_failures,
        MAX_FAILURES,
        "the user counts exactly the accepted failures"
    );

    let session = new_session(user.id);
    expect_conflict(
        redeem_at_t1(s, &challenge, &challenge.code_hash, &session).await,
        Conflict::Stale,
        "redeem of an exhausted challenge with the right code",
    );
    assert_eq!(s.sessions.session(&session.id).await.expect("session"), None);

    let unknown = challenge_id();
    expect_conflict(
        s.challenges.record_challenge_failure(&unknown, &user.id, MAX_FAILURES, u32::MAX, 0, &meta()).await,
        Conflict::Stale,
        "a wrong code on an unknown challenge",
    );
    assert_eq!(
        s.challenges.challenge(&unknown).await.expect("challenge"),
        None,
        "a failure on an unknown challenge created it"
    );
    assert_eq!(stored_user(s, &user.id).await.otp_failures, MAX_FAILURES, "a refused failure counted on the user");
}

/// Of any number of concurrent attempts on a challenge, exactly the cap
/// succeed, each seeing a distinct count; none once it is used or expired,
/// and a resend is refused once they are spent.
pub async fn challenge_attempts_capped_under_concurrency(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    let results = race(RACERS, |_| {
        let challenges = s.challenges.clone();
        let id = challenge.id;
        async move { challenges.take_challenge_attempt(&id, T0 + 1, MAX_FAILURES).await }
    })
    .await;
    let mut counts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => {
                assert_eq!(Challenge { attempts: 0, ..c.clone() }, challenge, "an attempt changes nothing else");
                counts.push(c.attempts);
            }
            Err(e) => expect_conflict::<Challenge>(Err(e), Conflict::Stale, &format!("racer {i} over the cap")),
        }
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=MAX_FAILURES).collect::<Vec<_>>(), "the attempts count 1..=max exactly once each");
    assert_eq!(stored_challenge(s, &challenge.id).await, Challenge { attempts: MAX_FAILURES, ..challenge.clone() });
    expect_conflict(
        s.challenges
            .replace_challenge_code(&challenge.id, &hash(), T0 + 900, T0 + 300, COOLDOWN, 3, MAX_FAILURES, &meta())
            .await,
        Conflict::Stale,
        "a resend once the attempts are spent",
    );
    // The last attempt taken may still redeem: it was within the cap.
    let session = new_session(user.id);
    redeem_at_t1(s, &challenge, &challenge.code_hash, &session).await.expect("redeem after the last attempt");
    expect_conflict(
        s.challenges.take_challenge_attempt(&challenge.id, T0 + 2, MAX_FAILURES).await,
        Conflict::Stale,
        "an attempt on a used challenge",
    );

    let (_, fresh) = pending_challenge(s).await;
    expect_conflict(
        s.challenges.take_challenge_attempt(&fresh.id, fresh.expires_at, MAX_FAILURES).await,
        Conflict::Stale,
        "an attempt at expires_at",
    );
    assert_eq!(stored_challenge(s, &fresh.id).await, fresh, "a refused attempt changed the challenge");
    s.challenges.take_challenge_attempt(&fresh.id, fresh.expires_at - 1, MAX_FAILURES).await.expect("before expiry");
    expect_conflict(
        s.challenges.take_challenge_attempt(&challenge_id(), T0 + 1, MAX_FAILURES).await,
        Conflict::Stale,
        "an attempt on an unknown challenge",
    );
}

/// A password step older than `Challenge::MAX_AGE_SECS` gets no new code,
/// however its resends were spaced.
pub async fn replace_challenge_code_refused_past_max_age(s: &Subject) {
    let (_, challenge) = pending_challenge(s).await;
    let replace = |now| {
        let challenges = s.challenges.clone();
        let id = challenge.id;
        async move {
            challenges.replace_challenge_code(&id, &hash(), now + 300, now, COOLDOWN, 3, MAX_FAILURES, &meta()).await
        }
    };
    let last = T0 + Challenge::MAX_AGE_SECS;
    expect_conflict(replace(last).await, Conflict::Stale, "a resend at created_at + MAX_AGE_SECS");
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge, "a refused resend changed the challenge");
    replace(last - 1).await.expect("a resend one second earlier");
}

pub async fn replace_challenge_code_cooldown_boundary(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    let replace = |code_hash: String, now, m: RequestMeta| {
        let challenges = s.challenges.clone();
        let id = challenge.id;
        async move {
            challenges.replace_challenge_code(&id, &code_hash, now + 600, now, COOLDOWN, 3, MAX_FAILURES, &m).await
        }
    };

    let early = T0 + COOLDOWN - 1;
    expect_conflict(
        replace(hash(), early, meta()).await,
        Conflict::Stale,
        "a resend one second before the cooldown ends",
    );
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge, "a refused resend changed the challenge");

    let now = T0 + COOLDOWN;
    let new_code = hash();
    let m = meta();
    replace(new_code.clone(), now, m.clone()).await.expect("a resend exactly when the cooldown ends");
    assert_eq!(
        stored_challenge(s, &challenge.id).await,
        Challenge {
            code_hash: new_code.clone(),
            expires_at: now + 600,
            last_sent_at: now,
            resends: 1,
            meta: m,
            ..challenge.clone()
        },
        "a resend sets code_hash, expires_at, last_sent_at = now, resends + 1 and meta"
    );

    let old = new_session(user.id);
    expect_conflict(
        s.challenges
            .redeem_challenge(
                &challenge.id,
                &challenge.code_hash,
                now + 1,
                MAX_FAILURES,
                u32::MAX,
                challenge.password_epoch,
                &old,
                &meta(),
            )
            .await,
        Conflict::Stale,
        "redeem with the replaced code",
    );
    let fresh = new_session(user.id);
    s.challenges
        .redeem_challenge(
            &challenge.id,
            &new_code,
            now + 1,
            MAX_FAILURES,
            u32::MAX,
            challenge.password_epoch,
            &fresh,
            &meta(),
        )
        .await
        .expect("redeem with the new code");

    expect_conflict(
        replace(hash(), now + 10 * COOLDOWN, meta()).await,
        Conflict::Stale,
        "a resend for a used challenge",
    );
}

pub async fn replace_challenge_code_max_resends(s: &Subject) {
    const MAX_RESENDS: u32 = 2;
    let (_, challenge) = pending_challenge(s).await;
    let replace = |code_hash: String, now| {
        let challenges = s.challenges.clone();
        let id = challenge.id;
        async move {
            challenges
                .replace_challenge_code(&id, &code_hash, now + 600, now, COOLDOWN, MAX_RESENDS, MAX_FAILURES, &meta())
                .await
        }
    };

    for k in 1..=MAX_RESENDS {
        replace(hash(), T0 + i64::from(k) * COOLDOWN).await.expect("a resend within the budget");
        assert_eq!(stored_challenge(s, &challenge.id).await.resends, k);
    }
    let before = stored_challenge(s, &challenge.id).await;
    let now = T0 + i64::from(MAX_RESENDS + 1) * COOLDOWN;
    expect_conflict(replace(hash(), now).await, Conflict::Stale, "a resend over max_resends");
    assert_eq!(stored_challenge(s, &challenge.id).await, before, "a refused resend changed the challenge");
}

/// A resend whose mail was not queued is given back: `last_sent_at` and
/// `resends` as they were before it, its code and the failures counted on
/// it kept; only for the code and the send time given, and only once.
pub async fn give_back_resend_restores_the_cooldown_and_the_count(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    // The login's first code was never a resend: nothing to give back.
    expect_conflict(
        s.challenges.give_back_resend(&challenge.id, &challenge.code_hash, T0, T0 - COOLDOWN).await,
        Conflict::Stale,
        "a give-back for the login's own code",
    );
    assert_eq!(stored_challenge(s, &challenge.id).await, challenge);
    let now = T0 + COOLDOWN;
    let code = hash();
    s.challenges
        .replace_challenge_code(&challenge.id, &code, now + 600, now, COOLDOWN, 1, MAX_FAILURES, &meta())
        .await
        .expect("a resend");
    s.challenges
        .record_challenge_failure(&challenge.id, &user.id, MAX_FAILURES, u32::MAX, challenge.password_epoch, &meta())
        .await
        .expect("a wrong code on the new one");
    let sent = stored_challenge(s, &challenge.id).await;
    for (id, code_hash, at, what) in [
        (challenge.id, hash(), now, "a give-back for another code"),
        (challenge.id, code.clone(), now - 1, "a give-back for another send time"),
        (challenge_id(), code.clone(), now, "a give-back for an unknown challenge"),
    ] {
        expect_conflict(s.challenges.give_back_resend(&id, &code_hash, at, T0).await, Conflict::Stale, what);
    }
    assert_eq!(stored_challenge(s, &challenge.id).await, sent, "a refused give-back changed the challenge");

    s.challenges.give_back_resend(&challenge.id, &code, now, T0).await.expect("give_back_resend");
    let given_back = stored_challenge(s, &challenge.id).await;
    assert_eq!(
        given_back,
        Challenge { last_sent_at: T0, resends: 0, ..sent.clone() },
        "a give-back sets last_sent_at back and resends - 1, and nothing else"
    );
    assert_eq!(given_back.failures, 1);
    expect_conflict(
        s.challenges.give_back_resend(&challenge.id, &code, now, T0).await,
        Conflict::Stale,
        "the same give-back again",
    );
    // The one resend allowed is there again, at once.
    s.challenges
        .replace_challenge_code(&challenge.id, &hash(), now + 600, now, COOLDOWN, 1, MAX_FAILURES, &meta())
        .await
        .expect("the resend given back, made again");
}

pub async fn replace_challenge_code_keeps_failures(s: &Subject) {
    let (user, challenge) = pending_challenge(s).await;
    let m = meta();
    let fail = || {
        s.challenges.record_challenge_failure(
            &challenge.id,
            &user.id,
            MAX_FAILURES,
            u32::MAX,
            challenge.password_epoch,
            &m,
        )
    };
    let replace = |now| {
        let challenges = s.challenges.clone();
        let id = challenge.id;
        async move {
            challenges.replace_challenge_code(&id, &hash(), now + 600, now, COOLDOWN, 10, MAX_FAILURES, &meta()).await
        }
    };

    for _ in 0..2 {
        fail().await.expect("record_challenge_failure");
    }
    replace(T0 + COOLDOWN).await.expect("a resend after two wrong codes");
    assert_eq!(stored_challenge(s, &challenge.id).await.failures, 2, "a resend changed the failure count");
    assert_eq!(stored_user(s, &user.id).await.otp_failures, 2, "a resend changed the user's otp_failures");

    for n in 3..=MAX_FAILURES {
        assert_eq!(
            fail().await.expect("record_challenge_failure").failures,
            n,
            "the count goes on from before the resend"
        );
    }
    let before = stored_challenge(s, &challenge.id).await;
    expect_conflict(replace(T0 + 2 * COOLDOWN).await, Conflict::Stale, "a resend for an exhausted challenge");
    assert_eq!(stored_challenge(s, &challenge.id).await, before, "a refused resend changed the challenge");
}

/// A spent account budget stops every code: a wrong one is not counted and
/// a right one redeems nothing, even on a challenge opened before the budget
/// was spent; a right code within the budget resets it.
pub async fn the_account_budget_stops_every_code(s: &Subject) {
    const BUDGET: u32 = 2;
    let (user, first) = pending_challenge(s).await;
    let second = open_challenge(s, user.id).await;
    for n in 1..=BUDGET {
        let counted = s
            .challenges
            .record_challenge_failure(&first.id, &user.id, MAX_FAILURES, BUDGET, first.password_epoch, &meta())
            .await;
        assert_eq!(
            counted.expect("a wrong code within the budget"),
            CodeFailure { failures: n, spent_budget: n == BUDGET },
            "only the budget's last wrong code spends it"
        );
    }
    let spent = stored_user(s, &user.id).await;
    assert_eq!(spent.otp_failures, BUDGET);
    expect_conflict(
        s.challenges
            .record_challenge_failure(&second.id, &user.id, MAX_FAILURES, BUDGET, second.password_epoch, &meta())
            .await,
        Conflict::Stale,
        "a wrong code past the budget",
    );
    let session = new_session(user.id);
    expect_conflict(
        s.challenges
            .redeem_challenge(&second.id, &second.code_hash, T0 + 1, MAX_FAILURES, BUDGET, 0, &session, &meta())
            .await,
        Conflict::Stale,
        "a right code past the budget",
    );
    assert_eq!(stored_challenge(s, &second.id).await, second, "a refused code changed the challenge");
    assert_eq!(stored_user(s, &user.id).await, spent, "a refused code changed the user");
    assert_eq!(s.sessions.session(&session.id).await.expect("session"), None, "a refused code made a session");

    // One more in the budget and the right code redeems, resetting it.
    s.challenges
        .redeem_challenge(&second.id, &second.code_hash, T0 + 1, MAX_FAILURES, BUDGET + 1, 0, &session, &meta())
        .await
        .expect("a right code within the budget");
    assert_eq!(stored_user(s, &user.id).await.otp_failures, 0);
}

/// Of concurrent wrong codes on several challenges of one account, exactly
/// the budget's worth count, and exactly one of them says it spent the
/// budget (the flow locks the account and mails its owner on that one).
pub async fn one_wrong_code_spends_the_budget(s: &Subject) {
    const BUDGET: u32 = 8;
    const CHALLENGES: usize = 3;
    let (user, first) = pending_challenge(s).await;
    let mut ids = vec![first.id];
    for _ in 1..CHALLENGES {
        ids.push(open_challenge(s, user.id).await.id);
    }
    // Every challenge can take MAX_FAILURES, more than the budget between them.
    let tries = CHALLENGES * MAX_FAILURES as usize;
    let results = race(tries, |i| {
        let challenges = s.challenges.clone();
        let (id, user_id) = (ids[i % CHALLENGES], user.id);
        async move { challenges.record_challenge_failure(&id, &user_id, MAX_FAILURES, BUDGET, 0, &meta()).await }
    })
    .await;
    let mut counted = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(f) => counted.push(f),
            Err(e) => expect_conflict::<CodeFailure>(Err(e), Conflict::Stale, &format!("racer {i} past the budget")),
        }
    }
    assert_eq!(counted.len(), BUDGET as usize, "exactly the budget's worth of wrong codes count: {counted:?}");
    assert_eq!(
        counted.iter().filter(|f| f.spent_budget).count(),
        1,
        "exactly one wrong code spends the budget: {counted:?}"
    );
    assert_eq!(stored_user(s, &user.id).await.otp_failures, BUDGET);
    let mut per_challenge = 0;
    for id in &ids {
        per_challenge += stored_challenge(s, id).await.failures;
    }
    assert_eq!(per_challenge, BUDGET, "the challenges' counts add up to the account's");
}

/// A password changed (or reset) since a challenge's password step ends
/// that login: its right code redeems nothing and its wrong codes count
/// nowhere; a change before the step does not stand in the way. A change
/// and a reset each count one more `password_epoch`.
pub async fn a_password_change_since_the_password_step_stops_its_code(s: &Subject) {
    let (user, _) = signed_in_and_changed(s, T0 + 10).await;
    assert_eq!(user.password_epoch, 1, "a change counts");
    let c = open_challenge(s, user.id).await;
    let before = stored_user(s, &user.id).await;
    // The step saw epoch 0 (before the change); 2 is a value never stored.
    for seen in [0, 2] {
        expect_conflict(
            s.challenges.record_challenge_failure(&c.id, &user.id, MAX_FAILURES, u32::MAX, seen, &meta()).await,
            Conflict::Stale,
            &format!("a wrong code of a step that saw epoch {seen}"),
        );
        assert_eq!(stored_user(s, &user.id).await, before, "a refused wrong code counted on the user");
        let session = new_session(user.id);
        expect_conflict(
            s.challenges
                .redeem_challenge(&c.id, &c.code_hash, T0 + 11, MAX_FAILURES, u32::MAX, seen, &session, &meta())
                .await,
            Conflict::Stale,
            &format!("a right code of a step that saw epoch {seen}"),
        );
        assert_eq!(s.sessions.session(&session.id).await.expect("session"), None);
    }
    assert_eq!(stored_challenge(s, &c.id).await, c, "a refused code changed the challenge");
    s.challenges
        .record_challenge_failure(&c.id, &user.id, MAX_FAILURES, u32::MAX, 1, &meta())
        .await
        .expect("a wrong code of a step after the change");
    s.challenges
        .redeem_challenge(&c.id, &c.code_hash, T0 + 11, MAX_FAILURES, u32::MAX, 1, &new_session(user.id), &meta())
        .await
        .expect("a right code of a step after the change");
    s.users
        .reset_password(&user.id, super::fixtures::link(T0 + 11, 0), 1, "$argon2id$reset", T0 + 12, &meta())
        .await
        .expect("reset");
    assert_eq!(stored_user(s, &user.id).await.password_epoch, 2, "a reset counts");
}

/// A signed-in user whose password was changed at `at`.
async fn signed_in_and_changed(s: &Subject, at: crate::clock::Timestamp) -> (User, Session) {
    let (user, session) = super::fixtures::signed_in(s).await;
    s.users
        .change_password(
            &user.id,
            &user.password_hash,
            user.password_epoch,
            "$argon2id$changed",
            &session.id,
            at,
            &meta(),
        )
        .await
        .expect("change");
    (stored_user(s, &user.id).await, session)
}
