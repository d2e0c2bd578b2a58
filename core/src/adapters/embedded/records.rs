//! The domain records as table rows: one loader and one writer per table,
//! and the SQL conversions of the newtypes. Values read back go through the
//! newtypes' own parsers, so a corrupt row is an error, not a bad value.

use crate::clock::Timestamp;
use crate::domain::{
    Challenge, ChallengeId, Email, OtpRecord, RequestMeta, Session, SessionId, User, UserId, Username,
    VerificationRecord,
};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, named_params};

fn text_as<T>(v: ValueRef<'_>, parse: impl FnOnce(&str) -> Option<T>, what: &str) -> FromSqlResult<T> {
    let s = v.as_str()?;
    parse(s).ok_or_else(|| FromSqlError::Other(format!("stored {what} is not valid").into()))
}

macro_rules! sql_text {
    ($t:ty, $what:literal, |$s:ident| $parse:expr) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.to_string()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                text_as(v, |$s| $parse, $what)
            }
        }
    };
}

sql_text!(UserId, "user id", |s| UserId::parse(s));
sql_text!(ChallengeId, "challenge id", |s| ChallengeId::parse(s));
sql_text!(SessionId, "session id", |s| SessionId::parse(s));
sql_text!(Username, "username", |s| Username::parse(s).ok().filter(|u| u.as_str() == s));
sql_text!(Email, "email", |s| Email::parse_stored(s).ok().filter(|e| e.as_str() == s));

/// Request metadata is a small JSON object in a TEXT column.
struct Meta(RequestMeta);

impl FromSql for Meta {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(v.as_str()?).map(Meta).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

fn meta_json(m: &RequestMeta) -> rusqlite::Result<String> {
    serde_json::to_string(m).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

// ---- users ----------------------------------------------------------------

const USER_COLS: &str = "id, username, email, password_hash, verified, created_at, failed_logins, locked_until, \
                         otp_failures, verification_sent_at, meta, sessions_valid_after, password_reset_at, password_epoch, \
                         password_resets, email_changes";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        password_hash: r.get(3)?,
        verified: r.get(4)?,
        created_at: r.get(5)?,
        failed_logins: r.get(6)?,
        locked_until: r.get(7)?,
        otp_failures: r.get(8)?,
        verification_sent_at: r.get(9)?,
        meta: r.get::<_, Meta>(10)?.0,
        sessions_valid_after: r.get(11)?,
        password_reset_at: r.get(12)?,
        password_epoch: r.get(13)?,
        password_resets: r.get(14)?,
        email_changes: r.get(15)?,
    })
}

/// Which unique column to look a user up by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UserKey<'a> {
    Id(&'a UserId),
    Username(&'a Username),
    Email(&'a Email),
}

pub(crate) fn load_user(c: &Connection, key: UserKey<'_>) -> rusqlite::Result<Option<User>> {
    let (col, val): (&str, &dyn ToSql) = match &key {
        UserKey::Id(v) => ("id", v),
        UserKey::Username(v) => ("username", v),
        UserKey::Email(v) => ("email", v),
    };
    c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE {col} = ?1"))?.query_row([val], user_row).optional()
}

pub(crate) fn insert_user(c: &Connection, u: &User) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO users ({USER_COLS}) VALUES (:id, :username, :email, :password_hash, :verified, :created_at, \
         :failed_logins, :locked_until, :otp_failures, :verification_sent_at, :meta, :sessions_valid_after, :password_reset_at, :password_epoch, \
         :password_resets, :email_changes)"
    ))?
    .execute(named_params! {
        ":id": u.id, ":username": u.username, ":email": u.email, ":password_hash": u.password_hash,
        ":verified": u.verified, ":created_at": u.created_at, ":failed_logins": u.failed_logins,
        ":locked_until": u.locked_until, ":otp_failures": u.otp_failures,
        ":verification_sent_at": u.verification_sent_at, ":meta": meta_json(&u.meta)?,
        ":sessions_valid_after": u.sessions_valid_after, ":password_reset_at": u.password_reset_at,
        ":password_epoch": u.password_epoch, ":password_resets": u.password_resets,
        ":email_changes": u.email_changes,
    })?;
    Ok(())
}

