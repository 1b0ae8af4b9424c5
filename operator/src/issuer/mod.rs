//! IdentityIssuers: the registry every replica serves from, and the issuer pipeline.

pub mod reconcile;
pub mod registry;
