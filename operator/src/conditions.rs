//! Status conditions: types, reasons, and updates that keep `lastTransitionTime` stable.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::timestamps::whole_seconds;

/// The condition type both resources report.
pub const READY: &str = "Ready";

/// Reasons of a FederatedIdentity's `Ready` condition.
pub mod identity_reasons {
    /// A valid token is in the Secret.
    pub const ISSUED: &str = "Issued";
    /// The spec cannot be served (claims, audiences, lifetime, Secret name).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The referenced (or default) IdentityIssuer does not exist.
    pub const ISSUER_NOT_FOUND: &str = "IssuerNotFound";
    /// The IdentityIssuer exists but cannot sign yet.
    pub const ISSUER_NOT_READY: &str = "IssuerNotReady";
    /// The IdentityIssuer does not allow the identity's namespace.
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    /// The target Secret exists and belongs to someone else.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// Signing the token failed.
    pub const SIGNING_FAILED: &str = "SigningFailed";
    /// A Kubernetes API call failed.
    pub const API_ERROR: &str = "ApiError";
}

/// Reasons of an IdentityIssuer's `Ready` condition.
pub mod issuer_reasons {
    /// A signing key is active and the JWKS is published.
    pub const KEYS_READY: &str = "KeysReady";
    /// The spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The key ring Secret exists but fedid cannot use it (foreign owner or corrupt content).
    pub const KEY_STORE_CONFLICT: &str = "KeyStoreConflict";
    /// A Kubernetes API call failed.
    pub const API_ERROR: &str = "ApiError";
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known whether the condition holds.
    Unknown,
}

impl ConditionStatus {
    /// The string used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The desired state of one condition, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Condition type, for example [`READY`].
    pub type_: &'static str,
    /// Whether the condition holds.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The object generation the update was computed from.
    pub observed_generation: Option<i64>,
}

/// The `Ready` condition among `conditions`, if there is one.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|condition| condition.type_ == READY)
}

/// The `Ready` condition's status and reason: what an Event-worthy transition changes.
pub fn ready_state(conditions: &[Condition]) -> Option<(&str, &str)> {
    ready_condition(conditions)
        .map(|condition| (condition.status.as_str(), condition.reason.as_str()))
}

