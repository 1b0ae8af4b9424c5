//! Property tests of token reading (`fedid_core::credentials::token`), which `fedid token
//! decode` and `fedid token verify` call as they are: arbitrary text, arbitrary parts,
//! deeply nested JSON and arbitrary JWKS documents never panic and always fail with a known
//! reason; a token's parts decode back to exactly the header and claims encoded; and a
//! tampered token never verifies with other claims than the ones signed.

use std::sync::OnceLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use fedid_core::{
    crd::SigningAlgorithm,
    credentials::token::{TokenError, decode_unverified, verify},
    issuer::keys::{KeyRecord, Signer, generate_key, jwks},
};
use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const T0: i64 = 1_800_000_000;

/// Every reason a token error may report.
const TOKEN_REASONS: &[&str] = &[
    "MalformedToken",
    "InvalidJwks",
    "MissingKeyId",
    "UnknownKeyId",
    "UnsupportedAlgorithm",
    "AlgorithmMismatch",
    "InvalidKey",
    "BadSignature",
    "WrongAudience",
    "WrongIssuer",
    "MissingClaim",
    "Expired",
    "NotYetValid",
    "Rejected",
];

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid timestamp")
}

fn ec_key() -> &'static KeyRecord {
    static EC: OnceLock<KeyRecord> = OnceLock::new();
    EC.get_or_init(|| generate_key(SigningAlgorithm::ES256, at(T0)).expect("key generation"))
}

fn ec_jwks() -> &'static Value {
    static JWKS: OnceLock<Value> = OnceLock::new();
    JWKS.get_or_init(|| jwks(&[ec_key()]).expect("JWKS"))
}

fn assert_known(error: &TokenError) {
    assert!(
        TOKEN_REASONS.contains(&error.reason()),
        "{}",
        error.reason()
    );
    assert!(!error.to_string().is_empty());
}

/// Arbitrary JSON values, a few levels deep, with hostile strings. Floats only when
/// `floats`: serde_json (without its `float_roundtrip` feature) may read a float back one
/// unit in the last place off, so they are left out where values must come back exactly.
fn json_value_with(floats: bool) -> impl Strategy<Value = Value> {
    let float = if floats {
        any::<f64>().prop_map(Value::from).boxed()
    } else {
        any::<i32>()
            .prop_map(|n| Value::from(f64::from(n) / 4.0))
            .boxed()
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float,
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    json_value_with(true)
}

/// JSON objects whose keys are often the JOSE and registered claim names.
fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop_oneof![
            3 => prop::sample::select(vec!["alg", "kid", "typ", "iss", "aud", "exp", "nbf", "sub"]).prop_map(str::to_owned),
            1 => any::<String>(),
        ],
        json_value_with(false),
        0..6,
    )
    .prop_map(|map| map.into_iter().collect())
}

/// Claims of a token fedid could sign: any names but the registered ones, whose types the
/// verifier checks (a non-string `sub` is `Rejected`), with any values.
fn private_claims() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        any::<String>().prop_filter("not a registered claim", |name| {
            !["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].contains(&name.as_str())
        }),
        json_value_with(false),
        0..6,
    )
    .prop_map(|map| map.into_iter().collect())
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Token-like text: dot-separated base64url-ish parts and stray characters.
fn token_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => "[A-Za-z0-9_-]{0,40}",
        1 => prop::sample::select(vec!["eyJ9", "e30", "W10", "bnVsbA", "=", "+/", " ", "\n", "\0", "é"]).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(part, 0..6).prop_map(|parts| parts.join("."))
}

