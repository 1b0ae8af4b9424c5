//! The report phase's decisions: the status after a pass, the Event worth publishing, and when
//! to look at the identity again.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    conditions::{
        ConditionStatus, ConditionUpdate, EventNote, Severity, identity_issued_condition,
        ready_state, set_condition,
    },
    crd::FederatedIdentityStatus,
    identity::plan::Issued,
    reason::{Failure, RECHECK_INTERVAL, Reason, Retry, message_chain},
    timing::{backoff, deterministic_jitter, until},
};

/// The outcome of one pass of the identity pipeline.
pub type Outcome<'a> = Result<&'a Issued, &'a dyn Failure>;

/// The status after this pass: the previous status, the outcome and the time decide.
///
/// A transient failure while the stored token is still valid keeps the identity Ready (and
/// counts the attempt); a permanent failure reached again with the same reason changes
/// nothing, so no status is written.
pub fn next_status(
    generation: Option<i64>,
    previous: &FederatedIdentityStatus,
    outcome: Outcome<'_>,
    now: Timestamp,
) -> FederatedIdentityStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    match outcome {
        Ok(issued) => {
            status.secret_name = Some(issued.secret_name.clone());
            status.issuer = Some(issued.issuer.clone());
            status.key_id = Some(issued.key_id.clone());
            status.issued_at = Some(Time(issued.issued_at));
            status.expires_at = Some(Time(issued.expires_at));
            status.renew_at = Some(Time(issued.renew_at));
            status.failed_attempts = 0;
            status.last_failure_reason = None;
            set_condition(
                &mut status.conditions,
                identity_issued_condition(&issued.secret_name, issued.expires_at, generation),
                now,
            );
        }
        Err(failure) => {
            let reason = failure.reason();
            let transient = failure.retry() == Retry::Backoff;
            // The same permanent verdict reached again (after a restart, say) is no new attempt.
            let repeated =
                !transient && previous.last_failure_reason.as_deref() == Some(reason.as_str());
            if !repeated {
                status.failed_attempts = previous.failed_attempts.saturating_add(1);
            }
            status.last_failure_reason = Some(reason.as_str().to_owned());
            let token_still_valid = previous
                .expires_at
                .as_ref()
                .is_some_and(|expires| expires.0 > now);
            if !(transient && token_still_valid) {
                set_condition(
                    &mut status.conditions,
                    ConditionUpdate {
                        type_: crate::conditions::READY,
                        status: if transient {
                            ConditionStatus::Unknown
                        } else {
                            ConditionStatus::False
                        },
                        reason,
                        message: message_chain(failure),
                        observed_generation: generation,
                    },
                    now,
                );
            }
        }
    }
    status
}

/// The Event for this pass: one when the Ready state or the failure reason changed, never on
/// a pass that changed nothing.
pub fn transition_event(
    previous: &FederatedIdentityStatus,
    status: &FederatedIdentityStatus,
    outcome: Outcome<'_>,
) -> Option<EventNote> {
    let ready_changed = ready_state(&previous.conditions) != ready_state(&status.conditions);
    let failure_changed = previous.last_failure_reason != status.last_failure_reason;
    match outcome {
        Ok(issued) if ready_changed => Some(EventNote {
            severity: Severity::Normal,
            reason: Reason::Issued,
            action: "IssueToken",
            note: format!(
                "token from IdentityIssuer {} (key {}) written to Secret {}, valid until {}",
                issued.issuer, issued.key_id, issued.secret_name, issued.expires_at
            ),
        }),
        Ok(_) => None,
        Err(failure) if ready_changed || failure_changed => Some(EventNote {
            severity: Severity::Warning,
            reason: failure.reason(),
            action: "IssueToken",
            note: message_chain(failure),
        }),
        Err(_) => None,
    }
}

