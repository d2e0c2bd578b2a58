//! The flows end to end below HTTP, on the embedded store with a frozen
//! clock, so expiry boundaries and lock periods are crossed exactly.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use async_trait::async_trait;
use latchkey_core::Error;
use latchkey_core::adapters::embedded::EmbeddedStore;
use latchkey_core::clock::{Clock, FixedClock};
use latchkey_core::config::{Policy, RateLimits};
use latchkey_core::domain::{Email, RequestMeta, Session};
use latchkey_core::flows::{Auth, Caller, Ports, TokenIssuer};
use latchkey_core::keys::{CodeKey, SigningKey};
use latchkey_core::mail::{MailEnvelope, MailJob};
use latchkey_core::password_hasher::{Argon2Settings, PasswordHasher};
use latchkey_core::ports::{MailQueue, SessionStore, StoreResult, UserStore};
use latchkey_core::rng::OsSecureRng;
use std::sync::{Arc, Mutex};

const PW: &str = "correct horse battery staple";
const T0: i64 = 1_800_000_000;

/// Keeps what would be mailed, so the test can read codes and links; while
/// `down`, it refuses every job as an unavailable queue would.
#[derive(Default)]
struct Mailbox(Mutex<Vec<MailEnvelope>>, std::sync::atomic::AtomicBool);

#[async_trait]
impl MailQueue for Mailbox {
    async fn enqueue(&self, job: &MailEnvelope) -> StoreResult<()> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(latchkey_core::StoreError::unavailable("queue down (test)"));
        }
        self.0.lock().unwrap().push(job.clone());
        Ok(())
    }
}

