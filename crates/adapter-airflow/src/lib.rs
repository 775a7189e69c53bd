//! Maestro's Apache Airflow backend: pipelines are DAGs and runs are DAG
//! runs, reached over Airflow 3's REST API v2 (`/api/v2/...`).
//!
//! A DAG is a pipeline of customer `acme` when its `dag_id` is a UUID in
//! the normal underscored lower-case form and it carries exactly one tag
//! `customer:acme` (the prefix is configurable). Every other DAG is visible
//! to no one, and looks exactly like a missing one.
//!
//! [`AirflowBackend`] implements both [`PipelineRepository`] and
//! [`Orchestrator`]; [`AirflowChanges`] over it is the feed's
//! [`domain::RunChangeSource`], which polls Airflow for the runs changed
//! since its cursor. Every call of a port is bounded, all its requests to
//! Airflow included, by the configured timeout. `docs/backends/airflow.md`
//! tells an operator how to set it up.
//!
//! # Time
//!
//! The backend reads the time only through one [`Clock`]: the instants in
//! the run ids it makes, the age of a DAG read that lets a trigger skip the
//! next read, and the age and expiry of Airflow's tokens. It is
//! [`runtime::TokioClock`] unless [`AirflowBackend::with_clock`] gives
//! another (a [`domain::ManualClock`] in tests). Waiting (the call timeout)
//! is done on tokio's timers.
//!
//! ```no_run
//! use adapter_airflow::{AirflowAuth, AirflowBackend, AirflowConfig};
//!
//! let config = AirflowConfig::new(
//!     "http://127.0.0.1:8080",
//!     AirflowAuth::Credentials {
//!         username: "maestro".to_owned(),
//!         password: "secret".to_owned().into(),
//!     },
//! );
//! let backend = AirflowBackend::new(config)?;
//! # Ok::<(), adapter_airflow::ConfigError>(())
//! ```

mod age;
mod changes;
mod client;
mod config;
mod token;
mod triggerable;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    BackendError, BackendErrorKind, CancelRunError, Clock, CustomerId, ExecuteError,
    GetPipelineError, GetRunError, IdempotencyKey, ListRunsError, ManualRunClock, Orchestrator,
    PipelineId, PipelineRepository, PipelineSummary, RequestContext, Run, RunConf, RunId, RunPage,
    RunQuery, RunStatus, SetPausedError, Timestamp, TriggerRequest,
};
use reqwest::{Method, StatusCode};

pub use changes::{AirflowChanges, DEFAULT_POLL_INTERVAL, OVERLAP};
pub use config::{
    AirflowAuth, AirflowConfig, ConfigError, DEFAULT_CUSTOMER_TAG_PREFIX, DEFAULT_DAG_CACHE_TTL,
    DEFAULT_TIMEOUT,
};

use client::{Answer, Call, Http, segment};
use token::Tokens;
use triggerable::Triggerable;
use wire::{Dag, DagPage, DagRun, DagRunPage, Health, airflow_state, param_refusal};

/// How a trigger sent a second time ended: what the retry's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// Airflow made the run on the retry.
    Succeeded,
    /// Airflow answered 409 for the run id: the first attempt had made
    /// the run after all (or, rarely, another trigger took the id, and the
    /// next id is tried).
    Conflict,
    /// The retry failed too (5xx, no connection, or no answer in time):
    /// the client is answered 502, 503 or 504.
    Failed,
    /// Airflow answered the retry otherwise (the DAG is gone, or it
    /// refused the parameters).
    Other,
}

impl RetryOutcome {
    /// The outcome's name, for a metric's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "ok",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
            Self::Other => "other",
        }
    }
}

/// What is told how each retried trigger ended.
type RetryObserver = Arc<dyn Fn(RetryOutcome) + Send + Sync>;

/// The page size asked of Airflow. Airflow caps it at its
/// `[api] maximum_page_limit` (100 by default) and Maestro pages on by
/// what it got, so a larger cap on the Airflow side means fewer requests.
const PAGE_LIMIT: u32 = 1000;

/// How many of the newest runs that mention a mark are looked at.
const MARKED_RUNS_LIMIT: u32 = 10;

