//! What every request passes through, in one layer: its request id (the
//! client's `X-Request-Id` when usable, a fresh UUID otherwise, echoed on
//! the answer), its place in a distributed trace (`trace::start`), its span
//! and one access-log line, the request metrics, and the edge's limits on
//! the request (`edge::within_limits`).
//!
//! One layer rather than one for each: every layer of its own boxes the
//! request's future and clones the stack below it on every request, and
//! together they cost about a tenth of a request's time.

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
};
use tower_http::request_id::RequestId;
use tracing::{Instrument as _, Span, field::Empty};

use crate::{AppState, edge, trace};

/// The `X-Request-Id` header.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps `router` in what every request passes through.
pub(crate) fn wrap(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router.layer(middleware::from_fn_with_state(state.clone(), observe))
}

/// Gives the request its id and its place in its trace, then answers it in
/// its span under the edge's limits; counts it while in flight and once
/// answered, logs the answer, and echoes the id on it.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = identify(&mut request);
    trace::start(&mut request);
    let exported = state.exports_spans();
    let span = span(&request, exported);
    let _in_flight = state.metrics().in_flight();
    let started = Instant::now();
    // The matched path is shared, not copied: no allocation per request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let mut response = edge::within_limits(&state, request, |request| next.run(request))
        .instrument(span.clone())
        .await;
    let latency = started.elapsed();
    state.metrics().observe_request(
        matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        latency,
    );
    answered(&response, latency, &span, exported);
    response.headers_mut().entry(&REQUEST_ID).or_insert(id);
    response
}

/// The request's id: the client's `X-Request-Id` when it is usable, or a
/// fresh UUID set on the request in its place; kept in the request's
/// extensions for [`request_id`].
fn identify(request: &mut Request) -> HeaderValue {
    drop_unusable_request_id(request);
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            let id = HeaderValue::from_str(text).expect("a UUID is a valid header value");
            request.headers_mut().insert(&REQUEST_ID, id.clone());
            id
        }
    };
    request.extensions_mut().insert(RequestId::new(id.clone()));
    id
}

/// The request's correlation id, as [`observe`] set it: the client's
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