impl Mailbox {
    fn down(&self, down: bool) {
        self.1.store(down, std::sync::atomic::Ordering::SeqCst);
    }
    fn last(&self) -> MailEnvelope {
        self.0.lock().unwrap().last().cloned().expect("a mail")
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|m| m.job.kind()).collect()
    }
    fn code(&self) -> String {
        match self.last().job {
            MailJob::LoginCode { code, .. } | MailJob::StandaloneCode { code, .. } => code.expose().clone(),
            other => panic!("not a code mail: {}", other.kind()),
        }
    }
    fn token(&self) -> String {
        match self.last().job {
            MailJob::VerifyEmail { token, .. } => token.expose().clone(),
            other => panic!("not a verification mail: {}", other.kind()),
        }
    }
    fn reset_token(&self) -> String {
        match self.last().job {
            MailJob::PasswordReset { token, .. } => token.expose().clone(),
            other => panic!("not a reset mail: {}", other.kind()),
        }
    }
    fn email_change_token(&self) -> String {
        let link = self.0.lock().unwrap().iter().rev().find(|m| m.job.kind() == "email_change_link").cloned();
        match link.expect("an address change link").job {
            MailJob::EmailChangeLink { token, .. } => token.expose().clone(),
            _ => unreachable!(),
        }
    }
    /// The mails queued since the first `from`: kind, recipient, subject.
    fn since(&self, from: usize) -> Vec<(&'static str, String, Option<String>)> {
        self.0.lock().unwrap()[from..].iter().map(|m| (m.job.kind(), m.to.clone(), m.subject.clone())).collect()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct World {
    auth: Auth,
    store: Arc<EmbeddedStore>,
    clock: Arc<FixedClock>,
    mail: Arc<Mailbox>,
}

fn world(limits: RateLimits) -> World {
    world_with_users(limits, |store| store)
}

/// The refresh retry grace the grace tests configure (off by default).
const GRACE: i64 = 30;

fn with_grace(p: &mut Policy) {
    p.refresh_retry_grace_secs = GRACE;
}

/// A world with relaxed limits and a refresh retry grace of [`GRACE`].
fn world_with_grace() -> World {
    let clock = Arc::new(FixedClock::new(T0));
    let store = Arc::new(EmbeddedStore::in_memory().unwrap().with_clock(clock.clone()));
    let mail = Arc::new(Mailbox::default());
    let auth = auth_with(ports_on(store.clone(), &store, &clock, &mail), RateLimits::relaxed(), 3, with_grace);
    World { auth, store, clock, mail }
}

/// A world whose flows reach the store's `UserStore` through `users`.
fn world_with_users(limits: RateLimits, users: impl FnOnce(Arc<EmbeddedStore>) -> Arc<dyn UserStore>) -> World {
    let clock = Arc::new(FixedClock::new(T0));
    let store = Arc::new(EmbeddedStore::in_memory().unwrap().with_clock(clock.clone()));
    let mail = Arc::new(Mailbox::default());
    let auth = auth_on(users(store.clone()), &store, &clock, &mail, limits, 3);
    World { auth, store, clock, mail }
}

/// Flows on `store`, `clock` and `mail`, with code HMAC key `[code_key; 32]`.
fn auth_on(
    users: Arc<dyn UserStore>,
    store: &Arc<EmbeddedStore>,
    clock: &Arc<FixedClock>,
    mail: &Arc<Mailbox>,
    limits: RateLimits,
    code_key: u8,
) -> Auth {
    auth_with(ports_on(users, store, clock, mail), limits, code_key, |_| {})
}

/// The ports of `auth_on`.
fn ports_on(
    users: Arc<dyn UserStore>,
    store: &Arc<EmbeddedStore>,
    clock: &Arc<FixedClock>,
    mail: &Arc<Mailbox>,
) -> Ports {
    Ports {
        users,
        challenges: store.clone(),
        sessions: store.clone(),
        otps: store.clone(),
        limiter: store.clone(),
        mail: mail.clone(),
        clock: clock.clone(),
        rng: Arc::new(OsSecureRng),
    }
}

/// Flows on `ports`, with the policy changed by `change`.
fn auth_with(ports: Ports, limits: RateLimits, code_key: u8, change: impl FnOnce(&mut Policy)) -> Auth {
    // Cheap argon2 parameters: these tests are about the flows, not the cost.
    let mut policy = Policy { limits, argon2: Argon2Settings { m_kib: 1024, t: 1, p: 1 }, ..Policy::default() };
    change(&mut policy);
    let hasher = PasswordHasher::new(policy.argon2, 2, &OsSecureRng).unwrap();
    let tokens = TokenIssuer::new(SigningKey::generate().unwrap(), "iss".into(), "aud".into(), 600).unwrap();
    Auth::new(ports, policy, hasher, CodeKey::new(vec![code_key; 32]).unwrap(), tokens)
}

type Write = Box<dyn FnOnce(Arc<EmbeddedStore>) -> futures::future::BoxFuture<'static, ()> + Send>;

/// The embedded store as the flows' `UserStore`, where someone else's write
/// can be made to land right before the next password change or reset
/// writes (after the flow read the user, before its conditional write), or
/// right after the next read of a user by name or address (a login's, while
/// its password is hashed).
struct Racing {
    store: Arc<EmbeddedStore>,
    before_write: Mutex<Option<Write>>,
    after_read: Mutex<Option<Write>>,
}

impl Racing {
    fn new(store: Arc<EmbeddedStore>) -> Arc<Self> {
        Arc::new(Racing { store, before_write: Mutex::new(None), after_read: Mutex::new(None) })
    }
    fn before_next_write(&self, write: Write) {
        *self.before_write.lock().unwrap() = Some(write);
    }
    fn after_next_read(&self, write: Write) {
        *self.after_read.lock().unwrap() = Some(write);
    }
    async fn run(&self, slot: &Mutex<Option<Write>>) {
        let write = slot.lock().unwrap().take();
        if let Some(write) = write {
            write(self.store.clone()).await;
        }
    }
    async fn race(&self) {
        self.run(&self.before_write).await;
    }
    async fn read_race(&self) {
        self.run(&self.after_read).await;
    }
    fn raced(&self) -> bool {
        self.before_write.lock().unwrap().is_none()
    }
    fn read_raced(&self) -> bool {
        self.after_read.lock().unwrap().is_none()
    }
}

#[async_trait]
impl UserStore for Racing {
    async fn create_user(
        &self,
        user: &latchkey_core::domain::User,
        verification: &latchkey_core::domain::VerificationRecord,
        replace_unverified_before: i64,
    ) -> StoreResult<Vec<latchkey_core::domain::UserId>> {
        self.store.create_user(user, verification, replace_unverified_before).await
    }
    async fn user_by_id(&self, id: &latchkey_core::domain::UserId) -> StoreResult<Option<latchkey_core::domain::User>> {
        self.store.user_by_id(id).await
    }
    async fn user_by_username(
        &self,
        username: &latchkey_core::domain::Username,
    ) -> StoreResult<Option<latchkey_core::domain::User>> {
        let user = self.store.user_by_username(username).await;
        self.read_race().await;
        user
    }
    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<latchkey_core::domain::User>> {
        let user = self.store.user_by_email(email).await;
        self.read_race().await;
        user
    }
    async fn record_login_failure(
        &self,
        id: &latchkey_core::domain::UserId,
        now: i64,
        threshold: u32,
        lock_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<latchkey_core::ports::LoginFailure> {
        self.store.record_login_failure(id, now, threshold, lock_secs, meta).await
    }
    async fn set_password_hash(
        &self,
        id: &latchkey_core::domain::UserId,
        expected_phc: &str,
        phc: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.store.set_password_hash(id, expected_phc, phc, meta).await
    }
    async fn change_password(
        &self,
        id: &latchkey_core::domain::UserId,
        expected_phc: &str,
        expected_epoch: u64,
        phc: &str,
        keep: &latchkey_core::domain::SessionId,
        now: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.race().await;
        self.store.change_password(id, expected_phc, expected_epoch, phc, keep, now, meta).await
    }
    async fn reset_password(
        &self,
        id: &latchkey_core::domain::UserId,
        link: latchkey_core::domain::ResetLink,
        expected_epoch: u64,
        phc: &str,
        now: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.race().await;
        self.store.reset_password(id, link, expected_epoch, phc, now, meta).await
    }
    async fn delete_account(&self, user: &latchkey_core::domain::User, meta: &RequestMeta) -> StoreResult<()> {
        self.race().await;
        self.store.delete_account(user, meta).await
    }
    async fn change_email(
        &self,
        user: &latchkey_core::domain::User,
        new: &Email,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.race().await;
        self.store.change_email(user, new, meta).await
    }
    async fn add_verification(
        &self,
        verification: &latchkey_core::domain::VerificationRecord,
        now: i64,
        cooldown_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.store.add_verification(verification, now, cooldown_secs, meta).await
    }
    async fn give_back_verification_cooldown(
        &self,
        id: &latchkey_core::domain::UserId,
        sent_at: i64,
        previous_sent_at: i64,
    ) -> StoreResult<()> {
        self.store.give_back_verification_cooldown(id, sent_at, previous_sent_at).await
    }
    async fn verification(&self, token_hash: &str) -> StoreResult<Option<latchkey_core::domain::VerificationRecord>> {
        self.store.verification(token_hash).await
    }
    async fn consume_verification(
        &self,
        token: &latchkey_core::domain::VerificationRecord,
        now: i64,
        meta: &RequestMeta,
    ) -> StoreResult<latchkey_core::domain::UserId> {
        self.store.consume_verification(token, now, meta).await
    }
}

/// A world (relaxed limits) whose flows reach the users through `Racing`.
fn racing_world() -> (World, Arc<Racing>) {
    let racing = std::cell::OnceCell::new();
    let w = world_with_users(RateLimits::relaxed(), |store| {
        let r = Racing::new(store);
        let _ = racing.set(r.clone());
        r
    });
    let racing = racing.into_inner().unwrap();
    (w, racing)
}

/// `name`'s stored user.
async fn stored(store: &EmbeddedStore, name: &str) -> latchkey_core::domain::User {
    let username = latchkey_core::domain::Username::parse(name).unwrap();
    store.user_by_username(&username).await.unwrap().unwrap()
}

fn meta() -> RequestMeta {
    RequestMeta { ip: Some("192.0.2.1".into()), ..Default::default() }
}

async fn verified(w: &World, name: &str) -> String {
    let email = format!("{name}@example.com");
    w.auth.register(name, &email, PW.into(), &meta()).await.unwrap();
    w.auth.verify_email(&w.mail.token(), &meta()).await.unwrap();
    email
}

#[tokio::test]
async fn login_code_expires_exactly_at_five_minutes() {
    let w = world(RateLimits::relaxed());
    verified(&w, "alice").await;
    let c = w.auth.login("alice", PW.into(), None, &meta()).await.unwrap();
    assert_eq!(c.expires_at, T0 + 300);
    let code = w.mail.code();
    w.clock.set(T0 + 300);
    let err = w.auth.verify_login_code(&c.challenge_id.to_string(), &code, &meta()).await.unwrap_err();
    assert!(matches!(err, Error::OtpExpired), "{err:?}");

    let c = w.auth.login("alice", PW.into(), None, &meta()).await.unwrap();
    let code = w.mail.code();
    w.clock.set(c.expires_at - 1);
    w.auth.verify_login_code(&c.challenge_id.to_string(), &code, &meta()).await.unwrap();
}

#[tokio::test]
async fn verification_link_expires_after_24_hours() {
    let w = world(RateLimits::relaxed());
    w.auth.register("bob", "bob@example.com", PW.into(), &meta()).await.unwrap();
    let token = w.mail.token();
    w.clock.set(T0 + 24 * 3600);
    assert!(matches!(w.auth.verify_email(&token, &meta()).await, Err(Error::VerificationExpired)));
    // Still unverified.
    assert!(matches!(w.auth.login("bob", PW.into(), None, &meta()).await, Err(Error::InvalidCredentials)));
    assert!(!stored(&w.store, "bob").await.verified);
    // A resend gives a fresh link that works.
    w.auth.resend_verification("bob@example.com", &meta()).await.unwrap();
    w.auth.verify_email(&w.mail.token(), &meta()).await.unwrap();
    w.auth.login("bob", PW.into(), None, &meta()).await.unwrap();
}

/// An account nobody verified is gone at the end of its retention, before
/// its store deletes it: a link resent just before then no longer verifies
/// it (answered as a link that leads nowhere, not as a used one), and no
/// link is sent after.
#[tokio::test]
async fn a_link_does_not_verify_an_account_past_its_retention() {
    let w = world(RateLimits::relaxed());
    w.auth.register("bob", "bob@example.com", PW.into(), &meta()).await.unwrap();
    let over = T0 + latchkey_core::domain::User::UNVERIFIED_RETENTION_SECS + latchkey_core::tables::TTL_GRACE_SECS;
    w.clock.set(over - 3600);
    w.auth.resend_verification("bob@example.com", &meta()).await.unwrap();
    let token = w.mail.token();
    w.clock.set(over);
    assert!(matches!(w.auth.verify_email(&token, &meta()).await, Err(Error::VerificationInvalid)));
    let sent = w.mail.count();
    w.auth.resend_verification("bob@example.com", &meta()).await.unwrap();
    assert_eq!(w.mail.count(), sent, "no link for an account past its retention");
}

/// Accounts registered under tags of one inbox share its verification
/// resends (10 an hour), however many of them there are; asking for the
/// bare address, which has no account, spends none of it; past the limit
/// the answer is the same and nothing is sent.
#[tokio::test]
async fn verification_resends_to_one_mailbox_are_limited_however_many_tagged_accounts_it_has() {
    let w = world(RateLimits::default());
    let tagged = |i: i64| format!("vic+{i}@example.com");
    for i in 0..5 {
        let ip = format!("198.51.100.{i}");
        w.auth.register(&format!("tag{i}"), &tagged(i), PW.into(), &meta_from(&ip)).await.unwrap();
    }
    let registered = w.mail.count();
    for i in 0..5 {
        let ip = format!("203.0.113.{i}");
        w.auth.resend_verification("vic@example.com", &meta_from(&ip)).await.expect("the same answer");
    }
    assert_eq!(w.mail.count(), registered, "a link for an address without an account");
    // Three rounds past the cooldown: each address within its own 5 an
    // hour, 15 asks in all, 10 sent.
    for round in 1..=3 {
        w.clock.set(T0 + 61 * round);
        for i in 0..5 {
            let ip = format!("192.0.2.{}", round * 10 + i);
            w.auth.resend_verification(&tagged(i), &meta_from(&ip)).await.expect("the same answer");
        }
    }
    assert_eq!(w.mail.count() - registered, 10, "links sent again to one inbox within an hour");
    // The next hour's window gives the inbox its budget again.
    w.clock.set(T0 + 3600);
    w.auth.resend_verification(&tagged(0), &meta_from("192.0.2.99")).await.unwrap();
    assert_eq!(w.mail.count() - registered, 11);
}

#[tokio::test]
async fn ten_wrong_passwords_lock_for_fifteen_minutes_and_no_longer() {
    let w = world(RateLimits::relaxed());
    verified(&w, "carol").await;
    for _ in 0..10 {
        assert!(matches!(
            w.auth.login("carol", "wrong wrong wrong".into(), None, &meta()).await,
            Err(Error::InvalidCredentials)
        ));
    }
    assert_eq!(w.mail.last().job.kind(), "account_locked", "the owner is told");
    // Locked: even the right password is refused, with the same error.
    assert!(matches!(w.auth.login("carol", PW.into(), None, &meta()).await, Err(Error::InvalidCredentials)));
    // Hammering during the lock does not extend it.
    w.clock.set(T0 + 899);
    for _ in 0..20 {
        let _ = w.auth.login("carol", "wrong wrong wrong".into(), None, &meta()).await;
    }
    assert_eq!(w.mail.kinds().iter().filter(|k| **k == "account_locked").count(), 1);
    w.clock.set(T0 + 900);
    w.auth.login("carol", PW.into(), None, &meta()).await.expect("lock over after 15 min");
    // The successful password step clears the ended lock (the audit trail
    // sees the unlock).
    use latchkey_core::ports::UserStore;
    let carol =
        w.store.user_by_username(&latchkey_core::domain::Username::parse("carol").unwrap()).await.unwrap().unwrap();
    assert_eq!((carol.locked_until, carol.failed_logins), (None, 0));
}

#[tokio::test]
async fn resend_never_resets_the_failure_count() {
    let w = world(RateLimits::relaxed());
    verified(&w, "dave").await;
    let c = w.auth.login("dave", PW.into(), None, &meta()).await.unwrap();
    let id = c.challenge_id.to_string();
    let wrong = |code: &str| if code == "000000" { "111111".to_string() } else { "000000".to_string() };
    let code = w.mail.code();
    for _ in 0..3 {
        assert!(matches!(w.auth.verify_login_code(&id, &wrong(&code), &meta()).await, Err(Error::OtpInvalid { .. })));
    }
    assert!(matches!(w.auth.resend_login_code(&id, &meta()).await, Err(Error::RateLimited { retry_after: 60 })));
    w.clock.advance(60);
    w.auth.resend_login_code(&id, &meta()).await.unwrap();
    let code = w.mail.code();
    let mut left = vec![];
    for _ in 0..3 {
        match w.auth.verify_login_code(&id, &wrong(&code), &meta()).await {
            Err(Error::OtpInvalid { attempts_left }) => left.push(attempts_left),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(left, [2, 1, 0]);
    assert!(matches!(w.auth.verify_login_code(&id, &code, &meta()).await, Err(Error::OtpExhausted)));
}

/// After its last resend a login is finished for resends: the answer is
/// final (a new login is needed), not a wait that would end in a refusal;
/// `ResendsSpent` while the last code lives (the pages keep the code form),
/// `ChallengeNotFound` once it is dead.
#[tokio::test]
async fn a_login_out_of_resends_is_told_to_start_again() {
    let w = world(RateLimits::relaxed());
    verified(&w, "dora").await;
    let c = w.auth.login("dora", PW.into(), None, &meta()).await.unwrap();
    let id = c.challenge_id.to_string();
    let max = w.auth.policy().code_max_resends;
    for _ in 0..max {
        w.clock.advance(w.auth.policy().code_resend_cooldown_secs);
        w.auth.resend_login_code(&id, &meta()).await.unwrap();
    }
    w.clock.advance(w.auth.policy().code_resend_cooldown_secs);
    let r = w.auth.resend_login_code(&id, &meta()).await;
    assert!(matches!(r, Err(Error::ResendsSpent)), "{r:?}");
    // The last code still works until it expires.
    w.auth.verify_login_code(&id, &w.mail.code(), &meta()).await.expect("the last code");

    let c = w.auth.login("dora", PW.into(), None, &meta()).await.unwrap();
    let id = c.challenge_id.to_string();
    for _ in 0..max {
        w.clock.advance(w.auth.policy().code_resend_cooldown_secs);
        w.auth.resend_login_code(&id, &meta()).await.unwrap();
    }
    w.clock.advance(w.auth.policy().login_code_ttl_secs);
    let r = w.auth.resend_login_code(&id, &meta()).await;
    assert!(matches!(r, Err(Error::ChallengeNotFound)), "the last code is dead too: {r:?}");
}

#[tokio::test]
async fn a_code_is_bound_to_its_challenge() {
    let w = world(RateLimits::relaxed());
    verified(&w, "erin").await;
    verified(&w, "frank").await;
    let a = w.auth.login("erin", PW.into(), None, &meta()).await.unwrap();
    let code_a = w.mail.code();
    let b = w.auth.login("frank", PW.into(), None, &meta()).await.unwrap();
    let code_b = w.mail.code();
    if code_a != code_b {
        assert!(matches!(
            w.auth.verify_login_code(&b.challenge_id.to_string(), &code_a, &meta()).await,
            Err(Error::OtpInvalid { .. })
        ));
    }
    w.auth.verify_login_code(&a.challenge_id.to_string(), &code_a, &meta()).await.unwrap();
}

/// The per-address mail limits count the mailbox: `+tags` of one address
/// share its 10 codes an hour (each from another client here, so only the
/// address limit can refuse).
#[tokio::test]
async fn address_tags_share_their_mailbox_limit() {
    let w = world(RateLimits::default());
    for i in 0..10 {
        w.auth.send_otp(&format!("target+{i}@example.com"), &meta_from(&format!("198.51.100.{i}"))).await.unwrap();
    }
    let r = w.auth.send_otp("target@example.com", &meta_from("203.0.113.1")).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    let r = w.auth.send_otp("target+new@example.com", &meta_from("203.0.113.2")).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    w.auth.send_otp("other+1@example.com", &meta_from("203.0.113.3")).await.expect("another mailbox");
}

/// So do the links an address change mails to the new address: asking for
/// `+tags` of one inbox spends one budget of 10 an hour.
#[tokio::test]
async fn address_changes_to_tags_of_one_inbox_share_its_limit() {
    let w = world(RateLimits::default());
    verified(&w, "tess").await;
    let pair = signed_in(&w, "tess", &meta()).await;
    let ask = |to: String, ip: String| {
        let (auth, access) = (w.auth.clone(), pair.access_token.clone());
        async move { auth.request_email_change(Caller::Bearer(&access), PW.into(), &to, &meta_from(&ip)).await }
    };
    for i in 0..10 {
        ask(format!("inbox+{i}@example.com"), format!("198.51.100.{i}")).await.unwrap();
    }
    let r = ask("inbox+new@example.com".into(), "203.0.113.1".into()).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    ask("another+1@example.com".into(), "203.0.113.2".into()).await.expect("another mailbox");
}

/// Reset links go only to an account's own address, so their limit is per
/// address: a stranger who asks for the bare address spends nothing of an
/// account registered under a `+tag`.
#[tokio::test]
async fn a_tagged_accounts_reset_links_are_its_own() {
    let w = world(RateLimits::default());
    w.auth.register("vic", "vic+latchkey@example.com", PW.into(), &meta()).await.unwrap();
    w.auth.verify_email(&w.mail.token(), &meta()).await.unwrap();
    for i in 0..3 {
        w.auth.request_password_reset("vic@example.com", &meta_from(&format!("198.51.100.{i}"))).await.unwrap();
    }
    let r = w.auth.request_password_reset("vic@example.com", &meta_from("198.51.100.9")).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    w.auth.request_password_reset("vic+latchkey@example.com", &meta_from("203.0.113.5")).await.expect("the owner");
    assert_eq!(w.mail.last().job.kind(), "password_reset");
}

#[tokio::test]
async fn standalone_otp_lives_ten_minutes() {
    let w = world(RateLimits::relaxed());
    let sent = w.auth.send_otp("gina@example.com", &meta()).await.unwrap();
    assert_eq!(sent.expires_at, T0 + 600);
    let code = w.mail.code();
    w.clock.set(T0 + 600);
    assert!(matches!(w.auth.verify_otp("gina@example.com", &code, &meta()).await, Err(Error::OtpExpired)));
    w.auth.send_otp("gina@example.com", &meta()).await.unwrap();
    let code = w.mail.code();
    w.clock.set(T0 + 1199);
    w.auth.verify_otp("GINA@example.com", &code, &meta()).await.unwrap();
    assert!(matches!(w.auth.verify_otp("gina@example.com", &code, &meta()).await, Err(Error::ChallengeNotFound)));
}

/// A standalone code whose attempts are spent is not replaced before it
/// expires (a new one would start dead and push the block further out);
/// at its expiry a new code starts with a fresh count.
#[tokio::test]
async fn an_exhausted_standalone_code_is_not_replaced_before_it_expires() {
    let w = world(RateLimits::relaxed());
    let addr = "hana@example.com";
    w.auth.send_otp(addr, &meta()).await.unwrap();
    let code = w.mail.code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..6 {
        assert!(matches!(w.auth.verify_otp(addr, wrong, &meta()).await, Err(Error::OtpInvalid { .. })));
    }
    // Within the send cooldown too, the wait answered is the code's, not
    // the cooldown's 60 s (a live probe was told 60, then 234).
    w.clock.set(T0 + 10);
    assert!(matches!(w.auth.send_otp(addr, &meta()).await, Err(Error::RateLimited { retry_after: 590 })));
    w.clock.set(T0 + 120);
    let sends = w.mail.kinds().len();
    assert!(matches!(w.auth.send_otp(addr, &meta()).await, Err(Error::RateLimited { retry_after: 480 })));
    assert_eq!(w.mail.kinds().len(), sends, "a refused send mailed a code");
    w.clock.set(T0 + 600);
    w.auth.send_otp(addr, &meta()).await.unwrap();
    w.auth.verify_otp(addr, &w.mail.code(), &meta()).await.unwrap();
}

/// Wrong standalone codes count across codes (NIST 3.1.3.2): a new code
/// brings no fresh round of guesses. A right code within the budget gives
/// it back; once it is spent every code, right or wrong, is answered the
/// same wait, and none is sent, until a day after the last expired.
#[tokio::test]
async fn wrong_standalone_codes_spend_a_budget_across_codes() {
    let w = world(RateLimits::relaxed());
    let (addr, policy) = ("iris@example.com", Policy::default());
    let budget = policy.otp_failure_budget;
    assert!(budget > policy.code_max_failures && budget <= 100, "{budget}");
    let wrong = |code: &str| if code == "000000" { "111111" } else { "000000" }.to_string();
    let mut spent = 0;
    // `n` wrong codes on a fresh code, then that code runs out.
    let guess = async |n: u32| {
        w.auth.send_otp(addr, &meta()).await.unwrap();
        let code = w.mail.code();
        for _ in 0..n {
            let r = w.auth.verify_otp(addr, &wrong(&code), &meta()).await;
            assert!(matches!(r, Err(Error::OtpInvalid { .. })), "{r:?}");
        }
        w.clock.advance(600);
        code
    };
    // Within the budget, a right code gives it all back.
    for _ in 0..(budget - 1) / 6 {
        guess(6).await;
    }
    w.auth.send_otp(addr, &meta()).await.unwrap();
    w.auth.verify_otp(addr, &w.mail.code(), &meta()).await.expect("a right code within the budget");
    w.clock.advance(60);
    // Then: codes run out with some wrong tries each, until the budget's
    // last one lands on a live code with attempts left.
    guess(3).await;
    spent += 3;
    while spent + 6 < budget {
        guess(6).await;
        spent += 6;
    }
    let left = budget - spent;
    assert!(left < 6, "{left}");
    let sent = w.auth.send_otp(addr, &meta()).await.unwrap();
    let code = w.mail.code();
    for _ in 0..left {
        assert!(matches!(w.auth.verify_otp(addr, &wrong(&code), &meta()).await, Err(Error::OtpInvalid { .. })));
    }
    // Right or wrong, every code is answered the same wait: until a day
    // after this code expires.
    let wait = (sent.expires_at + 86_400 - (sent.expires_at - 600)) as u64;
    let r = w.auth.verify_otp(addr, &code, &meta()).await;
    assert!(
        matches!(r, Err(Error::RateLimited { retry_after }) if retry_after == wait),
        "the right code of a live code once the budget is spent: {r:?}"
    );
    let r = w.auth.verify_otp(addr, &wrong(&code), &meta()).await;
    assert!(matches!(r, Err(Error::RateLimited { retry_after }) if retry_after == wait), "{r:?}");
    w.clock.set(sent.expires_at + 5);
    let r = w.auth.verify_otp(addr, &code, &meta()).await;
    assert!(matches!(r, Err(Error::RateLimited { retry_after: 86_395 })), "the spent code expired: {r:?}");
    w.clock.set(sent.expires_at - 600);
    // No new code until a day after this one expires, whenever asked.
    let sends = w.mail.kinds().len();
    let expires = sent.expires_at;
    for at in [expires - 539, expires, expires + 86_399] {
        w.clock.set(at);
        let r = w.auth.send_otp(addr, &meta()).await;
        let want = (expires + 86_400 - at) as u64;
        assert!(matches!(r, Err(Error::RateLimited { retry_after }) if retry_after == want), "at {at}: {r:?}");
    }
    assert_eq!(w.mail.kinds().len(), sends, "a refused send mailed a code");
    w.clock.set(expires + 86_400);
    w.auth.send_otp(addr, &meta()).await.expect("the window is over");
    let fresh = w.mail.code();
    for _ in 0..5 {
        assert!(matches!(w.auth.verify_otp(addr, &wrong(&fresh), &meta()).await, Err(Error::OtpInvalid { .. })));
    }
    w.auth.verify_otp(addr, &fresh, &meta()).await.expect("a fresh budget");
}

/// Concurrent wrong codes at the budget's edge: as many are answered wrong
/// as are counted, and every other one, like the right code, is answered
/// the wait (a live probe had 5 of 50 answered wrong with 3 counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_past_the_budget_are_answered_the_wait_not_wrong() {
    let w = world(RateLimits::relaxed());
    let addr = "jade@example.com";
    let budget = Policy::default().otp_failure_budget;
    let wrong = |code: &str| if code == "000000" { "111111" } else { "000000" }.to_string();
    let mut spent = 0;
    while spent + 6 <= budget - 3 {
        w.auth.send_otp(addr, &meta()).await.unwrap();
        let code = w.mail.code();
        for _ in 0..6 {
            let _ = w.auth.verify_otp(addr, &wrong(&code), &meta()).await;
        }
        spent += 6;
        w.clock.advance(600);
    }
    w.auth.send_otp(addr, &meta()).await.unwrap();
    let code = w.mail.code();
    for _ in 0..(budget - 3 - spent) {
        let _ = w.auth.verify_otp(addr, &wrong(&code), &meta()).await;
    }
    w.clock.advance(600);
    // Three wrong codes left in the budget, and a fresh code's six
    // attempts: all six are compared, three are counted.
    w.auth.send_otp(addr, &meta()).await.unwrap();
    let code = w.mail.code();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (auth, guess) = (w.auth.clone(), format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i) % 1_000_000));
            tokio::spawn(async move { auth.verify_otp(addr, &guess, &meta()).await })
        })
        .collect();
    let guesses: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let answered_wrong = guesses.iter().filter(|r| matches!(r, Err(Error::OtpInvalid { .. }))).count();
    let answered_wait = guesses.iter().filter(|r| matches!(r, Err(Error::RateLimited { .. }))).count();
    assert_eq!((answered_wrong, answered_wait), (3, 3), "{guesses:?}");
    let r = w.auth.verify_otp(addr, &code, &meta()).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
}

