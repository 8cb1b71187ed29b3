//! # Herald
//!
//! Domain events recorded in the same database transaction as your state changes,
//! read back as audit trails and activity feeds, on SQLite or PostgreSQL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
//! use herald::prelude::*;
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//!
//! let issue = Subject::new("issue", 42);
//! let mut tx = store.begin().await?;
//! tx.record(&issue, "created", Actor::new("user", "alice")).await?;
//! tx.commit().await?;
//!
//! let trail = store.feed().subject(&issue).limit(20).fetch().await?;
//! assert_eq!(trail.events.len(), 1);
//! # Ok(()) }
//! ```

pub use event_core::{
    Action, Actor, Backend, BlockedKey, Connection, Context, Cursor, DeadLetter, DeadLetterPage, DeadLetters,
    Dispatcher, DispatcherBuilder, Drained, Error, Event, EventId, Feed, Fired, Idempotent, InboxDef, InboxError,
    InboxStatus, InvalidTransition, Key, MAX_ID_BYTES, MAX_METADATA_DEPTH, MAX_NAME_BYTES, NewEvent, OpenWriter, Page,
    Pages, Query, Record, Recorded, Registry, Resources, Result, StartFrom, StateMachine, Store, Subject, Throttled,
    Transaction, Transition, UnknownState, Unreadable, Value, action, declare_actions, dispatch, feed, inbox, query,
    state_machine, transition,
};

/// Derives [`StateMachine`](trait@StateMachine) for an enum of unit variants: the
/// states of one subject type's status.
///
/// ```
/// use herald::prelude::*;
///
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
/// #[state_machine(subject = "issue", table = "issues", column = "status")]
/// #[transition(start:   Open -> InProgress)]
/// #[transition(resolve: InProgress -> Resolved)]
/// #[transition(close:   Open | InProgress | Resolved -> Closed)]
/// #[transition(reopen:  Closed -> Open)]
/// pub enum IssueStatus { #[initial] Open, InProgress, Resolved, Closed }
///
/// let t = IssueStatus::Open.start()?;
/// assert_eq!((t.from, t.to, t.event), (IssueStatus::Open, IssueStatus::InProgress, "start"));
/// assert!(IssueStatus::Closed.start().is_err());
/// assert_eq!(IssueStatus::Open.permitted_events(), ["start", "close"]);
/// assert_eq!(IssueStatus::InProgress.to_string(), "in_progress");
/// assert_eq!("resolved".parse::<IssueStatus>()?, IssueStatus::Resolved);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Attributes
///
/// - `#[state_machine(subject = "issue")]` (required) names the subject type whose
///   status this is. `table = "issues", column = "status"` (together) keep the
///   current state in a column of your table, matched on `key` (default `"id"`)
///   against the subject id; without them herald keeps it in a table of its own.
///   `crate = "path"` names the `herald` crate if you renamed it.
/// - `#[transition(event: From -> To)]`, one per event, in any number. Several
///   source states are joined with `|`: `#[transition(close: Open | InProgress -> Closed)]`.
///   `guard = path::to::fn` names a [`state_machine::Guard`] checked when the
///   transition is persisted.
/// - `#[initial]` on exactly one variant: the state of a new subject.
///
/// # Generated
///
/// - `impl StateMachine` with the const tables; states are named in snake_case
///   (`InProgress` is `"in_progress"`) in the database, in serde and in metadata.
/// - Per event, pure methods: `fn start(self) -> Result<Transition<Self>, InvalidTransition>`
///   and `const fn can_start(&self) -> bool`.
/// - `permitted_events(&self)`, `const fn initial()`, `const fn states()`,
///   `const fn as_str(&self)`, and `diagram()`: the machine as Mermaid text.
/// - `Display`, `FromStr` (error: [`UnknownState`]), serde `Serialize` and
///   `Deserialize` as the name, and sqlx `Type`, `Encode`, `Decode` as TEXT for
///   SQLite and PostgreSQL.
/// - The declaration of the `status_changed` action for the subject.
///
/// # Errors
///
/// Misuse is a compile error at the offending token, every mistake at once:
///
/// ```compile_fail
/// use herald::StateMachine;
///
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, StateMachine)]
/// #[state_machine(subject = "issue")]
/// #[transition(start: Opn -> InProgress)] // unknown state `Opn`
/// enum IssueStatus { #[initial] Open, InProgress }
/// ```
pub use event_macros::StateMachine;

