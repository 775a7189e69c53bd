//! `cargo xtask soak`: mixed traffic against the release `maestro` for a
//! number of minutes, under faults, and the checks that nothing was lost
//! and nothing leaked.
//!
//! The service runs as a child process on a free loopback port with a
//! fixture of a few customers and pipelines, short edge timeouts and JSON
//! logs to a file under `target/soak/`. With `--backend platform-api` it
//! sits in front of a fake upstream in this process, which the soak stops
//! (connections refused: 503) and stalls (answers held past the upstream
//! timeout: 504) in turn, 5 s every 30 s.
//!
//! At the end, once the traffic has stopped and the idle timeouts have
//! passed, it checks through the API that every run an execute was
//! answered 200 for is in its pipeline's run list, that no
//! `Idempotency-Key` was answered with two runs, that every answer was one
//! its request may get, and that the service's RSS and open descriptors
//! are back within 10% of their level after warm-up. See the "Soak" section
//! of `docs/operations.md`.

use std::{
    collections::BTreeMap,
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use hyper::StatusCode;
use tokio::time::{Instant, sleep};

use crate::{
    bench::report::{Cell, Check, Report, Row, mebibytes, thousands},
    http::{self, RequestTemplate},
    process::{ChildGuard, free_local_addr, resident_set_size},
};
use check::{Accepted, Level, Listed, Sample};
use traffic::{Backend, Edge, Kind, Outcome, Record, Traffic};
use upstream::{FakePipeline, FakeUpstream};
use world::World;

mod check;
mod raw;
mod traffic;
mod upstream;
mod world;

/// How long the service may take to answer `GET /health` after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often RSS and open descriptors are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples taken at the end, a second apart; their median is "the end".
const END_SAMPLES: usize = 3;
/// How long a simulated run stays `RUNNING`, on either backend: short, so
/// that runs finish and queues stay short, long enough that some queue.
const RUN_SECONDS: f64 = 0.5;
/// The soak's edge timeouts, shorter than the defaults so that slow and
/// idle clients are closed many times over in a run.
const EDGE: Edge = Edge {
    header_read: Duration::from_secs(2),
    idle: Duration::from_secs(5),
    body: Duration::from_secs(3),
};
/// How long the service keeps a key's answer: short, so that keys expire
/// and are dropped many times over in a run, and the key store reaches its
/// working size early instead of growing for a day.
const KEY_RETENTION: Duration = Duration::from_secs(120);
/// The upstream timeout with `--backend platform-api`: a stalled upstream
/// costs each call this long.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The fake upstream is up this long between two outages...
const UPSTREAM_UP_FOR: Duration = Duration::from_secs(25);
/// ... and each outage lasts this long.
const UPSTREAM_OUTAGE: Duration = Duration::from_secs(5);

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Minutes of traffic (fractions allowed, e.g. 0.5 to try it out).
    #[arg(long, default_value_t = 10.0, value_parser = positive_minutes)]
    minutes: f64,

    /// The backend the service runs on: `platform-api` puts it in front
    /// of a fake upstream that the soak stops and stalls.
    #[arg(long, value_enum, default_value_t = SoakBackend::Memory)]
    backend: SoakBackend,

    /// Keep-alive connections of the readers.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    connections: usize,

    /// A release `maestro` to soak instead of building one.
    #[arg(long)]
    maestro_bin: Option<PathBuf>,
}

fn positive_minutes(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(minutes) if minutes.is_finite() && minutes > 0.0 && minutes <= 24.0 * 60.0 => {
            Ok(minutes)
        }
        _ => Err(format!("`{raw}` is not a number of minutes above 0")),
    }
}

/// The backends the soak can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SoakBackend {
    /// The embedded memory backend.
    Memory,
    /// The Platform-API backend, in front of a fake upstream in this
    /// process.
    PlatformApi,
}

impl SoakBackend {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::PlatformApi => "platform-api",
        }
    }

    fn traffic(self) -> Backend {
        match self {
            Self::Memory => Backend::Memory,
            Self::PlatformApi => Backend::PlatformApi,
        }
    }
}

/// Runs `cargo xtask soak`.
///
/// # Errors
/// When building or starting the service fails, or a check fails.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let maestro = match &args.maestro_bin {
        Some(path) => path.clone(),
        None => crate::process::build_release_maestro()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(soak(args, &maestro))?;
    println!();
    print!("{}", report.text());
    println!();
    println!("For docs/operations.md:");
    println!();
    print!("{}", report.markdown());
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

