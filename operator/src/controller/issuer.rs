//! Reconciles IdentityIssuers: keeps each issuer's key ring (bootstrap, scheduled and forced
//! rotation, pruning) in a Secret in the operator's namespace, mirrors its discovery document
//! and JWKS into a ConfigMap for static hosting, and reports status.
//!
//! Two replicas may race: every key-ring write carries the resourceVersion it was planned
//! from, so exactly one write of a new key succeeds and the loser re-plans from the winner's
//! ring. No two keys can become active from one decision.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType},
};
use tracing::{info, warn};

use super::{Context, FIELD_MANAGER, apply_status, error_chain, until};
use crate::{
    conditions::{IssuerOutcome, issuer_ready_condition, ready_state, set_condition},
    crd::{IdentityIssuer, IdentityIssuerStatus},
    issuer::{
        ISSUER_LABEL, KEY_RING_DATA_KEY, LoadedIssuer, key_ring_from_secret, key_ring_secret_name,
        static_files_config_map_name,
    },
    issuer_config::{IssuerConfig, validate_issuer_spec},
    keys::{
        KeyError, KeyRing, RotationPlan, apply_plan, generate_key, next_rotation_time, next_wakeup,
        plan_rotation,
    },
    schedule::backoff,
    secret_output::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    timestamps::whole_seconds,
};

/// Data key of the discovery document in the static-files ConfigMap.
pub const DISCOVERY_FILE: &str = "openid-configuration";
/// Data key of the JWKS in the static-files ConfigMap.
pub const JWKS_FILE: &str = "jwks.json";

/// Longest wait between two passes over an issuer, so drift is corrected within the hour.
const RESYNC: Duration = Duration::from_secs(3600);

