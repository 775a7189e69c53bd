//! A fake Airflow 3 on wiremock, answering like the real one (the shapes
//! come from Airflow 3.3's OpenAPI document and its answers), and helpers
//! to call every port of the backend in one uniform way.
//!
//! Every backend here reads the time from a [`ManualClock`] that stands at
//! [`START`] until its test moves it, so that no test depends on today's
//! date or waits for time to pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use adapter_airflow::{AirflowAuth, AirflowBackend, AirflowConfig};
use domain::{
    BackendErrorKind, Caller, CancelRunError, Clock, CustomerId, ExecuteError, GetPipelineError,
    GetRunError, ListRunsError, ManualClock, Orchestrator, PipelineId, PipelineRepository,
    RequestContext, Run, RunId, RunQuery, SetPausedError, TriggerRequest,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Acme's pipeline.
pub(crate) const ACME_DAG: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
/// Globex's pipeline.
pub(crate) const GLOBEX_DAG: &str = "2c44be3a_44e4_4948_8ffc_94d93d9c0a1e";
/// A DAG with no customer tag.
pub(crate) const UNTAGGED_DAG: &str = "3d55cf4b_55f5_4a59_9aad_a5ea4eab1b2f";
/// A run of Acme's pipeline.
pub(crate) const RUN_ID: &str = "manual__2024-12-18T10:30:00.000000+00:00";
/// The same run id as it travels in a path.
pub(crate) const RUN_ID_IN_PATH: &str = "manual__2024-12-18T10%3A30%3A00.000000%2B00%3A00";
/// A running run of Acme's pipeline, which a cancel fails.
pub(crate) const RUNNING_RUN_ID: &str = "manual__2024-12-18T10:32:00.000000+00:00";
/// The fixed token most tests use.
pub(crate) const FIXED_TOKEN: &str = "fixed-token-3f9a";
/// The password the credential tests use.
pub(crate) const PASSWORD: &str = "pa55-w0rd-7c1e";

pub(crate) fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()).with_subject("alice"))
        .with_request_id("req-42")
}

pub(crate) fn id(raw: &str) -> PipelineId {
    PipelineId::parse(raw).unwrap()
}

pub(crate) fn run_id() -> RunId {
    RunId::parse(RUN_ID).unwrap()
}

pub(crate) fn running_run_id() -> RunId {
    RunId::parse(RUNNING_RUN_ID).unwrap()
}

/// A run id as it travels in a path.
pub(crate) fn in_path(run_id: &str) -> String {
    run_id.replace(':', "%3A").replace('+', "%2B")
}

/// Where the tests' clocks start: 2026-11-29T09:00:00Z, a few minutes
/// after the fake's runs were made.
pub(crate) const START: i64 = 1_795_942_800;

/// A clock standing at [`START`] until the test moves it.
pub(crate) fn clock() -> ManualClock {
    ManualClock::at_epoch_seconds(START)
}

/// The backend for `config`, reading the time from `clock`.
pub(crate) fn on_clock(config: AirflowConfig, clock: &ManualClock) -> AirflowBackend {
    AirflowBackend::new(config)
        .unwrap()
        .with_clock(Arc::new(clock.clone()))
}

/// A backend with a fixed token.
pub(crate) fn backend(uri: &str) -> AirflowBackend {
    backend_with(
        uri,
        AirflowAuth::Token(FIXED_TOKEN.into()),
        Duration::from_secs(5),
    )
}

/// A backend with a fixed token reading the time from `clock`.
pub(crate) fn backend_on(uri: &str, clock: &ManualClock) -> AirflowBackend {
    on_clock(
        AirflowConfig::new(uri, AirflowAuth::Token(FIXED_TOKEN.into())),
        clock,
    )
}

/// A backend that exchanges `admin` and [`PASSWORD`] for tokens.
pub(crate) fn backend_with_credentials(uri: &str) -> AirflowBackend {
    backend_with(uri, credentials(), Duration::from_secs(5))
}

