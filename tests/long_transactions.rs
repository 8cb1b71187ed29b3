//! Only an event's own transaction delays it (PostgreSQL): a long transaction in this
//! database or another, or a prepared one left behind, holds back no other event.
//! Each test runs on a private cluster, so the transactions it holds open stall
//! nothing of the shared server's other tests.

mod common;

use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, Registry, inbox};
use sqlx::Connection;

use common::cluster::Cluster;
use common::{create_handled, handled, note};

#[inbox(subject = "flow")]
async fn flow_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "flow_inbox", event, cx.attempt()).await?)
}

fn flow_only() -> Registry {
    Registry::collect().unwrap().retain(|d| d.name.ends_with("flow_inbox"))
}

async fn record(store: &Store, n: i64) -> Event {
    let mut tx = store.begin().await.unwrap();
    let e = tx.record(Subject::new("flow", n), "moved", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    e
}

/// A private cluster and a migrated store on its `test` database, with `handled`.
async fn private_store() -> Option<(Cluster, Store)> {
    let cluster = Cluster::start()?;
    let store = Store::connect(&cluster.url("test")).await.unwrap();
    store.migrate().await.unwrap();
    create_handled(&store).await;
    Some((cluster, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_and_prepared_transactions_delay_only_their_own_events_postgres() {
    let Some((cluster, store)) = private_store().await else { return };
    let admin = store.postgres_pool().unwrap().clone();
    sqlx::query("CREATE DATABASE other").execute(&admin).await.unwrap();
    sqlx::query("CREATE TABLE scratch (n INT)").execute(&admin).await.unwrap();
    let d = Dispatcher::builder(store.clone()).registry(flow_only()).build().unwrap();
    d.drain().await.unwrap();

    // Held open: a transaction of this database that recorded an event, one of another
    // database holding a transaction id, and a prepared transaction.
    let mut long = store.begin().await.unwrap();
    let own = long.record(Subject::new("flow", 0), "moved", Actor::system()).await.unwrap();
    let mut elsewhere = sqlx::PgConnection::connect(&cluster.url("other")).await.unwrap();
    sqlx::query("BEGIN").execute(&mut elsewhere).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut elsewhere).await.unwrap();
    let mut preparer = sqlx::PgConnection::connect(&cluster.url("test")).await.unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO scratch VALUES (1); PREPARE TRANSACTION 'left_behind'")
        .execute(&mut preparer)
        .await
        .unwrap();

    // A prepared transaction that recorded an event.
    let mut held = store.begin().await.unwrap();
    held.record(Subject::new("flow", 100), "moved", Actor::system()).await.unwrap();
    sqlx::query("PREPARE TRANSACTION 'holds_an_event'").execute(held.postgres().unwrap()).await.unwrap();
    drop(held);

    // What can hold events back is named: the writers still open, with their process
    // (or prepared name), age and state; not the transactions that recorded nothing.
    let long_pid: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(long.postgres().unwrap()).await.unwrap();
    let writers = store.open_writers().await.unwrap();
    assert_eq!(writers.len(), 2, "{writers:#?}");
    assert_eq!((writers[0].pid, writers[0].state.as_str()), (Some(long_pid), "idle in transaction"));
    assert!(writers[0].query_start.is_some() && writers[0].xid > 0);
    assert_eq!((writers[1].pid, writers[1].gid.as_deref()), (None, Some("holds_an_event")));
    assert_eq!(writers[1].state, "prepared");

    let mut others = Vec::new();
    for n in 1..=20 {
        others.push(record(&store, n).await.id.0);
    }
    let started = Instant::now();
    let drained = d.drain().await.unwrap();
    assert_eq!(drained.delivered, 20, "every committed event, past the open ones");
    assert!(started.elapsed() < Duration::from_secs(3), "no waiting on other transactions: {:?}", started.elapsed());

    // The prepared transaction survives a restart and still holds nothing back.
    cluster.restart();
    for n in 21..=25 {
        others.push(record(&store, n).await.id.0);
    }
    assert_eq!(d.drain().await.unwrap().delivered, 5);

    // The long transaction's own event comes when it commits, never skipped. (Its
    // connection died with the restart: record the same subject again instead.)
    drop(long);
    let _ = own;
    let late = record(&store, 0).await;
    assert_eq!(d.drain().await.unwrap().delivered, 1);
    let mut got: Vec<i64> = handled(&store).await.into_iter().map(|(_, id, _, _)| id).collect();
    got.sort_unstable();
    others.push(late.id.0);
    others.sort_unstable();
    assert_eq!(got, others, "each committed event exactly once");
    let mut admin = sqlx::PgConnection::connect(&cluster.url("test")).await.unwrap();
    sqlx::query("ROLLBACK PREPARED 'left_behind'").execute(&mut admin).await.unwrap();
    sqlx::query("ROLLBACK PREPARED 'holds_an_event'").execute(&mut admin).await.unwrap();
    assert_eq!(store.open_writers().await.unwrap(), [], "no writer left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_committed_after_later_ones_is_delivered_when_it_commits_postgres() {
    let Some((_cluster, store)) = private_store().await else { return };
    let d = Dispatcher::builder(store.clone()).registry(flow_only()).build().unwrap();
    d.drain().await.unwrap();

    // Transaction ids 1 < 2 < 3 taken in that order; 2 commits first, 1 much later.
    let mut first = store.begin().await.unwrap();
    let e1 = first.record(Subject::new("flow", 1), "moved", Actor::system()).await.unwrap();
    let e2 = record(&store, 2).await;
    assert_eq!(d.drain().await.unwrap().delivered, 1, "the committed one, not waiting for the open one");
    let e3 = record(&store, 3).await;
    assert_eq!(d.drain().await.unwrap().delivered, 1);
    first.commit().await.unwrap();
    assert_eq!(d.drain().await.unwrap().delivered, 1, "the late committer, not skipped");
    let got: Vec<i64> = handled(&store).await.into_iter().map(|(_, id, _, _)| id).collect();
    assert_eq!(got, [e2.id.0, e3.id.0, e1.id.0], "in commit order");
}

// ---- restored into another cluster ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restored_into_another_cluster_is_refused_until_fixed_then_loses_nothing_postgres() {
    let Some(old) = Cluster::start() else { return };
    // The old cluster has been around: its transaction ids are far ahead of a new one's.
    old.stop();
    old.resetwal(&["-e", "5"]);
    old.start_again();
    let store = Store::connect(&old.url("test")).await.unwrap();
    store.migrate().await.unwrap();
    create_handled(&store).await;
    let d = Dispatcher::builder(store.clone()).registry(flow_only()).build().unwrap();
    d.drain().await.unwrap();
    let mut all = Vec::new();
    for n in 1..=3 {
        all.push(record(&store, n).await.id.0);
    }
    assert_eq!(d.drain().await.unwrap().delivered, 3);
    for n in 4..=5 {
        all.push(record(&store, n).await.id.0); // recorded, not yet delivered when the dump is taken
    }
    let dump = old.dump("test");
    store.postgres_pool().unwrap().close().await;

    let new = Cluster::start().unwrap();
    new.restore(&dump, "test");
    let restored = Store::connect(&new.url("test")).await.unwrap();
    let refused = restored.migrate().await;
    let Err(herald::Error::TransactionIdsBehind { epoch, .. }) = refused else {
        panic!("a restored database must be refused, not served silently: {refused:?}")
    };
    assert_eq!(epoch, 6);
    let message = herald::Error::TransactionIdsBehind { highest: 1, next: 0, epoch }.to_string();
    assert!(message.contains("pg_resetwal -e 6"), "{message}");
    let d = Dispatcher::builder(restored.clone()).registry(flow_only()).build().unwrap();
    assert!(matches!(d.drain().await, Err(herald::Error::TransactionIdsBehind { .. })));
    // A writer that starts before the fix is refused too: its event would carry a
    // transaction id below every inbox position and never be delivered.
    let mut tx = restored.begin().await.unwrap();
    let written = tx.record(Subject::new("flow", 99), "moved", Actor::system()).await;
    assert!(
        matches!(written, Err(herald::Error::TransactionIdsBehind { .. })),
        "a write before the fix must be refused: {written:?}"
    );
    drop(tx);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM herald_events")
        .fetch_one(restored.postgres_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(stored, 5, "nothing written before the fix");
    restored.postgres_pool().unwrap().close().await;

    // The documented fix, then delivery goes on where the old cluster left it.
    new.stop();
    new.resetwal(&["-e", &epoch.to_string()]);
    new.start_again();
    let restored = Store::connect(&new.url("test")).await.unwrap();
    restored.migrate().await.unwrap();
    for n in 6..=7 {
        all.push(record(&restored, n).await.id.0);
    }
    let d = Dispatcher::builder(restored.clone()).registry(flow_only()).build().unwrap();
    assert_eq!(d.drain().await.unwrap().delivered, 4, "the 2 left undelivered before the dump, and the 2 new ones");
    let mut got: Vec<i64> = handled(&restored).await.into_iter().map(|(_, id, _, _)| id).collect();
    got.sort_unstable();
    assert_eq!(got, all, "every event exactly once across the move");
}

/// Runs a dispatcher of `registry` over `store` (polling only once a minute: only
/// wake-ups move it) with `pg_stat_statements` counting from the moment it is up.
async fn run_counted(
    store: &Store,
    registry: Registry,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<herald::Result<()>>) {
    let pool = store.postgres_pool().unwrap().clone();
    sqlx::query("CREATE EXTENSION pg_stat_statements").execute(&pool).await.unwrap();
    let d = Dispatcher::builder(store.clone()).registry(registry).poll_interval(Duration::from_secs(60));
    let d = d.build().unwrap();
    d.register().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SELECT pg_stat_statements_reset()").execute(&pool).await.unwrap();
    (stop, run)
}

// ---- one snapshot per wake-up, not one per inbox -----------------------------------

macro_rules! many_inboxes {
    ($($name:ident),*) => {$(
        #[inbox(subject = "many")]
        async fn $name(event: &Event, cx: &Context) -> Result<(), InboxError> {
            Ok(note(cx.store(), stringify!($name), event, cx.attempt()).await?)
        }
    )*};
}
many_inboxes!(many_0, many_1, many_2, many_3, many_4, many_5, many_6, many_7);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inboxes_share_one_snapshot_per_wake_up_postgres() {
    let Some((_cluster, store)) = private_store().await else { return };
    let pool = store.postgres_pool().unwrap().clone();
    let registry = Registry::collect().unwrap().retain(|d| d.subject == Some("many"));
    assert_eq!(registry.len(), 8);
    let (stop, run) = run_counted(&store, registry).await;
    let wake_ups = 20;
    for n in 0..wake_ups {
        let mut tx = store.begin().await.unwrap();
        tx.record(Subject::new("many", n), "moved", Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled(&store).await.len() < 8 * wake_ups as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(handled(&store).await.len(), 8 * wake_ups as usize);
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(calls), 0)::bigint FROM pg_stat_statements \
         WHERE query LIKE 'SELECT%pg_current_snapshot()%' AND query NOT LIKE '%pg_stat_statements%' \
         AND query NOT LIKE '%pg_notify%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!("{snapshots} snapshot queries for {wake_ups} wake-ups of 8 inboxes");
    assert!(snapshots <= 2 * wake_ups, "{snapshots} snapshot queries for {wake_ups} wake-ups of 8 inboxes");
}

// ---- bookkeeping through a long snapshot --------------------------------------------

/// A read-only snapshot held open keeps every dead row version of `herald_inboxes`
/// (nothing can be pruned that the snapshot might still see), so the table grows by
/// one row version per write for as long as it is held. Two dispatchers, eight inboxes
/// of which one is concerned, 100+ events a second each in its own transaction, a
/// 60 s `REPEATABLE READ` snapshot: the table must stay under 1 MB. Each batch used to
/// write the row twice (lease, then checkpoint and release): 1.7 MB, 1.48 writes per
/// event. A stream that caught up now keeps its lease a moment and writes its
/// checkpoint at most every 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inbox_table_stays_small_through_a_long_snapshot_postgres() {
    let Some((cluster, store)) = private_store().await else { return };
    let pool = store.postgres_pool().unwrap().clone();
    let registry = || {
        Registry::collect()
            .unwrap()
            .retain(|d| d.name.ends_with("flow_inbox") || (d.subject == Some("many") && !d.name.ends_with("many_7")))
    };
    assert_eq!(registry().len(), 8);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let d = Dispatcher::builder(store.clone()).registry(registry()).poll_interval(Duration::from_millis(250));
        let d = d.build().unwrap();
        d.register().await.unwrap();
        let mut stopped = stopped.clone();
        runs.push(tokio::spawn(d.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let size = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size('herald_inboxes')").fetch_one(&pool).await.unwrap()
    };
    let updates = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'herald_inboxes'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = size(pool.clone()).await;
    let updates_before = updates(pool.clone()).await;

    let mut snapshot = sqlx::PgConnection::connect(&cluster.url("test")).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ").execute(&mut snapshot).await.unwrap();
    sqlx::query("SELECT count(*) FROM herald_events").execute(&mut snapshot).await.unwrap();
    let held = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(8));
    let mut recorded = 0;
    while held.elapsed() < Duration::from_secs(60) {
        ticks.tick().await;
        record(&store, recorded).await;
        recorded += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (handled(&store).await.len() as i64) < recorded && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = size(pool.clone()).await;
    // Statistics reach the view at the end of each statement's transaction, give or take.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes = updates(pool.clone()).await - updates_before;
    sqlx::query("COMMIT").execute(&mut snapshot).await.unwrap();
    stop.send(true).unwrap();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let got = handled(&store).await;
    eprintln!(
        "{recorded} events over 60 s under a held snapshot: herald_inboxes {before} -> {grown} bytes, \
         {writes} row writes ({:.2} per event)",
        writes as f64 / recorded as f64
    );
    let mut ids: Vec<i64> = got.iter().map(|h| h.1).collect();
    ids.sort_unstable();
    let runs = ids.len();
    ids.dedup();
    eprintln!("{} repeats", runs - ids.len());
    assert_eq!(ids.len() as i64, recorded, "every event delivered");
    // At least once: a worker that stalls past its lease on a loaded machine has its
    // unfinished events made again by the other. Not more than that.
    assert!(runs - ids.len() <= 100, "{} repeats without a crash", runs - ids.len());
    assert!(recorded >= 6_000, "at least 100 events a second: {recorded}");
    assert!(grown < 1 << 20, "herald_inboxes grew to {grown} bytes through a 60 s snapshot");
}

// ---- a remote wake-up brings its view ---------------------------------------------

/// Another process's commits are announced by a `NOTIFY` whose payload is a snapshot
/// taken after them: the woken dispatcher reads with it and asks for no view of its
/// own (one round trip less between the commit and the handler). It used to ask once
/// per wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_wake_up_brings_its_view_postgres() {
    let Some((cluster, reader)) = private_store().await else { return };
    let writer = Store::connect(&cluster.url("test")).await.unwrap(); // another process, as far as wake-ups go
    let pool = reader.postgres_pool().unwrap().clone();
    let (stop, run) = run_counted(&reader, flow_only()).await;
    let wake_ups = 20;
    for n in 0..wake_ups {
        record(&writer, n).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while (handled(&reader).await.len() as i64) <= n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(handled(&reader).await.len(), wake_ups as usize, "every event, woken by NOTIFY alone");
    let asked: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(calls), 0)::bigint FROM pg_stat_statements \
         WHERE query LIKE 'SELECT pg_current_snapshot()%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!("{asked} view queries for {wake_ups} remote wake-ups");
    assert!(asked <= 3, "{asked} view queries for {wake_ups} remote wake-ups");
}
