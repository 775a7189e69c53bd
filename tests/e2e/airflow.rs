//! End-to-end tests of the real `maestro` binary on the Airflow backend,
//! against a real Apache Airflow 3: every request goes through Maestro's
//! HTTP API, and every effect is checked through Airflow's own API.
//!
//! They need the Airflow that `cargo xtask e2e-airflow` starts with the
//! DAGs of `tests/airflow/dags/`, and read where it is from the
//! environment the harness sets:
//! - `MAESTRO_E2E_AIRFLOW_URL`, `MAESTRO_E2E_AIRFLOW_USERNAME`,
//!   `MAESTRO_E2E_AIRFLOW_PASSWORD`;
//! - `MAESTRO_E2E_AIRFLOW_PGID`, the process group of `airflow standalone`,
//!   which the last test freezes and thaws again;
//! - `MAESTRO_TEST_REDIS_URL`, a Redis server that two `maestro` instances
//!   share for their Idempotency-Key store.
//!
//! The DAG ids and the client of Airflow's API come from the
//! `airflow-test-support` crate, which the adapter's e2e tests share; the
//! event test's DAG (`tests/airflow/dags/maestro_e2e_events.py`) is this
//! file's alone.
//!
//! The harness runs them one at a time, after the adapter's own e2e tests,
//! and [`airflow_stopped_mid_test_gives_504_within_the_timeout_and_ready_503`]
//! on its own after the others, since it stops Airflow for a while.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airflow_test_support::{
    ACME_NIGHTLY, ACME_ORDERS, ACME_TOGGLE, Airflow, ECHO_TASK, Frozen, GLOBEX_FAILING, GLOBEX_OK,
    HOOLI_ONCE, HYPHENATED, NOT_A_UUID, RUN_DEADLINE, SLEEP_TASK, TWO_CUSTOMERS, UNTAGGED,
    VANDELAY_PARAMS, VANDELAY_SLEEPER, dag_run_ids, encoded, env,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use crate::events::{
    Attempt, EventStream, Frame, Receiver, by_delivery, finished, register_webhook, statuses,
};
use crate::helpers::{SECRET, token};
use crate::maestro::Maestro;

/// Maestro's upstream timeout for the tests about behaviour: `airflow
/// standalone` on SQLite can stall for half a minute while a task starts
/// on a busy machine, and these tests are about what happens, not how fast.
const PATIENT_TIMEOUT_MS: &str = "90000";

/// What a call may take over the timeout: scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(750);

/// The real `maestro` binary on the Airflow backend, as the test's
/// Airflow account, verifying the test tokens.
struct Gateway {
    maestro: Maestro,
    url: String,
    client: Client,
}

impl Gateway {
    fn start(timeout_ms: &str) -> Self {
        Self::start_with(timeout_ms, &[])
    }

    /// Starts the gateway with `extra` settings besides the Airflow ones.
    fn start_with(timeout_ms: &str, extra: &[(&str, &str)]) -> Self {
        let airflow_url = env("MAESTRO_E2E_AIRFLOW_URL");
        let username = env("MAESTRO_E2E_AIRFLOW_USERNAME");
        let password = env("MAESTRO_E2E_AIRFLOW_PASSWORD");
        let mut settings = vec![
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_BACKEND", "airflow"),
            ("MAESTRO_AIRFLOW_URL", &airflow_url),
            ("MAESTRO_AIRFLOW_USERNAME", &username),
            ("MAESTRO_AIRFLOW_PASSWORD", &password),
            ("MAESTRO_UPSTREAM_TIMEOUT_MS", timeout_ms),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_LOG_FORMAT", "json"),
        ];
        settings.extend_from_slice(extra);
        let maestro = Maestro::start(&settings);
        let url = format!("http://{}", maestro.addr());
        Self {
            maestro,
            url,
            // Longer than any timeout of Maestro's: Maestro answers first.
            client: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, customer: &str, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token(customer))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, customer: &str, path: &str, pipeline: &str) -> Response {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(token(customer))
            .json(&json!({ "pipeline_id": pipeline }))
            .send()
            .await
            .unwrap()
    }

    /// `POST /platform/pipeline/execute` with an `Idempotency-Key`.
    async fn execute_with_key(&self, customer: &str, pipeline: &str, key: &str) -> Response {
        self.client
            .post(format!("{}/platform/pipeline/execute", self.url))
            .bearer_auth(token(customer))
            .header("Idempotency-Key", key)
            .json(&json!({ "pipeline_id": pipeline }))
            .send()
            .await
            .unwrap()
    }

    /// `POST /platform/pipeline/execute` with the run's parameters.
    async fn execute_with_conf(&self, customer: &str, pipeline: &str, conf: &Value) -> Response {
        self.client
            .post(format!("{}/platform/pipeline/execute", self.url))
            .bearer_auth(token(customer))
            .json(&json!({ "pipeline_id": pipeline, "conf": conf }))
            .send()
            .await
            .unwrap()
    }

