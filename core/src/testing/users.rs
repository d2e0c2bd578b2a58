//! `UserStore`: registration and its uniqueness claims, verification tokens,
//! the resend cooldown, and the wrong-password lock.

use super::Subject;
use super::fixtures::{
    DAY, T0, email, expect_conflict, hash, link, meta, new_user, open_challenge, race, registered, signed_in,
    single_winner, stored_session, stored_user, user_id, user_with, username, verification_for,
};
use crate::domain::{Email, User, VerificationRecord};
use crate::error::Conflict;
use crate::ports::{LockCheck, LoginFailure};

/// Nothing of a refused registration is readable.
async fn assert_not_written(s: &Subject, user: &User, verification: &VerificationRecord, what: &str) {
    assert_eq!(
        s.users.user_by_id(&user.id).await.expect("user_by_id"),
        None,
        "{what}: the refused user's id is readable"
    );
    assert_eq!(
        s.users.verification(&verification.token_hash).await.expect("verification"),
        None,
        "{what}: the refused user's verification token is readable"
    );
}

pub async fn create_user_reads_back(s: &Subject) {
    let (user, verification) = new_user();
    s.users.create_user(&user, &verification, i64::MIN).await.expect("create_user");

    let some = Some(user.clone());
    assert_eq!(s.users.user_by_id(&user.id).await.expect("user_by_id"), some, "user_by_id");
    assert_eq!(s.users.user_by_username(&user.username).await.expect("user_by_username"), some, "user_by_username");
    assert_eq!(s.users.user_by_email(&user.email).await.expect("user_by_email"), some, "user_by_email");
    assert_eq!(
        s.users.verification(&verification.token_hash).await.expect("verification"),
        Some(verification),
        "verification"
    );

    // Not found is Ok(None).
    assert_eq!(s.users.user_by_id(&user_id()).await.expect("user_by_id of an unknown id"), None);
    assert_eq!(s.users.user_by_username(&username()).await.expect("user_by_username of an unknown name"), None);
    assert_eq!(s.users.user_by_email(&email()).await.expect("user_by_email of an unknown address"), None);
    assert_eq!(s.users.verification(&hash()).await.expect("verification of an unknown token"), None);
}

pub async fn username_taken_is_reported_first_and_writes_nothing(s: &Subject) {
    let (first, _) = registered(s).await;

    let (both, both_v) = user_with(first.username.clone(), first.email.clone());
    expect_conflict(
        s.users.create_user(&both, &both_v, i64::MIN).await,
        Conflict::UsernameTaken,
        "username and email both taken: the username is reported",
    );
    assert_not_written(s, &both, &both_v, "username and email both taken").await;

    let (dup, dup_v) = user_with(first.username.clone(), email());
    expect_conflict(s.users.create_user(&dup, &dup_v, i64::MIN).await, Conflict::UsernameTaken, "username taken");
    assert_not_written(s, &dup, &dup_v, "username taken").await;
    assert_eq!(
        s.users.user_by_email(&dup.email).await.expect("user_by_email"),
        None,
        "the email of a refused registration is readable"
    );
    // The refused registration's email was not claimed.
    let (other, other_v) = user_with(username(), dup.email.clone());
    s.users
        .create_user(&other, &other_v, i64::MIN)
        .await
        .expect("the email of a registration refused for its username must stay free");

    assert_eq!(
        s.users.user_by_username(&first.username).await.expect("user_by_username"),
        Some(first),
        "the first owner of the username is unchanged"
    );
}

/// A registration refused for a taken email writes no account, token or
/// claim on the email; its username is held: the next registration of that
/// username is refused as taken, whatever its email, and writes nothing.
pub async fn email_taken_holds_the_username_and_writes_nothing_else(s: &Subject) {
    let (first, _) = registered(s).await;

    let (dup, dup_v) = user_with(username(), first.email.clone());
    expect_conflict(s.users.create_user(&dup, &dup_v, i64::MIN).await, Conflict::EmailTaken, "email taken");
    assert_not_written(s, &dup, &dup_v, "email taken").await;
    assert_eq!(
        s.users.user_by_email(&first.email).await.expect("user_by_email"),
        Some(first.clone()),
        "the first owner of the email is unchanged"
    );

    // The username is held: as taken as if the registration had made an
    // account (username checked first, whatever the email).
    let (free, free_v) = user_with(dup.username.clone(), email());
    expect_conflict(s.users.create_user(&free, &free_v, i64::MIN).await, Conflict::UsernameTaken, "a held username");
    assert_not_written(s, &free, &free_v, "a held username").await;
    let (both, both_v) = user_with(dup.username.clone(), first.email.clone());
    expect_conflict(
        s.users.create_user(&both, &both_v, i64::MIN).await,
        Conflict::UsernameTaken,
        "a held username with a taken email: the username is reported",
    );
    assert_not_written(s, &both, &both_v, "a held username with a taken email").await;
    // A registration refused for a held username claims nothing either.
    let (other, other_v) = user_with(username(), free.email.clone());
    s.users
        .create_user(&other, &other_v, i64::MIN)
        .await
        .expect("the email of a registration refused for a held username must stay free");
}

/// A hold is no account: no read finds it, nothing counts against it, and
/// the email's owner is not touched by it.
pub async fn a_username_hold_is_no_account(s: &Subject) {
    let (owner, owner_v) = registered(s).await;
    let (dup, dup_v) = user_with(username(), owner.email.clone());
    expect_conflict(s.users.create_user(&dup, &dup_v, i64::MIN).await, Conflict::EmailTaken, "email taken");

    assert_eq!(s.users.user_by_username(&dup.username).await.expect("user_by_username"), None, "by its username");
    assert_eq!(s.users.user_by_id(&dup.id).await.expect("user_by_id"), None, "by the refused account's id");
    assert_eq!(s.users.verification(&dup_v.token_hash).await.expect("verification"), None, "its token");
    expect_conflict(
        s.users.record_login_failure(&dup.id, T0, 3, 600, &meta()).await,
        Conflict::Stale,
        "a wrong password against the refused account's id",
    );
    let later = verification_for(dup.id, T0 + DAY);
    expect_conflict(
        s.users.add_verification(&later, T0 + DAY, 60, &meta()).await,
        Conflict::Stale,
        "a verification resend to the refused account",
    );
    assert_eq!(stored_user(s, &owner.id).await, owner, "the email's owner is untouched");
    s.users.consume_verification(&owner_v, T0 + 1, &meta()).await.expect("the owner still verifies");
}

