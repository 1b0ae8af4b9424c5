//! `FederatedIdentity.spec.output`: what the Secret holds besides fedid's own keys, its type,
//! and the workloads restarted when its contents change.

use kube_derive::KubeSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// Most keys `spec.output.template` may render.
pub const MAX_TEMPLATES: usize = 16;

/// Longest template source, in bytes.
pub const MAX_TEMPLATE_LENGTH: usize = 16 * 1024;

/// Most workloads `spec.output.rollout.targets` may list.
pub const MAX_ROLLOUT_TARGETS: usize = 16;

/// Regular expression for a Secret data key.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// The output Secret's contents.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// Whether the Secret keeps the signed token under `token` (default `true`). Set `false`
    /// when pods need only the exchanged credentials, so the token that bought them never
    /// reaches the pods; fedid then keeps the token's header and claims without its signature
    /// in the annotation `fedid.dev/unsigned-token`, to decide renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_subject_token: Option<bool>,

    /// Extra Secret keys, each rendered from a MiniJinja (Jinja2) template over the current
    /// credentials and re-rendered whenever they are refreshed. Variables: `token` (absent
    /// when `includeSubjectToken` is false), `claims`, `expires_at`, `files` (every key fedid
    /// writes), and by exchange `access_token` and `token_type` (oauth2, gcp, azure),
    /// `vault_token` (vault), `aws.access_key_id`, `aws.secret_access_key`,
    /// `aws.session_token`, `aws.expiration` (aws). Filters beyond Jinja's own: `b64encode`.
    /// A key must not be one fedid writes itself. An error (syntax, an unknown variable) is
    /// reported as `InvalidTemplate` and nothing is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["key".into()]))]
    pub template: Vec<SecretTemplate>,

    /// The Secret's type: `Opaque` (default) or `kubernetes.io/dockerconfigjson` (for
    /// `imagePullSecrets`; needs a template for `.dockerconfigjson`). It cannot be changed, as a
    /// Secret's type cannot: delete the identity and create it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<SecretType>,

    /// Workloads of this namespace restarted (as `kubectl rollout restart` does) when the
    /// Secret's contents change, for consumers that read their credentials only at start.
    /// fedid needs the chart's `rollout.enabled` for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// One templated key of the output Secret.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// The Secret data key, for example `.env` or `.dockerconfigjson`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
    /// The template (at most 16384 characters).
    #[schemars(length(max = 16384))]
    pub template: String,
}

/// Type of the output Secret.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum SecretType {
    /// An `Opaque` Secret.
    #[default]
    Opaque,
    /// A `kubernetes.io/dockerconfigjson` Secret, usable in `imagePullSecrets`.
    #[serde(rename = "kubernetes.io/dockerconfigjson")]
    DockerConfigJson,
}

impl SecretType {
    /// The Secret's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opaque => "Opaque",
            Self::DockerConfigJson => "kubernetes.io/dockerconfigjson",
        }
    }
}

/// Workloads restarted when the credentials change.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The workloads, in this namespace: 1 to 16 distinct kind and name pairs. Each gets one
    /// restart per change of the Secret's contents (not at the first issue: the pods that
    /// started before it waited for the Secret).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kind".into(), "name".into()]))]
    pub targets: Vec<RolloutTarget>,

    /// The shortest time between two restarts (default `1m`): a change within it waits, and
    /// changes that pile up meanwhile give one restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<Duration>,
}

impl RolloutSpec {
    /// Default of `minInterval`.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_mins(1);

    /// The shortest time between two restarts.
    pub fn min_interval(&self) -> Duration {
        self.min_interval.unwrap_or(Self::DEFAULT_MIN_INTERVAL)
    }
}

/// One workload to restart.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group `apps`).
    pub kind: WorkloadKind,
    /// The workload's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of a restartable workload.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum WorkloadKind {
    /// An `apps/v1` Deployment.
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
    /// An `apps/v1` DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        }
    }
}