/// Writes the mutable fields of a user that exists, but its address and
/// the count of its changes (`set_user_email`, the only writer of those).
pub(crate) fn update_user(c: &Connection, u: &User) -> rusqlite::Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE users SET password_hash = :password_hash, verified = :verified, failed_logins = :failed_logins, \
             locked_until = :locked_until, otp_failures = :otp_failures, \
             verification_sent_at = :verification_sent_at, sessions_valid_after = :sessions_valid_after, \
             password_reset_at = :password_reset_at, password_epoch = :password_epoch, \
             password_resets = :password_resets, meta = :meta WHERE id = :id",
        )?
        .execute(named_params! {
            ":id": u.id, ":password_hash": u.password_hash, ":verified": u.verified,
            ":failed_logins": u.failed_logins, ":locked_until": u.locked_until, ":otp_failures": u.otp_failures,
            ":verification_sent_at": u.verification_sent_at, ":meta": meta_json(&u.meta)?,
            ":sessions_valid_after": u.sessions_valid_after, ":password_reset_at": u.password_reset_at,
            ":password_epoch": u.password_epoch, ":password_resets": u.password_resets,
        })?;
    expect_one(n)
}

/// Writes the address of a user that exists, the count of its changes and
/// its `meta` (an address change; the UNIQUE column refuses a taken one).
pub(crate) fn set_user_email(c: &Connection, u: &User) -> rusqlite::Result<()> {
    let n = c
        .prepare_cached("UPDATE users SET email = :email, email_changes = :email_changes, meta = :meta WHERE id = :id")?
        .execute(named_params! {
            ":id": u.id, ":email": u.email, ":email_changes": u.email_changes, ":meta": meta_json(&u.meta)?,
        })?;
    expect_one(n)
}

/// Deletes a user row (rows that reference it cascade).
pub(crate) fn delete_user(c: &Connection, id: &UserId) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM users WHERE id = ?1")?.execute([id])?;
    Ok(())
}

pub(crate) fn user_exists(c: &Connection, id: &UserId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")?.query_row([id], |r| r.get(0))
}

// ---- username holds -------------------------------------------------------

/// When the hold on `username` was made, if there is one.
pub(crate) fn load_username_hold(c: &Connection, username: &Username) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached("SELECT held_at FROM username_holds WHERE username = ?1")?
        .query_row([username], |r| r.get(0))
        .optional()
}

/// Holds `username` from `held_at`, replacing a hold there is.
pub(crate) fn put_username_hold(c: &Connection, username: &Username, held_at: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO username_holds (username, held_at) VALUES (?1, ?2) \
         ON CONFLICT (username) DO UPDATE SET held_at = excluded.held_at",
    )?
    .execute(rusqlite::params![username, held_at])?;
    Ok(())
}

pub(crate) fn delete_username_hold(c: &Connection, username: &Username) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM username_holds WHERE username = ?1")?.execute([username])?;
    Ok(())
}

// ---- verifications --------------------------------------------------------

const VERIFICATION_COLS: &str = "token_hash, user_id, created_at, expires_at, used_at, meta";

fn verification_row(r: &Row<'_>) -> rusqlite::Result<VerificationRecord> {
    Ok(VerificationRecord {
        token_hash: r.get(0)?,
        user_id: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        used_at: r.get(4)?,
        meta: r.get::<_, Meta>(5)?.0,
    })
}

pub(crate) fn load_verification(c: &Connection, token_hash: &str) -> rusqlite::Result<Option<VerificationRecord>> {
    c.prepare_cached(&format!("SELECT {VERIFICATION_COLS} FROM verifications WHERE token_hash = ?1"))?
        .query_row([token_hash], verification_row)
        .optional()
}

pub(crate) fn insert_verification(c: &Connection, v: &VerificationRecord) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO verifications ({VERIFICATION_COLS}) VALUES (:token_hash, :user_id, :created_at, :expires_at, \
         :used_at, :meta)"
    ))?
    .execute(named_params! {
        ":token_hash": v.token_hash, ":user_id": v.user_id, ":created_at": v.created_at,
        ":expires_at": v.expires_at, ":used_at": v.used_at, ":meta": meta_json(&v.meta)?,
    })?;
    Ok(())
}