/// A hold ends as an unverified account made at the same time would: it
/// takes the username up to the cut-off (`created_at` of the refused
/// registration, not before it), and gives it up just after, to a new
/// account (which replaces no account: there was none) or to a new hold.
pub async fn a_username_hold_ends_at_the_cut_off(s: &Subject) {
    // Verified: its email stays taken past any cut-off.
    let (owner, owner_v) = registered(s).await;
    s.users.consume_verification(&owner_v, T0 + 1, &meta()).await.expect("verify the email's owner");
    let (dup, dup_v) = user_with(username(), owner.email.clone());
    expect_conflict(s.users.create_user(&dup, &dup_v, i64::MIN).await, Conflict::EmailTaken, "email taken");
    let held = dup.created_at;

    let (early, early_v) = user_with(dup.username.clone(), email());
    expect_conflict(
        s.users.create_user(&early, &early_v, held).await,
        Conflict::UsernameTaken,
        "a hold made at the cut-off, not before it",
    );
    assert_not_written(s, &early, &early_v, "a hold made at the cut-off").await;

    // Past the hold, another taken-email registration holds it afresh, from
    // its own time.
    let (again, again_v) = user_with(dup.username.clone(), owner.email.clone());
    let again = User { created_at: held + DAY, ..again };
    expect_conflict(s.users.create_user(&again, &again_v, held + 1).await, Conflict::EmailTaken, "email taken");
    let (refused, refused_v) = user_with(dup.username.clone(), email());
    expect_conflict(
        s.users.create_user(&refused, &refused_v, held + 1).await,
        Conflict::UsernameTaken,
        "the renewed hold runs from its own time",
    );

    let (new, new_v) = user_with(dup.username.clone(), email());
    let replaced = s.users.create_user(&new, &new_v, held + DAY + 1).await.expect("create_user past the hold");
    assert_eq!(replaced, Vec::new(), "a hold is no account to name as replaced");
    assert_replaced(s, &new, &new_v, &[], "a username past its hold").await;
    let (late, late_v) = user_with(dup.username.clone(), email());
    expect_conflict(
        s.users.create_user(&late, &late_v, i64::MIN).await,
        Conflict::UsernameTaken,
        "the new account holds the username",
    );
}

/// A registration refused for its email takes its username from a stale
/// unverified account, as a registration that succeeds would: the account
/// goes (its email is free again) and the username is held.
pub async fn email_taken_takes_a_stale_username_over_for_its_hold(s: &Subject) {
    let (owner, _) = registered(s).await;
    let (stale, stale_v) = user_with(username(), email());
    let stale = User { created_at: T0 - DAY, ..stale };
    s.users.create_user(&stale, &stale_v, i64::MIN).await.expect("create the stale account");

    let (dup, dup_v) = user_with(stale.username.clone(), owner.email.clone());
    expect_conflict(s.users.create_user(&dup, &dup_v, T0).await, Conflict::EmailTaken, "email taken");
    assert_not_written(s, &dup, &dup_v, "email taken").await;
    assert_eq!(s.users.user_by_id(&stale.id).await.expect("user_by_id"), None, "the stale account is gone");
    assert_eq!(stored_user(s, &owner.id).await, owner, "the email's owner is untouched");

    let (taker, taker_v) = user_with(stale.username.clone(), email());
    expect_conflict(s.users.create_user(&taker, &taker_v, T0).await, Conflict::UsernameTaken, "held now");
    let (freed, freed_v) = user_with(username(), stale.email.clone());
    s.users.create_user(&freed, &freed_v, i64::MIN).await.expect("the stale account's email is free");
}

