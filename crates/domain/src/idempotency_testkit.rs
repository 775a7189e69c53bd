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
//! and run the scenarios from its tests, one test each, with
//! [`idempotency_conformance_tests!`](crate::idempotency_conformance_tests):
//!
//! ```text
//! use domain::idempotency_testkit::Setup;
//!
//! domain::idempotency_conformance_tests! {
//!     #[tokio::test(start_paused = true)]
//!     |scenario| {
//!         let store = MyStore::default();
//!         scenario(&store, &Setup::paused_clock("")).await;
//!     }
//!     |scenario| {
//!         let store = MyStore::default();
//!         scenario(&store, &Setup::paused_clock(""), tokio::time::advance).await;
//!     }
//! }
//! ```
//!
//! A store shared between tests (a server) should get a [`Setup`] with a
//! key prefix of its own per test, so that tests running at once never meet.
//! The scenarios about the bound on a customer's keys count every key of
//! their customers (`initech` and `umbrella`, which no other scenario
//! uses): run each on a store of its own, or, on a server, with a key
//! prefix of its own that also sets apart what the store counts.
//! The concurrency of claims is not covered here, since it needs a runtime
//! to spawn on: [`assert_exactly_one_took_the_key`] judges the claims a
//! store's own concurrent test gathered.

use std::{future::Future, time::Duration};

use crate::{
    Attempt, Claim, ClaimTerms, CustomerId, IdempotencyConfig, IdempotencyKey, IdempotencyStore,
    Lease, StoreError,
};

