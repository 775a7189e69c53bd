//! Maestro's HTTP API: the axum router, the authentication extractor over
//! the [`AuthContext`] port, error mapping, metrics, the OpenAPI document,
//! the request-level limits of the edge (body and per-request timeouts,
//! [`RequestDeadline`]) and the readiness checks ([`ReadinessCheck`]).
//!
//! [`router`] builds the whole API over an [`AppState`]; tests call it in
//! process, and the `maestro` binary serves it.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use domain::{AuthContext, Clock, Events, Idempotency, Listeners, PipelineService, Webhooks};
use tokio::sync::watch;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Object, RefOr, Type,
        header::Header,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_swagger_ui::{Config, SwaggerUi};

mod dto;
mod edge;
mod error;
mod events;
mod extract;
mod idempotency;
mod instrument;
mod kept_runs;
mod metrics;
mod notes;
mod observe;
mod pipeline_json;
pub mod ratelimit;
mod readiness;
pub mod request_log;
mod routes;
mod run_json;
mod webhooks;

pub use events::webhook_body;
pub mod limits;
mod trace;

pub use edge::{DEFAULT_BODY_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RequestDeadline};
pub use metrics::{ConnectionClose, Metrics, OpenConnection};
use readiness::Readiness;
pub use readiness::{CheckError, ReadinessCheck};
pub use request_log::RequestLog;
pub use trace::{trace_orchestrator, trace_repository};

/// What every handler shares: the use cases, the credential verifier, the
/// metrics, the readiness checks and the request-level limits. Cheap to
/// clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    service: PipelineService,
    auth: Arc<dyn AuthContext>,
    metrics: Metrics,
    backend: &'static str,
    /// `true` once the service drains; shared by every copy of the state,
    /// so that waiting requests end when it turns.
    draining: Arc<watch::Sender<bool>>,
    rate_limiter: Option<ratelimit::RateLimiter>,
    idempotency: Idempotency,
    /// Finished runs' texts, for list runs and get run.
    kept_runs: Arc<kept_runs::KeptRuns>,
    readiness: Arc<Readiness>,
    request_timeout: Duration,
    body_timeout: Duration,
    waits: Arc<limits::PerCustomer>,
    streams: Arc<limits::PerCustomer>,
    feed: Option<Feed>,
    webhooks: Option<Webhooks>,
    clock: Arc<dyn Clock>,
    /// Whether request spans are made for an OpenTelemetry exporter.
    span_export: bool,
    /// Whether each request is a span in the log, not a [`RequestLog`].
    request_spans: bool,
}

