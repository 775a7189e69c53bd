//! The soak's traffic: several tasks, each a kind of client, until a
//! deadline. Executes without a key, with a fresh key (some repeated at
//! once or later, some abandoned by the client and retried, some reused
//! for another pipeline), on a pipeline that another task pauses and
//! unpauses; reads of pipelines, run lists and accepted runs over
//! keep-alive connections; bad tokens; and slow clients: request heads
//! left unfinished, bodies that trickle in (in time, or too slowly), and
//! connections left idle after their answer.
//!
//! Every request is tallied by kind and outcome, and every 200 to an
//! execute is recorded with its run id and key, for the checks at the end.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::{
    Method, StatusCode,
    header::{HeaderName, HeaderValue},
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::{
    task::JoinSet,
    time::{Instant, sleep},
};

use super::{
    check::Accepted,
    raw::{self, Heard},
    world::{Pipeline, UNSIGNED_TOKEN, World},
};
use crate::http::{self, Connection, RequestTemplate};

/// How often the task of executes without a key sends one.
const PLAIN_EVERY: Duration = Duration::from_millis(500);
/// How often the task of executes with keys starts a scenario.
const KEYED_EVERY: Duration = Duration::from_millis(700);
/// How often the pausing task pauses or unpauses, and executes the pipeline.
const TOGGLE_EVERY: Duration = Duration::from_secs(1);
/// How long each reader waits between two requests.
const READ_PAUSE: Duration = Duration::from_millis(20);
/// How often a bad token is sent.
const BAD_TOKEN_EVERY: Duration = Duration::from_millis(100);
/// How often an unfinished head is started; each stays open until the
/// service closes it, so a few are open at any time.
const UNFINISHED_HEAD_EVERY: Duration = Duration::from_millis(250);
/// How often a trickled body is started, alternately in time and too slow.
const TRICKLE_EVERY: Duration = Duration::from_secs(2);
/// How often a connection is left idle after one answer.
const IDLE_EVERY: Duration = Duration::from_secs(3);
/// How long a client waits for a whole answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a keyed execute is retried after a 409 or a 5xx, 1 s apart.
const RETRIES: usize = 20;
/// Recent keys that got a 200, for later repeats.
const RECENT_KEYS: usize = 64;
/// A connection the service should close is given this much beyond its
/// timeout before it counts as left open.
const CLOSE_MARGIN: Duration = Duration::from_millis(1500);

/// The service's backend, which decides what answers are expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    /// The memory backend: every request it gets it can serve.
    Memory,
    /// A fake Platform-API upstream that goes down and stalls: calls that
    /// reach it may answer 502, 503 or 504.
    PlatformApi,
}

