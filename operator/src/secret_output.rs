//! The Secret a FederatedIdentity's token is written to, and who owns an existing Secret.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::{crd::FederatedIdentity, timestamps::whole_seconds};

/// Data key holding the signed JWT.
pub const TOKEN_KEY: &str = "token";

/// Data key holding the token's expiry as an RFC 3339 timestamp.
pub const EXPIRES_AT_KEY: &str = "expires-at";

/// Standard label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY_LABEL`] on every Secret fedid writes.
pub const MANAGED_BY_VALUE: &str = "fedid";

/// Label naming the FederatedIdentity a Secret belongs to.
pub const IDENTITY_LABEL: &str = "fedid.dev/identity";

/// Annotation naming the key (`kid`) that signed the token in the Secret.
pub const KEY_ID_ANNOTATION: &str = "fedid.dev/key-id";

/// Longest Kubernetes label value.
const MAX_LABEL_VALUE_LENGTH: usize = 63;

/// Why the output Secret cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretOutputError {
    /// The identity has no name, UID or namespace (it was not read from the apiserver).
    #[error("FederatedIdentity has no {field}; it must be read from the apiserver")]
    MissingMetadata {
        /// The missing metadata field.
        field: &'static str,
    },
}

impl SecretOutputError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingMetadata { .. } => "MissingMetadata",
        }
    }
}

/// Value of [`IDENTITY_LABEL`] for an identity: its name, or, for names longer than a label
/// value may be, a prefix of the name followed by a hash of the whole name.
pub fn identity_label_value(identity_name: &str) -> String {
    if identity_name.len() <= MAX_LABEL_VALUE_LENGTH {
        return identity_name.to_owned();
    }
    let digest = Sha256::digest(identity_name.as_bytes());
    let hash: String = digest
        .iter()
        .take(5)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let prefix: String = identity_name
        .chars()
        .take(MAX_LABEL_VALUE_LENGTH - hash.len() - 1)
        .collect();
    format!("{prefix}-{hash}")
}

/// The Secret holding `token` for `identity`: type `Opaque`, data keys [`TOKEN_KEY`] and
/// [`EXPIRES_AT_KEY`], fedid's labels, the signing key's ID as an annotation, and a controller
/// owner reference to the identity so the Secret is garbage-collected with it.
pub fn desired_secret(
    identity: &FederatedIdentity,
    secret_name: &str,
    token: &str,
    expires_at: Timestamp,
    key_id: &str,
) -> Result<Secret, SecretOutputError> {
    let missing = |field| SecretOutputError::MissingMetadata { field };
    let identity_name = identity
        .meta()
        .name
        .as_deref()
        .ok_or_else(|| missing("name"))?;
    let namespace = identity
        .meta()
        .namespace
        .clone()
        .ok_or_else(|| missing("namespace"))?;
    if identity.meta().uid.is_none() {
        return Err(missing("uid"));
    }
    let owner = identity
        .controller_owner_ref(&())
        .ok_or_else(|| missing("uid"))?;

    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (
            IDENTITY_LABEL.to_owned(),
            identity_label_value(identity_name),
        ),
    ]);
    let annotations = BTreeMap::from([(KEY_ID_ANNOTATION.to_owned(), key_id.to_owned())]);
    let data = BTreeMap::from([
        (TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec())),
        (
            EXPIRES_AT_KEY.to_owned(),
            ByteString(whole_seconds(expires_at).to_string().into_bytes()),
        ),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}

/// Who owns the Secret an identity wants to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No Secret with that name exists.
    Absent,
    /// The Secret's controller owner reference points at the identity.
    Ours,
    /// The Secret exists and is not controlled by the identity; fedid must not touch it.
    Foreign,
}

