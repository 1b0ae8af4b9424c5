//! Signing keys: generation, storage format, rotation decisions, JWKS rendering and signing.
//!
//! An issuer's keys live in a [`KeyRing`] that the I/O shell stores as JSON in a Secret. All
//! decisions about the ring are pure functions of the ring, a [`RotationPolicy`] and an
//! injected `now`:
//!
//! * the **signing key** is the key with the latest activation time that is not in the future;
//! * a key is **retired** once the next key (by activation time) has activated, and it stays
//!   **published** until every token it signed has expired, plus a margin:
//!   `retired_at + max_token_lifetime + retirement_margin`;
//! * keys that have not activated yet (pending keys) are published, so relying parties that
//!   cache the JWKS learn them before the first token signed with them appears.
//!
//! The shell drives rotation like this: read the ring, call [`plan_rotation`]; if the plan
//! needs a key ([`RotationPlan::key_to_generate`]) generate it with [`generate_key`] (RSA
//! generation is slow, so off the async runtime); call [`apply_plan`]; repeat until the plan is
//! [`RotationPlan::Unchanged`]; then write the ring back with optimistic concurrency and requeue
//! at [`next_wakeup`].

use crate::reason::Reason;
use std::fmt;

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    crd::SigningAlgorithm,
    time::{minus, plus},
};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The crypto library could not generate a key pair.
    #[error("failed to generate a {algorithm} key pair")]
    Generate {
        /// Requested algorithm.
        algorithm: SigningAlgorithm,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A freshly generated key pair could not be loaded to compute its key ID.
    #[error("failed to load a freshly generated {algorithm} key pair")]
    LoadGenerated {
        /// Requested algorithm.
        algorithm: SigningAlgorithm,
        /// The underlying error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A stored private key could not be loaded.
    #[error("failed to load the private key of key {kid:?}")]
    InvalidPrivateKey {
        /// Key ID of the broken key.
        kid: String,
        /// The underlying error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The public key could not be derived or encoded.
    #[error("failed to derive the public key of key {kid:?}")]
    InvalidPublicKey {
        /// Key ID of the broken key.
        kid: String,
        /// The underlying error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The public key has an unexpected type for its algorithm.
    #[error("key {kid:?} has an unexpected public key type")]
    UnexpectedKeyType {
        /// Key ID of the broken key.
        kid: String,
    },
    /// A stored private key parsed as PEM but the crypto library rejected it for signing.
    #[error("the private key of key {kid:?} cannot sign: {problem}")]
    UnusablePrivateKey {
        /// Key ID of the broken key.
        kid: String,
        /// Why the crypto library rejected it.
        problem: aws_lc_rs::error::KeyRejected,
    },
    /// Signing a token failed.
    #[error("failed to sign a token with key {kid:?}: {problem}")]
    Sign {
        /// Key ID of the signing key.
        kid: String,
        /// What failed: encoding the claims or the signature itself.
        problem: SignProblem,
    },
    /// The stored key ring is not valid JSON of the expected shape.
    #[error("failed to parse the stored key ring")]
    DecodeRing {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The key ring could not be serialized.
    #[error("failed to serialize the key ring")]
    EncodeRing {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// [`apply_plan`] was given no key for a plan that adds one.
    #[error("the rotation plan adds a key but no key was provided")]
    MissingNewKey,
    /// [`apply_plan`] was given a key for a plan that adds none.
    #[error("the rotation plan does not add a key but one was provided")]
    UnexpectedNewKey,
    /// [`apply_plan`] was given a key with the wrong algorithm.
    #[error("the rotation plan adds a {expected} key but a {found} key was provided")]
    NewKeyAlgorithm {
        /// Algorithm the plan asks for.
        expected: SigningAlgorithm,
        /// Algorithm of the provided key.
        found: SigningAlgorithm,
    },
}

impl KeyError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Generate { .. } | Self::LoadGenerated { .. } => Reason::KeyGenerationFailed,
            Self::InvalidPrivateKey { .. } | Self::UnusablePrivateKey { .. } => {
                Reason::InvalidPrivateKey
            }
            Self::InvalidPublicKey { .. } | Self::UnexpectedKeyType { .. } => {
                Reason::InvalidPublicKey
            }
            Self::Sign { .. } => Reason::SigningFailed,
            Self::DecodeRing { .. } => Reason::KeyRingCorrupt,
            Self::EncodeRing { .. } => Reason::KeyRingEncodingFailed,
            // A plan and the key given to apply it disagree: preparing the key failed.
            Self::MissingNewKey | Self::UnexpectedNewKey | Self::NewKeyAlgorithm { .. } => {
                Reason::KeyGenerationFailed
            }
        }
    }
}

/// One signing key as stored in the key ring Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// Key ID: the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    pub kid: String,
    /// Signing algorithm.
    pub alg: SigningAlgorithm,
    /// PKCS#8 PEM of the private key.
    pub private_key_pem: String,
    /// When the key was generated.
    pub created_at: Timestamp,
    /// When the key starts signing tokens.
    pub activates_at: Timestamp,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_key_pem", &"[redacted]")
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .finish()
    }
}

impl KeyRecord {
    fn encoding_key(&self) -> Result<EncodingKey, KeyError> {
        load_encoding_key(self.alg, &self.private_key_pem).map_err(|source| {
            KeyError::InvalidPrivateKey {
                kid: self.kid.clone(),
                source,
            }
        })
    }

