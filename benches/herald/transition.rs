//! Scenario 3: a persisted state-machine transition (`fire` on a status column of a
//! user table: read, compare-and-swap, `status_changed` event) against a hand-written
//! CAS `UPDATE … WHERE id = $2 AND status = $3` plus the event `INSERT`, one
//! transaction per transition. Each subject goes `open -> in_progress -> open`, so the
//! rounds repeat.

use herald::prelude::*;
use serde_json::json;
use sqlx::types::Json;

use super::{BoxError, Config, Report, compare, execute};

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "bench_issue", table = "bench_issues", column = "status")]
#[transition(start: Open -> InProgress)]
#[transition(stop: InProgress -> Open)]
enum BenchStatus {
    #[initial]
    Open,
    InProgress,
}

/// Subjects per writer; each writer owns its subjects, so writers never contend on a row.
const PER_WRITER: usize = 10;

/// Transitions per writer: a multiple of `2 * PER_WRITER`, so every subject ends `open`.
fn per_writer(ops: usize, writers: usize) -> usize {
    ((ops / writers) / (2 * PER_WRITER)).max(1) * 2 * PER_WRITER
}

/// The `i`-th transition of writer `w`: which subject, and whether it starts or stops.
fn step(w: usize, i: usize) -> (i64, bool) {
    ((w * PER_WRITER + i % PER_WRITER + 1) as i64, (i / PER_WRITER).is_multiple_of(2))
}

async fn herald_transitions(store: &Store, writers: usize, ops: usize) -> Result<usize, BoxError> {
    let per = per_writer(ops, writers);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let actor = Actor::new("user", w);
                for i in 0..per {
                    let (id, start) = step(w, i);
                    let event = if start { BenchStatus::start } else { BenchStatus::stop };
                    let mut tx = store.begin().await?;
                    BenchStatus::fire(&mut tx, Subject::new("bench_issue", id), event, &actor).await?;
                    tx.commit().await?;
                }
                Ok::<_, herald::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(per * writers)
}

const RAW_EVENT_PG: &str = "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, \
     metadata, created_at, causation_id, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)";
const RAW_EVENT_SQLITE: &str = "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, \
     metadata, created_at, causation_id, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)";

async fn raw_transitions(store: &Store, writers: usize, ops: usize) -> Result<usize, BoxError> {
    let per = per_writer(ops, writers);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let (id, start) = step(w, i);
                let (event, from, to) =
                    if start { ("start", "open", "in_progress") } else { ("stop", "in_progress", "open") };
                let meta = json!({ "from": from, "to": to, "event": event });
                let now = chrono::Utc::now();
                let swapped = if let Some(pool) = store.postgres_pool() {
                    let mut tx = pool.begin().await?;
                    let swapped = sqlx::query("UPDATE bench_issues SET status = $1 WHERE id = $2 AND status = $3")
                        .bind(to)
                        .bind(id)
                        .bind(from)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query(RAW_EVENT_PG)
                        .bind("bench_issue")
                        .bind(id.to_string())
                        .bind("user")
                        .bind(w.to_string())
                        .bind("status_changed")
                        .bind(Json(&meta))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    swapped
                } else if let Some(pool) = store.sqlite_pool() {
                    // Herald's SQLite transactions are BEGIN IMMEDIATE; so is the baseline.
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let swapped = sqlx::query("UPDATE bench_issues SET status = ? WHERE id = ? AND status = ?")
                        .bind(to)
                        .bind(id)
                        .bind(from)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query(RAW_EVENT_SQLITE)
                        .bind("bench_issue")
                        .bind(id.to_string())
                        .bind("user")
                        .bind(w.to_string())
                        .bind("status_changed")
                        .bind(meta.to_string())
                        .bind(now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    swapped
                } else {
                    0
                };
                if swapped != 1 {
                    return Err::<(), BoxError>(format!("raw CAS of bench_issues {id} matched {swapped} rows").into());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(per * writers)
}

pub(super) async fn run(store: &Store, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    execute(store, "CREATE TABLE bench_issues (id BIGINT PRIMARY KEY, status TEXT NOT NULL)").await?;
    let ids: Vec<String> = (1..=8 * PER_WRITER).map(|id| format!("({id}, 'open')")).collect();
    execute(store, &format!("INSERT INTO bench_issues (id, status) VALUES {}", ids.join(", "))).await?;
    for writers in [1, 8] {
        let label = format!("3. persisted transition (fire), {writers} writer(s)");
        let rates = compare(
            &label,
            cfg.rounds,
            || raw_transitions(store, writers, cfg.transition_ops),
            || herald_transitions(store, writers, cfg.transition_ops),
        )
        .await?;
        report.rate(label, "tr/s", rates, None);
    }
    Ok(())
}
