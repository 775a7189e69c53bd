//! An open-loop HTTP/1.1 load generator: requests on a constant-rate
//! schedule, whatever the server's answers, each timed from the instant it
//! was due to be sent, so that a slow answer delays the requests behind it
//! in the measured latency as it would a real client's (no coordinated
//! omission).
//!
//! A clock thread releases the requests as they fall due, in schedule
//! order, each to a free connection of a pool of keep-alive connections.
//! When every connection is busy the released requests wait in a queue,
//! which each connection empties, oldest first, before it says it is free
//! again; that wait is part of their latency.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::oneshot;

use super::report::{Cell, Row};
use crate::http::{Connection, RequestTemplate};

/// The largest latency the histogram holds, in microseconds (a minute).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The clock thread never sleeps for less than this: a shorter sleep costs
/// as much as a wake-up and gains nothing, as Linux wakes a sleeping thread
/// some 50 µs late anyway. Requests that fall due meanwhile are released
/// together when it wakes, and their lateness counts in their latency.
const MIN_SLEEP: Duration = Duration::from_micros(20);

/// How long after the last request was released the connections still
/// take the requests left waiting: a server far slower than the rate would
/// otherwise keep the bench for minutes. What is left then goes unsent,
/// and counts as unanswered.
const DRAIN: Duration = Duration::from_secs(5);

/// What to send, where, at what rate.
#[derive(Debug, Clone)]
pub(super) struct OpenLoopSpec {
    /// The server.
    pub(super) addr: SocketAddr,
    /// The keep-alive connections that take the requests; at least 1.
    pub(super) connections: usize,
    /// Requests per second, spread evenly over time.
    pub(super) rate: f64,
    /// How long the schedule runs before the measured phase: its requests
    /// are sent at the same rate but not recorded.
    pub(super) warmup: Duration,
    /// How long the measured phase of the schedule runs.
    pub(super) duration: Duration,
    /// The request every connection sends.
    pub(super) request: RequestTemplate,
}

impl OpenLoopSpec {
    /// The time between two requests of the schedule.
    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// Requests of the warm-up, then of the measured phase.
    fn counts(&self) -> (u64, u64) {
        let count = |duration: Duration| (duration.as_secs_f64() * self.rate).round() as u64;
        (count(self.warmup), count(self.duration))
    }
}

/// The measured phase's outcome.
#[derive(Debug)]
pub(super) struct OpenLoopReport {
    /// The schedule's rate, in requests per second.
    pub(super) rate: f64,
    /// Requests the measured phase scheduled.
    pub(super) scheduled: u64,
    /// Latency of every answered request from the instant it was due, in
    /// microseconds, whatever its status.
    pub(super) latency: Histogram<u64>,
    /// Answers with a status other than 2xx, by status.
    pub(super) failures_by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer.
    pub(super) transport_errors: u64,
    /// The first transport error, to say what went wrong.
    pub(super) first_transport_error: Option<String>,
    /// The latest any request of the measured phase was taken by a
    /// connection after it was due: how far the pool fell behind.
    pub(super) max_queue_wait: Duration,
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .map_err(|err| anyhow::anyhow!("cannot create a latency histogram: {err:?}"))
}

/// One request of the schedule: its number and the instant it was due.
#[derive(Debug, Clone, Copy)]
struct Due {
    seq: u64,
    at: Instant,
}

/// What one connection saw.
#[derive(Debug)]
struct ConnectionReport {
    latency: Histogram<u64>,
    failures_by_status: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_transport_error: Option<String>,
    max_queue_wait: Duration,
}

