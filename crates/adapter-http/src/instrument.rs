//! Port decorators that count every backend call by operation and outcome,
//! and time it, whatever the backend.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use domain::{
    BackendError, BackendErrorKind, LookupError, Orchestrator, Pipeline, PipelineId,
    PipelineRepository, PipelineSummary, RequestContext, Run, RunId, RunLookupError, RunPage,
    RunQuery, RunsError, SetPausedError, TriggerError, TriggerOptions,
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
trait Outcome {
    fn outcome(&self) -> &'static str;
}

fn backend_outcome(err: &BackendError) -> &'static str {
    match err.kind() {
        BackendErrorKind::Unavailable => "unavailable",
        BackendErrorKind::Timeout => "timeout",
        BackendErrorKind::Upstream => "upstream_error",
    }
}

impl<T> Outcome for Result<T, BackendError> {
    fn outcome(&self) -> &'static str {
        self.as_ref().map_or_else(backend_outcome, |_| "ok")
    }
}

impl<T> Outcome for Result<T, LookupError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(LookupError::NotFound) => "not_found",
            Err(LookupError::Backend(err)) => backend_outcome(err),
        }
    }
}

impl<T> Outcome for Result<T, SetPausedError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(SetPausedError::NotFound) => "not_found",
            Err(SetPausedError::Unchanged) => "unchanged",
            Err(SetPausedError::Backend(err)) => backend_outcome(err),
        }
    }
}

impl<T> Outcome for Result<T, TriggerError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(TriggerError::NotFound) => "not_found",
            Err(TriggerError::Paused) => "paused",
            Err(TriggerError::QueueFull { .. }) => "queue_full",
            Err(TriggerError::Backend(err)) => backend_outcome(err),
        }
    }
}

impl<T> Outcome for Result<T, RunsError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(RunsError::NotFound) => "not_found",
            Err(RunsError::Backend(err)) => backend_outcome(err),
        }
    }
}

impl<T> Outcome for Result<T, RunLookupError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(RunLookupError::PipelineNotFound) => "not_found",
            Err(RunLookupError::RunNotFound) => "run_not_found",
            Err(RunLookupError::Backend(err)) => backend_outcome(err),
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
    async fn get(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Pipeline, LookupError> {
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
    async fn trigger(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Run, TriggerError> {
        self.measure("execute", self.inner.trigger(ctx, id)).await
    }

    async fn trigger_with(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        options: &TriggerOptions,
    ) -> Result<Run, TriggerError> {
        self.measure("execute", self.inner.trigger_with(ctx, id, options))
            .await
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, RunsError> {
        self.measure("list_runs", self.inner.list_runs(ctx, id, query))
            .await
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, RunLookupError> {
        self.measure("get_run", self.inner.get_run(ctx, id, run_id))
            .await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.measure("health", self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use domain::{Caller, CustomerId, IdempotencyKey, MockOrchestrator, RunStatus};
    use mockall::predicate::{always, eq};

    use super::*;

    #[tokio::test]
    async fn the_measured_orchestrator_passes_trigger_options_on_and_counts_the_call() {
        let options = TriggerOptions {
            idempotency_key: Some(IdempotencyKey::parse("order-42").unwrap()),
            retry_since: Some(Utc::now()),
        };
        let id = PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap();
        let run = Run {
            id: RunId::manual(&Utc::now()),
            pipeline_id: id.clone(),
            status: RunStatus::Running,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            trace: None,
        };
        let mut inner = MockOrchestrator::new();
        inner.expect_trigger().never();
        inner
            .expect_trigger_with()
            .with(always(), eq(id.clone()), eq(options.clone()))
            .times(1)
            .returning(move |_, _, _| Ok(run.clone()));
        let metrics = Metrics::default();
        let measured = metrics.instrument_orchestrator(Arc::new(inner));
        let ctx = RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()));

        measured.trigger_with(&ctx, &id, &options).await.unwrap();

        let text = metrics.render();
        assert!(
            text.contains(r#"maestro_backend_calls_total{operation="execute",outcome="ok"} 1"#),
            "{text}"
        );
    }
}
