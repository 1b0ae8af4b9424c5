//! The rollout phase: restarting the workloads of `spec.output.rollout` when the Secret's
//! contents change, as `kubectl rollout restart` does, at most once per change and per
//! `minInterval`.
//!
//! The restart is a merge patch of one pod template annotation whose value is the digest of
//! the Secret's contents. Patching the same digest again changes nothing, so a pass repeated
//! after a crash cannot restart twice for one change.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::{
    conditions::{
        ConditionStatus, ConditionUpdate, EventNote, ROLLED_OUT, Severity, set_condition,
    },
    crd::{
        FederatedIdentityStatus,
        identity::RolloutStatus,
        output::{RolloutSpec, RolloutTarget},
    },
    reason::Reason,
};

/// Pod template annotation fedid sets on a restarted workload: the digest of the Secret
/// contents it restarted for.
pub const CREDENTIALS_DIGEST_ANNOTATION: &str = "fedid.dev/credentials-digest";

/// Digest of a Secret's contents: what the rollout phase restarts workloads for.
pub use crate::credentials::secret::data_digest as credentials_digest;

/// The merge patch that restarts a workload for the Secret contents of `digest`.
pub fn restart_patch(digest: &str) -> serde_json::Value {
    json!({"spec": {"template": {"metadata": {"annotations": {
        CREDENTIALS_DIGEST_ANNOTATION: digest
    }}}}})
}

/// What the rollout phase should do in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutDecision {
    /// The identity has no `spec.output.rollout`.
    NotConfigured,
    /// It has one, but the operator runs without `--rollout`.
    Disabled,
    /// First sight of the contents: the workloads already run with them (or wait for the
    /// Secret to appear); remember them without a restart.
    Record,
    /// The workloads run with the current contents.
    UpToDate,
    /// New contents: restart the targets now.
    Restart,
    /// New contents, but the last restart was less than `minInterval` ago.
    Wait {
        /// When the restart may happen.
        until: Timestamp,
    },
}

/// Decides the rollout for Secret contents of `digest`, given the `spec` and what the status
/// recorded before.
pub fn decide_rollout(
    spec: Option<&RolloutSpec>,
    enabled: bool,
    previous: Option<&RolloutStatus>,
    digest: &str,
    now: Timestamp,
) -> RolloutDecision {
    let Some(spec) = spec else {
        return RolloutDecision::NotConfigured;
    };
    if !enabled {
        return RolloutDecision::Disabled;
    }
    let Some(previous) = previous else {
        return RolloutDecision::Record;
    };
    if previous.credentials_digest == digest {
        return RolloutDecision::UpToDate;
    }
    let earliest = previous
        .last_restart_time
        .as_ref()
        .map(|time| crate::time::plus(time.0, spec.min_interval().to_signed()));
    match earliest {
        Some(until) if now < until => RolloutDecision::Wait { until },
        _ => RolloutDecision::Restart,
    }
}

/// What the rollout phase did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutOutcome {
    /// No `spec.output.rollout`.
    NotConfigured,
    /// The operator runs without `--rollout`.
    Disabled,
    /// Contents `digest` recorded without a restart.
    Recorded {
        /// Digest of the Secret's contents.
        digest: String,
    },
    /// Nothing changed.
    UpToDate,
    /// A restart waits for `minInterval`.
    Waiting {
        /// When it may happen.
        until: Timestamp,
    },
    /// Every target was patched for contents `digest`.
    Restarted {
        /// Digest of the Secret's contents.
        digest: String,
        /// The workloads restarted.
        targets: Vec<RolloutTarget>,
    },
    /// Some targets could not be patched; the others were.
    Failed {
        /// Each failed target and why.
        failures: Vec<(RolloutTarget, String)>,
        /// `minInterval`, after which the restart is tried again.
        retry_after: Duration,
    },
}

/// What the rollout report changes besides the status: an Event and a requeue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutReport {
    /// The Event to publish.
    pub event: Option<EventNote>,
    /// When to look again at the latest (a waiting or failed restart).
    pub requeue: Option<Duration>,
}

