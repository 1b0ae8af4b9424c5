//! The pod pipeline: one opted-in pod's token, through the identity pipeline's phases.
//!
//! fetch (the identity from its cache, its issuer from the registry) → validate (the
//! identity, then `fedid_core::pod::bind`: the pod may use it; its CI claims; its Secret,
//! owned by the pod) → plan → mint → exchange → render → apply → report (an Event on the pod
//! when something changed, metrics, requeue at the renewal time). A pod that finished has
//! its Secret deleted and is never refreshed again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fedid_core::{
    crd::FederatedIdentity,
    credentials::secret::{Ownership, ownership},
    identity::{
        plan::{Issued, Plan, plan, revokes},
        validate::validate,
    },
    pod::{
        PodError, PodLifecycle, bind, identity_name, lifecycle, render_pod_secret,
        report as decide_report,
    },
    reason::{Failure, Reason, Retry, message_chain},
    time::whole_seconds,
};
use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Resource, ResourceExt,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{debug, info, warn};

use crate::{
    exchange::Priority,
    identity::reconcile::{
        ApplyError, IdentityContext, IdentityError, apply, delete_own_secret, exchange, fetch,
        mint_on_blocking_pool, unusable_issuer,
    },
    runtime::{context::is_listed, metrics::IssuerLabels},
};

/// What the pod pipeline reads besides the identity pipeline's context.
pub struct PodContext {
    /// The identity pipeline's context (caches, exchanger, registry).
    pub identity: Arc<IdentityContext>,
    /// FederatedIdentities.
    pub identities: Store<FederatedIdentity>,
    /// The CA of the token endpoint's certificate, written into pod Secrets when it is served.
    pub token_request_ca: Option<String>,
    /// Per pod UID: the reason of the last failure reported and consecutive failures.
    failures: Mutex<HashMap<String, (Reason, u32)>>,
}

impl PodContext {
    /// A context over the identity pipeline's.
    pub fn new(
        identity: Arc<IdentityContext>,
        identities: Store<FederatedIdentity>,
        token_request_ca: Option<String>,
    ) -> Self {
        Self {
            identity,
            identities,
            token_request_ca,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The last failure reported for the pod, and how many in a row.
    fn last_failure(&self, uid: &str) -> Option<(Reason, u32)> {
        self.failures.lock().ok()?.get(uid).copied()
    }

    /// Remembers the pod's failure for the next pass, or forgets it after a success.
    fn remember_failure(&self, uid: &str, failure: Option<(Reason, u32)>) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        match failure {
            Some(failure) => {
                // Pods deleted while failing leave entries behind; bound the map.
                if failures.len() >= 10_000 {
                    failures.clear();
                }
                failures.insert(uid.to_owned(), failure);
            }
            None => {
                failures.remove(uid);
            }
        }
    }

    fn forget(&self, uid: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(uid);
        }
    }
}

