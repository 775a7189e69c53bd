//! The Redis stores against a real `redis-server`. The feed's stores are
//! in [`feed`]. The idempotency store: the port's
//! rules from `domain::idempotency_testkit`; and what is Redis's own: the
//! stored JSON and its TTL, the indexes of a customer's keys, records byte
//! for byte, records and claims of the shapes written by earlier versions,
//! many concurrent claims and retries through separate connections (as
//! from several Maestro instances), the use case over Redis, and a hanging
//! server. And the shared rate limiter (`ratelimit`).
//!
//! Built only with the `redis-server` feature, since it needs a server:
//!
//! ```text
//! export MAESTRO_TEST_REDIS_URL="$(scripts/redis-test-server.sh)"
//! cargo test -p adapter-redis --features redis-server --test redis_server
//! ```
//!
//! Every test uses its own random key prefix, so tests can share the server
//! and run in parallel; the prefix also sets apart the indexes that the
//! bound on a customer's keys counts. No test waits for Redis's clock: the
//! scenarios about expiry and deadlines move time for their own keys by
//! shortening what is left of each key's lifetime, and moving the scores
//! of the indexes as far back (see [`age`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use adapter_redis::{RedisConfig, RedisIdempotencyStore};
use domain::{
    Attempt, BackendError, Claim, ClaimTerms, Clock, CustomerId, ExecuteError, Idempotency,
    IdempotencyConfig, IdempotencyError, IdempotencyKey, IdempotencyStore, Idempotent, Lease,
    ManualClock, MockOrchestrator, MockPipelineRepository, PipelineId, PipelineService,
    RequestContext, Run, RunId, RunStatus, StoreError, TriggerRequest,
    idempotency_testkit::{self as kit, Setup},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::Instant,
};

#[path = "redis_server/feed.rs"]
mod feed;
#[path = "redis_server/ratelimit.rs"]
mod ratelimit;

const IN_FLIGHT: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

/// Claims in flight for [`IN_FLIGHT`], remembered for [`RETENTION`] past
/// their deadline, with the default bound.
fn terms() -> ClaimTerms {
    ClaimTerms::new(
        IN_FLIGHT,
        RETENTION,
        IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER,
    )
}

/// The scenarios' lifetimes: a day, a minute, and five seconds either side
/// of the minute. Time passes by [`age`], so the lifetimes cost no waiting,
/// and the margin is far more than the few milliseconds Redis's own clock
/// moves while a scenario runs, however busy the machine. Every store gets
/// a key prefix of its own from [`config`], so the keys need none.
fn setup() -> Setup {
    Setup {
        margin: Duration::from_secs(5),
        ..Setup::paused_clock("")
    }
}

fn url() -> String {
    std::env::var("MAESTRO_TEST_REDIS_URL")
        .expect("MAESTRO_TEST_REDIS_URL names the test server: run scripts/redis-test-server.sh")
}

/// Settings with a fresh key prefix, which holds no glob character.
fn config() -> RedisConfig {
    RedisConfig {
        key_prefix: format!("maestro-test:{}:", uuid::Uuid::new_v4().simple()),
        ..RedisConfig::new(url())
    }
}

async fn store(config: &RedisConfig) -> RedisIdempotencyStore {
    RedisIdempotencyStore::connect(config).await.unwrap()
}

/// A raw connection to the test server, to read and change keys behind the
/// store's back.
async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Shortens what is left of the lifetime of every key under `prefix` by
/// `period`, and deletes the keys whose lifetime that ends, and moves
/// every score of the indexes (sorted sets of deadlines and expiries on
/// Redis's clock) as far back: for Redis's expiry of those keys, for the
/// claims' deadlines (which are read from what is left of their keys'
/// lifetimes) and for the store's indexes, `period` has passed. Each key
/// is aged in one script, so Redis's own clock cannot move between reading
/// its TTL and setting the new one.
async fn age(prefix: &str, period: Duration) {
    let mut connection = raw_connection().await;
    let mut keys = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if keys.is_empty() {
        return;
    }
    let script = redis::Script::new(
        r"for _, key in ipairs(KEYS) do
            if redis.call('TYPE', key).ok == 'zset' then
              local scored = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
              for i = 1, #scored, 2 do
                local earlier = tonumber(scored[i + 1]) - tonumber(ARGV[1])
                redis.call('ZADD', key, earlier, scored[i])
              end
            end
            local left = redis.call('PTTL', key)
            if left > 0 then
              left = left - tonumber(ARGV[1])
              if left > 0 then
                redis.call('PEXPIRE', key, left)
              else
                redis.call('DEL', key)
              end
            end
          end
          return 0",
    );
    let mut invocation = script.prepare_invoke();
    for key in &keys {
        invocation.key(key);
    }
    invocation.arg(u64::try_from(period.as_millis()).unwrap());
    let _: i64 = invocation.invoke_async(&mut connection).await.unwrap();
}

