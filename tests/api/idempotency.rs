//! `Idempotency-Key` on execute: replays, reuse with another pipeline,
//! invalid keys, concurrency, and two instances sharing one Redis.

use std::{collections::HashSet, sync::Arc};

use reqwest::Response;
use serde_json::{Value, json};

use crate::{
    fake_platform::{FakePlatform, memory_config},
    helpers::{
        ACME, ACTIVE, Backend, GLOBEX, GLOBEX_PIPELINE, MISSING, SCHEDULED, TestApp, json_of,
        on_each_backend, shouted, token,
    },
};

async fn execute_with_key(app: &TestApp, customer: &str, pipeline_id: &str, key: &str) -> Response {
    app.client
        .post(app.url("/platform/pipeline/execute"))
        .bearer_auth(token(customer))
        .header("Idempotency-Key", key)
        .json(&json!({"pipeline_id": pipeline_id}))
        .send()
        .await
        .unwrap()
}

async fn run_count(app: &TestApp, customer: &str, pipeline_id: &str) -> String {
    let response = app.list_runs(customer, pipeline_id, "").await;
    response.headers()["x-total-count"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn replayed(response: &Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

on_each_backend!(a_repeat_with_the_same_key_gets_the_first_answer_and_starts_nothing);
async fn a_repeat_with_the_same_key_gets_the_first_answer_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let first = execute_with_key(&app, ACME, ACTIVE, "order-42").await;
    assert!(!replayed(&first));
    let (status, first) = json_of(first).await;
    assert_eq!(status, 200);

    // The same pipeline spelled another way is the same request.
    for spelling in [ACTIVE.to_owned(), shouted(ACTIVE)] {
        let again = execute_with_key(&app, ACME, &spelling, "order-42").await;
        assert!(replayed(&again));
        let (status, body) = json_of(again).await;
        assert_eq!(status, 200);
        assert_eq!(body, first);
    }
    assert_eq!(run_count(&app, ACME, ACTIVE).await, "1");

    // Without a key, execute runs again as always.
    app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(run_count(&app, ACME, ACTIVE).await, "2");
}

on_each_backend!(the_same_key_for_another_pipeline_is_422_and_starts_nothing);
async fn the_same_key_for_another_pipeline_is_422_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    assert_eq!(
        execute_with_key(&app, ACME, ACTIVE, "k").await.status(),
        200
    );
    let (status, body) = json_of(execute_with_key(&app, ACME, SCHEDULED, "k").await).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyReused");
    assert_eq!(run_count(&app, ACME, SCHEDULED).await, "0");
}

on_each_backend!(keys_are_scoped_to_the_customer);
async fn keys_are_scoped_to_the_customer(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    assert_eq!(
        execute_with_key(&app, ACME, ACTIVE, "shared")
            .await
            .status(),
        200
    );
    let response = execute_with_key(&app, GLOBEX, GLOBEX_PIPELINE, "shared").await;
    assert!(!replayed(&response));
    assert_eq!(response.status(), 200);
    assert_eq!(run_count(&app, GLOBEX, GLOBEX_PIPELINE).await, "1");
}

on_each_backend!(a_final_refusal_is_kept_and_replayed);
async fn a_final_refusal_is_kept_and_replayed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, first) = json_of(execute_with_key(&app, ACME, MISSING, "gone").await).await;
    assert_eq!(status, 404);
    let again = execute_with_key(&app, ACME, MISSING, "gone").await;
    assert!(replayed(&again));
    let (status, body) = json_of(again).await;
    assert_eq!(status, 404);
    assert_eq!(body, first);
}

#[tokio::test]
async fn an_invalid_key_is_400_invalid_idempotency_key_and_starts_nothing() {
    let app = TestApp::spawn().await;
    let too_long = "k".repeat(256);
    for key in ["", " ", "with space", "caf\u{e9}", too_long.as_str()] {
        let response = app
            .client
            .post(app.url("/platform/pipeline/execute"))
            .bearer_auth(token(ACME))
            .header("Idempotency-Key", key.as_bytes())
            .json(&json!({"pipeline_id": ACTIVE}))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{key:?}");
        assert_eq!(
            body["detail"]["exception_type"], "InvalidIdempotencyKey",
            "{key:?}"
        );
    }
    assert_eq!(run_count(&app, ACME, ACTIVE).await, "0");
    let longest = "k".repeat(255);
    assert_eq!(
        execute_with_key(&app, ACME, ACTIVE, &longest)
            .await
            .status(),
        200
    );
}

/// Sends `count` executes with one key at once to the given gateways, in
/// turn, and checks that every answer is the one stored 200 or a 409.
async fn concurrent_executes(apps: &[Arc<TestApp>], key: &str, count: usize) -> HashSet<String> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let response = execute_with_key(&app, ACME, ACTIVE, &key).await;
                let retry_after = response.headers().get("retry-after").cloned();
                let (status, body) = json_of(response).await;
                (status, body, retry_after)
            })
        })
        .collect();
    let mut run_ids = HashSet::new();
    for task in tasks {
        let (status, body, retry_after) = task.await.unwrap();
        match status {
            200 => {
                run_ids.insert(body["data"]["run_id"].as_str().unwrap().to_owned());
            }
            409 => {
                assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyInProgress");
                assert!(retry_after.is_some(), "a 409 without Retry-After");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    run_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_executes_with_one_key_start_exactly_one_run() {
    let app = Arc::new(TestApp::spawn().await);
    let run_ids = concurrent_executes(std::slice::from_ref(&app), "same-key", 200).await;
    assert_eq!(run_ids.len(), 1, "every 200 is the one stored answer");
    assert_eq!(run_count(&app, ACME, ACTIVE).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: MAESTRO_TEST_REDIS_URL=$(scripts/redis-test-server.sh)"]
async fn two_instances_sharing_redis_start_exactly_one_run_for_one_key() {
    let redis = std::env::var("MAESTRO_TEST_REDIS_URL").expect("MAESTRO_TEST_REDIS_URL");
    let upstream = FakePlatform::start(memory_config(1000)).await;
    let env = vec![("MAESTRO_REDIS_URL", redis)];
    let first = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env.clone()).await);
    let second = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env).await);

    // A key of its own, since the Redis server may outlive one test run.
    let key = format!("shared-{}", uuid::Uuid::new_v4());
    let run_ids = concurrent_executes(&[first.clone(), second.clone()], &key, 200).await;
    assert_eq!(run_ids.len(), 1, "both instances answer with the one run");
    assert_eq!(run_count(&first, ACME, ACTIVE).await, "1");
    let triggers = upstream
        .requests()
        .await
        .iter()
        .filter(|request| request.url.path().ends_with("/pipeline/execute"))
        .count();
    assert_eq!(triggers, 1, "the upstream saw exactly one execute");

    // A replay from the other instance after the fact.
    let again = execute_with_key(&second, ACME, ACTIVE, &key).await;
    assert!(replayed(&again));
    let body: Value = again.json().await.unwrap();
    assert!(run_ids.contains(body["data"]["run_id"].as_str().unwrap()));
}
