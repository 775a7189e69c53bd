//! The real `maestro` binary as a child process: started with a given
//! environment, its output lines collected as they come, killed on drop.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::helpers::{SECRET, fixture};

/// The binary Cargo built for these tests.
pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_maestro");

/// `maestro` with none of the test process's settings, but what it needs to
/// run as the tests run: `PATH`, and the clock when the suite runs under a
/// faked one (`LD_PRELOAD` and `FAKETIME*`), so that a token the binary
/// mints and a token a test mints agree on the time.
pub(crate) fn command() -> Command {
    with_clean_env(Command::new(BINARY))
}

/// `command` with none of the test process's settings but those
/// [`command`] keeps.
fn with_clean_env(mut command: Command) -> Command {
    command
        .env_clear()
        .envs(std::env::vars().filter(|(name, _)| {
            name == "PATH" || name == "LD_PRELOAD" || name.starts_with("FAKETIME")
        }));
    command
}

/// How long to wait for a line of output or for the process to exit before
/// the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

/// Both output streams, one line an entry, and a signal for each new line,
/// so that waiting for a line needs no polling.
#[derive(Default)]
struct Output {
    lines: Mutex<Streams>,
    grown: Condvar,
}

#[derive(Default)]
struct Streams {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// A running `maestro` whose output lines are collected as they come.
pub(crate) struct Maestro {
    pub(crate) child: Child,
    output: Arc<Output>,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    output: Arc<Output>,
    pick: fn(&mut Streams) -> &mut Vec<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            pick(&mut output.lines.lock().unwrap()).push(line);
            output.grown.notify_all();
        }
    });
}

impl Maestro {
    /// Starts `maestro serve` with only the given environment.
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with_args(&[], env)
    }

    /// Starts `maestro serve` with these flags and only the given environment.
    pub(crate) fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(command(), args, env)
    }

    /// Starts `maestro serve` under `prlimit --nofile=<open_files>`, so
    /// that it can hold at most that many file descriptors.
    pub(crate) fn start_with_open_file_limit(open_files: u32, env: &[(&str, &str)]) -> Self {
        let mut command = with_clean_env(Command::new("prlimit"));
        command
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg(BINARY);
        Self::spawn(command, &[], env)
    }

    /// Starts `command serve ...` with the collected output. A shutdown
    /// delay of 0 unless `env` sets one, so that SIGTERM stops the listener
    /// at once as the tests of the grace period expect.
    fn spawn(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Self {
        command
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .env("MAESTRO_SHUTDOWN_DELAY_SECONDS", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Output::default());
        collect(child.stdout.take().unwrap(), output.clone(), |streams| {
            &mut streams.stdout
        });
        collect(child.stderr.take().unwrap(), output.clone(), |streams| {
            &mut streams.stderr
        });
        Self { child, output }
    }

    /// Starts the binary on port 0 over the test fixture, logging JSON.
    pub(crate) fn start_with_fixture() -> Self {
        let fixture = fixture();
        Self::start(&[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_MEMORY_FIXTURE", fixture.to_str().unwrap()),
            ("MAESTRO_MEMORY_RUN_SECONDS", "3600"),
            ("MAESTRO_LOG_FORMAT", "json"),
        ])
    }

    /// Starts the binary on port 0 as the gateway to a Platform-API upstream
    /// at `url`, verifying the test tokens and logging JSON; `args` are more
    /// `maestro serve` flags, `env` more settings.
    pub(crate) fn start_platform_api(
        url: &str,
        service_token: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut all = vec![
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_BACKEND", "platform-api"),
            ("MAESTRO_PLATFORM_API_URL", url),
            ("MAESTRO_PLATFORM_API_TOKEN", service_token),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_LOG_FORMAT", "json"),
        ];
        all.extend_from_slice(env);
        Self::start_with_args(args, &all)
    }

    /// Waits for a line of standard error or output satisfying `find`.
    pub(crate) fn wait_for<T>(&self, mut find: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        let mut streams = self.output.lines.lock().unwrap();
        loop {
            let found = streams
                .stderr
                .iter()
                .chain(&streams.stdout)
                .find_map(|line| find(line));
            if let Some(found) = found {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no such line; stderr: {:?}; stdout: {:?}",
                streams.stderr,
                streams.stdout
            );
            streams = self.output.grown.wait_timeout(streams, left).unwrap().0;
        }
    }

    /// The address from the JSON "listening" log line.
    pub(crate) fn addr(&self) -> String {
        self.wait_for(|line| {
            let event: Value = serde_json::from_str(line).ok()?;
            (event["message"] == "listening").then(|| event["addr"].as_str().unwrap().to_owned())
        })
    }

    /// Waits until the binary has `requests` requests in flight besides
    /// the one asking, as its `maestro_http_requests_in_flight` gauge
    /// says: the sign that they reached it, rather than a guess of time.
    pub(crate) fn wait_for_in_flight(&self, requests: u64) {
        let addr = self.addr();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if in_flight(&addr) == Some(requests + 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{requests} requests never were in flight at once"
            );
            std::thread::yield_now();
        }
    }

    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "maestro did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Standard error so far, one line a line.
    pub(crate) fn stderr(&self) -> String {
        self.output.lines.lock().unwrap().stderr.join("\n")
    }

    pub(crate) fn all_output(&self) -> String {
        let streams = self.output.lines.lock().unwrap();
        let mut all = streams.stderr.join("\n");
        all.push('\n');
        all.push_str(&streams.stdout.join("\n"));
        all
    }
}

impl Drop for Maestro {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The in-flight gauge of the binary at `addr`, this request included.
fn in_flight(addr: &str) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("maestro_http_requests_in_flight "))
        .and_then(|value| value.trim().parse().ok())
}
