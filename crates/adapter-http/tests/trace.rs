//! The router in process, over mocked ports: the trace context each
//! request gives the backend (the caller's trace continued, or a new one),
//! and, with span export on and an OpenTelemetry layer recording into
//! memory, the request's and the backend call's spans and their parents.

use std::sync::{Arc, Mutex};

use adapter_http::{AppState, Metrics, router, trace_orchestrator};
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use chrono::{TimeZone as _, Utc};
use domain::{
    Caller, CustomerId, Idempotency, IdempotencyConfig, ManualClock, MockAuthContext,
    MockIdempotencyStore, MockOrchestrator, MockPipelineRepository, Orchestrator, PipelineId,
    PipelineService, Run, RunId, RunStatus, TraceContext, TraceParent,
};
use http_body_util::BodyExt as _;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::ServiceExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the orchestrator was given, call by call.
type Seen = Arc<Mutex<Vec<Option<TraceContext>>>>;

/// An orchestrator that triggers a run and keeps the trace context of
/// each call.
fn orchestrator(seen: &Seen) -> MockOrchestrator {
    let seen = Arc::clone(seen);
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_trigger().returning(move |ctx, _| {
        seen.lock().unwrap().push(ctx.trace().cloned());
        let at = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap();
        Ok(Run::new(
            RunId::manual(&at),
            PipelineId::parse(PIPELINE).unwrap(),
            RunStatus::Running,
            at,
        ))
    });
    orchestrator
}

fn state(orchestrator: Arc<dyn Orchestrator>) -> AppState {
    let mut auth = MockAuthContext::new();
    auth.expect_authenticate()
        .returning(|_| Ok(Caller::new(CustomerId::parse("acme").unwrap())));
    let idempotency = Idempotency::new(
        Arc::new(MockIdempotencyStore::new()),
        IdempotencyConfig::default(),
        Arc::new(ManualClock::at_epoch_seconds(1_734_517_800)),
    );
    let service = PipelineService::new(Arc::new(MockPipelineRepository::new()), orchestrator);
    AppState::new(
        service,
        Arc::new(auth),
        "mock",
        Metrics::default(),
        idempotency,
    )
}

fn execute(traceparent: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/platform/pipeline/execute")
        .header("authorization", "Bearer token")
        .header("content-type", "application/json");
    if let Some(traceparent) = traceparent {
        request = request
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=opaque");
    }
    request
        .body(Body::from(format!(r#"{{"pipeline_id": "{PIPELINE}"}}"#)))
        .unwrap()
}

/// Sends `request` and reads the whole answer, so that the request's span
/// has ended when this returns.
async fn send(state: AppState, request: Request<Body>) -> StatusCode {
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn the_backend_is_given_the_callers_trace_with_a_span_of_maestros_own() {
    let seen = Seen::default();
    let state = state(Arc::new(orchestrator(&seen)));

    assert_eq!(
        send(state, execute(Some(TRACEPARENT))).await,
        StatusCode::OK
    );

    let trace = seen.lock().unwrap()[0].clone().expect("a trace context");
    assert_eq!(trace.trace_id().to_string(), TRACE);
    assert_ne!(trace.span_id().to_string(), CALLER_SPAN);
    assert!(trace.is_sampled());
    assert_eq!(trace.state(), Some("vendor=opaque"));
    // What the backend passes on reads back as W3C reads it.
    let passed = TraceParent::parse(trace.traceparent().as_bytes()).unwrap();
    assert_eq!(passed.parent_id(), trace.span_id());
}

#[tokio::test]
async fn a_missing_or_malformed_traceparent_starts_a_new_trace_and_is_no_error() {
    let seen = Seen::default();
    let state = state(Arc::new(orchestrator(&seen)));
    let malformed = [
        None,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"),
        Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ];
    for traceparent in malformed {
        assert_eq!(
            send(state.clone(), execute(traceparent)).await,
            StatusCode::OK
        );
    }
    let seen = seen.lock().unwrap();
    let mut traces: Vec<String> = seen
        .iter()
        .map(|trace| {
            let trace = trace.as_ref().expect("a trace context");
            assert_eq!(trace.state(), None);
            assert!(!trace.is_sampled(), "nothing records it");
            trace.trace_id().to_string()
        })
        .collect();
    assert!(!traces.contains(&TRACE.to_owned()));
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), malformed.len(), "each its own trace");
}

#[tokio::test]
async fn two_traceparents_are_ambiguous_and_start_a_new_trace() {
    let seen = Seen::default();
    let state = state(Arc::new(orchestrator(&seen)));
    let request = Request::post("/platform/pipeline/execute")
        .header("authorization", "Bearer token")
        .header("content-type", "application/json")
        .header("traceparent", TRACEPARENT)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Body::from(format!(r#"{{"pipeline_id": "{PIPELINE}"}}"#)))
        .unwrap();
    assert_eq!(send(state, request).await, StatusCode::OK);
    let trace = seen.lock().unwrap()[0].clone().unwrap();
    assert_ne!(trace.trace_id().to_string(), TRACE);
    assert_ne!(
        trace.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn find(spans: &[SpanData], kind: &SpanKind) -> SpanData {
    spans
        .iter()
        .find(|span| &span.span_kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} span in {spans:#?}"))
        .clone()
}

#[tokio::test]
async fn exported_spans_nest_the_backend_call_in_the_request_in_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // This test's thread only: the tests around it run without a layer.
    let _default = tracing::subscriber::set_default(subscriber);
    let seen = Seen::default();
    let state = state(trace_orchestrator(Arc::new(orchestrator(&seen)))).with_span_export();

    assert_eq!(
        send(state, execute(Some(TRACEPARENT))).await,
        StatusCode::OK
    );

    let spans = exporter.get_finished_spans().unwrap();
    let server = find(&spans, &SpanKind::Server);
    let call = find(&spans, &SpanKind::Client);
    assert_eq!(hex(&server.span_context.trace_id().to_bytes()), TRACE);
    assert_eq!(hex(&server.parent_span_id.to_bytes()), CALLER_SPAN);
    assert!(server.parent_span_is_remote);
    assert_eq!(server.name, "POST /platform/pipeline/execute");
    assert_eq!(call.span_context.trace_id(), server.span_context.trace_id());
    assert_eq!(call.parent_span_id, server.span_context.span_id());
    assert!(!call.parent_span_is_remote, "the request's span is local");
    assert_eq!(call.name, "execute");
    // The backend was told the call's span is the parent of its work.
    let given = seen.lock().unwrap()[0].clone().unwrap();
    assert_eq!(given.trace_id().to_string(), TRACE);
    assert_eq!(
        given.span_id().to_bytes(),
        call.span_context.span_id().to_bytes()
    );
    assert_eq!(given.state(), Some("vendor=opaque"));
}
