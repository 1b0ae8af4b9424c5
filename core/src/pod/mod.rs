//! Per-pod tokens: a FederatedIdentity with `spec.pods` as the template, and a CI job pod
//! that opted in with the `fedid.dev/identity` label.
//!
//! [`bind`] turns the validated identity into the pod's own [`ValidatedIdentity`] (the pod's
//! binding claims and CI claims, its Secret, owned by the pod), which the identity pipeline's
//! plan, mint, exchange and render phases then take unchanged. [`mutate`] decides what the
//! admission webhook adds to a pod; [`token_request`] decides the pull endpoint's answers.

pub mod mutate;
pub mod token_request;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};

pub use crate::ci::{MissingPodClaim, ci_claims};
use crate::{
    claims::{ClaimTemplate, ClaimsError, ClaimsInput, PodBinding},
    crd::{
        FederatedIdentitySpec,
        pods::{POD_IDENTITY_LABEL, POD_SECRET_ANNOTATION, PodsSpec},
    },
    identity::validate::ValidatedIdentity,
    issuer::config::IssuerConfig,
    reason::{Failure, Reason, Retry},
};

/// The service account a pod runs as when its spec names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A pod's lifecycle, as far as its token is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodLifecycle {
    /// Pending or Running: its token is kept fresh.
    Live,
    /// Succeeded or Failed: its Secret is deleted and never refreshed again.
    Finished,
    /// Being deleted: garbage collection removes the Secret with it.
    Terminating,
}

/// Where `pod` is in its life.
pub fn lifecycle(pod: &Pod) -> PodLifecycle {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodLifecycle::Terminating;
    }
    match pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
    {
        Some("Succeeded" | "Failed") => PodLifecycle::Finished,
        _ => PodLifecycle::Live,
    }
}

/// The FederatedIdentity a pod opted into: the value of its `fedid.dev/identity` label.
pub fn identity_name(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(POD_IDENTITY_LABEL)
        .map(String::as_str)
        .filter(|name| !name.is_empty())
}

/// The service account `pod` runs as.
pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
}

/// Why a pod gets no token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PodError {
    /// The pod lacks metadata every stored pod has.
    #[error("Pod has no {0}")]
    MissingMetadata(&'static str),
    /// The identity the label names does not exist.
    #[error("FederatedIdentity {namespace}/{name} does not exist")]
    IdentityNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// The label's value.
        name: String,
    },
    /// The identity is not a pod template.
    #[error("FederatedIdentity {name} has no spec.pods: it does not issue per-pod tokens")]
    PodsNotEnabled {
        /// Identity name.
        name: String,
    },
    /// The pod's service account may not use the identity.
    #[error(
        "service account {service_account} may not use FederatedIdentity {identity}: \
         spec.pods.serviceAccounts allows {allowed}"
    )]
    ServiceAccountNotAllowed {
        /// The pod's service account.
        service_account: String,
        /// Identity name.
        identity: String,
        /// The allowed accounts, comma-separated.
        allowed: String,
    },
    /// A required label or annotation is missing.
    #[error(transparent)]
    MissingPodClaim(#[from] MissingPodClaim),
    /// The pod was not injected by the webhook.
    #[error(
        "Pod has no {POD_SECRET_ANNOTATION} annotation: it was created without fedid's \
         webhook; recreate it"
    )]
    NotInjected,
    /// The claims with the pod's values are invalid.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
}

impl Failure for PodError {
    fn reason(&self) -> Reason {
        match self {
            Self::MissingMetadata(_) => Reason::MissingMetadata,
            Self::IdentityNotFound { .. } => Reason::IdentityNotFound,
            Self::PodsNotEnabled { .. } => Reason::PodsNotEnabled,
            Self::ServiceAccountNotAllowed { .. } => Reason::ServiceAccountNotAllowed,
            Self::MissingPodClaim(_) => Reason::MissingPodClaim,
            Self::NotInjected => Reason::PodNotInjected,
            Self::Claims(error) => error.reason(),
        }
    }

    fn retry(&self) -> Retry {
        Retry::WaitForChange
    }
}

