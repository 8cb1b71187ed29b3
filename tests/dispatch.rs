//! The dispatcher: at-least-once delivery to every matching inbox, after commit,
//! with retries, backoff, dead letters and prompt wake-ups, on both backends.

mod common;

use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Context, Dispatcher, InboxError, NewEvent, Registry, inbox};
use serde_json::json;

use common::{create_handled, execute, handled, note, switch_on};

// ---- fan-out -----------------------------------------------------------------

#[inbox(subject = "fan", actions = ["posted"])]
async fn fan_mail(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "fan_mail", event, cx.attempt()).await?)
}

#[inbox(subject = "fan")]
async fn fan_audit(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "fan_audit", event, cx.attempt()).await?)
}

#[inbox(subject = "fan", actions = ["posted", "edited"], filter = is_public)]
async fn fan_public(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "fan_public", event, cx.attempt()).await?)
}

fn is_public(event: &Event) -> bool {
    event.meta("public") == Some(&json!(true))
}

#[inbox(subject = "other", actions = ["posted"])]
async fn fan_other(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "fan_other", event, cx.attempt()).await?)
}

fn only(prefix: &'static str) -> Registry {
    Registry::collect()
        .expect("registry")
        .retain(move |d| d.name.rsplit("::").next().is_some_and(|n| n.starts_with(prefix)))
}

/// Runs `d` in the background until the returned sender fires (or is dropped).
fn start(d: Dispatcher) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<herald::Result<()>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(d.run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

async fn dispatcher(store: &Store, prefix: &'static str) -> Dispatcher {
    Dispatcher::builder(store.clone()).registry(only(prefix)).build().expect("dispatcher")
}

backend_test!(fan_out_to_every_matching_inbox_once, |store| async move {
    create_handled(&store).await;
    let d = dispatcher(&store, "fan_").await;
    d.drain().await.unwrap(); // inboxes start from now

    let mut tx = store.begin().await.unwrap();
    let posted =
        tx.record(Subject::new("fan", 1), "posted", Actor::system()).metadata(json!({"public": true})).await.unwrap();
    tx.commit().await.unwrap();
    let mut rolled_back = store.begin().await.unwrap();
    rolled_back
        .record(Subject::new("fan", 2), "posted", Actor::system())
        .metadata(json!({"public": true}))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let routes = d.registry().routes(&posted);
    assert_eq!(routes, ["dispatch::fan_audit", "dispatch::fan_mail", "dispatch::fan_public"]);

    let drained = d.drain().await.unwrap();
    assert_eq!(drained.delivered, 3);
    let mut got: Vec<_> =
        handled(&store).await.into_iter().map(|(inbox, id, attempt, _)| (inbox, id, attempt)).collect();
    got.sort();
    let id = posted.id.0;
    assert_eq!(got, [("fan_audit".into(), id, 1), ("fan_mail".into(), id, 1), ("fan_public".into(), id, 1)]);

    // Nothing is delivered twice, and a non-public edit reaches only the audit inbox.
    assert_eq!(d.drain().await.unwrap().delivered, 0);
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("fan", 1), "edited", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(d.drain().await.unwrap().delivered, 1);
    assert_eq!(handled(&store).await.len(), 4);
});

// ---- failures, retries, dead letters -----------------------------------------

#[inbox(subject = "iso", max_attempts = 3, backoff = "10ms", backoff_max = "20ms")]
async fn iso_flaky(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "iso_flaky", event, cx.attempt()).await?;
    if switch_on(cx.store(), "iso_fixed").await { Ok(()) } else { Err(InboxError::retry("smtp server said no")) }
}

#[inbox(subject = "iso")]
async fn iso_steady(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "iso_steady", event, cx.attempt()).await?)
}

#[inbox(subject = "iso", max_attempts = 5, backoff = "10ms")]
async fn iso_panics(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "iso_panics", event, cx.attempt()).await?;
    if event.meta("fatal") == Some(&json!(true)) {
        return Err(InboxError::give_up("malformed payload"));
    }
    panic!("boom on attempt {}", cx.attempt());
}

