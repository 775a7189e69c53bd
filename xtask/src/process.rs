//! Child processes under test: a guard that kills them on every exit path
//! (Ctrl-C too, through [`kill_guarded`]), a free port to start them on,
//! the wait for their `/health`, and their resident memory.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hyper::StatusCode;

use crate::http::{self, RequestTemplate};

/// How long one `GET /health` may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The ids of the processes under a guard, for [`kill_guarded`].
static GUARDED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Set once [`kill_guarded`] has run: the processes are going away on
/// purpose.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether [`kill_guarded`] has run, so that a process that exits now is
/// no news.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Kills every process still under a guard: for a Ctrl-C handler, which
/// exits without running the guards' drops.
pub(crate) fn kill_guarded() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pids = GUARDED
        .lock()
        .map(|mut guarded| std::mem::take(&mut *guarded))
        .unwrap_or_default();
    for pid in pids {
        signal(pid, "KILL");
    }
}

/// Sends `signal` (`TERM`, `KILL`, ...) to process `pid`; whether it was
/// delivered.
pub(crate) fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A running child process that is killed and reaped when the guard drops,
/// so that an error, a failed target or a panic never leaves a server
/// behind holding its port and memory.
pub(crate) struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Starts `command` under a guard; `name` is how messages refer to it.
    pub(crate) fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        if let Ok(mut guarded) = GUARDED.lock() {
            guarded.push(child.id());
        }
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// The process id, for `/proc/<pid>/status`.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already exited.
    pub(crate) fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check whether {} is running", self.name))
    }

    /// Waits until `GET /health` at `addr` answers 200, failing early and
    /// clearly when the process exits first or `timeout` passes.
    pub(crate) async fn wait_until_healthy(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let health = RequestTemplate::get("/health");
        loop {
            if let Some(status) = self.exit_status()? {
                bail!(
                    "{} exited ({status}) before it answered GET /health on {addr}; its output is above",
                    self.name
                );
            }
            let last = match http::send_once(addr, &health, HEALTH_TIMEOUT).await {
                Ok(answer) if answer.status == StatusCode::OK => return Ok(()),
                Ok(answer) => format!("GET /health answered {}", answer.status),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer GET /health on {addr} with 200 within {}s (last: {last})",
                    self.name,
                    timeout.as_secs()
                );
            }
            // Polling, not a test: the process gives no other readiness signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Nothing useful can be done about a failure here: the process may
        // already have exited, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut guarded) = GUARDED.lock() {
            guarded.retain(|guarded| *guarded != pid);
        }
    }
}

/// A loopback address with a port that was free a moment ago: bound on
/// port 0, then released for the child to bind.
pub(crate) fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    listener.local_addr().context("cannot read the free port")
}

/// The resident set size of process `pid` in bytes, from `/proc`.
pub(crate) fn resident_set_size(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("{path} has no readable VmRSS line"))
}

/// The `VmRSS` of a `/proc/<pid>/status` text, in bytes. The kernel writes
/// it in kibibytes, as `VmRSS:\t   12345 kB`.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut fields = line.split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next()? {
        "kB" => kib.checked_mul(1024),
        _ => None,
    }
}

/// Builds, in release, the binary targets `bins` of the packages `packages`
/// (`cargo build --release -p <package>... --bin <bin>...`), and finds each
/// in Cargo's own report, wherever the target directory is: their paths,
/// in the order of `bins`.
pub(crate) fn build_release(packages: &[&str], bins: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    println!("== building {} in release", bins.join(" and "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(crate::project_root())
        .args(["build", "--release"]);
    for package in packages {
        command.args(["-p", package]);
    }
    for bin in bins {
        command.args(["--bin", bin]);
    }
    let output = command
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !output.status.success() {
        bail!("cargo build --release failed ({})", output.status);
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    bins.iter()
        .map(|bin| {
            executable(&messages, bin)
                .with_context(|| format!("cargo build did not report a `{bin}` executable"))
        })
        .collect()
}

/// The executable Cargo reported for binary target `name` in its JSON
/// messages.
fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

/// The release `maestro`, built now (see [`build_release`]).
pub(crate) fn build_release_maestro() -> anyhow::Result<PathBuf> {
    let mut built = build_release(&["app"], &["maestro"])?;
    Ok(built.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tmaestro\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  123456 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    8000 kB\n";

    #[test]
    fn vm_rss_is_read_in_bytes_from_its_own_line() {
        assert_eq!(parse_vm_rss(STATUS), Some(12_345 * 1024));
    }

    #[test]
    fn a_status_without_vm_rss_or_with_an_unknown_unit_gives_nothing() {
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nVmHWM:\t 1 kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t lots kB\n"), None);
    }

    #[test]
    fn the_rss_of_this_very_process_is_readable_and_plausible() {
        let rss = resident_set_size(std::process::id()).expect("own /proc status is readable");
        assert!(
            rss > 1024 * 1024,
            "a test binary uses more than 1 MiB, got {rss}"
        );
    }

    #[test]
    fn a_free_local_addr_is_on_loopback_with_a_real_port() {
        let addr = free_local_addr().expect("a free port");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
    }

    #[test]
    fn dropping_the_guard_kills_the_child() {
        let mut guard =
            ChildGuard::spawn("sleep", Command::new("sleep").arg("600")).expect("sleep starts");
        let pid = guard.id();
        assert!(guard.exit_status().expect("status").is_none());
        drop(guard);
        // Reaped by the guard, so the pid no longer names a process of ours.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn waiting_for_health_fails_at_once_when_the_child_exits() {
        let mut guard =
            ChildGuard::spawn("false", &mut Command::new("false")).expect("false starts");
        let addr = free_local_addr().expect("a free port");
        let err = guard
            .wait_until_healthy(addr, Duration::from_secs(30))
            .await
            .expect_err("an exited child is never healthy");
        assert!(err.to_string().contains("false exited"), "{err}");
    }

    #[test]
    fn executables_are_found_in_cargos_json_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"executable":null}"#,
            "not json: a stray line",
            r#"{"reason":"compiler-artifact","target":{"name":"maestro","kind":["bin"]},"executable":"/t/release/maestro"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            executable(&messages, "maestro"),
            Some(PathBuf::from("/t/release/maestro"))
        );
        assert_eq!(executable(&messages, "serde"), None);
        assert_eq!(executable(&messages, "xtask"), None);
    }
}
