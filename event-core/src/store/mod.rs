//! The store: one contract, one module per backend (`sqlite.rs`, `postgres.rs`).
//!
//! [`Store`] is a cheap handle (clone it freely) over a connection pool for SQLite or
//! PostgreSQL, chosen by URL. Both backends run the same API with the same guarantees;
//! the SQL that differs lives in the backend modules, which mirror each other.

mod deliveries;
mod postgres;
mod sqlite;
mod wake;

pub(crate) use wake::channel as notify_channel;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Encode, PgConnection, QueryBuilder, SqliteConnection, Type};

use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::model::{Event, EventId, NewEvent, Subject};
use crate::state_machine::Storage;
use crate::transition::Swap;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (a file, or memory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A handle to Herald's tables in one database.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::{Actor, Store, Subject};
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate().await?;
///
/// let mut tx = store.begin().await?;
/// tx.record(Subject::new("issue", 1), "created", Actor::new("user", 7)).await?;
/// tx.commit().await?;
///
/// let page = store.feed().subject(&Subject::new("issue", 1)).fetch().await?;
/// assert_eq!(page.events[0].action, "created");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Wakes dispatchers after a commit that recorded events.
    wake: wake::Wake,
    /// PostgreSQL column types of state-machine tables, looked up once per store.
    column_types: Arc<Mutex<HashMap<StorageKey, ColumnTypes>>>,
}