pub(crate) fn credentials() -> AirflowAuth {
    AirflowAuth::Credentials {
        username: "admin".to_owned(),
        password: PASSWORD.into(),
    }
}

pub(crate) fn backend_with(uri: &str, auth: AirflowAuth, timeout: Duration) -> AirflowBackend {
    let mut config = AirflowConfig::new(uri, auth);
    config.timeout = timeout;
    on_clock(config, &clock())
}

/// A backend with a fixed token that trusts a DAG read unpaused for `ttl`
/// on `clock`.
pub(crate) fn backend_with_dag_cache(
    uri: &str,
    ttl: Duration,
    clock: &ManualClock,
) -> AirflowBackend {
    let mut config = AirflowConfig::new(uri, AirflowAuth::Token(FIXED_TOKEN.into()));
    config.dag_cache_ttl = ttl;
    on_clock(config, clock)
}

/// A trigger of `pipeline` with nothing else asked.
pub(crate) fn trigger_of(pipeline: &str) -> TriggerRequest {
    TriggerRequest::new(id(pipeline))
}

/// A DAG as `GET /api/v2/dags/{dag_id}/details` answers it.
pub(crate) fn dag(dag_id: &str, tags: &[&str], paused: bool) -> Value {
    json!({
        "dag_id": dag_id,
        "dag_display_name": format!("DAG {dag_id}"),
        "is_paused": paused,
        "is_stale": false,
        "last_parsed_time": "2026-11-29T08:56:31.828257Z",
        "last_parse_duration": 0.42,
        "last_expired": null,
        "bundle_name": "dags-folder",
        "bundle_version": null,
        "relative_fileloc": "pipelines.py",
        "fileloc": "/opt/airflow/dags/pipelines.py",
        "description": "Loads the orders",
        "timetable_summary": "0 3 * * *",
        "timetable_description": "At 03:00",
        "timetable_partitioned": false,
        "timetable_periodic": true,
        "tags": tags.iter().map(|name| json!({"name": name, "dag_id": dag_id, "dag_display_name": dag_id})).collect::<Vec<_>>(),
        "max_active_tasks": 16,
        "max_active_runs": 1,
        "max_consecutive_failed_dag_runs": 0,
        "has_task_concurrency_limits": false,
        "has_import_errors": false,
        "next_dagrun_logical_date": null,
        "next_dagrun_data_interval_start": null,
        "next_dagrun_data_interval_end": null,
        "next_dagrun_run_after": null,
        "allowed_run_types": null,
        "owners": ["airflow"],
        "is_backfillable": true,
        "file_token": "eyJidW5kbGVfbmFtZSI6ImRhZ3MtZm9sZGVyIn0",
        "catchup": false,
        "start_date": "2024-01-01T00:00:00Z",
        "timezone": "UTC",
        "latest_dag_version": {
            "id": "01a22685-2e4c-7a7c-9500-c1ca1f0bcf64",
            "version_number": 2,
            "dag_id": dag_id,
            "bundle_name": "dags-folder",
            "bundle_version": null,
            "created_at": "2026-11-29T08:56:32.071165Z",
            "bundle_url": null
        }
    })
}

/// Acme's DAG, unpaused.
pub(crate) fn acme_dag() -> Value {
    dag(ACME_DAG, &["customer:acme", "team:data"], false)
}

/// A DAG run as Airflow answers it.
pub(crate) fn dag_run(dag_id: &str, run_id: &str, state: &str, conf: Value) -> Value {
    let finished = matches!(state, "success" | "failed");
    json!({
        "dag_run_id": run_id,
        "dag_id": dag_id,
        "logical_date": null,
        "queued_at": "2026-11-29T08:57:18.579337Z",
        "start_date": if state == "queued" { Value::Null } else { json!("2026-11-29T08:57:30.000000Z") },
        "end_date": if finished { json!("2026-11-29T08:57:33.000000Z") } else { Value::Null },
        "duration": null,
        "data_interval_start": null,
        "data_interval_end": null,
        "run_after": "2026-11-29T08:57:18.539852Z",
        "last_scheduling_decision": null,
        "run_type": "manual",
        "state": state,
        "triggered_by": "rest_api",
        "triggering_user_name": "admin",
        "conf": conf,
        "note": null,
        "dag_versions": [],
        "bundle_version": null,
        "dag_display_name": dag_id,
        "partition_key": null,
        "partition_date": null
    })
}

