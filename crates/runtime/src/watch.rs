//! [`PollingRunWatch`]: the [`RunWatch`] of backends that cannot tell of
//! changes by themselves, built on their [`Orchestrator`].
//!
//! One task polls, every interval, each run that someone waits on, once,
//! and wakes all of that run's waiters with what it read: a thousand
//! requests waiting on one run cost one backend call per interval, and
//! nothing is polled while nobody waits.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use domain::{
    CustomerId, GetRunError, Orchestrator, PipelineId, RequestContext, Run, RunId, RunWatch,
};
use tokio::sync::watch;

/// Which run: runs are scoped to their customer as every port call is.
type Key = (CustomerId, PipelineId, RunId);

/// What the poller last read of a run: the run, or why there is none.
/// `None` until the first read.
type Reading = Option<Result<Run, Arc<GetRunError>>>;

/// A [`RunWatch`] that polls the runs someone waits on, at most once per
/// interval each, for all their waiters together.
///
/// Cheap to clone: clones share the watched runs and the poller.
#[derive(Clone)]
pub struct PollingRunWatch {
    inner: Arc<Inner>,
}

struct Inner {
    orchestrator: Arc<dyn Orchestrator>,
    interval: Duration,
    /// A std mutex: held only to look up or change the map, never across
    /// an `.await`.
    watched: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    runs: HashMap<Key, Entry>,
    /// Whether the poller task runs; it stops when nobody waits.
    polling: bool,
}

struct Entry {
    /// The context of the first waiter, for the poller's calls: the same
    /// customer as every other waiter of the run.
    ctx: RequestContext,
    readings: watch::Sender<Reading>,
    waiters: usize,
}

impl fmt::Debug for PollingRunWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollingRunWatch")
            .field("interval", &self.inner.interval)
            .field("watched", &self.inner.lock().runs.len())
            .finish_non_exhaustive()
    }
}

impl PollingRunWatch {
    /// A watch that reads runs from `orchestrator` every `interval` while
    /// someone waits on them.
    pub fn new(orchestrator: Arc<dyn Orchestrator>, interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                orchestrator,
                interval: interval.max(Duration::from_millis(1)),
                watched: Mutex::new(Watched::default()),
            }),
        }
    }

    /// How many runs are watched now.
    pub fn watched_runs(&self) -> usize {
        self.inner.lock().runs.len()
    }

    /// Registers a waiter of `key`, starting the poller if it is idle.
    fn subscribe(&self, ctx: &RequestContext, key: Key) -> Waiter {
        let mut watched = self.inner.lock();
        let entry = watched.runs.entry(key.clone()).or_insert_with(|| Entry {
            ctx: ctx.clone(),
            readings: watch::channel(None).0,
            waiters: 0,
        });
        entry.waiters += 1;
        let receiver = entry.readings.subscribe();
        if !watched.polling {
            watched.polling = true;
            tokio::spawn(Arc::clone(&self.inner).poll());
        }
        Waiter {
            inner: Arc::clone(&self.inner),
            key,
            receiver,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every watched run once per interval, until nobody waits.
    async fn poll(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let runs: Vec<(Key, RequestContext)> = {
                let mut watched = self.lock();
                if watched.runs.is_empty() {
                    watched.polling = false;
                    return;
                }
                watched
                    .runs
                    .iter()
                    .map(|(key, entry)| (key.clone(), entry.ctx.clone()))
                    .collect()
            };
            for (key, ctx) in runs {
                let (_, pipeline, run_id) = &key;
                let reading = match self.orchestrator.get_run(&ctx, pipeline, run_id).await {
                    Ok(run) => Ok(run),
                    // A backend failing now may answer at the next tick:
                    // the waiters wait on.
                    Err(GetRunError::Backend(err)) => {
                        tracing::warn!(error = %err, run_id = %run_id, "polling a watched run failed");
                        continue;
                    }
                    Err(gone) => Err(Arc::new(gone)),
                };
                if let Some(entry) = self.lock().runs.get(&key) {
                    entry.readings.send_replace(Some(reading));
                }
            }
        }
    }
}

/// One waiter of a run; dropping it (the request answered or gone) stops
/// watching the run once its last waiter is gone.
struct Waiter {
    inner: Arc<Inner>,
    key: Key,
    receiver: watch::Receiver<Reading>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut watched = self.inner.lock();
        if let Some(entry) = watched.runs.get_mut(&self.key) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                watched.runs.remove(&self.key);
            }
        }
    }
}

#[async_trait]
impl RunWatch for PollingRunWatch {
    async fn changed(&self, ctx: &RequestContext, seen: &Run) -> Result<Run, GetRunError> {
        let key = (
            ctx.customer().clone(),
            seen.pipeline_id.clone(),
            seen.id.clone(),
        );
        let mut waiter = self.subscribe(ctx, key);
        loop {
            if waiter.receiver.changed().await.is_err() {
                // The entry is only removed with its last waiter, which is
                // this one: the sender cannot be gone.
                std::future::pending::<()>().await;
            }
            let reading = waiter.receiver.borrow_and_update().clone();
            match reading {
                Some(Ok(run)) if differs(&run, seen) => return Ok(run),
                Some(Err(gone)) => return Err(copy(&gone)),
                Some(Ok(_)) | None => {}
            }
        }
    }
}

