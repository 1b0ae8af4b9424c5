//! Where an issuer's keys and static files live: the key-ring Secret and the static-files
//! ConfigMap in the operator's namespace, read, checked and rendered without I/O.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::{
    crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SigningAlgorithm},
    issuer::keys::{
        KeyError, KeyRecord, KeyRing, RotationPlan, RotationPolicy, apply_plan, plan_rotation,
    },
    reason::{Failure, Reason, Retry},
};

/// Label naming the issuer a key-ring Secret or static-files ConfigMap belongs to.
pub const ISSUER_LABEL: &str = "fedid.dev/issuer";
/// Key of the key ring (JSON) in the key-ring Secret's data.
pub const KEY_RING_DATA_KEY: &str = "keys.json";
/// Data key of the discovery document in the static-files ConfigMap.
pub const DISCOVERY_FILE: &str = "openid-configuration";
/// Data key of the JWKS in the static-files ConfigMap.
pub const JWKS_FILE: &str = "jwks.json";

/// Most rotation steps applied in one pass (a plan never needs more than prune + prepare).
const MAX_PLAN_STEPS: usize = 4;

/// Name of the Secret, in the operator's namespace, holding `issuer`'s key ring.
pub fn key_ring_secret_name(issuer: &str) -> String {
    format!("fedid-keys-{issuer}")
}

/// Name of the ConfigMap, in the operator's namespace, holding `issuer`'s static files.
pub fn static_files_config_map_name(issuer: &str) -> String {
    format!("fedid-issuer-{issuer}")
}

/// Reads the key ring from a key-ring Secret; an absent Secret or key is an empty ring.
pub fn key_ring_from_secret(secret: Option<&Secret>) -> Result<KeyRing, KeyError> {
    match secret
        .and_then(|secret| secret.data.as_ref())
        .and_then(|data| data.get(KEY_RING_DATA_KEY))
    {
        Some(bytes) => KeyRing::from_json(&bytes.0),
        None => Ok(KeyRing::default()),
    }
}

/// Why an issuer's keys cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The key-ring Secret exists but belongs to something else.
    #[error(
        "Secret {namespace}/{secret} exists and is not controlled by this IdentityIssuer; \
         fedid will not use or overwrite it"
    )]
    KeyStoreConflict {
        /// Operator namespace.
        namespace: String,
        /// Secret name.
        secret: String,
    },
    /// The stored key ring cannot be read.
    #[error("the key ring in Secret {secret} is unreadable")]
    UnreadableKeyRing {
        /// Secret name.
        secret: String,
        /// Cause.
        #[source]
        source: KeyError,
    },
    /// Generating or adding a key failed.
    #[error("failed to prepare a signing key")]
    Rotation(#[source] KeyError),
}

impl Failure for KeysError {
    fn reason(&self) -> Reason {
        match self {
            Self::KeyStoreConflict { .. } => Reason::KeyStoreConflict,
            Self::UnreadableKeyRing { source, .. } => source.reason(),
            Self::Rotation(source) => source.reason(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            // Someone must remove or repair the Secret.
            Self::KeyStoreConflict { .. } | Self::UnreadableKeyRing { .. } => Retry::WaitForChange,
            Self::Rotation(_) => Retry::Backoff,
        }
    }
}

/// The key ring stored in `existing`, after checking that the Secret is controlled by the
/// issuer (`owner`). `None` (no Secret yet) is an empty ring.
pub fn stored_key_ring(
    existing: Option<&Secret>,
    owner: &OwnerReference,
    namespace: &str,
    secret_name: &str,
) -> Result<KeyRing, KeysError> {
    if let Some(secret) = existing {
        let controlled = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|reference| reference == owner);
        if !controlled {
            return Err(KeysError::KeyStoreConflict {
                namespace: namespace.to_owned(),
                secret: secret_name.to_owned(),
            });
        }
    }
    key_ring_from_secret(existing).map_err(|source| KeysError::UnreadableKeyRing {
        secret: secret_name.to_owned(),
        source,
    })
}

/// How an issuer's key ring was lost, when the stored one holds none of the keys the issuer
/// published before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRingLoss {
    /// The key-ring Secret is gone.
    Deleted,
    /// The Secret is there but holds no key.
    Emptied,
    /// The Secret is there but its key ring cannot be read.
    Corrupt,
}

impl KeyRingLoss {
    /// What happened, for the Event.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Deleted => "the key-ring Secret was deleted",
            Self::Emptied => "the key-ring Secret was emptied",
            Self::Corrupt => "the key ring in its Secret is unreadable",
        }
    }
}