    /// The public key as a JWK with `kty`, `kid`, `alg`, `use: "sig"` and either `n`/`e`
    /// (RSA) or `crv`/`x`/`y` (EC), all base64url without padding.
    pub fn public_jwk(&self) -> Result<Value, KeyError> {
        let jwk = public_jwk(&self.encoding_key()?, self.alg).map_err(|source| {
            KeyError::InvalidPublicKey {
                kid: self.kid.clone(),
                source,
            }
        })?;
        let (kid, alg) = (self.kid.as_str(), self.alg.as_str());
        match (&jwk.algorithm, self.alg) {
            (AlgorithmParameters::RSA(rsa), SigningAlgorithm::RS256) => Ok(json!({
                "kty": "RSA", "kid": kid, "alg": alg, "use": "sig", "n": rsa.n, "e": rsa.e,
            })),
            (AlgorithmParameters::EllipticCurve(ec), SigningAlgorithm::ES256)
                if ec.curve == EllipticCurve::P256 =>
            {
                Ok(json!({
                    "kty": "EC", "kid": kid, "alg": alg, "use": "sig",
                    "crv": "P-256", "x": ec.x, "y": ec.y,
                }))
            }
            _ => Err(KeyError::UnexpectedKeyType {
                kid: self.kid.clone(),
            }),
        }
    }
}

fn jwt_algorithm(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn load_encoding_key(
    algorithm: SigningAlgorithm,
    pem: &str,
) -> Result<EncodingKey, jsonwebtoken::errors::Error> {
    match algorithm {
        SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
}

fn public_jwk(
    key: &EncodingKey,
    algorithm: SigningAlgorithm,
) -> Result<Jwk, jsonwebtoken::errors::Error> {
    Jwk::from_encoding_key(key, jwt_algorithm(algorithm))
}

/// Generates a key pair (RSA 2048 for RS256, P-256 for ES256) created at `now`. The key
/// activates at `now` unless [`apply_plan`] schedules it later.
///
/// RSA generation takes tens to hundreds of milliseconds; call this off the async runtime.
pub fn generate_key(algorithm: SigningAlgorithm, now: Timestamp) -> Result<KeyRecord, KeyError> {
    let key_pair = match algorithm {
        SigningAlgorithm::RS256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        SigningAlgorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
    }
    .map_err(|source| KeyError::Generate { algorithm, source })?;
    let private_key_pem = key_pair.serialize_pem();
    let thumbprint = load_encoding_key(algorithm, &private_key_pem)
        .and_then(|key| public_jwk(&key, algorithm))
        .and_then(|jwk| jwk.thumbprint(ThumbprintHash::SHA256))
        .map_err(|source| KeyError::LoadGenerated { algorithm, source })?;
    Ok(KeyRecord {
        kid: thumbprint,
        alg: algorithm,
        private_key_pem,
        created_at: now,
        activates_at: now,
    })
}

/// Renders a JSON Web Key Set with the public parts of `keys`, in the given order.
pub fn jwks(keys: &[&KeyRecord]) -> Result<Value, KeyError> {
    let keys = keys
        .iter()
        .map(|key| key.public_jwk())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "keys": keys }))
}

/// What went wrong while signing one token.
#[derive(Debug, thiserror::Error)]
pub enum SignProblem {
    /// The claims could not be encoded as JSON.
    #[error("the token's header or claims are not encodable as JSON")]
    Encode(#[source] serde_json::Error),
    /// The crypto library refused to sign.
    #[error("the signature failed")]
    Signature,
}

/// A private key parsed once, so that each signature costs only the signing itself.
enum ParsedKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key loaded once and reused for many tokens: the private key is parsed and the
/// token header encoded when the signer is built, not per token.
pub struct Signer {
    kid: String,
    algorithm: SigningAlgorithm,
    key: ParsedKey,
    /// `base64url({"typ":"JWT","alg":…,"kid":…})`, the same for every token.
    encoded_header: String,
    random: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads and parses the private key of `record`.
    pub fn new(record: &KeyRecord) -> Result<Self, KeyError> {
        let der = record.encoding_key()?;
        let unusable = |problem| KeyError::UnusablePrivateKey {
            kid: record.kid.clone(),
            problem,
        };
        let key = match record.alg {
            SigningAlgorithm::RS256 => {
                ParsedKey::Rsa(RsaKeyPair::from_der(der.as_bytes()).map_err(unusable)?)
            }
            SigningAlgorithm::ES256 => ParsedKey::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes())
                    .map_err(unusable)?,
            ),
        };
        let mut header = Header::new(jwt_algorithm(record.alg));
        header.typ = Some("JWT".to_owned());
        header.kid = Some(record.kid.clone());
        let header_json = serde_json::to_vec(&header).map_err(|source| KeyError::Sign {
            kid: record.kid.clone(),
            problem: SignProblem::Encode(source),
        })?;
        Ok(Self {
            kid: record.kid.clone(),
            algorithm: record.alg,
            key,
            encoded_header: URL_SAFE_NO_PAD.encode(header_json),
            random: SystemRandom::new(),
        })
    }

    /// Key ID placed in the `kid` header of every token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signing algorithm placed in the `alg` header of every token.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Signs `claims` into a compact JWT with the header `{alg, kid, typ: "JWT"}`.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, KeyError> {
        let failed = |problem| KeyError::Sign {
            kid: self.kid.clone(),
            problem,
        };
        let claims_json =
            serde_json::to_vec(claims).map_err(|source| failed(SignProblem::Encode(source)))?;
        let mut jwt =
            String::with_capacity(self.encoded_header.len() + claims_json.len() * 4 / 3 + 400);
        jwt.push_str(&self.encoded_header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims_json, &mut jwt);
        let signature = match &self.key {
            ParsedKey::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &self.random,
                    jwt.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| failed(SignProblem::Signature))?;
                signature
            }
            ParsedKey::Ec(key) => key
                .sign(&self.random, jwt.as_bytes())
                .map_err(|_| failed(SignProblem::Signature))?
                .as_ref()
                .to_vec(),
        };
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }
}

