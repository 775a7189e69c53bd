//! The in-memory idempotency store: the default for a single Maestro
//! instance, bounded and expiring, on the service's clock.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    Claim, Clock, CustomerId, IdempotencyKey, IdempotencyStore, Lease, StoreError, Timestamp,
};
use runtime::TokioClock;

/// One customer's key.
type Scope = (CustomerId, IdempotencyKey);

/// Keeps claims, outcomes and notes of failed attempts of idempotency keys
/// in this process.
///
/// Entries expire on the store's clock ([`TokioClock`] unless
/// [`MemoryIdempotencyStore::with_clock`] says otherwise), so tests move
/// them with `tokio::time::pause()` and `tokio::time::advance()`. The store
/// holds at
/// most [`MemoryIdempotencyStore::max_entries`], every kind of entry
/// counted: expired entries go first; when all are live, the kept outcome
/// or failed attempt closest to its expiry is forgotten early (a cache's
/// trade: a very late retry of that key would run again, as a first
/// attempt). Claims in flight are never evicted; a claim that finds the
/// store full of them fails rather than break a running request's promise.
///
/// Cheap to clone: clones share the entries. Instances do not: several
/// Maestro instances need a shared store (Redis).
#[derive(Debug, Clone)]
pub struct MemoryIdempotencyStore {
    state: Arc<Mutex<State>>,
    max_entries: usize,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Scope, Entry>,
    /// Every entry by its expiry, so that the expired and the soonest to
    /// expire are found without a scan. The sequence number tells apart
    /// entries that expire at the same instant.
    by_expiry: BTreeMap<(Timestamp, u64), Scope>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    status: Status,
    expires_at: Timestamp,
    seq: u64,
}

#[derive(Debug)]
enum Status {
    InFlight {
        lease: Lease,
    },
    Done(Vec<u8>),
    /// A request with the key failed in a way that invites a retry and gave
    /// up its claim: the next claim with the same fingerprint takes the key
    /// over as a retry.
    Failed,
}

impl MemoryIdempotencyStore {
    /// The default [`MemoryIdempotencyStore::max_entries`]: with bodies of
    /// a few hundred bytes, some tens of megabytes at most.
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

    /// An empty store holding at most `max_entries` (at least one).
    pub fn new(max_entries: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            max_entries: max_entries.max(1),
            clock: Arc::new(TokioClock::start()),
        }
    }

    /// The same store, reading the time from `clock`. Call it before the
    /// store is cloned: clones made earlier keep the clock they had.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The most entries the store holds.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// How many entries the store holds now, expired ones not yet dropped
    /// included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the claim that `lease` holds with `status`, kept for
    /// `retention`: the one way both an outcome and a failed attempt are
    /// recorded.
    fn replace_claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        status: Status,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let scope = (scope.clone(), key.clone());
        let mut state = self.lock();
        let Some(fingerprint) = state.held(&scope, lease, now).map(str::to_owned) else {
            return Err(StoreError::ClaimLost);
        };
        state.insert(scope, fingerprint, status, deadline(now, retention));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A std mutex, not tokio's: no method awaits while holding it, and
        // every critical section is a few map operations. A panic while
        // holding it leaves the maps consistent (each change is a single
        // insert or remove pair), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_ENTRIES)
    }
}

impl State {
    fn insert(&mut self, scope: Scope, fingerprint: String, status: Status, expires_at: Timestamp) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((expires_at, seq), scope.clone());
        let entry = Entry {
            fingerprint,
            status,
            expires_at,
            seq,
        };
        if let Some(old) = self.entries.insert(scope, entry) {
            self.by_expiry.remove(&(old.expires_at, old.seq));
        }
    }

    fn remove(&mut self, scope: &Scope) {
        if let Some(old) = self.entries.remove(scope) {
            self.by_expiry.remove(&(old.expires_at, old.seq));
        }
    }

    /// Drops every entry expired at `now`.
    fn purge(&mut self, now: Timestamp) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let scope = entry.remove();
            self.entries.remove(&scope);
        }
    }

    /// Makes room for one entry: forgets the kept outcome or failed
    /// attempt closest to its expiry. False when only claims in flight are
    /// left.
    fn evict_one(&mut self) -> bool {
        let victim = self.by_expiry.values().find(|scope| {
            self.entries
                .get(*scope)
                .is_some_and(|entry| matches!(entry.status, Status::Done(_) | Status::Failed))
        });
        match victim.cloned() {
            Some(scope) => {
                self.remove(&scope);
                true
            }
            None => false,
        }
    }

    /// The fingerprint of the live claim on `scope`, if `lease` still holds
    /// it.
    fn held(&self, scope: &Scope, lease: &Lease, now: Timestamp) -> Option<&str> {
        self.entries
            .get(scope)
            .filter(|entry| {
                entry.expires_at > now
                    && matches!(&entry.status, Status::InFlight { lease: held } if held == lease)
            })
            .map(|entry| entry.fingerprint.as_str())
    }
}