/// The fingerprint of the requests that claim keys in the scenarios.
const FINGERPRINT: &str = "p1";
/// The fingerprint of a request that reuses another request's key.
const OTHER_FINGERPRINT: &str = "p2";
/// The bound on a customer's live keys in the scenarios about it.
const BOUND: usize = 3;

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
    /// scenario tests, and the time a claim is in flight when a scenario
    /// lets its deadline pass. More than twice [`Setup::margin`].
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

    /// Just after the short lifetime ended.
    fn after_short(&self) -> Duration {
        self.short + self.margin
    }

    /// A claim that stays in flight, and is then remembered, for the whole
    /// scenario, with a bound that no scenario reaches.
    fn held(&self) -> ClaimTerms {
        self.terms(self.long, self.long)
    }

    /// A claim whose deadline a scenario lets pass, remembered long after.
    fn due(&self) -> ClaimTerms {
        self.terms(self.short, self.long)
    }

    fn terms(&self, in_flight: Duration, retention: Duration) -> ClaimTerms {
        ClaimTerms::new(
            in_flight,
            retention,
            IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER,
        )
    }

    /// `terms` with the bound of the scenarios about it.
    fn bounded(terms: ClaimTerms) -> ClaimTerms {
        ClaimTerms::new(terms.in_flight, terms.retention, BOUND)
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

/// The customer that sends more keys than its bound in the scenarios about
/// it.
fn initech() -> CustomerId {
    customer("initech")
}

/// Its neighbour, whose keys must not suffer for it.
fn umbrella() -> CustomerId {
    customer("umbrella")
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
    terms: ClaimTerms,
) -> Claim {
    claim_for(store, &acme(), key, fingerprint, terms).await
}

async fn claim_for(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    fingerprint: &str,
    terms: ClaimTerms,
) -> Claim {
    store
        .claim(scope, key, fingerprint, terms)
        .await
        .unwrap_or_else(|err| panic!("claiming {key} of {scope:?} failed: {err}"))
}

/// Claims a key of `scope` expected to be taken as `attempt` (free, as a
/// first attempt; holding a failed attempt, as a retry), and returns the
/// lease.
async fn take(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    (terms, attempt): (ClaimTerms, Attempt),
    why: &str,
) -> Lease {
    match (
        attempt,
        claim_for(store, scope, key, FINGERPRINT, terms).await,
    ) {
        (Attempt::First, Claim::Acquired(lease)) | (Attempt::Retry, Claim::Retry(lease)) => lease,
        (Attempt::First, other) => {
            panic!("{why}: expected the claim of {key} to be acquired, got {other:?}")
        }
        (Attempt::Retry, other) => {
            panic!("{why}: expected the claim of {key} to be a retry, got {other:?}")
        }
    }
}

/// Claims a key expected free, and returns the lease.
async fn acquire(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    terms: ClaimTerms,
    why: &str,
) -> Lease {
    take(store, scope, key, (terms, Attempt::First), why).await
}

/// Claims a key of acme expected to hold a failed attempt, and returns the
/// lease.
async fn retry(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    terms: ClaimTerms,
    why: &str,
) -> Lease {
    take(store, &acme(), key, (terms, Attempt::Retry), why).await
}

async fn expect_claim_for(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    fingerprint: &str,
    expected: &Claim,
    why: &str,
) {
    let got = claim_for(store, scope, key, fingerprint, Setup::bounded(held())).await;
    assert_eq!(&got, expected, "{why}: the claim of {key} of {scope:?}");
}

async fn expect_claim(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    fingerprint: &str,
    terms: ClaimTerms,
    expected: &Claim,
    why: &str,
) {
    let got = claim(store, key, fingerprint, terms).await;
    assert_eq!(&got, expected, "{why}: the claim of {key}");
}

/// Claims that a key of `scope` is refused because the customer is at its
/// bound with nothing but claims in flight.
async fn expect_refused(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    terms: ClaimTerms,
    why: &str,
) {
    let got = store.claim(scope, key, FINGERPRINT, terms).await;
    assert!(
        matches!(got, Err(StoreError::Failed { .. })),
        "{why}: expected the claim of {key} of {scope:?} to fail, got {got:?}"
    );
}

/// Terms that outlast every scenario, for the claims that only read what
/// a key holds.
fn held() -> ClaimTerms {
    let day = Duration::from_secs(24 * 60 * 60);
    ClaimTerms::new(day, day, IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER)
}

async fn complete_for(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    lease: &Lease,
    body: &str,
    retention: Duration,
) {
    store
        .complete(scope, key, lease, &outcome(body), retention)
        .await
        .unwrap_or_else(|err| panic!("completing the claim of {key} failed: {err}"));
}

async fn complete(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    body: &str,
    retention: Duration,
) {
    complete_for(store, &acme(), key, lease, body, retention).await;
}

async fn release_for(
    store: &dyn IdempotencyStore,
    scope: &CustomerId,
    key: &IdempotencyKey,
    lease: &Lease,
    retention: Duration,
) {
    store
        .release(scope, key, lease, retention)
        .await
        .unwrap_or_else(|err| panic!("releasing the claim of {key} failed: {err}"));
}

async fn release(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    lease: &Lease,
    retention: Duration,
) {
    release_for(store, &acme(), key, lease, retention).await;
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
        matches!(late, Err(StoreError::ClaimLost)),
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
        matches!(late, Err(StoreError::ClaimLost)),
        "{why}: expected releasing {key} to be ClaimLost, got {late:?}"
    );
}

/// Leaves the note of a failed attempt on `key` of acme, kept `retention`:
/// claims it and releases the claim, as after an answer that invites a
/// retry.
async fn fail(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    terms: ClaimTerms,
    retention: Duration,
) {
    let lease = acquire(store, &acme(), key, terms, "a free key").await;
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
    let lease = acquire(store, &acme(), key, setup.held(), "a free key").await;
    let why = format!("fingerprint {fingerprint} while the key is in flight");
    expect_claim(store, key, fingerprint, setup.held(), &in_flight, &why).await;

    complete(store, key, &lease, "first", setup.long).await;
    let why = format!("fingerprint {fingerprint} once the key is done");
    expect_claim(store, key, fingerprint, setup.held(), &done, &why).await;
}