/// How many run ids a trigger tries when its ids turn out to be taken by
/// runs it did not make (another Maestro instance triggering the same
/// pipeline in the same microsecond).
const RUN_ID_ATTEMPTS: usize = 3;

/// The Airflow backend. Cheap to share behind an `Arc`: it holds one pooled
/// HTTP client, one token cache and one clock for all requests.
pub struct AirflowBackend {
    /// The HTTP side, which also holds the backend's one [`Clock`].
    http: Http,
    prefix: String,
    timeout: Duration,
    /// One run clock per pipeline so that run ids are unique and increasing
    /// per pipeline. A std mutex: it is held only to step a clock, never
    /// across an `.await`.
    clocks: Mutex<HashMap<PipelineId, ManualRunClock>>,
    /// DAGs recently read unpaused and owned by a customer, which a trigger
    /// need not read again.
    triggerable: Triggerable,
    /// Told how each retried trigger ended, for a metric.
    on_retry: Option<RetryObserver>,
}

impl std::fmt::Debug for AirflowBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AirflowBackend")
            .field("url", &self.http.base())
            .field("customer_tag_prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("clock", &self.http.clock())
            .field("triggerable", &self.triggerable)
            .finish_non_exhaustive()
    }
}

impl AirflowBackend {
    /// A backend for the Airflow the config names, on a
    /// [`runtime::TokioClock`] started now. Nothing is sent until the first
    /// call.
    ///
    /// # Errors
    /// [`ConfigError`] when the settings cannot work: a URL that is not
    /// absolute `http(s)` or carries credentials, an empty or unsendable
    /// token, an empty username, password or tag prefix, a zero timeout, or
    /// an HTTP client that cannot be built.
    pub fn new(config: AirflowConfig) -> Result<Self, ConfigError> {
        let base = config.validate()?;
        let tokens = match config.auth {
            AirflowAuth::Token(token) => {
                Tokens::fixed(&token).map_err(|_| ConfigError::InvalidToken)?
            }
            AirflowAuth::Credentials { username, password } => {
                Tokens::exchanged(username, password)
            }
        };
        let clock: Arc<dyn Clock> = Arc::new(runtime::TokioClock::start());
        let http = Http::new(base, tokens, config.timeout, clock).map_err(ConfigError::Client)?;
        Ok(Self {
            http,
            prefix: config.customer_tag_prefix,
            timeout: config.timeout,
            clocks: Mutex::new(HashMap::new()),
            triggerable: Triggerable::new(config.dag_cache_ttl),
            on_retry: None,
        })
    }

