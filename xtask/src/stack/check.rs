//! `cargo xtask stack --check`: a rolling restart of both instances under
//! a steady request loop through HAProxy loses no request and no run.
//!
//! First, the same traffic warms the stack up, in windows of a few seconds
//! until one is answered quickly: an engine that has just started is slow
//! to answer its first triggers, which is not what the check is about.
//! Then the loop sends
//! `--rate` requests per second through HAProxy, each on a
//! connection of its own and on schedule whether or not the ones before
//! have been answered: executes of the stack's pipeline, alternating with
//! reads of the newest run an execute answered. Meanwhile each instance in
//! turn gets SIGTERM, is waited for until it exits, is started again, and
//! is waited for until HAProxy's checks take it back into rotation. Then
//! the loop stops, every request is waited for, and:
//!
//! - every answer is 2xx or a documented 429 (`RateLimited`,
//!   `TooManyWaits`, `PipelineQueueFull`); a connection error, a timeout, a
//!   5xx or any other status fails;
//! - every run an execute was answered with is found afterwards through the
//!   API, and the pipeline gained exactly as many runs during the loop as
//!   executes were answered (none lost, none made twice);
//! - HAProxy took each draining instance out of rotation within its
//!   `MAESTRO_SHUTDOWN_DELAY_SECONDS`, each exited 0 and came back.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hyper::{Method, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use tokio::task::JoinSet;

use super::{
    Args, CHECK_FALL, CHECK_INTERVAL, PIPELINE, SHUTDOWN_DELAY, SHUTDOWN_GRACE, Settings, Stack,
};
use crate::{
    bench::report::{self, Cell, Check, Report, Row},
    http::{self, RequestTemplate},
    process,
};

/// The longest one request of the loop may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Before the loop, the same traffic is sent in windows of this long until
/// one window has every answer acceptable and within [`WARM_ANSWER`]: an
/// engine that has just started answers its first triggers slowly, which
/// is its start-up and not what the check is about.
const WARM_WINDOW: Duration = Duration::from_secs(3);

/// How quickly a warm stack answers every request of a window.
const WARM_ANSWER: Duration = Duration::from_secs(1);

/// The longest the warm-up may take before the check fails.
const WARM_UP_LIMIT: Duration = Duration::from_secs(180);

/// The 429s the contract documents: a limit the caller may wait out.
const DOCUMENTED_429: [&str; 3] = ["RateLimited", "TooManyWaits", "PipelineQueueFull"];

/// What the loop sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Execute,
    GetRun,
}

/// What one request of the loop got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A status, with the error envelope's `exception_type` when it has one.
    Status(StatusCode, Option<String>),
    /// No answer: the connection failed or the time ran out.
    Lost(String),
}

/// One request of the loop.
#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    /// When it was sent, from the start of the loop.
    sent: Duration,
    latency: Duration,
    answer: Answer,
    /// The run an execute was answered with.
    run_id: Option<String>,
}

impl Outcome {
    /// Whether the answer is one a client of the stack may get during a
    /// rolling restart: 2xx, or a documented 429.
    fn acceptable(&self) -> bool {
        match &self.answer {
            Answer::Status(status, exception) => {
                status.is_success()
                    || (*status == StatusCode::TOO_MANY_REQUESTS
                        && exception
                            .as_deref()
                            .is_some_and(|exception| DOCUMENTED_429.contains(&exception)))
            }
            Answer::Lost(_) => false,
        }
    }

    fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::Execute => "execute",
            Kind::GetRun => "GET run",
        };
        let answer = match &self.answer {
            Answer::Status(status, Some(exception)) => format!("{status} {exception}"),
            Answer::Status(status, None) => status.to_string(),
            Answer::Lost(why) => format!("no answer: {why}"),
        };
        format!(
            "{kind} sent at {:.2}s: {answer} after {:.0?}",
            self.sent.as_secs_f64(),
            self.latency
        )
    }
}