/// The key ring to plan from, after checking that the Secret is controlled by the issuer
/// (`owner`), and whether keys the issuer published before (`previously_published`, from its
/// status) were lost. A lost ring is replaced, not waited on: every token its keys signed
/// fails verification already, so a new key signs at once (a bootstrap) and those tokens are
/// reissued. A Secret controlled by anything else is never used or overwritten.
pub fn recover_key_ring(
    existing: Option<&Secret>,
    owner: &OwnerReference,
    namespace: &str,
    secret_name: &str,
    previously_published: &[String],
) -> Result<(KeyRing, Option<KeyRingLoss>), KeysError> {
    let had_keys = !previously_published.is_empty();
    match stored_key_ring(existing, owner, namespace, secret_name) {
        Err(KeysError::UnreadableKeyRing { .. }) => {
            Ok((KeyRing::default(), Some(KeyRingLoss::Corrupt)))
        }
        Err(error) => Err(error),
        Ok(ring) if had_keys && ring.keys.is_empty() => {
            let loss = if existing.is_some() {
                KeyRingLoss::Emptied
            } else {
                KeyRingLoss::Deleted
            };
            Ok((ring, Some(loss)))
        }
        Ok(ring) => Ok((ring, None)),
    }
}

/// A key ring after this pass's rotation steps.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// The ring to store.
    pub ring: KeyRing,
    /// The steps applied, in order; empty when the ring was already up to date.
    pub steps: Vec<RotationPlan>,
    /// Set when the stored ring was lost and this one replaces it.
    pub lost: Option<KeyRingLoss>,
}

impl Rotation {
    /// Whether the ring must be written: a step changed it, or no Secret holds it yet.
    pub fn must_store(&self, stored: bool) -> bool {
        !(self.steps.is_empty() && stored)
    }

    /// How many keys the steps created.
    pub fn keys_created(&self) -> usize {
        self.steps
            .iter()
            .filter(|plan| plan.key_to_generate().is_some())
            .count()
    }
}

/// Plans and applies every rotation step due at `now` (prune, then prepare, say), in memory, so
/// the ring is written once. `generate` makes a new key of an algorithm (the shell passes the
/// real generator; it is CPU-bound and run off the reconcilers' threads).
pub fn rotate(
    ring: KeyRing,
    policy: &RotationPolicy,
    rotation_request: Option<&str>,
    now: Timestamp,
    mut generate: impl FnMut(SigningAlgorithm, Timestamp) -> Result<KeyRecord, KeyError>,
) -> Result<Rotation, KeysError> {
    let mut next = ring;
    let mut steps = Vec::new();
    for _ in 0..MAX_PLAN_STEPS {
        let plan = plan_rotation(&next, policy, rotation_request, now);
        if plan == RotationPlan::Unchanged {
            break;
        }
        let new_key = plan
            .key_to_generate()
            .map(|algorithm| generate(algorithm, now))
            .transpose()
            .map_err(KeysError::Rotation)?;
        next = apply_plan(&next, &plan, new_key).map_err(KeysError::Rotation)?;
        steps.push(plan);
    }
    Ok(Rotation {
        ring: next,
        steps,
        lost: None,
    })
}

/// The key-ring Secret holding `ring`, written with the `resource_version` it was planned from
/// (so that of two replicas racing, exactly one write succeeds).
pub fn render_key_ring_secret(
    issuer: &str,
    namespace: &str,
    owner: &OwnerReference,
    ring: &KeyRing,
    resource_version: Option<String>,
) -> Result<Secret, KeysError> {
    let data = ring.to_json().map_err(KeysError::Rotation)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(key_ring_secret_name(issuer)),
            namespace: Some(namespace.to_owned()),
            labels: Some(issuer_labels(issuer)),
            owner_references: Some(vec![owner.clone()]),
            resource_version,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(data),
        )])),
        ..Secret::default()
    })
}

