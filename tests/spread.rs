//! Spread inboxes (`#[inbox(spread = true)]`): the lease holder only copies events
//! into delivery rows, and every worker claims them, each key's oldest only. Several
//! dispatchers (worker ids of their own, as processes would be) share one inbox's
//! work; each key stays in commit order across retries; a failing event blocks its
//! key only; a stopping worker gives back what it claimed and did not start.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, Registry, inbox};
use serde_json::json;

/// Which worker ran a delivery: a resource of each dispatcher.
struct Worker(&'static str);

async fn create_runs(store: &Store) {
    let sql = match store.backend() {
        herald::Backend::Sqlite => {
            "CREATE TABLE runs (n INTEGER PRIMARY KEY AUTOINCREMENT, worker TEXT NOT NULL, subject TEXT NOT NULL, \
             seq BIGINT NOT NULL, attempt INTEGER NOT NULL, ok BOOLEAN NOT NULL, event_id BIGINT NOT NULL)"
        }
        _ => {
            "CREATE TABLE runs (n BIGSERIAL PRIMARY KEY, worker TEXT NOT NULL, subject TEXT NOT NULL, \
             seq BIGINT NOT NULL, attempt INTEGER NOT NULL, ok BOOLEAN NOT NULL, event_id BIGINT NOT NULL)"
        }
    };
    common::execute(store, sql).await.expect("create runs");
}

/// Notes a run (before the handler returns): which worker, which event, and whether
/// it succeeds. Fails the first `fail` attempts (metadata); sleeps `ms` first.
async fn noted_run(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let ms = event.meta("ms").and_then(|v| v.as_u64()).unwrap_or(0);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fail = event.meta("fail").and_then(|v| v.as_u64()).unwrap_or(0);
    let ok = u64::from(cx.attempt()) > fail;
    let worker = cx.resource::<Worker>()?.0;
    let seq = event.meta("seq").and_then(|v| v.as_i64()).unwrap_or(-1);
    let (subject, attempt, id) = (event.subject.id.clone(), cx.attempt() as i32, event.id.0);
    let sql = match cx.store().backend() {
        herald::Backend::Sqlite => {
            "INSERT INTO runs (worker, subject, seq, attempt, ok, event_id) VALUES (?, ?, ?, ?, ?, ?)"
        }
        _ => "INSERT INTO runs (worker, subject, seq, attempt, ok, event_id) VALUES ($1, $2, $3, $4, $5, $6)",
    };
    let store = cx.store();
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => {
            sqlx::query(sql).bind(worker).bind(subject).bind(seq).bind(attempt).bind(ok).bind(id).execute(p).await?;
        }
        (_, Some(p)) => {
            sqlx::query(sql).bind(worker).bind(subject).bind(seq).bind(attempt).bind(ok).bind(id).execute(p).await?;
        }
        _ => unreachable!("a store has one pool"),
    }
    if ok { Ok(()) } else { Err(InboxError::retry(format!("attempt {attempt} of seq {seq}"))) }
}

#[inbox(subject = "spr", spread = true, backoff = "5ms", backoff_max = "20ms", max_attempts = 100)]
async fn spread_sync(event: &Event, cx: &Context) -> Result<(), InboxError> {
    noted_run(event, cx).await
}

#[inbox(subject = "spk", spread = true, backoff = "1h", max_attempts = 5)]
async fn spread_blocking(event: &Event, cx: &Context) -> Result<(), InboxError> {
    noted_run(event, cx).await
}

/// The rows of a query built by the test, on either backend.
async fn read<T>(store: &Store, sql: String) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    T: Send + Unpin,
{
    let mut tx = store.begin().await.unwrap();
    let rows = tx.query(sqlx::AssertSqlSafe(sql)).fetch_all().await.expect("read");
    tx.commit().await.unwrap();
    rows
}

/// `(worker, subject, seq, attempt, ok, event_id)` of every run, in the order they were noted.
async fn runs(store: &Store) -> Vec<(String, String, i64, i32, bool, i64)> {
    read(store, "SELECT worker, subject, seq, attempt, ok, event_id FROM runs ORDER BY n".to_owned()).await
}

fn only(name: &'static str) -> Registry {
    Registry::collect().expect("registry").retain(move |d| d.name.rsplit("::").next() == Some(name))
}

