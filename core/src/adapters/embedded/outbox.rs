//! The local "mail transport": each mail becomes an RFC 5322 `.eml` file in
//! a directory, and one console line shows where it went and its link or
//! code. This is local development mode, where showing the code is the point;
//! on AWS mail goes through SES and no code is ever printed or logged.

use crate::domain::Email;
use crate::mail::delivery::{Mailer, SendError};
use crate::mail::{MailEnvelope, RenderedMail, Renderer};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes mails as files under `dir`.
pub struct Outbox {
    dir: PathBuf,
    renderer: Renderer,
    from: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).field("from", &self.from).finish_non_exhaustive()
    }
}

/// Removes from the outbox `dir` the mails whose job was made before
/// `cutoff` (the `<created_at>` of `<created_at>-<id>.eml`, on the store's
/// clock); other files stay. The runner passes the ledger's memory
/// (`LEDGER_TTL_SECS`, 7 days): by then every code and link in them is long
/// dead and a second delivery of the job would be written again anyway.
/// Without it the outbox grew for as long as the runner ran, a file for
/// every mail anyone had sent (a standalone code to any address). Returns
/// how many went; no outbox yet is none.
pub fn prune_outbox(dir: &Path, cutoff: crate::clock::Timestamp) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let mut removed = 0;
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let made = name
            .strip_suffix(".eml")
            .and_then(|stem| stem.split_once('-'))
            .and_then(|(at, _)| at.parse::<crate::clock::Timestamp>().ok());
        if made.is_some_and(|at| at < cutoff) {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => removed += 1,
                // Gone meanwhile (another pruner, a person).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Why a delivery failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliveryError {
    /// The job itself is bad (address, id, template): park it.
    Permanent(String),
    /// The file system said no: retry later.
    Transient(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Permanent(s) | DeliveryError::Transient(s) => f.write_str(s),
        }
    }
}

impl Outbox {
    /// `from` is a mailbox, `Name <address>` or a bare address.
    pub fn new(dir: PathBuf, renderer: Renderer, from: String) -> Self {
        Outbox { dir, renderer, from }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the temp files of writes a crash cut short (`.<uuid>.tmp`:
    /// each holds a mail with a live link or code that no rename will ever
    /// publish; its job is delivered again from the queue). Run at start,
    /// with the data directory locked, before the consumer writes; returns
    /// how many went. No outbox yet is none.
    pub fn clear_cut_short_writes(&self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            other => other?,
        };
        let mut removed = 0;
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(self.dir.join(&*name))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Renders the job and writes `<dir>/<created_at>-<id>.eml` atomically
    /// (a temp file renamed into place, so a reader never sees half a mail;
    /// delivering the same job again replaces the file rather than adding
    /// one). Then prints one line to stdout.
    pub async fn deliver(&self, env: &MailEnvelope) -> Result<PathBuf, String> {
        self.try_deliver(env).await.map_err(|e| e.to_string())
    }

    pub(crate) async fn try_deliver(&self, env: &MailEnvelope) -> Result<PathBuf, DeliveryError> {
        let mail = self.renderer.render(env).map_err(DeliveryError::Permanent)?;
        self.write(env, &mail).await
    }

    /// Writes an already rendered mail: the `Mailer` half of `deliver`.
    async fn write(&self, env: &MailEnvelope, mail: &RenderedMail) -> Result<PathBuf, DeliveryError> {
        use DeliveryError::{Permanent, Transient};
        if env.id.is_empty()
            || env.id.len() > 128
            || !env.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Permanent("job id is not a safe file name".into()));
        }
        // The queue is a trust boundary of its own: re-check the address so
        // nothing odd reaches a header (by the rules every stored address
        // was held to: an account stored before a later input rule still
        // gets its mail, as on SES).
        let to =
            Email::parse_stored(&env.to).map_err(|_| Permanent("recipient is not a valid email address".into()))?;
        let bytes = self.message(env, &to, mail).map_err(|e| Permanent(format!("building the message: {e}")))?;
        let name = format!("{}-{}.eml", env.created_at, env.id);
        let path = self.dir.join(&name);
        let (dir, target) = (self.dir.clone(), path.clone());
        super::blocking(move || write_atomically(&dir, &target, &bytes))
            .await
            .map_err(|e| Transient(format!("writer task: {e}")))?
            .map_err(|e| Transient(format!("writing {name}: {e}")))?;
        // Not `println!`, which panics when stdout fails (a pipe whose
        // reader went away): the mail is written, and the line is a courtesy.
        {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "mail to {}: {} — {}", mail.to, mail.subject, mail.hint);
        }
        Ok(path)
    }

    fn message(&self, env: &MailEnvelope, to: &Email, mail: &RenderedMail) -> std::io::Result<Vec<u8>> {
        let (name, addr) = split_mailbox(&self.from);
        let domain = addr.rsplit_once('@').map_or("latchkey.local", |(_, d)| d);
        MessageBuilder::new()
            .from(Address::new_address(name, addr))
            .to(to.as_str())
            .subject(mail.subject.as_str())
            .date(Date::new(env.created_at))
            .message_id(format!("{}@{domain}", env.id))
            .header("X-Latchkey-Kind", mail_builder::headers::raw::Raw::new(env.job.kind()))
            .text_body(mail.text.as_str())
            .html_body(mail.html.as_str())
            .write_to_vec()
    }
}

