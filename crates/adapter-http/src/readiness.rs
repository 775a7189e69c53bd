//! What `/ready` checks: the backend, and whatever else the service needs
//! to do its job ([`ReadinessCheck`]s the binary adds: the token keys,
//! Redis), run together at most once per interval however many probes
//! come. A probe is answered from the last round at once; only the first
//! probe, and one after a quiet with no probes, waits for a new round.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use domain::{Clock, PipelineService, SystemClock, Timestamp};
use serde::Serialize;
use tokio::{sync::watch, task::JoinSet};
use utoipa::ToSchema;

use crate::error::ErrorChain;

/// Why a check failed, for the log only: it never reaches the client.
pub type CheckError = Box<dyn std::error::Error + Send + Sync>;

/// One thing the service needs to do its job, which `/ready` checks.
///
/// Implemented outside this crate for what only the binary knows (whether
/// the token verifier has its keys, whether Redis answers), so that
/// adapters need not know each other.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + fmt::Debug {
    /// The check's name in the `/ready` body: a fixed word such as
    /// `redis`, never anything taken from the configuration.
    fn name(&self) -> &'static str;

    /// Whether the thing is ready. Should be cheap: it is called at most
    /// once a second (`Readiness::INTERVAL`), and only while probes come.
    ///
    /// # Errors
    /// Why it is not ready, for the log.
    async fn check(&self) -> Result<(), CheckError>;
}

/// The backend answers its health check.
#[derive(Debug)]
struct Backend(PipelineService);

#[async_trait]
impl ReadinessCheck for Backend {
    fn name(&self) -> &'static str {
        "backend"
    }

    async fn check(&self) -> Result<(), CheckError> {
        self.0.ready().await.map_err(Into::into)
    }
}

/// The checks' answer, as `/ready` gives it: each check's name and `ok` or
/// `unavailable`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Report {
    /// `ready` or `unavailable` (`draining` while shutting down).
    #[schema(example = "ready")]
    pub(crate) status: &'static str,
    /// Each check and how it went.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>, example = json!({"auth_keys": "ok", "backend": "ok"}))]
    pub(crate) checks: BTreeMap<&'static str, &'static str>,
}

