//! The event store's contract, on SQLite and PostgreSQL alike.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use herald::prelude::*;
use herald::{Error, NewEvent, Recorded};
use serde_json::json;

use common::{count_events, execute};

herald::declare_actions!(subject = "ticket", actions = ["opened", "commented", "viewed", "closed"]);

fn ticket(n: i64) -> Subject {
    Subject::new("ticket", n)
}

fn alice() -> Actor {
    Actor::new("user", "alice")
}

backend_test!(records_every_field, |store| async move {
    let before = Utc::now() - chrono::Duration::seconds(1);
    let mut tx = store.begin().await.unwrap();
    let recorded = tx
        .record(ticket(42), "commented", alice())
        .metadata(json!({ "comment_id": 7, "body": "looks good" }))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let stored = store.event(recorded.id).await.unwrap().expect("event is stored");
    assert_eq!(stored, recorded, "what was recorded is what is read back");
    assert_eq!(stored.subject, Subject::new("ticket", "42"));
    assert_eq!(stored.actor, alice());
    assert_eq!(stored.action, "commented");
    assert_eq!(stored.meta("comment_id"), Some(&json!(7)));
    assert_eq!(stored.meta("body"), Some(&json!("looks good")));
    assert!(stored.created_at > before && stored.created_at <= Utc::now());
    assert_eq!(stored.causation_id, None);
    assert_eq!(stored.correlation_id, stored.id, "a root event correlates with itself");
});

backend_test!(integer_string_and_uuid_subject_ids, |store| async move {
    let uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let subjects = [Subject::new("doc", 7), Subject::new("doc", "slug-seven"), Subject::new("doc", uuid)];
    let mut tx = store.begin().await.unwrap();
    for s in &subjects {
        tx.record(s, "edited", Actor::system()).await.unwrap();
    }
    tx.commit().await.unwrap();
    for s in &subjects {
        let page = store.feed().subject(s).fetch().await.unwrap();
        assert_eq!(page.events.len(), 1, "{s}");
        assert_eq!(&page.events[0].subject, s);
        assert!(page.events[0].actor.is_system());
    }
});

backend_test!(causation_and_correlation_follow_the_chain, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let root = tx.record(ticket(1), "opened", alice()).await.unwrap();
    let child = tx.record(ticket(1), "commented", Actor::system()).caused_by(&root).await.unwrap();
    let grandchild = tx.record(ticket(2), "opened", Actor::system()).caused_by(&child).await.unwrap();
    tx.commit().await.unwrap();

    let child = store.event(child.id).await.unwrap().unwrap();
    let grandchild = store.event(grandchild.id).await.unwrap().unwrap();
    assert_eq!((child.causation_id, child.correlation_id), (Some(root.id), root.id));
    assert_eq!((grandchild.causation_id, grandchild.correlation_id), (Some(child.id), root.id));
});

backend_test!(user_queries_share_the_transaction, |store| async move {
    // The user's own table, written on the same transaction as the event.
    let create = "CREATE TABLE tickets (id BIGINT PRIMARY KEY, title TEXT NOT NULL)";
    execute(&store, create).await.unwrap();

    for commit in [false, true] {
        let mut tx = store.begin().await.unwrap();
        match tx.connection() {
            herald::Connection::Sqlite(c) => {
                sqlx::query("INSERT INTO tickets VALUES (1, 'hello')").execute(c).await.unwrap();
            }
            herald::Connection::Postgres(c) => {
                sqlx::query("INSERT INTO tickets VALUES (1, 'hello')").execute(c).await.unwrap();
            }
        }
        tx.record(ticket(1), "opened", alice()).await.unwrap();
        if commit {
            tx.commit().await.unwrap()
        } else {
            tx.rollback().await.unwrap()
        }
        let rows = execute(&store, "UPDATE tickets SET title = 'hello' WHERE id = 1").await.unwrap();
        assert_eq!(rows, u64::from(commit), "ticket row present only after commit");
        assert_eq!(count_events(&store).await, i64::from(commit), "event present only after commit");
    }
});

