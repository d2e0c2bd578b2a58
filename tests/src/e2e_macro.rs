/// Expands to one test per scenario in `scenarios`, each on a fresh system
/// built by `$make`.
#[macro_export]
macro_rules! e2e_suite {
    ($make:expr) => {
        $crate::e2e_suite!(@tests $make;
            full_journey_by_username => |s| $crate::scenarios::full_journey(s, false),
            full_journey_by_email => |s| $crate::scenarios::full_journey(s, true),
            refresh_reuse_revokes_session => |s| $crate::scenarios::refresh_reuse_revokes_session(s),
            register_conflicts => |s| $crate::scenarios::register_conflicts(s),
            login_failures_look_alike => |s| $crate::scenarios::login_failures_look_alike(s),
            wrong_codes_then_dead => |s| $crate::scenarios::wrong_codes_then_dead(s),
            wrong_then_right_code_once => |s| $crate::scenarios::wrong_then_right_code_once(s),
            resend_code_cooldown => |s| $crate::scenarios::resend_code_cooldown(s),
            verification_link_errors => |s| $crate::scenarios::verification_link_errors(s),
            resend_verification_is_generic => |s| $crate::scenarios::resend_verification_is_generic(s),
            standalone_otp => |s| $crate::scenarios::standalone_otp(s),
            standalone_otp_cap => |s| $crate::scenarios::standalone_otp_cap(s),
            bad_inputs => |s| $crate::scenarios::bad_inputs(s),
            headers_everywhere => |s| $crate::scenarios::headers_everywhere(s),
            jwks_verifies_tokens => |s| $crate::scenarios::jwks_verifies_tokens(s),
            password_reset_by_mail => |s| $crate::scenarios::password_reset_by_mail(s),
            one_password_however_typed => |s| $crate::scenarios::one_password_however_typed(s),
            account_deletion => |s| $crate::scenarios::account_deletion(s),
            address_change => |s| $crate::scenarios::address_change(s),
            international_addresses => |s| $crate::scenarios::international_addresses(s),
        );
    };
    (@tests $make:expr; $($name:ident => |$s:ident| $body:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let sys = $make.await;
                let $s = &sys;
                $body.await;
            }
        )*
    };
}