/// Drains until nothing is pending or due soon.
async fn drain_until_settled(d: &Dispatcher, rounds: usize) {
    for _ in 0..rounds {
        d.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

backend_test!(failing_inbox_is_isolated_then_dead_then_retried, |store| async move {
    create_handled(&store).await;
    execute(&store, "CREATE TABLE switches (name TEXT PRIMARY KEY)").await.unwrap();
    let d = dispatcher(&store, "iso_").await;
    d.drain().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let e = tx.record(Subject::new("iso", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();

    // The first drain: the steady inbox is served although the others keep failing.
    let first = d.drain().await.unwrap();
    assert_eq!(first.delivered, 1);
    assert!(first.failed >= 2, "{first:?}");
    assert!(handled(&store).await.iter().any(|(inbox, ..)| inbox == "iso_steady"));

    drain_until_settled(&d, 12).await;
    let runs = handled(&store).await;
    let count = |name: &str| runs.iter().filter(|(inbox, ..)| inbox == name).count();
    assert_eq!(count("iso_steady"), 1, "delivered once");
    assert_eq!(count("iso_flaky"), 3, "max_attempts = 3");
    assert_eq!(count("iso_panics"), 5, "panics are failures, retried up to max_attempts = 5");

    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!(dead.len(), 2);
    let flaky = dead.iter().find(|d| d.inbox == "dispatch::iso_flaky").expect("flaky is dead");
    assert_eq!((flaky.event_id, flaky.attempts, flaky.last_error.as_str()), (e.id, 3, "smtp server said no"));
    let panics = dead.iter().find(|d| d.inbox == "dispatch::iso_panics").expect("panics is dead");
    assert_eq!(panics.attempts, 5);
    assert_eq!(panics.last_error, "handler panicked: boom on attempt 5");

    let status = d.status().await.unwrap();
    let flaky_status = status.iter().find(|s| s.name == "dispatch::iso_flaky").unwrap();
    assert_eq!((flaky_status.pending, flaky_status.retrying, flaky_status.dead), (Some(0), 0, 1));

    // Fixed by hand, retried by hand: delivered once more, and no longer dead.
    execute(&store, "INSERT INTO switches (name) VALUES ('iso_fixed')").await.unwrap();
    store.retry_dead(flaky.id).await.unwrap();
    let again = d.drain().await.unwrap();
    assert_eq!((again.delivered, again.failed), (1, 0));
    assert_eq!(store.dead_letters(Some("dispatch::iso_flaky")).await.unwrap().letters, []);
    assert!(matches!(store.retry_dead(flaky.id).await, Err(herald::Error::NoSuchDelivery(_))));

    // give_up dead-letters at once, whatever attempts are left.
    let mut tx = store.begin().await.unwrap();
    let fatal =
        tx.record(Subject::new("iso", 2), "happened", Actor::system()).metadata(json!({"fatal": true})).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    let dead = store.dead_letters(Some("dispatch::iso_panics")).await.unwrap().letters;
    let fatal_dead = dead.iter().find(|d| d.event_id == fatal.id).expect("dead at once");
    assert_eq!((fatal_dead.attempts, fatal_dead.last_error.as_str()), (1, "malformed payload"));
});

// ---- backoff ------------------------------------------------------------------

#[inbox(subject = "backoff", max_attempts = 4, backoff = "60ms", backoff_max = "1s")]
async fn backoff_always_fails(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "backoff_always_fails", event, cx.attempt()).await?;
    Err(InboxError::retry("still down"))
}

backend_test!(retries_follow_exponential_backoff, |store| async move {
    create_handled(&store).await;
    let d = Dispatcher::builder(store.clone())
        .registry(only("backoff_"))
        .poll_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("backoff", 1), "tick", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();

    let (stop, run) = start(d.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled(&store).await.len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a 5th attempt would come by now
    let _ = stop.send(());
    run.await.unwrap().unwrap();

    let runs = handled(&store).await;
    let attempts: Vec<i32> = runs.iter().map(|r| r.2).collect();
    assert_eq!(attempts, [1, 2, 3, 4], "exactly max_attempts attempts, counted on failure");
    // Attempt n+1 waits at least half of 60ms * 2^(n-1) (full jitter above that).
    for (n, pair) in runs.windows(2).enumerate() {
        let gap = Duration::from_micros((pair[1].3 - pair[0].3) as u64);
        let floor = Duration::from_millis(30 << n);
        assert!(gap >= floor, "gap before attempt {} was {gap:?}, expected at least {floor:?}", n + 2);
    }
    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!((dead.len(), dead[0].attempts), (1, 4));
});

// ---- causation, start position, shutdown ---------------------------------------

#[inbox(subject = "cause", actions = ["opened"])]
async fn cause_auto_assign(event: &Event, cx: &Context) -> Result<(), InboxError> {
    cx.record(&event.subject, "assigned", Actor::system(), json!({ "to": "triage" })).await?;
    Ok(())
}

backend_test!(follow_up_events_carry_causation, |store| async move {
    let d = dispatcher(&store, "cause_").await;
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let root = tx.record(Subject::new("cause", 1), "opened", Actor::new("user", 1)).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();

    let trail = store.feed().subject(Subject::new("cause", 1)).fetch().await.unwrap().events;
    let assigned = trail.iter().find(|e| e.action == "assigned").expect("the inbox recorded a follow-up");
    assert_eq!((assigned.causation_id, assigned.correlation_id), (Some(root.id), root.id));
});

#[inbox(subject = "replay", start_from = "beginning")]
async fn replay_projection(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "replay_projection", event, cx.attempt()).await?)
}

#[inbox(subject = "replay")]
async fn replay_mailer(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "replay_mailer", event, cx.attempt()).await?)
}

backend_test!(new_inboxes_start_from_now_or_the_beginning, |store| async move {
    create_handled(&store).await;
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..5).map(|n| NewEvent::new(Subject::new("replay", n), "happened", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();

    let d = dispatcher(&store, "replay_").await;
    d.drain().await.unwrap();
    let runs = handled(&store).await;
    assert_eq!(runs.iter().filter(|r| r.0 == "replay_projection").count(), 5, "history replayed");
    assert_eq!(runs.iter().filter(|r| r.0 == "replay_mailer").count(), 0, "history not mailed");

    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("replay", 9), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    let runs = handled(&store).await;
    assert_eq!((runs.iter().filter(|r| r.0 == "replay_mailer").count(), runs.len()), (1, 7));
});

#[inbox(subject = "slow")]
async fn slow_handler(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(note(cx.store(), "slow_handler", event, cx.attempt()).await?)
}

backend_test!(shutdown_finishes_in_flight_deliveries, |store| async move {
    create_handled(&store).await;
    let d = dispatcher(&store, "slow_").await;
    d.drain().await.unwrap();
    let (stop, run) = start(d.clone());
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("slow", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // the handler is running now
    let asked = Instant::now();
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(200), "run waited for the in-flight handler");
    assert_eq!(handled(&store).await.len(), 1, "the in-flight delivery completed");
    assert_eq!(d.drain().await.unwrap().delivered, 0, "and was acknowledged: nothing is re-delivered");
});

// ---- wake-ups ---------------------------------------------------------------------

#[inbox(subject = "wake")]
async fn wake_listener(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "wake_listener", event, cx.attempt()).await?)
}

/// The `wake_` inbox's dispatcher, caught up and running in the background, with a
/// 60 s poll interval: only wake-ups can move it in a test's time.
async fn start_wake_dispatcher(
    store: &Store,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<herald::Result<()>>) {
    let d = Dispatcher::builder(store.clone())
        .registry(only("wake_"))
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    d.drain().await.unwrap();
    start(d)
}

/// Records one event through `writer` and waits (up to 5 s) for the inbox to see it.
async fn time_to_delivery(writer: &Store, reader: &Store, n: usize) -> Duration {
    let start = Instant::now();
    let mut tx = writer.begin().await.unwrap();
    tx.record(Subject::new("wake", n), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    while handled(reader).await.len() < n && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handled(reader).await.len(), n, "delivered");
    start.elapsed()
}

