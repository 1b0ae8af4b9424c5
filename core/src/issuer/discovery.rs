//! The issuer URL and the documents served under it: OpenID discovery and JWKS metadata.
//!
//! Only the subset of OpenID Connect Discovery that federating clouds need is served (the
//! same subset as the Kubernetes service-account issuer): there are no authorization or token
//! endpoints, because fedid never talks to end users.

use crate::reason::Reason;
use std::{fmt, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{RESERVED_CLAIMS, SigningAlgorithm};

/// Appended to the issuer URL (and to its path on the server) to form the discovery URL.
pub const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

/// Appended to the issuer URL (and to its path on the server) to form the JWKS URL.
pub const JWKS_SUFFIX: &str = "/.well-known/jwks.json";

/// Upper bound of the JWKS and discovery cache lifetime.
pub const MAX_CACHE_MAX_AGE: Duration = Duration::from_secs(3600);

const HTTPS_PREFIX: &str = "https://";

/// Why an issuer URL is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerUrlError {
    /// The URL does not start with `https://`.
    #[error("issuer URL {url:?} must start with https://")]
    NotHttps {
        /// The rejected URL.
        url: String,
    },
    /// The URL has no host.
    #[error("issuer URL {url:?} has no host")]
    MissingHost {
        /// The rejected URL.
        url: String,
    },
    /// The URL contains `user@` before the host.
    #[error("issuer URL {url:?} must not contain user information")]
    UserInfo {
        /// The rejected URL.
        url: String,
    },
    /// The URL has a query string.
    #[error("issuer URL {url:?} must not contain a query")]
    Query {
        /// The rejected URL.
        url: String,
    },
    /// The URL has a fragment.
    #[error("issuer URL {url:?} must not contain a fragment")]
    Fragment {
        /// The rejected URL.
        url: String,
    },
    /// The URL ends with `/`.
    #[error("issuer URL {url:?} must not have a trailing slash")]
    TrailingSlash {
        /// The rejected URL.
        url: String,
    },
    /// The host is not a lowercase DNS name or a dotted-decimal IPv4 address.
    #[error(
        "issuer URL {url:?} has an invalid host; use a lowercase DNS name or a dotted-decimal \
         IPv4 address"
    )]
    InvalidHost {
        /// The rejected URL.
        url: String,
    },
    /// The port is not a number between 1 and 65535.
    #[error("issuer URL {url:?} has an invalid port")]
    InvalidPort {
        /// The rejected URL.
        url: String,
    },
    /// The path has empty, `.` or `..` segments, or characters that need escaping.
    #[error(
        "issuer URL {url:?} has an invalid path; use non-empty segments of letters, digits \
         and - . _ ~ (no . or .. segments)"
    )]
    InvalidPath {
        /// The rejected URL.
        url: String,
    },
}

impl IssuerUrlError {
    /// Stable, machine-readable name of this error kind.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotHttps { .. } => Reason::IssuerURLNotHTTPS,
            Self::MissingHost { .. } => Reason::IssuerURLMissingHost,
            Self::UserInfo { .. } => Reason::IssuerURLUserInfo,
            Self::Query { .. } => Reason::IssuerURLQuery,
            Self::Fragment { .. } => Reason::IssuerURLFragment,
            Self::TrailingSlash { .. } => Reason::IssuerURLTrailingSlash,
            Self::InvalidHost { .. } => Reason::IssuerURLInvalidHost,
            Self::InvalidPort { .. } => Reason::IssuerURLInvalidPort,
            Self::InvalidPath { .. } => Reason::IssuerURLInvalidPath,
        }
    }
}

/// A validated issuer URL: `https://host[:port][/path]` without user information, query,
/// fragment or trailing slash, in a form that needs no normalisation, so the `iss` claim,
/// the discovery `issuer` and the URL relying parties configure are byte-for-byte equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IssuerUrl {
    url: String,
    path_start: usize,
}

