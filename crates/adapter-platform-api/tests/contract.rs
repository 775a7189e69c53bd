//! Contract tests of the Platform-API backend against a wiremock upstream:
//! the exact request of every route, and what every kind of upstream answer
//! becomes (`docs/backends/platform-api.md`).
//!
//! Tests that wait (on a backoff or a deadline) run on tokio's paused clock
//! and take no real time: see "Time" below.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use adapter_platform_api::{ConfigError, PlatformApiBackend, PlatformApiConfig};
use domain::{
    BackendErrorKind, Caller, CancelRunError, Clock, CustomerId, ExecuteError, GetPipelineError,
    GetRunError, IdempotencyKey, ListRunsError, ManualClock, Orchestrator, PipelineId,
    PipelineRepository, PipelineStatus, RequestContext, Run, RunConf, RunId, RunQuery, RunStatus,
    SetPausedError, TriggerRequest,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "s3rv1ce-t0ken-7Hq2xZ";
const CUSTOMER: &str = "acme";
const REQUEST_ID: &str = "req-7f3a";
/// The id as a client may send it; the upstream must only see the normal form.
const RAW_ID: &str = "1B33AD2F-33D3-4837-9EEB-83C82C8B909D";
const ID: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
const RUN_ID: &str = "manual__2024-12-18T10:30:00.000000+00:00";
const ENCODED_RUN_ID: &str = "manual__2024-12-18T10%3A30%3A00.000000%2B00%3A00";

/// Long enough for any answer of a local mock, even on a busy machine.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The short timeout of the slow-upstream tests.
const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

fn backend_at(base_url: &str, timeout: Duration) -> PlatformApiBackend {
    PlatformApiBackend::new(PlatformApiConfig {
        base_url: base_url.to_owned(),
        token: TOKEN.into(),
        timeout,
    })
    .expect("valid settings")
}

fn backend(server: &MockServer) -> PlatformApiBackend {
    backend_at(&server.uri(), TIMEOUT)
}

fn ctx_for(customer: &str, request_id: Option<&str>) -> RequestContext {
    let ctx = RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()));
    match request_id {
        Some(id) => ctx.with_request_id(id),
        None => ctx,
    }
}

fn ctx() -> RequestContext {
    ctx_for(CUSTOMER, Some(REQUEST_ID))
}

fn id() -> PipelineId {
    PipelineId::parse(RAW_ID).unwrap()
}

fn run_id() -> RunId {
    RunId::parse(RUN_ID).unwrap()
}

fn trigger() -> TriggerRequest {
    TriggerRequest::new(id())
}

fn success(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": true, "data": data}))
}

fn refusal(status: u16, exception_type: &str) -> ResponseTemplate {
    refusal_with_data(status, exception_type, Value::Null)
}

fn refusal_with_data(status: u16, exception_type: &str, data: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "detail": {
            "status": false,
            "exception_type": exception_type,
            "traceback": "upstream message",
            "data": data
        }
    }))
}

fn pipeline_json() -> Value {
    json!({
        "id": ID,
        "customer_id": CUSTOMER,
        "name": "Daily sales",
        "description": "Loads yesterday's sales",
        "cron": "0 3 * * *",
        "status": "paused",
        "created_at": "2024-11-02T09:00:00.000000+00:00",
        "updated_at": "2024-12-01T17:45:12.250000+00:00",
        "jobs": [{"name": "extract", "type": "sql", "nested": {"retries": 3}}]
    })
}

fn summary_json(pipeline_id: &str, customer: &str, name: &str, last_status: Value) -> Value {
    json!({
        "pipeline_id": pipeline_id,
        "customer_id": customer,
        "name": name,
        "description": "",
        "cron": null,
        "status": "active",
        "created_at": "2024-11-02T09:00:00Z",
        "updated_at": "2024-11-02T09:00:00Z",
        "last_status": last_status,
        "jobs": []
    })
}

fn run_json(run_id: &str, status: &str) -> Value {
    json!({
        "pipeline_run_id": run_id,
        "pipeline_id": ID,
        "last_status": status,
        "created_at": "2024-12-18T10:30:00.000000+00:00",
        "updated_at": "2024-12-18T10:34:51.870000+00:00",
        "trace": if status == "FAILED" { json!("job load failed") } else { Value::Null }
    })
}

/// A run as a cancel leaves it.
fn cancelled_json() -> Value {
    let mut run = run_json(RUN_ID, "FAILED");
    run["trace"] = json!(Run::CANCELLED_TRACE);
    run
}

/// The cancel route of [`RUN_ID`].
fn cancel_route() -> String {
    format!("/pipeline/{ID}/pipeline_run/{ENCODED_RUN_ID}/cancel")
}

fn triggered_json() -> Value {
    json!({
        "message": "Pipeline execution triggered successfully",
        "pipeline_id": ID,
        "run_id": RUN_ID,
        "last_status": "RUNNING",
        "created_at": "2024-12-18T10:30:00.000000+00:00",
        "updated_at": "2024-12-18T10:30:00.000000+00:00"
    })
}

async fn answer_everything_with(server: &MockServer, template: ResponseTemplate) {
    Mock::given(any())
        .respond_with(template)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

async fn the_one_request(server: &MockServer) -> Request {
    let mut received = requests(server).await;
    assert_eq!(
        received.len(),
        1,
        "expected exactly one request, got {received:?}"
    );
    received.remove(0)
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
}

/// The headers of every pipeline route for [`ctx`].
fn assert_pipeline_route_headers(request: &Request) {
    assert_eq!(
        header(request, "authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(header(request, "x-request-id"), Some(REQUEST_ID));
    assert_eq!(header(request, "x-customer-id"), Some(CUSTOMER));
    assert_eq!(header(request, "accept"), Some("application/json"));
    assert!(
        header(request, "user-agent").is_some_and(|agent| agent.starts_with("maestro/")),
        "{:?}",
        header(request, "user-agent")
    );
}

/// A write to `route` for [`ctx`], with this JSON body.
fn assert_write(request: &Request, route: &str, body: &Value) {
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), route);
    assert_eq!(request.url.query(), None);
    assert_pipeline_route_headers(request);
    assert_eq!(header(request, "content-type"), Some("application/json"));
    let sent: Value = request.body_json().expect("a JSON body");
    assert_eq!(&sent, body);
}

/// The body of pause and unpause for [`ctx`].
fn pause_body() -> Value {
    json!({"pipeline_id": ID, "customer_id": CUSTOMER})
}

/// The body of execute for [`ctx`] and no run parameters.
fn execute_body() -> Value {
    json!({"pipeline_id": ID, "customer_id": CUSTOMER, "conf": {}})
}

fn assert_read(request: &Request, route: &str) {
    assert_eq!(request.method.as_str(), "GET");
    assert_eq!(request.url.path(), route);
    assert_pipeline_route_headers(request);
    assert_eq!(header(request, "content-type"), None);
    assert!(request.body.is_empty());
}

// --- The exact requests ---

#[tokio::test]
async fn execute_posts_the_normalized_id_and_the_customer_with_token_request_id_and_json() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(triggered_json())).await;

    backend(&server).trigger(&ctx(), &trigger()).await.unwrap();

    assert_write(
        &the_one_request(&server).await,
        "/pipeline/execute",
        &execute_body(),
    );
}

