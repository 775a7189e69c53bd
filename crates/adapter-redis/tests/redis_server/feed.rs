//! The feed's stores against a real `redis-server`: the event log (lease,
//! fenced appends, reads across instances, blocking reads, retention and
//! gaps), the listeners, the webhook store (the bound under concurrent
//! creates from several instances) and the delivery queue (each delivery
//! taken by one instance at a time).
//!
//! Every scenario of `domain::feed_testkit` runs against these stores
//! (the module `kit`); the tests after it are Redis's own.
//!
//! Each test has a feed prefix of its own. Two [`Redis`] handles made from
//! the same settings stand for two Maestro instances: two connections,
//! the same keys. Redis's clock is never waited for: leases and listeners
//! age by [`super::age`], old events are written with old ids, and the
//! delivery queue runs on the caller's clock, which the tests set.

use std::{collections::HashSet, time::Duration};

use adapter_redis::{RedisConfig, RedisDeliveryQueue, RedisEventLog, RedisWebhookStore};
use chrono::TimeDelta;
use domain::{
    CustomerId, Delivery, DeliveryQueue, EventId, EventLog, FeedRead, Listeners, PipelineId,
    RegisterWebhookError, Run, RunChange, RunConf, RunEvent, RunId, RunStatus, SourceCursor,
    Timestamp, Webhook, WebhookId, WebhookSecret, WebhookStore, WebhookUrl, feed_testkit::Setup,
};
use tokio::time::Instant;

use super::{NOW, age, raw_connection};

/// Settings whose feed keys are under a fresh prefix of their own.
fn feed_config() -> RedisConfig {
    let mut config = super::config();
    config.feed_key_prefix = format!("{}feed:", config.key_prefix);
    config
}

/// One Maestro instance: a connection of its own to the test server.
async fn instance(config: &RedisConfig) -> adapter_redis::Redis {
    adapter_redis::Redis::connect(config).await.unwrap()
}

async fn log(config: &RedisConfig) -> RedisEventLog {
    RedisEventLog::new(&instance(config).await)
}

fn customer(name: &str) -> CustomerId {
    CustomerId::parse(name).unwrap()
}

fn pipeline() -> PipelineId {
    PipelineId::parse(super::PIPELINE).unwrap()
}

fn at(seconds: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(NOW + seconds, 0).unwrap()
}

/// Run `n` of acme's pipeline, as a change left it in `status`.
fn change(n: u32, status: RunStatus) -> RunChange {
    let mut run = Run::new(
        RunId::parse(&format!("run-{n}")).unwrap(),
        pipeline(),
        status,
        at(i64::from(n)),
    );
    run.updated_at = at(i64::from(n) + 1) + TimeDelta::nanoseconds(7);
    if status == RunStatus::Failed {
        run.trace = Some("boom\n\"quoted\"".to_owned());
    }
    run.conf = RunConf::parse(serde_json::json!({"n": n, "date": "2024-12-18"})).unwrap();
    RunChange::new(customer("acme"), run)
}

fn cursor(text: &str) -> SourceCursor {
    SourceCursor::new(text)
}

/// The events of a read, or a panic on a gap.
fn events(read: FeedRead) -> Vec<RunEvent> {
    match read {
        FeedRead::Events(events) => events,
        FeedRead::Gap => panic!("a gap where events were expected"),
    }
}

fn changes_of(events: &[RunEvent]) -> Vec<RunChange> {
    events.iter().map(|event| event.change.clone()).collect()
}

const TTL: Duration = Duration::from_secs(10);

/// The kit's lifetimes: a day, ten seconds, and a second either side of
/// the ten. Time passes by [`age`], so they cost no waiting but for the
/// read that waits out [`Setup::margin`] with nothing to find; the margin
/// is far more than Redis's own clock moves while a scenario runs. Every
/// store has a feed prefix of its own, so the names need none.
fn kit_setup() -> Setup {
    Setup {
        short: Duration::from_secs(10),
        margin: Duration::from_secs(1),
        ..Setup::paused_clock("")
    }
}