pub(crate) fn set_verification_used(
    c: &Connection,
    token_hash: &str,
    used_at: i64,
    meta: &RequestMeta,
) -> rusqlite::Result<()> {
    let n = c
        .prepare_cached("UPDATE verifications SET used_at = ?2, meta = ?3 WHERE token_hash = ?1")?
        .execute(rusqlite::params![token_hash, used_at, meta_json(meta)?])?;
    expect_one(n)
}

// ---- challenges -----------------------------------------------------------

const CHALLENGE_COLS: &str = "id, user_id, code_hash, created_at, expires_at, last_sent_at, resends, failures, used_at, meta, attempts, \
     password_epoch";

fn challenge_row(r: &Row<'_>) -> rusqlite::Result<Challenge> {
    Ok(Challenge {
        id: r.get(0)?,
        user_id: r.get(1)?,
        code_hash: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_sent_at: r.get(5)?,
        resends: r.get(6)?,
        failures: r.get(7)?,
        used_at: r.get(8)?,
        meta: r.get::<_, Meta>(9)?.0,
        attempts: r.get(10)?,
        password_epoch: r.get(11)?,
    })
}

pub(crate) fn challenge_exists(c: &Connection, id: &ChallengeId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT EXISTS (SELECT 1 FROM challenges WHERE id = ?1)")?.query_row([id], |r| r.get(0))
}

pub(crate) fn load_challenge(c: &Connection, id: &ChallengeId) -> rusqlite::Result<Option<Challenge>> {
    c.prepare_cached(&format!("SELECT {CHALLENGE_COLS} FROM challenges WHERE id = ?1"))?
        .query_row([id], challenge_row)
        .optional()
}

pub(crate) fn insert_challenge(c: &Connection, ch: &Challenge) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO challenges ({CHALLENGE_COLS}) VALUES (:id, :user_id, :code_hash, :created_at, :expires_at, \
         :last_sent_at, :resends, :failures, :used_at, :meta, :attempts, :password_epoch)"
    ))?
    .execute(named_params! {
        ":id": ch.id, ":user_id": ch.user_id, ":code_hash": ch.code_hash, ":created_at": ch.created_at,
        ":expires_at": ch.expires_at, ":last_sent_at": ch.last_sent_at, ":resends": ch.resends,
        ":failures": ch.failures, ":used_at": ch.used_at, ":meta": meta_json(&ch.meta)?, ":attempts": ch.attempts,
        ":password_epoch": ch.password_epoch,
    })?;
    Ok(())
}

pub(crate) fn update_challenge(c: &Connection, ch: &Challenge) -> rusqlite::Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE challenges SET code_hash = :code_hash, expires_at = :expires_at, last_sent_at = :last_sent_at, \
             resends = :resends, failures = :failures, attempts = :attempts, used_at = :used_at, meta = :meta \
             WHERE id = :id",
        )?
        .execute(named_params! {
            ":id": ch.id, ":code_hash": ch.code_hash, ":expires_at": ch.expires_at,
            ":last_sent_at": ch.last_sent_at, ":resends": ch.resends, ":failures": ch.failures,
            ":attempts": ch.attempts, ":used_at": ch.used_at, ":meta": meta_json(&ch.meta)?,
        })?;
    expect_one(n)
}

// ---- sessions -------------------------------------------------------------

const SESSION_COLS: &str = "id, user_id, refresh_hash, created_at, refreshed_at, expires_at, generation, revoked_at, \
                            revoke_reason, meta, valid_from, password_epoch, retry_seal, retries_answered";

fn session_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        user_id: r.get(1)?,
        refresh_hash: r.get(2)?,
        created_at: r.get(3)?,
        refreshed_at: r.get(4)?,
        expires_at: r.get(5)?,
        generation: r.get(6)?,
        revoked_at: r.get(7)?,
        revoke_reason: r.get(8)?,
        meta: r.get::<_, Meta>(9)?.0,
        valid_from: r.get(10)?,
        password_epoch: r.get(11)?,
        retry_seal: r.get(12)?,
        retries_answered: r.get(13)?,
    })
}