/// The service's edge timeouts, as the soak sets them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    /// A request head must arrive within this.
    pub(super) header_read: Duration,
    /// An idle keep-alive connection is closed after this.
    pub(super) idle: Duration,
    /// A body must arrive within this.
    pub(super) body: Duration,
}

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    /// Execute without a key.
    Execute,
    /// Execute with a fresh key.
    ExecuteNewKey,
    /// Execute with a key that already got a 200, at once or later.
    ExecuteRepeatedKey,
    /// Execute with a fresh key, the connection closed as soon as it was
    /// sent.
    ExecuteAbandoned,
    /// Execute with the key of an earlier attempt that got no 200.
    ExecuteRetriedKey,
    /// Execute with a key that got a 200 for another pipeline.
    ExecuteKeyForAnotherPipeline,
    /// Execute of the pipeline that is paused and unpaused.
    ExecuteToggledPipeline,
    /// Pause or unpause.
    PauseOrUnpause,
    /// `GET /platform/pipelines`.
    ListPipelines,
    /// `GET /platform/pipeline/{id}`.
    GetPipeline,
    /// `GET /platform/pipeline/{id}/pipeline_run`.
    ListRuns,
    /// `GET /platform/pipeline/{id}/pipeline_run/{run_id}` of an accepted
    /// run.
    GetAcceptedRun,
    /// A request with a missing, malformed, badly signed, expired or
    /// unsigned token.
    BadToken,
    /// A request head left unfinished.
    UnfinishedHead,
    /// An execute whose body trickles in within the body timeout.
    TrickledBodyInTime,
    /// An execute whose body trickles in slower than the body timeout.
    TrickledBodyTooSlow,
    /// A keep-alive connection left idle after its answer.
    IdleConnection,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Execute => "execute, no key",
            Self::ExecuteNewKey => "execute, new key",
            Self::ExecuteRepeatedKey => "execute, key repeated after a 200",
            Self::ExecuteAbandoned => "execute, new key, abandoned once sent",
            Self::ExecuteRetriedKey => "execute, key retried",
            Self::ExecuteKeyForAnotherPipeline => "execute, key reused for another pipeline",
            Self::ExecuteToggledPipeline => "execute, paused and unpaused pipeline",
            Self::PauseOrUnpause => "pause or unpause",
            Self::ListPipelines => "GET pipelines",
            Self::GetPipeline => "GET pipeline",
            Self::ListRuns => "GET run list",
            Self::GetAcceptedRun => "GET an accepted run",
            Self::BadToken => "bad token",
            Self::UnfinishedHead => "request head left unfinished",
            Self::TrickledBodyInTime => "execute, body trickled in time",
            Self::TrickledBodyTooSlow => "execute, body trickled too slowly",
            Self::IdleConnection => "connection left idle",
        })
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Outcome {
    /// An answer with this status.
    Status(u16),
    /// The service closed the connection without an answer, in time.
    Closed,
    /// The service left the connection open past its timeout.
    LeftOpen,
    /// No answer: the connection failed or the client gave up waiting.
    NoAnswer,
    /// The client closed the connection before the answer, on purpose.
    Abandoned,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{status}"),
            Self::Closed => f.write_str("closed by the service"),
            Self::LeftOpen => f.write_str("left open"),
            Self::NoAnswer => f.write_str("no answer"),
            Self::Abandoned => f.write_str("abandoned"),
        }
    }
}

/// The failures a call to the upstream may end in.
const UPSTREAM_FAILURES: [Outcome; 3] = [
    Outcome::Status(502),
    Outcome::Status(503),
    Outcome::Status(504),
];

impl Kind {
    /// Whether `outcome` is one that this kind of request may get from a
    /// service that works, on `backend`.
    pub(super) fn expects(self, outcome: Outcome, backend: Backend) -> bool {
        use Outcome::{Abandoned, Closed, Status};
        // Requests the service answers from its own state, whatever the
        // backend does: the key store, the token check, the edge.
        let own: &[Outcome] = match self {
            Self::ExecuteRepeatedKey => &[Status(200)],
            Self::ExecuteKeyForAnotherPipeline => &[Status(422)],
            Self::ExecuteAbandoned => &[Abandoned],
            Self::BadToken => &[Status(401)],
            Self::UnfinishedHead | Self::IdleConnection => &[Closed],
            Self::TrickledBodyTooSlow => &[Status(408)],
            _ => &[],
        };
        if !own.is_empty() {
            return own.contains(&outcome);
        }
        let answers: &[Outcome] = match self {
            Self::ExecuteRetriedKey => &[Status(200), Status(409)],
            Self::ExecuteToggledPipeline => &[Status(200), Status(400)],
            _ => &[Status(200)],
        };
        let upstream_refusals: &[Outcome] = match (self, backend) {
            // After a 5xx the pausing task cannot know whether its call took
            // effect, so its next call may find the pipeline as it wanted.
            (Self::PauseOrUnpause, Backend::PlatformApi) => &[Status(400)],
            _ => &[],
        };
        answers.contains(&outcome)
            || upstream_refusals.contains(&outcome)
            || (backend == Backend::PlatformApi && UPSTREAM_FAILURES.contains(&outcome))
    }
}

/// Everything the traffic recorded.
#[derive(Debug, Default)]
pub(super) struct Record {
    tally: Mutex<BTreeMap<(Kind, Outcome), u64>>,
    accepted: Mutex<Vec<Accepted>>,
    /// Keys that got a 200, with their pipeline and run, newest last.
    recent_keys: Mutex<VecDeque<Accepted>>,
    /// Executes that may have started a run no client heard of: no
    /// answer, or a key given up on after its retries.
    unheard: AtomicU64,
    /// Answers that are not what the contract says, in words.
    problems: Mutex<Vec<String>>,
}

