//! Static claims that an issuer or an identity adds to every token.

use crate::reason::Reason;
use kube_derive::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Claim names that fedid sets itself; neither issuers nor identities may set them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "namespace",
    "identity",
    "pod",
    "pod_uid",
    "service_account",
];

/// Longest accepted claim name.
pub const MAX_CLAIM_NAME_LENGTH: usize = 64;

/// Longest accepted string claim value.
pub const MAX_CLAIM_STRING_LENGTH: usize = 1024;

/// Most claims an issuer or an identity may list.
pub const MAX_CLAIMS: usize = 32;

/// A named claim with exactly one value: a string, a boolean or an integer.
///
/// Relying parties match on these values in their trust policies, for example
/// `{"name": "repository", "string": "acme/web"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("(has(self.string) ? 1 : 0) + (has(self.boolean) ? 1 : 0) + (has(self.integer) ? 1 : 0) == 1")
        .message("exactly one of string, boolean, integer must be set"),
    validation = Rule::new("!(self.name in ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'namespace', 'identity', 'pod', 'pod_uid', 'service_account'])")
        .message("claim name is reserved: iss, sub, aud, exp, nbf, iat, jti, namespace, identity, pod, pod_uid and service_account are set by fedid")
)]
pub struct Claim {
    /// Claim name as it appears in the token: 1 to 64 characters, starting with a letter or
    /// underscore, followed by letters, digits and `_ . : / -`. The names iss, sub, aud, exp,
    /// nbf, iat, jti, namespace, identity, pod, pod_uid and service_account are reserved.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
    )]
    pub name: String,

    /// String value of the claim (at most 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub string: Option<String>,

    /// Boolean value of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,

    /// Integer value of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
}

/// Why a single claim is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The name does not match the allowed pattern or length.
    #[error(
        "claim name {name:?} is invalid: use 1 to 64 characters, starting with a letter or \
         underscore, followed by letters, digits and _ . : / -"
    )]
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// The name is one fedid sets itself.
    #[error(
        "claim name {name:?} is reserved: iss, sub, aud, exp, nbf, iat, jti, namespace, \
         identity, pod, pod_uid and service_account are set by fedid"
    )]
    Reserved {
        /// The offending name.
        name: String,
    },
    /// Zero or several of string, boolean, integer are set.
    #[error("claim {name:?} must set exactly one of string, boolean, integer")]
    ValueCount {
        /// The offending claim's name.
        name: String,
    },
    /// The string value is too long.
    #[error("claim {name:?} has a string value longer than 1024 characters")]
    ValueTooLong {
        /// The offending claim's name.
        name: String,
    },
}

impl ClaimError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidName { .. } => Reason::InvalidClaimName,
            Self::Reserved { .. } => Reason::ReservedClaim,
            Self::ValueCount { .. } | Self::ValueTooLong { .. } => Reason::InvalidClaimValue,
        }
    }
}

impl Claim {
    /// A claim with a string value.
    pub fn string(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            string: Some(value.into()),
            boolean: None,
            integer: None,
        }
    }

    /// A claim with a boolean value.
    pub fn boolean(name: impl Into<String>, value: bool) -> Self {
        Self {
            name: name.into(),
            string: None,
            boolean: Some(value),
            integer: None,
        }
    }

    /// A claim with an integer value.
    pub fn integer(name: impl Into<String>, value: i64) -> Self {
        Self {
            name: name.into(),
            string: None,
            boolean: None,
            integer: Some(value),
        }
    }

    /// Checks the same rules the apiserver enforces through the CRD schema, plus the value
    /// length, and returns the claim's JSON value.
    pub fn validated_value(&self) -> Result<Value, ClaimError> {
        if !is_valid_claim_name(&self.name) {
            return Err(ClaimError::InvalidName {
                name: self.name.clone(),
            });
        }
        if is_reserved_claim(&self.name) {
            return Err(ClaimError::Reserved {
                name: self.name.clone(),
            });
        }
        match (&self.string, self.boolean, self.integer) {
            (Some(text), None, None) if text.chars().count() > MAX_CLAIM_STRING_LENGTH => {
                Err(ClaimError::ValueTooLong {
                    name: self.name.clone(),
                })
            }
            (Some(text), None, None) => Ok(Value::String(text.clone())),
            (None, Some(flag), None) => Ok(Value::Bool(flag)),
            (None, None, Some(number)) => Ok(Value::from(number)),
            _ => Err(ClaimError::ValueCount {
                name: self.name.clone(),
            }),
        }
    }

    /// The value as it is substituted into a subject template: strings verbatim, booleans as
    /// `true`/`false`, integers in decimal. `None` when the claim does not have exactly one
    /// value.
    pub fn value_text(&self) -> Option<String> {
        match (&self.string, self.boolean, self.integer) {
            (Some(text), None, None) => Some(text.clone()),
            (None, Some(flag), None) => Some(flag.to_string()),
            (None, None, Some(number)) => Some(number.to_string()),
            _ => None,
        }
    }
}

