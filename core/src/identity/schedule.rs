//! When to renew a token, how long to back off after a failure, and whether the token in a
//! Secret must be replaced. All functions are pure; time and randomness are injected.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value};

use crate::{
    time::{minus, plus, whole_seconds},
    timing::clamp_jitter,
};

/// Fraction of a token's lifetime after which it is renewed, before jitter.
pub const RENEW_AFTER_FRACTION: f64 = 2.0 / 3.0;

/// Claims that differ between two tokens issued from the same spec.
const PER_TOKEN_CLAIMS: [&str; 4] = ["iat", "exp", "nbf", "jti"];

/// When to replace a token issued at `issued_at` that expires at `expires_at`: after two thirds
/// of its lifetime, stretched or shrunk by `jitter_fraction` (clamped to ±0.1) so that tokens
/// issued together are not all renewed together. Never later than `min_remaining` (five
/// minutes in production) before expiry, never earlier than the issue time, and truncated to
/// whole seconds.
pub fn renew_at(
    issued_at: Timestamp,
    expires_at: Timestamp,
    jitter_fraction: f64,
    min_remaining: SignedDuration,
) -> Timestamp {
    let issued = whole_seconds(issued_at);
    let lifetime_seconds = whole_seconds(expires_at)
        .as_second()
        .saturating_sub(issued.as_second())
        .max(0);
    let stretch = 1.0 + clamp_jitter(jitter_fraction);
    let offset_seconds = (lifetime_seconds as f64 * RENEW_AFTER_FRACTION * stretch).floor() as i64;
    let planned = plus(issued, SignedDuration::from_secs(offset_seconds));
    let latest = minus(whole_seconds(expires_at), min_remaining);
    planned.min(latest).max(issued)
}

/// The token currently stored in an identity's Secret.
#[derive(Clone, Debug)]
pub struct ExistingToken<'a> {
    /// Its decoded (not necessarily verified) claims.
    pub claims: &'a Map<String, Value>,
    /// The `kid` from its header.
    pub key_id: &'a str,
    /// When it is due for renewal.
    pub renew_at: Timestamp,
}

/// Everything [`should_reissue`] decides on.
#[derive(Clone, Debug)]
pub struct ReissueInput<'a> {
    /// The stored token, or `None` when the Secret is missing or holds no readable token.
    pub existing: Option<ExistingToken<'a>>,
    /// Claims every token of the identity carries (from
    /// [`ClaimTemplate::stable_claims`](crate::claims::ClaimTemplate::stable_claims));
    /// per-token claims (`iat`, `exp`, `nbf`, `jti`) are ignored if present.
    pub desired_claims: &'a Map<String, Value>,
    /// Lifetime (`exp - iat`) the spec asks for, in seconds.
    pub desired_lifetime_seconds: i64,
    /// Key IDs in the issuer's JWKS.
    pub published_key_ids: &'a [String],
    /// When a new token was asked for (the `fedid.dev/renew-requested-at` annotation).
    pub renew_requested_at: Option<Timestamp>,
    /// The current time.
    pub now: Timestamp,
}

/// Why a token must be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReissueReason {
    /// There is no token yet.
    NoToken,
    /// The token has expired, or has no readable `exp`.
    Expired,
    /// The key that signed the token is no longer in the JWKS.
    KeyUnpublished,
    /// The claims or the lifetime the spec asks for differ from the token's.
    SpecChanged,
    /// The token reached its renewal time.
    DueForRenewal,
    /// A renewal was asked for (`kubectl fedid renew`) after the token was issued.
    RenewRequested,
    /// The Secret's data was changed by someone else since fedid wrote it.
    SecretChanged,
}

impl ReissueReason {
    /// Whether this pass gives the identity its first credentials (no Secret, or no readable
    /// token in it) rather than refreshing ones it has: first issues go before refreshes when
    /// a token service's request budget is spent.
    pub fn is_first_issue(self, secret_exists: bool) -> bool {
        !secret_exists || self == Self::NoToken
    }

