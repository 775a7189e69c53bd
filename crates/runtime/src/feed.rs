//! [`FeedPump`]: the loop that moves the engine's run changes into the
//! shared [`EventLog`], on the one instance of the cluster that holds the
//! log's lease; and [`Leadership`], which tells the instance's other loops
//! whether it holds it.
//!
//! Every instance runs a pump; all but one wait. The holder renews the
//! lease every third of its ttl, also while the source call waits (the two
//! run side by side), so a source that answers slowly never costs the
//! lease. Each append is fenced by the lease in the log itself: a holder
//! that lost the lease without knowing it yet (a long pause, a network
//! split) appends nothing, and the new holder reads on from the cursor the
//! last append recorded. Nothing is lost and nothing is told twice.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use domain::{EventLog, RunChangeSource};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};

use crate::pace::{Backoff, stopped};

/// Moves run changes from a [`RunChangeSource`] into an [`EventLog`] while
/// this instance holds the log's lease.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn wire(source: Arc<dyn domain::RunChangeSource>, log: Arc<dyn domain::EventLog>) {
/// use runtime::feed::FeedPump;
///
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let pump = FeedPump::new("instance-a", source, log);
/// let leadership = pump.leadership(); // for the dispatcher
/// let pumping = pump.spawn(shutdown);
/// // ... on SIGTERM:
/// stop.send_replace(true);
/// pumping.await.ok();
/// # }
/// ```
pub struct FeedPump {
    holder: String,
    source: Arc<dyn RunChangeSource>,
    log: Arc<dyn EventLog>,
    ttl: Duration,
    source_timeout: Duration,
    batch_window: Duration,
    leading: watch::Sender<bool>,
}

impl fmt::Debug for FeedPump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedPump")
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .field("source_timeout", &self.source_timeout)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

/// Why the pump stopped holding.
enum End {
    /// Shutdown was asked for.
    Stopped,
    /// The lease went to another holder.
    Lost,
}

impl FeedPump {
    /// The lease's lifetime unless [`FeedPump::with_lease_ttl`] says
    /// otherwise: a dead holder's lease is taken over within 10 s and a
    /// third (the ttl, then the others' next try).
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

    /// How long a source call may take unless
    /// [`FeedPump::with_source_timeout`] says otherwise; a call still
    /// unanswered then is abandoned and asked again from the same cursor.
    pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(60);

    /// How long the pump lets changes gather after appending some, unless
    /// [`FeedPump::with_batch_window`] says otherwise. Under load, one
    /// source read and one append then carry every change of the window,
    /// rather than each change waking the pump (and every reader of the
    /// log) on its own; a quiet engine's first change is appended at once.
    pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(2);

    /// A pump for the instance `holder` (unique in the cluster), reading
    /// `source` into `log`.
    pub fn new(
        holder: impl Into<String>,
        source: Arc<dyn RunChangeSource>,
        log: Arc<dyn EventLog>,
    ) -> Self {
        Self {
            holder: holder.into(),
            source,
            log,
            ttl: Self::DEFAULT_LEASE_TTL,
            source_timeout: Self::DEFAULT_SOURCE_TIMEOUT,
            batch_window: Self::DEFAULT_BATCH_WINDOW,
            leading: watch::channel(false).0,
        }
    }

