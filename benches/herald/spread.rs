//! Scenario 10: a spread inbox across processes. A backlog of events for
//! an inbox whose handler takes 20 ms (`#[inbox(spread = true)]`) is drained by 1, 2
//! and 3 worker processes, each a dispatcher with concurrency 16 (≈ 800/s alone):
//! this bench binary started again as a worker (`HERALD_BENCH_WORKER`). Each process
//! count gets a backlog of 4,000 events per process, so every run lasts about 5 s.
//! The figure is events/s from starting the workers to the inbox having passed and
//! completed every event; the ratio is against the ideal, n × one process's rate.
//! On SQLite the processes share the database file: its single writer (every claim
//! and completion is a write) bounds what more processes can add.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use herald::prelude::*;
use herald::{Dispatcher, NewEvent};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Backend, BoxError, Config, Report, Row, inboxes, record_backlog};

/// The environment variable that makes this binary a worker: `url schema id`.
const WORKER: &str = "HERALD_BENCH_WORKER";
/// Handlers of the inbox running at once, per process.
const CONCURRENCY: usize = 16;

#[inbox(subject = "spread_bench", spread = true, start_from = "beginning", timeout = "10s")]
async fn spread_slow(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// If this process was started as a worker: runs a dispatcher of [`spread_slow`] until
/// standard input closes, and returns `true`.
pub(super) async fn worker() -> Result<bool, BoxError> {
    let Ok(spec) = std::env::var(WORKER) else { return Ok(false) };
    let mut parts = spec.split(' ');
    let (Some(url), Some(schema), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{WORKER} must be `url schema id`, got {spec:?}").into());
    };
    let store = if url.starts_with("sqlite:") {
        Store::connect(url).await?
    } else {
        let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
        Store::from_postgres(PgPoolOptions::new().max_connections(10).connect_with(opts).await?)
    };
    let dispatcher = Dispatcher::builder(store)
        .registry(inboxes(|n| n == "spread_slow")?)
        .worker_id(id)
        .concurrency(CONCURRENCY)
        .build()?;
    dispatcher
        .run(async {
            let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        })
        .await?;
    Ok(true)
}

fn spawn_worker(url: &str, schema: &str, id: &str) -> Result<Child, BoxError> {
    Ok(Command::new(std::env::current_exe()?)
        .env(WORKER, format!("{url} {schema} {id}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?)
}

/// Drains a backlog of `per × processes` events with `processes` workers; events/s.
async fn drain_with(
    url: &str,
    schema: &str,
    store: &Store,
    (processes, per): (usize, usize),
    round: usize,
) -> Result<f64, BoxError> {
    let n = per * processes;
    let first = super::scalar(store, "SELECT COALESCE(MAX(id), 0) FROM herald_events").await? as usize;
    record_backlog(store, n, first, |i| NewEvent::new(Subject::new("spread_bench", i), "happened", Actor::system()))
        .await?;
    // Looks on, delivering nothing: it tells when the inbox has passed and completed everything.
    let watcher = Dispatcher::builder(store.clone()).registry(inboxes(|n| n == "spread_slow")?).build()?;
    let t = Instant::now();
    let mut workers = (0..processes)
        .map(|w| spawn_worker(url, schema, &format!("spread-{round}-{w}")))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = watcher.status().await?;
        let s = status.iter().find(|s| s.name.ends_with("spread_slow")).ok_or("no spread_slow row")?;
        if s.pending == Some(0) && s.retrying == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("spread bench: not drained after 120 s: {s:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed();
    for w in &mut workers {
        drop(w.stdin.take()); // closes its standard input: a graceful stop
    }
    for mut w in workers {
        w.wait()?;
    }
    std::io::stderr().flush()?;
    Ok(n as f64 / took.as_secs_f64())
}

pub(super) async fn run(backend: &Backend, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let db = backend.fresh("spread").await?;
    let (url, schema) = match (backend, &db.cleanup) {
        (Backend::Postgres(url), _) => (url.clone(), "herald_bench_spread"),
        (Backend::Sqlite, super::Cleanup::File(path)) => (format!("sqlite://{}", path.display()), "-"),
        _ => return Err("a SQLite bench database is a file".into()),
    };
    let rounds = if cfg.quick { 1 } else { 2 };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 { vec![1, 2, 3] } else { vec![3, 2, 1] };
        for processes in order {
            let per = if cfg.quick { 300 } else { 4_000 };
            let rate = drain_with(&url, schema, &db.store, (processes, per), round).await?;
            eprintln!("  [10. spread, {processes} process(es)] round {}: {rate:.0}/s", round + 1);
            rates[processes - 1].push(rate);
        }
    }
    let one = super::median(rates[0].clone());
    for processes in 1..=3 {
        let rate = super::median(rates[processes - 1].clone());
        let ideal = one * processes as f64;
        let target = (processes == 3).then_some(0.8);
        report.push(Row {
            scenario: format!("10. spread inbox, 20 ms handler, {CONCURRENCY} per process, {processes} process(es)"),
            baseline: format!("{ideal:.0} ideal/s"),
            herald: format!("{rate:.0} del/s"),
            ratio: format!("{:.2}x", rate / ideal),
            target: target.map_or("-".into(), |t| format!(">= {t:.1}x")),
            met: target.map_or("-".into(), |t| super::verdict(rate / ideal >= t)),
        });
    }
    db.close().await?;
    Ok(())
}
