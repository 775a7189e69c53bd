//! `maestro`: serve the API (the default), or mint a development token.

use app::{Cli, Command, ServeConfig};
use clap::{CommandFactory as _, FromArgMatches as _, Parser as _};

/// jemalloc rather than the system allocator: measured on the execute path
/// it took a sixth off each request's CPU time, and it holds less memory
/// per waiting request (`docs/performance.md`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            println!("{}", app::mint_token(&args)?);
            Ok(())
        }
        Some(Command::Serve(config)) => serve(*config).await,
        None => {
            // `maestro` alone serves, with settings from the environment.
            let matches = Cli::command().get_matches_from(["maestro", "serve"]);
            let Some(Command::Serve(config)) = Cli::from_arg_matches(&matches)?.command else {
                unreachable!("`serve` parses as the serve subcommand");
            };
            serve(*config).await
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let telemetry = app::init_tracing(config.log_format, &config.tracing)?;
    let served = app::serve(config, app::shutdown_signal())
        .await
        .inspect_err(|err| {
            tracing::error!(error = format!("{err:#}"), "maestro stopped with an error");
        });
    // The spans of the last requests; the exporter blocks while it sends.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served
}