    /// The lease's lifetime (at least 30 ms); it is renewed, and taken by a
    /// waiting instance, every third of it.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// The longest a source call may take before it is asked again.
    #[must_use]
    pub fn with_source_timeout(mut self, timeout: Duration) -> Self {
        self.source_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long changes gather after an append before the source is asked
    /// again; zero asks at once.
    #[must_use]
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Whether this pump holds the lease, now and as it changes: the
    /// dispatcher of the same instance works only while it does.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            held: self.leading.subscribe(),
        }
    }

    /// Runs the pump on its own task until `shutdown` (see
    /// [`FeedPump::run`]).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Takes the lease, or waits for it; while holding, moves changes into
    /// the log. Returns once `true` is sent on `shutdown` (or its sender is
    /// dropped). The lease is not given back: it lapses within its ttl and
    /// another instance takes it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.log.lease(&self.holder, self.ttl).await {
                Ok(true) => {
                    tracing::info!(holder = %self.holder, "took the feed's lease: watching the engine");
                    self.set_leading(true);
                    backoff.reset();
                    match self.hold(&mut shutdown, &mut backoff).await {
                        End::Stopped => break,
                        End::Lost => {
                            tracing::warn!(holder = %self.holder, "lost the feed's lease: another instance watches the engine");
                            self.set_leading(false);
                            // Not at once: a log that keeps refusing the
                            // appends would make this loop spin.
                            self.renew_every()
                        }
                    }
                }
                Ok(false) => self.renew_every(),
                Err(err) => {
                    tracing::warn!(holder = %self.holder, error = %err, "cannot take the feed's lease");
                    // Within a third of the ttl still, so that the store's
                    // return finds a dead holder's lease taken in seconds.
                    backoff.next_delay().min(self.renew_every())
                }
            };
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                () = sleep(wait) => {}
            }
        }
        self.set_leading(false);
        tracing::info!(holder = %self.holder, "the feed pump stopped");
    }

    /// While holding the lease: read the cursor, ask the source, append.
    async fn hold(&self, shutdown: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> End {
        let mut renew_at = Instant::now() + self.renew_every();
        match self.pump(shutdown, backoff, &mut renew_at).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    /// The loop of [`FeedPump::hold`], ending only by an error: `?` leaves
    /// it when the lease is lost or shutdown is asked for.
    async fn pump(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
        renew_at: &mut Instant,
    ) -> Result<std::convert::Infallible, End> {
        loop {
            // Read every time rather than kept: a lease lapsed and taken
            // back meanwhile may hide another holder's appends.
            let cursor = match self.log.source_cursor().await {
                Ok(cursor) => cursor,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the feed's source cursor");
                    self.pause(backoff.next_delay(), renew_at, shutdown).await?;
                    continue;
                }
            };
            let asked =
                tokio::time::timeout(self.source_timeout, self.source.changes(cursor.clone()));
            let (changes, next) = match self.holding(asked, renew_at, shutdown).await? {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "the engine did not tell its run changes; asking again from the same cursor");
                    self.pause(backoff.next_delay(), renew_at, shutdown).await?;
                    continue;
                }
                Err(_elapsed) => {
                    tracing::warn!(
                        timeout_seconds = self.source_timeout.as_secs_f64(),
                        "the engine did not tell its run changes in time; asking again from the same cursor"
                    );
                    self.pause(backoff.next_delay(), renew_at, shutdown).await?;
                    continue;
                }
            };
            if changes.is_empty() && cursor.as_ref() == Some(&next) {
                backoff.reset();
                continue;
            }
            match self.log.append(&self.holder, &changes, &next).await {
                Ok(Some(ids)) => {
                    tracing::debug!(events = ids.len(), "appended run changes to the feed");
                    backoff.reset();
                    if !ids.is_empty() && !self.batch_window.is_zero() {
                        self.pause(self.batch_window, renew_at, shutdown).await?;
                    }
                }
                Ok(None) => {
                    tracing::warn!(
                        changes = changes.len(),
                        "the feed's lease was lost before the append: dropping the batch for the new holder to read again"
                    );
                    return Err(End::Lost);
                }
                Err(err) => {
                    tracing::warn!(error = %err, changes = changes.len(), "cannot append run changes to the feed; asking again from the same cursor");
                    self.pause(backoff.next_delay(), renew_at, shutdown).await?;
                }
            }
        }
    }

    /// Waits `delay` while holding the lease.
    async fn pause(
        &self,
        delay: Duration,
        renew_at: &mut Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        self.holding(sleep(delay), renew_at, shutdown).await
    }

    /// Runs `work` to its end while renewing the lease whenever due;
    /// abandons it when the lease is lost or shutdown is asked for.
    async fn holding<F: Future>(
        &self,
        work: F,
        renew_at: &mut Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<F::Output, End> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                () = stopped(shutdown) => return Err(End::Stopped),
                () = sleep_until(*renew_at) => {
                    *renew_at = Instant::now() + self.renew_every();
                    match self.log.lease(&self.holder, self.ttl).await {
                        Ok(true) => self.set_leading(true),
                        Ok(false) => return Err(End::Lost),
                        Err(err) => {
                            // Perhaps still held: the pump goes on, and the
                            // append's fence decides. The dispatcher waits
                            // until the lease is known to be held again.
                            tracing::warn!(holder = %self.holder, error = %err, "cannot renew the feed's lease");
                            self.set_leading(false);
                        }
                    }
                }
                out = &mut work => return Ok(out),
            }
        }
    }

    /// How often the lease is renewed, and tried by those waiting for it.
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn set_leading(&self, leading: bool) {
        self.leading.send_if_modified(|held| {
            let changed = *held != leading;
            *held = leading;
            changed
        });
    }
}

/// Whether this instance's [`FeedPump`] holds the feed's lease: the
/// instance that watches the engine is also the one that dispatches events
/// to webhooks.
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    held: watch::Receiver<bool>,
}

