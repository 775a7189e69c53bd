//! The use cases: execute, pause, unpause, get and list pipelines, list and
//! get runs.
//!
//! Each use case has its own error type, and each error's text is the one
//! the public contract promises clients.

use std::sync::Arc;

use crate::{
    BackendError, LookupError, Orchestrator, Pipeline, PipelineId, PipelineRepository,
    PipelineSummary, RequestContext, Run, RunId, RunLookupError, RunPage, RunQuery, RunsError,
    SetPausedError, TriggerError, TriggerOptions,
};

/// Why a pipeline could not be executed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    NotFound(PipelineId),
    /// The pipeline is paused.
    #[error("Cannot execute paused pipeline. Use /pipeline/unpause first.")]
    Paused,
    /// The pipeline's queue is at its bound.
    #[error(
        "Pipeline queue is full ({limit} runs waiting). Retry when earlier runs have finished."
    )]
    QueueFull {
        /// The bound that was reached.
        limit: usize,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why a pipeline could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    NotFound(PipelineId),
    /// It already was paused.
    #[error("Pipeline is already paused")]
    AlreadyPaused,
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why a pipeline could not be unpaused.
#[derive(Debug, thiserror::Error)]
pub enum UnpauseError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    NotFound(PipelineId),
    /// It was not paused.
    #[error("Pipeline is not paused")]
    NotPaused,
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why a pipeline could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum GetPipelineError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    NotFound(PipelineId),
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why pipelines could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListPipelinesError {
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why runs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListRunsError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    NotFound(PipelineId),
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// Why a run could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum GetRunError {
    /// No such pipeline is visible to the caller.
    #[error("Pipeline with id {0} not found")]
    PipelineNotFound(PipelineId),
    /// The pipeline has no run with this id.
    #[error("Pipeline run with id {run_id} not found for pipeline {pipeline_id}")]
    RunNotFound {
        /// The visible pipeline.
        pipeline_id: PipelineId,
        /// The run id that was asked for.
        run_id: RunId,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(BackendError),
}

/// The use cases, over whichever backend the ports were given.
///
/// Cheap to clone: it holds the ports behind [`Arc`]s.
#[derive(Clone)]
pub struct PipelineService {
    pipelines: Arc<dyn PipelineRepository>,
    orchestrator: Arc<dyn Orchestrator>,
}

impl std::fmt::Debug for PipelineService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineService").finish_non_exhaustive()
    }
}

impl PipelineService {
    /// The use cases over a repository and an orchestrator (often one
    /// backend implementing both).
    pub fn new(
        pipelines: Arc<dyn PipelineRepository>,
        orchestrator: Arc<dyn Orchestrator>,
    ) -> Self {
        Self {
            pipelines,
            orchestrator,
        }
    }

    /// Triggers a run of the caller's pipeline now, whatever its schedule;
    /// the run waits `QUEUED` while an earlier one is active.
    ///
    /// # Errors
    /// See [`ExecuteError`].
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Run, ExecuteError> {
        self.execute_with(ctx, id, &TriggerOptions::default()).await
    }

    /// [`PipelineService::execute`], made safe to repeat with `options`
    /// (see [`Orchestrator::trigger_with`]).
    ///
    /// # Errors
    /// See [`ExecuteError`].
    pub async fn execute_with(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        options: &TriggerOptions,
    ) -> Result<Run, ExecuteError> {
        let run = self
            .orchestrator
            .trigger_with(ctx, id, options)
            .await
            .map_err(|err| match err {
                TriggerError::NotFound => ExecuteError::NotFound(id.clone()),
                TriggerError::Paused => ExecuteError::Paused,
                TriggerError::QueueFull { limit } => ExecuteError::QueueFull { limit },
                TriggerError::Backend(err) => ExecuteError::Backend(err),
            })?;
        if run.pipeline_id != *id {
            return Err(ExecuteError::Backend(BackendError::upstream(format!(
                "trigger of {id} answered with a run of {}",
                run.pipeline_id
            ))));
        }
        Ok(run)
    }

