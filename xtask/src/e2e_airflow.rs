//! `cargo xtask e2e-airflow`: the Airflow backend's end-to-end tests
//! against a real Apache Airflow 3, started here and stopped afterwards.
//!
//! The steps: install `apache-airflow[postgres]` into a venv under
//! `target/` unless it is there already; start a throwaway PostgreSQL
//! cluster under `target/` (`scripts/postgres-test-server.sh`) for
//! Airflow's metadata database, as production deployments have it
//! (`--metadata-db sqlite` keeps it in SQLite instead, as `airflow
//! standalone` does by default); start `airflow standalone`
//! (LocalExecutor) on a free loopback port with a fresh home under
//! `target/` and the DAGs of `tests/airflow/dags/`; wait until it is
//! healthy; run the adapter's tests (`crates/adapter-airflow/tests/e2e.rs`)
//! and then the black-box tests of the `maestro` binary
//! (`tests/e2e/airflow.rs`) against it.
//! Airflow runs in its own process group, which is killed on every way
//! out: success, failure, panic and Ctrl-C, and the PostgreSQL cluster is
//! stopped and deleted after it. `cargo xtask bench --backend airflow` and
//! `cargo xtask stack` start Airflow with the same functions.
//!
//! The binary's tests also need a Redis server, which two `maestro`
//! instances share for their Idempotency-Key store: the one named by
//! `MAESTRO_TEST_REDIS_URL` when it is set (`.ci/run` starts one), or else
//! a throwaway one of the harness's own from `scripts/redis-test-server.sh`,
//! stopped again on every way out like Airflow.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{
    http::{self, RequestTemplate},
    process::free_local_addr,
    test_server::{self, TestServer},
};

/// The Airflow release the tests are written against.
pub(crate) const AIRFLOW_VERSION: &str = "3.3.2";

/// The Airflow account the tests use, with the simple auth manager's
/// `USER` role: read everything, and edit DAGs and DAG runs. That the tests
/// pass with it shows that Maestro needs no more. Airflow generates its
/// password.
pub(crate) const USERNAME: &str = "maestro";

/// How long one health check of Airflow may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The accounts Airflow is started with: the tests' one, and an admin for
/// looking around with `--keep-running`.
const USERS: &str = "maestro:user,admin:admin";

/// One test binary of the e2e tests, and the test in it that stops
/// Airflow, which runs alone after all the others.
struct Suite {
    /// How the reports call it.
    name: &'static str,
    /// The package, test target and the feature that builds the target,
    /// as `cargo test` takes them.
    package: &'static str,
    target: &'static str,
    feature: &'static str,
    /// A filter that picks the suite's tests out of the test binary, or
    /// `""` for all of them.
    filter: &'static str,
    stopping: &'static str,
}

/// The adapter's own tests, then the `maestro` binary's through its HTTP
/// API. Their stopping tests run in the opposite order: the binary's only
/// freezes Airflow and thaws it again; the adapter's kills it.
const SUITES: [Suite; 2] = [
    Suite {
        name: "adapter e2e",
        package: "adapter-airflow",
        target: "e2e",
        feature: "e2e",
        filter: "",
        stopping: "airflow_stopped_mid_test_gives_timeouts_then_unavailable",
    },
    Suite {
        name: "api e2e",
        package: "app",
        target: "e2e",
        feature: "e2e",
        filter: "airflow::",
        stopping: "airflow::airflow_stopped_mid_test_gives_504_within_the_timeout_and_ready_503",
    },
];

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The Python (3.10 to 3.13) to make the venv with.
    #[arg(long, default_value = "python3")]
    python: String,
    /// How long Airflow may take to become healthy, in seconds.
    #[arg(long, default_value_t = 300)]
    startup_timeout: u64,
    /// Leave out the tests that stop Airflow, and keep Airflow running
    /// until Enter is pressed, to look at it by hand.
    #[arg(long)]
    keep_running: bool,
    /// Where Airflow keeps its metadata.
    #[arg(long, value_enum, default_value_t = MetadataDb::Postgres)]
    metadata_db: MetadataDb,
}

/// Where Airflow keeps its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MetadataDb {
    /// A throwaway PostgreSQL cluster under `target/`, as production
    /// deployments have it.
    Postgres,
    /// SQLite in Airflow's home, `airflow standalone`'s default: concurrent
    /// triggers meet its write lock and answer 500 after 5 s.
    Sqlite,
}

impl MetadataDb {
    /// How reports name it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Sqlite => "SQLite",
        }
    }
}

