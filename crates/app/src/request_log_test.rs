//! The request's log context written by [`crate::log_line::TextLine`]
//! against the span it replaced: the same requests, answered once with a
//! span per request and once with a [`adapter_http::RequestLog`], log the
//! same lines.

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use clap::Parser as _;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use tracing_subscriber::fmt::format::JsonFields;

use crate::{
    Cli, Command,
    log_fields::TextFields,
    log_json::{JsonLine, library_format},
    log_line::TextLine,
    log_test::{Fixed, Lines},
    wiring::{Built, build},
};

/// The service on the embedded default, with its demo token and pipeline.
async fn demo() -> (Built, String, String) {
    let Some(Command::Serve(config)) = Cli::try_parse_from(["maestro", "serve"]).unwrap().command
    else {
        panic!("expected serve");
    };
    let built = build(&config).await.unwrap();
    let banner = built.dev_banner.as_ref().expect("the demo's banner");
    let token = banner.token.clone();
    let pipeline = banner.pipeline_id.clone().expect("the demo pipeline");
    (built, token, pipeline)
}

/// Answers `request` by `router`; its status and body.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// The caller's place in its trace, so that the trace ids compare.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An execute by `token`, its id `request_id`, in a trace of the caller's.
fn execute(token: &str, request_id: &str) -> axum::http::request::Builder {
    Request::post("/platform/pipeline/execute")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .header("traceparent", TRACEPARENT)
}

/// The log's two formats, as the service writes them.
#[derive(Debug, Clone, Copy)]
enum Format {
    Text,
    Json,
    /// The library's JSON format, as JSON lines were written with a span
    /// per request.
    LibraryJson,
}

/// A subscriber that writes `format`'s lines to `lines`.
fn subscriber(format: Format, lines: Lines) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(lines);
    match format {
        Format::Text => Box::new(
            builder
                .fmt_fields(TextFields)
                .event_format(TextLine::with_timer(Fixed))
                .finish(),
        ),
        Format::Json => Box::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine::with_timer(Fixed))
                .finish(),
        ),
        Format::LibraryJson => Box::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(library_format(Fixed))
                .finish(),
        ),
    }
}