/// Whether `name` is one of [`RESERVED_CLAIMS`].
pub fn is_reserved_claim(name: &str) -> bool {
    RESERVED_CLAIMS.contains(&name)
}

/// Whether `name` matches `^[A-Za-z_][A-Za-z0-9_.:/-]*$` and is at most 64 characters long.
pub fn is_valid_claim_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_CLAIM_NAME_LENGTH
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_value_kind_becomes_the_matching_json_type() {
        assert_eq!(
            Claim::string("repository", "acme/web").validated_value(),
            Ok(json!("acme/web"))
        );
        assert_eq!(
            Claim::boolean("protected", true).validated_value(),
            Ok(json!(true))
        );
        assert_eq!(
            Claim::integer("build", -42).validated_value(),
            Ok(json!(-42))
        );
    }

    #[test]
    fn reserved_names_are_rejected() {
        for name in RESERVED_CLAIMS {
            let error = Claim::string(*name, "x")
                .validated_value()
                .expect_err("reserved name must be rejected");
            assert_eq!(error.reason(), "ReservedClaim");
            assert!(error.to_string().contains("reserved"), "{error}");
        }
        // Only exact matches are reserved.
        assert!(Claim::string("issuer", "x").validated_value().is_ok());
        assert!(Claim::string("ISS", "x").validated_value().is_ok());
    }

    #[test]
    fn exactly_one_value_is_required() {
        let none = Claim {
            name: "empty".into(),
            string: None,
            boolean: None,
            integer: None,
        };
        let two = Claim {
            integer: Some(1),
            ..Claim::string("two", "x")
        };
        for claim in [none, two] {
            let error = claim.validated_value().expect_err("must be rejected");
            assert_eq!(error.reason(), "InvalidClaimValue");
            assert_eq!(claim.value_text(), None);
        }
    }

    #[test]
    fn names_follow_the_schema_pattern() {
        for good in [
            "a",
            "_x",
            "repo_property.team",
            "ci:job/id-1",
            &"a".repeat(64),
        ] {
            assert!(is_valid_claim_name(good), "{good}");
        }
        for bad in ["", "1abc", "-a", "a b", "ä", "a?", &"a".repeat(65)] {
            assert!(!is_valid_claim_name(bad), "{bad}");
            let error = Claim::string(bad, "x")
                .validated_value()
                .expect_err("invalid name");
            assert_eq!(error.reason(), "InvalidClaimName");
        }
    }

    #[test]
    fn long_string_values_are_rejected() {
        let at_limit = Claim::string("v", "x".repeat(MAX_CLAIM_STRING_LENGTH));
        assert!(at_limit.validated_value().is_ok());
        let over = Claim::string("v", "x".repeat(MAX_CLAIM_STRING_LENGTH + 1));
        assert_eq!(
            over.validated_value()
                .map_err(|error| error.reason().as_str()),
            Err("InvalidClaimValue")
        );
    }

    #[test]
    fn value_text_renders_every_kind() {
        assert_eq!(
            Claim::string("a", "x:y").value_text().as_deref(),
            Some("x:y")
        );
        assert_eq!(
            Claim::boolean("a", false).value_text().as_deref(),
            Some("false")
        );
        assert_eq!(Claim::integer("a", 7).value_text().as_deref(), Some("7"));
    }

    #[test]
    fn serde_omits_unset_values() {
        let claim = Claim::integer("build", 3);
        assert_eq!(
            serde_json::to_value(&claim).expect("serializes"),
            json!({"name": "build", "integer": 3})
        );
        let parsed: Claim =
            serde_json::from_value(json!({"name": "env", "string": "prod"})).expect("parses");
        assert_eq!(parsed, Claim::string("env", "prod"));
    }
}