    /// The same backend reading the time from `clock` instead: for run ids,
    /// the DAG cache (`dag_cache_ttl`) and token expiry. Meant for before the
    /// first call (the service passes its own clock, tests a
    /// [`domain::ManualClock`] they move); whatever was cached under the
    /// former clock and lies in the future of the new one counts as expired.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.http.set_clock(clock);
        self
    }

    /// The same backend telling `observe` how each retried trigger ended
    /// (see [`RetryOutcome`]); the service counts them in a metric.
    #[must_use]
    pub fn with_retry_observer(
        mut self,
        observe: impl Fn(RetryOutcome) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(Arc::new(observe));
        self
    }

    /// The current instant on the backend's clock.
    fn now(&self) -> Timestamp {
        self.http.now()
    }

    /// Runs one port call under the configured timeout, so that the caller
    /// gets an answer in time however many requests the call makes.
    async fn within<T, E: From<BackendError>>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::timeout(format!(
                "{what}: Airflow did not finish within {:?}",
                self.timeout
            ))
            .into()),
        }
    }

    /// The DAG behind `id` when the caller may see it; `None` when it is
    /// missing or not the caller's.
    async fn visible_dag(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        details: bool,
    ) -> Result<Option<Dag>, BackendError> {
        let mut path = format!("/api/v2/dags/{}", segment(id.as_str()));
        if details {
            path.push_str("/details");
        }
        let start = self.triggerable.read_start();
        let answer = self
            .http
            .send(&Call::new(Method::GET, path, Some(ctx)))
            .await?;
        match answer.status {
            StatusCode::OK => {
                let dag: Dag = answer.json()?;
                let visible = dag.visible_to(&self.prefix, ctx.customer()).as_ref() == Some(id);
                self.triggerable.observe(
                    id,
                    start,
                    (visible && !dag.is_paused).then(|| ctx.customer().clone()),
                    self.now(),
                );
                if !visible {
                    tracing::debug!(
                        request_id = ctx.request_id(),
                        dag_id = %dag.dag_id,
                        "the DAG exists but is not a pipeline of the caller's customer"
                    );
                }
                Ok(visible.then_some(dag))
            }
            StatusCode::NOT_FOUND => {
                self.triggerable.forget(id);
                Ok(None)
            }
            _ => Err(answer.unexpected()),
        }
    }

    /// What `read` finds about the DAG `id`, read at the same time as the
    /// DAG itself: `None` when the DAG is not the caller's, whatever `read`
    /// found.
    async fn if_visible<T>(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        read: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<Option<T>, BackendError> {
        let (dag, found) = tokio::join!(self.visible_dag(ctx, id, false), read);
        if dag?.is_none() {
            return Ok(None);
        }
        found.map(Some)
    }

    /// Every DAG with `tag`, optionally only those whose newest run is in
    /// `last_state`, following Airflow's pages to the end.
    async fn dags_tagged(
        &self,
        ctx: &RequestContext,
        tag: &str,
        last_state: Option<&'static str>,
    ) -> Result<Vec<Dag>, BackendError> {
        let mut dags: Vec<Dag> = Vec::new();
        loop {
            let mut call = Call::new(Method::GET, "/api/v2/dags".to_owned(), Some(ctx))
                .query("tags", tag)
                .query("order_by", "dag_id")
                .query("limit", PAGE_LIMIT)
                .query("offset", dags.len());
            if let Some(state) = last_state {
                call = call.query("last_dag_run_state", state);
            }
            let answer = self.http.send(&call).await?;
            if answer.status != StatusCode::OK {
                return Err(answer.unexpected());
            }
            let page: DagPage = answer.json()?;
            let received = page.dags.len();
            dags.extend(page.dags);
            if received == 0 || dags.len() as u64 >= page.total_entries {
                return Ok(dags);
            }
        }
    }

    /// One DAG run of the pipeline; `None` when Airflow has no such run (or
    /// no such DAG).
    ///
    /// The run ids `.` and `..` are never asked for: in a path, URL
    /// normalisation would turn them into another address (the run list, or
    /// the DAG itself), escaped or not. No run has such an id, so the
    /// answer is `None` without a request.
    async fn dag_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Option<DagRun>, BackendError> {
        if run_id.is_dot_segment() {
            return Ok(None);
        }
        let path = format!(
            "/api/v2/dags/{}/dagRuns/{}",
            segment(id.as_str()),
            segment(run_id.as_str())
        );
        let answer = self
            .http
            .send(&Call::new(Method::GET, path, Some(ctx)))
            .await?;
        let Some(run) = answer.found::<DagRun>()? else {
            return Ok(None);
        };
        if run.dag_run_id != run_id.as_str() || run.dag_id != id.as_str() {
            return Err(BackendError::upstream(format!(
                "GET DAG run {run_id} of {id}: Airflow answered with another run"
            )));
        }
        Ok(Some(run))
    }

    /// One page of the pipeline's runs, newest (most recently created)
    /// first, following Airflow's pages until the page is full; `None` when
    /// Airflow has no such DAG.
    async fn run_page(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<Option<RunPage>, BackendError> {
        let limit = query.limit() as usize;
        let path = format!("/api/v2/dags/{}/dagRuns", segment(id.as_str()));
        let mut runs: Vec<Run> = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = query.offset();
        let mut total = None;
        while runs.len() < limit {
            let mut call = Call::new(Method::GET, path.clone(), Some(ctx))
                .query("limit", limit - runs.len())
                .query("offset", offset)
                .query("order_by", "-id");
            if let Some(status) = query.status() {
                call = call.query("state", airflow_state(status));
            }
            let answer = self.http.send(&call).await?;
            let Some(page) = answer.found::<DagRunPage>()? else {
                return Ok(None);
            };
            let received = page.dag_runs.len();
            offset += received as u64;
            total = page.total_entries.or(total);
            for run in page.dag_runs {
                // A run created between two pages shifts the later page by
                // one; skip what the earlier page already had.
                if seen.insert(run.dag_run_id.clone()) {
                    runs.push(run.into_run(id.clone())?);
                }
            }
            if received == 0 || total.is_some_and(|total| offset >= total) {
                break;
            }
        }
        Ok(Some(RunPage::new(runs, total.unwrap_or(offset))))
    }

    /// The next run id of the pipeline.
    fn next_run_id(&self, id: &PipelineId) -> RunId {
        let mut clocks = self
            .clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clocks.entry(id.clone()).or_default().next(self.now()).1
    }

    /// Sends a trigger, and sends it once more, with the same run id, when
    /// the first attempt failed in a way that may be passing: Airflow
    /// answered 5xx (a proxy's 502, 503 or 504, or Airflow's own 500 when
    /// its database was busy), the connection failed, or no answer came
    /// within the first attempt's share of the time left. Never a third
    /// time.
    ///
    /// The first attempt may have made the run all the same: the retry then
    /// gets a 409 for the run id, and the caller reads that run and
    /// recognizes it as its own by its mark. The first attempt gets half of
    /// the time left until `deadline`, the retry the rest, so that both fit
    /// in the call's one timeout.
    async fn send_trigger(
        &self,
        call: &Call<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, BackendError> {
        let share = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
        let first = tokio::time::timeout(share, self.http.send(call))
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::timeout(format!(
                    "{}: no answer within {share:?}, the first attempt's share of the timeout",
                    call.what()
                )))
            });
        let failure = match first {
            Ok(answer) if !answer.status.is_server_error() => return Ok(answer),
            Ok(answer) => answer.unexpected(),
            Err(err)
                if matches!(
                    err.kind(),
                    BackendErrorKind::Unavailable | BackendErrorKind::Timeout
                ) =>
            {
                err
            }
            Err(err) => return Err(err),
        };
        tracing::warn!(
            request_id = call.request_id(),
            error = %failure,
            "the trigger failed in a way that may pass; sending it again with the same run id"
        );
        // Bounded by the deadline here rather than by the caller's timeout
        // alone, so that a retry that runs out of time is counted too.
        let retried = tokio::time::timeout_at(deadline, self.http.send(call))
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::timeout(format!(
                    "{}: the retry had no answer within the timeout",
                    call.what()
                )))
            });
        let outcome = match &retried {
            Ok(answer) if answer.status.is_success() => RetryOutcome::Succeeded,
            Ok(answer) if answer.status == StatusCode::CONFLICT => RetryOutcome::Conflict,
            Ok(answer) if answer.status.is_server_error() => RetryOutcome::Failed,
            Ok(_) => RetryOutcome::Other,
            Err(_) => RetryOutcome::Failed,
        };
        if let Some(observe) = &self.on_retry {
            observe(outcome);
        }
        retried
    }

    /// The newest run of the pipeline marked with `trigger_id` and made at
    /// `since` or later, if any: the run of an earlier attempt of the same
    /// idempotent trigger.
    async fn marked_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        trigger_id: &str,
        since: Timestamp,
    ) -> Result<Option<DagRun>, BackendError> {
        let call = Call::new(
            Method::GET,
            format!("/api/v2/dags/{}/dagRuns", segment(id.as_str())),
            Some(ctx),
        )
        .query("conf_contains", trigger_id)
        .query("order_by", "-id")
        // A few, not one: a run whose conf merely quotes the mark must not
        // hide the run that carries it.
        .query("limit", MARKED_RUNS_LIMIT);
        let answer = self.http.send(&call).await?;
        let Some(page) = answer.found::<DagRunPage>()? else {
            return Ok(None);
        };
        // `conf_contains` matches the text anywhere in the conf: only our
        // own mark counts.
        Ok(page.dag_runs.into_iter().find(|run| {
            run.dag_id == id.as_str()
                && run.trigger_id() == Some(trigger_id)
                && run.run_after >= since
        }))
    }

    async fn trigger_visible(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Run, ExecuteError> {
        let id = request.pipeline_id();
        // Marks the runs this trigger makes, so that a 409 can tell our own
        // run (an earlier attempt that failed in passing) from another
        // trigger's run that happens to have the same id. With an
        // idempotency key, every trigger with the key has the same mark, so
        // that a retry can find the run of an attempt that failed.
        let trigger_id = match request.idempotency_key() {
            Some(key) => keyed_trigger_id(ctx.customer(), key),
            None => uuid::Uuid::new_v4().to_string(),
        };
        if let Some(since) = request.retry_since() {
            // An earlier attempt failed, and may have made the run: look
            // for it while the DAG is read. The run is the answer even if
            // the DAG was paused since, as it was the earlier attempt's.
            let (dag, earlier) = tokio::join!(
                self.visible_dag(ctx, id, false),
                self.marked_run(ctx, id, &trigger_id, since)
            );
            let dag = dag?.ok_or_else(|| ExecuteError::NotFound(id.clone()))?;
            if let Some(run) = earlier? {
                tracing::info!(
                    request_id = ctx.request_id(),
                    run_id = %run.dag_run_id,
                    "a failed attempt with this idempotency key had made the run; answering with it"
                );
                return Ok(run.into_run(id.clone())?);
            }
            if dag.is_paused {
                return Err(ExecuteError::Paused(id.clone()));
            }
        } else if !self.triggerable.admits(id, ctx.customer(), self.now()) {
            // A paused DAG is refused before anything is sent, from a read
            // of the DAG made now or, for one seen triggerable moments ago,
            // that read (see `triggerable`).
            let dag = self
                .visible_dag(ctx, id, false)
                .await?
                .ok_or_else(|| ExecuteError::NotFound(id.clone()))?;
            if dag.is_paused {
                return Err(ExecuteError::Paused(id.clone()));
            }
        }
        // The client's parameters, with Maestro's audit block beside them
        // under the key `RunConf::parse` keeps clients from using.
        let mut conf = request.conf().as_map().clone();
        conf.insert(
            RunConf::RESERVED_KEY.to_owned(),
            serde_json::json!({
                "customer_id": ctx.customer().as_str(),
                "sub": ctx.caller().subject(),
                "request_id": ctx.request_id(),
                "trigger_id": trigger_id,
            }),
        );
        let path = format!("/api/v2/dags/{}/dagRuns", segment(id.as_str()));
        for _ in 0..RUN_ID_ATTEMPTS {
            let run_id = self.next_run_id(id);
            let call = Call::new(Method::POST, path.clone(), Some(ctx)).json(serde_json::json!({
                "dag_run_id": run_id.as_str(),
                "logical_date": null,
                "conf": conf,
            }));
            let answer = self.send_trigger(&call, deadline).await?;
            match answer.status {
                StatusCode::OK | StatusCode::CREATED => {
                    let run: DagRun = answer.json()?;
                    if run.dag_run_id != run_id.as_str() {
                        return Err(BackendError::upstream(format!(
                            "POST DAG run {run_id} of {id}: Airflow answered with another run"
                        ))
                        .into());
                    }
                    return Ok(run.into_run(id.clone())?);
                }
                StatusCode::NOT_FOUND => {
                    self.triggerable.forget(id);
                    return Err(ExecuteError::NotFound(id.clone()));
                }
                StatusCode::BAD_REQUEST => {
                    // The DAG's `params` refusing the conf is the caller's to
                    // fix; any other 400 (import errors, manual runs not
                    // allowed) is not.
                    let Some(refusal) = answer.detail().as_deref().and_then(param_refusal) else {
                        return Err(answer.unexpected().into());
                    };
                    tracing::info!(
                        request_id = ctx.request_id(),
                        parameter = refusal.parameter.as_deref(),
                        "Airflow refused the run parameters"
                    );
                    return Err(ExecuteError::ConfRefused {
                        pipeline_id: id.clone(),
                        parameter: refusal.parameter,
                        reason: refusal.reason,
                    });
                }
                StatusCode::CONFLICT => match self.dag_run(ctx, id, &run_id).await? {
                    Some(run) if run.trigger_id() == Some(trigger_id.as_str()) => {
                        return Ok(run.into_run(id.clone())?);
                    }
                    _ => tracing::warn!(
                        request_id = ctx.request_id(),
                        %run_id,
                        "the run id is taken by another trigger; taking the next one"
                    ),
                },
                _ => return Err(answer.unexpected().into()),
            }
        }
        Err(BackendError::upstream(format!(
            "POST DAG run of {id}: {RUN_ID_ATTEMPTS} run ids in a row were taken"
        ))
        .into())
    }

    async fn set_paused_visible(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let dag = self
            .visible_dag(ctx, id, false)
            .await?
            .ok_or_else(|| SetPausedError::NotFound(id.clone()))?;
        if dag.is_paused == paused {
            return Err(SetPausedError::unchanged(id.clone(), paused));
        }
        // From the moment a pause is sent, this backend's triggers read the
        // DAG again, whatever the answer turns out to be.
        if paused {
            self.triggerable.pausing(id);
        }
        let start = self.triggerable.read_start();
        let call = Call::new(
            Method::PATCH,
            format!("/api/v2/dags/{}", segment(id.as_str())),
            Some(ctx),
        )
        .query("update_mask", "is_paused")
        .json(serde_json::json!({ "is_paused": paused }));
        let answer = self.http.send(&call).await?;
        match answer.status {
            StatusCode::OK => {
                let dag: Dag = answer.json()?;
                if dag.is_paused != paused {
                    return Err(BackendError::upstream(format!(
                        "{}: Airflow did not change is_paused",
                        call.what()
                    ))
                    .into());
                }
                if paused {
                    // Again now that it took: a read that raced the pause
                    // may have found the DAG still unpaused.
                    self.triggerable.pausing(id);
                } else {
                    self.triggerable
                        .observe(id, start, Some(ctx.customer().clone()), self.now());
                }
                Ok(())
            }
            StatusCode::NOT_FOUND => Err(SetPausedError::NotFound(id.clone())),
            _ => Err(answer.unexpected().into()),
        }
    }
}

