//! Per-pod tokens: the pod controller (one Secret per opted-in pod, owned by it), the
//! admission webhook that injects the pod, and the token endpoint pods call, with the
//! certificate they are served with.

pub mod reconcile;
pub mod server;
pub mod tls;