impl IssuerUrl {
    /// Validates `url`.
    pub fn parse(url: &str) -> Result<Self, IssuerUrlError> {
        let owned = || url.to_owned();
        let rest = url
            .strip_prefix(HTTPS_PREFIX)
            .ok_or_else(|| IssuerUrlError::NotHttps { url: owned() })?;
        if url.contains('?') {
            return Err(IssuerUrlError::Query { url: owned() });
        }
        if url.contains('#') {
            return Err(IssuerUrlError::Fragment { url: owned() });
        }
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(IssuerUrlError::UserInfo { url: owned() });
        }
        if authority.is_empty() {
            return Err(IssuerUrlError::MissingHost { url: owned() });
        }
        if url.ends_with('/') {
            return Err(IssuerUrlError::TrailingSlash { url: owned() });
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if !is_valid_host(host) {
            return Err(IssuerUrlError::InvalidHost { url: owned() });
        }
        if port.is_some_and(|port| !is_valid_port(port)) {
            return Err(IssuerUrlError::InvalidPort { url: owned() });
        }
        if !path.is_empty() && !path.split('/').skip(1).all(is_valid_path_segment) {
            return Err(IssuerUrlError::InvalidPath { url: owned() });
        }
        Ok(Self {
            url: url.to_owned(),
            path_start: HTTPS_PREFIX.len() + authority_end,
        })
    }

    /// The URL exactly as configured; this is the `iss` claim.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The path part, empty for an issuer at the root of its host (`/fedid/ci` for
    /// `https://example.com/fedid/ci`). The HTTP router serves the documents under it.
    pub fn path(&self) -> &str {
        self.url.get(self.path_start..).unwrap_or_default()
    }

    /// URL of the discovery document.
    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_SUFFIX}", self.url)
    }

    /// URL of the JSON Web Key Set.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_SUFFIX}", self.url)
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Longest DNS name (RFC 1035 §2.3.4, without the root's trailing dot).
const MAX_HOST_LENGTH: usize = 253;

/// Longest label of a DNS name (RFC 1035 §2.3.4).
const MAX_LABEL_LENGTH: usize = 63;

fn is_valid_host(host: &str) -> bool {
    // URL parsers (WHATWG) read a host whose last label is a number as an IPv4 address and
    // rewrite it (`127.1`, `0x7f.0.0.1` and `010.0.0.1` become `127.0.0.1` and `8.0.0.1`),
    // so only the canonical dotted-decimal form keeps the URL byte-for-byte.
    if host.rsplit('.').next().is_some_and(ends_in_number) {
        return is_canonical_ipv4(host);
    }
    !host.is_empty()
        && host.len() <= MAX_HOST_LENGTH
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LENGTH
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        })
}

/// Whether `label`, the last label of a host, makes URL parsers read the host as an IPv4
/// address: decimal digits, or `0x` and hexadecimal digits.
fn ends_in_number(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|digits| digits.bytes().all(|byte| byte.is_ascii_hexdigit()));
    hex || (!label.is_empty() && label.bytes().all(|byte| byte.is_ascii_digit()))
}

/// Whether `host` is four decimal numbers from 0 to 255 without leading zeros.
fn is_canonical_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 3
                && part.bytes().all(|byte| byte.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'))
                && part.parse::<u8>().is_ok()
        })
}

fn is_valid_port(port: &str) -> bool {
    // Digits only: `u16::from_str` also takes a leading `+`.
    !port.starts_with('0')
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|number| number > 0)
}

fn is_valid_path_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
}

/// The OpenID discovery document for an issuer whose published keys use `algorithms`.
///
/// `id_token_signing_alg_values_supported` lists the distinct algorithms of the published
/// keys, and always RS256, which OpenID Connect Discovery 1.0 §3 requires every provider to
/// list (an ES256-only issuer signs nothing with it; relying parties pick the key by `kid`);
/// `claims_supported` lists the claims fedid sets, plus the issuer's static claims.
pub fn discovery_document(
    issuer: &IssuerUrl,
    algorithms: &[SigningAlgorithm],
    issuer_claim_names: &[&str],
) -> Value {
    let mut algorithms = algorithms.to_vec();
    algorithms.push(SigningAlgorithm::RS256);
    algorithms.sort();
    algorithms.dedup();
    let algorithm_names: Vec<&str> = algorithms.iter().map(|alg| alg.as_str()).collect();
    let mut claims: Vec<&str> = RESERVED_CLAIMS.to_vec();
    claims.extend(
        issuer_claim_names
            .iter()
            .filter(|name| !RESERVED_CLAIMS.contains(name)),
    );
    json!({
        "issuer": issuer.as_str(),
        "jwks_uri": issuer.jwks_url(),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithm_names,
        "claims_supported": claims,
    })
}

