//! [`MemoryBackend`]: the ports over a fixed set of pipelines, each behind
//! its own lock.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    BackendError, Clock, CustomerId, ExecuteError, GetPipelineError, GetRunError, ListRunsError,
    Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary, RequestContext, Run,
    RunId, RunPage, RunQuery, SetPausedError, TriggerRequest,
};
use runtime::TokioClock;

use crate::state::{Limits, PipelineState};
use crate::{FixtureError, MemoryConfig, demo_pipelines, load_fixture};

/// The embedded backend: pipelines held in memory, runs simulated.
///
/// Cheap to clone: clones share the same pipelines and runs.
///
/// Every operation is scoped to the caller's customer; another customer's
/// pipeline is exactly as not found as a missing one. The set of pipelines
/// is fixed at construction; their state (paused or not, runs) changes.
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
}

/// One pipeline: its owner, readable without the lock since it never
/// changes, and its state.
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
            by_id.insert(id, Slot { customer, state });
        }
        Self {
            inner: Arc::new(Inner {
                config,
                pipelines: by_id,
                by_customer,
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

    /// The caller's pipeline with this id, locked; `None` when it is missing
    /// or another customer's.
    fn visible(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Option<MutexGuard<'_, PipelineState>> {
        let slot = self
            .inner
            .pipelines
            .get(id)
            .filter(|slot| slot.customer == *ctx.customer())?;
        Some(lock(&slot.state))
    }
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
                let mut state = lock(&slot.state);
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
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| SetPausedError::NotFound(id.clone()))?;
        state.set_paused(paused, self.clock.now())
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
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| ExecuteError::NotFound(id.clone()))?;
        state.trigger(self.clock.now())
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

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
