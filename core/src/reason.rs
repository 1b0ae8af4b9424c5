//! The stable reasons fedid reports, and what each failure asks the controller to do next.
//!
//! A [`Reason`] is the one machine-readable word of an outcome: it is the `reason` of the
//! `Ready` condition, the reason of the Event published for the transition, and the `reason`
//! label of `fedid_reconcile_failures_total`, unchanged in all three places. Every failure of
//! every pipeline phase is an error enum implementing [`Failure`], whose
//! [`reason`](Failure::reason) is one of these values and whose [`retry`](Failure::retry)
//! decides when the object is looked at again.

use std::fmt;

/// What the controller does after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient (an API call, a signing task, an issuer not ready yet): try again with
    /// exponential backoff, keeping a still-valid token in place.
    Backoff,
    /// Permanent until something changes (the spec, the issuer, a foreign Secret, a namespace's
    /// labels): wait for a watched change, and look again only at a slow interval
    /// ([`RECHECK_INTERVAL`]) for the state no watch covers.
    WaitForChange,
}

/// How often an object in a [`Retry::WaitForChange`] failure is looked at again without any
/// watched change: namespace labels and foreign Secrets are not watched.
pub const RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// A failure of one pipeline phase.
pub trait Failure: std::error::Error + Send + Sync {
    /// The stable reason reported in the condition, the Event and the metric label.
    fn reason(&self) -> Reason;
    /// When to try again.
    fn retry(&self) -> Retry;
    /// The least delay before trying again, when the other side asked for one
    /// (`Retry-After`).
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The message of an error and all its sources, joined by `": "`, for conditions and Events.
pub fn message_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])+ $name:ident, )+) => {
        /// Every reason fedid reports in a condition, an Event or a metric label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[doc = $doc])+ $name, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[$(Reason::$name),+];

            /// The CamelCase word used in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }

            /// One sentence saying when this reason is reported.
            pub fn description(self) -> &'static str {
                match self {
                    $(Reason::$name => concat!($($doc),+).trim_ascii(),)+
                }
            }
        }
    };
}