impl AirflowBackend {
    /// Reads the run (and the DAG, for visibility, at the same time), and
    /// fails it with the cancel note when it has not finished.
    async fn cancel_visible(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        let (dag, run) = tokio::join!(
            self.visible_dag(ctx, id, false),
            self.dag_run(ctx, id, run_id)
        );
        if dag?.is_none() {
            return Err(CancelRunError::PipelineNotFound(id.clone()));
        }
        let run = run?
            .ok_or_else(|| CancelRunError::run_not_found(id, run_id))?
            .into_run(id.clone())?;
        if run.status.is_finished() {
            return Err(already_finished(id, run_id, run.status));
        }
        // One PATCH sets both: Airflow 3.3 writes the note, then fails the
        // run (its running tasks failed, the rest skipped). It would fail a
        // run that has finished too, so the read above is the check; the
        // window is one round trip (see docs/backends/airflow.md).
        let call = Call::new(
            Method::PATCH,
            format!(
                "/api/v2/dags/{}/dagRuns/{}",
                segment(id.as_str()),
                segment(run_id.as_str())
            ),
            Some(ctx),
        )
        .json(serde_json::json!({
            "state": "failed",
            "note": Run::CANCELLED_TRACE,
        }));
        let answer = self.http.send(&call).await?;
        match answer.status {
            StatusCode::OK => {
                let run: DagRun = answer.json()?;
                if run.dag_run_id != run_id.as_str() || run.dag_id != id.as_str() {
                    return Err(BackendError::upstream(format!(
                        "{}: Airflow answered with another run",
                        call.what()
                    ))
                    .into());
                }
                Ok(run.into_run(id.clone())?)
            }
            StatusCode::NOT_FOUND => Err(CancelRunError::run_not_found(id, run_id)),
            // Not what Airflow 3.3 answers for a run that finished in the
            // meantime, but what a later Airflow (or a proxy's rule) might:
            // read the run again and, when it has finished, say so.
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT => {
                match self.dag_run(ctx, id, run_id).await? {
                    None => Err(CancelRunError::run_not_found(id, run_id)),
                    Some(run) => {
                        let run = run.into_run(id.clone())?;
                        if run.status.is_finished() {
                            Err(already_finished(id, run_id, run.status))
                        } else {
                            Err(answer.unexpected().into())
                        }
                    }
                }
            }
            _ => Err(answer.unexpected().into()),
        }
    }
}

