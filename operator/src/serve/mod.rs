//! What fedid serves over HTTP(S): discovery documents, JWKS, health and metrics.

pub mod http;
