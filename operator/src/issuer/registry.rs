//! The issuers this process serves and signs for, loaded from the cluster.
//!
//! Every replica keeps an [`IssuerRegistry`] in step with the IdentityIssuer objects and
//! their key-ring Secrets (in the operator's namespace), so that every replica serves the
//! same discovery documents and JWKS, while only the reconcilers decide and write.
//! Which key signs and which keys are published depend on the time of the question, so the
//! registry keeps the whole key ring and answers for an instant it is given.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{body::Bytes, http::HeaderValue};
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use fedid_core::{
    crd::issuer::{DefaultIssuerError, IdentityIssuer, default_issuer},
    issuer::{
        config::{IssuerConfig, IssuerSpecError, path_owner, validate_issuer_spec},
        discovery::etag,
        documents::render_documents,
        key_store::{ISSUER_LABEL, key_ring_from_secret, key_ring_secret_name},
        keys::{KeyError, KeyRing, Signer},
        status::IssuerChange,
    },
};

use crate::runtime::{
    context::is_listed,
    undecodable::{Guarded, UndecodableObjects, admit},
};

/// A rendered response body and its entity tag.
#[derive(Clone, Debug)]
pub struct ServedDocument {
    /// The JSON body.
    pub body: Bytes,
    /// Strong, quoted ETag of the body.
    pub etag: String,
    /// The same ETag as a header value, built once rather than per request.
    pub etag_header: HeaderValue,
}

impl ServedDocument {
    fn new(body: Vec<u8>) -> Self {
        let etag = etag(&body);
        Self {
            // A quoted hex digest is always a valid header value.
            etag_header: HeaderValue::from_str(&etag)
                .unwrap_or_else(|_| HeaderValue::from_static("\"\"")),
            etag,
            body: Bytes::from(body),
        }
    }

    /// The document parsed back into JSON.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// The discovery document and JWKS of an issuer for one set of published keys.
#[derive(Clone, Debug)]
pub struct ServedDocuments {
    /// Key ids published in `jwks`, in activation order.
    pub kids: Vec<String>,
    /// `/.well-known/openid-configuration`.
    pub discovery: ServedDocument,
    /// `/.well-known/jwks.json`.
    pub jwks: ServedDocument,
    /// `Cache-Control: max-age` for both, in seconds.
    pub max_age_seconds: u64,
    /// `Cache-Control: public, max-age=…` as a header value, built once.
    pub cache_control: HeaderValue,
    /// Until when these documents are current: when the next published key leaves the JWKS
    /// (`None`: until the key ring changes, which replaces the loaded issuer).
    pub valid_until: Option<Timestamp>,
}

/// Why an issuer cannot sign or serve; the typed cause is kept for the identities' conditions.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unusable {
    /// The spec is invalid.
    #[error("its spec is invalid")]
    InvalidSpec(#[source] IssuerSpecError),
    /// The key ring could not be read.
    #[error("its key ring is unreadable")]
    BadKeyRing(#[source] Arc<KeyError>),
    /// An issuer created earlier has a URL with the same path, so that one is served there.
    #[error("its URL path {path} is served for IdentityIssuer {owner}, created earlier")]
    UrlConflict {
        /// The shared path.
        path: String,
        /// The issuer that serves it.
        owner: String,
    },
}

impl LoadedIssuer {
    fn path(&self) -> Option<&str> {
        self.config
            .as_ref()
            .ok()
            .map(|config| config.issuer_url.path())
    }

    fn resource_name(&self) -> &str {
        self.resource.meta().name.as_deref().unwrap_or_default()
    }

    fn created(&self) -> Option<jiff::Timestamp> {
        self.resource
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|time| time.0)
    }
}

/// One IdentityIssuer with its key ring, as this process last saw them.
pub struct LoadedIssuer {
    /// The IdentityIssuer object.
    pub resource: Arc<IdentityIssuer>,
    /// The validated spec, or why it is unusable.
    pub config: Result<IssuerConfig, Unusable>,
    ring: KeyRing,
    signers: HashMap<String, Arc<Signer>>,
    documents: Mutex<Option<Arc<ServedDocuments>>>,
    version: LoadedVersion,
}

/// What a loaded issuer was built from: the issuer's generation and annotations (its spec and
/// the default/rotation markers; status-only updates do not count) and the key ring's
/// resourceVersion. An unchanged version means nothing to reload and nobody to notify.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LoadedVersion {
    generation: Option<i64>,
    annotations: std::collections::BTreeMap<String, String>,
    key_ring: Option<String>,
}

impl LoadedVersion {
    fn of(resource: &IdentityIssuer, key_secret: Option<&Secret>) -> Self {
        Self {
            generation: resource.meta().generation,
            annotations: resource.annotations().clone(),
            key_ring: key_secret.and_then(|secret| secret.resource_version()),
        }
    }
}

