//! `cargo xtask fuzz`: schemathesis, with all its checks, against the
//! release `maestro` and the OpenAPI document it serves, for a bounded
//! time. It fails on any finding but the contract's state errors.
//!
//! The steps: install `schemathesis` into a venv under `target/` unless it
//! is there already (as `cargo xtask e2e-airflow` installs Airflow); build
//! the release `maestro` and start it on a free loopback port on the
//! memory backend's demo set, with a fresh HS256 secret; mint a token of
//! the demo customer with `maestro token`; run `st run` against
//! `/openapi.json` with that token; read its event report and judge each
//! failed check.
//!
//! The one kind of finding let through: schemathesis sends schema-valid
//! requests in any order, so it pauses a pipeline and then executes or
//! pauses it again, and expects a 2xx. The contract answers those 400
//! `PipelinePaused`, `PipelineAlreadyPaused` and `PipelineNotPaused` (and
//! a key sent again with another pipeline 422 `IdempotencyKeyReused`, an
//! eleventh webhook 400 `TooManyWebhooks`, a webhook URL whose host
//! resolves to an inner address 400 `InvalidWebhookUrl`):
//! answers that depend on earlier requests, not on the request, which the
//! document describes. Everything else fails the run. No check is
//! excluded; `docs/fuzzing.md` says the same for readers.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::process::{ChildGuard, free_local_addr};

/// The schemathesis release the run is written against.
pub(crate) const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The customer of the memory backend's demo set: it owns three pipelines,
/// one of them paused (`adapter_memory::DEMO_CUSTOMER`).
const CUSTOMER: &str = "demo";

/// How long `maestro` may take to answer `GET /health` after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long schemathesis may take beyond its budget to finish the test
/// case in hand and write its reports, before it counts as hung.
const GRACE: Duration = Duration::from_secs(120);

