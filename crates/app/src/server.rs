//! Serving the router over TCP: the accept loop with its cap on open
//! connections, each connection's header-read and idle timeouts, and the
//! drain on shutdown.
//!
//! Why not `axum::serve`: it gives hyper no timer, so hyper's header-read
//! timeout is off, and it has no idle timeout nor a cap on connections; a
//! client that opens a socket and sends nothing holds it for ever. And why
//! not hyper's own header-read timeout: hyper starts it as soon as a
//! keep-alive connection goes idle, so it would close idle connections at
//! 10 s, not 60 s. Here each connection has a small watchdog that tells the
//! two apart: the time from the first byte of a request (or the
//! connection's opening) to its whole head, and the time with no request
//! at all.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use adapter_http::{AppState, ConnectionClose, Metrics};
use axum::{Router, body::Body};
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep, sleep_until},
};
use tower::ServiceExt as _;

/// The connection-level limits, and the timing of the drain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    /// From a connection's opening, or from the first byte of its next
    /// request, to the end of the request's head.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub(crate) idle_timeout: Duration,
    /// The most connections open at once.
    pub(crate) max_connections: u32,
    /// After the shutdown signal, how long new connections are still
    /// accepted while `/ready` says 503.
    pub(crate) shutdown_delay: Duration,
    /// After the listener closed, how long in-flight requests may take.
    pub(crate) shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then drains: `/ready`
/// turns 503 at once, connections are accepted for the shutdown delay, the
/// listener closes, idle connections are closed, and in-flight requests
/// finish within the grace period.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()>,
    edge: Edge,
) {
    let slots = Arc::new(Semaphore::new(edge.max_connections as usize));
    let (close, closing) = watch::channel(false);
    let server = Server {
        router,
        metrics: state.metrics().clone(),
        edge,
        closing,
    };
    let mut acceptor = Acceptor {
        listener,
        slots: slots.clone(),
        max_connections: edge.max_connections,
        warned_full: None,
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (stream, slot) = acceptor.accept() => server.spawn(stream, slot),
        }
    }

    state.start_draining();
    tracing::info!(
        delay_seconds = edge.shutdown_delay.as_secs_f64(),
        grace_seconds = edge.shutdown_grace.as_secs_f64(),
        "shutting down: /ready answers 503; new connections are still served for the shutdown delay"
    );
    let delay = sleep(edge.shutdown_delay);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            () = &mut delay => break,
            (stream, slot) = acceptor.accept() => server.spawn(stream, slot),
        }
    }

    // What the kernel already took is served, not reset with the listener.
    while let Some((stream, slot)) = acceptor.accept_waiting().await {
        server.spawn(stream, slot);
    }
    drop(acceptor);
    // Idle connections close now; busy ones after their answer.
    let _ = close.send(true);
    tracing::info!("listener closed: finishing in-flight requests");
    tokio::select! {
        // Every slot back: every connection has ended.
        _ = slots.acquire_many(edge.max_connections) => {}
        () = sleep(edge.shutdown_grace) => {
            tracing::warn!("grace period over: exiting with requests still in flight");
        }
    }
    tracing::info!("stopped");
}

/// Accepts connections while a slot is free.
struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: u32,
    /// When the cap was last reported reached, so that a sustained flood
    /// logs a line a minute, not one per connection.
    warned_full: Option<Instant>,
}

impl Acceptor {
    /// The next connection, with its slot. Past the cap this waits for a
    /// slot before accepting, so new connections wait in the kernel's
    /// listen backlog while the open ones are served, and the process never
    /// runs out of file descriptors. Cancel-safe.
    async fn accept(&mut self) -> (TcpStream, OwnedSemaphorePermit) {
        if self.slots.available_permits() == 0
            && self
                .warned_full
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.warned_full = Some(Instant::now());
            tracing::warn!(
                max_connections = self.max_connections,
                "connection cap reached: new connections wait in the listen backlog"
            );
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection slots are never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, _peer)) => return (stream, slot),
                // The client gave up before it was accepted: nothing to do.
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    // Out of file descriptors or memory: waiting lets some
                    // close, where retrying at once would spin.
                    tracing::error!(error = %err, "cannot accept a connection: retrying in 1 s");
                    sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl Acceptor {
    /// A connection that is already waiting in the backlog, if there is one
    /// and a slot for it; never waits.
    async fn accept_waiting(&mut self) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let listener = &self.listener;
        let waiting = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await;
        match waiting {
            Poll::Ready(Ok((stream, _peer))) => Some((stream, slot)),
            Poll::Ready(Err(_)) | Poll::Pending => None,
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What every connection's task needs.
struct Server {
    router: Router,
    metrics: Metrics,
    edge: Edge,
    /// Becomes true when the listener has closed.
    closing: watch::Receiver<bool>,
}

impl Server {
    fn spawn(&self, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let router = self.router.clone();
        let metrics = self.metrics.clone();
        let edge = self.edge;
        let closing = self.closing.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, metrics, edge, closing).await;
            drop(slot);
        });
    }
}

