//! `cargo xtask bench --scale`: the memory backend holding 100,000
//! pipelines of 10,000 customers, each request a different customer's
//! token and pipeline, measured beside the same binary holding one
//! pipeline, in the same run.
//!
//! Rows: execute throughput at scale against one pipeline (the two servers
//! loaded in alternating turns, so that a busy moment weighs on both
//! alike), RSS and start-up time (process start to `GET /ready` answering
//! 200) of both, list pipelines for the customer with 1,000 pipelines, and
//! list runs of a pipeline with a full history against an empty one.
//!
//! The rotation has a loop of its own rather than a hook in the plain load
//! generator (`load.rs`): a request template per pipeline, built before the
//! run, so that rotating costs a worker an index and nothing else, and the
//! plain path stays as it is.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tempfile::NamedTempFile;
use tokio::sync::Barrier;
use uuid::Uuid;

use super::{
    Args, baseline, maestro_command, random_secret,
    report::{Cell, Check, Report, Row, Summary, mebibytes, millis, ratio, thousands, times},
    report_first_problem,
};
use crate::{
    http::{self, Connection, RequestTemplate},
    load::LoadReport,
    process::{ChildGuard, free_local_addr, resident_set_size},
    token::unix_now,
};

/// Pipelines the scale server holds.
const PIPELINES: usize = 100_000;
/// Customers they belong to.
const CUSTOMERS: usize = 10_000;
/// Pipelines of the one big customer, whose list is measured.
const BIG_CUSTOMER_PIPELINES: usize = 1_000;
/// The finished runs the memory backend keeps per pipeline by default
/// (`MAESTRO_MEMORY_HISTORY_LIMIT`): a full history.
const HISTORY_LIMIT: u64 = 10_000;
/// Alternating turns of the throughput comparison, per server.
const TURNS: u64 = 4;
/// Connections of the list-pipelines row: one, so that its p99 is the
/// service's own time for a list of 1,000, not a queue's.
const LIST_PIPELINES_CONNECTIONS: usize = 1;
/// Measured requests of the list-pipelines row.
const LIST_PIPELINES_REQUESTS: u64 = 5_000;
/// Measured requests per list-runs row, over the executes' connections.
const LIST_RUNS_REQUESTS: u64 = 40_000;
/// Requests before each list row.
const LIST_WARMUP: u64 = 500;
/// The runs of the one-page history: the default `limit` of list runs.
const ONE_PAGE: u64 = 100;
/// Throughput at scale must be at least this share of one pipeline's.
const MIN_THROUGHPUT_RATIO: f64 = 0.9;
/// RSS with the pipelines loaded must stay under this.
const MAX_RSS_BYTES: u64 = 128 * 1024 * 1024;
/// Start-up with the pipelines loaded must take less than this.
const MAX_STARTUP: Duration = Duration::from_secs(1);
/// The list of 1,000 pipelines must answer within this at p99.
const MAX_LIST_PIPELINES_P99: Duration = Duration::from_millis(2);
/// List runs with a full history must stay within this share of an empty
/// one's, at p99 (both under the executes' concurrency).
const MAX_FULL_HISTORY_RATIO: f64 = 1.2;
/// How long a server may take to answer `GET /ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is polled while a server starts: fine enough that
/// the start-up time is exact to a few milliseconds.
const READY_POLL: Duration = Duration::from_millis(2);
/// The first customer: the one with [`BIG_CUSTOMER_PIPELINES`] pipelines.
const BIG_CUSTOMER: usize = 0;

/// One pipeline of the data set, and whose it is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: Uuid,
    customer: usize,
}

/// The data set: pipelines sorted by customer, the big customer first.
#[derive(Debug)]
struct DataSet {
    pipelines: Vec<Entry>,
    customers: usize,
}

