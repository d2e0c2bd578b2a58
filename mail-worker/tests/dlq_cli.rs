//! The operator's `dlq` command refuses what it does not know before it
//! sets up AWS at all: the usage on stderr, exit status 2, nothing else.

use std::process::Command;

fn dlq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey-mail-worker"))
        .arg("dlq")
        .args(args)
        // Nowhere to go: a command that reached AWS would fail differently.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("LATCHKEY_TABLE_PREFIX")
        .env_remove("LATCHKEY_MAIL_QUEUE_URL")
        .env_remove("LATCHKEY_MAIL_DLQ_URL")
        .output()
        .expect("the mail worker binary runs")
}

#[test]
fn a_bad_dlq_command_gets_its_usage_and_status_2() {
    for (args, says) in [
        (&["lsit"][..], "unknown command \"lsit\""),
        (&["redrive", "--max", "0"][..], "--max needs a whole number of 1 or more"),
        (&["redrive", "--dry-run"][..], "unknown argument \"--dry-run\""),
        (&[][..], "usage:"),
    ] {
        let out = dlq(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(says) || stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: latchkey-mail-worker dlq list | dlq redrive [--max N]"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "only the usage: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// A good command goes on to find its queues (and here fails there, with
/// neither queue URL nor a prefix set): the parse let it through.
#[test]
fn a_good_dlq_command_goes_on_to_its_queues() {
    let out = dlq(&["redrive", "--max", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("LATCHKEY_TABLE_PREFIX"), "{stderr}");
}
