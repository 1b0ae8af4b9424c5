//! The identity pipeline: reconciles one FederatedIdentity in named phases.
//!
//! fetch (caches only: the issuer from the registry, the namespace's labels from the namespace
//! metadata cache when the issuer's policy needs them) → validate → plan (given the Secret from fedid's cache) (keep, or issue and why) → mint (signing, on the blocking pool) →
//! exchange (when the identity has one: the request built by the core, sent within the per-host
//! budget, the reply judged by the core) → render (the Secret) → apply (create, or server-side apply when the
//! Secret is ours) → report (status when it changed, an Event on a transition, metrics,
//! requeue). Every decision is made by `fedid_core`; this file only moves data to and from
//! the apiserver. When the plan is to keep the token, nothing is minted, rendered or written.

use std::{sync::Arc, time::Duration};

use fedid_core::{
    crd::exchange::{ConfigMapKeyRef, SecretKeyRef},
    crd::issuer::DefaultIssuerError,
    crd::{FederatedIdentity, FederatedIdentityStatus, identity::default_secret_name},
    credentials::{
        secret::{Ownership, ownership},
        token::Minted,
    },
    exchange::{
        CA_BUNDLE_LABEL, CLIENT_CREDENTIALS_LABEL, ClientAssertion, ClientCredential, Credentials,
        ExchangeError, ExchangeRequest, Requester, Stage, Step, build_request, client_secret_value,
        parse_reply, without_exchange,
    },
    identity::{
        mint::{MintError, mint, sign_client_assertion},
        plan::{Issued, Plan, PlanError, plan, revokes},
        render::{leftover_entries, render_secret},
        rollout::{RolloutOutcome, credentials_digest, report_rollout},
        status::{
            ExchangeAttempt, Outcome, exchange_backoff_pending, next_exchange_attempt,
            report as decide_report, template_report, transition_event,
        },
        template::TemplateError,
        validate::{ValidateError, ValidatedIdentity, validate},
    },
    reason::{Failure, Reason, Retry, message_chain},
    time::whole_seconds,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{debug, info, warn};

use super::{
    recent_status::RecentStatuses,
    rollout::roll_out,
    secrets::{ExchangeBackoffs, OwnSecrets},
};
use crate::{
    exchange::{Exchanger, Priority},
    issuer::registry::{IssuerRegistry, LoadedIssuer, Unusable},
    runtime::{
        context::{Context, FIELD_MANAGER, apply_status, is_listed},
        metrics::{ExchangeLabels, IssuerLabels},
    },
};

/// The shared context plus what only the identity pipeline reads.
pub struct IdentityContext {
    /// Shared context.
    pub shared: Arc<Context>,
    /// Issuers and their keys, as loaded by the registry sync.
    pub registry: Arc<IssuerRegistry>,
    /// fedid's own Secrets.
    pub secrets: OwnSecrets,
    /// Namespaces' metadata (labels decide selector policies).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Secrets labelled `fedid.dev/client-credentials: "true"`: the only client secrets fedid
    /// sends.
    pub client_credentials: Store<Secret>,
    /// ConfigMaps labelled `fedid.dev/ca-bundle: "true"`: the only CA bundles `caBundleRef`
    /// may name.
    pub ca_bundles: Store<ConfigMap>,
    /// Sends exchange requests within the per-host budget.
    pub exchanger: Arc<Exchanger>,
    /// Failed exchanges' next-attempt times this replica reported.
    pub backoffs: ExchangeBackoffs,
    /// Statuses this replica wrote that the identity cache may not show yet.
    pub recent_statuses: RecentStatuses,
}

/// Why the fetch phase could not gather what the pass needs.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `spec.issuerRef` names an issuer that does not exist.
    #[error("IdentityIssuer {name} does not exist")]
    IssuerNotFound {
        /// The referenced name.
        name: String,
    },
    /// No issuer is named and no single default exists.
    #[error(transparent)]
    NoDefault(#[from] DefaultIssuerError),
    /// The issuer exists but cannot be used.
    #[error("IdentityIssuer {issuer} is not ready")]
    IssuerNotReady {
        /// Issuer name.
        issuer: String,
        /// Why.
        #[source]
        source: Unusable,
    },
}

impl Failure for FetchError {
    fn reason(&self) -> Reason {
        match self {
            Self::IssuerNotFound { .. } => Reason::IssuerNotFound,
            Self::NoDefault(error) => error.reason(),
            Self::IssuerNotReady { .. } => Reason::IssuerNotReady,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            // The issuer watch re-triggers these when an issuer appears or changes.
            Self::IssuerNotFound { .. } | Self::NoDefault(_) => Retry::WaitForChange,
            // An issuer being fixed or getting its keys: keep a valid token Ready meanwhile.
            Self::IssuerNotReady { .. } => Retry::Backoff,
        }
    }
}

/// Why the apply phase could not write the Secret.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Creating the Secret found one that fedid cannot see: not ours.
    #[error(transparent)]
    Conflict(#[from] PlanError),
    /// The write failed.
    #[error("failed to write Secret {secret}")]
    WriteSecret {
        /// Secret name.
        secret: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl Failure for ApplyError {
    fn reason(&self) -> Reason {
        match self {
            Self::Conflict(error) => error.reason(),
            Self::WriteSecret { .. } => Reason::ApiError,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            Self::Conflict(error) => error.retry(),
            Self::WriteSecret { .. } => Retry::Backoff,
        }
    }
}

/// Why a pass of the pipeline produced no fresh token: the failure of one phase.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Fetch phase.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Validate phase.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// Plan phase.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Mint phase.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Exchange phase.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// Render phase: an output template failed on the real credentials.
    #[error(transparent)]
    Render(#[from] TemplateError),
    /// Apply phase.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl IdentityError {
    fn phase(&self) -> &dyn Failure {
        match self {
            Self::Fetch(error) => error,
            Self::Validate(error) => error,
            Self::Plan(error) => error,
            Self::Mint(error) => error,
            Self::Exchange(error) => error,
            Self::Render(error) => error,
            Self::Apply(error) => error,
        }
    }
}

impl Failure for IdentityError {
    fn reason(&self) -> Reason {
        self.phase().reason()
    }

    fn retry(&self) -> Retry {
        self.phase().retry()
    }

    fn retry_after(&self) -> Option<Duration> {
        self.phase().retry_after()
    }
}

/// Why the report phase failed: the status could not be written. The controller retries.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The identity lacks its namespace.
    #[error("FederatedIdentity has no namespace")]
    MissingNamespace,
    /// Writing the status failed.
    #[error("failed to write the status")]
    WriteStatus(#[source] kube::Error),
}

impl Failure for ReportError {
    fn reason(&self) -> Reason {
        match self {
            Self::MissingNamespace => Reason::MissingMetadata,
            Self::WriteStatus(_) => Reason::ApiError,
        }
    }

    fn retry(&self) -> Retry {
        Retry::Backoff
    }
}

/// What the fetch phase gathered for one pass.
pub(crate) struct Fetched {
    pub(crate) issuer: Arc<LoadedIssuer>,
    pub(crate) namespace_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Reconciles one FederatedIdentity.
#[tracing::instrument(skip_all, fields(namespace = identity.namespace(), name = %identity.name_any()))]
pub async fn reconcile(
    identity: Arc<FederatedIdentity>,
    ctx: Arc<IdentityContext>,
) -> Result<Action, ReportError> {
    let shared = &ctx.shared;
    if !(ctx.registry.is_synced()
        && ctx.secrets.is_listed()
        && is_listed(&ctx.namespaces)
        && is_listed(&ctx.client_credentials)
        && is_listed(&ctx.ca_bundles))
    {
        // Until every issuer and every fedid Secret is loaded, "not found" and "absent" would
        // be lies: check again shortly, write nothing. (Never wait here: a reconciler holding
        // its slot would keep the controller from polling the very watch that fills the cache.)
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Tokens and status carry whole seconds; so does every decision.
    let now = whole_seconds(shared.now());
    let uid = identity.uid().unwrap_or_default();
    let recorded = [
        identity.status.as_ref().and_then(next_exchange_attempt),
        ctx.backoffs.get(&uid),
    ];
    if let Some(wait) = exchange_backoff_pending(&recorded, identity.meta().generation, now) {
        // A failed exchange's backoff (or Retry-After) outlasts any trigger: no request yet.
        return Ok(Action::requeue(wait));
    }
    shared.metrics.count_reconcile("identity");
    let mut attempt = None;
    let mut rollout = None;
    let result = match run_pipeline(&identity, &ctx, now, &mut attempt).await {
        Ok(Passed::Template { issuer }) => {
            return report_template(&identity, &ctx, &issuer, now).await;
        }
        Ok(Passed::Issued { issued, digest }) => {
            rollout = Some(roll_out(shared, &identity, &digest, now).await);
            Ok(issued)
        }
        Err(error) if revokes(error.reason()) => Err(revoke(&identity, &ctx, error).await),
        Err(error) => Err(error),
    };
    let outcome: Outcome<'_> = match &result {
        Ok(issued) => Ok(issued),
        Err(error) => Err(error),
    };
    report(&identity, &ctx, outcome, attempt.as_ref(), rollout, now).await
}

/// What a successful pass of the pipeline produced.
enum Passed {
    /// The identity's token is in its Secret, whose contents have digest `digest`.
    Issued {
        /// What the Secret holds.
        issued: Issued,
        /// The digest of the Secret's contents (the rollout phase restarts on a new one).
        digest: String,
    },
    /// The identity is a valid pod template: its pods get their own tokens.
    Template {
        /// The issuer that signs them.
        issuer: String,
    },
}

/// The phases up to apply; the result is what report publishes, with the exchange request
/// this pass sent (if any) in `attempt`.
async fn run_pipeline(
    identity: &FederatedIdentity,
    ctx: &IdentityContext,
    now: Timestamp,
    attempt: &mut Option<ExchangeAttempt>,
) -> Result<Passed, IdentityError> {
    let settings = &ctx.shared.settings;
    let fetched = fetch(identity, ctx)?;
    let config = fetched
        .issuer
        .config
        .as_ref()
        .map_err(|unusable| unusable_issuer(&fetched.issuer, unusable))?;
    let validated = validate(
        identity,
        &fetched.issuer.resource,
        config,
        fetched.namespace_labels.as_ref(),
        settings.min_token_lifetime,
    )?;
    if identity.spec.pods.is_some() {
        // A pod template writes no Secret of its own: the pod controller binds it to pods. A
        // shared token written before it became a template is removed, not left valid.
        if let Some(existing) = ctx
            .secrets
            .current(&validated.namespace, &validated.secret_name)
            .filter(|secret| ownership(Some(secret), &validated.uid) == Ownership::Ours)
        {
            delete_own_secret(&ctx.shared, &existing).await?;
        }
        return Ok(Passed::Template {
            issuer: validated.issuer,
        });
    }
    let margin = signed(settings.renew_before_expiry);
    let published = fetched.issuer.published_kids(now);
    let existing = ctx
        .secrets
        .current(&validated.namespace, &validated.secret_name);
    let (reason, secret_exists) =
        match plan(&validated, existing.as_deref(), &published, now, margin)? {
            Plan::Keep(issued) => {
                return Ok(Passed::Issued {
                    issued,
                    digest: existing
                        .as_deref()
                        .map(credentials_digest)
                        .unwrap_or_default(),
                });
            }
            Plan::Issue {
                reason,
                secret_exists,
            } => (reason, secret_exists),
        };
    let minted = mint_on_blocking_pool(&ctx.shared, &fetched.issuer, &validated, now).await?;
    let priority = if reason.is_first_issue(secret_exists) {
        Priority::FirstIssue
    } else {
        Priority::Refresh
    };
    let credentials = exchange(ctx, &fetched.issuer, &validated, minted, priority, attempt).await?;
    let secret = render_secret(&validated, &credentials)?;
    let written = apply(
        &ctx.shared,
        secret,
        existing.as_deref().filter(|_| secret_exists),
    )
    .await?;
    let digest = credentials_digest(&written);
    ctx.secrets.recent_writes.remember(written);
    Ok(Passed::Issued {
        issued: Issued::written(&validated, &credentials, reason, margin),
        digest,
    })
}

/// Deletes the token Secret of an identity that lost its right to one (`cause`), if it owns
/// one, and returns `cause` to report; a failed delete is reported instead, and retried.
async fn revoke(
    identity: &FederatedIdentity,
    ctx: &IdentityContext,
    cause: IdentityError,
) -> IdentityError {
    let name = identity.name_any();
    let secret_name = identity
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| default_secret_name(&name));
    let namespace = identity.namespace().unwrap_or_default();
    let uid = identity.uid().unwrap_or_default();
    let Some(existing) = ctx
        .secrets
        .current(&namespace, &secret_name)
        .filter(|secret| ownership(Some(secret), &uid) == Ownership::Ours)
    else {
        return cause;
    };
    match delete_own_secret(&ctx.shared, &existing).await {
        Ok(()) => {
            warn!(secret = %secret_name, reason = %cause.reason(), "revoked: deleted the token Secret");
            cause
        }
        Err(error) => IdentityError::Apply(error),
    }
}

/// Deletes a Secret fedid controls (that very object: the delete is conditional on its UID).
pub(crate) async fn delete_own_secret(ctx: &Context, secret: &Secret) -> Result<(), ApplyError> {
    let name = secret.name_any();
    let api =
        Api::<Secret>::namespaced(ctx.client.clone(), &secret.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            info!(secret = %name, "deleted a Secret fedid no longer keeps");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(source) => Err(ApplyError::WriteSecret {
            secret: name,
            source,
        }),
    }
}

/// Report for a valid pod template: Ready with `PodTemplate`, written when it changed.
async fn report_template(
    identity: &FederatedIdentity,
    identity_ctx: &IdentityContext,
    issuer: &str,
    now: Timestamp,
) -> Result<Action, ReportError> {
    let ctx = identity_ctx.shared.as_ref();
    let previous = identity_ctx.recent_statuses.freshest(identity);
    let (status, event) = template_report(
        &identity.name_any(),
        issuer,
        identity.meta().generation,
        &previous,
        now,
    );
    if status != previous {
        let written = write_status(identity, ctx, &status).await?;
        identity_ctx.recent_statuses.remember(&written);
    }
    if let Some(event) = event {
        ctx.publish(&identity.object_ref(&()), event).await;
    }
    Ok(Action::requeue(fedid_core::reason::RECHECK_INTERVAL))
}

/// Fetch, from caches only: the issuer from the registry, and the namespace's labels (from the
/// namespace metadata cache) only when the issuer's policy needs them to decide.
pub(crate) fn fetch(
    identity: &FederatedIdentity,
    ctx: &IdentityContext,
) -> Result<Fetched, FetchError> {
    fetch_from_caches(identity, &ctx.registry, &ctx.namespaces)
}

/// [`fetch`] from the given caches (the pod server keeps its own).
pub(crate) fn fetch_from_caches(
    identity: &FederatedIdentity,
    registry: &IssuerRegistry,
    namespaces: &Store<PartialObjectMeta<Namespace>>,
) -> Result<Fetched, FetchError> {
    let issuer = resolve_issuer(registry, identity.spec.issuer_ref.as_deref())?;
    if let Some(conflict) = registry.url_conflict(&issuer) {
        // Its documents are not the ones served at its URL: its tokens would not verify.
        return Err(unusable_issuer(&issuer, &conflict));
    }
    let namespace = identity.namespace().unwrap_or_default();
    let namespace_labels = issuer.resource.needs_namespace_labels(&namespace).then(|| {
        namespaces
            .get(&ObjectRef::new(&namespace))
            .and_then(|cached| cached.metadata.labels.clone())
            .unwrap_or_default()
    });
    Ok(Fetched {
        issuer,
        namespace_labels,
    })
}

/// Finds the identity's issuer: the one named, or the default.
fn resolve_issuer(
    registry: &IssuerRegistry,
    issuer_ref: Option<&str>,
) -> Result<Arc<LoadedIssuer>, FetchError> {
    match issuer_ref {
        Some(name) => registry
            .get(name)
            .ok_or_else(|| FetchError::IssuerNotFound {
                name: name.to_owned(),
            }),
        None => Ok(registry.default_issuer()?),
    }
}

pub(crate) fn unusable_issuer(issuer: &LoadedIssuer, unusable: &Unusable) -> FetchError {
    FetchError::IssuerNotReady {
        issuer: issuer.name(),
        source: unusable.clone(),
    }
}

/// Mint, on the blocking pool (RSA signing must not stall the reconcilers).
pub(crate) async fn mint_on_blocking_pool(
    ctx: &Context,
    issuer: &LoadedIssuer,
    validated: &ValidatedIdentity,
    now: Timestamp,
) -> Result<Minted, MintError> {
    let signer = issuer.signer(now).ok_or_else(|| MintError::NoSigningKey {
        issuer: validated.issuer.clone(),
    })?;
    let jti = new_token_id();
    let validated = validated.clone();
    let started = std::time::Instant::now();
    let minted = tokio::task::spawn_blocking(move || mint(&validated, &signer, now, &jti))
        .await
        .map_err(|join| MintError::Interrupted(join.to_string()))?;
    ctx.metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    minted
}

/// Signs a `privateKeyJWT` client assertion at the time it is sent, on the blocking pool,
/// with the key that signs the issuer's tokens now.
async fn sign_assertion_on_blocking_pool(
    ctx: &Context,
    issuer: &LoadedIssuer,
    identity: &ValidatedIdentity,
    assertion: &ClientAssertion,
) -> Result<String, MintError> {
    let now = whole_seconds(ctx.now());
    let signer = issuer.signer(now).ok_or_else(|| MintError::NoSigningKey {
        issuer: identity.issuer.clone(),
    })?;
    let jti = new_token_id();
    let assertion = assertion.clone();
    let started = std::time::Instant::now();
    let signed =
        tokio::task::spawn_blocking(move || sign_client_assertion(&assertion, &signer, now, &jti))
            .await
            .map_err(|join| MintError::Interrupted(join.to_string()))?;
    ctx.metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    signed
}

/// Exchange: without `spec.exchange` the credentials are the token itself. Otherwise the
/// client secret (from the labelled-Secret cache only), the request the core builds, one POST
/// within the host's budget, and the core's verdict on the reply, which `attempt` records.
pub(crate) async fn exchange(
    ctx: &IdentityContext,
    issuer: &LoadedIssuer,
    identity: &ValidatedIdentity,
    token: Minted,
    priority: Priority,
    attempt: &mut Option<ExchangeAttempt>,
) -> Result<Credentials, IdentityError> {
    let Some(exchange) = &identity.exchange else {
        return Ok(without_exchange(token));
    };
    let secret = exchange
        .client_secret
        .as_ref()
        .map(|reference| client_secret(&ctx.client_credentials, &identity.namespace, reference))
        .transpose()?;
    let ca_bundle = match (&exchange.spec.ca_bundle, &exchange.spec.ca_bundle_ref) {
        (Some(pem), _) => Some(pem.clone()),
        (None, Some(reference)) => {
            Some(ca_bundle(&ctx.ca_bundles, &identity.namespace, reference)?)
        }
        (None, None) => None,
    };
    // The core decides whether a reply calls for another request (GCP impersonation); it
    // never asks for more than `Stage::MAX_REQUESTS`.
    let mut next: Option<ExchangeRequest> = None;
    let mut host = exchange.endpoint.host().to_owned();
    for _ in 0..Stage::MAX_REQUESTS {
        let reservation = ctx.exchanger.reserve(&host, priority).await;
        let request = match next.take() {
            Some(request) => request,
            None => {
                // Signed only now that the budget lets it go: an assertion lives 60 s.
                let client = match (&secret, &exchange.client_assertion) {
                    (Some(secret), _) => Some(ClientCredential::Secret(secret.clone())),
                    (None, Some(assertion)) => Some(ClientCredential::Assertion(
                        sign_assertion_on_blocking_pool(&ctx.shared, issuer, identity, assertion)
                            .await?,
                    )),
                    (None, None) => None,
                };
                build_request(
                    exchange,
                    &token,
                    client.as_ref(),
                    Requester {
                        namespace: &identity.namespace,
                        name: &identity.name,
                    },
                )
            }
        };
        let reply = ctx
            .exchanger
            .send(
                reservation,
                &request,
                exchange.timeout,
                ca_bundle.as_deref(),
            )
            .await?;
        // Lifetimes in the reply count from its arrival.
        let received = whole_seconds(ctx.shared.now());
        let result = parse_reply(exchange, &token, request.stage, &reply, received);
        let outcome = match &result {
            Ok(Step::Next(_)) => Reason::Exchanged,
            Ok(Step::Done(exchanged)) => {
                *attempt = Some(ExchangeAttempt::succeeded(exchanged));
                Reason::Exchanged
            }
            Err(error) => {
                *attempt = ExchangeAttempt::failed(error);
                error.reason()
            }
        };
        ctx.shared
            .metrics
            .exchange_requests
            .get_or_create(&ExchangeLabels {
                kind: exchange.kind.as_str().to_owned(),
                host: request.host.clone(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        match result? {
            Step::Done(exchanged) => {
                return Ok(Credentials {
                    token,
                    exchanged: Some(exchanged),
                });
            }
            Step::Next(request) => {
                host.clone_from(&request.host);
                next = Some(request);
            }
        }
    }
    Err(ExchangeError::Malformed {
        host,
        status: 200,
        what: "the replies asked for more requests than an exchange sends",
    }
    .into())
}

/// The PEM bundle `reference` names, from the cache of ConfigMaps labelled
/// `fedid.dev/ca-bundle: "true"` in `namespace`.
fn ca_bundle(
    labelled: &Store<ConfigMap>,
    namespace: &str,
    reference: &ConfigMapKeyRef,
) -> Result<String, ExchangeError> {
    labelled
        .get(&ObjectRef::new(&reference.name).within(namespace))
        .filter(|config_map| {
            config_map
                .labels()
                .get(CA_BUNDLE_LABEL)
                .is_some_and(|value| value == "true")
        })
        .and_then(|config_map| config_map.data.as_ref()?.get(&reference.key).cloned())
        .ok_or_else(|| ExchangeError::CaBundleNotFound {
            namespace: namespace.to_owned(),
            config_map: reference.name.clone(),
            key: reference.key.clone(),
        })
}

/// The client secret `reference` names, from the cache of Secrets labelled
/// `fedid.dev/client-credentials: "true"` in `namespace`; trailing line breaks are dropped.
fn client_secret(
    labelled: &Store<Secret>,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<String, ExchangeError> {
    let not_allowed = || ExchangeError::ClientSecretNotAllowed {
        namespace: namespace.to_owned(),
        secret: reference.name.clone(),
    };
    let secret = labelled
        .get(&ObjectRef::new(&reference.name).within(namespace))
        .ok_or_else(not_allowed)?;
    let labelled_for_fedid = secret
        .labels()
        .get(CLIENT_CREDENTIALS_LABEL)
        .is_some_and(|value| value == "true");
    if !labelled_for_fedid {
        return Err(not_allowed());
    }
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .and_then(|value| client_secret_value(&value.0))
        .ok_or_else(|| ExchangeError::ClientSecretKeyMissing {
            secret: reference.name.clone(),
            key: reference.key.clone(),
        })
}

/// Apply: creates the Secret, or server-side-applies it when it is already ours (`existing`,
/// as fedid last saw it), then removes what the core finds left over from an earlier render. A
/// create that finds an existing Secret (one fedid cannot see: not ours) is a conflict, never a
/// takeover.
pub(crate) async fn apply(
    ctx: &Context,
    secret: Secret,
    existing: Option<&Secret>,
) -> Result<Secret, ApplyError> {
    let name = secret.name_any();
    let namespace = secret.namespace().unwrap_or_default();
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let exists = existing.is_some();
    let written = if let Some(existing) = existing {
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await;
        match (applied, leftover_entries(existing, &secret)) {
            (Ok(_), Some(leftovers)) => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                api.patch(&name, &params, &Patch::Merge(&leftovers)).await
            }
            (applied, _) => applied,
        }
    } else {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        api.create(&params, &secret).await
    };
    written.map_err(|source| match source {
        kube::Error::Api(status) if !exists && status.code == 409 => {
            ApplyError::Conflict(PlanError::SecretConflict { secret: name })
        }
        source => ApplyError::WriteSecret {
            secret: name,
            source,
        },
    })
}

/// Report: the status (written only when it changed), the Event of a transition, metrics and
/// logs, and when to come back.
async fn report(
    identity: &FederatedIdentity,
    identity_ctx: &IdentityContext,
    outcome: Outcome<'_>,
    attempt: Option<&ExchangeAttempt>,
    rollout: Option<RolloutOutcome>,
    now: Timestamp,
) -> Result<Action, ReportError> {
    let ctx = identity_ctx.shared.as_ref();
    let previous = identity_ctx.recent_statuses.freshest(identity);
    let uid = identity.uid().unwrap_or_default();
    let generation = identity.meta().generation;
    let (mut status, mut delay) = decide_report(&uid, generation, &previous, outcome, attempt, now);
    let rollout = rollout.map(|rollout| report_rollout(&mut status, rollout, generation, now));
    if let Some(requeue) = rollout.as_ref().and_then(|report| report.requeue) {
        delay = delay.min(requeue.max(Duration::from_secs(1)));
    }
    if attempt.is_some() {
        identity_ctx
            .backoffs
            .set(&uid, next_exchange_attempt(&status), now);
    }
    if status != previous {
        let written = write_status(identity, ctx, &status).await?;
        identity_ctx.recent_statuses.remember(&written);
    }
    if let Some(event) = transition_event(&previous, &status, outcome) {
        ctx.publish(&identity.object_ref(&()), event).await;
    }
    if let Some(event) = rollout.and_then(|report| report.event) {
        ctx.publish(&identity.object_ref(&()), event).await;
    }
    match outcome {
        Ok(issued) => match issued.written {
            Some(reason) => {
                let labels = IssuerLabels {
                    issuer: issued.issuer.clone(),
                };
                ctx.metrics.tokens_issued.get_or_create(&labels).inc();
                if status.last_lapse_time != previous.last_lapse_time {
                    ctx.metrics.token_lapses.get_or_create(&labels).inc();
                }
                info!(
                    issuer = %issued.issuer, kid = %issued.key_id, reason = reason.as_str(),
                    expires_at = %issued.expires_at, renew_at = %issued.renew_at,
                    "wrote a new token"
                );
            }
            None => debug!(renew_at = %issued.renew_at, "token still valid"),
        },
        Err(failure) => {
            ctx.metrics.count_failure("identity", failure.reason());
            warn!(reason = %failure.reason(), error = %message_chain(failure), "no fresh token");
        }
    }
    Ok(Action::requeue(delay))
}

/// Server-side-applies the status fields fedid owns; returns the identity as written.
async fn write_status(
    identity: &FederatedIdentity,
    ctx: &Context,
    status: &FederatedIdentityStatus,
) -> Result<FederatedIdentity, ReportError> {
    let namespace = identity.namespace().ok_or(ReportError::MissingNamespace)?;
    let api = Api::<FederatedIdentity>::namespaced(ctx.client.clone(), &namespace);
    apply_status(&api, &identity.name_any(), status)
        .await
        .map_err(ReportError::WriteStatus)
}

/// Called when [`reconcile`] itself fails (the status could not be written): retry with
/// backoff.
pub fn error_policy(
    identity: Arc<FederatedIdentity>,
    error: &ReportError,
    ctx: Arc<IdentityContext>,
) -> Action {
    ctx.shared.metrics.count_failure("identity", error.reason());
    warn!(
        namespace = identity.namespace(), name = %identity.name_any(),
        error = %message_chain(error), "reconcile failed"
    );
    let attempts = identity
        .status
        .as_ref()
        .map_or(0, |status| status.failed_attempts)
        .saturating_add(1);
    Action::requeue(fedid_core::timing::backoff(attempts, 0.0))
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// A fresh `jti`: 128 random bits, hex.
fn new_token_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Request-level checks against a mock apiserver: every request fedid makes is asserted,
/// in order, and anything unexpected fails the test.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::collections::BTreeMap;

    use http::{Method, StatusCode};
    use kube::runtime::{reflector, watcher};
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        fixtures::{
            self,
            apiserver::{MockHandle, assert_no_request, body_json, mock_client, next, respond},
        },
        runtime::metrics::Metrics,
    };
    use fedid_core::issuer::keys::KeyRing;

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
        serde_json::from_value(identity_json()).expect("an identity")
    }

    /// A context whose issuer `ci` (the default, signing with `ring`) allows `team-a`, with
    /// the given cached Secrets.
    fn context(ring: &KeyRing, cached: Vec<Secret>) -> (Arc<IdentityContext>, MockHandle) {
        context_with_policy(ring, cached, json!({"names": [TEAM]}), BTreeMap::new())
    }

    /// A context whose issuer `ci` has the namespace policy `allowed`, and whose namespace cache
    /// holds `team-a` with `labels`.
    fn context_with_policy(
        ring: &KeyRing,
        cached: Vec<Secret>,
        allowed: Value,
        labels: BTreeMap<String, String>,
    ) -> (Arc<IdentityContext>, MockHandle) {
        let (client, handle) = mock_client();
        let mut issuer = fixtures::issuer(
            "ci",
            json!({
                "issuerURL": "https://fedid.example.com/ci",
                "allowedNamespaces": allowed,
            }),
        );
        issuer
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("fedid.dev/default-issuer".into(), "true".into());
        let registry = fixtures::registry(vec![(issuer, Some(ring.clone()))]);
        let settings = fixtures::settings();
        let (secrets, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for secret in cached {
            writer.apply_watcher_event(&watcher::Event::InitApply(secret));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let shared = Arc::new(Context::new(
            client,
            Arc::new(Metrics::default()),
            settings,
            None,
        ));
        let (namespaces, mut namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let mut team = PartialObjectMeta::<Namespace>::default();
        team.metadata.name = Some(TEAM.into());
        team.metadata.labels = Some(labels);
        namespace_writer.apply_watcher_event(&watcher::Event::Init);
        namespace_writer.apply_watcher_event(&watcher::Event::InitApply(team));
        namespace_writer.apply_watcher_event(&watcher::Event::InitDone);
        let (client_credentials, mut credentials_writer) = reflector::store::<Secret>();
        credentials_writer.apply_watcher_event(&watcher::Event::Init);
        credentials_writer.apply_watcher_event(&watcher::Event::InitDone);
        let (ca_bundles, mut ca_bundles_writer) = reflector::store::<ConfigMap>();
        ca_bundles_writer.apply_watcher_event(&watcher::Event::Init);
        ca_bundles_writer.apply_watcher_event(&watcher::Event::InitDone);
        let exchanger = Arc::new(Exchanger::new(100.0, 100, 100, shared.metrics.clone()));
        let ctx = IdentityContext {
            shared,
            registry,
            secrets: OwnSecrets::new(secrets),
            namespaces,
            client_credentials,
            ca_bundles,
            exchanger,
            backoffs: ExchangeBackoffs::default(),
            recent_statuses: RecentStatuses::default(),
        };
        (Arc::new(ctx), handle)
    }

    /// Answers the report phase: the status patch, whose `status` is returned, then the Event.
    async fn answer_report(handle: &mut MockHandle) -> Value {
        let (request, send) = next(handle).await;
        assert_eq!(request.method(), Method::PATCH, "the report's status write");
        let status = body_json(request).await["status"].clone();
        send.send_response(respond(StatusCode::OK, &identity_json()));
        let (_event, send) = next(handle).await;
        send.send_response(respond(StatusCode::OK, &json!({})));
        status
    }

    #[test]
    fn a_services_retry_after_survives_the_phase_wrapper() {
        let error = IdentityError::from(ExchangeError::Unavailable {
            host: "sts.example.com".into(),
            detail: "HTTP 429".into(),
            code: None,
            retry_after: Some(Duration::from_secs(30)),
        });
        assert_eq!(error.reason(), Reason::ExchangeUnavailable);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
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
            let status = answer_report(&mut handle).await;
            (secret, status)
        });
        reconcile(Arc::new(identity()), ctx)
            .await
            .expect("first pass");
        let (secret, status) = server.await.expect("the first pass was served");

        // A restarted operator: the Secret is in its cache, the status on the object.
        let secret: Secret = serde_json::from_value(secret).expect("a Secret");
        let (ctx, mut handle) = context(&ring, vec![secret]);
        let mut current = identity();
        current.status = Some(serde_json::from_value(status).expect("a status"));
        let pass = tokio::spawn(reconcile(Arc::new(current), ctx));
        // A still-valid token and an unchanged status must cause no request at all.
        assert_no_request(&mut handle).await;
        let action = pass.await.expect("joins").expect("second pass");
        // It comes back at the renewal time, 2/3 of the default 1h lifetime ±10%.
        let renew_in = (1..=3600)
            .map(Duration::from_secs)
            .find(|delay| action == Action::requeue(*delay))
            .expect("a requeue at the renewal time");
        assert!((2160..=2640).contains(&renew_in.as_secs()), "{renew_in:?}");
    }

    #[tokio::test]
    async fn a_pass_whose_cache_lags_behind_the_status_it_wrote_writes_nothing_again() {
        // First pass: create the Secret, then write the status; the apiserver answers with the
        // object at resourceVersion 6.
        let ring = fixtures::ring();
        let (ctx, mut handle) = context(&ring, Vec::new());
        let server = tokio::spawn(async move {
            let (request, send) = next(&mut handle).await;
            let mut secret = body_json(request).await;
            secret["metadata"]["resourceVersion"] = json!("5");
            send.send_response(respond(StatusCode::CREATED, &secret));
            let (request, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::PATCH, "the report's status write");
            let mut written = identity_json();
            written["metadata"]["resourceVersion"] = json!("6");
            written["status"] = body_json(request).await["status"].clone();
            send.send_response(respond(StatusCode::OK, &written));
            let (_event, send) = next(&mut handle).await;
            send.send_response(respond(StatusCode::OK, &json!({})));
            handle
        });
        let mut stale = identity();
        stale.metadata.resource_version = Some("4".into());
        reconcile(Arc::new(stale.clone()), ctx.clone())
            .await
            .expect("first pass");
        let mut handle = server.await.expect("the first pass was served");

        // The Secret's watch event triggers a pass before the status write reached the cache:
        // the object still has no status, yet neither the status nor the Event is sent again.
        let pass = tokio::spawn(reconcile(Arc::new(stale), ctx.clone()));
        assert_no_request(&mut handle).await;
        pass.await.expect("joins").expect("second pass");

        // Once the cache has caught up, a status that changed since (another writer cleared
        // it) is the cache's to decide, and fedid restores its own.
        let mut cleared = identity();
        cleared.metadata.resource_version = Some("7".into());
        let pass = tokio::spawn(reconcile(Arc::new(cleared), ctx));
        let (request, send) = next(&mut handle).await;
        assert_eq!(
            request.method(),
            Method::PATCH,
            "the status is written again"
        );
        send.send_response(respond(StatusCode::OK, &identity_json()));
        let (_event, send) = next(&mut handle).await;
        send.send_response(respond(StatusCode::OK, &json!({})));
        pass.await.expect("joins").expect("third pass");
    }

    #[tokio::test]
    async fn a_selector_policy_is_decided_from_the_namespace_cache_without_a_read() {
        let selector = json!({"selector": {"matchLabels": {"fedid.dev/ci": "enabled"}}});
        // Labels that do not match: refused, and nothing is read or written but the report.
        let (ctx, mut handle) = context_with_policy(
            &fixtures::ring(),
            Vec::new(),
            selector.clone(),
            BTreeMap::new(),
        );
        let server = tokio::spawn(async move {
            let status = answer_report(&mut handle).await;
            assert_eq!(status["conditions"][0]["reason"], "NamespaceNotAllowed");
            handle
        });
        reconcile(Arc::new(identity()), ctx)
            .await
            .expect("reconciles");
        let mut handle = server
            .await
            .expect("the mock apiserver saw what it expected");
        assert_no_request(&mut handle).await;

        // Matching labels in the cache: the first request is the Secret's creation.
        let labels = BTreeMap::from([("fedid.dev/ci".to_owned(), "enabled".to_owned())]);
        let (ctx, mut handle) =
            context_with_policy(&fixtures::ring(), Vec::new(), selector, labels);
        let server = tokio::spawn(async move {
            let (request, send) = next(&mut handle).await;
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::POST, "/api/v1/namespaces/team-a/secrets")
            );
            let secret = body_json(request).await;
            send.send_response(respond(StatusCode::CREATED, &secret));
            let status = answer_report(&mut handle).await;
            assert_eq!(status["conditions"][0]["reason"], "Issued");
            handle
        });
        reconcile(Arc::new(identity()), ctx)
            .await
            .expect("reconciles");
        let mut handle = server
            .await
            .expect("the mock apiserver saw what it expected");
        assert_no_request(&mut handle).await;
    }
}
