//! The token endpoint's decisions (`POST /v1/token`): what a pod asked for, whether it may
//! have it, and the RFC 6749-style error of every refusal.

use serde::Deserialize;

use k8s_openapi::api::core::v1::Pod;

use super::{PodLifecycle, identity_name, lifecycle, service_account};
use crate::crd::{Duration, FederatedIdentitySpec, pods::POD_IDENTITY_LABEL};

/// What a pod asks for: one audience and, optionally, a lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TokenRequest {
    /// The `aud` of the token.
    pub audience: String,
    /// The token's lifetime, for example `15m`; defaults to the identity's.
    #[serde(default)]
    pub lifetime: Option<String>,
}

/// Why a token request is refused; each maps to an HTTP status and an OAuth error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRequestError {
    /// The body is not a token request.
    #[error("{0}")]
    InvalidRequest(String),
    /// No bearer token, or one the apiserver does not accept for fedid's audience.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but may not have a token (not a live, opted-in pod).
    #[error("{0}")]
    Forbidden(String),
    /// The audience is not in the identity's `spec.pods.allowedAudiences`.
    #[error(
        "audience {audience:?} is not in spec.pods.allowedAudiences of FederatedIdentity {identity}"
    )]
    AudienceNotAllowed {
        /// The requested audience.
        audience: String,
        /// The identity.
        identity: String,
    },
    /// The pod asked too often.
    #[error("too many token requests from this pod; retry after {retry_after_seconds}s")]
    TooManyRequests {
        /// Seconds until a request is admitted again.
        retry_after_seconds: u64,
    },
    /// fedid cannot sign now (issuer not ready, apiserver unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl TokenRequestError {
    /// The HTTP status of the reply.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) | Self::AudienceNotAllowed { .. } => 400,
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::TooManyRequests { .. } => 429,
            Self::Unavailable(_) => 503,
        }
    }

    /// The OAuth 2.0 error code (RFC 6749 §5.2, RFC 8693 §2.2.2 for `invalid_target`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthenticated(_) => "invalid_client",
            Self::Forbidden(_) => "access_denied",
            Self::AudienceNotAllowed { .. } => "invalid_target",
            Self::TooManyRequests { .. } => "slow_down",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }

    /// The JSON error body: `{"error": …, "error_description": …}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code(), "error_description": self.to_string()})
    }
}

/// The pod a service-account token is bound to, as the apiserver's TokenReview named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    /// The pod's namespace (the service account's).
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
    /// The service account the token belongs to.
    pub service_account: String,
}

/// Whether `pod` (the pod of that name now, if any) is the live, opted-in pod the token was
/// bound to, of the token's service account.
pub fn check_bound_pod(pod: Option<&Pod>, bound: &BoundPod) -> Result<(), TokenRequestError> {
    let forbidden = |why: String| {
        Err(TokenRequestError::Forbidden(format!(
            "pod {}/{} {why}",
            bound.namespace, bound.name
        )))
    };
    let Some(pod) = pod else {
        return forbidden("no longer exists".into());
    };
    if identity_name(pod).is_none() {
        return forbidden(format!(
            "has no {POD_IDENTITY_LABEL} label: it has not opted into fedid"
        ));
    }
    if pod.metadata.uid.as_deref() != Some(bound.uid.as_str()) {
        return forbidden("no longer exists (a pod of that name has another UID)".into());
    }
    if service_account(pod) != bound.service_account {
        return Err(TokenRequestError::Forbidden(
            "the token's service account is not the pod's".into(),
        ));
    }
    match lifecycle(pod) {
        PodLifecycle::Live => Ok(()),
        PodLifecycle::Finished => forbidden("has finished".into()),
        PodLifecycle::Terminating => forbidden("is being deleted".into()),
    }
}

