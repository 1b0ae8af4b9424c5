//! `fedid token decode` and `fedid token verify`: offline helpers for the tokens fedid writes;
//! `fedid token request`: a pod asks fedid's token endpoint for a token.

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fedid_core::credentials::token::{self, DecodedToken};
use serde_json::{Map, Value, json};

/// Largest JWKS document `fedid token verify` downloads.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Timeout of the JWKS download.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token's header and claims WITHOUT verifying its signature.
    Decode(DecodeArgs),
    /// Verify a token's signature, audience, issuer and validity period against a JWKS.
    Verify(VerifyArgs),
    /// Inside a pod that opted in: ask fedid's token endpoint for a token with an audience and
    /// print it.
    Request(RequestArgs),
}

/// Default path of the projected service-account token the webhook mounts.
pub const DEFAULT_REQUEST_TOKEN_FILE: &str = "/var/run/secrets/fedid-request/token";

/// Default path of the token endpoint's CA in the pod's Secret.
pub const DEFAULT_TOKEN_CA_FILE: &str = "/var/run/secrets/fedid/token-request-ca.crt";

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Audience of the token (must be in the identity's `spec.pods.allowedAudiences`).
    #[arg(long)]
    pub audience: String,

    /// Lifetime of the token, for example `15m` (default: the identity's).
    #[arg(long)]
    pub lifetime: Option<String>,

    /// The token endpoint (set in the pod by fedid's webhook).
    #[arg(long, env = "FEDID_TOKEN_URL")]
    pub url: String,

    /// The pod's projected service-account token for fedid.
    #[arg(long, default_value = DEFAULT_REQUEST_TOKEN_FILE)]
    pub token_file: PathBuf,

    /// PEM CA of the token endpoint (set in the pod by fedid's webhook).
    #[arg(long, env = "FEDID_TOKEN_CA_FILE", default_value = DEFAULT_TOKEN_CA_FILE)]
    pub ca_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// File holding the token, or `-` for standard input.
    #[arg(default_value = "-")]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// JWKS to verify against: an http(s) URL or a file.
    #[arg(long)]
    pub jwks: String,

    /// Audience the token must include.
    #[arg(long)]
    pub audience: String,

    /// Issuer the token's `iss` must equal.
    #[arg(long)]
    pub issuer: Option<String>,

    /// PEM bundle of the only CAs trusted when downloading the JWKS over https.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,

    /// File holding the token, or `-` for standard input.
    #[arg(default_value = "-")]
    pub token: String,
}

fn read_token(source: &str) -> Result<String> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("failed to read the token from standard input")?;
    } else {
        text = std::fs::read_to_string(source)
            .with_context(|| format!("failed to read the token from {source}"))?;
    }
    let token = text.trim();
    if token.is_empty() {
        bail!("no token given");
    }
    Ok(token.to_owned())
}

/// The JSON printed by `token decode` and `token verify`.
fn token_report(verified: bool, decoded: &DecodedToken, claims: &Map<String, Value>) -> Value {
    let mut report = json!({
        "verified": verified,
        "header": decoded.header,
        "claims": claims,
    });
    if let Some(report) = report.as_object_mut() {
        if let Some(issued_at) = decoded.issued_at() {
            report.insert("issuedAt".into(), issued_at.to_string().into());
        }
        if let Some(expires_at) = decoded.expires_at() {
            report.insert("expiresAt".into(), expires_at.to_string().into());
        }
    }
    report
}

/// `fedid token decode`.
pub fn decode(args: &DecodeArgs) -> Result<()> {
    print_decoded(&read_token(&args.token)?)
}

/// Prints `jwt`'s header and claims as `fedid token decode` does (also `kubectl fedid token
/// --decode`).
pub fn print_decoded(jwt: &str) -> Result<()> {
    let decoded = token::decode_unverified(jwt).context("failed to decode the token")?;
    let report = token_report(false, &decoded, &decoded.claims);
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("note: the signature was NOT verified; use `fedid token verify` to check it");
    Ok(())
}

/// `fedid token verify`.
pub async fn verify(args: &VerifyArgs) -> Result<()> {
    let jwt = read_token(&args.token)?;
    let jwks = load_jwks(&args.jwks, args.ca_file.as_deref()).await?;
    let decoded = token::decode_unverified(&jwt).context("failed to decode the token")?;
    let now = jiff::Timestamp::now();
    let claims = token::verify(&jwt, &jwks, &args.audience, args.issuer.as_deref(), now)
        .context("token verification failed")?;
    let report = token_report(true, &decoded, &claims);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The JWKS at `source`: an http(s) URL (trusting only `ca_file`'s CAs when given) or a file.
pub async fn load_jwks(source: &str, ca_file: Option<&Path>) -> Result<Value> {
    let body = if source.starts_with("https://") || source.starts_with("http://") {
        fetch(source, ca_file).await?
    } else {
        std::fs::read(source).with_context(|| format!("failed to read the JWKS from {source}"))?
    };
    serde_json::from_slice(&body).with_context(|| format!("the JWKS at {source} is not JSON"))
}

async fn fetch(url: &str, ca_file: Option<&Path>) -> Result<Vec<u8>> {
    let mut builder = reqwest::Client::builder().timeout(JWKS_FETCH_TIMEOUT);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("failed to read the CA bundle {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
        if certificates.is_empty() {
            bail!("{} contains no PEM certificates", path.display());
        }
        builder = builder.tls_certs_only(certificates);
    }
    let client = builder
        .build()
        .context("failed to set up the HTTP client")?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("failed to download the JWKS from {url}"))?;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("failed to download the JWKS from {url}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            bail!("the JWKS at {url} is larger than 1 MiB");
        }
    }
    Ok(body)
}

/// `fedid token request`: POSTs `{audience, lifetime}` with the projected token as bearer and
/// prints the JWT; a refusal prints the endpoint's error and exits non-zero.
pub async fn request(args: &RequestArgs) -> Result<()> {
    let bearer = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("failed to read {}", args.token_file.display()))?;
    let pem = std::fs::read(&args.ca_file)
        .with_context(|| format!("failed to read {}", args.ca_file.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} holds no PEM certificate", args.ca_file.display()))?;
    let mut builder = reqwest::Client::builder()
        .timeout(JWKS_FETCH_TIMEOUT)
        .tls_certs_only(certificates);
    builder = builder.redirect(reqwest::redirect::Policy::none());
    let client = builder
        .build()
        .context("failed to set up the HTTP client")?;
    let mut body = json!({"audience": args.audience});
    if let Some(lifetime) = &args.lifetime {
        body["lifetime"] = json!(lifetime);
    }
    let response = client
        .post(&args.url)
        .bearer_auth(bearer.trim())
        .json(&body)
        .send()
        .await
        .with_context(|| format!("failed to reach {}", args.url))?;
    let status = response.status();
    let reply: Value = response
        .json()
        .await
        .with_context(|| format!("{} answered {status} without JSON", args.url))?;
    if !status.is_success() {
        bail!(
            "{status}: {} ({})",
            reply["error_description"].as_str().unwrap_or_default(),
            reply["error"].as_str().unwrap_or_default()
        );
    }
    let token = reply["token"].as_str().context("the reply has no token")?;
    println!("{token}");
    Ok(())
}