/// Whether `service_account` may use an identity with `pods`.
pub fn allows_service_account(pods: &PodsSpec, service_account: &str) -> bool {
    pods.service_accounts.is_empty()
        || pods
            .service_accounts
            .iter()
            .any(|allowed| allowed == service_account)
}

/// The controller owner reference a pod's Secret carries, so it is garbage-collected with
/// the pod.
pub fn pod_owner(pod: &Pod) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// Binds the validated identity (`validated`, from `spec` and its issuer's `config`) to
/// `pod`: checks the pod may use it, takes its CI claims, renders its claims with the pod's
/// binding, and points the output at the pod's own Secret, owned by the pod.
pub fn bind(
    spec: &FederatedIdentitySpec,
    validated: &ValidatedIdentity,
    config: &IssuerConfig,
    pod: &Pod,
) -> Result<ValidatedIdentity, PodError> {
    bind_with(
        spec,
        validated,
        config,
        pod,
        &spec.audiences,
        validated.claims.lifetime(),
    )
}

/// [`bind`], for a token with other audiences and lifetime than the identity's: the token
/// endpoint's answer to a pod's request.
pub fn bind_with(
    spec: &FederatedIdentitySpec,
    validated: &ValidatedIdentity,
    config: &IssuerConfig,
    pod: &Pod,
    audiences: &[String],
    lifetime: crate::crd::Duration,
) -> Result<ValidatedIdentity, PodError> {
    let pods = spec.pods.as_ref().ok_or_else(|| PodError::PodsNotEnabled {
        name: validated.name.clone(),
    })?;
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or(PodError::MissingMetadata("name"))?;
    let uid = pod
        .metadata
        .uid
        .clone()
        .ok_or(PodError::MissingMetadata("uid"))?;
    let owner = pod_owner(pod).ok_or(PodError::MissingMetadata("uid"))?;
    let service_account = service_account(pod).to_owned();
    if !allows_service_account(pods, &service_account) {
        return Err(PodError::ServiceAccountNotAllowed {
            service_account,
            identity: validated.name.clone(),
            allowed: pods.service_accounts.join(", "),
        });
    }
    let secret_name = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(POD_SECRET_ANNOTATION))
        .filter(|name| crate::crd::identity::is_dns_subdomain(name))
        .cloned()
        .ok_or(PodError::NotInjected)?;
    let binding = PodBinding {
        name,
        uid: uid.clone(),
        service_account,
        ci_claims: ci_claims(pods, pod)?,
    };
    let claims = ClaimTemplate::build(&ClaimsInput {
        issuer_url: config.issuer_url.as_str(),
        subject_template: &config.subject_template,
        issuer_claims: &config.claims,
        namespace: &validated.namespace,
        name: &validated.name,
        identity_claims: &spec.claims,
        audiences,
        lifetime,
        pod: Some(&binding),
    })?;
    Ok(ValidatedIdentity {
        uid,
        owner,
        secret_name,
        claims,
        ..validated.clone()
    })
}

/// The render phase for a pod: the identity's Secret (see
/// [`render_secret`](crate::identity::render::render_secret)) for the pod's token, plus the
/// token endpoint's CA under [`mutate::TOKEN_REQUEST_CA_KEY`] when the pods may request tokens
/// (`pods.allowedAudiences` is not empty) and the endpoint is served.
pub fn render_pod_secret(
    identity: &ValidatedIdentity,
    credentials: &crate::exchange::Credentials,
    pods: &PodsSpec,
    token_request_ca: Option<&str>,
) -> Result<k8s_openapi::api::core::v1::Secret, crate::identity::template::TemplateError> {
    let extra = token_request_ca
        .filter(|_| !pods.allowed_audiences.is_empty())
        .map(|ca| {
            (
                mutate::TOKEN_REQUEST_CA_KEY.to_owned(),
                ca.as_bytes().to_vec(),
            )
        })
        .into_iter()
        .collect();
    crate::identity::render::render_secret_with(identity, credentials, extra)
}

/// What the report phase of a pod pass decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    /// The Event to publish on the pod, if any.
    pub event: Option<crate::conditions::EventNote>,
    /// When to look at the pod again.
    pub requeue: std::time::Duration,
    /// The failure to remember for the next pass (reason, consecutive failures); `None` after
    /// a success.
    pub failure: Option<(Reason, u32)>,
}

