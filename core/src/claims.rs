//! Token claims: validation of an identity against its issuer, subject templates, and the
//! claim set of a token.
//!
//! Everything here is pure: the issue time and the token ID are injected, so the same input
//! always yields the same claims.

use crate::reason::Reason;
use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::{
    crd::{
        Claim, Duration,
        claim::{ClaimError, MAX_CLAIMS},
        identity::MAX_AUDIENCES,
    },
    time::whole_seconds,
};

/// How far `nbf` lies before `iat`, to tolerate relying parties whose clocks run behind.
pub const NOT_BEFORE_BACKDATE_SECONDS: i64 = 5;

/// Longest accepted audience value.
pub const MAX_AUDIENCE_LENGTH: usize = 256;

/// Why a claim set cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// A single claim is malformed or reserved.
    #[error(transparent)]
    InvalidClaim(#[from] ClaimError),
    /// The same claim name is listed twice in one list.
    #[error("claim {name:?} is listed more than once")]
    DuplicateClaim {
        /// The repeated name.
        name: String,
    },
    /// A list has more than [`MAX_CLAIMS`] claims.
    #[error("{count} claims are listed; at most 32 are allowed")]
    TooManyClaims {
        /// Number of claims in the list.
        count: usize,
    },
    /// An identity claim has the name of an issuer claim.
    #[error("claim {name:?} is set by the issuer and cannot be overridden by the identity")]
    ClaimOverridesIssuer {
        /// The conflicting name.
        name: String,
    },
    /// The subject template does not parse.
    #[error("subject template {template:?} is invalid: {problem}")]
    InvalidSubjectTemplate {
        /// The template as written.
        template: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The subject template refers to a claim that neither the identity nor the issuer sets.
    #[error(
        "the subject template uses {{claims.{name}}} but neither the identity nor the issuer \
         sets a claim {name:?}"
    )]
    MissingSubjectClaim {
        /// The missing claim name.
        name: String,
    },
    /// The subject template uses a pod placeholder in a token that belongs to no pod.
    #[error(
        "the subject template uses {{{placeholder}}}, which only per-pod tokens have; set \
         spec.pods on the identity, or use another issuer"
    )]
    SubjectNeedsPod {
        /// The placeholder, for example `pod.name`.
        placeholder: String,
    },
    /// A claim taken from the pod has the name of an issuer or identity claim.
    #[error("pod claim {name:?} is also set by the issuer or the identity")]
    PodClaimConflict {
        /// The conflicting name.
        name: String,
    },
    /// The subject rendered to an empty string.
    #[error("the subject template renders an empty subject")]
    EmptySubject,
    /// The audience list is empty, too long, or has empty or repeated values.
    #[error("audiences are invalid: {problem}")]
    InvalidAudience {
        /// What is wrong with them.
        problem: String,
    },
}

impl ClaimsError {
    /// Stable, machine-readable name of this error kind, usable as a condition reason or
    /// metric label.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidClaim(error) => error.reason(),
            Self::DuplicateClaim { .. } => Reason::DuplicateClaim,
            Self::TooManyClaims { .. } => Reason::TooManyClaims,
            Self::ClaimOverridesIssuer { .. } => Reason::ClaimOverridesIssuer,
            Self::InvalidSubjectTemplate { .. } => Reason::InvalidSubjectTemplate,
            Self::MissingSubjectClaim { .. } => Reason::MissingSubjectClaim,
            Self::SubjectNeedsPod { .. } => Reason::SubjectNeedsPod,
            Self::PodClaimConflict { .. } => Reason::PodClaimConflict,
            Self::EmptySubject => Reason::EmptySubject,
            Self::InvalidAudience { .. } => Reason::InvalidAudience,
        }
    }
}

/// One piece of a parsed subject template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    Namespace,
    Name,
    Claim(String),
    PodName,
    PodUid,
    PodServiceAccount,
    Ci(String),
}

/// The pod a per-pod token is bound to: its binding claims and the claims taken from its
/// labels and annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBinding {
    /// Pod name (the `pod` claim).
    pub name: String,
    /// Pod UID (the `pod_uid` claim).
    pub uid: String,
    /// The pod's service account (the `service_account` claim).
    pub service_account: String,
    /// Claims from the pod's labels and annotations (strings).
    pub ci_claims: Vec<Claim>,
}

