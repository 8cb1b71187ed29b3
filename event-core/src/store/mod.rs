//! The store: one contract, one module per backend (`sqlite.rs`, `postgres.rs`).
//!
//! [`Store`] is a cheap handle (clone it freely) over a connection pool for SQLite or
//! PostgreSQL, chosen by URL. Both backends run the same API with the same guarantees;
//! the SQL that differs lives in the backend modules, which mirror each other.

mod deliveries;
pub use deliveries::{DeadLetterPage, DeadLetters};
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
    /// The longest chain of caused events a record may extend.
    causation_limit: u32,
    /// The last view of what is committed, shared by this store's inbox tasks.
    /// Held while a view is taken, so tasks woken together wait for one query.
    views: Arc<tokio::sync::Mutex<Option<SharedView>>>,
    /// PostgreSQL: whether a write of this store found the database's transaction ids
    /// sound (not restored from another cluster); checked before the first write.
    ids_sound: Arc<AtomicBool>,
}

/// A view taken once for every inbox task a wake-up started.
#[derive(Debug, Clone)]
pub(crate) struct SharedView {
    /// The wake-up count read before the view was taken: every commit counted up to
    /// it is visible in the view.
    pub(crate) after: u64,
    pub(crate) taken: tokio::time::Instant,
    pub(crate) view: crate::dispatch::View,
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
    ///
    /// An in-memory SQLite database is one database shared by the pool's connections
    /// (and kept while the store lives); a URL naming no database at all (`sqlite:`,
    /// `sqlite://`) is [`Error::InvalidUrl`], since SQLite would give each pooled
    /// connection a private temporary database of its own.
    ///
    /// A PostgreSQL server that is down or refuses the connection fails it at once
    /// with [`Error::Database`], its reason in the message (`… Connection refused`).
    pub async fn connect(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            let mut opts =
                SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(Duration::from_secs(10));
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory && opts.get_filename().as_os_str().is_empty() {
                return Err(Error::InvalidUrl {
                    url: url.to_owned(),
                    reason: "it names no database; use sqlite://path/to/file.db or sqlite::memory:",
                });
            }
            let mut pool = SqlitePoolOptions::new().max_connections(if in_memory { 4 } else { 8 });
            if in_memory {
                // One database for every connection (even with `cache=private`), and
                // one connection always open: SQLite drops an in-memory database with
                // its last connection, and the pool closes idle ones.
                opts = opts.shared_cache(true);
                if opts.get_filename().as_os_str().is_empty() {
                    // Shared only by name: a nameless one would be each connection's own.
                    static MEMORY_DBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                    let n = MEMORY_DBS.fetch_add(1, Ordering::Relaxed);
                    opts = opts.filename(format!("file:herald-memory-{}-{n}", std::process::id()));
                }
                pool = pool.min_connections(1).idle_timeout(None).max_lifetime(None);
            } else {
                opts = opts.journal_mode(SqliteJournalMode::Wal);
            }
            Ok(Store::from_sqlite(connect_sqlite(pool, opts).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            // One connection first: a server that is down or refuses us fails here at
            // once, with its reason (a pool retries until its timeout, then reports
            // only "pool timed out").
            sqlx::Connection::close(<PgConnection as sqlx::Connection>::connect_with(&opts).await?).await?;
            let pool = PgPoolOptions::new().max_connections(10).connect_with(opts).await?;
            Ok(Store::from_postgres(pool))
        } else {
            Err(Error::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Like [`connect`](Self::connect), but a PostgreSQL store connects on first use:
    /// it is made even while the server is down (a worker started before its
    /// database; [`Dispatcher::run`](crate::Dispatcher::run) waits for it). Only the
    /// URL is checked here. SQLite needs no server: this is `connect`.
    pub async fn connect_lazy(url: &str) -> Result<Self> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            Ok(Store::from_postgres(PgPoolOptions::new().max_connections(10).connect_lazy_with(opts)))
        } else {
            Self::connect(url).await
        }
    }

    /// Whether the database answers: one new connection, opened and closed
    /// (PostgreSQL), failing at once with the server's reason when it cannot.
    pub(crate) async fn reachable(&self) -> Result<()> {
        if let Pool::Postgres(p) = &self.pool {
            let opts = p.connect_options();
            sqlx::Connection::close(<PgConnection as sqlx::Connection>::connect_with(&opts).await?).await?;
        }
        Ok(())
    }

    /// A store over an existing SQLite pool (its options are yours to choose; WAL and
    /// a busy timeout are recommended).
    pub fn from_sqlite(pool: SqlitePool) -> Self {
        Store::with_pool(Pool::Sqlite(pool))
    }

    /// A store over an existing PostgreSQL pool.
    pub fn from_postgres(pool: PgPool) -> Self {
        Store::with_pool(Pool::Postgres(pool))
    }

    fn with_pool(pool: Pool) -> Self {
        Store {
            pool,
            wake: wake::Wake::default(),
            column_types: Arc::default(),
            causation_limit: crate::inbox::DEFAULT_MAX_CAUSATION_DEPTH,
            views: Arc::default(),
            ids_sound: Arc::default(),
        }
    }

    /// The same store (sharing its pool) with another limit on chains of caused
    /// events (default 32, at least 1): recording an event whose cause already ends a
    /// chain of `n` events, each caused by the one before, fails with
    /// [`Error::CausationTooDeep`]. The dispatcher applies its own
    /// [`max_causation_depth`](crate::DispatcherBuilder::max_causation_depth) to the
    /// store its inboxes get.
    pub fn max_causation_depth(mut self, n: u32) -> Self {
        self.causation_limit = n.max(1);
        self
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
    /// collides with the application's own `sqlx migrate` history. Concurrent calls
    /// (several processes starting at once) all succeed. On PostgreSQL it then refuses
    /// a database restored from another cluster ([`Error::TransactionIdsBehind`]).
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
        Ok(Transaction::new(inner, self.clone(), Arc::default(), false))
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
        Ok(Transaction::new(inner, self.clone(), Arc::default(), false))
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

    /// Runs a feed query: up to `limit + 1` rows, newest first, each decoded alone.
    pub(crate) async fn fetch_feed(&self, feed: &Feed) -> Result<Vec<FeedRow>> {
        match &self.pool {
            Pool::Sqlite(p) => sqlite::feed(p, feed).await,
            Pool::Postgres(p) => postgres::feed(p, feed).await,
        }
    }
}

/// Opens a SQLite pool, waiting out a lock held by another connection that is
/// setting up the same fresh file: switching a new database to WAL mode takes a lock
/// that SQLite reports as busy at once, without waiting on the busy timeout, so
/// processes starting together on a new file failed with "database is locked".
async fn connect_sqlite(pool: SqlitePoolOptions, opts: SqliteConnectOptions) -> Result<SqlitePool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut wait = Duration::from_millis(5);
    loop {
        match pool.clone().connect_with(opts.clone()).await {
            Err(sqlx::Error::Database(e))
                if e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 5)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            connected => return Ok(connected?),
        }
    }
}

/// The state of a state-machine row found by its key, `None` without a row; refuses
/// an id in another form than the key as stored (the database found the row by
/// comparing `042` with 42, but events recorded under `042` would miss `42`'s trail).
pub(crate) fn state_of_keyed_row(
    table: &'static str,
    subject: &Subject,
    row: Option<(Option<String>, String)>,
) -> Result<Option<Option<String>>> {
    match row {
        Some((_, stored)) if stored != subject.id => {
            Err(Error::NonCanonicalId { table, given: subject.id.clone(), stored })
        }
        row => Ok(row.map(|(state, _)| state)),
    }
}

/// One row of a feed page: its keys for the cursor, and the event or why it could
/// not be read (one unreadable row never fails the page).
#[derive(Debug)]
pub(crate) struct FeedRow {
    pub(crate) id: i64,
    /// `None` only when the stored time itself cannot be read.
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) event: Result<Event>,
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
    // Times are clamped to the years 1 to 9999, which both backends store and order
    // alike: `until(DateTime::MAX_UTC)` means "until the end", not "nothing".
    let clamp = crate::model::clamp_time;
    if let Some(t) = feed.since {
        q.push(" AND created_at >= ").push_bind(time(clamp(t)));
    }
    if let Some(t) = feed.until {
        // Every stored time is at most the clamped maximum, so `<` must become `<=` there.
        let op = if t > crate::model::max_time() { "<=" } else { "<" };
        q.push(format_args!(" AND created_at {op} ")).push_bind(time(clamp(t)));
    }
    if let Some(c) = feed.before {
        let op = if feed.oldest_first { ">" } else { "<" };
        q.push(format_args!(" AND (created_at, id) {op} (")).push_bind(time(clamp(c.created_at()?)));
        q.push(", ").push_bind(c.id).push(")");
    }
    // The limit is written into the SQL, not bound: with `LIMIT $n` PostgreSQL's
    // generic plan assumes 10 % of the matching rows, looks far costlier than the
    // custom plans, and so the statement was re-planned on every call (a page cost
    // 0.30 instead of 0.25 ms at 100k+ events). A generic plan is safe here: every
    // filter combination has one index that serves it whatever the values (subject
    // or actor index, their third column covering time ranges and the cursor; the
    // time index otherwise). `limit` is a checked integer, at most 1,000.
    let order = if feed.oldest_first { "ASC" } else { "DESC" };
    q.push(format_args!(" ORDER BY created_at {order}, id {order} LIMIT {}", i64::from(feed.limit) + 1));
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
    /// The longest chain of caused events this transaction may extend.
    causation_limit: u32,
    /// Causes whose chain was measured in this transaction and found short enough.
    checked_causes: Vec<EventId>,
    /// Why the database aborted this transaction, once a Herald statement in it failed.
    aborted: Option<String>,
}

