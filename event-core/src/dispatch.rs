//! The durable dispatcher: every committed event reaches every inbox that wants it,
//! at least once, with retries, backoff, leases and dead letters.
//!
//! # Delivery state
//!
//! Herald keeps **a checkpoint per inbox plus a row per failed delivery**, not a row
//! per delivery:
//!
//! - `herald_inboxes`: one row per inbox name with its checkpoint (a position in the
//!   commit order of events) and a lease. A worker leases an inbox and streams it:
//!   reads batches of matching events after the checkpoint (one `SELECT` each) while
//!   handlers have room, runs them (see *Order* below), and moves the checkpoint to
//!   the **low watermark**, the position before the oldest event not yet finished (one
//!   `UPDATE` about once per batch, or every 100 ms while work goes on). Events finish
//!   in any order; nothing waits for a batch's slowest event but the checkpoint.
//! - `herald_deliveries`: one row per delivery that failed (and per event of a
//!   *spread* inbox, below), with its attempts, next attempt time, last error and
//!   lease; dead letters are the rows marked `dead`. Each inbox has a claim task of
//!   its own that claims its ready rows as handlers free up (`FOR UPDATE SKIP LOCKED`
//!   on PostgreSQL), runs them side by side with their leases renewed, and completes
//!   them as they finish: one inbox's slow retries delay no other inbox's, and a slow
//!   retry is not mistaken for a crash.
//!
//! **Write cost per event**: zero rows for a successful delivery. Recording writes only
//! the event; each inbox writes one checkpoint `UPDATE` per batch (up to
//! [`DispatcherBuilder::batch_size`] events) or per 100 ms of work; a failed delivery
//! writes one row (as does each later event of its key parked behind it), and one more
//! per retry. While nothing of an inbox is held back, finding out costs nothing; once
//! something is, each batch asks which of its keys are (one indexed query). Under
//! [`Dispatcher::run`] a stream that caught up keeps its lease for a moment (1 s, at
//! most a quarter of the lease) and goes on reading as commits arrive, so a steady
//! trickle of events costs one checkpoint `UPDATE` per 100 ms, not a lease and a
//! release per commit (each a row version that a long-open snapshot keeps alive).
//! Waking from idle, an inbox re-takes its lease in the statement
//! that reads its batch, and only if the batch holds something: no worker ever holds
//! a lease it took without reading. If the new events are
//! not for it, it writes nothing: it keeps its new position in memory and writes it
//! only once it is 1,000 transactions (PostgreSQL) or events (SQLite) behind, or 5
//! minutes old. Bookkeeping is O(inboxes + deliveries in trouble): successes leave
//! nothing behind, and dead letters are pruned with [`Store::prune_dead`] (or
//! [`DispatcherBuilder::dead_retention`]). Events themselves are kept.
//!
//! # Order: delivery by key
//!
//! Every inbox has a key ([`Key`]; `#[inbox(key = "subject" |
//! "actor" | "correlation" | "none" | path::to::fn)]`), by default the subject:
//!
//! - **Events of one key reach the inbox in commit order, one at a time**, across
//!   retries and crashes. A failing event holds back the later events of its key, and
//!   only of its key, until it succeeds or is dead-lettered: the later ones are parked
//!   behind it in `herald_deliveries` ("waiting", no attempt counted), and only the
//!   oldest live row of a key is ever claimed.
//! - **No order between keys**: different keys run side by side, up to the inbox's
//!   concurrency. `key = "none"` keeps no order at all; a failure holds nothing back.
//! - A key held back by a failing event is a **blocked key**:
//!   [`Store::blocked_keys`] lists each with its head event, attempts and last error
//!   and how many wait behind it; [`Store::retry_key`] retries the head now,
//!   [`Store::skip_key`] dead-letters it so the rest go on.
//! - A crash re-delivers what was not yet passed, in order again: a key's events may
//!   then run twice (at least once), never out of order. A dead letter retried by
//!   hand ([`Store::retry_dead`]) runs after the later events of its key.
//!
//! # Spread inboxes
//!
//! An inbox is streamed by one worker at a time (its lease holder): the cheapest path,
//! and enough for fast handlers. A slow inbox (a webhook, an email, a sync: 20-500 ms
//! a call) that needs more handlers than one process should run says
//! `#[inbox(spread = true)]` ([`InboxDef::spread`]):
//!
//! - its lease holder becomes a **pump**: it reads batches as before and copies the
//!   events into **chunks** (`herald_chunks`) in the statement that moves its
//!   checkpoint, so an event is copied exactly once. A chunk holds up to 64 events of
//!   one *partition* of keys (a hash of the key, one of 32; keyless inboxes: any
//!   events), in commit order: one row write per chunk, not per event. Under
//!   [`run`](Self::run) it stops copying while 1,000 events (or 4 batches) wait to run
//!   and looks again every 50 ms; under [`drain`](Self::drain) its claims run
//!   alongside and it copies everything;
//! - every dispatcher, in every process, runs the inbox's **claim stream** (the same
//!   one that runs retries): it claims each partition's oldest chunk only (`FOR UPDATE
//!   SKIP LOCKED`), so a partition's chunks, and with them each key's events, run one
//!   after another in commit order. Within a chunk, different keys run side by side
//!   and each key's events one at a time. It claims again as soon as handlers free up
//!   (at least the concurrency ahead), renews the leases of what it holds, and deletes
//!   a finished chunk with its next claim. The pump keeps the events it copied, so
//!   its own process's claims do not read them again;
//! - a chunk leaves `herald_deliveries` rows only for what did not succeed: a failed
//!   event (retried with backoff, dead-lettered, listed as a blocked key) and the
//!   later events of its key in the chunk, parked behind it, written in the statement
//!   that deletes the chunk. An event whose key has a live row is parked behind it
//!   too, so a key stays in order across chunks, rows and retries;
//! - a chunk whose worker died is split, once its lease ran out, into delivery rows,
//!   each counted one expiry (an event that keeps killing its workers is
//!   dead-lettered after `max_lease_expiries`, as for any crashed delivery); the next
//!   chunk of its partition waits behind those rows. A stopping worker turns its
//!   chunks into rows at once: what did not start, free for any worker; what runs,
//!   held by it until it finishes;
//! - failures, backoff, dead letters, blocked keys and timeouts work as for any inbox.
//!   A key merely waiting its turn is not blocked: [`Store::blocked_keys`] lists heads
//!   that failed (or whose worker died).
//!
//! The cost: a chunk row written, claimed and deleted per 64 events at most, and each
//! event read twice where its pump is in another process. A copy wakes the claimers
//! of this process at once and other processes through `NOTIFY`. At most 32 chunks of
//! an inbox run at once, so a keyed inbox spreads over at most 32 × 64 events in
//! flight; one key always runs one event at a time.
//!
//! **Commit order, and what may delay an event.** PostgreSQL sequence values are
//! taken at insert, not at commit: a transaction holding id 10 can commit after one
//! holding id 11, and a cursor that trusted ids would step over 10. Each event
//! therefore stores its writing transaction (`tx_id xid8`), and an inbox reads by
//! *snapshot pairs*, as PgQ does: its checkpoint is a snapshot `from` (every matching
//! event visible in it was delivered) and, mid-pair, the snapshot `to` closing the
//! pair and the last `(tx_id, id)` passed in it. The next pair's events are those
//! visible in a fresh snapshot and not in `from`: exactly the transactions that
//! committed in between, in whatever order they committed. So:
//!
//! - **only an event's own transaction delays it**: a long or prepared transaction, in
//!   this database or another, holds back its own events and no other (an earlier
//!   design read up to the oldest running transaction of the whole server, so one
//!   idle `BEGIN` anywhere stopped every inbox). [`Store::open_writers`] names the
//!   transactions still open that recorded events, prepared ones included;
//! - **nothing is skipped**: a transaction that commits late lands in the pair in
//!   which it became visible;
//! - **order**: pairs follow each other in time, so an event whose transaction
//!   committed before another's began comes first; within a pair (transactions that
//!   committed between two reads, a few milliseconds apart) events go in
//!   `(tx_id, id)` order.
//!
//! A pair's events are those of the transactions in progress at `from` (its `xip`
//! list: index probes) and of those that began after it (one range of the
//! `(tx_id, id)` index), so a read walks the index in order and stops at its limit.
//! On SQLite, writers hold the single write lock from `BEGIN IMMEDIATE` to `COMMIT`,
//! so ids are already commit-ordered and the checkpoint is the last id passed.
//!
//! **Crashes.** A lease that expires while its owner held it means the worker died or
//! hung: the next worker re-delivers the unfinished batch (at least once) one event at
//! a time, and counts expiries at the same checkpoint; after
//! [`DispatcherBuilder::max_lease_expiries`] the event that keeps killing workers is
//! dead-lettered, so one poison event cannot loop forever. Attempts are only counted
//! when a handler fails, never when it is claimed. Leases are short (4 s by default)
//! and renewed while handlers run, so a killed worker's inbox is taken over within
//! seconds; they are timed by the database's clock and **fenced**: each acquisition
//! bumps an epoch that renewals and checkpoint writes must name, renewal never
//! acquires, so a worker that stalled past its lease can neither take it back nor move
//! the checkpoint backwards. Worker ids always get a per-run suffix. A worker killed
//! while it held an inbox (delivering, or in the moment it keeps a caught-up stream
//! open) delays that inbox until its lease expires: 4 s by default, measured at a
//! p99 of 4.1 s over 20 kills.
//!
//! **Identity.** A handler whose module moved, or one renamed with
//! `#[inbox(renamed_from = "…")]`, takes over its former row, and the former name is
//! retired (`herald_inbox_renames`): an older process still registering it (during a
//! rolling deploy) neither takes the row back nor re-creates the old name; it logs a
//! warning and does not deliver that inbox.
//!
//! **Poison events and panics.** Each event of a batch is decoded on its own: one
//! that cannot be read (stored by raw SQL or an older version: Herald refuses at
//! record time what it could not read back) is dead-lettered at once with the reason,
//! and the rest of the batch is delivered. A handler or filter that panics fails its
//! event, which is retried like any failure. A panic in the dispatcher's own code
//! fails that pass only (logged; [`Dispatcher::drain`] returns [`Error::Panicked`]);
//! the inbox's task goes on. Retry delays are clamped to the year 9999.
//!
//! **Feedback loops.** An inbox's follow-up events (recorded through
//! [`Context`]) carry the delivered event as their cause. Before the first event with
//! a given cause is written in a transaction, the chain of causes is measured (one
//! recursive primary-key walk); past [`DispatcherBuilder::max_causation_depth`] the
//! record fails with [`Error::CausationTooDeep`], which gives the delivery up at
//! once. An explicit `caused_by` is measured the same way, in any transaction, so a
//! handler that opens its own (`cx.store().begin()`) cannot slip past the limit.
//!
//! **One snapshot per wake-up.** The inbox tasks a wake-up starts share one view of
//! what is committed (one `pg_current_snapshot()`), taken after the wake-up: 20
//! queries for 20 wake-ups of 8 inboxes, where each task used to ask for its own.
//!
//! **Wake-ups.** A commit that recorded events wakes this process's dispatchers at
//! once and, on PostgreSQL, other processes through `LISTEN`/`NOTIFY` (sent after the
//! commit, outside the transaction, at most one per 5 ms per store: the first commit
//! after a quiet spell is announced at once, faster commits share the next one). Its
//! payload is a snapshot taken after the commits it announces: the woken dispatchers
//! read with it instead of asking for a view of their own. A view never moves an
//! inbox back, whichever path it came by: one older than where the inbox stands
//! passes nothing. The listener reconnects when its connection drops; polling every
//! [`DispatcherBuilder::poll_interval`] runs regardless.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::inbox::{Context, InboxDef, InboxError, Key, Outcome, Registry, Resources, StartFrom};
use crate::model::{Event, EventId, now, time_after};
use crate::store::Store;

/// A position in the commit order of events: `(transaction, id)` on PostgreSQL,
/// `(0, id)` on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Position {
    pub(crate) tx: i64,
    pub(crate) id: i64,
}

/// What is committed, as one query sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    /// SQLite: the newest event id (ids are handed out in commit order there).
    Sqlite(i64),
    /// PostgreSQL: the current snapshot (`pg_current_snapshot()`, as text).
    Postgres(Arc<str>),
}

/// Where an inbox stands in the commit order of events: everything before it was
/// delivered (or parked as a failed delivery).
///
/// - SQLite: `at` is the last event id passed; `from` and `to` are `None`.
/// - PostgreSQL: every matching event visible in snapshot `from` was passed. Once a
///   batch of the next *pair* was delivered, `to` holds the snapshot closing it: of
///   the events visible in `to` but not in `from`, those up to `at` in
///   `(tx_id, id)` order were passed. A pair's events are fixed when `to` is taken,
///   so a pair can be read batch by batch, by any worker, after a crash too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Mark {
    pub(crate) from: Option<Arc<str>>,
    pub(crate) to: Option<Arc<str>>,
    pub(crate) at: Position,
}

impl Mark {
    /// Where a new inbox starts: at `view` (history skipped), or at the beginning.
    pub(crate) fn start(view: &View, start: StartFrom) -> Mark {
        match (view, start) {
            (View::Sqlite(_), StartFrom::Beginning) => Mark::default(),
            (View::Postgres(_), StartFrom::Beginning) => {
                Mark { from: Some(Arc::from(EMPTY_SNAPSHOT)), ..Mark::default() }
            }
            (View::Sqlite(max), StartFrom::Now) => Mark { at: Position { tx: 0, id: *max }, ..Mark::default() },
            (View::Postgres(snapshot), StartFrom::Now) => Mark { from: Some(snapshot.clone()), ..Mark::default() },
        }
    }

    /// Whether nothing committed in `view` is past this mark (a view older than the
    /// mark's snapshot has nothing past it either).
    pub(crate) fn caught_up(&self, view: &View) -> bool {
        match view {
            View::Sqlite(max) => self.at.id >= *max,
            View::Postgres(snapshot) => {
                self.to.is_none() && self.from.as_deref().is_some_and(|from| snapshot_contains(from, snapshot))
            }
        }
    }