/// The static-files ConfigMap mirroring an issuer's discovery document and JWKS.
pub fn render_static_files(
    issuer: &str,
    namespace: &str,
    owner: &OwnerReference,
    discovery: &[u8],
    jwks: &[u8],
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(static_files_config_map_name(issuer)),
            namespace: Some(namespace.to_owned()),
            labels: Some(issuer_labels(issuer)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                DISCOVERY_FILE.to_owned(),
                String::from_utf8_lossy(discovery).into_owned(),
            ),
            (
                JWKS_FILE.to_owned(),
                String::from_utf8_lossy(jwks).into_owned(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

fn issuer_labels(issuer: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (ISSUER_LABEL.to_owned(), issuer.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::keys::generate_key;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "fedid.dev/v1alpha1".into(),
            kind: "IdentityIssuer".into(),
            name: "ci".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn policy() -> RotationPolicy {
        let spec: crate::crd::IdentityIssuerSpec =
            serde_json::from_value(serde_json::json!({"issuerURL": "https://fedid.example.com"}))
                .expect("spec");
        crate::issuer::config::validate_issuer_spec(&spec)
            .expect("valid")
            .rotation
    }

    #[test]
    fn a_foreign_or_corrupt_key_store_is_refused_and_waits_for_a_change() {
        let foreign = Secret {
            metadata: ObjectMeta {
                owner_references: Some(vec![owner("someone-else")]),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let error = stored_key_ring(
            Some(&foreign),
            &owner("uid-ci"),
            "fedid-system",
            "fedid-keys-ci",
        )
        .expect_err("foreign");
        assert_eq!(error.reason(), Reason::KeyStoreConflict);
        assert_eq!(error.retry(), Retry::WaitForChange);

        let mut corrupt = foreign.clone();
        corrupt.metadata.owner_references = Some(vec![owner("uid-ci")]);
        corrupt.data = Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(b"not json".to_vec()),
        )]));
        let error = stored_key_ring(
            Some(&corrupt),
            &owner("uid-ci"),
            "fedid-system",
            "fedid-keys-ci",
        )
        .expect_err("corrupt");
        assert_eq!(error.reason(), Reason::KeyRingCorrupt);
        assert_eq!(error.retry(), Retry::WaitForChange);

        let empty = stored_key_ring(None, &owner("uid-ci"), "fedid-system", "fedid-keys-ci")
            .expect("no Secret is an empty ring");
        assert!(empty.keys.is_empty());
    }

    #[test]
    fn a_lost_ring_is_replaced_and_a_foreign_one_never() {
        let ours = owner("uid-ci");
        let recover = |existing: Option<&Secret>, published: &[String]| {
            recover_key_ring(existing, &ours, "fedid-system", "fedid-keys-ci", published)
        };
        let published = ["kid-1".to_owned()];
        // Never had keys: a first bootstrap, nothing lost.
        let (ring, lost) = recover(None, &[]).expect("empty");
        assert!(ring.keys.is_empty() && lost.is_none());
        // Had keys, and the Secret is gone, emptied or unreadable.
        assert_eq!(
            recover(None, &published).expect("deleted").1,
            Some(KeyRingLoss::Deleted)
        );
        let emptied = Secret {
            metadata: ObjectMeta {
                owner_references: Some(vec![ours.clone()]),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert_eq!(
            recover(Some(&emptied), &published).expect("emptied").1,
            Some(KeyRingLoss::Emptied)
        );
        let mut corrupt = emptied.clone();
        corrupt.data = Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(b"not json".to_vec()),
        )]));
        let (ring, lost) = recover(Some(&corrupt), &published).expect("replaced");
        assert!(ring.keys.is_empty());
        assert_eq!(lost, Some(KeyRingLoss::Corrupt));
        // Someone else's Secret, corrupt or not, stays someone else's.
        let mut foreign = corrupt.clone();
        foreign.metadata.owner_references = Some(vec![owner("someone-else")]);
        assert_eq!(
            recover(Some(&foreign), &published)
                .expect_err("foreign")
                .reason(),
            Reason::KeyStoreConflict
        );
        // A ring that holds keys is no loss.
        let full = rotate(
            KeyRing::default(),
            &policy(),
            None,
            at(1_800_000_000),
            generate_key,
        )
        .expect("bootstrap")
        .ring;
        let mut stored = emptied.clone();
        stored.data = Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(full.to_json().expect("json")),
        )]));
        assert_eq!(recover(Some(&stored), &published).expect("stored").1, None);
    }

    #[test]
    fn rotation_bootstraps_once_and_then_changes_nothing() {
        let mut generated = 0;
        let first = rotate(
            KeyRing::default(),
            &policy(),
            None,
            at(1_800_000_000),
            |alg, now| {
                generated += 1;
                generate_key(alg, now)
            },
        )
        .expect("rotates");
        assert_eq!(first.keys_created(), 1);
        assert_eq!(generated, 1);
        let again = rotate(
            first.ring.clone(),
            &policy(),
            None,
            at(1_800_000_060),
            |_, _| panic!("no key may be generated when nothing is due"),
        )
        .expect("rotates");
        assert!(again.steps.is_empty());
        assert_eq!(again.ring, first.ring);
        assert!(first.must_store(true), "a new key is written");
        assert!(
            !again.must_store(true),
            "an unchanged stored ring is not written"
        );
        assert!(
            again.must_store(false),
            "a ring no Secret holds yet is written"
        );
    }

    #[test]
    fn a_failed_key_generation_is_a_transient_key_generation_failure() {
        let error = rotate(
            KeyRing::default(),
            &policy(),
            None,
            at(1_800_000_000),
            |_, _| Err(KeyError::MissingNewKey),
        )
        .expect_err("fails");
        assert_eq!(error.reason(), Reason::KeyGenerationFailed);
        assert_eq!(error.retry(), Retry::Backoff);
    }

    #[test]
    fn rendered_objects_carry_labels_owner_and_version() {
        let ring = rotate(
            KeyRing::default(),
            &policy(),
            None,
            at(1_800_000_000),
            generate_key,
        )
        .expect("rotates")
        .ring;
        let secret =
            render_key_ring_secret("ci", "fedid-system", &owner("u"), &ring, Some("41".into()))
                .expect("renders");
        assert_eq!(secret.metadata.name.as_deref(), Some("fedid-keys-ci"));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(
            secret.metadata.labels.as_ref().expect("labels")[ISSUER_LABEL],
            "ci"
        );
        assert_eq!(
            key_ring_from_secret(Some(&secret)).expect("reads back"),
            ring
        );
        let files = render_static_files("ci", "fedid-system", &owner("u"), b"{}", b"[]");
        assert_eq!(files.metadata.name.as_deref(), Some("fedid-issuer-ci"));
        assert_eq!(files.data.expect("data")[JWKS_FILE], "[]");
    }
}