    /// Pauses the caller's pipeline; running runs finish.
    ///
    /// # Errors
    /// See [`PauseError`].
    pub async fn pause(&self, ctx: &RequestContext, id: &PipelineId) -> Result<(), PauseError> {
        self.pipelines
            .set_paused(ctx, id, true)
            .await
            .map_err(|err| match err {
                SetPausedError::NotFound => PauseError::NotFound(id.clone()),
                SetPausedError::Unchanged => PauseError::AlreadyPaused,
                SetPausedError::Backend(err) => PauseError::Backend(err),
            })
    }

    /// Unpauses the caller's pipeline, so that it accepts executions again.
    ///
    /// # Errors
    /// See [`UnpauseError`].
    pub async fn unpause(&self, ctx: &RequestContext, id: &PipelineId) -> Result<(), UnpauseError> {
        self.pipelines
            .set_paused(ctx, id, false)
            .await
            .map_err(|err| match err {
                SetPausedError::NotFound => UnpauseError::NotFound(id.clone()),
                SetPausedError::Unchanged => UnpauseError::NotPaused,
                SetPausedError::Backend(err) => UnpauseError::Backend(err),
            })
    }

    /// The caller's pipeline.
    ///
    /// # Errors
    /// See [`GetPipelineError`].
    pub async fn get_pipeline(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        match self.pipelines.get(ctx, id).await {
            // A backend that answers with another customer's pipeline is
            // wrong, and the caller must not learn that the pipeline exists.
            Ok(pipeline) if pipeline.customer_id == *ctx.customer() && pipeline.id == *id => {
                Ok(pipeline)
            }
            Ok(_) | Err(LookupError::NotFound) => Err(GetPipelineError::NotFound(id.clone())),
            Err(LookupError::Backend(err)) => Err(GetPipelineError::Backend(err)),
        }
    }

    /// Every pipeline of the caller's customer, ordered by name, then id.
    ///
    /// # Errors
    /// See [`ListPipelinesError`].
    pub async fn list_pipelines(
        &self,
        ctx: &RequestContext,
    ) -> Result<Vec<PipelineSummary>, ListPipelinesError> {
        let mut pipelines = self
            .pipelines
            .list(ctx)
            .await
            .map_err(ListPipelinesError::Backend)?;
        pipelines.retain(|summary| summary.pipeline.customer_id == *ctx.customer());
        pipelines.sort_by(|a, b| {
            (&a.pipeline.name, &a.pipeline.id).cmp(&(&b.pipeline.name, &b.pipeline.id))
        });
        Ok(pipelines)
    }

    /// One page of the caller's pipeline's runs, newest first, with the
    /// total number of matching runs.
    ///
    /// # Errors
    /// See [`ListRunsError`].
    pub async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        let mut page =
            self.orchestrator
                .list_runs(ctx, id, query)
                .await
                .map_err(|err| match err {
                    RunsError::NotFound => ListRunsError::NotFound(id.clone()),
                    RunsError::Backend(err) => ListRunsError::Backend(err),
                })?;
        page.runs.retain(|run| run.pipeline_id == *id);
        page.runs
            .truncate(usize::try_from(query.limit()).unwrap_or(usize::MAX));
        Ok(page)
    }

    /// One run of the caller's pipeline.
    ///
    /// # Errors
    /// See [`GetRunError`].
    pub async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        let not_found = || GetRunError::RunNotFound {
            pipeline_id: id.clone(),
            run_id: run_id.clone(),
        };
        match self.orchestrator.get_run(ctx, id, run_id).await {
            Ok(run) if run.pipeline_id == *id && run.id == *run_id => Ok(run),
            Ok(_) | Err(RunLookupError::RunNotFound) => Err(not_found()),
            Err(RunLookupError::PipelineNotFound) => Err(GetRunError::PipelineNotFound(id.clone())),
            Err(RunLookupError::Backend(err)) => Err(GetRunError::Backend(err)),
        }
    }

    /// Whether the backend answers.
    ///
    /// # Errors
    /// The backend's failure when it does not.
    pub async fn ready(&self) -> Result<(), BackendError> {
        self.orchestrator.health().await
    }
}

#[cfg(test)]
mod tests;
