//! Herald against raw sqlx, in the same process on the same database.
//!
//! `cargo bench --bench herald` runs every scenario on SQLite (a file in WAL mode) and
//! on PostgreSQL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in
//! schemas of its own). Each comparative scenario alternates baseline and Herald for
//! several rounds and prints the medians and the ratio Herald / baseline (higher is
//! better for Herald). Latency and memory are absolute figures against their targets.
//! `HERALD_BENCH_QUICK=1` runs everything small, to check that it works.
//! `HERALD_BENCH_ONLY=dispatch,feed` runs only the named scenarios,
//! `HERALD_BENCH_BACKEND=sqlite|postgres` only one backend, and `HERALD_BENCH_KEEP=1`
//! keeps the databases (SQLite files, `herald_bench_*` schemas) for inspection.
//!
//! Scenarios (see `BENCHMARKS.md`):
//! 1. one event per transaction (1 and 8 writers) and 2. 1,000 events per call: [`record`];
//! 3. a persisted state-machine transition: [`transition`];
//! 4. dispatch throughput with noop inboxes: [`dispatch`];
//! 5. commit-to-inbox latency (PostgreSQL): [`latency`], also (5b) with the feed
//!    scenario's large table in place;
//! 6. a 20-item feed page at growing table sizes: [`feed`];
//! 7. dispatcher peak RSS draining a large backlog (PostgreSQL): [`memory`];
//! 8. noop dispatch as an outside harness measured it (PostgreSQL: one event per
//!    transaction, fresh and stale statistics, new warmed pools): [`harness`];
//! 9. a slow inbox (50 ms handlers, with and without a 2 s tail) under 1,000 events/s
//!    offered: [`slow`];
//! 10. a spread inbox (20 ms handlers) drained by 1, 2 and 3 worker processes (this
//!     binary started again as the workers): [`spread`].
//!
//! Progress goes to stderr; the tables per backend go to stdout at the end of each backend.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use herald::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[path = "herald/dispatch.rs"]
mod dispatch;
#[path = "herald/feed.rs"]
mod feed;
#[path = "herald/harness.rs"]
mod harness;
#[path = "herald/latency.rs"]
mod latency;
#[path = "herald/memory.rs"]
mod memory;
#[path = "herald/record.rs"]
mod record;
#[path = "herald/slow.rs"]
mod slow;
#[path = "herald/spread.rs"]
mod spread;
#[path = "herald/transition.rs"]
mod transition;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sizes of every scenario; `HERALD_BENCH_QUICK=1` makes them small.
struct Config {
    quick: bool,
    rounds: usize,
    single_ops: usize,
    batch_size: usize,
    batches: usize,
    transition_ops: usize,
    dispatch_backlog: usize,
    dispatch_rounds: usize,
    latency_events: usize,
    latency_runs: usize,
    feed_sizes: Vec<usize>,
    feed_rounds: usize,
    feed_queries: usize,
    harness_backlog: usize,
    slow_secs: u64,
}

