//! Reading and verifying tokens: used by the `fedid token` commands, by the reconciler to
//! inspect the token already in a Secret, and by tests.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Map, Value};

/// Clock skew tolerated when checking `exp` and `nbf`.
pub const VERIFY_LEEWAY_SECONDS: i64 = 60;

/// Why a token could not be read or verified.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is not three base64url parts with JSON object header and claims.
    #[error("token is malformed: {problem}")]
    Malformed {
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The JWKS is not a JSON Web Key Set.
    #[error("JWKS is not a valid JSON Web Key Set")]
    InvalidJwks {
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The header has no `kid`.
    #[error("token header has no kid")]
    MissingKeyId,
    /// No key in the JWKS has the token's `kid`.
    #[error("no key with kid {kid:?} in the JWKS")]
    UnknownKeyId {
        /// The token's key ID.
        kid: String,
    },
    /// The header's `alg` is not RS256 or ES256.
    #[error("token algorithm {alg:?} is not accepted; only RS256 and ES256 are")]
    UnsupportedAlgorithm {
        /// The header's algorithm.
        alg: String,
    },
    /// The JWK's `alg` differs from the token's.
    #[error("token algorithm {token_alg} does not match the key's algorithm {key_alg}")]
    AlgorithmMismatch {
        /// The header's algorithm.
        token_alg: String,
        /// The JWK's algorithm.
        key_alg: String,
    },
    /// The JWK cannot be used as a verification key.
    #[error("key {kid:?} in the JWKS is unusable")]
    InvalidKey {
        /// The key ID.
        kid: String,
        /// The underlying error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The signature does not verify with the key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is not for the expected audience.
    #[error("token audience does not include {expected:?}")]
    WrongAudience {
        /// The expected audience.
        expected: String,
    },
    /// The token is from another issuer.
    #[error("token issuer is not {expected:?}")]
    WrongIssuer {
        /// The expected issuer.
        expected: String,
    },
    /// A claim the check needs is missing.
    #[error("token has no {claim} claim")]
    MissingClaim {
        /// The claim name.
        claim: &'static str,
    },
    /// The token has expired.
    #[error("token expired at {expired_at}")]
    Expired {
        /// The token's `exp`.
        expired_at: Timestamp,
    },
    /// The token's `nbf` is in the future.
    #[error("token is not valid before {not_before}")]
    NotYetValid {
        /// The token's `nbf`.
        not_before: Timestamp,
    },
    /// Verification failed for another reason.
    #[error("token verification failed")]
    Rejected {
        /// The underlying error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

impl TokenError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "MalformedToken",
            Self::InvalidJwks { .. } => "InvalidJwks",
            Self::MissingKeyId => "MissingKeyId",
            Self::UnknownKeyId { .. } => "UnknownKeyId",
            Self::UnsupportedAlgorithm { .. } => "UnsupportedAlgorithm",
            Self::AlgorithmMismatch { .. } => "AlgorithmMismatch",
            Self::InvalidKey { .. } => "InvalidKey",
            Self::BadSignature => "BadSignature",
            Self::WrongAudience { .. } => "WrongAudience",
            Self::WrongIssuer { .. } => "WrongIssuer",
            Self::MissingClaim { .. } => "MissingClaim",
            Self::Expired { .. } => "Expired",
            Self::NotYetValid { .. } => "NotYetValid",
            Self::Rejected { .. } => "Rejected",
        }
    }
}

/// Header and claims of a token, read without checking the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedToken {
    /// The JOSE header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
}

impl DecodedToken {
    /// The header's `kid`, if it is a string.
    pub fn key_id(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The `iat` claim as a timestamp.
    pub fn issued_at(&self) -> Option<Timestamp> {
        timestamp_claim(&self.claims, "iat")
    }

    /// The `exp` claim as a timestamp.
    pub fn expires_at(&self) -> Option<Timestamp> {
        timestamp_claim(&self.claims, "exp")
    }
}

fn timestamp_claim(claims: &Map<String, Value>, name: &str) -> Option<Timestamp> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|second| Timestamp::from_second(second).ok())
}

fn decode_part(part: &str, which: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed { problem: which })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(TokenError::Malformed { problem: which }),
    }
}

/// Reads a compact JWT's header and claims **without verifying its signature**. Surrounding
/// whitespace is ignored.
pub fn decode_unverified(jwt: &str) -> Result<DecodedToken, TokenError> {
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed {
            problem: "it must have three dot-separated parts",
        });
    };
    Ok(DecodedToken {
        header: decode_part(header, "the header is not base64url-encoded JSON")?,
        claims: decode_part(claims, "the claims are not base64url-encoded JSON")?,
    })
}

fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

fn find_key(jwks: &Value, kid: &str) -> Result<Jwk, TokenError> {
    let set: JwkSet = serde_json::from_value(jwks.clone())
        .map_err(|source| TokenError::InvalidJwks { source })?;
    set.find(kid)
        .cloned()
        .ok_or_else(|| TokenError::UnknownKeyId {
            kid: kid.to_owned(),
        })
}