/// A parsed `sub` template such as `system:fedid:{namespace}:{name}`.
///
/// Placeholders are `{namespace}`, `{name}`, `{claims.<claimName>}`, and for per-pod tokens
/// `{pod.name}`, `{pod.uid}`, `{pod.serviceAccount}` and `{ci.<claimName>}`. Claim values are
/// escaped so that a value cannot imitate the separator: `%` becomes `%25` and `:` becomes
/// `%3A`. Braces are only allowed around placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    source: String,
    parts: Vec<TemplatePart>,
}

impl SubjectTemplate {
    /// Parses `template`, rejecting unknown placeholders and stray braces.
    pub fn parse(template: &str) -> Result<Self, ClaimsError> {
        let invalid = |problem: String| ClaimsError::InvalidSubjectTemplate {
            template: template.to_owned(),
            problem,
        };
        if template.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let brace = rest.find(['{', '}']).unwrap_or(rest.len());
            let (literal, tail) = rest.split_at(brace);
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(literal.to_owned()));
            }
            if tail.is_empty() {
                break;
            }
            let Some(after_open) = tail.strip_prefix('{') else {
                return Err(invalid("it has a '}' without a matching '{'".to_owned()));
            };
            let close = after_open.find(['{', '}']).unwrap_or(after_open.len());
            let (placeholder, after) = after_open.split_at(close);
            let Some(after_close) = after.strip_prefix('}') else {
                return Err(invalid("it has a '{' without a matching '}'".to_owned()));
            };
            parts.push(match placeholder {
                "namespace" => TemplatePart::Namespace,
                "name" => TemplatePart::Name,
                "pod.name" => TemplatePart::PodName,
                "pod.uid" => TemplatePart::PodUid,
                "pod.serviceAccount" => TemplatePart::PodServiceAccount,
                _ => match (
                    placeholder.strip_prefix("claims."),
                    placeholder.strip_prefix("ci."),
                ) {
                    (Some(claim), _) if crate::crd::claim::is_valid_claim_name(claim) => {
                        TemplatePart::Claim(claim.to_owned())
                    }
                    (_, Some(claim)) if crate::crd::claim::is_valid_claim_name(claim) => {
                        TemplatePart::Ci(claim.to_owned())
                    }
                    _ => {
                        return Err(invalid(format!(
                            "unknown placeholder {{{placeholder}}}; use {{namespace}}, {{name}}, \
                             {{claims.<claimName>}}, {{pod.name}}, {{pod.uid}}, \
                             {{pod.serviceAccount}} or {{ci.<claimName>}}"
                        )));
                    }
                },
            });
            rest = after_close;
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template uses a pod placeholder (`{pod.*}` or `{ci.*}`).
    pub fn needs_pod(&self) -> bool {
        self.parts.iter().any(|part| {
            matches!(
                part,
                TemplatePart::PodName
                    | TemplatePart::PodUid
                    | TemplatePart::PodServiceAccount
                    | TemplatePart::Ci(_)
            )
        })
    }

    /// Renders the subject of the identity `namespace`/`name`, looking claim values up in
    /// `claims`, and pod values in `pod` (a token of no pod cannot use pod placeholders).
    pub fn render<'a>(
        &self,
        namespace: &str,
        name: &str,
        claims: impl IntoIterator<Item = &'a Claim> + Clone,
        pod: Option<&PodBinding>,
    ) -> Result<String, ClaimsError> {
        let needs_pod = |placeholder: &str| ClaimsError::SubjectNeedsPod {
            placeholder: placeholder.to_owned(),
        };
        let mut subject = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => subject.push_str(text),
                TemplatePart::Namespace => subject.push_str(namespace),
                TemplatePart::Name => subject.push_str(name),
                TemplatePart::PodName => {
                    let pod = pod.ok_or_else(|| needs_pod("pod.name"))?;
                    subject.push_str(&escape_subject_value(&pod.name));
                }
                TemplatePart::PodUid => {
                    let pod = pod.ok_or_else(|| needs_pod("pod.uid"))?;
                    subject.push_str(&escape_subject_value(&pod.uid));
                }
                TemplatePart::PodServiceAccount => {
                    let pod = pod.ok_or_else(|| needs_pod("pod.serviceAccount"))?;
                    subject.push_str(&escape_subject_value(&pod.service_account));
                }
                TemplatePart::Ci(claim_name) => {
                    let pod = pod.ok_or_else(|| needs_pod(&format!("ci.{claim_name}")))?;
                    let value = claim_value(&pod.ci_claims, claim_name)?;
                    subject.push_str(&escape_subject_value(&value));
                }
                TemplatePart::Claim(claim_name) => {
                    let value = claim_value(claims.clone(), claim_name)?;
                    subject.push_str(&escape_subject_value(&value));
                }
            }
        }
        if subject.is_empty() {
            return Err(ClaimsError::EmptySubject);
        }
        Ok(subject)
    }
}