/// A state column: `(table, column, key)`.
type StorageKey = (&'static str, &'static str, &'static str);

/// The SQL types of a state column and its key, for casting text parameters.
#[derive(Debug, Clone)]
pub(crate) struct ColumnTypes {
    pub(crate) key: String,
    pub(crate) column: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Store {
    /// Connects to `sqlite://path`, `sqlite::memory:` or `postgres://…`.
    ///
    /// SQLite files are created if missing and opened in WAL mode with a busy timeout,
    /// so several connections (and processes) share one database safely.
    pub async fn connect(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            let mut opts =
                SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(Duration::from_secs(10));
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory {
                opts = opts.journal_mode(SqliteJournalMode::Wal);
            }
            let pool =
                SqlitePoolOptions::new().max_connections(if in_memory { 4 } else { 8 }).connect_with(opts).await?;
            Ok(Store::from_sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new().max_connections(10).connect_with(opts).await?;
            Ok(Store::from_postgres(pool))
        } else {
            Err(Error::UnsupportedUrl(url.to_owned()))
        }
    }

    /// A store over an existing SQLite pool (its options are yours to choose; WAL and
    /// a busy timeout are recommended).
    pub fn from_sqlite(pool: SqlitePool) -> Self {
        Store { pool: Pool::Sqlite(pool), wake: wake::Wake::default(), column_types: Arc::default() }
    }

    /// A store over an existing PostgreSQL pool.
    pub fn from_postgres(pool: PgPool) -> Self {
        Store { pool: Pool::Postgres(pool), wake: wake::Wake::default(), column_types: Arc::default() }
    }

    /// Which backend this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite pool, when this is a SQLite store.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p) => Some(p),
            Pool::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, when this is a PostgreSQL store.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// Applies Herald's embedded migrations (idempotent).
    ///
    /// Herald tracks its migrations in its own `_herald_migrations` table, so it never
    /// collides with the application's own `sqlx migrate` history.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => sqlite::migrate(p).await,
            Pool::Postgres(p) => postgres::migrate(p).await,
        }
    }

    /// Begins a transaction. Record events on it, run your own queries on it, then
    /// [`commit`](Transaction::commit); dropping it rolls everything back.
    ///
    /// On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the write lock up front
    /// (waiting up to the busy timeout), so it can never fail half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<Transaction<'static>> {
        let inner = match &self.pool {
            Pool::Sqlite(p) => TxInner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        Ok(Transaction { inner, store: self.clone(), recorded: Arc::default(), nested: false, cause: None })
    }

    /// The current state of `subject` under machine `S` (see [`Transaction::state`]).
    pub async fn state<S: crate::StateMachine>(&self, subject: &crate::Subject) -> Result<S> {
        let mut tx = self.begin_read().await?;
        let state = tx.state::<S>(subject).await;
        tx.rollback().await?;
        state
    }

    /// A transaction for reading only: on SQLite it does not take the write lock.
    async fn begin_read(&self) -> Result<Transaction<'static>> {
        let inner = match &self.pool {
            Pool::Sqlite(p) => TxInner::Sqlite(p.begin().await?),
            Pool::Postgres(p) => TxInner::Postgres(p.begin().await?),
        };
        Ok(Transaction { inner, store: self.clone(), recorded: Arc::default(), nested: false, cause: None })
    }

    /// A feed query over this store's events, newest first.
    pub fn feed(&self) -> Feed {
        Feed::new(self.clone())
    }

    /// One event by id.
    pub async fn event(&self, id: EventId) -> Result<Option<Event>> {
        match &self.pool {
            Pool::Sqlite(p) => sqlite::event(p, id).await,
            Pool::Postgres(p) => postgres::event(p, id).await,
        }
    }

    /// The column types of a state-machine table on PostgreSQL (cached).
    async fn column_types(&self, conn: &mut PgConnection, storage: Storage) -> Result<Option<ColumnTypes>> {
        let Storage::Column { table, column, key } = storage else { return Ok(None) };
        if let Some(types) = self.column_types.lock().ok().and_then(|m| m.get(&(table, column, key)).cloned()) {
            return Ok(Some(types));
        }
        let types = postgres::column_types(conn, table, column, key).await?;
        if let Ok(mut cache) = self.column_types.lock() {
            cache.insert((table, column, key), types.clone());
        }
        Ok(Some(types))
    }

    /// The database's plan for a feed query, one line per plan node.
    pub(crate) async fn explain_feed(&self, feed: &Feed) -> Result<String> {
        match &self.pool {
            Pool::Sqlite(p) => sqlite::explain_feed(p, feed).await,
            Pool::Postgres(p) => postgres::explain_feed(p, feed).await,
        }
    }

    /// Runs a feed query: up to `limit + 1` events, newest first.
    pub(crate) async fn fetch_feed(&self, feed: &Feed) -> Result<Vec<Event>> {
        match &self.pool {
            Pool::Sqlite(p) => sqlite::feed(p, feed).await,
            Pool::Postgres(p) => postgres::feed(p, feed).await,
        }
    }
}

/// The columns every event query selects, in the order the backends decode them.
const EVENT_COLUMNS: &str =
    "id, subject_type, subject_id, actor_type, actor_id, action, metadata, created_at, causation_id, correlation_id";

/// The columns both backends decode alike; `metadata` and `created_at` come decoded.
fn decode_event<R>(
    row: &R,
    metadata: serde_json::Map<String, serde_json::Value>,
    created_at: DateTime<Utc>,
) -> Result<Event>
where
    R: sqlx::Row,
    for<'r> String: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let id: i64 = row.try_get("id")?;
    let causation: Option<i64> = row.try_get("causation_id")?;
    let correlation: Option<i64> = row.try_get("correlation_id")?;
    Ok(Event {
        id: EventId(id),
        subject: Subject { kind: row.try_get("subject_type")?, id: row.try_get("subject_id")? },
        actor: crate::Actor { kind: row.try_get("actor_type")?, id: row.try_get("actor_id")? },
        action: row.try_get("action")?,
        metadata,
        created_at,
        causation_id: causation.map(EventId),
        correlation_id: EventId(correlation.unwrap_or(id)),
    })
}

