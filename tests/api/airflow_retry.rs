//! The case `Idempotency-Key` exists for, through the real `maestro` binary
//! on the Airflow backend: Airflow makes the run but answers neither the
//! trigger nor Maestro's own retry of it within Maestro's timeout, the
//! client sees 504 and retries with the same key, and gets that run, not a
//! second one. Airflow is a small wiremock fake
//! here ([`crate::fake_airflow`]) that keeps its runs and filters them with
//! `conf_contains` as Airflow does; `airflow_e2e` holds the tests against a
//! real Airflow.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::MockServer;

use crate::fake_airflow::{self, DAG};
use crate::helpers::{SECRET, token};
use crate::maestro::Maestro;

const TIMEOUT_MS: u64 = 400;

fn gateway(airflow: &MockServer) -> Maestro {
    Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_BACKEND", "airflow"),
        ("MAESTRO_AIRFLOW_URL", &airflow.uri()),
        ("MAESTRO_AIRFLOW_TOKEN", "airflow-token"),
        ("MAESTRO_UPSTREAM_TIMEOUT_MS", &TIMEOUT_MS.to_string()),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_LOG_FORMAT", "json"),
    ])
}

async fn execute(maestro: &Maestro, key: Option<&str>) -> (StatusCode, bool, Value) {
    let mut request = reqwest::Client::new()
        .post(format!(
            "http://{}/platform/pipeline/execute",
            maestro.addr()
        ))
        .bearer_auth(token("acme"))
        .json(&json!({ "pipeline_id": DAG }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, replayed, response.json().await.unwrap())
}

#[tokio::test]
async fn a_retry_with_the_key_after_a_timeout_gets_the_run_airflow_made_and_no_second_one() {
    let (airflow, runs, _) =
        fake_airflow::start_stalling(Duration::from_millis(3 * TIMEOUT_MS), 2).await;
    let maestro = gateway(&airflow);

    let started = Instant::now();
    let (status, _, body) = execute(&maestro, Some("order-42")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["detail"]["exception_type"], "UpstreamTimeout");
    assert!(started.elapsed() < Duration::from_millis(TIMEOUT_MS + 750));
    assert_eq!(runs.lock().unwrap().len(), 1, "Airflow made the run");

    let (status, replayed, body) = execute(&maestro, Some("order-42")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!replayed, "the retry ran: the timeout was not kept");
    let made = runs.lock().unwrap()[0]["dag_run_id"].clone();
    assert_eq!(body["data"]["run_id"], made);
    assert_eq!(runs.lock().unwrap().len(), 1, "no second run");

    let (status, replayed, again) = execute(&maestro, Some("order-42")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(replayed);
    assert_eq!(again, body);
    assert_eq!(runs.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_retry_with_a_new_key_after_a_timeout_is_a_new_execute() {
    let (airflow, runs, _) =
        fake_airflow::start_stalling(Duration::from_millis(3 * TIMEOUT_MS), 2).await;
    let maestro = gateway(&airflow);

    let (status, _, _) = execute(&maestro, Some("first")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (status, _, body) = execute(&maestro, Some("second")).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(body["data"]["run_id"], runs[1]["dag_run_id"]);
}
