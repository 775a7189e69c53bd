//! The events part of `cargo xtask bench`: 1,000 event streams
//! (`GET /platform/events`) open at once, with the memory they add to the
//! service and how soon each run change reaches the last of the streams
//! that should tell it; then a webhook fan-out of 1,000 deliveries to a
//! receiver in the bench, with its throughput and latency.
//!
//! The streams run on a fresh `maestro` on the memory backend, then on a
//! bare axum server whose event streams are a channel each: what holding
//! and writing to 1,000 streams costs axum, hyper and tokio alone. Each
//! stream has a connection of its own. The server's RSS is read before the
//! streams open and once all are open; then runs are triggered on a
//! schedule, and every stream keeps what it is told with the arrival of
//! each piece, on a clock that reads the time as the service does (see
//! `lifecycle::WallClock`). A change's instant is the `updated_at` of the
//! run it tells of, and its delivery is the arrival on the last of its
//! customer's streams less that instant.
//!
//! The fan-out registers webhooks for several customers (at most 10 each,
//! as the contract allows), all pointing at the receiver, and triggers one
//! run per pipeline one after the other, so that every run's appearance
//! is due to its customer's webhooks at once. Every delivery's signature
//! is checked as the Standard Webhooks specification says.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::Body,
    extract::{Path as UrlPath, State},
    response::Response,
    routing::{get, post},
};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    HeaderMap, Method, Request, StatusCode,
    body::{Frame, Incoming},
    client::conn::http1::{self, SendRequest},
    header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Value, json};
use tempfile::NamedTempFile;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use uuid::Uuid;

use super::{
    airflow::load_average,
    execute_request,
    lifecycle::{
        CALL_TIMEOUT, CONNECT_BATCH, CONNECT_PAUSE, SETTLE, SPARE_FILES, Server, Triggered,
        WallClock, call, call_for, customers_fixture, ensure_open_files, instant, memory_env,
        nearest_rank, parse_gauge, trigger,
    },
    mint_token, random_secret,
    report::{Cell, Check, Report, Row, RssReadings, mebibytes, millis, thousands},
    start_baseline, start_maestro, unix_now,
};
use crate::{
    http::RequestTemplate,
    process::{ChildGuard, resident_set_size},
};

/// Event streams open at once.
const STREAMS: usize = 1_000;
/// The customers the streams belong to, as many streams each; the bound
/// on streams per customer is raised to that many.
const STREAM_CUSTOMERS: usize = 4;
/// Streams of each customer.
const STREAMS_PER_CUSTOMER: usize = STREAMS / STREAM_CUSTOMERS;
/// Runs triggered while the streams are open, one per pipeline and the
/// pipelines' customers in turn. Each appears and then ends: two changes.
const RUNS: usize = 100;
/// The changes those runs make.
const CHANGES: usize = 2 * RUNS;
/// The time between two triggers.
const TRIGGER_SPACING: Duration = Duration::from_millis(20);
/// How long each run lasts (`MAESTRO_MEMORY_RUN_SECONDS`).
const RUN_SECONDS: u64 = 1;
/// How long the streams stay open after the last run's end, for its event
/// to arrive: far beyond the target.
const LINGER: Duration = Duration::from_secs(2);
/// The most a change may take to reach the last of its customer's streams,
/// at the 99th percentile.
const MAX_CHANGE_P99: Duration = Duration::from_millis(50);
/// The RSS the open streams may add, all together.
const MAX_STREAMS_RSS: u64 = 32 * 1024 * 1024;
/// The service's gauge of open event streams.
const STREAMS_GAUGE: &str = "maestro_event_streams_open";
/// The statuses a run's changes bring, in order: it starts at once (its
/// pipeline has no other run), then ends.
const STATUSES: [&str; 2] = ["RUNNING", "SUCCESS"];

/// Customers with webhooks.
const HOOK_CUSTOMERS: usize = 10;
/// Webhooks of each: the contract's most.
const HOOKS_PER_CUSTOMER: usize = 10;
/// Runs triggered per customer, one per pipeline.
const HOOK_RUNS_PER_CUSTOMER: usize = 10;
/// The runs of the fan-out.
const HOOK_RUNS: usize = HOOK_CUSTOMERS * HOOK_RUNS_PER_CUSTOMER;
/// The deliveries due: each run's appearance to each of its customer's
/// webhooks.
const DELIVERIES: usize = HOOK_RUNS * HOOKS_PER_CUSTOMER;
/// The event type the webhooks ask for: a run appearing, which every run
/// of the fan-out does once, at its trigger.
const HOOK_EVENT: &str = "run.running";
/// How long the receiver may wait for every delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The prefix of a webhook secret's text (`whsec_` and base64).
const SECRET_PREFIX: &str = "whsec_";

/// Runs the streams on `maestro` and on the bare baseline, then the
/// webhook fan-out, and reports both.
///
/// # Errors
/// When a server cannot be started or set up.
pub(super) async fn run(maestro: &Path) -> anyhow::Result<Vec<Report>> {
    let mut streams = Vec::new();
    for server in [Server::Maestro, Server::Baseline] {
        streams.push(measure_streams(maestro, server).await?);
    }
    let fanout = measure_fanout(maestro).await?;
    Ok(vec![streams_report(&streams), fanout_report(&fanout)])
}

// ---------------------------------------------------------------------
// 1,000 open streams.
// ---------------------------------------------------------------------

/// A column's head.
fn column(server: Server) -> &'static str {
    match server {
        Server::Maestro => "maestro",
        Server::Baseline => "bare axum, a channel per stream",
    }
}

/// The name of customer `index`.
fn customer_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// A server started for the streams, with what its clients need.
struct Started {
    server: Server,
    process: ChildGuard,
    addr: SocketAddr,
    /// One token per customer on `maestro`; none on the baseline.
    tokens: Vec<String>,
    /// The pipelines, one run each; pipeline `i` is customer
    /// `i % STREAM_CUSTOMERS`'s.
    pipelines: Vec<Uuid>,
    _fixture: Option<NamedTempFile>,
}

