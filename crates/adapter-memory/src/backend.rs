//! [`MemoryBackend`]: the ports over a fixed set of pipelines, each behind
//! its own lock, with a change signal that wakes the waiters of its runs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    BackendError, CancelRunError, Clock, CustomerId, ExecuteError, GetPipelineError, GetRunError,
    ListRunsError, Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary,
    RequestContext, Run, RunId, RunPage, RunQuery, RunWatch, SetPausedError, Timestamp,
    TriggerRequest,
};
use runtime::TokioClock;
use tokio::sync::watch;

use crate::state::{Change, Limits, PipelineState};
use crate::{FixtureError, MemoryConfig, demo_pipelines, load_fixture};

/// The embedded backend: pipelines held in memory, runs simulated.
///
/// Cheap to clone: clones share the same pipelines and runs.
///
/// Every operation is scoped to the caller's customer; another customer's
/// pipeline is exactly as not found as a missing one. The set of pipelines
/// is fixed at construction; their state (paused or not, runs) changes.
///
/// It is its own [`RunWatch`]: a waiter is woken by the change it waits
/// for, with no polling (see its [`RunWatch`] implementation).
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

struct Inner {
    config: MemoryConfig,
    /// Never changes after construction, so it needs no lock: only each
    /// pipeline's state does.
    pipelines: HashMap<PipelineId, Slot>,
    /// Each customer's pipeline ids, in the order they were given.
    by_customer: HashMap<CustomerId, Vec<PipelineId>>,
    /// Bumped after every change made through the backend, on any
    /// pipeline: what wakes the feeds ([`crate::MemoryChanges`]), which
    /// read every pipeline. Apart from the pipelines' own signals, so that
    /// [`MemoryBackend::waiters`] counts the waiters of runs only.
    any_change: watch::Sender<()>,
    /// The feeds reading the backend, and where each read from last.
    readers: Mutex<Readers>,
}

/// The feeds reading the backend: while there is one, every pipeline
/// writes its runs' changes down, and forgets those that every feed has
/// read past.
#[derive(Debug, Default)]
struct Readers {
    next: u64,
    /// Each feed's last position, by its number: where it last read from,
    /// or when it was made, before its first read.
    from: HashMap<u64, Timestamp>,
}

/// One pipeline: its owner, readable without the lock since it never
/// changes, its state, and the signal of changes to it.
///
/// A std [`Mutex`] rather than tokio's: the state is only ever touched in
/// short, synchronous sections (no `.await` while it is held, there being no
/// I/O), and std's lock is cheaper and cannot be held across an `.await` by
/// mistake (its guard is not `Send`), as tokio's own guidance and
/// mini-redis's `db.rs` explain. One lock per pipeline, not one for the
/// whole backend, so that executes of different pipelines never wait on
/// each other.
struct Slot {
    customer: CustomerId,
    state: Mutex<PipelineState>,
    /// Bumped after every change made to the state (trigger, pause,
    /// unpause, cancel); waiters subscribe under the state's lock, so none
    /// misses a change made after it looked. The changes the simulation
    /// makes by itself need no signal: each waiter knows when the next one
    /// is due. A tokio `watch` rather than a `Notify`: a receiver is
    /// counted, so that [`MemoryBackend::waiters`] can tell that none is
    /// left behind.
    changes: watch::Sender<()>,
}

impl Slot {
    /// Locks the pipeline's state.
    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        lock(&self.state)
    }

    /// Wakes the pipeline's waiters: its state changed.
    fn changed(&self) {
        self.changes.send_replace(());
    }
}

impl MemoryBackend {
    /// A backend over these pipelines, with no runs yet, on the service's
    /// clock ([`TokioClock`]: tests drive it with `tokio::time::pause()` and
    /// `tokio::time::advance()`).
    ///
    /// Ids are expected to be unique, as [`load_fixture`] makes sure; a
    /// pipeline whose id was already given is ignored.
    pub fn new(config: MemoryConfig, pipelines: Vec<Pipeline>) -> Self {
        let limits = Limits {
            // A duration too long for chrono is one no run ever outlives.
            run_duration: TimeDelta::from_std(config.run_duration).ok(),
            queue_limit: config.queue_limit,
            history_limit: config.history_limit,
        };
        let mut by_id = HashMap::with_capacity(pipelines.len());
        let mut by_customer: HashMap<CustomerId, Vec<PipelineId>> = HashMap::new();
        for pipeline in pipelines {
            if by_id.contains_key(&pipeline.id) {
                continue;
            }
            let id = pipeline.id.clone();
            let customer = pipeline.customer_id.clone();
            by_customer
                .entry(customer.clone())
                .or_default()
                .push(id.clone());
            let state = Mutex::new(PipelineState::new(pipeline, limits));
            let changes = watch::Sender::new(());
            by_id.insert(
                id,
                Slot {
                    customer,
                    state,
                    changes,
                },
            );
        }
        Self {
            inner: Arc::new(Inner {
                config,
                pipelines: by_id,
                by_customer,
                any_change: watch::Sender::new(()),
                readers: Mutex::new(Readers::default()),
            }),
            clock: Arc::new(TokioClock::start()),
        }
    }

