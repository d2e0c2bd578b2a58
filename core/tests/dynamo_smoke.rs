//! The DynamoDB and SQS adapters against the emulator: the one named by
//! `LATCHKEY_TEST_AWS_ENDPOINT` (e.g. LocalStack), as every other emulator
//! test takes it, or else moto, started by `localstack/moto.sh start`, which
//! is idempotent and serialises DynamoDB requests, isolating writes as
//! DynamoDB does (see `localstack/moto_server.py`). Each test makes its own
//! tables under a random prefix, so tests run in any order and in parallel.
//!
//! These check the adapter-specific parts (transactions, conditions,
//! concurrency on a real wire protocol, call counts); the shared behaviour
//! suite in `latchkey_core::testing` checks the port contracts.

#![cfg(feature = "aws")]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use latchkey_core::StoreError;
use latchkey_core::adapters::aws_calls::{CallCounter, dynamo_client, sqs_client};
use latchkey_core::adapters::dynamo::{DynamoStore, ensure_tables, items};
use latchkey_core::adapters::sqs::{SqsMailQueue, ensure_queues};
use latchkey_core::clock::Timestamp;
use latchkey_core::domain::{
    Challenge, ChallengeId, Email, OtpRecord, RequestMeta, ResetLink, Session, SessionId, User, UserId, Username,
    VerificationRecord,
};
use latchkey_core::error::Conflict;
use latchkey_core::mail::{MailEnvelope, MailJob};
use latchkey_core::ports::{
    ChallengeStore, LimitKey, LockCheck, LoginFailure, MailQueue, OtpStore, RateLimiter, SessionStore, UserStore,
};
use latchkey_core::rng::OsSecureRng;
use std::sync::{LazyLock, OnceLock};

const NOW: Timestamp = 1_800_000_000;

/// The meta of the requests that modify records in these tests.
static META: LazyLock<RequestMeta> = LazyLock::new(|| RequestMeta {
    request_id: Some("req-update".into()),
    ip: Some("198.51.100.9".into()),
    user_agent: Some("dynamo-smoke".into()),
});

/// The emulator's endpoint: `$LATCHKEY_TEST_AWS_ENDPOINT` if set, else
/// moto's, starting it on first use. (`latchkey_tests::emulator_endpoint`
/// does the same for the other crates; it is built on core, the api and the
/// workers, which core's own tests do not pull in.)
fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("LATCHKEY_TEST_AWS_ENDPOINT")
            && !endpoint.trim().is_empty()
        {
            return endpoint.trim().to_string();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../localstack/moto.sh");
        let out = std::process::Command::new(script).arg("start").output().expect("run localstack/moto.sh start");
        assert!(out.status.success(), "moto.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).expect("utf-8 endpoint");
        url.trim().to_string()
    })
}

/// Region, credentials and endpoint set here, not read from the process
/// environment.
fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "dynamo_smoke",
        )))
        .endpoint_url(endpoint)
        .build()
}

fn prefix() -> String {
    format!("lk{}", uuid::Uuid::new_v4().simple())
}

struct Env {
    store: DynamoStore,
    counter: CallCounter,
    client: aws_sdk_dynamodb::Client,
    prefix: String,
}

async fn env() -> Env {
    let cfg = sdk_config(endpoint());
    let counter = CallCounter::new();
    let client = dynamo_client(&cfg, Some(&counter));
    let prefix = prefix();
    ensure_tables(&client, &prefix).await.expect("create tables");
    counter.take();
    Env { store: DynamoStore::new(client.clone(), &prefix), counter, client, prefix }
}

