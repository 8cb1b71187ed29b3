//! The test harness: one test body, run on SQLite and on PostgreSQL, each in a
//! database of its own (a fresh SQLite file; a fresh PostgreSQL schema).
//!
//! PostgreSQL comes from `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Outside CI an unreachable server skips the PostgreSQL half with a message; under
//! CI (`CI` set) it fails the test.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;

use herald::Store;
use herald::testing::TestStore;

/// The PostgreSQL URL of the test server (`DATABASE_URL`, or the default).
pub fn database_url() -> String {
    herald::testing::database_url()
}

/// A migrated store in a database of its own (a [`TestStore`]); removes it when dropped.
pub struct TestDb {
    pub store: Store,
    db: TestStore,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let db = TestStore::sqlite().await.expect("a SQLite test store");
        TestDb { store: db.store().clone(), db }
    }

    /// The PostgreSQL schema of this database, if it is one.
    pub fn schema(&self) -> Option<&str> {
        self.db.schema()
    }

    /// `None` when PostgreSQL is unreachable outside CI.
    pub async fn postgres() -> Option<TestDb> {
        match TestStore::postgres().await {
            Ok(db) => Some(TestDb { store: db.store().clone(), db }),
            Err(e) if e.is_unreachable() && std::env::var_os("CI").is_none() => {
                eprintln!("skipping the PostgreSQL half: {e}; set CI=1 to make this fatal");
                None
            }
            Err(e) if e.is_unreachable() => panic!("PostgreSQL is required under CI: {e}"),
            Err(e) => panic!("PostgreSQL test store: {e:?}"),
        }
    }
}

/// Rows in `herald_events`, by raw SQL.
pub async fn count_events(store: &Store) -> i64 {
    let mut tx = store.begin().await.expect("begin");
    let (n,): (i64,) = tx.query("SELECT COUNT(*) FROM herald_events").fetch_one().await.expect("count events");
    tx.commit().await.expect("commit");
    n
}

/// Runs a raw statement on either backend, outside any transaction (`VACUUM` cannot
/// run in one), returning the affected rows or the error.
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
pub async fn note(store: &Store, inbox: &str, event: &herald::Event, attempt: u32) -> herald::Result<()> {
    let at = chrono::Utc::now().timestamp_micros();
    let mut tx = store.begin().await?;
    tx.query("INSERT INTO handled (inbox, event_id, attempt, at_micros) VALUES ($1, $2, $3, $4)")
        .bind(inbox)
        .bind(event.id)
        .bind(attempt)
        .bind(at)
        .execute()
        .await?;
    tx.commit().await
}

/// `(inbox, event_id, attempt, at_micros)` rows of `handled`, in insertion order.
pub async fn handled(store: &Store) -> Vec<(String, i64, i32, i64)> {
    let sql = "SELECT inbox, event_id, attempt, at_micros FROM handled ORDER BY at_micros, inbox";
    let mut tx = store.begin().await.expect("begin");
    let rows = tx.query(sql).fetch_all().await.expect("read handled");
    tx.commit().await.expect("commit");
    rows
}

/// Whether a row exists in `switches` named `name` (tests flip behaviour with it).
pub async fn switch_on(store: &Store, name: &str) -> bool {
    let Ok(mut tx) = store.begin().await else { return false };
    let found: herald::Result<Option<(String,)>> =
        tx.query("SELECT name FROM switches WHERE name = $1").bind(name).fetch_optional().await;
    let _ = tx.commit().await;
    matches!(found, Ok(Some(_)))
}

/// The path of `examples/<name>` as built next to this test binary (building it first
/// if `cargo test` did not).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let target = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = target.join("examples").join(name);
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    bin
}
