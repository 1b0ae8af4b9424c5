//! `FederatedIdentity.spec.exchange`: the outside token service that fedid trades the identity's
//! token at, and `IdentityIssuer.spec.exchange`: the endpoints an issuer's identities may use.

use std::collections::BTreeMap;

use kube_derive::KubeSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// CEL rule shared by every endpoint URL: https, with a host, no user information.
const HTTPS_URL_RULE: &str = "isURL(self) && url(self).getScheme() == 'https' && url(self).getHost() != '' && !self.matches('^[^/]*//[^/]*@')";

/// Pattern of an allowed endpoint prefix: an https URL with a host, without user information,
/// fragment or whitespace.
pub const ENDPOINT_PREFIX_PATTERN: &str = r"^https://[^/?#@\s]+([/?][^#\s]*)?$";

/// Where and how fedid exchanges the identity's token for credentials. Set exactly one of
/// `oauth2`, `vault`, `aws`, `azure` and `gcp`. The endpoint must start with one of the issuer's
/// `spec.exchange.allowedEndpoints`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("(has(self.oauth2) ? 1 : 0) + (has(self.vault) ? 1 : 0) + (has(self.aws) ? 1 : 0) + (has(self.azure) ? 1 : 0) + (has(self.gcp) ? 1 : 0) == 1")
        .message("exchange must set exactly one of oauth2, vault, aws, azure, gcp")
)]
#[x_kube(
    validation = Rule::new("!(has(self.caBundle) && has(self.caBundleRef))")
        .message("exchange must not set both caBundle and caBundleRef")
)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeSpec {
    /// OAuth 2.0 Token Exchange (RFC 8693) at a token endpoint, for example Dex or Keycloak.
    /// Writes `access-token`, `token-type`, `issued-token-type` and `expires-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Exchange>,

    /// Vault or OpenBao JWT auth login. Writes `vault-token` and `expires-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultExchange>,

    /// AWS STS AssumeRoleWithWebIdentity. Writes `credentials`, `credential-process.json`,
    /// `config` and `expires-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsExchange>,

    /// Microsoft Entra workload identity federation: the client credentials grant with the token
    /// as `client_assertion`. Writes `access-token`, `token-type` and `expires-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureExchange>,

    /// Google Cloud workload identity federation: the STS token exchange, then optionally a
    /// service account's access token. Writes `access-token`, `token-type`,
    /// `external_account.json` and `expires-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpExchange>,

    /// PEM certificates trusted for the endpoint's TLS, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    #[x_kube(
        validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')")
            .message("caBundle must hold PEM certificates")
    )]
    pub ca_bundle: Option<String>,

    /// A key of a ConfigMap in the identity's namespace holding the PEM certificates trusted for
    /// the endpoint's TLS besides the system roots, instead of `caBundle`: for a bundle another
    /// tool keeps current. The ConfigMap must carry the label `fedid.dev/ca-bundle: "true"`
    /// (fedid watches only ConfigMaps so labelled); a change to it applies at the next exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<ConfigMapKeyRef>,

    /// How long one exchange request may take, for example `10s` (default `10s`, at most `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1m')")
            .message("timeout must be between 1s and 1m")
    )]
    pub timeout: Option<Duration>,
}

impl ExchangeSpec {
    /// The Secret key holding the client secret this exchange sends, if it sends one.
    pub fn client_secret_ref(&self) -> Option<&SecretKeyRef> {
        let auth = self.oauth2.as_ref()?.client_auth.as_ref()?;
        Some(&auth.client_secret.as_ref()?.secret_ref)
    }
}

/// RFC 8693 token exchange: fedid's token is the `subject_token`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Exchange {
    /// The token endpoint, an https URL.
    #[serde(rename = "tokenURL")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("tokenURL must be an https URL with a host and no user information"))]
    pub token_url: String,

    /// The `audience` parameter: the service the issued token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// The `resource` parameter: a URI of the resource the issued token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub resource: Option<String>,

    /// Scopes requested, sent space-separated as `scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), regex(pattern = r"^[!#-\[\]-~]+$"))
    )]
    pub scopes: Vec<String>,

    /// The `requested_token_type` parameter, for example
    /// `urn:ietf:params:oauth:token-type:access_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub requested_token_type: Option<String>,

    /// The `subject_token_type` parameter (default `urn:ietf:params:oauth:token-type:jwt`; Dex
    /// wants `urn:ietf:params:oauth:token-type:id_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub subject_token_type: Option<String>,

    /// More form parameters, for example Dex's `connector_id`. They cannot replace a
    /// parameter fedid sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("!('grant_type' in self) && !('subject_token' in self) && !('subject_token_type' in self) && !('audience' in self) && !('resource' in self) && !('scope' in self) && !('requested_token_type' in self) && !('client_id' in self) && !('client_secret' in self) && !('client_assertion' in self) && !('client_assertion_type' in self)")
            .message("extraParameters must not set a parameter fedid sets itself (grant_type, subject_token, subject_token_type, audience, resource, scope, requested_token_type, client_id, client_secret, client_assertion, client_assertion_type)")
    )]
    pub extra_parameters: BTreeMap<String, String>,

    /// How fedid authenticates as an OAuth client. When omitted it sends no client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

