//! A fake Platform-API upstream (`docs/backends/platform-api.md`) that the
//! soak can stop, restart and stall: every route of the contract over a
//! small in-memory store of its own, served by hyper on a fixed loopback
//! port.
//!
//! It keeps the contract's duties both ways. It answers what a compatible
//! upstream answers (the envelopes, `X-Total-Count`, runs newest first,
//! one run active per pipeline and the rest queued, the refusals), and it
//! counts every request of Maestro's that breaks the contract (no service
//! token, no request id, a customer header and body that disagree, a run id
//! not percent-encoded...), answering it with a refusal Maestro turns into
//! a 502, so that the soak reports it.
//!
//! Stopped, it closes its listener and drops every open connection, so
//! Maestro's calls are refused (503); its store survives, as a real
//! upstream's database would. Stalled, it still does the work of each
//! request but holds every answer until the stall ends, past Maestro's
//! timeout (504): an execute then makes a run that no client hears of.
//!
//! Maestro's own memory backend would be the obvious store, but the
//! architecture keeps adapters out of every crate but `app`; the fake needs
//! far less than it anyway.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HeaderValue},
    http::request::Parts,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// The service token the fake accepts.
pub(super) const SERVICE_TOKEN: &str = "soak-fake-upstream-service-token";

/// The path prefix the fake serves under, as a real base URL may have.
const PREFIX: &str = "/api/v1";

/// The most queued runs per pipeline; beyond, `PipelineQueueFull`.
const QUEUE_LIMIT: usize = 100_000;

/// The first contract violations kept, to say what went wrong.
const VIOLATIONS_KEPT: usize = 5;

/// A pipeline the fake serves.
#[derive(Debug, Clone)]
pub(super) struct FakePipeline {
    /// Its id, in normal form.
    pub(super) id: String,
    /// Its owner.
    pub(super) customer: String,
    /// Its name.
    pub(super) name: String,
}

/// What the fake did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UpstreamStats {
    /// Requests it answered or held, health checks included.
    pub(super) requests: u64,
    /// Runs it made.
    pub(super) runs_made: u64,
    /// Requests that broke the contract.
    pub(super) violations: u64,
    /// What the first of them did wrong.
    pub(super) first_violations: Vec<String>,
}

/// The fake upstream; stopped when dropped.
#[derive(Debug)]
pub(super) struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// Locked only between a request's body and its answer, never across
    /// an `.await`: the store's work is a few map operations.
    state: Mutex<State>,
    stalled: watch::Sender<bool>,
}

impl FakeUpstream {
    /// A fake, not started, that will listen on `addr` and serve
    /// `pipelines`, each run staying `RUNNING` for `run_duration`.
    pub(super) fn new(
        addr: SocketAddr,
        pipelines: &[FakePipeline],
        run_duration: Duration,
    ) -> Self {
        let created = Utc::now();
        let pipelines = pipelines
            .iter()
            .map(|pipeline| {
                let stored = Stored {
                    customer: pipeline.customer.clone(),
                    name: pipeline.name.clone(),
                    paused: false,
                    created_at: created,
                    updated_at: created,
                    runs: Vec::new(),
                };
                (pipeline.id.clone(), stored)
            })
            .collect();
        let state = State {
            pipelines,
            run_duration: TimeDelta::from_std(run_duration).unwrap_or(TimeDelta::zero()),
            stats: UpstreamStats::default(),
        };
        Self {
            addr,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                stalled: watch::Sender::new(false),
            }),
            server: None,
        }
    }

    /// The base URL to give Maestro.
    pub(super) fn url(&self) -> String {
        format!("http://{}{PREFIX}", self.addr)
    }

    /// Starts listening (again), with the store as it was.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let socket = TcpSocket::new_v4().context("cannot make a socket")?;
        // The port was just left by the previous listener, whose accepted
        // connections may linger in TIME_WAIT.
        socket
            .set_reuseaddr(true)
            .context("cannot set SO_REUSEADDR")?;
        socket
            .bind(self.addr)
            .with_context(|| format!("the fake upstream cannot bind {}", self.addr))?;
        let listener = socket.listen(1024).context("cannot listen")?;
        self.server = Some(tokio::spawn(serve(listener, Arc::clone(&self.shared))));
        Ok(())
    }

    /// Stops listening and drops every open connection, in flight or idle.
    pub(super) async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Aborted: the listener and every connection are closed once
            // the task is gone.
            let _ = server.await;
        }
    }

    /// Holds every answer from now until [`Self::set_stalled`] with
    /// `false`.
    pub(super) fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// What it did so far.
    pub(super) fn stats(&self) -> UpstreamStats {
        lock(&self.shared).stats.clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panic while the lock was held left the store as it was between two
    // whole operations, so it is still usable.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Accepts until aborted; the connections live in a set that the accept
/// task owns, so aborting it drops them all.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    // A connection ends with an error when Maestro drops
                    // it; there is nothing to do about it here.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        // The connection broke mid-body; the answer goes nowhere.
        Err(_) => return Ok(Response::new(Full::new(Bytes::new()))),
    };
    let reply = lock(&shared).answer(&parts, &body, Utc::now());
    let mut stalled = shared.stalled.subscribe();
    // Done, but not answered until the stall ends.
    let _ = stalled.wait_for(|stalled| !stalled).await;
    Ok(reply.into_response())
}

