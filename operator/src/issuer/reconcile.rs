//! The issuer pipeline: reconciles one IdentityIssuer in named phases.
//!
//! fetch (the key-ring Secret, read from the apiserver: its resourceVersion guards the write)
//! → validate (the spec) → plan (check the key store is ours, rotate the ring in memory; key
//! generation on the blocking pool) → render (the key-ring Secret, the static-files ConfigMap)
//! → apply (one key-ring write, with optimistic concurrency; the ConfigMap only when it
//! changed) → report (status when it changed, Events, metrics, requeue).
//!
//! Two replicas may race: the key-ring write carries the resourceVersion the plan was made
//! from, so exactly one write of a new key succeeds and the loser plans again from the
//! winner's ring. No two keys can become active from one decision.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fedid_core::{
    conditions::{EventNote, Severity},
    crd::{IdentityIssuer, IdentityIssuerStatus},
    issuer::{
        config::{IssuerConfig, IssuerSpecError, validate_issuer_spec},
        documents::render_documents,
        key_store::{
            KeysError, Rotation, key_ring_secret_name, recover_key_ring, render_key_ring_secret,
            render_static_files, rotate, static_files_config_map_name,
        },
        keys::{KeyRing, generate_key},
        status::{KeysState, Outcome, next_status, requeue, rotation_event, transition_event},
    },
    reason::{Failure, Reason, Retry, message_chain},
    time::whole_seconds,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use tracing::{info, warn};

use crate::{
    issuer::registry::{IssuerRegistry, Unusable},
    runtime::{
        context::{Context, FIELD_MANAGER, apply_status},
        metrics::IssuerLabels,
    },
};

/// The shared context plus the issuer controller's own state.
pub struct IssuerContext {
    /// Shared context.
    pub shared: Arc<Context>,
    /// Transient failures in a row, per issuer, for backoff (issuer status has no counter).
    pub attempts: Mutex<HashMap<String, u32>>,
    /// What this replica serves: a new active key is reported only once it is served.
    pub registry: Option<Arc<IssuerRegistry>>,
}

/// Longest wait for this replica's registry to serve a key the reconciler just wrote.
const SERVED_WAIT: Duration = Duration::from_secs(5);

impl IssuerContext {
    /// A context with no failures recorded, reporting keys as soon as they are written.
    pub fn new(shared: Arc<Context>) -> Self {
        Self {
            shared,
            attempts: Mutex::default(),
            registry: None,
        }
    }

    /// A context that reports a new active key only once `registry` serves it.
    pub fn serving(shared: Arc<Context>, registry: Arc<IssuerRegistry>) -> Self {
        Self {
            registry: Some(registry),
            ..Self::new(shared)
        }
    }

