//! PostgreSQL: the production backend. Mirrors `sqlite.rs`.
//!
//! Timestamps are `timestamptz`, metadata `jsonb`. Every event row also stores the
//! id of the transaction that wrote it (`tx_id xid8`), so a reader can tell which
//! events are committed *and* have no uncommitted predecessor: sequence values are
//! handed out at insert, not at commit, so ids alone are not a commit order.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Postgres, Row};

use super::ColumnTypes;
use super::{EVENT_COLUMNS, FeedRow, decode_event, feed_query};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::model::{Event, EventId, NewEvent, Subject, now};
use crate::state_machine::Storage;
use crate::transition::Swap;

/// sqlx's migrator takes a session-level advisory lock and, when a migration fails,
/// returns without releasing it: the connection went back to the pool still holding
/// it, and every later migrate in the database (other schemas, the application's own
/// sqlx migrations, a retry) waited until the pool closed. On failure this
/// connection is closed instead of returned, which ends its session and its locks.
pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.dangerous_set_table_name("_herald_migrations");
    let mut conn = pool.acquire().await?;
    match migrator.run_direct(None, &mut *conn, false).await {
        Ok(()) => dispatch::check_transaction_ids(pool).await,
        Err(e) => {
            if let Err(closing) = conn.close().await {
                tracing::warn!(error = %closing, "herald: closing the connection of a failed migration failed");
            }
            Err(e.into())
        }
    }
}

/// Binds the nine event columns, in `INSERT` order.
fn bind_event<'q>(
    q: Query<'q, Postgres, PgArguments>,
    event: &NewEvent,
    created_at: DateTime<Utc>,
) -> Query<'q, Postgres, PgArguments> {
    q.bind(&event.subject.kind)
        .bind(&event.subject.id)
        .bind(&event.actor.kind)
        .bind(&event.actor.id)
        .bind(&event.action)
        .bind(Json(&event.metadata))
        .bind(created_at)
        .bind(event.causation_id.map(|c| c.0))
        .bind(event.correlation_id.map(|c| c.0))
}

pub(super) async fn insert(conn: &mut PgConnection, event: NewEvent) -> Result<Event> {
    let created_at = now();
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    );
    let id: i64 = bind_event(insert, &event, created_at).fetch_one(conn).await?.try_get(0)?;
    Ok(event.into_event(EventId(id), created_at))
}

/// The unique index decides: a racing writer of the same key waits for the first to
/// commit, then does nothing; a fresh statement then reads the winner's id.
pub(super) async fn insert_idempotent(conn: &mut PgConnection, event: NewEvent) -> Result<crate::Recorded> {
    let created_at = now();
    let insert = sqlx::query(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
    );
    let key = event.idempotency_key.clone();
    let row = bind_event(insert, &event, created_at).bind(&key).fetch_optional(&mut *conn).await?;
    if let Some(row) = row {
        return Ok(crate::Recorded::New(event.into_event(EventId(row.try_get(0)?), created_at)));
    }
    let id: i64 = sqlx::query_scalar("SELECT id FROM herald_events WHERE idempotency_key = $1")
        .bind(&key)
        .fetch_one(conn)
        .await?;
    Ok(crate::Recorded::Existing(EventId(id)))
}

/// Two statements: the upsert takes a row lock on `(subject, action)` in
/// `herald_throttle` that a concurrent throttled record waits on until this
/// transaction ends; the insert, a fresh statement with a fresh snapshot, then sees
/// every event the lock holder committed. (Under REPEATABLE READ or SERIALIZABLE the
/// waiter gets a serialization failure instead of a duplicate.)
///
/// The insert also deletes the lock row: it stays locked until this transaction
/// ends, a waiter's upsert then finds it gone and inserts its own, and the table
/// holds only the rows of transactions in flight instead of one per throttled
/// pair forever.
pub(super) async fn insert_throttled(
    conn: &mut PgConnection,
    event: NewEvent,
    window: std::time::Duration,
) -> Result<Option<Event>> {
    let created_at = now();
    sqlx::query(
        "INSERT INTO herald_throttle (subject_type, subject_id, action, last_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subject_type, subject_id, action) DO UPDATE SET last_at = EXCLUDED.last_at",
    )
    .bind(&event.subject.kind)
    .bind(&event.subject.id)
    .bind(&event.action)
    .bind(created_at)
    .execute(&mut *conn)
    .await?;
    let insert = sqlx::query(
        "WITH unlock AS (DELETE FROM herald_throttle WHERE subject_type = $1 AND subject_id = $2 AND action = $5) \
         INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE NOT EXISTS (SELECT 1 FROM herald_events \
         WHERE subject_type = $1 AND subject_id = $2 AND action = $5 AND created_at > $10) RETURNING id",
    );
    let since = crate::model::time_before(created_at, window);
    let row = bind_event(insert, &event, created_at).bind(since).fetch_optional(conn).await?;
    let id: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
    Ok(id.map(|id| event.into_event(EventId(id), created_at)))
}

