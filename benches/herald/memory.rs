//! Scenario 7 (PostgreSQL): the dispatcher's peak RSS while draining a large backlog
//! (the feed scenario's events: 1,000,000, or 10,000 in quick mode) with one noop inbox.
//!
//! The process also held the backlog-recording memory, so this prints `VmHWM` (peak)
//! and `VmRSS` before the drain, resets the peak (`5` into `/proc/self/clear_refs`,
//! Linux ≥ 4.0) when the kernel allows it, samples `VmRSS` every 10 ms during the drain,
//! and reads `VmHWM` after: the dispatcher's cost is the peak during the drain minus the
//! RSS it started from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::Dispatcher;
use herald::prelude::*;

use super::{BoxError, Config, Report, Row, inboxes, scalar, verdict};

#[inbox(name = "bench_rss_noop", start_from = "beginning")]
async fn rss_noop(_event: &Event, _cx: &Context) -> Result<(), InboxError> {
    Ok(())
}

/// A field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) async fn run(store: &Store, _cfg: &Config, report: &mut Report) -> Result<(), BoxError> {
    let backlog = scalar(store, "SELECT COUNT(*) FROM herald_events").await?;
    let (hwm_before, rss_before) = (status_kib("VmHWM"), status_kib("VmRSS"));
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok() && status_kib("VmHWM") <= hwm_before;
    let hwm_reset = status_kib("VmHWM");
    eprintln!(
        "  [7. memory] backlog {backlog} events; before drain: VmHWM {} VmRSS {}; peak reset {} (VmHWM now {})",
        mib(hwm_before),
        mib(rss_before),
        if reset { "worked" } else { "unavailable" },
        mib(hwm_reset)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sampled = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (stop, sampled) = (stop.clone(), sampled.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sampled.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let dispatcher = Dispatcher::builder(store.clone()).registry(inboxes(|n| n == "bench_rss_noop")?).build()?;
    let t = Instant::now();
    let drained = dispatcher.drain().await?;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    let (hwm_after, rss_after, max_sampled) =
        (status_kib("VmHWM"), status_kib("VmRSS"), sampled.load(Ordering::Relaxed));
    // The drain's own peak: VmHWM after a reset is exactly that; otherwise the sampled maximum.
    let peak = if reset { hwm_after.max(max_sampled) } else { max_sampled };
    let delta = peak.saturating_sub(rss_before);
    eprintln!(
        "  [7. memory] drained {} deliveries in {:.1} s ({:.0}/s); after: VmHWM {} VmRSS {}; max sampled VmRSS {}; \
         drain peak {} = before + {}",
        drained.delivered,
        took.as_secs_f64(),
        drained.delivered as f64 / took.as_secs_f64(),
        mib(hwm_after),
        mib(rss_after),
        mib(max_sampled),
        mib(peak),
        mib(delta)
    );
    if drained.delivered as i64 != backlog {
        eprintln!("  WARNING: delivered {} of {backlog}", drained.delivered);
    }
    report.push(Row {
        scenario: format!("7. drain {backlog} events, 1 noop inbox (throughput)"),
        baseline: "-".into(),
        herald: format!("{:.0} del/s", drained.delivered as f64 / took.as_secs_f64()),
        ratio: "-".into(),
        target: "-".into(),
        met: "-".into(),
    });
    report.push(Row {
        scenario: "7. RSS before drain: VmHWM / VmRSS (recording included)".into(),
        baseline: "-".into(),
        herald: format!("{} / {}", mib(hwm_before), mib(rss_before)),
        ratio: "-".into(),
        target: "-".into(),
        met: "-".into(),
    });
    report.push(Row {
        scenario: format!("7. dispatcher RSS growth during drain (peak {})", mib(peak)),
        baseline: "-".into(),
        herald: format!("+{}", mib(delta)),
        ratio: "-".into(),
        target: "< 100 MiB".into(),
        met: verdict(delta < 100 * 1024),
    });
    report.push(Row {
        scenario: "7. whole-process VmHWM after drain".into(),
        baseline: "-".into(),
        herald: mib(hwm_after),
        ratio: "-".into(),
        target: "< 100 MiB".into(),
        met: verdict(hwm_after < 100 * 1024),
    });
    Ok(())
}
