//! The Redis idempotency store against a real `redis-server`: the port's
//! rules from `domain::idempotency_testkit`, waiting for real since Redis
//! keeps time itself; and what is Redis's own: the stored JSON and its TTL,
//! many concurrent claims and retries through separate connections (as
//! from several Maestro instances), the use case over Redis, a hanging
//! server and URLs refused before connecting.
//!
//! These need a server, so they are ignored by default:
//!
//! ```text
//! export MAESTRO_TEST_REDIS_URL="$(scripts/redis-test-server.sh)"
//! cargo test -p adapter-redis -- --ignored
//! ```
//!
//! Every test uses its own random key prefix, so tests can share the server
//! and run in parallel.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use adapter_redis::{ConnectError, RedisConfig, RedisIdempotencyStore};
use domain::{
    Attempt, Claim, Completion, CustomerId, Idempotency, IdempotencyConfig, IdempotencyError,
    IdempotencyKey, IdempotencyStore, Idempotent, Lease, StoreError, StoredOutcome,
    idempotency_testkit::{self as kit, Setup},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::sleep,
};

const IN_FLIGHT: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

/// Lifetimes short enough to wait for. Every store gets a key prefix of its
/// own from [`config`], so the keys need none.
fn setup() -> Setup {
    Setup::real_clock("")
}

fn url() -> String {
    std::env::var("MAESTRO_TEST_REDIS_URL")
        .expect("MAESTRO_TEST_REDIS_URL names the test server: run scripts/redis-test-server.sh")
}

fn config() -> RedisConfig {
    RedisConfig {
        key_prefix: format!("maestro-test:{}:", uuid::Uuid::new_v4().simple()),
        ..RedisConfig::new(url())
    }
}

async fn store(config: &RedisConfig) -> RedisIdempotencyStore {
    RedisIdempotencyStore::connect(config).await.unwrap()
}

fn acme() -> CustomerId {
    CustomerId::parse("acme").unwrap()
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).unwrap()
}

fn outcome(status: u16, body: &str) -> StoredOutcome {
    StoredOutcome {
        status,
        body: body.as_bytes().to_vec(),
    }
}