impl DataSet {
    /// `pipelines` pipelines of `customers` customers: the first customer
    /// has `big` of them, the others share the rest evenly.
    fn new(pipelines: usize, customers: usize, big: usize) -> Self {
        let others = customers.saturating_sub(1).max(1);
        let rest = pipelines.saturating_sub(big);
        let mut entries = Vec::with_capacity(pipelines);
        entries.extend((0..big.min(pipelines)).map(|_| Entry {
            id: Uuid::new_v4(),
            customer: BIG_CUSTOMER,
        }));
        for customer in 0..others {
            let count = rest / others + usize::from(customer < rest % others);
            entries.extend((0..count).map(|_| Entry {
                id: Uuid::new_v4(),
                customer: customer + 1,
            }));
        }
        Self {
            pipelines: entries,
            customers,
        }
    }

    /// The pipelines in the order requests rotate through them: a stride
    /// coprime with their number, larger than any customer's run of
    /// pipelines but the big one's, so that consecutive requests are
    /// different customers' and every pipeline comes round once a cycle.
    fn rotation(&self) -> Vec<Entry> {
        let len = self.pipelines.len();
        let stride = coprime_stride(len);
        (0..len)
            .map(|index| self.pipelines[(index * stride) % len])
            .collect()
    }
}

/// A stride near 8,000 that is coprime with `len` (1 for tiny sets).
fn coprime_stride(len: usize) -> usize {
    if len < 3 {
        return 1;
    }
    let mut stride = 7_919.min(len - 1);
    while gcd(stride, len) != 1 {
        stride += 1;
    }
    stride
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The customer id of customer number `index`.
fn customer_id(index: usize) -> String {
    format!("scale-{index:05}")
}

/// A pipeline as the fixture writes it.
#[derive(Serialize)]
struct FixturePipeline<'a> {
    id: String,
    customer_id: &'a str,
    name: String,
}

/// The fixture file of `set`.
fn write_fixture(set: &DataSet) -> anyhow::Result<NamedTempFile> {
    #[derive(Serialize)]
    struct Fixture<'a> {
        pipelines: Vec<FixturePipeline<'a>>,
    }
    let customers: Vec<String> = (0..set.customers).map(customer_id).collect();
    let fixture = Fixture {
        pipelines: set
            .pipelines
            .iter()
            .enumerate()
            .map(|(index, entry)| FixturePipeline {
                id: entry.id.hyphenated().to_string(),
                customer_id: &customers[entry.customer],
                name: format!("pipeline {index}"),
            })
            .collect(),
    };
    let file = tempfile::Builder::new()
        .prefix("maestro-scale-")
        .suffix(".json")
        .tempfile()
        .context("cannot create the fixture file")?;
    serde_json::to_writer(std::io::BufWriter::new(file.as_file()), &fixture)
        .context("cannot write the fixture file")?;
    Ok(file)
}

/// Each customer's HS256 token, valid for an hour.
fn mint_tokens(secret: &str, customers: usize) -> anyhow::Result<Vec<String>> {
    let exp = unix_now()? + 3600;
    (0..customers)
        .map(|index| crate::token::mint(secret, &customer_id(index), exp))
        .collect()
}

/// Execute of `entry`'s pipeline with its customer's token.
fn execute(tokens: &[String], entry: Entry) -> anyhow::Result<RequestTemplate> {
    RequestTemplate::new(Method::POST, baseline::EXECUTE_PATH)
        .bearer(&tokens[entry.customer])?
        .json(&serde_json::json!({"pipeline_id": entry.id.hyphenated().to_string()}))
}

/// A load of rotating requests: worker `w`'s `i`-th request (warm-up
/// included) is `requests[(w + i * workers) % len]`.
#[derive(Debug, Clone)]
struct Rotation {
    requests: Arc<Vec<RequestTemplate>>,
    connections: usize,
}

