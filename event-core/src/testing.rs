//! Test helpers (feature `testing`): a migrated store per test, events and contexts
//! for calling an inbox directly, and assertions on what was recorded and where an
//! event would be delivered.
//!
//! Enable it for your tests only:
//!
//! ```toml
//! [dev-dependencies]
//! herald = { version = "0.1", features = ["testing"] }
//! ```
//!
//! - [`TestStore`]: a migrated [`Store`] in a database of its own (a fresh SQLite file,
//!   or a fresh PostgreSQL schema), removed when it is dropped.
//! - [`event`] and [`context`]: an [`Event`] and a [`Context`] built without a
//!   database round trip, to call an `#[inbox]` function directly.
//! - [`assert_recorded`], [`assert_not_recorded`], [`assert_transition`]: assertions on
//!   the events table. A failure panics with what *was* recorded (newest first, up to
//!   20 events) and how each event differs from what was expected.
//! - [`assert_routes`]: exactly which inboxes an event would be delivered to.
//!
//! The assertions panic by design, like `assert_eq!`; everything else returns errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
//! use event_core::testing::{self, TestStore};
//! use event_core::{Actor, Subject};
//! use serde_json::json;
//!
//! let store = TestStore::sqlite().await?; // removed when dropped
//! let (issue, alice) = (Subject::new("issue", 1), Actor::new("user", "alice"));
//!
//! let mut tx = store.begin().await?;
//! tx.record(&issue, "commented", &alice).metadata(json!({ "comment_id": 7, "body": "LGTM" })).await?;
//! tx.commit().await?;
//!
//! let event = testing::assert_recorded(&store)
//!     .subject(&issue)
//!     .action("commented")
//!     .actor(&alice)
//!     .metadata_includes(json!({ "comment_id": 7 }))
//!     .await;
//! assert_eq!(event.meta("body"), Some(&json!("LGTM")));
//! testing::assert_not_recorded(&store).subject(&issue).action("viewed").await;
//! # Ok(()) }
//! ```
//!
//! # Deliveries
//!
//! There is deliberately no `assert_delivered`: a successful delivery leaves no row
//! behind (the inbox's checkpoint moves past it; see [`dispatch`](crate::dispatch)),
//! so the database cannot tell "delivered" from "skipped by a filter" or "older than
//! the inbox". Assert on what the inbox did instead (a resource it wrote to, events
//! it recorded through its [`Context`]), after [`Dispatcher::drain`](crate::Dispatcher::drain);
//! failures are visible in [`Store::dead_letters`] and [`Dispatcher::status`](crate::Dispatcher::status).

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::future::{Future, IntoFuture};
use std::ops::Deref;
use std::panic::Location;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::action::STATUS_CHANGED;
use crate::error::{Error, Result};
use crate::feed::{Cursor, MAX_LIMIT};
use crate::inbox::{Context, Registry, Resources};
use crate::model::{Actor, Event, EventId, NewEvent, Subject, json_kind, now};
use crate::store::Store;

/// The PostgreSQL server [`TestStore::postgres`] uses when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How many recorded events a failed assertion shows.
const SHOWN: usize = 20;

/// Connections a PostgreSQL test store may open (lazily): enough for tests that race
/// twenty transactions.
const PG_MAX_CONNECTIONS: u32 = 24;

/// The PostgreSQL URL [`TestStore::postgres`] connects to: `DATABASE_URL`, or
/// [`DEFAULT_DATABASE_URL`].
///
/// ```
/// let url = event_core::testing::database_url();
/// assert!(url.starts_with("postgres"));
/// ```
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

// ---- TestStore -------------------------------------------------------------------

/// A migrated [`Store`] in a database of its own, removed when dropped.
///
/// It dereferences to [`Store`], so `store.begin()`, `store.feed()` and
/// `store.clone()` (a plain [`Store`] handle) work as usual. Each test should make
/// its own: tests then run in parallel without seeing each other's events.
///
/// - [`TestStore::sqlite`]: a fresh SQLite file in the temp directory (WAL mode, a
///   busy timeout, up to 8 connections, as [`Store::connect`] opens a file); the file
///   and its `-wal`/`-shm` companions are deleted on drop.
/// - [`TestStore::postgres`]: a fresh schema in the database at [`database_url`], the
///   pool's `search_path` set to it (up to 24 connections, opened lazily); the schema
///   is dropped on drop, from a thread and runtime of its own, so dropping inside an
///   async test is fine.
/// - [`TestStore::from_env`]: PostgreSQL when `DATABASE_URL` is set, else SQLite.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::testing::TestStore;
/// use event_core::{Actor, Subject};
///
/// let store = TestStore::sqlite().await?;
/// let mut tx = store.begin().await?;
/// tx.record(Subject::new("issue", 1), "created", Actor::system()).await?;
/// tx.commit().await?;
/// assert_eq!(store.feed().fetch().await?.events.len(), 1);
///
/// let handle: event_core::Store = store.clone(); // shares the pool; the database goes with `store`
/// # drop(handle);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestStore {
    store: Store,
    cleanup: Cleanup,
}