/// Serves one connection until it ends, closing it when it takes too long
/// to send a request head or stays idle too long.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    metrics: Metrics,
    edge: Edge,
    mut closing: watch::Receiver<bool>,
) {
    let _open = metrics.connection_opened();
    // Answers are small and latency matters more than packet count: send
    // each write at once rather than wait on Nagle's algorithm.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        service_fn(move |request: hyper::Request<Incoming>| {
            // Counted from the moment the head is read until the answer's
            // body is written or dropped.
            let busy = activity.request_started();
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _busy = &busy;
                        frame
                    }))
                }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own header-read timeout also runs while a keep-alive
        // connection is idle; the watchdog below keeps the two apart.
        .header_read_timeout(None)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);

    // Once shutting down (idle timeout or drain), only the header-read
    // timeout still applies.
    let mut shutting_down = false;
    // The watchdog's one timer, armed at the earliest instant a timeout
    // could fall due whatever the connection does meanwhile: requests
    // come and go without waking it, and a busy connection costs a wake-up
    // per header-read timeout.
    let check = sleep_until(activity.next_check(&edge, shutting_down, Instant::now()));
    tokio::pin!(check);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = check.as_mut() => {
                let now = Instant::now();
                match activity.deadline(&edge, shutting_down) {
                    Some((at, Wait::Head)) if at <= now => {
                        metrics.connection_closed(ConnectionClose::HeaderTimeout);
                        tracing::debug!("connection closed: no whole request head within the header-read timeout");
                        // Dropping the connection closes the socket.
                        return;
                    }
                    Some((at, Wait::Idle)) if at <= now => {
                        metrics.connection_closed(ConnectionClose::IdleTimeout);
                        tracing::debug!("connection closed: idle for the idle timeout");
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                    _ => {}
                }
                check.as_mut().reset(activity.next_check(&edge, shutting_down, now));
            }
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The rest of a request head (or the first byte of the first one).
    Head,
    /// A next request.
    Idle,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head, since this instant.
    Head(Instant),
    /// This many requests are being answered.
    Busy(usize),
    /// No request since this instant.
    Idle(Instant),
}

/// A connection's phase, which its socket, its service and its watchdog
/// share.
#[derive(Debug)]
struct Activity {
    /// A std lock: held for a few instructions, never across an await.
    phase: Mutex<Phase>,
}

impl Activity {
    /// A new connection: its first request head is due.
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *phase = change(*phase);
    }

    /// Bytes came in: on an idle connection, a request has begun.
    fn bytes_arrived(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    /// A whole head was read and the request handed to the router; the
    /// guard ends it.
    fn request_started(self: &Arc<Self>) -> Busy {
        self.update(|phase| match phase {
            Phase::Busy(requests) => Phase::Busy(requests + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        });
        Busy(self.clone())
    }

    /// When the connection is due to close and why, if it is waiting.
    fn deadline(&self, edge: &Edge, shutting_down: bool) -> Option<(Instant, Wait)> {
        match *self
            .phase
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
        {
            Phase::Head(since) => Some((since + edge.header_read_timeout, Wait::Head)),
            Phase::Idle(since) if !shutting_down => Some((since + edge.idle_timeout, Wait::Idle)),
            Phase::Idle(_) | Phase::Busy(_) => None,
        }
    }

    /// When the watchdog looks again, from `now`: the earliest instant a
    /// timeout could fall due. That is the deadline it waits for now, or
    /// one that a change from now on could bring, which is no sooner than
    /// a timeout from now: a request ending now and the next head starting
    /// at once.
    fn next_check(&self, edge: &Edge, shutting_down: bool, now: Instant) -> Instant {
        let soonest = if shutting_down {
            edge.header_read_timeout
        } else {
            edge.header_read_timeout.min(edge.idle_timeout)
        };
        let change = now + soonest;
        self.deadline(edge, shutting_down)
            .map_or(change, |(at, _)| at.min(change))
    }
}

/// A request being answered; dropping it (the answer written, or the
/// connection gone) ends it.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.update(|phase| match phase {
            Phase::Busy(requests) if requests > 1 => Phase::Busy(requests - 1),
            Phase::Busy(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }
}

/// The socket, telling the connection's activity when bytes come in.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> Edge {
        Edge {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_a_head_then_for_its_answer_then_idles() {
        let edge = edge();
        let activity = Arc::new(Activity::new());
        let opened = Instant::now();
        assert_eq!(
            activity.deadline(&edge, false),
            Some((opened + edge.header_read_timeout, Wait::Head))
        );

        let busy = activity.request_started();
        assert_eq!(
            activity.deadline(&edge, false),
            None,
            "no timeout in flight"
        );
        tokio::time::advance(Duration::from_secs(600)).await;
        // Body bytes while busy change nothing.
        activity.bytes_arrived();
        assert_eq!(activity.deadline(&edge, false), None);

        drop(busy);
        let answered = Instant::now();
        assert_eq!(
            activity.deadline(&edge, false),
            Some((answered + edge.idle_timeout, Wait::Idle))
        );
        assert_eq!(activity.deadline(&edge, true), None, "closing already");

        tokio::time::advance(Duration::from_secs(5)).await;
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(&edge, false),
            Some((Instant::now() + edge.header_read_timeout, Wait::Head)),
            "the next request's head is timed from its first byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_looks_again_no_later_than_any_timeout_could_fall_due() {
        let edge = edge();
        let activity = Arc::new(Activity::new());
        let opened = Instant::now();
        // A head being read: its own deadline.
        tokio::time::advance(Duration::from_secs(3)).await;
        let now = Instant::now();
        assert_eq!(
            activity.next_check(&edge, false, now),
            opened + edge.header_read_timeout
        );

        // In flight: a header-read timeout from now, as the request could
        // end now and the next head start at once.
        let busy = activity.request_started();
        assert_eq!(
            activity.next_check(&edge, false, now),
            now + edge.header_read_timeout
        );

        // Idle: the next head could start at once, well before the idle
        // deadline.
        drop(busy);
        assert_eq!(
            activity.next_check(&edge, false, now),
            now + edge.header_read_timeout
        );
        let short_idle = Edge {
            idle_timeout: Duration::from_secs(2),
            ..edge
        };
        assert_eq!(
            activity.next_check(&short_idle, false, now),
            now + short_idle.idle_timeout
        );
        // Closing: no idle deadline, only the header-read timeout.
        assert_eq!(
            activity.next_check(&short_idle, true, now),
            now + edge.header_read_timeout
        );
    }
}
