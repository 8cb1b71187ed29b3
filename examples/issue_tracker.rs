//! An issue tracker on Herald, end to end: a derived status machine, declared
//! actions, events recorded in the same transactions as the changes they describe,
//! and inboxes doing real side effects after commit — emails, a webhook that is
//! retried, an external sync, an automation that records a follow-up event.
//!
//! `cargo run --example issue_tracker` runs it on embedded SQLite with no setup;
//! with `DATABASE_URL=postgres://…` it runs on PostgreSQL, in a schema of its own.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use herald::prelude::*;
use herald::sqlx;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const HELP: &str = "\
issue_tracker: Herald's main example.

Creates issues, users and subscribers in an embedded SQLite database (or in a fresh
schema of the PostgreSQL database in DATABASE_URL) and records what happens to them
in the same transactions as the changes: created, assigned, commented, viewed
(throttled), and status changes through a derived state machine. A dispatcher
delivers each committed event to the inboxes: email notifications to subscribers,
a webhook to a local slack-like receiver (which fails once, so it is retried),
a sync for issues linked to an external tracker, and an auto-assign rule.

It prints each issue's audit trail, a user's activity feed, what every inbox did,
and any dead letters.

usage: cargo run --example issue_tracker [-- --help]";

// ---- the domain ------------------------------------------------------------------

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

/// What can happen to an issue (`status_changed` comes with the state machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Created,
    Assigned,
    Commented,
    Closed,
    Reopened,
    Viewed,
}

const SCHEMA: [&str; 4] = [
    "CREATE TABLE issues (id BIGINT PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL, \
     assignee TEXT, external_id TEXT)",
    "CREATE TABLE subscribers (issue_id BIGINT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (issue_id, user_id))",
    "CREATE TABLE emails (seq BIGINT NOT NULL, to_user TEXT NOT NULL, subject TEXT NOT NULL)",
    "CREATE TABLE syncs (seq BIGINT NOT NULL, external_id TEXT NOT NULL, what TEXT NOT NULL)",
];

static SEQ: AtomicI64 = AtomicI64::new(0);

fn user(name: &str) -> Actor {
    Actor::new("user", name)
}

// ---- side-effect resources -----------------------------------------------------------

/// Sends mail by writing it to the `emails` table (a stand-in for SMTP).
struct Mailer;

