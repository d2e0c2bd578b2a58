use super::{MailEnvelope, MailJob};
use minijinja::{Environment, context};

/// A mail ready to hand to a transport.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The console hint for the embedded outbox: the link or code.
    pub hint: String,
}

impl std::fmt::Debug for RenderedMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedMail").field("to", &self.to).field("subject", &self.subject).finish_non_exhaustive()
    }
}

/// Renders jobs with the templates under `mail/templates`, building links
/// from the configured public base URL (never from a request's Host).
/// Cloning keeps the parsed templates.
#[derive(Clone)]
pub struct Renderer {
    env: Environment<'static>,
    public_base_url: String,
    product: String,
}

macro_rules! templates {
    ($env:ident, $($name:literal),*) => {
        $(
            $env.add_template(concat!($name, ".txt"), include_str!(concat!("templates/", $name, ".txt")))
                .map_err(|e| e.to_string())?;
            $env.add_template(concat!($name, ".html"), include_str!(concat!("templates/", $name, ".html")))
                .map_err(|e| e.to_string())?;
        )*
    };
}

impl Renderer {
    pub fn new(public_base_url: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") { minijinja::AutoEscape::Html } else { minijinja::AutoEscape::None }
        });
        env.add_template("layout.html", include_str!("templates/layout.html")).map_err(|e| e.to_string())?;
        templates!(
            env,
            "verify_email",
            "login_code",
            "standalone_code",
            "signup_attempt",
            "account_locked",
            "password_changed",
            "password_reset",
            "account_deleted",
            "email_change_link",
            "email_change_notice",
            "email_in_use"
        );
        Ok(Renderer {
            env,
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            product: "latchkey".into(),
        })
    }

    pub fn render(&self, env: &MailEnvelope) -> Result<RenderedMail, String> {
        let base = &self.public_base_url;
        let (subject, ctx, hint) = match &env.job {
            // To an address the account does not own yet: no username, which
            // whoever registers chooses (`login-example-help.com` would be a
            // link in many mail clients, in mail from this service).
            MailJob::VerifyEmail { username: _, token, expires_hours } => {
                let link = format!("{base}/verify-email?token={}", token.expose());
                (
                    format!("Confirm your email address for {}", self.product),
                    context! { link, expires_hours },
                    link.clone(),
                )
            }
            MailJob::LoginCode { username, code, expires_minutes } => (
                format!("Your {} sign-in code", self.product),
                context! { username, code => code.expose(), expires_minutes },
                format!("code {}", code.expose()),
            ),
            MailJob::StandaloneCode { code, expires_minutes } => (
                format!("Your {} one-time code", self.product),
                context! { code => code.expose(), expires_minutes },
                format!("code {}", code.expose()),
            ),
            MailJob::SignupAttempt {} => (
                format!("Someone tried to sign up to {} with your address", self.product),
                context! { login_link => format!("{base}/login"), confirm_link => format!("{base}/register/sent") },
                "signup attempt notice".to_string(),
            ),
            MailJob::AccountLocked { username, locked_until, codes_spent } => {
                let until = crate::clock::rfc3339(*locked_until);
                let reset_link = format!("{base}/password/forgot");
                (
                    format!("Your {} account is temporarily locked", self.product),
                    context! { username, until, codes_spent, reset_link },
                    format!("locked until {until}"),
                )
            }
            MailJob::PasswordChanged { username, at, by_reset } => {
                let at = crate::clock::rfc3339(*at);
                (
                    format!("Your {} password was changed", self.product),
                    context! { username, at, by_reset, reset_link => format!("{base}/password/forgot") },
                    format!("password changed at {at}"),
                )
            }
            MailJob::PasswordReset { username, token, expires_minutes } => {
                let link = format!("{base}/password/reset?token={}", token.expose());
                (
                    format!("Choose a new {} password", self.product),
                    context! { username, link, expires_minutes },
                    link.clone(),
                )
            }
            MailJob::AccountDeleted { username, at } => {
                let at = crate::clock::rfc3339(*at);
                (
                    format!("Your {} account was deleted", self.product),
                    context! { username, at },
                    format!("account deleted at {at}"),
                )
            }
            // As a verification link: to an address the account does not own yet.
            MailJob::EmailChangeLink { username: _, token, expires_minutes } => {
                let link = format!("{base}/email/confirm?token={}", token.expose());
                (
                    format!("Confirm the new address of your {} account", self.product),
                    context! { link, expires_minutes },
                    link.clone(),
                )
            }
            MailJob::EmailChangeNotice { username, new_address, at, expires_minutes, done } => {
                let at = crate::clock::rfc3339(*at);
                let subject = match done {
                    true => format!("The address of your {} account was changed", self.product),
                    false => format!("A change of your {} account's address was asked for", self.product),
                };
                let hint = format!("address change to {new_address} {} at {at}", if *done { "made" } else { "asked" });
                let (login_link, reset_link) = (format!("{base}/login"), format!("{base}/password/forgot"));
                (subject, context! { username, new_address, at, expires_minutes, done, login_link, reset_link }, hint)
            }
            MailJob::EmailInUse {} => (
                format!("Someone tried to move a {} account to your address", self.product),
                context! {},
                "email in use notice".to_string(),
            ),
        };
        let kind = env.job.kind();
        let ctx = context! { product => &self.product, subject => &subject, ..ctx };
        let render = |ext: &str| {
            self.env
                .get_template(&format!("{kind}.{ext}"))
                .and_then(|t| t.render(&ctx))
                .map_err(|e| format!("template {kind}.{ext}: {e}"))
        };
        Ok(RenderedMail { to: env.to.clone(), subject, text: render("txt")?, html: render("html")?, hint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, Secret};

    #[test]
    fn every_kind_renders_with_configured_links() {
        let r = Renderer::new("https://auth.example.com/").unwrap();
        let to = Email::parse("a@example.com").unwrap();
        let jobs = [
            MailJob::VerifyEmail { username: "<alice>".into(), token: Secret::new("tok".into()), expires_hours: 24 },
            MailJob::LoginCode { username: "alice".into(), code: Secret::new("012345".into()), expires_minutes: 5 },
            MailJob::StandaloneCode { code: Secret::new("999999".into()), expires_minutes: 10 },
            MailJob::SignupAttempt {},
            MailJob::AccountLocked { username: "alice".into(), locked_until: 0, codes_spent: false },
            MailJob::AccountLocked { username: "alice".into(), locked_until: 0, codes_spent: true },
            MailJob::PasswordChanged { username: "alice".into(), at: 0, by_reset: false },
            MailJob::PasswordChanged { username: "alice".into(), at: 0, by_reset: true },
            MailJob::PasswordReset {
                username: "<alice>".into(),
                token: Secret::new("tok".into()),
                expires_minutes: 60,
            },
            MailJob::AccountDeleted { username: "<alice>".into(), at: 0 },
            MailJob::EmailChangeLink {
                username: "<alice>".into(),
                token: Secret::new("tok".into()),
                expires_minutes: 60,
            },
            MailJob::EmailChangeNotice {
                username: "<alice>".into(),
                new_address: "n***@example.org".into(),
                at: 0,
                expires_minutes: 60,
                done: false,
            },
            MailJob::EmailChangeNotice {
                username: "alice".into(),
                new_address: "n***@example.org".into(),
                at: 0,
                expires_minutes: 60,
                done: true,
            },
            MailJob::EmailInUse {},
        ];
        for job in jobs {
            let m = r.render(&MailEnvelope::new("id".into(), &to, 0, None, None, job.clone())).unwrap();
            assert!(!m.subject.is_empty() && !m.text.is_empty() && m.html.contains("<html"));
            match job {
                MailJob::VerifyEmail { .. } => {
                    assert!(m.text.contains("https://auth.example.com/verify-email?token=tok"));
                    assert!(!m.text.contains("alice") && !m.html.contains("alice"), "a username to an unowned address");
                }
                MailJob::LoginCode { .. } => assert!(m.text.contains("012345")),
                MailJob::PasswordReset { .. } => {
                    assert!(m.text.contains("https://auth.example.com/password/reset?token=tok"));
                    assert!(m.html.contains("reset?token=tok"), "{}", m.html);
                    assert!(m.html.contains("&lt;alice&gt;"), "html escapes user data");
                    assert_eq!(m.hint, "https://auth.example.com/password/reset?token=tok");
                }
                MailJob::AccountLocked { codes_spent, .. } => {
                    assert!(m.text.contains("https://auth.example.com/password/forgot"), "{}", m.text);
                    assert_eq!(
                        m.text.contains("until a new password is chosen through a reset link"),
                        codes_spent,
                        "{}",
                        m.text
                    );
                }
                MailJob::SignupAttempt {} => {
                    // The holder may be an account nobody confirmed (maybe
                    // someone else's, holding the address): the way to take it.
                    assert!(m.text.contains("https://auth.example.com/login"), "{}", m.text);
                    assert!(m.text.contains("https://auth.example.com/register/sent"), "{}", m.text);
                    assert!(m.html.contains("auth.example.com&#x2f;register&#x2f;sent\">"), "{}", m.html);
                }
                MailJob::PasswordChanged { by_reset, .. } => {
                    assert_eq!(m.text.contains("through a reset link"), by_reset, "{}", m.text);
                    assert_eq!(m.text.contains("every other session"), !by_reset, "{}", m.text);
                    // A change the owner did not make: the address is still
                    // theirs, and a reset by mail signs everyone out.
                    assert_eq!(m.text.contains("https://auth.example.com/password/forgot"), !by_reset, "{}", m.text);
                    assert_eq!(
                        m.html.contains("auth.example.com&#x2f;password&#x2f;forgot\">"),
                        !by_reset,
                        "{}",
                        m.html
                    );
                }
                MailJob::AccountDeleted { .. } => {
                    assert!(m.text.contains("account was deleted at 1970-01-01T00:00:00Z"), "{}", m.text);
                    assert!(m.html.contains("&lt;alice&gt;"), "html escapes user data");
                }
                MailJob::EmailChangeLink { .. } => {
                    assert!(m.text.contains("https://auth.example.com/email/confirm?token=tok"), "{}", m.text);
                    assert!(m.html.contains("confirm?token=tok"), "{}", m.html);
                    assert!(!m.text.contains("alice") && !m.html.contains("alice"), "a username to an unowned address");
                    assert_eq!(m.hint, "https://auth.example.com/email/confirm?token=tok");
                }
                MailJob::EmailChangeNotice { done, .. } => {
                    assert!(m.text.contains("to n***@example.org"), "{}", m.text);
                    assert!(m.text.contains("1970-01-01T00:00:00Z"), "{}", m.text);
                    // Asked for: the ways to stop it; made: no link to stop it.
                    assert_eq!(m.text.contains("https://auth.example.com/password/forgot"), !done, "{}", m.text);
                    assert_eq!(m.text.contains("within 60 minutes"), !done, "{}", m.text);
                    assert_eq!(m.subject.contains("was changed"), done, "{}", m.subject);
                }
                MailJob::EmailInUse {} => assert!(m.text.contains("nothing changed"), "{}", m.text),
                _ => {}
            }
        }
    }
}
