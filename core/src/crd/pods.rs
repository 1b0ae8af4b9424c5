//! `FederatedIdentity.spec.pods`: the identity as a template that CI job pods opt into, each
//! pod getting its own token with the job's claims.

use kube_derive::KubeSchema;
use serde::{Deserialize, Serialize};

/// Label a pod sets to opt into the FederatedIdentity of that name in its own namespace.
pub const POD_IDENTITY_LABEL: &str = "fedid.dev/identity";

/// Annotation the webhook records on a pod: the name of the Secret it mounted.
pub const POD_SECRET_ANNOTATION: &str = "fedid.dev/secret-name";

/// Where the pod's Secret is mounted when neither `spec.pods.mountPath` nor the exchange says.
pub const DEFAULT_POD_MOUNT_PATH: &str = "/var/run/secrets/fedid";

/// Where the webhook mounts the projected service-account token a pod sends to `POST
/// /v1/token`.
pub const TOKEN_REQUEST_MOUNT_PATH: &str = "/var/run/secrets/fedid-request";

/// Most rules in `spec.pods.claims`, and most service accounts in `spec.pods.serviceAccounts`.
pub const MAX_POD_RULES: usize = 32;

/// Per-pod tokens: pods labelled `fedid.dev/identity: <this identity's name>` in this
/// namespace get a Secret of their own, owned by the pod, holding a token with the
/// identity's claims plus the pod's (`pod`, `pod_uid`, `service_account`) and CI claims
/// taken from the pod's labels and annotations. The identity then writes no shared Secret.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PodsSpec {
    /// Service accounts (in this namespace) whose pods may use the identity. Empty: any pod
    /// of the namespace. Restrict it to the CI system's service account: claims taken from
    /// labels are only as trustworthy as the right to create pods with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub service_accounts: Vec<String>,

    /// A CI system whose pod labels and annotations become claims: `tekton`,
    /// `argo-workflows`, `gitlab`, `buildkite` or `jenkins` (see docs/ci-presets.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<CiPreset>,

    /// Claims taken from the pod's labels or annotations, in addition to the preset's; a rule
    /// with the name of a preset claim replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub claims: Vec<PodClaimRule>,

    /// Audiences a pod may ask for at fedid's token endpoint (`POST /v1/token`, `fedid token
    /// request --audience …`). Empty: the pod cannot request tokens. When set, the webhook
    /// also mounts a projected service-account token for fedid and sets `FEDID_TOKEN_URL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_audiences: Vec<String>,

    /// Where the webhook mounts the pod's Secret in every container. Defaults to the
    /// exchange's `mountPath` (aws, gcp), otherwise `/var/run/secrets/fedid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/') && !self.contains(':') && !self.contains('..')")
            .message("pods.mountPath must be an absolute path without ':' or '..'")
    )]
    pub mount_path: Option<String>,

    /// An AWS role for SDKs that exchange the token themselves: the webhook sets
    /// `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` (identities without `exchange.aws`).
    #[serde(
        default,
        rename = "awsRoleARN",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(
        length(min = 20, max = 2048),
        regex(pattern = r"^arn:[a-z-]+:iam::\d{12}:role/.+$")
    )]
    pub aws_role_arn: Option<String>,
}

/// A CI system whose job pods carry labels and annotations fedid maps to claims.
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
#[serde(rename_all = "kebab-case")]
pub enum CiPreset {
    /// Tekton Pipelines TaskRun pods.
    Tekton,
    /// Argo Workflows step pods.
    ArgoWorkflows,
    /// GitLab Runner's Kubernetes executor build pods.
    Gitlab,
    /// Buildkite agent-stack-k8s job pods.
    Buildkite,
    /// Jenkins Kubernetes plugin agent pods.
    Jenkins,
}

impl CiPreset {
    /// The name as written in `spec.pods.preset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tekton => "tekton",
            Self::ArgoWorkflows => "argo-workflows",
            Self::Gitlab => "gitlab",
            Self::Buildkite => "buildkite",
            Self::Jenkins => "jenkins",
        }
    }
}

/// One claim taken from a pod's label or annotation.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("has(self.fromLabel) != has(self.fromAnnotation)")
        .message("a pod claim sets exactly one of fromLabel, fromAnnotation"),
    validation = Rule::new("!(self.name in ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'namespace', 'identity', 'pod', 'pod_uid', 'service_account'])")
        .message("claim name is reserved: iss, sub, aud, exp, nbf, iat, jti, namespace, identity, pod, pod_uid and service_account are set by fedid")
)]
#[serde(rename_all = "camelCase")]
pub struct PodClaimRule {
    /// Claim name in the token (same rules as static claims).
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
    )]
    pub name: String,

    /// Key of the pod label whose value becomes the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub from_label: Option<String>,

    /// Key of the pod annotation whose value becomes the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub from_annotation: Option<String>,

    /// When `true`, a pod without that label or annotation gets no token (the pod's Event
    /// says which is missing). Default `false`: the claim is left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// Where a pod claim's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodField<'a> {
    /// A label key.
    Label(&'a str),
    /// An annotation key.
    Annotation(&'a str),
}

impl PodClaimRule {
    /// The label or annotation the value comes from; `None` when the rule names neither or
    /// both (the schema forbids it).
    pub fn field(&self) -> Option<PodField<'_>> {
        match (&self.from_label, &self.from_annotation) {
            (Some(label), None) => Some(PodField::Label(label)),
            (None, Some(annotation)) => Some(PodField::Annotation(annotation)),
            _ => None,
        }
    }
}
