//! Scenario 6: a 20-item feed page at growing table sizes (10k, 100k, 1M events),
//! against the same SQL written by hand with sqlx and decoded into the same fields.
//!
//! Events go to 100 subjects and 37 actors, so a subject's history grows with the
//! table (100 events each at 10k, 10,000 at 1M): a page that does not stay on the
//! index would get slower. Two pages: the newest 20 of a subject, and an actor's second
//! page (`before(cursor)` of its first page).

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use herald::NewEvent;
use herald::prelude::*;
use serde_json::{Map, Value, json};
use sqlx::Row as _;
use sqlx::types::Json;

use super::{BoxError, Config, Report, Row, execute, ms, quantile, record_backlog, verdict};

const SUBJECTS: usize = 100;
const ACTORS: usize = 37;
const COLUMNS: &str =
    "id, subject_type, subject_id, actor_type, actor_id, action, metadata, created_at, causation_id, correlation_id";

fn feed_event(n: usize) -> NewEvent {
    NewEvent::new(Subject::new("doc", n % SUBJECTS), "edited", Actor::new("user", n % ACTORS))
        .metadata(json!({ "n": n, "field": "title" }))
}

/// What the raw baseline decodes from each row: the same fields Herald decodes.
#[allow(dead_code)]
struct RawEvent {
    id: i64,
    subject: (String, String),
    actor: (String, String),
    action: String,
    metadata: Map<String, Value>,
    created_at: DateTime<Utc>,
    causation_id: Option<i64>,
    correlation_id: Option<i64>,
}

fn decode_pg(r: &sqlx::postgres::PgRow) -> Result<RawEvent, BoxError> {
    Ok(RawEvent {
        id: r.try_get("id")?,
        subject: (r.try_get("subject_type")?, r.try_get("subject_id")?),
        actor: (r.try_get("actor_type")?, r.try_get("actor_id")?),
        action: r.try_get("action")?,
        metadata: r.try_get::<Json<Map<String, Value>>, _>("metadata")?.0,
        created_at: r.try_get("created_at")?,
        causation_id: r.try_get("causation_id")?,
        correlation_id: r.try_get("correlation_id")?,
    })
}

fn decode_sqlite(r: &sqlx::sqlite::SqliteRow) -> Result<RawEvent, BoxError> {
    let created_at: String = r.try_get("created_at")?;
    let metadata: String = r.try_get("metadata")?;
    Ok(RawEvent {
        id: r.try_get("id")?,
        subject: (r.try_get("subject_type")?, r.try_get("subject_id")?),
        actor: (r.try_get("actor_type")?, r.try_get("actor_id")?),
        action: r.try_get("action")?,
        metadata: serde_json::from_str(&metadata)?,
        created_at: NaiveDateTime::parse_from_str(&created_at, "%Y-%m-%dT%H:%M:%S%.6fZ")?.and_utc(),
        causation_id: r.try_get("causation_id")?,
        correlation_id: r.try_get("correlation_id")?,
    })
}

/// The page to fetch: the newest of a subject, or an actor's page before a position.
#[derive(Clone)]
enum Page {
    Subject(Subject),
    ActorBefore(Actor, herald::Cursor, DateTime<Utc>, i64),
}

fn raw_sql(page: &Page, postgres: bool) -> String {
    let filter = match (page, postgres) {
        (Page::Subject(_), true) => "subject_type = $1 AND subject_id = $2",
        (Page::Subject(_), false) => "subject_type = ? AND subject_id = ?",
        (Page::ActorBefore(..), true) => "actor_type = $1 AND actor_id = $2 AND (created_at, id) < ($3, $4)",
        (Page::ActorBefore(..), false) => "actor_type = ? AND actor_id = ? AND (created_at, id) < (?, ?)",
    };
    format!("SELECT {COLUMNS} FROM herald_events WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT 21")
}

async fn raw_page(store: &Store, page: &Page) -> Result<usize, BoxError> {
    if let Some(pool) = store.postgres_pool() {
        let sql = raw_sql(page, true);
        let q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let q = match page {
            Page::Subject(s) => q.bind(&s.kind).bind(&s.id),
            Page::ActorBefore(a, _, at, id) => q.bind(&a.kind).bind(&a.id).bind(*at).bind(*id),
        };
        let rows = q.fetch_all(pool).await?;
        let events = rows.iter().map(decode_pg).collect::<Result<Vec<_>, _>>()?;
        Ok(events.len())
    } else if let Some(pool) = store.sqlite_pool() {
        let sql = raw_sql(page, false);
        let q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let q = match page {
            Page::Subject(s) => q.bind(&s.kind).bind(&s.id),
            Page::ActorBefore(a, _, at, id) => {
                q.bind(&a.kind).bind(&a.id).bind(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()).bind(*id)
            }
        };
        let rows = q.fetch_all(pool).await?;
        let events = rows.iter().map(decode_sqlite).collect::<Result<Vec<_>, _>>()?;
        Ok(events.len())
    } else {
        unreachable!("a store has one pool")
    }
}

async fn herald_page(store: &Store, page: &Page) -> Result<usize, BoxError> {
    let fetched = match page {
        Page::Subject(s) => store.feed().subject(s).limit(20).fetch().await?,
        Page::ActorBefore(a, cursor, ..) => store.feed().actor(a).limit(20).before(*cursor).fetch().await?,
    };
    Ok(fetched.events.len())
}