/// Inserts or replaces the condition of `update.type_`. `lastTransitionTime` is set to `now`
/// (whole seconds) when the condition is new or its status changes, and kept otherwise.
/// Returns whether anything changed, so callers can skip writing an unchanged status.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    now: Timestamp,
) -> bool {
    let status = update.status.as_str();
    let existing = conditions
        .iter()
        .position(|condition| condition.type_ == update.type_);
    let last_transition_time = match existing.and_then(|index| conditions.get(index)) {
        Some(current) if current.status == status => current.last_transition_time.clone(),
        _ => Time(whole_seconds(now)),
    };
    let condition = Condition {
        type_: update.type_.to_owned(),
        status: status.to_owned(),
        reason: update.reason.to_owned(),
        message: update.message,
        observed_generation: update.observed_generation,
        last_transition_time,
    };
    match existing.and_then(|index| conditions.get_mut(index)) {
        Some(current) if *current == condition => false,
        Some(current) => {
            *current = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// The `Ready` condition of an identity whose Secret holds a valid token. (Failures map to
/// their condition through the reconciler's typed errors, each with its own reason.)
pub fn identity_issued_condition(
    secret_name: &str,
    expires_at: Timestamp,
    observed_generation: Option<i64>,
) -> ConditionUpdate {
    ConditionUpdate {
        type_: READY,
        status: ConditionStatus::True,
        reason: identity_reasons::ISSUED,
        message: format!(
            "token in Secret {secret_name} is valid until {}",
            whole_seconds(expires_at)
        ),
        observed_generation,
    }
}

/// The outcome of reconciling an IdentityIssuer, as far as its `Ready` condition is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerOutcome {
    /// A key signs and the JWKS is served.
    KeysReady {
        /// Key ID of the signing key.
        active_key_id: String,
        /// Number of keys in the JWKS.
        published_keys: usize,
    },
    /// The spec is invalid.
    InvalidSpec {
        /// The validation error.
        message: String,
    },
    /// The key ring Secret cannot be used.
    KeyStoreConflict {
        /// Explanation naming the Secret.
        message: String,
    },
    /// A Kubernetes API call failed.
    ApiError {
        /// The error.
        message: String,
    },
}

/// The `Ready` condition for an issuer outcome.
pub fn issuer_ready_condition(
    outcome: &IssuerOutcome,
    observed_generation: Option<i64>,
) -> ConditionUpdate {
    use issuer_reasons as reasons;
    let (status, reason, message) = match outcome {
        IssuerOutcome::KeysReady {
            active_key_id,
            published_keys,
        } => (
            ConditionStatus::True,
            reasons::KEYS_READY,
            format!("key {active_key_id} signs tokens; {published_keys} key(s) published"),
        ),
        IssuerOutcome::InvalidSpec { message } => (
            ConditionStatus::False,
            reasons::INVALID_SPEC,
            message.clone(),
        ),
        IssuerOutcome::KeyStoreConflict { message } => (
            ConditionStatus::False,
            reasons::KEY_STORE_CONFLICT,
            message.clone(),
        ),
        IssuerOutcome::ApiError { message } => (
            ConditionStatus::Unknown,
            reasons::API_ERROR,
            message.clone(),
        ),
    };
    ConditionUpdate {
        type_: READY,
        status,
        reason,
        message,
        observed_generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn update(status: ConditionStatus, reason: &'static str, message: &str) -> ConditionUpdate {
        ConditionUpdate {
            type_: READY,
            status,
            reason,
            message: message.to_owned(),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn adds_a_new_condition_with_the_current_time() {
        let mut conditions = Vec::new();
        let precise = at(100)
            .checked_add(jiff::SignedDuration::from_millis(400))
            .expect("in range");
        assert!(set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "ok"),
            precise
        ));
        assert_eq!(
            conditions,
            vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Issued".into(),
                message: "ok".into(),
                observed_generation: Some(1),
                last_transition_time: Time(at(100)),
            }]
        );
    }

    #[test]
    fn keeps_the_transition_time_while_the_status_is_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "a"),
            at(100),
        );
        assert!(!set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "a"),
            at(200)
        ));
        assert!(set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "b"),
            at(300)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "b");
        assert_eq!(conditions[0].last_transition_time, Time(at(100)));
    }

    #[test]
    fn status_change_moves_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "a"),
            at(100),
        );
        assert!(set_condition(
            &mut conditions,
            update(ConditionStatus::False, "SigningFailed", "boom"),
            at(500)
        ));
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].reason, "SigningFailed");
        assert_eq!(conditions[0].last_transition_time, Time(at(500)));
    }

    #[test]
    fn other_condition_types_are_left_alone() {
        let other = Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(at(1)),
        };
        let mut conditions = vec![other.clone()];
        set_condition(
            &mut conditions,
            update(ConditionStatus::True, "Issued", "a"),
            at(100),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0], other);
    }

    #[test]
    fn issued_identity_is_ready_with_the_expiry() {
        let condition = identity_issued_condition("web-token", at(1_800_003_600), Some(4));
        assert_eq!(condition.type_, READY);
        assert_eq!(condition.status, ConditionStatus::True);
        assert_eq!(condition.reason, "Issued");
        assert_eq!(
            condition.message,
            "token in Secret web-token is valid until 2027-01-15T09:00:00Z"
        );
        assert_eq!(condition.observed_generation, Some(4));
    }

    #[test]
    fn issuer_outcomes_map_to_documented_reasons() {
        let ready = issuer_ready_condition(
            &IssuerOutcome::KeysReady {
                active_key_id: "k1".into(),
                published_keys: 2,
            },
            Some(7),
        );
        assert_eq!(
            (ready.status, ready.reason, ready.message.as_str()),
            (
                ConditionStatus::True,
                "KeysReady",
                "key k1 signs tokens; 2 key(s) published"
            )
        );
        for (outcome, status, reason) in [
            (
                IssuerOutcome::InvalidSpec {
                    message: "m".into(),
                },
                ConditionStatus::False,
                "InvalidSpec",
            ),
            (
                IssuerOutcome::KeyStoreConflict {
                    message: "m".into(),
                },
                ConditionStatus::False,
                "KeyStoreConflict",
            ),
            (
                IssuerOutcome::ApiError {
                    message: "m".into(),
                },
                ConditionStatus::Unknown,
                "ApiError",
            ),
        ] {
            let condition = issuer_ready_condition(&outcome, None);
            assert_eq!((condition.status, condition.reason), (status, reason));
            assert_eq!(condition.message, "m");
        }
    }
}
