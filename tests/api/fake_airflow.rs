//! A fake Airflow that keeps its runs, for the tests of what Maestro does
//! when Airflow is slow to answer: a wiremock server with acme's one
//! unpaused DAG, which keeps the runs posted to it and lists them filtered
//! by `conf_contains` as Airflow does. The first post makes its run at once
//! but answers only after a delay; later posts answer at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airflow_test_support::dag_runs_page;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wiremock::matchers::{method, path};
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
    Mock::given(method("POST"))
        .and(path(format!("/api/v2/dags/{DAG}/dagRuns")))
        .respond_with(move |request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let now = chrono::Utc::now().to_rfc3339();
            let run = json!({
                "dag_run_id": body["dag_run_id"],
                "dag_id": DAG,
                "state": "queued",
                "run_after": now,
                "queued_at": now,
                "conf": body["conf"],
            });
            let mut runs = kept.lock().unwrap();
            runs.push(run.clone());
            let delay = if runs.len() == 1 {
                first_answer
            } else {
                Duration::ZERO
            };
            drop(runs);
            // Nobody may be listening.
            let _ = posted.send(());
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
    (server, runs, posts)
}