fn user(name: &str, email: &str) -> (User, VerificationRecord) {
    let user = User {
        id: UserId::random(&OsSecureRng),
        username: Username::parse(name).expect("username"),
        email: Email::parse(email).expect("email"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        verified: false,
        created_at: NOW,
        failed_logins: 0,
        locked_until: None,
        otp_failures: 0,
        verification_sent_at: Some(NOW),
        sessions_valid_after: None,
        password_reset_at: None,
        password_resets: 0,
        password_epoch: 0,
        email_changes: 0,
        meta: RequestMeta { request_id: Some("req-1".into()), ip: Some("203.0.113.7".into()), user_agent: None },
    };
    let token = VerificationRecord {
        token_hash: format!("tok-{}", uuid::Uuid::new_v4().simple()),
        user_id: user.id,
        created_at: NOW,
        expires_at: NOW + 86_400,
        used_at: None,
        meta: RequestMeta::default(),
    };
    (user, token)
}

fn unique(stem: &str) -> String {
    format!("{stem}{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn challenge(user: &User, code_hash: &str) -> Challenge {
    Challenge {
        id: ChallengeId::random(&OsSecureRng),
        user_id: user.id,
        code_hash: code_hash.into(),
        created_at: NOW,
        expires_at: NOW + 300,
        last_sent_at: NOW,
        resends: 0,
        failures: 0,
        attempts: 0,
        password_epoch: 0,
        used_at: None,
        meta: RequestMeta::default(),
    }
}

fn session(user: &User) -> Session {
    Session {
        id: SessionId::random(&OsSecureRng),
        user_id: user.id,
        refresh_hash: "r0".into(),
        created_at: NOW,
        refreshed_at: NOW,
        expires_at: NOW + 30 * 86_400,
        generation: 0,
        revoked_at: None,
        revoke_reason: None,
        valid_from: None,
        // As a session item written before the field existed.
        password_epoch: None,
        retry_seal: None,
        retries_answered: 0,
        meta: RequestMeta::default(),
    }
}

fn is_conflict(r: &Result<impl std::fmt::Debug, StoreError>, want: Conflict) -> bool {
    matches!(r, Err(StoreError::Conflict(c)) if *c == want)
}

async fn registered(env: &Env) -> (User, VerificationRecord) {
    let (u, v) = user(&unique("user"), &format!("{}@example.com", unique("mail")));
    env.store.create_user(&u, &v, i64::MIN).await.expect("create user");
    (u, v)
}

#[tokio::test]
async fn create_user_tells_username_from_email_conflicts_and_writes_nothing() {
    let env = env().await;
    let name = unique("alice");
    let email = format!("{}@example.com", unique("alice"));
    let (alice, token) = user(&name, &email);
    env.store.create_user(&alice, &token, i64::MIN).await.unwrap();

    assert_eq!(env.store.user_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(env.store.user_by_username(&alice.username).await.unwrap(), Some(alice.clone()));
    assert_eq!(env.store.user_by_email(&alice.email).await.unwrap(), Some(alice.clone()));
    assert_eq!(env.store.verification(&token.token_hash).await.unwrap(), Some(token.clone()));
    assert_eq!(env.store.user_by_username(&Username::parse(&unique("nobody")).unwrap()).await.unwrap(), None);
    assert_eq!(env.store.user_by_email(&Email::parse("nobody@example.com").unwrap()).await.unwrap(), None);

    // Same username (in another case), new email: the username is taken.
    let other_email = format!("{}@example.com", unique("bob"));
    let (bob, bob_token) = user(&name.to_uppercase(), &other_email);
    assert!(is_conflict(&env.store.create_user(&bob, &bob_token, i64::MIN).await, Conflict::UsernameTaken));
    // Both taken: the username is reported.
    let (both, both_token) = user(&name, &email);
    assert!(is_conflict(&env.store.create_user(&both, &both_token, i64::MIN).await, Conflict::UsernameTaken));
    // New username, same email.
    let other_name = unique("carol");
    let (carol, carol_token) = user(&other_name, &email.to_uppercase());
    assert!(is_conflict(&env.store.create_user(&carol, &carol_token, i64::MIN).await, Conflict::EmailTaken));

    // Nothing of the refused registrations was written but the hold on the
    // username tried with a taken email (as an account made with a free one
    // would hold it): no user, no token, no new email claimed.
    for (u, t) in [(&bob, &bob_token), (&both, &both_token), (&carol, &carol_token)] {
        assert_eq!(env.store.user_by_id(&u.id).await.unwrap(), None);
        assert_eq!(env.store.verification(&t.token_hash).await.unwrap(), None);
    }
    let (dave, dave_token) = user(&other_name, &other_email);
    assert!(is_conflict(&env.store.create_user(&dave, &dave_token, i64::MIN).await, Conflict::UsernameTaken));
    assert_eq!(env.store.user_by_username(&carol.username).await.unwrap(), None, "a hold is no account");
    let (dave, dave_token) = user(&unique("dave"), &other_email);
    env.store.create_user(&dave, &dave_token, i64::MIN).await.unwrap();
    assert_eq!(env.store.user_by_email(&dave.email).await.unwrap().map(|u| u.id), Some(dave.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_email_leave_one_account() {
    let env = env().await;
    let email = format!("{}@example.com", unique("race"));
    let attempts: Vec<_> = (0..20).map(|i| user(&format!("{}{i}", unique("racer")), &email)).collect();
    let results = join_all(attempts.iter().map(|(u, t)| env.store.create_user(u, t, i64::MIN))).await;

    let winners: Vec<_> = attempts.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|((u, _), _)| u).collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    assert!(
        results.iter().filter(|r| r.is_err()).all(|r| is_conflict(r, Conflict::EmailTaken)),
        "results: {results:?}"
    );
    assert_eq!(
        env.store.user_by_email(&Email::parse(&email).unwrap()).await.unwrap().map(|u| u.id),
        Some(winners[0].id)
    );
    // A loser's username is held as the winner's is, until the hold ends.
    let loser = attempts.iter().find(|(u, _)| u.id != winners[0].id).unwrap();
    let (again, again_token) = user(loser.0.username.as_str(), &format!("{}@example.com", unique("again")));
    assert!(is_conflict(&env.store.create_user(&again, &again_token, i64::MIN).await, Conflict::UsernameTaken));
    env.store.create_user(&again, &again_token, loser.0.created_at + 1).await.unwrap();
}

/// An item of the users table, as stored.
async fn users_item(env: &Env, pk: String) -> Option<std::collections::HashMap<String, AttributeValue>> {
    let out = env
        .client
        .get_item()
        .table_name(format!("{}-users", env.prefix))
        .key("pk", AttributeValue::S(pk))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    out.item
}

/// An unverified account and a username hold made with it carry the TTL
/// that deletes them 30 days (and the day of grace) after they were made;
/// verifying removes the account's, and an account's claims carry none.
#[tokio::test]
async fn unverified_accounts_and_holds_carry_a_ttl_that_verifying_removes() {
    let env = env().await;
    let (u, token) = registered(&env).await;
    let due = AttributeValue::N((NOW + User::UNVERIFIED_RETENTION_SECS + 86_400).to_string());
    let user_item = users_item(&env, items::user_pk(&u.id)).await.expect("the user");
    assert_eq!(user_item.get("ttl"), Some(&due));
    for claim in [items::username_claim_pk(u.username.as_str()), items::email_claim_pk(u.email.as_str())] {
        assert_eq!(users_item(&env, claim.clone()).await.expect("claim").get("ttl"), None, "{claim}");
    }
    // Refused for the taken email, a registration holds its username: the
    // hold goes when an account made with it would.
    let (held, held_token) = user(&unique("held"), u.email.as_str());
    assert!(is_conflict(&env.store.create_user(&held, &held_token, i64::MIN).await, Conflict::EmailTaken));
    let hold = users_item(&env, items::username_claim_pk(held.username.as_str())).await.expect("the hold");
    assert_eq!(hold.get("ttl"), Some(&due));

    env.store.consume_verification(&token, NOW + 5, &META).await.expect("verify");
    let user_item = users_item(&env, items::user_pk(&u.id)).await.expect("the user");
    assert_eq!(user_item.get("ttl"), None, "a verified account is kept");
    assert_eq!(user_item.get("verified"), Some(&AttributeValue::Bool(true)));
}

/// What DynamoDB's TTL does to an expired account: its item alone goes.
async fn ttl_deletes(env: &Env, user: &User) {
    env.client
        .delete_item()
        .table_name(format!("{}-users", env.prefix))
        .key("pk", AttributeValue::S(items::user_pk(&user.id)))
        .send()
        .await
        .expect("delete the user item");
}

/// When the TTL has deleted an unverified account and its claims are still
/// there (the stream processor releases them a moment later, or its record
/// was given up), a registration takes the names over, each only while it
/// still names the account that is gone; `release_names` then deletes only
/// the claims that still name it.
#[tokio::test]
async fn the_names_of_an_account_the_ttl_deleted_are_taken_over_and_released() {
    let env = env().await;
    let (gone, _) = registered(&env).await;
    let (other, _) = registered(&env).await;
    ttl_deletes(&env, &gone).await;

    // A registration that replaces nobody takes both names.
    let (again, again_token) = user(gone.username.as_str(), gone.email.as_str());
    assert_eq!(env.store.create_user(&again, &again_token, i64::MIN).await.expect("register"), Vec::<UserId>::new());
    assert_eq!(env.store.user_by_username(&gone.username).await.unwrap().map(|u| u.id), Some(again.id));
    // Its claims name the new account now: releasing the old one's names
    // deletes nothing.
    assert_eq!(env.store.release_names(&gone).await.expect("release"), 0);
    for claim in [items::username_claim_pk(gone.username.as_str()), items::email_claim_pk(gone.email.as_str())] {
        let item = users_item(&env, claim.clone()).await.expect("claim");
        assert_eq!(item.get("user_id"), Some(&AttributeValue::S(again.id.to_string())), "{claim}");
    }

    // Only the username's claim orphaned, the email taken by an account:
    // the username is taken over, the email is refused and held.
    ttl_deletes(&env, &again).await;
    let (third, third_token) = user(again.username.as_str(), other.email.as_str());
    assert!(is_conflict(&env.store.create_user(&third, &third_token, i64::MIN).await, Conflict::EmailTaken));
    let hold = users_item(&env, items::username_claim_pk(again.username.as_str())).await.expect("the hold");
    assert!(hold.contains_key("held_at") && !hold.contains_key("user_id"), "{hold:?}");
    // The email's orphaned claim is released; twice is once.
    assert_eq!(env.store.release_names(&again).await.expect("release"), 1);
    assert_eq!(users_item(&env, items::email_claim_pk(again.email.as_str())).await, None);
    assert_eq!(env.store.release_names(&again).await.expect("release"), 0);
    assert!(users_item(&env, items::username_claim_pk(again.username.as_str())).await.is_some(), "the hold stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verification_is_consumed_once() {
    let env = env().await;
    let (u, token) = registered(&env).await;

    let results = join_all((0..20).map(|_| env.store.consume_verification(&token, NOW + 10, &META))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "results: {results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| is_conflict(r, Conflict::Stale)));
    assert_eq!(results.iter().find_map(|r| r.as_ref().ok()), Some(&u.id));
    assert!(env.store.user_by_id(&u.id).await.unwrap().unwrap().verified);
    assert_eq!(env.store.verification(&token.token_hash).await.unwrap().unwrap().used_at, Some(NOW + 10));

    // Expired: refused, and the user stays unverified.
    let (v, expired) = registered(&env).await;
    assert!(is_conflict(&env.store.consume_verification(&expired, expired.expires_at, &META).await, Conflict::Stale));
    assert!(!env.store.user_by_id(&v.id).await.unwrap().unwrap().verified);
    assert!(is_conflict(
        &env.store
            .consume_verification(
                &VerificationRecord { token_hash: "no-such-token".into(), ..token.clone() },
                NOW,
                &META
            )
            .await,
        Conflict::Stale
    ));
}

#[tokio::test]
async fn add_verification_honours_the_cooldown() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let fresh = |at: Timestamp| VerificationRecord {
        token_hash: unique("tok"),
        user_id: u.id,
        created_at: at,
        expires_at: at + 86_400,
        used_at: None,
        meta: RequestMeta::default(),
    };
    let early = fresh(NOW + 59);
    assert!(is_conflict(&env.store.add_verification(&early, NOW + 59, 60, &META).await, Conflict::Stale));
    assert_eq!(env.store.verification(&early.token_hash).await.unwrap(), None);
    let late = fresh(NOW + 60);
    env.store.add_verification(&late, NOW + 60, 60, &META).await.unwrap();
    assert_eq!(env.store.verification(&late.token_hash).await.unwrap(), Some(late.clone()));
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().verification_sent_at, Some(NOW + 60));
    // Verified users get no more tokens.
    env.store.consume_verification(&late, NOW + 61, &META).await.unwrap();
    assert!(is_conflict(&env.store.add_verification(&fresh(NOW + 999), NOW + 999, 60, &META).await, Conflict::Stale));
}

#[tokio::test]
async fn login_failures_lock_at_the_threshold_and_never_extend_the_lock() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let fail = |now| env.store.record_login_failure(&u.id, now, 3, 900, &META);

    assert_eq!(fail(NOW).await.unwrap().user.failed_logins, 1);
    // Give the account some code failures: the lock leaves them (only a
    // right code or a password reset gives the budget back).
    let c = challenge(&u, "h");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    env.store.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap();
    assert_eq!(fail(NOW + 1).await.unwrap().user.failed_logins, 2);
    let LoginFailure { user: locked, started_lock } = fail(NOW + 2).await.unwrap();
    assert!(started_lock);
    assert_eq!((locked.locked_until, locked.failed_logins, locked.otp_failures), (Some(NOW + 902), 0, 1));
    // Hammering during the lock changes nothing.
    assert_eq!(fail(NOW + 500).await.unwrap(), LoginFailure { user: locked.clone(), started_lock: false });
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap(), locked);
    // After the lock the count starts again from 0.
    let after = fail(NOW + 902).await.unwrap().user;
    assert_eq!(after.failed_logins, 1);
    assert!(!after.is_locked(NOW + 902));

    // A correct password (a new challenge, after the lock) resets the count.
    let later = Challenge { created_at: NOW + 903, ..challenge(&u, "h2") };
    env.store.create_challenge(&later, LockCheck::Unlocked { reset_failures: true }, &META).await.unwrap();
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().failed_logins, 0);

    // Threshold 1 locks at once.
    let (w, _) = registered(&env).await;
    assert_eq!(
        env.store.record_login_failure(&w.id, NOW, 1, 60, &META).await.unwrap().user.locked_until,
        Some(NOW + 60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_login_failures_lock_exactly_once() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let results = join_all((0..20).map(|_| env.store.record_login_failure(&u.id, NOW, 10, 900, &META))).await;
    let failures: Vec<LoginFailure> = results.into_iter().map(|r| r.unwrap()).collect();
    let after = env.store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(after.locked_until, Some(NOW + 900));
    assert_eq!(after.failed_logins, 0);
    // One of them started the lock: the owner is mailed once.
    assert_eq!(failures.iter().filter(|f| f.started_lock).count(), 1);
    let users: Vec<User> = failures.into_iter().map(|f| f.user).collect();
    // Ten failures counted (1..=9, then the lock), ten more hit the lock.
    let mut counts: Vec<u32> = users.iter().filter(|u| !u.is_locked(NOW)).map(|u| u.failed_logins).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=9).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeem_challenge_has_a_single_winner() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let c = challenge(&u, "right");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    assert_eq!(env.store.challenge(&c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(
        env.store.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap().failures,
        1
    );
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, 1);

    let s = session(&u);
    assert!(is_conflict(
        &env.store.redeem_challenge(&c.id, "wrong", NOW + 1, 6, u32::MAX, c.password_epoch, &s, &META).await,
        Conflict::Stale
    ));
    assert!(is_conflict(
        &env.store.redeem_challenge(&c.id, "right", c.expires_at, 6, u32::MAX, c.password_epoch, &s, &META).await,
        Conflict::Stale
    ));
    assert!(is_conflict(
        &env.store.redeem_challenge(&c.id, "right", NOW + 1, 1, u32::MAX, c.password_epoch, &s, &META).await,
        Conflict::Stale
    ));
    assert_eq!(env.store.session(&s.id).await.unwrap(), None);

    let sessions: Vec<Session> = (0..20).map(|_| session(&u)).collect();
    let results = join_all(
        sessions
            .iter()
            .map(|s| env.store.redeem_challenge(&c.id, "right", NOW + 1, 6, u32::MAX, c.password_epoch, s, &META)),
    )
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "results: {results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| is_conflict(r, Conflict::Stale)));
    let mut stored = Vec::new();
    for s in &sessions {
        stored.extend(env.store.session(&s.id).await.unwrap());
    }
    assert_eq!(stored.len(), 1);
    let winner = sessions.iter().zip(&results).find(|(_, r)| r.is_ok()).unwrap().0;
    assert_eq!(&stored[0], winner);
    assert_eq!(env.store.challenge(&c.id).await.unwrap().unwrap().used_at, Some(NOW + 1));
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, 0);
    // A used challenge takes no more failures.
    assert!(is_conflict(
        &env.store.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await,
        Conflict::Stale
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn challenge_failures_never_pass_the_cap() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let c = challenge(&u, "right");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();

    let results = join_all(
        (0..20).map(|_| env.store.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META)),
    )
    .await;
    let mut ok: Vec<u32> = results.iter().filter_map(|r| r.as_ref().ok().map(|f| f.failures)).collect();
    ok.sort_unstable();
    assert_eq!(ok, [1, 2, 3, 4, 5, 6], "each wrong code gets its own count: {results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| is_conflict(r, Conflict::Stale)));
    assert_eq!(env.store.challenge(&c.id).await.unwrap().unwrap().failures, 6);
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, 6);
    // At the cap the right code no longer redeems.
    assert!(is_conflict(
        &env.store.redeem_challenge(&c.id, "right", NOW + 1, 6, u32::MAX, c.password_epoch, &session(&u), &META).await,
        Conflict::Stale
    ));
}

#[tokio::test]
async fn replace_challenge_code_keeps_failures_and_honours_its_guards() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let c = challenge(&u, "first");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    env.store.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap();

    // Each resend's code is new (the adapter tells its own write by it).
    let replace = |code_hash: &'static str, now: Timestamp, max_resends| {
        env.store.replace_challenge_code(&c.id, code_hash, now + 300, now, 60, max_resends, 6, &META)
    };
    assert!(is_conflict(&replace("second", NOW + 59, 3).await, Conflict::Stale), "within the cooldown");
    replace("second", NOW + 60, 3).await.unwrap();
    let after = env.store.challenge(&c.id).await.unwrap().unwrap();
    assert_eq!(
        (after.code_hash.as_str(), after.expires_at, after.last_sent_at, after.resends, after.failures),
        ("second", NOW + 360, NOW + 60, 1, 1)
    );
    assert!(is_conflict(&replace("third", NOW + 120, 1).await, Conflict::Stale), "out of resends");
    // The old code is dead, the new one redeems.
    assert!(is_conflict(
        &env.store
            .redeem_challenge(&c.id, "first", NOW + 121, 6, u32::MAX, c.password_epoch, &session(&u), &META)
            .await,
        Conflict::Stale
    ));
    env.store
        .redeem_challenge(&c.id, "second", NOW + 121, 6, u32::MAX, c.password_epoch, &session(&u), &META)
        .await
        .unwrap();
    assert!(is_conflict(&replace("fourth", NOW + 500, 3).await, Conflict::Stale), "used");
}

#[tokio::test]
async fn sessions_rotate_once_and_revoke_idempotently() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let c = challenge(&u, "h");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    let s = session(&u);
    env.store.redeem_challenge(&c.id, "h", NOW + 1, 6, u32::MAX, c.password_epoch, &s, &META).await.unwrap();

    env.store.rotate_session(&s.id, "r0", "r1", "s1", NOW + 2, &META).await.unwrap();
    assert!(is_conflict(&env.store.rotate_session(&s.id, "r0", "r2", "s2", NOW + 3, &META).await, Conflict::Stale));
    let got = env.store.session(&s.id).await.unwrap().unwrap();
    assert_eq!((got.refresh_hash.as_str(), got.refreshed_at, got.generation), ("r1", NOW + 2, 1));

    env.store.revoke_session(&s.id, NOW + 4, "logout", &META).await.unwrap();
    env.store.revoke_session(&s.id, NOW + 5, "refresh_reuse", &META).await.unwrap();
    let got = env.store.session(&s.id).await.unwrap().unwrap();
    assert_eq!((got.revoked_at, got.revoke_reason.as_deref()), (Some(NOW + 4), Some("logout")));
    assert!(is_conflict(&env.store.rotate_session(&s.id, "r1", "r2", "s2", NOW + 6, &META).await, Conflict::Stale));

    // Unknown: Ok, and no phantom item appears.
    let ghost = SessionId::random(&OsSecureRng);
    env.store.revoke_session(&ghost, NOW, "logout", &META).await.unwrap();
    assert_eq!(env.store.session(&ghost).await.unwrap(), None);
}

/// A code `c1` for `addr`, sent at `NOW`, nothing counted yet.
fn fresh_otp(addr: &str) -> OtpRecord {
    OtpRecord {
        address_hash: addr.to_string(),
        code_hash: "c1".into(),
        created_at: NOW,
        expires_at: NOW + 600,
        last_sent_at: NOW,
        failures: 0,
        attempts: 0,
        budget_failures: 0,
        used_at: None,
        meta: RequestMeta::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn otp_codes_are_single_use_and_capped() {
    let env = env().await;
    let addr = unique("addr");
    let rec = fresh_otp(&addr);
    env.store.put_otp(&rec, None).await.unwrap();
    assert!(is_conflict(&env.store.put_otp(&rec, None).await, Conflict::Stale));
    assert!(is_conflict(
        &env.store.put_otp(&rec, Some(&OtpRecord { last_sent_at: NOW - 1, ..rec.clone() })).await,
        Conflict::Stale
    ));
    assert_eq!(env.store.otp(&addr).await.unwrap(), Some(rec.clone()));

    let results = join_all((0..20).map(|_| env.store.record_otp_failure(&addr, 6, 100, &META))).await;
    let mut ok: Vec<u32> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    ok.sort_unstable();
    assert_eq!(ok, vec![1, 2, 3, 4, 5, 6], "each increment returns its own count");
    assert!(is_conflict(&env.store.redeem_otp(&addr, "c1", NOW + 1, 6, 100, &META).await, Conflict::Stale));

    // A new code (replacing on the expected last_sent_at) redeems once.
    let next = OtpRecord { code_hash: "c2".into(), last_sent_at: NOW + 60, failures: 0, ..rec.clone() };
    env.store.put_otp(&next, Some(&OtpRecord { failures: 6, ..rec.clone() })).await.unwrap();
    assert!(is_conflict(&env.store.redeem_otp(&addr, "c1", NOW + 61, 6, 100, &META).await, Conflict::Stale));
    assert!(
        is_conflict(&env.store.redeem_otp(&addr, "c2", NOW + 600, 6, 100, &META).await, Conflict::Stale),
        "expired"
    );
    let results = join_all((0..20).map(|_| env.store.redeem_otp(&addr, "c2", NOW + 61, 6, 100, &META))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "results: {results:?}");
    assert_eq!(env.store.otp(&addr).await.unwrap().unwrap().used_at, Some(NOW + 61));
    assert!(is_conflict(&env.store.record_otp_failure(&addr, 6, 100, &META).await, Conflict::Stale));
    assert!(is_conflict(&env.store.record_otp_failure("no-such-address", 6, 100, &META).await, Conflict::Stale));
    assert_eq!(env.store.otp("no-such-address").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limiter_refuses_after_the_limit_and_counts_nothing_when_refusing() {
    let env = env().await;
    let ip = LimitKey { key: format!("login:ip:{}", unique("ip")), limit: 3, window_secs: 60 };
    let id = LimitKey { key: format!("login:id:{}", unique("id")), limit: 10, window_secs: 3600 };
    // 25 s into a minute window, 1825 s into an hour window.
    let now = NOW - NOW.rem_euclid(3600) + 1825;
    let both = [ip.clone(), id.clone()];

    for _ in 0..3 {
        assert_eq!(env.store.hit(&both, now).await.unwrap(), None);
    }
    assert_eq!(env.store.hit(&both, now).await.unwrap(), Some(35), "the minute window ends in 35 s");
    assert_eq!(env.store.hit(&both, now + 34).await.unwrap(), Some(1));
    // The refusals counted nothing on the other key: 7 more fit.
    for _ in 0..7 {
        assert_eq!(env.store.hit(std::slice::from_ref(&id), now + 35).await.unwrap(), None);
    }
    assert_eq!(env.store.hit(std::slice::from_ref(&id), now + 35).await.unwrap(), Some(3600 - 1860));
    // A new minute: the ip key fills up again; then both refuse and the
    // longer wait wins.
    for _ in 0..3 {
        assert_eq!(env.store.hit(std::slice::from_ref(&ip), now + 35).await.unwrap(), None);
    }
    assert_eq!(env.store.hit(std::slice::from_ref(&ip), now + 35).await.unwrap(), Some(60));
    assert_eq!(env.store.hit(&both, now + 35).await.unwrap(), Some(1740));
    assert_eq!(env.store.hit(&[], now).await.unwrap(), None);
    let zero = LimitKey { key: unique("zero"), limit: 0, window_secs: 60 };
    assert!(env.store.hit(&[zero], now).await.unwrap().is_some());

    // Concurrent hits never pass the limit.
    let burst = LimitKey { key: unique("burst"), limit: 5, window_secs: 60 };
    let results = join_all((0..20).map(|_| env.store.hit(std::slice::from_ref(&burst), now))).await;
    let allowed = results.iter().filter(|r| matches!(r, Ok(None))).count();
    assert_eq!(allowed, 5, "results: {results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(None) | Ok(Some(35)))), "results: {results:?}");
}

#[tokio::test]
async fn call_counter_sees_one_round_trip_per_store_call() {
    let env = env().await;
    let (u, token) = user(&unique("count"), &format!("{}@example.com", unique("count")));
    env.store.create_user(&u, &token, i64::MIN).await.unwrap();
    assert_eq!(env.counter.take(), ["dynamodb:TransactWriteItems"]);
    env.store.user_by_email(&u.email).await.unwrap();
    env.store.user_by_username(&u.username).await.unwrap();
    env.store.user_by_id(&u.id).await.unwrap();
    assert_eq!(env.counter.snapshot(), ["dynamodb:Query", "dynamodb:Query", "dynamodb:GetItem"]);
    env.counter.take();
    env.store.consume_verification(&token, NOW + 1, &META).await.unwrap();
    // The caller's read of the token is not repeated.
    assert_eq!(env.counter.take(), ["dynamodb:TransactWriteItems"]);
    let key = LimitKey { key: unique("k"), limit: 2, window_secs: 60 };
    env.store.hit(&[key], NOW).await.unwrap();
    assert_eq!(env.counter.take(), ["dynamodb:TransactWriteItems"]);
    assert!(env.counter.snapshot().is_empty());
}

#[tokio::test]
async fn ensure_tables_is_idempotent_and_sets_ttl_and_streams() {
    let env = env().await;
    ensure_tables(&env.client, &env.prefix).await.unwrap();
    let tokens = format!("{}-tokens", env.prefix);
    let ttl = env.client.describe_time_to_live().table_name(&tokens).send().await.unwrap();
    assert_eq!(ttl.time_to_live_description.and_then(|d| d.attribute_name), Some("ttl".to_string()));
    let users =
        env.client.describe_table().table_name(format!("{}-users", env.prefix)).send().await.unwrap().table.unwrap();
    let mut gsis: Vec<_> = users.global_secondary_indexes().iter().filter_map(|g| g.index_name()).collect();
    gsis.sort_unstable();
    assert_eq!(gsis, ["by_email", "by_username"]);
    assert!(users.latest_stream_arn().is_some());
}

#[tokio::test]
async fn sqs_queue_carries_the_job_and_its_attributes() {
    let cfg = sdk_config(endpoint());
    let counter = CallCounter::new();
    let client = sqs_client(&cfg, Some(&counter));
    let prefix = prefix();
    let (url, dlq_url) = ensure_queues(&client, &prefix).await.unwrap();
    assert_eq!(ensure_queues(&client, &prefix).await.unwrap(), (url.clone(), dlq_url.clone()), "idempotent");
    assert!(url.ends_with(&format!("{prefix}-mail")) && dlq_url.ends_with(&format!("{prefix}-mail-dlq")));
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["maxReceiveCount"].as_u64(), Some(5));
    assert!(redrive["deadLetterTargetArn"].as_str().unwrap().ends_with(&format!("{prefix}-mail-dlq")));

    let queue = SqsMailQueue::new(client.clone(), url.clone());
    let job = MailEnvelope::new(
        unique("job"),
        &Email::parse("to@example.com").unwrap(),
        NOW,
        Some("req-9".into()),
        Some("user-9".into()),
        MailJob::LoginCode {
            username: "alice".into(),
            code: latchkey_core::domain::Secret::new("493817".into()),
            expires_minutes: 5,
        },
    );
    counter.take();
    queue.enqueue(&job).await.unwrap();
    assert_eq!(counter.take(), ["sqs:SendMessage"]);

    let got = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .max_number_of_messages(1)
        .send()
        .await
        .unwrap();
    let msg = &got.messages()[0];
    assert_eq!(MailEnvelope::from_json(msg.body().unwrap()).unwrap(), job);
    let attrs = msg.message_attributes().unwrap();
    assert_eq!(attrs["kind"].string_value(), Some("login_code"));
    assert_eq!(attrs["job_id"].string_value(), Some(job.id.as_str()));
    assert!(
        attrs.values().all(|v| !v.string_value().unwrap_or_default().contains("493817")),
        "the code stays in the body"
    );
}

/// A user item written before `password_epoch` existed (no attribute) is at
/// epoch 0: its codes count; a change gives it 1 (ADD on a missing
/// attribute), and then a code of the login from before is refused.
#[tokio::test]
async fn a_user_without_a_password_epoch_is_at_zero_until_a_change() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    env.client
        .update_item()
        .table_name(format!("{}-users", env.prefix))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("USER#{}", u.id)))
        .update_expression("REMOVE password_epoch")
        .send()
        .await
        .expect("remove the attribute");
    let item = env
        .client
        .get_item()
        .table_name(format!("{}-users", env.prefix))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("USER#{}", u.id)))
        .send()
        .await
        .expect("read the item")
        .item
        .expect("the user item");
    assert!(item.contains_key("username") && !item.contains_key("password_epoch"), "{item:?}");
    let before = challenge(&u, "before");
    env.store.create_challenge(&before, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    assert_eq!(env.store.record_challenge_failure(&before.id, &u.id, 6, u32::MAX, 0, &META).await.unwrap().failures, 1);
    let live = challenge(&u, "live");
    env.store.create_challenge(&live, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    env.store.redeem_challenge(&live.id, "live", NOW + 1, 6, u32::MAX, 0, &session(&u), &META).await.unwrap();

    let s = session(&u);
    let keep = challenge(&u, "keep");
    env.store.create_challenge(&keep, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    env.store.redeem_challenge(&keep.id, "keep", NOW + 1, 6, u32::MAX, 0, &s, &META).await.unwrap();
    assert_eq!(env.store.session(&s.id).await.unwrap().unwrap().password_epoch, None);
    env.store.change_password(&u.id, &u.password_hash, 0, "$argon2id$changed", &s.id, NOW + 5, &META).await.unwrap();
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().password_epoch, 1);
    // The session that made the change is at the new epoch.
    assert_eq!(env.store.session(&s.id).await.unwrap().unwrap().password_epoch, Some(1));
    assert!(is_conflict(
        &env.store.record_challenge_failure(&before.id, &u.id, 6, u32::MAX, 0, &META).await,
        Conflict::Stale
    ));
    assert!(is_conflict(
        &env.store.redeem_challenge(&before.id, "before", NOW + 6, 6, u32::MAX, 0, &session(&u), &META).await,
        Conflict::Stale
    ));
}

/// A standalone code item written before `budget_failures` existed (no
/// attribute) has spent none of its address's budget: a wrong code counts
/// (ADD on a missing attribute gives 1), and the right one is accepted and
/// gives it back.
#[tokio::test]
async fn an_otp_without_a_budget_count_has_spent_none() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = env().await;
    let addr = unique("legacy");
    let rec = fresh_otp(&addr);
    env.store.put_otp(&rec, None).await.unwrap();
    let strip = || {
        env.client
            .update_item()
            .table_name(format!("{}-tokens", env.prefix))
            .key("pk", AttributeValue::S(format!("OTP#{addr}")))
            .update_expression("REMOVE budget_failures")
            .send()
    };
    strip().await.expect("remove the attribute");
    assert_eq!(env.store.otp(&addr).await.unwrap().unwrap().budget_failures, 0);
    assert_eq!(env.store.record_otp_failure(&addr, 6, 1, &META).await.unwrap(), 1);
    let counted = env.store.otp(&addr).await.unwrap().unwrap();
    assert_eq!((counted.failures, counted.budget_failures), (1, 1));
    assert!(is_conflict(&env.store.record_otp_failure(&addr, 6, 1, &META).await, Conflict::Stale), "budget of 1");
    assert!(is_conflict(&env.store.redeem_otp(&addr, "c1", NOW + 1, 6, 1, &META).await, Conflict::Stale));
    strip().await.expect("remove the attribute");
    env.store.redeem_otp(&addr, "c1", NOW + 1, 6, 1, &META).await.expect("no count: nothing spent");
    let used = env.store.otp(&addr).await.unwrap().unwrap();
    assert_eq!((used.used_at, used.budget_failures), (Some(NOW + 1), 0));
}

/// Deletes `subject`'s audit head item, as DynamoDB's TTL would once it
/// expired.
async fn expire_audit_head(env: &Env, subject: &str) {
    env.client
        .delete_item()
        .table_name(format!("{}-audit", env.prefix))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("SUBJ#{subject}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("HEAD".into()))
        .send()
        .await
        .expect("the head expires");
}

/// The audit store of `env`, an audit key and a new subject: what each
/// audit test starts from.
fn audit_trail(
    env: &Env,
) -> (latchkey_core::adapters::dynamo::audit::DynamoAuditStore, latchkey_core::keys::AuditKey, String) {
    let audit = latchkey_core::adapters::dynamo::audit::DynamoAuditStore::new(env.client.clone(), &env.prefix);
    let key = latchkey_core::keys::AuditKey::new(vec![5; 32]).expect("a key");
    (audit, key, UserId::random(&OsSecureRng).to_string())
}

/// The `i`-th audit event of `subject`, `i` seconds after `NOW`.
fn code_verified(subject: &str, i: u32) -> latchkey_core::audit::AuditEvent {
    use latchkey_core::audit::{AuditEvent, AuditEventType, Outcome};
    AuditEvent {
        event_id: format!("{subject}-{i}"),
        subject: subject.to_string(),
        event: AuditEventType::CodeVerified,
        at: NOW + i64::from(i),
        outcome: Outcome::Success,
        reason: None,
        attempts_left: None,
        request_id: None,
        ip: None,
        user_agent: None,
    }
}

/// TTL deletes in no order and up to days late, so a subject's chain head
/// can go before its records: the next append goes on from the last record
/// (no collision with a live one, no break in the chain) instead of
/// restarting at 1 and failing on every try.
#[tokio::test]
async fn an_audit_chain_whose_head_expired_goes_on_from_its_last_record() {
    use latchkey_core::audit::{AuditStore, verify_chain};
    let env = env().await;
    let (audit, key, subject) = audit_trail(&env);
    let event = |i: u32| code_verified(&subject, i);
    for i in 1..=2 {
        assert!(audit.append(&key, &event(i), NOW + 86_400).await.expect("append").is_some());
    }
    expire_audit_head(&env, &subject).await;
    let head = audit.append(&key, &event(3), NOW + 86_400).await.expect("an append after the head expired");
    let chain = audit.chain(&subject).await.expect("chain");
    assert_eq!(chain.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(head, Some(latchkey_core::audit::AuditHead::of(&chain[2])), "an append answers the head it made");
    assert_eq!(audit.append(&key, &event(3), NOW + 86_400).await.expect("append again"), None, "already there");
    verify_chain(&key, &subject, &chain).expect("intact");
    assert!(audit.append(&key, &event(4), NOW + 86_400).await.expect("the head is back").is_some());
}

/// Appends racing on one subject (stream shards of different tables, and a
/// record delivered twice at once) make one chain: every number once, in a
/// row, each event once however often it was sent, the day's count once
/// per event; each event's first append answers its head, its copy None.
#[tokio::test]
async fn concurrent_audit_appends_to_one_subject_make_one_chain() {
    use latchkey_core::audit::{AuditStore, day_of, verify_chain};
    const EVENTS: u32 = 6;
    let env = env().await;
    let (audit, key, subject) = audit_trail(&env);
    let sends: Vec<u32> = (1..=EVENTS).chain(1..=EVENTS).collect();
    let answers = join_all(sends.iter().map(|&i| {
        let (audit, key, event) = (&audit, &key, code_verified(&subject, i));
        async move { (i, audit.append(key, &event, NOW + 86_400).await.expect("a racing append")) }
    }))
    .await;
    let chain = audit.chain(&subject).await.expect("chain");
    assert_eq!(chain.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=u64::from(EVENTS)).collect::<Vec<_>>());
    verify_chain(&key, &subject, &chain).expect("one intact chain");
    let mut ids: Vec<&str> = chain.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    let mut sent: Vec<String> = (1..=EVENTS).map(|i| code_verified(&subject, i).event_id).collect();
    sent.sort_unstable();
    assert_eq!(ids, sent, "each event once");
    for i in 1..=EVENTS {
        let heads: Vec<_> = answers.iter().filter(|(j, _)| *j == i).map(|(_, h)| h.clone()).collect();
        let made: Vec<_> = heads.iter().flatten().collect();
        assert_eq!(made.len(), 1, "event {i}: one append made it, one found it there: {heads:?}");
        let record = chain.iter().find(|r| r.event_id == code_verified(&subject, i).event_id).expect("its record");
        assert_eq!(*made[0], latchkey_core::audit::AuditHead::of(record), "event {i}: the head it answered");
    }
    let days = day_of(NOW + 1)..=day_of(NOW + i64::from(EVENTS));
    let stats = audit.stats(*days.start(), *days.end(), NOW).await.expect("stats");
    assert_eq!(stats.iter().map(|c| c.count).sum::<u64>(), u64::from(EVENTS), "{stats:?}");
}

/// A record of a type a newer stream processor wrote (read during a deploy,
/// or after a rollback) is listed, counted and verified by its name, and an
/// append after it goes on from it, also when it is the last record and the
/// head has expired.
#[tokio::test]
async fn an_audit_type_this_build_does_not_know_reads_by_its_name() {
    use latchkey_core::audit::{AuditEvent, AuditEventType, AuditStore, day_of, verify_chain};
    let env = env().await;
    let (audit, key, subject) = audit_trail(&env);
    let newer = AuditEventType::from_stored("passkey_added").expect("a well-formed name");
    assert!(audit.append(&key, &code_verified(&subject, 1), NOW + 86_400).await.expect("append").is_some());
    let later = AuditEvent { event: newer, ..code_verified(&subject, 2) };
    assert!(audit.append(&key, &later, NOW + 86_400).await.expect("append").is_some());
    expire_audit_head(&env, &subject).await;
    assert!(audit.append(&key, &code_verified(&subject, 3), NOW + 86_400).await.expect("append").is_some());
    let page = audit.list(&subject, None, 10, NOW).await.expect("a page");
    let kinds: Vec<&str> = page.records.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(kinds, ["code_verified", "passkey_added", "code_verified"]);
    verify_chain(&key, &subject, &audit.chain(&subject).await.expect("chain")).expect("intact");
    let stats = audit.stats(day_of(NOW), day_of(NOW), NOW).await.expect("stats");
    assert!(stats.iter().any(|c| c.event == newer && c.count >= 1), "{stats:?}");
}

/// A day's count lives until the latest-expiring record it counts: an
/// append whose record expires sooner (another subject's, appended later,
/// as stream shards go in no order) leaves the counter's TTL where it is,
/// and still counts.
#[tokio::test]
async fn a_day_count_outlives_a_later_append_that_expires_sooner() {
    use latchkey_core::audit::{AuditEventType, AuditStore, DayCount, day_of};
    let env = env().await;
    let (audit, key, first) = audit_trail(&env);
    let (_, _, second) = audit_trail(&env);
    let (_, _, third) = audit_trail(&env);
    assert!(audit.append(&key, &code_verified(&first, 1), NOW + 2 * 86_400).await.expect("append").is_some());
    assert!(audit.append(&key, &code_verified(&second, 2), NOW + 3600).await.expect("append").is_some());
    let day = day_of(NOW);
    let count = |now| {
        let audit = audit.clone();
        async move { audit.stats(day, day, now).await.expect("stats") }
    };
    let counted = |n| vec![DayCount { day, event: AuditEventType::CodeVerified, count: n }];
    assert_eq!(count(NOW + 7200).await, counted(2), "the sooner expiry did not end the day's count");
    // A later expiry moves it on.
    assert!(audit.append(&key, &code_verified(&third, 3), NOW + 3 * 86_400).await.expect("append").is_some());
    assert_eq!(count(NOW + 2 * 86_400 + 1).await, counted(3));
    assert_eq!(count(NOW + 3 * 86_400).await, vec![], "gone with its latest record");
}

/// Once armed with an operation, turns the answer to its next call into a
/// 500, as if it were lost after DynamoDB applied the request: the SDK
/// sends it again.
#[derive(Debug, Clone, Default)]
struct LoseAnswer {
    armed: std::sync::Arc<std::sync::Mutex<Option<&'static str>>>,
}

impl LoseAnswer {
    fn arm(&self, operation: &'static str) {
        *self.armed.lock().expect("not poisoned") = Some(operation);
    }
    fn fired(&self) -> bool {
        self.armed.lock().expect("not poisoned").is_none()
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for LoseAnswer {
    fn name(&self) -> &'static str {
        "dynamo_smoke::LoseAnswer"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<
            '_,
        >,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_smithy_runtime_api::client::orchestrator::Metadata;
        let mut armed = self.armed.lock().map_err(|_| "poisoned")?;
        if cfg.load::<Metadata>().is_some_and(|m| Some(m.name()) == *armed) {
            *armed = None;
            let response = context.response_mut();
            *response.status_mut() = aws_smithy_runtime_api::http::StatusCode::try_from(500u16)?;
            *response.body_mut() = aws_smithy_types::body::SdkBody::from(
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"answer lost (test)"}"#,
            );
        }
        Ok(())
    }
}

/// A DynamoDB client whose answer to the next call of an operation is lost
/// once armed with it, and which retries as the deployed clients do.
fn losing_client(env: &Env) -> (aws_sdk_dynamodb::Client, LoseAnswer) {
    let lose = LoseAnswer::default();
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(std::time::Duration::from_millis(10));
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk_config(endpoint()))
        .retry_config(retry)
        .interceptor(lose.clone())
        .build();
    let _ = env;
    (aws_sdk_dynamodb::Client::from_conf(conf), lose)
}

/// The SDK sends a write again when its answer is lost; a conditional write
/// whose first send was applied is then refused by its own result. A
/// refresh must not read that as a reuse (it would revoke the session), a
/// reset not as a used link (the owner would not be told), a mail claim not
/// as another worker's lease (the code would wait out the lease).
#[tokio::test]
async fn a_write_whose_answer_was_lost_is_recognised_when_sent_again() {
    use latchkey_core::adapters::dynamo::DynamoMailLedger;
    use latchkey_core::mail::delivery::{Claim, JobMeta, MailLedger};
    let env = env().await;
    let (client, lose) = losing_client(&env);
    let store = DynamoStore::new(client.clone(), &env.prefix);

    let (u, _) = registered(&env).await;
    let s = session(&u);
    let c = challenge(&u, "code");
    env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    env.store.redeem_challenge(&c.id, "code", NOW + 1, 6, u32::MAX, 0, &s, &META).await.unwrap();
    lose.arm("UpdateItem");
    store.rotate_session(&s.id, &s.refresh_hash, "r1", "s1", NOW + 2, &META).await.expect("a rotation sent twice");
    assert!(lose.fired());
    let rotated = env.store.session(&s.id).await.unwrap().unwrap();
    assert_eq!((rotated.refresh_hash.as_str(), rotated.generation, rotated.revoked_at), ("r1", 1, None));
    // A rotation from a hash that is gone is still refused.
    assert!(is_conflict(
        &store.rotate_session(&s.id, &s.refresh_hash, "r2", "s2", NOW + 3, &META).await,
        Conflict::Stale
    ));

    lose.arm("UpdateItem");
    store
        .reset_password(
            &u.id,
            ResetLink { issued_at: NOW, resets: 0, email_changes: 0 },
            0,
            "$argon2id$reset-once",
            NOW + 4,
            &META,
        )
        .await
        .expect("a reset sent twice");
    assert!(lose.fired());
    let after = env.store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(
        (after.password_hash.as_str(), after.password_epoch, after.password_resets),
        ("$argon2id$reset-once", 1, 1)
    );
    // The same link again is still refused.
    assert!(is_conflict(
        &store
            .reset_password(
                &u.id,
                ResetLink { issued_at: NOW, resets: 0, email_changes: 0 },
                1,
                "$argon2id$again",
                NOW + 5,
                &META
            )
            .await,
        Conflict::Stale
    ));

    let ledger = DynamoMailLedger::new(client, &env.prefix);
    let job = JobMeta { id: unique("job"), kind: "login_code", to: "a@example.com".into(), subject: None };
    lose.arm("UpdateItem");
    assert_eq!(ledger.claim(&job, NOW, 300).await.unwrap(), Claim::Claimed, "a claim sent twice");
    assert!(lose.fired());
    // Another claim within the lease is still refused.
    assert!(matches!(ledger.claim(&job, NOW + 1, 300).await.unwrap(), Claim::Busy { .. }));
}

/// A park by a delivery without the claim leaves another's live claim alone
/// (that delivery may be sending the mail now); the holder parks it, and so
/// does anyone once the lease has ended.
#[tokio::test]
async fn a_park_without_the_claim_leaves_a_live_claim_alone() {
    use latchkey_core::adapters::dynamo::DynamoMailLedger;
    use latchkey_core::mail::delivery::{Claim, Holding, JobMeta, MailLedger, ledger_state};
    let env = env().await;
    let ledger = DynamoMailLedger::new(env.client.clone(), &env.prefix);
    let job = |id: &str| JobMeta { id: unique(id), kind: "login_code", to: "a@example.com".into(), subject: None };
    let (held, ended) = (job("held"), job("ended"));
    for j in [&held, &ended] {
        assert_eq!(ledger.claim(j, NOW, 300).await.unwrap(), Claim::Claimed);
    }
    ledger.mark_failed(&held, "exhausted", NOW + 1, Holding::Nothing).await.expect("left alone");
    let e = ledger.entry(&held.id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::SENDING, Some(NOW + 300)));
    ledger.mark_failed(&held, "rejected", NOW + 2, Holding::Claim).await.unwrap();
    let e = ledger.entry(&held.id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.reason.as_deref(), e.lease_until), (ledger_state::FAILED, Some("rejected"), None));
    ledger.mark_failed(&ended, "exhausted", NOW + 300, Holding::Nothing).await.unwrap();
    assert_eq!(ledger.entry(&ended.id).await.unwrap().unwrap().state, ledger_state::FAILED, "a lease that has ended");
}

