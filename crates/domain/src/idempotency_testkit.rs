//! A conformance suite for [`IdempotencyStore`]: the behaviour every store
//! must show, written once, run by each store's own tests.
//!
//! Each scenario is a `pub async fn` that drives a store through the port
//! and panics, saying what went wrong, when the store misbehaves. A store's
//! tests call one scenario per test, so a failure names the rule broken.
//! The scenarios that let time pass take a [`Wait`] (any async function of
//! a [`Duration`]), so that each store moves its own clock: a store on tokio's clock passes
//! `tokio::time::advance` under a paused clock, a store that keeps time
//! itself (a server) passes `tokio::time::sleep` and short lifetimes.
//!
//! Enable the `testkit` feature in the store crate's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! domain = { workspace = true, features = ["testkit"] }
//! ```
//!
//! and run the scenarios from its tests:
//!
//! ```text
//! use domain::idempotency_testkit::{self as kit, Setup};
//!
//! #[tokio::test(start_paused = true)]
//! async fn an_outcome_is_kept_for_its_retention_and_no_longer() {
//!     let store = MyStore::default();
//!     kit::an_outcome_is_kept_for_its_retention_and_no_longer(
//!         &store,
//!         &Setup::paused_clock(""),
//!         tokio::time::advance,
//!     )
//!     .await;
//! }
//! ```
//!
//! A store shared between tests (a server) should get a [`Setup`] with a
//! key prefix of its own per test, so that tests running at once never meet.
//! The concurrency of claims is not covered here, since it needs a runtime
//! to spawn on: [`assert_exactly_one_took_the_key`] judges the claims a
//! store's own concurrent test gathered.

use std::{future::Future, time::Duration};

use crate::{Attempt, Claim, CustomerId, IdempotencyKey, IdempotencyStore, Lease};

/// The fingerprint of the requests that claim keys in the scenarios.
const FINGERPRINT: &str = "p1";
/// The fingerprint of a request that reuses another request's key.
const OTHER_FINGERPRINT: &str = "p2";

/// The keys and lifetimes the scenarios use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Put before every key a scenario uses, so that scenarios sharing a
    /// store never touch each other's keys.
    pub key_prefix: String,
    /// A lifetime that outlasts every scenario: claims and outcomes that
    /// must not expire while a scenario runs are given it.
    pub long: Duration,
    /// The lifetime of the claim, outcome or failed attempt whose expiry a
    /// scenario tests.
    pub short: Duration,
    /// How far before [`Setup::short`] a scenario looks for the entry it
    /// expects still there, and how far after it for the entry it expects
    /// gone. With a real clock it must cover the store's round trips.
    pub margin: Duration,
}

impl Setup {
    /// Lifetimes for a store on a clock that the test moves by hand (such
    /// as tokio's, paused): a day, a minute, and a millisecond either side.
    pub fn paused_clock(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            long: Duration::from_secs(24 * 60 * 60),
            short: Duration::from_secs(60),
            margin: Duration::from_millis(1),
        }
    }

    /// Lifetimes for a store that keeps real time itself (such as a
    /// server), short enough to wait for: a minute, 300 ms, and 100 ms
    /// either side.
    pub fn real_clock(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            long: Duration::from_secs(60),
            short: Duration::from_millis(300),
            margin: Duration::from_millis(100),
        }
    }

    fn key(&self, name: &str) -> IdempotencyKey {
        let raw = format!("{}{name}", self.key_prefix);
        IdempotencyKey::parse(&raw)
            .unwrap_or_else(|_| panic!("the key prefix {:?} makes no valid key", self.key_prefix))
    }

    /// Just before the short lifetime ends.
    fn before_short(&self) -> Duration {
        self.short.saturating_sub(self.margin)
    }
}

/// Lets time pass for the store: the scenarios about expiry call it to
/// move past a lifetime.
///
/// Any `Fn(Duration) -> impl Future<Output = ()>` is one, such as
/// `tokio::time::advance` (for a store on tokio's clock, paused) or
/// `tokio::time::sleep` (for a store that keeps real time).
pub trait Wait {
    /// Returns once `period` has passed on the store's clock.
    fn wait(&self, period: Duration) -> impl Future<Output = ()>;
}