impl TestStore {
    /// A migrated store in a fresh SQLite file in the temp directory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// let store = event_core::testing::TestStore::sqlite().await?;
    /// assert_eq!(store.backend(), event_core::Backend::Sqlite);
    /// assert_eq!(store.schema(), None);
    /// # Ok(()) }
    /// ```
    pub async fn sqlite() -> Result<TestStore, SetupError> {
        let path = std::env::temp_dir().join(format!("{}.db", unique("herald_test")));
        let cleanup = Cleanup::File(path.clone());
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        let store = Store::from_sqlite(pool);
        store.migrate().await?;
        Ok(TestStore { store, cleanup })
    }

    /// A migrated store in a fresh schema of the PostgreSQL database at
    /// [`database_url`] (`DATABASE_URL`, default [`DEFAULT_DATABASE_URL`]).
    ///
    /// A server that cannot be connected to is [`SetupError::Unreachable`], so a test
    /// can tell "no server here" from a real failure:
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use event_core::testing::TestStore;
    ///
    /// let store = match TestStore::postgres().await {
    ///     Ok(store) => store,
    ///     Err(e) if e.is_unreachable() && std::env::var_os("CI").is_none() => {
    ///         eprintln!("skipped: {e}");
    ///         return;
    ///     }
    ///     Err(e) => panic!("{e:?}"),
    /// };
    /// assert!(store.schema().is_some());
    /// # }
    /// ```
    pub async fn postgres() -> Result<TestStore, SetupError> {
        Self::postgres_at(&database_url()).await
    }

    /// PostgreSQL when `DATABASE_URL` is set to a `postgres://` URL, else SQLite: one
    /// test body, and the backend is chosen where the tests run.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// let store = event_core::testing::TestStore::from_env().await?;
    /// let expected = match std::env::var("DATABASE_URL") {
    ///     Ok(url) if url.starts_with("postgres") => event_core::Backend::Postgres,
    ///     _ => event_core::Backend::Sqlite,
    /// };
    /// assert_eq!(store.backend(), expected);
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<TestStore, SetupError> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => Self::postgres_at(&url).await,
            _ => Self::sqlite().await,
        }
    }

    async fn postgres_at(url: &str) -> Result<TestStore, SetupError> {
        let opts = PgConnectOptions::from_str(url)?;
        let mut admin = PgConnection::connect_with(&opts)
            .await
            .map_err(|cause| SetupError::Unreachable { url: redact(url), cause })?;
        let schema = unique("herald_t");
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut admin).await;
        let _ = admin.close().await;
        created?;
        let cleanup = Cleanup::Schema { opts: Box::new(opts.clone()), name: schema.clone() };
        let pool = PgPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .connect_with(opts.options([("search_path", schema.as_str())]))
            .await?;
        let store = Store::from_postgres(pool);
        store.migrate().await?;
        Ok(TestStore { store, cleanup })
    }

    /// The store (also reachable through `Deref`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// let store = event_core::testing::TestStore::sqlite().await?;
    /// let handle: &event_core::Store = store.store();
    /// # let _ = handle;
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The PostgreSQL schema of this store, `None` for SQLite: for a process that
    /// should connect to the same data (`search_path`), or raw SQL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// let store = event_core::testing::TestStore::from_env().await?;
    /// if let Some(schema) = store.schema() {
    ///     assert!(schema.starts_with("herald_t_"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn schema(&self) -> Option<&str> {
        match &self.cleanup {
            Cleanup::Schema { name, .. } => Some(name),
            Cleanup::File(_) => None,
        }
    }
}

impl Deref for TestStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl AsRef<Store> for TestStore {
    fn as_ref(&self) -> &Store {
        &self.store
    }
}

/// What a [`TestStore`] removes when dropped. Created before the database is set up,
/// so a failed setup cleans up too.
enum Cleanup {
    File(PathBuf),
    Schema { opts: Box<PgConnectOptions>, name: String },
}

impl fmt::Debug for Cleanup {
    // Not derived: the connect options hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cleanup::File(path) => f.debug_tuple("File").field(path).finish(),
            Cleanup::Schema { name, .. } => f.debug_tuple("Schema").field(name).finish(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Cleanup::Schema { opts, name } => {
                let (opts, schema) = (opts.as_ref().clone(), name.clone());
                // Drop may run inside the test's runtime, which cannot be blocked on:
                // clean up from a thread and a runtime of our own.
                let dropped = std::thread::spawn(move || drop_schema(opts, &schema)).join();
                if let Ok(Err(reason)) = dropped {
                    tracing::warn!(schema = %name, %reason, "herald::testing: could not drop the test schema");
                }
            }
        }
    }
}

