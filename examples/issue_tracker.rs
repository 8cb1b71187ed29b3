//! An issue tracker on Herald: events recorded with the changes they describe, read
//! back as an audit trail and an activity feed.
//!
//! Run it with `cargo run --example issue_tracker` (embedded SQLite, no setup).

use std::time::Duration;

use herald::prelude::*;
use serde_json::json;

herald::declare_actions!(
    subject = "issue",
    actions = ["created", "assigned", "commented", "status_changed", "closed", "reopened", "viewed"]
);

const HELP: &str = "\
issue_tracker: Herald's main example.

Creates issues in an embedded SQLite database, records what happens to them
(created, assigned, commented, viewed, closed) in the same transactions as the
changes, then prints each issue's audit trail and a user's activity feed.

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
        sqlx::query("CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT NOT NULL, assignee TEXT)")
            .execute(conn)
            .await?;
    }
    tx.commit().await?;

    let (alice, bob) = (Actor::new("user", "alice"), Actor::new("user", "bob"));
    create_issue(&store, 1, "Login page is slow", &alice).await?;
    create_issue(&store, 2, "Typo in footer", &bob).await?;

    let issue = Subject::new("issue", 1);
    let mut tx = store.begin().await?;
    if let Some(conn) = tx.sqlite() {
        sqlx::query("UPDATE issues SET assignee = 'bob' WHERE id = 1").execute(conn).await?;
    }
    tx.record(&issue, "assigned", &alice).metadata(json!({ "assignee": "bob" })).await?;
    tx.record(&issue, "commented", &bob).metadata(json!({ "body": "Looking into it" })).await?;
    tx.commit().await?;

    // A burst of page views records one `viewed` event: the rest are throttled.
    let mut recorded = 0;
    for _ in 0..5 {
        let mut tx = store.begin().await?;
        recorded += tx.record(&issue, "viewed", &alice).throttle(Duration::from_secs(300)).await?.is_some() as usize;
        tx.commit().await?;
    }

    let mut tx = store.begin().await?;
    tx.record(Subject::new("issue", 2), "closed", &bob).metadata(json!({ "reason": "fixed" })).await?;
    tx.commit().await?;

    println!("== audit trail of issue 1 (newest first)");
    for e in store.feed().subject(&issue).limit(20).fetch().await?.events {
        println!("  #{:<3} {:<10} by {:<11} {}", e.id, e.action, e.actor.to_string(), json!(e.metadata));
    }
    println!("  ({recorded} of 5 views recorded: the throttle kept the rest out)");

    println!("== activity feed of bob");
    let mut page = store.feed().actor(&bob).limit(2).fetch().await?;
    loop {
        for e in &page.events {
            println!("  {} {:<10} {}", e.created_at.format("%H:%M:%S%.3f"), e.action, e.subject);
        }
        match page.next {
            Some(cursor) => page = store.feed().actor(&bob).limit(2).before(cursor).fetch().await?,
            None => break,
        }
    }
    Ok(())
}

async fn create_issue(store: &Store, id: i64, title: &str, by: &Actor) -> herald::Result<()> {
    let mut tx = store.begin().await?;
    if let Some(conn) = tx.sqlite() {
        sqlx::query("INSERT INTO issues (id, title) VALUES (?, ?)").bind(id).bind(title).execute(conn).await?;
    }
    tx.record(Subject::new("issue", id), "created", by).metadata(json!({ "title": title })).await?;
    tx.commit().await
}
