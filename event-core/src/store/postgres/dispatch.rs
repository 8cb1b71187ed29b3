//! PostgreSQL delivery state. Mirrors `sqlite/dispatch.rs`.
//!
//! Inboxes read by *snapshot pairs*, as PgQ does: a batch holds the events visible in
//! the snapshot closing the pair and not in the one opening it. An event becomes
//! visible when its own transaction commits, so a long or prepared transaction, in
//! this database or another, holds back its own events only; and no event is ever
//! skipped, whatever order transactions commit in (a late committer lands in the pair
//! in which it became visible). Within a pair, events go in `(tx_id, id)` order. The
//! events of a pair are those of the transactions in progress at its opening snapshot
//! (its `xip` list: a few index probes) and those that started after it (one range
//! of the `(tx_id, id)` index), so a read walks the index in order and stops at its
//! `LIMIT`. Retry rows are claimed with `FOR UPDATE SKIP LOCKED`, so several
//! dispatchers share them without waiting.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::{EVENT_COLUMNS, decode};
use crate::dispatch::{
    BlockedKey, Chunk, ChunkClaim, ChunkItem, ChunkRow, Claimed, ClaimedChunk, DeadLetter, Failure, LeaseRow, Mark,
    Position, Relet, Scan, Taking, View,
};
use crate::error::{Error, Result};
use crate::inbox::InboxDef;
use crate::model::EventId;

/// The current snapshot: one query, no table read.
pub(crate) async fn view(pool: &PgPool) -> Result<View> {
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(pool).await?;
    Ok(View::Postgres(Arc::from(snapshot)))
}

/// Refuses a database restored or moved from another cluster: its events and inbox
/// positions refer to transaction ids at or beyond this server's next one, which no
/// snapshot of this server can see past. Two index probes and a scan of the (small)
/// inbox table.
pub(crate) async fn check_transaction_ids(conn: impl sqlx::PgExecutor<'_>) -> Result<()> {
    let (event, mark, next): (Option<String>, Option<String>, String) = sqlx::query_as(
        "SELECT (SELECT tx_id::text FROM herald_events ORDER BY tx_id DESC, id DESC LIMIT 1), \
                (SELECT max(pg_snapshot_xmax(s::pg_snapshot)::text::numeric)::text FROM herald_inboxes, \
                 LATERAL (VALUES (snap_from), (snap_to)) AS v(s) WHERE s IS NOT NULL), \
                pg_snapshot_xmax(pg_current_snapshot())::text",
    )
    .fetch_one(conn)
    .await?;
    let parse = |x: Option<String>| x.and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let next = parse(Some(next));
    // An event's transaction is below the next id; a snapshot's xmax at most equal to it.
    let highest = parse(event).max(parse(mark).saturating_sub(1));
    if highest >= next {
        return Err(Error::TransactionIdsBehind { highest, next, epoch: (highest >> 32) + 1 });
    }
    Ok(())
}

pub(crate) async fn rename_inbox(pool: &PgPool, from: &str, to: &str, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE herald_inboxes SET name = $2 WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM herald_inboxes WHERE name = $2)",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 1 {
        sqlx::query("UPDATE herald_deliveries SET inbox = $2 WHERE inbox = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE herald_chunks SET inbox = $2 WHERE inbox = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO herald_inbox_renames (name, renamed_to, renamed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET renamed_to = $2, renamed_at = $3",
        )
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Renamed back: the name lives again.
        sqlx::query("DELETE FROM herald_inbox_renames WHERE name = $1").bind(to).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(moved.rows_affected() == 1)
}

/// Writers of `herald_events` (its `RowExclusiveLock`) with a transaction id, not
/// committed yet: live backends, and prepared transactions (whose locks stay behind
/// with no process, found through their transaction-id lock).
pub(crate) async fn open_writers(pool: &PgPool) -> Result<Vec<crate::dispatch::OpenWriter>> {
    let rows = sqlx::query(
        "SELECT a.pid, a.backend_xid::text AS xid, a.xact_start AS started, a.query_start, a.state, \
                NULL::text AS gid \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'relation' AND l.relation = 'herald_events'::regclass \
           AND l.mode = 'RowExclusiveLock' AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid() \
         UNION ALL \
         SELECT NULL, p.transaction::text, p.prepared, NULL, 'prepared', p.gid \
         FROM pg_prepared_xacts p \
         JOIN pg_locks t ON t.locktype = 'transactionid' AND t.transactionid = p.transaction \
         JOIN pg_locks l ON l.virtualtransaction = t.virtualtransaction AND l.locktype = 'relation' \
           AND l.relation = 'herald_events'::regclass AND l.mode = 'RowExclusiveLock' \
         WHERE p.database = current_database() \
         ORDER BY started",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let xid: String = r.try_get("xid")?;
            Ok(crate::dispatch::OpenWriter {
                pid: r.try_get("pid")?,
                xid: xid.parse().unwrap_or_default(),
                started: r.try_get::<Option<DateTime<Utc>>, _>("started")?.unwrap_or_default(),
                query_start: r.try_get("query_start")?,
                state: r.try_get::<Option<String>, _>("state")?.unwrap_or_default(),
                gid: r.try_get("gid")?,
            })
        })
        .collect()
}

pub(crate) async fn retired_inboxes(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM herald_inbox_renames").fetch_all(pool).await?)
}