#[tokio::test]
async fn execute_posts_the_same_request_for_a_key_and_a_retry_since_the_upstream_takes_neither() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(triggered_json())).await;
    let retry = trigger()
        .with_idempotency_key(IdempotencyKey::parse("order-42").unwrap())
        .retrying_since(chrono::DateTime::from_timestamp(1_734_517_800, 0).unwrap());

    let run = backend(&server).trigger(&ctx(), &retry).await.unwrap();

    assert_eq!(run.id, run_id());
    let request = the_one_request(&server).await;
    assert_write(&request, "/pipeline/execute", &execute_body());
    let sent: Vec<&str> = request.headers.keys().map(|name| name.as_str()).collect();
    assert!(
        sent.iter().all(|name| !name.contains("idempotency")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn pause_and_unpause_post_the_same_body_to_their_own_routes() {
    for (paused, route) in [(true, "/pipeline/pause"), (false, "/pipeline/unpause")] {
        let server = MockServer::start().await;
        answer_everything_with(
            &server,
            success(json!({"message": "ok", "pipeline_id": ID})),
        )
        .await;

        backend(&server)
            .set_paused(&ctx(), &id(), paused)
            .await
            .unwrap();

        assert_write(&the_one_request(&server).await, route, &pause_body());
    }
}

/// Run parameters as a client may send them: nested, with escapes, text
/// beyond ASCII, a number past `i64` and one with a fraction. Written
/// compact with the keys in the order Maestro keeps them, so this text is
/// also the bytes the upstream must get.
const CONF: &str = r#"{"date":"2024-12-18","full_refresh":true,"limits":{"max":18446744073709551615,"ratio":0.25},"note":"caf\u00e9 \"x\"\n","tags":["a",null,{"deep":[]}]}"#;

fn conf() -> RunConf {
    RunConf::parse(serde_json::from_str(CONF).unwrap()).unwrap()
}

#[tokio::test]
async fn execute_forwards_the_run_parameters_byte_for_byte_in_the_body() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(triggered_json())).await;

    backend(&server)
        .trigger(&ctx(), &trigger().with_conf(conf()))
        .await
        .unwrap();

    let request = the_one_request(&server).await;
    let mut body = execute_body();
    body["conf"] = serde_json::from_str(CONF).unwrap();
    assert_write(&request, "/pipeline/execute", &body);
    let text = String::from_utf8(request.body.clone()).unwrap();
    // serde_json writes `\u00e9` back as the character itself.
    let expected = CONF.replace("\\u00e9", "\u{e9}");
    assert!(text.contains(&format!(r#""conf":{expected}"#)), "{text}");
}

#[tokio::test]
async fn cancel_posts_the_customer_to_the_runs_cancel_route_with_the_run_id_encoded() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(cancelled_json())).await;

    backend(&server)
        .cancel_run(&ctx(), &id(), &run_id())
        .await
        .unwrap();

    assert_write(
        &the_one_request(&server).await,
        &cancel_route(),
        &json!({"customer_id": CUSTOMER}),
    );
}

#[tokio::test]
async fn get_reads_the_pipeline_route_with_the_normalized_id_and_no_body() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(pipeline_json())).await;

    backend(&server).get(&ctx(), &id()).await.unwrap();

    let request = the_one_request(&server).await;
    assert_read(&request, &format!("/pipeline/{ID}"));
    assert_eq!(request.url.query(), None);
}

#[tokio::test]
async fn list_reads_the_pipelines_route() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(json!([]))).await;

    backend(&server).list(&ctx()).await.unwrap();

    let request = the_one_request(&server).await;
    assert_read(&request, "/pipelines");
    assert_eq!(request.url.query(), None);
}

#[tokio::test]
async fn list_runs_sends_limit_offset_and_the_status_only_when_filtering() {
    let server = MockServer::start().await;
    answer_everything_with(
        &server,
        success(json!([])).insert_header("X-Total-Count", "0"),
    )
    .await;
    let backend = backend(&server);

    let filtered = RunQuery::new(Some(2), Some(40), Some(RunStatus::Success)).unwrap();
    backend.list_runs(&ctx(), &id(), &filtered).await.unwrap();
    backend
        .list_runs(&ctx(), &id(), &RunQuery::default())
        .await
        .unwrap();

    let received = requests(&server).await;
    assert_eq!(received.len(), 2);
    for request in &received {
        assert_read(request, &format!("/pipeline/{ID}/pipeline_run"));
    }
    assert_eq!(
        received[0].url.query(),
        Some("limit=2&offset=40&status=SUCCESS")
    );
    assert_eq!(received[1].url.query(), Some("limit=100&offset=0"));
}

#[tokio::test]
async fn get_run_percent_encodes_the_run_id_in_the_path() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(run_json(RUN_ID, "SUCCESS"))).await;

    backend(&server)
        .get_run(&ctx(), &id(), &run_id())
        .await
        .unwrap();

    let request = the_one_request(&server).await;
    assert_read(
        &request,
        &format!("/pipeline/{ID}/pipeline_run/{ENCODED_RUN_ID}"),
    );
    assert_eq!(request.url.query(), None);
}

#[tokio::test]
async fn health_gets_the_health_route_with_the_token_a_fresh_request_id_and_no_customer() {
    let server = MockServer::start().await;
    answer_everything_with(&server, ResponseTemplate::new(200)).await;

    backend(&server).health().await.unwrap();

    let request = the_one_request(&server).await;
    assert_eq!(request.method.as_str(), "GET");
    assert_eq!(request.url.path(), "/health");
    assert_eq!(
        header(&request, "authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(header(&request, "x-customer-id"), None);
    let request_id = header(&request, "x-request-id").expect("a request id");
    assert_eq!(
        uuid::Uuid::parse_str(request_id).unwrap().get_version_num(),
        4
    );
}

#[tokio::test]
async fn a_uuid_v4_request_id_is_generated_for_each_call_when_the_client_sent_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(success(pipeline_json()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(success(triggered_json()))
        .mount(&server)
        .await;
    let backend = backend(&server);
    let anonymous = ctx_for(CUSTOMER, None);

    backend.get(&anonymous, &id()).await.unwrap();
    backend.trigger(&anonymous, &trigger()).await.unwrap();

    let ids: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|request| {
            header(request, "x-request-id")
                .expect("a request id")
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    for request_id in &ids {
        assert_eq!(
            uuid::Uuid::parse_str(request_id).unwrap().get_version_num(),
            4
        );
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn routes_go_below_the_base_urls_path_with_or_without_a_trailing_slash() {
    for suffix in ["/platform/v1", "/platform/v1/"] {
        let server = MockServer::start().await;
        answer_everything_with(&server, success(triggered_json())).await;
        let backend = backend_at(&format!("{}{suffix}", server.uri()), TIMEOUT);

        backend.trigger(&ctx(), &trigger()).await.unwrap();

        assert_eq!(
            the_one_request(&server).await.url.path(),
            "/platform/v1/pipeline/execute"
        );
    }
}

#[tokio::test]
async fn a_customer_id_beyond_plain_ascii_is_percent_encoded_in_the_header_and_plain_in_the_body() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(json!({}))).await;

    let customer = "São Paulo 100%";
    backend(&server)
        .set_paused(&ctx_for(customer, None), &id(), true)
        .await
        .unwrap();

    let request = the_one_request(&server).await;
    assert_eq!(
        header(&request, "x-customer-id"),
        Some("S%C3%A3o%20Paulo%20100%25")
    );
    let body: Value = request.body_json().unwrap();
    assert_eq!(body["customer_id"], customer);
}

#[tokio::test]
async fn a_request_id_that_cannot_be_a_header_is_replaced_by_a_generated_one() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(pipeline_json())).await;

    backend(&server)
        .get(&ctx_for(CUSTOMER, Some("bad\nid")), &id())
        .await
        .unwrap();

    let request = the_one_request(&server).await;
    let request_id = header(&request, "x-request-id").expect("a request id");
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
}

// --- Successes ---

#[tokio::test]
async fn execute_returns_the_run_the_upstream_started() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(triggered_json())).await;

    let run = backend(&server).trigger(&ctx(), &trigger()).await.unwrap();

    assert_eq!(run.id, run_id());
    assert_eq!(run.pipeline_id.as_str(), ID);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        domain::format_timestamp(&run.created_at),
        "2024-12-18T10:30:00.000000+00:00"
    );
    assert_eq!(run.trace, None);
}

