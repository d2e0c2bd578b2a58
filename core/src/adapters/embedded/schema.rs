//! The schema, as an ordered list of migrations. `PRAGMA user_version` holds
//! how many have been applied; opening a database applies the rest, each in
//! its own transaction together with the version bump.

use crate::StoreError;
use crate::ports::StoreResult;
use rusqlite::{Connection, TransactionBehavior};

/// One migration: SQL, or code for what SQL cannot do.
enum Migration {
    Sql(&'static str),
    Code(fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>),
}
use Migration::{Code, Sql};

/// Append only: a released migration is never edited.
const MIGRATIONS: &[Migration] = &[
    // 1: the data, the change feed and the mail queue.
    Sql(r#"
    CREATE TABLE users (
        id                   TEXT PRIMARY KEY NOT NULL,
        username             TEXT NOT NULL UNIQUE,
        email                TEXT NOT NULL UNIQUE,
        password_hash        TEXT NOT NULL,
        verified             INTEGER NOT NULL CHECK (verified IN (0, 1)),
        created_at           INTEGER NOT NULL,
        failed_logins        INTEGER NOT NULL CHECK (failed_logins >= 0),
        locked_until         INTEGER,
        otp_failures         INTEGER NOT NULL CHECK (otp_failures >= 0),
        verification_sent_at INTEGER,
        meta                 TEXT NOT NULL
    );

    CREATE TABLE verifications (
        token_hash TEXT PRIMARY KEY NOT NULL,
        user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER,
        meta       TEXT NOT NULL
    );
    CREATE INDEX verifications_by_user ON verifications (user_id);

    CREATE TABLE challenges (
        id           TEXT PRIMARY KEY NOT NULL,
        user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        code_hash    TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        last_sent_at INTEGER NOT NULL,
        resends      INTEGER NOT NULL CHECK (resends >= 0),
        failures     INTEGER NOT NULL CHECK (failures >= 0),
        used_at      INTEGER,
        meta         TEXT NOT NULL
    );
    CREATE INDEX challenges_by_user ON challenges (user_id);

    CREATE TABLE sessions (
        id            TEXT PRIMARY KEY NOT NULL,
        user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        refresh_hash  TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        refreshed_at  INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        generation    INTEGER NOT NULL CHECK (generation >= 0),
        revoked_at    INTEGER,
        revoke_reason TEXT,
        meta          TEXT NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions (user_id);

    CREATE TABLE otps (
        address_hash TEXT PRIMARY KEY NOT NULL,
        code_hash    TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        last_sent_at INTEGER NOT NULL,
        failures     INTEGER NOT NULL CHECK (failures >= 0),
        used_at      INTEGER,
        meta         TEXT NOT NULL
    );

    CREATE TABLE rate_limits (
        key          TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        count        INTEGER NOT NULL CHECK (count >= 0),
        expires_at   INTEGER NOT NULL,
        PRIMARY KEY (key, window_start)
    ) WITHOUT ROWID;
    CREATE INDEX rate_limits_by_expiry ON rate_limits (expires_at);

    CREATE TABLE changes (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        at       INTEGER NOT NULL,
        entity   TEXT NOT NULL CHECK (entity IN ('user', 'verification', 'challenge', 'session', 'otp')),
        key      TEXT NOT NULL,
        op       TEXT NOT NULL CHECK (op IN ('insert', 'modify', 'remove')),
        old_json TEXT,
        new_json TEXT
    );

    CREATE TABLE mail_jobs (
        id         TEXT PRIMARY KEY NOT NULL,
        body       TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        last_error TEXT,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER,
        -- not picked up before this time: retry backoff, or the lease of a
        -- consumer that is delivering it
        not_before INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX mail_jobs_due ON mail_jobs (state, not_before);
    "#),
    // 2: the change feed also carries mail ledger records (entity 'mail').
    // SQLite cannot alter a CHECK, so the table is rebuilt with its rows and
    // its AUTOINCREMENT high-water mark (a seq is never reused).
    Sql(r#"
    CREATE TABLE changes_v2 (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        at       INTEGER NOT NULL,
        entity   TEXT NOT NULL CHECK (entity IN ('user', 'verification', 'challenge', 'session', 'otp', 'mail')),
        key      TEXT NOT NULL,
        op       TEXT NOT NULL CHECK (op IN ('insert', 'modify', 'remove')),
        old_json TEXT,
        new_json TEXT
    );
    INSERT INTO changes_v2 (seq, at, entity, key, op, old_json, new_json)
        SELECT seq, at, entity, key, op, old_json, new_json FROM changes ORDER BY seq;
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'changes_v2', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes_v2');
    UPDATE sqlite_sequence
        SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0))
        WHERE name = 'changes_v2';
    DROP TABLE changes;
    ALTER TABLE changes_v2 RENAME TO changes;
    "#),
    // 3: codes count the attempts taken before each comparison.
    Sql(r#"
    ALTER TABLE challenges ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0);
    ALTER TABLE otps ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0);
    "#),
    // 4: a password change ends the user's other sessions.
    Sql(r#"
    ALTER TABLE users ADD COLUMN sessions_valid_after INTEGER;
    ALTER TABLE sessions ADD COLUMN valid_from INTEGER;
    "#),
    // 5: a password reset through a mailed link.
    Sql(r#"
    ALTER TABLE users ADD COLUMN password_reset_at INTEGER;
    "#),
    // 6: a change or reset ends the logins in progress (by count, not time).
    Sql(r#"
    ALTER TABLE users ADD COLUMN password_epoch INTEGER NOT NULL DEFAULT 0 CHECK (password_epoch >= 0);
    ALTER TABLE challenges ADD COLUMN password_epoch INTEGER NOT NULL DEFAULT 0 CHECK (password_epoch >= 0);
    "#),
    // 7: the time rule of the logins in progress before 6, as epochs: a
    // user whose password changed is at 1, and so are the challenges made
    // after that change (those made before it stay at 0: refused).
    Sql(r#"
    UPDATE users SET password_epoch = 1 WHERE sessions_valid_after IS NOT NULL AND password_epoch = 0;
    UPDATE challenges SET password_epoch = 1 WHERE password_epoch = 0 AND EXISTS (
        SELECT 1 FROM users u
        WHERE u.id = challenges.user_id AND u.password_epoch = 1 AND u.sessions_valid_after < challenges.created_at
    );
    "#),
    // 8: a change or reset ends the sessions by count too. Sessions made
    // before have none (NULL) and keep the time rule of `valid_from`.
    Sql(r#"
    ALTER TABLE sessions ADD COLUMN password_epoch INTEGER CHECK (password_epoch >= 0);
    "#),
    // 9: a sent mail's job keeps no body (it held the live link or code):
    // the queue forgets a message once it is handled, as SQS does. Parked
    // (`failed`) jobs keep theirs, to be read and sent again by hand.
    Sql(r#"
    UPDATE mail_jobs SET body = '' WHERE state = 'sent';
    "#),
    // 10: a registration refused because its email is taken holds its
    // username, without an account, as long as an unverified account made
    // then would (`UserStore::create_user`): else the username's fate would
    // tell whether the email has an account. Not in the change feed: like
    // DynamoDB's claim items, a hold is no record the audit trail follows.
    Sql(r#"
    CREATE TABLE username_holds (
        username TEXT PRIMARY KEY NOT NULL,
        held_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#),
    // 11: wrong standalone codes across an address's codes (its budget).
    Sql(r#"
    ALTER TABLE otps ADD COLUMN budget_failures INTEGER NOT NULL DEFAULT 0 CHECK (budget_failures >= 0);
    "#),
    // 12: resets through a mailed link, counted (a link carries the count).
    Sql(r#"
    ALTER TABLE users ADD COLUMN password_resets INTEGER NOT NULL DEFAULT 0 CHECK (password_resets >= 0);
    "#),
    // 13: the TTL sweep (`sweep.rs`) deletes records a day past their
    // expiry; the change rows of its removals say so (the audit trail's
    // `*_expired` events, as a DynamoDB TTL REMOVE makes them on AWS).
    Sql(r#"
    ALTER TABLE changes ADD COLUMN by_ttl INTEGER NOT NULL DEFAULT 0 CHECK (by_ttl IN (0, 1));
    "#),
    // 14: the sweep deletes accounts nobody verified 30 days after they
    // were made (`User::UNVERIFIED_RETENTION_SECS`); it finds them here,
    // not by reading every account.
    Sql(r#"
    CREATE INDEX users_unverified_by_age ON users (created_at) WHERE verified = 0;
    "#),
    // 15: a rotated session's current refresh secret, sealed under the one
    // it replaced (`Session::retry_seal`): a retry of that refresh gets it
    // back. Sessions rotated before have none (NULL) until their next one.
    Sql(r#"
    ALTER TABLE sessions ADD COLUMN retry_seal TEXT;
    "#),
    // 16: retries of a refresh answered within the grace, counted
    // (`Session::retries_answered`), so each one reaches the audit trail.
    Sql(r#"
    ALTER TABLE sessions ADD COLUMN retries_answered INTEGER NOT NULL DEFAULT 0;
    "#),
    // 17: changes of an account's address through a mailed link, counted
    // (a link carries the count).
    Sql(r#"
    ALTER TABLE users ADD COLUMN email_changes INTEGER NOT NULL DEFAULT 0 CHECK (email_changes >= 0);
    "#),
    // 18: addresses are kept with their domain in its ASCII form (IDNA,
    // `Email::parse`): a stored one with a domain in another script moves to
    // that form, unless an account holds it already (that one is left as it
    // is, still read, and signs in by username).
    Code(ascii_email_domains),
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::internal(format!(
            "database schema version {current} is newer than this build's {VERSION}; upgrade latchkey"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        apply(&tx, step, i)?;
        tx.commit()?;
    }
    Ok(())
}

/// Applies migration `i` in `tx`, with its version bump.
fn apply(tx: &rusqlite::Transaction<'_>, step: &Migration, i: usize) -> rusqlite::Result<()> {
    match step {
        Sql(sql) => tx.execute_batch(sql)?,
        Code(run) => run(tx)?,
    }
    tx.pragma_update(None, "user_version", i as i64 + 1)
}

/// Migration 18: each stored address whose domain is not ASCII, moved to
/// its ASCII form where IDNA maps it and no other account holds that form
/// (`UPDATE OR IGNORE` leaves it where the UNIQUE column would refuse it).
fn ascii_email_domains(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let stored: Vec<(String, String)> = tx
        .prepare("SELECT id, email FROM users WHERE email GLOB '*@*[^ -~]*'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = 0;
    for (id, email) in stored {
        if let Some(ascii) = crate::domain::Email::ascii_domain_form(&email) {
            moved += tx.execute("UPDATE OR IGNORE users SET email = ?2 WHERE id = ?1", [&id, &ascii])?;
        }
    }
    if moved > 0 {
        tracing::info!(moved, "addresses moved to their domain's ASCII form");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `conn` brought to schema version `n`, as a build of then left it.
    fn migrate_to(conn: &mut Connection, n: usize) {
        let tx = conn.transaction().unwrap();
        for (i, step) in MIGRATIONS.iter().take(n).enumerate() {
            apply(&tx, step, i).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        conn.pragma_update(None, "user_version", VERSION + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::Internal(_))));
    }

    /// A database written before migration 6: the user whose password
    /// changed at 100 gets epoch 1, and so does its challenge made after the
    /// change; the one made before stays at 0 (refused, as the time rule
    /// refused it), and an unchanged user's challenge stays at 0 with it.
    #[test]
    fn logins_in_progress_keep_their_verdict_across_migrations_6_and_7() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 5);
        let user = |id: &str, changed: Option<i64>| {
            conn.execute(
                "INSERT INTO users (id, username, email, password_hash, verified, created_at, failed_logins, \
                 otp_failures, meta, sessions_valid_after) VALUES (?1, ?1, ?1, 'h', 1, 0, 0, 0, '{}', ?2)",
                rusqlite::params![id, changed],
            )
            .unwrap();
        };
        user("changed", Some(100));
        user("unchanged", None);
        for (id, owner, at) in [("before", "changed", 100), ("after", "changed", 101), ("other", "unchanged", 50)] {
            conn.execute(
                "INSERT INTO challenges (id, user_id, code_hash, created_at, expires_at, last_sent_at, resends, \
                 failures, meta) VALUES (?1, ?2, 'c', ?3, ?3, ?3, 0, 0, '{}')",
                rusqlite::params![id, owner, at],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let epoch = |table: &str, id: &str| -> i64 {
            conn.query_row(&format!("SELECT password_epoch FROM {table} WHERE id = ?1"), [id], |r| r.get(0)).unwrap()
        };
        assert_eq!((epoch("users", "changed"), epoch("users", "unchanged")), (1, 0));
        assert_eq!(
            (epoch("challenges", "before"), epoch("challenges", "after"), epoch("challenges", "other")),
            (0, 1, 0)
        );
    }

    /// Migration 9 forgets the bodies (live links and codes) of the jobs
    /// sent before it, and keeps those still to send or parked.
    #[test]
    fn sent_jobs_lose_their_bodies_in_migration_9() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 8);
        for state in ["pending", "sent", "failed"] {
            conn.execute(
                "INSERT INTO mail_jobs (id, body, state, created_at) VALUES (?1, 'token=secret', ?1, 0)",
                [state],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let body = |id: &str| -> String {
            conn.query_row("SELECT body FROM mail_jobs WHERE id = ?1", [id], |r| r.get(0)).unwrap()
        };
        assert_eq!(
            (body("pending").as_str(), body("sent").as_str(), body("failed").as_str()),
            ("token=secret", "", "token=secret")
        );
    }

    /// Migration 13: the change rows written before it (none of them by a
    /// sweep) read as no TTL removal, and the column takes only 0 or 1.
    #[test]
    fn change_rows_from_before_migration_13_are_no_ttl_removals() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 12);
        conn.execute(
            "INSERT INTO changes (at, entity, key, op, old_json, new_json) VALUES (1, 'challenge', 'c', 'remove', '{}', NULL)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let by_ttl: bool = conn.query_row("SELECT by_ttl FROM changes WHERE key = 'c'", [], |r| r.get(0)).unwrap();
        assert!(!by_ttl);
        assert!(conn.execute("UPDATE changes SET by_ttl = 2 WHERE key = 'c'", []).is_err());
    }
    /// Migration 18: a domain in another script moves to its ASCII form,
    /// the local part as it is; an address whose ASCII form another account
    /// holds, or whose domain IDNA does not map, stays; ASCII ones stay.
    #[test]
    fn migration_18_moves_domains_to_their_ascii_form() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 17);
        let stored = [
            ("moves", "a@bücher.de"),
            ("keeps-its-local-part", "ünï@exämple.de"),
            ("ascii", "b@xn--bcher-kva.de"),
            ("taken", "b@bücher.de"),
            ("unmapped", "c@b\u{FFFD}cher.de"),
            ("untouched", "d@exa_mple.com"),
        ];
        for (id, email) in stored {
            conn.execute(
                "INSERT INTO users (id, username, email, password_hash, verified, created_at, failed_logins, \
                 otp_failures, meta) VALUES (?1, ?1, ?2, 'h', 1, 0, 0, 0, '{}')",
                [id, email],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let email = |id: &str| -> String {
            conn.query_row("SELECT email FROM users WHERE id = ?1", [id], |r| r.get(0)).unwrap()
        };
        let now: Vec<String> = stored.iter().map(|(id, _)| email(id)).collect();
        assert_eq!(
            now,
            [
                "a@xn--bcher-kva.de",
                "ünï@xn--exmple-cua.de",
                "b@xn--bcher-kva.de",
                "b@bücher.de",
                "c@b\u{FFFD}cher.de",
                "d@exa_mple.com"
            ]
        );
    }
}
