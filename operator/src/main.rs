//! The `fedid` command: runs the operator and offers helpers for CRDs, tokens and issuers.
//! Every subcommand lives in `cli/`, one file each. Called `kubectl-fedid` (a symlink or
//! copy), the binary is the kubectl plugin: `kubectl fedid status|renew|rotate|token`, the
//! same as `fedid plugin ...`.

mod cli;

use std::{io::IsTerminal, process::ExitCode};

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};
use cli::{
    crds::CrdsArgs,
    issuer::IssuerFilesArgs,
    plugin::PluginCli,
    run::{LogFormat, RunArgs},
    token::TokenCommand,
};
use tracing_subscriber::EnvFilter;

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
    Run(Box<RunArgs>),
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
    /// The kubectl plugin's commands (what `kubectl fedid ...` runs when this binary is on
    /// PATH as `kubectl-fedid`).
    Plugin(PluginCli),
}

#[derive(Debug, Subcommand)]
enum IssuerCommand {
    /// Print an issuer's discovery document and JWKS, for hosting them elsewhere.
    Files(IssuerFilesArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = if cli::plugin::invoked_as_plugin(std::env::args_os().next().as_deref()) {
        execute_plugin(PluginCli::parse()).await
    } else {
        execute(Cli::parse()).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute_plugin(cli: PluginCli) -> Result<()> {
    init_logging(LogFormat::Text, "off")?;
    cli::plugin::run(cli).await
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
        Command::Run(args) => cli::run::run(*args).await,
        Command::Crds(args) => cli::crds::print_crds(&args),
        Command::Token {
            command: TokenCommand::Decode(args),
        } => cli::token::decode(&args),
        Command::Token {
            command: TokenCommand::Verify(args),
        } => cli::token::verify(&args).await,
        Command::Token {
            command: TokenCommand::Request(args),
        } => cli::token::request(&args).await,
        Command::Issuer {
            command: IssuerCommand::Files(args),
        } => cli::issuer::issuer_files(args).await,
        Command::Plugin(args) => cli::plugin::run(args).await,
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
