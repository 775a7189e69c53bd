//! The use cases: execute, pause, unpause, get and list pipelines, list and
//! get runs.
//!
//! Each use case answers with the error type its port answers with
//! ([`ExecuteError`], [`SetPausedError`], ...), and checks what the port
//! gave back, so that a faulty backend still cannot show one customer
//! another's pipeline or run.

use std::{future::Future, pin::pin, sync::Arc, task::Poll};

use crate::{
    BackendError, CancelRunError, ExecuteError, GetPipelineError, GetRunError, ListRunsError,
    Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary, RequestContext, Run,
    RunId, RunPage, RunQuery, RunWatch, SetPausedError, TriggerRequest,
};

/// The use cases, over whichever backend the ports were given.
///
/// Cheap to clone: it holds the ports behind [`Arc`]s.
#[derive(Clone)]
pub struct PipelineService {
    pipelines: Arc<dyn PipelineRepository>,
    orchestrator: Arc<dyn Orchestrator>,
    watch: Option<Arc<dyn RunWatch>>,
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
            watch: None,
        }
    }

    /// The same use cases, hearing of run changes from `watch`, so that
    /// [`PipelineService::wait_for_run`] waits without asking the backend
    /// once per waiting request.
    #[must_use]
    pub fn with_run_watch(mut self, watch: Arc<dyn RunWatch>) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Triggers a run of the caller's pipeline now, whatever its schedule;
    /// the run waits `QUEUED` while an earlier one is active.
    ///
    /// # Errors
    /// See [`ExecuteError`].
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        let id = request.pipeline_id();
        let run = self.orchestrator.trigger(ctx, request).await?;
        if run.pipeline_id != *id {
            return Err(BackendError::upstream(format!(
                "trigger of {id} answered with a run of {}",
                run.pipeline_id
            ))
            .into());
        }
        Ok(run)
    }

    /// Pauses the caller's pipeline; running runs finish.
    ///
    /// # Errors
    /// See [`SetPausedError`]; [`SetPausedError::AlreadyPaused`] when it
    /// was paused.
    pub async fn pause(&self, ctx: &RequestContext, id: &PipelineId) -> Result<(), SetPausedError> {
        self.pipelines.set_paused(ctx, id, true).await
    }

    /// Unpauses the caller's pipeline, so that it accepts executions again.
    ///
    /// # Errors
    /// See [`SetPausedError`]; [`SetPausedError::NotPaused`] when it was
    /// not paused.
    pub async fn unpause(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<(), SetPausedError> {
        self.pipelines.set_paused(ctx, id, false).await
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
        let pipeline = self.pipelines.get(ctx, id).await?;
        // A backend that answers with another customer's pipeline is
        // wrong, and the caller must not learn that the pipeline exists.
        if pipeline.customer_id != *ctx.customer() || pipeline.id != *id {
            return Err(GetPipelineError::NotFound(id.clone()));
        }
        Ok(pipeline)
    }

    /// Every pipeline of the caller's customer, ordered by name, then id.
    ///
    /// # Errors
    /// [`BackendError`] when the backend fails.
    pub async fn list_pipelines(
        &self,
        ctx: &RequestContext,
    ) -> Result<Vec<PipelineSummary>, BackendError> {
        let mut pipelines = self.pipelines.list(ctx).await?;
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
        let mut page = self.orchestrator.list_runs(ctx, id, query).await?;
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
        if run_id.is_dot_segment() {
            // `.` and `..` name no run anywhere, and a backend reached
            // through a path would read them as another address: only
            // whether the pipeline is the caller's is asked.
            return match self.get_pipeline(ctx, id).await {
                Ok(_) => Err(GetRunError::run_not_found(id, run_id)),
                Err(GetPipelineError::NotFound(_)) => {
                    Err(GetRunError::PipelineNotFound(id.clone()))
                }
                Err(GetPipelineError::Backend(err)) => Err(err.into()),
            };
        }
        let run = self.orchestrator.get_run(ctx, id, run_id).await?;
        if run.pipeline_id != *id || run.id != *run_id {
            return Err(GetRunError::run_not_found(id, run_id));
        }
        Ok(run)
    }

    /// The caller's run once it has finished, or as it is when `until`
    /// resolves, whichever comes first: a deadline, or the service
    /// shutting down.
    ///
    /// The run is read once; then the service's [`RunWatch`] tells of its
    /// changes, so that waiting costs the backend nothing per waiting
    /// request. Without a watch, the run is answered as it is at once.
    ///
    /// # Errors
    /// See [`GetRunError`].
    pub async fn wait_for_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
        until: impl Future<Output = ()> + Send,
    ) -> Result<Run, GetRunError> {
        let mut run = self.get_run(ctx, id, run_id).await?;
        let Some(watch) = &self.watch else {
            return Ok(run);
        };
        let mut until = pin!(until);
        while !run.status.is_finished() {
            let changed = watch.changed(ctx, &run);
            match first(changed, until.as_mut()).await {
                Either::Left(changed) => {
                    let changed = changed?;
                    // Only the run asked for, of the pipeline asked for.
                    if changed.pipeline_id != *id || changed.id != *run_id {
                        return Err(GetRunError::run_not_found(id, run_id));
                    }
                    run = changed;
                }
                Either::Right(()) => break,
            }
        }
        Ok(run)
    }

    /// Cancels a run of the caller's pipeline that has not finished: it
    /// ends `FAILED` with the trace [`Run::CANCELLED_TRACE`], and the next
    /// queued run starts. A paused pipeline's runs can be cancelled.
    ///
    /// # Errors
    /// See [`CancelRunError`].
    pub async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        if run_id.is_dot_segment() {
            // As for `get_run`: no backend is asked for `.` or `..`.
            return match self.get_pipeline(ctx, id).await {
                Ok(_) => Err(CancelRunError::run_not_found(id, run_id)),
                Err(GetPipelineError::NotFound(_)) => {
                    Err(CancelRunError::PipelineNotFound(id.clone()))
                }
                Err(GetPipelineError::Backend(err)) => Err(err.into()),
            };
        }
        let run = self.orchestrator.cancel_run(ctx, id, run_id).await?;
        if run.pipeline_id != *id || run.id != *run_id {
            return Err(BackendError::upstream(format!(
                "cancel of run {run_id} of {id} answered with run {} of {}",
                run.id, run.pipeline_id
            ))
            .into());
        }
        Ok(run)
    }

    /// Whether the backend answers.
    ///
    /// # Errors
    /// The backend's failure when it does not.
    pub async fn ready(&self) -> Result<(), BackendError> {
        self.orchestrator.health().await
    }
}

/// Which of two futures finished first.
enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Runs `left` and `right` together and answers with the first to finish,
/// `left` first when both are ready; the other is dropped. Written here so
/// that the domain needs no async runtime.
async fn first<A: Future, B: Future>(left: A, right: B) -> Either<A::Output, B::Output> {
    let mut left = pin!(left);
    let mut right = pin!(right);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(value));
        }
        right.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

#[cfg(test)]
mod tests;
