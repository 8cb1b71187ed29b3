//! An issue tracker on Herald: a derived status machine and declared actions, events
//! recorded in the same transactions as the changes they describe, read back as an
//! audit trail and an activity feed.
//!
//! Run it with `cargo run --example issue_tracker` (embedded SQLite, no setup).

use std::time::Duration;

use herald::prelude::*;
use serde_json::json;

/// The status of an issue, kept in `issues.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue", table = "issues", column = "status")]
#[transition(start:   Open -> InProgress)]
#[transition(resolve: InProgress -> Resolved)]
#[transition(close:   Open | InProgress | Resolved -> Closed)]
#[transition(reopen:  Closed -> Open)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Resolved,
    Closed,
}

/// What can happen to an issue besides a status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Created,
    Assigned,
    Commented,
    Viewed,
}

const HELP: &str = "\
issue_tracker: Herald's main example.

Creates issues in an embedded SQLite database and records what happens to them
(created, assigned, commented, viewed, status changes through a derived state
machine) in the same transactions as the changes. Then prints each issue's audit
trail, with every status change's from/to, and a user's activity feed.

usage: cargo run --example issue_tracker [-- --help]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    let store = Store::connect("sqlite::memory:").await?;
    store.migrate().await?;

    let mut tx = store.begin().await?;
    if let Some(conn) = tx.sqlite() {
        sqlx::query("CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL)")
            .execute(conn)
            .await?;
    }
    tx.commit().await?;

    let (alice, bob) = (Actor::new("user", "alice"), Actor::new("user", "bob"));
    let login = create_issue(&store, 1, "Login page is slow", &alice).await?;
    let typo = create_issue(&store, 2, "Typo in footer", &bob).await?;

    let mut tx = store.begin().await?;
    tx.record(&login, IssueAction::Assigned, &alice).metadata(json!({ "assignee": "bob" })).await?;
    IssueStatus::fire(&mut tx, &login, IssueStatus::start, &bob).await?;
    tx.record(&login, IssueAction::Commented, &bob).metadata(json!({ "body": "Found the slow query" })).await?;
    IssueStatus::fire(&mut tx, &login, IssueStatus::resolve, &bob).metadata(json!({ "commit": "4f2a9c1" })).await?;
    tx.commit().await?;

    // A burst of page views records one `viewed` event: the rest are throttled.
    let mut views = 0;
    for _ in 0..5 {
        let mut tx = store.begin().await?;
        let viewed = tx.record(&login, IssueAction::Viewed, &alice).throttle(Duration::from_secs(300)).await?;
        views += usize::from(viewed.is_some());
        tx.commit().await?;
    }

    let mut tx = store.begin().await?;
    IssueStatus::fire(&mut tx, &typo, IssueStatus::close, &bob).metadata(json!({ "reason": "fixed" })).await?;
    // Refused transitions are typed errors and write nothing.
    if let Err(e) = IssueStatus::fire(&mut tx, &typo, IssueStatus::resolve, &bob).await {
        println!("refused: {e}");
    }
    tx.commit().await?;

    for issue in [&login, &typo] {
        let state = store.state::<IssueStatus>(issue).await?;
        println!("\n== audit trail of {issue} (now {state}), newest first");
        for e in store.feed().subject(issue).limit(20).fetch().await?.events {
            let detail = match (e.meta("from"), e.meta("to")) {
                (Some(from), Some(to)) => format!("{} -> {}", from.as_str().unwrap_or("?"), to.as_str().unwrap_or("?")),
                _ => json!(e.metadata).to_string(),
            };
            println!("  #{:<3} {:<15} by {:<11} {detail}", e.id, e.action, e.actor.to_string());
        }
    }
    println!("  ({views} of 5 views of issue:1 recorded: the throttle kept the rest out)");

    println!("\n== activity feed of {bob}, two per page");
    let mut page = store.feed().actor(&bob).limit(2).fetch().await?;
    loop {
        for e in &page.events {
            println!("  {} {:<15} {}", e.created_at.format("%H:%M:%S%.3f"), e.action, e.subject);
        }
        match page.next {
            Some(cursor) => page = store.feed().actor(&bob).limit(2).before(cursor).fetch().await?,
            None => break,
        }
    }
    Ok(())
}

async fn create_issue(store: &Store, id: i64, title: &str, by: &Actor) -> herald::Result<Subject> {
    let subject = Subject::new("issue", id);
    let mut tx = store.begin().await?;
    if let Some(conn) = tx.sqlite() {
        sqlx::query("INSERT INTO issues (id, title, status) VALUES (?, ?, ?)")
            .bind(id)
            .bind(title)
            .bind(IssueStatus::initial())
            .execute(conn)
            .await?;
    }
    tx.record(&subject, IssueAction::Created, by).metadata(json!({ "title": title })).await?;
    tx.commit().await?;
    Ok(subject)
}
