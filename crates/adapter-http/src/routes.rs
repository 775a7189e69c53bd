//! The handlers of the contract's routes and the operational ones.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use domain::{ExecuteError, Run, TriggerRequest};

use crate::{
    AppState,
    dto::{
        ActionResponse, CancelResponse, EmptyObject, ExecuteRequest, ExecuteResponse,
        IdempotencyKeyParam, PipelineIdParam, PipelineIdRequest, PipelineResponse,
        PipelineSummaryBody, RunBody, RunIdParam, RunsQueryParams, StatusBody, WaitQueryParams,
    },
    edge::RequestDeadline,
    error::{ApiError, ErrorBody, ErrorEnvelope},
    extract::{
        Authenticated, ExecuteBody, NoBody, PipelineIdBody, PipelinePath, RunPath, RunsQuery,
        WaitQuery,
    },
    idempotency::{self, IdempotencyKeyHeader},
    pipeline_json,
    readiness::Report,
    request_log, run_json,
};

// The OpenAPI document: a route's `#[utoipa::path]` lists its own answers,
// then the shared sets below that apply to it, then any answer of a shared
// status that says more for this route (it replaces the shared one):
//
//     responses(
//         (status = 200, ...),
//         (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope),
//         PlatformFailures,
//         BodyFailures, // when the route reads a body
//     ),
//
// Path parameters come from `dto` (`params(PipelineIdParam, RunIdParam)`),
// which holds their patterns. `tests/openapi.rs` checks the result.

/// What every `/platform/...` route may answer besides its own answers: a
/// refused credential, the rate limit, the backend failing, and the
/// per-request timeout.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only documents the answers; `ApiError` produces them.
pub(crate) enum PlatformFailures {
    /// `{"detail": "Not authenticated"}` without a bearer token;
    /// `InvalidToken` for a token that does not verify.
    #[response(status = 401, headers(
        ("WWW-Authenticate" = String, description = "`Bearer` without a token; `Bearer error=\"invalid_token\"` for a refused one")
    ))]
    Unauthorized(ErrorBody),
    /// `RateLimited`: the customer's rate limit, where one is configured.
    #[response(status = 429, headers(
        ("Retry-After" = u64, description = "Seconds to wait before retrying")
    ))]
    RateLimited(ErrorEnvelope),
    /// `UpstreamError`: the backend answered unexpectedly.
    #[response(status = 502)]
    UpstreamError(ErrorEnvelope),
    /// `UpstreamUnavailable`: the backend cannot be reached; or
    /// `ServiceTimeout`: the request was not answered within the
    /// per-request timeout (60 s by default).
    #[response(status = 503)]
    Unavailable(ErrorEnvelope),
    /// `UpstreamTimeout`: the backend did not answer in time.
    #[response(status = 504)]
    UpstreamTimeout(ErrorEnvelope),
}

/// What a route that reads a JSON body may answer besides: the body's
/// transport failing. (A body that is not valid JSON, not an object or of a
/// wrong type is a 400, which each route lists with its own.)
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only documents the answers; `ApiError` produces them.
pub(crate) enum BodyFailures {
    /// `RequestTimeout`: the request body did not arrive within the body
    /// timeout (30 s by default); the connection is closed.
    #[response(status = 408)]
    BodyTimeout(ErrorEnvelope),
    /// `PayloadTooLarge`: the body is over 64 KiB.
    #[response(status = 413)]
    PayloadTooLarge(ErrorEnvelope),
    /// `UnsupportedMediaType`: the request has no `Content-Type:
    /// application/json` (or another JSON type).
    #[response(status = 415)]
    UnsupportedMediaType(ErrorEnvelope),
}

