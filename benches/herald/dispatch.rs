//! Scenario 4: dispatch throughput with noop inboxes (1, 4, 16), draining a backlog
//! recorded once, against a raw job-queue loop on a `bench_jobs` table with one row per
//! (event, inbox) that claims 100 rows per statement (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL) and deletes them in one statement.
//!
//! Each Herald round builds a fresh dispatcher after deleting the inboxes' rows from
//! `herald_inboxes`: the inboxes say `start_from = "beginning"`, so they replay the
//! whole backlog. Only `dispatcher.drain()` is timed; the baseline's rows are inserted
//! before its timer starts.

use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Dispatcher, NewEvent};
use serde_json::json;

use super::{Backend, BoxError, Config, Report, execute, inboxes, record_backlog};

macro_rules! noop_inboxes {
    ($($name:ident),* $(,)?) => {$(
        #[inbox(subject = "bench", start_from = "beginning")]
        async fn $name(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
            Ok(())
        }
    )*};
}

noop_inboxes!(
    noop_00, noop_01, noop_02, noop_03, noop_04, noop_05, noop_06, noop_07, noop_08, noop_09, noop_10, noop_11,
    noop_12, noop_13, noop_14, noop_15,
);

/// The first `k` noop inboxes.
fn noop_registry(k: usize) -> Result<herald::Registry, BoxError> {
    let registry = inboxes(|n| n.strip_prefix("noop_").and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i < k))?;
    if registry.len() != k {
        return Err(format!("expected {k} noop inboxes, found {}", registry.len()).into());
    }
    Ok(registry)
}

/// One Herald round: fresh positions, a fresh dispatcher, a timed `drain()`.
async fn herald_round(store: &Store, k: usize, expected: usize) -> Result<(usize, Duration), BoxError> {
    execute(store, "DELETE FROM herald_inboxes").await?;
    let dispatcher = Dispatcher::builder(store.clone()).registry(noop_registry(k)?).build()?;
    let t = Instant::now();
    let drained = dispatcher.drain().await?;
    let took = t.elapsed();
    if drained.delivered as usize != expected || drained.failed != 0 {
        eprintln!("  WARNING: herald drained {drained:?}, expected {expected} deliveries");
    }
    Ok((drained.delivered as usize, took))
}

/// The work a raw worker does per job: nothing, like the noop inboxes.
async fn noop_job(_id: i64, _inbox: &str, _event_id: i64) -> Result<(), BoxError> {
    Ok(())
}

