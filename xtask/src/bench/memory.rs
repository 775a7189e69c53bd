//! The main comparison of `cargo xtask bench`: the release `maestro` on the
//! memory backend against the bare axum baseline, loaded with the same
//! requests in alternating turns, and the targets for it.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;

use super::{
    Args, ExecuteLoad, STARTUP_TIMEOUT,
    airflow::{TURNS, in_turns},
    openloop::{self, OpenLoopReport, OpenLoopSpec, OpenLoopSummary},
    report::{
        Cell, Check, Report, Row, Summary, failures, mebibytes, millis, ratio, thousands, times,
    },
    report_first_problem, start_floor, start_maestro,
};
use crate::{
    load,
    process::{ChildGuard, free_local_addr, resident_set_size},
};

/// Throughput (with `RUST_LOG=warn`) must be at least this share of the
/// baseline's.
const MIN_THROUGHPUT_RATIO: f64 = 0.85;
/// The service's p99 latency must not exceed this.
const MAX_P99: Duration = Duration::from_millis(5);
/// The service's resident memory after the load must stay under this.
const MAX_RSS_BYTES: u64 = 64 * 1024 * 1024;
/// The number of executes the memory target speaks of.
const RSS_TARGET_EXECUTES: u64 = 200_000;
/// With the default logging (an access-log line a request), throughput
/// must be at least this share of the baseline's.
const MIN_LOGGED_THROUGHPUT_RATIO: f64 = 0.8;
/// The open-loop runs send at this share of the baseline's closed-loop
/// throughput.
const OPEN_LOOP_SHARE: f64 = 0.7;
/// The connections that take the open-loop schedule's requests: at the
/// rate and latencies measured, a dozen are busy at a time, so a slow
/// answer holds up none of the others' requests.
const OPEN_LOOP_CONNECTIONS: usize = 64;
/// The open-loop schedule runs this long before it is measured.
const OPEN_LOOP_WARMUP: Duration = Duration::from_secs(1);
/// The service's open-loop p99 latency must not exceed this.
const MAX_OPEN_LOOP_P99: Duration = Duration::from_millis(2);
/// The service's open-loop p99.9 latency must not exceed this.
const MAX_OPEN_LOOP_P999: Duration = Duration::from_millis(5);

/// How a run was set up, for the report's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// The service's backend.
    backend: &'static str,
    /// Concurrent connections.
    connections: usize,
    /// Measured requests per target.
    requests: u64,
    /// Warm-up requests per target.
    warmup: u64,
    /// CPUs available to this process.
    cpus: usize,
    /// Seconds each open-loop run measured; `None` when they were skipped.
    open_loop_seconds: Option<u64>,
}

/// The open-loop runs at one rate, service and baseline.
#[derive(Debug, Clone, PartialEq)]
struct OpenLoop {
    /// The service.
    service: OpenLoopSummary,
    /// The bare axum baseline.
    baseline: OpenLoopSummary,
}

/// The access log's line formats: text, the default, and JSON, which the
/// deployments in `deploy/` set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LogLines {
    Text,
    Json,
}

impl LogLines {
    /// The settings that turn the access log on in this format.
    fn settings(self) -> &'static str {
        match self {
            Self::Text => "RUST_LOG=info",
            Self::Json => "RUST_LOG=info, MAESTRO_LOG_FORMAT=json",
        }
    }

    /// What the service is started with, beside the bench's settings.
    fn env(self) -> Vec<(&'static str, String)> {
        let mut env = vec![("RUST_LOG", "info".to_owned())];
        if self == Self::Json {
            env.push(("MAESTRO_LOG_FORMAT", "json".to_owned()));
        }
        env
    }

    /// The file the lines go to, in `target/bench`.
    fn file(self) -> &'static str {
        match self {
            Self::Text => "maestro-access.log",
            Self::Json => "maestro-access.json.log",
        }
    }
}

/// The service with the access log on (one line a request, to a file) and
/// the baseline, loaded in alternating turns.
#[derive(Debug, Clone, PartialEq)]
struct Logged {
    /// The service with the access log.
    service: Summary,
    /// The bare baseline in the same turns.
    baseline: Summary,
}

impl Logged {
    /// The logged service's throughput as a share of the baseline's.
    fn ratio(&self) -> Option<f64> {
        ratio(
            self.service.requests_per_second,
            self.baseline.requests_per_second,
        )
    }
}

