//! A fake Airflow that keeps its runs, for the tests of what Maestro does
//! when Airflow is slow to answer: a wiremock server with acme's one
//! unpaused DAG, which keeps the runs posted to it, refuses a run id it
//! already has with 409, reads back one run, and lists them filtered by
//! `conf_contains`, as Airflow does. The first posts (one, or as many as
//! asked) make their run, or meet their 409, at once but answer only after
//! a delay; later posts answer at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airflow_test_support::dag_runs_page;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Acme's DAG on the fake Airflow.
pub(crate) const DAG: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

/// The runs the fake Airflow was posted, in order.
pub(crate) type Runs = Arc<Mutex<Vec<Value>>>;

/// Starts the fake Airflow, whose first post answers only after
/// `first_answer`: the server, the runs it keeps, and a receiver signalled
/// as each post arrives.
pub(crate) async fn start(
    first_answer: Duration,
) -> (MockServer, Runs, mpsc::UnboundedReceiver<()>) {
    start_stalling(first_answer, 1).await
}

/// Starts the fake Airflow, whose first `stalled` posts answer only after
/// `delay` (an Airflow too busy to answer Maestro's trigger and its retry
/// in time): the server, the runs it keeps, and a receiver signalled as
/// each post arrives.
pub(crate) async fn start_stalling(
    delay: Duration,
    stalled: usize,
) -> (MockServer, Runs, mpsc::UnboundedReceiver<()>) {
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
    let runs: Runs = Arc::default();
    let (posted, posts) = mpsc::unbounded_channel();
    let kept = Arc::clone(&runs);
    let received = Mutex::new(0_usize);
    Mock::given(method("POST"))
        .and(path(format!("/api/v2/dags/{DAG}/dagRuns")))
        .respond_with(move |request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let delay = {
                let mut received = received.lock().unwrap();
                *received += 1;
                if *received <= stalled {
                    delay
                } else {
                    Duration::ZERO
                }
            };
            // Nobody may be listening.
            let _ = posted.send(());
            let mut runs = kept.lock().unwrap();
            if runs
                .iter()
                .any(|run| run["dag_run_id"] == body["dag_run_id"])
            {
                return ResponseTemplate::new(409)
                    .set_body_json(json!({"detail": "Unique constraint violation"}))
                    .set_delay(delay);
            }
            let now = chrono::Utc::now().to_rfc3339();
            let run = json!({
                "dag_run_id": body["dag_run_id"],
                "dag_id": DAG,
                "state": "queued",
                "run_after": now,
                "queued_at": now,
                "conf": body["conf"],
            });
            runs.push(run.clone());
            drop(runs);
            ResponseTemplate::new(200)
                .set_body_json(run)
                .set_delay(delay)
        })
        .mount(&server)
        .await;
    let read = Arc::clone(&runs);
    Mock::given(method("GET"))
        .and(path_regex(format!("^/api/v2/dags/{DAG}/dagRuns/.+$")))
        .respond_with(move |request: &Request| {
            let wanted = request.url.path().rsplit('/').next().unwrap_or_default();
            let wanted = percent_encoding::percent_decode_str(wanted).decode_utf8_lossy();
            let runs = read.lock().unwrap();
            match runs.iter().find(|run| run["dag_run_id"] == *wanted) {
                Some(run) => ResponseTemplate::new(200).set_body_json(run),
                None => ResponseTemplate::new(404).set_body_json(json!({"detail": "not found"})),
            }
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
    (server, runs, posts)
}