/// Whether the run read differs from the one seen.
fn differs(run: &Run, seen: &Run) -> bool {
    run.status != seen.status || run.updated_at > seen.updated_at
}

/// The error of a run that is gone, for one more waiter. Only the
/// not-found errors are shared (backend failures are retried), so they
/// copy without loss.
fn copy(err: &GetRunError) -> GetRunError {
    match err {
        GetRunError::PipelineNotFound(id) => GetRunError::PipelineNotFound(id.clone()),
        GetRunError::RunNotFound {
            pipeline_id,
            run_id,
        } => GetRunError::run_not_found(pipeline_id, run_id),
        other => domain::BackendError::upstream(format!("watched run: {other}")).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{TimeZone, Utc};
    use domain::{
        BackendError, Caller, CancelRunError, ExecuteError, ListRunsError, RunPage, RunQuery,
        RunStatus, TriggerRequest,
    };

    use super::*;

    const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    /// An orchestrator whose one run's status the test sets, counting the
    /// reads.
    struct Engine {
        status: Mutex<RunStatus>,
        reads: AtomicUsize,
        failing: Mutex<bool>,
    }

    fn run(status: RunStatus) -> Run {
        let at = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap();
        Run::new(
            RunId::manual(&at),
            PipelineId::parse(PIPELINE).unwrap(),
            status,
            at,
        )
    }

    #[async_trait]
    impl Orchestrator for Engine {
        async fn trigger(
            &self,
            _: &RequestContext,
            _: &TriggerRequest,
        ) -> Result<Run, ExecuteError> {
            unreachable!("the watch only reads")
        }
        async fn list_runs(
            &self,
            _: &RequestContext,
            _: &PipelineId,
            _: &RunQuery,
        ) -> Result<RunPage, ListRunsError> {
            unreachable!("the watch only reads runs one by one")
        }
        async fn get_run(
            &self,
            _: &RequestContext,
            _: &PipelineId,
            _: &RunId,
        ) -> Result<Run, GetRunError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if *self.failing.lock().unwrap() {
                return Err(BackendError::unavailable("down").into());
            }
            Ok(run(*self.status.lock().unwrap()))
        }
        async fn cancel_run(
            &self,
            _: &RequestContext,
            _: &PipelineId,
            _: &RunId,
        ) -> Result<Run, CancelRunError> {
            unreachable!("the watch only reads")
        }
        async fn health(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn engine() -> Arc<Engine> {
        Arc::new(Engine {
            status: Mutex::new(RunStatus::Running),
            reads: AtomicUsize::new(0),
            failing: Mutex::new(false),
        })
    }

    fn ctx() -> RequestContext {
        RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_waiters_of_one_run_cost_one_read_per_interval_and_all_wake() {
        let engine = engine();
        let watch = PollingRunWatch::new(engine.clone(), Duration::from_secs(2));
        let waiters: Vec<_> = (0..1000)
            .map(|_| {
                let watch = watch.clone();
                tokio::spawn(async move { watch.changed(&ctx(), &run(RunStatus::Running)).await })
            })
            .collect();
        // Three intervals pass with the run unchanged.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let reads = engine.reads.load(Ordering::SeqCst);
        assert!((3..=4).contains(&reads), "{reads} reads in three intervals");

        *engine.status.lock().unwrap() = RunStatus::Success;
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().unwrap().status, RunStatus::Success);
        }
        assert_eq!(watch.watched_runs(), 0, "nobody waits: nothing is watched");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_keeps_the_waiters_waiting_and_a_gone_run_ends_them() {
        let engine = engine();
        *engine.failing.lock().unwrap() = true;
        let watch = PollingRunWatch::new(engine.clone(), Duration::from_millis(500));
        let waiter = {
            let watch = watch.clone();
            tokio::spawn(async move { watch.changed(&ctx(), &run(RunStatus::Running)).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished());

        *engine.failing.lock().unwrap() = false;
        *engine.status.lock().unwrap() = RunStatus::Failed;
        assert_eq!(waiter.await.unwrap().unwrap().status, RunStatus::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_polled_while_nobody_waits() {
        let engine = engine();
        let watch = PollingRunWatch::new(engine.clone(), Duration::from_secs(1));
        let waiter = {
            let watch = watch.clone();
            tokio::spawn(async move { watch.changed(&ctx(), &run(RunStatus::Running)).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        waiter.abort();
        let _ = waiter.await;
        let reads = engine.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(engine.reads.load(Ordering::SeqCst), reads);
        assert_eq!(watch.watched_runs(), 0);
    }
}
