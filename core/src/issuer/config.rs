//! Validation of an IdentityIssuer spec into the settings the operator works with.
//!
//! The CRD schema's CEL rules reject most mistakes at apply time; this module repeats those
//! checks (objects may predate a schema change) and adds the ones CEL cannot express, such as
//! the exact issuer URL form and the bound on the number of published keys.

use crate::reason::Reason;
use std::collections::BTreeMap;

use crate::{
    claims::{ClaimsError, SubjectTemplate, check_claim_list},
    crd::{
        Claim, Duration, IdentityIssuerSpec,
        issuer::{DEFAULT_SUBJECT_TEMPLATE, MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME},
    },
    issuer::discovery::{IssuerUrl, IssuerUrlError, cache_max_age},
    issuer::keys::RotationPolicy,
    label_selector::{SelectorError, selector_matches},
};

/// Most keys an issuer may need to publish at once in steady state: the signing key, one
/// pending key, and the retired keys whose tokens may still be valid. Keeps the key ring
/// Secret and the JWKS small.
pub const MAX_PUBLISHED_KEYS: u64 = 16;

/// Why an IdentityIssuer spec is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerSpecError {
    /// `issuerURL` is malformed.
    #[error(transparent)]
    IssuerUrl(#[from] IssuerUrlError),
    /// The static claims or the subject template are invalid.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// `allowedNamespaces.selector` is malformed.
    #[error(transparent)]
    NamespaceSelector(#[from] SelectorError),
    /// `tokenLifetime.default` is below the minimum.
    #[error("tokenLifetime.default {lifetime} is shorter than the minimum of 10m")]
    DefaultLifetimeTooShort {
        /// The configured default.
        lifetime: Duration,
    },
    /// `tokenLifetime.maximum` is above the maximum.
    #[error("tokenLifetime.maximum {lifetime} is longer than the limit of 24h")]
    MaximumLifetimeTooLong {
        /// The configured maximum.
        lifetime: Duration,
    },
    /// `tokenLifetime.default` exceeds `tokenLifetime.maximum`.
    #[error("tokenLifetime.default {default} is longer than tokenLifetime.maximum {maximum}")]
    DefaultAboveMaximum {
        /// The configured default.
        default: Duration,
        /// The configured maximum.
        maximum: Duration,
    },
    /// `signing.rotationPeriod` is not longer than `signing.prepublishPeriod`.
    #[error(
        "signing.rotationPeriod {rotation} must be longer than signing.prepublishPeriod \
         {prepublish}"
    )]
    RotationWithinPrepublish {
        /// The configured rotation period.
        rotation: Duration,
        /// The configured prepublish period.
        prepublish: Duration,
    },
    /// Rotation is so frequent that too many keys would be published at once.
    #[error(
        "signing.rotationPeriod {rotation} is too short: retired keys stay published for \
         tokenLifetime.maximum plus signing.retirementMargin ({retention}), so up to {keys} keys \
         would be published at once (at most 16 are allowed); rotate less often or lower the \
         maximum lifetime or the retirement margin"
    )]
    TooManyPublishedKeys {
        /// The configured rotation period.
        rotation: Duration,
        /// How long retired keys stay published.
        retention: Duration,
        /// Keys that would be published at once.
        keys: u64,
    },
}

impl IssuerSpecError {
    /// Stable, machine-readable name of this error kind, usable as a condition reason or
    /// metric label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::IssuerUrl(error) => error.reason(),
            Self::Claims(error) => error.reason(),
            Self::NamespaceSelector(error) => error.reason(),
            Self::DefaultLifetimeTooShort { .. } => Reason::DefaultLifetimeTooShort,
            Self::MaximumLifetimeTooLong { .. } => Reason::MaximumLifetimeTooLong,
            Self::DefaultAboveMaximum { .. } => Reason::DefaultLifetimeAboveMaximum,
            Self::RotationWithinPrepublish { .. } => Reason::RotationWithinPrepublish,
            Self::TooManyPublishedKeys { .. } => Reason::TooManyPublishedKeys,
        }
    }
}

impl crate::reason::Failure for IssuerSpecError {
    fn reason(&self) -> Reason {
        IssuerSpecError::reason(self)
    }

    /// An invalid spec stays invalid until it is edited.
    fn retry(&self) -> crate::reason::Retry {
        crate::reason::Retry::WaitForChange
    }
}

/// A validated IdentityIssuer spec with every default resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The issuer URL and `iss` claim.
    pub issuer_url: IssuerUrl,
    /// Key algorithm and rotation timing.
    pub rotation: RotationPolicy,
    /// Lifetime of tokens whose identity sets none.
    pub default_lifetime: Duration,
    /// Longest lifetime an identity may request.
    pub maximum_lifetime: Duration,
    /// Static claims added to every token.
    pub claims: Vec<Claim>,
    /// Template of the `sub` claim.
    pub subject_template: SubjectTemplate,
}

