//! DAGs recently seen unpaused and owned by a customer, so that a trigger
//! can skip reading the DAG again before it posts the run.
//!
//! Airflow's trigger has no "only if unpaused" condition, so refusing a
//! paused DAG before anything is sent takes a read of the DAG first: one
//! more Airflow round trip on every execute. This keeps what the reads
//! said, for a short time (`MAESTRO_AIRFLOW_DAG_CACHE_MS`), and only the
//! answer that lets a trigger through: a DAG seen paused, missing or not
//! the caller's is read again every time, so a refusal is never stale.
//!
//! Every read of a DAG by this backend renews or drops its entry, a pause
//! through this backend drops it before it answers, and an unpause
//! through it adds it. A trigger never renews an entry, so a DAG triggered
//! without pause is read again once per time to live. What stays stale is
//! a pause made elsewhere (Airflow's UI, another Maestro instance) until
//! the entry expires: see `docs/decisions/0008-trigger-check-cache.md`.
//!
//! Ages are differences of the backend's clock (the caller passes `now`);
//! an entry stamped after `now`, which a clock stepped back leaves behind,
//! counts as expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use domain::{CustomerId, PipelineId, Timestamp};

use crate::age::younger_than;

/// Past this many entries, an insert first sweeps out the expired ones, so
/// that the map stays the size of the DAGs in recent use.
const SWEEP_ABOVE: usize = 4096;

/// DAGs seen triggerable (unpaused, and the pipeline of one customer), each
/// with when it was seen.
#[derive(Debug)]
pub(crate) struct Triggerable {
    ttl: Duration,
    // A std mutex: held only to read or write the map, never across an
    // `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seen: HashMap<PipelineId, Seen>,
    /// Counts the pauses made through this backend. A read that started
    /// before the latest one may have seen the DAG before the pause took,
    /// so what it found is not kept.
    pauses: u64,
}

#[derive(Debug, Clone)]
struct Seen {
    owner: CustomerId,
    at: Timestamp,
}

/// Taken before a read of a DAG is sent and given back with what it found,
/// so that a read that overlapped a pause through this backend is not kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadStart(u64);