/// The same for a standalone code: a send whose put was applied is no
/// race lost to another send (the code would never be mailed), a right
/// code whose redemption was applied is no code used by another (the owner
/// would be told it failed, the code spent).
/// A login's challenge (written at the password step) and its code's
/// replacement (a resend), each sent twice by the SDK after a lost answer:
/// the step must not fail with its challenge written and no code mailed,
/// and a resend must not be answered "wait" with the new code unmailed.
#[tokio::test]
async fn a_challenge_write_whose_answer_was_lost_is_recognised_when_sent_again() {
    let env = env().await;
    let (client, lose) = losing_client(&env);
    let store = DynamoStore::new(client, &env.prefix);
    let (u, _) = registered(&env).await;

    // A trusted device's challenge is a plain put. (Any other is a
    // transaction with the lock's check, whose request token makes the
    // SDK's second send a no-op on DynamoDB; moto ignores the token.)
    let c = challenge(&u, "first");
    lose.arm("PutItem");
    store.create_challenge(&c, LockCheck::TrustedDevice, &META).await.expect("a challenge written twice");
    assert!(lose.fired());
    assert_eq!(env.store.challenge(&c.id).await.unwrap(), Some(c.clone()));
    // Another challenge under the same id is still refused.
    let other = Challenge { code_hash: "other".into(), ..c.clone() };
    assert!(is_conflict(&store.create_challenge(&other, LockCheck::TrustedDevice, &META).await, Conflict::Stale));

    lose.arm("UpdateItem");
    store
        .replace_challenge_code(&c.id, "second", NOW + 360, NOW + 60, 60, 3, 6, &META)
        .await
        .expect("a resend sent twice");
    assert!(lose.fired());
    let after = env.store.challenge(&c.id).await.unwrap().unwrap();
    assert_eq!((after.code_hash.as_str(), after.resends, after.last_sent_at), ("second", 1, NOW + 60));
    // A resend within the cooldown is still refused.
    assert!(is_conflict(
        &store.replace_challenge_code(&c.id, "third", NOW + 361, NOW + 61, 60, 3, 6, &META).await,
        Conflict::Stale
    ));
}

