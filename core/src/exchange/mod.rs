//! The exchange phase's decisions: whether an identity's exchange may run (the issuer's endpoint
//! policy), the exact HTTP request each kind sends, and what its reply means: credentials with
//! their real expiry, or a classified failure. The shell only sends the request and hands back
//! the reply; nothing here performs I/O.
//!
//! Kinds: [`oauth2`] (RFC 8693), [`vault`] (Vault/OpenBao JWT auth), [`aws`] (STS
//! AssumeRoleWithWebIdentity), [`azure`] (Entra client credentials with a federated assertion)
//! and [`gcp`] (Google's STS, then optionally a service account's token: the one kind that
//! sends a second request, which the reply to the first decides).

pub mod aws;
pub mod azure;
pub mod endpoint;
pub mod gcp;
pub mod oauth2;
mod reply;
pub mod vault;

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{
    crd::{ExchangePolicy, ExchangeSpec, exchange::SecretKeyRef},
    credentials::token::Minted,
    reason::{Failure, Reason, Retry},
};

pub use self::endpoint::Endpoint;

/// Default time one exchange request may take.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Label that marks a Secret whose client credentials fedid may send to a token endpoint.
pub const CLIENT_CREDENTIALS_LABEL: &str = "fedid.dev/client-credentials";

/// Label that marks a ConfigMap whose CA bundle fedid may trust for an exchange endpoint.
pub const CA_BUNDLE_LABEL: &str = "fedid.dev/ca-bundle";

/// Longest upstream error code kept for status and Events.
const MAX_CODE_LENGTH: usize = 64;

/// The kind of an exchange, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// RFC 8693 token exchange.
    OAuth2,
    /// Vault or OpenBao JWT auth.
    Vault,
    /// AWS STS AssumeRoleWithWebIdentity.
    Aws,
    /// Entra ID client credentials with the token as client assertion.
    Azure,
    /// Google Cloud STS, then optionally service account impersonation.
    Gcp,
}

impl ExchangeKind {
    /// The kind's field name in `spec.exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth2 => "oauth2",
            Self::Vault => "vault",
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }
}

/// An exchange spec that passed the issuer's policy, with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedExchange {
    /// The kind.
    pub kind: ExchangeKind,
    /// The URL the (first) request goes to.
    pub endpoint: Endpoint,
    /// The URL of the second request, when the kind sends one (GCP service account
    /// impersonation).
    pub impersonation: Option<Endpoint>,
    /// The spec as written (each kind's builder reads its own part).
    pub spec: ExchangeSpec,
    /// The client secret to send, if the kind authenticates with one.
    pub client_secret: Option<SecretKeyRef>,
    /// The client assertion to sign for each request, if the client authenticates with
    /// `privateKeyJWT`.
    pub client_assertion: Option<ClientAssertion>,
    /// Request timeout.
    pub timeout: std::time::Duration,
    /// A digest of the spec, stored on the Secret so a spec change re-exchanges.
    pub spec_digest: String,
}

