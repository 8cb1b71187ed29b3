//! `herald::testing` as an application's test suite would use it: the classic
//! Rails-style cases (recording, metadata, throttling, an email inbox, transitions),
//! and the messages a failing assertion prints.
//!
//! Store tests run on SQLite and on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Outside CI an unreachable server skips
//! the PostgreSQL half with a message; under CI (`CI` set) it fails the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::prelude::*;
use herald::testing::{self, TestStore};
use herald::{NewEvent, Registry};
use serde_json::json;

// ---- the application under test ----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
#[state_machine(subject = "issue")]
#[transition(start: Open -> InProgress)]
#[transition(resolve: InProgress -> Resolved)]
#[transition(close: Open | InProgress | Resolved -> Closed)]
enum IssueStatus {
    #[initial]
    Open,
    InProgress,
    Resolved,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
#[action(subject = "issue")]
enum IssueAction {
    Created,
    Assigned,
    Commented,
    Viewed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Email {
    to: String,
    about: String,
}

/// Collects the emails it is asked to send.
#[derive(Debug, Clone, Default)]
struct Mailer {
    outbox: Arc<Mutex<Vec<Email>>>,
}

impl Mailer {
    fn send(&self, to: &str, about: String) {
        self.outbox.lock().unwrap().push(Email { to: to.to_owned(), about });
    }

    fn sent(&self) -> Vec<Email> {
        self.outbox.lock().unwrap().clone()
    }
}

fn email(to: &str, about: &str) -> Email {
    Email { to: to.to_owned(), about: about.to_owned() }
}

const EMAIL_INBOX: &str = "testing_helpers::email_notifications";

/// Emails the issue's subscribers (user ids in the metadata) about assignments,
/// comments and status changes, except whoever did it, and records each email sent.
#[inbox(subject = "issue", actions = ["assigned", "commented", "status_changed"])]
async fn email_notifications(event: &Event, cx: &Context) -> Result<(), InboxError> {
    let mailer = cx.resource::<Mailer>()?;
    let subscribers = event.meta("subscribers").and_then(|s| s.as_array()).into_iter().flatten();
    for user in subscribers.filter_map(|s| s.as_str()) {
        if event.actor == Actor::new("user", user) {
            continue;
        }
        mailer.send(user, format!("{} {}", event.subject, event.action));
        cx.record(Subject::new("email", user), "sent", Actor::system(), json!({ "about": event.action })).await?;
    }
    Ok(())
}

fn issue(n: i64) -> Subject {
    Subject::new("issue", n)
}

fn alice() -> Actor {
    Actor::new("user", "alice")
}

// ---- the harness: each store test on SQLite and on PostgreSQL ------------------------

/// A PostgreSQL test store; `None` (skip) when the server is unreachable outside CI.
async fn postgres() -> Option<TestStore> {
    match TestStore::postgres().await {
        Ok(store) => Some(store),
        Err(e) if e.is_unreachable() && std::env::var_os("CI").is_none() => {
            eprintln!("skipping the PostgreSQL half: {e}; set CI=1 to make this fatal");
            None
        }
        Err(e) if e.is_unreachable() => panic!("PostgreSQL is required under CI: {e}"),
        Err(e) => panic!("PostgreSQL test store: {e:?}"),
    }
}

/// Defines `mod $name { sqlite, postgres }`, running the body on each backend.
macro_rules! on_each_backend {
    ($name:ident, |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $store = TestStore::sqlite().await.unwrap();
                $body.await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some($store) = super::postgres().await else { return };
                $body.await;
            }
        }
    };
}

/// The text of a panic caught from a spawned assertion.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// Runs an assertion that must fail; returns its message.
async fn failure<F>(assertion: F) -> String
where
    F: std::future::IntoFuture,
    F::IntoFuture: Send + 'static,
    F::Output: Send + 'static,
{
    let joined = tokio::spawn(assertion.into_future()).await;
    match joined {
        Ok(_) => panic!("the assertion passed, but it should have failed"),
        Err(e) => panic_text(e.into_panic()),
    }
}

// ---- recording -------------------------------------------------------------------------

on_each_backend!(recording_creates_an_event, |store| async move {
    testing::assert_not_recorded(&store).subject(issue(1)).await;

    let mut tx = store.begin().await.unwrap();
    let created = tx.record(issue(1), IssueAction::Created, alice()).await.unwrap();
    tx.commit().await.unwrap();

    let found = testing::assert_recorded(&store).subject(issue(1)).action(IssueAction::Created).actor(alice()).await;
    assert_eq!(found.id, created.id);
    testing::assert_recorded(&store).subject(issue(1)).count(1).await;
    testing::assert_not_recorded(&store).subject(issue(2)).await;
});