/// Narrows an events query to what an inbox receives (subject, actions).
///
/// The terms are kept off the planner's index choice: a batch must walk the position
/// index in commit order and stop at its `LIMIT`, whatever the statistics say. With
/// the subject index usable, PostgreSQL without fresh statistics (a new or freshly
/// loaded table, before autovacuum analyzed it) planned every batch read as a
/// `BitmapAnd` of *all* events of the subject type plus a sort, so each read grew
/// with the subject's history (0.3 → 1.4 ms over 6,000 events in the latency bench).
/// SQLite spells this `+column`; PostgreSQL `(column || '')`, an expression no index
/// covers. `action` leads no index, so on PostgreSQL it stays plain.
pub(crate) fn push_inbox_filter<DB>(q: &mut QueryBuilder<DB>, def: &crate::inbox::InboxDef)
where
    DB: sqlx::Database,
    &'static str: for<'t> Encode<'t, DB> + Type<DB>,
{
    let sqlite = DB::NAME == "SQLite";
    if let Some(subject) = def.subject {
        let column = if sqlite { "+subject_type" } else { "(subject_type || '')" };
        q.push(format_args!(" AND {column} = ")).push_bind(subject);
    }
    if !def.actions.is_empty() {
        let column = if sqlite { "+action" } else { "action" };
        q.push(format_args!(" AND {column} IN ("));
        let mut list = q.separated(", ");
        for a in def.actions {
            list.push_bind(*a);
        }
        q.push(")");
    }
}

/// Builds a feed query for either backend; `time` converts a timestamp to the
/// backend's stored representation.
fn feed_query<DB, T>(prefix: &str, feed: &Feed, time: fn(DateTime<Utc>) -> T) -> Result<QueryBuilder<DB>>
where
    DB: sqlx::Database,
    DB::Arguments: Default,
    String: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    T: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(format!("{prefix}SELECT {EVENT_COLUMNS} FROM herald_events WHERE TRUE"));
    if let Some(s) = &feed.subject {
        q.push(" AND subject_type = ").push_bind(s.kind.clone());
        q.push(" AND subject_id = ").push_bind(s.id.clone());
    }
    if let Some(a) = &feed.actor {
        q.push(" AND actor_type = ").push_bind(a.kind.clone());
        q.push(" AND actor_id = ").push_bind(a.id.clone());
    }
    if !feed.actions.is_empty() {
        q.push(" AND action IN (");
        let mut list = q.separated(", ");
        for a in &feed.actions {
            list.push_bind(a.clone());
        }
        q.push(")");
    }
    if let Some(t) = feed.since {
        q.push(" AND created_at >= ").push_bind(time(t));
    }
    if let Some(t) = feed.until {
        q.push(" AND created_at < ").push_bind(time(t));
    }
    if let Some(c) = feed.before {
        q.push(" AND (created_at, id) < (").push_bind(time(c.created_at()?));
        q.push(", ").push_bind(c.id).push(")");
    }
    // The limit is written into the SQL, not bound: with `LIMIT $n` PostgreSQL's
    // generic plan assumes 10 % of the matching rows, looks far costlier than the
    // custom plans, and so the statement was re-planned on every call (a page cost
    // 0.30 instead of 0.25 ms at 100k+ events). A generic plan is safe here: every
    // filter combination has one index that serves it whatever the values (subject
    // or actor index, their third column covering time ranges and the cursor; the
    // time index otherwise). `limit` is a checked integer, at most 1,000.
    q.push(format_args!(" ORDER BY created_at DESC, id DESC LIMIT {}", i64::from(feed.limit) + 1));
    Ok(q)
}

/// A database transaction (or a savepoint inside one) that events are recorded in.
///
/// Events recorded here become visible to feeds and inboxes only when the outermost
/// transaction commits; a rollback, or a rolled-back savepoint, discards them with
/// everything else done in it. Your own sqlx queries run on the same transaction
/// through [`sqlite`](Self::sqlite), [`postgres`](Self::postgres) or
/// [`connection`](Self::connection).
#[derive(Debug)]
pub struct Transaction<'c> {
    inner: TxInner<'c>,
    store: Store,
    /// Whether any event was recorded, shared with savepoints.
    recorded: Arc<AtomicBool>,
    /// A savepoint: its commit makes nothing visible yet.
    nested: bool,
    /// The event that caused this transaction's events (set by inbox contexts).
    cause: Option<Cause>,
}

