//! Your own SQL on a Herald transaction, written once for both backends.
//!
//! [`Transaction::query`] takes one statement with `$1`, `$2`, … placeholders (both
//! SQLite and PostgreSQL read them), binds common values ([`Value`]), and maps rows
//! with sqlx's `FromRow` (a tuple, or `#[derive(sqlx::FromRow)]` on a struct) on
//! either backend. For anything else, [`Transaction::connection`] gives the
//! backend's own connection.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::error::Result;
use crate::model::EventId;
use crate::store::{Connection, Transaction};

/// A value bound to a [`Query`] placeholder. Each kind keeps its SQL type when it is
/// `None` (a typed `NULL`, so PostgreSQL accepts it for a column of that type).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `BOOLEAN`.
    Bool(Option<bool>),
    /// `BIGINT` (`INTEGER` on SQLite).
    Int(Option<i64>),
    /// `DOUBLE PRECISION` (`REAL`).
    Float(Option<f64>),
    /// `TEXT`.
    Text(Option<String>),
    /// `JSONB` on PostgreSQL, JSON text on SQLite.
    Json(Option<serde_json::Value>),
    /// `TIMESTAMPTZ` on PostgreSQL, text on SQLite.
    Time(Option<DateTime<Utc>>),
}

macro_rules! value_from {
    ($($ty:ty => $variant:ident($conv:expr)),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from(v: $ty) -> Self {
                    Value::$variant(Some($conv(v)))
                }
            }
            impl From<Option<$ty>> for Value {
                fn from(v: Option<$ty>) -> Self {
                    Value::$variant(v.map($conv))
                }
            }
        )*
    };
}

value_from! {
    bool => Bool(|v| v),
    i64 => Int(|v| v),
    i32 => Int(i64::from),
    u32 => Int(i64::from),
    f64 => Float(|v| v),
    String => Text(|v| v),
    &str => Text(str::to_owned),
    &String => Text(|v: &String| v.clone()),
    serde_json::Value => Json(|v| v),
    DateTime<Utc> => Time(|v| v),
    EventId => Int(|v: EventId| v.0),
}

/// One statement of yours on a Herald transaction; see [`Transaction::query`].
#[derive(Debug)]
#[must_use = "a query does nothing until executed or fetched"]
pub struct Query<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    sql: sqlx::SqlStr,
    args: Vec<Value>,
}

/// Binds `args` to a sqlx query of either backend.
macro_rules! bound {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for v in $args {
            q = match v {
                Value::Bool(v) => q.bind(v),
                Value::Int(v) => q.bind(v),
                Value::Float(v) => q.bind(v),
                Value::Text(v) => q.bind(v),
                Value::Json(v) => q.bind(v.map(sqlx::types::Json)),
                Value::Time(v) => q.bind(v),
            };
        }
        q
    }};
}

impl<'t, 'c> Query<'t, 'c> {
    /// Binds the next placeholder: a number, text, bool, JSON, time or event id, or an
    /// `Option` of one (`None`: `NULL`).
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub async fn execute(self) -> Result<u64> {
        let Query { tx, sql, args } = self;
        Ok(match tx.connection() {
            Connection::Sqlite(c) => bound!(sqlx::query(sql), args).execute(c).await?.rows_affected(),
            Connection::Postgres(c) => bound!(sqlx::query(sql), args).execute(c).await?.rows_affected(),
        })
    }

    /// Every row, each mapped by `FromRow` (a tuple such as `(String, i64)`, or a
    /// struct deriving `sqlx::FromRow`).
    pub async fn fetch_all<T>(self) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        let Query { tx, sql, args } = self;
        Ok(match tx.connection() {
            Connection::Sqlite(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_all(c).await?,
            Connection::Postgres(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_all(c).await?,
        })
    }

    /// The first row if there is one.
    pub async fn fetch_optional<T>(self) -> Result<Option<T>>
    where
        T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        let Query { tx, sql, args } = self;
        Ok(match tx.connection() {
            Connection::Sqlite(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_optional(c).await?,
            Connection::Postgres(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_optional(c).await?,
        })
    }

    /// Exactly one row: [`Error::Database`](crate::Error::Database) (`RowNotFound`)
    /// if there is none.
    pub async fn fetch_one<T>(self) -> Result<T>
    where
        T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        let Query { tx, sql, args } = self;
        Ok(match tx.connection() {
            Connection::Sqlite(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_one(c).await?,
            Connection::Postgres(c) => bound!(sqlx::query_as::<_, T>(sql), args).fetch_one(c).await?,
        })
    }
}

impl<'c> Transaction<'c> {
    /// One of your own statements in this transaction, written once for both
    /// backends: `$1`, `$2`, … placeholders, values bound with
    /// [`bind`](Query::bind), rows mapped by `FromRow`.
    ///
    /// `sql` is a `&'static str` (or [`sqlx::AssertSqlSafe`] around a string you
    /// built and vouch for): values go in binds, never into the text.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> event_core::Result<()> {
    /// # let store = event_core::Store::connect("sqlite::memory:").await?;
    /// let mut tx = store.begin().await?;
    /// tx.query("CREATE TABLE issues (id BIGINT PRIMARY KEY, title TEXT NOT NULL, assignee TEXT)").execute().await?;
    /// tx.query("INSERT INTO issues (id, title, assignee) VALUES ($1, $2, $3)")
    ///     .bind(1)
    ///     .bind("Login page is slow")
    ///     .bind(None::<String>)
    ///     .execute()
    ///     .await?;
    /// let rows: Vec<(i64, String, Option<String>)> =
    ///     tx.query("SELECT id, title, assignee FROM issues WHERE id = $1").bind(1).fetch_all().await?;
    /// tx.commit().await?;
    /// assert_eq!(rows, [(1, "Login page is slow".to_owned(), None)]);
    /// # Ok(()) }
    /// ```
    pub fn query(&mut self, sql: impl sqlx::SqlSafeStr) -> Query<'_, 'c> {
        Query { tx: self, sql: sql.into_sql_str(), args: Vec::new() }
    }
}