reasons! {
    // Outcomes that are not failures.
    /// FederatedIdentity: a valid token is in the Secret.
    Issued,
    /// IdentityIssuer: a signing key is active and the JWKS is published.
    KeysReady,
    /// IdentityIssuer Event: a new signing key was created.
    KeyCreated,
    /// IdentityIssuer Event: retired keys were removed from the JWKS.
    KeysRetired,
    /// FederatedIdentity, in `fedid_identities` only: not reconciled yet (no Ready condition).
    Pending,

    // Finding the issuer.
    /// FederatedIdentity: `spec.issuerRef` names an IdentityIssuer that does not exist (a token Secret from before is deleted).
    IssuerNotFound,
    /// FederatedIdentity: no `spec.issuerRef` and no IdentityIssuer is marked as the default.
    NoDefaultIssuer,
    /// FederatedIdentity: no `spec.issuerRef` and several IdentityIssuers are marked as the default.
    AmbiguousDefaultIssuer,
    /// FederatedIdentity: the issuer exists but cannot sign (invalid spec, unreadable key ring, no key yet).
    IssuerNotReady,
    /// FederatedIdentity: the issuer's `allowedNamespaces` does not allow the identity's namespace (its token Secret is deleted).
    NamespaceNotAllowed,

    // Invalid claims and audiences (either resource).
    /// A claim name is not a valid claim name.
    InvalidClaimName,
    /// A claim uses a name fedid sets itself (`iss`, `sub`, `aud`, `exp`, ...).
    ReservedClaim,
    /// A claim has zero or several values, or a string value that is too long.
    InvalidClaimValue,
    /// A claim is listed twice.
    DuplicateClaim,
    /// More than 32 claims are listed.
    TooManyClaims,
    /// FederatedIdentity: a claim has the name of one of its issuer's claims.
    ClaimOverridesIssuer,
    /// The `sub` template does not parse.
    InvalidSubjectTemplate,
    /// FederatedIdentity: the `sub` template uses a claim that neither side sets.
    MissingSubjectClaim,
    /// FederatedIdentity: the `sub` template renders an empty subject.
    EmptySubject,
    /// FederatedIdentity: the audiences are empty, too many, too long or repeated.
    InvalidAudience,

    // Invalid FederatedIdentity settings.
    /// FederatedIdentity: `spec.lifetime` is shorter than the operator's minimum.
    LifetimeTooShort,
    /// FederatedIdentity: `spec.lifetime` is longer than the issuer's `tokenLifetime.maximum`.
    LifetimeTooLong,
    /// FederatedIdentity: the Secret name is not a DNS-1123 subdomain.
    InvalidSecretName,
    /// The object lacks metadata the apiserver always sets (a name, namespace or UID).
    MissingMetadata,

    // The output Secret and the token.
    /// FederatedIdentity: the Secret exists and fedid did not create it for this identity.
    SecretConflict,
    /// FederatedIdentity: signing the token failed.
    SigningFailed,

    // Token exchange.
    /// FederatedIdentity (`CredentialsFresh`): the token was exchanged and the credentials written.
    Exchanged,
    /// FederatedIdentity: `spec.exchange` cannot be used (no kind, an invalid endpoint or setting).
    InvalidExchange,
    /// FederatedIdentity: the issuer's `spec.exchange.allowedEndpoints` does not allow the endpoint.
    EndpointNotAllowed,
    /// FederatedIdentity: the client secret's Secret is missing or lacks `fedid.dev/client-credentials: "true"`.
    ClientSecretNotAllowed,
    /// FederatedIdentity: the issuer's `spec.exchange.privateKeyJWTClientIDs` does not let the namespace use the client ID.
    ClientIDNotAllowed,
    /// FederatedIdentity: the client secret's Secret lacks the referenced key.
    ClientSecretKeyMissing,
    /// FederatedIdentity: `spec.exchange.caBundle` (or the ConfigMap key `caBundleRef` names) holds no valid PEM certificate.
    InvalidCABundle,
    /// FederatedIdentity: the ConfigMap `spec.exchange.caBundleRef` names is missing, lacks `fedid.dev/ca-bundle: "true"`, or lacks the key.
    CABundleNotFound,
    /// FederatedIdentity: the token service refused the exchange (`invalid_grant`, `AccessDenied`, 401/403).
    ExchangeRejected,
    /// FederatedIdentity: the token service is unreachable, failing (5xx) or throttling (429).
    ExchangeUnavailable,
    /// FederatedIdentity: the token service's reply cannot be understood.
    ExchangeMalformed,

    // Invalid IdentityIssuer settings.
    /// IdentityIssuer: `issuerURL` is not `https`.
    IssuerURLNotHTTPS,
    /// IdentityIssuer: `issuerURL` has no host.
    IssuerURLMissingHost,
    /// IdentityIssuer: `issuerURL` has a user name or password.
    IssuerURLUserInfo,
    /// IdentityIssuer: `issuerURL` has a query.
    IssuerURLQuery,
    /// IdentityIssuer: `issuerURL` has a fragment.
    IssuerURLFragment,
    /// IdentityIssuer: `issuerURL` ends with a slash.
    IssuerURLTrailingSlash,
    /// IdentityIssuer: `issuerURL` has an invalid host.
    IssuerURLInvalidHost,
    /// IdentityIssuer: `issuerURL` has an invalid port.
    IssuerURLInvalidPort,
    /// IdentityIssuer: `issuerURL` has an invalid path.
    IssuerURLInvalidPath,
    /// IdentityIssuer: a namespace selector requirement has an unknown operator.
    UnknownSelectorOperator,
    /// IdentityIssuer: an `In`/`NotIn` selector requirement has no values.
    MissingSelectorValues,
    /// IdentityIssuer: an `Exists`/`DoesNotExist` selector requirement has values.
    UnexpectedSelectorValues,
    /// IdentityIssuer: `tokenLifetime.default` is shorter than 10m.
    DefaultLifetimeTooShort,
    /// IdentityIssuer: `tokenLifetime.maximum` is longer than 24h.
    MaximumLifetimeTooLong,
    /// IdentityIssuer: `tokenLifetime.default` is longer than `tokenLifetime.maximum`.
    DefaultLifetimeAboveMaximum,
    /// IdentityIssuer: `signing.rotationPeriod` is not longer than `signing.prepublishPeriod`.
    RotationWithinPrepublish,
    /// IdentityIssuer: rotation is so frequent that more than 16 keys would be published.
    TooManyPublishedKeys,

    // The key ring.
    /// IdentityIssuer: the key-ring Secret exists and is not controlled by this issuer.
    KeyStoreConflict,
    /// IdentityIssuer: the key ring in its Secret cannot be read.
    KeyRingCorrupt,
    /// IdentityIssuer: the key ring could not be serialized.
    KeyRingEncodingFailed,
    /// IdentityIssuer: generating a signing key or adding it to the key ring failed.
    KeyGenerationFailed,
    /// IdentityIssuer: a stored private key cannot be loaded.
    InvalidPrivateKey,
    /// IdentityIssuer: a public key cannot be derived or published.
    InvalidPublicKey,

    // I/O.
    /// A Kubernetes API call failed.
    ApiError,

    // Per-pod tokens.
    /// FederatedIdentity with `spec.pods`: valid; each opted-in pod gets its own token.
    PodTemplate,
    /// FederatedIdentity: the issuer's `sub` template uses `{pod.*}` or `{ci.*}` but the identity has no `spec.pods`.
    SubjectNeedsPod,
    /// Pod: a claim taken from the pod has the name of an issuer or identity claim.
    PodClaimConflict,
    /// Pod: its `fedid.dev/identity` label names no FederatedIdentity in its namespace.
    IdentityNotFound,
    /// Pod: the FederatedIdentity it names has no `spec.pods`.
    PodsNotEnabled,
    /// Pod: its service account is not in the identity's `spec.pods.serviceAccounts`.
    ServiceAccountNotAllowed,
    /// Pod: a required CI label or annotation is missing or empty.
    MissingPodClaim,
    /// Pod: it was created without passing fedid's webhook (no `fedid.dev/secret-name` annotation).
    PodNotInjected,

    // Output templates and consumer restarts.
    /// FederatedIdentity: an `output.template` entry does not parse or render, or names a key fedid writes.
    InvalidTemplate,
    /// FederatedIdentity, `RolledOut` condition and Event: the `output.rollout` workloads were restarted for new credentials.
    RolledOut,
    /// FederatedIdentity, `RolledOut` condition: the workloads run with the current credentials (none changed since rollout was set up or last restarted).
    UpToDate,
    /// FederatedIdentity, `RolledOut` condition: new credentials wait for `output.rollout.minInterval` to pass since the last restart.
    RolloutPending,
    /// FederatedIdentity, `RolledOut` condition and Event: a workload could not be restarted (not found, not permitted, API error).
    RolloutFailed,
    /// FederatedIdentity, `RolledOut` condition: the operator runs without `--rollout`, so `output.rollout` is not acted on.
    RolloutDisabled,

    // Lost key rings.
    /// IdentityIssuer Event: the key-ring Secret was deleted, emptied or corrupted; a new key signs at once and every token signed by a lost key is reissued.
    KeyRingLost,

    // Issuers sharing a URL path.
    /// IdentityIssuer: another issuer created earlier has a URL with the same path, so fedid serves that one there; identities of this one report IssuerNotReady.
    URLConflict,

    // Lapses.
    /// FederatedIdentity Event: the token expired before it could be renewed (the operator or the apiserver was unavailable); a new one was written.
    TokenLapsed,

    // Tampering.
    /// FederatedIdentity Event: the Secret's data was changed outside fedid, which wrote a new token into it.
    SecretRestored,

    // Objects fedid cannot decode.
    /// FederatedIdentity or IdentityIssuer Event: the stored object does not decode (it was written under an older, looser schema); fedid ignores it until it is fixed.
    InvalidObject,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn is_camel_case(word: &str) -> bool {
        word.chars()
            .next()
            .is_some_and(|first| first.is_ascii_uppercase())
            && word.chars().all(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn every_reason_is_a_distinct_camel_case_word_with_a_description() {
        let mut seen = BTreeSet::new();
        for reason in Reason::ALL {
            assert!(is_camel_case(reason.as_str()), "{reason} is not CamelCase");
            assert!(seen.insert(reason.as_str()), "{reason} is listed twice");
            assert!(
                reason.description().ends_with('.') && reason.description().len() > 20,
                "{reason} needs a one-sentence description"
            );
        }
    }

    #[test]
    fn every_reason_is_documented_in_the_readme() {
        // The README's reasons table is the API promise: a new reason must be documented
        // there, and a documented reason must exist.
        let readme = include_str!("../../README.md");
        let section = readme
            .split_once("\n### Reasons\n")
            .map(|(_, rest)| rest.split_once("\n#").map_or(rest, |(section, _)| section))
            .expect("the README has a `### Reasons` section");
        let documented: BTreeSet<&str> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once("` |"))
            .map(|(word, _)| word)
            .filter(|word| is_camel_case(word))
            .collect();
        let reasons: BTreeSet<&str> = Reason::ALL.iter().map(|reason| reason.as_str()).collect();
        let undocumented: Vec<_> = reasons.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "reasons missing from the README's reasons table: {undocumented:?}"
        );
        let unknown: Vec<_> = documented.difference(&reasons).collect();
        assert!(
            unknown.is_empty(),
            "the README documents reasons that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn reasons_are_stable() {
        // Users match on these words (kubectl wait, alerts, dashboards): renaming or removing
        // one is a breaking change and must show up here.
        let words: Vec<&str> = Reason::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(
            words,
            [
                "Issued",
                "KeysReady",
                "KeyCreated",
                "KeysRetired",
                "Pending",
                "IssuerNotFound",
                "NoDefaultIssuer",
                "AmbiguousDefaultIssuer",
                "IssuerNotReady",
                "NamespaceNotAllowed",
                "InvalidClaimName",
                "ReservedClaim",
                "InvalidClaimValue",
                "DuplicateClaim",
                "TooManyClaims",
                "ClaimOverridesIssuer",
                "InvalidSubjectTemplate",
                "MissingSubjectClaim",
                "EmptySubject",
                "InvalidAudience",
                "LifetimeTooShort",
                "LifetimeTooLong",
                "InvalidSecretName",
                "MissingMetadata",
                "SecretConflict",
                "SigningFailed",
                "Exchanged",
                "InvalidExchange",
                "EndpointNotAllowed",
                "ClientSecretNotAllowed",
                "ClientIDNotAllowed",
                "ClientSecretKeyMissing",
                "InvalidCABundle",
                "CABundleNotFound",
                "ExchangeRejected",
                "ExchangeUnavailable",
                "ExchangeMalformed",
                "IssuerURLNotHTTPS",
                "IssuerURLMissingHost",
                "IssuerURLUserInfo",
                "IssuerURLQuery",
                "IssuerURLFragment",
                "IssuerURLTrailingSlash",
                "IssuerURLInvalidHost",
                "IssuerURLInvalidPort",
                "IssuerURLInvalidPath",
                "UnknownSelectorOperator",
                "MissingSelectorValues",
                "UnexpectedSelectorValues",
                "DefaultLifetimeTooShort",
                "MaximumLifetimeTooLong",
                "DefaultLifetimeAboveMaximum",
                "RotationWithinPrepublish",
                "TooManyPublishedKeys",
                "KeyStoreConflict",
                "KeyRingCorrupt",
                "KeyRingEncodingFailed",
                "KeyGenerationFailed",
                "InvalidPrivateKey",
                "InvalidPublicKey",
                "ApiError",
                "PodTemplate",
                "SubjectNeedsPod",
                "PodClaimConflict",
                "IdentityNotFound",
                "PodsNotEnabled",
                "ServiceAccountNotAllowed",
                "MissingPodClaim",
                "PodNotInjected",
                "InvalidTemplate",
                "RolledOut",
                "UpToDate",
                "RolloutPending",
                "RolloutFailed",
                "RolloutDisabled",
                "KeyRingLost",
                "URLConflict",
                "TokenLapsed",
                "SecretRestored",
                "InvalidObject"
            ]
        );
    }

    #[test]
    fn message_chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to write Secret ci/x")]
        struct Outer(#[source] std::fmt::Error);
        assert_eq!(
            message_chain(&Outer(std::fmt::Error)),
            "failed to write Secret ci/x: an error occurred when formatting an argument"
        );
    }
}
