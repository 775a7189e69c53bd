//! The main comparison of `cargo xtask bench`: the release `maestro` on the
//! memory backend against the bare axum baseline, loaded one after the
//! other with the same requests, and the targets for it.

use std::{env, path::Path, process::Command, process::Stdio, time::Duration};

use anyhow::Context as _;

use super::{
    Args, ExecuteLoad, STARTUP_TIMEOUT,
    report::{
        Cell, Check, Report, Row, Summary, failures, mebibytes, millis, ratio, thousands, times,
    },
    report_first_problem, start_maestro,
};
use crate::{
    load,
    process::{ChildGuard, free_local_addr, resident_set_size},
};

/// Throughput must be at least this share of the baseline's.
const MIN_THROUGHPUT_RATIO: f64 = 0.5;
/// The service's p99 latency must not exceed this.
const MAX_P99: Duration = Duration::from_millis(5);
/// The service's resident memory after the load must stay under this.
const MAX_RSS_BYTES: u64 = 64 * 1024 * 1024;
/// The number of executes the memory target speaks of.
const RSS_TARGET_EXECUTES: u64 = 200_000;
/// With the default logging (an access-log line a request), throughput
/// must be at least this share of the baseline's.
const MIN_LOGGED_THROUGHPUT_RATIO: f64 = 0.8;

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
}

/// Everything one comparison measured.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    /// How the run was set up.
    settings: Settings,
    /// The service under load.
    service: Summary,
    /// The bare axum baseline under the same load.
    baseline: Summary,
    /// The service under the same load with the default logging
    /// (`RUST_LOG=info`: one access-log line a request, to a file).
    logged: Option<Summary>,
    /// The service's RSS once started, before any request.
    service_rss_idle: Option<u64>,
    /// The service's RSS after the warm-up and the measured phase.
    service_rss_after: Option<u64>,
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

/// Loads the baseline, then the service, and reports both.
///
/// # Errors
/// When starting or loading a server fails.
pub(super) async fn run(args: &Args, maestro: &Path) -> anyhow::Result<Report> {
    Ok(report(&measure(args, maestro).await?))
}

async fn measure(args: &Args, maestro: &Path) -> anyhow::Result<Results> {
    let load = ExecuteLoad::new(args, args.requests)?;
    let plan = load.plan();

    // The baseline's guard drops at the end of this block: it is stopped
    // before the service starts, so the two never share the CPUs.
    let baseline = {
        let addr = free_local_addr()?;
        let mut command = Command::new(env::current_exe().context("cannot find this xtask")?);
        command
            .args(["bench-baseline", "--bind", &addr.to_string()])
            .stdin(Stdio::piped());
        let mut server = ChildGuard::spawn("the baseline", &mut command)?;
        server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
        println!("== baseline (bare axum) on {addr}: {plan}");
        load::run(&load.at(addr)).await?
    };

    let setup = args.backend.prepare(load.pipeline)?;
    let (server, addr) = start_maestro(maestro, &load.secret, &setup.env).await?;
    let service_rss_idle = resident_set_size(server.id()).ok();
    println!(
        "== maestro ({} backend) on {addr}: {plan}",
        args.backend.name()
    );
    let service = load::run(&load.at(addr)).await?;
    let service_rss_after = match resident_set_size(server.id()) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            eprintln!("warning: {err:#}");
            None
        }
    };
    drop(server);
    let logged = if args.backend.name() == "memory" {
        Some(measure_logged(maestro, &load, &setup.env).await?)
    } else {
        None
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
        },
        service: Summary::new(&service, args.requests),
        baseline: Summary::new(&baseline, args.requests),
        logged: logged.map(|logged| Summary::new(&logged, args.requests)),
        service_rss_idle,
        service_rss_after,
    })
}