/// Checks `spec` of an identity in `namespace` against the issuer `issuer`'s `policy` and
/// resolves its defaults.
pub fn validate(
    spec: &ExchangeSpec,
    issuer: &str,
    namespace: &str,
    policy: Option<&ExchangePolicy>,
) -> Result<ValidatedExchange, ExchangeError> {
    let (kind, url, second_url) =
        match (&spec.oauth2, &spec.vault, &spec.aws, &spec.azure, &spec.gcp) {
            (Some(oauth2), None, None, None, None) => {
                (ExchangeKind::OAuth2, oauth2.token_url.clone(), None)
            }
            (None, Some(vault), None, None, None) => {
                (ExchangeKind::Vault, vault::login_url(vault), None)
            }
            (None, None, Some(aws), None, None) => {
                (ExchangeKind::Aws, aws::endpoint_url(aws), None)
            }
            (None, None, None, Some(azure), None) => {
                (ExchangeKind::Azure, azure::token_url(azure), None)
            }
            (None, None, None, None, Some(gcp)) => (
                ExchangeKind::Gcp,
                gcp::token_url(gcp),
                gcp::impersonation_url(gcp),
            ),
            _ => return Err(ExchangeError::NotExactlyOneKind),
        };
    if let Some(vault) = &spec.vault {
        vault::check_settings(vault)?;
    }
    // Every URL a request may go to is checked against the admin's policy.
    let allowed_endpoint = |url: String| {
        let endpoint = Endpoint::parse(&url).map_err(|problem| ExchangeError::InvalidEndpoint {
            url: url.clone(),
            problem,
        })?;
        let allowed = policy
            .map(|policy| policy.allowed_endpoints.as_slice())
            .unwrap_or_default();
        if allowed.iter().any(|prefix| endpoint.starts_with(prefix)) {
            Ok(endpoint)
        } else {
            Err(ExchangeError::EndpointNotAllowed {
                url,
                issuer: issuer.to_owned(),
            })
        }
    };
    let endpoint = allowed_endpoint(url)?;
    let impersonation = second_url.map(allowed_endpoint).transpose()?;
    if let Some(aws) = &spec.aws {
        aws::check(aws)?;
    }
    let client_assertion = client_assertion(spec, &endpoint)
        .map(|assertion| {
            let patterns = policy
                .map(|policy| policy.private_key_jwt_client_ids.as_slice())
                .unwrap_or_default();
            let allowed = patterns
                .iter()
                .any(|pattern| pattern.replace("{namespace}", namespace) == assertion.client_id);
            if allowed {
                Ok(assertion)
            } else {
                Err(ExchangeError::ClientIdNotAllowed {
                    client_id: assertion.client_id,
                    issuer: issuer.to_owned(),
                })
            }
        })
        .transpose()?;
    let timeout = spec
        .timeout
        .map_or(DEFAULT_TIMEOUT, |timeout| timeout.to_std());
    let digest = Sha256::digest(serde_json::to_vec(spec).unwrap_or_default());
    Ok(ValidatedExchange {
        kind,
        endpoint,
        impersonation,
        spec: spec.clone(),
        client_secret: spec.client_secret_ref().cloned(),
        client_assertion,
        timeout,
        spec_digest: hex(&digest[..12]),
    })
}

/// The assertion `spec` authenticates with, when its client uses `privateKeyJWT`; its audience
/// defaults to the token endpoint (RFC 7523 §3).
fn client_assertion(spec: &ExchangeSpec, endpoint: &Endpoint) -> Option<ClientAssertion> {
    let auth = spec.oauth2.as_ref()?.client_auth.as_ref()?;
    let private_key_jwt = auth.private_key_jwt.as_ref()?;
    Some(ClientAssertion {
        client_id: auth.client_id.clone(),
        audience: private_key_jwt
            .audience
            .clone()
            .unwrap_or_else(|| endpoint.url().to_owned()),
    })
}

/// How long a client assertion is valid: it is signed for one request, sent at once.
pub const CLIENT_ASSERTION_LIFETIME: SignedDuration = SignedDuration::from_secs(60);

/// An RFC 7523 client assertion to sign: fedid authenticates as `client_id` with the issuer's
/// key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAssertion {
    /// The client ID, both `iss` and `sub`.
    pub client_id: String,
    /// The `aud`: the token endpoint, or the audience the spec names.
    pub audience: String,
}

impl ClientAssertion {
    /// The claims of the assertion issued at `now` (whole seconds) with token ID `jti`: `iss`
    /// and `sub` the client ID, `aud`, `iat` and `nbf`, `exp` [`CLIENT_ASSERTION_LIFETIME`]
    /// later, `jti`.
    pub fn claims(&self, now: Timestamp, jti: &str) -> Map<String, Value> {
        let issued_at = now.as_second();
        let expires_at = issued_at.saturating_add(CLIENT_ASSERTION_LIFETIME.as_secs());
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": jti,
        });
        match claims {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// What proves the OAuth client's identity in one request: the client secret's value, or a
/// signed assertion. Its `Debug` output shows neither.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCredential {
    /// The value of the referenced client secret.
    Secret(String),
    /// A signed `private_key_jwt` assertion.
    Assertion(String),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => formatter.write_str("Secret(<redacted>)"),
            Self::Assertion(_) => formatter.write_str("Assertion(<redacted>)"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Who the request is for (templates such as the AWS session name use it).
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// The identity's namespace.
    pub namespace: &'a str,
    /// The identity's name.
    pub name: &'a str,
}

/// The body of an exchange request.
#[derive(Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// `application/x-www-form-urlencoded` parameters.
    Form(Vec<(String, String)>),
    /// A JSON document.
    Json(serde_json::Value),
}