/// A queue outage after a committed change is logged, not answered: the
/// registration is answered as made (its retry would say "username taken"),
/// the tenth wrong password as any wrong password, and the verification
/// mail can be asked for again at once when the queue is back: a link that
/// was not queued (the registration's, then a resend's) leaves no cooldown.
#[tokio::test]
async fn a_queue_outage_after_a_committed_change_is_not_the_callers_error() {
    let w = world(RateLimits::relaxed());
    w.mail.down(true);
    w.auth.register("ivy", "ivy@example.com", PW.into(), &meta()).await.unwrap();
    assert!(w.store.user_by_email(&Email::parse("ivy@example.com").unwrap()).await.unwrap().is_some());
    w.auth.register("ivy2", "ivy@example.com", PW.into(), &meta()).await.unwrap();
    for _ in 0..10 {
        let r = w.auth.login("ivy", "not the password at all".into(), None, &meta()).await;
        assert!(matches!(r, Err(Error::InvalidCredentials)), "{r:?}");
    }
    assert!(w.mail.kinds().is_empty());
    // Codes the caller asked for still fail loudly: nothing was sent.
    assert!(w.auth.send_otp("ivy@example.com", &meta()).await.is_err());
    w.auth.resend_verification("ivy@example.com", &meta()).await.unwrap();
    assert!(w.mail.kinds().is_empty());
    w.mail.down(false);
    w.auth.resend_verification("ivy@example.com", &meta()).await.unwrap();
    assert_eq!(w.mail.kinds(), ["verify_email"]);
    // A link that went starts the cooldown.
    w.auth.resend_verification("ivy@example.com", &meta()).await.unwrap();
    assert_eq!(w.mail.kinds(), ["verify_email"]);
    w.clock.set(T0 + 60);
    w.auth.resend_verification("ivy@example.com", &meta()).await.unwrap();
    assert_eq!(w.mail.kinds(), ["verify_email", "verify_email"]);
    w.auth.verify_email(&w.mail.token(), &meta()).await.expect("the last link");
}

/// A code the caller asked for whose mail the queue refuses is answered as
/// the outage, and spends neither the send's cooldown nor one of the
/// login's resends: asked again once the queue is back, a code is mailed at
/// once, and it is the one that works.
#[tokio::test]
async fn a_code_send_the_queue_refuses_can_be_asked_for_again_at_once() {
    let w = world(RateLimits::relaxed());
    let addr = "una@example.com";
    fn unavailable<T>(r: &Result<T, Error>) -> bool {
        matches!(r, Err(Error::Unavailable(_)))
    }
    // A first code for the address, and a code replacing one (past its
    // cooldown), each refused by the queue and asked for again at once.
    for _ in 0..2 {
        w.mail.down(true);
        let r = w.auth.send_otp(addr, &meta()).await;
        assert!(unavailable(&r), "{r:?}");
        w.mail.down(false);
        w.auth.send_otp(addr, &meta()).await.expect("a send right after a refused one");
        w.clock.advance(w.auth.policy().otp_send_cooldown_secs);
    }
    w.auth.verify_otp(addr, &w.mail.code(), &meta()).await.expect("the code mailed last");

    verified(&w, "una").await;
    let c = w.auth.login("una", PW.into(), None, &meta()).await.unwrap();
    let id = c.challenge_id.to_string();
    let p = w.auth.policy().clone();
    w.clock.advance(p.code_resend_cooldown_secs);
    w.mail.down(true);
    let r = w.auth.resend_login_code(&id, &meta()).await;
    assert!(unavailable(&r), "{r:?}");
    w.mail.down(false);
    // Every one of the login's resends is still there, the first at once.
    for _ in 0..p.code_max_resends {
        w.auth.resend_login_code(&id, &meta()).await.expect("a resend the refused one did not spend");
        w.clock.advance(p.code_resend_cooldown_secs);
    }
    let r = w.auth.resend_login_code(&id, &meta()).await;
    assert!(matches!(r, Err(Error::ResendsSpent)), "{r:?}");
    w.auth.verify_login_code(&id, &w.mail.code(), &meta()).await.expect("the code mailed last");
}

#[tokio::test]
async fn login_rate_limit_per_identifier_answers_with_the_wait() {
    let w = world(RateLimits::default());
    verified(&w, "hank").await;
    for _ in 0..20 {
        let _ = w.auth.login("hank", "wrong wrong wrong".into(), None, &meta()).await;
        w.clock.advance(1);
    }
    match w.auth.login("hank", PW.into(), None, &meta()).await {
        Err(Error::RateLimited { retry_after }) => assert!((1..=900).contains(&retry_after), "{retry_after}"),
        other => panic!("{other:?}"),
    }
}

/// 100 wrong codes across challenges spend the account's code budget: no
/// code counts after that, not even the right one on a challenge opened
/// before; the password step is refused and locks (the owner is mailed a
/// link to reset), and a lock running out changes nothing. Only a password
/// reset by mail gives the budget back.
#[tokio::test]
async fn the_account_code_budget_holds_the_account_until_a_password_reset() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "ivan").await;
    let mut spent = 0;
    // Opened first, kept for after the budget is spent.
    let kept = w.auth.login("ivan", PW.into(), None, &meta()).await.unwrap();
    let kept_code = w.mail.code();
    // 100 wrong codes over 17 challenges (6 each at most).
    while spent < 100 {
        let c = match w.auth.login("ivan", PW.into(), None, &meta()).await {
            Ok(c) => c,
            Err(e) => panic!("login refused after {spent} wrong codes: {e:?}"),
        };
        let code = w.mail.code();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..6 {
            if spent == 100 {
                break;
            }
            assert!(
                !w.mail.kinds().contains(&"account_locked"),
                "the owner was mailed a lock after {spent} wrong codes"
            );
            let r = w.auth.verify_login_code(&c.challenge_id.to_string(), wrong, &meta()).await;
            assert!(matches!(r, Err(Error::OtpInvalid { .. })), "{r:?}");
            spent += 1;
        }
    }
    // The 100th wrong code locks the account and mails its owner at once:
    // whoever spent the budget knows the password and may never come back
    // to the password step.
    let ivan = stored(&w.store, "ivan").await;
    assert_eq!(ivan.locked_until, Some(w.clock.now() + 900), "the 100th wrong code locks the account");
    match w.mail.last().job {
        MailJob::AccountLocked { codes_spent, .. } => assert!(codes_spent, "the lock mail says to reset"),
        other => panic!("no lock mail after the 100th wrong code: {}", other.kind()),
    }
    let locks = |w: &World| w.mail.kinds().iter().filter(|k| **k == "account_locked").count();
    assert_eq!(locks(&w), 1);
    let r = w.auth.verify_login_code(&kept.challenge_id.to_string(), &kept_code, &meta()).await;
    assert!(matches!(r, Err(Error::OtpExhausted)), "the right code of an open challenge: {r:?}");
    w.clock.advance(61);
    let r = w.auth.resend_login_code(&kept.challenge_id.to_string(), &meta()).await;
    assert!(matches!(r, Err(Error::OtpExhausted)), "a resend issues no code: {r:?}");
    assert!(matches!(w.auth.login("ivan", PW.into(), None, &meta()).await, Err(Error::InvalidCredentials)));
    assert_eq!(locks(&w), 1, "a password step during the lock mails nothing more");
    w.clock.advance(900);
    assert!(
        matches!(w.auth.login("ivan", PW.into(), None, &meta()).await, Err(Error::InvalidCredentials)),
        "the lock ran out and the budget came back"
    );
    match w.mail.last().job {
        MailJob::AccountLocked { codes_spent, .. } => assert!(codes_spent, "the next lock mail says to reset too"),
        other => panic!("no lock mail at the next lock: {}", other.kind()),
    }
    assert_eq!(locks(&w), 2, "the password step after the lock locks and mails again");
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    w.auth.reset_password(&w.mail.reset_token(), NEW_PW.into(), &meta()).await.unwrap();
    w.clock.advance(1);
    signed_in_with(&w, "ivan", NEW_PW, None, &meta()).await;
}

/// A login whose password step came before a password reset (or change)
/// ends with it: its right code is refused and it cannot be resent.
#[tokio::test]
async fn a_login_in_progress_ends_with_a_password_reset() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "rita").await;
    let c = w.auth.login("rita", PW.into(), None, &meta()).await.unwrap();
    let code = w.mail.code();
    w.clock.advance(61);
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    w.auth.reset_password(&w.mail.reset_token(), NEW_PW.into(), &meta()).await.unwrap();
    let id = c.challenge_id.to_string();
    let r = w.auth.resend_login_code(&id, &meta()).await;
    assert!(matches!(r, Err(Error::ChallengeNotFound)), "a resend: {r:?}");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = w.auth.verify_login_code(&id, wrong, &meta()).await;
    assert!(matches!(r, Err(Error::ChallengeNotFound)), "a wrong code: {r:?}");
    let r = w.auth.verify_login_code(&id, &code, &meta()).await;
    assert!(matches!(r, Err(Error::ChallengeNotFound)), "its right code: {r:?}");
    use latchkey_core::ports::UserStore;
    let rita = w.store.user_by_email(&Email::parse(&email).unwrap()).await.unwrap().unwrap();
    assert_eq!(rita.otp_failures, 0, "a wrong code of an ended login spent the budget the reset gave back");
}

fn meta_from(ip: &str) -> RequestMeta {
    RequestMeta { ip: Some(ip.into()), ..Default::default() }
}

/// A full login (password and code) of `name` from `meta`: its tokens.
async fn signed_in(w: &World, name: &str, meta: &RequestMeta) -> latchkey_core::flows::TokenPair {
    signed_in_with(w, name, PW, None, meta).await
}

/// A full login of `name` with password `pw`, presenting `device`.
async fn signed_in_with(
    w: &World,
    name: &str,
    pw: &str,
    device: Option<&str>,
    meta: &RequestMeta,
) -> latchkey_core::flows::TokenPair {
    let c = w.auth.login(name, pw.into(), device, meta).await.unwrap();
    w.auth.verify_login_code(&c.challenge_id.to_string(), &w.mail.code(), meta).await.unwrap()
}

