//! The request-level limits of the edge: a request body must arrive within
//! the body timeout (408 `RequestTimeout`), and a request must be answered
//! within the per-request timeout (503 `ServiceTimeout`) unless its handler
//! says it may take longer ([`RequestDeadline`]).
//!
//! The connection-level limits (the header-read and idle timeouts, the cap
//! on open connections) belong to the server that accepts connections: the
//! `maestro` binary's accept loop.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{FromRequestParts, Request},
    http::request::Parts,
    response::{IntoResponse as _, Response},
};
use http_body::{Frame, SizeHint};
use tokio::{
    sync::Notify,
    time::{Instant, Sleep},
};

use crate::{AppState, error::ApiError, metrics::ConnectionClose, notes::RequestNotes};

/// The default longest time a request body may take to arrive, counted from
/// the end of the request head: the contract's 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default longest time a request may take to be answered, counted from
/// the end of its head, body included.
///
/// It must cover the body timeout (30 s) and then the slowest request's
/// backend calls: an execute on Airflow reads the DAG and triggers, each
/// bounded by the upstream timeout (10 s), with the idempotency store's
/// calls (1 s each) around them. 60 s leaves room for all of it, so that
/// this timeout only ever cuts a request that something else failed to
/// bound.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The deadline of the request being handled, which a handler that is
/// meant to hold its answer open moves or lifts.
///
/// Every route is answered 503 `ServiceTimeout` when it takes longer than
/// the per-request timeout (`MAESTRO_REQUEST_TIMEOUT_SECONDS`), so that no
/// request can hang for ever. A route whose answer is meant to wait takes
/// this extractor and says so before it waits:
///
/// ```text
/// // `GET .../pipeline_run/{run_id}?wait_seconds=N`: N more seconds.
/// async fn get_run(deadline: RequestDeadline, /* ... */) {
///     deadline.extend(Duration::from_secs(wait_seconds));
///     // ...
/// }
/// // `GET /platform/events`: a stream that ends when the client leaves.
/// async fn events(deadline: RequestDeadline, /* ... */) {
///     deadline.lift();
///     // ...
/// }
/// ```
///
/// The deadline covers the handler until it returns its response; a
/// streamed body (Server-Sent Events) is not cut by it once the response
/// has started. Outside the router's deadline layer (or in a router built
/// without one) the methods do nothing.
#[derive(Debug, Clone, Default)]
pub struct RequestDeadline {
    at: Option<Arc<Deadline>>,
}

impl RequestDeadline {
    /// Gives the request `by` more time than the per-request timeout.
    pub fn extend(&self, by: Duration) {
        if let Some(deadline) = &self.at {
            deadline.change(|at| at.map(|at| at + by));
        }
    }

    /// Takes the per-request timeout off this request: it may take as long
    /// as it needs (a stream that lasts while the client listens).
    pub fn lift(&self) {
        if let Some(deadline) = &self.at {
            deadline.change(|_| None);
        }
    }
}

/// A request's deadline (`None` when lifted), shared by the edge, which
/// waits on it, and the handler, which may move it.
#[derive(Debug)]
struct Deadline {
    /// A std lock: held to read or write the instant, never across an
    /// await.
    at: Mutex<Option<Instant>>,
    /// Wakes the edge when the deadline moved. It has one waiter at most,
    /// so a move made while it is not waiting is kept as a permit.
    moved: Notify,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        Self {
            at: Mutex::new(Some(at)),
            moved: Notify::new(),
        }
    }

    fn get(&self) -> Option<Instant> {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, change: impl FnOnce(Option<Instant>) -> Option<Instant>) {
        {
            let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
            *at = change(*at);
        }
        self.moved.notify_one();
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestDeadline {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(RequestNotes::of(&parts.extensions)
            .map(|notes| notes.deadline.clone())
            .unwrap_or_default())
    }
}

/// Runs `answer` on `request` under the edge's limits on one request:
///
/// - its body must arrive within the body timeout, or the request is
///   answered 408 `RequestTimeout` (and the connection closed), whatever
///   the handler made of the failed read;
/// - it must be answered within the per-request timeout, as
///   [`RequestDeadline`] may have moved it, or it is answered 503
///   `ServiceTimeout`.
///
/// An answer ready at its first poll, as most are, never arms a timer.
pub(crate) async fn within_limits<F, A>(
    state: &AppState,
    mut request: Request,
    answer: F,
) -> Response
where
    F: FnOnce(Request) -> A,
    A: Future<Output = Response>,
{
    let body_timeout = state.body_timeout();
    if request.body().is_end_stream() {
        // No body to wait for (a GET): nothing to time.
        return answer_in_time(state, request, answer).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let body_deadline = Instant::now() + body_timeout;
    request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: body_deadline,
            timer: None,
            expired: expired.clone(),
        })
    });
    let response = answer_in_time(state, request, answer).await;
    if expired.load(Ordering::Acquire) {
        tracing::info!(
            timeout_seconds = body_timeout.as_secs_f64(),
            "request body timed out: answered 408 RequestTimeout"
        );
        state
            .metrics()
            .connection_closed(ConnectionClose::BodyTimeout);
        return ApiError::body_timeout(body_timeout).into_response();
    }
    response
}