impl Report {
    /// The answer while the service drains: no check is run.
    pub(crate) fn draining() -> Self {
        Self {
            status: "draining",
            checks: BTreeMap::new(),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// The last round of checks and when it ended.
#[derive(Debug)]
struct Last {
    at: Timestamp,
    report: Report,
}

/// The checks behind `/ready`, with the last round's result.
///
/// A probe is answered from the last round, and when that round is older
/// than [`Self::INTERVAL`] it starts the next one, which answers the probes
/// after it. Only the first probe, and one that finds the last round older
/// than [`Self::MAX_AGE`], waits for a new round. So a check that
/// is slow (a shared backend under load) neither makes probes time out nor
/// counts against the instance, up to [`Self::CHECK_TIMEOUT`]; the price is
/// that a change is seen one probe later.
pub(crate) struct Readiness {
    checks: Vec<Arc<dyn ReadinessCheck>>,
    clock: Arc<dyn Clock>,
    /// The last round, `None` until the first one ends.
    last: watch::Sender<Option<Last>>,
    /// Whether a round runs: at most one at a time.
    running: AtomicBool,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// How long a round's result is fresh: while probes come, the checks
    /// run at most once per interval (one backend health call), however
    /// many probes there are.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

    /// How old the last round may be and still answer a probe at once:
    /// more than a round that times out plus the time between two probes,
    /// so that regular probes never wait, but not so much that a probe
    /// after a long quiet is told what was true long ago.
    pub(crate) const MAX_AGE: Duration = Duration::from_secs(10);

    /// The longest one check may take; past it, the check counts as failed.
    /// No probe waits for it but the first, so it can be longer than a
    /// probe's own timeout: slow is not down.
    pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

    /// The backend's check alone, timed by the system clock.
    pub(crate) fn backend(service: PipelineService) -> Self {
        Self::new(service, Vec::new(), Arc::new(SystemClock))
    }

    /// The backend's check and `checks`, a round's result fresh for
    /// [`Self::INTERVAL`] as `clock` tells.
    pub(crate) fn new(
        service: PipelineService,
        checks: Vec<Arc<dyn ReadinessCheck>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut all: Vec<Arc<dyn ReadinessCheck>> = vec![Arc::new(Backend(service))];
        all.extend(checks);
        Self {
            checks: all,
            clock,
            last: watch::Sender::new(None),
            running: AtomicBool::new(false),
        }
    }

    /// The last round's report, at once while it is younger than
    /// [`Self::MAX_AGE`]; a new round is started when it is no longer
    /// fresh. The first probe, and one after a long quiet, waits for a
    /// new round instead.
    pub(crate) async fn report(self: &Arc<Self>) -> Report {
        let mut rounds = self.last.subscribe();
        let last = rounds
            .borrow_and_update()
            .as_ref()
            .map(|last| (last.report.clone(), self.age(last)));
        if let Some((report, age)) = last
            && age < Self::MAX_AGE
        {
            if age >= Self::INTERVAL {
                self.start_round();
            }
            return report;
        }
        self.start_round();
        rounds
            .changed()
            .await
            .expect("the sender lives as long as `self`");
        rounds
            .borrow()
            .as_ref()
            .map(|last| last.report.clone())
            .expect("a round has ended")
    }

    /// How long ago `last` ended; zero for a clock that went back.
    fn age(&self, last: &Last) -> Duration {
        self.clock
            .now()
            .signed_duration_since(last.at)
            .to_std()
            .unwrap_or_default()
    }

    /// Starts a round in a task of its own unless one runs already.
    fn start_round(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let readiness = Arc::clone(self);
        tokio::spawn(async move {
            let previous = readiness
                .last
                .borrow()
                .as_ref()
                .map(|last| last.report.clone());
            let report = readiness.round(previous.as_ref()).await;
            readiness.last.send_replace(Some(Last {
                at: readiness.clock.now(),
                report,
            }));
            readiness.running.store(false, Ordering::Release);
        });
    }

    /// Runs every check at once, each within [`Self::CHECK_TIMEOUT`], and
    /// logs the checks whose state changed since `previous`.
    async fn round(&self, previous: Option<&Report>) -> Report {
        let mut running = JoinSet::new();
        for check in &self.checks {
            let check = check.clone();
            running.spawn(async move {
                let outcome = tokio::time::timeout(Self::CHECK_TIMEOUT, check.check())
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("did not answer within {:?}", Self::CHECK_TIMEOUT).into())
                    });
                (check.name(), outcome)
            });
        }
        let mut checks = BTreeMap::new();
        while let Some(joined) = running.join_next().await {
            let (name, outcome) = match joined {
                Ok(done) => done,
                Err(err) => {
                    // A check that panicked is a failed check, not a crash.
                    tracing::error!(error = %err, "readiness check panicked");
                    continue;
                }
            };
            let was = previous.and_then(|report| report.checks.get(name).copied());
            let state = match outcome {
                Ok(()) => {
                    if was.is_some_and(|was| was != "ok") {
                        tracing::info!(check = name, "readiness check passes again");
                    }
                    "ok"
                }
                Err(err) => {
                    if was != Some("unavailable") {
                        tracing::warn!(check = name, error = %ErrorChain(err.as_ref()), "readiness check fails");
                    }
                    "unavailable"
                }
            };
            checks.insert(name, state);
        }
        let ready =
            checks.len() == self.checks.len() && checks.values().all(|state| *state == "ok");
        Report {
            status: if ready { "ready" } else { "unavailable" },
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use domain::{BackendError, MockOrchestrator, MockPipelineRepository};

    use super::*;

    /// A check that counts its calls and answers as its switch says.
    #[derive(Debug, Default)]
    struct Switch {
        up: AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl ReadinessCheck for Switch {
        fn name(&self) -> &'static str {
            "switch"
        }

        async fn check(&self) -> Result<(), CheckError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // A check takes a while, so that probes pile up behind it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("down at http://10.1.2.3/secret".into())
            }
        }
    }

    fn service(healthy: bool) -> PipelineService {
        let mut orchestrator = MockOrchestrator::new();
        orchestrator.expect_health().returning(move || {
            if healthy {
                Ok(())
            } else {
                Err(BackendError::unavailable("refused"))
            }
        });
        PipelineService::new(
            Arc::new(MockPipelineRepository::new()),
            Arc::new(orchestrator),
        )
    }

    fn readiness(healthy: bool, switch: &Arc<Switch>) -> Arc<Readiness> {
        Arc::new(Readiness::new(
            service(healthy),
            vec![switch.clone()],
            Arc::new(runtime::TokioClock::start()),
        ))
    }

