//! `cargo xtask bench --backend airflow`: the latency Maestro adds in
//! front of a real Apache Airflow 3, and the token exchanges it makes.
//!
//! Airflow is started with the e2e harness's functions (a home of its own
//! under `target/`, its metadata in a throwaway PostgreSQL cluster unless
//! `--airflow-metadata-db sqlite`), and one DAG of the test DAGs is
//! unpaused. The same
//! load generator then sends the same number of requests over the same
//! number of connections to each side, in alternating turns: get-pipeline
//! straight to Airflow (`GET /api/v2/dags/{id}/details`) and through
//! Maestro (`GET /platform/pipeline/{id}`), then execute straight to
//! Airflow (`POST /api/v2/dags/{id}/dagRuns` with the audit `conf` that
//! Maestro sends) and through Maestro (`POST /platform/pipeline/execute`).
//! Two more rows, without targets, show what is not Maestro's own cost:
//! execute through a second Maestro that reads the DAG before every
//! execute (`MAESTRO_AIRFLOW_DAG_CACHE_MS=0`), and execute against a bare
//! trigger with no `conf`. Maestro logs each token exchange (at
//! debug level, for its token module only), and those lines are counted.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    Args, STARTUP_TIMEOUT, maestro_command, mint_token, random_secret,
    report::{self, Cell, Check, Report, Row, Summary},
    report_first_problem, unix_now,
};
use crate::{
    e2e_airflow,
    http::{self, RequestTemplate},
    load::{self, LoadReport, LoadSpec, UniqueHeader},
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
/// How long one set-up call to Airflow may take.
const SET_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The target for the latency Maestro adds, at the median.
const ADDED_P50_TARGET: Duration = Duration::from_millis(1);

/// One `maestro` on the Airflow backend, logging to a file of its own in
/// the bench's Airflow home.
struct Gateway<'a> {
    binary: &'a Path,
    addr: SocketAddr,
    log: std::path::PathBuf,
    url: String,
    password: String,
    secret: String,
    dag_cache_ms: Option<&'static str>,
}

impl<'a> Gateway<'a> {
    fn new(
        up: &e2e_airflow::Started,
        binary: &'a Path,
        secret: &str,
        log_name: &str,
        dag_cache_ms: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            binary,
            addr: free_local_addr()?,
            log: up.home.join(log_name),
            url: up.url.clone(),
            password: up.password.clone(),
            secret: secret.to_owned(),
            dag_cache_ms,
        })
    }

    /// The command that starts it, with no `MAESTRO_` setting inherited
    /// from the caller's environment.
    fn command(&self) -> anyhow::Result<Command> {
        let output = fs::File::create(&self.log)
            .with_context(|| format!("cannot create {}", self.log.display()))?;
        let mut settings = vec![
            ("MAESTRO_BACKEND", "airflow".to_owned()),
            ("MAESTRO_AIRFLOW_URL", self.url.clone()),
            ("MAESTRO_AIRFLOW_USERNAME", e2e_airflow::USERNAME.to_owned()),
            ("MAESTRO_AIRFLOW_PASSWORD", self.password.clone()),
            ("MAESTRO_UPSTREAM_TIMEOUT_MS", "30000".to_owned()),
            ("MAESTRO_LOG_FORMAT", "json".to_owned()),
            // Warnings, and the token module's line per exchange: nothing
            // per request, so logging costs the measured path nothing.
            ("RUST_LOG", "warn,adapter_airflow::token=debug".to_owned()),
        ];
        if let Some(ms) = self.dag_cache_ms {
            settings.push(("MAESTRO_AIRFLOW_DAG_CACHE_MS", ms.to_owned()));
        }
        let mut command = maestro_command(self.binary, self.addr, &self.secret, &settings);
        command.stdout(output.try_clone()?).stderr(output);
        Ok(command)
    }

    /// The token exchanges its log shows.
    fn token_exchanges(&self) -> anyhow::Result<usize> {
        let text = fs::read_to_string(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        Ok(text
            .lines()
            .filter(|line| line.contains(TOKEN_EXCHANGE))
            .count())
    }
}

