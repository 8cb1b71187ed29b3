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

/// Futures running side by side inside the calling task, each under a key, added
/// while others run and taken out as each finishes (in completion order). No task
/// is spawned: the caller polls them, so it must keep doing so while it awaits
/// anything else (see [`alongside`]).
pub(crate) struct Running<K, F> {
    jobs: Vec<(K, CatchUnwind<F>)>,
}

impl<K, F: Future> Running<K, F> {
    pub(crate) fn new() -> Self {
        Running { jobs: Vec::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub(crate) fn push(&mut self, key: K, job: F) {
        self.jobs.push((key, CatchUnwind(Box::pin(job))));
    }

    /// Polls every job once, moving the finished ones to `landed`; whether any did.
    fn poll_ready(&mut self, cx: &mut Context<'_>, landed: &mut Vec<(K, Result<F::Output, String>)>) -> bool {
        let before = landed.len();
        let mut i = 0;
        while i < self.jobs.len() {
            if let Poll::Ready(out) = Pin::new(&mut self.jobs[i].1).poll(cx) {
                let (key, _) = self.jobs.swap_remove(i);
                landed.push((key, out));
            } else {
                i += 1;
            }
        }
        landed.len() > before
    }

    /// Waits until at least one job finished and moves every finished one, with its
    /// output or panic message, to `landed` (one wake-up settles them all); pending
    /// forever while nothing runs.
    pub(crate) async fn settle(&mut self, landed: &mut Vec<(K, Result<F::Output, String>)>) {
        std::future::poll_fn(|cx| if self.poll_ready(cx, landed) { Poll::Ready(()) } else { Poll::Pending }).await
    }
}

impl<K, F> std::fmt::Debug for Running<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("jobs", &self.jobs.len()).finish()
    }
}

/// Awaits `op` while the jobs of `running` go on, collecting those that finish into
/// `landed`. A job left unpolled while its caller waits for a pooled connection may
/// hold one itself: with more jobs than connections, that deadlocked.
pub(crate) async fn alongside<K, F: Future, T>(
    running: &mut Running<K, F>,
    landed: &mut Vec<(K, Result<F::Output, String>)>,
    op: impl Future<Output = T>,
) -> T {
    let mut op = std::pin::pin!(op);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = op.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        running.poll_ready(cx, landed);
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_go_on_while_the_caller_awaits_something_else() {
        // Each job waits for the one permit the awaited operation also needs, as
        // handlers and the dispatcher share a pool: without `alongside` polling the
        // jobs, the operation would wait forever for a job that is never polled.
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let mut running = Running::new();
        let mut landed = Vec::new();
        for n in 0..3 {
            let permits = permits.clone();
            running.push(n, async move {
                let _held = permits.acquire().await.map_err(|e| e.to_string())?;
                tokio::task::yield_now().await;
                if n == 1 {
                    panic!("one");
                }
                Ok::<_, String>(n * 10)
            });
        }
        // Polled once (the yield is pending once): the first job takes the permit and
        // holds it across its own yield; the others queue for it.
        alongside(&mut running, &mut landed, tokio::task::yield_now()).await;
        assert_eq!(permits.available_permits(), 0);
        let op = async { permits.acquire().await.map(|_| "op done").map_err(|e| e.to_string()) };
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), alongside(&mut running, &mut landed, op))
            .await
            .expect("the operation got its permit: the jobs went on meanwhile");
        assert_eq!(got, Ok("op done"));
        while !running.is_empty() {
            running.settle(&mut landed).await;
        }
        landed.sort_by_key(|(n, _)| *n);
        assert_eq!(landed.len(), 3);
        assert_eq!(landed[0].1, Ok(Ok(0)));
        assert_eq!(landed[1].1, Err("one".to_owned()));
        assert_eq!(landed[2].1, Ok(Ok(20)));
    }
}