/// A store on a key prefix of its own, and that prefix.
async fn fresh_store() -> (RedisIdempotencyStore, String) {
    let config = config();
    (store(&config).await, config.key_prefix)
}

// One test per scenario of the conformance kit, each on a store of its
// own, time passing for the test's own keys by [`age`].
domain::idempotency_conformance_tests! {
    #[tokio::test]
    |scenario| {
        let (store, _) = fresh_store().await;
        scenario(&store, &setup()).await;
    }
    |scenario| {
        let (store, prefix) = fresh_store().await;
        scenario(&store, &setup(), |period| age(&prefix, period)).await;
    }
}

fn acme() -> CustomerId {
    CustomerId::parse("acme").unwrap()
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).unwrap()
}

/// The Redis key of acme's key `raw` (acme is `61636d65` in hex).
fn acme_redis_key(config: &RedisConfig, raw: &str) -> String {
    format!("{}61636d65:{raw}", config.key_prefix)
}

async fn acquire(store: &RedisIdempotencyStore, raw: &str) -> Lease {
    match store
        .claim(&acme(), &key(raw), "p1", terms())
        .await
        .unwrap()
    {
        Claim::Acquired(lease) => lease,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Claims `raw` of acme and releases it, as after a 5xx: the key then
/// holds the note of a failed attempt, kept `retention`.
async fn fail(store: &RedisIdempotencyStore, raw: &str, retention: Duration) {
    let lease = acquire(store, raw).await;
    store
        .release(&acme(), &key(raw), &lease, retention)
        .await
        .unwrap();
}

/// What `redis_key` holds, and how many milliseconds it has left.
async fn stored(redis_key: &str) -> (String, i64) {
    let mut raw = raw_connection().await;
    let value: String = redis::cmd("GET")
        .arg(redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    (value, ttl)
}

/// Whether `ttl` (ms) is what is left of `lifetime` set a moment ago.
fn just_set(ttl: i64, lifetime: Duration) -> bool {
    let lifetime = i64::try_from(lifetime.as_millis()).unwrap();
    (lifetime - 5_000..=lifetime).contains(&ttl)
}

#[tokio::test]
async fn a_failed_attempt_is_kept_as_readable_json_for_the_retention() {
    let config = config();
    let store = store(&config).await;
    fail(&store, "k", RETENTION).await;

    let (value, ttl) = stored(&acme_redis_key(&config, "k")).await;
    assert_eq!(value, r#"{"state":"failed","fingerprint":"p1"}"#);
    assert!(just_set(ttl, RETENTION), "ttl {ttl} ms");
}

/// The members of one of acme's indexes (`in-flight` or `forgettable`),
/// soonest first.
async fn acme_index(config: &RedisConfig, which: &str) -> Vec<String> {
    let mut raw = raw_connection().await;
    redis::cmd("ZRANGE")
        .arg(format!("{}{which}:61636d65", config.key_prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claim_is_kept_as_readable_json_for_its_time_in_flight_and_the_retention() {
    let config = config();
    let store = store(&config).await;
    acquire(&store, "k").await;

    let (value, ttl) = stored(&acme_redis_key(&config, "k")).await;
    let token = value
        .strip_prefix(r#"{"state":"in_flight","fingerprint":"p1","token":""#)
        .and_then(|rest| rest.strip_suffix(r#"","deadline_pttl":60000}"#))
        .unwrap_or_else(|| panic!("{value}"));
    assert_eq!(token.len(), 32, "{value}");
    assert!(just_set(ttl, IN_FLIGHT + RETENTION), "ttl {ttl} ms");
}

#[tokio::test]
async fn a_customers_keys_are_indexed_in_flight_then_as_entries_that_may_be_forgotten() {
    let config = config();
    let store = store(&config).await;
    let lease = acquire(&store, "k").await;
    acquire(&store, "other").await;
    assert_eq!(acme_index(&config, "in-flight").await, ["k", "other"]);
    assert!(acme_index(&config, "forgettable").await.is_empty());

    store
        .complete(&acme(), &key("k"), &lease, b"x", RETENTION)
        .await
        .unwrap();
    assert_eq!(acme_index(&config, "in-flight").await, ["other"]);
    assert_eq!(acme_index(&config, "forgettable").await, ["k"]);

    // Past its deadline, the claim of "other" may be forgotten too, after
    // the outcome of "k", which expires sooner.
    age(&config.key_prefix, IN_FLIGHT).await;
    acquire(&store, "new").await;
    assert_eq!(acme_index(&config, "in-flight").await, ["new"]);
    assert_eq!(acme_index(&config, "forgettable").await, ["k", "other"]);
}

/// Sets `redis_key` to `value` behind the store's back, for a minute.
async fn set_for_a_minute(redis_key: &str, value: &str) {
    let mut raw = raw_connection().await;
    let _: () = redis::cmd("SET")
        .arg(redis_key)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_of_the_shape_before_deadlines_is_in_flight_until_it_expires() {
    let config = config();
    let (store, prefix) = (store(&config).await, config.key_prefix.clone());
    let old = r#"{"state":"in_flight","fingerprint":"p1","token":"0f3c"}"#;
    set_for_a_minute(&acme_redis_key(&config, "k"), old).await;

    // Where a claim of today's shape would be past its deadline.
    age(&prefix, Duration::from_secs(50)).await;
    let claim = store.claim(&acme(), &key("k"), "p1", terms()).await;
    assert_eq!(claim.unwrap(), Claim::InFlight);
    age(&prefix, Duration::from_secs(10)).await;
    acquire(&store, "k").await;
}

#[tokio::test]
async fn a_record_is_kept_byte_for_byte_as_readable_json_for_the_retention() {
    let config = config();
    let store = store(&config).await;
    let record = [b'{', 0, 159, 255, b'}'];
    let lease = acquire(&store, "k").await;
    store
        .complete(&acme(), &key("k"), &lease, &record, RETENTION)
        .await
        .unwrap();

    let (value, ttl) = stored(&acme_redis_key(&config, "k")).await;
    assert_eq!(
        value,
        r#"{"state":"done","fingerprint":"p1","record":"ewCf/30="}"#
    );
    assert!(just_set(ttl, RETENTION), "ttl {ttl} ms");
    let claim = store
        .claim(&acme(), &key("k"), "p1", terms())
        .await
        .unwrap();
    assert_eq!(claim, Claim::Done(record.to_vec()));
}

#[tokio::test]
async fn a_record_in_the_shape_before_opaque_records_fails_the_claim_and_stays() {
    let config = config();
    let store = store(&config).await;
    let redis_key = acme_redis_key(&config, "k");
    let old = r#"{"state":"done","fingerprint":"p1","status":200,"body":"e30="}"#;
    set_for_a_minute(&redis_key, old).await;

    let claim = store.claim(&acme(), &key("k"), "p1", terms()).await;

    assert!(matches!(claim, Err(StoreError::Failed { .. })), "{claim:?}");
    assert_eq!(stored(&redis_key).await.0, old);
}

/// Four connections sharing `config`'s keys, standing for four Maestro
/// instances.
async fn instances(config: &RedisConfig) -> Vec<RedisIdempotencyStore> {
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(store(config).await);
    }
    instances
}

/// Claims acme's key "k" 200 times at once, spread over `instances`.
async fn claim_at_once(instances: &[RedisIdempotencyStore]) -> Vec<Claim> {
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let store = instances[n % instances.len()].clone();
            tokio::spawn(async move {
                store
                    .claim(&acme(), &key("k"), "p1", terms())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claims = Vec::new();
    for task in tasks {
        claims.push(task.await.unwrap());
    }
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_claims_from_several_instances_exactly_one_is_acquired() {
    let instances = instances(&config()).await;
    let claims = claim_at_once(&instances).await;
    kit::assert_exactly_one_took_the_key(claims, Attempt::First);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_claims_of_a_failed_attempt_from_several_instances_exactly_one_retries()
{
    let instances = instances(&config()).await;
    fail(&instances[0], "k", RETENTION).await;
    let claims = claim_at_once(&instances).await;
    kit::assert_exactly_one_took_the_key(claims, Attempt::Retry);
}

const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
/// The time of the use case's clock, in seconds since the Unix epoch.
const NOW: i64 = 1_734_517_800;

fn pipeline() -> PipelineId {
    PipelineId::parse(PIPELINE).unwrap()
}

fn ctx() -> RequestContext {
    RequestContext::new(domain::Caller::new(acme()))
}

/// The run the orchestrator of these tests starts.
fn the_run(clock: &ManualClock) -> Run {
    let id = RunId::manual(&clock.now());
    Run::new(id, pipeline(), RunStatus::Running, clock.now())
}

/// The execute use case over `orchestrator`, with idempotency keys kept in
/// Redis under `config`'s keys.
async fn idempotent_service(
    config: &RedisConfig,
    orchestrator: MockOrchestrator,
    clock: &ManualClock,
) -> (PipelineService, Idempotency) {
    let service = PipelineService::new(
        Arc::new(MockPipelineRepository::new()),
        Arc::new(orchestrator),
    );
    let store: Arc<dyn IdempotencyStore> = Arc::new(store(config).await);
    let idempotency =
        Idempotency::new(store, IdempotencyConfig::default(), Arc::new(clock.clone()));
    (service, idempotency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_use_case_over_redis_runs_a_key_once_across_instances() {
    let config = config();
    let clock = ManualClock::at_epoch_seconds(NOW);
    let triggers = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let mut orchestrator = MockOrchestrator::new();
        let (counted, run) = (triggers.clone(), the_run(&clock));
        orchestrator.expect_trigger().returning(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(run.clone())
        });
        instances.push(idempotent_service(&config, orchestrator, &clock).await);
    }
    let instances = Arc::new(instances);
    let requests: Vec<_> = (0..100)
        .map(|n| {
            let instances = instances.clone();
            tokio::spawn(async move {
                let (service, idempotency) = &instances[n % 2];
                let request = TriggerRequest::new(pipeline());
                idempotency
                    .execute(service, &ctx(), &key("k"), request)
                    .await
            })
        })
        .collect();
    let mut fresh = 0;
    for request in requests {
        match request.await.unwrap() {
            Ok(Idempotent::Ran {
                outcome: Ok(run),
                record_error: None,
            }) => {
                fresh += 1;
                assert_eq!(run, the_run(&clock));
            }
            Ok(Idempotent::Replayed(Ok(run))) => assert_eq!(run, the_run(&clock)),
            Err(IdempotencyError::InFlight) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(triggers.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_use_case_over_redis_tells_the_retry_of_a_failed_execute_since_when_to_look() {
    let config = config();
    let clock = ManualClock::at_epoch_seconds(NOW);
    let retention = IdempotencyConfig::DEFAULT_RETENTION.as_secs();
    let since = ManualClock::at_epoch_seconds(NOW - i64::try_from(retention).unwrap()).now();
    let mut orchestrator = MockOrchestrator::new();
    let mut triggers = 0;
    let run = the_run(&clock);
    orchestrator
        .expect_trigger()
        .times(2)
        .returning(move |_, request| {
            triggers += 1;
            assert_eq!(request.idempotency_key(), Some(&key("k")));
            if triggers == 1 {
                assert_eq!(request.retry_since(), None);
                Err(ExecuteError::Backend(BackendError::unavailable("down")))
            } else {
                assert_eq!(request.retry_since(), Some(since));
                Ok(run.clone())
            }
        });
    let (service, idempotency) = idempotent_service(&config, orchestrator, &clock).await;

    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let request = TriggerRequest::new(pipeline());
        match idempotency
            .execute(&service, &ctx(), &key("k"), request)
            .await
            .unwrap()
        {
            Idempotent::Ran {
                outcome,
                record_error: None,
            } => outcomes.push(outcome.is_ok()),
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(outcomes, [false, true]);
}

/// A TCP proxy to the test server that can stop passing bytes on, to stand
/// for a Redis that hangs (a network partition, a server stuck on disk).
async fn hanging_proxy() -> (String, Arc<AtomicBool>) {
    let upstream = url()
        .strip_prefix("redis://")
        .expect("a redis:// URL")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hung = Arc::new(AtomicBool::new(false));
    let flag = hung.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pass_on(client_read, server_write, flag.clone()));
            tokio::spawn(pass_on(server_read, client_write, flag.clone()));
        }
    });
    (format!("redis://{address}"), hung)
}

async fn pass_on(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, hung: Arc<AtomicBool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if hung.load(Ordering::SeqCst) {
            // Hold both sockets open and answer nothing, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_server_fails_each_operation_at_the_timeout() {
    // The clock stands still while the store connects and claims through
    // the proxy; once Redis hangs, it skips to each operation's deadline.
    // A paused runtime with nothing to do skips to its next timer, even
    // while it waits for a socket, but not while a blocking task runs: one
    // runs until `release` is dropped.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || released.recv());
    let (proxied, hung) = hanging_proxy().await;
    let config = RedisConfig {
        timeout: Duration::from_millis(300),
        ..RedisConfig {
            url: RedisConfig::new(proxied).url,
            ..config()
        }
    };
    let store = store(&config).await;
    let lease = acquire(&store, "k").await;
    hung.store(true, Ordering::SeqCst);
    drop(release);
    let _ = holder.await.expect("the holding task ends");

    let started = Instant::now();
    let claim = store.claim(&acme(), &key("other"), "p1", terms()).await;
    assert!(matches!(claim, Err(StoreError::Failed { .. })), "{claim:?}");
    assert_eq!(started.elapsed(), config.timeout);
    let started = Instant::now();
    let complete = store
        .complete(&acme(), &key("k"), &lease, b"x", RETENTION)
        .await;
    assert!(
        matches!(complete, Err(StoreError::Failed { .. })),
        "{complete:?}"
    );
    assert_eq!(started.elapsed(), config.timeout);
}