backend_test!(rolled_back_events_reach_no_feed, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.record(ticket(1), "opened", alice()).await.unwrap();
    tx.rollback().await.unwrap();

    {
        let mut dropped = store.begin().await.unwrap();
        dropped.record(ticket(1), "commented", alice()).await.unwrap();
        // dropped without commit
    }

    // A savepoint rolled back inside a transaction that commits.
    let mut tx = store.begin().await.unwrap();
    tx.record(ticket(1), "opened", alice()).await.unwrap();
    let mut sp = tx.savepoint().await.unwrap();
    sp.record(ticket(1), "closed", alice()).await.unwrap();
    sp.rollback().await.unwrap();
    let mut kept = tx.savepoint().await.unwrap();
    kept.record(ticket(1), "viewed", alice()).await.unwrap();
    kept.commit().await.unwrap();
    tx.commit().await.unwrap();

    let by_subject = store.feed().subject(ticket(1)).fetch().await.unwrap();
    let by_actor = store.feed().actor(alice()).fetch().await.unwrap();
    let everything = store.feed().fetch().await.unwrap();
    for page in [by_subject, by_actor, everything] {
        let actions: Vec<_> = page.events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["viewed", "opened"]);
    }
    assert_eq!(count_events(&store).await, 2);
});

backend_test!(bad_input_is_typed_and_writes_nothing, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.record(ticket(1), "opened", alice()).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let err = tx.record(ticket(1), "teleported", alice()).await.unwrap_err();
    match &err {
        Error::UnknownAction { subject, action, allowed } => {
            assert_eq!((subject.as_str(), action.as_str()), ("ticket", "teleported"));
            assert_eq!(allowed, &["closed", "commented", "opened", "viewed"]);
        }
        other => panic!("expected UnknownAction, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "unknown action `teleported` for subject `ticket`; declared actions are closed, commented, opened, viewed"
    );

    for (metadata, found) in [(json!([1, 2]), "an array"), (json!("text"), "a string"), (json!(null), "null")] {
        let err = tx.record(ticket(1), "commented", alice()).metadata(metadata).await.unwrap_err();
        assert!(matches!(err, Error::MetadataNotObject { found: f } if f == found), "{err:?}");
    }
    let err = tx.record(Subject::new("", 1), "opened", alice()).await.unwrap_err();
    assert!(matches!(err, Error::EmptySubjectType), "{err:?}");
    let err = tx.record(ticket(1), "opened", Actor::new("", 1)).await.unwrap_err();
    assert!(matches!(err, Error::EmptyActorType), "{err:?}");
    let err = tx.record(Subject::new("undeclared", 1), "", alice()).await.unwrap_err();
    assert!(matches!(err, Error::EmptyAction), "{err:?}");

    // One bad event in a batch: nothing of the batch is written.
    let batch = vec![
        NewEvent::new(ticket(2), "opened", alice()),
        NewEvent::new(ticket(2), "commented", alice()).metadata(json!(3)),
    ];
    let err = tx.record_all(batch).await.unwrap_err();
    assert!(matches!(err, Error::MetadataNotObject { found: "a number" }), "{err:?}");

    // The transaction is still usable and commits only the good event.
    tx.record(Subject::new("undeclared", 1), "anything_goes", alice()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 2, "only the two valid events exist");
});

backend_test!(events_are_immutable_in_the_database, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let e = tx.record(ticket(1), "opened", alice()).await.unwrap();
    tx.commit().await.unwrap();

    let update = execute(&store, "UPDATE herald_events SET action = 'closed'").await.unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = execute(&store, "DELETE FROM herald_events").await.unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    if store.backend() == herald::Backend::Postgres {
        let truncate = execute(&store, "TRUNCATE herald_events").await.unwrap_err();
        assert!(truncate.to_string().contains("append-only"), "{truncate}");
    }
    assert_eq!(store.event(e.id).await.unwrap(), Some(e), "the fact is unchanged");
});

backend_test!(throttle_skips_duplicates_within_the_window, |store| async move {
    let window = Duration::from_millis(400);
    let mut tx = store.begin().await.unwrap();
    let first = tx.record(ticket(1), "viewed", alice()).throttle(window).await.unwrap();
    let second = tx.record(ticket(1), "viewed", Actor::new("user", "bob")).throttle(window).await.unwrap();
    let other_subject = tx.record(ticket(2), "viewed", alice()).throttle(window).await.unwrap();
    let other_action = tx.record(ticket(1), "commented", alice()).throttle(window).await.unwrap();
    tx.commit().await.unwrap();
    assert!(first.is_some());
    assert!(second.is_none(), "same subject and action within the window is throttled");
    assert!(other_subject.is_some() && other_action.is_some());

    tokio::time::sleep(window + Duration::from_millis(50)).await;
    let mut tx = store.begin().await.unwrap();
    let later = tx.record(ticket(1), "viewed", alice()).throttle(window).metadata(json!({"n": 2})).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(later.expect("window passed").meta("n"), Some(&json!(2)));
    let views = store.feed().subject(ticket(1)).actions(["viewed"]).fetch().await.unwrap();
    assert_eq!(views.events.len(), 2);
});