    /// `POST .../pipeline_run/{run_id}/cancel`, the id percent-encoded.
    async fn cancel(&self, customer: &str, pipeline: &str, run_id: &str) -> Response {
        self.client
            .post(format!(
                "{}/platform/pipeline/{pipeline}/pipeline_run/{}/cancel",
                self.url,
                encoded(run_id)
            ))
            .bearer_auth(token(customer))
            .send()
            .await
            .unwrap()
    }

    async fn ready(&self) -> StatusCode {
        self.client
            .get(format!("{}/ready", self.url))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// The ids of the customer's pipelines, as `GET /platform/pipelines`
    /// lists them.
    async fn pipeline_ids(&self, customer: &str) -> BTreeSet<String> {
        let response = self.get(customer, "/platform/pipelines").await;
        assert_eq!(response.status(), StatusCode::OK);
        let listed: Value = response.json().await.unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|summary| {
                assert_eq!(summary["customer_id"], customer, "{summary}");
                summary["pipeline_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Executes the pipeline and returns the run id Maestro answered with.
    async fn execute(&self, customer: &str, pipeline: &str) -> String {
        let response = self
            .post(customer, "/platform/pipeline/execute", pipeline)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], true);
        assert_eq!(
            body["data"]["message"],
            "Pipeline execution triggered successfully"
        );
        assert_eq!(body["data"]["pipeline_id"], pipeline);
        let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();
        assert!(
            run_id.starts_with("manual__") && run_id.ends_with("+00:00"),
            "{run_id}"
        );
        run_id
    }

    /// `GET .../pipeline_run/{run_id}`, the id percent-encoded.
    async fn run(&self, customer: &str, pipeline: &str, run_id: &str) -> (StatusCode, Value) {
        let response = self
            .get(
                customer,
                &format!(
                    "/platform/pipeline/{pipeline}/pipeline_run/{}",
                    encoded(run_id)
                ),
            )
            .await;
        (response.status(), response.json().await.unwrap())
    }

    /// Polls Maestro's run endpoint until the run has finished, and returns
    /// the finished run.
    async fn wait_until_finished(&self, customer: &str, pipeline: &str, run_id: &str) -> Value {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let (status, run) = self.run(customer, pipeline, run_id).await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if matches!(run["last_status"].as_str(), Some("SUCCESS" | "FAILED")) {
                return run;
            }
            assert!(
                matches!(run["last_status"].as_str(), Some("QUEUED" | "RUNNING")),
                "{run}"
            );
            assert!(Instant::now() < deadline, "{run_id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A page of runs and its `X-Total-Count`.
    async fn runs(&self, customer: &str, pipeline: &str, query: &str) -> (Vec<Value>, u64) {
        let response = self
            .get(
                customer,
                &format!("/platform/pipeline/{pipeline}/pipeline_run?{query}"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let total = response.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let runs: Value = response.json().await.unwrap();
        (runs.as_array().unwrap().clone(), total)
    }
}

/// Asserts the error envelope of `response`: its status, exception type and
/// message.
async fn assert_error(response: Response, status: StatusCode, exception: &str, message: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"]["status"], false, "{body}");
    assert_eq!(body["detail"]["exception_type"], exception, "{body}");
    assert_eq!(body["detail"]["traceback"], message, "{body}");
}

/// The `pipeline_run_id`s of runs as Maestro lists them.
fn pipeline_run_ids(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|run| run["pipeline_run_id"].as_str().unwrap().to_owned())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|&id| id.to_owned()).collect()
}

#[tokio::test]
async fn each_customer_sees_exactly_its_dags_and_another_customers_dag_is_not_found() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);

    assert_eq!(
        maestro.pipeline_ids("acme").await,
        set(&[ACME_ORDERS, ACME_NIGHTLY, ACME_TOGGLE])
    );
    assert_eq!(
        maestro.pipeline_ids("globex").await,
        set(&[GLOBEX_FAILING, GLOBEX_OK])
    );
    assert!(maestro.pipeline_ids("initech").await.is_empty());

    // Airflow tags more DAGs for acme than Maestro shows: the doubly
    // tagged one, and the ones whose dag_id is not an underscored UUID.
    let tagged = airflow.tagged("acme").await;
    for hidden in [TWO_CUSTOMERS, NOT_A_UUID, HYPHENATED] {
        assert!(tagged.contains(hidden), "{hidden} should exist in Airflow");
    }

    // Another customer's DAG, an untagged one and a doubly tagged one look
    // exactly like a missing one.
    for (customer, dag) in [
        ("acme", GLOBEX_OK),
        ("globex", ACME_ORDERS),
        ("acme", UNTAGGED),
        ("acme", TWO_CUSTOMERS),
        ("globex", TWO_CUSTOMERS),
        ("acme", "00000000_0000_4000_8000_000000000000"),
    ] {
        assert_error(
            maestro
                .get(customer, &format!("/platform/pipeline/{dag}"))
                .await,
            StatusCode::NOT_FOUND,
            "PipelineNotFound",
            &format!("Pipeline with id {dag} not found"),
        )
        .await;
        assert_error(
            maestro
                .post(customer, "/platform/pipeline/execute", dag)
                .await,
            StatusCode::NOT_FOUND,
            "PipelineNotFound",
            &format!("Pipeline with id {dag} not found"),
        )
        .await;
    }

    // One's own DAG, asked for hyphenated and in upper case, answers in
    // the normal form with what Airflow has.
    let shouted = ACME_NIGHTLY.replace('_', "-").to_uppercase();
    let response = maestro
        .get("acme", &format!("/platform/pipeline/{shouted}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let pipeline = &body["data"];
    assert_eq!(pipeline["id"], ACME_NIGHTLY);
    assert_eq!(pipeline["customer_id"], "acme");
    assert_eq!(pipeline["cron"], "0 3 * * *");
    assert_eq!(pipeline["description"], "Acme: the nightly report");
    let dag = airflow.get(&format!("/api/v2/dags/{ACME_NIGHTLY}")).await;
    let expected = if dag["is_paused"] == true {
        "paused"
    } else {
        "active"
    };
    assert_eq!(pipeline["status"], expected);
}

#[tokio::test]
async fn a_paused_pipeline_is_refused_with_400_and_no_dag_run_reaches_airflow() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(ACME_NIGHTLY, true).await;
    let before = airflow.run_count(ACME_NIGHTLY).await;

    assert_error(
        maestro
            .post("acme", "/platform/pipeline/execute", ACME_NIGHTLY)
            .await,
        StatusCode::BAD_REQUEST,
        "PipelinePaused",
        "Cannot execute paused pipeline. Use /pipeline/unpause first.",
    )
    .await;

    assert_eq!(airflow.run_count(ACME_NIGHTLY).await, before);
    assert!(airflow.is_paused(ACME_NIGHTLY).await);
}

#[tokio::test]
async fn unpause_and_pause_through_maestro_reach_airflow() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(ACME_TOGGLE, true).await;

    for (action, paused, message, status, repeated, repeated_message) in [
        (
            "unpause",
            false,
            "Pipeline unpaused successfully",
            "active",
            "PipelineNotPaused",
            "Pipeline is not paused",
        ),
        (
            "pause",
            true,
            "Pipeline paused successfully",
            "paused",
            "PipelineAlreadyPaused",
            "Pipeline is already paused",
        ),
    ] {
        let route = format!("/platform/pipeline/{action}");
        let response = maestro.post("acme", &route, ACME_TOGGLE).await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"status": true, "data": {"message": message, "pipeline_id": ACME_TOGGLE}})
        );
        assert_eq!(airflow.is_paused(ACME_TOGGLE).await, paused, "{action}");
        let shown: Value = maestro
            .get("acme", &format!("/platform/pipeline/{ACME_TOGGLE}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(shown["data"]["status"], status, "{action}");
        assert_error(
            maestro.post("acme", &route, ACME_TOGGLE).await,
            StatusCode::BAD_REQUEST,
            repeated,
            repeated_message,
        )
        .await;
    }

    // This instance read the DAG unpaused moments ago, but its own pause
    // takes effect at once: the next execute is refused, and no run is made.
    let runs_before = airflow.run_count(ACME_TOGGLE).await;
    assert_error(
        maestro
            .post("acme", "/platform/pipeline/execute", ACME_TOGGLE)
            .await,
        StatusCode::BAD_REQUEST,
        "PipelinePaused",
        "Cannot execute paused pipeline. Use /pipeline/unpause first.",
    )
    .await;
    assert_eq!(airflow.run_count(ACME_TOGGLE).await, runs_before);

    // Another customer's unpause does not reach Airflow.
    assert_error(
        maestro
            .post("globex", "/platform/pipeline/unpause", ACME_TOGGLE)
            .await,
        StatusCode::NOT_FOUND,
        "PipelineNotFound",
        &format!("Pipeline with id {ACME_TOGGLE} not found"),
    )
    .await;
    assert!(airflow.is_paused(ACME_TOGGLE).await);
}

#[tokio::test]
async fn three_executes_give_three_dag_runs_with_exactly_the_returned_ids_that_succeed_in_order() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(ACME_ORDERS, false).await;
    let before: HashSet<String> = dag_run_ids(&airflow.runs(ACME_ORDERS).await)
        .into_iter()
        .collect();

