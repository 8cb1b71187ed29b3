//! Waking dispatchers after a commit.
//!
//! In-process, a commit bumps a [`watch`] counter every dispatcher of the store
//! listens to. Across processes (PostgreSQL), a background task of the store sends
//! `NOTIFY` on the schema's channel *after* the commit and outside the recording
//! transaction: a `NOTIFY` inside a transaction takes a database-wide lock at commit,
//! which would serialize every concurrent writer. Bursts of commits coalesce into
//! one `NOTIFY` while one is in flight.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use super::{Pool, Store};

/// The store's wake-up machinery; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Wake {
    local: Arc<watch::Sender<u64>>,
    remote: Arc<OnceLock<Arc<Notify>>>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake { local: Arc::new(watch::channel(0).0), remote: Arc::default() }
    }
}

impl Wake {
    /// A receiver that changes after every commit that recorded events.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// Wakes this process's dispatchers.
    pub(crate) fn poke(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// After a commit that recorded events: wake here, and elsewhere via `NOTIFY`.
    pub(crate) fn committed(&self, store: &Store) {
        self.poke();
        if let Pool::Postgres(pool) = &store.pool {
            let notify = self.remote.get_or_init(|| {
                let notify = Arc::new(Notify::new());
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(notifier(pool.clone(), notify.clone()));
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
/// flush, and the recording transactions keep the disk to themselves.
async fn notifier(pool: PgPool, notify: Arc<Notify>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    let mut channel: Option<String> = None;
    loop {
        // Exit once the store (the only other holder of `notify`) is gone.
        if tokio::time::timeout(Duration::from_secs(30), notify.notified()).await.is_err() {
            if Arc::strong_count(&notify) == 1 {
                return;
            }
            continue;
        }
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
                    conn.insert(c)
                }
            };
            sqlx::query("SELECT pg_notify($1, '')").bind(name).execute(&mut *c).await.map(|_| ())
        }
        .await;
        if let Err(e) = sent {
            conn = None;
            tracing::warn!(error = %e, "herald: NOTIFY failed; dispatchers fall back to polling");
        }
    }
}