backend_test!(concurrent_throttled_records_write_exactly_one, |store| async move {
    const TASKS: usize = 16;
    for round in 0..3 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut tx = store.begin().await?;
                    let recorded = tx
                        .record(ticket(100 + round), "viewed", Actor::new("user", n))
                        .throttle(Duration::from_secs(300))
                        .await?;
                    tx.commit().await?;
                    Ok::<_, herald::Error>(recorded.is_some())
                })
            })
            .collect();
        let mut written = 0;
        for t in tasks {
            written += usize::from(t.await.unwrap().unwrap());
        }
        assert_eq!(written, 1, "round {round}: exactly one task records");
        let page = store.feed().subject(ticket(100 + round)).fetch().await.unwrap();
        assert_eq!(page.events.len(), 1, "round {round}: exactly one row");
    }
    // PostgreSQL serializes on a lock row per (subject, action); committed transactions
    // leave none behind, so the table does not grow with every pair ever throttled.
    if let Some(pool) = store.postgres_pool() {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM herald_throttle").fetch_one(pool).await.unwrap();
        assert_eq!(left, 0, "lock rows left behind");
    }
});

backend_test!(batch_records_in_order, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let events = (0..5000).map(|n| NewEvent::new(ticket(n % 7), "commented", alice()).metadata(json!({ "n": n })));
    let ids = tx.record_all(events).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 5000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend in the order given");
    for (n, id) in ids.iter().enumerate().step_by(997) {
        let e = store.event(*id).await.unwrap().unwrap();
        assert_eq!(e.meta("n"), Some(&json!(n)));
        assert_eq!(e.subject, ticket(n as i64 % 7));
    }
    assert_eq!(count_events(&store).await, 5000);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.record_all(Vec::new()).await.unwrap().is_empty());
});

backend_test!(feed_filters_combine, |store| async move {
    let bob = Actor::new("user", "bob");
    let mut tx = store.begin().await.unwrap();
    tx.record(ticket(1), "opened", alice()).await.unwrap();
    tx.record(ticket(1), "commented", &bob).await.unwrap();
    tx.record(ticket(2), "opened", &bob).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let split = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tx = store.begin().await.unwrap();
    tx.record(ticket(1), "closed", alice()).await.unwrap();
    tx.record(ticket(2), "commented", alice()).await.unwrap();
    tx.commit().await.unwrap();

    let actions =
        |page: herald::Page| page.events.iter().map(|e| format!("{}/{}", e.subject.id, e.action)).collect::<Vec<_>>();
    let feed = || store.feed();
    assert_eq!(actions(feed().subject(ticket(1)).fetch().await.unwrap()), ["1/closed", "1/commented", "1/opened"]);
    assert_eq!(actions(feed().actor(&bob).fetch().await.unwrap()), ["2/opened", "1/commented"]);
    assert_eq!(actions(feed().actions(["opened"]).fetch().await.unwrap()), ["2/opened", "1/opened"]);
    assert_eq!(actions(feed().since(split).fetch().await.unwrap()), ["2/commented", "1/closed"]);
    assert_eq!(actions(feed().until(split).actor(alice()).fetch().await.unwrap()), ["1/opened"]);
    assert_eq!(
        actions(feed().subject(ticket(1)).actor(alice()).actions(["opened", "closed"]).fetch().await.unwrap()),
        ["1/closed", "1/opened"]
    );
    assert!(feed().subject(ticket(3)).fetch().await.unwrap().events.is_empty());
});

