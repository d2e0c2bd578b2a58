//! `OtpStore`: standalone codes, their optimistic replacement, single
//! redemption and capped failure count.

use super::Subject;
use super::fixtures::{T0, expect_conflict, hash, meta, new_otp, race, sent_otp, single_winner, stored_otp};
use crate::domain::{OtpRecord, RequestMeta};
use crate::error::Conflict;

const MAX_FAILURES: u32 = 5;
/// An address budget that the tests of the per-code cap never reach.
const BUDGET: u32 = 1000;
const RACERS: usize = 50;

pub async fn put_otp_expected_version(s: &Subject) {
    let first = new_otp();
    let address = first.address_hash.clone();

    expect_conflict(
        s.otps.put_otp(&first, Some(&first)).await,
        Conflict::Stale,
        "put expecting a record where there is none",
    );
    assert_eq!(s.otps.otp(&address).await.expect("otp"), None, "a refused put wrote");

    s.otps.put_otp(&first, None).await.expect("put where there is none, expecting none");
    assert_eq!(s.otps.otp(&address).await.expect("otp"), Some(first.clone()));

    let second = OtpRecord {
        code_hash: hash(),
        created_at: T0 + 60,
        expires_at: T0 + 660,
        last_sent_at: T0 + 60,
        ..first.clone()
    };
    expect_conflict(s.otps.put_otp(&second, None).await, Conflict::Stale, "put expecting none where there is one");
    for (other, what) in [
        (OtpRecord { last_sent_at: T0 - 1, ..first.clone() }, "put expecting another last_sent_at"),
        (OtpRecord { failures: 1, ..first.clone() }, "put expecting another failure count"),
        (OtpRecord { attempts: 1, ..first.clone() }, "put expecting another attempt count"),
        (OtpRecord { used_at: Some(T0 + 1), ..first.clone() }, "put expecting a used code"),
    ] {
        expect_conflict(s.otps.put_otp(&second, Some(&other)).await, Conflict::Stale, what);
    }
    assert_eq!(stored_otp(s, &address).await, first, "a refused put changed the record");

    s.otps.put_otp(&second, Some(&first)).await.expect("put expecting the stored record");
    assert_eq!(stored_otp(s, &address).await, second, "put replaces the whole record");

    let third = OtpRecord { code_hash: hash(), last_sent_at: T0 + 120, ..second.clone() };
    expect_conflict(s.otps.put_otp(&third, Some(&first)).await, Conflict::Stale, "put expecting a replaced record");
    assert_eq!(stored_otp(s, &address).await, second);

    // A guess counted after the read makes the put stale: the new code
    // would otherwise carry the old counts and lose that guess.
    let read = stored_otp(s, &address).await;
    s.otps.take_otp_attempt(&address, T0 + 61, MAX_FAILURES).await.expect("take_otp_attempt");
    expect_conflict(s.otps.put_otp(&third, Some(&read)).await, Conflict::Stale, "put after an attempt was taken");
    let read = stored_otp(s, &address).await;
    s.otps.record_otp_failure(&address, MAX_FAILURES, BUDGET, &meta()).await.expect("record_otp_failure");
    expect_conflict(s.otps.put_otp(&third, Some(&read)).await, Conflict::Stale, "put after a failure was counted");
    // A redemption after the read too: it gave the address's budget back,
    // which a new code made from the read would undo.
    let read = stored_otp(s, &address).await;
    s.otps.redeem_otp(&address, &read.code_hash, T0 + 62, MAX_FAILURES, BUDGET, &meta()).await.expect("redeem");
    expect_conflict(s.otps.put_otp(&third, Some(&read)).await, Conflict::Stale, "put after the code was used");
    let used = stored_otp(s, &address).await;
    s.otps.put_otp(&third, Some(&used)).await.expect("put expecting the used code");
}

/// A send whose mail was not queued gives its cooldown back: `last_sent_at`
/// as it was before it, its code and the failures counted on it kept; only
/// for the code and the send time given, and only once.
pub async fn give_back_otp_cooldown_restores_last_sent_at(s: &Subject) {
    let first = sent_otp(s).await;
    let address = first.address_hash.clone();
    let now = T0 + 60;
    let second =
        OtpRecord { code_hash: hash(), created_at: now, expires_at: now + 600, last_sent_at: now, ..first.clone() };
    s.otps.put_otp(&second, Some(&first)).await.expect("a second code");
    s.otps.record_otp_failure(&address, MAX_FAILURES, BUDGET, &meta()).await.expect("a wrong code on it");
    let sent = stored_otp(s, &address).await;
    for (address, code_hash, at, what) in [
        (address.clone(), first.code_hash.clone(), now, "a give-back for another code"),
        (address.clone(), second.code_hash.clone(), now - 1, "a give-back for another send time"),
        (hash(), second.code_hash.clone(), now, "a give-back for an unknown address"),
    ] {
        expect_conflict(s.otps.give_back_otp_cooldown(&address, &code_hash, at, T0).await, Conflict::Stale, what);
    }
    assert_eq!(stored_otp(s, &address).await, sent, "a refused give-back changed the record");

    s.otps.give_back_otp_cooldown(&address, &second.code_hash, now, T0).await.expect("give_back_otp_cooldown");
    let given_back = stored_otp(s, &address).await;
    assert_eq!(
        given_back,
        OtpRecord { last_sent_at: T0, ..sent.clone() },
        "a give-back sets last_sent_at back, and nothing else"
    );
    assert_eq!((given_back.failures, given_back.code_hash), (1, second.code_hash.clone()));
    expect_conflict(
        s.otps.give_back_otp_cooldown(&address, &second.code_hash, now, T0).await,
        Conflict::Stale,
        "the same give-back again",
    );
}