/// Parses a request body: JSON, or a form (`audience=…&lifetime=…`).
pub fn parse_request(content_type: &str, body: &[u8]) -> Result<TokenRequest, TokenRequestError> {
    let invalid = |problem: String| TokenRequestError::InvalidRequest(problem);
    let request: TokenRequest = if content_type.starts_with("application/x-www-form-urlencoded") {
        let text =
            std::str::from_utf8(body).map_err(|_| invalid("the form is not UTF-8".into()))?;
        let mut audience = None;
        let mut lifetime = None;
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| invalid(format!("{key} is not percent-encoded UTF-8")))?;
            let slot = match key {
                "audience" => &mut audience,
                "lifetime" => &mut lifetime,
                _ => continue,
            };
            // RFC 6749 §3.2: a parameter must not be repeated. Taking the first or the last
            // would let a proxy and fedid read different audiences; JSON refuses it too.
            if slot.replace(value).is_some() {
                return Err(invalid(format!("{key} is given more than once")));
            }
        }
        TokenRequest {
            audience: audience.ok_or_else(|| invalid("audience is required".into()))?,
            lifetime,
        }
    } else {
        serde_json::from_slice(body)
            .map_err(|error| invalid(format!("the body is not a token request: {error}")))?
    };
    if request.audience.is_empty() || request.audience.chars().count() > 256 {
        return Err(invalid("audience must be 1 to 256 characters".into()));
    }
    Ok(request)
}