/// A route's answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
    total: Option<usize>,
}

impl Reply {
    /// `{"status": true, "data": data}` with 200.
    fn success(data: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: json!({"status": true, "data": data}),
            total: None,
        }
    }

    /// A refusal in the error envelope.
    fn refusal(status: u16, exception_type: &str, traceback: &str, data: Value) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            body: json!({"detail": {
                "status": false,
                "exception_type": exception_type,
                "traceback": traceback,
                "data": data,
            }}),
            total: None,
        }
    }

    fn not_found(id: &str) -> Self {
        Self::refusal(
            404,
            "PipelineNotFound",
            &format!("Pipeline with id {id} not found"),
            Value::Null,
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body.to_string())));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(total) = self.total {
            headers.insert("x-total-count", HeaderValue::from(total));
        }
        response
    }
}

/// A refusal that no route may answer, for a request that breaks the
/// contract.
#[derive(Debug)]
struct Violation(String);

type Answer = Result<Reply, Violation>;

fn violation(why: impl Into<String>) -> Violation {
    Violation(why.into())
}

#[derive(Debug)]
struct State {
    /// By pipeline id in normal form.
    pipelines: BTreeMap<String, Stored>,
    run_duration: TimeDelta,
    stats: UpstreamStats,
}

#[derive(Debug)]
struct Stored {
    customer: String,
    name: String,
    paused: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Oldest first; each starts when the one before it ends.
    runs: Vec<StoredRun>,
}

#[derive(Debug)]
struct StoredRun {
    id: String,
    created_at: DateTime<Utc>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

impl StoredRun {
    /// Its status at `now` and when that status began.
    fn status(&self, now: DateTime<Utc>) -> (&'static str, DateTime<Utc>) {
        if now < self.starts_at {
            ("QUEUED", self.created_at)
        } else if now < self.ends_at {
            ("RUNNING", self.starts_at)
        } else {
            ("SUCCESS", self.ends_at)
        }
    }

    fn json(&self, pipeline: &str, now: DateTime<Utc>) -> Value {
        let (status, updated_at) = self.status(now);
        json!({
            "pipeline_run_id": self.id,
            "pipeline_id": pipeline,
            "last_status": status,
            "created_at": time(self.created_at),
            "updated_at": time(updated_at),
            "trace": null,
        })
    }
}

impl State {
    /// The answer to one request, or a refusal that says it broke the
    /// contract.
    fn answer(&mut self, parts: &Parts, body: &[u8], now: DateTime<Utc>) -> Reply {
        self.stats.requests += 1;
        // A real upstream checks the token before anything else.
        if header(parts, "authorization") != Some(&format!("Bearer {SERVICE_TOKEN}")) {
            self.note(violation("no service token, or another"));
            return Reply {
                status: StatusCode::UNAUTHORIZED,
                body: json!({"detail": "Unauthorized"}),
                total: None,
            };
        }
        match self.route(parts, body, now) {
            Ok(reply) => reply,
            Err(broken) => {
                let reply = Reply::refusal(400, "ContractViolation", &broken.0, Value::Null);
                self.note(broken);
                reply
            }
        }
    }

