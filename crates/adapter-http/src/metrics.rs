//! Prometheus metrics: requests by route template and status, latency,
//! runs triggered, refused credentials, backend calls and their retries,
//! rate-limit checks decided without the shared store, open connections
//! and those the edge's timeouts closed, open event streams, and webhook
//! deliveries by outcome with the age of the oldest waiting.

use std::{
    hash::Hash,
    sync::{Arc, PoisonError, RwLock, atomic::AtomicU64},
    time::Duration,
};

use hashbrown::Equivalent;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// The labels of a request's series, borrowed: hashed as
/// [`RequestLabels`] is, so that a series is found without copying its
/// route.
#[derive(Hash)]
struct RequestKey<'a> {
    route: &'a str,
    method: &'static str,
    status: u16,
}

impl Equivalent<RequestLabels> for RequestKey<'_> {
    fn equivalent(&self, labels: &RequestLabels) -> bool {
        self.route == labels.route && self.method == labels.method && self.status == labels.status
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    reason: &'static str,
}

/// Why the edge closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionClose {
    /// No whole request head arrived within the header-read timeout.
    HeaderTimeout,
    /// No request came within the idle timeout after the last answer.
    IdleTimeout,
    /// A request body did not arrive within the body timeout (answered 408).
    BodyTimeout,
}

impl ConnectionClose {
    /// The `reason` label.
    fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::BodyTimeout => "body_timeout",
        }
    }
}

/// The series of some families already made, found again by a fast hash
/// of their labels, borrowed. A [`Family`] hashes owned labels with SipHash
/// on every use, and an execute counts in five series: through these it
/// finds them with one look-up for each pair of families (and one for the
/// runs triggered), and copies no label.
#[derive(Debug)]
struct Series<K, V>(RwLock<hashbrown::HashMap<K, V>>);

impl<K, V> Default for Series<K, V> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<K: Hash + Eq, V> Series<K, V> {
    /// Hands `update` the series of `key`, made by `make` the first time.
    fn update<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V), update: impl FnOnce(&V))
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if let Some(series) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return update(series);
        }
        let mut made = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = made.get(key) {
            return update(series);
        }
        let (labels, series) = make();
        update(made.entry(labels).or_insert(series));
    }
}

/// The service's metrics, cheap to clone, rendered on `/metrics`.
///
/// Every label takes values from a closed set (route templates, not raw
/// paths; known methods), so the number of series stays bounded whatever
/// clients send.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    in_flight: Gauge,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    runs_triggered: Family<BackendLabels, Counter>,
    auth_rejected: Family<ReasonLabels, Counter>,
    rate_limited: Counter,
    backend_calls: Family<BackendCallLabels, Counter>,
    backend_latency: Family<OperationLabels, Histogram>,
    backend_retries: Family<BackendCallLabels, Counter>,
    rate_limit_fallbacks: Family<ReasonLabels, Counter>,
    connections_open: Gauge,
    connections_closed: Family<CloseLabels, Counter>,
    streams_open: Gauge,
    deliveries: Family<OutcomeLabels, Counter>,
    deliveries_pending: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    dispatch_gaps: Counter,
    log_drops: Arc<LogDrops>,
    /// `requests` and `latency` by the request's labels.
    request_series: Series<RequestLabels, (Counter, Histogram)>,
    /// `backend_calls` and `backend_latency` by operation and outcome.
    backend_series: Series<(&'static str, &'static str), (Counter, Histogram)>,
    /// `runs_triggered` by backend.
    triggered_series: Series<&'static str, Counter>,
}

/// How many log lines the log writer dropped, read at each scrape from
/// what [`Metrics::count_log_drops`] was given; 0 until then.
#[derive(Default)]
struct LogDrops(std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>);

impl std::fmt::Debug for LogDrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDrops")
            .field("counted", &self.0.get().is_some())
            .finish()
    }
}

