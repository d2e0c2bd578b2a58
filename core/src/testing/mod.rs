//! The storage contract suite: the contracts written in `crate::ports`, in
//! executable form, written once and run against every storage adapter (the
//! embedded SQLite store, and DynamoDB on the emulator).
//!
//! Each case is a `pub async fn(&Subject)` that panics when the adapter
//! breaks its contract. Cases draw fresh random ids, usernames, addresses
//! and limiter keys, so they may share one store. Time is an argument of
//! every store method, so the cases cross expiry and cooldown boundaries to
//! the second and never wait. Races are real: the contenders are spawned
//! tasks released together, so run the suite on a multi-threaded runtime.
//!
//! An adapter's runner is one macro call in a test crate that depends on
//! `tokio`:
//!
//! ```ignore
//! async fn subject() -> latchkey_core::testing::Subject {
//!     latchkey_core::testing::Subject::from_store(MyStore::new())
//! }
//! latchkey_core::contract_suite!(subject());
//! ```

mod challenges;
mod fixtures;
mod limiter;
mod otps;
mod sessions;
mod users;

pub use challenges::*;
pub use limiter::*;
pub use otps::*;
pub use sessions::*;
pub use users::*;

use crate::ports::{ChallengeStore, OtpStore, RateLimiter, SessionStore, UserStore};
use std::sync::Arc;

/// The ports under test. Usually one adapter implements all of them and
/// [`Subject::from_store`] fills every field from it.
#[derive(Clone)]
pub struct Subject {
    pub users: Arc<dyn UserStore>,
    pub challenges: Arc<dyn ChallengeStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub otps: Arc<dyn OtpStore>,
    pub limiter: Arc<dyn RateLimiter>,
}

impl Subject {
    /// Every port from one store, shared.
    pub fn from_store<S>(store: S) -> Self
    where
        S: UserStore + ChallengeStore + SessionStore + OtpStore + RateLimiter + 'static,
    {
        let store = Arc::new(store);
        Subject {
            users: store.clone(),
            challenges: store.clone(),
            sessions: store.clone(),
            otps: store.clone(),
            limiter: store,
        }
    }
}

/// Expands to one `#[tokio::test]` (multi-threaded, 4 workers) per contract
/// case. `$make` is an expression evaluated afresh in every test, whose
/// `.await` gives the [`Subject`](crate::testing::Subject) to test.
///
/// The list below must name every `pub async fn` case of this module.
#[macro_export]
macro_rules! contract_suite {
    (@cases ($make:expr) $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let subject: $crate::testing::Subject = $make.await;
                $crate::testing::$case(&subject).await;
            }
        )+
    };
    ($make:expr) => {
        $crate::contract_suite!(@cases ($make)
            // users
            create_user_reads_back,
            username_taken_is_reported_first_and_writes_nothing,
            email_taken_holds_the_username_and_writes_nothing_else,
            a_username_hold_is_no_account,
            a_username_hold_ends_at_the_cut_off,
            email_taken_takes_a_stale_username_over_for_its_hold,
            concurrent_holds_and_registrations_of_one_username_leave_one_holder,
            concurrent_registrations_of_one_email_leave_one_account,
            concurrent_registrations_of_one_username_leave_one_account,
            create_user_replaces_an_unverified_account_past_the_cut_off,
            create_user_replaces_two_unverified_holders_at_once,
            create_user_never_replaces_a_verified_account,
            create_user_taking_one_name_frees_the_other,
            concurrent_takeovers_of_one_unverified_account_both_succeed,
            set_password_hash_replaces_only_the_hash,
            delete_account_frees_both_names_only_at_the_checked_password,
            delete_account_takes_its_sessions_and_codes,
            change_email_moves_the_claim_only_for_the_user_as_read,
            reset_password_once_per_link,
            reset_password_has_one_winner,
            consume_verification_once,
            update_replaces_meta,
            consume_verification_has_one_winner,
            consume_verification_refused_at_expiry_boundary,
            add_verification_cooldown_boundary,
            give_back_verification_cooldown_restores_the_send_time,
            add_verification_refused_for_verified_or_unknown_user,
            no_link_for_an_unverified_account_past_its_retention,
            login_failures_lock_at_threshold,
            concurrent_login_failures_start_one_lock,
            // challenges
            create_challenge_reads_back_and_resets_login_failures,
            create_challenge_never_clears_a_running_lock,
            create_challenge_to_an_address_the_account_left_writes_nothing,
            redeem_challenge_has_one_winner,
            redeem_challenge_refused_at_expiry_boundary,
            redeem_challenge_refused_with_another_code,
            challenge_failures_capped_under_concurrency,
            challenge_attempts_capped_under_concurrency,
            replace_challenge_code_refused_past_max_age,
            replace_challenge_code_cooldown_boundary,
            replace_challenge_code_max_resends,
            replace_challenge_code_keeps_failures,
            give_back_resend_restores_the_cooldown_and_the_count,
            the_account_budget_stops_every_code,
            one_wrong_code_spends_the_budget,
            a_password_change_since_the_password_step_stops_its_code,
            // sessions
            rotate_session_once_per_hash,
            rotate_session_has_one_winner,
            revoke_session_is_idempotent,
            rotate_session_refused_after_revoke,
            record_refresh_retry_counts_only_on_the_current_hash,
            change_password_keeps_only_the_changing_session,
            live_sessions_of_lists_only_the_users_unrevoked_unexpired_sessions,
            // standalone codes
            put_otp_expected_version,
            put_otp_has_one_winner,
            redeem_otp_has_one_winner,
            redeem_otp_refused_at_expiry_boundary,
            redeem_otp_refused_with_another_code,
            otp_failures_capped_under_concurrency,
            otp_attempts_capped_under_concurrency,
            otp_budget_spans_codes,
            give_back_otp_cooldown_restores_last_sent_at,
            // rate limiter
            limiter_allows_exactly_limit_per_window,
            limiter_counts_concurrent_hits_exactly,
            limiter_multi_key_is_all_or_nothing,
            limiter_reports_longest_wait,
            limiter_merges_a_key_listed_twice_under_its_smallest_limit,
            limiter_refuses_a_window_of_zero_and_counts_nothing,
        );
    };
}
