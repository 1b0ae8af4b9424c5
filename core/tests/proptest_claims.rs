//! Property tests of claims (`fedid_core::crd::claim`, `fedid_core::claims`) and the minted
//! token: claim names follow the schema pattern, every rejection is a typed error whose reason
//! is a [`Reason`], hostile values (separators, control characters, any Unicode, huge strings)
//! are either rejected or carried verbatim into the signed token, and the `sub` template
//! parses, renders and escapes as documented.

use std::sync::OnceLock;

use fedid_core::{
    claims::{ClaimTemplate, ClaimsError, ClaimsInput, PodBinding, SubjectTemplate},
    crd::{
        Claim, Duration, RESERVED_CLAIMS, SigningAlgorithm,
        claim::{MAX_CLAIM_STRING_LENGTH, is_valid_claim_name},
    },
    credentials::token::{decode_unverified, verify},
    identity::{mint::mint, validate::ValidatedIdentity},
    issuer::keys::{KeyRecord, Signer, generate_key, jwks},
    reason::Reason,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use proptest::prelude::*;
use serde_json::{Map, Value};

const T0: i64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.example.com";

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid timestamp")
}

fn key(algorithm: SigningAlgorithm) -> &'static KeyRecord {
    static RSA: OnceLock<KeyRecord> = OnceLock::new();
    static EC: OnceLock<KeyRecord> = OnceLock::new();
    let cell = match algorithm {
        SigningAlgorithm::RS256 => &RSA,
        SigningAlgorithm::ES256 => &EC,
    };
    cell.get_or_init(|| generate_key(algorithm, at(T0)).expect("key generation"))
}

/// Whether `name` matches `^[A-Za-z_][A-Za-z0-9_.:/-]*$` with 1 to 64 characters, written
/// independently of the implementation.
fn matches_claim_name_pattern(name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    (1..=64).contains(&chars.len())
        && (chars[0].is_ascii_alphabetic() || chars[0] == '_')
        && chars[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(*c))
}

/// Strings built to hit the edges: separators of subjects, JSON, JWTs and URLs, control
/// characters, lone surrogate-adjacent and multi-byte characters, and plain text.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-zA-Z0-9]{1,8}",
        3 => prop::sample::select(vec![
            ":", "%", "%3A", "%25", "{", "}", ".", "/", "\\", "\"", "'", "=", "&", "?", "#", "@",
            " ", "\t", "\n", "\r", "\0", "\u{7f}", "\u{1b}[31m", "\u{85}", "\u{2028}",
            "\u{feff}", "\u{200b}", "é", "日本", "🦀", "\u{10ffff}", "=\"", "\",\"x\":\"",
            "eyJ", "..",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|pieces| pieces.concat())
}

/// Claim names: mostly valid, some near misses.
fn claim_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z_][A-Za-z0-9_.:/-]{0,63}",
        1 => prop::sample::select(RESERVED_CLAIMS.to_vec()).prop_map(str::to_owned),
        1 => hostile_text(4),
        1 => "[A-Za-z_][A-Za-z0-9_]{64,70}",
    ]
}

fn any_claim() -> impl Strategy<Value = Claim> {
    (
        claim_name(),
        prop::option::of(hostile_text(8)),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(name, string, boolean, integer)| Claim {
            name,
            string,
            boolean,
            integer,
        })
}

fn identity(claims: ClaimTemplate) -> ValidatedIdentity {
    ValidatedIdentity {
        namespace: "ci".into(),
        name: "deploy".into(),
        uid: "uid-1".into(),
        owner: OwnerReference::default(),
        issuer: "ci".into(),
        secret_name: "deploy-token".into(),
        claims,
        exchange: None,
        include_subject_token: true,
        output: Default::default(),
        renew_requested_at: None,
    }
}

/// Builds the claim template of an identity with `identity_claims` and `audiences`.
fn build(
    template: &SubjectTemplate,
    identity_claims: &[Claim],
    audiences: &[String],
    pod: Option<&PodBinding>,
) -> Result<ClaimTemplate, ClaimsError> {
    ClaimTemplate::build(&ClaimsInput {
        issuer_url: ISSUER,
        subject_template: template,
        issuer_claims: &[Claim::string("cluster", "prod")],
        namespace: "ci",
        name: "deploy",
        identity_claims,
        audiences,
        lifetime: Duration::from_hours(1),
        pod,
    })
}

