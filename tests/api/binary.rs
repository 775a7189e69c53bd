//! The real `maestro` binary: start-up, the embedded default's banner,
//! `maestro token`, logs without tokens, and graceful shutdown.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    helpers::{ACME, ACTIVE, SECRET, fixture, token},
    maestro::{self, Maestro},
};

// These tests are about the binary itself (start-up, the embedded default,
// `maestro token`, shutdown), which the backend does not change; the
// Platform-API gateway's own logs are checked in `platform_api.rs`.

#[tokio::test]
async fn the_binary_serves_the_contract_and_logs_each_request_without_its_token() {
    let mut maestro = Maestro::start_with_fixture();
    let base = format!("http://{}", maestro.addr());
    let client = reqwest::Client::new();
    let token = token(ACME);

    let response = client
        .post(format!("{base}/platform/pipeline/execute"))
        .bearer_auth(&token)
        .json(&json!({"pipeline_id": ACTIVE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();
    let refused = client
        .get(format!("{base}/platform/pipelines"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    maestro.terminate();
    assert!(maestro.wait_exit().success());

    let output = maestro.all_output();
    assert!(!output.contains(&token), "a token reached the logs");
    assert!(
        !output.contains("not.a.token"),
        "a refused token reached the logs"
    );
    assert!(!output.contains(SECRET), "the secret reached the logs");
    let access = maestro.wait_for(|line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "answered" && event["span"]["route"] == "/platform/pipeline/execute")
            .then_some(event)
    });
    assert_eq!(access["status"], 200);
    let access = &access["span"];
    assert_eq!(access["customer"], ACME);
    assert_eq!(access["pipeline_id"], ACTIVE);
    assert_eq!(access["run_id"], run_id.as_str());
    assert!(access["request_id"].is_string());
}

#[tokio::test]
async fn the_embedded_default_prints_a_token_and_a_curl_line_that_works() {
    let maestro = Maestro::start(&[("MAESTRO_BIND", "127.0.0.1:0")]);
    let token =
        maestro.wait_for(|line| line.trim().strip_prefix("export TOKEN=").map(str::to_owned));
    let curl = maestro.wait_for(|line| {
        let line = line.trim();
        line.starts_with("curl -s -X POST").then(|| line.to_owned())
    });
    let output = Command::new("sh")
        .args(["-c", &curl])
        .env("TOKEN", &token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["status"], true, "{body}");
    assert!(
        body["data"]["run_id"]
            .as_str()
            .unwrap()
            .starts_with("manual__"),
        "{body}"
    );
    assert!(
        !maestro.stderr().contains(&token),
        "the token reached the log"
    );
}

#[test]
fn the_embedded_default_refuses_a_public_address() {
    let output = maestro::command()
        .arg("serve")
        .env("MAESTRO_BIND", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn maestro_token_mints_a_token_the_service_accepts() {
    let output = maestro::command()
        .args(["token", "--customer", ACME, "--subject", "ops"])
        .env("MAESTRO_JWT_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let app = crate::helpers::TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/platform/pipelines"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 3);

    let without_secret = maestro::command()
        .args(["token", "--customer", ACME])
        .output()
        .unwrap();
    assert!(!without_secret.status.success());
}

/// Opens a connection and sends an execute whose body is cut short: the
/// request is in flight until the rest is written.
fn start_slow_execute(addr: &str) -> (TcpStream, String) {
    let body = json!({"pipeline_id": ACTIVE}).to_string();
    let (head, tail) = body.split_at(10);
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /platform/pipeline/execute HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        token(ACME),
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    (stream, tail.to_owned())
}

/// Writes the rest of a slow request and reads its whole answer.
fn finish_slow_execute(mut stream: TcpStream, tail: &str) -> String {
    stream.write_all(tail.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("run_id") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(
            read > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn sigterm_lets_every_in_flight_request_finish_then_exits_zero() {
    let mut maestro = Maestro::start_with_fixture();
    let addr = maestro.addr();
    let slow: Vec<_> = (0..8).map(|_| start_slow_execute(&addr)).collect();
    maestro.wait_for_in_flight(8);

    maestro.terminate();
    maestro.wait_for(|line| line.contains("shutting down").then_some(()));
    assert!(
        maestro.child.try_wait().unwrap().is_none(),
        "exited with requests in flight"
    );

    let mut run_ids = std::collections::HashSet::new();
    for (stream, tail) in slow {
        let answer = finish_slow_execute(stream, &tail);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let body: Value = serde_json::from_str(body).unwrap();
        run_ids.insert(body["data"]["run_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        run_ids.len(),
        8,
        "every accepted request started its own run"
    );

    let status = maestro.wait_exit();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn after_the_grace_period_the_process_exits_even_with_a_request_stuck() {
    let fixture = fixture();
    let mut maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_LOG_FORMAT", "json"),
        ("MAESTRO_SHUTDOWN_GRACE_SECONDS", "1"),
    ]);
    let addr = maestro.addr();
    let (_stuck, _never_sent) = start_slow_execute(&addr);
    maestro.wait_for_in_flight(1);

    let signalled = Instant::now();
    maestro.terminate();
    let status = maestro.wait_exit();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    assert!(maestro.stderr().contains("grace period over"));
}
