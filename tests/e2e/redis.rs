//! `maestro` instances sharing one real Redis: `Idempotency-Key` holds
//! across them, and across an instance killed in the middle of an execute;
//! the feed of run changes reaches a stream on any instance, the upstream
//! is watched by one instance at a time, which another replaces when it is
//! killed, losing and repeating nothing; a webhook delivery is made by one
//! instance at a time, by another when the one that failed it dies, and
//! after every instance was stopped. Needs `MAESTRO_TEST_REDIS_URL`
//! (`scripts/redis-test-server.sh` starts a server and prints it).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::MockServer;

use crate::events::{
    EventStream, Frame, Receiver, by_delivery, finished, register_webhook, statuses, told,
};
use crate::fake_airflow::{self, DAG};
use crate::fake_platform::{FakePlatform, SERVICE_TOKEN, memory_config, memory_config_with_runs};
use crate::helpers::{ACME, ACTIVE, SECRET, TestApp, concurrent_executes, replayed, token};
use crate::maestro::Maestro;

fn redis_url() -> String {
    std::env::var("MAESTRO_TEST_REDIS_URL").expect("MAESTRO_TEST_REDIS_URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_start_exactly_one_run_for_one_key() {
    let upstream = FakePlatform::start(memory_config(1000)).await;
    let env = vec![("MAESTRO_REDIS_URL", redis_url())];
    let first = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env.clone()).await);
    let second = Arc::new(TestApp::gateway(upstream.url(), Vec::new(), env).await);

    // A key of its own, since the Redis server may outlive one test run.
    let key = format!("shared-{}", uuid::Uuid::new_v4());
    let run_ids = concurrent_executes(&[first.clone(), second.clone()], &key, 200).await;
    assert_eq!(run_ids.len(), 1, "both instances answer with the one run");
    assert_eq!(first.run_count(ACME, ACTIVE).await, "1");
    let triggers = upstream
        .requests()
        .await
        .iter()
        .filter(|request| request.url.path().ends_with("/pipeline/execute"))
        .count();
    assert_eq!(triggers, 1, "the upstream saw exactly one execute");

    // A replay from the other instance after the fact.
    let again = second.execute_with_key(ACME, ACTIVE, &key).await;
    assert!(replayed(&again));
    let body: Value = again.json().await.unwrap();
    assert!(run_ids.contains(body["data"]["run_id"].as_str().unwrap()));
}

/// The instances' upstream timeout: their claims of a key are in flight
/// for twice that and 5 s (7 s), the shortest the wiring allows.
const TIMEOUT_MS: &str = "1000";

/// `maestro` on the Airflow backend in front of `airflow`, keeping its
/// `Idempotency-Key` claims in the test Redis, and its address.
async fn airflow_gateway(airflow: &MockServer) -> (Maestro, String) {
    let airflow = airflow.uri();
    let redis = redis_url();
    // Starting a process and reading its output block: off the runtime.
    tokio::task::spawn_blocking(move || {
        let maestro = Maestro::start(&[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_BACKEND", "airflow"),
            ("MAESTRO_AIRFLOW_URL", &airflow),
            ("MAESTRO_AIRFLOW_TOKEN", "airflow-token"),
            ("MAESTRO_UPSTREAM_TIMEOUT_MS", TIMEOUT_MS),
            ("MAESTRO_REDIS_URL", &redis),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_LOG_FORMAT", "json"),
        ]);
        let addr = maestro.addr();
        (maestro, addr)
    })
    .await
    .unwrap()
}