fn drop_schema(opts: PgConnectOptions, schema: &str) -> std::result::Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conn = PgConnection::connect_with(&opts).await?;
        // A transaction leaked by the test must not hang the cleanup forever.
        sqlx::query("SET lock_timeout = '10s'").execute(&mut conn).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&mut conn).await?;
        conn.close().await
    })
    .map_err(|e: sqlx::Error| e.to_string())
}

/// A name no other test store of this or an earlier run uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Why a [`TestStore`] could not be set up.
///
/// Converts into [`Error`] with `?`, so a test returning `herald::Result` can use it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use event_core::testing::TestStore;
///
/// match TestStore::postgres().await {
///     Ok(store) => assert!(store.schema().is_some()),
///     Err(e) if e.is_unreachable() => eprintln!("no PostgreSQL here: {e}"),
///     Err(e) => panic!("PostgreSQL is up but the test store failed: {e:?}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The PostgreSQL server could not be connected to: not running, refusing the
    /// connection, or refusing these credentials or this database.
    #[error("PostgreSQL at {url} is unreachable: {cause}")]
    Unreachable {
        /// The URL tried, without its password.
        url: String,
        /// What connecting reported.
        cause: sqlx::Error,
    },

    /// Creating, opening or migrating the test database failed.
    #[error("could not set up the test database")]
    Store(#[from] Error),
}

impl SetupError {
    /// Whether the PostgreSQL server could not be reached at all (as opposed to a
    /// failure once connected). Tests commonly skip on it outside CI.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SetupError::Unreachable { .. })
    }
}

impl From<sqlx::Error> for SetupError {
    fn from(e: sqlx::Error) -> Self {
        SetupError::Store(Error::Database(e))
    }
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Unreachable { cause, .. } => Error::Database(cause),
            SetupError::Store(e) => e,
        }
    }
}

// ---- Events and contexts -----------------------------------------------------------

/// Starts building an [`Event`] without a database, to call an inbox function
/// directly. Metadata defaults to `{}`, the id to one unique in this process,
/// `created_at` to now, and the event is its own correlation root.
///
/// ```
/// use event_core::testing;
/// use event_core::{Actor, EventId, Subject};
/// use serde_json::json;
///
/// let event = testing::event(Subject::new("issue", 1), "assigned", Actor::new("user", "alice"))
///     .metadata(json!({ "assignee": "bob" }))
///     .id(7)
///     .build();
/// assert_eq!((event.id, event.correlation_id, event.causation_id), (EventId(7), EventId(7), None));
/// assert_eq!(event.meta("assignee"), Some(&json!("bob")));
/// ```
pub fn event(subject: impl Into<Subject>, action: impl AsRef<str>, actor: impl Into<Actor>) -> EventBuilder {
    EventBuilder { event: NewEvent::new(subject, action, actor), id: None, created_at: None }
}

/// An [`Event`] being built; see [`event`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the event"]
pub struct EventBuilder {
    event: NewEvent,
    id: Option<EventId>,
    created_at: Option<DateTime<Utc>>,
}

impl EventBuilder {
    /// The metadata; it must serialize to a JSON object.
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.event = self.event.metadata(metadata);
        self
    }

    /// The event's id (and, unless [`caused_by`](Self::caused_by) is set, its
    /// correlation id).
    pub fn id(mut self, id: i64) -> Self {
        self.id = Some(EventId(id));
        self
    }

    /// When it was recorded.
    pub fn created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Marks `cause` as the event that caused this one (causation id and its
    /// correlation id), as an inbox's follow-up event would carry.
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.event = self.event.caused_by(cause);
        self
    }

    /// The event, or the error recording it would have met: an undeclared action for
    /// a declared subject, metadata that is not an object, an empty subject type.
    ///
    /// ```
    /// use event_core::testing;
    /// use event_core::{Actor, Error, Subject};
    ///
    /// let bad = testing::event(Subject::new("issue", 1), "commented", Actor::system()).metadata([1, 2]);
    /// assert!(matches!(bad.try_build(), Err(Error::MetadataNotObject { found: "an array" })));
    /// ```
    pub fn try_build(self) -> Result<Event> {
        self.event.validate()?;
        let id = self.id.unwrap_or_else(next_id);
        Ok(self.event.into_event(id, self.created_at.unwrap_or_else(now)))
    }

    /// The event.
    ///
    /// # Panics
    ///
    /// Where recording it would fail (see [`try_build`](Self::try_build)): a typo in
    /// an action name is caught here rather than in production.
    #[track_caller]
    pub fn build(self) -> Event {
        match self.try_build() {
            Ok(event) => event,
            Err(e) => panic!("testing::event(…).build(): {e}"),
        }
    }
}

