//! Herald's runtime: domain events recorded in your database transaction, read back
//! as audit trails and activity feeds.
//!
//! Most users depend on the `herald` facade, which re-exports this crate with the
//! macros. The pieces:
//!
//! - [`Store`]: SQLite (embedded, `sqlite://app.db` or `sqlite::memory:`) or
//!   PostgreSQL (`postgres://…`), the same API and behaviour on both;
//!   [`Store::migrate`] applies the embedded migrations.
//! - [`Transaction`]: [`Transaction::record`] writes an [`Event`] in the same
//!   transaction as your own changes; a rollback discards both.
//! - [`action`]: declared actions per subject type; undeclared ones are refused.
//! - [`Feed`]: newest-first pages with an opaque [`Cursor`].
//! - `testing` (feature `testing`): a migrated store per test, events and contexts for
//!   calling inboxes directly, and assertions that show what was recorded.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
//! use event_core::{Actor, Store, Subject};
//! use serde_json::json;
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//!
//! let issue = Subject::new("issue", 42);
//! let alice = Actor::new("user", "alice");
//! let mut tx = store.begin().await?;
//! tx.record(&issue, "created", &alice).await?;
//! tx.record(&issue, "commented", &alice).metadata(json!({ "comment_id": 7 })).await?;
//! tx.commit().await?;
//!
//! let trail = store.feed().subject(&issue).fetch().await?;
//! let actions: Vec<_> = trail.events.iter().map(|e| e.action.as_str()).collect();
//! assert_eq!(actions, ["commented", "created"]);
//! # Ok(()) }
//! ```
//!
//! # Storage
//!
//! `herald_events` holds the facts (id, subject type and id, actor type and id,
//! action, JSON metadata, `created_at`, causation and correlation ids). Triggers on
//! both backends refuse `UPDATE` and `DELETE` on it. Feeds read it through indexes on
//! `(subject, created_at, id)`, `(actor, created_at, id)` and `(created_at, id)`.

// Library code reports errors; it does not panic on input or I/O.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod action;
mod concurrent;
pub mod dispatch;
mod error;
pub mod feed;
pub mod inbox;
mod macro_support;
mod model;
pub mod query;
mod record;
pub mod state_machine;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transition;

pub use action::{Action, ActionDeclaration};
pub use dispatch::{BlockedKey, DeadLetter, Dispatcher, DispatcherBuilder, Drained, InboxStatus, OpenWriter};
pub use error::{Error, Result};
pub use feed::{Cursor, Feed, Page, Pages};
pub use inbox::{Context, InboxDef, InboxError, Key, Registry, Resources, StartFrom};
pub use model::{
    Actor, Event, EventId, MAX_ID_BYTES, MAX_METADATA_DEPTH, MAX_NAME_BYTES, NewEvent, Subject, Unreadable,
};
pub use query::{Query, Value};
pub use record::{Idempotent, Record, Recorded, Throttled};
pub use state_machine::{InvalidTransition, StateMachine, Transition, UnknownState};
pub use store::{Backend, Connection, DeadLetterPage, DeadLetters, Store, Transaction};
pub use transition::Fired;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde;
    pub use serde_json;
    pub use sqlx;

    pub use crate::macro_support::*;
}