/// Runs the Airflow bench with the release `maestro` at `maestro`.
///
/// # Errors
/// When Airflow or Maestro cannot be started or set up, or, without
/// `--no-check`, when a target is missed.
pub(super) fn run(args: &Args, maestro: &Path) -> anyhow::Result<()> {
    let load_before = load_average();
    let up = e2e_airflow::start(
        "python3",
        "airflow-bench-home",
        args.airflow_metadata_db,
        AIRFLOW_STARTUP,
        || Ok(()),
    )?;
    let airflow = SocketAddr::from((Ipv4Addr::LOCALHOST, up.port));

    let secret = random_secret();
    // Two Maestros: the default, and one that reads the DAG before every
    // execute (`MAESTRO_AIRFLOW_DAG_CACHE_MS=0`), to show what the cache of
    // the check before a trigger saves.
    let default = Gateway::new(&up, maestro, &secret, "maestro-bench.log", None)?;
    let uncached = Gateway::new(
        &up,
        maestro,
        &secret,
        "maestro-bench-uncached.log",
        Some("0"),
    )?;
    let (mut default_command, mut uncached_command) = (default.command()?, uncached.command()?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let token = runtime.block_on(async {
        let token = airflow_token(airflow, &up.password).await?;
        wait_for_dag(airflow, &token).await?;
        set_paused(airflow, &token, false).await?;
        anyhow::Ok(token)
    })?;
    let pairs = runtime.block_on(async {
        let mut servers = Vec::new();
        for (gateway, command) in [
            (&default, &mut default_command),
            (&uncached, &mut uncached_command),
        ] {
            let server = ChildGuard::spawn("maestro", command)?;
            servers.push(server);
            servers
                .last_mut()
                .context("no server")?
                .wait_until_healthy(gateway.addr, STARTUP_TIMEOUT)
                .await?;
        }
        let jwt = mint_token(&secret, CUSTOMER, unix_now()?)?;
        let spec = |target, request| LoadSpec {
            addr: target,
            connections: args.airflow_connections,
            requests: args.airflow_requests,
            warmup: args.airflow_warmup,
            request,
        };
        let plan = report::plan(
            args.airflow_warmup,
            args.airflow_requests,
            args.airflow_connections,
        );
        let get_direct = request(
            Method::GET,
            &format!("/api/v2/dags/{DAG_ID}/details"),
            &token,
            None,
        )?;
        let get_through = request(
            Method::GET,
            &format!("/platform/pipeline/{DAG_ID}"),
            &jwt,
            None,
        )?;
        // What Maestro posts, but for the run id (the load generator sends
        // one body again and again; Airflow then makes the id): the same
        // audit block in `conf`, which Airflow validates and stores.
        let execute_direct = request(
            Method::POST,
            &format!("/api/v2/dags/{DAG_ID}/dagRuns"),
            &token,
            Some(json!({
                "logical_date": null,
                "conf": {"maestro": {
                    "customer_id": CUSTOMER,
                    "sub": "bench",
                    "request_id": "0b4c2d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
                    "trigger_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
                }},
            })),
        )?;
        let execute_bare = request(
            Method::POST,
            &format!("/api/v2/dags/{DAG_ID}/dagRuns"),
            &token,
            Some(json!({"logical_date": null})),
        )?;
        let execute_through = request(
            Method::POST,
            "/platform/pipeline/execute",
            &jwt,
            Some(json!({"pipeline_id": DAG_ID})),
        )?;
        let mut pairs = Vec::new();
        for (name, gateway, direct, through, target) in [
            (
                "get pipeline",
                &default,
                get_direct,
                get_through,
                Some(ADDED_P50_TARGET),
            ),
            (
                "execute",
                &default,
                execute_direct.clone(),
                execute_through.clone(),
                Some(ADDED_P50_TARGET),
            ),
            (
                "execute, DAG read every time (`MAESTRO_AIRFLOW_DAG_CACHE_MS=0`)",
                &uncached,
                execute_direct,
                execute_through.clone(),
                None,
            ),
            (
                "execute, against a bare trigger (no `conf`)",
                &default,
                execute_bare,
                execute_through,
                None,
            ),
        ] {
            println!("== {name}, straight to Airflow and through Maestro in turns: {plan} each");
            let (direct, maestro) =
                in_turns(&spec(airflow, direct), &spec(gateway.addr, through)).await?;
            // Airflow's own failures (on SQLite, its write lock answers 500
            // after 5 s, which Maestro passes on as 502) count against
            // neither side: the check is that Maestro fails no more often
            // than Airflow straight.
            report_first_problem(&format!("{name} through Maestro"), &maestro);
            pairs.push(Measured {
                name,
                direct: Summary::new(&direct, args.airflow_requests),
                maestro: Summary::new(&maestro, args.airflow_requests),
                target,
            });
        }
        drop(servers);
        anyhow::Ok(pairs)
    })?;
    let load_after = load_average();

    let exchanges = default.token_exchanges()?;
    let uncached_exchanges = uncached.token_exchanges()?;
    // Leave the DAG as the tests expect it, although the home is thrown
    // away with the next start anyway.
    let _ = runtime.block_on(set_paused(airflow, &token, true));
    let metadata_db = up.metadata_db;
    drop(up);

    let setup = format!(
        "Maestro in front of Apache Airflow {} (airflow standalone, LocalExecutor, metadata in {}), {} connections, {} requests per target after {} warm-up; load average {load_before} before, {load_after} after.",
        e2e_airflow::AIRFLOW_VERSION,
        metadata_db.describe(),
        args.airflow_connections,
        report::thousands(args.airflow_requests),
        report::thousands(args.airflow_warmup),
    );
    let exchanges = TokenExchanges {
        default: exchanges,
        uncached: uncached_exchanges,
        per_target: args.airflow_requests + args.airflow_warmup,
    };
    let report = report(setup, &pairs, &exchanges);
    super::print(&report);
    super::judge(&[report], args.no_check)
}

/// One endpoint's figures, straight to Airflow and through Maestro.
#[derive(Debug, Clone, PartialEq)]
struct Measured {
    name: &'static str,
    direct: Summary,
    maestro: Summary,
    /// The most Maestro may add at the median, when the row has a target.
    target: Option<Duration>,
}

/// The token exchanges the two Maestros made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenExchanges {
    /// By the default Maestro, over three endpoints' requests.
    default: usize,
    /// By the one without the DAG cache, over one endpoint's requests.
    uncached: usize,
    /// Requests per endpoint and side, warm-up included.
    per_target: u64,
}