impl Rotation {
    /// Runs `warmup` then `measured` requests against `addr`, closed loop,
    /// the requests spread evenly over the connections.
    async fn run(
        &self,
        addr: SocketAddr,
        warmup: u64,
        measured: u64,
    ) -> anyhow::Result<LoadReport> {
        anyhow::ensure!(
            self.connections > 0 && !self.requests.is_empty(),
            "a rotation needs a connection and a request"
        );
        let barrier = Arc::new(Barrier::new(self.connections));
        let mut workers = Vec::with_capacity(self.connections);
        for index in 0..self.connections {
            let requests = Arc::clone(&self.requests);
            let barrier = Arc::clone(&barrier);
            let workers_count = self.connections;
            let warmup = share(warmup, workers_count, index);
            let measured = share(measured, workers_count, index);
            let latency = new_histogram()?;
            workers.push(tokio::spawn(async move {
                worker(
                    addr,
                    &requests,
                    index,
                    workers_count,
                    warmup,
                    measured,
                    latency,
                    &barrier,
                )
                .await
            }));
        }
        let mut report = LoadReport::empty(new_histogram()?);
        let mut window: Option<(Instant, Instant)> = None;
        for handle in workers {
            let (started, finished, part) = handle.await.context("a load worker panicked")?;
            window = Some(match window {
                None => (started, finished),
                Some((first, last)) => (first.min(started), last.max(finished)),
            });
            report.merge(part)?;
        }
        if let Some((started, finished)) = window {
            report.elapsed = finished.duration_since(started);
        }
        Ok(report)
    }
}

/// One connection's share of a rotation; its measured phase's start, end
/// and report.
#[allow(clippy::too_many_arguments)]
async fn worker(
    addr: SocketAddr,
    requests: &[RequestTemplate],
    index: usize,
    workers: usize,
    warmup: u64,
    measured: u64,
    latency: Histogram<u64>,
    barrier: &Barrier,
) -> (Instant, Instant, LoadReport) {
    let mut connection = Connection::new(addr);
    let len = requests.len();
    let mut next = index % len;
    let step = workers % len;
    let advance = |next: &mut usize| {
        let current = *next;
        *next = (*next + step) % len;
        current
    };
    for _ in 0..warmup {
        let _ = connection.send(&requests[advance(&mut next)], None).await;
    }
    barrier.wait().await;
    let mut report = LoadReport::empty(latency);
    let started = Instant::now();
    for _ in 0..measured {
        let request = &requests[advance(&mut next)];
        let sent = Instant::now();
        let outcome = connection.send(request, None).await;
        report.record(sent, outcome);
    }
    let finished = Instant::now();
    report.elapsed = finished.duration_since(started);
    (started, finished, report)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|err| anyhow::anyhow!("cannot create a latency histogram: {err:?}"))
}

/// This worker's share of `total` spread over `workers`.
fn share(total: u64, workers: usize, index: usize) -> u64 {
    let workers = workers as u64;
    let index = index as u64;
    total / workers + u64::from(index < total % workers)
}

