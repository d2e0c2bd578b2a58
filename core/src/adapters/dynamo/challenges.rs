//! `ChallengeStore`: login challenges in the tokens table. Each guard of the
//! contract is part of the condition of the write it protects.

use super::errors::own_write_or_stale;
use super::items::{self, PK, TTL, TTL_GRACE_SECS, TTL_NAME, epoch_value, n, s, unchanged_since};
use super::users::{UNLOCKED, meta_value};
use super::{DynamoStore, check_item, put_item, update_item};
use crate::StoreError;
use crate::clock::Timestamp;
use crate::domain::{Challenge, ChallengeId, Email, RequestMeta, Session, UserId};
use crate::error::Conflict;
use crate::ports::{ChallengeStore, CodeFailure, LockCheck, StoreResult, UserStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, ReturnValuesOnConditionCheckFailure, Update};

impl DynamoStore {
    /// A right password: the count of wrong ones back to 0 and an ended
    /// lock cleared (so the stream shows the unlock), with the request's
    /// `meta`. Never a lock still running at `now`: one set by others'
    /// failures since the caller read the user stays. With `to`, only while
    /// the user's address is still `to`.
    fn reset_login_failures(
        &self,
        user_id: &UserId,
        now: Timestamp,
        meta: AttributeValue,
        to: Option<&Email>,
    ) -> UpdateBuilder {
        let update = Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(user_id)))
            .update_expression("SET failed_logins = :zero, meta = :meta REMOVE locked_until")
            .condition_expression(format!("attribute_exists(pk) AND {UNLOCKED}{}", same_address(to)))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":meta", meta);
        match to {
            Some(to) => update.expression_attribute_values(":email", s(to.as_str())),
            None => update,
        }
    }

    /// A right code: the account-wide count of wrong codes back to 0, with
    /// the request's `meta`.
    /// A right code's reset of the account-wide count, only while the
    /// budget is not spent and the password has not changed since the
    /// password step that saw `password_epoch`.
    fn reset_otp_failures(
        &self,
        user_id: &UserId,
        account_budget: u32,
        password_epoch: u64,
        meta: AttributeValue,
    ) -> UpdateBuilder {
        Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(user_id)))
            .update_expression("SET otp_failures = :zero, meta = :meta")
            .condition_expression(format!(
                "attribute_exists(pk) AND otp_failures < :budget AND {}",
                unchanged_since(password_epoch)
            ))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":budget", n(account_budget))
            .expression_attribute_values(":epoch", epoch_value(password_epoch))
            .expression_attribute_values(":meta", meta)
    }
}

/// The user item's condition that it still has the address `to` (bound to
/// `:email`), if there is one to check.
fn same_address(to: Option<&Email>) -> &'static str {
    if to.is_some() { " AND email = :email" } else { "" }
}

#[async_trait]
impl ChallengeStore for DynamoStore {
    async fn create_challenge_to(
        &self,
        challenge: &Challenge,
        to: Option<&Email>,
        lock: LockCheck,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let item =
            items::to_item(challenge, items::challenge_pk(&challenge.id), Some(challenge.expires_at + TTL_GRACE_SECS))?;
        let absent = "attribute_not_exists(pk)";
        let user_check = |condition: String| {
            let check = ConditionCheck::builder()
                .table_name(&self.users)
                .key(PK, s(items::user_pk(&challenge.user_id)))
                .condition_expression(condition);
            match to {
                Some(to) => check.expression_attribute_values(":email", s(to.as_str())),
                None => check,
            }
        };
        let user = match lock {
            LockCheck::Unlocked { reset_failures: true } => {
                update_item(self.reset_login_failures(&challenge.user_id, challenge.created_at, meta_value(meta)?, to))?
            }
            // The right password on an account read unlocked: a lock set
            // since the read refuses it, in the same transaction.
            LockCheck::Unlocked { reset_failures: false } => check_item(
                user_check(format!("attribute_exists(pk) AND {UNLOCKED}{}", same_address(to)))
                    .expression_attribute_values(":now", n(challenge.created_at)),
            )?,
            // A trusted device's login leaves the lock alone; the address,
            // when there is one to check, is checked in the same way.
            LockCheck::TrustedDevice if to.is_some() => {
                check_item(user_check(format!("attribute_exists(pk){}", same_address(to))))?
            }
            LockCheck::TrustedDevice => {
                let put =
                    self.client.put_item().table_name(&self.tokens).set_item(Some(item)).condition_expression(absent);
                // The id is new, so only this call's own first send (the
                // SDK's, after a lost answer) can have written it: recognised
                // by its code, else the password step would fail with its
                // challenge written and no code mailed.
                if let Err(err) = put
                    .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                    .send()
                    .await
                {
                    own_write_or_stale(err, "code_hash", &challenge.code_hash)?;
                }
                return Ok(());
            }
        };
        self.transact(vec![put_item(&self.tokens, item, absent)?, user]).await?;
        Ok(())
    }

