//! Reconciles FederatedIdentities: mints a token, writes it into the identity's Secret, and
//! comes back exactly when it is due for renewal.
//!
//! Reads: the issuer registry, the namespace's labels (only for selector policies), the
//! Secret (from a cache of fedid-labelled Secrets, falling back to one GET). Decides: through
//! `claims`, `schedule` and `secret_output`. Writes: the Secret (create, or server-side apply
//! when it is ours; never when it is not) and the status (only when it changed).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType, reflector::ObjectRef, reflector::Store},
};
use serde_json::{Map, Value};

use tracing::{debug, info, warn};

use super::{Context, FIELD_MANAGER, apply_status, error_chain, until};
use crate::{
    claims::{ClaimsInput, build_claims, validate_identity_spec},
    conditions::{
        ConditionStatus, ConditionUpdate, READY, identity_issued_condition, ready_state,
        set_condition,
    },
    crd::{FederatedIdentity, FederatedIdentityStatus},
    issuer::{IssuerRegistry, LoadedIssuer, Unusable},
    keys::{KeyError, Signer},
    schedule::{
        ExistingToken, ReissueDecision, ReissueInput, ReissueReason, backoff, deterministic_jitter,
        renew_at, should_reissue,
    },
    secret_output::{Ownership, TOKEN_KEY, desired_secret, ownership},
    timestamps::{plus, whole_seconds},
    token::decode_unverified,
};

