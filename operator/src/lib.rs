//! fedid makes a Kubernetes cluster an OpenID Connect issuer for CI workloads.
//!
//! An `IdentityIssuer` (cluster-scoped) owns a rotating set of signing keys and is served as
//! an OIDC issuer (discovery document and JWKS). A `FederatedIdentity` (namespaced) asks for a
//! short-lived JWT from an issuer; fedid signs it, writes it into a Secret and renews it before
//! it expires, so CI pods can exchange it with cloud providers for credentials.
//!
//! The crate is split into a pure core and an I/O shell:
//!
//! * pure core, no Kubernetes API calls, no network, no global clock: [`crd`] (resource
//!   types), [`issuer_config`] and [`claims`] (validation and token claims), [`keys`] (keys and
//!   rotation decisions), [`schedule`] (renewal timing and reissue decisions), [`token`]
//!   (decoding and verification), [`secret_output`], [`discovery`], [`conditions`],
//!   [`label_selector`] and [`timestamps`];
//! * I/O shell: the controllers, the HTTP server, metrics and [`run`].

pub mod claims;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod discovery;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod issuer;
pub mod issuer_config;
pub mod keys;
pub mod label_selector;
pub mod leader;
pub mod metrics;
pub mod run;
pub mod schedule;
pub mod secret_output;
pub mod timestamps;
pub mod token;