pub(crate) async fn sync_inbox(pool: &PgPool, name: &str, start: &Mark, now: DateTime<Utc>) -> Result<Option<String>> {
    let retired: Option<String> = sqlx::query_scalar(
        "WITH retired AS (SELECT renamed_to FROM herald_inbox_renames WHERE name = $1 \
                          AND NOT EXISTS (SELECT 1 FROM herald_inboxes WHERE name = $1)), \
              created AS (INSERT INTO herald_inboxes (name, checkpoint_tx, checkpoint_id, snap_from, created_at, \
                          updated_at) SELECT $1, 0, 0, $2, $3, $3 WHERE NOT EXISTS (SELECT 1 FROM retired) \
                          ON CONFLICT (name) DO NOTHING) \
         SELECT renamed_to FROM retired",
    )
    .bind(name)
    .bind(start.from.as_deref().unwrap_or(crate::dispatch::EMPTY_SNAPSHOT))
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(retired)
}

/// The mark stored in an inbox row (or its crash columns, with `prefix` "crash_").
fn mark(row: &PgRow, from: &str, to: &str, tx: &str, id: &str) -> Result<Option<Mark>> {
    let from: Option<String> = row.try_get(from)?;
    let (tx, id): (Option<i64>, Option<i64>) = (row.try_get(tx)?, row.try_get(id)?);
    Ok(match (from, tx, id) {
        (Some(from), Some(tx), Some(id)) => Some(Mark {
            from: Some(Arc::from(from)),
            to: row.try_get::<Option<String>, _>(to)?.map(Arc::from),
            at: Position { tx, id },
        }),
        _ => None,
    })
}

fn checkpoint(row: &PgRow) -> Result<Mark> {
    mark(row, "snap_from", "snap_to", "checkpoint_tx", "checkpoint_id")?
        .ok_or_else(|| Error::InvalidConfig("an inbox row without a checkpoint".into()))
}