/// Ids of built events: unique in the process, far from where a test database starts.
fn next_id() -> EventId {
    static NEXT: AtomicI64 = AtomicI64::new(1_000_000_001);
    EventId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Starts building the [`Context`] an inbox gets, to call the inbox function directly:
/// resources as the dispatcher would hand them over, the attempt number, the inbox
/// name. Events the inbox records through it go to `store`, caused by the event.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::testing::{self, TestStore};
/// use event_core::{Actor, Subject};
///
/// #[derive(Debug, Clone, PartialEq)]
/// struct Config { from: &'static str }
///
/// let store = TestStore::sqlite().await?;
/// let event = testing::event(Subject::new("issue", 1), "assigned", Actor::system()).build();
/// let cx = testing::context(&store).resource(Config { from: "bot@example.com" }).attempt(2).build(&event);
///
/// assert_eq!(cx.resource::<Config>().unwrap().from, "bot@example.com");
/// assert_eq!((cx.attempt(), cx.event().id), (2, event.id));
/// // my_inbox(&event, &cx).await?;
/// # Ok(()) }
/// ```
pub fn context(store: &Store) -> ContextBuilder {
    ContextBuilder { store: store.clone(), resources: Resources::default(), inbox: "test", attempt: 1 }
}

/// A [`Context`] being built; see [`context`].
#[derive(Debug)]
#[must_use = "call .build(&event) to get the context"]
pub struct ContextBuilder {
    store: Store,
    resources: Resources,
    inbox: &'static str,
    attempt: u32,
}

impl ContextBuilder {
    /// Adds (or replaces) the resource of type `T`, as
    /// [`DispatcherBuilder::resource`](crate::DispatcherBuilder::resource) does.
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// Which attempt this is; 1 (the first) by default.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The inbox name the context reports; `"test"` by default.
    pub fn inbox(mut self, name: &'static str) -> Self {
        self.inbox = name;
        self
    }

    /// The context for delivering `event`.
    pub fn build(self, event: &Event) -> Context {
        Context::new(self.store, Arc::new(self.resources), self.inbox, event.clone(), self.attempt)
    }
}

// ---- Assertions on recorded events ---------------------------------------------------

/// Asserts that an event matching the filters was recorded; `.await` returns the
/// newest match. Filters left out match anything; [`count`](AssertRecorded::count)
/// asserts an exact number instead.
///
/// # Panics
///
/// When nothing matches, with the newest recorded events (up to 20) and how each
/// differs from what was expected; also when the store cannot be read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::testing::{self, TestStore};
/// use event_core::{Actor, Subject};
/// use serde_json::json;
///
/// let store = TestStore::sqlite().await?;
/// let (issue, alice) = (Subject::new("issue", 1), Actor::new("user", "alice"));
/// let mut tx = store.begin().await?;
/// tx.record(&issue, "commented", &alice)
///     .metadata(json!({ "comment_id": 7, "mentions": { "bob": true, "carol": false } }))
///     .await?;
/// tx.commit().await?;
///
/// // Metadata is matched as a subset, nested objects too.
/// testing::assert_recorded(&store)
///     .subject(&issue)
///     .action("commented")
///     .actor(&alice)
///     .metadata_includes(json!({ "mentions": { "bob": true } }))
///     .await;
/// # Ok(()) }
/// ```
///
/// A failure reads:
///
/// ```text
/// assert_recorded failed at tests/issues.rs:42:5
/// expected: an event with subject issue:1, action `commented`, metadata including {"comment_id":8}
/// found none. Recorded events, newest first (all 1):
///   #1 issue:1 commented by user:alice {"comment_id":7,"mentions":{"bob":true,"carol":false}}
///       differs: metadata.comment_id is 7, expected 8
/// ```
#[track_caller]
pub fn assert_recorded(store: &Store) -> AssertRecorded<Newest> {
    AssertRecorded::new(store, Newest)
}

/// Asserts that no event matching the filters was recorded (the filters as for
/// [`assert_recorded`]).
///
/// # Panics
///
/// When one does, listing the recorded events and marking the matches.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::testing::{self, TestStore};
/// use event_core::{Actor, Subject};
///
/// let store = TestStore::sqlite().await?;
/// let mut tx = store.begin().await?;
/// tx.record(Subject::new("issue", 1), "viewed", Actor::new("user", "alice")).await?;
/// tx.commit().await?;
///
/// testing::assert_not_recorded(&store).action("viewed").actor(&Actor::new("user", "bob")).await;
/// # Ok(()) }
/// ```
#[track_caller]
pub fn assert_not_recorded(store: &Store) -> AssertRecorded<Absent> {
    AssertRecorded::new(store, Absent)
}

/// An assertion on recorded events; see [`assert_recorded`]. `.await` it to check.
///
/// The mode decides what `.await` asserts and returns: [`Newest`] (at least one
/// match; the newest), [`Exactly`] (exactly n; all of them, newest first) or
/// [`Absent`] (none).
#[derive(Debug, Clone)]
#[must_use = "an assertion does nothing until it is awaited"]
pub struct AssertRecorded<M> {
    store: Store,
    expected: Expected,
    mode: M,
    at: &'static Location<'static>,
}

/// [`AssertRecorded`] mode: at least one event matches; `.await` returns the newest.
#[derive(Debug, Clone, Copy)]
pub struct Newest;

/// [`AssertRecorded`] mode: exactly this many events match; `.await` returns them,
/// newest first.
#[derive(Debug, Clone, Copy)]
pub struct Exactly(usize);

/// [`AssertRecorded`] mode: no event matches.
#[derive(Debug, Clone, Copy)]
pub struct Absent;

impl<M> AssertRecorded<M> {
    #[track_caller]
    fn new(store: &Store, mode: M) -> Self {
        AssertRecorded { store: store.clone(), expected: Expected::default(), mode, at: Location::caller() }
    }

    /// Only events about `subject`.
    pub fn subject(mut self, subject: impl Into<Subject>) -> Self {
        self.expected.subject = Some(subject.into());
        self
    }

    /// Only events with this action (a name, or an `#[derive(Action)]` value).
    pub fn action(mut self, action: impl AsRef<str>) -> Self {
        self.expected.action = Some(action.as_ref().to_owned());
        self
    }

    /// Only events caused by `actor`.
    pub fn actor(mut self, actor: impl Into<Actor>) -> Self {
        self.expected.actor = Some(actor.into());
        self
    }

    /// Only events whose metadata includes this JSON object: every key given must be
    /// present with an equal value; nested objects are compared the same way (as
    /// subsets), arrays and other values exactly, numbers by value (`7` equals `7.0`).
    /// Calling it again adds keys.
    pub fn metadata_includes(mut self, metadata: impl Serialize) -> Self {
        match serde_json::to_value(metadata) {
            Ok(Value::Object(map)) => self.expected.metadata.extend(map),
            Ok(other) => {
                self.expected.invalid =
                    Some(format!("metadata_includes takes a JSON object, got {}", json_kind(&other)))
            }
            Err(e) => self.expected.invalid = Some(format!("metadata_includes could not serialize its argument: {e}")),
        }
        self
    }

    /// Only events caused by `cause` (its id as their causation id), such as the
    /// follow-ups an inbox recorded through its [`Context`].
    pub fn caused_by(mut self, cause: &Event) -> Self {
        self.expected.caused_by = Some(cause.id);
        self
    }
}

impl AssertRecorded<Newest> {
    /// Asserts that exactly `n` events match instead; `.await` returns them, newest
    /// first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// use event_core::testing::{self, TestStore};
    /// use event_core::{Actor, Subject};
    /// use std::time::Duration;
    ///
    /// let store = TestStore::sqlite().await?;
    /// let issue = Subject::new("issue", 1);
    /// for _ in 0..3 {
    ///     let mut tx = store.begin().await?;
    ///     tx.record(&issue, "viewed", Actor::new("user", "alice")).throttle(Duration::from_secs(300)).await?;
    ///     tx.commit().await?;
    /// }
    /// let views = testing::assert_recorded(&store).subject(&issue).action("viewed").count(1).await;
    /// assert_eq!(views.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn count(self, n: usize) -> AssertRecorded<Exactly> {
        AssertRecorded { store: self.store, expected: self.expected, mode: Exactly(n), at: self.at }
    }
}

