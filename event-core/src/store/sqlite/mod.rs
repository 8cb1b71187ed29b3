//! SQLite: the embedded backend. Mirrors `postgres.rs`.
//!
//! Timestamps are stored as fixed-width RFC 3339 text (`2026-11-30T10:49:55.123456Z`),
//! which sorts like time and stays readable in the `sqlite3` shell. Metadata is JSON
//! text. Writers are serialized by SQLite's single write lock, which Herald's
//! transactions take up front (`BEGIN IMMEDIATE`).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{EVENT_COLUMNS, FeedRow, decode_event, feed_query};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::model::{Event, EventId, NewEvent, Subject, now};
use crate::state_machine::Storage;
use crate::transition::Swap;

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Rows per multi-row INSERT: 9 parameters each, well under SQLite's 32,766 limit.
const BATCH_ROWS: usize = 3000;

/// Runs the migrations inside one `BEGIN IMMEDIATE` transaction (each migration a
/// savepoint in it): SQLite's write lock serializes concurrent migrators, in this
/// process and in others, where sqlx's own migration lock does nothing on SQLite.
/// The second migrator waits (busy timeout), then finds everything applied.
pub(super) async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut migrator = sqlx::migrate!("migrations/sqlite");
    migrator.dangerous_set_table_name("_herald_migrations");
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    // `run_direct` is what `run` calls after acquiring; called on the connection itself
    // it avoids `run`'s `Acquire` bound, which is not general enough for a `Send` future.
    migrator.run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Fixed-width text, so text order is time order: years outside 1..=9999 (which
/// would print with a sign or a fifth digit) are clamped to that range first.
pub(crate) fn encode_time(t: DateTime<Utc>) -> String {
    crate::model::clamp_time(t).format(TIME_FORMAT).to_string()
}

fn decode_time(id: i64, s: &str) -> Result<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .map(|t| t.and_utc())
        .map_err(|e| Error::Corrupt { id, reason: format!("created_at `{s}`: {e}") })
}

fn metadata_text(m: &Map<String, Value>) -> String {
    // A map of JSON values with string keys always serializes; "{}" is unreachable.
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
}

/// Binds the nine event columns, in `INSERT` order.
fn bind_event<'q>(
    q: Query<'q, Sqlite, SqliteArguments>,
    event: &NewEvent,
    created_at: DateTime<Utc>,
) -> Query<'q, Sqlite, SqliteArguments> {
    q.bind(&event.subject.kind)
        .bind(&event.subject.id)
        .bind(&event.actor.kind)
        .bind(&event.actor.id)
        .bind(&event.action)
        .bind(metadata_text(&event.metadata))
        .bind(encode_time(created_at))
        .bind(event.causation_id.map(|c| c.0))
        .bind(event.correlation_id.map(|c| c.0))
}

pub(super) async fn insert(conn: &mut SqliteConnection, event: NewEvent) -> Result<Event> {
    let created_at = now();
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    let done = bind_event(insert, &event, created_at).execute(conn).await?;
    Ok(event.into_event(EventId(done.last_insert_rowid()), created_at))
}

/// The transaction holds SQLite's write lock: the check and the insert cannot
/// interleave with another writer's.
pub(super) async fn insert_idempotent(conn: &mut SqliteConnection, event: NewEvent) -> Result<crate::Recorded> {
    let created_at = now();
    let key = event.idempotency_key.clone();
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM herald_events WHERE idempotency_key = ?")
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(id) = existing {
        return Ok(crate::Recorded::Existing(EventId(id)));
    }
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    let done = bind_event(insert, &event, created_at).bind(&key).execute(conn).await?;
    Ok(crate::Recorded::New(event.into_event(EventId(done.last_insert_rowid()), created_at)))
}