backend_test!(pagination_walks_every_event_once_while_recording, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let ids = tx.record_all((0..250).map(|n| NewEvent::new(ticket(n % 3), "commented", alice()))).await.unwrap();
    tx.commit().await.unwrap();
    let mut expected: Vec<_> = ids.clone();

    // A writer keeps recording newer events while we page backwards.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let mut tx = store.begin().await.unwrap();
                tx.record(ticket(9), "commented", alice()).await.unwrap();
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let first = store.feed().actor(alice()).limit(20).fetch().await.unwrap();
    let mut seen: Vec<_> = first.events.clone();
    let mut next = first.next;
    while let Some(cursor) = next {
        // The cursor travels as opaque text, as it would through an API.
        let cursor: herald::Cursor = cursor.to_string().parse().unwrap();
        let page = store.feed().actor(alice()).limit(20).before(cursor).fetch().await.unwrap();
        assert!(page.events.len() <= 20);
        seen.extend(page.events);
        next = page.next;
    }
    writer.await.unwrap();

    let keys: Vec<_> = seen.iter().map(|e| (e.created_at, e.id)).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "strictly newest first, no duplicates");
    let seen_ids: HashSet<_> = seen.iter().map(|e| e.id).collect();
    expected.retain(|id| !seen_ids.contains(id));
    assert!(expected.is_empty(), "every event that existed before the walk was returned: missing {expected:?}");
});

backend_test!(bad_cursor_and_limit_are_typed_errors, |store| async move {
    for bad in [
        "",
        "zz",
        "not-a-cursor-not-a-cursor-123456",
        "7fffffffffffffff0000000000000001",
        "0000000000000001ffffffffffffffff",
    ] {
        let err = bad.parse::<herald::Cursor>().unwrap_err();
        assert!(matches!(err, Error::InvalidCursor(ref s) if s == bad), "{bad}: {err:?}");
    }
    let err = store.feed().limit(0).fetch().await.unwrap_err();
    assert!(matches!(err, Error::InvalidLimit { got: 0, max: 1000 }), "{err:?}");
    let err = store.feed().limit(1001).fetch().await.unwrap_err();
    assert!(matches!(err, Error::InvalidLimit { got: 1001, .. }), "{err:?}");
});

backend_test!(migrate_is_idempotent_and_separate, |store| async move {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    // Herald's history lives in its own table, not in the application's _sqlx_migrations.
    let rows = execute(&store, "UPDATE _herald_migrations SET description = description").await.unwrap();
    assert!(rows >= 1);
    assert!(execute(&store, "SELECT 1 FROM _sqlx_migrations").await.is_err());
});

backend_test!(feed_pages_run_on_indexes, |store| async move {
    // 100 transactions of 200 events: a batch shares one timestamp, as a real one does.
    for batch in 0..100 {
        let mut tx = store.begin().await.unwrap();
        let events = (0..200)
            .map(|n| batch * 200 + n)
            .map(|n| NewEvent::new(ticket(n % 500), "commented", Actor::new("user", n % 300)));
        tx.record_all(events).await.unwrap();
        tx.commit().await.unwrap();
    }
    execute(&store, "ANALYZE").await.unwrap();
    let cursor = store.feed().limit(1000).fetch().await.unwrap().next.unwrap();

    let feeds = [
        ("herald_events_subject", store.feed().subject(ticket(7)).limit(20)),
        ("herald_events_subject", store.feed().subject(ticket(7)).limit(20).before(cursor)),
        ("herald_events_actor", store.feed().actor(Actor::new("user", 3)).limit(20).before(cursor)),
        ("herald_events_time", store.feed().limit(20).before(cursor)),
        // Oldest first: the same indexes, walked backward.
        ("herald_events_subject", store.feed().subject(ticket(7)).oldest_first().limit(20)),
        ("herald_events_actor", store.feed().actor(Actor::new("user", 3)).oldest_first().limit(20).before(cursor)),
        ("herald_events_time", store.feed().oldest_first().limit(20).before(cursor)),
    ];
    for (index, feed) in feeds {
        let plan = feed.explain().await.unwrap();
        assert!(plan.contains(index), "expected {index} in:\n{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("TEMP B-TREE") && !plan.contains("Sort"), "{plan}");
    }
});

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = Store::connect("mysql://localhost/db").await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedUrl(ref u) if u == "mysql://localhost/db"), "{err:?}");
}

