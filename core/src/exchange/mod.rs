//! The exchange phase: what the identity pipeline does with a freshly minted token before it is
//! written. Today every identity hands its JWT to its pods as it is; exchange kinds (RFC 8693,
//! AWS STS, GCP STS, Vault, Azure) add their request builders and reply parsers here, return
//! richer [`Credentials`], and their own [`ExchangeError`] variants.

use std::fmt;

use crate::{
    credentials::token::Minted,
    reason::{Failure, Reason, Retry},
};

/// Everything the output Secret is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The token fedid signed.
    pub token: Minted,
}

/// Why an exchange failed. No exchange kind exists yet, so no value of this type can exist.
#[derive(Debug, PartialEq, Eq)]
pub enum ExchangeError {}

impl fmt::Display for ExchangeError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for ExchangeError {}

impl Failure for ExchangeError {
    fn reason(&self) -> Reason {
        match *self {}
    }

    fn retry(&self) -> Retry {
        match *self {}
    }
}

/// The credentials of an identity without an exchange: its own token.
pub fn without_exchange(token: Minted) -> Credentials {
    Credentials { token }
}