/// How one instance's restart went.
#[derive(Debug, Clone)]
struct Restart {
    name: String,
    /// From SIGTERM until HAProxy's checks had it down; `None` when they
    /// had not by the time it exited.
    out_of_rotation: Option<Duration>,
    /// From SIGTERM until it exited, and whether it exited 0.
    exited: Duration,
    exit_ok: bool,
    exit_status: String,
    /// From its start again until HAProxy had it up.
    back_in_rotation: Duration,
}

/// Runs the check on a running `stack` and stops it afterwards.
///
/// # Errors
/// When the stack cannot be driven, or when a check fails.
pub(super) async fn run(
    args: &Args,
    mut stack: Stack,
    settings: &Settings,
    token: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let settle = Duration::from_secs(args.settle_seconds);
    let execute = RequestTemplate::new(Method::POST, "/platform/pipeline/execute")
        .bearer(token)?
        .json(&json!({"pipeline_id": PIPELINE}))?;
    let get_run = RequestTemplate::get(String::new()).bearer(token)?;
    let warm_up = warm_up(stack.front, args.rate, &execute, &get_run).await?;
    // Runs made before the loop, the warm-up's among them, are not the
    // loop's to account for.
    let before = run_count(&stack, token).await?;
    println!(
        "stack check: warm after {} windows of traffic in {:.1?}; the pipeline has {before} runs before the loop",
        warm_up.windows, warm_up.took
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    println!(
        "stack check: {} requests per second through HAProxy; restarting {} in turn",
        args.rate,
        stack
            .instances
            .iter()
            .map(|instance| instance.name.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let traffic = tokio::spawn(request_loop(
        stack.front,
        args.rate,
        execute,
        get_run.clone(),
        stop.clone(),
    ));

    // Steady traffic before the first restart and after the last: the
    // loop's requests are what is waited for here, not time itself.
    tokio::time::sleep(settle).await;
    let mut restarts = Vec::new();
    let mut failure = None;
    for index in 0..stack.instances.len() {
        match restart(&mut stack, index, settings).await {
            Ok(restart) => {
                println!(
                    "stack check: {} out of rotation {} after SIGTERM, exited after {:.1?} ({}), back in rotation {:.1?} after its start",
                    restart.name,
                    restart.out_of_rotation.map_or_else(
                        || "only when it exited".to_owned(),
                        |after| format!("{after:.1?}")
                    ),
                    restart.exited,
                    restart.exit_status,
                    restart.back_in_rotation
                );
                restarts.push(restart);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    if failure.is_none() {
        tokio::time::sleep(settle).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes = traffic.await.context("the request loop panicked")?;
    let traffic_time = started.elapsed();
    if let Some(err) = failure {
        return Err(err.context("the rolling restart did not complete"));
    }

    // Every run answered is asked for again, through the stack.
    let run_ids: Vec<String> = outcomes
        .iter()
        .filter_map(|outcome| outcome.run_id.clone())
        .collect();
    let missing = missing_runs(&stack, &get_run, &run_ids).await?;
    let total = run_count(&stack, token).await?;

    let report = report(
        args,
        &outcomes,
        &restarts,
        &RunsFound {
            answered: run_ids.len(),
            missing,
            in_airflow: total.saturating_sub(before),
        },
        traffic_time,
    );
    println!();
    print!("{}", report.text());
    println!();
    println!("For docs/operations.md:");
    println!();
    print!("{}", report.markdown());
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|outcome| !outcome.acceptable())
        .collect();
    for outcome in failed.iter().take(20) {
        eprintln!("stack check: {}", outcome.describe());
    }
    drop(stack);
    let missed = report.missed();
    if !missed.is_empty() {
        bail!(
            "{} of {} checks failed: {}",
            missed.len(),
            report.checks.len(),
            missed.join("; ")
        );
    }
    Ok(())
}

/// How the warm-up went.
struct WarmUp {
    /// Windows of traffic sent.
    windows: u32,
    took: Duration,
}

/// Sends the loop's traffic to `front` in windows of [`WARM_WINDOW`] until
/// one window has every answer acceptable and within [`WARM_ANSWER`].
///
/// # Errors
/// When no window is within [`WARM_UP_LIMIT`].
async fn warm_up(
    front: std::net::SocketAddr,
    rate: u32,
    execute: &RequestTemplate,
    get_run: &RequestTemplate,
) -> anyhow::Result<WarmUp> {
    let start = Instant::now();
    let mut windows = 0;
    loop {
        if start.elapsed() > WARM_UP_LIMIT {
            bail!(
                "the stack did not answer a {WARM_WINDOW:?} window of traffic acceptably within {WARM_ANSWER:?} in {WARM_UP_LIMIT:?}"
            );
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let traffic = tokio::spawn(request_loop(
            front,
            rate,
            execute.clone(),
            get_run.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(WARM_WINDOW).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let outcomes = traffic
            .await
            .context("the warm-up's request loop panicked")?;
        windows += 1;
        if outcomes
            .iter()
            .all(|outcome| outcome.acceptable() && outcome.latency <= WARM_ANSWER)
        {
            return Ok(WarmUp {
                windows,
                took: start.elapsed(),
            });
        }
    }
}

/// Sends `rate` requests per second to `front` until `stop`, then waits for
/// every one of them, and returns what each got, in the order sent.
async fn request_loop(
    front: std::net::SocketAddr,
    rate: u32,
    execute: RequestTemplate,
    get_run: RequestTemplate,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Outcome> {
    // The newest run an execute was answered with. A std mutex: it is held
    // for a clone, never across an await.
    let newest: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut requests = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    // A late tick is sent late, not made up for with a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut sequence = 0_u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        ticks.tick().await;
        let run = newest.lock().ok().and_then(|newest| newest.clone());
        let (kind, request) = match run {
            Some(run) if sequence % 2 == 1 => {
                let mut request = get_run.clone();
                request.path = format!(
                    "/platform/pipeline/{PIPELINE}/pipeline_run/{}",
                    utf8_percent_encode(&run, NON_ALPHANUMERIC)
                );
                (Kind::GetRun, request)
            }
            _ => (Kind::Execute, execute.clone()),
        };
        sequence += 1;
        let newest = newest.clone();
        let sent = start.elapsed();
        requests.spawn(async move {
            let begun = Instant::now();
            let answer = http::send_once(front, &request, REQUEST_TIMEOUT).await;
            let latency = begun.elapsed();
            let (answer, run_id) = match answer {
                Ok(answer) => {
                    let body = answer.json();
                    let exception = body["detail"]["exception_type"].as_str().map(str::to_owned);
                    let run_id = (kind == Kind::Execute && answer.status.is_success())
                        .then(|| body["data"]["run_id"].as_str().map(str::to_owned))
                        .flatten();
                    if let (Some(run_id), Ok(mut newest)) = (&run_id, newest.lock()) {
                        *newest = Some(run_id.clone());
                    }
                    (Answer::Status(answer.status, exception), run_id)
                }
                Err(err) => (Answer::Lost(err.to_string()), None),
            };
            Outcome {
                kind,
                sent,
                latency,
                answer,
                run_id,
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = requests.join_next().await {
        if let Ok(outcome) = outcome {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|outcome| outcome.sent);
    outcomes
}

/// Restarts instance `index`: SIGTERM, the wait until HAProxy has it down
/// and it has exited, a start again and the wait until HAProxy has it up.
async fn restart(stack: &mut Stack, index: usize, settings: &Settings) -> anyhow::Result<Restart> {
    let name = stack.instances[index].name.clone();
    let pid = stack.instances[index]
        .process
        .as_ref()
        .with_context(|| format!("{name} is not running"))?
        .id();
    let term = Instant::now();
    if !process::signal(pid, "TERM") {
        bail!("cannot send SIGTERM to {name} ({pid})");
    }
    let deadline = SHUTDOWN_DELAY + SHUTDOWN_GRACE + Duration::from_secs(10);
    let mut out_of_rotation = None;
    let (exited, status) = loop {
        if out_of_rotation.is_none()
            && let Ok(states) = stack.server_states().await
            && states
                .get(&name)
                .is_some_and(|state| state.starts_with("DOWN"))
        {
            out_of_rotation = Some(term.elapsed());
        }
        let process = stack.instances[index]
            .process
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        if let Some(status) = process.exit_status()? {
            break (term.elapsed(), status);
        }
        if term.elapsed() > deadline {
            bail!("{name} did not exit within {deadline:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stack.instances[index].process = None;

    let start = Instant::now();
    stack.instances[index].start(settings).await?;
    stack
        .wait_until_in_rotation(std::slice::from_ref(&name))
        .await?;
    Ok(Restart {
        name,
        out_of_rotation,
        exited,
        exit_ok: status.success(),
        exit_status: status.to_string(),
        back_in_rotation: start.elapsed(),
    })
}

/// The runs of `run_ids` that the API does not find.
async fn missing_runs(
    stack: &Stack,
    get_run: &RequestTemplate,
    run_ids: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for chunk in run_ids.chunks(8) {
        let mut asks = JoinSet::new();
        for run_id in chunk {
            let mut request = get_run.clone();
            request.path = format!(
                "/platform/pipeline/{PIPELINE}/pipeline_run/{}",
                utf8_percent_encode(run_id, NON_ALPHANUMERIC)
            );
            let front = stack.front;
            let run_id = run_id.clone();
            asks.spawn(async move {
                let answer = http::send_once(front, &request, REQUEST_TIMEOUT).await;
                (run_id, answer.map(|answer| answer.status))
            });
        }
        while let Some(asked) = asks.join_next().await {
            let (run_id, status) = asked.context("a run lookup panicked")?;
            if !matches!(status, Ok(StatusCode::OK)) {
                missing.push(format!("{run_id} ({status:?})"));
            }
        }
    }
    Ok(missing)
}

/// How many runs the pipeline has, from the API's `X-Total-Count`.
async fn run_count(stack: &Stack, token: &str) -> anyhow::Result<u64> {
    let request = RequestTemplate::get(format!(
        "/platform/pipeline/{PIPELINE}/pipeline_run?limit=1"
    ))
    .bearer(token)?;
    let answer = http::send_once(stack.front, &request, REQUEST_TIMEOUT)
        .await
        .context("the list of runs got no answer")?;
    if answer.status != StatusCode::OK {
        bail!("the list of runs answered {}", answer.status);
    }
    answer
        .headers
        .get("x-total-count")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .context("the list of runs has no X-Total-Count")
}

/// The runs answered, and what became of them.
#[derive(Debug, Clone)]
struct RunsFound {
    /// Executes answered with a run.
    answered: usize,
    /// Runs answered that the API did not find afterwards.
    missing: Vec<String>,
    /// The pipeline's runs made during the loop, as the API counts them
    /// afterwards less those it counted before.
    in_airflow: u64,
}

/// The loop's answers per kind, the restarts, and the checks.
fn report(
    args: &Args,
    outcomes: &[Outcome],
    restarts: &[Restart],
    runs: &RunsFound,
    took: Duration,
) -> Report {
    let of = |kind: Kind| -> Vec<&Outcome> {
        outcomes
            .iter()
            .filter(|outcome| outcome.kind == kind)
            .collect()
    };
    let (executes, reads) = (of(Kind::Execute), of(Kind::GetRun));
    let count = |set: &[&Outcome], test: &dyn Fn(&Outcome) -> bool| {
        Cell::Count(set.iter().filter(|outcome| test(outcome)).count() as u64)
    };
    let latency = |set: &[&Outcome], quantile: f64| {
        let mut latencies: Vec<Duration> = set.iter().map(|outcome| outcome.latency).collect();
        latencies.sort();
        let at = ((latencies.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
        latencies
            .get(at)
            .map_or(Cell::Empty, |latency| Cell::latency(*latency))
    };
    let is_2xx = |outcome: &Outcome| matches!(outcome.answer, Answer::Status(status, _) if status.is_success());
    let is_429 = |outcome: &Outcome| {
        outcome.acceptable()
            && matches!(outcome.answer, Answer::Status(status, _) if status == StatusCode::TOO_MANY_REQUESTS)
    };
    let is_lost = |outcome: &Outcome| matches!(outcome.answer, Answer::Lost(_));
    let other = |outcome: &Outcome| !outcome.acceptable() && !is_lost(outcome);
    let row = |name: &str, cell: &dyn Fn(&[&Outcome]) -> Cell| {
        Row::new(name, vec![cell(&executes), cell(&reads)])
    };
    let rows = vec![
        row("sent", &|set| Cell::Count(set.len() as u64)),
        row("2xx", &|set| count(set, &is_2xx)),
        row("documented 429", &|set| count(set, &is_429)),
        row("other status", &|set| count(set, &other)),
        row("no answer", &|set| count(set, &is_lost)),
        row("p50 latency", &|set| latency(set, 0.50)),
        row("p99 latency", &|set| latency(set, 0.99)),
        row("max latency", &|set| latency(set, 1.0)),
    ];

    let failed = outcomes
        .iter()
        .filter(|outcome| !outcome.acceptable())
        .count();
    let delay = SHUTDOWN_DELAY;
    let checks = vec![
        Check {
            target: "every request answered 2xx or a documented 429".to_owned(),
            measured: format!(
                "{} of {}",
                report::thousands((outcomes.len() - failed) as u64),
                report::thousands(outcomes.len() as u64)
            ),
            passed: failed == 0 && !outcomes.is_empty(),
        },
        Check {
            target: "every run answered is found afterwards".to_owned(),
            measured: format!(
                "{} of {}",
                report::thousands((runs.answered - runs.missing.len()) as u64),
                report::thousands(runs.answered as u64)
            ),
            passed: runs.missing.is_empty() && runs.answered > 0,
        },
        Check {
            target: "the loop made as many runs as executes were answered".to_owned(),
            measured: format!(
                "{} runs made, {} answered",
                report::thousands(runs.in_airflow),
                report::thousands(runs.answered as u64)
            ),
            passed: runs.in_airflow == runs.answered as u64,
        },
        Check {
            target: format!(
                "each draining instance out of rotation within its shutdown delay ({} s)",
                delay.as_secs()
            ),
            measured: restarts
                .iter()
                .map(|restart| {
                    format!(
                        "{}: {}",
                        restart.name,
                        restart.out_of_rotation.map_or_else(
                            || "not before it exited".to_owned(),
                            |after| format!("{:.1} s", after.as_secs_f64())
                        )
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            passed: restarts.len() == 2
                && restarts
                    .iter()
                    .all(|restart| restart.out_of_rotation.is_some_and(|after| after < delay)),
        },
        Check {
            target: "each instance exited 0 and came back into rotation".to_owned(),
            measured: restarts
                .iter()
                .map(|restart| {
                    format!(
                        "{}: {} after {:.1} s, back after {:.1} s",
                        restart.name,
                        restart.exit_status,
                        restart.exited.as_secs_f64(),
                        restart.back_in_rotation.as_secs_f64()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            passed: restarts.len() == 2 && restarts.iter().all(|restart| restart.exit_ok),
        },
    ];
    let mut notes = vec![format!(
        "The traffic ran for {:.0} s; HAProxy checked `/ready` every {} ms, {} failures to take an instance out.",
        took.as_secs_f64(),
        CHECK_INTERVAL.as_millis(),
        CHECK_FALL,
    )];
    if !runs.missing.is_empty() {
        notes.push(format!(
            "Runs not found: {}.",
            runs.missing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Report {
        title: "Rolling restart".to_owned(),
        setup: format!(
            "Two release `maestro` instances on Apache Airflow {} behind HAProxy, {} requests per second (executes and reads of a run, alternating), each instance restarted in turn (SIGTERM, exit, start, back in rotation), {} s of steady traffic before and after.",
            crate::e2e_airflow::AIRFLOW_VERSION,
            args.rate,
            args.settle_seconds,
        ),
        corner: String::new(),
        columns: vec!["execute".to_owned(), "GET run".to_owned()],
        rows,
        checks,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: Kind, answer: Answer) -> Outcome {
        Outcome {
            kind,
            sent: Duration::from_millis(100),
            latency: Duration::from_millis(30),
            answer,
            run_id: None,
        }
    }

    fn status(code: u16, exception: Option<&str>) -> Answer {
        Answer::Status(
            StatusCode::from_u16(code).expect("a status"),
            exception.map(str::to_owned),
        )
    }

    #[test]
    fn only_2xx_and_the_documented_429s_are_acceptable() {
        for answer in [
            status(200, None),
            status(429, Some("RateLimited")),
            status(429, Some("TooManyWaits")),
            status(429, Some("PipelineQueueFull")),
        ] {
            assert!(
                outcome(Kind::Execute, answer.clone()).acceptable(),
                "{answer:?}"
            );
        }
        for answer in [
            status(429, None),
            status(429, Some("SomethingElse")),
            status(502, Some("UpstreamError")),
            status(503, None),
            status(404, Some("PipelineRunNotFound")),
            Answer::Lost("cannot connect: refused".to_owned()),
        ] {
            assert!(
                !outcome(Kind::GetRun, answer.clone()).acceptable(),
                "{answer:?}"
            );
        }
    }

    fn restarts(out: Duration) -> Vec<Restart> {
        ["maestro-1", "maestro-2"]
            .map(|name| Restart {
                name: name.to_owned(),
                out_of_rotation: Some(out),
                exited: Duration::from_millis(5_200),
                exit_ok: true,
                exit_status: "exit status: 0".to_owned(),
                back_in_rotation: Duration::from_millis(2_100),
            })
            .to_vec()
    }

    fn args() -> Args {
        Args {
            check: true,
            rate: 20,
            settle_seconds: 3,
            python: "python3".to_owned(),
            metadata_db: crate::e2e_airflow::MetadataDb::Postgres,
            startup_timeout: 300,
        }
    }

    #[test]
    fn a_clean_restart_passes_every_check() {
        let outcomes = vec![
            outcome(Kind::Execute, status(200, None)),
            outcome(Kind::GetRun, status(200, None)),
            outcome(Kind::Execute, status(429, Some("RateLimited"))),
        ];
        let runs = RunsFound {
            answered: 1,
            missing: Vec::new(),
            in_airflow: 1,
        };
        let report = report(
            &args(),
            &outcomes,
            &restarts(Duration::from_millis(1_800)),
            &runs,
            Duration::from_secs(25),
        );
        assert!(report.missed().is_empty(), "{}", report.text());
        let markdown = report.markdown();
        assert!(markdown.contains("\n| sent | 2 | 1 |\n"), "{markdown}");
        assert!(
            markdown.contains("\n| documented 429 | 1 | 0 |\n"),
            "{markdown}"
        );
    }

    #[test]
    fn a_lost_request_a_lost_run_an_extra_run_or_a_slow_drain_fails() {
        let outcomes = vec![
            outcome(Kind::Execute, status(200, None)),
            outcome(Kind::GetRun, Answer::Lost("reset".to_owned())),
            outcome(Kind::Execute, status(503, None)),
        ];
        let runs = RunsFound {
            answered: 2,
            missing: vec!["manual__x (Ok(404))".to_owned()],
            in_airflow: 3,
        };
        let report = report(
            &args(),
            &outcomes,
            &restarts(SHUTDOWN_DELAY),
            &runs,
            Duration::from_secs(25),
        );
        assert_eq!(
            report.missed(),
            [
                "every request answered 2xx or a documented 429",
                "every run answered is found afterwards",
                "the loop made as many runs as executes were answered",
                "each draining instance out of rotation within its shutdown delay (5 s)",
            ]
        );
    }
}
