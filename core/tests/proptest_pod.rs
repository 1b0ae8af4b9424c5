//! Property tests of what pods send and carry: the token endpoint's request parser
//! (`fedid_core::pod::token_request`), the CI presets and claim rules (`fedid_core::ci`), and
//! the `fedid.dev/renew-requested-at` annotation. Arbitrary input never panics; every refusal
//! is typed (an OAuth `invalid_request`, a `MissingPodClaim`, a claim reason); requests and
//! timestamps round-trip; CI values reach the signed token verbatim or are refused.

use std::collections::BTreeMap;

use fedid_core::{
    ci::{ci_claims, presets::effective_rules, sample_binding},
    claims::{ClaimTemplate, ClaimsInput, PodBinding, SubjectTemplate},
    crd::{
        Duration, FederatedIdentity,
        claim::MAX_CLAIM_STRING_LENGTH,
        identity::RENEW_REQUESTED_AT_ANNOTATION,
        pods::{CiPreset, PodClaimRule, PodField, PodsSpec},
    },
    pod::{
        PodError,
        token_request::{TokenRequest, TokenRequestError, admit, parse_request},
    },
    reason::{Failure, Reason},
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};

const FORM: &str = "application/x-www-form-urlencoded";

/// Text with the separators of forms, JSON and subjects, control characters and Unicode.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-zA-Z0-9]{1,6}",
        2 => prop::sample::select(vec![
            "&", "=", "+", "%", "%2", "%zz", "%00", "%C3%A9", "%FF", ":", "{", "}", "\"", "\\",
            " ", "\t", "\n", "\r", "\0", "\u{7f}", "é", "🦀", "\u{2028}", ";", "?", "#",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Form encoding of one value, as a browser or `curl --data-urlencode` writes it.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                char::from(byte).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn assert_invalid_request(error: &TokenRequestError) {
    assert_eq!(
        (error.status(), error.code()),
        (400, "invalid_request"),
        "{error}"
    );
    let body = error.body();
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|text| !text.is_empty())
    );
}

fn identity_spec() -> fedid_core::crd::FederatedIdentitySpec {
    serde_json::from_value(
        json!({"audiences": ["a"], "pods": {"allowedAudiences": ["vault", "npm", "a b:c"]}}),
    )
    .expect("spec")
}

fn pod(labels: BTreeMap<String, String>, annotations: BTreeMap<String, String>) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some("job".into());
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = Some(annotations);
    pod
}

/// The label and annotation keys every preset reads, and a few of the rules' own.
fn field_key() -> impl Strategy<Value = String> {
    let mut keys: Vec<&str> = [
        CiPreset::Tekton,
        CiPreset::ArgoWorkflows,
        CiPreset::Gitlab,
        CiPreset::Buildkite,
        CiPreset::Jenkins,
    ]
    .into_iter()
    .flat_map(fedid_core::ci::presets::preset_rules)
    .map(|rule| match rule.field {
        PodField::Label(key) | PodField::Annotation(key) => key,
    })
    .collect();
    keys.extend(["example.com/team", "example.com/env"]);
    prop::sample::select(keys).prop_map(str::to_owned)
}

fn rule() -> impl Strategy<Value = PodClaimRule> {
    (
        prop_oneof![
            4 => prop::sample::select(vec!["team", "env", "job", "run_id", "ref"]).prop_map(str::to_owned),
            1 => prop::sample::select(vec!["sub", "1bad", "", "a b"]).prop_map(str::to_owned),
        ],
        prop::option::of(field_key()),
        prop::option::of(field_key()),
        any::<bool>(),
    )
        .prop_map(|(name, from_label, from_annotation, required)| PodClaimRule {
            name,
            from_label,
            from_annotation,
            required,
        })
}

fn pods_spec() -> impl Strategy<Value = PodsSpec> {
    (
        prop::option::of(prop::sample::select(vec![
            CiPreset::Tekton,
            CiPreset::ArgoWorkflows,
            CiPreset::Gitlab,
            CiPreset::Buildkite,
            CiPreset::Jenkins,
        ])),
        prop::collection::vec(rule(), 0..4),
    )
        .prop_map(|(preset, mut claims)| {
            // The schema keeps rule names unique (a list map keyed by name).
            let mut seen = std::collections::BTreeSet::new();
            claims.retain(|rule| seen.insert(rule.name.clone()));
            PodsSpec {
                preset,
                claims,
                ..PodsSpec::default()
            }
        })
}

fn field_values() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        field_key(),
        prop_oneof![
            6 => hostile_text(),
            1 => Just(String::new()),
            1 => Just(" \t\n".to_owned()),
            1 => (1000usize..1100).prop_map(|n| "v".repeat(n)),
        ],
        0..10,
    )
}