/// The mark in `conf.maestro.trigger_id` of every trigger of `customer`
/// with the idempotency key `key`, computed here as the backend documents
/// it: a UUID v5 of `<customer length>:<customer>:<key>` in Maestro's
/// namespace.
pub(crate) fn keyed_mark(customer: &str, key: &str) -> String {
    let namespace = uuid::uuid!("5d0c7a3e-8f4b-4c2a-9e61-3b7f0d9a2c15");
    let name = format!("{}:{customer}:{key}", customer.len());
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

/// A query parameter of a recorded request.
pub(crate) fn query(request: &Request, name: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn number(request: &Request, name: &str, default: usize) -> usize {
    query(request, name).map_or(default, |value| value.parse().unwrap())
}

/// A fake Airflow.
pub(crate) struct Fake {
    pub(crate) server: MockServer,
}

impl Fake {
    pub(crate) async fn start() -> Self {
        Self {
            server: MockServer::start().await,
        }
    }

    pub(crate) fn uri(&self) -> String {
        self.server.uri()
    }

    /// A fake that answers every call of every port for Acme's unpaused
    /// DAG.
    pub(crate) async fn happy() -> Self {
        let fake = Self::start().await;
        fake.mount_dag(acme_dag()).await;
        fake.mount_dag(dag(GLOBEX_DAG, &["customer:globex"], false))
            .await;
        fake.mount_dag(dag(UNTAGGED_DAG, &[], false)).await;
        fake.mount_dag_list(vec![
            (acme_dag(), Some("success")),
            (dag(GLOBEX_DAG, &["customer:globex"], false), None),
            (dag(UNTAGGED_DAG, &[], false), Some("failed")),
        ])
        .await;
        fake.mount_runs(
            ACME_DAG,
            vec![
                dag_run(ACME_DAG, RUNNING_RUN_ID, "running", json!({})),
                dag_run(
                    ACME_DAG,
                    "manual__2024-12-18T10:31:00.000000+00:00",
                    "failed",
                    json!({}),
                ),
                dag_run(ACME_DAG, RUN_ID, "success", json!({})),
            ],
        )
        .await;
        fake.mount_run(ACME_DAG, dag_run(ACME_DAG, RUN_ID, "success", json!({})))
            .await;
        fake.mount_run(
            ACME_DAG,
            dag_run(ACME_DAG, RUNNING_RUN_ID, "running", json!({})),
        )
        .await;
        fake.mount_run_patch_echo(ACME_DAG, RUNNING_RUN_ID, "running")
            .await;
        fake.mount_trigger_echo(ACME_DAG).await;
        fake.mount_patch_echo(acme_dag()).await;
        fake.mount_health("healthy").await;
        fake
    }

    /// `GET /api/v2/dags/{dag_id}` and its `/details`.
    pub(crate) async fn mount_dag(&self, dag: Value) {
        let dag_id = dag["dag_id"].as_str().unwrap().to_owned();
        for suffix in ["", "/details"] {
            Mock::given(method("GET"))
                .and(path(format!("/api/v2/dags/{dag_id}{suffix}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(dag.clone()))
                .mount(&self.server)
                .await;
        }
    }

    /// `GET /api/v2/dags`, paged like Airflow (at most 100 a page), with
    /// `last_dag_run_state` filtering on the state paired with each DAG.
    pub(crate) async fn mount_dag_list(&self, dags: Vec<(Value, Option<&'static str>)>) {
        Mock::given(method("GET"))
            .and(path("/api/v2/dags"))
            .respond_with(move |request: &Request| {
                let state = query(request, "last_dag_run_state");
                let matching: Vec<&Value> = dags
                    .iter()
                    .filter(|(_, last)| state.is_none() || state.as_deref() == *last)
                    .map(|(dag, _)| dag)
                    .collect();
                let offset = number(request, "offset", 0);
                let limit = number(request, "limit", 50).min(100);
                let page: Vec<&Value> = matching.iter().skip(offset).take(limit).copied().collect();
                ResponseTemplate::new(200)
                    .set_body_json(json!({"dags": page, "total_entries": matching.len()}))
            })
            .mount(&self.server)
            .await;
    }

    /// `GET /api/v2/dags/{dag_id}/dagRuns`, paged like Airflow (at most 100
    /// a page) over `runs` (newest first), filtering on `state`.
    pub(crate) async fn mount_runs(&self, dag_id: &str, runs: Vec<Value>) {
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/dags/{dag_id}/dagRuns")))
            .respond_with(move |request: &Request| {
                let states: Vec<String> = request
                    .url
                    .query_pairs()
                    .filter(|(key, _)| key == "state")
                    .map(|(_, value)| value.into_owned())
                    .collect();
                let matching: Vec<&Value> = runs
                    .iter()
                    .filter(|run| {
                        states.is_empty()
                            || states.iter().any(|state| run["state"] == state.as_str())
                    })
                    .collect();
                let offset = number(request, "offset", 0);
                let limit = number(request, "limit", 50).min(100);
                let page: Vec<&Value> = matching.iter().skip(offset).take(limit).copied().collect();
                ResponseTemplate::new(200).set_body_json(json!({
                    "dag_runs": page,
                    "total_entries": matching.len(),
                    "total_entries_limit": null,
                    "next_cursor": null,
                    "previous_cursor": null
                }))
            })
            .mount(&self.server)
            .await;
    }

    /// `GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}` for one run.
    pub(crate) async fn mount_run(&self, dag_id: &str, run: Value) {
        let encoded = in_path(run["dag_run_id"].as_str().unwrap());
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/dags/{dag_id}/dagRuns/{encoded}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(run))
            .mount(&self.server)
            .await;
    }

    /// `PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}` of a run in `state`,
    /// answering the run with the posted state and note, as Airflow does.
    pub(crate) async fn mount_run_patch_echo(&self, dag_id: &str, run_id: &str, state: &str) {
        let run = dag_run(dag_id, run_id, state, json!({}));
        Mock::given(method("PATCH"))
            .and(path(format!(
                "/api/v2/dags/{dag_id}/dagRuns/{}",
                in_path(run_id)
            )))
            .respond_with(move |request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let mut run = run.clone();
                run["state"] = body["state"].clone();
                run["note"] = body["note"].clone();
                run["end_date"] = json!("2026-11-29T08:58:00.000000Z");
                ResponseTemplate::new(200).set_body_json(run)
            })
            .mount(&self.server)
            .await;
    }

    /// `POST /api/v2/dags/{dag_id}/dagRuns`, creating a queued run with the
    /// posted id and conf.
    pub(crate) async fn mount_trigger_echo(&self, dag_id: &str) {
        let dag_id = dag_id.to_owned();
        Mock::given(method("POST"))
            .and(path(format!("/api/v2/dags/{dag_id}/dagRuns")))
            .respond_with(move |request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                ResponseTemplate::new(200).set_body_json(dag_run(
                    &dag_id,
                    body["dag_run_id"].as_str().unwrap(),
                    "queued",
                    body["conf"].clone(),
                ))
            })
            .mount(&self.server)
            .await;
    }

    /// `GET /api/v2/dags/{dag_id}` (and `/details`) and `PATCH` of it over
    /// one DAG that both share, like Airflow's database: a PATCH changes
    /// what the next GET answers. The test changes it through the handle,
    /// as someone using Airflow directly would.
    pub(crate) async fn mount_live_dag(&self, dag: Value) -> Arc<std::sync::Mutex<Value>> {
        let dag_id = dag["dag_id"].as_str().unwrap().to_owned();
        let live = Arc::new(std::sync::Mutex::new(dag));
        for suffix in ["", "/details"] {
            let read = Arc::clone(&live);
            Mock::given(method("GET"))
                .and(path(format!("/api/v2/dags/{dag_id}{suffix}")))
                .respond_with(move |_: &Request| {
                    ResponseTemplate::new(200).set_body_json(read.lock().unwrap().clone())
                })
                .mount(&self.server)
                .await;
        }
        let write = Arc::clone(&live);
        Mock::given(method("PATCH"))
            .and(path(format!("/api/v2/dags/{dag_id}")))
            .respond_with(move |request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let mut dag = write.lock().unwrap();
                dag["is_paused"] = body["is_paused"].clone();
                ResponseTemplate::new(200).set_body_json(dag.clone())
            })
            .mount(&self.server)
            .await;
        live
    }

    /// `PATCH /api/v2/dags/{dag_id}`, answering the DAG with the posted
    /// `is_paused`.
    pub(crate) async fn mount_patch_echo(&self, dag: Value) {
        let dag_id = dag["dag_id"].as_str().unwrap().to_owned();
        Mock::given(method("PATCH"))
            .and(path(format!("/api/v2/dags/{dag_id}")))
            .respond_with(move |request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let mut dag = dag.clone();
                dag["is_paused"] = body["is_paused"].clone();
                ResponseTemplate::new(200).set_body_json(dag)
            })
            .mount(&self.server)
            .await;
    }

    /// `GET /api/v2/monitor/health` reporting the metadata database's
    /// status.
    pub(crate) async fn mount_health(&self, status: &str) {
        Mock::given(method("GET"))
            .and(path("/api/v2/monitor/health"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "metadatabase": {"status": status},
                "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": "2026-11-29T08:56:35.433898+00:00"},
                "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": null},
                "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": null}
            })))
            .mount(&self.server)
            .await;
    }

    /// `POST /auth/token` handing out `token-1`, `token-2`, … in turn,
    /// after `delay`. Returns the count of exchanges.
    pub(crate) async fn mount_token_sequence(&self, delay: Duration) -> Arc<AtomicUsize> {
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&issued);
        Mock::given(method("POST"))
            .and(path("/auth/token"))
            .respond_with(move |_: &Request| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                ResponseTemplate::new(201)
                    .set_body_json(json!({"access_token": format!("token-{n}")}))
                    .set_delay(delay)
            })
            .mount(&self.server)
            .await;
        issued
    }

    /// Overrides `endpoint` with `response`, ahead of every other mock.
    pub(crate) async fn fail(&self, endpoint: Endpoint, response: ResponseTemplate) {
        let (verb, pattern) = endpoint.route();
        Mock::given(method(verb))
            .and(path_regex(pattern))
            .respond_with(response)
            .with_priority(1)
            .mount(&self.server)
            .await;
    }

    /// The requests received for `endpoint`.
    pub(crate) async fn requests(&self, endpoint: Endpoint) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|request| endpoint.matches(request))
            .collect()
    }
}

