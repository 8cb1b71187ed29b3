//! Scenario 8 (PostgreSQL): noop dispatch as an outside harness measured it. A
//! backlog recorded one event per transaction; before each drain `VACUUM ANALYZE`
//! (fresh statistics; a second table keeps the statistics of when it was empty:
//! stale) and a new pool of 10 connections, opened and used once (warmed, but no
//! statement prepared yet: PostgreSQL plans the first five executions of a prepared
//! statement with its parameters' values, then may switch to a generic plan). Herald
//! drains one noop inbox at concurrency 1 and 8; the baseline is a raw sqlx loop that
//! claims 100 rows of a one-row-per-event jobs table with `FOR UPDATE SKIP LOCKED` and
//! deletes them, with 1 and 8 workers. The same drain into a spread inbox (its events
//! copied into delivery rows, then claimed) is measured in the same rounds.

use std::str::FromStr;
use std::time::{Duration, Instant};

use herald::Dispatcher;
use herald::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Backend, BoxError, Config, Report, inboxes};

/// A pool of 10 connections to `schema`, each opened and used once.
async fn warmed_pool(url: &str, schema: &str) -> Result<sqlx::PgPool, BoxError> {
    let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    let pool = PgPoolOptions::new().max_connections(10).min_connections(10).connect_with(opts).await?;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut c = pool.acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *c).await?;
        held.push(c);
    }
    drop(held);
    Ok(pool)
}

/// Records `n` events, one per transaction, from 8 writers.
async fn record_one_per_transaction(store: &Store, n: usize) -> Result<(), BoxError> {
    let writers = (0..8).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let mut tx = store.begin().await?;
                tx.record(Subject::new("bench", i), "happened", Actor::new("user", i % 100)).await?;
                tx.commit().await?;
            }
            Ok::<_, herald::Error>(())
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await??;
    }
    Ok(())
}

/// The noop inbox spread over workers: its lease holder copies the events into
/// delivery rows, which the workers claim.
#[inbox(subject = "bench", spread = true, start_from = "beginning")]
async fn noop_spread(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

/// Drains the backlog into `inbox` (`noop_00`, or `noop_spread`) from its beginning.
async fn herald_drain(
    url: &str,
    schema: &str,
    inbox: &'static str,
    concurrency: usize,
    expected: usize,
) -> Result<f64, BoxError> {
    let pool = warmed_pool(url, schema).await?;
    sqlx::query("DELETE FROM herald_inboxes").execute(&pool).await?;
    sqlx::query("DELETE FROM herald_deliveries").execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE herald_inboxes").execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE herald_deliveries").execute(&pool).await?;
    let store = Store::from_postgres(pool.clone());
    let registry = inboxes(|n| n == inbox)?;
    let dispatcher = Dispatcher::builder(store).registry(registry).concurrency(concurrency).build()?;
    let t = Instant::now();
    let drained = dispatcher.drain().await?;
    let took = t.elapsed();
    if drained.delivered as usize != expected {
        eprintln!("  WARNING: herald drained {drained:?}, expected {expected}");
    }
    pool.close().await;
    Ok(drained.delivered as f64 / took.as_secs_f64())
}

async fn raw_drain(url: &str, schema: &str, workers: usize, expected: usize) -> Result<f64, BoxError> {
    let pool = warmed_pool(url, schema).await?;
    sqlx::query("TRUNCATE bench_jobs").execute(&pool).await?;
    sqlx::query("INSERT INTO bench_jobs (event_id) SELECT id FROM herald_events ORDER BY id").execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE bench_jobs").execute(&pool).await?;
    let t = Instant::now();
    let loops = (0..workers).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let until = chrono::Utc::now() + Duration::from_secs(30);
                let claimed: Vec<(i64, i64)> = sqlx::query_as(
                    "UPDATE bench_jobs SET locked_until = $1 WHERE id IN (SELECT id FROM bench_jobs \
                     WHERE locked_until IS NULL OR locked_until < now() ORDER BY id LIMIT 100 \
                     FOR UPDATE SKIP LOCKED) RETURNING id, event_id",
                )
                .bind(until)
                .fetch_all(&pool)
                .await?;
                if claimed.is_empty() {
                    return Ok::<_, sqlx::Error>(done);
                }
                let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
                sqlx::query("DELETE FROM bench_jobs WHERE id = ANY($1)").bind(&ids).execute(&pool).await?;
                done += ids.len();
            }
        })
    });
    let mut done = 0;
    for l in loops.collect::<Vec<_>>() {
        done += l.await??;
    }
    let took = t.elapsed();
    if done != expected {
        eprintln!("  WARNING: raw loop completed {done}, expected {expected}");
    }
    pool.close().await;
    Ok(done as f64 / took.as_secs_f64())
}

pub(super) async fn run(backend: &Backend, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let Backend::Postgres(url) = backend else { return Ok(()) };
    let n = cfg.harness_backlog;
    for stats in ["fresh", "stale"] {
        let db = backend.fresh(&format!("harness_{stats}")).await?;
        let schema = format!("herald_bench_harness_{stats}");
        let store = &db.store;
        if stats == "stale" {
            // Statistics of the empty table, kept: autovacuum may not run for a while.
            super::execute(store, "ANALYZE herald_events").await?;
            super::execute(store, "ALTER TABLE herald_events SET (autovacuum_enabled = false)").await?;
        }
        eprintln!("  recording {n} events, one per transaction ({stats} statistics)");
        record_one_per_transaction(store, n).await?;
        super::execute(
            store,
            "CREATE TABLE bench_jobs (id BIGSERIAL PRIMARY KEY, event_id BIGINT NOT NULL, locked_until TIMESTAMPTZ)",
        )
        .await?;
        if stats == "fresh" {
            super::execute(store, "VACUUM ANALYZE herald_events").await?;
        } else {
            super::execute(store, "VACUUM herald_events").await?;
        }
        for concurrency in [1, 8] {
            let label = format!("8. harness drain, {n} events, {stats} stats, concurrency {concurrency}");
            let (mut base, mut ours, mut spread) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..cfg.dispatch_rounds {
                let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
                for side in order {
                    match side {
                        0 => base.push(raw_drain(url, &schema, concurrency, n).await?),
                        1 => ours.push(herald_drain(url, &schema, "noop_00", concurrency, n).await?),
                        _ => spread.push(herald_drain(url, &schema, "noop_spread", concurrency, n).await?),
                    }
                }
                eprintln!(
                    "  [{label}] round {}: raw {:.0}/s, herald {:.0}/s, spread {:.0}/s",
                    round + 1,
                    base[round],
                    ours[round],
                    spread[round]
                );
            }
            report.rate(label.clone(), "del/s", (base.clone(), ours), Some(1.0));
            report.rate(format!("{label}, spread inbox"), "del/s", (base, spread), Some(0.8));
        }
        db.close().await?;
    }
    Ok(())
}
