//! Scenarios 1 and 2: recording one event per transaction (1 and 8 writers), and
//! 1,000 events per call, against raw sqlx inserts of the same rows.

use herald::NewEvent;
use herald::prelude::*;
use serde_json::json;
use sqlx::types::Json;

use super::{BoxError, Config, Report, compare};

fn event(n: usize) -> NewEvent {
    NewEvent::new(Subject::new("issue", n % 1000), "commented", Actor::new("user", n % 100))
        .metadata(json!({ "comment_id": n }))
}

/// Raw SQL text of one event row, bound the same way Herald binds it.
const RAW_INSERT_PG: &str = "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, \
     metadata, created_at, causation_id, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)";
const RAW_INSERT_SQLITE: &str = "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, \
     metadata, created_at, causation_id, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)";

const RAW_BATCH: &str =
    "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, created_at) ";

async fn herald_single(store: &Store, writers: usize, ops: usize) -> Result<usize, BoxError> {
    let per = ops / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let n = w * per + i;
                    let mut tx = store.begin().await?;
                    tx.record(Subject::new("issue", n % 1000), "commented", Actor::new("user", n % 100))
                        .metadata(json!({ "comment_id": n }))
                        .await?;
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

async fn raw_single(store: &Store, writers: usize, ops: usize) -> Result<usize, BoxError> {
    let per = ops / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let n = w * per + i;
                let meta = json!({ "comment_id": n });
                let now = chrono::Utc::now();
                if let Some(pool) = store.postgres_pool() {
                    let mut tx = pool.begin().await?;
                    sqlx::query(RAW_INSERT_PG)
                        .bind("issue")
                        .bind((n % 1000).to_string())
                        .bind("user")
                        .bind((n % 100).to_string())
                        .bind("commented")
                        .bind(Json(&meta))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                } else if let Some(pool) = store.sqlite_pool() {
                    let mut tx = pool.begin().await?;
                    sqlx::query(RAW_INSERT_SQLITE)
                        .bind("issue")
                        .bind((n % 1000).to_string())
                        .bind("user")
                        .bind((n % 100).to_string())
                        .bind("commented")
                        .bind(meta.to_string())
                        .bind(now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(per * writers)
}

async fn herald_batch(store: &Store, size: usize, batches: usize) -> Result<usize, BoxError> {
    for b in 0..batches {
        let mut tx = store.begin().await?;
        tx.record_all((0..size).map(|i| event(b * size + i))).await?;
        tx.commit().await?;
    }
    Ok(size * batches)
}

async fn raw_batch(store: &Store, size: usize, batches: usize) -> Result<usize, BoxError> {
    for b in 0..batches {
        let now = chrono::Utc::now();
        let rows: Vec<_> = (0..size).map(|i| b * size + i).collect();
        if let Some(pool) = store.postgres_pool() {
            // A multi-row VALUES statement: 7 parameters a row.
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(RAW_BATCH);
            q.push_values(&rows, |mut r, n| {
                r.push_bind("issue")
                    .push_bind((n % 1000).to_string())
                    .push_bind("user")
                    .push_bind((n % 100).to_string())
                    .push_bind("commented")
                    .push_bind(Json(json!({ "comment_id": n })))
                    .push_bind(now);
            });
            let mut tx = pool.begin().await?;
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
        } else if let Some(pool) = store.sqlite_pool() {
            let at = now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(RAW_BATCH);
            q.push_values(&rows, |mut r, n| {
                r.push_bind("issue")
                    .push_bind((n % 1000).to_string())
                    .push_bind("user")
                    .push_bind((n % 100).to_string())
                    .push_bind("commented")
                    .push_bind(json!({ "comment_id": n }).to_string())
                    .push_bind(at.clone());
            });
            let mut tx = pool.begin().await?;
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
        }
    }
    Ok(size * batches)
}

pub(super) async fn run(store: &Store, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    for writers in [1, 8] {
        let label = format!("1. one event per transaction, {writers} writer(s)");
        let rates = compare(
            &label,
            cfg.rounds,
            || raw_single(store, writers, cfg.single_ops),
            || herald_single(store, writers, cfg.single_ops),
        )
        .await?;
        report.rate(label, "ev/s", rates, Some(0.9));
    }
    let label = format!("2. {} events per call", cfg.batch_size);
    let rates = compare(
        &label,
        cfg.rounds,
        || raw_batch(store, cfg.batch_size, cfg.batches),
        || herald_batch(store, cfg.batch_size, cfg.batches),
    )
    .await?;
    report.rate(label, "ev/s", rates, Some(0.8));
    Ok(())
}