/// Optimistic, two round trips and no transaction: read the row, decide in Rust
/// ([`LeaseRow::acquire`]), then write the lease only if the row is still exactly as
/// read (its epoch unchanged). A concurrent taker makes the `UPDATE` match nothing:
/// not ours this time. Lease times are the database's clock, never a worker's.
pub(crate) async fn lease_inbox(
    pool: &PgPool,
    name: &str,
    me: &str,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Taking> {
    let row = sqlx::query(
        "SELECT snap_from, snap_to, checkpoint_tx, checkpoint_id, lease_owner, \
         COALESCE(lease_until > clock_timestamp(), FALSE) AS live, lease_epoch, \
         crash_from, crash_to, crash_tx, crash_id, crashes FROM herald_inboxes WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(Taking::Held) };
    let current = LeaseRow {
        checkpoint: checkpoint(&row)?,
        owner: row.try_get("lease_owner")?,
        live: row.try_get("live")?,
        crash_at: mark(&row, "crash_from", "crash_to", "crash_tx", "crash_id")?,
        crashes: row.try_get::<i32, _>("crashes")? as u32,
        epoch: row.try_get("lease_epoch")?,
    };
    let owner = current.owner.clone();
    if current.owner.is_none() {
        return Ok(Taking::Free(current.checkpoint));
    }
    let Some(taken) = current.acquire(me) else { return Ok(Taking::Held) };
    let crash = taken.crash_at.as_ref();
    let done = sqlx::query(
        "UPDATE herald_inboxes SET lease_owner = $1, lease_until = clock_timestamp() + make_interval(secs => $2), \
         crash_tx = $3, crash_id = $4, crashes = $5, crash_from = $11, crash_to = $12, updated_at = $6, \
         lease_epoch = $13 WHERE name = $7 AND lease_epoch = $14 AND checkpoint_tx = $8 AND checkpoint_id = $9 \
         AND lease_owner IS NOT DISTINCT FROM $10",
    )
    .bind(me)
    .bind(lease.as_secs_f64())
    .bind(crash.map(|m| m.at.tx))
    .bind(crash.map(|m| m.at.id))
    .bind(taken.crashes as i32)
    .bind(now)
    .bind(name)
    .bind(taken.checkpoint.at.tx)
    .bind(taken.checkpoint.at.id)
    .bind(owner)
    .bind(crash.and_then(|m| m.from.as_deref()))
    .bind(crash.and_then(|m| m.to.as_deref()))
    .bind(taken.epoch)
    .bind(taken.epoch - 1)
    .execute(pool)
    .await?;
    Ok(if done.rows_affected() == 1 { Taking::Leased(taken) } else { Taking::Held })
}

/// Extends the lease `me` holds at `epoch`, by the database's clock; never takes one.
pub(crate) async fn renew_lease(
    pool: &PgPool,
    name: &str,
    me: &str,
    epoch: i64,
    lease: std::time::Duration,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE herald_inboxes SET lease_until = clock_timestamp() + make_interval(secs => $1) \
         WHERE name = $2 AND lease_owner = $3 AND lease_epoch = $4",
    )
    .bind(lease.as_secs_f64())
    .bind(name)
    .bind(me)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Appends `AND` terms matching the row's checkpoint columns to `mark`.
fn push_mark_is(q: &mut QueryBuilder<Postgres>, mark: &Mark) {
    q.push(" AND checkpoint_tx = ").push_bind(mark.at.tx).push(" AND checkpoint_id = ").push_bind(mark.at.id);
    q.push(" AND snap_from = ").push_bind(mark.from.as_deref().unwrap_or_default().to_owned());
    q.push(" AND snap_to IS NOT DISTINCT FROM ").push_bind(mark.to.as_deref().map(str::to_owned));
}

/// Takes an unowned lease back, if the row is exactly as this worker left it
/// (unowned, same checkpoint: no crash to account for), and reads the next batch, in
/// one statement and one round trip. When the read finds nothing for the inbox up to
/// `view`, the same statement moves the checkpoint to `passed` and keeps no lease: an
/// inbox the new events do not concern costs one write, not a lease and a release.
/// A full read with nothing for the inbox takes and writes nothing
/// ([`Relet::Skipped`]): the caller reads on from where it stopped.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relet_and_read(
    pool: &PgPool,
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
    const WANTED: &str = "EXISTS (SELECT 1 FROM batch WHERE wanted)";
    let secs = lease.as_secs_f64();
    let mut q = QueryBuilder::<Postgres>::new("WITH batch AS (");
    push_batch(&mut q, def, from, view, limit);
    let Some(passed) = passed else {
        // Nothing is written unless there is a batch: the row is only leased then.
        q.push("), lease AS (UPDATE herald_inboxes SET lease_owner = ").push_bind(me);
        q.push(", lease_until = clock_timestamp() + make_interval(secs => ").push_bind(secs);
        q.push("), lease_epoch = lease_epoch + 1, updated_at = ").push_bind(now);
        q.push(" WHERE name = ").push_bind(def.name).push(format!(" AND lease_owner IS NULL AND {WANTED}"));
        push_mark_is(&mut q, checkpoint);
        q.push(
            " RETURNING lease_epoch) SELECT (SELECT max(lease_epoch) FROM lease) AS epoch, b.* \
             FROM (SELECT 1) AS one LEFT JOIN batch AS b ON TRUE",
        );
        let rows = q.build().fetch_all(pool).await?;
        let scan = scan_of(&rows)?;
        if scan.events.is_empty() {
            return Ok(if scan.scanned >= limit { Relet::Skipped(scan) } else { Relet::Empty });
        }
        let epoch = rows.first().map(|r| r.try_get::<Option<i64>, _>("epoch")).transpose()?.flatten();
        let Some(epoch) = epoch else { return Ok(Relet::Changed) };
        return Ok(Relet::Leased(scan, epoch));
    };
    q.push(format!("), lease AS (UPDATE herald_inboxes SET lease_owner = CASE WHEN {WANTED} THEN "));
    q.push_bind(me).push(format!(" END, lease_until = CASE WHEN {WANTED} THEN clock_timestamp() + "));
    q.push("make_interval(secs => ").push_bind(secs).push(")");
    q.push(format!(" END, lease_epoch = lease_epoch + CASE WHEN {WANTED} THEN 1 ELSE 0"));
    let keep_or = |q: &mut QueryBuilder<Postgres>, column: &str| {
        q.push(format!(" END, {column} = CASE WHEN {WANTED} THEN {column} ELSE "));
    };
    keep_or(&mut q, "checkpoint_tx");
    q.push_bind(passed.at.tx);
    keep_or(&mut q, "checkpoint_id");
    q.push_bind(passed.at.id);
    keep_or(&mut q, "snap_from");
    q.push_bind(passed.from.as_deref().unwrap_or_default().to_owned());
    keep_or(&mut q, "snap_to");
    q.push_bind(passed.to.as_deref().map(str::to_owned));
    q.push(" END, updated_at = ").push_bind(now);
    q.push(" WHERE name = ").push_bind(def.name).push(" AND lease_owner IS NULL");
    // A full read with nothing wanted can pass nothing beyond it: no write.
    q.push(format!(" AND ({WANTED} OR (SELECT count(*) FROM batch) < "));
    q.push_bind(limit as i64).push(")");
    push_mark_is(&mut q, checkpoint);
    q.push(" RETURNING lease_epoch) ");
    q.push(
        "SELECT l.leased, l.epoch, b.* FROM (SELECT count(*) AS leased, max(lease_epoch) AS epoch FROM lease) AS l \
         LEFT JOIN batch AS b ON TRUE",
    );
    let rows = q.build().fetch_all(pool).await?;
    let scan = scan_of(&rows)?;
    if scan.events.is_empty() && scan.scanned >= limit {
        return Ok(Relet::Skipped(scan));
    }
    if rows.first().map(|r| r.try_get::<i64, _>("leased")).transpose()? != Some(1) {
        return Ok(Relet::Changed);
    }
    let epoch = rows.first().map(|r| r.try_get::<Option<i64>, _>("epoch")).transpose()?.flatten().unwrap_or_default();
    Ok(if scan.events.is_empty() { Relet::Advanced } else { Relet::Leased(scan, epoch) })
}

/// What a batch read returned: every event looked at comes back (a few bytes more for
/// those not wanted; no window functions to plan), the wanted ones decoded. No row at
/// all (a join's row of NULLs): nothing there.
fn scan_of(rows: &[PgRow]) -> Result<Scan> {
    let mut scan = Scan::default();
    for r in rows {
        let Some(id) = r.try_get::<Option<i64>, _>("id")? else { continue };
        let pos = Position { tx: r.try_get("pos_tx")?, id };
        if r.try_get::<Option<bool>, _>("wanted")?.unwrap_or(false) {
            scan.events.push((pos, decode(r)));
        }
        scan.last = Some(pos);
        scan.scanned += 1;
    }
    Ok(scan)
}

/// Appends `(TRUE AND …)`: whether an event is one `def` wants (subject, actions).
/// Computed per row of the read, never a condition of its `WHERE`: the read's plan
/// (an ordered walk of the position index) must not depend on how many events the
/// planner believes match.
fn push_wanted(q: &mut QueryBuilder<Postgres>, def: &InboxDef) {
    q.push("(TRUE");
    if let Some(subject) = def.subject {
        q.push(" AND subject_type = ").push_bind(subject);
    }
    if !def.actions.is_empty() {
        q.push(" AND action IN (");
        let mut list = q.separated(", ");
        for a in def.actions {
            list.push_bind(*a);
        }
        q.push(")");
    }
    q.push(")");
}

/// Appends one half of a pair's read: the next `limit` events in `range`, visible in
/// `to`, after `after` in `(tx_id, id)` order, each with whether `def` wants it.
fn push_half(
    q: &mut QueryBuilder<Postgres>,
    def: &InboxDef,
    range: impl FnOnce(&mut QueryBuilder<Postgres>),
    to: &str,
    after: Option<Position>,
    limit: usize,
) {
    q.push(format!("SELECT {EVENT_COLUMNS}, tx_id, tx_id::text::bigint AS pos_tx, "));
    push_wanted(q, def);
    q.push(" AS wanted FROM herald_events WHERE ");
    range(q);
    // One lower bound only: given a scalar bound and a row comparison, the index scan
    // started from the row comparison's position, which at the start of a pair is
    // (0, 0), and walked the whole index up to the range (39 ms at 1M events).
    if let Some(after) = after {
        q.push(" AND (tx_id, id) > (").push_bind(after.tx).push("::text::xid8, ").push_bind(after.id).push(")");
    }
    q.push(" AND pg_visible_in_snapshot(tx_id, ").push_bind(to.to_owned()).push("::pg_snapshot)");
    // Bound, unlike the feed's literal limit (see `feed_query`): the plan must be made
    // for each call's range. With a literal limit PostgreSQL switched to a generic
    // plan, blind to the bounds, and noop dispatch fell from ~95k to ~16k deliveries/s.
    q.push(" ORDER BY tx_id, id LIMIT ").push_bind(limit as i64);
}

/// Appends the next read of `def` after `after`: the next `limit` events of the pair
/// from `after.from` to `after.to` (or to `view` when no pair is open yet), in
/// `(tx_id, id)` order, wanted or not, each with whether the inbox wants it. The
/// `WHERE` holds positions only, so every plan is
/// an ordered walk of `herald_events_position` that stops at the limit: filtering by
/// subject in it let PostgreSQL's first five (custom) plans per pooled connection
/// believe 0.5 % of the rows matched and scan and sort the whole table instead
/// (13-18 ms a read, 0.3-0.7x a raw queue loop when measured from outside).
///
/// Two halves: transactions in progress at `from` (its `xip` list, all below its
/// `xmax`), then those that started at or after `from`'s `xmax`, up to `to`'s.
fn push_batch(q: &mut QueryBuilder<Postgres>, def: &InboxDef, after: &Mark, view: &View, limit: usize) {
    let from = after.from.as_deref().unwrap_or(crate::dispatch::EMPTY_SNAPSHOT).to_owned();
    let to = after.pair_end(view).to_owned();
    let xip = crate::dispatch::snapshot_xip(&from);
    let has_xip = !xip.is_empty();
    // Where the read resumes: nowhere at the start of a pair; in the range half only
    // when past `from`'s xmax (below it, `tx_id >= xmax` is the bound).
    let resume = (after.at != Position::default()).then_some(after.at);
    let xmax = crate::dispatch::snapshot_xmax(&from);
    let resume_range = resume.filter(|p| u64::try_from(p.tx).is_ok_and(|tx| tx >= xmax));
    if has_xip {
        // The xip list is bound as an array, so the probes are index lookups whatever
        // the statistics (a sub-select made the planner scan the table).
        q.push("(");
        push_half(
            q,
            def,
            |q| {
                q.push("tx_id = ANY(").push_bind(xip).push("::text[]::xid8[])");
            },
            &to,
            resume,
            limit,
        );
        q.push(") UNION ALL (");
    }
    // No upper bound: visible in `to` implies below `to`'s xmax, and an open range
    // keeps the estimate large, so the ordered walk stopping at the limit is always the
    // cheapest plan. With a bound, statistics taken while the table was small made the
    // range look like a few rows: a bitmap scan of all of them and a sort (0.3x).
    push_half(
        q,
        def,
        |q| {
            if resume_range.is_none() {
                q.push("tx_id >= pg_snapshot_xmax(").push_bind(from).push("::pg_snapshot)");
            } else {
                q.push("TRUE");
            }
        },
        &to,
        resume_range,
        limit,
    );
    if has_xip {
        // Every xip transaction is below `from`'s xmax, so the halves come in order
        // (a merge of two ordered walks, no sort).
        q.push(") ORDER BY tx_id, id LIMIT ").push_bind(limit as i64);
    }
}

/// The next read of `def` after `after`, up to `view`, in commit order.
fn batch_query(prefix: &str, def: &InboxDef, after: &Mark, view: &View, limit: usize) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::<Postgres>::new(prefix);
    push_batch(&mut q, def, after, view, limit);
    q
}