/// A refresh token presented again right after its rotation (a client
/// retrying a refresh whose answer it lost) gets that rotation's token back
/// and ends nothing, up to `refresh_retry_grace_secs` after the rotation,
/// and each such answer is counted in the session with its request (the
/// audit trail's `session_refreshed`, reason `retry_grace`);
/// later, or once the session rotated again, it is a reuse and revokes the
/// session. Two refreshes of one token at once get one token between them.
#[tokio::test]
async fn a_refresh_retried_within_its_grace_gets_the_same_token_and_ends_nothing() {
    let w = world_with_grace();
    let grace = w.auth.policy().refresh_retry_grace_secs;
    assert_eq!(grace, GRACE);
    verified(&w, "alice").await;
    let m = meta();
    let first = signed_in(&w, "alice", &m).await;
    let sid = first.session_id;
    let session = || async { w.store.session(&sid).await.unwrap().unwrap() };

    w.clock.set(T0 + 100);
    let rotated = w.auth.refresh(&first.refresh_token, &m).await.unwrap();
    assert_ne!(rotated.refresh_token, first.refresh_token);
    assert!(session().await.retry_seal.is_some(), "a rotation seals its new secret");
    let stored = session().await;
    for (n, at) in [(1, T0 + 100), (2, T0 + 100 + grace)] {
        w.clock.set(at);
        let retry = RequestMeta { request_id: Some(format!("retry-{n}")), ..meta() };
        let again = w.auth.refresh(&first.refresh_token, &retry).await.expect("a retry within the grace");
        assert_eq!(again.refresh_token, rotated.refresh_token, "a retry at {at} got another token");
        assert_eq!(again.session_id, sid);
        w.auth.me(&again.access_token).await.expect("the retry's access token works");
        let counted = Session { retries_answered: n, meta: retry, ..stored.clone() };
        assert_eq!(session().await, counted, "a retry is counted with its request, and changes nothing else");
    }
    // Only the token the last rotation replaced: once the session rotated
    // again, the first token is a reuse even within the grace.
    let next = w.auth.refresh(&rotated.refresh_token, &m).await.unwrap();
    assert!(matches!(w.auth.refresh(&first.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    assert_eq!(session().await.revoke_reason.as_deref(), Some("refresh_reuse"));
    assert!(matches!(w.auth.refresh(&next.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    assert!(matches!(w.auth.me(&next.access_token).await, Err(Error::Unauthorized)));

    // A second past the grace, the replaced token is a reuse.
    let second = signed_in(&w, "alice", &m).await;
    let rotated = w.auth.refresh(&second.refresh_token, &m).await.unwrap();
    w.clock.advance(grace + 1);
    assert!(matches!(w.auth.refresh(&second.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    assert!(matches!(w.auth.refresh(&rotated.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    let revoked = w.store.session(&second.session_id).await.unwrap().unwrap();
    assert_eq!(revoked.revoke_reason.as_deref(), Some("refresh_reuse"));

    // A rotation stamped ahead of this clock (another instance's) counts
    // the grace either way: at most `grace` seconds ahead.
    for (behind, kept) in [(grace, true), (grace + 1, false)] {
        let pair = signed_in(&w, "alice", &m).await;
        let rotated = w.auth.refresh(&pair.refresh_token, &m).await.unwrap();
        w.clock.advance(-behind);
        let again = w.auth.refresh(&pair.refresh_token, &m).await;
        assert_eq!(
            again.ok().map(|p| p.refresh_token),
            kept.then(|| rotated.refresh_token.clone()),
            "{behind} s behind"
        );
        w.clock.advance(behind);
    }

    // Sent again by another client (another address, or another user
    // agent at the same address) within the grace: a reuse.
    for other in [meta_from("198.51.100.7"), RequestMeta { user_agent: Some("curl/8".into()), ..meta() }] {
        let pair = signed_in(&w, "alice", &m).await;
        let rotated = w.auth.refresh(&pair.refresh_token, &m).await.unwrap();
        assert!(matches!(w.auth.refresh(&pair.refresh_token, &other).await, Err(Error::InvalidRefreshToken)));
        assert!(matches!(w.auth.refresh(&rotated.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    }
}

/// `SessionStore` of the embedded store where another refresh can be made
/// to land right before the next rotation's write (after the refresh read
/// the session): that write then finds the session rotated.
struct RacingSessions {
    store: Arc<EmbeddedStore>,
    before_rotate: Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
    before_retry_count: Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
}

#[async_trait]
impl SessionStore for RacingSessions {
    async fn session(
        &self,
        id: &latchkey_core::domain::SessionId,
    ) -> StoreResult<Option<latchkey_core::domain::Session>> {
        self.store.session(id).await
    }
    async fn rotate_session(
        &self,
        id: &latchkey_core::domain::SessionId,
        old_hash: &str,
        new_hash: &str,
        retry_seal: &str,
        now: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let race = self.before_rotate.lock().unwrap().take();
        if let Some(race) = race {
            race.await;
        }
        self.store.rotate_session(id, old_hash, new_hash, retry_seal, now, meta).await
    }
    async fn revoke_session(
        &self,
        id: &latchkey_core::domain::SessionId,
        now: i64,
        reason: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.store.revoke_session(id, now, reason, meta).await
    }
    async fn live_sessions_of(
        &self,
        user_id: &latchkey_core::domain::UserId,
        now: i64,
    ) -> StoreResult<Vec<latchkey_core::domain::Session>> {
        self.store.live_sessions_of(user_id, now).await
    }
    async fn record_refresh_retry(
        &self,
        id: &latchkey_core::domain::SessionId,
        current_hash: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let race = self.before_retry_count.lock().unwrap().take();
        if let Some(race) = race {
            race.await;
        }
        self.store.record_refresh_retry(id, current_hash, meta).await
    }
}

/// `w`'s store behind [`RacingSessions`]: the sessions, an `Auth` on them
/// (the raced one), and a plain `Auth` on the same store to race it with.
fn racing_sessions(w: &World) -> (Arc<RacingSessions>, Auth, Arc<Auth>) {
    let racing = Arc::new(RacingSessions {
        store: w.store.clone(),
        before_rotate: Mutex::new(None),
        before_retry_count: Mutex::new(None),
    });
    let mut ports = ports_on(w.store.clone(), &w.store, &w.clock, &w.mail);
    ports.sessions = racing.clone();
    let raced = auth_with(ports, RateLimits::relaxed(), 3, with_grace);
    let plain = Arc::new(auth_with(
        ports_on(w.store.clone(), &w.store, &w.clock, &w.mail),
        RateLimits::relaxed(),
        3,
        with_grace,
    ));
    (racing, raced, plain)
}

/// Two refreshes of one token racing (a client's retry sent before its
/// first answer came): the one whose rotation is refused because the
/// other rotated first answers with the other's token, and the session,
/// rotated once, lives on. Sent from another client, the loser revokes it.
#[tokio::test]
async fn a_refresh_that_loses_its_rotation_to_its_own_retry_answers_the_retrys_token() {
    let w = world_with_grace();
    let (racing, raced, first) = racing_sessions(&w);
    verified(&w, "alice").await;
    for (winner_meta, loser_survives) in [(meta(), true), (meta_from("198.51.100.7"), false)] {
        let pair = signed_in(&w, "alice", &meta()).await;
        let won = Arc::new(Mutex::new(None));
        let (first, token, won_slot) = (first.clone(), pair.refresh_token.clone(), won.clone());
        *racing.before_rotate.lock().unwrap() = Some(Box::pin(async move {
            let pair = first.refresh(&token, &winner_meta).await.expect("the first rotation");
            *won_slot.lock().unwrap() = Some(pair.refresh_token);
        }));
        let lost = raced.refresh(&pair.refresh_token, &meta()).await;
        assert!(racing.before_rotate.lock().unwrap().is_none(), "the race did not run");
        let won = won.lock().unwrap().clone().expect("the winner's token");
        let session = w.store.session(&pair.session_id).await.unwrap().unwrap();
        if loser_survives {
            assert_eq!(lost.expect("the loser's answer").refresh_token, won);
            assert_eq!((session.generation, session.revoked_at), (1, None), "rotated once, alive");
            w.auth.refresh(&won, &meta()).await.expect("the winner's token refreshes");
        } else {
            assert!(matches!(lost, Err(Error::InvalidRefreshToken)));
            assert_eq!(session.revoke_reason.as_deref(), Some("refresh_reuse"));
        }
    }
}

/// A retry within the grace whose count finds the session rotated again
/// (after the retry read it) is refused without revoking the session: the
/// token it would give is no longer the session's. Its copy counted
/// nothing, and the session's holder refreshes on.
#[tokio::test]
async fn a_retry_whose_count_finds_the_session_rotated_again_is_refused_and_revokes_nothing() {
    let w = world_with_grace();
    let (racing, raced, other) = racing_sessions(&w);
    verified(&w, "alice").await;
    let pair = signed_in(&w, "alice", &meta()).await;
    let rotated = w.auth.refresh(&pair.refresh_token, &meta()).await.unwrap();
    let next = Arc::new(Mutex::new(None));
    let (token, slot) = (rotated.refresh_token.clone(), next.clone());
    *racing.before_retry_count.lock().unwrap() = Some(Box::pin(async move {
        let pair = other.refresh(&token, &meta()).await.expect("the holder's next rotation");
        *slot.lock().unwrap() = Some(pair.refresh_token);
    }));
    let r = raced.refresh(&pair.refresh_token, &meta()).await;
    assert!(racing.before_retry_count.lock().unwrap().is_none(), "the race did not run");
    assert!(matches!(r, Err(Error::InvalidRefreshToken)), "{r:?}");
    let session = w.store.session(&pair.session_id).await.unwrap().unwrap();
    assert_eq!((session.generation, session.revoked_at, session.retries_answered), (2, None, 0));
    let next = next.lock().unwrap().clone().expect("the holder's token");
    w.auth.refresh(&next, &meta()).await.expect("the holder refreshes on");
}

/// A rotation's retry seal is its new secret's random part XORed with the
/// first 16 bytes of HMAC(code key, "latchkey/refresh-retry-seal/v1",
/// [session id, replaced secret]): the stored session and the replaced
/// token together open it only with the code key. With another key, or
/// read as it is, it is not the random part.
#[tokio::test]
async fn the_retry_seal_opens_only_with_the_code_key() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let w = world(RateLimits::relaxed());
    verified(&w, "alice").await;
    let m = meta();
    let first = signed_in(&w, "alice", &m).await;
    let sid = first.session_id;
    w.clock.set(T0 + 100);
    let rotated = w.auth.refresh(&first.refresh_token, &m).await.unwrap();
    let stored = w.store.session(&sid).await.unwrap().unwrap();
    let seal = hex::decode(stored.retry_seal.expect("a rotation seals")).expect("hex");
    let secret = |token: &str| token.split_once('.').expect("<session>.<secret>").1.to_string();
    let (replaced, current) = (secret(&first.refresh_token), secret(&rotated.refresh_token));
    // The secret: 16 random bytes (22 characters of URL-safe base64), then its tag.
    let random = URL_SAFE_NO_PAD.decode(&current[..22]).expect("base64");
    let opened = |key: u8| -> Vec<u8> {
        let mac =
            CodeKey::new(vec![key; 32]).unwrap().mac("latchkey/refresh-retry-seal/v1", &[&sid.to_string(), &replaced]);
        let pad = hex::decode(&mac[..32]).expect("hex");
        seal.iter().zip(pad).map(|(s, p)| s ^ p).collect()
    };
    assert_eq!((seal.len(), random.len()), (16, 16));
    assert_eq!(opened(3), random, "the service's code key opens it");
    assert_ne!(opened(4), random, "another key does not");
    assert_ne!(seal, random, "it is not the random part as it is");
}

/// By default (`refresh_retry_grace_secs` 0), a replaced token presented
/// again at once is a reuse.
#[tokio::test]
async fn without_a_grace_a_refresh_retry_is_a_reuse() {
    let w = world(RateLimits::relaxed());
    assert_eq!(w.auth.policy().refresh_retry_grace_secs, 0, "the default");
    verified(&w, "alice").await;
    let first = signed_in(&w, "alice", &meta()).await;
    let rotated = w.auth.refresh(&first.refresh_token, &meta()).await.unwrap();
    assert!(matches!(w.auth.refresh(&first.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)));
    assert!(matches!(w.auth.refresh(&rotated.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)));
}

/// A session is over for every reader at its end (30 days after the code
/// step), however recently it was refreshed: an access token made by a
/// refresh a minute before the end lives that minute, not 10 (a relying
/// party that checks only the token stops with the api).
#[tokio::test]
async fn a_session_ends_for_every_reader_at_its_thirty_days() {
    let w = world(RateLimits::relaxed());
    verified(&w, "alice").await;
    let pair = signed_in(&w, "alice", &meta()).await;
    let end = T0 + 30 * 24 * 3600;
    w.clock.set(end - 60);
    let late = w.auth.refresh(&pair.refresh_token, &meta()).await.expect("a live session refreshes");
    assert_eq!(late.expires_in, 60, "the access token lives what is left of the session");
    w.clock.set(end - 1);
    w.auth.me(&late.access_token).await.expect("live a second before the end");
    w.auth.browser_session(&late.refresh_token, &meta()).await.expect("signed in a second before the end");
    w.clock.set(end);
    assert!(matches!(w.auth.me(&late.access_token).await, Err(Error::Unauthorized)));
    assert!(matches!(w.auth.browser_session(&late.refresh_token, &meta()).await, Err(Error::Unauthorized)));
    let change = w
        .auth
        .change_password(Caller::Bearer(&late.access_token), PW.into(), "a new passphrase, long".into(), &meta())
        .await;
    assert!(matches!(change, Err(Error::Unauthorized)));
    assert!(matches!(w.auth.refresh(&late.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)));
    // Nothing above wrote: the password is the one it was.
    assert!(w.auth.login("alice", PW.into(), None, &meta()).await.is_ok());
}

/// A session made before the code HMAC key changed is over everywhere
/// after: refresh and logout refuse its secret as not issued, and so does
/// the browser's session check (it compared only the secret's hash, so a
/// browser stayed signed in and could not sign out).
#[tokio::test]
async fn a_session_from_before_a_code_key_rotation_is_over_for_every_reader() {
    let w = world(RateLimits::default());
    verified(&w, "alice").await;
    let pair = signed_in(&w, "alice", &meta()).await;
    w.auth.browser_session(&pair.refresh_token, &meta()).await.expect("signed in under the key it was made with");
    let rotated = auth_on(w.store.clone(), &w.store, &w.clock, &w.mail, RateLimits::default(), 4);
    assert!(matches!(rotated.browser_session(&pair.refresh_token, &meta()).await, Err(Error::Unauthorized)));
    assert!(matches!(rotated.refresh(&pair.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)));
    assert!(matches!(rotated.logout(&pair.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)));
    // Refused as not issued, so none of them ended the session: back under
    // the old key, it is still the same live session.
    w.auth.browser_session(&pair.refresh_token, &meta()).await.expect("untouched");
}

/// Someone who knows only the username keeps the account locked and its
/// per-identifier limit spent; the owner's device still gets in.
#[tokio::test]
async fn a_device_that_finished_a_login_gets_past_a_lock_someone_else_keeps_up() {
    let w = world(RateLimits::default());
    verified(&w, "olga").await;
    let owner = meta_from("192.0.2.1");
    let device = signed_in(&w, "olga", &owner).await.device_token.expect("a finished login gets a device token");
    // A refresh does not hand out another one.
    let first = signed_in(&w, "olga", &owner).await;
    assert_eq!(w.auth.refresh(&first.refresh_token, &owner).await.unwrap().device_token, None);

    let attacker = meta_from("198.51.100.7");
    for _ in 0..20 {
        let _ = w.auth.login("olga", "wrong wrong wrong".into(), None, &attacker).await;
        w.clock.advance(2);
    }
    let olga =
        w.store.user_by_username(&latchkey_core::domain::Username::parse("olga").unwrap()).await.unwrap().unwrap();
    assert!(olga.is_locked(w.auth.now()));
    // Without the device: the identifier's limit is spent, then the lock.
    assert!(matches!(w.auth.login("olga", PW.into(), None, &owner).await, Err(Error::RateLimited { .. })));
    // With it: the password step passes, and the code finishes the login.
    let c = w.auth.login("olga", PW.into(), Some(&device), &owner).await.expect("the owner's device gets in");
    let pair = w.auth.verify_login_code(&c.challenge_id.to_string(), &w.mail.code(), &owner).await.unwrap();
    assert!(pair.device_token.is_some());
    // The lock the guessing set is left to run out, for everyone else.
    let after = w.store.user_by_id(&olga.id).await.unwrap().unwrap();
    assert_eq!(after.locked_until, olga.locked_until);
    // The device still needs the password. (During the lock a wrong one
    // changes nothing: the lock is not extended, no second mail.)
    assert!(matches!(
        w.auth.login("olga", "wrong wrong wrong".into(), Some(&device), &owner).await,
        Err(Error::InvalidCredentials)
    ));
    assert_eq!(w.mail.kinds().iter().filter(|k| **k == "account_locked").count(), 1);
}

#[tokio::test]
async fn a_device_token_vouches_only_for_its_own_account_while_valid() {
    let w = world(RateLimits::relaxed());
    verified(&w, "pia").await;
    verified(&w, "quinn").await;
    let m = meta();
    let pia = signed_in(&w, "pia", &m).await;
    let quinn = signed_in(&w, "quinn", &m).await.device_token.unwrap();
    let lock = |name: &'static str| {
        let w = &w;
        async move {
            for _ in 0..10 {
                let _ = w.auth.login(name, "wrong wrong wrong".into(), None, &meta_from("198.51.100.7")).await;
            }
        }
    };
    lock("pia").await;
    let refused = |r: Result<_, Error>| matches!(r, Err(Error::InvalidCredentials));
    // Another account's token, a forged tag, a mangled one: as if none.
    assert!(refused(w.auth.login("pia", PW.into(), Some(&quinn), &m).await));
    let device = pia.device_token.clone().unwrap();
    let mut forged = device.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert!(refused(w.auth.login("pia", PW.into(), Some(&forged), &m).await));
    assert!(refused(w.auth.login("pia", PW.into(), Some("x.y.z.w"), &m).await));
    assert!(w.auth.login("pia", PW.into(), Some(&device), &m).await.is_ok());

    // A password change ends the tokens issued before it, even in its second.
    w.clock.advance(1);
    // (Locked: this login comes through the device.)
    let same_second = signed_in_with(&w, "pia", PW, Some(&device), &m).await.device_token.unwrap();
    w.auth
        .change_password(Caller::Bearer(&pia.access_token), PW.into(), "a brand new passphrase here".into(), &m)
        .await
        .unwrap();
    w.clock.advance(1);
    assert!(refused(w.auth.login("pia", "a brand new passphrase here".into(), Some(&device), &m).await));
    assert!(refused(w.auth.login("pia", "a brand new passphrase here".into(), Some(&same_second), &m).await));

    // Past its lifetime, a token is ignored too.
    let policy = w.auth.policy().clone();
    w.clock.advance(policy.login_lock_secs + 1);
    let fresh = signed_in_with(&w, "pia", "a brand new passphrase here", None, &m).await.device_token.unwrap();
    w.clock.advance(policy.device_token_ttl_secs - 1);
    lock("pia").await;
    assert!(w.auth.login("pia", "a brand new passphrase here".into(), Some(&fresh), &m).await.is_ok());
    w.clock.advance(1);
    assert!(refused(w.auth.login("pia", "a brand new passphrase here".into(), Some(&fresh), &m).await));
}

/// A wrong current password in a password change is a wrong password: it
/// counts toward the account's lock (the owner is mailed when it locks),
/// and a session whose guess locks the account, or that guesses during a
/// lock, is ended; the user's other sessions live on, and a right current
/// password still changes it during a lock.
#[tokio::test]
async fn a_wrong_current_password_counts_toward_the_lock_and_a_guessing_session_ends() {
    let w = world(RateLimits::relaxed());
    verified(&w, "uma").await;
    let m = meta();
    let (guesser, owner) = (signed_in(&w, "uma", &m).await, signed_in(&w, "uma", &m).await);
    let user = async || w.store.user_by_email(&Email::parse("uma@example.com").unwrap()).await.unwrap().unwrap();
    let threshold = w.auth.policy().login_lock_threshold;
    let wrong = async |t: &latchkey_core::flows::TokenPair| {
        w.auth
            .change_password(Caller::Bearer(&t.access_token), "not my password at all".into(), NEW_PW.into(), &m)
            .await
    };
    for i in 1..threshold {
        let r = wrong(&guesser).await;
        assert!(matches!(r, Err(Error::Validation { field: "current_password", .. })), "{r:?}");
        assert_eq!(user().await.failed_logins, i);
    }
    assert!(w.auth.me(&guesser.access_token).await.is_ok());
    let mails = w.mail.kinds().len();
    assert!(matches!(wrong(&guesser).await, Err(Error::Unauthorized)), "the guess that locks");
    let locked_until = user().await.locked_until.expect("locked");
    assert_eq!(w.mail.kinds()[mails..], ["account_locked"]);
    assert!(w.auth.me(&guesser.access_token).await.is_err(), "the guessing session ended");
    assert!(w.auth.refresh(&guesser.refresh_token, &m).await.is_err(), "its refresh token too");
    assert!(w.auth.me(&owner.access_token).await.is_ok(), "another session lives on");

    // During the lock: one wrong guess ends the session, the lock stays as
    // it was; a right password still makes the change.
    w.clock.advance(5);
    let other = w.auth.refresh(&owner.refresh_token, &m).await.unwrap();
    assert!(matches!(wrong(&other).await, Err(Error::Unauthorized)));
    assert!(w.auth.me(&other.access_token).await.is_err());
    assert_eq!(user().await.locked_until, Some(locked_until), "a guess during a lock extends it");
    let device = owner.device_token.clone();
    let third = signed_in_with(&w, "uma", PW, device.as_deref(), &m).await;
    w.auth
        .change_password(Caller::Bearer(&third.access_token), PW.into(), NEW_PW.into(), &m)
        .await
        .expect("the right password");
}

/// "Sign out everywhere else": with the current password, every other
/// session of the user ends, and every login in progress and device token
/// with them (this client's too); the session that asked lives on, the
/// password stays, nobody is mailed. A wrong password is refused, counted
/// toward the lock and ends nothing; no access token, nothing.
#[tokio::test]
async fn signing_out_everywhere_else_ends_every_other_session_login_and_device_token() {
    let w = world(RateLimits::relaxed());
    verified(&w, "wes").await;
    let m = meta();
    let (mine, other) = (signed_in(&w, "wes", &m).await, signed_in(&w, "wes", &m).await);
    let devices = [mine.device_token.clone(), other.device_token.clone()];
    let user = async || w.store.user_by_email(&Email::parse("wes@example.com").unwrap()).await.unwrap().unwrap();
    let before = user().await;

    let r = w.auth.end_other_sessions(Caller::Bearer(&mine.access_token), "not my password at all".into(), &m).await;
    assert!(matches!(r, Err(Error::Validation { field: "current_password", .. })), "{r:?}");
    assert_eq!(user().await.failed_logins, 1, "a wrong password counts toward the lock");
    let r = w.auth.end_other_sessions(Caller::Bearer("not.a.token"), PW.into(), &m).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");
    assert!(w.auth.me(&other.access_token).await.is_ok(), "a refused request ended a session");

    let in_progress = w.auth.login("wes", PW.into(), None, &m).await.unwrap();
    let code = w.mail.code();
    let mails = w.mail.kinds().len();
    let first =
        w.auth.end_other_sessions(Caller::Bearer(&mine.access_token), PW.into(), &m).await.expect("the right password");
    assert_eq!(w.mail.kinds().len(), mails, "nobody is mailed");
    let after = user().await;
    assert_eq!(after.password_hash, before.password_hash, "the password stays");
    assert_eq!(after.password_epoch, before.password_epoch + 1);

    assert!(w.auth.me(&other.access_token).await.is_err(), "the other session's access token");
    assert!(w.auth.refresh(&other.refresh_token, &m).await.is_err(), "its refresh token");
    let r = w.auth.verify_login_code(&in_progress.challenge_id.to_string(), &code, &m).await;
    assert!(r.is_err(), "a login in progress finished after it: {r:?}");
    assert!(w.auth.me(&mine.access_token).await.is_ok(), "the session that asked ended");
    let mine = w.auth.refresh(&mine.refresh_token, &m).await.expect("and refreshes");
    // Twice in a row (a second tab): each counts one more epoch.
    let second = w.auth.end_other_sessions(Caller::Bearer(&mine.access_token), PW.into(), &m).await.expect("again");
    assert_eq!(user().await.password_epoch, before.password_epoch + 2);
    assert!(w.auth.me(&mine.access_token).await.is_ok());

    // The password still signs in; no device token from before vouches
    // (the first sign-out's own one neither: the second ended it), the
    // last sign-out's does.
    let fresh = signed_in(&w, "wes", &m).await;
    assert!(w.auth.me(&fresh.access_token).await.is_ok());
    for _ in 0..10 {
        let _ = w.auth.login("wes", "wrong wrong wrong".into(), None, &meta_from("198.51.100.7")).await;
    }
    let refused = |r: Result<_, Error>| matches!(r, Err(Error::InvalidCredentials));
    for device in devices.iter().map(Option::as_deref).chain([Some(first.as_str())]) {
        assert!(device.is_some());
        assert!(refused(w.auth.login("wes", PW.into(), device, &m).await), "a device token from before");
    }
    let r = w.auth.login("wes", PW.into(), fresh.device_token.as_deref(), &m).await;
    assert!(r.is_ok(), "a device token from after: {r:?}");
    let r = w.auth.login("wes", PW.into(), Some(&second), &m).await;
    assert!(r.is_ok(), "the last sign-out's own device token: {r:?}");
}

/// A user's list of sessions: the live ones only (not a signed-out one,
/// not one a sign-out everywhere else ended, not another user's), the most
/// recently active first, the asking one marked, each with its last
/// request's address. Ending one takes the password: a wrong one is
/// refused and counted and ends nothing; a session that is not one of the
/// account's live ones is `SessionNotFound`, and only after the password.
#[tokio::test]
async fn a_user_lists_their_live_sessions_and_ends_one_with_their_password() {
    let w = world(RateLimits::relaxed());
    verified(&w, "lia").await;
    verified(&w, "noa").await;
    let m = meta();
    let old = signed_in(&w, "lia", &meta_from("198.51.100.1")).await;
    let gone = signed_in(&w, "lia", &m).await;
    w.auth.logout(&gone.refresh_token, &m).await.unwrap();
    let ended = signed_in(&w, "lia", &m).await;
    w.auth.end_other_sessions(Caller::Bearer(&old.access_token), PW.into(), &m).await.unwrap();
    w.clock.advance(5);
    let laptop = signed_in(&w, "lia", &meta_from("198.51.100.2")).await;
    w.clock.advance(5);
    let phone = signed_in(&w, "lia", &meta_from("198.51.100.3")).await;
    // Another user's session at the same `password_epoch` as this user's.
    let noa = signed_in(&w, "noa", &m).await;
    w.auth.end_other_sessions(Caller::Bearer(&noa.access_token), PW.into(), &m).await.unwrap();
    let theirs = signed_in(&w, "noa", &m).await;
    w.clock.advance(5);
    let laptop = w.auth.refresh(&laptop.refresh_token, &meta_from("198.51.100.4")).await.unwrap();

    let list = w.auth.sessions(Caller::Bearer(&phone.access_token), &m).await.expect("the list");
    let ids: Vec<_> = list.iter().map(|v| v.id).collect();
    assert_eq!(ids, [laptop.session_id, phone.session_id, old.session_id], "live, most recently active first");
    assert_eq!(list.iter().map(|v| v.current).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!(list[0].ip.as_deref(), Some("198.51.100.4"), "the address of its last refresh");
    assert!(list[0].last_active_at > list[0].created_at);
    assert!(matches!(w.auth.sessions(Caller::Bearer("not.a.token"), &m).await, Err(Error::Unauthorized)));

    let user = async || w.store.user_by_email(&Email::parse("lia@example.com").unwrap()).await.unwrap().unwrap();
    let end = |target: String, pw: &'static str| {
        let (access, m) = (phone.access_token.clone(), m.clone());
        let auth = w.auth.clone();
        async move { auth.end_session(Caller::Bearer(&access), &target, pw.into(), &m).await }
    };
    let r = end(laptop.session_id.to_string(), "not my password at all").await;
    assert!(matches!(r, Err(Error::Validation { field: "current_password", .. })), "{r:?}");
    assert_eq!(user().await.failed_logins, 1, "a wrong password counts toward the lock");
    assert!(w.auth.me(&laptop.access_token).await.is_ok(), "a refused request ended the session");
    let refused = [theirs.session_id, gone.session_id, ended.session_id].map(|id| id.to_string());
    for target in refused.into_iter().chain(["not-a-session".to_string()]) {
        let r = end(target.clone(), PW).await;
        assert!(matches!(r, Err(Error::SessionNotFound)), "{target}: {r:?}");
    }
    assert!(w.auth.me(&theirs.access_token).await.is_ok(), "another user's session ended");

    end(laptop.session_id.to_string(), PW).await.expect("the right password");
    assert!(w.auth.me(&laptop.access_token).await.is_err(), "the ended session's access token");
    assert!(w.auth.refresh(&laptop.refresh_token, &m).await.is_err(), "its refresh token");
    assert!(w.auth.me(&phone.access_token).await.is_ok(), "the asking session");
    assert!(w.auth.me(&old.access_token).await.is_ok(), "a third session");
    let r = end(laptop.session_id.to_string(), PW).await;
    assert!(matches!(r, Err(Error::SessionNotFound)), "ended twice: {r:?}");
    let list = w.auth.sessions(Caller::Bearer(&phone.access_token), &m).await.unwrap();
    assert_eq!(list.iter().map(|v| v.id).collect::<Vec<_>>(), [phone.session_id, old.session_id]);

    // Its own: signing out.
    end(phone.session_id.to_string(), PW).await.expect("its own");
    assert!(w.auth.me(&phone.access_token).await.is_err());
}

/// Sessions and device tokens end with a password change or reset by
/// count (`password_epoch`), not by clock: a login finished in a change's
/// own second lives on, and a login whose code step read a later clock than
/// a reset but wrote before it (the clock set back here) ends with it.
#[tokio::test]
async fn sessions_and_device_tokens_end_by_count_not_by_clock() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "vera").await;
    let m = meta();
    let first = signed_in(&w, "vera", &m).await;
    let old_device = first.device_token.clone().unwrap();
    let changed =
        w.auth.change_password(Caller::Bearer(&first.access_token), PW.into(), NEW_PW.into(), &m).await.unwrap();
    // Still T0: the change's own second.
    let second = signed_in_with(&w, "vera", NEW_PW, None, &m).await;
    assert!(w.auth.me(&first.access_token).await.is_ok(), "the session that changed the password ended");
    assert!(w.auth.me(&second.access_token).await.is_ok(), "a login in the change's second ended");
    let new_device = second.device_token.clone().unwrap();
    let second = w.auth.refresh(&second.refresh_token, &m).await.expect("a refresh after the change");
    for _ in 0..10 {
        let _ = w.auth.login("vera", "wrong wrong wrong".into(), None, &meta_from("198.51.100.7")).await;
    }
    let refused = |r: Result<_, Error>| matches!(r, Err(Error::InvalidCredentials));
    assert!(refused(w.auth.login("vera", NEW_PW.into(), Some(&old_device), &m).await), "a token from before");
    assert!(w.auth.login("vera", NEW_PW.into(), Some(&new_device), &m).await.is_ok(), "a token of the change's second");
    assert!(w.auth.login("vera", NEW_PW.into(), Some(&changed), &m).await.is_ok(), "the change's own token");

    // A reset link; then a login whose code step took T0 + 20 from its
    // clock; then the reset, whose clock says T0 + 10.
    w.clock.set(T0 + 5);
    w.auth.request_password_reset(&email, &m).await.unwrap();
    let link = w.mail.reset_token();
    w.clock.set(T0 + 20);
    let late = signed_in_with(&w, "vera", NEW_PW, Some(&new_device), &m).await;
    w.clock.set(T0 + 10);
    let phone = w.auth.reset_password(&link, "yet another fine passphrase".into(), &m).await.unwrap();
    w.clock.set(T0 + 21);
    for pair in [&first, &second, &late] {
        assert!(
            matches!(w.auth.me(&pair.access_token).await, Err(Error::Unauthorized)),
            "a session outlived the reset"
        );
        assert!(matches!(w.auth.refresh(&pair.refresh_token, &m).await, Err(Error::InvalidRefreshToken)));
    }
    let late_device = late.device_token.unwrap();
    for _ in 0..10 {
        let _ = w.auth.login("vera", "wrong wrong wrong".into(), None, &meta_from("198.51.100.7")).await;
    }
    let pw = "yet another fine passphrase";
    assert!(refused(w.auth.login("vera", pw.into(), Some(&late_device), &m).await), "a token from before the reset");
    assert!(w.auth.login("vera", pw.into(), Some(&phone), &m).await.is_ok(), "the reset's own token");
}

/// A wrong password for an account deleted while the password was checked
/// is refused as any wrong password is (it was a 500: the failure count
/// found no account).
#[tokio::test]
async fn a_wrong_password_for_an_account_deleted_meanwhile_is_refused_as_one() {
    let (w, racing) = racing_world();
    verified(&w, "gwen").await;
    racing.after_next_read(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "gwen").await;
            store.delete_account(&u, &meta()).await.unwrap();
        })
    }));
    let r = w.auth.login("gwen", "wrong wrong wrong".into(), None, &meta()).await;
    assert!(racing.read_raced(), "the deletion did not land while the password was checked");
    assert!(matches!(r, Err(Error::InvalidCredentials)), "{r:?}");
}

/// A password change that commits between a reset's read and its write
/// moves the epoch on: the reset is refused once, made again from the new
/// epoch, ends the change's session too, and its device token vouches at
/// the epoch it set.
#[tokio::test]
async fn a_reset_made_while_a_change_commits_is_made_again_from_the_new_epoch() {
    let (w, racing) = racing_world();
    let email = verified(&w, "walt").await;
    let m = meta();
    let session = signed_in(&w, "walt", &m).await;
    w.auth.request_password_reset(&email, &m).await.unwrap();
    let link = w.mail.reset_token();
    let sid = session.session_id;
    racing.before_next_write(Box::new(move |store| {
        Box::pin(async move {
            let u = stored(&store, "walt").await;
            let (hash, epoch) = (u.password_hash.clone(), u.password_epoch);
            store.change_password(&u.id, &hash, epoch, "$argon2id$changed-meanwhile", &sid, T0, &meta()).await.unwrap();
        })
    }));
    let device = w.auth.reset_password(&link, NEW_PW.into(), &meta()).await.expect("the reset made again");
    assert!(racing.raced(), "the change did not land before the reset's write");
    let after = stored(&w.store, "walt").await;
    assert_eq!((after.password_epoch, after.password_reset_at), (2, Some(T0)));
    assert!(matches!(w.auth.me(&session.access_token).await, Err(Error::Unauthorized)), "the change's session lives");
    for _ in 0..10 {
        let _ = w.auth.login("walt", "wrong wrong wrong".into(), None, &meta_from("198.51.100.7")).await;
    }
    assert!(w.auth.login("walt", NEW_PW.into(), Some(&device), &m).await.is_ok(), "the reset's token");
}

/// A password change racing its own session's "sign out everywhere else"
/// (made in another tab between the check and the write): the password it
/// checked is still the one stored, so the change is made on top of it,
/// from the newer epoch, and the session lives on.
#[tokio::test]
async fn a_change_racing_its_own_sessions_sign_out_elsewhere_is_made_on_top() {
    let (w, racing) = racing_world();
    verified(&w, "xena").await;
    let m = meta();
    let session = signed_in(&w, "xena", &m).await;
    let sid = session.session_id;
    racing.before_next_write(Box::new(move |store| {
        Box::pin(async move {
            let u = stored(&store, "xena").await;
            let (hash, epoch) = (u.password_hash.clone(), u.password_epoch);
            store.change_password(&u.id, &hash, epoch, &hash, &sid, T0, &meta()).await.unwrap();
        })
    }));
    w.auth
        .change_password(Caller::Bearer(&session.access_token), PW.into(), NEW_PW.into(), &m)
        .await
        .expect("made on top");
    assert!(racing.raced(), "the sign-out did not land before the change's write");
    assert_eq!(stored(&w.store, "xena").await.password_epoch, 2);
    assert!(w.auth.me(&session.access_token).await.is_ok(), "the session ended");
    assert!(w.auth.login("xena", NEW_PW.into(), None, &m).await.is_ok(), "the new password");
}

/// Others' wrong passwords lock the account while one more wrong password
/// is hashed (it read the user unlocked): it is counted against the lock,
/// and mails nothing, since it did not start the lock (the failure that did
/// mails the owner; a burst would otherwise mail once a request).
#[tokio::test]
async fn a_wrong_password_that_meets_a_lock_started_during_its_check_mails_no_one() {
    let (w, racing) = racing_world();
    verified(&w, "yuri").await;
    racing.after_next_read(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "yuri").await;
            assert!(store.record_login_failure(&u.id, T0, 1, 900, &meta()).await.unwrap().started_lock);
        })
    }));
    let mails = w.mail.count();
    let refused = w.auth.login("yuri", "wrong wrong wrong".into(), None, &meta()).await;
    assert!(racing.read_raced(), "the lock did not land during the check");
    assert!(matches!(refused, Err(Error::InvalidCredentials)), "{refused:?}");
    assert_eq!(w.mail.kinds()[mails..], [] as [&str; 0], "a second lock mail, from a failure that met the lock");
    assert_eq!(stored(&w.store, "yuri").await.locked_until, Some(T0 + 900), "the lock as started, not extended");
}

/// The right password, checked while others' wrong ones lock an account
/// that had no failures on record: refused like any login during a lock,
/// with no challenge and no code mailed.
#[tokio::test]
async fn the_right_password_is_refused_if_a_lock_starts_while_it_is_checked() {
    let (w, racing) = racing_world();
    verified(&w, "zoe").await;
    assert_eq!(stored(&w.store, "zoe").await.failed_logins, 0);
    racing.after_next_read(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "zoe").await;
            store.record_login_failure(&u.id, T0, 1, 900, &meta()).await.unwrap();
        })
    }));
    let mails = w.mail.count();
    let refused = w.auth.login("zoe", PW.into(), None, &meta()).await;
    assert!(racing.read_raced(), "the lock did not land during the check");
    assert!(matches!(refused, Err(Error::InvalidCredentials)), "a login during a lock: {refused:?}");
    assert_eq!(w.mail.count(), mails, "a code mailed during a lock");
    let zoe = stored(&w.store, "zoe").await;
    assert_eq!((zoe.locked_until, zoe.failed_logins), (Some(T0 + 900), 0), "the lock stays as it was");
    // Once it has run out, the same password gets a code.
    w.clock.set(T0 + 900);
    w.auth.login("zoe", PW.into(), None, &meta()).await.expect("after the lock");
    assert_eq!(w.mail.kinds()[mails..], ["login_code"]);
}