/// An Airflow endpoint the backend calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    DagGet,
    DagDetails,
    DagList,
    DagPatch,
    RunPost,
    RunList,
    RunGet,
    RunPatch,
    Health,
    Token,
}

impl Endpoint {
    /// Whether `request` went to this endpoint.
    pub(crate) fn matches(self, request: &Request) -> bool {
        let (verb, pattern) = self.route();
        let pattern = pattern.trim_start_matches('^').trim_end_matches('$');
        let path = request.url.path();
        let path_matches = match pattern.strip_suffix("/.+") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| !rest.is_empty()),
            None => path == pattern,
        };
        request.method.as_str() == verb && path_matches
    }

    fn route(self) -> (&'static str, &'static str) {
        match self {
            Self::DagGet => ("GET", "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d$"),
            Self::DagDetails => (
                "GET",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/details$",
            ),
            Self::DagList => ("GET", "^/api/v2/dags$"),
            Self::DagPatch => (
                "PATCH",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d$",
            ),
            Self::RunPost => (
                "POST",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/dagRuns$",
            ),
            Self::RunList => (
                "GET",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/dagRuns$",
            ),
            Self::RunGet => (
                "GET",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/dagRuns/.+$",
            ),
            Self::RunPatch => (
                "PATCH",
                "^/api/v2/dags/1b33ad2f_33d3_4837_9eeb_83c82c8b909d/dagRuns/.+$",
            ),
            Self::Health => ("GET", "^/api/v2/monitor/health$"),
            Self::Token => ("POST", "^/auth/token$"),
        }
    }
}