impl std::fmt::Debug for LoadedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedIssuer")
            .field("name", &self.resource.name_any())
            .field("kids", &self.signers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LoadedIssuer {
    /// Loads an issuer and its key-ring Secret (absent before the first key exists).
    pub fn load(resource: Arc<IdentityIssuer>, key_secret: Option<&Secret>) -> Self {
        let version = LoadedVersion::of(&resource, key_secret);
        let config = validate_issuer_spec(&resource.spec).map_err(Unusable::InvalidSpec);
        let (ring, config) = match key_ring_from_secret(key_secret) {
            Ok(ring) => (ring, config),
            Err(error) => (
                KeyRing::default(),
                config.and(Err(Unusable::BadKeyRing(Arc::new(error)))),
            ),
        };
        let signers = ring
            .keys
            .iter()
            .filter_map(|record| match Signer::new(record) {
                Ok(signer) => Some((record.kid.clone(), Arc::new(signer))),
                Err(error) => {
                    warn!(issuer = %resource.name_any(), kid = %record.kid, %error, "skipping unreadable key");
                    None
                }
            })
            .collect();
        Self {
            resource,
            config,
            ring,
            signers,
            documents: Mutex::new(None),
            version,
        }
    }

    /// The issuer's name.
    pub fn name(&self) -> String {
        self.resource.name_any()
    }

    /// The key ring as loaded.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The key that signs at `now`, if the issuer is usable and has one.
    pub fn signer(&self, now: Timestamp) -> Option<Arc<Signer>> {
        self.config.as_ref().ok()?;
        let record = self.ring.signing_key(now)?;
        self.signers.get(&record.kid).cloned()
    }

    /// Ids of the keys published at `now`.
    pub fn published_kids(&self, now: Timestamp) -> Vec<String> {
        match &self.config {
            Ok(config) => self
                .ring
                .published_keys(&config.rotation, now)
                .iter()
                .map(|key| key.kid.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Discovery document and JWKS as served at `now`; `None` while no key is published.
    /// Rendered once per distinct set of published keys.
    pub fn documents(&self, now: Timestamp) -> Option<Arc<ServedDocuments>> {
        let config = self.config.as_ref().ok()?;
        let mut cache = self
            .documents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The common case, once per request: the documents rendered last are still current.
        if let Some(cached) = cache
            .as_ref()
            .filter(|cached| cached.valid_until.is_none_or(|until| now < until))
        {
            return Some(cached.clone());
        }
        let published = self.ring.published_keys(&config.rotation, now);
        if published.is_empty() {
            return None;
        }
        let kids: Vec<String> = published.iter().map(|key| key.kid.clone()).collect();
        let valid_until = self.ring.published_until(&config.rotation, now);
        if let Some(cached) = cache.as_mut().filter(|cached| cached.kids == kids) {
            // The same keys: keep the documents (and their ETags), extend their validity.
            let mut extended = ServedDocuments::clone(cached);
            extended.valid_until = valid_until;
            *cached = Arc::new(extended);
            return Some(cached.clone());
        }
        let documents = match render_documents(config, &published) {
            Ok(documents) => documents,
            Err(error) => {
                warn!(issuer = %self.name(), %error, "cannot render the JWKS");
                return None;
            }
        };
        let max_age_seconds = config.cache_max_age().as_secs();
        let rendered = Arc::new(ServedDocuments {
            kids,
            discovery: ServedDocument::new(documents.discovery),
            jwks: ServedDocument::new(documents.jwks),
            max_age_seconds,
            cache_control: HeaderValue::from_str(&format!("public, max-age={max_age_seconds}"))
                .unwrap_or_else(|_| HeaderValue::from_static("public")),
            valid_until,
        });
        *cache = Some(rendered.clone());
        Some(rendered)
    }
}

/// Every issuer this process knows, by name.
#[derive(Default)]
pub struct IssuerRegistry {
    issuers: RwLock<BTreeMap<String, Arc<LoadedIssuer>>>,
    synced: AtomicBool,
}

impl IssuerRegistry {
    /// Whether the initial list of issuers and key rings has been loaded.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the initial load as done (the sync task does this; tests too).
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// The issuer called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedIssuer>> {
        self.read().get(name).cloned()
    }

    /// The issuer annotated as the default.
    pub fn default_issuer(&self) -> Result<Arc<LoadedIssuer>, DefaultIssuerError> {
        let issuers = self.read();
        let chosen = default_issuer(issuers.values().map(|loaded| loaded.resource.as_ref()))?;
        let name = chosen.name_any();
        issuers
            .get(&name)
            .cloned()
            .ok_or(DefaultIssuerError::NoDefault)
    }

    /// The usable issuer whose URL has this path (the part before `/.well-known/…`).
    /// When several issuers share a path, the core's [`path_owner`] chooses.
    pub fn find_by_path(&self, path: &str) -> Option<Arc<LoadedIssuer>> {
        let issuers = self.read();
        let owner = path_owner(
            issuers
                .values()
                .filter(|loaded| loaded.path() == Some(path))
                .map(|loaded| (loaded.resource_name(), loaded.created())),
        )?;
        issuers.get(owner).cloned()
    }

    /// When `issuer`'s URL path is served for another issuer: why it is not usable.
    pub fn url_conflict(&self, issuer: &LoadedIssuer) -> Option<Unusable> {
        let path = issuer.path()?;
        let owner = self.find_by_path(path)?;
        (owner.resource_name() != issuer.resource_name()).then(|| Unusable::UrlConflict {
            path: path.to_owned(),
            owner: owner.resource_name().to_owned(),
        })
    }

    /// Every issuer, by name.
    pub fn all(&self) -> Vec<Arc<LoadedIssuer>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedIssuer>>> {
        self.issuers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the registry's contents with `issuers` and their key-ring Secrets, reusing
    /// every issuer whose objects did not change. Returns the changes, each with whether the
    /// issuer was the default before and is after, so that the identities that used it as the
    /// default hear of it losing that mark.
    pub fn refresh(
        &self,
        issuers: &[Arc<IdentityIssuer>],
        key_secrets: &Store<Secret>,
        namespace: &str,
    ) -> Vec<IssuerChange> {
        let mut changed = Vec::new();
        let mut next = BTreeMap::new();
        let current = self.read().clone();
        for resource in issuers {
            let name = resource.name_any();
            let secret = key_secrets
                .get(&reflector::ObjectRef::new(&key_ring_secret_name(&name)).within(namespace));
            let version = LoadedVersion::of(resource, secret.as_deref());
            let loaded = match current.get(&name) {
                Some(existing) if existing.version == version => existing.clone(),
                previous => {
                    changed.push(IssuerChange {
                        name: name.clone(),
                        default_before: previous.is_some_and(|loaded| loaded.resource.is_default()),
                        default_after: resource.is_default(),
                    });
                    Arc::new(LoadedIssuer::load(resource.clone(), secret.as_deref()))
                }
            };
            next.insert(name, loaded);
        }
        for (name, removed) in &current {
            if !next.contains_key(name) {
                changed.push(IssuerChange {
                    name: name.clone(),
                    default_before: removed.resource.is_default(),
                    default_after: false,
                });
            }
        }
        *self
            .issuers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        changed
    }
}

/// Keeps `registry` in step with the cluster until the watches end (they retry forever).
/// Every issuer whose loaded state changed is sent on `changes`, so the identity
/// controller can reconcile the identities that use it.
pub async fn sync_registry(
    client: Client,
    namespace: String,
    registry: Arc<IssuerRegistry>,
    changes: mpsc::Sender<IssuerChange>,
) {
    let (issuer_reader, issuer_writer) = reflector::store::<IdentityIssuer>();
    let (secret_reader, secret_writer) = reflector::store::<Secret>();
    // Undecodable issuers stay out of the registry; the leader's issuer controller reports them.
    let undecodable = UndecodableObjects::new(issuer_reader.clone(), None);
    let issuers = watcher(
        Api::<Guarded<IdentityIssuer>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(move |event| std::future::ready(admit(&undecodable, event)))
    .modify(|issuer| issuer.managed_fields_mut().clear())
    .reflect(issuer_writer)
    .map(|event| event.map(|_| ()).map_err(|error| ("issuers", error)));
    let key_secrets = watcher(
        Api::<Secret>::namespaced(client, &namespace),
        watcher::Config::default().labels(ISSUER_LABEL),
    )
    .default_backoff()
    .modify(|secret| secret.managed_fields_mut().clear())
    .reflect(secret_writer)
    .map(|event| event.map(|_| ()).map_err(|error| ("key Secrets", error)));

    let mut events = std::pin::pin!(stream::select(issuers, key_secrets));
    while let Some(event) = events.next().await {
        if let Err((what, error)) = event {
            warn!(%error, "watching {what} failed; retrying");
            continue;
        }
        if !(is_listed(&issuer_reader) && is_listed(&secret_reader)) {
            continue;
        }
        let changed = registry.refresh(&issuer_reader.state(), &secret_reader, &namespace);
        if !registry.synced.swap(true, Ordering::AcqRel) {
            debug!(
                issuers = issuer_reader.len(),
                "issuers and key rings loaded"
            );
        }
        for change in changed {
            // The identity controller may be gone during shutdown; nothing to do then.
            let _ = changes.send(change).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures;

    fn loaded_store(ring: &KeyRing, version: &str) -> Store<Secret> {
        let mut secret = fixtures::key_secret("ci", ring);
        secret.metadata.resource_version = Some(version.into());
        let (store, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&watcher::Event::Apply(secret));
        store
    }

    #[test]
    fn documents_are_rendered_once_and_again_when_a_key_leaves_the_jwks() {
        // Two keys: the second took over an hour ago, so the first leaves the JWKS when the
        // tokens it signed have expired (the default maximum lifetime plus the margin).
        let now = fedid_core::time::whole_seconds(Timestamp::now());
        let mut ring = fixtures::ring();
        let mut older = ring.keys[0].clone();
        older.kid = "older".into();
        older.activates_at = fedid_core::time::minus(now, jiff::SignedDuration::from_hours(2));
        ring.keys[0].activates_at =
            fedid_core::time::minus(now, jiff::SignedDuration::from_hours(1));
        ring.keys.push(older);
        let issuer = fixtures::issuer("ci", json!({"issuerURL": "https://fedid.example.com/ci"}));
        let registry = fixtures::registry(vec![(issuer, Some(ring))]);
        let loaded = registry.get("ci").expect("loaded");

        let first = loaded.documents(now).expect("documents");
        let until = first
            .valid_until
            .expect("the older key leaves at some point");
        assert!(until > now);
        assert_eq!(first.kids.len(), 2);
        assert_eq!(
            first.cache_control.to_str().ok(),
            Some("public, max-age=3600")
        );
        assert_eq!(
            first.jwks.etag_header.to_str().ok(),
            Some(first.jwks.etag.as_str())
        );
        // Served again from the cache, without rendering, until then.
        let before = fedid_core::time::minus(until, jiff::SignedDuration::from_secs(1));
        assert!(Arc::ptr_eq(
            &first,
            &loaded.documents(before).expect("documents")
        ));
        // At that time the older key is gone from a new JWKS with a new ETag.
        let after = loaded.documents(until).expect("documents");
        assert_eq!(after.kids.len(), 1);
        assert_ne!(after.jwks.etag, first.jwks.etag);
        assert_eq!(after.valid_until, None);
        assert!(Arc::ptr_eq(
            &after,
            &loaded.documents(until).expect("documents")
        ));
    }

    #[test]
    fn only_spec_annotation_and_key_changes_reload_an_issuer() {
        let store = loaded_store(&fixtures::ring(), "7");
        let mut issuer =
            fixtures::issuer("ci", json!({"issuerURL": "https://fedid.example.com/ci"}));
        issuer.metadata.generation = Some(1);
        let registry = IssuerRegistry::default();
        assert_eq!(
            registry
                .refresh(&[Arc::new(issuer.clone())], &store, fixtures::NAMESPACE)
                .len(),
            1
        );

        let mut status_only = issuer.clone();
        status_only.metadata.resource_version = Some("2".into());
        status_only.status = Some(Default::default());
        assert!(
            registry
                .refresh(&[Arc::new(status_only)], &store, fixtures::NAMESPACE)
                .is_empty(),
            "a status write must not reload the issuer nor re-trigger its identities"
        );

        let mut rotate = issuer.clone();
        rotate
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("fedid.dev/rotate-keys".into(), "1".into());
        assert_eq!(
            registry
                .refresh(&[Arc::new(rotate.clone())], &store, fixtures::NAMESPACE)
                .len(),
            1
        );

        let new_keys = loaded_store(&fixtures::ring(), "8");
        assert_eq!(
            registry
                .refresh(&[Arc::new(rotate)], &new_keys, fixtures::NAMESPACE)
                .len(),
            1
        );

        assert_eq!(
            registry.refresh(&[], &new_keys, fixtures::NAMESPACE).len(),
            1
        );
        assert!(registry.get("ci").is_none(), "a deleted issuer is dropped");
    }

    #[test]
    fn losing_the_default_mark_is_reported_with_the_mark_it_had() {
        let store = loaded_store(&fixtures::ring(), "7");
        let mut default =
            fixtures::issuer("ci", json!({"issuerURL": "https://fedid.example.com/ci"}));
        default
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("fedid.dev/default-issuer".into(), "true".into());
        let registry = IssuerRegistry::default();
        let added = registry.refresh(&[Arc::new(default.clone())], &store, fixtures::NAMESPACE);
        assert_eq!(
            added,
            vec![IssuerChange {
                name: "ci".into(),
                default_before: false,
                default_after: true
            }]
        );
        let mut plain = default.clone();
        plain.metadata.annotations = None;
        let changes = registry.refresh(&[Arc::new(plain)], &store, fixtures::NAMESPACE);
        assert_eq!(
            changes,
            vec![IssuerChange {
                name: "ci".into(),
                default_before: true,
                default_after: false
            }]
        );
        assert!(
            changes[0].concerns(None),
            "identities without issuerRef are requeued"
        );
    }
}
