//! The FederatedIdentity controller: the identity pipeline's I/O shell.

pub mod recent_status;
pub mod reconcile;
mod rollout;
pub mod secrets;