/// One username, registrations racing with a free email and with a taken
/// one: exactly one of them gets the username (an account or a hold), the
/// others are refused as taken.
pub async fn concurrent_holds_and_registrations_of_one_username_leave_one_holder(s: &Subject) {
    let (owner, _) = registered(s).await;
    let shared = username();
    let candidates: Vec<_> = (0..REGISTRATION_RACERS)
        .map(|i| user_with(shared.clone(), if i % 2 == 0 { owner.email.clone() } else { email() }))
        .collect();
    let results = race(REGISTRATION_RACERS, |i| {
        let users = s.users.clone();
        let (user, verification) = candidates[i].clone();
        async move { users.create_user(&user, &verification, i64::MIN).await }
    })
    .await;
    let summary = format!("{results:?}");
    let mut holders = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(replaced) => {
                assert!(replaced.is_empty(), "racer {i}: nothing to replace");
                holders.push((i, true));
            }
            Err(crate::StoreError::Conflict(Conflict::EmailTaken)) => holders.push((i, false)),
            Err(crate::StoreError::Conflict(Conflict::UsernameTaken)) => {}
            Err(e) => panic!("racer {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(holders.len(), 1, "one holder of the username: {summary}");
    let (w, account) = holders[0];
    let expected = account.then(|| candidates[w].0.clone());
    assert_eq!(s.users.user_by_username(&shared).await.expect("user_by_username"), expected, "{summary}");
    for (i, (loser, loser_v)) in candidates.iter().enumerate().filter(|(i, _)| *i != w) {
        assert_not_written(s, loser, loser_v, &format!("racer {i}")).await;
    }
    let (late, late_v) = user_with(shared.clone(), email());
    expect_conflict(s.users.create_user(&late, &late_v, i64::MIN).await, Conflict::UsernameTaken, "still held");
}

/// The accounts a replacing registration leaves: the new one readable by
/// id, username and email; each replaced one gone.
async fn assert_replaced(s: &Subject, new: &User, new_v: &VerificationRecord, gone: &[&User], what: &str) {
    let some = Some(new.clone());
    assert_eq!(s.users.user_by_id(&new.id).await.expect("user_by_id"), some, "{what}: the new account");
    assert_eq!(s.users.user_by_username(&new.username).await.expect("by username"), some, "{what}: its username");
    assert_eq!(s.users.user_by_email(&new.email).await.expect("by email"), some, "{what}: its email");
    assert!(s.users.verification(&new_v.token_hash).await.expect("verification").is_some(), "{what}: its token");
    for old in gone {
        assert_eq!(s.users.user_by_id(&old.id).await.expect("user_by_id"), None, "{what}: the replaced account");
    }
}

/// An unverified account created before the cut-off gives its username and
/// email up to a new registration, in one step; one created at the cut-off
/// keeps them.
pub async fn create_user_replaces_an_unverified_account_past_the_cut_off(s: &Subject) {
    let (old, old_v) = user_with(username(), email());
    let old = User { created_at: T0 - DAY, ..old };
    s.users.create_user(&old, &old_v, i64::MIN).await.expect("create_user of the old account");

    let (early, early_v) = user_with(old.username.clone(), old.email.clone());
    expect_conflict(
        s.users.create_user(&early, &early_v, T0 - DAY).await,
        Conflict::UsernameTaken,
        "created at the cut-off, not before it",
    );
    assert_not_written(s, &early, &early_v, "created at the cut-off").await;
    assert_eq!(stored_user(s, &old.id).await, old, "the old account is untouched by a refused registration");

    let (new, new_v) = user_with(old.username.clone(), old.email.clone());
    let replaced = s.users.create_user(&new, &new_v, T0 - DAY + 1).await.expect("create_user replacing it");
    assert_eq!(replaced, vec![old.id], "the replaced account is named");
    assert_replaced(s, &new, &new_v, &[&old], "both names of one unverified account").await;
}

/// The username of one stale unverified account and the email of another:
/// both go, and the names the new account did not take are free again.
pub async fn create_user_replaces_two_unverified_holders_at_once(s: &Subject) {
    let stale = |u: (User, VerificationRecord)| (User { created_at: T0 - DAY, ..u.0 }, u.1);
    let (a, a_v) = stale(user_with(username(), email()));
    let (b, b_v) = stale(user_with(username(), email()));
    s.users.create_user(&a, &a_v, i64::MIN).await.expect("create a");
    s.users.create_user(&b, &b_v, i64::MIN).await.expect("create b");

    let (new, new_v) = user_with(a.username.clone(), b.email.clone());
    let replaced = s.users.create_user(&new, &new_v, T0).await.expect("create_user replacing two accounts");
    assert_eq!(replaced, vec![a.id, b.id], "the username's holder, then the email's");
    assert_replaced(s, &new, &new_v, &[&a, &b], "two unverified holders").await;
    // Their other names have no claim left on them.
    let (x, x_v) = user_with(b.username.clone(), a.email.clone());
    s.users.create_user(&x, &x_v, i64::MIN).await.expect("the names the new account did not take are free");
}

/// Taking only the username of a stale unverified account frees its email
/// too (the account is gone, its claim with it).
pub async fn create_user_taking_one_name_frees_the_other(s: &Subject) {
    let (old, old_v) = user_with(username(), email());
    let old = User { created_at: T0 - DAY, ..old };
    s.users.create_user(&old, &old_v, i64::MIN).await.expect("create_user of the old account");
    let (new, new_v) = user_with(old.username.clone(), email());
    assert_eq!(s.users.create_user(&new, &new_v, T0).await.expect("replace"), vec![old.id]);
    assert_replaced(s, &new, &new_v, &[&old], "the username only").await;
    assert_eq!(s.users.user_by_email(&old.email).await.expect("by email"), None, "the old email is unclaimed");
    let (x, x_v) = user_with(username(), old.email.clone());
    s.users.create_user(&x, &x_v, i64::MIN).await.expect("the old account's email is free");
}

/// Two registrations each taking one name of the same stale account at
/// once: both succeed, and exactly one of them replaced it.
pub async fn concurrent_takeovers_of_one_unverified_account_both_succeed(s: &Subject) {
    let (old, old_v) = user_with(username(), email());
    let old = User { created_at: T0 - DAY, ..old };
    s.users.create_user(&old, &old_v, i64::MIN).await.expect("create_user of the old account");
    let candidates = [user_with(old.username.clone(), email()), user_with(username(), old.email.clone())];
    let results = race(2, |i| {
        let users = s.users.clone();
        let (user, verification) = candidates[i].clone();
        async move { users.create_user(&user, &verification, T0).await }
    })
    .await;
    let mut replaced = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        replaced.extend(r.unwrap_or_else(|e| panic!("takeover {i} of a free or stale name refused: {e:?}")));
    }
    assert_eq!(replaced, vec![old.id], "the stale account is replaced exactly once");
    for (user, verification) in &candidates {
        assert_replaced(s, user, verification, &[&old], "concurrent takeovers").await;
    }
}

/// A verified account keeps its names whatever its age. (A registration it
/// refuses for the email takes a stale username over, for its hold: see
/// `email_taken_takes_a_stale_username_over_for_its_hold`.)
pub async fn create_user_never_replaces_a_verified_account(s: &Subject) {
    let stale = |u: (User, VerificationRecord)| (User { created_at: T0 - DAY, ..u.0 }, u.1);
    let (verified, verified_v) = stale(user_with(username(), email()));
    s.users.create_user(&verified, &verified_v, i64::MIN).await.expect("create");
    s.users.consume_verification(&verified_v, T0 - DAY + 10, &meta()).await.expect("verify");
    let verified = stored_user(s, &verified.id).await;
    let (unverified, unverified_v) = stale(user_with(username(), email()));
    s.users.create_user(&unverified, &unverified_v, i64::MIN).await.expect("create");

    let (dup, dup_v) = user_with(verified.username.clone(), email());
    expect_conflict(s.users.create_user(&dup, &dup_v, T0).await, Conflict::UsernameTaken, "a verified username");
    let (dup, dup_v) = user_with(username(), verified.email.clone());
    expect_conflict(s.users.create_user(&dup, &dup_v, T0).await, Conflict::EmailTaken, "a verified email");
    assert_not_written(s, &dup, &dup_v, "a verified email").await;
    let (dup, dup_v) = user_with(verified.username.clone(), unverified.email.clone());
    expect_conflict(
        s.users.create_user(&dup, &dup_v, T0).await,
        Conflict::UsernameTaken,
        "a verified username with a stale email",
    );
    assert_not_written(s, &dup, &dup_v, "a verified username with a stale email").await;
    assert_eq!(stored_user(s, &verified.id).await, verified, "the verified account is untouched");
    assert_eq!(stored_user(s, &unverified.id).await, unverified, "a refusal for the username replaces nothing");
}