pub(crate) fn load_session(c: &Connection, id: &SessionId) -> rusqlite::Result<Option<Session>> {
    c.prepare_cached(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"))?
        .query_row([id], session_row)
        .optional()
}

/// The sessions of `user_id` not revoked and with `expires_at > now`.
pub(crate) fn live_sessions_of(c: &Connection, user_id: &UserId, now: Timestamp) -> rusqlite::Result<Vec<Session>> {
    c.prepare_cached(&format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2"
    ))?
    .query_map(rusqlite::params![user_id, now], session_row)?
    .collect()
}

pub(crate) fn insert_session(c: &Connection, s: &Session) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO sessions ({SESSION_COLS}) VALUES (:id, :user_id, :refresh_hash, :created_at, :refreshed_at, \
         :expires_at, :generation, :revoked_at, :revoke_reason, :meta, :valid_from, :password_epoch, :retry_seal, \
         :retries_answered)"
    ))?
    .execute(named_params! {
        ":id": s.id, ":user_id": s.user_id, ":refresh_hash": s.refresh_hash, ":created_at": s.created_at,
        ":refreshed_at": s.refreshed_at, ":expires_at": s.expires_at, ":generation": s.generation,
        ":revoked_at": s.revoked_at, ":revoke_reason": s.revoke_reason, ":meta": meta_json(&s.meta)?,
        ":valid_from": s.valid_from, ":password_epoch": s.password_epoch, ":retry_seal": s.retry_seal,
        ":retries_answered": s.retries_answered,
    })?;
    Ok(())
}

pub(crate) fn update_session(c: &Connection, s: &Session) -> rusqlite::Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE sessions SET refresh_hash = :refresh_hash, refreshed_at = :refreshed_at, \
             generation = :generation, revoked_at = :revoked_at, revoke_reason = :revoke_reason, meta = :meta, \
             valid_from = :valid_from, password_epoch = :password_epoch, retry_seal = :retry_seal, \
             retries_answered = :retries_answered WHERE id = :id",
        )?
        .execute(named_params! {
            ":id": s.id, ":refresh_hash": s.refresh_hash, ":refreshed_at": s.refreshed_at,
            ":generation": s.generation, ":revoked_at": s.revoked_at, ":revoke_reason": s.revoke_reason,
            ":meta": meta_json(&s.meta)?, ":valid_from": s.valid_from, ":password_epoch": s.password_epoch,
            ":retry_seal": s.retry_seal, ":retries_answered": s.retries_answered,
        })?;
    expect_one(n)
}

// ---- standalone one-time codes --------------------------------------------

const OTP_COLS: &str =
    "address_hash, code_hash, created_at, expires_at, last_sent_at, failures, used_at, meta, attempts, budget_failures";

fn otp_row(r: &Row<'_>) -> rusqlite::Result<OtpRecord> {
    Ok(OtpRecord {
        address_hash: r.get(0)?,
        code_hash: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        last_sent_at: r.get(4)?,
        failures: r.get(5)?,
        used_at: r.get(6)?,
        meta: r.get::<_, Meta>(7)?.0,
        attempts: r.get(8)?,
        budget_failures: r.get(9)?,
    })
}

pub(crate) fn load_otp(c: &Connection, address_hash: &str) -> rusqlite::Result<Option<OtpRecord>> {
    c.prepare_cached(&format!("SELECT {OTP_COLS} FROM otps WHERE address_hash = ?1"))?
        .query_row([address_hash], otp_row)
        .optional()
}

/// Inserts or replaces the whole record for its address.
pub(crate) fn upsert_otp(c: &Connection, o: &OtpRecord) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO otps ({OTP_COLS}) VALUES (:address_hash, :code_hash, :created_at, :expires_at, :last_sent_at, \
         :failures, :used_at, :meta, :attempts, :budget_failures) \
         ON CONFLICT (address_hash) DO UPDATE SET code_hash = excluded.code_hash, created_at = excluded.created_at, \
         expires_at = excluded.expires_at, last_sent_at = excluded.last_sent_at, failures = excluded.failures, \
         attempts = excluded.attempts, budget_failures = excluded.budget_failures, used_at = excluded.used_at, \
         meta = excluded.meta"
    ))?
    .execute(named_params! {
        ":address_hash": o.address_hash, ":code_hash": o.code_hash, ":created_at": o.created_at,
        ":expires_at": o.expires_at, ":last_sent_at": o.last_sent_at, ":failures": o.failures,
        ":used_at": o.used_at, ":meta": meta_json(&o.meta)?, ":attempts": o.attempts,
        ":budget_failures": o.budget_failures,
    })?;
    Ok(())
}

