//! The run-lifecycle part of `cargo xtask bench`: execute with a 1 KiB
//! `conf` against execute without one, and 1,000 requests waiting on runs
//! (`?wait_seconds=60`), with the memory they add to the service and how
//! soon each is answered once its run has ended.
//!
//! Both run on fresh `maestro`s on the memory backend. The `conf`
//! comparison sends both kinds of execute to one service, each to its own
//! pipeline of the same customer, in alternating turns (as the Airflow
//! bench does), so that a busy moment of the shared machine weighs on both
//! alike. The waits run on a service whose runs last [`RUN_SECONDS`]: runs
//! are triggered first, then every waiting request is opened on a
//! connection of its own; the service's RSS is read before they open and
//! once all of them wait, and each answer's arrival is compared with the
//! instant its run was due to end (its `created_at` plus the run length),
//! on a clock that reads the time as the service does. The bare axum
//! baseline holds as many requests on a timer to the same instants, which
//! shows what holding them costs axum, hyper and tokio alone.

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, TimeDelta, Utc};
use hyper::{Method, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tempfile::NamedTempFile;
use uuid::Uuid;

use super::{
    Args, BENCH_CUSTOMER, airflow, baseline, execute_request, mint_token, random_secret,
    report::{
        self, Cell, Check, Report, Row, RssReadings, Summary, mebibytes, millis, ratio, thousands,
        times,
    },
    report_first_problem, start_baseline, start_floor, start_maestro, unix_now,
};
use crate::{
    http::{self, Answer, RequestTemplate, TransportError},
    load::{self, LoadSpec},
    process::{ChildGuard, resident_set_size},
};

/// Execute with a `conf` must keep at least this share of the throughput
/// of execute without one.
const MIN_CONF_RATIO: f64 = 0.9;
/// The size of that `conf` as compact JSON: 1 KiB.
const CONF_BYTES: usize = 1024;
/// The memory backend's default history limit
/// (`MAESTRO_MEMORY_HISTORY_LIMIT`). Each side's pipeline is given this
/// many runs before the measured turns, so that both are measured with a
/// full history, where each new run drops the oldest, as on a service that
/// has run for a while; a history still filling takes fresh memory on
/// every execute, which costs more the larger the run.
const FULL_HISTORY: u64 = 10_000;

/// Requests waiting at once.
const WAITERS: usize = 1_000;
/// How long each run lasts (`MAESTRO_MEMORY_RUN_SECONDS`): long enough for
/// the triggers and for every wait to be in place before the first run
/// ends, on a busy machine too.
const RUN_SECONDS: u64 = 3;
/// The time between two triggers of the one-run-per-waiter scenario, and so
/// between two runs' ends.
const TRIGGER_SPACING: Duration = Duration::from_millis(1);
/// What each waiting request asks for: the longest wait allowed, far more
/// than the run lasts.
const WAIT_SECONDS: u64 = 60;
/// The RSS the waiting requests may add, all together.
const MAX_ADDED_RSS: u64 = 16 * 1024 * 1024;
/// The most the median waiter may be answered after its run's end.
const MAX_WAKE_UP_P50: Duration = Duration::from_millis(5);
/// How long the RSS is read after the service counts every waiting request
/// in flight, so that each one has gone from its headers to its wait.
pub(super) const SETTLE: Duration = Duration::from_millis(100);
/// Waiting requests opened at once, then a pause: fewer than the listen
/// backlog of 128, so that none waits for its SYN to be sent again.
pub(super) const CONNECT_BATCH: usize = 100;
/// The pause between two batches.
pub(super) const CONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Descriptors the bench and the service need beside one socket per waiter.
pub(super) const SPARE_FILES: u64 = 256;
/// How long a trigger or a read of `/metrics` may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The service's gauge of requests received and not yet answered.
const IN_FLIGHT_GAUGE: &str = "maestro_http_requests_in_flight";

/// Runs the `conf` comparison, then the waits, and reports both.
///
/// # Errors
/// When starting or loading a server fails, or the waits cannot be set up.
pub(super) async fn run(args: &Args, maestro: &Path) -> anyhow::Result<Vec<Report>> {
    let conf = conf_report(&measure_conf(args, maestro).await?);
    let mut scenarios = Vec::new();
    for scenario in Scenario::ALL {
        scenarios.push(measure_waits(maestro, scenario).await?);
    }
    Ok(vec![conf, waits_report(&scenarios)])
}

// ---------------------------------------------------------------------
// Execute with a 1 KiB `conf`.
// ---------------------------------------------------------------------

/// What the `conf` comparison measured.
#[derive(Debug, Clone, PartialEq)]
struct ConfResults {
    /// Concurrent connections, the same for both sides.
    connections: usize,
    /// Measured requests per side.
    requests: u64,
    /// Warm-up requests per side.
    warmup: u64,
    /// CPUs available to this process.
    cpus: usize,
    /// Load averages before the comparison.
    load_average: String,
    /// Executes without `conf`.
    plain: Summary,
    /// Executes with the 1 KiB `conf`.
    with_conf: Summary,
    /// Whether a run triggered with the `conf` reads it back.
    conf_read_back: bool,
    /// The contract's floor (`bench/floor.rs`) with the same two kinds of
    /// execute, in turns of its own.
    floor_plain: Summary,
    floor_conf: Summary,
}

impl ConfResults {
    fn ratio(&self) -> Option<f64> {
        ratio(
            self.with_conf.requests_per_second,
            self.plain.requests_per_second,
        )
    }

    /// The floor's throughput with the `conf` as a share of without.
    fn floor_ratio(&self) -> Option<f64> {
        ratio(
            self.floor_conf.requests_per_second,
            self.floor_plain.requests_per_second,
        )
    }

    fn sides(&self) -> [(&'static str, &Summary); 2] {
        [
            ("without conf", &self.plain),
            ("1 KiB conf", &self.with_conf),
        ]
    }
}

async fn measure_conf(args: &Args, maestro: &Path) -> anyhow::Result<ConfResults> {
    let load_average = airflow::load_average();
    let (plain_pipeline, conf_pipeline) = (Uuid::new_v4(), Uuid::new_v4());
    let secret = random_secret();
    let token = mint_token(&secret, BENCH_CUSTOMER, unix_now()?)?;
    let conf = sized_conf(CONF_BYTES);
    let fixture = fixture(&[plain_pipeline, conf_pipeline])?;
    // Runs finish at once, as in the other executes of the bench.
    let env = memory_env(&fixture, 0, None);
    let (server, addr) = start_maestro(maestro, &secret, &env).await?;

    let spec = |request| LoadSpec {
        addr,
        connections: args.connections,
        requests: args.conf_requests,
        warmup: args.warmup,
        request,
    };
    let plain_spec = spec(execute_request(&token, plain_pipeline)?);
    let conf_spec = spec(execute_with_conf(&token, conf_pipeline, &conf)?);
    println!(
        "== maestro (memory backend) on {addr}, execute without conf and with a 1 KiB conf in alternating turns, each pipeline with a full history of {} runs first: {} each",
        thousands(FULL_HISTORY),
        report::plan(args.warmup, args.conf_requests, args.connections)
    );
    let (plain, with_conf) = full_history_in_turns(&plain_spec, &conf_spec).await?;
    let conf_read_back = reads_back(addr, &token, conf_pipeline, &conf).await;
    drop(server);
    drop(fixture);

    // The same on the contract's floor, which keeps the `conf` as sent.
    let (floor, floor_addr) = start_floor(&secret, &[plain_pipeline, conf_pipeline]).await?;
    println!(
        "== the contract's floor on {floor_addr}, the same executes, after the same full histories"
    );
    let on_floor = |side: &LoadSpec| LoadSpec {
        addr: floor_addr,
        ..side.clone()
    };
    let (floor_plain, floor_conf) =
        full_history_in_turns(&on_floor(&plain_spec), &on_floor(&conf_spec)).await?;
    drop(floor);

    report_first_problem("maestro, execute without conf", &plain);
    report_first_problem("maestro, execute with a 1 KiB conf", &with_conf);
    Ok(ConfResults {
        connections: args.connections,
        requests: args.conf_requests,
        warmup: args.warmup,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        load_average,
        plain: Summary::new(&plain, args.conf_requests),
        with_conf: Summary::new(&with_conf, args.conf_requests),
        conf_read_back,
        floor_plain: Summary::new(&floor_plain, args.conf_requests),
        floor_conf: Summary::new(&floor_conf, args.conf_requests),
    })
}

/// Gives each side's pipeline a full history of [`FULL_HISTORY`] runs,
/// unmeasured, then loads the two sides in alternating turns.
async fn full_history_in_turns(
    plain: &LoadSpec,
    with_conf: &LoadSpec,
) -> anyhow::Result<(load::LoadReport, load::LoadReport)> {
    for side in [plain, with_conf] {
        load::run(&LoadSpec {
            requests: FULL_HISTORY,
            warmup: 0,
            ..side.clone()
        })
        .await?;
    }
    airflow::in_turns(plain, with_conf).await
}

/// A `conf` of exactly `bytes` bytes as compact JSON (at least some 200),
/// shaped like a client's run parameters: a date, flags, numbers, a list of
/// tables, a nested object, and a free-text note padded to the size.
fn sized_conf(bytes: usize) -> Value {
    let mut conf = json!({
        "date": "2024-12-18",
        "full_refresh": false,
        "batch_size": 5000,
        "threshold": 0.25,
        "tables": (0..12).map(|table| format!("warehouse.table_{table:02}")).collect::<Vec<_>>(),
        "options": {"region": "eu-west-1", "retries": 3, "notify": ["ops@example.com"]},
        "note": "",
    });
    let size = serde_json::to_vec(&conf).map_or(0, |json| json.len());
    conf["note"] = Value::String("x".repeat(bytes.saturating_sub(size)));
    conf
}

/// `POST /platform/pipeline/execute` for `pipeline` with `conf`.
fn execute_with_conf(token: &str, pipeline: Uuid, conf: &Value) -> anyhow::Result<RequestTemplate> {
    RequestTemplate::new(Method::POST, baseline::EXECUTE_PATH)
        .bearer(token)?
        .json(&json!({"pipeline_id": pipeline.hyphenated().to_string(), "conf": conf}))
}

/// Whether one more execute with `conf` makes a run that gives the `conf`
/// back: it shows that the measured executes carried it into their runs.
async fn reads_back(addr: SocketAddr, token: &str, pipeline: Uuid, conf: &Value) -> bool {
    let read = async {
        let answer = call(addr, &execute_with_conf(token, pipeline, conf)?).await?;
        let run_id = run_id_of(&answer.json())?;
        let read = RequestTemplate::get(run_path(pipeline, &run_id, 0)).bearer(token)?;
        anyhow::Ok(call(addr, &read).await?.json()["conf"] == *conf)
    };
    match read.await {
        Ok(same) => {
            if !same {
                eprintln!("a run triggered with the 1 KiB conf did not give it back");
            }
            same
        }
        Err(err) => {
            eprintln!("cannot read back a run triggered with the 1 KiB conf: {err:#}");
            false
        }
    }
}

fn conf_checks(results: &ConfResults) -> Vec<Check> {
    let conf_ratio = results.ratio();
    let failures = results
        .sides()
        .iter()
        .map(|(name, summary)| format!("{name}: {}", report::failures(summary)))
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        Check {
            target: format!(
                "execute with a 1 KiB conf: throughput >= {MIN_CONF_RATIO}x execute without conf"
            ),
            measured: conf_ratio.map_or_else(|| "no throughput".to_owned(), times),
            passed: conf_ratio.is_some_and(|ratio| ratio >= MIN_CONF_RATIO),
        },
        Check {
            target: "every execute with and without conf answered 2xx".to_owned(),
            measured: failures,
            passed: results.sides().iter().all(|(_, summary)| summary.all_2xx()),
        },
        Check {
            target: "a run triggered with the conf gives it back".to_owned(),
            measured: if results.conf_read_back {
                "the same conf".to_owned()
            } else {
                "not the same conf".to_owned()
            },
            passed: results.conf_read_back,
        },
    ]
}

fn conf_report(results: &ConfResults) -> Report {
    let sides = results.sides();
    let mut rows = Summary::rows(&sides.map(|(_, summary)| summary));
    let plain = Cell::Throughput(results.plain.requests_per_second);
    rows.insert(
        1,
        Row::new(
            "throughput / without conf",
            sides
                .iter()
                .map(|(_, summary)| Cell::Throughput(summary.requests_per_second).ratio_to(&plain))
                .collect(),
        ),
    );
    let floor_plain = Cell::Throughput(results.floor_plain.requests_per_second);
    let floor_conf = Cell::Throughput(results.floor_conf.requests_per_second);
    rows.push(Row::new(
        "the contract's floor: throughput / without conf",
        vec![
            floor_plain.ratio_to(&floor_plain),
            floor_conf.ratio_to(&floor_plain),
        ],
    ));
    rows.push(Row::new(
        "the contract's floor: throughput",
        vec![floor_plain, floor_conf],
    ));
    let notes = results
        .floor_ratio()
        .map(|floor| {
            format!(
                "The contract's floor (bare axum keeping the `conf` as sent; bench/floor.rs) keeps {} of its throughput with the `conf`, the service {}: what any server pays on this machine for the {CONF_BYTES} more bytes, read and kept, against what the service pays for checking and keeping them.",
                times(floor),
                results.ratio().map_or_else(|| "n/a".to_owned(), times),
            )
        })
        .into_iter()
        .collect();
    Report {
        title: "execute with a 1 KiB conf".to_owned(),
        setup: format!(
            "`cargo xtask bench` (execute with a {CONF_BYTES}-byte `conf` against without, memory backend): one `maestro`, {} connections, each side's pipeline given a full history of {} runs first, {} warm-up then {} measured requests per side in {} alternating turns, {} CPUs, load average {} before.",
            results.connections,
            thousands(FULL_HISTORY),
            thousands(results.warmup),
            thousands(results.requests),
            airflow::TURNS,
            results.cpus,
            results.load_average,
        ),
        corner: String::new(),
        columns: sides.iter().map(|(name, _)| (*name).to_owned()).collect(),
        rows,
        checks: conf_checks(results),
        notes,
    }
}

// ---------------------------------------------------------------------
// 1,000 waiting requests.
// ---------------------------------------------------------------------

/// The server a column's requests wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    /// The release `maestro`, on runs of the memory backend.
    Maestro,
    /// The bare axum baseline, on a timer to the same instants: what
    /// holding a request open costs axum, hyper and tokio alone.
    Baseline,
}

