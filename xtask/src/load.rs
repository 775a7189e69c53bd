//! A closed-loop HTTP/1.1 load generator: a fixed number of keep-alive
//! connections, one worker each, every worker sending its next request as
//! soon as the previous answer has been read, with each request's latency
//! recorded in an HDR histogram.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use hyper::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};
use tokio::sync::Barrier;

use crate::http::{Connection, RequestTemplate, TransportError};

/// The largest latency the histogram holds, in microseconds (a minute);
/// anything slower is recorded as a minute.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// A header whose value differs on every request of a run, warm-up
/// included: `{run}-{worker}-{seq}`, e.g. a fresh `Idempotency-Key` per
/// request.
///
/// It sits beside the [`RequestTemplate`] rather than in it, so that a
/// plain run builds its requests exactly as before and pays nothing for it.
#[derive(Debug, Clone)]
pub(crate) struct UniqueHeader {
    /// The header's name.
    pub(crate) name: HeaderName,
    /// What sets this run's values apart from any other run's; visible
    /// ASCII without spaces, so that every value is a valid header value.
    pub(crate) run: String,
}

impl UniqueHeader {
    /// A header named `name` with a fresh random run part (a v4 UUID, so
    /// that the values look like the keys clients send).
    pub(crate) fn fresh(name: HeaderName) -> Self {
        Self {
            name,
            run: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The same header with values of its own, apart from this one's and
    /// from those of any other `part`: its run part is `{run}-{part}`.
    pub(crate) fn part(&self, part: impl std::fmt::Display) -> Self {
        Self {
            name: self.name.clone(),
            run: format!("{}-{part}", self.run),
        }
    }

    /// The value for request `seq` of worker `worker`.
    fn value(&self, worker: usize, seq: u64) -> HeaderValue {
        let value = format!("{}-{worker}-{seq}", self.run);
        // `run` is visible ASCII by contract and the rest is digits and
        // dashes; should a caller break that, the request goes without the
        // header and the answers show it.
        HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static(""))
    }
}

/// What to send, where, and how much.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    /// The server.
    pub(crate) addr: SocketAddr,
    /// Concurrent connections, one worker each; at least 1.
    pub(crate) connections: usize,
    /// Requests in the measured phase, spread evenly over the connections.
    pub(crate) requests: u64,
    /// Requests before the measured phase, on the same connections, not
    /// recorded: they warm up the server's allocator, caches and the
    /// connections themselves.
    pub(crate) warmup: u64,
    /// The request every worker sends.
    pub(crate) request: RequestTemplate,
}

/// The measured phase's outcome.
#[derive(Debug)]
pub(crate) struct LoadReport {
    /// From the first worker starting its measured phase to the last one
    /// finishing it.
    pub(crate) elapsed: Duration,
    /// Latency of every answered request, in microseconds, whatever its
    /// status.
    pub(crate) latency: Histogram<u64>,
    /// Answers with a 2xx status.
    pub(crate) successes: u64,
    /// Answers with any other status, by status.
    pub(crate) failures_by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer.
    pub(crate) transport_errors: u64,
    /// The first transport error, to say what went wrong.
    pub(crate) first_transport_error: Option<String>,
}

impl LoadReport {
    /// A report of no requests yet, whose answers' latencies go into
    /// `latency`.
    pub(crate) fn empty(latency: Histogram<u64>) -> Self {
        Self {
            elapsed: Duration::ZERO,
            latency,
            successes: 0,
            failures_by_status: BTreeMap::new(),
            transport_errors: 0,
            first_transport_error: None,
        }
    }

    /// Counts the outcome of a request sent at `sent`, and the latency of
    /// its answer if it got one.
    pub(crate) fn record(&mut self, sent: Instant, outcome: Result<StatusCode, TransportError>) {
        match outcome {
            Ok(status) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros);
                if status.is_success() {
                    self.successes += 1;
                } else {
                    *self.failures_by_status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(err) => {
                self.transport_errors += 1;
                self.first_transport_error
                    .get_or_insert_with(|| err.to_string());
            }
        }
    }

    /// Adds `other`'s requests to this report, as if both had been one
    /// measured phase.
    ///
    /// # Errors
    /// When the latency histograms cannot be added (they have different
    /// bounds).
    pub(crate) fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.elapsed += other.elapsed;
        self.latency
            .add(&other.latency)
            .map_err(|err| anyhow::anyhow!("cannot merge latency histograms: {err:?}"))?;
        self.successes += other.successes;
        for (status, count) in other.failures_by_status {
            *self.failures_by_status.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        Ok(())
    }

    /// Requests that got an answer, whatever its status.
    pub(crate) fn answered(&self) -> u64 {
        self.latency.len()
    }

    /// Answers with a status other than 2xx.
    pub(crate) fn non_2xx(&self) -> u64 {
        self.failures_by_status.values().sum()
    }

    /// Answered requests per second over the measured phase.
    pub(crate) fn requests_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.answered() as f64 / seconds
        } else {
            0.0
        }
    }
}