fn percent_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut input = value.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                bytes.push(u8::try_from(high * 16 + low).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// The audience and lifetime a request gets from identity `name` (`spec`): the audience must
/// be allowed; the lifetime defaults to `default_lifetime` and must lie within
/// `[minimum, maximum]`.
pub fn admit(
    request: &TokenRequest,
    name: &str,
    spec: &FederatedIdentitySpec,
    default_lifetime: Duration,
    minimum: Duration,
    maximum: Duration,
) -> Result<(String, Duration), TokenRequestError> {
    let allowed = spec
        .pods
        .as_ref()
        .is_some_and(|pods| pods.allowed_audiences.contains(&request.audience));
    if !allowed {
        return Err(TokenRequestError::AudienceNotAllowed {
            audience: request.audience.clone(),
            identity: name.to_owned(),
        });
    }
    let lifetime = match &request.lifetime {
        None => default_lifetime,
        Some(text) => text.parse::<Duration>().map_err(|error| {
            TokenRequestError::InvalidRequest(format!("lifetime {text:?} is invalid: {error}"))
        })?,
    };
    if lifetime < minimum || lifetime > maximum {
        return Err(TokenRequestError::InvalidRequest(format!(
            "lifetime {lifetime} must be between {minimum} and the issuer's maximum of {maximum}"
        )));
    }
    Ok((request.audience.clone(), lifetime))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> FederatedIdentitySpec {
        serde_json::from_value(
            json!({"audiences": ["a"], "pods": {"allowedAudiences": ["vault", "npm"]}}),
        )
        .expect("spec")
    }

    #[test]
    fn requests_parse_from_json_and_forms() {
        let json = parse_request(
            "application/json",
            br#"{"audience":"vault","lifetime":"15m"}"#,
        )
        .expect("json");
        assert_eq!(
            json,
            TokenRequest {
                audience: "vault".into(),
                lifetime: Some("15m".into())
            }
        );
        let form = parse_request(
            "application/x-www-form-urlencoded",
            b"audience=https%3A%2F%2Fx.example%2Fa+b&other=1",
        )
        .expect("form");
        assert_eq!(form.audience, "https://x.example/a b");
        assert_eq!(form.lifetime, None);
        for (content_type, body) in [
            ("application/json", &b"{}"[..]),
            ("application/x-www-form-urlencoded", b"lifetime=1m"),
            ("application/json", br#"{"audience":""}"#),
            ("application/x-www-form-urlencoded", b"audience=%zz"),
            (
                "application/x-www-form-urlencoded",
                b"audience=vault&audience=npm",
            ),
            (
                "application/x-www-form-urlencoded",
                b"audience=vault&lifetime=1h&lifetime=2h",
            ),
            (
                "application/json",
                br#"{"audience":"vault","audience":"npm"}"#,
            ),
        ] {
            let error = parse_request(content_type, body).expect_err("invalid");
            assert_eq!(
                (error.status(), error.code()),
                (400, "invalid_request"),
                "{body:?}"
            );
        }
    }

    #[test]
    fn only_allowed_audiences_and_bounded_lifetimes_are_admitted() {
        let (min, default, max) = (
            Duration::from_mins(10),
            Duration::from_hours(1),
            Duration::from_hours(2),
        );
        let request = |audience: &str, lifetime: Option<&str>| TokenRequest {
            audience: audience.into(),
            lifetime: lifetime.map(str::to_owned),
        };
        assert_eq!(
            admit(&request("npm", None), "ci", &spec(), default, min, max),
            Ok(("npm".into(), default))
        );
        assert_eq!(
            admit(
                &request("npm", Some("15m")),
                "ci",
                &spec(),
                default,
                min,
                max
            ),
            Ok(("npm".into(), Duration::from_mins(15)))
        );
        let refused = admit(
            &request("sts.amazonaws.com", None),
            "ci",
            &spec(),
            default,
            min,
            max,
        )
        .expect_err("not allowed");
        assert_eq!((refused.status(), refused.code()), (400, "invalid_target"));
        assert_eq!(
            refused.body()["error_description"],
            "audience \"sts.amazonaws.com\" is not in spec.pods.allowedAudiences of FederatedIdentity ci"
        );
        for lifetime in ["3h", "1m", "soon"] {
            let error = admit(
                &request("npm", Some(lifetime)),
                "ci",
                &spec(),
                default,
                min,
                max,
            )
            .expect_err("bounded");
            assert_eq!(error.code(), "invalid_request", "{lifetime}");
        }
    }

    #[test]
    fn only_the_live_opted_in_pod_the_token_is_bound_to_may_ask() {
        let bound = BoundPod {
            namespace: "ci".into(),
            name: "job".into(),
            uid: "u1".into(),
            service_account: "runner".into(),
        };
        let pod = |uid: &str, labelled: bool, account: &str, phase: &str| -> Pod {
            let labels = if labelled {
                json!({"fedid.dev/identity": "deploy"})
            } else {
                json!({})
            };
            serde_json::from_value(json!({
                "metadata": {"name": "job", "namespace": "ci", "uid": uid, "labels": labels},
                "spec": {"serviceAccountName": account, "containers": []},
                "status": {"phase": phase}
            }))
            .expect("pod")
        };
        assert_eq!(
            check_bound_pod(Some(&pod("u1", true, "runner", "Running")), &bound),
            Ok(())
        );
        let refusals = [
            (None, "pod ci/job no longer exists"),
            (
                Some(pod("u1", false, "runner", "Running")),
                "pod ci/job has no fedid.dev/identity label: it has not opted into fedid",
            ),
            (
                Some(pod("u2", true, "runner", "Running")),
                "pod ci/job no longer exists (a pod of that name has another UID)",
            ),
            (
                Some(pod("u1", true, "other", "Running")),
                "the token's service account is not the pod's",
            ),
            (
                Some(pod("u1", true, "runner", "Succeeded")),
                "pod ci/job has finished",
            ),
        ];
        for (candidate, message) in refusals {
            let error = check_bound_pod(candidate.as_ref(), &bound).expect_err(message);
            assert_eq!(
                (error.status(), error.code(), error.to_string().as_str()),
                (403, "access_denied", message)
            );
        }
    }

    #[test]
    fn every_refusal_has_its_status_and_code() {
        let cases = [
            (
                TokenRequestError::Unauthenticated("x".into()),
                401,
                "invalid_client",
            ),
            (
                TokenRequestError::Forbidden("x".into()),
                403,
                "access_denied",
            ),
            (
                TokenRequestError::TooManyRequests {
                    retry_after_seconds: 3,
                },
                429,
                "slow_down",
            ),
            (
                TokenRequestError::Unavailable("x".into()),
                503,
                "temporarily_unavailable",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status(), error.code()), (status, code));
            assert_eq!(error.body()["error"], code);
        }
    }
}