/// One column of the waits: which server, and how many instants the
/// waits end at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scenario {
    server: Server,
    /// Runs triggered (one per pipeline), or instants for the baseline,
    /// [`TRIGGER_SPACING`] apart; waiter `i` waits on the `i % ends`th.
    ends: usize,
    /// Whether the targets apply to it.
    judged: bool,
}

impl Scenario {
    /// One run per waiter, about one ending per millisecond: what each
    /// waiter's wake-up costs. The targets apply here.
    const MAESTRO_EACH: Self = Self {
        server: Server::Maestro,
        ends: WAITERS,
        judged: true,
    };
    /// The same instants, on the bare baseline.
    const BASELINE_EACH: Self = Self {
        server: Server::Baseline,
        ends: WAITERS,
        judged: false,
    };
    /// Every waiter on one run, all woken at once: the worst burst of
    /// answers. Shown, not judged.
    const MAESTRO_ALL: Self = Self {
        server: Server::Maestro,
        ends: 1,
        judged: false,
    };
    /// The same burst on the bare baseline.
    const BASELINE_ALL: Self = Self {
        server: Server::Baseline,
        ends: 1,
        judged: false,
    };

    /// In the order they run: each server in turn, so that a busy moment
    /// of the machine falls on both.
    const ALL: [Self; 4] = [
        Self::MAESTRO_EACH,
        Self::BASELINE_EACH,
        Self::MAESTRO_ALL,
        Self::BASELINE_ALL,
    ];

