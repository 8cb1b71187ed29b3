//! Bad input and faults (issue 15): each finding of the hostile-input run, on every
//! backend where it applies. The contract: a typed error or a correct success; never
//! a panic, a hang, a half-written or silently lost write, or a stuck inbox.

mod common;

use std::time::Duration;

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, NewEvent, Registry, Transition, inbox};
use serde_json::{Value, json};

use common::{count_events, execute};

fn thing(n: impl std::fmt::Display) -> Subject {
    Subject::new("thing", n)
}

fn only(prefix: &'static str) -> Registry {
    Registry::collect()
        .expect("registry")
        .retain(move |d| d.name.rsplit("::").next().is_some_and(|n| n.starts_with(prefix)))
}

fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "a": v });
    }
    v
}

/// Runs a statement on either backend with `$1`-style placeholders turned into `?`.
async fn raw(store: &Store, sql: &str) -> Result<u64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        (_, Some(p)) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        _ => unreachable!("a store has one pool"),
    }
}

// ---- 1. poison events --------------------------------------------------------

backend_test!(metadata_too_deep_to_read_back_is_refused, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let refused = tx.record(thing(1), "made", Actor::system()).metadata(nested(128)).await;
    assert!(refused.is_err(), "128 levels cannot be read back; recording them must fail: {refused:?}");
    // The transaction is still usable and holds nothing of the refused record.
    let kept = tx.record(thing(1), "made", Actor::system()).metadata(nested(40)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 1);
    assert_eq!(store.event(kept.id).await.unwrap().unwrap(), kept, "40 levels read back as written");
});

backend_test!(extreme_numbers_read_back_exactly, |store| async move {
    let numbers = [f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, 1e300, -1e-300, 0.1, 1.0 / 3.0];
    let mut tx = store.begin().await.unwrap();
    let mut recorded = Vec::new();
    for x in numbers {
        recorded.push(tx.record(thing(2), "made", Actor::system()).metadata(json!({ "x": x })).await.unwrap());
    }
    recorded.push(
        tx.record(thing(2), "made", Actor::system()).metadata(json!({ "u": u64::MAX, "i": i64::MIN })).await.unwrap(),
    );
    tx.commit().await.unwrap();
    for e in &recorded {
        assert_eq!(&store.event(e.id).await.unwrap().unwrap(), e, "{:?}", e.metadata);
    }
    let page = store.feed().subject(&thing(2)).fetch().await.unwrap();
    assert_eq!(page.events.len(), recorded.len());
});

// ---- 2. a huge retry_after ---------------------------------------------------

#[inbox(subject = "later", max_attempts = 3)]
async fn later_never(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::retry_after(Duration::from_secs(u64::MAX), "503: retry after forever"))
}

backend_test!(a_huge_retry_after_is_clamped_not_a_panic, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("later_")).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("later", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let drained = d.drain().await.unwrap();
    assert_eq!((drained.delivered, drained.failed), (0, 1));
    let status = d.status().await.unwrap();
    assert_eq!(status[0].retrying, 1, "parked for a retry, far ahead: {status:?}");
    // Not due: a second drain does not run it again.
    assert_eq!(d.drain().await.unwrap().failed, 0);
});

// ---- 8. record_all is all or nothing -----------------------------------------

backend_test!(record_all_failing_mid_batch_writes_nothing, |store| async move {
    let trigger = match store.backend() {
        herald::Backend::Sqlite => "CREATE TRIGGER boom BEFORE INSERT ON herald_events WHEN NEW.subject_id = '4000' \
                                   BEGIN SELECT RAISE(ABORT, 'boom at 4000'); END"
            .to_owned(),
        herald::Backend::Postgres => {
            raw(
                &store,
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.subject_id = '4000' THEN RAISE EXCEPTION 'boom at 4000'; END IF; RETURN NEW; END $$",
            )
            .await
            .unwrap();
            "CREATE TRIGGER boom BEFORE INSERT ON herald_events FOR EACH ROW EXECUTE FUNCTION boom()".to_owned()
        }
    };
    raw(&store, &trigger).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let events = (0..5000).map(|n| NewEvent::new(thing(n), "made", Actor::system()));
    assert!(tx.record_all(events).await.is_err());
    // The caller ignores the error and commits: nothing of the batch may be stored.
    let _ = tx.commit().await;
    assert_eq!(count_events(&store).await, 0);
});