/// Why an issuer is not ready. Each variant has a stable [`reason`](Self::reason).
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The spec is invalid.
    #[error("{0}")]
    InvalidSpec(String),
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
    Key(#[source] KeyError),
    /// The key generation task did not complete (the runtime is shutting down).
    #[error("the key generation task did not complete: {0}")]
    KeyTask(String),
    /// Another replica wrote the key ring first; re-plan from its ring.
    #[error("the key ring changed while a rotation was planned; planning again")]
    Raced,
    /// An apiserver call failed.
    #[error("failed to {action}")]
    Api {
        /// What was attempted.
        action: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl IssuerError {
    /// Stable reason: condition reason, Event reason, metric label.
    pub fn reason(&self) -> &'static str {
        use crate::conditions::issuer_reasons as reasons;
        match self {
            Self::InvalidSpec(_) => reasons::INVALID_SPEC,
            Self::KeyStoreConflict { .. } | Self::UnreadableKeyRing { .. } => {
                reasons::KEY_STORE_CONFLICT
            }
            Self::Key(_) | Self::KeyTask(_) | Self::Raced | Self::Api { .. } => reasons::API_ERROR,
        }
    }

    fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}

/// The ring after this pass and what was done to it.
struct KeysOutcome {
    ring: KeyRing,
    secret: Secret,
    steps: Vec<RotationPlan>,
}

/// Most rotation steps applied in one pass (a plan never needs more than prune + prepare).
const MAX_PLAN_STEPS: usize = 4;

/// Reconciles one IdentityIssuer.
#[tracing::instrument(skip_all, fields(issuer = %issuer.name_any()))]
pub async fn reconcile(
    issuer: Arc<IdentityIssuer>,
    ctx: Arc<Context>,
) -> Result<Action, IssuerError> {
    let now = whole_seconds(ctx.now());
    ctx.metrics.count_reconcile("issuer");
    let previous = issuer.status.clone().unwrap_or_default();
    let config = validate_issuer_spec(&issuer.spec);

    let result = match &config {
        Ok(config) => ensure_keys(&issuer, config, &ctx, now)
            .await
            .map(|keys| (keys, config)),
        Err(error) => Err(IssuerError::InvalidSpec(error.to_string())),
    };

    let mut static_files = Ok(());
    let action = match &result {
        Ok((keys, config)) => {
            for step in &keys.steps {
                publish_key_event(&issuer, &ctx, step).await;
            }
            let loaded = LoadedIssuer::load(issuer.clone(), Some(&keys.secret));
            // The mirror is secondary: the issuer serves and signs without it, so a failure is
            // retried (error policy) after the status is written, not instead of it.
            static_files = write_static_files(&issuer, &loaded, &ctx, now).await;
            let wake = next_wakeup(&keys.ring, &config.rotation, now)
                .map_or(RESYNC, |at| until(at, now).min(RESYNC));
            Action::requeue(wake)
        }
        Err(IssuerError::Raced) => Action::requeue(Duration::from_secs(1)),
        Err(IssuerError::InvalidSpec(_)) => Action::await_change(),
        Err(_) => Action::requeue(backoff(1, 0.0)),
    };

    let status = next_status(&issuer, &previous, &result, config.as_ref().ok(), now);
    if status != previous {
        write_status(&issuer, &ctx, &status).await?;
    }
    if let Err(error) = &result {
        ctx.metrics.count_failure("issuer", error.reason());
        warn!(reason = error.reason(), error = %error_chain(error), "issuer not ready");
    }
    if ready_state(&previous.conditions) != ready_state(&status.conditions) {
        let object = issuer.object_ref(&());
        match &result {
            Ok(_) => {
                let note = format!(
                    "signing with key {}; discovery at {}",
                    status.active_key_id.clone().unwrap_or_default(),
                    status.discovery_url.clone().unwrap_or_default()
                );
                ctx.publish(&object, EventType::Normal, "KeysReady", "Reconcile", note)
                    .await;
            }
            Err(IssuerError::Raced) => {}
            Err(error) => {
                ctx.publish(
                    &object,
                    EventType::Warning,
                    error.reason(),
                    "Reconcile",
                    error_chain(error),
                )
                .await;
            }
        }
    }
    static_files?;
    Ok(action)
}

/// Called when [`reconcile`] fails (a status or ConfigMap write): retry with backoff.
pub fn error_policy(issuer: Arc<IdentityIssuer>, error: &IssuerError, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_failure("issuer", error.reason());
    warn!(issuer = %issuer.name_any(), error = %error_chain(error), "reconcile failed");
    Action::requeue(backoff(2, 0.0))
}

/// Reads the key ring, rotates it if due, and writes it back with optimistic concurrency.
async fn ensure_keys(
    issuer: &IdentityIssuer,
    config: &IssuerConfig,
    ctx: &Context,
    now: Timestamp,
) -> Result<KeysOutcome, IssuerError> {
    let namespace = &ctx.settings.namespace;
    let name = issuer.name_any();
    let secret_name = key_ring_secret_name(&name);
    let api = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    let existing = api
        .get_opt(&secret_name)
        .await
        .map_err(IssuerError::api(format!(
            "read Secret {namespace}/{secret_name}"
        )))?;
    let owner = issuer.controller_owner_ref(&());
    if let Some(secret) = &existing {
        let controlled = secret
            .owner_references()
            .iter()
            .any(|reference| Some(reference) == owner.as_ref());
        if !controlled {
            return Err(IssuerError::KeyStoreConflict {
                namespace: namespace.clone(),
                secret: secret_name,
            });
        }
    }
    let ring = key_ring_from_secret(existing.as_ref()).map_err(|source| {
        IssuerError::UnreadableKeyRing {
            secret: secret_name.clone(),
            source,
        }
    })?;

    // Each plan is one step (prune, then prepare, say): apply them in memory, write once.
    let mut next = ring;
    let mut steps = Vec::new();
    for _ in 0..MAX_PLAN_STEPS {
        let plan = plan_rotation(&next, &config.rotation, issuer.rotation_request(), now);
        if plan == RotationPlan::Unchanged {
            break;
        }
        let new_key = match plan.key_to_generate() {
            Some(algorithm) => Some(
                tokio::task::spawn_blocking(move || generate_key(algorithm, now))
                    .await
                    .map_err(|join| IssuerError::KeyTask(join.to_string()))?
                    .map_err(IssuerError::Key)?,
            ),
            None => None,
        };
        next = apply_plan(&next, &plan, new_key).map_err(IssuerError::Key)?;
        steps.push(plan);
    }
    if let (true, Some(secret)) = (steps.is_empty(), &existing) {
        return Ok(KeysOutcome {
            ring: next,
            secret: secret.clone(),
            steps,
        });
    }
    let data = next.to_json().map_err(IssuerError::Key)?;
    let desired = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (ISSUER_LABEL.to_owned(), name.clone()),
            ])),
            owner_references: owner.map(|owner| vec![owner]),
            resource_version: existing
                .as_ref()
                .and_then(|secret| secret.resource_version()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(data),
        )])),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let written = if existing.is_some() {
        api.replace(&secret_name, &params, &desired).await
    } else {
        api.create(&params, &desired).await
    };
    let secret = match written {
        Ok(secret) => secret,
        Err(kube::Error::Api(status)) if status.code == 409 => return Err(IssuerError::Raced),
        Err(source) => {
            return Err(IssuerError::Api {
                action: format!("write Secret {namespace}/{secret_name}"),
                source,
            });
        }
    };
    let created = steps
        .iter()
        .filter(|plan| plan.key_to_generate().is_some())
        .count();
    ctx.metrics
        .keys_created
        .get_or_create(&crate::metrics::IssuerLabels { issuer: name })
        .inc_by(u64::try_from(created).unwrap_or(0));
    Ok(KeysOutcome {
        ring: next,
        secret,
        steps,
    })
}