impl<W, F> Wait for W
where
    W: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    fn wait(&self, period: Duration) -> impl Future<Output = ()> {
        self(period)
    }
}

/// The customer most scenarios act for.
fn acme() -> CustomerId {
    customer("acme")
}

fn customer(name: &str) -> CustomerId {
    CustomerId::parse(name).unwrap_or_else(|_| panic!("{name:?} is a customer id"))
}

/// A record as a store keeps it: bytes it never reads.
fn outcome(body: &str) -> Vec<u8> {
    body.as_bytes().to_vec()
}

/// Claims `key` of acme with `fingerprint`, panicking if the store fails.
async fn claim(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    fingerprint: &str,
    in_flight: Duration,
) -> Claim {
    claim_for(store, &acme(), key, fingerprint, in_flight).await
}

async fn claim_for(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    fingerprint: &str,
    in_flight: Duration,
) -> Claim {
    store
        .claim(scope, key, fingerprint, in_flight)
        .await
        .unwrap_or_else(|err| panic!("claiming {key} of {scope:?} failed: {err}"))
}

/// Claims a key expected free, and returns the lease.
async fn acquire(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    in_flight: Duration,
    why: &str,
) -> Lease {
    match claim_for(store, scope, key, FINGERPRINT, in_flight).await {
        Claim::Acquired(lease) => lease,
        other => panic!("{why}: expected the claim of {key} to be acquired, got {other:?}"),
    }
}

/// Claims a key expected to hold a failed attempt, and returns the lease.
async fn retry(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    in_flight: Duration,
    why: &str,
) -> Lease {
    match claim(store, key, FINGERPRINT, in_flight).await {
        Claim::Retry(lease) => lease,
        other => panic!("{why}: expected the claim of {key} to be a retry, got {other:?}"),
    }
}

async fn expect_claim(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    fingerprint: &str,
    in_flight: Duration,
    expected: &Claim,
    why: &str,
) {
    let got = claim(store, key, fingerprint, in_flight).await;
    assert_eq!(&got, expected, "{why}: the claim of {key}");
}

async fn complete(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    body: &str,
    retention: Duration,
) {
    store
        .complete(&acme(), key, lease, &outcome(body), retention)
        .await
        .unwrap_or_else(|err| panic!("completing the claim of {key} failed: {err}"));
}

async fn release(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    retention: Duration,
) {
    store
        .release(&acme(), key, lease, retention)
        .await
        .unwrap_or_else(|err| panic!("releasing the claim of {key} failed: {err}"));
}

async fn expect_complete_lost(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    retention: Duration,
    why: &str,
) {
    let late = store
        .complete(&acme(), key, lease, &outcome("late"), retention)
        .await;
    assert!(
        matches!(late, Err(crate::StoreError::ClaimLost)),
        "{why}: expected completing {key} to be ClaimLost, got {late:?}"
    );
}

async fn expect_release_lost(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    retention: Duration,
    why: &str,
) {
    let late = store.release(&acme(), key, lease, retention).await;
    assert!(
        matches!(late, Err(crate::StoreError::ClaimLost)),
        "{why}: expected releasing {key} to be ClaimLost, got {late:?}"
    );
}

/// Leaves the note of a failed attempt on `key` of acme, kept `retention`:
/// claims it and releases the claim, as after an answer that invites a
/// retry.
async fn fail(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    in_flight: Duration,
    retention: Duration,
) {
    let lease = acquire(store, &acme(), key, in_flight, "a free key").await;
    release(store, key, &lease, retention).await;
}

