//! Runs `examples/issue_tracker` (the README's first command) and checks what it
//! printed: the audit trail, the feed and every inbox at work, on both backends.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn example_binary() -> PathBuf {
    common::example_binary("issue_tracker")
}

fn run(database_url: Option<&str>) -> String {
    let mut cmd = Command::new(example_binary());
    match database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let out = cmd.output().expect("run issue_tracker");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "issue_tracker failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn lines_with<'a>(out: &'a str, parts: &[&str]) -> Vec<&'a str> {
    out.lines().filter(|l| parts.iter().all(|p| l.contains(p))).collect()
}

fn check(out: &str) {
    assert!(out.contains("inboxes: auto_assign, chat_webhook, email_notifications, external_sync"), "{out}");
    // Audit trails, with from/to, and the automation's follow-up caused by `created`.
    assert!(out.contains("== audit trail of issue:1 \"Login page is slow\" (now resolved)"), "{out}");
    assert!(out.contains("== audit trail of issue:2 \"Typo in footer\" (now closed)"), "{out}");
    assert_eq!(lines_with(out, &["status_changed", "by user:bob", "open -> in_progress"]).len(), 1, "{out}");
    assert_eq!(lines_with(out, &["status_changed", "by user:bob", "in_progress -> resolved"]).len(), 1, "{out}");
    assert_eq!(lines_with(out, &["assigned", "by system", "(caused by #1)"]).len(), 1, "{out}");
    assert!(out.contains("refused: invalid transition: `resolve` cannot fire from `closed`"), "{out}");
    assert!(out.contains("(1 of 5 views of issue:1 recorded"), "{out}");
    // Bob's feed, paged two by two, newest first.
    let feed: Vec<_> = out
        .split("== activity feed of user:bob")
        .nth(1)
        .expect("feed")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(feed.len(), 4, "{out}");
    assert!(feed[0].contains("status_changed") && feed[3].contains("created"), "{feed:?}");
    // Inboxes: emails to subscribers but never the actor, the webhook retried after a 500,
    // a sync only for the linked issue, nothing dead.
    assert!(out.contains("email_notifications: 12 emails written"), "{out}");
    assert!(lines_with(out, &["to bob", "] bob "]).is_empty(), "bob is not emailed about his own actions:\n{out}");
    assert_eq!(lines_with(out, &["to carol", "[issue 1] bob status open -> in_progress"]).len(), 1, "{out}");
    assert!(out.contains("chat_webhook: 5 webhooks received (1 refused with 500 and retried)"), "{out}");
    assert!(out.contains("external_sync: 3 syncs"), "{out}");
    assert_eq!(lines_with(out, &["JIRA-42"]).len(), 3, "{out}");
    assert!(out.contains("dead letters: none"), "{out}");
}

#[test]
fn issue_tracker_on_sqlite() {
    check(&run(None));
}

#[tokio::test]
async fn issue_tracker_on_postgres() {
    // Skips outside CI when PostgreSQL is unreachable, like every PostgreSQL test.
    let Some(_db) = common::TestDb::postgres().await else { return };
    let url = common::database_url();
    check(&tokio::task::spawn_blocking(move || run(Some(&url))).await.expect("join"));
}

#[test]
fn help_says_what_it_does() {
    let out = Command::new(example_binary()).arg("--help").output().expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("usage: cargo run --example issue_tracker"), "{text}");
}