pub(crate) async fn read_batch(pool: &PgPool, def: &InboxDef, after: &Mark, view: &View, limit: usize) -> Result<Scan> {
    let rows = batch_query("", def, after, view, limit).build().fetch_all(pool).await?;
    scan_of(&rows)
}

pub(crate) async fn explain_batch(
    pool: &PgPool,
    def: &InboxDef,
    after: &Mark,
    view: &View,
    limit: usize,
) -> Result<String> {
    let rows = batch_query("EXPLAIN ", def, after, view, limit).build().fetch_all(pool).await?;
    let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

/// Moves the checkpoint and parks the failures in one transaction, if the lease is
/// still ours; `false` (and nothing written) if another worker took it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn advance(
    pool: &PgPool,
    name: &str,
    me: &str,
    epoch: i64,
    to: &Mark,
    renew: Option<std::time::Duration>,
    failures: &[Failure],
    chunks: &[Chunk],
    now: DateTime<Utc>,
) -> Result<bool> {
    // Only the holder of the current epoch moves the checkpoint: a worker that lost
    // its lease (it stalled past it, another took over and moved on) writes nothing.
    const MOVE: &str = "UPDATE herald_inboxes SET checkpoint_tx = $1, checkpoint_id = $2, lease_owner = $3, \
                        lease_until = clock_timestamp() + make_interval(secs => $4), updated_at = $5, \
                        snap_from = $8, snap_to = $9 WHERE name = $6 AND lease_owner = $7 AND lease_epoch = $10";
    let bind_move = |q: sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>| {
        q.bind(to.at.tx)
            .bind(to.at.id)
            .bind(renew.map(|_| me.to_owned()))
            .bind(renew.map(|lease| lease.as_secs_f64()))
            .bind(now)
            .bind(name.to_owned())
            .bind(me.to_owned())
            .bind(to.from.as_deref().unwrap_or_default().to_owned())
            .bind(to.to.as_deref().map(str::to_owned))
            .bind(epoch)
    };
    if failures.is_empty() && chunks.is_empty() {
        // One statement, one round trip: nothing else to keep atomic with it.
        let moved = bind_move(sqlx::query(MOVE)).execute(pool).await?;
        return Ok(moved.rows_affected() == 1);
    }
    let ids: Vec<i64> = failures.iter().map(|f| f.event_id.0).collect();
    let attempts: Vec<i32> = failures.iter().map(|f| f.attempts as i32).collect();
    let next: Vec<DateTime<Utc>> = failures.iter().map(|f| f.next_at).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let dead: Vec<bool> = failures.iter().map(|f| f.dead).collect();
    let keys: Vec<Option<&str>> = failures.iter().map(|f| f.key.as_deref()).collect();
    // Chunks flattened: each event with its chunk's number and partition.
    let mut chunk_of: Vec<i32> = Vec::new();
    let mut part_of: Vec<Option<i32>> = Vec::new();
    let (mut copied, mut copied_keys): (Vec<i64>, Vec<Option<&str>>) = (Vec::new(), Vec::new());
    for (n, c) in chunks.iter().enumerate() {
        for (e, k) in c.events.iter().zip(&c.keys) {
            chunk_of.push(n as i32);
            part_of.push(c.part);
            copied.push(*e);
            copied_keys.push(k.as_deref());
        }
    }
    // Still one statement (one round trip, one commit): the rows and chunks are
    // written only if the checkpoint moved, in the order given (commit order: the
    // rows of one key, and the chunks of one partition, are claimed oldest first).
    let sql = format!(
        "WITH moved AS ({MOVE} RETURNING 1), \
         parked AS (INSERT INTO herald_deliveries (inbox, event_id, attempts, next_at, last_error, dead, key, \
         created_at, updated_at) SELECT $6, e, a, n, m, d, k, $5, $5 FROM UNNEST($11::int8[], $12::int4[], \
         $13::timestamptz[], $14::text[], $15::bool[], $16::text[]) WITH ORDINALITY AS t(e, a, n, m, d, k, o) \
         WHERE EXISTS (SELECT 1 FROM moved) ORDER BY o ON CONFLICT (inbox, event_id) DO NOTHING), \
         chunked AS (INSERT INTO herald_chunks (inbox, part, events, keys, created_at) \
         SELECT $6, p, array_agg(e ORDER BY o), array_agg(k ORDER BY o), $5 FROM UNNEST($17::int4[], $18::int4[], \
         $19::int8[], $20::text[]) WITH ORDINALITY AS t(c, p, e, k, o) WHERE EXISTS (SELECT 1 FROM moved) \
         GROUP BY c, p ORDER BY c) \
         SELECT count(*) FROM moved"
    );
    let moved: i64 = bind_move(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(ids)
        .bind(attempts)
        .bind(next)
        .bind(errors)
        .bind(dead)
        .bind(keys)
        .bind(chunk_of)
        .bind(part_of)
        .bind(copied)
        .bind(copied_keys)
        .try_map(|row: sqlx::postgres::PgRow| row.try_get::<i64, _>(0))
        .fetch_one(pool)
        .await?;
    Ok(moved == 1)
}

pub(crate) async fn claim_retries(
    pool: &PgPool,
    me: &str,
    inboxes: &[&str],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Claimed>> {
    // One statement: the claim and its events (a second round trip per claim cost
    // slow inboxes about a tenth of their throughput).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH c AS (UPDATE herald_deliveries d SET lease_owner = $1, lease_until = $2, next_at = $2, \
         expiries = d.expiries + CASE WHEN d.lease_until IS NULL THEN 0 ELSE 1 END \
         FROM (SELECT id FROM herald_deliveries r WHERE NOT dead AND next_at <= $3 \
               AND (lease_until IS NULL OR lease_until < $3) AND inbox = ANY($5) \
               AND (key IS NULL OR NOT EXISTS (SELECT 1 FROM herald_deliveries h WHERE h.inbox = r.inbox \
                    AND h.key = r.key AND NOT h.dead AND h.id < r.id)) \
               ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) c \
         WHERE d.id = c.id RETURNING d.id AS delivery, d.event_id, d.attempts, d.expiries, d.key AS delivery_key, \
         (d.key IS NOT NULL AND EXISTS (SELECT 1 FROM herald_deliveries n WHERE n.inbox = d.inbox AND n.key = d.key \
          AND NOT n.dead AND n.id > d.id)) AS has_next) \
         SELECT c.delivery, c.event_id, c.attempts, c.expiries, c.delivery_key, c.has_next, {} \
         FROM c LEFT JOIN herald_events e ON e.id = c.event_id",
        joined_event_columns()
    )))
    .bind(me)
    .bind(until)
    .bind(now)
    .bind(limit as i64)
    .bind(inboxes)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let event_id: i64 = r.try_get("event_id")?;
            let event = joined_event(r, event_id)?;
            Ok(Claimed {
                id: r.try_get("delivery")?,
                event_id: EventId(event_id),
                event,
                attempts: r.try_get::<i32, _>("attempts")? as u32,
                expiries: r.try_get::<i32, _>("expiries")? as u32,
                key: r.try_get("delivery_key")?,
                next: r.try_get("has_next")?,
            })
        })
        .collect()
}