impl RequestBody {
    /// The `Content-Type` and bytes sent on the wire.
    pub fn encode(&self) -> (&'static str, Vec<u8>) {
        match self {
            Self::Form(form) => {
                let encoded = form
                    .iter()
                    .map(|(name, value)| {
                        format!("{}={}", reply::form_encode(name), reply::form_encode(value))
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                ("application/x-www-form-urlencoded", encoded.into_bytes())
            }
            Self::Json(json) => ("application/json", json.to_string().into_bytes()),
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Form(form) => {
                let names: Vec<&str> = form.iter().map(|(name, _)| name.as_str()).collect();
                write!(formatter, "Form({names:?})")
            }
            Self::Json(_) => formatter.write_str("Json"),
        }
    }
}

/// Which request of an exchange a request or reply is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The exchange of the token itself, the only request of most kinds.
    Exchange,
    /// GCP: the federated token traded for a service account's token.
    Impersonation,
}

impl Stage {
    /// The most requests one exchange sends.
    pub const MAX_REQUESTS: usize = 2;
}

/// One HTTP POST to a token service. Its `Debug` output shows no header or parameter value,
/// since they carry the token and client secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// The kind, for metrics.
    pub kind: ExchangeKind,
    /// Which request of the exchange this is; its reply is judged by it.
    pub stage: Stage,
    /// The full URL.
    pub url: String,
    /// Host and port, for the request budget, metrics and status.
    pub host: String,
    /// Extra headers (names and values).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: RequestBody,
}

impl fmt::Debug for ExchangeRequest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        let parameters: Vec<&str> = match &self.body {
            RequestBody::Form(form) => form.iter().map(|(name, _)| name.as_str()).collect(),
            RequestBody::Json(_) => vec!["<json>"],
        };
        formatter
            .debug_struct("ExchangeRequest")
            .field("kind", &self.kind)
            .field("stage", &self.stage)
            .field("url", &self.url)
            .field("headers", &header_names)
            .field("parameters", &parameters)
            .finish()
    }
}

/// The client secret in `value` (a Secret data value): UTF-8, without trailing line breaks
/// (files written by editors and `--from-file` end with one). `None` when not UTF-8.
pub fn client_secret_value(value: &[u8]) -> Option<String> {
    std::str::from_utf8(value)
        .ok()
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Builds the request of `exchange` for `token`. `client` is the value of the referenced
/// client secret or the signed client assertion, when the exchange has one.
pub fn build_request(
    exchange: &ValidatedExchange,
    token: &Minted,
    client: Option<&ClientCredential>,
    requester: Requester<'_>,
) -> ExchangeRequest {
    let spec = &exchange.spec;
    let (headers, body) = match (&spec.oauth2, &spec.vault, &spec.aws, &spec.azure, &spec.gcp) {
        (Some(oauth2), ..) => oauth2::request(oauth2, &token.jwt, client),
        (_, Some(vault), ..) => vault::request(vault, &token.jwt),
        (_, _, Some(aws), ..) => aws::request(aws, &token.jwt, requester),
        (_, _, _, Some(azure), _) => azure::request(azure, &token.jwt),
        (.., Some(gcp)) => gcp::request(gcp, &token.jwt),
        (None, None, None, None, None) => (Vec::new(), RequestBody::Form(Vec::new())),
    };
    ExchangeRequest {
        kind: exchange.kind,
        stage: Stage::Exchange,
        url: exchange.endpoint.url().to_owned(),
        host: exchange.endpoint.host().to_owned(),
        headers,
        body,
    }
}

/// What came back from the token service.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP response.
    Response {
        /// Status code.
        status: u16,
        /// The `Retry-After` header, when present.
        retry_after: Option<String>,
        /// The body (never logged or reported).
        body: Vec<u8>,
    },
    /// No response: the shell's transport error.
    NoResponse(Transport),
}

impl fmt::Debug for Reply {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Response { status, .. } => write!(formatter, "Response({status})"),
            Self::NoResponse(transport) => write!(formatter, "NoResponse({transport:?})"),
        }
    }
}