/// Mints a token from `template` with the shared EC key and reads it back, unverified and
/// verified; both must give exactly the claims that were signed.
fn mint_and_read(template: ClaimTemplate, audience: &str) -> Map<String, Value> {
    let expected = template.token_claims(at(T0), "jti-1");
    let signer = Signer::new(key(SigningAlgorithm::ES256)).expect("signer");
    let minted = mint(&identity(template), &signer, at(T0), "jti-1").expect("mints");
    let decoded = decode_unverified(&minted.jwt).expect("decodes");
    assert_eq!(
        decoded.claims, expected,
        "decode_unverified changed the claims"
    );
    assert_eq!(decoded.key_id(), Some(signer.kid()));
    let keys = jwks(&[key(SigningAlgorithm::ES256)]).expect("JWKS");
    let verified =
        verify(&minted.jwt, &keys, audience, Some(ISSUER), at(T0 + 1)).expect("verifies");
    assert_eq!(verified, expected, "verify changed the claims");
    verified
}

/// Undoes the subject escaping of claim values: `%3A` is `:`, `%25` is `%`.
fn unescape(text: &str) -> String {
    text.replace("%3A", ":").replace("%25", "%")
}

/// The subject template pattern of the CRD schema, written independently of the parser:
/// `^([^{}]|\{(namespace|name|pod\.name|pod\.uid|pod\.serviceAccount|(claims|ci)\.NAME)\})*$`,
/// where NAME is a claim name (the schema's pattern has no length limit; claim names have 64).
fn matches_template_pattern(template: &str) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        let Some(after_open) = rest[open..].strip_prefix('{') else {
            return false;
        };
        let Some(close) = after_open.find('}') else {
            return false;
        };
        let placeholder = &after_open[..close];
        let known = matches!(
            placeholder,
            "namespace" | "name" | "pod.name" | "pod.uid" | "pod.serviceAccount"
        ) || placeholder
            .strip_prefix("claims.")
            .or_else(|| placeholder.strip_prefix("ci."))
            .is_some_and(matches_claim_name_pattern);
        if !known || placeholder.contains('{') {
            return false;
        }
        rest = &after_open[close + 1..];
    }
    true
}

/// Template-like text: placeholders, near-miss placeholders, stray braces and hostile text.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => prop::sample::select(vec![
            "{namespace}", "{name}", "{pod.name}", "{pod.uid}", "{pod.serviceAccount}",
            "{claims.a}", "{ci.job}", "{claims._x.y:z/w-1}", "{claims.}", "{ci.1x}", "{Name}",
            "{claims.a b}", "{pod}", "{}", "{{", "}}", "{", "}", "{claims.{a}}",
        ])
        .prop_map(str::to_owned),
        1 => "\\{claims\\.[A-Za-z_][A-Za-z0-9_]{60,66}\\}",
        2 => hostile_text(3),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// A piece of a subject template, and what it renders to with the fixture values.
#[derive(Clone, Debug)]
enum Piece {
    Literal(String),
    Namespace,
    Name,
    Claim(String),
}

fn template_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => hostile_text(4).prop_map(|text| Piece::Literal(text.replace(['{', '}'], ""))),
        1 => Just(Piece::Namespace),
        1 => Just(Piece::Name),
        1 => prop::sample::select(vec!["cluster", "a", "b"]).prop_map(|name| Piece::Claim(name.into())),
    ]
}