/// The event columns of `herald_events e`, for a join.
fn joined_event_columns() -> String {
    EVENT_COLUMNS.split(", ").map(|col| format!("e.{col}")).collect::<Vec<_>>().join(", ")
}

/// A claimed row's event (left-joined): decoded alone, so an unreadable event is
/// that delivery's problem only.
fn joined_event(r: &PgRow, event_id: i64) -> Result<Result<crate::model::Event>> {
    Ok(match r.try_get::<Option<i64>, _>("id")? {
        Some(_) => decode(r).map_err(|e| match e {
            e @ Error::Corrupt { .. } => e,
            other => Error::Corrupt { id: event_id, reason: other.to_string() },
        }),
        None => Err(Error::Corrupt { id: event_id, reason: "delivery of a missing event".into() }),
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn claim_chunks(
    pool: &PgPool,
    me: &str,
    inbox: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
    done: &[i64],
    read: bool,
) -> Result<ChunkClaim> {
    // One statement: the chunks this worker finished deleted, the split of dead
    // workers' chunks, the claim, the events with whether a live row of their key
    // holds them back, and whether rows are claimable. What the statement deletes or
    // inserts is not seen by the rest of it: the next chunk of a partition whose
    // chunk it deletes or splits is claimed next time (behind the split's rows).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH done AS (DELETE FROM herald_chunks WHERE id = ANY($7) AND lease_owner = $1), \
         split AS (DELETE FROM herald_chunks WHERE id IN (SELECT id FROM herald_chunks WHERE inbox = $5 \
           AND lease_until < $3 AND id <> ALL($7) FOR UPDATE SKIP LOCKED) RETURNING id, events, keys), \
         respread AS (INSERT INTO herald_deliveries (inbox, event_id, attempts, expiries, next_at, last_error, dead, \
           key, created_at, updated_at) SELECT $5, t.e, 0, 1, $3, $6, FALSE, t.k, $3, $3 \
           FROM split s CROSS JOIN LATERAL UNNEST(s.events, s.keys) WITH ORDINALITY AS t(e, k, o) \
           ORDER BY s.id, t.o ON CONFLICT (inbox, event_id) DO NOTHING), \
         c AS (UPDATE herald_chunks k SET lease_owner = $1, lease_until = $2 \
           FROM (SELECT id FROM herald_chunks r WHERE inbox = $5 AND lease_owner IS NULL \
                 AND (part IS NULL OR NOT EXISTS (SELECT 1 FROM herald_chunks h WHERE h.inbox = r.inbox \
                      AND h.part = r.part AND h.id < r.id)) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) s \
           WHERE k.id = s.id RETURNING k.id, k.events, k.keys) \
         SELECT (SELECT count(*) FROM split) AS split, EXISTS (SELECT 1 FROM herald_deliveries r WHERE r.inbox = $5 \
           AND NOT r.dead AND r.next_at <= $3 AND (r.lease_until IS NULL OR r.lease_until < $3) \
           AND (r.key IS NULL OR NOT EXISTS (SELECT 1 FROM herald_deliveries h WHERE h.inbox = r.inbox \
                AND h.key = r.key AND NOT h.dead AND h.id < r.id))) AS rows_due, \
         x.* FROM (SELECT 1) AS one LEFT JOIN ( \
           SELECT c.id AS chunk, t.o AS ord, t.e AS event_id, t.k AS event_key, \
           (t.k IS NOT NULL AND EXISTS (SELECT 1 FROM herald_deliveries d WHERE d.inbox = $5 AND d.key = t.k \
            AND NOT d.dead)) AS held, {} \
           FROM c CROSS JOIN LATERAL UNNEST(c.events, c.keys) WITH ORDINALITY AS t(e, k, o) \
           LEFT JOIN herald_events e ON $8 AND e.id = t.e) AS x ON TRUE ORDER BY x.chunk, x.ord",
        joined_event_columns()
    )))
    .bind(me)
    .bind(until)
    .bind(now)
    .bind(limit as i64)
    .bind(inbox)
    .bind(crate::dispatch::SPLIT_ERROR)
    .bind(done)
    .bind(read)
    .fetch_all(pool)
    .await?;
    let mut out: Vec<ClaimedChunk> = Vec::new();
    let (mut split, mut rows_due) = (false, false);
    for r in &rows {
        split |= r.try_get::<i64, _>("split")? > 0;
        rows_due |= r.try_get::<bool, _>("rows_due")?;
        // The one row of a claim that took nothing.
        let Some(id) = r.try_get::<Option<i64>, _>("chunk")? else { continue };
        let event_id: i64 = r.try_get("event_id")?;
        let item = ChunkItem {
            event_id: EventId(event_id),
            event: if read { Some(joined_event(r, event_id)?) } else { None },
            key: r.try_get("event_key")?,
            held: r.try_get("held")?,
        };
        match out.last_mut() {
            Some(c) if c.id == id => c.items.push(item),
            _ => out.push(ClaimedChunk { id, items: vec![item] }),
        }
    }
    Ok(ChunkClaim { chunks: out, split, rows_due })
}