impl IssuerConfig {
    /// `Cache-Control: max-age` for the issuer's JWKS and discovery document.
    pub fn cache_max_age(&self) -> std::time::Duration {
        cache_max_age(self.rotation.prepublish_period.unsigned_abs())
    }

    /// Names of the issuer's static claims, for `claims_supported`.
    pub fn claim_names(&self) -> Vec<&str> {
        self.claims
            .iter()
            .map(|claim| claim.name.as_str())
            .collect()
    }
}

/// Which of the issuers whose URLs share one path serves it (fedid serves discovery and JWKS
/// by path, whatever the host): the one created first, the lowest name breaking a tie; the
/// others report `URLConflict`. `issuers` are (name, creation time) pairs.
pub fn path_owner<'a>(
    issuers: impl IntoIterator<Item = (&'a str, Option<jiff::Timestamp>)>,
) -> Option<&'a str> {
    issuers
        .into_iter()
        .min_by_key(|(name, created)| (created.is_none(), *created, *name))
        .map(|(name, _)| name)
}

/// Validates `spec` and resolves its defaults.
pub fn validate_issuer_spec(spec: &IdentityIssuerSpec) -> Result<IssuerConfig, IssuerSpecError> {
    let issuer_url = IssuerUrl::parse(&spec.issuer_url)?;

    check_claim_list(&spec.claims)?;
    let subject_template = SubjectTemplate::parse(
        spec.subject_template
            .as_deref()
            .unwrap_or(DEFAULT_SUBJECT_TEMPLATE),
    )?;

    if let Some(selector) = spec
        .allowed_namespaces
        .as_ref()
        .and_then(|allowed| allowed.selector.as_ref())
    {
        // Evaluating against no labels checks every requirement's syntax.
        selector_matches(selector, &BTreeMap::new())?;
    }

    let lifetime = &spec.token_lifetime;
    if lifetime.default < MIN_TOKEN_LIFETIME {
        return Err(IssuerSpecError::DefaultLifetimeTooShort {
            lifetime: lifetime.default,
        });
    }
    if lifetime.maximum > MAX_TOKEN_LIFETIME {
        return Err(IssuerSpecError::MaximumLifetimeTooLong {
            lifetime: lifetime.maximum,
        });
    }
    if lifetime.default > lifetime.maximum {
        return Err(IssuerSpecError::DefaultAboveMaximum {
            default: lifetime.default,
            maximum: lifetime.maximum,
        });
    }

    let signing = &spec.signing;
    if signing.rotation_period <= signing.prepublish_period {
        return Err(IssuerSpecError::RotationWithinPrepublish {
            rotation: signing.rotation_period,
            prepublish: signing.prepublish_period,
        });
    }
    let retention = Duration::from_secs(
        lifetime
            .maximum
            .as_secs()
            .saturating_add(signing.retirement_margin.as_secs()),
    );
    // Signing key + pending key + every key retired within the retention window.
    let rotation_seconds = u64::from(signing.rotation_period.as_secs()).max(1);
    let keys = 2 + u64::from(retention.as_secs()).div_ceil(rotation_seconds);
    if keys > MAX_PUBLISHED_KEYS {
        return Err(IssuerSpecError::TooManyPublishedKeys {
            rotation: signing.rotation_period,
            retention,
            keys,
        });
    }

    Ok(IssuerConfig {
        issuer_url,
        rotation: RotationPolicy {
            algorithm: signing.algorithm,
            rotation_period: signing.rotation_period.to_signed(),
            prepublish_period: signing.prepublish_period.to_signed(),
            max_token_lifetime: lifetime.maximum.to_signed(),
            retirement_margin: signing.retirement_margin.to_signed(),
        },
        default_lifetime: lifetime.default,
        maximum_lifetime: lifetime.maximum,
        claims: spec.claims.clone(),
        subject_template,
    })
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn the_issuer_created_first_owns_a_shared_path() {
        let at = |second| Some(jiff::Timestamp::from_second(second).expect("valid"));
        assert_eq!(path_owner([]), None);
        assert_eq!(
            path_owner([("new", at(200)), ("old", at(100))]),
            Some("old")
        );
        // Created in the same second: the name decides, whatever the order they are seen in.
        assert_eq!(path_owner([("b", at(100)), ("a", at(100))]), Some("a"));
        assert_eq!(path_owner([("a", at(100)), ("b", at(100))]), Some("a"));
        // An object without a creation time (never stored) loses.
        assert_eq!(
            path_owner([("unsaved", None), ("stored", at(300))]),
            Some("stored")
        );
    }
    use crate::crd::SigningAlgorithm;

    fn validate(extra: Value) -> Result<IssuerConfig, IssuerSpecError> {
        let mut spec = json!({"issuerURL": "https://issuer.example.com"});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let spec: IdentityIssuerSpec = serde_json::from_value(spec).expect("spec parses");
        validate_issuer_spec(&spec)
    }

    fn reason(extra: Value) -> Result<(), &'static str> {
        validate(extra)
            .map(|_| ())
            .map_err(|error| error.reason().as_str())
    }

    #[test]
    fn defaults_resolve_to_the_documented_policy() {
        let config = validate(json!({})).expect("minimal spec is valid");
        assert_eq!(config.issuer_url.as_str(), "https://issuer.example.com");
        assert_eq!(
            config.rotation,
            RotationPolicy {
                algorithm: SigningAlgorithm::RS256,
                rotation_period: SignedDuration::from_hours(720),
                prepublish_period: SignedDuration::from_hours(2),
                max_token_lifetime: SignedDuration::from_hours(24),
                retirement_margin: SignedDuration::from_hours(1),
            }
        );
        assert_eq!(config.default_lifetime, Duration::from_hours(1));
        assert_eq!(config.maximum_lifetime, Duration::from_hours(24));
        assert_eq!(config.subject_template.as_str(), DEFAULT_SUBJECT_TEMPLATE);
        assert_eq!(config.cache_max_age(), std::time::Duration::from_secs(3600));
        assert!(config.claim_names().is_empty());
    }

    #[test]
    fn quick_rotation_for_tests_is_allowed_with_short_lifetimes() {
        let config = validate(json!({
            "signing": {
                "algorithm": "ES256",
                "rotationPeriod": "1m",
                "prepublishPeriod": "0s",
                "retirementMargin": "0s"
            },
            "tokenLifetime": {"default": "10m", "maximum": "10m"},
            "claims": [{"name": "cluster", "string": "kind"}]
        }))
        .expect("valid");
        assert_eq!(config.rotation.algorithm, SigningAlgorithm::ES256);
        assert_eq!(config.cache_max_age(), std::time::Duration::ZERO);
        assert_eq!(config.claim_names(), ["cluster"]);
    }

    #[test]
    fn rejects_invalid_urls_claims_and_templates() {
        assert_eq!(
            reason(json!({"issuerURL": "http://issuer.example.com"})),
            Err("IssuerURLNotHTTPS")
        );
        assert_eq!(
            reason(json!({"claims": [{"name": "aud", "string": "x"}]})),
            Err("ReservedClaim")
        );
        assert_eq!(
            reason(json!({"claims": [
                {"name": "a", "string": "x"}, {"name": "a", "integer": 1}
            ]})),
            Err("DuplicateClaim")
        );
        assert_eq!(
            reason(json!({"subjectTemplate": "{namespace}:{uid}"})),
            Err("InvalidSubjectTemplate")
        );
        assert_eq!(
            reason(json!({"allowedNamespaces": {"selector": {
                "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]
            }}})),
            Err("UnknownSelectorOperator")
        );
    }

    #[test]
    fn rejects_lifetimes_outside_the_bounds() {
        assert_eq!(
            reason(json!({"tokenLifetime": {"default": "9m"}})),
            Err("DefaultLifetimeTooShort")
        );
        assert_eq!(
            reason(json!({"tokenLifetime": {"maximum": "24h1s"}})),
            Err("MaximumLifetimeTooLong")
        );
        let error = validate(json!({"tokenLifetime": {"default": "3h", "maximum": "2h"}}))
            .expect_err("default above maximum");
        assert_eq!(
            error.to_string(),
            "tokenLifetime.default 3h is longer than tokenLifetime.maximum 2h"
        );
        assert_eq!(
            reason(json!({"tokenLifetime": {"default": "24h", "maximum": "24h"}})),
            Ok(())
        );
    }

    #[test]
    fn rejects_rotation_schedules_that_cannot_work() {
        assert_eq!(
            reason(json!({"signing": {"rotationPeriod": "2h", "prepublishPeriod": "2h"}})),
            Err("RotationWithinPrepublish")
        );
        // 25h retention / 1h rotation = 25 retired keys, plus signing and pending.
        let error =
            validate(json!({"signing": {"rotationPeriod": "1h", "prepublishPeriod": "30m"}}))
                .expect_err("too many keys");
        assert_eq!(error.reason(), "TooManyPublishedKeys");
        assert!(error.to_string().contains("up to 27 keys"), "{error}");
        // 25h / 2h = 13 (rounded up) + 2 = 15 keys.
        assert_eq!(
            reason(json!({"signing": {"rotationPeriod": "2h", "prepublishPeriod": "30m"}})),
            Ok(())
        );
    }
}
