//! Project automation, run as `cargo xtask <command>`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

mod bench;
mod e2e_airflow;
mod fuzz;
mod http;
mod load;
mod process;
mod soak;
mod stack;
mod test_server;
#[cfg(test)]
mod tidy;
mod token;
mod venv;

#[derive(Debug, Parser)]
#[command(about = "Maestro's project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the service and a bare baseline in one run, and report both.
    Bench(bench::Args),
    /// Serve the bare axum baseline of `bench` until stdin closes (the
    /// bench starts it as a child process).
    #[command(hide = true)]
    BenchBaseline(bench::BaselineArgs),
    /// Run the Airflow backend's end-to-end tests against a real Apache
    /// Airflow 3, installed into target/ and stopped afterwards.
    E2eAirflow(e2e_airflow::Args),
    /// Fuzz the release `maestro` against its OpenAPI document with
    /// schemathesis (installed into target/), every check on; fail on any
    /// finding but the contract's state errors.
    Fuzz(fuzz::Args),
    /// Drive mixed traffic, with faults, against the release `maestro`
    /// for some minutes, then check that no accepted run was lost, no
    /// `Idempotency-Key` made two runs, and memory and descriptors came
    /// back to their level.
    Soak(soak::Args),
    /// Start the production shape on this machine: PostgreSQL, Airflow on
    /// it, Redis, two release `maestro` instances sharing Redis and HAProxy
    /// in front; print the URL and a token and run until Ctrl-C. With
    /// `--check`, restart both instances under steady traffic and check
    /// that no request and no run was lost.
    Stack(stack::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
        Command::BenchBaseline(args) => bench::run_baseline(&args),
        Command::E2eAirflow(args) => e2e_airflow::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Stack(args) => stack::run(&args),
    }
}

/// The workspace root: the folder above `xtask/`.
pub(crate) fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_owned(), Path::to_owned)
}