/// A call of a port, on Acme's pipeline as Acme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    List,
    Pause,
    Unpause,
    Trigger,
    ListRuns,
    GetRun,
    Cancel,
    Health,
}

/// Every call, with the Airflow endpoints it reaches on the happy path.
pub(crate) const CALLS: [(Op, &[Endpoint]); 8] = [
    (Op::Get, &[Endpoint::DagDetails]),
    (Op::List, &[Endpoint::DagList]),
    (Op::Pause, &[Endpoint::DagGet, Endpoint::DagPatch]),
    (Op::Trigger, &[Endpoint::DagGet, Endpoint::RunPost]),
    (Op::ListRuns, &[Endpoint::DagGet, Endpoint::RunList]),
    (Op::GetRun, &[Endpoint::DagGet, Endpoint::RunGet]),
    (
        Op::Cancel,
        &[Endpoint::DagGet, Endpoint::RunGet, Endpoint::RunPatch],
    ),
    (Op::Health, &[Endpoint::Health]),
];

/// How a call ended, whatever its error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    NotFound,
    RunNotFound,
    Paused,
    Unchanged,
    Finished,
    Failed(BackendErrorKind),
}

/// Performs `op` as `customer` on `pipeline`.
pub(crate) async fn perform_on(
    backend: &AirflowBackend,
    op: Op,
    customer: &str,
    pipeline: &str,
) -> Outcome {
    let ctx = ctx(customer);
    let pipeline = id(pipeline);
    // Every refusal must name the pipeline (and run) it was asked about.
    let named = |outcome: Outcome, named: &PipelineId| {
        assert_eq!(named, &pipeline, "{op:?} named another pipeline");
        outcome
    };
    match op {
        Op::Get => match backend.get(&ctx, &pipeline).await {
            Ok(_) => Outcome::Done,
            Err(GetPipelineError::NotFound(id)) => named(Outcome::NotFound, &id),
            Err(GetPipelineError::Backend(err)) => Outcome::Failed(err.kind()),
            Err(other) => panic!("{op:?}: {other:?}"),
        },
        Op::List => match backend.list(&ctx).await {
            Ok(_) => Outcome::Done,
            Err(err) => Outcome::Failed(err.kind()),
        },
        Op::Pause | Op::Unpause => {
            match backend.set_paused(&ctx, &pipeline, op == Op::Pause).await {
                Ok(()) => Outcome::Done,
                Err(SetPausedError::NotFound(id)) => named(Outcome::NotFound, &id),
                Err(SetPausedError::AlreadyPaused(id)) if op == Op::Pause => {
                    named(Outcome::Unchanged, &id)
                }
                Err(SetPausedError::NotPaused(id)) if op == Op::Unpause => {
                    named(Outcome::Unchanged, &id)
                }
                Err(SetPausedError::Backend(err)) => Outcome::Failed(err.kind()),
                Err(other) => panic!("{op:?}: {other:?}"),
            }
        }
        Op::Trigger => match backend
            .trigger(&ctx, &TriggerRequest::new(pipeline.clone()))
            .await
        {
            Ok(_) => Outcome::Done,
            Err(ExecuteError::NotFound(id)) => named(Outcome::NotFound, &id),
            Err(ExecuteError::Paused(id)) => named(Outcome::Paused, &id),
            Err(ExecuteError::Backend(err)) => Outcome::Failed(err.kind()),
            Err(other) => panic!("Airflow has no queue bound: {other:?}"),
        },
        Op::ListRuns => match backend
            .list_runs(&ctx, &pipeline, &RunQuery::default())
            .await
        {
            Ok(_) => Outcome::Done,
            Err(ListRunsError::NotFound(id)) => named(Outcome::NotFound, &id),
            Err(ListRunsError::Backend(err)) => Outcome::Failed(err.kind()),
            Err(other) => panic!("{op:?}: {other:?}"),
        },
        Op::GetRun => get_run_outcome(backend, &ctx, &pipeline, &run_id()).await,
        Op::Cancel => {
            cancel_outcome(backend, &ctx, &pipeline, &running_run_id())
                .await
                .0
        }
        Op::Health => match backend.health().await {
            Ok(()) => Outcome::Done,
            Err(err) => Outcome::Failed(err.kind()),
        },
    }
}