/// The most problems kept, to say what went wrong.
const PROBLEMS_KEPT: usize = 10;

/// Locks a record's part; the data behind a poisoned lock is whole (every
/// update is one insert or push), so it is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Record {
    fn count(&self, kind: Kind, outcome: Outcome) {
        *lock(&self.tally).entry((kind, outcome)).or_default() += 1;
    }

    /// Records a 200; a key's first one also goes to the recent keys, but
    /// not a replay, so that a key's age there is the age of its answer.
    fn accept(&self, accepted: Accepted, first_for_key: bool) {
        if first_for_key && accepted.key.is_some() {
            let mut recent = lock(&self.recent_keys);
            recent.push_back(accepted.clone());
            if recent.len() > RECENT_KEYS {
                recent.pop_front();
            }
        }
        lock(&self.accepted).push(accepted);
    }

    fn problem(&self, problem: String) {
        let mut problems = lock(&self.problems);
        if problems.len() < PROBLEMS_KEPT {
            problems.push(problem);
        }
    }

    /// Requests by kind and outcome.
    pub(super) fn tally(&self) -> BTreeMap<(Kind, Outcome), u64> {
        lock(&self.tally).clone()
    }

    /// Every 200 to an execute.
    pub(super) fn accepted(&self) -> Vec<Accepted> {
        lock(&self.accepted).clone()
    }

    /// Executes that may have started a run no client heard of.
    pub(super) fn unheard(&self) -> u64 {
        self.unheard.load(Ordering::Relaxed)
    }

    /// Answers that are not what the contract says.
    pub(super) fn problems(&self) -> Vec<String> {
        lock(&self.problems).clone()
    }

    /// A random accepted run.
    fn some_accepted(&self, rng: &mut StdRng) -> Option<Accepted> {
        let accepted = lock(&self.accepted);
        if accepted.is_empty() {
            return None;
        }
        Some(accepted[rng.random_range(0..accepted.len())].clone())
    }

    /// A random recent key that got a 200 after `since`, from the start
    /// of the traffic.
    fn some_recent_key(&self, rng: &mut StdRng, since: Duration) -> Option<Accepted> {
        let recent = lock(&self.recent_keys);
        let young: Vec<&Accepted> = recent.iter().filter(|run| run.at > since).collect();
        if young.is_empty() {
            return None;
        }
        Some(young[rng.random_range(0..young.len())].clone())
    }
}

/// Where the traffic goes and how.
#[derive(Debug)]
pub(super) struct Traffic {
    /// The service.
    pub(super) addr: SocketAddr,
    /// Its customers and pipelines.
    pub(super) world: Arc<World>,
    /// Its edge timeouts.
    pub(super) edge: Edge,
    /// Keep-alive connections of readers.
    pub(super) connections: usize,
    /// How long the service keeps a key's answer: a key is repeated only
    /// within half of it, so that every repeat must be a replay.
    pub(super) key_retention: Duration,
    /// When the traffic started.
    pub(super) started: Instant,
    /// What was sent and heard.
    pub(super) record: Arc<Record>,
}

const EXECUTE_PATH: &str = "/platform/pipeline/execute";
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// An execute's answer, as far as the soak reads it.
#[derive(Debug)]
struct Executed {
    outcome: Outcome,
    /// The run, on a 200.
    run_id: Option<String>,
}

/// Runs every kind of client until `until`, and waits for the last of
/// them (a slow client started just before the deadline) to finish.
pub(super) async fn run(traffic: Arc<Traffic>, until: Instant) {
    let mut tasks = JoinSet::new();
    tasks.spawn(plain_executes(Arc::clone(&traffic), until));
    tasks.spawn(keyed_executes(Arc::clone(&traffic), until));
    tasks.spawn(toggles(Arc::clone(&traffic), until));
    tasks.spawn(bad_tokens(Arc::clone(&traffic), until));
    tasks.spawn(unfinished_heads(Arc::clone(&traffic), until));
    tasks.spawn(trickled_bodies(Arc::clone(&traffic), until));
    tasks.spawn(idle_connections(Arc::clone(&traffic), until));
    for reader in 0..traffic.connections {
        tasks.spawn(reads(Arc::clone(&traffic), reader, until));
    }
    while let Some(finished) = tasks.join_next().await {
        if let Err(err) = finished {
            traffic
                .record
                .problem(format!("a traffic task failed: {err}"));
        }
    }
}