#[tokio::test]
async fn an_otp_send_or_redemption_whose_answer_was_lost_is_recognised_when_sent_again() {
    let env = env().await;
    let (client, lose) = losing_client(&env);
    let store = DynamoStore::new(client, &env.prefix);
    let addr = unique("addr");
    let first = fresh_otp(&addr);
    lose.arm("PutItem");
    store.put_otp(&first, None).await.expect("a first send sent twice");
    assert!(lose.fired());
    let resent = OtpRecord { code_hash: "c2".into(), last_sent_at: NOW + 60, expires_at: NOW + 660, ..first.clone() };
    lose.arm("PutItem");
    store.put_otp(&resent, Some(&first)).await.expect("a resend sent twice");
    assert!(lose.fired());
    assert_eq!(env.store.otp(&addr).await.unwrap().unwrap(), resent);
    // A send that read the record before that resend still loses.
    let late = OtpRecord { code_hash: "c3".into(), ..resent.clone() };
    assert!(is_conflict(&store.put_otp(&late, Some(&first)).await, Conflict::Stale));

    store.take_otp_attempt(&addr, NOW + 61, 6).await.unwrap();
    lose.arm("UpdateItem");
    store.redeem_otp(&addr, "c2", NOW + 61, 6, 30, &META).await.expect("a redemption sent twice");
    assert!(lose.fired());
    assert_eq!(env.store.otp(&addr).await.unwrap().unwrap().used_at, Some(NOW + 61));
    // Redeeming the used code again, from another request, is still refused.
    assert!(is_conflict(&store.redeem_otp(&addr, "c2", NOW + 62, 6, 30, &META).await, Conflict::Stale));
}

