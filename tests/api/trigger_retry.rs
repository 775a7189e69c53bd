//! Transient engine failures are not the client's: through the real
//! `maestro` binary on the Airflow backend, a trigger that Airflow answers
//! 5xx, or does not answer in time, is sent once more with the same run id
//! within `MAESTRO_UPSTREAM_TIMEOUT_MS`; the client gets the run (the one
//! the first attempt made, when it did), and `/metrics` counts the retry.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::fake_airflow::{self, DAG};
use crate::helpers::{SECRET, token};
use crate::maestro::Maestro;

const TIMEOUT_MS: u64 = 600;

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

async fn execute(maestro: &Maestro) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/platform/pipeline/execute",
            maestro.addr()
        ))
        .bearer_auth(token("acme"))
        .json(&json!({ "pipeline_id": DAG }))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// The value of `maestro_backend_retries_total` for the trigger and
/// `outcome`, 0 when the series does not exist.
async fn retries(maestro: &Maestro, outcome: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{}/metrics", maestro.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series =
        format!("maestro_backend_retries_total{{operation=\"trigger\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.parse().unwrap())
}

/// A fake Airflow with acme's DAG whose trigger answers each post with the
/// next of `statuses` (making nothing) and, once they run out, makes the
/// run and answers 200; and the posted bodies.
async fn failing_then_ok(statuses: &[u16]) -> (MockServer, Arc<Mutex<Vec<Value>>>) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v2/dags/{DAG}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "dag_id": DAG,
            "is_paused": false,
            "tags": [{"name": "customer:acme"}],
        })))
        .mount(&server)
        .await;
    let posted: Arc<Mutex<Vec<Value>>> = Arc::default();
    let bodies = Arc::clone(&posted);
    let statuses = statuses.to_vec();
    Mock::given(method("POST"))
        .and(path(format!("/api/v2/dags/{DAG}/dagRuns")))
        .respond_with(move |request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let mut bodies = bodies.lock().unwrap();
            bodies.push(body.clone());
            if let Some(status) = statuses.get(bodies.len() - 1) {
                return ResponseTemplate::new(*status).set_body_string("Internal Server Error");
            }
            let now = chrono::Utc::now().to_rfc3339();
            ResponseTemplate::new(200).set_body_json(json!({
                "dag_run_id": body["dag_run_id"],
                "dag_id": DAG,
                "state": "queued",
                "run_after": now,
                "queued_at": now,
                "conf": body["conf"],
            }))
        })
        .mount(&server)
        .await;
    (server, posted)
}

#[tokio::test]
async fn a_trigger_airflow_answers_500_is_sent_again_and_the_client_gets_the_run() {
    let (airflow, posted) = failing_then_ok(&[500]).await;
    let maestro = gateway(&airflow);

    let (status, body) = execute(&maestro).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let posted = posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[0]["dag_run_id"], posted[1]["dag_run_id"]);
    assert_eq!(body["data"]["run_id"], posted[0]["dag_run_id"]);
    assert_eq!(retries(&maestro, "ok").await, 1);
}

#[tokio::test]
async fn a_trigger_whose_answer_stalls_is_sent_again_and_the_409_gives_the_run_airflow_made() {
    // The first post makes the run but answers long after the timeout.
    let (airflow, runs, _) = fake_airflow::start(Duration::from_millis(10 * TIMEOUT_MS)).await;
    let maestro = gateway(&airflow);

    let started = Instant::now();
    let (status, body) = execute(&maestro).await;
    let took = started.elapsed();

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < Duration::from_millis(TIMEOUT_MS + 500),
        "answered within the timeout: {took:?}"
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "no second run");
    assert_eq!(body["data"]["run_id"], runs[0]["dag_run_id"]);
    assert_eq!(retries(&maestro, "conflict").await, 1);
}

#[tokio::test]
async fn two_failures_are_answered_as_before_and_there_is_no_third_attempt() {
    let (airflow, posted) = failing_then_ok(&[500, 503, 500]).await;
    let maestro = gateway(&airflow);

    let (status, body) = execute(&maestro).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["detail"]["exception_type"], "UpstreamError");
    assert!(!body.to_string().contains(&airflow.uri()), "{body}");
    assert_eq!(posted.lock().unwrap().len(), 2);
    assert_eq!(retries(&maestro, "failed").await, 1);
    assert_eq!(retries(&maestro, "ok").await, 0);
}

#[tokio::test]
async fn a_trigger_that_stalls_twice_is_answered_504_within_the_timeout() {
    let (airflow, runs, _) =
        fake_airflow::start_stalling(Duration::from_millis(10 * TIMEOUT_MS), 2).await;
    let maestro = gateway(&airflow);

    let started = Instant::now();
    let (status, body) = execute(&maestro).await;
    let took = started.elapsed();

    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["detail"]["exception_type"], "UpstreamTimeout");
    assert!(took < Duration::from_millis(TIMEOUT_MS + 500), "{took:?}");
    assert_eq!(runs.lock().unwrap().len(), 1, "the first attempt's run");
    assert_eq!(retries(&maestro, "failed").await, 1);
}