/// The report of one pod pass: after a success, an `Issued` Event when the pod got its first
/// token and a requeue at the renewal time; after a failure, a Warning when its reason differs
/// from the `previous` failure's, and a jittered backoff (or the slow recheck for a permanent
/// failure, which a watched change cuts short).
pub fn report(
    uid: &str,
    outcome: Result<&crate::identity::plan::Issued, &dyn Failure>,
    first_issue: bool,
    previous: Option<(Reason, u32)>,
    now: jiff::Timestamp,
) -> PodReport {
    match outcome {
        Ok(issued) => PodReport {
            event: first_issue.then(|| crate::identity::status::issued_event(issued)),
            requeue: crate::timing::until(issued.renew_at, now),
            failure: None,
        },
        Err(failure) => {
            let reason = failure.reason();
            let attempts = previous.map_or(0, |(_, count)| count).saturating_add(1);
            let event = (previous.map(|(last, _)| last) != Some(reason)).then(|| {
                crate::conditions::EventNote {
                    severity: crate::conditions::Severity::Warning,
                    reason,
                    action: "IssueToken",
                    note: crate::reason::message_chain(failure),
                }
            });
            let requeue = match failure.retry() {
                Retry::WaitForChange => crate::reason::RECHECK_INTERVAL,
                Retry::Backoff => crate::timing::backoff(
                    attempts - 1,
                    crate::timing::deterministic_jitter(&format!("{uid}/{attempts}")),
                )
                .max(failure.retry_after().unwrap_or_default()),
            };
            PodReport {
                event,
                requeue,
                failure: Some((reason, attempts)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::{
        crd::{FederatedIdentity, IdentityIssuer, IdentityIssuerSpec, issuer::MIN_TOKEN_LIFETIME},
        identity::validate::validate,
        issuer::config::validate_issuer_spec,
    };

    fn issuer_with(template: &str) -> (IdentityIssuer, IssuerConfig) {
        let spec: IdentityIssuerSpec = serde_json::from_value(json!({
            "issuerURL": "https://issuer.example.com",
            "subjectTemplate": template,
            "allowedNamespaces": {"all": true},
            "claims": [{"name": "cluster", "string": "prod"}]
        }))
        .expect("issuer spec");
        let config = validate_issuer_spec(&spec).expect("valid issuer");
        (IdentityIssuer::new("ci", spec), config)
    }

    fn identity(spec: serde_json::Value) -> FederatedIdentity {
        let mut identity =
            FederatedIdentity::new("deploy", serde_json::from_value(spec).expect("spec"));
        identity.metadata.namespace = Some("team-a".into());
        identity.metadata.uid = Some("identity-uid".into());
        identity
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn build_pod() -> Pod {
        pod(json!({
            "metadata": {
                "name": "build-x1", "namespace": "team-a", "uid": "pod-uid",
                "labels": {"fedid.dev/identity": "deploy", "workflows.argoproj.io/workflow": "release-7"},
                "annotations": {"fedid.dev/secret-name": "deploy-abc", "workflows.argoproj.io/node-name": "release-7.build"}
            },
            "spec": {"serviceAccountName": "argo-runner", "containers": []}
        }))
    }

    fn bound(
        template: &str,
        spec: serde_json::Value,
        pod: &Pod,
    ) -> Result<ValidatedIdentity, PodError> {
        let (issuer, config) = issuer_with(template);
        let identity = identity(spec);
        let validated = validate(
            &identity,
            &issuer,
            &config,
            None,
            MIN_TOKEN_LIFETIME.to_std(),
        )
        .expect("valid template");
        bind(&identity.spec, &validated, &config, pod)
    }

    #[test]
    fn a_pod_token_carries_binding_and_preset_claims_in_a_secret_owned_by_the_pod() {
        let validated = bound(
            "repo:{namespace}:{ci.run_id}:{pod.serviceAccount}",
            json!({"audiences": ["sts.amazonaws.com"], "claims": [{"name": "team", "string": "a"}],
                   "pods": {"preset": "argo-workflows", "serviceAccounts": ["argo-runner"]}}),
            &build_pod(),
        )
        .expect("bound");
        assert_eq!(validated.secret_name, "deploy-abc");
        assert_eq!(validated.uid, "pod-uid");
        assert_eq!(
            (
                validated.owner.kind.as_str(),
                validated.owner.name.as_str(),
                validated.owner.controller
            ),
            ("Pod", "build-x1", Some(true))
        );
        let claims = validated
            .claims
            .token_claims(Timestamp::from_second(1_800_000_000).expect("time"), "j");
        assert_eq!(claims["sub"], "repo:team-a:release-7:argo-runner");
        assert_eq!(claims["pod"], "build-x1");
        assert_eq!(claims["pod_uid"], "pod-uid");
        assert_eq!(claims["service_account"], "argo-runner");
        assert_eq!(claims["run_id"], "release-7");
        assert_eq!(claims["job"], "release-7.build");
        assert_eq!(claims["team"], "a");
        assert_eq!(claims["cluster"], "prod");
        assert_eq!(claims["identity"], "deploy");
    }

    #[test]
    fn pods_that_may_not_use_the_identity_get_no_token() {
        let template = "system:fedid:{namespace}:{name}";
        let spec = json!({"audiences": ["a"], "pods": {"preset": "argo-workflows", "serviceAccounts": ["ci"]}});
        let refused = bound(template, spec, &build_pod()).expect_err("wrong account");
        assert_eq!(refused.reason(), Reason::ServiceAccountNotAllowed);
        assert_eq!(
            refused.to_string(),
            "service account argo-runner may not use FederatedIdentity deploy: spec.pods.serviceAccounts allows ci"
        );

        let mut unlabelled = build_pod();
        unlabelled
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .remove("workflows.argoproj.io/node-name");
        let missing = bound(
            template,
            json!({"audiences": ["a"], "pods": {"preset": "argo-workflows"}}),
            &unlabelled,
        )
        .expect_err("required");
        assert_eq!(missing.reason(), Reason::MissingPodClaim);
        assert_eq!(
            missing.to_string(),
            "claim \"job\" is required but the pod has no annotation \"workflows.argoproj.io/node-name\""
        );

        let mut not_injected = build_pod();
        not_injected
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .remove(POD_SECRET_ANNOTATION);
        let refused = bound(
            template,
            json!({"audiences": ["a"], "pods": {}}),
            &not_injected,
        )
        .expect_err("no annotation");
        assert_eq!(refused.reason(), Reason::PodNotInjected);

        // A pod claim named like a static claim is refused before any pod exists.
        let (issuer, config) = issuer_with(template);
        let clashing = identity(
            json!({"audiences": ["a"], "claims": [{"name": "job", "string": "x"}], "pods": {"preset": "argo-workflows"}}),
        );
        let error = validate(
            &clashing,
            &issuer,
            &config,
            None,
            MIN_TOKEN_LIFETIME.to_std(),
        )
        .expect_err("conflict");
        assert_eq!(
            crate::reason::Failure::reason(&error),
            Reason::PodClaimConflict
        );
    }

    #[test]
    fn pod_placeholders_need_a_pod_template() {
        let (issuer, config) = issuer_with("{pod.name}");
        let plain = identity(json!({"audiences": ["a"]}));
        let error = validate(&plain, &issuer, &config, None, MIN_TOKEN_LIFETIME.to_std())
            .expect_err("no pod");
        assert_eq!(
            crate::reason::Failure::reason(&error),
            Reason::SubjectNeedsPod
        );
        // A ci placeholder no rule yields is caught before any pod exists.
        let (ci_issuer, ci_config) = issuer_with("{ci.nothing}");
        let template = identity(json!({"audiences": ["a"], "pods": {"preset": "tekton"}}));
        let error = validate(
            &template,
            &ci_issuer,
            &ci_config,
            None,
            MIN_TOKEN_LIFETIME.to_std(),
        )
        .expect_err("unknown ci claim");
        assert_eq!(
            crate::reason::Failure::reason(&error),
            Reason::MissingSubjectClaim
        );
    }

    #[test]
    fn optional_claims_are_left_out_and_values_trimmed() {
        let validated = bound(
            "{pod.uid}",
            json!({"audiences": ["a"], "pods": {"claims": [
            {"name": "stage", "fromLabel": "example.com/stage"},
            {"name": "run_id", "fromLabel": "workflows.argoproj.io/workflow"}]}}),
            &build_pod(),
        )
        .expect("bound");
        let claims = validated
            .claims
            .token_claims(Timestamp::from_second(1_800_000_000).expect("time"), "j");
        assert!(claims.get("stage").is_none());
        assert_eq!(claims["run_id"], "release-7");
        assert_eq!(claims["sub"], "pod-uid");
    }

    #[test]
    fn only_pods_that_may_request_tokens_get_the_endpoint_ca() {
        let validated = bound(
            "{pod.uid}",
            json!({"audiences": ["a"], "pods": {}}),
            &build_pod(),
        )
        .expect("bound");
        let minted = crate::credentials::token::Minted {
            jwt: "h.c.s".into(),
            key_id: "k".into(),
            issued_at: Timestamp::from_second(1_800_000_000).expect("time"),
            expires_at: Timestamp::from_second(1_800_003_600).expect("time"),
        };
        let credentials = crate::exchange::without_exchange(minted);
        let keys = |pods: serde_json::Value, ca: Option<&str>| {
            let pods: PodsSpec = serde_json::from_value(pods).expect("pods");
            let secret = render_pod_secret(&validated, &credentials, &pods, ca).expect("renders");
            secret
                .data
                .unwrap_or_default()
                .into_keys()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(json!({}), Some("CA")), ["expires-at", "token"]);
        assert_eq!(
            keys(json!({"allowedAudiences": ["vault"]}), None),
            ["expires-at", "token"]
        );
        assert_eq!(
            keys(json!({"allowedAudiences": ["vault"]}), Some("CA")),
            ["expires-at", "token", "token-request-ca.crt"]
        );
    }

    #[test]
    fn a_pod_report_warns_once_per_reason_and_backs_off() {
        let error = PodError::ServiceAccountNotAllowed {
            service_account: "x".into(),
            identity: "deploy".into(),
            allowed: "ci".into(),
        };
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let first = report("uid", Err(&error), false, None, now);
        assert_eq!(
            first.event.as_ref().map(|event| event.reason),
            Some(Reason::ServiceAccountNotAllowed)
        );
        assert_eq!(first.failure, Some((Reason::ServiceAccountNotAllowed, 1)));
        assert_eq!(first.requeue, crate::reason::RECHECK_INTERVAL);
        let again = report("uid", Err(&error), false, first.failure, now);
        assert_eq!(again.event, None, "the same reason is not announced twice");
        assert_eq!(again.failure, Some((Reason::ServiceAccountNotAllowed, 2)));
        let issued = crate::identity::plan::Issued {
            secret_name: "deploy-abc".into(),
            issuer: "ci".into(),
            key_id: "k".into(),
            issued_at: now,
            expires_at: Timestamp::from_second(1_800_003_600).expect("time"),
            renew_at: Timestamp::from_second(1_800_002_400).expect("time"),
            credentials_expire_at: None,
            written: None,
        };
        let done = report("uid", Ok(&issued), true, again.failure, now);
        assert_eq!(done.event.map(|event| event.reason), Some(Reason::Issued));
        assert_eq!(done.failure, None);
        assert_eq!(done.requeue, std::time::Duration::from_secs(2400));
        assert_eq!(report("uid", Ok(&issued), false, None, now).event, None);
    }

    #[test]
    fn lifecycle_follows_the_phase_and_deletion() {
        let mut pod = build_pod();
        assert_eq!(lifecycle(&pod), PodLifecycle::Live);
        pod.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).expect("status"));
        assert_eq!(lifecycle(&pod), PodLifecycle::Finished);
        pod.status = Some(serde_json::from_value(json!({"phase": "Failed"})).expect("status"));
        assert_eq!(lifecycle(&pod), PodLifecycle::Finished);
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(1).expect("time"),
            ));
        assert_eq!(lifecycle(&pod), PodLifecycle::Terminating);
    }
}
