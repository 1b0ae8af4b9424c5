//! Pure evaluation of Kubernetes label selectors against a set of labels.
//!
//! Follows the apimachinery semantics: `matchLabels` and every `matchExpressions` requirement
//! are ANDed, and an empty selector matches every set of labels. Malformed requirements
//! (an unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values) are
//! errors rather than silent non-matches, so a typo cannot quietly widen or narrow access.

use crate::reason::Reason;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Why a label selector cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The operator is not one of In, NotIn, Exists, DoesNotExist.
    #[error(
        "label selector requirement on {key:?} has unknown operator {operator:?}; \
         use In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        /// Label key of the requirement.
        key: String,
        /// The operator as written.
        operator: String,
    },
    /// `In` or `NotIn` was given no values.
    #[error("label selector requirement on {key:?} uses {operator} and needs at least one value")]
    MissingValues {
        /// Label key of the requirement.
        key: String,
        /// `In` or `NotIn`.
        operator: String,
    },
    /// `Exists` or `DoesNotExist` was given values.
    #[error("label selector requirement on {key:?} uses {operator} and must not list values")]
    UnexpectedValues {
        /// Label key of the requirement.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: String,
    },
}

impl SelectorError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> Reason {
        match self {
            Self::UnknownOperator { .. } => Reason::UnknownSelectorOperator,
            Self::MissingValues { .. } => Reason::MissingSelectorValues,
            Self::UnexpectedValues { .. } => Reason::UnexpectedSelectorValues,
        }
    }
}

/// Whether `labels` satisfy `selector`.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    // Evaluate every requirement first so a malformed one is reported even when an earlier
    // requirement already fails to match.
    let mut all_match = true;
    for requirement in selector.match_expressions.iter().flatten() {
        all_match &= requirement_matches(requirement, labels)?;
    }
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    Ok(all_match && labels_match)
}

fn requirement_matches(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let key = &requirement.key;
    let values = requirement.values.as_deref().unwrap_or_default();
    let actual = labels.get(key);
    let operator = requirement.operator.as_str();
    match operator {
        "In" | "NotIn" if values.is_empty() => Err(SelectorError::MissingValues {
            key: key.clone(),
            operator: operator.to_owned(),
        }),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(SelectorError::UnexpectedValues {
            key: key.clone(),
            operator: operator.to_owned(),
        }),
        "In" => Ok(actual.is_some_and(|value| values.contains(value))),
        "NotIn" => Ok(actual.is_none_or(|value| !values.contains(value))),
        "Exists" => Ok(actual.is_some()),
        "DoesNotExist" => Ok(actual.is_none()),
        _ => Err(SelectorError::UnknownOperator {
            key: key.clone(),
            operator: operator.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: values.map(|values| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn expressions(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(requirements),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let selector = LabelSelector::default();
        assert_eq!(selector_matches(&selector, &labels(&[])), Ok(true));
        assert_eq!(
            selector_matches(&selector, &labels(&[("a", "b")])),
            Ok(true)
        );
    }

    #[test]
    fn match_labels_requires_every_pair() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("team", "ci"), ("env", "prod")])),
            match_expressions: None,
        };
        let both = labels(&[("team", "ci"), ("env", "prod"), ("x", "y")]);
        assert_eq!(selector_matches(&selector, &both), Ok(true));
        let one = labels(&[("team", "ci")]);
        assert_eq!(selector_matches(&selector, &one), Ok(false));
        let wrong = labels(&[("team", "ci"), ("env", "dev")]);
        assert_eq!(selector_matches(&selector, &wrong), Ok(false));
    }

    #[test]
    fn in_and_not_in() {
        let is_in = expressions(vec![requirement("env", "In", Some(&["prod", "staging"]))]);
        assert_eq!(
            selector_matches(&is_in, &labels(&[("env", "prod")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&is_in, &labels(&[("env", "dev")])),
            Ok(false)
        );
        assert_eq!(selector_matches(&is_in, &labels(&[])), Ok(false));

        let not_in = expressions(vec![requirement("env", "NotIn", Some(&["prod"]))]);
        assert_eq!(
            selector_matches(&not_in, &labels(&[("env", "dev")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&not_in, &labels(&[("env", "prod")])),
            Ok(false)
        );
        // A missing key is "not in" any set, as in Kubernetes.
        assert_eq!(selector_matches(&not_in, &labels(&[])), Ok(true));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let exists = expressions(vec![requirement("ci", "Exists", None)]);
        assert_eq!(selector_matches(&exists, &labels(&[("ci", "")])), Ok(true));
        assert_eq!(
            selector_matches(&exists, &labels(&[("other", "")])),
            Ok(false)
        );

        let absent = expressions(vec![requirement("ci", "DoesNotExist", Some(&[]))]);
        assert_eq!(selector_matches(&absent, &labels(&[])), Ok(true));
        assert_eq!(
            selector_matches(&absent, &labels(&[("ci", "1")])),
            Ok(false)
        );
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("team", "ci")])),
            match_expressions: Some(vec![requirement("env", "In", Some(&["prod"]))]),
        };
        let matching = labels(&[("team", "ci"), ("env", "prod")]);
        assert_eq!(selector_matches(&selector, &matching), Ok(true));
        let only_label = labels(&[("team", "ci"), ("env", "dev")]);
        assert_eq!(selector_matches(&selector, &only_label), Ok(false));
        let only_expression = labels(&[("team", "web"), ("env", "prod")]);
        assert_eq!(selector_matches(&selector, &only_expression), Ok(false));
    }

    #[test]
    fn malformed_requirements_are_errors() {
        let cases = [
            (
                requirement("a", "Equals", Some(&["x"])),
                "UnknownSelectorOperator",
            ),
            (
                requirement("a", "in", Some(&["x"])),
                "UnknownSelectorOperator",
            ),
            (requirement("a", "In", None), "MissingSelectorValues"),
            (
                requirement("a", "NotIn", Some(&[])),
                "MissingSelectorValues",
            ),
            (
                requirement("a", "Exists", Some(&["x"])),
                "UnexpectedSelectorValues",
            ),
        ];
        for (bad, reason) in cases {
            // Reported even though the first requirement already fails to match.
            let selector = expressions(vec![requirement("missing", "Exists", None), bad]);
            let error = selector_matches(&selector, &labels(&[])).expect_err("malformed");
            assert_eq!(error.reason(), reason, "{error}");
        }
    }
}