#[tokio::test]
async fn execute_accepts_the_public_answer_alone_as_a_queued_run() {
    let server = MockServer::start().await;
    answer_everything_with(
        &server,
        success(json!({"message": "Pipeline execution triggered successfully", "pipeline_id": ID, "run_id": RUN_ID})),
    )
    .await;

    let clock = ManualClock::at_epoch_seconds(1_734_517_801);
    let backend = backend(&server).with_clock(Arc::new(clock.clone()));
    let run = backend.trigger(&ctx(), &trigger()).await.unwrap();

    assert_eq!(run.id, run_id());
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!((run.created_at, run.updated_at), (clock.now(), clock.now()));
}

#[tokio::test]
async fn execute_returns_the_run_parameters_the_upstream_recorded() {
    let server = MockServer::start().await;
    let mut answer = triggered_json();
    answer["conf"] = serde_json::from_str(CONF).unwrap();
    answer_everything_with(&server, success(answer)).await;

    let run = backend(&server)
        .trigger(&ctx(), &trigger().with_conf(conf()))
        .await
        .unwrap();

    assert_eq!(run.conf, conf());
}

#[tokio::test]
async fn an_older_upstream_that_leaves_conf_out_of_its_answers_gives_runs_without_parameters() {
    // `triggered_json` and `run_json` are the answers of an upstream from
    // before the run parameters: no `conf` anywhere.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(success(triggered_json()))
        .mount(&server)
        .await;
    Mock::given(path(format!("/pipeline/{ID}/pipeline_run")))
        .respond_with(
            success(json!([run_json(RUN_ID, "RUNNING")])).insert_header("X-Total-Count", "1"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(success(run_json(RUN_ID, "RUNNING")))
        .mount(&server)
        .await;
    let backend = backend(&server);

    let triggered = backend
        .trigger(&ctx(), &trigger().with_conf(conf()))
        .await
        .unwrap();
    let page = backend
        .list_runs(&ctx(), &id(), &RunQuery::default())
        .await
        .unwrap();
    let run = backend.get_run(&ctx(), &id(), &run_id()).await.unwrap();

    for run in [&triggered, &page.runs[0], &run] {
        assert_eq!(run.conf, RunConf::default());
    }
}

#[tokio::test]
async fn runs_read_back_their_parameters_without_maestros_reserved_block() {
    let server = MockServer::start().await;
    let mut answer = run_json(RUN_ID, "SUCCESS");
    answer["conf"] = serde_json::from_str(CONF).unwrap();
    answer["conf"]["maestro"] = json!({"idempotency_key": "k"});
    Mock::given(path(format!("/pipeline/{ID}/pipeline_run")))
        .respond_with(success(json!([answer.clone()])).insert_header("X-Total-Count", "1"))
        .mount(&server)
        .await;
    answer_everything_with(&server, success(answer)).await;
    let backend = backend(&server);

    let run = backend.get_run(&ctx(), &id(), &run_id()).await.unwrap();
    let page = backend
        .list_runs(&ctx(), &id(), &RunQuery::default())
        .await
        .unwrap();

    assert_eq!(run.conf, conf());
    assert_eq!(page.runs[0].conf, conf());
}

#[tokio::test]
async fn cancel_returns_the_run_as_the_cancel_left_it() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(cancelled_json())).await;

    let run = backend(&server)
        .cancel_run(&ctx(), &id(), &run_id())
        .await
        .unwrap();

    assert_eq!(run.id, run_id());
    assert_eq!(run.pipeline_id.as_str(), ID);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.trace.as_deref(), Some(Run::CANCELLED_TRACE));
}

#[tokio::test]
async fn get_returns_the_pipeline_with_its_jobs_untouched() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(pipeline_json())).await;

    let pipeline = backend(&server).get(&ctx(), &id()).await.unwrap();

    assert_eq!(pipeline.id.as_str(), ID);
    assert_eq!(pipeline.customer_id.as_str(), CUSTOMER);
    assert_eq!(pipeline.name, "Daily sales");
    assert_eq!(pipeline.cron.as_deref(), Some("0 3 * * *"));
    assert_eq!(pipeline.status, PipelineStatus::Paused);
    assert_eq!(
        pipeline.jobs,
        pipeline_json()["jobs"].as_array().unwrap().clone()
    );
    assert_eq!(
        domain::format_timestamp(&pipeline.updated_at),
        "2024-12-01T17:45:12.250000+00:00"
    );
}

#[tokio::test]
async fn list_returns_every_summary_with_its_last_status() {
    let server = MockServer::start().await;
    let other_id = "00000000_0000_4000_8000_000000000001";
    answer_everything_with(
        &server,
        success(json!([
            summary_json(ID, CUSTOMER, "b", json!("FAILED")),
            summary_json(other_id, CUSTOMER, "a", Value::Null),
        ])),
    )
    .await;

    let summaries = backend(&server).list(&ctx()).await.unwrap();

    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].pipeline.id.as_str(), ID);
    assert_eq!(summaries[0].last_status, Some(RunStatus::Failed));
    assert_eq!(summaries[1].pipeline.id.as_str(), other_id);
    assert_eq!(summaries[1].last_status, None);
}

#[tokio::test]
async fn list_runs_returns_the_page_and_the_total_from_x_total_count() {
    let server = MockServer::start().await;
    answer_everything_with(
        &server,
        success(json!([
            run_json(RUN_ID, "FAILED"),
            run_json("scheduled__2024-12-18T03:00:00+00:00", "SUCCESS")
        ]))
        .insert_header("X-Total-Count", "41"),
    )
    .await;

    let page = backend(&server)
        .list_runs(&ctx(), &id(), &RunQuery::new(Some(2), None, None).unwrap())
        .await
        .unwrap();

    assert_eq!(page.total, 41);
    assert_eq!(page.runs.len(), 2);
    assert_eq!(page.runs[0].id, run_id());
    assert_eq!(page.runs[0].status, RunStatus::Failed);
    assert_eq!(page.runs[0].trace.as_deref(), Some("job load failed"));
    assert_eq!(page.runs[1].status, RunStatus::Success);
}

#[tokio::test]
async fn get_run_returns_the_run() {
    let server = MockServer::start().await;
    answer_everything_with(&server, success(run_json(RUN_ID, "QUEUED"))).await;

    let run = backend(&server)
        .get_run(&ctx(), &id(), &run_id())
        .await
        .unwrap();

    assert_eq!(run.id, run_id());
    assert_eq!(run.pipeline_id.as_str(), ID);
    assert_eq!(run.status, RunStatus::Queued);
}

#[tokio::test]
async fn health_is_ready_on_any_2xx_whatever_the_body() {
    for template in [
        ResponseTemplate::new(200).set_body_json(json!({"status": true, "data": {"status": "ok"}})),
        ResponseTemplate::new(204),
        ResponseTemplate::new(200).set_body_string("OK"),
    ] {
        let server = MockServer::start().await;
        answer_everything_with(&server, template).await;
        backend(&server).health().await.unwrap();
    }
}

// --- What each upstream answer becomes, route by route ---

/// The backend's routes, to run one scenario against all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Execute,
    Pause,
    Unpause,
    Get,
    List,
    Runs,
    Run,
    Cancel,
    Health,
}

const ROUTES: [Route; 9] = [
    Route::Execute,
    Route::Pause,
    Route::Unpause,
    Route::Get,
    Route::List,
    Route::Runs,
    Route::Run,
    Route::Cancel,
    Route::Health,
];

impl Route {
    fn is_read(self) -> bool {
        matches!(self, Self::Get | Self::List | Self::Runs | Self::Run)
    }

    /// A success the route accepts.
    fn success(self) -> ResponseTemplate {
        match self {
            Self::Execute => success(triggered_json()),
            Self::Pause | Self::Unpause => success(json!({"pipeline_id": ID})),
            Self::Get => success(pipeline_json()),
            Self::List => success(json!([summary_json(ID, CUSTOMER, "n", Value::Null)])),
            Self::Runs => {
                success(json!([run_json(RUN_ID, "RUNNING")])).insert_header("X-Total-Count", "1")
            }
            Self::Run => success(run_json(RUN_ID, "RUNNING")),
            Self::Cancel => success(cancelled_json()),
            Self::Health => ResponseTemplate::new(200),
        }
    }
}