/// A store of the kind `make` builds, on a feed prefix of its own, and
/// that prefix, for [`age`].
async fn fresh<T>(make: impl FnOnce(&adapter_redis::Redis) -> T) -> (T, String) {
    let config = feed_config();
    (make(&instance(&config).await), config.feed_key_prefix)
}

// One test per scenario of the feed's conformance kit, each on stores of
// their own, time passing for the test's own keys by [`age`].
mod kit {
    use super::{RedisDeliveryQueue, RedisEventLog, RedisWebhookStore, age, fresh, kit_setup};

    domain::event_log_conformance_tests! {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        |scenario| {
            let (log, _) = fresh(RedisEventLog::new).await;
            scenario(&log, &kit_setup()).await;
        }
        |scenario| {
            let (log, prefix) = fresh(RedisEventLog::new).await;
            scenario(&log, &kit_setup(), |period| age(&prefix, period)).await;
        }
    }

    domain::listeners_conformance_tests! {
        #[tokio::test]
        |scenario| {
            let (log, prefix) = fresh(RedisEventLog::new).await;
            scenario(&log, &kit_setup(), |period| age(&prefix, period)).await;
        }
    }

    domain::webhook_store_conformance_tests! {
        #[tokio::test]
        |scenario| {
            let (store, _) = fresh(RedisWebhookStore::new).await;
            scenario(&store, &kit_setup()).await;
        }
    }

    domain::delivery_queue_conformance_tests! {
        #[tokio::test]
        |scenario| {
            let (queue, _) = fresh(RedisDeliveryQueue::new).await;
            scenario(&queue, &kit_setup()).await;
        }
    }
}

#[tokio::test]
async fn one_instance_holds_the_lease_and_another_takes_it_over_after_its_ttl() {
    let config = feed_config();
    let (a, b) = (log(&config).await, log(&config).await);

    assert!(a.lease("a", TTL).await.unwrap());
    assert!(!b.lease("b", TTL).await.unwrap());
    // Renewing pushes the end back: after most of the ttl twice, a still
    // holds it.
    age(&config.feed_key_prefix, TTL - Duration::from_secs(2)).await;
    assert!(a.lease("a", TTL).await.unwrap());
    age(&config.feed_key_prefix, TTL - Duration::from_secs(2)).await;
    assert!(!b.lease("b", TTL).await.unwrap());

    // a dies: once its ttl is over, b takes over, and a is refused.
    age(&config.feed_key_prefix, TTL).await;
    assert!(b.lease("b", TTL).await.unwrap());
    assert!(!a.lease("a", TTL).await.unwrap());
}

#[tokio::test]
async fn an_append_by_an_instance_that_lost_the_lease_writes_nothing() {
    let config = feed_config();
    let (a, b) = (log(&config).await, log(&config).await);
    assert!(a.lease("a", TTL).await.unwrap());
    let first = a
        .append("a", &[change(1, RunStatus::Queued)], &cursor("c1"))
        .await
        .unwrap();
    assert_eq!(first.map(|ids| ids.len()), Some(1));

    age(&config.feed_key_prefix, TTL).await;
    assert!(b.lease("b", TTL).await.unwrap());
    let late = a
        .append("a", &[change(2, RunStatus::Running)], &cursor("c2"))
        .await
        .unwrap();

    assert_eq!(late, None);
    assert_eq!(b.source_cursor().await.unwrap(), Some(cursor("c1")));
    let read = events(b.read(None, 100, Duration::ZERO).await.unwrap());
    assert_eq!(changes_of(&read), [change(1, RunStatus::Queued)]);
    // Nor does anyone who never held it.
    let never = b.append("c", &[], &cursor("c3")).await.unwrap();
    assert_eq!(never, None);
}

