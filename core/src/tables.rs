//! The DynamoDB tables, defined once. The emulator bootstrap creates them from
//! these specs and the Terraform checks compare against them.

/// Records outlive their own expiry by a day before a TTL sweep deletes
/// them (DynamoDB's TTL on AWS, `adapters::embedded::sweep` locally), so
/// the sweep never races a flow's expiry check (the flows check expiry
/// themselves anyway).
pub const TTL_GRACE_SECS: i64 = 86_400;

/// One global secondary index (hash key only, projection ALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsiSpec {
    pub name: &'static str,
    pub hash_key: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// Suffix after the configured prefix: `{prefix}-{suffix}`.
    pub suffix: &'static str,
    /// String partition key.
    pub hash_key: &'static str,
    /// String sort key, where the table has one.
    pub range_key: Option<&'static str>,
    pub gsis: &'static [GsiSpec],
    pub ttl_attribute: Option<&'static str>,
    /// Streams with NEW_AND_OLD_IMAGES (the audit trail reads them).
    pub stream: bool,
}

/// Users and their uniqueness claims: `USER#<id>`, `UNAME#<username>`,
/// `EMAIL#<email>`. User items carry `username` and `email` for the GSIs.
/// Only an unverified account's item and a username hold carry `ttl`
/// (`User::UNVERIFIED_RETENTION_SECS`); verifying removes it.
pub const USERS: TableSpec = TableSpec {
    suffix: "users",
    hash_key: "pk",
    range_key: None,
    gsis: &[GsiSpec { name: "by_username", hash_key: "username" }, GsiSpec { name: "by_email", hash_key: "email" }],
    ttl_attribute: Some("ttl"),
    stream: true,
};

/// Short-lived secrets' records: `VERIFY#<hash>`, `CHAL#<id>`,
/// `SESSION#<id>`, `OTP#<address hmac>`. The `by_user` index finds a
/// user's sessions (its listing filters on the `SESSION#` key; challenges
/// and verifications carry `user_id` too, standalone codes do not).
pub const TOKENS: TableSpec = TableSpec {
    suffix: "tokens",
    hash_key: "pk",
    range_key: None,
    gsis: &[GsiSpec { name: "by_user", hash_key: "user_id" }],
    ttl_attribute: Some("ttl"),
    stream: true,
};

/// Rate-limit counters: `RL#<key>#<window start>`.
pub const RATE_LIMITS: TableSpec = TableSpec {
    suffix: "rate-limits",
    hash_key: "pk",
    range_key: None,
    gsis: &[],
    ttl_attribute: Some("ttl"),
    stream: false,
};

/// The audit trail (written only by the stream processor):
/// `SUBJ#<subject>` / `REC#<seq, 20 digits>` records and `HEAD` (the chain
/// head), `EVENT#<source event id>` / `-` idempotency markers, and
/// `DAY#<YYYY-MM-DD>` / `<event type>` counters. Everything expires by TTL
/// (retention, 400 days by default).
pub const AUDIT: TableSpec = TableSpec {
    suffix: "audit",
    hash_key: "pk",
    range_key: Some("sk"),
    gsis: &[],
    ttl_attribute: Some("ttl"),
    stream: false,
};

/// The mail ledger: `MAIL#<job id>` -> the job's delivery state (claim
/// lease, sent / failed with reason). Idempotency for the mail worker, and
/// the record of each outcome the audit trail reads from its stream. Items
/// expire 7 days after their last change.
pub const MAIL_LEDGER: TableSpec = TableSpec {
    suffix: "mail-ledger",
    hash_key: "pk",
    range_key: None,
    gsis: &[],
    ttl_attribute: Some("ttl"),
    stream: true,
};

pub const ALL: &[TableSpec] = &[USERS, TOKENS, RATE_LIMITS, AUDIT, MAIL_LEDGER];

pub fn table_name(prefix: &str, spec: &TableSpec) -> String {
    format!("{prefix}-{}", spec.suffix)
}

/// The SQS queues: the mail queue and its dead-letter queue.
pub const MAIL_QUEUE: &str = "mail";
pub const MAIL_DLQ: &str = "mail-dlq";
/// SQS moves a message to the DLQ after this many receives.
pub const MAIL_MAX_RECEIVE_COUNT: u32 = 5;

pub fn queue_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}-{suffix}")
}