/// Derives [`Action`](trait@Action) for an enum of unit variants: the actions one
/// subject type accepts, declared so that recording any other is refused.
///
/// ```
/// use herald::prelude::*;
///
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, Action)]
/// #[action(subject = "issue")]
/// pub enum IssueAction {
///     Created,
///     Commented,
///     #[action(rename = "closed_as_duplicate")]
///     Duplicate,
/// }
///
/// assert_eq!(IssueAction::Created.as_str(), "created");
/// assert_eq!("closed_as_duplicate".parse::<IssueAction>()?, IssueAction::Duplicate);
/// assert!(herald::action::declared("issue").unwrap().contains(&"commented"));
/// # Ok::<(), herald::Error>(())
/// ```
///
/// `#[action(subject = "…")]` is required; `crate = "path"` names a renamed
/// `herald`. Names are the snake_case variant names unless a variant says
/// `#[action(rename = "…")]`. Generated: `impl Action`, `AsRef<str>`,
/// `const fn as_str`, `Display`, `FromStr` (error: [`Error::UnknownAction`]) and the
/// declaration.
///
/// ```compile_fail
/// use herald::Action;
///
/// #[derive(Action)]
/// #[action(subject = "issue")]
/// enum IssueAction { Closed, #[action(rename = "closed")] Shut } // duplicate action `closed`
/// ```
pub use event_macros::Action;