/// A login's rehash that lands between a password change's check and its
/// write leaves the epoch as it was: the change is made again over the new
/// hash. A reset that lands there ends the changing session: refused.
#[tokio::test]
async fn a_password_change_is_made_again_over_a_rehash_but_not_over_a_reset() {
    let (w, racing) = racing_world();
    verified(&w, "xena").await;
    let m = meta();
    let session = signed_in(&w, "xena", &m).await;
    racing.before_next_write(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "xena").await;
            store.set_password_hash(&u.id, &u.password_hash, "$argon2id$rehashed", &meta()).await.unwrap();
        })
    }));
    w.auth
        .change_password(Caller::Bearer(&session.access_token), PW.into(), NEW_PW.into(), &m)
        .await
        .expect("made again");
    assert!(racing.raced());
    let after = stored(&w.store, "xena").await;
    assert_eq!(after.password_epoch, 1);
    assert_ne!(after.password_hash, "$argon2id$rehashed");
    assert!(w.auth.me(&session.access_token).await.is_ok(), "the changing session ended");
    signed_in_with(&w, "xena", NEW_PW, None, &m).await;

    racing.before_next_write(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "xena").await;
            let link = latchkey_core::domain::ResetLink {
                issued_at: T0,
                resets: u.password_resets,
                email_changes: u.email_changes,
            };
            store.reset_password(&u.id, link, u.password_epoch, "$argon2id$reset", T0 + 1, &meta()).await.unwrap();
        })
    }));
    let r = w
        .auth
        .change_password(
            Caller::Bearer(&session.access_token),
            NEW_PW.into(),
            "thunder kettle meadow lantern".into(),
            &m,
        )
        .await;
    assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");
    assert!(racing.raced());
    let after = stored(&w.store, "xena").await;
    assert_eq!((after.password_epoch, after.password_hash.as_str()), (2, "$argon2id$reset"));
}