/// The service under the same load with `RUST_LOG=info`, its log (one
/// line a request) written to `target/bench/maestro-access.log` as a log
/// collector would read it.
async fn measure_logged(
    maestro: &Path,
    load: &ExecuteLoad,
    env: &[(&'static str, String)],
) -> anyhow::Result<load::LoadReport> {
    let dir = crate::project_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("maestro-access.log");
    let log = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info".to_owned()));
    let addr = free_local_addr()?;
    let mut command = super::maestro_command(maestro, addr, &load.secret, &env);
    command.stderr(log);
    let mut server = ChildGuard::spawn("maestro", &mut command)?;
    server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
    println!(
        "== maestro with the access log ({}) on {addr}: {}",
        path.display(),
        load.plan()
    );
    let report = load::run(&load.at(addr)).await?;
    report_first_problem("maestro with the access log", &report);
    Ok(report)
}

/// Checks the targets, plus the baseline's own health: a baseline
/// that failed requests makes the throughput ratio meaningless.
fn checks(results: &Results) -> Vec<Check> {
    let service = &results.service;
    let throughput = results.throughput_ratio();
    let rss = results.service_rss_after;
    vec![
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
        Check {
            target: format!(
                "with the access log on (RUST_LOG=info): throughput >= {MIN_LOGGED_THROUGHPUT_RATIO}x the baseline"
            ),
            measured: results.logged.as_ref().map_or_else(
                || "not measured on this backend".to_owned(),
                |logged| {
                    ratio(
                        logged.requests_per_second,
                        results.baseline.requests_per_second,
                    )
                    .map_or_else(|| "no baseline throughput".to_owned(), times)
                },
            ),
            passed: results.logged.as_ref().is_none_or(|logged| {
                logged.all_2xx()
                    && ratio(
                        logged.requests_per_second,
                        results.baseline.requests_per_second,
                    )
                    .is_some_and(|ratio| ratio >= MIN_LOGGED_THROUGHPUT_RATIO)
            }),
        },
        Check {
            target: "the baseline answered every request 2xx".to_owned(),
            measured: failures(&results.baseline),
            passed: results.baseline.all_2xx(),
        },
    ]
}

/// The service and the baseline side by side, each row with its ratio,
/// and the service's memory.
fn report(results: &Results) -> Report {
    let settings = &results.settings;
    let mut rows = Summary::rows(&[&results.service, &results.baseline]);
    for row in &mut rows {
        let ratio = row.cells[0].ratio_to(&row.cells[1]);
        row.cells.push(ratio);
    }
    if let Some(logged) = &results.logged {
        rows.push(Row::new(
            "throughput with the access log (RUST_LOG=info)",
            vec![
                Cell::Throughput(logged.requests_per_second),
                Cell::Throughput(results.baseline.requests_per_second),
                Cell::Ratio(ratio(
                    logged.requests_per_second,
                    results.baseline.requests_per_second,
                )),
            ],
        ));
        rows.push(Row::new(
            "p99 latency with the access log",
            vec![
                Cell::latency(logged.p99),
                Cell::latency(results.baseline.p99),
                Cell::latency(logged.p99).ratio_to(&Cell::latency(results.baseline.p99)),
            ],
        ));
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
            "`cargo xtask bench --backend {}`: {} connections, {} warm-up then {} measured requests per target, {} CPUs.",
            settings.backend,
            settings.connections,
            thousands(settings.warmup),
            thousands(settings.requests),
            settings.cpus,
        ),
        corner: String::new(),
        columns: vec![
            format!("service ({} backend)", settings.backend),
            "bare axum baseline".to_owned(),
            "service / baseline".to_owned(),
        ],
        rows,
        checks: checks(results),
        notes: Vec::new(),
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
            },
            service: summary(30_000.0, 2_000),
            baseline: summary(50_000.0, 1_000),
            logged: Some(summary(42_000.0, 2_500)),
            service_rss_idle: Some(8 * 1024 * 1024),
            service_rss_after: Some(20 * 1024 * 1024),
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
        results.logged = Some(summary(39_000.0, 2_500));
        let missed = failed(&results);
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert!(missed[0].contains("access log"), "{missed:?}");
        // Another backend does not measure it, and misses nothing for it.
        results.logged = None;
        assert_eq!(failed(&results), Vec::<String>::new());
    }

    #[test]
    fn throughput_under_half_the_baseline_fails_that_target_alone() {
        let mut results = good_run();
        results.service.requests_per_second = 24_999.0;
        assert_eq!(failed(&results), ["throughput >= 0.5x the baseline"]);
        results.service.requests_per_second = 25_000.0;
        assert_eq!(failed(&results), Vec::<String>::new());
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
            markdown.starts_with("`cargo xtask bench --backend memory`: 32 connections, 5,000 warm-up then 200,000 measured requests per target, 2 CPUs.\n"),
            "{markdown}"
        );
        for line in [
            "| | service (memory backend) | bare axum baseline | service / baseline |",
            "| --- | ---: | ---: | ---: |",
            "| throughput | 30,000 req/s | 50,000 req/s | 0.60x |",
            "| p99 latency | 2.00 ms | 1.00 ms | 2.00x |",
            "| non-2xx / transport errors | 0 / 0 | 0 / 0 | |",
            "| RSS idle / after 205,000 executes | 8.0 MiB / 20.0 MiB | | |",
            "| throughput >= 0.5x the baseline | 0.60x | PASS |",
            "| throughput with the access log (RUST_LOG=info) | 42,000 req/s | 50,000 req/s | 0.84x |",
            "| with the access log on (RUST_LOG=info): throughput >= 0.8x the baseline | 0.84x | PASS |",
        ] {
            assert!(
                markdown.contains(&format!("\n{line}\n")),
                "{line}\n{markdown}"
            );
        }
        assert_eq!(markdown.matches("| PASS |").count(), 6, "{markdown}");
    }
}