const REGISTRATION_RACERS: usize = 20;

pub async fn concurrent_registrations_of_one_email_leave_one_account(s: &Subject) {
    let shared = email();
    let candidates: Vec<_> = (0..REGISTRATION_RACERS).map(|_| user_with(username(), shared.clone())).collect();
    let results = race(REGISTRATION_RACERS, |i| {
        let users = s.users.clone();
        let (user, verification) = candidates[i].clone();
        async move { users.create_user(&user, &verification, i64::MIN).await }
    })
    .await;

    let (w, replaced, losers) = single_winner(results, "concurrent registrations of one email");
    assert!(replaced.is_empty(), "the email was free: nothing to replace");
    for (i, r) in losers {
        expect_conflict(r, Conflict::EmailTaken, &format!("racer {i} for a taken email"));
    }
    assert_eq!(
        s.users.user_by_email(&shared).await.expect("user_by_email"),
        Some(candidates[w].0.clone()),
        "the email belongs to the winner"
    );
    for (i, (loser, loser_v)) in candidates.iter().enumerate().filter(|(i, _)| *i != w) {
        let what = format!("racer {i} lost the email");
        assert_not_written(s, loser, loser_v, &what).await;
        assert_eq!(s.users.user_by_username(&loser.username).await.expect("user_by_username"), None, "{what}");
        // Its username is held, as the winner's is by its account...
        let (again, again_v) = user_with(loser.username.clone(), email());
        expect_conflict(
            s.users.create_user(&again, &again_v, i64::MIN).await,
            Conflict::UsernameTaken,
            &format!("{what}: its username is held"),
        );
        // ...and no longer: no orphan claim outlives the hold.
        if let Err(e) = s.users.create_user(&again, &again_v, loser.created_at + 1).await {
            panic!("{what}: its username stayed claimed past the hold (orphan claim): {e:?}");
        }
    }
}

pub async fn concurrent_registrations_of_one_username_leave_one_account(s: &Subject) {
    let shared = username();
    let candidates: Vec<_> = (0..REGISTRATION_RACERS).map(|_| user_with(shared.clone(), email())).collect();
    let results = race(REGISTRATION_RACERS, |i| {
        let users = s.users.clone();
        let (user, verification) = candidates[i].clone();
        async move { users.create_user(&user, &verification, i64::MIN).await }
    })
    .await;

    let (w, replaced, losers) = single_winner(results, "concurrent registrations of one username");
    assert!(replaced.is_empty(), "the username was free: nothing to replace");
    for (i, r) in losers {
        expect_conflict(r, Conflict::UsernameTaken, &format!("racer {i} for a taken username"));
    }
    assert_eq!(
        s.users.user_by_username(&shared).await.expect("user_by_username"),
        Some(candidates[w].0.clone()),
        "the username belongs to the winner"
    );
    for (i, (loser, loser_v)) in candidates.iter().enumerate().filter(|(i, _)| *i != w) {
        let what = format!("racer {i} lost the username");
        assert_not_written(s, loser, loser_v, &what).await;
        assert_eq!(s.users.user_by_email(&loser.email).await.expect("user_by_email"), None, "{what}");
        let (again, again_v) = user_with(username(), loser.email.clone());
        if let Err(e) = s.users.create_user(&again, &again_v, i64::MIN).await {
            panic!("{what}: its email stayed claimed (orphan claim): {e:?}");
        }
    }
}

pub async fn set_password_hash_replaces_only_the_hash(s: &Subject) {
    let (user, _) = registered(s).await;
    let phc = "$argon2id$v=19$m=65536,t=3,p=1$bmV3c2FsdG5ld3NhbHQ$rehashed";
    let m = meta();
    expect_conflict(
        s.users.set_password_hash(&user.id, "$argon2id$not-the-stored-hash", phc, &meta()).await,
        Conflict::Stale,
        "a rehash of a hash changed meanwhile",
    );
    assert_eq!(stored_user(s, &user.id).await, user, "a refused rehash wrote the user");
    s.users.set_password_hash(&user.id, &user.password_hash, phc, &m).await.expect("set_password_hash");
    assert_eq!(stored_user(s, &user.id).await, User { password_hash: phc.into(), meta: m, ..user });
}