/// One row per endpoint with the latency Maestro adds; a latency target
/// per row that has one, a check per row that Maestro failed no request
/// more than Airflow straight did, and one for the token exchanges.
fn report(setup: String, rows: &[Measured], exchanges: &TokenExchanges) -> Report {
    let mut checks: Vec<Check> = rows
        .iter()
        .filter_map(|row| {
            let target = row.target?;
            let added = Cell::difference(row.maestro.p50, row.direct.p50);
            Some(Check {
                target: format!("{}: added p50 <= {}", row.name, report::millis(target)),
                measured: added.to_string(),
                passed: row.maestro.p50.saturating_sub(row.direct.p50) <= target,
            })
        })
        .collect();
    // The requests of the two sides are not paired, so "no non-2xx where
    // Airflow answered 2xx" is checked as counts: through Maestro, no more
    // failures (non-2xx or no answer) than straight to Airflow.
    checks.extend(rows.iter().map(|row| Check {
        target: format!(
            "{}: non-2xx through Maestro <= non-2xx straight to Airflow",
            row.name
        ),
        measured: format!(
            "{} through Maestro, {} straight",
            row.maestro.failed(),
            row.direct.failed()
        ),
        passed: row.maestro.failed() <= row.direct.failed(),
    }));
    checks.push(Check {
        target: "one token exchange (`POST /auth/token`) per Maestro".to_owned(),
        measured: format!(
            "{} for {} requests by the default Maestro, {} for {} by the one without the cache",
            exchanges.default,
            report::thousands(3 * exchanges.per_target),
            exchanges.uncached,
            report::thousands(exchanges.per_target)
        ),
        passed: exchanges.default == 1 && exchanges.uncached == 1,
    });
    let columns = [
        "direct p50",
        "direct p99",
        "Maestro p50",
        "Maestro p99",
        "added p50",
        "added p99",
        "ratio p50",
        "ratio p99",
        "non-2xx direct / Maestro",
    ];
    let rows = rows
        .iter()
        .map(|row| {
            let (direct, maestro) = (&row.direct, &row.maestro);
            let (d50, d99) = (Cell::latency(direct.p50), Cell::latency(direct.p99));
            let (m50, m99) = (Cell::latency(maestro.p50), Cell::latency(maestro.p99));
            let (ratio50, ratio99) = (m50.ratio_to(&d50), m99.ratio_to(&d99));
            Row::new(
                row.name,
                vec![
                    d50,
                    d99,
                    m50,
                    m99,
                    Cell::difference(maestro.p50, direct.p50),
                    Cell::difference(maestro.p99, direct.p99),
                    ratio50,
                    ratio99,
                    Cell::pair(Cell::Count(direct.failed()), Cell::Count(maestro.failed())),
                ],
            )
        })
        .collect();
    Report {
        title: "Airflow".to_owned(),
        setup,
        corner: "endpoint".to_owned(),
        columns: columns.map(str::to_owned).to_vec(),
        rows,
        checks,
        notes: Vec::new(),
    }
}

