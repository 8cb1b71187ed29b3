//! SQLite delivery state. Mirrors `postgres/dispatch.rs`.
//!
//! A position is `(0, id)`: writers hold SQLite's one write lock from `BEGIN
//! IMMEDIATE` to `COMMIT`, so ids are handed out in commit order and every event
//! up to `max(id)` is committed and final.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{EVENT_COLUMNS, decode, decode_time, encode_time};
use crate::dispatch::{
    BlockedKey, Chunk, ChunkClaim, ChunkItem, ChunkRow, Claimed, ClaimedChunk, DeadLetter, Failure, LeaseRow, Mark,
    Position, Relet, Scan, Taking, View,
};
use crate::error::{Error, Result};
use crate::inbox::InboxDef;
use crate::model::EventId;

pub(crate) async fn view(pool: &SqlitePool) -> Result<View> {
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM herald_events").fetch_one(pool).await?;
    Ok(View::Sqlite(max.unwrap_or(0)))
}

pub(crate) async fn rename_inbox(pool: &SqlitePool, from: &str, to: &str, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let moved = sqlx::query(
        "UPDATE herald_inboxes SET name = ?2 WHERE name = ?1 AND NOT EXISTS (SELECT 1 FROM herald_inboxes WHERE name = ?2)",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 1 {
        sqlx::query("UPDATE herald_deliveries SET inbox = ?2 WHERE inbox = ?1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE herald_chunks SET inbox = ?2 WHERE inbox = ?1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO herald_inbox_renames (name, renamed_to, renamed_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET renamed_to = ?2, renamed_at = ?3",
        )
        .bind(from)
        .bind(to)
        .bind(encode_time(now))
        .execute(&mut *tx)
        .await?;
        // Renamed back: the name lives again.
        sqlx::query("DELETE FROM herald_inbox_renames WHERE name = ?").bind(to).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(moved.rows_affected() == 1)
}

pub(crate) async fn retired_inboxes(pool: &SqlitePool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM herald_inbox_renames").fetch_all(pool).await?)
}

/// Every committed event is at or below the newest id here: `start` alone skips history.
pub(crate) async fn sync_inbox(
    pool: &SqlitePool,
    name: &str,
    start: &Mark,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let start = start.at;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let retired: Option<String> = sqlx::query_scalar(
        "SELECT renamed_to FROM herald_inbox_renames WHERE name = ?1 \
         AND NOT EXISTS (SELECT 1 FROM herald_inboxes WHERE name = ?1)",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    if retired.is_none() {
        sqlx::query(
            "INSERT INTO herald_inboxes (name, checkpoint_tx, checkpoint_id, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(start.tx)
        .bind(start.id)
        .bind(encode_time(now))
        .bind(encode_time(now))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(retired)
}

/// The lease's end for a lease taken at `now`. SQLite runs on one machine: its
/// processes share one clock, so the database's clock is this one.
fn lease_end(now: DateTime<Utc>, lease: std::time::Duration) -> String {
    encode_time(crate::model::time_after(now, lease))
}

pub(crate) async fn lease_inbox(
    pool: &SqlitePool,
    name: &str,
    me: &str,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Taking> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let row = sqlx::query(
        "SELECT checkpoint_tx, checkpoint_id, lease_owner, lease_until, crash_tx, crash_id, crashes, lease_epoch \
         FROM herald_inboxes WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(Taking::Held) };
    let lease_until: Option<String> = row.try_get("lease_until")?;
    let current = LeaseRow {
        checkpoint: at(row.try_get("checkpoint_tx")?, row.try_get("checkpoint_id")?),
        owner: row.try_get("lease_owner")?,
        live: lease_until.map(|t| decode_time(0, &t)).transpose()?.is_some_and(|until| until > now),
        crash_at: match (row.try_get::<Option<i64>, _>("crash_tx")?, row.try_get::<Option<i64>, _>("crash_id")?) {
            (Some(tx), Some(id)) => Some(at(tx, id)),
            _ => None,
        },
        crashes: row.try_get::<i64, _>("crashes")? as u32,
        epoch: row.try_get("lease_epoch")?,
    };
    if current.owner.is_none() {
        return Ok(Taking::Free(current.checkpoint));
    }
    let Some(taken) = current.acquire(me) else { return Ok(Taking::Held) };
    sqlx::query(
        "UPDATE herald_inboxes SET lease_owner = ?, lease_until = ?, crash_tx = ?, crash_id = ?, crashes = ?, \
         updated_at = ?, lease_epoch = ? WHERE name = ?",
    )
    .bind(me)
    .bind(lease_end(now, lease))
    .bind(taken.crash_at.as_ref().map(|m| m.at.tx))
    .bind(taken.crash_at.as_ref().map(|m| m.at.id))
    .bind(i64::from(taken.crashes))
    .bind(encode_time(now))
    .bind(taken.epoch)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Taking::Leased(taken))
}

/// Extends the lease `me` holds at `epoch`; never takes one.
pub(crate) async fn renew_lease(
    pool: &SqlitePool,
    name: &str,
    me: &str,
    epoch: i64,
    lease: std::time::Duration,
) -> Result<bool> {
    let now = crate::model::now();
    let done = sqlx::query(
        "UPDATE herald_inboxes SET lease_until = ?, updated_at = ? WHERE name = ? AND lease_owner = ? AND lease_epoch = ?",
    )
    .bind(lease_end(now, lease))
    .bind(encode_time(now))
    .bind(name)
    .bind(me)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes an unowned lease back in one statement, if the row is exactly as this worker
/// left it (unowned, same checkpoint): no crash to account for.
async fn relet(
    pool: &SqlitePool,
    name: &str,
    me: &str,
    checkpoint: &Mark,
    now: DateTime<Utc>,
    lease: std::time::Duration,
) -> Result<Option<i64>> {
    let epoch: Option<i64> = sqlx::query_scalar(
        "UPDATE herald_inboxes SET lease_owner = ?, lease_until = ?, updated_at = ?, lease_epoch = lease_epoch + 1 \
         WHERE name = ? AND lease_owner IS NULL AND checkpoint_tx = ? AND checkpoint_id = ? RETURNING lease_epoch",
    )
    .bind(me)
    .bind(lease_end(now, lease))
    .bind(encode_time(now))
    .bind(name)
    .bind(checkpoint.at.tx)
    .bind(checkpoint.at.id)
    .fetch_optional(pool)
    .await?;
    Ok(epoch)
}

/// Reads the next batch from `from`; takes an unowned lease back (see [`relet`]) only
/// if there is one; with nothing for the inbox up to `view`, moves the checkpoint to
/// `passed` if given, else writes nothing. The same contract as PostgreSQL's one
/// statement, here in up to three (each a hand-off to sqlx's SQLite thread, not a
/// network round trip).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relet_and_read(
    pool: &SqlitePool,
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
    // Read first: the batch is fixed by `from` and `view`, and an empty one needs no lease.
    let batch = read_batch(pool, def, from, view, limit).await?;
    if batch.events.is_empty() && passed.is_none() {
        return Ok(Relet::Empty);
    }
    let Some(epoch) = relet(pool, def.name, me, checkpoint, now, lease).await? else {
        return Ok(Relet::Changed);
    };
    if !batch.events.is_empty() {
        return Ok(Relet::Leased(batch, epoch));
    }
    let passed = passed.unwrap_or(from);
    let moved = advance(pool, def.name, me, epoch, passed, None, &[], &[], now).await?;
    Ok(if moved { Relet::Advanced } else { Relet::Changed })
}

/// The mark of a SQLite checkpoint: an event id.
fn at(tx: i64, id: i64) -> Mark {
    Mark { at: Position { tx, id }, ..Mark::default() }
}

/// The newest id of a view (SQLite views are ids).
fn upto(view: &View) -> i64 {
    match view {
        View::Sqlite(max) => *max,
        View::Postgres(_) => 0,
    }
}

/// The next batch of `def` after `after`, up to `view`, in commit (id) order.
fn batch_query(prefix: &str, def: &InboxDef, after: &Mark, view: &View, limit: usize) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(format!("{prefix}SELECT {EVENT_COLUMNS} FROM herald_events WHERE id > "));
    q.push_bind(after.at.id).push(" AND id <= ").push_bind(upto(view));
    crate::store::push_inbox_filter(&mut q, def);
    q.push(" ORDER BY id LIMIT ").push_bind(limit as i64);
    q
}

pub(crate) async fn read_batch(
    pool: &SqlitePool,
    def: &InboxDef,
    after: &Mark,
    view: &View,
    limit: usize,
) -> Result<Scan> {
    // SQLite plans each statement alike (the primary key, in order), whatever the
    // values: the read looks only at wanted events, and the last one is how far it looked.
    let rows = batch_query("", def, after, view, limit).build().fetch_all(pool).await?;
    let events: crate::dispatch::Batch =
        rows.iter().map(|r| Ok((Position { tx: 0, id: r.try_get("id")? }, decode(r)))).collect::<Result<_>>()?;
    Ok(Scan { last: events.last().map(|(pos, _)| *pos), scanned: events.len(), events })
}

pub(crate) async fn explain_batch(
    pool: &SqlitePool,
    def: &InboxDef,
    after: &Mark,
    view: &View,
    limit: usize,
) -> Result<String> {
    let rows = batch_query("EXPLAIN QUERY PLAN ", def, after, view, limit).build().fetch_all(pool).await?;
    let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail")).collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

/// Parks the failures and moves the checkpoint, in one transaction, if the lease is
/// still ours; `false` (and nothing written) if another worker took it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn advance(
    pool: &SqlitePool,
    name: &str,
    me: &str,
    epoch: i64,
    to: &Mark,
    renew: Option<std::time::Duration>,
    failures: &[Failure],
    chunks: &[Chunk],
    now: DateTime<Utc>,
) -> Result<bool> {
    const MOVE: &str = "UPDATE herald_inboxes SET checkpoint_tx = ?, checkpoint_id = ?, lease_owner = ?, \
                        lease_until = ?, updated_at = ? WHERE name = ? AND lease_owner = ? AND lease_epoch = ?";
    let to = to.at;
    let renew = renew.map(|lease| lease_end(now, lease));
    let moving = || {
        sqlx::query(MOVE)
            .bind(to.tx)
            .bind(to.id)
            .bind(renew.as_ref().map(|_| me))
            .bind(renew.as_deref())
            .bind(encode_time(now))
            .bind(name)
            .bind(me)
            .bind(epoch)
    };
    if failures.is_empty() && chunks.is_empty() {
        // One statement: nothing else to keep atomic with it.
        return Ok(moving().execute(pool).await?.rows_affected() == 1);
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let moved = moving().execute(&mut *tx).await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    for f in failures {
        sqlx::query(
            "INSERT INTO herald_deliveries (inbox, event_id, attempts, next_at, last_error, dead, created_at, \
             updated_at, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (inbox, event_id) DO NOTHING",
        )
        .bind(name)
        .bind(f.event_id.0)
        .bind(i64::from(f.attempts))
        .bind(encode_time(f.next_at))
        .bind(&f.error)
        .bind(f.dead)
        .bind(encode_time(now))
        .bind(encode_time(now))
        .bind(f.key.as_deref())
        .execute(&mut *tx)
        .await?;
    }
    for c in chunks {
        sqlx::query("INSERT INTO herald_chunks (inbox, part, events, keys, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(name)
            .bind(c.part)
            .bind(id_list(&c.events))
            .bind(json_text(&c.keys)?)
            .bind(encode_time(now))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A value as JSON text (a chunk's keys).
fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::InvalidConfig(format!("cannot encode a chunk: {e}")))
}

/// A chunk's stored events and keys.
fn chunk_events(r: &sqlx::sqlite::SqliteRow) -> Result<(i64, Vec<i64>, Vec<Option<String>>)> {
    let id: i64 = r.try_get("id")?;
    let corrupt = |e: serde_json::Error| Error::Corrupt { id, reason: format!("chunk {id} cannot be read: {e}") };
    let events: Vec<i64> = serde_json::from_str(&r.try_get::<String, _>("events")?).map_err(corrupt)?;
    let keys: Vec<Option<String>> = serde_json::from_str(&r.try_get::<String, _>("keys")?).map_err(corrupt)?;
    Ok((id, events, keys))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn claim_chunks(
    pool: &SqlitePool,
    me: &str,
    inbox: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
    done: &[i64],
    read: bool,
) -> Result<ChunkClaim> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if !done.is_empty() {
        sqlx::query("DELETE FROM herald_chunks WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2))")
            .bind(me)
            .bind(id_list(done))
            .execute(&mut *tx)
            .await?;
    }
    // Chunks whose worker died: split into delivery rows, each counted one expiry.
    let split = sqlx::query(
        "DELETE FROM herald_chunks WHERE inbox = ?1 AND lease_until IS NOT NULL AND lease_until < ?2 \
         RETURNING id, events, keys",
    )
    .bind(inbox)
    .bind(encode_time(now))
    .fetch_all(&mut *tx)
    .await?;
    let mut split = split.iter().map(chunk_events).collect::<Result<Vec<_>>>()?;
    split.sort_by_key(|c| c.0);
    for (_, events, keys) in &split {
        for (e, k) in events.iter().zip(keys) {
            sqlx::query(
                "INSERT INTO herald_deliveries (inbox, event_id, attempts, expiries, next_at, last_error, dead, \
                 created_at, updated_at, key) VALUES (?1, ?2, 0, 1, ?3, ?4, 0, ?3, ?3, ?5) \
                 ON CONFLICT (inbox, event_id) DO NOTHING",
            )
            .bind(inbox)
            .bind(e)
            .bind(encode_time(now))
            .bind(crate::dispatch::SPLIT_ERROR)
            .bind(k.as_deref())
            .execute(&mut *tx)
            .await?;
        }
    }
    let claimed = sqlx::query(
        "UPDATE herald_chunks SET lease_owner = ?1, lease_until = ?2 WHERE id IN (SELECT id FROM herald_chunks r \
         WHERE inbox = ?3 AND lease_owner IS NULL AND (part IS NULL OR NOT EXISTS (SELECT 1 FROM herald_chunks h \
         WHERE h.inbox = r.inbox AND h.part = r.part AND h.id < r.id)) ORDER BY id LIMIT ?4) \
         RETURNING id, events, keys",
    )
    .bind(me)
    .bind(encode_time(until))
    .bind(inbox)
    .bind(limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    let mut claimed = claimed.iter().map(chunk_events).collect::<Result<Vec<_>>>()?;
    claimed.sort_by_key(|c| c.0);
    let keys: Vec<&str> = claimed.iter().flat_map(|c| c.2.iter().flatten().map(String::as_str)).collect();
    let held: std::collections::HashSet<String> = if keys.is_empty() {
        Default::default()
    } else {
        sqlx::query_scalar(
            "SELECT DISTINCT key FROM herald_deliveries WHERE inbox = ?1 AND dead = 0 \
             AND key IN (SELECT value FROM json_each(?2))",
        )
        .bind(inbox)
        .bind(json_text(&keys)?)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let ids: Vec<i64> = if read { claimed.iter().flat_map(|c| c.1.iter().copied()).collect() } else { Vec::new() };
    let mut events = read_events(&mut tx, &ids).await?;
    let rows_due: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM herald_deliveries r WHERE r.inbox = ?1 AND r.dead = 0 AND r.next_at <= ?2 \
         AND (r.lease_until IS NULL OR r.lease_until < ?2) AND (r.key IS NULL OR NOT EXISTS (SELECT 1 \
         FROM herald_deliveries h WHERE h.inbox = r.inbox AND h.key = r.key AND h.dead = 0 AND h.id < r.id)))",
    )
    .bind(inbox)
    .bind(encode_time(now))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let claimed = claimed
        .into_iter()
        .map(|(id, ids, keys)| ClaimedChunk {
            id,
            items: ids
                .into_iter()
                .zip(keys)
                .map(|(e, key)| ChunkItem {
                    event_id: EventId(e),
                    event: read.then(|| {
                        events.remove(&e).unwrap_or_else(|| {
                            Err(Error::Corrupt { id: e, reason: "delivery of a missing event".into() })
                        })
                    }),
                    held: key.as_ref().is_some_and(|k| held.contains(k)),
                    key,
                })
                .collect(),
        })
        .collect();
    Ok(ChunkClaim { chunks: claimed, split: !split.is_empty(), rows_due })
}

/// Events by id, each decoded alone (an unreadable one is its delivery's problem).
async fn read_events(
    conn: &mut sqlx::SqliteConnection,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Result<crate::model::Event>>> {
    let mut out = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql = format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id IN (SELECT value FROM json_each(?))");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id_list(ids)).fetch_all(&mut *conn).await?;
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let event = decode(r).map_err(|e| match e {
            e @ Error::Corrupt { .. } => e,
            other => Error::Corrupt { id, reason: other.to_string() },
        });
        out.insert(id, event);
    }
    Ok(out)
}

pub(crate) async fn events_by_id(
    pool: &SqlitePool,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Result<crate::model::Event>>> {
    let mut conn = pool.acquire().await?;
    read_events(&mut conn, ids).await
}

pub(crate) async fn renew_chunks(pool: &SqlitePool, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE herald_chunks SET lease_until = ?1 WHERE lease_owner = ?2 AND id IN (SELECT value FROM json_each(?3))",
    )
    .bind(encode_time(until))
    .bind(me)
    .bind(id_list(ids))
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn settle_chunks(
    pool: &SqlitePool,
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
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let gone: std::collections::HashSet<i64> = sqlx::query_scalar(
        "DELETE FROM herald_chunks WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2)) RETURNING id",
    )
    .bind(me)
    .bind(id_list(chunks))
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut out = Vec::new();
    // A chunk no longer held (split after its lease ran out) leaves nothing.
    for r in rows.iter().filter(|r| gone.contains(&r.chunk)) {
        let f = &r.row;
        let next = if r.leased { until } else { f.next_at };
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO herald_deliveries (inbox, event_id, attempts, next_at, last_error, dead, key, lease_owner, \
             lease_until, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (inbox, event_id) DO NOTHING RETURNING id",
        )
        .bind(inbox)
        .bind(f.event_id.0)
        .bind(i64::from(f.attempts))
        .bind(encode_time(next))
        .bind(&f.error)
        .bind(f.dead)
        .bind(f.key.as_deref())
        .bind(r.leased.then_some(me))
        .bind(r.leased.then(|| encode_time(until)))
        .bind(encode_time(now))
        .bind(encode_time(now))
        .fetch_optional(&mut *tx)
        .await?;
        if let (true, Some(id)) = (r.leased, id) {
            out.push((f.event_id, id));
        }
    }
    tx.commit().await?;
    Ok(out)
}

pub(crate) async fn claim_retries(
    pool: &SqlitePool,
    me: &str,
    inboxes: &[&str],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Claimed>> {
    let rows = sqlx::query(
        "UPDATE herald_deliveries SET lease_owner = ?1, lease_until = ?2, next_at = ?2, \
         expiries = expiries + (lease_until IS NOT NULL) \
         WHERE id IN (SELECT id FROM herald_deliveries r WHERE dead = 0 AND next_at <= ?3 \
         AND (lease_until IS NULL OR lease_until < ?3) \
         AND inbox IN (SELECT value FROM json_each(?5)) \
         AND (key IS NULL OR NOT EXISTS (SELECT 1 FROM herald_deliveries h WHERE h.inbox = r.inbox \
              AND h.key = r.key AND h.dead = 0 AND h.id < r.id)) \
         ORDER BY next_at LIMIT ?4) \
         RETURNING id, inbox, event_id, attempts, expiries, key, \
         (key IS NOT NULL AND EXISTS (SELECT 1 FROM herald_deliveries n WHERE n.inbox = herald_deliveries.inbox \
          AND n.key = herald_deliveries.key AND n.dead = 0 AND n.id > herald_deliveries.id)) AS has_next",
    )
    .bind(me)
    .bind(encode_time(until))
    .bind(encode_time(now))
    .bind(limit as i64)
    .bind(serde_json::to_string(inboxes).unwrap_or_else(|_| "[]".to_owned()))
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in rows {
        let event_id: i64 = r.try_get("event_id")?;
        let event = match super::event(pool, EventId(event_id)).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(Error::Corrupt { id: event_id, reason: "delivery of a missing event".into() }),
            Err(e @ Error::Corrupt { .. }) => Err(e),
            Err(e) => return Err(e),
        };
        claimed.push(Claimed {
            id: r.try_get("id")?,
            event_id: EventId(event_id),
            event,
            attempts: r.try_get::<i64, _>("attempts")? as u32,
            expiries: r.try_get::<i64, _>("expiries")? as u32,
            key: r.try_get("key")?,
            next: r.try_get("has_next")?,
        });
    }
    Ok(claimed)
}

/// Which of `keys` are held back in `inbox` (a live delivery row of theirs), and
/// whether any key of the inbox is.
pub(crate) async fn blocked_among(pool: &SqlitePool, inbox: &str, keys: &[&str]) -> Result<(bool, Vec<String>)> {
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM herald_deliveries WHERE inbox = ? AND key IS NOT NULL AND dead = 0)",
    )
    .bind(inbox)
    .fetch_one(pool)
    .await?;
    if !any {
        return Ok((false, Vec::new()));
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT key FROM herald_deliveries WHERE inbox = ?1 AND dead = 0 \
         AND key IN (SELECT value FROM json_each(?2))",
    )
    .bind(inbox)
    .bind(serde_json::to_string(keys).unwrap_or_else(|_| "[]".to_owned()))
    .fetch_all(pool)
    .await?;
    Ok((true, keys))
}

/// The head delivery of every key held back, with the count waiting behind it.
pub(crate) async fn blocked_keys(pool: &SqlitePool, inbox: Option<&str>) -> Result<Vec<BlockedKey>> {
    let rows = sqlx::query(
        "SELECT d.id, d.inbox, d.key, d.event_id, d.attempts, d.last_error, d.next_at, \
         (SELECT count(*) FROM herald_deliveries w WHERE w.inbox = d.inbox AND w.key = d.key AND w.dead = 0 \
          AND w.id > d.id) AS waiting \
         FROM herald_deliveries d WHERE d.dead = 0 AND d.key IS NOT NULL AND (?1 IS NULL OR d.inbox = ?1) \
         AND (d.attempts > 0 OR d.expiries > 0) \
         AND NOT EXISTS (SELECT 1 FROM herald_deliveries h WHERE h.inbox = d.inbox AND h.key = d.key \
                         AND h.dead = 0 AND h.id < d.id) \
         ORDER BY d.inbox, d.id",
    )
    .bind(inbox)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let at: String = r.try_get("next_at")?;
            Ok(BlockedKey {
                inbox: r.try_get("inbox")?,
                key: r.try_get("key")?,
                delivery: r.try_get("id")?,
                head: EventId(r.try_get("event_id")?),
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                last_error: r.try_get("last_error")?,
                next_at: decode_time(0, &at)?,
                waiting: r.try_get::<i64, _>("waiting")? as u64,
            })
        })
        .collect()
}

/// The head of a held-back key: retried now (`skip`: false), or dead-lettered so the
/// events behind it go on (`skip`: true). The head's event id, if the key was held.
pub(crate) async fn unblock_key(
    pool: &SqlitePool,
    inbox: &str,
    key: &str,
    skip: bool,
    now: DateTime<Utc>,
) -> Result<Option<EventId>> {
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE herald_deliveries SET next_at = ?3, updated_at = ?3, dead = ?4, \
         last_error = CASE WHEN ?4 THEN 'skipped by hand: ' || last_error ELSE last_error END \
         WHERE id = (SELECT id FROM herald_deliveries WHERE inbox = ?1 AND key = ?2 AND dead = 0 ORDER BY id LIMIT 1) \
         AND (attempts > 0 OR expiries > 0) RETURNING event_id",
    )
    .bind(inbox)
    .bind(key)
    .bind(encode_time(now))
    .bind(skip)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(EventId))
}

/// Ids as a JSON array, for `json_each`.
fn id_list(ids: &[i64]) -> String {
    format!("[{}]", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

pub(crate) async fn queued(pool: &SqlitePool, inbox: &str, cap: usize) -> Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM herald_deliveries d WHERE d.inbox = ?1 AND d.dead = 0 \
         AND d.attempts = 0 AND (d.key IS NULL OR NOT EXISTS (SELECT 1 FROM herald_deliveries h \
         WHERE h.inbox = d.inbox AND h.key = d.key AND h.dead = 0 AND h.attempts > 0 AND h.id < d.id)) LIMIT ?2)) \
         + (SELECT COALESCE(SUM(json_array_length(events)), 0) FROM herald_chunks WHERE inbox = ?1)",
    )
    .bind(inbox)
    .bind(cap as i64)
    .fetch_one(pool)
    .await?;
    Ok(n as usize)
}