/// Why no response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The request timed out.
    Timeout,
    /// The connection was refused or could not be made.
    Connect,
    /// The endpoint answered with a redirect, which fedid never follows.
    Redirect,
    /// Another transport failure (TLS, a broken connection).
    Other,
}

impl Transport {
    fn describe(self) -> &'static str {
        match self {
            Self::Timeout => "the request timed out",
            Self::Connect => "the connection failed",
            Self::Redirect => "the endpoint answered with a redirect, which fedid does not follow",
            Self::Other => "the request failed before a response arrived",
        }
    }
}

/// One file of the output Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The Secret data key.
    pub key: &'static str,
    /// Its contents.
    pub value: Vec<u8>,
}

impl fmt::Debug for OutputFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "OutputFile({}, {} bytes)",
            self.key,
            self.value.len()
        )
    }
}

/// Credentials a token service issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchanged {
    /// The files written into the Secret.
    pub files: Vec<OutputFile>,
    /// When the credentials expire: the reply's, capped at the subject token's expiry when the
    /// reply says nothing.
    pub expires_at: Timestamp,
    /// The endpoint's host.
    pub host: String,
    /// The exchange's spec digest.
    pub spec_digest: String,
}

/// What a successful reply leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The credentials.
    Done(Exchanged),
    /// Another request to send, whose reply decides (at most [`Stage::MAX_REQUESTS`] in all).
    Next(ExchangeRequest),
}

/// Interprets `reply` to the `stage` request of `exchange` for `token`, received at `now`.
pub fn parse_reply(
    exchange: &ValidatedExchange,
    token: &Minted,
    stage: Stage,
    reply: &Reply,
    now: Timestamp,
) -> Result<Step, ExchangeError> {
    let endpoint = match (stage, &exchange.impersonation) {
        (Stage::Impersonation, Some(impersonation)) => impersonation,
        _ => &exchange.endpoint,
    };
    let host = endpoint.host();
    let (status, retry_after, body) = match reply {
        Reply::Response {
            status,
            retry_after,
            body,
        } => (*status, retry_after.as_deref(), body.as_slice()),
        Reply::NoResponse(transport) => {
            return Err(ExchangeError::Unavailable {
                host: host.to_owned(),
                detail: transport.describe().to_owned(),
                code: None,
                retry_after: None,
            });
        }
    };
    let spec = &exchange.spec;
    let issued = |(files, expires_at)| gcp::Parsed::Issued(files, expires_at);
    let outcome = match (&spec.oauth2, &spec.vault, &spec.aws, &spec.azure, &spec.gcp) {
        (Some(_), ..) => oauth2::parse(status, body, token, now).map(issued),
        (_, Some(_), ..) => vault::parse(status, body, token, now).map(issued),
        (_, _, Some(aws), ..) => aws::parse(aws, status, body).map(issued),
        (_, _, _, Some(_), _) => azure::parse(status, body, now).map(issued),
        (.., Some(gcp)) => gcp::parse(gcp, stage == Stage::Impersonation, status, body, now),
        (None, None, None, None, None) => Err(Upstream::Malformed("no exchange kind")),
    };
    match (outcome, &exchange.impersonation) {
        (Ok(gcp::Parsed::Issued(files, expires_at)), _) => Ok(Step::Done(Exchanged {
            files,
            expires_at,
            host: host.to_owned(),
            spec_digest: exchange.spec_digest.clone(),
        })),
        (Ok(gcp::Parsed::Impersonate(headers, body)), Some(next)) => {
            Ok(Step::Next(ExchangeRequest {
                kind: exchange.kind,
                stage: Stage::Impersonation,
                url: next.url().to_owned(),
                host: next.host().to_owned(),
                headers,
                body,
            }))
        }
        (Ok(gcp::Parsed::Impersonate(..)), None) => Err(Upstream::Malformed(
            "a second request without an impersonation endpoint",
        )
        .into_error(host, status, retry_after, now)),
        (Err(upstream), _) => Err(upstream.into_error(host, status, retry_after, now)),
    }
}

/// A parser's verdict on a reply that carries no credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// The service refused this request; `code` is its error code, when it gave one.
    Rejected(Option<String>),
    /// The service is unavailable or throttling.
    Unavailable(Option<String>),
    /// The reply cannot be understood.
    Malformed(&'static str),
}