    let mut returned = Vec::new();
    for _ in 0..3 {
        returned.push(maestro.execute("acme", ACME_ORDERS).await);
    }
    assert!(returned.windows(2).all(|pair| pair[0] < pair[1]));

    // Airflow has exactly these three new runs, triggered for the caller.
    let new: Vec<String> = dag_run_ids(&airflow.runs(ACME_ORDERS).await)
        .into_iter()
        .filter(|run| !before.contains(run))
        .collect();
    assert_eq!(new, returned);

    for run_id in &returned {
        let run = maestro
            .wait_until_finished("acme", ACME_ORDERS, run_id)
            .await;
        assert_eq!(run["last_status"], "SUCCESS", "{run}");
        assert_eq!(run["pipeline_run_id"], run_id.as_str());
        assert_eq!(run["pipeline_id"], ACME_ORDERS);
        assert!(run["trace"].is_null(), "{run}");
    }
    let mut seen = Vec::new();
    for run_id in &returned {
        let run = airflow.run(ACME_ORDERS, run_id).await;
        assert_eq!(run["state"], "success", "{run}");
        assert_eq!(run["conf"]["maestro"]["customer_id"], "acme");
        assert_eq!(run["conf"]["maestro"]["sub"], "tester");
        assert!(run["logical_date"].is_null(), "{run}");
        seen.push(run);
    }
    // max_active_runs=1: each run started after the one before it ended.
    for pair in seen.windows(2) {
        let ended = pair[0]["end_date"].as_str().unwrap();
        let started = pair[1]["start_date"].as_str().unwrap();
        assert!(ended <= started, "{ended} then {started}");
    }
    airflow.set_paused(ACME_ORDERS, true).await;
}