/// Deleting an account removes the user and frees both its names at once
/// (a new account takes them, with no hold and no cut-off), only while its
/// hash and epoch are the ones given: a hash or epoch changed meanwhile
/// refuses and deletes nothing, and so does an account already gone.
pub async fn delete_account_frees_both_names_only_at_the_checked_password(s: &Subject) {
    let (user, v) = registered(s).await;
    s.users.consume_verification(&v, T0 + 1, &meta()).await.expect("verify");
    let checked = stored_user(s, &user.id).await;
    for (stale, what) in [
        (User { password_hash: "$argon2id$v=19$another-hash".into(), ..checked.clone() }, "another hash"),
        (User { password_epoch: 1, ..checked.clone() }, "another epoch"),
    ] {
        expect_conflict(s.users.delete_account(&stale, &meta()).await, Conflict::Stale, what);
        assert_eq!(stored_user(s, &user.id).await, checked, "a refused deletion wrote ({what})");
    }
    // Moved to another address since the read: stale, or on DynamoDB the
    // new address's claim would be left naming no account.
    let moved = Email::parse("moved-before-deletion@example.com").expect("email");
    s.users.change_email(&checked, &moved, &meta()).await.expect("change_email");
    let at_new = stored_user(s, &user.id).await;
    expect_conflict(s.users.delete_account(&checked, &meta()).await, Conflict::Stale, "an address change since");
    assert_eq!(stored_user(s, &user.id).await, at_new, "a refused deletion wrote (address change since)");
    let checked = at_new;
    // Reset since the check (epoch 1): the checked account is stale.
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$cmVzZXRzYWx0cmVzZXQ$reset";
    // (A link mailed to the address it moved to.)
    let moved_link = crate::domain::ResetLink { email_changes: 1, ..link(T0 + 2, 0) };
    s.users.reset_password(&user.id, moved_link, 0, phc, T0 + 3, &meta()).await.expect("reset");
    let reset = stored_user(s, &user.id).await;
    expect_conflict(s.users.delete_account(&checked, &meta()).await, Conflict::Stale, "a reset since the check");
    assert_eq!(stored_user(s, &user.id).await, reset, "a refused deletion wrote (reset since)");

    s.users.delete_account(&reset, &meta()).await.expect("delete_account");
    assert_eq!(s.users.user_by_id(&user.id).await.expect("user_by_id"), None);
    expect_conflict(s.users.delete_account(&reset, &meta()).await, Conflict::Stale, "an account already gone");
    let (again, v) = user_with(user.username.clone(), user.email.clone());
    s.users.create_user(&again, &v, i64::MIN).await.expect("both names are free at once");
    assert_eq!(stored_user(s, &again.id).await.username, user.username);
    // The address it had moved to is free too, for an address change
    // (which, unlike a registration, takes over no claim).
    s.users.change_email(&stored_user(s, &again.id).await, &moved, &meta()).await.expect("the moved address is free");
}

/// Deleting an account takes its sessions and login codes with it: none
/// of them stays for its TTL with the request data it holds (addresses,
/// user agents). (On DynamoDB: those its user index lists by then.)
pub async fn delete_account_takes_its_sessions_and_codes(s: &Subject) {
    let (user, session) = signed_in(s).await;
    let open = open_challenge(s, user.id).await;
    let (other, others_session) = signed_in(s).await;
    s.users.delete_account(&stored_user(s, &user.id).await, &meta()).await.expect("delete_account");
    assert_eq!(s.sessions.session(&session.id).await.expect("session"), None, "its session");
    assert_eq!(s.challenges.challenge(&open.id).await.expect("challenge"), None, "its open challenge");
    assert_eq!(s.sessions.live_sessions_of(&user.id, T0 + 2).await.expect("live_sessions_of"), vec![]);
    // Another account's are left alone.
    assert_eq!(stored_session(s, &others_session.id).await.user_id, other.id);
}

/// An address change moves the account and its claim at once, counts
/// itself and sets `meta`, only for the user as read (address, count and
/// epoch); a taken address (another account's, verified or not, or its
/// own) is `EmailTaken` and a stale read `Stale`, each writing nothing.
/// The old address is free for a registration at once, the new one is not.
pub async fn change_email_moves_the_claim_only_for_the_user_as_read(s: &Subject) {
    let (user, v) = registered(s).await;
    s.users.consume_verification(&v, T0 + 1, &meta()).await.expect("verify");
    let read = stored_user(s, &user.id).await;
    let (other, _) = registered(s).await;
    let new = email();
    for (stale, what) in [
        (User { email_changes: 1, ..read.clone() }, "another count"),
        (User { password_epoch: 1, ..read.clone() }, "another epoch"),
        (User { email: email(), ..read.clone() }, "another address"),
        (User { id: user_id(), ..read.clone() }, "an unknown user"),
    ] {
        expect_conflict(s.users.change_email(&stale, &new, &meta()).await, Conflict::Stale, what);
        assert_eq!(stored_user(s, &user.id).await, read, "a refused change wrote ({what})");
    }
    for (taken, what) in [(&other.email, "an unverified account's address"), (&read.email, "its own address")] {
        expect_conflict(s.users.change_email(&read, taken, &meta()).await, Conflict::EmailTaken, what);
        assert_eq!(stored_user(s, &user.id).await, read, "a refused change wrote ({what})");
    }
    let m = meta();
    s.users.change_email(&read, &new, &m).await.expect("change_email");
    let moved = stored_user(s, &user.id).await;
    assert_eq!(moved, User { email: new.clone(), email_changes: 1, meta: m, ..read.clone() });
    let by_new = s.users.user_by_email(&new).await.expect("user_by_email");
    assert_eq!(by_new.map(|u| u.id), Some(user.id), "the new address finds the account");
    // Once only: the link's read is stale now.
    let third = email();
    expect_conflict(s.users.change_email(&read, &third, &meta()).await, Conflict::Stale, "the same read again");
    assert_eq!(stored_user(s, &user.id).await, moved, "a refused change wrote (used)");
    // The old address is free at once, the new one taken.
    let (takes_old, v) = user_with(username(), read.email.clone());
    s.users.create_user(&takes_old, &v, i64::MIN).await.expect("the old address is free at once");
    let (wants_new, v) = user_with(username(), new.clone());
    expect_conflict(s.users.create_user(&wants_new, &v, i64::MIN).await, Conflict::EmailTaken, "the new address");
    // A second change from the new count moves it again.
    s.users.change_email(&moved, &third, &meta()).await.expect("a second change");
    assert_eq!((stored_user(s, &user.id).await.email, stored_user(s, &user.id).await.email_changes), (third, 2));
}

