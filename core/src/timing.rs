//! Timing shared by both pipelines: deterministic jitter, exponential backoff, and how long
//! to wait until an instant.

use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// Largest jitter fraction, in either direction.
pub const MAX_JITTER: f64 = 0.1;

/// Delay after the first failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);

/// Longest delay between attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// `jitter_fraction` bounded to ±[`MAX_JITTER`]; NaN is no jitter.
pub(crate) fn clamp_jitter(jitter_fraction: f64) -> f64 {
    if jitter_fraction.is_nan() {
        0.0
    } else {
        jitter_fraction.clamp(-MAX_JITTER, MAX_JITTER)
    }
}

/// A jitter fraction in [-0.1, 0.1] derived from the SHA-256 of `seed`. Seeding with stable
/// data (for example the identity's UID and the token's `iat`) lets a restarted operator
/// compute the same renewal time again.
pub fn deterministic_jitter(seed: &str) -> f64 {
    let digest = Sha256::digest(seed.as_bytes());
    let prefix = digest
        .iter()
        .take(8)
        .fold(0_u64, |value, byte| (value << 8) | u64::from(*byte));
    let unit = prefix as f64 / u64::MAX as f64;
    (unit * 2.0 - 1.0) * MAX_JITTER
}

/// Delay before the next attempt after `failed_attempts` consecutive failures: 5 s, doubling
/// per failure up to 5 min, stretched or shrunk by `jitter_fraction` (clamped to ±0.1) and
/// never above 5 min. Zero and one failures both give the base delay.
pub fn backoff(failed_attempts: u32, jitter_fraction: f64) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(16);
    let base = BACKOFF_BASE
        .saturating_mul(1_u32 << doublings)
        .min(BACKOFF_CAP);
    let factor = 1.0 + clamp_jitter(jitter_fraction);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor)
        .unwrap_or(base)
        .min(BACKOFF_CAP)
}

/// How long until `at`, at least one second (a requeue in the past would spin).
pub fn until(at: Timestamp, now: Timestamp) -> Duration {
    let seconds = at.as_second().saturating_sub(now.as_second()).max(1);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

/// A token bucket: `burst` requests at once, refilled at `rate` per second. Time is injected
/// as seconds since any fixed origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: f64,
}

impl TokenBucket {
    /// A full bucket at time `now`. `rate` and `burst` below their minimums (a positive rate,
    /// a burst of 1) are raised to them.
    pub fn new(rate: f64, burst: u32, now: f64) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: if rate > 0.0 { rate } else { f64::MIN_POSITIVE },
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one token at `now`, or says how long until one is available.
    pub fn try_take(&mut self, now: f64) -> Result<(), Duration> {
        let elapsed = (now - self.updated).max(0.0);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
        // The epsilon absorbs floating-point drift in the refill.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn jitters() -> impl Iterator<Item = f64> {
        (-100..=100).map(|step| f64::from(step) / 1000.0)
    }

    #[test]
    fn deterministic_jitter_is_stable_bounded_and_spread() {
        assert_eq!(
            deterministic_jitter("uid-1:1800000000"),
            deterministic_jitter("uid-1:1800000000")
        );
        assert_ne!(
            deterministic_jitter("uid-1:1800000000"),
            deterministic_jitter("uid-1:1800000001")
        );
        let samples: Vec<f64> = (0..2000)
            .map(|index| deterministic_jitter(&format!("seed-{index}")))
            .collect();
        assert!(
            samples
                .iter()
                .all(|jitter| (-MAX_JITTER..=MAX_JITTER).contains(jitter))
        );
        assert!(samples.iter().any(|jitter| *jitter < -0.09));
        assert!(samples.iter().any(|jitter| *jitter > 0.09));
        let mean = samples.iter().sum::<f64>() / 2000.0;
        assert!(mean.abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let secs = Duration::from_secs;
        assert_eq!(backoff(0, 0.0), secs(5));
        assert_eq!(backoff(1, 0.0), secs(5));
        assert_eq!(backoff(2, 0.0), secs(10));
        assert_eq!(backoff(3, 0.0), secs(20));
        assert_eq!(backoff(6, 0.0), secs(160));
        assert_eq!(backoff(7, 0.0), secs(300));
        assert_eq!(backoff(u32::MAX, 0.0), secs(300));
    }

    #[test]
    fn backoff_jitter_stays_within_ten_percent_and_the_cap() {
        for attempts in 0..40 {
            let nominal = backoff(attempts, 0.0);
            for jitter in jitters().chain([1.0, -1.0, f64::NAN, f64::INFINITY]) {
                let delay = backoff(attempts, jitter);
                assert!(delay <= BACKOFF_CAP, "{attempts} {jitter}");
                assert!(delay >= nominal.mul_f64(0.9), "{attempts} {jitter}");
                assert!(
                    delay <= nominal.mul_f64(1.1).min(BACKOFF_CAP),
                    "{attempts} {jitter}"
                );
                assert!(delay >= Duration::from_millis(4500));
            }
        }
        assert_eq!(backoff(1, 0.1), Duration::from_millis(5500));
        assert_eq!(backoff(1, -0.1), Duration::from_millis(4500));
    }

    #[test]
    fn until_never_returns_less_than_a_second() {
        assert_eq!(until(at(1_090), at(1_000)), Duration::from_secs(90));
        assert_eq!(until(at(900), at(1_000)), Duration::from_secs(1));
        assert_eq!(until(at(1_000), at(1_000)), Duration::from_secs(1));
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(10.0, 3, 100.0);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(100.0), Ok(()));
        }
        let wait = bucket.try_take(100.0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.try_take(100.1), Ok(()));
        // Over any window, at most burst + rate * seconds are taken.
        let mut bucket = TokenBucket::new(10.0, 5, 0.0);
        let taken = (0..10_000)
            .filter(|step| bucket.try_take(f64::from(*step) * 0.001).is_ok())
            .count();
        // 5 at once, then 10/s for the 9.999 s that follow.
        assert_eq!(taken, 5 + 99);
        // A clock going backwards never mints tokens.
        let mut bucket = TokenBucket::new(1.0, 1, 50.0);
        assert_eq!(bucket.try_take(50.0), Ok(()));
        assert!(bucket.try_take(10.0).is_err());
    }
}