    fn note(&mut self, broken: Violation) {
        self.stats.violations += 1;
        if self.stats.first_violations.len() < VIOLATIONS_KEPT {
            self.stats.first_violations.push(broken.0);
        }
    }

    fn route(&mut self, parts: &Parts, body: &[u8], now: DateTime<Utc>) -> Answer {
        if header(parts, "accept") != Some("application/json") {
            return Err(violation("Accept is not application/json"));
        }
        if header(parts, "x-request-id").is_none_or(str::is_empty) {
            return Err(violation("no X-Request-Id"));
        }
        if !header(parts, "user-agent").is_some_and(|agent| agent.starts_with("maestro/")) {
            return Err(violation("the user agent is not maestro/<version>"));
        }
        let path = parts.uri.path();
        let route = path
            .strip_prefix(PREFIX)
            .ok_or_else(|| violation(format!("{path} is outside the base URL's path")))?;
        let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
        let method = parts.method.as_str();
        if (method, segments.as_slice()) == ("GET", &["health"][..]) {
            if header(parts, "x-customer-id").is_some() {
                return Err(violation("the health probe names a customer"));
            }
            return Ok(Reply::success(json!({"status": "ok"})));
        }
        let customer = customer(parts)?;
        if method == "GET" && !body.is_empty() {
            return Err(violation("a GET with a body"));
        }
        match (method, segments.as_slice()) {
            ("POST", ["pipeline", "execute"]) => {
                let id = write_body(parts, body, &customer)?;
                Ok(self.execute(&customer, &id, now))
            }
            ("POST", ["pipeline", "pause"]) => {
                let id = write_body(parts, body, &customer)?;
                Ok(self.set_paused(&customer, &id, true, now))
            }
            ("POST", ["pipeline", "unpause"]) => {
                let id = write_body(parts, body, &customer)?;
                Ok(self.set_paused(&customer, &id, false, now))
            }
            ("GET", ["pipelines"]) => Ok(self.list_pipelines(&customer, now)),
            ("GET", ["pipeline", id]) => Ok(self.get_pipeline(&customer, normal_id(id)?)),
            ("GET", ["pipeline", id, "pipeline_run"]) => {
                let query = run_query(parts)?;
                Ok(self.list_runs(&customer, normal_id(id)?, &query, now))
            }
            ("GET", ["pipeline", id, "pipeline_run", run_id]) => {
                let run_id = encoded_run_id(run_id)?;
                Ok(self.get_run(&customer, normal_id(id)?, &run_id, now))
            }
            _ => Err(violation(format!("no route {method} {route}"))),
        }
    }

    /// The customer's pipeline, or nothing: another customer's is missing.
    fn owned(&mut self, customer: &str, id: &str) -> Option<&mut Stored> {
        self.pipelines
            .get_mut(id)
            .filter(|pipeline| pipeline.customer == customer)
    }