/// A record never expires before the one it follows, from a live head or,
/// once the head is gone, from the last record: the TTL, which deletes in
/// no order, cannot take a later record while an earlier one stays.
#[tokio::test]
async fn an_audit_record_never_expires_before_the_one_it_follows() {
    use latchkey_core::audit::AuditStore;
    let env = env().await;
    let (audit, key, subject) = audit_trail(&env);
    let event = |i: u32| code_verified(&subject, i);
    assert!(audit.append(&key, &event(1), NOW + 2 * 86_400).await.expect("append").is_some());
    // An earlier event from another table's stream, or a shorter retention.
    assert!(audit.append(&key, &event(2), NOW + 86_400).await.expect("append").is_some());
    expire_audit_head(&env, &subject).await;
    assert!(audit.append(&key, &event(3), NOW + 3600).await.expect("append").is_some());
    assert!(audit.append(&key, &event(4), NOW + 3 * 86_400).await.expect("append").is_some());
    let chain = audit.chain(&subject).await.expect("chain");
    assert_eq!(
        chain.iter().map(|r| r.expires_at).collect::<Vec<_>>(),
        [NOW + 2 * 86_400, NOW + 2 * 86_400, NOW + 2 * 86_400, NOW + 3 * 86_400]
    );
    // The attribute the TTL reads, not only the record's own field.
    let item = env
        .client
        .get_item()
        .table_name(format!("{}-audit", env.prefix))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("SUBJ#{subject}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(format!("REC#{:020}", 2)))
        .send()
        .await
        .expect("get")
        .item
        .expect("record 2");
    assert_eq!(item.get("ttl"), Some(&aws_sdk_dynamodb::types::AttributeValue::N((NOW + 2 * 86_400).to_string())));
}

/// Records past their expiry are neither listed nor counted while the TTL,
/// days late, has not deleted them yet; a page that reached them is the
/// last. A day's count goes with its newest record.
#[tokio::test]
async fn expired_audit_records_are_not_listed_or_counted_before_the_ttl_deletes_them() {
    use latchkey_core::audit::{AuditPage, AuditStore, day_of};
    let env = env().await;
    let (audit, key, subject) = audit_trail(&env);
    for i in 1..=5 {
        audit.append(&key, &code_verified(&subject, i), NOW + 10 * i64::from(i)).await.expect("append");
    }
    let seqs = |p: &AuditPage| p.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    let p1 = audit.list(&subject, None, 2, NOW + 20).await.expect("list");
    assert_eq!((seqs(&p1), p1.next_before), (vec![5, 4], Some(4)));
    let p2 = audit.list(&subject, p1.next_before, 2, NOW + 20).await.expect("list");
    assert_eq!((seqs(&p2), p2.next_before), (vec![3], None));
    assert_eq!(seqs(&audit.list(&subject, None, 10, NOW + 19).await.expect("list")), [5, 4, 3, 2]);
    let day = day_of(NOW);
    let count = |now| {
        let audit = &audit;
        async move { audit.stats(day, day, now).await.expect("stats").iter().map(|c| c.count).sum::<u64>() }
    };
    assert_eq!((count(NOW).await, count(NOW + 49).await, count(NOW + 50).await), (5, 5, 0));
    assert_eq!(audit.chain(&subject).await.expect("chain").len(), 5, "verification still reads them all");
}

/// Before the `nth` call of an operation from now (counted from 1), runs
/// an action to its end on a thread of its own: another request landing
/// between two calls of one store method.
#[derive(Clone, Default)]
struct Between {
    #[allow(clippy::type_complexity)]
    armed: std::sync::Arc<std::sync::Mutex<Option<(&'static str, u32, Box<dyn FnOnce() + Send>)>>>,
}

impl std::fmt::Debug for Between {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Between")
    }
}

impl Between {
    fn arm(&self, operation: &'static str, nth: u32, action: impl FnOnce() + Send + 'static) {
        *self.armed.lock().expect("not poisoned") = Some((operation, nth, Box::new(action)));
    }
    fn fired(&self) -> bool {
        self.armed.lock().expect("not poisoned").is_none()
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Between {
    fn name(&self) -> &'static str {
        "dynamo_smoke::Between"
    }

    fn read_before_serialization(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_smithy_runtime_api::client::orchestrator::Metadata;
        let mut armed = self.armed.lock().map_err(|_| "poisoned")?;
        let Some((operation, nth, _)) = armed.as_mut() else { return Ok(()) };
        if cfg.load::<Metadata>().is_none_or(|m| m.name() != *operation) {
            return Ok(());
        }
        *nth -= 1;
        if *nth == 0
            && let Some((_, _, action)) = armed.take()
        {
            std::thread::spawn(action).join().map_err(|_| "the action panicked")?;
        }
        Ok(())
    }
}

/// A right code that lands between a wrong code's refused last count (the
/// account at its budget's last count) and that wrong code's read of the
/// user gives the budget back: the wrong code is then counted below the
/// last count again and does not spend the budget, as the embedded store
/// (one transaction for both) counts it. (Read as stale, it would be
/// answered without being counted; taken as the last count, its write
/// would be refused until it gave up.)
#[tokio::test]
async fn a_right_code_between_a_refused_last_count_and_its_read_leaves_the_budget_unspent() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let (max_failures, budget) = (6, 4);
    let wrong = challenge(&u, "code-a");
    let right = challenge(&u, "code-b");
    for c in [&wrong, &right] {
        env.store.create_challenge(c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
    }
    for n in 1..budget {
        let f = env.store.record_challenge_failure(&wrong.id, &u.id, max_failures, budget, 0, &META).await.unwrap();
        assert_eq!((f.failures, f.spent_budget), (n, false));
    }
    assert_eq!(env.store.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, budget - 1, "at the last count");

    let between = Between::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk_config(endpoint())).interceptor(between.clone()).build();
    let racing = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(conf), &env.prefix);
    // The wrong code reads its challenge (GetItem), is refused on the
    // account (TransactWriteItems), then reads the user (GetItem): the
    // right code is redeemed just before that read.
    let (prefix, right_id, s) = (env.prefix.clone(), right.id, session(&u));
    between.arm("GetItem", 2, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            // A client of its own: one of the test's would reuse a pooled
            // connection whose task runs on the test's runtime, which is
            // blocked in this hook until the action ends.
            let store = DynamoStore::new(dynamo_client(&sdk_config(endpoint()), None), &prefix);
            store.redeem_challenge(&right_id, "code-b", NOW + 1, max_failures, budget, 0, &s, &META).await
        })
        .expect("the right code");
    });
    let f = racing.record_challenge_failure(&wrong.id, &u.id, max_failures, budget, 0, &META).await.expect("counted");
    assert!(between.fired(), "the right code landed in between");
    assert_eq!((f.failures, f.spent_budget), (budget, false), "counted on the challenge, not spending the budget");
    let user = env.store.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(user.otp_failures, 1, "given back by the right code, then this wrong one");
    assert_eq!(user.locked_until, None);
}

