//! The bench's one report model, used by every mode: a table of figures
//! (one row per measure, one column per target or run), the targets
//! checked, and notes; rendered as plain text for the terminal and as
//! markdown for `docs/performance.md`. With it, the summary of one load run
//! and the number formats every mode shares.

use std::{fmt, fmt::Write as _, time::Duration};

use crate::load::LoadReport;

/// One mode's report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// What the report is of, e.g. `Idempotency-Key`.
    pub(crate) title: String,
    /// How the run was set up, in one sentence.
    pub(crate) setup: String,
    /// The head of the first column, which names the rows; often empty.
    pub(crate) corner: String,
    /// The heads of the other columns.
    pub(crate) columns: Vec<String>,
    /// The figures.
    pub(crate) rows: Vec<Row>,
    /// The targets, each with what was measured against it.
    pub(crate) checks: Vec<Check>,
    /// Sentences that follow the tables.
    pub(crate) notes: Vec<String>,
}

/// One measure across the columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// What is measured, e.g. `p99 latency`.
    pub(crate) name: String,
    /// One cell per column.
    pub(crate) cells: Vec<Cell>,
}

impl Row {
    /// A row named `name`.
    pub(crate) fn new(name: impl Into<String>, cells: Vec<Cell>) -> Self {
        Self {
            name: name.into(),
            cells,
        }
    }

    /// A row named `name` with a cell per column, made by `cell`.
    pub(crate) fn across<T>(
        name: impl Into<String>,
        columns: &[T],
        cell: impl Fn(&T) -> Cell,
    ) -> Self {
        Self::new(name, columns.iter().map(cell).collect())
    }

    /// The rows `<name> p50`, `<name> p99` and `<name> max` of a duration,
    /// a cell per column from `quantile`; empty where it gives none.
    pub(crate) fn quantiles<T>(
        name: &str,
        columns: &[T],
        quantile: impl Fn(&T, f64) -> Option<Duration>,
    ) -> Vec<Self> {
        [("p50", 0.5), ("p99", 0.99), ("max", 1.0)]
            .into_iter()
            .map(|(label, rank)| {
                Self::across(format!("{name} {label}"), columns, |column| {
                    quantile(column, rank).map_or(Cell::Empty, Cell::latency)
                })
            })
            .collect()
    }
}

/// One figure with its unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// Nothing to show.
    Empty,
    /// Requests per second, as `12,345 req/s`.
    Throughput(f64),
    /// Anything else per second, as `1,234/s`.
    PerSecond(f64),
    /// Milliseconds, as `1.25 ms`; negative for a difference that went
    /// the other way.
    Millis(f64),
    /// A ratio, as `0.83x`, or `n/a` when there is nothing to divide by.
    Ratio(Option<f64>),
    /// A count, as `1,234`.
    Count(u64),
    /// Bytes, as `12.0 MiB`, or `unavailable`.
    Mebibytes(Option<u64>),
    /// Two figures of one measure, as `3 / 0`.
    Pair(Box<(Cell, Cell)>),
}

impl Cell {
    /// A latency.
    pub(crate) fn latency(duration: Duration) -> Self {
        Self::Millis(duration.as_secs_f64() * 1000.0)
    }

    /// `after - before`, which may be negative.
    pub(crate) fn difference(after: Duration, before: Duration) -> Self {
        Self::Millis((after.as_secs_f64() - before.as_secs_f64()) * 1000.0)
    }

    /// This figure as a share of `other` when both are throughputs or both
    /// milliseconds; nothing otherwise.
    pub(crate) fn ratio_to(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Throughput(numerator), Self::Throughput(denominator))
            | (Self::Millis(numerator), Self::Millis(denominator)) => {
                Self::Ratio(ratio(*numerator, *denominator))
            }
            _ => Self::Empty,
        }
    }

    /// Two figures of one measure.
    pub(crate) fn pair(first: Self, second: Self) -> Self {
        Self::Pair(Box::new((first, second)))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => Ok(()),
            Self::Throughput(rate) => write!(f, "{} req/s", thousands(rate.round() as u64)),
            Self::PerSecond(rate) => write!(f, "{}/s", thousands(rate.round() as u64)),
            Self::Millis(millis) => write!(f, "{millis:.2} ms"),
            Self::Ratio(ratio) => f.write_str(&optional_times(*ratio)),
            Self::Count(count) => f.write_str(&thousands(*count)),
            Self::Mebibytes(bytes) => f.write_str(&optional_mebibytes(*bytes)),
            Self::Pair(pair) => write!(f, "{} / {}", pair.0, pair.1),
        }
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
    /// The target `<what> < <limit>`: passed when `measured` is below
    /// `limit` and `also` holds. Both figures are written with `show`;
    /// `missing` stands for a figure that was not measured.
    pub(crate) fn below<T: PartialOrd + Copy>(
        what: &str,
        measured: Option<T>,
        limit: T,
        show: fn(T) -> String,
        missing: &str,
        also: bool,
    ) -> Self {
        Self {
            target: format!("{what} < {}", show(limit)),
            measured: measured.map_or_else(|| missing.to_owned(), show),
            passed: also && measured.is_some_and(|measured| measured < limit),
        }
    }

    /// `PASS` or `FAIL`.
    pub(crate) fn verdict(&self) -> &'static str {
        if self.passed { "PASS" } else { "FAIL" }
    }
}