/// The lines the requests below log through `router` in `format`, each
/// line's latency and fresh run ids (one for each execute) written as `…`.
async fn lines_of(
    router: &Router,
    format: Format,
    (token, pipeline, run): (&str, &str, &str),
) -> String {
    let lines = Lines::default();
    let _default = tracing::subscriber::set_default(subscriber(format, lines.clone()));
    let body = || Body::from(format!(r#"{{"pipeline_id": "{pipeline}"}}"#));

    let (status, _) = send(router, execute(token, "req-ok").body(body()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // Refused inside the request: its line names the request too.
    let (status, _) = send(
        router,
        execute("not-a-token", "req-refused").body(body()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Kept by its key: the use case may run in a task of its own.
    let keyed = execute(token, "req-keyed")
        .header("idempotency-key", format!("key-{}", uuid::Uuid::new_v4()))
        .body(body())
        .unwrap();
    assert_eq!(send(router, keyed).await.0, StatusCode::OK);
    // A run named by its path.
    let path = format!("/platform/pipeline/{pipeline}/pipeline_run/{run}");
    let get = Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", "req-run")
        .header("traceparent", TRACEPARENT)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(router, get).await.0, StatusCode::OK);
    // No route, no id given: a fresh one.
    let nowhere = Request::get("/nowhere")
        .header("x-request-id", "req-nowhere")
        .header("traceparent", TRACEPARENT)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(router, nowhere).await.0, StatusCode::NOT_FOUND);

    // The first run keeps a name of its own; the executes' fresh ones go.
    let text = lines.text().replace(run, "first-run");
    let text = masked(&text, "latency_ms=", &[' ', '\n']);
    let text = masked(&text, "\"latency_ms\":", &[',', '}']);
    masked(&text, "manual__", &['"'])
}

/// `text` with what follows each `start`, up to one of `ends`, written as
/// `…`.
fn masked(text: &str, start: &str, ends: &[char]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(start) {
        out.push_str(&rest[..at + start.len()]);
        out.push('…');
        rest = &rest[at + start.len()..];
        rest = &rest[rest.find(ends).unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// The demo with a first run of its pipeline, served twice: each request
/// in its task's context, and each request a span.
struct Demo {
    in_context: Router,
    in_spans: Router,
    token: String,
    pipeline: String,
    run: String,
}

impl Demo {
    async fn new() -> Self {
        let (built, token, pipeline) = demo().await;
        let first = send(
            &built.router,
            execute(&token, "req-first")
                .body(Body::from(format!(r#"{{"pipeline_id": "{pipeline}"}}"#)))
                .unwrap(),
        )
        .await
        .1;
        let run = first["data"]["run_id"].as_str().unwrap().to_owned();
        Self {
            in_context: adapter_http::router(built.state.clone()),
            in_spans: adapter_http::router(built.state.with_request_spans()),
            token,
            pipeline,
            run,
        }
    }

    /// The lines the requests of [`lines_of`] log in `format`, through
    /// `router`.
    async fn lines(&self, router: &Router, format: Format) -> String {
        lines_of(router, format, (&self.token, &self.pipeline, &self.run)).await
    }
}

#[tokio::test]
async fn a_requests_lines_are_the_same_with_its_context_as_with_a_span() {
    let demo = Demo::new().await;
    let pipeline = &demo.pipeline;

    let context = demo.lines(&demo.in_context, Format::Text).await;
    let spans = demo.lines(&demo.in_spans, Format::Text).await;

    assert_eq!(context, spans);
    let lines: Vec<&str> = context.lines().collect();
    assert_eq!(lines.len(), 6, "{context}");
    assert_eq!(
        lines[0],
        format!(
            "2026-12-02T01:11:34.783912Z  INFO request{{method=POST \
             route=\"/platform/pipeline/execute\" request_id=\"req-ok\" \
             trace_id=4bf92f3577b34da6a3ce929d0e0e4736 customer=\"demo\" \
             pipeline_id=\"{pipeline}\" run_id=\"manual__…\"}}: adapter_http::observe: answered \
             status=200 latency_ms=…"
        )
    );
    assert!(
        lines[1].contains(
            "request{method=POST route=\"/platform/pipeline/execute\" \
             request_id=\"req-refused\" trace_id=4bf92f3577b34da6a3ce929d0e0e4736}: \
             adapter_http::extract: token refused"
        ),
        "{context}"
    );
    assert!(
        lines[4].contains(&format!(
            "pipeline_id=\"{pipeline}\" run_id=\"first-run\"}}"
        )),
        "{context}"
    );
    assert!(
        lines[5].contains("request{method=GET route=\"unmatched\" request_id=\"req-nowhere\""),
        "{context}"
    );
}

#[tokio::test]
async fn a_requests_json_lines_are_the_same_with_its_context_as_with_a_span() {
    let demo = Demo::new().await;
    let pipeline = &demo.pipeline;

    let context = demo.lines(&demo.in_context, Format::Json).await;
    let library = demo.lines(&demo.in_spans, Format::LibraryJson).await;
    let spans = demo.lines(&demo.in_spans, Format::Json).await;

    assert_eq!(context, library);
    assert_eq!(spans, library, "a line with a span is the library's");
    let lines: Vec<&str> = context.lines().collect();
    assert_eq!(lines.len(), 6, "{context}");
    assert_eq!(
        lines[0],
        format!(
            "{{\"timestamp\":\"2026-12-02T01:11:34.783912Z\",\"level\":\"INFO\",\
             \"message\":\"answered\",\"status\":200,\"latency_ms\":…,\
             \"target\":\"adapter_http::observe\",\"span\":{{\"customer\":\"demo\",\
             \"method\":\"POST\",\"pipeline_id\":\"{pipeline}\",\"request_id\":\"req-ok\",\
             \"route\":\"/platform/pipeline/execute\",\"run_id\":\"manual__…\",\
             \"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"name\":\"request\"}}}}"
        )
    );
    for line in lines {
        assert!(line.ends_with(",\"name\":\"request\"}}"), "{line}");
    }
}