pub(crate) async fn events_by_id(
    pool: &PgPool,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Result<crate::model::Event>>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id = ANY($1)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(pool).await?;
    let mut out = std::collections::HashMap::new();
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        out.insert(id, joined_event(r, id)?);
    }
    Ok(out)
}

pub(crate) async fn renew_chunks(pool: &PgPool, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE herald_chunks SET lease_until = $1 WHERE id = ANY($2) AND lease_owner = $3")
        .bind(until)
        .bind(ids)
        .bind(me)
        .execute(pool)
        .await?;
    Ok(())
}

pub(crate) async fn settle_chunks(
    pool: &PgPool,
    me: &str,
    inbox: &str,
    chunks: &[i64],
    rows: &[ChunkRow],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<(EventId, i64)>> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    if rows.is_empty() {
        sqlx::query("DELETE FROM herald_chunks WHERE id = ANY($1) AND lease_owner = $2")
            .bind(chunks)
            .bind(me)
            .execute(pool)
            .await?;
        return Ok(Vec::new());
    }
    let of = |f: fn(&ChunkRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let attempts: Vec<i32> = rows.iter().map(|r| r.row.attempts as i32).collect();
    let next: Vec<DateTime<Utc>> = rows.iter().map(|r| r.row.next_at).collect();
    let errors: Vec<&str> = rows.iter().map(|r| r.row.error.as_str()).collect();
    let dead: Vec<bool> = rows.iter().map(|r| r.row.dead).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.row.key.as_deref()).collect();
    let leased: Vec<bool> = rows.iter().map(|r| r.leased).collect();
    // One statement: a chunk's rows are written only if this worker still held it.
    let written = sqlx::query(
        "WITH gone AS (DELETE FROM herald_chunks WHERE id = ANY($1) AND lease_owner = $2 RETURNING id) \
         INSERT INTO herald_deliveries (inbox, event_id, attempts, next_at, last_error, dead, key, lease_owner, \
         lease_until, created_at, updated_at) \
         SELECT $3, e, a, CASE WHEN l THEN $5 ELSE n END, m, d, k, CASE WHEN l THEN $2 END, CASE WHEN l THEN $5 END, \
         $4, $4 FROM UNNEST($6::int8[], $7::int8[], $8::int4[], $9::timestamptz[], $10::text[], $11::bool[], \
         $12::text[], $13::bool[]) WITH ORDINALITY AS t(c, e, a, n, m, d, k, l, o) \
         WHERE c IN (SELECT id FROM gone) ORDER BY o ON CONFLICT (inbox, event_id) DO NOTHING \
         RETURNING id, event_id, lease_owner IS NOT NULL AS leased",
    )
    .bind(chunks)
    .bind(me)
    .bind(inbox)
    .bind(now)
    .bind(until)
    .bind(of(|r| r.chunk))
    .bind(of(|r| r.row.event_id.0))
    .bind(attempts)
    .bind(next)
    .bind(errors)
    .bind(dead)
    .bind(keys)
    .bind(leased)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in &written {
        if r.try_get::<bool, _>("leased")? {
            out.push((EventId(r.try_get("event_id")?), r.try_get("id")?));
        }
    }
    Ok(out)
}