    /// Its column's head.
    fn name(&self) -> &'static str {
        match (self.server, self.ends == 1) {
            (Server::Maestro, false) => "maestro, a run each, ends 1 ms apart",
            (Server::Baseline, false) => "bare axum, a timer each, 1 ms apart",
            (Server::Maestro, true) => "maestro, all on one run",
            (Server::Baseline, true) => "bare axum, all at one instant",
        }
    }
}

/// The wall clock as the service reads it: one reading of the system's
/// clock, moved on by the monotonic clock, as `runtime::TokioClock` does.
/// Two such clocks started seconds apart agree to within what NTP slews in
/// those seconds, where readings of the system clock seconds apart could
/// differ by what it slews in between.
#[derive(Debug, Clone, Copy)]
pub(super) struct WallClock {
    wall: DateTime<Utc>,
    instant: Instant,
}

impl WallClock {
    /// Reads the system's clock now; started before a server, it reads the
    /// time as the server does.
    pub(super) fn start() -> Self {
        Self {
            wall: Utc::now(),
            instant: Instant::now(),
        }
    }

    /// The wall clock now.
    pub(super) fn now(&self) -> DateTime<Utc> {
        TimeDelta::from_std(self.instant.elapsed())
            .ok()
            .and_then(|elapsed| self.wall.checked_add_signed(elapsed))
            .unwrap_or(self.wall)
    }
}

/// What one column measured.
#[derive(Debug, Clone, PartialEq)]
struct WaitResults {
    scenario: Scenario,
    /// Load averages before the column.
    load_average: String,
    /// From the first end to the last.
    ends_span: Duration,
    /// The server's RSS after the set-up (triggers, or as many calls to the
    /// baseline), before any wait, and while every waiting request waited.
    rss: RssReadings,
    /// How long before the first end that RSS was read; `None` when the
    /// requests were not all waiting before it.
    all_waiting_ahead: Option<Duration>,
    /// The wake-up of every waiter answered as it should be, in order.
    wake_ups: Vec<Duration>,
    /// What went wrong with the others.
    problems: Vec<String>,
    /// On `maestro`: the most a run's `created_at` fell outside the
    /// bench's send and arrival of its execute, zero when the two clocks
    /// agree.
    clock_excess: Option<Duration>,
}

impl WaitResults {
    /// RSS added by the waiting requests.
    fn rss_added(&self) -> Option<u64> {
        self.rss.added()
    }

    fn wake_up(&self, quantile: f64) -> Option<Duration> {
        nearest_rank(&self.wake_ups, quantile)
    }

    /// Whether every waiter waited at once and was answered as it should.
    fn valid(&self) -> bool {
        self.all_waiting_ahead.is_some()
            && self.problems.is_empty()
            && self.wake_ups.len() == WAITERS
    }
}

/// A server started for one column, with what its requests need.
struct Started {
    server: ChildGuard,
    addr: SocketAddr,
    /// The bench's token for `maestro`; none for the baseline.
    token: Option<String>,
    /// `maestro`'s pipelines, in the order their runs are triggered.
    pipelines: Vec<Uuid>,
    _fixture: Option<NamedTempFile>,
}

