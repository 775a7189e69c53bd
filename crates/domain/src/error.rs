//! Why a use case did not do what was asked: one error type per use case,
//! shared by the port that serves it, and the one failure every port can
//! have, the backend itself failing.
//!
//! The errors carry data (ids, statuses, limits), and their texts speak of
//! pipelines and runs for the log. The answers a client gets are chosen by
//! the adapter that faces it, from the variant and its data.

use std::fmt;

use crate::{PipelineId, RunId, RunStatus};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure a backend had. It is all a client may learn of the
/// failure: the context and the cause are for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend refused the connection or could not be reached.
    Unavailable,
    /// The backend did not answer within the configured timeout.
    Timeout,
    /// The backend answered something unexpected: a failure of its own, a
    /// malformed answer, a refusal it had no reason to give.
    Upstream,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "backend unavailable",
            Self::Timeout => "backend timed out",
            Self::Upstream => "unexpected backend answer",
        })
    }
}

/// A backend failure, with the context an operator needs in the log.
///
/// The context and source are for logs only: they may name the backend's
/// address or quote its answer. Adapters that face clients answer with a
/// generic message chosen from [`BackendError::kind`].
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {context}")]
pub struct BackendError {
    kind: BackendErrorKind,
    context: String,
    #[source]
    source: Option<BoxError>,
}

impl BackendError {
    /// A failure of the given kind, described for the log.
    pub fn new(kind: BackendErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// The backend could not be reached.
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Unavailable, context)
    }

    /// The backend did not answer in time.
    pub fn timeout(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Timeout, context)
    }

    /// The backend answered something unexpected.
    pub fn upstream(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Upstream, context)
    }

    /// Attaches the underlying cause, kept for the log's cause chain.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }
}

/// Why a pipeline was not executed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// No pipeline with this id belongs to the caller's customer; nothing
    /// was started.
    #[error("pipeline {0} not found")]
    NotFound(PipelineId),
    /// The pipeline is paused; nothing was started.
    #[error("pipeline {0} is paused")]
    Paused(PipelineId),
    /// The pipeline's queue of waiting runs is at its bound; nothing was
    /// started.
    #[error("pipeline {pipeline_id} already has {limit} runs waiting, its most")]
    QueueFull {
        /// The pipeline asked for.
        pipeline_id: PipelineId,
        /// The bound that was reached.
        limit: usize,
    },
    /// The pipeline refused the run's parameters (an engine that checks
    /// them against the pipeline's declared parameters); nothing was
    /// started.
    #[error("pipeline {pipeline_id} refused the run parameters: {reason}")]
    ConfRefused {
        /// The pipeline asked for.
        pipeline_id: PipelineId,
        /// The parameter refused, when the engine names one.
        parameter: Option<String>,
        /// Why, in a few words fit for the caller (never an engine's raw
        /// answer).
        reason: String,
    },
    /// The backend failed; a run may or may not have started.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a run was not cancelled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelRunError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline {0} not found")]
    PipelineNotFound(PipelineId),
    /// The pipeline is the caller's, but has no run with this id.
    #[error("run {run_id} of pipeline {pipeline_id} not found")]
    RunNotFound {
        /// The caller's pipeline.
        pipeline_id: PipelineId,
        /// The run id asked for.
        run_id: RunId,
    },
    /// The run had already finished; nothing changed.
    #[error("run {run_id} of pipeline {pipeline_id} already finished with status {status}")]
    AlreadyFinished {
        /// The caller's pipeline.
        pipeline_id: PipelineId,
        /// The run.
        run_id: RunId,
        /// How it finished.
        status: RunStatus,
    },
    /// The backend failed; the run may or may not have been cancelled.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl CancelRunError {
    /// The caller's pipeline `pipeline_id` has no run `run_id`.
    pub fn run_not_found(pipeline_id: &PipelineId, run_id: &RunId) -> Self {
        Self::RunNotFound {
            pipeline_id: pipeline_id.clone(),
            run_id: run_id.clone(),
        }
    }
}

impl From<GetRunError> for CancelRunError {
    /// A cancel that found no run, or no pipeline, for the reason a read
    /// would not.
    fn from(err: GetRunError) -> Self {
        match err {
            GetRunError::PipelineNotFound(id) => Self::PipelineNotFound(id),
            GetRunError::RunNotFound {
                pipeline_id,
                run_id,
            } => Self::RunNotFound {
                pipeline_id,
                run_id,
            },
            GetRunError::Backend(err) => Self::Backend(err),
        }
    }
}

/// Why a pipeline was not paused or unpaused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetPausedError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline {0} not found")]
    NotFound(PipelineId),
    /// Pausing a pipeline that already was paused; nothing changed.
    #[error("pipeline {0} is already paused")]
    AlreadyPaused(PipelineId),
    /// Unpausing a pipeline that was not paused; nothing changed.
    #[error("pipeline {0} is not paused")]
    NotPaused(PipelineId),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl SetPausedError {
    /// The error of a pause (`paused`) or unpause that found the pipeline
    /// already in the state asked for.
    pub fn unchanged(pipeline_id: PipelineId, paused: bool) -> Self {
        if paused {
            Self::AlreadyPaused(pipeline_id)
        } else {
            Self::NotPaused(pipeline_id)
        }
    }
}

/// Why a pipeline could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetPipelineError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline {0} not found")]
    NotFound(PipelineId),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why the runs of a pipeline could not be listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListRunsError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline {0} not found")]
    NotFound(PipelineId),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a run could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetRunError {
    /// No pipeline with this id belongs to the caller's customer.
    #[error("pipeline {0} not found")]
    PipelineNotFound(PipelineId),
    /// The pipeline is the caller's, but has no run with this id.
    #[error("run {run_id} of pipeline {pipeline_id} not found")]
    RunNotFound {
        /// The caller's pipeline.
        pipeline_id: PipelineId,
        /// The run id asked for.
        run_id: RunId,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl GetRunError {
    /// The caller's pipeline `pipeline_id` has no run `run_id`.
    pub fn run_not_found(pipeline_id: &PipelineId, run_id: &RunId) -> Self {
        Self::RunNotFound {
            pipeline_id: pipeline_id.clone(),
            run_id: run_id.clone(),
        }
    }
}