fn worker(store: &Store, name: &'static str, inbox: &'static str, concurrency: usize) -> Dispatcher {
    Dispatcher::builder(store.clone())
        .registry(only(inbox))
        .resource(Worker(name))
        .worker_id(name)
        .concurrency(concurrency)
        .batch_size(20)
        .lease(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn start(d: &Dispatcher) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<herald::Result<()>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.clone().run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

/// Records `per` events on each of `subjects` subjects of `kind`, interleaved, one
/// transaction each, with metadata from `meta(subject, seq)`.
async fn record(store: &Store, kind: &str, subjects: u64, per: i64, meta: impl Fn(u64, i64) -> serde_json::Value) {
    for seq in 0..per {
        for s in 0..subjects {
            let mut tx = store.begin().await.unwrap();
            tx.record(Subject::new(kind, s), "changed", Actor::system()).metadata(meta(s, seq)).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// Waits until `n` distinct events have succeeded.
async fn wait_for_successes(store: &Store, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok: Vec<i64> = runs(store).await.iter().filter(|r| r.4).map(|r| r.5).collect();
        ok.sort_unstable();
        ok.dedup();
        let done = ok.len();
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {n} delivered after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each subject's runs in commit order: seq never goes back, an event runs until it
/// succeeds before the next of its subject starts, every event delivered once.
fn assert_in_order(runs: &[(String, String, i64, i32, bool, i64)], subjects: u64, per: i64) {
    for s in 0..subjects {
        let mine: Vec<_> = runs.iter().filter(|r| r.1 == s.to_string()).collect();
        let mut expected = 0;
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(
                r.2, expected,
                "subject {s}: run {i} is seq {} (attempt {}), expected {expected}: {mine:?}",
                r.2, r.3
            );
            if r.4 {
                expected += 1;
            }
        }
        assert_eq!(expected, per, "subject {s}: every event delivered: {mine:?}");
    }
}

backend_test!(a_spread_inbox_delivers_everything_once_under_drain, |store| async move {
    create_runs(&store).await;
    let d = worker(&store, "a", "spread_sync", 4);
    d.register().await.unwrap();
    record(&store, "spr", 10, 30, |_, seq| json!({"seq": seq})).await;
    let drained = d.drain().await.unwrap();
    assert_eq!(drained.delivered, 300);
    let got = runs(&store).await;
    assert_eq!(got.len(), 300, "each event ran once");
    assert_in_order(&got, 10, 30);
    // Nothing left behind: the rows were completed, the checkpoint passed them all.
    let status = d.status().await.unwrap();
    assert_eq!((status[0].pending, status[0].retrying, status[0].dead), (Some(0), 0, 0), "{status:?}");
    assert_eq!(d.drain().await.unwrap().delivered, 0);
});

backend_test!(workers_share_a_spread_inbox_and_keep_each_subject_in_order, |store| async move {
    create_runs(&store).await;
    let workers: Vec<Dispatcher> = ["a", "b", "c"].into_iter().map(|w| worker(&store, w, "spread_sync", 4)).collect();
    workers[0].register().await.unwrap();
    let running: Vec<_> = workers.iter().map(start).collect();
    // 20 ms handlers, about one in five failing once or twice: every worker gets a share.
    record(&store, "spr", 30, 8, |s, seq| {
        let fail = match (seq as u64 * 7 + s * 13) % 10 {
            0 => 2,
            1 => 1,
            _ => 0,
        };
        json!({"seq": seq, "fail": fail, "ms": 20})
    })
    .await;
    wait_for_successes(&store, 240).await;
    for (stop, run) in running {
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
    }
    let got = runs(&store).await;
    // No repeats either: with several workers, a pump that leased the row after
    // another moved it used to read from its newer snapshot back to an older view,
    // moving the checkpoint back and copying events again.
    assert_in_order(&got, 30, 8);
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for r in got.iter().filter(|r| r.4) {
        *per_worker.entry(r.0.as_str()).or_default() += 1;
    }
    for w in ["a", "b", "c"] {
        let n = per_worker.get(w).copied().unwrap_or(0);
        assert!(n >= 240 / 10, "worker {w} ran {n} of 240 deliveries: the inbox was not spread: {per_worker:?}");
    }
    let status = workers[0].status().await.unwrap();
    assert_eq!((status[0].pending, status[0].retrying, status[0].dead), (Some(0), 0, 0), "{status:?}");
});

backend_test!(a_failing_event_of_a_spread_inbox_blocks_its_key_only, |store| async move {
    create_runs(&store).await;
    let d = worker(&store, "a", "spread_blocking", 4);
    d.register().await.unwrap();
    // Subject 1's first event fails for good; subjects 0 and 2 flow.
    record(&store, "spk", 3, 4, |s, seq| json!({"seq": seq, "fail": if s == 1 && seq == 0 { 1000 } else { 0 }})).await;
    d.drain().await.unwrap();
    let got = runs(&store).await;
    let ok = |s: &str| got.iter().filter(|r| r.1 == s && r.4).map(|r| r.2).collect::<Vec<_>>();
    assert_eq!((ok("0"), ok("2")), (vec![0, 1, 2, 3], vec![0, 1, 2, 3]), "the other keys flow: {got:?}");
    assert_eq!(got.iter().filter(|r| r.1 == "1").count(), 1, "only the failing head ran: {got:?}");

    // Listed as blocked (the head failed); keys merely queued are not.
    let blocked = store.blocked_keys(None).await.unwrap();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!((blocked[0].key.as_str(), blocked[0].attempts, blocked[0].waiting), ("spk:1", 1, 3));
    assert_eq!(blocked[0].last_error, "attempt 1 of seq 0");

    // Skipped by hand, the rest of the key goes, in order.
    store.skip_key("spread::spread_blocking", "spk:1").await.unwrap();
    d.drain().await.unwrap();
    let got = runs(&store).await;
    let ok1: Vec<i64> = got.iter().filter(|r| r.1 == "1" && r.4).map(|r| r.2).collect();
    assert_eq!(ok1, [1, 2, 3]);
    assert_eq!(store.blocked_keys(None).await.unwrap(), []);
});

backend_test!(queued_but_not_failed_keys_are_not_blocked, |store| async move {
    create_runs(&store).await;
    // One slot and slow handlers: the pump copies everything, the rows wait their turn.
    let d = worker(&store, "a", "spread_sync", 1);
    d.register().await.unwrap();
    record(&store, "spr", 2, 3, |_, seq| json!({"seq": seq, "ms": 400})).await;
    let (stop, run) = start(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.status().await.unwrap();
        if status[0].pending == Some(0) {
            assert!(status[0].retrying >= 5, "the rows wait in herald_deliveries: {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the pump copied nothing: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Merely queued: no key is blocked, none can be retried or skipped.
    assert_eq!(store.blocked_keys(None).await.unwrap(), []);
    let skip = store.skip_key("spread::spread_sync", "spr:1").await;
    assert!(matches!(skip, Err(herald::Error::NotBlocked { .. })), "{skip:?}");
    wait_for_successes(&store, 6).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_in_order(&runs(&store).await, 2, 3);
});

/// Deliveries claimed by worker `w` (its id, plus the per-run suffix): delivery rows,
/// and the events of the chunks it holds.
async fn claims_of(store: &Store, w: &str) -> i64 {
    let events = match store.backend() {
        herald::Backend::Sqlite => "json_array_length(events)",
        _ => "cardinality(events)",
    };
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM herald_deliveries WHERE lease_owner LIKE '{w}%') \
         + (SELECT COALESCE(SUM({events}), 0) FROM herald_chunks WHERE lease_owner LIKE '{w}%')"
    );
    read::<(i64,)>(store, sql).await[0].0
}

backend_test!(a_stopping_worker_gives_back_what_it_claimed_and_did_not_start, |store| async move {
    create_runs(&store).await;
    // One slot, slow handlers: a claims a little ahead of what it runs.
    let a = worker(&store, "a", "spread_sync", 1);
    a.register().await.unwrap();
    record(&store, "spr", 20, 1, |_, seq| json!({"seq": seq, "ms": 2000})).await;
    let (stop, run) = start(&a);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = claims_of(&store, "a").await;
    assert!(before >= 2, "one running, at least one claimed ahead: {before}");
    // a stops while its first delivery runs: what it claimed and did not start is free
    // for any worker now, not when a's lease (5 s) runs out or a's run ends.
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(claims_of(&store, "a").await, 1, "a holds only the delivery it runs");
    let b = worker(&store, "b", "spread_sync", 20);
    let drained = b.drain().await.unwrap();
    run.await.unwrap().unwrap();
    let got = runs(&store).await;
    let by_a = got.iter().filter(|r| r.0 == "a").count();
    assert_eq!(by_a, 1, "a finished the one it was running: {got:?}");
    assert_eq!(drained.delivered, 19, "b ran everything else: {got:?}");
    let mut ids: Vec<i64> = got.iter().map(|r| r.5).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every event ran once: {got:?}");
});

#[inbox(subject = "spn", spread = true, key = "none")]
async fn spread_unordered(event: &Event, cx: &Context) -> Result<(), InboxError> {
    noted_run(event, cx).await
}

/// Counts the rows ever inserted into `herald_deliveries` and `herald_chunks` (a
/// trigger on each notes its table in `inserted`).
async fn count_inserts(store: &Store) {
    common::execute(store, "CREATE TABLE inserted (tbl TEXT NOT NULL)").await.expect("create inserted");
    match store.backend() {
        herald::Backend::Sqlite => {
            for sql in [
                "CREATE TRIGGER note_delivery AFTER INSERT ON herald_deliveries \
                 BEGIN INSERT INTO inserted (tbl) VALUES ('herald_deliveries'); END",
                "CREATE TRIGGER note_chunk AFTER INSERT ON herald_chunks \
                 BEGIN INSERT INTO inserted (tbl) VALUES ('herald_chunks'); END",
            ] {
                common::execute(store, sql).await.expect("create trigger");
            }
        }
        _ => {
            for sql in [
                "CREATE FUNCTION note_insert() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO inserted (tbl) VALUES (TG_TABLE_NAME); RETURN NULL; END $$",
                "CREATE TRIGGER note_delivery AFTER INSERT ON herald_deliveries FOR EACH ROW EXECUTE FUNCTION note_insert()",
                "CREATE TRIGGER note_chunk AFTER INSERT ON herald_chunks FOR EACH ROW EXECUTE FUNCTION note_insert()",
            ] {
                common::execute(store, sql).await.expect("create trigger");
            }
        }
    }
}

/// Rows inserted into `table` since [`count_inserts`].
async fn inserts(store: &Store, table: &str) -> i64 {
    read::<(i64,)>(store, format!("SELECT COUNT(*) FROM inserted WHERE tbl = '{table}'")).await[0].0
}

// The pump copied each event into a delivery row of its own, which a worker then
// claimed (a second write) and deleted (a third): a noop spread inbox drained at a
// quarter of a raw SKIP LOCKED loop. It now writes a chunk per partition of keys.
backend_test!(a_spread_inbox_copies_its_events_in_chunks_not_rows, |store| async move {
    create_runs(&store).await;
    count_inserts(&store).await;
    let d = worker(&store, "a", "spread_sync", 8);
    d.register().await.unwrap();
    record(&store, "spr", 10, 30, |_, seq| json!({"seq": seq})).await;
    let drained = d.drain().await.unwrap();
    assert_eq!(drained.delivered, 300);
    assert_in_order(&runs(&store).await, 10, 30);
    let (rows, chunks) = (inserts(&store, "herald_deliveries").await, inserts(&store, "herald_chunks").await);
    assert_eq!(rows, 0, "no delivery row for an event that succeeded");
    // 10 subjects: at most 10 partitions per copy; the pump copies what the queue
    // has room for (1,000 events) in one write, so one chunk per subject here.
    assert!((1..=30).contains(&chunks), "{chunks} chunks for 300 events of 10 subjects");
});

backend_test!(a_keyless_spread_inbox_delivers_everything_once_across_workers, |store| async move {
    create_runs(&store).await;
    let workers: Vec<Dispatcher> = ["a", "b"].into_iter().map(|w| worker(&store, w, "spread_unordered", 4)).collect();
    workers[0].register().await.unwrap();
    let running: Vec<_> = workers.iter().map(start).collect();
    record(&store, "spn", 4, 20, |_, seq| json!({"seq": seq, "ms": 5})).await;
    wait_for_successes(&store, 80).await;
    for (stop, run) in running {
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
    }
    let got = runs(&store).await;
    let mut ids: Vec<i64> = got.iter().map(|r| r.5).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (80, 80), "every event ran once: {got:?}");
    let status = workers[0].status().await.unwrap();
    assert_eq!((status[0].pending, status[0].retrying, status[0].dead), (Some(0), 0, 0), "{status:?}");
});

/// Runs one statement built by the test (a chunk row) on either backend.
async fn insert_chunk(store: &Store, sql: String) {
    let mut tx = store.begin().await.unwrap();
    tx.query(sqlx::AssertSqlSafe(sql)).execute().await.expect("insert chunk");
    tx.commit().await.unwrap();
}

// A worker that dies holding a chunk (here a "ghost" whose lease ran out, and a
// second chunk of the same partition waiting behind it; kill -9 for real is
// tests/processes.rs): the chunk is split into delivery rows, each counted one
// expiry, and the next chunk's events of those keys wait behind them, in order.
backend_test!(a_chunk_whose_worker_died_runs_again_in_order, |store| async move {
    create_runs(&store).await;
    // Recorded before the inbox exists: the pump never sees them; the chunks below
    // stand for what a pump copied.
    record(&store, "spr", 4, 5, |_, seq| json!({"seq": seq})).await;
    let b = worker(&store, "b", "spread_sync", 4);
    b.register().await.unwrap();
    let events: Vec<(i64, String)> =
        read(&store, "SELECT id, subject_id FROM herald_events ORDER BY id".to_owned()).await;
    let (first, second) = events.split_at(8); // seq 0-1 of each subject, then 2-4
    let chunk = |part: &[(i64, String)], owner: Option<&str>| {
        let ids: Vec<String> = part.iter().map(|(id, _)| id.to_string()).collect();
        let keys: Vec<String> = part.iter().map(|(_, s)| format!("\"spr:{s}\"")).collect();
        let until = owner.map_or("NULL".to_owned(), |_| "'2000-01-01 00:00:00.000000'".to_owned());
        let owner = owner.map_or("NULL".to_owned(), |o| format!("'{o}'"));
        match store.backend() {
            herald::Backend::Sqlite => format!(
                "INSERT INTO herald_chunks (inbox, part, events, keys, lease_owner, lease_until, created_at) \
                 VALUES ('spread::spread_sync', 7, '[{}]', '[{}]', {owner}, {until}, '2000-01-01 00:00:00.000000')",
                ids.join(","),
                keys.join(",")
            ),
            _ => format!(
                "INSERT INTO herald_chunks (inbox, part, events, keys, lease_owner, lease_until, created_at) \
                 VALUES ('spread::spread_sync', 7, '{{{}}}', '{{{}}}', {owner}, {until}, now())",
                ids.join(","),
                keys.join(",")
            ),
        }
    };
    for sql in [chunk(first, Some("ghost")), chunk(second, None)] {
        insert_chunk(&store, sql).await;
    }
    let drained = b.drain().await.unwrap();
    assert_eq!(drained.delivered, 20);
    let got = runs(&store).await;
    assert_in_order(&got, 4, 5);
    let status = b.status().await.unwrap();
    assert_eq!((status[0].pending, status[0].retrying, status[0].dead), (Some(0), 0, 0), "{status:?}");

    // The expiry is counted: with one allowed, the split rows are dead letters.
    let c = Dispatcher::builder(store.clone())
        .registry(only("spread_sync"))
        .resource(Worker("c"))
        .worker_id("c")
        .max_lease_expiries(1)
        .build()
        .unwrap();
    for sql in [chunk(first, Some("ghost")), chunk(second, None)] {
        insert_chunk(&store, sql).await;
    }
    c.drain().await.unwrap();
    let dead = store.dead_letters(None).await.unwrap().letters;
    let mut dead_ids: Vec<i64> = dead.iter().map(|d| d.event_id.0).collect();
    dead_ids.sort_unstable();
    assert_eq!(dead_ids, first.iter().map(|(id, _)| *id).collect::<Vec<_>>(), "{dead:?}");
    assert!(dead.iter().all(|d| d.expiries == 1), "{dead:?}");
    assert_eq!(runs(&store).await.len(), 20 + 12, "the second chunk ran again, behind the dead");
});