/// All keys of one issuer plus the last rotation request that was honoured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRing {
    /// Every key that is pending, signing, or retired but still published.
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Value of the rotate-keys annotation that the last requested rotation answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_request: Option<String>,
}

/// Timing of key rotation for one issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Algorithm new keys must use.
    pub algorithm: SigningAlgorithm,
    /// How long a key signs before the next one takes over.
    pub rotation_period: SignedDuration,
    /// How long a new key is published before it signs.
    pub prepublish_period: SignedDuration,
    /// Longest lifetime of a token the issuer signs.
    pub max_token_lifetime: SignedDuration,
    /// Extra time a retired key stays published after its last token expired.
    pub retirement_margin: SignedDuration,
}

impl RotationPolicy {
    /// How long a retired key stays published after it stopped signing.
    fn retention(&self) -> SignedDuration {
        self.max_token_lifetime
            .saturating_add(self.retirement_margin)
    }
}

impl KeyRing {
    /// Parses a ring stored by [`KeyRing::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        serde_json::from_slice(bytes).map_err(|source| KeyError::DecodeRing { source })
    }

    /// Serializes the ring for storage.
    pub fn to_json(&self) -> Result<Vec<u8>, KeyError> {
        serde_json::to_vec(self).map_err(|source| KeyError::EncodeRing { source })
    }

    /// Keys ordered by activation time; keys activating at the same instant keep their order
    /// in the ring, so the one added later wins.
    fn by_activation(&self) -> Vec<&KeyRecord> {
        let mut keys: Vec<&KeyRecord> = self.keys.iter().collect();
        keys.sort_by_key(|key| key.activates_at);
        keys
    }

    /// The key that signs tokens at `now`: the one with the latest activation time not after
    /// `now`.
    pub fn signing_key(&self, now: Timestamp) -> Option<&KeyRecord> {
        self.by_activation()
            .into_iter()
            .rfind(|key| key.activates_at <= now)
    }

    /// The key that takes over from `kid` (the next key by activation time), whether or not it
    /// has activated yet.
    fn successor(&self, kid: &str) -> Option<&KeyRecord> {
        let ordered = self.by_activation();
        let position = ordered.iter().position(|key| key.kid == kid)?;
        ordered.get(position + 1).copied()
    }

    /// When the key `kid` stopped signing: the activation time of the next key, if that key has
    /// activated by `now`.
    pub fn retired_at(&self, kid: &str, now: Timestamp) -> Option<Timestamp> {
        self.successor(kid)
            .map(|next| next.activates_at)
            .filter(|activated| *activated <= now)
    }

    /// When the key `kid` leaves the JWKS, once its successor is known.
    fn removal_at(&self, kid: &str, policy: &RotationPolicy) -> Option<Timestamp> {
        self.successor(kid)
            .map(|next| plus(next.activates_at, policy.retention()))
    }

    /// Keys that belong in the JWKS at `now`: pending keys, the signing key, and retired keys
    /// whose tokens may still be valid. Ordered by activation time.
    pub fn published_keys(&self, policy: &RotationPolicy, now: Timestamp) -> Vec<&KeyRecord> {
        self.by_activation()
            .into_iter()
            .filter(|key| {
                self.removal_at(&key.kid, policy)
                    .is_none_or(|removal| now < removal)
            })
            .collect()
    }

    /// How long [`published_keys`](Self::published_keys) at `now` stays what it is: the
    /// earliest time after `now` at which a published key leaves the JWKS, or `None` when no key
    /// is due to leave (the set then changes only with the ring itself).
    pub fn published_until(&self, policy: &RotationPolicy, now: Timestamp) -> Option<Timestamp> {
        self.keys
            .iter()
            .filter_map(|key| self.removal_at(&key.kid, policy))
            .filter(|removal| *removal > now)
            .min()
    }

    /// Keys that activate after `now`.
    fn pending_keys(&self, now: Timestamp) -> impl Iterator<Item = &KeyRecord> {
        self.keys.iter().filter(move |key| key.activates_at > now)
    }
}

/// Why a new key is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareReason {
    /// The signing key reached the end of its rotation period.
    Scheduled,
    /// The rotate-keys annotation has a new value.
    Requested,
    /// The issuer's algorithm changed.
    AlgorithmChanged,
}

impl PrepareReason {
    /// Stable, machine-readable name, usable as a metric label or event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::Requested => "Requested",
            Self::AlgorithmChanged => "AlgorithmChanged",
        }
    }
}

/// The next change to make to a key ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationPlan {
    /// The ring is up to date.
    Unchanged,
    /// There is no signing key: add a key that signs immediately.
    Bootstrap {
        /// Algorithm of the new key.
        algorithm: SigningAlgorithm,
        /// Rotation request to record as answered, if a new one was pending.
        rotation_request: Option<String>,
    },
    /// Add a key that starts signing at `activates_at`.
    Prepare {
        /// Algorithm of the new key.
        algorithm: SigningAlgorithm,
        /// When the new key starts signing.
        activates_at: Timestamp,
        /// Why the key is added.
        reason: PrepareReason,
        /// Rotation request to record as answered, if a new one was pending.
        rotation_request: Option<String>,
    },
    /// Remove keys that no valid token can reference, and pending keys with an outdated
    /// algorithm.
    Prune {
        /// Key IDs to remove.
        kids: Vec<String>,
    },
}

impl RotationPlan {
    /// The algorithm of the key the caller must generate before [`apply_plan`], if any.
    pub fn key_to_generate(&self) -> Option<SigningAlgorithm> {
        match self {
            Self::Bootstrap { algorithm, .. } | Self::Prepare { algorithm, .. } => Some(*algorithm),
            Self::Unchanged | Self::Prune { .. } => None,
        }
    }
}