impl Traffic {
    /// The earliest a key's 200 may have come, from the start of the
    /// traffic, for the key to be repeated now.
    fn repeatable_since(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(self.key_retention / 2)
    }

    fn random_pipeline(&self, rng: &mut StdRng) -> &Pipeline {
        &self.world.pipelines[rng.random_range(0..self.world.pipelines.len())]
    }

    /// Another pipeline of the same customer as `pipeline`.
    fn sibling(&self, pipeline: &str) -> Option<&Pipeline> {
        let owner = self
            .world
            .pipelines
            .iter()
            .find(|candidate| candidate.id == pipeline)?
            .customer;
        self.world
            .pipelines
            .iter()
            .find(|candidate| candidate.customer == owner && candidate.id != pipeline)
    }

    /// Sends one execute of `pipeline`, with `key` if given, and records
    /// its outcome as `kind` and its run if accepted.
    async fn execute(&self, kind: Kind, pipeline: &Pipeline, key: Option<&str>) -> Executed {
        let mut request = match execute_request(self.world.token(pipeline), &pipeline.id) {
            Ok(request) => request,
            Err(err) => {
                self.record
                    .problem(format!("cannot build an execute: {err:#}"));
                return Executed {
                    outcome: Outcome::NoAnswer,
                    run_id: None,
                };
            }
        };
        if let Some(key) = key {
            match HeaderValue::from_str(key) {
                Ok(value) => {
                    request.headers.insert(IDEMPOTENCY_KEY, value);
                }
                Err(_) => self.record.problem(format!("key {key:?} is not a header")),
            }
        }
        let answer = match http::send_once(self.addr, &request, ANSWER_TIMEOUT).await {
            Ok(answer) => answer,
            Err(_) => {
                self.record.count(kind, Outcome::NoAnswer);
                return Executed {
                    outcome: Outcome::NoAnswer,
                    run_id: None,
                };
            }
        };
        let outcome = Outcome::Status(answer.status.as_u16());
        self.record.count(kind, outcome);
        if answer.status != StatusCode::OK {
            return Executed {
                outcome,
                run_id: None,
            };
        }
        let replayed = answer
            .headers
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|value| value == "true");
        if kind == Kind::ExecuteRepeatedKey && !replayed {
            self.record.problem(format!(
                "a repeat of key {key:?} was answered 200 without Idempotent-Replayed: true"
            ));
        }
        let run_id = self.accept_answer(
            pipeline,
            key,
            &answer.json(),
            kind != Kind::ExecuteRepeatedKey,
        );
        Executed { outcome, run_id }
    }

    /// Records the run a 200 to an execute of `pipeline` names.
    fn accept_answer(
        &self,
        pipeline: &Pipeline,
        key: Option<&str>,
        body: &serde_json::Value,
        first_for_key: bool,
    ) -> Option<String> {
        let data = &body["data"];
        let (Some(run_id), Some(named)) = (data["run_id"].as_str(), data["pipeline_id"].as_str())
        else {
            self.record
                .problem(format!("a 200 to an execute without a run: {body}"));
            return None;
        };
        if named != pipeline.id {
            self.record.problem(format!(
                "an execute of {} was answered for {named}",
                pipeline.id
            ));
        }
        self.record.accept(
            Accepted {
                customer: self.world.customer(pipeline).to_owned(),
                pipeline: pipeline.id.clone(),
                run_id: run_id.to_owned(),
                key: key.map(str::to_owned),
                at: self.started.elapsed(),
            },
            first_for_key,
        );
        Some(run_id.to_owned())
    }

    /// Retries `key` until a 200 or an answer that retrying cannot change,
    /// one second apart (the service's `Retry-After` for a 409).
    async fn retry_until_answered(&self, pipeline: &Pipeline, key: &str) {
        for _ in 0..RETRIES {
            let executed = self
                .execute(Kind::ExecuteRetriedKey, pipeline, Some(key))
                .await;
            match executed.outcome {
                Outcome::Status(409 | 502 | 503 | 504) | Outcome::NoAnswer => {
                    sleep(Duration::from_secs(1)).await;
                }
                _ => return,
            }
        }
        // The attempts may have started a run that no answer named.
        self.record.unheard.fetch_add(1, Ordering::Relaxed);
    }
}

