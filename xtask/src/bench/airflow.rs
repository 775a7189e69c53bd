//! `cargo xtask bench --backend airflow`: the latency Maestro adds in
//! front of a real Apache Airflow 3, and the token exchanges it makes.
//!
//! Airflow is started with the e2e harness's functions (a home of its own
//! under `target/`), and one DAG of the test DAGs is unpaused. The same
//! load generator then sends the same number of requests over the same
//! number of connections four times, one after the other: get-pipeline
//! straight to Airflow (`GET /api/v2/dags/{id}/details`) and through
//! Maestro (`GET /platform/pipeline/{id}`), then execute straight to
//! Airflow (`POST /api/v2/dags/{id}/dagRuns`) and through Maestro
//! (`POST /platform/pipeline/execute`). Maestro logs each token exchange
//! (at debug level, for its token module only), and those lines are
//! counted.

use std::{
    env, fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::{
    HeaderMap, Method,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use serde_json::{Value, json};

use super::{Args, STARTUP_TIMEOUT, mint_token, random_secret, report, unix_now};
use crate::{
    e2e_airflow,
    load::{self, LoadReport, LoadSpec, RequestTemplate},
    process::{ChildGuard, free_local_addr},
};

/// The DAG the bench reads and triggers: customer `globex`'s one that
/// succeeds, from `tests/airflow/dags/maestro_e2e.py`.
const DAG_ID: &str = "aa87333e_4d68_49cf_9995_a8f84fe46fa0";
const CUSTOMER: &str = "globex";

/// The line Maestro logs for each exchange of credentials for a token.
const TOKEN_EXCHANGE: &str = "exchanged credentials for an Airflow token";

/// How long Airflow may take to become healthy, and to parse the DAGs.
const AIRFLOW_STARTUP: Duration = Duration::from_secs(300);
const DAG_PARSE_TIMEOUT: Duration = Duration::from_secs(120);

/// The issue's target for the latency Maestro adds, at the median.
const ADDED_P50_TARGET_MICROS: i64 = 2_000;

/// One endpoint, measured straight and through Maestro.
struct Pair {
    name: &'static str,
    direct: LoadReport,
    maestro: LoadReport,
}

/// Runs the Airflow bench with the release `maestro` at `maestro`.
///
/// # Errors
/// When Airflow or Maestro cannot be started or set up, or, without
/// `--no-check`, when a target is missed.
pub(super) fn run(args: &Args, maestro: &Path) -> anyhow::Result<()> {
    let load_before = load_average();
    let up = e2e_airflow::start("python3", "airflow-bench-home", AIRFLOW_STARTUP, || Ok(()))?;
    let airflow = SocketAddr::from((Ipv4Addr::LOCALHOST, up.port));

    let token = airflow_token(airflow, &up.password)?;
    wait_for_dag(airflow, &token)?;
    let (status, _) = call(
        airflow,
        "PATCH",
        &format!("/api/v2/dags/{DAG_ID}"),
        Some(&token),
        Some(&json!({"is_paused": false})),
    )?;
    if status != 200 {
        bail!("unpausing {DAG_ID} answered {status}");
    }

    let secret = random_secret();
    let log = up.home.join("maestro-bench.log");
    let output =
        fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let addr = free_local_addr()?;
    let mut command = Command::new(maestro);
    command.arg("serve");
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("MAESTRO_") {
            command.env_remove(name);
        }
    }
    command
        .env("MAESTRO_BIND", addr.to_string())
        .env("MAESTRO_JWT_HS256_SECRET", &secret)
        .env("MAESTRO_BACKEND", "airflow")
        .env("MAESTRO_AIRFLOW_URL", &up.url)
        .env("MAESTRO_AIRFLOW_USERNAME", e2e_airflow::USERNAME)
        .env("MAESTRO_AIRFLOW_PASSWORD", &up.password)
        .env("MAESTRO_UPSTREAM_TIMEOUT_MS", "30000")
        .env("MAESTRO_LOG_FORMAT", "json")
        // Warnings, and the token module's line per exchange: nothing per
        // request, so logging costs the measured path nothing.
        .env("RUST_LOG", "warn,adapter_airflow::token=debug")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let pairs = runtime.block_on(async {
        let mut server = ChildGuard::spawn("maestro", &mut command)?;
        server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
        let jwt = mint_token(&secret, CUSTOMER, unix_now()?)?;
        let spec = |target, request| LoadSpec {
            addr: target,
            connections: args.airflow_connections,
            requests: args.airflow_requests,
            warmup: args.airflow_warmup,
            request,
        };
        let plan = format!(
            "{} warm-up + {} requests over {} connections",
            report::thousands(args.airflow_warmup),
            report::thousands(args.airflow_requests),
            args.airflow_connections
        );
        let mut pairs = Vec::new();
        for (name, direct, through) in [
            (
                "get pipeline",
                request(
                    Method::GET,
                    &format!("/api/v2/dags/{DAG_ID}/details"),
                    &token,
                    None,
                )?,
                request(
                    Method::GET,
                    &format!("/platform/pipeline/{DAG_ID}"),
                    &jwt,
                    None,
                )?,
            ),
            (
                "execute",
                request(
                    Method::POST,
                    &format!("/api/v2/dags/{DAG_ID}/dagRuns"),
                    &token,
                    Some(json!({"logical_date": null})),
                )?,
                request(
                    Method::POST,
                    "/platform/pipeline/execute",
                    &jwt,
                    Some(json!({"pipeline_id": DAG_ID})),
                )?,
            ),
        ] {
            println!("== {name}, straight to Airflow: {plan}");
            let direct = load::run(&spec(airflow, direct)).await?;
            println!("== {name}, through Maestro: {plan}");
            let maestro = load::run(&spec(addr, through)).await?;
            pairs.push(Pair {
                name,
                direct,
                maestro,
            });
        }
        drop(server);
        anyhow::Ok(pairs)
    })?;
    let load_after = load_average();

    let text =
        fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let exchanges = text
        .lines()
        .filter(|line| line.contains(TOKEN_EXCHANGE))
        .count();
    // Leave the DAG as the tests expect it, although the home is thrown
    // away with the next start anyway.
    let _ = call(
        airflow,
        "PATCH",
        &format!("/api/v2/dags/{DAG_ID}"),
        Some(&token),
        Some(&json!({"is_paused": true})),
    );
    drop(up);

    let mut missed = Vec::new();
    println!();
    println!(
        "Maestro in front of Apache Airflow 3.3.2 (airflow standalone, SQLite), {} connections, {} requests per target after {} warm-up; load average {} before, {} after",
        args.airflow_connections,
        report::thousands(args.airflow_requests),
        report::thousands(args.airflow_warmup),
        load_before,
        load_after
    );
    println!();
    println!(
        "| endpoint | direct p50 | direct p99 | Maestro p50 | Maestro p99 | added p50 | added p99 | ratio p50 | ratio p99 | non-2xx direct / Maestro |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for pair in &pairs {
        let quantile = |report: &LoadReport, q: f64| {
            i64::try_from(report.latency.value_at_quantile(q)).unwrap_or(i64::MAX)
        };
        let (d50, d99) = (quantile(&pair.direct, 0.5), quantile(&pair.direct, 0.99));
        let (m50, m99) = (quantile(&pair.maestro, 0.5), quantile(&pair.maestro, 0.99));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            pair.name,
            millis(d50),
            millis(d99),
            millis(m50),
            millis(m99),
            millis(m50 - d50),
            millis(m99 - d99),
            ratio(m50, d50),
            ratio(m99, d99),
            failed(&pair.direct),
            failed(&pair.maestro),
        );
        if m50 - d50 > ADDED_P50_TARGET_MICROS {
            missed.push(format!(
                "{}: added p50 {} over the 2 ms target",
                pair.name,
                millis(m50 - d50)
            ));
        }
        if failed(&pair.maestro) > 0 {
            missed.push(format!("{}: Maestro answered non-2xx", pair.name));
        }
        if let Some(err) = &pair.maestro.first_transport_error {
            eprintln!(
                "{} through Maestro: first transport error: {err}",
                pair.name
            );
        }
        if !pair.maestro.failures_by_status.is_empty() {
            eprintln!(
                "{} through Maestro answered {:?}",
                pair.name, pair.maestro.failures_by_status
            );
        }
    }
    println!();
    let requests = 2 * (args.airflow_requests + args.airflow_warmup);
    println!(
        "Token exchanges (`POST /auth/token`) by Maestro: {exchanges} for {} requests",
        report::thousands(requests)
    );
    if exchanges != 1 {
        missed.push(format!("{exchanges} token exchanges, not 1"));
    }
    for miss in &missed {
        eprintln!("missed: {miss}");
    }
    if !missed.is_empty() && !args.no_check {
        bail!("{} of the Airflow targets missed", missed.len());
    }
    Ok(())
}