async fn start(maestro: &Path, scenario: Scenario) -> anyhow::Result<Started> {
    match scenario.server {
        Server::Maestro => {
            let pipelines: Vec<Uuid> = (0..scenario.ends).map(|_| Uuid::new_v4()).collect();
            let secret = random_secret();
            let token = mint_token(&secret, BENCH_CUSTOMER, unix_now()?)?;
            let fixture = fixture(&pipelines)?;
            let env = memory_env(&fixture, RUN_SECONDS, Some(WAITERS));
            let (server, addr) = start_maestro(maestro, &secret, &env).await?;
            Ok(Started {
                server,
                addr,
                token: Some(token),
                pipelines,
                _fixture: Some(fixture),
            })
        }
        Server::Baseline => {
            let (server, addr) = start_baseline(&[]).await?;
            Ok(Started {
                server,
                addr,
                token: None,
                pipelines: Vec::new(),
                _fixture: None,
            })
        }
    }
}

/// One end the waits wait for: the request that waits on it.
#[derive(Debug, Clone)]
struct End {
    wait: RequestTemplate,
    /// When it is due.
    due: DateTime<Utc>,
}

/// Makes the column's ends, [`TRIGGER_SPACING`] apart: on `maestro`, one
/// run triggered per pipeline, due its run length after its `created_at`;
/// on the baseline, as many calls to `/health`, so that the server has
/// served as much, and instants the run length after each. Each is sent
/// on its own schedule, so that a slow answer does not hold back the
/// next: the ends stay that far apart on a busy machine too.
async fn make_ends(
    started: &Started,
    scenario: Scenario,
    clock: WallClock,
    run_length: TimeDelta,
) -> anyhow::Result<(Vec<End>, Option<Duration>)> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(scenario.ends);
    for index in 0..scenario.ends {
        let at = start + TRIGGER_SPACING * u32::try_from(index)?;
        let run = started
            .token
            .clone()
            .zip(started.pipelines.get(index).copied());
        let addr = started.addr;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            make_end(addr, run, clock, run_length).await
        }));
    }
    let mut ends = Vec::with_capacity(scenario.ends);
    let mut clock_excess: Option<Duration> = None;
    for task in tasks {
        let (end, excess) = task.await.context("a trigger's task panicked")??;
        if let Some(excess) = excess {
            clock_excess = Some(clock_excess.unwrap_or_default().max(excess));
        }
        ends.push(end);
    }
    Ok((ends, clock_excess))
}

/// One end: with a token and a pipeline, a run triggered on `maestro`,
/// and how far its `created_at` fell outside the execute's send and
/// arrival; without, a call to the baseline and an instant.
async fn make_end(
    addr: SocketAddr,
    run: Option<(String, Uuid)>,
    clock: WallClock,
    run_length: TimeDelta,
) -> anyhow::Result<(End, Option<Duration>)> {
    let Some((token, pipeline)) = run else {
        call(addr, &RequestTemplate::get("/health")).await?;
        let due = clock.now() + run_length;
        let wait = RequestTemplate::get(format!(
            "{}/{}",
            baseline::WAIT_PATH,
            due.timestamp_micros()
        ));
        return Ok((End { wait, due }, None));
    };
    let run = trigger(addr, &execute_request(&token, pipeline)?, clock).await?;
    let end = End {
        wait: RequestTemplate::get(run_path(pipeline, &run.run_id, WAIT_SECONDS)).bearer(&token)?,
        due: run.created + run_length,
    };
    Ok((end, Some(run.excess)))
}

/// A run triggered and read back from the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Triggered {
    /// Its id.
    pub(super) run_id: String,
    /// When it was created, which its id names.
    pub(super) created: DateTime<Utc>,
    /// How far that instant fell outside the bench's send of the request
    /// and the answer's arrival: zero when the two clocks agree.
    pub(super) excess: Duration,
}

/// Sends `execute` (or what stands for it on a baseline), which must be
/// answered 200 with a run id naming the instant the run was created.
pub(super) async fn trigger(
    addr: SocketAddr,
    execute: &RequestTemplate,
    clock: WallClock,
) -> anyhow::Result<Triggered> {
    let sent = clock.now();
    let answer = call(addr, execute).await?;
    let arrived = clock.now();
    let run_id = run_id_of(&answer.json())?;
    let created = created_of(&run_id)?;
    Ok(Triggered {
        excess: outside(created, sent, arrived),
        run_id,
        created,
    })
}

