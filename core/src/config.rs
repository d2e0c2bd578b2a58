//! Configuration: the policy numbers the flows obey, and the process
//! configuration parsed once at start-up from the environment. A bad or
//! missing variable is named; all of them are reported in one error.

use crate::domain::PasswordPolicy;
use crate::password_hasher::Argon2Settings;
use crate::ports::LimitKey;

/// A fixed-window rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub limit: u32,
    pub window_secs: i64,
}

impl Limit {
    pub const fn new(limit: u32, window_secs: i64) -> Self {
        Limit { limit, window_secs }
    }
    pub fn key(&self, key: String) -> LimitKey {
        LimitKey { key, limit: self.limit, window_secs: self.window_secs }
    }
}

/// The rate limits, per client IP (IPv6 grouped by /64) and per identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub register_ip: Limit,
    pub register_email: Limit,
    pub login_ip: Limit,
    pub login_identifier: Limit,
    /// Password steps that present a valid device token, per device (in
    /// place of `login_identifier`, which someone else can exhaust).
    pub login_device: Limit,
    /// Any mail that carries a code or link (login resend, verification
    /// resend, send_otp).
    pub code_send_ip: Limit,
    pub code_send_address: Limit,
    /// Verification resends per address.
    pub verification_resend_address: Limit,
    /// Verification links sent again per mailbox (`Email::mailbox_key`:
    /// tags, and at Gmail dots, folded), counted only when the address has
    /// an unverified account: the tagged accounts somebody registers for one
    /// inbox share it, however many there are.
    pub verification_resend_mailbox: Limit,
    /// Password reset links per address.
    pub password_reset_address: Limit,
    pub code_verify_ip: Limit,
    /// Per challenge or per address.
    pub code_verify_subject: Limit,
    pub refresh_ip: Limit,
    /// Admin API and admin page requests, per client, counted before the
    /// admin key is checked (so past the limit a guess learns nothing).
    pub admin_ip: Limit,
    /// Reads of a signed-in user's own audit trail (`GET /v1/me/activity`
    /// and the dashboard page), per account and per client, each a query
    /// of the audit store: counted once the session is known to be live.
    pub activity: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            register_ip: Limit::new(20, 3600),
            register_email: Limit::new(5, 3600),
            login_ip: Limit::new(30, 60),
            login_identifier: Limit::new(20, 900),
            login_device: Limit::new(10, 3600),
            code_send_ip: Limit::new(30, 3600),
            code_send_address: Limit::new(10, 3600),
            verification_resend_address: Limit::new(5, 3600),
            verification_resend_mailbox: Limit::new(10, 3600),
            password_reset_address: Limit::new(3, 3600),
            code_verify_ip: Limit::new(60, 60),
            code_verify_subject: Limit::new(20, 600),
            refresh_ip: Limit::new(120, 60),
            admin_ip: Limit::new(60, 60),
            activity: Limit::new(60, 60),
        }
    }
}

impl RateLimits {
    /// Limits high enough never to trigger, for tests that are not about
    /// rate limiting.
    pub fn relaxed() -> Self {
        let l = Limit::new(1_000_000, 60);
        RateLimits {
            register_ip: l,
            register_email: l,
            login_ip: l,
            login_identifier: l,
            login_device: l,
            code_send_ip: l,
            code_send_address: l,
            verification_resend_address: l,
            verification_resend_mailbox: l,
            password_reset_address: l,
            code_verify_ip: l,
            code_verify_subject: l,
            refresh_ip: l,
            admin_ip: l,
            activity: l,
        }
    }
}