type Check<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl IntoFuture for AssertRecorded<Newest> {
    type Output = Event;
    type IntoFuture = Check<Event>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let AssertRecorded { store, expected, at, .. } = self;
            let found = expected.matching(&store, "assert_recorded", at).await;
            match found.into_iter().next() {
                Some(event) => event,
                None => {
                    let recorded = Recorded::read(&store, "assert_recorded", at).await;
                    panic!(
                        "assert_recorded failed at {at}\nexpected: an event{}\nfound none. {}",
                        expected.describe(),
                        recorded.render(&expected)
                    )
                }
            }
        })
    }
}

impl IntoFuture for AssertRecorded<Exactly> {
    type Output = Vec<Event>;
    type IntoFuture = Check<Vec<Event>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let AssertRecorded { store, expected, mode: Exactly(n), at } = self;
            let found = expected.matching(&store, "assert_recorded", at).await;
            if found.len() != n {
                let recorded = Recorded::read(&store, "assert_recorded", at).await;
                panic!(
                    "assert_recorded(…).count({n}) failed at {at}\nexpected: exactly {n} {}{}\nfound {}. {}",
                    if n == 1 { "event" } else { "events" },
                    expected.describe(),
                    found.len(),
                    recorded.render(&expected)
                );
            }
            found
        })
    }
}