proptest! {
    #[test]
    fn claim_names_are_valid_exactly_when_they_match_the_schema_pattern(name in claim_name()) {
        prop_assert_eq!(is_valid_claim_name(&name), matches_claim_name_pattern(&name), "{:?}", name);
    }

    #[test]
    fn a_claim_is_accepted_verbatim_or_rejected_with_a_claim_reason(claim in any_claim()) {
        match claim.validated_value() {
            Ok(value) => {
                prop_assert!(matches_claim_name_pattern(&claim.name));
                prop_assert!(!RESERVED_CLAIMS.contains(&claim.name.as_str()));
                let expected = match (&claim.string, claim.boolean, claim.integer) {
                    (Some(text), None, None) => Value::from(text.clone()),
                    (None, Some(flag), None) => Value::from(flag),
                    (None, None, Some(number)) => Value::from(number),
                    other => panic!("accepted a claim with values {other:?}"),
                };
                prop_assert_eq!(value, expected);
            }
            Err(error) => {
                let reason = error.reason();
                prop_assert!(Reason::ALL.contains(&reason));
                prop_assert!(
                    [Reason::InvalidClaimName, Reason::ReservedClaim, Reason::InvalidClaimValue]
                        .contains(&reason),
                    "{reason}"
                );
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    #[test]
    fn claim_lists_are_accepted_or_rejected_with_a_reason(
        claims in prop::collection::vec(any_claim(), 0..6),
        audiences in prop::collection::vec(hostile_text(3), 0..4),
    ) {
        let template = SubjectTemplate::parse("system:fedid:{namespace}:{name}").expect("parses");
        match build(&template, &claims, &audiences, None) {
            Ok(built) => {
                let stable = built.stable_claims();
                for claim in &claims {
                    let value = claim.validated_value().ok();
                    prop_assert_eq!(stable.get(&claim.name), value.as_ref());
                }
                let aud = match audiences.as_slice() {
                    [single] => Value::from(single.clone()),
                    several => Value::from(several.to_vec()),
                };
                prop_assert_eq!(&stable["aud"], &aud);
            }
            Err(error) => {
                prop_assert!(Reason::ALL.contains(&error.reason()));
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    #[test]
    fn hostile_string_values_are_carried_verbatim_into_the_signed_token(
        value in hostile_text(24),
        audience in hostile_text(4),
    ) {
        prop_assume!(!audience.is_empty() && audience.chars().count() <= 256);
        let template = SubjectTemplate::parse("repo:{claims.value}").expect("parses");
        let claims = [Claim::string("value", value.clone())];
        match build(&template, &claims, std::slice::from_ref(&audience), None) {
            Ok(built) => {
                let read = mint_and_read(built, &audience);
                prop_assert_eq!(&read["value"], &Value::from(value.clone()));
                prop_assert_eq!(&read["aud"], &Value::from(audience));
                let sub = read["sub"].as_str().expect("sub is a string");
                let escaped = sub.strip_prefix("repo:").expect("literal prefix kept");
                prop_assert!(!escaped.contains(':'), "{:?}", sub);
                prop_assert_eq!(unescape(escaped), value);
            }
            Err(error) => {
                // Only an empty subject or an over-long value may be refused.
                prop_assert!(
                    (value.is_empty() && error == ClaimsError::EmptySubject)
                        || (value.chars().count() > MAX_CLAIM_STRING_LENGTH
                            && error.reason() == Reason::InvalidClaimValue),
                    "{value:?}: {error}"
                );
            }
        }
    }

    #[test]
    fn subject_templates_parse_as_the_schema_pattern_says(template in template_text()) {
        match SubjectTemplate::parse(&template) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.as_str(), template.as_str());
                prop_assert!(matches_template_pattern(&template), "{:?}", template);
            }
            Err(error) => {
                prop_assert_eq!(error.reason(), Reason::InvalidSubjectTemplate);
                prop_assert!(
                    template.is_empty() || !matches_template_pattern(&template),
                    "{:?}: {}", template, error
                );
            }
        }
    }

    #[test]
    fn generated_templates_render_piece_by_piece(
        pieces in prop::collection::vec(template_piece(), 1..8),
        a in hostile_text(6),
        b in hostile_text(6),
    ) {
        let text: String = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.clone(),
                Piece::Namespace => "{namespace}".into(),
                Piece::Name => "{name}".into(),
                Piece::Claim(name) => format!("{{claims.{name}}}"),
            })
            .collect();
        prop_assume!(!text.is_empty());
        let template = SubjectTemplate::parse(&text).expect("a generated template parses");
        prop_assert!(!template.needs_pod());
        let claims = [Claim::string("a", a.clone()), Claim::string("b", b.clone()), Claim::string("cluster", "prod")];
        let expected: String = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.clone(),
                Piece::Namespace => "ci".into(),
                Piece::Name => "deploy".into(),
                Piece::Claim(name) => {
                    let value = claims.iter().find(|claim| claim.name == *name).and_then(Claim::value_text).expect("fixture claim");
                    value.replace('%', "%25").replace(':', "%3A")
                }
            })
            .collect();
        match template.render("ci", "deploy", &claims, None) {
            Ok(subject) => prop_assert_eq!(subject, expected),
            Err(error) => {
                prop_assert!(expected.is_empty());
                prop_assert_eq!(error, ClaimsError::EmptySubject);
            }
        }
    }

    #[test]
    fn subject_escaping_is_injective(a in hostile_text(8), b in hostile_text(8)) {
        let template = SubjectTemplate::parse("{claims.v}").expect("parses");
        let render = |value: &str| template.render("ci", "deploy", &[Claim::string("v", value)], None);
        if let (Ok(left), Ok(right)) = (render(&a), render(&b)) {
            prop_assert_eq!(left == right, a == b, "{:?} / {:?}", a, b);
        }
    }

    #[test]
    fn pod_and_ci_values_are_escaped_and_signed_verbatim(
        pod_name in hostile_text(6),
        job in hostile_text(6),
    ) {
        prop_assume!(!pod_name.is_empty() && !job.is_empty());
        let template = SubjectTemplate::parse("pod:{pod.name}:job:{ci.job}").expect("parses");
        prop_assert!(template.needs_pod());
        let pod = PodBinding {
            name: pod_name.clone(),
            uid: "u1".into(),
            service_account: "runner".into(),
            ci_claims: vec![Claim::string("job", job.clone())],
        };
        match build(&template, &[], &["vault".to_owned()], Some(&pod)) {
            Ok(built) => {
                let read = mint_and_read(built, "vault");
                prop_assert_eq!(&read["pod"], &Value::from(pod_name.clone()));
                prop_assert_eq!(&read["job"], &Value::from(job.clone()));
                let sub = read["sub"].as_str().expect("sub");
                let rest = sub.strip_prefix("pod:").expect("prefix");
                let (name_part, job_part) = rest.split_once(":job:").expect("separator kept");
                prop_assert_eq!(unescape(name_part), pod_name);
                prop_assert_eq!(unescape(job_part), job);
            }
            Err(error) => prop_assert!(
                job.chars().count() > MAX_CLAIM_STRING_LENGTH && error.reason() == Reason::InvalidClaimValue,
                "{error}"
            ),
        }
    }
}