impl prometheus_client::collector::Collector for LogDrops {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let dropped = prometheus_client::metrics::counter::ConstCounter::new(
            self.0.get().map_or(0, |read| read()),
        );
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer fell behind (its buffer was full)",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3.3 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("maestro");
        let log_drops = Arc::new(LogDrops::default());
        registry.register_collector(Box::new(Arc::clone(&log_drops)));
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests received and not yet answered",
            in_flight.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            latency.clone(),
        );
        let runs_triggered = Family::<BackendLabels, Counter>::default();
        registry.register(
            "runs_triggered",
            "Pipeline runs triggered, by backend",
            runs_triggered.clone(),
        );
        let auth_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_rejected",
            "Requests refused for their credential, by reason",
            auth_rejected.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by the per-customer rate limit",
            rate_limited.clone(),
        );
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        registry.register(
            "backend_calls",
            "Calls to the backend, by operation and outcome",
            backend_calls.clone(),
        );
        let backend_latency = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "backend_call_duration_seconds",
            "Time a backend call took, by operation",
            backend_latency.clone(),
        );
        let backend_retries = Family::<BackendCallLabels, Counter>::default();
        registry.register(
            "backend_retries",
            "Backend calls sent a second time after a failure that may pass, by operation and how the retry ended",
            backend_retries.clone(),
        );
        let rate_limit_fallbacks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rate_limit_fallbacks",
            "Rate-limit checks decided by this instance alone because the shared store (Redis) did not answer, by reason",
            rate_limit_fallbacks.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "TCP connections open, at most MAESTRO_MAX_CONNECTIONS",
            connections_open.clone(),
        );
        let connections_closed = Family::<CloseLabels, Counter>::default();
        registry.register(
            "http_connections_closed",
            "Connections the edge closed for a timeout, by reason",
            connections_closed.clone(),
        );
        let streams_open = Gauge::default();
        registry.register(
            "event_streams_open",
            "Event streams (GET /platform/events) open on this instance",
            streams_open.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts made by this instance, by outcome (delivered, failed, refused; given_up and dropped for deliveries let go)",
            deliveries.clone(),
        );
        let deliveries_pending = Gauge::default();
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries waiting, across every instance that shares the queue",
            deliveries_pending.clone(),
        );
        let oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "webhook_oldest_pending_age_seconds",
            "How long ago the oldest waiting webhook delivery was first due; 0 when none waits",
            oldest_pending.clone(),
        );
        let dispatch_gaps = Counter::default();
        registry.register(
            "webhook_dispatch_gaps",
            "Times the webhook dispatcher fell behind the event log's retention, so that events were never delivered",
            dispatch_gaps.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                streams_open,
                deliveries,
                deliveries_pending,
                oldest_pending,
                dispatch_gaps,
                log_drops,
                registry,
                in_flight,
                requests,
                latency,
                runs_triggered,
                auth_rejected,
                rate_limited,
                backend_calls,
                backend_latency,
                backend_retries,
                rate_limit_fallbacks,
                connections_open,
                connections_closed,
                request_series: Series::default(),
                backend_series: Series::default(),
                triggered_series: Series::default(),
            }),
        }
    }
}