/// Trigger an immediate execution of a pipeline, whatever its cron
/// schedule. While a run of the pipeline is active, the new run waits
/// `QUEUED` and starts when the earlier ones finish, in order.
///
/// With an `Idempotency-Key` header (scoped to the customer), a client can
/// retry safely:
///
/// | request with a key | answer |
/// | --- | --- |
/// | first | runs; a 200 or a final refusal (404, 400 paused) is kept for `MAESTRO_IDEMPOTENCY_TTL` (24 h) |
/// | repeat, same pipeline, answer kept | the kept status and body, with `Idempotent-Replayed: true`; nothing runs |
/// | repeat, same pipeline, first still in flight | 409 `IdempotencyKeyInProgress`, `Retry-After`; nothing runs |
/// | repeat, another pipeline | 422 `IdempotencyKeyReused`; nothing runs |
/// | first answered 5xx or 429 | not kept: the next request with the key runs, as a retry (on Airflow it answers with the run the failed attempt made, if it made one); another pipeline is 422 |
/// | key not 1 to 255 visible ASCII characters | 400 `InvalidIdempotencyKey` |
/// | key store unavailable | 503 `IdempotencyStoreUnavailable`; nothing runs |
#[utoipa::path(
    post,
    path = "/platform/pipeline/execute",
    tag = "pipelines",
    request_body = ExecuteRequest,
    params(IdempotencyKeyParam),
    responses(
        (status = 200, description = "The run was triggered (or, with `Idempotent-Replayed: true`, the first answer to this key)", body = ExecuteResponse<'_>,
            headers(("Idempotent-Replayed" = String, description = "`true` on an answer given again"))),
        (status = 400, description = "`PipelinePaused` (`Cannot execute paused pipeline. Use /pipeline/unpause first.`), `InvalidConf` (the `conf` is not usable, or the pipeline refused it, naming the parameter), `InvalidPipelineId`, `InvalidRequestBody`, `InvalidIdempotencyKey`, or `{\"detail\": \"pipeline_id is required\"}`", body = ErrorBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a `PipelinePaused` given again"))),
        (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope,
            headers(("Idempotent-Replayed" = String, description = "`true` on an answer given again"))),
        (status = 409, description = "`IdempotencyKeyInProgress`: the first request with this key is still running; retry after `Retry-After`", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 422, description = "`IdempotencyKeyReused`: the key was used for another pipeline", body = ErrorEnvelope),
        PlatformFailures,
        BodyFailures,
        (status = 429, description = "`PipelineQueueFull`: the pipeline's queue is at its bound, nothing was started; or `RateLimited`, with `Retry-After`", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "With `RateLimited`: seconds to wait before retrying"))),
        (status = 503, description = "`UpstreamUnavailable`: the backend cannot be reached; `IdempotencyStoreUnavailable`: the key store cannot be reached, nothing ran; or `ServiceTimeout`: the request was not answered within the per-request timeout (60 s by default)", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    ExecuteBody { pipeline_id, conf }: ExecuteBody,
) -> Result<Response, ApiError> {
    request_log::record_pipeline(pipeline_id.as_str());
    let request = TriggerRequest::new(pipeline_id).with_conf(conf);
    if let Some(key) = key {
        return Ok(idempotency::execute_once(&state, ctx, key, request).await);
    }
    let outcome = state.service().execute(&ctx, &request).await;
    Ok(execute_answer(&state, outcome))
}

