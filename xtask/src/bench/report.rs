//! The bench's figures: one summary per target, the ratios between them,
//! the targets checked one by one, and a markdown table for
//! `docs/performance.md`.

use std::{fmt::Write as _, time::Duration};

use crate::load::LoadReport;

/// Throughput must be at least this share of the baseline's.
const MIN_THROUGHPUT_RATIO: f64 = 0.5;
/// The service's p99 latency must not exceed this.
const MAX_P99: Duration = Duration::from_millis(5);
/// The service's resident memory after the load must stay under this.
const MAX_RSS_BYTES: u64 = 64 * 1024 * 1024;
/// The number of executes the memory target speaks of.
const RSS_TARGET_EXECUTES: u64 = 200_000;

/// The figures of one measured phase.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    /// Answered requests per second.
    pub(crate) requests_per_second: f64,
    /// Median latency.
    pub(crate) p50: Duration,
    /// 99th-percentile latency.
    pub(crate) p99: Duration,
    /// Slowest answer.
    pub(crate) max: Duration,
    /// Requests sent in the measured phase.
    pub(crate) requests: u64,
    /// Requests that got an answer.
    pub(crate) answered: u64,
    /// Answers other than 2xx.
    pub(crate) non_2xx: u64,
    /// Requests that got no answer.
    pub(crate) transport_errors: u64,
}

impl Summary {
    /// Summarizes a load run of `requests` requests.
    pub(crate) fn new(report: &LoadReport, requests: u64) -> Self {
        let micros = |value: u64| Duration::from_micros(value);
        Self {
            requests_per_second: report.requests_per_second(),
            p50: micros(report.latency.value_at_quantile(0.50)),
            p99: micros(report.latency.value_at_quantile(0.99)),
            max: micros(report.latency.max()),
            requests,
            answered: report.answered(),
            non_2xx: report.non_2xx(),
            transport_errors: report.transport_errors,
        }
    }

    /// Whether every request got a 2xx answer.
    pub(crate) fn all_2xx(&self) -> bool {
        self.answered == self.requests && self.non_2xx == 0 && self.transport_errors == 0
    }

    /// Throughput, latencies and failures on one line.
    pub(crate) fn one_line(&self) -> String {
        format!(
            "{} req/s, p50 {}, p99 {}, max {}, non-2xx {}, transport errors {}",
            thousands(self.requests_per_second.round() as u64),
            millis(self.p50),
            millis(self.p99),
            millis(self.max),
            thousands(self.non_2xx),
            thousands(self.transport_errors),
        )
    }
}

/// How a run was set up, for the report's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The service's backend.
    pub(crate) backend: &'static str,
    /// Concurrent connections.
    pub(crate) connections: usize,
    /// Measured requests per target.
    pub(crate) requests: u64,
    /// Warm-up requests per target.
    pub(crate) warmup: u64,
    /// CPUs available to this process.
    pub(crate) cpus: usize,
}

/// Everything one bench run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Results {
    /// How the run was set up.
    pub(crate) settings: Settings,
    /// The service under load.
    pub(crate) service: Summary,
    /// The bare axum baseline under the same load.
    pub(crate) baseline: Summary,
    /// The service's RSS once started, before any request.
    pub(crate) service_rss_idle: Option<u64>,
    /// The service's RSS after the warm-up and the measured phase.
    pub(crate) service_rss_after: Option<u64>,
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

/// One target and how it fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// The target, as the issue words it.
    pub(crate) target: String,
    /// What was measured against it.
    pub(crate) measured: String,
    /// Whether the target holds.
    pub(crate) passed: bool,
}

impl Check {
    /// `PASS` or `FAIL`.
    pub(crate) fn verdict(&self) -> &'static str {
        if self.passed { "PASS" } else { "FAIL" }
    }
}

/// Checks the targets, plus the baseline's own health: a baseline
/// that failed requests makes the throughput ratio meaningless.
pub(crate) fn checks(results: &Results) -> Vec<Check> {
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
            target: "the baseline answered every request 2xx".to_owned(),
            measured: failures(&results.baseline),
            passed: results.baseline.all_2xx(),
        },
    ]
}

