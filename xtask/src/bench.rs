//! `cargo xtask bench`: loads the release `maestro` and a bare axum
//! baseline with the same requests in one run, and reports both, their
//! ratios, the service's memory, and the targets.
//!
//! Both servers run as child processes of a release build of this xtask,
//! side by side, and are loaded in alternating turns over the same
//! loopback connections by the same generator, so that the machine's drift
//! over a run falls on both alike (see `docs/performance.md`).

use std::{
    env,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use hyper::Method;
use tempfile::NamedTempFile;
use uuid::Uuid;

use crate::{
    http::RequestTemplate,
    load::{self, LoadSpec},
    process::{ChildGuard, free_local_addr},
    token::unix_now,
};
use report::Report;

mod airflow;
mod baseline;
mod events;
mod floor;
mod idempotency;
mod lifecycle;
mod memory;
mod openloop;
pub(crate) mod report;
mod scale;

/// The customer the bench's pipeline belongs to and its token names.
const BENCH_CUSTOMER: &str = "bench";

/// How long a server may take to answer `GET /health` after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The backend the service runs on.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,

    /// Concurrent keep-alive connections, one load worker each.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections: usize,

    /// Measured requests per target (the service, then the baseline),
    /// spread over the connections.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,

    /// Requests per target before measuring, on the same connections.
    #[arg(long, default_value_t = 5_000)]
    warmup: u64,

    /// With `--backend airflow`: measured requests per endpoint, straight
    /// to Airflow and through Maestro alike.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    airflow_requests: u64,

    /// With `--backend airflow`: requests per endpoint before measuring.
    #[arg(long, default_value_t = 100)]
    airflow_warmup: u64,

    /// With `--backend airflow`: concurrent keep-alive connections.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    airflow_connections: usize,

    /// With `--backend airflow`: where Airflow keeps its metadata.
    #[arg(long, value_enum, default_value_t = crate::e2e_airflow::MetadataDb::Postgres)]
    airflow_metadata_db: crate::e2e_airflow::MetadataDb,

    /// With the memory backend: skip the open-loop runs (the baseline, then
    /// the service, at a fixed rate of 70% of the baseline's throughput,
    /// each request timed from the instant it was due), which otherwise
    /// follow each closed-loop run.
    #[arg(long)]
    no_open_loop: bool,

    /// Seconds each open-loop run measures, after a second of warm-up at
    /// the same rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    open_loop_seconds: u64,

    /// With the memory backend: skip the `Idempotency-Key` runs (without
    /// keys, then a fresh key per request on the memory store and on a
    /// throwaway Redis), which otherwise follow the baseline comparison.
    #[arg(long)]
    no_idempotency: bool,

    /// Measured requests per `Idempotency-Key` run. The memory store keeps
    /// 100,000 keys, so warm-up plus these stay under it by default.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_requests: u64,

    /// With the memory backend: skip the run-lifecycle rows (execute with
    /// a 1 KiB `conf` against execute without, in alternating turns; then
    /// 1,000 requests waiting on runs with `?wait_seconds=60`: the RSS they
    /// add and how soon each is answered after its run ends, beside the
    /// bare axum baseline holding as many), which otherwise follow the
    /// `Idempotency-Key` runs.
    #[arg(long)]
    no_lifecycle: bool,

    /// With the memory backend: skip the events rows (1,000 event streams
    /// open at once: the RSS they add and how soon a run's change reaches
    /// the last of them, beside a bare axum event stream; then a webhook
    /// fan-out of 1,000 deliveries to a receiver in the bench), which
    /// otherwise follow the run-lifecycle rows.
    #[arg(long)]
    no_events: bool,

    /// Measured executes per side of the `conf` comparison (without
    /// `conf`, with a 1 KiB `conf`), in ten alternating turns: by default
    /// turns of 10,000, long enough that a moment's noise on the shared
    /// machine does not decide a turn.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    conf_requests: u64,

    /// With the memory backend: only the scale rows, 100,000 pipelines of
    /// 10,000 customers rotated per request, each beside its baseline (see
    /// `docs/performance.md`), instead of every other mode.
    #[arg(long)]
    scale: bool,

    /// Only report: exit 0 even when a target is missed.
    #[arg(long)]
    no_check: bool,

    /// A release `maestro` to load instead of building one. The bench sets
    /// it when it re-runs itself from a release build.
    #[arg(long, hide = true)]
    maestro_bin: Option<PathBuf>,
}

/// Options of the hidden `bench-baseline` command.
#[derive(Debug, clap::Args)]
pub(crate) struct BaselineArgs {
    /// The address to listen on.
    #[arg(long)]
    bind: SocketAddr,