/// Decides the next change to `ring` at `now`. `rotation_request` is the current value of the
/// rotate-keys annotation. Apply the plan with [`apply_plan`] and plan again until the result
/// is [`RotationPlan::Unchanged`]; every step makes progress, so the loop ends.
pub fn plan_rotation(
    ring: &KeyRing,
    policy: &RotationPolicy,
    rotation_request: Option<&str>,
    now: Timestamp,
) -> RotationPlan {
    let new_request = rotation_request
        .filter(|request| ring.last_rotation_request.as_deref() != Some(*request))
        .map(str::to_owned);
    let Some(active) = ring.signing_key(now) else {
        return RotationPlan::Bootstrap {
            algorithm: policy.algorithm,
            rotation_request: new_request,
        };
    };

    let mut prunable: Vec<String> = ring
        .keys
        .iter()
        .filter(|key| {
            let expired = ring
                .removal_at(&key.kid, policy)
                .is_some_and(|removal| removal <= now);
            let outdated_pending = key.activates_at > now && key.alg != policy.algorithm;
            expired || outdated_pending
        })
        .map(|key| key.kid.clone())
        .collect();
    if !prunable.is_empty() {
        prunable.sort();
        return RotationPlan::Prune { kids: prunable };
    }

    if ring.pending_keys(now).next().is_some() {
        return RotationPlan::Unchanged;
    }
    let reason = if active.alg != policy.algorithm {
        PrepareReason::AlgorithmChanged
    } else if new_request.is_some() {
        PrepareReason::Requested
    } else if now >= prepare_due_at(active, policy) {
        PrepareReason::Scheduled
    } else {
        return RotationPlan::Unchanged;
    };
    RotationPlan::Prepare {
        algorithm: policy.algorithm,
        activates_at: plus(now, policy.prepublish_period),
        reason,
        rotation_request: new_request,
    }
}

/// When the successor of `active` must be prepared so that it activates one rotation period
/// after `active` did.
fn prepare_due_at(active: &KeyRecord, policy: &RotationPolicy) -> Timestamp {
    minus(
        plus(active.activates_at, policy.rotation_period),
        policy.prepublish_period,
    )
}

/// Applies `plan` to `ring`. `new_key` must be a freshly generated key exactly when the plan
/// asks for one ([`RotationPlan::key_to_generate`]); its activation time is set from the plan
/// (immediately, at its creation time, for a bootstrap).
pub fn apply_plan(
    ring: &KeyRing,
    plan: &RotationPlan,
    new_key: Option<KeyRecord>,
) -> Result<KeyRing, KeyError> {
    let mut next = ring.clone();
    let (mut key, activates_at, rotation_request) = match (plan, new_key) {
        (RotationPlan::Unchanged, None) => return Ok(next),
        (RotationPlan::Prune { kids }, None) => {
            next.keys.retain(|key| !kids.contains(&key.kid));
            return Ok(next);
        }
        (RotationPlan::Unchanged | RotationPlan::Prune { .. }, Some(_)) => {
            return Err(KeyError::UnexpectedNewKey);
        }
        (RotationPlan::Bootstrap { .. } | RotationPlan::Prepare { .. }, None) => {
            return Err(KeyError::MissingNewKey);
        }
        (
            RotationPlan::Bootstrap {
                rotation_request, ..
            },
            Some(key),
        ) => {
            let activates_at = key.created_at;
            (key, activates_at, rotation_request)
        }
        (
            RotationPlan::Prepare {
                activates_at,
                rotation_request,
                ..
            },
            Some(key),
        ) => (key, *activates_at, rotation_request),
    };
    if let Some(expected) = plan
        .key_to_generate()
        .filter(|expected| *expected != key.alg)
    {
        return Err(KeyError::NewKeyAlgorithm {
            expected,
            found: key.alg,
        });
    }
    key.activates_at = activates_at;
    next.keys.push(key);
    if rotation_request.is_some() {
        next.last_rotation_request.clone_from(rotation_request);
    }
    Ok(next)
}

/// When the next key takes over signing: the earliest pending key's activation, or else one
/// rotation period after the signing key activated (but never sooner than a new key could be
/// published). `None` for a ring without a signing key.
pub fn next_rotation_time(
    ring: &KeyRing,
    policy: &RotationPolicy,
    now: Timestamp,
) -> Option<Timestamp> {
    if let Some(pending) = ring.pending_keys(now).map(|key| key.activates_at).min() {
        return Some(pending);
    }
    let active = ring.signing_key(now)?;
    Some(plus(active.activates_at, policy.rotation_period).max(plus(now, policy.prepublish_period)))
}