/// Of any number of concurrent attempts on a code, exactly the cap succeed,
/// each seeing a distinct count; none once the code is used or expired.
pub async fn otp_attempts_capped_under_concurrency(s: &Subject) {
    let otp = sent_otp(s).await;
    let results = race(RACERS, |_| {
        let otps = s.otps.clone();
        let address = otp.address_hash.clone();
        async move { otps.take_otp_attempt(&address, T0 + 1, MAX_FAILURES).await }
    })
    .await;
    let mut counts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(rec) => {
                assert_eq!(OtpRecord { attempts: 0, ..rec.clone() }, otp, "an attempt changes nothing but attempts");
                counts.push(rec.attempts);
            }
            Err(e) => expect_conflict::<OtpRecord>(Err(e), Conflict::Stale, &format!("racer {i} over the cap")),
        }
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=MAX_FAILURES).collect::<Vec<_>>(), "the attempts count 1..=max exactly once each");
    assert_eq!(stored_otp(s, &otp.address_hash).await, OtpRecord { attempts: MAX_FAILURES, ..otp.clone() });

    let fresh = sent_otp(s).await;
    expect_conflict(
        s.otps.take_otp_attempt(&fresh.address_hash, fresh.expires_at, MAX_FAILURES).await,
        Conflict::Stale,
        "an attempt at expires_at",
    );
    assert_eq!(stored_otp(s, &fresh.address_hash).await, fresh, "a refused attempt changed the record");
    s.otps.take_otp_attempt(&fresh.address_hash, fresh.expires_at - 1, MAX_FAILURES).await.expect("just before expiry");
    s.otps
        .redeem_otp(&fresh.address_hash, &fresh.code_hash, T0 + 1, MAX_FAILURES, BUDGET, &meta())
        .await
        .expect("redeem");
    expect_conflict(
        s.otps.take_otp_attempt(&fresh.address_hash, T0 + 2, MAX_FAILURES).await,
        Conflict::Stale,
        "an attempt on a used code",
    );
    expect_conflict(s.otps.take_otp_attempt(&hash(), T0 + 1, MAX_FAILURES).await, Conflict::Stale, "no code");
}

pub async fn put_otp_has_one_winner(s: &Subject) {
    let address = hash();
    let records: Vec<OtpRecord> =
        (0..RACERS).map(|_| OtpRecord { address_hash: address.clone(), code_hash: hash(), ..new_otp() }).collect();
    let results = race(RACERS, |i| {
        let otps = s.otps.clone();
        let record = records[i].clone();
        async move { otps.put_otp(&record, None).await }
    })
    .await;
    let (w, (), losers) = single_winner(results, "concurrent first sends to one address");
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} sending to an address that has a code"));
    }
    assert_eq!(stored_otp(s, &address).await, records[w], "the stored code is the winner's");
}

pub async fn redeem_otp_has_one_winner(s: &Subject) {
    let otp = sent_otp(s).await;
    let now = T0 + 1;
    let metas: Vec<RequestMeta> = (0..RACERS).map(|_| meta()).collect();
    let results = race(RACERS, |i| {
        let otps = s.otps.clone();
        let (address, code, m) = (otp.address_hash.clone(), otp.code_hash.clone(), metas[i].clone());
        async move { otps.redeem_otp(&address, &code, now, MAX_FAILURES, BUDGET, &m).await }
    })
    .await;
    let (w, (), losers) = single_winner(results, "concurrent redeems of one code");
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} redeeming a used code"));
    }
    let used = stored_otp(s, &otp.address_hash).await;
    assert!(used.used_at.is_some(), "a redeem marks the code used: {used:?}");
    assert_eq!(
        OtpRecord { used_at: None, meta: otp.meta.clone(), ..used.clone() },
        otp,
        "a redeem changes nothing but used_at and meta"
    );
    assert_eq!(used.meta, metas[w], "a redeem sets the winner's meta");

    expect_conflict(
        s.otps.record_otp_failure(&otp.address_hash, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "a wrong code after the right one",
    );
}