proptest! {
    #[test]
    fn any_request_body_parses_or_is_an_invalid_request(
        content_type in prop_oneof![
            Just(FORM.to_owned()),
            Just("application/json".to_owned()),
            Just(format!("{FORM}; charset=utf-8")),
            any::<String>(),
        ],
        body in prop_oneof![
            any::<Vec<u8>>(),
            hostile_text().prop_map(String::into_bytes),
            (hostile_text(), hostile_text()).prop_map(|(a, l)| format!("audience={a}&lifetime={l}").into_bytes()),
        ],
    ) {
        match parse_request(&content_type, &body) {
            Ok(request) => {
                let length = request.audience.chars().count();
                prop_assert!((1..=256).contains(&length), "{}", length);
            }
            Err(error) => assert_invalid_request(&error),
        }
    }

    #[test]
    fn form_and_json_requests_round_trip_and_agree(
        audience in hostile_text(),
        lifetime in prop::option::of(hostile_text()),
        noise in prop::collection::vec(("[a-z]{1,5}", hostile_text()), 0..3),
    ) {
        let mut pairs = vec![("audience".to_owned(), audience.clone())];
        if let Some(lifetime) = &lifetime {
            pairs.push(("lifetime".to_owned(), lifetime.clone()));
        }
        pairs.extend(noise.into_iter().filter(|(name, _)| name != "audience" && name != "lifetime"));
        let form: String = pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let json_body = serde_json::to_vec(&Value::Object(
            pairs.iter().map(|(name, value)| (name.clone(), Value::from(value.clone()))).collect(),
        ))
        .expect("JSON");
        let from_form = parse_request(FORM, form.as_bytes());
        let from_json = parse_request("application/json", &json_body);
        prop_assert_eq!(&from_form, &from_json);
        match from_form {
            Ok(request) => prop_assert_eq!(request, TokenRequest { audience, lifetime }),
            Err(error) => {
                assert_invalid_request(&error);
                let length = audience.chars().count();
                prop_assert!(length == 0 || length > 256, "{:?}: {}", audience, error);
            }
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused(
        first in "[a-z]{1,8}",
        second in "[a-z]{1,8}",
        name in prop::sample::select(vec!["audience", "lifetime"]),
    ) {
        let form = format!("audience=vault&{name}={first}&{name}={second}");
        let error = parse_request(FORM, form.as_bytes()).expect_err("repeated");
        assert_invalid_request(&error);
        let json_body = format!(r#"{{"audience":"vault","{name}":"{first}","{name}":"{second}"}}"#);
        assert_invalid_request(&parse_request("application/json", json_body.as_bytes()).expect_err("repeated"));
    }

    #[test]
    fn admitted_requests_are_allowed_and_bounded(
        audience in prop_oneof![prop::sample::select(vec!["vault", "npm", "a b:c", "other"]).prop_map(str::to_owned), hostile_text()],
        lifetime in prop::option::of(prop_oneof![
            (0u32..20_000).prop_map(|seconds| Duration::from_secs(seconds).to_string()),
            hostile_text(),
        ]),
    ) {
        let (minimum, default, maximum) = (Duration::from_mins(10), Duration::from_hours(1), Duration::from_hours(2));
        let request = TokenRequest { audience: audience.clone(), lifetime: lifetime.clone() };
        match admit(&request, "ci", &identity_spec(), default, minimum, maximum) {
            Ok((granted, granted_lifetime)) => {
                prop_assert_eq!(granted, audience);
                prop_assert!(granted_lifetime >= minimum && granted_lifetime <= maximum);
                let expected = lifetime.map_or(default, |text| text.parse().expect("accepted lifetimes parse"));
                prop_assert_eq!(granted_lifetime, expected);
            }
            Err(error) => {
                prop_assert_eq!(error.status(), 400);
                prop_assert!(["invalid_request", "invalid_target"].contains(&error.code()));
            }
        }
    }

    #[test]
    fn ci_values_are_read_verbatim_or_refused_with_a_reason(
        pods in pods_spec(),
        labels in field_values(),
        annotations in field_values(),
    ) {
        let pod = pod(labels.clone(), annotations.clone());
        let rules = effective_rules(&pods);
        match ci_claims(&pods, &pod) {
            Ok(claims) => {
                let mut expected = Vec::new();
                for rule in &rules {
                    let source = match rule.field {
                        PodField::Label(key) => labels.get(key),
                        PodField::Annotation(key) => annotations.get(key),
                    };
                    match source.map(|value| value.trim()).filter(|value| !value.is_empty()) {
                        Some(value) => expected.push((rule.name.to_owned(), value.to_owned())),
                        None => prop_assert!(!rule.required, "missing required {} accepted", rule.name),
                    }
                }
                let read: Vec<(String, String)> = claims
                    .iter()
                    .map(|claim| (claim.name.clone(), claim.string.clone().expect("a string claim")))
                    .collect();
                prop_assert_eq!(&read, &expected);

                // Bound to a pod, the values reach the token as they are, or are refused.
                let binding = PodBinding { name: "job".into(), uid: "u1".into(), service_account: "default".into(), ci_claims: claims.clone() };
                let template = SubjectTemplate::parse("system:fedid:{namespace}:{pod.name}").expect("parses");
                let built = ClaimTemplate::build(&ClaimsInput {
                    issuer_url: "https://issuer.example.com",
                    subject_template: &template,
                    issuer_claims: &[],
                    namespace: "ci",
                    name: "deploy",
                    identity_claims: &[],
                    audiences: &["a".to_owned()],
                    lifetime: Duration::from_hours(1),
                    pod: Some(&binding),
                });
                match built {
                    Ok(built) => {
                        for (name, value) in &expected {
                            prop_assert_eq!(&built.stable_claims()[name], &Value::from(value.clone()));
                        }
                    }
                    Err(error) => {
                        let error = PodError::from(error);
                        prop_assert!(Reason::ALL.contains(&error.reason()));
                        let too_long = expected.iter().any(|(_, value)| value.chars().count() > MAX_CLAIM_STRING_LENGTH);
                        let bad_name = expected.iter().any(|(name, _)| Claim::string(name.clone(), "x").validated_value().is_err());
                        prop_assert!(too_long || bad_name, "{}", error);
                    }
                }
            }
            Err(missing) => {
                let error = PodError::from(missing.clone());
                prop_assert_eq!(error.reason(), Reason::MissingPodClaim);
                prop_assert!(!error.to_string().is_empty());
                let required: Vec<&str> = rules.iter().filter(|rule| rule.required).map(|rule| rule.name).chain(
                    pods.claims.iter().filter(|rule| rule.required).map(|rule| rule.name.as_str()),
                ).collect();
                prop_assert!(required.contains(&missing.claim.as_str()), "{:?}", missing);
            }
        }
        // The stand-in pod of validation has a value for every rule.
        prop_assert_eq!(sample_binding(&pods).ci_claims.len(), rules.len());
    }

    #[test]
    fn the_renew_annotation_reads_back_any_timestamp(
        second in -377_705_116_800i64..253_402_207_200,
        nanosecond in 0i32..1_000_000_000,
        padding in prop::sample::select(vec!["", " ", "\n", "\t \r\n"]),
        garbage in hostile_text(),
    ) {
        let at = Timestamp::new(second, nanosecond).expect("in range");
        prop_assert_eq!(renew_requested_at(&format!("{padding}{at}{padding}")), Some(at));
        if let Some(read) = renew_requested_at(&garbage) {
            // Whatever else is accepted is an RFC 3339 time.
            prop_assert_eq!(garbage.trim().parse::<Timestamp>().ok(), Some(read));
        }
    }
}

use fedid_core::crd::Claim;

fn renew_requested_at(value: &str) -> Option<Timestamp> {
    let mut identity = FederatedIdentity::new("deploy", identity_spec());
    identity.metadata.annotations = Some(BTreeMap::from([(
        RENEW_REQUESTED_AT_ANNOTATION.to_owned(),
        value.to_owned(),
    )]));
    identity.renew_requested_at()
}

#[test]
fn huge_and_hostile_pod_input_is_refused_or_kept_whole() {
    let huge = "a".repeat(64 * 1024);
    let form = format!("audience={huge}");
    assert_invalid_request(&parse_request(FORM, form.as_bytes()).expect_err("too long"));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_invalid_request(&parse_request("application/json", deep.as_bytes()).expect_err("deep"));
    let many = "&".repeat(64 * 1024);
    assert_invalid_request(&parse_request(FORM, many.as_bytes()).expect_err("no audience"));
    assert_eq!(renew_requested_at(&huge), None);
    assert_eq!(renew_requested_at("2026-13-01T00:00:00Z"), None);

    // A 64 KB CI annotation is read whole and then refused as a claim, not cut.
    let pods = PodsSpec {
        claims: vec![PodClaimRule {
            name: "team".into(),
            from_label: None,
            from_annotation: Some("example.com/team".into()),
            required: true,
        }],
        ..PodsSpec::default()
    };
    let pod = pod(
        BTreeMap::new(),
        BTreeMap::from([("example.com/team".to_owned(), huge.clone())]),
    );
    let claims = ci_claims(&pods, &pod).expect("present");
    assert_eq!(claims[0].string.as_deref(), Some(huge.as_str()));
    assert_eq!(
        claims[0].validated_value().map_err(|error| error.reason()),
        Err(Reason::InvalidClaimValue)
    );
}
