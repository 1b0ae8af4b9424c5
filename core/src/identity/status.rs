//! The report phase's decisions: the status after a pass, the Event worth publishing, and when
//! to look at the identity again.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    conditions::{
        CREDENTIALS_FRESH, ConditionStatus, ConditionUpdate, EventNote, Severity,
        identity_issued_condition, ready_state, set_condition,
    },
    crd::{FederatedIdentityStatus, identity::LastExchange},
    exchange::{ExchangeError, Exchanged},
    identity::{
        plan::{Issued, revokes},
        schedule::ReissueReason,
    },
    reason::{Failure, RECHECK_INTERVAL, Reason, Retry, message_chain},
    timing::{backoff, deterministic_jitter, until},
};

/// The outcome of one pass of the identity pipeline.
pub type Outcome<'a> = Result<&'a Issued, &'a dyn Failure>;

/// An exchange request this pass sent, and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeAttempt {
    /// The endpoint's host.
    pub host: String,
    /// `Exchanged`, or the failure's reason.
    pub outcome: Reason,
    /// The service's error code, if it gave one.
    pub upstream_code: Option<String>,
    /// The failure's message (empty on success).
    pub message: String,
}

impl ExchangeAttempt {
    /// A successful exchange.
    pub fn succeeded(exchanged: &Exchanged) -> Self {
        Self {
            host: exchanged.host.clone(),
            outcome: Reason::Exchanged,
            upstream_code: None,
            message: String::new(),
        }
    }

    /// A failed exchange; `None` when no request was sent (a refused spec).
    pub fn failed(error: &ExchangeError) -> Option<Self> {
        Some(Self {
            host: error.host()?.to_owned(),
            outcome: error.reason(),
            upstream_code: error.upstream_code().map(str::to_owned),
            message: message_chain(error),
        })
    }
}

/// When the previous pass's Secret stops being usable: the earliest of the token's and the
/// credentials' expiry.
fn usable_until(status: &FederatedIdentityStatus) -> Option<Timestamp> {
    let token = status.expires_at.as_ref().map(|time| time.0);
    let credentials = status.credentials_expire_at.as_ref().map(|time| time.0);
    match (token, credentials) {
        (Some(token), Some(credentials)) => Some(token.min(credentials)),
        (token, credentials) => token.or(credentials),
    }
}