/// One statement for any number of events: columns travel as arrays and `UNNEST`
/// turns them back into rows (no parameter limit, one round trip).
pub(super) async fn insert_all(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<EventId>> {
    let n = events.len();
    let (mut st, mut si, mut at, mut ai, mut ac) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut md, mut ca, mut co) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for e in events {
        st.push(e.subject.kind.as_str());
        si.push(e.subject.id.as_str());
        at.push(e.actor.kind.as_str());
        ai.push(e.actor.id.as_str());
        ac.push(e.action.as_str());
        md.push(Json(&e.metadata));
        ca.push(e.causation_id.map(|c| c.0));
        co.push(e.correlation_id.map(|c| c.0));
    }
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, metadata, \
         created_at, causation_id, correlation_id) \
         SELECT st, si, at, ai, ac, md, $6, ca, co \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::jsonb[], $8::int8[], $9::int8[]) \
         WITH ORDINALITY AS t(st, si, at, ai, ac, md, ca, co, ord) ORDER BY ord RETURNING id",
    )
    .bind(st)
    .bind(si)
    .bind(at)
    .bind(ai)
    .bind(ac)
    .bind(now())
    .bind(md)
    .bind(ca)
    .bind(co)
    .fetch_all(conn)
    .await?;
    // Sequence values are drawn in insertion order (ORDER BY ord); RETURNING's order is unspecified.
    ids.sort_unstable();
    Ok(ids.into_iter().map(EventId).collect())
}

/// One event row. Metadata that cannot be read (written by raw SQL or an older
/// version, e.g. nested past serde_json's limit, or a number no `f64` holds) is
/// [`Error::Corrupt`] for this row alone: callers skip or dead-letter it and go on.
fn decode(row: &PgRow) -> Result<Event> {
    let id: i64 = row.try_get("id")?;
    let metadata: Json<Map<String, Value>> =
        row.try_get("metadata").map_err(|e| Error::Corrupt { id, reason: format!("metadata: {e}") })?;
    decode_event(row, metadata.0, row.try_get("created_at")?)
}

pub(super) async fn event(pool: &PgPool, id: EventId) -> Result<Option<Event>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0).fetch_optional(pool).await?;
    row.as_ref().map(decode).transpose()
}

pub(super) async fn feed(pool: &PgPool, feed: &Feed) -> Result<Vec<FeedRow>> {
    let mut q = feed_query::<Postgres, DateTime<Utc>>("", feed, |t| t)?;
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| Ok(FeedRow { id: r.try_get("id")?, created_at: r.try_get("created_at").ok(), event: decode(r) }))
        .collect()
}

pub(super) async fn explain_feed(pool: &PgPool, feed: &Feed) -> Result<String> {
    let mut q = feed_query::<Postgres, DateTime<Utc>>("EXPLAIN ", feed, |t| t)?;
    let rows = q.build().fetch_all(pool).await?;
    let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

/// The SQL types of a state column and its key, so text parameters can be cast to
/// them (`CAST($1 AS bigint)`) and the key's index still serves the lookup.
pub(super) async fn column_types(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    key: &'static str,
) -> Result<ColumnTypes> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY($2)",
    )
    .bind(table)
    .bind(vec![column.to_lowercase(), key.to_lowercase()])
    .fetch_all(conn)
    .await?;
    let find = |name: &'static str| {
        rows.iter()
            .find(|(n, _)| *n == name.to_lowercase())
            .map(|(_, ty)| ty.clone())
            .ok_or(Error::UnknownColumn { table, column: name })
    };
    Ok(ColumnTypes { column: find(column)?, key: find(key)? })
}

/// An id for an integer key must be the integer's own form: PostgreSQL reads `042`,
/// ` 42` and `+42` as 42, and events recorded under them would miss `42`'s trail.
/// Checked before sending, as a cast error would abort the transaction.
fn check_key(table: &'static str, key: &'static str, types: &ColumnTypes, id: &str) -> Result<()> {
    let range = match types.key.as_str() {
        "smallint" => i64::from(i16::MIN)..=i64::from(i16::MAX),
        "integer" => i64::from(i32::MIN)..=i64::from(i32::MAX),
        "bigint" => i64::MIN..=i64::MAX,
        _ => return Ok(()),
    };
    match id.trim().parse::<i64>() {
        Ok(n) if range.contains(&n) && n.to_string() == id => Ok(()),
        Ok(n) if range.contains(&n) => {
            Err(Error::NonCanonicalId { table, given: id.to_owned(), stored: n.to_string() })
        }
        _ => Err(Error::MissingRow { table, key, id: id.to_owned() }),
    }
}