/// `now + ttl`, or the end of time for a ttl too long to add.
fn deadline(now: Timestamp, ttl: Duration) -> Timestamp {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(Timestamp::MAX_UTC)
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        in_flight: Duration,
    ) -> Result<Claim, StoreError> {
        let now = self.clock.now();
        let scope = (scope.clone(), key.clone());
        let mut state = self.lock();
        state.purge(now);
        let retry = match state.entries.get(&scope) {
            None => false,
            Some(entry) if entry.fingerprint != fingerprint => return Ok(Claim::Mismatch),
            Some(entry) => match &entry.status {
                Status::InFlight { .. } => return Ok(Claim::InFlight),
                Status::Done(outcome) => return Ok(Claim::Done(outcome.clone())),
                // Taken over under the lock, so of concurrent retries only
                // the first finds the failed attempt; the others find its
                // claim.
                Status::Failed => true,
            },
        };
        // A takeover replaces its entry, so only a new key needs room.
        if !retry && state.entries.len() >= self.max_entries && !state.evict_one() {
            return Err(StoreError::failed(format!(
                "the in-memory idempotency store is full: {} requests with keys in flight",
                state.entries.len()
            )));
        }
        let lease = Lease::new(state.next_seq.to_string());
        state.insert(
            scope,
            fingerprint.to_owned(),
            Status::InFlight {
                lease: lease.clone(),
            },
            deadline(now, in_flight),
        );
        Ok(if retry {
            Claim::Retry(lease)
        } else {
            Claim::Acquired(lease)
        })
    }

    async fn complete(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), StoreError> {
        self.replace_claim(scope, key, lease, Status::Done(record.to_vec()), retention)
    }

    async fn release(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        retention: Duration,
    ) -> Result<(), StoreError> {
        self.replace_claim(scope, key, lease, Status::Failed, retention)
    }
}

#[cfg(test)]
mod tests {
    //! The port's rules run from `domain::idempotency_testkit` under a
    //! paused clock; what is this store's own (its bound, and claims from
    //! many tasks at once) is tested here.

    use domain::{
        Attempt,
        idempotency_testkit::{self as kit, Setup},
    };
    use tokio::time::advance;

    use super::*;

    const IN_FLIGHT: Duration = Duration::from_secs(30);
    const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

    fn setup() -> Setup {
        Setup::paused_clock("")
    }

