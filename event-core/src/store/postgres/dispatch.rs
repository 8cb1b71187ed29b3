//! PostgreSQL delivery state. Mirrors `sqlite/dispatch.rs`.
//!
//! A position is `(tx_id, id)`. The horizon is the newest event whose transaction
//! is older than every transaction still running (`pg_snapshot_xmin`): nothing can
//! ever commit at or below it, so a checkpoint never skips an event that commits
//! late, whatever order transactions commit in. Retry rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so several dispatchers share them without waiting.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, QueryBuilder, Row};

use super::{EVENT_COLUMNS, decode};
use crate::dispatch::{Batch, Claimed, DeadLetter, Failure, Horizon, Lease, LeaseRow, Position, Relet};
use crate::error::{Error, Result};
use crate::inbox::InboxDef;
use crate::model::{Event, EventId};

/// Two index probes on `(tx_id, id)`, whatever the statistics: `max(tx_id)` (one
/// probe at the end of the index) says whether anything is unsettled, and the
/// snapshot's xmin is written into the `WHERE` of the backward scan (a stable
/// expression the planner uses as an index bound) — never materialized in a CTE,
/// which would turn both into scans of the whole table.
pub(crate) async fn horizon(pool: &PgPool) -> Result<Horizon> {
    let row = sqlx::query(
        "SELECT h.tx, h.id, \
                COALESCE((SELECT max(tx_id) FROM herald_events) >= pg_snapshot_xmin(pg_current_snapshot()), FALSE) \
                AS unsettled \
         FROM (SELECT 1) AS one LEFT JOIN LATERAL ( \
             SELECT tx_id::text::bigint AS tx, id FROM herald_events \
             WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id DESC, id DESC LIMIT 1) AS h ON TRUE",
    )
    .fetch_one(pool)
    .await?;
    Ok(Horizon {
        safe: Position {
            tx: row.try_get::<Option<i64>, _>("tx")?.unwrap_or(0),
            id: row.try_get::<Option<i64>, _>("id")?.unwrap_or(0),
        },
        unsettled: row.try_get("unsettled")?,
    })
}

/// A new inbox that skips history remembers the current snapshot: events visible in
/// it are history, even those above the horizon.
pub(crate) async fn sync_inbox(
    pool: &PgPool,
    name: &str,
    start: Position,
    skip_history: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO herald_inboxes (name, checkpoint_tx, checkpoint_id, start_snapshot, created_at, updated_at) \
         VALUES ($1, $2, $3, CASE WHEN $5 THEN pg_current_snapshot()::text END, $4, $4) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(start.tx)
    .bind(start.id)
    .bind(now)
    .bind(skip_history)
    .execute(pool)
    .await?;
    Ok(())
}

