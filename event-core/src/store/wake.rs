//! Waking dispatchers after a commit.
//!
//! In-process, a commit bumps a [`watch`] counter every dispatcher of the store
//! listens to. Across processes (PostgreSQL), a background task of the store sends
//! `NOTIFY` on the schema's channel *after* the commit and outside the recording
//! transaction: a `NOTIFY` inside a transaction takes a database-wide lock at commit,
//! which would serialize every concurrent writer.
//!
//! `NOTIFY`s are rate-limited to one per [`NOTIFY_INTERVAL`]: a commit after a quiet
//! spell is announced at once (no added latency), and commits arriving faster than
//! that share the next `NOTIFY` (sent at most 5 ms after them). Without the limit a
//! single writer committing a few thousand times a second paid for a second
//! transaction on the server per commit (≈ 13 % of its throughput on a 2-core
//! machine); with it the cost is bounded at 200 tiny transactions a second, whatever
//! the commit rate.
//!
//! A dispatcher's listener ignores the notifications of its own store's notifier:
//! those commits already woke it in-process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use super::{Pool, Store};

/// The shortest time between two `NOTIFY`s of one store.
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// The store's wake-up machinery; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Wake {
    local: Arc<watch::Sender<u64>>,
    /// Bumped when a spread inbox's events were copied into chunks here.
    queued: Arc<watch::Sender<u64>>,
    remote: Arc<OnceLock<Arc<Notify>>>,
    /// Backend process id of the notifier's connection (0 until it connects).
    notifier_pid: Arc<AtomicU32>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            local: Arc::new(watch::channel(0).0),
            queued: Arc::new(watch::channel(0).0),
            remote: Arc::default(),
            notifier_pid: Arc::default(),
        }
    }
}

impl Wake {
    /// A receiver that changes after every commit that recorded events.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// How many wake-ups there were so far.
    pub(crate) fn count(&self) -> u64 {
        *self.local.borrow()
    }

    /// Wakes this process's dispatchers.
    pub(crate) fn poke(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a notification from backend `pid` was sent by this store (whose commits
    /// wake this process's dispatchers directly).
    pub(crate) fn is_own(&self, pid: u32) -> bool {
        pid != 0 && self.notifier_pid.load(Ordering::Relaxed) == pid
    }

    /// A receiver that changes after this process copied chunks of a spread inbox.
    pub(crate) fn subscribe_queued(&self) -> watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// After a spread inbox's events were copied into chunks: wakes this
    /// process's claimers, and other processes' (whose listeners wake everything).
    pub(crate) fn queued(&self, store: &Store) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
        self.notify_others(store);
    }

    /// After a commit that recorded events: wake here, and elsewhere via `NOTIFY`.
    pub(crate) fn committed(&self, store: &Store) {
        self.poke();
        self.notify_others(store);
    }

    fn notify_others(&self, store: &Store) {
        if let Pool::Postgres(pool) = &store.pool {
            let notify = self.remote.get_or_init(|| {
                let notify = Arc::new(Notify::new());
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(notifier(pool.clone(), notify.clone(), self.notifier_pid.clone()));
                }
                notify
            });
            notify.notify_one();
        }
    }
}

/// The PostgreSQL channel of the pool's schema: dispatchers of other schemas in the
/// same database are not woken by this one's events.
pub(crate) async fn channel(pool: &PgPool) -> sqlx::Result<String> {
    let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(pool).await?;
    let mut name = format!("herald_{schema}");
    name.truncate(63);
    Ok(name)
}

/// Sends the `NOTIFY`s on a connection of its own with `synchronous_commit = off`: a
/// wake-up hint needs no durability, so its commit never waits for (or adds) a WAL
/// flush, and the recording transactions keep the disk to themselves. At most one
/// `NOTIFY` per [`NOTIFY_INTERVAL`]; commits in between share the next one.
async fn notifier(pool: PgPool, notify: Arc<Notify>, pid: Arc<AtomicU32>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    let mut channel: Option<String> = None;
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        // Exit once the store (the only other holder of `notify`) is gone.
        if tokio::time::timeout(Duration::from_secs(30), notify.notified()).await.is_err() {
            if Arc::strong_count(&notify) == 1 {
                return;
            }
            continue;
        }
        if let Some(last) = last_sent
            && last.elapsed() < NOTIFY_INTERVAL
        {
            tokio::time::sleep_until(last + NOTIFY_INTERVAL).await;
            // The commits that arrived meanwhile are covered by the NOTIFY sent now.
            take_permit(&notify).await;
        }
        last_sent = Some(tokio::time::Instant::now());
        let sent = async {
            let name = match &channel {
                Some(c) => c.clone(),
                None => channel.insert(self::channel(&pool).await?).clone(),
            };
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect_with(&pool.connect_options()).await?;
                    sqlx::query("SET synchronous_commit = off").execute(&mut c).await?;
                    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut c).await?;
                    pid.store(backend as u32, Ordering::Relaxed);
                    conn.insert(c)
                }
            };
            // The payload is a snapshot taken after the commits it announces: the
            // listeners use it as their view instead of asking for one (a round trip
            // off every remote wake-up). Too long for a payload (thousands of open
            // transactions): none, and they ask.
            sqlx::query(
                "SELECT pg_notify($1, CASE WHEN length(s) <= 7000 THEN s ELSE '' END) \
                 FROM (SELECT pg_current_snapshot()::text AS s) AS v",
            )
            .bind(name)
            .execute(&mut *c)
            .await
            .map(|_| ())
        }
        .await;
        if let Err(e) = sent {
            conn = None;
            pid.store(0, Ordering::Relaxed);
            tracing::warn!(error = %crate::error::chain(&e), "herald: NOTIFY failed; dispatchers fall back to polling");
        }
    }
}

/// Consumes a stored wake-up permit, if there is one, without waiting.
async fn take_permit(notify: &Notify) {
    let notified = notify.notified();
    tokio::pin!(notified);
    std::future::poll_fn(|cx| {
        let _ = notified.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
}