/// Runs the schedule of `spec`, warm-up then measured phase, and reports
/// the measured phase.
///
/// # Errors
/// When the spec makes no schedule, or the run itself breaks (a task
/// panics); requests that fail are counted in the report instead.
pub(super) async fn run(spec: &OpenLoopSpec) -> anyhow::Result<OpenLoopReport> {
    anyhow::ensure!(spec.connections > 0, "at least one connection is needed");
    anyhow::ensure!(
        spec.rate.is_finite() && spec.rate > 0.0,
        "the rate must be positive, not {}",
        spec.rate
    );
    let (warmup, measured) = spec.counts();
    let total = warmup + measured;
    let interval = spec.interval();

    let queue = Arc::new(Queue::default());
    let mut pool = Vec::with_capacity(spec.connections);
    let template = Arc::new(spec.request.clone());
    for _ in 0..spec.connections {
        pool.push(tokio::spawn(serve_queue(
            spec.addr,
            Arc::clone(&template),
            Arc::clone(&queue),
            warmup,
            new_histogram()?,
        )));
    }

    // The clock runs on a thread of its own: the runtime's timer only
    // wakes to the millisecond, which would add up to a millisecond to
    // every request's measured latency.
    let stop = Arc::new(AtomicBool::new(false));
    let clock = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("open-loop clock".to_owned())
            .spawn({
                let queue = Arc::clone(&queue);
                move || release_on_schedule(&queue, total, interval, &stop)
            })
            .context("cannot start the open-loop clock")?
    };
    // Stops the clock should this task be dropped or a connection panic.
    let _stop_clock = StopOnDrop(Arc::clone(&stop));

    let mut report = OpenLoopReport {
        rate: spec.rate,
        scheduled: measured,
        latency: new_histogram()?,
        failures_by_status: BTreeMap::new(),
        transport_errors: 0,
        first_transport_error: None,
        max_queue_wait: Duration::ZERO,
    };
    for connection in pool {
        let connection = connection
            .await
            .context("an open-loop connection panicked")?;
        report
            .latency
            .add(&connection.latency)
            .map_err(|err| anyhow::anyhow!("cannot merge latency histograms: {err:?}"))?;
        for (status, count) in connection.failures_by_status {
            *report.failures_by_status.entry(status).or_default() += count;
        }
        report.transport_errors += connection.transport_errors;
        if report.first_transport_error.is_none() {
            report.first_transport_error = connection.first_transport_error;
        }
        report.max_queue_wait = report.max_queue_wait.max(connection.max_queue_wait);
    }
    // Every connection has seen the queue close: the clock has finished.
    let _ = clock.join();
    Ok(report)
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Where released requests meet free connections.
///
/// Each release wakes at most one connection, and none while every
/// connection is busy: a connection that finishes takes the oldest waiting
/// request itself.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Released requests no connection has taken yet, oldest first; only
    /// ever non-empty while no connection is free.
    waiting: VecDeque<Due>,
    /// Free connections, each waiting for its next request; only ever
    /// non-empty while no request waits.
    free: VecDeque<oneshot::Sender<Due>>,
    /// Until when the waiting requests are still taken, once the last
    /// one was released.
    drain_until: Option<Instant>,
}

/// What a free connection gets from the queue.
enum Next {
    /// A request that was waiting.
    Now(Due),
    /// The next request, once released; an error once the schedule ends.
    Later(oneshot::Receiver<Due>),
    /// The schedule has ended.
    Closed,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `due` to a free connection, or queues it.
    fn release(&self, mut due: Due) {
        let mut state = self.state();
        while let Some(connection) = state.free.pop_front() {
            match connection.send(due) {
                Ok(()) => return,
                // That connection is gone: the next one.
                Err(back) => due = back,
            }
        }
        state.waiting.push_back(due);
    }

    /// The oldest waiting request, or a place in line for the next one.
    fn next(&self) -> Next {
        let mut state = self.state();
        if let Some(drain_until) = state.drain_until
            && Instant::now() > drain_until
        {
            state.waiting.clear();
        }
        if let Some(due) = state.waiting.pop_front() {
            return Next::Now(due);
        }
        if state.drain_until.is_some() {
            return Next::Closed;
        }
        let (sender, receiver) = oneshot::channel();
        state.free.push_back(sender);
        Next::Later(receiver)
    }

    /// Ends the schedule: the free connections are told, and the busy ones
    /// stop once the waiting requests are taken, or [`DRAIN`] has passed.
    fn close(&self) {
        let mut state = self.state();
        state.drain_until = Some(Instant::now() + DRAIN);
        state.free.clear();
    }
}