/// The text of the claim `name` among `claims`, for a subject template.
fn claim_value<'a>(
    claims: impl IntoIterator<Item = &'a Claim>,
    name: &str,
) -> Result<String, ClaimsError> {
    claims
        .into_iter()
        .find(|claim| claim.name == name)
        .and_then(Claim::value_text)
        .ok_or_else(|| ClaimsError::MissingSubjectClaim {
            name: name.to_owned(),
        })
}

/// Escapes a claim value for use inside `sub`: `%` as `%25`, `:` as `%3A`.
fn escape_subject_value(value: &str) -> String {
    value.replace('%', "%25").replace(':', "%3A")
}

/// Checks every claim of one list (issuer or identity): valid names and values, no reserved
/// names, no duplicates, at most [`MAX_CLAIMS`].
pub fn check_claim_list(claims: &[Claim]) -> Result<(), ClaimsError> {
    if claims.len() > MAX_CLAIMS {
        return Err(ClaimsError::TooManyClaims {
            count: claims.len(),
        });
    }
    let mut seen = BTreeSet::new();
    for claim in claims {
        claim.validated_value()?;
        if !seen.insert(claim.name.as_str()) {
            return Err(ClaimsError::DuplicateClaim {
                name: claim.name.clone(),
            });
        }
    }
    Ok(())
}

fn check_audiences(audiences: &[String]) -> Result<(), ClaimsError> {
    let invalid = |problem: &str| ClaimsError::InvalidAudience {
        problem: problem.to_owned(),
    };
    if audiences.is_empty() {
        return Err(invalid("at least one audience is required"));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(invalid("at most 10 audiences are allowed"));
    }
    if audiences.iter().any(String::is_empty) {
        return Err(invalid("an audience is empty"));
    }
    if audiences
        .iter()
        .any(|audience| audience.chars().count() > MAX_AUDIENCE_LENGTH)
    {
        return Err(invalid("an audience is longer than 256 characters"));
    }
    let distinct: BTreeSet<&String> = audiences.iter().collect();
    if distinct.len() != audiences.len() {
        return Err(invalid("an audience is listed more than once"));
    }
    Ok(())
}

fn check_no_override(
    issuer_claims: &[Claim],
    identity_claims: &[Claim],
) -> Result<(), ClaimsError> {
    match identity_claims
        .iter()
        .find(|claim| issuer_claims.iter().any(|other| other.name == claim.name))
    {
        Some(claim) => Err(ClaimsError::ClaimOverridesIssuer {
            name: claim.name.clone(),
        }),
        None => Ok(()),
    }
}

/// Everything the claims of an identity's tokens are computed from.
#[derive(Clone, Debug)]
pub struct ClaimsInput<'a> {
    /// The `iss` claim.
    pub issuer_url: &'a str,
    /// Template of the `sub` claim, parsed once with the issuer's spec.
    pub subject_template: &'a SubjectTemplate,
    /// Static claims of the issuer.
    pub issuer_claims: &'a [Claim],
    /// Namespace of the FederatedIdentity (the `namespace` claim).
    pub namespace: &'a str,
    /// Name of the FederatedIdentity (the `identity` claim).
    pub name: &'a str,
    /// Static claims of the identity.
    pub identity_claims: &'a [Claim],
    /// The `aud` claim: a string for one audience, an array for several.
    pub audiences: &'a [String],
    /// Token lifetime: `exp` is `iat` plus this.
    pub lifetime: Duration,
    /// The pod of a per-pod token.
    pub pod: Option<&'a PodBinding>,
}