/// Non-2xx answers and requests without an answer.
fn failed(report: &LoadReport) -> u64 {
    report.non_2xx() + report.transport_errors
}

fn millis(micros: i64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn ratio(numerator: i64, denominator: i64) -> String {
    if denominator > 0 {
        format!("{:.2}×", numerator as f64 / denominator as f64)
    } else {
        "–".to_owned()
    }
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` has them.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A request with a bearer token and, when given, a JSON body.
fn request(
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<RequestTemplate> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a header value")?,
    );
    let body = match body {
        Some(body) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Bytes::from(serde_json::to_vec(&body)?)
        }
        None => Bytes::new(),
    };
    Ok(RequestTemplate {
        method,
        path: path.to_owned(),
        headers,
        body,
    })
}

/// The bench's own token for Airflow's API.
fn airflow_token(airflow: SocketAddr, password: &str) -> anyhow::Result<String> {
    let (status, answer) = call(
        airflow,
        "POST",
        "/auth/token",
        None,
        Some(&json!({"username": e2e_airflow::USERNAME, "password": password})),
    )?;
    if !(200..300).contains(&status) {
        bail!("POST /auth/token answered {status}");
    }
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("POST /auth/token answered without an access_token")
}

/// Waits until Airflow's DAG processor has parsed the bench's DAG.
fn wait_for_dag(airflow: SocketAddr, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAG_PARSE_TIMEOUT;
    loop {
        let (status, _) = call(
            airflow,
            "GET",
            &format!("/api/v2/dags/{DAG_ID}"),
            Some(token),
            None,
        )?;
        if status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Airflow did not know {DAG_ID} within {DAG_PARSE_TIMEOUT:?} (last: {status})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One request to Airflow on a connection of its own, for the set-up: the
/// status and the body as JSON (`null` when it is not JSON).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to Airflow at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("{method} {path}: no answer from Airflow"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: not an HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("{method} {path}: no status in the answer"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_latency_is_shown_in_milliseconds_and_ratios_guard_against_zero() {
        assert_eq!(millis(1_234), "1.23 ms");
        assert_eq!(millis(-500), "-0.50 ms");
        assert_eq!(ratio(3_000, 2_000), "1.50×");
        assert_eq!(ratio(3_000, 0), "–");
    }

    #[test]
    fn requests_carry_the_bearer_token_and_json_only_with_a_body() {
        let get = request(Method::GET, "/a", "t0k3n", None).expect("request");
        assert_eq!(get.headers[AUTHORIZATION], "Bearer t0k3n");
        assert!(get.headers.get(CONTENT_TYPE).is_none());
        assert!(get.body.is_empty());
        let post = request(Method::POST, "/b", "t0k3n", Some(json!({"x": 1}))).expect("request");
        assert_eq!(post.headers[CONTENT_TYPE], "application/json");
        assert_eq!(post.body, Bytes::from_static(br#"{"x":1}"#));
    }
}
