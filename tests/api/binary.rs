//! The real `maestro` binary: start-up, the embedded default's banner,
//! `maestro token`, logs without tokens, and graceful shutdown.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    helpers::{ACME, ACTIVE, SECRET, token},
    maestro::{BINARY, Maestro},
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
    let output = Command::new(BINARY)
        .arg("serve")
        .env_clear()
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
    let output = Command::new(BINARY)
        .args(["token", "--customer", ACME, "--subject", "ops"])
        .env_clear()
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

    let without_secret = Command::new(BINARY)
        .args(["token", "--customer", ACME])
        .env_clear()
        .output()
        .unwrap();
    assert!(!without_secret.status.success());
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let mut maestro = Maestro::start_with_fixture();
    let addr = maestro.addr();
    let body = json!({"pipeline_id": ACTIVE}).to_string();
    let (head, tail) = body.split_at(10);

    // A request whose body is still arriving when the signal comes.
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /platform/pipeline/execute HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        token(ACME),
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    maestro.terminate();
    maestro.wait_for(|line| line.contains("shutting down").then_some(()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        maestro.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );

    stream.write_all(tail.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
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
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stream);

    let status = maestro.wait_exit();
    assert_eq!(status.code(), Some(0));
}