/// The contract's floor (`bench/floor.rs`) and the baseline, loaded in
/// alternating turns.
#[derive(Debug, Clone, PartialEq)]
struct Floor {
    /// Bare axum doing the contract's own work.
    floor: Summary,
    /// The bare baseline in the same turns.
    baseline: Summary,
}

impl Floor {
    /// The floor's throughput as a share of the baseline's.
    fn ratio(&self) -> Option<f64> {
        ratio(
            self.floor.requests_per_second,
            self.baseline.requests_per_second,
        )
    }
}

/// Everything one comparison measured.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    /// How the run was set up.
    settings: Settings,
    /// The service under load.
    service: Summary,
    /// The bare axum baseline under the same load, in the same turns.
    baseline: Summary,
    /// The service with the default logging, on the memory backend.
    logged: Option<Logged>,
    /// The service with the access log as JSON lines, on the memory
    /// backend.
    logged_json: Option<Logged>,
    /// The service's RSS once started, before any request.
    service_rss_idle: Option<u64>,
    /// The service's RSS after the warm-up and the measured phase.
    service_rss_after: Option<u64>,
    /// The open-loop runs, unless skipped.
    open_loop: Option<OpenLoop>,
    /// The contract's floor, on the memory backend.
    floor: Option<Floor>,
}

impl Results {
    /// Service throughput as a share of the baseline's.
    fn throughput_ratio(&self) -> Option<f64> {
        ratio(
            self.service.requests_per_second,
            self.baseline.requests_per_second,
        )
    }

    /// Executes the service had served when its RSS was read.
    fn executes(&self) -> u64 {
        self.settings.warmup + self.settings.requests
    }
}

/// Loads the service and the baseline in alternating turns, and reports
/// both.
///
/// # Errors
/// When starting or loading a server fails.
pub(super) async fn run(args: &Args, maestro: &Path) -> anyhow::Result<Report> {
    Ok(report(&measure(args, maestro).await?))
}

async fn measure(args: &Args, maestro: &Path) -> anyhow::Result<Results> {
    let load = ExecuteLoad::new(args, args.requests)?;
    let plan = load.plan();

    // Both servers are up together and loaded in alternating turns, so
    // that the machine's drift over the run (a shared host's neighbours
    // come and go) falls on both sides alike. Each open-loop run follows,
    // the baseline's first, at a share of its closed-loop throughput.
    let (_baseline, baseline_addr) = super::start_baseline(&[]).await?;
    let setup = args.backend.prepare(load.pipeline)?;
    let (server, addr) = start_maestro(maestro, &load.secret, &setup.env).await?;
    let service_rss_idle = resident_set_size(server.id()).ok();
    println!(
        "== maestro ({} backend) on {addr} and the baseline (bare axum) on {baseline_addr}, in {TURNS} alternating turns: {plan}",
        args.backend.name()
    );
    let (baseline, service) = in_turns(&load.at(baseline_addr), &load.at(addr)).await?;
    let service_rss_after = match resident_set_size(server.id()) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            eprintln!("warning: {err:#}");
            None
        }
    };
    let open = match open_loop_rate(args, &baseline) {
        Some(rate) => {
            let baseline =
                measure_open_loop("baseline (bare axum)", args, &load, baseline_addr, rate).await?;
            let service = measure_open_loop("maestro", args, &load, addr, rate).await?;
            Some(OpenLoop {
                service: OpenLoopSummary::new(&service),
                baseline: OpenLoopSummary::new(&baseline),
            })
        }
        None => None,
    };
    drop(server);
    let (floor, logged, logged_json) = if args.backend.name() == "memory" {
        (
            Some(measure_floor(&load, baseline_addr).await?),
            Some(measure_logged(maestro, &load, &setup.env, baseline_addr, LogLines::Text).await?),
            Some(measure_logged(maestro, &load, &setup.env, baseline_addr, LogLines::Json).await?),
        )
    } else {
        (None, None, None)
    };
    drop(setup);

    report_first_problem("maestro", &service);
    report_first_problem("the baseline", &baseline);
    Ok(Results {
        settings: Settings {
            backend: args.backend.name(),
            connections: args.connections,
            requests: args.requests,
            warmup: args.warmup,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            open_loop_seconds: (!args.no_open_loop).then_some(args.open_loop_seconds),
        },
        service: Summary::new(&service, args.requests),
        baseline: Summary::new(&baseline, args.requests),
        logged,
        logged_json,
        service_rss_idle,
        service_rss_after,
        open_loop: open,
        floor,
    })
}

