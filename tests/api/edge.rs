//! The edge, through the real binary: slow, idle and flooding clients cost
//! it little (the header-read, idle and body timeouts, the cap on open
//! connections), `/ready` tells the truth (token keys, backend, Redis, a
//! cached answer), and SIGTERM drains without refusing anyone early.
//!
//! The socket timeouts can only be seen by waiting for them: these tests
//! set them to a second or less and check that a socket is closed within a
//! bounded window, by reading it rather than by sleeping.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::{
    fake_platform::SERVICE_TOKEN,
    helpers::{ACME, ACTIVE, SECRET, TestApp, fixture, token},
    jwks,
    maestro::Maestro,
};

/// The binary over the test fixture, logging JSON, with more settings.
fn start(env: &[(&str, &str)]) -> Maestro {
    let fixture = fixture();
    let mut all = vec![
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_MEMORY_RUN_SECONDS", "3600"),
        ("MAESTRO_LOG_FORMAT", "json"),
    ];
    all.extend_from_slice(env);
    Maestro::start(&all)
}

/// How long a test waits for something that must happen before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// How much later than its timeout a socket may be closed: the watchdog
/// wakes at the deadline, so this is only scheduling on a busy machine.
const MARGIN: Duration = Duration::from_millis(900);

/// Sends `raw` on a new connection to `addr`.
fn send(addr: &str, raw: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    stream.flush().unwrap();
    stream
}

/// A keep-alive `GET path`.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: maestro\r\n\r\n")
}

/// Reads one whole answer (head and `Content-Length` body) off `stream`.
fn read_answer(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).unwrap();
        assert!(
            read > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.push(byte[0]);
    }
    let head = String::from_utf8(answer).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

/// Waits for the server to close `stream`, and returns what it sent
/// before and how long that took; fails after `PATIENCE`.
fn wait_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
            Err(err) => panic!(
                "still open after {:?} ({err}); received {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&received)
            ),
        }
    }
    (String::from_utf8(received).unwrap(), started.elapsed())
}

/// Asserts that `took` is the timeout `expected`, give or take scheduling.
fn assert_about(took: Duration, expected: Duration, what: &str) {
    eprintln!("{what}: {took:?} for a timeout of {expected:?}");
    assert!(
        took + Duration::from_millis(100) >= expected,
        "{what} after {took:?}, before the timeout of {expected:?}"
    );
    assert!(
        took <= expected + MARGIN,
        "{what} after {took:?}, long after the timeout of {expected:?}"
    );
}