fn execute_request(token: &str, pipeline: &str) -> anyhow::Result<RequestTemplate> {
    RequestTemplate::new(Method::POST, EXECUTE_PATH)
        .bearer(token)?
        .json(&serde_json::json!({"pipeline_id": pipeline}))
}

fn fresh_key() -> String {
    format!("soak-{}", uuid::Uuid::new_v4().simple())
}

async fn plain_executes(traffic: Arc<Traffic>, until: Instant) {
    let mut rng = StdRng::from_os_rng();
    while Instant::now() < until {
        let pipeline = traffic.random_pipeline(&mut rng).clone();
        let executed = traffic.execute(Kind::Execute, &pipeline, None).await;
        if executed.outcome == Outcome::NoAnswer {
            traffic.record.unheard.fetch_add(1, Ordering::Relaxed);
        }
        sleep(PLAIN_EVERY).await;
    }
}

async fn keyed_executes(traffic: Arc<Traffic>, until: Instant) {
    let mut rng = StdRng::from_os_rng();
    while Instant::now() < until {
        let pipeline = traffic.random_pipeline(&mut rng).clone();
        let key = fresh_key();
        match rng.random_range(0..100) {
            // Once; retried, as a client should, when it got no 200.
            0..45 => {
                let executed = traffic
                    .execute(Kind::ExecuteNewKey, &pipeline, Some(&key))
                    .await;
                if executed.run_id.is_none() {
                    traffic.retry_until_answered(&pipeline, &key).await;
                }
            }
            // Twice in a row: the second is a replay.
            45..65 => {
                let executed = traffic
                    .execute(Kind::ExecuteNewKey, &pipeline, Some(&key))
                    .await;
                if executed.run_id.is_some() {
                    traffic
                        .execute(Kind::ExecuteRepeatedKey, &pipeline, Some(&key))
                        .await;
                } else {
                    traffic.retry_until_answered(&pipeline, &key).await;
                }
            }
            // Abandoned once sent, as a client that timed out, then retried.
            65..80 => {
                let linger = Duration::from_millis(rng.random_range(0..20));
                abandon(&traffic, &pipeline, &key, linger).await;
                sleep(Duration::from_millis(rng.random_range(0..300))).await;
                traffic.retry_until_answered(&pipeline, &key).await;
            }
            // A key that got a 200 a while ago, again.
            80..95 => {
                if let Some(earlier) = traffic
                    .record
                    .some_recent_key(&mut rng, traffic.repeatable_since())
                    && let Some(pipeline) = traffic
                        .world
                        .pipelines
                        .iter()
                        .find(|candidate| candidate.id == earlier.pipeline)
                {
                    traffic
                        .execute(Kind::ExecuteRepeatedKey, pipeline, earlier.key.as_deref())
                        .await;
                }
            }
            // A key that got a 200, for another pipeline: refused.
            _ => {
                if let Some(earlier) = traffic
                    .record
                    .some_recent_key(&mut rng, traffic.repeatable_since())
                    && let Some(other) = traffic.sibling(&earlier.pipeline)
                {
                    traffic
                        .execute(
                            Kind::ExecuteKeyForAnotherPipeline,
                            other,
                            earlier.key.as_deref(),
                        )
                        .await;
                }
            }
        }
        sleep(KEYED_EVERY).await;
    }
}

/// Sends an execute with `key` and closes the connection after `linger`,
/// before its answer.
async fn abandon(traffic: &Traffic, pipeline: &Pipeline, key: &str, linger: Duration) {
    let authorization = format!("Bearer {}", traffic.world.token(pipeline));
    let body = serde_json::json!({"pipeline_id": pipeline.id}).to_string();
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", key),
    ];
    let sent = raw::abandoned_post(
        traffic.addr,
        EXECUTE_PATH,
        &headers,
        body.as_bytes(),
        linger,
    )
    .await;
    let outcome = match sent {
        Ok(()) => Outcome::Abandoned,
        Err(_) => Outcome::NoAnswer,
    };
    traffic.record.count(Kind::ExecuteAbandoned, outcome);
}

