//! A faithful fake of the Platform-API upstream (`docs/backends/platform-api.md`):
//! a wiremock responder that serves every route of that contract over a
//! memory backend, so that the `maestro` binary in front of it must answer
//! exactly what the memory backend answers in process.
//!
//! It is strict where the contract puts a duty on Maestro: a request without
//! the service token is refused with 401 as a real upstream would, and a
//! request that breaks the contract in any other way (no request id, a
//! customer header and body that disagree, a pipeline id not in normal form,
//! a missing `limit`, an execute without `conf`, a body with a field the
//! route does not take...) gets a `ContractViolation` refusal, which Maestro
//! turns into a 502, with the reason printed for the failing test.
//!
//! The feed's source over the Platform-API (`PlatformApiChanges`) polls
//! only routes of the contract (`GET /pipelines`, then `GET
//! /pipeline/{id}/pipeline_run?limit&offset`), which the fake serves like
//! any other call; the test at the end of this file holds that.
//!
//! Run parameters go through it as a compliant upstream takes them: the
//! execute body's `conf` reaches the memory backend's trigger, every run
//! carries its `conf` back, and a `conf` that is no run's parameters is
//! refused with 400 `InvalidConf` naming the parameter.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use adapter_memory::{MemoryBackend, MemoryConfig};
use domain::{
    Caller, CancelRunError, Clock as _, CustomerId, ExecuteError, GetPipelineError, GetRunError,
    InvalidConf, ListRunsError, Orchestrator as _, Pipeline, PipelineId, PipelineRepository as _,
    PipelineSummary, RequestContext, Run, RunConf, RunId, RunQuery, RunStatus, SetPausedError,
    TriggerRequest, format_timestamp,
};
use percent_encoding::percent_decode_str;
use runtime::TokioClock;
use serde_json::{Map, Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

use crate::helpers::fixture;

/// The service token the fake accepts.
pub(crate) const SERVICE_TOKEN: &str = "s3rv1ce-t0ken-for-the-fake-upstream";

/// The path prefix the fake serves under, so that every test also checks
/// that Maestro keeps the base URL's path.
const PREFIX: &str = "/api/v1";

/// The memory settings the in-process test service uses (runs stay
/// `RUNNING` for an hour), with this queue bound.
pub(crate) fn memory_config(queue_limit: usize) -> MemoryConfig {
    MemoryConfig {
        run_duration: Duration::from_secs(3600),
        queue_limit,
        ..MemoryConfig::default()
    }
}

/// [`memory_config`] with runs that take `run_duration`.
pub(crate) fn memory_config_with_runs(queue_limit: usize, run_duration: Duration) -> MemoryConfig {
    MemoryConfig {
        run_duration,
        ..memory_config(queue_limit)
    }
}

/// A running fake upstream over the test fixture.
#[derive(Debug)]
pub(crate) struct FakePlatform {
    server: MockServer,
}

impl FakePlatform {
    /// Starts the fake over the fixture, with these memory settings.
    pub(crate) async fn start(config: MemoryConfig) -> Self {
        let pipelines =
            adapter_memory::load_fixture(&fixture(), TokioClock::start().now()).unwrap();
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(Upstream {
                backend: MemoryBackend::new(config, pipelines),
            })
            .mount(&server)
            .await;
        Self { server }
    }

    /// The base URL to give Maestro, with the path prefix.
    pub(crate) fn url(&self) -> String {
        format!("{}{PREFIX}", self.server.uri())
    }

    /// Every request the fake received so far.
    pub(crate) async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap()
    }
}

/// The responder: the routes of the contract over a memory backend.
struct Upstream {
    backend: MemoryBackend,
}

impl Respond for Upstream {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        // A real upstream checks the token before anything else.
        let expected = format!("Bearer {SERVICE_TOKEN}");
        if header(request, "authorization") != Some(expected.as_str()) {
            return ResponseTemplate::new(401).set_body_json(json!({"detail": "Unauthorized"}));
        }
        self.route(request).unwrap_or_else(Refusal::answer)
    }
}

/// A route's answer: a success, or a refusal, so that `?` can end a route
/// early.
type Answer = Result<ResponseTemplate, Refusal>;

/// A refusal in the error envelope.
#[derive(Debug)]
struct Refusal {
    status: u16,
    exception_type: &'static str,
    traceback: String,
    data: Value,
}