/// Asks for run `run` of `pipeline`, and checks that a refusal names both.
pub(crate) async fn get_run_outcome(
    backend: &AirflowBackend,
    ctx: &RequestContext,
    pipeline: &PipelineId,
    run: &RunId,
) -> Outcome {
    match backend.get_run(ctx, pipeline, run).await {
        Ok(_) => Outcome::Done,
        Err(GetRunError::PipelineNotFound(id)) => {
            assert_eq!(&id, pipeline);
            Outcome::NotFound
        }
        Err(GetRunError::RunNotFound {
            pipeline_id,
            run_id,
        }) => {
            assert_eq!((&pipeline_id, &run_id), (pipeline, run));
            Outcome::RunNotFound
        }
        Err(GetRunError::Backend(err)) => Outcome::Failed(err.kind()),
        Err(other) => panic!("get run: {other:?}"),
    }
}

/// Cancels run `run` of `pipeline`, checks that a refusal names both, and
/// gives the run as the cancel left it.
pub(crate) async fn cancel_outcome(
    backend: &AirflowBackend,
    ctx: &RequestContext,
    pipeline: &PipelineId,
    run: &RunId,
) -> (Outcome, Option<Run>) {
    let outcome = match backend.cancel_run(ctx, pipeline, run).await {
        Ok(cancelled) => {
            assert_eq!((&cancelled.pipeline_id, &cancelled.id), (pipeline, run));
            return (Outcome::Done, Some(cancelled));
        }
        Err(CancelRunError::PipelineNotFound(id)) => {
            assert_eq!(&id, pipeline);
            Outcome::NotFound
        }
        Err(CancelRunError::RunNotFound {
            pipeline_id,
            run_id,
        }) => {
            assert_eq!((&pipeline_id, &run_id), (pipeline, run));
            Outcome::RunNotFound
        }
        Err(CancelRunError::AlreadyFinished {
            pipeline_id,
            run_id,
            ..
        }) => {
            assert_eq!((&pipeline_id, &run_id), (pipeline, run));
            Outcome::Finished
        }
        Err(CancelRunError::Backend(err)) => Outcome::Failed(err.kind()),
        Err(other) => panic!("cancel run: {other:?}"),
    };
    (outcome, None)
}

/// Performs `op` as Acme on Acme's pipeline.
pub(crate) async fn perform(backend: &AirflowBackend, op: Op) -> Outcome {
    perform_on(backend, op, "acme", ACME_DAG).await
}

/// A port that is bound by nobody, so connections to it are refused.
pub(crate) fn closed_port_uri() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A JWT whose `exp` is `seconds` after what `clock` shows (unsigned: the
/// backend only reads it).
pub(crate) fn jwt_expiring_in(clock: &ManualClock, seconds: i64) -> String {
    use base64::Engine as _;
    let claims = json!({"sub": "admin", "exp": clock.now().timestamp() + seconds});
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        engine.encode(r#"{"alg":"HS512","typ":"JWT"}"#),
        engine.encode(claims.to_string())
    )
}
