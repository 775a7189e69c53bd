//! `cargo xtask stack`: the production shape on one machine. PostgreSQL,
//! Apache Airflow 3 on it (LocalExecutor), Redis, two release `maestro`
//! instances on the Airflow backend sharing that Redis, and Debian's
//! HAProxy in front of them, checking `/ready` so that a draining instance
//! leaves the rotation before its listener closes.
//!
//! Without `--check` it prints the URL, a token and a curl line, and runs
//! until Ctrl-C, which stops everything. With `--check` it restarts both
//! instances one after the other under a steady request loop through
//! HAProxy (`stack/check.rs`), checks that no request and no run was lost,
//! prints the report and stops everything.
//!
//! Everything it starts lives under `target/stack/` (the instances' and
//! HAProxy's logs, HAProxy's configuration) and `target/stack-airflow-*`
//! (Airflow's home and the PostgreSQL cluster); Airflow's venv is the e2e
//! harness's `target/airflow-venv`.

use std::{
    collections::HashMap,
    env,
    fs::{self, OpenOptions},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::{
    e2e_airflow::{self, MetadataDb},
    http::{self, RequestTemplate},
    process::{ChildGuard, free_local_addr},
    test_server::{self, TestServer},
};

mod check;

/// The pipeline the stack's demo and check trigger: customer `globex`'s DAG
/// that succeeds, from `tests/airflow/dags/maestro_e2e.py`.
const PIPELINE: &str = "aa87333e_4d68_49cf_9995_a8f84fe46fa0";
const CUSTOMER: &str = "globex";

/// After SIGTERM, how long an instance keeps serving with `/ready` at 503
/// before its listener closes (`MAESTRO_SHUTDOWN_DELAY_SECONDS`), and how
/// long its in-flight requests may then take
/// (`MAESTRO_SHUTDOWN_GRACE_SECONDS`). HAProxy's checks below take a
/// draining instance out within two intervals, well inside the delay.
const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// HAProxy's health checks: one `GET /ready` per second on each instance,
/// out after two failures, back after two successes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_FALL: u32 = 2;
const CHECK_RISE: u32 = 2;

/// How long Airflow's DAG processor may take to parse the DAGs, and an
/// instance or HAProxy to come up.
const DAG_PARSE_TIMEOUT: Duration = Duration::from_secs(120);
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one set-up call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `cargo xtask stack`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Restart both instances one after the other under a steady request
    /// loop, check that no request and no run was lost, and stop.
    #[arg(long)]
    check: bool,
    /// With `--check`: requests per second, half executes and half reads of
    /// a run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=200))]
    rate: u32,
    /// With `--check`: seconds of steady traffic before the first restart
    /// and after the last.
    #[arg(long, default_value_t = 3)]
    settle_seconds: u64,
    /// The Python (3.10 to 3.13) to make Airflow's venv with.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Where Airflow keeps its metadata.
    #[arg(long, value_enum, default_value_t = MetadataDb::Postgres)]
    metadata_db: MetadataDb,
    /// How long Airflow may take to become healthy, in seconds.
    #[arg(long, default_value_t = 300)]
    startup_timeout: u64,
}