/// One baseline round: fill `bench_jobs` (untimed), then a timed claim/complete loop.
async fn raw_round(store: &Store, k: usize, expected: usize) -> Result<(usize, Duration), BoxError> {
    let lease = Duration::from_secs(30);
    let mut done = 0;
    let took;
    if let Some(pool) = store.postgres_pool() {
        sqlx::query("TRUNCATE bench_jobs").execute(pool).await?;
        sqlx::query(
            "INSERT INTO bench_jobs (inbox, event_id, done) SELECT 'noop_' || i, e.id, FALSE \
             FROM herald_events e CROSS JOIN generate_series(0, $1 - 1) AS i WHERE e.subject_type = 'bench' \
             ORDER BY e.id, i",
        )
        .bind(k as i32)
        .execute(pool)
        .await?;
        sqlx::query("ANALYZE bench_jobs").execute(pool).await?;
        let t = Instant::now();
        loop {
            let now = chrono::Utc::now();
            let claimed: Vec<(i64, String, i64)> = sqlx::query_as(
                "UPDATE bench_jobs SET locked_until = $1 WHERE id IN (SELECT id FROM bench_jobs \
                 WHERE NOT done AND (locked_until IS NULL OR locked_until < $2) ORDER BY id LIMIT 100 \
                 FOR UPDATE SKIP LOCKED) RETURNING id, inbox, event_id",
            )
            .bind(now + lease)
            .bind(now)
            .fetch_all(pool)
            .await?;
            if claimed.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(claimed.len());
            for (id, inbox, event_id) in &claimed {
                noop_job(*id, inbox, *event_id).await?;
                ids.push(*id);
            }
            sqlx::query("DELETE FROM bench_jobs WHERE id = ANY($1)").bind(&ids).execute(pool).await?;
            done += ids.len();
        }
        took = t.elapsed();
    } else if let Some(pool) = store.sqlite_pool() {
        sqlx::query("DELETE FROM bench_jobs").execute(pool).await?;
        sqlx::query(
            "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?) \
             INSERT INTO bench_jobs (inbox, event_id, done) SELECT 'noop_' || i.n, e.id, 0 \
             FROM herald_events e CROSS JOIN i WHERE e.subject_type = 'bench' ORDER BY e.id, i.n",
        )
        .bind(k as i64)
        .execute(pool)
        .await?;
        let t = Instant::now();
        loop {
            let now = chrono::Utc::now();
            let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let claimed: Vec<(i64, String, i64)> = sqlx::query_as(
                "UPDATE bench_jobs SET locked_until = ? WHERE id IN (SELECT id FROM bench_jobs \
                 WHERE NOT done AND (locked_until IS NULL OR locked_until < ?) ORDER BY id LIMIT 100) \
                 RETURNING id, inbox, event_id",
            )
            .bind(fmt(now + lease))
            .bind(fmt(now))
            .fetch_all(pool)
            .await?;
            if claimed.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(claimed.len());
            for (id, inbox, event_id) in &claimed {
                noop_job(*id, inbox, *event_id).await?;
                ids.push(*id);
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM bench_jobs WHERE id IN (");
            let mut list = q.separated(", ");
            for id in &ids {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(pool).await?;
            done += ids.len();
        }
        took = t.elapsed();
    } else {
        unreachable!("a store has one pool");
    }
    if done != expected {
        eprintln!("  WARNING: raw loop completed {done} jobs, expected {expected}");
    }
    Ok((done, took))
}

pub(super) async fn run(backend: &Backend, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let db = backend.fresh("dispatch").await?;
    let store = &db.store;
    let n = cfg.dispatch_backlog;
    eprintln!("  recording a backlog of {n} events");
    record_backlog(store, n, 0, |i| {
        NewEvent::new(Subject::new("bench", i), "happened", Actor::new("user", i % 100)).metadata(json!({ "n": i }))
    })
    .await?;
    if backend.is_postgres() {
        execute(
            store,
            "CREATE TABLE bench_jobs (id BIGSERIAL PRIMARY KEY, inbox TEXT NOT NULL, event_id BIGINT NOT NULL, \
             done BOOLEAN NOT NULL DEFAULT FALSE, locked_until TIMESTAMPTZ)",
        )
        .await?;
        execute(store, "ANALYZE herald_events").await?;
    } else {
        execute(
            store,
            "CREATE TABLE bench_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, inbox TEXT NOT NULL, \
             event_id INTEGER NOT NULL, done BOOLEAN NOT NULL DEFAULT 0, locked_until TEXT)",
        )
        .await?;
    }
    for k in [1, 4, 16] {
        let label = format!("4. dispatch, {n} events x {k} noop inbox(es)");
        let expected = n * k;
        let (mut base, mut ours) = (Vec::new(), Vec::new());
        for round in 0..cfg.dispatch_rounds {
            // Which side goes first alternates, as in `compare`.
            for herald in if round % 2 == 0 { [false, true] } else { [true, false] } {
                if herald {
                    let (delivered, took) = herald_round(store, k, expected).await?;
                    ours.push(delivered as f64 / took.as_secs_f64());
                } else {
                    let (done, took) = raw_round(store, k, expected).await?;
                    base.push(done as f64 / took.as_secs_f64());
                }
            }
            eprintln!("  [{label}] round {}: raw {:.0}/s, herald {:.0}/s", round + 1, base[round], ours[round]);
        }
        report.rate(label, "del/s", (base, ours), Some(0.8));
    }
    db.close().await
}
