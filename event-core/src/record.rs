//! Recording one event: `tx.record(subject, action, actor).metadata(…).await`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::model::{Actor, Event, NewEvent, Subject};
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