/// `Cache-Control: max-age` for the JWKS and discovery document: half the prepublish period,
/// capped at one hour. A new key is published for the whole prepublish period before it
/// signs, so every cache has refreshed at least twice by then.
pub fn cache_max_age(prepublish_period: Duration) -> Duration {
    (prepublish_period / 2).min(MAX_CACHE_MAX_AGE)
}

/// A strong, quoted `ETag` for a response body: the base64url SHA-256 of its bytes.
pub fn etag(body: &[u8]) -> String {
    format!("\"{}\"", URL_SAFE_NO_PAD.encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(url: &str) -> IssuerUrl {
        IssuerUrl::parse(url).expect("valid issuer URL")
    }

    #[test]
    fn accepts_plain_https_urls() {
        for url in [
            "https://issuer.example.com",
            "https://issuer.example.com:8443",
            "https://example.com/fedid/ci",
            "https://10.0.0.1/x_y~z.v1",
            "https://localhost",
        ] {
            assert_eq!(issuer(url).as_str(), url);
        }
    }

    #[test]
    fn rejects_urls_relying_parties_would_normalise_or_refuse() {
        let cases = [
            ("http://issuer.example.com", "IssuerURLNotHTTPS"),
            ("issuer.example.com", "IssuerURLNotHTTPS"),
            ("HTTPS://issuer.example.com", "IssuerURLNotHTTPS"),
            ("https://", "IssuerURLMissingHost"),
            ("https:///path", "IssuerURLMissingHost"),
            ("https://user@issuer.example.com", "IssuerURLUserInfo"),
            ("https://user:pw@issuer.example.com/x", "IssuerURLUserInfo"),
            ("https://issuer.example.com?a=b", "IssuerURLQuery"),
            ("https://issuer.example.com/x?", "IssuerURLQuery"),
            ("https://issuer.example.com#top", "IssuerURLFragment"),
            ("https://issuer.example.com/", "IssuerURLTrailingSlash"),
            ("https://issuer.example.com/ci/", "IssuerURLTrailingSlash"),
            ("https://Issuer.example.com", "IssuerURLInvalidHost"),
            ("https://issuer..example.com", "IssuerURLInvalidHost"),
            ("https://-issuer.example.com", "IssuerURLInvalidHost"),
            ("https://[::1]", "IssuerURLInvalidHost"),
            ("https://issuer.example.com:", "IssuerURLInvalidPort"),
            ("https://issuer.example.com:0", "IssuerURLInvalidPort"),
            ("https://issuer.example.com:080", "IssuerURLInvalidPort"),
            ("https://issuer.example.com:70000", "IssuerURLInvalidPort"),
            ("https://issuer.example.com:+443", "IssuerURLInvalidPort"),
            ("https://issuer.example.com//x", "IssuerURLInvalidPath"),
            ("https://issuer.example.com/a/../b", "IssuerURLInvalidPath"),
            ("https://issuer.example.com/a b", "IssuerURLInvalidPath"),
            ("https://issuer.example.com/%41", "IssuerURLInvalidPath"),
        ];
        for (url, reason) in cases {
            let error = IssuerUrl::parse(url).expect_err(url);
            assert_eq!(error.reason(), reason, "{url}: {error}");
            assert!(error.to_string().contains(url), "{error}");
        }
    }

    #[test]
    fn hosts_longer_than_dns_allows_are_invalid() {
        let label = "a".repeat(63);
        let at_limit = format!("https://{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(issuer(&at_limit).as_str(), at_limit);
        for url in [
            format!("https://{}.example.com", "a".repeat(64)),
            format!("https://{label}.{label}.{label}.{}", "b".repeat(62)),
        ] {
            let error = IssuerUrl::parse(&url).expect_err("too long");
            assert_eq!(error.reason(), "IssuerURLInvalidHost", "{url}");
        }
    }

    #[test]
    fn numeric_hosts_must_be_canonical_ipv4_addresses() {
        for url in [
            "https://127.0.0.1",
            "https://10.0.0.255:8443/x",
            "https://0.0.0.0",
        ] {
            assert_eq!(issuer(url).as_str(), url);
        }
        // Each of these is rewritten by URL parsers (or refused), so the iss would not match.
        for url in [
            "https://127.1",
            "https://1",
            "https://010.0.0.1",
            "https://0x7f.0.0.1",
            "https://127.0.0.0x1",
            "https://1.2.3.4.5",
            "https://256.0.0.1",
            "https://example.0x",
            "https://example.123",
        ] {
            let error = IssuerUrl::parse(url).expect_err(url);
            assert_eq!(error.reason(), "IssuerURLInvalidHost", "{url}");
        }
        // A number that is not the last label keeps the name a DNS name.
        assert_eq!(
            issuer("https://1.example.com").as_str(),
            "https://1.example.com"
        );
    }

    #[test]
    fn paths_and_document_urls() {
        let root = issuer("https://issuer.example.com");
        assert_eq!(root.path(), "");
        assert_eq!(
            root.discovery_url(),
            "https://issuer.example.com/.well-known/openid-configuration"
        );
        assert_eq!(
            root.jwks_url(),
            "https://issuer.example.com/.well-known/jwks.json"
        );

        let nested = issuer("https://example.com:8443/fedid/ci");
        assert_eq!(nested.path(), "/fedid/ci");
        assert_eq!(
            nested.jwks_url(),
            "https://example.com:8443/fedid/ci/.well-known/jwks.json"
        );
        assert_eq!(nested.to_string(), "https://example.com:8443/fedid/ci");
    }

    #[test]
    fn discovery_document_is_exact() {
        let document = discovery_document(
            &issuer("https://issuer.example.com/ci"),
            &[
                SigningAlgorithm::ES256,
                SigningAlgorithm::RS256,
                SigningAlgorithm::ES256,
            ],
            &["cluster", "sub"],
        );
        assert_eq!(
            document,
            json!({
                "issuer": "https://issuer.example.com/ci",
                "jwks_uri": "https://issuer.example.com/ci/.well-known/jwks.json",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "claims_supported": [
                    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "namespace", "identity",
                    "pod", "pod_uid", "service_account", "cluster"
                ],
            })
        );
    }

    #[test]
    fn discovery_always_lists_rs256_as_oidc_discovery_requires() {
        let document = discovery_document(&issuer("https://issuer.example.com"), &[], &[]);
        assert_eq!(
            document["id_token_signing_alg_values_supported"],
            json!(["RS256"])
        );
        let es_only = discovery_document(
            &issuer("https://issuer.example.com"),
            &[SigningAlgorithm::ES256],
            &[],
        );
        assert_eq!(
            es_only["id_token_signing_alg_values_supported"],
            json!(["RS256", "ES256"])
        );
    }

    #[test]
    fn cache_max_age_is_half_the_prepublish_period_capped_at_an_hour() {
        let secs = Duration::from_secs;
        assert_eq!(cache_max_age(secs(0)), secs(0));
        assert_eq!(cache_max_age(secs(600)), secs(300));
        assert_eq!(cache_max_age(secs(7200)), secs(3600));
        assert_eq!(cache_max_age(secs(720 * 3600)), secs(3600));
        for prepublish in (0..20_000).step_by(37).map(secs) {
            let max_age = cache_max_age(prepublish);
            assert!(max_age * 2 <= prepublish, "{prepublish:?}");
            assert!(max_age <= MAX_CACHE_MAX_AGE);
        }
    }

    #[test]
    fn etags_are_strong_quoted_and_content_addressed() {
        let tag = etag(b"{\"keys\":[]}");
        assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"));
        assert_eq!(tag.len(), 45);
        assert_eq!(tag, etag(b"{\"keys\":[]}"));
        assert_ne!(tag, etag(b"{\"keys\":[1]}"));
        assert_eq!(etag(b""), "\"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU\"");
    }
}