backend_test!(commits_wake_the_dispatcher_without_polling, |store| async move {
    create_handled(&store).await;
    let (stop, run) = start_wake_dispatcher(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 1..=3 {
        let took = time_to_delivery(&store, &store, n).await;
        assert!(took < Duration::from_secs(2), "delivery {n} took {took:?} with a 60 s poll interval");
    }
    // Stopping right after a delivery, while the stream still holds the inbox: the
    // stream sees the signal, and so must the loop around it (not at its next poll).
    let stopping = Instant::now();
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopping took {:?}", stopping.elapsed());
});

/// A second store on the same schema: its commits reach the dispatcher only through
/// PostgreSQL NOTIFY, never through the in-process wake-up.
async fn second_store(db: &common::TestDb) -> Store {
    let pool = db.store.postgres_pool().unwrap();
    let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(pool).await.unwrap();
    let opts = pool.connect_options().as_ref().clone().options([("search_path", schema.as_str())]);
    Store::from_postgres(sqlx::PgPool::connect_with(opts).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_other_processes_and_survives_a_dropped_listener_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    create_handled(&store).await;
    let writer = second_store(&db).await;
    let (stop, run) = start_wake_dispatcher(&store).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = time_to_delivery(&writer, &store, 1).await;
    assert!(took < Duration::from_secs(2), "NOTIFY delivery took {took:?}");

    // Kill the dispatcher's LISTEN connection, as a server restart would.
    let schema: String =
        sqlx::query_scalar("SELECT current_schema()").fetch_one(store.postgres_pool().unwrap()).await.unwrap();
    let listen = format!("LISTEN \"herald_{schema}\"");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&listen)
    .fetch_all(store.postgres_pool().unwrap())
    .await
    .unwrap();
    assert_eq!(killed, [true], "exactly our listener was terminated");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 2..=3 {
        let took = time_to_delivery(&writer, &store, n).await;
        assert!(took < Duration::from_secs(2), "delivery {n} after the drop took {took:?}");
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

/// Commits faster than `NOTIFY`s are sent share one: a burst from another process is
/// delivered in full (the last commits are never left to the poll interval), and the
/// number of notifications is bounded by time, not by the number of commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_commits_shares_notifies_and_is_delivered_in_full_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    create_handled(&store).await;
    let writer = second_store(&db).await;
    let (stop, run) = start_wake_dispatcher(&store).await;
    // Count what the channel carries, as any other process would see it.
    let schema: String =
        sqlx::query_scalar("SELECT current_schema()").fetch_one(store.postgres_pool().unwrap()).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(store.postgres_pool().unwrap()).await.unwrap();
    listener.listen(&format!("herald_{schema}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (writers, each) = (8, 40);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    let mut tx = writer.begin().await.unwrap();
                    tx.record(Subject::new("wake", w * 1000 + i), "happened", Actor::system()).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let burst = started.elapsed();
    let total = (writers * each) as usize;
    while handled(&store).await.len() < total && started.elapsed() < burst + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_after = started.elapsed();
    assert_eq!(handled(&store).await.len(), total, "every commit of the burst delivered without polling");
    assert!(delivered_after < burst + Duration::from_secs(2), "the burst's tail took {:?}", delivered_after - burst);

    let mut notifies = 0u32;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(300), listener.try_recv()).await {
        notifies += 1;
    }
    // One NOTIFY per 5 ms interval at most, plus the leading and the trailing one.
    let bound = (burst.as_millis() / 5) as u32 + 2;
    assert!(notifies >= 1, "the burst was announced");
    assert!(notifies <= bound, "{notifies} NOTIFYs for {total} commits in {burst:?} (at most {bound})");
    assert!(notifies < total as u32, "commits shared NOTIFYs: {notifies} for {total} commits");
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

// ---- commit order (PostgreSQL) ------------------------------------------------------

#[inbox(subject = "order")]
async fn order_a(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "order_a", event, cx.attempt()).await?)
}

#[inbox(subject = "order")]
async fn order_b(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "order_b", event, cx.attempt()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_out_of_id_order_are_all_delivered_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    create_handled(&store).await;
    let d = dispatcher(&store, "order_").await;
    d.drain().await.unwrap();

    // A takes the lower id but commits last.
    let mut a = store.begin().await.unwrap();
    let early = a.record(Subject::new("order", 1), "happened", Actor::system()).await.unwrap();
    let mut b = store.begin().await.unwrap();
    let late = b.record(Subject::new("order", 2), "happened", Actor::system()).await.unwrap();
    assert!(early.id < late.id);
    b.commit().await.unwrap();

    // B is committed, but A (older) is still running: B must wait, not be skipped past A.
    let d2 = d.clone();
    let commit_a = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.commit().await.unwrap();
    });
    let first = d2.drain().await.unwrap();
    commit_a.await.unwrap();
    let second = d.drain().await.unwrap();
    assert_eq!(first.delivered + second.delivered, 4);

    let mut got: Vec<_> = handled(&store).await.into_iter().map(|(inbox, id, ..)| (inbox, id)).collect();
    got.sort();
    let (e, l) = (early.id.0, late.id.0);
    assert_eq!(got, [("order_a".into(), e), ("order_a".into(), l), ("order_b".into(), e), ("order_b".into(), l)]);
}

// ---- unregistered names ---------------------------------------------------------------

#[inbox(subject = "orphan", backoff = "1s")]
async fn orphan_flaky(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "orphan_flaky", event, cx.attempt()).await?;
    match switch_on(cx.store(), "orphan_fixed").await {
        true => Ok(()),
        false => Err(InboxError::retry("not yet")),
    }
}

#[inbox(subject = "orphan")]
async fn orphan_steady(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), "orphan_steady", event, cx.attempt()).await?)
}

backend_test!(deliveries_of_unregistered_inboxes_are_reported_not_dropped, |store| async move {
    create_handled(&store).await;
    execute(&store, "CREATE TABLE switches (name TEXT PRIMARY KEY)").await.unwrap();
    let old = dispatcher(&store, "orphan_flaky").await;
    old.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("orphan", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(old.drain().await.unwrap().failed, 1); // now retrying, in 0.5 to 1 s

    // A later deploy without that inbox (renamed, removed).
    let new = dispatcher(&store, "orphan_steady").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the retry is due now
    new.drain().await.unwrap();
    let status = new.status().await.unwrap();
    let orphan = status.iter().find(|s| s.name == "dispatch::orphan_flaky").expect("reported");
    assert_eq!((orphan.registered, orphan.pending, orphan.retrying), (false, None, 1));
    assert_eq!(handled(&store).await.len(), 1, "the new deployment did not touch it");

    // The old deployment still finds it, and delivers it.
    execute(&store, "INSERT INTO switches (name) VALUES ('orphan_fixed')").await.unwrap();
    old.drain().await.unwrap();
    let flaky_runs = handled(&store).await.iter().filter(|r| r.0 == "orphan_flaky").count();
    assert_eq!(flaky_runs, 2, "failed once, then delivered by the deployment that has it");
    let status = old.status().await.unwrap();
    assert_eq!(status.iter().find(|s| s.name == "dispatch::orphan_flaky").unwrap().retrying, 0);
});

// ---- resources, bulk retry, pruning ------------------------------------------------------

/// A resource the dispatcher hands to inboxes.
struct Greeting(&'static str);

#[inbox(subject = "res", actions = ["arrived"], max_attempts = 1)]
async fn res_greeter(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let greeting = cx.resource::<Greeting>()?;
    let who = cx.resource::<String>()?; // not given: gives up at once
    cx.record(&event.subject, "greeted", Actor::system(), json!({ "text": format!("{} {who}", greeting.0) })).await?;
    Ok(())
}

backend_test!(inboxes_get_resources_and_a_missing_one_is_a_dead_letter, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("res_")).resource(Greeting("hello")).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("res", 1), "arrived", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error, "no resource of type alloc::string::String was given to the dispatcher");

    // The same inbox with both resources, after a bulk retry of everything dead.
    let d = Dispatcher::builder(store.clone())
        .registry(only("res_"))
        .resource(Greeting("hello"))
        .resource("world".to_owned())
        .build()
        .unwrap();
    assert_eq!(store.retry_all_dead(Some("dispatch::res_greeter")).await.unwrap(), 1);
    assert_eq!(d.drain().await.unwrap().delivered, 1);
    let trail = store.feed().subject(Subject::new("res", 1)).actions(["greeted"]).fetch().await.unwrap().events;
    assert_eq!(trail[0].meta("text"), Some(&json!("hello world")));
    assert!(store.dead_letters(None).await.unwrap().letters.is_empty());
});

