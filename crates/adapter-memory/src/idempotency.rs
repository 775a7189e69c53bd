//! The in-memory idempotency store: the default for a single Maestro
//! instance, bounded per customer and in all, expiring, on the service's
//! clock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    Claim, ClaimTerms, Clock, CustomerId, IdempotencyKey, IdempotencyStore, Lease, StoreError,
    Timestamp,
};
use runtime::TokioClock;

/// One customer's key.
type Scope = (CustomerId, IdempotencyKey);

/// An instant, and the sequence number of the entry it belongs to, which
/// tells apart entries at the same instant.
type When = (Timestamp, u64);

/// Keeps claims, outcomes and notes of failed attempts of idempotency keys
/// in this process.
///
/// Entries expire on the store's clock ([`TokioClock`] unless
/// [`MemoryIdempotencyStore::with_clock`] says otherwise), so tests move
/// them with `tokio::time::pause()` and `tokio::time::advance()`. A claim
/// is kept for its retention past its deadline, and reads as a failed
/// attempt once past the deadline.
///
/// Two bounds hold, every kind of entry counted, expired entries dropped
/// first:
/// - each customer holds at most [`ClaimTerms::keys_per_customer`] (the
///   port's rule): a customer at its bound forgets its own kept outcome or
///   failed attempt closest to its expiry, never a claim in flight and
///   never another customer's entry;
/// - the store holds at most [`MemoryIdempotencyStore::max_entries`]: when
///   full, the customer holding the most entries, of those that hold any
///   that may be forgotten, forgets its own closest to its expiry. So a
///   customer loses an entry to another only when the store as a whole is
///   full, and then the customer holding the most pays first.
///
/// Either way a forgotten key is free (a very late repeat of it would run
/// again, as a first attempt), and a claim that finds no entry to forget
/// fails rather than break a running request's promise.
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
    /// Every entry by its expiry, so that the expired are found without a
    /// scan.
    by_expiry: BTreeMap<When, Scope>,
    /// The claims in flight by their deadline: past it, a claim reads as a
    /// failed attempt, and may be forgotten like one.
    by_deadline: BTreeMap<When, Scope>,
    customers: HashMap<CustomerId, Holdings>,
    /// The customers holding an entry that may be forgotten, by how many
    /// entries they hold: the last one makes room when the store is full.
    by_size: BTreeSet<(usize, CustomerId)>,
    next_seq: u64,
}

/// What one customer holds.
#[derive(Debug, Default)]
struct Holdings {
    /// Its entries, of every kind.
    held: usize,
    /// Its entries that may be forgotten to make room (kept outcomes,
    /// failed attempts, claims past their deadline), by expiry.
    forgettable: BTreeMap<When, IdempotencyKey>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    status: Status,
    expires_at: Timestamp,
    seq: u64,
    /// Whether it is in its customer's [`Holdings::forgettable`] rather
    /// than in [`State::by_deadline`].
    forgettable: bool,
}

#[derive(Debug)]
enum Status {
    /// A request holds the key, until `deadline`; past it, the claim reads
    /// as a failed attempt.
    InFlight {
        lease: Lease,
        deadline: Timestamp,
    },
    Done(Vec<u8>),
    /// A request with the key failed in a way that invites a retry and gave
    /// up its claim: the next claim with the same fingerprint takes the key
    /// over as a retry.
    Failed,
}