/// Alternates blocks of raw and Herald pages; returns every call's duration.
async fn measure(store: &Store, pages: &[Page], cfg: &Config) -> Result<(Vec<Duration>, Vec<Duration>), BoxError> {
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..cfg.feed_rounds {
        for i in 0..cfg.feed_queries {
            let t = Instant::now();
            let n = raw_page(store, &pages[i % pages.len()]).await?;
            base.push(t.elapsed());
            if n < 20 {
                return Err(format!("raw page had {n} rows").into());
            }
        }
        for i in 0..cfg.feed_queries {
            let t = Instant::now();
            let n = herald_page(store, &pages[i % pages.len()]).await?;
            ours.push(t.elapsed());
            if n != 20 {
                return Err(format!("herald page had {n} events").into());
            }
        }
    }
    Ok((base, ours))
}

async fn explain_analyze(store: &Store, page: &Page) -> Result<(), BoxError> {
    let Some(pool) = store.postgres_pool() else { return Ok(()) };
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", raw_sql(page, true));
    let q = sqlx::query(sqlx::AssertSqlSafe(sql));
    let q = match page {
        Page::Subject(s) => q.bind(&s.kind).bind(&s.id),
        Page::ActorBefore(a, _, at, id) => q.bind(&a.kind).bind(&a.id).bind(*at).bind(*id),
    };
    for r in q.fetch_all(pool).await? {
        eprintln!("    {}", r.try_get::<String, _>(0)?);
    }
    Ok(())
}

/// Records the largest table without measuring (for the memory scenario alone).
pub(super) async fn record_only(store: &Store, cfg: &Config) -> Result<(), BoxError> {
    record_backlog(store, cfg.feed_sizes.last().copied().unwrap_or(0), 0, feed_event).await
}

pub(super) async fn run(store: &Store, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let postgres = store.postgres_pool().is_some();
    let mut have = 0;
    let mut first_p50 = [None, None];
    let largest = cfg.feed_sizes.last().copied().unwrap_or(0);
    for &size in &cfg.feed_sizes {
        let t = Instant::now();
        record_backlog(store, size - have, have, feed_event).await?;
        eprintln!(
            "  recorded {} events in {:.1} s ({:.0} ev/s); table now {size}",
            size - have,
            t.elapsed().as_secs_f64(),
            (size - have) as f64 / t.elapsed().as_secs_f64()
        );
        have = size;
        if postgres {
            execute(store, "VACUUM ANALYZE herald_events").await?;
        } else {
            execute(store, "ANALYZE").await?;
        }
        let subjects: Vec<Page> = (0..SUBJECTS).map(|s| Page::Subject(Subject::new("doc", s))).collect();
        let mut actors = Vec::new();
        for a in 0..ACTORS {
            let actor = Actor::new("user", a);
            let first = store.feed().actor(&actor).limit(20).fetch().await?;
            let (Some(cursor), Some(last)) = (first.next, first.events.last()) else {
                return Err("an actor with fewer than 21 events".into());
            };
            actors.push(Page::ActorBefore(actor, cursor, last.created_at, last.id.0));
        }
        for (k, (what, pages)) in
            [("subject page", &subjects), ("actor page 2 (before cursor)", &actors)].into_iter().enumerate()
        {
            let (base, ours) = measure(store, pages, cfg).await?;
            let (b50, b99, h50, h99) =
                (quantile(&base, 0.5), quantile(&base, 0.99), quantile(&ours, 0.5), quantile(&ours, 0.99));
            first_p50[k].get_or_insert(h50);
            report.push(Row {
                scenario: format!("6. feed {what}, 20 items, {size} events"),
                baseline: format!("p50 {} p99 {}", ms(b50), ms(b99)),
                herald: format!("p50 {} p99 {}", ms(h50), ms(h99)),
                ratio: format!("{:.2}x", b50.as_secs_f64() / h50.as_secs_f64()),
                target: "p99 <= 2 ms".into(),
                met: verdict(h99 <= Duration::from_millis(2)),
            });
            if size == largest {
                if postgres {
                    eprintln!("  EXPLAIN (ANALYZE, BUFFERS) of the raw {what} at {size} events:");
                    explain_analyze(store, &pages[0]).await?;
                }
                let feed = match &pages[0] {
                    Page::Subject(s) => store.feed().subject(s).limit(20),
                    Page::ActorBefore(a, c, ..) => store.feed().actor(a).limit(20).before(*c),
                };
                eprintln!(
                    "  herald's plan for the {what} (Feed::explain): {}",
                    feed.explain().await?.replace('\n', " / ")
                );
                if let Some(first) = first_p50[k]
                    && cfg.feed_sizes.len() > 1
                {
                    let growth = h50.as_secs_f64() / first.as_secs_f64();
                    report.push(Row {
                        scenario: format!("6. feed {what}: p50 at {size} / p50 at {}", cfg.feed_sizes[0]),
                        baseline: "-".into(),
                        herald: format!("{growth:.2}x"),
                        ratio: "-".into(),
                        target: "flat".into(),
                        met: verdict(growth < 1.5),
                    });
                }
            }
        }
    }
    Ok(())
}