    fn execute(&mut self, customer: &str, id: &str, now: DateTime<Utc>) -> Reply {
        let duration = self.run_duration;
        let Some(pipeline) = self.owned(customer, id) else {
            return Reply::not_found(id);
        };
        if pipeline.paused {
            return Reply::refusal(
                400,
                "PipelinePaused",
                "Cannot execute paused pipeline. Use /pipeline/unpause first.",
                Value::Null,
            );
        }
        let queued = pipeline
            .runs
            .iter()
            .rev()
            .take_while(|run| run.starts_at > now)
            .count();
        let active = pipeline.runs.last().is_some_and(|run| run.ends_at > now);
        if active && queued >= QUEUE_LIMIT {
            return Reply::refusal(
                429,
                "PipelineQueueFull",
                &format!("Pipeline queue is full ({QUEUE_LIMIT} runs waiting)"),
                json!({"limit": QUEUE_LIMIT}),
            );
        }
        // Unique per pipeline, also within one microsecond: a run is never
        // created before the one before it.
        let created_at = match pipeline.runs.last() {
            Some(last) if last.created_at >= now => last.created_at + TimeDelta::microseconds(1),
            _ => now,
        };
        let starts_at = pipeline
            .runs
            .last()
            .map_or(created_at, |last| last.ends_at.max(created_at));
        let run = StoredRun {
            id: format!("manual__{}", time(created_at)),
            created_at,
            starts_at,
            ends_at: starts_at + duration,
        };
        let (status, updated_at) = run.status(now);
        let data = json!({
            "message": "Pipeline execution triggered successfully",
            "pipeline_id": id,
            "run_id": run.id,
            "last_status": status,
            "created_at": time(run.created_at),
            "updated_at": time(updated_at),
        });
        pipeline.runs.push(run);
        self.stats.runs_made += 1;
        Reply::success(data)
    }

    fn set_paused(&mut self, customer: &str, id: &str, paused: bool, now: DateTime<Utc>) -> Reply {
        let Some(pipeline) = self.owned(customer, id) else {
            return Reply::not_found(id);
        };
        if pipeline.paused == paused {
            return if paused {
                Reply::refusal(
                    400,
                    "PipelineAlreadyPaused",
                    "Pipeline is already paused",
                    Value::Null,
                )
            } else {
                Reply::refusal(
                    400,
                    "PipelineNotPaused",
                    "Pipeline is not paused",
                    Value::Null,
                )
            };
        }
        pipeline.paused = paused;
        pipeline.updated_at = now;
        let message = if paused {
            "Pipeline paused successfully"
        } else {
            "Pipeline unpaused successfully"
        };
        Reply::success(json!({"message": message, "pipeline_id": id}))
    }

    fn list_pipelines(&self, customer: &str, now: DateTime<Utc>) -> Reply {
        let summaries: Vec<Value> = self
            .pipelines
            .iter()
            .filter(|(_, pipeline)| pipeline.customer == customer)
            .map(|(id, pipeline)| {
                let mut summary = pipeline.json(id);
                summary["pipeline_id"] = summary["id"].take();
                if let Some(object) = summary.as_object_mut() {
                    object.remove("id");
                }
                summary["last_status"] = json!(pipeline.runs.last().map(|run| run.status(now).0));
                summary
            })
            .collect();
        Reply::success(Value::Array(summaries))
    }

    fn get_pipeline(&mut self, customer: &str, id: &str) -> Reply {
        match self.owned(customer, id) {
            Some(pipeline) => Reply::success(pipeline.json(id)),
            None => Reply::not_found(id),
        }
    }

    fn list_runs(
        &mut self,
        customer: &str,
        id: &str,
        query: &RunQuery,
        now: DateTime<Utc>,
    ) -> Reply {
        let Some(pipeline) = self.owned(customer, id) else {
            return Reply::not_found(id);
        };
        // Newest first: created times only grow, so the reverse of the
        // order they were made in.
        let matching: Vec<&StoredRun> = pipeline
            .runs
            .iter()
            .rev()
            .filter(|run| {
                query
                    .status
                    .as_deref()
                    .is_none_or(|status| run.status(now).0 == status)
            })
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(query.offset)
            .take(query.limit)
            .map(|run| run.json(id, now))
            .collect();
        let mut reply = Reply::success(Value::Array(page));
        reply.total = Some(matching.len());
        reply
    }