// ---- expiry ---------------------------------------------------------------

/// A table of records with an `expires_at`, as the TTL sweep reads it.
pub(crate) struct Expiring<T: 'static> {
    pub table: &'static str,
    /// The primary key column.
    pub key_col: &'static str,
    cols: &'static str,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
    /// The record's key, as its change rows name it.
    pub key: fn(&T) -> String,
    /// Which rows are due at the cut `?1`.
    due: &'static str,
    /// How long after the time `due` compares with the cut a record lives
    /// (0: that time is its own expiry).
    pub lives: i64,
}

impl<T> Expiring<T> {
    /// A table whose records go when their own `expires_at` passes.
    const fn at_expiry(
        table: &'static str,
        key_col: &'static str,
        cols: &'static str,
        row: fn(&Row<'_>) -> rusqlite::Result<T>,
        key: fn(&T) -> String,
    ) -> Self {
        Expiring { table, key_col, cols, row, key, due: "expires_at <= ?1", lives: 0 }
    }
}

pub(crate) static EXPIRING_VERIFICATIONS: Expiring<VerificationRecord> =
    Expiring::at_expiry("verifications", "token_hash", VERIFICATION_COLS, verification_row, |v| v.token_hash.clone());
pub(crate) static EXPIRING_CHALLENGES: Expiring<Challenge> =
    Expiring::at_expiry("challenges", "id", CHALLENGE_COLS, challenge_row, |c| c.id.to_string());
pub(crate) static EXPIRING_SESSIONS: Expiring<Session> =
    Expiring::at_expiry("sessions", "id", SESSION_COLS, session_row, |s| s.id.to_string());
pub(crate) static EXPIRING_OTPS: Expiring<OtpRecord> =
    Expiring::at_expiry("otps", "address_hash", OTP_COLS, otp_row, |o| o.address_hash.clone());
/// Accounts nobody verified, kept `User::UNVERIFIED_RETENTION_SECS`; their
/// names are their row's, and their verification links go with it (ON
/// DELETE CASCADE).
pub(crate) static EXPIRING_UNVERIFIED_USERS: Expiring<User> = Expiring {
    table: "users",
    key_col: "id",
    cols: USER_COLS,
    row: user_row,
    key: |u| u.id.to_string(),
    due: "verified = 0 AND created_at <= ?1",
    lives: User::UNVERIFIED_RETENTION_SECS,
};

/// Deletes up to `limit` records of `t` that are due at `cut` (their
/// `expires_at` is at or before it, or for accounts, see `t.due`), and
/// returns them. (A scan: no index on `expires_at`, so the write
/// of every record made by a request stays as cheap as it was. The sweep
/// runs every 10 minutes and the tables hold about a day of records; a
/// scan that finds nothing took 1.4 ms over 10 000 challenge rows, 11 ms
/// over 100 000 and 98 ms over 1 000 000 (a copy of the table in Python's
/// sqlite3 on tmpfs, warm cache): time the requests wait for the connection.)
pub(crate) fn delete_expired<T>(c: &Connection, t: &Expiring<T>, cut: i64, limit: i64) -> rusqlite::Result<Vec<T>> {
    let gone: Vec<T> = c
        .prepare_cached(&format!("SELECT {} FROM {} WHERE {} LIMIT ?2", t.cols, t.table, t.due))?
        .query_map(rusqlite::params![cut, limit], t.row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = c.prepare_cached(&format!("DELETE FROM {} WHERE {} = ?1", t.table, t.key_col))?;
    for r in &gone {
        expect_one(delete.execute([(t.key)(r)])?)?;
    }
    Ok(gone)
}

/// An update meant for one row that was just read in the same transaction.
fn expect_one(n: usize) -> rusqlite::Result<()> {
    match n {
        1 => Ok(()),
        n => Err(rusqlite::Error::StatementChangedRows(n)),
    }
}
