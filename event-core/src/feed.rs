//! Feeds: pages of events, newest first (or oldest first), with an opaque keyset
//! cursor.
//!
//! Pages are ordered by `(created_at, id)` descending (ascending for
//! [`Feed::oldest_first`]) and continue from a cursor (`(created_at, id) < cursor`,
//! or `>`), never an `OFFSET`, over indexes that start with the
//! filtered column (`subject`, `actor`) and end with `(created_at, id)`. A page costs
//! the same at the first event as at the millionth.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::model::{Actor, Event, Subject, Unreadable};
use crate::store::Store;

/// The largest page a feed serves.
pub const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 50;

/// A position in a feed or in a listing of dead letters; pass it to [`Feed::before`]
/// (or [`DeadLetters::before`](crate::DeadLetters::before)) to get the next (older)
/// page.
///
/// Its text form (`Display` / `FromStr`) is opaque: hand it to clients as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub(crate) created_at_micros: i64,
    pub(crate) id: i64,
}

impl Cursor {
    pub(crate) fn created_at(&self) -> Result<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.created_at_micros).ok_or_else(|| Error::InvalidCursor(self.to_string()))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.created_at_micros as u64, self.id as u64)
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidCursor(s.to_owned());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let (t, id) = s.split_at(16);
        let t = u64::from_str_radix(t, 16).map_err(|_| bad())? as i64;
        let id = u64::from_str_radix(id, 16).map_err(|_| bad())? as i64;
        let cursor = Cursor { created_at_micros: t, id };
        if id <= 0 {
            return Err(bad());
        }
        cursor.created_at().map_err(|_| bad())?;
        Ok(cursor)
    }
}

/// One page of a feed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page {
    /// The events, newest first (oldest first for [`Feed::oldest_first`]).
    pub events: Vec<Event>,
    /// Where the next page starts, or `None` when this was the last page.
    pub next: Option<Cursor>,
    /// Events of this page that are stored but could not be read (written by raw SQL
    /// or an older version of Herald): reported here, never failing the page. They
    /// count towards the page's limit.
    pub unreadable: Vec<Unreadable>,
}

/// A feed query, built from [`Store::feed`]. Every filter is optional and they combine.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// # let store = event_core::Store::connect("sqlite::memory:").await?;
/// # store.migrate().await?;
/// use event_core::{Actor, Subject};
/// let alice = Actor::new("user", "alice");
/// let mut tx = store.begin().await?;
/// for n in 0..5 {
///     tx.record(Subject::new("doc", n), "edited", &alice).await?;
/// }
/// tx.commit().await?;
///
/// let first = store.feed().actor(&alice).limit(3).fetch().await?;
/// let rest = store.feed().actor(&alice).limit(3).before(first.next.unwrap()).fetch().await?;
/// assert_eq!((first.events.len(), rest.events.len(), rest.next), (3, 2, None));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a feed does nothing until fetched"]
pub struct Feed {
    store: Store,
    pub(crate) subject: Option<Subject>,
    pub(crate) actor: Option<Actor>,
    pub(crate) actions: Vec<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
    pub(crate) before: Option<Cursor>,
    pub(crate) limit: u32,
    pub(crate) oldest_first: bool,
}

impl Feed {
    pub(crate) fn new(store: Store) -> Self {
        Feed {
            store,
            subject: None,
            actor: None,
            actions: Vec::new(),
            since: None,
            until: None,
            before: None,
            limit: DEFAULT_LIMIT,
            oldest_first: false,
        }
    }

    /// Only events about `subject` (its audit trail): a [`Subject`] or a reference
    /// to one, as [`record`](crate::Transaction::record) takes.
    pub fn subject(mut self, subject: impl Into<Subject>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Only events caused by `actor` (their activity feed).
    pub fn actor(mut self, actor: impl Into<Actor>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Oldest first: an audit trail read from the beginning. Pages continue forward
    /// from [`Page::next`] (passed to [`before`](Self::before), which continues in
    /// the feed's own order).
    pub fn oldest_first(mut self) -> Self {
        self.oldest_first = true;
        self
    }

    /// Only these actions.
    pub fn actions<I, S>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.actions = actions.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Only events recorded at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }

    /// Only events recorded before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }

    /// Continues after `cursor` (from a previous [`Page::next`]), in the feed's
    /// order: older events for a newest-first feed, newer ones for
    /// [`oldest_first`](Self::oldest_first).
    pub fn before(mut self, cursor: Cursor) -> Self {
        self.before = Some(cursor);
        self
    }

    /// Page size, 1 to [`MAX_LIMIT`]; 50 by default.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// The database's query plan for this feed page (`EXPLAIN` on PostgreSQL,
    /// `EXPLAIN QUERY PLAN` on SQLite), to check that it runs on an index.
    pub async fn explain(self) -> Result<String> {
        self.check_limit()?;
        self.check_filters()?;
        self.store.explain_feed(&self).await
    }

    fn check_limit(&self) -> Result<()> {
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(Error::InvalidLimit { got: self.limit, max: MAX_LIMIT });
        }
        Ok(())
    }