on_each_backend!(rolled_back_events_are_not_recorded, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.record(issue(1), IssueAction::Created, alice()).await.unwrap();
    tx.rollback().await.unwrap();
    testing::assert_not_recorded(&store).subject(issue(1)).await;
});

on_each_backend!(metadata_is_stored, |store| async move {
    let mut tx = store.begin().await.unwrap();
    tx.record(issue(1), IssueAction::Commented, alice())
        .metadata(json!({
            "comment_id": 7,
            "body": { "format": "markdown", "text": "LGTM" },
            "mentions": ["bob"],
        }))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let event = testing::assert_recorded(&store)
        .subject(issue(1))
        .action(IssueAction::Commented)
        .actor(alice())
        .metadata_includes(json!({ "comment_id": 7 }))
        .await;
    assert_eq!(event.meta("mentions"), Some(&json!(["bob"])));
    // Nested objects are matched as subsets; values exactly; keys add up.
    testing::assert_recorded(&store)
        .metadata_includes(json!({ "body": { "format": "markdown" } }))
        .metadata_includes(json!({ "mentions": ["bob"] }))
        .await;
    testing::assert_recorded(&store).metadata_includes(json!({ "comment_id": 7.0 })).await;
    testing::assert_not_recorded(&store).metadata_includes(json!({ "comment_id": 8 })).await;
    testing::assert_not_recorded(&store).metadata_includes(json!({ "body": { "format": "html" } })).await;
    testing::assert_not_recorded(&store).metadata_includes(json!({ "mentions": ["bob", "carol"] })).await;
});