/// Checks that a claim of `key` with the given fingerprint still gets the
/// given answer just before the short lifetime of `what` ends, then lets it
/// end and claims the key, which must then be taken as `then` says: free
/// again, as a first attempt, or a failed attempt, as a retry.
async fn lasts_the_short_lifetime(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: &impl Wait,
    key: &IdempotencyKey,
    (fingerprint, before): (&str, &Claim),
    (what, then): (&str, Attempt),
) -> Lease {
    wait.wait(setup.before_short()).await;
    let why = format!("{what}, just before its lifetime ends");
    expect_claim(store, key, fingerprint, setup.held(), before, &why).await;

    wait.wait(setup.margin * 2).await;
    let why = format!("{what}, just after its lifetime ended");
    take(store, &acme(), key, (setup.held(), then), &why).await
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
    let lease = acquire(store, &acme(), &key, setup.held(), "a free key").await;
    acquire(store, &customer("globex"), &key, setup.held(), why).await;

    complete(store, &key, &lease, "acme's", setup.long).await;
    let globex = claim_for(store, &customer("globex"), &key, FINGERPRINT, setup.held()).await;
    assert_eq!(globex, Claim::InFlight, "{why}: globex's claim of {key}");
}

/// A released claim lets the next claim with its fingerprint retry at once;
/// the released lease then no longer acts, and the retry's does.
pub async fn a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("released");
    let first = acquire(store, &acme(), &key, setup.held(), "a free key").await;
    release(store, &key, &first, setup.long).await;

    let retry = retry(store, &key, setup.held(), "the claim after a release").await;
    assert_ne!(retry, first, "the retry got the released claim's lease");
    let why = "a repeat while the retry runs";
    let in_flight = Claim::InFlight;
    expect_claim(store, &key, FINGERPRINT, setup.held(), &in_flight, why).await;

    let why = "the released lease after the retry claimed the key";
    expect_complete_lost(store, &key, &first, setup.long, why).await;
    complete(store, &key, &retry, "retry", setup.long).await;
    let done = Claim::Done(outcome("retry"));
    let why = "a repeat after the retry completed";
    expect_claim(store, &key, FINGERPRINT, setup.held(), &done, why).await;
}

/// A failed attempt refuses a claim with another fingerprint, and stays for
/// the next claim with its own, which is a retry.
pub async fn a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let key = setup.key("failed");
    fail(store, &key, setup.held(), setup.long).await;

    let why = "another fingerprint after a failed attempt";
    let mismatch = Claim::Mismatch;
    expect_claim(store, &key, OTHER_FINGERPRINT, setup.held(), &mismatch, why).await;
    let why = "the failed attempt's fingerprint after another was refused";
    retry(store, &key, setup.held(), why).await;
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
    fail(store, &key, setup.held(), setup.short).await;
    let before = (OTHER_FINGERPRINT, &Claim::Mismatch);
    let what = "another fingerprint against the failed attempt's note";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, (what, Attempt::First)).await;
}

/// A retry is in flight until its own claim's deadline, not for the
/// retention of the failed attempt it took over; past that deadline, it is
/// a failed attempt in turn, and the next claim retries again.
pub async fn a_retry_is_in_flight_until_its_own_deadline_not_the_retention(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("retried");
    fail(store, &key, setup.held(), setup.long).await;
    retry(store, &key, setup.due(), "the claim after a failed attempt").await;
    let before = (FINGERPRINT, &Claim::InFlight);
    let what = "a repeat against the retry's claim (which took the note's place)";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, (what, Attempt::Retry)).await;
}