#[tokio::test]
async fn a_failing_dag_shows_failed_with_a_trace() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(GLOBEX_FAILING, false).await;

    let run_id = maestro.execute("globex", GLOBEX_FAILING).await;
    let run = maestro
        .wait_until_finished("globex", GLOBEX_FAILING, &run_id)
        .await;

    assert_eq!(run["last_status"], "FAILED", "{run}");
    assert!(
        run["trace"].as_str().is_some_and(|trace| !trace.is_empty()),
        "{run}"
    );
    assert_eq!(
        airflow.run(GLOBEX_FAILING, &run_id).await["state"],
        "failed"
    );
    let listed: Value = maestro
        .get("globex", "/platform/pipelines")
        .await
        .json()
        .await
        .unwrap();
    let summary = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|summary| summary["pipeline_id"] == GLOBEX_FAILING)
        .unwrap();
    assert_eq!(summary["last_status"], "FAILED", "{summary}");
    airflow.set_paused(GLOBEX_FAILING, true).await;
}

#[tokio::test]
async fn runs_are_listed_paginated_filtered_and_fetched_by_percent_encoded_id() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(GLOBEX_OK, false).await;

    let mut returned = Vec::new();
    for _ in 0..3 {
        returned.push(maestro.execute("globex", GLOBEX_OK).await);
    }
    for run_id in &returned {
        maestro
            .wait_until_finished("globex", GLOBEX_OK, run_id)
            .await;
    }
    let total = airflow.run_count(GLOBEX_OK).await;
    assert!(total >= 3);
    let newest_first: Vec<String> = returned.iter().rev().cloned().collect();

    let (first, first_total) = maestro.runs("globex", GLOBEX_OK, "limit=2").await;
    assert_eq!(first_total, total);
    assert_eq!(pipeline_run_ids(&first), newest_first[..2]);
    let (second, second_total) = maestro.runs("globex", GLOBEX_OK, "limit=2&offset=2").await;
    assert_eq!(second_total, total);
    assert_eq!(second[0]["pipeline_run_id"], newest_first[2].as_str());
    assert!(second.len() <= 2);

    // Every run of the DAG, as Airflow lists it, newest first.
    let (all, _) = maestro.runs("globex", GLOBEX_OK, "limit=1000").await;
    let mut in_airflow = dag_run_ids(&airflow.runs(GLOBEX_OK).await);
    in_airflow.reverse();
    assert_eq!(pipeline_run_ids(&all), in_airflow);

    let (succeeded, succeeded_total) = maestro
        .runs("globex", GLOBEX_OK, "status=SUCCESS&limit=1000")
        .await;
    assert!(succeeded.iter().all(|run| run["last_status"] == "SUCCESS"));
    assert_eq!(succeeded_total, total);
    let (failed, failed_total) = maestro.runs("globex", GLOBEX_OK, "status=FAILED").await;
    assert!(failed.is_empty());
    assert_eq!(failed_total, 0);

    // The id holds ':' and '+', which travel percent-encoded.
    let (status, fetched) = maestro.run("globex", GLOBEX_OK, &returned[1]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["pipeline_run_id"], returned[1].as_str());
    assert_eq!(fetched["pipeline_id"], GLOBEX_OK);
    assert_eq!(fetched["last_status"], "SUCCESS");
    assert!(fetched["trace"].is_null());
    let (status, missing) = maestro
        .run(
            "globex",
            GLOBEX_OK,
            "manual__1999-01-01T00:00:00.000000+00:00",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["detail"]["exception_type"], "PipelineRunNotFound");
    // Another customer cannot read the run.
    let (status, hidden) = maestro.run("acme", GLOBEX_OK, &returned[1]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(hidden["detail"]["exception_type"], "PipelineNotFound");
    airflow.set_paused(GLOBEX_OK, true).await;
}

/// How many executes each of the two instances gets at once in the
/// Idempotency-Key test.
const EXECUTES_PER_INSTANCE: usize = 8;

