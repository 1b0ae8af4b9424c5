//! CI claims: what a pod's labels and annotations say about its CI job, under a preset and the
//! identity's rules. Used by validation (a stand-in pod) and by binding a real pod.

pub mod presets;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::{
    claims::PodBinding,
    crd::{
        Claim,
        claim::MAX_CLAIM_STRING_LENGTH,
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

/// The CI claims of `pod` under `pods`' preset and rules: strings, in the rules' order, a
/// missing optional value left out, a missing required one an error. Values longer than a
/// claim may be are cut at [`MAX_CLAIM_STRING_LENGTH`] characters.
pub fn ci_claims(pods: &PodsSpec, pod: &Pod) -> Result<Vec<Claim>, MissingPodClaim> {
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
            Some(value) => claims.push(Claim::string(
                rule.name,
                value
                    .chars()
                    .take(MAX_CLAIM_STRING_LENGTH)
                    .collect::<String>(),
            )),
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
