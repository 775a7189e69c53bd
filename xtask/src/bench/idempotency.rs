//! The `Idempotency-Key` part of `cargo xtask bench`: execute throughput
//! with a fresh key per request, on the in-memory store and on Redis,
//! against the same run without keys, checked against the targets.
//!
//! Each of the three runs gets a fresh `maestro` on the memory backend, with
//! the same pipeline, token, connections and request counts; only the key
//! header and `MAESTRO_REDIS_URL` differ. Redis is a throwaway server of the
//! bench's own, started by `scripts/redis-test-server.sh` and stopped on
//! every way out.

use std::{fmt::Write as _, path::Path};

use hyper::{
    StatusCode,
    header::{HeaderName, HeaderValue},
};
use uuid::Uuid;

use super::{
    Args, BENCH_CUSTOMER, Backend, STARTUP_TIMEOUT, execute_request, maestro_command, mint_token,
    random_secret,
    report::{self, Check, Summary, millis, optional_times, ratio, thousands, times},
    report_first_problem, unix_now,
};
use crate::{
    http::{self, RequestTemplate},
    load::{self, LoadReport, LoadSpec, UniqueHeader},
    process::{ChildGuard, free_local_addr},
    redis::RedisServer,
};

/// With a fresh key per request on the memory store, throughput must be at
/// least this share of the run without keys.
const MIN_MEMORY_STORE_RATIO: f64 = 0.8;
/// The same on the Redis store, which costs two round trips to Redis per
/// execute (the claim, then the answer).
const MIN_REDIS_STORE_RATIO: f64 = 0.3;

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
    /// (c) A fresh key per execute, kept in Redis.
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
            self.plain.requests_per_second,
        )
    }

    fn runs(&self) -> [(&'static str, &Summary); 3] {
        [
            ("without keys", &self.plain),
            ("fresh key, memory store", &self.memory_store),
            ("fresh key, Redis store", &self.redis_store),
        ]
    }
}

/// Measures the three runs, prints their report, and returns the checks of
/// the targets for the caller to count.
///
/// # Errors
/// When starting Redis or a server, or loading one, fails.
pub(super) fn run(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    maestro: &Path,
) -> anyhow::Result<Vec<Check>> {
    let results = runtime.block_on(measure(args, maestro))?;
    let checks = checks(&results);
    println!();
    print!("{}", text(&results, &checks));
    println!();
    println!("For docs/performance.md (Idempotency-Key):");
    println!();
    print!("{}", markdown(&results, &checks));
    Ok(checks)
}

async fn measure(args: &Args, maestro: &Path) -> anyhow::Result<Results> {
    let pipeline = Uuid::new_v4();
    let secret = random_secret();
    let token = mint_token(&secret, BENCH_CUSTOMER, unix_now()?)?;
    let request = execute_request(&token, pipeline)?;
    let spec = |addr| LoadSpec {
        addr,
        connections: args.connections,
        requests: args.idempotency_requests,
        warmup: args.warmup,
        request: request.clone(),
    };
    let plan = format!(
        "{} warm-up + {} requests over {} connections",
        thousands(args.warmup),
        thousands(args.idempotency_requests),
        args.connections
    );
    let setup = Backend::Memory.prepare(pipeline)?;

    let plain = {
        let (_server, addr) = start_maestro(maestro, &secret, &setup.env).await?;
        println!("== maestro (memory backend) without Idempotency-Key on {addr}: {plan}");
        load::run(&spec(addr)).await?
    };

    let (memory_store, memory_store_replays) = {
        let (_server, addr) = start_maestro(maestro, &secret, &setup.env).await?;
        println!("== maestro, fresh Idempotency-Key per request, memory store, on {addr}: {plan}");
        keyed_run(&spec(addr)).await?
    };

    let (redis_store, redis_store_replays) = {
        // Dropped at the end of this block, after maestro (declared later,
        // dropped first): Redis is stopped on every way out of the block.
        println!("== starting a throwaway redis-server");
        let (_redis, url) = RedisServer::start("maestro-bench-redis-")?;
        let mut env = setup.env.clone();
        env.push(("MAESTRO_REDIS_URL", url));
        let (_server, addr) = start_maestro(maestro, &secret, &env).await?;
        println!("== maestro, fresh Idempotency-Key per request, Redis store, on {addr}: {plan}");
        keyed_run(&spec(addr)).await?
    };
    drop(setup);

    for (name, report) in [
        ("maestro without keys", &plain),
        ("maestro with keys, memory store", &memory_store),
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
        redis_store: summary(&redis_store),
        memory_store_replays,
        redis_store_replays,
    })
}

