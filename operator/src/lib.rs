//! fedid's I/O shell: watches, the issuer registry, the reconcilers that run the pure
//! pipelines of `fedid_core`, the HTTP server, metrics and leader election. The `fedid`
//! binary's command line is in `cli/` (part of the binary, not of this library).
//!
//! * [`issuer`]: the registry every replica serves from, and the issuer pipeline;
//! * [`identity`]: the identity pipeline and its Secret cache;
//! * [`exchange`]: sending exchange requests within the per-host request budget;
//! * [`serve`]: discovery, JWKS, health and metrics over HTTP(S);
//! * [`runtime`]: the shared context, metrics, leader election;
//! * [`controllers`]: which watches feed which reconciler, and what an issuer change requeues.

pub mod controllers;
pub mod exchange;
pub mod identity;
pub mod issuer;
pub mod runtime;
pub mod serve;

#[cfg(test)]
pub mod fixtures;
pub mod pod;