impl MemoryIdempotencyStore {
    /// The default [`MemoryIdempotencyStore::max_entries`]: with records of
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
        if self
            .lock()
            .replace_claim(&scope, lease, now, status, later(now, retention))
        {
            Ok(())
        } else {
            Err(StoreError::ClaimLost)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A std mutex, not tokio's: no method awaits while holding it, and
        // every critical section is a few map operations. A panic while
        // holding it may leave the indexes short of an entry, which only
        // makes that entry harder to forget, so a poisoned lock is still
        // usable.
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
    /// Files a new entry for `scope`, which holds none.
    fn insert(&mut self, scope: Scope, fingerprint: String, status: Status, expires_at: Timestamp) {
        debug_assert!(!self.entries.contains_key(&scope), "an entry filed twice");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((expires_at, seq), scope.clone());
        let forgettable = match &status {
            Status::InFlight { deadline, .. } => {
                self.by_deadline.insert((*deadline, seq), scope.clone());
                false
            }
            Status::Done(_) | Status::Failed => true,
        };
        let (customer, key) = &scope;
        self.resize(customer, |holdings| {
            holdings.held += 1;
            if forgettable {
                holdings.forgettable.insert((expires_at, seq), key.clone());
            }
        });
        let entry = Entry {
            fingerprint,
            status,
            expires_at,
            seq,
            forgettable,
        };
        self.entries.insert(scope, entry);
    }

    fn remove(&mut self, scope: &Scope) {
        let Some(old) = self.entries.remove(scope) else {
            return;
        };
        self.by_expiry.remove(&(old.expires_at, old.seq));
        if let Status::InFlight { deadline, .. } = old.status {
            self.by_deadline.remove(&(deadline, old.seq));
        }
        self.resize(&scope.0, |holdings| {
            holdings.held -= 1;
            if old.forgettable {
                holdings.forgettable.remove(&(old.expires_at, old.seq));
            }
        });
    }

    /// Replaces the claim on `scope` that `lease` holds with `status` (an
    /// outcome or a failed attempt, either of which may be forgotten), kept
    /// until `expires_at`: in place, under the entry's one look-up, its
    /// count unchanged. False when the lease no longer holds the claim: it
    /// expired, or another request took it over.
    fn replace_claim(
        &mut self,
        scope: &Scope,
        lease: &Lease,
        now: Timestamp,
        status: Status,
        expires_at: Timestamp,
    ) -> bool {
        debug_assert!(!matches!(status, Status::InFlight { .. }));
        let Self {
            entries,
            by_expiry,
            by_deadline,
            customers,
            by_size,
            ..
        } = self;
        let Some(entry) = entries
            .get_mut(scope)
            .filter(|entry| entry.is_held_by(lease, now))
        else {
            return false;
        };
        let (was, was_forgettable) = ((entry.expires_at, entry.seq), entry.forgettable);
        by_expiry.remove(&was);
        if let Status::InFlight { deadline, .. } = entry.status {
            by_deadline.remove(&(deadline, entry.seq));
        }
        let now_kept = (expires_at, entry.seq);
        entry.status = status;
        entry.expires_at = expires_at;
        entry.forgettable = true;
        by_expiry.insert(now_kept, scope.clone());
        resize(customers, by_size, &scope.0, |holdings| {
            if was_forgettable {
                holdings.forgettable.remove(&was);
            }
            holdings.forgettable.insert(now_kept, scope.1.clone());
        });
        true
    }

    /// Changes what `customer` holds, keeping [`State::by_size`] in step.
    fn resize(&mut self, customer: &CustomerId, change: impl FnOnce(&mut Holdings)) {
        resize(&mut self.customers, &mut self.by_size, customer, change);
    }

    /// Drops every entry expired at `now`, and makes every claim past its
    /// deadline at `now` one that may be forgotten.
    fn age(&mut self, now: Timestamp) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let scope = entry.remove();
            self.remove(&scope);
        }
        while let Some(claim) = self.by_deadline.first_entry() {
            if claim.key().0 > now {
                break;
            }
            let scope = claim.remove();
            let Some(entry) = self.entries.get_mut(&scope) else {
                continue;
            };
            entry.forgettable = true;
            let (when, key) = ((entry.expires_at, entry.seq), scope.1.clone());
            self.resize(&scope.0, |holdings| {
                holdings.forgettable.insert(when, key);
            });
        }
    }

    /// Makes room for a new key of `customer`: under the customer's bound,
    /// then under the store's.
    fn make_room(
        &mut self,
        customer: &CustomerId,
        keys_per_customer: usize,
        max_entries: usize,
    ) -> Result<(), StoreError> {
        loop {
            let held = self.customers.get(customer).map_or(0, |h| h.held);
            if held < keys_per_customer {
                break;
            }
            if !self.forget_one_of(customer) {
                return Err(StoreError::failed(format!(
                    "customer {customer} holds {held} idempotency keys, its bound, all of them claims in flight"
                )));
            }
        }
        while self.entries.len() >= max_entries {
            let largest = self.by_size.last().map(|(_, largest)| largest.clone());
            if !largest.is_some_and(|largest| self.forget_one_of(&largest)) {
                return Err(StoreError::failed(format!(
                    "the in-memory idempotency store is full: {} requests with keys in flight",
                    self.entries.len()
                )));
            }
        }
        Ok(())
    }

    /// Forgets the entry of `customer` closest to its expiry of those that
    /// may be forgotten; false when there is none.
    fn forget_one_of(&mut self, customer: &CustomerId) -> bool {
        let victim = self
            .customers
            .get(customer)
            .and_then(|holdings| holdings.forgettable.values().next().cloned());
        match victim {
            Some(key) => {
                self.remove(&(customer.clone(), key));
                true
            }
            None => false,
        }
    }
}