/// The CPU time process `pid` has used so far, all its threads, user and
/// system, from `/proc/<pid>/stat`; `None` where that cannot be read.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields after
    // its closing one are the state (field 3) onwards.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    // utime and stime, fields 14 and 15, in USER_HZ: 100 a second on Linux.
    Some(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// A started server: its guard, address, and what was read as it started.
struct Started {
    guard: ChildGuard,
    addr: SocketAddr,
    startup: Duration,
    rss_idle: Option<u64>,
}

/// Starts `maestro` on the memory backend with `fixture` and times it from
/// the spawn to `GET /ready` answering 200.
async fn start(maestro: &Path, secret: &str, fixture: &Path) -> anyhow::Result<Started> {
    let addr = free_local_addr()?;
    let env = [
        ("MAESTRO_BACKEND", "memory".to_owned()),
        ("MAESTRO_MEMORY_RUN_SECONDS", "0".to_owned()),
        (
            "MAESTRO_MEMORY_FIXTURE",
            fixture.to_string_lossy().into_owned(),
        ),
    ];
    let mut command = maestro_command(maestro, addr, secret, &env);
    let spawned = Instant::now();
    let mut guard = ChildGuard::spawn("maestro", &mut command)?;
    let ready = RequestTemplate::get("/ready");
    loop {
        if let Some(status) = guard.exit_status()? {
            anyhow::bail!("maestro exited ({status}) before it answered GET /ready on {addr}");
        }
        if let Ok(answer) = http::send_once(addr, &ready, Duration::from_secs(1)).await
            && answer.status == StatusCode::OK
        {
            break;
        }
        anyhow::ensure!(
            spawned.elapsed() < READY_TIMEOUT,
            "maestro did not answer GET /ready with 200 within {}s",
            READY_TIMEOUT.as_secs()
        );
        // Polling, not a test: the process gives no other readiness signal.
        tokio::time::sleep(READY_POLL).await;
    }
    let startup = spawned.elapsed();
    let rss_idle = resident_set_size(guard.id()).ok();
    Ok(Started {
        guard,
        addr,
        startup,
        rss_idle,
    })
}

/// Everything the scale run measured.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    connections: usize,
    requests: u64,
    warmup: u64,
    /// Execute against the server holding one pipeline.
    one: Summary,
    /// Execute against the server holding them all, rotating.
    scale: Summary,
    one_startup: Duration,
    scale_startup: Duration,
    one_rss: (Option<u64>, Option<u64>),
    /// CPU time the server used over its measured executes.
    one_cpu: Option<Duration>,
    scale_cpu: Option<Duration>,
    scale_rss: (Option<u64>, Option<u64>),
    /// List pipelines of the big customer.
    list_pipelines: Summary,
    /// List runs of a pipeline that never ran.
    runs_empty: Summary,
    /// List runs of a pipeline with one page of runs.
    runs_page: Summary,
    /// List runs of a pipeline with a full history.
    runs_full: Summary,
    /// Bare axum answering a page of no runs, as bytes written once.
    bare_empty: Summary,
    /// Bare axum answering a page of 100 runs, as bytes written once.
    bare_full: Summary,
}

/// Runs the scale comparison.
///
/// # Errors
/// When writing the fixture, starting or loading a server fails.
pub(super) async fn run(args: &Args, maestro: &Path) -> anyhow::Result<Report> {
    Ok(report(&measure(args, maestro).await?))
}