/// A reset sets the hash, `sessions_valid_after`, `password_reset_at` and
/// the reset count, ends a lock and zeroes the counts, once per link: not
/// for a link made at an earlier count (in the reset's own second too), nor
/// one stamped before the last reset, nor for an unknown user, and a
/// refused one writes nothing. A link made after a reset works in its
/// second.
pub async fn reset_password_once_per_link(s: &Subject) {
    let (user, _) = registered(s).await;
    let locked = s.users.record_login_failure(&user.id, T0, 1, 900, &meta()).await.expect("lock").user;
    assert!(locked.is_locked(T0 + 1));
    let c = super::fixtures::new_challenge(user.id);
    s.challenges.create_challenge(&c, LockCheck::TrustedDevice, &meta()).await.expect("challenge");
    s.challenges
        .record_challenge_failure(&c.id, &user.id, 6, u32::MAX, c.password_epoch, &meta())
        .await
        .expect("a wrong code");
    let locked = stored_user(s, &user.id).await;
    assert_eq!((locked.otp_failures, locked.failed_logins, locked.password_resets), (1, 0, 0));
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$cmVzZXRzYWx0cmVzZXQ$reset";
    let m = meta();
    expect_conflict(
        s.users.reset_password(&user_id(), link(T0 + 4, 0), 0, phc, T0 + 5, &m).await,
        Conflict::Stale,
        "a reset of an unknown user",
    );
    assert_eq!(stored_user(s, &user.id).await, locked, "a refused reset wrote the user");

    s.users.reset_password(&user.id, link(T0 + 4, 0), 0, phc, T0 + 5, &m).await.expect("reset_password");
    let after = stored_user(s, &user.id).await;
    let expected = User {
        password_hash: phc.into(),
        sessions_valid_after: Some(T0 + 5),
        password_reset_at: Some(T0 + 5),
        password_resets: 1,
        password_epoch: 1,
        locked_until: None,
        failed_logins: 0,
        otp_failures: 0,
        meta: m.clone(),
        ..locked
    };
    assert_eq!(after, expected);
    for (link, what) in [
        (link(T0 + 4, 0), "the same link again"),
        (link(T0 + 1, 0), "an older link"),
        (link(T0 + 5, 0), "a link made in the reset's second, before it"),
        (link(T0 + 6, 0), "a link at the count before the reset"),
        (link(T0 + 4, 1), "a link stamped before the last reset"),
        (link(T0 + 6, 2), "a count the account has not reached"),
        (
            crate::domain::ResetLink { email_changes: 1, ..link(T0 + 6, 1) },
            "an address the account has not moved to (a link mailed to another one)",
        ),
    ] {
        expect_conflict(
            s.users.reset_password(&user.id, link, 1, "$argon2id$second", T0 + 6, &meta()).await,
            Conflict::Stale,
            what,
        );
    }
    assert_eq!(stored_user(s, &user.id).await, after, "a refused second reset wrote the user");
    // A reset dated before the last change (a change that committed after
    // the caller took its time) would let that change's session outlive it.
    expect_conflict(
        s.users.reset_password(&user.id, link(T0 + 5, 1), 1, "$argon2id$early", T0 + 4, &meta()).await,
        Conflict::Stale,
        "a reset dated before the last change",
    );
    assert_eq!(stored_user(s, &user.id).await, after, "a refused early reset wrote the user");
    // Made from an epoch a change or reset has moved on from: its caller
    // would not know the epoch it set.
    expect_conflict(
        s.users.reset_password(&user.id, link(T0 + 5, 1), 0, "$argon2id$stale", T0 + 7, &meta()).await,
        Conflict::Stale,
        "a reset from an epoch that is gone",
    );
    assert_eq!(stored_user(s, &user.id).await, after, "a refused stale reset wrote the user");
    s.users
        .reset_password(&user.id, link(T0 + 5, 1), 1, "$argon2id$third", T0 + 5, &m)
        .await
        .expect("a link made after the reset, in its second");
    let third = stored_user(s, &user.id).await;
    assert_eq!((third.password_reset_at, third.password_epoch, third.password_resets), (Some(T0 + 5), 2, 2));
    expect_conflict(
        s.users.reset_password(&user.id, link(T0 + 5, 1), 2, "$argon2id$fourth", T0 + 5, &m).await,
        Conflict::Stale,
        "that link again",
    );
}

/// Of concurrent resets with one link, exactly one succeeds.
pub async fn reset_password_has_one_winner(s: &Subject) {
    let (user, _) = registered(s).await;
    let results =
        race(REGISTRATION_RACERS, |i| {
            let users = s.users.clone();
            let id = user.id;
            async move {
                users.reset_password(&id, link(T0 + 9, 0), 0, &format!("$argon2id$racer{i}"), T0 + 10, &meta()).await
            }
        })
        .await;
    let (winner, (), losers) = single_winner(results, "concurrent resets with one link");
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} resetting with a used link"));
    }
    let after = stored_user(s, &user.id).await;
    assert_eq!((after.password_hash, after.password_resets), (format!("$argon2id$racer{winner}"), 1));
}

pub async fn consume_verification_once(s: &Subject) {
    let (user, verification) = registered(s).await;
    let now = T0 + 10;

    let consumed = s.users.consume_verification(&verification, now, &meta()).await.expect("first consume");
    assert_eq!(consumed, user.id, "consume_verification returns the token's user");
    assert!(stored_user(s, &user.id).await.verified, "the user is verified after a consume");
    let used = s.users.verification(&verification.token_hash).await.expect("verification").expect("the token is kept");
    assert!(used.used_at.is_some(), "the consumed token is marked used: {used:?}");

    expect_conflict(
        s.users.consume_verification(&verification, now + 1, &meta()).await,
        Conflict::Stale,
        "second consume",
    );
    assert_eq!(
        s.users.verification(&verification.token_hash).await.expect("verification"),
        Some(used),
        "a refused consume changes the token"
    );

    let unknown = hash();
    let never_stored = VerificationRecord { token_hash: unknown.clone(), ..verification.clone() };
    expect_conflict(
        s.users.consume_verification(&never_stored, now, &meta()).await,
        Conflict::Stale,
        "consume of an unknown token",
    );
    assert_eq!(
        s.users.verification(&unknown).await.expect("verification"),
        None,
        "consuming an unknown token created it"
    );
}