/// Claims `key` of acme afresh, checks that a claim with `fingerprint`
/// gets the first answer while the key is claimed and the second once it
/// is completed.
async fn answers_in_flight_then_done(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    key: &IdempotencyKey,
    fingerprint: &str,
    [in_flight, done]: [Claim; 2],
) {
    let lease = acquire(store, &acme(), key, setup.long, "a free key").await;
    let why = format!("fingerprint {fingerprint} while the key is in flight");
    expect_claim(store, key, fingerprint, setup.long, &in_flight, &why).await;

    complete(store, key, &lease, "first", setup.long).await;
    let why = format!("fingerprint {fingerprint} once the key is done");
    expect_claim(store, key, fingerprint, setup.long, &done, &why).await;
}

/// Checks that a claim of `key` with the given fingerprint still gets the
/// given answer just before the short lifetime of `what` ends, then lets it
/// end and claims the key, which must be free again, as a first attempt.
async fn lasts_the_short_lifetime(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: &impl Wait,
    key: &IdempotencyKey,
    (fingerprint, before): (&str, &Claim),
    what: &str,
) -> Lease {
    wait.wait(setup.before_short()).await;
    let why = format!("{what}, just before its lifetime ends");
    expect_claim(store, key, fingerprint, setup.long, before, &why).await;

    wait.wait(setup.margin * 2).await;
    let why = format!("{what}, just after its lifetime ended");
    acquire(store, &acme(), key, setup.long, &why).await
}

/// A claimed key is in flight for a repeat of the request, then, once
/// completed, done with the outcome it was completed with.
pub async fn a_claimed_key_is_in_flight_then_done_with_its_outcome(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("claimed");
    let answers = [Claim::InFlight, Claim::Done(outcome("first"))];
    answers_in_flight_then_done(store, setup, &key, FINGERPRINT, answers).await;
}

/// A claim with another fingerprint is a mismatch, both while the key is in
/// flight and once it is done.
pub async fn another_fingerprint_is_a_mismatch_in_flight_and_done(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("reused");
    let answers = [Claim::Mismatch, Claim::Mismatch];
    answers_in_flight_then_done(store, setup, &key, OTHER_FINGERPRINT, answers).await;
}

/// Two customers' equal keys are distinct: each claims its own, and one's
/// outcome is not the other's.
pub async fn keys_are_scoped_to_their_customer(store: &dyn IdempotencyStore, setup: &Setup) {
    let key = setup.key("shared");
    let why = "the key is acme's, not globex's";
    let lease = acquire(store, &acme(), &key, setup.long, "a free key").await;
    acquire(store, &customer("globex"), &key, setup.long, why).await;

    complete(store, &key, &lease, "acme's", setup.long).await;
    let globex = claim_for(store, &customer("globex"), &key, FINGERPRINT, setup.long).await;
    assert_eq!(globex, Claim::InFlight, "{why}: globex's claim of {key}");
}

/// A released claim lets the next claim with its fingerprint retry at once;
/// the released lease then no longer acts, and the retry's does.
pub async fn a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("released");
    let first = acquire(store, &acme(), &key, setup.long, "a free key").await;
    release(store, &key, &first, setup.long).await;

    let retry = retry(store, &key, setup.long, "the claim after a release").await;
    assert_ne!(retry, first, "the retry got the released claim's lease");
    let why = "a repeat while the retry runs";
    expect_claim(store, &key, FINGERPRINT, setup.long, &Claim::InFlight, why).await;

    let why = "the released lease after the retry claimed the key";
    expect_complete_lost(store, &key, &first, setup.long, why).await;
    complete(store, &key, &retry, "retry", setup.long).await;
    let done = Claim::Done(outcome("retry"));
    let why = "a repeat after the retry completed";
    expect_claim(store, &key, FINGERPRINT, setup.long, &done, why).await;
}

/// A failed attempt refuses a claim with another fingerprint, and stays for
/// the next claim with its own, which is a retry.
pub async fn a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("failed");
    fail(store, &key, setup.long, setup.long).await;

    let why = "another fingerprint after a failed attempt";
    expect_claim(
        store,
        &key,
        OTHER_FINGERPRINT,
        setup.long,
        &Claim::Mismatch,
        why,
    )
    .await;
    let why = "the failed attempt's fingerprint after another was refused";
    retry(store, &key, setup.long, why).await;
}

