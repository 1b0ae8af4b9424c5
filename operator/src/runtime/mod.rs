//! The operator's runtime: the context every reconcile shares, metrics, leader election and
//! the Kubernetes API request budget.

pub mod api_rate;
pub mod context;
pub mod leader;
pub mod metrics;
pub mod undecodable;