/// An update sets the modified records' `meta` to the request's, replacing
/// the creating request's: the audit trail reads "who did it" from there.
pub async fn update_replaces_meta(s: &Subject) {
    let (user, verification) = registered(s).await;
    let m = meta();
    assert_ne!(user.meta, m);
    s.users.consume_verification(&verification, T0 + 10, &m).await.expect("consume");
    let stored = stored_user(s, &user.id).await;
    assert_eq!(stored, User { verified: true, meta: m.clone(), ..user }, "the user's meta is the consuming request's");
    let token = s.users.verification(&verification.token_hash).await.expect("verification").expect("the token is kept");
    assert_eq!(token.meta, m, "the token's meta is the consuming request's");
}

pub async fn consume_verification_has_one_winner(s: &Subject) {
    let (user, verification) = registered(s).await;
    let results = race(REGISTRATION_RACERS, |_| {
        let users = s.users.clone();
        let token = verification.clone();
        async move { users.consume_verification(&token, T0 + 10, &meta()).await }
    })
    .await;
    let (_, consumed, losers) = single_winner(results, "concurrent consumes of one token");
    assert_eq!(consumed, user.id);
    for (i, r) in losers {
        expect_conflict(r, Conflict::Stale, &format!("racer {i} consuming a used token"));
    }
    assert!(stored_user(s, &user.id).await.verified);
}

pub async fn consume_verification_refused_at_expiry_boundary(s: &Subject) {
    let (user, verification) = registered(s).await;

    expect_conflict(
        s.users.consume_verification(&verification, verification.expires_at, &meta()).await,
        Conflict::Stale,
        "consume at expires_at",
    );
    assert!(!stored_user(s, &user.id).await.verified, "an expired consume verified the user");
    assert_eq!(
        s.users.verification(&verification.token_hash).await.expect("verification"),
        Some(verification.clone()),
        "an expired consume changed the token"
    );

    let consumed = s
        .users
        .consume_verification(&verification, verification.expires_at - 1, &meta())
        .await
        .expect("consume one second before expires_at");
    assert_eq!(consumed, user.id);
    assert!(stored_user(s, &user.id).await.verified);
}

pub async fn add_verification_cooldown_boundary(s: &Subject) {
    let cooldown = 60;
    let (user, _) = registered(s).await;
    assert_eq!(user.verification_sent_at, Some(T0));

    let early_at = T0 + cooldown - 1;
    let early = verification_for(user.id, early_at);
    expect_conflict(
        s.users.add_verification(&early, early_at, cooldown, &meta()).await,
        Conflict::Stale,
        "add_verification one second before the cooldown ends",
    );
    assert_eq!(
        s.users.verification(&early.token_hash).await.expect("verification"),
        None,
        "a refused token was stored"
    );
    assert_eq!(stored_user(s, &user.id).await, user, "a refused add_verification changed the user");

    let on_time_at = T0 + cooldown;
    let on_time = verification_for(user.id, on_time_at);
    let m = meta();
    s.users
        .add_verification(&on_time, on_time_at, cooldown, &m)
        .await
        .expect("add_verification exactly when the cooldown ends");
    assert_eq!(s.users.verification(&on_time.token_hash).await.expect("verification"), Some(on_time));
    assert_eq!(
        stored_user(s, &user.id).await,
        User { verification_sent_at: Some(on_time_at), meta: m, ..user },
        "add_verification sets verification_sent_at = now and meta and nothing else"
    );

    // The cooldown now runs from the new send.
    let again_at = on_time_at + cooldown - 1;
    let again = verification_for(user.id, again_at);
    expect_conflict(
        s.users.add_verification(&again, again_at, cooldown, &meta()).await,
        Conflict::Stale,
        "add_verification within the cooldown of the previous resend",
    );
    assert_eq!(s.users.verification(&again.token_hash).await.expect("verification"), None);
}

/// A verification mail that was not queued gives back the cooldown its
/// write started: `verification_sent_at` as it was before, the unmailed
/// token kept; only for an unverified user at the send time given, and only
/// once.
pub async fn give_back_verification_cooldown_restores_the_send_time(s: &Subject) {
    let cooldown = 60;
    let (user, registration) = registered(s).await;
    let at = T0 + cooldown;
    let resent = verification_for(user.id, at);
    s.users.add_verification(&resent, at, cooldown, &meta()).await.expect("add_verification");
    let sent = stored_user(s, &user.id).await;
    for (id, sent_at, what) in
        [(user.id, at - 1, "a give-back for another send time"), (user_id(), at, "a give-back for an unknown user")]
    {
        expect_conflict(s.users.give_back_verification_cooldown(&id, sent_at, T0).await, Conflict::Stale, what);
    }
    assert_eq!(stored_user(s, &user.id).await, sent, "a refused give-back changed the user");

    s.users.give_back_verification_cooldown(&user.id, at, T0).await.expect("give_back_verification_cooldown");
    assert_eq!(
        stored_user(s, &user.id).await,
        User { verification_sent_at: Some(T0), ..sent.clone() },
        "a give-back sets verification_sent_at back, and nothing else"
    );
    assert_eq!(s.users.verification(&resent.token_hash).await.expect("verification"), Some(resent.clone()));
    expect_conflict(
        s.users.give_back_verification_cooldown(&user.id, at, T0).await,
        Conflict::Stale,
        "the same give-back again",
    );
    // The resend it gave back can be made again at once.
    let again = verification_for(user.id, at);
    s.users.add_verification(&again, at, cooldown, &meta()).await.expect("the resend given back, made again");

    // Never for a verified account.
    s.users.consume_verification(&registration, at + 1, &meta()).await.expect("consume_verification");
    let verified = stored_user(s, &user.id).await;
    expect_conflict(
        s.users.give_back_verification_cooldown(&user.id, at, T0).await,
        Conflict::Stale,
        "a give-back for a verified user",
    );
    assert_eq!(stored_user(s, &user.id).await, verified);
}

