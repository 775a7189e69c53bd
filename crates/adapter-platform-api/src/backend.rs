//! The ports over the upstream: each route's request, and what each of its
//! answers means in the domain's terms.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use domain::{
    BackendError, CancelRunError, Clock, ExecuteError, GetPipelineError, GetRunError,
    ListRunsError, Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary,
    RequestContext, Run, RunId, RunPage, RunQuery, SetPausedError, TriggerRequest,
};
use runtime::TokioClock;
use serde_json::Value;
use serde_json::json;

use crate::client::{Answer, Client, Request, Success, path_segment};
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
    /// (rustls, no redirects), on the service's clock
    /// ([`runtime::TokioClock`]). Nothing is sent until the first call.
    ///
    /// # Errors
    /// [`ConfigError`] when the base URL is not a usable `http` or `https`
    /// base, the token cannot travel in a header, the timeout is zero, or the
    /// client cannot be built.
    pub fn new(config: PlatformApiConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            client: Client::new(config, Arc::new(TokioClock::start()))?,
        })
    }

    /// The same backend, reading "now" from `clock`: the instant a run
    /// gets when the upstream's answer leaves it out, and how much of a
    /// call's time its retries have spent. Waits use tokio's timers, so the
    /// clock should move with them, as [`runtime::TokioClock`] does; a clock
    /// that stands still only lets retries wait until the call's timeout
    /// cuts them off.
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self {
            client: self.client.with_clock(clock),
        }
    }

    /// The body of pause and unpause: the normalized id and the customer.
    fn write_body(ctx: &RequestContext, id: &PipelineId) -> Value {
        json!({"pipeline_id": id.as_str(), "customer_id": ctx.customer().as_str()})
    }

    /// The body of execute: pause's, and the run's parameters (`{}` when
    /// none), so that the upstream always gets the one shape.
    fn execute_body(ctx: &RequestContext, trigger: &TriggerRequest) -> Value {
        let mut body = Self::write_body(ctx, trigger.pipeline_id());
        body["conf"] = Value::Object(trigger.conf().as_map().clone());
        body
    }

    /// The body of cancel: the ids are in the path, so only the customer.
    fn cancel_body(ctx: &RequestContext) -> Value {
        json!({"customer_id": ctx.customer().as_str()})
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

    /// The caller's pipeline, or `None` when it is missing or another
    /// customer's.
    async fn visible_pipeline(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Option<Pipeline>, BackendError> {
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
                    return Ok(None);
                }
                Ok(Some(pipeline))
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Ok(None),
                _ => Err(self.client.unexpected_refusal(&request, &refusal)),
            },
        }
    }
}

#[async_trait]
impl PipelineRepository for PlatformApiBackend {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        self.visible_pipeline(ctx, id)
            .await?
            .ok_or_else(|| GetPipelineError::NotFound(id.clone()))
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
                (Some(Refused::NotFound), _) => Err(SetPausedError::NotFound(id.clone())),
                (Some(Refused::AlreadyPaused), true) | (Some(Refused::NotPaused), false) => {
                    Err(SetPausedError::unchanged(id.clone(), paused))
                }
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }
}

