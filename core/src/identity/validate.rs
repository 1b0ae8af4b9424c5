//! The validate phase: a FederatedIdentity checked once against its issuer, with every default
//! resolved, into a [`ValidatedIdentity`] that the later phases trust without checking again.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube_core::{Resource, ResourceExt};

use crate::{
    claims::{ClaimTemplate, ClaimsError, ClaimsInput},
    crd::{
        Duration, FederatedIdentity, FederatedIdentitySpec, IdentityIssuer,
        identity::{default_secret_name, is_dns_subdomain},
    },
    exchange::{ExchangeError, ValidatedExchange},
    identity::template::{OutputTemplates, TemplateError},
    issuer::config::IssuerConfig,
    label_selector::SelectorError,
    reason::{Failure, Reason, Retry},
};

/// Why a FederatedIdentity's spec cannot be served by its issuer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentitySpecError {
    /// The claims, audiences or subject are invalid.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// The requested lifetime is below the operator's minimum.
    #[error("lifetime {lifetime} is shorter than the minimum of {minimum}")]
    LifetimeTooShort {
        /// The requested lifetime.
        lifetime: Duration,
        /// The operator's minimum token lifetime.
        minimum: Duration,
    },
    /// The requested lifetime exceeds the issuer's maximum.
    #[error("lifetime {lifetime} is longer than the issuer's maximum of {maximum}")]
    LifetimeTooLong {
        /// The requested lifetime.
        lifetime: Duration,
        /// The issuer's `tokenLifetime.maximum`.
        maximum: Duration,
    },
    /// The (possibly defaulted) Secret name is not a DNS-1123 subdomain.
    #[error(
        "secret name {name:?} is not a valid DNS-1123 subdomain (lowercase letters, digits, \
         '-' and '.', at most 253 characters){hint}",
        hint = if *defaulted { "; it is the identity's name plus \"-token\": set spec.secretName" } else { "" }
    )]
    InvalidSecretName {
        /// The offending name.
        name: String,
        /// Whether the name is the default (`<identity>-token`) rather than `spec.secretName`.
        defaulted: bool,
    },
}

impl IdentitySpecError {
    /// Stable, machine-readable name of this error kind, usable as a condition reason or
    /// metric label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Claims(error) => error.reason(),
            Self::LifetimeTooShort { .. } => Reason::LifetimeTooShort,
            Self::LifetimeTooLong { .. } => Reason::LifetimeTooLong,
            Self::InvalidSecretName { .. } => Reason::InvalidSecretName,
        }
    }
}

/// A FederatedIdentity spec checked against its issuer, with every default resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedSpec {
    /// Token lifetime: the spec's, or the issuer's default.
    pub lifetime: Duration,
    /// Name of the output Secret: the spec's, or `<name>-token`.
    pub secret_name: String,
    /// The claims every token of the identity carries, `sub` rendered.
    pub claims: ClaimTemplate,
}

/// Checks the spec of identity `namespace`/`name` against `issuer`: claims, audiences, subject,
/// lifetime (at least `min_lifetime`, normally
/// [`MIN_TOKEN_LIFETIME`](crate::crd::issuer::MIN_TOKEN_LIFETIME), and at most the
/// issuer's maximum; defaults to the issuer's default) and Secret name (defaults to
/// `<name>-token`).
pub fn validate_identity_spec(
    spec: &FederatedIdentitySpec,
    namespace: &str,
    name: &str,
    issuer: &IssuerConfig,
    min_lifetime: std::time::Duration,
) -> Result<ValidatedSpec, IdentitySpecError> {
    let lifetime = spec.lifetime.unwrap_or(issuer.default_lifetime);
    // A pod template is checked with a stand-in pod: each pod's own claims are rendered when
    // it is bound to one (in the pod domain).
    let sample_pod = spec.pods.as_ref().map(crate::ci::sample_binding);
    let claims = ClaimTemplate::build(&ClaimsInput {
        issuer_url: issuer.issuer_url.as_str(),
        subject_template: &issuer.subject_template,
        issuer_claims: &issuer.claims,
        namespace,
        name,
        identity_claims: &spec.claims,
        audiences: &spec.audiences,
        lifetime,
        pod: sample_pod.as_ref(),
    })?;
    if lifetime.to_std() < min_lifetime {
        return Err(IdentitySpecError::LifetimeTooShort {
            lifetime,
            minimum: Duration::from_std_saturating(min_lifetime),
        });
    }
    if lifetime > issuer.maximum_lifetime {
        return Err(IdentitySpecError::LifetimeTooLong {
            lifetime,
            maximum: issuer.maximum_lifetime,
        });
    }
    let secret_name = spec
        .secret_name
        .clone()
        .unwrap_or_else(|| default_secret_name(name));
    if !is_dns_subdomain(&secret_name) {
        return Err(IdentitySpecError::InvalidSecretName {
            name: secret_name,
            defaulted: spec.secret_name.is_none(),
        });
    }
    Ok(ValidatedSpec {
        lifetime,
        secret_name,
        claims,
    })
}