/// In how many turns each side's requests are sent.
pub(super) const TURNS: u64 = 10;

/// Runs `direct` and `maestro` in [`TURNS`] alternating blocks (direct
/// first in even turns, Maestro first in odd ones) and merges each side's
/// blocks. Airflow slows down as runs pile up in its queue and its
/// scheduler works through them, so two phases one after the other would
/// charge that drift to whichever side went second. The run-lifecycle
/// bench compares its two kinds of execute the same way.
pub(super) async fn in_turns(
    direct: &LoadSpec,
    maestro: &LoadSpec,
) -> anyhow::Result<(LoadReport, LoadReport)> {
    in_turns_with_unique(direct, maestro, None).await
}

/// [`in_turns`], with `unique` on every request of `maestro`'s side when
/// given: each turn takes its values from a [`UniqueHeader::part`] of its
/// own (`t0`, `t1`, ...), so that no two requests of the run share one.
pub(super) async fn in_turns_with_unique(
    direct: &LoadSpec,
    maestro: &LoadSpec,
    unique: Option<&UniqueHeader>,
) -> anyhow::Result<(LoadReport, LoadReport)> {
    let block = |spec: &LoadSpec, turn: u64| LoadSpec {
        requests: spec.requests / TURNS + u64::from(turn < spec.requests % TURNS),
        warmup: spec.warmup / TURNS,
        ..spec.clone()
    };
    let second = |turn: u64| {
        let spec = block(maestro, turn);
        let unique = unique.map(|unique| unique.part(format_args!("t{turn}")));
        async move {
            match unique {
                Some(unique) => load::run_with_unique_header(&spec, &unique).await,
                None => load::run(&spec).await,
            }
        }
    };
    let mut merged: Option<(LoadReport, LoadReport)> = None;
    for turn in 0..TURNS {
        let (d, m) = if turn % 2 == 0 {
            let d = load::run(&block(direct, turn)).await?;
            (d, second(turn).await?)
        } else {
            let m = second(turn).await?;
            (load::run(&block(direct, turn)).await?, m)
        };
        merged = Some(match merged {
            None => (d, m),
            Some((mut all_d, mut all_m)) => {
                all_d.merge(d)?;
                all_m.merge(m)?;
                (all_d, all_m)
            }
        });
    }
    merged.context("no turns")
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` has them.
pub(super) fn load_average() -> String {
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
    let request = RequestTemplate::new(method, path).bearer(token)?;
    match body {
        Some(body) => request.json(&body),
        None => Ok(request),
    }
}

/// The bench's own token for Airflow's API.
async fn airflow_token(airflow: SocketAddr, password: &str) -> anyhow::Result<String> {
    let request = RequestTemplate::new(Method::POST, "/auth/token")
        .json(&json!({"username": e2e_airflow::USERNAME, "password": password}))?;
    let (status, answer) = call(airflow, &request).await?;
    if !status.is_success() {
        bail!("POST /auth/token answered {status}");
    }
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("POST /auth/token answered without an access_token")
}

/// Waits until Airflow's DAG processor has parsed the bench's DAG.
async fn wait_for_dag(airflow: SocketAddr, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAG_PARSE_TIMEOUT;
    let request = request(Method::GET, &format!("/api/v2/dags/{DAG_ID}"), token, None)?;
    loop {
        let (status, _) = call(airflow, &request).await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Airflow did not know {DAG_ID} within {DAG_PARSE_TIMEOUT:?} (last: {status})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Pauses or unpauses the bench's DAG.
async fn set_paused(airflow: SocketAddr, token: &str, paused: bool) -> anyhow::Result<()> {
    let request = request(
        Method::PATCH,
        &format!("/api/v2/dags/{DAG_ID}"),
        token,
        Some(json!({"is_paused": paused})),
    )?;
    let (status, _) = call(airflow, &request).await?;
    if status != StatusCode::OK {
        bail!("setting is_paused of {DAG_ID} to {paused} answered {status}");
    }
    Ok(())
}

/// One request to Airflow on a connection of its own, for the set-up: the
/// status and the body as JSON (`null` when it is not JSON).
async fn call(
    airflow: SocketAddr,
    request: &RequestTemplate,
) -> anyhow::Result<(StatusCode, Value)> {
    let answer = http::send_once(airflow, request, SET_UP_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "{} {}: no answer from Airflow at {airflow}",
                request.method, request.path
            )
        })?;
    Ok((answer.status, answer.json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50_micros: u64, p99_micros: u64, non_2xx: u64) -> Summary {
        Summary {
            non_2xx,
            ..Summary::all_answered(1_000, 100.0, p50_micros, p99_micros)
        }
    }

    fn rows() -> Vec<Measured> {
        vec![
            Measured {
                name: "get pipeline",
                direct: summary(14_830, 27_310, 0),
                maestro: summary(15_250, 25_000, 0),
                target: Some(ADDED_P50_TARGET),
            },
            Measured {
                name: "execute, against a bare trigger (no `conf`)",
                direct: summary(30_000, 80_000, 3),
                maestro: summary(34_000, 0, 1),
                target: None,
            },
        ]
    }

    fn exchanges(default: usize) -> TokenExchanges {
        TokenExchanges {
            default,
            uncached: 1,
            per_target: 1_100,
        }
    }

    #[test]
    fn each_endpoint_shows_what_maestro_adds_with_signed_differences_and_guarded_ratios() {
        let markdown = report("Set-up.".to_owned(), &rows(), &exchanges(1)).markdown();
        for line in [
            "| endpoint | direct p50 | direct p99 | Maestro p50 | Maestro p99 | added p50 | added p99 | ratio p50 | ratio p99 | non-2xx direct / Maestro |",
            "| get pipeline | 14.83 ms | 27.31 ms | 15.25 ms | 25.00 ms | 0.42 ms | -2.31 ms | 1.03x | 0.92x | 0 / 0 |",
            "| execute, against a bare trigger (no `conf`) | 30.00 ms | 80.00 ms | 34.00 ms | 0.00 ms | 4.00 ms | -80.00 ms | 1.13x | 0.00x | 3 / 1 |",
            "| get pipeline: added p50 <= 1.00 ms | 0.42 ms | PASS |",
            "| get pipeline: non-2xx through Maestro <= non-2xx straight to Airflow | 0 through Maestro, 0 straight | PASS |",
            "| execute, against a bare trigger (no `conf`): non-2xx through Maestro <= non-2xx straight to Airflow | 1 through Maestro, 3 straight | PASS |",
            "| one token exchange (`POST /auth/token`) per Maestro | 1 for 3,300 requests by the default Maestro, 1 for 1,100 by the one without the cache | PASS |",
        ] {
            assert!(
                markdown.contains(&format!("\n{line}\n")),
                "{line}\n{markdown}"
            );
        }
        assert_eq!(
            markdown.matches("| PASS |").count(),
            4,
            "rows without a latency target have only the non-2xx check"
        );
    }

    #[test]
    fn more_than_1_ms_added_more_failures_than_airflow_or_a_second_token_exchange_misses() {
        let mut rows = rows();
        rows[0].maestro.p50 = rows[0].direct.p50 + Duration::from_micros(1_001);
        rows[1].maestro.non_2xx = 4;
        let report = report(String::new(), &rows, &exchanges(2));
        assert_eq!(
            report.missed(),
            [
                "get pipeline: added p50 <= 1.00 ms",
                "execute, against a bare trigger (no `conf`): non-2xx through Maestro <= non-2xx straight to Airflow",
                "one token exchange (`POST /auth/token`) per Maestro"
            ]
        );
    }
}