async fn toggles(traffic: Arc<Traffic>, until: Instant) {
    let pipeline = traffic.world.toggled.clone();
    let token = traffic.world.token(&pipeline).to_owned();
    let body = serde_json::json!({"pipeline_id": pipeline.id});
    let mut pause = true;
    while Instant::now() < until {
        let path = if pause {
            "/platform/pipeline/pause"
        } else {
            "/platform/pipeline/unpause"
        };
        let request = RequestTemplate::new(Method::POST, path)
            .bearer(&token)
            .and_then(|request| request.json(&body));
        match request {
            Ok(request) => {
                let outcome = send(traffic.addr, &request).await;
                traffic.record.count(Kind::PauseOrUnpause, outcome);
            }
            Err(err) => traffic
                .record
                .problem(format!("cannot build a pause: {err:#}")),
        }
        pause = !pause;
        let executed = traffic
            .execute(Kind::ExecuteToggledPipeline, &pipeline, None)
            .await;
        if executed.outcome == Outcome::NoAnswer {
            traffic.record.unheard.fetch_add(1, Ordering::Relaxed);
        }
        sleep(TOGGLE_EVERY).await;
    }
}

/// Sends `request` on a connection of its own; its outcome.
async fn send(addr: SocketAddr, request: &RequestTemplate) -> Outcome {
    match http::send_once(addr, request, ANSWER_TIMEOUT).await {
        Ok(answer) => Outcome::Status(answer.status.as_u16()),
        Err(_) => Outcome::NoAnswer,
    }
}

/// One reader: a keep-alive connection sending reads one after another.
async fn reads(traffic: Arc<Traffic>, reader: usize, until: Instant) {
    let mut rng = StdRng::from_os_rng();
    let mut connection = Connection::new(traffic.addr);
    while Instant::now() < until {
        let (kind, request) = match read_request(&traffic, reader, &mut rng) {
            Ok(read) => read,
            Err(err) => {
                traffic
                    .record
                    .problem(format!("cannot build a read: {err:#}"));
                return;
            }
        };
        let outcome = match connection.send(&request, None).await {
            Ok(status) => Outcome::Status(status.as_u16()),
            Err(_) => Outcome::NoAnswer,
        };
        traffic.record.count(kind, outcome);
        sleep(READ_PAUSE).await;
    }
}

/// A random read: a run that was accepted most often, since a lost run
/// shows there as a 404 at once.
fn read_request(
    traffic: &Traffic,
    reader: usize,
    rng: &mut StdRng,
) -> anyhow::Result<(Kind, RequestTemplate)> {
    let pipeline = traffic.random_pipeline(rng);
    let token = traffic.world.token(pipeline);
    let choice = rng.random_range(0..10);
    if choice < 4
        && let Some(run) = traffic.record.some_accepted(rng)
    {
        let token = traffic.world.token_of(&run.customer).unwrap_or(token);
        let path = format!(
            "/platform/pipeline/{}/pipeline_run/{}",
            run.pipeline,
            utf8_percent_encode(&run.run_id, NON_ALPHANUMERIC)
        );
        return Ok((
            Kind::GetAcceptedRun,
            RequestTemplate::get(path).bearer(token)?,
        ));
    }
    let (kind, path) = match choice {
        0..6 => {
            let status = ["", "&status=SUCCESS", "&status=QUEUED"][reader % 3];
            let offset = rng.random_range(0..3) * 10;
            (
                Kind::ListRuns,
                format!(
                    "/platform/pipeline/{}/pipeline_run?limit=10&offset={offset}{status}",
                    pipeline.id
                ),
            )
        }
        6..8 => (
            Kind::GetPipeline,
            // Either form of the id is accepted.
            format!("/platform/pipeline/{}", pipeline.id.replace('_', "-")),
        ),
        _ => (Kind::ListPipelines, "/platform/pipelines".to_owned()),
    };
    Ok((kind, RequestTemplate::get(path).bearer(token)?))
}