/// A `depth`-deep nest of arrays, or of objects.
fn nested(depth: usize, objects: bool) -> String {
    if objects {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

proptest! {
    #[test]
    fn arbitrary_text_decodes_or_is_malformed(text in any::<String>()) {
        if let Err(error) = decode_unverified(&text) {
            assert_known(&error);
            prop_assert_eq!(error.reason(), "MalformedToken");
        }
    }

    #[test]
    fn token_like_text_decodes_or_is_malformed(text in token_like()) {
        match decode_unverified(&text) {
            Ok(decoded) => {
                prop_assert_eq!(text.trim().split('.').count(), 3);
                let parts: Vec<&str> = text.trim().split('.').collect();
                let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("base64")).expect("JSON");
                prop_assert_eq!(Value::Object(decoded.header), header);
            }
            Err(error) => prop_assert_eq!(error.reason(), "MalformedToken"),
        }
    }

    #[test]
    fn encoded_parts_decode_back_exactly(
        header in json_object(),
        claims in json_object(),
        signature in "[A-Za-z0-9_-]{0,20}",
        padding in prop::sample::select(vec!["", " ", "\n", "\t\r\n "]),
    ) {
        let jwt = format!(
            "{padding}{}.{}.{signature}{padding}",
            encode(&Value::Object(header.clone())),
            encode(&Value::Object(claims.clone()))
        );
        let decoded = decode_unverified(&jwt).expect("decodes");
        prop_assert_eq!(&decoded.header, &header);
        prop_assert_eq!(&decoded.claims, &claims);
        prop_assert_eq!(decoded.key_id(), header.get("kid").and_then(Value::as_str));
        // Unsigned or forged: verification never accepts it.
        let error = verify(&jwt, ec_jwks(), "a", None, at(T0)).expect_err("not signed by the key");
        assert_known(&error);
    }

    #[test]
    fn verify_fails_with_a_known_reason_for_any_token_and_jwks(
        text in token_like(),
        jwks in json_value(),
        audience in any::<String>(),
        issuer in prop::option::of(any::<String>()),
        now in -1_000_000_000i64..4_000_000_000,
    ) {
        for keys in [&jwks, ec_jwks()] {
            if let Err(error) = verify(&text, keys, &audience, issuer.as_deref(), at(now)) {
                assert_known(&error);
            }
        }
    }

    #[test]
    fn a_tampered_token_never_verifies_with_other_claims(
        claims in private_claims(),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(vec!['A', 'B', 'a', 'z', '0', '9', '-', '_', '.', '=', ' ']),
    ) {
        let mut claims = claims;
        claims.insert("aud".into(), json!("a"));
        claims.insert("exp".into(), json!(T0 + 3600));
        let signer = Signer::new(ec_key()).expect("signer");
        let jwt = signer.sign(&claims).expect("signs");
        let verified = verify(&jwt, ec_jwks(), "a", None, at(T0)).expect("the original verifies");
        prop_assert_eq!(&verified, &claims);

        let mut bytes = jwt.clone().into_bytes();
        let index = position.index(bytes.len());
        prop_assume!(bytes[index] != replacement as u8);
        bytes[index] = replacement as u8;
        let tampered = String::from_utf8(bytes).expect("ASCII");
        match verify(&tampered, ec_jwks(), "a", None, at(T0)) {
            Ok(read) => prop_assert_eq!(read, claims, "{} verified with other claims", tampered),
            Err(error) => assert_known(&error),
        }
    }
}

#[test]
fn deeply_nested_and_huge_parts_are_malformed_without_overflowing_the_stack() {
    for depth in [200, 10_000, 100_000] {
        for objects in [false, true] {
            let part = URL_SAFE_NO_PAD.encode(nested(depth, objects));
            for jwt in [format!("{part}.e30.x"), format!("e30.{part}.x")] {
                let error = decode_unverified(&jwt).expect_err("too deep");
                assert_eq!(error.reason(), "MalformedToken", "depth {depth}");
                let error = verify(&jwt, ec_jwks(), "a", None, at(T0)).expect_err("too deep");
                assert_known(&error);
            }
            let deep_jwks: Value = serde_json::from_str(&nested(100, objects)).expect("100 deep");
            let token = Signer::new(ec_key())
                .expect("signer")
                .sign(&Map::from_iter([("aud".to_owned(), json!("a"))]))
                .expect("signs");
            assert_known(&verify(&token, &deep_jwks, "a", None, at(T0)).expect_err("no keys"));
        }
    }
    let huge = URL_SAFE_NO_PAD
        .encode(json!({"sub": "x".repeat(64 * 1024), "aud": ":".repeat(64 * 1024)}).to_string());
    let decoded = decode_unverified(&format!("e30.{huge}.sig")).expect("large but valid");
    assert_eq!(decoded.claims["sub"], json!("x".repeat(64 * 1024)));
    let dots = ".".repeat(64 * 1024);
    assert_eq!(
        decode_unverified(&dots).map_err(|error| error.reason()),
        Err("MalformedToken")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The key ring is read back from its Secret: anything stored there parses or is
    /// `KeyRingCorrupt`, and a ring written reads back the same.
    #[test]
    fn key_rings_read_back_or_are_corrupt(
        bytes in prop_oneof![
            any::<Vec<u8>>(),
            json_value().prop_map(|value| value.to_string().into_bytes()),
            json_object().prop_map(|object| json!({"keys": [Value::Object(object)]}).to_string().into_bytes()),
        ],
        request in prop::option::of(any::<String>()),
    ) {
        use fedid_core::{issuer::keys::KeyRing, reason::Reason};
        if let Err(error) = KeyRing::from_json(&bytes) {
            prop_assert_eq!(error.reason(), Reason::KeyRingCorrupt);
        }
        let ring = KeyRing { keys: vec![ec_key().clone()], last_rotation_request: request };
        let stored = ring.to_json().expect("serializes");
        prop_assert_eq!(KeyRing::from_json(&stored).expect("reads back"), ring);
    }

    /// A stored key whose PEM is damaged fails with a key reason, never a panic.
    #[test]
    fn damaged_private_keys_are_typed_errors(pem in prop_oneof![
        any::<String>(),
        any::<prop::sample::Index>().prop_map(|index| {
            let mut pem = ec_key().private_key_pem.clone().into_bytes();
            let at = index.index(pem.len());
            pem[at] = if pem[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(pem).expect("ASCII")
        }),
    ]) {
        use fedid_core::reason::Reason;
        let mut record = ec_key().clone();
        record.private_key_pem = pem;
        if let Err(error) = Signer::new(&record) {
            prop_assert_eq!(error.reason(), Reason::InvalidPrivateKey);
        }
        if let Err(error) = record.public_jwk() {
            prop_assert!([Reason::InvalidPrivateKey, Reason::InvalidPublicKey].contains(&error.reason()));
        }
    }
}