    /// The snapshot closing the pair read from this mark: the stored one mid-pair, else `view`.
    pub(crate) fn pair_end<'a>(&'a self, view: &'a View) -> &'a str {
        match (&self.to, view) {
            (Some(to), _) => to,
            (None, View::Postgres(snapshot)) => snapshot,
            (None, View::Sqlite(_)) => "",
        }
    }

    /// The mark after a batch read from this one up to `view`: inside the pair at
    /// `last` if the batch was `full`, else past the whole pair.
    pub(crate) fn after(&self, view: &View, last: Option<Position>, full: bool) -> Mark {
        match (view, last) {
            (View::Sqlite(_), Some(last)) if full => Mark { at: last, ..Mark::default() },
            (View::Sqlite(max), _) => Mark { at: Position { tx: 0, id: (*max).max(self.at.id) }, ..Mark::default() },
            (View::Postgres(_), Some(last)) if full => {
                Mark { from: self.from.clone(), to: Some(Arc::from(self.pair_end(view))), at: last }
            }
            // Never back: a view older than this mark's snapshot passes nothing.
            (View::Postgres(snapshot), _)
                if self.to.is_none() && self.from.as_deref().is_some_and(|from| !snapshot_contains(snapshot, from)) =>
            {
                self.clone()
            }
            (View::Postgres(_), _) => {
                Mark { from: Some(Arc::from(self.pair_end(view))), to: None, at: Position::default() }
            }
        }
    }
}

/// A snapshot in which no transaction is visible: the mark of an inbox that starts
/// from the beginning.
pub(crate) const EMPTY_SNAPSHOT: &str = "1:1:";

/// An inbox row as read when leasing it.
#[derive(Debug)]
pub(crate) struct LeaseRow {
    pub(crate) checkpoint: Mark,
    pub(crate) owner: Option<String>,
    /// Whether the owner's lease still holds, by the database's clock.
    pub(crate) live: bool,
    pub(crate) crash_at: Option<Mark>,
    pub(crate) crashes: u32,
    /// Bumped by every acquisition: a write that names an older epoch is refused.
    pub(crate) epoch: i64,
}

/// What asking for an inbox's lease the long way found.
#[derive(Debug)]
pub(crate) enum Taking {
    /// Another worker's lease holds.
    Held,
    /// Nobody holds it (released cleanly): the row's checkpoint. Leased only together
    /// with a read that finds something ([`Relet`]), so no lease is ever held by a
    /// worker that has read nothing (one that died right after would leave it stuck).
    Free(Mark),
    /// Taken (an expired lease of another worker: taken over).
    Leased(Lease),
}

/// A lease on an inbox: its checkpoint, and what crashes happened at it.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) checkpoint: Mark,
    pub(crate) crash_at: Option<Mark>,
    pub(crate) crashes: u32,
    /// Taken over from a worker whose lease expired: it died or hung mid-batch.
    pub(crate) taken_over: bool,
    /// The lease's epoch: renewals and checkpoint writes must name it.
    pub(crate) epoch: i64,
}

impl LeaseRow {
    /// The lease `me` gets, or `None` while another worker's lease holds.
    pub(crate) fn acquire(self, me: &str) -> Option<Lease> {
        let other = self.owner.as_deref().is_some_and(|o| o != me);
        if other && self.live {
            return None;
        }
        let (crash_at, crashes) = match (other, self.crash_at) {
            (true, Some(at)) if at == self.checkpoint => (Some(at), self.crashes + 1),
            (true, _) => (Some(self.checkpoint.clone()), 1),
            (false, at) => (at, self.crashes),
        };
        Some(Lease { checkpoint: self.checkpoint, crash_at, crashes, taken_over: other, epoch: self.epoch + 1 })
    }
}

impl Lease {
    /// Expired leases while the checkpoint stood where it stands now.
    fn crashes_here(&self) -> u32 {
        if self.crash_at.as_ref() == Some(&self.checkpoint) { self.crashes } else { 0 }
    }
}

/// A failed delivery, to park in `herald_deliveries`.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// Its key: a live row holds back the later events of the key.
    pub(crate) key: Option<String>,
    pub(crate) event_id: EventId,
    pub(crate) attempts: u32,
    pub(crate) next_at: DateTime<Utc>,
    pub(crate) error: String,
    pub(crate) dead: bool,
}

impl Failure {
    /// Dead at once (it holds back no key).
    fn dead(event_id: EventId, attempts: u32, error: String) -> Self {
        Failure { key: None, event_id, attempts, next_at: now(), error, dead: true }
    }
}

/// What re-taking a released lease found.
#[derive(Debug)]
pub(crate) enum Relet {
    /// The row changed since this worker released it: take the lease the long way.
    Changed,
    /// Nothing for the inbox up to the view: the checkpoint moved there, no lease kept.
    Advanced,
    /// Nothing for the inbox up to the view, and nothing written (the caller keeps
    /// the new position in memory until it is worth a write).
    Empty,
    /// Leased (at this epoch), with the next batch.
    Leased(Scan, i64),
    /// Nothing for the inbox in a full scan: no lease taken, nothing written; the next
    /// read starts after the scan.
    Skipped(Scan),
}

/// What one read of an inbox's next events found: the events it wants, and how far
/// the read looked. A read walks at most `limit` events in commit order whatever the
/// inbox wants, so its plan does not depend on how many of them match (PostgreSQL).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The events the inbox wants, in commit order.
    pub(crate) events: Batch,
    /// The last event looked at, wanted or not.
    pub(crate) last: Option<Position>,
    /// Events looked at: the read was full (more may follow) if it is the limit.
    pub(crate) scanned: usize,
}

/// Events read for an inbox, in commit order: each decoded alone, so one unreadable
/// row is dead-lettered while the rest are delivered.
pub(crate) type Batch = Vec<(Position, Result<Event>)>;

/// A retry claimed by this worker.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) event_id: EventId,
    /// The event, or why it cannot be read.
    pub(crate) event: Result<Event>,
    pub(crate) attempts: u32,
    pub(crate) expiries: u32,
    pub(crate) key: Option<String>,
    /// Whether later rows of its key wait behind it (claimable once it is done).
    pub(crate) next: bool,
}

/// A spread inbox's event copied by its pump, to go into a chunk.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    pub(crate) event_id: EventId,
    pub(crate) key: Option<String>,
    /// The event, kept for this worker's claims once the copy is written.
    pub(crate) event: Event,
}

/// A run of copied events of one partition of keys, written as one
/// `herald_chunks` row. Chunks of one partition run one after another, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// `None`: the inbox keeps no order; the chunk may run beside any other.
    pub(crate) part: Option<i32>,
    pub(crate) events: Vec<i64>,
    pub(crate) keys: Vec<Option<String>>,
}

/// How many partitions a spread inbox's keys hash into: at most this many of its
/// chunks run at once, across every worker. Part of the stored data's meaning (a key
/// must land in the same partition whichever process copies it): never change it.
const CHUNK_PARTS: u64 = 32;

/// The most events in one chunk.
const CHUNK_MAX: usize = 64;

/// The partition of `key`: FNV-1a, the same in every process and build.
fn chunk_part(key: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % CHUNK_PARTS) as i32
}

/// Groups copied events (in commit order) into chunks: per partition of their key,
/// in order, at most [`CHUNK_MAX`] each. Chunks are listed by their first event, so
/// each partition's chunks are written (and numbered) in order.
fn chunks_of<'a>(copies: impl IntoIterator<Item = (EventId, &'a Option<String>)>) -> Vec<Chunk> {
    let mut open: HashMap<Option<i32>, usize> = HashMap::new();
    let mut out: Vec<Chunk> = Vec::new();
    for (event_id, key) in copies {
        let part = key.as_deref().map(chunk_part);
        let at = match open.get(&part) {
            Some(&i) if out[i].events.len() < CHUNK_MAX => i,
            _ => {
                out.push(Chunk { part, events: Vec::new(), keys: Vec::new() });
                open.insert(part, out.len() - 1);
                out.len() - 1
            }
        };
        out[at].events.push(event_id.0);
        out[at].keys.push(key.clone());
    }
    out
}

/// A claimed chunk: its events in commit order.
#[derive(Debug)]
pub(crate) struct ClaimedChunk {
    pub(crate) id: i64,
    pub(crate) items: Vec<ChunkItem>,
}

/// What a chunk claim found.
#[derive(Debug)]
pub(crate) struct ChunkClaim {
    pub(crate) chunks: Vec<ClaimedChunk>,
    /// It split chunks whose worker died into delivery rows.
    pub(crate) split: bool,
    /// Delivery rows of the inbox are claimable now.
    pub(crate) rows_due: bool,
}

/// One event of a claimed chunk.
#[derive(Debug)]
pub(crate) struct ChunkItem {
    pub(crate) event_id: EventId,
    /// The event, or why it cannot be read; `None` when the claim did not read it
    /// (this worker's pump copied it and keeps it).
    pub(crate) event: Option<Result<Event>>,
    pub(crate) key: Option<String>,
    /// Whether a live delivery row of its key (an earlier event that failed) holds
    /// it back: it is parked behind it, not run.
    pub(crate) held: bool,
}

/// A row a settled chunk leaves in `herald_deliveries`: a failure, an event parked
/// behind one, or (at a stop) an event not run, free for any worker, or one still
/// running here (`leased`: claimed by this worker, to be completed as a row).
#[derive(Debug, Clone)]
pub(crate) struct ChunkRow {
    pub(crate) chunk: i64,
    pub(crate) row: Failure,
    pub(crate) leased: bool,
}

/// A delivery that will not be attempted again unless retried by hand
/// ([`Store::retry_dead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The delivery's id, for [`Store::retry_dead`].
    pub id: i64,
    /// The inbox it was for.
    pub inbox: String,
    /// The event it carried.
    pub event_id: EventId,
    /// Failed attempts.
    pub attempts: u32,
    /// Leases that expired while it ran (its worker crashed or hung).
    pub expiries: u32,
    /// The last error.
    pub last_error: String,
    /// When it died.
    pub failed_at: DateTime<Utc>,
    /// Its key, for an inbox that keeps order (a dead letter holds nothing back).
    pub key: Option<String>,
}

/// A transaction that recorded events and has not committed yet (PostgreSQL): its
/// events reach inboxes when it commits. Nothing else holds a committed event back,
/// so when an inbox seems to wait, these are what it waits for. From
/// [`Store::open_writers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenWriter {
    /// The server process running it; `None` for a prepared transaction.
    pub pid: Option<i32>,
    /// Its transaction id.
    pub xid: u64,
    /// When it began (prepared transactions: when they were prepared).
    pub started: DateTime<Utc>,
    /// When its current (or last) statement began; `None` for a prepared transaction.
    pub query_start: Option<DateTime<Utc>>,
    /// Its state as `pg_stat_activity` says (`active`, `idle in transaction`, …), or
    /// `prepared`.
    pub state: String,
    /// A prepared transaction's name (`COMMIT PREPARED '…'` / `ROLLBACK PREPARED '…'`
    /// ends it).
    pub gid: Option<String>,
}

/// A key of an inbox held back by a failing event: its later events wait until the
/// head succeeds, is dead-lettered, or is skipped ([`Store::skip_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockedKey {
    /// The inbox.
    pub inbox: String,
    /// The key (e.g. `issue:42` for the subject `issue` 42).
    pub key: String,
    /// The head delivery's id.
    pub delivery: i64,
    /// The event at the head, the one failing.
    pub head: EventId,
    /// Its failed attempts.
    pub attempts: u32,
    /// Its last error.
    pub last_error: String,
    /// When it is tried again.
    pub next_at: DateTime<Utc>,
    /// Events of the key waiting behind it.
    pub waiting: u64,
}

/// How one inbox is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStatus {
    /// The inbox name.
    pub name: String,
    /// Whether an inbox of this name is registered in this program. Deliveries of an
    /// unregistered name stay where they are and are reported here.
    pub registered: bool,
    /// Matching events committed and not yet passed by the inbox's checkpoint (the
    /// lag); `None` when unregistered.
    pub pending: Option<i64>,
    /// Deliveries waiting: failed ones waiting for a retry and the later events of
    /// their keys parked behind them (`herald_deliveries`), and a spread inbox's
    /// copied events not yet delivered (`herald_chunks`). The inbox is done when this
    /// and `pending` are 0.
    pub retrying: i64,
    /// Dead deliveries.
    pub dead: i64,
}

/// What [`Dispatcher::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Deliveries whose handler succeeded.
    pub delivered: u64,
    /// Deliveries whose handler failed (retried later, or dead).
    pub failed: u64,
}

/// The most handlers of one inbox a dispatcher runs at once.
pub const MAX_CONCURRENCY: usize = 10_000;
/// The largest batch a dispatcher reads.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// The shortest lease.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
/// The longest lease (leases are renewed while handlers run, so a long handler
/// needs no long lease).
pub const MAX_LEASE: Duration = Duration::from_secs(3600);
/// The shortest poll interval.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The longest poll interval.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest causation chain a dispatcher may allow.
pub const MAX_CAUSATION_DEPTH: u32 = 10_000;

/// Configures a [`Dispatcher`]. See [`Dispatcher::builder`].
#[derive(Debug)]
#[must_use]
pub struct DispatcherBuilder {
    store: Store,
    registry: Option<Registry>,
    resources: Resources,
    concurrency: usize,
    lease: Duration,
    poll_interval: Duration,
    batch_size: usize,
    max_lease_expiries: u32,
    max_causation_depth: u32,
    dead_retention: Option<Duration>,
    worker_id: Option<String>,
    shutdown_timeout: Duration,
}