/// What the event stream reads: the feed as customers see it, and where a
/// stream says its customer listens.
#[derive(Clone)]
pub(crate) struct Feed {
    pub(crate) events: Events,
    pub(crate) listeners: Arc<dyn Listeners>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of an API serving `service`, verifying callers with `auth`.
    /// `backend` names the backend in metrics (`memory`, `airflow`, ...);
    /// `metrics` is where they are counted (wrap the ports with
    /// [`Metrics::instrument_repository`] and
    /// [`Metrics::instrument_orchestrator`] to count backend calls too);
    /// `idempotency` keeps the answers of executes sent with an
    /// `Idempotency-Key`.
    ///
    /// `/ready` checks the backend alone until
    /// [`AppState::with_readiness_checks`] adds more; the request limits are
    /// [`DEFAULT_BODY_TIMEOUT`] and [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(
        service: PipelineService,
        auth: Arc<dyn AuthContext>,
        backend: &'static str,
        metrics: Metrics,
        idempotency: Idempotency,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                readiness: Arc::new(Readiness::backend(service.clone())),
                service,
                auth,
                metrics,
                backend,
                draining: Arc::new(watch::channel(false).0),
                rate_limiter: None,
                idempotency,
                kept_runs: Arc::new(kept_runs::KeptRuns::new()),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                waits: limits::PerCustomer::new(limits::DEFAULT_WAITS_PER_CUSTOMER),
                streams: limits::PerCustomer::new(limits::DEFAULT_STREAMS_PER_CUSTOMER),
                feed: None,
                webhooks: None,
                clock: Arc::new(domain::SystemClock),
                span_export: false,
                request_spans: false,
            }),
        }
    }

    /// The same state with one setting changed.
    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let inner = &self.inner;
        let mut copy = Inner {
            service: inner.service.clone(),
            auth: inner.auth.clone(),
            metrics: inner.metrics.clone(),
            backend: inner.backend,
            draining: Arc::clone(&inner.draining),
            rate_limiter: inner.rate_limiter.clone(),
            idempotency: inner.idempotency.clone(),
            kept_runs: Arc::clone(&inner.kept_runs),
            readiness: inner.readiness.clone(),
            request_timeout: inner.request_timeout,
            body_timeout: inner.body_timeout,
            waits: Arc::clone(&inner.waits),
            streams: Arc::clone(&inner.streams),
            feed: inner.feed.clone(),
            webhooks: inner.webhooks.clone(),
            clock: Arc::clone(&inner.clock),
            span_export: inner.span_export,
            request_spans: inner.request_spans,
        };
        change(&mut copy);
        Self {
            inner: Arc::new(copy),
        }
    }

    /// The same state, with every customer's requests limited by `limiter`.
    #[must_use]
    pub fn with_rate_limiter(self, limiter: ratelimit::RateLimiter) -> Self {
        self.with(|inner| inner.rate_limiter = Some(limiter))
    }

    /// The same state, with `/ready` checking `checks` besides the backend,
    /// a round's result fresh for a second as `clock` tells.
    #[must_use]
    pub fn with_readiness_checks(
        self,
        checks: Vec<Arc<dyn ReadinessCheck>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        self.with(|inner| {
            inner.readiness = Arc::new(Readiness::new(inner.service.clone(), checks, clock));
        })
    }

    /// The same state, answering 503 `ServiceTimeout` to a request not
    /// answered within `timeout` (see [`RequestDeadline`] for the routes
    /// that may take longer).
    #[must_use]
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        self.with(|inner| inner.request_timeout = timeout)
    }

    /// The same state, answering 408 `RequestTimeout` to a request whose
    /// body has not arrived within `timeout` of its head.
    #[must_use]
    pub fn with_body_timeout(self, timeout: Duration) -> Self {
        self.with(|inner| inner.body_timeout = timeout)
    }

    /// The same state, letting each customer hold at most `limit`
    /// requests waiting on runs (`?wait_seconds=N`) at once; more are
    /// answered 429 `TooManyWaits`. Default
    /// [`limits::DEFAULT_WAITS_PER_CUSTOMER`].
    #[must_use]
    pub fn with_waits_per_customer(self, limit: usize) -> Self {
        self.with(|inner| inner.waits = limits::PerCustomer::new(limit))
    }

    /// The same state, serving `GET /platform/events` from `events`, each
    /// stream saying to `listeners` that its customer listens, at most
    /// `streams_per_customer` open per customer (more: 429
    /// `TooManyStreams`).
    #[must_use]
    pub fn with_events(
        self,
        events: Events,
        listeners: Arc<dyn Listeners>,
        streams_per_customer: usize,
    ) -> Self {
        self.with(|inner| {
            inner.feed = Some(Feed { events, listeners });
            inner.streams = limits::PerCustomer::new(streams_per_customer);
        })
    }

    /// The same state, serving `/platform/webhooks` from `webhooks`,
    /// registrations stamped by `clock`.
    #[must_use]
    pub fn with_webhooks(self, webhooks: Webhooks, clock: Arc<dyn Clock>) -> Self {
        self.with(|inner| {
            inner.webhooks = Some(webhooks);
            inner.clock = clock;
        })
    }

    /// The same state, making each request's span for an OpenTelemetry
    /// exporter: named and marked as OpenTelemetry reads it, the child of
    /// the caller's `traceparent`, and its ids the ones passed on to the
    /// backend. Use it when the tracing subscriber has an OpenTelemetry
    /// layer, and wrap the ports with [`trace_repository`] and
    /// [`trace_orchestrator`] so that each backend call is a span too.
    /// Without it (the default), a request's trace ids are drawn at random
    /// and nothing is exported.
    #[must_use]
    pub fn with_span_export(self) -> Self {
        self.with(|inner| inner.span_export = true)
    }

    /// The same state, making each request a `tracing` span named
    /// `request` with the fields of its [`RequestLog`], for a log format
    /// that reads the request's context from its span only (the library's
    /// own formats). Without it (the default), a request's
    /// context is its [`request_log::current`], which the caller's own
    /// format writes where the span would be; spans are always made when
    /// they are exported.
    #[must_use]
    pub fn with_request_spans(self) -> Self {
        self.with(|inner| inner.request_spans = true)
    }

    /// Marks the service as shutting down: `/ready` answers 503 from now on,
    /// so that load balancers stop sending requests while in-flight ones
    /// finish, and every request waiting on a run is answered at once with
    /// the run as it is.
    pub fn start_draining(&self) {
        self.inner.draining.send_replace(true);
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Resolves once the service starts draining.
    pub(crate) async fn drained(&self) {
        let mut draining = self.inner.draining.subscribe();
        // The sender lives as long as the state: the wait ends only when
        // draining starts.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    pub(crate) fn streams(&self) -> &Arc<limits::PerCustomer> {
        &self.inner.streams
    }

    pub(crate) fn feed(&self) -> Option<&Feed> {
        self.inner.feed.as_ref()
    }

    pub(crate) fn webhooks(&self) -> Option<&Webhooks> {
        self.inner.webhooks.as_ref()
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    pub(crate) fn waits(&self) -> &Arc<limits::PerCustomer> {
        &self.inner.waits
    }

    pub(crate) fn kept_runs(&self) -> &kept_runs::KeptRuns {
        &self.inner.kept_runs
    }

    pub(crate) fn service(&self) -> &PipelineService {
        &self.inner.service
    }

    pub(crate) fn auth(&self) -> &dyn AuthContext {
        self.inner.auth.as_ref()
    }

    pub(crate) fn idempotency(&self) -> &Idempotency {
        &self.inner.idempotency
    }

    pub(crate) fn rate_limiter(&self) -> Option<&ratelimit::RateLimiter> {
        self.inner.rate_limiter.as_ref()
    }

    /// Where the service's metrics are counted, for the server that
    /// accepts its connections to count them too.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.inner.backend
    }

    pub(crate) fn readiness(&self) -> &Arc<Readiness> {
        &self.inner.readiness
    }

    pub(crate) fn exports_spans(&self) -> bool {
        self.inner.span_export
    }

    pub(crate) fn request_spans(&self) -> bool {
        self.inner.request_spans
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub(crate) fn body_timeout(&self) -> Duration {
        self.inner.body_timeout
    }
}

/// The OpenAPI document of the API, generated from the handlers'
/// `#[utoipa::path]` annotations (see the top of `routes.rs` for how a
/// route lists its answers). `tests/openapi.rs` checks that it is whole:
/// every reference resolves, every path parameter has a pattern, every
/// route lists the answers it can give.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Maestro",
        description = "Trigger, pause and watch your pipelines. Every `/platform/...` route takes `Authorization: Bearer <JWT>`; the customer comes from the token, never from the request.\n\nEvery answer carries `X-Request-Id`: the request's own when it sends one of 1 to 128 visible ASCII characters, a fresh UUID otherwise. A request may carry a W3C `traceparent` (and `tracestate`): the request then continues that trace, and a missing or malformed one starts a new trace, never an error. A method a route does not have is 405 `{\"detail\": \"Method Not Allowed\"}` with `Allow`; a route that does not exist is 404 `{\"detail\": \"Not Found\"}`.",
    ),
    paths(
        routes::execute,
        routes::pause,
        routes::unpause,
        routes::get_pipeline,
        routes::list_pipelines,
        routes::list_runs,
        routes::get_run,
        routes::cancel_run,
        events::events,
        webhooks::register,
        webhooks::list,
        webhooks::delete,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi_json,
        routes::docs,
        routes::docs_page,
    ),
    // The bodies that only the shared answer sets of `routes` name: an
    // `IntoResponses` type does not register the schemas it refers to.
    components(schemas(error::ErrorBody, error::ErrorEnvelope, error::PlainDetail)),
    modifiers(&BearerAuth, &RequestIdHeader),
    tags(
        (name = "pipelines", description = "Trigger, pause and inspect pipelines"),
        (name = "runs", description = "Watch the runs of a pipeline"),
        (name = "events", description = "A live stream of the caller's run changes"),
        (name = "webhooks", description = "Endpoints told when the caller's runs change"),
        (name = "operations", description = "Health, readiness, metrics and this documentation; no authentication"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Adds `X-Request-Id` to every answer of every route: the layers of
/// `observe` set it on all of them, so no route lists it itself.
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = Header::builder()
            .schema(Object::with_type(Type::String))
            .description(Some(
                "The request's correlation id: the client's own `X-Request-Id` when it is 1 to 128 visible ASCII characters, a fresh UUID otherwise",
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response
                            .headers
                            .insert("X-Request-Id".to_owned(), header.clone());
                    }
                }
            }
        }
    }
}