impl Upstream {
    /// Classifies an error reply with `code` by the HTTP status when the code does not decide.
    pub(crate) fn by_status(status: u16, code: Option<String>) -> Self {
        if status == 429 || status >= 500 {
            Self::Unavailable(code)
        } else {
            Self::Rejected(code)
        }
    }

    fn into_error(
        self,
        host: &str,
        status: u16,
        retry_after: Option<&str>,
        now: Timestamp,
    ) -> ExchangeError {
        let host = host.to_owned();
        match self {
            Self::Rejected(code) => ExchangeError::Rejected {
                host,
                status,
                code: code.map(|code| sanitize_code(&code)),
            },
            Self::Unavailable(code) => ExchangeError::Unavailable {
                host,
                detail: format!("HTTP {status}"),
                code: code.map(|code| sanitize_code(&code)),
                retry_after: retry_after.and_then(|value| parse_retry_after(value, now)),
            },
            Self::Malformed(what) => ExchangeError::Malformed { host, status, what },
        }
    }
}

/// Keeps an upstream error code printable and short: it reaches status and Events.
fn sanitize_code(code: &str) -> String {
    code.chars()
        .map(|character| {
            if character.is_ascii_graphic() || character == ' ' {
                character
            } else {
                '?'
            }
        })
        .take(MAX_CODE_LENGTH)
        .collect()
}

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<std::time::Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => std::time::Duration::from_secs(seconds),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            let seconds = at.as_second().saturating_sub(now.as_second()).max(0);
            std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Everything the output Secret is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The token fedid signed.
    pub token: Minted,
    /// What the token was exchanged for, when the identity has an exchange.
    pub exchanged: Option<Exchanged>,
}

impl Credentials {
    /// When the Secret's contents stop being usable: the earliest of the token's and the
    /// credentials' expiry.
    pub fn expires_at(&self) -> Timestamp {
        match &self.exchanged {
            Some(exchanged) => exchanged.expires_at.min(self.token.expires_at),
            None => self.token.expires_at,
        }
    }
}

/// The credentials of an identity without an exchange: its own token.
pub fn without_exchange(token: Minted) -> Credentials {
    Credentials {
        token,
        exchanged: None,
    }
}

/// Why an exchange could not run, or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The spec sets no kind, or several (the CRD's CEL rule normally prevents it).
    #[error("spec.exchange must set exactly one of oauth2, vault, aws, azure, gcp")]
    NotExactlyOneKind,
    /// The endpoint URL cannot be used.
    #[error("exchange endpoint {url:?} is invalid: {problem}")]
    InvalidEndpoint {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The issuer does not allow the endpoint.
    #[error(
        "exchange endpoint {url} is not allowed by IdentityIssuer {issuer}: it must start with \
         one of the issuer's spec.exchange.allowedEndpoints"
    )]
    EndpointNotAllowed {
        /// The endpoint URL.
        url: String,
        /// The issuer.
        issuer: String,
    },
    /// A setting the CRD schema allows cannot be sent.
    #[error("spec.exchange.{field} is invalid: {problem}")]
    InvalidSetting {
        /// The field, relative to `spec.exchange`.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The referenced client secret is not available to fedid.
    #[error(
        "client secret Secret {secret} in namespace {namespace} does not exist or lacks the \
         label fedid.dev/client-credentials: \"true\"; fedid sends only Secrets so labelled"
    )]
    ClientSecretNotAllowed {
        /// The identity's namespace.
        namespace: String,
        /// The Secret name.
        secret: String,
    },
    /// The issuer does not let this namespace authenticate as the client with `privateKeyJWT`.
    #[error(
        "client ID {client_id:?} may not authenticate with privateKeyJWT: IdentityIssuer {issuer} \
         does not list it (for this namespace) in spec.exchange.privateKeyJWTClientIDs"
    )]
    ClientIdNotAllowed {
        /// The client ID.
        client_id: String,
        /// The issuer.
        issuer: String,
    },
    /// The referenced key is missing or not UTF-8.
    #[error("client secret Secret {secret} has no UTF-8 key {key}")]
    ClientSecretKeyMissing {
        /// The Secret name.
        secret: String,
        /// The key.
        key: String,
    },
    /// `caBundle` holds no usable certificate.
    #[error("spec.exchange.caBundle holds no valid PEM certificate")]
    InvalidCaBundle,
    /// The ConfigMap `caBundleRef` names is not available to fedid, or lacks the key.
    #[error(
        "CA bundle ConfigMap {config_map} in namespace {namespace} does not exist, lacks the \
         label fedid.dev/ca-bundle: \"true\", or has no key {key}"
    )]
    CaBundleNotFound {
        /// The identity's namespace.
        namespace: String,
        /// The ConfigMap name.
        config_map: String,
        /// The key.
        key: String,
    },
    /// The service refused the request.
    #[error("{host} rejected the exchange (HTTP {status}{})", code_suffix(code.as_deref()))]
    Rejected {
        /// The endpoint's host.
        host: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code.
        code: Option<String>,
    },
    /// The service is unreachable, failing or throttling.
    #[error("{host} is unavailable: {detail}{}", code_suffix(code.as_deref()))]
    Unavailable {
        /// The endpoint's host.
        host: String,
        /// What happened.
        detail: String,
        /// The service's error code.
        code: Option<String>,
        /// How long the service asked to wait.
        retry_after: Option<std::time::Duration>,
    },
    /// The reply cannot be understood.
    #[error("{host} answered HTTP {status} with an unusable reply: {what}")]
    Malformed {
        /// The endpoint's host.
        host: String,
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        what: &'static str,
    },
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|code| format!(", error {code}"))
        .unwrap_or_default()
}