async fn measure(args: &Args, maestro: &Path) -> anyhow::Result<Results> {
    let secret = random_secret();
    println!(
        "== scale: {} pipelines of {} customers",
        thousands(PIPELINES as u64),
        thousands(CUSTOMERS as u64)
    );
    let set = DataSet::new(PIPELINES, CUSTOMERS, BIG_CUSTOMER_PIPELINES);
    let tokens = mint_tokens(&secret, CUSTOMERS)?;
    let fixture = write_fixture(&set)?;
    let single = DataSet::new(1, 1, 1);
    let single_fixture = write_fixture(&single)?;

    // Start-up first, one server at a time, each with the machine to
    // itself.
    let one = start(maestro, &secret, single_fixture.path()).await?;
    let scale = start(maestro, &secret, fixture.path()).await?;
    println!(
        "== started: one pipeline in {}, {} pipelines in {}",
        millis(one.startup),
        thousands(PIPELINES as u64),
        millis(scale.startup)
    );

    // Three pipelines are kept out of the rotation: the histories list
    // runs is measured on (empty, one page, full).
    let rotation = set.rotation();
    let (empty, page, full) = (rotation[0], rotation[1], rotation[2]);
    let scale_load = Rotation {
        requests: Arc::new(
            rotation[3..]
                .iter()
                .map(|entry| execute(&tokens, *entry))
                .collect::<anyhow::Result<_>>()?,
        ),
        connections: args.connections,
    };
    // As many templates of the one request, each built on its own: the
    // generator then walks as much memory for either server, so that the
    // ratio is the server's cost of scale and not the generator's.
    let one_load = Rotation {
        requests: Arc::new(
            (0..scale_load.requests.len())
                .map(|_| execute(&tokens, single.pipelines[0]))
                .collect::<anyhow::Result<_>>()?,
        ),
        connections: args.connections,
    };
    let turn = (args.requests / TURNS).max(1);
    for (load, addr) in [(&one_load, one.addr), (&scale_load, scale.addr)] {
        load.run(addr, args.warmup, 0).await?;
    }
    println!(
        "== execute, in {TURNS} alternating turns of {} requests over {} connections ({} warm-up each)",
        thousands(turn),
        args.connections,
        thousands(args.warmup)
    );
    let mut one_report: Option<LoadReport> = None;
    let mut scale_report: Option<LoadReport> = None;
    let (mut one_cpu, mut scale_cpu) = (Some(Duration::ZERO), Some(Duration::ZERO));
    for _ in 0..TURNS {
        for (load, server, total, cpu) in [
            (&one_load, &one, &mut one_report, &mut one_cpu),
            (&scale_load, &scale, &mut scale_report, &mut scale_cpu),
        ] {
            let before = cpu_time(server.guard.id());
            let part = load.run(server.addr, 0, turn).await?;
            let after = cpu_time(server.guard.id());
            *cpu = match (*cpu, before, after) {
                (Some(sum), Some(before), Some(after)) => Some(sum + after.saturating_sub(before)),
                _ => None,
            };
            match total {
                Some(total) => total.merge(part)?,
                None => *total = Some(part),
            }
        }
    }
    let (one_report, scale_report) = (
        one_report.context("no turn ran")?,
        scale_report.context("no turn ran")?,
    );
    report_first_problem("maestro (one pipeline)", &one_report);
    report_first_problem("maestro (at scale)", &scale_report);
    let one_rss_after = resident_set_size(one.guard.id()).ok();
    let scale_rss_after = resident_set_size(scale.guard.id()).ok();
    drop(one.guard);

    let big_list = Rotation {
        requests: Arc::new(vec![
            RequestTemplate::get("/platform/pipelines").bearer(&tokens[BIG_CUSTOMER])?,
        ]),
        connections: LIST_PIPELINES_CONNECTIONS,
    };
    println!(
        "== list pipelines of the customer with {} pipelines: {} requests",
        thousands(BIG_CUSTOMER_PIPELINES as u64),
        thousands(LIST_PIPELINES_REQUESTS)
    );
    let list_pipelines = big_list
        .run(scale.addr, LIST_WARMUP, LIST_PIPELINES_REQUESTS)
        .await?;
    report_first_problem("list pipelines", &list_pipelines);

    // One page of runs, and a full history: more executes than the
    // history keeps.
    println!(
        "== histories of {} and {} runs",
        thousands(ONE_PAGE),
        thousands(HISTORY_LIMIT)
    );
    for (entry, runs) in [(page, ONE_PAGE), (full, HISTORY_LIMIT + 1_000)] {
        let fill = Rotation {
            requests: Arc::new(vec![execute(&tokens, entry)?]),
            connections: args.connections,
        };
        let filled = fill.run(scale.addr, 0, runs).await?;
        anyhow::ensure!(
            filled.successes == runs,
            "filling a history failed: {filled:?}"
        );
    }
    let list_runs = |entry: Entry| -> anyhow::Result<Rotation> {
        Ok(Rotation {
            requests: Arc::new(vec![
                RequestTemplate::get(format!(
                    "/platform/pipeline/{}/pipeline_run",
                    entry.id.hyphenated()
                ))
                .bearer(&tokens[entry.customer])?,
            ]),
            connections: args.connections,
        })
    };
    let (empty_load, page_load, full_load) =
        (list_runs(empty)?, list_runs(page)?, list_runs(full)?);
    // The floor: bare axum answering the same page as bytes written once.
    let (bare_server, bare) = super::start_baseline(&[]).await?;
    let bare_page = |runs: u64| Rotation {
        requests: Arc::new(vec![RequestTemplate::get(format!(
            "{}/{runs}",
            baseline::RUNS_PATH
        ))]),
        connections: args.connections,
    };
    let (bare_empty_load, bare_full_load) = (bare_page(0), bare_page(ONE_PAGE));
    println!(
        "== list runs of an empty, a one-page and a full history, in {TURNS} alternating turns: {} requests each over {} connections",
        thousands(LIST_RUNS_REQUESTS),
        args.connections
    );
    let per_turn = (LIST_RUNS_REQUESTS / TURNS).max(1);
    let mut runs_empty: Option<LoadReport> = None;
    let mut runs_page: Option<LoadReport> = None;
    let mut runs_full: Option<LoadReport> = None;
    let mut bare_empty: Option<LoadReport> = None;
    let mut bare_full: Option<LoadReport> = None;
    for index in 0..TURNS {
        let warmup = if index == 0 { LIST_WARMUP } else { 0 };
        for (load, addr, total) in [
            (&empty_load, scale.addr, &mut runs_empty),
            (&page_load, scale.addr, &mut runs_page),
            (&full_load, scale.addr, &mut runs_full),
            (&bare_empty_load, bare, &mut bare_empty),
            (&bare_full_load, bare, &mut bare_full),
        ] {
            let part = load.run(addr, warmup, per_turn).await?;
            match total {
                Some(total) => total.merge(part)?,
                None => *total = Some(part),
            }
        }
    }
    let (runs_empty, runs_page, runs_full) = (
        runs_empty.context("no turn ran")?,
        runs_page.context("no turn ran")?,
        runs_full.context("no turn ran")?,
    );
    let (bare_empty, bare_full) = (
        bare_empty.context("no turn ran")?,
        bare_full.context("no turn ran")?,
    );
    report_first_problem("list runs (empty)", &runs_empty);
    report_first_problem("list runs (one page)", &runs_page);
    report_first_problem("list runs (full)", &runs_full);
    report_first_problem("bare axum, a page of no runs", &bare_empty);
    report_first_problem("bare axum, a page of 100 runs", &bare_full);
    drop(bare_server);
    drop(scale.guard);
    drop(fixture);

    let measured = turn * TURNS;
    let runs = per_turn * TURNS;
    Ok(Results {
        connections: args.connections,
        requests: measured,
        warmup: args.warmup,
        one: Summary::new(&one_report, measured),
        scale: Summary::new(&scale_report, measured),
        one_startup: one.startup,
        scale_startup: scale.startup,
        one_rss: (one.rss_idle, one_rss_after),
        one_cpu,
        scale_cpu,
        scale_rss: (scale.rss_idle, scale_rss_after),
        list_pipelines: Summary::new(&list_pipelines, LIST_PIPELINES_REQUESTS),
        runs_empty: Summary::new(&runs_empty, runs),
        runs_page: Summary::new(&runs_page, runs),
        runs_full: Summary::new(&runs_full, runs),
        bare_empty: Summary::new(&bare_empty, runs),
        bare_full: Summary::new(&bare_full, runs),
    })
}