impl Refusal {
    fn answer(self) -> ResponseTemplate {
        ResponseTemplate::new(self.status).set_body_json(json!({"detail": {
            "status": false,
            "exception_type": self.exception_type,
            "traceback": self.traceback,
            "data": self.data,
        }}))
    }
}

impl Upstream {
    fn route(&self, request: &Request) -> Answer {
        if header(request, "accept") != Some("application/json") {
            return Err(violation("Accept is not application/json"));
        }
        if header(request, "x-request-id").is_none_or(str::is_empty) {
            return Err(violation("no X-Request-Id"));
        }
        if !header(request, "user-agent").is_some_and(|agent| agent.starts_with("maestro/")) {
            return Err(violation("the user agent is not maestro/<version>"));
        }
        let path = request.url.path();
        let route = path
            .strip_prefix(PREFIX)
            .ok_or_else(|| violation(format!("{path} is outside the base URL's path")))?;
        let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
        let method = request.method.as_str();
        if (method, segments.as_slice()) == ("GET", &["health"][..]) {
            return self.health(request);
        }
        let ctx = customer(request)?;
        match (method, segments.as_slice()) {
            ("POST", ["pipeline", "execute"]) => self.execute(&ctx, request),
            ("POST", ["pipeline", "pause"]) => self.set_paused(&ctx, request, true),
            ("POST", ["pipeline", "unpause"]) => self.set_paused(&ctx, request, false),
            ("GET", ["pipelines"]) => self.list_pipelines(&ctx, request),
            ("GET", ["pipeline", id]) => self.get_pipeline(&ctx, request, id),
            ("GET", ["pipeline", id, "pipeline_run"]) => self.list_runs(&ctx, request, id),
            ("GET", ["pipeline", id, "pipeline_run", run_id]) => {
                self.get_run(&ctx, request, id, run_id)
            }
            ("POST", ["pipeline", id, "pipeline_run", run_id, "cancel"]) => {
                self.cancel_run(&ctx, request, id, run_id)
            }
            _ => Err(violation(format!("no route {method} {route}"))),
        }
    }

    /// `GET /health`: no customer, any 2xx.
    fn health(&self, request: &Request) -> Answer {
        no_body(request)?;
        if header(request, "x-customer-id").is_some() {
            return Err(violation("the health probe names a customer"));
        }
        now(self.backend.health()).map_err(|err| failure(&err))?;
        Ok(success(json!({"status": "ok"})))
    }