/// What one worker saw in its measured phase.
#[derive(Debug)]
struct WorkerReport {
    started: Instant,
    finished: Instant,
    /// Its requests, with its own measured phase as `elapsed`.
    report: LoadReport,
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .map_err(|err| anyhow::anyhow!("cannot create a latency histogram: {err:?}"))
}

/// This worker's share of `total` when `total` is spread over `workers`:
/// the remainder goes one each to the first workers.
fn share(total: u64, workers: usize, index: usize) -> u64 {
    let workers = workers as u64;
    let index = index as u64;
    total / workers + u64::from(index < total % workers)
}

/// Runs the warm-up and then the measured phase of `spec`, and reports the
/// measured phase.
///
/// # Errors
/// Only when the run itself breaks (a worker task panics); requests that
/// fail are counted in the report instead.
pub(crate) async fn run(spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    run_with(spec, None).await
}

/// [`run`], with `unique` added to every request with a value no other
/// request of the run has.
///
/// # Errors
/// As [`run`].
pub(crate) async fn run_with_unique_header(
    spec: &LoadSpec,
    unique: &UniqueHeader,
) -> anyhow::Result<LoadReport> {
    run_with(spec, Some(Arc::new(unique.clone()))).await
}

async fn run_with(
    spec: &LoadSpec,
    unique: Option<Arc<UniqueHeader>>,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(spec.connections > 0, "at least one connection is needed");
    let template = Arc::new(spec.request.clone());
    // Every worker finishes its warm-up before any starts measuring, so the
    // measured phase never overlaps warm-up traffic.
    let barrier = Arc::new(Barrier::new(spec.connections));
    let mut workers = Vec::with_capacity(spec.connections);
    for index in 0..spec.connections {
        let worker = Worker {
            addr: spec.addr,
            index,
            template: Arc::clone(&template),
            unique: unique.clone(),
            sent: 0,
            warmup: share(spec.warmup, spec.connections, index),
            requests: share(spec.requests, spec.connections, index),
            report: LoadReport::empty(new_histogram()?),
        };
        workers.push(tokio::spawn(worker.run(Arc::clone(&barrier))));
    }

    let mut report = LoadReport {
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
        successes: 0,
        failures_by_status: BTreeMap::new(),
        transport_errors: 0,
        first_transport_error: None,
    };
    let mut window: Option<(Instant, Instant)> = None;
    for worker in workers {
        let worker = worker.await.context("a load worker panicked")?;
        window = Some(match window {
            None => (worker.started, worker.finished),
            Some((started, finished)) => {
                (started.min(worker.started), finished.max(worker.finished))
            }
        });
        report.merge(worker.report)?;
    }
    // The workers' phases overlap: the run took from the first start to the
    // last finish, not the sum that merging added up.
    if let Some((started, finished)) = window {
        report.elapsed = finished.duration_since(started);
    }
    Ok(report)
}

/// One connection's worth of load.
#[derive(Debug)]
struct Worker {
    addr: SocketAddr,
    /// This worker's number, part of its unique header values.
    index: usize,
    template: Arc<RequestTemplate>,
    unique: Option<Arc<UniqueHeader>>,
    /// Requests sent so far, warm-up included: the next unique value's
    /// sequence number.
    sent: u64,
    warmup: u64,
    requests: u64,
    /// The measured phase's outcomes, empty until it starts.
    report: LoadReport,
}

impl Worker {
    /// The next request's unique header, if the run has one.
    fn next_unique(&mut self) -> Option<(HeaderName, HeaderValue)> {
        let unique = self.unique.as_ref()?;
        let value = unique.value(self.index, self.sent);
        self.sent += 1;
        Some((unique.name.clone(), value))
    }