/// What a call came to, comparable across routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    NotFound,
    Paused,
    QueueFull(usize),
    AlreadyPaused,
    NotPaused,
    RunNotFound,
    ConfRefused,
    AlreadyFinished(RunStatus),
    Backend(BackendErrorKind),
}

/// A call's outcome, and its error written out in full (Display and Debug of
/// the error and of each of its sources) when it failed.
struct Called {
    outcome: Outcome,
    text: String,
}

fn written_out(err: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    let mut current = Some(err);
    while let Some(err) = current {
        text.push_str(&format!("{err}\n{err:?}\n"));
        current = err.source();
    }
    text
}

async fn call(backend: &PlatformApiBackend, route: Route) -> Called {
    let ctx = ctx();
    let id = id();
    // Every refusal names the pipeline (and run) asked for.
    let asked = |got: &PipelineId, outcome: Outcome| {
        assert_eq!(got, &id, "{route:?}: the refusal's id");
        outcome
    };
    let result = match route {
        Route::Execute => backend
            .trigger(&ctx, &trigger())
            .await
            .map(drop)
            .map_err(|err| {
                let outcome = match &err {
                    ExecuteError::NotFound(got) => asked(got, Outcome::NotFound),
                    ExecuteError::Paused(got) => asked(got, Outcome::Paused),
                    ExecuteError::QueueFull { pipeline_id, limit } => {
                        asked(pipeline_id, Outcome::QueueFull(*limit))
                    }
                    ExecuteError::ConfRefused { pipeline_id, .. } => {
                        asked(pipeline_id, Outcome::ConfRefused)
                    }
                    ExecuteError::Backend(err) => Outcome::Backend(err.kind()),
                    other => panic!("{route:?}: unexpected {other:?}"),
                };
                (outcome, written_out(&err))
            }),
        Route::Pause | Route::Unpause => backend
            .set_paused(&ctx, &id, route == Route::Pause)
            .await
            .map_err(|err| {
                let outcome = match &err {
                    SetPausedError::NotFound(got) => asked(got, Outcome::NotFound),
                    SetPausedError::AlreadyPaused(got) => asked(got, Outcome::AlreadyPaused),
                    SetPausedError::NotPaused(got) => asked(got, Outcome::NotPaused),
                    SetPausedError::Backend(err) => Outcome::Backend(err.kind()),
                    other => panic!("{route:?}: unexpected {other:?}"),
                };
                (outcome, written_out(&err))
            }),
        Route::Get => backend.get(&ctx, &id).await.map(drop).map_err(|err| {
            let outcome = match &err {
                GetPipelineError::NotFound(got) => asked(got, Outcome::NotFound),
                GetPipelineError::Backend(err) => Outcome::Backend(err.kind()),
                other => panic!("{route:?}: unexpected {other:?}"),
            };
            (outcome, written_out(&err))
        }),
        Route::List => backend
            .list(&ctx)
            .await
            .map(drop)
            .map_err(|err| (Outcome::Backend(err.kind()), written_out(&err))),
        Route::Runs => backend
            .list_runs(&ctx, &id, &RunQuery::default())
            .await
            .map(drop)
            .map_err(|err| {
                let outcome = match &err {
                    ListRunsError::NotFound(got) => asked(got, Outcome::NotFound),
                    ListRunsError::Backend(err) => Outcome::Backend(err.kind()),
                    other => panic!("{route:?}: unexpected {other:?}"),
                };
                (outcome, written_out(&err))
            }),
        Route::Run => backend
            .get_run(&ctx, &id, &run_id())
            .await
            .map(drop)
            .map_err(|err| (get_run_outcome(&err, &run_id()), written_out(&err))),
        Route::Cancel => backend
            .cancel_run(&ctx, &id, &run_id())
            .await
            .map(drop)
            .map_err(|err| (cancel_outcome(&err, &run_id()), written_out(&err))),
        Route::Health => backend
            .health()
            .await
            .map_err(|err| (Outcome::Backend(err.kind()), written_out(&err))),
    };
    match result {
        Ok(()) => Called {
            outcome: Outcome::Done,
            text: String::new(),
        },
        Err((outcome, text)) => Called { outcome, text },
    }
}

/// What a failed `get_run` of [`id`]'s run `run_id` came to; the error
/// must name both.
fn get_run_outcome(err: &GetRunError, asked_run: &RunId) -> Outcome {
    match err {
        GetRunError::PipelineNotFound(got) => {
            assert_eq!(got, &id());
            Outcome::NotFound
        }
        GetRunError::RunNotFound {
            pipeline_id,
            run_id,
        } => {
            assert_eq!((pipeline_id, run_id), (&id(), asked_run));
            Outcome::RunNotFound
        }
        GetRunError::Backend(err) => Outcome::Backend(err.kind()),
        other => panic!("unexpected {other:?}"),
    }
}

/// What a failed `cancel_run` of [`id`]'s run `run_id` came to; the error
/// must name both.
fn cancel_outcome(err: &CancelRunError, asked_run: &RunId) -> Outcome {
    match err {
        CancelRunError::PipelineNotFound(got) => {
            assert_eq!(got, &id());
            Outcome::NotFound
        }
        CancelRunError::RunNotFound {
            pipeline_id,
            run_id,
        } => {
            assert_eq!((pipeline_id, run_id), (&id(), asked_run));
            Outcome::RunNotFound
        }
        CancelRunError::AlreadyFinished {
            pipeline_id,
            run_id,
            status,
        } => {
            assert_eq!((pipeline_id, run_id), (&id(), asked_run));
            Outcome::AlreadyFinished(*status)
        }
        CancelRunError::Backend(err) => Outcome::Backend(err.kind()),
        other => panic!("unexpected {other:?}"),
    }
}

/// Runs `route` against a fresh upstream that answers everything with
/// `template`, and returns the outcome and how many requests were made.
async fn against(route: Route, template: ResponseTemplate) -> (Called, usize) {
    let server = MockServer::start().await;
    answer_everything_with(&server, template).await;
    let called = call(&backend(&server), route).await;
    (called, requests(&server).await.len())
}

const UPSTREAM: Outcome = Outcome::Backend(BackendErrorKind::Upstream);

#[tokio::test]
async fn every_route_succeeds_on_its_documented_answer() {
    for route in ROUTES {
        let (called, _) = against(route, route.success()).await;
        assert_eq!(called.outcome, Outcome::Done, "{route:?}: {}", called.text);
    }
}

#[tokio::test]
async fn each_contract_refusal_becomes_its_domain_error() {
    let cases = [
        (Route::Execute, 404, "PipelineNotFound", Outcome::NotFound),
        (Route::Execute, 400, "PipelinePaused", Outcome::Paused),
        (Route::Pause, 404, "PipelineNotFound", Outcome::NotFound),
        (
            Route::Pause,
            400,
            "PipelineAlreadyPaused",
            Outcome::AlreadyPaused,
        ),
        (Route::Unpause, 404, "PipelineNotFound", Outcome::NotFound),
        (Route::Unpause, 400, "PipelineNotPaused", Outcome::NotPaused),
        (Route::Get, 404, "PipelineNotFound", Outcome::NotFound),
        (Route::Runs, 404, "PipelineNotFound", Outcome::NotFound),
        (Route::Run, 404, "PipelineNotFound", Outcome::NotFound),
        (Route::Run, 404, "PipelineRunNotFound", Outcome::RunNotFound),
        (Route::Execute, 400, "InvalidConf", Outcome::ConfRefused),
        (Route::Cancel, 404, "PipelineNotFound", Outcome::NotFound),
        (
            Route::Cancel,
            404,
            "PipelineRunNotFound",
            Outcome::RunNotFound,
        ),
    ];
    for (route, status, exception_type, expected) in cases {
        let (called, requests) = against(route, refusal(status, exception_type)).await;
        assert_eq!(
            called.outcome, expected,
            "{route:?} {exception_type}: {}",
            called.text
        );
        assert_eq!(
            requests, 1,
            "{route:?}: a refusal is an answer, not retried"
        );
    }
}