fn already_finished(id: &PipelineId, run_id: &RunId, status: RunStatus) -> CancelRunError {
    CancelRunError::AlreadyFinished {
        pipeline_id: id.clone(),
        run_id: run_id.clone(),
        status,
    }
}

/// The namespace of the marks of idempotent triggers (a UUID v5
/// namespace: the mark is a UUID v5 of the customer and the key in it).
const TRIGGER_NAMESPACE: uuid::Uuid = uuid::uuid!("5d0c7a3e-8f4b-4c2a-9e61-3b7f0d9a2c15");

/// The mark of every trigger of `customer` with `key`: stable across
/// attempts and instances, distinct per customer and key, and telling
/// nothing of the key to whoever reads the run in Airflow.
fn keyed_trigger_id(customer: &CustomerId, key: &IdempotencyKey) -> String {
    // The customer's length first, so that no customer and key can spell
    // another pair.
    let name = format!("{}:{}:{}", customer.as_str().len(), customer, key);
    uuid::Uuid::new_v5(&TRIGGER_NAMESPACE, name.as_bytes()).to_string()
}

#[async_trait]
impl PipelineRepository for AirflowBackend {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<domain::Pipeline, GetPipelineError> {
        self.within("get pipeline", async {
            let dag = self
                .visible_dag(ctx, id, true)
                .await?
                .ok_or_else(|| GetPipelineError::NotFound(id.clone()))?;
            Ok(dag.into_pipeline(id.clone(), ctx.customer().clone()))
        })
        .await
    }