    /// Waits until the round in flight has ended.
    async fn round_ended(readiness: &Readiness) {
        let mut rounds = readiness.last.subscribe();
        rounds.mark_unchanged();
        rounds.changed().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_probes_makes_one_round_of_checks_per_interval() {
        let switch = Arc::new(Switch::default());
        switch.up.store(true, Ordering::SeqCst);
        let readiness = readiness(true, &switch);
        let mut probes = JoinSet::new();
        for _ in 0..100 {
            let readiness = readiness.clone();
            probes.spawn(async move { readiness.report().await });
        }
        while let Some(report) = probes.join_next().await {
            assert!(report.unwrap().is_ready());
        }
        assert_eq!(switch.calls.load(Ordering::SeqCst), 1);

        tokio::time::advance(Readiness::INTERVAL).await;
        for _ in 0..100 {
            assert!(readiness.report().await.is_ready());
        }
        round_ended(&readiness).await;
        assert_eq!(switch.calls.load(Ordering::SeqCst), 2);
        readiness.report().await;
        assert_eq!(switch.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_round_a_probe_is_answered_at_once_and_a_change_seen_by_the_next() {
        let switch = Arc::new(Switch::default());
        switch.up.store(true, Ordering::SeqCst);
        let readiness = readiness(true, &switch);
        let started = tokio::time::Instant::now();
        assert!(readiness.report().await.is_ready());
        assert!(started.elapsed() > Duration::ZERO, "the first probe waits");

        switch.up.store(false, Ordering::SeqCst);
        tokio::time::advance(Readiness::INTERVAL).await;
        let asked = tokio::time::Instant::now();
        assert!(readiness.report().await.is_ready(), "the last round's");
        assert_eq!(asked.elapsed(), Duration::ZERO);
        round_ended(&readiness).await;
        let report = readiness.report().await;
        assert_eq!(report.checks["switch"], "unavailable");

        switch.up.store(true, Ordering::SeqCst);
        tokio::time::advance(Readiness::INTERVAL).await;
        assert!(!readiness.report().await.is_ready());
        round_ended(&readiness).await;
        assert!(readiness.report().await.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_after_a_long_quiet_waits_for_a_new_round() {
        let switch = Arc::new(Switch::default());
        switch.up.store(true, Ordering::SeqCst);
        let readiness = readiness(true, &switch);
        assert!(readiness.report().await.is_ready());

        switch.up.store(false, Ordering::SeqCst);
        tokio::time::advance(Readiness::MAX_AGE).await;
        let asked = tokio::time::Instant::now();
        let report = readiness.report().await;
        assert_eq!(report.checks["switch"], "unavailable");
        assert!(asked.elapsed() > Duration::ZERO, "it waited for the round");
        assert_eq!(switch.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_report_names_the_failing_check_and_nothing_of_its_cause() {
        let switch = Arc::new(Switch::default());
        let report = readiness(true, &switch).report().await;
        assert!(!report.is_ready());
        let body = serde_json::to_value(&report).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "unavailable", "checks": {"backend": "ok", "switch": "unavailable"}})
        );

        let report = readiness(false, &switch).report().await;
        assert_eq!(report.checks["backend"], "unavailable");
    }

    /// A check that answers `ok` after `delay`, or never.
    #[derive(Debug)]
    struct Slow(Option<Duration>);

    #[async_trait]
    impl ReadinessCheck for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        async fn check(&self) -> Result<(), CheckError> {
            match self.0 {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok(())
        }
    }

    fn with_slow(delay: Option<Duration>) -> Arc<Readiness> {
        Arc::new(Readiness::new(
            service(true),
            vec![Arc::new(Slow(delay))],
            Arc::new(runtime::TokioClock::start()),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_at_the_check_timeout_and_holds_no_probe_after_the_first() {
        let readiness = with_slow(None);
        let started = tokio::time::Instant::now();
        let report = readiness.report().await;
        assert_eq!(started.elapsed(), Readiness::CHECK_TIMEOUT);
        assert_eq!(report.checks["slow"], "unavailable");

        tokio::time::advance(Readiness::INTERVAL).await;
        let asked = tokio::time::Instant::now();
        assert_eq!(readiness.report().await.checks["slow"], "unavailable");
        assert_eq!(asked.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_slower_than_a_probes_timeout_but_within_the_check_timeout_is_ok() {
        // Longer than the probes' own timeouts in `deploy/` and the stack
        // (3 s and 2 s): a backend this slow still serves.
        let readiness = with_slow(Some(Duration::from_millis(3_500)));
        assert!(readiness.report().await.is_ready());

        tokio::time::advance(Readiness::INTERVAL).await;
        let asked = tokio::time::Instant::now();
        assert!(readiness.report().await.is_ready());
        assert_eq!(asked.elapsed(), Duration::ZERO);
        round_ended(&readiness).await;
        assert!(readiness.report().await.is_ready());
    }
}