/// What an execute refused with `InvalidConf` and this `data` tells the
/// caller: the parameter and the reason.
async fn conf_refused_with(data: Value) -> (Option<String>, String) {
    let server = MockServer::start().await;
    answer_everything_with(&server, refusal_with_data(400, "InvalidConf", data)).await;
    let err = backend(&server)
        .trigger(&ctx(), &trigger().with_conf(conf()))
        .await
        .unwrap_err();
    assert_eq!(requests(&server).await.len(), 1, "a refusal is not retried");
    match err {
        ExecuteError::ConfRefused {
            pipeline_id,
            parameter,
            reason,
        } => {
            assert_eq!(pipeline_id, id());
            (parameter, reason)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn invalid_conf_is_a_conf_refusal_naming_the_parameter_and_the_reason() {
    let (parameter, reason) =
        conf_refused_with(json!({"parameter": "date", "reason": "must be a date like 2024-12-18"}))
            .await;
    assert_eq!(parameter.as_deref(), Some("date"));
    assert_eq!(reason, "must be a date like 2024-12-18");
}

#[tokio::test]
async fn invalid_conf_without_a_parameter_or_reason_gives_a_fixed_reason_never_the_traceback() {
    for data in [
        Value::Null,
        json!({"parameter": null}),
        json!({"reason": ["not", "text"]}),
    ] {
        let (parameter, reason) = conf_refused_with(data.clone()).await;
        assert_eq!(parameter, None, "{data}");
        assert_eq!(
            reason, "the pipeline does not accept these parameters",
            "{data}"
        );
    }
}

#[tokio::test]
async fn invalid_conf_gives_the_caller_one_short_line_and_never_the_token() {
    let (parameter, reason) = conf_refused_with(json!({
        "parameter": format!("date\n{TOKEN}"),
        "reason": format!("bad\r\nforged: Bearer {TOKEN} {}", "x".repeat(1000)),
    }))
    .await;
    assert_eq!(parameter.as_deref(), Some("date [redacted]"));
    assert!(
        reason.starts_with("bad forged: Bearer [redacted] xxx"),
        "{reason}"
    );
    assert!(reason.chars().count() <= 203, "{}", reason.len());
    assert!(!reason.contains(TOKEN));
}

#[tokio::test]
async fn an_already_finished_run_is_refused_with_the_status_the_upstream_gives() {
    for status in [RunStatus::Success, RunStatus::Failed] {
        let (called, requests) = against(
            Route::Cancel,
            refusal_with_data(
                400,
                "PipelineRunAlreadyFinished",
                json!({"status": status.as_str()}),
            ),
        )
        .await;
        assert_eq!(called.outcome, Outcome::AlreadyFinished(status));
        assert_eq!(requests, 1);
    }
}

#[tokio::test]
async fn an_already_finished_refusal_without_a_finished_status_is_an_upstream_error() {
    for data in [
        Value::Null,
        json!({"status": "RUNNING"}),
        json!({"state": "SUCCESS"}),
    ] {
        let (called, _) = against(
            Route::Cancel,
            refusal_with_data(400, "PipelineRunAlreadyFinished", data.clone()),
        )
        .await;
        assert_eq!(called.outcome, UPSTREAM, "{data}");
        assert!(called.text.contains("data.status"), "{}", called.text);
    }
}

#[tokio::test]
async fn each_answer_of_cancel_becomes_its_outcome() {
    let cases = [
        (success(cancelled_json()), Outcome::Done),
        (refusal(404, "PipelineRunNotFound"), Outcome::RunNotFound),
        (refusal(404, "PipelineNotFound"), Outcome::NotFound),
        (
            refusal_with_data(
                400,
                "PipelineRunAlreadyFinished",
                json!({"status": "SUCCESS"}),
            ),
            Outcome::AlreadyFinished(RunStatus::Success),
        ),
        (ResponseTemplate::new(500), UPSTREAM),
        (refusal(500, "PipelineRunNotFound"), UPSTREAM),
    ];
    for (template, expected) in cases {
        let (called, requests) = against(Route::Cancel, template).await;
        assert_eq!(called.outcome, expected, "{}", called.text);
        assert_eq!(requests, 1, "{expected:?}: sent once");
    }
}

#[tokio::test]
async fn queue_full_carries_the_upstreams_limit_or_zero_when_it_gives_none() {
    let (called, requests) = against(
        Route::Execute,
        refusal_with_data(429, "PipelineQueueFull", json!({"limit": 1000})),
    )
    .await;
    assert_eq!(called.outcome, Outcome::QueueFull(1000));
    assert_eq!(requests, 1);

    let (called, _) = against(Route::Execute, refusal(429, "PipelineQueueFull")).await;
    assert_eq!(called.outcome, Outcome::QueueFull(0));
}

#[tokio::test]
async fn a_refusal_the_route_cannot_answer_is_an_upstream_error() {
    let cases = [
        (Route::Execute, 400, "PipelineAlreadyPaused"),
        (Route::Execute, 404, "PipelineRunNotFound"),
        (Route::Pause, 400, "PipelineNotPaused"),
        (Route::Pause, 400, "PipelinePaused"),
        (Route::Unpause, 400, "PipelineAlreadyPaused"),
        (Route::Unpause, 429, "PipelineQueueFull"),
        (Route::Get, 400, "PipelinePaused"),
        (Route::Get, 404, "PipelineRunNotFound"),
        (Route::List, 404, "PipelineNotFound"),
        (Route::Runs, 404, "PipelineRunNotFound"),
        (Route::Run, 400, "PipelinePaused"),
        (Route::Run, 400, "PipelineRunAlreadyFinished"),
        (Route::Execute, 400, "PipelineRunAlreadyFinished"),
        (Route::Pause, 400, "InvalidConf"),
        (Route::Cancel, 400, "InvalidConf"),
        (Route::Cancel, 400, "PipelinePaused"),
        (Route::Cancel, 429, "PipelineQueueFull"),
    ];
    for (route, status, exception_type) in cases {
        let (called, _) = against(route, refusal(status, exception_type)).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?} {exception_type}");
        assert!(
            called.text.contains(exception_type),
            "the log names it: {}",
            called.text
        );
    }
}

#[tokio::test]
async fn an_unknown_exception_type_is_an_upstream_error_on_every_route() {
    for route in ROUTES {
        let (called, _) = against(route, refusal(400, "ValidationError")).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?}");
    }
}

#[tokio::test]
async fn a_5xx_is_an_upstream_error_on_every_route_and_the_log_names_the_route() {
    for route in ROUTES {
        let template = refusal(500, "PipelineNotFound");
        let (called, _) = against(route, template).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?}");
        assert!(called.text.contains("Platform-API"), "{}", called.text);
        assert!(called.text.contains("500"), "{}", called.text);
    }
    let (called, _) = against(Route::Execute, ResponseTemplate::new(500)).await;
    assert!(
        called.text.contains("POST /pipeline/execute"),
        "{}",
        called.text
    );
}

#[tokio::test]
async fn a_garbage_body_is_an_upstream_error_on_every_route_but_health() {
    for route in ROUTES.into_iter().filter(|route| *route != Route::Health) {
        for template in [
            ResponseTemplate::new(200).set_body_string("<html>It works!</html>"),
            ResponseTemplate::new(200),
            ResponseTemplate::new(200).set_body_json(json!([1, 2, 3])),
            ResponseTemplate::new(404).set_body_string("Not Found"),
            ResponseTemplate::new(400).set_body_json(json!({"detail": "pipeline_id is required"})),
        ] {
            let (called, _) = against(route, template).await;
            assert_eq!(called.outcome, UPSTREAM, "{route:?}: {}", called.text);
        }
    }
}