/// Deleting an account deletes every item of it the tokens table's user
/// index lists, however many batches they take (25 to a BatchWriteItem):
/// here 30 signed-in sessions, their 30 used challenges and the
/// registration's verification link.
#[tokio::test]
async fn deleting_an_account_deletes_its_tokens_in_batches() {
    let env = env().await;
    let (u, _) = registered(&env).await;
    let mut made = Vec::new();
    for _ in 0..30 {
        let c = challenge(&u, "code");
        env.store.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.expect("challenge");
        let s = session(&u);
        env.store.redeem_challenge(&c.id, "code", NOW + 1, 5, u32::MAX, 0, &s, &META).await.expect("redeem");
        made.push((c.id, s.id));
    }
    let stored = env.store.user_by_id(&u.id).await.expect("user_by_id").expect("the user");
    env.counter.take();
    env.store.delete_account(&stored, &META).await.expect("delete_account");
    let calls = env.counter.take();
    assert_eq!(calls.iter().filter(|c| *c == "dynamodb:BatchWriteItem").count(), 3, "61 items, 25 a call: {calls:?}");
    for (c, s) in &made {
        assert_eq!(env.store.challenge(c).await.expect("challenge"), None);
        assert_eq!(env.store.session(s).await.expect("session"), None);
    }
    let left = env
        .client
        .query()
        .table_name(format!("{}-tokens", env.prefix))
        .index_name("by_user")
        .key_condition_expression("user_id = :u")
        .expression_attribute_values(":u", AttributeValue::S(u.id.to_string()))
        .send()
        .await
        .expect("query");
    assert_eq!(left.count, 0, "{:?}", left.items);
}