/// Registers an async function as an inbox: it receives every committed event that
/// matches, at least once, from the dispatcher. The function is left as written
/// (call it directly in tests); the macro adds its registration beside it.
///
/// ```
/// use herald::prelude::*;
///
/// #[inbox(subject = "issue", actions = ["assigned", "commented"], max_attempts = 5, backoff = "500ms")]
/// async fn email_notifications(event: &Event, cx: &Context) -> Result<(), InboxError> {
///     let Some(assignee) = event.meta("assignee").and_then(|a| a.as_str()) else {
///         return Err(InboxError::give_up("no assignee: retrying will not help"));
///     };
///     // let mailer = cx.resource::<Mailer>()?; mailer.send(assignee, …).await?;
///     # let _ = (assignee, cx);
///     Ok(())
/// }
///
/// # fn main() -> herald::Result<()> {
/// let registry = herald::Registry::collect()?;
/// let inbox = registry.iter().find(|i| i.name.ends_with("::email_notifications")).unwrap();
/// assert_eq!(inbox.subject, Some("issue"));
/// assert_eq!(inbox.actions, ["assigned", "commented"]);
/// assert_eq!(inbox.max_attempts, 5);
/// # Ok(()) }
/// ```
///
/// # The function
///
/// `async fn name(event: &Event, cx: &Context) -> Result<(), InboxError>`: the
/// parameter names and type paths are yours; it may not be generic (lifetimes
/// aside), take `self`, or take anything else (reach resources through
/// [`Context::resource`]). A type mismatch is reported on your parameter or
/// return type. An `Err` or a panic is retried with backoff; see [`InboxError`].
///
/// # Options
///
/// Each at most once, all optional:
///
/// | option | meaning | default |
/// |---|---|---|
/// | `subject = "issue"` | the subject type it receives | every subject |
/// | `actions = ["assigned", "commented"]` | the actions it receives (snake_case, non-empty, no duplicates) | every action |
/// | `filter = path::to::fn` | a `fn(&Event) -> bool`; events it refuses are skipped | none |
/// | `key = "subject"` | what orders deliveries: one key's events go one at a time, in commit order, and a failing one holds back only its key; `"actor"`, `"correlation"`, `"none"` (no order) or `path::to::fn` (a `fn(&Event) -> String`) | `"subject"` |
/// | `spread = true` | deliveries spread over every worker process: the lease holder copies events into per-delivery rows that every worker claims (`FOR UPDATE SKIP LOCKED`), each key's head only; for slow handlers that need more than one process | `false` |
/// | `name = "emails"` | the stable name deliveries are stored under | `module::path::fn_name` |
/// | `renamed_from = "old::name"` | the inbox's former name: a dispatcher that finds no row for the new name takes over the old one's checkpoint, retries and dead letters | none; a default name whose module moved (`a::mail::f` → `a::notify::f`) is taken over by its function name |
/// | `max_attempts = 5` | attempts (at least 1) before a delivery is dead | [`InboxDef::DEFAULT_MAX_ATTEMPTS`] |
/// | `backoff = "500ms"` | the first retry delay, doubled per retry (units `ms`, `s`, `m`, `h`; `"1m30s"`) | [`InboxDef::DEFAULT_BACKOFF`] |
/// | `backoff_max = "10m"` | the longest retry delay, at least `backoff` | [`InboxDef::DEFAULT_BACKOFF_MAX`] |
/// | `timeout = "10s"` | how long one delivery may run; then it is cancelled and fails (retried, attempt counted) | [`InboxDef::DEFAULT_TIMEOUT`] (30 s) |
/// | `start_from = "beginning"` | a new inbox replays every recorded event instead of starting `"now"` | `"now"` |
/// | `crate = "path"` | the path to `herald`, if you renamed or re-exported it | `::herald` |
///
/// # Generated
///
/// Beside the function, in `const _: () = { … };`: a wrapper that boxes its future
/// as a [`inbox::Handler`], and an `inventory::submit!` of an [`InboxDef`] with the
/// options and the function's `file!()`/`line!()`. [`Registry::collect`] lists what
/// is linked, sorted by name, and refuses two inboxes with one name, naming both
/// locations. Inboxes in another crate are only linked if the program refers to that
/// crate: see [`inbox`](mod@inbox).
///
/// # Errors
///
/// Misuse is a compile error at the offending token, every mistake at once, with
/// the function still emitted so its callers raise no further errors:
///
/// ```compile_fail
/// use herald::prelude::*;
///
/// #[inbox(subject = "issue", actions = [])] // empty actions list
/// fn emails(event: &Event, cx: &Context) -> Result<(), InboxError> { // an inbox must be async
///     Ok(())
/// }
/// ```
pub use event_macros::inbox;

/// Test helpers, behind the `testing` feature: enable it in your dev-dependencies,
/// `herald = { version = "…", features = ["testing"] }`.
///
/// [`TestStore`](testing::TestStore) gives each test a migrated store in a database of
/// its own; [`event`](testing::event) and [`context`](testing::context) build what an
/// `#[inbox]` function takes, to call it directly; [`assert_recorded`](testing::assert_recorded),
/// [`assert_transition`](testing::assert_transition) and
/// [`assert_routes`](testing::assert_routes) fail with what was actually recorded or routed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// use herald::prelude::*;
/// use herald::testing::{self, TestStore};
///
/// let store = TestStore::sqlite().await?; // or TestStore::from_env()
/// let issue = Subject::new("issue", 1);
/// let mut tx = store.begin().await?;
/// tx.record(&issue, "created", Actor::new("user", "alice")).await?;
/// tx.commit().await?;
/// testing::assert_recorded(&store).subject(&issue).action("created").count(1).await;
/// # Ok(()) }
/// ```
#[cfg(feature = "testing")]
pub use event_core::testing;

/// The sqlx Herald is built on, for your own queries and pools: use it instead of
/// a direct dependency so the versions cannot drift apart.
pub use event_core::__private::sqlx;

/// The names most programs need: `use herald::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Actor, Context, Dispatcher, Event, EventId, InboxError, StateMachine, Store, Subject, Transaction,
        inbox,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use event_core::__private::*;
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