async fn bad_tokens(traffic: Arc<Traffic>, until: Instant) {
    let wrong_secret = traffic.world.token_with_another_secret();
    let expired = traffic.world.expired_token();
    let (Ok(wrong_secret), Ok(expired)) = (wrong_secret, expired) else {
        traffic
            .record
            .problem("cannot sign the bad tokens".to_owned());
        return;
    };
    let tokens = [
        None,
        Some("not-a-jwt".to_owned()),
        Some(wrong_secret),
        Some(expired),
        Some(UNSIGNED_TOKEN.to_owned()),
    ];
    let mut next = 0;
    while Instant::now() < until {
        let mut request = RequestTemplate::get("/platform/pipelines");
        if let Some(token) = &tokens[next % tokens.len()] {
            match request.bearer(token) {
                Ok(with_token) => request = with_token,
                Err(err) => {
                    traffic.record.problem(format!("a bad token: {err:#}"));
                    return;
                }
            }
        }
        next += 1;
        let outcome = send(traffic.addr, &request).await;
        traffic.record.count(Kind::BadToken, outcome);
        sleep(BAD_TOKEN_EVERY).await;
    }
}

/// What a connection the service should close within `timeout` came to.
fn closed_in_time(heard: anyhow::Result<Heard>, timeout: Duration) -> Outcome {
    match heard {
        Ok(Heard::Closed(after)) if after <= timeout + CLOSE_MARGIN => Outcome::Closed,
        Ok(Heard::Closed(_) | Heard::Silence) => Outcome::LeftOpen,
        Ok(Heard::Answer(answer)) => Outcome::Status(answer.status),
        Err(_) => Outcome::NoAnswer,
    }
}

async fn unfinished_heads(traffic: Arc<Traffic>, until: Instant) {
    let mut open = JoinSet::new();
    let timeout = traffic.edge.header_read;
    while Instant::now() < until {
        let traffic = Arc::clone(&traffic);
        open.spawn(async move {
            let wait = timeout + 2 * CLOSE_MARGIN;
            let heard = raw::unfinished_head(traffic.addr, wait).await;
            traffic
                .record
                .count(Kind::UnfinishedHead, closed_in_time(heard, timeout));
        });
        sleep(UNFINISHED_HEAD_EVERY).await;
        while open.try_join_next().is_some() {}
    }
    while open.join_next().await.is_some() {}
}

async fn idle_connections(traffic: Arc<Traffic>, until: Instant) {
    let mut open = JoinSet::new();
    let timeout = traffic.edge.idle;
    while Instant::now() < until {
        let traffic = Arc::clone(&traffic);
        open.spawn(async move {
            let wait = timeout + 2 * CLOSE_MARGIN;
            let heard = raw::idle_after_answer(traffic.addr, wait).await;
            traffic
                .record
                .count(Kind::IdleConnection, closed_in_time(heard, timeout));
        });
        sleep(IDLE_EVERY).await;
        while open.try_join_next().is_some() {}
    }
    while open.join_next().await.is_some() {}
}

async fn trickled_bodies(traffic: Arc<Traffic>, until: Instant) {
    let mut rng = StdRng::from_os_rng();
    let mut open = JoinSet::new();
    let mut in_time = true;
    while Instant::now() < until {
        let traffic = Arc::clone(&traffic);
        let pipeline = traffic.random_pipeline(&mut rng).clone();
        open.spawn(async move { trickle(&traffic, &pipeline, in_time).await });
        in_time = !in_time;
        sleep(TRICKLE_EVERY).await;
        while open.try_join_next().is_some() {}
    }
    while open.join_next().await.is_some() {}
}

