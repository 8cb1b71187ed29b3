//! Bad input and faults (issue 15): each finding of the hostile-input run, on every
//! backend where it applies. The contract: a typed error or a correct success; never
//! a panic, a hang, a half-written or silently lost write, or a stuck inbox.

mod common;

use std::time::Duration;

use herald::prelude::*;
use herald::{Context, Dispatcher, Error, InboxError, NewEvent, Registry, Transition, inbox};
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

/// A user trigger that makes the database refuse inserting an event whose `column`
/// is `value`: a failure Herald cannot foresee, in the middle of its statements.
async fn refuse_events_where(store: &Store, column: &str, value: &str) {
    let sql = match store.backend() {
        herald::Backend::Sqlite => format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON herald_events WHEN NEW.{column} = '{value}' \
             BEGIN SELECT RAISE(ABORT, 'refused {value}'); END"
        ),
        herald::Backend::Postgres => {
            raw(
                store,
                &format!(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                     IF NEW.{column} = '{value}' THEN RAISE EXCEPTION 'refused {value}'; END IF; RETURN NEW; END $$"
                ),
            )
            .await
            .unwrap();
            "CREATE TRIGGER refuse BEFORE INSERT ON herald_events FOR EACH ROW EXECUTE FUNCTION refuse()".to_owned()
        }
    };
    raw(store, &sql).await.unwrap();
}

// ---- 1. poison events --------------------------------------------------------

backend_test!(metadata_too_deep_to_read_back_is_refused, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let refused = tx.record(thing(1), "made", Actor::system()).metadata(nested(128)).await;
    assert!(
        matches!(refused, Err(Error::MetadataTooDeep { depth: 128, max: 64 })),
        "128 levels cannot be read back; recording them must fail: {refused:?}"
    );
    let refused = tx.record(thing(1), "made", Actor::system()).metadata(json!({ "list": [nested(64)] })).await;
    assert!(matches!(refused, Err(Error::MetadataTooDeep { depth: 66, .. })), "arrays count too: {refused:?}");
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
    let page = store.feed().subject(thing(2)).fetch().await.unwrap();
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
    refuse_events_where(&store, "subject_id", "4000").await;
    let mut tx = store.begin().await.unwrap();
    let events = (0..5000).map(|n| NewEvent::new(thing(n), "made", Actor::system()));
    assert!(matches!(tx.record_all(events).await, Err(Error::Database(_))));
    // The caller ignores the error and commits: nothing of the batch may be stored,
    // and the commit says the transaction was rolled back.
    assert!(matches!(tx.commit().await, Err(Error::Aborted { .. })));
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
        let refused = Store::connect(url).await;
        assert!(matches!(refused, Err(Error::InvalidUrl { .. })), "{url}: {refused:?}");
    }
}

// ---- 5. large configuration values -------------------------------------------

#[tokio::test]
async fn huge_dispatcher_settings_are_typed_errors() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let b = || Dispatcher::builder(store.clone()).registry(Registry::from_defs([]).unwrap());
    let refused = [
        b().lease(Duration::MAX).build(),
        b().lease(Duration::ZERO).build(),
        b().concurrency(usize::MAX).build(),
        b().concurrency(0).build(),
        b().batch_size(usize::MAX).build(),
        b().poll_interval(Duration::MAX).build(),
        b().poll_interval(Duration::ZERO).build(),
        b().max_causation_depth(u32::MAX).build(),
    ];
    for r in refused {
        assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
    }
    // A retention longer than history is accepted: it prunes nothing.
    b().dead_retention(Duration::MAX).build().unwrap();
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
    assert!(
        matches!(result, Err(Error::StaleState { expected: "sent", .. })),
        "the parcel is still packed: {result:?}"
    );
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
        assert!(
            matches!(&fired, Err(Error::NonCanonicalId { table: "orders", given, stored }) if *given == id && *stored == n.to_string()),
            "{id:?}: {fired:?}"
        );
        let stale = Transition { event: "pay", from: OrderStatus::Open, to: OrderStatus::Paid };
        let applied = OrderStatus::apply(&mut tx, Subject::new("order", &id), stale, Actor::system()).await;
        assert!(matches!(applied, Err(Error::NonCanonicalId { .. })), "{id:?}: {applied:?}");
        tx.commit().await.expect("refused before anything was written");
        let read = store.state::<OrderStatus>(&Subject::new("order", &id)).await;
        assert!(matches!(read, Err(Error::NonCanonicalId { .. })), "{id:?}: {read:?}");
        assert_eq!(store.state::<OrderStatus>(&Subject::new("order", n)).await.unwrap(), OrderStatus::Open);

        // The key's own form works, and the trail is under it.
        let mut tx = store.begin().await.unwrap();
        OrderStatus::fire(&mut tx, Subject::new("order", n), OrderStatus::pay, Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.feed().subject(Subject::new("order", n)).fetch().await.unwrap().events.len(), 1);
    }
    let all = store.feed().limit(1000).fetch().await.unwrap().events;
    for e in &all {
        assert_eq!(e.subject.id.parse::<i64>().unwrap().to_string(), e.subject.id, "no event under an odd id: {e:?}");
    }
    // Not a key at all: no row can have it.
    let mut tx = store.begin().await.unwrap();
    let fired = OrderStatus::fire(&mut tx, Subject::new("order", "4x"), OrderStatus::pay, Actor::system()).await;
    assert!(matches!(fired, Err(Error::MissingRow { table: "orders", .. })), "{fired:?}");
    tx.commit().await.unwrap();
});

