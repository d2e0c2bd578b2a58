//! The standalone OTP API (`send_otp` / `verify_otp` by email), the OTP
//! seed's contract with its flaws fixed: CSPRNG codes stored as a keyed hash,
//! single use, an atomic attempt cap, a 10-minute lifetime, a per-address
//! send cooldown, and a per-address budget of wrong codes across codes
//! (NIST 3.1.3.2): once it is spent no code is issued or accepted for the
//! address until a day after its last code expired. No account is involved.

use super::Auth;
use crate::audit::otp_subject;
use crate::clock::Timestamp;
use crate::domain::{CodeClosed, Email, OtpCode, OtpRecord, RequestMeta, Secret};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;

/// A code was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpSent {
    pub expires_at: Timestamp,
}

impl Auth {
    pub async fn send_otp(&self, email: &str, meta: &RequestMeta) -> Result<OtpSent, Error> {
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            l.code_send_address.key(format!("send:otp:{}", email.mailbox_key())),
        ])
        .await?;
        let now = self.now();
        let addr = self.address_hash(&email);
        let existing = self.ports.otps.otp(&addr).await?;
        // Wrong codes outlive the code they were tried on: a new code
        // carries them (its own count starts at 0), so each code does not
        // bring a fresh round of guesses. Once the budget is spent, no code
        // is sent until the window after the last one's expiry ends.
        if let Some(retry_after) = existing.as_ref().and_then(|e| e.budget_wait(now, self.policy.otp_failure_budget)) {
            return Err(Error::RateLimited { retry_after });
        }
        let carried = existing.as_ref().map_or(0, |e| e.budget_carried(now));
        // A new code for a still-live one keeps its failures and attempts
        // (NIST 3.1.3.2). One whose attempts are spent is not replaced
        // before it expires: a new code would be dead on arrival, and each
        // send would push the block further out. Checked before the
        // cooldown, which ends sooner: the wait answered is the real one.
        let live = existing.as_ref().filter(|e| e.used_at.is_none() && e.expires_at > now);
        let max = self.policy.code_max_failures;
        if let Some(e) = live.filter(|e| e.closed(now, max) == Some(CodeClosed::Exhausted)) {
            return Err(Error::RateLimited { retry_after: (e.expires_at - now) as u64 });
        }
        if let Some(e) = &existing {
            let wait = e.last_sent_at + self.policy.otp_send_cooldown_secs - now;
            if wait > 0 {
                return Err(Error::RateLimited { retry_after: wait as u64 });
            }
        }
        let (failures, attempts) = live.map_or((0, 0), |e| (e.failures, e.attempts));
        let code = OtpCode::generate(self.ports.rng.as_ref());
        let rec = OtpRecord {
            address_hash: addr.clone(),
            code_hash: self.otp_code_hash(&addr, &code),
            created_at: now,
            expires_at: now + self.policy.otp_ttl_secs,
            last_sent_at: now,
            failures,
            attempts,
            budget_failures: carried,
            used_at: None,
            meta: meta.clone(),
        };
        match self.ports.otps.put_otp(&rec, existing.as_ref()).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Error::RateLimited { retry_after: self.policy.otp_send_cooldown_secs as u64 });
            }
            Err(e) => return Err(e.into()),
        }
        let job = MailJob::StandaloneCode {
            code: Secret::new(code.expose().to_string()),
            expires_minutes: (self.policy.otp_ttl_secs / 60) as u32,
        };
        if let Err(e) = self.send(&email, Some(otp_subject(&addr)), meta, job).await {
            // Nothing was mailed: the caller may ask again at once, not
            // after a cooldown for a mail that never went. (The new code
            // stays. Should the queue have taken the job and only its
            // answer been lost, it is mailed, and a retry replaces it.)
            let cooldown = self.policy.otp_send_cooldown_secs;
            let previous = existing.as_ref().map_or(now - cooldown, |e| e.last_sent_at);
            if let Err(g) = self.ports.otps.give_back_otp_cooldown(&addr, &rec.code_hash, now, previous).await {
                tracing::warn!(error = %g, "the send cooldown of a code not mailed was not given back (a send since, or this give-back sent twice)");
            }
            return Err(e);
        }
        Ok(OtpSent { expires_at: rec.expires_at })
    }

    /// `ChallengeNotFound` when there is no live code for the address
    /// (never sent, or already used).
    pub async fn verify_otp(&self, email: &str, code: &str, meta: &RequestMeta) -> Result<(), Error> {
        let email = Email::parse(email)?;
        let code = OtpCode::parse(code, "otp")?;
        let addr = self.address_hash(&email);
        let l = &self.policy.limits;
        self.limit(&[
            l.code_verify_ip.key(format!("verify:ip:{}", super::client_key(meta))),
            l.code_verify_subject.key(format!("verify:otp:{addr}")),
        ])
        .await?;
        let now = self.now();
        let max = self.policy.code_max_failures;
        let budget = self.policy.otp_failure_budget;
        // A spent budget answers every request the same wait, right code or
        // wrong, so nothing tells them apart: the address's rate limit.
        let spent = |r: &OtpRecord| r.budget_wait(now, budget).map(|retry_after| Error::RateLimited { retry_after });
        let closed = |r: &OtpRecord| {
            spent(r).or(match r.closed(now, max) {
                Some(CodeClosed::Used) => Some(Error::ChallengeNotFound),
                Some(CodeClosed::Exhausted) => Some(Error::OtpExhausted),
                Some(CodeClosed::Expired) => Some(Error::OtpExpired),
                None => None,
            })
        };
        // As for login codes: the attempt is taken before the comparison.
        let rec = match self.ports.otps.take_otp_attempt(&addr, now, max).await {
            Ok(rec) => rec,
            Err(StoreError::Conflict(_)) => {
                let rec = self.ports.otps.otp(&addr).await?.ok_or(Error::ChallengeNotFound)?;
                return Err(closed(&rec).unwrap_or(Error::OtpExhausted));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = spent(&rec) {
            // Spent on this code or an earlier one: no code is compared.
            return Err(e);
        }
        let attempts_left = max.saturating_sub(rec.attempts);
        let presented = self.otp_code_hash(&addr, &code);
        if !OtpCode::hashes_equal(&presented, &rec.code_hash) {
            return match self.ports.otps.record_otp_failure(&addr, max, budget, meta).await {
                Ok(_) => Err(Error::OtpInvalid { attempts_left }),
                // The budget spent meanwhile by concurrent wrong codes: this
                // one is answered as the right one would be now. Else used
                // or replaced meanwhile: this code was still wrong.
                Err(StoreError::Conflict(_)) => {
                    let now_spent = self.ports.otps.otp(&addr).await?.as_ref().and_then(spent);
                    Err(now_spent.unwrap_or(Error::OtpInvalid { attempts_left }))
                }
                Err(e) => Err(e.into()),
            };
        }
        match self.ports.otps.redeem_otp(&addr, &presented, now, max, budget, meta).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => {
                let rec = self.ports.otps.otp(&addr).await?.ok_or(Error::ChallengeNotFound)?;
                // Else a new code replaced it meanwhile.
                Err(closed(&rec).unwrap_or(Error::OtpInvalid { attempts_left }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The keyed hash that stands for an address in the OTP table and the
    /// audit trail.
    pub fn address_hash(&self, email: &Email) -> String {
        self.code_key.mac("latchkey/otp-address/v1", &[email.as_str()])
    }

    fn otp_code_hash(&self, addr: &str, code: &OtpCode) -> String {
        self.code_key.mac("latchkey/otp-code/v1", &[addr, code.expose()])
    }
}
