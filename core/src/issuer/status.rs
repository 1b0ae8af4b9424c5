//! The issuer pipeline's report decisions: status, Events, when to look again, and which
//! identities an issuer change concerns.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    conditions::{ConditionStatus, ConditionUpdate, EventNote, READY, Severity, set_condition},
    crd::IdentityIssuerStatus,
    issuer::{
        config::IssuerConfig,
        keys::{KeyRing, RotationPlan, next_rotation_time, next_wakeup},
    },
    reason::{Failure, RECHECK_INTERVAL, Reason, Retry, message_chain},
    timing::{backoff, until},
};

/// Longest wait between two passes over an issuer, so drift is corrected within the hour.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// The keys of an issuer after a successful pass.
#[derive(Clone, Copy, Debug)]
pub struct KeysState<'a> {
    /// The validated spec.
    pub config: &'a IssuerConfig,
    /// The key ring as stored.
    pub ring: &'a KeyRing,
}

/// The outcome of one pass of the issuer pipeline.
pub type Outcome<'a> = Result<KeysState<'a>, &'a dyn Failure>;

/// The status after this pass. URLs are reported whenever the spec validated (`config`).
pub fn next_status(
    generation: Option<i64>,
    previous: &IdentityIssuerStatus,
    config: Option<&IssuerConfig>,
    outcome: Outcome<'_>,
    now: Timestamp,
) -> IdentityIssuerStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    if let Some(config) = config {
        status.discovery_url = Some(config.issuer_url.discovery_url());
        status.jwks_url = Some(config.issuer_url.jwks_url());
    }
    let update = match outcome {
        Ok(KeysState { config, ring }) => {
            let active = ring.signing_key(now).map(|key| key.kid.clone());
            let published: Vec<String> = ring
                .published_keys(&config.rotation, now)
                .iter()
                .map(|key| key.kid.clone())
                .collect();
            status.next_rotation_time = next_rotation_time(ring, &config.rotation, now).map(Time);
            status.published_key_ids = published.clone();
            status.active_key_id = active.clone();
            match active {
                Some(active_key_id) => ConditionUpdate {
                    type_: READY,
                    status: ConditionStatus::True,
                    reason: Reason::KeysReady,
                    message: format!(
                        "key {active_key_id} signs tokens; {} key(s) published",
                        published.len()
                    ),
                    observed_generation: generation,
                },
                // A ring written by this pass always has a signing key; a stored one may not
                // have one yet if its only key activates later.
                None => ConditionUpdate {
                    type_: READY,
                    status: ConditionStatus::Unknown,
                    reason: Reason::KeyGenerationFailed,
                    message: "no key signs yet".to_owned(),
                    observed_generation: generation,
                },
            }
        }
        Err(failure) => ConditionUpdate {
            type_: READY,
            status: match failure.retry() {
                Retry::Backoff => ConditionStatus::Unknown,
                Retry::WaitForChange => ConditionStatus::False,
            },
            reason: failure.reason(),
            message: message_chain(failure),
            observed_generation: generation,
        },
    };
    set_condition(&mut status.conditions, update, now);
    status
}

/// The Event for a change of the issuer's Ready state; `None` when it did not change.
pub fn transition_event(
    previous: &IdentityIssuerStatus,
    status: &IdentityIssuerStatus,
    outcome: Outcome<'_>,
) -> Option<EventNote> {
    let state = |status: &IdentityIssuerStatus| {
        crate::conditions::ready_state(&status.conditions)
            .map(|(s, r)| (s.to_owned(), r.to_owned()))
    };
    if state(previous) == state(status) {
        return None;
    }
    Some(match outcome {
        Ok(_) => EventNote {
            severity: Severity::Normal,
            reason: Reason::KeysReady,
            action: "Reconcile",
            note: format!(
                "signing with key {}; discovery at {}",
                status.active_key_id.clone().unwrap_or_default(),
                status.discovery_url.clone().unwrap_or_default()
            ),
        },
        Err(failure) => EventNote {
            severity: Severity::Warning,
            reason: failure.reason(),
            action: "Reconcile",
            note: message_chain(failure),
        },
    })
}

