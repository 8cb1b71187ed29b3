//! Herald against raw sqlx, in the same process on the same database.
//!
//! `cargo bench --bench herald` runs every scenario on SQLite (a file in WAL mode) and
//! on PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in
//! a schema of its own). Each scenario alternates baseline and Herald for several rounds
//! and prints the medians and the ratio Herald / baseline (higher is better for Herald).
//! `HERALD_BENCH_QUICK=1` runs everything small, to check that it works.

use std::future::Future;
use std::str::FromStr;
use std::time::Instant;

use herald::NewEvent;
use herald::prelude::*;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Config {
    rounds: usize,
    single_ops: usize,
    batch_size: usize,
    batches: usize,
}

fn config() -> Config {
    if std::env::var_os("HERALD_BENCH_QUICK").is_some() {
        Config { rounds: 2, single_ops: 50, batch_size: 1000, batches: 2 }
    } else {
        Config { rounds: 5, single_ops: 2000, batch_size: 1000, batches: 20 }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `baseline` and `herald` alternately; each returns how many operations it did.
async fn compare<B, BF, H, HF>(label: &str, rounds: usize, mut baseline: B, mut herald: H) -> Result<(), BoxError>
where
    B: FnMut() -> BF,
    BF: Future<Output = Result<usize, BoxError>>,
    H: FnMut() -> HF,
    HF: Future<Output = Result<usize, BoxError>>,
{
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let n = baseline().await?;
        base.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let n = herald().await?;
        ours.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let (b, h) = (median(base), median(ours));
    println!("{label:<44} {b:>12.0}/s {h:>12.0}/s {:>7.2}x", h / b);
    Ok(())
}

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

async fn run_backend(name: &str, store: &Store, cfg: &Config) -> Result<(), BoxError> {
    println!("\n== {name}");
    println!("{:<44} {:>14} {:>14} {:>8}", "scenario", "raw sqlx", "herald", "ratio");
    for writers in [1, 8] {
        compare(
            &format!("one event per transaction, {writers} writer(s)"),
            cfg.rounds,
            || raw_single(store, writers, cfg.single_ops),
            || herald_single(store, writers, cfg.single_ops),
        )
        .await?;
    }
    compare(
        &format!("{} events per call (events/s)", cfg.batch_size),
        cfg.rounds,
        || raw_batch(store, cfg.batch_size, cfg.batches),
        || herald_batch(store, cfg.batch_size, cfg.batches),
    )
    .await?;
    Ok(())
}

async fn sqlite_store() -> Result<(Store, std::path::PathBuf), BoxError> {
    let path = std::env::temp_dir().join(format!("herald_bench_{}.db", std::process::id()));
    let store = Store::connect(&format!("sqlite://{}", path.display())).await?;
    store.migrate().await?;
    Ok((store, path))
}

async fn postgres_store() -> Result<Store, BoxError> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query("DROP SCHEMA IF EXISTS herald_bench CASCADE").execute(&admin).await?;
    sqlx::query("CREATE SCHEMA herald_bench").execute(&admin).await?;
    let opts = PgConnectOptions::from_str(&url)?.options([("search_path", "herald_bench")]);
    let store = Store::from_postgres(PgPoolOptions::new().max_connections(16).connect_with(opts).await?);
    store.migrate().await?;
    Ok(store)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cfg = config();
    let (sqlite, path) = sqlite_store().await?;
    let result = run_backend("SQLite (file, WAL)", &sqlite, &cfg).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result?;
    match postgres_store().await {
        Ok(pg) => run_backend("PostgreSQL", &pg, &cfg).await?,
        Err(e) if std::env::var_os("CI").is_none() => println!("\n== PostgreSQL skipped: {e}"),
        Err(e) => return Err(e),
    }
    Ok(())
}