/// Optimistic, two round trips and no transaction: read the row, decide in Rust
/// ([`LeaseRow::acquire`]), then write the lease only if the row is still exactly as
/// read. A concurrent taker makes the `UPDATE` match nothing: not ours this time.
pub(crate) async fn lease_inbox(
    pool: &PgPool,
    name: &str,
    me: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<Lease>> {
    let row = sqlx::query(
        "SELECT checkpoint_tx, checkpoint_id, lease_owner, lease_until, crash_tx, crash_id, crashes \
         FROM herald_inboxes WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let current = LeaseRow {
        checkpoint: Position { tx: row.try_get("checkpoint_tx")?, id: row.try_get("checkpoint_id")? },
        owner: row.try_get("lease_owner")?,
        until: row.try_get("lease_until")?,
        crash_at: match (row.try_get::<Option<i64>, _>("crash_tx")?, row.try_get::<Option<i64>, _>("crash_id")?) {
            (Some(tx), Some(id)) => Some(Position { tx, id }),
            _ => None,
        },
        crashes: row.try_get::<i32, _>("crashes")? as u32,
    };
    let (owner, owner_until) = (current.owner.clone(), current.until);
    let Some(lease) = current.acquire(me, now) else { return Ok(None) };
    let taken = sqlx::query(
        "UPDATE herald_inboxes SET lease_owner = $1, lease_until = $2, crash_tx = $3, crash_id = $4, crashes = $5, \
         updated_at = $6 WHERE name = $7 AND checkpoint_tx = $8 AND checkpoint_id = $9 \
         AND lease_owner IS NOT DISTINCT FROM $10 AND lease_until IS NOT DISTINCT FROM $11",
    )
    .bind(me)
    .bind(until)
    .bind(lease.crash_at.map(|p| p.tx))
    .bind(lease.crash_at.map(|p| p.id))
    .bind(lease.crashes as i32)
    .bind(now)
    .bind(name)
    .bind(lease.checkpoint.tx)
    .bind(lease.checkpoint.id)
    .bind(owner)
    .bind(owner_until)
    .execute(pool)
    .await?;
    Ok((taken.rows_affected() == 1).then_some(lease))
}

/// Takes an unowned lease back, if the row is exactly as this worker left it
/// (unowned, same checkpoint: no crash to account for), and reads the next batch, in
/// one statement and one round trip. When nothing is there for the inbox up to
/// `upto`, the same statement moves the checkpoint to `upto` and keeps no lease: an
/// inbox the new events do not concern costs one write, not a lease and a release.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relet_and_read(
    pool: &PgPool,
    def: &InboxDef,
    me: &str,
    checkpoint: Position,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    upto: Position,
    limit: usize,
) -> Result<Relet> {
    let mut q = QueryBuilder::<Postgres>::new("WITH batch AS (");
    push_batch(&mut q, def, checkpoint, upto, limit);
    q.push("), lease AS (UPDATE herald_inboxes SET lease_owner = CASE WHEN EXISTS (SELECT 1 FROM batch) THEN ");
    q.push_bind(me).push(" END, lease_until = CASE WHEN EXISTS (SELECT 1 FROM batch) THEN ").push_bind(until);
    q.push(" END, checkpoint_tx = CASE WHEN EXISTS (SELECT 1 FROM batch) THEN checkpoint_tx ELSE ").push_bind(upto.tx);
    q.push(" END, checkpoint_id = CASE WHEN EXISTS (SELECT 1 FROM batch) THEN checkpoint_id ELSE ").push_bind(upto.id);
    q.push(" END, updated_at = ").push_bind(now);
    q.push(" WHERE name = ").push_bind(def.name).push(" AND lease_owner IS NULL AND checkpoint_tx = ");
    q.push_bind(checkpoint.tx).push(" AND checkpoint_id = ").push_bind(checkpoint.id).push(" RETURNING 1) ");
    q.push(
        "SELECT l.leased, b.* FROM (SELECT count(*) AS leased FROM lease) AS l LEFT JOIN batch AS b ON l.leased = 1",
    );
    let rows = q.build().fetch_all(pool).await?;
    if rows.first().map(|r| r.try_get::<i64, _>("leased")).transpose()? != Some(1) {
        return Ok(Relet::Changed);
    }
    let mut batch = Vec::with_capacity(rows.len());
    for r in &rows {
        // No event for the inbox: the one row the join keeps has NULL columns.
        if let Some(id) = r.try_get::<Option<i64>, _>("id")? {
            batch.push((Position { tx: r.try_get("pos_tx")?, id }, decode(r)));
        }
    }
    Ok(if batch.is_empty() { Relet::Advanced } else { Relet::Leased(batch) })
}

/// Appends the next batch of `def` after `after`, up to `upto`, in commit order.
fn push_batch(q: &mut QueryBuilder<Postgres>, def: &InboxDef, after: Position, upto: Position, limit: usize) {
    q.push(format!("SELECT {EVENT_COLUMNS}, tx_id::text::bigint AS pos_tx FROM herald_events WHERE (tx_id, id) > ("));
    q.push_bind(after.tx).push("::text::xid8, ").push_bind(after.id).push(") AND (tx_id, id) <= (");
    q.push_bind(upto.tx).push("::text::xid8, ").push_bind(upto.id).push(")");
    q.push(" AND NOT pg_visible_in_snapshot(tx_id, COALESCE((SELECT start_snapshot FROM herald_inboxes WHERE name = ");
    q.push_bind(def.name).push("), '1:1:')::pg_snapshot)");
    crate::store::push_inbox_filter(q, def);
    // Bound, unlike the feed's literal limit (see `feed_query`): the plan must be made
    // for each call's range. With a literal limit PostgreSQL switched to a generic
    // plan, blind to the bounds, and noop dispatch fell from ~95k to ~16k deliveries/s.
    q.push(" ORDER BY tx_id, id LIMIT ").push_bind(limit as i64);
}

/// The next batch of `def` after `after`, up to `upto`, in commit order.
fn batch_query(prefix: &str, def: &InboxDef, after: Position, upto: Position, limit: usize) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::<Postgres>::new(prefix);
    push_batch(&mut q, def, after, upto, limit);
    q
}

