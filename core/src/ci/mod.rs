//! CI claims: what a pod's labels and annotations say about its CI job, under a preset and the
//! identity's rules. Used by validation (a stand-in pod) and by binding a real pod.

pub mod presets;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::{
    claims::PodBinding,
    crd::{
        Claim,
        pods::{PodField, PodsSpec},
    },
};

/// A required label or annotation is missing or empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("claim {claim:?} is required but the pod has no {field}")]
pub struct MissingPodClaim {
    /// Claim name.
    pub claim: String,
    /// `label "<key>"` or `annotation "<key>"`.
    pub field: String,
}

/// The CI claims of `pod` under `pods`' preset and rules: strings (surrounding whitespace
/// trimmed), in the rules' order, a missing optional value left out, a missing required one an
/// error. A required rule that reads neither or both of a label and an annotation (the schema
/// forbids it) is an error too, so it cannot silently stop gating the token. Values are kept
/// whole: one longer than a claim may be
/// ([`MAX_CLAIM_STRING_LENGTH`](crate::crd::claim::MAX_CLAIM_STRING_LENGTH) characters) is
/// refused when the claims are built, rather than cut into a value the CI system never set.
pub fn ci_claims(pods: &PodsSpec, pod: &Pod) -> Result<Vec<Claim>, MissingPodClaim> {
    if let Some(rule) = pods
        .claims
        .iter()
        .find(|rule| rule.required && rule.field().is_none())
    {
        return Err(MissingPodClaim {
            claim: rule.name.clone(),
            field: "label or annotation the rule can read: it must set exactly one of \
                    fromLabel and fromAnnotation"
                .to_owned(),
        });
    }
    let no_map = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&no_map);
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_map);
    let mut claims = Vec::new();
    for rule in presets::effective_rules(pods) {
        let (value, field) = match rule.field {
            PodField::Label(key) => (labels.get(key), format!("label {key:?}")),
            PodField::Annotation(key) => (annotations.get(key), format!("annotation {key:?}")),
        };
        match value
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
        {
            Some(value) => claims.push(Claim::string(rule.name, value)),
            None if rule.required => {
                return Err(MissingPodClaim {
                    claim: rule.name.to_owned(),
                    field,
                });
            }
            None => {}
        }
    }
    Ok(claims)
}

/// A stand-in pod binding with every CI claim the rules can yield, used to check an
/// identity's claims and subject template before any pod exists.
pub fn sample_binding(pods: &PodsSpec) -> PodBinding {
    PodBinding {
        name: "pod".to_owned(),
        uid: "00000000-0000-0000-0000-000000000000".to_owned(),
        service_account: "default".to_owned(),
        ci_claims: presets::effective_rules(pods)
            .iter()
            .map(|rule| Claim::string(rule.name, "sample"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::{
        claim::{ClaimError, MAX_CLAIM_STRING_LENGTH},
        pods::PodClaimRule,
    };

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "job", "annotations": annotations}}))
            .expect("pod")
    }

    fn rule(from_label: Option<&str>, from_annotation: Option<&str>, required: bool) -> PodsSpec {
        PodsSpec {
            claims: vec![PodClaimRule {
                name: "team".into(),
                from_label: from_label.map(str::to_owned),
                from_annotation: from_annotation.map(str::to_owned),
                required,
            }],
            ..PodsSpec::default()
        }
    }

    #[test]
    fn values_longer_than_a_claim_are_kept_whole_and_then_refused() {
        let long = "a".repeat(MAX_CLAIM_STRING_LENGTH + 1);
        let claims = ci_claims(
            &rule(None, Some("example.com/team"), true),
            &pod(json!({"example.com/team": long})),
        )
        .expect("present");
        assert_eq!(claims, [Claim::string("team", long)]);
        assert_eq!(
            claims[0].validated_value(),
            Err(ClaimError::ValueTooLong {
                name: "team".into()
            })
        );
    }

    #[test]
    fn a_required_rule_that_reads_no_single_field_refuses_the_pod() {
        let labelled = pod(json!({"example.com/team": "web"}));
        for (from_label, from_annotation) in [(None, None), (Some("a"), Some("example.com/team"))] {
            let error = ci_claims(&rule(from_label, from_annotation, true), &labelled)
                .expect_err("cannot be checked");
            assert_eq!(error.claim, "team");
            assert!(error.to_string().contains("exactly one of"), "{error}");
            // An optional one is left out, as a missing value is.
            assert_eq!(
                ci_claims(&rule(from_label, from_annotation, false), &labelled),
                Ok(vec![])
            );
        }
    }
}
