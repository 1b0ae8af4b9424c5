//! Go-style duration strings (`"1h30m"`, `"45s"`, `"0s"`) used in the CRD specs.
//!
//! Only the units `h`, `m` and `s` are accepted, each at most once and in that order, with
//! whole numbers. That subset is exactly what both the apiserver's CEL `duration()` function
//! and this module parse, so a value that passes the schema pattern means the same thing to
//! the apiserver and to the operator.

use std::{borrow::Cow, fmt, str::FromStr};

use jiff::SignedDuration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Regular expression the apiserver checks duration strings against.
///
/// Together with `minLength: 2` it accepts exactly the strings [`Duration::from_str`] accepts,
/// apart from values too large to represent.
pub const DURATION_PATTERN: &str = "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$";

/// Longest duration string accepted by the schema; keeps CEL cost estimates small.
const MAX_DURATION_LENGTH: u32 = 32;

const SECONDS_PER_MINUTE: u32 = 60;
const SECONDS_PER_HOUR: u32 = 60 * SECONDS_PER_MINUTE;

/// A non-negative, whole-second duration written as a Go-style string such as `"1h30m"`.
///
/// Serializes to its canonical form: zero components are omitted (`"1h5s"`, not `"1h0m5s"`)
/// and zero is `"0s"`. Non-canonical input such as `"90m"` is accepted and reads back as
/// `"1h30m"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    seconds: u32,
}

/// Why a duration string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    /// The string was empty.
    #[error("duration is empty; write it like \"1h30m\", \"45s\" or \"0s\"")]
    Empty,
    /// A unit letter was not preceded by a number.
    #[error("duration {input:?} has a unit without a number before it")]
    MissingNumber {
        /// The rejected input.
        input: String,
    },
    /// A number was not followed by a unit.
    #[error("duration {input:?} has a number without a unit; use h, m or s")]
    MissingUnit {
        /// The rejected input.
        input: String,
    },
    /// A character other than a digit or one of `h`, `m`, `s` appeared.
    #[error("duration {input:?} contains {found:?}; only digits and the units h, m, s are allowed")]
    UnexpectedCharacter {
        /// The rejected input.
        input: String,
        /// The first offending character.
        found: char,
    },
    /// A unit appeared twice or after a smaller unit (for example `"5m1h"`).
    #[error("duration {input:?} must list each unit at most once, in the order h, m, s")]
    UnitOrder {
        /// The rejected input.
        input: String,
    },
    /// The total does not fit the supported range.
    #[error("duration {input:?} is too large")]
    TooLarge {
        /// The rejected input.
        input: String,
    },
}

impl DurationParseError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "EmptyDuration",
            Self::MissingNumber { .. } => "DurationMissingNumber",
            Self::MissingUnit { .. } => "DurationMissingUnit",
            Self::UnexpectedCharacter { .. } => "DurationUnexpectedCharacter",
            Self::UnitOrder { .. } => "DurationUnitOrder",
            Self::TooLarge { .. } => "DurationTooLarge",
        }
    }
}

impl Duration {
    /// The zero duration, `"0s"`.
    pub const ZERO: Duration = Duration { seconds: 0 };

    /// A duration of `seconds` whole seconds.
    pub const fn from_secs(seconds: u32) -> Self {
        Self { seconds }
    }

    /// A duration of `minutes` whole minutes, saturating at the largest representable value.
    pub const fn from_mins(minutes: u32) -> Self {
        Self {
            seconds: minutes.saturating_mul(SECONDS_PER_MINUTE),
        }
    }

    /// A duration of `hours` whole hours, saturating at the largest representable value.
    pub const fn from_hours(hours: u32) -> Self {
        Self {
            seconds: hours.saturating_mul(SECONDS_PER_HOUR),
        }
    }

    /// The whole seconds of `duration`, saturating at the largest representable value.
    pub fn from_std_saturating(duration: std::time::Duration) -> Self {
        Self {
            seconds: u32::try_from(duration.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The length in whole seconds.
    pub const fn as_secs(self) -> u32 {
        self.seconds
    }

    /// The same length as a [`std::time::Duration`].
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.seconds))
    }