impl Report {
    /// The report for the terminal: the set-up, the table with its columns
    /// aligned, a verdict line per target, and the notes.
    pub(crate) fn text(&self) -> String {
        let mut lines = vec![self.head()];
        lines.extend(self.body());
        let widths = (0..=self.columns.len())
            .map(|column| {
                lines
                    .iter()
                    .map(|line| line.get(column).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect::<Vec<_>>();

        let mut out = format!("{}: {}\n", self.title, self.setup);
        for line in &lines {
            let mut text = String::new();
            for (column, cell) in line.iter().enumerate() {
                let width = widths[column];
                // Names to the left, figures to the right, as in markdown.
                let _ = match column {
                    0 => write!(text, "{cell:<width$}"),
                    _ => write!(text, "  {cell:>width$}"),
                };
            }
            let _ = writeln!(out, "{}", text.trim_end());
        }
        for check in &self.checks {
            let _ = writeln!(
                out,
                "{}  {} (measured: {})",
                check.verdict(),
                check.target,
                check.measured
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// The report as markdown, to paste into `docs/performance.md`: the
    /// set-up, the table of figures, the table of targets, and the notes.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("{}\n\n", self.setup);
        out.push_str(&markdown_row(&self.head()));
        let alignments: Vec<String> = std::iter::once("---")
            .chain(self.columns.iter().map(|_| "---:"))
            .map(str::to_owned)
            .collect();
        out.push_str(&markdown_row(&alignments));
        for line in self.body() {
            out.push_str(&markdown_row(&line));
        }
        if !self.checks.is_empty() {
            out.push_str("\n| target | measured | result |\n| --- | --- | --- |\n");
            for check in &self.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    check.target,
                    check.measured,
                    check.verdict()
                );
            }
        }
        for note in &self.notes {
            let _ = write!(out, "\n{note}\n");
        }
        out
    }

    /// The targets missed.
    pub(crate) fn missed(&self) -> Vec<String> {
        missed(&self.checks)
    }

    fn head(&self) -> Vec<String> {
        std::iter::once(self.corner.clone())
            .chain(self.columns.iter().cloned())
            .collect()
    }

    fn body(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|row| {
                std::iter::once(row.name.clone())
                    .chain(row.cells.iter().map(ToString::to_string))
                    .collect()
            })
            .collect()
    }
}

/// The targets of `checks` that were missed.
pub(crate) fn missed(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| check.target.clone())
        .collect()
}

/// `| a | b |`, with an empty cell as `| |`.
fn markdown_row(cells: &[String]) -> String {
    let mut out = "|".to_owned();
    for cell in cells {
        if cell.is_empty() {
            out.push_str(" |");
        } else {
            let _ = write!(out, " {cell} |");
        }
    }
    out.push('\n');
    out
}

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

    /// Non-2xx answers and requests that got no answer.
    pub(crate) fn failed(&self) -> u64 {
        self.non_2xx + self.transport_errors
    }

    /// For tests: `requests` requests, all answered 2xx, at
    /// `requests_per_second`, with the maximum latency three times the p99.
    #[cfg(test)]
    pub(crate) fn all_answered(
        requests: u64,
        requests_per_second: f64,
        p50_micros: u64,
        p99_micros: u64,
    ) -> Self {
        Self {
            requests_per_second,
            p50: Duration::from_micros(p50_micros),
            p99: Duration::from_micros(p99_micros),
            max: Duration::from_micros(p99_micros * 3),
            requests,
            answered: requests,
            non_2xx: 0,
            transport_errors: 0,
        }
    }

    /// The rows every load run has, with one cell per summary in `runs`.
    pub(crate) fn rows(runs: &[&Self]) -> Vec<Row> {
        let row = |name: &str, cell: &dyn Fn(&Self) -> Cell| {
            Row::new(name, runs.iter().map(|summary| cell(summary)).collect())
        };
        vec![
            row("throughput", &|summary| {
                Cell::Throughput(summary.requests_per_second)
            }),
            row("p50 latency", &|summary| Cell::latency(summary.p50)),
            row("p99 latency", &|summary| Cell::latency(summary.p99)),
            row("max latency", &|summary| Cell::latency(summary.max)),
            row("non-2xx / transport errors", &|summary| {
                Cell::pair(
                    Cell::Count(summary.non_2xx),
                    Cell::Count(summary.transport_errors),
                )
            }),
        ]
    }
}