/// The checks of the scale targets.
fn checks(results: &Results) -> Vec<Check> {
    let throughput = ratio(
        results.scale.requests_per_second,
        results.one.requests_per_second,
    );
    let rss = results.scale_rss.0;
    let history = ratio(
        results.runs_full.p99.as_secs_f64(),
        results.runs_empty.p99.as_secs_f64(),
    );
    let same_page = ratio(
        results.runs_full.p99.as_secs_f64(),
        results.runs_page.p99.as_secs_f64(),
    );
    vec![
        Check {
            target: format!(
                "execute at scale >= {MIN_THROUGHPUT_RATIO}x one pipeline's throughput"
            ),
            measured: throughput.map_or_else(|| "no throughput".to_owned(), times),
            passed: results.scale.all_2xx()
                && throughput.is_some_and(|ratio| ratio >= MIN_THROUGHPUT_RATIO),
        },
        Check::below(
            "RSS with the pipelines loaded",
            rss,
            MAX_RSS_BYTES,
            mebibytes,
            "unavailable",
            true,
        ),
        Check::below(
            "start-up at scale (spawn to /ready)",
            Some(results.scale_startup),
            MAX_STARTUP,
            millis,
            "unavailable",
            true,
        ),
        Check::below(
            "list pipelines (1,000 of them) p99",
            Some(results.list_pipelines.p99),
            MAX_LIST_PIPELINES_P99,
            millis,
            "unavailable",
            results.list_pipelines.all_2xx(),
        ),
        Check {
            target: format!("list runs p99, full history <= {MAX_FULL_HISTORY_RATIO}x empty"),
            measured: history.map_or_else(|| "n/a".to_owned(), times),
            passed: results.runs_full.all_2xx()
                && results.runs_empty.all_2xx()
                && history.is_some_and(|ratio| ratio <= MAX_FULL_HISTORY_RATIO),
        },
        Check {
            target: format!(
                "list runs p99, full history <= {MAX_FULL_HISTORY_RATIO}x one page (the same page answered)"
            ),
            measured: same_page.map_or_else(|| "n/a".to_owned(), times),
            passed: results.runs_full.all_2xx()
                && results.runs_page.all_2xx()
                && same_page.is_some_and(|ratio| ratio <= MAX_FULL_HISTORY_RATIO),
        },
    ]
}