/// Loads the contract's floor and the baseline at `baseline` in
/// alternating turns.
async fn measure_floor(load: &ExecuteLoad, baseline: SocketAddr) -> anyhow::Result<Floor> {
    let (_floor, addr) = start_floor(&load.secret, &[load.pipeline]).await?;
    println!(
        "== the contract's floor (bare axum doing the contract's own work) on {addr}, in {TURNS} alternating turns with the baseline: {}",
        load.plan()
    );
    let (bare, floor) = in_turns(&load.at(baseline), &load.at(addr)).await?;
    report_first_problem("the contract's floor", &floor);
    Ok(Floor {
        floor: Summary::new(&floor, load.requests),
        baseline: Summary::new(&bare, load.requests),
    })
}

/// The open-loop rate after a closed-loop run of the baseline: a share of
/// its throughput; `None` when the open-loop runs are skipped.
fn open_loop_rate(args: &Args, baseline: &load::LoadReport) -> Option<f64> {
    if args.no_open_loop {
        return None;
    }
    openloop::rate_at(OPEN_LOOP_SHARE, baseline.requests_per_second())
}

/// The open-loop run of the server on `addr` at `rate`.
async fn measure_open_loop(
    name: &str,
    args: &Args,
    load: &ExecuteLoad,
    addr: std::net::SocketAddr,
    rate: f64,
) -> anyhow::Result<OpenLoopReport> {
    println!(
        "== {name} open-loop on {addr}: {} req/s for {} s after {} s of warm-up, over {OPEN_LOOP_CONNECTIONS} connections",
        thousands(rate.round() as u64),
        args.open_loop_seconds,
        OPEN_LOOP_WARMUP.as_secs(),
    );
    let report = openloop::run(&OpenLoopSpec {
        addr,
        connections: OPEN_LOOP_CONNECTIONS,
        rate,
        warmup: OPEN_LOOP_WARMUP,
        duration: Duration::from_secs(args.open_loop_seconds),
        request: load.request.clone(),
    })
    .await?;
    if !report.failures_by_status.is_empty() {
        eprintln!(
            "{name} (open-loop) answered non-2xx statuses: {:?}",
            report.failures_by_status
        );
    }
    if let Some(err) = &report.first_transport_error {
        eprintln!("{name} (open-loop): first transport error: {err}");
    }
    println!(
        "   the pool took each request at most {} after it was due",
        millis(report.max_queue_wait)
    );
    Ok(report)
}