    /// Stable, machine-readable name, usable as a metric label or log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoToken => "NoToken",
            Self::Expired => "Expired",
            Self::KeyUnpublished => "KeyUnpublished",
            Self::SpecChanged => "SpecChanged",
            Self::DueForRenewal => "DueForRenewal",
            Self::RenewRequested => "RenewRequested",
            Self::SecretChanged => "SecretChanged",
        }
    }
}

/// Whether to keep the stored token or issue a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReissueDecision {
    /// The token is fine until `renew_at`; check again then.
    Keep {
        /// When the token is due for renewal.
        renew_at: Timestamp,
    },
    /// Issue a new token now.
    Reissue {
        /// Why.
        reason: ReissueReason,
    },
}

fn integer_claim(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_i64)
}

fn lifetime_seconds(claims: &Map<String, Value>) -> Option<i64> {
    Some(integer_claim(claims, "exp")?.saturating_sub(integer_claim(claims, "iat")?))
}

/// Whether a stored token answers the same request: equal apart from the per-token claims
/// (`iat`, `exp`, `nbf`, `jti`), and with the same lifetime (`exp - iat`).
fn same_request(
    existing: &Map<String, Value>,
    desired: &Map<String, Value>,
    desired_lifetime_seconds: i64,
) -> bool {
    let stable = |claims: &Map<String, Value>| {
        claims
            .iter()
            .filter(|(name, _)| !PER_TOKEN_CLAIMS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    lifetime_seconds(existing) == Some(desired_lifetime_seconds)
        && stable(existing) == stable(desired)
}

/// Whether a token issued at `issued_at` answers a renew request made at `requested_at`: it
/// was issued in that second or later. Whole seconds, as `iat` is, so that a token minted in
/// the request's own second answers it and a request never asks twice.
pub fn renew_request_answered(requested_at: Timestamp, issued_at: Timestamp) -> bool {
    issued_at.as_second() >= requested_at.as_second()
}

/// Decides whether the stored token can stay. Checks, in order: a token exists, it has not
/// expired, its signing key is still published, it matches the spec, no renewal was asked
/// for since it was issued, it is not yet due. A renew request dated in the future is kept
/// for then: the token stays until that time at the latest.
pub fn should_reissue(input: &ReissueInput<'_>) -> ReissueDecision {
    let reissue = |reason| ReissueDecision::Reissue { reason };
    let Some(existing) = &input.existing else {
        return reissue(ReissueReason::NoToken);
    };
    let expired = integer_claim(existing.claims, "exp")
        .is_none_or(|expires| input.now.as_second() >= expires);
    if expired {
        return reissue(ReissueReason::Expired);
    }
    if !input
        .published_key_ids
        .iter()
        .any(|kid| kid == existing.key_id)
    {
        return reissue(ReissueReason::KeyUnpublished);
    }
    if !same_request(
        existing.claims,
        input.desired_claims,
        input.desired_lifetime_seconds,
    ) {
        return reissue(ReissueReason::SpecChanged);
    }
    let pending_request = input.renew_requested_at.filter(|requested| {
        integer_claim(existing.claims, "iat")
            .and_then(|iat| Timestamp::from_second(iat).ok())
            .is_none_or(|issued_at| !renew_request_answered(*requested, issued_at))
    });
    if pending_request.is_some_and(|requested| input.now >= whole_seconds(requested)) {
        return reissue(ReissueReason::RenewRequested);
    }
    if input.now >= existing.renew_at {
        return reissue(ReissueReason::DueForRenewal);
    }
    ReissueDecision::Keep {
        renew_at: pending_request.map_or(existing.renew_at, |requested| {
            existing.renew_at.min(whole_seconds(requested))
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: i64 = 1_800_000_000;
    const MARGIN: SignedDuration = SignedDuration::from_mins(5);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn jitters() -> impl Iterator<Item = f64> {
        (-100..=100).map(|step| f64::from(step) / 1000.0)
    }

    #[test]
    fn renews_after_two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(at(T0), at(T0 + 3600), 0.0, MARGIN), at(T0 + 2400));
        assert_eq!(
            renew_at(at(T0), at(T0 + 86_400), 0.0, MARGIN),
            at(T0 + 57_600)
        );
        assert_eq!(renew_at(at(T0), at(T0 + 3600), 0.1, MARGIN), at(T0 + 2640));
        assert_eq!(renew_at(at(T0), at(T0 + 3600), -0.1, MARGIN), at(T0 + 2160));
    }

    #[test]
    fn short_lifetimes_keep_five_minutes_of_validity() {
        // 10 minutes: two thirds would be 6m40s, leaving less than 5 minutes.
        assert_eq!(renew_at(at(T0), at(T0 + 600), 0.0, MARGIN), at(T0 + 300));
        // Shorter than five minutes: renew immediately.
        assert_eq!(renew_at(at(T0), at(T0 + 120), 0.0, MARGIN), at(T0));
        assert_eq!(renew_at(at(T0), at(T0 - 10), 0.0, MARGIN), at(T0));
    }

    #[test]
    fn a_smaller_margin_allows_short_test_lifetimes() {
        let margin = SignedDuration::from_secs(5);
        // 30 s: two thirds is 20 s, ±2 s of jitter, at the latest 25 s.
        assert_eq!(renew_at(at(T0), at(T0 + 30), 0.0, margin), at(T0 + 20));
        assert_eq!(renew_at(at(T0), at(T0 + 30), 0.1, margin), at(T0 + 22));
        assert_eq!(renew_at(at(T0), at(T0 + 30), -0.1, margin), at(T0 + 18));
        assert_eq!(renew_at(at(T0), at(T0 + 6), 0.0, margin), at(T0 + 1));
    }

    #[test]
    fn renewal_time_stays_within_bounds_for_all_lifetimes_and_jitters() {
        let lifetimes = (600..=86_400)
            .step_by(599)
            .chain([600, 601, 899, 900, 901, 86_400]);
        for lifetime in lifetimes {
            let issued = at(T0);
            let expires = at(T0 + lifetime);
            let latest = at(T0 + lifetime - 300);
            let mut previous = issued;
            for jitter in jitters() {
                let renew = renew_at(issued, expires, jitter, MARGIN);
                assert!(renew >= issued, "{lifetime}s {jitter}");
                assert!(renew <= latest, "{lifetime}s {jitter}");
                assert_eq!(renew.subsec_nanosecond(), 0);
                assert!(
                    renew >= previous,
                    "monotonic in jitter: {lifetime}s {jitter}"
                );
                previous = renew;
                let nominal = lifetime * 2 / 3;
                let spread = lifetime / 10 + 1;
                let offset = renew.as_second() - T0;
                assert!(
                    offset == lifetime - 300 || (offset - nominal).abs() <= spread,
                    "{lifetime}s {jitter}: offset {offset}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let issued = at(T0);
        let expires = at(T0 + 86_400);
        assert_eq!(
            renew_at(issued, expires, 5.0, MARGIN),
            renew_at(issued, expires, 0.1, MARGIN)
        );
        assert_eq!(
            renew_at(issued, expires, -5.0, MARGIN),
            renew_at(issued, expires, -0.1, MARGIN)
        );
        assert_eq!(
            renew_at(issued, expires, f64::NAN, MARGIN),
            renew_at(issued, expires, 0.0, MARGIN)
        );
    }

    #[test]
    fn sub_second_inputs_produce_whole_seconds() {
        let issued = at(T0)
            .checked_add(SignedDuration::from_millis(750))
            .expect("in range");
        let renew = renew_at(issued, at(T0 + 3600), 0.0, MARGIN);
        assert_eq!(renew, at(T0 + 2400));
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn token_claims(iat: i64, lifetime: i64, audience: &str) -> Map<String, Value> {
        claims(json!({
            "iss": "https://issuer.example.com", "sub": "system:fedid:ci:web",
            "aud": audience, "iat": iat, "nbf": iat - 5, "exp": iat + lifetime,
            "jti": format!("jti-{iat}"), "namespace": "ci", "identity": "web",
        }))
    }

    struct Case {
        existing: Option<Map<String, Value>>,
        key_id: &'static str,
        renew_at: Timestamp,
        desired: Map<String, Value>,
        renew_requested_at: Option<Timestamp>,
        now: Timestamp,
    }

    impl Case {
        /// A token issued at T0 for one hour, renewal due at T0 + 40m, checked 10 minutes in.
        fn fresh() -> Self {
            Self {
                existing: Some(token_claims(T0, 3600, "aws")),
                key_id: "k1",
                renew_at: at(T0 + 2400),
                desired: token_claims(T0 + 600, 3600, "aws"),
                renew_requested_at: None,
                now: at(T0 + 600),
            }
        }

        fn decide(&self) -> ReissueDecision {
            let published = vec!["k0".to_owned(), "k1".to_owned()];
            should_reissue(&ReissueInput {
                existing: self.existing.as_ref().map(|claims| ExistingToken {
                    claims,
                    key_id: self.key_id,
                    renew_at: self.renew_at,
                }),
                desired_claims: &self.desired,
                desired_lifetime_seconds: lifetime_seconds(&self.desired).unwrap_or_default(),
                published_key_ids: &published,
                renew_requested_at: self.renew_requested_at,
                now: self.now,
            })
        }
    }

    fn reissue(reason: ReissueReason) -> ReissueDecision {
        ReissueDecision::Reissue { reason }
    }

    #[test]
    fn keeps_a_fresh_matching_token() {
        assert_eq!(
            Case::fresh().decide(),
            ReissueDecision::Keep {
                renew_at: at(T0 + 2400)
            }
        );
    }

    #[test]
    fn reissues_without_a_token() {
        let case = Case {
            existing: None,
            ..Case::fresh()
        };
        assert_eq!(case.decide(), reissue(ReissueReason::NoToken));
    }

    #[test]
    fn reissues_an_expired_or_unreadable_token() {
        let expired = Case {
            now: at(T0 + 3600),
            ..Case::fresh()
        };
        assert_eq!(expired.decide(), reissue(ReissueReason::Expired));
        let mut no_exp = token_claims(T0, 3600, "aws");
        no_exp.remove("exp");
        let unreadable = Case {
            existing: Some(no_exp),
            ..Case::fresh()
        };
        assert_eq!(unreadable.decide(), reissue(ReissueReason::Expired));
    }

    #[test]
    fn reissues_when_the_signing_key_left_the_jwks() {
        let case = Case {
            key_id: "gone",
            ..Case::fresh()
        };
        assert_eq!(case.decide(), reissue(ReissueReason::KeyUnpublished));
    }

    #[test]
    fn reissues_when_the_spec_changed() {
        let audience = Case {
            desired: token_claims(T0 + 600, 3600, "gcp"),
            ..Case::fresh()
        };
        assert_eq!(audience.decide(), reissue(ReissueReason::SpecChanged));
        let lifetime = Case {
            desired: token_claims(T0 + 600, 7200, "aws"),
            ..Case::fresh()
        };
        assert_eq!(lifetime.decide(), reissue(ReissueReason::SpecChanged));
        let mut extra = token_claims(T0 + 600, 3600, "aws");
        extra.insert("repository".into(), json!("acme/web"));
        let added_claim = Case {
            desired: extra,
            ..Case::fresh()
        };
        assert_eq!(added_claim.decide(), reissue(ReissueReason::SpecChanged));
    }

    #[test]
    fn reissues_when_due() {
        let at_renewal = Case {
            now: at(T0 + 2400),
            ..Case::fresh()
        };
        assert_eq!(at_renewal.decide(), reissue(ReissueReason::DueForRenewal));
        let just_before = Case {
            now: at(T0 + 2399),
            ..Case::fresh()
        };
        assert!(matches!(just_before.decide(), ReissueDecision::Keep { .. }));
    }

    #[test]
    fn a_renew_request_after_the_token_was_issued_reissues_it() {
        // Issued at T0, checked 10 minutes in: a request 5 minutes in is pending.
        let requested = Case {
            renew_requested_at: Some(at(T0 + 300)),
            ..Case::fresh()
        };
        assert_eq!(requested.decide(), reissue(ReissueReason::RenewRequested));
        // Sub-second parts of the request do not matter: `iat` has whole seconds.
        let fractional = Case {
            renew_requested_at: Some(
                at(T0 + 300)
                    .checked_add(SignedDuration::from_millis(900))
                    .expect("in range"),
            ),
            ..Case::fresh()
        };
        assert_eq!(fractional.decide(), reissue(ReissueReason::RenewRequested));
    }

    #[test]
    fn a_token_issued_at_or_after_the_request_answers_it() {
        for requested in [T0 - 3600, T0 - 1, T0] {
            let case = Case {
                renew_requested_at: Some(at(requested)),
                ..Case::fresh()
            };
            assert_eq!(
                case.decide(),
                ReissueDecision::Keep {
                    renew_at: at(T0 + 2400)
                },
                "requested at T0{:+}",
                requested - T0
            );
        }
        // The token minted for a request in the same second answers it, so no loop.
        let same_second = at(T0)
            .checked_add(SignedDuration::from_millis(700))
            .expect("in range");
        assert!(renew_request_answered(same_second, at(T0)));
        assert!(!renew_request_answered(at(T0 + 1), at(T0)));
    }

    #[test]
    fn a_renew_request_in_the_future_is_kept_for_its_time() {
        let later = Case {
            renew_requested_at: Some(at(T0 + 900)),
            ..Case::fresh()
        };
        assert_eq!(
            later.decide(),
            ReissueDecision::Keep {
                renew_at: at(T0 + 900)
            }
        );
        let then = Case {
            now: at(T0 + 900),
            ..later
        };
        assert_eq!(then.decide(), reissue(ReissueReason::RenewRequested));
        // A request after the scheduled renewal does not delay it.
        let after_renewal = Case {
            renew_requested_at: Some(at(T0 + 3000)),
            ..Case::fresh()
        };
        assert_eq!(
            after_renewal.decide(),
            ReissueDecision::Keep {
                renew_at: at(T0 + 2400)
            }
        );
    }

    #[test]
    fn an_expired_token_or_a_spec_change_is_reported_before_a_renew_request() {
        let expired = Case {
            renew_requested_at: Some(at(T0 + 300)),
            now: at(T0 + 3600),
            ..Case::fresh()
        };
        assert_eq!(expired.decide(), reissue(ReissueReason::Expired));
        let changed = Case {
            renew_requested_at: Some(at(T0 + 300)),
            desired: token_claims(T0 + 600, 3600, "gcp"),
            ..Case::fresh()
        };
        assert_eq!(changed.decide(), reissue(ReissueReason::SpecChanged));
    }

    #[test]
    fn reasons_have_stable_names() {
        let names: Vec<&str> = [
            ReissueReason::NoToken,
            ReissueReason::Expired,
            ReissueReason::KeyUnpublished,
            ReissueReason::SpecChanged,
            ReissueReason::DueForRenewal,
            ReissueReason::RenewRequested,
        ]
        .into_iter()
        .map(ReissueReason::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "NoToken",
                "Expired",
                "KeyUnpublished",
                "SpecChanged",
                "DueForRenewal",
                "RenewRequested"
            ]
        );
    }

    #[test]
    fn only_a_missing_token_is_a_first_issue() {
        assert!(ReissueReason::DueForRenewal.is_first_issue(false));
        assert!(ReissueReason::NoToken.is_first_issue(true));
        for refresh in [
            ReissueReason::Expired,
            ReissueReason::KeyUnpublished,
            ReissueReason::SpecChanged,
            ReissueReason::DueForRenewal,
            ReissueReason::RenewRequested,
        ] {
            assert!(!refresh.is_first_issue(true), "{refresh:?}");
        }
    }
}
