//! The namespaced `FederatedIdentity` resource: a request for a token kept fresh in a Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    claim::Claim, duration::Duration, exchange::ExchangeSpec, output::OutputSpec, pods::PodsSpec,
};

/// Regular expression for a DNS-1123 subdomain, the format of Secret names.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Longest DNS-1123 subdomain.
pub const MAX_DNS_SUBDOMAIN_LENGTH: usize = 253;

/// Most audiences a single identity may list.
pub const MAX_AUDIENCES: usize = 10;

/// Annotation asking for a new token: an RFC 3339 time (`kubectl fedid renew` writes the next
/// whole second). The token is reissued, and exchanged again, once that time has come, unless
/// it was issued in that second or later.
pub const RENEW_REQUESTED_AT_ANNOTATION: &str = "fedid.dev/renew-requested-at";

/// A workload identity: fedid signs a short-lived token for it and keeps the token fresh in a
/// Secret in the same namespace.
///
/// Mount the Secret's `token` key into CI pods and point cloud SDKs at the file, for example
/// with `AWS_WEB_IDENTITY_TOKEN_FILE`.
// The printer columns repeat `type_ = "..."`, which clippy mistakes for duplicated attributes.
#[expect(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "fedid.dev",
    version = "v1alpha1",
    kind = "FederatedIdentity",
    namespaced,
    status = "FederatedIdentityStatus",
    shortname = "fid",
    derive = "PartialEq",
    doc = "A workload identity whose short-lived signed token fedid keeps fresh in a Secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".status.issuer"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Credentials Expire",
        type_ = "string",
        json_path = ".status.credentialsExpireAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.output) || !has(self.output.includeSubjectToken) || self.output.includeSubjectToken || has(self.exchange)")
        .message("output.includeSubjectToken: false needs spec.exchange: without one the token is the only credential")
)]
#[x_kube(
    validation = Rule::new("!has(self.output) || !has(self.output.includeSubjectToken) || self.output.includeSubjectToken || !has(self.exchange) || !has(self.exchange.gcp)")
        .message("output.includeSubjectToken: false cannot be used with exchange.gcp: its external_account.json reads the token file")
)]
#[x_kube(
    validation = Rule::new("!has(self.pods) || !has(self.pods.mountPath) || !has(self.exchange) || ((!has(self.exchange.aws) || self.exchange.aws.mountPath == self.pods.mountPath) && (!has(self.exchange.gcp) || self.exchange.gcp.mountPath == self.pods.mountPath))")
        .message("pods.mountPath must equal the exchange's mountPath: the files fedid writes name that path")
)]
#[x_kube(
    validation = Rule::new("!has(self.pods) || !has(self.pods.awsRoleARN) || !has(self.exchange) || !has(self.exchange.aws)")
        .message("pods.awsRoleARN is for SDKs that exchange the token themselves; with exchange.aws fedid already holds the role's credentials")
)]
#[x_kube(
    validation = Rule::new("(has(self.output) && has(self.output.secretType) ? self.output.secretType : 'Opaque') == (has(oldSelf.output) && has(oldSelf.output.secretType) ? oldSelf.output.secretType : 'Opaque')")
        .message("output.secretType cannot be changed: a Secret's type is immutable; delete the FederatedIdentity and create it again")
)]
#[x_kube(
    validation = Rule::new("!has(self.pods) || !has(self.output) || !has(self.output.rollout)")
        .message("output.rollout cannot be used with pods: each pod's Secret belongs to that pod, which reads it at start")
)]
#[x_kube(
    validation = Rule::new("!has(self.pods) || !has(self.secretName)")
        .message("secretName cannot be used with pods: each pod gets a Secret named by the webhook")
)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentitySpec {
    /// Name of the IdentityIssuer that signs the token. When omitted, the issuer annotated
    /// `fedid.dev/default-issuer: "true"` is used. The issuer must allow this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub issuer_ref: Option<String>,

    /// Audiences of the token (the `aud` claim): 1 to 10 distinct, non-empty values, for
    /// example `sts.amazonaws.com`.
    #[schemars(length(min = 1, max = 10), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub audiences: Vec<String>,

    /// Token lifetime, for example `1h`: at most the issuer's `tokenLifetime.maximum` and at
    /// least the operator's minimum token lifetime (`10m` unless lowered for tests). Defaults
    /// to the issuer's `tokenLifetime.default`. The token is renewed after about two thirds of
    /// its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("duration(self) <= duration('24h')")
            .message("lifetime must be at most 24h")
    )]
    pub lifetime: Option<Duration>,

    /// Static claims added to the token. They must not repeat a claim of the issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub claims: Vec<Claim>,

    /// Name of the Secret that receives the token; defaults to `<name>-token`. fedid refuses
    /// to write into a Secret it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN_PATTERN)
    )]
    pub secret_name: Option<String>,

    /// Trade the token at an outside token service and write the credentials it returns into
    /// the Secret as well, refreshed before they expire. The endpoint must be allowed by the
    /// issuer's `spec.exchange.allowedEndpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeSpec>,

    /// What the Secret holds besides the exchanged credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,

    /// Make the identity a template for CI job pods: every pod labelled
    /// `fedid.dev/identity: <name>` in this namespace gets its own token, with the pod's and
    /// the CI job's claims, in a Secret owned by the pod. The identity itself then writes no
    /// Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsSpec>,
}