/// OAuth client authentication: set exactly one of `clientSecret` and `privateKeyJWT`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("has(self.clientSecret) != has(self.privateKeyJWT)")
        .message("clientAuth must set exactly one of clientSecret, privateKeyJWT")
)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    /// The client ID.
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,

    /// A client secret, read from a Secret in the identity's namespace that carries the label
    /// `fedid.dev/client-credentials: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretAuth>,

    /// RFC 7523 `private_key_jwt`: a client assertion (`iss` and `sub` the client ID) signed by
    /// the issuer's own key, so no client secret exists. The client ID must be allowed by the
    /// issuer's `spec.exchange.privateKeyJWTClientIDs`.
    #[serde(
        default,
        rename = "privateKeyJWT",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key_jwt: Option<PrivateKeyJwtAuth>,
}

/// A client assertion signed with the issuer's current key, sent as `client_assertion`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyJwtAuth {
    /// The assertion's `aud` (default: the `tokenURL`; some servers want their issuer URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,
}

/// A client secret sent with HTTP Basic authentication or in the form body.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretAuth {
    /// The Secret and key that hold the client secret.
    pub secret_ref: SecretKeyRef,

    /// `basic` (HTTP Basic, the default) or `post` (`client_secret` in the form body).
    #[serde(default)]
    pub method: ClientSecretMethod,
}

/// How a client secret is sent.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ClientSecretMethod {
    /// HTTP Basic authentication (`client_secret_basic`).
    #[default]
    Basic,
    /// Form parameters `client_id` and `client_secret` (`client_secret_post`).
    Post,
}

/// A key of a Secret in the identity's namespace.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret's data (default `client-secret`).
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_client_secret_key() -> String {
    "client-secret".to_owned()
}

/// A key of a ConfigMap in the identity's namespace.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the ConfigMap's data (default `ca.crt`).
    #[serde(default = "default_ca_bundle_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_bundle_key() -> String {
    "ca.crt".to_owned()
}

/// Vault or OpenBao JWT auth: `POST <address>/v1/auth/<authMount>/login` with the token as
/// `jwt`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct VaultExchange {
    /// The server's address, an https URL, for example `https://vault.example.com:8200`.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("address must be an https URL with a host and no user information"))]
    pub address: String,

    /// Path where the JWT auth method is mounted (default `jwt`).
    #[serde(default = "default_auth_mount")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    )]
    pub auth_mount: String,

    /// The JWT auth role to log in with.
    #[schemars(length(min = 1, max = 256))]
    pub role: String,

    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`: letters, digits
    /// and `. _ - /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = VAULT_NAMESPACE_PATTERN))]
    pub vault_namespace: Option<String>,
}

/// Regular expression for `vault.vaultNamespace`: what a namespace path may hold, and all of it
/// sendable as a header value.
pub const VAULT_NAMESPACE_PATTERN: &str = r"^[A-Za-z0-9._/-]+$";

fn default_auth_mount() -> String {
    "jwt".to_owned()
}

/// AWS STS `AssumeRoleWithWebIdentity` with the token as the web identity token.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AwsExchange {
    /// ARN of the role to assume.
    #[serde(rename = "roleARN")]
    #[schemars(length(min = 20, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('arn:')").message("roleARN must be an ARN"))]
    pub role_arn: String,

    /// Session name template; `{namespace}` and `{name}` are replaced, other characters than
    /// STS allows (`A-Za-z0-9_=,.@-`) become `-`, and it is cut to 64 characters. Defaults to
    /// `fedid-{namespace}-{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub session_name: Option<String>,

    /// Requested lifetime of the credentials in seconds, 900 to 43200 (default: STS's, 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 900, max = 43200))]
    pub duration_seconds: Option<u32>,

    /// Region, used for the default regional endpoint and written to `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: Option<String>,

    /// The STS endpoint (default `https://sts.<region>.amazonaws.com`, or
    /// `https://sts.amazonaws.com` without a region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("stsEndpoint must be an https URL with a host and no user information"))]
    pub sts_endpoint: Option<String>,

    /// Directory where pods mount the Secret; the `config` file's `credential_process` reads
    /// `credential-process.json` from there (default `/var/run/secrets/fedid`).
    #[serde(default = "default_mount_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[A-Za-z0-9_./-]*$"))]
    pub mount_path: String,
}