#[tokio::test]
async fn a_success_envelope_with_status_false_is_an_upstream_error() {
    for route in ROUTES.into_iter().filter(|route| *route != Route::Health) {
        let template =
            ResponseTemplate::new(200).set_body_json(json!({"status": false, "data": null}));
        let (called, _) = against(route, template).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?}");
    }
}

#[tokio::test]
async fn data_of_the_wrong_shape_is_an_upstream_error() {
    let mut no_name = pipeline_json();
    no_name.as_object_mut().unwrap().remove("name");
    let mut naive_time = run_json(RUN_ID, "SUCCESS");
    naive_time["created_at"] = json!("2024-12-18T10:30:00");
    let mut bad_status = summary_json(ID, CUSTOMER, "n", Value::Null);
    bad_status["status"] = json!("stopped");
    let cases = [
        (Route::Execute, success(json!({"pipeline_id": ID}))),
        (
            Route::Execute,
            success(json!({"pipeline_id": "not-a-uuid", "run_id": RUN_ID})),
        ),
        (Route::Get, success(no_name)),
        (Route::Get, success(json!([pipeline_json()]))),
        (Route::List, success(json!([bad_status]))),
        (Route::List, success(pipeline_json())),
        (
            Route::Runs,
            success(json!([naive_time.clone()])).insert_header("X-Total-Count", "1"),
        ),
        (Route::Run, success(naive_time.clone())),
        (Route::Cancel, success(naive_time)),
        (Route::Cancel, success(run_json(RUN_ID, "RUNNING"))),
        (Route::Cancel, success(run_json(RUN_ID, "SUCCESS"))),
        (
            Route::Execute,
            success(json!({"pipeline_id": ID, "run_id": RUN_ID, "conf": "date=2024-12-18"})),
        ),
        (Route::Run, success(with_conf(json!(["date"])))),
        (
            Route::Runs,
            success(json!([with_conf(json!(1))])).insert_header("X-Total-Count", "1"),
        ),
        (
            Route::Run,
            success(json!({"pipeline_run_id": "", "pipeline_id": ID})),
        ),
    ];
    for (route, template) in cases {
        let (called, _) = against(route, template).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?}");
        assert!(called.text.contains("malformed answer"), "{}", called.text);
    }
}

/// A run whose `conf` is `conf`.
fn with_conf(conf: Value) -> Value {
    let mut run = run_json(RUN_ID, "SUCCESS");
    run["conf"] = conf;
    run
}

#[tokio::test]
async fn a_run_list_without_a_usable_x_total_count_is_an_upstream_error() {
    for total in [None, Some("many"), Some("-1")] {
        let mut template = success(json!([]));
        if let Some(total) = total {
            template = template.insert_header("X-Total-Count", total);
        }
        let (called, _) = against(Route::Runs, template).await;
        assert_eq!(called.outcome, UPSTREAM, "{total:?}");
        assert!(called.text.contains("X-Total-Count"), "{}", called.text);
    }
}

#[tokio::test]
async fn a_refused_service_token_is_an_upstream_error_that_says_so() {
    for status in [401, 403] {
        for route in ROUTES {
            let (called, _) = against(route, refusal(status, "NotAuthenticated")).await;
            assert_eq!(called.outcome, UPSTREAM, "{route:?}");
            assert!(
                called.text.contains("refused the service token"),
                "{}",
                called.text
            );
        }
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/elsewhere"))
        .respond_with(Route::Get.success())
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;

    for route in [Route::Get, Route::Execute] {
        let called = call(&backend(&server), route).await;
        assert_eq!(called.outcome, UPSTREAM, "{route:?}");
        assert!(called.text.contains("302"), "{}", called.text);
    }
}

#[tokio::test]
async fn an_answer_over_32_mib_is_an_upstream_error() {
    let body = vec![b' '; 32 * 1024 * 1024 + 1];
    let (called, _) = against(
        Route::Get,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;
    assert_eq!(called.outcome, UPSTREAM);
    assert!(called.text.contains("bytes"), "{}", called.text);
}

#[tokio::test]
async fn another_customers_pipeline_looks_like_a_missing_one() {
    let mut foreign = pipeline_json();
    foreign["customer_id"] = json!("globex");
    let (called, _) = against(Route::Get, success(foreign)).await;
    assert_eq!(called.outcome, Outcome::NotFound);
}

#[tokio::test]
async fn other_customers_pipelines_are_left_out_of_the_list() {
    let server = MockServer::start().await;
    answer_everything_with(
        &server,
        success(json!([
            summary_json(ID, CUSTOMER, "mine", Value::Null),
            summary_json(
                "00000000_0000_4000_8000_000000000002",
                "globex",
                "theirs",
                Value::Null
            ),
        ])),
    )
    .await;

    let summaries = backend(&server).list(&ctx()).await.unwrap();

    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].pipeline.name, "mine");
}

// --- Run ids in paths ---

/// An upstream that knows the pipeline and answers every other route with
/// a run.
async fn upstream_with_the_pipeline(pipeline: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/pipeline/{ID}")))
        .respond_with(success(pipeline))
        .with_priority(1)
        .mount(&server)
        .await;
    answer_everything_with(&server, success(run_json(RUN_ID, "SUCCESS"))).await;
    server
}

#[tokio::test]
async fn a_dot_segment_run_id_is_not_found_in_a_visible_pipeline_which_alone_is_read() {
    for raw in [".", ".."] {
        let server = upstream_with_the_pipeline(pipeline_json()).await;
        let run_id = RunId::parse(raw).unwrap();

        let err = backend(&server)
            .get_run(&ctx(), &id(), &run_id)
            .await
            .unwrap_err();

        assert_eq!(
            get_run_outcome(&err, &run_id),
            Outcome::RunNotFound,
            "{raw}"
        );
        // Sent as a segment, `..` would have reached the fake as the
        // pipeline's own route, or `/pipeline/{id}/`: one more request.
        let request = the_one_request(&server).await;
        assert_read(&request, &format!("/pipeline/{ID}"));
    }
}

#[tokio::test]
async fn a_dot_segment_run_id_of_a_pipeline_that_is_not_the_callers_is_a_missing_pipeline() {
    let mut foreign = pipeline_json();
    foreign["customer_id"] = json!("globex");
    for template in [refusal(404, "PipelineNotFound"), success(foreign)] {
        let server = MockServer::start().await;
        answer_everything_with(&server, template).await;
        let run_id = RunId::parse("..").unwrap();

        let err = backend(&server)
            .get_run(&ctx(), &id(), &run_id)
            .await
            .unwrap_err();

        assert_eq!(get_run_outcome(&err, &run_id), Outcome::NotFound);
        assert_read(&the_one_request(&server).await, &format!("/pipeline/{ID}"));
    }
}

#[tokio::test]
async fn a_dot_segment_run_id_is_a_backend_error_when_the_pipeline_cannot_be_read() {
    let server = MockServer::start().await;
    answer_everything_with(&server, ResponseTemplate::new(500)).await;
    let run_id = RunId::parse(".").unwrap();

    let err = backend(&server)
        .get_run(&ctx(), &id(), &run_id)
        .await
        .unwrap_err();

    assert_eq!(get_run_outcome(&err, &run_id), UPSTREAM);
}

