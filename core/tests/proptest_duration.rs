//! Property tests of the Go-style duration strings of the CRD specs
//! (`fedid_core::crd::duration`): arbitrary input never panics, every rejection is a typed
//! error with a stable reason, and the canonical form round-trips.

use std::str::FromStr;

use fedid_core::crd::{Duration, duration::DurationParseError};
use proptest::prelude::*;

/// Every reason a duration error may report.
const REASONS: &[&str] = &[
    "EmptyDuration",
    "DurationMissingNumber",
    "DurationMissingUnit",
    "DurationUnexpectedCharacter",
    "DurationUnitOrder",
    "DurationTooLarge",
];

/// Strings close to valid durations: digits, the three units, and a few look-alikes
/// (other units, separators, signs, control characters, non-ASCII digits).
fn duration_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[0-9]{1,12}",
        4 => prop::sample::select(vec!["h", "m", "s"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "d", "ms", "us", "µs", "ns", ".", "-", "+", " ", "\t", "\n", "\0", "٣", "１", "H", "e",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Checks what every rejection must satisfy.
fn assert_typed(input: &str, error: &DurationParseError) {
    assert!(
        REASONS.contains(&error.reason()),
        "{input:?}: unknown reason {}",
        error.reason()
    );
    assert!(!error.to_string().is_empty(), "{input:?}: empty message");
}

/// The whole seconds of `hours`h`minutes`m`seconds`s, when that fits the type.
fn expected_seconds(hours: u64, minutes: u64, seconds: u64) -> Option<u32> {
    let total = hours
        .checked_mul(3600)?
        .checked_add(minutes.checked_mul(60)?)?
        .checked_add(seconds)?;
    u32::try_from(total).ok()
}

proptest! {
    #[test]
    fn arbitrary_text_parses_or_is_a_typed_error(input in any::<String>()) {
        if let Err(error) = Duration::from_str(&input) {
            assert_typed(&input, &error);
        }
    }

    #[test]
    fn near_miss_text_parses_or_is_a_typed_error(input in duration_like()) {
        match Duration::from_str(&input) {
            Ok(duration) => {
                // Whatever is accepted reads back as the same length.
                prop_assert_eq!(Duration::from_str(&duration.to_string()), Ok(duration));
                // and matched the schema pattern: digits and h/m/s only.
                prop_assert!(input.chars().all(|c| c.is_ascii_digit() || "hms".contains(c)));
            }
            Err(error) => assert_typed(&input, &error),
        }
    }

    #[test]
    fn canonical_form_round_trips(seconds in any::<u32>()) {
        let duration = Duration::from_secs(seconds);
        let text = duration.to_string();
        prop_assert_eq!(Duration::from_str(&text), Ok(duration));
        // The canonical form fits the schema's length limit and pattern.
        prop_assert!(text.len() >= 2 && text.len() <= 32, "{}", text);
        let json = serde_json::to_string(&duration).expect("serializes");
        prop_assert_eq!(serde_json::from_str::<Duration>(&json).expect("parses"), duration);
    }

    #[test]
    fn every_component_combination_adds_up(
        hours in prop::option::of(0u64..2_000_000),
        minutes in prop::option::of(0u64..200_000),
        seconds in prop::option::of(0u64..10_000_000),
        zeros in 0usize..3,
    ) {
        prop_assume!(hours.is_some() || minutes.is_some() || seconds.is_some());
        // Leading zeros do not change the value.
        let pad = "0".repeat(zeros);
        let mut text = String::new();
        for (value, unit) in [(hours, 'h'), (minutes, 'm'), (seconds, 's')] {
            if let Some(value) = value {
                text.push_str(&format!("{pad}{value}{unit}"));
            }
        }
        let expected =
            expected_seconds(hours.unwrap_or(0), minutes.unwrap_or(0), seconds.unwrap_or(0));
        match (Duration::from_str(&text), expected) {
            (Ok(duration), Some(expected)) => prop_assert_eq!(duration.as_secs(), expected),
            (Err(DurationParseError::TooLarge { input }), None) => prop_assert_eq!(input, text),
            (result, expected) => prop_assert!(false, "{text}: {result:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn units_out_of_order_are_rejected(a in 0u32..1000, b in 0u32..1000, order in 0usize..6) {
        let [first, second] = [["m", "h"], ["s", "h"], ["s", "m"], ["h", "h"], ["m", "m"], ["s", "s"]][order];
        let text = format!("{a}{first}{b}{second}");
        prop_assert!(
            matches!(Duration::from_str(&text), Err(DurationParseError::UnitOrder { .. })),
            "{}", text
        );
    }
}

#[test]
fn huge_inputs_are_rejected_without_panicking() {
    let digits = "9".repeat(64 * 1024);
    assert!(matches!(
        Duration::from_str(&format!("{digits}s")),
        Err(DurationParseError::TooLarge { .. })
    ));
    let units = "1h".repeat(32 * 1024);
    assert!(matches!(
        Duration::from_str(&units),
        Err(DurationParseError::UnitOrder { .. })
    ));
    let zeros = format!("{}1s", "0".repeat(64 * 1024));
    assert_eq!(Duration::from_str(&zeros), Ok(Duration::from_secs(1)));
}