    /// Serve the bare event streams of `bench/events.rs` instead of the
    /// execute and wait routes.
    #[arg(long)]
    events: bool,

    /// Serve the contract's floor (`bench/floor.rs`) instead, its tokens
    /// signed with this secret.
    #[arg(long, requires_all = ["floor_customer", "floor_pipeline"])]
    floor_secret: Option<String>,

    /// The floor's one customer.
    #[arg(long)]
    floor_customer: Option<String>,

    /// The floor's pipelines, of that customer.
    #[arg(long)]
    floor_pipeline: Vec<Uuid>,
}

/// The backends the service can be benchmarked on. The memory backend is
/// set up here; the Airflow bench, which measures against Airflow itself
/// rather than a bare baseline, is `bench/airflow.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// The embedded memory backend, with runs that finish at once.
    Memory,
    /// A real Apache Airflow 3, started by the e2e harness.
    Airflow,
}

/// A backend made ready for one run: the service's environment for it, and
/// the files that environment points to, kept until the run ends.
#[derive(Debug)]
struct BackendSetup {
    env: Vec<(&'static str, String)>,
    _files: Vec<NamedTempFile>,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Airflow => "airflow",
        }
    }

    /// Prepares the backend so that `pipeline` exists for [`BENCH_CUSTOMER`].
    fn prepare(self, pipeline: Uuid) -> anyhow::Result<BackendSetup> {
        match self {
            Self::Memory => {
                let fixture = memory_fixture(pipeline)?;
                let path = fixture.path().to_string_lossy().into_owned();
                Ok(BackendSetup {
                    env: vec![
                        ("MAESTRO_BACKEND", "memory".to_owned()),
                        // Runs finish at once, so executes never queue up
                        // behind one another and the queue limit is never hit.
                        ("MAESTRO_MEMORY_RUN_SECONDS", "0".to_owned()),
                        ("MAESTRO_MEMORY_FIXTURE", path),
                    ],
                    _files: vec![fixture],
                })
            }
            Self::Airflow => bail!("the Airflow bench sets up its own backend"),
        }
    }
}

/// A fixture file with the one pipeline the bench executes.
fn memory_fixture(pipeline: Uuid) -> anyhow::Result<NamedTempFile> {
    let fixture = tempfile::Builder::new()
        .prefix("maestro-bench-")
        .suffix(".json")
        .tempfile()
        .context("cannot create the fixture file")?;
    let json = serde_json::json!({"pipelines": [{
        "id": pipeline.hyphenated().to_string(),
        "customer_id": BENCH_CUSTOMER,
        "name": "bench",
    }]});
    serde_json::to_writer(fixture.as_file(), &json).context("cannot write the fixture file")?;
    Ok(fixture)
}

/// Runs `cargo xtask bench`.
///
/// # Errors
/// When building, starting or loading a server fails, or, without
/// `--no-check`, when a target is missed.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let maestro = match &args.maestro_bin {
        Some(path) => path.clone(),
        None => {
            let built = build_release()?;
            if cfg!(debug_assertions) {
                // `cargo xtask` runs a debug build. A debug load generator
                // and baseline would be the bottleneck and flatter the
                // service, so the release build of this very command takes
                // over.
                return rerun(&built.xtask, &built.maestro);
            }
            built.maestro
        }
    };

    if args.backend == Backend::Airflow {
        return airflow::run(args, &maestro);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if args.scale {
        let report = runtime.block_on(scale::run(args, &maestro))?;
        print(&report);
        return judge(&[report], args.no_check);
    }
    let mut reports = vec![runtime.block_on(memory::run(args, &maestro))?];
    print(&reports[0]);
    if !args.no_idempotency {
        reports.push(runtime.block_on(idempotency::run(args, &maestro))?);
        print(&reports[1]);
    }
    if !args.no_lifecycle {
        for report in runtime.block_on(lifecycle::run(args, &maestro))? {
            print(&report);
            reports.push(report);
        }
    }
    if !args.no_events {
        for report in runtime.block_on(events::run(&maestro))? {
            print(&report);
            reports.push(report);
        }
    }
    judge(&reports, args.no_check)
}

/// Prints `report` for the terminal, then as markdown for the docs.
fn print(report: &Report) {
    println!();
    print!("{}", report.text());
    println!();
    println!("For docs/performance.md ({}):", report.title);
    println!();
    print!("{}", report.markdown());
}