    /// The same length as a [`jiff::SignedDuration`], for timestamp arithmetic.
    pub fn to_signed(self) -> SignedDuration {
        SignedDuration::from_secs(i64::from(self.seconds))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(duration: Duration) -> Self {
        duration.to_std()
    }
}

impl From<Duration> for SignedDuration {
    fn from(duration: Duration) -> Self {
        duration.to_signed()
    }
}

impl FromStr for Duration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(DurationParseError::Empty);
        }
        let owned = || input.to_owned();
        // Units already seen; each one must be smaller than the last.
        let mut last_unit_rank: Option<u8> = None;
        let mut number: Option<u64> = None;
        let mut total: u64 = 0;
        for found in input.chars() {
            if let Some(digit) = found.to_digit(10) {
                let value = number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|value| value.checked_add(u64::from(digit)))
                    .ok_or_else(|| DurationParseError::TooLarge { input: owned() })?;
                number = Some(value);
                continue;
            }
            let (rank, unit_seconds) = match found {
                'h' => (0, SECONDS_PER_HOUR),
                'm' => (1, SECONDS_PER_MINUTE),
                's' => (2, 1),
                _ => {
                    return Err(DurationParseError::UnexpectedCharacter {
                        input: owned(),
                        found,
                    });
                }
            };
            let value = number
                .take()
                .ok_or_else(|| DurationParseError::MissingNumber { input: owned() })?;
            if last_unit_rank.is_some_and(|last| last >= rank) {
                return Err(DurationParseError::UnitOrder { input: owned() });
            }
            last_unit_rank = Some(rank);
            total = value
                .checked_mul(u64::from(unit_seconds))
                .and_then(|seconds| total.checked_add(seconds))
                .ok_or_else(|| DurationParseError::TooLarge { input: owned() })?;
        }
        if number.is_some() {
            return Err(DurationParseError::MissingUnit { input: owned() });
        }
        let seconds =
            u32::try_from(total).map_err(|_| DurationParseError::TooLarge { input: owned() })?;
        Ok(Self { seconds })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seconds == 0 {
            return f.write_str("0s");
        }
        let hours = self.seconds / SECONDS_PER_HOUR;
        let minutes = self.seconds % SECONDS_PER_HOUR / SECONDS_PER_MINUTE;
        let seconds = self.seconds % SECONDS_PER_MINUTE;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if seconds > 0 {
            write!(f, "{seconds}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "minLength": 2,
            "maxLength": MAX_DURATION_LENGTH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Duration, DurationParseError> {
        input.parse()
    }

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("90m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse("720h"), Ok(Duration::from_hours(720)));
        assert_eq!(parse("1h0m5s"), Ok(Duration::from_secs(3605)));
        assert_eq!(parse("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse("0h0m0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(Duration::ZERO.to_string(), "0s");
        assert_eq!(Duration::from_secs(45).to_string(), "45s");
        assert_eq!(Duration::from_mins(90).to_string(), "1h30m");
        assert_eq!(Duration::from_secs(3605).to_string(), "1h5s");
        assert_eq!(Duration::from_hours(720).to_string(), "720h");
        assert_eq!(parse("0h0m0s").map(|d| d.to_string()), Ok("0s".to_owned()));
    }

    #[test]
    fn display_round_trips_for_many_values() {
        for seconds in (0..200_000).step_by(7).chain([u32::MAX - 1, u32::MAX]) {
            let duration = Duration::from_secs(seconds);
            assert_eq!(parse(&duration.to_string()), Ok(duration), "{seconds}s");
        }
    }

    #[test]
    fn rejects_malformed_input_with_typed_errors() {
        assert_eq!(parse(""), Err(DurationParseError::Empty));
        assert!(matches!(
            parse("h"),
            Err(DurationParseError::MissingNumber { .. })
        ));
        assert!(matches!(
            parse("10"),
            Err(DurationParseError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("1h30"),
            Err(DurationParseError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("1d"),
            Err(DurationParseError::UnexpectedCharacter { found: 'd', .. })
        ));
        assert!(matches!(
            parse("1.5h"),
            Err(DurationParseError::UnexpectedCharacter { found: '.', .. })
        ));
        assert!(matches!(
            parse("-1h"),
            Err(DurationParseError::UnexpectedCharacter { found: '-', .. })
        ));
        assert!(matches!(
            parse("1h 30m"),
            Err(DurationParseError::UnexpectedCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            parse("100ms"),
            Err(DurationParseError::MissingNumber { .. })
        ));
        assert!(matches!(
            parse("5m1h"),
            Err(DurationParseError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse("1h1h"),
            Err(DurationParseError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse("1193047h"),
            Err(DurationParseError::TooLarge { .. })
        ));
        assert!(matches!(
            parse("99999999999999999999999s"),
            Err(DurationParseError::TooLarge { .. })
        ));
    }

    #[test]
    fn every_error_has_a_distinct_reason() {
        let errors = [
            parse(""),
            parse("h"),
            parse("1"),
            parse("1x"),
            parse("1s1h"),
            parse("9999999999s"),
        ];
        let mut reasons: Vec<&str> = errors
            .iter()
            .filter_map(|result| result.as_ref().err())
            .map(DurationParseError::reason)
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), 6);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let duration: Duration = serde_json::from_str("\"90m\"").expect("parses");
        assert_eq!(duration, Duration::from_mins(90));
        assert_eq!(
            serde_json::to_string(&duration).expect("serializes"),
            "\"1h30m\""
        );
        let error = serde_json::from_str::<Duration>("\"1x\"").expect_err("rejects");
        assert!(error.to_string().contains("only digits"), "{error}");
        assert!(serde_json::from_str::<Duration>("3600").is_err());
    }

    #[test]
    fn conversions_agree() {
        let duration = Duration::from_secs(5400);
        assert_eq!(duration.to_std(), std::time::Duration::from_secs(5400));
        assert_eq!(duration.to_signed(), SignedDuration::from_mins(90));
        assert_eq!(std::time::Duration::from(duration), duration.to_std());
        assert_eq!(SignedDuration::from(duration), duration.to_signed());
        assert_eq!(duration.as_secs(), 5400);
        assert_eq!(Duration::from_hours(u32::MAX).as_secs(), u32::MAX);
        assert_eq!(
            Duration::from_std_saturating(std::time::Duration::from_millis(90_999)),
            Duration::from_secs(90)
        );
        assert_eq!(
            Duration::from_std_saturating(std::time::Duration::MAX).as_secs(),
            u32::MAX
        );
    }
}
