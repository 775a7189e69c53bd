//! Tracing across the hop, through the real `maestro` binary: the caller's
//! W3C `traceparent` continued (or a trace started) and passed on to the
//! fake Platform-API and the fake Airflow with Maestro's span as the
//! parent, the trace id in the access log, and, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans exported over OTLP/HTTP to
//! a receiver in the test that decodes them with `opentelemetry-proto`.

use std::time::Duration;

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use domain::TraceParent;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::any_value,
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use reqwest::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wiremock::Request;

use crate::{
    fake_airflow::{self, DAG},
    fake_platform::{self, FakePlatform, SERVICE_TOKEN},
    helpers::{ACME, ACTIVE, SECRET, TestApp, token},
    maestro::Maestro,
};

/// The caller's trace, its span, and a `traceparent` naming both, sampled.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "vendor=opaque,other=1";

/// The longest the test waits for an exported span: the batch delay is
/// set to 50 ms, so this is only a bound against hanging.
const EXPORT_PATIENCE: Duration = Duration::from_secs(20);

/// An exported span, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn is(&self, kind: SpanKind) -> bool {
        self.span.kind == kind as i32
    }

    /// A string or integer attribute, as text.
    fn attribute(&self, key: &str) -> Option<String> {
        let value = self
            .span
            .attributes
            .iter()
            .find(|attribute| attribute.key == key)?
            .value
            .as_ref()?
            .value
            .as_ref()?;
        match value {
            any_value::Value::StringValue(text) => Some(text.clone()),
            any_value::Value::IntValue(number) => Some(number.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A local OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, each span handed to the test as it comes.
struct Collector {
    url: String,
    spans: mpsc::UnboundedReceiver<Exported>,
    seen: Vec<Exported>,
}

impl Collector {
    async fn start() -> Self {
        async fn receive(
            State(spans): State<mpsc::UnboundedSender<Exported>>,
            body: Bytes,
        ) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "text/plain")],
                    b"not an ExportTraceServiceRequest".to_vec(),
                );
            };
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|resource| &resource.attributes)
                    .find(|attribute| attribute.key == "service.name")
                    .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                    .map(|value| match value {
                        any_value::Value::StringValue(name) => name.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for span in resource
                    .scope_spans
                    .into_iter()
                    .flat_map(|scope| scope.spans)
                {
                    let _ = spans.send(Exported {
                        service: service.clone(),
                        span,
                    });
                }
            }
            // An empty `ExportTraceServiceResponse`: everything accepted.
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                Vec::new(),
            )
        }
        let (sender, spans) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(sender);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            spans,
            seen: Vec::new(),
        }
    }

    /// The first exported span that `matches`, waiting for it to arrive.
    async fn span(&mut self, matches: impl Fn(&Exported) -> bool) -> Exported {
        let deadline = tokio::time::Instant::now() + EXPORT_PATIENCE;
        loop {
            if let Some(found) = self.seen.iter().find(|span| matches(span)) {
                return found.clone();
            }
            match tokio::time::timeout_at(deadline, self.spans.recv()).await {
                Ok(Some(span)) => self.seen.push(span),
                _ => panic!("no such span was exported; got {:#?}", self.seen),
            }
        }
    }
}

/// The `traceparent` an upstream request carried, read as W3C reads it.
fn sent_parent(request: &Request) -> TraceParent {
    let value = request
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent on {} {}", request.method, request.url));
    TraceParent::parse(value.as_bytes())
        .unwrap_or_else(|| panic!("a malformed traceparent: {value:?}"))
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name)?.to_str().ok()
}

/// The upstream's execute requests, in order.
fn executes(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|request| request.url.path().ends_with("/pipeline/execute"))
        .collect()
}

/// The JSON access-log line of each request with this request id.
fn access_line(output: &str, request_id: &str) -> Value {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "answered" && event["span"]["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access line for {request_id}:\n{output}"))
}

