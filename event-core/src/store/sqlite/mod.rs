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

use super::{EVENT_COLUMNS, decode_event, feed_query};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::model::{Event, EventId, NewEvent, Subject, now};
use crate::state_machine::Storage;
use crate::transition::Swap;

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Rows per multi-row INSERT: 9 parameters each, well under SQLite's 32,766 limit.
const BATCH_ROWS: usize = 3000;

pub(super) async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut migrator = sqlx::migrate!("migrations/sqlite");
    migrator.dangerous_set_table_name("_herald_migrations");
    migrator.run(pool).await?;
    Ok(())
}

pub(crate) fn encode_time(t: DateTime<Utc>) -> String {
    t.format(TIME_FORMAT).to_string()
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

/// The transaction already holds SQLite's write lock (`BEGIN IMMEDIATE`), so the
/// check and the insert cannot interleave with another writer's.
pub(super) async fn insert_throttled(
    conn: &mut SqliteConnection,
    event: NewEvent,
    window: chrono::Duration,
) -> Result<Option<Event>> {
    let created_at = now();
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE NOT EXISTS (SELECT 1 FROM herald_events \
         WHERE subject_type = ?1 AND subject_id = ?2 AND action = ?5 AND created_at > ?10)",
    );
    let done = bind_event(insert, &event, created_at).bind(encode_time(created_at - window)).execute(conn).await?;
    Ok((done.rows_affected() == 1).then(|| event.into_event(EventId(done.last_insert_rowid()), created_at)))
}

pub(super) async fn insert_all(conn: &mut SqliteConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
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

pub(super) async fn feed(pool: &SqlitePool, feed: &Feed) -> Result<Vec<Event>> {
    let mut q = feed_query::<Sqlite, String>("", feed, encode_time)?;
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(decode).collect()
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
            let sql = format!("SELECT CAST({column} AS TEXT) FROM {table} WHERE {key} = ?");
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&subject.id).fetch_optional(conn).await?
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
            let sql = format!("UPDATE {table} SET {column} = ? WHERE {key} = ? AND {column} = ?");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(swap.to)
                .bind(&event.subject.id)
                .bind(swap.from)
                .execute(&mut *sp)
                .await?
        }
        Storage::Herald => {
            sqlx::query(
                "INSERT INTO herald_states (subject_type, subject_id, state, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (subject_type, subject_id) DO UPDATE \
                 SET state = excluded.state, updated_at = excluded.updated_at WHERE herald_states.state = ?",
            )
            .bind(&event.subject.kind)
            .bind(&event.subject.id)
            .bind(swap.to)
            .bind(encode_time(now()))
            .bind(swap.from)
            .execute(&mut *sp)
            .await?
        }
    };
    if swapped.rows_affected() != 1 {
        sp.rollback().await?;
        return Ok(None);
    }
    let recorded = insert(&mut sp, event).await?;
    sp.commit().await?;
    Ok(Some(recorded))
}
pub(crate) mod dispatch;

/// How many events the chain of causes ending at `id` holds, counting at most `limit` + 1.
pub(super) async fn cause_depth(conn: &mut SqliteConnection, id: EventId, limit: u32) -> Result<u32> {
    let depth: Option<i64> = sqlx::query_scalar(
        "WITH RECURSIVE chain (causation_id, depth) AS ( \
             SELECT causation_id, 1 FROM herald_events WHERE id = ?1 \
             UNION ALL \
             SELECT e.causation_id, c.depth + 1 FROM herald_events e JOIN chain c ON e.id = c.causation_id \
             WHERE c.depth <= ?2) \
         SELECT max(depth) FROM chain",
    )
    .bind(id.0)
    .bind(i64::from(limit))
    .fetch_one(conn)
    .await?;
    Ok(depth.unwrap_or(0) as u32)
}