/// The answer to an execute's outcome, fresh or given again for an
/// `Idempotency-Key`: the same bytes either way.
pub(crate) fn execute_answer(state: &AppState, outcome: Result<Run, ExecuteError>) -> Response {
    match outcome {
        Ok(run) => {
            request_log::record_run(run.id.as_str());
            state.metrics().run_triggered(state.backend());
            run_json::answer(run_json::execute(&run))
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// Pause a pipeline: it refuses executions until unpaused. Running runs
/// finish.
#[utoipa::path(
    post,
    path = "/platform/pipeline/pause",
    tag = "pipelines",
    request_body = PipelineIdRequest,
    responses(
        (status = 200, description = "The pipeline is paused", body = ActionResponse),
        (status = 400, description = "`PipelineAlreadyPaused` (`Pipeline is already paused`), `InvalidPipelineId`, `InvalidRequestBody`, or `{\"detail\": \"pipeline_id is required\"}`", body = ErrorBody),
        (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope),
        PlatformFailures,
        BodyFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    PipelineIdBody(id): PipelineIdBody,
) -> Result<Json<ActionResponse>, ApiError> {
    request_log::record_pipeline(id.as_str());
    state.service().pause(&ctx, &id).await?;
    Ok(Json(ActionResponse::new(
        "Pipeline paused successfully",
        &id,
    )))
}

/// Unpause a pipeline, so that it accepts executions again.
#[utoipa::path(
    post,
    path = "/platform/pipeline/unpause",
    tag = "pipelines",
    request_body = PipelineIdRequest,
    responses(
        (status = 200, description = "The pipeline is unpaused", body = ActionResponse),
        (status = 400, description = "`PipelineNotPaused` (`Pipeline is not paused`), `InvalidPipelineId`, `InvalidRequestBody`, or `{\"detail\": \"pipeline_id is required\"}`", body = ErrorBody),
        (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope),
        PlatformFailures,
        BodyFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn unpause(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    PipelineIdBody(id): PipelineIdBody,
) -> Result<Json<ActionResponse>, ApiError> {
    request_log::record_pipeline(id.as_str());
    state.service().unpause(&ctx, &id).await?;
    Ok(Json(ActionResponse::new(
        "Pipeline unpaused successfully",
        &id,
    )))
}

/// One of the caller's pipelines.
#[utoipa::path(
    get,
    path = "/platform/pipeline/{pipeline_id}",
    tag = "pipelines",
    params(PipelineIdParam),
    responses(
        (status = 200, description = "The pipeline", body = PipelineResponse),
        (status = 400, description = "`InvalidPipelineId`, or `InvalidPath` when the path does not decode", body = ErrorEnvelope),
        (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope),
        PlatformFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_pipeline(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    PipelinePath(id): PipelinePath,
) -> Result<Json<PipelineResponse>, ApiError> {
    let pipeline = state.service().get_pipeline(&ctx, &id).await?;
    Ok(Json(PipelineResponse::new(pipeline)))
}

/// Every pipeline of the caller, as a bare array.
#[utoipa::path(
    get,
    path = "/platform/pipelines",
    tag = "pipelines",
    responses(
        (status = 200, description = "The caller's pipelines, ordered by name", body = [PipelineSummaryBody]),
        PlatformFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_pipelines(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Response, ApiError> {
    let pipelines = state.service().list_pipelines(&ctx).await?;
    Ok(run_json::answer(pipeline_json::array(&pipelines)))
}

/// The runs of one of the caller's pipelines, newest first, as a bare
/// array; the number of matching runs is in `X-Total-Count`.
#[utoipa::path(
    get,
    path = "/platform/pipeline/{pipeline_id}/pipeline_run",
    tag = "runs",
    params(PipelineIdParam, RunsQueryParams),
    responses(
        (status = 200, description = "One page of runs", body = [RunBody],
            headers(("X-Total-Count" = u64, description = "How many runs match, in all pages"))),
        (status = 400, description = "`InvalidPipelineId`, `InvalidQueryParameter`, or `InvalidPath` when the path does not decode", body = ErrorEnvelope),
        (status = 404, description = "`PipelineNotFound`", body = ErrorEnvelope),
        PlatformFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    PipelinePath(id): PipelinePath,
    RunsQuery(query): RunsQuery,
) -> Result<Response, ApiError> {
    let page = state.service().list_runs(&ctx, &id, &query).await?;
    let mut answer = run_json::answer(state.kept_runs().array(&page.runs));
    answer
        .headers_mut()
        .insert("x-total-count", HeaderValue::from(page.total));
    Ok(answer)
}

/// One run of one of the caller's pipelines. The run id holds `:` and `+`:
/// percent-encode it.
///
/// With `wait_seconds=N` (1 to 60), the answer waits until the run has
/// finished or N seconds have passed, whichever comes first, and gives the
/// run as it is then. Waiting costs the backend nothing per request: the
/// service hears of run changes once for all who wait. Each customer may
/// have 100 requests waiting at once (`MAESTRO_MAX_WAITS_PER_CUSTOMER`);
/// past that, 429 `TooManyWaits`. On shutdown, waiting requests are
/// answered at once with the run as it is.
#[utoipa::path(
    get,
    path = "/platform/pipeline/{pipeline_id}/pipeline_run/{run_id}",
    tag = "runs",
    params(PipelineIdParam, RunIdParam, WaitQueryParams),
    responses(
        (status = 200, description = "The run: finished, or as it is when the wait ended", body = RunBody),
        (status = 400, description = "`InvalidPipelineId`, `InvalidRunId`, `InvalidQueryParameter` (`wait_seconds`), or `InvalidPath` when the path does not decode", body = ErrorEnvelope),
        (status = 404, description = "`PipelineNotFound` or `PipelineRunNotFound`", body = ErrorEnvelope),
        PlatformFailures,
        (status = 429, description = "`TooManyWaits`: the customer has as many requests waiting on runs as allowed; or `RateLimited`, where a rate limit is configured", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    RunPath(id, run_id): RunPath,
    WaitQuery(wait): WaitQuery,
    deadline: RequestDeadline,
) -> Result<Response, ApiError> {
    if wait.is_zero() {
        let run = state.service().get_run(&ctx, &id, &run_id).await?;
        return Ok(run_json::answer(state.kept_runs().object(&run)));
    }
    let waits = state.waits();
    let _waiting = waits
        .enter(ctx.customer())
        .ok_or_else(|| ApiError::too_many_waits(waits.limit()))?;
    // The answer may take the wait on top of the per-request timeout.
    deadline.extend(wait);
    let until = async {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.drained() => {}
        }
    };
    let run = state
        .service()
        .wait_for_run(&ctx, &id, &run_id, until)
        .await?;
    Ok(run_json::answer(state.kept_runs().object(&run)))
}

/// Cancel a run that has not finished: a queued run never starts, a
/// running one is stopped; either ends `FAILED` with the trace `Cancelled
/// through the API`, and the pipeline's next queued run starts. A paused
/// pipeline's runs can be cancelled. No body, or `{}`.
#[utoipa::path(
    post,
    path = "/platform/pipeline/{pipeline_id}/pipeline_run/{run_id}/cancel",
    tag = "runs",
    params(PipelineIdParam, RunIdParam),
    request_body(content = Option<EmptyObject>, description = "None, or `{}` (its fields are ignored)"),
    responses(
        (status = 200, description = "The run is cancelled", body = CancelResponse),
        (status = 400, description = "`PipelineRunAlreadyFinished` (`Pipeline run <run_id> already finished with status <STATUS>`), `InvalidPipelineId`, `InvalidRunId`, `InvalidRequestBody`, or `InvalidPath` when the path does not decode", body = ErrorEnvelope),
        (status = 404, description = "`PipelineNotFound` or `PipelineRunNotFound`", body = ErrorEnvelope),
        PlatformFailures,
        BodyFailures,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    RunPath(id, run_id): RunPath,
    NoBody: NoBody,
) -> Result<Json<CancelResponse>, ApiError> {
    let run = state.service().cancel_run(&ctx, &id, &run_id).await?;
    Ok(Json(CancelResponse::new(&run)))
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = StatusBody)))]
pub(crate) async fn health() -> Json<StatusBody> {
    Json(StatusBody { status: "ok" })
}

/// Readiness: the service can do its job. The backend answers, and so do
/// the token keys and Redis where they are configured; each check is named
/// in the body, `ok` or `unavailable` (never why: that goes to the log).
/// Answered at once from the last round of checks; a round runs at most
/// once a second while probes come, however many (only the first probe,
/// and one after a quiet of 10 s, waits for a new round). While the
/// service drains, 503 `draining` at once.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready: every check is `ok`", body = Report,
            example = json!({"status": "ready", "checks": {"auth_keys": "ok", "backend": "ok"}})),
        (status = 503, description = "A check fails (`unavailable`, naming it), or the service is shutting down (`draining`)", body = Report,
            example = json!({"status": "unavailable", "checks": {"auth_keys": "ok", "backend": "unavailable"}})),
    ))]
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Report>) {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Report::draining()));
    }
    let report = state.readiness().report().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// The metrics, in the Prometheus (OpenMetrics) text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text (`application/openmetrics-text; version=1.0.0; charset=utf-8`)",
        body = String, content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().render(),
    )
}

/// This document, OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[allow(dead_code)] // Only documents the route; `SwaggerUi` serves it.
pub(crate) fn openapi_json() {}

/// The interactive API documentation (Swagger UI), served from the binary,
/// with no call to any other host.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 303, description = "To `/docs/`, the page itself",
        headers(("Location" = String, description = "`/docs/`")))))]
#[allow(dead_code)] // Only documents the route; `SwaggerUi` serves it.
pub(crate) fn docs() {}

/// The page of the interactive API documentation.
#[utoipa::path(get, path = "/docs/", tag = "operations",
    responses((status = 200, description = "The Swagger UI page", body = String, content_type = "text/html")))]
#[allow(dead_code)] // Only documents the route; `SwaggerUi` serves it.
pub(crate) fn docs_page() {}

/// Answers a route that does not exist.
pub(crate) async fn not_found() -> ApiError {
    ApiError::route_not_found()
}

/// Answers a method the route does not have.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
