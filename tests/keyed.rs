//! Delivery by key: the events of one key (by default the subject) reach an inbox in
//! commit order, one at a time, across retries; a failing event holds back its own
//! key and no other; different keys, and a slow event, hold back nothing else.

mod common;

use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, Registry, inbox};
use serde_json::json;

/// Creates `runs`: one row per handler run, numbered in the order they started.
async fn create_runs(store: &Store) {
    let sql = match store.backend() {
        herald::Backend::Sqlite => {
            "CREATE TABLE runs (n INTEGER PRIMARY KEY AUTOINCREMENT, inbox TEXT NOT NULL, subject TEXT NOT NULL, \
             seq BIGINT NOT NULL, attempt INTEGER NOT NULL, ok BOOLEAN NOT NULL)"
        }
        _ => {
            "CREATE TABLE runs (n BIGSERIAL PRIMARY KEY, inbox TEXT NOT NULL, subject TEXT NOT NULL, \
             seq BIGINT NOT NULL, attempt INTEGER NOT NULL, ok BOOLEAN NOT NULL)"
        }
    };
    common::execute(store, sql).await.expect("create runs");
}

/// Notes a run of `inbox` on `event` (its `seq` metadata) before the handler returns.
async fn run_noted(store: &Store, inbox: &str, event: &Event, attempt: u32, ok: bool) -> Result<(), sqlx::Error> {
    let seq = event.meta("seq").and_then(|v| v.as_i64()).unwrap_or(-1);
    let (subject, attempt) = (event.subject.id.clone(), attempt as i32);
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => {
            sqlx::query("INSERT INTO runs (inbox, subject, seq, attempt, ok) VALUES (?, ?, ?, ?, ?)")
                .bind(inbox)
                .bind(subject)
                .bind(seq)
                .bind(attempt)
                .bind(ok)
                .execute(p)
                .await?;
        }
        (_, Some(p)) => {
            sqlx::query("INSERT INTO runs (inbox, subject, seq, attempt, ok) VALUES ($1, $2, $3, $4, $5)")
                .bind(inbox)
                .bind(subject)
                .bind(seq)
                .bind(attempt)
                .bind(ok)
                .execute(p)
                .await?;
        }
        _ => unreachable!("a store has one pool"),
    }
    Ok(())
}

/// `(subject, seq, attempt, ok)` of `inbox`'s runs, in the order they started.
async fn runs(store: &Store, inbox: &str) -> Vec<(String, i64, i32, bool)> {
    let (lite, pg) = (
        "SELECT subject, seq, attempt, ok FROM runs WHERE inbox = ? ORDER BY n",
        "SELECT subject, seq, attempt, ok FROM runs WHERE inbox = $1 ORDER BY n",
    );
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_as(lite).bind(inbox).fetch_all(p).await,
        (_, Some(p)) => sqlx::query_as(pg).bind(inbox).fetch_all(p).await,
        _ => unreachable!("a store has one pool"),
    }
    .expect("read runs")
}

/// Fails the first `fail` attempts (metadata), then succeeds.
async fn flaky(inbox: &str, event: &Event, cx: &Context) -> Result<(), InboxError> {
    let fail = event.meta("fail").and_then(|v| v.as_u64()).unwrap_or(0);
    let ok = u64::from(cx.attempt()) > fail;
    run_noted(cx.store(), inbox, event, cx.attempt(), ok).await?;
    if ok { Ok(()) } else { Err(InboxError::retry(format!("attempt {} of seq {:?}", cx.attempt(), event.meta("seq")))) }
}

#[inbox(subject = "ord", backoff = "5ms", backoff_max = "20ms", max_attempts = 100)]
async fn ord_by_subject(event: &Event, cx: &Context) -> Result<(), InboxError> {
    flaky("ord_by_subject", event, cx).await
}

#[inbox(subject = "ord", key = "none", backoff = "5ms", backoff_max = "20ms", max_attempts = 100)]
async fn ord_unordered(event: &Event, cx: &Context) -> Result<(), InboxError> {
    flaky("ord_unordered", event, cx).await
}

/// Runs `d` in the background until the returned sender fires.
fn start(d: &Dispatcher) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<herald::Result<()>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.clone().run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

fn only(names: &'static [&'static str]) -> Registry {
    Registry::collect()
        .expect("registry")
        .retain(move |d| d.name.rsplit("::").next().is_some_and(|n| names.contains(&n)))
}

