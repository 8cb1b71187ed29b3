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
    Action, Actor, Backend, Connection, Cursor, Error, Event, EventId, Feed, InvalidTransition, NewEvent, Page, Record,
    Result, StateMachine, Store, Subject, Throttled, Transaction, Transition, UnknownState, action, declare_actions,
    feed, state_machine, transition,
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

/// The names most programs need: `use herald::prelude::*;`.
pub mod prelude {
    pub use crate::{Action, Actor, Event, EventId, StateMachine, Store, Subject, Transaction};
}

#[doc(hidden)]
pub mod __private {
    pub use event_core::__private::*;
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