impl FederatedIdentity {
    /// The time of the renew-requested-at annotation; `None` when it is absent or not an RFC
    /// 3339 time.
    pub fn renew_requested_at(&self) -> Option<jiff::Timestamp> {
        self.metadata
            .annotations
            .as_ref()?
            .get(RENEW_REQUESTED_AT_ANNOTATION)?
            .trim()
            .parse()
            .ok()
    }
}

impl FederatedIdentitySpec {
    /// Whether the Secret holds the signed token.
    pub fn includes_subject_token(&self) -> bool {
        self.output
            .as_ref()
            .and_then(|output| output.include_subject_token)
            .unwrap_or(true)
    }
}

/// Observed state of a FederatedIdentity.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityStatus {
    /// Current conditions; `Ready` is true while the Secret holds a valid token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Name of the Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// Name of the IdentityIssuer that signed the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,

    /// Key ID (`kid`) of the key that signed the current token.
    #[serde(default, rename = "keyID", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,

    /// When the current token was issued (its `iat` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,

    /// When the current token expires (its `exp` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When fedid will replace the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,

    /// Consecutive failed attempts to issue a token; reset after a success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: u32,

    /// Reason of the most recent failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,

    /// When the exchanged credentials in the Secret expire (identities with `spec.exchange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire_at: Option<Time>,

    /// The most recent exchange request and its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exchange: Option<LastExchange>,

    /// When fedid last replaced a token that had already expired (a lapse: the operator or
    /// the apiserver was unavailable past the renewal time); a Warning Event `TokenLapsed` says
    /// the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_lapse_time: Option<Time>,

    /// What `spec.output.rollout` last did (identities with `spec.output.rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// The restarts of `spec.output.rollout` workloads, as reported in the status.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Digest of the Secret's contents the workloads were last restarted for (or were running
    /// with when rollout was set up); new contents restart them.
    pub credentials_digest: String,
    /// When fedid last patched the workloads, successfully or not; the next restart waits for
    /// `minInterval` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<Time>,
}

/// One exchange request as reported in the status.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct LastExchange {
    /// Host (and port) of the endpoint.
    pub endpoint_host: String,
    /// `Exchanged`, or the reason it failed (`ExchangeRejected`, `ExchangeUnavailable`,
    /// `ExchangeMalformed`).
    pub outcome: String,
    /// The error code the endpoint returned, when it returned one (for example
    /// `invalid_grant` or `AccessDenied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_code: Option<String>,
    /// When the request was made.
    pub time: Time,
    /// After a failure: fedid sends no new request before this time (backoff, or the
    /// service's `Retry-After`), whatever triggers a pass, unless the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The Secret name used when `spec.secretName` is omitted: `<identity name>-token`.
pub fn default_secret_name(identity_name: &str) -> String {
    format!("{identity_name}-token")
}

/// Whether `name` is a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, starting
/// and ending with an alphanumeric, at most 253 characters).
pub fn is_dns_subdomain(name: &str) -> bool {
    let is_label = |label: &str| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                is_lower_alphanumeric(*first)
                    && is_lower_alphanumeric(*last)
                    && bytes
                        .iter()
                        .all(|byte| is_lower_alphanumeric(*byte) || *byte == b'-')
            }
            _ => false,
        }
    };
    name.len() <= MAX_DNS_SUBDOMAIN_LENGTH && name.split('.').all(is_label)
}