/// Records `per` events on each of `subjects` subjects, interleaved, one transaction
/// each; about one in five fails its first one or two attempts.
async fn record_interleaved(store: &Store, kind: &str, subjects: u64, per: u64) -> u64 {
    let mut failing = 0;
    for seq in 0..per {
        for s in 0..subjects {
            let fail = match (seq * 7 + s * 13) % 10 {
                0 => 2,
                1 => 1,
                _ => 0,
            };
            failing += u64::from(fail > 0);
            let mut tx = store.begin().await.unwrap();
            tx.record(Subject::new(kind, s), "changed", Actor::system())
                .metadata(json!({"seq": seq, "fail": fail}))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
    failing
}

/// Every subject's runs: in commit order (seq never goes back), each event run until
/// it succeeded before the next one of its subject started, none missing.
fn assert_in_order_per_subject(runs: &[(String, i64, i32, bool)], subjects: u64, per: u64) {
    for s in 0..subjects {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == s.to_string()).collect();
        let mut expected = 0;
        for (i, (_, seq, attempt, ok)) in mine.iter().enumerate() {
            assert_eq!(
                *seq, expected,
                "subject {s}: run {i} is seq {seq} (attempt {attempt}), expected {expected}: {mine:?}"
            );
            if *ok {
                expected += 1;
            }
        }
        assert_eq!(expected as u64, per, "subject {s}: every event delivered: {mine:?}");
    }
}

async fn wait_for_successes(store: &Store, inbox: &str, n: usize, d: Option<&Dispatcher>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = d {
            d.drain().await.unwrap();
        }
        let done = runs(store, inbox).await.iter().filter(|r| r.3).count();
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{inbox}: {done} of {n} delivered after 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

backend_test!(each_subject_in_commit_order_across_retries_under_drain, |store| async move {
    create_runs(&store).await;
    let d = Dispatcher::builder(store.clone()).registry(only(&["ord_by_subject"])).concurrency(8).build().unwrap();
    d.register().await.unwrap();
    let failing = record_interleaved(&store, "ord", 12, 8).await;
    assert!(failing > 10, "failures injected: {failing}");
    wait_for_successes(&store, "ord_by_subject", 96, Some(&d)).await;
    assert_in_order_per_subject(&runs(&store, "ord_by_subject").await, 12, 8);
    assert_eq!(store.blocked_keys(None).await.unwrap(), []);
});

backend_test!(each_subject_in_commit_order_across_retries_under_run, |store| async move {
    create_runs(&store).await;
    let d = Dispatcher::builder(store.clone())
        .registry(only(&["ord_by_subject"]))
        .concurrency(16)
        .batch_size(7)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    d.register().await.unwrap();
    let (stop, run) = start(&d);
    record_interleaved(&store, "ord", 20, 10).await;
    wait_for_successes(&store, "ord_by_subject", 200, None).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_in_order_per_subject(&runs(&store, "ord_by_subject").await, 20, 10);
});

backend_test!(without_a_key_a_failure_holds_nothing_back, |store| async move {
    create_runs(&store).await;
    let d = Dispatcher::builder(store.clone()).registry(only(&["ord_unordered"])).build().unwrap();
    d.register().await.unwrap();
    for (seq, fail) in [(0, 1000), (1, 0), (2, 0)] {
        let mut tx = store.begin().await.unwrap();
        tx.record(Subject::new("ord", 1), "changed", Actor::system())
            .metadata(json!({"seq": seq, "fail": fail}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    d.drain().await.unwrap();
    let got = runs(&store, "ord_unordered").await;
    let mut ok: Vec<i64> = got.iter().filter(|r| r.3).map(|r| r.1).collect();
    ok.sort();
    assert_eq!(ok, [1, 2], "the later events of the subject went on (in no order): {got:?}");
    assert_eq!(store.blocked_keys(None).await.unwrap(), [], "key = \"none\" blocks nothing");
});

#[inbox(subject = "blk", backoff = "1h", max_attempts = 5)]
async fn blk_sync(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let ok = event.meta("bad") != Some(&json!(true));
    run_noted(cx.store(), "blk_sync", event, cx.attempt(), ok).await?;
    if ok { Ok(()) } else { Err(InboxError::retry("the remote said 422")) }
}

backend_test!(a_failing_event_blocks_its_key_only_and_can_be_skipped, |store| async move {
    create_runs(&store).await;
    let d = Dispatcher::builder(store.clone()).registry(only(&["blk_sync"])).build().unwrap();
    d.register().await.unwrap();
    let record = |subject: u64, seq: i64, bad: bool| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let e = tx
                .record(Subject::new("blk", subject), "changed", Actor::system())
                .metadata(json!({"seq": seq, "bad": bad}))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            e
        }
    };
    let head = record(1, 0, true).await;
    record(2, 0, false).await;
    record(1, 1, false).await;
    record(2, 1, false).await;
    d.drain().await.unwrap();
    // A later batch: subject 1 is held back by the database's row now.
    record(1, 2, false).await;
    record(2, 2, false).await;
    d.drain().await.unwrap();

    let got = runs(&store, "blk_sync").await;
    let ok = |s: &str| got.iter().filter(|r| r.0 == s && r.3).map(|r| r.1).collect::<Vec<_>>();
    assert_eq!(ok("2"), [0, 1, 2], "the other key flows");
    assert_eq!(ok("1"), Vec::<i64>::new(), "the failing key waits: {got:?}");
    assert_eq!(got.iter().filter(|r| r.0 == "1").count(), 1, "only its head ran, once");

    let blocked = store.blocked_keys(Some("keyed::blk_sync")).await.unwrap();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    let b = &blocked[0];
    assert_eq!((b.key.as_str(), b.head, b.attempts, b.waiting), ("blk:1", head.id, 1, 2));
    assert_eq!(b.last_error, "the remote said 422");
    let status = d.status().await.unwrap();
    assert_eq!(status[0].retrying, 3, "the head and the two behind it");

    // Retrying by hand runs the head now (it fails again); skipping it lets the rest go, in order.
    assert_eq!(store.retry_key("keyed::blk_sync", "blk:1").await.unwrap(), head.id);
    d.drain().await.unwrap();
    assert_eq!(store.blocked_keys(None).await.unwrap()[0].attempts, 2);
    assert_eq!(store.skip_key("keyed::blk_sync", "blk:1").await.unwrap(), head.id);
    d.drain().await.unwrap();
    let got = runs(&store, "blk_sync").await;
    let ok1: Vec<i64> = got.iter().filter(|r| r.0 == "1" && r.3).map(|r| r.1).collect();
    assert_eq!(ok1, [1, 2]);
    assert_eq!(store.blocked_keys(None).await.unwrap(), []);
    let dead = store.dead_letters(Some("keyed::blk_sync")).await.unwrap().letters;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].event_id, dead[0].key.as_deref()), (head.id, Some("blk:1")));
    assert!(dead[0].last_error.starts_with("skipped by hand: "), "{}", dead[0].last_error);
    assert!(matches!(store.skip_key("keyed::blk_sync", "blk:1").await, Err(herald::Error::NotBlocked { .. })));
});

