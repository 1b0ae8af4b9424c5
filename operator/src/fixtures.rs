//! Builders shared by the unit tests: issuers, key rings and a loaded registry, without a
//! cluster.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    api::ObjectMeta,
    runtime::{reflector, watcher},
};

use crate::{
    crd::{IdentityIssuer, IdentityIssuerSpec, SigningAlgorithm},
    issuer::{IssuerRegistry, KEY_RING_DATA_KEY, key_ring_secret_name},
    keys::{KeyRing, generate_key},
    timestamps::whole_seconds,
};

/// The operator namespace the fixtures use.
pub const NAMESPACE: &str = "fedid-system";

/// An IdentityIssuer from a JSON spec, as the apiserver would return it.
pub fn issuer(name: &str, spec: serde_json::Value) -> IdentityIssuer {
    let spec: IdentityIssuerSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut issuer = IdentityIssuer::new(name, spec);
    issuer.metadata.resource_version = Some("1".into());
    issuer.metadata.uid = Some(format!("uid-{name}"));
    issuer
}

/// A ring with one RS256 key that signs from now on (whole seconds, as the controllers decide).
pub fn ring() -> KeyRing {
    let now = whole_seconds(Timestamp::now());
    KeyRing {
        keys: vec![generate_key(SigningAlgorithm::RS256, now).expect("a key")],
        last_rotation_request: None,
    }
}

/// The key-ring Secret of `issuer` holding `ring`.
pub fn key_secret(issuer: &str, ring: &KeyRing) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(key_ring_secret_name(issuer)),
            namespace: Some(NAMESPACE.into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(ring.to_json().expect("ring serializes")),
        )])),
        ..Secret::default()
    }
}

/// A synced registry holding `issuers`, each with the ring given for it (or none).
pub fn registry(issuers: Vec<(IdentityIssuer, Option<KeyRing>)>) -> Arc<IssuerRegistry> {
    let (store, mut writer) = reflector::store::<Secret>();
    let mut resources = Vec::new();
    for (issuer, ring) in issuers {
        if let Some(ring) = ring {
            let name = issuer.metadata.name.clone().unwrap_or_default();
            writer.apply_watcher_event(&watcher::Event::Apply(key_secret(&name, &ring)));
        }
        resources.push(Arc::new(issuer));
    }
    let registry = Arc::new(IssuerRegistry::default());
    registry.refresh(&resources, &store, NAMESPACE);
    registry.mark_synced();
    registry
}