/// The default cause of a transaction's events.
#[derive(Debug, Clone, Copy)]
struct Cause {
    id: EventId,
    correlation: EventId,
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
    fn new(inner: TxInner<'c>, store: Store, recorded: Arc<AtomicBool>, nested: bool) -> Self {
        let causation_limit = store.causation_limit;
        Transaction {
            inner,
            store,
            recorded,
            nested,
            cause: None,
            causation_limit,
            checked_causes: Vec::new(),
            aborted: None,
        }
    }

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
        let mut sp = Transaction::new(inner, self.store.clone(), self.recorded.clone(), true);
        sp.cause = self.cause;
        sp.causation_limit = self.causation_limit;
        sp.checked_causes = self.checked_causes.clone();
        Ok(sp)
    }

    /// Commits (or, for a savepoint, releases) the transaction.
    ///
    /// After the outermost commit of a transaction that recorded events, dispatchers
    /// are woken: in this process at once, in others through PostgreSQL `NOTIFY`
    /// (sent after the commit, outside the transaction, coalesced).
    ///
    /// If a statement Herald ran in this transaction failed in the database, the
    /// transaction is rolled back instead and the commit fails with
    /// [`Error::Aborted`], on both backends: PostgreSQL discards such a transaction
    /// whatever the caller does next, and a commit that returned `Ok` would claim the
    /// caller's own writes were kept. (Errors Herald finds before sending anything,
    /// such as [`Error::UnknownAction`], leave the transaction usable.) Herald cannot
    /// see the results of your own statements on [`postgres`](Self::postgres): when one
    /// of them fails, PostgreSQL aborts the transaction; a Herald statement after it
    /// fails too and makes this commit [`Error::Aborted`], but with none after it the
    /// `COMMIT` of the aborted transaction looks like a success to sqlx. Handle your
    /// own statements' errors (roll back) as with plain sqlx.
    pub async fn commit(self) -> Result<()> {
        if let Some(reason) = self.aborted {
            let rolled_back = match self.inner {
                TxInner::Sqlite(tx) => tx.rollback().await,
                TxInner::Postgres(tx) => tx.rollback().await,
            };
            if let Err(e) = rolled_back {
                tracing::warn!(error = %crate::error::chain(&e), "herald: rolling back an aborted transaction failed");
            }
            return Err(Error::Aborted { reason });
        }
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
        self.cause = Some(Cause { id: cause.id, correlation: cause.correlation_id });
        self.causation_limit = max_depth;
    }

    /// Applies the transaction's default cause to an event that names none.
    fn caused(&self, mut event: NewEvent) -> NewEvent {
        if let (None, Some(cause)) = (event.causation_id, self.cause) {
            event.causation_id = Some(cause.id);
            event.correlation_id = Some(cause.correlation);
        }
        event
    }

    /// Before an event that names a cause is written: the chain of causes ending at
    /// that cause must be shorter than the limit, or an inbox is most likely
    /// triggering itself forever. An explicit `caused_by` is measured like the cause
    /// an inbox context sets. One statement per batch walks the chains by primary
    /// key, at most `limit` steps each; a cause measured once in this transaction is
    /// not measured again.
    async fn check_cause_depth(&mut self, events: &[&NewEvent]) -> Result<()> {
        let limit = self.causation_limit;
        let mut causes: Vec<(EventId, EventId)> = Vec::new();
        for e in events {
            if let Some(id) = e.causation_id
                && !self.checked_causes.contains(&id)
                && !causes.iter().any(|(c, _)| *c == id)
            {
                causes.push((id, e.correlation_id.unwrap_or(id)));
            }
        }
        if causes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = causes.iter().map(|(c, _)| c.0).collect();
        let deepest = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::cause_depth(tx, &ids, limit).await,
            TxInner::Postgres(tx) => postgres::cause_depth(tx, &ids, limit).await,
        };
        let deepest = self.track(deepest)?;
        if let Some((cause, depth)) = deepest
            && depth >= limit
        {
            let correlation = causes.iter().find(|(c, _)| *c == cause).map_or(cause, |(_, corr)| *corr);
            return Err(Error::CausationTooDeep { cause, correlation, max: limit });
        }
        self.checked_causes.extend(causes.iter().map(|(c, _)| *c));
        Ok(())
    }

    /// Notes a database failure: PostgreSQL has aborted the transaction, so it can
    /// only be rolled back now ([`commit`](Self::commit) does, and says so).
    fn track<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(Error::Database(e)) = &result
            && self.aborted.is_none()
        {
            self.aborted = Some(e.to_string());
        }
        result
    }

    /// PostgreSQL, once per store: refuses to write into a database restored or moved
    /// from another cluster until it is fixed ([`Error::TransactionIdsBehind`]). An
    /// event written before the fix would carry a transaction id below every inbox's
    /// position and never be delivered. Checked on this transaction's own connection
    /// (a second one could wait forever on a one-connection pool).
    async fn check_ids(&mut self) -> Result<()> {
        let TxInner::Postgres(tx) = &mut self.inner else { return Ok(()) };
        if self.store.ids_sound.load(Ordering::Relaxed) {
            return Ok(());
        }
        let checked = postgres::dispatch::check_transaction_ids(&mut **tx).await;
        if checked.is_ok() {
            self.store.ids_sound.store(true, Ordering::Relaxed);
        }
        self.track(checked)
    }

    /// Validates `event`, links it to this transaction's cause, and checks what every
    /// write checks first (restored databases, the causation depth).
    async fn prepared(&mut self, event: NewEvent) -> Result<NewEvent> {
        event.validate()?;
        let event = self.caused(event);
        self.check_ids().await?;
        self.check_cause_depth(&[&event]).await?;
        self.recorded.store(true, Ordering::Relaxed);
        Ok(event)
    }

    /// Writes one validated event; returns it as stored.
    pub(crate) async fn insert(&mut self, event: NewEvent) -> Result<Event> {
        let event = self.prepared(event).await?;
        let inserted = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert(tx, event).await,
            TxInner::Postgres(tx) => postgres::insert(tx, event).await,
        };
        self.track(inserted)
    }

    /// Writes `event` unless an event with its idempotency key exists.
    pub(crate) async fn insert_idempotent(&mut self, event: NewEvent) -> Result<crate::Recorded> {
        let event = self.prepared(event).await?;
        let inserted = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert_idempotent(tx, event).await,
            TxInner::Postgres(tx) => postgres::insert_idempotent(tx, event).await,
        };
        self.track(inserted)
    }

    /// Writes `event` unless one with the same subject and action exists within
    /// `window`. A window reaching back before the year 1 means "ever".
    pub(crate) async fn insert_throttled(&mut self, event: NewEvent, window: Duration) -> Result<Option<Event>> {
        let event = self.prepared(event).await?;
        let inserted = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert_throttled(tx, event, window).await,
            TxInner::Postgres(tx) => postgres::insert_throttled(tx, event, window).await,
        };
        self.track(inserted)
    }

    /// Reads the stored state name of `subject`, `None` when there is no row.
    pub(crate) async fn read_state(&mut self, storage: Storage, subject: &Subject) -> Result<Option<String>> {
        crate::model::check_subject(subject)?;
        let state = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::read_state(tx, storage, subject).await,
            TxInner::Postgres(tx) => match self.store.column_types(tx, storage).await {
                Ok(types) => postgres::read_state(tx, storage, types.as_ref(), subject).await,
                Err(e) => Err(e),
            },
        };
        self.track(state)
    }

    /// Compare-and-swap of the state plus the `status_changed` event, atomically;
    /// `None` (and nothing written) when the state was no longer `swap.from`.
    pub(crate) async fn swap_state(&mut self, swap: Swap, event: NewEvent) -> Result<Option<Event>> {
        let event = self.prepared(event).await?;
        let swapped = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::swap_state(tx, swap, event).await,
            TxInner::Postgres(tx) => match self.store.column_types(tx, swap.storage).await {
                Ok(types) => postgres::swap_state(tx, swap, types.as_ref(), event).await,
                Err(e) => Err(e),
            },
        };
        self.track(swapped)
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
        self.check_ids().await?;
        self.check_cause_depth(&events.iter().collect::<Vec<_>>()).await?;
        self.recorded.store(true, Ordering::Relaxed);
        if events.iter().any(|e| e.idempotency_key.is_some()) {
            // Keyed: one statement each, so a duplicate resolves to its event's id.
            let mut ids = Vec::with_capacity(events.len());
            for event in events {
                let inserted = match &mut self.inner {
                    TxInner::Sqlite(tx) => sqlite::insert_idempotent(tx, event).await,
                    TxInner::Postgres(tx) => postgres::insert_idempotent(tx, event).await,
                };
                ids.push(self.track(inserted)?.id());
            }
            return Ok(ids);
        }
        let inserted = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlite::insert_all(tx, &events).await,
            TxInner::Postgres(tx) => postgres::insert_all(tx, &events).await,
        };
        self.track(inserted)
    }
}