    /// Lists with Airflow's tag filter, page by page. The newest run's
    /// status comes in four more listings, filtered with Airflow's
    /// `last_dag_run_state` (the state of each DAG's most recently created
    /// run), made at the same time: a handful of requests per page of DAGs,
    /// never one per DAG.
    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        self.within("list pipelines", async {
            let tag = format!("{}{}", self.prefix, ctx.customer());
            let (dags, queued, running, success, failed) = tokio::try_join!(
                self.dags_tagged(ctx, &tag, None),
                self.dags_tagged(ctx, &tag, Some("queued")),
                self.dags_tagged(ctx, &tag, Some("running")),
                self.dags_tagged(ctx, &tag, Some("success")),
                self.dags_tagged(ctx, &tag, Some("failed")),
            )?;
            // A run that moves on while the listings are made may show up
            // under two states; the later state in a run's life wins.
            let mut last_status = HashMap::new();
            for (status, listed) in [
                (RunStatus::Queued, queued),
                (RunStatus::Running, running),
                (RunStatus::Success, success),
                (RunStatus::Failed, failed),
            ] {
                for dag in listed {
                    last_status.insert(dag.dag_id, status);
                }
            }
            let mut seen = HashSet::new();
            Ok(dags
                .into_iter()
                .filter_map(|dag| {
                    let id = dag.visible_to(&self.prefix, ctx.customer())?;
                    if !seen.insert(id.clone()) {
                        return None;
                    }
                    let last_status = last_status.get(&dag.dag_id).copied();
                    Some(PipelineSummary::new(
                        dag.into_pipeline(id, ctx.customer().clone()),
                        last_status,
                    ))
                })
                .collect())
        })
        .await
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let what = if paused {
            "pause pipeline"
        } else {
            "unpause pipeline"
        };
        self.within(what, self.set_paused_visible(ctx, id, paused))
            .await
    }
}