/// A release by a lease that no longer holds its claim (forgotten, taken
/// over, completed, or released already) is refused and writes nothing.
pub async fn a_release_by_a_lost_lease_writes_nothing(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("lost");
    let terms = setup.terms(setup.short, setup.short);
    let forgotten = acquire(store, &acme(), &key, terms, "a free key").await;
    wait.wait(setup.short * 2 + setup.margin).await;
    let why = "a release after the claim was forgotten (past its deadline and its retention)";
    expect_release_lost(store, &key, &forgotten, setup.long, why).await;
    let why = "no failed attempt was noted by the late release";
    let done = acquire(store, &acme(), &key, setup.held(), why).await;

    complete(store, &key, &done, "done", setup.long).await;
    let why = "a release after the claim was completed";
    expect_release_lost(store, &key, &done, setup.long, why).await;
    let why = "the outcome after a late release";
    let outcome = Claim::Done(outcome("done"));
    expect_claim(store, &key, FINGERPRINT, setup.held(), &outcome, why).await;

    let other = setup.key("released-twice");
    let lease = acquire(store, &acme(), &other, setup.held(), "a free key").await;
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
    let lease = acquire(store, &acme(), &key, setup.held(), "a free key").await;
    complete(store, &key, &lease, "first", setup.short).await;
    let before = (FINGERPRINT, &Claim::Done(outcome("first")));
    let what = "a repeat against the kept outcome";
    lasts_the_short_lifetime(store, setup, &wait, &key, before, (what, Attempt::First)).await;
}

/// A claim past its deadline reads as a failed attempt, so a request lost
/// with its process never locks its key, and the next request is told to
/// look for what the lost one may have done: the next claim with the same
/// fingerprint is a retry, one with another fingerprint a mismatch. The
/// lost request finishing late then neither overwrites nor drops the
/// retry's claim.
pub async fn a_claim_past_its_deadline_is_taken_over_as_a_retry(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("lost");
    let lost = acquire(store, &acme(), &key, setup.due(), "a free key").await;
    wait.wait(setup.before_short()).await;
    let why = "a repeat against the lost request's claim, before its deadline";
    let in_flight = Claim::InFlight;
    expect_claim(store, &key, FINGERPRINT, setup.held(), &in_flight, why).await;

    wait.wait(setup.margin * 2).await;
    let why = "another fingerprint against the lost request's claim, past its deadline";
    let mismatch = Claim::Mismatch;
    expect_claim(store, &key, OTHER_FINGERPRINT, setup.held(), &mismatch, why).await;
    let why = "the lost request's claim, past its deadline";
    let next = retry(store, &key, setup.held(), why).await;
    assert_ne!(next, lost, "the next request got the lost request's lease");

    let why = "the lost request finishing after the next one took the key over";
    expect_complete_lost(store, &key, &lost, setup.long, why).await;
    expect_release_lost(store, &key, &lost, setup.long, why).await;
    let why = "a repeat after the lost request's late answer";
    let in_flight = Claim::InFlight;
    expect_claim(store, &key, FINGERPRINT, setup.held(), &in_flight, why).await;

    complete(store, &key, &next, "next", setup.long).await;
    let done = Claim::Done(outcome("next"));
    let why = "a repeat after the next request completed";
    expect_claim(store, &key, FINGERPRINT, setup.held(), &done, why).await;
}

/// A claim past its deadline is remembered as a failed attempt for the
/// retention it was claimed with, counted from the deadline, and no longer:
/// then the key is free again, as a first attempt.
pub async fn a_claim_past_its_deadline_is_remembered_for_the_retention_and_no_longer(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let key = setup.key("abandoned");
    let terms = setup.terms(setup.short, setup.short);
    acquire(store, &acme(), &key, terms, "a free key").await;
    wait.wait(setup.after_short()).await;
    let why = "another fingerprint against the claim, just past its deadline";
    let mismatch = Claim::Mismatch;
    expect_claim(store, &key, OTHER_FINGERPRINT, setup.held(), &mismatch, why).await;

    wait.wait(setup.short - setup.margin * 2).await;
    let why = "another fingerprint against the claim, just before its retention ends";
    expect_claim(store, &key, OTHER_FINGERPRINT, setup.held(), &mismatch, why).await;

    wait.wait(setup.margin * 2).await;
    let why = "the claim, just after its retention ended";
    acquire(store, &acme(), &key, setup.held(), why).await;
}