pub(super) async fn read_state(
    conn: &mut PgConnection,
    storage: Storage,
    types: Option<&ColumnTypes>,
    subject: &Subject,
) -> Result<Option<String>> {
    let state: Option<Option<String>> = match (storage, types) {
        (Storage::Column { table, column, key }, Some(types)) => {
            check_key(table, key, types, &subject.id)?;
            let sql =
                format!("SELECT {column}::text, {key}::text FROM {table} WHERE {key} = CAST($1 AS {})", types.key);
            let row: Option<(Option<String>, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&subject.id).fetch_optional(conn).await?;
            super::state_of_keyed_row(table, subject, row)?
        }
        _ => {
            sqlx::query_scalar("SELECT state FROM herald_states WHERE subject_type = $1 AND subject_id = $2")
                .bind(&subject.kind)
                .bind(&subject.id)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(state.map(|s| s.unwrap_or_else(|| "NULL".to_owned())))
}

/// One statement: the swap is a data-modifying CTE and the event is inserted from
/// its result, so there is an event exactly when the swap matched a row. A
/// concurrent swap of the same row waits on the row lock, then re-checks `from`.
pub(super) async fn swap_state(
    conn: &mut PgConnection,
    swap: Swap,
    types: Option<&ColumnTypes>,
    event: NewEvent,
) -> Result<Option<Event>> {
    let cas = match (swap.storage, types) {
        (Storage::Column { table, column, key }, Some(types)) => {
            check_key(table, key, types, &event.subject.id)?;
            // Only the row whose key is exactly the subject id (see `read_state`).
            format!(
                "UPDATE {table} SET {column} = CAST($10 AS {ct}) WHERE {key} = CAST($2 AS {kt}) \
                 AND {key}::text = $2 AND {column} = CAST($11 AS {ct}) RETURNING 1",
                ct = types.column,
                kt = types.key
            )
        }
        // No row yet means the initial state: insert only when that is `from`. A row that
        // exists is proposed again so the conflict path swaps it.
        _ => "INSERT INTO herald_states (subject_type, subject_id, state, updated_at) \
              SELECT $1, $2, $10, $7 WHERE $11::text = $12::text \
              OR EXISTS (SELECT 1 FROM herald_states WHERE subject_type = $1 AND subject_id = $2) \
              ON CONFLICT (subject_type, subject_id) DO UPDATE SET state = EXCLUDED.state, \
              updated_at = EXCLUDED.updated_at WHERE herald_states.state = $11 RETURNING 1"
            .to_owned(),
    };
    let sql = format!(
        "WITH cas AS ({cas}) INSERT INTO herald_events (subject_type, subject_id, actor_type, actor_id, action, \
         metadata, created_at, causation_id, correlation_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM cas RETURNING id"
    );
    let created_at = now();
    let id: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&event.subject.kind)
        .bind(&event.subject.id)
        .bind(&event.actor.kind)
        .bind(&event.actor.id)
        .bind(&event.action)
        .bind(Json(&event.metadata))
        .bind(created_at)
        .bind(event.causation_id.map(|c| c.0))
        .bind(event.correlation_id.map(|c| c.0))
        .bind(swap.to)
        .bind(swap.from)
        .bind(swap.initial)
        .fetch_optional(&mut *conn)
        .await?;
    if id.is_none()
        && let Storage::Column { table, key, .. } = swap.storage
        && read_state(conn, swap.storage, types, &event.subject).await?.is_none()
    {
        // Say why: a missing row (an id in another form is refused by `read_state`).
        return Err(Error::MissingRow { table, key, id: event.subject.id });
    }
    Ok(id.map(|id| event.into_event(EventId(id), created_at)))
}
pub(crate) mod dispatch;

/// The deepest of the chains of causes ending at `ids`: its start and how many events
/// it holds, counting at most `limit` + 1.
pub(super) async fn cause_depth(conn: &mut PgConnection, ids: &[i64], limit: u32) -> Result<Option<(EventId, u32)>> {
    let deepest: Option<(i64, i32)> = sqlx::query_as(
        "WITH RECURSIVE chain (start, causation_id, depth) AS ( \
             SELECT id, causation_id, 1 FROM herald_events WHERE id = ANY($1) \
             UNION ALL \
             SELECT c.start, e.causation_id, c.depth + 1 FROM herald_events e JOIN chain c ON e.id = c.causation_id \
             WHERE c.depth <= $2) \
         SELECT start, max(depth) FROM chain GROUP BY start ORDER BY 2 DESC LIMIT 1",
    )
    .bind(ids)
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?;
    Ok(deepest.map(|(start, depth)| (EventId(start), depth as u32)))
}