    async fn run(mut self, barrier: Arc<Barrier>) -> WorkerReport {
        let mut connection = Connection::new(self.addr);
        for _ in 0..self.warmup {
            let unique = self.next_unique();
            // Warm-up answers are not judged; failures show in the
            // measured phase, which uses the same connection.
            let _ = connection.send(&self.template, unique).await;
        }
        barrier.wait().await;

        let started = Instant::now();
        for _ in 0..self.requests {
            // Made before the clock starts: the generator's own work is not
            // the server's latency.
            let unique = self.next_unique();
            let sent = Instant::now();
            let outcome = connection.send(&self.template, unique).await;
            self.report.record(sent, outcome);
        }
        let finished = Instant::now();
        self.report.elapsed = finished.duration_since(started);
        WorkerReport {
            started,
            finished,
            report: self.report,
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::HeaderMap;

    use super::*;

    fn report(latencies: &[u64], failures: &[(u16, u64)], error: Option<&str>) -> LoadReport {
        let mut latency = new_histogram().unwrap();
        for micros in latencies {
            latency.record(*micros).unwrap();
        }
        LoadReport {
            elapsed: Duration::from_millis(10),
            latency,
            successes: latencies.len() as u64,
            failures_by_status: failures.iter().copied().collect(),
            transport_errors: u64::from(error.is_some()),
            first_transport_error: error.map(str::to_owned),
        }
    }

    #[test]
    fn merged_reports_count_every_request_of_both_and_keep_the_first_error() {
        let mut first = report(&[100, 200], &[(502, 1)], None);
        first
            .merge(report(&[300], &[(502, 2), (500, 1)], Some("reset")))
            .unwrap();
        first.merge(report(&[400], &[], Some("refused"))).unwrap();

        assert_eq!(first.latency.len(), 4);
        assert_eq!(first.latency.max(), first.latency.highest_equivalent(400));
        assert_eq!(first.successes, 4);
        assert_eq!(
            first.failures_by_status,
            BTreeMap::from([(500, 1), (502, 3)])
        );
        assert_eq!(first.transport_errors, 2);
        assert_eq!(first.first_transport_error.as_deref(), Some("reset"));
        assert_eq!(first.elapsed, Duration::from_millis(30));
    }

    #[test]
    fn requests_are_shared_out_evenly_with_the_remainder_first() {
        let shares: Vec<u64> = (0..3).map(|index| share(10, 3, index)).collect();
        assert_eq!(shares, [4, 3, 3]);
        assert_eq!(
            (0..32).map(|index| share(200_000, 32, index)).sum::<u64>(),
            200_000
        );
        assert_eq!(
            (0..4).map(|index| share(2, 4, index)).collect::<Vec<_>>(),
            [1, 1, 0, 0]
        );
    }

    #[test]
    fn unique_values_join_the_run_the_worker_and_the_sequence_number() {
        let unique = UniqueHeader {
            name: HeaderName::from_static("idempotency-key"),
            run: "r1".to_owned(),
        };
        assert_eq!(unique.value(0, 0), "r1-0-0");
        assert_eq!(unique.value(12, 3_456), "r1-12-3456");
        // Worker 1's request 11 and worker 11's request 1 must not meet.
        assert_ne!(unique.value(1, 11), unique.value(11, 1));
        let fresh = UniqueHeader::fresh(HeaderName::from_static("idempotency-key"));
        assert_eq!(fresh.run.len(), 32);
        assert_ne!(
            fresh.run,
            UniqueHeader::fresh(fresh.name.clone()).run,
            "every run has its own values"
        );
    }

    /// A server that answers 200 to everything and keeps every value of
    /// `Idempotency-Key` it sees, in arrival order.
    async fn recording_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let recorder = Arc::clone(&recorder);
            async move {
                let key = headers
                    .get("idempotency-key")
                    .map_or("<none>", |value| value.to_str().unwrap_or("<not text>"))
                    .to_owned();
                recorder.lock().expect("not poisoned").push(key);
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, seen)
    }

    fn get_root(addr: SocketAddr) -> LoadSpec {
        LoadSpec {
            addr,
            connections: 4,
            requests: 203,
            warmup: 10,
            request: RequestTemplate::get("/"),
        }
    }

    #[tokio::test]
    async fn every_request_of_a_run_carries_its_own_unique_value_across_workers() {
        let (addr, seen) = recording_server().await;
        let unique = UniqueHeader::fresh(HeaderName::from_static("idempotency-key"));
        let report = run_with_unique_header(&get_root(addr), &unique)
            .await
            .expect("the run completes");
        assert_eq!(report.successes, 203, "{report:?}");
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 213, "warm-up and measured requests");
        let distinct: std::collections::HashSet<&String> = seen.iter().collect();
        assert_eq!(distinct.len(), seen.len(), "no value repeats: {seen:?}");
        let prefix = format!("{}-", unique.run);
        assert!(seen.iter().all(|key| key.starts_with(&prefix)), "{seen:?}");
        let workers: std::collections::HashSet<&str> = seen
            .iter()
            .filter_map(|key| key[prefix.len()..].split('-').next())
            .collect();
        assert_eq!(workers, ["0", "1", "2", "3"].into_iter().collect());
    }

    #[tokio::test]
    async fn a_plain_run_sends_no_unique_header() {
        let (addr, seen) = recording_server().await;
        let report = run(&get_root(addr)).await.expect("the run completes");
        assert_eq!(report.successes, 203, "{report:?}");
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 213);
        assert!(seen.iter().all(|key| key == "<none>"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_counts_as_transport_errors() {
        let addr = crate::process::free_local_addr().expect("a free port");
        let spec = LoadSpec {
            addr,
            connections: 2,
            requests: 6,
            warmup: 0,
            request: RequestTemplate::get("/"),
        };
        let report = run(&spec).await.expect("the run completes");
        assert_eq!(report.transport_errors, 6);
        assert_eq!(report.answered(), 0);
        assert_eq!(report.successes, 0);
        let first = report.first_transport_error.expect("an error is kept");
        assert!(first.starts_with("cannot connect"), "{first}");
    }
}