impl IntoFuture for AssertRecorded<Absent> {
    type Output = ();
    type IntoFuture = Check<()>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let AssertRecorded { store, expected, at, .. } = self;
            let found = expected.matching(&store, "assert_not_recorded", at).await;
            if !found.is_empty() {
                let recorded = Recorded::read(&store, "assert_not_recorded", at).await;
                panic!(
                    "assert_not_recorded failed at {at}\nexpected: no event{}\nfound {}. {}",
                    expected.describe(),
                    found.len(),
                    recorded.render(&expected)
                );
            }
        })
    }
}

/// Asserts that `subject` went from state `from` to state `to`: one of its
/// `status_changed` events has that `from` and `to`. `.await` returns the newest such
/// event. States are given by name (`"in_progress"`) or as machine values
/// (`IssueStatus::InProgress`, which display as their name).
///
/// # Panics
///
/// When there is none, listing the subject's transitions (or, if it has none, the
/// newest recorded events); also when the store cannot be read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::testing::{self, TestStore};
/// use event_core::{Actor, Subject};
/// use serde_json::json;
///
/// let store = TestStore::sqlite().await?;
/// let issue = Subject::new("issue", 1);
/// let mut tx = store.begin().await?;
/// // Usually recorded by `IssueStatus::fire(&mut tx, &issue, IssueStatus::start, &actor)`.
/// tx.record(&issue, "status_changed", Actor::system())
///     .metadata(json!({ "from": "open", "to": "in_progress", "event": "start" }))
///     .await?;
/// tx.commit().await?;
///
/// let event = testing::assert_transition(&store, &issue, "open", "in_progress").await;
/// assert_eq!(event.meta("event"), Some(&json!("start")));
/// # Ok(()) }
/// ```
#[track_caller]
pub fn assert_transition(
    store: &Store,
    subject: &Subject,
    from: impl fmt::Display,
    to: impl fmt::Display,
) -> impl Future<Output = Event> + Send + 'static {
    let at = Location::caller();
    let (store, subject, from, to) = (store.clone(), subject.clone(), from.to_string(), to.to_string());
    async move {
        let what = "assert_transition";
        let all =
            Expected { subject: Some(subject.clone()), action: Some(STATUS_CHANGED.to_owned()), ..Expected::default() };
        let transitions = all.matching(&store, what, at).await;
        let wanted = |e: &&Event| {
            e.meta("from").and_then(Value::as_str) == Some(from.as_str())
                && e.meta("to").and_then(Value::as_str) == Some(to.as_str())
        };
        if let Some(event) = transitions.iter().find(wanted) {
            return event.clone();
        }
        let mut message =
            format!("assert_transition failed at {at}\nexpected: {subject} to go from `{from}` to `{to}`\n");
        if transitions.is_empty() {
            let recorded = Recorded::read(&store, what, at).await;
            let _ = write!(message, "found no status_changed event for {subject}. {}", recorded.render(&all));
        } else {
            let _ = writeln!(
                message,
                "its transitions, newest first ({} of {}):",
                transitions.len().min(SHOWN),
                transitions.len()
            );
            for e in transitions.iter().take(SHOWN) {
                let state = |key: &str| e.meta(key).and_then(Value::as_str).unwrap_or("?");
                let event = e.meta("event").and_then(Value::as_str).unwrap_or("?");
                let _ = writeln!(message, "  #{} {} -> {} ({event}) by {}", e.id, state("from"), state("to"), e.actor);
            }
        }
        panic!("{}", message.trim_end())
    }
}

/// The filters of an assertion on recorded events.
#[derive(Debug, Clone, Default)]
struct Expected {
    subject: Option<Subject>,
    action: Option<String>,
    actor: Option<Actor>,
    metadata: Map<String, Value>,
    caused_by: Option<EventId>,
    /// A mistake in the assertion itself, reported when it runs.
    invalid: Option<String>,
}