/// Why an identity has no fresh token. Each variant has a stable [`reason`](Self::reason).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The referenced issuer does not exist, or no default issuer could be chosen.
    #[error("{0}")]
    IssuerNotFound(String),
    /// The issuer exists but cannot sign.
    #[error("IdentityIssuer {issuer} is not ready: {why}")]
    IssuerNotReady {
        /// Issuer name.
        issuer: String,
        /// Why.
        why: String,
    },
    /// The issuer's policy does not allow the identity's namespace.
    #[error("IdentityIssuer {issuer} does not allow namespace {namespace}")]
    NamespaceNotAllowed {
        /// Issuer name.
        issuer: String,
        /// The identity's namespace.
        namespace: String,
    },
    /// The spec is invalid for its issuer; the message says how.
    #[error("{0}")]
    InvalidSpec(String),
    /// The Secret exists and fedid does not own it.
    #[error(
        "Secret {secret} exists and is not managed by fedid for this FederatedIdentity; fedid \
         never takes over a Secret it did not create: delete that Secret or set spec.secretName"
    )]
    SecretConflict {
        /// Secret name.
        secret: String,
    },
    /// Signing failed.
    #[error("failed to sign the token")]
    Signing(#[source] KeyError),
    /// The signing task did not complete (the runtime is shutting down).
    #[error("the signing task did not complete: {0}")]
    SigningTask(String),
    /// A read from the apiserver failed.
    #[error("failed to read {what}")]
    Read {
        /// What was read.
        what: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Writing the Secret failed.
    #[error("failed to write Secret {secret}")]
    WriteSecret {
        /// Secret name.
        secret: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("failed to write the status")]
    WriteStatus(#[source] kube::Error),
    /// The object lacks metadata every stored object has.
    #[error("FederatedIdentity has no {0}")]
    MissingMetadata(&'static str),
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Nothing changes until the spec (or the issuer) does.
    AwaitChange,
    /// Transient: back off exponentially.
    Backoff,
    /// Check again after this long (for state outside our watches).
    After(Duration),
}

impl IdentityError {
    /// Stable reason: the condition reason, Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        use crate::conditions::identity_reasons as reasons;
        match self {
            Self::IssuerNotFound(_) => reasons::ISSUER_NOT_FOUND,
            Self::IssuerNotReady { .. } => reasons::ISSUER_NOT_READY,
            Self::NamespaceNotAllowed { .. } => reasons::NAMESPACE_NOT_ALLOWED,
            Self::InvalidSpec(_) | Self::MissingMetadata(_) => reasons::INVALID_SPEC,
            Self::SecretConflict { .. } => reasons::SECRET_CONFLICT,
            Self::Signing(_) | Self::SigningTask(_) => reasons::SIGNING_FAILED,
            Self::Read { .. } | Self::WriteSecret { .. } | Self::WriteStatus(_) => {
                reasons::API_ERROR
            }
        }
    }

    fn retry(&self) -> Retry {
        match self {
            // The issuer watch re-triggers these when an issuer appears or changes.
            Self::IssuerNotFound(_) | Self::InvalidSpec(_) | Self::MissingMetadata(_) => {
                Retry::AwaitChange
            }
            // Namespace labels and foreign Secrets are not watched: look again now and then.
            Self::NamespaceNotAllowed { .. } | Self::SecretConflict { .. } => {
                Retry::After(Duration::from_secs(300))
            }
            Self::IssuerNotReady { .. }
            | Self::Signing(_)
            | Self::SigningTask(_)
            | Self::Read { .. }
            | Self::WriteSecret { .. }
            | Self::WriteStatus(_) => Retry::Backoff,
        }
    }

    /// Whether the failure is temporary, so a still-valid token keeps the identity Ready.
    fn is_transient(&self) -> bool {
        self.retry() == Retry::Backoff
    }
}

/// The token the identity's Secret holds after a successful pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Secret name.
    pub secret_name: String,
    /// Issuer name.
    pub issuer: String,
    /// Signing key id.
    pub key_id: String,
    /// `iat`.
    pub issued_at: Timestamp,
    /// `exp`.
    pub expires_at: Timestamp,
    /// When to renew.
    pub renew_at: Timestamp,
    /// Set when this pass wrote a new token, with why.
    pub written: Option<ReissueReason>,
}

/// Secrets fedid wrote recently, overlaid on the (possibly lagging) watch cache.
#[derive(Default)]
pub struct RecentWrites(Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>);

impl RecentWrites {
    fn remember(&self, secret: Secret) {
        let key = ObjectRef::from_obj(&secret);
        self.lock().insert(key, Arc::new(secret));
    }

    /// The fresher of the cached Secret and the one written last; forgets the written one
    /// once the cache has caught up.
    fn freshest(
        &self,
        key: &ObjectRef<Secret>,
        cached: Option<Arc<Secret>>,
    ) -> Option<Arc<Secret>> {
        let mut writes = self.lock();
        let Some(written) = writes.get(key).cloned() else {
            return cached;
        };
        let version = |secret: &Secret| {
            secret
                .resource_version()
                .and_then(|version| version.parse::<u64>().ok())
        };
        match cached {
            Some(cached) if version(&cached) >= version(&written) => {
                writes.remove(key);
                Some(cached)
            }
            _ => Some(written),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Secret>, Arc<Secret>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// State of the identity controller beyond the shared context.
pub struct IdentityState {
    /// Cache of fedid-labelled Secrets.
    pub secrets: Store<Secret>,
    /// Writes the cache may not have seen yet.
    pub recent_writes: RecentWrites,
}

/// The shared context plus the identity controller's own state.
pub struct IdentityContext {
    /// Shared context.
    pub shared: Arc<Context>,
    /// Own state.
    pub state: IdentityState,
}

/// Reconciles one FederatedIdentity.
#[tracing::instrument(skip_all, fields(namespace = identity.namespace(), name = %identity.name_any()))]
pub async fn reconcile(
    identity: Arc<FederatedIdentity>,
    ctx: Arc<IdentityContext>,
) -> Result<Action, IdentityError> {
    let shared = &ctx.shared;
    let secrets_listed = ctx
        .state
        .secrets
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok());
    if !(shared.registry.is_synced() && secrets_listed) {
        // Until every issuer and every fedid Secret is loaded, "not found" and "absent" would
        // be lies: check again shortly, write nothing. (Never wait here: a reconciler holding
        // its slot would keep the controller from polling the very watch that fills the cache.)
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Tokens and status carry whole seconds; so does every decision.
    let now = whole_seconds(shared.now());
    shared.metrics.count_reconcile("identity");
    let result = issue(&identity, &ctx, now).await;
    let previous = identity.status.clone().unwrap_or_default();
    let status = next_status(identity.meta().generation, &previous, &result, now);

    if status != previous {
        write_status(&identity, shared, &status).await?;
    }
    publish_transition(&identity, shared, &previous, &status, &result).await;

    match &result {
        Ok(issued) => {
            if let Some(reason) = issued.written {
                shared
                    .metrics
                    .tokens_issued
                    .get_or_create(&crate::metrics::IssuerLabels {
                        issuer: issued.issuer.clone(),
                    })
                    .inc();
                info!(
                    issuer = %issued.issuer, kid = %issued.key_id, reason = reason.as_str(),
                    expires_at = %issued.expires_at, renew_at = %issued.renew_at,
                    "wrote a new token"
                );
            } else {
                debug!(renew_at = %issued.renew_at, "token still valid");
            }
            Ok(Action::requeue(until(issued.renew_at, now)))
        }
        Err(error) => {
            shared.metrics.count_failure("identity", error.reason());
            warn!(reason = error.reason(), error = %error_chain(error), "no fresh token");
            Ok(match error.retry() {
                Retry::AwaitChange => Action::await_change(),
                Retry::After(delay) => Action::requeue(delay),
                Retry::Backoff => Action::requeue(backoff(
                    status.failed_attempts,
                    deterministic_jitter(&format!(
                        "{}/{}",
                        identity.uid().unwrap_or_default(),
                        status.failed_attempts
                    )),
                )),
            })
        }
    }
}

/// Called when [`reconcile`] itself fails (the status could not be written): retry soon.
pub fn error_policy(
    identity: Arc<FederatedIdentity>,
    error: &IdentityError,
    ctx: Arc<IdentityContext>,
) -> Action {
    ctx.shared.metrics.count_failure("identity", error.reason());
    warn!(
        namespace = identity.namespace(), name = %identity.name_any(),
        error = %error_chain(error), "reconcile failed"
    );
    let attempts = identity
        .status
        .as_ref()
        .map_or(0, |status| status.failed_attempts)
        .saturating_add(1);
    Action::requeue(backoff(attempts, 0.0))
}

/// Finds the identity's issuer: the one named, or the default.
fn resolve_issuer(
    registry: &IssuerRegistry,
    issuer_ref: Option<&str>,
) -> Result<Arc<LoadedIssuer>, IdentityError> {
    match issuer_ref {
        Some(name) => registry.get(name).ok_or_else(|| {
            IdentityError::IssuerNotFound(format!("IdentityIssuer {name} does not exist"))
        }),
        None => registry
            .default_issuer()
            .map_err(|error| IdentityError::IssuerNotFound(error.to_string())),
    }
}

/// The whole decision and its writes, short of status.
async fn issue(
    identity: &FederatedIdentity,
    ctx: &IdentityContext,
    now: Timestamp,
) -> Result<Issued, IdentityError> {
    let shared = &ctx.shared;
    let namespace = identity
        .namespace()
        .ok_or(IdentityError::MissingMetadata("namespace"))?;
    let name = identity.name_any();
    let uid = identity
        .uid()
        .ok_or(IdentityError::MissingMetadata("uid"))?;

    let issuer = resolve_issuer(&shared.registry, identity.spec.issuer_ref.as_deref())?;
    let issuer_name = issuer.name();
    let config = issuer
        .config
        .as_ref()
        .map_err(|unusable| IdentityError::IssuerNotReady {
            issuer: issuer_name.clone(),
            why: match unusable {
                Unusable::InvalidSpec(message) => format!("its spec is invalid: {message}"),
                Unusable::BadKeyRing(message) => format!("its key ring is unreadable: {message}"),
            },
        })?;
    check_namespace(shared, &issuer, &namespace).await?;

    let validated = validate_identity_spec(
        &identity.spec,
        &namespace,
        &name,
        config,
        shared.settings.min_token_lifetime,
    )
    .map_err(|error| IdentityError::InvalidSpec(error.to_string()))?;
    let signer = issuer
        .signer(now)
        .ok_or_else(|| IdentityError::IssuerNotReady {
            issuer: issuer_name.clone(),
            why: "it has no signing key yet".to_owned(),
        })?;

    let existing = current_secret(ctx, &namespace, &validated.secret_name);
    let owned = match ownership(existing.as_deref(), &uid) {
        Ownership::Foreign => {
            return Err(IdentityError::SecretConflict {
                secret: validated.secret_name,
            });
        }
        Ownership::Ours => true,
        Ownership::Absent => false,
    };

    let jti = new_token_id();
    let desired = build_claims(&ClaimsInput::new(config, &validated, now, &jti))
        .map_err(|error| IdentityError::InvalidSpec(error.to_string()))?;

    let margin = signed(shared.settings.renew_before_expiry);
    let stored = existing
        .as_deref()
        .filter(|_| owned)
        .and_then(|secret| StoredToken::read(secret, &uid, margin));
    let published = issuer.published_kids(now);
    let decision = should_reissue(&ReissueInput {
        existing: stored.as_ref().map(|token| ExistingToken {
            claims: &token.claims,
            key_id: &token.key_id,
            renew_at: token.renew_at,
        }),
        desired_claims: &desired,
        published_key_ids: &published,
        now,
    });

    match (decision, stored) {
        (ReissueDecision::Keep { renew_at }, Some(stored)) => Ok(Issued {
            secret_name: validated.secret_name,
            issuer: issuer_name,
            key_id: stored.key_id,
            issued_at: stored.issued_at,
            expires_at: stored.expires_at,
            renew_at,
            written: None,
        }),
        (decision, _) => {
            let reason = match decision {
                ReissueDecision::Reissue { reason } => reason,
                ReissueDecision::Keep { .. } => ReissueReason::NoToken,
            };
            let token = sign(shared, signer.clone(), desired).await?;
            let expires_at = plus(now, signed(validated.lifetime.to_std()));
            let secret = desired_secret(
                identity,
                &validated.secret_name,
                &token,
                expires_at,
                signer.kid(),
            )
            .map_err(|_| IdentityError::MissingMetadata("uid"))?;
            let written = write_secret(shared, secret, owned).await?;
            ctx.state.recent_writes.remember(written);
            Ok(Issued {
                secret_name: validated.secret_name,
                issuer: issuer_name,
                key_id: signer.kid().to_owned(),
                issued_at: now,
                expires_at,
                renew_at: renewal_time(&uid, now, expires_at, margin),
                written: Some(reason),
            })
        }
    }
}

/// When the token issued at `issued_at` for identity `uid` is renewed: deterministic per
/// token, so a restarted operator computes the same time.
fn renewal_time(
    uid: &str,
    issued_at: Timestamp,
    expires_at: Timestamp,
    margin: SignedDuration,
) -> Timestamp {
    let jitter = deterministic_jitter(&format!("{uid}/{}", issued_at.as_second()));
    renew_at(issued_at, expires_at, jitter, margin)
}

fn signed(duration: impl Into<Duration>) -> SignedDuration {
    SignedDuration::try_from(duration.into()).unwrap_or(SignedDuration::MAX)
}

/// A fresh `jti`: 128 random bits, hex.
fn new_token_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The token found in an identity's Secret.
struct StoredToken {
    claims: Map<String, Value>,
    key_id: String,
    issued_at: Timestamp,
    expires_at: Timestamp,
    renew_at: Timestamp,
}

impl StoredToken {
    /// Decodes the token in `secret`; `None` when there is none or it is unreadable.
    fn read(secret: &Secret, uid: &str, margin: SignedDuration) -> Option<Self> {
        let bytes = secret.data.as_ref()?.get(TOKEN_KEY)?;
        let jwt = std::str::from_utf8(&bytes.0).ok()?;
        let decoded = decode_unverified(jwt).ok()?;
        let key_id = decoded.key_id()?.to_owned();
        let issued_at = decoded.issued_at()?;
        let expires_at = decoded.expires_at()?;
        Some(Self {
            renew_at: renewal_time(uid, issued_at, expires_at, margin),
            claims: decoded.claims,
            key_id,
            issued_at,
            expires_at,
        })
    }
}

/// Whether the issuer's policy allows `namespace`; reads the namespace's labels only when a
/// selector must decide.
async fn check_namespace(
    ctx: &Context,
    issuer: &LoadedIssuer,
    namespace: &str,
) -> Result<(), IdentityError> {
    let denied = || IdentityError::NamespaceNotAllowed {
        issuer: issuer.name(),
        namespace: namespace.to_owned(),
    };
    let Some(allowed) = &issuer.resource.spec.allowed_namespaces else {
        return Err(denied());
    };
    let no_labels = Default::default();
    let by_name = allowed.allows(namespace, &no_labels).unwrap_or(false);
    if by_name {
        return Ok(());
    }
    if allowed.selector.is_none() {
        return Err(denied());
    }
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get_metadata(namespace)
        .await
        .map_err(|source| IdentityError::Read {
            what: format!("Namespace {namespace}"),
            source,
        })?
        .metadata
        .labels
        .unwrap_or_default();
    match allowed.allows(namespace, &labels) {
        Ok(true) => Ok(()),
        Ok(false) => Err(denied()),
        Err(error) => Err(IdentityError::IssuerNotReady {
            issuer: issuer.name(),
            why: format!("its namespace selector is invalid: {error}"),
        }),
    }
}

/// The identity's Secret, from the cache of fedid-labelled Secrets overlaid with this
/// process's own recent writes. fedid has no right to read other Secrets: one that exists
/// outside the cache is found when creating it fails.
fn current_secret(ctx: &IdentityContext, namespace: &str, name: &str) -> Option<Arc<Secret>> {
    let key = ObjectRef::<Secret>::new(name).within(namespace);
    let cached = ctx.state.secrets.get(&key);
    ctx.state.recent_writes.freshest(&key, cached)
}

/// Signs on the blocking pool (RSA signing must not stall the reconcilers).
async fn sign(
    ctx: &Context,
    signer: Arc<Signer>,
    claims: Map<String, Value>,
) -> Result<String, IdentityError> {
    let started = std::time::Instant::now();
    let signed = tokio::task::spawn_blocking(move || signer.sign(&claims))
        .await
        .map_err(|join| IdentityError::SigningTask(join.to_string()))?
        .map_err(IdentityError::Signing);
    ctx.metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    signed
}

/// Creates the Secret, or server-side-applies it when it is already ours. A create that
/// races another writer fails with a conflict and is retried, re-checking ownership.
async fn write_secret(
    ctx: &Context,
    secret: Secret,
    exists: bool,
) -> Result<Secret, IdentityError> {
    let name = secret.name_any();
    let namespace = secret.namespace().unwrap_or_default();
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let written = if exists {
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    } else {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        api.create(&params, &secret).await
    };
    written.map_err(|source| match source {
        kube::Error::Api(status) if !exists && status.code == 409 => {
            IdentityError::SecretConflict { secret: name }
        }
        source => IdentityError::WriteSecret {
            secret: name,
            source,
        },
    })
}

/// The status after this pass. Pure: the previous status, the outcome and the time decide.
pub fn next_status(
    generation: Option<i64>,
    previous: &FederatedIdentityStatus,
    result: &Result<Issued, IdentityError>,
    now: Timestamp,
) -> FederatedIdentityStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    match result {
        Ok(issued) => {
            status.secret_name = Some(issued.secret_name.clone());
            status.issuer = Some(issued.issuer.clone());
            status.key_id = Some(issued.key_id.clone());
            status.issued_at = Some(Time(issued.issued_at));
            status.expires_at = Some(Time(issued.expires_at));
            status.renew_at = Some(Time(issued.renew_at));
            status.failed_attempts = 0;
            status.last_failure_reason = None;
            set_condition(
                &mut status.conditions,
                identity_issued_condition(&issued.secret_name, issued.expires_at, generation),
                now,
            );
        }
        Err(error) => {
            // The same permanent verdict reached again (after a restart, say) is no new attempt.
            let repeated = !error.is_transient()
                && previous.last_failure_reason.as_deref() == Some(error.reason());
            if !repeated {
                status.failed_attempts = previous.failed_attempts.saturating_add(1);
            }
            status.last_failure_reason = Some(error.reason().to_owned());
            let token_still_valid = previous
                .expires_at
                .as_ref()
                .is_some_and(|expires| expires.0 > now);
            if !(error.is_transient() && token_still_valid) {
                let failed = if error.is_transient() {
                    ConditionStatus::Unknown
                } else {
                    ConditionStatus::False
                };
                set_condition(
                    &mut status.conditions,
                    ConditionUpdate {
                        type_: READY,
                        status: failed,
                        reason: error.reason(),
                        message: error_chain(error),
                        observed_generation: generation,
                    },
                    now,
                );
            }
        }
    }
    status
}

/// Server-side-applies the status fields fedid owns.
async fn write_status(
    identity: &FederatedIdentity,
    ctx: &Context,
    status: &FederatedIdentityStatus,
) -> Result<(), IdentityError> {
    let namespace = identity
        .namespace()
        .ok_or(IdentityError::MissingMetadata("namespace"))?;
    let api = Api::<FederatedIdentity>::namespaced(ctx.client.clone(), &namespace);
    apply_status(&api, &identity.name_any(), status)
        .await
        .map_err(IdentityError::WriteStatus)
}

/// Publishes an Event when the Ready state or the failure reason changed; never on a pass
/// that changed nothing.
async fn publish_transition(
    identity: &FederatedIdentity,
    ctx: &Context,
    previous: &FederatedIdentityStatus,
    status: &FederatedIdentityStatus,
    result: &Result<Issued, IdentityError>,
) {
    let ready_changed = ready_state(&previous.conditions) != ready_state(&status.conditions);
    let failure_changed = previous.last_failure_reason != status.last_failure_reason;
    if !(ready_changed || failure_changed) {
        return;
    }
    let object = identity.object_ref(&());
    match result {
        Ok(issued) if ready_changed => {
            let note = format!(
                "token from IdentityIssuer {} (key {}) written to Secret {}, valid until {}",
                issued.issuer, issued.key_id, issued.secret_name, issued.expires_at
            );
            ctx.publish(&object, EventType::Normal, "Issued", "IssueToken", note)
                .await;
        }
        Ok(_) => {}
        Err(error) => {
            ctx.publish(
                &object,
                EventType::Warning,
                error.reason(),
                "IssueToken",
                error_chain(error),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn issued() -> Issued {
        Issued {
            secret_name: "deploy-token".into(),
            issuer: "ci".into(),
            key_id: "k1".into(),
            issued_at: at(1_000),
            expires_at: at(4_600),
            renew_at: at(3_400),
            written: Some(ReissueReason::NoToken),
        }
    }

    fn ready(status: &FederatedIdentityStatus) -> (String, String) {
        let (status, reason) = ready_state(&status.conditions).expect("a Ready condition");
        (status.to_owned(), reason.to_owned())
    }

    #[test]
    fn success_reports_the_token_and_clears_failures() {
        let previous = FederatedIdentityStatus {
            failed_attempts: 3,
            last_failure_reason: Some("ApiError".into()),
            ..Default::default()
        };
        let status = next_status(Some(2), &previous, &Ok(issued()), at(1_000));
        assert_eq!(ready(&status), ("True".into(), "Issued".into()));
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(status.last_failure_reason, None);
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.renew_at, Some(Time(at(3_400))));
        assert_eq!(status.key_id.as_deref(), Some("k1"));
    }

    #[test]
    fn a_pass_that_changes_nothing_yields_the_same_status() {
        let first = next_status(Some(1), &Default::default(), &Ok(issued()), at(1_000));
        let mut kept = issued();
        kept.written = None;
        let second = next_status(Some(1), &first, &Ok(kept), at(2_000));
        assert_eq!(
            first, second,
            "an unchanged token must not cause a status write"
        );
    }

    #[test]
    fn transient_failure_with_a_valid_token_stays_ready_and_counts() {
        let ok = next_status(Some(1), &Default::default(), &Ok(issued()), at(1_000));
        let error = IdentityError::IssuerNotReady {
            issuer: "ci".into(),
            why: "it has no signing key yet".into(),
        };
        let status = next_status(Some(1), &ok, &Err(error), at(3_500));
        assert_eq!(ready(&status), ("True".into(), "Issued".into()));
        assert_eq!(status.failed_attempts, 1);
        assert_eq!(
            status.last_failure_reason.as_deref(),
            Some("IssuerNotReady")
        );
    }

    #[test]
    fn transient_failure_after_expiry_is_unknown() {
        let ok = next_status(Some(1), &Default::default(), &Ok(issued()), at(1_000));
        let error = IdentityError::IssuerNotReady {
            issuer: "ci".into(),
            why: "it has no signing key yet".into(),
        };
        let status = next_status(Some(1), &ok, &Err(error), at(5_000));
        assert_eq!(ready(&status), ("Unknown".into(), "IssuerNotReady".into()));
    }

    #[test]
    fn permanent_failures_are_not_ready_with_their_reason() {
        let ok = next_status(Some(1), &Default::default(), &Ok(issued()), at(1_000));
        for (error, reason) in [
            (
                IdentityError::SecretConflict { secret: "x".into() },
                "SecretConflict",
            ),
            (
                IdentityError::InvalidSpec("lifetime 3h exceeds the maximum 2h".into()),
                "InvalidSpec",
            ),
            (
                IdentityError::NamespaceNotAllowed {
                    issuer: "ci".into(),
                    namespace: "team-b".into(),
                },
                "NamespaceNotAllowed",
            ),
            (
                IdentityError::IssuerNotFound("IdentityIssuer x does not exist".into()),
                "IssuerNotFound",
            ),
        ] {
            let message = error.to_string();
            let status = next_status(Some(2), &ok, &Err(error), at(1_500));
            assert_eq!(ready(&status), ("False".into(), reason.into()));
            let condition = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
            assert_eq!(condition.message, message);
            assert_eq!(condition.observed_generation, Some(2));
        }
    }

    #[test]
    fn a_repeated_permanent_failure_changes_nothing() {
        let conflict = || IdentityError::SecretConflict { secret: "x".into() };
        let first = next_status(Some(1), &Default::default(), &Err(conflict()), at(1_000));
        assert_eq!(first.failed_attempts, 1);
        let again = next_status(Some(1), &first, &Err(conflict()), at(2_000));
        assert_eq!(first, again, "no status write when nothing changed");
    }

    #[test]
    fn transient_failures_count_up() {
        let unready = || IdentityError::IssuerNotReady {
            issuer: "ci".into(),
            why: "it has no signing key yet".into(),
        };
        let first = next_status(Some(1), &Default::default(), &Err(unready()), at(1_000));
        let second = next_status(Some(1), &first, &Err(unready()), at(1_005));
        assert_eq!(second.failed_attempts, 2);
    }

    #[test]
    fn retry_policy_per_error() {
        assert_eq!(
            IdentityError::InvalidSpec(String::new()).retry(),
            Retry::AwaitChange
        );
        assert_eq!(
            IdentityError::IssuerNotFound(String::new()).retry(),
            Retry::AwaitChange
        );
        assert!(matches!(
            IdentityError::SecretConflict {
                secret: String::new()
            }
            .retry(),
            Retry::After(_)
        ));
        assert_eq!(
            IdentityError::IssuerNotReady {
                issuer: String::new(),
                why: String::new()
            }
            .retry(),
            Retry::Backoff
        );
    }

    #[test]
    fn renewal_time_is_stable_across_restarts_and_respects_the_margin() {
        let margin = SignedDuration::from_secs(300);
        let first = renewal_time("uid-1", at(1_000), at(4_600), margin);
        assert_eq!(first, renewal_time("uid-1", at(1_000), at(4_600), margin));
        assert!(
            first >= at(1_000 + 2_160) && first <= at(1_000 + 2_640),
            "{first}"
        );
        let short = renewal_time("uid-1", at(1_000), at(1_030), SignedDuration::from_secs(5));
        assert!(short <= at(1_025) && short >= at(1_018), "{short}");
    }

    fn secret_with_version(version: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn recent_writes_win_until_the_cache_catches_up() {
        let writes = RecentWrites::default();
        let key = ObjectRef::<Secret>::new("s").within("ns");
        writes.remember(secret_with_version("20"));
        let stale = Arc::new(secret_with_version("10"));
        let chosen = writes.freshest(&key, Some(stale)).unwrap();
        assert_eq!(chosen.resource_version().as_deref(), Some("20"));
        let caught_up = Arc::new(secret_with_version("20"));
        let chosen = writes.freshest(&key, Some(caught_up)).unwrap();
        assert_eq!(chosen.resource_version().as_deref(), Some("20"));
        assert!(
            writes.lock().is_empty(),
            "forgotten once the cache caught up"
        );
        assert!(writes.freshest(&key, None).is_none());
    }

    /// Request-level checks against a mock apiserver: every request fedid makes is asserted,
    /// in order, and anything unexpected fails the test.
    mod apiserver {
        use std::sync::Arc;

        use http::{Method, Request, Response, StatusCode};
        use kube::{
            Client,
            client::Body,
            runtime::{reflector, watcher},
        };
        use serde_json::{Value, json};
        use tower_test::mock::{Handle, pair};

        use super::super::*;
        use crate::{
            controller::{Context, Settings},
            fixtures,
            keys::KeyRing,
            metrics::Metrics,
        };

        const TEAM: &str = "team-a";

        fn identity_json() -> Value {
            json!({
                "apiVersion": "fedid.dev/v1alpha1",
                "kind": "FederatedIdentity",
                "metadata": {"name": "deploy", "namespace": TEAM, "uid": "uid-deploy", "generation": 1},
                "spec": {"audiences": ["sts.example.com"]},
            })
        }

        fn identity() -> FederatedIdentity {
            serde_json::from_value(identity_json()).unwrap()
        }

        /// A context whose issuer `ci` (the default, signing with `ring`) allows `team-a`, with
        /// the given cached Secrets.
        fn context(
            ring: &KeyRing,
            cached: Vec<Secret>,
        ) -> (Arc<IdentityContext>, Handle<Request<Body>, Response<Body>>) {
            let (service, handle) = pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let mut issuer = fixtures::issuer(
                "ci",
                json!({
                    "issuerURL": "https://fedid.example.com/ci",
                    "allowedNamespaces": {"names": [TEAM]},
                }),
            );
            issuer
                .metadata
                .annotations
                .get_or_insert_default()
                .insert("fedid.dev/default-issuer".into(), "true".into());
            let registry = fixtures::registry(vec![(issuer, Some(ring.clone()))]);
            let settings = Settings {
                namespace: fixtures::NAMESPACE.into(),
                min_token_lifetime: Duration::from_secs(600),
                renew_before_expiry: Duration::from_secs(300),
                concurrency: 1,
            };
            let (secrets, mut writer) = reflector::store::<Secret>();
            writer.apply_watcher_event(&watcher::Event::Init);
            for secret in cached {
                writer.apply_watcher_event(&watcher::Event::InitApply(secret));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            let shared = Arc::new(Context::new(
                client,
                registry,
                Arc::new(Metrics::default()),
                settings,
                None,
            ));
            let ctx = IdentityContext {
                shared,
                state: IdentityState {
                    secrets,
                    recent_writes: RecentWrites::default(),
                },
            };
            (Arc::new(ctx), handle)
        }

        async fn body_json(request: Request<Body>) -> Value {
            let bytes = request.into_body().collect_bytes().await.unwrap();
            serde_json::from_slice(&bytes).unwrap()
        }

        fn respond(status: StatusCode, body: &Value) -> Response<Body> {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        }

        /// Fails on any request arriving within 300 ms (a dropped client is fine).
        async fn assert_no_request(handle: &mut Handle<Request<Body>, Response<Body>>) {
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
            {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
        }

        async fn next(
            handle: &mut Handle<Request<Body>, Response<Body>>,
        ) -> (
            Request<Body>,
            tower_test::mock::SendResponse<Response<Body>>,
        ) {
            tokio::time::timeout(Duration::from_secs(2), handle.next_request())
                .await
                .expect("fedid made the expected request")
                .expect("the client is alive")
        }

        #[tokio::test]
        async fn a_foreign_secret_is_found_by_a_failed_create_and_never_written() {
            let (ctx, mut handle) = context(&fixtures::ring(), Vec::new());
            let server = tokio::spawn(async move {
                let (request, send) = next(&mut handle).await;
                assert_eq!(request.method(), Method::POST);
                assert_eq!(request.uri().path(), "/api/v1/namespaces/team-a/secrets");
                let secret = body_json(request).await;
                assert_eq!(secret["metadata"]["name"], "deploy-token");
                assert_eq!(
                    secret["metadata"]["ownerReferences"][0]["uid"],
                    "uid-deploy"
                );
                send.send_response(respond(
                    StatusCode::CONFLICT,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                            "reason": "AlreadyExists", "message": "secrets \"deploy-token\" already exists"}),
                ));

                let (request, send) = next(&mut handle).await;
                assert_eq!(request.method(), Method::PATCH);
                assert_eq!(
                    request.uri().path(),
                    "/apis/fedid.dev/v1alpha1/namespaces/team-a/federatedidentities/deploy/status"
                );
                assert!(
                    request
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .contains("fieldManager=fedid.dev")
                );
                let patch = body_json(request).await;
                assert_eq!(patch["status"]["conditions"][0]["reason"], "SecretConflict");
                assert_eq!(patch["status"]["conditions"][0]["status"], "False");
                send.send_response(respond(StatusCode::OK, &identity_json()));

                let (request, send) = next(&mut handle).await;
                assert_eq!(request.method(), Method::POST);
                assert_eq!(
                    request.uri().path(),
                    "/apis/events.k8s.io/v1/namespaces/team-a/events"
                );
                let event = body_json(request).await;
                assert_eq!(event["reason"], "SecretConflict");
                assert_eq!(event["type"], "Warning");
                send.send_response(respond(StatusCode::OK, &event));
                handle
            });
            let action = reconcile(Arc::new(identity()), ctx)
                .await
                .expect("reconcile");
            assert_eq!(action, Action::requeue(Duration::from_secs(300)));
            let mut handle = server
                .await
                .expect("the mock apiserver saw what it expected");
            // Nothing else: no write to the foreign Secret, no retry of the create.
            assert_no_request(&mut handle).await;
        }

        #[tokio::test]
        async fn a_valid_token_with_a_current_status_makes_no_request_at_all() {
            // First pass: create the Secret, then report the status; keep what was written.
            let ring = fixtures::ring();
            let (ctx, mut handle) = context(&ring, Vec::new());
            let server = tokio::spawn(async move {
                let (request, send) = next(&mut handle).await;
                let mut secret = body_json(request).await;
                secret["metadata"]["resourceVersion"] = json!("5");
                send.send_response(respond(StatusCode::CREATED, &secret));
                let (request, send) = next(&mut handle).await;
                let status = body_json(request).await["status"].clone();
                send.send_response(respond(StatusCode::OK, &identity_json()));
                let (_event, send) = next(&mut handle).await;
                send.send_response(respond(StatusCode::OK, &json!({})));
                (secret, status)
            });
            reconcile(Arc::new(identity()), ctx)
                .await
                .expect("first pass");
            let (secret, status) = server.await.unwrap();

            // A restarted operator: the Secret is in its cache, the status on the object.
            let secret: Secret = serde_json::from_value(secret).unwrap();
            let (ctx, mut handle) = context(&ring, vec![secret]);
            let mut current = identity();
            current.status = Some(serde_json::from_value(status).unwrap());
            let pass = tokio::spawn(reconcile(Arc::new(current), ctx));
            // A still-valid token and an unchanged status must cause no request at all.
            assert_no_request(&mut handle).await;
            let action = pass.await.unwrap().expect("second pass");
            // It comes back at the renewal time, 2/3 of the default 1h lifetime ±10%.
            let renew_in = (1..=3600)
                .map(Duration::from_secs)
                .find(|delay| action == Action::requeue(*delay))
                .expect("a requeue at the renewal time");
            assert!((2160..=2640).contains(&renew_in.as_secs()), "{renew_in:?}");
        }
    }
}