/// Two changes from one session at once: the one that loses is told the
/// password it checked is no longer the current one, and the session
/// lives on (a 401 would tell the client to drop good tokens).
#[tokio::test]
async fn a_change_that_loses_to_another_change_of_its_session_names_the_password() {
    let (w, racing) = racing_world();
    verified(&w, "yuri").await;
    let m = meta();
    let session = signed_in(&w, "yuri", &m).await;
    let sid = session.session_id;
    racing.before_next_write(Box::new(move |store| {
        Box::pin(async move {
            let u = stored(&store, "yuri").await;
            let (hash, epoch) = (u.password_hash.clone(), u.password_epoch);
            store.change_password(&u.id, &hash, epoch, "$argon2id$the-other-change", &sid, T0, &meta()).await.unwrap();
        })
    }));
    let err =
        w.auth.change_password(Caller::Bearer(&session.access_token), PW.into(), NEW_PW.into(), &m).await.unwrap_err();
    assert!(matches!(err, Error::Validation { field: "current_password", .. }), "{err:?}");
    assert!(racing.raced());
    assert!(w.auth.me(&session.access_token).await.is_ok(), "the session that made the other change ended");
}

/// A device's password steps have a limit of their own (10 an hour), and a
/// token for another account does not skip that account's identifier limit.
#[tokio::test]
async fn a_device_has_a_limit_of_its_own() {
    let w = world(RateLimits::default());
    verified(&w, "rosa").await;
    verified(&w, "sam").await;
    let rosa = signed_in(&w, "rosa", &meta_from("192.0.2.1")).await.device_token.unwrap();
    let other = signed_in(&w, "rosa", &meta_from("192.0.2.1")).await.device_token.unwrap();
    for i in 0..10 {
        let r = w
            .auth
            .login("rosa", "wrong wrong wrong".into(), Some(&rosa), &meta_from(&format!("192.0.2.{}", 10 + i)))
            .await;
        assert!(matches!(r, Err(Error::InvalidCredentials)), "{i}: {r:?}");
        w.clock.advance(60);
    }
    // Outside a lock a device's wrong passwords count like anyone's: the
    // tenth locks the account and the owner is told.
    let rosa_now = w.store.user_by_username(&latchkey_core::domain::Username::parse("rosa").unwrap()).await.unwrap();
    assert!(rosa_now.unwrap().is_locked(w.auth.now()));
    assert_eq!(w.mail.kinds().iter().filter(|k| **k == "account_locked").count(), 1);
    match w.auth.login("rosa", PW.into(), Some(&rosa), &meta_from("192.0.2.99")).await {
        Err(Error::RateLimited { retry_after }) => assert!((1..=3600).contains(&retry_after), "{retry_after}"),
        other => panic!("{other:?}"),
    }
    // Another device of rosa's has its own count.
    assert!(w.auth.login("rosa", PW.into(), Some(&other), &meta_from("192.0.2.98")).await.is_ok());
    // Someone holding rosa's token guessing sam's password: sam's own limit.
    for i in 0..20 {
        let _ = w.auth.login("sam", "wrong wrong wrong".into(), None, &meta_from(&format!("198.51.100.{i}"))).await;
    }
    assert!(matches!(
        w.auth.login("sam", "wrong wrong wrong".into(), Some(&other), &meta_from("203.0.113.5")).await,
        Err(Error::RateLimited { .. })
    ));
}

/// Someone registers another person's address and never verifies it. For
/// 7 days the address (and the username) stay with that account: the owner
/// signing up gets the generic answer and a "someone tried" mail. After
/// that, the owner's registration replaces the unverified account, whose
/// latest link stops working.
#[tokio::test]
async fn an_unverified_account_holds_its_names_for_seven_days_only() {
    let w = world(RateLimits::relaxed());
    let m = meta();
    w.auth.register("squatter", "owner@example.com", PW.into(), &m).await.unwrap();
    let hold = w.auth.policy().unverified_hold_secs;
    assert_eq!(hold, 7 * 86_400);
    // A fresh link for the squatter's account, shortly before its hold ends.
    w.clock.set(T0 + hold - 3600);
    w.auth.resend_verification("owner@example.com", &m).await.unwrap();
    let squatters_link = w.mail.token();

    w.clock.set(T0 + hold);
    w.auth.register("owner-early", "owner@example.com", PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.last().job.kind(), "signup_attempt", "within the hold: the address is taken");
    assert!(matches!(w.auth.register("squatter", "other@example.com", PW.into(), &m).await, Err(Error::UsernameTaken)));
    // The refused try holds its username as an account would.
    assert!(matches!(
        w.auth.register("owner-early", "other@example.com", PW.into(), &m).await,
        Err(Error::UsernameTaken)
    ));

    w.clock.set(T0 + hold + 1);
    w.auth.register("owner", "owner@example.com", PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.last().job.kind(), "verify_email", "past the hold: the owner's own account");
    let owners_link = w.mail.token();
    assert!(matches!(w.auth.verify_email(&squatters_link, &m).await, Err(Error::VerificationInvalid)));
    w.auth.verify_email(&owners_link, &m).await.unwrap();
    assert!(matches!(w.auth.login("squatter", PW.into(), None, &m).await, Err(Error::InvalidCredentials)));
    w.auth.login("owner@example.com", PW.into(), None, &m).await.expect("the owner signs in");
    // The squatter's username is free again.
    w.auth.register("squatter", "someone@example.com", PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.last().job.kind(), "verify_email");

    // A verified account keeps its names however old.
    w.clock.set(T0 + 100 * 86_400);
    w.auth.register("another", "owner@example.com", PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.last().job.kind(), "signup_attempt");
}

const NEW_PW: &str = "a brand new passphrase for winter";

/// Whether the reset link `token` is refused as dead (`ResetLinkInvalid`)
/// when it tries to set `password`.
async fn reset_refused(w: &World, token: &str, password: &str) -> bool {
    matches!(w.auth.reset_password(token, password.into(), &meta()).await, Err(Error::ResetLinkInvalid))
}

/// The link sets a new password once; every session ends, the old password
/// stops working and the owner is told.
#[tokio::test]
async fn a_reset_link_sets_a_new_password_once_and_ends_every_session() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "rita").await;
    let before = signed_in(&w, "rita", &meta()).await;
    w.clock.set(T0 + 10);
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let MailJob::PasswordReset { expires_minutes, .. } = w.mail.last().job else { panic!("no reset mail") };
    assert_eq!(expires_minutes, 60);
    let token = w.mail.reset_token();
    w.auth.reset_password(&token, NEW_PW.into(), &meta()).await.unwrap();
    match w.mail.last().job {
        MailJob::PasswordChanged { by_reset, at, .. } => assert_eq!((by_reset, at), (true, T0 + 10)),
        other => panic!("the owner is not told: {}", other.kind()),
    }
    assert!(reset_refused(&w, &token, "yet another fine passphrase").await, "a second use");
    assert!(
        matches!(w.auth.refresh(&before.refresh_token, &meta()).await, Err(Error::InvalidRefreshToken)),
        "the old session lives"
    );
    assert!(matches!(w.auth.me(&before.access_token).await, Err(Error::Unauthorized)), "the old access token works");
    assert!(matches!(w.auth.login("rita", PW.into(), None, &meta()).await, Err(Error::InvalidCredentials)));
    w.clock.set(T0 + 11);
    signed_in_with(&w, "rita", NEW_PW, None, &meta()).await;
}