/// A failed attempt is noted for the retention given at release, and no
/// longer: then the key is free again, as a first attempt. A claim with
/// another fingerprint reads the note without using it up.
pub async fn a_failed_attempt_is_noted_for_the_retention_and_no_longer(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("noted");
    fail(store, &key, setup.long, setup.short).await;
    let before = (OTHER_FINGERPRINT, &Claim::Mismatch);
    let what = "another fingerprint against the failed attempt's note";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, what).await;
}

/// A retry holds the key for the expiry of its own claim, not for the
/// retention of the failed attempt it took over.
pub async fn a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("retried");
    fail(store, &key, setup.long, setup.long).await;
    retry(store, &key, setup.short, "the claim after a failed attempt").await;
    let before = (FINGERPRINT, &Claim::InFlight);
    let what = "a repeat against the retry's claim (which took the note's place)";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, what).await;
}

/// A release by a lease that no longer holds its claim (expired, completed,
/// or released already) is refused and writes nothing.
pub async fn a_release_by_a_lost_lease_writes_nothing(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("lost");
    let expired = acquire(store, &acme(), &key, setup.short, "a free key").await;
    wait.wait(setup.short + setup.margin).await;
    let why = "a release after the claim expired";
    expect_release_lost(store, &key, &expired, setup.long, why).await;
    let why = "no failed attempt was noted by the late release";
    let done = acquire(store, &acme(), &key, setup.long, why).await;

    complete(store, &key, &done, "done", setup.long).await;
    let why = "a release after the claim was completed";
    expect_release_lost(store, &key, &done, setup.long, why).await;
    let why = "the outcome after a late release";
    let outcome = Claim::Done(outcome("done"));
    expect_claim(store, &key, FINGERPRINT, setup.long, &outcome, why).await;

    let other = setup.key("released-twice");
    let lease = acquire(store, &acme(), &other, setup.long, "a free key").await;
    release(store, &other, &lease, setup.long).await;
    let why = "a second release of the same claim";
    expect_release_lost(store, &other, &lease, setup.long, why).await;
}

/// An outcome is kept for the retention given at completion, and no
/// longer: then the key is free again.
pub async fn an_outcome_is_kept_for_its_retention_and_no_longer(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("kept");
    let lease = acquire(store, &acme(), &key, setup.long, "a free key").await;
    complete(store, &key, &lease, "first", setup.short).await;
    let before = (FINGERPRINT, &Claim::Done(outcome("first")));
    let what = "a repeat against the kept outcome";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, what).await;
}

/// A claim expires, so a request lost with its process never locks its key:
/// the next request claims the key afresh, and the lost request finishing
/// late neither overwrites nor drops that claim.
pub async fn a_claim_expires_so_a_lost_request_never_locks_its_key(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("expiring");
    let lost = acquire(store, &acme(), &key, setup.short, "a free key").await;
    let before = (FINGERPRINT, &Claim::InFlight);
    let what = "a repeat against the lost request's claim";
    let next = lasts_the_short_lifetime(store, setup, &wait, &key, before, what).await;
    assert_ne!(next, lost, "the next request got the lost request's lease");

    let why = "the lost request finishing after the next one claimed the key";
    expect_complete_lost(store, &key, &lost, setup.long, why).await;
    expect_release_lost(store, &key, &lost, setup.long, why).await;
    let why = "a repeat after the lost request's late answer";
    expect_claim(store, &key, FINGERPRINT, setup.long, &Claim::InFlight, why).await;

    complete(store, &key, &next, "next", setup.long).await;
    let done = Claim::Done(outcome("next"));
    let why = "a repeat after the next request completed";
    expect_claim(store, &key, FINGERPRINT, setup.long, &done, why).await;
}