/// Why a pass produced no token for the pod.
#[derive(Debug, thiserror::Error)]
pub enum PodPassError {
    /// The pod may not use the identity, or lacks what its claims need.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// A phase shared with the identity pipeline failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl Failure for PodPassError {
    fn reason(&self) -> Reason {
        match self {
            Self::Pod(error) => error.reason(),
            Self::Identity(error) => error.reason(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            Self::Pod(error) => error.retry(),
            Self::Identity(error) => error.retry(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Pod(_) => None,
            Self::Identity(error) => error.retry_after(),
        }
    }
}

/// Why the pod reconciler itself failed (deleting a finished or revoked pod's Secret).
#[derive(Debug, thiserror::Error)]
#[error("failed to delete Secret {secret} of a finished or revoked pod")]
pub struct CleanupError {
    secret: String,
    #[source]
    source: ApplyError,
}

/// Reconciles one opted-in pod.
#[tracing::instrument(skip_all, fields(namespace = pod.namespace(), name = %pod.name_any()))]
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<PodContext>) -> Result<Action, CleanupError> {
    let identity_ctx = &ctx.identity;
    if !(identity_ctx.registry.is_synced()
        && identity_ctx.secrets.is_listed()
        && is_listed(&ctx.identities)
        && is_listed(&identity_ctx.client_credentials)
        && is_listed(&identity_ctx.ca_bundles))
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let uid = pod.uid().unwrap_or_default();
    match lifecycle(&pod) {
        // Garbage collection removes the Secret with the pod.
        PodLifecycle::Terminating => {
            ctx.forget(&uid);
            return Ok(Action::await_change());
        }
        PodLifecycle::Finished => {
            ctx.forget(&uid);
            delete_secret(&pod, &ctx).await?;
            return Ok(Action::await_change());
        }
        PodLifecycle::Live => {}
    }
    let now = whole_seconds(identity_ctx.shared.now());
    identity_ctx.shared.metrics.count_reconcile("pod");
    let (result, first_issue) = match run_pipeline(&pod, &ctx, now).await {
        Ok((issued, first)) => (Ok(issued), first),
        Err(error) => {
            if revokes(error.reason()) {
                // The pod's identity lost its right to tokens: its token goes now.
                delete_secret(&pod, &ctx).await?;
            }
            (Err(error), false)
        }
    };
    Ok(report(&pod, &ctx, result, first_issue, now).await)
}

/// The phases up to apply; also says whether the pod had no Secret before.
async fn run_pipeline(
    pod: &Pod,
    ctx: &PodContext,
    now: jiff::Timestamp,
) -> Result<(Issued, bool), PodPassError> {
    let identity_ctx = &ctx.identity;
    let settings = &identity_ctx.shared.settings;
    let namespace = pod
        .namespace()
        .ok_or(PodError::MissingMetadata("namespace"))?;
    let name = identity_name(pod).unwrap_or_default().to_owned();
    let identity = ctx
        .identities
        .get(&ObjectRef::new(&name).within(&namespace))
        .ok_or_else(|| PodError::IdentityNotFound {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
    if identity.spec.pods.is_none() {
        return Err(PodError::PodsNotEnabled { name }.into());
    }
    let fetched = fetch(&identity, identity_ctx).map_err(IdentityError::from)?;
    let config = fetched
        .issuer
        .config
        .as_ref()
        .map_err(|unusable| IdentityError::from(unusable_issuer(&fetched.issuer, unusable)))?;
    let template = validate(
        &identity,
        &fetched.issuer.resource,
        config,
        fetched.namespace_labels.as_ref(),
        settings.min_token_lifetime,
    )
    .map_err(IdentityError::from)?;
    let validated = bind(&identity.spec, &template, config, pod)?;
    let margin =
        SignedDuration::try_from(settings.renew_before_expiry).unwrap_or(SignedDuration::MAX);
    let published = fetched.issuer.published_kids(now);
    let existing = identity_ctx
        .secrets
        .current(&validated.namespace, &validated.secret_name);
    let (reason, secret_exists) =
        match plan(&validated, existing.as_deref(), &published, now, margin)
            .map_err(IdentityError::from)?
        {
            Plan::Keep(issued) => return Ok((issued, false)),
            Plan::Issue {
                reason,
                secret_exists,
            } => (reason, secret_exists),
        };
    let minted = mint_on_blocking_pool(&identity_ctx.shared, &fetched.issuer, &validated, now)
        .await
        .map_err(IdentityError::from)?;
    let priority = if reason.is_first_issue(secret_exists) {
        Priority::FirstIssue
    } else {
        Priority::Refresh
    };
    let mut attempt = None;
    let credentials = exchange(
        identity_ctx,
        &fetched.issuer,
        &validated,
        minted,
        priority,
        &mut attempt,
    )
    .await?;
    let pods = identity.spec.pods.clone().unwrap_or_default();
    let secret = render_pod_secret(
        &validated,
        &credentials,
        &pods,
        ctx.token_request_ca.as_deref(),
    )
    .map_err(IdentityError::from)?;
    let written = apply(
        &identity_ctx.shared,
        secret,
        existing.as_deref().filter(|_| secret_exists),
    )
    .await
    .map_err(IdentityError::from)?;
    identity_ctx.secrets.recent_writes.remember(written);
    Ok((
        Issued::written(&validated, &credentials, reason, margin),
        !secret_exists,
    ))
}

/// Report: the core's verdict (an Event when something changed, when to come back), metrics
/// and logs.
async fn report(
    pod: &Pod,
    ctx: &PodContext,
    result: Result<Issued, PodPassError>,
    first_issue: bool,
    now: jiff::Timestamp,
) -> Action {
    let shared = &ctx.identity.shared;
    let uid = pod.uid().unwrap_or_default();
    let outcome: Result<&Issued, &dyn Failure> = match &result {
        Ok(issued) => Ok(issued),
        Err(error) => Err(error),
    };
    let decided = decide_report(&uid, outcome, first_issue, ctx.last_failure(&uid), now);
    ctx.remember_failure(&uid, decided.failure);
    match &result {
        Ok(issued) if issued.written.is_some() => {
            shared
                .metrics
                .pod_tokens_issued
                .get_or_create(&IssuerLabels {
                    issuer: issued.issuer.clone(),
                })
                .inc();
            info!(issuer = %issued.issuer, kid = %issued.key_id, renew_at = %issued.renew_at, "wrote the pod's token");
        }
        Ok(_) => {}
        Err(failure) => {
            shared.metrics.count_failure("pod", failure.reason());
            warn!(reason = %failure.reason(), error = %message_chain(failure), "no token for the pod");
        }
    }
    if let Some(event) = decided.event {
        shared.publish(&pod.object_ref(&()), event).await;
    }
    Action::requeue(decided.requeue)
}

/// Deletes the Secret of a finished pod, if fedid wrote one for it (and only that object: the
/// delete is conditional on its UID).
async fn delete_secret(pod: &Pod, ctx: &PodContext) -> Result<(), CleanupError> {
    let Some(secret_name) = pod
        .annotations()
        .get(fedid_core::crd::pods::POD_SECRET_ANNOTATION)
    else {
        return Ok(());
    };
    let namespace = pod.namespace().unwrap_or_default();
    let Some(existing) = ctx.identity.secrets.current(&namespace, secret_name) else {
        return Ok(());
    };
    if ownership(Some(&existing), &pod.uid().unwrap_or_default()) != Ownership::Ours {
        return Ok(());
    }
    delete_own_secret(&ctx.identity.shared, &existing)
        .await
        .map_err(|source| CleanupError {
            secret: secret_name.clone(),
            source,
        })
}

/// Called when [`reconcile`] fails (a finished or revoked pod's Secret could not be deleted).
pub fn error_policy(_pod: Arc<Pod>, error: &CleanupError, _ctx: Arc<PodContext>) -> Action {
    debug!(%error, "pod reconcile failed");
    Action::requeue(Duration::from_secs(5))
}
