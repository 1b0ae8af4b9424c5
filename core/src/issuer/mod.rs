//! IdentityIssuers: validated settings, signing keys and their rotation, the documents an
//! issuer serves, where its keys are stored, and the issuer pipeline's report decisions.

pub mod config;
pub mod discovery;
pub mod documents;
pub mod key_store;
pub mod keys;
pub mod status;