/// Every number the flows obey. Defaults meet SECURITY.md.
#[derive(Debug, Clone)]
pub struct Policy {
    pub password: PasswordPolicy,
    pub argon2: Argon2Settings,
    pub verification_ttl_secs: i64,
    pub verification_resend_cooldown_secs: i64,
    /// How long an account nobody has verified keeps its username and email
    /// to itself; after that a new registration of either replaces it.
    pub unverified_hold_secs: i64,
    pub login_code_ttl_secs: i64,
    pub code_max_failures: u32,
    pub code_resend_cooldown_secs: i64,
    pub code_max_resends: u32,
    /// Wrong login codes across challenges before logins stop issuing codes
    /// (NIST: at most 100).
    pub account_code_failure_budget: u32,
    pub login_lock_threshold: u32,
    pub login_lock_secs: i64,
    pub otp_ttl_secs: i64,
    pub otp_send_cooldown_secs: i64,
    /// Wrong standalone codes for one address, across its codes and with no
    /// right one between them, before no code is issued or accepted for it
    /// until `OtpRecord::BUDGET_WINDOW_SECS` after its last code expired
    /// (NIST: at most 100).
    pub otp_failure_budget: u32,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    /// How long after a rotation the refresh token it replaced, presented
    /// again by the client that rotated it, gets the current one back (a
    /// retry of a refresh whose answer was lost, or two of its requests
    /// racing) instead of revoking the session as a reuse. Only the token
    /// just replaced; 0, the default, turns it off (the requirement: reuse of
    /// an old refresh token revokes the whole session, and a default must
    /// meet it; docs/security.md C23). A deployment whose clients retry
    /// refreshes can turn it on.
    pub refresh_retry_grace_secs: i64,
    /// How long a device token (a browser or app that finished a login)
    /// lets its holder past the account lock and the per-identifier limit.
    pub device_token_ttl_secs: i64,
    /// How long a password reset link works (it also ends at its first use
    /// and at the account's next reset).
    pub password_reset_ttl_secs: i64,
    /// How long a link that moves an account to a new address works (it
    /// also ends at its first use, at the account's next change of address,
    /// and at its next password change, reset or "sign out everywhere
    /// else").
    pub email_change_ttl_secs: i64,
    /// The least time a request that answers the same for every address
    /// takes (reset link, verification resend), so its timing does not
    /// tell whether the address has an account: above what the work
    /// behind either answer takes.
    pub uniform_answer_ms: u64,
    pub limits: RateLimits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            password: PasswordPolicy::default(),
            argon2: Argon2Settings::default(),
            verification_ttl_secs: 24 * 3600,
            verification_resend_cooldown_secs: 60,
            unverified_hold_secs: 7 * 24 * 3600,
            login_code_ttl_secs: 300,
            code_max_failures: 6,
            code_resend_cooldown_secs: 60,
            code_max_resends: 3,
            account_code_failure_budget: 100,
            login_lock_threshold: 10,
            login_lock_secs: 900,
            otp_ttl_secs: 600,
            otp_send_cooldown_secs: 60,
            otp_failure_budget: 30,
            access_ttl_secs: 600,
            refresh_ttl_secs: 30 * 24 * 3600,
            refresh_retry_grace_secs: 0,
            device_token_ttl_secs: 90 * 24 * 3600,
            password_reset_ttl_secs: 3600,
            email_change_ttl_secs: 3600,
            uniform_answer_ms: 100,
            limits: RateLimits::default(),
        }
    }
}

/// Which storage and queue the process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SQLite under `data_dir`, mail to `data_dir/outbox`.
    Embedded { data_dir: std::path::PathBuf },
    /// DynamoDB tables `{table_prefix}-*` and the SQS mail queue.
    Aws { table_prefix: String, mail_queue_url: Option<String>, bootstrap: bool },
}