/// Judges the answers to many concurrent claims of one key with one
/// fingerprint: exactly one took the key, as a first attempt
/// ([`Claim::Acquired`]) or as a retry of a failed one ([`Claim::Retry`])
/// as `expected` says, and every other found it in flight.
///
/// # Panics
/// When none or several took the key, or any answer was something else.
pub fn assert_exactly_one_took_the_key(claims: impl IntoIterator<Item = Claim>, expected: Attempt) {
    let mut took = 0;
    for claim in claims {
        match (&claim, expected) {
            (Claim::Acquired(_), Attempt::First) | (Claim::Retry(_), Attempt::Retry) => took += 1,
            (Claim::InFlight, _) => {}
            _ => panic!("a concurrent claim got {claim:?}; expected {expected:?} or InFlight"),
        }
    }
    assert_eq!(
        took, 1,
        "of the concurrent claims, {took} took the key as {expected:?}, not exactly one"
    );
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use async_trait::async_trait;

    use super::*;
    use crate::StoreError;

    /// A plain store on a clock moved by hand, to show that the scenarios
    /// pass for a store that keeps the rules, and fail for one that breaks
    /// them as `flaw` says.
    #[derive(Default)]
    struct Reference {
        state: Mutex<State>,
        flaw: Option<Flaw>,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Flaw {
        NeverExpires,
        IgnoresTheCustomer,
    }

    #[derive(Default)]
    struct State {
        now: Duration,
        next: u64,
        entries: HashMap<(String, String), Entry>,
    }

    struct Entry {
        fingerprint: String,
        kind: Kind,
        expires_at: Duration,
    }

    enum Kind {
        Claimed(Lease),
        Done(Vec<u8>),
        Failed,
    }

    impl Reference {
        fn with(flaw: Flaw) -> Arc<Self> {
            Arc::new(Self {
                flaw: Some(flaw),
                ..Self::default()
            })
        }

        fn wait(self: &Arc<Self>) -> impl Fn(Duration) -> std::future::Ready<()> {
            let store = self.clone();
            move |elapsed| {
                store.state.lock().unwrap().now += elapsed;
                std::future::ready(())
            }
        }

        fn scope(&self, customer: &CustomerId, key: &IdempotencyKey) -> (String, String) {
            let customer = if self.flaw == Some(Flaw::IgnoresTheCustomer) {
                String::new()
            } else {
                customer.as_str().to_owned()
            };
            (customer, key.as_str().to_owned())
        }

        fn live(&self, state: &State, scope: &(String, String)) -> bool {
            state.entries.get(scope).is_some_and(|entry| {
                self.flaw == Some(Flaw::NeverExpires) || entry.expires_at > state.now
            })
        }

        /// Puts `kind` in the place of the live claim that `lease` holds.
        fn replace_claim(
            &self,
            scope: (String, String),
            lease: &Lease,
            kind: Kind,
            ttl: Duration,
        ) -> Result<(), StoreError> {
            let mut state = self.state.lock().unwrap();
            let live = self.live(&state, &scope);
            let now = state.now;
            match state.entries.get_mut(&scope) {
                Some(entry)
                    if live && matches!(&entry.kind, Kind::Claimed(held) if held == lease) =>
                {
                    entry.kind = kind;
                    entry.expires_at = now + ttl;
                    Ok(())
                }
                _ => Err(StoreError::ClaimLost),
            }
        }
    }

    #[async_trait]
    impl IdempotencyStore for Reference {
        async fn claim(
            &self,
            scope: &CustomerId,
            key: &IdempotencyKey,
            fingerprint: &str,
            in_flight: Duration,
        ) -> Result<Claim, StoreError> {
            let scope = self.scope(scope, key);
            let mut state = self.state.lock().unwrap();
            let mut retry = false;
            if self.live(&state, &scope) {
                let entry = &state.entries[&scope];
                if entry.fingerprint != fingerprint {
                    return Ok(Claim::Mismatch);
                }
                match &entry.kind {
                    Kind::Claimed(_) => return Ok(Claim::InFlight),
                    Kind::Done(outcome) => return Ok(Claim::Done(outcome.clone())),
                    Kind::Failed => retry = true,
                }
            }
            state.next += 1;
            let lease = Lease::new(state.next.to_string());
            let entry = Entry {
                fingerprint: fingerprint.to_owned(),
                kind: Kind::Claimed(lease.clone()),
                expires_at: state.now + in_flight,
            };
            state.entries.insert(scope, entry);
            let taken = if retry { Claim::Retry } else { Claim::Acquired };
            Ok(taken(lease))
        }

        async fn complete(
            &self,
            scope: &CustomerId,
            key: &IdempotencyKey,
            lease: &Lease,
            outcome: &[u8],
            retention: Duration,
        ) -> Result<(), StoreError> {
            let done = Kind::Done(outcome.to_vec());
            self.replace_claim(self.scope(scope, key), lease, done, retention)
        }

        async fn release(
            &self,
            scope: &CustomerId,
            key: &IdempotencyKey,
            lease: &Lease,
            retention: Duration,
        ) -> Result<(), StoreError> {
            self.replace_claim(self.scope(scope, key), lease, Kind::Failed, retention)
        }
    }

    #[tokio::test]
    async fn a_store_that_keeps_the_rules_passes_every_scenario() {
        for setup in [Setup::paused_clock(""), Setup::real_clock("test:")] {
            let store = Arc::new(Reference::default());
            let wait = store.wait();
            let store = store.as_ref();
            a_claimed_key_is_in_flight_then_done_with_its_outcome(store, &setup).await;
            another_fingerprint_is_a_mismatch_in_flight_and_done(store, &setup).await;
            keys_are_scoped_to_their_customer(store, &setup).await;
            a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once(store, &setup)
                .await;
            a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own(store, &setup).await;
            a_failed_attempt_is_noted_for_the_retention_and_no_longer(store, &setup, &wait).await;
            a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention(store, &setup, &wait)
                .await;
            a_release_by_a_lost_lease_writes_nothing(store, &setup, &wait).await;
            an_outcome_is_kept_for_its_retention_and_no_longer(store, &setup, &wait).await;
            a_claim_expires_so_a_lost_request_never_locks_its_key(store, &setup, &wait).await;
        }
    }

    #[tokio::test]
    #[should_panic(expected = "the kept outcome, just after its lifetime ended")]
    async fn a_store_that_keeps_outcomes_for_good_fails_the_retention_scenario() {
        let store = Reference::with(Flaw::NeverExpires);
        let wait = store.wait();
        an_outcome_is_kept_for_its_retention_and_no_longer(&*store, &Setup::paused_clock(""), wait)
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "the lost request's claim, just after its lifetime ended")]
    async fn a_store_whose_claims_never_expire_fails_the_lost_request_scenario() {
        let store = Reference::with(Flaw::NeverExpires);
        let wait = store.wait();
        a_claim_expires_so_a_lost_request_never_locks_its_key(
            &*store,
            &Setup::paused_clock(""),
            wait,
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "the key is acme's, not globex's")]
    async fn a_store_that_ignores_the_customer_fails_the_scoping_scenario() {
        let store = Reference::with(Flaw::IgnoresTheCustomer);
        keys_are_scoped_to_their_customer(&*store, &Setup::paused_clock("")).await;
    }

    #[test]
    fn exactly_one_acquired_claim_among_claims_in_flight_passes() {
        let claims = [
            Claim::InFlight,
            Claim::Acquired(Lease::new("1")),
            Claim::InFlight,
        ];
        assert_exactly_one_took_the_key(claims, Attempt::First);
    }

    #[test]
    #[should_panic(expected = "2 took the key as Retry")]
    fn two_retries_of_one_failed_attempt_fail() {
        let claims = [Claim::Retry(Lease::new("1")), Claim::Retry(Lease::new("2"))];
        assert_exactly_one_took_the_key(claims, Attempt::Retry);
    }

    #[test]
    #[should_panic(expected = "expected First or InFlight")]
    fn a_retry_where_a_first_attempt_was_expected_fails() {
        assert_exactly_one_took_the_key([Claim::Retry(Lease::new("1"))], Attempt::First);
    }
}