/// The transaction already holds SQLite's write lock (`BEGIN IMMEDIATE`), so the
/// check and the insert cannot interleave with another writer's.
pub(super) async fn insert_throttled(
    conn: &mut SqliteConnection,
    event: NewEvent,
    window: std::time::Duration,
) -> Result<Option<Event>> {
    let created_at = now();
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE NOT EXISTS (SELECT 1 FROM herald_events \
         WHERE subject_type = ?1 AND subject_id = ?2 AND action = ?5 AND created_at > ?10)",
    );
    let since = crate::model::time_before(created_at, window);
    let done = bind_event(insert, &event, created_at).bind(encode_time(since)).execute(conn).await?;
    Ok((done.rows_affected() == 1).then(|| event.into_event(EventId(done.last_insert_rowid()), created_at)))
}

pub(super) async fn insert_all(conn: &mut SqliteConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
    if events.len() <= BATCH_ROWS {
        return insert_chunks(conn, events).await;
    }
    // Several statements: a savepoint makes them all or nothing. A statement that
    // fails only undoes itself in SQLite; without it the chunks before would stay.
    let mut sp = sqlx::Connection::begin(&mut *conn).await?;
    let ids = insert_chunks(&mut sp, events).await?;
    sp.commit().await?;
    Ok(ids)
}

async fn insert_chunks(conn: &mut SqliteConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
    let created_at = encode_time(now());
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(BATCH_ROWS) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
             created_at, causation_id, correlation_id) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.subject.kind.as_str())
                .push_bind(e.subject.id.as_str())
                .push_bind(e.actor.kind.as_str())
                .push_bind(e.actor.id.as_str())
                .push_bind(e.action.as_str())
                .push_bind(metadata_text(&e.metadata))
                .push_bind(created_at.as_str())
                .push_bind(e.causation_id.map(|c| c.0))
                .push_bind(e.correlation_id.map(|c| c.0));
        });
        let last = q.build().execute(&mut *conn).await?.last_insert_rowid();
        // Without explicit ids SQLite gives each new row max(rowid) + 1, and the
        // transaction holds the write lock: one statement's rows are consecutive.
        let first = last - chunk.len() as i64 + 1;
        ids.extend((first..=last).map(EventId));
    }
    Ok(ids)
}

fn decode(row: &SqliteRow) -> Result<Event> {
    let id: i64 = row.try_get("id")?;
    let metadata: String = row.try_get("metadata")?;
    let metadata = match serde_json::from_str(&metadata) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return Err(Error::Corrupt { id, reason: format!("metadata is {}", crate::model::json_kind(&other)) });
        }
        Err(e) => return Err(Error::Corrupt { id, reason: format!("metadata: {e}") }),
    };
    let created_at: String = row.try_get("created_at")?;
    decode_event(row, metadata, decode_time(id, &created_at)?)
}

pub(super) async fn event(pool: &SqlitePool, id: EventId) -> Result<Option<Event>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0).fetch_optional(pool).await?;
    row.as_ref().map(decode).transpose()
}

pub(super) async fn feed(pool: &SqlitePool, feed: &Feed) -> Result<Vec<FeedRow>> {
    let mut q = feed_query::<Sqlite, String>("", feed, encode_time)?;
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            let created_at = r.try_get::<String, _>("created_at").ok().and_then(|t| decode_time(id, &t).ok());
            Ok(FeedRow { id, created_at, event: decode(r) })
        })
        .collect()
}