/// The outbox as the embedded backend's `Mailer`: the same delivery logic
/// (ledger, retries, parking) as SES on AWS, with files instead of mail.
#[async_trait::async_trait]
impl Mailer for Outbox {
    async fn send(&self, env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError> {
        match self.write(env, mail).await {
            Ok(path) => Ok(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            Err(DeliveryError::Permanent(reason)) => Err(SendError::Permanent { reason }),
            Err(DeliveryError::Transient(reason)) => Err(SendError::Transient(reason)),
        }
    }
}

/// `Name <addr>` -> (Some(Name), addr); `addr` -> (None, addr).
fn split_mailbox(s: &str) -> (Option<&str>, &str) {
    let s = s.trim();
    match (s.rfind('<'), s.strip_suffix('>')) {
        (Some(i), Some(inner)) => {
            let name = s[..i].trim().trim_matches('"');
            ((!name.is_empty()).then_some(name), inner[i + 1..].trim())
        }
        _ => (None, s),
    }
}

fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    // Mails carry live links and codes: readable by their owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    // Each step names itself in the error, which the ledger records.
    let at = |step: &'static str| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{step}: {e}"));
    let mut f = match opts.open(&tmp) {
        // The first mail creates the outbox (one level: a data directory
        // removed under a running consumer is not brought back).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match super::private_dir_builder().create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(at("creating the outbox directory")(e));
            }
            _ => opts.open(&tmp).map_err(at("creating the temp file"))?,
        },
        other => other.map_err(at("creating the temp file"))?,
    };
    let result = (|| {
        f.write_all(bytes).map_err(at("writing the temp file"))?;
        f.sync_all().map_err(at("syncing the temp file"))?;
        std::fs::rename(&tmp, target).map_err(at("publishing it (rename)"))?;
        // The rename is durable once the directory is: the ledger marks the
        // job sent right after this, and a mail that power loss took back
        // would then be lost. Should this sync fail, the mail is there but
        // not known to be durable: the job is retried, and its retry
        // writes the same file again (one file per job id).
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at("syncing the outbox directory (the mail is written, not yet durable)"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::test_support::TempDir;
    use super::*;

    #[test]
    fn mails_older_than_the_cutoff_are_pruned_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("latchkey-prune-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let names =
            ["100-a.eml", "149-b.eml", "150-c.eml", "200-d.eml", ".9-e.tmp", "abc-f.eml", "100-g.txt", "100.eml"];
        for name in names {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        assert_eq!(prune_outbox(&dir, 150).unwrap(), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".9-e.tmp", "100-g.txt", "100.eml", "150-c.eml", "200-d.eml", "abc-f.eml"]);
        assert_eq!(prune_outbox(&dir.join("none"), 150).unwrap(), 0, "no outbox yet");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::domain::Secret;
    use crate::mail::MailJob;

    fn outbox(dir: &Path) -> Outbox {
        Outbox::new(
            dir.to_path_buf(),
            Renderer::new("https://auth.example.com").unwrap(),
            "latchkey <noreply@example.com>".into(),
        )
    }

    #[test]
    fn a_start_removes_the_temp_files_of_cut_short_writes_and_nothing_else() {
        let dir = TempDir::new();
        let outbox = outbox(&dir.0.join("outbox"));
        assert_eq!(outbox.clear_cut_short_writes().unwrap(), 0, "no outbox yet");
        std::fs::create_dir(outbox.dir()).unwrap();
        for name in [".0123abcd.tmp", ".ffff.tmp", "1700000000-abc.eml", "notes.tmp", ".hidden"] {
            std::fs::write(outbox.dir().join(name), "x").unwrap();
        }
        assert_eq!(outbox.clear_cut_short_writes().unwrap(), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(outbox.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, [".hidden", "1700000000-abc.eml", "notes.tmp"]);
    }

    #[test]
    fn splits_mailboxes() {
        assert_eq!(split_mailbox("latchkey <a@b.co>"), (Some("latchkey"), "a@b.co"));
        assert_eq!(split_mailbox("\"L K\" <a@b.co>"), (Some("L K"), "a@b.co"));
        assert_eq!(split_mailbox("<a@b.co>"), (None, "a@b.co"));
        assert_eq!(split_mailbox("a@b.co"), (None, "a@b.co"));
    }

    #[tokio::test]
    async fn writes_an_rfc5322_multipart_mail() {
        let dir = TempDir::new();
        let env = MailEnvelope::new(
            "abc123".into(),
            &Email::parse("bob@example.com").unwrap(),
            1_700_000_000,
            None,
            None,
            MailJob::LoginCode { username: "bob".into(), code: Secret::new("314159".into()), expires_minutes: 5 },
        );
        let path = outbox(&dir.0).deliver(&env).await.unwrap();
        assert_eq!(path, dir.0.join("1700000000-abc123.eml"));
        let eml = std::fs::read_to_string(&path).unwrap();
        for needle in [
            "From: \"latchkey\" <noreply@example.com>",
            "To: <bob@example.com>",
            "Subject: Your latchkey sign-in code",
            "Date: Tue, 14 Nov 2023 22:13:20 +0000",
            "Message-ID: <abc123@example.com>",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "314159",
        ] {
            assert!(eml.contains(needle), "{needle:?} missing from\n{eml}");
        }
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn refuses_unsafe_ids_and_addresses_permanently() {
        let dir = TempDir::new();
        let o = outbox(&dir.0);
        let mut env = MailEnvelope::new(
            "../escape".into(),
            &Email::parse("bob@example.com").unwrap(),
            0,
            None,
            None,
            MailJob::SignupAttempt {},
        );
        assert!(matches!(o.try_deliver(&env).await, Err(DeliveryError::Permanent(_))));
        env.id = "ok".into();
        env.to = "bob@example.com\r\nBcc: eve@example.com".into();
        assert!(matches!(o.try_deliver(&env).await, Err(DeliveryError::Permanent(_))));
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_transient() {
        let dir = TempDir::new();
        let file = dir.0.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let env = MailEnvelope::new(
            "j".into(),
            &Email::parse("bob@example.com").unwrap(),
            0,
            None,
            None,
            MailJob::SignupAttempt {},
        );
        let err = outbox(&file).try_deliver(&env).await;
        assert!(
            matches!(&err, Err(DeliveryError::Transient(why)) if why.starts_with("writing 0-j.eml: creating the temp file: ")),
            "{err:?}"
        );
    }
}
