//! The Python virtual environments the harnesses install their tools into
//! (Airflow, schemathesis), under `target/`, from PyPI alone.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Makes the venv at `venv` with `python` and installs `requirement` (a pip
/// requirement pinned to one release) into it, unless a finished install
/// of it is there. A marker file named after the requirement, written last,
/// tells a finished install from one that was interrupted. `tool` prefixes
/// the lines printed.
pub(crate) fn ensure(
    python: &str,
    venv: &Path,
    requirement: &str,
    tool: &str,
) -> anyhow::Result<()> {
    let marker_name: String = requirement
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let marker = venv.join(format!(".maestro-{marker_name}"));
    if marker.exists() {
        return Ok(());
    }
    if !venv.join("bin").join("python").exists() {
        println!("{tool}: creating the venv {}", venv.display());
        let status = Command::new(python)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("cannot run {python}; is Python 3 installed?"))?;
        if !status.success() {
            bail!("{python} -m venv {} failed ({status})", venv.display());
        }
    }
    println!("{tool}: installing {requirement}");
    let status = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ])
        .status()
        .context("cannot run the venv's pip")?;
    if !status.success() {
        bail!("pip install {requirement} failed ({status})");
    }
    fs::write(&marker, "").with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(())
}