impl Started {
    /// Starts `server` with what the streams need.
    async fn new(maestro: &Path, server: Server) -> anyhow::Result<Self> {
        let pipelines: Vec<Uuid> = (0..RUNS).map(|_| Uuid::new_v4()).collect();
        match server {
            Server::Maestro => {
                let secret = random_secret();
                let now = unix_now()?;
                let customers: Vec<String> = (0..STREAM_CUSTOMERS)
                    .map(|index| customer_name("bench", index))
                    .collect();
                let tokens = customers
                    .iter()
                    .map(|customer| mint_token(&secret, customer, now))
                    .collect::<anyhow::Result<_>>()?;
                let owned: Vec<(Uuid, &str)> = pipelines
                    .iter()
                    .enumerate()
                    .map(|(index, id)| (*id, customers[index % STREAM_CUSTOMERS].as_str()))
                    .collect();
                let fixture = customers_fixture(&owned)?;
                let mut env = memory_env(&fixture, RUN_SECONDS, None);
                env.push((
                    "MAESTRO_MAX_STREAMS_PER_CUSTOMER",
                    STREAMS_PER_CUSTOMER.to_string(),
                ));
                let (process, addr) = start_maestro(maestro, &secret, &env).await?;
                Ok(Self {
                    server,
                    process,
                    addr,
                    tokens,
                    pipelines,
                    _fixture: Some(fixture),
                })
            }
            Server::Baseline => {
                let (process, addr) = start_baseline(&["--events"]).await?;
                Ok(Self {
                    server,
                    process,
                    addr,
                    tokens: Vec::new(),
                    pipelines,
                    _fixture: None,
                })
            }
        }
    }

    /// Where customer `index`'s streams open, and their token if any.
    fn stream(&self, index: usize) -> (String, Option<String>) {
        match self.server {
            Server::Maestro => (
                "/platform/events".to_owned(),
                self.tokens.get(index).cloned(),
            ),
            Server::Baseline => (
                format!("{BASELINE_EVENTS}/{}", customer_name("bench", index)),
                None,
            ),
        }
    }

    /// What triggers run `index`.
    fn trigger(&self, index: usize) -> anyhow::Result<RequestTemplate> {
        let pipeline = self.pipelines[index];
        let owner = index % STREAM_CUSTOMERS;
        match self.server {
            Server::Maestro => execute_request(&self.tokens[owner], pipeline),
            Server::Baseline => Ok(RequestTemplate::new(
                Method::POST,
                format!(
                    "{BASELINE_CHANGE}/{}/{}",
                    customer_name("bench", owner),
                    pipeline.hyphenated()
                ),
            )),
        }
    }

    /// The streams the server counts open: on `maestro` its gauge, on the
    /// baseline its count.
    async fn open_streams(&self) -> anyhow::Result<u64> {
        match self.server {
            Server::Maestro => {
                let answer = call(self.addr, &RequestTemplate::get("/metrics")).await?;
                parse_gauge(&String::from_utf8_lossy(&answer.body), STREAMS_GAUGE)
                    .with_context(|| format!("/metrics has no {STREAMS_GAUGE} line"))
            }
            Server::Baseline => {
                let answer = call(self.addr, &RequestTemplate::get(BASELINE_STREAMS)).await?;
                String::from_utf8_lossy(&answer.body)
                    .trim()
                    .parse()
                    .context("the baseline's count of streams is not a number")
            }
        }
    }
}

/// A piece of a stream's body and when it arrived.
#[derive(Debug, Clone)]
struct Piece {
    arrival: DateTime<Utc>,
    data: Bytes,
}

/// What one stream heard until the bench closed it.
#[derive(Debug, Default)]
struct Heard {
    pieces: Vec<Piece>,
    /// Why the stream ended before the bench closed it, if it did.
    ended: Option<String>,
}

/// Opens a stream at `path`, with `token` when given: the connection's
/// sender, which must live as long as the stream, and the body, once the
/// answer is a 200.
async fn open_stream(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(SendRequest<Empty<Bytes>>, Incoming)> {
    let socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(ACCEPT, "text/event-stream");
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender.send_request(request.body(Empty::new())?).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::bail!("answered {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((sender, response.into_body()))
}

/// One stream: opens it, says on `opened` whether it did, then keeps what
/// arrives, each piece with its arrival on `clock`, until `stop`.
async fn listen(
    addr: SocketAddr,
    (path, token): (String, Option<String>),
    clock: WallClock,
    opened: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> Heard {
    let open = tokio::time::timeout(CALL_TIMEOUT, open_stream(addr, &path, token.as_deref()));
    let (_sender, mut body) = match open.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let _ = opened.send(Err(format!("{err:#}"))).await;
            return Heard::default();
        }
        Err(_) => {
            let _ = opened.send(Err("no answer in time".to_owned())).await;
            return Heard::default();
        }
    };
    let _ = opened.send(Ok(())).await;
    let mut heard = Heard::default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return heard,
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let arrival = clock.now();
                    if let Ok(data) = frame.into_data() {
                        heard.pieces.push(Piece { arrival, data });
                    }
                }
                Some(Err(err)) => {
                    heard.ended = Some(err.to_string());
                    return heard;
                }
                None => {
                    heard.ended = Some("the server ended the stream".to_owned());
                    return heard;
                }
            },
        }
    }
}

/// One event of a stream: its `event` field, its data, and the arrival of
/// the piece that completed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Told {
    arrival: DateTime<Utc>,
    event: String,
    data: String,
}

/// The events in `pieces`, in order. Comments (`: keep-alive`) and events
/// without data tell nothing and are left out.
fn sse_events(pieces: &[Piece]) -> Vec<Told> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut told = Vec::new();
    for piece in pieces {
        buffer.extend_from_slice(&piece.data);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let mut event = "message".to_owned();
            let mut data: Vec<&str> = Vec::new();
            let text = String::from_utf8_lossy(&block);
            for line in text.lines() {
                let field = |name: &str| {
                    let value = line.strip_prefix(name)?.strip_prefix(':')?;
                    Some(value.strip_prefix(' ').unwrap_or(value))
                };
                if let Some(value) = field("event") {
                    value.clone_into(&mut event);
                } else if let Some(value) = field("data") {
                    data.push(value);
                }
            }
            if !data.is_empty() {
                told.push(Told {
                    arrival: piece.arrival,
                    event,
                    data: data.join("\n"),
                });
            }
        }
    }
    told
}

/// One run change as a stream told it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Change {
    run_id: String,
    status: String,
}

/// The run changes in `told`: each with the instant it happened (the
/// run's `updated_at`) and the event's arrival.
fn run_changes(told: &[Told]) -> Vec<(Change, DateTime<Utc>, DateTime<Utc>)> {
    told.iter()
        .filter(|told| told.event == "run")
        .filter_map(|told| {
            let run: Value = serde_json::from_str(&told.data).ok()?;
            let change = Change {
                run_id: run["pipeline_run_id"].as_str()?.to_owned(),
                status: run["last_status"].as_str()?.to_owned(),
            };
            let at = instant(run["updated_at"].as_str()?)?;
            Some((change, at, told.arrival))
        })
        .collect()
}

/// How the changes of the runs reached the streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tally {
    /// Per change that reached every stream of its customer: from the
    /// change to its arrival on the last of them, sorted.
    latencies: Vec<Duration>,
    /// Events a stream was told of another customer's run.
    strays: usize,
}

