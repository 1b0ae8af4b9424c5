//! The Secret a FederatedIdentity's token is written to, and who owns an existing Secret.

use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

/// Data key holding the signed JWT.
pub const TOKEN_KEY: &str = "token";

/// Data key holding, as an RFC 3339 timestamp, when the Secret's contents expire: the token's
/// expiry, or for an identity with an exchange the earlier of the token's and the credentials'.
pub const EXPIRES_AT_KEY: &str = "expires-at";

/// Annotation holding the digest of the `spec.exchange` the credentials were obtained with.
pub const EXCHANGE_DIGEST_ANNOTATION: &str = "fedid.dev/exchange-digest";

/// Annotation holding when the exchanged credentials expire (RFC 3339).
pub const CREDENTIALS_EXPIRE_AT_ANNOTATION: &str = "fedid.dev/credentials-expire-at";

/// Annotation holding the digest of the `spec.output` templates and type the Secret was
/// rendered with (absent for the default output).
pub const OUTPUT_DIGEST_ANNOTATION: &str = "fedid.dev/output-digest";

/// Annotation holding the digest of the data fedid wrote ([`data_digest`]): data that no
/// longer matches it was changed by someone else, and fedid writes it again.
pub const DATA_DIGEST_ANNOTATION: &str = "fedid.dev/data-digest";

/// Digest of a Secret's data, keys and values (16 hex digits): it changes exactly when the
/// contents do.
pub fn data_digest(secret: &Secret) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in secret.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(
            u64::try_from(value.0.len())
                .unwrap_or(u64::MAX)
                .to_be_bytes(),
        );
        hasher.update(&value.0);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `secret`'s data differs from what fedid recorded writing (`false` when there is no
/// record, as on Secrets written before fedid kept one).
pub fn data_changed_since_written(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DATA_DIGEST_ANNOTATION))
        .is_some_and(|recorded| *recorded != data_digest(secret))
}

/// Label naming the FederatedIdentity a Secret belongs to.
pub const IDENTITY_LABEL: &str = "fedid.dev/identity";

/// Annotation naming the key (`kid`) that signed the token in the Secret.
pub const KEY_ID_ANNOTATION: &str = "fedid.dev/key-id";

/// Annotation holding the token without its signature (`header.claims.`), when the identity's
/// `output.includeSubjectToken` is `false`: enough to decide renewals, useless as a credential.
pub const UNSIGNED_TOKEN_ANNOTATION: &str = "fedid.dev/unsigned-token";

/// `jwt` with its signature removed: the header and claims segments and an empty signature.
pub fn unsigned_token(jwt: &str) -> String {
    match jwt.rfind('.') {
        Some(end) => jwt[..=end].to_owned(),
        None => String::new(),
    }
}

/// Longest Kubernetes label value.
const MAX_LABEL_VALUE_LENGTH: usize = 63;

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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    const UID: &str = "6f1d2c3b-0000-4000-8000-000000000001";

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
    }

    #[test]
    fn ownership_requires_a_controller_reference_with_our_uid() {
        assert_eq!(ownership(None, UID), Ownership::Absent);
        let ours = secret_owned_by(vec![owner("other", None), owner(UID, Some(true))]);
        assert_eq!(ownership(Some(&ours), UID), Ownership::Ours);
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