/// Runs `cargo xtask stack`.
///
/// # Errors
/// When a part cannot be installed, built or started, or with `--check`,
/// when the check fails.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::project_root();
    let dir = root.join("target").join("stack");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let haproxy = ensure_haproxy()?;
    let mut maestro = None;
    let up = e2e_airflow::start(
        &args.python,
        "stack-airflow-home",
        args.metadata_db,
        Duration::from_secs(args.startup_timeout),
        // Build while Airflow boots.
        || {
            maestro = Some(crate::process::build_release_maestro()?);
            Ok(())
        },
    )?;
    let maestro = maestro.context("the build did not run")?;
    let (redis, redis_url) = TestServer::start_in_temp(test_server::REDIS, "maestro-stack-redis-")?;
    println!("stack: redis-server at {redis_url}");

    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let settings = Settings {
        binary: maestro,
        airflow_url: up.url.clone(),
        airflow_password: up.password.clone(),
        redis_url,
        secret,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    let mut instances = Vec::new();
    for number in 1..=2 {
        let mut instance = Instance::new(number, &dir)?;
        runtime.block_on(instance.start(&settings))?;
        instances.push(instance);
    }
    let front = free_local_addr()?;
    let stats = free_local_addr()?;
    let config = dir.join("haproxy.cfg");
    let servers: Vec<(String, SocketAddr)> = instances
        .iter()
        .map(|instance| (instance.name.clone(), instance.addr))
        .collect();
    fs::write(&config, haproxy_config(front, stats, &servers))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let haproxy_log = dir.join("haproxy.log");
    let haproxy = start_haproxy(&haproxy, &config, &haproxy_log)?;
    let stack = Stack {
        haproxy,
        haproxy_log,
        instances,
        front,
        stats,
        _redis: redis,
        airflow: up,
    };
    runtime.block_on(stack.wait_until_in_rotation(&servers_names(&stack.instances)))?;
    let token = mint_token(&settings)?;
    runtime.block_on(stack.unpause(&token))?;
    println!(
        "stack: up in {:.0?}: HAProxy at http://{front} in front of {}",
        started.elapsed(),
        stack
            .instances
            .iter()
            .map(|instance| format!("{} (http://{})", instance.name, instance.addr))
            .collect::<Vec<_>>()
            .join(" and ")
    );

    if args.check {
        let outcome = runtime.block_on(check::run(args, stack, &settings, &token));
        println!("stack: done in {:.0?}", started.elapsed());
        return outcome;
    }
    print_usage(&stack, &token, &dir);
    // Ctrl-C stops everything (the e2e harness's handler: the instances,
    // HAProxy, Airflow, Redis and PostgreSQL); until then, say when an
    // instance dies.
    runtime.block_on(stack.watch())
}

/// What an instance is started with.
#[derive(Debug)]
struct Settings {
    binary: PathBuf,
    airflow_url: String,
    airflow_password: String,
    redis_url: String,
    secret: String,
}

/// The parts of a running stack, stopped in this order when dropped:
/// HAProxy, the instances, Redis, Airflow and then its PostgreSQL.
struct Stack {
    haproxy: ChildGuard,
    haproxy_log: PathBuf,
    instances: Vec<Instance>,
    front: SocketAddr,
    stats: SocketAddr,
    _redis: TestServer,
    airflow: e2e_airflow::Started,
}

/// One `maestro` instance: a fixed port (HAProxy's configuration names it),
/// a log appended to across its restarts, and the process while it runs.
#[derive(Debug)]
struct Instance {
    name: String,
    addr: SocketAddr,
    log: PathBuf,
    process: Option<ChildGuard>,
}

impl Instance {
    fn new(number: u32, dir: &Path) -> anyhow::Result<Self> {
        let name = format!("maestro-{number}");
        let log = dir.join(format!("{name}.log"));
        // A fresh log per stack; restarts append to it.
        fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
        Ok(Self {
            addr: free_local_addr()?,
            name,
            log,
            process: None,
        })
    }

    /// Starts the instance and waits until it answers `GET /health`.
    async fn start(&mut self, settings: &Settings) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(&settings.binary);
        command.arg("serve");
        // Only the stack's own settings reach the instance.
        for (name, _) in env::vars_os() {
            if name.to_string_lossy().starts_with("MAESTRO_") {
                command.env_remove(name);
            }
        }
        command
            .env("MAESTRO_BIND", self.addr.to_string())
            .env("MAESTRO_BACKEND", "airflow")
            .env("MAESTRO_AIRFLOW_URL", &settings.airflow_url)
            .env("MAESTRO_AIRFLOW_USERNAME", e2e_airflow::USERNAME)
            .env("MAESTRO_AIRFLOW_PASSWORD", &settings.airflow_password)
            .env("MAESTRO_REDIS_URL", &settings.redis_url)
            .env("MAESTRO_JWT_HS256_SECRET", &settings.secret)
            .env(
                "MAESTRO_SHUTDOWN_DELAY_SECONDS",
                SHUTDOWN_DELAY.as_secs().to_string(),
            )
            .env(
                "MAESTRO_SHUTDOWN_GRACE_SECONDS",
                SHUTDOWN_GRACE.as_secs().to_string(),
            )
            .env("MAESTRO_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildGuard::spawn(&self.name, &mut command)?;
        process
            .wait_until_healthy(self.addr, UP_TIMEOUT)
            .await
            .with_context(|| format!("see {}", self.log.display()))?;
        self.process = Some(process);
        Ok(())
    }
}