/// The status after this pass: the previous status, the outcome, the exchange request this
/// pass sent (if any) and the time decide.
///
/// A transient failure while the stored token and credentials are still valid keeps the
/// identity Ready (and counts the attempt); a failed exchange sets `CredentialsFresh=False`
/// with its reason. A permanent failure reached again with the same reason changes nothing, so
/// no status is written.
pub fn next_status(
    generation: Option<i64>,
    previous: &FederatedIdentityStatus,
    outcome: Outcome<'_>,
    attempt: Option<&ExchangeAttempt>,
    now: Timestamp,
) -> FederatedIdentityStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    if let Some(attempt) = attempt {
        status.last_exchange = Some(LastExchange {
            endpoint_host: attempt.host.clone(),
            outcome: attempt.outcome.as_str().to_owned(),
            upstream_code: attempt.upstream_code.clone(),
            time: Time(now),
            next_attempt_at: None,
        });
    }
    match outcome {
        Ok(issued) => {
            status.secret_name = Some(issued.secret_name.clone());
            status.issuer = Some(issued.issuer.clone());
            status.key_id = Some(issued.key_id.clone());
            status.issued_at = Some(Time(issued.issued_at));
            status.expires_at = Some(Time(issued.expires_at));
            status.renew_at = Some(Time(issued.renew_at));
            status.credentials_expire_at = issued.credentials_expire_at.map(Time);
            status.failed_attempts = 0;
            status.last_failure_reason = None;
            // A new token where the previous one had expired before it: a lapse, whether the
            // pass saw it expired or started the renewal in time and could not write it.
            if issued.written.is_some() && usable_until(previous).is_some_and(|until| until <= now)
            {
                status.last_lapse_time = Some(Time(now));
            }
            let usable_until = issued
                .credentials_expire_at
                .map_or(issued.expires_at, |credentials| {
                    credentials.min(issued.expires_at)
                });
            set_condition(
                &mut status.conditions,
                identity_issued_condition(&issued.secret_name, usable_until, generation),
                now,
            );
            match (issued.credentials_expire_at, attempt) {
                (None, _) => {
                    status.last_exchange = None;
                    status
                        .conditions
                        .retain(|condition| condition.type_ != CREDENTIALS_FRESH);
                }
                (Some(expires_at), Some(attempt)) => {
                    set_condition(
                        &mut status.conditions,
                        ConditionUpdate {
                            type_: CREDENTIALS_FRESH,
                            status: ConditionStatus::True,
                            reason: Reason::Exchanged,
                            message: format!(
                                "credentials from {} written to Secret {}, valid until {}",
                                attempt.host,
                                issued.secret_name,
                                crate::time::whole_seconds(expires_at)
                            ),
                            observed_generation: generation,
                        },
                        now,
                    );
                }
                (Some(_), None) => {}
            }
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
            // An identity whose exchange has never given credentials (one just added to the
            // spec) has nothing usable, whatever its token.
            let never_exchanged = attempt.is_some() && previous.credentials_expire_at.is_none();
            let token_still_valid =
                !never_exchanged && usable_until(previous).is_some_and(|expires| expires > now);
            if let Some(attempt) = attempt {
                set_condition(
                    &mut status.conditions,
                    ConditionUpdate {
                        type_: CREDENTIALS_FRESH,
                        status: ConditionStatus::False,
                        reason,
                        message: attempt.message.clone(),
                        observed_generation: generation,
                    },
                    now,
                );
            }
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
                        message: if revokes(reason) {
                            format!(
                                "{}; fedid keeps no token for it (its token Secret is deleted)",
                                message_chain(failure)
                            )
                        } else {
                            message_chain(failure)
                        },
                        observed_generation: generation,
                    },
                    now,
                );
            }
            if revokes(reason) {
                // The shell deleted the token Secret: no token to report any more.
                status.secret_name = None;
                status.key_id = None;
                status.issued_at = None;
                status.expires_at = None;
                status.renew_at = None;
                status.credentials_expire_at = None;
                status
                    .conditions
                    .retain(|condition| condition.type_ != CREDENTIALS_FRESH);
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
    let fresh = |status: &FederatedIdentityStatus| {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == CREDENTIALS_FRESH)
            .map(|condition| condition.status.clone())
    };
    let refreshed_again =
        fresh(previous).as_deref() == Some("False") && fresh(status).as_deref() == Some("True");
    match outcome {
        Ok(issued) if status.last_lapse_time != previous.last_lapse_time => Some(EventNote {
            severity: Severity::Warning,
            reason: Reason::TokenLapsed,
            action: "IssueToken",
            note: format!(
                "the token in Secret {} expired before fedid could renew it (the operator or the \
                 apiserver was unavailable); a new one, valid until {}, was written",
                issued.secret_name, issued.expires_at
            ),
        }),
        Ok(issued) if issued.written == Some(ReissueReason::SecretChanged) => Some(EventNote {
            severity: Severity::Warning,
            reason: Reason::SecretRestored,
            action: "IssueToken",
            note: format!(
                "Secret {}'s data was changed outside fedid (it no longer matches what fedid \
                 wrote); fedid wrote a new token into it",
                issued.secret_name
            ),
        }),
        Ok(issued) if refreshed_again && !ready_changed => Some(EventNote {
            severity: Severity::Normal,
            reason: Reason::Exchanged,
            action: "ExchangeToken",
            note: format!(
                "credentials refreshed again and written to Secret {}",
                issued.secret_name
            ),
        }),
        Ok(issued) if ready_changed => Some(issued_event(issued)),
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

/// The Event of a token written for the first time (or again after a failure).
pub fn issued_event(issued: &Issued) -> EventNote {
    EventNote {
        severity: Severity::Normal,
        reason: Reason::Issued,
        action: "IssueToken",
        note: format!(
            "token from IdentityIssuer {} (key {}) written to Secret {}, valid until {}",
            issued.issuer, issued.key_id, issued.secret_name, issued.expires_at
        ),
    }
}

/// The report phase's decisions together: the status after this pass and when to come back.
/// After a failed exchange the status also records when the next request may go
/// (`lastExchange.nextAttemptAt`), so that no trigger (a watch event, a restart) sends one
/// sooner: see [`exchange_backoff_pending`].
pub fn report(
    uid: &str,
    generation: Option<i64>,
    previous: &FederatedIdentityStatus,
    outcome: Outcome<'_>,
    attempt: Option<&ExchangeAttempt>,
    now: Timestamp,
) -> (FederatedIdentityStatus, Duration) {
    let mut status = next_status(generation, previous, outcome, attempt, now);
    let delay = requeue(uid, &status, outcome, now);
    if let (Some(attempt), Some(last)) = (attempt, status.last_exchange.as_mut())
        && attempt.outcome != Reason::Exchanged
    {
        let seconds = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX / 2);
        last.next_attempt_at = Some(Time(crate::time::plus(
            now,
            jiff::SignedDuration::from_secs(seconds),
        )));
    }
    (status, delay)
}