// During a server restart a worker's log read "delivery pass failed; will retry …
// error=database error": the cause was dropped. It is now part of the message.
#[tokio::test]
async fn a_database_error_says_what_went_wrong() {
    // Nothing listens on port 1.
    let err = Store::connect("postgres://postgres@127.0.0.1:1/test").await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("database error: ") && text.len() > "database error: ".len() + 10, "{text}");
    assert!(text.to_lowercase().contains("refused"), "the cause is shown: {text}");
    // A chain printer does not say it twice.
    let mut chain = text.clone();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain = format!("{chain}: {s}");
        source = s.source();
    }
    assert_eq!(chain.matches("refused").count(), text.matches("refused").count(), "{chain}");

    // A statement the database refuses names the database's reason.
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let err = store.feed().fetch().await.unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
}

// Walking an audit trail from the start was a manual cursor loop plus `reverse()`,
// and `feed().subject(..)` took only a reference. Feeds read oldest first, page by
// page or all at once, and take a subject as `record` does.
backend_test!(a_trail_reads_oldest_first_page_by_page, |store| async move {
    let doc = Subject::new("doc", 1);
    // Three transactions; events of one transaction share their time.
    let mut recorded = Vec::new();
    for batch in 0..3 {
        let mut tx = store.begin().await.unwrap();
        for n in 0..7 {
            recorded.push(tx.record(&doc, format!("step_{batch}_{n}"), Actor::system()).await.unwrap().id);
            tx.record(Subject::new("doc", 2), "noise", Actor::system()).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let newest: Vec<EventId> =
        store.feed().subject(&doc).limit(1000).fetch().await.unwrap().events.iter().map(|e| e.id).collect();
    let mut reversed = newest.clone();
    reversed.reverse();
    assert_eq!(reversed, recorded, "newest first is commit order reversed");

    // By value, oldest first, in pages of 4: every event once, in commit order.
    let mut pages = store.feed().subject(doc.clone()).oldest_first().limit(4).pages();
    let (mut sizes, mut walked) = (Vec::new(), Vec::new());
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        sizes.push(page.events.len());
        walked.extend(page.events.iter().map(|e| e.id));
    }
    assert_eq!(sizes, [4, 4, 4, 4, 4, 1]);
    assert_eq!(walked, recorded);
    assert!(pages.next().await.is_none(), "done stays done");

    let all: Vec<EventId> =
        store.feed().subject(&doc).oldest_first().limit(5).all().await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(all, recorded);
    let all_newest: Vec<EventId> =
        store.feed().subject(&doc).limit(3).all().await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(all_newest, newest);

    // An error ends the walk.
    let mut bad = store.feed().subject(&doc).limit(0).pages();
    assert!(matches!(bad.next().await, Some(Err(Error::InvalidLimit { .. }))));
    assert!(bad.next().await.is_none());
});

// A request retried by a client, or a webhook delivered twice, recorded its event
// twice: nothing made "once" possible. An idempotency key does, race-free.
backend_test!(one_event_per_idempotency_key_even_under_racing_writers, |store| async move {
    let order = Subject::new("order", 1);
    let racers = (0..16).map(|n| {
        let (store, order) = (store.clone(), order.clone());
        tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let got = tx
                .record(&order, "paid", Actor::new("user", n))
                .idempotency_key("stripe:evt_1")
                .metadata(serde_json::json!({ "writer": n }))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            got
        })
    });
    let mut outcomes = Vec::new();
    for r in racers.collect::<Vec<_>>() {
        outcomes.push(r.await.unwrap());
    }
    let new: Vec<&Recorded> = outcomes.iter().filter(|o| matches!(o, Recorded::New(_))).collect();
    assert_eq!(new.len(), 1, "{outcomes:?}");
    let id = new[0].id();
    assert!(outcomes.iter().all(|o| o.id() == id), "every writer gets the one event's id: {outcomes:?}");
    assert_eq!(count_events(&store).await, 1);

    // Inside record_all, with a key twice and one already used: their ids, in order.
    let mut tx = store.begin().await.unwrap();
    let ids = tx
        .record_all([
            NewEvent::new(&order, "shipped", Actor::system()).idempotency_key("ship:1"),
            NewEvent::new(&order, "noted", Actor::system()),
            NewEvent::new(&order, "shipped", Actor::system()).idempotency_key("ship:1"),
            NewEvent::new(&order, "paid", Actor::system()).idempotency_key("stripe:evt_1"),
        ])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((ids[2], ids[3]), (ids[0], id));
    assert_ne!(ids[0], ids[1]);
    assert_eq!(count_events(&store).await, 3);

    // Rolled back, the key is free again.
    let mut tx = store.begin().await.unwrap();
    let gone = tx.record(&order, "refunded", Actor::system()).idempotency_key("refund:1").await.unwrap();
    assert!(matches!(gone, Recorded::New(_)));
    tx.rollback().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let kept = tx.record(&order, "refunded", Actor::system()).idempotency_key("refund:1").await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(kept, Recorded::New(_)), "{kept:?}");

    // A key that cannot be stored is refused, nothing written.
    let mut tx = store.begin().await.unwrap();
    let err = tx.record(&order, "paid", Actor::system()).idempotency_key("").await.unwrap_err();
    assert!(matches!(err, Error::EmptyIdempotencyKey), "{err:?}");
    let err = tx.record(&order, "paid", Actor::system()).idempotency_key("a\0b").await.unwrap_err();
    assert!(matches!(err, Error::ContainsNul { .. }), "{err:?}");
    let err = tx.record(&order, "paid", Actor::system()).idempotency_key("k".repeat(2000)).await.unwrap_err();
    assert!(matches!(err, Error::TooLong { .. }), "{err:?}");
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 4);
});