/// Changes what `customer` holds in `customers`, keeping `by_size` (see
/// [`State::by_size`]) in step.
fn resize(
    customers: &mut HashMap<CustomerId, Holdings>,
    by_size: &mut BTreeSet<(usize, CustomerId)>,
    customer: &CustomerId,
    change: impl FnOnce(&mut Holdings),
) {
    let holdings = customers.entry(customer.clone()).or_default();
    if !holdings.forgettable.is_empty() {
        by_size.remove(&(holdings.held, customer.clone()));
    }
    change(holdings);
    if !holdings.forgettable.is_empty() {
        by_size.insert((holdings.held, customer.clone()));
    }
    if holdings.held == 0 {
        customers.remove(customer);
    }
}

impl Entry {
    /// Whether this is a live claim that `lease` holds: past its deadline
    /// too, until another request takes it over.
    fn is_held_by(&self, lease: &Lease, now: Timestamp) -> bool {
        self.expires_at > now
            && matches!(&self.status, Status::InFlight { lease: held, .. } if held == lease)
    }
}

/// `at + ttl`, or the end of time for a ttl too long to add.
fn later(at: Timestamp, ttl: Duration) -> Timestamp {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|ttl| at.checked_add_signed(ttl))
        .unwrap_or(Timestamp::MAX_UTC)
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let now = self.clock.now();
        let scope = (scope.clone(), key.clone());
        let mut state = self.lock();
        state.age(now);
        let retry = match state.entries.get(&scope) {
            None => false,
            Some(entry) if entry.fingerprint != fingerprint => return Ok(Claim::Mismatch),
            Some(entry) => match &entry.status {
                Status::InFlight { deadline, .. } if *deadline > now => {
                    return Ok(Claim::InFlight);
                }
                Status::Done(outcome) => return Ok(Claim::Done(outcome.clone())),
                // A failed attempt, or a claim past its deadline: taken over
                // under the lock, so of concurrent retries only the first
                // finds it; the others find its claim.
                Status::InFlight { .. } | Status::Failed => true,
            },
        };
        // A takeover replaces its entry, so only a new key needs room.
        if retry {
            state.remove(&scope);
        } else {
            state.make_room(&scope.0, terms.keys_per_customer, self.max_entries)?;
        }
        let lease = Lease::new(state.next_seq.to_string());
        let deadline = later(now, terms.in_flight);
        state.insert(
            scope,
            fingerprint.to_owned(),
            Status::InFlight {
                lease: lease.clone(),
                deadline,
            },
            later(deadline, terms.retention),
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
    //! paused clock; what is this store's own (its bound on all entries,
    //! and claims from many tasks at once) is tested here.

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

    domain::idempotency_conformance_tests! {
        #[tokio::test(start_paused = true)]
        |scenario| {
            let store = MemoryIdempotencyStore::default();
            scenario(&store, &setup()).await;
        }
        |scenario| {
            let store = MemoryIdempotencyStore::default();
            scenario(&store, &setup(), advance).await;
        }
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

    /// Claims in flight for 30 s, remembered a day, with no bound per
    /// customer that these tests reach.
    fn terms() -> ClaimTerms {
        ClaimTerms::new(IN_FLIGHT, RETENTION, usize::MAX)
    }

    async fn claim(
        store: &MemoryIdempotencyStore,
        who: &str,
        raw: &str,
    ) -> Result<Claim, StoreError> {
        store.claim(&customer(who), &key(raw), "p1", terms()).await
    }

    async fn acquire(store: &MemoryIdempotencyStore, who: &str, raw: &str) -> Lease {
        match claim(store, who, raw).await.unwrap() {
            Claim::Acquired(lease) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    /// Claims `raw` of `who` and completes it, kept `retention`.
    async fn keep(store: &MemoryIdempotencyStore, who: &str, raw: &str, retention: Duration) {
        let lease = acquire(store, who, raw).await;
        store
            .complete(&customer(who), &key(raw), &lease, &ok(raw), retention)
            .await
            .unwrap();
    }

    /// Checks that every index says what the entries say: their expiries,
    /// the claims in flight by deadline, each customer's count and entries
    /// that may be forgotten, and the customers by size.
    fn assert_consistent(store: &MemoryIdempotencyStore) {
        let state = store.lock();
        let mut by_expiry = BTreeMap::new();
        let mut by_deadline = BTreeMap::new();
        let mut customers: HashMap<CustomerId, (usize, BTreeMap<When, IdempotencyKey>)> =
            HashMap::new();
        for (scope, entry) in &state.entries {
            let when = (entry.expires_at, entry.seq);
            by_expiry.insert(when, scope.clone());
            if let (Status::InFlight { deadline, .. }, false) = (&entry.status, entry.forgettable) {
                by_deadline.insert((*deadline, entry.seq), scope.clone());
            }
            let held = customers.entry(scope.0.clone()).or_default();
            held.0 += 1;
            if entry.forgettable {
                held.1.insert(when, scope.1.clone());
            }
        }
        assert_eq!(state.by_expiry, by_expiry);
        assert_eq!(state.by_deadline, by_deadline);
        let kept: HashMap<_, _> = state
            .customers
            .iter()
            .map(|(customer, holdings)| {
                (
                    customer.clone(),
                    (holdings.held, holdings.forgettable.clone()),
                )
            })
            .collect();
        assert_eq!(kept, customers);
        let by_size: BTreeSet<_> = customers
            .iter()
            .filter(|(_, (_, forgettable))| !forgettable.is_empty())
            .map(|(customer, (held, _))| (*held, customer.clone()))
            .collect();
        assert_eq!(state.by_size, by_size);
    }

    #[tokio::test(start_paused = true)]
    async fn every_index_follows_the_entries_through_claims_outcomes_failures_and_takeovers() {
        let store = MemoryIdempotencyStore::default();
        let outcome = |lease: &Lease, who: &str, raw: &str| {
            let store = store.clone();
            let (lease, who, raw) = (lease.clone(), who.to_owned(), raw.to_owned());
            async move {
                store
                    .complete(&customer(&who), &key(&raw), &lease, &ok(&raw), RETENTION)
                    .await
            }
        };
        // Kept outcomes and a failed attempt, of two customers.
        keep(&store, "acme", "a", RETENTION).await;
        keep(&store, "initech", "b", IN_FLIGHT).await;
        fail(&store, "c", RETENTION).await;
        assert_consistent(&store);
        // A claim completed in flight, and one completed past its deadline,
        // once the store has made it one that may be forgotten.
        let in_time = acquire(&store, "acme", "d").await;
        let late = acquire(&store, "initech", "e").await;
        assert_consistent(&store);
        outcome(&in_time, "acme", "d").await.unwrap();
        advance(IN_FLIGHT + Duration::from_secs(1)).await;
        claim(&store, "umbrella", "f").await.unwrap();
        assert_consistent(&store);
        outcome(&late, "initech", "e").await.unwrap();
        assert_consistent(&store);
        // A failed attempt taken over by its retry, whose lease then
        // completes it; the old lease no longer can.
        let Claim::Retry(retry) = claim(&store, "acme", "c").await.unwrap() else {
            panic!("expected a retry of the failed attempt");
        };
        assert_consistent(&store);
        outcome(&retry, "acme", "c").await.unwrap();
        assert!(matches!(
            outcome(&retry, "acme", "c").await,
            Err(StoreError::ClaimLost)
        ));
        assert_consistent(&store);
        // Everything expires.
        advance(RETENTION + IN_FLIGHT).await;
        claim(&store, "acme", "g").await.unwrap();
        assert_consistent(&store);
        assert_eq!(store.len(), 1);
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
        let failed = claim(&store, "acme", "failed").await;
        assert!(
            matches!(failed, Err(StoreError::Failed { .. })),
            "the note was evicted to make room, and only claims are left: {failed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_dropped_before_anything_is_evicted() {
        let store = MemoryIdempotencyStore::new(2);
        keep(&store, "acme", "a", Duration::from_secs(10)).await;
        acquire(&store, "acme", "b").await;

        tokio::time::advance(Duration::from_secs(10)).await;
        acquire(&store, "acme", "c").await;
        assert_eq!(store.len(), 2);
        // "b" is still in flight: it was not the one that made room.
        assert_eq!(claim(&store, "acme", "b").await.unwrap(), Claim::InFlight);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_the_outcome_closest_to_expiry_and_never_a_claim() {
        let store = MemoryIdempotencyStore::new(3);
        keep(&store, "acme", "short", Duration::from_secs(10)).await;
        keep(&store, "acme", "long", Duration::from_secs(20)).await;
        acquire(&store, "acme", "running").await;

        acquire(&store, "acme", "new").await;
        assert_eq!(store.len(), 3);
        let short = claim(&store, "acme", "short").await;
        assert!(
            matches!(short.unwrap(), Claim::Acquired(_)),
            "short was evicted, so it is free"
        );
        // Claiming "short" again evicted "long", the last outcome left.
        let long = claim(&store, "acme", "long").await;
        assert!(
            matches!(long, Err(StoreError::Failed { .. })),
            "only claims in flight are left"
        );
        assert_eq!(
            claim(&store, "acme", "running").await.unwrap(),
            Claim::InFlight
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_takes_room_from_the_customer_holding_the_most() {
        let store = MemoryIdempotencyStore::new(4);
        // Globex's outcome is the closest to its expiry of all, but acme
        // holds the most.
        keep(&store, "globex", "theirs", Duration::from_secs(10)).await;
        for raw in ["a1", "a2", "a3"] {
            keep(&store, "acme", raw, Duration::from_secs(60)).await;
        }

        acquire(&store, "globex", "new").await;
        assert_eq!(store.len(), 4);
        assert_eq!(
            claim(&store, "globex", "theirs").await.unwrap(),
            Claim::Done(ok("theirs")),
            "the full store took room from acme, not from globex"
        );
        assert!(
            matches!(
                claim(&store, "acme", "a1").await.unwrap(),
                Claim::Acquired(_)
            ),
            "acme's outcome closest to its expiry was forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_passes_over_a_customer_holding_only_claims_in_flight() {
        let store = MemoryIdempotencyStore::new(3);
        keep(&store, "globex", "theirs", Duration::from_secs(10)).await;
        acquire(&store, "acme", "a1").await;
        acquire(&store, "acme", "a2").await;

        acquire(&store, "acme", "a3").await;
        for raw in ["a1", "a2", "a3"] {
            assert_eq!(claim(&store, "acme", raw).await.unwrap(), Claim::InFlight);
        }
        assert!(
            matches!(
                claim(&store, "globex", "theirs").await,
                Err(StoreError::Failed { .. })
            ),
            "globex's outcome, the only entry that could be forgotten, was, and only claims are left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_past_its_deadline_may_be_forgotten_by_a_full_store() {
        let store = MemoryIdempotencyStore::new(2);
        acquire(&store, "acme", "lost").await;
        acquire(&store, "acme", "running").await;
        assert!(matches!(
            claim(&store, "globex", "new").await,
            Err(StoreError::Failed { .. })
        ));

        advance(IN_FLIGHT).await;
        acquire(&store, "globex", "new").await;
        assert_eq!(store.len(), 2);
        assert!(
            matches!(
                claim(&store, "acme", "running").await.unwrap(),
                Claim::Retry(_)
            ),
            "the claim past its deadline not forgotten reads as a failed attempt"
        );
        assert!(
            matches!(
                claim(&store, "acme", "lost").await,
                Err(StoreError::Failed { .. })
            ),
            "the claim closest to its expiry was forgotten, and only claims in flight are left"
        );
    }

    /// Claims acme's key "k" `claims` times from as many tasks at once.
    async fn claim_at_once(store: &MemoryIdempotencyStore, claims: usize) -> Vec<Claim> {
        let tasks: Vec<_> = (0..claims)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { claim(&store, "acme", "k").await.unwrap() })
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

    #[tokio::test(start_paused = true)]
    async fn of_many_concurrent_claims_of_a_claim_past_its_deadline_exactly_one_retries() {
        let store = MemoryIdempotencyStore::default();
        acquire(&store, "acme", "k").await;
        advance(IN_FLIGHT).await;
        let claims = claim_at_once(&store, 200).await;
        kit::assert_exactly_one_took_the_key(claims, Attempt::Retry);
    }
}