/// Classifies `existing` for the identity with UID `identity_uid`.
pub fn ownership(existing: Option<&Secret>, identity_uid: &str) -> Ownership {
    let Some(secret) = existing else {
        return Ownership::Absent;
    };
    let controlled_by_identity = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && owner.uid == identity_uid);
    if controlled_by_identity {
        Ownership::Ours
    } else {
        Ownership::Foreign
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    use super::*;
    use crate::crd::FederatedIdentitySpec;

    const UID: &str = "6f1d2c3b-0000-4000-8000-000000000001";

    fn identity(name: &str) -> FederatedIdentity {
        let spec: FederatedIdentitySpec =
            serde_json::from_value(json!({"audiences": ["sts.amazonaws.com"]})).expect("spec");
        let mut identity = FederatedIdentity::new(name, spec);
        identity.metadata.namespace = Some("ci".into());
        identity.metadata.uid = Some(UID.into());
        identity
    }

    fn expires_at() -> Timestamp {
        Timestamp::from_second(1_800_003_600).expect("valid timestamp")
    }

    #[test]
    fn renders_the_exact_secret() {
        let secret = desired_secret(
            &identity("deploy"),
            "deploy-token",
            "a.b.c",
            expires_at(),
            "kid-1",
        )
        .expect("renders");
        assert_eq!(
            serde_json::to_value(&secret).expect("serializes"),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "deploy-token",
                    "namespace": "ci",
                    "labels": {
                        "app.kubernetes.io/managed-by": "fedid",
                        "fedid.dev/identity": "deploy"
                    },
                    "annotations": {"fedid.dev/key-id": "kid-1"},
                    "ownerReferences": [{
                        "apiVersion": "fedid.dev/v1alpha1",
                        "kind": "FederatedIdentity",
                        "name": "deploy",
                        "uid": UID,
                        "controller": true
                    }]
                },
                "type": "Opaque",
                "data": {
                    // base64 of "a.b.c" and "2027-01-15T09:00:00Z"
                    "token": "YS5iLmM=",
                    "expires-at": "MjAyNy0wMS0xNVQwOTowMDowMFo="
                }
            })
        );
    }

    #[test]
    fn missing_metadata_is_a_typed_error() {
        let mut no_uid = identity("deploy");
        no_uid.metadata.uid = None;
        let mut no_namespace = identity("deploy");
        no_namespace.metadata.namespace = None;
        for (broken, field) in [(no_uid, "uid"), (no_namespace, "namespace")] {
            let error = desired_secret(&broken, "s", "t", expires_at(), "k").expect_err("missing");
            assert_eq!(error, SecretOutputError::MissingMetadata { field });
            assert_eq!(error.reason(), "MissingMetadata");
        }
    }

    #[test]
    fn long_identity_names_get_a_valid_label_value() {
        assert_eq!(identity_label_value("web"), "web");
        let exactly = "a".repeat(63);
        assert_eq!(identity_label_value(&exactly), exactly);
        let long = format!("{}.x", "a".repeat(100));
        let value = identity_label_value(&long);
        assert_eq!(value.len(), 63);
        assert!(value.starts_with("aaaa"));
        assert_ne!(
            value,
            identity_label_value(&format!("{}.y", "a".repeat(100)))
        );
        let secret =
            desired_secret(&identity(&long), "s", "t", expires_at(), "k").expect("renders");
        assert_eq!(
            secret.metadata.labels.expect("labels")[IDENTITY_LABEL],
            value
        );
    }

    fn secret_owned_by(owners: Vec<OwnerReference>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("deploy-token".into()),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    fn owner(uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "fedid.dev/v1alpha1".into(),
            kind: "FederatedIdentity".into(),
            name: "deploy".into(),
            uid: uid.into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn ownership_requires_a_controller_reference_with_our_uid() {
        assert_eq!(ownership(None, UID), Ownership::Absent);
        let ours = secret_owned_by(vec![owner("other", None), owner(UID, Some(true))]);
        assert_eq!(ownership(Some(&ours), UID), Ownership::Ours);
        let rendered = desired_secret(&identity("deploy"), "deploy-token", "t", expires_at(), "k")
            .expect("renders");
        assert_eq!(ownership(Some(&rendered), UID), Ownership::Ours);

        for foreign in [
            Secret::default(),
            secret_owned_by(vec![]),
            secret_owned_by(vec![owner(UID, None)]),
            secret_owned_by(vec![owner(UID, Some(false))]),
            secret_owned_by(vec![owner("someone-else", Some(true))]),
        ] {
            assert_eq!(ownership(Some(&foreign), UID), Ownership::Foreign);
        }
    }
}