/// Tallies what `streams` (each with its customer) heard of `runs` (each
/// with its customer): every run's [`STATUSES`] must reach every stream
/// of the run's customer, and no other.
fn tally(runs: &[(String, usize)], streams: &[(usize, Vec<Told>)]) -> Tally {
    let owner: HashMap<&str, usize> = runs.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    let mut per_customer: HashMap<usize, usize> = HashMap::new();
    // Per change: its instant, the streams that heard it, the last arrival.
    let mut heard: HashMap<Change, (DateTime<Utc>, usize, DateTime<Utc>)> = HashMap::new();
    let mut strays = 0;
    for (customer, told) in streams {
        *per_customer.entry(*customer).or_default() += 1;
        let mut once = HashSet::new();
        for (change, at, arrival) in run_changes(told) {
            match owner.get(change.run_id.as_str()) {
                Some(owner) if owner != customer => strays += 1,
                Some(_) if once.insert(change.clone()) => {
                    let entry = heard.entry(change).or_insert((at, 0, arrival));
                    entry.1 += 1;
                    entry.2 = entry.2.max(arrival);
                }
                _ => {}
            }
        }
    }
    let mut latencies: Vec<Duration> = runs
        .iter()
        .flat_map(|(run_id, owner)| {
            STATUSES.iter().map(move |status| {
                let change = Change {
                    run_id: run_id.clone(),
                    status: (*status).to_owned(),
                };
                (change, *owner)
            })
        })
        .filter_map(|(change, owner)| {
            let (at, streams, last) = heard.get(&change)?;
            (*streams == per_customer.get(&owner).copied().unwrap_or(0))
                .then(|| (*last - *at).to_std().unwrap_or_default())
        })
        .collect();
    latencies.sort_unstable();
    Tally { latencies, strays }
}

/// What one column measured.
#[derive(Debug, Clone, PartialEq)]
struct StreamResults {
    server: Server,
    /// Load averages before the column.
    load_average: String,
    /// Streams answered 200.
    opened: usize,
    /// Streams the server counted open once all were.
    counted: Option<u64>,
    /// The server's RSS before the streams opened and with all open.
    rss: RssReadings,
    /// From the first change to the last.
    changes_span: Duration,
    /// How the changes reached the streams.
    tally: Tally,
    /// Streams that ended before the bench closed them.
    ended_early: usize,
    /// The most a run's `created_at` fell outside the bench's send and
    /// arrival of its trigger.
    clock_excess: Duration,
}

impl StreamResults {
    /// The `quantile` of the deliveries to the last stream.
    fn latency(&self, quantile: f64) -> Option<Duration> {
        nearest_rank(&self.tally.latencies, quantile)
    }

    /// Whether every stream opened and stayed, and every change reached
    /// every stream of its customer and no other.
    fn valid(&self) -> bool {
        self.opened == STREAMS
            && self.ended_early == 0
            && self.tally.strays == 0
            && self.tally.latencies.len() == CHANGES
    }
}

/// Measures one column of the streams on a fresh `server`.
async fn measure_streams(maestro: &Path, server: Server) -> anyhow::Result<StreamResults> {
    ensure_open_files(
        &format!("{} event streams", thousands(STREAMS as u64)),
        STREAMS as u64 + SPARE_FILES,
    )?;
    let load_average = load_average();
    // Started before the server, so that it reads the time as `maestro`
    // does.
    let clock = WallClock::start();
    let started = Started::new(maestro, server).await?;
    let addr = started.addr;
    println!(
        "== {} on {addr}: {STREAMS} event streams of {STREAM_CUSTOMERS} customers, then {RUNS} runs of {RUN_SECONDS} s triggered {} ms apart",
        column(server),
        TRIGGER_SPACING.as_millis(),
    );
    // Read the same way before and with the streams open: after a read of
    // the count, whose own allocations are then in both readings.
    started.open_streams().await?;
    let rss_before = resident_set_size(started.process.id()).ok();

    let (opened_sender, mut opened) = mpsc::channel(STREAMS);
    let (stop, stopped) = watch::channel(false);
    let mut streams = Vec::with_capacity(STREAMS);
    for index in 0..STREAMS {
        // In batches under the listen backlog, as the waits do.
        if index > 0 && index % CONNECT_BATCH == 0 {
            tokio::time::sleep(CONNECT_PAUSE).await;
        }
        let owner = index % STREAM_CUSTOMERS;
        let task = tokio::spawn(listen(
            addr,
            started.stream(owner),
            clock,
            opened_sender.clone(),
            stopped.clone(),
        ));
        streams.push((owner, task));
    }
    let mut open = 0;
    let mut refusals = Vec::new();
    while open + refusals.len() < STREAMS {
        match opened.recv().await {
            Some(Ok(())) => open += 1,
            Some(Err(refusal)) => refusals.push(refusal),
            None => break,
        }
    }
    if let Some(first) = refusals.first() {
        eprintln!(
            "{} of {STREAMS} streams did not open; the first: {first}",
            refusals.len()
        );
    }
    tokio::time::sleep(SETTLE).await;
    let counted = started.open_streams().await.ok();
    let rss_open = resident_set_size(started.process.id()).ok();

    let runs = trigger_runs(&started, clock).await?;
    let first = runs.iter().map(|run| run.created).min();
    let last = runs.iter().map(|run| run.created).max();
    let run_length = TimeDelta::seconds(i64::try_from(RUN_SECONDS)?);
    if let Some(last) = last {
        let close = last + run_length + TimeDelta::from_std(LINGER)?;
        tokio::time::sleep((close - clock.now()).to_std().unwrap_or_default()).await;
    }
    stop.send_replace(true);
    let mut told = Vec::with_capacity(STREAMS);
    let mut ended_early = Vec::new();
    for (owner, task) in streams {
        let heard = task.await.context("a stream's task panicked")?;
        ended_early.extend(heard.ended);
        told.push((owner, sse_events(&heard.pieces)));
    }
    drop(started);
    if let Some(first) = ended_early.first() {
        eprintln!(
            "{} streams ended before the bench closed them; the first: {first}",
            ended_early.len()
        );
    }
    let owned: Vec<(String, usize)> = runs
        .iter()
        .enumerate()
        .map(|(index, run)| (run.run_id.clone(), index % STREAM_CUSTOMERS))
        .collect();
    Ok(StreamResults {
        server,
        load_average,
        opened: open,
        counted,
        rss: RssReadings {
            before: rss_before,
            holding: rss_open,
        },
        changes_span: first
            .zip(last)
            .and_then(|(first, last)| (last + run_length - first).to_std().ok())
            .unwrap_or_default(),
        tally: tally(&owned, &told),
        ended_early: ended_early.len(),
        clock_excess: runs.iter().map(|run| run.excess).max().unwrap_or_default(),
    })
}