/// Fails when a target of `reports` was missed, unless only reporting.
fn judge(reports: &[Report], no_check: bool) -> anyhow::Result<()> {
    let missed: Vec<String> = reports.iter().flat_map(Report::missed).collect();
    let targets: usize = reports.iter().map(|report| report.checks.len()).sum();
    if !missed.is_empty() && !no_check {
        bail!(
            "{} of {targets} targets missed: {}",
            missed.len(),
            missed.join("; ")
        );
    }
    Ok(())
}

/// Runs the baseline server until stdin closes: the bench holds the other
/// end, so the baseline never outlives it, even when the bench is killed.
///
/// # Errors
/// When the address cannot be bound or serving fails.
pub(crate) fn run_baseline(args: &BaselineArgs) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    // The same multi-threaded runtime as `#[tokio::main]` gives `maestro`.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("cannot bind {}", args.bind))?;
        if args.events {
            axum::serve(listener, events::baseline_router()).await
        } else if let (Some(secret), Some(customer)) = (&args.floor_secret, &args.floor_customer) {
            let settings = floor::FloorSettings {
                secret: secret.clone(),
                customer: customer.clone(),
                pipelines: args.floor_pipeline.clone(),
            };
            axum::serve(listener, floor::router(&settings)?).await
        } else {
            baseline::serve(listener).await
        }
        .context("the baseline stopped")
    })
}

/// The release binaries the bench needs.
#[derive(Debug)]
struct Built {
    maestro: PathBuf,
    xtask: PathBuf,
}

/// Builds `maestro` and this xtask in release.
fn build_release() -> anyhow::Result<Built> {
    let built = crate::process::build_release(&["app", "xtask"], &["maestro", "xtask"])?;
    let [maestro, xtask] = <[PathBuf; 2]>::try_from(built)
        .map_err(|_| anyhow::anyhow!("cargo build reported the wrong number of executables"))?;
    Ok(Built { maestro, xtask })
}

/// Runs this bench again from the release `xtask`, with the same options,
/// and exits with its status.
fn rerun(xtask: &Path, maestro: &Path) -> anyhow::Result<()> {
    let status = Command::new(xtask)
        .args(env::args_os().skip(1))
        .arg("--maestro-bin")
        .arg(maestro)
        .status()
        .with_context(|| format!("cannot run {}", xtask.display()))?;
    if status.success() {
        Ok(())
    } else {
        // The release run has said what went wrong; only its status is left.
        std::process::exit(status.code().unwrap_or(1))
    }
}

/// What the memory-backend modes send: executes of a fresh pipeline of
/// [`BENCH_CUSTOMER`], with a token signed by a fresh secret, the same
/// number of them to every server loaded.
#[derive(Debug)]
struct ExecuteLoad {
    pipeline: Uuid,
    secret: String,
    request: RequestTemplate,
    connections: usize,
    requests: u64,
    warmup: u64,
}

impl ExecuteLoad {
    /// `requests` measured executes with the options' connections and
    /// warm-up.
    fn new(args: &Args, requests: u64) -> anyhow::Result<Self> {
        let pipeline = Uuid::new_v4();
        let secret = random_secret();
        let token = mint_token(&secret, BENCH_CUSTOMER, unix_now()?)?;
        Ok(Self {
            pipeline,
            request: execute_request(&token, pipeline)?,
            secret,
            connections: args.connections,
            requests,
            warmup: args.warmup,
        })
    }

    /// The load, sent to `addr`.
    fn at(&self, addr: SocketAddr) -> LoadSpec {
        LoadSpec {
            addr,
            connections: self.connections,
            requests: self.requests,
            warmup: self.warmup,
            request: self.request.clone(),
        }
    }

    /// What is sent, in words.
    fn plan(&self) -> String {
        report::plan(self.warmup, self.requests, self.connections)
    }
}