    async fn challenge(&self, id: &ChallengeId) -> StoreResult<Option<Challenge>> {
        self.get(&self.tokens, items::challenge_pk(id)).await
    }

    async fn take_challenge_attempt(
        &self,
        id: &ChallengeId,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Challenge> {
        self.take_attempt(items::challenge_pk(id), now, max_attempts).await
    }

    async fn redeem_challenge(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        now: Timestamp,
        max_failures: u32,
        account_budget: u32,
        password_epoch: u64,
        session: &Session,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        // `user_id = :uid` binds the new session (and the counter reset) to
        // the challenge's own user.
        let meta = meta_value(meta)?;
        let redeem = Update::builder()
            .table_name(&self.tokens)
            .key(PK, s(items::challenge_pk(id)))
            .update_expression("SET used_at = :now, meta = :meta")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(used_at) AND code_hash = :h \
                 AND failures < :max AND expires_at > :now AND user_id = :uid",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":h", s(code_hash))
            .expression_attribute_values(":max", n(max_failures))
            .expression_attribute_values(":uid", s(session.user_id.to_string()))
            .expression_attribute_values(":meta", meta.clone());
        let session_item =
            items::to_item(session, items::session_pk(&session.id), Some(session.expires_at + TTL_GRACE_SECS))?;
        let reset = self.reset_otp_failures(&session.user_id, account_budget, password_epoch, meta);
        self.transact(vec![
            update_item(redeem)?,
            put_item(&self.tokens, session_item, "attribute_not_exists(pk)")?,
            update_item(reset)?,
        ])
        .await?;
        Ok(())
    }

    async fn record_challenge_failure(
        &self,
        id: &ChallengeId,
        user_id: &UserId,
        max_failures: u32,
        account_budget: u32,
        password_epoch: u64,
        meta: &RequestMeta,
    ) -> StoreResult<CodeFailure> {
        let meta = meta_value(meta)?;
        let Some(last) = account_budget.checked_sub(1) else {
            return Err(StoreError::Conflict(Conflict::Stale));
        };
        // A transaction returns no values, so the new counts come from
        // guards instead. The challenge's: read it, then increment it only
        // if it is still what was read (and under the cap, and unused); a
        // lost race means another wrong guess was counted, so read again.
        // Every lost round is someone else's increment, and increments stop
        // at the cap, so that ends within `max_failures + 1` rounds. The
        // user's: below the budget's last count first; refused there, the
        // user is read, and if the last count is what is left it is taken
        // on `otp_failures = last` (one more round), so exactly one wrong
        // code spends the budget and knows it; if a right code gave the
        // budget back meanwhile, it is counted below the last count again
        // (`budget_round`), as the embedded store, which writes in one
        // transaction, counts it.
        let mut spends = false;
        // Rounds refused on the challenge end within `max_failures + 1`;
        // those refused on the account each follow a write that changed
        // its count (a wrong code taking the last count, a right code
        // giving the budget back), which stops once the budget is spent,
        // so a few suffice.
        let mut budget_rounds = 0;
        for _ in 0..=max_failures + 1 + BUDGET_ROUNDS {
            let Some(seen) = self.challenge(id).await? else {
                return Err(StoreError::Conflict(Conflict::Stale));
            };
            if seen.used_at.is_some() || seen.failures >= max_failures || seen.user_id != *user_id {
                return Err(StoreError::Conflict(Conflict::Stale));
            }
            let count = Update::builder()
                .table_name(&self.tokens)
                .key(PK, s(items::challenge_pk(id)))
                .update_expression("SET failures = :next, meta = :meta")
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(used_at) \
                     AND failures = :seen AND failures < :max AND user_id = :uid",
                )
                .expression_attribute_values(":next", n(seen.failures + 1))
                .expression_attribute_values(":seen", n(seen.failures))
                .expression_attribute_values(":max", n(max_failures))
                .expression_attribute_values(":uid", s(user_id.to_string()))
                .expression_attribute_values(":meta", meta.clone());
            let budget = Update::builder()
                .table_name(&self.users)
                .key(PK, s(items::user_pk(user_id)))
                .update_expression("SET meta = :meta ADD otp_failures :one")
                .condition_expression(format!(
                    "attribute_exists(pk) AND otp_failures {} :last AND {}",
                    if spends { "=" } else { "<" },
                    unchanged_since(password_epoch)
                ))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":last", n(last))
                .expression_attribute_values(":epoch", epoch_value(password_epoch))
                .expression_attribute_values(":meta", meta.clone());
            match self.transact(vec![update_item(count)?, update_item(budget)?]).await {
                Ok(()) => return Ok(CodeFailure { failures: seen.failures + 1, spent_budget: spends }),
                Err(e) if e.check_failed(0) => continue,
                // Refused on the user, whichever way was tried: what is
                // left of the budget now says how to try again (a right
                // code may have given it back since it was read).
                Err(e) if e.check_failed(1) => {
                    budget_rounds += 1;
                    if budget_rounds > BUDGET_ROUNDS {
                        return Err(StoreError::unavailable(
                            "record_challenge_failure: the account's code count kept changing",
                        ));
                    }
                    let user = self.user_by_id(user_id).await?;
                    let Some(next) =
                        budget_round(user.map(|u| (u.otp_failures, u.password_epoch)), last, password_epoch)
                    else {
                        return Err(StoreError::Conflict(Conflict::Stale));
                    };
                    spends = next;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::unavailable("record_challenge_failure: the challenge kept changing"))
    }

    async fn replace_challenge_code(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        expires_at: Timestamp,
        now: Timestamp,
        cooldown_secs: i64,
        max_resends: u32,
        max_failures: u32,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        match self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::challenge_pk(id)))
            .update_expression(format!(
                "SET code_hash = :h, expires_at = :exp, last_sent_at = :now, {TTL_NAME} = :ttl, meta = :meta \
                 ADD resends :one"
            ))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(used_at) AND created_at > :oldest \
                 AND last_sent_at <= :cut AND resends < :max_resends AND failures < :max_failures \
                 AND (attempts < :max_failures OR attribute_not_exists(attempts))",
            )
            .expression_attribute_names(TTL_NAME, TTL)
            .expression_attribute_values(":h", s(code_hash))
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(expires_at + TTL_GRACE_SECS))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":cut", n(now - cooldown_secs))
            .expression_attribute_values(":oldest", n(now - Challenge::MAX_AGE_SECS))
            .expression_attribute_values(":max_resends", n(max_resends))
            .expression_attribute_values(":max_failures", n(max_failures))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // This call's own first send (the SDK's, after a lost answer)
            // left its new code there: not a resend that raced this one,
            // which would leave the new code unmailed and answer "wait".
            Err(err) => own_write_or_stale(err, "code_hash", code_hash),
        }
    }

    async fn give_back_resend(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        self.give_back_send(items::challenge_pk(id), code_hash, sent_at, previous_sent_at, true).await
    }
}

