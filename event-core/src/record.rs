//! Recording one event: `tx.record(subject, action, actor).metadata(…).await`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::model::{Actor, Event, EventId, NewEvent, Subject};
use crate::store::Transaction;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<'c> Transaction<'c> {
    /// Starts recording an event in this transaction; `.await` the builder to write it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// # store.migrate().await?;
    /// use event_core::{Actor, Subject};
    /// use serde_json::json;
    ///
    /// let mut tx = store.begin().await?;
    /// let event = tx
    ///     .record(Subject::new("issue", 42), "commented", Actor::new("user", 7))
    ///     .metadata(json!({ "comment_id": 7 }))
    ///     .await?;
    /// tx.commit().await?;
    /// assert_eq!(event.meta("comment_id"), Some(&json!(7)));
    /// # Ok(()) }
    /// ```
    pub fn record(
        &mut self,
        subject: impl Into<Subject>,
        action: impl AsRef<str>,
        actor: impl Into<Actor>,
    ) -> Record<'_, 'c> {
        Record { tx: self, event: NewEvent::new(subject, action, actor) }
    }
}

/// A pending record; `.await` it to write the event. See [`Transaction::record`].
#[derive(Debug)]
#[must_use = "a record does nothing until it is awaited"]
pub struct Record<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    event: NewEvent,
}

impl<'t, 'c> Record<'t, 'c> {
    /// Attaches metadata; it must serialize to a JSON object, or the record fails with
    /// [`Error::MetadataNotObject`](crate::Error::MetadataNotObject) and writes nothing.
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.event = self.event.metadata(metadata);
        self
    }

    /// Marks the event as caused by `cause` (causation id, and its correlation id).
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.event = self.event.caused_by(cause);
        self
    }

    /// Records only if no event with the same subject and action was recorded within
    /// `window`; the await then yields `None` when the record was throttled.
    ///
    /// Race-free: concurrent throttled records of one (subject, action) are serialized
    /// by a row lock (PostgreSQL) or the write lock (SQLite), so exactly one is written.
    pub fn throttle(self, window: Duration) -> Throttled<'t, 'c> {
        Throttled { tx: self.tx, event: self.event, window }
    }

    /// Records at most one event per `key`, ever: the await yields
    /// [`Recorded::New`] with the event, or [`Recorded::Existing`] with the id of the
    /// event recorded under `key` before (by this transaction or a committed one).
    ///
    /// Race-free: the database's unique index decides; a writer racing another for
    /// one key waits for it to commit (PostgreSQL) or for the write lock (SQLite),
    /// then gets its event's id. A key is at most 1,024 bytes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// # store.migrate().await?;
    /// use event_core::{Actor, Recorded, Subject};
    /// let order = Subject::new("order", 7);
    /// let mut tx = store.begin().await?;
    /// let first = tx.record(&order, "paid", Actor::system()).idempotency_key("stripe:evt_1").await?;
    /// let again = tx.record(&order, "paid", Actor::system()).idempotency_key("stripe:evt_1").await?;
    /// tx.commit().await?;
    /// assert!(matches!(first, Recorded::New(_)));
    /// assert_eq!(again, Recorded::Existing(first.id()));
    /// # Ok(()) }
    /// ```
    pub fn idempotency_key(self, key: impl Into<String>) -> Idempotent<'t, 'c> {
        Idempotent { tx: self.tx, event: self.event.idempotency_key(key) }
    }
}

/// What an idempotent record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The event was written.
    New(Event),
    /// An event with the key exists: nothing was written; its id.
    Existing(EventId),
}

impl Recorded {
    /// The event's id, new or existing.
    pub fn id(&self) -> EventId {
        match self {
            Recorded::New(e) => e.id,
            Recorded::Existing(id) => *id,
        }
    }
}

/// An idempotent record; `.await` yields [`Recorded`]. See [`Record::idempotency_key`].
#[derive(Debug)]
#[must_use = "a record does nothing until it is awaited"]
pub struct Idempotent<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    event: NewEvent,
}

impl Idempotent<'_, '_> {
    /// Attaches metadata, as [`Record::metadata`].
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.event = self.event.metadata(metadata);
        self
    }

    /// Marks the event as caused by `cause`, as [`Record::caused_by`].
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.event = self.event.caused_by(cause);
        self
    }
}

impl<'t, 'c> IntoFuture for Idempotent<'t, 'c> {
    type Output = Result<Recorded>;
    type IntoFuture = BoxFuture<'t, Result<Recorded>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.tx.insert_idempotent(self.event))
    }
}

impl<'t, 'c> IntoFuture for Record<'t, 'c> {
    type Output = Result<Event>;
    type IntoFuture = BoxFuture<'t, Result<Event>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.tx.insert(self.event))
    }
}

/// A throttled record; `.await` yields `Some(event)` or `None` when throttled.
#[derive(Debug)]
#[must_use = "a record does nothing until it is awaited"]
pub struct Throttled<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    event: NewEvent,
    window: Duration,
}

impl Throttled<'_, '_> {
    /// Attaches metadata, as [`Record::metadata`].
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.event = self.event.metadata(metadata);
        self
    }
}

impl<'t, 'c> IntoFuture for Throttled<'t, 'c> {
    type Output = Result<Option<Event>>;
    type IntoFuture = BoxFuture<'t, Result<Option<Event>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.tx.insert_throttled(self.event, self.window))
    }
}
