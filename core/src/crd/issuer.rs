//! The cluster-scoped `IdentityIssuer` resource: one OIDC issuer with its signing keys.

use crate::reason::Reason;
use std::{collections::BTreeMap, fmt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube_core::ResourceExt;
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{claim::Claim, duration::Duration};
use crate::label_selector::{SelectorError, selector_matches};

/// Annotation that marks the issuer used by identities without `spec.issuerRef`; the value
/// must be `"true"`.
pub const DEFAULT_ISSUER_ANNOTATION: &str = "fedid.dev/default-issuer";

/// Annotation that requests a key rotation: every new value prepares a new signing key.
pub const ROTATE_KEYS_ANNOTATION: &str = "fedid.dev/rotate-keys";

/// Subject template used when `spec.subjectTemplate` is omitted.
pub const DEFAULT_SUBJECT_TEMPLATE: &str = "system:fedid:{namespace}:{name}";

/// Shortest default token lifetime an issuer may configure, and the operator's default minimum
/// for the lifetime of any token.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_mins(10);

/// Longest token lifetime an issuer may allow.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_hours(24);

/// An OIDC issuer served by fedid.
///
/// fedid keeps the issuer's signing keys in a Secret in the operator namespace, rotates them,
/// and serves the discovery document and JWKS under `spec.issuerURL`. FederatedIdentities in
/// allowed namespaces get tokens signed by this issuer.
// The printer columns repeat `type_ = "..."`, which clippy mistakes for duplicated attributes.
#[expect(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "fedid.dev",
    version = "v1alpha1",
    kind = "IdentityIssuer",
    status = "IdentityIssuerStatus",
    shortname = "idissuer",
    derive = "PartialEq",
    doc = "An OIDC issuer whose signing keys fedid manages and whose discovery document and JWKS it serves.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.issuerURL"),
    printcolumn(
        name = "Active Key",
        type_ = "string",
        json_path = ".status.activeKeyID"
    ),
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotationTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IdentityIssuerSpec {
    /// The issuer URL, used verbatim as the `iss` claim. It must be an https URL with a host,
    /// without user information, query, fragment or trailing slash, for example
    /// `https://ci-issuer.example.com` or `https://example.com/fedid/ci`. The discovery
    /// document is served at `<issuerURL>/.well-known/openid-configuration`.
    #[serde(rename = "issuerURL")]
    #[schemars(length(min = 9, max = 512))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() == 'https' && url(self).getHost() != ''")
            .message("issuerURL must be an https URL with a host"),
        validation = Rule::new("!self.contains('?') && !self.contains('#')")
            .message("issuerURL must not contain a query or fragment"),
        validation = Rule::new("!self.endsWith('/')").message("issuerURL must not have a trailing slash"),
        validation = Rule::new("!self.matches('^[^/]*//[^/]*@')")
            .message("issuerURL must not contain user information")
    )]
    pub issuer_url: String,

    /// How tokens are signed and how often the signing key rotates.
    #[serde(default)]
    pub signing: SigningSpec,

    /// Namespaces whose FederatedIdentities may use this issuer. When omitted, no namespace
    /// may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<AllowedNamespaces>,

    /// Default and maximum lifetime of the tokens this issuer signs.
    #[serde(default)]
    pub token_lifetime: TokenLifetime,

    /// Static claims added to every token of this issuer. Identities cannot override them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub claims: Vec<Claim>,

    /// Template for the `sub` claim. Placeholders: `{namespace}` and `{name}` of the
    /// FederatedIdentity, `{claims.<claimName>}` for the value of an identity or issuer
    /// claim, and for per-pod tokens (identities with `spec.pods`) `{pod.name}`, `{pod.uid}`,
    /// `{pod.serviceAccount}` and `{ci.<claimName>}` for a claim taken from the pod (`%` and
    /// `:` in values are written as `%25` and `%3A`). Defaults to
    /// `system:fedid:{namespace}:{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^([^{}]|\\{(namespace|name|pod\\.name|pod\\.uid|pod\\.serviceAccount|(claims|ci)\\.[A-Za-z_][A-Za-z0-9_.:/-]*)\\})*$')")
            .message("subjectTemplate may only use the placeholders {namespace}, {name}, {claims.<claimName>}, {pod.name}, {pod.uid}, {pod.serviceAccount} and {ci.<claimName>}")
    )]
    pub subject_template: Option<String>,

    /// Which token services this issuer's identities may exchange their tokens at. When
    /// omitted, they cannot exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<super::exchange::ExchangePolicy>,
}