pub(crate) async fn blocked_among(pool: &PgPool, inbox: &str, keys: &[&str]) -> Result<(bool, Vec<String>)> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM herald_deliveries WHERE inbox = $1 AND key IS NOT NULL AND NOT dead) AS any, \
         ARRAY(SELECT DISTINCT key FROM herald_deliveries WHERE inbox = $1 AND NOT dead AND key = ANY($2)) AS keys",
    )
    .bind(inbox)
    .bind(keys)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("any")?, row.try_get("keys")?))
}

/// The head delivery of every key held back, with the count waiting behind it.
pub(crate) async fn blocked_keys(pool: &PgPool, inbox: Option<&str>) -> Result<Vec<BlockedKey>> {
    let rows = sqlx::query(
        "SELECT d.id, d.inbox, d.key, d.event_id, d.attempts, d.last_error, d.next_at, \
         (SELECT count(*) FROM herald_deliveries w WHERE w.inbox = d.inbox AND w.key = d.key AND NOT w.dead \
          AND w.id > d.id) AS waiting \
         FROM herald_deliveries d WHERE NOT d.dead AND d.key IS NOT NULL AND ($1::text IS NULL OR d.inbox = $1) \
         AND (d.attempts > 0 OR d.expiries > 0) \
         AND NOT EXISTS (SELECT 1 FROM herald_deliveries h WHERE h.inbox = d.inbox AND h.key = d.key \
                         AND NOT h.dead AND h.id < d.id) \
         ORDER BY d.inbox, d.id",
    )
    .bind(inbox)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BlockedKey {
                inbox: r.try_get("inbox")?,
                key: r.try_get("key")?,
                delivery: r.try_get("id")?,
                head: EventId(r.try_get("event_id")?),
                attempts: r.try_get::<i32, _>("attempts")? as u32,
                last_error: r.try_get("last_error")?,
                next_at: r.try_get("next_at")?,
                waiting: r.try_get::<i64, _>("waiting")? as u64,
            })
        })
        .collect()
}

/// The head of a held-back key: retried now (`skip`: false), or dead-lettered so the
/// events behind it go on (`skip`: true). The head's event id, if the key was held.
pub(crate) async fn unblock_key(
    pool: &PgPool,
    inbox: &str,
    key: &str,
    skip: bool,
    now: DateTime<Utc>,
) -> Result<Option<EventId>> {
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE herald_deliveries SET next_at = $3, updated_at = $3, dead = $4, \
         last_error = CASE WHEN $4 THEN 'skipped by hand: ' || last_error ELSE last_error END \
         WHERE id = (SELECT id FROM herald_deliveries WHERE inbox = $1 AND key = $2 AND NOT dead ORDER BY id LIMIT 1) \
         AND (attempts > 0 OR expiries > 0) RETURNING event_id",
    )
    .bind(inbox)
    .bind(key)
    .bind(now)
    .bind(skip)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(EventId))
}

