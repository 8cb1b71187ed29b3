//! `#[inbox]` as a user writes it: the registry lists exactly what the macro
//! registered, routes hand-built events to exactly the matching inboxes, refuses two
//! inboxes with one name, and the functions stay callable as written.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::inbox::{HandlerFuture, InboxDef, Key, StartFrom};
use herald::prelude::*;
use herald::{Error, Registry, Resources};
use serde_json::{Value, json};

/// Counts deliveries: a resource the handlers reach through `cx`.
#[derive(Debug, Default)]
struct Delivered(AtomicUsize);

const EMAILS_LINE: u32 = line!() + 2; // the line of `async fn emails`
#[inbox(subject = "issue", actions = ["assigned", "commented"], max_attempts = 5, backoff = "500ms", backoff_max = "10m")]
async fn emails(event: &Event, cx: &Context) -> Result<(), InboxError> {
    cx.resource::<Delivered>()?.0.fetch_add(1, Ordering::SeqCst);
    if event.action == "assigned" && event.meta("assignee").is_none() {
        return Err(InboxError::give_up("assigned to nobody"));
    }
    Ok(())
}

/// Every event, all defaults.
#[inbox]
async fn audit_log(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

#[inbox(subject = "pull_request", actions = ["merged"], filter = not_by_bots)]
async fn webhooks(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

fn not_by_bots(event: &Event) -> bool {
    event.actor.kind != "bot"
}

mod projections {
    use herald::{Context, Event, InboxError, inbox};

    /// An explicit name survives renames and moves; it replays history.
    #[inbox(name = "issue_titles", subject = "issue", filter = self::has_title, start_from = "beginning")]
    pub(crate) async fn titles(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    pub(crate) fn has_title(event: &Event) -> bool {
        event.meta("title").is_some()
    }
}

/// One inbox per `key`; their subject keeps them out of the routing test's events.
mod keys {
    use herald::{Context, Event, InboxError, inbox};

    #[inbox(subject = "keyed", key = "subject")]
    pub(crate) async fn by_subject(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    #[inbox(subject = "keyed", key = "actor")]
    pub(crate) async fn by_actor(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    #[inbox(subject = "keyed", key = "correlation")]
    pub(crate) async fn by_correlation(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    #[inbox(subject = "keyed", key = "none")]
    pub(crate) async fn unordered(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    #[inbox(subject = "keyed", key = self::tenant)]
    pub(crate) async fn by_tenant(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    /// The tenant in the metadata: one tenant's events in order.
    pub(crate) fn tenant(event: &Event) -> String {
        event.meta("tenant").and_then(|t| t.as_str()).unwrap_or("no tenant").to_owned()
    }
}

/// `spread = true` and `spread = false`; their subject keeps them out of the routing test's events.
mod spread {
    use herald::{Context, Event, InboxError, inbox};

    #[inbox(subject = "spread", spread = true)]
    pub(crate) async fn spread_out(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }

    #[inbox(subject = "spread", spread = false)]
    pub(crate) async fn one_process(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
        Ok(())
    }
}

/// An event as the store would hand it over.
fn event(subject: &str, action: &str, actor: &str, metadata: Value) -> Event {
    serde_json::from_value(json!({
        "id": 7,
        "subject": { "kind": subject, "id": "42" },
        "actor": { "kind": actor, "id": "alice" },
        "action": action,
        "metadata": metadata,
        "created_at": "2026-01-02T03:04:05Z",
        "causation_id": null,
        "correlation_id": 7,
    }))
    .unwrap()
}

#[test]
fn the_registry_lists_what_the_macro_registered() {
    let registry = Registry::collect().unwrap();
    let names: Vec<_> = registry.iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        [
            "inbox_macro::audit_log",
            "inbox_macro::emails",
            "inbox_macro::keys::by_actor",
            "inbox_macro::keys::by_correlation",
            "inbox_macro::keys::by_subject",
            "inbox_macro::keys::by_tenant",
            "inbox_macro::keys::unordered",
            "inbox_macro::spread::one_process",
            "inbox_macro::spread::spread_out",
            "inbox_macro::webhooks",
            "issue_titles"
        ]
    );

    let emails = registry.get("inbox_macro::emails").unwrap();
    assert_eq!(emails.subject, Some("issue"));
    assert_eq!(emails.actions, ["assigned", "commented"]);
    assert!(emails.filter.is_none());
    assert_eq!(emails.max_attempts, 5);
    assert_eq!(emails.backoff, Duration::from_millis(500));
    assert_eq!(emails.backoff_max, Duration::from_secs(600));
    assert_eq!(emails.start_from, StartFrom::Now);
    assert_eq!((emails.file, emails.line), ("tests/inbox_macro.rs", EMAILS_LINE));
    assert_eq!(emails.location(), format!("tests/inbox_macro.rs:{EMAILS_LINE}"));

    let audit = registry.get("inbox_macro::audit_log").unwrap();
    assert_eq!((audit.subject, audit.actions, audit.filter.is_none()), (None, &[][..], true));
    assert_eq!(audit.max_attempts, InboxDef::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(audit.backoff, InboxDef::DEFAULT_BACKOFF);
    assert_eq!(audit.backoff_max, InboxDef::DEFAULT_BACKOFF_MAX);
    assert_eq!(audit.start_from, StartFrom::Now);

    // The explicit name wins over `inbox_macro::projections::titles`.
    assert!(registry.get("inbox_macro::projections::titles").is_none());
    let titles = registry.get("issue_titles").unwrap();
    assert_eq!((titles.subject, titles.start_from), (Some("issue"), StartFrom::Beginning));
    assert!(titles.filter.is_some());
}

#[test]
fn the_key_option_registers_its_key() {
    let registry = Registry::collect().unwrap();
    let key = |name: &str| registry.get(name).unwrap_or_else(|| panic!("no inbox {name}")).key;

    // The default: per-subject order.
    assert!(matches!(key("inbox_macro::audit_log"), Key::Subject));
    assert!(matches!(key("inbox_macro::emails"), Key::Subject));
    assert!(matches!(key("issue_titles"), Key::Subject));
    assert!(matches!(key("inbox_macro::keys::by_subject"), Key::Subject));
    assert!(matches!(key("inbox_macro::keys::by_actor"), Key::Actor));
    assert!(matches!(key("inbox_macro::keys::by_correlation"), Key::Correlation));
    assert!(matches!(key("inbox_macro::keys::unordered"), Key::None));
    assert!(matches!(key("inbox_macro::keys::by_tenant"), Key::Fn(_)));

    // What each computes for one event.
    let event = herald::testing::event(Subject::new("keyed", 42), "created", Actor::new("user", "alice"))
        .id(7)
        .metadata(json!({ "tenant": "acme" }))
        .build();
    let of = |name: &str| key(name).of(&event);
    assert_eq!(of("inbox_macro::keys::by_subject").as_deref(), Some("keyed:42"));
    assert_eq!(of("inbox_macro::keys::by_actor").as_deref(), Some("user:alice"));
    assert_eq!(of("inbox_macro::keys::by_correlation").as_deref(), Some("7"));
    assert_eq!(of("inbox_macro::keys::unordered"), None);
    // Through the user's function.
    assert_eq!(of("inbox_macro::keys::by_tenant").as_deref(), Some("acme"));
    let other = herald::testing::event(Subject::new("keyed", 43), "created", Actor::system()).build();
    assert_eq!(key("inbox_macro::keys::by_tenant").of(&other).as_deref(), Some("no tenant"));
}

#[test]
fn the_spread_option_registers_spread() {
    let registry = Registry::collect().unwrap();
    let spread = |name: &str| registry.get(name).unwrap_or_else(|| panic!("no inbox {name}")).spread;

    assert!(spread("inbox_macro::spread::spread_out"));
    assert!(!spread("inbox_macro::spread::one_process"));
    // The default: not spread.
    assert!(!spread("inbox_macro::audit_log"));
    assert!(!spread("inbox_macro::emails"));
    assert!(!spread("issue_titles"));
}

#[test]
fn an_event_routes_to_exactly_the_matching_inboxes() {
    let registry = Registry::collect().unwrap();
    let routes = |subject, action, actor, metadata| registry.routes(&event(subject, action, actor, metadata));

    assert_eq!(
        routes("issue", "assigned", "user", json!({ "title": "Crash", "assignee": "bob" })),
        ["inbox_macro::audit_log", "inbox_macro::emails", "issue_titles"]
    );
    // The filter fn excludes events without a title.
    assert_eq!(routes("issue", "commented", "user", json!({})), ["inbox_macro::audit_log", "inbox_macro::emails"]);
    // Not in `actions`.
    assert_eq!(
        routes("issue", "closed", "user", json!({ "title": "Crash" })),
        ["inbox_macro::audit_log", "issue_titles"]
    );
    // Another subject with the same action name.
    assert_eq!(routes("pull_request", "assigned", "user", json!({})), ["inbox_macro::audit_log"]);
    assert_eq!(
        routes("pull_request", "merged", "user", json!({})),
        ["inbox_macro::audit_log", "inbox_macro::webhooks"]
    );
    // The filter fn excludes bots.
    assert_eq!(routes("pull_request", "merged", "bot", json!({})), ["inbox_macro::audit_log"]);
}

#[tokio::test]
async fn the_function_stays_callable_directly_and_through_the_registry() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let mut resources = Resources::default();
    resources.insert(Delivered::default());
    let resources = Arc::new(resources);
    let assigned = event("issue", "assigned", "user", json!({ "assignee": "bob" }));
    let cx = Context::new(store.clone(), resources.clone(), "inbox_macro::emails", assigned.clone(), 1);

    // As written, e.g. in a unit test of the inbox.
    emails(&assigned, &cx).await.unwrap();
    // As the dispatcher calls it.
    let registered = Registry::collect().unwrap().get("inbox_macro::emails").unwrap();
    (registered.handler)(&assigned, &cx).await.unwrap();
    assert_eq!(resources.get::<Delivered>().unwrap().0.load(Ordering::SeqCst), 2);

    let unassigned = event("issue", "assigned", "user", json!({}));
    let error = (registered.handler)(&unassigned, &cx).await.unwrap_err();
    assert_eq!(error.message(), "assigned to nobody");

    // Without the resource, the inbox reports it rather than panicking.
    let bare = Context::new(store, Arc::new(Resources::default()), "inbox_macro::emails", assigned.clone(), 1);
    let error = emails(&assigned, &bare).await.unwrap_err();
    assert!(error.message().contains("Delivered"), "{error}");
}

fn noop<'a>(_: &'a Event, _: &'a Context) -> HandlerFuture<'a> {
    Box::pin(async { Ok(()) })
}

/// Another inbox claiming the name the macro gave `emails`.
static ELSEWHERE: InboxDef = InboxDef {
    name: "inbox_macro::emails",
    renamed_from: None,
    subject: None,
    actions: &[],
    filter: None,
    max_attempts: 1,
    backoff: Duration::ZERO,
    backoff_max: Duration::ZERO,
    timeout: Duration::from_secs(1),
    key: Key::Subject,
    spread: false,
    start_from: StartFrom::Now,
    handler: noop,
    file: "src/notifications.rs",
    line: 12,
};

#[test]
fn two_inboxes_with_one_name_are_an_error_naming_both_locations() {
    let registered = Registry::collect().unwrap();
    let error = Registry::from_defs(registered.iter().chain([&ELSEWHERE])).unwrap_err();
    assert!(matches!(&error, Error::DuplicateInbox { name, .. } if name == "inbox_macro::emails"), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("tests/inbox_macro.rs:{EMAILS_LINE}")), "{message}");
    assert!(message.contains("src/notifications.rs:12"), "{message}");
}