/// Signing algorithm of an issuer's keys.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit RSA key; accepted by every major cloud.
    #[default]
    RS256,
    /// ECDSA with SHA-256 on the P-256 curve; smaller tokens, not accepted everywhere.
    ES256,
}

impl SigningAlgorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signing algorithm and key rotation schedule.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.rotationPeriod) || !has(self.prepublishPeriod) || duration(self.rotationPeriod) > duration(self.prepublishPeriod)")
        .message("signing.rotationPeriod must be longer than signing.prepublishPeriod")
)]
pub struct SigningSpec {
    /// Algorithm of newly created keys: RS256 (default) or ES256. Changing it prepares a key
    /// with the new algorithm, which takes over after the prepublish period.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,

    /// How long a key signs before the next key takes over, for example `720h` (default).
    #[serde(default = "default_rotation_period")]
    pub rotation_period: Duration,

    /// How long a new key is published in the JWKS before it signs (default `2h`), so relying
    /// parties that cache the JWKS learn it in time. The JWKS is served with a cache max-age
    /// of half this period, capped at one hour. `0s` activates new keys at once.
    #[serde(default = "default_prepublish_period")]
    pub prepublish_period: Duration,

    /// Extra time a retired key stays published after the last token it signed has expired
    /// (default `1h`), to absorb clock skew and caches.
    #[serde(default = "default_retirement_margin")]
    pub retirement_margin: Duration,
}

fn default_rotation_period() -> Duration {
    Duration::from_hours(720)
}

fn default_prepublish_period() -> Duration {
    Duration::from_hours(2)
}

fn default_retirement_margin() -> Duration {
    Duration::from_hours(1)
}

impl Default for SigningSpec {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::default(),
            rotation_period: default_rotation_period(),
            prepublish_period: default_prepublish_period(),
            retirement_margin: default_retirement_margin(),
        }
    }
}

/// Namespaces allowed to use an issuer. A namespace is allowed if `all` is true, or it is
/// listed in `names`, or its labels match `selector`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Allow every namespace.
    #[serde(default)]
    pub all: bool,

    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub names: Vec<String>,

    /// Namespaces allowed by label. An empty selector (`{}`) matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

impl AllowedNamespaces {
    /// Whether the namespace's labels can change the answer of [`allows`](Self::allows): only
    /// when a selector is set and neither `all` nor `names` already allows the namespace.
    pub fn needs_labels(&self, namespace: &str) -> bool {
        self.selector.is_some() && !(self.all || self.names.iter().any(|name| name == namespace))
    }

    /// Whether a namespace with this name and these labels may use the issuer.
    pub fn allows(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, SelectorError> {
        if self.all || self.names.iter().any(|name| name == namespace) {
            return Ok(true);
        }
        match &self.selector {
            Some(selector) => selector_matches(selector, labels),
            None => Ok(false),
        }
    }
}

/// Default and maximum token lifetime.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.default) || !has(self.maximum) || duration(self.default) <= duration(self.maximum)")
        .message("tokenLifetime.default must not be longer than tokenLifetime.maximum")
)]
pub struct TokenLifetime {
    /// Lifetime of tokens whose identity does not set one (default `1h`, at least `10m`).
    #[serde(default = "default_token_lifetime")]
    #[x_kube(
        validation = Rule::new("duration(self) >= duration('10m')")
            .message("tokenLifetime.default must be at least 10m")
    )]
    pub default: Duration,

    /// Longest lifetime an identity may request (default `24h`, at most `24h`). Retired
    /// signing keys stay published for this long plus the retirement margin.
    #[serde(default = "default_maximum_token_lifetime")]
    #[x_kube(
        validation = Rule::new("duration(self) <= duration('24h')")
            .message("tokenLifetime.maximum must be at most 24h")
    )]
    pub maximum: Duration,
}

fn default_token_lifetime() -> Duration {
    Duration::from_hours(1)
}

fn default_maximum_token_lifetime() -> Duration {
    MAX_TOKEN_LIFETIME
}

impl Default for TokenLifetime {
    fn default() -> Self {
        Self {
            default: default_token_lifetime(),
            maximum: default_maximum_token_lifetime(),
        }
    }
}

/// Observed state of an IdentityIssuer.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct IdentityIssuerStatus {
    /// Current conditions; `Ready` is true when a signing key is active and published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Key ID (`kid`) of the key that currently signs tokens.
    #[serde(
        default,
        rename = "activeKeyID",
        skip_serializing_if = "Option::is_none"
    )]
    pub active_key_id: Option<String>,

    /// Key IDs currently published in the JWKS, including keys not yet signing and retired
    /// keys whose tokens may still be valid.
    #[serde(
        default,
        rename = "publishedKeyIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub published_key_ids: Vec<String>,

    /// When the next signing key takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,

    /// URL of the OpenID discovery document.
    #[serde(
        default,
        rename = "discoveryURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub discovery_url: Option<String>,

    /// URL of the JSON Web Key Set.
    #[serde(default, rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
}

