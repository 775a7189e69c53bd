//! The ports over the upstream: each route's request, and what each of its
//! answers means in the domain's terms.

use std::fmt;

use async_trait::async_trait;
use domain::{
    BackendError, LookupError, Orchestrator, Pipeline, PipelineId, PipelineRepository,
    PipelineSummary, RequestContext, Run, RunId, RunLookupError, RunPage, RunQuery, RunsError,
    SetPausedError, TriggerError,
};
use serde_json::json;

use crate::client::{Answer, Client, Request, Success, encode_component};
use crate::config::{ConfigError, PlatformApiConfig};
use crate::wire::{self, Malformed, Refused};

/// The header in which a run list's answer carries its total.
const TOTAL_COUNT: &str = "x-total-count";

/// The Platform-API backend: implements [`PipelineRepository`] and
/// [`Orchestrator`] by calling the upstream described in
/// `docs/backends/platform-api.md`.
///
/// It holds one pooled HTTP client, so it is cheap to clone; share one
/// behind an `Arc` for both ports.
#[derive(Clone)]
pub struct PlatformApiBackend {
    client: Client,
}

impl fmt::Debug for PlatformApiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out, even in its redacted form.
        f.debug_struct("PlatformApiBackend")
            .field("base_url", &self.client.base())
            .field("timeout", &self.client.timeout())
            .finish_non_exhaustive()
    }
}

impl PlatformApiBackend {
    /// Checks the settings and builds the backend's pooled HTTP client
    /// (rustls, no redirects). Nothing is sent until the first call.
    ///
    /// # Errors
    /// [`ConfigError`] when the base URL is not a usable `http` or `https`
    /// base, the token cannot travel in a header, the timeout is zero, or the
    /// client cannot be built.
    pub fn new(config: PlatformApiConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            client: Client::new(config)?,
        })
    }

    /// The body of the three writes: the normalized id and the customer.
    fn write_body(ctx: &RequestContext, id: &PipelineId) -> serde_json::Value {
        json!({"pipeline_id": id.as_str(), "customer_id": ctx.customer().as_str()})
    }

    /// Reads a success's `data` with `read`, or says why it is malformed.
    fn data<T>(
        &self,
        request: &Request<'_>,
        success: Success,
        read: impl FnOnce(serde_json::Value) -> Result<T, Malformed>,
    ) -> Result<T, BackendError> {
        read(success.data).map_err(|why| self.client.malformed(request, &why))
    }
}

#[async_trait]
impl PipelineRepository for PlatformApiBackend {
    async fn get(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Pipeline, LookupError> {
        let request = Request::read(format!("/pipeline/{id}"), ctx);
        match self.client.call(&request).await? {
            Answer::Success(success) => {
                let pipeline = self.data(&request, success, wire::pipeline)?;
                if pipeline.customer_id != *ctx.customer() {
                    // Another customer's pipeline must look like a missing one.
                    tracing::warn!(
                        pipeline_id = %id,
                        "the Platform-API upstream answered with another customer's pipeline"
                    );
                    return Err(LookupError::NotFound);
                }
                Ok(pipeline)
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(LookupError::NotFound),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        let request = Request::read("/pipelines".to_owned(), ctx);
        match self.client.call(&request).await? {
            Answer::Success(success) => {
                let mut summaries = self.data(&request, success, wire::summaries)?;
                let before = summaries.len();
                summaries.retain(|summary| summary.pipeline.customer_id == *ctx.customer());
                if summaries.len() != before {
                    tracing::warn!(
                        dropped = before - summaries.len(),
                        "the Platform-API upstream listed other customers' pipelines"
                    );
                }
                Ok(summaries)
            }
            Answer::Refused(refusal) => Err(self.client.unexpected_refusal(&request, &refusal)),
        }
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let path = if paused {
            "/pipeline/pause"
        } else {
            "/pipeline/unpause"
        };
        let request = Request::write(path.to_owned(), ctx, Self::write_body(ctx, id));
        match self.client.call(&request).await? {
            Answer::Success(_) => Ok(()),
            Answer::Refused(refusal) => match (Refused::parse(&refusal.exception_type), paused) {
                (Some(Refused::NotFound), _) => Err(SetPausedError::NotFound),
                (Some(Refused::AlreadyPaused), true) | (Some(Refused::NotPaused), false) => {
                    Err(SetPausedError::Unchanged)
                }
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }
}

#[async_trait]
impl Orchestrator for PlatformApiBackend {
    async fn trigger(&self, ctx: &RequestContext, id: &PipelineId) -> Result<Run, TriggerError> {
        let request = Request::write(
            "/pipeline/execute".to_owned(),
            ctx,
            Self::write_body(ctx, id),
        );
        match self.client.call(&request).await? {
            Answer::Success(success) => {
                let received_at = chrono::Utc::now();
                Ok(self.data(&request, success, |data| wire::triggered(data, received_at))?)
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(TriggerError::NotFound),
                Some(Refused::Paused) => Err(TriggerError::Paused),
                Some(Refused::QueueFull) => Err(TriggerError::QueueFull {
                    limit: wire::queue_limit(&refusal.data),
                }),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, RunsError> {
        let mut request = Request::read(format!("/pipeline/{id}/pipeline_run"), ctx)
            .with_query("limit", query.limit().to_string())
            .with_query("offset", query.offset().to_string());
        if let Some(status) = query.status() {
            request = request.with_query("status", status.as_str().to_owned());
        }
        match self.client.call(&request).await? {
            Answer::Success(success) => {
                let total = success
                    .headers
                    .get(TOTAL_COUNT)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok());
                let runs = self.data(&request, success, wire::runs)?;
                let total = total.ok_or_else(|| {
                    self.client.malformed(
                        &request,
                        &Malformed::header("X-Total-Count", "missing or not a count"),
                    )
                })?;
                Ok(RunPage { runs, total })
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(RunsError::NotFound),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, RunLookupError> {
        let path = format!(
            "/pipeline/{id}/pipeline_run/{}",
            encode_component(run_id.as_str())
        );
        let request = Request::read(path, ctx);
        match self.client.call(&request).await? {
            Answer::Success(success) => Ok(self.data(&request, success, wire::run)?),
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(RunLookupError::PipelineNotFound),
                Some(Refused::RunNotFound) => Err(RunLookupError::RunNotFound),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.client.probe(&Request::health()).await
    }
}
