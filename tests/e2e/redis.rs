//! Two `maestro` instances sharing one real Redis: `Idempotency-Key`
//! holds across them. Needs `MAESTRO_TEST_REDIS_URL`
//! (`scripts/redis-test-server.sh` starts a server and prints it).

use std::sync::Arc;

use serde_json::Value;

use crate::fake_platform::{FakePlatform, memory_config};
use crate::helpers::{ACME, ACTIVE, TestApp, concurrent_executes, replayed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