/// What the soak measured, for the report.
#[derive(Debug)]
struct Outcomes {
    backend: SoakBackend,
    minutes: f64,
    connections: usize,
    date: String,
    log: PathBuf,
    tally: BTreeMap<(Kind, Outcome), u64>,
    accepted: Vec<Accepted>,
    unheard: u64,
    problems: Vec<String>,
    /// The run lists at the end, or why they could not be read.
    listed: Result<Listed, String>,
    before: Option<Sample>,
    samples: Vec<Sample>,
    traffic: Duration,
    end: Option<Level>,
    healthy_at_end: bool,
    /// When the service's process exited, if it did during the traffic.
    exited_at: Option<Duration>,
    upstream: Option<UpstreamFigures>,
    log_levels: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct UpstreamFigures {
    refused_outages: u64,
    stalled_outages: u64,
    stats: upstream::UpstreamStats,
}

async fn soak(args: &Args, maestro: &Path) -> anyhow::Result<Report> {
    let traffic_for = Duration::from_secs_f64(args.minutes * 60.0);
    let world = Arc::new(World::new(traffic_for.as_secs() + 3600)?);
    let backend = args.backend;

    let mut fake = None;
    let mut files = Vec::new();
    let mut env: Vec<(&str, String)> = vec![
        ("MAESTRO_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("MAESTRO_SHUTDOWN_DELAY_SECONDS", "0".to_owned()),
        (
            "MAESTRO_HEADER_READ_TIMEOUT_SECONDS",
            EDGE.header_read.as_secs_f64().to_string(),
        ),
        (
            "MAESTRO_IDLE_TIMEOUT_SECONDS",
            EDGE.idle.as_secs_f64().to_string(),
        ),
        (
            "MAESTRO_BODY_TIMEOUT_SECONDS",
            EDGE.body.as_secs_f64().to_string(),
        ),
        ("MAESTRO_REQUEST_TIMEOUT_SECONDS", "15".to_owned()),
        (
            "MAESTRO_IDEMPOTENCY_TTL",
            format!("{}s", KEY_RETENTION.as_secs()),
        ),
        (
            "MAESTRO_UPSTREAM_TIMEOUT_MS",
            UPSTREAM_TIMEOUT.as_millis().to_string(),
        ),
    ];
    match backend {
        SoakBackend::Memory => {
            let fixture = world.fixture()?;
            env.extend([
                ("MAESTRO_BACKEND", "memory".to_owned()),
                (
                    "MAESTRO_MEMORY_FIXTURE",
                    fixture.path().to_string_lossy().into_owned(),
                ),
                ("MAESTRO_MEMORY_RUN_SECONDS", RUN_SECONDS.to_string()),
                ("MAESTRO_MEMORY_QUEUE_LIMIT", "100000".to_owned()),
                // Every run of the soak is kept, so that the run lists can
                // show that none is missing.
                ("MAESTRO_MEMORY_HISTORY_LIMIT", "1000000".to_owned()),
            ]);
            files.push(fixture);
        }
        SoakBackend::PlatformApi => {
            let pipelines: Vec<FakePipeline> = world
                .all_pipelines()
                .map(|pipeline| FakePipeline {
                    id: pipeline.id.clone(),
                    customer: world.customer(pipeline).to_owned(),
                    name: pipeline.name.clone(),
                })
                .collect();
            let mut upstream = FakeUpstream::new(
                free_local_addr()?,
                &pipelines,
                Duration::from_secs_f64(RUN_SECONDS),
            );
            upstream.start()?;
            env.extend([
                ("MAESTRO_BACKEND", "platform-api".to_owned()),
                ("MAESTRO_PLATFORM_API_URL", upstream.url()),
                (
                    "MAESTRO_PLATFORM_API_TOKEN",
                    upstream::SERVICE_TOKEN.to_owned(),
                ),
            ]);
            fake = Some(upstream);
        }
    }

    let date = chrono::Utc::now();
    let log = crate::project_root().join("target/soak").join(format!(
        "maestro-{}-{}.log",
        backend.name(),
        date.format("%Y%m%dT%H%M%SZ")
    ));
    let addr = free_local_addr()?;
    let server = start_maestro(maestro, addr, &world.secret, &env, &log).await?;
    let pid = server.id();
    println!(
        "== maestro ({} backend) on {addr}, pid {pid}, logging to {}",
        backend.name(),
        log.display()
    );
    let before = sample(pid, Duration::ZERO).ok();

    let record = Arc::new(Record::default());
    let started = Instant::now();
    let traffic = Arc::new(Traffic {
        addr,
        world: Arc::clone(&world),
        edge: EDGE,
        connections: args.connections,
        key_retention: KEY_RETENTION,
        started,
        record: Arc::clone(&record),
    });
    let until = started + traffic_for;
    println!(
        "== {} min of traffic until {}",
        args.minutes,
        (date + chrono::TimeDelta::from_std(traffic_for).unwrap_or_default())
            .format("%H:%M:%S UTC")
    );
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_until(
        pid,
        started,
        until,
        Arc::clone(&samples),
        Arc::clone(&record),
    ));
    let outages = fake.map(|upstream| tokio::spawn(outages(upstream, until)));
    traffic::run(Arc::clone(&traffic), until).await;
    let traffic_took = started.elapsed();
    let exited_at = sampler.await.context("the sampler failed")?;
    if let Some(at) = exited_at {
        eprintln!(
            "warning: maestro exited {:.0} s into the traffic; see {}",
            at.as_secs_f64(),
            log.display()
        );
    }
    let upstream = match outages {
        Some(outages) => Some(outages.await.context("the outage task failed")?),
        None => None,
    };

    // Idle keep-alive connections, ours and the service's to the upstream
    // (closed after 4 s idle), are closed by now.
    let settle = EDGE.idle + EDGE.header_read + Duration::from_secs(2);
    println!(
        "== traffic over after {:.0} s; waiting {} s for the idle timeouts",
        traffic_took.as_secs_f64(),
        settle.as_secs()
    );
    sleep(settle).await;
    let mut end_samples = Vec::new();
    for _ in 0..END_SAMPLES {
        end_samples.extend(sample(pid, started.elapsed()).ok());
        sleep(Duration::from_secs(1)).await;
    }
    let end = check::level(&end_samples);
    let healthy_at_end = answers_health(addr).await;

    println!("== reading every pipeline's run list");
    let listed = list_runs(addr, &world)
        .await
        .map_err(|err| format!("{err:#}"));
    let upstream_figures = upstream
        .as_ref()
        .map(|(upstream, refused, stalled)| UpstreamFigures {
            refused_outages: *refused,
            stalled_outages: *stalled,
            stats: upstream.stats(),
        });
    drop(server);
    drop(upstream);
    drop(files);

    let samples = std::mem::take(
        &mut *samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(report(&Outcomes {
        backend,
        minutes: args.minutes,
        connections: args.connections,
        date: date.format("%Y-%m-%d").to_string(),
        log_levels: log_levels(&log),
        log,
        tally: record.tally(),
        accepted: record.accepted(),
        unheard: record.unheard(),
        problems: record.problems(),
        listed,
        before,
        samples,
        traffic: traffic_took,
        end,
        healthy_at_end,
        exited_at,
        upstream: upstream_figures,
    }))
}

/// Starts `maestro serve` on `addr` with the soak's secret and `env`, and
/// nothing else of the caller's `MAESTRO_*` settings, its output to `log`.
async fn start_maestro(
    maestro: &Path,
    addr: SocketAddr,
    secret: &str,
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<ChildGuard> {
    if let Some(folder) = log.parent() {
        fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(maestro);
    command.arg("serve");
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("MAESTRO_") {
            command.env_remove(name);
        }
    }
    command
        .env("MAESTRO_BIND", addr.to_string())
        .env("MAESTRO_JWT_HS256_SECRET", secret)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("cannot share the log file")?)
        .stderr(file);
    let mut server = ChildGuard::spawn("maestro", &mut command)?;
    server
        .wait_until_healthy(addr, STARTUP_TIMEOUT)
        .await
        .with_context(|| format!("see {}", log.display()))?;
    Ok(server)
}

/// The service's RSS and open descriptors now.
fn sample(pid: u32, at: Duration) -> anyhow::Result<Sample> {
    let folder = format!("/proc/{pid}/fd");
    let fds = fs::read_dir(&folder)
        .with_context(|| format!("cannot list {folder}"))?
        .count() as u64;
    Ok(Sample {
        at,
        rss: resident_set_size(pid)?,
        fds,
    })
}

/// Samples every [`SAMPLE_EVERY`] until `until`, and says how it goes
/// every minute; when the service's process exited meanwhile, when.
async fn sample_until(
    pid: u32,
    started: Instant,
    until: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    record: Arc<Record>,
) -> Option<Duration> {
    let mut next_word = started + Duration::from_secs(60);
    while Instant::now() < until {
        sleep(SAMPLE_EVERY).await;
        let Ok(taken) = sample(pid, started.elapsed()) else {
            if has_exited(pid) {
                return Some(started.elapsed());
            }
            continue;
        };
        samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(taken);
        if Instant::now() >= next_word && Instant::now() < until {
            next_word += Duration::from_secs(60);
            let requests: u64 = record.tally().values().sum();
            println!(
                "   {:.0} min: {} requests, {} executes accepted, RSS {}, {} open fds",
                started.elapsed().as_secs_f64() / 60.0,
                thousands(requests),
                thousands(record.accepted().len() as u64),
                mebibytes(taken.rss),
                taken.fds
            );
        }
    }
    None
}

/// Whether process `pid`, a child not reaped yet, has exited: it is a
/// zombie, or gone.
fn has_exited(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // `pid (name) state ...`; the name may hold spaces and parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    })
}

/// Takes the upstream down every [`UPSTREAM_UP_FOR`] for
/// [`UPSTREAM_OUTAGE`], refused and stalled in turn, until `until`; gives
/// it back up, with how many outages of each kind it had.
async fn outages(mut upstream: FakeUpstream, until: Instant) -> (FakeUpstream, u64, u64) {
    let (mut refused, mut stalled) = (0, 0);
    loop {
        sleep(UPSTREAM_UP_FOR).await;
        if Instant::now() + UPSTREAM_OUTAGE >= until {
            break;
        }
        if (refused + stalled) % 2 == 0 {
            upstream.stop().await;
            refused += 1;
            sleep(UPSTREAM_OUTAGE).await;
            // The port was ours a moment ago; should another process take
            // it meanwhile, the outage lasts until it is free again.
            while let Err(err) = upstream.start() {
                eprintln!("warning: cannot restart the fake upstream: {err:#}");
                sleep(Duration::from_secs(1)).await;
            }
        } else {
            upstream.set_stalled(true);
            stalled += 1;
            sleep(UPSTREAM_OUTAGE).await;
            upstream.set_stalled(false);
        }
    }
    (upstream, refused, stalled)
}

async fn answers_health(addr: SocketAddr) -> bool {
    http::send_once(
        addr,
        &RequestTemplate::get("/health"),
        Duration::from_secs(5),
    )
    .await
    .is_ok_and(|answer| answer.status == StatusCode::OK)
}

/// Every run id in every pipeline's run list, read a page of 1,000 at a
/// time until `X-Total-Count` runs have been read.
async fn list_runs(addr: SocketAddr, world: &World) -> anyhow::Result<Listed> {
    const PAGE: usize = 1000;
    let mut listed = Listed::new();
    for pipeline in world.all_pipelines() {
        let runs = listed.entry(pipeline.id.clone()).or_default();
        let mut offset = 0;
        loop {
            let path = format!(
                "/platform/pipeline/{}/pipeline_run?limit={PAGE}&offset={offset}",
                pipeline.id
            );
            let request = RequestTemplate::get(path).bearer(world.token(pipeline))?;
            let answer = http::send_once(addr, &request, Duration::from_secs(30))
                .await
                .with_context(|| format!("cannot list the runs of {}", pipeline.id))?;
            if answer.status != StatusCode::OK {
                bail!(
                    "listing the runs of {} answered {}",
                    pipeline.id,
                    answer.status
                );
            }
            let total: usize = answer
                .headers
                .get("x-total-count")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
                .context("a run list without X-Total-Count")?;
            let page = answer.json();
            let items = page.as_array().context("a run list that is not an array")?;
            for run in items {
                let id = run["pipeline_run_id"]
                    .as_str()
                    .context("a run without pipeline_run_id")?;
                runs.insert(id.to_owned());
            }
            offset += items.len();
            if items.is_empty() || offset >= total {
                break;
            }
        }
    }
    Ok(listed)
}

/// Lines of the JSON log by level.
fn log_levels(log: &Path) -> BTreeMap<String, u64> {
    let mut levels = BTreeMap::new();
    let Ok(text) = fs::read_to_string(log) else {
        return levels;
    };
    for line in text.lines() {
        let level = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|entry| entry["level"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "not JSON".to_owned());
        *levels.entry(level).or_default() += 1;
    }
    levels
}

/// The report: requests by kind and outcome, the footprint, the run
/// accounting, the checks.
fn report(outcomes: &Outcomes) -> Report {
    let backend = outcomes.backend.traffic();
    let mut rows = Vec::new();
    let mut unexpected = Vec::new();
    for (&(kind, outcome), &count) in &outcomes.tally {
        let expected = kind.expects(outcome, backend);
        if !expected {
            unexpected.push(format!("{kind}: {outcome} x{count}"));
        }
        let flag = if expected { "" } else { " (unexpected)" };
        rows.push(Row::new(
            format!("{kind}: {outcome}{flag}"),
            vec![Cell::Count(count)],
        ));
    }
    let requests: u64 = outcomes.tally.values().sum();
    rows.push(Row::new("all requests", vec![Cell::Count(requests)]));

    let level = check::level_after_warmup(&outcomes.samples, outcomes.traffic);
    let highest = |value: fn(&Sample) -> u64| outcomes.samples.iter().map(value).max();
    let footprint = [
        ("before traffic", outcomes.before.map(|s| (s.rss, s.fds))),
        (
            "level after warm-up (median, 10-20% of the run)",
            level.map(|l| (l.rss, l.fds)),
        ),
        (
            "highest during traffic",
            highest(|s| s.rss).zip(highest(|s| s.fds)),
        ),
        ("at the end, idle", outcomes.end.map(|l| (l.rss, l.fds))),
    ];
    for (when, figures) in footprint {
        rows.push(Row::new(
            format!("RSS / open fds: {when}"),
            vec![Cell::pair(
                Cell::Mebibytes(figures.map(|f| f.0)),
                figures.map_or(Cell::Empty, |f| Cell::Count(f.1)),
            )],
        ));
    }
    let distinct = check::distinct_runs(&outcomes.accepted) as u64;
    rows.push(Row::new(
        "executes answered 200 / distinct runs",
        vec![Cell::pair(
            Cell::Count(outcomes.accepted.len() as u64),
            Cell::Count(distinct),
        )],
    ));
    let keys = check::distinct_keys(&outcomes.accepted) as u64;
    rows.push(Row::new("keys answered 200", vec![Cell::Count(keys)]));
    if let Ok(listed) = &outcomes.listed {
        let total: usize = listed.values().map(|runs| runs.len()).sum();
        rows.push(Row::new(
            "runs listed at the end / of them named by no 200",
            vec![Cell::pair(
                Cell::Count(total as u64),
                Cell::Count(check::unanswered(&outcomes.accepted, listed) as u64),
            )],
        ));
    }
    if let Some(upstream) = &outcomes.upstream {
        rows.push(Row::new(
            "upstream outages: refused / stalled",
            vec![Cell::pair(
                Cell::Count(upstream.refused_outages),
                Cell::Count(upstream.stalled_outages),
            )],
        ));
        rows.push(Row::new(
            "upstream: requests / runs made",
            vec![Cell::pair(
                Cell::Count(upstream.stats.requests),
                Cell::Count(upstream.stats.runs_made),
            )],
        ));
    }
    let level_count = |name: &str| outcomes.log_levels.get(name).copied().unwrap_or(0);
    rows.push(Row::new(
        "log lines: WARN / ERROR",
        vec![Cell::pair(
            Cell::Count(level_count("WARN")),
            Cell::Count(level_count("ERROR")),
        )],
    ));

    let mut notes = vec![format!("The service's log: `{}`.", outcomes.log.display())];
    if let Some(at) = outcomes.exited_at {
        notes.push(format!(
            "The service's process exited {:.0} s into the traffic: its log says why (a shutdown signal, a panic).",
            at.as_secs_f64()
        ));
    }
    notes.extend(
        outcomes
            .problems
            .iter()
            .map(|problem| format!("Problem: {problem}")),
    );
    Report {
        title: format!("soak, {} backend", outcomes.backend.name()),
        setup: setup(outcomes),
        corner: "requests by kind: outcome".to_owned(),
        columns: vec!["count".to_owned()],
        rows,
        checks: checks(outcomes, level, &unexpected),
        notes,
    }
}

/// On memory, the bytes of the runs accepted since the level after warm-up,
/// which the service keeps by design (the soak raises its history limit);
/// on Platform-API the runs are kept upstream.
fn kept_since_level(outcomes: &Outcomes) -> u64 {
    match outcomes.backend {
        SoakBackend::Memory => {
            let since = check::level_until(outcomes.traffic);
            check::runs_after(&outcomes.accepted, since) as u64 * check::RUN_BYTES
        }
        SoakBackend::PlatformApi => 0,
    }
}

fn setup(outcomes: &Outcomes) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut setup = format!(
        "`cargo xtask soak --minutes {} --backend {}`, {}: {:.1} min of traffic, {} reader connections, {cpus} CPUs; edge timeouts {} s (head), {} s (idle), {} s (body)",
        outcomes.minutes,
        outcomes.backend.name(),
        outcomes.date,
        outcomes.traffic.as_secs_f64() / 60.0,
        outcomes.connections,
        EDGE.header_read.as_secs_f64(),
        EDGE.idle.as_secs_f64(),
        EDGE.body.as_secs_f64(),
    );
    setup.push_str(&format!(
        "; `Idempotency-Key` answers kept {} s",
        KEY_RETENTION.as_secs()
    ));
    if outcomes.backend == SoakBackend::PlatformApi {
        setup.push_str(&format!(
            "; upstream timeout {} s, the fake upstream down {} s every {} s, refused and stalled in turn",
            UPSTREAM_TIMEOUT.as_secs_f64(),
            UPSTREAM_OUTAGE.as_secs(),
            (UPSTREAM_UP_FOR + UPSTREAM_OUTAGE).as_secs()
        ));
    }
    setup.push('.');
    setup
}

fn checks(outcomes: &Outcomes, level: Option<Level>, unexpected: &[String]) -> Vec<Check> {
    let requests: u64 = outcomes.tally.values().sum();
    let mut checks = vec![Check {
        target: "every answer is one its request may get".to_owned(),
        measured: if unexpected.is_empty() && outcomes.problems.is_empty() {
            format!("all {}", thousands(requests))
        } else {
            let mut all = unexpected.to_vec();
            all.extend(outcomes.problems.iter().cloned());
            all.join("; ")
        },
        passed: requests > 0 && unexpected.is_empty() && outcomes.problems.is_empty(),
    }];

    let distinct = check::distinct_runs(&outcomes.accepted);
    checks.push(match &outcomes.listed {
        Ok(listed) => {
            let lost = check::lost(&outcomes.accepted, listed);
            Check {
                target: "every execute answered 200 is in its pipeline's run list".to_owned(),
                measured: match lost.first() {
                    None => format!(
                        "{} of {} runs listed",
                        thousands(distinct as u64),
                        thousands(distinct as u64)
                    ),
                    Some(first) => format!(
                        "{} of {} runs missing, e.g. {} of {}",
                        lost.len(),
                        distinct,
                        first.run_id,
                        first.pipeline
                    ),
                },
                passed: distinct > 0 && lost.is_empty(),
            }
        }
        Err(err) => Check {
            target: "every execute answered 200 is in its pipeline's run list".to_owned(),
            measured: format!("the run lists could not be read: {err}"),
            passed: false,
        },
    });

    let doubled = check::keys_with_two_runs(&outcomes.accepted);
    let keys = check::distinct_keys(&outcomes.accepted);
    checks.push(Check {
        target: "no Idempotency-Key was answered with two runs".to_owned(),
        measured: match doubled.first() {
            None => format!("{} keys, one run each", thousands(keys as u64)),
            Some(first) => format!(
                "{} keys with two runs or more, e.g. {} of {}: {:?}",
                doubled.len(),
                first.key,
                first.customer,
                first.runs
            ),
        },
        passed: keys > 0 && doubled.is_empty(),
    });

    if outcomes.backend == SoakBackend::Memory
        && let Ok(listed) = &outcomes.listed
    {
        // On memory every execute is answered, so every run is one some
        // client heard of; the upstream's stalls make runs no one hears of.
        let unanswered = check::unanswered(&outcomes.accepted, listed) as u64;
        checks.push(Check {
            target: "every listed run was named by a 200 (no run made twice)".to_owned(),
            measured: format!(
                "{unanswered} named by none, {} executes got no answer",
                outcomes.unheard
            ),
            passed: unanswered <= outcomes.unheard,
        });
    }

    let footprint = level.zip(outcomes.end);
    let kept = kept_since_level(outcomes);
    checks.push(Check {
        target: format!(
            "RSS at the end within {:.0}% of its level after warm-up{}",
            check::MAX_DRIFT * 100.0,
            if outcomes.backend == SoakBackend::Memory {
                format!(", the runs kept since aside ({} B each)", check::RUN_BYTES)
            } else {
                String::new()
            }
        ),
        measured: footprint.map_or_else(
            || "no level or no end sample".to_owned(),
            |(level, end)| {
                let mut measured = format!(
                    "{} against {} ({})",
                    mebibytes(end.rss),
                    mebibytes(level.rss),
                    check::drift(level.rss, end.rss)
                );
                if kept > 0 {
                    let net = end.rss.saturating_sub(kept);
                    measured.push_str(&format!(
                        "; {} without the {} the runs kept since hold ({})",
                        mebibytes(net),
                        format_args!("{:.0} KiB", kept as f64 / 1024.0),
                        check::drift(level.rss, net)
                    ));
                }
                measured
            },
        ),
        passed: footprint.is_some_and(|(level, end)| check::rss_is_back(level.rss, end.rss, kept)),
    });
    checks.push(Check {
        target: format!(
            "open fds at the end within {:.0}% (+{}) of their level after warm-up",
            check::MAX_DRIFT * 100.0,
            check::FD_SLACK
        ),
        measured: footprint.map_or_else(
            || "no level or no end sample".to_owned(),
            |(level, end)| format!("{} against {}", end.fds, level.fds),
        ),
        passed: footprint.is_some_and(|(level, end)| check::fds_are_back(level.fds, end.fds)),
    });
    // Stricter than the level after warm-up, which counts the clients'
    // connections: once they have gone, the count before any traffic.
    let idle = outcomes.before.zip(outcomes.end);
    checks.push(Check {
        target: format!(
            "open fds at the end at most their count before traffic (+{})",
            check::FD_SLACK
        ),
        measured: idle.map_or_else(
            || "no sample before traffic or at the end".to_owned(),
            |(before, end)| format!("{} against {}", end.fds, before.fds),
        ),
        passed: idle.is_some_and(|(before, end)| end.fds <= before.fds + check::FD_SLACK),
    });
    if let Some(upstream) = &outcomes.upstream {
        checks.push(Check {
            target: "the fake upstream got no request that breaks its contract".to_owned(),
            measured: if upstream.stats.violations == 0 {
                "none".to_owned()
            } else {
                format!(
                    "{}: {}",
                    upstream.stats.violations,
                    upstream.stats.first_violations.join("; ")
                )
            },
            passed: upstream.stats.violations == 0,
        });
    }
    checks.push(Check {
        target: "the service still answers GET /health at the end".to_owned(),
        measured: if outcomes.healthy_at_end {
            "200"
        } else {
            "no 200"
        }
        .to_owned(),
        passed: outcomes.healthy_at_end,
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_has_not_exited_and_an_unreaped_one_has() {
        assert!(!has_exited(std::process::id()));
        let mut child = Command::new("true").spawn().expect("true starts");
        // Waits for the exit itself (no time is assumed): a zombie shows
        // up in /proc once `true` has run, however long that takes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !has_exited(child.id()) {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::yield_now();
        }
        assert!(has_exited(child.id()), "a zombie until it is reaped");
        child.wait().expect("reaped");
    }

    #[test]
    fn minutes_are_positive_and_may_be_fractions() {
        assert_eq!(positive_minutes("10"), Ok(10.0));
        assert_eq!(positive_minutes("0.5"), Ok(0.5));
        assert!(positive_minutes("0").is_err());
        assert!(positive_minutes("-1").is_err());
        assert!(positive_minutes("soon").is_err());
    }
}