    #[tokio::test(start_paused = true)]
    async fn a_claimed_key_is_in_flight_then_done_with_its_outcome() {
        let store = MemoryIdempotencyStore::default();
        kit::a_claimed_key_is_in_flight_then_done_with_its_outcome(&store, &setup()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn another_fingerprint_is_a_mismatch_in_flight_and_done() {
        let store = MemoryIdempotencyStore::default();
        kit::another_fingerprint_is_a_mismatch_in_flight_and_done(&store, &setup()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_scoped_to_their_customer() {
        let store = MemoryIdempotencyStore::default();
        kit::keys_are_scoped_to_their_customer(&store, &setup()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_expires_so_a_lost_request_never_locks_its_key() {
        let store = MemoryIdempotencyStore::default();
        kit::a_claim_expires_so_a_lost_request_never_locks_its_key(&store, &setup(), advance).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_is_kept_for_its_retention_and_no_longer() {
        let store = MemoryIdempotencyStore::default();
        kit::an_outcome_is_kept_for_its_retention_and_no_longer(&store, &setup(), advance).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once() {
        let store = MemoryIdempotencyStore::default();
        kit::a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once(
            &store,
            &setup(),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own() {
        let store = MemoryIdempotencyStore::default();
        kit::a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own(&store, &setup())
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_is_noted_for_the_retention_and_no_longer() {
        let store = MemoryIdempotencyStore::default();
        kit::a_failed_attempt_is_noted_for_the_retention_and_no_longer(&store, &setup(), advance)
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention() {
        let store = MemoryIdempotencyStore::default();
        kit::a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention(
            &store,
            &setup(),
            advance,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_by_a_lost_lease_writes_nothing() {
        let store = MemoryIdempotencyStore::default();
        kit::a_release_by_a_lost_lease_writes_nothing(&store, &setup(), advance).await;
    }

    fn customer(name: &str) -> CustomerId {
        CustomerId::parse(name).unwrap()
    }

    fn key(raw: &str) -> IdempotencyKey {
        IdempotencyKey::parse(raw).unwrap()
    }

    fn ok(body: &str) -> Vec<u8> {
        body.as_bytes().to_vec()
    }

    async fn acquire(store: &MemoryIdempotencyStore, who: &str, raw: &str) -> Lease {
        match store
            .claim(&customer(who), &key(raw), "p1", IN_FLIGHT)
            .await
            .unwrap()
        {
            Claim::Acquired(lease) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    async fn fail(store: &MemoryIdempotencyStore, raw: &str, retention: Duration) {
        let lease = acquire(store, "acme", raw).await;
        store
            .release(&customer("acme"), &key(raw), &lease, retention)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_count_toward_the_bound_and_are_evicted_before_claims() {
        let store = MemoryIdempotencyStore::new(2);
        fail(&store, "failed", RETENTION).await;
        acquire(&store, "acme", "running").await;

        acquire(&store, "acme", "new").await;
        assert_eq!(store.len(), 2);
        let failed = store
            .claim(&customer("acme"), &key("failed"), "p1", IN_FLIGHT)
            .await;
        assert!(
            matches!(failed, Err(StoreError::Failed { .. })),
            "the note was evicted to make room, and only claims are left: {failed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_dropped_before_anything_is_evicted() {
        let store = MemoryIdempotencyStore::new(2);
        let first = acquire(&store, "acme", "a").await;
        store
            .complete(
                &customer("acme"),
                &key("a"),
                &first,
                &ok("a"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        acquire(&store, "acme", "b").await;

        tokio::time::advance(Duration::from_secs(10)).await;
        acquire(&store, "acme", "c").await;
        assert_eq!(store.len(), 2);
        // "b" is still in flight: it was not the one that made room.
        let b = store
            .claim(&customer("acme"), &key("b"), "p1", IN_FLIGHT)
            .await;
        assert_eq!(b.unwrap(), Claim::InFlight);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_the_outcome_closest_to_expiry_and_never_a_claim() {
        let store = MemoryIdempotencyStore::new(3);
        for (raw, retention) in [("short", 10), ("long", 20)] {
            let lease = acquire(&store, "acme", raw).await;
            store
                .complete(
                    &customer("acme"),
                    &key(raw),
                    &lease,
                    &ok(raw),
                    Duration::from_secs(retention),
                )
                .await
                .unwrap();
        }
        acquire(&store, "acme", "running").await;

        acquire(&store, "acme", "new").await;
        assert_eq!(store.len(), 3);
        let short = store
            .claim(&customer("acme"), &key("short"), "p1", IN_FLIGHT)
            .await;
        assert!(
            matches!(short.unwrap(), Claim::Acquired(_)),
            "short was evicted, so it is free"
        );
        // Claiming "short" again evicted "long", the last outcome left.
        let long = store
            .claim(&customer("acme"), &key("long"), "p1", IN_FLIGHT)
            .await;
        assert!(
            matches!(long, Err(StoreError::Failed { .. })),
            "only claims in flight are left"
        );
        let running = store
            .claim(&customer("acme"), &key("running"), "p1", IN_FLIGHT)
            .await;
        assert_eq!(running.unwrap(), Claim::InFlight);
    }

    /// Claims acme's key "k" `claims` times from as many tasks at once.
    async fn claim_at_once(store: &MemoryIdempotencyStore, claims: usize) -> Vec<Claim> {
        let tasks: Vec<_> = (0..claims)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim(&customer("acme"), &key("k"), "p1", IN_FLIGHT)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(claims);
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    #[tokio::test(start_paused = true)]
    async fn of_many_concurrent_claims_of_one_key_exactly_one_is_acquired() {
        let store = MemoryIdempotencyStore::default();
        let claims = claim_at_once(&store, 200).await;
        kit::assert_exactly_one_took_the_key(claims, Attempt::First);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_concurrent_claims_of_a_failed_attempt_exactly_one_retries() {
        let store = MemoryIdempotencyStore::default();
        fail(&store, "k", RETENTION).await;
        let claims = claim_at_once(&store, 200).await;
        kit::assert_exactly_one_took_the_key(claims, Attempt::Retry);
    }
}