/// Answers 503 `ServiceTimeout` when `answer` has not answered within the
/// per-request timeout, as [`RequestDeadline`] may have moved it.
async fn answer_in_time<F, A>(state: &AppState, mut request: Request, answer: F) -> Response
where
    F: FnOnce(Request) -> A,
    A: Future<Output = Response>,
{
    let timeout = state.request_timeout();
    let deadline = Arc::new(Deadline::new(Instant::now() + timeout));
    RequestNotes::of_mut(request.extensions_mut()).deadline = RequestDeadline {
        at: Some(deadline.clone()),
    };
    let answer = answer(request);
    tokio::pin!(answer);
    if let Poll::Ready(response) =
        std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await
    {
        return response;
    }
    loop {
        // A move after this read wakes the wait below, as a permit if
        // need be.
        let at = deadline.get();
        tokio::select! {
            response = &mut answer => return response,
            () = sleep_until(at) => {
                tracing::warn!(
                    timeout_seconds = timeout.as_secs_f64(),
                    "request timed out: answered 503 ServiceTimeout"
                );
                return ApiError::service_timeout(timeout).into_response();
            }
            () = deadline.moved.notified() => {}
        }
    }
}

/// Completes at `deadline`, or never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Set on the first wait for data, so that a request without a body
    /// costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

/// The error a [`DeadlineBody`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // What has arrived is taken even at the deadline; only waiting for
        // more fails.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{sync::Arc, time::Duration};

    use axum::{
        Router,
        body::Body,
        http::{Request, StatusCode},
        middleware,
        routing::{get, post},
    };
    use domain::{
        Caller, CustomerId, Idempotency, IdempotencyConfig, ManualClock, MockAuthContext,
        MockIdempotencyStore, MockOrchestrator, MockPipelineRepository, PipelineService,
    };
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::Metrics;

    /// A state over mocks, with a request timeout of 10 s and a body
    /// timeout of 5 s.
    pub(crate) fn state() -> AppState {
        let mut auth = MockAuthContext::new();
        auth.expect_authenticate()
            .returning(|_| Ok(Caller::new(CustomerId::parse("acme").unwrap())));
        let service = PipelineService::new(
            Arc::new(MockPipelineRepository::new()),
            Arc::new(MockOrchestrator::new()),
        );
        let idempotency = Idempotency::new(
            Arc::new(MockIdempotencyStore::new()),
            IdempotencyConfig::default(),
            Arc::new(ManualClock::at_epoch_seconds(1_734_517_800)),
        );
        AppState::new(
            service,
            Arc::new(auth),
            "mock",
            Metrics::default(),
            idempotency,
        )
        .with_request_timeout(Duration::from_secs(10))
        .with_body_timeout(Duration::from_secs(5))
    }

    /// The edge's limits as a layer of their own.
    async fn limits(
        axum::extract::State(state): axum::extract::State<AppState>,
        request: Request<Body>,
        next: middleware::Next,
    ) -> axum::response::Response {
        within_limits(&state, request, |request| next.run(request)).await
    }

    /// Routes that take as long as asked, under the edge's limits.
    fn app(state: AppState) -> Router {
        async fn slow(deadline: RequestDeadline, request: Request<Body>) -> &'static str {
            let query = request.uri().query().unwrap_or_default();
            if let Some(extra) = query.strip_prefix("extend=") {
                deadline.extend(Duration::from_secs(extra.parse().unwrap()));
            }
            if query == "lift" {
                deadline.lift();
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            "done"
        }
        async fn read(body: String) -> String {
            body
        }
        Router::new()
            .route("/slow", get(slow))
            .route("/read", post(read))
            .layer(middleware::from_fn_with_state(state.clone(), limits))
            .with_state(state)
    }

    async fn answer(app: Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    fn get_slow(query: &str) -> Request<Body> {
        Request::get(format!("/slow?{query}"))
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_per_request_timeout_is_503_service_timeout() {
        let started = Instant::now();
        let (status, body) = answer(app(state()), get_slow("")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"detail": {"status": false, "exception_type": "ServiceTimeout",
                "traceback": "The request was not answered within 10 s. Retry later.", "data": null}})
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_extends_its_deadline_is_not_cut_at_the_per_request_timeout() {
        let started = Instant::now();
        let (status, body) = answer(app(state()), get_slow("extend=25")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // Extended by less than it takes: cut at the moved deadline.
        let started = Instant::now();
        let (status, _) = answer(app(state()), get_slow("extend=5")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_lifts_its_deadline_takes_as_long_as_it_needs() {
        let (status, body) = answer(app(state()), get_slow("lift")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// A body that sends its first bytes and then nothing more.
    struct Stalled {
        sent: bool,
    }

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.sent {
                Poll::Pending
            } else {
                self.sent = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"pipe")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_408_request_timeout_at_the_body_timeout() {
        let state = state();
        let metrics = state.metrics().clone();
        let started = Instant::now();
        let request = Request::post("/read")
            .body(Body::new(Stalled { sent: false }))
            .unwrap();
        let response = app(state).oneshot(request).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["connection"], "close");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({"detail": {"status": false, "exception_type": "RequestTimeout",
                "traceback": "The request body did not arrive within 5 s.", "data": null}})
        );
        assert!(
            metrics
                .render()
                .contains(r#"maestro_http_connections_closed_total{reason="body_timeout"} 1"#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_is_read_as_usual() {
        let request = Request::post("/read").body(Body::from("hello")).unwrap();
        let (status, body) = answer(app(state()), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello");
    }
}
