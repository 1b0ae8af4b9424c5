//! The operator's runtime: the context every reconcile shares, metrics, leader election,
//! the Kubernetes API request budget and the namespaces watched.

pub mod api_rate;
pub mod context;
pub mod leader;
pub mod metrics;
pub mod scope;
pub mod undecodable;
