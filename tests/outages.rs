//! A database that is down when a worker starts: the store is made lazily and the
//! dispatcher waits for the database (with backoff, logged) instead of failing at
//! once, so a worker needs no retry loop of its own. On a private cluster, stopped
//! and started by the test.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, Registry, inbox};

use common::cluster::Cluster;

static SEEN: Mutex<Vec<EventId>> = Mutex::new(Vec::new());

#[inbox(subject = "outage", start_from = "beginning")]
async fn outage_seen(event: &Event, _cx: &Context) -> Result<(), InboxError> {
    SEEN.lock().unwrap().push(event.id);
    Ok(())
}

fn only_outage() -> Registry {
    Registry::collect().expect("registry").retain(|d| d.name.ends_with("outage_seen"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_started_before_its_database_waits_for_it_postgres() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.url("test");
    let admin = Store::connect(&url).await.unwrap();
    admin.migrate().await.unwrap();
    let mut tx = admin.begin().await.unwrap();
    let before = tx.record(Subject::new("outage", 1), "happened", Actor::system()).await.unwrap().id;
    tx.commit().await.unwrap();
    admin.postgres_pool().unwrap().close().await;
    cluster.stop();

    // Down: connect says why at once; a lazy store is made anyway.
    let err = Store::connect(&url).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    let store = Store::connect_lazy(&url).await.unwrap();
    let d = Dispatcher::builder(store.clone()).registry(only_outage()).poll_interval(Duration::from_millis(50)).build();
    let d = d.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!run.is_finished(), "run waits for the database instead of failing");

    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !SEEN.lock().unwrap().contains(&before) {
        assert!(Instant::now() < deadline, "nothing delivered after the database came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tx = store.begin().await.unwrap();
    let after = tx.record(Subject::new("outage", 2), "happened", Actor::system()).await.unwrap().id;
    tx.commit().await.unwrap();
    while !SEEN.lock().unwrap().contains(&after) {
        assert!(Instant::now() < deadline, "new events not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // Still waiting when told to stop: it stops at once, without error.
    cluster.stop();
    let store = Store::connect_lazy(&url).await.unwrap();
    let d = Dispatcher::builder(store).registry(only_outage()).build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(2), "stopped in {:?}", asked.elapsed());
    cluster.start_again();
}

#[tokio::test]
async fn a_lazy_store_still_checks_its_url() {
    let err = Store::connect_lazy("mysql://localhost/db").await.unwrap_err();
    assert!(matches!(err, herald::Error::UnsupportedUrl(_)), "{err:?}");
    let err = Store::connect_lazy("postgres://[::1").await.unwrap_err();
    assert!(matches!(err, herald::Error::Database(_)), "{err:?}");
}