/// An execute whose body arrives a few bytes at a time: within half the
/// body timeout, or over three times it.
async fn trickle(traffic: &Traffic, pipeline: &Pipeline, in_time: bool) {
    let authorization = format!("Bearer {}", traffic.world.token(pipeline));
    let body = serde_json::json!({"pipeline_id": pipeline.id}).to_string();
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (kind, chunk, every) = if in_time {
        let pieces = body.len().div_ceil(4) as u32;
        (
            Kind::TrickledBodyInTime,
            4,
            traffic.edge.body / 2 / pieces.max(1),
        )
    } else {
        let pieces = body.len() as u32;
        (
            Kind::TrickledBodyTooSlow,
            1,
            traffic.edge.body * 3 / pieces.max(1),
        )
    };
    let heard = raw::trickled_post(
        traffic.addr,
        EXECUTE_PATH,
        &headers,
        body.as_bytes(),
        chunk,
        every,
        traffic.edge.body * 4 + ANSWER_TIMEOUT,
    )
    .await;
    let outcome = match heard {
        Ok(Heard::Answer(answer)) => {
            if answer.status == 200 {
                let json = serde_json::from_slice(&answer.body).unwrap_or_default();
                traffic.accept_answer(pipeline, None, &json, false);
            }
            Outcome::Status(answer.status)
        }
        Ok(Heard::Closed(_) | Heard::Silence) | Err(_) => {
            if in_time {
                traffic.record.unheard.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::NoAnswer
        }
    };
    traffic.record.count(kind, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_memory_only_the_answers_of_a_working_service_are_expected() {
        let memory = Backend::Memory;
        assert!(Kind::Execute.expects(Outcome::Status(200), memory));
        assert!(!Kind::Execute.expects(Outcome::Status(500), memory));
        assert!(!Kind::Execute.expects(Outcome::Status(503), memory));
        assert!(!Kind::GetAcceptedRun.expects(Outcome::Status(404), memory));
        assert!(Kind::ExecuteToggledPipeline.expects(Outcome::Status(400), memory));
        assert!(!Kind::PauseOrUnpause.expects(Outcome::Status(400), memory));
        assert!(Kind::ExecuteRetriedKey.expects(Outcome::Status(409), memory));
        assert!(!Kind::ExecuteNewKey.expects(Outcome::Status(409), memory));
        assert!(Kind::BadToken.expects(Outcome::Status(401), memory));
        assert!(!Kind::BadToken.expects(Outcome::Status(200), memory));
        assert!(Kind::UnfinishedHead.expects(Outcome::Closed, memory));
        assert!(!Kind::UnfinishedHead.expects(Outcome::LeftOpen, memory));
        assert!(Kind::TrickledBodyTooSlow.expects(Outcome::Status(408), memory));
        assert!(!Kind::Execute.expects(Outcome::NoAnswer, memory));
    }

    #[test]
    fn on_platform_api_upstream_failures_are_expected_where_the_upstream_is_called() {
        let upstream = Backend::PlatformApi;
        for status in [502, 503, 504] {
            assert!(Kind::Execute.expects(Outcome::Status(status), upstream));
            assert!(Kind::ListRuns.expects(Outcome::Status(status), upstream));
            assert!(Kind::TrickledBodyInTime.expects(Outcome::Status(status), upstream));
            // Answered from the key store or the edge, never the upstream.
            assert!(!Kind::ExecuteRepeatedKey.expects(Outcome::Status(status), upstream));
            assert!(!Kind::BadToken.expects(Outcome::Status(status), upstream));
        }
        assert!(!Kind::Execute.expects(Outcome::Status(500), upstream));
        assert!(Kind::PauseOrUnpause.expects(Outcome::Status(400), upstream));
        assert!(!Kind::GetAcceptedRun.expects(Outcome::Status(404), upstream));
    }

    #[test]
    fn a_connection_closed_within_its_timeout_and_margin_is_closed_in_time() {
        let timeout = Duration::from_secs(2);
        let closed = |seconds: f64| Ok(Heard::Closed(Duration::from_secs_f64(seconds)));
        assert_eq!(closed_in_time(closed(2.1), timeout), Outcome::Closed);
        assert_eq!(closed_in_time(closed(3.6), timeout), Outcome::LeftOpen);
        assert_eq!(
            closed_in_time(Ok(Heard::Silence), timeout),
            Outcome::LeftOpen
        );
        let answered = Ok(Heard::Answer(raw::RawAnswer {
            status: 400,
            body: Vec::new(),
        }));
        assert_eq!(closed_in_time(answered, timeout), Outcome::Status(400));
    }
}
