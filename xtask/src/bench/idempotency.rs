//! The `Idempotency-Key` part of `cargo xtask bench`: execute throughput
//! with a fresh key per request, on the in-memory store and on Redis,
//! against the same run without keys, checked against the targets.
//!
//! Each of the four runs gets a fresh `maestro` on the memory backend, with
//! the same pipeline, token, connections and request counts; only the key
//! header and `MAESTRO_REDIS_URL` differ. Each store is measured against
//! the same deployment without keys, in alternating turns, so that the
//! machine's drift weighs on both sides of its ratio alike: the memory
//! store against `maestro` alone, the Redis store against `maestro` with
//! Redis, where every execute, keyed or not, also takes its rate limit
//! from Redis and appends its run's changes to the feed there (ADR 0022).
//! Redis is a throwaway server of the bench's own, started by
//! `scripts/redis-test-server.sh` and stopped on every way out.

use std::path::Path;

use hyper::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};

use super::{
    Args, Backend, ExecuteLoad,
    airflow::{TURNS, in_turns_with_unique},
    report::{self, Cell, Check, Report, Row, Summary, ratio, thousands, times},
    report_first_problem, start_maestro,
};
use crate::{
    http::{self, RequestTemplate},
    load::{LoadReport, LoadSpec, UniqueHeader},
    test_server::{self, TestServer},
};

/// With a fresh key per request on the memory store, throughput must be at
/// least this share of the run without keys.
const MIN_MEMORY_STORE_RATIO: f64 = 0.8;
/// The same on the Redis store against the same deployment without keys:
/// a key costs two more round trips to Redis per execute (the claim, then
/// the answer), and Redis shares the CPUs.
const MIN_REDIS_STORE_RATIO: f64 = 0.6;

/// The header the service reads the key from.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header the service marks a replayed answer with.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Everything the `Idempotency-Key` runs measured.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    /// Concurrent connections, the same for every run.
    connections: usize,
    /// Measured requests per run.
    requests: u64,
    /// Warm-up requests per run.
    warmup: u64,
    /// CPUs available to this process.
    cpus: usize,
    /// (a) Executes without a key.
    plain: Summary,
    /// (b) A fresh key per execute, kept in the service's memory.
    memory_store: Summary,
    /// (c) Executes without a key, with Redis: the rate limits and the
    /// feed there.
    redis_plain: Summary,
    /// (d) A fresh key per execute, kept in Redis.
    redis_store: Summary,
    /// Whether a repeat of a key of run (b) was answered as a replay.
    memory_store_replays: bool,
    /// Whether a repeat of a key of run (c) was answered as a replay.
    redis_store_replays: bool,
}

impl Results {
    fn memory_store_ratio(&self) -> Option<f64> {
        ratio(
            self.memory_store.requests_per_second,
            self.plain.requests_per_second,
        )
    }

    fn redis_store_ratio(&self) -> Option<f64> {
        ratio(
            self.redis_store.requests_per_second,
            self.redis_plain.requests_per_second,
        )
    }

