//! Throwaway servers for the harnesses (Redis, PostgreSQL), each started
//! and stopped by its script in `scripts/` with a state directory of its
//! own, so that it takes a port of its own and stopping it never touches a
//! server someone else started with the script's default directory.
//!
//! A server is stopped (and its directory deleted) when dropped, and by
//! [`stop_started`] from a Ctrl-C handler, which runs no destructor.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, bail};

/// One kind of throwaway server: its script and how to drive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    /// What the server is, for messages.
    name: &'static str,
    /// The script, from the project root.
    script: &'static str,
    /// The script's variable for the state directory.
    dir_var: &'static str,
    /// The script's variable that pins a port: removed, so that the first
    /// free port is taken whatever the caller's environment pins.
    port_var: &'static str,
    /// Other settings of the script.
    env: &'static [(&'static str, &'static str)],
    /// How the URL the script prints starts.
    scheme: &'static str,
}

/// `redis-server`, installed from Debian's packages when missing.
pub(crate) const REDIS: Kind = Kind {
    name: "redis-server",
    script: "scripts/redis-test-server.sh",
    dir_var: "MAESTRO_TEST_REDIS_DIR",
    port_var: "MAESTRO_TEST_REDIS_PORT",
    env: &[],
    scheme: "redis://",
};

/// A PostgreSQL cluster with one database `airflow`, installed from
/// Debian's packages when missing.
pub(crate) const POSTGRES: Kind = Kind {
    name: "PostgreSQL",
    script: "scripts/postgres-test-server.sh",
    dir_var: "MAESTRO_TEST_POSTGRES_DIR",
    port_var: "MAESTRO_TEST_POSTGRES_PORT",
    env: &[("MAESTRO_TEST_POSTGRES_DB", "airflow")],
    scheme: "postgresql://",
};

/// The servers started and not stopped yet, with their directories.
static STARTED: Mutex<Vec<(Kind, PathBuf)>> = Mutex::new(Vec::new());

/// A running throwaway server, stopped and its directory deleted when
/// dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    kind: Kind,
    dir: PathBuf,
}

impl TestServer {
    /// Starts a `kind` server with its state in a new directory under the
    /// system's temporary directory, named with `prefix`; returns it with
    /// its URL.
    pub(crate) fn start_in_temp(kind: Kind, prefix: &str) -> anyhow::Result<(Self, String)> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .with_context(|| format!("cannot create a directory for {}", kind.name))?
            .keep();
        Self::start(kind, dir)
    }

    /// Starts a `kind` server in `target/<name>`, after stopping and
    /// deleting whatever an earlier run left there; returns it with its
    /// URL.
    pub(crate) fn start_in_target(kind: Kind, name: &str) -> anyhow::Result<(Self, String)> {
        let dir = crate::project_root().join("target").join(name);
        // A server of an earlier run that was killed is stopped first, so
        // that the new one starts fresh.
        stop(kind, &dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Self::start(kind, dir)
    }

    fn start(kind: Kind, dir: PathBuf) -> anyhow::Result<(Self, String)> {
        // The guard exists before the script runs: a script that started
        // the server and then failed still has it stopped.
        if let Ok(mut started) = STARTED.lock() {
            started.push((kind, dir.clone()));
        }
        let server = Self { kind, dir };
        let output = script(kind, &server.dir)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", kind.script))?;
        if !output.status.success() {
            bail!("{} failed ({})", kind.script, output.status);
        }
        let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !url.starts_with(kind.scheme) {
            // Not printed: a URL may hold a password.
            bail!("{} did not print a {} URL", kind.script, kind.scheme);
        }
        Ok((server, url))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(mut started) = STARTED.lock() {
            started.retain(|(_, dir)| dir != &self.dir);
        }
        if stop(self.kind, &self.dir) {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "warning: a throwaway {} may still run; its files are in {}",
                self.kind.name,
                self.dir.display()
            );
        }
    }
}

/// Stops every server started and not stopped yet, and deletes its
/// directory: for a Ctrl-C handler that exits without running destructors.
pub(crate) fn stop_started() {
    let servers = STARTED
        .lock()
        .map(|mut started| std::mem::take(&mut *started))
        .unwrap_or_default();
    for (kind, dir) in servers {
        if stop(kind, &dir) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Stops the `kind` server with its state in `dir`; whether the script
/// says so.
fn stop(kind: Kind, dir: &Path) -> bool {
    script(kind, dir)
        .arg("stop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The `kind` script with its state in `dir`.
fn script(kind: Kind, dir: &Path) -> Command {
    let mut command = Command::new(crate::project_root().join(kind.script));
    command
        .env(kind.dir_var, dir)
        .envs(kind.env.iter().copied())
        .env_remove(kind.port_var)
        .stdin(Stdio::null());
    command
}