// A user's own SQL on a Herald transaction had to be written once per backend (the
// example and the tests carried `exec!`/`fetch!` macros matching on the connection).
// One query, `$n` placeholders, common values, rows by `FromRow`, on both.
backend_test!(your_own_sql_is_written_once_for_both_backends, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.query(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, paid BOOLEAN NOT NULL, total DOUBLE PRECISION, \
         lines JSONB, placed_at TIMESTAMPTZ, event_id BIGINT)",
    )
    .execute()
    .await
    .unwrap();
    let placed = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z").unwrap().with_timezone(&Utc);
    let event = tx.record(Subject::new("order", 1), "placed", Actor::system()).await.unwrap();
    let inserted = tx
        .query("INSERT INTO orders (id, customer, paid, total, lines, placed_at, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(1)
        .bind("alice")
        .bind(true)
        .bind(12.5)
        .bind(json!([{ "sku": "A1", "qty": 2 }]))
        .bind(placed)
        .bind(event.id)
        .execute()
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    // Typed NULLs: PostgreSQL takes each for a column of its type.
    tx.query("INSERT INTO orders (id, customer, paid, total, lines, placed_at, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(2_i64)
        .bind(None::<String>)
        .bind(false)
        .bind(None::<f64>)
        .bind(None::<serde_json::Value>)
        .bind(None::<chrono::DateTime<Utc>>)
        .bind(None::<i64>)
        .execute()
        .await
        .unwrap();
    type Row = (
        i64,
        Option<String>,
        bool,
        Option<f64>,
        Option<sqlx::types::Json<serde_json::Value>>,
        Option<chrono::DateTime<Utc>>,
    );
    let rows: Vec<Row> = tx
        .query("SELECT id, customer, paid, total, lines, placed_at FROM orders ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].0, rows[0].1.as_deref(), rows[0].2, rows[0].3), (1, Some("alice"), true, Some(12.5)));
    assert_eq!(rows[0].4.as_ref().map(|j| j.0.clone()), Some(json!([{ "sku": "A1", "qty": 2 }])));
    assert_eq!(rows[0].5, Some(placed));
    assert_eq!((rows[1].1.as_deref(), rows[1].3, rows[1].5), (None, None, None));

    let (id,): (i64,) = tx.query("SELECT event_id FROM orders WHERE id = $1").bind(1).fetch_one().await.unwrap();
    assert_eq!(id, event.id.0);
    let none: Option<(i64,)> = tx.query("SELECT id FROM orders WHERE id = $1").bind(99).fetch_optional().await.unwrap();
    assert_eq!(none, None);
    let err = tx.query("SELECT id FROM orders WHERE id = $1").bind(99).fetch_one::<(i64,)>().await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    let err = tx.query("SELECT nope FROM orders").execute().await.unwrap_err();
    assert!(matches!(err, Error::Database(_)) && err.to_string().contains("nope"), "{err}");
    tx.commit().await.unwrap();
});