// ---- 3. PostgreSQL: commit after a refused statement --------------------------

backend_test!(a_refused_record_never_commits_half_a_transaction, |store| async move {
    execute(&store, "CREATE TABLE notes (body TEXT NOT NULL)").await.unwrap();
    let long = "x".repeat(3000);
    let event = |subject: Subject, actor: Actor| NewEvent::new(subject, "made", actor);
    let cases = [
        ("NUL in a subject id", event(thing("a\0b"), Actor::system())),
        ("NUL in a subject type", event(Subject::new("th\0ng", 1), Actor::system())),
        ("NUL in metadata", event(thing(1), Actor::system()).metadata(json!({ "note": "a\0b" }))),
        ("NUL deep in metadata", event(thing(1), Actor::system()).metadata(json!({ "a": [{ "b": ["\0"] }] }))),
        ("NUL in a metadata key", event(thing(1), Actor::system()).metadata(json!({ "a\0b": 1 }))),
        ("NUL in an actor", event(thing(1), Actor::new("user", "a\0"))),
        ("a 3,000-byte subject id", event(thing(&long), Actor::system())),
    ];
    for (what, event) in cases {
        let mut tx = store.begin().await.unwrap();
        match tx.postgres() {
            Some(c) => sqlx::query("INSERT INTO notes VALUES ('mine')").execute(c).await.map(|_| ()),
            None => sqlx::query("INSERT INTO notes VALUES ('mine')").execute(tx.sqlite().unwrap()).await.map(|_| ()),
        }
        .unwrap();
        let refused = tx.record_all([event]).await;
        assert!(
            matches!(
                refused,
                Err(Error::ContainsNul { .. } | Error::TooLong { field: "subject id", len: 3000, max: 1024 })
            ),
            "{what}: {refused:?}"
        );
        // Refused before anything was sent: the caller's transaction goes on and commits.
        tx.commit().await.unwrap();
        assert_eq!(execute(&store, "DELETE FROM notes").await.unwrap(), 1, "{what}: the caller's row is kept");
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
    assert!(matches!(tx.record(thing(1), "refused", Actor::system()).await, Err(Error::Database(_))));
    let committed = tx.commit().await;
    assert!(
        matches!(&committed, Err(Error::Aborted { reason }) if reason.contains("no")),
        "PostgreSQL rolled the transaction back; commit must say so: {committed:?}"
    );
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
    assert!(matches!(store_a.migrate().await, Err(Error::Migrate(_))), "a table of another shape is in the way");
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

// ---- 1. unreadable rows already stored never block a page or an inbox ----------

#[inbox(subject = "poison", max_attempts = 2, backoff = "10ms", backoff_max = "10ms")]
async fn poison_reader(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(common::note(cx.store(), "poison_reader", event, cx.attempt()).await?)
}

/// Writes, by raw SQL, an event Herald cannot read back (as an older version or
/// another program could have): metadata nested 200 deep on SQLite, a number no
/// `f64` holds on PostgreSQL.
async fn insert_unreadable(store: &Store) -> herald::EventId {
    let id: i64 = match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => {
            let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            sqlx::query_scalar(
                "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, created_at) \
                 VALUES ('poison', '1', 'system', 'system', 'made', ?, ?) RETURNING id",
            )
            .bind(deep)
            .bind(now)
            .fetch_one(p)
            .await
        }
        (_, Some(p)) => {
            sqlx::query_scalar(
                "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, created_at) \
                 VALUES ('poison', '1', 'system', 'system', 'made', '{\"x\": 1e400}', now()) RETURNING id",
            )
            .fetch_one(p)
            .await
        }
        _ => unreachable!("a store has one pool"),
    }
    .unwrap();
    herald::EventId(id)
}

backend_test!(an_unreadable_stored_event_blocks_no_page_and_no_inbox, |store| async move {
    common::create_handled(&store).await;
    let d = Dispatcher::builder(store.clone()).registry(only("poison_")).build().unwrap();
    d.drain().await.unwrap();
    let record = |n: i64| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let e = tx.record(Subject::new("poison", 1), "made", Actor::system()).metadata(json!({ "n": n })).await;
            tx.commit().await.unwrap();
            e.unwrap()
        }
    };
    let before = record(1).await;
    let poison = insert_unreadable(&store).await;
    let after = record(2).await;

    let read = store.event(poison).await;
    assert!(matches!(read, Err(Error::Corrupt { id, .. }) if id == poison.0), "{read:?}");
    let page = store.feed().subject(Subject::new("poison", 1)).fetch().await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), [after.id, before.id]);
    assert_eq!(page.unreadable.len(), 1);
    assert_eq!(page.unreadable[0].id, poison);
    // Paging across it: two pages of one row each, then the last.
    let first = store.feed().subject(Subject::new("poison", 1)).limit(2).fetch().await.unwrap();
    let rest =
        store.feed().subject(Subject::new("poison", 1)).limit(2).before(first.next.unwrap()).fetch().await.unwrap();
    assert_eq!(first.events.len() + first.unreadable.len() + rest.events.len() + rest.unreadable.len(), 3);

    let drained = d.drain().await.unwrap();
    assert_eq!((drained.delivered, drained.failed), (2, 1), "the rest is delivered, the unreadable one fails");
    let got: Vec<i64> = common::handled(&store).await.into_iter().map(|(_, id, _, _)| id).collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&before.id.0) && got.contains(&after.id.0));
    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, poison);
    assert!(dead[0].last_error.contains("cannot be read"), "{}", dead[0].last_error);
    // Retried by hand it fails again, at once, and blocks nothing.
    store.retry_dead(dead[0].id).await.unwrap();
    let again = d.drain().await.unwrap();
    assert_eq!((again.delivered, again.failed), (0, 1));
    assert_eq!(store.dead_letters(None).await.unwrap().letters.len(), 1);
});