/// An answer to an execute with an `Idempotency-Key`, read in full.
#[derive(Debug)]
struct KeyedAnswer {
    status: StatusCode,
    replayed: bool,
    retry_after: bool,
    body: Value,
}

impl KeyedAnswer {
    async fn read(response: Response) -> Self {
        let headers = response.headers();
        let replayed = headers
            .get("idempotent-replayed")
            .is_some_and(|value| value == "true");
        let retry_after = headers.contains_key("retry-after");
        Self {
            status: response.status(),
            replayed,
            retry_after,
            body: response.json().await.unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_start_exactly_one_dag_run_for_one_idempotency_key() {
    let redis = env("MAESTRO_TEST_REDIS_URL");
    let airflow = Airflow::connect().await;
    let shared = [("MAESTRO_REDIS_URL", redis.as_str())];
    let instances = [
        Arc::new(Gateway::start_with(PATIENT_TIMEOUT_MS, &shared)),
        Arc::new(Gateway::start_with(PATIENT_TIMEOUT_MS, &shared)),
    ];
    airflow.set_paused(HOOLI_ONCE, false).await;
    let before: HashSet<String> = dag_run_ids(&airflow.runs(HOOLI_ONCE).await)
        .into_iter()
        .collect();
    let count_before = airflow.run_count(HOOLI_ONCE).await;

    // A key of its own: the Redis server may outlive a test run, and an
    // old key would replay a run of an Airflow that is gone.
    let key = format!("e2e-{}", uuid::Uuid::new_v4());
    let all = instances.len() * EXECUTES_PER_INSTANCE;
    let start = Arc::new(tokio::sync::Barrier::new(all));
    let tasks: Vec<_> = (0..all)
        .map(|i| {
            let gateway = instances[i % instances.len()].clone();
            let key = key.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let response = gateway.execute_with_key("hooli", HOOLI_ONCE, &key).await;
                KeyedAnswer::read(response).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }

    // Every answer is the one run or "in progress"; exactly one of them
    // ran execute, and every other 200 replays its answer.
    let mut ran = Vec::new();
    for answer in &answers {
        match answer.status {
            StatusCode::OK => {
                assert_eq!(answer.body["status"], true, "{answer:?}");
                assert_eq!(answer.body["data"]["pipeline_id"], HOOLI_ONCE, "{answer:?}");
                if !answer.replayed {
                    ran.push(answer);
                }
            }
            StatusCode::CONFLICT => {
                assert_eq!(
                    answer.body["detail"]["exception_type"], "IdempotencyKeyInProgress",
                    "{answer:?}"
                );
                assert!(answer.retry_after, "a 409 without Retry-After: {answer:?}");
                assert!(!answer.replayed, "{answer:?}");
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(ran.len(), 1, "exactly one fresh 200: {answers:?}");
    let first = &ran[0].body;
    for answer in answers
        .iter()
        .filter(|answer| answer.status == StatusCode::OK)
    {
        assert_eq!(&answer.body, first, "every 200 is the same answer");
    }
    let run_id = first["data"]["run_id"].as_str().unwrap().to_owned();

    // Airflow has exactly one new run, the returned one, for the caller.
    assert_eq!(airflow.run_count(HOOLI_ONCE).await, count_before + 1);
    let new: Vec<String> = dag_run_ids(&airflow.runs(HOOLI_ONCE).await)
        .into_iter()
        .filter(|run| !before.contains(run))
        .collect();
    assert_eq!(new, std::slice::from_ref(&run_id));
    let run = airflow.run(HOOLI_ONCE, &run_id).await;
    assert_eq!(run["conf"]["maestro"]["customer_id"], "hooli", "{run}");

    // A later repeat to either instance replays the run and starts none.
    for gateway in &instances {
        let again =
            KeyedAnswer::read(gateway.execute_with_key("hooli", HOOLI_ONCE, &key).await).await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
        assert!(again.replayed, "{again:?}");
        assert_eq!(&again.body, first);
    }
    let finished = instances[0]
        .wait_until_finished("hooli", HOOLI_ONCE, &run_id)
        .await;
    assert_eq!(finished["last_status"], "SUCCESS", "{finished}");
    assert_eq!(airflow.run_count(HOOLI_ONCE).await, count_before + 1);
    airflow.set_paused(HOOLI_ONCE, true).await;
}

#[tokio::test]
async fn execute_with_a_conf_reaches_the_task_and_a_value_the_dag_refuses_is_400_invalid_conf() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(VANDELAY_PARAMS, false).await;
    let before = airflow.run_count(VANDELAY_PARAMS).await;

    let refused = maestro
        .execute_with_conf("vandelay", VANDELAY_PARAMS, &json!({"date": "2024-13-45"}))
        .await;
    assert_error(
        refused,
        StatusCode::BAD_REQUEST,
        "InvalidConf",
        "The pipeline refused the parameter date: the value fails the parameter's \"format\" check",
    )
    .await;
    assert_eq!(airflow.run_count(VANDELAY_PARAMS).await, before);

    let parameters = json!({"date": "2024-12-18", "full_refresh": true});
    let response = maestro
        .execute_with_conf("vandelay", VANDELAY_PARAMS, &parameters)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();
    // Held by Maestro until the run finishes (or 30 s pass).
    let deadline = Instant::now() + RUN_DEADLINE;
    let run = loop {
        let response = maestro
            .get(
                "vandelay",
                &format!(
                    "/platform/pipeline/{VANDELAY_PARAMS}/pipeline_run/{}?wait_seconds=30",
                    encoded(&run_id)
                ),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let run: Value = response.json().await.unwrap();
        if matches!(run["last_status"].as_str(), Some("SUCCESS" | "FAILED")) {
            break run;
        }
        assert!(Instant::now() < deadline, "{run_id} did not finish: {run}");
    };
    assert_eq!(run["last_status"], "SUCCESS", "{run}");
    assert_eq!(run["conf"], parameters, "{run}");
    let returned = airflow.returned(VANDELAY_PARAMS, &run_id, ECHO_TASK).await;
    assert_eq!(returned["params"], parameters, "{returned}");
    assert_eq!(returned["conf"]["date"], "2024-12-18", "{returned}");
    assert_eq!(returned["conf"]["maestro"]["customer_id"], "vandelay");
    airflow.set_paused(VANDELAY_PARAMS, true).await;
}

#[tokio::test]
async fn cancel_fails_the_running_run_with_its_trace_and_the_next_queued_run_starts() {
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(VANDELAY_SLEEPER, false).await;
    let first = maestro.execute("vandelay", VANDELAY_SLEEPER).await;
    let second = maestro.execute("vandelay", VANDELAY_SLEEPER).await;
    airflow
        .wait_for_task_state(VANDELAY_SLEEPER, &first, SLEEP_TASK, "running")
        .await;

    let response = maestro.cancel("vandelay", VANDELAY_SLEEPER, &first).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": true, "data": {
            "message": "Pipeline run cancelled successfully",
            "pipeline_id": VANDELAY_SLEEPER,
            "run_id": first,
        }})
    );
    let (status, run) = maestro.run("vandelay", VANDELAY_SLEEPER, &first).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["last_status"], "FAILED", "{run}");
    assert_eq!(run["trace"], "Cancelled through the API", "{run}");
    let seen = airflow.run(VANDELAY_SLEEPER, &first).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    assert_eq!(seen["note"], "Cancelled through the API", "{seen}");

    // The queued run behind it starts.
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        let (_, run) = maestro.run("vandelay", VANDELAY_SLEEPER, &second).await;
        if run["last_status"] == "RUNNING" {
            break;
        }
        assert_eq!(run["last_status"], "QUEUED", "{run}");
        assert!(Instant::now() < deadline, "{second} did not start: {run}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert_error(
        maestro.cancel("vandelay", VANDELAY_SLEEPER, &first).await,
        StatusCode::BAD_REQUEST,
        "PipelineRunAlreadyFinished",
        &format!("Pipeline run {first} already finished with status FAILED"),
    )
    .await;
    let unknown = "manual__2020-01-01T00:00:00.000000+00:00";
    assert_error(
        maestro.cancel("vandelay", VANDELAY_SLEEPER, unknown).await,
        StatusCode::NOT_FOUND,
        "PipelineRunNotFound",
        &format!("Pipeline run with id {unknown} not found for pipeline {VANDELAY_SLEEPER}"),
    )
    .await;
    assert_error(
        maestro.cancel("acme", VANDELAY_SLEEPER, &second).await,
        StatusCode::NOT_FOUND,
        "PipelineNotFound",
        &format!("Pipeline with id {VANDELAY_SLEEPER} not found"),
    )
    .await;

    // Nothing left sleeping.
    let response = maestro.cancel("vandelay", VANDELAY_SLEEPER, &second).await;
    assert_eq!(response.status(), StatusCode::OK);
    airflow.set_paused(VANDELAY_SLEEPER, true).await;
}

/// Soylent's only DAG (`tests/airflow/dags/maestro_e2e_events.py`): one
/// run at a time, each about five seconds long; only the event test
/// triggers it.
const SOYLENT_EVENTS: &str = "5ead5761_50ca_4cae_b968_fc9506ad5eeb";

/// How often the event test's Maestro asks Airflow for run changes: the
/// default.
const EVENTS_POLL: Duration = Duration::from_secs(2);

/// Waits until Airflow has parsed `dag_id`, a DAG of `customer`:
/// [`Airflow::connect`] waits for the shared test DAGs only.
async fn wait_for_dag(airflow: &Airflow, customer: &str, dag_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !airflow.tagged(customer).await.contains(dag_id) {
        assert!(Instant::now() < deadline, "Airflow did not parse {dag_id}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The instant Airflow recorded that the run took `status`: `queued_at`,
/// `start_date` or `end_date`.
fn recorded(run: &Value, status: &str) -> std::time::SystemTime {
    let field = match status {
        "QUEUED" => "queued_at",
        "RUNNING" => "start_date",
        _ => "end_date",
    };
    let at = chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap())
        .unwrap_or_else(|err| panic!("{field} of {run}: {err}"));
    at.into()
}

/// How long after `from` the instant `to` came, in seconds (negative when
/// before).
fn seconds_after(to: std::time::SystemTime, from: std::time::SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_started_in_airflow_and_through_maestro_reach_a_stream_and_a_webhook_within_two_polls()
{
    let airflow = Airflow::connect().await;
    wait_for_dag(&airflow, "soylent", SOYLENT_EVENTS).await;
    // Paused, as the DAG starts: a run triggered now waits queued.
    airflow.set_paused(SOYLENT_EVENTS, true).await;
    let receiver = Receiver::start(&[], 200).await;
    let poll = EVENTS_POLL.as_millis().to_string();
    let maestro = Gateway::start_with(
        PATIENT_TIMEOUT_MS,
        &[
            ("MAESTRO_EVENTS_POLL_MS", &poll),
            ("MAESTRO_WEBHOOKS_ALLOW_INSECURE", "true"),
            // The feed's first append says that its source has a cursor:
            // from then on it tells every change.
            ("RUST_LOG", "info,runtime::feed=debug"),
        ],
    );
    tokio::task::block_in_place(|| {
        maestro.maestro.wait_for(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["message"] == "appended run changes to the feed").then_some(())
        });
    });
    let mut stream = EventStream::open(
        &maestro.url,
        "soylent",
        &format!("?pipeline_id={SOYLENT_EVENTS}"),
        None,
    )
    .await;
    let (_, secret) = register_webhook(
        &maestro.url,
        "soylent",
        &json!({ "url": receiver.url(), "pipeline_ids": [SOYLENT_EVENTS] }),
    )
    .await;

    // One run triggered in Airflow directly, behind Maestro's back; it
    // waits queued until the DAG is unpaused.
    let direct = airflow.trigger(SOYLENT_EVENTS, json!({})).await["dag_run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stream
        .read_until(RUN_DEADLINE, "the direct run queued", |frames| {
            !statuses(frames, &direct).is_empty()
        })
        .await;
    airflow.set_paused(SOYLENT_EVENTS, false).await;
    // One through Maestro, which waits for the first (one run at a time).
    let through = maestro.execute("soylent", SOYLENT_EVENTS).await;
    let frames = stream
        .read_until(RUN_DEADLINE, "both runs finished", |frames| {
            finished(frames, &direct) && finished(frames, &through)
        })
        .await;
    let attempts = receiver
        .wait_until(RUN_DEADLINE, "six deliveries", |attempts| {
            by_delivery(attempts).len() >= 6
        })
        .await;
    airflow.set_paused(SOYLENT_EVENTS, true).await;

    for run_id in [&direct, &through] {
        assert_eq!(
            statuses(&frames, run_id),
            ["QUEUED", "RUNNING", "SUCCESS"],
            "{run_id}"
        );
    }
    assert_eq!(frames.len(), 6, "nothing but the two runs' changes");
    let runs = [
        airflow.run(SOYLENT_EVENTS, &direct).await,
        airflow.run(SOYLENT_EVENTS, &through).await,
    ];
    let in_airflow = |run_id: &str| {
        runs.iter()
            .find(|run| run["dag_run_id"] == run_id)
            .unwrap()
            .clone()
    };

    // Each status reached the stream within two polls of when Airflow
    // recorded it.
    let bound = (EVENTS_POLL * 2).as_secs_f64();
    let mut late = Vec::new();
    for frame in &frames {
        let run = in_airflow(&frame.run_id());
        let lag = seconds_after(frame.received, recorded(&run, &frame.status()));
        println!(
            "stream:  {:<60} {:<8} {lag:.3} s after Airflow recorded it",
            frame.run_id(),
            frame.status()
        );
        if lag > bound {
            late.push(format!(
                "stream {} {} {lag:.3} s",
                frame.run_id(),
                frame.status()
            ));
        }
    }

    // Each reached the webhook once, signed, carrying the run as the
    // stream told it, within two polls too.
    let deliveries = by_delivery(&attempts);
    assert_eq!(deliveries.len(), 6, "{:?}", deliveries.keys());
    for (id, tried) in &deliveries {
        assert_eq!(tried.len(), 1, "{id} was delivered more than once");
        let attempt: &Attempt = &tried[0];
        assert!(attempt.verifies(&secret), "a bad signature on {id}");
        let body = attempt.json();
        let status = body["data"]["last_status"].as_str().unwrap().to_owned();
        let expected_type = match status.as_str() {
            "QUEUED" => "run.queued",
            "RUNNING" => "run.running",
            "SUCCESS" => "run.succeeded",
            _ => "run.failed",
        };
        assert_eq!(body["type"], expected_type, "{body}");
        let told: &Frame = frames
            .iter()
            .find(|frame| frame.run_id() == attempt.run_id() && frame.status() == status)
            .unwrap_or_else(|| panic!("the stream did not tell {body}"));
        assert_eq!(
            body["data"],
            told.run(),
            "the webhook and the stream differ"
        );
        let run = in_airflow(&attempt.run_id());
        let lag = seconds_after(attempt.received, recorded(&run, &status));
        println!(
            "webhook: {:<60} {status:<8} {lag:.3} s after Airflow recorded it",
            attempt.run_id()
        );
        if lag > bound {
            late.push(format!("webhook {} {status} {lag:.3} s", attempt.run_id()));
        }
    }
    assert!(
        late.is_empty(),
        "later than two polls ({bound} s) after Airflow: {late:#?}"
    );
}

#[tokio::test]
async fn airflow_stopped_mid_test_gives_504_within_the_timeout_and_ready_503() {
    let airflow = Airflow::connect().await;
    let timeout = Duration::from_secs(2);
    let maestro = Gateway::start("2000");
    assert_eq!(maestro.ready().await, StatusCode::OK);
    let response = maestro
        .get("acme", &format!("/platform/pipeline/{ACME_ORDERS}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let runs_path = format!("/platform/pipeline/{ACME_ORDERS}/pipeline_run");
    let run_path = format!(
        "{runs_path}/{}",
        encoded("manual__2024-12-18T10:30:00+00:00")
    );

    let paused = airflow.is_paused(ACME_ORDERS).await;
    let run_count = airflow.run_count(ACME_ORDERS).await;

    // Frozen: the kernel still accepts connections, and nothing answers.
    let frozen = Frozen::airflow();
    let airflow_url = env("MAESTRO_E2E_AIRFLOW_URL");
    let calls = [
        ("GET", format!("/platform/pipeline/{ACME_ORDERS}")),
        ("GET", "/platform/pipelines".to_owned()),
        ("GET", runs_path),
        ("GET", run_path),
        ("POST", "/platform/pipeline/execute".to_owned()),
        ("POST", "/platform/pipeline/pause".to_owned()),
        ("POST", "/platform/pipeline/unpause".to_owned()),
    ];
    for (method, path) in calls {
        let started = Instant::now();
        let response = if method == "GET" {
            maestro.get("acme", &path).await
        } else {
            maestro.post("acme", &path, ACME_ORDERS).await
        };
        let took = started.elapsed();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ),
            "{method} {path}: {status} {body}"
        );
        assert!(took < timeout + SLACK, "{method} {path} took {took:?}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let exception = body["detail"]["exception_type"].as_str().unwrap();
        assert!(
            matches!(exception, "UpstreamUnavailable" | "UpstreamTimeout"),
            "{method} {path}: {body}"
        );
        // Nothing of Airflow's address reaches the client.
        assert!(!body.to_string().contains(&airflow_url), "{body}");
        assert!(!body.to_string().contains("/api/v2"), "{body}");
    }
    let started = Instant::now();
    assert_eq!(maestro.ready().await, StatusCode::SERVICE_UNAVAILABLE);
    let took = started.elapsed();
    assert!(took < timeout + SLACK, "/ready took {took:?}");

    // Thawed: Maestro is ready again without a restart, and none of the
    // refused calls changed anything in Airflow.
    drop(frozen);
    let deadline = Instant::now() + Duration::from_secs(60);
    while maestro.ready().await != StatusCode::OK {
        assert!(Instant::now() < deadline, "Maestro did not become ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let response = maestro
        .get("acme", &format!("/platform/pipeline/{ACME_ORDERS}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(airflow.is_paused(ACME_ORDERS).await, paused);
    assert_eq!(airflow.run_count(ACME_ORDERS).await, run_count);
}

/// Airflow 3.3's REST API neither echoes a `traceparent` nor shows it on
/// the run, so what this shows is that the real Airflow takes every call
/// Maestro makes with one (the token exchange, the DAG's read, the run's
/// post and read); that the calls carry the caller's trace with Maestro's
/// span as the parent is shown against the fake Airflow
/// (`tests/api/tracing.rs`).
#[tokio::test]
async fn a_traced_execute_and_read_go_through_to_airflow_which_accepts_the_trace_context() {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let airflow = Airflow::connect().await;
    let maestro = Gateway::start(PATIENT_TIMEOUT_MS);
    airflow.set_paused(ACME_ORDERS, false).await;

    let response = maestro
        .client
        .post(format!("{}/platform/pipeline/execute", maestro.url))
        .bearer_auth(token("acme"))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "vendor=opaque")
        .json(&json!({ "pipeline_id": ACME_ORDERS }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        airflow.run(ACME_ORDERS, &run_id).await["dag_run_id"],
        run_id
    );

    let read = maestro
        .client
        .get(format!(
            "{}/platform/pipeline/{ACME_ORDERS}/pipeline_run/{}",
            maestro.url,
            encoded(&run_id)
        ))
        .bearer_auth(token("acme"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    // Left finished, so that the tests after it find the DAG as they expect.
    let run = maestro
        .wait_until_finished("acme", ACME_ORDERS, &run_id)
        .await;
    assert_eq!(run["last_status"], "SUCCESS", "{run}");
    airflow.set_paused(ACME_ORDERS, true).await;
}