/// A request that outlives its claim's deadline still records its outcome,
/// or notes its failure, as long as no other request took its key over.
pub async fn a_request_past_its_deadline_still_records_until_its_key_is_taken_over(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let (slow, failing) = (setup.key("slow"), setup.key("slow-failing"));
    let slow_lease = acquire(store, &acme(), &slow, setup.due(), "a free key").await;
    let failing_lease = acquire(store, &acme(), &failing, setup.due(), "a free key").await;
    wait.wait(setup.after_short()).await;

    complete(store, &slow, &slow_lease, "slow", setup.long).await;
    let done = Claim::Done(outcome("slow"));
    let why = "a repeat after a request past its deadline completed";
    expect_claim(store, &slow, FINGERPRINT, setup.held(), &done, why).await;

    release(store, &failing, &failing_lease, setup.long).await;
    let why = "a repeat after a request past its deadline released its claim";
    retry(store, &failing, setup.held(), why).await;
}

/// A customer at its bound makes room for a new key by forgetting its own
/// kept outcome or failed attempt closest to its expiry, and never a claim
/// in flight; with nothing but claims in flight, the new key is refused.
pub async fn a_customer_at_its_bound_forgets_its_own_entry_closest_to_expiry_never_a_claim(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let bounded = Setup::bounded(setup.held());
    let [kept, failed, running, new] =
        ["kept", "failed", "running", "new"].map(|name| setup.key(name));
    let lease = acquire(store, &initech(), &kept, bounded, "a free key").await;
    complete_for(store, &initech(), &kept, &lease, "kept", setup.long).await;
    // The failed attempt is the closer to its expiry.
    let lease = acquire(store, &initech(), &failed, bounded, "a free key").await;
    release_for(store, &initech(), &failed, &lease, setup.short).await;
    acquire(store, &initech(), &running, bounded, "a free key").await;

    let why = "a new key at the bound, forgetting the failed attempt";
    acquire(store, &initech(), &new, bounded, why).await;
    let why = "the forgotten failed attempt's key, free, forgetting the kept outcome";
    acquire(store, &initech(), &failed, bounded, why).await;
    let why = "a claim in flight, never forgotten";
    let in_flight = Claim::InFlight;
    expect_claim_for(store, &initech(), &running, FINGERPRINT, &in_flight, why).await;
    let why = "the forgotten outcome's key, with nothing but claims in flight left";
    expect_refused(store, &initech(), &kept, bounded, why).await;
}

/// One customer sending many more keys than its bound pushes out only its
/// own entries: its neighbour's kept outcome is still given, and its
/// neighbour's new keys are still taken.
pub async fn one_customers_keys_never_push_out_another_customers_entries(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let bounded = Setup::bounded(setup.held());
    let theirs = setup.key("theirs");
    let lease = acquire(store, &umbrella(), &theirs, bounded, "a free key").await;
    complete_for(
        store,
        &umbrella(),
        &theirs,
        &lease,
        "umbrella's",
        setup.long,
    )
    .await;

    let flood: Vec<IdempotencyKey> = (0..BOUND * 3)
        .map(|n| setup.key(&format!("flood-{n}")))
        .collect();
    // Each kept a little longer than the one before, so that the oldest
    // is the closest to its expiry on any clock.
    let mut retention = setup.long;
    for key in &flood {
        let lease = acquire(store, &initech(), key, bounded, "a key of the flood").await;
        retention += setup.margin;
        complete_for(store, &initech(), key, &lease, "initech's", retention).await;
    }

    let why = "the neighbour's outcome after the flood";
    let done = Claim::Done(outcome("umbrella's"));
    expect_claim_for(store, &umbrella(), &theirs, FINGERPRINT, &done, why).await;
    let why = "the flood's newest key, kept within the bound";
    let done = Claim::Done(outcome("initech's"));
    expect_claim_for(
        store,
        &initech(),
        &flood[flood.len() - 1],
        FINGERPRINT,
        &done,
        why,
    )
    .await;
    let why = "the flood's oldest key, forgotten to make room, so free";
    acquire(store, &initech(), &flood[0], bounded, why).await;
    let why = "a new key of the neighbour after the flood";
    acquire(store, &umbrella(), &setup.key("new"), bounded, why).await;
}

