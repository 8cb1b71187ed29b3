//! The delivery-state operations of the dispatcher, routed to the backend modules
//! (`sqlite/dispatch.rs`, `postgres/dispatch.rs`), which mirror each other.

use chrono::{DateTime, Utc};

use super::{Pool, Store, postgres, sqlite};
use crate::dispatch::{
    BlockedKey, Chunk, ChunkClaim, ChunkRow, Claimed, DeadLetter, Failure, Mark, Relet, Taking, View,
};
use crate::error::{Error, Result};
use crate::feed::{Cursor, MAX_LIMIT};
use crate::inbox::InboxDef;
use crate::model::EventId;

macro_rules! on_backend {
    ($store:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match &$store.pool {
            Pool::Sqlite(p) => sqlite::dispatch::$f(p, $($arg),*).await,
            Pool::Postgres(p) => postgres::dispatch::$f(p, $($arg),*).await,
        }
    };
}

impl Store {
    pub(crate) fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub(crate) fn poke(&self) {
        self.wake.poke();
    }

    pub(crate) fn subscribe_queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.wake.subscribe_queued()
    }

    /// A spread inbox's events were copied into chunks: wake every claimer.
    pub(crate) fn announce_queued(&self) {
        self.wake.queued(self);
    }

    /// Whether a notification from backend `pid` came from this store's own notifier.
    pub(crate) fn is_own_notification(&self, pid: u32) -> bool {
        self.wake.is_own(pid)
    }

    /// PostgreSQL: refuses a database restored from another cluster
    /// ([`Error::TransactionIdsBehind`](crate::Error::TransactionIdsBehind)).
    pub(crate) async fn check_transaction_ids(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(()),
            Pool::Postgres(p) => postgres::dispatch::check_transaction_ids(p).await,
        }
    }

    /// What is committed, for an inbox task woken at wake-up count `woke`: the view
    /// another task of this store took after that wake-up (within the last few
    /// milliseconds), or a new one. One snapshot query per wake-up per process, not
    /// one per inbox.
    pub(crate) async fn shared_view(&self, woke: u64) -> Result<View> {
        const FRESH: std::time::Duration = std::time::Duration::from_millis(20);
        // Held across the query: the tasks one wake-up started wait for its answer.
        let mut cached = self.views.lock().await;
        if let Some(shared) = cached.as_ref()
            && shared.after >= woke
            && shared.taken.elapsed() < FRESH
        {
            return Ok(shared.view.clone());
        }
        let after = self.wake.count();
        let taken = tokio::time::Instant::now();
        let view = self.view().await?;
        *cached = Some(super::SharedView { after, taken, view: view.clone() });
        Ok(view)
    }

    /// Another process's commits, announced with `snapshot` (taken after them): wakes
    /// this store's dispatchers with it as their shared view, so they need not ask for
    /// one, unless it is older than the view they share now.
    pub(crate) async fn woken_with(&self, snapshot: &str) {
        if !crate::dispatch::is_snapshot(snapshot) {
            self.poke();
            return;
        }
        let mut cached = self.views.lock().await;
        let newer = match cached.as_ref().map(|c| &c.view) {
            Some(crate::dispatch::View::Postgres(current)) => crate::dispatch::snapshot_contains(snapshot, current),
            _ => true,
        };
        if newer {
            // Counts the wake-up below: the tasks it wakes find this view theirs.
            let after = self.wake.count().wrapping_add(1);
            let view = crate::dispatch::View::Postgres(std::sync::Arc::from(snapshot));
            *cached = Some(super::SharedView { after, taken: tokio::time::Instant::now(), view });
        }
        drop(cached);
        self.poke();
    }

    /// What is committed now: one query.
    pub(crate) async fn view(&self) -> Result<View> {
        on_backend!(self, view())
    }

    /// Moves inbox `from`'s row and deliveries to `to`, unless `to` has a row; `true`
    /// if it did.
    pub(crate) async fn rename_inbox(&self, from: &str, to: &str, now: DateTime<Utc>) -> Result<bool> {
        on_backend!(self, rename_inbox(from, to, now))
    }

    /// The names inboxes were renamed or moved away from.
    pub(crate) async fn retired_inboxes(&self) -> Result<Vec<String>> {
        on_backend!(self, retired_inboxes())
    }

    /// Creates the inbox's row (starting at `start`) unless it exists, or unless its
    /// name was retired by a rename: then the name it was renamed to, and nothing
    /// written.
    pub(crate) async fn sync_inbox(&self, name: &str, start: &Mark, now: DateTime<Utc>) -> Result<Option<String>> {
        on_backend!(self, sync_inbox(name, start, now))
    }

    /// Takes over the inbox's lease for `lease` (database clock) if another worker's
    /// expired; tells whether another's holds, or whether nobody's does (then the
    /// caller leases it with its first read, [`relet_and_read`](Self::relet_and_read)).
    pub(crate) async fn lease_inbox(
        &self,
        name: &str,
        me: &str,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Taking> {
        on_backend!(self, lease_inbox(name, me, lease, now))
    }

    /// Extends a lease `me` holds at `epoch`; `false` when it is no longer ours.
    /// Never acquires.
    pub(crate) async fn renew_lease(
        &self,
        name: &str,
        me: &str,
        epoch: i64,
        lease: std::time::Duration,
    ) -> Result<bool> {
        on_backend!(self, renew_lease(name, me, epoch, lease))
    }

    /// Re-takes a lease this worker released (the row still at `checkpoint`) and reads
    /// the next batch from `from` (at or past it, in memory) up to `view`. With nothing
    /// for the inbox, takes no lease and moves the checkpoint to `passed` if given,
    /// else writes nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn relet_and_read(
        &self,
        def: &InboxDef,
        me: &str,
        checkpoint: &Mark,
        from: &Mark,
        passed: Option<&Mark>,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        view: &View,
        limit: usize,
    ) -> Result<Relet> {
        on_backend!(self, relet_and_read(def, me, checkpoint, from, passed, now, lease, view, limit))
    }

    pub(crate) async fn read_batch(
        &self,
        def: &InboxDef,
        after: &Mark,
        view: &View,
        limit: usize,
    ) -> Result<crate::dispatch::Scan> {
        on_backend!(self, read_batch(def, after, view, limit))
    }

    pub(crate) async fn explain_batch(
        &self,
        def: &InboxDef,
        after: &Mark,
        view: &View,
        limit: usize,
    ) -> Result<String> {
        on_backend!(self, explain_batch(def, after, view, limit))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn advance(
        &self,
        name: &str,
        me: &str,
        epoch: i64,
        to: &Mark,
        renew: Option<std::time::Duration>,
        failures: &[Failure],
        chunks: &[Chunk],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        on_backend!(self, advance(name, me, epoch, to, renew, failures, chunks, now))
    }

    /// Deletes the chunks `done` that `me` finished (leaving no row), splits chunks
    /// whose worker died (lease past `now`) into delivery rows, each counted one
    /// expiry, and claims up to `limit` chunks of `inbox` for `me` until `until`, each
    /// its partition's oldest; tells whether delivery rows of the inbox are claimable.
    /// `read`: with the events (else left to the caller, whose pump kept them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn claim_chunks(
        &self,
        me: &str,
        inbox: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
        done: &[i64],
        read: bool,
    ) -> Result<ChunkClaim> {
        on_backend!(self, claim_chunks(me, inbox, now, until, limit, done, read))
    }

    /// Events by id, each decoded alone (an unreadable one is its delivery's problem);
    /// missing ones are left out.
    pub(crate) async fn events_by_id(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Result<crate::model::Event>>> {
        on_backend!(self, events_by_id(ids))
    }

    /// Extends the leases of chunks `me` claimed and still runs.
    pub(crate) async fn renew_chunks(&self, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
        on_backend!(self, renew_chunks(me, ids, until))
    }

    /// Deletes chunks `me` holds and writes the delivery rows they leave, in order,
    /// atomically (a chunk no longer held leaves nothing). Returns the row ids of the
    /// `leased` rows (claimed by `me` until `until`), by event.
    pub(crate) async fn settle_chunks(
        &self,
        me: &str,
        inbox: &str,
        chunks: &[i64],
        rows: &[ChunkRow],
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(EventId, i64)>> {
        on_backend!(self, settle_chunks(me, inbox, chunks, rows, now, until))
    }

    pub(crate) async fn claim_retries(
        &self,
        me: &str,
        inboxes: &[&str],
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        on_backend!(self, claim_retries(me, inboxes, now, until, limit))
    }

    /// Extends the leases of retries `me` claimed and still runs.
    pub(crate) async fn renew_retries(&self, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
        on_backend!(self, renew_retries(me, ids, until))
    }

    /// A spread inbox's deliveries waiting to run, up to `cap`: rows not yet tried
    /// and not held back behind a failing event of their key.
    pub(crate) async fn queued(&self, inbox: &str, cap: usize) -> Result<usize> {
        on_backend!(self, queued(inbox, cap))
    }

    /// Gives back claims `me` holds and will not run (stopping): free for any worker
    /// at once, with no expiry counted.
    pub(crate) async fn release_claims(&self, me: &str, ids: &[i64]) -> Result<()> {
        on_backend!(self, release_claims(me, ids, crate::model::now()))
    }

    pub(crate) async fn complete_retries(
        &self,
        me: &str,
        succeeded: &[i64],
        failed: &[(i64, Failure)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_backend!(self, complete_retries(me, succeeded, failed, now))
    }

    pub(crate) async fn release_leases(&self, me: &str) -> Result<()> {
        on_backend!(self, release(me, crate::model::now()))
    }

    /// Which of `keys` are held back in `inbox`, and whether any key of it is.
    pub(crate) async fn blocked_among(&self, inbox: &str, keys: &[&str]) -> Result<(bool, Vec<String>)> {
        on_backend!(self, blocked_among(inbox, keys))
    }

    /// The transactions that recorded events and have not committed yet, oldest
    /// first, with their process, age and state (prepared ones too): the only thing
    /// that can hold back an event (its own transaction). Always empty on SQLite,
    /// where a writer holds the database's write lock until it ends and other writers
    /// wait for it.
    pub async fn open_writers(&self) -> Result<Vec<crate::dispatch::OpenWriter>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Vec::new()),
            Pool::Postgres(p) => postgres::dispatch::open_writers(p).await,
        }
    }

    /// Keys held back by a failing event, of one inbox or of all: each with its head
    /// (the event that failed, its attempts, last error and next attempt) and how many
    /// events wait behind it. Oldest first per inbox.
    pub async fn blocked_keys(&self, inbox: Option<&str>) -> Result<Vec<BlockedKey>> {
        on_backend!(self, blocked_keys(inbox))
    }

    /// Retries the head of a held-back key now, without waiting for its backoff; returns
    /// the head's event. [`Error::NotBlocked`](crate::Error::NotBlocked) if nothing holds
    /// the key back.
    pub async fn retry_key(&self, inbox: &str, key: &str) -> Result<EventId> {
        self.unblock_key(inbox, key, false).await
    }

    /// Gives up the head of a held-back key: it becomes a dead letter (its last error
    /// prefixed with "skipped by hand"), and the events behind it go on. Returns the
    /// skipped event. [`Error::NotBlocked`](crate::Error::NotBlocked) if nothing holds the
    /// key back.
    pub async fn skip_key(&self, inbox: &str, key: &str) -> Result<EventId> {
        self.unblock_key(inbox, key, true).await
    }

    async fn unblock_key(&self, inbox: &str, key: &str, skip: bool) -> Result<EventId> {
        match on_backend!(self, unblock_key(inbox, key, skip, crate::model::now()))? {
            Some(head) => {
                self.poke();
                Ok(head)
            }
            None => Err(crate::Error::NotBlocked { inbox: inbox.to_owned(), key: key.to_owned() }),
        }
    }

    /// Dead deliveries, newest first, of one inbox (`Some(name)`) or of all, a page at
    /// a time: `.await` the first page (up to 100), or set [`DeadLetters::limit`] and
    /// continue from a page's [`next`](DeadLetterPage::next) with
    /// [`DeadLetters::before`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// # store.migrate().await?;
    /// let mut page = store.dead_letters(Some("mailer")).limit(20).await?;
    /// loop {
    ///     for dead in &page.letters {
    ///         println!("{} failed: {}", dead.event_id, dead.last_error);
    ///     }
    ///     let Some(next) = page.next else { break };
    ///     page = store.dead_letters(Some("mailer")).limit(20).before(next).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn dead_letters(&self, inbox: Option<&str>) -> DeadLetters {
        DeadLetters { store: self.clone(), inbox: inbox.map(str::to_owned), before: None, limit: 100 }
    }

    pub(crate) async fn dead_letter_rows(
        &self,
        inbox: Option<&str>,
        before: Option<(DateTime<Utc>, i64)>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        on_backend!(self, dead_letters(inbox, before, limit))
    }

    /// Schedules one dead delivery for a fresh round of attempts, now.
    pub async fn retry_dead(&self, id: i64) -> Result<()> {
        match on_backend!(self, retry_dead(Some(id), None, crate::model::now()))? {
            0 => Err(crate::Error::NoSuchDelivery(id)),
            _ => {
                self.poke();
                Ok(())
            }
        }
    }

    /// Schedules every dead delivery (of one inbox, or of all) for a fresh round of
    /// attempts, now; returns how many.
    pub async fn retry_all_dead(&self, inbox: Option<&str>) -> Result<u64> {
        let n = on_backend!(self, retry_dead(None, inbox, crate::model::now()))?;
        self.poke();
        Ok(n)
    }

    /// Deletes dead deliveries that failed before `before`; returns how many. A time
    /// past the year 9999 deletes every dead delivery.
    pub async fn prune_dead(&self, before: DateTime<Utc>) -> Result<u64> {
        // Stored times are at most `max_time`: `<=` it is "everything", `<` below it.
        let before = if before > crate::model::max_time() {
            crate::model::max_time()
        } else {
            crate::model::clamp_time(before) - chrono::Duration::microseconds(1)
        };
        on_backend!(self, prune_dead(before))
    }

    pub(crate) async fn inbox_rows(&self) -> Result<Vec<(String, Mark, i64, i64)>> {
        on_backend!(self, inbox_rows())
    }

    pub(crate) async fn pending(&self, def: &InboxDef, after: &Mark, view: &View) -> Result<i64> {
        on_backend!(self, pending(def, after, view))
    }
}

