//! The router in process, over mocked ports: readiness, draining, and the
//! mapping of backend failures onto 502, 503 and 504 without leaks.

use std::sync::Arc;

use adapter_http::{
    AppState, Metrics,
    ratelimit::{RateLimitConfig, RateLimiter},
    router,
};
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use domain::{
    BackendError, Caller, CustomerId, ExecuteError, Idempotency, IdempotencyConfig, ManualClock,
    MockAuthContext, MockIdempotencyStore, MockOrchestrator, MockPipelineRepository,
    PipelineService,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const LEAK: &str = "http://10.1.2.3:9999/secret-path?token=hunter2";

fn auth() -> MockAuthContext {
    let mut auth = MockAuthContext::new();
    auth.expect_authenticate()
        .returning(|_| Ok(Caller::new(CustomerId::parse("acme").unwrap())));
    auth
}

/// Execute's idempotency over a store that is never reached: these tests
/// send no `Idempotency-Key`.
fn idempotency() -> Idempotency {
    Idempotency::new(
        Arc::new(MockIdempotencyStore::new()),
        IdempotencyConfig::default(),
        Arc::new(ManualClock::at_epoch_seconds(1_734_517_800)),
    )
}

fn state(orchestrator: MockOrchestrator) -> AppState {
    let service = PipelineService::new(
        Arc::new(MockPipelineRepository::new()),
        Arc::new(orchestrator),
    );
    AppState::new(
        service,
        Arc::new(auth()),
        "mock",
        Metrics::default(),
        idempotency(),
    )
}

async fn call(state: AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        !text.contains("10.1.2.3") && !text.contains("hunter2"),
        "leak: {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn execute() -> Request<Body> {
    Request::post("/platform/pipeline/execute")
        .header("authorization", "Bearer any")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"pipeline_id": "1b33ad2f-33d3-4837-9eeb-83c82c8b909d"}).to_string(),
        ))
        .unwrap()
}

#[tokio::test]
async fn ready_is_200_while_the_backend_answers() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_health().returning(|| Ok(()));
    let (status, body) = call(state(orchestrator), get("/ready")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"backend": "ok"}})
    );
}

#[tokio::test]
async fn ready_is_503_while_the_backend_does_not_answer() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_health().returning(|| {
        Err(BackendError::unavailable(format!(
            "connect to {LEAK} refused"
        )))
    });
    let (status, body) = call(state(orchestrator), get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"status": "unavailable", "checks": {"backend": "unavailable"}})
    );
}

#[tokio::test]
async fn ready_is_503_while_draining_without_asking_the_backend() {
    let orchestrator = MockOrchestrator::new(); // any call would panic
    let state = state(orchestrator);
    state.start_draining();
    let (status, body) = call(state, get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"status": "draining"}));
}

#[tokio::test]
async fn backend_failures_map_to_502_503_504_with_fixed_messages() {
    type Case = (fn() -> BackendError, StatusCode, &'static str);
    let cases: [Case; 3] = [
        (
            || BackendError::unavailable(LEAK),
            StatusCode::SERVICE_UNAVAILABLE,
            "UpstreamUnavailable",
        ),
        (
            || BackendError::timeout(LEAK),
            StatusCode::GATEWAY_TIMEOUT,
            "UpstreamTimeout",
        ),
        (
            || BackendError::upstream(LEAK),
            StatusCode::BAD_GATEWAY,
            "UpstreamError",
        ),
    ];
    for (error, expected, exception_type) in cases {
        let mut orchestrator = MockOrchestrator::new();
        orchestrator
            .expect_trigger()
            .returning(move |_, _| Err(ExecuteError::Backend(error())));
        let (status, body) = call(state(orchestrator), execute()).await;
        assert_eq!(status, expected);
        assert_eq!(body["detail"]["exception_type"], exception_type);
        assert_eq!(body["detail"]["status"], false);
        assert_eq!(body["detail"]["data"], Value::Null);
    }
}

#[tokio::test]
async fn backend_calls_are_counted_by_operation_and_outcome() {
    let metrics = Metrics::default();
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger()
        .returning(|_, _| Err(BackendError::timeout("slow").into()));
    let orchestrator = metrics.instrument_orchestrator(Arc::new(orchestrator));
    let service = PipelineService::new(Arc::new(MockPipelineRepository::new()), orchestrator);
    let state = AppState::new(service, Arc::new(auth()), "mock", metrics, idempotency());
    let app = router(state);
    let response = app.clone().oneshot(execute()).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let text = metrics_text(app).await;
    assert!(
        text.contains(r#"maestro_backend_calls_total{operation="execute",outcome="timeout"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"maestro_backend_call_duration_seconds_count{operation="execute"} 1"#));
    assert!(
        !text.contains("maestro_runs_triggered_total{"),
        "a failed execute triggered nothing"
    );
}

/// The text `app` serves at `/metrics`.
async fn metrics_text(app: Router) -> String {
    let response = app.oneshot(get("/metrics")).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A state whose verifier takes the bearer token to be the customer id, and
/// whose backend lists no pipelines, limited to 60 requests a minute with a
/// burst of 2.
fn limited_state() -> AppState {
    let mut auth = MockAuthContext::new();
    auth.expect_authenticate()
        .returning(|token| Ok(Caller::new(CustomerId::parse(token).unwrap())));
    let mut repository = MockPipelineRepository::new();
    repository.expect_list().returning(|_| Ok(Vec::new()));
    let service = PipelineService::new(Arc::new(repository), Arc::new(MockOrchestrator::new()));
    let limit = RateLimitConfig::new(60, Some(2)).unwrap();
    AppState::new(
        service,
        Arc::new(auth),
        "mock",
        Metrics::default(),
        idempotency(),
    )
    // The service's clock, which the paused tests below move.
    .with_rate_limiter(RateLimiter::new(
        limit,
        Arc::new(runtime::TokioClock::start()),
    ))
}

fn list_as(customer: &str) -> Request<Body> {
    Request::get("/platform/pipelines")
        .header("authorization", format!("Bearer {customer}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_customer_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let app = router(limited_state());
    for _ in 0..2 {
        let response = app.clone().oneshot(list_as("acme")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app.clone().oneshot(list_as("acme")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["detail"]["exception_type"], "RateLimited");
    assert_eq!(body["detail"]["status"], false);

    // Another customer's quota is untouched.
    let response = app.clone().oneshot(list_as("globex")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A second later the bucket has one request again.
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    let response = app.clone().oneshot(list_as("acme")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let text = metrics_text(app).await;
    assert!(text.contains("maestro_rate_limited_total 1"), "{text}");
}