impl Mailer {
    async fn send(&self, cx: &Context, to: &str, subject: &str) -> Result<(), InboxError> {
        let mut tx = cx.store().begin().await?;
        tx.query("INSERT INTO emails (seq, to_user, subject) VALUES ($1, $2, $3)")
            .bind(SEQ.fetch_add(1, Ordering::SeqCst))
            .bind(to)
            .bind(subject)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Where the webhook inbox POSTs to.
struct WebhookUrl(std::net::SocketAddr);

/// What the local slack-like receiver saw.
#[derive(Default)]
struct Receiver {
    bodies: Mutex<Vec<serde_json::Value>>,
    refused: AtomicUsize,
}

// ---- inboxes ---------------------------------------------------------------------------

/// Emails every subscriber but the actor about assignments, comments and status changes.
#[inbox(subject = "issue", actions = ["assigned", "commented", "status_changed"])]
async fn email_notifications(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let mailer = cx.resource::<Mailer>()?;
    let issue: i64 = event.subject.id.parse().map_err(|_| InboxError::give_up("issue ids are integers"))?;
    let mut tx = cx.store().begin().await?;
    let subscribers: Vec<(String,)> = tx
        .query("SELECT user_id FROM subscribers WHERE issue_id = $1 ORDER BY user_id")
        .bind(issue)
        .fetch_all()
        .await?;
    tx.commit().await?;
    let what = match event.action.as_str() {
        "status_changed" => format!(
            "status {} -> {}",
            event.meta("from").and_then(|v| v.as_str()).unwrap_or("?"),
            event.meta("to").and_then(|v| v.as_str()).unwrap_or("?")
        ),
        "assigned" => format!("assigned to {}", event.meta("assignee").and_then(|v| v.as_str()).unwrap_or("?")),
        other => other.to_owned(),
    };
    for (to,) in subscribers.into_iter().filter(|(u,)| *u != event.actor.id) {
        mailer.send(cx, &to, &format!("[issue {issue}] {} {what}", event.actor.id)).await?;
    }
    Ok(())
}

/// POSTs the event as JSON to the team's chat webhook; a non-2xx answer is retried.
#[inbox(subject = "issue", actions = ["created", "status_changed"], max_attempts = 5, backoff = "50ms")]
async fn chat_webhook(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let url = cx.resource::<WebhookUrl>()?;
    let status = post_json(url.0, &serde_json::to_string(event)?).await?;
    if (200..300).contains(&status) { Ok(()) } else { Err(InboxError::retry(format!("webhook answered {status}"))) }
}

/// Mirrors issues linked to an external tracker (those with an `external_id`). The
/// mirror must see one issue's changes in the order they happened: keyed by subject
/// (the default, spelled out), one issue's events arrive one at a time, in commit
/// order, and a failing one holds back that issue's later changes, not other issues'.
#[inbox(subject = "issue", actions = ["created", "status_changed"], key = "subject")]
async fn external_sync(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let issue: i64 = event.subject.id.parse().map_err(|_| InboxError::give_up("issue ids are integers"))?;
    let mut tx = cx.store().begin().await?;
    let linked: Vec<(String,)> = tx
        .query("SELECT external_id FROM issues WHERE id = $1 AND external_id IS NOT NULL")
        .bind(issue)
        .fetch_all()
        .await?;
    if let Some((external_id,)) = linked.first() {
        let what = format!("{} {}", event.action, event.meta("to").and_then(|v| v.as_str()).unwrap_or(""));
        tx.query("INSERT INTO syncs (seq, external_id, what) VALUES ($1, $2, $3)")
            .bind(SEQ.fetch_add(1, Ordering::SeqCst))
            .bind(external_id)
            .bind(what.trim())
            .execute()
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Automation: a new issue is assigned to a team member (by issue number); the
/// `assigned` event it records is caused by the `created` event.
#[inbox(subject = "issue", actions = ["created"])]
async fn auto_assign(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let issue: i64 = event.subject.id.parse().map_err(|_| InboxError::give_up("issue ids are integers"))?;
    let mut tx = cx.begin().await?; // events recorded here carry the trigger as their cause
    let assignee = if issue % 2 == 1 { "bob" } else { "carol" };
    tx.query("UPDATE issues SET assignee = $1 WHERE id = $2").bind(assignee).bind(issue).execute().await?;
    tx.query("INSERT INTO subscribers (issue_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(issue)
        .bind(assignee)
        .execute()
        .await?;
    tx.record(&event.subject, IssueAction::Assigned, Actor::system()).metadata(json!({ "assignee": assignee })).await?;
    tx.commit().await?;
    Ok(())
}

// ---- the scenario ----------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    let (store, schema) = open_store().await?;
    let result = scenario(&store).await;
    if let (Some(schema), Some(pool)) = (schema, store.postgres_pool()) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(pool).await?;
    }
    result
}

/// SQLite in memory, or a fresh schema of `DATABASE_URL` (dropped at the end).
async fn open_store() -> Result<(Store, Option<String>), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        let store = Store::connect("sqlite::memory:").await?;
        store.migrate().await?;
        return Ok((store, None));
    };
    let schema = format!("herald_example_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await?;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)?.options([("search_path", schema.as_str())]);
    let store = Store::from_postgres(sqlx::PgPool::connect_with(opts).await?);
    store.migrate().await?;
    Ok((store, Some(schema)))
}

async fn scenario(store: &Store) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = store.begin().await?;
    for statement in SCHEMA {
        tx.query(statement).execute().await?;
    }
    tx.commit().await?;

    // The slack-like receiver, and the dispatcher running in the background.
    let receiver = Arc::new(Receiver::default());
    let addr = serve_webhooks(receiver.clone()).await?;
    let dispatcher = Dispatcher::builder(store.clone())
        .resource(Mailer)
        .resource(WebhookUrl(addr))
        .poll_interval(Duration::from_millis(200))
        .build()?;
    dispatcher.register().await?; // inboxes start from now: from here
    println!(
        "inboxes: {}",
        dispatcher
            .registry()
            .iter()
            .map(|d| d.name.trim_start_matches("issue_tracker::"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(dispatcher.clone().run(async move {
        let _ = stopped.await;
    }));

    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let login = create_issue(store, 1, "Login page is slow", Some("JIRA-42"), &alice, &["carol"]).await?;
    let typo = create_issue(store, 2, "Typo in footer", None, &bob, &[]).await?;
    settle(&dispatcher).await?; // let auto-assign run

    let mut tx = store.begin().await?;
    IssueStatus::fire(&mut tx, &login, IssueStatus::start, &bob).await?;
    tx.record(&login, IssueAction::Commented, &bob).metadata(json!({ "body": "Found the slow query" })).await?;
    tx.commit().await?;

    // A burst of page views records one `viewed` event: the rest are throttled.
    let mut views = 0;
    for _ in 0..5 {
        let mut tx = store.begin().await?;
        views += usize::from(
            tx.record(&login, IssueAction::Viewed, &alice).throttle(Duration::from_secs(300)).await?.is_some(),
        );
        tx.commit().await?;
    }

    let mut tx = store.begin().await?;
    IssueStatus::fire(&mut tx, &login, IssueStatus::resolve, &bob).metadata(json!({ "commit": "4f2a9c1" })).await?;
    IssueStatus::fire(&mut tx, &typo, IssueStatus::close, &carol).metadata(json!({ "reason": "fixed" })).await?;
    tx.commit().await?;
    // Refused transitions are typed errors and write nothing.
    let mut tx = store.begin().await?;
    if let Err(e) = IssueStatus::fire(&mut tx, &typo, IssueStatus::resolve, &bob).await {
        println!("refused: {e}");
    }
    drop(tx);

    settle(&dispatcher).await?;
    let _ = stop.send(());
    running.await??;

    // ---- what happened ----
    for (issue, title) in [(&login, "Login page is slow"), (&typo, "Typo in footer")] {
        let state = store.state::<IssueStatus>(issue).await?;
        println!("\n== audit trail of {issue} \"{title}\" (now {state}), oldest first");
        for e in store.feed().subject(issue).oldest_first().all().await? {
            let detail = match (e.meta("from"), e.meta("to")) {
                (Some(from), Some(to)) => format!("{} -> {}", from.as_str().unwrap_or("?"), to.as_str().unwrap_or("?")),
                _ => serde_json::Value::Object(e.metadata.clone()).to_string(),
            };
            let cause = e.causation_id.map(|c| format!("  (caused by #{c})")).unwrap_or_default();
            println!("  #{:<3} {:<15} by {:<12} {detail}{cause}", e.id, e.action, e.actor.to_string());
        }
    }
    println!("  ({views} of 5 views of issue:1 recorded: the throttle kept the rest out)");

    println!("\n== activity feed of {bob}, two per page");
    let mut pages = store.feed().actor(&bob).limit(2).pages();
    while let Some(page) = pages.next().await {
        for e in page?.events {
            println!("  {} {:<15} {}", e.created_at.format("%H:%M:%S%.3f"), e.action, e.subject);
        }
    }

    let mut tx = store.begin().await?;
    let emails: Vec<(String, String)> =
        tx.query("SELECT to_user, subject FROM emails ORDER BY seq").fetch_all().await?;
    let syncs: Vec<(String, String)> = tx.query("SELECT external_id, what FROM syncs ORDER BY seq").fetch_all().await?;
    drop(tx);
    println!("\n== inboxes");
    println!("email_notifications: {} emails written", emails.len());
    for (to, subject) in &emails {
        println!("  to {to:<6} {subject}");
    }
    let bodies = receiver.bodies.lock().await;
    println!(
        "chat_webhook: {} webhooks received ({} refused with 500 and retried)",
        bodies.len(),
        receiver.refused.load(Ordering::SeqCst)
    );
    for body in bodies.iter() {
        println!(
            "  {} {} #{}",
            body["subject"]["id"].as_str().unwrap_or("?"),
            body["action"].as_str().unwrap_or("?"),
            body["id"]
        );
    }
    println!("external_sync: {} syncs", syncs.len());
    for (external_id, what) in &syncs {
        println!("  {external_id} {what}");
    }
    let dead = store.dead_letters(None).await?.letters;
    println!("dead letters: {}", if dead.is_empty() { "none".to_owned() } else { dead.len().to_string() });
    for d in dead {
        println!("  {} event #{} after {} attempts: {}", d.inbox, d.event_id, d.attempts, d.last_error);
    }
    Ok(())
}

async fn create_issue(
    store: &Store,
    id: i64,
    title: &str,
    external_id: Option<&str>,
    by: &Actor,
    watchers: &[&str],
) -> herald::Result<Subject> {
    let subject = Subject::new("issue", id);
    let mut tx = store.begin().await?;
    tx.query("INSERT INTO issues (id, title, status, external_id) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(title)
        .bind(IssueStatus::initial().name())
        .bind(external_id)
        .execute()
        .await?;
    for user in std::iter::once(by.id.as_str()).chain(watchers.iter().copied()) {
        tx.query("INSERT INTO subscribers (issue_id, user_id) VALUES ($1, $2)").bind(id).bind(user).execute().await?;
    }
    tx.record(&subject, IssueAction::Created, by).metadata(json!({ "title": title })).await?;
    tx.commit().await?;
    Ok(subject)
}

/// Waits until every inbox has caught up and no retry is pending.
async fn settle(dispatcher: &Dispatcher) -> herald::Result<()> {
    for _ in 0..200 {
        let status = dispatcher.status().await?;
        if status.iter().all(|s| s.pending.unwrap_or(0) == 0 && s.retrying == 0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

// ---- a tiny HTTP client and server, enough for a webhook -----------------------------

/// POSTs `body` as JSON and returns the response's status code.
async fn post_json(addr: std::net::SocketAddr, body: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /hooks/issues HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    status.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

/// A slack-like receiver on 127.0.0.1: the first request gets a 500, later ones 200.
async fn serve_webhooks(receiver: Arc<Receiver>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &receiver).await;
            });
        }
    });
    Ok(addr)
}

async fn answer(stream: TcpStream, receiver: &Receiver) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let first = receiver.refused.load(Ordering::SeqCst) == 0 && receiver.bodies.lock().await.is_empty();
    let status = if first {
        receiver.refused.fetch_add(1, Ordering::SeqCst);
        "500 Internal Server Error"
    } else {
        receiver.bodies.lock().await.push(serde_json::from_slice(&body).unwrap_or_default());
        "200 OK"
    };
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    reader.get_mut().write_all(response.as_bytes()).await
}