/// Triggers the runs, [`TRIGGER_SPACING`] apart, each on its own schedule
/// so that a slow answer does not hold back the next; the runs in order.
async fn trigger_runs(started: &Started, clock: WallClock) -> anyhow::Result<Vec<Triggered>> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(RUNS);
    for index in 0..RUNS {
        let at = start + TRIGGER_SPACING * u32::try_from(index)?;
        let request = started.trigger(index)?;
        let addr = started.addr;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            trigger(addr, &request, clock).await
        }));
    }
    let mut runs = Vec::with_capacity(RUNS);
    for task in tasks {
        runs.push(task.await.context("a trigger's task panicked")??);
    }
    Ok(runs)
}

/// The targets, on the `maestro` column.
fn streams_checks(results: &[StreamResults]) -> Vec<Check> {
    let mut checks = Vec::new();
    for results in results.iter().filter(|r| r.server == Server::Maestro) {
        let streams = thousands(STREAMS as u64);
        checks.push(Check::below(
            &format!(
                "{streams} open streams: p99 from a run change to the last of its customer's streams"
            ),
            results.latency(0.99),
            MAX_CHANGE_P99,
            millis,
            "no change arrived",
            true,
        ));
        checks.push(Check::below(
            &format!("RSS added by {streams} open streams"),
            results.rss.added(),
            MAX_STREAMS_RSS,
            mebibytes,
            "unavailable",
            results.opened == STREAMS,
        ));
        checks.push(Check {
            target: format!(
                "all {streams} streams open, and every change told to every stream of its customer and to no other"
            ),
            measured: format!(
                "{} open, {} of {CHANGES} changes to all, {} to another customer, {} ended early",
                thousands(results.opened as u64),
                results.tally.latencies.len(),
                results.tally.strays,
                results.ended_early,
            ),
            passed: results.valid(),
        });
    }
    checks
}

/// The streams' report: a column per server.
fn streams_report(results: &[StreamResults]) -> Report {
    let rss: Vec<RssReadings> = results.iter().map(|results| results.rss).collect();
    let mut rows = vec![Row::across(
        "streams open / counted by the server",
        results,
        |results| {
            Cell::pair(
                Cell::Count(results.opened as u64),
                results.counted.map_or(Cell::Empty, Cell::Count),
            )
        },
    )];
    rows.extend(RssReadings::rows(
        &rss,
        "RSS before the streams / with all open",
        STREAMS as u64,
        "stream",
    ));
    rows.push(Row::across(
        "from the first change to the last",
        results,
        |results| Cell::latency(results.changes_span),
    ));
    rows.push(Row::across(
        "changes told to every stream of their customer",
        results,
        |results| Cell::Count(results.tally.latencies.len() as u64),
    ));
    rows.extend(Row::quantiles(
        "change to the last stream",
        results,
        StreamResults::latency,
    ));
    rows.push(Row::across(
        "events told to another customer's stream",
        results,
        |results| Cell::Count(results.tally.strays as u64),
    ));
    let notes = results
        .iter()
        .map(|results| {
            format!(
                "{}: load average {} before; every run's `created_at` within the bench's send and arrival of its trigger to {} µs.",
                column(results.server),
                results.load_average,
                results.clock_excess.as_micros(),
            )
        })
        .collect();
    Report {
        title: format!("{} open event streams", thousands(STREAMS as u64)),
        setup: format!(
            "`cargo xtask bench` ({} streams at once, a connection each, {STREAMS_PER_CUSTOMER} for each of {STREAM_CUSTOMERS} customers; on `maestro`, `GET /platform/events` on the memory backend with `MAESTRO_MAX_STREAMS_PER_CUSTOMER={STREAMS_PER_CUSTOMER}`; on the bare axum baseline, a channel per stream): a fresh server per column, then {RUNS} runs of {RUN_SECONDS} s, one per pipeline, triggered {} ms apart, each appearing (`RUNNING`) and ending (`SUCCESS`): {CHANGES} changes, each due to the {STREAMS_PER_CUSTOMER} streams of its customer; per change, from its `updated_at` to its arrival on the last of them.",
            thousands(STREAMS as u64),
            TRIGGER_SPACING.as_millis(),
        ),
        corner: String::new(),
        columns: results
            .iter()
            .map(|results| match results.server {
                Server::Maestro => column(results.server).to_owned(),
                Server::Baseline => format!("{} (not judged)", column(results.server)),
            })
            .collect(),
        rows,
        checks: streams_checks(results),
        notes,
    }
}

// ---------------------------------------------------------------------
// The bare event streams of the baseline.
// ---------------------------------------------------------------------

/// Where the baseline's streams open, followed by `/{customer}`.
const BASELINE_EVENTS: &str = "/bench/events";
/// How many of them are open, as a number.
const BASELINE_STREAMS: &str = "/bench/streams";
/// Where a run is made, followed by `/{customer}/{pipeline}`.
const BASELINE_CHANGE: &str = "/bench/change";

/// The baseline's open streams, each with its customer.
#[derive(Debug, Default)]
struct Hub {
    streams: Mutex<Vec<(String, mpsc::UnboundedSender<Bytes>)>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Hands `run` to `customer`'s open streams, as one event written once.
    fn tell(&self, customer: &str, run: &Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let event = Bytes::from(format!("id: {id}\nevent: run\ndata: {run}\n\n"));
        // Never held across an await: only sends on unbounded channels.
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|(_, stream)| !stream.is_closed());
        for (_, stream) in streams.iter().filter(|(owner, _)| owner == customer) {
            let _ = stream.send(event.clone());
        }
    }

    /// The streams open now.
    fn open(&self) -> usize {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|(_, stream)| !stream.is_closed());
        streams.len()
    }
}

/// A stream's body: the events its channel brings.
struct EventBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|event| Ok(Frame::data(event))))
    }
}

/// Opens a stream of `customer`'s runs.
async fn subscribe(State(hub): State<Arc<Hub>>, UrlPath(customer): UrlPath<String>) -> Response {
    let (sender, receiver) = mpsc::unbounded_channel();
    hub.streams
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((customer, sender));
    let mut response = Response::new(Body::new(EventBody(receiver)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A run of `pipeline`, shaped as the service's.
fn baseline_run(run_id: &str, pipeline: &str, status: &str, created: DateTime<Utc>) -> Value {
    let at = |instant: DateTime<Utc>| instant.to_rfc3339_opts(SecondsFormat::Micros, false);
    json!({
        "pipeline_run_id": run_id,
        "pipeline_id": pipeline,
        "last_status": status,
        "created_at": at(created),
        "updated_at": at(Utc::now()),
        "trace": null,
        "conf": {},
    })
}

/// Makes a run of `customer`'s `pipeline`: tells it `RUNNING` now and
/// `SUCCESS` [`RUN_SECONDS`] later, and answers as execute does.
async fn change(
    State(hub): State<Arc<Hub>>,
    UrlPath((customer, pipeline)): UrlPath<(String, String)>,
) -> Json<Value> {
    let created = Utc::now();
    let run_id = format!(
        "manual__{}",
        created.to_rfc3339_opts(SecondsFormat::Micros, false)
    );
    hub.tell(
        &customer,
        &baseline_run(&run_id, &pipeline, STATUSES[0], created),
    );
    let answer = json!({"status": true, "data": {
        "message": "Pipeline execution triggered successfully",
        "pipeline_id": pipeline,
        "run_id": run_id,
    }});
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(RUN_SECONDS)).await;
        hub.tell(
            &customer,
            &baseline_run(&run_id, &pipeline, STATUSES[1], created),
        );
    });
    Json(answer)
}