async fn measure_waits(maestro: &Path, scenario: Scenario) -> anyhow::Result<WaitResults> {
    ensure_open_files(
        &format!("{} waiting requests", thousands(WAITERS as u64)),
        WAITERS as u64 + SPARE_FILES,
    )?;
    let load_average = airflow::load_average();
    // Started before the server, so that it reads the time as `maestro`
    // does (see `WallClock`).
    let clock = WallClock::start();
    let started = start(maestro, scenario).await?;
    let addr = started.addr;
    let run_length = TimeDelta::seconds(i64::try_from(RUN_SECONDS)?);
    println!(
        "== {} on {addr}: {} ends {RUN_SECONDS} s out, then {WAITERS} requests waiting on them",
        scenario.name(),
        scenario.ends,
    );
    let (ends, clock_excess) = make_ends(&started, scenario, clock, run_length).await?;
    let first_end = ends
        .iter()
        .map(|end| end.due)
        .min()
        .context("no end to wait for")?;
    let last_end = ends.iter().map(|end| end.due).max().unwrap_or(first_end);
    let ends_span = (last_end - first_end).to_std().unwrap_or_default();

    // Read the same way before and during the waits: after a read of the
    // count, whose own allocations are then in both readings.
    waiting(addr, scenario.server).await?;
    let rss_before = resident_set_size(started.server.id()).ok();
    let mut waiters = Vec::with_capacity(WAITERS);
    for (index, end) in ends.iter().cycle().take(WAITERS).enumerate() {
        // In batches under the listen backlog (128), so that no connection
        // waits a second for its SYN to be sent again.
        if index > 0 && index % CONNECT_BATCH == 0 {
            tokio::time::sleep(CONNECT_PAUSE).await;
        }
        let request = end.wait.clone();
        waiters.push(tokio::spawn(async move {
            let answer = http::send_once(
                addr,
                &request,
                Duration::from_secs(WAIT_SECONDS) + CALL_TIMEOUT,
            )
            .await;
            (answer, clock.now())
        }));
    }
    let mut all_waiting_ahead = None;
    let mut rss_waiting = None;
    loop {
        if waiting(addr, scenario.server).await? >= WAITERS as u64 {
            tokio::time::sleep(SETTLE).await;
            rss_waiting = resident_set_size(started.server.id()).ok();
            all_waiting_ahead = (first_end - clock.now()).to_std().ok();
            break;
        }
        if clock.now() >= first_end {
            eprintln!("the {WAITERS} requests were not all waiting when the first end came");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut wake_ups = Vec::with_capacity(WAITERS);
    let mut problems = Vec::new();
    for waiter in waiters {
        let (answer, arrival) = waiter.await.context("a waiting request's task panicked")?;
        match wake_up(scenario.server, answer, arrival, run_length) {
            Ok(wake_up) => wake_ups.push(wake_up),
            Err(problem) => problems.push(problem),
        }
    }
    drop(started);
    wake_ups.sort_unstable();
    if let Some(problem) = problems.first() {
        eprintln!(
            "{} of {WAITERS} waiting requests were not answered as expected; the first: {problem}",
            problems.len()
        );
    }
    Ok(WaitResults {
        scenario,
        load_average,
        ends_span,
        rss: RssReadings {
            before: rss_before,
            holding: rss_waiting,
        },
        all_waiting_ahead,
        wake_ups,
        problems,
        clock_excess,
    })
}

/// How many requests wait on `server` now: on `maestro`, its gauge of
/// requests in flight less the read of `/metrics` itself.
async fn waiting(addr: SocketAddr, server: Server) -> anyhow::Result<u64> {
    match server {
        Server::Maestro => Ok(in_flight(addr).await?.saturating_sub(1)),
        Server::Baseline => {
            let answer = call(addr, &RequestTemplate::get(baseline::WAITING_PATH)).await?;
            String::from_utf8_lossy(&answer.body)
                .trim()
                .parse()
                .context("the baseline's count of waiting requests is not a number")
        }
    }
}

/// How long after its end a waiting request was answered, from its answer
/// and its arrival, or what is wrong with the answer.
///
/// On `maestro` the answer must be a 200 with the run `SUCCESS`, ended
/// (`updated_at`) exactly `run_length` after it was created, which is when
/// the simulation ends a run that started at once: that instant is the
/// end. The baseline answers the instant it waited for.
fn wake_up(
    server: Server,
    answer: Result<Answer, TransportError>,
    arrival: DateTime<Utc>,
    run_length: TimeDelta,
) -> Result<Duration, String> {
    let answer = answer.map_err(|err| format!("no answer: {err}"))?;
    if answer.status != StatusCode::OK {
        return Err(format!(
            "answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let due = match server {
        Server::Maestro => run_end(&answer.json(), run_length)?,
        Server::Baseline => answer.json()["due_unix_micros"]
            .as_i64()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| format!("the baseline answered {}", answer.json()))?,
    };
    (arrival - due)
        .to_std()
        .map_err(|_| format!("answered at {arrival}, before its end at {due}"))
}

/// The end of a run answered finished: `created_at` plus `run_length`,
/// which its `updated_at` must be.
fn run_end(run: &Value, run_length: TimeDelta) -> Result<DateTime<Utc>, String> {
    if run["last_status"] != "SUCCESS" {
        return Err(format!("answered with the run {}", run["last_status"]));
    }
    let instant = |field: &str| {
        run[field]
            .as_str()
            .and_then(instant)
            .ok_or_else(|| format!("the run has no readable {field}"))
    };
    let due = instant("created_at")? + run_length;
    let ended = instant("updated_at")?;
    if ended != due {
        return Err(format!("the run ended at {ended}, not when due at {due}"));
    }
    Ok(due)
}

/// How far `at` lies outside `from..=to`; zero inside.
pub(super) fn outside(at: DateTime<Utc>, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    let before = (from - at).to_std().unwrap_or_default();
    let after = (at - to).to_std().unwrap_or_default();
    before.max(after)
}

/// The `quantile` of `sorted` by nearest rank: the smallest value with at
/// least that share of the values at or below it.
pub(super) fn nearest_rank(sorted: &[Duration], quantile: f64) -> Option<Duration> {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The requests the service has in flight, from its `/metrics`.
async fn in_flight(addr: SocketAddr) -> anyhow::Result<u64> {
    let answer = call(addr, &RequestTemplate::get("/metrics")).await?;
    let text = String::from_utf8_lossy(&answer.body);
    parse_gauge(&text, IN_FLIGHT_GAUGE)
        .with_context(|| format!("/metrics has no {IN_FLIGHT_GAUGE} line"))
}

/// The value of gauge `name` in OpenMetrics text.
pub(super) fn parse_gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Fails unless this process may open `needed` files for `what`; the
/// service, started from it, inherits the same limit.
pub(super) fn ensure_open_files(what: &str, needed: u64) -> anyhow::Result<()> {
    let limits =
        fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    let soft = open_files_limit(&limits).context("/proc/self/limits has no Max open files line")?;
    if soft.is_some_and(|soft| soft < needed) {
        bail!(
            "{what} need {needed} open files in the bench and the service, and the limit is {}: raise it (ulimit -n) and run again",
            soft.map_or_else(|| "unlimited".to_owned(), |soft| soft.to_string())
        );
    }
    Ok(())
}

/// The soft limit of open files in a `/proc/<pid>/limits` text; `None`
/// inside when unlimited.
fn open_files_limit(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

fn waits_checks(results: &[WaitResults]) -> Vec<Check> {
    let mut checks = Vec::new();
    for scenario in results.iter().filter(|results| results.scenario.judged) {
        let name = scenario.scenario.name();
        checks.push(Check::below(
            &format!(
                "{name}: RSS added while {} requests wait",
                thousands(WAITERS as u64)
            ),
            scenario.rss_added(),
            MAX_ADDED_RSS,
            mebibytes,
            "unavailable",
            scenario.all_waiting_ahead.is_some(),
        ));
        checks.push(Check::below(
            &format!("{name}: median wake-up after the run's end"),
            scenario.wake_up(0.5),
            MAX_WAKE_UP_P50,
            millis,
            "no answer",
            true,
        ));
        checks.push(Check {
            target: format!(
                "{name}: all {} waited at once and were answered 200 with their run ended when due",
                thousands(WAITERS as u64)
            ),
            measured: format!(
                "{} answered so, {}",
                thousands(scenario.wake_ups.len() as u64),
                waiting_ahead(scenario),
            ),
            passed: scenario.valid(),
        });
    }
    checks
}

/// When all the requests were waiting, in words.
fn waiting_ahead(results: &WaitResults) -> String {
    results.all_waiting_ahead.map_or_else(
        || "not all waiting before the first end".to_owned(),
        |ahead| format!("all waiting {} before the first end", millis(ahead)),
    )
}

fn waits_report(results: &[WaitResults]) -> Report {
    let rss: Vec<RssReadings> = results.iter().map(|results| results.rss).collect();
    let mut rows = vec![
        Row::across("instants the waits end at", results, |results| {
            Cell::Count(results.scenario.ends as u64)
        }),
        Row::across("from the first end to the last", results, |results| {
            Cell::latency(results.ends_span)
        }),
    ];
    rows.extend(RssReadings::rows(
        &rss,
        "RSS before the waits / while all wait",
        WAITERS as u64,
        "waiting request",
    ));
    rows.extend(Row::quantiles("wake-up", results, WaitResults::wake_up));
    rows.push(Row::across("answered as expected", results, |results| {
        Cell::Count(results.wake_ups.len() as u64)
    }));
    let notes = results
        .iter()
        .map(|results| {
            let clock = results.clock_excess.map_or_else(String::new, |excess| {
                format!(
                    "; every run's `created_at` within the bench's send and arrival of its execute to {} µs",
                    excess.as_micros()
                )
            });
            format!(
                "{}: load average {} before; {}{clock}.",
                results.scenario.name(),
                results.load_average,
                waiting_ahead(results),
            )
        })
        .collect();
    Report {
        title: format!("{} waiting requests", thousands(WAITERS as u64)),
        setup: format!(
            "`cargo xtask bench` ({} requests at once, a connection each: on `maestro`, memory backend with {RUN_SECONDS} s runs, `?wait_seconds={WAIT_SECONDS}`; on the bare axum baseline, a timer to the same instants): a fresh server per column, wake-up = the answer's arrival less the end (a run's `created_at` + {RUN_SECONDS} s).",
            thousands(WAITERS as u64)
        ),
        corner: String::new(),
        columns: results
            .iter()
            .map(|results| {
                let judged = if results.scenario.judged {
                    ""
                } else {
                    " (not judged)"
                };
                format!("{}{judged}", results.scenario.name())
            })
            .collect(),
        rows,
        checks: waits_checks(results),
        notes,
    }
}

// ---------------------------------------------------------------------
// Shared set-up.
// ---------------------------------------------------------------------

/// A fixture with `pipelines`, all of [`BENCH_CUSTOMER`].
fn fixture(pipelines: &[Uuid]) -> anyhow::Result<NamedTempFile> {
    let owned: Vec<(Uuid, &str)> = pipelines.iter().map(|id| (*id, BENCH_CUSTOMER)).collect();
    customers_fixture(&owned)
}

/// A fixture with `pipelines`, each of the customer beside it.
pub(super) fn customers_fixture(pipelines: &[(Uuid, &str)]) -> anyhow::Result<NamedTempFile> {
    let fixture = tempfile::Builder::new()
        .prefix("maestro-bench-lifecycle-")
        .suffix(".json")
        .tempfile()
        .context("cannot create the fixture file")?;
    let json = json!({"pipelines": pipelines
        .iter()
        .enumerate()
        .map(|(index, (id, customer))| json!({
            "id": id.hyphenated().to_string(),
            "customer_id": customer,
            "name": format!("bench-{index}"),
        }))
        .collect::<Vec<_>>()});
    serde_json::to_writer(fixture.as_file(), &json).context("cannot write the fixture file")?;
    Ok(fixture)
}

/// The memory backend over `fixture`, with runs of `run_seconds`, and
/// `waits` requests allowed to wait at once when given.
pub(super) fn memory_env(
    fixture: &NamedTempFile,
    run_seconds: u64,
    waits: Option<usize>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MAESTRO_BACKEND", "memory".to_owned()),
        ("MAESTRO_MEMORY_RUN_SECONDS", run_seconds.to_string()),
        (
            "MAESTRO_MEMORY_FIXTURE",
            fixture.path().to_string_lossy().into_owned(),
        ),
    ];
    if let Some(waits) = waits {
        env.push(("MAESTRO_MAX_WAITS_PER_CUSTOMER", waits.to_string()));
    }
    env
}

/// `GET` of one run, with `?wait_seconds=` when `wait_seconds` is not 0.
fn run_path(pipeline: Uuid, run_id: &str, wait_seconds: u64) -> String {
    let mut path = format!(
        "/platform/pipeline/{}/pipeline_run/{}",
        pipeline.hyphenated(),
        utf8_percent_encode(run_id, NON_ALPHANUMERIC)
    );
    if wait_seconds > 0 {
        path.push_str(&format!("?wait_seconds={wait_seconds}"));
    }
    path
}

/// Sends one set-up request on a connection of its own; its answer, which
/// must be a 200.
pub(super) async fn call(addr: SocketAddr, request: &RequestTemplate) -> anyhow::Result<Answer> {
    call_for(addr, request, StatusCode::OK).await
}

/// Sends one set-up request on a connection of its own; its answer, which
/// must have status `expected`.
pub(super) async fn call_for(
    addr: SocketAddr,
    request: &RequestTemplate,
    expected: StatusCode,
) -> anyhow::Result<Answer> {
    let answer = http::send_once(addr, request, CALL_TIMEOUT)
        .await
        .with_context(|| format!("{} {} got no answer", request.method, request.path))?;
    if answer.status != expected {
        bail!(
            "{} {} answered {}: {}",
            request.method,
            request.path,
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(answer)
}

/// The run id in an execute's answer.
pub(super) fn run_id_of(answer: &Value) -> anyhow::Result<String> {
    answer["data"]["run_id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("execute answered without a run id: {answer}"))
}

/// The instant a run was created, which its id names
/// (`manual__2024-12-18T10:30:00.000000+00:00`).
pub(super) fn created_of(run_id: &str) -> anyhow::Result<DateTime<Utc>> {
    run_id
        .strip_prefix("manual__")
        .and_then(instant)
        .with_context(|| format!("the run id {run_id} does not name an instant"))
}

/// The instant an RFC 3339 text names, such as a run's `updated_at`.
pub(super) fn instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::HeaderMap;

    fn at(text: &str) -> DateTime<Utc> {
        instant(text).expect("an instant")
    }

    fn answer(status: StatusCode, body: &Value) -> Result<Answer, TransportError> {
        Ok(Answer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        })
    }

    fn finished(created: &str, updated: &str) -> Value {
        json!({
            "pipeline_run_id": format!("manual__{created}"),
            "pipeline_id": "0b4c2d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
            "last_status": "SUCCESS",
            "created_at": created,
            "updated_at": updated,
            "trace": null,
            "conf": {},
        })
    }

    const CREATED: &str = "2026-11-29T10:00:00.123456+00:00";
    const ENDED: &str = "2026-11-29T10:00:03.123456+00:00";

    #[test]
    fn the_wake_up_runs_from_created_at_plus_the_run_length_to_the_arrival() {
        let body = finished(CREATED, ENDED);
        let arrival = at("2026-11-29T10:00:03.125706+00:00");
        assert_eq!(
            wake_up(
                Server::Maestro,
                answer(StatusCode::OK, &body),
                arrival,
                TimeDelta::seconds(3)
            ),
            Ok(Duration::from_micros(2_250))
        );
        // An answer arriving at the very instant is a wake-up of zero.
        assert_eq!(
            wake_up(
                Server::Maestro,
                answer(StatusCode::OK, &body),
                at(ENDED),
                TimeDelta::seconds(3)
            ),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn an_answer_before_the_end_or_of_a_run_not_ended_when_due_is_no_wake_up() {
        let length = TimeDelta::seconds(3);
        let early = wake_up(
            Server::Maestro,
            answer(StatusCode::OK, &finished(CREATED, ENDED)),
            at("2026-11-29T10:00:03.000000+00:00"),
            length,
        );
        assert!(early.unwrap_err().contains("before its end"));
        // A run that queued first ends later than created + length: its
        // end is not the instant the wait was for.
        let late = finished(CREATED, "2026-11-29T10:00:04.123456+00:00");
        let err = wake_up(
            Server::Maestro,
            answer(StatusCode::OK, &late),
            at(ENDED),
            length,
        )
        .unwrap_err();
        assert!(err.contains("not when due"), "{err}");
        // The wait ran out with the run still running.
        let mut running = finished(CREATED, CREATED);
        running["last_status"] = json!("RUNNING");
        let err = wake_up(
            Server::Maestro,
            answer(StatusCode::OK, &running),
            at(ENDED),
            length,
        )
        .unwrap_err();
        assert_eq!(err, r#"answered with the run "RUNNING""#);
        let err = wake_up(
            Server::Maestro,
            answer(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": "TooManyWaits"}),
            ),
            at(ENDED),
            length,
        )
        .unwrap_err();
        assert!(err.starts_with("answered 429"), "{err}");
        let err = wake_up(
            Server::Maestro,
            Err(TransportError::Timeout(Duration::from_secs(70))),
            at(ENDED),
            length,
        )
        .unwrap_err();
        assert_eq!(err, "no answer: no answer within 70s");
    }

    #[test]
    fn on_the_baseline_the_wake_up_runs_from_the_instant_it_answers() {
        let due = at(ENDED);
        let body = json!({"due_unix_micros": due.timestamp_micros()});
        assert_eq!(
            wake_up(
                Server::Baseline,
                answer(StatusCode::OK, &body),
                due + TimeDelta::microseconds(1_500),
                TimeDelta::seconds(3),
            ),
            Ok(Duration::from_micros(1_500))
        );
        let err = wake_up(
            Server::Baseline,
            answer(StatusCode::OK, &json!({"status": "ok"})),
            due,
            TimeDelta::seconds(3),
        )
        .unwrap_err();
        assert!(err.starts_with("the baseline answered"), "{err}");
    }

    #[test]
    fn quantiles_are_taken_by_nearest_rank() {
        let values: Vec<Duration> = (1..=1_000).map(Duration::from_micros).collect();
        assert_eq!(nearest_rank(&values, 0.5), Some(Duration::from_micros(500)));
        assert_eq!(
            nearest_rank(&values, 0.99),
            Some(Duration::from_micros(990))
        );
        assert_eq!(
            nearest_rank(&values, 1.0),
            Some(Duration::from_micros(1_000))
        );
        assert_eq!(nearest_rank(&values, 0.0), Some(Duration::from_micros(1)));
        let three = [1, 2, 3].map(Duration::from_millis);
        assert_eq!(nearest_rank(&three, 0.5), Some(Duration::from_millis(2)));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[test]
    fn an_instant_outside_a_span_is_measured_from_its_nearer_end() {
        let (from, to) = (at(CREATED), at("2026-11-29T10:00:00.124456+00:00"));
        assert_eq!(outside(at(CREATED), from, to), Duration::ZERO);
        assert_eq!(
            outside(at("2026-11-29T10:00:00.123400+00:00"), from, to),
            Duration::from_micros(56)
        );
        assert_eq!(
            outside(at("2026-11-29T10:00:00.125456+00:00"), from, to),
            Duration::from_micros(1_000)
        );
    }

    #[test]
    fn the_run_id_names_the_instant_the_run_was_created() {
        assert_eq!(
            created_of(&format!("manual__{CREATED}")).unwrap(),
            at(CREATED)
        );
        assert!(created_of("scheduled__2026-11-29T10:00:00+00:00").is_err());
        assert!(created_of("manual__yesterday").is_err());
    }

    #[test]
    fn the_wall_clock_moves_on_with_the_monotonic_clock() {
        let clock = WallClock::start();
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let second = clock.now();
        assert!(second - first >= TimeDelta::milliseconds(2));
        // Started a moment ago: it agrees with the system clock.
        assert!((Utc::now() - second).abs() < TimeDelta::seconds(1));
    }

    #[test]
    fn the_in_flight_gauge_is_read_from_the_metrics_text() {
        let text = "# HELP maestro_http_requests_in_flight HTTP requests received and not yet answered.\n\
                    # TYPE maestro_http_requests_in_flight gauge\n\
                    maestro_http_requests_in_flight 1001\n\
                    maestro_http_requests_in_flight_other 3\n\
                    # EOF\n";
        assert_eq!(parse_gauge(text, IN_FLIGHT_GAUGE), Some(1_001));
        assert_eq!(parse_gauge("# EOF\n", IN_FLIGHT_GAUGE), None);
    }

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(Some(1_024)));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(open_files_limit(unlimited), Some(None));
        assert_eq!(open_files_limit("Max processes 1 1 processes\n"), None);
    }

    #[test]
    fn the_conf_is_exactly_1_kib_of_compact_json_without_the_reserved_key() {
        let conf = sized_conf(CONF_BYTES);
        assert_eq!(serde_json::to_vec(&conf).unwrap().len(), 1_024);
        assert!(conf.get("maestro").is_none());
        assert_eq!(serde_json::to_vec(&sized_conf(2_048)).unwrap().len(), 2_048);
        let request = execute_with_conf("t", Uuid::nil(), &conf).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["conf"], conf);
        assert_eq!(body["pipeline_id"], Uuid::nil().hyphenated().to_string());
    }

    #[test]
    fn run_paths_percent_encode_the_run_id_and_ask_for_the_wait() {
        let pipeline = Uuid::nil();
        assert_eq!(
            run_path(pipeline, "manual__2026-11-29T10:00:00.000000+00:00", 60),
            "/platform/pipeline/00000000-0000-0000-0000-000000000000/pipeline_run/manual%5F%5F2026%2D11%2D29T10%3A00%3A00%2E000000%2B00%3A00?wait_seconds=60"
        );
        assert!(!run_path(pipeline, "r", 0).contains('?'));
    }

    #[test]
    fn the_fixture_holds_every_pipeline_of_the_bench_customer() {
        let pipelines = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let fixture = fixture(&pipelines).unwrap();
        let env = memory_env(&fixture, 3, Some(1_000));
        let env: std::collections::HashMap<_, _> = env.into_iter().collect();
        assert_eq!(env["MAESTRO_MEMORY_RUN_SECONDS"], "3");
        assert_eq!(env["MAESTRO_MAX_WAITS_PER_CUSTOMER"], "1000");
        let text = fs::read_to_string(&env["MAESTRO_MEMORY_FIXTURE"]).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let listed = json["pipelines"].as_array().unwrap();
        assert_eq!(listed.len(), 3);
        assert!(
            listed
                .iter()
                .all(|pipeline| pipeline["customer_id"] == BENCH_CUSTOMER)
        );
        assert_eq!(listed[2]["id"], pipelines[2].hyphenated().to_string());
        assert!(
            !memory_env(&fixture, 0, None)
                .iter()
                .any(|(name, _)| name.contains("WAITS"))
        );
    }

    fn summary(requests_per_second: f64) -> Summary {
        Summary::all_answered(50_000, requests_per_second, 1_000, 3_000)
    }

    fn conf_results() -> ConfResults {
        ConfResults {
            connections: 32,
            requests: 50_000,
            warmup: 5_000,
            cpus: 2,
            load_average: "1.00 1.00 1.00".to_owned(),
            plain: summary(20_000.0),
            with_conf: summary(19_000.0),
            conf_read_back: true,
            floor_plain: summary(40_000.0),
            floor_conf: summary(37_000.0),
        }
    }

    #[test]
    fn execute_with_conf_under_0_9x_fails_that_target_alone() {
        let mut results = conf_results();
        assert_eq!(report::missed(&conf_checks(&results)), Vec::<String>::new());
        results.with_conf.requests_per_second = 17_999.0;
        assert_eq!(
            report::missed(&conf_checks(&results)),
            ["execute with a 1 KiB conf: throughput >= 0.9x execute without conf"]
        );
        results.with_conf.requests_per_second = 18_000.0;
        assert!(report::missed(&conf_checks(&results)).is_empty());
        results.conf_read_back = false;
        results.plain.non_2xx = 1;
        assert_eq!(
            report::missed(&conf_checks(&results)),
            [
                "every execute with and without conf answered 2xx",
                "a run triggered with the conf gives it back"
            ]
        );
    }

    #[test]
    fn the_conf_report_gives_both_sides_and_the_ratio() {
        let markdown = conf_report(&conf_results()).markdown();
        assert!(
            markdown.contains("| | without conf | 1 KiB conf |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| throughput / without conf | 1.00x | 0.95x |"),
            "{markdown}"
        );
        assert_eq!(markdown.matches("| PASS |").count(), 3, "{markdown}");
        assert!(
            markdown
                .contains("| the contract's floor: throughput / without conf | 1.00x | 0.93x |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("keeps 0.93x of its throughput with the `conf`, the service 0.95x"),
            "{markdown}"
        );
    }

    fn wait_results(judged: bool, wake_up_micros: u64) -> WaitResults {
        WaitResults {
            scenario: Scenario {
                judged,
                ..Scenario::MAESTRO_EACH
            },
            load_average: "1.00 1.00 1.00".to_owned(),
            ends_span: Duration::from_millis(999),
            rss: RssReadings {
                before: Some(10 * 1024 * 1024),
                holding: Some(20 * 1024 * 1024),
            },
            all_waiting_ahead: Some(Duration::from_millis(1_500)),
            // 1,000 wake-ups from 1 µs to `wake_up_micros` µs.
            wake_ups: (1..=1_000)
                .map(|rank| Duration::from_micros(rank * wake_up_micros / 1_000))
                .collect(),
            problems: Vec::new(),
            clock_excess: Some(Duration::ZERO),
        }
    }

    #[test]
    fn waits_within_both_targets_pass_and_each_target_fails_on_its_own() {
        let good = wait_results(true, 4_000);
        assert!(report::missed(&waits_checks(std::slice::from_ref(&good))).is_empty());
        assert_eq!(good.rss_added(), Some(10 * 1024 * 1024));
        assert_eq!(good.wake_up(0.5), Some(Duration::from_micros(2_000)));

        let mut heavy = good.clone();
        heavy.rss.holding = Some(26 * 1024 * 1024);
        assert_eq!(
            report::missed(&waits_checks(&[heavy])),
            [
                "maestro, a run each, ends 1 ms apart: RSS added while 1,000 requests wait < 16.0 MiB"
            ]
        );

        let slow = wait_results(true, 10_000);
        assert_eq!(slow.wake_up(0.5), Some(Duration::from_millis(5)));
        assert_eq!(
            report::missed(&waits_checks(&[slow])),
            ["maestro, a run each, ends 1 ms apart: median wake-up after the run's end < 5.00 ms"]
        );
    }

    #[test]
    fn waits_not_all_in_place_or_answered_wrongly_fail() {
        let mut late = wait_results(true, 4_000);
        late.all_waiting_ahead = None;
        assert_eq!(
            report::missed(&waits_checks(&[late])),
            [
                "maestro, a run each, ends 1 ms apart: RSS added while 1,000 requests wait < 16.0 MiB",
                "maestro, a run each, ends 1 ms apart: all 1,000 waited at once and were answered 200 with their run ended when due",
            ]
        );
        let mut wrong = wait_results(true, 4_000);
        wrong.wake_ups.pop();
        wrong.problems.push("answered 429".to_owned());
        assert_eq!(
            report::missed(&waits_checks(&[wrong])),
            [
                "maestro, a run each, ends 1 ms apart: all 1,000 waited at once and were answered 200 with their run ended when due"
            ]
        );
    }

    #[test]
    fn a_scenario_that_is_not_judged_is_shown_without_targets() {
        let results = [wait_results(true, 4_000), wait_results(false, 40_000)];
        let checks = waits_checks(&results);
        assert_eq!(checks.len(), 3);
        assert!(report::missed(&checks).is_empty());
        let markdown = waits_report(&results).markdown();
        assert!(
            markdown.contains("| wake-up p50 | 2.00 ms | 20.00 ms |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| RSS added per waiting request, bytes | 10,485 | 10,485 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| from the first end to the last | 999.00 ms | 999.00 ms |"),
            "{markdown}"
        );
        assert!(markdown.contains("(not judged)"), "{markdown}");
    }
}