/// The Event for one rotation step; `None` for no change.
pub fn rotation_event(step: &RotationPlan) -> Option<EventNote> {
    let (reason, note) = match step {
        RotationPlan::Unchanged => return None,
        RotationPlan::Bootstrap { algorithm, .. } => (
            Reason::KeyCreated,
            format!(
                "created the first {} signing key; it signs from now on",
                algorithm.as_str()
            ),
        ),
        RotationPlan::Prepare {
            algorithm,
            activates_at,
            reason,
            ..
        } => (
            Reason::KeyCreated,
            format!(
                "created a new {} signing key ({}); it is published now and signs from \
                 {activates_at}",
                algorithm.as_str(),
                reason.as_str()
            ),
        ),
        RotationPlan::Prune { kids } => (
            Reason::KeysRetired,
            format!("removed retired key(s) {} from the JWKS", kids.join(", ")),
        ),
    };
    Some(EventNote {
        severity: Severity::Normal,
        reason,
        action: "RotateKeys",
        note,
    })
}

/// When to look at the issuer again: when its ring next needs a decision (at most
/// [`RESYNC`]) after a success; with backoff after the `attempts`-th transient failure in a row;
/// at the slow recheck interval after a permanent one.
pub fn requeue(outcome: Outcome<'_>, attempts: u32, now: Timestamp) -> Duration {
    match outcome {
        Ok(KeysState { config, ring }) => {
            next_wakeup(ring, &config.rotation, now).map_or(RESYNC, |at| until(at, now).min(RESYNC))
        }
        Err(failure) => match failure.retry() {
            Retry::Backoff => backoff(attempts.max(1), 0.0),
            Retry::WaitForChange => RECHECK_INTERVAL,
        },
    }
}

/// An issuer as the identities see it, before and after a change the registry noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerChange {
    /// The issuer's name.
    pub name: String,
    /// Whether it was marked as the default before the change (false if it is new).
    pub default_before: bool,
    /// Whether it is marked as the default after the change (false if it was deleted).
    pub default_after: bool,
}