/// Starts `maestro` with `env` on a free port and waits until it is ready.
async fn start_maestro(
    maestro: &Path,
    secret: &str,
    env: &[(&'static str, String)],
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let addr = free_local_addr()?;
    let mut command = maestro_command(maestro, addr, secret, env);
    let mut server = ChildGuard::spawn("maestro", &mut command)?;
    server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
    Ok((server, addr))
}

/// Starts the contract's floor (`bench/floor.rs`) for [`BENCH_CUSTOMER`]'s
/// `pipelines`, its tokens signed with `secret`, on a free port, and waits
/// until it is ready.
async fn start_floor(secret: &str, pipelines: &[Uuid]) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let pipelines: Vec<String> = pipelines.iter().map(Uuid::to_string).collect();
    let mut args = vec!["--floor-secret", secret, "--floor-customer", BENCH_CUSTOMER];
    for pipeline in &pipelines {
        args.extend(["--floor-pipeline", pipeline.as_str()]);
    }
    start_baseline(&args).await
}

/// Starts the bare axum baseline (`xtask bench-baseline`, with `args`
/// after its address) on a free port and waits until it is ready.
async fn start_baseline(args: &[&str]) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let addr = free_local_addr()?;
    let mut command = Command::new(env::current_exe().context("cannot find this xtask")?);
    command
        .args(["bench-baseline", "--bind", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped());
    let mut server = ChildGuard::spawn("the baseline", &mut command)?;
    server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
    Ok((server, addr))
}

/// `maestro serve` on `addr` with the bench's secret and `env`, and nothing
/// else of the caller's `MAESTRO_*` settings.
fn maestro_command(
    maestro: &Path,
    addr: SocketAddr,
    secret: &str,
    env: &[(&'static str, String)],
) -> Command {
    let mut command = Command::new(maestro);
    command.arg("serve");
    // Settings from the caller's environment must not change what is
    // measured: only the bench's own reach the service.
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("MAESTRO_") {
            command.env_remove(name);
        }
    }
    command
        .env("MAESTRO_BIND", addr.to_string())
        .env("MAESTRO_JWT_HS256_SECRET", secret)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null());
    command
}

/// Says which statuses and which transport error a target answered with,
/// since the summary only counts them.
fn report_first_problem(name: &str, report: &load::LoadReport) {
    if !report.failures_by_status.is_empty() {
        eprintln!(
            "{name} answered non-2xx statuses: {:?}",
            report.failures_by_status
        );
    }
    if let Some(err) = &report.first_transport_error {
        eprintln!("{name}: first transport error: {err}");
    }
}

/// 64 hex digits from two v4 UUIDs: 244 random bits, well over the 32
/// bytes the service asks of an HS256 secret.
fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// An HS256 token for `customer`, valid for an hour from `now`.
fn mint_token(secret: &str, customer: &str, now: u64) -> anyhow::Result<String> {
    crate::token::mint(secret, customer, now + 3600)
}

/// `POST /platform/pipeline/execute` for `pipeline` with `token`. The
/// baseline gets the very same request and ignores the token.
fn execute_request(token: &str, pipeline: Uuid) -> anyhow::Result<RequestTemplate> {
    RequestTemplate::new(Method::POST, baseline::EXECUTE_PATH)
        .bearer(token)?
        .json(&serde_json::json!({"pipeline_id": pipeline.hyphenated().to_string()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    #[test]
    fn the_token_is_hs256_for_the_customer_and_expires_in_an_hour() {
        let secret = random_secret();
        let now = unix_now().expect("clock");
        let token = mint_token(&secret, "bench", now).expect("signed");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()).expect("key"),
            &validation,
        )
        .expect("verifies with the same secret");
        assert_eq!(decoded.header.alg, Algorithm::HS256);
        assert_eq!(
            decoded.claims,
            serde_json::json!({"customer_id": "bench", "sub": "bench", "exp": now + 3600})
        );
        let other = random_secret();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_secret(other.as_bytes()).expect("key"),
                &validation,
            )
            .is_err()
        );
    }

    #[test]
    fn secrets_are_long_and_never_repeat() {
        let (first, second) = (random_secret(), random_secret());
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
    }

    #[test]
    fn the_execute_request_carries_the_hyphenated_id_and_the_bearer_token() {
        let pipeline = Uuid::new_v4();
        let request = execute_request("t0k3n", pipeline).expect("request");
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/platform/pipeline/execute");
        assert_eq!(request.headers[AUTHORIZATION], "Bearer t0k3n");
        assert_eq!(request.headers[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"pipeline_id": pipeline.hyphenated().to_string()})
        );
    }

    #[test]
    fn the_memory_fixture_holds_the_one_pipeline_of_the_bench_customer() {
        let pipeline = Uuid::new_v4();
        let setup = Backend::Memory.prepare(pipeline).expect("prepared");
        let env: std::collections::HashMap<_, _> = setup.env.iter().cloned().collect();
        assert_eq!(env["MAESTRO_BACKEND"], "memory");
        assert_eq!(env["MAESTRO_MEMORY_RUN_SECONDS"], "0");
        let text = std::fs::read_to_string(&env["MAESTRO_MEMORY_FIXTURE"]).expect("fixture exists");
        let fixture: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            fixture,
            serde_json::json!({"pipelines": [{
                "id": pipeline.hyphenated().to_string(),
                "customer_id": "bench",
                "name": "bench",
            }]})
        );
        let path = env["MAESTRO_MEMORY_FIXTURE"].clone();
        drop(setup);
        assert!(
            !Path::new(&path).exists(),
            "the fixture is removed with the setup"
        );
    }
}