#[tokio::test]
async fn a_dot_segment_run_id_is_never_sent_to_the_cancel_route() {
    for raw in [".", ".."] {
        let run_id = RunId::parse(raw).unwrap();

        // A visible pipeline: the run is not found, and only the pipeline
        // is read.
        let server = upstream_with_the_pipeline(pipeline_json()).await;
        let err = backend(&server)
            .cancel_run(&ctx(), &id(), &run_id)
            .await
            .unwrap_err();
        assert_eq!(cancel_outcome(&err, &run_id), Outcome::RunNotFound, "{raw}");
        assert_read(&the_one_request(&server).await, &format!("/pipeline/{ID}"));

        // Another customer's, or a missing one: the pipeline is not found.
        let mut foreign = pipeline_json();
        foreign["customer_id"] = json!("globex");
        for template in [refusal(404, "PipelineNotFound"), success(foreign)] {
            let server = MockServer::start().await;
            answer_everything_with(&server, template).await;
            let err = backend(&server)
                .cancel_run(&ctx(), &id(), &run_id)
                .await
                .unwrap_err();
            assert_eq!(cancel_outcome(&err, &run_id), Outcome::NotFound, "{raw}");
            assert_read(&the_one_request(&server).await, &format!("/pipeline/{ID}"));
        }

        // The pipeline cannot be read: a backend error, and still no POST.
        let server = MockServer::start().await;
        answer_everything_with(&server, ResponseTemplate::new(500)).await;
        let err = backend(&server)
            .cancel_run(&ctx(), &id(), &run_id)
            .await
            .unwrap_err();
        assert_eq!(cancel_outcome(&err, &run_id), UPSTREAM, "{raw}");
        let sent = requests(&server).await;
        assert!(
            sent.iter().all(|request| request.method.as_str() == "GET"),
            "{sent:?}"
        );
    }
}

#[tokio::test]
async fn a_cancel_of_a_run_id_that_spells_dots_in_percent_encoding_reaches_its_own_route() {
    for (raw, segment) in [("%2e%2e", "%252e%252e"), ("...", "..."), ("./..", ".%2F..")] {
        let server = MockServer::start().await;
        let mut answer = cancelled_json();
        answer["pipeline_run_id"] = json!(raw);
        answer_everything_with(&server, success(answer)).await;

        let run = backend(&server)
            .cancel_run(&ctx(), &id(), &RunId::parse(raw).unwrap())
            .await
            .unwrap();

        assert_eq!(run.id.as_str(), raw);
        assert_write(
            &the_one_request(&server).await,
            &format!("/pipeline/{ID}/pipeline_run/{segment}/cancel"),
            &json!({"customer_id": CUSTOMER}),
        );
    }
}

#[tokio::test]
async fn run_ids_that_spell_dots_in_percent_encoding_reach_the_upstream_as_one_plain_segment() {
    for (raw, segment) in [
        ("%2e", "%252e"),
        ("%2E%2e", "%252E%252e"),
        (".%2e", ".%252e"),
        ("%2e.", "%252e."),
        ("...", "..."),
        ("./..", ".%2F.."),
    ] {
        let server = MockServer::start().await;
        answer_everything_with(&server, success(run_json(raw, "SUCCESS"))).await;

        let run = backend(&server)
            .get_run(&ctx(), &id(), &RunId::parse(raw).unwrap())
            .await
            .unwrap();

        assert_eq!(run.id.as_str(), raw);
        let request = the_one_request(&server).await;
        assert_read(&request, &format!("/pipeline/{ID}/pipeline_run/{segment}"));
    }
}

// --- Time ---
//
// A paused tokio runtime with nothing to do skips ahead to its next timer,
// even while a request to the mock is on the wire (the mock answers from a
// thread of its own): the call's deadline would then pass before any
// answer came. Tests with paused time that talk to the mock therefore hold
// the clock still with a blocking task, as tokio's documentation suggests,
// and move it themselves.

/// Keeps tokio's paused clock from skipping ahead on its own while it
/// lasts: time moves only by `tokio::time::advance`.
struct HeldClock {
    release: std::sync::mpsc::Sender<()>,
    holder: tokio::task::JoinHandle<()>,
}

impl HeldClock {
    fn hold() -> Self {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = tokio::task::spawn_blocking(move || {
            // Returns when the sender is dropped.
            let _ = released.recv();
        });
        Self { release, holder }
    }

    /// Lets the paused clock skip ahead to the next timer again.
    async fn release(self) {
        drop(self.release);
        self.holder.await.expect("the holding task ends");
    }
}

/// Hears the backoff waits the backend announces in its debug log (the
/// `wait_ms` of "retrying a read ..."), just before it starts each one.
struct Backoffs(mpsc::UnboundedSender<Duration>);

impl tracing::Subscriber for Backoffs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct WaitMs(Option<u64>);
        impl tracing::field::Visit for WaitMs {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "wait_ms" {
                    self.0 = Some(value);
                }
            }

            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn fmt::Debug) {}
        }
        let mut wait = WaitMs(None);
        event.record(&mut wait);
        if let Some(ms) = wait.0 {
            let _ = self.0.send(Duration::from_millis(ms));
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `call` on tokio's paused clock, held still, and moves the clock
/// past each backoff wait the backend announces, and by nothing else: the
/// waits take no real time, and no deadline passes. Returns what the call
/// gave and the waits.
async fn skipping_backoffs<T: Send + 'static>(
    call: impl Future<Output = T> + Send + 'static,
) -> (T, Vec<Duration>) {
    let (announce, mut announced) = mpsc::unbounded_channel();
    let _log = tracing::subscriber::set_default(Backoffs(announce));
    let held = HeldClock::hold();
    let mut call = tokio::spawn(call);
    let mut waits = Vec::new();
    let given = loop {
        tokio::select! {
            given = &mut call => break given.expect("the call does not panic"),
            Some(wait) = announced.recv() => {
                waits.push(wait);
                // The announced wait is rounded down to the millisecond.
                tokio::time::advance(wait + Duration::from_millis(1)).await;
            }
        }
    };
    held.release().await;
    (given, waits)
}

/// [`call`] of `route` through [`skipping_backoffs`].
async fn call_skipping_backoffs(
    backend: &PlatformApiBackend,
    route: Route,
) -> (Called, Vec<Duration>) {
    let backend = backend.clone();
    skipping_backoffs(async move { call(&backend, route).await }).await
}

/// Answers `template`, and tells `arrived` of each request first.
struct Telling {
    template: ResponseTemplate,
    arrived: Arc<Notify>,
}

impl Respond for Telling {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.arrived.notify_one();
        self.template.clone()
    }
}

/// An upstream that answers everything with `status` after 10 s, and
/// tells of each request as it arrives.
async fn slow_upstream(status: u16) -> (MockServer, Arc<Notify>) {
    let server = MockServer::start().await;
    let arrived = Arc::new(Notify::new());
    Mock::given(any())
        .respond_with(Telling {
            template: ResponseTemplate::new(status).set_delay(Duration::from_secs(10)),
            arrived: arrived.clone(),
        })
        .mount(&server)
        .await;
    (server, arrived)
}

/// Makes `route`'s call to a [`slow_upstream`] on tokio's paused clock,
/// and how long it took by that clock. The clock stands still until the
/// request has reached the upstream (so that the upstream has it on record
/// before the test moves on), then skips to the call's deadline.
async fn call_timing_out(
    backend: &PlatformApiBackend,
    route: Route,
    arrived: &Notify,
) -> (Called, Duration) {
    let held = HeldClock::hold();
    let started = Instant::now();
    let backend = backend.clone();
    let call = tokio::spawn(async move { call(&backend, route).await });
    arrived.notified().await;
    held.release().await;
    let called = call.await.expect("the call does not panic");
    (called, started.elapsed())
}

// --- Transport failures ---

/// A local port that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