impl Expected {
    /// ` with subject issue:1, action `commented`, metadata including {…}`, or
    /// nothing when there are no filters.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.subject {
            parts.push(format!("subject {s}"));
        }
        if let Some(a) = &self.action {
            parts.push(format!("action `{a}`"));
        }
        if let Some(a) = &self.actor {
            parts.push(format!("actor {a}"));
        }
        if !self.metadata.is_empty() {
            parts.push(format!("metadata including {}", Value::Object(self.metadata.clone())));
        }
        if let Some(c) = self.caused_by {
            parts.push(format!("caused by event #{c}"));
        }
        if parts.is_empty() { String::new() } else { format!(" with {}", parts.join(", ")) }
    }

    /// How `event` differs from what is expected; empty when it matches.
    fn differences(&self, event: &Event) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = self.subject.as_ref().filter(|s| **s != event.subject) {
            out.push(format!("subject is {}, expected {s}", event.subject));
        }
        if let Some(a) = self.action.as_ref().filter(|a| **a != event.action) {
            out.push(format!("action is `{}`, expected `{a}`", event.action));
        }
        if let Some(a) = self.actor.as_ref().filter(|a| **a != event.actor) {
            out.push(format!("actor is {}, expected {a}", event.actor));
        }
        for (key, want) in &self.metadata {
            subset_differences(&format!("metadata.{key}"), want, event.metadata.get(key), &mut out);
        }
        if let Some(c) = self.caused_by.filter(|c| event.causation_id != Some(*c)) {
            match event.causation_id {
                Some(other) => out.push(format!("caused by event #{other}, expected #{c}")),
                None => out.push(format!("caused by no event, expected #{c}")),
            }
        }
        out
    }

    /// Every matching event, newest first. Panics (as the assertion `what`) if the
    /// assertion is malformed or the store cannot be read.
    async fn matching(&self, store: &Store, what: &str, at: &Location<'_>) -> Vec<Event> {
        if let Some(mistake) = &self.invalid {
            panic!("{what} at {at}: {mistake}");
        }
        let mut found = Vec::new();
        let mut before: Option<Cursor> = None;
        loop {
            let mut feed = store.feed().limit(MAX_LIMIT);
            if let Some(s) = &self.subject {
                feed = feed.subject(s);
            }
            if let Some(a) = &self.actor {
                feed = feed.actor(a);
            }
            if let Some(a) = &self.action {
                feed = feed.actions([a]);
            }
            if let Some(c) = before {
                feed = feed.before(c);
            }
            let page = match feed.fetch().await {
                Ok(page) => page,
                Err(e) => panic!("{what} at {at}: could not read the recorded events: {}", chain(&e)),
            };
            found.extend(page.events.into_iter().filter(|e| self.differences(e).is_empty()));
            match page.next {
                Some(next) => before = Some(next),
                None => return found,
            }
        }
    }
}

/// Adds to `out` how `actual` (at `path`) fails to include `want`.
fn subset_differences(path: &str, want: &Value, actual: Option<&Value>, out: &mut Vec<String>) {
    match (want, actual) {
        (_, None) => out.push(format!("{path} is missing, expected {want}")),
        (Value::Object(want), Some(Value::Object(actual))) => {
            for (key, w) in want {
                subset_differences(&format!("{path}.{key}"), w, actual.get(key), out);
            }
        }
        (Value::Object(_), Some(other)) => out.push(format!("{path} is {other}, expected an object including {want}")),
        (want, Some(actual)) if !same_value(want, actual) => out.push(format!("{path} is {actual}, expected {want}")),
        _ => {}
    }
}

/// JSON equality, with numbers compared by value (`7` equals `7.0`; large integers
/// exactly).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            match (int(x), int(y)) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64().is_some_and(|x| y.as_f64() == Some(x)),
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// The newest recorded events, for a failure message.
struct Recorded {
    events: Vec<Event>,
    more: bool,
}

impl Recorded {
    async fn read(store: &Store, what: &str, at: &Location<'_>) -> Recorded {
        match store.feed().limit(SHOWN as u32).fetch().await {
            Ok(page) => Recorded { more: page.next.is_some(), events: page.events },
            Err(e) => panic!("{what} at {at}: could not read the recorded events: {}", chain(&e)),
        }
    }

    /// The events, each with how it differs from `expected` (or that it matches).
    fn render(&self, expected: &Expected) -> String {
        if self.events.is_empty() {
            return "Nothing was recorded in this store.".to_owned();
        }
        let count = if self.more { format!("the {SHOWN} newest") } else { format!("all {}", self.events.len()) };
        let mut out = format!("Recorded events, newest first ({count}):");
        for e in &self.events {
            let _ = write!(out, "\n  {}", one_line(e));
            let differences = expected.differences(e);
            if differences.is_empty() {
                out.push_str("\n      matches");
            } else {
                let _ = write!(out, "\n      differs: {}", differences.join("; "));
            }
        }
        out
    }
}

