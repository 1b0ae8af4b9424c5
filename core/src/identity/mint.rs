//! The mint phase: the claims of a new token, signed by the issuer's current key.

use jiff::{SignedDuration, Timestamp};

use crate::{
    credentials::token::Minted,
    exchange::ClientAssertion,
    identity::validate::ValidatedIdentity,
    issuer::keys::{KeyError, Signer},
    reason::{Failure, Reason, Retry},
    time::{plus, whole_seconds},
};

/// Why no token could be minted. Each is transient: the issuer gets a key, signing is retried.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The issuer has no key that signs now.
    #[error("IdentityIssuer {issuer} is not ready: it has no signing key yet")]
    NoSigningKey {
        /// Issuer name.
        issuer: String,
    },
    /// The signature could not be made.
    #[error("failed to sign the token")]
    Signing(#[source] KeyError),
    /// The signing task did not complete (the runtime is shutting down).
    #[error("the signing task did not complete: {0}")]
    Interrupted(String),
}

impl Failure for MintError {
    fn reason(&self) -> Reason {
        match self {
            Self::NoSigningKey { .. } => Reason::IssuerNotReady,
            Self::Signing(_) | Self::Interrupted(_) => Reason::SigningFailed,
        }
    }

    fn retry(&self) -> Retry {
        Retry::Backoff
    }
}

/// Mints the token of `identity` issued at `now` (whole seconds) with token ID `jti`, signed
/// by `signer`. CPU-bound (RSA): the shell runs it off the reconcilers' threads.
pub fn mint(
    identity: &ValidatedIdentity,
    signer: &Signer,
    now: Timestamp,
    jti: &str,
) -> Result<Minted, MintError> {
    let issued_at = whole_seconds(now);
    let claims = identity.claims.token_claims(issued_at, jti);
    let jwt = signer.sign(&claims).map_err(MintError::Signing)?;
    let lifetime = SignedDuration::try_from(identity.claims.lifetime().to_std())
        .unwrap_or(SignedDuration::MAX);
    Ok(Minted {
        jwt,
        key_id: signer.kid().to_owned(),
        issued_at,
        expires_at: plus(issued_at, lifetime),
    })
}

/// Signs the `private_key_jwt` client `assertion` for one request issued at `now` with token
/// ID `jti`, with the same key as the token it goes with.
pub fn sign_client_assertion(
    assertion: &ClientAssertion,
    signer: &Signer,
    now: Timestamp,
    jti: &str,
) -> Result<String, MintError> {
    signer
        .sign(&assertion.claims(whole_seconds(now), jti))
        .map_err(MintError::Signing)
}