/// The bare event streams: `/health`, a stream per request of the
/// customer it names, their count, and runs told to their customer's
/// streams. No auth, no feed, no per-stream reading or filtering.
pub(crate) fn baseline_router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(&format!("{BASELINE_EVENTS}/{{customer}}"), get(subscribe))
        .route(
            BASELINE_STREAMS,
            get(|State(hub): State<Arc<Hub>>| async move { hub.open().to_string() }),
        )
        .route(
            &format!("{BASELINE_CHANGE}/{{customer}}/{{pipeline}}"),
            post(change),
        )
        .with_state(Arc::new(Hub::default()))
}

// ---------------------------------------------------------------------
// Webhook fan-out.
// ---------------------------------------------------------------------

/// A delivery as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    arrival: DateTime<Utc>,
    /// The webhook it was for: the index in its URL.
    hook: usize,
    headers: HeaderMap,
    body: Bytes,
}

/// The receiver's state: what it got, and how many, for the bench to wait
/// on.
#[derive(Debug)]
struct Inbox {
    clock: WallClock,
    received: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
}

/// Keeps a delivery and answers 200.
async fn receive(
    State(inbox): State<Arc<Inbox>>,
    UrlPath(hook): UrlPath<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrival = inbox.clock.now();
    let count = {
        // Never held across an await.
        let mut received = inbox
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        received.push(Received {
            arrival,
            hook,
            headers,
            body,
        });
        received.len()
    };
    inbox.count.send_replace(count);
    StatusCode::OK
}

/// Starts the receiver on a free loopback port: its address, its inbox,
/// and its task, to abort at the end.
async fn start_receiver(
    clock: WallClock,
) -> anyhow::Result<(SocketAddr, Arc<Inbox>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the webhook receiver")?;
    let addr = listener.local_addr()?;
    let inbox = Arc::new(Inbox {
        clock,
        received: Mutex::new(Vec::new()),
        count: watch::Sender::new(0),
    });
    let app = Router::new()
        .route("/hooks/{hook}", post(receive))
        .with_state(inbox.clone());
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("the webhook receiver stopped: {err}");
        }
    });
    Ok((addr, inbox, task))
}

/// Whether `signature` (the `webhook-signature` header: `v1,<base64>`,
/// several separated by spaces) signs `<id>.<timestamp>.<body>` with
/// `secret` (`whsec_` and the standard base64 of the key), as the Standard
/// Webhooks specification says: HMAC-SHA256, which is also HS256's.
fn signed(secret: &str, id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(key) = secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|key| DecodingKey::from_base64_secret(key).ok())
    else {
        return false;
    };
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    signature
        .split(' ')
        .filter_map(|one| one.strip_prefix("v1,"))
        .any(|mac| {
            // jsonwebtoken reads the URL-safe alphabet without padding.
            let url_safe: String = mac
                .trim_end_matches('=')
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect();
            jsonwebtoken::crypto::verify(&url_safe, &message, &key, Algorithm::HS256)
                .unwrap_or(false)
        })
}

/// What the fan-out measured.
#[derive(Debug, Clone, PartialEq)]
struct FanoutResults {
    /// Load averages before it.
    load_average: String,
    /// From the first change to the last.
    changes_span: Duration,
    /// Deliveries received, a delivery made twice counted twice.
    received: usize,
    /// Distinct deliveries (`webhook-id`) among them.
    distinct: usize,
    /// Deliveries whose signature did not verify, or that lacked a header
    /// or a readable body.
    unsigned: usize,
    /// From the first change to the first delivery's arrival.
    first_after: Option<Duration>,
    /// From the first change to the arrival of the last of the
    /// [`DELIVERIES`] distinct ones; none when fewer came.
    all_after: Option<Duration>,
    /// Per distinct delivery, from its change to its first arrival,
    /// sorted.
    latencies: Vec<Duration>,
    /// The most a run's `created_at` fell outside the bench's send and
    /// arrival of its execute.
    clock_excess: Duration,
}

impl FanoutResults {
    /// Deliveries per second, from the first change to the last delivery.
    fn throughput(&self) -> Option<f64> {
        self.all_after.map(|after| per_second(DELIVERIES, after))
    }

    /// From the first delivery to the last.
    fn delivering(&self) -> Option<Duration> {
        self.all_after?.checked_sub(self.first_after?)
    }

    /// Deliveries per second once they come: the intervals between the
    /// first and the last over the time they span.
    fn delivery_rate(&self) -> Option<f64> {
        self.delivering()
            .map(|span| per_second(DELIVERIES - 1, span))
    }

    /// The `quantile` of the change-to-delivery times.
    fn latency(&self, quantile: f64) -> Option<Duration> {
        nearest_rank(&self.latencies, quantile)
    }
}