/// The process configuration, read once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    pub bind: String,
    pub public_base_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Base64 PKCS#8 Ed25519 key; generated and kept under the data dir in
    /// embedded mode when absent.
    pub jwt_private_key: Option<crate::domain::Secret<String>>,
    /// The public key the signing key replaced (`LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY`,
    /// the `x` of its JWK), still accepted and published for a rotation's
    /// overlap; none after a leak.
    pub jwt_previous_public_key: Option<crate::keys::VerifyingKey>,
    /// The standby JWT key (`LATCHKEY_JWT_STANDBY_KEY`, base64 PKCS#8
    /// Ed25519, or on AWS its SSM parameter, `jwt_standby_key_param`): not
    /// used to sign; its public key is published after the signing key and
    /// its tokens accepted. Terraform keeps two key slots and gives the api
    /// the one that does not sign: the next key, published ahead of a
    /// rotation, and after the switch the key that signed before.
    pub jwt_standby_key: Option<crate::domain::Secret<String>>,
    pub jwt_standby_key_param: Option<String>,
    /// Base64, >= 32 bytes; likewise generated in embedded mode.
    pub code_hmac_key: Option<crate::domain::Secret<String>>,
    /// On AWS: SSM SecureString parameter names holding the two secrets
    /// above and the admin key hash below, read once at cold start (secrets
    /// never sit in the Lambda environment).
    pub jwt_private_key_param: Option<String>,
    pub code_hmac_key_param: Option<String>,
    pub admin_key_hash_param: Option<String>,
    /// The audit trail's seal key (base64, >= 32 bytes), held by whatever
    /// writes the trail: in embedded mode generated under the data dir when
    /// absent; on AWS the stream processor reads it from the SSM parameter
    /// `audit_key_param` names (the api never holds it).
    pub audit_key: Option<crate::domain::Secret<String>>,
    pub audit_key_param: Option<String>,
    /// Take the client IP from the last `X-Forwarded-For` entry (of its last
    /// line), the one the proxy in front added (only behind a proxy you run).
    pub trust_forwarded_for: bool,
    pub hash_threads: usize,
    /// Threads serving HTTP when not on Lambda, each with a single-threaded
    /// runtime of its own (`wiring::serve`).
    pub http_threads: usize,
    pub policy: Policy,
    /// SHA-256 of the admin bearer key; without it the admin API answers
    /// 401 to everyone.
    pub admin_key_hash: Option<crate::audit::AdminKeyHash>,
    /// How long audit records are kept (TTL).
    pub audit_retention_days: u32,
    /// On AWS, Terraform's `secrets_version` and `admin_key_hash_version`:
    /// the rotation numbers of the secrets read at cold start. They are in
    /// the function's environment so that raising one changes its
    /// configuration and no warm instance goes on with the old values; the
    /// api logs them at start.
    pub secrets_version: Option<u32>,
    pub admin_key_hash_version: Option<u32>,
    /// Terraform's `jwt_key_version`, which rotates the JWT signing key
    /// alone (`secrets_version` rotates it with the code HMAC key).
    pub jwt_key_version: Option<u32>,
    /// Terraform's `jwt_key_b_version`, the rotation number of the second
    /// key slot (`jwt_key_version` is the first's).
    pub jwt_key_b_version: Option<u32>,
}

/// Every variable `Config::from_lookup` reads, for docs and Terraform checks.
pub const CONFIG_KEYS: &[&str] = &[
    "LATCHKEY_BACKEND",
    "LATCHKEY_DATA_DIR",
    "LATCHKEY_TABLE_PREFIX",
    "LATCHKEY_MAIL_QUEUE_URL",
    "LATCHKEY_BOOTSTRAP",
    "LATCHKEY_BIND",
    "PUBLIC_BASE_URL",
    "LATCHKEY_JWT_ISSUER",
    "LATCHKEY_JWT_AUDIENCE",
    "LATCHKEY_JWT_PRIVATE_KEY",
    "LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY",
    "LATCHKEY_JWT_STANDBY_KEY",
    "LATCHKEY_CODE_HMAC_KEY",
    "LATCHKEY_JWT_PRIVATE_KEY_PARAM",
    "LATCHKEY_JWT_STANDBY_KEY_PARAM",
    "LATCHKEY_CODE_HMAC_KEY_PARAM",
    "LATCHKEY_TRUST_FORWARDED_FOR",
    "LATCHKEY_HASH_THREADS",
    "LATCHKEY_HTTP_THREADS",
    "LATCHKEY_ARGON2_M_KIB",
    "LATCHKEY_ARGON2_T",
    "LATCHKEY_ARGON2_P",
    "LATCHKEY_PASSWORD_MIN_CHARS",
    "LATCHKEY_ACCESS_TTL_SECS",
    "LATCHKEY_OTP_TTL_SECS",
    "LATCHKEY_REFRESH_RETRY_GRACE_SECS",
    "LATCHKEY_RATE_LIMITS",
    "LATCHKEY_ADMIN_KEY_HASH",
    "LATCHKEY_ADMIN_KEY_HASH_PARAM",
    "LATCHKEY_AUDIT_RETENTION_DAYS",
    "LATCHKEY_AUDIT_KEY",
    "LATCHKEY_AUDIT_KEY_PARAM",
    "LATCHKEY_SECRETS_VERSION",
    "LATCHKEY_ADMIN_KEY_HASH_VERSION",
    "LATCHKEY_JWT_KEY_VERSION",
    "LATCHKEY_JWT_KEY_B_VERSION",
];