/// An `airflow standalone` started on a free loopback port with a fresh
/// home and the repository's test DAGs, healthy, with the password of
/// [`USERNAME`]. Dropping it stops Airflow, then its PostgreSQL cluster.
pub(crate) struct Started {
    pub(crate) airflow: Airflow,
    pub(crate) url: String,
    pub(crate) port: u16,
    pub(crate) home: PathBuf,
    pub(crate) password: String,
    pub(crate) metadata_db: MetadataDb,
    /// Declared after `airflow`, so that it is dropped (stopped) after
    /// Airflow is.
    _postgres: Option<TestServer>,
}

/// Makes the venv if needed, starts the metadata database and Airflow with
/// a fresh home at `target/<home_name>`, and runs `while_booting` (a
/// build, say) while Airflow boots, then waits until Airflow is healthy.
/// Ctrl-C stops Airflow and the database from then on.
pub(crate) fn start(
    python: &str,
    home_name: &str,
    metadata_db: MetadataDb,
    startup_timeout: Duration,
    while_booting: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Started> {
    let root = crate::project_root();
    let target = root.join("target");
    let venv = target.join("airflow-venv");
    let home = target.join(home_name);
    let dags = root.join("tests").join("airflow").join("dags");

    let step = Instant::now();
    // With its `postgres` extra: the PostgreSQL provider, which brings
    // `psycopg2-binary` for the metadata database and `asyncpg`, which
    // Airflow 3 derives its async connection from. Without Airflow's
    // constraints file, which lives on GitHub: plain pip resolution of this
    // one pinned release works, and keeps the install to PyPI alone.
    crate::venv::ensure(
        python,
        &venv,
        &format!("apache-airflow[postgres]=={AIRFLOW_VERSION}"),
        "airflow",
    )?;
    println!("airflow: venv ready in {:.0?}", step.elapsed());

    if home.exists() {
        fs::remove_dir_all(&home)
            .with_context(|| format!("cannot clear the old Airflow home {}", home.display()))?;
    }
    fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the Airflow home {}", home.display()))?;
    let port = free_local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");

    let step = Instant::now();
    // Ctrl-C from here on stops what has been started: the cluster, and
    // Airflow once it runs.
    let airflow_pgid = stop_on_ctrl_c();
    let (postgres, sql_alchemy_conn) = match metadata_db {
        MetadataDb::Postgres => {
            let (server, url) = TestServer::start_in_target(
                test_server::POSTGRES,
                &format!("{home_name}-postgres"),
            )?;
            println!("airflow: PostgreSQL started in {:.0?}", step.elapsed());
            (Some(server), Some(sql_alchemy_conn(&url)?))
        }
        MetadataDb::Sqlite => (None, None),
    };
    let mut airflow = Airflow::start(&venv, &home, &dags, port, sql_alchemy_conn.as_deref())?;
    airflow_pgid.store(airflow.pgid, std::sync::atomic::Ordering::SeqCst);
    println!(
        "airflow: standalone started on {url} with its metadata in {} (process group {}, log {})",
        metadata_db.describe(),
        airflow.pgid,
        airflow.log.display()
    );

    let ready = (|| {
        while_booting()?;
        airflow.wait_until_healthy(port, startup_timeout)?;
        println!("airflow: healthy after {:.0?}", step.elapsed());
        read_password(&home)
    })();
    match ready {
        Ok(password) => Ok(Started {
            airflow,
            url,
            port,
            home,
            password,
            metadata_db,
            _postgres: postgres,
        }),
        Err(err) => {
            airflow.stop();
            airflow.print_log_tail(60);
            Err(err)
        }
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::project_root();

    // Build the tests while Airflow boots.
    let build = || {
        for suite in &SUITES {
            let built = cargo_test(&root, suite, &[], None)
                .arg("--no-run")
                .status()
                .context("cannot run cargo")?;
            if !built.success() {
                bail!("the {} tests did not build", suite.name);
            }
        }
        Ok(())
    };
    let mut up = start(
        &args.python,
        "airflow-e2e-home",
        args.metadata_db,
        Duration::from_secs(args.startup_timeout),
        build,
    )?;
    let url = up.url.clone();
    // Started after Airflow, so that Ctrl-C stops it too from the start.
    let (_redis, redis_url) = match std::env::var("MAESTRO_TEST_REDIS_URL") {
        Ok(redis_url) if !redis_url.is_empty() => {
            println!("e2e-airflow: using the Redis server of MAESTRO_TEST_REDIS_URL");
            (None, redis_url)
        }
        _ => {
            println!(
                "e2e-airflow: MAESTRO_TEST_REDIS_URL is not set; starting a throwaway redis-server"
            );
            let (redis, redis_url) =
                TestServer::start_in_temp(test_server::REDIS, "maestro-e2e-redis-")?;
            println!("e2e-airflow: redis-server at {redis_url}");
            (Some(redis), redis_url)
        }
    };

    let outcome = (|| {
        let env = [
            ("MAESTRO_E2E_AIRFLOW_URL", url.clone()),
            ("MAESTRO_E2E_AIRFLOW_USERNAME", USERNAME.to_owned()),
            ("MAESTRO_E2E_AIRFLOW_PASSWORD", up.password.clone()),
            ("MAESTRO_E2E_AIRFLOW_PGID", up.airflow.pgid.to_string()),
            ("MAESTRO_TEST_REDIS_URL", redis_url.clone()),
        ];

        let mut failed = Vec::new();
        for suite in &SUITES {
            let step = Instant::now();
            let status = cargo_test(&root, suite, &env, Some(&["--skip", suite.stopping]))
                .status()
                .context("cannot run cargo")?;
            println!(
                "e2e-airflow: {} tests ran in {:.0?} ({status})",
                suite.name,
                step.elapsed()
            );
            if !status.success() {
                failed.push(suite.name);
            }
        }
        if args.keep_running {
            println!(
                "e2e-airflow: Airflow stays up at {url} (admin / password in {}); press Enter to stop it",
                up.home
                    .join("simple_auth_manager_passwords.json.generated")
                    .display()
            );
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
        } else {
            for suite in SUITES.iter().rev() {
                let status: ExitStatus =
                    cargo_test(&root, suite, &env, Some(&["--exact", suite.stopping]))
                        .status()
                        .context("cannot run cargo")?;
                if !status.success() {
                    failed.push(suite.stopping);
                }
            }
        }
        if !failed.is_empty() {
            bail!("e2e tests failed: {}", failed.join(", "));
        }
        Ok(())
    })();

    up.airflow.stop();
    if outcome.is_err() {
        up.airflow.print_log_tail(60);
    }
    // Stops the PostgreSQL cluster too.
    drop(up);
    println!("e2e-airflow: done in {:.0?}", started.elapsed());
    outcome
}

/// SQLAlchemy's URL for the cluster at `url` (`postgresql://...`), with
/// the psycopg2 driver that Airflow's `postgres` extra installs.
fn sql_alchemy_conn(url: &str) -> anyhow::Result<String> {
    url.strip_prefix("postgresql://")
        .map(|rest| format!("postgresql+psycopg2://{rest}"))
        .context("the PostgreSQL URL does not start with postgresql://")
}

/// `cargo test -p <package> --features <feature> --test <target>`, and
/// with `env` set, `-- --test-threads=1 <filter> <extra>`.
fn cargo_test(
    root: &Path,
    suite: &Suite,
    env: &[(&str, String)],
    extra: Option<&[&str]>,
) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args([
        "test",
        "--quiet",
        "-p",
        suite.package,
        "--features",
        suite.feature,
        "--test",
        suite.target,
    ]);
    if let Some(extra) = extra {
        command.args(["--", "--test-threads=1"]);
        // `--exact` names the one test in full; the filter would be a
        // second name that matches nothing.
        if !suite.filter.is_empty() && !extra.contains(&"--exact") {
            command.arg(suite.filter);
        }
        command.args(extra);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// The generated password of [`USERNAME`].
pub(crate) fn read_password(home: &Path) -> anyhow::Result<String> {
    let file = home.join("simple_auth_manager_passwords.json.generated");
    let text =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let passwords: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    passwords[USERNAME]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no password for {USERNAME}", file.display()))
}

/// On Ctrl-C, kills Airflow's process group (once its id is stored in the
/// cell returned), then the harness's other child processes, its Redis and
/// its PostgreSQL cluster, and exits: Airflow is in a group of its own, so
/// the terminal's interrupt does not reach it, and no guard's drop runs
/// when the process is interrupted.
pub(crate) fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    let pgid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let airflow = pgid.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("airflow: interrupted; stopping Airflow and what runs beside it");
            crate::process::kill_guarded();
            let pgid = airflow.load(std::sync::atomic::Ordering::SeqCst);
            if pgid != 0 {
                signal_group(pgid, "-KILL");
            }
            // Exiting runs no destructor: stop the harness's servers here.
            test_server::stop_started();
            std::process::exit(130);
        }
    });
    pgid
}