async fn execute_traced(
    client: &Client,
    base: &str,
    request_id: &str,
    traceparent: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{base}/platform/pipeline/execute"))
        .bearer_auth(token(ACME))
        .header("x-request-id", request_id)
        .json(&json!({"pipeline_id": ACTIVE}));
    if let Some(traceparent) = traceparent {
        request = request
            .header("traceparent", traceparent)
            .header("tracestate", TRACESTATE);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_callers_trace_reaches_the_platform_api_with_maestros_span_as_the_parent() {
    let mut app = TestApp::spawn_platform_api(&[]).await;

    let response = execute_traced(&app.client, &app.base, "traced-1", Some(TRACEPARENT)).await;
    assert_eq!(response.status(), 200);
    // The request id is the client's own, as before.
    assert_eq!(response.headers()["x-request-id"], "traced-1");

    let requests = app.upstream().requests().await;
    let sent = executes(&requests);
    assert_eq!(sent.len(), 1);
    let parent = sent_parent(sent[0]);
    assert_eq!(parent.trace_id().to_string(), TRACE);
    assert_ne!(parent.parent_id().to_string(), CALLER_SPAN);
    assert!(
        parent.is_sampled(),
        "the caller's sampling decision is kept"
    );
    assert_eq!(header(sent[0], "tracestate"), Some(TRACESTATE));
    assert_eq!(header(sent[0], "x-request-id"), Some("traced-1"));

    let output = app.stop();
    assert_eq!(access_line(&output, "traced-1")["span"]["trace_id"], TRACE);
}

#[tokio::test]
async fn a_request_without_a_usable_traceparent_starts_a_trace_of_its_own() {
    let mut app = TestApp::spawn_platform_api(&[]).await;
    let malformed = [
        None,
        // Upper-case hexadecimal, an all-zero trace, version ff, garbage.
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("not a traceparent"),
    ];
    for (index, traceparent) in malformed.iter().enumerate() {
        let response = execute_traced(
            &app.client,
            &app.base,
            &format!("fresh-{index}"),
            *traceparent,
        )
        .await;
        assert_eq!(response.status(), 200, "{traceparent:?}");
    }

    let requests = app.upstream().requests().await;
    let sent = executes(&requests);
    assert_eq!(sent.len(), malformed.len());
    let traces: Vec<String> = sent
        .iter()
        .map(|request| {
            let parent = sent_parent(request);
            // A trace Maestro starts without recording it says so.
            assert!(!parent.is_sampled());
            // The caller's vendor data belongs to the caller's trace only.
            assert_eq!(header(request, "tracestate"), None);
            parent.trace_id().to_string()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = traces.iter().collect();
    assert_eq!(distinct.len(), traces.len(), "each request its own trace");
    assert!(!traces.iter().any(|trace| trace == TRACE));

    let output = app.stop();
    for (index, trace) in traces.iter().enumerate() {
        let line = access_line(&output, &format!("fresh-{index}"));
        assert_eq!(&line["span"]["trace_id"], trace.as_str());
    }
}

#[tokio::test]
async fn every_call_to_airflow_carries_the_callers_trace_with_maestros_span() {
    let (airflow, _runs, _posts) = fake_airflow::start(Duration::ZERO).await;
    let maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_BACKEND", "airflow"),
        ("MAESTRO_AIRFLOW_URL", &airflow.uri()),
        ("MAESTRO_AIRFLOW_TOKEN", "airflow-token"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_LOG_FORMAT", "json"),
    ]);
    let response = Client::new()
        .post(format!(
            "http://{}/platform/pipeline/execute",
            maestro.addr()
        ))
        .bearer_auth(token(ACME))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", TRACESTATE)
        .json(&json!({"pipeline_id": DAG}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let requests = airflow.received_requests().await.unwrap();
    // The DAG's read and the run's post.
    assert!(requests.len() >= 2, "{requests:?}");
    let parents: Vec<TraceParent> = requests.iter().map(sent_parent).collect();
    for (request, parent) in requests.iter().zip(&parents) {
        assert_eq!(parent.trace_id().to_string(), TRACE);
        assert_ne!(parent.parent_id().to_string(), CALLER_SPAN);
        assert_eq!(header(request, "tracestate"), Some(TRACESTATE));
        assert!(header(request, "x-request-id").is_some());
    }
    // Without span export, Maestro's one span is the parent of them all.
    assert!(parents.windows(2).all(|pair| pair[0] == pair[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_continue_the_callers_trace_and_parent_the_upstreams_work() {
    let mut collector = Collector::start().await;
    let upstream = FakePlatform::start(fake_platform::memory_config(1000)).await;
    let maestro = Maestro::start_platform_api(
        &upstream.url(),
        SERVICE_TOKEN,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
            ("OTEL_SERVICE_NAME", "maestro-under-test"),
            // Export each batch within 50 ms, so that the test waits for
            // the spans rather than for the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let base = format!("http://{}", maestro.addr());
    let client = Client::new();

    // A caller in a trace: Maestro's server span is its child.
    let response = execute_traced(&client, &base, "exported-1", Some(TRACEPARENT)).await;
    assert_eq!(response.status(), 200);
    let server = collector
        .span(|span| span.is(SpanKind::Server) && span.trace_id() == TRACE)
        .await;
    assert_eq!(server.parent_span_id(), CALLER_SPAN);
    assert_eq!(server.span.name, "POST /platform/pipeline/execute");
    assert_eq!(server.service, "maestro-under-test");
    assert_eq!(server.span.trace_state, TRACESTATE);
    assert_eq!(
        server.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attribute("customer").as_deref(), Some(ACME));
    assert_eq!(
        server.attribute("request_id").as_deref(),
        Some("exported-1")
    );
    // The backend call is the server span's child, and the upstream was
    // told that call's span is its parent.
    let call = collector
        .span(|span| span.is(SpanKind::Client) && span.parent_span_id() == server.span_id())
        .await;
    assert_eq!(call.trace_id(), TRACE);
    assert_eq!(call.span.name, "execute");
    assert_eq!(call.attribute("outcome").as_deref(), Some("ok"));
    let requests = upstream.requests().await;
    let sent = executes(&requests);
    assert_eq!(
        header(sent[0], "traceparent"),
        Some(format!("00-{TRACE}-{}-01", call.span_id()).as_str())
    );
    assert_eq!(header(sent[0], "tracestate"), Some(TRACESTATE));
    // The log line names the same trace.
    let logged = maestro.wait_for(|line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "answered" && event["span"]["request_id"] == "exported-1")
            .then_some(event)
    });
    assert_eq!(logged["span"]["trace_id"], TRACE);

    // A caller with no trace: Maestro's server span starts one, and the
    // upstream is told about it.
    let response = execute_traced(&client, &base, "exported-2", None).await;
    assert_eq!(response.status(), 200);
    let requests = upstream.requests().await;
    let started = sent_parent(executes(&requests)[1]);
    let trace = started.trace_id().to_string();
    assert_ne!(trace, TRACE);
    assert!(started.is_sampled(), "Maestro records the trace it started");
    let root = collector
        .span(|span| span.is(SpanKind::Server) && span.trace_id() == trace)
        .await;
    assert!(root.span.parent_span_id.is_empty(), "{root:?}");
    let call = collector
        .span(|span| span.is(SpanKind::Client) && span.parent_span_id() == root.span_id())
        .await;
    assert_eq!(call.span_id(), started.parent_id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_not_yet_exported_are_sent_when_maestro_stops() {
    let mut collector = Collector::start().await;
    let mut maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_LOG_FORMAT", "json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
        // No batch is due for an hour: only the shutdown sends this one.
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ]);
    let health = Client::new()
        .get(format!("http://{}/health", maestro.addr()))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    maestro.terminate();
    assert!(maestro.wait_exit().success());

    let server = collector.span(|span| span.trace_id() == TRACE).await;
    assert_eq!(server.span.name, "GET /health");
    assert_eq!(server.service, "maestro");
}
