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
use super::{EVENT_COLUMNS, decode_event, feed_query};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::model::{Event, EventId, NewEvent, Subject, now};
use crate::state_machine::Storage;
use crate::transition::Swap;

pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.dangerous_set_table_name("_herald_migrations");
    migrator.run(pool).await?;
    Ok(())
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
    window: chrono::Duration,
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
    let row = bind_event(insert, &event, created_at).bind(created_at - window).fetch_optional(conn).await?;
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

fn decode(row: &PgRow) -> Result<Event> {
    let metadata: Json<Map<String, Value>> = row.try_get("metadata")?;
    decode_event(row, metadata.0, row.try_get("created_at")?)
}

pub(super) async fn event(pool: &PgPool, id: EventId) -> Result<Option<Event>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM herald_events WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0).fetch_optional(pool).await?;
    row.as_ref().map(decode).transpose()
}

pub(super) async fn feed(pool: &PgPool, feed: &Feed) -> Result<Vec<Event>> {
    let mut q = feed_query::<Postgres, DateTime<Utc>>("", feed, |t| t)?;
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(decode).collect()
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

pub(super) async fn read_state(
    conn: &mut PgConnection,
    storage: Storage,
    types: Option<&ColumnTypes>,
    subject: &Subject,
) -> Result<Option<String>> {
    let state: Option<Option<String>> = match (storage, types) {
        (Storage::Column { table, column, key }, Some(types)) => {
            let sql = format!("SELECT {column}::text FROM {table} WHERE {key} = CAST($1 AS {})", types.key);
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&subject.id).fetch_optional(conn).await?
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
        (Storage::Column { table, column, key }, Some(types)) => format!(
            "UPDATE {table} SET {column} = CAST($10 AS {ct}) WHERE {key} = CAST($2 AS {kt}) \
             AND {column} = CAST($11 AS {ct}) RETURNING 1",
            ct = types.column,
            kt = types.key
        ),
        _ => "INSERT INTO herald_states (subject_type, subject_id, state, updated_at) VALUES ($1, $2, $10, $7) \
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
        .fetch_optional(conn)
        .await?;
    Ok(id.map(|id| event.into_event(EventId(id), created_at)))
}
pub(crate) mod dispatch;

/// How many events the chain of causes ending at `id` holds, counting at most `limit` + 1.
pub(super) async fn cause_depth(conn: &mut PgConnection, id: EventId, limit: u32) -> Result<u32> {
    let depth: Option<i32> = sqlx::query_scalar(
        "WITH RECURSIVE chain (causation_id, depth) AS ( \
             SELECT causation_id, 1 FROM herald_events WHERE id = $1 \
             UNION ALL \
             SELECT e.causation_id, c.depth + 1 FROM herald_events e JOIN chain c ON e.id = c.causation_id \
             WHERE c.depth <= $2) \
         SELECT max(depth) FROM chain",
    )
    .bind(id.0)
    .bind(limit as i32)
    .fetch_one(conn)
    .await?;
    Ok(depth.unwrap_or(0) as u32)
}
