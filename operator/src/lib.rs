//! fedid: the cluster as an OIDC issuer for CI workloads.