    /// Waits (at most [`SERVED_WAIT`]) until this replica's documents for `issuer` publish
    /// `key_id`, so that `Ready` never precedes the JWKS it announces. The registry follows
    /// its own watches, a moment behind the reconciler's write.
    async fn until_served(&self, issuer: &str, key_id: &str, now: Timestamp) {
        let Some(registry) = &self.registry else {
            return;
        };
        let started = tokio::time::Instant::now();
        while started.elapsed() < SERVED_WAIT {
            let served = registry
                .get(issuer)
                .is_some_and(|loaded| loaded.published_kids(now).iter().any(|kid| kid == key_id));
            if served {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        warn!(issuer, "the new key is not served by this replica yet");
    }

    fn record(&self, issuer: &str, transient_failure: bool) -> u32 {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if transient_failure {
            let count = attempts.entry(issuer.to_owned()).or_default();
            *count = count.saturating_add(1);
            *count
        } else {
            attempts.remove(issuer);
            0
        }
    }
}

/// Why a pass of the issuer pipeline failed, by phase.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Validate phase: the spec is invalid.
    #[error(transparent)]
    Validate(#[from] IssuerSpecError),
    /// Plan phase: the key store is not usable, or a key could not be prepared.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// Plan phase: the key generation task did not complete (the runtime is shutting down).
    #[error("the key generation task did not complete: {0}")]
    KeyTask(String),
    /// Validate phase: an issuer created earlier serves this one's URL path.
    #[error(transparent)]
    UrlConflict(Unusable),
    /// The IdentityIssuer has no UID (it was not read from the apiserver).
    #[error("IdentityIssuer has no uid")]
    MissingUid,
    /// Apply phase: another replica wrote the key ring first; plan again from its ring.
    #[error("the key ring changed while a rotation was planned; planning again")]
    Raced,
    /// Fetch or apply phase: an apiserver call failed.
    #[error("failed to {action}")]
    Api {
        /// What was attempted.
        action: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl Failure for IssuerError {
    fn reason(&self) -> Reason {
        match self {
            Self::Validate(error) => error.reason(),
            Self::Keys(error) => Failure::reason(error),
            Self::KeyTask(_) => Reason::KeyGenerationFailed,
            Self::UrlConflict(_) => Reason::URLConflict,
            Self::MissingUid => Reason::MissingMetadata,
            Self::Raced | Self::Api { .. } => Reason::ApiError,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            Self::Validate(error) => Failure::retry(error),
            Self::Keys(error) => error.retry(),
            Self::MissingUid | Self::UrlConflict(_) => Retry::WaitForChange,
            Self::KeyTask(_) | Self::Raced | Self::Api { .. } => Retry::Backoff,
        }
    }
}

impl IssuerError {
    fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}

/// Reconciles one IdentityIssuer.
#[tracing::instrument(skip_all, fields(issuer = %issuer.name_any()))]
pub async fn reconcile(
    issuer: Arc<IdentityIssuer>,
    ctx: Arc<IssuerContext>,
) -> Result<Action, IssuerError> {
    let shared = &ctx.shared;
    let now = whole_seconds(shared.now());
    shared.metrics.count_reconcile("issuer");
    let name = issuer.name_any();
    let config = validate_issuer_spec(&issuer.spec);
    let mut conflict = None;
    if let Some(registry) = &ctx.registry {
        // Whether another issuer serves this one's path is the registry's to say: wait until
        // it has loaded this generation of the spec.
        match registry.get(&name) {
            Some(loaded) if loaded.resource.meta().generation == issuer.meta().generation => {
                conflict = registry.url_conflict(&loaded);
            }
            _ => return Ok(Action::requeue(Duration::from_secs(1))),
        }
    }
    let result = match (&config, conflict) {
        (Err(error), _) => Err(IssuerError::Validate(error.clone())),
        // No keys for an issuer nobody can verify: it waits for its path to be free.
        (Ok(_), Some(conflict)) => Err(IssuerError::UrlConflict(conflict)),
        (Ok(config), None) => ensure_keys(&issuer, config, shared, now).await,
    };
    if let Err(IssuerError::Raced) = result {
        // Not a failure to report: the winner's ring is planned from right away.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // The static-files mirror is secondary: the issuer serves and signs without it, so its
    // failure is retried (error policy) after the status is written, not instead of it.
    let mut static_files = Ok(());
    if let Ok(keys) = &result {
        if let Some(loss) = keys.lost {
            let signing = keys
                .ring
                .signing_key(now)
                .map(|key| key.kid.clone())
                .unwrap_or_default();
            warn!(loss = loss.describe(), kid = %signing, "key ring lost; replaced");
            shared
                .metrics
                .key_rings_lost
                .get_or_create(&IssuerLabels {
                    issuer: name.clone(),
                })
                .inc();
            let event = EventNote {
                severity: Severity::Warning,
                reason: Reason::KeyRingLost,
                action: "RotateKeys",
                note: format!(
                    "{}: key {signing} signs now, and every token signed by a lost key is \
                     reissued",
                    loss.describe()
                ),
            };
            shared.publish(&issuer.object_ref(&()), event).await;
        }
        for event in keys.steps.iter().filter_map(rotation_event) {
            info!(note = %event.note, "key ring changed");
            shared.publish(&issuer.object_ref(&()), event).await;
        }
        if let Ok(config) = &config {
            static_files = write_static_files(&issuer, config, &keys.ring, shared, now).await;
        }
    }

    let outcome: Outcome<'_> = match (&result, &config) {
        (Ok(keys), Ok(config)) => Ok(KeysState {
            config,
            ring: &keys.ring,
        }),
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(error),
    };
    let previous = issuer.status.clone().unwrap_or_default();
    let status = next_status(
        issuer.meta().generation,
        &previous,
        config.as_ref().ok(),
        outcome,
        now,
    );
    if status != previous {
        if let Some(key_id) = status
            .active_key_id
            .as_deref()
            .filter(|key_id| previous.active_key_id.as_deref() != Some(*key_id))
        {
            ctx.until_served(&name, key_id, now).await;
        }
        write_status(&issuer, shared, &status).await?;
    }
    if let Some(event) = transition_event(&previous, &status, outcome) {
        shared.publish(&issuer.object_ref(&()), event).await;
    }
    let transient = outcome.is_err_and(|failure| failure.retry() == Retry::Backoff);
    let attempts = ctx.record(&name, transient);
    if let Err(failure) = outcome {
        shared.metrics.count_failure("issuer", failure.reason());
        warn!(reason = %failure.reason(), error = %message_chain(failure), "issuer not ready");
    }
    static_files?;
    Ok(Action::requeue(requeue(outcome, attempts, now)))
}

/// Called when [`reconcile`] fails (a status or ConfigMap write): retry with backoff.
pub fn error_policy(
    issuer: Arc<IdentityIssuer>,
    error: &IssuerError,
    ctx: Arc<IssuerContext>,
) -> Action {
    ctx.shared.metrics.count_failure("issuer", error.reason());
    warn!(issuer = %issuer.name_any(), error = %message_chain(error), "reconcile failed");
    let attempts = ctx.record(&issuer.name_any(), true);
    Action::requeue(fedid_core::timing::backoff(attempts, 0.0))
}

/// Fetch, plan, render and apply the key ring: read it, rotate it if due, write it back with
/// optimistic concurrency (only when a step changed it).
async fn ensure_keys(
    issuer: &IdentityIssuer,
    config: &IssuerConfig,
    ctx: &Context,
    now: Timestamp,
) -> Result<Rotation, IssuerError> {
    let namespace = &ctx.settings.namespace;
    let name = issuer.name_any();
    let secret_name = key_ring_secret_name(&name);
    let owner = issuer
        .controller_owner_ref(&())
        .ok_or(IssuerError::MissingUid)?;
    // Fetch.
    let api = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    let existing = api
        .get_opt(&secret_name)
        .await
        .map_err(IssuerError::api(format!(
            "read Secret {namespace}/{secret_name}"
        )))?;
    // Plan.
    let previously_published = issuer
        .status
        .as_ref()
        .map(|status| status.published_key_ids.as_slice())
        .unwrap_or_default();
    let (ring, lost) = recover_key_ring(
        existing.as_ref(),
        &owner,
        namespace,
        &secret_name,
        previously_published,
    )?;
    let policy = config.rotation;
    let request = issuer.rotation_request().map(str::to_owned);
    let rotation = tokio::task::spawn_blocking(move || {
        rotate(ring, &policy, request.as_deref(), now, generate_key)
    })
    .await
    .map_err(|join| IssuerError::KeyTask(join.to_string()))??;
    let rotation = Rotation { lost, ..rotation };
    if !rotation.must_store(existing.is_some()) {
        return Ok(rotation);
    }
    // Render and apply.
    let desired = render_key_ring_secret(
        &name,
        namespace,
        &owner,
        &rotation.ring,
        existing.as_ref().and_then(ResourceExt::resource_version),
    )?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let written = if existing.is_some() {
        api.replace(&secret_name, &params, &desired).await
    } else {
        api.create(&params, &desired).await
    };
    match written {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => return Err(IssuerError::Raced),
        Err(source) => {
            return Err(IssuerError::Api {
                action: format!("write Secret {namespace}/{secret_name}"),
                source,
            });
        }
    }
    ctx.metrics
        .keys_created
        .get_or_create(&IssuerLabels { issuer: name })
        .inc_by(u64::try_from(rotation.keys_created()).unwrap_or(0));
    Ok(rotation)
}

/// Mirrors the served documents into a ConfigMap (for `fedid issuer files` and static
/// hosting); writes only when they changed.
async fn write_static_files(
    issuer: &IdentityIssuer,
    config: &IssuerConfig,
    ring: &KeyRing,
    ctx: &Context,
    now: Timestamp,
) -> Result<(), IssuerError> {
    let published = ring.published_keys(&config.rotation, now);
    if published.is_empty() {
        return Ok(());
    }
    let documents = match render_documents(config, &published) {
        Ok(documents) => documents,
        Err(error) => {
            // The registry reports the same failure when serving; nothing to mirror.
            warn!(%error, "cannot render the JWKS");
            return Ok(());
        }
    };
    let Some(owner) = issuer.controller_owner_ref(&()) else {
        return Ok(());
    };
    let namespace = &ctx.settings.namespace;
    let name = static_files_config_map_name(&issuer.name_any());
    let desired = render_static_files(
        &issuer.name_any(),
        namespace,
        &owner,
        &documents.discovery,
        &documents.jwks,
    );
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace);
    let current = api.get_opt(&name).await.map_err(IssuerError::api(format!(
        "read ConfigMap {namespace}/{name}"
    )))?;
    if current.and_then(|config_map| config_map.data) == desired.data {
        return Ok(());
    }
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

async fn write_status(
    issuer: &IdentityIssuer,
    ctx: &Context,
    status: &IdentityIssuerStatus,
) -> Result<(), IssuerError> {
    let api = Api::<IdentityIssuer>::all(ctx.client.clone());
    apply_status(&api, &issuer.name_any(), status)
        .await
        .map(|_| ())
        .map_err(IssuerError::api("write the IdentityIssuer status"))
}

/// Request-level checks against a mock apiserver: every request is asserted in order.
#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use jiff::Timestamp;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        fixtures::{
            self,
            apiserver::{
                MockHandle, assert_no_request, body_json, mock_client, next, respond, status_error,
            },
        },
        issuer::registry::LoadedIssuer,
        runtime::metrics::Metrics,
    };
    use fedid_core::issuer::keys::KeyRing;

    const NOW: i64 = 1_800_000_000;
    const SECRET_PATH: &str = "/api/v1/namespaces/fedid-system/secrets/fedid-keys-ci";
    const CONFIG_MAP_PATH: &str = "/api/v1/namespaces/fedid-system/configmaps/fedid-issuer-ci";

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).expect("valid timestamp")
    }

    fn issuer() -> IdentityIssuer {
        serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": "ci", "uid": "uid-ci", "generation": 1},
            "spec": {"issuerURL": "https://fedid.example.com/ci", "allowedNamespaces": {"all": true}},
        }))
        .expect("issuer")
    }

    fn issuer_json() -> Value {
        serde_json::to_value(issuer()).expect("serializes")
    }

    fn context() -> (Arc<IssuerContext>, MockHandle) {
        let (client, handle) = mock_client();
        let mut shared = Context::new(
            client,
            Arc::new(Metrics::default()),
            fixtures::settings(),
            None,
        );
        shared.clock = Arc::new(now);
        (Arc::new(IssuerContext::new(Arc::new(shared))), handle)
    }

    /// The key-ring Secret another replica wrote, as the apiserver returns it.
    fn winners_secret() -> (Secret, KeyRing) {
        let issuer = issuer();
        let config = validate_issuer_spec(&issuer.spec).expect("valid");
        let ring = rotate(
            KeyRing::default(),
            &config.rotation,
            None,
            now(),
            generate_key,
        )
        .expect("rotates")
        .ring;
        let owner = issuer.controller_owner_ref(&()).expect("owner");
        let mut secret = render_key_ring_secret("ci", fixtures::NAMESPACE, &owner, &ring, None)
            .expect("renders");
        secret.metadata.resource_version = Some("7".into());
        (secret, ring)
    }

    /// The static files the issuer serves with `secret`'s ring.
    fn static_files(secret: &Secret) -> Value {
        let issuer = Arc::new(issuer());
        let loaded = LoadedIssuer::load(issuer.clone(), Some(secret));
        let documents = loaded.documents(now()).expect("documents");
        let owner = issuer.controller_owner_ref(&()).expect("owner");
        serde_json::to_value(render_static_files(
            "ci",
            fixtures::NAMESPACE,
            &owner,
            &documents.discovery.body,
            &documents.jwks.body,
        ))
        .expect("serializes")
    }

    #[tokio::test]
    async fn a_lost_race_for_the_key_ring_writes_nothing_else_and_adopts_the_winners_keys() {
        let (ctx, mut handle) = context();
        let (winner, ring) = winners_secret();
        let files = static_files(&winner);
        let server = tokio::spawn(async move {
            // First pass: no ring yet; the create loses to another replica.
            let (request, send) = next(&mut handle).await;
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::GET, SECRET_PATH)
            );
            send.send_response(status_error(404, "NotFound"));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::POST);
            let created = body_json(request).await;
            assert_eq!(created["metadata"]["name"], "fedid-keys-ci");
            assert_eq!(created["metadata"]["labels"]["fedid.dev/issuer"], "ci");
            assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-ci");
            send.send_response(status_error(409, "AlreadyExists"));
            handle
        });
        let action = reconcile(Arc::new(issuer()), ctx.clone())
            .await
            .expect("first pass");
        assert_eq!(action, Action::requeue(Duration::from_secs(1)));
        let mut handle = server
            .await
            .expect("the mock apiserver saw what it expected");
        // A lost race is no failure: no status write, no Event, no second key.
        assert_no_request(&mut handle).await;

        let kid = ring.signing_key(now()).expect("a key signs").kid.clone();
        let stored = winner.clone();
        let server = tokio::spawn(async move {
            // Second pass: the winner's ring is read and used as it is: no key-ring write.
            let (request, send) = next(&mut handle).await;
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::GET, SECRET_PATH)
            );
            send.send_response(respond(
                StatusCode::OK,
                &serde_json::to_value(&winner).expect("json"),
            ));
            let (request, send) = next(&mut handle).await;
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::GET, CONFIG_MAP_PATH)
            );
            send.send_response(respond(StatusCode::OK, &files));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/fedid.dev/v1alpha1/identityissuers/ci/status"
            );
            let status = body_json(request).await["status"].clone();
            assert_eq!(status["conditions"][0]["reason"], "KeysReady");
            assert_eq!(status["activeKeyID"], kid);
            send.send_response(respond(StatusCode::OK, &issuer_json()));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::POST);
            assert_eq!(body_json(request).await["reason"], "KeysReady");
            send.send_response(respond(StatusCode::OK, &json!({})));
            (handle, status)
        });
        reconcile(Arc::new(issuer()), ctx.clone())
            .await
            .expect("second pass");
        let (mut handle, status) = server
            .await
            .expect("the mock apiserver saw what it expected");
        assert_no_request(&mut handle).await;

        // Third pass, with the status on the object: nothing changed, so only the two reads.
        let mut current = issuer();
        current.status = Some(serde_json::from_value(status).expect("status"));
        let winner = stored;
        let server = tokio::spawn(async move {
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.uri().path(), SECRET_PATH);
            send.send_response(respond(
                StatusCode::OK,
                &serde_json::to_value(&winner).expect("json"),
            ));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.uri().path(), CONFIG_MAP_PATH);
            send.send_response(respond(StatusCode::OK, &static_files(&winner)));
            handle
        });
        let pass = tokio::spawn(reconcile(Arc::new(current), ctx));
        let mut handle = server
            .await
            .expect("the mock apiserver saw what it expected");
        assert_no_request(&mut handle).await;
        pass.await.expect("joins").expect("third pass");
    }

    #[tokio::test]
    async fn a_foreign_key_store_is_reported_once_and_rechecked_slowly() {
        let (ctx, mut handle) = context();
        let server = tokio::spawn(async move {
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.uri().path(), SECRET_PATH);
            let foreign = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "fedid-keys-ci", "namespace": "fedid-system", "resourceVersion": "3"}});
            send.send_response(respond(StatusCode::OK, &foreign));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::PATCH);
            let status = body_json(request).await["status"].clone();
            assert_eq!(status["conditions"][0]["reason"], "KeyStoreConflict");
            assert_eq!(status["conditions"][0]["status"], "False");
            send.send_response(respond(StatusCode::OK, &issuer_json()));
            let (request, send) = next(&mut handle).await;
            let event = body_json(request).await;
            assert_eq!(
                (event["reason"].as_str(), event["type"].as_str()),
                (Some("KeyStoreConflict"), Some("Warning"))
            );
            send.send_response(respond(StatusCode::OK, &json!({})));
            handle
        });
        let action = reconcile(Arc::new(issuer()), ctx)
            .await
            .expect("reconciles");
        // Permanent until someone removes the Secret: no 5-second loop.
        assert_eq!(
            action,
            Action::requeue(fedid_core::reason::RECHECK_INTERVAL)
        );
        let mut handle = server
            .await
            .expect("the mock apiserver saw what it expected");
        assert_no_request(&mut handle).await;
    }
}