/// A server's resident memory before some things (waiting requests, open
/// streams) were held, and while they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RssReadings {
    /// Before; `None` when it could not be read.
    pub(crate) before: Option<u64>,
    /// While all were held.
    pub(crate) holding: Option<u64>,
}

impl RssReadings {
    /// What holding them added.
    pub(crate) fn added(&self) -> Option<u64> {
        Some(self.holding?.saturating_sub(self.before?))
    }

    /// The rows of memory, with one cell per column's readings: both
    /// readings (the row named `readings`), what they added, and that per
    /// one of the `count` things held (`each`, e.g. `waiting request`).
    pub(crate) fn rows(columns: &[Self], readings: &str, count: u64, each: &str) -> Vec<Row> {
        let row = |name: String, cell: &dyn Fn(&Self) -> Cell| {
            Row::new(name, columns.iter().map(cell).collect())
        };
        vec![
            row(readings.to_owned(), &|rss| {
                Cell::pair(Cell::Mebibytes(rss.before), Cell::Mebibytes(rss.holding))
            }),
            row("RSS added".to_owned(), &|rss| Cell::Mebibytes(rss.added())),
            row(format!("RSS added per {each}, bytes"), &|rss| {
                rss.added()
                    .map_or(Cell::Empty, |added| Cell::Count(added / count.max(1)))
            }),
        ]
    }
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

/// What a load phase sends, e.g. `5,000 warm-up + 200,000 requests over 32
/// connections`.
pub(crate) fn plan(warmup: u64, requests: u64, connections: usize) -> String {
    format!(
        "{} warm-up + {} requests over {connections} connections",
        thousands(warmup),
        thousands(requests),
    )
}

/// `numerator / denominator`, when the denominator is positive.
pub(crate) fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
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
    Cell::latency(duration).to_string()
}

