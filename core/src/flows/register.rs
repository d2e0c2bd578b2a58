use super::Auth;
use crate::domain::Secret;
use crate::domain::{Email, Password, RequestMeta, User, UserId, Username, VerificationRecord};
use crate::error::{Conflict, Error, StoreError};
use crate::keys::{random_token, token_hash};
use crate::mail::MailJob;

impl Auth {
    /// Registers an account and queues its verification mail. A taken
    /// username is `UsernameTaken`; a taken email answers exactly like
    /// success and mails the owner instead, and the store holds the
    /// username as the account would have held it (`UserStore::create_user`),
    /// so no later registration of that username tells the two apart.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let username = Username::parse(username)?;
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.register_ip.key(format!("register:ip:{}", super::client_key(meta))),
            l.register_email.key(format!("register:email:{}", email.mailbox_key())),
        ])
        .await?;
        // The strength estimate costs up to ~10 ms for a long password, so it
        // runs within the limit: a refused password counts as a try.
        let password = self.new_password(password, &username, &email)?;

        let rng = self.ports.rng.as_ref();
        let phc = self.hasher.hash(&password, rng).await?;
        let now = self.now();
        let user = User {
            id: UserId::random(rng),
            username: username.clone(),
            email: email.clone(),
            password_hash: phc,
            verified: false,
            created_at: now,
            failed_logins: 0,
            locked_until: None,
            otp_failures: 0,
            verification_sent_at: Some(now),
            sessions_valid_after: None,
            password_reset_at: None,
            password_epoch: 0,
            meta: meta.clone(),
        };
        let token = random_token(rng);
        let verification = VerificationRecord {
            token_hash: token_hash(&token),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.policy.verification_ttl_secs,
            used_at: None,
            meta: meta.clone(),
        };
        let hold_ended = now - self.policy.unverified_hold_secs;
        match self.ports.users.create_user(&user, &verification, hold_ended).await {
            Ok(replaced) => {
                for old in replaced {
                    tracing::info!(user_id = %old, by = %user.id, "unverified account past its hold replaced");
                }
                tracing::info!(user_id = %user.id, "user registered");
                self.notify(&email, Some(user.id.to_string()), meta, self.verify_job(&user, token)).await;
                Ok(())
            }
            Err(StoreError::Conflict(Conflict::UsernameTaken)) => Err(Error::UsernameTaken),
            Err(StoreError::Conflict(Conflict::EmailTaken)) => {
                tracing::info!(to = %email.masked(), "registration with a taken email; its username held");
                self.notify(&email, None, meta, MailJob::SignupAttempt {}).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `raw` as the new password of the account `username` / `email`: the
    /// policy's rules, and not built from the username, the address or its
    /// local part. Registration and a password change both use it.
    pub(crate) fn new_password(&self, raw: String, username: &Username, email: &Email) -> Result<Password, Error> {
        let local = email.as_str().split('@').next().unwrap_or_default();
        Password::new_checked(raw, &self.policy.password, &[username.as_str(), email.as_str(), local])
    }

    pub(crate) fn verify_job(&self, user: &User, token: String) -> MailJob {
        MailJob::VerifyEmail {
            username: user.username.to_string(),
            token: Secret::new(token),
            expires_hours: (self.policy.verification_ttl_secs / 3600) as u32,
        }
    }
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use crate::adapters::embedded::EmbeddedStore;
    use crate::clock::FixedClock;
    use crate::config::{Policy, RateLimits};
    use crate::domain::{RequestMeta, Username};
    use crate::error::Error;
    use crate::flows::{Auth, Ports, TokenIssuer};
    use crate::keys::{CodeKey, SigningKey};
    use crate::mail::MailEnvelope;
    use crate::password_hasher::{Argon2Settings, PasswordHasher};
    use crate::ports::{MailQueue, StoreResult};
    use crate::rng::OsSecureRng;
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    const T0: i64 = 1_800_000_000;
    const PW: &str = "correct horse battery staple";

    #[derive(Default)]
    struct Outbox(Mutex<Vec<&'static str>>);

    #[async_trait]
    impl MailQueue for Outbox {
        async fn enqueue(&self, job: &MailEnvelope) -> StoreResult<()> {
            self.0.lock().expect("outbox").push(job.job.kind());
            Ok(())
        }
    }

    fn auth() -> (Auth, Arc<FixedClock>, Arc<Outbox>) {
        let clock = Arc::new(FixedClock::new(T0));
        let store = Arc::new(EmbeddedStore::in_memory().expect("store").with_clock(clock.clone()));
        let mail = Arc::new(Outbox::default());
        let ports = Ports {
            users: store.clone(),
            challenges: store.clone(),
            sessions: store.clone(),
            otps: store.clone(),
            limiter: store,
            mail: mail.clone(),
            clock: clock.clone(),
            rng: Arc::new(OsSecureRng),
        };
        let policy = Policy {
            limits: RateLimits::relaxed(),
            argon2: Argon2Settings { m_kib: 1024, t: 1, p: 1 },
            ..Policy::default()
        };
        let hasher = PasswordHasher::new(policy.argon2, 2, &OsSecureRng).expect("hasher");
        let tokens =
            TokenIssuer::new(SigningKey::generate().expect("key"), "iss".into(), "aud".into(), 600).expect("issuer");
        (Auth::new(ports, policy, hasher, CodeKey::new(vec![3; 32]).expect("code key"), tokens), clock, mail)
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
            let (auth, clock, _) = auth();
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
            let name = Username::parse("probe").unwrap();
            let holder = auth.ports.users.user_by_username(&name).await.unwrap().map(|u| u.email.to_string());
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
        let (auth, clock, mail) = auth();
        let m = RequestMeta::default();
        auth.register("owner", "owner@example.com", PW.into(), &m).await.unwrap();
        clock.set(T0 + 5);
        auth.register("probe", "owner@example.com", PW.into(), &m).await.unwrap();
        let name = Username::parse("probe").unwrap();
        assert_eq!(auth.ports.users.user_by_username(&name).await.unwrap(), None);
        assert!(matches!(auth.login("probe", PW.into(), None, &m).await, Err(Error::InvalidCredentials)));
        auth.register("another", "owner@example.com", PW.into(), &m).await.unwrap();
        assert_eq!(*mail.0.lock().unwrap(), ["verify_email", "signup_attempt", "signup_attempt"]);
    }
}
