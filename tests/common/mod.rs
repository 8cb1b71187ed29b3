//! The test harness: one test body, run on SQLite and on PostgreSQL, each in a
//! database of its own (a fresh SQLite file; a fresh PostgreSQL schema).
//!
//! PostgreSQL comes from `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Outside CI an unreachable server skips the PostgreSQL half with a message; under
//! CI (`CI` set) it fails the test.
#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use herald::Store;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_000)
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A migrated store in a database of its own; removes it when dropped.
pub struct TestDb {
    pub store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Schema(String),
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let path = std::env::temp_dir().join(format!("{}.db", unique("herald_test")));
        let store = Store::connect(&format!("sqlite://{}", path.display())).await.expect("open sqlite file");
        store.migrate().await.expect("migrate sqlite");
        TestDb { store, cleanup: Cleanup::File(path) }
    }

    /// The PostgreSQL schema of this database, if it is one.
    pub fn schema(&self) -> Option<&str> {
        match &self.cleanup {
            Cleanup::Schema(s) => Some(s),
            Cleanup::File(_) => None,
        }
    }

    /// `None` when PostgreSQL is unreachable outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let url = database_url();
        let admin = match sqlx::PgPool::connect(&url).await {
            Ok(p) => p,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping the PostgreSQL half: {url} unreachable ({e}); set CI=1 to make this fatal");
                return None;
            }
            Err(e) => panic!("PostgreSQL at {url} is required under CI: {e}"),
        };
        let schema = unique("herald_t");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("create schema");
        admin.close().await;
        let opts = PgConnectOptions::from_str(&url).expect("DATABASE_URL").options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new().max_connections(24).connect_with(opts).await.expect("connect to schema");
        let store = Store::from_postgres(pool);
        store.migrate().await.expect("migrate postgres");
        Some(TestDb { store, cleanup: Cleanup::Schema(schema) })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Schema(schema) => {
                let (url, schema) = (database_url(), schema.clone());
                // Drop runs inside the test's runtime: clean up from a thread of our own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                    rt.block_on(async {
                        let admin = sqlx::PgPool::connect(&url).await.ok()?;
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                            .execute(&admin)
                            .await
                            .ok()
                    })
                })
                .join();
            }
        }
    }
}

/// Rows in `herald_events`, by raw SQL.
pub async fn count_events(store: &Store) -> i64 {
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_scalar("SELECT COUNT(*) FROM herald_events").fetch_one(p).await,
        (_, Some(p)) => sqlx::query_scalar("SELECT COUNT(*) FROM herald_events").fetch_one(p).await,
        _ => unreachable!("a store has one pool"),
    }
    .expect("count events")
}

/// Runs a raw statement on either backend, returning the affected rows or the error.
pub async fn execute(store: &Store, sql: &'static str) -> Result<u64, sqlx::Error> {
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        (_, Some(p)) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        _ => unreachable!("a store has one pool"),
    }
}

/// Defines `mod $name { sqlite, postgres }`, running the body against each backend.
///
/// ```ignore
/// backend_test!(records, |store| async move { … });
/// ```
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = $crate::common::TestDb::sqlite().await;
                let $store = db.store.clone();
                $body.await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = $crate::common::TestDb::postgres().await else { return };
                let $store = db.store.clone();
                $body.await;
            }
        }
    };
}

/// Creates `handled`: one row per handler run, written by test inboxes.
pub async fn create_handled(store: &Store) {
    execute(store, "CREATE TABLE handled (inbox TEXT NOT NULL, event_id BIGINT NOT NULL, attempt INTEGER NOT NULL, at_micros BIGINT NOT NULL)")
        .await
        .expect("create handled");
}

/// Notes that `inbox` ran for `event` (attempt `attempt`) in the `handled` table.
pub async fn note(store: &Store, inbox: &str, event: &herald::Event, attempt: u32) -> Result<(), sqlx::Error> {
    let at = chrono::Utc::now().timestamp_micros();
    let sql_sqlite = "INSERT INTO handled (inbox, event_id, attempt, at_micros) VALUES (?, ?, ?, ?)";
    let sql_pg = "INSERT INTO handled (inbox, event_id, attempt, at_micros) VALUES ($1, $2, $3, $4)";
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => {
            sqlx::query(sql_sqlite).bind(inbox).bind(event.id.0).bind(attempt as i32).bind(at).execute(p).await?;
        }
        (_, Some(p)) => {
            sqlx::query(sql_pg).bind(inbox).bind(event.id.0).bind(attempt as i32).bind(at).execute(p).await?;
        }
        _ => unreachable!("a store has one pool"),
    }
    Ok(())
}

/// `(inbox, event_id, attempt, at_micros)` rows of `handled`, in insertion order.
pub async fn handled(store: &Store) -> Vec<(String, i64, i32, i64)> {
    let sql = "SELECT inbox, event_id, attempt, at_micros FROM handled ORDER BY at_micros, inbox";
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_as(sql).fetch_all(p).await,
        (_, Some(p)) => sqlx::query_as(sql).fetch_all(p).await,
        _ => unreachable!("a store has one pool"),
    }
    .expect("read handled")
}

/// Whether a row exists in `switches` named `name` (tests flip behaviour with it).
pub async fn switch_on(store: &Store, name: &str) -> bool {
    let found: Result<Option<String>, _> = match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => {
            sqlx::query_scalar("SELECT name FROM switches WHERE name = ?").bind(name).fetch_optional(p).await
        }
        (_, Some(p)) => {
            sqlx::query_scalar("SELECT name FROM switches WHERE name = $1").bind(name).fetch_optional(p).await
        }
        _ => unreachable!("a store has one pool"),
    };
    matches!(found, Ok(Some(_)))
}