/// The scale figures, each beside its baseline.
fn report(results: &Results) -> Report {
    let mut rows = Vec::new();
    let mut pair = |name: String, at_scale: Cell, baseline: Cell| {
        let ratio = at_scale.ratio_to(&baseline);
        rows.push(Row::new(name, vec![at_scale, baseline, ratio]));
    };
    pair(
        "execute throughput".to_owned(),
        Cell::Throughput(results.scale.requests_per_second),
        Cell::Throughput(results.one.requests_per_second),
    );
    let per_execute = |cpu: Option<Duration>| {
        cpu.map_or(Cell::Empty, |cpu| {
            Cell::Millis(cpu.as_secs_f64() * 1_000_000.0 / results.requests.max(1) as f64)
        })
    };
    pair(
        "server CPU time per 1,000 executes".to_owned(),
        per_execute(results.scale_cpu),
        per_execute(results.one_cpu),
    );
    pair(
        "execute p50 latency".to_owned(),
        Cell::latency(results.scale.p50),
        Cell::latency(results.one.p50),
    );
    pair(
        "execute p99 latency".to_owned(),
        Cell::latency(results.scale.p99),
        Cell::latency(results.one.p99),
    );
    pair(
        "execute non-2xx / transport errors".to_owned(),
        Cell::pair(
            Cell::Count(results.scale.non_2xx),
            Cell::Count(results.scale.transport_errors),
        ),
        Cell::pair(
            Cell::Count(results.one.non_2xx),
            Cell::Count(results.one.transport_errors),
        ),
    );
    pair(
        "start-up (spawn to /ready 200)".to_owned(),
        Cell::latency(results.scale_startup),
        Cell::latency(results.one_startup),
    );
    pair(
        format!(
            "RSS idle / after {} executes",
            thousands(results.warmup + results.requests)
        ),
        Cell::pair(
            Cell::Mebibytes(results.scale_rss.0),
            Cell::Mebibytes(results.scale_rss.1),
        ),
        Cell::pair(
            Cell::Mebibytes(results.one_rss.0),
            Cell::Mebibytes(results.one_rss.1),
        ),
    );
    pair(
        "list pipelines (1,000) p50 / p99".to_owned(),
        Cell::pair(
            Cell::latency(results.list_pipelines.p50),
            Cell::latency(results.list_pipelines.p99),
        ),
        Cell::Empty,
    );
    let mut compare = |name: &str, first: &Summary, second: &Summary| {
        pair(
            format!("{name}, p50"),
            Cell::latency(first.p50),
            Cell::latency(second.p50),
        );
        pair(
            format!("{name}, p99"),
            Cell::latency(first.p99),
            Cell::latency(second.p99),
        );
        pair(
            format!("{name}, throughput"),
            Cell::Throughput(first.requests_per_second),
            Cell::Throughput(second.requests_per_second),
        );
    };
    compare(
        "list runs, full / empty history",
        &results.runs_full,
        &results.runs_empty,
    );
    compare(
        "list runs, full / one-page history",
        &results.runs_full,
        &results.runs_page,
    );
    compare(
        "bare axum, a written page of 100 runs / of none",
        &results.bare_full,
        &results.bare_empty,
    );
    Report {
        title: "memory backend at scale".to_owned(),
        setup: format!(
            "`cargo xtask bench --scale`: {} pipelines of {} customers (one with {}), each execute a different customer's token and pipeline, against one pipeline in the same binary (sent as many copies of its one request, so that the generator walks as much memory for each); executes over {} connections, {} warm-up then {} measured per server in {TURNS} alternating turns; list pipelines over {LIST_PIPELINES_CONNECTIONS} connection, {} requests; list runs over the executes' connections, {} requests per history in alternating turns; {} CPUs.",
            thousands(PIPELINES as u64),
            thousands(CUSTOMERS as u64),
            thousands(BIG_CUSTOMER_PIPELINES as u64),
            results.connections,
            thousands(results.warmup),
            thousands(results.requests),
            thousands(LIST_PIPELINES_REQUESTS),
            thousands(LIST_RUNS_REQUESTS),
            std::thread::available_parallelism().map_or(1, usize::from),
        ),
        corner: String::new(),
        columns: vec![
            "at scale".to_owned(),
            "baseline".to_owned(),
            "ratio".to_owned(),
        ],
        rows,
        checks: checks(results),
        notes: vec![
            "Baselines: execute, start-up and RSS against the same binary holding one pipeline (RSS after the executes is shown, not judged: at scale the executes leave two runs on each of 100,000 pipelines, against one history of 10,000 runs); list runs (default `limit`, 100) with a full history of 10,000 runs against a pipeline that never ran, and against one with a single page of 100 runs, on the scale server; in the same turns, bare axum answering a page of 100 runs of the same shape, and one of none, as bytes written once (no JSON at all): the floor of what the size of the answer costs on this machine."
                .to_owned(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_data_set_has_the_big_customer_and_spreads_the_rest_evenly() {
        let set = DataSet::new(1_000, 100, 100);
        assert_eq!(set.pipelines.len(), 1_000);
        let mut counts = vec![0; 100];
        for entry in &set.pipelines {
            counts[entry.customer] += 1;
        }
        assert_eq!(counts[0], 100);
        assert!(
            counts[1..].iter().all(|count| *count == 9 || *count == 10),
            "{counts:?}"
        );
        let ids: HashSet<Uuid> = set.pipelines.iter().map(|entry| entry.id).collect();
        assert_eq!(ids.len(), 1_000);
    }

    #[test]
    fn the_rotation_visits_every_pipeline_once_and_never_one_customer_twice_in_a_row() {
        let set = DataSet::new(PIPELINES, CUSTOMERS, BIG_CUSTOMER_PIPELINES);
        let rotation = set.rotation();
        let ids: HashSet<Uuid> = rotation.iter().map(|entry| entry.id).collect();
        assert_eq!(ids.len(), PIPELINES);
        assert!(
            rotation
                .windows(2)
                .all(|pair| pair[0].customer != pair[1].customer)
        );
    }

    #[test]
    fn a_tiny_set_rotates_too() {
        assert_eq!(coprime_stride(1), 1);
        assert_eq!(DataSet::new(1, 1, 1).rotation().len(), 1);
        assert_eq!(gcd(coprime_stride(100_000), 100_000), 1);
    }
}