#[tokio::test]
async fn events_appended_on_one_instance_read_back_exactly_on_another_with_the_same_ids() {
    let config = feed_config();
    let (a, b) = (log(&config).await, log(&config).await);
    assert_eq!(b.head().await.unwrap(), None);
    assert_eq!(b.source_cursor().await.unwrap(), None);
    assert!(a.lease("a", TTL).await.unwrap());
    let changes = [
        change(1, RunStatus::Queued),
        change(1, RunStatus::Running),
        change(1, RunStatus::Failed),
    ];

    let ids = a
        .append("a", &changes, &cursor("c1"))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(ids.len(), 3);
    let read = events(b.read(None, 100, Duration::ZERO).await.unwrap());
    assert_eq!(changes_of(&read), changes);
    let read_ids: Vec<EventId> = read.iter().map(|event| event.id.clone()).collect();
    assert_eq!(read_ids, ids);
    assert_eq!(b.head().await.unwrap().as_ref(), ids.last());
    assert_eq!(b.source_cursor().await.unwrap(), Some(cursor("c1")));
    // Pages of `limit`, after a position.
    let page = events(
        b.read(Some(ids[0].clone()), 1, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(changes_of(&page), [changes[1].clone()]);
    let rest = events(
        b.read(Some(ids[2].clone()), 10, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert!(rest.is_empty());
    // An append of nothing still moves the cursor.
    assert_eq!(
        a.append("a", &[], &cursor("c2")).await.unwrap(),
        Some(Vec::new())
    );
    assert_eq!(b.source_cursor().await.unwrap(), Some(cursor("c2")));
}

#[tokio::test]
async fn a_stored_event_is_readable_json_under_customer_and_run() {
    let config = feed_config();
    let a = log(&config).await;
    assert!(a.lease("a", TTL).await.unwrap());
    let ids = a
        .append("a", &[change(3, RunStatus::Success)], &cursor("c"))
        .await
        .unwrap()
        .unwrap();

    let mut raw = raw_connection().await;
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{}events", config.feed_key_prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, ids[0].as_str());
    assert_eq!(
        entries[0].1,
        [
            "customer",
            "acme",
            "run",
            r#"{"id":"run-3","pipeline_id":"1b33ad2f_33d3_4837_9eeb_83c82c8b909d","status":"SUCCESS","created_at":"2024-12-18T10:30:03Z","updated_at":"2024-12-18T10:30:04.000000007Z","conf":{"date":"2024-12-18","n":3}}"#,
        ]
    );
}

/// Redis's clock, in milliseconds.
async fn redis_now_ms() -> u64 {
    let mut raw = raw_connection().await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
    seconds * 1000 + micros / 1000
}

/// Writes an event of `change` with the id `id` straight into the stream,
/// as an append that long ago would have.
async fn write_old_event(config: &RedisConfig, id: &str, change: &RunChange) {
    let mut raw = raw_connection().await;
    let run = serde_json::json!({
        "id": change.run.id.as_str(),
        "pipeline_id": change.run.pipeline_id.as_str(),
        "status": change.run.status.as_str(),
        "created_at": "2024-12-18T10:30:00Z",
        "updated_at": "2024-12-18T10:30:00Z",
    });
    let _: String = redis::cmd("XADD")
        .arg(format!("{}events", config.feed_key_prefix))
        .arg(id)
        .arg("customer")
        .arg(change.customer.as_str())
        .arg("run")
        .arg(run.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn appends_trim_events_older_than_an_hour_and_a_read_after_a_trimmed_one_is_a_gap() {
    let config = feed_config();
    let a = log(&config).await;
    let now = redis_now_ms().await;
    let two_hours_ago = format!("{}-0", now - 2 * 3_600_000);
    let half_an_hour_ago = format!("{}-0", now - 1_800_000);
    write_old_event(&config, "1000-0", &change(1, RunStatus::Queued)).await;
    write_old_event(&config, &two_hours_ago, &change(1, RunStatus::Running)).await;
    write_old_event(&config, &half_an_hour_ago, &change(1, RunStatus::Success)).await;
    // Nothing is trimmed before an append.
    let all = events(a.read(None, 100, Duration::ZERO).await.unwrap());
    assert_eq!(all.len(), 3);

    assert!(a.lease("a", TTL).await.unwrap());
    let new = a
        .append("a", &[change(2, RunStatus::Queued)], &cursor("c"))
        .await
        .unwrap()
        .unwrap();

    let kept = events(a.read(None, 100, Duration::ZERO).await.unwrap());
    let kept_ids: Vec<&str> = kept.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(kept_ids, [half_an_hour_ago.as_str(), new[0].as_str()]);
    // The newest trimmed id is noted beside the stream.
    let mut raw = raw_connection().await;
    let trimmed: String = redis::cmd("GET")
        .arg(format!("{}events:trimmed", config.feed_key_prefix))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(trimmed, two_hours_ago);
    // After a trimmed event with later ones trimmed too: a gap. After the
    // newest trimmed: nothing was missed.
    let id = |raw: &str| Some(EventId::parse(raw).unwrap());
    let read = a.read(id("1000-0"), 100, Duration::ZERO).await.unwrap();
    assert_eq!(read, FeedRead::Gap);
    let read = a.read(id("999-5"), 100, Duration::ZERO).await.unwrap();
    assert_eq!(read, FeedRead::Gap);
    let read = events(
        a.read(id(&two_hours_ago), 100, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(read, kept);
}

#[tokio::test]
async fn a_read_after_an_id_past_the_head_finds_nothing_yet_and_after_another_form_a_gap() {
    let config = feed_config();
    let a = log(&config).await;
    assert!(a.lease("a", TTL).await.unwrap());
    let ids = a
        .append("a", &[change(1, RunStatus::Queued)], &cursor("c"))
        .await
        .unwrap()
        .unwrap();
    let (ms, _) = ids[0].as_str().split_once('-').unwrap();
    let ms: u64 = ms.parse().unwrap();
    let max = format!("{0}-{0}", u64::MAX);
    for raw in [format!("{ms}-99"), max] {
        let read = a
            .read(Some(EventId::parse(&raw).unwrap()), 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(read, FeedRead::Events(Vec::new()), "{raw}");
    }
    // An id in another form: where it was is unknown.
    let read = a
        .read(Some(EventId::parse("17").unwrap()), 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(read, FeedRead::Gap);
}

#[tokio::test]
async fn a_read_with_nothing_new_waits_its_time_and_answers_nothing() {
    let config = feed_config();
    let a = log(&config).await;
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let read = a.read(None, 10, wait).await.unwrap();
    assert_eq!(read, FeedRead::Events(Vec::new()));
    assert!(started.elapsed() >= wait, "{:?}", started.elapsed());
}

/// The clients of database `db` that Redis holds blocked in `XREAD`.
async fn blocked_readers(db: u32) -> usize {
    let mut raw = raw_connection().await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut raw)
        .await
        .unwrap();
    clients
        .lines()
        .filter(|line| {
            let fields: HashSet<&str> = line.split(' ').collect();
            fields.contains(format!("db={db}").as_str())
                && fields.contains("cmd=xread")
                && line.split(' ').any(|field| {
                    field
                        .strip_prefix("flags=")
                        .is_some_and(|flags| flags.contains('b'))
                })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiting_readers_on_one_instance_share_one_blocking_connection_and_wake_on_another_instances_append()
 {
    // Database 9 is this test's alone, so that Redis's list of clients
    // blocked there tells when this instance's readers wait.
    const DB: u32 = 9;
    let mut config = feed_config();
    config.url = format!("{}/{DB}", super::url().trim_end_matches('/')).into();
    let (a, b) = (log(&config).await, log(&config).await);
    assert!(a.lease("a", TTL).await.unwrap());
    let before = a
        .append("a", &[change(1, RunStatus::Queued)], &cursor("c1"))
        .await
        .unwrap()
        .unwrap();
    let head = b.head().await.unwrap();
    assert_eq!(head.as_ref(), before.last());
    let wait = Duration::from_secs(30);

    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (b, head) = (b.clone(), head.clone());
            tokio::spawn(async move { b.read(head, 100, wait).await })
        })
        .collect();
    let started = Instant::now();
    while blocked_readers(DB).await == 0 {
        assert!(started.elapsed() < wait, "no reader ever blocked");
        tokio::task::yield_now().await;
    }
    assert_eq!(blocked_readers(DB).await, 1, "one blocking connection");
    let appended = a
        .append(
            "a",
            &[change(1, RunStatus::Running), change(1, RunStatus::Success)],
            &cursor("c2"),
        )
        .await
        .unwrap()
        .unwrap();

    for reader in readers {
        let read = events(reader.await.unwrap().unwrap());
        let ids: Vec<EventId> = read.iter().map(|event| event.id.clone()).collect();
        assert_eq!(ids, appended);
        assert_eq!(
            changes_of(&read),
            [change(1, RunStatus::Running), change(1, RunStatus::Success)]
        );
    }
    assert!(started.elapsed() < wait);
    // A reader behind the last batch, after the first new event only,
    // gets the rest at once, from the stream.
    let behind = events(b.read(Some(appended[0].clone()), 100, wait).await.unwrap());
    assert_eq!(changes_of(&behind), [change(1, RunStatus::Success)]);
    // From the oldest, a page of one.
    let from_oldest = events(b.read(None, 1, wait).await.unwrap());
    assert_eq!(changes_of(&from_oldest), [change(1, RunStatus::Queued)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_for_the_next_append_on_another_instance_however_the_two_race() {
    // The append may land before the reader's first read, between that
    // read and the start of the instance's blocking reader, or after: each
    // round races them afresh, on a new log.
    let wait = Duration::from_secs(30);
    for round in 0..20 {
        let config = feed_config();
        let (a, b) = (log(&config).await, log(&config).await);
        assert!(a.lease("a", TTL).await.unwrap());
        let started = Instant::now();
        let reader = tokio::spawn({
            let b = b.clone();
            async move { b.read(None, 100, wait).await }
        });
        let appended = a
            .append("a", &[change(round, RunStatus::Queued)], &cursor("c"))
            .await
            .unwrap()
            .unwrap();
        let read = events(reader.await.unwrap().unwrap());
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].id, appended[0]);
        assert!(started.elapsed() < wait, "round {round} waited it out");
    }
}

#[tokio::test]
async fn listeners_are_the_customers_whose_listening_has_not_ended() {
    let config = feed_config();
    let (a, b) = (log(&config).await, log(&config).await);
    assert!(a.listening().await.unwrap().is_empty());
    a.listen(&customer("acme"), Duration::from_secs(60))
        .await
        .unwrap();
    b.listen(&customer("globex"), Duration::from_secs(5))
        .await
        .unwrap();
    // A shorter renewal on another instance does not cut acme short.
    b.listen(&customer("acme"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        a.listening().await.unwrap(),
        [customer("acme"), customer("globex")]
    );

    age(&config.feed_key_prefix, Duration::from_secs(10)).await;

    assert_eq!(b.listening().await.unwrap(), [customer("acme")]);
    age(&config.feed_key_prefix, Duration::from_secs(60)).await;
    assert!(b.listening().await.unwrap().is_empty());
}

fn webhook(customer_name: &str, n: u8, created: i64) -> Webhook {
    let mut webhook = Webhook::new(
        WebhookId::new([n; 16]),
        customer(customer_name),
        WebhookUrl::parse(&format!("https://hooks.example/{n}"), false).unwrap(),
        WebhookSecret::new([n; 32]),
        at(created),
    );
    webhook.pipeline_ids = vec![pipeline()];
    webhook
}

async fn webhooks(config: &RedisConfig) -> RedisWebhookStore {
    RedisWebhookStore::new(&instance(config).await)
}

#[tokio::test]
async fn webhooks_are_kept_per_customer_oldest_first_and_deleted_by_their_customer_only() {
    let config = feed_config();
    let (a, b) = (webhooks(&config).await, webhooks(&config).await);
    let (first, second) = (webhook("acme", 2, 10), webhook("acme", 1, 20));
    a.create(&second, 10).await.unwrap();
    a.create(&first, 10).await.unwrap();
    b.create(&webhook("globex", 3, 0), 10).await.unwrap();

    assert_eq!(
        b.list(&customer("acme")).await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        b.customers().await.unwrap(),
        [customer("acme"), customer("globex")]
    );
    assert!(!b.delete(&customer("globex"), &first.id).await.unwrap());
    assert!(b.delete(&customer("acme"), &first.id).await.unwrap());
    assert!(!a.delete(&customer("acme"), &first.id).await.unwrap());
    assert_eq!(
        a.list(&customer("acme")).await.unwrap(),
        std::slice::from_ref(&second)
    );
    assert!(a.delete(&customer("acme"), &second.id).await.unwrap());
    assert!(a.list(&customer("acme")).await.unwrap().is_empty());
    assert_eq!(a.customers().await.unwrap(), [customer("globex")]);
}

#[tokio::test]
async fn a_webhook_is_stored_as_json_with_its_secret_in_base64() {
    let config = feed_config();
    let store = webhooks(&config).await;
    let webhook = webhook("acme", 7, 0);
    store.create(&webhook, 10).await.unwrap();

    let mut raw = raw_connection().await;
    let stored: String = redis::cmd("HGET")
        .arg(format!("{}webhooks:61636d65", config.feed_key_prefix))
        .arg(webhook.id.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        json["secret"],
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
    );
    assert_eq!(json["url"], "https://hooks.example/7");
    assert_eq!(
        json["events"],
        serde_json::json!(["run.queued", "run.running", "run.succeeded", "run.failed"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_creates_from_several_instances_only_the_bound_succeed() {
    let config = feed_config();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(webhooks(&config).await);
    }
    let creates: Vec<_> = (0..30_u8)
        .map(|n| {
            let store = stores[usize::from(n) % stores.len()].clone();
            tokio::spawn(async move { store.create(&webhook("acme", n, 0), 10).await })
        })
        .collect();
    let mut created = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(()) => created += 1,
            Err(RegisterWebhookError::TooMany { limit: 10 }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(stores[0].list(&customer("acme")).await.unwrap().len(), 10);
    // At the bound, replacing a webhook of the same id is no new one.
    let kept = stores[1].list(&customer("acme")).await.unwrap()[0].clone();
    stores[1].create(&kept, 10).await.unwrap();
}

async fn queue(config: &RedisConfig) -> RedisDeliveryQueue {
    RedisDeliveryQueue::new(&instance(config).await)
}

/// The delivery of acme's event `n` to webhook 1, first due at `due`
/// seconds.
fn delivery(n: u32, due: i64) -> Delivery {
    let event = RunEvent::new(
        EventId::parse(&format!("1734517800000-{n}")).unwrap(),
        change(n, RunStatus::Success),
    );
    Delivery::new(&webhook("acme", 1, 0), event, at(due))
}

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn enqueued_deliveries_are_known_once_with_how_far_dispatching_went() {
    let config = feed_config();
    let q = queue(&config).await;
    assert_eq!(q.dispatched().await.unwrap(), None);
    assert_eq!(q.pending().await.unwrap(), (0, None));
    let up_to = EventId::parse("1734517800000-2").unwrap();

    q.enqueue(&[delivery(1, 0), delivery(2, 5)], &up_to)
        .await
        .unwrap();
    // Again, as after a crash before the next cursor: no second copy.
    let mut again = delivery(1, 9);
    again.attempts = 4;
    q.enqueue(
        &[again, delivery(3, 1)],
        &EventId::parse("1734517800000-3").unwrap(),
    )
    .await
    .unwrap();

    assert_eq!(
        q.dispatched().await.unwrap().unwrap().as_str(),
        "1734517800000-3"
    );
    assert_eq!(q.pending().await.unwrap(), (3, Some(at(0))));
    let taken = q.take_due(at(100), 10, "w", LEASE).await.unwrap();
    assert_eq!(taken, [delivery(1, 0), delivery(3, 1), delivery(2, 5)]);
}

#[tokio::test]
async fn a_delivery_is_taken_when_due_and_not_again_until_its_lease_ends() {
    let config = feed_config();
    let (a, b) = (queue(&config).await, queue(&config).await);
    a.enqueue(
        &[delivery(1, 0), delivery(2, 60)],
        &EventId::parse("9-9").unwrap(),
    )
    .await
    .unwrap();

    assert_eq!(a.take_due(at(-1), 10, "a", LEASE).await.unwrap(), []);
    assert_eq!(
        a.take_due(at(0), 10, "a", LEASE).await.unwrap(),
        [delivery(1, 0)]
    );
    // Taken: not for b, nor for a again, while the lease lasts.
    assert_eq!(b.take_due(at(29), 10, "b", LEASE).await.unwrap(), []);
    // a died: at the lease's end, b takes it, as it was.
    assert_eq!(
        b.take_due(at(30), 1, "b", LEASE).await.unwrap(),
        [delivery(1, 0)]
    );
    assert_eq!(b.pending().await.unwrap(), (2, Some(at(0))));
}

#[tokio::test]
async fn a_retried_delivery_comes_back_at_its_due_time_with_its_attempts_and_done_ones_never() {
    let config = feed_config();
    let q = queue(&config).await;
    q.enqueue(
        &[delivery(1, 0), delivery(2, 0), delivery(3, 0)],
        &EventId::parse("9-9").unwrap(),
    )
    .await
    .unwrap();
    let taken = q.take_due(at(0), 10, "w", LEASE).await.unwrap();
    assert_eq!(taken.len(), 3);

    q.retry(&taken[0].id, 1, at(5)).await.unwrap();
    q.done(&taken[1].id).await.unwrap();
    q.give_up(&taken[2].id).await.unwrap();

    assert_eq!(q.pending().await.unwrap(), (1, Some(at(0))));
    assert_eq!(q.take_due(at(4), 10, "w", LEASE).await.unwrap(), []);
    let mut retried = delivery(1, 0);
    retried.attempts = 1;
    retried.due = at(5);
    assert_eq!(q.take_due(at(5), 10, "w", LEASE).await.unwrap(), [retried]);
    // A retry of a delivery made meanwhile does not bring it back.
    q.retry(&taken[1].id, 1, at(6)).await.unwrap();
    assert_eq!(q.take_due(at(1000), 10, "w", LEASE).await.unwrap().len(), 1);
    q.done(&taken[0].id).await.unwrap();
    assert_eq!(q.pending().await.unwrap(), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_instances_taking_due_deliveries_at_once_each_delivery_goes_to_one() {
    let config = feed_config();
    let (a, b) = (queue(&config).await, queue(&config).await);
    let all: Vec<Delivery> = (0..200).map(|n| delivery(n, 0)).collect();
    a.enqueue(&all, &EventId::parse("9-9").unwrap())
        .await
        .unwrap();

    let takers: Vec<_> = [a, b]
        .into_iter()
        .flat_map(|q| (0..10).map(move |_| q.clone()))
        .map(|q| tokio::spawn(async move { q.take_due(at(0), 15, "w", LEASE).await.unwrap() }))
        .collect();
    let mut seen = HashSet::new();
    for taker in takers {
        for taken in taker.await.unwrap() {
            assert!(seen.insert(taken.id.clone()), "{:?} twice", taken.id);
        }
    }
    assert_eq!(seen.len(), 200);
}
