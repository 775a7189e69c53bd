//! The `maestro` binary's library: configuration, wiring of the backend and
//! the HTTP API, serving with the edge's limits, and graceful shutdown.
//!
//! `main.rs` only parses the command line and calls in here, so that tests
//! can start the very same service in process.

pub mod config;
mod dev;
mod events;
mod log_fields;
mod log_json;
mod log_line;
#[cfg(test)]
mod log_test;
mod log_time;
mod log_writer;
mod readiness;
#[cfg(test)]
mod request_log_test;
mod server;
mod telemetry;
mod wiring;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use config::{
    Backend, Cli, Command, EdgeArgs, LogFormat, OtlpEndpoint, ServeConfig, TokenArgs, TracingArgs,
};
pub use dev::mint_token;
pub use telemetry::{Telemetry, init_tracing};
pub use wiring::{build, build_with_clock};

/// Serves the API described by `config` until `shutdown` completes, then
/// drains: `/ready` answers 503 at once, new connections are still served
/// for the shutdown delay, then the listener closes and in-flight requests
/// finish within the grace period.
///
/// # Errors
/// When the configuration is unusable (no key on a public address, an
/// unreadable fixture or key file, a backend without its settings) or the
/// address cannot be bound.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let edge = server::Edge {
        header_read_timeout: config.edge.header_read_timeout_seconds,
        idle_timeout: config.edge.idle_timeout_seconds,
        max_connections: config.edge.max_connections,
        shutdown_delay: config.edge.shutdown_delay_seconds,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
    };
    let built = build(&config).await?;
    warn_of_unsafe_limits(&config);
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = config.backend.name(), "listening");
    if let Some(banner) = &built.dev_banner {
        banner.print(addr);
    }
    server::run(listener, built.router, built.state, shutdown, edge).await;
    built.loops.stop().await;
    Ok(())
}

/// Warns of settings that defeat the edge's limits.
fn warn_of_unsafe_limits(config: &ServeConfig) {
    let edge = &config.edge;
    // A request's time covers its body and then the backend calls: an
    // execute may make two, each within the upstream timeout.
    let needed = edge.body_timeout_seconds + config.upstream_timeout() * 2;
    if edge.request_timeout_seconds < needed {
        tracing::warn!(
            request_timeout_seconds = edge.request_timeout_seconds.as_secs_f64(),
            needed_seconds = needed.as_secs_f64(),
            "MAESTRO_REQUEST_TIMEOUT_SECONDS is shorter than the body timeout plus two backend calls: slow requests may be answered 503 ServiceTimeout before their own timeouts answer"
        );
    }
    if let Some(limit) = open_file_limit() {
        // The listener, the runtime, logs and backend connections need
        // descriptors besides the clients' connections.
        let needed = u64::from(edge.max_connections) + 256;
        if limit < needed {
            tracing::warn!(
                max_connections = edge.max_connections,
                open_file_limit = limit,
                "MAESTRO_MAX_CONNECTIONS is too close to the open-file limit: raise the limit (systemd LimitNOFILE=, ulimit -n) or lower the cap, or accepts will fail when it is reached"
            );
        }
    }
}

/// The process's soft limit on open files, where Linux tells it.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Whether `addr` is a loopback address, where a development secret is safe.
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