impl Stack {
    /// Waits until HAProxy's checks see every server in `names` up.
    async fn wait_until_in_rotation(&self, names: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            let states = self.server_states().await;
            if let Ok(states) = &states
                && names
                    .iter()
                    .all(|name| states.get(name).is_some_and(|state| state == "UP"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .instances
                    .iter()
                    .filter(|instance| names.contains(&instance.name))
                    .map(|instance| self.readiness_seen(instance))
                    .collect();
                bail!(
                    "HAProxy did not see {} up within {UP_TIMEOUT:?} (last: {states:?})\n{}",
                    names.join(" and "),
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What HAProxy's log and the instance's own say of the readiness of
    /// `instance`, for an error: its last state changes and checks.
    fn readiness_seen(&self, instance: &Instance) -> String {
        let name = &instance.name;
        format!(
            "HAProxy's last word on {name} ({}):\n{}\n{name}'s last readiness lines ({}):\n{}",
            self.haproxy_log.display(),
            last_lines(&self.haproxy_log, &format!("maestros/{name} "), 4),
            instance.log.display(),
            last_lines(&instance.log, "readiness", 4),
        )
    }

    /// The state of each server of the `maestros` backend as HAProxy's
    /// statistics page has it (`UP`, `DOWN`, `UP 1/2` while going down,
    /// ...), by name.
    async fn server_states(&self) -> anyhow::Result<HashMap<String, String>> {
        let answer = http::send_once(
            self.stats,
            &RequestTemplate::get("/stats;csv"),
            Duration::from_secs(2),
        )
        .await
        .context("HAProxy's statistics page did not answer")?;
        if answer.status != StatusCode::OK {
            bail!("HAProxy's statistics page answered {}", answer.status);
        }
        Ok(server_states(&String::from_utf8_lossy(&answer.body)))
    }

    /// Waits until the DAG is parsed, then unpauses it through the stack
    /// (an already unpaused DAG answers 400 `PipelineNotPaused`, which is as
    /// good).
    async fn unpause(&self, token: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + DAG_PARSE_TIMEOUT;
        let read = RequestTemplate::get(format!("/platform/pipeline/{PIPELINE}")).bearer(token)?;
        loop {
            let answer = http::send_once(self.front, &read, CALL_TIMEOUT).await;
            if answer
                .as_ref()
                .is_ok_and(|answer| answer.status.is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the stack did not know pipeline {PIPELINE} within {DAG_PARSE_TIMEOUT:?} (last: {:?})",
                    answer.map(|answer| answer.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let unpause = RequestTemplate::new(Method::POST, "/platform/pipeline/unpause")
            .bearer(token)?
            .json(&json!({"pipeline_id": PIPELINE}))?;
        let answer = http::send_once(self.front, &unpause, CALL_TIMEOUT)
            .await
            .context("the unpause got no answer")?;
        let refused = answer.json()["detail"]["exception_type"] == "PipelineNotPaused";
        if !answer.status.is_success() && !refused {
            bail!("unpausing {PIPELINE} answered {}", answer.status);
        }
        Ok(())
    }

    /// Runs until Ctrl-C (whose handler stops everything and exits),
    /// saying when an instance or HAProxy exits on its own.
    async fn watch(mut self) -> anyhow::Result<()> {
        let mut haproxy_running = true;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if crate::process::interrupted() {
                continue;
            }
            for instance in &mut self.instances {
                if let Some(process) = &mut instance.process
                    && let Some(status) = process.exit_status()?
                {
                    eprintln!(
                        "stack: {} exited ({status}); see {}",
                        instance.name,
                        instance.log.display()
                    );
                    instance.process = None;
                }
            }
            if haproxy_running && let Some(status) = self.haproxy.exit_status()? {
                eprintln!("stack: HAProxy exited ({status})");
                haproxy_running = false;
            }
        }
    }
}

/// The last `count` lines of the file at `path` that contain `needle`,
/// indented; what went wrong reading it otherwise.
fn last_lines(path: &Path, needle: &str, count: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let found: Vec<&str> = text.lines().filter(|line| line.contains(needle)).collect();
            if found.is_empty() {
                return "    (none)".to_owned();
            }
            found[found.len().saturating_sub(count)..]
                .iter()
                .map(|line| format!("    {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(err) => format!("    (cannot read it: {err})"),
    }
}

/// The names of `instances`, as HAProxy's configuration has them.
fn servers_names(instances: &[Instance]) -> Vec<String> {
    instances
        .iter()
        .map(|instance| instance.name.clone())
        .collect()
}

/// What to do with a running stack.
fn print_usage(stack: &Stack, token: &str, dir: &Path) {
    let front = stack.front;
    println!();
    println!(
        "Maestro (two instances behind HAProxy) at http://{front}, on Apache Airflow at {} with its metadata in {}.",
        stack.airflow.url,
        stack.airflow.metadata_db.describe()
    );
    println!("A token for customer {CUSTOMER}, valid for a day:");
    println!();
    println!("export TOKEN={token}");
    println!(
        "curl -s -X POST http://{front}/platform/pipeline/execute -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"pipeline_id\": \"{PIPELINE}\"}}'"
    );
    println!();
    println!(
        "HAProxy's statistics: http://{}/stats; logs: {}; Airflow's admin password: {}.",
        stack.stats,
        dir.display(),
        stack
            .airflow
            .home
            .join("simple_auth_manager_passwords.json.generated")
            .display()
    );
    println!("Ctrl-C stops everything.");
}

/// A token for [`CUSTOMER`], valid for a day, minted by `maestro token`
/// with the instances' secret.
fn mint_token(settings: &Settings) -> anyhow::Result<String> {
    let output = Command::new(&settings.binary)
        .args(["token", "--customer", CUSTOMER, "--ttl-seconds", "86400"])
        .env("MAESTRO_JWT_HS256_SECRET", &settings.secret)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run maestro token")?;
    if !output.status.success() {
        bail!("maestro token failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The `haproxy` program, after installing Debian's package when it is
/// missing (with sudo unless root, as `scripts/redis-test-server.sh` does).
fn ensure_haproxy() -> anyhow::Result<PathBuf> {
    let find = || {
        ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .or_else(|| {
                Command::new("haproxy")
                    .arg("-v")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
                    .then(|| PathBuf::from("haproxy"))
            })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    println!("stack: installing Debian's haproxy");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        // dpkg's progress on stdout is left out; errors come on stderr.
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "haproxy"])?;
    find().context("haproxy is still missing after apt-get install haproxy")
}

/// Starts HAProxy in the foreground with `config`, logging to `log`, after
/// checking the configuration.
fn start_haproxy(haproxy: &Path, config: &Path, log: &Path) -> anyhow::Result<ChildGuard> {
    let checked = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("cannot run haproxy -c")?;
    if !checked.success() {
        bail!("haproxy refused {}", config.display());
    }
    let output =
        fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(haproxy);
    command
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    let guard = ChildGuard::spawn("haproxy", &mut command)?;
    println!("stack: HAProxy started (log {})", log.display());
    Ok(guard)
}

/// HAProxy's configuration: `front` balanced over `servers`, each checked
/// with `GET /ready`, and the statistics page on `stats`.
fn haproxy_config(
    front: SocketAddr,
    stats: SocketAddr,
    servers: &[(String, SocketAddr)],
) -> String {
    let inter = CHECK_INTERVAL.as_millis();
    let checked: String = servers
        .iter()
        .map(|(name, addr)| format!("    server {name} {addr} check\n"))
        .collect();
    // `/ready` is 503 while the engine does not answer, so a slow engine
    // can make every instance unready at once; HAProxy would then answer
    // 503 itself. The same instances, unchecked, as backups take the
    // traffic in that case only, and Maestro answers it (late, or with its
    // own documented errors).
    let fallbacks: String = servers
        .iter()
        .map(|(name, addr)| format!("    server {name}-fallback {addr} backup\n"))
        .collect();
    let servers = format!("{checked}{fallbacks}");
    format!(
        "\
# Written by `cargo xtask stack` (xtask/src/stack.rs); see
# docs/decisions/0015-postgresql-in-e2e-and-the-stack.md for the settings.
global
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    # Longer than the longest request Maestro serves (a wait of 60 s).
    timeout client 75s
    timeout server 75s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout check 2s
    # A connection refused or reset before the request was sent is tried
    # again, on another instance.
    retries 3
    option redispatch 1

frontend maestro
    bind {front}
    default_backend maestros

backend maestros
    balance roundrobin
    # A draining instance answers /ready with 503 at once and keeps serving
    # for MAESTRO_SHUTDOWN_DELAY_SECONDS ({delay} s): {fall} failed checks
    # {inter} ms apart take it out well within that.
    option httpchk GET /ready
    http-check expect status 200
    # The backups below share the traffic when they are used.
    option allbackups
    default-server inter {inter} fall {fall} rise {rise}
{servers}
frontend stats
    bind {stats}
    stats enable
    stats uri /stats
    stats refresh 2s
",
        delay = SHUTDOWN_DELAY.as_secs(),
        fall = CHECK_FALL,
        rise = CHECK_RISE,
    )
}

/// The state of each server of the `maestros` backend, by name, from
/// HAProxy's statistics as CSV (a header line `# pxname,svname,...,status,...`,
/// then one line per frontend, server and backend).
fn server_states(csv: &str) -> HashMap<String, String> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|line| line.strip_prefix("# ")) else {
        return HashMap::new();
    };
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| columns.iter().position(|column| *column == name);
    let (Some(proxy), Some(server), Some(status)) =
        (column("pxname"), column("svname"), column("status"))
    else {
        return HashMap::new();
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|fields| fields.get(proxy) == Some(&"maestros"))
        .filter(|fields| !matches!(fields.get(server), Some(&"FRONTEND" | &"BACKEND")))
        .filter_map(|fields| {
            Some((
                (*fields.get(server)?).to_owned(),
                (*fields.get(status)?).to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The loopback address of `port`.
    fn local(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn haproxy_checks_ready_often_enough_to_drop_a_draining_instance_within_the_delay() {
        let config = haproxy_config(
            local(8080),
            local(8081),
            &[
                ("maestro-1".to_owned(), local(9001)),
                ("maestro-2".to_owned(), local(9002)),
            ],
        );
        for line in [
            "    bind 127.0.0.1:8080",
            "    option httpchk GET /ready",
            "    http-check expect status 200",
            "    default-server inter 1000 fall 2 rise 2",
            "    server maestro-1 127.0.0.1:9001 check",
            "    server maestro-2 127.0.0.1:9002 check",
            "    bind 127.0.0.1:8081",
            "    stats uri /stats",
        ] {
            assert!(config.contains(&format!("{line}\n")), "{line}\n{config}");
        }
        assert!(
            CHECK_INTERVAL * CHECK_FALL < SHUTDOWN_DELAY,
            "an instance leaves the rotation before its listener closes"
        );
    }

    #[test]
    fn the_statistics_give_each_servers_state_and_nothing_else() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
            maestro,FRONTEND,,,0,1,4096,3,0,0,0,0,0,,,,,OPEN,\n\
            maestros,maestro-1,0,0,0,1,,2,0,0,,0,,0,0,0,0,UP,1\n\
            maestros,maestro-2,0,0,0,1,,1,0,0,,0,,0,0,0,0,DOWN 1/2,1\n\
            maestros,BACKEND,0,0,0,1,410,3,0,0,0,0,,0,0,0,0,UP,2\n\
            stats,FRONTEND,,,1,1,4096,2,0,0,0,0,0,,,,,OPEN,\n";
        let states = server_states(csv);
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!(states["maestro-1"], "UP");
        assert_eq!(states["maestro-2"], "DOWN 1/2");
        assert!(server_states("not csv").is_empty());
    }

    #[test]
    fn an_error_quotes_the_last_lines_that_name_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("haproxy.log");
        let lines: Vec<String> = (1..=6)
            .map(|n| format!("Server maestros/maestro-{} is DOWN, check {n}", n % 2 + 1))
            .collect();
        fs::write(&log, lines.join("\n")).unwrap();
        assert_eq!(
            last_lines(&log, "maestros/maestro-2 ", 2),
            "    Server maestros/maestro-2 is DOWN, check 3\n    Server maestros/maestro-2 is DOWN, check 5"
        );
        assert_eq!(last_lines(&log, "maestro-3", 2), "    (none)");
        assert!(
            last_lines(&dir.path().join("missing"), "x", 2).starts_with("    (cannot read it: ")
        );
    }
}