fn targets_text<'a>(targets: impl Iterator<Item = &'a RolloutTarget>) -> String {
    targets
        .map(|target| format!("{}/{}", target.kind.as_str(), target.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `outcome` into `status` (`rollout` and the `RolledOut` condition) and says what
/// else to do.
pub fn report_rollout(
    status: &mut FederatedIdentityStatus,
    outcome: RolloutOutcome,
    generation: Option<i64>,
    now: Timestamp,
) -> RolloutReport {
    let previous_reason = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == ROLLED_OUT)
        .map(|condition| condition.reason.clone());
    let mut condition = |state, reason: Reason, message: String| {
        set_condition(
            &mut status.conditions,
            ConditionUpdate {
                type_: ROLLED_OUT,
                status: state,
                reason,
                message,
                observed_generation: generation,
            },
            now,
        );
    };
    let mut report = RolloutReport::default();
    match outcome {
        RolloutOutcome::NotConfigured => {
            status.rollout = None;
            status
                .conditions
                .retain(|condition| condition.type_ != ROLLED_OUT);
        }
        RolloutOutcome::Disabled => {
            condition(
                ConditionStatus::False,
                Reason::RolloutDisabled,
                "the operator runs without --rollout (chart value rollout.enabled): \
                 workloads are not restarted"
                    .into(),
            );
            if previous_reason.as_deref() != Some(Reason::RolloutDisabled.as_str()) {
                report.event = Some(EventNote {
                    severity: Severity::Warning,
                    reason: Reason::RolloutDisabled,
                    action: "RestartWorkloads",
                    note: "spec.output.rollout is set but the operator runs without --rollout"
                        .into(),
                });
            }
        }
        RolloutOutcome::Recorded { digest } => {
            status.rollout = Some(RolloutStatus {
                credentials_digest: digest,
                last_restart_time: None,
            });
            condition(
                ConditionStatus::True,
                Reason::UpToDate,
                "the workloads started with the current credentials; they are restarted when \
                 the credentials change"
                    .into(),
            );
        }
        RolloutOutcome::UpToDate => {}
        RolloutOutcome::Waiting { until } => {
            // A failure waiting for its retry stays reported as the failure.
            if previous_reason.as_deref() != Some(Reason::RolloutFailed.as_str()) {
                condition(
                    ConditionStatus::False,
                    Reason::RolloutPending,
                    format!(
                        "new credentials: the workloads are restarted at {until} (minInterval)"
                    ),
                );
            }
            report.requeue = Some(Duration::from_secs(
                u64::try_from(until.duration_since(now).as_secs()).unwrap_or(0),
            ));
        }
        RolloutOutcome::Restarted { digest, targets } => {
            let names = targets_text(targets.iter());
            status.rollout = Some(RolloutStatus {
                credentials_digest: digest,
                last_restart_time: Some(Time(now)),
            });
            condition(
                ConditionStatus::True,
                Reason::RolledOut,
                format!("restarted {names} for new credentials at {now}"),
            );
            report.event = Some(EventNote {
                severity: Severity::Normal,
                reason: Reason::RolledOut,
                action: "RestartWorkloads",
                note: format!("restarted {names} for new credentials"),
            });
        }
        RolloutOutcome::Failed {
            failures,
            retry_after,
        } => {
            let message = failures
                .iter()
                .map(|(target, error)| format!("{}/{}: {error}", target.kind.as_str(), target.name))
                .collect::<Vec<_>>()
                .join("; ");
            if let Some(rollout) = status.rollout.as_mut() {
                rollout.last_restart_time = Some(Time(now));
            }
            condition(
                ConditionStatus::False,
                Reason::RolloutFailed,
                format!("{message}; retried after minInterval"),
            );
            report.event = Some(EventNote {
                severity: Severity::Warning,
                reason: Reason::RolloutFailed,
                action: "RestartWorkloads",
                note: message,
            });
            report.requeue = Some(retry_after);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{ByteString, api::core::v1::Secret};

    use super::*;
    use crate::crd::{Duration as SpecDuration, output::WorkloadKind};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn spec(min_interval: u32) -> RolloutSpec {
        RolloutSpec {
            targets: vec![target("web")],
            min_interval: Some(SpecDuration::from_secs(min_interval)),
        }
    }

    fn target(name: &str) -> RolloutTarget {
        RolloutTarget {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        }
    }

    fn recorded(digest: &str, restarted: Option<i64>) -> RolloutStatus {
        RolloutStatus {
            credentials_digest: digest.into(),
            last_restart_time: restarted.map(|second| Time(at(second))),
        }
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_digest_changes_exactly_with_the_contents() {
        let one = credentials_digest(&secret(&[("token", "a"), ("expires-at", "x")]));
        assert_eq!(
            one,
            credentials_digest(&secret(&[("expires-at", "x"), ("token", "a")]))
        );
        assert_ne!(
            one,
            credentials_digest(&secret(&[("token", "b"), ("expires-at", "x")]))
        );
        // Moving bytes between a key and its value is a change.
        assert_ne!(
            credentials_digest(&secret(&[("ab", "c")])),
            credentials_digest(&secret(&[("a", "bc")]))
        );
        assert_eq!(one.len(), 16);
    }

    #[test]
    fn one_change_gives_one_restart_and_the_first_sight_none() {
        let spec = spec(60);
        let decide = |previous: Option<&RolloutStatus>, digest, now| {
            decide_rollout(Some(&spec), true, previous, digest, at(now))
        };
        assert_eq!(decide(None, "d1", 1000), RolloutDecision::Record);
        assert_eq!(
            decide(Some(&recorded("d1", None)), "d1", 1000),
            RolloutDecision::UpToDate
        );
        assert_eq!(
            decide(Some(&recorded("d1", None)), "d2", 1000),
            RolloutDecision::Restart
        );
        // After the restart the status holds d2: the same contents never restart again.
        assert_eq!(
            decide(Some(&recorded("d2", Some(1000))), "d2", 5000),
            RolloutDecision::UpToDate
        );
    }

    #[test]
    fn changes_within_the_minimum_interval_wait_and_give_one_restart() {
        let spec = spec(60);
        let previous = recorded("d2", Some(1000));
        assert_eq!(
            decide_rollout(Some(&spec), true, Some(&previous), "d3", at(1030)),
            RolloutDecision::Wait { until: at(1060) }
        );
        assert_eq!(
            decide_rollout(Some(&spec), true, Some(&previous), "d4", at(1059)),
            RolloutDecision::Wait { until: at(1060) }
        );
        assert_eq!(
            decide_rollout(Some(&spec), true, Some(&previous), "d4", at(1060)),
            RolloutDecision::Restart
        );
    }

    #[test]
    fn without_a_spec_or_the_flag_nothing_restarts() {
        assert_eq!(
            decide_rollout(None, true, None, "d", at(0)),
            RolloutDecision::NotConfigured
        );
        assert_eq!(
            decide_rollout(
                Some(&spec(60)),
                false,
                Some(&recorded("old", None)),
                "d",
                at(0)
            ),
            RolloutDecision::Disabled
        );
    }

    #[test]
    fn the_patch_sets_one_pod_template_annotation() {
        assert_eq!(
            restart_patch("abc"),
            json!({"spec": {"template": {"metadata": {"annotations": {
                "fedid.dev/credentials-digest": "abc"
            }}}}})
        );
    }

    fn condition(status: &FederatedIdentityStatus) -> (String, String) {
        let condition = status
            .conditions
            .iter()
            .find(|condition| condition.type_ == ROLLED_OUT)
            .expect("RolledOut condition");
        (condition.status.clone(), condition.reason.clone())
    }

    #[test]
    fn the_report_records_restarts_failures_and_waits() {
        let mut status = FederatedIdentityStatus::default();
        let report = report_rollout(
            &mut status,
            RolloutOutcome::Recorded {
                digest: "d1".into(),
            },
            Some(1),
            at(100),
        );
        assert_eq!(report, RolloutReport::default());
        assert_eq!(status.rollout, Some(recorded("d1", None)));
        assert_eq!(condition(&status), ("True".into(), "UpToDate".into()));

        let report = report_rollout(
            &mut status,
            RolloutOutcome::Restarted {
                digest: "d2".into(),
                targets: vec![target("web"), target("api")],
            },
            Some(1),
            at(200),
        );
        assert_eq!(status.rollout, Some(recorded("d2", Some(200))));
        assert_eq!(condition(&status), ("True".into(), "RolledOut".into()));
        let event = report.event.expect("event");
        assert_eq!(event.reason, Reason::RolledOut);
        assert_eq!(
            event.note,
            "restarted Deployment/web, Deployment/api for new credentials"
        );

        let report = report_rollout(
            &mut status,
            RolloutOutcome::Waiting { until: at(260) },
            Some(1),
            at(230),
        );
        assert_eq!(report.requeue, Some(Duration::from_secs(30)));
        assert_eq!(
            condition(&status),
            ("False".into(), "RolloutPending".into())
        );

        let report = report_rollout(
            &mut status,
            RolloutOutcome::Failed {
                failures: vec![(target("gone"), "not found".into())],
                retry_after: Duration::from_secs(60),
            },
            Some(1),
            at(260),
        );
        // The digest stays the old one, so the restart is tried again after minInterval.
        assert_eq!(status.rollout, Some(recorded("d2", Some(260))));
        assert_eq!(condition(&status), ("False".into(), "RolloutFailed".into()));
        assert_eq!(report.requeue, Some(Duration::from_secs(60)));
        assert_eq!(
            report.event.expect("event").note,
            "Deployment/gone: not found"
        );
        // Waiting for the retry, the failure stays reported.
        let report = report_rollout(
            &mut status,
            RolloutOutcome::Waiting { until: at(320) },
            Some(1),
            at(270),
        );
        assert_eq!(report.requeue, Some(Duration::from_secs(50)));
        assert_eq!(condition(&status), ("False".into(), "RolloutFailed".into()));

        report_rollout(&mut status, RolloutOutcome::NotConfigured, Some(2), at(300));
        assert_eq!(status.rollout, None);
        assert!(status.conditions.is_empty());
    }

    #[test]
    fn a_disabled_rollout_warns_once() {
        let mut status = FederatedIdentityStatus::default();
        let first = report_rollout(&mut status, RolloutOutcome::Disabled, None, at(1));
        assert_eq!(
            first.event.map(|event| event.reason),
            Some(Reason::RolloutDisabled)
        );
        let again = report_rollout(&mut status, RolloutOutcome::Disabled, None, at(2));
        assert_eq!(again.event, None);
        assert_eq!(
            condition(&status),
            ("False".into(), "RolloutDisabled".into())
        );
    }
}
