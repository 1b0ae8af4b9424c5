//! Timestamp arithmetic that cannot panic.
//!
//! `jiff`'s `+` and `-` operators panic when the result leaves the supported range (around
//! the years -9999 and 9999). The operator only ever adds hours or days to the current
//! time, so saturating at the range ends is both safe and simpler than threading errors.

use jiff::{SignedDuration, Timestamp};

/// `at + duration`, saturating at [`Timestamp::MIN`] / [`Timestamp::MAX`].
pub fn plus(at: Timestamp, duration: SignedDuration) -> Timestamp {
    at.checked_add(duration)
        .unwrap_or(if duration.is_negative() {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
}

/// `at - duration`, saturating at [`Timestamp::MIN`] / [`Timestamp::MAX`].
pub fn minus(at: Timestamp, duration: SignedDuration) -> Timestamp {
    plus(at, duration.checked_neg().unwrap_or(SignedDuration::MAX))
}

/// `at` with the fractional second dropped (rounded towards the past). Status fields and JWT
/// claims have whole-second precision; scheduling from a truncated value avoids comparing a
/// stored time with a more precise in-memory one.
pub fn whole_seconds(at: Timestamp) -> Timestamp {
    // `as_second` truncates towards zero; before the epoch that is towards the future.
    let second = if at.subsec_nanosecond() < 0 {
        at.as_second().saturating_sub(1)
    } else {
        at.as_second()
    };
    Timestamp::from_second(second).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    #[test]
    fn adds_and_subtracts() {
        assert_eq!(plus(at(100), SignedDuration::from_secs(5)), at(105));
        assert_eq!(minus(at(100), SignedDuration::from_secs(5)), at(95));
        assert_eq!(plus(at(100), SignedDuration::from_secs(-5)), at(95));
    }

    #[test]
    fn saturates_instead_of_panicking() {
        assert_eq!(
            plus(Timestamp::MAX, SignedDuration::from_hours(1)),
            Timestamp::MAX
        );
        assert_eq!(
            minus(Timestamp::MIN, SignedDuration::from_hours(1)),
            Timestamp::MIN
        );
        assert_eq!(plus(at(0), SignedDuration::MAX), Timestamp::MAX);
        assert_eq!(minus(at(0), SignedDuration::MIN), Timestamp::MAX);
    }

    #[test]
    fn truncates_towards_the_past() {
        let precise = at(1_000)
            .checked_add(SignedDuration::from_millis(999))
            .expect("in range");
        assert_eq!(whole_seconds(precise), at(1_000));
        let before_epoch = at(-1)
            .checked_add(SignedDuration::from_millis(500))
            .expect("in range");
        assert_eq!(whole_seconds(before_epoch), at(-1));
    }
}