#[async_trait]
impl Orchestrator for AirflowBackend {
    /// The client's parameters are the DAG run's `conf`, with Maestro's
    /// audit block beside them under `maestro`; Airflow's refusal of them
    /// by the DAG's declared `params` (a 400 `Invalid input for param
    /// <name>: ...`) is [`ExecuteError::ConfRefused`] naming the parameter,
    /// in Maestro's words.
    ///
    /// A post that fails in passing (a 5xx, no connection, no answer within
    /// half of the time left) is sent once more with the same run id, and a
    /// 409 then answers with the run the first attempt made; each such
    /// retry is told to [`AirflowBackend::with_retry_observer`]'s observer.
    ///
    /// With an idempotency key, the run's `conf` carries a mark derived
    /// from the customer and the key, the same for every attempt; a retry
    /// after a failed attempt ([`TriggerRequest::retry_since`]) first looks
    /// for a run with that mark made since then (Airflow's `conf_contains`)
    /// and answers with it when it exists.
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.within("trigger", self.trigger_visible(ctx, request, deadline))
            .await
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        self.within("list runs", async {
            let page = self.if_visible(ctx, id, self.run_page(ctx, id, query));
            page.await?
                .flatten()
                .ok_or_else(|| ListRunsError::NotFound(id.clone()))
        })
        .await
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        self.within("get run", async {
            // A run id `.` or `..` only reads the DAG (see `dag_run`).
            let run = self.if_visible(ctx, id, self.dag_run(ctx, id, run_id));
            let run = run
                .await?
                .ok_or_else(|| GetRunError::PipelineNotFound(id.clone()))?
                .ok_or_else(|| GetRunError::run_not_found(id, run_id))?;
            Ok(run.into_run(id.clone())?)
        })
        .await
    }

    /// Reads the run, then PATCHes the DAG run to `failed` with the note
    /// [`Run::CANCELLED_TRACE`], which reads back as the run's `trace`.
    /// Airflow fails the run's running tasks (their processes are stopped)
    /// and skips the rest; a queued run never starts. A run that has
    /// finished is not patched.
    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        self.within("cancel run", self.cancel_visible(ctx, id, run_id))
            .await
    }

    /// Asks Airflow's `/api/v2/monitor/health`, which needs no token: ready
    /// when it answers and reports its metadata database healthy.
    async fn health(&self) -> Result<(), BackendError> {
        self.within("health", async {
            let call = Call::new(Method::GET, "/api/v2/monitor/health".to_owned(), None);
            let answer = self.http.send_anonymous(&call).await?;
            if answer.status != StatusCode::OK {
                return Err(answer.unexpected());
            }
            let health: Health = answer.json()?;
            match health.metadatabase.status.as_deref() {
                Some("healthy") => Ok(()),
                _ => Err(BackendError::upstream(
                    "GET /api/v2/monitor/health: Airflow reports its metadata database unhealthy",
                )),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_at_construction() {
        let config = AirflowConfig::new(
            "http://127.0.0.1:8080",
            AirflowAuth::Token("abc\ndef".to_owned().into()),
        );
        assert!(matches!(
            AirflowBackend::new(config),
            Err(ConfigError::InvalidToken)
        ));
    }

    #[test]
    fn debug_output_names_the_airflow_but_no_secret() {
        let config = AirflowConfig::new(
            "http://127.0.0.1:8080/",
            AirflowAuth::Token("s3cr3t-token".to_owned().into()),
        );
        let debug = format!("{:?}", AirflowBackend::new(config).unwrap());
        assert!(debug.contains("http://127.0.0.1:8080"));
        assert!(!debug.contains("s3cr3t-token"));
    }

    #[test]
    fn run_ids_of_one_pipeline_increase_even_within_a_microsecond() {
        let backend = AirflowBackend::new(AirflowConfig::new(
            "http://127.0.0.1:8080",
            AirflowAuth::Token("t".to_owned().into()),
        ))
        .unwrap();
        let pipeline = PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap();
        let ids: Vec<RunId> = (0..100).map(|_| backend.next_run_id(&pipeline)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn run_ids_are_read_from_the_clock_the_backend_is_given() {
        let clock = domain::ManualClock::at_epoch_seconds(1_795_942_800);
        let backend = AirflowBackend::new(AirflowConfig::new(
            "http://127.0.0.1:8080",
            AirflowAuth::Token("t".to_owned().into()),
        ))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
        let pipeline = PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap();

        assert_eq!(
            backend.next_run_id(&pipeline).as_str(),
            "manual__2026-11-29T09:00:00.000000+00:00"
        );
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(
            backend.next_run_id(&pipeline).as_str(),
            "manual__2026-11-29T09:00:01.500000+00:00"
        );
    }
}