#[tokio::test(start_paused = true)]
async fn a_closed_port_is_unavailable_on_every_route_and_fails_fast() {
    let backend = backend_at(&format!("http://127.0.0.1:{}", closed_port()), TIMEOUT);
    for route in ROUTES {
        let (called, waits) = call_skipping_backoffs(&backend, route).await;
        assert_eq!(
            called.outcome,
            Outcome::Backend(BackendErrorKind::Unavailable),
            "{route:?}: {}",
            called.text
        );
        // Reads retry, but their waits add up to well under the timeout.
        let retries = if route.is_read() { 3 } else { 0 };
        assert_eq!(waits.len(), retries, "{route:?}");
        assert!(
            waits.iter().sum::<Duration>() < TIMEOUT / 4,
            "{route:?}: {waits:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_is_a_timeout_at_the_configured_time_on_every_route() {
    let (server, arrived) = slow_upstream(200).await;
    let backend = backend_at(&server.uri(), SHORT_TIMEOUT);
    for route in ROUTES {
        let (called, took) = call_timing_out(&backend, route, &arrived).await;
        assert_eq!(
            called.outcome,
            Outcome::Backend(BackendErrorKind::Timeout),
            "{route:?}: {}",
            called.text
        );
        assert_eq!(took, SHORT_TIMEOUT, "{route:?}");
    }
    assert_eq!(requests(&server).await.len(), ROUTES.len());
}

// --- Retries ---

/// An upstream that answers `first` once, then `then`.
async fn flaky(first: ResponseTemplate, then: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(first)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(any()).respond_with(then).mount(&server).await;
    server
}

#[tokio::test(start_paused = true)]
async fn every_read_is_retried_after_a_502_or_503_and_then_succeeds() {
    for status in [502, 503] {
        for route in ROUTES.into_iter().filter(|route| route.is_read()) {
            let server = flaky(ResponseTemplate::new(status), route.success()).await;
            let (called, waits) = call_skipping_backoffs(&backend(&server), route).await;
            assert_eq!(
                called.outcome,
                Outcome::Done,
                "{route:?} after {status}: {}",
                called.text
            );
            assert_eq!(requests(&server).await.len(), 2, "{route:?} after {status}");
            // Full jitter below the first ceiling.
            assert!(
                waits.len() == 1 && waits[0] < Duration::from_millis(50),
                "{waits:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_read_carries_the_same_request_id_each_time() {
    let server = flaky(ResponseTemplate::new(503), Route::Get.success()).await;
    let backend = backend(&server);

    let (got, _) =
        skipping_backoffs(
            async move { backend.get(&ctx_for(CUSTOMER, None), &id()).await.map(drop) },
        )
        .await;

    got.unwrap();
    let received = requests(&server).await;
    assert_eq!(received.len(), 2);
    assert_eq!(
        header(&received[0], "x-request-id"),
        header(&received[1], "x-request-id")
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_gives_up_after_three_retries_with_the_last_failure() {
    let server = MockServer::start().await;
    answer_everything_with(&server, ResponseTemplate::new(503)).await;

    let (called, waits) = call_skipping_backoffs(&backend(&server), Route::Get).await;

    assert_eq!(called.outcome, UPSTREAM);
    assert!(called.text.contains("503"), "{}", called.text);
    assert_eq!(requests(&server).await.len(), 4);
    assert_eq!(waits.len(), 3);
}

#[tokio::test]
async fn a_read_is_not_retried_after_a_500_or_a_504() {
    for status in [500, 504] {
        let (called, requests) = against(Route::Runs, ResponseTemplate::new(status)).await;
        assert_eq!(called.outcome, UPSTREAM);
        assert_eq!(requests, 1, "{status}");
    }
}

#[tokio::test]
async fn writes_and_health_are_never_retried() {
    for route in [
        Route::Execute,
        Route::Pause,
        Route::Unpause,
        Route::Cancel,
        Route::Health,
    ] {
        for status in [502, 503] {
            let (called, requests) = against(route, ResponseTemplate::new(status)).await;
            assert_eq!(called.outcome, UPSTREAM, "{route:?} {status}");
            assert_eq!(requests, 1, "{route:?} {status}: sent exactly once");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_that_timed_out_is_not_sent_again() {
    for route in [Route::Execute, Route::Cancel] {
        let (server, arrived) = slow_upstream(503).await;
        let backend = backend_at(&server.uri(), SHORT_TIMEOUT);

        let (called, took) = call_timing_out(&backend, route, &arrived).await;

        assert_eq!(
            called.outcome,
            Outcome::Backend(BackendErrorKind::Timeout),
            "{route:?}"
        );
        assert_eq!(took, SHORT_TIMEOUT, "{route:?}");
        assert_eq!(requests(&server).await.len(), 1, "{route:?}");
    }
}

// --- The token ---

#[tokio::test]
async fn the_token_never_appears_in_an_error_even_when_the_upstream_echoes_it() {
    let echo = format!("you sent Authorization: Bearer {TOKEN}");
    let echoing_templates = || {
        [
            ResponseTemplate::new(500).set_body_string(echo.clone()),
            ResponseTemplate::new(401).set_body_json(json!({"headers": {"authorization": format!("Bearer {TOKEN}")}})),
            ResponseTemplate::new(200).set_body_string(echo.clone()),
            ResponseTemplate::new(200).set_body_json(json!({"status": true, "data": echo.clone()})),
            ResponseTemplate::new(400).set_body_json(json!({
                "detail": {"status": false, "exception_type": echo.clone(), "traceback": echo.clone(), "data": null}
            })),
        ]
    };
    let mut texts = Vec::new();
    for route in ROUTES {
        for template in echoing_templates() {
            let (called, _) = against(route, template).await;
            if called.outcome == Outcome::Done {
                // Health reads no body, pause and unpause no `data`.
                assert!(
                    matches!(route, Route::Health | Route::Pause | Route::Unpause),
                    "{route:?}"
                );
            } else {
                texts.push(called.text);
            }
        }
    }
    let unreachable = backend_at(&format!("http://127.0.0.1:{}", closed_port()), TIMEOUT);
    texts.push(call(&unreachable, Route::Execute).await.text);
    let (server, arrived) = slow_upstream(200).await;
    tokio::time::pause();
    let slow = backend_at(&server.uri(), SHORT_TIMEOUT);
    texts.push(call_timing_out(&slow, Route::Get, &arrived).await.0.text);

    assert!(texts.len() > 30, "{}", texts.len());
    for text in texts {
        assert!(!text.is_empty());
        assert!(!text.contains(TOKEN), "the token leaked into: {text}");
    }
}

#[test]
fn debug_output_of_the_backend_and_its_settings_hides_the_token() {
    let config = PlatformApiConfig {
        base_url: "https://platform.internal/api".to_owned(),
        token: TOKEN.into(),
        timeout: TIMEOUT,
    };
    let config_text = format!("{config:?}");
    let backend_text = format!("{:?}", PlatformApiBackend::new(config).unwrap());
    for text in [config_text, backend_text] {
        assert!(!text.contains(TOKEN), "{text}");
    }
}

// --- Settings ---

#[test]
fn unusable_settings_are_refused_without_echoing_the_token() {
    let attempt = |base_url: &str, token: &str, timeout: Duration| {
        PlatformApiBackend::new(PlatformApiConfig {
            base_url: base_url.to_owned(),
            token: token.into(),
            timeout,
        })
    };
    let good = "https://platform.internal";
    for base_url in ["platform.internal", "not a url", ""] {
        assert!(
            matches!(
                attempt(base_url, TOKEN, TIMEOUT),
                Err(ConfigError::InvalidUrl(_))
            ),
            "{base_url}"
        );
    }
    for base_url in [
        "ftp://platform.internal",
        "https://user:pass@platform.internal",
        "https://platform.internal/?x=1",
        "https://platform.internal/#top",
        "unix:/run/platform.sock",
    ] {
        assert!(
            matches!(
                attempt(base_url, TOKEN, TIMEOUT),
                Err(ConfigError::UnsupportedUrl)
            ),
            "{base_url}"
        );
    }
    for token in ["", "two words", "line\nbreak", "t\u{f6}ken"] {
        let err = attempt(good, token, TIMEOUT).unwrap_err();
        assert!(matches!(err, ConfigError::InvalidToken), "{token:?}");
        assert!(token.is_empty() || !format!("{err} {err:?}").contains(token));
    }
    assert!(matches!(
        attempt(good, TOKEN, Duration::ZERO),
        Err(ConfigError::ZeroTimeout)
    ));
    assert!(attempt("http://127.0.0.1:8080/platform/", TOKEN, TIMEOUT).is_ok());
}