    /// The same backend, reading the time from `clock`. Call it before the
    /// backend is cloned: clones made earlier keep the clock they had.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A backend over the built-in demo set ([`demo_pipelines`]).
    pub fn demo(config: MemoryConfig) -> Self {
        Self::new(config, demo_pipelines())
    }

    /// A backend over the pipelines of a fixture file, those without
    /// instants created now.
    ///
    /// # Errors
    /// Every error of [`load_fixture`].
    pub fn from_fixture(config: MemoryConfig, path: &Path) -> Result<Self, FixtureError> {
        let backend = Self::new(config, Vec::new());
        let pipelines = load_fixture(path, backend.clock.now())?;
        Ok(Self::new(config, pipelines))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// How many waiters ([`RunWatch::changed`]) wait now, on every
    /// pipeline: none is left behind once its wait is over or dropped.
    pub fn waiters(&self) -> usize {
        self.inner
            .pipelines
            .values()
            .map(|slot| slot.changes.receiver_count())
            .sum()
    }

    /// Wakes the waiters of `slot`'s runs and the feeds: its state
    /// changed.
    fn changed(&self, slot: &Slot) {
        slot.changed();
        self.inner.any_change.send_replace(());
    }

    /// The instant a feed reads the pipelines at: the clock's now, or the
    /// latest instant a pipeline dated an operation, when that is later.
    /// Operations are dated strictly after the last read of their pipeline,
    /// so with a clock that stands still (or runs behind the run ids a
    /// burst of triggers hands out) they would otherwise stay ahead of every
    /// read until the clock passed them.
    pub fn feed_now(&self) -> Timestamp {
        self.inner
            .pipelines
            .values()
            .map(|slot| slot.lock().latest())
            .fold(self.clock.now(), Timestamp::max)
    }

    /// A receiver woken by the next change made through the backend, on
    /// any pipeline.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.inner.any_change.subscribe()
    }

    /// Counts a new feed among the readers, holding the changes from now
    /// on until it reads; answers its number.
    pub(crate) fn add_reader(&self) -> u64 {
        let now = self.clock.now();
        let mut readers = lock_readers(&self.inner.readers);
        let id = readers.next;
        readers.next += 1;
        readers.from.insert(id, now);
        id
    }

    /// Notes that feed `id` reads from `from`; answers the earliest
    /// position of all the feeds, before which no change is needed any
    /// more.
    pub(crate) fn reader_at(&self, id: u64, from: Timestamp) -> Option<Timestamp> {
        let mut readers = lock_readers(&self.inner.readers);
        readers.from.insert(id, from);
        readers.from.values().min().copied()
    }

    /// Forgets feed `id`; when it was the last, the pipelines stop writing
    /// changes down.
    pub(crate) fn remove_reader(&self, id: u64) {
        // The readers' lock is held while the journals stop, so that a
        // feed counted meanwhile finds them kept: readers, then a
        // pipeline, is the one order these locks are taken in.
        let mut readers = lock_readers(&self.inner.readers);
        readers.from.remove(&id);
        if readers.from.is_empty() {
            for slot in self.inner.pipelines.values() {
                slot.lock().stop_journal();
            }
        }
    }

    /// How many feeds wait for a change now.
    pub(crate) fn feeds_waiting(&self) -> usize {
        self.inner.any_change.receiver_count()
    }

    /// Reads every pipeline for a feed (see [`PipelineState::feed`]): adds
    /// to `out` the changes from `from` to `now` with their customer, and
    /// answers the first instant after `now` at which a pipeline will
    /// change by itself.
    pub(crate) fn feed(
        &self,
        now: Timestamp,
        from: Timestamp,
        keep_from: Option<Timestamp>,
        out: &mut Vec<(CustomerId, Change)>,
    ) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut changes = Vec::new();
        for slot in self.inner.pipelines.values() {
            let ahead = slot.lock().feed(now, from, keep_from, &mut changes);
            next = match (next, ahead) {
                (Some(next), Some(ahead)) => Some(next.min(ahead)),
                (next, ahead) => next.or(ahead),
            };
            out.extend(
                changes
                    .drain(..)
                    .map(|change| (slot.customer.clone(), change)),
            );
        }
        next
    }

    /// The caller's pipeline with this id; `None` when it is missing or
    /// another customer's.
    fn slot(&self, ctx: &RequestContext, id: &PipelineId) -> Option<&Slot> {
        self.inner
            .pipelines
            .get(id)
            .filter(|slot| slot.customer == *ctx.customer())
    }

    /// The caller's pipeline with this id, locked; `None` when it is missing
    /// or another customer's.
    fn visible(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Option<MutexGuard<'_, PipelineState>> {
        self.slot(ctx, id).map(Slot::lock)
    }
}

