//! `fedid token decode` and `fedid token verify`: offline helpers for the tokens fedid writes.

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
    let decoded = token::decode_unverified(&read_token(&args.token)?)
        .context("failed to decode the token")?;
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

async fn load_jwks(source: &str, ca_file: Option<&Path>) -> Result<Value> {
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