/// The most argon2 memory `LATCHKEY_ARGON2_M_KIB` may ask for (1 GiB): each
/// hashing thread holds that much, and a typo of a few zeros should stop
/// the start with the variable's name, not abort an allocation.
pub const MAX_ARGON2_M_KIB: u32 = 1 << 20;

/// Audit records are kept this long unless configured otherwise.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 400;

/// Everything wrong with the environment, one line per variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut errs = Vec::new();
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        fn num<T: std::str::FromStr>(
            errs: &mut Vec<String>,
            k: &str,
            v: Option<String>,
            d: T,
            ok: impl Fn(&T) -> bool,
            rule: &str,
        ) -> T {
            match v {
                None => d,
                Some(s) => match s.trim().parse::<T>() {
                    Ok(n) if ok(&n) => n,
                    _ => {
                        errs.push(format!("{k}: {rule} (got {s:?})"));
                        d
                    }
                },
            }
        }
        let flag = |errs: &mut Vec<String>, k: &str| match get(k).as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(o) => {
                errs.push(format!("{k}: must be true or false (got {o:?})"));
                false
            }
        };

        let backend = match get("LATCHKEY_BACKEND").as_deref().unwrap_or("embedded") {
            "embedded" => {
                Backend::Embedded { data_dir: get("LATCHKEY_DATA_DIR").unwrap_or_else(|| "var".into()).into() }
            }
            "aws" => Backend::Aws {
                table_prefix: get("LATCHKEY_TABLE_PREFIX").unwrap_or_else(|| "latchkey".into()),
                mail_queue_url: get("LATCHKEY_MAIL_QUEUE_URL"),
                bootstrap: flag(&mut errs, "LATCHKEY_BOOTSTRAP"),
            },
            other => {
                errs.push(format!("LATCHKEY_BACKEND: must be embedded or aws (got {other:?})"));
                Backend::Embedded { data_dir: "var".into() }
            }
        };
        if let Some(p) = get("LATCHKEY_TABLE_PREFIX")
            && !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(format!("LATCHKEY_TABLE_PREFIX: only letters, digits, '-' and '_' (got {p:?})"));
        }
        let bind = get("LATCHKEY_BIND").unwrap_or_else(|| "127.0.0.1:3000".into());
        if bind.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!("LATCHKEY_BIND: must be host:port with an IP address (got {bind:?})"));
        }
        let public_base_url = get("PUBLIC_BASE_URL").unwrap_or_else(|| default_base_url(&bind));
        if let Some(problem) = public_base_url_problem(&public_base_url) {
            errs.push(format!("PUBLIC_BASE_URL: {problem} (got {public_base_url:?})"));
        }
        let public_base_url = public_base_url.trim_end_matches('/').to_string();

        let mut policy = Policy::default();
        let d = policy.argon2;
        policy.argon2.m_kib = num(
            &mut errs,
            "LATCHKEY_ARGON2_M_KIB",
            get("LATCHKEY_ARGON2_M_KIB"),
            d.m_kib,
            |&m| (19456..=MAX_ARGON2_M_KIB).contains(&m),
            "19456..=1048576 (KiB: the OWASP minimum to 1 GiB, held by every hashing thread)",
        );
        policy.argon2.t =
            num(&mut errs, "LATCHKEY_ARGON2_T", get("LATCHKEY_ARGON2_T"), d.t, |&t| (2..=10).contains(&t), "2..=10");
        policy.argon2.p =
            num(&mut errs, "LATCHKEY_ARGON2_P", get("LATCHKEY_ARGON2_P"), d.p, |&p| (1..=16).contains(&p), "1..=16");
        policy.password.min_chars = num(
            &mut errs,
            "LATCHKEY_PASSWORD_MIN_CHARS",
            get("LATCHKEY_PASSWORD_MIN_CHARS"),
            12,
            |n| (8..=64).contains(n),
            "8..=64",
        );
        policy.access_ttl_secs = num(
            &mut errs,
            "LATCHKEY_ACCESS_TTL_SECS",
            get("LATCHKEY_ACCESS_TTL_SECS"),
            600,
            |n| (60..=600).contains(n),
            "60..=600",
        );
        policy.otp_ttl_secs = num(
            &mut errs,
            "LATCHKEY_OTP_TTL_SECS",
            get("LATCHKEY_OTP_TTL_SECS"),
            600,
            |n| (60..=600).contains(n),
            "60..=600 (ASVS 6.5.5 caps it at 10 minutes)",
        );
        policy.refresh_retry_grace_secs = num(
            &mut errs,
            "LATCHKEY_REFRESH_RETRY_GRACE_SECS",
            get("LATCHKEY_REFRESH_RETRY_GRACE_SECS"),
            policy.refresh_retry_grace_secs,
            |n| (0..=60).contains(n),
            "0..=60 (0: a refresh token sent again is always a reuse)",
        );
        match get("LATCHKEY_RATE_LIMITS").as_deref() {
            None | Some("default") => {}
            Some("relaxed") => policy.limits = RateLimits::relaxed(),
            Some(o) => errs.push(format!("LATCHKEY_RATE_LIMITS: default or relaxed (got {o:?})")),
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // A thread count: one per core unless the variable sets it.
        let threads =
            |errs: &mut Vec<String>, k: &str| num(errs, k, get(k), cores, |n| (1..=256).contains(n), "1..=256");
        let hash_threads = threads(&mut errs, "LATCHKEY_HASH_THREADS");
        let http_threads = threads(&mut errs, "LATCHKEY_HTTP_THREADS");
        let trust_forwarded_for = flag(&mut errs, "LATCHKEY_TRUST_FORWARDED_FOR");
        let admin_key_hash = get("LATCHKEY_ADMIN_KEY_HASH").and_then(|h| {
            let parsed = crate::audit::AdminKeyHash::from_hex(&h);
            if parsed.is_none() {
                errs.push("LATCHKEY_ADMIN_KEY_HASH: must be the hex SHA-256 of the admin key (64 hex digits)".into());
            }
            parsed
        });
        let audit_retention_days = num(
            &mut errs,
            "LATCHKEY_AUDIT_RETENTION_DAYS",
            get("LATCHKEY_AUDIT_RETENTION_DAYS"),
            DEFAULT_AUDIT_RETENTION_DAYS,
            |n| (1..=3650).contains(n),
            "1..=3650",
        );

        // A rotation number: a whole number from 1, as Terraform's.
        let mut version =
            |k: &str| get(k).map(|v| num(&mut errs, k, Some(v), 0, |n: &u32| *n >= 1, "a whole number from 1"));
        let secrets_version = version("LATCHKEY_SECRETS_VERSION");
        let admin_key_hash_version = version("LATCHKEY_ADMIN_KEY_HASH_VERSION");
        let jwt_key_version = version("LATCHKEY_JWT_KEY_VERSION");
        let jwt_key_b_version = version("LATCHKEY_JWT_KEY_B_VERSION");
        let jwt_previous_public_key = get("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY").and_then(|x| {
            crate::keys::VerifyingKey::from_jwk_x(&x)
                .map_err(|e| errs.push(format!("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY: {e}")))
                .ok()
        });

        if !errs.is_empty() {
            return Err(ConfigError(errs));
        }
        Ok(Config {
            backend,
            bind,
            jwt_issuer: get("LATCHKEY_JWT_ISSUER").unwrap_or_else(|| public_base_url.clone()),
            jwt_audience: get("LATCHKEY_JWT_AUDIENCE").unwrap_or_else(|| "latchkey".into()),
            public_base_url,
            jwt_private_key: get("LATCHKEY_JWT_PRIVATE_KEY").map(crate::domain::Secret::new),
            jwt_previous_public_key,
            jwt_standby_key: get("LATCHKEY_JWT_STANDBY_KEY").map(crate::domain::Secret::new),
            jwt_standby_key_param: get("LATCHKEY_JWT_STANDBY_KEY_PARAM"),
            code_hmac_key: get("LATCHKEY_CODE_HMAC_KEY").map(crate::domain::Secret::new),
            jwt_private_key_param: get("LATCHKEY_JWT_PRIVATE_KEY_PARAM"),
            code_hmac_key_param: get("LATCHKEY_CODE_HMAC_KEY_PARAM"),
            admin_key_hash_param: get("LATCHKEY_ADMIN_KEY_HASH_PARAM"),
            audit_key: get("LATCHKEY_AUDIT_KEY").map(crate::domain::Secret::new),
            audit_key_param: get("LATCHKEY_AUDIT_KEY_PARAM"),
            trust_forwarded_for,
            hash_threads,
            http_threads,
            policy,
            admin_key_hash,
            audit_retention_days,
            secrets_version,
            admin_key_hash_version,
            jwt_key_version,
            jwt_key_b_version,
        })
    }
}

