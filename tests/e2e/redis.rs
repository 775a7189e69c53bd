//! `maestro` instances sharing one real Redis: `Idempotency-Key` holds
//! across them, and across an instance killed in the middle of an execute.
//! Needs `MAESTRO_TEST_REDIS_URL` (`scripts/redis-test-server.sh` starts a
//! server and prints it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::MockServer;

use crate::fake_airflow::{self, DAG};
use crate::fake_platform::{FakePlatform, memory_config};
use crate::helpers::{ACME, ACTIVE, SECRET, TestApp, concurrent_executes, replayed, token};
use crate::maestro::Maestro;

fn redis_url() -> String {
    std::env::var("MAESTRO_TEST_REDIS_URL").expect("MAESTRO_TEST_REDIS_URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_start_exactly_one_run_for_one_key() {
    let upstream = FakePlatform::start(memory_config(1000)).await;
    let env = vec![("MAESTRO_REDIS_URL", redis_url())];
    let first = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env.clone()).await);
    let second = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env).await);

    // A key of its own, since the Redis server may outlive one test run.
    let key = format!("shared-{}", uuid::Uuid::new_v4());
    let run_ids = concurrent_executes(&[first.clone(), second.clone()], &key, 200).await;
    assert_eq!(run_ids.len(), 1, "both instances answer with the one run");
    assert_eq!(first.run_count(ACME, ACTIVE).await, "1");
    let triggers = upstream
        .requests()
        .await
        .iter()
        .filter(|request| request.url.path().ends_with("/pipeline/execute"))
        .count();
    assert_eq!(triggers, 1, "the upstream saw exactly one execute");

    // A replay from the other instance after the fact.
    let again = second.execute_with_key(ACME, ACTIVE, &key).await;
    assert!(replayed(&again));
    let body: Value = again.json().await.unwrap();
    assert!(run_ids.contains(body["data"]["run_id"].as_str().unwrap()));
}

/// The instances' upstream timeout: their claims of a key are in flight
/// for twice that and 5 s (7 s), the shortest the wiring allows.
const TIMEOUT_MS: &str = "1000";

/// `maestro` on the Airflow backend in front of `airflow`, keeping its
/// `Idempotency-Key` claims in the test Redis, and its address.
async fn airflow_gateway(airflow: &MockServer) -> (Maestro, String) {
    let airflow = airflow.uri();
    let redis = redis_url();
    // Starting a process and reading its output block: off the runtime.
    tokio::task::spawn_blocking(move || {
        let maestro = Maestro::start(&[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_BACKEND", "airflow"),
            ("MAESTRO_AIRFLOW_URL", &airflow),
            ("MAESTRO_AIRFLOW_TOKEN", "airflow-token"),
            ("MAESTRO_UPSTREAM_TIMEOUT_MS", TIMEOUT_MS),
            ("MAESTRO_REDIS_URL", &redis),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_LOG_FORMAT", "json"),
        ]);
        let addr = maestro.addr();
        (maestro, addr)
    })
    .await
    .unwrap()
}

/// Acme's execute of the DAG with `key`, sent to the instance at `addr`:
/// the status, the `Retry-After` header, whether it is a replay, and the
/// body.
async fn execute(addr: &str, key: &str) -> reqwest::Result<(StatusCode, Option<u64>, bool, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/platform/pipeline/execute"))
        .bearer_auth(token(ACME))
        .header("Idempotency-Key", key)
        .json(&json!({ "pipeline_id": DAG }))
        .send()
        .await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let replayed = replayed(&response);
    Ok((status, retry_after, replayed, response.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_instance_holding_the_key_was_killed_gets_its_run_and_starts_no_second() {
    // A slow upstream: its first post makes its run, then never answers.
    let (airflow, runs, mut posts) = fake_airflow::start(Duration::from_secs(3600)).await;
    let (mut first, first_addr) = airflow_gateway(&airflow).await;
    let (_second, second_addr) = airflow_gateway(&airflow).await;
    // A key of its own, since the Redis server may outlive one test run.
    let key = format!("killed-{}", uuid::Uuid::new_v4());

    // The first instance claims the key and posts the run, which Airflow
    // makes; before Airflow answers, the instance is killed.
    let lost = tokio::spawn({
        let key = key.clone();
        async move { execute(&first_addr, &key).await }
    });
    posts
        .recv()
        .await
        .expect("the first instance posts the run");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(lost.await.unwrap().is_err(), "the killed instance answered");
    assert_eq!(runs.lock().unwrap().len(), 1, "Airflow made the run");

    // The client retries with the key on the other instance, as the 409
    // tells it to, until the dead instance's claim passes its deadline.
    let patience = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    let (status, replayed, body) = loop {
        let (status, retry_after, replayed, body) = execute(&second_addr, &key).await.unwrap();
        if status != StatusCode::CONFLICT {
            break (status, replayed, body);
        }
        assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyInProgress");
        refused += 1;
        assert!(Instant::now() < patience, "the key stayed in flight");
        let retry_after = retry_after.expect("a 409 with Retry-After");
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
    };
    assert!(
        refused > 0,
        "the dead instance's claim was in flight at first, not released"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!replayed, "the retry ran: nothing had been kept");
    let made = runs.lock().unwrap()[0]["dag_run_id"].clone();
    assert_eq!(
        body["data"]["run_id"], made,
        "the answer is the run Airflow made"
    );
    assert_eq!(runs.lock().unwrap().len(), 1, "no second run");

    let (status, _, replayed, again) = execute(&second_addr, &key).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(replayed);
    assert_eq!(again, body);
    assert_eq!(runs.lock().unwrap().len(), 1);
}