async fn acquire(
    store: &RedisIdempotencyStore,
    customer: &CustomerId,
    raw: &str,
    in_flight: Duration,
) -> Lease {
    match store
        .claim(customer, &key(raw), "p1", in_flight)
        .await
        .unwrap()
    {
        Claim::Acquired(lease) => lease,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_claimed_key_is_in_flight_then_done_with_its_outcome() {
    let store = store(&config()).await;
    kit::a_claimed_key_is_in_flight_then_done_with_its_outcome(&store, &setup()).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn another_fingerprint_is_a_mismatch_in_flight_and_done() {
    let store = store(&config()).await;
    kit::another_fingerprint_is_a_mismatch_in_flight_and_done(&store, &setup()).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn keys_are_scoped_to_their_customer() {
    let store = store(&config()).await;
    kit::keys_are_scoped_to_their_customer(&store, &setup()).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once() {
    let store = store(&config()).await;
    kit::a_released_claim_lets_the_next_claim_with_its_fingerprint_retry_at_once(&store, &setup())
        .await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own() {
    let store = store(&config()).await;
    kit::a_failed_attempt_refuses_another_fingerprint_and_stays_for_its_own(&store, &setup()).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_failed_attempt_is_noted_for_the_retention_and_no_longer() {
    let store = store(&config()).await;
    kit::a_failed_attempt_is_noted_for_the_retention_and_no_longer(&store, &setup(), sleep).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention() {
    let store = store(&config()).await;
    kit::a_retry_holds_the_key_for_the_claims_own_expiry_not_the_retention(&store, &setup(), sleep)
        .await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_release_by_a_lost_lease_writes_nothing() {
    let store = store(&config()).await;
    kit::a_release_by_a_lost_lease_writes_nothing(&store, &setup(), sleep).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn an_outcome_is_kept_for_its_retention_and_no_longer() {
    let store = store(&config()).await;
    kit::an_outcome_is_kept_for_its_retention_and_no_longer(&store, &setup(), sleep).await;
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_claim_expires_so_a_lost_request_never_locks_its_key() {
    let store = store(&config()).await;
    kit::a_claim_expires_so_a_lost_request_never_locks_its_key(&store, &setup(), sleep).await;
}

/// Claims `raw` of acme and releases it, as after a 5xx: the key then
/// holds the note of a failed attempt, kept `retention`.
async fn fail(store: &RedisIdempotencyStore, raw: &str, retention: Duration) {
    let lease = acquire(store, &acme(), raw, IN_FLIGHT).await;
    store
        .release(&acme(), &key(raw), &lease, retention)
        .await
        .unwrap();
}

/// A raw connection to the test server, to read what a key holds.
async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_failed_attempt_is_kept_as_readable_json_for_the_retention() {
    let config = config();
    let store = store(&config).await;
    fail(&store, "k", RETENTION).await;

    let mut raw = raw_connection().await;
    let redis_key = format!("{}61636d65:k", config.key_prefix);
    let value: String = redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(value, r#"{"state":"failed","fingerprint":"p1"}"#);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let retention = i64::try_from(RETENTION.as_millis()).unwrap();
    assert!(
        (retention - 5_000..=retention).contains(&ttl),
        "ttl {ttl} ms"
    );
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
                    .claim(&acme(), &key("k"), "p1", IN_FLIGHT)
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
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn of_many_concurrent_claims_from_several_instances_exactly_one_is_acquired() {
    let instances = instances(&config()).await;
    let claims = claim_at_once(&instances).await;
    kit::assert_exactly_one_took_the_key(claims, Attempt::First);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn of_many_concurrent_claims_of_a_failed_attempt_from_several_instances_exactly_one_retries()
{
    let instances = instances(&config()).await;
    fail(&instances[0], "k", RETENTION).await;
    let claims = claim_at_once(&instances).await;
    kit::assert_exactly_one_took_the_key(claims, Attempt::Retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn the_use_case_over_redis_runs_a_key_once_across_instances() {
    use std::sync::atomic::AtomicUsize;

    let config = config();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store: Arc<dyn IdempotencyStore> = Arc::new(store(&config).await);
        instances.push(Idempotency::new(store, IdempotencyConfig::default()));
    }
    let requests: Vec<_> = (0..100)
        .map(|n| {
            let idempotency = instances[n % 2].clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                let work = |attempt| async move {
                    assert_eq!(attempt, Attempt::First);
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Completion::Final(outcome(200, &format!("run {run}")))
                };
                idempotency.run(&acme(), &key("k"), "p1", work).await
            })
        })
        .collect();
    let mut fresh = 0;
    for request in requests {
        match request.await.unwrap() {
            Ok(Idempotent::Ran {
                record_error: None,
                outcome,
            }) => {
                fresh += 1;
                assert_eq!(outcome, self::outcome(200, "run 0"));
            }
            Ok(Idempotent::Replayed(outcome)) => assert_eq!(outcome, self::outcome(200, "run 0")),
            Err(IdempotencyError::InFlight) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn the_use_case_over_redis_tells_the_retry_of_a_failed_request_so() {
    let config = config();
    let store: Arc<dyn IdempotencyStore> = Arc::new(store(&config).await);
    let idempotency = Idempotency::new(store, IdempotencyConfig::default());
    let attempts = std::sync::Mutex::new(Vec::new());
    for answer in [503, 200] {
        let ran = idempotency
            .run(&acme(), &key("k"), "p1", |attempt| {
                attempts.lock().unwrap().push(attempt);
                async move {
                    if answer == 503 {
                        Completion::Transient(outcome(503, "upstream failed"))
                    } else {
                        Completion::Final(outcome(200, "run"))
                    }
                }
            })
            .await
            .unwrap();
        assert!(
            matches!(&ran, Idempotent::Ran { outcome, record_error: None } if outcome.status == answer),
            "{ran:?}"
        );
    }
    assert_eq!(*attempts.lock().unwrap(), [Attempt::First, Attempt::Retry]);
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

#[tokio::test]
#[ignore = "needs redis-server: scripts/redis-test-server.sh"]
async fn a_hanging_server_fails_each_operation_within_the_timeout() {
    let (proxied, hung) = hanging_proxy().await;
    let config = RedisConfig {
        timeout: Duration::from_millis(300),
        ..RedisConfig {
            url: RedisConfig::new(proxied).url,
            ..config()
        }
    };
    let store = store(&config).await;
    let lease = acquire(&store, &acme(), "k", IN_FLIGHT).await;

    hung.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let claim = store.claim(&acme(), &key("other"), "p1", IN_FLIGHT).await;
    assert!(matches!(claim, Err(StoreError::Failed { .. })), "{claim:?}");
    let complete = store
        .complete(&acme(), &key("k"), &lease, &outcome(200, "x"), RETENTION)
        .await;
    assert!(
        matches!(complete, Err(StoreError::Failed { .. })),
        "{complete:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_fails_at_connect() {
    let mut config = RedisConfig::new("redis://127.0.0.1:1");
    config.connect_timeout = Duration::from_millis(300);
    let err = RedisIdempotencyStore::connect(&config).await.unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err:?}");
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
}

#[tokio::test]
async fn a_tls_or_malformed_url_is_refused_before_any_connection() {
    let err = RedisIdempotencyStore::connect(&RedisConfig::new("rediss://:hunter2@cache:6380"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::TlsUnsupported), "{err:?}");
    let err = RedisIdempotencyStore::connect(&RedisConfig::new("http://:hunter2@cache"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl), "{err:?}");
    assert!(!err.to_string().contains("hunter2"));
}