fn is_lower_alphanumeric(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spec_uses_the_documented_field_names() {
        let spec: FederatedIdentitySpec = serde_json::from_value(json!({
            "issuerRef": "ci",
            "audiences": ["sts.amazonaws.com"],
            "lifetime": "2h",
            "claims": [{"name": "repo", "string": "acme/web"}],
            "secretName": "aws-token"
        }))
        .expect("full spec");
        assert_eq!(spec.issuer_ref.as_deref(), Some("ci"));
        assert_eq!(spec.lifetime, Some(Duration::from_hours(2)));
        assert_eq!(spec.secret_name.as_deref(), Some("aws-token"));
        assert_eq!(spec.claims, vec![Claim::string("repo", "acme/web")]);

        let minimal: FederatedIdentitySpec =
            serde_json::from_value(json!({"audiences": ["a"]})).expect("minimal spec");
        assert_eq!(
            serde_json::to_value(&minimal).expect("serializes"),
            json!({"audiences": ["a"]})
        );
    }

    #[test]
    fn status_uses_the_documented_field_names() {
        let at = |second| Time(jiff::Timestamp::from_second(second).expect("valid timestamp"));
        let status = FederatedIdentityStatus {
            observed_generation: Some(2),
            secret_name: Some("web-token".into()),
            issuer: Some("ci".into()),
            key_id: Some("kid-1".into()),
            issued_at: Some(at(1_800_000_000)),
            expires_at: Some(at(1_800_003_600)),
            renew_at: Some(at(1_800_002_400)),
            failed_attempts: 0,
            last_failure_reason: None,
            conditions: Vec::new(),
            credentials_expire_at: None,
            last_exchange: None,
            last_lapse_time: None,
            rollout: Some(RolloutStatus {
                credentials_digest: "0123456789abcdef".into(),
                last_restart_time: Some(at(1_800_000_060)),
            }),
        };
        assert_eq!(
            serde_json::to_value(&status).expect("serializes"),
            json!({
                "observedGeneration": 2,
                "secretName": "web-token",
                "issuer": "ci",
                "keyID": "kid-1",
                "issuedAt": "2027-01-15T08:00:00Z",
                "expiresAt": "2027-01-15T09:00:00Z",
                "renewAt": "2027-01-15T08:40:00Z",
                "rollout": {
                    "credentialsDigest": "0123456789abcdef",
                    "lastRestartTime": "2027-01-15T08:01:00Z"
                }
            })
        );
        let failing = FederatedIdentityStatus {
            failed_attempts: 3,
            last_failure_reason: Some("SigningFailed".into()),
            ..FederatedIdentityStatus::default()
        };
        assert_eq!(
            serde_json::to_value(&failing).expect("serializes"),
            json!({"failedAttempts": 3, "lastFailureReason": "SigningFailed"})
        );
    }

    #[test]
    fn the_renew_request_is_read_from_its_annotation() {
        let with = |value: Option<&str>| {
            let mut identity = FederatedIdentity::new(
                "web",
                serde_json::from_value(json!({"audiences": ["a"]})).expect("spec"),
            );
            identity.metadata.annotations = value.map(|value| {
                std::collections::BTreeMap::from([(
                    RENEW_REQUESTED_AT_ANNOTATION.to_owned(),
                    value.to_owned(),
                )])
            });
            identity.renew_requested_at()
        };
        assert_eq!(with(None), None);
        assert_eq!(
            with(Some("2027-01-15T08:00:00Z")),
            Some(jiff::Timestamp::from_second(1_800_000_000).expect("valid timestamp"))
        );
        assert_eq!(
            with(Some("2027-01-15T09:00:00+01:00")),
            Some(jiff::Timestamp::from_second(1_800_000_000).expect("valid timestamp"))
        );
        assert_eq!(with(Some("yesterday")), None);
        assert_eq!(with(Some("")), None);
    }

    #[test]
    fn default_secret_name_appends_token() {
        assert_eq!(default_secret_name("deploy"), "deploy-token");
    }

    #[test]
    fn dns_subdomains() {
        for good in ["a", "web-token", "a.b-c.d9", "0", &"a".repeat(253)] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a..b",
            ".a",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