/// A customer whose bound is all claims in flight is refused new keys,
/// and its neighbour is not; once one of those claims passes its deadline
/// it is a failed attempt, which can be forgotten to make room.
pub async fn a_customer_full_of_claims_in_flight_is_refused_new_keys_until_a_deadline_passes(
    store: &dyn IdempotencyStore,
    setup: &Setup,
    wait: impl Wait,
) {
    let due = Setup::bounded(setup.due());
    for n in 0..BOUND {
        let key = setup.key(&format!("running-{n}"));
        acquire(store, &initech(), &key, due, "a key within the bound").await;
    }
    let new = setup.key("new");
    let why = "a new key with the bound full of claims in flight";
    expect_refused(store, &initech(), &new, due, why).await;
    let why = "a repeat of a claim in flight at the bound";
    let running = setup.key("running-0");
    let in_flight = Claim::InFlight;
    expect_claim_for(store, &initech(), &running, FINGERPRINT, &in_flight, why).await;
    let why = "a new key of the neighbour";
    acquire(store, &umbrella(), &new, Setup::bounded(setup.held()), why).await;

    wait.wait(setup.after_short()).await;
    let why = "a new key once the claims passed their deadline";
    acquire(store, &initech(), &new, Setup::bounded(setup.held()), why).await;
}