impl IssuerChange {
    /// Whether an identity with this `spec.issuerRef` must be reconciled again: it names the
    /// issuer, or it names none and the issuer was or is the default (gaining or losing the
    /// default annotation changes which issuer such identities use, or whether one is
    /// ambiguous).
    pub fn concerns(&self, issuer_ref: Option<&str>) -> bool {
        match issuer_ref {
            Some(name) => name == self.name,
            None => self.default_before || self.default_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_or_gaining_the_default_concerns_identities_without_a_reference() {
        let change = |before, after| IssuerChange {
            name: "ci".into(),
            default_before: before,
            default_after: after,
        };
        // The annotation removed: identities that used it as the default must learn it.
        assert!(change(true, false).concerns(None));
        assert!(change(false, true).concerns(None));
        assert!(change(true, true).concerns(None));
        assert!(!change(false, false).concerns(None));
        assert!(change(false, false).concerns(Some("ci")));
        assert!(!change(true, true).concerns(Some("other")));
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn config() -> IssuerConfig {
        let spec: crate::crd::IdentityIssuerSpec = serde_json::from_value(
            serde_json::json!({"issuerURL": "https://fedid.example.com/ci"}),
        )
        .expect("spec");
        crate::issuer::config::validate_issuer_spec(&spec).expect("valid")
    }

    fn ring(config: &IssuerConfig) -> KeyRing {
        crate::issuer::key_store::rotate(
            KeyRing::default(),
            &config.rotation,
            None,
            at(1_800_000_000),
            crate::issuer::keys::generate_key,
        )
        .expect("rotates")
        .ring
    }

    fn reason_of(status: &IdentityIssuerStatus) -> (String, String, String) {
        let condition = crate::conditions::ready_condition(&status.conditions).expect("Ready");
        (
            condition.status.clone(),
            condition.reason.clone(),
            condition.message.clone(),
        )
    }

    #[test]
    fn keys_ready_reports_the_signing_key_and_urls_once() {
        let config = config();
        let ring = ring(&config);
        let now = at(1_800_000_000);
        let outcome = Ok(KeysState {
            config: &config,
            ring: &ring,
        });
        let status = next_status(Some(3), &Default::default(), Some(&config), outcome, now);
        let kid = ring.signing_key(now).expect("signs").kid.clone();
        assert_eq!(
            reason_of(&status),
            (
                "True".into(),
                "KeysReady".into(),
                format!("key {kid} signs tokens; 1 key(s) published")
            )
        );
        assert_eq!(status.active_key_id.as_deref(), Some(kid.as_str()));
        assert_eq!(
            status.discovery_url.as_deref(),
            Some("https://fedid.example.com/ci/.well-known/openid-configuration")
        );
        let event = transition_event(&Default::default(), &status, outcome).expect("an Event");
        assert_eq!(
            (event.severity, event.reason),
            (Severity::Normal, Reason::KeysReady)
        );
        let again = next_status(Some(3), &status, Some(&config), outcome, at(1_800_000_060));
        assert_eq!(again, status, "nothing changed: no status write");
        assert_eq!(transition_event(&status, &again, outcome), None);
    }

    #[test]
    fn failures_carry_their_own_reason_and_class() {
        let config = config();
        let invalid = crate::issuer::config::IssuerSpecError::TooManyPublishedKeys {
            rotation: crate::crd::Duration::from_mins(1),
            retention: crate::crd::Duration::from_hours(25),
            keys: 1502,
        };
        let status = next_status(Some(1), &Default::default(), None, Err(&invalid), at(1_000));
        let (state, reason, message) = reason_of(&status);
        assert_eq!(
            (state.as_str(), reason.as_str()),
            ("False", "TooManyPublishedKeys")
        );
        assert!(message.contains("at most 16"), "{message}");
        assert_eq!(requeue(Err(&invalid), 0, at(1_000)), RECHECK_INTERVAL);

        let conflict = crate::issuer::key_store::KeysError::KeyStoreConflict {
            namespace: "fedid-system".into(),
            secret: "fedid-keys-ci".into(),
        };
        let status = next_status(
            Some(1),
            &Default::default(),
            Some(&config),
            Err(&conflict),
            at(1_000),
        );
        assert_eq!(reason_of(&status).1, "KeyStoreConflict");
        assert_eq!(requeue(Err(&conflict), 0, at(1_000)), RECHECK_INTERVAL);

        let generation = crate::issuer::key_store::KeysError::Rotation(
            crate::issuer::keys::KeyError::MissingNewKey,
        );
        let status = next_status(
            Some(1),
            &Default::default(),
            Some(&config),
            Err(&generation),
            at(1_000),
        );
        assert_eq!(
            (reason_of(&status).0.as_str(), reason_of(&status).1.as_str()),
            ("Unknown", "KeyGenerationFailed")
        );
        // Transient: 5 s, doubling with each failure in a row.
        assert_eq!(
            requeue(Err(&generation), 1, at(1_000)),
            Duration::from_secs(5)
        );
        assert_eq!(
            requeue(Err(&generation), 3, at(1_000)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn every_rotation_step_but_unchanged_has_an_event() {
        assert_eq!(rotation_event(&RotationPlan::Unchanged), None);
        let pruned = rotation_event(&RotationPlan::Prune {
            kids: vec!["a".into(), "b".into()],
        })
        .expect("an Event");
        assert_eq!(pruned.reason, Reason::KeysRetired);
        assert_eq!(pruned.note, "removed retired key(s) a, b from the JWKS");
    }
}