impl Metrics {
    /// Counts a request in flight until the guard is dropped, so that a
    /// request abandoned halfway is not counted for ever.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.inner.in_flight.inc();
        InFlight(self.inner.in_flight.clone())
    }

    /// Counts one answered request and its latency.
    pub(crate) fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        latency: Duration,
    ) {
        let inner = &self.inner;
        let key = RequestKey {
            route,
            method: known_method(method),
            status,
        };
        inner.request_series.update(
            &key,
            || {
                let labels = RequestLabels {
                    route: route.to_owned(),
                    method: key.method,
                    status,
                };
                let latency = inner.latency.get_or_create_owned(&RouteLabels {
                    route: route.to_owned(),
                });
                let requests = inner.requests.get_or_create_owned(&labels);
                (labels, (requests, latency))
            },
            |(requests, histogram)| {
                requests.inc();
                histogram.observe(latency.as_secs_f64());
            },
        );
    }

    /// Counts one run triggered on `backend`.
    pub(crate) fn run_triggered(&self, backend: &'static str) {
        let inner = &self.inner;
        inner.triggered_series.update(
            &backend,
            || {
                let runs = inner
                    .runs_triggered
                    .get_or_create_owned(&BackendLabels { backend });
                (backend, runs)
            },
            |runs| {
                runs.inc();
            },
        );
    }

    /// Counts one request refused for its credential.
    pub(crate) fn auth_rejected(&self, reason: &'static str) {
        self.inner
            .auth_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one request refused by the rate limit.
    pub(crate) fn rate_limited(&self) {
        self.inner.rate_limited.inc();
    }

    /// Counts one backend call and its duration.
    pub(crate) fn observe_backend_call(
        &self,
        operation: &'static str,
        outcome: &'static str,
        latency: Duration,
    ) {
        let inner = &self.inner;
        inner.backend_series.update(
            &(operation, outcome),
            || {
                let calls = inner
                    .backend_calls
                    .get_or_create_owned(&BackendCallLabels { operation, outcome });
                let latency = inner
                    .backend_latency
                    .get_or_create_owned(&OperationLabels { operation });
                ((operation, outcome), (calls, latency))
            },
            |(calls, histogram)| {
                calls.inc();
                histogram.observe(latency.as_secs_f64());
            },
        );
    }

    /// Counts one backend call sent a second time, by how the retry ended
    /// (`ok`, `conflict`, `failed`, `other`): for the backends that retry
    /// by themselves, which `app` connects to this.
    pub fn backend_retried(&self, operation: &'static str, outcome: &'static str) {
        self.inner
            .backend_retries
            .get_or_create(&BackendCallLabels { operation, outcome })
            .inc();
    }

    /// Counts one rate-limit check decided by this instance alone, and why
    /// the shared store was not asked or did not answer.
    pub(crate) fn rate_limit_fallback(&self, reason: &'static str) {
        self.inner
            .rate_limit_fallbacks
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a connection open until the guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.inner.connections_open.inc();
        OpenConnection(self.inner.connections_open.clone())
    }

    /// Counts one connection closed by the edge, for `reason`.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        self.inner
            .connections_closed
            .get_or_create(&CloseLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Counts an event stream open until the guard is dropped.
    pub(crate) fn stream_opened(&self) -> OpenStream {
        self.inner.streams_open.inc();
        OpenStream(self.inner.streams_open.clone())
    }

    /// Counts one webhook delivery attempt (or a delivery let go) that
    /// ended with `outcome`, one of a closed set of labels.
    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.inner
            .deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Sets the webhook deliveries waiting and the age of the oldest.
    pub fn webhook_pending(&self, count: usize, oldest_age: Option<Duration>) {
        self.inner
            .deliveries_pending
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.inner
            .oldest_pending
            .set(oldest_age.map_or(0.0, |age| age.as_secs_f64()));
    }

    /// Reports the log lines dropped by the log writer, as `read` counts
    /// them (read at each scrape). Only the first call counts.
    pub fn count_log_drops(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.inner.log_drops.0.set(Box::new(read));
    }

    /// Counts one fall of the webhook dispatcher behind the event log.
    pub fn webhook_dispatch_gap(&self) {
        self.inner.dispatch_gaps.inc();
    }

    /// The metrics in the OpenMetrics text format, which Prometheus scrapes.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

fn known_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// A request counted in flight; dropping it stops counting it.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An event stream counted open; dropping it stops counting it.
#[derive(Debug)]
pub(crate) struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection counted open; dropping it stops counting it.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn dropped_log_lines_are_read_at_each_scrape() {
        let metrics = Metrics::default();
        assert!(
            metrics
                .render()
                .contains("\nmaestro_log_lines_dropped_total 0\n")
        );
        let dropped = Arc::new(AtomicU64::new(3));
        let read = Arc::clone(&dropped);
        metrics.count_log_drops(move || read.load(Ordering::Relaxed));
        assert!(
            metrics
                .render()
                .contains("\nmaestro_log_lines_dropped_total 3\n")
        );
        dropped.store(5, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("\nmaestro_log_lines_dropped_total 5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE maestro_log_lines_dropped counter\n"));
    }

    #[test]
    fn a_requests_borrowed_labels_hash_as_its_labels_do() {
        use std::hash::BuildHasher as _;

        let hasher = hashbrown::DefaultHashBuilder::default();
        let key = RequestKey {
            route: "/a/{id}",
            method: "GET",
            status: 200,
        };
        let labels = RequestLabels {
            route: "/a/{id}".to_owned(),
            method: "GET",
            status: 200,
        };
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(&labels));
        assert!(key.equivalent(&labels));
    }

    #[test]
    fn each_series_counts_its_own_requests_and_a_route_times_them_all() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis(1);
        for (route, method, status) in [
            ("/a/{id}", "GET", 200),
            ("/a/{id}", "GET", 200),
            ("/a/{id}", "GET", 404),
            ("/a/{id}", "BREW", 200),
            ("/b", "GET", 200),
        ] {
            metrics.observe_request(route, method, status, ms);
        }
        metrics.observe_backend_call("execute", "ok", ms);
        metrics.observe_backend_call("execute", "ok", ms);
        metrics.observe_backend_call("execute", "timeout", ms * 4000);
        let text = metrics.render();
        for line in [
            r#"maestro_http_requests_total{route="/a/{id}",method="GET",status="200"} 2"#,
            r#"maestro_http_requests_total{route="/a/{id}",method="GET",status="404"} 1"#,
            r#"maestro_http_requests_total{route="/a/{id}",method="other",status="200"} 1"#,
            r#"maestro_http_requests_total{route="/b",method="GET",status="200"} 1"#,
            r#"maestro_http_request_duration_seconds_count{route="/a/{id}"} 4"#,
            r#"maestro_http_request_duration_seconds_count{route="/b"} 1"#,
            r#"maestro_backend_calls_total{operation="execute",outcome="ok"} 2"#,
            r#"maestro_backend_calls_total{operation="execute",outcome="timeout"} 1"#,
            r#"maestro_backend_call_duration_seconds_count{operation="execute"} 3"#,
            r#"maestro_backend_call_duration_seconds_bucket{le="3.2768",operation="execute"} 2"#,
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} in {text}");
        }
    }
}
