//! Status conditions: types, reasons, and updates that keep `lastTransitionTime` stable.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{reason::Reason, time::whole_seconds};

/// The condition type both resources report.
pub const READY: &str = "Ready";

/// Type of the condition saying whether the last exchange refreshed the credentials
/// (identities with `spec.exchange` only).
pub const CREDENTIALS_FRESH: &str = "CredentialsFresh";

/// Type of the condition saying whether the `spec.output.rollout` workloads run with the
/// Secret's current contents (identities with `spec.output.rollout` only).
pub const ROLLED_OUT: &str = "RolledOut";

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
    pub reason: Reason,
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
        reason: update.reason.as_str().to_owned(),
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
        reason: Reason::Issued,
        message: format!(
            "token in Secret {secret_name} is valid until {}",
            whole_seconds(expires_at)
        ),
        observed_generation,
    }
}

/// Whether an Event reports normal operation or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Normal operation.
    Normal,
    /// A problem that needs attention.
    Warning,
}

/// An Event to publish about an object, decided by the pure core and published by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// Normal or Warning.
    pub severity: Severity,
    /// The Event's reason.
    pub reason: Reason,
    /// What fedid was doing (`IssueToken`, `RotateKeys`, `Reconcile`).
    pub action: &'static str,
    /// Human-readable note.
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn update(status: ConditionStatus, reason: Reason, message: &str) -> ConditionUpdate {
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
            update(ConditionStatus::True, Reason::Issued, "ok"),
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
            update(ConditionStatus::True, Reason::Issued, "a"),
            at(100),
        );
        assert!(!set_condition(
            &mut conditions,
            update(ConditionStatus::True, Reason::Issued, "a"),
            at(200)
        ));
        assert!(set_condition(
            &mut conditions,
            update(ConditionStatus::True, Reason::Issued, "b"),
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
            update(ConditionStatus::True, Reason::Issued, "a"),
            at(100),
        );
        assert!(set_condition(
            &mut conditions,
            update(ConditionStatus::False, Reason::SigningFailed, "boom"),
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
            update(ConditionStatus::True, Reason::Issued, "a"),
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
}