/// Starts `maestro` with `env` on a free port and waits until it is ready.
async fn start_maestro(
    maestro: &Path,
    secret: &str,
    env: &[(&'static str, String)],
) -> anyhow::Result<(ChildGuard, std::net::SocketAddr)> {
    let addr = free_local_addr()?;
    let mut command = maestro_command(maestro, addr, secret, env);
    let mut server = ChildGuard::spawn("maestro", &mut command)?;
    server.wait_until_healthy(addr, STARTUP_TIMEOUT).await?;
    Ok((server, addr))
}

/// Loads `spec` with a fresh key per request, then sends the run's first
/// key again: the answer must be a replay, which shows that the keys
/// reached the store rather than being ignored.
async fn keyed_run(spec: &LoadSpec) -> anyhow::Result<(LoadReport, bool)> {
    let unique = UniqueHeader::fresh(IDEMPOTENCY_KEY);
    let report = load::run_with_unique_header(spec, &unique).await?;
    let replays = replays(spec, &unique).await;
    Ok((report, replays))
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
                "fresh key, Redis store: throughput >= {MIN_REDIS_STORE_RATIO}x without keys"
            ),
            measured: measured(redis),
            passed: redis.is_some_and(|ratio| ratio >= MIN_REDIS_STORE_RATIO),
        },
        Check {
            target: "every request of the three runs answered 2xx".to_owned(),
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

/// The plain-text report printed after the runs.
fn text(results: &Results, checks: &[Check]) -> String {
    let mut out = String::new();
    for (name, summary) in results.runs() {
        let _ = writeln!(out, "{name:<24} {}", summary.one_line());
    }
    let _ = writeln!(
        out,
        "throughput with keys / without: memory store {}, Redis store {}",
        optional_times(results.memory_store_ratio()),
        optional_times(results.redis_store_ratio()),
    );
    for check in checks {
        let _ = writeln!(
            out,
            "{}  {} (measured: {})",
            check.verdict(),
            check.target,
            check.measured
        );
    }
    out
}

/// The runs as markdown tables, to paste into `docs/performance.md`.
fn markdown(results: &Results, checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`cargo xtask bench` (`Idempotency-Key` runs, memory backend): {} connections, {} warm-up then {} measured requests per run, a fresh `maestro` per run, {} CPUs.",
        results.connections,
        thousands(results.warmup),
        thousands(results.requests),
        results.cpus,
    );
    let _ = writeln!(out);
    let runs = results.runs();
    let _ = writeln!(out, "| | {} | {} | {} |", runs[0].0, runs[1].0, runs[2].0);
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Summary) -> String| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            cell(runs[0].1),
            cell(runs[1].1),
            cell(runs[2].1)
        );
    };
    row(&mut out, "throughput", &|summary| {
        format!(
            "{} req/s",
            thousands(summary.requests_per_second.round() as u64)
        )
    });
    row(&mut out, "throughput / without keys", &|summary| {
        optional_times(ratio(
            summary.requests_per_second,
            results.plain.requests_per_second,
        ))
    });
    row(&mut out, "p50 latency", &|summary| millis(summary.p50));
    row(&mut out, "p99 latency", &|summary| millis(summary.p99));
    row(&mut out, "max latency", &|summary| millis(summary.max));
    row(&mut out, "non-2xx / transport errors", &|summary| {
        format!(
            "{} / {}",
            thousands(summary.non_2xx),
            thousands(summary.transport_errors)
        )
    });
    let _ = writeln!(out);
    let _ = writeln!(out, "| target | measured | result |");
    let _ = writeln!(out, "| --- | --- | --- |");
    for check in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            check.target,
            check.measured,
            check.verdict()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn summary(requests_per_second: f64) -> Summary {
        Summary {
            requests_per_second,
            p50: Duration::from_micros(1_000),
            p99: Duration::from_micros(3_000),
            max: Duration::from_micros(9_000),
            requests: 50_000,
            answered: 50_000,
            non_2xx: 0,
            transport_errors: 0,
        }
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
            redis_store: summary(8_000.0),
            memory_store_replays: true,
            redis_store_replays: true,
        }
    }

    fn failed(results: &Results) -> Vec<String> {
        checks(results)
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.target)
            .collect()
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
    fn the_redis_store_under_0_3x_fails_that_target_alone() {
        let mut results = good_runs();
        results.redis_store.requests_per_second = 5_999.0;
        assert_eq!(
            failed(&results),
            ["fresh key, Redis store: throughput >= 0.3x without keys"]
        );
        results.redis_store.requests_per_second = 6_000.0;
        assert_eq!(failed(&results), Vec::<String>::new());
    }

    #[test]
    fn a_run_without_keys_that_answered_nothing_fails_both_ratios() {
        let mut results = good_runs();
        results.plain = Summary {
            answered: 0,
            transport_errors: 50_000,
            ..summary(0.0)
        };
        assert_eq!(
            failed(&results),
            [
                "fresh key, memory store: throughput >= 0.8x without keys",
                "fresh key, Redis store: throughput >= 0.3x without keys",
                "every request of the three runs answered 2xx",
            ]
        );
    }

    #[test]
    fn a_non_2xx_answer_in_any_run_fails() {
        let mut results = good_runs();
        results.redis_store.non_2xx = 1;
        assert_eq!(
            failed(&results),
            ["every request of the three runs answered 2xx"]
        );
        let measured = &checks(&results)[2].measured;
        assert!(
            measured.contains("fresh key, Redis store: 1 non-2xx, 0 unanswered"),
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
        let markdown = markdown(&results, &checks(&results));
        assert!(
            markdown
                .contains("| | without keys | fresh key, memory store | fresh key, Redis store |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| throughput | 20,000 req/s | 18,000 req/s | 8,000 req/s |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| throughput / without keys | 1.00x | 0.90x | 0.40x |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| p99 latency | 3.00 ms | 3.00 ms | 3.00 ms |"),
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
        let text = text(&results, &checks(&results));
        assert!(
            text.contains("throughput with keys / without: memory store 0.90x, Redis store 0.10x"),
            "{text}"
        );
        assert!(
            text.contains(
                "FAIL  fresh key, Redis store: throughput >= 0.3x without keys (measured: 0.10x)"
            ),
            "{text}"
        );
    }
}