impl Triggerable {
    /// Keeps what was seen for `ttl`; a zero `ttl` keeps nothing, and every
    /// trigger reads the DAG.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `id` was seen triggerable by `customer` within the time to
    /// live, as of `now`.
    pub(crate) fn admits(&self, id: &PipelineId, customer: &CustomerId, now: Timestamp) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        self.lock()
            .seen
            .get(id)
            .is_some_and(|seen| &seen.owner == customer && younger_than(seen.at, now, self.ttl))
    }

    /// To be called before a read of a DAG is sent.
    pub(crate) fn read_start(&self) -> ReadStart {
        ReadStart(self.lock().pauses)
    }

    /// Records what a read of the DAG behind `id`, sent at `start`, found
    /// at `now`: its owner when it is unpaused and a customer's pipeline,
    /// `None` otherwise (paused, missing, or no one's). A triggerable DAG
    /// is kept only when no pause went through this backend since `start`.
    pub(crate) fn observe(
        &self,
        id: &PipelineId,
        start: ReadStart,
        triggerable_by: Option<CustomerId>,
        now: Timestamp,
    ) {
        let mut state = self.lock();
        match triggerable_by {
            Some(owner) if !self.ttl.is_zero() && start.0 == state.pauses => {
                if state.seen.len() >= SWEEP_ABOVE {
                    state
                        .seen
                        .retain(|_, entry| younger_than(entry.at, now, self.ttl));
                }
                state.seen.insert(id.clone(), Seen { owner, at: now });
            }
            _ => {
                state.seen.remove(id);
            }
        }
    }

    /// Forgets `id`, which Airflow no longer knows.
    pub(crate) fn forget(&self, id: &PipelineId) {
        self.lock().seen.remove(id);
    }

    /// Forgets `id`, which is being paused or was paused through this
    /// backend, and discards what reads still in flight will find.
    pub(crate) fn pausing(&self, id: &PipelineId) {
        let mut state = self.lock();
        state.pauses += 1;
        state.seen.remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid after any panic: each write is one insert, one
        // remove or one increment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta};

    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    /// The instant the tests start at: any fixed one does.
    fn start() -> Timestamp {
        DateTime::from_timestamp(1_795_942_800, 0).unwrap()
    }

    fn pipeline(n: u128) -> PipelineId {
        PipelineId::parse(&uuid::Uuid::from_u128(n).to_string()).unwrap()
    }

    fn customer(name: &str) -> CustomerId {
        CustomerId::parse(name).unwrap()
    }

    #[test]
    fn a_dag_seen_triggerable_admits_its_owner_until_the_time_to_live_ends() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);

        assert!(cache.admits(&pipeline(1), &customer("acme"), t0));
        assert!(cache.admits(
            &pipeline(1),
            &customer("acme"),
            t0 + TTL - TimeDelta::milliseconds(1)
        ));
        assert!(!cache.admits(&pipeline(1), &customer("acme"), t0 + TTL));
    }

    #[test]
    fn an_entry_stamped_after_now_admits_no_one_once_the_clock_stepped_back() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);

        assert!(!cache.admits(
            &pipeline(1),
            &customer("acme"),
            t0 - TimeDelta::milliseconds(1)
        ));
    }

    #[test]
    fn another_customer_and_another_dag_are_never_admitted() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);

        assert!(!cache.admits(&pipeline(1), &customer("globex"), t0));
        assert!(!cache.admits(&pipeline(2), &customer("acme"), t0));
    }

    #[test]
    fn a_read_that_finds_the_dag_paused_or_gone_drops_it_at_once() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);
        cache.observe(&pipeline(1), cache.read_start(), None, t0);
        assert!(!cache.admits(&pipeline(1), &customer("acme"), t0));

        cache.observe(&pipeline(2), cache.read_start(), Some(customer("acme")), t0);
        cache.forget(&pipeline(2));
        assert!(!cache.admits(&pipeline(2), &customer("acme"), t0));
    }

    #[test]
    fn a_read_that_overlapped_a_pause_through_the_backend_is_not_kept() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);
        let before_the_pause = cache.read_start();

        cache.pausing(&pipeline(1));
        assert!(!cache.admits(&pipeline(1), &customer("acme"), t0));
        cache.observe(&pipeline(1), before_the_pause, Some(customer("acme")), t0);
        assert!(!cache.admits(&pipeline(1), &customer("acme"), t0));

        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);
        assert!(cache.admits(&pipeline(1), &customer("acme"), t0));
    }

    #[test]
    fn a_later_read_renews_the_entry() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);
        cache.observe(
            &pipeline(1),
            cache.read_start(),
            Some(customer("acme")),
            t0 + TTL,
        );

        assert!(cache.admits(&pipeline(1), &customer("acme"), t0 + TTL + TTL / 2));
    }

    #[test]
    fn a_zero_time_to_live_admits_nothing_and_keeps_nothing() {
        let cache = Triggerable::new(Duration::ZERO);
        let t0 = start();
        cache.observe(&pipeline(1), cache.read_start(), Some(customer("acme")), t0);

        assert!(!cache.admits(&pipeline(1), &customer("acme"), t0));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn expired_entries_are_swept_once_the_map_is_large() {
        let cache = Triggerable::new(TTL);
        let t0 = start();
        for n in 0..SWEEP_ABOVE as u128 {
            cache.observe(&pipeline(n), cache.read_start(), Some(customer("acme")), t0);
        }
        assert_eq!(cache.len(), SWEEP_ABOVE);

        let later = t0 + TTL;
        cache.observe(
            &pipeline(u128::MAX),
            cache.read_start(),
            Some(customer("acme")),
            later,
        );

        assert_eq!(cache.len(), 1);
        assert!(cache.admits(&pipeline(u128::MAX), &customer("acme"), later));
    }
}
