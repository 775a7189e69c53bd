//! Project automation, run as `cargo xtask <command>`.

use clap::{Parser, Subcommand};

mod bench;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
    }
}
