//! The `fedid` command: runs the operator and offers offline helpers for CRDs and tokens.

use std::{
    io::{IsTerminal, Read},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use fedid::{
    crd::{crd_manifests, multi_document_yaml},
    run::{self, IssuerFilesArgs, LogFormat, RunArgs},
    token::{self, DecodedToken},
};
use serde_json::{Map, Value, json};
use tracing_subscriber::EnvFilter;

/// Largest JWKS document `fedid token verify` downloads.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Timeout of the JWKS download.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the cluster an OIDC issuer for CI workloads.
#[derive(Debug, Parser)]
#[command(name = "fedid", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as one multi-document YAML stream.
    Crds(CrdsArgs),
    /// Decode or verify tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Work with IdentityIssuers.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
}

#[derive(Debug, Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token's header and claims WITHOUT verifying its signature.
    Decode(DecodeArgs),
    /// Verify a token's signature, audience, issuer and validity period against a JWKS.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// File holding the token, or `-` for standard input.
    #[arg(default_value = "-")]
    token: String,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// JWKS to verify against: an http(s) URL or a file.
    #[arg(long)]
    jwks: String,

    /// Audience the token must include.
    #[arg(long)]
    audience: String,

    /// Issuer the token's `iss` must equal.
    #[arg(long)]
    issuer: Option<String>,

    /// PEM bundle of the only CAs trusted when downloading the JWKS over https.
    #[arg(long)]
    ca_file: Option<PathBuf>,

    /// File holding the token, or `-` for standard input.
    #[arg(default_value = "-")]
    token: String,
}

#[derive(Debug, Subcommand)]
enum IssuerCommand {
    /// Print an issuer's discovery document and JWKS, for hosting them elsewhere.
    Files(IssuerFilesArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match execute(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<()> {
    // The offline commands report through their output and exit code; library logs would
    // only repeat errors, so they are off unless RUST_LOG asks for them.
    let (log_format, default_filter) = match &cli.command {
        Command::Run(args) => (args.log_format, "info"),
        _ => (LogFormat::Text, "off"),
    };
    init_logging(log_format, default_filter)?;
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Crds(args) => print_crds(&args),
        Command::Token {
            command: TokenCommand::Decode(args),
        } => decode(&args),
        Command::Token {
            command: TokenCommand::Verify(args),
        } => verify(&args).await,
        Command::Issuer {
            command: IssuerCommand::Files(args),
        } => run::issuer_files(args).await,
    }
}

fn init_logging(format: LogFormat, default_filter: &str) -> Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|error| anyhow!(error).context("failed to set up logging"))
}

fn print_crds(args: &CrdsArgs) -> Result<()> {
    let manifests = crd_manifests().context("failed to render the CRDs")?;
    let Some(out_dir) = &args.out_dir else {
        print!("{}", multi_document_yaml(&manifests));
        return Ok(());
    };
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    for manifest in &manifests {
        let path = out_dir.join(&manifest.file_name);
        std::fs::write(&path, &manifest.yaml)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
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

fn decode(args: &DecodeArgs) -> Result<()> {
    let decoded = token::decode_unverified(&read_token(&args.token)?)
        .context("failed to decode the token")?;
    let report = token_report(false, &decoded, &decoded.claims);
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("note: the signature was NOT verified; use `fedid token verify` to check it");
    Ok(())
}

async fn verify(args: &VerifyArgs) -> Result<()> {
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
