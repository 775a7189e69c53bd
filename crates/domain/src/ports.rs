//! The ports: what the use cases need from a backend, and the one request
//! a trigger takes.
//!
//! Every call carries the [`RequestContext`], and every implementation scopes
//! the call to its customer: a pipeline of another customer must look
//! exactly like a missing one. [`crate::PipelineService`] checks what comes
//! back as a second line of defence, but the first line is here.
//!
//! Each method returns the error type of the use case it serves, so that an
//! implementation says exactly what the use case answers, with the ids the
//! caller asked for.

use async_trait::async_trait;

use crate::{
    BackendError, CancelRunError, ExecuteError, GetPipelineError, GetRunError, IdempotencyKey,
    ListRunsError, Pipeline, PipelineId, PipelineSummary, RequestContext, Run, RunConf, RunId,
    RunPage, RunQuery, SetPausedError, Timestamp,
};

/// Everything a trigger needs: which pipeline, and what makes the trigger
/// safe to repeat.
///
/// Built with [`TriggerRequest::new`] and the `with_` methods, so that what
/// a later version adds (run parameters, say) has a default and breaks no
/// caller.
///
/// ```
/// use domain::{IdempotencyKey, PipelineId, TriggerRequest};
///
/// let request = TriggerRequest::new(PipelineId::parse("1b33ad2f-33d3-4837-9eeb-83c82c8b909d")?)
///     .with_idempotency_key(IdempotencyKey::parse("order-42")?);
/// assert_eq!(request.idempotency_key().map(IdempotencyKey::as_str), Some("order-42"));
/// assert_eq!(request.retry_since(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRequest {
    pipeline_id: PipelineId,
    conf: RunConf,
    idempotency_key: Option<IdempotencyKey>,
    retry_since: Option<Timestamp>,
}

impl TriggerRequest {
    /// A trigger of `pipeline_id`, now, with nothing else asked.
    pub fn new(pipeline_id: PipelineId) -> Self {
        Self {
            pipeline_id,
            conf: RunConf::default(),
            idempotency_key: None,
            retry_since: None,
        }
    }

    /// The same trigger, with the run's parameters.
    #[must_use]
    pub fn with_conf(mut self, conf: RunConf) -> Self {
        self.conf = conf;
        self
    }

    /// The same trigger, sent with the client's idempotency key (scoped to
    /// the caller's customer). A backend that can mark a run with the key
    /// does, so that a later trigger with the same key can find that run.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// The same trigger, retrying one with the same key that failed with a
    /// backend error and so may have started a run its answer never
    /// reported: `since` is the earliest instant that run can have been
    /// made. A backend that can find that run answers with it instead of
    /// starting a second; a run marked with the key but older than `since`
    /// belongs to an earlier use of the key and is not taken for it.
    #[must_use]
    pub fn retrying_since(mut self, since: Timestamp) -> Self {
        self.retry_since = Some(since);
        self
    }

    /// The pipeline to run.
    pub fn pipeline_id(&self) -> &PipelineId {
        &self.pipeline_id
    }

    /// The run's parameters (empty when none were given).
    pub fn conf(&self) -> &RunConf {
        &self.conf
    }

    /// The client's idempotency key, if it sent one.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency_key.as_ref()
    }

    /// When this retries a failed trigger: the earliest instant that
    /// trigger's run can have been made.
    pub fn retry_since(&self) -> Option<Timestamp> {
        self.retry_since
    }
}

/// Where pipelines live: their metadata and whether they are paused.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PipelineRepository: Send + Sync {
    /// The caller's pipeline with this id.
    ///
    /// # Errors
    /// [`GetPipelineError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`GetPipelineError::Backend`] when the backend
    /// fails.
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError>;

    /// Every pipeline of the caller's customer, with its newest run's status,
    /// in full (not one page of them).
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError>;

    /// Pauses (`paused = true`) or unpauses the caller's pipeline. Pausing
    /// lets running runs finish.
    ///
    /// # Errors
    /// [`SetPausedError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`SetPausedError::AlreadyPaused`] or
    /// [`SetPausedError::NotPaused`] when it already was in the state asked
    /// for (see [`SetPausedError::unchanged`]); [`SetPausedError::Backend`]
    /// when the backend fails.
    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError>;
}

/// What runs pipelines: triggers runs, queues them one at a time per
/// pipeline, and reports on them.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Triggers a run of the caller's pipeline now, whatever its schedule.
    /// The run is `RUNNING` when the pipeline has no active run, and
    /// `QUEUED` behind the earlier runs otherwise. Its id is unique for the
    /// pipeline, even among triggers in the same microsecond.
    ///
    /// The visibility and paused checks must hold at the moment of the
    /// trigger: a backend that can do them atomically with the trigger does.
    /// Everything the request carries must be honoured or refused, never
    /// dropped: a retry ([`TriggerRequest::retry_since`]) answers with the
    /// run of the failed attempt when the backend can find it.
    ///
    /// # Errors
    /// [`ExecuteError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`ExecuteError::Paused`] when it is paused;
    /// [`ExecuteError::QueueFull`] when its queue is at its bound;
    /// [`ExecuteError::ConfRefused`] when the pipeline refuses the
    /// parameters; [`ExecuteError::Backend`] when the backend fails. On
    /// every error but the last, nothing was started.
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError>;

    /// One page of the runs of the caller's pipeline, newest first.
    ///
    /// # Errors
    /// [`ListRunsError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`ListRunsError::Backend`] when the backend fails.
    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError>;

    /// One run of the caller's pipeline.
    ///
    /// # Errors
    /// [`GetRunError::PipelineNotFound`] when no such pipeline belongs to
    /// the caller's customer; [`GetRunError::RunNotFound`] when it has no
    /// run with this id; [`GetRunError::Backend`] when the backend fails.
    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError>;

    /// Cancels a run of the caller's pipeline that has not finished: a
    /// queued run never starts, a running one is stopped; either ends
    /// `FAILED` with the trace [`Run::CANCELLED_TRACE`], and the pipeline's
    /// next queued run starts as after any finished run. Answers the run
    /// as it is after the cancel.
    ///
    /// # Errors
    /// [`CancelRunError::PipelineNotFound`] when no such pipeline belongs to
    /// the caller's customer; [`CancelRunError::RunNotFound`] when it has no
    /// run with this id; [`CancelRunError::AlreadyFinished`] when the run
    /// had finished (nothing changed); [`CancelRunError::Backend`] when the
    /// backend fails.
    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError>;

    /// Whether the backend answers, for readiness checks.
    ///
    /// # Errors
    /// [`BackendError`] when it does not.
    async fn health(&self) -> Result<(), BackendError>;
}

/// Where changes of runs are heard: what lets a request wait for a run to
/// finish without asking the backend once per waiting request.
///
/// An implementation watches the runs someone waits on (a backend that
/// tells of changes by itself, or one watcher polling for all waiters
/// together) and wakes the waiters of a run when it changes.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait RunWatch: Send + Sync {
    /// The run `seen` (of the caller's pipeline) once it differs from
    /// `seen`: another status, or a later `updated_at`. Waits as long as
    /// it takes; callers bound the wait.
    ///
    /// # Errors
    /// As [`Orchestrator::get_run`]: the pipeline or the run is gone, or
    /// the backend fails.
    async fn changed(&self, ctx: &RequestContext, seen: &Run) -> Result<Run, GetRunError>;
}