pub(super) async fn explain_feed(pool: &SqlitePool, feed: &Feed) -> Result<String> {
    let mut q = feed_query::<Sqlite, String>("EXPLAIN QUERY PLAN ", feed, encode_time)?;
    let rows = q.build().fetch_all(pool).await?;
    let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail")).collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

pub(super) async fn read_state(
    conn: &mut SqliteConnection,
    storage: Storage,
    subject: &Subject,
) -> Result<Option<String>> {
    let state: Option<Option<String>> = match storage {
        Storage::Column { table, column, key } => {
            // SQLite compares by affinity: '042', '42.0' and '4.2e1' all find the row
            // keyed 42. The key as stored says whether the id was its own form.
            let sql = format!("SELECT CAST({column} AS TEXT), CAST({key} AS TEXT) FROM {table} WHERE {key} = ?");
            let row: Option<(Option<String>, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&subject.id).fetch_optional(conn).await?;
            super::state_of_keyed_row(table, subject, row)?
        }
        Storage::Herald => {
            sqlx::query_scalar("SELECT state FROM herald_states WHERE subject_type = ? AND subject_id = ?")
                .bind(&subject.kind)
                .bind(&subject.id)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(state.map(|s| s.unwrap_or_else(|| "NULL".to_owned())))
}

/// A savepoint makes the swap and the event one unit even if the insert fails.
pub(super) async fn swap_state(conn: &mut SqliteConnection, swap: Swap, event: NewEvent) -> Result<Option<Event>> {
    let mut sp = sqlx::Connection::begin(&mut *conn).await?;
    let swapped = match swap.storage {
        Storage::Column { table, column, key } => {
            // Only the row whose key is exactly the subject id (see `read_state`).
            let sql =
                format!("UPDATE {table} SET {column} = ? WHERE {key} = ? AND CAST({key} AS TEXT) = ? AND {column} = ?");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(swap.to)
                .bind(&event.subject.id)
                .bind(&event.subject.id)
                .bind(swap.from)
                .execute(&mut *sp)
                .await?
        }
        Storage::Herald => {
            // No row yet means the initial state: insert only when that is `from`. A row
            // that exists is proposed again so the conflict path swaps it.
            sqlx::query(
                "INSERT INTO herald_states (subject_type, subject_id, state, updated_at) SELECT ?1, ?2, ?3, ?4 \
                 WHERE ?5 = ?6 OR EXISTS (SELECT 1 FROM herald_states WHERE subject_type = ?1 AND subject_id = ?2) \
                 ON CONFLICT (subject_type, subject_id) DO UPDATE \
                 SET state = excluded.state, updated_at = excluded.updated_at WHERE herald_states.state = ?5",
            )
            .bind(&event.subject.kind)
            .bind(&event.subject.id)
            .bind(swap.to)
            .bind(encode_time(now()))
            .bind(swap.from)
            .bind(swap.initial)
            .execute(&mut *sp)
            .await?
        }
    };
    if swapped.rows_affected() != 1 {
        sp.rollback().await?;
        // Say why: a missing row or an id in another form, else the state moved.
        if let Storage::Column { table, key, .. } = swap.storage
            && read_state(conn, swap.storage, &event.subject).await?.is_none()
        {
            return Err(Error::MissingRow { table, key, id: event.subject.id });
        }
        return Ok(None);
    }
    let recorded = insert(&mut sp, event).await?;
    sp.commit().await?;
    Ok(Some(recorded))
}
pub(crate) mod dispatch;

/// The deepest of the chains of causes ending at `ids`: its start and how many events
/// it holds, counting at most `limit` + 1.
pub(super) async fn cause_depth(
    conn: &mut SqliteConnection,
    ids: &[i64],
    limit: u32,
) -> Result<Option<(EventId, u32)>> {
    let deepest: Option<(i64, i64)> = sqlx::query_as(
        "WITH RECURSIVE chain (start, causation_id, depth) AS ( \
             SELECT id, causation_id, 1 FROM herald_events WHERE id IN (SELECT value FROM json_each(?1)) \
             UNION ALL \
             SELECT c.start, e.causation_id, c.depth + 1 FROM herald_events e JOIN chain c ON e.id = c.causation_id \
             WHERE c.depth <= ?2) \
         SELECT start, max(depth) FROM chain GROUP BY start ORDER BY 2 DESC LIMIT 1",
    )
    .bind(format!("[{}]", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")))
    .bind(i64::from(limit))
    .fetch_optional(conn)
    .await?;
    Ok(deepest.map(|(start, depth)| (EventId(start), depth as u32)))
}