impl DispatcherBuilder {
    /// A resource inboxes reach with [`Context::resource`].
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// Handlers of one inbox running at once (default 8, at most [`MAX_CONCURRENCY`]).
    /// Inboxes run side by side, each in a task of its own; a batch's handlers run
    /// concurrently inside it.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How long a claim holds before another worker may take it over (default 4 s;
    /// [`MIN_LEASE`] to [`MAX_LEASE`]). Leases are renewed every third of it while
    /// handlers run, so a long handler needs no long lease; a killed worker's inbox is
    /// taken over within the lease plus the poll interval (5 s by default). Lease times
    /// are the database's clock on PostgreSQL, so workers' clocks may disagree. Every
    /// acquisition bumps the lease's epoch, and renewals and checkpoint writes must name
    /// theirs: a worker that stalled past its lease can neither take it back nor move
    /// the checkpoint.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to look for work without a wake-up (default 1 s; [`MIN_POLL_INTERVAL`]
    /// to [`MAX_POLL_INTERVAL`]). Wake-ups after commits make delivery prompt; polling
    /// is the fallback.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Events per inbox batch (default 100, at most [`MAX_BATCH_SIZE`]). Retries are
    /// claimed per inbox up to its [`concurrency`](Self::concurrency).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Lease expiries (crashed or hung workers) a delivery survives before it is
    /// dead-lettered (default 3).
    pub fn max_lease_expiries(mut self, n: u32) -> Self {
        self.max_lease_expiries = n;
        self
    }

    /// The longest chain of events, each caused by the one before, that inboxes may
    /// build through [`Context::begin`] / [`Context::record`] (default 32). Recording
    /// one more fails with [`Error::CausationTooDeep`] and that delivery is
    /// dead-lettered at once: an inbox that keeps triggering itself stops after
    /// `n` events instead of running forever. 1 to [`MAX_CAUSATION_DEPTH`]. The store
    /// handed to inboxes ([`Context::store`]) carries the same limit, so a handler's
    /// own transaction with an explicit `caused_by` is held to it too.
    pub fn max_causation_depth(mut self, n: u32) -> Self {
        self.max_causation_depth = n;
        self
    }

    /// Deletes dead letters older than this while running (default: kept). A
    /// retention reaching back before the year 1 deletes nothing.
    pub fn dead_retention(mut self, keep: Duration) -> Self {
        self.dead_retention = Some(keep);
        self
    }

    /// How long [`Dispatcher::run`] waits, after its shutdown signal, for deliveries in
    /// flight (default 30 s, at most [`MAX_LEASE`]). Those still running then are
    /// cancelled and their leases released, so another worker makes them again.
    pub fn shutdown_timeout(mut self, deadline: Duration) -> Self {
        self.shutdown_timeout = deadline;
        self
    }

    /// Runs exactly these inboxes instead of every `#[inbox]` linked in.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The name this worker's leases carry, to tell workers apart in logs and tables
    /// (default: the process id). A random suffix is always added, so two replicas
    /// given one id are still two workers.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Collects the inboxes (two with one name are [`Error::DuplicateInbox`]) and
    /// checks the configuration.
    pub fn build(self) -> Result<Dispatcher> {
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::collect()?,
        };
        let checks = [
            (
                !(1..=MAX_CONCURRENCY).contains(&self.concurrency),
                format!("concurrency must be 1 to {MAX_CONCURRENCY}, got {}", self.concurrency),
            ),
            (
                !(1..=MAX_BATCH_SIZE).contains(&self.batch_size),
                format!("batch_size must be 1 to {MAX_BATCH_SIZE}, got {}", self.batch_size),
            ),
            (
                !(MIN_LEASE..=MAX_LEASE).contains(&self.lease),
                format!("lease must be {MIN_LEASE:?} to {MAX_LEASE:?}, got {:?}", self.lease),
            ),
            (
                !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&self.poll_interval),
                format!(
                    "poll_interval must be {MIN_POLL_INTERVAL:?} to {MAX_POLL_INTERVAL:?}, got {:?}",
                    self.poll_interval
                ),
            ),
            (self.max_lease_expiries == 0, "max_lease_expiries must be at least 1".to_owned()),
            (
                self.shutdown_timeout > MAX_LEASE,
                format!("shutdown_timeout must be at most {MAX_LEASE:?}, got {:?}", self.shutdown_timeout),
            ),
            (
                !(1..=MAX_CAUSATION_DEPTH).contains(&self.max_causation_depth),
                format!("max_causation_depth must be 1 to {MAX_CAUSATION_DEPTH}, got {}", self.max_causation_depth),
            ),
        ];
        if let Some((_, problem)) = checks.into_iter().find(|(bad, _)| *bad) {
            return Err(Error::InvalidConfig(problem));
        }
        // A per-run suffix even on a given id: two replicas started with one id must
        // not both believe they hold the same lease.
        let me = match self.worker_id {
            Some(id) => format!("{id}-{:08x}", random() as u32),
            None => format!("{}-{:08x}", std::process::id(), random() as u32),
        };
        let store = self.store.max_causation_depth(self.max_causation_depth);
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                store,
                registry,
                resources: Arc::new(self.resources),
                concurrency: self.concurrency,
                lease: self.lease,
                poll_interval: self.poll_interval,
                batch_size: self.batch_size,
                max_lease_expiries: self.max_lease_expiries,
                max_causation_depth: self.max_causation_depth,
                dead_retention: self.dead_retention,
                shutdown_timeout: self.shutdown_timeout,
                me,
                careful: Mutex::default(),
                known: Mutex::default(),
                copied: Mutex::default(),
                started: OnceCell::new(),
            }),
        })
    }
}

/// Delivers committed events to inboxes. Cheap to clone; clones share one worker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
/// use event_core::dispatch::Dispatcher;
/// # let store = event_core::Store::connect("sqlite::memory:").await?;
/// # store.migrate().await?;
/// let dispatcher = Dispatcher::builder(store.clone()).concurrency(8).build()?;
/// dispatcher.drain().await?; // deliver everything pending, then return
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    registry: Registry,
    resources: Arc<Resources>,
    /// Handlers of one inbox running at once.
    concurrency: usize,
    lease: Duration,
    poll_interval: Duration,
    batch_size: usize,
    max_lease_expiries: u32,
    max_causation_depth: u32,
    dead_retention: Option<Duration>,
    shutdown_timeout: Duration,
    me: String,
    /// Inboxes taken over from a crashed worker: events left to deliver one at a time.
    careful: Mutex<HashMap<&'static str, usize>>,
    /// The last checkpoint this worker wrote or read per inbox, and its lease if held.
    known: Mutex<HashMap<&'static str, Known>>,
    /// Events this worker's pumps copied into chunks, per inbox, until a claim of
    /// this worker takes them: its claims need not read them again.
    copied: Mutex<HashMap<&'static str, HashMap<i64, Event>>>,
    started: OnceCell<()>,
}

/// The most copied events a worker keeps per inbox for its own claims (about 10 MB);
/// when full (copies claimed by other processes stay until then), it starts again
/// empty.
const COPIED_KEPT: usize = 20_000;

/// What a worker knows of an inbox row it wrote or read last.
#[derive(Debug, Clone)]
struct Known {
    /// The checkpoint as stored.
    checkpoint: Mark,
    /// How far this worker has found nothing more for the inbox: at or past
    /// `checkpoint`. Kept in memory, written when it is worth a write ([`persist_due`]).
    seen: Mark,
    /// When `checkpoint` was written.
    written: tokio::time::Instant,
    /// The epoch of this worker's lease on the row, if it holds one.
    epoch: i64,
    /// Until when this worker holds the lease, if it does.
    lease_until: Option<DateTime<Utc>>,
    /// Whether keys of the inbox may be held back by failed deliveries (the next batch
    /// then asks which of its keys are). Only the lease holder parks deliveries, so
    /// `false` holds until this worker parks one or loses the lease.
    blocked: bool,
}

impl Known {
    /// Just written (or read) from the database.
    fn stored(checkpoint: Mark, lease_until: Option<DateTime<Utc>>, epoch: i64, blocked: bool) -> Self {
        Known {
            seen: checkpoint.clone(),
            checkpoint,
            written: tokio::time::Instant::now(),
            lease_until,
            epoch,
            blocked,
        }
    }
}

/// Under [`Dispatcher::run`], what an inbox's stream follows while handlers run.
struct Live<'a> {
    commits: &'a mut tokio::sync::watch::Receiver<u64>,
    stop: &'a mut tokio::sync::watch::Receiver<bool>,
}