pub async fn redeem_otp_refused_at_expiry_boundary(s: &Subject) {
    let otp = sent_otp(s).await;
    expect_conflict(
        s.otps.redeem_otp(&otp.address_hash, &otp.code_hash, otp.expires_at, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "redeem at expires_at",
    );
    assert_eq!(stored_otp(s, &otp.address_hash).await, otp, "an expired redeem changed the record");
    s.otps
        .redeem_otp(&otp.address_hash, &otp.code_hash, otp.expires_at - 1, MAX_FAILURES, BUDGET, &meta())
        .await
        .expect("redeem one second before expires_at");
}

pub async fn redeem_otp_refused_with_another_code(s: &Subject) {
    let otp = sent_otp(s).await;
    expect_conflict(
        s.otps.redeem_otp(&otp.address_hash, &hash(), T0 + 1, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "redeem with another code hash",
    );
    assert_eq!(stored_otp(s, &otp.address_hash).await, otp, "a refused redeem changed the record");

    let unknown = hash();
    expect_conflict(
        s.otps.redeem_otp(&unknown, &otp.code_hash, T0 + 1, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "redeem for an address without a code",
    );
    assert_eq!(s.otps.otp(&unknown).await.expect("otp"), None, "redeeming for an unknown address created a record");
}

pub async fn otp_failures_capped_under_concurrency(s: &Subject) {
    let otp = sent_otp(s).await;
    let m = meta();
    let results = race(RACERS, |_| {
        let otps = s.otps.clone();
        let (address, m) = (otp.address_hash.clone(), m.clone());
        async move { otps.record_otp_failure(&address, MAX_FAILURES, BUDGET, &m).await }
    })
    .await;

    let mut counts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(n) => counts.push(n),
            Err(e) => expect_conflict::<u32>(Err(e), Conflict::Stale, &format!("racer {i} over the cap")),
        }
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=MAX_FAILURES).collect::<Vec<_>>(),
        "the successful failures count 1..=max exactly once each"
    );
    assert_eq!(
        stored_otp(s, &otp.address_hash).await,
        OtpRecord { failures: MAX_FAILURES, budget_failures: MAX_FAILURES, meta: m, ..otp.clone() },
        "each wrong code counts toward the code's cap and the address's budget"
    );

    expect_conflict(
        s.otps.redeem_otp(&otp.address_hash, &otp.code_hash, T0 + 1, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "redeem of an exhausted code with the right code",
    );

    let unknown = hash();
    expect_conflict(
        s.otps.record_otp_failure(&unknown, MAX_FAILURES, BUDGET, &meta()).await,
        Conflict::Stale,
        "a wrong code for an address without a code",
    );
    assert_eq!(s.otps.otp(&unknown).await.expect("otp"), None, "a failure for an unknown address created a record");
}

/// The address's budget of wrong codes across codes: concurrent wrong codes
/// never pass it, a spent budget accepts not even the right code, and a
/// right code within it sets it back to 0.
pub async fn otp_budget_spans_codes(s: &Subject) {
    const SMALL: u32 = 3;
    // A code that inherited two wrong codes from the ones before it.
    let otp = OtpRecord { budget_failures: SMALL - 1, ..new_otp() };
    s.otps.put_otp(&otp, None).await.expect("put_otp");
    let m = meta();
    let results = race(RACERS, |_| {
        let otps = s.otps.clone();
        let (address, m) = (otp.address_hash.clone(), m.clone());
        async move { otps.record_otp_failure(&address, MAX_FAILURES, SMALL, &m).await }
    })
    .await;
    let mut counted = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(n) => counted.push(n),
            Err(e) => expect_conflict::<u32>(Err(e), Conflict::Stale, &format!("racer {i} over the budget")),
        }
    }
    assert_eq!(counted, [1], "one wrong code fits in the budget, whatever the code's own cap");
    let spent = stored_otp(s, &otp.address_hash).await;
    assert_eq!(spent, OtpRecord { failures: 1, budget_failures: SMALL, meta: m, ..otp.clone() });
    expect_conflict(
        s.otps.redeem_otp(&otp.address_hash, &otp.code_hash, T0 + 1, MAX_FAILURES, SMALL, &meta()).await,
        Conflict::Stale,
        "the right code once the budget is spent",
    );
    assert_eq!(stored_otp(s, &otp.address_hash).await, spent, "a refused redeem changed the record");

    let within = OtpRecord { budget_failures: SMALL - 1, ..new_otp() };
    s.otps.put_otp(&within, None).await.expect("put_otp");
    s.otps
        .redeem_otp(&within.address_hash, &within.code_hash, T0 + 1, MAX_FAILURES, SMALL, &meta())
        .await
        .expect("the right code within the budget");
    let used = stored_otp(s, &within.address_hash).await;
    assert_eq!((used.used_at, used.budget_failures), (Some(T0 + 1), 0), "a right code gives the budget back");
}