pub(crate) async fn queued(pool: &PgPool, inbox: &str, cap: usize) -> Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM herald_deliveries d WHERE d.inbox = $1 AND NOT d.dead \
         AND d.attempts = 0 AND (d.key IS NULL OR NOT EXISTS (SELECT 1 FROM herald_deliveries h \
         WHERE h.inbox = d.inbox AND h.key = d.key AND NOT h.dead AND h.attempts > 0 AND h.id < d.id)) LIMIT $2) t) \
         + (SELECT COALESCE(sum(cardinality(events)), 0)::int8 FROM herald_chunks WHERE inbox = $1)",
    )
    .bind(inbox)
    .bind(cap as i64)
    .fetch_one(pool)
    .await?;
    Ok(n as usize)
}

pub(crate) async fn release_claims(pool: &PgPool, me: &str, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE herald_deliveries SET lease_owner = NULL, lease_until = NULL, next_at = $3 \
         WHERE id = ANY($1) AND lease_owner = $2",
    )
    .bind(ids)
    .bind(me)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn renew_retries(pool: &PgPool, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE herald_deliveries SET lease_until = $1, next_at = $1 WHERE id = ANY($2) AND lease_owner = $3")
        .bind(until)
        .bind(ids)
        .bind(me)
        .execute(pool)
        .await?;
    Ok(())
}

pub(crate) async fn complete_retries(
    pool: &PgPool,
    me: &str,
    succeeded: &[i64],
    failed: &[(i64, Failure)],
    now: DateTime<Utc>,
) -> Result<()> {
    const DELETE: &str = "DELETE FROM herald_deliveries WHERE id = ANY($1) AND lease_owner = $2";
    if failed.is_empty() {
        // One statement, one round trip: the common case.
        sqlx::query(DELETE).bind(succeeded).bind(me).execute(pool).await?;
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    if !succeeded.is_empty() {
        sqlx::query(DELETE).bind(succeeded).bind(me).execute(&mut *tx).await?;
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

pub(crate) async fn release(pool: &PgPool, me: &str, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE herald_inboxes SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE herald_deliveries SET lease_owner = NULL, lease_until = NULL, next_at = $2 WHERE lease_owner = $1",
    )
    .bind(me)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE herald_chunks SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn dead_letters(
    pool: &PgPool,
    inbox: Option<&str>,
    before: Option<(DateTime<Utc>, i64)>,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, inbox, event_id, attempts, expiries, last_error, updated_at, key FROM herald_deliveries \
         WHERE dead AND ($1::text IS NULL OR inbox = $1) \
         AND ($2::timestamptz IS NULL OR (updated_at, id) < ($2, $3)) ORDER BY updated_at DESC, id DESC LIMIT {}",
        u64::from(limit)
    )))
    .bind(inbox)
    .bind(before.map(|b| b.0))
    .bind(before.map_or(0, |b| b.1))
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
                key: r.try_get("key")?,
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

pub(crate) async fn inbox_rows(pool: &PgPool) -> Result<Vec<(String, Mark, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT COALESCE(i.name, d.inbox) AS name, COALESCE(i.checkpoint_tx, 0) AS checkpoint_tx, \
         COALESCE(i.checkpoint_id, 0) AS checkpoint_id, COALESCE(i.snap_from, '1:1:') AS snap_from, i.snap_to, \
         COALESCE(d.retrying, 0) AS retrying, COALESCE(d.dead, 0) AS dead \
         FROM herald_inboxes i FULL JOIN (SELECT inbox, sum(retrying)::int8 AS retrying, sum(dead)::int8 AS dead \
         FROM (SELECT inbox, COUNT(*) FILTER (WHERE NOT dead) AS retrying, COUNT(*) FILTER (WHERE dead) AS dead \
         FROM herald_deliveries GROUP BY inbox UNION ALL SELECT inbox, sum(cardinality(events)), 0 \
         FROM herald_chunks GROUP BY inbox) u GROUP BY inbox) d ON d.inbox = i.name ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((r.try_get("name")?, checkpoint(r)?, r.try_get::<i64, _>("retrying")?, r.try_get::<i64, _>("dead")?))
        })
        .collect()
}

/// Matching events visible in `view` and not passed by `after`.
pub(crate) async fn pending(pool: &PgPool, def: &InboxDef, after: &Mark, view: &View) -> Result<i64> {
    let View::Postgres(now) = view else { return Ok(0) };
    let from = after.from.as_deref().unwrap_or(crate::dispatch::EMPTY_SNAPSHOT).to_owned();
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT COUNT(*) FROM herald_events WHERE (tx_id = ANY(ARRAY(SELECT pg_snapshot_xip(",
    );
    q.push_bind(from.clone())
        .push("::pg_snapshot))) OR tx_id >= pg_snapshot_xmax(")
        .push_bind(from)
        .push("::pg_snapshot))");
    q.push(" AND pg_visible_in_snapshot(tx_id, ").push_bind(now.to_string()).push("::pg_snapshot)");
    if let Some(to) = &after.to {
        q.push(" AND NOT (pg_visible_in_snapshot(tx_id, ")
            .push_bind(to.to_string())
            .push("::pg_snapshot) AND (tx_id, id) <= (");
        q.push_bind(after.at.tx).push("::text::xid8, ").push_bind(after.at.id).push("))");
    }
    crate::store::push_inbox_filter(&mut q, def);
    Ok(q.build().fetch_one(pool).await?.try_get(0)?)
}