/// The answers to schema-valid requests that depend on the state earlier
/// requests left, or on the world, as the contract has them:
/// `(status, exception_type)`. `TooManyWebhooks` comes once ten webhooks
/// were registered; `InvalidWebhookUrl`, for a URL of the documented form,
/// when its host is or resolves to an address webhooks may not call,
/// which depends on DNS at the time and no schema can state.
const STATE_ERRORS: [(u16, &str); 7] = [
    (400, "PipelinePaused"),
    (400, "PipelineAlreadyPaused"),
    (400, "PipelineNotPaused"),
    (400, "PipelineRunAlreadyFinished"),
    (400, "TooManyWebhooks"),
    (400, "InvalidWebhookUrl"),
    (422, "IdempotencyKeyReused"),
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The time budget of the run, in seconds (schemathesis's
    /// `--max-time`): fuzzing and the stateful phase repeat until it is
    /// spent.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// The most test cases per operation in each phase (schemathesis's
    /// `--max-examples`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    max_examples: u64,
    /// The Python to make the venv with.
    #[arg(long, default_value = "python3")]
    python: String,
    /// A `maestro` binary to fuzz instead of building the release one.
    #[arg(long)]
    maestro_bin: Option<PathBuf>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = crate::project_root().join("target");
    let venv = target.join("fuzz-venv");
    let work = target.join("fuzz");

    let step = Instant::now();
    crate::venv::ensure(
        &args.python,
        &venv,
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        "fuzz",
    )?;
    println!(
        "fuzz: schemathesis {SCHEMATHESIS_VERSION} ready in {:.0?}",
        step.elapsed()
    );

    let maestro = match &args.maestro_bin {
        Some(path) => path.clone(),
        None => crate::process::build_release_maestro()?,
    };
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let addr = free_local_addr()?;
    let log = work.join("maestro.log");
    let mut server = ChildGuard::spawn(
        "maestro",
        &mut maestro_command(&maestro, addr, &secret, &log)?,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(server.wait_until_healthy(addr, STARTUP_TIMEOUT))?;
    let token = mint_token(&maestro, &secret, args.seconds)?;
    println!(
        "fuzz: maestro on http://{addr}, customer `{CUSTOMER}` (log {})",
        log.display()
    );

    let step = Instant::now();
    let outcome = schemathesis(&venv, &work, addr, &token, args);
    drop(server);
    let reports = outcome?;
    println!("fuzz: schemathesis ran in {:.0?}", step.elapsed());

    let verdict = judge(&reports.events, &reports.summary);
    println!("{}", verdict.report());
    println!("fuzz: done in {:.0?}", started.elapsed());
    if verdict.passed() {
        Ok(())
    } else {
        eprintln!(
            "fuzz: schemathesis's own output is in {}, maestro's log in {}",
            reports.output.display(),
            log.display()
        );
        bail!("{}", verdict.headline())
    }
}

/// `maestro serve` on `addr` on the memory backend's demo set, verifying
/// with `secret`, its runs finishing at once (so that no queue fills), its
/// output in `log`, and nothing else of the caller's `MAESTRO_*` settings.
fn maestro_command(
    maestro: &Path,
    addr: SocketAddr,
    secret: &str,
    log: &Path,
) -> anyhow::Result<Command> {
    let output =
        fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(maestro);
    command.arg("serve");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MAESTRO_") {
            command.env_remove(name);
        }
    }
    command
        .env("MAESTRO_BIND", addr.to_string())
        .env("MAESTRO_BACKEND", "memory")
        .env("MAESTRO_MEMORY_RUN_SECONDS", "0")
        .env("MAESTRO_JWT_HS256_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    Ok(command)
}

/// A token of [`CUSTOMER`] from `maestro token`, valid for the run and an
/// hour more.
fn mint_token(maestro: &Path, secret: &str, seconds: u64) -> anyhow::Result<String> {
    let output = Command::new(maestro)
        .args(["token", "--customer", CUSTOMER, "--ttl-seconds"])
        .arg((seconds + 3600).to_string())
        .env("MAESTRO_JWT_HS256_SECRET", secret)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run maestro token")?;
    if !output.status.success() {
        bail!("maestro token failed ({})", output.status);
    }
    let token = String::from_utf8(output.stdout).context("maestro token printed no text")?;
    Ok(token.trim().to_owned())
}

/// What a schemathesis run left: its event stream, its summary, and where
/// its terminal output went.
struct Reports {
    events: String,
    summary: Value,
    output: PathBuf,
}

/// Runs `st run` with every check against `addr`, in `work`, and reads its
/// reports.
fn schemathesis(
    venv: &Path,
    work: &Path,
    addr: SocketAddr,
    token: &str,
    args: &Args,
) -> anyhow::Result<Reports> {
    let events = work.join("events.ndjson");
    let summary = work.join("report.json");
    let output = work.join("schemathesis.log");
    let mut command = Command::new(venv.join("bin").join("st"));
    command
        .current_dir(work)
        .arg("run")
        .arg(format!("http://{addr}/openapi.json"))
        .args(["--checks", "all"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--max-time", &args.seconds.to_string()])
        .args(["--max-examples", &args.max_examples.to_string()])
        // An accepted state error must not end a scenario and hide what
        // the rest of it would find.
        .arg("--continue-on-failure")
        // One worker: with more, hypothesis parses lambdas' source in
        // several threads at once, which CPython 3.11 can fail with
        // "SystemError: AST constructor recursion depth mismatch", an
        // error of the tool and not a finding. The service has the other
        // core.
        .args(["--workers", "1"])
        .args(["--report", "json,ndjson"])
        .arg("--report-json-path")
        .arg(&summary)
        .arg("--report-ndjson-path")
        .arg(&events)
        .arg("--no-color")
        .stdin(Stdio::null());
    println!(
        "fuzz: st run http://{addr}/openapi.json --checks all --header 'Authorization: Bearer ...' --max-time {} --max-examples {} --continue-on-failure --workers 1",
        args.seconds, args.max_examples
    );
    let log =
        fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
    command.stdout(log.try_clone()?).stderr(log);
    let mut st = command.spawn().context("cannot start schemathesis")?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds) + GRACE;
    // Its exit code is 1 whenever it found anything; what counts is the
    // judgement of its reports below.
    let exited = loop {
        if st.try_wait()?.is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = st.kill();
            let _ = st.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    print_summary(&output);
    if !exited {
        bail!(
            "schemathesis did not finish within its budget and {}s more (its output is in {})",
            GRACE.as_secs(),
            output.display()
        );
    }
    let read = |path: &Path| {
        fs::read_to_string(path).with_context(|| {
            format!(
                "schemathesis wrote no {} (its output is in {})",
                path.display(),
                output.display()
            )
        })
    };
    let summary_text = read(&summary)?;
    Ok(Reports {
        events: read(&events)?,
        summary: serde_json::from_str(&summary_text)
            .with_context(|| format!("{} is not JSON", summary.display()))?,
        output,
    })
}

/// Prints the SUMMARY section of schemathesis's output: its counts.
fn print_summary(output: &Path) {
    let Ok(text) = fs::read_to_string(output) else {
        return;
    };
    if let Some(at) = text.find("= SUMMARY =") {
        let start = text[..at].rfind('\n').map_or(0, |line| line + 1);
        print!("{}", &text[start..]);
    }
}

/// One failed check of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    /// `POST /platform/pipeline/execute`.
    operation: String,
    /// The check's name, `positive_data_acceptance`.
    check: String,
    /// The answer's status, if there was one.
    status: Option<u16>,
    /// The answer's `exception_type`, if it had the envelope.
    exception_type: Option<String>,
    /// The check's message, first line.
    message: String,
}

impl Finding {
    /// Whether this is a state error the contract answers to a request
    /// that is valid in itself.
    fn is_state_error(&self) -> bool {
        self.check == "positive_data_acceptance"
            && STATE_ERRORS.iter().any(|(status, name)| {
                self.status == Some(*status) && self.exception_type.as_deref() == Some(*name)
            })
    }
}

/// What a run found, judged.
#[derive(Debug, Default)]
struct Verdict {
    /// The failed checks that are findings.
    findings: Vec<Finding>,
    /// How many failed checks were the contract's state errors.
    state_errors: usize,
    /// Errors of the run itself, and warnings about the document.
    problems: Vec<String>,
    /// How many test cases schemathesis generated.
    generated: u64,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.findings.is_empty() && self.problems.is_empty()
    }

    fn headline(&self) -> String {
        format!(
            "schemathesis: {} findings, {} problems with the run or the document",
            self.findings.len(),
            self.problems.len()
        )
    }

    fn report(&self) -> String {
        let mut text = format!(
            "fuzz: {} test cases; {} findings; {} answers were the contract's state errors (allowed)\n",
            self.generated,
            self.findings.len(),
            self.state_errors
        );
        for problem in &self.problems {
            text.push_str(&format!("  problem: {problem}\n"));
        }
        for finding in &self.findings {
            text.push_str(&format!(
                "  finding: {} [{}] answered {} {}: {}\n",
                finding.operation,
                finding.check,
                finding
                    .status
                    .map_or_else(|| "nothing".to_owned(), |status| status.to_string()),
                finding.exception_type.as_deref().unwrap_or(""),
                finding.message
            ));
        }
        text
    }
}

/// The warnings of schemathesis's summary that say the document is
/// wrong, rather than that the run met little data.
const DOCUMENT_WARNINGS: [&str; 5] = [
    "unresolvable_reference",
    "unsupported_regex",
    "validation_mismatch",
    "missing_deserializer",
    "missing_auth",
];

/// Judges a run from its event stream (`--report ndjson`) and its summary
/// (`--report json`).
fn judge(events: &str, summary: &Value) -> Verdict {
    let mut verdict = Verdict {
        generated: summary["test_cases"]["generated"].as_u64().unwrap_or(0),
        ..Verdict::default()
    };
    if summary["complete"] != true {
        verdict.problems.push(format!(
            "the run did not complete (stop reason: {})",
            summary["stop_reason"]
        ));
    }
    if let Some(errors) = summary["errors"].as_array() {
        for error in errors {
            verdict
                .problems
                .push(format!("schemathesis error: {error}"));
        }
    }
    for warning in DOCUMENT_WARNINGS {
        if let Some(operations) = summary["warnings"][warning].as_array()
            && !operations.is_empty()
        {
            verdict
                .problems
                .push(format!("{warning}: {}", Value::from(operations.clone())));
        }
    }
    let mut findings: Vec<Finding> = Vec::new();
    for line in events.lines() {
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for (kind, body) in &event {
            if kind == "NonFatalError" || kind == "FatalError" {
                verdict
                    .problems
                    .push(format!("schemathesis {kind}: {body}"));
            }
            findings.extend(failed_checks(body));
        }
    }
    for finding in findings {
        if finding.is_state_error() {
            verdict.state_errors += 1;
        } else if !verdict.findings.contains(&finding) {
            verdict.findings.push(finding);
        }
    }
    verdict
}

/// The failed checks of one scenario event, with the answers they judged.
fn failed_checks(event: &Value) -> Vec<Finding> {
    let recorder = &event["recorder"];
    let operation = recorder["label"].as_str().unwrap_or_default();
    let Some(checks) = recorder["checks"].as_object() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (case, checks) in checks {
        let response = &recorder["interactions"][case]["response"];
        let status = response["status_code"]
            .as_u64()
            .and_then(|status| u16::try_from(status).ok());
        let exception_type = body_of(response)
            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
            .and_then(|body| body["detail"]["exception_type"].as_str().map(str::to_owned));
        for check in checks.as_array().into_iter().flatten() {
            if check["status"] != "failure" {
                continue;
            }
            let failure = &check["failure_info"]["failure"];
            found.push(Finding {
                operation: failure["operation"]
                    .as_str()
                    .unwrap_or(operation)
                    .to_owned(),
                check: check["name"].as_str().unwrap_or_default().to_owned(),
                status,
                exception_type: exception_type.clone(),
                message: failure["message"]
                    .as_str()
                    .or_else(|| failure["title"].as_str())
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    found
}

/// The body of a recorded answer, which the report keeps in base64.
fn body_of(response: &Value) -> Option<Vec<u8>> {
    let content = &response["content"];
    match content.get("$base64") {
        Some(encoded) => decode_base64(encoded.as_str()?),
        None => content.as_str().map(|text| text.as_bytes().to_vec()),
    }
}

/// Standard base64 with padding, as Python's `base64.b64encode` writes it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits = text.trim_end_matches('=').as_bytes();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for &c in digits {
        buffer = (buffer << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scenario(status: u16, body: &str, check: &str) -> String {
        let encoded = {
            // The encoder of the test: the standard alphabet, padded.
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in body.as_bytes().chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        };
        json!({"ScenarioFinished": {"recorder": {
            "label": "POST /platform/pipeline/execute",
            "checks": {"abc": [
                {"name": "not_a_server_error", "status": "success"},
                {"name": check, "status": "failure", "failure_info": {"failure": {
                    "operation": "POST /platform/pipeline/execute",
                    "message": "Valid data should have been accepted\nExpected: 2xx"}}}
            ]},
            "interactions": {"abc": {"response": {
                "status_code": status, "content": {"$base64": encoded}}}}
        }}})
        .to_string()
    }

    fn complete() -> Value {
        json!({"complete": true, "errors": [], "warnings": {}, "test_cases": {"generated": 7}})
    }

    fn envelope(name: &str) -> String {
        json!({"detail": {"status": false, "exception_type": name, "traceback": "", "data": null}})
            .to_string()
    }

    #[test]
    fn a_state_error_of_the_contract_is_allowed() {
        let events = scenario(400, &envelope("PipelinePaused"), "positive_data_acceptance");
        let verdict = judge(&events, &complete());
        assert!(verdict.passed(), "{}", verdict.report());
        assert_eq!(verdict.state_errors, 1);
        assert_eq!(verdict.generated, 7);
    }

    #[test]
    fn any_other_rejection_of_valid_data_is_a_finding() {
        let events = scenario(
            400,
            &envelope("InvalidPipelineId"),
            "positive_data_acceptance",
        );
        let verdict = judge(&events, &complete());
        assert!(!verdict.passed());
        assert_eq!(verdict.findings[0].status, Some(400));
        assert_eq!(
            verdict.findings[0].exception_type.as_deref(),
            Some("InvalidPipelineId")
        );
        assert_eq!(
            verdict.findings[0].message,
            "Valid data should have been accepted"
        );
    }

    #[test]
    fn a_state_error_is_a_finding_for_any_other_check() {
        let events = scenario(
            400,
            &envelope("PipelinePaused"),
            "response_schema_conformance",
        );
        assert!(!judge(&events, &complete()).passed());
    }

    #[test]
    fn the_same_finding_is_reported_once() {
        let one = scenario(500, "{}", "not_a_server_error");
        let events = format!("{one}\n{one}\n");
        let verdict = judge(&events, &complete());
        assert_eq!(verdict.findings.len(), 1, "{}", verdict.report());
    }

    #[test]
    fn an_incomplete_run_errors_and_document_warnings_fail() {
        let summary = json!({"complete": false, "stop_reason": "interrupted", "errors": [{"x": 1}],
            "warnings": {"unresolvable_reference": ["GET /x"], "missing_test_data": ["GET /y"]}});
        let verdict = judge("", &summary);
        assert_eq!(verdict.problems.len(), 3, "{:?}", verdict.problems);
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("not base64!"), None);
    }
}
