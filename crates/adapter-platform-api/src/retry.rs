//! When to retry a read: the retry budget and the jittered exponential
//! backoff between attempts.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
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
}
