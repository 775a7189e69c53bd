//! Port decorators that count every backend call by operation and outcome,
//! and time it, whatever the backend.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use domain::{
    BackendError, BackendErrorKind, CancelRunError, ExecuteError, GetPipelineError, GetRunError,
    ListRunsError, Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary,
    RequestContext, Run, RunId, RunPage, RunQuery, SetPausedError, TriggerRequest,
};

use crate::Metrics;

/// A port wrapped so that each call is counted in
/// `maestro_backend_calls_total{operation, outcome}` and timed in
/// `maestro_backend_call_duration_seconds{operation}`.
#[derive(Debug)]
pub(crate) struct Instrumented<T: ?Sized> {
    inner: Arc<T>,
    metrics: Metrics,
}

impl Metrics {
    /// Wraps a repository so that its calls are measured.
    pub fn instrument_repository(
        &self,
        inner: Arc<dyn PipelineRepository>,
    ) -> Arc<dyn PipelineRepository> {
        Arc::new(Instrumented {
            inner,
            metrics: self.clone(),
        })
    }

    /// Wraps an orchestrator so that its calls are measured.
    pub fn instrument_orchestrator(&self, inner: Arc<dyn Orchestrator>) -> Arc<dyn Orchestrator> {
        Arc::new(Instrumented {
            inner,
            metrics: self.clone(),
        })
    }
}

/// The outcome label of a call's result.
pub(crate) trait Outcome {
    fn outcome(&self) -> &'static str;
}

/// Whether an outcome label is the backend failing, rather than an answer
/// (a pipeline not found is an answer).
pub(crate) fn is_failure(outcome: &str) -> bool {
    matches!(
        outcome,
        "unavailable" | "timeout" | "upstream_error" | "backend_error"
    )
}

fn backend_outcome(err: &BackendError) -> &'static str {
    match err.kind() {
        BackendErrorKind::Unavailable => "unavailable",
        BackendErrorKind::Timeout => "timeout",
        BackendErrorKind::Upstream => "upstream_error",
        // A kind added to the domain later is counted, if not named.
        _ => "backend_error",
    }
}

impl<T> Outcome for Result<T, BackendError> {
    fn outcome(&self) -> &'static str {
        self.as_ref().map_or_else(backend_outcome, |_| "ok")
    }
}

// The domain's errors are `#[non_exhaustive]`: the wildcard arms below count
// a way to fail that the domain adds later as `other` until it is named.

impl<T> Outcome for Result<T, GetPipelineError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(GetPipelineError::NotFound(_)) => "not_found",
            Err(GetPipelineError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T> Outcome for Result<T, SetPausedError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(SetPausedError::NotFound(_)) => "not_found",
            Err(SetPausedError::AlreadyPaused(_) | SetPausedError::NotPaused(_)) => "unchanged",
            Err(SetPausedError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T> Outcome for Result<T, ExecuteError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(ExecuteError::NotFound(_)) => "not_found",
            Err(ExecuteError::Paused(_)) => "paused",
            Err(ExecuteError::QueueFull { .. }) => "queue_full",
            Err(ExecuteError::ConfRefused { .. }) => "conf_refused",
            Err(ExecuteError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T> Outcome for Result<T, ListRunsError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(ListRunsError::NotFound(_)) => "not_found",
            Err(ListRunsError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T> Outcome for Result<T, CancelRunError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(CancelRunError::PipelineNotFound(_)) => "not_found",
            Err(CancelRunError::RunNotFound { .. }) => "run_not_found",
            Err(CancelRunError::AlreadyFinished { .. }) => "already_finished",
            Err(CancelRunError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T> Outcome for Result<T, GetRunError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(GetRunError::PipelineNotFound(_)) => "not_found",
            Err(GetRunError::RunNotFound { .. }) => "run_not_found",
            Err(GetRunError::Backend(err)) => backend_outcome(err),
            Err(_) => "other",
        }
    }
}

impl<T: ?Sized> Instrumented<T> {
    async fn measure<R: Outcome>(
        &self,
        operation: &'static str,
        call: impl Future<Output = R>,
    ) -> R {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .observe_backend_call(operation, result.outcome(), started.elapsed());
        result
    }
}

#[async_trait]
impl PipelineRepository for Instrumented<dyn PipelineRepository> {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        self.measure("get_pipeline", self.inner.get(ctx, id)).await
    }

    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        self.measure("list_pipelines", self.inner.list(ctx)).await
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let operation = if paused { "pause" } else { "unpause" };
        self.measure(operation, self.inner.set_paused(ctx, id, paused))
            .await
    }
}

#[async_trait]
impl Orchestrator for Instrumented<dyn Orchestrator> {
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        self.measure("execute", self.inner.trigger(ctx, request))
            .await
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        self.measure("list_runs", self.inner.list_runs(ctx, id, query))
            .await
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        self.measure("get_run", self.inner.get_run(ctx, id, run_id))
            .await
    }

    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        self.measure("cancel_run", self.inner.cancel_run(ctx, id, run_id))
            .await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.measure("health", self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use domain::{Caller, CustomerId, IdempotencyKey, MockOrchestrator, RunStatus};
    use mockall::predicate::{always, eq};

    use super::*;

    #[tokio::test]
    async fn the_measured_orchestrator_passes_the_whole_trigger_request_on_and_counts_the_call() {
        let at = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap();
        let id = PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap();
        let request = TriggerRequest::new(id.clone())
            .with_idempotency_key(IdempotencyKey::parse("order-42").unwrap())
            .retrying_since(at);
        let run = Run::new(RunId::manual(&at), id, RunStatus::Running, at);
        let mut inner = MockOrchestrator::new();
        inner
            .expect_trigger()
            .with(always(), eq(request.clone()))
            .times(1)
            .returning(move |_, _| Ok(run.clone()));
        let metrics = Metrics::default();
        let measured = metrics.instrument_orchestrator(Arc::new(inner));
        let ctx = RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()));

        measured.trigger(&ctx, &request).await.unwrap();

        let text = metrics.render();
        assert!(
            text.contains(r#"maestro_backend_calls_total{operation="execute",outcome="ok"} 1"#),
            "{text}"
        );
    }
}