    fn get_run(&mut self, customer: &str, id: &str, run_id: &str, now: DateTime<Utc>) -> Reply {
        let Some(pipeline) = self.owned(customer, id) else {
            return Reply::not_found(id);
        };
        match pipeline.runs.iter().find(|run| run.id == run_id) {
            Some(run) => Reply::success(run.json(id, now)),
            None => Reply::refusal(
                404,
                "PipelineRunNotFound",
                &format!("Pipeline run with id {run_id} not found for pipeline {id}"),
                Value::Null,
            ),
        }
    }
}

impl Stored {
    /// PIPELINE.
    fn json(&self, id: &str) -> Value {
        json!({
            "id": id,
            "customer_id": self.customer,
            "name": self.name,
            "description": "",
            "cron": null,
            "status": if self.paused { "paused" } else { "active" },
            "created_at": time(self.created_at),
            "updated_at": time(self.updated_at),
            "jobs": [],
        })
    }
}

/// RFC 3339 in UTC with microseconds and `+00:00`, as run ids have it.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, false)
}

fn header<'p>(parts: &'p Parts, name: &str) -> Option<&'p str> {
    parts
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// The customer that `X-Customer-Id` names, percent-decoded.
fn customer(parts: &Parts) -> Result<String, Violation> {
    let raw = header(parts, "x-customer-id").ok_or_else(|| violation("no X-Customer-Id"))?;
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| violation(format!("X-Customer-Id {raw:?} is not UTF-8")))?;
    if decoded.is_empty() {
        return Err(violation("an empty X-Customer-Id"));
    }
    Ok(decoded.into_owned())
}

/// The pipeline id of the body of execute, pause and unpause:
/// `{"pipeline_id", "customer_id"}` (and `conf`, which Maestro may
/// forward), JSON, the id in normal form and the customer the header's.
fn write_body(parts: &Parts, body: &[u8], customer: &str) -> Result<String, Violation> {
    if header(parts, "content-type") != Some("application/json") {
        return Err(violation("the content type is not application/json"));
    }
    let body: Value = serde_json::from_slice(body).map_err(|err| violation(err.to_string()))?;
    let Some(object) = body.as_object() else {
        return Err(violation("the body is not an object"));
    };
    if object
        .keys()
        .any(|key| !["pipeline_id", "customer_id", "conf"].contains(&key.as_str()))
    {
        return Err(violation(format!("the body {body} has an unknown field")));
    }
    let (Some(pipeline_id), Some(named)) =
        (body["pipeline_id"].as_str(), body["customer_id"].as_str())
    else {
        return Err(violation(format!(
            "the body {body} is not {{pipeline_id, customer_id}}"
        )));
    };
    if named != customer {
        return Err(violation(format!(
            "the body names {named:?}, the header {customer:?}"
        )));
    }
    normal_id(pipeline_id).map(str::to_owned)
}