// ---- 2. an inbox task never dies unseen ----------------------------------------

#[inbox(subject = "fuse", filter = explodes, max_attempts = 2, backoff = "10ms", backoff_max = "10ms")]
async fn fuse_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(common::note(cx.store(), "fuse_inbox", event, cx.attempt()).await?)
}

fn explodes(event: &Event) -> bool {
    assert!(event.meta("explode").is_none(), "a filter that panics on this event");
    true
}

backend_test!(a_panicking_filter_fails_its_event_and_the_inbox_goes_on, |store| async move {
    common::create_handled(&store).await;
    let d = Dispatcher::builder(store.clone())
        .registry(only("fuse_"))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    d.register().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.clone().run(async move {
        let _ = stopped.await;
    }));
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("fuse", 1), "lit", Actor::system()).metadata(json!({ "explode": true })).await.unwrap();
    let calm = tx.record(Subject::new("fuse", 2), "lit", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let delivered = common::handled(&store).await.iter().any(|(_, id, _, _)| *id == calm.id.0);
        let dead = store.dead_letters(None).await.unwrap().letters;
        if delivered && dead.len() == 1 {
            assert!(dead[0].last_error.contains("filter panicked"), "{}", dead[0].last_error);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivered: {delivered}, dead: {dead:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
});

// ---- 3. savepoints: a failure inside one is that savepoint's ---------------------

backend_test!(a_failed_statement_in_a_savepoint_aborts_only_the_savepoint, |store| async move {
    raw(&store, "CREATE TABLE notes (body TEXT NOT NULL)").await.unwrap();
    refuse_events_where(&store, "action", "refused").await;
    let mut tx = store.begin().await.unwrap();
    tx.record(thing(1), "made", Actor::system()).await.unwrap();
    let mut sp = tx.savepoint().await.unwrap();
    sp.record(thing(1), "made", Actor::system()).await.unwrap();
    assert!(matches!(sp.record(thing(1), "refused", Actor::system()).await, Err(Error::Database(_))));
    assert!(matches!(sp.commit().await, Err(Error::Aborted { .. })), "the savepoint was rolled back");
    tx.record(thing(1), "made", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 2, "the outer transaction's two events, none of the savepoint's");
});

// ---- 12. explicit causes outside inboxes ---------------------------------------

backend_test!(an_explicit_cause_chain_is_held_to_the_store_limit, |store| async move {
    let store = store.max_causation_depth(3);
    let mut tx = store.begin().await.unwrap();
    let mut last = tx.record(thing(1), "made", Actor::system()).await.unwrap();
    for _ in 0..2 {
        last = tx.record(thing(1), "made", Actor::system()).caused_by(&last).await.unwrap();
    }
    let refused = tx.record(thing(1), "made", Actor::system()).caused_by(&last).await;
    assert!(matches!(refused, Err(Error::CausationTooDeep { max: 3, cause, .. }) if cause == last.id), "{refused:?}");
    let batch = tx.record_all([NewEvent::new(thing(2), "made", Actor::system()).caused_by(&last)]).await;
    assert!(matches!(batch, Err(Error::CausationTooDeep { .. })), "{batch:?}");
    tx.commit().await.expect("refused before anything was written");
    assert_eq!(count_events(&store).await, 3);
});

// ---- 13. in-memory databases are one database ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_in_memory_store_is_one_database_whatever_the_cache_mode() {
    for url in ["sqlite::memory:", "sqlite://?mode=memory&cache=private"] {
        let store = Store::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tx = store.begin().await?;
                    tx.record(thing(n), "made", Actor::system()).await?;
                    tx.commit().await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        assert_eq!(count_events(&store).await, 8, "{url}");
    }
}

