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
    Result, StateMachine, Store, Subject, Throttled, Transaction, Transition, action, declare_actions, feed,
    state_machine,
};

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