/// The claims every token of one identity carries, checked and rendered once: `iss`, `sub`,
/// `aud`, `namespace`, `identity`, then the issuer's and the identity's static claims. A token
/// adds its own `iat`, `exp`, `nbf` and `jti` through [`token_claims`](Self::token_claims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimTemplate {
    claims: Map<String, Value>,
    lifetime: Duration,
}

impl ClaimTemplate {
    /// Checks the audiences and both claim lists (valid, not reserved, no duplicates, no
    /// identity claim overriding an issuer claim), renders `sub`, and builds the shared claims.
    pub fn build(input: &ClaimsInput<'_>) -> Result<Self, ClaimsError> {
        check_audiences(input.audiences)?;
        check_claim_list(input.issuer_claims)?;
        check_claim_list(input.identity_claims)?;
        check_no_override(input.issuer_claims, input.identity_claims)?;
        if let Some(pod) = input.pod {
            check_claim_list(&pod.ci_claims)?;
            let set_elsewhere = |name: &str| {
                input
                    .issuer_claims
                    .iter()
                    .chain(input.identity_claims)
                    .any(|claim| claim.name == name)
            };
            if let Some(claim) = pod
                .ci_claims
                .iter()
                .find(|claim| set_elsewhere(&claim.name))
            {
                return Err(ClaimsError::PodClaimConflict {
                    name: claim.name.clone(),
                });
            }
        }
        let subject = input.subject_template.render(
            input.namespace,
            input.name,
            input.identity_claims.iter().chain(input.issuer_claims),
            input.pod,
        )?;
        let audience = match input.audiences {
            [single] => Value::String(single.clone()),
            several => Value::from(several.to_vec()),
        };
        let mut claims = Map::new();
        claims.insert("iss".into(), input.issuer_url.into());
        claims.insert("sub".into(), subject.into());
        claims.insert("aud".into(), audience);
        claims.insert("namespace".into(), input.namespace.into());
        claims.insert("identity".into(), input.name.into());
        for claim in input.issuer_claims.iter().chain(input.identity_claims) {
            claims.insert(claim.name.clone(), claim.validated_value()?);
        }
        if let Some(pod) = input.pod {
            claims.insert("pod".into(), pod.name.clone().into());
            claims.insert("pod_uid".into(), pod.uid.clone().into());
            claims.insert("service_account".into(), pod.service_account.clone().into());
            for claim in &pod.ci_claims {
                claims.insert(claim.name.clone(), claim.validated_value()?);
            }
        }
        Ok(Self {
            claims,
            lifetime: input.lifetime,
        })
    }

    /// The claims shared by every token of the identity.
    pub fn stable_claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The rendered `sub` claim.
    pub fn subject(&self) -> &str {
        self.claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The full claim set of a token issued at `issued_at` (truncated to whole seconds) with
    /// token ID `jti`: the shared claims plus `iat`, `exp` (`iat` + lifetime), `nbf` (5 s before
    /// `iat`) and `jti`.
    pub fn token_claims(&self, issued_at: Timestamp, jti: &str) -> Map<String, Value> {
        let issued_at = whole_seconds(issued_at).as_second();
        let expires_at = issued_at.saturating_add(i64::from(self.lifetime.as_secs()));
        let mut claims = self.claims.clone();
        claims.insert("exp".into(), expires_at.into());
        claims.insert(
            "nbf".into(),
            issued_at.saturating_sub(NOT_BEFORE_BACKDATE_SECONDS).into(),
        );
        claims.insert("iat".into(), issued_at.into());
        claims.insert("jti".into(), jti.into());
        claims
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEMPLATE: &str = "system:fedid:{namespace}:{name}";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn audiences(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| (*value).to_owned()).collect()
    }

    struct Fixture {
        template: String,
        issuer_claims: Vec<Claim>,
        identity_claims: Vec<Claim>,
        audiences: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                template: TEMPLATE.to_owned(),
                issuer_claims: vec![Claim::string("cluster", "prod-eu")],
                identity_claims: vec![
                    Claim::string("repository", "acme/web"),
                    Claim::integer("tier", 2),
                ],
                audiences: audiences(&["sts.amazonaws.com"]),
            }
        }