/// When to look at the identity `uid` again after this pass: at the renewal time after a
/// success, with jittered exponential backoff after a transient failure (from the status's
/// failed attempts), and at the slow recheck interval after a permanent one (a watched change
/// comes sooner).
pub fn requeue(
    uid: &str,
    status: &FederatedIdentityStatus,
    outcome: Outcome<'_>,
    now: Timestamp,
) -> Duration {
    match outcome {
        Ok(issued) => until(issued.renew_at, now),
        Err(failure) => match failure.retry() {
            Retry::WaitForChange => RECHECK_INTERVAL,
            Retry::Backoff => backoff(
                status.failed_attempts,
                deterministic_jitter(&format!("{uid}/{}", status.failed_attempts)),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conditions::ready_state, identity::schedule::ReissueReason};

    /// A failure with a chosen reason and retry class.
    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct TestFailure {
        reason: Reason,
        retry: Retry,
        message: &'static str,
    }

    impl Failure for TestFailure {
        fn reason(&self) -> Reason {
            self.reason
        }
        fn retry(&self) -> Retry {
            self.retry
        }
    }

    fn transient() -> TestFailure {
        TestFailure {
            reason: Reason::IssuerNotReady,
            retry: Retry::Backoff,
            message: "IdentityIssuer ci is not ready: it has no signing key yet",
        }
    }

    fn permanent(reason: Reason) -> TestFailure {
        TestFailure {
            reason,
            retry: Retry::WaitForChange,
            message: "lifetime 3h is longer than the issuer's maximum of 2h",
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn issued() -> Issued {
        Issued {
            secret_name: "deploy-token".into(),
            issuer: "ci".into(),
            key_id: "k1".into(),
            issued_at: at(1_000),
            expires_at: at(4_600),
            renew_at: at(3_400),
            written: Some(ReissueReason::NoToken),
        }
    }

    fn ready(status: &FederatedIdentityStatus) -> (String, String) {
        let (status, reason) = ready_state(&status.conditions).expect("a Ready condition");
        (status.to_owned(), reason.to_owned())
    }

    fn ok(now: i64) -> FederatedIdentityStatus {
        next_status(Some(1), &Default::default(), Ok(&issued()), at(now))
    }

    #[test]
    fn success_reports_the_token_and_clears_failures() {
        let previous = FederatedIdentityStatus {
            failed_attempts: 3,
            last_failure_reason: Some("ApiError".into()),
            ..Default::default()
        };
        let status = next_status(Some(2), &previous, Ok(&issued()), at(1_000));
        assert_eq!(ready(&status), ("True".into(), "Issued".into()));
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(status.last_failure_reason, None);
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.renew_at, Some(Time(at(3_400))));
        assert_eq!(status.key_id.as_deref(), Some("k1"));
    }

    #[test]
    fn a_pass_that_changes_nothing_yields_the_same_status_and_no_event() {
        let first = ok(1_000);
        let mut kept = issued();
        kept.written = None;
        let second = next_status(Some(1), &first, Ok(&kept), at(2_000));
        assert_eq!(
            first, second,
            "an unchanged token must not cause a status write"
        );
        assert_eq!(transition_event(&first, &second, Ok(&kept)), None);
    }

    #[test]
    fn transient_failure_with_a_valid_token_stays_ready_and_counts() {
        let error = transient();
        let status = next_status(Some(1), &ok(1_000), Err(&error), at(3_500));
        assert_eq!(ready(&status), ("True".into(), "Issued".into()));
        assert_eq!(status.failed_attempts, 1);
        assert_eq!(
            status.last_failure_reason.as_deref(),
            Some("IssuerNotReady")
        );
        // The failure reason changed: one Warning, with the failure's reason.
        let event = transition_event(&ok(1_000), &status, Err(&error)).expect("an Event");
        assert_eq!(
            (event.severity, event.reason),
            (Severity::Warning, Reason::IssuerNotReady)
        );
    }

    #[test]
    fn transient_failure_after_expiry_is_unknown() {
        let error = transient();
        let status = next_status(Some(1), &ok(1_000), Err(&error), at(5_000));
        assert_eq!(ready(&status), ("Unknown".into(), "IssuerNotReady".into()));
    }

    #[test]
    fn permanent_failures_are_not_ready_with_their_own_reason_and_message() {
        for reason in [
            Reason::SecretConflict,
            Reason::LifetimeTooLong,
            Reason::NamespaceNotAllowed,
            Reason::IssuerNotFound,
            Reason::AmbiguousDefaultIssuer,
        ] {
            let error = permanent(reason);
            let status = next_status(Some(2), &ok(1_000), Err(&error), at(1_500));
            assert_eq!(ready(&status), ("False".into(), reason.as_str().into()));
            let condition = status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::conditions::READY)
                .expect("Ready");
            assert_eq!(condition.message, error.message);
            assert_eq!(condition.observed_generation, Some(2));
            let event = transition_event(&ok(1_000), &status, Err(&error)).expect("an Event");
            assert_eq!(event.reason, reason);
            assert_eq!(event.note, error.message);
        }
    }

    #[test]
    fn a_repeated_permanent_failure_changes_nothing() {
        let conflict = permanent(Reason::SecretConflict);
        let first = next_status(Some(1), &Default::default(), Err(&conflict), at(1_000));
        assert_eq!(first.failed_attempts, 1);
        let again = next_status(Some(1), &first, Err(&conflict), at(2_000));
        assert_eq!(first, again, "no status write when nothing changed");
        assert_eq!(transition_event(&first, &again, Err(&conflict)), None);
    }

    #[test]
    fn transient_failures_count_up() {
        let error = transient();
        let first = next_status(Some(1), &Default::default(), Err(&error), at(1_000));
        let second = next_status(Some(1), &first, Err(&error), at(1_005));
        assert_eq!(second.failed_attempts, 2);
    }

    #[test]
    fn requeue_follows_the_outcome() {
        let status = ok(1_000);
        assert_eq!(
            requeue("u", &status, Ok(&issued()), at(1_000)),
            Duration::from_secs(2_400)
        );
        // Permanent: a slow recheck, never a hot loop.
        let conflict = permanent(Reason::KeyStoreConflict);
        assert_eq!(
            requeue("u", &status, Err(&conflict), at(1_000)),
            RECHECK_INTERVAL
        );
        // Transient: backoff from the failed attempts, 5 s doubling, capped at 5 min (±10%).
        let error = transient();
        let failing = |attempts| FederatedIdentityStatus {
            failed_attempts: attempts,
            ..Default::default()
        };
        let first = requeue("u", &failing(1), Err(&error), at(1_000));
        assert!((4_500..=5_500).contains(&first.as_millis()), "{first:?}");
        let later = requeue("u", &failing(20), Err(&error), at(1_000));
        assert!(later <= Duration::from_secs(330), "{later:?}");
    }
}
