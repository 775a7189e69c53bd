//! What every request passes through, outermost first: its request id
//! (tower-http's request-id layers, after a client's unusable id is
//! dropped) and its place in a distributed trace (`trace::start`), its span
//! and one access-log line (tower-http's trace layer), and the request
//! metrics.

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::HeaderName,
    middleware::{self, Next},
    response::Response,
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::{Span, field::Empty};

use crate::{AppState, trace};

/// The `X-Request-Id` header.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps `router` in the layers every request passes through.
pub(crate) fn wrap(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let exported = state.exports_spans();
    // `Router::layer` wraps what is already there, so the last layer added
    // is the first a request meets.
    router
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request| span(request, exported))
                .on_request(())
                .on_response(move |response: &Response, latency, span: &Span| {
                    answered(response, latency, span, exported);
                })
                // Every answer, errors included, gets its one line above.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(middleware::map_request(prepare))
}

/// Readies a request for the layers below, in the one step they share so
/// that tracing adds no layer of its own: drops an unusable `X-Request-Id`,
/// and gives the request its place in its trace.
async fn prepare(mut request: Request) -> Request {
    drop_unusable_request_id(&mut request);
    trace::start(&mut request);
    request
}

/// The request's correlation id, as the layers set it: the client's
/// `X-Request-Id` when it is usable, a fresh UUID otherwise.
pub(crate) fn request_id(extensions: &axum::http::Extensions) -> Option<&str> {
    extensions
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// Removes a client's `X-Request-Id` unless it is 1 to 128 visible ASCII
/// characters, so that what is logged and passed on is safe; the request
/// then gets a fresh one.
fn drop_unusable_request_id(request: &mut Request) {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(u8::is_ascii_graphic)
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
}

/// The route template a request matched, not its raw path, so that labels
/// and log fields stay a closed set; requests that match no route share
/// one.
fn route(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// The route of requests that match none.
const UNMATCHED: &str = "unmatched";

/// The request's span: its method, route, request id and trace id, and
/// the customer, pipeline and run that the handlers record as they learn
/// them. When spans are exported, it also carries what OpenTelemetry reads
/// (name, kind, status), is made the child of the caller's span, and its
/// trace id is OpenTelemetry's.
fn span(request: &Request, exported: bool) -> Span {
    let method = request.method();
    let route = route(request);
    let request_id = request_id(request.extensions()).unwrap_or_default();
    if !exported {
        return tracing::info_span!(
            "request",
            method = %method,
            route,
            request_id,
            trace_id = trace::trace_id(request.extensions()).map(tracing::field::display),
            customer = Empty,
            pipeline_id = Empty,
            run_id = Empty,
        );
    }
    let span = tracing::info_span!(
        "request",
        method = %method,
        route,
        request_id,
        trace_id = Empty,
        customer = Empty,
        pipeline_id = Empty,
        run_id = Empty,
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.response.status_code = Empty,
    );
    trace::adopt_caller(&span, request);
    span
}

/// The access log: one line per answer, in the request's span; and, for
/// an exported span, the answer's status.
fn answered(response: &Response, latency: Duration, span: &Span, exported: bool) {
    let status = response.status().as_u16();
    if exported {
        span.record("http.response.status_code", status);
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    tracing::info!(
        parent: span,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "answered"
    );
}

/// Counts the request while it is in flight, then once answered with its
/// latency, by route, method and status.
async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let _in_flight = state.metrics().in_flight();
    let started = Instant::now();
    // The matched path is shared, not copied: no allocation per request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics().observe_request(
        matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
