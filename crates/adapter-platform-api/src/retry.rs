//! When to retry a read: the retry budget, the jittered exponential
//! backoff between attempts, and the loop that keeps a call and all its
//! retries within one deadline.

use std::{future::Future, time::Duration};

use domain::Clock;

/// How many times a read is retried after its first attempt.
pub(crate) const MAX_RETRIES: u32 = 3;

/// The longest wait before the first retry; each later retry may wait twice
/// as long as the one before.
const BASE_DELAY: Duration = Duration::from_millis(50);

/// No single wait is longer than this, however many retries came before.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The wait before retry number `retry` (0 for the first retry), given a
/// random `unit` in `[0, 1)`.
///
/// Full jitter (a uniform wait between zero and the exponential ceiling)
/// spreads out the retries of many gateways that failed at the same moment,
/// so a recovering upstream is not hit by them all at once.
pub(crate) fn backoff(retry: u32, unit: f64) -> Duration {
    let ceiling = BASE_DELAY
        .checked_mul(2u32.saturating_pow(retry))
        .map_or(MAX_DELAY, |delay| delay.min(MAX_DELAY));
    // `mul_f64` panics on NaN, so a NaN counts as no wait.
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    ceiling.mul_f64(unit)
}

/// A random wait before retry number `retry`.
pub(crate) fn jittered_backoff(retry: u32) -> Duration {
    backoff(retry, rand::random::<f64>())
}

/// How one call is repeated: how often, after which waits, and within what
/// time, retries included.
pub(crate) struct Policy<'a> {
    /// The longest the call may take, from its first attempt to the end of
    /// its last.
    pub(crate) budget: Duration,
    /// How many times the call may be repeated after its first attempt: 0
    /// for a call that must be sent once.
    pub(crate) max_retries: u32,
    /// The wait before retry number `n` (0 for the first retry).
    pub(crate) backoff: fn(u32) -> Duration,
    /// Tells how much of the budget is spent. The waiting itself is done by
    /// tokio's timers, so the clock must move with them (as
    /// `runtime::TokioClock` does).
    pub(crate) clock: &'a dyn Clock,
}

/// How a call made under a [`Policy`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended<T> {
    /// With this outcome: one not worth retrying, or the last one when the
    /// retries ran out or the next wait would have passed the deadline.
    Answered(T),
    /// The deadline passed during an attempt or a wait, after this many
    /// attempts.
    TimedOut {
        /// How many attempts were started.
        attempts: u32,
    },
}