pub(crate) async fn read_batch(
    pool: &PgPool,
    def: &InboxDef,
    after: Position,
    upto: Position,
    limit: usize,
) -> Result<Batch> {
    let rows = batch_query("", def, after, upto, limit).build().fetch_all(pool).await?;
    rows.iter().map(|r| Ok((Position { tx: r.try_get("pos_tx")?, id: r.try_get("id")? }, decode(r)))).collect()
}

pub(crate) async fn explain_batch(
    pool: &PgPool,
    def: &InboxDef,
    after: Position,
    upto: Position,
    limit: usize,
) -> Result<String> {
    let rows = batch_query("EXPLAIN ", def, after, upto, limit).build().fetch_all(pool).await?;
    let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

/// Moves the checkpoint and parks the failures in one transaction, if the lease is
/// still ours; `false` (and nothing written) if another worker took it.
pub(crate) async fn advance(
    pool: &PgPool,
    name: &str,
    me: &str,
    to: Position,
    renew: Option<DateTime<Utc>>,
    failures: &[Failure],
    now: DateTime<Utc>,
) -> Result<bool> {
    const MOVE: &str = "UPDATE herald_inboxes SET checkpoint_tx = $1, checkpoint_id = $2, lease_owner = $3, \
                        lease_until = $4, updated_at = $5 WHERE name = $6 AND lease_owner = $7";
    if failures.is_empty() {
        // One statement, one round trip: nothing else to keep atomic with it.
        let moved = sqlx::query(MOVE)
            .bind(to.tx)
            .bind(to.id)
            .bind(renew.map(|_| me))
            .bind(renew)
            .bind(now)
            .bind(name)
            .bind(me)
            .execute(pool)
            .await?;
        return Ok(moved.rows_affected() == 1);
    }
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(MOVE)
        .bind(to.tx)
        .bind(to.id)
        .bind(renew.map(|_| me))
        .bind(renew)
        .bind(now)
        .bind(name)
        .bind(me)
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    if !failures.is_empty() {
        let ids: Vec<i64> = failures.iter().map(|f| f.event_id.0).collect();
        let attempts: Vec<i32> = failures.iter().map(|f| f.attempts as i32).collect();
        let next: Vec<DateTime<Utc>> = failures.iter().map(|f| f.next_at).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
        sqlx::query(
            "INSERT INTO herald_deliveries (inbox, event_id, attempts, next_at, last_error, dead, created_at, updated_at) \
             SELECT $1, e, a, n, m, d, $7, $7 FROM UNNEST($2::int8[], $3::int4[], $4::timestamptz[], $5::text[], $6::bool[]) \
             AS t(e, a, n, m, d) ON CONFLICT (inbox, event_id) DO NOTHING",
        )
        .bind(name)
        .bind(ids)
        .bind(attempts)
        .bind(next)
        .bind(errors)
        .bind(dead)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn claim_retries(
    pool: &PgPool,
    me: &str,
    inboxes: &[&str],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Claimed>> {
    let rows = sqlx::query(
        "UPDATE herald_deliveries d SET lease_owner = $1, lease_until = $2, \
         expiries = d.expiries + CASE WHEN d.lease_until IS NULL THEN 0 ELSE 1 END \
         FROM (SELECT id FROM herald_deliveries WHERE NOT dead AND next_at <= $3 \
               AND (lease_until IS NULL OR lease_until < $3) AND inbox = ANY($5) \
               ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) c \
         WHERE d.id = c.id RETURNING d.id, d.inbox, d.event_id, d.attempts, d.expiries",
    )
    .bind(me)
    .bind(until)
    .bind(now)
    .bind(limit as i64)
    .bind(inboxes)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids: Vec<i64> = rows.iter().map(|r| r.try_get("event_id")).collect::<Result<_, _>>()?;
    let events =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id = ANY($1)")))
            .bind(&event_ids)
            .fetch_all(pool)
            .await?;
    // Each row decoded alone: an unreadable event is that delivery's problem only.
    let events: std::collections::HashMap<i64, std::result::Result<Event, String>> = events
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("id")?, decode(r).map_err(|e| e.to_string()))))
        .collect::<Result<_>>()?;
    rows.iter()
        .map(|r| {
            let event_id: i64 = r.try_get("event_id")?;
            let event = match events.get(&event_id) {
                Some(Ok(event)) => Ok(event.clone()),
                Some(Err(reason)) => Err(Error::Corrupt { id: event_id, reason: reason.clone() }),
                None => Err(Error::Corrupt { id: event_id, reason: "delivery of a missing event".into() }),
            };
            Ok(Claimed {
                id: r.try_get("id")?,
                inbox: r.try_get("inbox")?,
                event_id: EventId(event_id),
                event,
                attempts: r.try_get::<i32, _>("attempts")? as u32,
                expiries: r.try_get::<i32, _>("expiries")? as u32,
            })
        })
        .collect()
}

pub(crate) async fn complete_retries(
    pool: &PgPool,
    me: &str,
    succeeded: &[i64],
    failed: &[(i64, Failure)],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if !succeeded.is_empty() {
        sqlx::query("DELETE FROM herald_deliveries WHERE id = ANY($1) AND lease_owner = $2")
            .bind(succeeded)
            .bind(me)
            .execute(&mut *tx)
            .await?;
    }
    for (id, f) in failed {
        sqlx::query(
            "UPDATE herald_deliveries SET attempts = $1, next_at = $2, last_error = $3, dead = $4, lease_owner = NULL, \
             lease_until = NULL, updated_at = $5 WHERE id = $6 AND lease_owner = $7",
        )
        .bind(f.attempts as i32)
        .bind(f.next_at)
        .bind(&f.error)
        .bind(f.dead)
        .bind(now)
        .bind(id)
        .bind(me)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn release(pool: &PgPool, me: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE herald_inboxes SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE herald_deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn dead_letters(pool: &PgPool, inbox: Option<&str>) -> Result<Vec<DeadLetter>> {
    let rows = sqlx::query(
        "SELECT id, inbox, event_id, attempts, expiries, last_error, updated_at FROM herald_deliveries \
         WHERE dead AND ($1::text IS NULL OR inbox = $1) ORDER BY updated_at DESC, id DESC",
    )
    .bind(inbox)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: r.try_get("id")?,
                inbox: r.try_get("inbox")?,
                event_id: EventId(r.try_get("event_id")?),
                attempts: r.try_get::<i32, _>("attempts")? as u32,
                expiries: r.try_get::<i32, _>("expiries")? as u32,
                last_error: r.try_get("last_error")?,
                failed_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}

pub(crate) async fn retry_dead(pool: &PgPool, id: Option<i64>, inbox: Option<&str>, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE herald_deliveries SET dead = FALSE, attempts = 0, expiries = 0, next_at = $1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE dead AND ($2::int8 IS NULL OR id = $2) \
         AND ($3::text IS NULL OR inbox = $3)",
    )
    .bind(now)
    .bind(id)
    .bind(inbox)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn prune_dead(pool: &PgPool, before: DateTime<Utc>) -> Result<u64> {
    let done =
        sqlx::query("DELETE FROM herald_deliveries WHERE dead AND updated_at <= $1").bind(before).execute(pool).await?;
    Ok(done.rows_affected())
}

pub(crate) async fn inbox_rows(pool: &PgPool) -> Result<Vec<(String, Position, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT COALESCE(i.name, d.inbox) AS name, COALESCE(i.checkpoint_tx, 0) AS tx, COALESCE(i.checkpoint_id, 0) AS id, \
         COALESCE(d.retrying, 0) AS retrying, COALESCE(d.dead, 0) AS dead \
         FROM herald_inboxes i FULL JOIN (SELECT inbox, COUNT(*) FILTER (WHERE NOT dead) AS retrying, \
         COUNT(*) FILTER (WHERE dead) AS dead FROM herald_deliveries GROUP BY inbox) d ON d.inbox = i.name ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("name")?,
                Position { tx: r.try_get("tx")?, id: r.try_get("id")? },
                r.try_get::<i64, _>("retrying")?,
                r.try_get::<i64, _>("dead")?,
            ))
        })
        .collect()
}

pub(crate) async fn pending(pool: &PgPool, def: &InboxDef, after: Position, upto: Position) -> Result<i64> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM herald_events WHERE (tx_id, id) > (");
    q.push_bind(after.tx).push("::text::xid8, ").push_bind(after.id).push(") AND (tx_id, id) <= (");
    q.push_bind(upto.tx).push("::text::xid8, ").push_bind(upto.id).push(")");
    q.push(" AND NOT pg_visible_in_snapshot(tx_id, COALESCE((SELECT start_snapshot FROM herald_inboxes WHERE name = ");
    q.push_bind(def.name).push("), '1:1:')::pg_snapshot)");
    crate::store::push_inbox_filter(&mut q, def);
    Ok(q.build().fetch_one(pool).await?.try_get(0)?)
}