fn config() -> Config {
    if std::env::var_os("HERALD_BENCH_QUICK").is_some() {
        Config {
            quick: true,
            rounds: 2,
            single_ops: 50,
            batch_size: 1000,
            batches: 2,
            transition_ops: 40,
            dispatch_backlog: 1000,
            dispatch_rounds: 2,
            latency_events: 50,
            latency_runs: 3,
            feed_sizes: vec![10_000],
            feed_rounds: 2,
            feed_queries: 50,
            harness_backlog: 1000,
            slow_secs: 1,
        }
    } else {
        Config {
            quick: false,
            rounds: 12,
            single_ops: 1000,
            batch_size: 1000,
            batches: 20,
            transition_ops: 1000,
            dispatch_backlog: 20_000,
            dispatch_rounds: 3,
            latency_events: 1000,
            latency_runs: 3,
            feed_sizes: vec![10_000, 100_000, 1_000_000],
            feed_rounds: 5,
            feed_queries: 200,
            harness_backlog: 20_000,
            slow_secs: 10,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `q`-quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs `baseline` and `herald` alternately, `rounds` times; each returns how many
/// operations it did. Returns the median rates (operations/s) of baseline and Herald.
async fn compare<B, BF, H, HF>(
    label: &str,
    rounds: usize,
    mut baseline: B,
    mut herald: H,
) -> Result<(Vec<f64>, Vec<f64>), BoxError>
where
    B: FnMut() -> BF,
    BF: Future<Output = Result<usize, BoxError>>,
    H: FnMut() -> HF,
    HF: Future<Output = Result<usize, BoxError>>,
{
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which side goes first (A B, B A, ...): whatever the first run of a
        // round leaves behind (dirty pages, a WAL segment switch, autovacuum waking up)
        // lands on both sides equally.
        for side in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let t = Instant::now();
            let n = if side { herald().await? } else { baseline().await? };
            let rate = n as f64 / t.elapsed().as_secs_f64();
            if side { ours.push(rate) } else { base.push(rate) }
        }
        eprintln!("  [{label}] round {}: raw {:.0}/s, herald {:.0}/s", round + 1, base[round], ours[round]);
    }
    Ok((base, ours))
}

/// One line of a backend's table.
struct Row {
    scenario: String,
    baseline: String,
    herald: String,
    ratio: String,
    target: String,
    met: String,
}

/// The table of one backend, filled as scenarios finish.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// A throughput comparison from per-round rates (operations/s), baseline and
    /// Herald measured side by side in each round. Shows each side's median and the
    /// median of the per-round ratios Herald / baseline: pairing the two runs of a
    /// round cancels drift between rounds (a noisy neighbour, a checkpoint).
    fn rate(
        &mut self,
        scenario: impl Into<String>,
        unit: &str,
        (base, ours): (Vec<f64>, Vec<f64>),
        min_ratio: Option<f64>,
    ) {
        let ratio = median(ours.iter().zip(&base).map(|(h, b)| h / b).collect());
        let (b, h) = (median(base), median(ours));
        self.push(Row {
            scenario: scenario.into(),
            baseline: format!("{b:.0} {unit}"),
            herald: format!("{h:.0} {unit}"),
            ratio: format!("{ratio:.2}x"),
            target: min_ratio.map_or("-".into(), |m| format!(">= {m:.1}x")),
            met: min_ratio.map_or("-".into(), |m| verdict(ratio >= m)),
        });
    }

    fn push(&mut self, row: Row) {
        eprintln!(
            "  => {} | {} | {} | {} | {} | {}",
            row.scenario, row.baseline, row.herald, row.ratio, row.target, row.met
        );
        self.rows.push(row);
    }

    fn print(&self, backend: &str) {
        let w = self.rows.iter().map(|r| r.scenario.chars().count()).max().unwrap_or(10).max(10);
        println!("\n== {backend}");
        println!(
            "{:<w$} | {:>22} | {:>22} | {:>7} | {:>10} | met",
            "scenario", "raw sqlx", "herald", "ratio", "target"
        );
        println!("{}", "-".repeat(w + 80));
        for r in &self.rows {
            println!(
                "{:<w$} | {:>22} | {:>22} | {:>7} | {:>10} | {}",
                r.scenario, r.baseline, r.herald, r.ratio, r.target, r.met
            );
        }
    }
}

fn verdict(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}

/// Where the bench's databases live: SQLite files in the temp dir, or PostgreSQL
/// schemas (`herald_bench*`) in `DATABASE_URL`.
#[derive(Clone)]
enum Backend {
    Sqlite,
    Postgres(String),
}

/// A store of its own for one scenario; [`Db::close`] removes it.
struct Db {
    store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Schema { url: String, schema: String },
}

impl Backend {
    fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// A fresh, migrated store named `name` (file or schema `herald_bench_{name}`).
    async fn fresh(&self, name: &str) -> Result<Db, BoxError> {
        match self {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("herald_bench_{}_{name}.db", std::process::id()));
                remove_sqlite(&path);
                let store = Store::connect(&format!("sqlite://{}", path.display())).await?;
                store.migrate().await?;
                Ok(Db { store, cleanup: Cleanup::File(path) })
            }
            Backend::Postgres(url) => {
                let schema = format!("herald_bench_{name}");
                let admin = sqlx::PgPool::connect(url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                    .execute(&admin)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await?;
                admin.close().await;
                let store = Store::from_postgres(pg_pool(url, &schema).await?);
                store.migrate().await?;
                Ok(Db { store, cleanup: Cleanup::Schema { url: url.clone(), schema } })
            }
        }
    }
}

/// A pool on `schema` of the database at `url`.
async fn pg_pool(url: &str, schema: &str) -> Result<sqlx::PgPool, BoxError> {
    let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    Ok(PgPoolOptions::new().max_connections(16).connect_with(opts).await?)
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

impl Db {
    /// Closes the pool and removes the file or schema.
    async fn close(self) -> Result<(), BoxError> {
        if std::env::var_os("HERALD_BENCH_KEEP").is_some() {
            return Ok(());
        }
        if let Some(p) = self.store.sqlite_pool() {
            p.close().await;
        }
        if let Some(p) = self.store.postgres_pool() {
            p.close().await;
        }
        match self.cleanup {
            Cleanup::File(path) => remove_sqlite(&path),
            Cleanup::Schema { url, schema } => {
                let admin = sqlx::PgPool::connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                    .execute(&admin)
                    .await?;
                admin.close().await;
            }
        }
        Ok(())
    }
}

/// Runs a statement without results on either backend.
async fn execute(store: &Store, sql: &str) -> Result<u64, BoxError> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    Ok(match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query(sql).execute(p).await?.rows_affected(),
        (_, Some(p)) => sqlx::query(sql).execute(p).await?.rows_affected(),
        _ => unreachable!("a store has one pool"),
    })
}