/// An account nobody verified is gone once its retention and the day of
/// grace have passed (`User::retention_over`), whenever its store gets to
/// deleting it: no link is added to it and none verifies it, while a
/// second earlier both still do.
pub async fn no_link_for_an_unverified_account_past_its_retention(s: &Subject) {
    let (user, _) = registered(s).await;
    let over = user.created_at + User::UNVERIFIED_RETENTION_SECS + crate::tables::TTL_GRACE_SECS;
    let last = verification_for(user.id, over - 1);
    s.users.add_verification(&last, over - 1, 60, &meta()).await.expect("a link a second before the end");
    let late = verification_for(user.id, over + 60);
    expect_conflict(
        s.users.add_verification(&late, over + 60, 60, &meta()).await,
        Conflict::Stale,
        "a link for an account past its retention",
    );
    assert_eq!(s.users.verification(&late.token_hash).await.expect("verification"), None, "a refused link was stored");
    expect_conflict(
        s.users.consume_verification(&last, over, &meta()).await,
        Conflict::Stale,
        "a live link of an account past its retention",
    );
    assert!(!stored_user(s, &user.id).await.verified, "an account past its retention was verified");
    s.users.consume_verification(&last, over - 1, &meta()).await.expect("verified a second before the end");
    assert!(stored_user(s, &user.id).await.verified);
}

pub async fn add_verification_refused_for_verified_or_unknown_user(s: &Subject) {
    let (user, verification) = registered(s).await;
    s.users.consume_verification(&verification, T0 + 1, &meta()).await.expect("consume");

    let late = verification_for(user.id, T0 + DAY);
    expect_conflict(
        s.users.add_verification(&late, T0 + DAY, 60, &meta()).await,
        Conflict::Stale,
        "add_verification for a verified user",
    );
    assert_eq!(s.users.verification(&late.token_hash).await.expect("verification"), None);

    let stray = verification_for(user_id(), T0 + DAY);
    expect_conflict(
        s.users.add_verification(&stray, T0 + DAY, 60, &meta()).await,
        Conflict::Stale,
        "add_verification for an unknown user",
    );
    assert_eq!(s.users.verification(&stray.token_hash).await.expect("verification"), None);
    assert_eq!(s.users.user_by_id(&stray.user_id).await.expect("user_by_id"), None, "add_verification created a user");
}

pub async fn login_failures_lock_at_threshold(s: &Subject) {
    const THRESHOLD: u32 = 3;
    const LOCK: i64 = 600;
    let (user, _) = registered(s).await;
    let m = meta();
    let fail = |now| s.users.record_login_failure(&user.id, now, THRESHOLD, LOCK, &m);
    let counted = |user: User| LoginFailure { user, started_lock: false };

    let one = fail(T0).await.expect("failure 1");
    assert_eq!(one, counted(User { failed_logins: 1, meta: m.clone(), ..user.clone() }), "failure 1 only counts");
    let two = fail(T0 + 1).await.expect("failure 2");
    assert_eq!(two, counted(User { failed_logins: 2, meta: m.clone(), ..user.clone() }), "failure 2 only counts");

    let locked_at = T0 + 2;
    let until = locked_at + LOCK;
    let locked = fail(locked_at).await.expect("failure 3");
    assert_eq!(
        locked,
        LoginFailure {
            user: User { failed_logins: 0, locked_until: Some(until), meta: m.clone(), ..user.clone() },
            started_lock: true
        },
        "reaching the threshold locks until now + lock_secs, resets the count and says it started the lock"
    );
    let locked = locked.user;
    assert_eq!(stored_user(s, &user.id).await, locked, "record_login_failure returns the user as stored");

    // Hammering during the lock, up to its last second, changes nothing
    // (not even `meta`), and none of it started the lock (one mail a lock).
    let hammer = meta();
    for now in [locked_at, locked_at + 1, until - 1] {
        let during = s
            .users
            .record_login_failure(&user.id, now, THRESHOLD, LOCK, &hammer)
            .await
            .expect("failure during the lock");
        assert_eq!(during, counted(locked.clone()), "a failure at {now}, during the lock, changed the user");
    }
    assert_eq!(stored_user(s, &user.id).await, locked, "failures during the lock changed the stored user");

    // At `until` the lock has ended and counting starts again from zero.
    let after = fail(until).await.expect("first failure after the lock");
    assert!(!after.started_lock, "{after:?}");
    let after = after.user;
    assert_eq!(after.failed_logins, 1, "the count restarts from zero after a lock: {after:?}");
    assert!(!after.is_locked(until), "one failure after a lock locked again: {after:?}");
    // And the ended lock is cleared by that write, so the audit trail shows
    // the lock's end between two locks (on either backend).
    assert_eq!(after.locked_until, None, "an ended lock was left in place: {after:?}");
    assert_eq!(stored_user(s, &user.id).await, after);
    fail(until + 1).await.expect("second failure after the lock");
    let relocked = fail(until + 2).await.expect("third failure after the lock");
    assert!(relocked.started_lock, "{relocked:?}");
    assert_eq!(relocked.user.locked_until, Some(until + 2 + LOCK), "the threshold locks again: {relocked:?}");
    assert_eq!(relocked.user.failed_logins, 0);
}

/// A burst of wrong passwords past the threshold: one of them starts the
/// lock (and says so, so the owner is mailed once), the rest are counted
/// up to it or meet it.
pub async fn concurrent_login_failures_start_one_lock(s: &Subject) {
    const THRESHOLD: u32 = 10;
    let (user, _) = registered(s).await;
    let results = race(REGISTRATION_RACERS, |_| {
        let users = s.users.clone();
        let id = user.id;
        async move { users.record_login_failure(&id, T0, THRESHOLD, 900, &meta()).await }
    })
    .await;
    let failures: Vec<LoginFailure> = results.into_iter().map(|r| r.expect("record_login_failure")).collect();
    let started: Vec<&LoginFailure> = failures.iter().filter(|f| f.started_lock).collect();
    assert_eq!(started.len(), 1, "{} failures said they started the lock", started.len());
    assert_eq!(started[0].user.locked_until, Some(T0 + 900));
    assert_eq!(stored_user(s, &user.id).await, started[0].user, "the lock as it was started");
    let mut counts: Vec<u32> =
        failures.iter().filter(|f| !f.user.is_locked(T0)).map(|f| f.user.failed_logins).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..THRESHOLD).collect::<Vec<_>>(), "each count below the threshold once");
}
