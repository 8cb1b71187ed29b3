//! A dispatcher as a process of its own: `dispatch_worker <postgres-url> <schema> <worker-id> [lease-ms]`.
//!
//! It runs the inboxes below against the schema until its standard input closes, then
//! shuts down gracefully. The crash and competing-workers tests (`tests/processes.rs`)
//! start several of these, kill some with SIGKILL, and check what the survivors did;
//! it also shows the shape of a real worker binary: a store, a dispatcher, a shutdown
//! signal.

use std::str::FromStr;
use std::time::Duration;

use herald::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Notes that it started, takes its time, notes that it finished: a delivery to kill.
#[inbox(subject = "crash")]
async fn crash_slow(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx, "start", event).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    note(cx, "done", event).await?;
    Ok(())
}

/// Kills its own process on a poison event: a delivery that keeps killing its worker.
#[inbox(subject = "poison")]
async fn poison(event: &Event, cx: &Context) -> Result<(), InboxError> {
    if event.meta("poison").is_some() {
        note(cx, "fatal", event).await?;
        std::process::abort();
    }
    note(cx, "done", event).await?;
    Ok(())
}

/// Per-key order under kills: keyed by subject (the default), every run is logged with
/// its subject's sequence number; events marked `fail` fail their first attempt.
#[inbox(subject = "ordered", backoff = "10ms", backoff_max = "50ms", max_attempts = 50)]
async fn ordered_log(event: &Event, cx: &Context) -> Result<(), InboxError> {
    log_in_order(event, cx).await
}

/// The same, spread over every worker process: each claims deliveries, each key's
/// oldest only.
#[inbox(subject = "ordered_spread", spread = true, backoff = "10ms", backoff_max = "50ms", max_attempts = 50)]
async fn ordered_spread(event: &Event, cx: &Context) -> Result<(), InboxError> {
    log_in_order(event, cx).await
}

async fn log_in_order(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let pool = cx.store().postgres_pool().ok_or_else(|| InboxError::give_up("PostgreSQL only"))?;
    let seq = event.meta("seq").and_then(|v| v.as_i64()).unwrap_or(-1);
    let ok = !(event.meta("fail").is_some() && cx.attempt() == 1);
    sqlx::query("INSERT INTO order_runs (subject, seq, ok) VALUES ($1, $2, $3)")
        .bind(&event.subject.id)
        .bind(seq)
        .bind(ok)
        .execute(pool)
        .await?;
    tokio::time::sleep(Duration::from_millis(2)).await; // so that kills land mid-delivery
    if ok { Ok(()) } else { Err(InboxError::retry("injected failure")) }
}

/// Two inboxes whose every run is counted per (inbox, event).
#[inbox(subject = "compete")]
async fn compete_a(event: &Event, cx: &Context) -> Result<(), InboxError> {
    seen(cx, "compete_a", event).await
}

#[inbox(subject = "compete")]
async fn compete_b(event: &Event, cx: &Context) -> Result<(), InboxError> {
    seen(cx, "compete_b", event).await
}

/// Four inboxes for the chaos test: each run is counted and its time noted, so the
/// test can tell missing, repeated and late deliveries apart.
#[inbox(subject = "chaos")]
async fn chaos_a(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tick(cx, "chaos_a", event).await
}

#[inbox(subject = "chaos")]
async fn chaos_b(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tick(cx, "chaos_b", event).await
}

#[inbox(subject = "chaos")]
async fn chaos_c(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tick(cx, "chaos_c", event).await
}

#[inbox(subject = "chaos")]
async fn chaos_d(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tick(cx, "chaos_d", event).await
}

async fn tick(cx: &Context, inbox: &str, event: &Event) -> Result<(), InboxError> {
    let pool = cx.store().postgres_pool().ok_or_else(|| InboxError::give_up("PostgreSQL only"))?;
    sqlx::query(
        "WITH counted AS (INSERT INTO seen (inbox, event_id, runs) VALUES ($1, $2, 1) \
         ON CONFLICT (inbox, event_id) DO UPDATE SET runs = seen.runs + 1 RETURNING 1) \
         INSERT INTO ticks (inbox) SELECT $1 FROM counted",
    )
    .bind(inbox)
    .bind(event.id.0)
    .execute(pool)
    .await?;
    Ok(())
}

async fn note(cx: &Context, phase: &str, event: &Event) -> Result<(), InboxError> {
    let pool = cx.store().postgres_pool().ok_or_else(|| InboxError::give_up("PostgreSQL only"))?;
    sqlx::query("INSERT INTO runs (inbox, phase, event_id) VALUES ($1, $2, $3)")
        .bind(cx.inbox())
        .bind(phase)
        .bind(event.id.0)
        .execute(pool)
        .await?;
    Ok(())
}

async fn seen(cx: &Context, inbox: &str, event: &Event) -> Result<(), InboxError> {
    let pool = cx.store().postgres_pool().ok_or_else(|| InboxError::give_up("PostgreSQL only"))?;
    sqlx::query(
        "INSERT INTO seen (inbox, event_id, runs) VALUES ($1, $2, 1) \
         ON CONFLICT (inbox, event_id) DO UPDATE SET runs = seen.runs + 1",
    )
    .bind(inbox)
    .bind(event.id.0)
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, schema, worker, rest @ ..] = args.as_slice() else {
        eprintln!("usage: dispatch_worker <postgres-url> <schema> <worker-id> [lease-ms]");
        std::process::exit(2);
    };
    // Without a lease argument, Herald's default lease.
    let lease: Option<Duration> = rest.first().map(|s| s.parse().map(Duration::from_millis)).transpose()?;
    let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema.as_str())]);
    let store = Store::from_postgres(PgPoolOptions::new().max_connections(12).connect_with(opts).await?);
    let mut builder = Dispatcher::builder(store).worker_id(worker.as_str()).poll_interval(Duration::from_millis(100));
    if let Some(lease) = lease {
        builder = builder.lease(lease);
    }
    let dispatcher = builder.build()?;
    // Runs until standard input closes.
    let shutdown = async {
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
    };
    dispatcher.run(shutdown).await?;
    Ok(())
}