    /// `POST /pipeline/execute`, the run parameters in `conf`.
    fn execute(&self, ctx: &RequestContext, request: &Request) -> Answer {
        let mut body = write_body(ctx, request, &["pipeline_id", "customer_id", "conf"])?;
        let id = body_id(&body)?;
        let conf = RunConf::parse(body.remove("conf").unwrap_or_default())
            .map_err(|err| invalid_conf(&err))?;
        let trigger = TriggerRequest::new(id.clone()).with_conf(conf);
        match now(self.backend.trigger(ctx, &trigger)) {
            Ok(run) => Ok(success(json!({
                "message": "Pipeline execution triggered successfully",
                "pipeline_id": run.pipeline_id.as_str(),
                "run_id": run.id.as_str(),
                "last_status": run.status.as_str(),
                "created_at": format_timestamp(&run.created_at),
                "updated_at": format_timestamp(&run.updated_at),
                "conf": run.conf.as_map(),
            }))),
            Err(ExecuteError::NotFound(_)) => Err(pipeline_not_found(&id)),
            Err(ExecuteError::ConfRefused {
                parameter, reason, ..
            }) => Err(refusal(
                400,
                "InvalidConf",
                &format!("the pipeline refused the run parameters: {reason}"),
                json!({"parameter": parameter, "reason": reason}),
            )),
            Err(ExecuteError::Paused(_)) => Err(refusal(
                400,
                "PipelinePaused",
                "Cannot execute paused pipeline. Use /pipeline/unpause first.",
                Value::Null,
            )),
            Err(ExecuteError::QueueFull { limit, .. }) => Err(refusal(
                429,
                "PipelineQueueFull",
                &format!("Pipeline queue is full ({limit} runs waiting)"),
                json!({"limit": limit}),
            )),
            Err(ExecuteError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }

    /// `POST /pipeline/pause` and `POST /pipeline/unpause`.
    fn set_paused(&self, ctx: &RequestContext, request: &Request, paused: bool) -> Answer {
        let body = write_body(ctx, request, &["pipeline_id", "customer_id"])?;
        let id = body_id(&body)?;
        match now(self.backend.set_paused(ctx, &id, paused)) {
            Ok(()) => {
                let message = if paused {
                    "Pipeline paused successfully"
                } else {
                    "Pipeline unpaused successfully"
                };
                Ok(success(
                    json!({"message": message, "pipeline_id": id.as_str()}),
                ))
            }
            Err(SetPausedError::NotFound(_)) => Err(pipeline_not_found(&id)),
            Err(SetPausedError::AlreadyPaused(_)) => Err(refusal(
                400,
                "PipelineAlreadyPaused",
                "Pipeline is already paused",
                Value::Null,
            )),
            Err(SetPausedError::NotPaused(_)) => Err(refusal(
                400,
                "PipelineNotPaused",
                "Pipeline is not paused",
                Value::Null,
            )),
            Err(SetPausedError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }

    /// `GET /pipelines`.
    fn list_pipelines(&self, ctx: &RequestContext, request: &Request) -> Answer {
        no_body(request)?;
        let summaries = now(self.backend.list(ctx)).map_err(|err| failure(&err))?;
        Ok(success(summaries.iter().map(summary_json).collect()))
    }

    /// `GET /pipeline/{pipeline_id}`.
    fn get_pipeline(&self, ctx: &RequestContext, request: &Request, raw_id: &str) -> Answer {
        no_body(request)?;
        let id = normal_id(raw_id)?;
        match now(self.backend.get(ctx, &id)) {
            Ok(pipeline) => Ok(success(pipeline_json(&pipeline))),
            Err(GetPipelineError::NotFound(_)) => Err(pipeline_not_found(&id)),
            Err(GetPipelineError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }

    /// `GET /pipeline/{pipeline_id}/pipeline_run?limit&offset[&status]`.
    fn list_runs(&self, ctx: &RequestContext, request: &Request, raw_id: &str) -> Answer {
        no_body(request)?;
        let id = normal_id(raw_id)?;
        let query = run_query(request)?;
        match now(self.backend.list_runs(ctx, &id, &query)) {
            Ok(page) => Ok(success(page.runs.iter().map(run_json).collect())
                .insert_header("X-Total-Count", page.total.to_string())),
            Err(ListRunsError::NotFound(_)) => Err(pipeline_not_found(&id)),
            Err(ListRunsError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }

    /// `GET /pipeline/{pipeline_id}/pipeline_run/{run_id}`, the run id
    /// percent-encoded.
    fn get_run(
        &self,
        ctx: &RequestContext,
        request: &Request,
        raw_id: &str,
        raw_run_id: &str,
    ) -> Answer {
        no_body(request)?;
        let id = normal_id(raw_id)?;
        let run_id = run_id_segment(raw_run_id)?;
        match now(self.backend.get_run(ctx, &id, &run_id)) {
            Ok(run) => Ok(success(run_json(&run))),
            Err(GetRunError::PipelineNotFound(_)) => Err(pipeline_not_found(&id)),
            Err(GetRunError::RunNotFound { .. }) => Err(run_not_found(&id, &run_id)),
            Err(GetRunError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }

    /// `POST /pipeline/{pipeline_id}/pipeline_run/{run_id}/cancel`, the run
    /// id percent-encoded and the customer alone in the body.
    fn cancel_run(
        &self,
        ctx: &RequestContext,
        request: &Request,
        raw_id: &str,
        raw_run_id: &str,
    ) -> Answer {
        write_body(ctx, request, &["customer_id"])?;
        let id = normal_id(raw_id)?;
        let run_id = run_id_segment(raw_run_id)?;
        match now(self.backend.cancel_run(ctx, &id, &run_id)) {
            Ok(run) => Ok(success(run_json(&run))),
            Err(CancelRunError::PipelineNotFound(_)) => Err(pipeline_not_found(&id)),
            Err(CancelRunError::RunNotFound { .. }) => Err(run_not_found(&id, &run_id)),
            Err(CancelRunError::AlreadyFinished { status, .. }) => Err(refusal(
                400,
                "PipelineRunAlreadyFinished",
                &format!("Pipeline run {run_id} already finished with status {status}"),
                json!({"status": status.as_str()}),
            )),
            Err(CancelRunError::Backend(err)) => Err(failure(&err)),
            Err(other) => panic!("the memory backend failed unexpectedly: {other:?}"),
        }
    }
}

/// Runs one of the memory backend's futures to its end. They never wait
/// (there is no I/O behind them), so one poll finishes them; this keeps the
/// responder synchronous, as wiremock wants it.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the memory backend waited"),
    }
}

/// A header's value, when it is text.
fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// The caller that `X-Customer-Id` names, percent-decoded.
fn customer(request: &Request) -> Result<RequestContext, Refusal> {
    let raw = header(request, "x-customer-id").ok_or_else(|| violation("no X-Customer-Id"))?;
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| violation(format!("X-Customer-Id {raw:?} is not UTF-8")))?;
    let customer = CustomerId::parse(&decoded).map_err(|err| violation(err.to_string()))?;
    Ok(RequestContext::new(Caller::new(customer)))
}

/// The JSON body of a write: an object with exactly the route's `fields`
/// (execute `{"pipeline_id", "customer_id", "conf"}`, pause and unpause
/// without `conf`, cancel `{"customer_id"}`), the customer the header's.
fn write_body(
    ctx: &RequestContext,
    request: &Request,
    fields: &[&str],
) -> Result<Map<String, Value>, Refusal> {
    if header(request, "content-type") != Some("application/json") {
        return Err(violation("the content type is not application/json"));
    }
    let body: Value =
        serde_json::from_slice(&request.body).map_err(|err| violation(err.to_string()))?;
    let Value::Object(object) = body else {
        return Err(violation(format!("the body {body} is not an object")));
    };
    let exact = object.len() == fields.len() && fields.iter().all(|f| object.contains_key(*f));
    if !exact {
        return Err(violation(format!(
            "the body {} does not hold exactly {fields:?}",
            Value::Object(object)
        )));
    }
    let customer_id = object["customer_id"].as_str();
    if customer_id != Some(ctx.customer().as_str()) {
        return Err(violation(format!(
            "the body names {customer_id:?}, the header {:?}",
            ctx.customer().as_str()
        )));
    }
    Ok(object)
}

/// The body's `pipeline_id`, which Maestro sends in the normal form only.
fn body_id(body: &Map<String, Value>) -> Result<PipelineId, Refusal> {
    let raw = body["pipeline_id"]
        .as_str()
        .ok_or_else(|| violation("pipeline_id is not a string"))?;
    normal_id(raw)
}

/// A run id from its path segment: percent-encoded, and never a dot
/// segment, which Maestro never sends.
fn run_id_segment(raw: &str) -> Result<RunId, Refusal> {
    if raw.contains(':') || raw.contains('+') {
        return Err(violation(format!("run id {raw:?} is not percent-encoded")));
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| violation(format!("run id {raw:?} is not UTF-8")))?;
    if matches!(decoded.as_ref(), "." | "..") {
        return Err(violation(format!("the dot segment {raw:?} as a run id")));
    }
    RunId::parse(&decoded).map_err(|err| violation(err.to_string()))
}

/// A GET has no body.
fn no_body(request: &Request) -> Result<(), Refusal> {
    if request.body.is_empty() {
        Ok(())
    } else {
        Err(violation("a GET with a body"))
    }
}

/// A pipeline id, which Maestro sends in the normal form only.
fn normal_id(raw: &str) -> Result<PipelineId, Refusal> {
    PipelineId::parse(raw)
        .ok()
        .filter(|id| id.as_str() == raw)
        .ok_or_else(|| violation(format!("pipeline id {raw:?} is not in normal form")))
}

/// `limit` and `offset`, always sent, and `status`, sent only to filter.
fn run_query(request: &Request) -> Result<RunQuery, Refusal> {
    let (mut limit, mut offset, mut status) = (None, None, None);
    for (name, value) in request.url.query_pairs() {
        let bad = || violation(format!("query parameter {name}={value:?}"));
        match name.as_ref() {
            "limit" => limit = Some(value.parse::<u32>().map_err(|_| bad())?),
            "offset" => offset = Some(value.parse::<u64>().map_err(|_| bad())?),
            "status" => status = Some(RunStatus::parse(&value).map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    if limit.is_none() || offset.is_none() {
        return Err(violation("limit and offset are always sent"));
    }
    RunQuery::new(limit, offset, status).map_err(|err| violation(err.to_string()))
}

/// PIPELINE.
fn pipeline_json(pipeline: &Pipeline) -> Value {
    json!({
        "id": pipeline.id.as_str(),
        "customer_id": pipeline.customer_id.as_str(),
        "name": pipeline.name,
        "description": pipeline.description,
        "cron": pipeline.cron,
        "status": pipeline.status.as_str(),
        "created_at": format_timestamp(&pipeline.created_at),
        "updated_at": format_timestamp(&pipeline.updated_at),
        "jobs": pipeline.jobs,
    })
}

/// PIPELINE_SUMMARY: PIPELINE with `id` named `pipeline_id`, and the
/// newest run's status.
fn summary_json(summary: &PipelineSummary) -> Value {
    let mut json = pipeline_json(&summary.pipeline);
    let object = json.as_object_mut().unwrap();
    let id = object.remove("id").unwrap();
    object.insert("pipeline_id".to_owned(), id);
    object.insert(
        "last_status".to_owned(),
        json!(summary.last_status.map(RunStatus::as_str)),
    );
    json
}

/// RUN.
fn run_json(run: &Run) -> Value {
    json!({
        "pipeline_run_id": run.id.as_str(),
        "pipeline_id": run.pipeline_id.as_str(),
        "last_status": run.status.as_str(),
        "created_at": format_timestamp(&run.created_at),
        "updated_at": format_timestamp(&run.updated_at),
        "trace": run.trace,
        "conf": run.conf.as_map(),
    })
}

/// `{"status": true, "data": data}` with 200.
fn success(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": true, "data": data}))
}

fn refusal(status: u16, exception_type: &'static str, traceback: &str, data: Value) -> Refusal {
    Refusal {
        status,
        exception_type,
        traceback: traceback.to_owned(),
        data,
    }
}

fn pipeline_not_found(id: &PipelineId) -> Refusal {
    refusal(
        404,
        "PipelineNotFound",
        &format!("Pipeline with id {id} not found"),
        Value::Null,
    )
}

fn run_not_found(id: &PipelineId, run_id: &RunId) -> Refusal {
    refusal(
        404,
        "PipelineRunNotFound",
        &format!("Pipeline run with id {run_id} not found for pipeline {id}"),
        Value::Null,
    )
}

/// A `conf` that cannot be a run's parameters, named as the contract asks:
/// the parameter when one is at fault, and the reason.
fn invalid_conf(err: &InvalidConf) -> Refusal {
    let parameter = match err {
        InvalidConf::ReservedKey { key } => Some(*key),
        _ => None,
    };
    refusal(
        400,
        "InvalidConf",
        &err.to_string(),
        json!({"parameter": parameter, "reason": err.to_string()}),
    )
}

/// A request that breaks the contract: a refusal no route may answer, so
/// that Maestro answers 502 and the test fails, and the reason on standard
/// error to say why.
fn violation(why: impl std::fmt::Display) -> Refusal {
    eprintln!("fake Platform-API: contract violation: {why}");
    refusal(400, "ContractViolation", &why.to_string(), Value::Null)
}

/// The memory backend failing, which it never does.
fn failure(err: &domain::BackendError) -> Refusal {
    refusal(500, "BackendError", &err.to_string(), Value::Null)
}

#[tokio::test]
async fn the_fake_serves_what_the_feeds_source_polls() {
    use std::sync::Arc;

    use adapter_platform_api::{
        PlatformApiBackend, PlatformApiChanges, PlatformApiConfig, WatchedCustomers,
    };
    use domain::{RunChangeSource as _, StorageError};

    use crate::helpers::{ACME, ACTIVE};

    let fake = FakePlatform::start(memory_config(10)).await;
    let backend = PlatformApiBackend::new(PlatformApiConfig {
        base_url: fake.url(),
        token: SERVICE_TOKEN.into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let acme = CustomerId::parse(ACME).unwrap();
    let watched: Arc<dyn WatchedCustomers> = Arc::new(move || {
        let acme = acme.clone();
        async move { Ok::<_, StorageError>(vec![acme]) }
    });
    let source = PlatformApiChanges::new(backend.clone(), watched, Duration::ZERO);

    let (past, cursor) = source.changes(None).await.unwrap();
    assert!(past.is_empty(), "{past:?}");
    let ctx = RequestContext::new(Caller::new(CustomerId::parse(ACME).unwrap()));
    let run = backend
        .trigger(
            &ctx,
            &TriggerRequest::new(PipelineId::parse(ACTIVE).unwrap()),
        )
        .await
        .unwrap();
    let (changes, _) = source.changes(Some(cursor)).await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].customer.as_str(), ACME);
    assert_eq!(changes[0].run.id, run.id);
    // The fake answered every poll as the contract has it: a violation
    // would have been a 502, and the poll an error.
    assert!(
        fake.requests()
            .await
            .iter()
            .any(|request| request.url.path().ends_with("/pipeline_run"))
    );
}