/// The report of a pod template (an identity with `spec.pods`) that passed validation: Ready
/// with [`Reason::PodTemplate`], no token fields (the identity writes no Secret of its own),
/// and an Event when it became so.
pub fn template_report(
    identity_name: &str,
    issuer: &str,
    generation: Option<i64>,
    previous: &FederatedIdentityStatus,
    now: Timestamp,
) -> (FederatedIdentityStatus, Option<EventNote>) {
    let mut status = FederatedIdentityStatus {
        conditions: previous.conditions.clone(),
        observed_generation: generation,
        issuer: Some(issuer.to_owned()),
        ..FederatedIdentityStatus::default()
    };
    status
        .conditions
        .retain(|condition| condition.type_ != CREDENTIALS_FRESH);
    let message = format!(
        "pods labelled {}={identity_name} in this namespace get their own tokens",
        crate::crd::pods::POD_IDENTITY_LABEL
    );
    set_condition(
        &mut status.conditions,
        ConditionUpdate {
            type_: crate::conditions::READY,
            status: ConditionStatus::True,
            reason: Reason::PodTemplate,
            message: message.clone(),
            observed_generation: generation,
        },
        now,
    );
    let event = (ready_state(&previous.conditions) != ready_state(&status.conditions)).then_some(
        EventNote {
            severity: Severity::Normal,
            reason: Reason::PodTemplate,
            action: "Validate",
            note: message,
        },
    );
    (status, event)
}

/// When a failed exchange allows the next request: `lastExchange.nextAttemptAt` with the
/// generation it was decided for; `None` after a success.
pub fn next_exchange_attempt(status: &FederatedIdentityStatus) -> Option<NextAttempt> {
    let last = status.last_exchange.as_ref()?;
    (last.outcome != Reason::Exchanged.as_str()).then_some(())?;
    Some(NextAttempt {
        generation: status.observed_generation,
        at: last.next_attempt_at.as_ref()?.0,
    })
}

/// The earliest time of a failed exchange's next request, for the spec generation it failed
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextAttempt {
    /// The generation the failure was reported for.
    pub generation: Option<i64>,
    /// No request before this.
    pub at: Timestamp,
}

