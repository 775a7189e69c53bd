//! The `maestro` binary's library: configuration, wiring of the backend and
//! the HTTP API, serving, and graceful shutdown.
//!
//! `main.rs` only parses the command line and calls in here, so that tests
//! can start the very same service in process.

pub mod config;
mod dev;
mod telemetry;
mod wiring;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

pub use config::{Backend, Cli, Command, LogFormat, ServeConfig, TokenArgs};
pub use dev::mint_token;
pub use telemetry::init_tracing;
pub use wiring::build;

/// Serves the API described by `config` until `shutdown` completes, then
/// stops accepting connections and lets in-flight requests finish for up to
/// the configured grace period.
///
/// # Errors
/// When the configuration is unusable (no key on a public address, an
/// unreadable fixture or key file, a backend without its settings) or the
/// address cannot be bound.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let built = build(&config).await?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = config.backend.name(), "listening");
    if let Some(banner) = &built.dev_banner {
        banner.print(addr);
    }
    run(listener, built.router, built.state, shutdown, grace).await
}

/// Serves `router` on `listener` until `shutdown`, then drains.
async fn run(
    listener: TcpListener,
    router: axum::Router,
    state: adapter_http::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    // Answers are small and latency matters more than packet count: send
    // each write at once rather than wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: finishing in-flight requests"
        );
        state.start_draining();
        let _ = draining_tx.send(true);
    });
    let deadline = async move {
        // Only counts from the shutdown signal on.
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server.into_future() => result.context("server failed")?,
        () = deadline => tracing::warn!("grace period over: exiting with requests still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
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