/// The whole API: the contract's routes, the operational routes, `/docs`
/// and `/openapi.json`, with JSON answers for every rejection.
pub fn router(state: AppState) -> Router {
    let docs = SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        // The default validator badge calls a public host; the docs must
        // work with no internet access.
        .config(Config::from("/openapi.json").validator_url("none"));

    let routes = Router::new()
        .route("/platform/pipeline/execute", post(routes::execute))
        .route("/platform/pipeline/pause", post(routes::pause))
        .route("/platform/pipeline/unpause", post(routes::unpause))
        .route("/platform/pipelines", get(routes::list_pipelines))
        .route(
            "/platform/pipeline/{pipeline_id}",
            get(routes::get_pipeline),
        )
        .route(
            "/platform/pipeline/{pipeline_id}/pipeline_run",
            get(routes::list_runs),
        )
        .route(
            "/platform/pipeline/{pipeline_id}/pipeline_run/{run_id}",
            get(routes::get_run),
        )
        .route("/platform/events", get(events::events))
        .route(
            "/platform/webhooks",
            get(webhooks::list).post(webhooks::register),
        )
        .route(
            "/platform/webhooks/{webhook_id}",
            axum::routing::delete(webhooks::delete),
        )
        .route(
            "/platform/pipeline/{pipeline_id}/pipeline_run/{run_id}/cancel",
            post(routes::cancel_run),
        )
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .merge(docs)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    observe::wrap(routes, &state).with_state(state)
}