/// A link works for one hour, once, only for its account, not once
/// tampered with, and not past the account's next reset (in its second too:
/// a link asked for after a reset works at once); a password change
/// does not end it (else whoever holds a session and the password could
/// keep every link dead).
#[tokio::test]
async fn a_reset_link_lives_one_hour_once_and_not_past_the_next_reset() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "rita").await;
    let other = verified(&w, "oscar").await;
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let expired = w.mail.reset_token();
    w.clock.set(T0 + 3600);
    assert!(reset_refused(&w, &expired, NEW_PW).await, "at one hour");

    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let first = w.mail.reset_token();
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let second = w.mail.reset_token();
    assert_ne!(first, second);
    w.auth.request_password_reset(&other, &meta()).await.unwrap();
    let oscars = w.mail.reset_token();
    // Another account's id under this link's tag, a changed time, a changed
    // tag, an unknown shape: all refused, and the password stays.
    let parts: Vec<&str> = first.split('.').collect();
    let oscar_id = oscars.split('.').nth(1).unwrap();
    for forged in [
        format!("{}.{}.{}.{}", parts[0], oscar_id, parts[2], parts[3]),
        format!("{}.{}.{}.{}", parts[0], parts[1], T0 + 3000, parts[3]),
        format!("{}x.{}.{}.{}", &parts[0][..21], parts[1], parts[2], parts[3]),
        format!("{}.{}.{}.{}0", parts[0], parts[1], parts[2], &parts[3][1..]),
        format!("{first}.x"),
        String::new(),
        "not a token".into(),
    ] {
        assert!(reset_refused(&w, &forged, NEW_PW).await, "{forged}");
    }
    w.clock.set(T0 + 3600 + 3599);
    w.auth.reset_password(&first, NEW_PW.into(), &meta()).await.expect("the last second of its hour");
    assert!(reset_refused(&w, &second, "yet another fine passphrase").await, "an earlier link after a reset");
    // Within the reset's second (the clock stands still): a link asked for
    // after a reset works; one asked for before the next reset dies with it.
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let same_second = w.mail.reset_token();
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let also_same_second = w.mail.reset_token();
    w.auth
        .reset_password(&same_second, "yet another fine passphrase".into(), &meta())
        .await
        .expect("a link asked for in the second of the last reset, after it");
    assert!(
        reset_refused(&w, &also_same_second, "quiet harbour morning lantern").await,
        "a link asked for before a reset, in its second"
    );
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    w.auth
        .reset_password(&w.mail.reset_token(), "quiet harbour morning lantern".into(), &meta())
        .await
        .expect("a link asked for after that reset, in its second");
    let rita = stored(&w.store, "rita").await;
    assert_eq!((rita.password_resets, rita.password_reset_at), (3, Some(T0 + 3600 + 3599)));
    // Oscar's link outlives a password change made with a session.
    let pair = signed_in(&w, "oscar", &meta()).await;
    w.auth
        .change_password(Caller::Bearer(&pair.access_token), PW.into(), "thunder kettle meadow lantern".into(), &meta())
        .await
        .unwrap();
    w.auth.reset_password(&oscars, NEW_PW.into(), &meta()).await.expect("a link made before a password change");
    let r = w.auth.me(&pair.access_token).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "the session that changed the password lives on: {r:?}");
}

/// Asking answers the same for every address; only a verified account is
/// mailed. A malformed address is named.
#[tokio::test]
async fn only_a_verified_account_is_mailed_a_reset_link() {
    let w = world(RateLimits::relaxed());
    w.auth.register("una", "una@example.com", PW.into(), &meta()).await.unwrap();
    let mails = w.mail.count();
    w.auth.request_password_reset("una@example.com", &meta()).await.expect("an unverified account");
    w.auth.request_password_reset("nobody@example.com", &meta()).await.expect("an unknown address");
    assert_eq!(w.mail.count(), mails, "mail sent");
    let err = w.auth.request_password_reset("not an address", &meta()).await.unwrap_err();
    assert!(matches!(err, Error::Validation { field: "email", .. }), "{err:?}");
}

/// A refused new password is named and leaves the link usable. With the
/// default limits: a stranger keeps the account locked and its
/// per-identifier limit spent; the reset ends the lock and every older
/// device token, and gives the client that made it a device token of its
/// own, so the owner signs in there though the stranger locks it again.
#[tokio::test]
async fn a_reset_gives_its_client_a_way_past_a_lock_a_stranger_keeps_up() {
    let w = world(RateLimits::default());
    let email = verified(&w, "rita").await;
    let laptop = signed_in(&w, "rita", &meta()).await.device_token.unwrap();
    let stranger = meta_from("198.51.100.9");
    for _ in 0..10 {
        let _ = w.auth.login("rita", "wrong wrong wrong".into(), None, &stranger).await;
    }
    assert_eq!(w.mail.last().job.kind(), "account_locked");
    w.auth.request_password_reset(&email, &meta()).await.unwrap();
    let token = w.mail.reset_token();
    for weak in ["short", "rita@example.com rita", "password12345"] {
        let err = w.auth.reset_password(&token, weak.into(), &meta()).await.unwrap_err();
        assert!(matches!(err, Error::Validation { field: "new_password", .. }), "{weak}: {err:?}");
    }
    let phone = w.auth.reset_password(&token, NEW_PW.into(), &meta()).await.unwrap();
    w.clock.advance(1);
    for _ in 0..10 {
        let _ = w.auth.login("rita", "wrong wrong wrong".into(), None, &stranger).await;
    }
    let r = w.auth.login("rita", NEW_PW.into(), None, &meta()).await;
    assert!(matches!(r, Err(Error::InvalidCredentials | Error::RateLimited { .. })), "no device: {r:?}");
    let r = w.auth.login("rita", NEW_PW.into(), Some(&laptop), &meta()).await;
    assert!(
        matches!(r, Err(Error::InvalidCredentials | Error::RateLimited { .. })),
        "a device token from before: {r:?}"
    );
    signed_in_with(&w, "rita", NEW_PW, Some(&phone), &meta()).await;
}

/// Reset links to one address: 3 an hour.
#[tokio::test]
async fn reset_links_are_limited_per_address() {
    let w = world(RateLimits::default());
    let email = verified(&w, "rita").await;
    for _ in 0..3 {
        w.auth.request_password_reset(&email, &meta()).await.unwrap();
    }
    let err = w.auth.request_password_reset(&email, &meta_from("198.51.100.7")).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(w.mail.kinds().iter().filter(|k| **k == "password_reset").count(), 3);
}

/// The text of every event logged in this test process, from any thread.
#[derive(Clone, Default)]
struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    /// The process's global subscriber, set on first use. Not a scoped one:
    /// tracing caches each callsite's interest for the whole process, and
    /// while one scoped subscriber is all there is, a callsite another test
    /// thread reaches first is judged by that thread's (empty) default alone
    /// and cached as never (CI lost a line that way). The global subscriber
    /// judges every callsite; each test picks its lines by an id of its own.
    fn global() -> &'static LogLines {
        static LINES: std::sync::OnceLock<LogLines> = std::sync::OnceLock::new();
        LINES.get_or_init(|| {
            let lines = LogLines::default();
            tracing::subscriber::set_global_default(lines.clone()).expect("no other global subscriber");
            lines
        })
    }

    /// The lines so far that contain every one of `parts`.
    fn containing(&self, parts: &[&str]) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|l| parts.iter().all(|p| l.contains(p))).cloned().collect()
    }
}

impl tracing::Subscriber for LogLines {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A wrong password below the lock threshold is logged with the account's
/// id (never what was typed) and reaches the audit trail as `login_failed`.
#[tokio::test]
async fn a_wrong_password_below_the_lock_threshold_leaves_a_log_line_and_an_audit_event() {
    use latchkey_core::adapters::embedded::audit::{SqliteAuditStore, drain_change_feed};
    use latchkey_core::audit::{AuditEventType, AuditPolicy, AuditStore};
    let w = world(RateLimits::relaxed());
    verified(&w, "wendy").await;
    let id = stored(&w.store, "wendy").await.id.to_string();
    let lines = LogLines::global();
    // Typed nowhere else in this process: any line holding it is this
    // test's leak, whatever else the line says.
    const TYPED: &str = "wendys-typo-7Qv3xK9m-not-her-password";
    for _ in 0..2 {
        let r = w.auth.login("wendy", TYPED.into(), None, &meta()).await;
        assert!(matches!(r, Err(Error::InvalidCredentials)), "{r:?}");
    }
    let wrong = lines.containing(&["wrong password", &id]);
    assert_eq!(wrong.len(), 2, "one line per wrong password: {wrong:?}");
    let leaked = lines.containing(&[TYPED]);
    assert!(leaked.is_empty(), "the typed password was logged: {leaked:?}");

    let audit = SqliteAuditStore::open(&w.store).await.unwrap();
    let policy = AuditPolicy::from(&Policy::default());
    drain_change_feed(&w.store, &audit, &latchkey_core::keys::AuditKey::new(vec![5; 32]).unwrap(), &policy, 86_400)
        .await
        .unwrap();
    let failed: Vec<_> = audit
        .chain(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == AuditEventType::LoginFailed)
        .map(|r| (r.reason, r.attempts_left, r.ip))
        .collect();
    let left = |n: u32| Some(policy.login_lock_threshold - n);
    let ip = Some("192.0.2.1".to_string());
    assert_eq!(
        failed,
        [(Some("wrong_password".to_string()), left(1), ip.clone()), (Some("wrong_password".to_string()), left(2), ip)]
    );
}

/// A code that ran out unused and is then replaced (a new standalone code
/// for the address, a resent login code) leaves its expiry in the trail:
/// the record it lived in is overwritten, never removed by the TTL.
#[tokio::test]
async fn a_code_replaced_after_it_expired_unused_leaves_its_expiry() {
    use latchkey_core::adapters::embedded::audit::{SqliteAuditStore, drain_change_feed};
    use latchkey_core::audit::{AuditEventType as E, AuditPolicy, AuditStore, day_of};
    let w = world(RateLimits::relaxed());
    verified(&w, "olga").await;
    let id = stored(&w.store, "olga").await.id.to_string();
    w.auth.send_otp("olga@example.com", &meta()).await.unwrap();
    let started = w.auth.login("olga", PW.into(), None, &meta()).await.unwrap();
    // Both codes run out unused (login code: 5 min, standalone: 10).
    w.clock.set(T0 + 600);
    w.auth.send_otp("olga@example.com", &meta()).await.unwrap();
    w.auth.resend_login_code(&started.challenge_id.to_string(), &meta()).await.unwrap();

    let audit = SqliteAuditStore::open(&w.store).await.unwrap();
    drain_change_feed(
        &w.store,
        &audit,
        &latchkey_core::keys::AuditKey::new(vec![5; 32]).unwrap(),
        &AuditPolicy::from(&Policy::default()),
        86_400,
    )
    .await
    .unwrap();
    let kinds: Vec<E> = audit.chain(&id).await.unwrap().iter().map(|r| r.event).collect();
    let tail = &kinds[kinds.len() - 2..];
    assert_eq!(tail, [E::CodeExpired, E::LoginCodeIssued], "{kinds:?}");
    let day = day_of(T0);
    let count = |e: E, stats: &[latchkey_core::audit::DayCount]| {
        stats.iter().filter(|c| c.event == e).map(|c| c.count).sum::<u64>()
    };
    let stats = audit.stats(day, day_of(T0 + 600), T0 + 600).await.unwrap();
    assert_eq!((count(E::OtpSent, &stats), count(E::OtpExpired, &stats)), (2, 1), "{stats:?}");
}

/// What a registration answers, as the client sees it.
fn answer(r: Result<(), Error>) -> &'static str {
    match r {
        Ok(()) => "accepted",
        Err(Error::UsernameTaken) => "username_taken",
        Err(e) => panic!("unexpected {e:?}"),
    }
}

/// The probe: register a username with the target address, then the
/// same username with addresses of one's own, within the hold, at its
/// last second and just after it. Every answer is the same whether or
/// not the target address has an account.
#[tokio::test]
async fn a_username_tried_with_a_taken_email_is_held_like_one_registered_with_a_free_email() {
    let mut runs = Vec::new();
    for target_has_account in [false, true] {
        let w = world(RateLimits::relaxed());
        let (auth, clock) = (&w.auth, &w.clock);
        let m = RequestMeta::default();
        if target_has_account {
            auth.register("owner", "target@example.com", PW.into(), &m).await.unwrap();
        }
        let hold = auth.policy().unverified_hold_secs;
        clock.set(T0 + 10);
        let mut answers = vec![answer(auth.register("probe", "target@example.com", PW.into(), &m).await)];
        for (at, other) in [(T0 + 11, "a"), (T0 + 10 + hold, "b"), (T0 + 11 + hold, "c")] {
            clock.set(at);
            answers.push(answer(auth.register("probe", &format!("{other}@attacker.test"), PW.into(), &m).await));
        }
        let name = latchkey_core::domain::Username::parse("probe").unwrap();
        let holder = w.store.user_by_username(&name).await.unwrap().map(|u| u.email.to_string());
        runs.push((answers, holder));
    }
    assert_eq!(
        runs[0].0,
        ["accepted", "username_taken", "username_taken", "accepted"],
        "held for the hold, to its last second, free just after"
    );
    assert_eq!(runs[0].0, runs[1].0, "a taken target address answers as a free one");
    assert_eq!(runs[0].1.as_deref(), Some("c@attacker.test"));
    assert_eq!(runs[0].1, runs[1].1, "the username's last registration holds it either way");
}

/// A hold is no account: the username's login fails as an unknown
/// user's, and the address's owner still gets the taken-email notice
/// when signing up again under another username.
#[tokio::test]
async fn a_hold_is_no_account() {
    let w = world(RateLimits::relaxed());
    let (auth, clock) = (&w.auth, &w.clock);
    let m = RequestMeta::default();
    auth.register("owner", "owner@example.com", PW.into(), &m).await.unwrap();
    clock.set(T0 + 5);
    auth.register("probe", "owner@example.com", PW.into(), &m).await.unwrap();
    let name = latchkey_core::domain::Username::parse("probe").unwrap();
    assert_eq!(w.store.user_by_username(&name).await.unwrap(), None);
    assert!(matches!(auth.login("probe", PW.into(), None, &m).await, Err(Error::InvalidCredentials)));
    auth.register("another", "owner@example.com", PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.kinds(), ["verify_email", "signup_attempt", "signup_attempt"]);
}

/// A password is one password however its characters were typed: it is
/// hashed in NFKC form, so `é` typed precomposed or as `e` and a combining
/// accent, and full-width letters, sign in alike (NIST SP 800-63B-4
/// 3.1.1.2). A hash made before, of the password as typed, takes exactly
/// that at the owner's next login and is then replaced by one of the NFKC
/// form, after which the other spellings sign in too.
#[tokio::test]
async fn a_password_signs_in_however_its_characters_were_typed() {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let w = world(RateLimits::relaxed());
    let m = meta();
    // NFD as registered; NFC and a full-width letter as typed elsewhere.
    let (nfd, nfc, wide) = (
        "Cafe\u{301} crie sous les nuages violets",
        "Caf\u{e9} crie sous les nuages violets",
        "Caf\u{e9} crie sous les nuages violet\u{ff53}",
    );
    w.auth.register("nina", "nina@example.com", nfd.into(), &m).await.unwrap();
    w.auth.verify_email(&w.mail.token(), &m).await.unwrap();
    signed_in_with(&w, "nina", nfc, None, &m).await;
    signed_in_with(&w, "nina", wide, None, &m).await;
    let r = w.auth.login("nina", "Cafe crie sous les nuages violets".into(), None, &m).await;
    assert!(matches!(r, Err(Error::InvalidCredentials)), "{r:?}");

    // A password change: the current one typed another way, the new one
    // decomposed; the new one signs in precomposed.
    let session = signed_in_with(&w, "nina", nfc, None, &m).await;
    let new_nfd = "Nin\u{303}o so\u{303}ador com lanternas";
    w.auth.change_password(Caller::Bearer(&session.access_token), wide.into(), new_nfd.into(), &m).await.unwrap();
    signed_in_with(&w, "nina", "Ni\u{f1}o s\u{f5}ador com lanternas", None, &m).await;

    // A hash from before the mark, of the password as typed (NFD).
    let u = stored(&w.store, "nina").await;
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(1024, 1, 1, None).unwrap(),
    );
    let old = argon.hash_password(nfd.as_bytes(), &salt).unwrap().to_string();
    w.store.set_password_hash(&u.id, &u.password_hash, &old, &m).await.unwrap();
    let r = w.auth.login("nina", nfc.into(), None, &m).await;
    assert!(matches!(r, Err(Error::InvalidCredentials)), "an old hash took another spelling: {r:?}");
    assert_eq!(stored(&w.store, "nina").await.password_hash, old);
    // As typed: it signs in, and the hash is made again of the NFKC form.
    w.auth.login("nina", nfd.into(), None, &m).await.unwrap();
    let rehashed = stored(&w.store, "nina").await.password_hash;
    assert!(rehashed.contains(",data=bmZrYw$"), "{rehashed}");
    signed_in_with(&w, "nina", nfc, None, &m).await;
    signed_in_with(&w, "nina", wide, None, &m).await;
}