impl Policy<'_> {
    /// Makes attempts until one's outcome is not `retryable`, the retries
    /// run out, or the next wait would reach the deadline, all within the
    /// budget. `label` names the call in the log.
    pub(crate) async fn run<T, F>(
        &self,
        label: &str,
        mut attempt: impl FnMut() -> F,
        retryable: impl Fn(&T) -> bool,
    ) -> Ended<T>
    where
        F: Future<Output = T>,
    {
        let started = self.clock.now();
        let mut attempts = 0;
        let tries = async {
            loop {
                attempts += 1;
                let outcome = attempt().await;
                let retry = attempts - 1;
                if retry >= self.max_retries || !retryable(&outcome) {
                    return outcome;
                }
                let wait = (self.backoff)(retry);
                let spent = (self.clock.now() - started).to_std().unwrap_or_default();
                if spent + wait >= self.budget {
                    // Waiting would spend the whole budget: the last failure
                    // says more than a timeout would.
                    return outcome;
                }
                tracing::debug!(
                    route = label,
                    retry = attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "retrying a read of the Platform-API upstream"
                );
                tokio::time::sleep(wait).await;
            }
        };
        let answered = tokio::time::timeout(self.budget, tries).await;
        match answered {
            Ok(outcome) => Ended::Answered(outcome),
            Err(_) => Ended::TimedOut { attempts },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use runtime::TokioClock;

    use super::*;

    #[test]
    fn each_retry_may_wait_twice_as_long_as_the_one_before() {
        assert_eq!(
            backoff(0, 0.999_999),
            Duration::from_millis(50).mul_f64(0.999_999)
        );
        assert_eq!(backoff(1, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn no_wait_exceeds_the_cap_however_many_retries_came_before() {
        assert_eq!(backoff(10, 0.999), MAX_DELAY.mul_f64(0.999));
        assert_eq!(backoff(u32::MAX, 1.0), MAX_DELAY);
    }

    #[test]
    fn a_wait_is_never_negative_and_the_jitter_stays_in_its_range() {
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
        assert_eq!(backoff(3, -4.0), Duration::ZERO);
        assert_eq!(backoff(3, f64::NAN), Duration::ZERO);
        for retry in 0..MAX_RETRIES {
            let ceiling = BASE_DELAY * 2u32.pow(retry);
            for _ in 0..100 {
                assert!(jittered_backoff(retry) <= ceiling);
            }
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// The ceiling of each wait, without jitter: 50, 100, 200 ms.
    fn full_backoff(retry: u32) -> Duration {
        backoff(retry, 1.0)
    }

    /// Runs a call whose every attempt answers `answer` after `answer_time`
    /// (on tokio's paused clock, which the call's clock follows), and
    /// returns how it ended, how many attempts it made and how long it took.
    async fn run(
        budget: Duration,
        max_retries: u32,
        answer_time: Duration,
        answer: impl Fn(u32) -> Result<(), u32>,
    ) -> (Ended<Result<(), u32>>, u32, Duration) {
        let clock = TokioClock::start();
        let policy = Policy {
            budget,
            max_retries,
            backoff: full_backoff,
            clock: &clock,
        };
        let made = Cell::new(0);
        let started = clock.now();
        let ended = policy
            .run(
                "GET /test",
                || {
                    made.set(made.get() + 1);
                    let outcome = answer(made.get());
                    async move {
                        tokio::time::sleep(answer_time).await;
                        outcome
                    }
                },
                |outcome: &Result<(), u32>| *outcome == Err(503),
            )
            .await;
        let took = (clock.now() - started).to_std().unwrap();
        (ended, made.get(), took)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_retried_after_each_wait_until_its_retries_run_out() {
        let (ended, attempts, took) = run(10 * MAX_DELAY, 3, MS, |_| Err(503)).await;
        assert_eq!(ended, Ended::Answered(Err(503)));
        assert_eq!(attempts, 4);
        assert_eq!(took, 4 * MS + (50 + 100 + 200) * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_or_a_failure_not_worth_retrying_ends_the_call_at_once() {
        let (ended, attempts, _) =
            run(MAX_DELAY, 3, MS, |n| if n == 2 { Ok(()) } else { Err(503) }).await;
        assert_eq!((ended, attempts), (Ended::Answered(Ok(())), 2));
        let (ended, attempts, took) = run(MAX_DELAY, 3, MS, |_| Err(500)).await;
        assert_eq!((ended, attempts, took), (Ended::Answered(Err(500)), 1, MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_retries_is_made_once() {
        let (ended, attempts, _) = run(MAX_DELAY, 0, MS, |_| Err(503)).await;
        assert_eq!((ended, attempts), (Ended::Answered(Err(503)), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_reach_the_deadline_is_not_taken_and_the_last_failure_answers() {
        // 1 ms, a 50 ms wait, 1 ms: 52 ms spent, and the next 100 ms wait
        // would end at the 120 ms deadline or after it.
        let (ended, attempts, took) = run(120 * MS, 3, MS, |_| Err(503)).await;
        assert_eq!(
            (ended, attempts, took),
            (Ended::Answered(Err(503)), 2, 52 * MS)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_and_their_retries_share_one_deadline() {
        // 120 ms, a 50 ms wait, then the second attempt is cut off at the
        // 200 ms deadline: not 200 ms for each attempt.
        let (ended, attempts, took) = run(200 * MS, 3, 120 * MS, |_| Err(503)).await;
        assert_eq!(
            (ended, attempts, took),
            (Ended::TimedOut { attempts: 2 }, 2, 200 * MS)
        );
    }
}