/// The next commit wake-up (its count), or never without `live`.
async fn wait_commit(commits: Option<&mut tokio::sync::watch::Receiver<u64>>) -> Option<u64> {
    match commits {
        Some(commits) => match commits.changed().await {
            Ok(()) => Some(*commits.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The stop signal, or never without `live`.
async fn wait_stop(stop: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        }
        None => std::future::pending().await,
    }
}

/// A delivery of a stream that finished: its slot, key and event, and what the
/// handler returned (or its panic).
type Landed = ((u64, Option<String>, EventId), std::result::Result<std::result::Result<bool, InboxError>, String>);

/// The most events an inbox's stream holds between its written checkpoint and its
/// read cursor (done, running or queued): what a crash makes again, at most.
const WINDOW: usize = 10_000;

/// How long a stream that caught up under [`Dispatcher::run`] keeps its lease for the
/// next commits (at most a quarter of the lease).
const LINGER: Duration = Duration::from_secs(1);

/// What an inbox's stream read and has not yet written past: one slot per event (plus
/// one per batch end), oldest first.
#[derive(Debug)]
struct Window {
    slots: std::collections::VecDeque<Slot>,
    /// The number of slots ever taken off the front: slot `n` is `slots[n - base]`.
    base: u64,
    /// Where the next batch is read from.
    cursor: Mark,
    /// Events ready to start, in commit order: their key has nothing running.
    ready: std::collections::VecDeque<(u64, Option<String>, Event)>,
    /// Events waiting for the running event of their key, per key, in commit order.
    queued: HashMap<String, std::collections::VecDeque<(u64, Event)>>,
    queued_len: usize,
    /// Keys with an event ready or running.
    busy: HashSet<String>,
    /// Keys held back by an event that failed in this stream: the event, and how many
    /// of the key's parked events are not yet written (until then the database cannot
    /// tell that the key is held back).
    blocked: HashMap<String, (String, usize)>,
}

/// One event of a [`Window`] (or a batch end).
#[derive(Debug)]
struct Slot {
    /// The inbox's position once this slot and every one before it are passed.
    after: Mark,
    done: bool,
    /// Parked with the checkpoint that passes it.
    failure: Option<Failure>,
    /// A spread inbox's event, copied into a chunk with the checkpoint that passes it.
    copy: Option<Copied>,
}

impl Window {
    fn new(cursor: Mark) -> Self {
        Window {
            slots: Default::default(),
            base: 0,
            cursor,
            ready: Default::default(),
            queued: HashMap::new(),
            queued_len: 0,
            busy: HashSet::new(),
            blocked: HashMap::new(),
        }
    }

    /// Events read and not started.
    fn unstarted(&self) -> usize {
        self.ready.len() + self.queued_len
    }

    fn push_done(&mut self, after: Mark, failure: Option<Failure>) {
        self.slots.push_back(Slot { after, done: true, failure, copy: None });
    }

    /// A spread inbox's event: passed at once, copied with the checkpoint.
    fn push_copy(&mut self, after: Mark, copy: Copied) {
        self.slots.push_back(Slot { after, done: true, failure: None, copy: Some(copy) });
    }

    /// Takes in a readable event: parked behind the failure holding its key back
    /// (`held`: keys held back in the database), queued behind its key's running
    /// event, or ready.
    fn admit(&mut self, def: &InboxDef, after: Mark, event: Event, held: &HashSet<String>) {
        let n = self.base + self.slots.len() as u64;
        let key = def.key.of(&event);
        if let Some(k) = &key {
            if held.contains(k) && !self.blocked.contains_key(k) {
                self.blocked.insert(k.clone(), ("an earlier event".to_owned(), 0));
            }
            if let Some((head, unwritten)) = self.blocked.get_mut(k) {
                *unwritten += 1;
                let parked = waiting(event.id, k, head);
                self.push_done(after, Some(parked));
                return;
            }
            self.slots.push_back(Slot { after, done: false, failure: None, copy: None });
            if self.busy.contains(k) {
                self.queued.entry(k.clone()).or_default().push_back((n, event));
                self.queued_len += 1;
                return;
            }
            self.busy.insert(k.clone());
        } else {
            self.slots.push_back(Slot { after, done: false, failure: None, copy: None });
        }
        self.ready.push_back((n, key, event));
    }

    /// Slot `n` finished (`failure`: parked). The next event of its key becomes ready;
    /// after a failure that will be retried, the rest of the key is parked behind it.
    fn finish(&mut self, n: u64, key: Option<String>, failure: Option<Failure>) {
        let holds = failure.as_ref().filter(|f| !f.dead).map(|f| f.event_id);
        if let Some(slot) = n.checked_sub(self.base).and_then(|i| self.slots.get_mut(i as usize)) {
            slot.done = true;
            slot.failure = failure;
        }
        let Some(k) = key else { return };
        match holds {
            Some(head) => {
                self.busy.remove(&k);
                let queued = self.queued.remove(&k).unwrap_or_default();
                self.blocked.insert(k.clone(), (format!("event {head}"), 1 + queued.len()));
                for (n, event) in queued {
                    self.queued_len -= 1;
                    if let Some(slot) = n.checked_sub(self.base).and_then(|i| self.slots.get_mut(i as usize)) {
                        slot.done = true;
                        slot.failure = Some(waiting(event.id, &k, &format!("event {head}")));
                    }
                }
            }
            None => match self.queued.get_mut(&k).and_then(|q| q.pop_front()) {
                Some((n, event)) => {
                    self.queued_len -= 1;
                    self.ready.push_back((n, Some(k), event));
                }
                None => {
                    self.queued.remove(&k);
                    self.busy.remove(&k);
                }
            },
        }
    }
}

/// The most deliveries a spread inbox keeps waiting to run (at least 4 batches): its
/// pump copies no more until claimers took some.
const SPREAD_QUEUE: usize = 1_000;

/// How often a spread inbox's pump looks again at a full queue (a quarter of which
/// drains in 50 ms at 5,000 deliveries/s).
const SPREAD_RECOUNT: Duration = Duration::from_millis(50);

/// An event of a chunk not run (its worker stopping), as a delivery row for any
/// worker to claim.
fn unstarted(event_id: EventId, key: Option<String>) -> Failure {
    Failure { key, event_id, attempts: 0, next_at: now(), error: String::new(), dead: false }
}

/// A parked event of a key held back by an earlier one: claimed once it is its key's
/// oldest, without an attempt counted until it runs.
fn waiting(event_id: EventId, key: &str, head: &str) -> Failure {
    Failure {
        event_id,
        attempts: 0,
        next_at: now(),
        error: format!("waiting behind {head} of its key {key:?}"),
        dead: false,
        key: Some(key.to_owned()),
    }
}

/// The passed front of a [`Window`] not yet written.
#[derive(Debug, Default)]
struct Passed {
    mark: Option<Mark>,
    failures: Vec<Failure>,
    /// A spread inbox's events to copy into chunks.
    copies: Vec<Copied>,
    /// Slots passed (events and batch ends).
    events: usize,
}

impl Passed {
    /// Takes the done slots off the front of `w`.
    fn take(&mut self, w: &mut Window) {
        while w.slots.front().is_some_and(|s| s.done) {
            let Some(slot) = w.slots.pop_front() else { break };
            w.base += 1;
            self.events += 1;
            self.mark = Some(slot.after);
            self.failures.extend(slot.failure);
            self.copies.extend(slot.copy);
        }
    }

    /// Once written: keys whose parked events are all in the database now are the
    /// database's to tell (the next batch asks it), not this stream's.
    fn written(self, w: &mut Window) {
        for f in self.failures.iter().filter(|f| !f.dead) {
            let Some(key) = &f.key else { continue };
            if let Some((_, unwritten)) = w.blocked.get_mut(key) {
                *unwritten = unwritten.saturating_sub(1);
                if *unwritten == 0 {
                    w.blocked.remove(key);
                }
            }
        }
    }
}

/// The distinct keys of a batch's readable events.
fn batch_keys(def: &InboxDef, batch: &Batch) -> Vec<String> {
    let mut keys: Vec<String> = batch.iter().filter_map(|(_, e)| e.as_ref().ok().and_then(|e| def.key.of(e))).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Whether an inbox that found nothing new should write its position now. Not per
/// wake-up: an inbox the new events do not concern would write once per event. But
/// not never either: a stale stored position makes every later read start further
/// back (and a worker taking over re-reads from there). So: once 1,000 transactions
/// (PostgreSQL) or events (SQLite) behind, or after 5 minutes.
fn persist_due(stored: &Mark, written_ago: Duration, seen: &Mark) -> bool {
    const BEHIND: u64 = 1_000;
    const EVERY: Duration = Duration::from_secs(300);
    let behind = match (stored.from.as_deref(), seen.from.as_deref()) {
        (Some(stored), Some(seen)) => snapshot_xmax(seen).saturating_sub(snapshot_xmax(stored)),
        _ => seen.at.id.saturating_sub(stored.at.id).unsigned_abs(),
    };
    behind >= BEHIND || written_ago >= EVERY
}

/// The `xmax` of a snapshot's text form (`xmin:xmax:xip,…`); 0 if unreadable.
pub(crate) fn snapshot_xmax(snapshot: &str) -> u64 {
    snapshot.split(':').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// A snapshot's text form (`xmin:xmax:xip,…`) read as numbers; `None` if unreadable.
fn parse_snapshot(snapshot: &str) -> Option<(u64, u64, Vec<u64>)> {
    let mut parts = snapshot.split(':');
    let xmin = parts.next()?.parse().ok()?;
    let xmax = parts.next()?.parse().ok()?;
    let xip = parts.next()?.split(',').filter(|x| !x.is_empty()).map(str::parse).collect::<Result<_, _>>().ok()?;
    Some((xmin, xmax, xip))
}

/// Whether `snapshot` is a snapshot's text form.
pub(crate) fn is_snapshot(snapshot: &str) -> bool {
    parse_snapshot(snapshot).is_some()
}

/// Whether every transaction visible in snapshot `older` is visible in `newer` too:
/// `newer` was taken at the same time or later (or, unreadable, they are equal).
/// Views reach an inbox from several places (its own queries, a view shared by the
/// inboxes of one wake-up, another process's `NOTIFY`); one older than where the
/// inbox stands must never move it back.
pub(crate) fn snapshot_contains(newer: &str, older: &str) -> bool {
    if newer == older {
        return true;
    }
    let (Some((_, new_xmax, new_xip)), Some((old_xmin, old_xmax, old_xip))) =
        (parse_snapshot(newer), parse_snapshot(older))
    else {
        return false;
    };
    // Visible in `older`: below its xmin, or below its xmax and not in progress there.
    let visible_in_older = |x: u64| x < old_xmin || (x < old_xmax && !old_xip.contains(&x));
    new_xmax >= old_xmax && !new_xip.iter().any(|&x| visible_in_older(x))
}

/// The transactions in progress in a snapshot's text form (`xmin:xmax:xip,…`).
pub(crate) fn snapshot_xip(snapshot: &str) -> Vec<String> {
    snapshot
        .split(':')
        .nth(2)
        .map(|xip| xip.split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// What one pass over an inbox did.
#[derive(Debug, Default, Clone, Copy)]
struct Pass {
    delivered: u64,
    failed: u64,
    /// Events a spread inbox's pump copied into chunks.
    queued: u64,
    /// More is waiting right now (the batch was full, or the lease is held elsewhere).
    more: bool,
}

impl Dispatcher {
    /// Starts configuring a dispatcher over `store`.
    pub fn builder(store: Store) -> DispatcherBuilder {
        DispatcherBuilder {
            store,
            registry: None,
            resources: Resources::default(),
            concurrency: 8,
            lease: Duration::from_secs(4),
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            max_lease_expiries: 3,
            max_causation_depth: crate::inbox::DEFAULT_MAX_CAUSATION_DEPTH,
            dead_retention: None,
            worker_id: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// The inboxes this dispatcher delivers to.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// This worker's lease name.
    pub fn worker_id(&self) -> &str {
        &self.inner.me
    }

    /// Delivers everything pending now (new events and due retries), then returns.
    /// Retries scheduled for later are left for later. For tests and scripts.
    pub async fn drain(&self) -> Result<Drained> {
        self.start().await?;
        let mut total = Drained::default();
        loop {
            let view = self.inner.store.view().await?;
            let mut progressed = false;
            for def in self.inner.registry.iter() {
                // A spread inbox's pump copies while its claims run, side by side.
                let (pumping_tx, pumping) = tokio::sync::watch::channel(true);
                let pump = async {
                    let mut copied = Pass::default();
                    loop {
                        let pass = match caught(self.pump_inbox(def, &view, None)).await {
                            Ok(pass) => pass,
                            Err(e) => {
                                let _ = pumping_tx.send(false);
                                return Err(e);
                            }
                        };
                        copied.delivered += pass.delivered;
                        copied.failed += pass.failed;
                        copied.queued += pass.queued;
                        if !pass.more {
                            break;
                        }
                    }
                    let _ = pumping_tx.send(false);
                    Ok(copied)
                };
                let (pumped, claimed) = if def.spread {
                    let (p, c) = tokio::join!(pump, caught(self.claim_stream(def, None, Some(pumping))));
                    (p?, c?)
                } else {
                    (pump.await?, Pass::default())
                };
                for pass in [pumped, claimed] {
                    total.delivered += pass.delivered;
                    total.failed += pass.failed;
                    progressed |= pass.delivered + pass.failed + pass.queued > 0;
                }
            }
            let mut more = false;
            for def in self.inner.registry.iter() {
                let pass = caught(self.claim_stream(def, None, None)).await?;
                total.delivered += pass.delivered;
                total.failed += pass.failed;
                progressed |= pass.delivered + pass.failed > 0;
                more |= pass.more;
            }
            if !progressed && !more {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown` completes: one task per inbox and one for retries, woken
    /// by commits (and `NOTIFY` on PostgreSQL) and by polling. On shutdown it stops
    /// taking work, lets in-flight deliveries finish (for up to
    /// [`DispatcherBuilder::shutdown_timeout`]; those still running are cancelled, to
    /// be made again), and releases its leases.
    ///
    /// A database that cannot be reached at start is waited for (with backoff from
    /// 100 ms to 5 s, each failure logged with its reason) until it answers or
    /// `shutdown` completes; pair it with [`Store::connect_lazy`] so a worker can
    /// start before its database. Other errors at start are returned.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay = Duration::from_millis(100);
        loop {
            // Each attempt runs to its end, even with shutdown asked meanwhile: a run
            // stopped at once still registers its inboxes (an unreachable server
            // fails the attempt at once).
            let error = match self.start().await {
                Ok(()) => break,
                Err(e @ Error::Database(_)) => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(
                error = %crate::error::chain(&error),
                retry_in = ?delay,
                "herald: the database cannot be reached; the dispatcher waits for it"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return Ok(()),
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for def in self.inner.registry.iter() {
            let (me, stop) = (self.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move { me.inbox_loop(def, stop).await }));
        }
        for def in self.inner.registry.iter() {
            let (me, stop) = (self.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move { me.claim_loop(def, stop).await }));
        }
        if self.inner.dead_retention.is_some() {
            let (me, stop) = (self.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move { me.prune_loop(stop).await }));
        }
        let listener = self.inner.store.postgres_pool().cloned().map(|pool| {
            let store = self.inner.store.clone();
            tokio::spawn(listen(store, pool))
        });
        shutdown.await;
        tracing::info!(worker = %self.inner.me, "herald dispatcher stopping: finishing in-flight deliveries");
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + self.inner.shutdown_timeout;
        let (mut died, mut cut) = (None, 0);
        for mut t in tasks {
            match tokio::time::timeout_at(deadline, &mut t).await {
                Ok(Ok(())) => {}
                // The loops catch panics of their passes; a task that died anyway is a
                // bug that must not end in `Ok`.
                Ok(Err(e)) => {
                    tracing::error!(error = %crate::error::chain(&e), "herald: a dispatcher task died");
                    died = Some(Error::Panicked(e.to_string()));
                }
                Err(_) => {
                    t.abort();
                    cut += 1;
                }
            }
        }
        if cut > 0 {
            tracing::warn!(
                tasks = cut,
                deadline = ?self.inner.shutdown_timeout,
                "herald: shutdown deadline passed; deliveries still running were cancelled and will be made again"
            );
        }
        if let Some(l) = listener {
            l.abort();
        }
        if let Ok(mut known) = self.inner.known.lock() {
            known.clear();
        }
        self.inner.store.release_leases(&self.inner.me).await?;
        died.map_or(Ok(()), Err)
    }

    /// Status of every inbox known to the database or registered here, by name.
    pub async fn status(&self) -> Result<Vec<InboxStatus>> {
        self.start().await?;
        let view = self.inner.store.view().await?;
        let mut out = Vec::new();
        for (name, checkpoint, retrying, dead) in self.inner.store.inbox_rows().await? {
            let def = self.inner.registry.get(&name);
            let pending = match def {
                Some(def) => Some(self.inner.store.pending(def, &checkpoint, &view).await?),
                None => None,
            };
            out.push(InboxStatus { name, registered: def.is_some(), pending, retrying, dead });
        }
        Ok(out)
    }

    /// The database's plan (`EXPLAIN`; SQLite: `EXPLAIN QUERY PLAN`) for the next batch
    /// read of the registered inbox `inbox`, from its checkpoint to what is committed
    /// now. A healthy plan walks the position index in order (PostgreSQL
    /// `herald_events_position`, SQLite the primary key) and stops at the batch size,
    /// so reading a batch costs the same whatever the size of the table.
    ///
    /// Fails with [`Error::UnknownInbox`] if no registered inbox has that name.
    pub async fn explain(&self, inbox: &str) -> Result<String> {
        let def = self.inner.registry.get(inbox).ok_or_else(|| Error::UnknownInbox(inbox.to_owned()))?;
        self.start().await?;
        let view = self.inner.store.view().await?;
        let checkpoint = self
            .inner
            .store
            .inbox_rows()
            .await?
            .into_iter()
            .find_map(|(name, checkpoint, _, _)| (name == inbox).then_some(checkpoint))
            .unwrap_or_else(|| Mark::start(&view, StartFrom::Beginning));
        self.inner.store.explain_batch(def, &checkpoint, &view, self.inner.batch_size).await
    }

    /// Registers the inboxes in the database (once; [`run`](Self::run),
    /// [`drain`](Self::drain) and [`status`](Self::status) do it too) and logs what was
    /// found. An inbox that starts from now starts from this call: await it before
    /// recording events a new inbox must see.
    pub async fn register(&self) -> Result<()> {
        self.start().await
    }

    async fn start(&self) -> Result<()> {
        self.inner
            .started
            .get_or_try_init(|| async {
                let store = &self.inner.store;
                // A server that is down fails this at once with its reason (a pool
                // waits for its acquire timeout, then says only "pool timed out").
                store.reachable().await?;
                store.check_transaction_ids().await?;
                let view = store.view().await?;
                self.adopt_moved_and_renamed().await?;
                for def in self.inner.registry.iter() {
                    tracing::info!(
                        inbox = def.name,
                        subject = def.subject.unwrap_or("*"),
                        actions = ?def.actions,
                        location = %def.location(),
                        "herald inbox registered"
                    );
                    if let Some(to) = store.sync_inbox(def.name, &Mark::start(&view, def.start_from), now()).await? {
                        tracing::warn!(
                            inbox = def.name,
                            renamed_to = %to,
                            "herald: this inbox was renamed (or its module moved) by a newer version of this \
                             program, which delivers it as {to}; this process does not deliver it (an older \
                             version still running during a deploy?)"
                        );
                    }
                }
                for (name, checkpoint, retrying, dead) in store.inbox_rows().await? {
                    if self.inner.registry.get(&name).is_none() && (retrying + dead > 0 || !checkpoint.caught_up(&view)) {
                        tracing::warn!(
                            inbox = %name,
                            retrying,
                            dead,
                            "herald: deliveries are pending for an inbox that is not registered in this program; \
                             they are kept, not dropped (renamed? give it #[inbox(name = \"{name}\")])"
                        );
                    }
                }
                tracing::info!(worker = %self.inner.me, inboxes = self.inner.registry.len(), "herald dispatcher started");
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Inbox identity across moves and renames. A registered inbox with no row of its
    /// own takes over the row (checkpoint, retries, dead letters) of
    /// - its `renamed_from`, if that is not registered itself; else
    /// - the one unregistered `…::same_fn_name` (a default name whose module moved:
    ///   `app::mail::notify` → `app::notify::notify`), if there is exactly one.
    ///
    /// Without this a moved handler became a new inbox starting "now": the events in
    /// between were never delivered to it, and its old backlog was stranded.
    async fn adopt_moved_and_renamed(&self) -> Result<()> {
        let store = &self.inner.store;
        let registry = &self.inner.registry;
        let rows: Vec<String> = store.inbox_rows().await?.into_iter().map(|(name, ..)| name).collect();
        let retired = store.retired_inboxes().await?;
        let orphan = |name: &str| rows.iter().any(|r| r == name) && registry.get(name).is_none();
        for def in registry.iter() {
            if rows.iter().any(|r| r == def.name) {
                continue;
            }
            let former = match def.renamed_from {
                Some(old) => orphan(old).then(|| old.to_owned()),
                // A name retired by a move is an older version's (during a rolling
                // deploy): it must not take the new name's row back.
                None if retired.iter().any(|r| r == def.name) => None,
                None => {
                    let Some((_, fn_name)) = def.name.rsplit_once("::") else { continue };
                    let mut moved = rows.iter().filter(|r| {
                        r.rsplit_once("::").is_some_and(|(_, f)| f == fn_name) && registry.get(r.as_str()).is_none()
                    });
                    match (moved.next(), moved.next()) {
                        (Some(only), None) => Some(only.clone()),
                        _ => None,
                    }
                }
            };
            let Some(former) = former else { continue };
            if store.rename_inbox(&former, def.name, now()).await? {
                tracing::warn!(
                    inbox = def.name,
                    former = %former,
                    "herald: inbox takes over the checkpoint and deliveries of its former name (moved or renamed)"
                );
            }
        }
        Ok(())
    }

    async fn inbox_loop(&self, def: &'static InboxDef, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut commits = self.inner.store.subscribe_commits();
        let poll = self.inner.poll_interval;
        while !*stop.borrow() {
            let woke = *commits.borrow_and_update();
            let outcome = caught(async {
                let view = self.inner.store.shared_view(woke).await?;
                self.pump_inbox(def, &view, Some(Live { commits: &mut commits, stop: &mut stop })).await
            })
            .await;
            // The stream may have seen (and marked seen) the stop signal itself: then
            // `stop.changed()` below would wait for the next one, up to the poll.
            if *stop.borrow() {
                break;
            }
            let wait = match outcome {
                Ok(pass) if pass.more => continue,
                Ok(_) => poll,
                Err(e) => {
                    tracing::warn!(inbox = def.name, error = %crate::error::chain(&e), "herald: delivery pass failed; will retry");
                    poll
                }
            };
            tokio::select! {
                _ = stop.changed() => {}
                _ = commits.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The ready deliveries of one inbox (due retries, a spread inbox's copied events),
    /// claimed and run by a task of its own.
    async fn claim_loop(&self, def: &'static InboxDef, stop: tokio::sync::watch::Receiver<bool>) {
        let store = &self.inner.store;
        let mut live = ClaimLive { commits: store.subscribe_commits(), queued: store.subscribe_queued(), stop };
        while !*live.stop.borrow() {
            let l = ClaimLive { commits: live.commits.clone(), queued: live.queued.clone(), stop: live.stop.clone() };
            if let Err(e) = caught(self.claim_stream(def, Some(l), None)).await {
                tracing::warn!(inbox = def.name, error = %crate::error::chain(&e), "herald: claiming deliveries failed; will retry");
                tokio::select! {
                    _ = live.stop.changed() => {}
                    _ = tokio::time::sleep(self.inner.poll_interval) => {}
                }
            }
        }
    }

    /// Prunes dead letters past [`DispatcherBuilder::dead_retention`]: at start, then
    /// every minute.
    async fn prune_loop(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(keep) = self.inner.dead_retention else { return };
        while !*stop.borrow() {
            if let Some(before) = retention_cutoff(now(), keep)
                && let Err(e) = caught(self.inner.store.prune_dead(before)).await
            {
                tracing::warn!(error = %crate::error::chain(&e), "herald: pruning dead letters failed");
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }

    /// One batch of one inbox: lease it, deliver, move the checkpoint.
    async fn pump_inbox(&self, def: &'static InboxDef, view: &View, live: Option<Live<'_>>) -> Result<Pass> {
        let inner = &*self.inner;
        let store = &inner.store;
        let t = now();
        let known = inner.known.lock().ok().and_then(|k| k.get(def.name).cloned());
        // Unknown (a lease taken the long way): the first batch asks.
        let blocked = known.as_ref().is_none_or(|k| k.blocked);
        if known.as_ref().is_some_and(|k| k.seen.caught_up(view)) {
            return Ok(Pass::default()); // checkpoints only move forward: nothing to do
        }
        // Released by this worker, most likely untouched since: take it back and read
        // the batch in one statement (the wake-up path after a quiet spell). The read
        // starts where this worker last found nothing; the lease is taken only if
        // there is something, and the position is written only if it is due.
        let relet = match &known {
            Some(k @ Known { lease_until: None, .. }) => {
                let limit = self.batch_limit(def.name)?;
                let passed = k.seen.after(view, None, false);
                let write = persist_due(&k.checkpoint, k.written.elapsed(), &passed).then_some(&passed);
                let relet =
                    store.relet_and_read(def, &inner.me, &k.checkpoint, &k.seen, write, t, inner.lease, view, limit);
                match relet.await? {
                    Relet::Changed => None,
                    Relet::Advanced => {
                        self.remember(def.name, Some(Known::stored(passed, None, k.epoch, k.blocked)));
                        return Ok(Pass::default());
                    }
                    Relet::Empty => {
                        self.remember(def.name, Some(Known { seen: passed, ..k.clone() }));
                        return Ok(Pass::default());
                    }
                    Relet::Skipped(scan) => {
                        // Nothing wanted in a full scan: look further at once.
                        let seen = k.seen.after(view, scan.last, true);
                        self.remember(def.name, Some(Known { seen, ..k.clone() }));
                        return Ok(Pass { more: true, ..Pass::default() });
                    }
                    Relet::Leased(batch, epoch) => Some((k.seen.clone(), batch, epoch)),
                }
            }
            _ => None,
        };
        let mut prefetched = None;
        let mut fresh: Option<View> = None;
        let lease = match (known, relet) {
            (_, Some((checkpoint, batch, epoch))) => {
                prefetched = Some(batch);
                Lease { checkpoint, crash_at: None, crashes: 0, taken_over: false, epoch }
            }
            // Still ours for a good while: no need to ask the database again.
            (Some(Known { checkpoint, lease_until: Some(until), epoch, .. }), None)
                if until > t + chrono_of(inner.lease / 2) =>
            {
                Lease { checkpoint, crash_at: None, crashes: 0, taken_over: false, epoch }
            }
            // The row may have been moved by another worker after `view` was taken: a
            // pair read from its newer snapshot to this older one would move the
            // checkpoint back and read events again. A view taken after the row was
            // read is at least as new as the row.
            _ => match store.lease_inbox(def.name, &inner.me, inner.lease, t).await? {
                Taking::Leased(lease) => {
                    fresh = Some(store.view().await?);
                    lease
                }
                Taking::Held => return Ok(Pass::default()),
                Taking::Free(checkpoint) => {
                    let view = store.view().await?;
                    let limit = self.batch_limit(def.name)?;
                    let relet = store.relet_and_read(
                        def,
                        &inner.me,
                        &checkpoint,
                        &checkpoint,
                        None,
                        t,
                        inner.lease,
                        &view,
                        limit,
                    );
                    let seen = |last, full| Known {
                        seen: checkpoint.after(&view, last, full),
                        ..Known::stored(checkpoint.clone(), None, 0, true)
                    };
                    match relet.await? {
                        // Taken (or moved) by another worker meanwhile: ask again.
                        Relet::Changed => return Ok(Pass { more: true, ..Pass::default() }),
                        Relet::Empty | Relet::Advanced => {
                            self.remember(def.name, Some(seen(None, false)));
                            return Ok(Pass::default());
                        }
                        Relet::Skipped(scan) => {
                            self.remember(def.name, Some(seen(scan.last, true)));
                            return Ok(Pass { more: true, ..Pass::default() });
                        }
                        Relet::Leased(batch, epoch) => {
                            prefetched = Some(batch);
                            fresh = Some(view);
                            Lease { checkpoint, crash_at: None, crashes: 0, taken_over: false, epoch }
                        }
                    }
                }
            },
        };
        let view = fresh.as_ref().unwrap_or(view);
        if lease.checkpoint.caught_up(view) {
            let released =
                store.advance(def.name, &inner.me, lease.epoch, &lease.checkpoint, None, &[], &[], now()).await?;
            let known = Known::stored(lease.checkpoint, None, lease.epoch, blocked);
            self.remember(def.name, released.then_some(known));
            return Ok(Pass::default());
        }
        if lease.taken_over && def.spread {
            // A pump runs no handler: its crash says nothing about the events.
            tracing::info!(inbox = def.name, "herald: took over the expired lease of a spread inbox's pump");
        } else if lease.taken_over {
            tracing::warn!(
                inbox = def.name,
                crashes = lease.crashes_here(),
                "herald: took over an expired lease (a worker crashed or hung); re-delivering one at a time"
            );
            inner
                .careful
                .lock()
                .map_err(|_| Error::InvalidConfig("poisoned lock".into()))?
                .insert(def.name, inner.batch_size);
        }
        self.stream(def, lease, prefetched, view, live, blocked).await
    }

    /// Delivers from `lease`'s checkpoint until nothing is left up to the view: reads
    /// batches while handlers are free, runs different keys side by side and the events
    /// of one key one at a time in commit order, and writes the checkpoint as the low
    /// watermark (the position before the oldest unfinished event), with the failures
    /// it passes, about once per batch. A slow event holds back neither the other keys
    /// nor the reading; only the written checkpoint waits for it.
    ///
    /// `live` (under [`run`](Self::run)): wake-ups to follow while handlers still run,
    /// and the stop signal; `None` under [`drain`](Self::drain). `blocked`: whether
    /// keys of this inbox may be held back by rows in `herald_deliveries` (then each
    /// batch asks which of its keys are).
    async fn stream(
        &self,
        def: &'static InboxDef,
        lease: Lease,
        mut prefetched: Option<Scan>,
        view: &View,
        live: Option<Live<'_>>,
        mut blocked: bool,
    ) -> Result<Pass> {
        let (mut commits, mut stop) = match live {
            Some(Live { commits, stop }) => (Some(commits), Some(stop)),
            None => (None, None),
        };
        /// A passed stretch is written at least this often while work goes on.
        const FLUSH_AFTER: Duration = Duration::from_millis(100);
        // Under `run`, a stream that caught up keeps its lease a moment for the next
        // commits instead of releasing it at once: a steady trickle then costs one
        // checkpoint write per `FLUSH_AFTER`, not a lease and a release per commit
        // (each a row version that a long snapshot keeps alive), and the next event
        // is read at once, without re-taking the lease first.
        let linger = if stop.is_some() { LINGER.min(self.inner.lease / 4) } else { Duration::ZERO };
        let inner = &*self.inner;
        let store = &inner.store;
        let mut view = view.clone();
        let window_cap = WINDOW.max(2 * inner.batch_size);
        // An event that kept killing its workers: dead-lettered unrun.
        let mut poison = self.careful(def.name)? && lease.crashes_here() >= inner.max_lease_expiries;
        // A spread inbox's stream is a pump: it copies the events into chunks
        // (claimed by every worker) while fewer than `cap` wait to run.
        let spread = def.spread;
        let cap = SPREAD_QUEUE.max(4 * inner.batch_size);
        // Under `drain` its claims run alongside (each pass copies all it can); under
        // `run` the queue is capped.
        let uncapped = stop.is_none();
        let (mut room, mut recount_at): (Option<usize>, _) =
            (uncapped.then_some(usize::MAX), tokio::time::Instant::now());
        let mut w = Window::new(lease.checkpoint.clone());
        // Deliveries run inside this task (no spawn and cross-thread wake-up per event);
        // every database call of the stream is awaited `alongside` them, so they go on
        // meanwhile and give their pooled connections back. Left unpolled while the
        // stream waited for a connection, they deadlocked a pool smaller than the
        // concurrency.
        let mut running = crate::concurrent::Running::new();
        let mut landed: Vec<Landed> = Vec::new();
        use crate::concurrent::alongside;
        let mut pass = Pass::default();
        let mut unwritten = Passed::default();
        let mut written = lease.checkpoint.clone();
        let (mut last_write, mut last_renew) = (tokio::time::Instant::now(), tokio::time::Instant::now());
        let mut stopping = false;
        // When the stream last read or finished an event of the inbox.
        let mut busy_at: Option<tokio::time::Instant> = None;
        loop {
            if !landed.is_empty() {
                busy_at = Some(tokio::time::Instant::now());
            }
            for ((slot, key, id), out) in landed.drain(..) {
                let error = match out {
                    Ok(Ok(true)) => {
                        pass.delivered += 1;
                        None
                    }
                    Ok(Ok(false)) => None,
                    Ok(Err(e)) => Some(e),
                    Err(panic) => Some(InboxError::retry(format!("handler panicked: {panic}"))),
                };
                let parked = error.map(|error| {
                    tracing::warn!(inbox = def.name, event = %id, attempt = 1, error = %error, "herald: delivery failed");
                    pass.failed += 1;
                    Failure { key: key.clone(), ..failure(def, id, 1, error) }
                });
                w.finish(slot, key, parked);
            }
            // After a takeover, one event at a time until past what the crashed worker
            // may have been running.
            let careful = self.careful(def.name)?;
            let concurrency = if careful { 1 } else { inner.concurrency };
            let read_ahead = if careful { 1 } else { 2 * inner.batch_size.max(concurrency) };
            if spread
                && !stopping
                && !w.cursor.caught_up(&view)
                && room.is_none_or(|r| r == 0)
                && tokio::time::Instant::now() >= recount_at
            {
                let waiting = alongside(&mut running, &mut landed, store.queued(def.name, cap)).await?;
                // Resumes only with a quarter of the queue free: copies come in
                // chunks, and a full queue is counted 20 times a second, not per row.
                let free = cap.saturating_sub(waiting);
                room = Some(if free >= cap / 4 { free } else { 0 });
                recount_at = tokio::time::Instant::now() + SPREAD_RECOUNT;
            }
            // Read while the handlers have room and the window is not too far ahead.
            while !stopping
                && w.unstarted() < read_ahead
                && w.slots.len() < window_cap
                && !w.cursor.caught_up(&view)
                && (!spread || room.is_some_and(|r| r > 0))
            {
                let mut limit = self.batch_limit(def.name)?;
                if spread && prefetched.is_none() {
                    // A pump copies what the queue has room for in one read and one
                    // write (a prefetched read keeps the limit it was read with).
                    limit = limit.max(room.unwrap_or(0).min(cap));
                }
                let scan = match prefetched.take() {
                    Some(scan) => scan,
                    None => {
                        alongside(&mut running, &mut landed, store.read_batch(def, &w.cursor, &view, limit)).await?
                    }
                };
                let batch = scan.events;
                if !batch.is_empty() {
                    busy_at = Some(tokio::time::Instant::now());
                }
                let held = if blocked && !spread && !matches!(def.key, Key::None) && !batch.is_empty() {
                    let keys = batch_keys(def, &batch);
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let (any, held) =
                        alongside(&mut running, &mut landed, store.blocked_among(def.name, &keys)).await?;
                    blocked = any;
                    held.into_iter().collect()
                } else {
                    HashSet::new()
                };
                let next = w.cursor.after(&view, scan.last, scan.scanned >= limit);
                for (pos, event) in batch {
                    let after = w.cursor.after(&view, Some(pos), true);
                    if poison {
                        let error = format!(
                            "its worker stopped {} times (crashed or hung past the lease) before finishing",
                            lease.crashes_here()
                        );
                        w.push_done(after, Some(Failure::dead(EventId(pos.id), 0, error)));
                        pass.failed += 1;
                        continue;
                    }
                    match event {
                        Ok(event) if spread => {
                            room = room.map(|r| r.saturating_sub(1));
                            pass.queued += 1;
                            w.push_copy(after, Copied { event_id: event.id, key: def.key.of(&event), event });
                        }
                        Ok(event) => w.admit(def, after, event, &held),
                        Err(e) => {
                            tracing::error!(inbox = def.name, event = pos.id, error = %crate::error::chain(&e), "herald: a stored event cannot be read; dead-lettered");
                            let error = format!("the stored event cannot be read: {e}");
                            w.push_done(after, Some(Failure::dead(EventId(pos.id), 1, error)));
                            pass.failed += 1;
                        }
                    }
                }
                poison = false;
                w.push_done(next.clone(), None);
                w.cursor = next;
                if spread {
                    break; // each batch's rows written (and claimable) at once
                }
            }
            while running.len() < concurrency
                && !stopping
                && let Some((slot, key, event)) = w.ready.pop_front()
            {
                let id = event.id;
                running.push((slot, key, id), self.deliver_one(def, event, 0));
            }
            unwritten.take(&mut w);
            let idle = running.is_empty() && landed.is_empty() && (w.ready.is_empty() || stopping);
            let full = spread && room == Some(0);
            let lingering = !stopping && busy_at.is_some_and(|at| at.elapsed() < linger);
            let finished = idle && (stopping || (w.cursor.caught_up(&view) && !lingering) || (full && stop.is_none()));
            let due = finished
                || (spread && unwritten.events > 0)
                || unwritten.events >= inner.batch_size
                || (careful && unwritten.events > 0)
                || (unwritten.events > 0 && last_write.elapsed() >= FLUSH_AFTER);
            if due && (unwritten.mark.is_some() || finished) {
                let to = unwritten.mark.clone().unwrap_or_else(|| written.clone());
                let renew = (!finished).then_some(inner.lease);
                let parked_keys = unwritten.failures.iter().any(|f| f.key.is_some() && !f.dead);
                let copied = !unwritten.copies.is_empty();
                let chunks = chunks_of(unwritten.copies.iter().map(|c| (c.event_id, &c.key)));
                let write =
                    store.advance(def.name, &inner.me, lease.epoch, &to, renew, &unwritten.failures, &chunks, now());
                if !alongside(&mut running, &mut landed, write).await? {
                    tracing::warn!(
                        inbox = def.name,
                        "herald: lease lost mid-batch; its new owner re-delivers what was not passed"
                    );
                    self.remember(def.name, None);
                    return Ok(Pass { more: false, ..pass });
                }
                if careful && let Ok(mut careful) = inner.careful.lock() {
                    let left = careful.entry(def.name).or_default();
                    *left = left.saturating_sub(unwritten.events.max(1));
                }
                if copied {
                    if let Ok(mut kept) = inner.copied.lock() {
                        let kept = kept.entry(def.name).or_default();
                        if kept.len() + unwritten.copies.len() > COPIED_KEPT {
                            kept.clear();
                        }
                        for c in unwritten.copies.drain(..).take(COPIED_KEPT) {
                            kept.insert(c.event_id.0, c.event);
                        }
                    }
                    store.announce_queued();
                }
                // What was parked is now the database's to tell: ask it from the next batch on.
                blocked |= parked_keys;
                std::mem::take(&mut unwritten).written(&mut w);
                written = to;
                last_write = tokio::time::Instant::now();
                last_renew = last_write;
                let held_until = renew.map(|lease| now() + chrono_of(lease));
                self.remember(def.name, Some(Known::stored(written.clone(), held_until, lease.epoch, blocked)));
            }
            if finished {
                return Ok(pass);
            }
            if !landed.is_empty() {
                continue; // deliveries that finished while the stream wrote: settle them first
            }
            if spread && !stopping && !w.cursor.caught_up(&view) && room.is_some_and(|r| r > 0) {
                continue; // a pump waits for nothing but room: copy the next batch
            }
            // Wait for a handler, a flush or renewal, or (with the cursor at the view
            // while handlers still run) new commits.
            let renew_at = last_renew + inner.lease / 3;
            let wake_at = if unwritten.events > 0 { renew_at.min(last_write + FLUSH_AFTER) } else { renew_at };
            let at_view = w.cursor.caught_up(&view) && !stopping;
            let poll_at = tokio::time::Instant::now() + inner.poll_interval;
            tokio::select! {
                () = running.settle(&mut landed), if !running.is_empty() => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if tokio::time::Instant::now() >= renew_at {
                        last_renew = tokio::time::Instant::now();
                        // Renewal never acquires: a worker that lost its lease (it stalled
                        // past it) must not take it back and write a stale checkpoint.
                        let renewal = store.renew_lease(def.name, &inner.me, lease.epoch, inner.lease);
                        match alongside(&mut running, &mut landed, renewal).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(
                                    inbox = def.name,
                                    "herald: lease lost while delivering (this worker stalled past it); its new \
                                     owner makes the unfinished events again and this worker's results are discarded"
                                );
                                self.remember(def.name, None);
                                return Ok(Pass { more: false, ..pass });
                            }
                            Err(e) => tracing::warn!(inbox = def.name, error = %crate::error::chain(&e), "herald: renewing a lease failed"),
                        }
                    }
                }
                woke = wait_commit(commits.as_deref_mut()), if at_view && (!running.is_empty() || lingering) => {
                    if let Some(woke) = woke {
                        view = alongside(&mut running, &mut landed, store.shared_view(woke)).await?;
                    }
                }
                _ = tokio::time::sleep_until(poll_at), if at_view && commits.is_some() && (!running.is_empty() || lingering) => {
                    view = alongside(&mut running, &mut landed, store.view()).await?;
                }
                // Lingering ends: write what is passed and release the lease.
                _ = tokio::time::sleep_until(busy_at.unwrap_or_else(tokio::time::Instant::now) + linger),
                    if at_view && idle && lingering => {}
                _ = tokio::time::sleep_until(recount_at), if full && !stopping && !w.cursor.caught_up(&view) => {}
                _ = wait_stop(stop.as_deref_mut()), if !stopping => {
                    stopping = true;
                }
            }
        }
    }

    /// Whether this worker keeps events its pump copied for `inbox`.
    fn keeps_copies(&self, inbox: &'static str) -> bool {
        self.inner.copied.lock().is_ok_and(|kept| kept.get(inbox).is_some_and(|k| !k.is_empty()))
    }

    /// Gives the claimed events not read by the claim: the kept copies, and (copied
    /// by another worker, or no longer kept) the rest read in one query.
    async fn fill_events(&self, inbox: &'static str, chunks: &mut [ClaimedChunk]) -> Result<()> {
        let mut missing = Vec::new();
        if let Ok(mut kept) = self.inner.copied.lock() {
            let kept = kept.entry(inbox).or_default();
            for item in chunks.iter_mut().flat_map(|c| c.items.iter_mut()).filter(|i| i.event.is_none()) {
                match kept.remove(&item.event_id.0) {
                    Some(event) => item.event = Some(Ok(event)),
                    None => missing.push(item.event_id.0),
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut read = self.inner.store.events_by_id(&missing).await?;
        for item in chunks.iter_mut().flat_map(|c| c.items.iter_mut()).filter(|i| i.event.is_none()) {
            let id = item.event_id.0;
            item.event = Some(
                read.remove(&id)
                    .unwrap_or_else(|| Err(Error::Corrupt { id, reason: "delivery of a missing event".into() })),
            );
        }
        Ok(())
    }

    /// Whether `inbox` is re-delivering one event at a time after a takeover.
    fn careful(&self, inbox: &'static str) -> Result<bool> {
        let careful = self.inner.careful.lock().map_err(|_| Error::InvalidConfig("poisoned lock".into()))?;
        Ok(careful.get(inbox).copied().unwrap_or(0) > 0)
    }

    /// Events to read in one batch: one at a time while careful.
    fn batch_limit(&self, inbox: &'static str) -> Result<usize> {
        Ok(if self.careful(inbox)? { 1 } else { self.inner.batch_size })
    }

    /// Records (or forgets) what this worker knows of an inbox's row.
    fn remember(&self, inbox: &'static str, known: Option<Known>) {
        if let Ok(mut map) = self.inner.known.lock() {
            match known {
                Some(k) => map.insert(inbox, k),
                None => map.remove(inbox),
            };
        }
    }

    /// One delivery: the filter, then the handler under the inbox's timeout, panics
    /// caught by the caller. `Ok(true)`: delivered; `Ok(false)`: filtered out
    /// (acknowledged unseen). `attempts`: failed attempts so far.
    fn deliver_one(
        &self,
        def: &'static InboxDef,
        event: Event,
        attempts: u32,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::result::Result<bool, InboxError>> + Send + 'static>> {
        let inner = &self.inner;
        let cx = Context::new(inner.store.clone(), inner.resources.clone(), def.name, event.clone(), attempts + 1)
            .with_max_causation_depth(inner.max_causation_depth);
        Box::pin(async move {
            if let Some(keep) = def.filter {
                match std::panic::catch_unwind(|| keep(&event)) {
                    Ok(true) => {}
                    Ok(false) => return Ok(false),
                    Err(panic) => {
                        return Err(InboxError::retry(format!(
                            "filter panicked: {}",
                            crate::concurrent::panic_text(panic)
                        )));
                    }
                }
            }
            // A handler that never returns must not hold its key (and the lease,
            // renewed meanwhile) forever: cancelled at the timeout, it fails.
            match tokio::time::timeout(def.timeout, (def.handler)(&event, &cx)).await {
                Ok(outcome) => outcome.map(|()| true),
                Err(_) => Err(InboxError::retry(format!("timed out after {:?}", def.timeout))),
            }
        })
    }

    /// Claims and runs `def`'s ready deliveries: retries that are due and, for a
    /// spread inbox, the chunks of events its lease holder copied (in any process).
    /// Claims only each key's oldest live row and each partition's oldest chunk
    /// (`FOR UPDATE SKIP LOCKED` on PostgreSQL), runs up to the concurrency side by
    /// side (a chunk's keys side by side, each key's events one at a time in order),
    /// claims again as soon as a handler is free (no batch barrier), completes what
    /// finished in one statement while the rest run, and renews the leases of what it
    /// holds.
    ///
    /// How far ahead it claims adapts: about one claim's round trip of work beyond
    /// the running handlers, and at least as many deliveries again as the concurrency
    /// (fast handlers: up to 500 a claim; slow ones: a chunk per claim, not one row
    /// per finished handler).
    ///
    /// A chunk is settled once each of its events ran or was parked: one statement
    /// deletes it and writes the rows it leaves (failures, and the later events of
    /// their keys parked behind them). At a stop, every chunk held is settled at once:
    /// what did not start becomes rows free for any worker, what runs becomes rows
    /// this worker holds and completes.
    ///
    /// `live` (under [`run`](Self::run)): wake-ups and the stop signal; it returns only
    /// at stop. `None` (under [`drain`](Self::drain)): returns once nothing is
    /// claimable and nothing runs, and (`pumping`, a spread inbox under `drain`) its
    /// pump, running alongside, has copied everything.
    async fn claim_stream(
        &self,
        def: &'static InboxDef,
        live: Option<ClaimLive>,
        mut pumping: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Pass> {
        use crate::concurrent::alongside;
        /// The most deliveries one claim takes.
        const CLAIM_MAX: usize = 500;
        /// The longest a finished delivery waits for its completion to be written.
        const COMPLETE_AFTER: Duration = Duration::from_millis(5);
        /// How often an inbox that is not spread looks for chunks (left by a version
        /// of it that was, or by a process still running one).
        const CHUNKS_AFTER: Duration = Duration::from_secs(30);
        let inner = &*self.inner;
        let store = &inner.store;
        let concurrency = inner.concurrency;
        let mut running = crate::concurrent::Running::new();
        let mut landed: Vec<ClaimLanded> = Vec::new();
        let mut queue: std::collections::VecDeque<Work> = Default::default();
        // Claimed rows, and claimed chunks with what is left of each.
        let mut held: HashSet<i64> = HashSet::new();
        let mut chunks: HashMap<i64, ChunkRun> = HashMap::new();
        // Chunks whose every event ran or was parked: to settle.
        let mut settled: Vec<i64> = Vec::new();
        // Events of chunks settled at a stop while they ran: their rows, held here.
        let mut moved: HashMap<EventId, i64> = HashMap::new();
        let (mut ok, mut failed): (Vec<i64>, Vec<(i64, Failure)>) = (Vec::new(), Vec::new());
        let mut pass = Pass::default();
        // Average handler run and claim round trip, for how far ahead to claim; the
        // average chunk's length, for how many chunks to claim.
        let (mut handler_secs, mut claim_secs, mut chunk_len) = (0.001_f64, 0.001_f64, 16.0_f64);
        let (mut want, mut stopping) = (true, false);
        let mut chunks_at: Option<tokio::time::Instant> = None;
        // Whether delivery rows may be claimable (a spread inbox's chunk claims tell;
        // a row claim per chunk claim would double the statements of a fast inbox).
        let mut rows_maybe = true;
        // Chunks finished with nothing to write: deleted by the next chunk claim.
        let mut riding: Vec<i64> = Vec::new();
        let mut last_renew = tokio::time::Instant::now();
        // When the oldest finished delivery not yet completed finished.
        let mut first_done: Option<tokio::time::Instant> = None;
        let names = [def.name];
        let (mut commits, mut queued, mut stop) = match live {
            Some(l) => (Some(l.commits), Some(l.queued), Some(l.stop)),
            None => (None, pumping.is_some().then(|| store.subscribe_queued()), None),
        };
        loop {
            for (tag, out) in landed.drain(..) {
                let c = match out {
                    Ok((c, took)) => {
                        handler_secs = 0.5 * handler_secs + 0.5 * took.as_secs_f64();
                        c
                    }
                    Err(panic) => {
                        // Outside the handler (whose panics fail the delivery): the row
                        // or chunk is left to its lease, which stops being renewed.
                        tracing::error!(inbox = def.name, panic = %panic, "herald: a delivery's bookkeeping panicked; it runs again after its lease");
                        match tag {
                            Tag::Row(id, _) => {
                                held.remove(&id);
                            }
                            Tag::Part(chunk, ..) => {
                                chunks.remove(&chunk);
                            }
                        }
                        continue;
                    }
                };
                match &c {
                    None => pass.delivered += 1,
                    Some(_) => pass.failed += 1,
                }
                let (id, next) = match tag {
                    Tag::Row(id, next) => (id, next),
                    Tag::Part(chunk, at, key, event_id) => {
                        if let Some(run) = chunks.get_mut(&chunk) {
                            if run.landed(chunk, at, key, c, &mut queue) {
                                settled.push(chunk);
                                first_done.get_or_insert_with(tokio::time::Instant::now);
                            }
                            continue;
                        }
                        // Its chunk was settled at a stop: the event is a row now.
                        match moved.remove(&event_id) {
                            Some(id) => (id, false),
                            None => continue, // the chunk was lost (its lease ran out)
                        }
                    }
                };
                match c {
                    None => ok.push(id),
                    Some(f) => failed.push((id, f)),
                }
                first_done.get_or_insert_with(tokio::time::Instant::now);
                // A keyed delivery that succeeded or died lets the next event of its key go.
                let freed = next && failed.last().is_none_or(|(last, f)| *last != id || f.dead);
                want |= freed;
                rows_maybe |= freed;
            }
            // Freed handlers take claimed work first; the completion runs alongside them.
            while running.len() < concurrency
                && !stopping
                && let Some(work) = queue.pop_front()
            {
                match work {
                    Work::Row(c) => running.push(Tag::Row(c.id, c.next), self.run_claimed(def, c)),
                    Work::Part(chunk, at, item) => {
                        if let Some(run) = chunks.get_mut(&chunk) {
                            run.running.insert(at, (item.event_id, item.key.clone()));
                        }
                        let tag = Tag::Part(chunk, at, item.key.clone(), item.event_id);
                        let event = item.event.unwrap_or_else(|| {
                            Err(Error::Corrupt { id: item.event_id.0, reason: "a claimed event was not read".into() })
                        });
                        let c = Claimed {
                            id: chunk,
                            event_id: item.event_id,
                            event,
                            attempts: 0,
                            expiries: 0,
                            key: item.key,
                            next: false,
                        };
                        running.push(tag, self.run_claimed(def, c));
                    }
                }
            }
            // At least the concurrency ahead: claims come in chunks, not one row per
            // finished handler (each claim is a statement walking the ready rows).
            let ahead = ((concurrency as f64 * claim_secs / handler_secs.max(1e-6)).ceil() as usize)
                .max(concurrency)
                .min(CLAIM_MAX.saturating_sub(concurrency).max(concurrency));
            let target = concurrency + ahead;
            let claim_soon = !stopping && want && queue.len() <= ahead / 2;
            // Completions go in batches (one statement each): before a claim (what
            // finished frees its key, and room), when nothing else is left to run, at
            // stop, or once the oldest has waited COMPLETE_AFTER.
            let done = ok.len() + failed.len() + settled.len();
            if done > 0
                && (claim_soon
                    || stopping
                    || (running.is_empty() && queue.is_empty())
                    || done >= CLAIM_MAX
                    || first_done.is_some_and(|t| t.elapsed() >= COMPLETE_AFTER))
            {
                let (o, f) = (std::mem::take(&mut ok), std::mem::take(&mut failed));
                first_done = None;
                if !o.is_empty() || !f.is_empty() {
                    alongside(&mut running, &mut landed, store.complete_retries(&inner.me, &o, &f, now())).await?;
                }
                for id in o.iter().chain(f.iter().map(|(id, _)| id)) {
                    held.remove(id);
                }
                if !settled.is_empty() {
                    // Chunks that leave no row ride on the claim that follows; the
                    // others are settled now, with their rows.
                    let (mut ids, mut rows) = (Vec::new(), Vec::new());
                    for id in std::mem::take(&mut settled) {
                        let Some(run) = chunks.remove(&id) else { continue };
                        let left = run.rows(id);
                        if left.is_empty() && claim_soon {
                            riding.push(id);
                        } else {
                            ids.push(id);
                            rows.extend(left);
                        }
                    }
                    if !ids.is_empty() {
                        let t = now();
                        rows_maybe |= !rows.is_empty();
                        let settle = store.settle_chunks(&inner.me, def.name, &ids, &rows, t, t);
                        alongside(&mut running, &mut landed, settle).await?;
                    }
                    // The next chunk of each partition may run now.
                    want = true;
                    continue;
                }
            }
            if stopping && (!queue.is_empty() || !chunks.is_empty()) {
                // Claimed, never started: free for any worker now, not at the lease's end.
                let mut ids = Vec::new();
                for work in queue.drain(..) {
                    match work {
                        Work::Row(c) => ids.push(c.id),
                        Work::Part(chunk, at, item) => {
                            if let Some(run) = chunks.get_mut(&chunk) {
                                run.unstarted.push((at, item.event_id, item.key));
                            }
                        }
                    }
                }
                alongside(&mut running, &mut landed, store.release_claims(&inner.me, &ids)).await?;
                for id in &ids {
                    held.remove(id);
                }
                // Chunks become rows: what did not start, free; what runs, held here.
                let ids: Vec<i64> = chunks.keys().copied().collect();
                let rows: Vec<ChunkRow> = chunks.drain().flat_map(|(id, run)| run.stopped(id)).collect();
                let t = now();
                let until = t + chrono_of(inner.lease);
                let settle = store.settle_chunks(&inner.me, def.name, &ids, &rows, t, until);
                for (event_id, row) in alongside(&mut running, &mut landed, settle).await? {
                    moved.insert(event_id, row);
                    held.insert(row);
                }
                settled.clear();
            }
            let holding = held.len() + chunks.values().map(|r| r.open).sum::<usize>();
            if claim_soon && holding < target {
                let limit = (target - holding).min(CLAIM_MAX);
                let (t, started) = (now(), tokio::time::Instant::now());
                let until = t + chrono_of(inner.lease);
                let mut full = false;
                let mut left = limit;
                if rows_maybe || !def.spread {
                    let claim = store.claim_retries(&inner.me, &names, t, until, limit);
                    let claimed = alongside(&mut running, &mut landed, claim).await?;
                    full = claimed.len() == limit;
                    rows_maybe = full;
                    left = limit - claimed.len();
                    held.extend(claimed.iter().map(|c| c.id));
                    queue.extend(claimed.into_iter().map(Work::Row));
                }
                let chunks_due = def.spread || chunks_at.is_none_or(|at| at.elapsed() >= CHUNKS_AFTER);
                if (left > 0 && chunks_due) || !riding.is_empty() {
                    chunks_at = Some(tokio::time::Instant::now());
                    let n = if left > 0 { ((left as f64 / chunk_len).ceil() as usize).max(1) } else { 0 };
                    let done = std::mem::take(&mut riding);
                    // Events this worker's pump copied are kept: read only when it keeps none.
                    let read = !self.keeps_copies(def.name);
                    let claim = store.claim_chunks(&inner.me, def.name, t, until, n, &done, read);
                    let mut got = alongside(&mut running, &mut landed, claim).await?;
                    if !read {
                        let fill = self.fill_events(def.name, &mut got.chunks);
                        alongside(&mut running, &mut landed, fill).await?;
                    }
                    // Claim again at once: more chunks may wait, or rows (claimable
                    // now, split, or the next chunks of the partitions just finished).
                    full |= got.split || got.chunks.len() == n || (got.rows_due && !rows_maybe) || !done.is_empty();
                    rows_maybe |= got.rows_due || got.split;
                    for c in got.chunks {
                        chunk_len = 0.8 * chunk_len + 0.2 * c.items.len() as f64;
                        let (run, ready) = ChunkRun::claimed(c);
                        if run.open == 0 {
                            settled.push(ready.0);
                            first_done.get_or_insert_with(tokio::time::Instant::now);
                        }
                        queue.extend(ready.1);
                        chunks.insert(ready.0, run);
                    }
                }
                claim_secs = 0.8 * claim_secs + 0.2 * started.elapsed().as_secs_f64();
                want = full;
                last_renew = last_renew.min(tokio::time::Instant::now());
                continue;
            }
            if !riding.is_empty() {
                // No claim came to take them along.
                let (ids, t) = (std::mem::take(&mut riding), now());
                alongside(&mut running, &mut landed, store.settle_chunks(&inner.me, def.name, &ids, &[], t, t)).await?;
            }
            let idle = running.is_empty() && queue.is_empty() && landed.is_empty() && first_done.is_none();
            let pumped = pumping.as_ref().is_none_or(|p| !*p.borrow());
            if idle && (stopping || (stop.is_none() && !want && pumped)) {
                return Ok(pass);
            }
            if !landed.is_empty() {
                continue;
            }
            let renew_at = last_renew + inner.lease / 3;
            let live_wait = stop.is_some() && !stopping;
            let complete_at = first_done.map(|t| t + COMPLETE_AFTER);
            tokio::select! {
                () = running.settle(&mut landed), if !running.is_empty() => {}
                _ = sleep_until_some(complete_at), if complete_at.is_some() => {}
                _ = tokio::time::sleep_until(renew_at), if !held.is_empty() || !chunks.is_empty() => {
                    last_renew = tokio::time::Instant::now();
                    let ids: Vec<i64> = held.iter().copied().collect();
                    let until = now() + chrono_of(inner.lease);
                    if let Err(e) = alongside(&mut running, &mut landed, store.renew_retries(&inner.me, &ids, until)).await {
                        tracing::warn!(inbox = def.name, error = %crate::error::chain(&e), "herald: renewing delivery leases failed");
                    }
                    let ids: Vec<i64> = chunks.keys().copied().collect();
                    if let Err(e) = alongside(&mut running, &mut landed, store.renew_chunks(&inner.me, &ids, until)).await {
                        tracing::warn!(inbox = def.name, error = %crate::error::chain(&e), "herald: renewing chunk leases failed");
                    }
                }
                // Commits concern a spread inbox (another process's pump copied chunks);
                // other inboxes' rows are this process's failures (polled, as retries
                // wait their backoff anyway): no claim statement per commit for them.
                _ = changed(commits.as_mut()), if live_wait && def.spread => want = true,
                _ = changed(queued.as_mut()), if live_wait || !pumped => want = true,
                _ = pumping_changed(pumping.as_mut()), if !pumped => want = true,
                _ = tokio::time::sleep(inner.poll_interval), if live_wait => want = true,
                _ = wait_stop(stop.as_mut()), if live_wait => stopping = true,
            }
        }
    }

    /// Runs one claimed delivery: `None` if it succeeded (or was filtered out), else
    /// its failure to park (retry later, or dead); and how long it ran.
    fn run_claimed(
        &self,
        def: &'static InboxDef,
        c: Claimed,
    ) -> std::pin::Pin<Box<dyn Future<Output = (Option<Failure>, Duration)> + Send + 'static>> {
        let me = self.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let failure = me.delivery_failure(def, c).await;
            (failure, started.elapsed())
        })
    }

    /// One claimed delivery, run: its failure, if any.
    fn delivery_failure(
        &self,
        def: &'static InboxDef,
        c: Claimed,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Failure>> + Send + 'static>> {
        let me = self.clone();
        Box::pin(async move {
            let inner = &me.inner;
            if c.expiries >= inner.max_lease_expiries {
                let error = format!(
                    "its worker stopped {} times (crashed or hung past the lease) before finishing",
                    c.expiries
                );
                return Some(Failure { key: c.key, ..Failure::dead(c.event_id, c.attempts, error) });
            }
            let event = match c.event {
                Ok(event) => event,
                // No retry can read it: dead at once.
                Err(e) => {
                    let error = format!("the stored event cannot be read: {e}");
                    return Some(Failure { key: c.key, ..Failure::dead(c.event_id, c.attempts + 1, error) });
                }
            };
            let out = crate::concurrent::catch_unwind(me.deliver_one(def, event, c.attempts)).await;
            let error = match out {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => e,
                Err(panic) => InboxError::retry(format!("handler panicked: {panic}")),
            };
            tracing::warn!(inbox = def.name, event = %c.event_id, attempt = c.attempts + 1, error = %error, "herald: delivery failed");
            Some(Failure { key: c.key, ..failure(def, c.event_id, c.attempts + 1, error) })
        })
    }
}

/// A claimed delivery that finished: its row and whether rows of its key wait behind
/// it, and its failure if any and how long it ran (or the panic message, which
/// `run_claimed` already catches).
type ClaimLanded = (Tag, std::result::Result<(Option<Failure>, Duration), String>);

/// What a claim stream runs: a claimed row, or an event of a claimed chunk (its
/// chunk, its position in it).
enum Work {
    Row(Claimed),
    Part(i64, usize, ChunkItem),
}

/// A running delivery: a row (and whether rows of its key wait behind it), or an
/// event of a chunk (its chunk, position, key and event).
enum Tag {
    Row(i64, bool),
    Part(i64, usize, Option<String>, EventId),
}

/// The error of the rows a chunk leaves when its worker died: each is counted one
/// expiry (its worker stopped before finishing it).
pub(crate) const SPLIT_ERROR: &str = "its worker stopped before finishing its chunk (crashed or hung past the lease)";

/// A claimed chunk, as its claim stream runs it: each key's events one at a time
/// in order; a key whose event fails parks its later events behind it.
#[derive(Default)]
struct ChunkRun {
    /// Events neither finished nor parked.
    open: usize,
    /// Rows to write when it is settled (failures, events parked behind them), with
    /// each one's position.
    rows: Vec<(usize, Failure)>,
    /// Per key with an event queued or running: its later events, in order.
    behind: HashMap<String, std::collections::VecDeque<(usize, ChunkItem)>>,
    /// The events running now, by position.
    running: HashMap<usize, (EventId, Option<String>)>,
    /// At a stop: the events queued and not started.
    unstarted: Vec<(usize, EventId, Option<String>)>,
}

impl ChunkRun {
    /// Takes in a claimed chunk: its id and the events ready to run (each key's
    /// first, unless a live row of the key holds it back: then parked behind it).
    fn claimed(c: ClaimedChunk) -> (Self, (i64, Vec<Work>)) {
        let mut run = ChunkRun::default();
        let mut ready = Vec::new();
        for (at, item) in c.items.into_iter().enumerate() {
            match item.key.clone() {
                Some(k) if item.held => run.rows.push((at, waiting(item.event_id, &k, "an earlier event"))),
                Some(k) => match run.behind.get_mut(&k) {
                    Some(later) => {
                        later.push_back((at, item));
                        run.open += 1;
                    }
                    None => {
                        run.behind.insert(k, Default::default());
                        ready.push(Work::Part(c.id, at, item));
                        run.open += 1;
                    }
                },
                None => {
                    ready.push(Work::Part(c.id, at, item));
                    run.open += 1;
                }
            }
        }
        (run, (c.id, ready))
    }

    /// An event at `at` finished with `failure` (if any): lets its key's next event
    /// go (it succeeded or died), or parks the key's later events behind it (it will
    /// be retried). Whether the chunk is done.
    fn landed(
        &mut self,
        chunk: i64,
        at: usize,
        key: Option<String>,
        failure: Option<Failure>,
        queue: &mut std::collections::VecDeque<Work>,
    ) -> bool {
        self.running.remove(&at);
        self.open = self.open.saturating_sub(1);
        let retried = failure.as_ref().is_some_and(|f| !f.dead);
        let head = failure.as_ref().map(|f| f.event_id);
        if let Some(f) = failure {
            self.rows.push((at, f));
        }
        if let Some(k) = key {
            if retried {
                let head = head.map_or_else(|| "an earlier event".to_owned(), |id| format!("event {id}"));
                for (later, item) in self.behind.remove(&k).unwrap_or_default() {
                    self.rows.push((later, waiting(item.event_id, &k, &head)));
                    self.open = self.open.saturating_sub(1);
                }
            } else if let Some(later) = self.behind.get_mut(&k) {
                match later.pop_front() {
                    Some((next, item)) => queue.push_front(Work::Part(chunk, next, item)),
                    None => {
                        self.behind.remove(&k);
                    }
                }
            }
        }
        self.open == 0
    }

    /// The rows it leaves, in commit order.
    fn rows(mut self, chunk: i64) -> Vec<ChunkRow> {
        self.rows.sort_by_key(|(at, _)| *at);
        self.rows.into_iter().map(|(_, row)| ChunkRow { chunk, row, leased: false }).collect()
    }

    /// At a stop: the rows it leaves, with every event not started free for any
    /// worker and every running one held by this worker.
    fn stopped(mut self, chunk: i64) -> Vec<ChunkRow> {
        let mut out: Vec<(usize, ChunkRow)> = Vec::new();
        let free = |at: usize, id: EventId, key: Option<String>| {
            (at, ChunkRow { chunk, row: unstarted(id, key), leased: false })
        };
        for (at, id, key) in std::mem::take(&mut self.unstarted) {
            out.push(free(at, id, key));
        }
        for (_, later) in std::mem::take(&mut self.behind) {
            out.extend(later.into_iter().map(|(at, item)| free(at, item.event_id, item.key)));
        }
        for (at, (id, key)) in std::mem::take(&mut self.running) {
            out.push((at, ChunkRow { chunk, row: unstarted(id, key), leased: true }));
        }
        out.extend(self.rows.into_iter().map(|(at, row)| (at, ChunkRow { chunk, row, leased: false })));
        out.sort_by_key(|(at, _)| *at);
        out.into_iter().map(|(_, row)| row).collect()
    }
}

/// Under [`Dispatcher::run`], what a claim stream follows: commits (and, through the
/// listener, other processes' copied rows), this process's copied rows, and stop.
struct ClaimLive {
    commits: tokio::sync::watch::Receiver<u64>,
    queued: tokio::sync::watch::Receiver<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// The next change of a pump's `pumping` flag; never once it is gone.
async fn pumping_changed(rx: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Sleeps until `at`; never without it.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next change of `rx`; never without one (or once its sender is gone).
async fn changed(rx: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Parks a failed attempt: when to try again, or dead.
fn failure(def: &InboxDef, event_id: EventId, attempts: u32, error: InboxError) -> Failure {
    let dead = error.outcome == Outcome::GiveUp || attempts >= def.max_attempts;
    let delay = match error.outcome {
        Outcome::RetryAfter(d) => d,
        _ => backoff(def, attempts),
    };
    // `time_after` clamps: a `Retry-After` of u64::MAX seconds parks the delivery
    // until the year 9999 instead of overflowing the date arithmetic.
    Failure {
        event_id,
        attempts,
        next_at: time_after(now(), delay),
        error: error.message().to_owned(),
        dead,
        key: None,
    }
}

/// Dead letters that failed before this are pruned; `None` when the retention
/// reaches back before the year 1 (nothing is old enough).
fn retention_cutoff(now: DateTime<Utc>, keep: Duration) -> Option<DateTime<Utc>> {
    let cutoff = chrono::Duration::from_std(keep).ok().and_then(|keep| now.checked_sub_signed(keep))?;
    (cutoff > crate::model::min_time()).then_some(cutoff)
}

/// Runs a pass of the dispatcher's own code, turning a panic into
/// [`Error::Panicked`]: a bug must fail the pass, loudly, not kill the inbox's task.
async fn caught<T>(pass: impl Future<Output = Result<T>>) -> Result<T> {
    match crate::concurrent::catch_unwind(pass).await {
        Ok(result) => result,
        Err(panic) => {
            tracing::error!(panic = %panic, "herald: a dispatcher pass panicked; it will be retried");
            Err(Error::Panicked(panic))
        }
    }
}

/// Exponential backoff with jitter: attempt n waits between half and all of
/// `backoff * 2^(n-1)`, capped at `backoff_max`.
pub(crate) fn backoff(def: &InboxDef, attempts: u32) -> Duration {
    let exp = def.backoff.saturating_mul(1u32 << attempts.saturating_sub(1).min(30)).min(def.backoff_max);
    let half = exp / 2;
    half + half.mul_f64((random() % 10_000) as f64 / 10_000.0)
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A cheap pseudo-random number (jitter and worker ids need no cryptography).
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // splitmix64
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keeps a LISTEN connection on the schema's channel and wakes the dispatchers on
/// each notification; reconnects when the connection drops (polling covers the gap).
async fn listen(store: Store, pool: sqlx::PgPool) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = async {
            let channel = crate::store::notify_channel(&pool).await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(mut listener) => {
                backoff = Duration::from_millis(50);
                store.poke(); // anything committed while we were away
                loop {
                    match listener.try_recv().await {
                        // This store's own commits already woke its dispatchers.
                        Ok(Some(n)) if store.is_own_notification(n.process_id()) => {}
                        Ok(Some(n)) if n.payload().is_empty() => store.poke(),
                        Ok(Some(n)) => store.woken_with(n.payload()).await,
                        Ok(None) => {
                            tracing::warn!("herald: LISTEN connection lost; reconnecting (polling meanwhile)");
                            store.poke();
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error::chain(&e), "herald: LISTEN reconnect failed; polling meanwhile");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "herald: cannot LISTEN; polling meanwhile"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_hashes_to_the_same_partition_in_every_build() {
        // Stored data depends on it: chunks of one partition run in order, so a key
        // must land in the same partition whichever process (or version) copies it.
        let parts: Vec<i32> = ["", "issue:1", "issue:2", "user:42", "9f1c"].iter().map(|k| chunk_part(k)).collect();
        assert_eq!(parts, [5, 13, 20, 2, 18], "FNV-1a 64 of the key, modulo 32");
        assert!((0..10_000).all(|i| (0..CHUNK_PARTS as i32).contains(&chunk_part(&format!("k{i}")))));
    }

    #[test]
    fn copies_go_into_chunks_per_partition_in_order() {
        let keys: Vec<Option<String>> = (0..200).map(|i| Some(format!("subject:{}", i % 3))).collect();
        let chunks = chunks_of(keys.iter().enumerate().map(|(i, k)| (EventId(i as i64), k)));
        // Three keys, each in its partition; at most 64 events a chunk.
        assert!(chunks.iter().all(|c| c.events.len() <= CHUNK_MAX && c.events.len() == c.keys.len()));
        assert_eq!(chunks.iter().map(|c| c.events.len()).sum::<usize>(), 200);
        for c in &chunks {
            assert!(c.events.windows(2).all(|w| w[0] < w[1]), "commit order within a chunk");
            let part = c.part.expect("keyed");
            assert!(c.keys.iter().all(|k| k.as_deref().map(chunk_part) == Some(part)));
        }
        // A partition's chunks are listed (and so numbered) in commit order.
        for part in chunks.iter().filter_map(|c| c.part) {
            let firsts: Vec<i64> = chunks.iter().filter(|c| c.part == Some(part)).map(|c| c.events[0]).collect();
            assert!(firsts.windows(2).all(|w| w[0] < w[1]));
        }
        // Keyless: no partition, chunks of 64 in order.
        let none = vec![None; 130];
        let chunks = chunks_of(none.iter().enumerate().map(|(i, k)| (EventId(i as i64), k)));
        assert_eq!(
            chunks.iter().map(|c| (c.part, c.events.len())).collect::<Vec<_>>(),
            [(None, 64), (None, 64), (None, 2)]
        );
    }

    #[test]
    fn a_snapshot_contains_the_ones_taken_before_it() {
        assert!(snapshot_contains("10:20:", "10:20:"));
        assert!(snapshot_contains("12:25:", "10:20:12,15"), "later, its in-progress ones since committed");
        assert!(snapshot_contains("10:25:12,22", "10:20:12,15"), "12 still running in both; 22 began after");
        assert!(!snapshot_contains("10:20:12,15", "12:25:"), "older");
        assert!(!snapshot_contains("10:25:16", "10:20:12"), "16 committed before the older one, running in this one");
        assert!(!snapshot_contains("10:19:", "10:20:"), "xmax behind");
        assert!(!snapshot_contains("junk", "10:20:"));
    }

    #[test]
    fn a_mark_never_moves_back_to_an_older_view() {
        let newer = View::Postgres(Arc::from("30:31:"));
        let older = View::Postgres(Arc::from("20:21:"));
        let mark = Mark::start(&newer, StartFrom::Now);
        assert!(mark.caught_up(&older), "nothing in an older view is past the mark");
        assert_eq!(mark.after(&older, None, false), mark, "an older view passes nothing");
        let moved = mark.after(&View::Postgres(Arc::from("40:41:")), None, false);
        assert_eq!(moved.from.as_deref(), Some("40:41:"));
    }

    #[test]
    fn a_retention_longer_than_history_prunes_nothing_and_never_panics() {
        let t = now();
        // `now - Duration::MAX` used to overflow and kill the retry task.
        assert_eq!(retention_cutoff(t, Duration::MAX), None);
        assert_eq!(retention_cutoff(t, Duration::from_secs(10_000 * 366 * 86_400)), None);
        assert_eq!(retention_cutoff(t, Duration::from_secs(60)), Some(t - chrono::Duration::seconds(60)));
    }

    #[test]
    fn an_idle_position_is_written_when_far_behind_or_old() {
        let mark = |xmax: u64| Mark { from: Some(Arc::from(format!("{xmax}:{xmax}:"))), ..Mark::default() };
        let fresh = Duration::from_secs(1);
        assert!(!persist_due(&mark(1_000), fresh, &mark(1_999)), "999 transactions behind: kept in memory");
        assert!(persist_due(&mark(1_000), fresh, &mark(2_000)), "1,000 behind: written");
        let at = |id| Mark { at: Position { tx: 0, id }, ..Mark::default() };
        assert!(!persist_due(&at(0), fresh, &at(999)), "SQLite: 999 events behind");
        assert!(persist_due(&at(0), fresh, &at(1_000)));
        assert!(persist_due(&mark(1_000), Duration::from_secs(300), &mark(1_001)), "one behind, 5 minutes old");
    }

    #[test]
    fn retry_delays_past_the_year_9999_are_parked_there() {
        let def = InboxDef {
            name: "t",
            renamed_from: None,
            subject: None,
            actions: &[],
            filter: None,
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::MAX,
            timeout: InboxDef::DEFAULT_TIMEOUT,
            key: Key::Subject,
            spread: false,
            start_from: StartFrom::Now,
            handler: |_, _| Box::pin(async { Ok(()) }),
            file: file!(),
            line: line!(),
        };
        let f = failure(&def, EventId(1), 1, InboxError::retry_after(Duration::MAX, "503"));
        assert_eq!(f.next_at, crate::model::max_time());
        assert!(!f.dead);
        let f = failure(&def, EventId(1), 30, InboxError::retry("again"));
        assert!(f.next_at <= crate::model::max_time() && f.dead);
    }
}