/// Locks the feeds' positions; as with the pipelines, a poisoned lock is
/// taken over (nothing under it panics).
fn lock_readers(readers: &Mutex<Readers>) -> MutexGuard<'_, Readers> {
    readers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a pipeline's state. A poisoned lock is taken over: the sections
/// under it have no panicking path, and serving the state beats failing the
/// pipeline until a restart.
fn lock(state: &Mutex<PipelineState>) -> MutexGuard<'_, PipelineState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.inner.config)
            .field("pipelines", &self.inner.pipelines.len())
            .finish_non_exhaustive()
    }
}

// The time is read after the lock is taken, so that each pipeline sees its
// instants in order even when callers race for the lock.

#[async_trait]
impl PipelineRepository for MemoryBackend {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        let state = self
            .visible(ctx, id)
            .ok_or_else(|| GetPipelineError::NotFound(id.clone()))?;
        Ok(state.pipeline().clone())
    }

    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        let Some(ids) = self.inner.by_customer.get(ctx.customer()) else {
            return Ok(Vec::new());
        };
        let summaries = ids
            .iter()
            .filter_map(|id| self.inner.pipelines.get(id))
            .map(|slot| {
                let mut state = slot.lock();
                let last_status = state.last_status(self.clock.now());
                PipelineSummary::new(state.pipeline().clone(), last_status)
            })
            .collect();
        Ok(summaries)
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let slot = self
            .slot(ctx, id)
            .ok_or_else(|| SetPausedError::NotFound(id.clone()))?;
        let mut state = slot.lock();
        state.set_paused(paused, self.clock.now())?;
        drop(state);
        self.changed(slot);
        Ok(())
    }
}

#[async_trait]
impl Orchestrator for MemoryBackend {
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        // Visibility, the paused check, the queue bound and the new run all
        // happen under one lock, so no pause or other trigger slips between.
        // An idempotency key needs nothing here: a trigger either answers or
        // fails before it made a run, so a retry has no lost run to find.
        let id = request.pipeline_id();
        let slot = self
            .slot(ctx, id)
            .ok_or_else(|| ExecuteError::NotFound(id.clone()))?;
        let mut state = slot.lock();
        let run = state.trigger(request.conf(), self.clock.now())?;
        drop(state);
        self.changed(slot);
        Ok(run)
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| ListRunsError::NotFound(id.clone()))?;
        Ok(state.list_runs(query, self.clock.now()))
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| GetRunError::PipelineNotFound(id.clone()))?;
        state
            .get_run(run_id, self.clock.now())
            .ok_or_else(|| GetRunError::run_not_found(id, run_id))
    }

    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        let slot = self
            .slot(ctx, id)
            .ok_or_else(|| CancelRunError::PipelineNotFound(id.clone()))?;
        let mut state = slot.lock();
        let run = state.cancel(run_id, self.clock.now())?;
        drop(state);
        self.changed(slot);
        Ok(run)
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Waits are woken by the change itself: by the pipeline's change signal
/// when a trigger, pause, unpause or cancel changes its state, and by a
/// timer set to the next instant the simulation changes the run by itself
/// (the end of a running run, the start of a queued one behind a run whose
/// end is known, or the instant a finished run is forgotten). Nothing is
/// polled. A waiter costs a signal receiver and a timer, and leaves nothing
/// behind when its wait is over or dropped.
///
/// The timer runs on tokio's time, which the default clock ([`TokioClock`])
/// follows, so that under paused time a waiter wakes exactly at the
/// transition. With a clock that does not follow tokio's time (a
/// [`domain::ManualClock`]) changes made through the backend still wake
/// waiters at once, and a waiter re-reads the run whenever its timer fires.
#[async_trait]
impl RunWatch for MemoryBackend {
    async fn changed(&self, ctx: &RequestContext, seen: &Run) -> Result<Run, GetRunError> {
        let id = &seen.pipeline_id;
        let slot = self
            .slot(ctx, id)
            .ok_or_else(|| GetRunError::PipelineNotFound(id.clone()))?;
        loop {
            let (mut changes, next_change) = {
                let mut state = slot.lock();
                let now = self.clock.now();
                let watched = state
                    .watch(&seen.id, now)
                    .ok_or_else(|| GetRunError::run_not_found(id, &seen.id))?;
                if differs(&watched.run, seen) {
                    return Ok(watched.run);
                }
                // Subscribed under the lock: every change after this read is
                // one this receiver has not seen yet.
                let changes = slot.changes.subscribe();
                let next_change = watched
                    .next_change
                    .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO));
                (changes, next_change)
            };
            // The lock is released: the wait holds nothing but the receiver
            // and the timer.
            tokio::select! {
                _ = changes.changed() => {}
                () = sleep_for(next_change) => {}
            }
        }
    }
}

/// Sleeps for `duration`, or for ever when there is none.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Whether the run read differs from the one seen: another status, or a
/// later `updated_at`.
fn differs(run: &Run, seen: &Run) -> bool {
    run.status != seen.status || run.updated_at > seen.updated_at
}