/// Sends `signal` to every process of the group.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `airflow standalone`, in a process group of its own so that all of its
/// processes (API server, scheduler, DAG processor, triggerer, workers) can
/// be stopped together.
pub(crate) struct Airflow {
    child: Child,
    pub(crate) pgid: u32,
    pub(crate) log: PathBuf,
    stopped: bool,
}

impl Airflow {
    /// Starts `airflow standalone` with its metadata at `sql_alchemy_conn`
    /// (SQLAlchemy's URL), or in SQLite in `home` when it is `None`.
    pub(crate) fn start(
        venv: &Path,
        home: &Path,
        dags: &Path,
        port: u16,
        sql_alchemy_conn: Option<&str>,
    ) -> anyhow::Result<Self> {
        let bin = venv.join("bin");
        let log = home.join("standalone.log");
        let output =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let path = match std::env::var_os("PATH") {
            Some(path) => {
                let mut paths = vec![bin.clone()];
                paths.extend(std::env::split_paths(&path));
                std::env::join_paths(paths)?
            }
            None => bin.clone().into_os_string(),
        };
        let mut command = Command::new(bin.join("airflow"));
        if let Some(conn) = sql_alchemy_conn {
            command
                .env("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", conn)
                // The API server commits its audit log entry of a POST or
                // PATCH with a synchronous session on its event loop. Once
                // the pool (5 and 10 more by default) is checked out by
                // requests in its 40 worker threads, that checkout blocks
                // the loop, the threads' requests wait for the loop, and
                // the API server stands still until the pool's 30 s
                // timeout: under a few dozen concurrent triggers it
                // answers nothing. A pool that outgrows the worker threads
                // never runs dry (docs/decisions/0015).
                .env("AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW", "60");
        }
        let child = command
            .arg("standalone")
            .current_dir(home)
            // `standalone` starts its components as `airflow ...` from PATH.
            .env("PATH", path)
            .env("AIRFLOW_HOME", home)
            .env("AIRFLOW__API__HOST", "127.0.0.1")
            .env("AIRFLOW__API__PORT", port.to_string())
            // Without it, tasks report to the default port and all fail.
            .env(
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                format!("http://127.0.0.1:{port}/execution/"),
            )
            // The log servers of the scheduler and triggerer listen on
            // fixed ports (8793, 8794) otherwise, which a second Airflow
            // on the machine would collide with.
            .env(
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                free_local_addr()?.port().to_string(),
            )
            .env(
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
                free_local_addr()?.port().to_string(),
            )
            .env("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
            // The tests run one DAG run at a time; fewer worker processes
            // leave more of a small machine to the rest.
            .env("AIRFLOW__CORE__PARALLELISM", "4")
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__DAGS_FOLDER", dags)
            .env("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", USERS)
            // Keeps `__pycache__` out of the repository's DAG folder.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.join("airflow").display()))?;
        let pgid = child.id();
        Ok(Self {
            child,
            pgid,
            log,
            stopped: false,
        })
    }

    /// Waits until `/api/v2/monitor/health` reports the metadata database
    /// and the scheduler healthy.
    pub(crate) fn wait_until_healthy(
        &mut self,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let health = RequestTemplate::get("/api/v2/monitor/health");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        runtime.block_on(async {
            loop {
                if let Some(status) = self.child.try_wait()? {
                    bail!("airflow standalone exited ({status}) before it was healthy");
                }
                // Any failure to answer is retried: Airflow is booting.
                if let Ok(answer) = http::send_once(addr, &health, HEALTH_TIMEOUT).await
                    && answer.status.is_success()
                {
                    let health = answer.json();
                    if health["metadatabase"]["status"] == "healthy"
                        && health["scheduler"]["status"] == "healthy"
                    {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    bail!("Airflow was not healthy within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }

    /// Stops every process of the group: politely, then not.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        signal_group(self.pgid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Whatever is left of the group, the standalone itself included.
        signal_group(self.pgid, "-KILL");
        let _ = self.child.wait();
        // Its other processes are reaped by init; wait until they are, so
        // that nothing of Airflow outlives the command.
        let deadline = Instant::now() + Duration::from_secs(10);
        while signal_group(self.pgid, "-0") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn print_log_tail(&self, lines: usize) {
        let Ok(text) = fs::read_to_string(&self.log) else {
            return;
        };
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        eprintln!("e2e-airflow: the last lines of {}:", self.log.display());
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
}

impl Drop for Airflow {
    fn drop(&mut self) {
        self.stop();
    }
}