#[async_trait]
impl Orchestrator for PlatformApiBackend {
    /// Posts the pipeline, the customer and the run's parameters to the
    /// execute route, as the upstream contract has it. The run answered
    /// carries the parameters the upstream says it recorded, not the ones
    /// sent: an upstream that ignores them shows none.
    ///
    /// The contract carries neither the idempotency key nor a way to find
    /// the run a failed attempt may have made (no query by key or mark), so
    /// the key stays at the gateway and a retry
    /// ([`TriggerRequest::retry_since`]) cannot be honoured: it triggers as
    /// a first attempt does (`docs/backends/platform-api.md`, "How a client
    /// retries execute safely"; ADR 0009).
    async fn trigger(
        &self,
        ctx: &RequestContext,
        trigger: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        let id = trigger.pipeline_id();
        if let Some(since) = trigger.retry_since() {
            tracing::info!(
                pipeline_id = %id,
                retry_since = %domain::format_timestamp(&since),
                "a retry of a failed execute triggers anew: the Platform-API upstream cannot look for the failed attempt's run"
            );
        }
        let request = Request::write(
            "/pipeline/execute".to_owned(),
            ctx,
            Self::execute_body(ctx, trigger),
        );
        match self.client.call(&request).await? {
            Answer::Success(success) => {
                let received_at = self.client.now();
                let triggered =
                    self.data(&request, success, |data| wire::triggered(data, received_at))?;
                if !triggered.conf_answered && !trigger.conf().is_empty() {
                    tracing::warn!(
                        pipeline_id = %id,
                        run_id = %triggered.run.id,
                        "the Platform-API upstream did not say which run parameters it recorded; the run shows none"
                    );
                }
                Ok(triggered.run)
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(ExecuteError::NotFound(id.clone())),
                Some(Refused::InvalidConf) => {
                    let refused = wire::conf_refusal(&refusal.data, |text| self.client.scrub(text));
                    tracing::info!(
                        pipeline_id = %id,
                        parameter = refused.parameter.as_deref(),
                        reason = %refused.reason,
                        "the Platform-API upstream refused the run parameters"
                    );
                    Err(ExecuteError::ConfRefused {
                        pipeline_id: id.clone(),
                        parameter: refused.parameter,
                        reason: refused.reason,
                    })
                }
                Some(Refused::Paused) => Err(ExecuteError::Paused(id.clone())),
                Some(Refused::QueueFull) => Err(ExecuteError::QueueFull {
                    pipeline_id: id.clone(),
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
    ) -> Result<RunPage, ListRunsError> {
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
                Ok(RunPage::new(runs, total))
            }
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(ListRunsError::NotFound(id.clone())),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        let Some(segment) = path_segment(run_id.as_str()) else {
            // `.` and `..` are no run's id, and in a path they would name
            // another route. Only whether the pipeline is the caller's
            // decides the answer, and reading the pipeline is the cheapest
            // way to ask.
            return match self.visible_pipeline(ctx, id).await? {
                Some(_) => Err(GetRunError::run_not_found(id, run_id)),
                None => Err(GetRunError::PipelineNotFound(id.clone())),
            };
        };
        let request = Request::read(format!("/pipeline/{id}/pipeline_run/{segment}"), ctx);
        match self.client.call(&request).await? {
            Answer::Success(success) => Ok(self.data(&request, success, wire::run)?),
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(GetRunError::PipelineNotFound(id.clone())),
                Some(Refused::RunNotFound) => Err(GetRunError::run_not_found(id, run_id)),
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    /// Posts the cancel of one run. Like every write it is sent once; a
    /// run id that is a dot segment is answered as [`Self::get_run`]
    /// answers it, since no run has such an id.
    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        let Some(segment) = path_segment(run_id.as_str()) else {
            return match self.visible_pipeline(ctx, id).await? {
                Some(_) => Err(CancelRunError::run_not_found(id, run_id)),
                None => Err(CancelRunError::PipelineNotFound(id.clone())),
            };
        };
        let request = Request::write(
            format!("/pipeline/{id}/pipeline_run/{segment}/cancel"),
            ctx,
            Self::cancel_body(ctx),
        );
        match self.client.call(&request).await? {
            Answer::Success(success) => Ok(self.data(&request, success, wire::cancelled)?),
            Answer::Refused(refusal) => match Refused::parse(&refusal.exception_type) {
                Some(Refused::NotFound) => Err(CancelRunError::PipelineNotFound(id.clone())),
                Some(Refused::RunNotFound) => Err(CancelRunError::run_not_found(id, run_id)),
                Some(Refused::RunAlreadyFinished) => {
                    let status = wire::finished_status(&refusal.data)
                        .map_err(|why| self.client.malformed(&request, &why))?;
                    Err(CancelRunError::AlreadyFinished {
                        pipeline_id: id.clone(),
                        run_id: run_id.clone(),
                        status,
                    })
                }
                _ => Err(self.client.unexpected_refusal(&request, &refusal).into()),
            },
        }
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.client.probe(&Request::health()).await
    }
}