async fn publish_key_event(issuer: &IdentityIssuer, ctx: &Context, plan: &RotationPlan) {
    let object = issuer.object_ref(&());
    let note = match plan {
        RotationPlan::Unchanged => return,
        RotationPlan::Bootstrap { algorithm, .. } => {
            format!(
                "created the first {} signing key; it signs from now on",
                algorithm.as_str()
            )
        }
        RotationPlan::Prepare {
            algorithm,
            activates_at,
            reason,
            ..
        } => format!(
            "created a new {} signing key ({}); it is published now and signs from {activates_at}",
            algorithm.as_str(),
            reason.as_str()
        ),
        RotationPlan::Prune { kids } => {
            let note = format!("removed retired key(s) {} from the JWKS", kids.join(", "));
            ctx.publish(
                &object,
                EventType::Normal,
                "KeysRetired",
                "RotateKeys",
                note,
            )
            .await;
            return;
        }
    };
    info!(%note, "key ring changed");
    ctx.publish(&object, EventType::Normal, "KeyCreated", "RotateKeys", note)
        .await;
}

/// Mirrors the served documents into a ConfigMap (for `fedid issuer files` and static
/// hosting); writes only when they changed.
async fn write_static_files(
    issuer: &IdentityIssuer,
    loaded: &LoadedIssuer,
    ctx: &Context,
    now: Timestamp,
) -> Result<(), IssuerError> {
    let Some(documents) = loaded.documents(now) else {
        return Ok(());
    };
    let namespace = &ctx.settings.namespace;
    let name = static_files_config_map_name(&issuer.name_any());
    let data = BTreeMap::from([
        (
            DISCOVERY_FILE.to_owned(),
            String::from_utf8_lossy(&documents.discovery.body).into_owned(),
        ),
        (
            JWKS_FILE.to_owned(),
            String::from_utf8_lossy(&documents.jwks.body).into_owned(),
        ),
    ]);
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace);
    let current = api.get_opt(&name).await.map_err(IssuerError::api(format!(
        "read ConfigMap {namespace}/{name}"
    )))?;
    if current.and_then(|config_map| config_map.data) == Some(data.clone()) {
        return Ok(());
    }
    let desired = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (ISSUER_LABEL.to_owned(), issuer.name_any()),
            ])),
            owner_references: issuer.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map(|_| ())
    .map_err(IssuerError::api(format!(
        "write ConfigMap {namespace}/{name}"
    )))
}

/// The status after this pass. Pure.
fn next_status(
    issuer: &IdentityIssuer,
    previous: &IdentityIssuerStatus,
    result: &Result<(KeysOutcome, &IssuerConfig), IssuerError>,
    config: Option<&IssuerConfig>,
    now: Timestamp,
) -> IdentityIssuerStatus {
    let generation = issuer.meta().generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    if let Some(config) = config {
        status.discovery_url = Some(config.issuer_url.discovery_url());
        status.jwks_url = Some(config.issuer_url.jwks_url());
    }
    let outcome = match result {
        Ok((keys, config)) => {
            let active = keys.ring.signing_key(now).map(|key| key.kid.clone());
            let published: Vec<String> = keys
                .ring
                .published_keys(&config.rotation, now)
                .iter()
                .map(|key| key.kid.clone())
                .collect();
            status.next_rotation_time =
                next_rotation_time(&keys.ring, &config.rotation, now).map(Time);
            status.published_key_ids = published.clone();
            status.active_key_id = active.clone();
            match active {
                Some(active_key_id) => IssuerOutcome::KeysReady {
                    active_key_id,
                    published_keys: published.len(),
                },
                None => IssuerOutcome::ApiError {
                    message: "no key signs yet".to_owned(),
                },
            }
        }
        Err(IssuerError::Raced) => return status,
        Err(IssuerError::InvalidSpec(message)) => IssuerOutcome::InvalidSpec {
            message: message.clone(),
        },
        Err(
            error @ (IssuerError::KeyStoreConflict { .. } | IssuerError::UnreadableKeyRing { .. }),
        ) => IssuerOutcome::KeyStoreConflict {
            message: error_chain(error),
        },
        Err(error) => IssuerOutcome::ApiError {
            message: error_chain(error),
        },
    };
    set_condition(
        &mut status.conditions,
        issuer_ready_condition(&outcome, generation),
        now,
    );
    status
}

async fn write_status(
    issuer: &IdentityIssuer,
    ctx: &Context,
    status: &IdentityIssuerStatus,
) -> Result<(), IssuerError> {
    let api = Api::<IdentityIssuer>::all(ctx.client.clone());
    apply_status(&api, &issuer.name_any(), status)
        .await
        .map_err(IssuerError::api("write the IdentityIssuer status"))
}