/// The plain-text report printed after a run.
pub(crate) fn text(results: &Results, checks: &[Check]) -> String {
    let mut out = String::new();
    let service = &results.service;
    let baseline = &results.baseline;
    let _ = writeln!(out, "service:  {}", service.one_line());
    let _ = writeln!(out, "baseline: {}", baseline.one_line());
    let _ = writeln!(
        out,
        "ratios (service / baseline): throughput {}, p50 {}, p99 {}",
        optional_times(results.throughput_ratio()),
        optional_times(ratio(service.p50.as_secs_f64(), baseline.p50.as_secs_f64())),
        optional_times(ratio(service.p99.as_secs_f64(), baseline.p99.as_secs_f64())),
    );
    let _ = writeln!(
        out,
        "service RSS: {} idle, {} after {} executes",
        optional_mebibytes(results.service_rss_idle),
        optional_mebibytes(results.service_rss_after),
        thousands(results.executes()),
    );
    for check in checks {
        let _ = writeln!(
            out,
            "{}  {} (measured: {})",
            check.verdict(),
            check.target,
            check.measured
        );
    }
    out
}

/// The run as markdown tables, to paste into `docs/performance.md`.
pub(crate) fn markdown(results: &Results, checks: &[Check]) -> String {
    let settings = &results.settings;
    let service = &results.service;
    let baseline = &results.baseline;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`cargo xtask bench --backend {}`: {} connections, {} warm-up then {} measured requests per target, {} CPUs.",
        settings.backend,
        settings.connections,
        thousands(settings.warmup),
        thousands(settings.requests),
        settings.cpus,
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| | service ({} backend) | bare axum baseline | service / baseline |",
        settings.backend
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        out,
        "| throughput | {} req/s | {} req/s | {} |",
        thousands(service.requests_per_second.round() as u64),
        thousands(baseline.requests_per_second.round() as u64),
        optional_times(results.throughput_ratio()),
    );
    for (name, of_service, of_baseline) in [
        ("p50 latency", service.p50, baseline.p50),
        ("p99 latency", service.p99, baseline.p99),
        ("max latency", service.max, baseline.max),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            millis(of_service),
            millis(of_baseline),
            optional_times(ratio(of_service.as_secs_f64(), of_baseline.as_secs_f64())),
        );
    }
    let _ = writeln!(
        out,
        "| non-2xx / transport errors | {} / {} | {} / {} | |",
        thousands(service.non_2xx),
        thousands(service.transport_errors),
        thousands(baseline.non_2xx),
        thousands(baseline.transport_errors),
    );
    let _ = writeln!(
        out,
        "| RSS idle / after {} executes | {} / {} | | |",
        thousands(results.executes()),
        optional_mebibytes(results.service_rss_idle),
        optional_mebibytes(results.service_rss_after),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| target | measured | result |");
    let _ = writeln!(out, "| --- | --- | --- |");
    for check in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            check.target,
            check.measured,
            check.verdict()
        );
    }
    out
}

/// `numerator / denominator`, when the denominator is positive.
pub(crate) fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

/// Non-2xx and unanswered requests of `summary`, in words.
pub(crate) fn failures(summary: &Summary) -> String {
    let unanswered = summary.requests.saturating_sub(summary.answered);
    format!(
        "{} non-2xx, {} unanswered",
        thousands(summary.non_2xx),
        thousands(unanswered)
    )
}

/// A ratio as `0.83x`.
pub(crate) fn times(ratio: f64) -> String {
    format!("{ratio:.2}x")
}

/// A ratio as `0.83x`, or `n/a`.
pub(crate) fn optional_times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_owned(), times)
}

/// A duration as `1.25 ms`.
pub(crate) fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn optional_mebibytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unavailable".to_owned(), mebibytes)
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests_per_second: f64, p99_micros: u64) -> Summary {
        Summary {
            requests_per_second,
            p50: Duration::from_micros(p99_micros / 2),
            p99: Duration::from_micros(p99_micros),
            max: Duration::from_micros(p99_micros * 3),
            requests: 200_000,
            answered: 200_000,
            non_2xx: 0,
            transport_errors: 0,
        }
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
            service_rss_idle: Some(8 * 1024 * 1024),
            service_rss_after: Some(20 * 1024 * 1024),
        }
    }

    fn failed(results: &Results) -> Vec<String> {
        checks(results)
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.target)
            .collect()
    }

    #[test]
    fn a_run_within_every_target_passes_them_all() {
        assert_eq!(failed(&good_run()), Vec::<String>::new());
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
        let results = good_run();
        let markdown = markdown(&results, &checks(&results));
        assert!(
            markdown.contains("| throughput | 30,000 req/s | 50,000 req/s | 0.60x |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| p99 latency | 2.00 ms | 1.00 ms | 2.00x |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| RSS idle / after 205,000 executes | 8.0 MiB / 20.0 MiB | | |"),
            "{markdown}"
        );
        assert_eq!(markdown.matches("| PASS |").count(), 5, "{markdown}");
    }

    #[test]
    fn thousands_are_grouped_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(200_000), "200,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