/// At its bound, a customer's retry of a failed attempt, and its repeats
/// of a kept outcome or a claim in flight, are answered as ever and
/// forget nothing: they add no key.
pub async fn at_its_bound_a_customer_still_retries_and_repeats_its_keys(
    store: &dyn IdempotencyStore,
    setup: &Setup,
) {
    let bounded = Setup::bounded(setup.held());
    let [failed, kept, running] = ["failed", "kept", "running"].map(|name| setup.key(name));
    let lease = acquire(store, &initech(), &failed, bounded, "a free key").await;
    release_for(store, &initech(), &failed, &lease, setup.long).await;
    let lease = acquire(store, &initech(), &kept, bounded, "a free key").await;
    complete_for(store, &initech(), &kept, &lease, "kept", setup.long).await;
    acquire(store, &initech(), &running, bounded, "a free key").await;

    let why = "a repeat of the kept outcome at the bound";
    let done = Claim::Done(outcome("kept"));
    expect_claim_for(store, &initech(), &kept, FINGERPRINT, &done, why).await;
    let why = "a repeat of the claim in flight at the bound";
    let in_flight = Claim::InFlight;
    expect_claim_for(store, &initech(), &running, FINGERPRINT, &in_flight, why).await;
    let why = "a retry of the failed attempt at the bound";
    take(store, &initech(), &failed, (bounded, Attempt::Retry), why).await;
    let why = "the kept outcome after the retry took the failed attempt over";
    expect_claim_for(store, &initech(), &kept, FINGERPRINT, &done, why).await;
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

/// Writes one test per scenario of [`idempotency_testkit`](crate::idempotency_testkit),
/// named after it, so that a store runs them all and a failure names the
/// rule broken. It takes the tests' attribute and two bodies, each naming
/// the scenario it runs: the first runs the scenarios that need no time to
/// pass (they take a store and a [`Setup`](crate::idempotency_testkit::Setup)),
/// the second those that let time pass (they also take a
/// [`Wait`](crate::idempotency_testkit::Wait)). The module's documentation shows it
/// in use.
#[macro_export]
macro_rules! idempotency_conformance_tests {
    (
        #[$test:meta]
        |$timeless:ident| $timeless_body:block
        |$timed:ident| $timed_body:block
    ) => {
        $crate::idempotency_conformance_tests!(@each #[$test] |$timeless| $timeless_body [
            a_claimed_key_is_in_flight_then_done_with_its_outcome,
            another_fingerprint_is_a_mismatch_in_flight_and_done,
            keys_are_scoped_to_their_customer,
            a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once,
            a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own,
            a_customer_at_its_bound_forgets_its_own_entry_closest_to_expiry_never_a_claim,
            one_customers_keys_never_push_out_another_customers_entries,
            at_its_bound_a_customer_still_retries_and_repeats_its_keys,
        ]);
        $crate::idempotency_conformance_tests!(@each #[$test] |$timed| $timed_body [
            a_failed_attempt_is_noted_for_the_retention_and_no_longer,
            a_retry_is_in_flight_until_its_own_deadline_not_the_retention,
            a_release_by_a_lost_lease_writes_nothing,
            an_outcome_is_kept_for_its_retention_and_no_longer,
            a_claim_past_its_deadline_is_taken_over_as_a_retry,
            a_claim_past_its_deadline_is_remembered_for_the_retention_and_no_longer,
            a_request_past_its_deadline_still_records_until_its_key_is_taken_over,
            a_customer_full_of_claims_in_flight_is_refused_new_keys_until_a_deadline_passes,
        ]);
    };
    (@each #[$test:meta] |$scenario:ident| $body:block [$($name:ident),* $(,)?]) => {$(
        #[$test]
        async fn $name() {
            let $scenario = $crate::idempotency_testkit::$name;
            $body
        }
    )*};
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use async_trait::async_trait;

    use super::*;

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
        /// A claim is gone at its deadline, rather than read as a failed
        /// attempt.
        ClaimsExpireAtTheirDeadline,
        /// At a customer's bound, what is forgotten is whatever entry of
        /// any customer is closest to its expiry.
        ForgetsAnyCustomersEntry,
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
        /// When it was written, to tell apart entries that expire at once.
        written: u64,
    }

    enum Kind {
        Claimed { lease: Lease, deadline: Duration },
        Done(Vec<u8>),
        Failed,
    }

    impl Entry {
        fn in_flight(&self, now: Duration) -> bool {
            matches!(self.kind, Kind::Claimed { deadline, .. } if deadline > now)
        }
    }

    impl Reference {
        fn with(flaw: Flaw) -> Arc<Self> {
            Arc::new(Self {
                flaw: Some(flaw),
                ..Self::default()
            })
        }

        fn wait(self: &Arc<Self>) -> impl Fn(Duration) -> std::future::Ready<()> + use<> {
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

        fn live(&self, entry: &Entry, now: Duration) -> bool {
            self.flaw == Some(Flaw::NeverExpires) || entry.expires_at > now
        }

        /// Makes room for a new key of `customer` under `bound`: forgets
        /// the customer's entry closest to its expiry that is not a claim
        /// in flight. False when there is none.
        fn make_room(&self, state: &mut State, customer: &str, bound: usize) -> bool {
            let now = state.now;
            let live: Vec<(&(String, String), &Entry)> = state
                .entries
                .iter()
                .filter(|(_, entry)| self.live(entry, now))
                .collect();
            let held = live.iter().filter(|(scope, _)| scope.0 == customer).count();
            if held < bound {
                return true;
            }
            let anyone = self.flaw == Some(Flaw::ForgetsAnyCustomersEntry);
            let victim = live
                .into_iter()
                .filter(|(scope, entry)| (anyone || scope.0 == customer) && !entry.in_flight(now))
                .min_by_key(|(_, entry)| (entry.expires_at, entry.written))
                .map(|(scope, _)| scope.clone());
            match victim {
                Some(scope) => {
                    state.entries.remove(&scope);
                    true
                }
                None => false,
            }
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
            let now = state.now;
            state.next += 1;
            let written = state.next;
            let live = state
                .entries
                .get(&scope)
                .is_some_and(|entry| self.live(entry, now));
            match state.entries.get_mut(&scope) {
                Some(entry)
                    if live
                        && matches!(&entry.kind, Kind::Claimed { lease: held, .. } if held == lease) =>
                {
                    entry.kind = kind;
                    entry.expires_at = now + ttl;
                    entry.written = written;
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
            terms: ClaimTerms,
        ) -> Result<Claim, StoreError> {
            let scope = self.scope(scope, key);
            let mut state = self.state.lock().unwrap();
            let now = state.now;
            let mut retry = false;
            if let Some(entry) = state.entries.get(&scope).filter(|e| self.live(e, now)) {
                if entry.fingerprint != fingerprint {
                    return Ok(Claim::Mismatch);
                }
                match &entry.kind {
                    Kind::Claimed { .. } if entry.in_flight(now) => return Ok(Claim::InFlight),
                    Kind::Done(outcome) => return Ok(Claim::Done(outcome.clone())),
                    Kind::Claimed { .. } | Kind::Failed => retry = true,
                }
            }
            if !retry && !self.make_room(&mut state, &scope.0, terms.keys_per_customer) {
                return Err(StoreError::failed("the customer's keys are all in flight"));
            }
            state.next += 1;
            let lease = Lease::new(state.next.to_string());
            let deadline = now + terms.in_flight;
            let expires_at = if self.flaw == Some(Flaw::ClaimsExpireAtTheirDeadline) {
                deadline
            } else {
                deadline + terms.retention
            };
            let entry = Entry {
                fingerprint: fingerprint.to_owned(),
                kind: Kind::Claimed {
                    lease: lease.clone(),
                    deadline,
                },
                expires_at,
                written: state.next,
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

    /// A store that keeps the rules passes every scenario, under either
    /// setup, on a store of its own each time.
    mod a_store_that_keeps_the_rules_passes {
        use super::*;

        fn setups() -> [Setup; 2] {
            [Setup::paused_clock(""), Setup::real_clock("test:")]
        }

        crate::idempotency_conformance_tests! {
            #[tokio::test]
            |scenario| {
                for setup in setups() {
                    let store = Arc::new(Reference::default());
                    scenario(store.as_ref(), &setup).await;
                }
            }
            |scenario| {
                for setup in setups() {
                    let store = Arc::new(Reference::default());
                    scenario(store.as_ref(), &setup, store.wait()).await;
                }
            }
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
    #[should_panic(expected = "the claim, just after its retention ended")]
    async fn a_store_whose_claims_are_never_forgotten_fails_the_claims_retention_scenario() {
        let store = Reference::with(Flaw::NeverExpires);
        let wait = store.wait();
        a_claim_past_its_deadline_is_remembered_for_the_retention_and_no_longer(
            &*store,
            &Setup::paused_clock(""),
            wait,
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "against the lost request's claim, past its deadline")]
    async fn a_store_whose_claims_simply_expire_fails_the_lost_request_scenario() {
        let store = Reference::with(Flaw::ClaimsExpireAtTheirDeadline);
        let wait = store.wait();
        a_claim_past_its_deadline_is_taken_over_as_a_retry(&*store, &Setup::paused_clock(""), wait)
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "the key is acme's, not globex's")]
    async fn a_store_that_ignores_the_customer_fails_the_scoping_scenario() {
        let store = Reference::with(Flaw::IgnoresTheCustomer);
        keys_are_scoped_to_their_customer(&*store, &Setup::paused_clock("")).await;
    }

    #[tokio::test]
    #[should_panic(expected = "the neighbour's outcome after the flood")]
    async fn a_store_that_forgets_any_customers_entry_fails_the_neighbour_scenario() {
        let store = Reference::with(Flaw::ForgetsAnyCustomersEntry);
        one_customers_keys_never_push_out_another_customers_entries(
            &*store,
            &Setup::paused_clock(""),
        )
        .await;
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