impl ExchangeError {
    /// The upstream error code, when the service gave one.
    pub fn upstream_code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } | Self::Unavailable { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The endpoint host, when a request was sent.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Rejected { host, .. }
            | Self::Unavailable { host, .. }
            | Self::Malformed { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl Failure for ExchangeError {
    fn reason(&self) -> Reason {
        match self {
            Self::NotExactlyOneKind
            | Self::InvalidEndpoint { .. }
            | Self::InvalidSetting { .. } => Reason::InvalidExchange,
            Self::EndpointNotAllowed { .. } => Reason::EndpointNotAllowed,
            Self::ClientSecretNotAllowed { .. } => Reason::ClientSecretNotAllowed,
            Self::ClientIdNotAllowed { .. } => Reason::ClientIDNotAllowed,
            Self::ClientSecretKeyMissing { .. } => Reason::ClientSecretKeyMissing,
            Self::InvalidCaBundle => Reason::InvalidCABundle,
            Self::CaBundleNotFound { .. } => Reason::CABundleNotFound,
            Self::Rejected { .. } => Reason::ExchangeRejected,
            Self::Unavailable { .. } => Reason::ExchangeUnavailable,
            Self::Malformed { .. } => Reason::ExchangeMalformed,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            // The service's answer may change (a role fixed, a service back): back off,
            // keeping still-valid credentials.
            Self::Rejected { .. } | Self::Unavailable { .. } | Self::Malformed { .. } => {
                Retry::Backoff
            }
            _ => Retry::WaitForChange,
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    pub(crate) fn token() -> Minted {
        Minted {
            jwt: "header.payload.signature".into(),
            key_id: "kid-1".into(),
            issued_at: at(1_800_000_000),
            expires_at: at(1_800_003_600),
        }
    }

    pub(crate) fn spec(value: serde_json::Value) -> ExchangeSpec {
        serde_json::from_value(value).expect("exchange spec")
    }

    fn policy(prefixes: &[&str]) -> ExchangePolicy {
        ExchangePolicy {
            allowed_endpoints: prefixes.iter().map(|prefix| (*prefix).to_owned()).collect(),
            private_key_jwt_client_ids: vec!["ci-{namespace}".into(), "shared".into()],
        }
    }

    /// The verdict on the reply to a one-request exchange.
    pub(crate) fn parse_one(
        exchange: &ValidatedExchange,
        token: &Minted,
        reply: &Reply,
        now: Timestamp,
    ) -> Result<Exchanged, ExchangeError> {
        match parse_reply(exchange, token, Stage::Exchange, reply, now)? {
            Step::Done(exchanged) => Ok(exchanged),
            Step::Next(request) => panic!("a second request: {request:?}"),
        }
    }

    pub(crate) fn validated(value: serde_json::Value) -> ValidatedExchange {
        let hosts = [
            "https://sts.example.com",
            "https://dex.example.com",
            "https://kc.example.com",
            "https://b.example.com",
            "https://bao.example.com:8200",
            "https://vault.example.com",
            "https://vault.example.com:8200",
            "https://sts.amazonaws.com",
            "https://sts.eu-west-1.amazonaws.com",
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.us",
            "https://sts.googleapis.com/v1/",
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/",
        ];
        validate(&spec(value), "ci", "team", Some(&policy(&hosts))).expect("valid exchange")
    }

    #[test]
    fn an_endpoint_outside_the_issuer_policy_is_refused() {
        let oauth2 = spec(json!({"oauth2": {"tokenURL": "https://sts.example.com/token"}}));
        for allowed in [
            vec![],
            vec!["https://sts.example.co"],
            vec!["https://sts.example.com/tok"],
            vec!["https://sts.example.com.evil.net/"],
            vec!["https://other.example.com/"],
        ] {
            let error =
                validate(&oauth2, "ci", "team", Some(&policy(&allowed))).expect_err("refused");
            assert_eq!(error.reason(), Reason::EndpointNotAllowed, "{allowed:?}");
            assert_eq!(error.retry(), Retry::WaitForChange);
        }
        assert_eq!(
            validate(&oauth2, "ci", "team", None)
                .expect_err("no policy")
                .reason(),
            Reason::EndpointNotAllowed
        );
        for allowed in [
            "https://sts.example.com",
            "https://sts.example.com/",
            "https://sts.example.com/token",
        ] {
            validate(&oauth2, "ci", "team", Some(&policy(&[allowed]))).expect(allowed);
        }
    }

    #[test]
    fn exactly_one_kind() {
        let error = validate(
            &spec(json!({})),
            "ci",
            "team",
            Some(&policy(&["https://a.example"])),
        )
        .expect_err("no kind");
        assert_eq!(error.reason(), Reason::InvalidExchange);
    }

    #[test]
    fn private_key_jwt_needs_a_client_id_the_issuer_ties_to_the_namespace() {
        let with_client = |client_id: &str, audience: Option<&str>| {
            let mut auth = json!({"clientID": client_id, "privateKeyJWT": {}});
            if let Some(audience) = audience {
                auth["privateKeyJWT"]["audience"] = json!(audience);
            }
            spec(
                json!({"oauth2": {"tokenURL": "https://kc.example.com/realms/ci/token", "clientAuth": auth}}),
            )
        };
        let allowed = policy(&["https://kc.example.com"]);
        let ok = validate(&with_client("ci-team", None), "ci", "team", Some(&allowed))
            .expect("ci-{namespace} in namespace team");
        assert_eq!(
            ok.client_assertion,
            Some(ClientAssertion {
                client_id: "ci-team".into(),
                audience: "https://kc.example.com/realms/ci/token".into(),
            })
        );
        let named = validate(
            &with_client("shared", Some("https://kc.example.com/realms/ci")),
            "ci",
            "team",
            Some(&allowed),
        )
        .expect("a literal client ID");
        assert_eq!(
            named.client_assertion.map(|assertion| assertion.audience),
            Some("https://kc.example.com/realms/ci".into())
        );
        // Another namespace's client, a pattern's raw text, or no list at all: refused.
        for (client_id, namespace) in [
            ("ci-other", "team"),
            ("ci-team", "other"),
            ("ci-{namespace}", "team"),
        ] {
            let error = validate(
                &with_client(client_id, None),
                "ci",
                namespace,
                Some(&allowed),
            )
            .expect_err("not allowed");
            assert_eq!(error.reason(), Reason::ClientIDNotAllowed, "{client_id}");
            assert_eq!(error.retry(), Retry::WaitForChange);
        }
        let mut without_list = allowed.clone();
        without_list.private_key_jwt_client_ids.clear();
        let error = validate(
            &with_client("ci-team", None),
            "ci",
            "team",
            Some(&without_list),
        )
        .expect_err("no list");
        assert_eq!(error.reason(), Reason::ClientIDNotAllowed);
    }

    #[test]
    fn a_client_assertion_is_short_lived_and_names_the_client_twice() {
        let assertion = ClientAssertion {
            client_id: "ci-team".into(),
            audience: "https://kc.example.com/token".into(),
        };
        let claims = assertion.claims(at(1_800_000_000), "jti-1");
        assert_eq!(
            Value::Object(claims),
            json!({
                "iss": "ci-team", "sub": "ci-team", "aud": "https://kc.example.com/token",
                "iat": 1_800_000_000, "nbf": 1_800_000_000, "exp": 1_800_000_060,
                "jti": "jti-1"
            })
        );
        let credential = ClientCredential::Assertion("header.payload.signature".into());
        assert_eq!(format!("{credential:?}"), "Assertion(<redacted>)");
    }

    #[test]
    fn the_digest_follows_the_spec() {
        let one =
            validated(json!({"vault": {"address": "https://vault.example.com", "role": "a"}}));
        let same =
            validated(json!({"vault": {"address": "https://vault.example.com", "role": "a"}}));
        let other =
            validated(json!({"vault": {"address": "https://vault.example.com", "role": "b"}}));
        assert_eq!(one.spec_digest, same.spec_digest);
        assert_ne!(one.spec_digest, other.spec_digest);
        assert_eq!(one.spec_digest.len(), 24);
    }

    #[test]
    fn the_debug_form_of_a_request_hides_every_value() {
        let exchange = validated(json!({"oauth2": {
            "tokenURL": "https://sts.example.com/token",
            "clientAuth": {"clientID": "fedid", "clientSecret": {"secretRef": {"name": "c"}}}
        }}));
        let request = build_request(
            &exchange,
            &token(),
            Some(&ClientCredential::Secret("hunter2".into())),
            Requester {
                namespace: "ci",
                name: "deploy",
            },
        );
        let shown = format!("{request:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("header.payload.signature"), "{shown}");
        assert!(shown.contains("subject_token"), "{shown}");
    }

    #[test]
    fn client_secrets_lose_trailing_line_breaks_only() {
        assert_eq!(client_secret_value(b"pw\n").as_deref(), Some("pw"));
        assert_eq!(client_secret_value(b"pw\r\n").as_deref(), Some("pw"));
        assert_eq!(client_secret_value(b" p w ").as_deref(), Some(" p w "));
        assert_eq!(client_secret_value(&[0xff, 0xfe]), None);
    }

    #[test]
    fn bodies_are_encoded_for_the_wire() {
        let form = RequestBody::Form(vec![
            ("grant_type".into(), "urn:a b".into()),
            ("x".into(), "1&2=3".into()),
        ]);
        assert_eq!(
            form.encode(),
            (
                "application/x-www-form-urlencoded",
                b"grant_type=urn%3Aa+b&x=1%262%3D3".to_vec()
            )
        );
        let json = RequestBody::Json(json!({"role": "r"}));
        assert_eq!(
            json.encode(),
            ("application/json", br#"{"role":"r"}"#.to_vec())
        );
    }

    #[test]
    fn transport_failures_are_unavailable_and_retried() {
        let exchange =
            validated(json!({"vault": {"address": "https://vault.example.com:8200", "role": "a"}}));
        for transport in [Transport::Timeout, Transport::Connect, Transport::Other] {
            let error = parse_one(&exchange, &token(), &Reply::NoResponse(transport), at(0))
                .expect_err("no credentials");
            assert_eq!(error.reason(), Reason::ExchangeUnavailable);
            assert_eq!(error.retry(), Retry::Backoff);
            assert_eq!(error.host(), Some("vault.example.com:8200"));
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_capped() {
        let now = at(1_800_000_000);
        assert_eq!(
            parse_retry_after("30", now),
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        // 1_800_000_000 is Fri, 15 Jan 2027 08:00:00 GMT.
        assert_eq!(
            parse_retry_after("Fri, 15 Jan 2027 08:01:00 GMT", now),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn upstream_codes_are_kept_printable_and_short() {
        assert_eq!(sanitize_code("invalid_grant"), "invalid_grant");
        assert_eq!(sanitize_code("a\nb\u{1b}c"), "a?b?c");
        assert_eq!(sanitize_code(&"x".repeat(500)).len(), MAX_CODE_LENGTH);
    }
}