// ---- 10. times far out -------------------------------------------------------

backend_test!(time_bounds_far_out_keep_their_order, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.record(thing(10), "made", Actor::system()).await.unwrap();
    tx.record(thing(11), "made", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let max = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    let min = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    assert_eq!(store.feed().until(max).fetch().await.unwrap().events.len(), 2, "until the end of time");
    assert_eq!(store.feed().since(min).fetch().await.unwrap().events.len(), 2, "since the beginning of time");
    assert_eq!(store.feed().since(max).fetch().await.unwrap().events.len(), 0);
    assert_eq!(store.feed().until(min).fetch().await.unwrap().events.len(), 0);
    let y10000 = chrono::NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(store.feed().until(y10000).fetch().await.unwrap().events.len(), 2);
});

// ---- 11. REPLACE cannot rewrite an event --------------------------------------

#[tokio::test]
async fn replace_cannot_rewrite_an_event_sqlite() {
    let db = common::TestDb::sqlite().await;
    let store = db.store.clone();
    let mut tx = store.begin().await.unwrap();
    let e = tx.record(thing(1), "made", Actor::new("user", "alice")).await.unwrap();
    tx.commit().await.unwrap();
    for sql in [
        "INSERT OR REPLACE INTO herald_events (id, subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at) VALUES (1, 'thing', '1', 'user', 'mallory', 'made', '{}', '2026-01-01T00:00:00.000000Z')",
        "REPLACE INTO herald_events (id, subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at) VALUES (1, 'thing', '1', 'user', 'mallory', 'made', '{}', '2026-01-01T00:00:00.000000Z')",
    ] {
        assert!(execute(&store, sql).await.is_err(), "{sql}");
    }
    assert_eq!(store.event(e.id).await.unwrap().unwrap(), e, "the fact is unchanged");
}

// ---- 12. an explicit caused_by is measured too -------------------------------

#[inbox(subject = "echo")]
async fn echo_loop(event: &Event, cx: &Context) -> Result<(), InboxError> {
    // Bypasses cx.begin(): its own transaction, an explicit cause.
    let mut tx = cx.store().begin().await?;
    tx.record(event.subject.clone(), "echoed", Actor::system()).caused_by(event).await?;
    tx.commit().await?;
    Ok(())
}

backend_test!(explicit_caused_by_is_held_to_the_causation_limit, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("echo_")).max_causation_depth(5).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("echo", 1), "said", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(20), d.drain()).await.expect("drain returns");
    drained.unwrap();
    assert_eq!(count_events(&store).await, 5, "a chain of 5 events, then the loop is cut");
});

// ---- 13. "sqlite:" is refused -------------------------------------------------

#[tokio::test]
async fn a_sqlite_url_without_a_database_is_refused() {
    for url in ["sqlite:", "sqlite://"] {
        assert!(Store::connect(url).await.is_err(), "{url}");
    }
}

// ---- 5. large configuration values -------------------------------------------

#[tokio::test]
async fn huge_dispatcher_settings_are_typed_errors() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let b = || Dispatcher::builder(store.clone()).registry(Registry::from_defs([]).unwrap());
    assert!(b().lease(Duration::MAX).build().is_err());
    assert!(b().concurrency(usize::MAX).build().is_err());
    assert!(b().batch_size(usize::MAX).build().is_err());
}

backend_test!(a_throttle_window_of_ages_is_a_success, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let first = tx
        .record(thing(5), "viewed", Actor::system())
        .throttle(Duration::from_secs(10_000_000_000_000))
        .await
        .expect("recorded");
    assert!(first.is_some());
    let second =
        tx.record(thing(5), "viewed", Actor::system()).throttle(Duration::from_secs(315_360_000_000)).await.unwrap();
    assert!(second.is_none(), "within 10,000 years of the first");
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 1);
});