/// Why `url` cannot be the public base URL (of the links in mail, and the
/// JWT issuer), if it cannot: it must be `https://`, except for a host that
/// is only reachable from this machine (loopback, `localhost`, or the
/// unspecified address of a local bind), where `http://` is a local run.
/// `PUBLIC_BASE_URL` when none is given: `http://<bind>`, except that an
/// unspecified bind address (`0.0.0.0`, `[::]`) is named `localhost`.
/// Browsers treat `localhost` as a secure context and `0.0.0.0` not, so
/// they would drop the pages' `Secure` cookies and refuse every form, and
/// the links in mail would not open.
fn default_base_url(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("http://localhost:{}", a.port()),
        _ => format!("http://{bind}"),
    }
}

pub fn public_base_url_problem(url: &str) -> Option<String> {
    let Some((scheme, authority)) = base_url_parts(url) else {
        return Some("must start with https://".into());
    };
    if authority.contains('@') {
        // `http://localhost:1@auth.example.com` is a remote host.
        return Some("must not carry user info (`user@`) before the host".into());
    }
    let host = authority_host(authority);
    if host.is_empty() {
        return Some("has no host".into());
    }
    // The pages' forms, redirects, stylesheet and cookies (`Path=/`) are at
    // the host's root: under a path, mail links would reach pages whose
    // forms post outside it.
    let rest = &url[scheme.len() + "://".len() + authority.len()..];
    if !matches!(rest, "" | "/") {
        return Some("must be the site's root: no path, query or fragment after the host".into());
    }
    let local = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    (scheme == "http" && !local).then(|| "must start with https:// (http:// is only for a loopback host)".into())
}