/// An owner deletes their account with its password: a wrong one is
/// counted like a wrong password at login and deletes nothing; the right
/// one deletes it, and everything of it ends (every session, on every
/// path, a login in progress, the password), the owner is mailed, and
/// both names are free for a new registration at once.
#[tokio::test]
async fn an_owner_deletes_their_account_with_the_password() {
    let w = world(RateLimits::relaxed());
    let email = verified(&w, "pia").await;
    let m = meta();
    let (a, b) = (signed_in(&w, "pia", &m).await, signed_in(&w, "pia", &m).await);
    let pending = w.auth.login("pia", PW.into(), None, &m).await.unwrap();
    let code = w.mail.code();

    let r = w.auth.delete_account(Caller::Bearer(&a.access_token), "not the password".into(), &m).await;
    assert!(matches!(&r, Err(Error::Validation { field: "current_password", .. })), "{r:?}");
    assert_eq!(stored(&w.store, "pia").await.failed_logins, 1, "a wrong password is counted");
    let r = w.auth.delete_account(Caller::Bearer("not a token"), PW.into(), &m).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");

    w.auth.delete_account(Caller::Bearer(&a.access_token), PW.into(), &m).await.unwrap();
    let notice = w.mail.last();
    assert_eq!((notice.job.kind(), notice.to.as_str()), ("account_deleted", email.as_str()));
    let username = latchkey_core::domain::Username::parse("pia").unwrap();
    assert!(w.store.user_by_username(&username).await.unwrap().is_none());
    for s in [&a, &b] {
        assert!(matches!(w.auth.me(&s.access_token).await, Err(Error::Unauthorized)));
        assert!(w.auth.refresh(&s.refresh_token, &m).await.is_err(), "a session lives on");
    }
    let r = w.auth.verify_login_code(&pending.challenge_id.to_string(), &code, &m).await;
    assert!(matches!(r, Err(Error::ChallengeNotFound)), "a login in progress finished: {r:?}");
    let r = w.auth.login("pia", PW.into(), None, &m).await;
    assert!(matches!(r, Err(Error::InvalidCredentials)), "{r:?}");
    let r = w.auth.delete_account(Caller::Bearer(&a.access_token), PW.into(), &m).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "deleted twice: {r:?}");

    // Both names at once, for anyone.
    w.auth.register("pia", &email, NEW_PW.into(), &m).await.unwrap();
    w.auth.verify_email(&w.mail.token(), &m).await.unwrap();
    signed_in_with(&w, "pia", NEW_PW, None, &m).await;
}

/// A login's rehash between the password check and the deletion leaves
/// the password as typed: the deletion is made over the new hash. A reset
/// there ends the session: refused, and the account stays.
#[tokio::test]
async fn a_deletion_is_made_again_over_a_rehash_but_not_over_a_reset() {
    let (w, racing) = racing_world();
    verified(&w, "quin").await;
    let m = meta();
    let session = signed_in(&w, "quin", &m).await;
    racing.before_next_write(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "quin").await;
            let link = latchkey_core::domain::ResetLink {
                issued_at: T0,
                resets: u.password_resets,
                email_changes: u.email_changes,
            };
            store.reset_password(&u.id, link, u.password_epoch, "$argon2id$reset", T0 + 1, &meta()).await.unwrap();
        })
    }));
    let r = w.auth.delete_account(Caller::Bearer(&session.access_token), PW.into(), &m).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");
    assert!(racing.raced());
    assert_eq!(stored(&w.store, "quin").await.password_hash, "$argon2id$reset", "deleted over a reset");

    verified(&w, "rhea").await;
    let session = signed_in(&w, "rhea", &m).await;
    racing.before_next_write(Box::new(|store| {
        Box::pin(async move {
            let u = stored(&store, "rhea").await;
            store.set_password_hash(&u.id, &u.password_hash, "$argon2id$rehashed", &meta()).await.unwrap();
        })
    }));
    w.auth.delete_account(Caller::Bearer(&session.access_token), PW.into(), &m).await.expect("made again");
    assert!(racing.raced());
    let username = latchkey_core::domain::Username::parse("rhea").unwrap();
    assert!(w.store.user_by_username(&username).await.unwrap().is_none());
}

/// A reset link was mailed to the address the account had then: once the
/// account moves, the link is refused and changes nothing (the mailbox it
/// left may be why it moved, and whoever reads it could otherwise end the
/// owner's sessions, set a password and undo a lock); a link asked for at
/// the new address works.
#[tokio::test]
async fn a_reset_link_dies_when_the_account_moves_to_another_address() {
    let w = world(RateLimits::relaxed());
    let old = verified(&w, "ulla").await;
    let m = meta();
    w.auth.request_password_reset(&old, &m).await.unwrap();
    let left = w.mail.reset_token();
    let s = signed_in(&w, "ulla", &m).await;
    w.auth.request_email_change(Caller::Bearer(&s.access_token), PW.into(), "ulla@example.org", &m).await.unwrap();
    w.auth.confirm_email_change(&w.mail.email_change_token(), &m).await.unwrap();
    let moved = stored(&w.store, "ulla").await;
    let r = w.auth.reset_password(&left, NEW_PW.into(), &m).await;
    assert!(matches!(r, Err(Error::ResetLinkInvalid)), "a link to the address the account left: {r:?}");
    assert_eq!(stored(&w.store, "ulla").await, moved, "the refused link changed the account");
    assert!(w.auth.me(&s.access_token).await.is_ok(), "the refused link ended the session");
    w.auth.request_password_reset("ulla@example.org", &m).await.unwrap();
    w.auth.reset_password(&w.mail.reset_token(), NEW_PW.into(), &m).await.expect("a link to the new address");
}

/// A login whose read of the account came before an address change (on
/// DynamoDB, the index's copy lags the write): its code goes to the new
/// address, not the one the account left, and signs in.
#[tokio::test]
async fn a_login_read_before_an_address_change_mails_the_new_address() {
    let (w, racing) = racing_world();
    verified(&w, "tova").await;
    let moved = Email::parse("tova.moved@example.org").unwrap();
    let to = moved.clone();
    racing.after_next_read(Box::new(move |store| {
        Box::pin(async move {
            let u = stored(&store, "tova").await;
            store.change_email(&u, &to, &meta()).await.unwrap();
        })
    }));
    let c = w.auth.login("tova", PW.into(), None, &meta()).await.expect("the password step");
    assert!(racing.read_raced());
    let mail = w.mail.last();
    assert_eq!((mail.job.kind(), mail.to.as_str()), ("login_code", moved.as_str()));
    w.auth.verify_login_code(&c.challenge_id.to_string(), &w.mail.code(), &meta()).await.expect("its code signs in");
}

/// An address change that commits between a deletion's read and its write
/// (the link opened in another tab): the deletion is made again with the
/// new address, whose claim goes with the account (on DynamoDB it was left
/// naming no account, and no other account could move to that address);
/// the notice goes to the address the account had last.
#[tokio::test]
async fn a_deletion_is_made_again_over_an_address_change() {
    let (w, racing) = racing_world();
    verified(&w, "suri").await;
    let m = meta();
    let session = signed_in(&w, "suri", &m).await;
    let moved = Email::parse("suri.moved@example.org").unwrap();
    let to = moved.clone();
    racing.before_next_write(Box::new(move |store| {
        Box::pin(async move {
            let u = stored(&store, "suri").await;
            store.change_email(&u, &to, &meta()).await.unwrap();
        })
    }));
    w.auth.delete_account(Caller::Bearer(&session.access_token), PW.into(), &m).await.expect("made again");
    assert!(racing.raced());
    let username = latchkey_core::domain::Username::parse("suri").unwrap();
    assert!(w.store.user_by_username(&username).await.unwrap().is_none());
    assert!(w.store.user_by_email(&moved).await.unwrap().is_none());
    let notice = w.mail.last();
    assert_eq!((notice.job.kind(), notice.to.as_str()), ("account_deleted", moved.as_str()));
}

/// An address change: asked with the password (a wrong one counted), made
/// only by the link mailed to the new address, once; the old address is
/// told both times and is free at once; sign-in and mail go to the new one.
#[tokio::test]
async fn an_address_change_is_made_by_the_link_mailed_to_the_new_address() {
    let w = world(RateLimits::relaxed());
    let old = verified(&w, "sia").await;
    let uid = stored(&w.store, "sia").await.id.to_string();
    let m = meta();
    let s = signed_in(&w, "sia", &m).await;
    let caller = || Caller::Bearer(&s.access_token);

    let r = w.auth.request_email_change(caller(), "not the password".into(), "sia@example.org", &m).await;
    assert!(matches!(&r, Err(Error::Validation { field: "current_password", .. })), "{r:?}");
    assert_eq!(stored(&w.store, "sia").await.failed_logins, 1, "a wrong password is counted");
    for bad in ["not an address", "", &old, &old.to_uppercase()] {
        let r = w.auth.request_email_change(caller(), PW.into(), bad, &m).await;
        assert!(matches!(&r, Err(Error::Validation { field: "new_email", .. })), "{bad:?}: {r:?}");
    }
    let r = w.auth.request_email_change(Caller::Bearer("not a token"), PW.into(), "sia@example.org", &m).await;
    assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");

    let before = w.mail.count();
    w.auth.request_email_change(caller(), PW.into(), "Sia@Example.org", &m).await.unwrap();
    assert_eq!(
        w.mail.since(before),
        [
            ("email_change_link", "sia@example.org".to_string(), None),
            ("email_change_notice", old.clone(), Some(uid.clone())),
        ]
    );
    let token = w.mail.email_change_token();
    assert_eq!(stored(&w.store, "sia").await.email.as_str(), old, "nothing changes before the link");

    let mut forged = token.clone();
    forged.replace_range(0..1, if forged.starts_with('A') { "B" } else { "A" });
    for bad in [forged.as_str(), "", "a.b.c.d", &token[..token.len() - 1]] {
        let r = w.auth.confirm_email_change(bad, &m).await;
        assert!(matches!(r, Err(Error::EmailChangeLinkInvalid)), "{r:?}");
    }
    let before = w.mail.count();
    let new = w.auth.confirm_email_change(&token, &m).await.unwrap();
    assert_eq!(new.as_str(), "sia@example.org");
    let u = stored(&w.store, "sia").await;
    assert_eq!((u.email.as_str(), u.email_changes, u.verified), ("sia@example.org", 1, true));
    assert_eq!(w.mail.since(before), [("email_change_notice", old.clone(), Some(uid.clone()))]);
    match w.mail.last().job {
        MailJob::EmailChangeNotice { done, new_address, .. } => {
            assert_eq!((done, new_address.as_str()), (true, "s***@example.org"))
        }
        other => panic!("{}", other.kind()),
    }
    let r = w.auth.confirm_email_change(&token, &m).await;
    assert!(matches!(r, Err(Error::EmailChangeLinkInvalid)), "used twice: {r:?}");

    // The session lives on; sign-in by the new address, its code mailed there.
    assert_eq!(w.auth.me(&s.access_token).await.unwrap().email, "sia@example.org");
    let r = w.auth.login(&old, PW.into(), None, &m).await;
    assert!(matches!(r, Err(Error::InvalidCredentials)), "the old address signs in: {r:?}");
    let c = w.auth.login("sia@example.org", PW.into(), None, &m).await.unwrap();
    assert_eq!(w.mail.last().to, "sia@example.org");
    w.auth.verify_login_code(&c.challenge_id.to_string(), &w.mail.code(), &m).await.unwrap();
    // The old address is free for anyone at once.
    w.auth.register("tia", &old, PW.into(), &m).await.unwrap();
    assert_eq!(w.mail.last().job.kind(), "verify_email");
}

/// A link works for an hour, and dies with a change of password (or a
/// "sign out everywhere else") and with a newer change of address; an
/// address with an account gets a notice and no link, the asker the same
/// answer; one that got an account after the link was sent is refused.
#[tokio::test]
async fn an_address_change_link_ends_with_its_hour_the_password_or_a_newer_change() {
    let w = world(RateLimits::relaxed());
    let old = verified(&w, "uma").await;
    let taken = verified(&w, "vic").await;
    let m = meta();
    let s = signed_in(&w, "uma", &m).await;
    let ask = |to: &'static str| {
        let token = s.access_token.clone();
        let w = &w;
        async move {
            w.auth.request_email_change(Caller::Bearer(&token), PW.into(), to, &meta()).await.unwrap();
            w.mail.email_change_token()
        }
    };
    let invalid = |r: Result<Email, Error>| assert!(matches!(r, Err(Error::EmailChangeLinkInvalid)), "{r:?}");

    // An hour, to the second.
    let late = ask("uma1@example.org").await;
    let on_time = ask("uma2@example.org").await;
    w.clock.set(T0 + 3600);
    invalid(w.auth.confirm_email_change(&late, &m).await);
    w.clock.set(T0 + 3599);
    w.auth.confirm_email_change(&on_time, &m).await.unwrap();
    // A newer change ended the older link, however fresh.
    invalid(w.auth.confirm_email_change(&late, &m).await);
    w.clock.set(T0);

    // A password change ends it; so does "sign out everywhere else".
    let s = signed_in(&w, "uma", &m).await;
    let ask = |to: &'static str, access: String| {
        let w = &w;
        async move {
            w.auth.request_email_change(Caller::Bearer(&access), PW.into(), to, &meta()).await.unwrap();
            w.mail.email_change_token()
        }
    };
    let link = ask("uma3@example.org", s.access_token.clone()).await;
    w.auth.end_other_sessions(Caller::Bearer(&s.access_token), PW.into(), &m).await.unwrap();
    invalid(w.auth.confirm_email_change(&link, &m).await);
    let link = ask("uma3@example.org", s.access_token.clone()).await;
    w.auth.change_password(Caller::Bearer(&s.access_token), PW.into(), NEW_PW.into(), &m).await.unwrap();
    invalid(w.auth.confirm_email_change(&link, &m).await);
    assert_eq!(stored(&w.store, "uma").await.email.as_str(), "uma2@example.org");

    // An address with an account: the same answer, a notice there, no link.
    let s = signed_in_with(&w, "uma", NEW_PW, None, &m).await;
    let before = w.mail.count();
    w.auth.request_email_change(Caller::Bearer(&s.access_token), NEW_PW.into(), &taken, &m).await.unwrap();
    let uid = stored(&w.store, "uma").await.id.to_string();
    assert_eq!(
        w.mail.since(before),
        [("email_in_use", taken.clone(), None), ("email_change_notice", "uma2@example.org".to_string(), Some(uid))]
    );
    // Taken after the link was sent: refused, nothing moves.
    w.auth.request_email_change(Caller::Bearer(&s.access_token), NEW_PW.into(), "late@example.org", &m).await.unwrap();
    let link = w.mail.email_change_token();
    w.auth.register("wes", "late@example.org", PW.into(), &m).await.unwrap();
    let r = w.auth.confirm_email_change(&link, &m).await;
    assert!(matches!(r, Err(Error::EmailTaken)), "{r:?}");
    assert_eq!(stored(&w.store, "uma").await.email.as_str(), "uma2@example.org");
    assert_ne!(old, "uma2@example.org");
}
