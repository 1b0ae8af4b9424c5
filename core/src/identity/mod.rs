//! FederatedIdentities: the pure phases of the identity pipeline.
//!
//! The shell runs them in order: fetch (caches) → [`validate`] → [`plan`] (keep, or issue and
//! why) → [`mint`] → exchange ([`crate::exchange`]) → [`render`] (with the output [`template`]s) → apply → [`rollout`] (restart
//! the consumers of new contents) → report ([`status`]). Renewal timing and backoff are in
//! [`schedule`].

pub mod mint;
pub mod plan;
pub mod render;
pub mod rollout;
pub mod schedule;
pub mod status;
pub mod template;
pub mod validate;