    fn runs(&self) -> [(&'static str, &Summary); 4] {
        [
            ("without keys", &self.plain),
            ("fresh key, memory store", &self.memory_store),
            ("with Redis, without keys", &self.redis_plain),
            ("with Redis, fresh key, Redis store", &self.redis_store),
        ]
    }
}

/// Measures the four runs and reports them.
///
/// # Errors
/// When starting Redis or a server, or loading one, fails.
pub(super) async fn run(args: &Args, maestro: &Path) -> anyhow::Result<Report> {
    Ok(report(&measure(args, maestro).await?))
}

async fn measure(args: &Args, maestro: &Path) -> anyhow::Result<Results> {
    let load = ExecuteLoad::new(args, args.idempotency_requests)?;
    let setup = Backend::Memory.prepare(load.pipeline)?;
    // Every key of a run stays kept, so that its first is still replayed
    // at the end: the bound on keys per customer (which would forget the
    // oldest) is not what this measures.
    let mut keyed_env = setup.env.clone();
    keyed_env.push((
        "MAESTRO_IDEMPOTENCY_KEYS_PER_CUSTOMER",
        "10000000".to_owned(),
    ));

    let (plain, memory_store, memory_store_replays) =
        with_and_without_keys(maestro, &load, &setup.env, &keyed_env, "the memory store").await?;

    // The same with Redis, against the same deployment without keys.
    let (redis_plain, redis_store, redis_store_replays) = {
        // Dropped at the end of this block, after maestro (started later,
        // stopped first): Redis is stopped on every way out of the block.
        println!("== starting a throwaway redis-server");
        let (_redis, url) = TestServer::start_in_temp(test_server::REDIS, "maestro-bench-redis-")?;
        let with_redis = |env: &[(&'static str, String)]| {
            let mut env = env.to_vec();
            env.push(("MAESTRO_REDIS_URL", url.clone()));
            env
        };
        with_and_without_keys(
            maestro,
            &load,
            &with_redis(&setup.env),
            &with_redis(&keyed_env),
            "the Redis store (both with Redis)",
        )
        .await?
    };
    drop(setup);

    for (name, report) in [
        ("maestro without keys", &plain),
        ("maestro with keys, memory store", &memory_store),
        ("maestro with Redis, without keys", &redis_plain),
        ("maestro with keys, Redis store", &redis_store),
    ] {
        report_first_problem(name, report);
    }
    let summary = |report: &LoadReport| Summary::new(report, args.idempotency_requests);
    Ok(Results {
        connections: args.connections,
        requests: args.idempotency_requests,
        warmup: args.warmup,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        plain: summary(&plain),
        memory_store: summary(&memory_store),
        redis_plain: summary(&redis_plain),
        redis_store: summary(&redis_store),
        memory_store_replays,
        redis_store_replays,
    })
}

/// Loads a `maestro` started with `plain_env` without keys and one started
/// with `keyed_env` with a fresh key per request, in alternating turns, so
/// that the machine's drift is shared by both sides of the ratio; then
/// sends the keyed one's first key again. Their reports, and whether that
/// repeat was answered as a replay.
async fn with_and_without_keys(
    maestro: &Path,
    load: &ExecuteLoad,
    plain_env: &[(&'static str, String)],
    keyed_env: &[(&'static str, String)],
    store: &str,
) -> anyhow::Result<(LoadReport, LoadReport, bool)> {
    let (_plain_server, plain_addr) = start_maestro(maestro, &load.secret, plain_env).await?;
    let (_keyed_server, keyed_addr) = start_maestro(maestro, &load.secret, keyed_env).await?;
    println!(
        "== maestro (memory backend) without Idempotency-Key on {plain_addr}, and with a fresh one per request on {store} on {keyed_addr}, in {TURNS} alternating turns: {}",
        load.plan()
    );
    let unique = UniqueHeader::fresh(IDEMPOTENCY_KEY);
    let keyed = load.at(keyed_addr);
    let (plain, with_keys) =
        in_turns_with_unique(&load.at(plain_addr), &keyed, Some(&unique)).await?;
    let replays = replays(&keyed, &unique.part("t0")).await;
    Ok((plain, with_keys, replays))
}

/// Whether the first key of the run `unique` was used in is answered 200
/// with `Idempotent-Replayed: true` when sent again.
async fn replays(spec: &LoadSpec, unique: &UniqueHeader) -> bool {
    // Worker 0 always sends at least one request, and its first value ends
    // in `-0-0`.
    let Ok(first_key) = HeaderValue::try_from(format!("{}-0-0", unique.run)) else {
        return false;
    };
    let mut repeat: RequestTemplate = spec.request.clone();
    repeat.headers.insert(unique.name.clone(), first_key);
    match http::send_once(spec.addr, &repeat, http::REQUEST_TIMEOUT).await {
        Ok(answer) => {
            let replayed = answer.status == StatusCode::OK
                && answer
                    .headers
                    .get(IDEMPOTENT_REPLAYED)
                    .is_some_and(|value| value == "true");
            if !replayed {
                eprintln!(
                    "a repeated Idempotency-Key was answered {} {:?}",
                    answer.status, answer.headers
                );
            }
            replayed
        }
        Err(err) => {
            eprintln!("a repeated Idempotency-Key got no answer: {err}");
            false
        }
    }
}

/// The two targets, plus what makes them meaningful: every request
/// answered 2xx, and keys that really reached the store.
fn checks(results: &Results) -> Vec<Check> {
    let memory = results.memory_store_ratio();
    let redis = results.redis_store_ratio();
    let measured = |ratio: Option<f64>| ratio.map_or_else(|| "no throughput".to_owned(), times);
    let failures = results
        .runs()
        .iter()
        .map(|(name, summary)| format!("{name}: {}", report::failures(summary)))
        .collect::<Vec<_>>()
        .join("; ");
    let replays = |replayed: bool| if replayed { "replayed" } else { "not replayed" };
    vec![
        Check {
            target: format!(
                "fresh key, memory store: throughput >= {MIN_MEMORY_STORE_RATIO}x without keys"
            ),
            measured: measured(memory),
            passed: memory.is_some_and(|ratio| ratio >= MIN_MEMORY_STORE_RATIO),
        },
        Check {
            target: format!(
                "fresh key, Redis store: throughput >= {MIN_REDIS_STORE_RATIO}x without keys, with Redis"
            ),
            measured: measured(redis),
            passed: redis.is_some_and(|ratio| ratio >= MIN_REDIS_STORE_RATIO),
        },
        Check {
            target: "every request of the four runs answered 2xx".to_owned(),
            measured: failures,
            passed: results.runs().iter().all(|(_, summary)| summary.all_2xx()),
        },
        Check {
            target: "a repeated key is replayed by each store".to_owned(),
            measured: format!(
                "memory: {}, Redis: {}",
                replays(results.memory_store_replays),
                replays(results.redis_store_replays)
            ),
            passed: results.memory_store_replays && results.redis_store_replays,
        },
    ]
}

/// The four runs side by side, with their throughput as a share of the
/// same deployment without keys (judged), and of `maestro` without keys or
/// Redis (shown).
fn report(results: &Results) -> Report {
    let runs = results.runs();
    let mut rows = Summary::rows(&runs.map(|(_, summary)| summary));
    let itself =
        |summary: &Summary| ratio(summary.requests_per_second, summary.requests_per_second);
    rows.insert(
        1,
        Row::new(
            "throughput / the same without keys",
            [
                itself(&results.plain),
                results.memory_store_ratio(),
                itself(&results.redis_plain),
                results.redis_store_ratio(),
            ]
            .into_iter()
            .map(Cell::Ratio)
            .collect(),
        ),
    );
    let plain = Cell::Throughput(results.plain.requests_per_second);
    rows.insert(
        2,
        Row::new(
            "throughput / without keys or Redis",
            runs.iter()
                .map(|(_, summary)| Cell::Throughput(summary.requests_per_second).ratio_to(&plain))
                .collect(),
        ),
    );
    Report {
        title: "Idempotency-Key".to_owned(),
        setup: format!(
            "`cargo xtask bench` (`Idempotency-Key` runs, memory backend): {} connections, {} warm-up then {} measured requests per run, a fresh `maestro` per run; without keys and with the memory store in {TURNS} alternating turns, then with Redis (its rate limits and feed) without keys and with the Redis store in {TURNS} alternating turns, {} CPUs.",
            results.connections,
            thousands(results.warmup),
            thousands(results.requests),
            results.cpus,
        ),
        corner: String::new(),
        columns: runs.iter().map(|(name, _)| (*name).to_owned()).collect(),
        rows,
        checks: checks(results),
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests_per_second: f64) -> Summary {
        Summary::all_answered(50_000, requests_per_second, 1_000, 3_000)
    }

    /// Runs that meet every target.
    fn good_runs() -> Results {
        Results {
            connections: 32,
            requests: 50_000,
            warmup: 5_000,
            cpus: 2,
            plain: summary(20_000.0),
            memory_store: summary(18_000.0),
            redis_plain: summary(15_000.0),
            redis_store: summary(10_000.0),
            memory_store_replays: true,
            redis_store_replays: true,
        }
    }

    fn failed(results: &Results) -> Vec<String> {
        report::missed(&checks(results))
    }

    #[test]
    fn runs_within_every_target_pass_them_all() {
        assert_eq!(failed(&good_runs()), Vec::<String>::new());
    }

    #[test]
    fn the_memory_store_under_0_8x_fails_that_target_alone() {
        let mut results = good_runs();
        results.memory_store.requests_per_second = 15_999.0;
        assert_eq!(
            failed(&results),
            ["fresh key, memory store: throughput >= 0.8x without keys"]
        );
        results.memory_store.requests_per_second = 16_000.0;
        assert_eq!(failed(&results), Vec::<String>::new());
    }

    #[test]
    fn the_redis_store_under_0_6x_of_redis_without_keys_fails_that_target_alone() {
        let mut results = good_runs();
        results.redis_store.requests_per_second = 8_999.0;
        assert_eq!(
            failed(&results),
            ["fresh key, Redis store: throughput >= 0.6x without keys, with Redis"]
        );
        results.redis_store.requests_per_second = 9_000.0;
        assert_eq!(failed(&results), Vec::<String>::new());
        // Judged against the same deployment without keys, not against
        // `maestro` without Redis.
        results.redis_plain.requests_per_second = 16_000.0;
        assert_eq!(
            failed(&results),
            ["fresh key, Redis store: throughput >= 0.6x without keys, with Redis"]
        );
    }

    #[test]
    fn a_run_without_keys_that_answered_nothing_fails_its_stores_ratio() {
        let nothing = Summary {
            answered: 0,
            transport_errors: 50_000,
            ..summary(0.0)
        };
        let mut results = good_runs();
        results.plain = nothing.clone();
        assert_eq!(
            failed(&results),
            [
                "fresh key, memory store: throughput >= 0.8x without keys",
                "every request of the four runs answered 2xx",
            ]
        );
        let mut results = good_runs();
        results.redis_plain = nothing;
        assert_eq!(
            failed(&results),
            [
                "fresh key, Redis store: throughput >= 0.6x without keys, with Redis",
                "every request of the four runs answered 2xx",
            ]
        );
    }

    #[test]
    fn a_non_2xx_answer_in_any_run_fails() {
        let mut results = good_runs();
        results.redis_store.non_2xx = 1;
        assert_eq!(
            failed(&results),
            ["every request of the four runs answered 2xx"]
        );
        let measured = &checks(&results)[2].measured;
        assert!(
            measured.contains("with Redis, fresh key, Redis store: 1 non-2xx, 0 unanswered"),
            "{measured}"
        );
    }

    #[test]
    fn a_store_that_does_not_replay_fails() {
        let mut results = good_runs();
        results.redis_store_replays = false;
        assert_eq!(
            failed(&results),
            ["a repeated key is replayed by each store"]
        );
        assert_eq!(
            checks(&results)[3].measured,
            "memory: replayed, Redis: not replayed"
        );
    }

    #[test]
    fn the_markdown_has_every_run_its_ratio_and_a_verdict_per_target() {
        let results = good_runs();
        let markdown = report(&results).markdown();
        assert!(
            markdown.contains(
                "| | without keys | fresh key, memory store | with Redis, without keys | with Redis, fresh key, Redis store |"
            ),
            "{markdown}"
        );
        assert!(
            markdown.contains(
                "| throughput | 20,000 req/s | 18,000 req/s | 15,000 req/s | 10,000 req/s |"
            ),
            "{markdown}"
        );
        assert!(
            markdown
                .contains("| throughput / the same without keys | 1.00x | 0.90x | 1.00x | 0.67x |"),
            "{markdown}"
        );
        assert!(
            markdown
                .contains("| throughput / without keys or Redis | 1.00x | 0.90x | 0.75x | 0.50x |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| p99 latency | 3.00 ms | 3.00 ms | 3.00 ms | 3.00 ms |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("5,000 warm-up then 50,000 measured requests per run"),
            "{markdown}"
        );
        assert_eq!(markdown.matches("| PASS |").count(), 4, "{markdown}");
    }

    #[test]
    fn the_text_report_gives_both_ratios_and_each_verdict() {
        let mut results = good_runs();
        results.redis_store.requests_per_second = 2_000.0;
        let text = report(&results).text();
        assert!(
            text.lines().any(
                |line| line.starts_with("throughput / the same without keys")
                    && line
                        .split_whitespace()
                        .skip(6)
                        .eq(["1.00x", "0.90x", "1.00x", "0.13x"])
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "FAIL  fresh key, Redis store: throughput >= 0.6x without keys, with Redis (measured: 0.13x)"
            ),
            "{text}"
        );
    }
}