impl Leadership {
    /// Always held: for a process that is alone with its log (no shared
    /// store), and tests. Never with a store that other instances share.
    pub fn always() -> Self {
        Self::of(watch::channel(true).1)
    }

    /// Held while `held` says so.
    pub(crate) fn of(held: watch::Receiver<bool>) -> Self {
        Self { held }
    }

    /// Whether the lease is held now.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Completes when the lease is held (at once if it is); never when the
    /// pump ended without it.
    pub(crate) async fn acquired(&mut self) {
        if self.held.wait_for(|held| *held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Completes when the lease is not held (at once if it is not); never
    /// when it is held for good ([`Leadership::always`]).
    pub(crate) async fn lost(&mut self) {
        if self.held.wait_for(|held| !*held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::RunStatus;

    use super::*;
    use crate::testing::{Failures, FakeLog, FakeSource, PIPELINE_A, change, until};

    const TTL: Duration = Duration::from_secs(10);
    const POLL: Duration = Duration::from_secs(1);

    fn pump(holder: &str, source: &Arc<FakeSource>, log: &Arc<FakeLog>) -> FeedPump {
        FeedPump::new(holder, source.clone(), log.clone()).with_lease_ttl(TTL)
    }

    fn changes(from: usize, to: usize) -> Vec<domain::RunChange> {
        (from..to)
            .map(|n| change("acme", PIPELINE_A, RunStatus::Running, n))
            .collect()
    }

    /// Ends the pump and checks that it ended at once.
    async fn stop(stop: watch::Sender<bool>, pumping: JoinHandle<()>) {
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_millis(1), pumping)
            .await
            .expect("the pump ends on shutdown")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_pump_appends_in_order_and_a_new_holder_resumes_from_the_logs_cursor() {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        let (stop_a, shutdown) = watch::channel(false);
        let a = pump("a", &source, &log);
        let leadership = a.leadership();
        let pumping = a.spawn(shutdown);
        // The first answer starts from now: the cursor is recorded.
        until(Duration::from_secs(5), || log.cursor().is_some()).await;
        assert!(leadership.is_held());

        for change in changes(0, 2) {
            source.push(change);
        }
        until(Duration::from_secs(5), || log.changes().len() == 2).await;
        source.push(changes(2, 3).remove(0));
        until(Duration::from_secs(5), || log.changes().len() == 3).await;
        stop(stop_a, pumping).await;
        assert!(!leadership.is_held(), "a stopped pump does not lead");

        // Changes happen while nobody watches; another instance takes the
        // lapsed lease and reads on from the log's cursor.
        for change in changes(3, 5) {
            source.push(change);
        }
        let asked_before = source.asked().len();
        let (stop_b, shutdown) = watch::channel(false);
        let pumping = pump("b", &source, &log).spawn(shutdown);
        until(TTL * 2, || log.changes().len() == 5).await;
        assert_eq!(log.changes(), changes(0, 5));
        assert_eq!(source.asked()[asked_before].0.as_deref(), Some("3"));
        stop(stop_b, pumping).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_pump_takes_over_within_the_ttl_and_a_third_once_the_first_stops_renewing() {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        let (stop_a, shutdown) = watch::channel(false);
        let pumping_a = pump("a", &source, &log).spawn(shutdown);
        until(Duration::from_secs(5), || log.cursor().is_some()).await;
        let (stop_b, shutdown) = watch::channel(false);
        let b = pump("b", &source, &log);
        let b_leads = b.leadership();
        let pumping_b = b.spawn(shutdown);

        // Both run: "a" keeps the lease, renewing it.
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(log.holder().as_deref(), Some("a"));
        assert!(!b_leads.is_held());

        stop(stop_a, pumping_a).await;
        source.push(changes(0, 1).remove(0));
        let took = until(TTL * 2, || log.holder().as_deref() == Some("b")).await;
        assert!(took <= TTL + TTL / 3, "taken over after {took:?}");
        until(Duration::from_secs(5), || log.changes().len() == 1).await;
        assert!(b_leads.is_held());
        assert_eq!(log.changes(), changes(0, 1));
        stop(stop_b, pumping_b).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_read_by_a_holder_that_lost_the_lease_is_not_appended_and_the_next_reads_it_again()
     {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        let (stop_a, shutdown) = watch::channel(false);
        let a = pump("a", &source, &log);
        let a_leads = a.leadership();
        let pumping_a = a.spawn(shutdown);
        until(Duration::from_secs(5), || log.cursor().is_some()).await;

        // "a" reads a batch, stalls, and its lease goes to "b" meanwhile.
        source.close_gate();
        for change in changes(0, 2) {
            source.push(change);
        }
        source.reached_gate(1).await;
        log.give_lease("b", TTL);
        source.open_gate();
        until(Duration::from_secs(1), || log.fenced() == 1).await;
        assert!(log.changes().is_empty(), "the stale batch was not appended");
        until(Duration::from_secs(1), || !a_leads.is_held()).await;

        let (stop_b, shutdown) = watch::channel(false);
        let pumping_b = pump("b", &source, &log).spawn(shutdown);
        until(Duration::from_secs(5), || log.changes().len() == 2).await;
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(log.changes(), changes(0, 2), "each change once");
        assert_eq!(log.holder().as_deref(), Some("b"));
        stop(stop_a, pumping_a).await;
        stop(stop_b, pumping_b).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_renewed_while_the_source_waits_and_a_call_past_its_timeout_is_asked_again()
     {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        let (stop_a, shutdown) = watch::channel(false);
        let pumping = pump("a", &source, &log)
            .with_source_timeout(Duration::from_secs(25))
            .spawn(shutdown);
        until(Duration::from_secs(5), || log.cursor().is_some()).await;

        source.close_gate();
        let asked = source.asked().len();
        for _ in 0..4 {
            tokio::time::sleep(TTL).await;
            assert!(
                !log.lease("b", TTL).await.unwrap(),
                "the lease is held while the source waits"
            );
        }
        // The call abandoned at 25 s was asked again, from the same cursor.
        let again = source.asked();
        assert_eq!(again.len(), asked + 1);
        assert_eq!(again[asked].0, again[asked - 1].0);

        source.open_gate();
        source.push(changes(0, 1).remove(0));
        until(Duration::from_secs(30), || log.changes().len() == 1).await;
        stop(stop_a, pumping).await;
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_and_ask_again_from_the_same_cursor() {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        let (stop_a, shutdown) = watch::channel(false);
        let pumping = pump("a", &source, &log).spawn(shutdown);
        until(Duration::from_secs(5), || {
            log.cursor().as_deref() == Some("0")
        })
        .await;

        // The engine fails three times.
        source.push(changes(0, 1).remove(0));
        source.fail_next(3);
        until(Duration::from_secs(30), || log.changes().len() == 1).await;
        let asks: Vec<_> = source
            .asked()
            .into_iter()
            .filter(|(cursor, _)| cursor.as_deref() == Some("0"))
            .map(|(_, at)| at)
            .collect();
        let gaps: Vec<f64> = asks
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs_f64())
            .collect();
        // The poll interval, plus 0.5 s, 1 s, 2 s of backoff.
        assert_eq!(gaps[gaps.len() - 3..], [1.5, 2.0, 3.0]);

        // The log fails to append twice, then to read the cursor once.
        log.fail(Failures {
            append: 2,
            cursor: 1,
            ..Failures::default()
        });
        source.push(changes(1, 2).remove(0));
        until(Duration::from_secs(30), || log.changes().len() == 2).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(log.changes(), changes(0, 2), "nothing lost, nothing twice");
        assert!(
            source
                .asked()
                .iter()
                .skip(asks.len())
                .all(|(cursor, _)| matches!(cursor.as_deref(), Some("0" | "1" | "2"))),
        );
        stop(stop_a, pumping).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_failing_the_lease_is_asked_again_within_a_third_of_the_ttl() {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        log.fail(Failures {
            lease: 5,
            ..Failures::default()
        });
        let (stop_a, shutdown) = watch::channel(false);
        let pumping = pump("a", &source, &log).spawn(shutdown);
        // 0.5 + 1 + 2 + 3.33 + 3.33 s of backoff, capped at ttl / 3.
        let took = until(TTL * 2, || log.holder().is_some()).await;
        assert!(took <= Duration::from_millis(10_200), "took {took:?}");
        stop(stop_a, pumping).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_waiting_for_the_lease_or_for_the_source_ends_on_shutdown() {
        let (source, log) = (FakeSource::new(POLL), FakeLog::new());
        log.give_lease("other", Duration::from_secs(3600));
        let (stop_a, shutdown) = watch::channel(false);
        let waiting = pump("a", &source, &log).spawn(shutdown);
        tokio::time::sleep(TTL).await;
        stop(stop_a, waiting).await;

        let log = FakeLog::new();
        source.close_gate();
        let (stop_b, shutdown) = watch::channel(false);
        let b = pump("b", &source, &log);
        let leadership = b.leadership();
        let reading = b.spawn(shutdown);
        source.reached_gate(1).await;
        drop(stop_b);
        tokio::time::timeout(Duration::from_millis(1), reading)
            .await
            .expect("a dropped sender ends the pump")
            .unwrap();
        assert!(!leadership.is_held());
    }
}