/// The earliest instant after `now` at which a decision about the ring changes: a pending key
/// activates, a retired key must be removed, or the next key must be prepared. The reconciler
/// requeues exactly then. `None` when nothing is scheduled.
pub fn next_wakeup(ring: &KeyRing, policy: &RotationPolicy, now: Timestamp) -> Option<Timestamp> {
    let activations = ring.keys.iter().map(|key| key.activates_at);
    let removals = ring
        .keys
        .iter()
        .filter_map(|key| ring.removal_at(&key.kid, policy));
    let preparation = ring
        .signing_key(now)
        .filter(|_| ring.pending_keys(now).next().is_none())
        .map(|active| prepare_due_at(active, policy));
    activations
        .chain(removals)
        .chain(preparation)
        .filter(|instant| *instant > now)
        .min()
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn at_hour(hours: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + hours * 3600).expect("valid timestamp")
    }

    fn policy() -> RotationPolicy {
        RotationPolicy {
            algorithm: SigningAlgorithm::RS256,
            rotation_period: SignedDuration::from_hours(720),
            prepublish_period: SignedDuration::from_hours(2),
            max_token_lifetime: SignedDuration::from_hours(24),
            retirement_margin: HOUR,
        }
    }

    /// Key generation is slow; share one real key per algorithm and vary the metadata.
    fn real_key(algorithm: SigningAlgorithm) -> KeyRecord {
        static RSA: OnceLock<KeyRecord> = OnceLock::new();
        static EC: OnceLock<KeyRecord> = OnceLock::new();
        let cell = match algorithm {
            SigningAlgorithm::RS256 => &RSA,
            SigningAlgorithm::ES256 => &EC,
        };
        cell.get_or_init(|| generate_key(algorithm, at_hour(0)).expect("key generation"))
            .clone()
    }

    /// A key record for decision tests; the key material is never used.
    fn key(kid: &str, activates_hour: i64) -> KeyRecord {
        KeyRecord {
            kid: kid.to_owned(),
            alg: SigningAlgorithm::RS256,
            private_key_pem: String::new(),
            created_at: at_hour(activates_hour - 2),
            activates_at: at_hour(activates_hour),
        }
    }

    fn ring(keys: Vec<KeyRecord>) -> KeyRing {
        KeyRing {
            keys,
            last_rotation_request: None,
        }
    }

    fn kids(keys: &[&KeyRecord]) -> Vec<String> {
        keys.iter().map(|key| key.kid.clone()).collect()
    }

    fn signing_kid(ring: &KeyRing, now: Timestamp) -> Option<String> {
        ring.signing_key(now).map(|key| key.kid.clone())
    }

    #[test]
    fn generated_keys_have_thumbprint_kids_and_pkcs8_pem() {
        for algorithm in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            let key = real_key(algorithm);
            assert_eq!(key.alg, algorithm);
            assert!(
                key.private_key_pem
                    .starts_with("-----BEGIN PRIVATE KEY-----")
            );
            assert_eq!(key.created_at, key.activates_at);
            // base64url of a SHA-256 digest.
            assert_eq!(key.kid.len(), 43, "{}", key.kid);
            let digest = URL_SAFE_NO_PAD.decode(&key.kid).expect("base64url kid");
            assert_eq!(digest.len(), 32);
        }
        let other = generate_key(SigningAlgorithm::ES256, at_hour(1)).expect("key generation");
        assert_ne!(other.kid, real_key(SigningAlgorithm::ES256).kid);
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_of_the_published_jwk() {
        use sha2::{Digest, Sha256};
        for algorithm in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            let key = real_key(algorithm);
            let jwk = key.public_jwk().expect("public JWK");
            // RFC 7638: required members only, lexicographic order, no whitespace.
            let canonical = match algorithm {
                SigningAlgorithm::RS256 => {
                    format!(
                        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                        jwk["e"].as_str().unwrap_or_default(),
                        jwk["n"].as_str().unwrap_or_default()
                    )
                }
                SigningAlgorithm::ES256 => format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    jwk["x"].as_str().unwrap_or_default(),
                    jwk["y"].as_str().unwrap_or_default()
                ),
            };
            let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
            assert_eq!(key.kid, expected);
        }
    }

    #[test]
    fn jwks_contains_only_public_parts_without_padding() {
        let rsa = real_key(SigningAlgorithm::RS256);
        let ec = real_key(SigningAlgorithm::ES256);
        let set = jwks(&[&rsa, &ec]).expect("JWKS renders");
        let keys = set["keys"].as_array().expect("keys array");
        assert_eq!(keys.len(), 2);

        let rsa_jwk = &keys[0];
        let modulus = URL_SAFE_NO_PAD
            .decode(rsa_jwk["n"].as_str().expect("n"))
            .expect("n is base64url without padding");
        assert_eq!(
            modulus.len(),
            256,
            "2048-bit modulus without a leading zero"
        );
        assert_eq!(
            *rsa_jwk,
            json!({
                "kty": "RSA", "kid": rsa.kid, "alg": "RS256", "use": "sig",
                "n": rsa_jwk["n"], "e": "AQAB",
            })
        );

        let ec_jwk = &keys[1];
        for coordinate in ["x", "y"] {
            let bytes = URL_SAFE_NO_PAD
                .decode(ec_jwk[coordinate].as_str().expect("coordinate"))
                .expect("base64url without padding");
            assert_eq!(bytes.len(), 32);
        }
        assert_eq!(
            *ec_jwk,
            json!({
                "kty": "EC", "kid": ec.kid, "alg": "ES256", "use": "sig", "crv": "P-256",
                "x": ec_jwk["x"], "y": ec_jwk["y"],
            })
        );
        let text = set.to_string();
        assert!(!text.contains("PRIVATE"));
        assert!(!text.contains("\"d\""));
        assert_eq!(jwks(&[]).expect("empty JWKS"), json!({"keys": []}));
    }

    #[test]
    fn broken_private_keys_are_reported_with_their_kid() {
        let mut broken = real_key(SigningAlgorithm::RS256);
        broken.private_key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        broken.kid = "broken".into();
        let error = jwks(&[&broken]).expect_err("unusable key");
        assert_eq!(error.reason(), "InvalidPrivateKey");
        assert!(error.to_string().contains("broken"));
        assert_eq!(
            Signer::new(&broken)
                .map(|signer| signer.kid().to_owned())
                .map_err(|e| e.reason().as_str()),
            Err("InvalidPrivateKey")
        );
    }

    #[test]
    fn debug_output_never_contains_the_private_key() {
        let key = real_key(SigningAlgorithm::ES256);
        let ring = ring(vec![key.clone()]);
        let signer = Signer::new(&key).expect("signer");
        for text in [
            format!("{key:?}"),
            format!("{ring:?}"),
            format!("{signer:?}"),
        ] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(text.contains(&key.kid), "{text}");
        }
        assert!(format!("{key:?}").contains("[redacted]"));
    }

    #[test]
    fn a_key_of_the_other_algorithm_is_refused_as_an_invalid_private_key() {
        for (claimed, actual) in [
            (SigningAlgorithm::RS256, SigningAlgorithm::ES256),
            (SigningAlgorithm::ES256, SigningAlgorithm::RS256),
        ] {
            let mut record = real_key(actual);
            record.alg = claimed;
            let error = Signer::new(&record).expect_err("a mismatched key cannot sign");
            assert_eq!(error.reason(), Reason::InvalidPrivateKey, "{error}");
            assert!(!error.to_string().contains("PRIVATE KEY"), "{error}");
        }
    }

    #[test]
    fn signer_sets_alg_kid_and_typ() {
        for algorithm in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            let key = real_key(algorithm);
            let signer = Signer::new(&key).expect("signer");
            assert_eq!(signer.kid(), key.kid);
            assert_eq!(signer.algorithm(), algorithm);
            let mut claims = Map::new();
            claims.insert("sub".into(), json!("me"));
            let token = signer.sign(&claims).expect("signs");
            let header_part = token.split('.').next().expect("header part");
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_part).expect("base64url"))
                    .expect("header JSON");
            assert_eq!(
                header,
                json!({"alg": algorithm.as_str(), "kid": key.kid, "typ": "JWT"})
            );
        }
    }

    #[test]
    fn ring_json_round_trips() {
        let original = KeyRing {
            keys: vec![real_key(SigningAlgorithm::ES256), key("b", 5)],
            last_rotation_request: Some("2026-05-01".into()),
        };
        let bytes = original.to_json().expect("serializes");
        let text = String::from_utf8(bytes.clone()).expect("UTF-8");
        assert!(text.contains("\"lastRotationRequest\":\"2026-05-01\""));
        assert!(text.contains("\"activatesAt\":\"2027-01-15T13:00:00Z\""));
        assert_eq!(KeyRing::from_json(&bytes).expect("parses"), original);
        assert_eq!(
            KeyRing::from_json(b"{}").expect("empty object is an empty ring"),
            KeyRing::default()
        );
        assert_eq!(
            KeyRing::from_json(b"not json").map_err(|error| error.reason().as_str()),
            Err("KeyRingCorrupt")
        );
    }

    #[test]
    fn signing_key_is_the_latest_activated() {
        let ring = ring(vec![key("a", 0), key("c", 100), key("b", 50)]);
        assert_eq!(signing_kid(&ring, at_hour(-1)), None);
        assert_eq!(signing_kid(&ring, at_hour(0)).as_deref(), Some("a"));
        assert_eq!(signing_kid(&ring, at_hour(49)).as_deref(), Some("a"));
        assert_eq!(signing_kid(&ring, at_hour(50)).as_deref(), Some("b"));
        assert_eq!(signing_kid(&ring, at_hour(99)).as_deref(), Some("b"));
        assert_eq!(signing_kid(&ring, at_hour(100)).as_deref(), Some("c"));
        assert_eq!(signing_kid(&ring, at_hour(1000)).as_deref(), Some("c"));
    }

    #[test]
    fn keys_activating_together_prefer_the_newer() {
        let ring = ring(vec![key("old", 10), key("new", 10)]);
        assert_eq!(signing_kid(&ring, at_hour(10)).as_deref(), Some("new"));
        assert_eq!(ring.retired_at("old", at_hour(10)), Some(at_hour(10)));
    }

    #[test]
    fn retirement_starts_when_the_successor_activates() {
        let ring = ring(vec![key("a", 0), key("b", 50)]);
        assert_eq!(ring.retired_at("a", at_hour(49)), None);
        assert_eq!(ring.retired_at("a", at_hour(50)), Some(at_hour(50)));
        assert_eq!(ring.retired_at("a", at_hour(60)), Some(at_hour(50)));
        assert_eq!(ring.retired_at("b", at_hour(60)), None);
        assert_eq!(ring.retired_at("unknown", at_hour(60)), None);
    }

    #[test]
    fn published_set_before_at_and_after_activation_and_removal() {
        // b activates at 50; a is removed 24h + 1h later, at 75.
        let ring = ring(vec![key("a", 0), key("b", 50)]);
        let policy = policy();
        let published = |hour| kids(&ring.published_keys(&policy, at_hour(hour)));
        assert_eq!(published(10), ["a", "b"], "pending key is published");
        assert_eq!(published(50), ["a", "b"]);
        assert_eq!(published(74), ["a", "b"]);
        let just_before_removal = plus(at_hour(75), SignedDuration::from_secs(-1));
        assert_eq!(
            kids(&ring.published_keys(&policy, just_before_removal)),
            ["a", "b"]
        );
        assert_eq!(published(75), ["b"]);
        assert_eq!(published(500), ["b"]);
    }

    #[test]
    fn the_published_set_holds_until_the_next_removal() {
        // b activates at 50, c at 100: a leaves at 75, b at 125.
        let ring = ring(vec![key("a", 0), key("b", 50), key("c", 100)]);
        let policy = policy();
        for (hour, until) in [
            (10, Some(75)),
            (74, Some(75)),
            (75, Some(125)),
            (124, Some(125)),
        ] {
            assert_eq!(
                ring.published_until(&policy, at_hour(hour)),
                until.map(at_hour),
                "at hour {hour}"
            );
        }
        assert_eq!(ring.published_until(&policy, at_hour(125)), None);
        // Up to that time the set is the same as at the start; at it, it changes.
        let published = |hour| kids(&ring.published_keys(&policy, at_hour(hour)));
        let just_before = plus(at_hour(75), SignedDuration::from_secs(-1));
        assert_eq!(
            kids(&ring.published_keys(&policy, just_before)),
            published(10)
        );
        assert_ne!(published(75), published(10));
        assert_eq!(
            ring.published_until(&policy, at_hour(10)),
            Some(at_hour(75))
        );
    }

    #[test]
    fn bootstrap_an_empty_ring() {
        let empty = KeyRing::default();
        let plan = plan_rotation(&empty, &policy(), None, at_hour(0));
        assert_eq!(
            plan,
            RotationPlan::Bootstrap {
                algorithm: SigningAlgorithm::RS256,
                rotation_request: None
            }
        );
        assert_eq!(plan.key_to_generate(), Some(SigningAlgorithm::RS256));

        let mut new_key = key("first", 0);
        new_key.created_at = at_hour(3);
        new_key.activates_at = at_hour(3);
        let ring = apply_plan(&empty, &plan, Some(new_key)).expect("applies");
        assert_eq!(signing_kid(&ring, at_hour(3)).as_deref(), Some("first"));
        assert_eq!(
            plan_rotation(&ring, &policy(), None, at_hour(3)),
            RotationPlan::Unchanged
        );
    }

    #[test]
    fn bootstrap_records_a_pending_request() {
        let plan = plan_rotation(&KeyRing::default(), &policy(), Some("r1"), at_hour(0));
        let ring = apply_plan(&KeyRing::default(), &plan, Some(key("k", 0))).expect("applies");
        assert_eq!(ring.last_rotation_request.as_deref(), Some("r1"));
        assert_eq!(
            plan_rotation(&ring, &policy(), Some("r1"), at_hour(1)),
            RotationPlan::Unchanged
        );
    }

    #[test]
    fn periodic_rotation_prepares_a_key_one_prepublish_period_ahead() {
        let ring = ring(vec![key("a", 0)]);
        let policy = policy();
        // Due at 720h - 2h = 718h.
        assert_eq!(
            plan_rotation(&ring, &policy, None, at_hour(717)),
            RotationPlan::Unchanged
        );
        let plan = plan_rotation(&ring, &policy, None, at_hour(718));
        assert_eq!(
            plan,
            RotationPlan::Prepare {
                algorithm: SigningAlgorithm::RS256,
                activates_at: at_hour(720),
                reason: PrepareReason::Scheduled,
                rotation_request: None,
            }
        );
        let rotated = apply_plan(&ring, &plan, Some(key("b", 718))).expect("applies");
        assert_eq!(signing_kid(&rotated, at_hour(719)).as_deref(), Some("a"));
        assert_eq!(signing_kid(&rotated, at_hour(720)).as_deref(), Some("b"));
        assert_eq!(
            kids(&rotated.published_keys(&policy, at_hour(718))),
            ["a", "b"]
        );
        // Pending key exists: nothing more to do until it activates.
        assert_eq!(
            plan_rotation(&rotated, &policy, None, at_hour(719)),
            RotationPlan::Unchanged
        );
    }

    #[test]
    fn overdue_rotation_still_prepublishes() {
        let ring = ring(vec![key("a", 0)]);
        let plan = plan_rotation(&ring, &policy(), None, at_hour(2000));
        assert!(matches!(
            plan,
            RotationPlan::Prepare { activates_at, reason: PrepareReason::Scheduled, .. }
                if activates_at == at_hour(2002)
        ));
    }

    #[test]
    fn a_new_request_value_forces_one_rotation() {
        let ring = ring(vec![key("a", 0)]);
        let policy = policy();
        let plan = plan_rotation(&ring, &policy, Some("r1"), at_hour(10));
        assert_eq!(
            plan,
            RotationPlan::Prepare {
                algorithm: SigningAlgorithm::RS256,
                activates_at: at_hour(12),
                reason: PrepareReason::Requested,
                rotation_request: Some("r1".into()),
            }
        );
        let rotated = apply_plan(&ring, &plan, Some(key("b", 10))).expect("applies");
        assert_eq!(rotated.last_rotation_request.as_deref(), Some("r1"));
        // Same value again, before and after the new key activated: no second rotation.
        assert_eq!(
            plan_rotation(&rotated, &policy, Some("r1"), at_hour(11)),
            RotationPlan::Unchanged
        );
        assert_eq!(
            plan_rotation(&rotated, &policy, Some("r1"), at_hour(13)),
            RotationPlan::Unchanged
        );
        // Removing the annotation does not rotate either.
        assert_eq!(
            plan_rotation(&rotated, &policy, None, at_hour(13)),
            RotationPlan::Unchanged
        );
        // A different value rotates again.
        assert!(matches!(
            plan_rotation(&rotated, &policy, Some("r2"), at_hour(13)),
            RotationPlan::Prepare {
                reason: PrepareReason::Requested,
                ..
            }
        ));
    }

    #[test]
    fn a_request_waits_while_a_key_is_pending() {
        let ring = ring(vec![key("a", 0), key("b", 20)]);
        let policy = policy();
        assert_eq!(
            plan_rotation(&ring, &policy, Some("r1"), at_hour(19)),
            RotationPlan::Unchanged
        );
        assert!(matches!(
            plan_rotation(&ring, &policy, Some("r1"), at_hour(20)),
            RotationPlan::Prepare { reason: PrepareReason::Requested, rotation_request: Some(request), .. }
                if request == "r1"
        ));
    }

    #[test]
    fn prune_keys_past_removal() {
        let ring = ring(vec![key("a", 0), key("b", 50), key("c", 100)]);
        let policy = policy();
        // a is removed at 75, b at 125.
        assert_eq!(
            plan_rotation(&ring, &policy, None, at_hour(74)),
            RotationPlan::Unchanged
        );
        let plan = plan_rotation(&ring, &policy, None, at_hour(130));
        assert_eq!(
            plan,
            RotationPlan::Prune {
                kids: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(plan.key_to_generate(), None);
        let pruned = apply_plan(&ring, &plan, None).expect("applies");
        assert_eq!(kids(&pruned.keys.iter().collect::<Vec<_>>()), ["c"]);
        assert_eq!(
            plan_rotation(&pruned, &policy, None, at_hour(130)),
            RotationPlan::Unchanged
        );
    }

    #[test]
    fn algorithm_change_prepares_a_key_and_drops_outdated_pending_keys() {
        let ring = ring(vec![key("a", 0), key("b", 20)]);
        let policy = RotationPolicy {
            algorithm: SigningAlgorithm::ES256,
            ..policy()
        };
        let plan = plan_rotation(&ring, &policy, None, at_hour(10));
        assert_eq!(
            plan,
            RotationPlan::Prune {
                kids: vec!["b".into()]
            }
        );
        let pruned = apply_plan(&ring, &plan, None).expect("applies");
        let plan = plan_rotation(&pruned, &policy, None, at_hour(10));
        assert_eq!(
            plan,
            RotationPlan::Prepare {
                algorithm: SigningAlgorithm::ES256,
                activates_at: at_hour(12),
                reason: PrepareReason::AlgorithmChanged,
                rotation_request: None,
            }
        );
        let mut ec_key = key("ec", 10);
        ec_key.alg = SigningAlgorithm::ES256;
        let rotated = apply_plan(&pruned, &plan, Some(ec_key)).expect("applies");
        assert_eq!(
            plan_rotation(&rotated, &policy, None, at_hour(11)),
            RotationPlan::Unchanged
        );
        assert_eq!(signing_kid(&rotated, at_hour(12)).as_deref(), Some("ec"));
    }

    #[test]
    fn planning_loop_terminates_in_a_few_steps() {
        let mut ring = ring(vec![key("a", 0), key("b", 50)]);
        let policy = RotationPolicy {
            algorithm: SigningAlgorithm::ES256,
            ..policy()
        };
        let now = at_hour(5000);
        let mut steps = 0;
        loop {
            let plan = plan_rotation(&ring, &policy, Some("again"), now);
            if plan == RotationPlan::Unchanged {
                break;
            }
            let new_key = plan.key_to_generate().map(|algorithm| KeyRecord {
                alg: algorithm,
                ..key(&format!("k{steps}"), 5000)
            });
            ring = apply_plan(&ring, &plan, new_key).expect("applies");
            steps += 1;
            assert!(steps < 5, "planning does not converge: {ring:?}");
        }
        // a pruned, then an ES256 key prepared (answering the request).
        assert_eq!(steps, 2);
        assert_eq!(ring.last_rotation_request.as_deref(), Some("again"));
    }

    #[test]
    fn apply_plan_checks_the_new_key() {
        let ring = ring(vec![key("a", 0)]);
        let prepare = plan_rotation(&ring, &policy(), Some("r"), at_hour(1));
        let reason =
            |result: Result<KeyRing, KeyError>| result.map_err(|error| error.reason().as_str());
        assert_eq!(
            reason(apply_plan(&ring, &prepare, None)),
            Err("KeyGenerationFailed")
        );
        let mut wrong = key("ec", 1);
        wrong.alg = SigningAlgorithm::ES256;
        assert!(matches!(
            apply_plan(&ring, &prepare, Some(wrong)),
            Err(KeyError::NewKeyAlgorithm { .. })
        ));
        assert!(matches!(
            apply_plan(&ring, &RotationPlan::Unchanged, Some(key("x", 1))),
            Err(KeyError::UnexpectedNewKey)
        ));
        assert_eq!(
            apply_plan(&ring, &RotationPlan::Unchanged, None).expect("no-op"),
            ring
        );
    }

    #[test]
    fn next_rotation_time_reports_the_takeover() {
        let policy = policy();
        assert_eq!(
            next_rotation_time(&KeyRing::default(), &policy, at_hour(0)),
            None
        );
        let single = ring(vec![key("a", 0)]);
        assert_eq!(
            next_rotation_time(&single, &policy, at_hour(1)),
            Some(at_hour(720))
        );
        // Overdue: the earliest possible takeover is one prepublish period away.
        assert_eq!(
            next_rotation_time(&single, &policy, at_hour(900)),
            Some(at_hour(902))
        );
        let pending = ring(vec![key("a", 0), key("b", 30)]);
        assert_eq!(
            next_rotation_time(&pending, &policy, at_hour(10)),
            Some(at_hour(30))
        );
    }

    #[test]
    fn next_wakeup_is_the_earliest_future_decision_change() {
        let policy = policy();
        assert_eq!(next_wakeup(&KeyRing::default(), &policy, at_hour(0)), None);
        let single = ring(vec![key("a", 0)]);
        assert_eq!(
            next_wakeup(&single, &policy, at_hour(1)),
            Some(at_hour(718))
        );

        let rotating = ring(vec![key("a", 0), key("b", 50)]);
        // Pending activation first, then a's removal at 75, then b's next preparation.
        assert_eq!(
            next_wakeup(&rotating, &policy, at_hour(10)),
            Some(at_hour(50))
        );
        assert_eq!(
            next_wakeup(&rotating, &policy, at_hour(50)),
            Some(at_hour(75))
        );
        assert_eq!(
            next_wakeup(&rotating, &policy, at_hour(75)),
            Some(at_hour(768))
        );

        // Every reported wakeup is a point where planning gives a different answer.
        let before = plan_rotation(&rotating, &policy, None, at_hour(74));
        let after = plan_rotation(&rotating, &policy, None, at_hour(75));
        assert_ne!(before, after);
    }
}