pub(crate) async fn release_claims(pool: &SqlitePool, me: &str, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE herald_deliveries SET lease_owner = NULL, lease_until = NULL, next_at = ?3 WHERE lease_owner = ?1 \
         AND id IN (SELECT value FROM json_each(?2))",
    )
    .bind(me)
    .bind(id_list(ids))
    .bind(encode_time(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn renew_retries(pool: &SqlitePool, me: &str, ids: &[i64], until: DateTime<Utc>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE herald_deliveries SET lease_until = ?1, next_at = ?1 WHERE lease_owner = ?2 \
         AND id IN (SELECT value FROM json_each(?3))",
    )
    .bind(encode_time(until))
    .bind(me)
    .bind(id_list(ids))
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn complete_retries(
    pool: &SqlitePool,
    me: &str,
    succeeded: &[i64],
    failed: &[(i64, Failure)],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if !succeeded.is_empty() {
        sqlx::query("DELETE FROM herald_deliveries WHERE lease_owner = ?1 AND id IN (SELECT value FROM json_each(?2))")
            .bind(me)
            .bind(id_list(succeeded))
            .execute(&mut *tx)
            .await?;
    }
    for (id, f) in failed {
        sqlx::query(
            "UPDATE herald_deliveries SET attempts = ?, next_at = ?, last_error = ?, dead = ?, lease_owner = NULL, \
             lease_until = NULL, updated_at = ? WHERE id = ? AND lease_owner = ?",
        )
        .bind(i64::from(f.attempts))
        .bind(encode_time(f.next_at))
        .bind(&f.error)
        .bind(f.dead)
        .bind(encode_time(now))
        .bind(id)
        .bind(me)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn release(pool: &SqlitePool, me: &str, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("UPDATE herald_inboxes SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE herald_deliveries SET lease_owner = NULL, lease_until = NULL, next_at = ? WHERE lease_owner = ?",
    )
    .bind(encode_time(now))
    .bind(me)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE herald_chunks SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn dead_letters(
    pool: &SqlitePool,
    inbox: Option<&str>,
    before: Option<(DateTime<Utc>, i64)>,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, inbox, event_id, attempts, expiries, last_error, updated_at, key FROM herald_deliveries \
         WHERE dead = 1 AND (?1 IS NULL OR inbox = ?1) AND (?2 IS NULL OR (updated_at, id) < (?2, ?3)) \
         ORDER BY updated_at DESC, id DESC LIMIT {}",
        u64::from(limit)
    )))
    .bind(inbox)
    .bind(before.map(|b| encode_time(b.0)))
    .bind(before.map_or(0, |b| b.1))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let at: String = r.try_get("updated_at")?;
            Ok(DeadLetter {
                id: r.try_get("id")?,
                inbox: r.try_get("inbox")?,
                event_id: EventId(r.try_get("event_id")?),
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                expiries: r.try_get::<i64, _>("expiries")? as u32,
                last_error: r.try_get("last_error")?,
                failed_at: decode_time(0, &at)?,
                key: r.try_get("key")?,
            })
        })
        .collect()
}

