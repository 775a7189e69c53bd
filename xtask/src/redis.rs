//! A throwaway `redis-server` for the harnesses that need one (the
//! Airflow e2e tests, the `Idempotency-Key` bench), started and stopped
//! with `scripts/redis-test-server.sh`.
//!
//! Each server runs with a private state directory, so that it takes a port
//! of its own and stopping it never touches a server someone else started
//! with the script's default directory. It is stopped when dropped, and by
//! [`stop_started`] from a Ctrl-C handler, which runs no destructor.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// The state directories of the servers started and not stopped yet.
static STARTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A running throwaway `redis-server`, stopped when dropped.
#[derive(Debug)]
pub(crate) struct RedisServer {
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server (the script installs Debian's `redis-server` if it
    /// is missing), with its state in a new directory named with `prefix`,
    /// and returns it with its URL.
    pub(crate) fn start(prefix: &str) -> anyhow::Result<(Self, String)> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot create the Redis state directory")?;
        // The guard exists before the script runs: a script that started
        // the server and then failed still has it stopped.
        if let Ok(mut started) = STARTED.lock() {
            started.push(dir.path().to_owned());
        }
        let server = Self { dir };
        let output = script(server.dir.path())
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run scripts/redis-test-server.sh")?;
        if !output.status.success() {
            bail!("scripts/redis-test-server.sh failed ({})", output.status);
        }
        let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !url.starts_with("redis://") {
            bail!("scripts/redis-test-server.sh printed {url:?}, not a redis:// URL");
        }
        Ok((server, url))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(mut started) = STARTED.lock() {
            started.retain(|dir| dir != self.dir.path());
        }
        if !stop(self.dir.path()) {
            eprintln!(
                "warning: a throwaway redis-server may still run; its pid file is in {}",
                self.dir.path().display()
            );
        }
    }
}

/// Stops every server started and not stopped yet: for a Ctrl-C handler
/// that exits without running destructors.
pub(crate) fn stop_started() {
    let dirs = STARTED
        .lock()
        .map(|mut started| std::mem::take(&mut *started))
        .unwrap_or_default();
    for dir in dirs {
        stop(&dir);
    }
}

/// Stops the server with its state in `dir`; whether the script says so.
fn stop(dir: &Path) -> bool {
    script(dir)
        .arg("stop")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `scripts/redis-test-server.sh` with its state in `dir`.
fn script(dir: &Path) -> Command {
    let mut command = Command::new(crate::project_root().join("scripts/redis-test-server.sh"));
    command
        .env("MAESTRO_TEST_REDIS_DIR", dir)
        // The first free port from 6390 on, whatever the caller's
        // environment pins for its own tests.
        .env_remove("MAESTRO_TEST_REDIS_PORT")
        .stdin(Stdio::null());
    command
}
