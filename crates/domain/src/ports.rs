//! The ports: what the use cases need from a backend.
//!
//! Every call carries the [`RequestContext`], and every implementation scopes
//! the call to its customer: a pipeline of another customer must look
//! exactly like a missing one. [`crate::PipelineService`] checks what comes
//! back as a second line of defence, but the first line is here.

use async_trait::async_trait;

use crate::{
    BackendError, IdempotencyKey, Pipeline, PipelineId, PipelineSummary, RequestContext, Run,
    RunId, RunPage, RunQuery, Timestamp,
};

/// What makes a trigger safe to repeat: the client's idempotency key, and
/// whether an earlier trigger with it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerOptions {
    /// The execute's `Idempotency-Key`, scoped to the caller's customer. A
    /// backend that can mark a run with it does, so that a later trigger
    /// with the same key can find that run.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Set when an earlier trigger with the key failed with a backend
    /// error, so that it may have started a run its answer never reported
    /// (the answer was lost, or came after the timeout): the earliest
    /// instant that run can have been made, the key's retention back from
    /// now. A backend that can find that run answers with it instead of
    /// starting a second one; a run marked with the key but older than this
    /// belongs to an earlier use of the key, whose answer is no longer kept.
    pub retry_since: Option<Timestamp>,
}

/// The pipeline is not visible to the caller: missing, or another
/// customer's.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline not found")]
    NotFound,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a pause or unpause did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SetPausedError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline not found")]
    NotFound,
    /// The pipeline was already in the asked-for state; nothing changed.
    #[error("pipeline already in that state")]
    Unchanged,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a trigger did not start a run.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline not found")]
    NotFound,
    /// The pipeline is paused; nothing was started.
    #[error("pipeline paused")]
    Paused,
    /// The pipeline's queue of waiting runs is at its bound; nothing was
    /// started.
    #[error("queue full at {limit} waiting runs")]
    QueueFull {
        /// The bound that was reached.
        limit: usize,
    },
    /// The backend failed; a run may or may not have started.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why runs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline not found")]
    NotFound,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a run could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum RunLookupError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline not found")]
    PipelineNotFound,
    /// The pipeline is visible but has no run with this id.
    #[error("run not found")]
    RunNotFound,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Where pipelines live: their metadata and whether they are paused.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PipelineRepository: Send + Sync {
    /// The caller's pipeline with this id.
    ///
    /// # Errors
    /// [`LookupError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`LookupError::Backend`] when the backend fails.
    async fn get(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Pipeline, LookupError>;

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
    /// caller's customer; [`SetPausedError::Unchanged`] when it already was
    /// in that state; [`SetPausedError::Backend`] when the backend fails.
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
    ///
    /// # Errors
    /// [`TriggerError::NotFound`] when no such pipeline belongs to the
    /// caller's customer; [`TriggerError::Paused`] when it is paused;
    /// [`TriggerError::QueueFull`] when its queue is at its bound;
    /// [`TriggerError::Backend`] when the backend fails. On every error but
    /// the last, nothing was started.
    async fn trigger(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Run, TriggerError>;

    /// [`Orchestrator::trigger`], made safe to repeat with `options`: a
    /// retry of a failed trigger with the same idempotency key answers with
    /// the run the failed one started, if it did and the backend can find
    /// it, rather than starting a second.
    ///
    /// The default ignores `options`, for backends that cannot find earlier
    /// runs. A decorator of another orchestrator must pass it on.
    ///
    /// # Errors
    /// As [`Orchestrator::trigger`].
    async fn trigger_with(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        options: &TriggerOptions,
    ) -> Result<Run, TriggerError> {
        let _ = options;
        self.trigger(ctx, id).await
    }

    /// One page of the runs of the caller's pipeline, newest first.
    ///
    /// # Errors
    /// [`RunsError::NotFound`] when no such pipeline belongs to the caller's
    /// customer; [`RunsError::Backend`] when the backend fails.
    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, RunsError>;

    /// One run of the caller's pipeline.
    ///
    /// # Errors
    /// [`RunLookupError::PipelineNotFound`] when no such pipeline belongs to
    /// the caller's customer; [`RunLookupError::RunNotFound`] when it has no
    /// run with this id; [`RunLookupError::Backend`] when the backend fails.
    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, RunLookupError>;

    /// Whether the backend answers, for readiness checks.
    ///
    /// # Errors
    /// [`BackendError`] when it does not.
    async fn health(&self) -> Result<(), BackendError>;
}
