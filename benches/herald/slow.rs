//! Scenario 9: slow handlers, as a new user tried them. 1,000 events/s are offered
//! (one per transaction, from 4 writers) to one inbox whose handler takes 50 ms, and
//! in a second run 1 % of its calls take 2 s. What counts is how many events a
//! dispatcher of one process delivers per second while they are offered: with the
//! old batch barrier, each batch waited for its slowest event (51/s with the tail at
//! concurrency 100); a key per subject lets the rest flow past a slow event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::Dispatcher;
use herald::prelude::*;
use serde_json::json;

use super::{Backend, BoxError, Config, Report, Row, inboxes};

static DELIVERED: AtomicU64 = AtomicU64::new(0);

#[inbox(subject = "slow_bench", timeout = "10s")]
async fn slow_handler(event: &Event, _cx: &Context) -> Result<(), InboxError> {
    let tail = event.meta("tail") == Some(&json!(true));
    tokio::time::sleep(Duration::from_millis(if tail { 2_000 } else { 50 })).await;
    DELIVERED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Offers `rate` events/s for `secs` seconds; every 100th has the 2 s tail if `tail`.
async fn offer(store: &Store, rate: u64, secs: u64, tail: bool) -> Result<u64, BoxError> {
    const WRITERS: u64 = 4;
    let total = rate * secs;
    let every = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
    let writers = (0..WRITERS).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in (w..total).step_by(WRITERS as usize) {
                tick.tick().await;
                let mut tx = store.begin().await?;
                tx.record(Subject::new("slow_bench", n), "happened", Actor::system())
                    .metadata(json!({ "tail": tail && n % 100 == 0 }))
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, herald::Error>(())
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await??;
    }
    Ok(total)
}

pub(super) async fn run(backend: &Backend, cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let secs = cfg.slow_secs;
    for (concurrency, tail) in [(8, false), (100, false), (100, true)] {
        let db = backend.fresh("slow").await?;
        let store = db.store.clone();
        let dispatcher = Dispatcher::builder(store.clone())
            .registry(inboxes(|n| n == "slow_handler")?)
            .concurrency(concurrency)
            .build()?;
        dispatcher.register().await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(dispatcher.run(async move {
            let _ = stopped.await;
        }));
        DELIVERED.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let offered = offer(&store, 1_000, secs, tail).await?;
        let window = t.elapsed();
        let during = DELIVERED.load(Ordering::Relaxed);
        // Then the rest, to check nothing is lost (bounded: the 8-wide run is slow).
        let deadline = Instant::now() + Duration::from_secs(60);
        while DELIVERED.load(Ordering::Relaxed) < offered && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = DELIVERED.load(Ordering::Relaxed);
        let _ = stop.send(());
        run.await??;
        let rate = during as f64 / window.as_secs_f64();
        let offered_rate = offered as f64 / window.as_secs_f64();
        let label = format!(
            "9. slow inbox, 50 ms{} handler, concurrency {concurrency}",
            if tail { " (1 % take 2 s)" } else { "" }
        );
        eprintln!(
            "  [{label}] offered {offered} in {window:.1?}: {during} delivered meanwhile ({rate:.0}/s), {all} in all"
        );
        let target = (concurrency == 100).then_some(900.0);
        report.push(Row {
            scenario: label,
            baseline: format!("{offered_rate:.0} offered/s"),
            herald: format!("{rate:.0} del/s"),
            ratio: format!("{:.2}x", rate / offered_rate),
            target: target.map_or("-".into(), |t| format!(">= {t:.0}/s")),
            met: target.map_or("-".into(), |t| super::verdict(rate >= t && all == offered)),
        });
        db.close().await?;
    }
    Ok(())
}
