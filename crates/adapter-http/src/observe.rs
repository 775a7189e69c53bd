//! What every request passes through, in one layer: its request id (the
//! client's `X-Request-Id` when usable, a fresh UUID otherwise, echoed on
//! the answer), its place in a distributed trace (`trace::start`), its log
//! context (a span, or a [`RequestLog`]) and one access-log line, the
//! request metrics, the edge's limits on the request
//! (`edge::within_limits`), and a 500 for a handler that panics. The body
//! limit is held where every body is read (`extract::whole_body`).
//!
//! One layer rather than one for each, and a service of its own rather
//! than `axum::middleware::from_fn`: every layer of a router boxes the
//! route again, and clones and boxes it on every request, and `from_fn`
//! boxes the rest of the stack once more; together they cost about a tenth
//! of a request's time.

use std::{
    any::Any,
    convert::Infallible,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue},
    response::{IntoResponse as _, Response},
};
use futures_util::FutureExt as _;
use tower::{Layer, Service};
use tower_http::request_id::RequestId;
use tracing::{Instrument as _, Span, field::Empty};

use crate::{
    AppState, edge,
    error::ApiError,
    notes::RequestNotes,
    request_log::{self, RequestLog, UNMATCHED},
    trace,
};

/// The `X-Request-Id` header.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps every route of `router` in what every request passes through.
pub(crate) fn wrap(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router.layer(Observed(state.clone()))
}

/// The layer that puts a route under [`observe`].
#[derive(Clone)]
struct Observed(AppState);

impl<R> Layer<R> for Observed {
    type Service = Observe<R>;

    fn layer(&self, route: R) -> Self::Service {
        Observe {
            route,
            state: self.0.clone(),
        }
    }
}

/// A route answered through [`observe`].
#[derive(Clone)]
struct Observe<R> {
    route: R,
    state: AppState,
}

impl<R> Service<Request> for Observe<R>
where
    R: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    R::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.route.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The route that said it was ready answers; its clone waits for
        // the next request.
        let next = self.route.clone();
        let route = std::mem::replace(&mut self.route, next);
        let state = self.state.clone();
        Box::pin(async move { Ok(observe(&state, request, route).await) })
    }
}

/// Gives the request its id and its place in its trace, then answers it in
/// its log context (a span, or a [`RequestLog`]) under the edge's limits;
/// counts it while in flight and once answered, logs the answer, and
/// echoes the id on it.
async fn observe<R>(state: &AppState, mut request: Request, route: R) -> Response
where
    R: Service<Request, Response = Response, Error = Infallible>,
{
    let id = identify(&mut request);
    trace::start(&mut request);
    let exported = state.exports_spans();
    let mut response = if exported || state.request_spans() {
        let span = span(&request, exported);
        let (response, latency) = answer(state, request, route).instrument(span.clone()).await;
        answered(&response, latency, &span, exported);
        response
    } else if tracing::span_enabled!(tracing::Level::INFO) {
        // The context is made only when the span would have been on
        // (`RUST_LOG=info`).
        let log = RequestLog::new(
            request.method().clone(),
            request.extensions().get::<MatchedPath>().cloned(),
            id.clone(),
            trace::trace_id(request.extensions()),
        );
        request_log::scope(Some(log), async {
            let (response, latency) = answer(state, request, route).await;
            answered(&response, latency, &Span::none(), false);
            response
        })
        .await
    } else {
        answer(state, request, route).await.0
    };
    response.headers_mut().entry(&REQUEST_ID).or_insert(id);
    response
}

/// Answers the request under the edge's limits, a panic as a 500; counts
/// it while in flight and once answered; and says how long it took.
async fn answer<R>(state: &AppState, request: Request, mut route: R) -> (Response, Duration)
where
    R: Service<Request, Response = Response, Error = Infallible>,
{
    let _in_flight = state.metrics().in_flight();
    let started = Instant::now();
    // The matched path is shared, not copied: no allocation per request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    // The route is called inside the guarded future, so that a panic while
    // calling it is caught as one while it runs.
    let answer = |request| async move {
        let Ok(response) = AssertUnwindSafe(async move { route.call(request).await })
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Ok(panicked(&*panic)));
        response
    };
    let response = edge::within_limits(state, request, answer).await;
    let latency = started.elapsed();
    state.metrics().observe_request(
        matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        latency,
    );
    (response, latency)
}