// ---- 6 and 9. transitions -----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "parcel")]
#[transition(send: Packed -> Sent)]
#[transition(deliver: Sent -> Delivered)]
enum ParcelStatus {
    #[initial]
    Packed,
    Sent,
    Delivered,
}

backend_test!(apply_from_a_stale_state_on_a_fresh_subject_is_stale, |store| async move {
    let parcel = Subject::new("parcel", 1);
    let mut tx = store.begin().await.unwrap();
    let stale = Transition { event: "deliver", from: ParcelStatus::Sent, to: ParcelStatus::Delivered };
    let result = ParcelStatus::apply(&mut tx, &parcel, stale, Actor::system()).await;
    assert!(result.is_err(), "the parcel is still packed: {result:?}");
    tx.commit().await.unwrap();
    assert_eq!(store.state::<ParcelStatus>(&parcel).await.unwrap(), ParcelStatus::Packed);
    assert_eq!(count_events(&store).await, 0);
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "order", table = "orders", column = "status")]
#[transition(pay: Open -> Paid)]
enum OrderStatus {
    #[initial]
    Open,
    Paid,
}

backend_test!(a_non_canonical_numeric_id_cannot_split_a_trail, |store| async move {
    execute(&store, "CREATE TABLE orders (id BIGINT PRIMARY KEY, status TEXT NOT NULL)").await.unwrap();
    let mut forms: Vec<fn(i64) -> String> =
        vec![|n| format!("0{n}"), |n| format!(" {n}"), |n| format!("+{n}"), |n| format!("{n} ")];
    if store.backend() == herald::Backend::Sqlite {
        forms.extend([(|n| format!("{n}.0")) as fn(i64) -> String, |n| format!("{}e1", n as f64 / 10.0)]);
    }
    for (n, form) in forms.into_iter().enumerate() {
        let n = 40 + n as i64;
        let id = form(n);
        raw(&store, &format!("INSERT INTO orders VALUES ({n}, 'open')")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let fired = OrderStatus::fire(&mut tx, Subject::new("order", &id), OrderStatus::pay, Actor::system()).await;
        let committed = tx.commit().await;
        let trail = store.feed().subject(&Subject::new("order", n)).fetch().await.unwrap().events;
        let changed = store.state::<OrderStatus>(&Subject::new("order", n)).await.unwrap() == OrderStatus::Paid;
        assert_eq!(
            changed,
            trail.len() == 1,
            "{id:?}: row {n} changed = {changed} ({fired:?}, commit {committed:?}), but its trail holds {trail:?}"
        );
    }
    let all = store.feed().limit(1000).fetch().await.unwrap().events;
    for e in &all {
        assert_eq!(e.subject.id.parse::<i64>().unwrap().to_string(), e.subject.id, "no event under an odd id: {e:?}");
    }
});

// ---- 3. PostgreSQL: commit after a refused statement --------------------------

backend_test!(a_refused_record_never_commits_half_a_transaction, |store| async move {
    execute(&store, "CREATE TABLE notes (body TEXT NOT NULL)").await.unwrap();
    let long = "x".repeat(3000);
    let cases: Vec<(&str, Box<dyn Fn(&mut NewEvent) + Send + Sync>)> = vec![
        (
            "NUL in a subject id",
            Box::new(|e: &mut NewEvent| *e = NewEvent::new(thing("a\0b"), "made", Actor::system())),
        ),
        (
            "NUL in metadata",
            Box::new(|e: &mut NewEvent| {
                *e = NewEvent::new(thing(1), "made", Actor::system()).metadata(json!({ "note": "a\0b" }))
            }),
        ),
        (
            "NUL in a metadata key",
            Box::new(|e: &mut NewEvent| {
                *e = NewEvent::new(thing(1), "made", Actor::system()).metadata(json!({ "a\0b": 1 }))
            }),
        ),
        (
            "NUL in an actor",
            Box::new(|e: &mut NewEvent| *e = NewEvent::new(thing(1), "made", Actor::new("user", "a\0"))),
        ),
        (
            "a 3,000-byte subject id",
            Box::new(move |e: &mut NewEvent| *e = NewEvent::new(thing(&long), "made", Actor::system())),
        ),
    ];
    for (what, make) in &cases {
        let mut event = NewEvent::new(thing(1), "made", Actor::system());
        make(&mut event);
        let mut tx = store.begin().await.unwrap();
        match tx.postgres() {
            Some(c) => sqlx::query("INSERT INTO notes VALUES ('mine')").execute(c).await.map(|_| ()),
            None => sqlx::query("INSERT INTO notes VALUES ('mine')").execute(tx.sqlite().unwrap()).await.map(|_| ()),
        }
        .unwrap();
        let refused = tx.record_all([event]).await;
        assert!(refused.is_err(), "{what}: {refused:?}");
        // The caller logs the error and commits: either the commit fails, or the caller's row is there.
        let committed = tx.commit().await;
        let rows: i64 = execute(&store, "DELETE FROM notes").await.unwrap() as i64;
        assert!(committed.is_err() || rows == 1, "{what}: commit said {committed:?} but the caller's row is gone");
    }
    assert_eq!(count_events(&store).await, 0);
});

#[tokio::test]
async fn commit_of_a_transaction_the_database_aborted_is_an_error_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    execute(&store, "CREATE TABLE notes (body TEXT NOT NULL)").await.unwrap();
    raw(
        &store,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.action = 'refused' THEN RAISE EXCEPTION 'no'; END IF; RETURN NEW; END $$",
    )
    .await
    .unwrap();
    raw(&store, "CREATE TRIGGER refuse BEFORE INSERT ON herald_events FOR EACH ROW EXECUTE FUNCTION refuse()")
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('mine')").execute(tx.postgres().unwrap()).await.unwrap();
    assert!(tx.record(thing(1), "refused", Actor::system()).await.is_err());
    let committed = tx.commit().await;
    assert!(committed.is_err(), "PostgreSQL rolled the transaction back; commit must say so: {committed:?}");
    assert_eq!(execute(&store, "DELETE FROM notes").await.unwrap(), 0);
}