/// A pipeline id, which Maestro sends in normal form only: a lower-case
/// UUID with underscores.
fn normal_id(raw: &str) -> Result<&str, Violation> {
    let normal = raw.len() == 36
        && raw.char_indices().all(|(index, c)| match index {
            8 | 13 | 18 | 23 => c == '_',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
    if normal {
        Ok(raw)
    } else {
        Err(violation(format!(
            "pipeline id {raw:?} is not in normal form"
        )))
    }
}

/// A run id from a path segment, which Maestro percent-encodes.
fn encoded_run_id(raw: &str) -> Result<String, Violation> {
    if raw.contains(':') || raw.contains('+') {
        return Err(violation(format!("run id {raw:?} is not percent-encoded")));
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| violation(format!("run id {raw:?} is not UTF-8")))?;
    if decoded.is_empty() || decoded == "." || decoded == ".." {
        return Err(violation(format!("run id {decoded:?} in a path")));
    }
    Ok(decoded.into_owned())
}

#[derive(Debug, PartialEq, Eq)]
struct RunQuery {
    limit: usize,
    offset: usize,
    status: Option<String>,
}

/// `limit` and `offset`, always sent, and `status`, sent only to filter.
fn run_query(parts: &Parts) -> Result<RunQuery, Violation> {
    let (mut limit, mut offset, mut status) = (None, None, None);
    for pair in parts.uri.query().unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || violation(format!("query parameter {pair:?}"));
        match name {
            "limit" => limit = Some(value.parse::<usize>().map_err(|_| bad())?),
            "offset" => offset = Some(value.parse::<usize>().map_err(|_| bad())?),
            "status" if ["QUEUED", "RUNNING", "SUCCESS", "FAILED"].contains(&value) => {
                status = Some(value.to_owned());
            }
            _ => return Err(bad()),
        }
    }
    match (limit, offset) {
        (Some(limit @ 1..=1000), Some(offset)) => Ok(RunQuery {
            limit,
            offset,
            status,
        }),
        _ => Err(violation("limit (1 to 1000) and offset are always sent")),
    }
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::*;

    const CUSTOMER: &str = "soak-a";
    const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    fn state(run_seconds: i64) -> State {
        let now = Utc::now();
        State {
            pipelines: BTreeMap::from([(
                PIPELINE.to_owned(),
                Stored {
                    customer: CUSTOMER.to_owned(),
                    name: "p".to_owned(),
                    paused: false,
                    created_at: now,
                    updated_at: now,
                    runs: Vec::new(),
                },
            )]),
            run_duration: TimeDelta::seconds(run_seconds),
            stats: UpstreamStats::default(),
        }
    }

    fn parts(method: Method, path: &str, customer: Option<&str>) -> Parts {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{PREFIX}{path}"))
            .header("authorization", format!("Bearer {SERVICE_TOKEN}"))
            .header("accept", "application/json")
            .header("x-request-id", "r-1")
            .header("user-agent", "maestro/0.1.0")
            .header("content-type", "application/json");
        if let Some(customer) = customer {
            builder = builder.header("x-customer-id", customer);
        }
        builder.body(()).expect("a request").into_parts().0
    }

    fn execute(state: &mut State, now: DateTime<Utc>) -> Reply {
        let body = json!({"pipeline_id": PIPELINE, "customer_id": CUSTOMER}).to_string();
        state.answer(
            &parts(Method::POST, "/pipeline/execute", Some(CUSTOMER)),
            body.as_bytes(),
            now,
        )
    }

    #[test]
    fn runs_queue_behind_the_running_one_and_list_newest_first_with_a_total() {
        let mut state = state(10);
        let now = Utc::now();
        let first = execute(&mut state, now);
        let second = execute(&mut state, now);
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body["data"]["last_status"], "RUNNING");
        assert_eq!(second.body["data"]["last_status"], "QUEUED");
        let (first_id, second_id) = (
            first.body["data"]["run_id"].as_str().unwrap().to_owned(),
            second.body["data"]["run_id"].as_str().unwrap().to_owned(),
        );
        assert_ne!(first_id, second_id, "unique within one microsecond");
        assert!(first_id.starts_with("manual__") && first_id.ends_with("+00:00"));

        let list = state.answer(
            &parts(
                Method::GET,
                &format!("/pipeline/{PIPELINE}/pipeline_run?limit=1&offset=0"),
                Some(CUSTOMER),
            ),
            b"",
            now,
        );
        assert_eq!(list.total, Some(2));
        assert_eq!(list.body["data"][0]["pipeline_run_id"], second_id.as_str());

        let later = now + TimeDelta::seconds(25);
        let encoded =
            percent_encoding::utf8_percent_encode(&first_id, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let run = state.answer(
            &parts(
                Method::GET,
                &format!("/pipeline/{PIPELINE}/pipeline_run/{encoded}"),
                Some(CUSTOMER),
            ),
            b"",
            later,
        );
        assert_eq!(run.body["data"]["last_status"], "SUCCESS");
        assert_eq!(state.stats.runs_made, 2);
        assert_eq!(state.stats.violations, 0);
    }

    #[test]
    fn another_customers_pipeline_is_not_found_and_a_paused_one_refuses() {
        let mut state = state(0);
        let now = Utc::now();
        let other = state.answer(
            &parts(
                Method::GET,
                &format!("/pipeline/{PIPELINE}"),
                Some("soak-b"),
            ),
            b"",
            now,
        );
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        assert_eq!(other.body["detail"]["exception_type"], "PipelineNotFound");

        let body = json!({"pipeline_id": PIPELINE, "customer_id": CUSTOMER}).to_string();
        let pause = parts(Method::POST, "/pipeline/pause", Some(CUSTOMER));
        assert_eq!(
            state.answer(&pause, body.as_bytes(), now).status,
            StatusCode::OK
        );
        let again = state.answer(&pause, body.as_bytes(), now);
        assert_eq!(
            again.body["detail"]["exception_type"],
            "PipelineAlreadyPaused"
        );
        let refused = execute(&mut state, now);
        assert_eq!(refused.body["detail"]["exception_type"], "PipelinePaused");
        assert_eq!(state.stats.runs_made, 0);
    }

    #[test]
    fn requests_that_break_the_contract_are_counted() {
        let mut state = state(0);
        let now = Utc::now();
        let mut no_token = parts(Method::GET, "/pipelines", Some(CUSTOMER));
        no_token.headers.remove("authorization");
        assert_eq!(
            state.answer(&no_token, b"", now).status,
            StatusCode::UNAUTHORIZED
        );
        let hyphenated = parts(
            Method::GET,
            "/pipeline/1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
            Some(CUSTOMER),
        );
        assert_eq!(
            state.answer(&hyphenated, b"", now).status,
            StatusCode::BAD_REQUEST
        );
        let raw_run = parts(
            Method::GET,
            &format!("/pipeline/{PIPELINE}/pipeline_run/manual__2024-12-18T10:30:00+00:00"),
            Some(CUSTOMER),
        );
        assert_eq!(
            state.answer(&raw_run, b"", now).status,
            StatusCode::BAD_REQUEST
        );
        let no_paging = parts(
            Method::GET,
            &format!("/pipeline/{PIPELINE}/pipeline_run"),
            Some(CUSTOMER),
        );
        assert_eq!(
            state.answer(&no_paging, b"", now).status,
            StatusCode::BAD_REQUEST
        );
        let health = parts(Method::GET, "/health", None);
        assert_eq!(state.answer(&health, b"", now).status, StatusCode::OK);
        assert_eq!(state.stats.violations, 4);
        assert_eq!(state.stats.first_violations.len(), 4);
    }

    #[tokio::test]
    async fn stopped_it_refuses_connections_and_restarted_it_serves_the_same_store() {
        let addr = crate::process::free_local_addr().expect("a free port");
        let pipeline = FakePipeline {
            id: PIPELINE.to_owned(),
            customer: CUSTOMER.to_owned(),
            name: "p".to_owned(),
        };
        let mut fake = FakeUpstream::new(addr, &[pipeline], Duration::ZERO);
        fake.start().expect("started");
        let health = crate::http::RequestTemplate::get(format!("{PREFIX}/health"));
        let timeout = Duration::from_secs(5);
        // The fake counts Maestro's missing headers; a bare GET is refused.
        let answer = crate::http::send_once(addr, &health, timeout)
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        fake.stop().await;
        let refused = crate::http::send_once(addr, &health, timeout).await;
        assert!(
            matches!(refused, Err(crate::http::TransportError::Connect(_))),
            "{refused:?}"
        );

        fake.start().expect("restarted");
        fake.set_stalled(true);
        let held = crate::http::send_once(addr, &health, Duration::from_millis(300)).await;
        assert!(
            matches!(held, Err(crate::http::TransportError::Timeout(_))),
            "{held:?}"
        );
        fake.set_stalled(false);
        let answer = crate::http::send_once(addr, &health, timeout)
            .await
            .expect("an answer again");
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(fake.stats().requests, 3);
        assert_eq!(fake.stats().violations, 3);
    }
}