/// Why the validate phase rejects an identity.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValidateError {
    /// The object lacks metadata every stored object has.
    #[error("FederatedIdentity has no {0}")]
    MissingMetadata(&'static str),
    /// The issuer's policy does not allow the identity's namespace.
    #[error("IdentityIssuer {issuer} does not allow namespace {namespace}")]
    NamespaceNotAllowed {
        /// Issuer name.
        issuer: String,
        /// The identity's namespace.
        namespace: String,
    },
    /// The issuer's namespace selector cannot be evaluated.
    #[error("IdentityIssuer {issuer} is not ready: its namespace selector is invalid")]
    InvalidNamespaceSelector {
        /// Issuer name.
        issuer: String,
        /// What is wrong with the selector.
        #[source]
        source: SelectorError,
    },
    /// The spec cannot be served by the issuer.
    #[error(transparent)]
    Spec(#[from] IdentitySpecError),
    /// `spec.exchange` is invalid or not allowed by the issuer.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// An `output.template` entry does not parse or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl Failure for ValidateError {
    fn reason(&self) -> Reason {
        match self {
            Self::MissingMetadata(_) => Reason::MissingMetadata,
            Self::NamespaceNotAllowed { .. } => Reason::NamespaceNotAllowed,
            Self::InvalidNamespaceSelector { .. } => Reason::IssuerNotReady,
            Self::Spec(error) => error.reason(),
            Self::Exchange(error) => error.reason(),
            Self::Template(error) => error.reason(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            // The issuer's fault, as when it cannot sign: keep a valid token Ready meanwhile.
            Self::InvalidNamespaceSelector { .. } => Retry::Backoff,
            _ => Retry::WaitForChange,
        }
    }
}

/// An identity that passed validation: everything the later phases need, checked once.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedIdentity {
    /// Namespace of the identity.
    pub namespace: String,
    /// Name of the identity.
    pub name: String,
    /// UID of the identity (seeds the renewal jitter; owns the Secret).
    pub uid: String,
    /// The controller owner reference the Secret carries.
    pub owner: OwnerReference,
    /// Name of the issuer that signs.
    pub issuer: String,
    /// Name of the output Secret.
    pub secret_name: String,
    /// The claims every token carries, and the lifetime.
    pub claims: ClaimTemplate,
    /// The exchange, when the identity has one, allowed by the issuer.
    pub exchange: Option<ValidatedExchange>,
    /// Whether the Secret holds the signed token (`output.includeSubjectToken`).
    pub include_subject_token: bool,
    /// The Secret's type and extra keys (`output.secretType`, `output.template`).
    pub output: OutputTemplates,
    /// The time of the identity's renew request (annotation `fedid.dev/renew-requested-at`):
    /// a token issued before it is replaced.
    pub renew_requested_at: Option<jiff::Timestamp>,
}

/// The validate phase: checks `identity` against its issuer (`resource`, whose spec validated
/// into `config`): metadata, the issuer's namespace policy (given the namespace's labels when
/// [`IdentityIssuer::needs_namespace_labels`] says they decide), then the spec.
pub fn validate(
    identity: &FederatedIdentity,
    issuer: &IdentityIssuer,
    config: &IssuerConfig,
    namespace_labels: Option<&BTreeMap<String, String>>,
    min_lifetime: std::time::Duration,
) -> Result<ValidatedIdentity, ValidateError> {
    let namespace = identity
        .namespace()
        .ok_or(ValidateError::MissingMetadata("namespace"))?;
    let name = identity
        .meta()
        .name
        .clone()
        .ok_or(ValidateError::MissingMetadata("name"))?;
    let uid = identity
        .uid()
        .ok_or(ValidateError::MissingMetadata("uid"))?;
    let owner = identity
        .controller_owner_ref(&())
        .ok_or(ValidateError::MissingMetadata("uid"))?;
    let issuer_name = issuer.name_any();
    let no_labels = BTreeMap::new();
    match issuer.allows_namespace(&namespace, namespace_labels.unwrap_or(&no_labels)) {
        Ok(true) => {}
        Ok(false) => {
            return Err(ValidateError::NamespaceNotAllowed {
                issuer: issuer_name,
                namespace,
            });
        }
        Err(source) => {
            return Err(ValidateError::InvalidNamespaceSelector {
                issuer: issuer_name,
                source,
            });
        }
    }
    let spec = validate_identity_spec(&identity.spec, &namespace, &name, config, min_lifetime)?;
    let exchange = identity
        .spec
        .exchange
        .as_ref()
        .map(|exchange| {
            crate::exchange::validate(
                exchange,
                &issuer_name,
                &namespace,
                issuer.spec.exchange.as_ref(),
            )
        })
        .transpose()?;
    let include_subject_token = identity.spec.includes_subject_token();
    let output = OutputTemplates::parse(identity.spec.output.as_ref())?;
    output.check(
        spec.claims
            .token_claims(jiff::Timestamp::UNIX_EPOCH, "template-check"),
        exchange.as_ref().map(|exchange| exchange.kind),
        include_subject_token,
    )?;
    Ok(ValidatedIdentity {
        namespace,
        name,
        uid,
        owner,
        issuer: issuer_name,
        secret_name: spec.secret_name,
        include_subject_token,
        output,
        claims: spec.claims,
        exchange,
        renew_requested_at: identity.renew_requested_at(),
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::{
        crd::{IdentityIssuerSpec, issuer::MIN_TOKEN_LIFETIME},
        issuer::config::validate_issuer_spec,
    };

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn issuer_config(spec: serde_json::Value) -> IssuerConfig {
        let spec: IdentityIssuerSpec = serde_json::from_value(spec).expect("issuer spec");
        validate_issuer_spec(&spec).expect("valid issuer")
    }

    fn identity_spec(spec: serde_json::Value) -> FederatedIdentitySpec {
        serde_json::from_value(spec).expect("identity spec")
    }

    #[test]
    fn identity_defaults_come_from_the_issuer() {
        let issuer = issuer_config(json!({
            "issuerURL": "https://issuer.example.com",
            "tokenLifetime": {"default": "30m", "maximum": "2h"},
            "claims": [{"name": "cluster", "string": "prod"}],
            "subjectTemplate": "{claims.cluster}:{namespace}:{name}"
        }));
        let validated = validate_identity_spec(
            &identity_spec(json!({"audiences": ["aud"]})),
            "ci",
            "deploy",
            &issuer,
            MIN_TOKEN_LIFETIME.to_std(),
        )
        .expect("valid identity");
        assert_eq!(validated.lifetime, Duration::from_mins(30));
        assert_eq!(validated.secret_name, "deploy-token");
        assert_eq!(validated.claims.subject(), "prod:ci:deploy");
        let claims = validated.claims.token_claims(at(1_800_000_000), "j");
        assert_eq!(claims["sub"], json!("prod:ci:deploy"));
        assert_eq!(claims["aud"], json!("aud"));
        assert_eq!(claims["exp"], json!(1_800_001_800));
        assert_eq!(claims["cluster"], json!("prod"));
    }

    #[test]
    fn identity_lifetime_is_bounded() {
        let issuer = issuer_config(json!({
            "issuerURL": "https://issuer.example.com",
            "tokenLifetime": {"default": "1h", "maximum": "2h"}
        }));
        let validate_with_minimum = |lifetime: &str, minimum: Duration| {
            validate_identity_spec(
                &identity_spec(json!({"audiences": ["a"], "lifetime": lifetime})),
                "ci",
                "web",
                &issuer,
                minimum.to_std(),
            )
        };
        let validate = |lifetime: &str| validate_with_minimum(lifetime, MIN_TOKEN_LIFETIME);
        assert_eq!(
            validate("10m").map(|identity| identity.lifetime),
            Ok(Duration::from_mins(10))
        );
        assert_eq!(
            validate("2h").map(|identity| identity.lifetime),
            Ok(Duration::from_hours(2))
        );
        let short = validate("9m59s").expect_err("too short");
        assert_eq!(short.reason(), "LifetimeTooShort");
        assert_eq!(
            short.to_string(),
            "lifetime 9m59s is shorter than the minimum of 10m"
        );
        // Tests lower the operator's minimum to get quick renewals.
        assert_eq!(
            validate_with_minimum("30s", Duration::from_secs(30)).map(|identity| identity.lifetime),
            Ok(Duration::from_secs(30))
        );
        let long = validate("2h1s").expect_err("too long");
        assert_eq!(long.reason(), "LifetimeTooLong");
        assert_eq!(
            long.to_string(),
            "lifetime 2h1s is longer than the issuer's maximum of 2h"
        );
    }

    #[test]
    fn identity_secret_name_and_claims_are_checked() {
        let issuer = issuer_config(json!({
            "issuerURL": "https://issuer.example.com",
            "claims": [{"name": "cluster", "string": "prod"}]
        }));
        let validate = |spec: serde_json::Value, name: &str| {
            validate_identity_spec(
                &identity_spec(spec),
                "ci",
                name,
                &issuer,
                MIN_TOKEN_LIFETIME.to_std(),
            )
        };
        assert_eq!(
            validate(json!({"audiences": ["a"], "secretName": "aws"}), "web")
                .map(|identity| identity.secret_name),
            Ok("aws".to_owned())
        );
        assert_eq!(
            validate(json!({"audiences": ["a"], "secretName": "Bad_Name"}), "web")
                .map_err(|error| error.reason().as_str()),
            Err("InvalidSecretName")
        );
        let long_name = "a".repeat(250);
        let too_long = validate(json!({"audiences": ["a"]}), &long_name)
            .expect_err("the default Secret name is too long");
        assert_eq!(too_long.reason().as_str(), "InvalidSecretName");
        assert!(
            too_long.to_string().ends_with("set spec.secretName"),
            "{too_long}"
        );
        let bad_explicit = validate(json!({"audiences": ["a"], "secretName": "Bad_Name"}), "web")
            .expect_err("an invalid explicit name");
        assert!(!bad_explicit.to_string().contains("set spec.secretName"));
        assert_eq!(
            validate(
                json!({"audiences": ["a"], "claims": [{"name": "cluster", "string": "dev"}]}),
                "web"
            )
            .map_err(|error| error.reason().as_str()),
            Err("ClaimOverridesIssuer")
        );
        assert_eq!(
            validate(
                json!({"audiences": ["a"], "claims": [{"name": "jti", "string": "x"}]}),
                "web"
            )
            .map_err(|error| error.reason().as_str()),
            Err("ReservedClaim")
        );
    }

    fn resources(allowed: serde_json::Value) -> (FederatedIdentity, IdentityIssuer, IssuerConfig) {
        let issuer: IdentityIssuer = serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer",
            "metadata": {"name": "ci"},
            "spec": {"issuerURL": "https://issuer.example.com", "allowedNamespaces": allowed},
        }))
        .expect("issuer");
        let identity: FederatedIdentity = serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": "deploy", "namespace": "team-a", "uid": "uid-1"},
            "spec": {"audiences": ["aud"]},
        }))
        .expect("identity");
        let config = validate_issuer_spec(&issuer.spec).expect("valid issuer");
        (identity, issuer, config)
    }

    #[test]
    fn the_namespace_policy_decides_with_labels_only_when_a_selector_must() {
        let min = MIN_TOKEN_LIFETIME.to_std();
        let (identity, issuer, config) = resources(json!({"names": ["team-a"]}));
        assert!(!issuer.needs_namespace_labels("team-a"));
        let validated = validate(&identity, &issuer, &config, None, min).expect("allowed by name");
        assert_eq!(validated.owner.uid, "uid-1");
        assert_eq!(validated.issuer, "ci");

        let (identity, issuer, config) =
            resources(json!({"selector": {"matchLabels": {"ci": "yes"}}}));
        assert!(issuer.needs_namespace_labels("team-a"));
        let labels = BTreeMap::from([("ci".to_owned(), "yes".to_owned())]);
        assert!(validate(&identity, &issuer, &config, Some(&labels), min).is_ok());
        let denied = validate(&identity, &issuer, &config, Some(&BTreeMap::new()), min)
            .expect_err("labels do not match");
        assert_eq!(denied.reason(), Reason::NamespaceNotAllowed);
        assert_eq!(denied.retry(), Retry::WaitForChange);
        assert_eq!(
            denied.to_string(),
            "IdentityIssuer ci does not allow namespace team-a"
        );

        let (identity, issuer, config) = resources(json!({}));
        assert_eq!(
            validate(&identity, &issuer, &config, None, min).map_err(|e| e.reason()),
            Err(Reason::NamespaceNotAllowed)
        );
    }

    #[test]
    fn spec_errors_keep_their_own_reason() {
        let (mut identity, issuer, config) = resources(json!({"all": true}));
        identity.spec.lifetime = Some(Duration::from_hours(25));
        let error = validate(
            &identity,
            &issuer,
            &config,
            None,
            MIN_TOKEN_LIFETIME.to_std(),
        )
        .expect_err("too long");
        assert_eq!(error.reason(), Reason::LifetimeTooLong);
        assert_eq!(error.retry(), Retry::WaitForChange);
        identity.metadata.uid = None;
        assert_eq!(
            validate(
                &identity,
                &issuer,
                &config,
                None,
                MIN_TOKEN_LIFETIME.to_std()
            )
            .map_err(|e| e.reason()),
            Err(Reason::MissingMetadata)
        );
    }
}