impl IdentityIssuer {
    /// Whether the issuer carries the default-issuer annotation with the value `"true"`.
    pub fn is_default(&self) -> bool {
        self.annotations()
            .get(DEFAULT_ISSUER_ANNOTATION)
            .is_some_and(|value| value == "true")
    }

    /// The current value of the rotate-keys annotation, if set.
    pub fn rotation_request(&self) -> Option<&str> {
        self.annotations()
            .get(ROTATE_KEYS_ANNOTATION)
            .map(String::as_str)
    }

    /// Whether [`allows_namespace`](Self::allows_namespace) needs the namespace's labels to
    /// decide for `namespace`; when not, any labels (none) give the same answer.
    pub fn needs_namespace_labels(&self, namespace: &str) -> bool {
        self.spec
            .allowed_namespaces
            .as_ref()
            .is_some_and(|allowed| allowed.needs_labels(namespace))
    }

    /// Whether a namespace with this name and labels may use the issuer. An issuer without
    /// `allowedNamespaces` allows no namespace.
    pub fn allows_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, SelectorError> {
        match &self.spec.allowed_namespaces {
            Some(allowed) => allowed.allows(namespace, labels),
            None => Ok(false),
        }
    }
}

/// Why no default issuer could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefaultIssuerError {
    /// No issuer carries the default-issuer annotation.
    #[error(
        "no IdentityIssuer is annotated {DEFAULT_ISSUER_ANNOTATION}=\"true\"; set \
         spec.issuerRef or mark one issuer as the default"
    )]
    NoDefault,
    /// Several issuers carry the annotation.
    #[error(
        "several IdentityIssuers are annotated {DEFAULT_ISSUER_ANNOTATION}=\"true\" ({}); \
         set spec.issuerRef or keep the annotation on one issuer only",
        names.join(", ")
    )]
    Ambiguous {
        /// Names of the annotated issuers, sorted.
        names: Vec<String>,
    },
}

impl DefaultIssuerError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NoDefault => Reason::NoDefaultIssuer,
            Self::Ambiguous { .. } => Reason::AmbiguousDefaultIssuer,
        }
    }
}