/// A listing of dead letters, from [`Store::dead_letters`]: `.await` it for a page.
#[derive(Debug, Clone)]
#[must_use = "a listing does nothing until awaited"]
pub struct DeadLetters {
    store: Store,
    inbox: Option<String>,
    before: Option<Cursor>,
    limit: u32,
}

/// One page of dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// Newest first.
    pub letters: Vec<DeadLetter>,
    /// Where the next (older) page starts, or `None` when this was the last page.
    pub next: Option<Cursor>,
}

impl DeadLetters {
    /// Page size, 1 to [`MAX_LIMIT`]; 100 by default.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Continues after `cursor` (a previous page's [`next`](DeadLetterPage::next)).
    pub fn before(mut self, cursor: Cursor) -> Self {
        self.before = Some(cursor);
        self
    }

    async fn fetch(self) -> Result<DeadLetterPage> {
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(Error::InvalidLimit { got: self.limit, max: MAX_LIMIT });
        }
        let before = match self.before {
            Some(c) => Some((c.created_at()?, c.id)),
            None => None,
        };
        let mut letters = self.store.dead_letter_rows(self.inbox.as_deref(), before, self.limit + 1).await?;
        let next = if letters.len() > self.limit as usize {
            letters.truncate(self.limit as usize);
            letters.last().map(|d| Cursor { created_at_micros: d.failed_at.timestamp_micros(), id: d.id })
        } else {
            None
        };
        Ok(DeadLetterPage { letters, next })
    }
}

impl std::future::IntoFuture for DeadLetters {
    type Output = Result<DeadLetterPage>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.fetch())
    }
}