/// `#3 issue:1 commented by user:alice {"comment_id":7}`, metadata cut at 200 chars.
fn one_line(e: &Event) -> String {
    let mut metadata = Value::Object(e.metadata.clone()).to_string();
    if let Some((cut, _)) = metadata.char_indices().nth(200) {
        metadata.truncate(cut);
        metadata.push('…');
    }
    format!("#{} {} {} by {} {metadata}", e.id, e.subject, e.action, e.actor)
}

/// An error with its sources, `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain(e)
}

// ---- Routing ------------------------------------------------------------------------

/// Asserts that `event` would be delivered to exactly these inboxes (by name, in any
/// order): the ones whose subject, actions and filter accept it.
///
/// Inbox names are `module::path::fn_name` unless the inbox sets `name = "…"`; in an
/// integration test `tests/issues.rs`, `#[inbox] async fn emails` is `issues::emails`.
///
/// # Panics
///
/// When the routes differ, with the missing and unexpected names, names that are not
/// registered at all, and the registered inboxes for the event's subject.
///
/// ```
/// # use event_core::inbox::{Context, HandlerFuture, InboxDef, Key, StartFrom};
/// # use event_core::Event;
/// # fn noop<'a>(_: &'a Event, _: &'a Context) -> HandlerFuture<'a> { Box::pin(async { Ok(()) }) }
/// # const fn def(name: &'static str, subject: Option<&'static str>, actions: &'static [&'static str]) -> InboxDef {
/// #     let (backoff, backoff_max) = (std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
/// #     InboxDef { name, renamed_from: None, subject, actions, filter: None, max_attempts: 10, backoff, backoff_max, timeout: backoff,
/// #                key: Key::Subject, spread: false, start_from: StartFrom::Now, handler: noop, file: file!(), line: line!() }
/// # }
/// # static EMAILS: InboxDef = def("app::emails", Some("issue"), &["assigned", "commented"]);
/// # static AUDIT: InboxDef = def("app::audit", None, &[]);
/// use event_core::testing;
/// use event_core::{Actor, Registry, Subject};
///
/// // Usually Registry::collect()? or dispatcher.registry(): every #[inbox] linked in.
/// let registry = Registry::from_defs([&EMAILS, &AUDIT])?;
///
/// let assigned = testing::event(Subject::new("issue", 1), "assigned", Actor::system()).build();
/// testing::assert_routes(&registry, &assigned, ["app::emails", "app::audit"]);
///
/// let viewed = testing::event(Subject::new("issue", 1), "viewed", Actor::system()).build();
/// testing::assert_routes(&registry, &viewed, ["app::audit"]);
/// # Ok::<(), event_core::Error>(())
/// ```
#[track_caller]
pub fn assert_routes<'a>(registry: &Registry, event: &Event, expected: impl IntoIterator<Item = &'a str>) {
    let expected: BTreeSet<&str> = expected.into_iter().collect();
    let actual: BTreeSet<&str> = registry.routes(event).into_iter().collect();
    if expected == actual {
        return;
    }
    let mut message = format!(
        "assert_routes failed for event #{} {} {} by {}\n  expected: {}\n  actual:   {}\n  missing:  {}\n  unexpected: {}",
        event.id,
        event.subject,
        event.action,
        event.actor,
        quoted(&expected),
        quoted(&actual),
        quoted(expected.difference(&actual)),
        quoted(actual.difference(&expected)),
    );
    for name in expected.iter().filter(|n| registry.get(n).is_none()) {
        let short = name.rsplit("::").next().unwrap_or_default();
        let like: Vec<_> = registry.iter().map(|d| d.name).filter(|n| n.rsplit("::").next() == Some(short)).collect();
        let _ = write!(message, "\n  `{name}` is not a registered inbox");
        if !like.is_empty() {
            let _ = write!(message, "; did you mean {}?", quoted(&like));
        }
    }
    let kind = event.subject.kind.as_str();
    let candidates: Vec<_> = registry.iter().filter(|d| d.subject.is_none_or(|s| s == kind)).collect();
    if candidates.is_empty() {
        let _ = write!(message, "\nno registered inbox takes subject `{kind}` ({} registered)", registry.len());
    } else {
        let _ = write!(message, "\nregistered inboxes for subject `{kind}`:");
        for d in candidates {
            let actions = if d.actions.is_empty() { "every action".to_owned() } else { d.actions.join(", ") };
            let verdict = match (d.routes(kind, &event.action), d.accepts(event)) {
                (true, true) => "takes it",
                (true, false) => "refused by its filter",
                (false, _) => "not this action",
            };
            let _ = write!(message, "\n  `{}` ({actions}): {verdict}", d.name);
        }
    }
    panic!("{message}");
}

/// `` `a`, `b` ``, or `none`.
fn quoted<S: fmt::Display>(names: impl IntoIterator<Item = S>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}