pub(crate) async fn retry_dead(
    pool: &SqlitePool,
    id: Option<i64>,
    inbox: Option<&str>,
    now: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE herald_deliveries SET dead = 0, attempts = 0, expiries = 0, next_at = ?1, lease_owner = NULL, \
         lease_until = NULL, updated_at = ?1 WHERE dead = 1 AND (?2 IS NULL OR id = ?2) AND (?3 IS NULL OR inbox = ?3)",
    )
    .bind(encode_time(now))
    .bind(id)
    .bind(inbox)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn prune_dead(pool: &SqlitePool, before: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query("DELETE FROM herald_deliveries WHERE dead = 1 AND updated_at <= ?")
        .bind(encode_time(before))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn inbox_rows(pool: &SqlitePool) -> Result<Vec<(String, Mark, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT i.name AS name, i.checkpoint_tx AS tx, i.checkpoint_id AS id, \
         (SELECT COUNT(*) FROM herald_deliveries d WHERE d.inbox = i.name AND d.dead = 0) \
         + (SELECT COALESCE(SUM(json_array_length(c.events)), 0) FROM herald_chunks c WHERE c.inbox = i.name) \
         AS retrying, \
         (SELECT COUNT(*) FROM herald_deliveries d WHERE d.inbox = i.name AND d.dead = 1) AS dead \
         FROM herald_inboxes i \
         UNION ALL SELECT DISTINCT d.inbox, 0, 0, \
         (SELECT COUNT(*) FROM herald_deliveries x WHERE x.inbox = d.inbox AND x.dead = 0), \
         (SELECT COUNT(*) FROM herald_deliveries x WHERE x.inbox = d.inbox AND x.dead = 1) \
         FROM herald_deliveries d WHERE d.inbox NOT IN (SELECT name FROM herald_inboxes) ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((r.try_get(0)?, at(r.try_get(1)?, r.try_get(2)?), r.try_get::<i64, _>(3)?, r.try_get::<i64, _>(4)?))
        })
        .collect()
}

pub(crate) async fn pending(pool: &SqlitePool, def: &InboxDef, after: &Mark, view: &View) -> Result<i64> {
    let mut q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM herald_events WHERE id > ");
    q.push_bind(after.at.id).push(" AND id <= ").push_bind(upto(view));
    crate::store::push_inbox_filter(&mut q, def);
    Ok(q.build().fetch_one(pool).await?.try_get(0)?)
}
