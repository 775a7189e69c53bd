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

/// `maestro` on the memory backend, limiting each customer to 60 requests
/// a minute with a burst of `burst`, shared through the test Redis, and
/// its address. Redis is given a second to answer a check: what is tested
/// here is the sharing; the fallback has tests of its own.
async fn limited_instance(burst: u32) -> (Maestro, String) {
    let redis = redis_url();
    tokio::task::spawn_blocking(move || {
        let maestro = Maestro::start(&[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_REDIS_URL", &redis),
            ("MAESTRO_RATE_LIMIT_PER_MINUTE", "60"),
            ("MAESTRO_RATE_LIMIT_BURST", &burst.to_string()),
            ("MAESTRO_RATE_LIMIT_REDIS_TIMEOUT_MS", "1000"),
            ("MAESTRO_LOG_FORMAT", "json"),
        ]);
        let addr = maestro.addr();
        (maestro, addr)
    })
    .await
    .unwrap()
}

/// The sum of an instance's `maestro_rate_limit_fallbacks_total`.
async fn rate_limit_fallbacks(addr: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with("maestro_rate_limit_fallbacks_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_under_load_hold_the_configured_limit_together_not_twice_it() {
    const BURST: u32 = 20;
    let (_first, first) = limited_instance(BURST).await;
    let (_second, second) = limited_instance(BURST).await;
    // A customer of its own, since the Redis server may outlive one run.
    let customer = format!("limits-{}", uuid::Uuid::new_v4().simple());
    let token = token(&customer);

    // Four clients on each instance, 15 requests each: 120 in all, as fast
    // as they are answered.
    let started = Instant::now();
    let mut clients = Vec::new();
    for addr in [&first, &second] {
        for _ in 0..4 {
            let (addr, token) = (addr.clone(), token.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                for _ in 0..15 {
                    let response = client
                        .get(format!("http://{addr}/platform/pipelines"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
                    answers.push((response.status(), retry_after));
                }
                answers
            }));
        }
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let took = started.elapsed();

    let allowed = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    for (status, retry_after) in &answers {
        assert!(
            *status == StatusCode::OK
                || (*status == StatusCode::TOO_MANY_REQUESTS && *retry_after >= Some(1)),
            "{status} with Retry-After {retry_after:?}"
        );
    }
    // The burst, and one more a second for as long as the load lasted;
    // each instance alone would have allowed the burst, twice it in all.
    let refilled = usize::try_from(took.as_secs()).unwrap() + 1;
    println!("two instances: {allowed} of 120 requests allowed in {took:?} (burst {BURST})");
    assert!(allowed >= BURST as usize, "{allowed} allowed");
    assert!(
        allowed <= BURST as usize + refilled,
        "{allowed} allowed in {took:?}: more than the one limit"
    );
    assert_eq!(rate_limit_fallbacks(&first).await, 0);
    assert_eq!(rate_limit_fallbacks(&second).await, 0);
}
