//! The operator's runtime: the context every reconcile shares, metrics, leader election.

pub mod context;
pub mod leader;
pub mod metrics;
