//! Rate limits with `MAESTRO_REDIS_URL` set but Redis not answering: the
//! real `maestro` binary limits each customer on its own, as without
//! Redis, with the same 429 and `Retry-After`, counts every such check in
//! `maestro_rate_limit_fallbacks_total`, and says so in its log once, not
//! once a request. (Instances sharing a real Redis: `tests/e2e/redis.rs`.)

use reqwest::StatusCode;

use crate::helpers::{SECRET, token};
use crate::maestro::Maestro;

/// A Redis URL on a loopback port nobody listens on.
fn closed_redis_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

/// The sum of `maestro_rate_limit_fallbacks_total` over its reasons.
async fn fallbacks(addr: &str) -> u64 {
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

#[tokio::test]
async fn without_an_answer_from_redis_each_instance_limits_on_its_own_and_says_so() {
    let redis = closed_redis_port();
    let maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_REDIS_URL", &redis),
        ("MAESTRO_RATE_LIMIT_PER_MINUTE", "60"),
        ("MAESTRO_RATE_LIMIT_BURST", "3"),
        ("MAESTRO_LOG_FORMAT", "json"),
    ]);
    let addr = maestro.addr();
    let client = reqwest::Client::new();

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = client
            .get(format!("http://{addr}/platform/pipelines"))
            .bearer_auth(token("acme"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["detail"]["exception_type"], "RateLimited");
        }
    }

    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(fallbacks(&addr).await, 4, "every check fell back");
    maestro.wait_for(|line| line.contains("shared rate-limit store").then_some(()));
    let lines = maestro
        .all_output()
        .lines()
        .filter(|line| line.contains("shared rate-limit store"))
        .count();
    assert_eq!(lines, 1, "one line, not one a request");
    assert!(
        !maestro.all_output().contains(&redis),
        "the URL is not logged"
    );
}