#[inbox(subject = "slow", timeout = "20s")]
async fn slow_one(event: &Event, cx: &Context) -> Result<(), InboxError> {
    if event.meta("slow") == Some(&json!(true)) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    run_noted(cx.store(), "slow_one", event, cx.attempt(), true).await?;
    Ok(())
}

backend_test!(a_slow_event_holds_back_neither_other_keys_nor_later_reads, |store| async move {
    create_runs(&store).await;
    let d = Dispatcher::builder(store.clone())
        .registry(only(&["slow_one"]))
        .batch_size(10)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    d.register().await.unwrap();
    let (stop, run) = start(&d);
    let record = |subject: u64, seq: i64, slow: bool| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            tx.record(Subject::new("slow", subject), "changed", Actor::system())
                .metadata(json!({"seq": seq, "slow": slow}))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let t = Instant::now();
    record(0, 0, true).await;
    record(0, 1, false).await; // behind the slow one: its key waits
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Later commits, in several batches, while the slow event runs.
    for i in 1..=40 {
        record(i, 0, false).await;
    }
    wait_for_successes(&store, "slow_one", 40, None).await;
    let quick = t.elapsed();
    let got = runs(&store, "slow_one").await;
    assert!(quick < Duration::from_millis(2000), "other keys waited for the slow one: {quick:?}");
    assert!(got.iter().all(|r| r.0 != "0"), "the slow key's later event waits behind it: {got:?}");
    wait_for_successes(&store, "slow_one", 42, None).await;
    let zero: Vec<i64> = runs(&store, "slow_one").await.iter().filter(|r| r.0 == "0").map(|r| r.1).collect();
    assert_eq!(zero, [0, 1]);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    // Everything passed: nothing is left for the checkpoint to re-deliver.
    let status = d.status().await.unwrap();
    assert_eq!((status[0].pending, status[0].retrying), (Some(0), 0));
    assert_eq!(d.drain().await.unwrap().delivered, 0);
});