/// The single issuer marked as the default among `issuers`.
pub fn default_issuer<'a>(
    issuers: impl IntoIterator<Item = &'a IdentityIssuer>,
) -> Result<&'a IdentityIssuer, DefaultIssuerError> {
    let mut defaults: Vec<&IdentityIssuer> = issuers
        .into_iter()
        .filter(|issuer| issuer.is_default())
        .collect();
    match defaults.len() {
        0 => Err(DefaultIssuerError::NoDefault),
        1 => defaults.pop().ok_or(DefaultIssuerError::NoDefault),
        _ => {
            let mut names: Vec<String> = defaults.iter().map(|issuer| issuer.name_any()).collect();
            names.sort();
            Err(DefaultIssuerError::Ambiguous { names })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn issuer(name: &str, annotations: &[(&str, &str)]) -> IdentityIssuer {
        let mut issuer = IdentityIssuer::new(
            name,
            serde_json::from_value(json!({"issuerURL": "https://issuer.example.com"}))
                .expect("minimal spec"),
        );
        issuer.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        );
        issuer
    }

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let spec: IdentityIssuerSpec =
            serde_json::from_value(json!({"issuerURL": "https://issuer.example.com"}))
                .expect("minimal spec");
        assert_eq!(spec.signing.algorithm, SigningAlgorithm::RS256);
        assert_eq!(spec.signing.rotation_period, Duration::from_hours(720));
        assert_eq!(spec.signing.prepublish_period, Duration::from_hours(2));
        assert_eq!(spec.signing.retirement_margin, Duration::from_hours(1));
        assert_eq!(spec.token_lifetime.default, Duration::from_hours(1));
        assert_eq!(spec.token_lifetime.maximum, Duration::from_hours(24));
        assert_eq!(spec.allowed_namespaces, None);
        assert!(spec.claims.is_empty());
        assert_eq!(spec.subject_template, None);
    }

    #[test]
    fn spec_uses_the_documented_field_names() {
        let spec: IdentityIssuerSpec = serde_json::from_value(json!({
            "issuerURL": "https://issuer.example.com/ci",
            "signing": {"algorithm": "ES256", "rotationPeriod": "48h", "prepublishPeriod": "0s"},
            "allowedNamespaces": {"names": ["ci"]},
            "tokenLifetime": {"default": "15m"},
            "claims": [{"name": "cluster", "string": "prod-eu"}],
            "subjectTemplate": "{namespace}/{name}"
        }))
        .expect("full spec");
        assert_eq!(spec.issuer_url, "https://issuer.example.com/ci");
        assert_eq!(spec.signing.algorithm, SigningAlgorithm::ES256);
        assert_eq!(spec.signing.prepublish_period, Duration::ZERO);
        assert_eq!(spec.signing.retirement_margin, Duration::from_hours(1));
        assert_eq!(spec.token_lifetime.default, Duration::from_mins(15));
        assert_eq!(spec.token_lifetime.maximum, Duration::from_hours(24));
        assert_eq!(spec.claims, vec![Claim::string("cluster", "prod-eu")]);
        let round_trip = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(
            round_trip["issuerURL"],
            json!("https://issuer.example.com/ci")
        );
        assert_eq!(round_trip["signing"]["rotationPeriod"], json!("48h"));
    }

    #[test]
    fn status_uses_the_documented_field_names() {
        let status = IdentityIssuerStatus {
            active_key_id: Some("k1".into()),
            published_key_ids: vec!["k1".into(), "k2".into()],
            discovery_url: Some("d".into()),
            jwks_url: Some("j".into()),
            observed_generation: Some(3),
            ..IdentityIssuerStatus::default()
        };
        assert_eq!(
            serde_json::to_value(&status).expect("serializes"),
            json!({
                "activeKeyID": "k1",
                "publishedKeyIDs": ["k1", "k2"],
                "discoveryURL": "d",
                "jwksURL": "j",
                "observedGeneration": 3
            })
        );
    }

    #[test]
    fn omitted_allowed_namespaces_allows_nothing() {
        let issuer = issuer("ci", &[]);
        assert_eq!(
            issuer.allows_namespace("default", &BTreeMap::new()),
            Ok(false)
        );
    }

    #[test]
    fn namespaces_are_allowed_by_all_name_or_selector() {
        let by_name = AllowedNamespaces {
            names: vec!["ci".into()],
            ..AllowedNamespaces::default()
        };
        assert_eq!(by_name.allows("ci", &BTreeMap::new()), Ok(true));
        assert_eq!(by_name.allows("web", &BTreeMap::new()), Ok(false));

        let all = AllowedNamespaces {
            all: true,
            ..AllowedNamespaces::default()
        };
        assert_eq!(all.allows("anything", &BTreeMap::new()), Ok(true));

        let by_label = AllowedNamespaces {
            selector: Some(LabelSelector {
                match_labels: Some([("fedid".to_owned(), "on".to_owned())].into()),
                match_expressions: None,
            }),
            ..AllowedNamespaces::default()
        };
        let labelled = [("fedid".to_owned(), "on".to_owned())].into();
        assert_eq!(by_label.allows("web", &labelled), Ok(true));
        assert_eq!(by_label.allows("web", &BTreeMap::new()), Ok(false));
    }

    #[test]
    fn annotations_mark_default_and_request_rotation() {
        let plain = issuer("a", &[]);
        assert!(!plain.is_default());
        assert_eq!(plain.rotation_request(), None);

        let marked = issuer(
            "b",
            &[
                (DEFAULT_ISSUER_ANNOTATION, "true"),
                (ROTATE_KEYS_ANNOTATION, "2026-01-01"),
            ],
        );
        assert!(marked.is_default());
        assert_eq!(marked.rotation_request(), Some("2026-01-01"));

        assert!(!issuer("c", &[(DEFAULT_ISSUER_ANNOTATION, "yes")]).is_default());
    }

    #[test]
    fn default_issuer_must_be_unique() {
        let first = issuer("first", &[(DEFAULT_ISSUER_ANNOTATION, "true")]);
        let second = issuer("second", &[(DEFAULT_ISSUER_ANNOTATION, "true")]);
        let plain = issuer("plain", &[]);

        let chosen = default_issuer([&plain, &first]).expect("one default");
        assert_eq!(chosen.name_any(), "first");

        assert_eq!(
            default_issuer([&plain]).map(ResourceExt::name_any),
            Err(DefaultIssuerError::NoDefault)
        );
        let ambiguous = default_issuer([&second, &plain, &first]).expect_err("two defaults");
        assert_eq!(
            ambiguous,
            DefaultIssuerError::Ambiguous {
                names: vec!["first".into(), "second".into()]
            }
        );
        assert_eq!(ambiguous.reason(), "AmbiguousDefaultIssuer");
        assert!(ambiguous.to_string().contains("first, second"));
    }
}