// ---- 10. far-future retries and pruning -----------------------------------------

#[inbox(subject = "distant", max_attempts = 3)]
async fn distant_retry(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::retry_after(Duration::from_secs(10_000 * 366 * 86_400), "come back in 10,000 years"))
}

backend_test!(a_retry_ten_thousand_years_out_is_not_due_now, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("distant_")).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("distant", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(d.drain().await.unwrap().failed, 1);
    assert_eq!(d.drain().await.unwrap().failed, 0, "parked, not due at once");
    assert_eq!(d.status().await.unwrap()[0].retrying, 1);
});

#[inbox(subject = "doomed", max_attempts = 1)]
async fn doomed_inbox(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::give_up("never"))
}

backend_test!(pruning_before_the_year_ten_thousand_prunes_everything, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("doomed_")).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("doomed", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    assert_eq!(store.dead_letters(None).await.unwrap().letters.len(), 1);
    let y1 = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    assert_eq!(store.prune_dead(y1).await.unwrap(), 0);
    let y10000 = chrono::NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(store.prune_dead(y10000).await.unwrap(), 1);
    assert!(store.dead_letters(None).await.unwrap().letters.is_empty());
});

// ---- 3. what PostgreSQL would refuse is refused before it is sent, everywhere ----

backend_test!(lookups_with_unstorable_text_are_typed_errors, |store| async move {
    let nul = Subject::new("parcel", "1\0");
    let feed = store.feed().subject(&nul).fetch().await;
    assert!(matches!(feed, Err(Error::ContainsNul { .. })), "{feed:?}");
    let feed = store.feed().actor(Actor::new("user", "x".repeat(2000))).fetch().await;
    assert!(matches!(feed, Err(Error::TooLong { field: "actor id", .. })), "{feed:?}");
    let feed = store.feed().actions(["ma\0de"]).fetch().await;
    assert!(matches!(feed, Err(Error::ContainsNul { .. })), "{feed:?}");
    let mut tx = store.begin().await.unwrap();
    let state = tx.state::<ParcelStatus>(&nul).await;
    assert!(matches!(state, Err(Error::ContainsNul { .. })), "{state:?}");
    let fired = ParcelStatus::fire(&mut tx, &nul, ParcelStatus::send, Actor::system()).await;
    assert!(matches!(fired, Err(Error::ContainsNul { .. })), "{fired:?}");
    let throttled = tx.record(thing("\0"), "made", Actor::system()).throttle(Duration::from_secs(1)).await;
    assert!(matches!(throttled, Err(Error::ContainsNul { .. })), "{throttled:?}");
    tx.record(thing(1), "made", Actor::system()).await.expect("the transaction is still usable");
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 1);
});