// ---- 4 and 7. migrations ------------------------------------------------------

async fn pg_admin() -> Option<sqlx::PgPool> {
    let _ = common::TestDb::postgres().await?; // skips (or fails under CI) like every PostgreSQL test
    Some(sqlx::PgPool::connect(&common::database_url()).await.unwrap())
}

fn schema_url(schema: &str) -> String {
    let base = common::database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

#[tokio::test]
async fn a_failed_migration_releases_its_lock_postgres() {
    let Some(admin) = pg_admin().await else { return };
    let n = std::process::id();
    let (a, b) = (format!("herald_mig_a_{n}"), format!("herald_mig_b_{n}"));
    for s in [&a, &b] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {s} CASCADE"))).execute(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {s}"))).execute(&admin).await.unwrap();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {a}.herald_events (other_shape INT)")))
        .execute(&admin)
        .await
        .unwrap();
    let store_a = Store::connect(&schema_url(&a)).await.unwrap();
    assert!(store_a.migrate().await.is_err(), "a table of another shape is in the way");
    let store_b = Store::connect(&schema_url(&b)).await.unwrap();
    let b_done = tokio::time::timeout(Duration::from_secs(10), store_b.migrate()).await;
    let a_again = tokio::time::timeout(Duration::from_secs(10), store_a.migrate()).await;
    for s in [&a, &b] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} CASCADE"))).execute(&admin).await.unwrap();
    }
    b_done.expect("migrating another schema must not wait on the failed one's lock").unwrap();
    assert!(a_again.expect("a retry must not hang").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_a_fresh_database_all_succeed_sqlite() {
    let path = std::env::temp_dir().join(format!("herald_concurrent_migrate_{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let store = Store::connect(&url).await.expect("connect");
            store.migrate().await
        }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    for r in results {
        r.expect("every concurrent migrate succeeds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_a_fresh_schema_all_succeed_postgres() {
    let Some(admin) = pg_admin().await else { return };
    let schema = format!("herald_mig_c_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = schema_url(&schema);
        tasks.push(tokio::spawn(async move { Store::connect(&url).await?.migrate().await }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.unwrap();
    for r in results {
        r.expect("every concurrent migrate succeeds");
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<herald::Result<()>>>) -> Vec<herald::Result<()>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}