/// The answer of a handler that panicked, logged with what it said: 500,
/// as any internal error.
fn panicked(panic: &(dyn Any + Send)) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or_default();
    tracing::error!(panic = %message, "handler panicked");
    ApiError::internal().into_response()
}

/// The request's id: the client's `X-Request-Id` when it is usable, or a
/// fresh UUID; noted on the request for [`request_id`], which is what is
/// logged and passed on. The request's own header is left as it came:
/// nothing reads it after this.
fn identify(request: &mut Request) -> HeaderValue {
    let id = match request.headers().get(&REQUEST_ID).filter(|id| usable(id)) {
        Some(id) => id.clone(),
        None => {
            let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
            let id = uuid::Builder::from_random_bytes(trace::random_id_bytes()).into_uuid();
            let text = id.hyphenated().encode_lower(&mut text);
            HeaderValue::from_str(text).expect("a UUID is a valid header value")
        }
    };
    RequestNotes::of_mut(request.extensions_mut()).id = Some(RequestId::new(id.clone()));
    id
}

/// The request's correlation id, as [`observe`] set it: the client's
/// `X-Request-Id` when it is usable, a fresh UUID otherwise.
pub(crate) fn request_id(extensions: &axum::http::Extensions) -> Option<&str> {
    RequestNotes::of(extensions)?
        .id
        .as_ref()
        .and_then(|id| id.header_value().to_str().ok())
}

/// Whether a client's `X-Request-Id` is safe to log and pass on: 1 to 128
/// visible ASCII characters. Otherwise the request gets a fresh one.
fn usable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(u8::is_ascii_graphic)
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

/// The request's span: its method, route, request id and trace id, and
/// the customer, pipeline and run that the handlers record as they learn
/// them. When spans are exported, it also carries what OpenTelemetry reads
/// (name, kind, status), is made the child of the caller's span, and its
/// trace id is OpenTelemetry's.
fn span(request: &Request, exported: bool) -> Span {
    if !exported {
        // The fields are read only when the span is on (`RUST_LOG=info`).
        return tracing::info_span!(
            "request",
            method = %request.method(),
            route = route(request),
            request_id = request_id(request.extensions()).unwrap_or_default(),
            trace_id = trace::trace_id(request.extensions()).map(tracing::field::display),
            customer = Empty,
            pipeline_id = Empty,
            run_id = Empty,
        );
    }
    let method = request.method();
    let route = route(request);
    let request_id = request_id(request.extensions()).unwrap_or_default();
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

/// The access log: one line per answer, in the request's span or
/// context; and, for an exported span, the answer's status.
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
        latency_ms = milliseconds(latency),
        "answered"
    );
}

/// `latency` in milliseconds, to the nanosecond: `0.183013` for 183,013
/// ns, where its seconds times 1,000 give `0.18301299999999998`.
fn milliseconds(latency: Duration) -> f64 {
    // Exact below 2^53 ns (104 days), then divided with one rounding.
    latency.as_nanos() as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode, routing::get};
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::edge::tests::state;

    #[test]
    fn a_latency_is_logged_in_milliseconds_to_the_nanosecond() {
        for (nanos, text) in [
            (183_013, "0.183013"),
            (183_019, "0.183019"),
            (1_000, "0.001"),
            (7, "7e-6"),
            (1_500_000_000, "1500.0"),
            (86_399_999_999_999, "86399999.999999"),
        ] {
            let ms = milliseconds(Duration::from_nanos(nanos));
            assert_eq!(format!("{ms:?}"), text);
        }
        // What its seconds times 1,000 gave.
        assert_eq!(
            format!("{:?}", Duration::from_nanos(183_013).as_secs_f64() * 1000.0),
            "0.18301299999999998"
        );
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_counted_and_given_its_request_id() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let state = state();
        let metrics = state.metrics().clone();
        let app = wrap(Router::new().route("/boom", get(boom)), &state).with_state(state);
        let request = axum::http::Request::get("/boom")
            .header("x-request-id", "req-1")
            .body(Body::empty())
            .unwrap();

        let response = app.oneshot(request).await.unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-request-id"], "req-1");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body["detail"]["exception_type"],
            json!("InternalError"),
            "{body}"
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"maestro_http_requests_total{route="/boom",method="GET",status="500"} 1"#
            ),
            "{text}"
        );
    }
}