on_each_backend!(throttle_prevents_duplicates, |store| async move {
    for n in 0..3 {
        let mut tx = store.begin().await.unwrap();
        let viewed =
            tx.record(issue(1), IssueAction::Viewed, alice()).throttle(Duration::from_secs(300)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(viewed.is_some(), n == 0, "only the first view within 5 minutes is recorded");
    }
    let mut tx = store.begin().await.unwrap();
    tx.record(issue(2), IssueAction::Viewed, alice()).throttle(Duration::from_secs(300)).await.unwrap();
    tx.commit().await.unwrap();

    testing::assert_recorded(&store).subject(issue(1)).action(IssueAction::Viewed).count(1).await;
    let views = testing::assert_recorded(&store).action(IssueAction::Viewed).count(2).await;
    assert_eq!(views[0].subject, issue(2), "newest first");
});

// ---- transitions -----------------------------------------------------------------------

on_each_backend!(transition_is_recorded_from_and_to, |store| async move {
    let mut tx = store.begin().await.unwrap();
    IssueStatus::fire(&mut tx, issue(1), IssueStatus::start, alice())
        .metadata(json!({ "reason": "triage" }))
        .await
        .unwrap();
    IssueStatus::fire(&mut tx, issue(1), IssueStatus::resolve, alice()).await.unwrap();
    tx.commit().await.unwrap();

    let started = testing::assert_transition(&store, &issue(1), "open", "in_progress").await;
    assert_eq!((started.meta("event"), started.meta("reason")), (Some(&json!("start")), Some(&json!("triage"))));
    testing::assert_transition(&store, &issue(1), IssueStatus::InProgress, IssueStatus::Resolved).await;
    testing::assert_recorded(&store).subject(issue(1)).action("status_changed").count(2).await;
});

// ---- the email inbox ---------------------------------------------------------------------

#[test]
fn email_inbox_routes_assigned_but_not_viewed() {
    let registry = Registry::collect().unwrap();
    let assigned = testing::event(issue(1), IssueAction::Assigned, alice()).build();
    testing::assert_routes(&registry, &assigned, [EMAIL_INBOX]);
    let viewed = testing::event(issue(1), IssueAction::Viewed, alice()).build();
    testing::assert_routes(&registry, &viewed, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_inbox_sends_for_assigned() {
    let store = TestStore::from_env().await.unwrap();
    let mailer = Mailer::default();
    let assigned = testing::event(issue(1), IssueAction::Assigned, alice())
        .metadata(json!({ "assignee": "bob", "subscribers": ["bob", "carol"] }))
        .id(7)
        .build();
    let cx = testing::context(&store).resource(mailer.clone()).build(&assigned);

    email_notifications(&assigned, &cx).await.unwrap();

    assert_eq!(mailer.sent(), [email("bob", "issue:1 assigned"), email("carol", "issue:1 assigned")]);
    // What the inbox recorded carries the event as its cause.
    let sent = testing::assert_recorded(&store).action("sent").caused_by(&assigned).count(2).await;
    assert!(sent.iter().all(|e| e.correlation_id == assigned.id));
    testing::assert_recorded(&store)
        .subject(Subject::new("email", "bob"))
        .metadata_includes(json!({ "about": "assigned" }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_is_not_emailed_about_their_own_action() {
    let store = TestStore::from_env().await.unwrap();
    let mailer = Mailer::default();
    let commented = testing::event(issue(1), IssueAction::Commented, alice())
        .metadata(json!({ "comment_id": 7, "subscribers": ["alice", "bob"] }))
        .build();
    let cx = testing::context(&store).resource(mailer.clone()).attempt(2).build(&commented);

    email_notifications(&commented, &cx).await.unwrap();

    assert_eq!(mailer.sent(), [email("bob", "issue:1 commented")]);
    testing::assert_not_recorded(&store).subject(Subject::new("email", "alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_inbox_without_a_mailer_gives_up() {
    let store = TestStore::from_env().await.unwrap();
    let assigned = testing::event(issue(1), IssueAction::Assigned, alice()).build();
    let cx = testing::context(&store).build(&assigned);
    let err = email_notifications(&assigned, &cx).await.unwrap_err();
    assert!(err.message().contains("no resource of type"), "{err}");
}

on_each_backend!(dispatcher_emails_for_assigned_and_not_for_viewed, |store| async move {
    let mailer = Mailer::default();
    let registry = Registry::collect().unwrap().retain(|d| d.name == EMAIL_INBOX);
    let dispatcher = Dispatcher::builder(store.clone()).registry(registry).resource(mailer.clone()).build().unwrap();
    dispatcher.drain().await.unwrap(); // registers the inbox: it starts from now

    let mut tx = store.begin().await.unwrap();
    let subscribers = json!({ "subscribers": ["bob"] });
    tx.record(issue(1), IssueAction::Viewed, alice()).metadata(&subscribers).await.unwrap();
    let assigned = tx.record(issue(1), IssueAction::Assigned, alice()).metadata(&subscribers).await.unwrap();
    tx.commit().await.unwrap();
    dispatcher.drain().await.unwrap();

    assert_eq!(mailer.sent(), [email("bob", "issue:1 assigned")]);
    testing::assert_recorded(&store).subject(Subject::new("email", "bob")).caused_by(&assigned).count(1).await;
});

// ---- built events and contexts -----------------------------------------------------------

#[test]
fn built_events_carry_ids_and_causes() {
    let root = testing::event(issue(1), IssueAction::Assigned, alice()).id(7).build();
    assert_eq!((root.id.0, root.correlation_id.0, root.causation_id), (7, 7, None));
    let follow_up = testing::event(Subject::new("email", "bob"), "sent", Actor::system()).caused_by(&root).build();
    assert_eq!((follow_up.causation_id.map(|c| c.0), follow_up.correlation_id.0), (Some(7), 7));
    assert_ne!(follow_up.id, root.id);

    let typo = std::panic::catch_unwind(|| testing::event(issue(1), "comented", alice()).build());
    let message = panic_text(typo.unwrap_err());
    assert!(message.contains("unknown action `comented` for subject `issue`"), "{message}");
    assert!(testing::event(issue(1), IssueAction::Created, alice()).metadata(json!("text")).try_build().is_err());
}

// ---- failure messages --------------------------------------------------------------------

on_each_backend!(failed_assertions_show_what_was_recorded, |store| async move {
    let mut tx = store.begin().await.unwrap();
    let commented =
        tx.record(issue(1), IssueAction::Commented, alice()).metadata(json!({ "comment_id": 8 })).await.unwrap();
    let assigned =
        tx.record(issue(1), IssueAction::Assigned, alice()).metadata(json!({ "assignee": "bob" })).await.unwrap();
    tx.commit().await.unwrap();

    let message = failure(
        testing::assert_recorded(&store)
            .subject(issue(1))
            .action(IssueAction::Commented)
            .metadata_includes(json!({ "comment_id": 7 })),
    )
    .await;
    let expected = [
        "assert_recorded failed at tests/testing_helpers.rs:".to_owned(),
        r#"expected: an event with subject issue:1, action `commented`, metadata including {"comment_id":7}"#
            .to_owned(),
        "found none. Recorded events, newest first (all 2):".to_owned(),
        format!(
            "  #{} issue:1 assigned by user:alice {{\"assignee\":\"bob\"}}\n      differs: action is `assigned`, \
             expected `commented`; metadata.comment_id is missing, expected 7",
            assigned.id
        ),
        format!(
            "  #{} issue:1 commented by user:alice {{\"comment_id\":8}}\n      differs: metadata.comment_id is 8, \
             expected 7",
            commented.id
        ),
    ];
    for part in &expected {
        assert!(message.contains(part.as_str()), "missing {part:?} in:\n{message}");
    }
    assert!(message.find("issue:1 assigned") < message.find("issue:1 commented"), "newest first:\n{message}");

    let message =
        failure(testing::assert_recorded(&store).subject(issue(1)).action(IssueAction::Commented).count(2)).await;
    assert!(
        message.contains("expected: exactly 2 events with subject issue:1, action `commented`\nfound 1."),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "#{} issue:1 commented by user:alice {{\"comment_id\":8}}\n      matches",
            commented.id
        )),
        "{message}"
    );

    let message = failure(testing::assert_not_recorded(&store).action(IssueAction::Assigned)).await;
    assert!(message.contains("assert_not_recorded failed at tests/testing_helpers.rs:"), "{message}");
    assert!(message.contains("expected: no event with action `assigned`\nfound 1."), "{message}");

    let message = failure(testing::assert_recorded(&store).actor(Actor::new("user", "bob"))).await;
    assert!(message.contains("differs: actor is user:alice, expected user:bob"), "{message}");

    let message = failure(testing::assert_recorded(&store).metadata_includes(json!(["not", "an", "object"]))).await;
    assert!(message.contains("metadata_includes takes a JSON object, got an array"), "{message}");
});

on_each_backend!(failed_transition_assertions_list_the_transitions, |store| async move {
    let mut tx = store.begin().await.unwrap();
    IssueStatus::fire(&mut tx, issue(1), IssueStatus::start, alice()).await.unwrap();
    tx.commit().await.unwrap();

    let message = failure(testing::assert_transition(&store, &issue(1), "open", "resolved")).await;
    assert!(message.contains("assert_transition failed at tests/testing_helpers.rs:"), "{message}");
    assert!(message.contains("expected: issue:1 to go from `open` to `resolved`"), "{message}");
    assert!(message.contains("its transitions, newest first (1 of 1):\n  #"), "{message}");
    assert!(message.contains(" open -> in_progress (start) by user:alice"), "{message}");

    let message = failure(testing::assert_transition(&store, &issue(2), IssueStatus::Open, IssueStatus::Closed)).await;
    assert!(message.contains("found no status_changed event for issue:2. Recorded events"), "{message}");
    assert!(message.contains("differs: subject is issue:1, expected issue:2"), "{message}");
});

on_each_backend!(failure_messages_show_at_most_twenty_events, |store| async move {
    let failure_on_empty = failure(testing::assert_recorded(&store)).await;
    assert!(
        failure_on_empty.contains("expected: an event\nfound none. Nothing was recorded in this store."),
        "{failure_on_empty}"
    );

    let mut tx = store.begin().await.unwrap();
    let ids = tx.record_all((1..=25).map(|n| NewEvent::new(Subject::new("page", n), "viewed", alice()))).await.unwrap();
    tx.commit().await.unwrap();

    let message = failure(testing::assert_recorded(&store).action("edited")).await;
    assert!(message.contains("Recorded events, newest first (the 20 newest):"), "{message}");
    let shown: Vec<&str> = message.lines().filter(|l| l.starts_with("  #")).collect();
    assert_eq!(shown.len(), 20, "{message}");
    assert!(shown[0].starts_with(&format!("  #{} page:25 viewed", ids[24])), "{message}");
    assert!(shown[19].starts_with(&format!("  #{} page:6 viewed", ids[5])), "{message}");
});

#[test]
fn failed_route_assertions_show_the_difference() {
    let registry = Registry::collect().unwrap();
    let viewed = testing::event(issue(1), IssueAction::Viewed, alice()).id(3).build();
    let failed = std::panic::catch_unwind(|| {
        testing::assert_routes(&registry, &viewed, [EMAIL_INBOX, "email_notifications"]);
    });
    let message = panic_text(failed.unwrap_err());
    for part in [
        "assert_routes failed for event #3 issue:1 viewed by user:alice",
        "  expected: `email_notifications`, `testing_helpers::email_notifications`\n  actual:   none\n",
        "  missing:  `email_notifications`, `testing_helpers::email_notifications`\n  unexpected: none",
        "`email_notifications` is not a registered inbox; did you mean `testing_helpers::email_notifications`?",
        "registered inboxes for subject `issue`:\n  `testing_helpers::email_notifications` \
         (assigned, commented, status_changed): not this action",
    ] {
        assert!(message.contains(part), "missing {part:?} in:\n{message}");
    }
}