#[test]
fn huge_values_are_rejected_with_a_typed_error() {
    let template = SubjectTemplate::parse("{namespace}:{name}").expect("parses");
    let audiences = ["a".to_owned()];
    for value in [
        "x".repeat(64 * 1024),
        ":".repeat(64 * 1024),
        "\0".repeat(64 * 1024),
    ] {
        let error = build(&template, &[Claim::string("big", value)], &audiences, None)
            .expect_err("a 64 KB value is too long");
        assert_eq!(error.reason(), Reason::InvalidClaimValue);
    }
    // At the limit, in multi-byte characters, the value is kept whole.
    let at_limit = "日".repeat(MAX_CLAIM_STRING_LENGTH);
    let built = build(
        &template,
        &[Claim::string("big", at_limit.clone())],
        &audiences,
        None,
    )
    .expect("1024 characters are allowed");
    let read = mint_and_read(built, "a");
    assert_eq!(read["big"], Value::from(at_limit));

    let long_name = format!("a{}", "b".repeat(64 * 1024));
    let error = build(
        &template,
        &[Claim::string(long_name, "x")],
        &audiences,
        None,
    )
    .expect_err("a 64 KB name is invalid");
    assert_eq!(error.reason(), Reason::InvalidClaimName);

    let huge_template = format!("{{{}", "claims.".repeat(9000));
    let error = SubjectTemplate::parse(&huge_template).expect_err("unterminated");
    assert_eq!(error.reason(), Reason::InvalidSubjectTemplate);
    let huge_literal = ":".repeat(64 * 1024);
    assert_eq!(
        SubjectTemplate::parse(&huge_literal)
            .expect("a literal template")
            .render("ci", "deploy", &[], None)
            .expect("renders"),
        huge_literal
    );
}

#[test]
fn rsa_tokens_round_trip_hostile_values_too() {
    let template = SubjectTemplate::parse("{claims.v}").expect("parses");
    let value = "a:b%c\"d\\e\n\0\u{2028}🦀".to_owned();
    let built = build(
        &template,
        &[Claim::string("v", value.clone())],
        &["aud".to_owned()],
        None,
    )
    .expect("builds");
    let expected = built.token_claims(at(T0), "j");
    let signer = Signer::new(key(SigningAlgorithm::RS256)).expect("signer");
    let minted = mint(&identity(built), &signer, at(T0), "j").expect("mints");
    let keys = jwks(&[key(SigningAlgorithm::RS256)]).expect("JWKS");
    let verified = verify(&minted.jwt, &keys, "aud", Some(ISSUER), at(T0)).expect("verifies");
    assert_eq!(verified, expected);
    assert_eq!(verified["v"], Value::from(value));
}