        fn build(&self) -> Result<Map<String, Value>, ClaimsError> {
            let template = ClaimTemplate::build(&ClaimsInput {
                issuer_url: "https://issuer.example.com",
                subject_template: &SubjectTemplate::parse(&self.template)?,
                issuer_claims: &self.issuer_claims,
                namespace: "ci",
                name: "deploy",
                identity_claims: &self.identity_claims,
                audiences: &self.audiences,
                lifetime: Duration::from_hours(1),
                pod: None,
            })?;
            Ok(template.token_claims(at(1_800_000_000), "token-1"))
        }
    }

    #[test]
    fn builds_the_full_claim_set() {
        let claims = Fixture::new().build().expect("claims");
        assert_eq!(
            Value::Object(claims),
            json!({
                "iss": "https://issuer.example.com",
                "sub": "system:fedid:ci:deploy",
                "aud": "sts.amazonaws.com",
                "exp": 1_800_003_600,
                "nbf": 1_799_999_995,
                "iat": 1_800_000_000,
                "jti": "token-1",
                "namespace": "ci",
                "identity": "deploy",
                "cluster": "prod-eu",
                "repository": "acme/web",
                "tier": 2,
            })
        );
    }

    #[test]
    fn several_audiences_become_an_array() {
        let mut fixture = Fixture::new();
        fixture.audiences = audiences(&["a", "b"]);
        let claims = fixture.build().expect("claims");
        assert_eq!(claims["aud"], json!(["a", "b"]));
    }

    #[test]
    fn issue_time_is_truncated_to_whole_seconds() {
        let fixture = Fixture::new();
        let template = ClaimTemplate::build(&ClaimsInput {
            issuer_url: "https://issuer.example.com",
            subject_template: &SubjectTemplate::parse(TEMPLATE).expect("template"),
            issuer_claims: &fixture.issuer_claims,
            namespace: "ci",
            name: "deploy",
            identity_claims: &fixture.identity_claims,
            audiences: &fixture.audiences,
            lifetime: Duration::from_mins(10),
            pod: None,
        })
        .expect("claims");
        let claims = template.token_claims(
            at(1_800_000_000)
                .checked_add(jiff::SignedDuration::from_millis(900))
                .expect("in range"),
            "j",
        );
        assert_eq!(claims["iat"], json!(1_800_000_000));
        assert_eq!(claims["exp"], json!(1_800_000_600));
        assert_eq!(claims["nbf"], json!(1_799_999_995));
    }

    #[test]
    fn reserved_claims_are_rejected_from_either_side() {
        for name in crate::crd::RESERVED_CLAIMS {
            let mut identity_side = Fixture::new();
            identity_side
                .identity_claims
                .push(Claim::string(*name, "x"));
            assert_eq!(
                identity_side
                    .build()
                    .map_err(|error| error.reason().as_str()),
                Err("ReservedClaim"),
                "{name}"
            );
            let mut issuer_side = Fixture::new();
            issuer_side.issuer_claims.push(Claim::boolean(*name, true));
            assert_eq!(
                issuer_side.build().map_err(|error| error.reason().as_str()),
                Err("ReservedClaim"),
                "{name}"
            );
        }
    }

    #[test]
    fn identity_claims_cannot_override_issuer_claims() {
        let mut fixture = Fixture::new();
        fixture
            .identity_claims
            .push(Claim::string("cluster", "attacker"));
        let error = fixture.build().expect_err("override rejected");
        assert_eq!(
            error,
            ClaimsError::ClaimOverridesIssuer {
                name: "cluster".into()
            }
        );
        assert_eq!(error.reason(), "ClaimOverridesIssuer");
        assert!(error.to_string().contains("cannot be overridden"));
    }

    #[test]
    fn duplicate_and_malformed_claims_are_rejected() {
        let mut duplicate = Fixture::new();
        duplicate
            .identity_claims
            .push(Claim::integer("repository", 1));
        assert_eq!(
            duplicate.build().map_err(|error| error.reason().as_str()),
            Err("DuplicateClaim")
        );

        let mut no_value = Fixture::new();
        no_value.identity_claims.push(Claim {
            name: "empty".into(),
            string: None,
            boolean: None,
            integer: None,
        });
        assert_eq!(
            no_value.build().map_err(|error| error.reason().as_str()),
            Err("InvalidClaimValue")
        );

        let mut too_many = Fixture::new();
        too_many.identity_claims = (0..33)
            .map(|index| Claim::integer(format!("c{index}"), index))
            .collect();
        assert_eq!(
            too_many.build().map_err(|error| error.reason().as_str()),
            Err("TooManyClaims")
        );
    }

    #[test]
    fn audiences_are_checked() {
        for (values, problem) in [
            (vec![], "at least one"),
            (vec![""], "empty"),
            (vec!["a", "a"], "more than once"),
            (vec!["a"; 11], "at most 10"),
        ] {
            let mut fixture = Fixture::new();
            fixture.audiences = audiences(&values);
            let error = fixture.build().expect_err("invalid audiences");
            assert_eq!(error.reason(), "InvalidAudience");
            assert!(error.to_string().contains(problem), "{error}");
        }
    }

    #[test]
    fn subject_template_renders_placeholders_and_escapes_claim_values() {
        let template =
            SubjectTemplate::parse("repo:{claims.repository}:ref:{claims.ref}:{namespace}/{name}")
                .expect("parses");
        let claims = [
            Claim::string("repository", "acme/web"),
            Claim::string("ref", "refs/tags/v1:rc%2"),
        ];
        assert_eq!(
            template
                .render("ci", "deploy", &claims, None)
                .expect("renders"),
            "repo:acme/web:ref:refs/tags/v1%3Arc%252:ci/deploy"
        );
        let typed = SubjectTemplate::parse("{claims.n}-{claims.b}").expect("parses");
        assert_eq!(
            typed
                .render(
                    "ns",
                    "n",
                    &[Claim::integer("n", -3), Claim::boolean("b", true)],
                    None
                )
                .expect("renders"),
            "-3-true"
        );
    }

    #[test]
    fn subject_escaping_keeps_distinct_values_distinct() {
        let template = SubjectTemplate::parse("{claims.a}").expect("parses");
        let render = |value: &str| {
            template
                .render("ns", "n", &[Claim::string("a", value)], None)
                .expect("renders")
        };
        assert_ne!(render("x:y"), render("x%3Ay"));
        assert_eq!(render("x:y"), "x%3Ay");
        assert_eq!(render("x%3Ay"), "x%253Ay");
    }

    #[test]
    fn namespace_and_name_are_not_escaped() {
        let template = SubjectTemplate::parse(TEMPLATE).expect("parses");
        assert_eq!(
            template
                .render("team-a", "web.deploy", &[], None)
                .expect("renders"),
            "system:fedid:team-a:web.deploy"
        );
    }

    #[test]
    fn subject_template_errors() {
        for (template, problem) in [
            ("", "empty"),
            ("{namespace", "without a matching '}'"),
            ("{nam{e}", "without a matching '}'"),
            ("name}", "'}' without a matching '{'"),
            ("{uid}", "unknown placeholder {uid}"),
            ("{claims.}", "unknown placeholder"),
            ("{claims.1x}", "unknown placeholder"),
            ("{Namespace}", "unknown placeholder"),
        ] {
            let error = SubjectTemplate::parse(template).expect_err(template);
            assert_eq!(error.reason(), "InvalidSubjectTemplate");
            assert!(error.to_string().contains(problem), "{template}: {error}");
        }
        let mut fixture = Fixture::new();
        fixture.template = "{bogus}".into();
        assert_eq!(
            fixture.build().map_err(|error| error.reason().as_str()),
            Err("InvalidSubjectTemplate")
        );
    }

    #[test]
    fn subject_claims_must_exist_and_subject_must_not_be_empty() {
        let mut fixture = Fixture::new();
        fixture.template = "{claims.environment}".into();
        assert_eq!(
            fixture.build(),
            Err(ClaimsError::MissingSubjectClaim {
                name: "environment".into()
            })
        );
        // Issuer claims are available to the template too.
        fixture.template = "{claims.cluster}:{claims.repository}".into();
        assert_eq!(
            fixture.build().expect("claims")["sub"],
            json!("prod-eu:acme/web")
        );

        fixture.template = "{claims.blank}".into();
        fixture.identity_claims.push(Claim::string("blank", ""));
        assert_eq!(fixture.build(), Err(ClaimsError::EmptySubject));
    }
}