/// Releases requests `0..total` to `queue`, request `n` at `start + n *
/// interval`, and closes it after the last one.
fn release_on_schedule(queue: &Queue, total: u64, interval: Duration, stop: &AtomicBool) {
    let start = Instant::now();
    let due_at = |seq: u64| start + interval.mul_f64(seq as f64);
    let mut next = 0;
    while next < total && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while next < total && due_at(next) <= now {
            queue.release(Due {
                seq: next,
                at: due_at(next),
            });
            next += 1;
        }
        if next < total {
            let wait = due_at(next).saturating_duration_since(Instant::now());
            std::thread::sleep(wait.max(MIN_SLEEP));
        }
    }
    queue.close();
}

/// One connection of the pool: takes the next due request whenever it is
/// free, until the queue closes, and records the requests after the first
/// `warmup`.
async fn serve_queue(
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    queue: Arc<Queue>,
    warmup: u64,
    mut latency: Histogram<u64>,
) -> ConnectionReport {
    let mut connection = Connection::new(addr);
    let mut failures_by_status = BTreeMap::new();
    let mut transport_errors = 0;
    let mut first_transport_error = None;
    let mut max_queue_wait = Duration::ZERO;
    loop {
        let next = queue.next();
        let due = match next {
            Next::Now(due) => due,
            Next::Later(receiver) => match receiver.await {
                Ok(due) => due,
                Err(_) => break,
            },
            Next::Closed => break,
        };
        let measured = due.seq >= warmup;
        if measured {
            max_queue_wait = max_queue_wait.max(due.at.elapsed());
        }
        let outcome = connection.send(&template, None).await;
        if !measured {
            // Warm-up answers are not judged; failures show in the
            // measured phase, which uses the same connections.
            continue;
        }
        match outcome {
            Ok(status) => {
                let micros = u64::try_from(due.at.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros);
                if !status.is_success() {
                    *failures_by_status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(err) => {
                transport_errors += 1;
                first_transport_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    ConnectionReport {
        latency,
        failures_by_status,
        transport_errors,
        first_transport_error,
        max_queue_wait,
    }
}

/// The figures of one open-loop run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OpenLoopSummary {
    /// The schedule's rate, in requests per second.
    pub(super) rate: f64,
    /// Requests the measured phase scheduled.
    pub(super) scheduled: u64,
    /// Requests that got an answer.
    pub(super) answered: u64,
    /// Median latency from the instant due.
    pub(super) p50: Duration,
    /// 99th percentile.
    pub(super) p99: Duration,
    /// 99.9th percentile.
    pub(super) p999: Duration,
    /// Slowest answer.
    pub(super) max: Duration,
    /// Answers other than 2xx, and requests that got no answer.
    pub(super) failed: u64,
}

impl OpenLoopSummary {
    /// Summarizes `report`.
    pub(super) fn new(report: &OpenLoopReport) -> Self {
        let micros = |value: u64| Duration::from_micros(value);
        let latency = &report.latency;
        Self {
            rate: report.rate,
            scheduled: report.scheduled,
            answered: latency.len(),
            p50: micros(latency.value_at_quantile(0.50)),
            p99: micros(latency.value_at_quantile(0.99)),
            p999: micros(latency.value_at_quantile(0.999)),
            max: micros(latency.max()),
            failed: report.failures_by_status.values().sum::<u64>() + report.transport_errors,
        }
    }

    /// Whether every scheduled request got a 2xx answer.
    pub(super) fn all_2xx(&self) -> bool {
        self.answered == self.scheduled && self.failed == 0
    }

    /// The rows of the open-loop run, a cell per summary in `runs` and one
    /// more with the first's ratio to the second's.
    pub(super) fn rows(runs: &[&Self]) -> Vec<Row> {
        let rate = runs.first().map_or(0.0, |first| first.rate);
        let latency = |label: &str, of: fn(&Self) -> Duration| {
            let mut cells: Vec<Cell> = runs.iter().map(|run| Cell::latency(of(run))).collect();
            if let [first, second, ..] = cells.as_slice() {
                let ratio = first.ratio_to(second);
                cells.push(ratio);
            }
            Row::new(
                format!("open-loop {label} at {} req/s", rate_text(rate)),
                cells,
            )
        };
        let mut failed: Vec<Cell> = runs
            .iter()
            .map(|run| {
                Cell::pair(
                    Cell::Count(run.failed),
                    Cell::Count(run.scheduled.saturating_sub(run.answered)),
                )
            })
            .collect();
        if runs.len() > 1 {
            failed.push(Cell::Empty);
        }
        vec![
            latency("p50", |run| run.p50),
            latency("p99", |run| run.p99),
            latency("p99.9", |run| run.p999),
            latency("max", |run| run.max),
            Row::new("open-loop failed / unanswered", failed),
        ]
    }
}

/// A rate as `38,000`, rounded to the request.
fn rate_text(rate: f64) -> String {
    super::report::thousands(rate.round() as u64)
}

/// `share` of `throughput`: the open-loop rate.
pub(super) fn rate_at(share: f64, throughput: f64) -> Option<f64> {
    let rate = throughput * share;
    (rate >= 1.0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A server that answers 200 to everything and counts what it answered.
    async fn counting_server() -> (SocketAddr, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&count);
        let app = axum::Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, count)
    }

    #[test]
    fn the_schedule_has_rate_times_duration_requests_per_phase() {
        let spec = OpenLoopSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            connections: 1,
            rate: 2_000.0,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(3),
            request: RequestTemplate::get("/"),
        };
        assert_eq!(spec.counts(), (1_000, 6_000));
        assert_eq!(spec.interval(), Duration::from_micros(500));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scheduled_request_is_sent_once_and_only_the_measured_are_recorded() {
        let (addr, count) = counting_server().await;
        let spec = OpenLoopSpec {
            addr,
            connections: 4,
            rate: 10_000.0,
            warmup: Duration::from_millis(10),
            duration: Duration::from_millis(40),
            request: RequestTemplate::get("/"),
        };
        let report = run(&spec).await.expect("run");
        assert_eq!(count.load(Ordering::Relaxed), 500);
        assert_eq!(report.scheduled, 400);
        assert_eq!(report.latency.len(), 400);
        let summary = OpenLoopSummary::new(&report);
        assert!(summary.all_2xx(), "{summary:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_cannot_be_reached_counts_every_request_as_unanswered() {
        // Bound, then dropped: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port");
        let spec = OpenLoopSpec {
            addr,
            connections: 2,
            rate: 1_000.0,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(20),
            request: RequestTemplate::get("/"),
        };
        let report = run(&spec).await.expect("run");
        assert_eq!(report.transport_errors, 20);
        let summary = OpenLoopSummary::new(&report);
        assert!(!summary.all_2xx());
        assert_eq!(summary.failed, 20);
    }

    #[test]
    fn the_rows_show_each_quantile_with_the_ratio_and_the_rate() {
        let summary = |p99_micros: u64| OpenLoopSummary {
            rate: 38_000.4,
            scheduled: 380_004,
            answered: 380_004,
            p50: Duration::from_micros(200),
            p99: Duration::from_micros(p99_micros),
            p999: Duration::from_micros(p99_micros * 2),
            max: Duration::from_micros(p99_micros * 10),
            failed: 0,
        };
        let rows = OpenLoopSummary::rows(&[&summary(1_000), &summary(500)]);
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "open-loop p50 at 38,000 req/s",
                "open-loop p99 at 38,000 req/s",
                "open-loop p99.9 at 38,000 req/s",
                "open-loop max at 38,000 req/s",
                "open-loop failed / unanswered",
            ]
        );
        assert_eq!(
            rows[1].cells,
            [Cell::Millis(1.0), Cell::Millis(0.5), Cell::Ratio(Some(2.0))]
        );
        assert_eq!(rows[4].cells.len(), 3);
    }

    #[test]
    fn the_rate_is_the_share_of_the_throughput() {
        assert_eq!(rate_at(0.7, 50_000.0), Some(35_000.0));
        assert_eq!(rate_at(0.7, 0.0), None);
    }
}
