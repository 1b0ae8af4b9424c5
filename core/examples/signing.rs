//! Signing throughput on one thread, fedid's mint path beside its anchors, in one run:
//!
//! * `fedid_mint_per_s`: [`mint`] of a typical CI identity's token (claims built, JSON-encoded,
//!   base64url, signed) with one [`Signer`], as the operator does for every token;
//! * `raw_sign_per_s`: raw aws-lc-rs signatures over a message of the same length with a key
//!   parsed once, the floor no JWT library can beat;
//! * `parse_per_token_per_s`: `jsonwebtoken::encode` with the key loaded once, which parses the
//!   DER key inside every call (fedid's path before its signer kept the parsed key).
//!
//! `cargo run --release -p fedid-core --example signing -- [RS256|ES256] [seconds]` prints one JSON
//! object; `bench/run` calls it for its signing row.

use std::time::{Duration as StdDuration, Instant};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair},
};
use fedid_core::{
    claims::{ClaimTemplate, ClaimsInput, SubjectTemplate},
    crd::{Claim, Duration, SigningAlgorithm},
    identity::{mint::mint, validate::ValidatedIdentity},
    issuer::keys::{Signer, generate_key},
};
use jiff::Timestamp;
use jsonwebtoken::{EncodingKey, Header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;

/// How many operations `one` completes per second, run for `seconds`.
fn rate(seconds: f64, mut one: impl FnMut()) -> f64 {
    let budget = StdDuration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < budget {
        one();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let algorithm = match args.next().as_deref() {
        None | Some("RS256") => SigningAlgorithm::RS256,
        Some("ES256") => SigningAlgorithm::ES256,
        Some(other) => return Err(format!("unknown algorithm {other:?}").into()),
    };
    let seconds: f64 = args
        .next()
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(3.0);

    let now = Timestamp::now();
    let record = generate_key(algorithm, now)?;
    let signer = Signer::new(&record)?;
    let subject = SubjectTemplate::parse("system:fedid:{namespace}:{name}")?;
    let claims = ClaimTemplate::build(&ClaimsInput {
        issuer_url: "https://issuer.example.com",
        subject_template: &subject,
        issuer_claims: &[Claim::string("cluster", "prod")],
        namespace: "ci",
        name: "deploy",
        identity_claims: &[
            Claim::string("pipeline", "web/deploy"),
            Claim::string("branch", "main"),
        ],
        audiences: &["sts.amazonaws.com".to_owned()],
        lifetime: Duration::from_hours(1),
        pod: None,
    })?;
    let identity = ValidatedIdentity {
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
    };
    let sample = mint(&identity, &signer, now, "0123456789abcdef")?;
    let signing_input_len = sample
        .jwt
        .rsplit_once('.')
        .map_or(0, |(input, _)| input.len());

    let fedid = rate(seconds, || {
        let _ = mint(&identity, &signer, now, "0123456789abcdef");
    });

    let der = match algorithm {
        SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(record.private_key_pem.as_bytes())?,
        SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(record.private_key_pem.as_bytes())?,
    };
    let message = vec![b'a'; signing_input_len];
    let random = SystemRandom::new();
    let raw = match algorithm {
        SigningAlgorithm::RS256 => {
            let key = RsaKeyPair::from_der(der.as_bytes()).map_err(|e| e.to_string())?;
            let mut signature = vec![0; key.public_modulus_len()];
            rate(seconds, || {
                let _ = key.sign(&RSA_PKCS1_SHA256, &random, &message, &mut signature);
            })
        }
        SigningAlgorithm::ES256 => {
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes())
                .map_err(|e| e.to_string())?;
            rate(seconds, || {
                let _ = key.sign(&random, &message);
            })
        }
    };

    let header = Header::new(match algorithm {
        SigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
    });
    let token_claims = identity.claims.token_claims(now, "0123456789abcdef");
    let parse_per_token = rate(seconds, || {
        let _ = jsonwebtoken::encode(&header, &token_claims, &der);
    });

    let round = |value: f64| (value * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({
            "algorithm": algorithm.as_str(),
            "seconds_each": seconds,
            "signing_input_bytes": signing_input_len,
            "fedid_mint_per_s": round(fedid),
            "raw_sign_per_s": round(raw),
            "parse_per_token_per_s": round(parse_per_token),
            "ratio": (fedid / raw * 100.0).round() / 100.0,
            "ratio_parse_per_token": (parse_per_token / raw * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
