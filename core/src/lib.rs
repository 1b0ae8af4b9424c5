//! fedid's pure core: the resource types and every decision the operator makes, as plain
//! functions of plain values and an injected time.
//!
//! Nothing here talks to the Kubernetes API, opens a socket, reads the clock or spawns a task:
//! the crate has no Kubernetes client, HTTP stack or async runtime among its dependencies
//! (`cargo tree -p fedid-core` shows it). The `fedid` crate is the I/O shell around it.
//!
//! * [`crd`]: the `IdentityIssuer` and `FederatedIdentity` resources and their CRDs;
//! * [`claims`]: claim lists, the `sub` template and a token's claim set;
//! * [`issuer`]: issuer settings, signing keys and rotation, discovery and JWKS, the key-ring
//!   Secret and the static files, the issuer pipeline's decisions and errors;
//! * [`identity`]: the identity pipeline's pure phases (validate, plan, mint), renewal timing
//!   and backoff, and its errors;
//! * [`exchange`]: the exchange phase's types (trading the minted token for credentials);
//! * [`credentials`]: the output Secret and token decoding/verification;
//! * [`conditions`] and [`reason`]: status conditions and the stable reasons they carry;
//! * [`time`] and [`timing`]: whole-second instants, jitter, backoff.

pub mod ci;
pub mod claims;
pub mod conditions;
pub mod crd;
pub mod credentials;
pub mod exchange;
pub mod identity;
pub mod issuer;
pub mod label_selector;
pub mod pod;
pub mod reason;
pub mod time;
pub mod timing;