/// The value of the metric line starting with `series` at `addr`.
fn metric(addr: &str, series: &str) -> Option<f64> {
    let mut stream = send(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    let answer = read_answer(&mut stream);
    answer
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `GET path` on a new connection, closed after the answer; `None` when
/// the connection is refused or reset.
fn exchange(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: maestro\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// An execute whose body stops after its first bytes: in flight until the
/// rest is written.
fn start_slow_execute(addr: &str) -> (TcpStream, String) {
    let body = json!({"pipeline_id": ACTIVE}).to_string();
    let (head, tail) = body.split_at(10);
    let stream = send(
        addr,
        &format!(
            "POST /platform/pipeline/execute HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
            token(ACME),
            body.len()
        ),
    );
    (stream, tail.to_owned())
}

// Connections.

#[test]
fn a_connection_that_sends_half_a_head_or_nothing_is_closed_at_the_header_timeout() {
    let maestro = start(&[
        ("MAESTRO_HEADER_READ_TIMEOUT_SECONDS", "1"),
        ("MAESTRO_IDLE_TIMEOUT_SECONDS", "30"),
    ]);
    let addr = maestro.addr();
    let mut half_a_head = send(&addr, "GET /health HTTP/1.1\r\nHost: x\r\n");
    let mut silent = TcpStream::connect(&addr).unwrap();

    let (answer, took) = wait_closed(&mut half_a_head);
    assert_eq!(answer, "", "nothing is answered to half a head");
    assert_about(took, Duration::from_secs(1), "half a head closed");
    let (answer, _) = wait_closed(&mut silent);
    assert_eq!(answer, "");

    assert_eq!(
        metric(
            &addr,
            r#"maestro_http_connections_closed_total{reason="header_timeout"}"#
        ),
        Some(2.0)
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_the_header_timeout() {
    let maestro = start(&[
        ("MAESTRO_HEADER_READ_TIMEOUT_SECONDS", "0.5"),
        ("MAESTRO_IDLE_TIMEOUT_SECONDS", "1.5"),
    ]);
    let addr = maestro.addr();
    let mut stream = send(&addr, &get("/health"));
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Idle: closed at 1.5 s, not at the header timeout's 0.5 s.
    let (rest, took) = wait_closed(&mut stream);
    assert_eq!(rest, "");
    assert_about(took, Duration::from_millis(1500), "idle connection closed");
    assert_eq!(
        metric(
            &addr,
            r#"maestro_http_connections_closed_total{reason="idle_timeout"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_connection_with_a_request_in_flight_is_not_closed_by_the_idle_or_header_timeout() {
    let maestro = start(&[
        ("MAESTRO_HEADER_READ_TIMEOUT_SECONDS", "0.5"),
        ("MAESTRO_IDLE_TIMEOUT_SECONDS", "0.5"),
        ("MAESTRO_BODY_TIMEOUT_SECONDS", "30"),
    ]);
    let addr = maestro.addr();
    let (mut stream, tail) = start_slow_execute(&addr);
    maestro.wait_for_in_flight(1);

    // Three times both timeouts, with the request in flight: still open.
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence from an open connection, got {other:?}"),
    }

    stream.write_all(tail.as_bytes()).unwrap();
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("run_id"), "{answer}");
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_in_the_envelope_at_the_body_timeout() {
    let maestro = start(&[("MAESTRO_BODY_TIMEOUT_SECONDS", "1")]);
    let addr = maestro.addr();
    let (mut stream, _never_sent) = start_slow_execute(&addr);

    let (answer, took) = wait_closed(&mut stream);
    assert_about(took, Duration::from_secs(1), "408 answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let body: Value =
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        body,
        json!({"detail": {"status": false, "exception_type": "RequestTimeout",
            "traceback": "The request body did not arrive within 1 s.", "data": null}})
    );
    let access = maestro.wait_for(|line| {
        let event: Value = serde_json::from_str(line).ok()?;
        (event["message"] == "answered" && event["status"] == 408).then_some(event)
    });
    assert_eq!(access["span"]["route"], "/platform/pipeline/execute");
}

#[test]
fn past_the_connection_cap_new_connections_wait_and_open_ones_are_served() {
    // 64 descriptors, a cap of 16, and 80 silent sockets: without the cap
    // the process would run out of descriptors and fail every accept.
    let maestro = Maestro::start_with_open_file_limit(
        64,
        &[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_LOG_FORMAT", "json"),
            ("MAESTRO_MAX_CONNECTIONS", "16"),
            ("MAESTRO_HEADER_READ_TIMEOUT_SECONDS", "0.5"),
            ("MAESTRO_IDLE_TIMEOUT_SECONDS", "60"),
        ],
    );
    let addr = maestro.addr();
    let mut open = send(&addr, &get("/health"));
    assert!(read_answer(&mut open).starts_with("HTTP/1.1 200"));

    let silent: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    maestro.wait_for(|line| line.contains("connection cap reached").then_some(()));

    // An open connection is served at once, cap or not.
    let asked = Instant::now();
    open.write_all(get("/health").as_bytes()).unwrap();
    assert!(read_answer(&mut open).starts_with("HTTP/1.1 200"));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A new one waits behind the silent ones, each closed by the header
    // timeout as its turn comes, and is then answered.
    let asked = Instant::now();
    let mut new = send(
        &addr,
        "GET /health HTTP/1.1\r\nHost: maestro\r\nConnection: close\r\n\r\n",
    );
    let answer = read_answer(&mut new);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!(
        "a new connection past the cap answered after {:?}",
        asked.elapsed()
    );

    open.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let metrics = read_answer(&mut open);
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert!(value("maestro_http_connections_open ") <= 16.0, "{metrics}");
    assert!(
        value(r#"maestro_http_connections_closed_total{reason="header_timeout"}"#) >= 64.0,
        "{metrics}"
    );
    let log = maestro.stderr();
    assert!(
        !log.contains("cannot accept"),
        "the process ran out of descriptors: {log}"
    );
    drop(silent);
}

#[test]
fn on_sigterm_ready_turns_503_and_new_connections_are_served_until_the_delay_ends() {
    let delay = Duration::from_secs(2);
    let mut maestro = start(&[("MAESTRO_SHUTDOWN_DELAY_SECONDS", "2")]);
    let addr = maestro.addr();
    let (slow, tail) = start_slow_execute(&addr);
    maestro.wait_for_in_flight(1);
    let mut idle = send(&addr, &get("/health"));
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));

    let signalled = Instant::now();
    maestro.terminate();
    maestro.wait_for(|line| line.contains("shutting down").then_some(()));

    // A client that keeps opening connections: each is served until the
    // listener closes, after the delay; `/ready` says 503 all along. (A
    // connection the kernel took just as the listener closed is reset
    // rather than refused: the same end.)
    let mut served = 0;
    let refused_after = loop {
        let path = if served % 2 == 0 { "/health" } else { "/ready" };
        let Some(answer) = exchange(&addr, path) else {
            break signalled.elapsed();
        };
        let expected = if path == "/health" {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 503"
        };
        assert!(answer.starts_with(expected), "{path}: {answer}");
        if path == "/ready" {
            assert!(answer.ends_with(r#"{"status":"draining"}"#), "{answer}");
        }
        served += 1;
        assert!(
            signalled.elapsed() < PATIENCE,
            "still accepting {:?} after SIGTERM",
            signalled.elapsed()
        );
    };
    eprintln!("{served} connections served after SIGTERM; refused after {refused_after:?}");
    assert!(served > 0);
    assert!(
        refused_after >= delay,
        "refused {refused_after:?} after SIGTERM, within the delay"
    );
    assert!(
        TcpStream::connect(&addr).is_err(),
        "the listener stays closed"
    );
    maestro.wait_for(|line| line.contains("listener closed").then_some(()));

    // The idle keep-alive connection is closed with the listener; the
    // request in flight is still served.
    let (rest, _) = wait_closed(&mut idle);
    assert_eq!(rest, "");
    assert!(
        maestro.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    let mut slow = slow;
    slow.write_all(tail.as_bytes()).unwrap();
    let answer = read_answer(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(maestro.wait_exit().code(), Some(0));
}

// Readiness.

/// `/ready` of the service at `base`: its status and body.
async fn ready(base: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}/ready")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asks `/ready` until it answers `status`, and returns its body; fails
/// after `PATIENCE`.
async fn ready_becomes(base: &str, status: u16) -> Value {
    let started = Instant::now();
    loop {
        let (got, body) = ready(base).await;
        if got == status {
            return body;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "/ready still {got} {body}, not {status}"
        );
        // The answer is kept for a second: no use asking sooner.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_is_503_naming_the_token_keys_until_the_key_set_is_fetched() {
    let idp = MockServer::start().await;
    jwks::serve_key_set(&idp, ResponseTemplate::new(503)).await;
    let url = format!("{}/jwks.json", idp.uri());
    let maestro = jwks::start(&url, &[("MAESTRO_JWT_AUDIENCE", "maestro")]);
    let base = format!("http://{}", maestro.addr());

    let (status, body) = ready(&base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        json!({"status": "unavailable", "checks": {"auth_keys": "unavailable", "backend": "ok"}})
    );

    idp.reset().await;
    let keys = ResponseTemplate::new(200).set_body_json(jwks::key_set());
    jwks::serve_key_set(&idp, keys).await;
    maestro.wait_for(|line| line.contains("JWKS keys loaded").then_some(()));
    let body = ready_becomes(&base, 200).await;
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"auth_keys": "ok", "backend": "ok"}})
    );
}

/// A stand-in for Redis that answers `PING` with `PONG` and every other
/// command with `OK`, and that can be switched off: then it drops every
/// connection, and every new one at once.
struct FakeRedis {
    url: String,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl FakeRedis {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (accepting, held) = (up.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                held.lock().unwrap().push(stream.try_clone().unwrap());
                std::thread::spawn(move || answer_redis(stream));
            }
        });
        Self {
            url,
            up,
            connections,
        }
    }

    /// Stops answering: every connection is closed, new ones at once.
    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Reads RESP commands (`*<n>`, then `$<len>` and the argument for each)
/// and answers each.
fn answer_redis(stream: TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some(count) = line.trim().strip_prefix('*') else {
            return;
        };
        let mut command = Vec::new();
        for _ in 0..count.parse::<usize>().unwrap_or(0) {
            for _ in 0..2 {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
            }
            command.push(line.trim().to_ascii_uppercase());
        }
        let reply = if command.first().is_some_and(|name| name == "PING") {
            "+PONG\r\n"
        } else {
            "+OK\r\n"
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn ready_is_503_naming_redis_while_redis_does_not_answer() {
    let redis = FakeRedis::start();
    let fixture = fixture();
    let maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_REDIS_URL", redis.url.as_str()),
        ("MAESTRO_LOG_FORMAT", "json"),
    ]);
    let base = format!("http://{}", maestro.addr());
    let (status, body) = ready(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");

    redis.stop();
    let body = ready_becomes(&base, 503).await;
    assert_eq!(
        body,
        json!({"status": "unavailable", "checks": {"auth_keys": "ok", "backend": "ok", "redis": "unavailable"}})
    );
    let port = redis.url.rsplit(':').next().unwrap();
    assert!(!body.to_string().contains(port), "{body}");

    redis.resume();
    ready_becomes(&base, 200).await;
}

#[tokio::test]
async fn a_redis_down_at_start_leaves_the_service_up_and_unready_until_it_answers() {
    let redis = FakeRedis::start();
    redis.stop();
    let fixture = fixture();
    let maestro = Maestro::start(&[
        ("MAESTRO_BIND", "127.0.0.1:0"),
        ("MAESTRO_JWT_HS256_SECRET", SECRET),
        ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
        ("MAESTRO_REDIS_URL", redis.url.as_str()),
        ("MAESTRO_LOG_FORMAT", "json"),
    ]);
    let base = format!("http://{}", maestro.addr());
    let body = ready_becomes(&base, 503).await;
    assert_eq!(body["checks"]["redis"], "unavailable", "{body}");

    redis.resume();
    let body = ready_becomes(&base, 200).await;
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
}

#[tokio::test]
async fn ready_is_503_naming_the_backend_when_platform_api_health_answers_5xx() {
    const UPSTREAM_TEXT: &str = "upstream-health-diagnostic-0d4f";
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/health"))
        .respond_with(ResponseTemplate::new(500).set_body_string(UPSTREAM_TEXT))
        .mount(&upstream)
        .await;
    let url = format!("{}/api/v1", upstream.uri());
    let app = TestApp::gateway(url.clone(), Vec::new(), Vec::new()).await;

    let response = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    for secret in [UPSTREAM_TEXT, url.as_str(), SERVICE_TOKEN] {
        assert!(!text.contains(secret), "{text}");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({"status": "unavailable", "checks": {"auth_keys": "ok", "backend": "unavailable"}})
    );
}

#[tokio::test]
async fn a_flood_of_ready_probes_makes_at_most_two_upstream_health_calls() {
    let app = Arc::new(TestApp::spawn_platform_api(&[]).await);
    let probes: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let response = app.client.get(app.url("/ready")).send().await.unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 200);
    }
    let health_calls = app
        .upstream()
        .requests()
        .await
        .iter()
        .filter(|request| request.url.path().ends_with("/health"))
        .count();
    eprintln!("100 probes made {health_calls} upstream health calls");
    assert!(
        (1..=2).contains(&health_calls),
        "{health_calls} health calls"
    );
}
