//! Property tests of label selector evaluation (`fedid_core::label_selector`): arbitrary
//! selectors never panic, every malformed requirement is a typed error with a selector
//! reason (reported whatever the labels), the verdict follows the apimachinery semantics, and a
//! selector rendered to JSON and parsed back (as the apiserver stores it) decides the same.

use std::collections::BTreeMap;

use fedid_core::{
    label_selector::{SelectorError, selector_matches},
    reason::Reason,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::prelude::*;

const SELECTOR_REASONS: &[Reason] = &[
    Reason::UnknownSelectorOperator,
    Reason::MissingSelectorValues,
    Reason::UnexpectedSelectorValues,
];

/// Keys and values from a small alphabet, so that selectors and labels often share them, plus
/// hostile text.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "team", "env", "", "fedid.dev/x"]).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => prop::sample::select(vec!["a,b", "a=b", "!a", "a in (b)", "\0", "\n", " a"]).prop_map(str::to_owned),
    ]
}

fn operator() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["in", "Equals", "", "In ", "Exists\0", "!="]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        word(),
        operator(),
        prop::option::of(prop::collection::vec(word(), 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(word(), word(), 0..4)
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::option::of(prop::collection::vec(requirement(), 0..4)),
        prop::option::of(labels()),
    )
        .prop_map(|(match_expressions, match_labels)| LabelSelector {
            match_expressions,
            match_labels,
        })
}

/// What a requirement is, as apimachinery defines it; `None` when it is malformed.
fn expected_requirement(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let values = requirement.values.clone().unwrap_or_default();
    let actual = labels.get(&requirement.key);
    match (requirement.operator.as_str(), values.is_empty()) {
        ("In", false) => Some(actual.is_some_and(|value| values.contains(value))),
        ("NotIn", false) => Some(!actual.is_some_and(|value| values.contains(value))),
        ("Exists", true) => Some(actual.is_some()),
        ("DoesNotExist", true) => Some(actual.is_none()),
        _ => None,
    }
}

proptest! {
    #[test]
    fn selectors_decide_as_apimachinery_or_fail_with_a_selector_reason(
        selector in selector(),
        labels in labels(),
    ) {
        let requirements = selector.match_expressions.clone().unwrap_or_default();
        let verdicts: Option<Vec<bool>> = requirements
            .iter()
            .map(|requirement| expected_requirement(requirement, &labels))
            .collect();
        match (selector_matches(&selector, &labels), verdicts) {
            (Ok(matched), Some(verdicts)) => {
                let pairs_match = selector
                    .match_labels
                    .iter()
                    .flatten()
                    .all(|(key, value)| labels.get(key) == Some(value));
                prop_assert_eq!(matched, pairs_match && verdicts.iter().all(|v| *v));
            }
            (Err(error), None) => {
                prop_assert!(SELECTOR_REASONS.contains(&error.reason()), "{}", error);
                prop_assert!(!error.to_string().is_empty());
                // A malformed selector is reported whatever the labels are.
                prop_assert_eq!(selector_matches(&selector, &BTreeMap::new()).err(), Some(error));
            }
            (result, verdicts) => prop_assert!(false, "{result:?} but expected {verdicts:?}"),
        }
    }

    #[test]
    fn a_selector_read_back_from_json_decides_the_same(
        selector in selector(),
        labels in labels(),
    ) {
        let json = serde_json::to_string(&selector).expect("renders");
        let parsed: LabelSelector = serde_json::from_str(&json).expect("parses back");
        prop_assert_eq!(&parsed, &selector);
        prop_assert_eq!(
            selector_matches(&parsed, &labels),
            selector_matches(&selector, &labels)
        );
    }

    #[test]
    fn in_and_not_in_are_complements(
        key in word(),
        values in prop::collection::vec(word(), 1..3),
        labels in labels(),
    ) {
        let with = |operator: &str| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.clone(),
                operator: operator.to_owned(),
                values: Some(values.clone()),
            }]),
            match_labels: None,
        };
        let is_in = selector_matches(&with("In"), &labels).expect("valid");
        let not_in = selector_matches(&with("NotIn"), &labels).expect("valid");
        prop_assert_ne!(is_in, not_in);
    }

    #[test]
    fn match_labels_always_match_the_labels_they_list(
        listed in labels(),
        extra in labels(),
    ) {
        let selector = LabelSelector { match_labels: Some(listed.clone()), match_expressions: None };
        let mut labels = extra;
        labels.extend(listed);
        prop_assert_eq!(selector_matches(&selector, &labels), Ok(true));
    }
}

#[test]
fn huge_selectors_are_decided_without_panicking() {
    let big = "k".repeat(64 * 1024);
    let requirements: Vec<LabelSelectorRequirement> = (0..1000)
        .map(|index| LabelSelectorRequirement {
            key: format!("{big}{index}"),
            operator: "NotIn".into(),
            values: Some(vec![big.clone()]),
        })
        .collect();
    let selector = LabelSelector {
        match_expressions: Some(requirements),
        match_labels: Some(BTreeMap::from([(big.clone(), big.clone())])),
    };
    let labels = BTreeMap::from([(big.clone(), big.clone())]);
    assert_eq!(selector_matches(&selector, &labels), Ok(true));
    let malformed = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: big.clone(),
            operator: big,
            values: None,
        }]),
        match_labels: None,
    };
    assert!(matches!(
        selector_matches(&malformed, &labels),
        Err(SelectorError::UnknownOperator { .. })
    ));
}