/// The scheme (`https` or `http`) and the authority of a base URL; `None`
/// for any other scheme.
pub fn base_url_parts(url: &str) -> Option<(&'static str, &str)> {
    let (scheme, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => ("https", rest),
        (None, Some(rest)) => ("http", rest),
        (None, None) => return None,
    };
    Some((scheme, rest.split(['/', '?', '#']).next().unwrap_or_default()))
}

/// The host of a URL's authority or of a `Host` header (`host[:port]`,
/// `[v6][:port]`), without the port or the brackets.
pub fn authority_host(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

/// Whether console logs get colours: only for a person at a terminal who
/// has not asked for none (`NO_COLOR` set and not empty, no-color.org). A
/// log file, a pipe or journald gets plain lines, not escape codes around
/// every field. `no_color` is the variable's value.
pub fn console_colours(stream_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stream_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `console_colours` for logs written to `stream`, with this process's
/// `NO_COLOR`.
pub fn console_colours_for(stream: &impl std::io::IsTerminal) -> bool {
    console_colours(stream.is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn console_colours_only_at_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(console_colours(true, None));
        assert!(console_colours(true, Some(OsStr::new(""))), "an empty NO_COLOR asks for nothing");
        assert!(!console_colours(true, Some(OsStr::new("1"))));
        assert!(!console_colours(false, None), "a file or a pipe gets no escape codes");
        assert!(!console_colours(false, Some(OsStr::new("1"))));
    }

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_embedded_and_safe() {
        let c = cfg(&[]).unwrap();
        assert!(matches!(c.backend, Backend::Embedded { .. }));
        assert_eq!(c.policy.argon2, Argon2Settings { m_kib: 19456, t: 2, p: 1 });
        assert_eq!(c.policy.otp_ttl_secs, 600);
        assert_eq!(c.policy.refresh_retry_grace_secs, 0, "reuse of a replaced token revokes, by default");
        assert_eq!(c.public_base_url, "http://127.0.0.1:3000");
        assert_eq!((c.admin_key_hash, c.audit_retention_days), (None, 400));
    }

    #[test]
    fn the_refresh_retry_grace_is_at_most_a_minute() {
        for (v, want) in [("0", 0), ("60", 60), ("15", 15)] {
            let c = cfg(&[("LATCHKEY_REFRESH_RETRY_GRACE_SECS", v)]).unwrap();
            assert_eq!(c.policy.refresh_retry_grace_secs, want);
        }
        for bad in ["61", "-1", "3600", "x", "1.5"] {
            let e = cfg(&[("LATCHKEY_REFRESH_RETRY_GRACE_SECS", bad)]).unwrap_err().to_string();
            assert!(e.contains("LATCHKEY_REFRESH_RETRY_GRACE_SECS: 0..=60"), "{bad}: {e}");
        }
    }

    #[test]
    fn audit_keys() {
        let hash = "a".repeat(64);
        let c = cfg(&[("LATCHKEY_ADMIN_KEY_HASH", &hash), ("LATCHKEY_AUDIT_RETENTION_DAYS", "30")]).unwrap();
        assert!(c.admin_key_hash.is_some());
        assert_eq!(c.audit_retention_days, 30);
        let e = cfg(&[("LATCHKEY_ADMIN_KEY_HASH", "s3cret"), ("LATCHKEY_AUDIT_RETENTION_DAYS", "0")]).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("LATCHKEY_ADMIN_KEY_HASH") && s.contains("LATCHKEY_AUDIT_RETENTION_DAYS"), "{s}");
        assert!(!s.contains("s3cret"), "a bad value is not echoed: {s}");
    }

    #[test]
    fn rotation_numbers_are_whole_numbers_from_one() {
        let c = cfg(&[
            ("LATCHKEY_SECRETS_VERSION", "3"),
            ("LATCHKEY_ADMIN_KEY_HASH_VERSION", "1"),
            ("LATCHKEY_JWT_KEY_VERSION", "2"),
            ("LATCHKEY_JWT_KEY_B_VERSION", "4"),
        ])
        .unwrap();
        assert_eq!((c.secrets_version, c.admin_key_hash_version, c.jwt_key_version), (Some(3), Some(1), Some(2)));
        assert_eq!(c.jwt_key_b_version, Some(4));
        let none = cfg(&[]).unwrap();
        assert_eq!((none.secrets_version, none.admin_key_hash_version, none.jwt_key_version), (None, None, None));
        assert_eq!(none.jwt_key_b_version, None);
        for bad in ["0", "-1", "1.5", "two"] {
            let keys = [
                "LATCHKEY_SECRETS_VERSION",
                "LATCHKEY_ADMIN_KEY_HASH_VERSION",
                "LATCHKEY_JWT_KEY_VERSION",
                "LATCHKEY_JWT_KEY_B_VERSION",
            ];
            let e = cfg(&keys.map(|k| (k, bad))).unwrap_err().to_string();
            for k in keys {
                assert!(e.contains(&format!("{k}: a whole number from 1")), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn the_previous_jwt_key_is_the_x_of_its_jwk() {
        let key = crate::keys::SigningKey::generate().unwrap();
        let x = key.jwk()["x"].as_str().unwrap().to_string();
        let c = cfg(&[("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY", &x)]).unwrap();
        assert_eq!(c.jwt_previous_public_key.as_ref(), Some(key.verifying_key()));
        assert_eq!(cfg(&[("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY", "")]).unwrap().jwt_previous_public_key, None);
        // The private key by mistake, or the whole JWK: refused by name,
        // and the value is not echoed.
        for bad in [key.to_base64(), key.jwk().to_string()] {
            let e = cfg(&[("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY", &bad)]).unwrap_err().to_string();
            assert!(e.contains("LATCHKEY_JWT_PREVIOUS_PUBLIC_KEY: "), "{e}");
            assert!(!e.contains(&bad), "{e}");
        }
    }

    #[test]
    fn argon2_memory_is_bounded_both_ways() {
        assert_eq!(cfg(&[("LATCHKEY_ARGON2_M_KIB", "1048576")]).unwrap().policy.argon2.m_kib, MAX_ARGON2_M_KIB);
        for bad in ["19455", "1048577", "19456000"] {
            let e = cfg(&[("LATCHKEY_ARGON2_M_KIB", bad)]).unwrap_err().to_string();
            assert!(e.contains("LATCHKEY_ARGON2_M_KIB: 19456..=1048576"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_every_bad_variable() {
        let e =
            cfg(&[("LATCHKEY_BACKEND", "mysql"), ("LATCHKEY_OTP_TTL_SECS", "900"), ("LATCHKEY_ARGON2_M_KIB", "1024")])
                .unwrap_err();
        let s = e.to_string();
        for k in ["LATCHKEY_BACKEND", "LATCHKEY_OTP_TTL_SECS", "LATCHKEY_ARGON2_M_KIB"] {
            assert!(s.contains(k), "{s}");
        }
    }

    #[test]
    fn public_base_url_is_https_unless_the_host_is_local() {
        for ok in [
            "https://auth.example.com",
            "https://auth.example.com:8443",
            "https://auth.example.com/",
            "http://127.0.0.1:3000",
            "http://localhost:3000",
            "http://[::1]:3000",
            "http://0.0.0.0:3000",
        ] {
            assert_eq!(public_base_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://auth.example.com",
            "http://192.0.2.7:3000",
            "ftp://x",
            "auth.example.com",
            "https://",
            "http://:80",
            "http://localhost:1@auth.example.com",
            "http://127.0.0.1@auth.example.com/",
            "https://user@auth.example.com",
            "https://auth.example.com/base",
            "https://auth.example.com/base/",
            "https://auth.example.com?x=1",
            "https://auth.example.com#top",
        ] {
            assert!(public_base_url_problem(bad).is_some(), "{bad}");
        }
        let e = cfg(&[("PUBLIC_BASE_URL", "http://auth.example.com")]).unwrap_err().to_string();
        assert!(e.contains("PUBLIC_BASE_URL: must start with https://"), "{e}");
    }

    #[test]
    fn the_default_base_url_names_an_unspecified_bind_localhost() {
        for (bind, base) in [
            ("127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("0.0.0.0:3000", "http://localhost:3000"),
            ("[::]:8080", "http://localhost:8080"),
            ("[::1]:3000", "http://[::1]:3000"),
        ] {
            assert_eq!(cfg(&[("LATCHKEY_BIND", bind)]).unwrap().public_base_url, base, "{bind}");
        }
        let given = cfg(&[("LATCHKEY_BIND", "0.0.0.0:3000"), ("PUBLIC_BASE_URL", "http://0.0.0.0:3000")]).unwrap();
        assert_eq!(given.public_base_url, "http://0.0.0.0:3000", "a given one is kept");
    }
}
