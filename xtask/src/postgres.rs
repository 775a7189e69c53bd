//! A throwaway PostgreSQL cluster for Airflow's metadata database (the
//! Airflow e2e tests, the Airflow bench, `cargo xtask stack`), started and
//! stopped with `scripts/postgres-test-server.sh`.
//!
//! Each cluster lives in a directory of its own under `target/`, so that
//! it takes a port of its own and stopping it never touches a cluster
//! someone else started with the script's default directory. It is stopped
//! and deleted when dropped, and by [`stop_started`] from a Ctrl-C handler,
//! which runs no destructor.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, bail};

/// The directories of the clusters started and not stopped yet.
static STARTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A running throwaway PostgreSQL cluster, stopped and deleted when
/// dropped.
#[derive(Debug)]
pub(crate) struct PostgresServer {
    dir: PathBuf,
}

impl PostgresServer {
    /// Starts a cluster (the script installs Debian's `postgresql` if it is
    /// missing) in `target/<name>`, after deleting whatever an earlier run
    /// left there, with one database `airflow`; returns it with the
    /// database's `postgresql://` URL.
    pub(crate) fn start(name: &str) -> anyhow::Result<(Self, String)> {
        let dir = crate::project_root().join("target").join(name);
        // A cluster of an earlier run that was killed is stopped first, so
        // that the new one starts fresh.
        stop(&dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The guard exists before the script runs: a script that started
        // the cluster and then failed still has it stopped.
        if let Ok(mut started) = STARTED.lock() {
            started.push(dir.clone());
        }
        let server = Self { dir };
        let output = script(&server.dir)
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run scripts/postgres-test-server.sh")?;
        if !output.status.success() {
            bail!("scripts/postgres-test-server.sh failed ({})", output.status);
        }
        let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !url.starts_with("postgresql://") {
            // Not printed: the URL holds the cluster's password.
            bail!("scripts/postgres-test-server.sh did not print a postgresql:// URL");
        }
        Ok((server, url))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Ok(mut started) = STARTED.lock() {
            started.retain(|dir| dir != &self.dir);
        }
        if stop(&self.dir) {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "warning: a throwaway PostgreSQL may still run; its files are in {}",
                self.dir.display()
            );
        }
    }
}

/// Stops every cluster started and not stopped yet: for a Ctrl-C handler
/// that exits without running destructors.
pub(crate) fn stop_started() {
    let dirs = STARTED
        .lock()
        .map(|mut started| std::mem::take(&mut *started))
        .unwrap_or_default();
    for dir in dirs {
        if stop(&dir) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Stops and deletes the cluster in `dir`; whether the script says so.
fn stop(dir: &Path) -> bool {
    script(dir)
        .arg("stop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `scripts/postgres-test-server.sh` with its cluster in `dir`.
fn script(dir: &Path) -> Command {
    let mut command = Command::new(crate::project_root().join("scripts/postgres-test-server.sh"));
    command
        .env("MAESTRO_TEST_POSTGRES_DIR", dir)
        .env("MAESTRO_TEST_POSTGRES_DB", "airflow")
        // The first free port from 5440 on, whatever the caller's
        // environment pins.
        .env_remove("MAESTRO_TEST_POSTGRES_PORT")
        .stdin(Stdio::null());
    command
}