/// How many times a wrong code's count is made again after the account's
/// side refused it.
const BUDGET_ROUNDS: u32 = 3;

/// After the account's side of a wrong code's count was refused, with the
/// user as read now (its `otp_failures` and `password_epoch`, `None` if it
/// is gone): `Some(true)` to take the budget's last count (`otp_failures =
/// last`), `Some(false)` to count below it again (a right code reset it
/// after the first read), `None` when the count must not be made (the user
/// is gone, its password changed, or the budget is spent).
fn budget_round(user: Option<(u32, u64)>, last: u32, password_epoch: u64) -> Option<bool> {
    let (failures, epoch) = user?;
    (epoch == password_epoch && failures <= last).then_some(failures == last)
}

#[cfg(test)]
mod tests {
    use super::budget_round;

    #[test]
    fn a_refused_budget_count_is_tried_again_as_the_user_now_stands() {
        let (last, epoch) = (29, 3);
        // A right code gave the budget back since the first read: counted
        // below the last count again (it used to be dropped as stale).
        assert_eq!(budget_round(Some((0, epoch)), last, epoch), Some(false));
        assert_eq!(budget_round(Some((last, epoch)), last, epoch), Some(true), "the last count is what is left");
        assert_eq!(budget_round(Some((last + 1, epoch)), last, epoch), None, "spent");
        assert_eq!(budget_round(Some((0, epoch + 1)), last, epoch), None, "the password changed");
        assert_eq!(budget_round(None, last, epoch), None, "the user is gone");
    }
}