/// How long to wait before a pass may run the pipeline: `Some` while one of the recorded
/// `next_attempts` (from the status, or remembered by the shell for writes its cache has not
/// seen yet) is still ahead for the current `generation`. A spec change ends the wait.
pub fn exchange_backoff_pending(
    next_attempts: &[Option<NextAttempt>],
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Duration> {
    next_attempts
        .iter()
        .flatten()
        .filter(|next| next.generation == generation && next.at > now)
        .map(|next| until(next.at, now))
        .max()
}

/// When to look at the identity `uid` again after this pass: at the renewal time after a
/// success, with jittered exponential backoff after a transient failure (from the status's
/// failed attempts, and never sooner than the service's `Retry-After`), and at the slow
/// recheck interval after a permanent one (a watched change comes sooner).
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
            )
            .max(failure.retry_after().unwrap_or_default()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::ready_state;

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
            credentials_expire_at: None,
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
        next_status(Some(1), &Default::default(), Ok(&issued()), None, at(now))
    }

    #[test]
    fn success_reports_the_token_and_clears_failures() {
        let previous = FederatedIdentityStatus {
            failed_attempts: 3,
            last_failure_reason: Some("ApiError".into()),
            ..Default::default()
        };
        let status = next_status(Some(2), &previous, Ok(&issued()), None, at(1_000));
        assert_eq!(ready(&status), ("True".into(), "Issued".into()));
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(status.last_failure_reason, None);
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.renew_at, Some(Time(at(3_400))));
        assert_eq!(status.key_id.as_deref(), Some("k1"));
    }

    #[test]
    fn a_token_replaced_after_it_expired_is_reported_as_a_lapse() {
        let before = ok(1_000);
        // Written after the previous token's expiry, whatever the plan saw (a renewal started
        // in time whose write waited for the apiserver counts too).
        let lapsed = Issued {
            written: Some(ReissueReason::DueForRenewal),
            ..issued()
        };
        let status = next_status(Some(1), &before, Ok(&lapsed), None, at(9_000));
        assert_eq!(status.last_lapse_time, Some(Time(at(9_000))));
        let event = transition_event(&before, &status, Ok(&lapsed)).expect("a Warning");
        assert_eq!(
            (event.severity, event.reason),
            (Severity::Warning, Reason::TokenLapsed)
        );
        // A renewal in time is no lapse.
        let renewed = Issued {
            written: Some(ReissueReason::DueForRenewal),
            ..issued()
        };
        let kept = Issued {
            written: None,
            ..issued()
        };
        let later = next_status(Some(1), &status, Ok(&kept), None, at(9_500));
        assert_eq!(
            later.last_lapse_time,
            Some(Time(at(9_000))),
            "kept until the next lapse"
        );
        assert_eq!(transition_event(&status, &later, Ok(&kept)), None);
        let status = next_status(Some(1), &before, Ok(&renewed), None, at(3_400));
        assert_eq!(status.last_lapse_time, None);
        assert_eq!(transition_event(&before, &status, Ok(&renewed)), None);
    }

    #[test]
    fn a_pass_that_changes_nothing_yields_the_same_status_and_no_event() {
        let first = ok(1_000);
        let mut kept = issued();
        kept.written = None;
        let second = next_status(Some(1), &first, Ok(&kept), None, at(2_000));
        assert_eq!(
            first, second,
            "an unchanged token must not cause a status write"
        );
        assert_eq!(transition_event(&first, &second, Ok(&kept)), None);
    }

    #[test]
    fn transient_failure_with_a_valid_token_stays_ready_and_counts() {
        let error = transient();
        let status = next_status(Some(1), &ok(1_000), Err(&error), None, at(3_500));
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
        let status = next_status(Some(1), &ok(1_000), Err(&error), None, at(5_000));
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
            let status = next_status(Some(2), &ok(1_000), Err(&error), None, at(1_500));
            assert_eq!(ready(&status), ("False".into(), reason.as_str().into()));
            let condition = status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::conditions::READY)
                .expect("Ready");
            if revokes(reason) {
                assert_eq!(
                    condition.message,
                    format!(
                        "{}; fedid keeps no token for it (its token Secret is deleted)",
                        error.message
                    )
                );
            } else {
                assert_eq!(condition.message, error.message);
            }
            assert_eq!(condition.observed_generation, Some(2));
            let event = transition_event(&ok(1_000), &status, Err(&error)).expect("an Event");
            assert_eq!(event.reason, reason);
            assert_eq!(event.note, error.message);
        }
    }

    #[test]
    fn a_lost_right_drops_the_token_from_the_status_and_other_failures_keep_it() {
        for (reason, revoked) in [
            (Reason::NamespaceNotAllowed, true),
            (Reason::IssuerNotFound, true),
            (Reason::NoDefaultIssuer, false),
            (Reason::LifetimeTooLong, false),
        ] {
            let status = next_status(
                Some(2),
                &ok(1_000),
                Err(&permanent(reason)),
                None,
                at(1_500),
            );
            let kept = [
                status.secret_name.is_some(),
                status.key_id.is_some(),
                status.issued_at.is_some(),
                status.expires_at.is_some(),
                status.renew_at.is_some(),
            ];
            assert_eq!(kept, [!revoked; 5], "{reason}");
        }
    }

    #[test]
    fn a_repeated_permanent_failure_changes_nothing() {
        let conflict = permanent(Reason::SecretConflict);
        let first = next_status(
            Some(1),
            &Default::default(),
            Err(&conflict),
            None,
            at(1_000),
        );
        assert_eq!(first.failed_attempts, 1);
        let again = next_status(Some(1), &first, Err(&conflict), None, at(2_000));
        assert_eq!(first, again, "no status write when nothing changed");
        assert_eq!(transition_event(&first, &again, Err(&conflict)), None);
    }

    #[test]
    fn transient_failures_count_up() {
        let error = transient();
        let first = next_status(Some(1), &Default::default(), Err(&error), None, at(1_000));
        let second = next_status(Some(1), &first, Err(&error), None, at(1_005));
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

    fn exchanged(now: i64) -> Issued {
        Issued {
            credentials_expire_at: Some(at(now + 900)),
            ..issued()
        }
    }

    fn vault_error() -> ExchangeError {
        ExchangeError::Unavailable {
            host: "bao.example.com".into(),
            detail: "HTTP 503".into(),
            code: Some("Vault is sealed".into()),
            retry_after: None,
        }
    }

    fn fresh(status: &FederatedIdentityStatus) -> Option<(String, String)> {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == CREDENTIALS_FRESH)
            .map(|condition| (condition.status.clone(), condition.reason.clone()))
    }

    #[test]
    fn a_failed_refresh_keeps_valid_credentials_ready_and_says_why() {
        let first = exchanged(1_000);
        let success = ExchangeAttempt {
            host: "bao.example.com".into(),
            outcome: Reason::Exchanged,
            upstream_code: None,
            message: String::new(),
        };
        let good = next_status(
            Some(1),
            &Default::default(),
            Ok(&first),
            Some(&success),
            at(1_000),
        );
        assert_eq!(fresh(&good), Some(("True".into(), "Exchanged".into())));
        assert_eq!(good.credentials_expire_at, Some(Time(at(1_900))));
        assert_eq!(
            good.last_exchange
                .as_ref()
                .map(|last| last.outcome.as_str()),
            Some("Exchanged")
        );

        let error = vault_error();
        let attempt = ExchangeAttempt::failed(&error).expect("a request was sent");
        let failing = next_status(Some(1), &good, Err(&error), Some(&attempt), at(1_600));
        assert_eq!(ready(&failing), ("True".into(), "Issued".into()));
        assert_eq!(
            fresh(&failing),
            Some(("False".into(), "ExchangeUnavailable".into()))
        );
        let last = failing.last_exchange.as_ref().expect("last exchange");
        assert_eq!(last.upstream_code.as_deref(), Some("Vault is sealed"));
        assert_eq!(last.endpoint_host, "bao.example.com");
        let event = transition_event(&good, &failing, Err(&error)).expect("a Warning");
        assert_eq!(event.reason, Reason::ExchangeUnavailable);

        // Once the credentials have expired, Ready says so too.
        let expired = next_status(Some(1), &failing, Err(&error), Some(&attempt), at(1_950));
        assert_eq!(
            ready(&expired),
            ("Unknown".into(), "ExchangeUnavailable".into())
        );

        // An exchange just added to an identity that has a token: until it first succeeds,
        // the identity is not Ready (kubectl wait waits for the credentials).
        let token_only = ok(1_000);
        let added = next_status(Some(2), &token_only, Err(&error), Some(&attempt), at(1_100));
        assert_eq!(
            ready(&added),
            ("Unknown".into(), "ExchangeUnavailable".into())
        );

        // Recovery: fresh again, with a Normal Event.
        let again = next_status(
            Some(1),
            &failing,
            Ok(&exchanged(1_700)),
            Some(&success),
            at(1_700),
        );
        assert_eq!(fresh(&again), Some(("True".into(), "Exchanged".into())));
        let event = transition_event(&failing, &again, Ok(&exchanged(1_700))).expect("an Event");
        assert_eq!(
            (event.severity, event.reason),
            (Severity::Normal, Reason::Exchanged)
        );

        // The exchange removed from the spec: its condition and record go too.
        let plain = next_status(Some(2), &again, Ok(&issued()), None, at(1_800));
        assert_eq!(fresh(&plain), None);
        assert_eq!(plain.credentials_expire_at, None);
        assert_eq!(plain.last_exchange, None);
    }

    #[test]
    fn retry_after_lengthens_the_backoff() {
        let error = ExchangeError::Unavailable {
            host: "sts.example.com".into(),
            detail: "HTTP 429".into(),
            code: None,
            retry_after: Some(Duration::from_secs(120)),
        };
        let status = FederatedIdentityStatus {
            failed_attempts: 1,
            ..Default::default()
        };
        assert_eq!(
            requeue("u", &status, Err(&error), at(0)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn a_failed_exchange_defers_every_trigger_until_its_next_attempt() {
        let error = vault_error();
        let attempt = ExchangeAttempt::failed(&error).expect("sent");
        let (status, delay) = report(
            "u",
            Some(3),
            &ok(1_000),
            Err(&error),
            Some(&attempt),
            at(1_000),
        );
        let next = status
            .last_exchange
            .as_ref()
            .and_then(|last| last.next_attempt_at.clone())
            .expect("a next attempt");
        assert_eq!(
            next.0,
            at(1_000 + i64::try_from(delay.as_secs()).expect("small"))
        );
        let recorded = next_exchange_attempt(&status);
        assert_eq!(
            exchange_backoff_pending(&[recorded], Some(3), at(1_001)),
            Some(until(next.0, at(1_001)))
        );
        // Not once the time has come, nor after a spec change, nor after a success.
        assert_eq!(exchange_backoff_pending(&[recorded], Some(3), next.0), None);
        assert_eq!(
            exchange_backoff_pending(&[recorded], Some(4), at(1_001)),
            None
        );
        // The latest of several records wins.
        let later = NextAttempt {
            generation: Some(3),
            at: at(5_000),
        };
        assert_eq!(
            exchange_backoff_pending(&[recorded, Some(later), None], Some(3), at(1_001)),
            Some(until(at(5_000), at(1_001)))
        );
        let success = ExchangeAttempt {
            host: "bao.example.com".into(),
            outcome: Reason::Exchanged,
            upstream_code: None,
            message: String::new(),
        };
        let (good, _) = report(
            "u",
            Some(3),
            &status,
            Ok(&exchanged(1_002)),
            Some(&success),
            at(1_002),
        );
        assert_eq!(next_exchange_attempt(&good), None);
    }
}