/// The service under the same load with the access log on in `lines`, its
/// log (one line a request) written to a file in `target/bench` as a log
/// collector would read it, in alternating turns with the baseline at
/// `baseline`.
async fn measure_logged(
    maestro: &Path,
    load: &ExecuteLoad,
    env: &[(&'static str, String)],
    baseline: SocketAddr,
    lines: LogLines,
) -> anyhow::Result<Logged> {
    let dir = crate::project_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(lines.file());
    let log = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut env = env.to_vec();
    env.extend(lines.env());
    let addr = free_local_addr()?;
    let mut command = super::maestro_command(maestro, addr, &load.secret, &env);
    command.stderr(log);
    let mut server = ChildGuard::spawn("maestro", &mut command)?;
    server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
    println!(
        "== maestro with the access log ({}, to {}) on {addr}, in {TURNS} alternating turns with the baseline: {}",
        lines.settings(),
        path.display(),
        load.plan()
    );
    let (bare, logged) = in_turns(&load.at(baseline), &load.at(addr)).await?;
    report_first_problem("maestro with the access log", &logged);
    Ok(Logged {
        service: Summary::new(&logged, load.requests),
        baseline: Summary::new(&bare, load.requests),
    })
}

/// Checks the targets, plus the baseline's own health: a baseline
/// that failed requests makes the throughput ratio meaningless.
fn checks(results: &Results) -> Vec<Check> {
    let service = &results.service;
    let throughput = results.throughput_ratio();
    let rss = results.service_rss_after;
    let mut checks = vec![
        Check {
            target: format!("throughput >= {MIN_THROUGHPUT_RATIO}x the baseline"),
            measured: throughput.map_or_else(|| "no baseline throughput".to_owned(), times),
            passed: throughput.is_some_and(|ratio| ratio >= MIN_THROUGHPUT_RATIO),
        },
        Check {
            target: format!("p99 <= {}", millis(MAX_P99)),
            measured: millis(service.p99),
            passed: service.answered > 0 && service.p99 <= MAX_P99,
        },
        Check {
            target: "zero non-2xx answers".to_owned(),
            measured: failures(service),
            passed: service.all_2xx(),
        },
        Check {
            target: format!(
                "RSS < {} after {} executes",
                mebibytes(MAX_RSS_BYTES),
                thousands(RSS_TARGET_EXECUTES)
            ),
            measured: rss.map_or_else(
                || "unavailable".to_owned(),
                |bytes| {
                    format!(
                        "{} after {} executes",
                        mebibytes(bytes),
                        thousands(results.executes())
                    )
                },
            ),
            passed: rss.is_some_and(|bytes| bytes < MAX_RSS_BYTES),
        },
        logged_check(results.logged.as_ref(), LogLines::Text),
        logged_check(results.logged_json.as_ref(), LogLines::Json),
        Check {
            target: "the baseline answered every request 2xx".to_owned(),
            measured: failures(&results.baseline),
            passed: results.baseline.all_2xx(),
        },
    ];
    if let Some(open) = &results.open_loop {
        checks.extend(open_loop_checks(open));
    }
    checks
}

/// The open-loop targets: the service's tail at the fixed rate, every
/// request of both runs answered 2xx.
fn open_loop_checks(open: &OpenLoop) -> Vec<Check> {
    let service = &open.service;
    let unanswered = |run: &OpenLoopSummary| {
        format!(
            "{} failed or unanswered",
            thousands(run.failed + run.scheduled.saturating_sub(run.answered))
        )
    };
    vec![
        Check {
            target: format!("open-loop p99 <= {}", millis(MAX_OPEN_LOOP_P99)),
            measured: millis(service.p99),
            passed: service.answered > 0 && service.p99 <= MAX_OPEN_LOOP_P99,
        },
        Check {
            target: format!("open-loop p99.9 <= {}", millis(MAX_OPEN_LOOP_P999)),
            measured: millis(service.p999),
            passed: service.answered > 0 && service.p999 <= MAX_OPEN_LOOP_P999,
        },
        Check {
            target: "open-loop: every request answered 2xx, by the service and the baseline"
                .to_owned(),
            measured: format!(
                "service {}, baseline {}",
                unanswered(service),
                unanswered(&open.baseline)
            ),
            passed: service.all_2xx() && open.baseline.all_2xx(),
        },
    ]
}

/// The service and the baseline side by side, each row with its ratio,
/// and the service's memory.
/// The target for the access log in `lines`: met when its run, judged
/// against the baseline of its own turns, keeps the share it must.
fn logged_check(logged: Option<&Logged>, lines: LogLines) -> Check {
    Check {
        target: format!(
            "with the access log on ({}): throughput >= {MIN_LOGGED_THROUGHPUT_RATIO}x the baseline",
            lines.settings()
        ),
        measured: logged.map_or_else(
            || "not measured on this backend".to_owned(),
            |logged| {
                logged
                    .ratio()
                    .map_or_else(|| "no baseline throughput".to_owned(), times)
            },
        ),
        passed: logged.is_none_or(|logged| {
            logged.service.all_2xx()
                && logged.baseline.all_2xx()
                && logged
                    .ratio()
                    .is_some_and(|ratio| ratio >= MIN_LOGGED_THROUGHPUT_RATIO)
        }),
    }
}

/// The report's rows for the access log in `lines`.
fn logged_rows(logged: &Logged, lines: LogLines) -> [Row; 2] {
    let p99 = match lines {
        LogLines::Text => "p99 latency with the access log",
        LogLines::Json => "p99 latency with the access log as JSON lines",
    };
    [
        Row::new(
            format!(
                "throughput with the access log ({}), in its own turns",
                lines.settings()
            ),
            vec![
                Cell::Throughput(logged.service.requests_per_second),
                Cell::Throughput(logged.baseline.requests_per_second),
                Cell::Ratio(logged.ratio()),
            ],
        ),
        Row::new(
            p99,
            vec![
                Cell::latency(logged.service.p99),
                Cell::latency(logged.baseline.p99),
                Cell::latency(logged.service.p99).ratio_to(&Cell::latency(logged.baseline.p99)),
            ],
        ),
    ]
}

fn report(results: &Results) -> Report {
    let settings = &results.settings;
    let mut rows = Summary::rows(&[&results.service, &results.baseline]);
    for row in &mut rows {
        let ratio = row.cells[0].ratio_to(&row.cells[1]);
        row.cells.push(ratio);
    }
    for (logged, lines) in [
        (&results.logged, LogLines::Text),
        (&results.logged_json, LogLines::Json),
    ] {
        if let Some(logged) = logged {
            rows.extend(logged_rows(logged, lines));
        }
    }
    if let Some(open) = &results.open_loop {
        rows.extend(OpenLoopSummary::rows(&[&open.service, &open.baseline]));
    }
    let mut notes = Vec::new();
    if let Some(floor) = &results.floor {
        rows.push(Row::new(
            "the contract's floor: throughput, in turns with the baseline",
            vec![
                Cell::Throughput(floor.floor.requests_per_second),
                Cell::Throughput(floor.baseline.requests_per_second),
                Cell::Ratio(floor.ratio()),
            ],
        ));
        if let (Some(service), Some(floor)) = (results.throughput_ratio(), floor.ratio()) {
            notes.push(format!(
                "The contract's floor is bare axum doing only the contract's own work for each execute (the token, the body, the pipeline, the run and its history, the event log, a count; bench/floor.rs): it keeps {} of the baseline's throughput, and the service {}, {} of the floor.",
                times(floor),
                times(service),
                times(service / floor),
            ));
        }
    }
    rows.push(Row::new(
        format!(
            "RSS idle / after {} executes",
            thousands(results.executes())
        ),
        vec![
            Cell::pair(
                Cell::Mebibytes(results.service_rss_idle),
                Cell::Mebibytes(results.service_rss_after),
            ),
            Cell::Empty,
            Cell::Empty,
        ],
    ));
    Report {
        title: format!(
            "{} backend against the bare axum baseline",
            settings.backend
        ),
        setup: format!(
            "`cargo xtask bench --backend {}`: {} connections, {} warm-up then {} measured requests per target, each in {TURNS} alternating turns with the baseline, {} CPUs.{}",
            settings.backend,
            settings.connections,
            thousands(settings.warmup),
            thousands(settings.requests),
            settings.cpus,
            open_loop_setup(results),
        ),
        corner: String::new(),
        columns: vec![
            format!("service ({} backend)", settings.backend),
            "bare axum baseline".to_owned(),
            "service / baseline".to_owned(),
        ],
        rows,
        checks: checks(results),
        notes,
    }
}

/// The open-loop runs' set-up, as a sentence after the closed-loop one;
/// empty when they were skipped.
fn open_loop_setup(results: &Results) -> String {
    match (&results.open_loop, results.settings.open_loop_seconds) {
        (Some(open), Some(seconds)) => format!(
            " Open-loop: {} req/s ({}% of the baseline's throughput) for {seconds} s after {} s of warm-up, over {OPEN_LOOP_CONNECTIONS} connections, each request timed from the instant it was due.",
            thousands(open.service.rate.round() as u64),
            (OPEN_LOOP_SHARE * 100.0).round(),
            OPEN_LOOP_WARMUP.as_secs(),
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests_per_second: f64, p99_micros: u64) -> Summary {
        Summary::all_answered(200_000, requests_per_second, p99_micros / 2, p99_micros)
    }

    /// A run that meets every target.
    fn good_run() -> Results {
        Results {
            settings: Settings {
                backend: "memory",
                connections: 32,
                requests: 200_000,
                warmup: 5_000,
                cpus: 2,
                open_loop_seconds: Some(10),
            },
            service: summary(45_000.0, 2_000),
            baseline: summary(50_000.0, 1_000),
            logged: Some(Logged {
                service: summary(42_000.0, 2_500),
                baseline: summary(50_000.0, 1_000),
            }),
            logged_json: Some(Logged {
                service: summary(41_000.0, 2_600),
                baseline: summary(50_000.0, 1_000),
            }),
            service_rss_idle: Some(8 * 1024 * 1024),
            service_rss_after: Some(20 * 1024 * 1024),
            open_loop: Some(OpenLoop {
                service: open_summary(1_500, 4_000),
                baseline: open_summary(500, 1_000),
            }),
            floor: Some(Floor {
                floor: summary(47_000.0, 1_500),
                baseline: summary(50_000.0, 1_000),
            }),
        }
    }

    fn open_summary(p99_micros: u64, p999_micros: u64) -> OpenLoopSummary {
        OpenLoopSummary {
            rate: 35_000.0,
            scheduled: 350_000,
            answered: 350_000,
            p50: Duration::from_micros(200),
            p99: Duration::from_micros(p99_micros),
            p999: Duration::from_micros(p999_micros),
            max: Duration::from_micros(p999_micros * 2),
            failed: 0,
        }
    }

    fn failed(results: &Results) -> Vec<String> {
        crate::bench::report::missed(&checks(results))
    }

    #[test]
    fn a_run_within_every_target_passes_them_all() {
        assert_eq!(failed(&good_run()), Vec::<String>::new());
    }

    #[test]
    fn the_access_log_costing_more_than_a_fifth_of_the_baseline_fails() {
        let mut results = good_run();
        if let Some(logged) = results.logged.as_mut() {
            logged.service.requests_per_second = 39_999.0;
        }
        let missed = failed(&results);
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert!(missed[0].contains("access log"), "{missed:?}");
        // Judged against the baseline of its own turns.
        if let Some(logged) = results.logged.as_mut() {
            logged.baseline.requests_per_second = 49_998.0;
        }
        assert_eq!(failed(&results), Vec::<String>::new());
        // A baseline that failed requests in those turns fails it too.
        if let Some(logged) = results.logged.as_mut() {
            logged.baseline.non_2xx = 1;
        }
        assert_eq!(failed(&results).len(), 1);
        // Another backend does not measure it, and misses nothing for it.
        results.logged = None;
        results.logged_json = None;
        assert_eq!(failed(&results), Vec::<String>::new());
    }

    #[test]
    fn json_access_lines_costing_more_than_a_fifth_of_the_baseline_fail_their_own_target() {
        let mut results = good_run();
        if let Some(logged) = results.logged_json.as_mut() {
            logged.service.requests_per_second = 39_999.0;
        }
        assert_eq!(
            failed(&results),
            [
                "with the access log on (RUST_LOG=info, MAESTRO_LOG_FORMAT=json): throughput >= 0.8x the baseline"
            ]
        );
    }

    #[test]
    fn throughput_under_0_85x_the_baseline_fails_that_target_alone() {
        let mut results = good_run();
        results.service.requests_per_second = 42_499.0;
        assert_eq!(failed(&results), ["throughput >= 0.85x the baseline"]);
        results.service.requests_per_second = 42_500.0;
        assert_eq!(failed(&results), Vec::<String>::new());
    }

    #[test]
    fn an_open_loop_tail_over_its_limits_fails_each_limit() {
        let mut results = good_run();
        results.open_loop = Some(OpenLoop {
            service: open_summary(2_001, 5_000),
            baseline: open_summary(500, 1_000),
        });
        assert_eq!(failed(&results), ["open-loop p99 <= 2.00 ms"]);
        results.open_loop = Some(OpenLoop {
            service: open_summary(2_000, 5_001),
            baseline: open_summary(500, 1_000),
        });
        assert_eq!(failed(&results), ["open-loop p99.9 <= 5.00 ms"]);
    }

    #[test]
    fn an_unanswered_open_loop_request_of_either_server_fails() {
        let mut results = good_run();
        if let Some(open) = results.open_loop.as_mut() {
            open.baseline.answered -= 1;
        }
        let missed = failed(&results);
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert!(
            missed[0].starts_with("open-loop: every request"),
            "{missed:?}"
        );
    }

    #[test]
    fn skipped_open_loop_runs_have_no_rows_and_no_targets() {
        let mut results = good_run();
        results.open_loop = None;
        results.settings.open_loop_seconds = None;
        assert_eq!(failed(&results), Vec::<String>::new());
        let markdown = report(&results).markdown();
        assert!(!markdown.contains("open-loop"), "{markdown}");
        assert!(!markdown.contains("Open-loop"), "{markdown}");
    }

    #[test]
    fn a_p99_over_5_ms_fails() {
        let mut results = good_run();
        results.service.p99 = Duration::from_micros(5_001);
        assert_eq!(failed(&results), ["p99 <= 5.00 ms"]);
    }

    #[test]
    fn any_non_2xx_or_unanswered_request_fails() {
        let mut results = good_run();
        results.service.non_2xx = 1;
        assert_eq!(failed(&results), ["zero non-2xx answers"]);
        let mut results = good_run();
        results.service.transport_errors = 1;
        results.service.answered = 199_999;
        assert_eq!(failed(&results), ["zero non-2xx answers"]);
    }

    #[test]
    fn rss_at_64_mib_or_unknown_fails() {
        let mut results = good_run();
        results.service_rss_after = Some(MAX_RSS_BYTES);
        assert_eq!(failed(&results), ["RSS < 64.0 MiB after 200,000 executes"]);
        results.service_rss_after = None;
        assert_eq!(failed(&results), ["RSS < 64.0 MiB after 200,000 executes"]);
    }

    #[test]
    fn a_baseline_that_failed_requests_fails_the_run() {
        let mut results = good_run();
        results.baseline.non_2xx = 3;
        assert_eq!(
            failed(&results),
            ["the baseline answered every request 2xx"]
        );
    }

    #[test]
    fn the_markdown_has_the_ratios_and_a_verdict_per_target() {
        let markdown = report(&good_run()).markdown();
        assert!(
            markdown.starts_with("`cargo xtask bench --backend memory`: 32 connections, 5,000 warm-up then 200,000 measured requests per target, each in 10 alternating turns with the baseline, 2 CPUs. Open-loop: 35,000 req/s (70% of the baseline's throughput) for 10 s after 1 s of warm-up, over 64 connections, each request timed from the instant it was due.\n"),
            "{markdown}"
        );
        for line in [
            "| | service (memory backend) | bare axum baseline | service / baseline |",
            "| --- | ---: | ---: | ---: |",
            "| throughput | 45,000 req/s | 50,000 req/s | 0.90x |",
            "| p99 latency | 2.00 ms | 1.00 ms | 2.00x |",
            "| non-2xx / transport errors | 0 / 0 | 0 / 0 | |",
            "| RSS idle / after 205,000 executes | 8.0 MiB / 20.0 MiB | | |",
            "| throughput >= 0.85x the baseline | 0.90x | PASS |",
            "| open-loop p99 at 35,000 req/s | 1.50 ms | 0.50 ms | 3.00x |",
            "| open-loop p99.9 at 35,000 req/s | 4.00 ms | 1.00 ms | 4.00x |",
            "| open-loop failed / unanswered | 0 / 0 | 0 / 0 | |",
            "| open-loop p99 <= 2.00 ms | 1.50 ms | PASS |",
            "| open-loop p99.9 <= 5.00 ms | 4.00 ms | PASS |",
            "| throughput with the access log (RUST_LOG=info), in its own turns | 42,000 req/s | 50,000 req/s | 0.84x |",
            "| with the access log on (RUST_LOG=info): throughput >= 0.8x the baseline | 0.84x | PASS |",
            "| throughput with the access log (RUST_LOG=info, MAESTRO_LOG_FORMAT=json), in its own turns | 41,000 req/s | 50,000 req/s | 0.82x |",
            "| p99 latency with the access log as JSON lines | 2.60 ms | 1.00 ms | 2.60x |",
            "| with the access log on (RUST_LOG=info, MAESTRO_LOG_FORMAT=json): throughput >= 0.8x the baseline | 0.82x | PASS |",
            "| the contract's floor: throughput, in turns with the baseline | 47,000 req/s | 50,000 req/s | 0.94x |",
        ] {
            assert!(
                markdown.contains(&format!("\n{line}\n")),
                "{line}\n{markdown}"
            );
        }
        assert_eq!(markdown.matches("| PASS |").count(), 10, "{markdown}");
        assert!(
            markdown.contains("it keeps 0.94x of the baseline's throughput, and the service 0.90x, 0.96x of the floor."),
            "{markdown}"
        );
    }
}