/// Bytes as `12.0 MiB`.
pub(crate) fn mebibytes(bytes: u64) -> String {
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

    fn report() -> Report {
        Report {
            title: "example".to_owned(),
            setup: "Two runs, 2 CPUs.".to_owned(),
            corner: String::new(),
            columns: vec!["first".to_owned(), "second, longer".to_owned()],
            rows: vec![
                Row::new(
                    "throughput",
                    vec![Cell::Throughput(30_000.4), Cell::Throughput(1_234_567.0)],
                ),
                Row::new("ratio", vec![Cell::Ratio(Some(0.6)), Cell::Ratio(None)]),
                Row::new(
                    "added p50",
                    vec![
                        Cell::difference(Duration::from_micros(500), Duration::from_micros(1_000)),
                        Cell::Empty,
                    ],
                ),
                Row::new(
                    "failed / RSS",
                    vec![
                        Cell::pair(Cell::Count(1_000), Cell::Count(0)),
                        Cell::Mebibytes(Some(12 * 1024 * 1024)),
                    ],
                ),
            ],
            checks: vec![
                Check {
                    target: "a target".to_owned(),
                    measured: "0.60x".to_owned(),
                    passed: true,
                },
                Check {
                    target: "another".to_owned(),
                    measured: "n/a".to_owned(),
                    passed: false,
                },
            ],
            notes: vec!["A note.".to_owned()],
        }
    }

    #[test]
    fn the_markdown_has_the_figures_the_targets_and_the_notes() {
        assert_eq!(
            report().markdown(),
            "Two runs, 2 CPUs.\n\
             \n\
             | | first | second, longer |\n\
             | --- | ---: | ---: |\n\
             | throughput | 30,000 req/s | 1,234,567 req/s |\n\
             | ratio | 0.60x | n/a |\n\
             | added p50 | -0.50 ms | |\n\
             | failed / RSS | 1,000 / 0 | 12.0 MiB |\n\
             \n\
             | target | measured | result |\n\
             | --- | --- | --- |\n\
             | a target | 0.60x | PASS |\n\
             | another | n/a | FAIL |\n\
             \n\
             A note.\n"
        );
    }

    #[test]
    fn the_text_aligns_the_columns_and_gives_a_verdict_per_target() {
        let text = report().text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "example: Two runs, 2 CPUs.",
                "                     first   second, longer",
                "throughput    30,000 req/s  1,234,567 req/s",
                "ratio                0.60x              n/a",
                "added p50         -0.50 ms",
                "failed / RSS     1,000 / 0         12.0 MiB",
                "PASS  a target (measured: 0.60x)",
                "FAIL  another (measured: n/a)",
                "A note.",
            ]
        );
        assert_eq!(report().missed(), ["another"]);
    }

    #[test]
    fn a_report_without_targets_has_no_target_table() {
        let report = Report {
            checks: Vec::new(),
            notes: Vec::new(),
            ..report()
        };
        assert!(!report.markdown().contains("| target |"));
    }

    #[test]
    fn the_rows_of_load_runs_give_one_cell_per_run() {
        let summary = Summary {
            requests_per_second: 20_000.0,
            p50: Duration::from_micros(1_000),
            p99: Duration::from_micros(3_000),
            max: Duration::from_micros(9_000),
            requests: 100,
            answered: 99,
            non_2xx: 2,
            transport_errors: 1,
        };
        let rows = Summary::rows(&[&summary, &summary]);
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "throughput",
                "p50 latency",
                "p99 latency",
                "max latency",
                "non-2xx / transport errors"
            ]
        );
        assert!(rows.iter().all(|row| row.cells.len() == 2));
        assert_eq!(rows[2].cells[0].to_string(), "3.00 ms");
        assert_eq!(rows[4].cells[1].to_string(), "2 / 1");
        assert!(!summary.all_2xx());
        assert_eq!(summary.failed(), 3);
        assert_eq!(failures(&summary), "2 non-2xx, 1 unanswered");
    }

    #[test]
    fn numbers_are_formatted_with_their_units() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(200_000), "200,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(millis(Duration::from_micros(1_234)), "1.23 ms");
        assert_eq!(mebibytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(Cell::PerSecond(1_234.4).to_string(), "1,234/s");
    }

    #[test]
    fn a_target_below_a_limit_passes_only_under_it_and_when_the_rest_holds() {
        let check = |measured, also| {
            Check::below(
                "p99",
                measured,
                Duration::from_millis(5),
                millis,
                "none",
                also,
            )
        };
        let passed = check(Some(Duration::from_micros(4_990)), true);
        assert_eq!(
            passed,
            Check {
                target: "p99 < 5.00 ms".to_owned(),
                measured: "4.99 ms".to_owned(),
                passed: true,
            }
        );
        assert!(!check(Some(Duration::from_millis(5)), true).passed);
        assert!(!check(Some(Duration::from_millis(1)), false).passed);
        let missing = check(None, true);
        assert_eq!(missing.measured, "none");
        assert!(!missing.passed);
    }

    #[test]
    fn quantile_rows_give_p50_p99_and_max_per_column() {
        let columns = [Some(Duration::from_millis(2)), None];
        let rows = Row::quantiles("wait", &columns, |column, rank| {
            column.map(|base| base.mul_f64(rank * 2.0))
        });
        let text: Vec<String> = rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = row.cells.iter().map(ToString::to_string).collect();
                format!("{}: {}", row.name, cells.join(" | "))
            })
            .collect();
        assert_eq!(
            text,
            [
                "wait p50: 2.00 ms | ",
                "wait p99: 3.96 ms | ",
                "wait max: 4.00 ms | "
            ]
        );
    }

    #[test]
    fn rss_rows_give_both_readings_what_was_added_and_that_per_thing_held() {
        let mebibyte = 1024 * 1024;
        let columns = [
            RssReadings {
                before: Some(10 * mebibyte),
                holding: Some(20 * mebibyte),
            },
            RssReadings {
                before: None,
                holding: Some(mebibyte),
            },
        ];
        assert_eq!(columns[0].added(), Some(10 * mebibyte));
        assert_eq!(columns[1].added(), None);
        let rows = RssReadings::rows(&columns, "RSS before / while held", 1_000, "stream");
        let text: Vec<(String, Vec<String>)> = rows
            .iter()
            .map(|row| {
                (
                    row.name.clone(),
                    row.cells.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                (
                    "RSS before / while held".to_owned(),
                    vec![
                        "10.0 MiB / 20.0 MiB".to_owned(),
                        "unavailable / 1.0 MiB".to_owned()
                    ]
                ),
                (
                    "RSS added".to_owned(),
                    vec!["10.0 MiB".to_owned(), "unavailable".to_owned()]
                ),
                (
                    "RSS added per stream, bytes".to_owned(),
                    vec!["10,485".to_owned(), String::new()]
                ),
            ]
        );
        assert_eq!(optional_times(Some(1.5)), "1.50x");
        assert_eq!(optional_times(ratio(3.0, 0.0)), "n/a");
        assert_eq!(
            plan(5_000, 200_000, 32),
            "5,000 warm-up + 200,000 requests over 32 connections"
        );
    }
}
