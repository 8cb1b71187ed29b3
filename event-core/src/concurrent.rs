//! Runs futures side by side inside the calling task, at most `limit` at once,
//! catching panics: delivering a batch costs no task spawn and no cross-thread
//! wake-up per event.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future whose panic becomes `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(panic_text(payload))),
        }
    }
}

/// Runs `future`, returning its output, or the panic message if it panicked.
pub(crate) async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, String> {
    CatchUnwind(Box::pin(future)).await
}

pub(crate) fn panic_text(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned())
}

/// Runs every `(key, future)` with at most `limit` in flight; returns each key with
/// its output, or with the panic message, in completion order.
pub(crate) async fn run_limited<K, F, I>(jobs: I, limit: usize) -> Vec<(K, Result<F::Output, String>)>
where
    I: IntoIterator<Item = (K, F)>,
    F: Future,
{
    let mut jobs = jobs.into_iter();
    let mut running: Vec<(K, CatchUnwind<F>)> = Vec::with_capacity(limit);
    let mut done = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit.max(1) {
                match jobs.next() {
                    Some((key, job)) => running.push((key, CatchUnwind(Box::pin(job)))),
                    None => break,
                }
            }
            if running.is_empty() {
                return Poll::Ready(());
            }
            let before = running.len();
            let mut i = 0;
            while i < running.len() {
                if let Poll::Ready(out) = Pin::new(&mut running[i].1).poll(cx) {
                    let (key, _) = running.swap_remove(i);
                    done.push((key, out));
                } else {
                    i += 1;
                }
            }
            if running.len() == before {
                return Poll::Pending;
            }
        }
    })
    .await;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_all_with_a_limit_and_catches_panics() {
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs = (0..20).map(|n| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            (n, async move {
                let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if n == 7 {
                    panic!("seven");
                }
                n * 2
            })
        });
        let mut out = run_limited(jobs, 4).await;
        out.sort_by_key(|(k, _)| *k);
        assert_eq!(out.len(), 20);
        assert_eq!(out[7].1, Err("seven".to_owned()));
        assert_eq!(out[8].1, Ok(16));
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 4, "never more than the limit, and the limit used");
    }
}
