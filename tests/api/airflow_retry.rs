//! The case `Idempotency-Key` exists for, through the real `maestro` binary
//! on the Airflow backend: Airflow makes the run but answers after
//! Maestro's timeout, the client sees 504 and retries with the same key,
//! and gets that run, not a second one. Airflow is a small wiremock fake
//! here that keeps its runs and filters them with `conf_contains` as
//! Airflow does; `airflow_e2e` holds the tests against a real Airflow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airflow_test_support::dag_runs_page;
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{SECRET, token};
use crate::maestro::Maestro;

const DAG: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
const TIMEOUT_MS: u64 = 400;

/// A fake Airflow with one unpaused DAG of customer acme. The first post
/// of a run makes the run at once but answers only after `slow_answer`;
/// later posts answer at once.
async fn slow_airflow(slow_answer: Duration) -> (MockServer, Arc<Mutex<Vec<Value>>>) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v2/dags/{DAG}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "dag_id": DAG,
            "dag_display_name": "orders",
            "is_paused": false,
            "tags": [{"name": "customer:acme"}],
        })))
        .mount(&server)
        .await;
    let runs: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = Arc::clone(&runs);
    Mock::given(method("POST"))
        .and(path(format!("/api/v2/dags/{DAG}/dagRuns")))
        .respond_with(move |request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let run = json!({
                "dag_run_id": body["dag_run_id"],
                "dag_id": DAG,
                "state": "queued",
                "run_after": chrono::Utc::now().to_rfc3339(),
                "queued_at": chrono::Utc::now().to_rfc3339(),
                "conf": body["conf"],
            });
            let mut runs = kept.lock().unwrap();
            runs.push(run.clone());
            let delay = if runs.len() == 1 {
                slow_answer
            } else {
                Duration::ZERO
            };
            ResponseTemplate::new(200)
                .set_body_json(run)
                .set_delay(delay)
        })
        .mount(&server)
        .await;
    let listed = Arc::clone(&runs);
    Mock::given(method("GET"))
        .and(path(format!("/api/v2/dags/{DAG}/dagRuns")))
        .respond_with(move |request: &Request| {
            let query = |name: &str| {
                request
                    .url
                    .query_pairs()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
            };
            ResponseTemplate::new(200).set_body_json(dag_runs_page(
                &listed.lock().unwrap(),
                query("conf_contains").as_deref(),
                query("limit").as_deref(),
            ))
        })
        .mount(&server)
        .await;
    (server, runs)
}

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
    let (airflow, runs) = slow_airflow(Duration::from_millis(3 * TIMEOUT_MS)).await;
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
    let (airflow, runs) = slow_airflow(Duration::from_millis(3 * TIMEOUT_MS)).await;
    let maestro = gateway(&airflow);

    let (status, _, _) = execute(&maestro, Some("first")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (status, _, body) = execute(&maestro, Some("second")).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(body["data"]["run_id"], runs[1]["dag_run_id"]);
}