#[inbox(subject = "prune", max_attempts = 1)]
async fn prune_broken(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::retry("always"))
}

backend_test!(dead_letters_are_pruned_by_age_events_are_kept, |store| async move {
    let d = dispatcher(&store, "prune_").await;
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..3).map(|n| NewEvent::new(Subject::new("prune", n), "x", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    assert_eq!(store.dead_letters(None).await.unwrap().letters.len(), 3);
    assert_eq!(store.prune_dead(chrono::Utc::now() - chrono::Duration::hours(1)).await.unwrap(), 0, "recent ones stay");
    assert_eq!(store.prune_dead(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 3);
    assert!(store.dead_letters(None).await.unwrap().letters.is_empty());
    assert_eq!(common::count_events(&store).await, 3, "events themselves are kept");
});

// ---- leases ---------------------------------------------------------------------------------

#[inbox(subject = "lease")]
async fn lease_long_handler(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "lease_long_handler", event, cx.attempt()).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await; // four times the lease
    Ok(())
}

backend_test!(a_renewed_lease_keeps_a_long_delivery_to_one_worker, |store| async move {
    create_handled(&store).await;
    let worker = |id: &str| {
        Dispatcher::builder(store.clone())
            .registry(only("lease_"))
            .worker_id(id)
            .lease(Duration::from_millis(300))
            .poll_interval(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    let (a, b) = (worker("a"), worker("b"));
    a.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("lease", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runs: Vec<_> = [a, b]
        .into_iter()
        .map(|d| {
            let mut stopped = stopped.clone();
            tokio::spawn(d.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = stop.send(true);
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert_eq!(handled(&store).await.len(), 1, "the other worker never took the delivery while its lease was renewed");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_from_now_skips_history_held_behind_an_older_transaction_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    create_handled(&store).await;
    // An older transaction is still running: it holds the horizon below the history.
    let mut older = store.begin().await.unwrap();
    let in_flight = older.record(Subject::new("replay", 100), "happened", Actor::system()).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..5).map(|n| NewEvent::new(Subject::new("replay", n), "happened", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();

    let d = dispatcher(&store, "replay_mailer").await;
    let d2 = d.clone();
    let first = tokio::spawn(async move { d2.drain().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    older.commit().await.unwrap(); // committed after the inbox was first seen: not history
    first.await.unwrap().unwrap();
    d.drain().await.unwrap();
    let runs: Vec<_> = handled(&store).await.into_iter().map(|(inbox, id, ..)| (inbox, id)).collect();
    assert_eq!(runs, [("replay_mailer".to_owned(), in_flight.id.0)]);
}

// ---- batch read plans -----------------------------------------------------------------

/// Whether a PostgreSQL plan has a sort node (a Merge Append's "Sort Key" merges
/// ordered inputs: no sort).
fn sorts(plan: &str) -> bool {
    plan.lines().any(|l| {
        let node = l.trim_start().trim_start_matches("->").trim_start();
        node.starts_with("Sort  (") || node.starts_with("Incremental Sort")
    })
}

// A batch read walks the position index in commit order, with or without table
// statistics: it never narrows by the subject index first (PostgreSQL without
// statistics did, and every read then grew with the subject's whole history).
backend_test!(batch_reads_walk_the_position_index, |store| async move {
    for chunk in 0..5 {
        let mut tx = store.begin().await.unwrap();
        let events = (0..2_000).map(|n| {
            let kind = if n % 2 == 0 { "fan" } else { "other" };
            NewEvent::new(Subject::new(kind, chunk * 2_000 + n), "posted", Actor::system())
        });
        tx.record_all(events).await.unwrap();
        tx.commit().await.unwrap();
    }
    let d = Dispatcher::builder(store.clone()).registry(only("fan_audit")).build().unwrap();
    let name = d.registry().iter().next().unwrap().name;
    let healthy = |plan: &str| {
        let position = if store.postgres_pool().is_some() { "herald_events_position" } else { "PRIMARY KEY" };
        assert!(plan.contains(position), "expected {position} in:\n{plan}");
        assert!(!plan.contains("herald_events_subject"), "narrowed by the subject index first:\n{plan}");
    };
    // A fresh table, never analyzed, the whole backlog ahead of the checkpoint.
    healthy(&d.explain(name).await.unwrap());

    // Caught up, with statistics: an ordered walk from the checkpoint, no sort.
    create_handled(&store).await;
    d.drain().await.unwrap();
    execute(&store, "ANALYZE").await.unwrap();
    let plan = d.explain(name).await.unwrap();
    healthy(&plan);
    assert!(!sorts(&plan) && !plan.contains("TEMP B-TREE"), "{plan}");

    let err = d.explain("no_such_inbox").await.unwrap_err();
    assert!(matches!(err, herald::Error::UnknownInbox(ref n) if n == "no_such_inbox"), "{err:?}");
});

// A read from the start of a backlog, on new pooled connections (PostgreSQL plans a
// prepared statement's first five executions with its values), walks the position
// index in order whatever the statistics say:
// - fresh: the range is the whole table; with the subject filter in the `WHERE`,
//   PostgreSQL believed 0.5 % of the rows matched and scanned and sorted the whole
//   table instead (13-18 ms a read, 0.3-0.7x a raw queue loop, measured from outside);
// - stale (taken before the backlog was written): the range looked like a few rows,
//   and a bitmap scan of all of them plus a sort looked cheap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_walk_in_order_with_fresh_or_stale_statistics_postgres() {
    for fresh in [true, false] {
        let Some(db) = common::TestDb::postgres().await else { return };
        let store = db.store.clone();
        let mut tx = store.begin().await.unwrap();
        let others = (0..200).map(|n| NewEvent::new(Subject::new("other", n), "posted", Actor::system()));
        tx.record_all(others).await.unwrap();
        tx.commit().await.unwrap();
        execute(&store, "ANALYZE herald_events").await.unwrap();
        let d = Dispatcher::builder(store.clone()).registry(only("fan_audit")).build().unwrap();
        d.register().await.unwrap();
        for chunk in 0..20 {
            let mut tx = store.begin().await.unwrap();
            let fans = (0..500).map(|n| NewEvent::new(Subject::new("fan", chunk * 500 + n), "posted", Actor::system()));
            tx.record_all(fans).await.unwrap();
            tx.commit().await.unwrap();
        }
        let stats = if fresh { "VACUUM ANALYZE herald_events" } else { "VACUUM herald_events" };
        execute(&store, stats).await.unwrap();
        let name = d.registry().iter().next().unwrap().name;
        let plan = d.explain(name).await.unwrap();
        let which = if fresh { "fresh" } else { "stale" };
        assert!(plan.contains("Index Scan using herald_events_position"), "{which}:\n{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Bitmap"), "{which}:\n{plan}");
        assert!(!sorts(&plan), "{which}: an ordered walk needs no sort:\n{plan}");
        // At the start of a pair the walk starts at the pair, not at position (0, 0):
        // with both bounds, the scan started from the row comparison (39 ms at 1M events).
        assert!(!plan.contains("ROW('0'::xid8"), "{which}: a second lower bound:\n{plan}");
    }
}

// ---- feedback loops ---------------------------------------------------------------------

// Records another `echo` for every `echo` it receives: a loop without end, but for the
// causation-depth limit.
#[inbox(subject = "echo")]
async fn loop_echo(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let n = event.meta("n").and_then(|n| n.as_i64()).unwrap_or(0);
    cx.record(Subject::new("echo", 1), "happened", Actor::system(), json!({ "n": n + 1 })).await?;
    Ok(())
}

backend_test!(an_inbox_that_triggers_itself_stops_at_the_causation_limit, |store| async move {
    let d = Dispatcher::builder(store.clone()).registry(only("loop_echo")).max_causation_depth(5).build().unwrap();
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let root = tx.record(Subject::new("echo", 1), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    drain_until_settled(&d, 10).await;

    let chain = store.feed().subject(Subject::new("echo", 1)).limit(100).fetch().await.unwrap().events;
    assert_eq!(chain.len(), 5, "the root and 4 caused events, then the loop stops");
    assert!(chain.iter().all(|e| e.correlation_id == root.id), "one chain");
    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id, chain[0].id, "the newest event's delivery is the one refused");
    assert_eq!(dead[0].attempts, 1, "given up at once: retrying cannot help");
    assert!(dead[0].last_error.contains("chain of 5 events"), "{}", dead[0].last_error);

    assert!(matches!(
        Dispatcher::builder(store.clone()).max_causation_depth(0).build().unwrap_err(),
        herald::Error::InvalidConfig(_)
    ));
});

// ---- bookkeeping writes ---------------------------------------------------------------------

// After a wake-up, an inbox the new events do not concern writes nothing: it keeps
// its new position in memory and writes it only once it is 1,000 transactions behind
// (or 5 minutes old). An inbox with work takes the lease with its batch read and moves
// the checkpoint once more after delivering.
#[tokio::test]
async fn an_unconcerned_inbox_writes_nothing_per_wake_up_postgres() {
    let Some(db) = common::TestDb::postgres().await else { return };
    let store = db.store.clone();
    create_handled(&store).await;
    for sql in [
        "CREATE TABLE inbox_writes (name TEXT NOT NULL)",
        "CREATE FUNCTION note_inbox_write() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO inbox_writes VALUES (NEW.name); RETURN NEW; END $$",
        "CREATE TRIGGER inbox_writes AFTER UPDATE ON herald_inboxes FOR EACH ROW EXECUTE FUNCTION note_inbox_write()",
    ] {
        execute(&store, sql).await.unwrap();
    }
    let d = dispatcher(&store, "fan_").await;
    d.drain().await.unwrap(); // every inbox leased once, checkpoint at the head, released
    execute(&store, "DELETE FROM inbox_writes").await.unwrap();

    for n in 0..3 {
        let mut tx = store.begin().await.unwrap();
        tx.record(Subject::new("fan", n), "posted", Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        d.drain().await.unwrap();
    }
    let writes = |name: &'static str| {
        let store = store.clone();
        async move {
            let sql = "SELECT count(*) FROM inbox_writes WHERE name LIKE '%' || $1";
            let n: i64 = sqlx::query_scalar(sql).bind(name).fetch_one(store.postgres_pool().unwrap()).await.unwrap();
            n
        }
    };
    assert_eq!(writes("fan_other").await, 0, "no write per wake-up for events of another subject");
    assert_eq!(writes("fan_mail").await, 6, "lease with the read, then the checkpoint after delivery");
    assert_eq!(handled(&store).await.iter().filter(|h| h.0 == "fan_mail").count(), 3);

    // 1,000 transactions later the unconcerned inbox's position is worth one write.
    let pool = store.postgres_pool().unwrap();
    for _ in 0..1_000 {
        sqlx::query("SELECT pg_current_xact_id()").execute(pool).await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("fan", 9), "posted", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    d.drain().await.unwrap();
    assert_eq!(writes("fan_other").await, 1, "written once it fell 1,000 transactions behind");
    let (open_pairs, leased): (i64, i64) =
        sqlx::query_as("SELECT count(snap_to), count(lease_owner) FROM herald_inboxes").fetch_one(pool).await.unwrap();
    assert_eq!((open_pairs, leased), (0, 0), "every inbox past its last pair, no lease held");
}

/// The lease epoch (acquisitions so far) of the inbox whose name ends with `suffix`.
async fn lease_epoch(store: &Store, suffix: &str) -> i64 {
    let sql = "SELECT lease_epoch FROM herald_inboxes WHERE name LIKE '%' || $1";
    match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_scalar(sql).bind(suffix).fetch_one(p).await,
        (_, Some(p)) => sqlx::query_scalar(sql).bind(suffix).fetch_one(p).await,
        _ => unreachable!("a store has one pool"),
    }
    .expect("lease epoch")
}

// A worker new to an inbox (nothing of it in memory) leases it only together with a
// read that finds something. It used to take the lease first, then read: a worker
// that died in between (or was merely slow) held a lease over nothing, and the next
// event waited for it to expire; and a worker taking over counted it as a crash.
backend_test!(a_worker_that_finds_nothing_for_an_inbox_takes_no_lease, |store| async move {
    create_handled(&store).await;
    dispatcher(&store, "fan_").await.drain().await.unwrap(); // registered, checkpoints at the head
    let other = lease_epoch(&store, "fan_other").await;
    let mail = lease_epoch(&store, "fan_mail").await;

    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("fan", 1), "posted", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    let fresh = dispatcher(&store, "fan_").await;
    fresh.drain().await.unwrap();
    assert_eq!(lease_epoch(&store, "fan_other").await, other, "nothing for fan_other: no lease taken");
    assert_eq!(lease_epoch(&store, "fan_mail").await, mail + 1, "leased with the read of its event");
    assert_eq!(handled(&store).await.iter().filter(|h| h.0 == "fan_mail").count(), 1);
    let owned = "SELECT count(lease_owner) FROM herald_inboxes";
    let owned: i64 = match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_scalar(owned).fetch_one(p).await.unwrap(),
        (_, Some(p)) => sqlx::query_scalar(owned).fetch_one(p).await.unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(owned, 0, "no lease held after a drain");
});

// ---- timeouts ---------------------------------------------------------------------------

#[inbox(subject = "hang", timeout = "100ms", max_attempts = 2, backoff = "10ms", backoff_max = "10ms")]
async fn hang_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    if event.meta("hang") == Some(&json!(true)) {
        std::future::pending::<()>().await;
    }
    Ok(note(cx.store(), "hang_inbox", event, cx.attempt()).await?)
}

backend_test!(a_hung_handler_times_out_is_retried_then_dead_and_the_inbox_goes_on, |store| async move {
    create_handled(&store).await;
    let d = dispatcher(&store, "hang_").await;
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let hung =
        tx.record(Subject::new("hang", 1), "called", Actor::system()).metadata(json!({"hang": true})).await.unwrap();
    let fine = tx.record(Subject::new("hang", 2), "called", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();

    let first = tokio::time::timeout(Duration::from_secs(10), d.drain()).await.expect("drain returns").unwrap();
    // The retry (10 ms later) may fall due within the same drain and time out again.
    assert_eq!(first.delivered, 1, "{first:?}");
    assert!(first.failed >= 1, "{first:?}");
    assert_eq!(handled(&store).await.iter().map(|h| h.1).collect::<Vec<_>>(), [fine.id.0]);
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(10), d.drain()).await.expect("drain returns").unwrap();
        if !store.dead_letters(None).await.unwrap().letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = store.dead_letters(None).await.unwrap().letters;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].event_id, dead[0].attempts), (hung.id, 2));
    assert_eq!(dead[0].last_error, "timed out after 100ms");
});

#[inbox(subject = "stuck", timeout = "1h")]
async fn stuck_inbox(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    std::future::pending::<()>().await;
    Ok(())
}

backend_test!(shutdown_gives_up_on_a_stuck_delivery_at_its_deadline, |store| async move {
    let d = Dispatcher::builder(store.clone())
        .registry(only("stuck_"))
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    d.register().await.unwrap();
    let (stop, run) = start(d.clone());
    let mut tx = store.begin().await.unwrap();
    tx.record(Subject::new("stuck", 1), "called", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the handler is running, forever
    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("run returns at its deadline").unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(2), "{:?}", asked.elapsed());
    let status = d.status().await.unwrap();
    assert_eq!(status[0].pending, Some(1), "not delivered: it will be made again");
    assert!(matches!(
        Dispatcher::builder(store.clone()).shutdown_timeout(Duration::from_secs(7200)).build(),
        Err(herald::Error::InvalidConfig(_))
    ));
});

// ---- fenced leases ----------------------------------------------------------------------

/// Given to worker A only: its handler then blocks its thread, as a stalled worker would.
struct Stalls;

#[inbox(subject = "stall")]
async fn stall_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    if event.meta("stall").is_some() && cx.resource::<Stalls>().is_ok() {
        std::thread::sleep(Duration::from_millis(800)); // no renewal can run meanwhile
    }
    Ok(note(cx.store(), "stall_inbox", event, cx.attempt()).await?)
}

// A worker stalls past its lease; another takes over, delivers, moves on. When the
// first wakes up it may neither take the lease back (renewal never acquires) nor
// write its stale checkpoint (the epoch moved on): the later event runs once.
backend_test!(a_stalled_worker_cannot_take_its_lease_back_or_move_the_checkpoint_backwards, |store| async move {
    create_handled(&store).await;
    let build = |id: &str, stalls: bool| {
        let b =
            Dispatcher::builder(store.clone()).registry(only("stall_")).lease(Duration::from_millis(200)).worker_id(id);
        if stalls { b.resource(Stalls).build().unwrap() } else { b.build().unwrap() }
    };
    let (a, b) = (build("a", true), build("b", false));
    a.register().await.unwrap();
    for round in 0..3 {
        let mut tx = store.begin().await.unwrap();
        tx.record(Subject::new("stall", round), "ran", Actor::system()).metadata(json!({"stall": true})).await.unwrap();
        tx.record(Subject::new("stall", round), "ran", Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        let stalled = tokio::spawn({
            let a = a.clone();
            async move { a.drain().await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await; // A's lease has expired
        b.drain().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let later = tx.record(Subject::new("stall", 100 + round), "ran", Actor::system()).await.unwrap();
        tx.commit().await.unwrap();
        b.drain().await.unwrap();
        stalled.await.unwrap().unwrap(); // A wakes up, its batch's result is discarded
        b.drain().await.unwrap();
        a.drain().await.unwrap();
        let runs = handled(&store).await.iter().filter(|h| h.1 == later.id.0).count();
        assert_eq!(runs, 1, "round {round}: the event after the takeover ran {runs} times");
    }
});

#[inbox(subject = "replica")]
async fn replica_inbox(event: &Event, cx: &Context) -> Result<(), InboxError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(note(cx.store(), "replica_inbox", event, cx.attempt()).await?)
}

backend_test!(two_replicas_given_one_worker_id_are_two_workers, |store| async move {
    create_handled(&store).await;
    let build = || Dispatcher::builder(store.clone()).registry(only("replica_")).worker_id("replica").build().unwrap();
    let (one, two) = (build(), build());
    one.register().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..40).map(|n| NewEvent::new(Subject::new("replica", n), "ran", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();
    let (x, y) = tokio::join!(one.drain(), two.drain());
    x.unwrap();
    y.unwrap();
    one.drain().await.unwrap();
    let runs = handled(&store).await;
    assert_eq!(runs.len(), 40, "each event once, not once per replica");
    assert_ne!(one.worker_id(), two.worker_id());
    assert!(one.worker_id().starts_with("replica-") && two.worker_id().starts_with("replica-"));
});

// ---- retries ----------------------------------------------------------------------------

#[inbox(subject = "lag", backoff = "10ms", backoff_max = "10ms")]
async fn lag_slow(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "lag_slow", event, cx.attempt()).await?;
    if cx.attempt() == 1 {
        return Err(InboxError::retry("first try fails"));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(())
}

#[inbox(subject = "lag", backoff = "10ms", backoff_max = "10ms")]
async fn lag_quick(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "lag_quick", event, cx.attempt()).await?;
    if cx.attempt() == 1 { Err(InboxError::retry("first try fails")) } else { Ok(()) }
}

async fn wait_for_runs(
    store: &Store,
    inbox: &str,
    attempt: i32,
    n: usize,
    within: Duration,
) -> Vec<(String, i64, i32, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let runs: Vec<_> = handled(store).await.into_iter().filter(|h| h.0 == inbox && h.2 == attempt).collect();
        if runs.len() >= n || Instant::now() > deadline {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// One inbox's slow retries delay no other inbox's: each has its own retry task.
backend_test!(an_inboxs_retries_wait_behind_no_other_inboxs, |store| async move {
    create_handled(&store).await;
    let d = Dispatcher::builder(store.clone())
        .registry(only("lag_"))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    d.register().await.unwrap();
    let (stop, run) = start(d);
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..6).map(|n| NewEvent::new(Subject::new("lag", n), "ran", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();
    let retried = wait_for_runs(&store, "lag_quick", 2, 6, Duration::from_secs(10)).await;
    assert_eq!(retried.len(), 6);
    let first: std::collections::HashMap<i64, i64> =
        handled(&store).await.into_iter().filter(|h| h.0 == "lag_quick" && h.2 == 1).map(|h| (h.1, h.3)).collect();
    let worst = retried.iter().map(|h| h.3 - first[&h.1]).max().unwrap();
    assert!(worst < 1_000_000, "a 10 ms-backoff retry waited {worst} µs (behind another inbox's slow retries?)");
    wait_for_runs(&store, "lag_slow", 2, 6, Duration::from_secs(10)).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
});

#[inbox(subject = "patient", backoff = "10ms", backoff_max = "10ms")]
async fn patient_retry(event: &Event, cx: &Context) -> Result<(), InboxError> {
    note(cx.store(), "patient_retry", event, cx.attempt()).await?;
    if cx.attempt() == 1 {
        return Err(InboxError::retry("first try fails"));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

// Slow retries keep their leases (renewed while they run) and complete one by one:
// with two workers and a lease shorter than the claim's total work, none runs twice
// and none is dead-lettered as "crashed".
backend_test!(slow_retries_are_not_mistaken_for_crashes, |store| async move {
    create_handled(&store).await;
    let build = |id: &str| {
        Dispatcher::builder(store.clone())
            .registry(only("patient_"))
            // Shorter than the claim's work run one by one (8 x 250 ms), with room for
            // a renewal that waits for SQLite's write lock on a loaded machine.
            .lease(Duration::from_millis(600))
            .poll_interval(Duration::from_millis(20))
            .worker_id(id)
            .build()
            .unwrap()
    };
    let (one, two) = (build("one"), build("two"));
    one.register().await.unwrap();
    let (stop_one, run_one) = start(one);
    let (stop_two, run_two) = start(two);
    let mut tx = store.begin().await.unwrap();
    tx.record_all((0..20).map(|n| NewEvent::new(Subject::new("patient", n), "ran", Actor::system()))).await.unwrap();
    tx.commit().await.unwrap();
    let retried = wait_for_runs(&store, "patient_retry", 2, 20, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // any duplicate would show up by now
    stop_one.send(()).unwrap();
    stop_two.send(()).unwrap();
    run_one.await.unwrap().unwrap();
    run_two.await.unwrap().unwrap();
    assert_eq!(retried.len(), 20);
    let runs = handled(&store).await;
    assert_eq!(runs.len(), 40, "each event failed once and was retried once: {} runs", runs.len());
    assert!(store.dead_letters(None).await.unwrap().letters.is_empty(), "nothing dead-lettered as crashed");
});

// ---- identity: moves and renames --------------------------------------------------------

fn moving_handler<'a>(event: &'a Event, cx: &'a Context) -> herald::inbox::HandlerFuture<'a> {
    Box::pin(async move {
        note(cx.store(), cx.inbox(), event, cx.attempt()).await?;
        if event.meta("fail").is_some() { Err(InboxError::retry("not now")) } else { Ok(()) }
    })
}

const fn moving(name: &'static str, subject: &'static str) -> herald::InboxDef {
    herald::InboxDef {
        name,
        renamed_from: None,
        subject: Some(subject),
        actions: &[],
        filter: None,
        max_attempts: 5,
        backoff: Duration::from_secs(3600),
        backoff_max: Duration::from_secs(3600),
        timeout: Duration::from_secs(30),
        key: herald::Key::Subject,
        spread: false,
        start_from: herald::StartFrom::Now,
        handler: moving_handler,
        file: file!(),
        line: line!(),
    }
}

/// The handler as it was: in module `app::mail`.
static BEFORE_THE_MOVE: herald::InboxDef = moving("app::mail::mover", "moving");
/// The same handler after its module moved: `app::notify`.
static AFTER_THE_MOVE: herald::InboxDef = moving("app::notify::mover", "moving");

/// Records one event of `subject`; `fail` makes the moving handler fail it.
async fn record_moving(store: &Store, subject: &str, n: i64, fail: bool) -> Event {
    let mut tx = store.begin().await.unwrap();
    let meta = if fail { json!({ "fail": true }) } else { json!({}) };
    let e = tx.record(Subject::new(subject, n), "went", Actor::system()).metadata(meta).await.unwrap();
    tx.commit().await.unwrap();
    e
}

backend_test!(a_handler_whose_module_moved_keeps_its_inbox, |store| async move {
    create_handled(&store).await;
    let old =
        Dispatcher::builder(store.clone()).registry(Registry::from_defs([&BEFORE_THE_MOVE]).unwrap()).build().unwrap();
    old.drain().await.unwrap();
    record_moving(&store, "moving", 1, false).await;
    let failing = record_moving(&store, "moving", 2, true).await;
    assert_eq!(old.drain().await.unwrap().failed, 1);
    // Deployed with the module moved; an event recorded while no worker ran.
    let during = record_moving(&store, "moving", 3, false).await;
    let new =
        Dispatcher::builder(store.clone()).registry(Registry::from_defs([&AFTER_THE_MOVE]).unwrap()).build().unwrap();
    assert_eq!(new.drain().await.unwrap().delivered, 1, "the event recorded during the move");
    let runs: Vec<(String, i64)> = handled(&store).await.into_iter().map(|h| (h.0, h.1)).collect();
    assert_eq!(runs.last(), Some(&("app::notify::mover".to_owned(), during.id.0)));
    let status = new.status().await.unwrap();
    assert_eq!(status.len(), 1, "one inbox, under its new name: {status:?}");
    assert_eq!((status[0].name.as_str(), status[0].retrying), ("app::notify::mover", 1), "its retry came along");
    let _ = failing;
});

// A rolling deploy: the new version took the inbox over under its new name, and an
// older process starts after that (a replica restarted while the deploy is under
// way). It used to re-create the old name, starting "now", and both names delivered
// every new event. The old name is retired by the move: the older process delivers
// nothing under it and says why.
backend_test!(an_older_process_started_during_a_deploy_does_not_revive_the_old_name, |store| async move {
    create_handled(&store).await;
    let old = || Registry::from_defs([&BEFORE_THE_MOVE]).unwrap();
    Dispatcher::builder(store.clone()).registry(old()).build().unwrap().drain().await.unwrap();
    let new =
        Dispatcher::builder(store.clone()).registry(Registry::from_defs([&AFTER_THE_MOVE]).unwrap()).build().unwrap();
    new.drain().await.unwrap(); // takes the old row over
    let late_old = Dispatcher::builder(store.clone()).registry(old()).build().unwrap();
    assert_eq!(late_old.drain().await.unwrap().delivered, 0);
    let after = record_moving(&store, "moving", 1, false).await;
    assert_eq!(late_old.drain().await.unwrap().delivered, 0, "the retired name delivers nothing");
    assert_eq!(new.drain().await.unwrap().delivered, 1);
    let runs: Vec<(String, i64)> = handled(&store).await.into_iter().map(|h| (h.0, h.1)).collect();
    assert_eq!(runs, [("app::notify::mover".to_owned(), after.id.0)], "delivered once, under the new name");
    let names: Vec<String> = late_old.status().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["app::notify::mover"], "no row re-created under the old name");
});

#[inbox(subject = "renaming", name = "emails_v2", renamed_from = "emails_v1")]
async fn renamed_emails(event: &Event, cx: &Context) -> Result<(), InboxError> {
    Ok(note(cx.store(), cx.inbox(), event, cx.attempt()).await?)
}

static EMAILS_V1: herald::InboxDef = moving("emails_v1", "renaming");

backend_test!(an_explicit_rename_keeps_the_inbox, |store| async move {
    create_handled(&store).await;
    let v1 = Dispatcher::builder(store.clone()).registry(Registry::from_defs([&EMAILS_V1]).unwrap()).build().unwrap();
    v1.drain().await.unwrap();
    record_moving(&store, "renaming", 1, false).await;
    assert_eq!(v1.drain().await.unwrap().delivered, 1);
    let during = record_moving(&store, "renaming", 2, false).await;
    let v2_only = Registry::collect().unwrap().retain(|d| d.name == "emails_v2");
    let v2 = Dispatcher::builder(store.clone()).registry(v2_only).build().unwrap();
    assert_eq!(v2.drain().await.unwrap().delivered, 1, "the event recorded during the rename");
    let runs: Vec<(String, i64)> = handled(&store).await.into_iter().map(|h| (h.0, h.1)).collect();
    assert_eq!(runs.last(), Some(&("emails_v2".to_owned(), during.id.0)));
    let names: Vec<String> = v2.status().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["emails_v2"]);
});

#[inbox(subject = "dlp")]
async fn dlp_one(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::give_up("no such mailbox"))
}

#[inbox(subject = "dlp")]
async fn dlp_two(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Err(InboxError::give_up("no such mailbox"))
}

// `dead_letters` returned every dead row at once, however many there were. It pages
// now: newest first, continued from a cursor, with no gap and no repeat even where
// many died in the same instant (the rows of one write share their time).
backend_test!(dead_letters_come_in_pages, |store| async move {
    let d = dispatcher(&store, "dlp_").await;
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    for n in 0..125 {
        tx.record(Subject::new("dlp", n), "bounced", Actor::system()).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(d.drain().await.unwrap().failed, 250);

    // The first page by default: 100.
    let first = store.dead_letters(None).await.unwrap();
    assert_eq!(first.letters.len(), 100);
    assert!(first.next.is_some());

    let walk = |inbox: Option<&'static str>, limit: u32| {
        let store = store.clone();
        async move {
            let (mut seen, mut pages) = (Vec::new(), Vec::new());
            let mut page = store.dead_letters(inbox).limit(limit).await.unwrap();
            loop {
                pages.push(page.letters.len());
                seen.extend(page.letters.iter().map(|l| (l.failed_at, l.id, l.inbox.clone())));
                let Some(next) = page.next else { break };
                page = store.dead_letters(inbox).limit(limit).before(next).await.unwrap();
            }
            (seen, pages)
        }
    };
    let (all, pages) = walk(None, 40).await;
    assert_eq!(pages, [40, 40, 40, 40, 40, 40, 10]);
    let mut ids: Vec<i64> = all.iter().map(|l| l.1).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 250, "no repeat, no gap");
    assert!(all.windows(2).all(|w| (w[0].0, w[0].1) > (w[1].0, w[1].1)), "newest first");

    let (one, pages) = walk(Some("dispatch::dlp_one"), 50).await;
    assert_eq!(pages, [50, 50, 25]);
    assert!(one.iter().all(|l| l.2 == "dispatch::dlp_one"));

    let err = store.dead_letters(None).limit(0).await.unwrap_err();
    assert!(matches!(err, herald::Error::InvalidLimit { got: 0, .. }), "{err:?}");
    let err = store.dead_letters(None).limit(1001).await.unwrap_err();
    assert!(matches!(err, herald::Error::InvalidLimit { got: 1001, .. }), "{err:?}");
});

/// `(subject id, delivery id, attempt)` of every run of `did_flaky` (the subject id
/// names the backend: both tests may share this process).
static DELIVERY_IDS: std::sync::Mutex<Vec<(String, String, u32)>> = std::sync::Mutex::new(Vec::new());

#[inbox(subject = "did", backoff = "5ms", max_attempts = 5)]
async fn did_flaky(event: &Event, cx: &Context) -> Result<(), InboxError> {
    DELIVERY_IDS.lock().unwrap().push((event.subject.id.clone(), cx.delivery_id(), cx.attempt()));
    // What an external API would dedupe on: recording with the delivery id makes the
    // effect happen once, whichever attempt gets through.
    let mut tx = cx.store().begin().await?;
    tx.record(Subject::new("did_effect", event.subject.id.clone()), "sent", Actor::system())
        .idempotency_key(cx.delivery_id())
        .await?;
    tx.commit().await?;
    if cx.attempt() < 3 { Err(InboxError::retry("the API timed out after sending")) } else { Ok(()) }
}

// A handler calling an external API had nothing stable to send as its
// Idempotency-Key: the delivery id is the same on every attempt.
backend_test!(a_delivery_id_is_the_same_on_every_attempt, |store| async move {
    let d = dispatcher(&store, "did_").await;
    d.drain().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let e =
        tx.record(Subject::new("did", format!("{:?}", store.backend())), "happened", Actor::system()).await.unwrap();
    tx.commit().await.unwrap();
    drain_until_settled(&d, 10).await;
    let expected = format!("herald:dispatch::did_flaky:{}", e.id.0);
    let mine: Vec<(String, u32)> =
        DELIVERY_IDS.lock().unwrap().iter().filter(|r| r.0 == e.subject.id).map(|r| (r.1.clone(), r.2)).collect();
    assert_eq!(mine, [(expected.clone(), 1), (expected.clone(), 2), (expected, 3)], "three attempts, one delivery id");
    let effects = store
        .feed()
        .subject(Subject::new("did_effect", format!("{:?}", store.backend())))
        .fetch()
        .await
        .unwrap()
        .events;
    assert_eq!(effects.len(), 1, "the effect happened once");
});