/// `count` over `span`, per second.
fn per_second(count: usize, span: Duration) -> f64 {
    count as f64 / span.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// One webhook registered: the secret shown when it was.
#[derive(Debug, Clone)]
struct Hook {
    secret: String,
}

/// Registers the webhooks on a fresh `maestro`, makes the changes, and
/// waits for the deliveries.
async fn measure_fanout(maestro: &Path) -> anyhow::Result<FanoutResults> {
    let load_average = load_average();
    let clock = WallClock::start();
    let (receiver, inbox, receiving) = start_receiver(clock).await?;
    let customers: Vec<String> = (0..HOOK_CUSTOMERS)
        .map(|index| customer_name("hooks", index))
        .collect();
    // Pipeline `i` is customer `i % HOOK_CUSTOMERS`'s: triggered in order,
    // the customers take turns.
    let pipelines: Vec<(Uuid, &str)> = (0..HOOK_RUNS)
        .map(|index| (Uuid::new_v4(), customers[index % HOOK_CUSTOMERS].as_str()))
        .collect();
    let fixture = customers_fixture(&pipelines)?;
    let mut env = memory_env(&fixture, RUN_SECONDS, None);
    env.push(("MAESTRO_WEBHOOKS_ALLOW_INSECURE", "true".to_owned()));
    let secret = random_secret();
    let (server, addr) = start_maestro(maestro, &secret, &env).await?;
    let now = unix_now()?;
    let tokens: HashMap<&str, String> = customers
        .iter()
        .map(|customer| Ok((customer.as_str(), mint_token(&secret, customer, now)?)))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "== maestro on {addr}: {HOOKS_PER_CUSTOMER} webhooks for each of {HOOK_CUSTOMERS} customers to a receiver on {receiver}, then {HOOK_RUNS} runs one after the other: {DELIVERIES} deliveries"
    );

    let mut hooks = Vec::with_capacity(HOOK_CUSTOMERS * HOOKS_PER_CUSTOMER);
    for customer in &customers {
        for _ in 0..HOOKS_PER_CUSTOMER {
            let register = RequestTemplate::new(Method::POST, "/platform/webhooks")
                .bearer(&tokens[customer.as_str()])?
                .json(&json!({
                    "url": format!("http://{receiver}/hooks/{}", hooks.len()),
                    "events": [HOOK_EVENT],
                }))?;
            let answer = call_for(addr, &register, StatusCode::CREATED).await?;
            let secret = answer.json()["data"]["secret"]
                .as_str()
                .map(str::to_owned)
                .context("a webhook was registered without a secret")?;
            hooks.push(Hook { secret });
        }
    }

    let mut runs = Vec::with_capacity(HOOK_RUNS);
    for (pipeline, customer) in &pipelines {
        let execute = execute_request(&tokens[customer], *pipeline)?;
        runs.push(trigger(addr, &execute, clock).await?);
    }
    let mut count = inbox.count.subscribe();
    let all = tokio::time::timeout(
        DELIVERY_TIMEOUT,
        count.wait_for(|count| *count >= DELIVERIES),
    )
    .await
    .is_ok_and(|all| all.is_ok());
    if !all {
        eprintln!(
            "only {} of {DELIVERIES} webhook deliveries arrived within {} s",
            *count.borrow(),
            DELIVERY_TIMEOUT.as_secs()
        );
    }
    drop(server);
    receiving.abort();
    let received = std::mem::take(
        &mut *inbox
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    Ok(fanout_results(load_average, &runs, &hooks, &received))
}

/// Sums up the fan-out from the runs made, the webhooks registered and the
/// deliveries received.
fn fanout_results(
    load_average: String,
    runs: &[Triggered],
    hooks: &[Hook],
    received: &[Received],
) -> FanoutResults {
    let first = runs.iter().map(|run| run.created).min();
    let last = runs.iter().map(|run| run.created).max();
    let mut seen = HashSet::new();
    let mut unsigned = 0;
    let mut arrivals = Vec::new();
    let mut latencies = Vec::new();
    for delivery in received {
        let header = |name: &str| {
            delivery
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let (Some(id), Some(timestamp), Some(signature)) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ) else {
            unsigned += 1;
            continue;
        };
        let verified = hooks
            .get(delivery.hook)
            .is_some_and(|hook| signed(&hook.secret, id, timestamp, &delivery.body, signature));
        let changed = serde_json::from_slice::<Value>(&delivery.body)
            .ok()
            .and_then(|body| instant(body["data"]["updated_at"].as_str()?));
        let (true, Some(changed)) = (verified, changed) else {
            unsigned += 1;
            continue;
        };
        if seen.insert(id.to_owned()) {
            arrivals.push(delivery.arrival);
            latencies.push((delivery.arrival - changed).to_std().unwrap_or_default());
        }
    }
    arrivals.sort_unstable();
    latencies.sort_unstable();
    let after = |index: usize| {
        first
            .zip(arrivals.get(index))
            .and_then(|(first, arrival)| (*arrival - first).to_std().ok())
    };
    FanoutResults {
        load_average,
        changes_span: first
            .zip(last)
            .and_then(|(first, last)| (last - first).to_std().ok())
            .unwrap_or_default(),
        received: received.len(),
        distinct: seen.len(),
        unsigned,
        first_after: after(0),
        all_after: after(DELIVERIES - 1),
        latencies,
        clock_excess: runs.iter().map(|run| run.excess).max().unwrap_or_default(),
    }
}

/// The fan-out's one check: not of speed, but that every delivery came,
/// signed.
fn fanout_checks(results: &FanoutResults) -> Vec<Check> {
    vec![Check {
        target: format!(
            "all {} deliveries arrived, each signed as Standard Webhooks says",
            thousands(DELIVERIES as u64)
        ),
        measured: format!(
            "{} distinct of {}, {} not signed so",
            thousands(results.distinct as u64),
            thousands(results.received as u64),
            results.unsigned
        ),
        passed: results.distinct >= DELIVERIES && results.unsigned == 0,
    }]
}

/// The fan-out's report.
fn fanout_report(results: &FanoutResults) -> Report {
    let last = thousands(DELIVERIES as u64);
    let mut rows = vec![
        Row::new(
            "webhooks / runs / deliveries due",
            vec![Cell::pair(
                Cell::pair(
                    Cell::Count((HOOK_CUSTOMERS * HOOKS_PER_CUSTOMER) as u64),
                    Cell::Count(HOOK_RUNS as u64),
                ),
                Cell::Count(DELIVERIES as u64),
            )],
        ),
        Row::new(
            "from the first change to the last",
            vec![Cell::latency(results.changes_span)],
        ),
        Row::new(
            "deliveries received / distinct",
            vec![Cell::pair(
                Cell::Count(results.received as u64),
                Cell::Count(results.distinct as u64),
            )],
        ),
        Row::new(
            "not signed as Standard Webhooks says",
            vec![Cell::Count(results.unsigned as u64)],
        ),
        Row::new(
            "from the first change to the first delivery",
            vec![results.first_after.map_or(Cell::Empty, Cell::latency)],
        ),
        Row::new(
            format!("from the first change to the {last}th delivery"),
            vec![results.all_after.map_or(Cell::Empty, Cell::latency)],
        ),
        Row::new(
            "deliveries per second, from the first change",
            vec![results.throughput().map_or(Cell::Empty, Cell::PerSecond)],
        ),
        Row::new(
            format!("from the first delivery to the {last}th"),
            vec![results.delivering().map_or(Cell::Empty, Cell::latency)],
        ),
        Row::new(
            "deliveries per second, from the first delivery",
            vec![results.delivery_rate().map_or(Cell::Empty, Cell::PerSecond)],
        ),
    ];
    rows.extend(Row::quantiles(
        "change to delivery",
        std::slice::from_ref(results),
        FanoutResults::latency,
    ));
    Report {
        title: format!("webhook fan-out of {} deliveries", thousands(DELIVERIES as u64)),
        setup: format!(
            "`cargo xtask bench` (`maestro`, memory backend, `MAESTRO_WEBHOOKS_ALLOW_INSECURE=true`): {HOOK_CUSTOMERS} customers with {HOOKS_PER_CUSTOMER} webhooks each (`\"events\": [\"{HOOK_EVENT}\"]`) pointing at a receiver in the bench that answers 200, then {HOOK_RUNS} executes one after the other, one per pipeline, the customers in turn: each run's appearance is due to its customer's {HOOKS_PER_CUSTOMER} webhooks, {} deliveries in all; per delivery, from the run's `updated_at` to its arrival, and every signature checked.",
            thousands(DELIVERIES as u64)
        ),
        corner: String::new(),
        columns: vec!["maestro".to_owned()],
        rows,
        checks: fanout_checks(results),
        notes: vec![
            format!(
                "Load average {} before; every run's `created_at` within the bench's send and arrival of its execute to {} µs.",
                results.load_average,
                results.clock_excess.as_micros()
            ),
            "What bounds these figures is the delivery worker (`crates/runtime/src/deliver.rs`): the dispatcher of the same instance wakes it as soon as it has enqueued deliveries (another instance's are taken at its next look, once a second), and it keeps at most 16 attempts under way (`DEFAULT_CONCURRENCY`), taking the next as each ends, every attempt on a new HTTP client and connection, since each is checked against the addresses its host resolves to at that moment. No target applies.".to_owned(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        instant(text).expect("an instant")
    }

    fn piece(arrival: &str, data: &str) -> Piece {
        Piece {
            arrival: at(arrival),
            data: Bytes::from(data.to_owned()),
        }
    }

    const T0: &str = "2026-12-01T10:00:00.000000+00:00";
    const T1: &str = "2026-12-01T10:00:00.010000+00:00";
    const T2: &str = "2026-12-01T10:00:00.020000+00:00";

    #[test]
    fn events_split_across_pieces_arrive_with_the_piece_that_ends_them() {
        let pieces = [
            piece(T0, ": keep-alive\n\nid: 1\nevent: run\nda"),
            piece(T1, "ta: {\"a\":1}\n\nid: 2\ndata:x\ndata: y\n"),
            piece(T2, "\n"),
        ];
        assert_eq!(
            sse_events(&pieces),
            [
                Told {
                    arrival: at(T1),
                    event: "run".to_owned(),
                    data: r#"{"a":1}"#.to_owned(),
                },
                Told {
                    arrival: at(T2),
                    event: "message".to_owned(),
                    data: "x\ny".to_owned(),
                },
            ]
        );
        assert!(sse_events(&[piece(T0, "event: gap\n")]).is_empty());
    }

    fn run_event(run_id: &str, status: &str, updated: &str, arrival: &str) -> Told {
        Told {
            arrival: at(arrival),
            event: "run".to_owned(),
            data: json!({
                "pipeline_run_id": run_id,
                "last_status": status,
                "updated_at": updated,
            })
            .to_string(),
        }
    }

    #[test]
    fn a_change_counts_once_every_stream_of_its_customer_has_it_from_the_last_arrival() {
        let runs = [("r0".to_owned(), 0), ("r1".to_owned(), 1)];
        let streams = vec![
            (
                0,
                vec![
                    run_event("r0", "RUNNING", T0, "2026-12-01T10:00:00.001000+00:00"),
                    run_event("r0", "SUCCESS", T1, "2026-12-01T10:00:00.011000+00:00"),
                ],
            ),
            (
                0,
                vec![
                    run_event("r0", "RUNNING", T0, "2026-12-01T10:00:00.004000+00:00"),
                    // Told twice: counted once.
                    run_event("r0", "RUNNING", T0, "2026-12-01T10:00:00.009000+00:00"),
                    run_event("r0", "SUCCESS", T1, "2026-12-01T10:00:00.012000+00:00"),
                ],
            ),
            // Customer 1 hears r1 running, never its end, and r0's end,
            // which is not its own.
            (
                1,
                vec![
                    run_event("r1", "RUNNING", T0, "2026-12-01T10:00:00.003000+00:00"),
                    run_event("r0", "SUCCESS", T1, "2026-12-01T10:00:00.012000+00:00"),
                ],
            ),
        ];
        let tally = tally(&runs, &streams);
        assert_eq!(
            tally.latencies,
            [2, 3, 4].map(Duration::from_millis),
            "r0 RUNNING by its last stream at 4 ms (the first arrival there), r0 SUCCESS at 2 ms, r1 RUNNING at 3 ms"
        );
        assert_eq!(tally.strays, 1);

        // A stream of customer 0 that missed r0's end: that change is
        // not told to all.
        let mut missing = streams.clone();
        missing.push((0, vec![run_event("r0", "RUNNING", T0, T1)]));
        assert_eq!(
            tally_of(&runs, &missing),
            [3, 10].map(Duration::from_millis)
        );
    }

    fn tally_of(runs: &[(String, usize)], streams: &[(usize, Vec<Told>)]) -> Vec<Duration> {
        tally(runs, streams).latencies
    }

    fn stream_results(server: Server, p99_millis: u64, rss_added: u64) -> StreamResults {
        StreamResults {
            server,
            load_average: "1.00 1.00 1.00".to_owned(),
            opened: STREAMS,
            counted: Some(STREAMS as u64),
            rss: RssReadings {
                before: Some(10 * 1024 * 1024),
                holding: Some(10 * 1024 * 1024 + rss_added),
            },
            changes_span: Duration::from_millis(2_980),
            // 200 latencies, the 198th (the p99 by nearest rank) and the
            // two above it at `p99_millis`.
            tally: Tally {
                latencies: (1..=CHANGES as u64)
                    .map(|rank| Duration::from_millis(if rank >= 198 { p99_millis } else { 1 }))
                    .collect(),
                strays: 0,
            },
            ended_early: 0,
            clock_excess: Duration::ZERO,
        }
    }

    #[test]
    fn streams_within_both_targets_pass_and_each_target_fails_on_its_own() {
        let good = stream_results(Server::Maestro, 49, 31 * 1024 * 1024);
        assert!(
            streams_report(std::slice::from_ref(&good))
                .missed()
                .is_empty()
        );
        assert_eq!(good.latency(0.99), Some(Duration::from_millis(49)));

        let slow = stream_results(Server::Maestro, 50, 31 * 1024 * 1024);
        assert_eq!(
            streams_report(&[slow]).missed(),
            [
                "1,000 open streams: p99 from a run change to the last of its customer's streams < 50.00 ms"
            ]
        );
        let heavy = stream_results(Server::Maestro, 49, 32 * 1024 * 1024);
        assert_eq!(
            streams_report(&[heavy]).missed(),
            ["RSS added by 1,000 open streams < 32.0 MiB"]
        );
        let mut stray = good.clone();
        stray.tally.strays = 1;
        assert_eq!(
            streams_report(&[stray]).missed(),
            [
                "all 1,000 streams open, and every change told to every stream of its customer and to no other"
            ]
        );
        let mut short = good;
        short.tally.latencies.pop();
        assert!(!short.valid());
    }

    #[test]
    fn the_baseline_column_is_shown_and_not_judged() {
        let report = streams_report(&[
            stream_results(Server::Maestro, 10, 1024 * 1024),
            stream_results(Server::Baseline, 90, 64 * 1024 * 1024),
        ]);
        assert_eq!(report.checks.len(), 3);
        assert!(report.missed().is_empty());
        let markdown = report.markdown();
        assert!(
            markdown.contains("| | maestro | bare axum, a channel per stream (not judged) |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| change to the last stream p99 | 10.00 ms | 90.00 ms |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| RSS added per stream, bytes | 1,048 | 67,108 |"),
            "{markdown}"
        );
    }

    #[test]
    fn signatures_verify_with_the_specifications_published_test_vector() {
        // The "sign function works" case of the Standard Webhooks
        // reference libraries' tests.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, timestamp, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(signed(secret, id, timestamp, body, signature));
        // One of several, as the header allows.
        assert!(signed(
            secret,
            id,
            timestamp,
            body,
            &format!("v1,bm9wZQ== {signature}")
        ));
        assert!(!signed(secret, id, "1614265331", body, signature));
        assert!(!signed(
            secret,
            id,
            timestamp,
            br#"{"test":2432232314}"#,
            signature
        ));
        assert!(!signed(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            id,
            timestamp,
            body,
            signature
        ));
        assert!(!signed(secret, id, timestamp, body, "v2,whatever"));
    }

    fn delivery(hook: usize, id: &str, signature: &str, arrival: &str) -> Received {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", "1614265330".parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        Received {
            arrival: at(arrival),
            hook,
            headers,
            body: Bytes::from(json!({"data": {"updated_at": T0}}).to_string()),
        }
    }

    /// The signature of [`delivery`]'s body with id `id` and key `key`.
    fn sign(key: &[u8], id: &str, body: &[u8]) -> String {
        let mut message = format!("{id}.1614265330.").into_bytes();
        message.extend_from_slice(body);
        let mac = jsonwebtoken::crypto::sign(
            &message,
            &jsonwebtoken::EncodingKey::from_secret(key).unwrap(),
            Algorithm::HS256,
        )
        .unwrap();
        let standard: String = mac
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let padding = "=".repeat((4 - standard.len() % 4) % 4);
        format!("v1,{standard}{padding}")
    }

    #[test]
    fn the_fan_out_counts_each_delivery_once_and_only_when_signed() {
        let key = [7_u8; 32];
        let hooks = [Hook {
            secret: format!("{SECRET_PREFIX}BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="),
        }];
        let body = delivery(0, "x", "", T0).body;
        let good = sign(&key, "msg_1", &body);
        let received = [
            delivery(0, "msg_1", &good, T1),
            // The same delivery again: counted once, from its first arrival.
            delivery(0, "msg_1", &good, T2),
            delivery(0, "msg_2", &good, T2),
        ];
        let runs = [Triggered {
            run_id: "r".to_owned(),
            created: at(T0),
            excess: Duration::from_micros(3),
        }];
        let results = fanout_results("1 1 1".to_owned(), &runs, &hooks, &received);
        assert_eq!(results.received, 3);
        assert_eq!(results.distinct, 1);
        assert_eq!(results.unsigned, 1, "msg_2 carries msg_1's signature");
        assert_eq!(results.latencies, [Duration::from_millis(10)]);
        assert_eq!(results.first_after, Some(Duration::from_millis(10)));
        assert_eq!(results.all_after, None, "fewer than all arrived");
        assert_eq!(results.throughput(), None);
        assert_eq!(results.clock_excess, Duration::from_micros(3));
        assert_eq!(
            fanout_checks(&results)
                .iter()
                .map(|check| check.passed)
                .collect::<Vec<_>>(),
            [false]
        );
    }

    #[test]
    fn the_fan_out_report_gives_the_throughput_from_the_first_change() {
        let results = FanoutResults {
            load_average: "1.00 1.00 1.00".to_owned(),
            changes_span: Duration::from_millis(150),
            received: DELIVERIES,
            distinct: DELIVERIES,
            unsigned: 0,
            first_after: Some(Duration::from_millis(1_501)),
            all_after: Some(Duration::from_millis(2_500)),
            latencies: (1..=DELIVERIES as u64).map(Duration::from_millis).collect(),
            clock_excess: Duration::ZERO,
        };
        assert_eq!(results.throughput(), Some(400.0));
        assert_eq!(results.delivering(), Some(Duration::from_millis(999)));
        assert_eq!(results.delivery_rate(), Some(1_000.0));
        let report = fanout_report(&results);
        assert!(report.missed().is_empty());
        let markdown = report.markdown();
        for line in [
            "| webhooks / runs / deliveries due | 100 / 100 / 1,000 |",
            "| from the first change to the 1,000th delivery | 2500.00 ms |",
            "| deliveries per second, from the first change | 400/s |",
            "| from the first delivery to the 1,000th | 999.00 ms |",
            "| deliveries per second, from the first delivery | 1,000/s |",
            "| change to delivery p99 | 990.00 ms |",
        ] {
            assert!(markdown.contains(line), "{line} in {markdown}");
        }
    }

    #[tokio::test]
    async fn a_bare_stream_is_told_its_customers_runs_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, baseline_router()).await });
        // Once a stream's answer has come, it is registered: the changes
        // after it reach it.
        let (_acme, mut acme) = open_stream(addr, "/bench/events/acme", None).await.unwrap();
        let (_other, _other_body) = open_stream(addr, "/bench/events/other", None)
            .await
            .unwrap();
        let streams = call(addr, &RequestTemplate::get(BASELINE_STREAMS))
            .await
            .unwrap();
        assert_eq!(streams.body, "2");
        let run = trigger(
            addr,
            &RequestTemplate::new(Method::POST, "/bench/change/acme/p-1"),
            WallClock::start(),
        )
        .await
        .unwrap();
        let frame = acme.frame().await.unwrap().unwrap().into_data().unwrap();
        let told = sse_events(&[Piece {
            arrival: Utc::now(),
            data: frame,
        }]);
        let changes = run_changes(&told);
        assert_eq!(changes.len(), 1, "{told:?}");
        assert_eq!(
            changes[0].0,
            Change {
                run_id: run.run_id.clone(),
                status: "RUNNING".to_owned()
            }
        );
        assert!(changes[0].1 >= run.created);
    }
}