/// Runs a query returning one integer on either backend.
async fn scalar(store: &Store, sql: &str) -> Result<i64, BoxError> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    Ok(match (store.sqlite_pool(), store.postgres_pool()) {
        (Some(p), _) => sqlx::query_scalar(sql).fetch_one(p).await?,
        (_, Some(p)) => sqlx::query_scalar(sql).fetch_one(p).await?,
        _ => unreachable!("a store has one pool"),
    })
}

/// Records `n` events in calls of `record_all` of up to 10,000 events each.
async fn record_backlog(
    store: &Store,
    n: usize,
    first: usize,
    event: impl Fn(usize) -> herald::NewEvent,
) -> Result<(), BoxError> {
    let mut done = 0;
    while done < n {
        let size = (n - done).min(10_000);
        let mut tx = store.begin().await?;
        tx.record_all((first + done..first + done + size).map(&event)).await?;
        tx.commit().await?;
        done += size;
    }
    Ok(())
}

/// Whether `HERALD_BENCH_ONLY` (a comma-separated list of scenario names: record,
/// transition, dispatch, latency, harness, slow, spread, feed, memory) selects `scenario`; unset selects all.
fn wanted(scenario: &str) -> bool {
    std::env::var("HERALD_BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == scenario))
}

async fn run_backend(name: &str, backend: &Backend, cfg: &Config) -> Result<(), BoxError> {
    eprintln!("\n== {name}");
    let mut report = Report::default();
    let started = Instant::now();
    let progress = || eprintln!("  ({:.0} s so far)", started.elapsed().as_secs_f64());

    if wanted("record") || wanted("transition") {
        let main = backend.fresh("main").await?;
        if wanted("record") {
            record::run(&main.store, cfg, &mut report).await?;
        }
        if wanted("transition") {
            transition::run(&main.store, cfg, &mut report).await?;
        }
        main.close().await?;
        progress();
    }
    if wanted("dispatch") {
        dispatch::run(backend, cfg, &mut report).await?;
        progress();
    }
    if backend.is_postgres() && wanted("latency") {
        latency::run(backend, cfg, &mut report).await?;
        progress();
    }
    if wanted("slow") {
        slow::run(backend, cfg, &mut report).await?;
        progress();
    }
    if wanted("spread") {
        spread::run(backend, cfg, &mut report).await?;
        progress();
    }
    if backend.is_postgres() && wanted("harness") {
        harness::run(backend, cfg, &mut report).await?;
        progress();
    }
    let memory = backend.is_postgres() && wanted("memory");
    if wanted("feed") || memory || (backend.is_postgres() && wanted("latency")) {
        let feed_db = backend.fresh("feed").await?;
        if wanted("feed") {
            feed::run(&feed_db.store, cfg, &mut report).await?;
        } else {
            feed::record_only(&feed_db.store, cfg).await?;
        }
        progress();
        if backend.is_postgres() && wanted("latency") {
            latency::at_scale(&feed_db.store, cfg, &mut report).await?;
            progress();
        }
        if memory {
            memory::run(&feed_db.store, cfg, &mut report).await?;
        }
        feed_db.close().await?;
    }

    report.print(name);
    println!("({name}: {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if spread::worker().await? {
        return Ok(());
    }
    let cfg = config();
    println!(
        "herald bench ({} mode), {} CPUs, started at {}",
        if cfg.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let backend = std::env::var("HERALD_BENCH_BACKEND").unwrap_or_default();
    if backend.is_empty() || backend == "sqlite" {
        run_backend("SQLite (file, WAL)", &Backend::Sqlite, &cfg).await?;
    }
    if !(backend.is_empty() || backend == "postgres") {
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(p) => {
            p.close().await;
            run_backend("PostgreSQL", &Backend::Postgres(url), &cfg).await?;
        }
        Err(e) if std::env::var_os("CI").is_none() => println!("\n== PostgreSQL skipped: {e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The linked inboxes whose last name segment `keep` accepts.
fn inboxes(keep: impl Fn(&str) -> bool) -> Result<herald::Registry, BoxError> {
    Ok(herald::Registry::collect()?.retain(move |d| keep(d.name.rsplit("::").next().unwrap_or(d.name))))
}