/// Verifies a compact JWT against a JWKS: the key is chosen by the header's `kid`, the
/// signature must verify with it (RS256 or ES256 only, matching the key's `alg` when it
/// has one), `aud` must include `audience`, `iss` must equal `issuer` when given, and `exp`
/// and `nbf` must hold at `now` within a 60 s leeway. Returns the claims.
pub fn verify(
    jwt: &str,
    jwks: &Value,
    audience: &str,
    issuer: Option<&str>,
    now: Timestamp,
) -> Result<Map<String, Value>, TokenError> {
    let jwt = jwt.trim();
    let decoded = decode_unverified(jwt)?;
    let header_alg = decoded
        .header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let algorithm =
        accepted_algorithm(header_alg).ok_or_else(|| TokenError::UnsupportedAlgorithm {
            alg: header_alg.to_owned(),
        })?;
    let kid = decoded.key_id().ok_or(TokenError::MissingKeyId)?;
    let jwk = find_key(jwks, kid)?;
    if let Some(key_alg) = jwk.common.key_algorithm.map(|alg| alg.to_string())
        && key_alg != header_alg
    {
        return Err(TokenError::AlgorithmMismatch {
            token_alg: header_alg.to_owned(),
            key_alg,
        });
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|source| TokenError::InvalidKey {
        kid: kid.to_owned(),
        source,
    })?;

    // Time claims are checked below against the injected clock.
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_audience(&[audience]);
    let mut required = vec!["aud"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key, &validation)
        .map_err(|source| match source.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAudience => TokenError::WrongAudience {
                expected: audience.to_owned(),
            },
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer {
                expected: issuer.unwrap_or_default().to_owned(),
            },
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                TokenError::MissingClaim { claim: "aud" }
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                TokenError::MissingClaim { claim: "iss" }
            }
            _ => TokenError::Rejected { source },
        })?
        .claims;

    let now_second = now.as_second();
    let expires_at =
        timestamp_claim(&claims, "exp").ok_or(TokenError::MissingClaim { claim: "exp" })?;
    if now_second >= expires_at.as_second().saturating_add(VERIFY_LEEWAY_SECONDS) {
        return Err(TokenError::Expired {
            expired_at: expires_at,
        });
    }
    if let Some(not_before) = timestamp_claim(&claims, "nbf")
        && now_second.saturating_add(VERIFY_LEEWAY_SECONDS) < not_before.as_second()
    {
        return Err(TokenError::NotYetValid { not_before });
    }
    Ok(claims)
}