    fn check_filters(&self) -> Result<()> {
        if let Some(s) = &self.subject {
            crate::model::check_subject(s)?;
        }
        if let Some(a) = &self.actor {
            crate::model::check_actor(a)?;
        }
        for a in &self.actions {
            crate::model::check_action(a)?;
        }
        Ok(())
    }

    /// Fetches one page.
    ///
    /// A stored event that cannot be read is listed in [`Page::unreadable`] instead
    /// of failing the page. Filters PostgreSQL could not take (a NUL character, an
    /// over-long id) are refused with a typed error on both backends; time bounds
    /// beyond the years 1 to 9999 are clamped to them.
    pub async fn fetch(self) -> Result<Page> {
        self.check_limit()?;
        self.check_filters()?;
        let mut rows = self.store.fetch_feed(&self).await?;
        let next = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            match rows.last() {
                Some(row) => {
                    let created_at = row.created_at.ok_or_else(|| Error::Corrupt {
                        id: row.id,
                        reason: "its time cannot be read, so no page can continue after it".into(),
                    })?;
                    Some(Cursor { created_at_micros: created_at.timestamp_micros(), id: row.id })
                }
                None => None,
            }
        } else {
            None
        };
        let (mut events, mut unreadable) = (Vec::with_capacity(rows.len()), Vec::new());
        for row in rows {
            match row.event {
                Ok(e) => events.push(e),
                Err(e) => {
                    tracing::warn!(event = row.id, error = %crate::error::chain(&e), "herald: a stored event cannot be read; skipped in a feed page");
                    unreadable.push(Unreadable { id: crate::EventId(row.id), reason: e.to_string() });
                }
            }
        }
        Ok(Page { events, next, unreadable })
    }

    /// Every page, one after another, each continuing from the one before; the
    /// feed's limit is the page size.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// # store.migrate().await?;
    /// use event_core::{Actor, Subject};
    /// let doc = Subject::new("doc", 1);
    /// let mut tx = store.begin().await?;
    /// for action in ["created", "edited", "published"] {
    ///     tx.record(&doc, action, Actor::system()).await?;
    /// }
    /// tx.commit().await?;
    ///
    /// let mut pages = store.feed().subject(&doc).oldest_first().limit(2).pages();
    /// let mut trail = Vec::new();
    /// while let Some(page) = pages.next().await {
    ///     trail.extend(page?.events.into_iter().map(|e| e.action));
    /// }
    /// assert_eq!(trail, ["created", "edited", "published"]);
    /// # Ok(()) }
    /// ```
    pub fn pages(self) -> Pages {
        Pages { feed: Some(self) }
    }

    /// Every event of the feed, all pages fetched one after another (events that
    /// cannot be read are left out, logged as in a page). For a trail of known,
    /// bounded length; walk [`pages`](Self::pages) for a long one.
    pub async fn all(self) -> Result<Vec<Event>> {
        let mut pages = self.pages();
        let mut events = Vec::new();
        while let Some(page) = pages.next().await {
            events.extend(page?.events);
        }
        Ok(events)
    }
}

/// The pages of a feed, from [`Feed::pages`].
#[derive(Debug)]
#[must_use = "pages do nothing until fetched with `next`"]
pub struct Pages {
    /// The query of the next page; `None` once the last was fetched (or failed).
    feed: Option<Feed>,
}

impl Pages {
    /// The next page, or `None` after the last one. After an error, `None`.
    pub async fn next(&mut self) -> Option<Result<Page>> {
        let feed = self.feed.take()?;
        let again = feed.clone();
        match feed.fetch().await {
            Ok(page) => {
                self.feed = page.next.map(|c| again.before(c));
                Some(Ok(page))
            }
            Err(e) => Some(Err(e)),
        }
    }
}