/// Entra ID client credentials with a federated client assertion:
/// `POST <authorityHost>/<tenantID>/oauth2/v2.0/token`, or `POST <tokenURL>` for another server
/// that takes the same grant.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("!(has(self.tokenURL) && has(self.authorityHost))")
        .message("azure must not set both tokenURL and authorityHost")
)]
#[x_kube(
    validation = Rule::new("has(self.tenantID) || has(self.tokenURL)")
        .message("azure must set tenantID (or a whole tokenURL)")
)]
#[serde(rename_all = "camelCase")]
pub struct AzureExchange {
    /// The directory (tenant) ID or domain; required unless `tokenURL` is set.
    #[serde(rename = "tenantID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9.-]+$"))]
    pub tenant_id: Option<String>,

    /// The application (client) ID whose federated credential trusts fedid's issuer.
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 128))]
    pub client_id: String,

    /// The scope requested, for example `https://management.azure.com/.default`.
    #[schemars(length(min = 1, max = 1024))]
    pub scope: String,

    /// The Entra ID authority (default `https://login.microsoftonline.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("authorityHost must be an https URL with a host and no user information"))]
    pub authority_host: Option<String>,

    /// The whole token endpoint, instead of the one `authorityHost` and `tenantID` make: for
    /// servers that take the same grant at another path (AD FS, Keycloak's federated client
    /// authentication). Excludes `authorityHost`.
    #[serde(rename = "tokenURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("tokenURL must be an https URL with a host and no user information"))]
    pub token_url: Option<String>,
}

/// Google Cloud workload identity federation: `POST <tokenURL>` (Google's STS) trades the token
/// for a federated access token; with `serviceAccountEmail`, `POST <impersonationURL>` then
/// trades that for the service account's access token.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(
    validation = Rule::new("!has(self.impersonationURL) || has(self.serviceAccountEmail)")
        .message("gcp.impersonationURL needs serviceAccountEmail")
)]
#[x_kube(
    validation = Rule::new("!has(self.tokenLifetimeSeconds) || has(self.serviceAccountEmail)")
        .message("gcp.tokenLifetimeSeconds needs serviceAccountEmail")
)]
#[serde(rename_all = "camelCase")]
pub struct GcpExchange {
    /// The workload identity pool provider, for example
    /// `//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/fedid`.
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('//')").message("gcp.audience must be a provider resource name starting with //"))]
    pub audience: String,

    /// OAuth scopes of the access token (default `https://www.googleapis.com/auth/cloud-platform`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), regex(pattern = r"^[!#-\[\]-~]+$"))
    )]
    pub scopes: Vec<String>,

    /// The service account to impersonate; without it the federated token itself is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@/\s]+@[^@/\s]+$"))]
    pub service_account_email: Option<String>,

    /// Lifetime of the service account's token in seconds, 600 to 43200 (default Google's, 3600;
    /// more than 3600 needs Google's lifetime-extension organisation policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 600, max = 43200))]
    pub token_lifetime_seconds: Option<u32>,

    /// The STS token endpoint (default `https://sts.googleapis.com/v1/token`).
    #[serde(rename = "tokenURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("gcp.tokenURL must be an https URL with a host and no user information"))]
    pub token_url: Option<String>,

    /// The service account's `generateAccessToken` URL (default
    /// `https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/<email>:generateAccessToken`).
    #[serde(
        rename = "impersonationURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_URL_RULE).message("gcp.impersonationURL must be an https URL with a host and no user information"))]
    pub impersonation_url: Option<String>,

    /// Directory where pods mount the Secret; `external_account.json` reads the token from
    /// `<mountPath>/token` (default `/var/run/secrets/fedid`).
    #[serde(default = "default_mount_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[A-Za-z0-9_./-]*$"))]
    pub mount_path: String,
}

/// Where pods are documented to mount an identity's Secret.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/fedid";

fn default_mount_path() -> String {
    DEFAULT_MOUNT_PATH.to_owned()
}

/// `IdentityIssuer.spec.exchange`: the admin's policy for exchanges by this issuer's identities.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ExchangePolicy {
    /// URL prefixes an identity's exchange endpoint must start with, for example
    /// `https://sts.amazonaws.com/` or `https://vault.example.com:8200/`. A prefix matches at
    /// a path boundary only. When empty, this issuer's identities cannot exchange.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 9, max = 2048), regex(pattern = ENDPOINT_PREFIX_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_endpoints: Vec<String>,

    /// Client IDs an identity may authenticate as with `clientAuth.privateKeyJWT`, that is
    /// with an assertion this issuer signs; `{namespace}` stands for the identity's namespace,
    /// for example `ci-{namespace}`. Every client that trusts this issuer's keys for client
    /// authentication must be listed with a pattern that ties it to its namespace, or any
    /// allowed namespace could authenticate as it. When empty, no identity may use
    /// `privateKeyJWT`.
    #[serde(
        default,
        rename = "privateKeyJWTClientIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub private_key_jwt_client_ids: Vec<String>,
}