/// Acme's execute of the DAG with `key`, sent to the instance at `addr`:
/// the status, the `Retry-After` header, whether it is a replay, and the
/// body.
async fn execute(addr: &str, key: &str) -> reqwest::Result<(StatusCode, Option<u64>, bool, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/platform/pipeline/execute"))
        .bearer_auth(token(ACME))
        .header("Idempotency-Key", key)
        .json(&json!({ "pipeline_id": DAG }))
        .send()
        .await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let replayed = replayed(&response);
    Ok((status, retry_after, replayed, response.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_instance_holding_the_key_was_killed_gets_its_run_and_starts_no_second() {
    // A slow upstream: its first post makes its run, then never answers.
    let (airflow, runs, mut posts) = fake_airflow::start(Duration::from_secs(3600)).await;
    let (mut first, first_addr) = airflow_gateway(&airflow).await;
    let (_second, second_addr) = airflow_gateway(&airflow).await;
    // A key of its own, since the Redis server may outlive one test run.
    let key = format!("killed-{}", uuid::Uuid::new_v4());

    // The first instance claims the key and posts the run, which Airflow
    // makes; before Airflow answers, the instance is killed.
    let lost = tokio::spawn({
        let key = key.clone();
        async move { execute(&first_addr, &key).await }
    });
    posts
        .recv()
        .await
        .expect("the first instance posts the run");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(lost.await.unwrap().is_err(), "the killed instance answered");
    assert_eq!(runs.lock().unwrap().len(), 1, "Airflow made the run");

    // The client retries with the key on the other instance, as the 409
    // tells it to, until the dead instance's claim passes its deadline.
    let patience = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    let (status, replayed, body) = loop {
        let (status, retry_after, replayed, body) = execute(&second_addr, &key).await.unwrap();
        if status != StatusCode::CONFLICT {
            break (status, replayed, body);
        }
        assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyInProgress");
        refused += 1;
        assert!(Instant::now() < patience, "the key stayed in flight");
        let retry_after = retry_after.expect("a 409 with Retry-After");
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
    };
    assert!(
        refused > 0,
        "the dead instance's claim was in flight at first, not released"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!replayed, "the retry ran: nothing had been kept");
    let made = runs.lock().unwrap()[0]["dag_run_id"].clone();
    assert_eq!(
        body["data"]["run_id"], made,
        "the answer is the run Airflow made"
    );
    assert_eq!(runs.lock().unwrap().len(), 1, "no second run");

    let (status, _, replayed, again) = execute(&second_addr, &key).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(replayed);
    assert_eq!(again, body);
    assert_eq!(runs.lock().unwrap().len(), 1);
}

// The feed of run changes and the webhooks across instances. Each test runs
// two instances on the Platform-API backend, in front of one fake upstream
// (so that they see the same runs), sharing one Redis database of its own.

/// How often the instances ask the upstream for run changes: often, so
/// that the tests are short.
const POLL: Duration = Duration::from_millis(150);

/// How long a test waits for what the feed tells within a few polls
/// (with room for a busy machine).
const SOON: Duration = Duration::from_secs(30);

/// The longest a dead holder's feed lease keeps the others out: its ttl
/// (10 s), then a third of it until the others' next try.
const TAKEOVER: Duration = Duration::from_millis(13_334);

/// The database of the test Redis server each test keeps its feed in: the
/// binary has no setting for the feed's key prefix, and tests running at
/// once must not share a lease, a log or a queue.
const DB_STREAMS: u8 = 9;
const DB_POLLING: u8 = 10;
const DB_TAKEOVER: u8 = 11;
const DB_RETRY: u8 = 12;
const DB_RESTART: u8 = 13;

/// The URL of database `db` of the test server, emptied first: the server
/// may outlive a test run, and an old run's lease, log or deliveries would
/// mislead this one.
async fn fresh_database(db: u8) -> String {
    let mut url = reqwest::Url::parse(&redis_url()).unwrap();
    url.set_path(&format!("/{db}"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut connection)
        .await
        .expect("Redis empties the database");
    url.to_string()
}

/// The names an instance calls the upstream by: each its own for the same
/// address, so that the `Host` header of a request tells which one made
/// it.
const LOOPBACK: &str = "127.0.0.1";
const LOCALHOST: &str = "localhost";

/// The fake upstream the instances of a test share, and their Redis
/// database.
struct Cluster {
    upstream: FakePlatform,
    redis: String,
}

/// A `maestro` instance of a [`Cluster`].
struct Instance {
    name: String,
    /// The name it calls the upstream by.
    host: &'static str,
    maestro: Maestro,
    base: String,
}

impl Cluster {
    /// A fresh upstream whose runs take `run_duration`, and database `db`
    /// emptied.
    async fn start(db: u8, run_duration: Duration) -> Self {
        let upstream = FakePlatform::start(memory_config_with_runs(10, run_duration)).await;
        Self {
            upstream,
            redis: fresh_database(db).await,
        }
    }

    /// Starts an instance named `name` that calls the upstream by `host`.
    async fn instance(&self, name: &str, host: &'static str) -> Instance {
        let url = self.upstream.url().replace(LOOPBACK, host);
        let redis = self.redis.clone();
        let instance = name.to_owned();
        let poll = POLL.as_millis().to_string();
        // Starting a process and reading its output block: off the runtime.
        let (maestro, addr) = tokio::task::spawn_blocking(move || {
            let maestro = Maestro::start_platform_api(
                &url,
                SERVICE_TOKEN,
                &[],
                &[
                    ("MAESTRO_REDIS_URL", &redis),
                    ("MAESTRO_EVENTS_POLL_MS", &poll),
                    ("MAESTRO_WEBHOOKS_ALLOW_INSECURE", "true"),
                    ("MAESTRO_INSTANCE_ID", &instance),
                ],
            );
            let addr = maestro.addr();
            (maestro, addr)
        })
        .await
        .unwrap();
        Instance {
            name: name.to_owned(),
            host,
            maestro,
            base: format!("http://{addr}"),
        }
    }

    /// The feed's polls of `customer` the upstream got so far, in order:
    /// the name of the host each was sent to, which tells the instance.
    /// A poll lists the customer's pipelines (`GET /pipelines`), then
    /// reads the runs of each; nothing else of the tests lists them.
    async fn polls(&self, customer: &str) -> Vec<String> {
        self.upstream
            .requests()
            .await
            .iter()
            .filter(|request| {
                request.method.as_str() == "GET"
                    && request.url.path().ends_with("/pipelines")
                    && request
                        .headers
                        .get("x-customer-id")
                        .is_some_and(|value| value == customer)
            })
            .map(|request| {
                let host = request.headers["host"].to_str().unwrap();
                host.rsplit_once(':')
                    .map_or(host, |(name, _)| name)
                    .to_owned()
            })
            .collect()
    }

    /// Waits until the upstream got `count` polls of `customer`, and
    /// answers them all.
    async fn wait_for_polls(&self, customer: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + SOON;
        loop {
            let polls = self.polls(customer).await;
            if polls.len() >= count {
                return polls;
            }
            assert!(
                Instant::now() < deadline,
                "{} polls of {customer}, not {count}",
                polls.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the feed watches `customer`: a source polls a customer
    /// new to it from then on, so a run started before its first poll
    /// ended would be past. A second poll starts after the first ended.
    async fn wait_until_watched(&self, customer: &str) {
        let before = self.polls(customer).await.len();
        self.wait_for_polls(customer, before + 2).await;
    }
}

impl Instance {
    /// Acme's event stream on this instance, from now.
    async fn stream(&self) -> EventStream {
        EventStream::open(&self.base, ACME, "", None).await
    }

    /// Acme's event stream on this instance, after `last_event_id`.
    async fn resume(&self, last_event_id: &str) -> EventStream {
        EventStream::open(&self.base, ACME, "", Some(last_event_id)).await
    }

    /// Executes acme's active pipeline; answers the run id.
    async fn execute(&self) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/platform/pipeline/execute", self.base))
            .bearer_auth(token(ACME))
            .json(&json!({ "pipeline_id": ACTIVE }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["run_id"].as_str().unwrap().to_owned()
    }

    /// Cancels a run of acme's active pipeline.
    async fn cancel(&self, run_id: &str) {
        let encoded =
            percent_encoding::utf8_percent_encode(run_id, percent_encoding::NON_ALPHANUMERIC);
        let response = reqwest::Client::new()
            .post(format!(
                "{}/platform/pipeline/{ACTIVE}/pipeline_run/{encoded}/cancel",
                self.base
            ))
            .bearer_auth(token(ACME))
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
    }

    /// Whether a JSON log line of the instance so far satisfies `find`.
    fn logged(&self, find: impl Fn(&Value) -> bool) -> bool {
        self.maestro
            .all_output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|line| find(&line))
    }

    /// Whether the instance took the feed's lease so far.
    fn took_lease(&self) -> bool {
        self.logged(|line| {
            line["message"] == "took the feed's lease: watching the engine"
                && line["holder"] == self.name.as_str()
        })
    }

    /// Whether the instance made a failed attempt of delivery `id`.
    fn failed_delivery(&self, id: &str) -> bool {
        self.logged(|line| {
            line["message"] == "a webhook delivery failed; it will be retried"
                && line["delivery"] == id
        })
    }

    /// Kills the instance at once (SIGKILL): no shutdown of any kind.
    fn kill(&mut self) {
        self.maestro.child.kill().unwrap();
        self.maestro.child.wait().unwrap();
    }

    /// Stops the instance with SIGTERM and waits until it exited cleanly.
    fn stop(&mut self) {
        self.maestro.terminate();
        assert!(self.maestro.wait_exit().success());
    }
}

/// Waits until `holds` is true of exactly one of `instances`, and answers
/// its index; panics when it is true of more.
async fn the_one(instances: &[&Instance], what: &str, holds: impl Fn(&Instance) -> bool) -> usize {
    let deadline = Instant::now() + SOON;
    loop {
        let which: Vec<usize> = (0..instances.len())
            .filter(|&i| holds(instances[i]))
            .collect();
        match which.as_slice() {
            [one] => return *one,
            [] => assert!(Instant::now() < deadline, "no instance {what}"),
            more => panic!("{} instances {what}", more.len()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that no event id of `frames` repeats.
fn assert_ids_unique(frames: &[Frame]) {
    let ids: HashSet<Option<&str>> = frames.iter().map(|frame| frame.id.as_deref()).collect();
    assert_eq!(
        ids.len(),
        frames.len(),
        "an event id repeats: {:#?}",
        told(frames)
    );
    assert!(frames.iter().all(|frame| frame.id.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_either_instance_tells_every_change_of_runs_started_through_the_other() {
    let cluster = Cluster::start(DB_STREAMS, Duration::from_secs(4)).await;
    let a = cluster.instance("streams-a", LOCALHOST).await;
    let b = cluster.instance("streams-b", LOOPBACK).await;
    let mut on_a = a.stream().await;
    let mut on_b = b.stream().await;
    cluster.wait_until_watched(ACME).await;

    // The first runs at once; the second waits for it.
    let first = a.execute().await;
    let second = b.execute().await;
    let both_finished = |frames: &[Frame]| finished(frames, &first) && finished(frames, &second);
    let seen_on_b = on_b
        .read_until(SOON, "both runs finished", both_finished)
        .await;
    let seen_on_a = on_a
        .read_until(SOON, "both runs finished", both_finished)
        .await;

    assert_eq!(statuses(&seen_on_b, &first), ["RUNNING", "SUCCESS"]);
    assert_eq!(
        statuses(&seen_on_b, &second),
        ["QUEUED", "RUNNING", "SUCCESS"]
    );
    assert!(
        seen_on_b
            .iter()
            .all(|frame| frame.event == "run" && [&first, &second].contains(&&frame.run_id())),
        "{:#?}",
        told(&seen_on_b)
    );
    assert_ids_unique(&seen_on_b);
    assert_eq!(
        told(&seen_on_a),
        told(&seen_on_b),
        "both instances tell the same events, with the same ids, in the same order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_polled_by_the_lease_holder_alone_at_the_rate_of_one_instance() {
    let cluster = Cluster::start(DB_POLLING, Duration::from_secs(3600)).await;
    let a = cluster.instance("polling-a", LOCALHOST).await;
    let b = cluster.instance("polling-b", LOOPBACK).await;
    // A stream on each: both have a customer to poll for.
    let _on_a = a.stream().await;
    let _on_b = b.stream().await;
    let instances = [&a, &b];
    let holder = instances[the_one(&instances, "took the lease", Instance::took_lease).await];
    cluster.wait_until_watched(ACME).await;

    const POLLS: u32 = 20;
    let before = cluster.polls(ACME).await.len();
    let started = Instant::now();
    let polls = cluster
        .wait_for_polls(ACME, before + POLLS as usize + 1)
        .await;
    let took = started.elapsed();
    println!(
        "{POLLS} intervals of polls took {took:?} ({:?} each; the interval is {POLL:?}); \
         {} polls in all, all by {}",
        took / POLLS,
        polls.len(),
        holder.name
    );
    assert!(
        polls.iter().all(|host| host == holder.host),
        "every poll came from {} ({}): {polls:?}",
        holder.name,
        holder.host
    );
    // One poller waits the interval between polls; two would poll twice
    // as often.
    assert!(
        took >= POLL * POLLS,
        "{} polls in {took:?}: faster than one every {POLL:?}",
        POLLS + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_moves_to_the_other_instance_when_the_holder_is_killed_and_loses_or_repeats_nothing()
 {
    // Runs stay RUNNING: the test ends them by cancelling, when it chooses.
    let cluster = Cluster::start(DB_TAKEOVER, Duration::from_secs(3600)).await;
    let a = cluster.instance("takeover-a", LOCALHOST).await;
    let b = cluster.instance("takeover-b", LOOPBACK).await;
    let holder = the_one(&[&a, &b], "took the lease", Instance::took_lease).await;
    let (mut holder, survivor) = if holder == 0 { (a, b) } else { (b, a) };
    // A stream on the survivor, which stays; one on the holder, which the
    // kill cuts, and which the client resumes on the survivor.
    let mut staying = survivor.stream().await;
    let mut cut = holder.stream().await;
    cluster.wait_until_watched(ACME).await;

    let first = survivor.execute().await;
    let second = survivor.execute().await;
    let both_told = |frames: &[Frame]| {
        statuses(frames, &first) == ["RUNNING"] && statuses(frames, &second) == ["QUEUED"]
    };
    staying.read_until(SOON, "both runs told", both_told).await;
    let before_the_kill = cut.read_until(SOON, "both runs told", both_told).await;
    let last_id = before_the_kill.last().unwrap().id.clone().unwrap();

    holder.kill();
    let killed = Instant::now();
    assert!(cut.ended(SOON).await, "the killed instance's stream ended");
    let polls_before = cluster.polls(ACME).await.len();
    // Changes while nobody watches the upstream: the first run ends, the
    // second starts, a third is queued.
    survivor.cancel(&first).await;
    let third = survivor.execute().await;

    let survivor_took = the_one(&[&survivor], "took the lease", Instance::took_lease).await;
    assert_eq!(survivor_took, 0);
    let took_over = killed.elapsed();
    let told_again = |frames: &[Frame]| {
        statuses(frames, &first).ends_with(&["FAILED".to_owned()])
            && statuses(frames, &second).ends_with(&["RUNNING".to_owned()])
            && statuses(frames, &third) == ["QUEUED"]
    };
    staying
        .read_until(SOON, "the changes made meanwhile", told_again)
        .await;
    let caught_up = killed.elapsed();
    let polls = cluster.polls(ACME).await;
    assert!(
        polls[polls_before..]
            .iter()
            .all(|host| host == survivor.host),
        "only the survivor polls: {:?}",
        &polls[polls_before..]
    );

    survivor.cancel(&second).await;
    staying
        .read_until(SOON, "the second failed and the third started", |frames| {
            statuses(frames, &second).ends_with(&["FAILED".to_owned()])
                && statuses(frames, &third).ends_with(&["RUNNING".to_owned()])
        })
        .await;
    survivor.cancel(&third).await;
    let all = staying
        .read_until(SOON, "the third failed", |frames| finished(frames, &third))
        .await;
    println!(
        "the survivor took the lease {took_over:?} after the kill, and told what changed \
         meanwhile {caught_up:?} after it (bound: {TAKEOVER:?} and a poll)"
    );
    assert!(
        took_over <= TAKEOVER + Duration::from_secs(2),
        "the lease moved after {took_over:?}"
    );

    assert_eq!(statuses(&all, &first), ["RUNNING", "FAILED"]);
    assert_eq!(statuses(&all, &second), ["QUEUED", "RUNNING", "FAILED"]);
    assert_eq!(statuses(&all, &third), ["QUEUED", "RUNNING", "FAILED"]);
    assert_eq!(all.len(), 8, "{:#?}", told(&all));
    assert_ids_unique(&all);

    // The cut stream's client resumes on the survivor from its last id:
    // it gets exactly what it missed.
    let mut resumed = survivor.resume(&last_id).await;
    let rest = resumed
        .read_until(SOON, "the third failed", |frames| finished(frames, &third))
        .await;
    let mut whole = told(&before_the_kill);
    whole.extend(told(&rest));
    assert_eq!(
        whole,
        told(&all),
        "the resumed stream tells what the other told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_made_once_per_attempt_and_by_the_other_instance_after_a_kill() {
    // Runs stay RUNNING: the test ends them by cancelling, when it chooses.
    let cluster = Cluster::start(DB_RETRY, Duration::from_secs(3600)).await;
    let receiver = Receiver::start(&[500], 200).await;
    let mut instances = [
        cluster.instance("retry-a", LOCALHOST).await,
        cluster.instance("retry-b", LOOPBACK).await,
    ];
    let [a, b] = &instances;
    let holder = the_one(&[a, b], "took the lease", Instance::took_lease).await;
    let (_, secret) = register_webhook(&a.base, ACME, &json!({ "url": receiver.url() })).await;
    cluster.wait_until_watched(ACME).await;

    // Four events: the first run RUNNING, the second QUEUED; the first
    // FAILED, the second RUNNING.
    let first = b.execute().await;
    let second = b.execute().await;
    receiver
        .wait_until(SOON, "the first two events", |attempts| {
            by_delivery(attempts).len() >= 2
        })
        .await;
    b.cancel(&first).await;
    let attempts = receiver
        .wait_until(
            SOON,
            "four events delivered, one of them failed",
            |attempts| {
                let deliveries = by_delivery(attempts);
                deliveries.len() == 4
                    && deliveries
                        .values()
                        .filter(|tried| tried.iter().any(|attempt| attempt.answered == 200))
                        .count()
                        == 3
            },
        )
        .await;
    // Deliveries go out concurrently: the one the receiver refused is not
    // necessarily the first recorded.
    let refused: Vec<_> = attempts
        .iter()
        .filter(|attempt| attempt.answered == 500)
        .collect();
    assert_eq!(refused.len(), 1, "the receiver refused exactly one attempt");
    let failed = refused[0].clone();

    // The instance that made the failed attempt is killed; the other makes
    // the next attempt when it is due, 5 s after the failure.
    let failing = the_one(&[a, b], "made the failed attempt", |instance| {
        instance.failed_delivery(&failed.id)
    })
    .await;
    instances[failing].kill();
    let killed = Instant::now();
    let survivor = &instances[1 - failing];
    let killed_holder = failing == holder;
    let attempts = receiver
        .wait_until(
            // Within the retry's 5 s, or, had the kill come before the
            // failure was recorded, once the dead worker's 60 s lease ends.
            Duration::from_secs(90),
            "the failed delivery made again",
            |attempts| {
                attempts
                    .iter()
                    .any(|attempt| attempt.id == failed.id && attempt.answered == 200)
            },
        )
        .await;
    let again = attempts
        .iter()
        .find(|attempt| attempt.id == failed.id && attempt.answered == 200)
        .unwrap()
        .clone();
    println!(
        "{} made the failed attempt (it held the feed: {killed_holder}); {} made the next \
         {:?} after the failure, {:?} after the kill",
        instances[failing].name,
        survivor.name,
        again.began - failed.ended,
        again.began.duration_since(killed),
    );

    // The feed goes on: the second run's end reaches the webhook too.
    survivor.cancel(&second).await;
    let attempts = receiver
        .wait_until(SOON + TAKEOVER, "the fifth event delivered", |attempts| {
            by_delivery(attempts).len() == 5
                && attempts
                    .iter()
                    .filter(|attempt| attempt.answered == 200)
                    .count()
                    == 5
        })
        .await;

    let deliveries = by_delivery(&attempts);
    for (id, tried) in &deliveries {
        let answers: Vec<u16> = tried.iter().map(|attempt| attempt.answered).collect();
        if *id == failed.id {
            assert_eq!(answers, [500, 200], "{id}");
        } else {
            assert_eq!(answers, [200], "{id} was delivered more than once");
        }
        for attempt in tried {
            assert!(!attempt.overlapped, "two attempts of {id} at once");
            assert!(attempt.verifies(&secret), "a bad signature on {id}");
            assert_eq!(attempt.body, tried[0].body, "{id}'s body changed");
        }
    }
    let pairs: HashSet<(&str, &str)> = attempts
        .iter()
        .map(|attempt| (attempt.id.as_str(), attempt.timestamp.as_str()))
        .collect();
    assert_eq!(pairs.len(), attempts.len(), "an attempt was made twice");
    assert!(
        again.began - failed.ended >= Duration::from_millis(4900),
        "the retry came {:?} after the failure, not about 5 s",
        again.began - failed.ended
    );
    let mut told: Vec<(String, String)> = deliveries
        .values()
        .map(|tried| (tried[0].run_id(), tried[0].event_type()))
        .collect();
    told.sort();
    let mut expected = vec![
        (first.clone(), "run.running".to_owned()),
        (first.clone(), "run.failed".to_owned()),
        (second.clone(), "run.queued".to_owned()),
        (second.clone(), "run.running".to_owned()),
        (second.clone(), "run.failed".to_owned()),
    ];
    expected.sort();
    assert_eq!(told, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delivery_is_made_after_every_instance_was_stopped_and_one_started_again() {
    let cluster = Cluster::start(DB_RESTART, Duration::from_secs(3600)).await;
    let receiver = Receiver::start(&[], 500).await;
    let mut a = cluster.instance("restart-a", LOCALHOST).await;
    let mut b = cluster.instance("restart-b", LOOPBACK).await;
    let (_, secret) = register_webhook(
        &a.base,
        ACME,
        &json!({ "url": receiver.url(), "events": ["run.running"] }),
    )
    .await;
    cluster.wait_until_watched(ACME).await;

    let run = b.execute().await;
    let attempts = receiver
        .wait_until(SOON, "a failed attempt", |attempts| !attempts.is_empty())
        .await;
    let failed = attempts[0].clone();
    assert_eq!(failed.run_id(), run);
    let stopping = Instant::now();
    a.stop();
    b.stop();
    let stopped = stopping.elapsed();

    receiver.answer_otherwise(200);
    let restarted = Instant::now();
    let _c = cluster.instance("restart-c", LOOPBACK).await;
    let attempts = receiver
        .wait_until(
            // The next attempt is due 5 s after the first failed, or 30 s
            // after a second failed one.
            Duration::from_secs(60),
            "the pending delivery made",
            |attempts| attempts.iter().any(|attempt| attempt.answered == 200),
        )
        .await;
    let delivered = attempts.last().unwrap();
    println!(
        "both instances stopped in {stopped:?}; delivered {:?} after the restart, {:?} after \
         the failed attempt ({} attempts in all)",
        delivered.began.duration_since(restarted),
        delivered.began - failed.ended,
        attempts.len()
    );
    assert!(delivered.began > restarted);
    assert_eq!(delivered.answered, 200);
    for attempt in &attempts {
        assert_eq!(attempt.id, failed.id, "one delivery");
        assert_eq!(attempt.body, failed.body);
        assert!(attempt.verifies(&secret));
    }
    assert!(
        attempts[..attempts.len() - 1]
            .iter()
            .all(|attempt| attempt.answered == 500)
    );
    assert_eq!(delivered.event_type(), "run.running");
}

/// `maestro` on the memory backend, limiting each customer to 60 requests
/// a minute with a burst of `burst`, shared through the test Redis, and
/// its address. Redis is given a second to answer a check: what is tested
/// here is the sharing; the fallback has tests of its own.
async fn limited_instance(burst: u32) -> (Maestro, String) {
    let redis = redis_url();
    tokio::task::spawn_blocking(move || {
        let maestro = Maestro::start(&[
            ("MAESTRO_BIND", "127.0.0.1:0"),
            ("MAESTRO_JWT_HS256_SECRET", SECRET),
            ("MAESTRO_REDIS_URL", &redis),
            ("MAESTRO_RATE_LIMIT_PER_MINUTE", "60"),
            ("MAESTRO_RATE_LIMIT_BURST", &burst.to_string()),
            ("MAESTRO_RATE_LIMIT_REDIS_TIMEOUT_MS", "1000"),
            ("MAESTRO_LOG_FORMAT", "json"),
        ]);
        let addr = maestro.addr();
        (maestro, addr)
    })
    .await
    .unwrap()
}

/// The sum of an instance's `maestro_rate_limit_fallbacks_total`.
async fn rate_limit_fallbacks(addr: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with("maestro_rate_limit_fallbacks_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_under_load_hold_the_configured_limit_together_not_twice_it() {
    const BURST: u32 = 20;
    let (_first, first) = limited_instance(BURST).await;
    let (_second, second) = limited_instance(BURST).await;
    // A customer of its own, since the Redis server may outlive one run.
    let customer = format!("limits-{}", uuid::Uuid::new_v4().simple());
    let token = token(&customer);

    // Four clients on each instance, 15 requests each: 120 in all, as fast
    // as they are answered.
    let started = Instant::now();
    let mut clients = Vec::new();
    for addr in [&first, &second] {
        for _ in 0..4 {
            let (addr, token) = (addr.clone(), token.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                for _ in 0..15 {
                    let response = client
                        .get(format!("http://{addr}/platform/pipelines"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
                    answers.push((response.status(), retry_after));
                }
                answers
            }));
        }
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let took = started.elapsed();

    let allowed = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    for (status, retry_after) in &answers {
        assert!(
            *status == StatusCode::OK
                || (*status == StatusCode::TOO_MANY_REQUESTS && *retry_after >= Some(1)),
            "{status} with Retry-After {retry_after:?}"
        );
    }
    // The burst, and one more a second for as long as the load lasted;
    // each instance alone would have allowed the burst, twice it in all.
    let refilled = usize::try_from(took.as_secs()).unwrap() + 1;
    println!("two instances: {allowed} of 120 requests allowed in {took:?} (burst {BURST})");
    assert!(allowed >= BURST as usize, "{allowed} allowed");
    assert!(
        allowed <= BURST as usize + refilled,
        "{allowed} allowed in {took:?}: more than the one limit"
    );
    assert_eq!(rate_limit_fallbacks(&first).await, 0);
    assert_eq!(rate_limit_fallbacks(&second).await, 0);
}