/// The default cause of a transaction's events, and the causation-chain limit still
/// to check before the first of them is written.
#[derive(Debug, Clone, Copy)]
struct Cause {
    id: EventId,
    correlation: EventId,
    /// `Some(max)` until the chain ending at `id` was measured against `max`.
    unchecked_limit: Option<u32>,
}

#[derive(Debug)]
enum TxInner<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

/// The connection underneath a [`Transaction`], for your own queries.
#[derive(Debug)]
pub enum Connection<'a> {
    /// A SQLite connection.
    Sqlite(&'a mut SqliteConnection),
    /// A PostgreSQL connection.
    Postgres(&'a mut PgConnection),
}

impl<'c> Transaction<'c> {
    /// Which backend this transaction runs on.
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The connection, for your own queries in this transaction.
    pub fn connection(&mut self) -> Connection<'_> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => Connection::Sqlite(tx),
            TxInner::Postgres(tx) => Connection::Postgres(tx),
        }
    }

    /// The SQLite connection, when this is a SQLite transaction.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// let mut tx = store.begin().await?;
    /// if let Some(conn) = tx.sqlite() {
    ///     sqlx::query("CREATE TABLE issues (id INTEGER PRIMARY KEY)").execute(conn).await?;
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => Some(tx),
            TxInner::Postgres(_) => None,
        }
    }

    /// The PostgreSQL connection, when this is a PostgreSQL transaction.
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Some(tx),
            TxInner::Sqlite(_) => None,
        }
    }

    /// Opens a savepoint: a nested transaction whose rollback undoes only what was
    /// done in it. Its commit releases the savepoint; nothing is visible outside until
    /// the outermost transaction commits.
    pub async fn savepoint(&mut self) -> Result<Transaction<'_>> {
        let inner = match &mut self.inner {
            TxInner::Sqlite(tx) => TxInner::Sqlite(sqlx::Connection::begin(&mut **tx).await?),
            TxInner::Postgres(tx) => TxInner::Postgres(sqlx::Connection::begin(&mut **tx).await?),
        };
        Ok(Transaction {
            inner,
            store: self.store.clone(),
            recorded: self.recorded.clone(),
            nested: true,
            cause: self.cause,
        })
    }

    /// Commits (or, for a savepoint, releases) the transaction.
    ///
    /// After the outermost commit of a transaction that recorded events, dispatchers
    /// are woken: in this process at once, in others through PostgreSQL `NOTIFY`
    /// (sent after the commit, outside the transaction, coalesced).
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await?,
            TxInner::Postgres(tx) => tx.commit().await?,
        }
        if !self.nested && self.recorded.load(Ordering::Relaxed) {
            self.store.wake.committed(&self.store);
        }
        Ok(())
    }

    /// Rolls back everything done in this transaction (or savepoint).
    pub async fn rollback(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.rollback().await?,
            TxInner::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    /// Makes `cause` the default cause of every event recorded in this transaction,
    /// refusing to record once the chain of causes would grow past `max_depth` events.
    pub(crate) fn set_cause(&mut self, cause: &Event, max_depth: u32) {
        self.cause = Some(Cause { id: cause.id, correlation: cause.correlation_id, unchecked_limit: Some(max_depth) });
    }

    /// Applies the transaction's default cause to an event that names none.
    fn caused(&self, mut event: NewEvent) -> NewEvent {
        if let (None, Some(cause)) = (event.causation_id, self.cause) {
            event.causation_id = Some(cause.id);
            event.correlation_id = Some(cause.correlation);
        }
        event
    }

    /// Before the first caused write: the chain of causes ending at the cause must be
    /// shorter than the limit, or an inbox is most likely triggering itself forever.
    /// One statement walking the chain by primary key, at most `limit` steps.
    async fn check_cause_depth(&mut self) -> Result<()> {
        let Some(cause) = self.cause else { return Ok(()) };
        let Some(limit) = cause.unchecked_limit else { return Ok(()) };
        let depth = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::cause_depth(tx, cause.id, limit).await?,
            TxInner::Postgres(tx) => postgres::cause_depth(tx, cause.id, limit).await?,
        };
        if depth >= limit {
            return Err(Error::CausationTooDeep { cause: cause.id, correlation: cause.correlation, max: limit });
        }
        self.cause = Some(Cause { unchecked_limit: None, ..cause });
        Ok(())
    }

    /// Writes one validated event; returns it as stored.
    pub(crate) async fn insert(&mut self, event: NewEvent) -> Result<Event> {
        event.validate()?;
        self.check_cause_depth().await?;
        let event = self.caused(event);
        self.recorded.store(true, Ordering::Relaxed);
        match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert(tx, event).await,
            TxInner::Postgres(tx) => postgres::insert(tx, event).await,
        }
    }

    /// Writes `event` unless one with the same subject and action exists within `window`.
    pub(crate) async fn insert_throttled(&mut self, event: NewEvent, window: Duration) -> Result<Option<Event>> {
        event.validate()?;
        self.check_cause_depth().await?;
        let event = self.caused(event);
        self.recorded.store(true, Ordering::Relaxed);
        let window = chrono::Duration::from_std(window).map_err(|_| Error::ThrottleTooLong(window))?;
        match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert_throttled(tx, event, window).await,
            TxInner::Postgres(tx) => postgres::insert_throttled(tx, event, window).await,
        }
    }

    /// Reads the stored state name of `subject`, `None` when there is no row.
    pub(crate) async fn read_state(&mut self, storage: Storage, subject: &Subject) -> Result<Option<String>> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::read_state(tx, storage, subject).await,
            TxInner::Postgres(tx) => {
                let types = self.store.column_types(tx, storage).await?;
                postgres::read_state(tx, storage, types.as_ref(), subject).await
            }
        }
    }

    /// Compare-and-swap of the state plus the `status_changed` event, atomically;
    /// `None` (and nothing written) when the state was no longer `swap.from`.
    pub(crate) async fn swap_state(&mut self, swap: Swap, event: NewEvent) -> Result<Option<Event>> {
        self.check_cause_depth().await?;
        let event = self.caused(event);
        self.recorded.store(true, Ordering::Relaxed);
        match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::swap_state(tx, swap, event).await,
            TxInner::Postgres(tx) => {
                let types = self.store.column_types(tx, swap.storage).await?;
                postgres::swap_state(tx, swap, types.as_ref(), event).await
            }
        }
    }

    /// Writes many events in one statement (per chunk on SQLite); all or nothing.
    ///
    /// Every event is validated before anything is written. Returns the new ids in
    /// the order the events were given.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// # store.migrate().await?;
    /// use event_core::{Actor, NewEvent, Subject};
    /// let mut tx = store.begin().await?;
    /// let ids = tx
    ///     .record_all((0..3).map(|n| NewEvent::new(Subject::new("page", n), "viewed", Actor::system())))
    ///     .await?;
    /// tx.commit().await?;
    /// assert_eq!(ids.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn record_all(&mut self, events: impl IntoIterator<Item = NewEvent>) -> Result<Vec<EventId>> {
        let events: Vec<_> = events.into_iter().map(|e| self.caused(e)).collect();
        for e in &events {
            e.validate()?;
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.check_cause_depth().await?;
        self.recorded.store(true, Ordering::Relaxed);
        match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert_all(tx, &events).await,
            TxInner::Postgres(tx) => postgres::insert_all(tx, &events).await,
        }
    }
}