/// A token fedid has just signed, before it is written anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// The compact JWT. Never logged.
    pub jwt: String,
    /// The `kid` of the key that signed it.
    pub key_id: String,
    /// `iat`.
    pub issued_at: Timestamp,
    /// `exp`.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("key_id", &self.key_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;
    use crate::{
        crd::SigningAlgorithm,
        issuer::keys::{KeyRecord, Signer, generate_key, jwks},
    };

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

    fn claims(extra: Value) -> Map<String, Value> {
        let mut claims = json!({
            "iss": ISSUER,
            "sub": "system:fedid:ci:web",
            "aud": ["sts.amazonaws.com", "other"],
            "iat": T0,
            "nbf": T0 - 5,
            "exp": T0 + 3600,
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        match claims {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn sign(algorithm: SigningAlgorithm, claims: &Map<String, Value>) -> String {
        Signer::new(key(algorithm))
            .expect("signer")
            .sign(claims)
            .expect("signs")
    }

    fn both_jwks() -> Value {
        jwks(&[key(SigningAlgorithm::RS256), key(SigningAlgorithm::ES256)]).expect("JWKS")
    }

    fn reason(result: Result<Map<String, Value>, TokenError>) -> Result<(), &'static str> {
        result.map(|_| ()).map_err(|error| error.reason())
    }

    #[test]
    fn sign_then_verify_round_trips_for_both_algorithms() {
        for algorithm in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            let original = claims(json!({"repository": "acme/web"}));
            let token = sign(algorithm, &original);
            let verified = verify(
                &token,
                &both_jwks(),
                "sts.amazonaws.com",
                Some(ISSUER),
                at(T0 + 60),
            )
            .expect("verifies");
            assert_eq!(verified, original, "{algorithm:?}");
        }
    }

    #[test]
    fn decode_unverified_reads_header_and_claims() {
        let original = claims(json!({}));
        let token = sign(SigningAlgorithm::ES256, &original);
        let decoded = decode_unverified(&format!("  {token}\n")).expect("decodes");
        assert_eq!(decoded.claims, original);
        assert_eq!(
            decoded.key_id(),
            Some(key(SigningAlgorithm::ES256).kid.as_str())
        );
        assert_eq!(decoded.header["alg"], json!("ES256"));
        assert_eq!(decoded.header["typ"], json!("JWT"));
        assert_eq!(decoded.issued_at(), Some(at(T0)));
        assert_eq!(decoded.expires_at(), Some(at(T0 + 3600)));
    }

    #[test]
    fn decode_unverified_rejects_malformed_tokens() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.!!.x",
            "W10.e30.x",
            "e30.bnVsbA.x",
        ] {
            assert_eq!(
                decode_unverified(bad).map_err(|error| error.reason()),
                Err("MalformedToken"),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_audience_or_issuer_fails() {
        let token = sign(SigningAlgorithm::RS256, &claims(json!({})));
        assert_eq!(
            reason(verify(&token, &both_jwks(), "gcp", None, at(T0))),
            Err("WrongAudience")
        );
        assert_eq!(
            reason(verify(
                &token,
                &both_jwks(),
                "other",
                Some("https://evil.example.com"),
                at(T0)
            )),
            Err("WrongIssuer")
        );
        let mut no_aud = claims(json!({}));
        no_aud.remove("aud");
        let token = sign(SigningAlgorithm::RS256, &no_aud);
        assert_eq!(
            reason(verify(&token, &both_jwks(), "gcp", None, at(T0))),
            Err("MissingClaim")
        );
    }

    #[test]
    fn expiry_and_not_before_use_a_sixty_second_leeway() {
        let token = sign(SigningAlgorithm::ES256, &claims(json!({})));
        let check = |now| reason(verify(&token, &both_jwks(), "other", None, at(now)));
        assert_eq!(check(T0 + 3600 + 59), Ok(()));
        assert_eq!(check(T0 + 3600 + 60), Err("Expired"));
        assert_eq!(check(T0 - 5 - 60), Ok(()));
        assert_eq!(check(T0 - 5 - 61), Err("NotYetValid"));
        let error =
            verify(&token, &both_jwks(), "other", None, at(T0 + 7200)).expect_err("expired");
        assert_eq!(error.to_string(), "token expired at 2027-01-15T09:00:00Z");

        let mut no_exp = claims(json!({}));
        no_exp.remove("exp");
        let token = sign(SigningAlgorithm::ES256, &no_exp);
        assert_eq!(
            reason(verify(&token, &both_jwks(), "other", None, at(T0))),
            Err("MissingClaim")
        );
    }

    #[test]
    fn tampered_or_foreign_tokens_fail() {
        let token = sign(SigningAlgorithm::RS256, &claims(json!({})));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged_claims = claims(json!({"sub": "system:fedid:prod:admin"}));
        parts[1] = URL_SAFE_NO_PAD.encode(Value::Object(forged_claims).to_string());
        let forged = parts.join(".");
        assert_eq!(
            reason(verify(&forged, &both_jwks(), "other", None, at(T0))),
            Err("BadSignature")
        );

        let only_ec = jwks(&[key(SigningAlgorithm::ES256)]).expect("JWKS");
        assert_eq!(
            reason(verify(&token, &only_ec, "other", None, at(T0))),
            Err("UnknownKeyId")
        );
        assert_eq!(
            reason(verify(&token, &json!({"nope": 1}), "other", None, at(T0))),
            Err("InvalidJwks")
        );
    }

    #[test]
    fn header_algorithm_must_be_accepted_and_match_the_key() {
        let rsa_kid = &key(SigningAlgorithm::RS256).kid;
        let body = URL_SAFE_NO_PAD.encode(Value::Object(claims(json!({}))).to_string());
        let unsigned = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": rsa_kid}).to_string())
        );
        assert_eq!(
            reason(verify(&unsigned, &both_jwks(), "other", None, at(T0))),
            Err("UnsupportedAlgorithm")
        );
        // An ES256 header pointing at the RSA key.
        let confused = format!(
            "{}.{body}.sig",
            URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": rsa_kid}).to_string())
        );
        assert_eq!(
            reason(verify(&confused, &both_jwks(), "other", None, at(T0))),
            Err("AlgorithmMismatch")
        );
        let no_kid = format!(
            "{}.{body}.sig",
            URL_SAFE_NO_PAD.encode(json!({"alg": "RS256"}).to_string())
        );
        assert_eq!(
            reason(verify(&no_kid, &both_jwks(), "other", None, at(T0))),
            Err("MissingKeyId")
        );
    }

    #[test]
    fn issued_tokens_verify_until_just_before_expiry() {
        let token = sign(SigningAlgorithm::RS256, &claims(json!({})));
        let jwks = both_jwks();
        let mut now = at(T0);
        while now < at(T0 + 3600 + 60) {
            assert!(verify(&token, &jwks, "sts.amazonaws.com", Some(ISSUER), now).is_ok());
            now = now
                .checked_add(SignedDuration::from_mins(7))
                .expect("in range");
        }
    }
}
