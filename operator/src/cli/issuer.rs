//! `fedid issuer files`: an issuer's discovery document and JWKS, as mirrored by the operator,
//! for hosting them on a static site.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use fedid_core::issuer::key_store::{DISCOVERY_FILE, JWKS_FILE, static_files_config_map_name};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use super::run::DEFAULT_NAMESPACE;

/// Options of `fedid issuer files`.
#[derive(Clone, Debug, Args)]
pub struct IssuerFilesArgs {
    /// Name of the IdentityIssuer.
    pub name: String,

    /// Namespace of the operator, where the issuer's files are mirrored.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Write `.well-known/openid-configuration` and `.well-known/jwks.json` under this
    /// directory (which maps to the issuer URL) instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Prints (or writes under `--out-dir`) an issuer's discovery document and JWKS, as mirrored
/// by the operator into a ConfigMap in its namespace, for hosting them on a static site.
pub async fn issuer_files(args: IssuerFilesArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("failed to configure the Kubernetes client")?;
    let name = static_files_config_map_name(&args.name);
    let config_map = Api::<ConfigMap>::namespaced(client, &args.namespace)
        .get_opt(&name)
        .await
        .with_context(|| format!("failed to read ConfigMap {}/{name}", args.namespace))?
        .with_context(|| {
            format!(
                "ConfigMap {}/{name} does not exist: is IdentityIssuer {} Ready, and is the \
                 operator running in namespace {}?",
                args.namespace, args.name, args.namespace
            )
        })?;
    let data = config_map.data.unwrap_or_default();
    let file = |key: &str| {
        data.get(key)
            .cloned()
            .with_context(|| format!("ConfigMap {name} has no {key}"))
    };
    let (discovery, jwks) = (file(DISCOVERY_FILE)?, file(JWKS_FILE)?);
    match args.out_dir {
        Some(dir) => {
            let well_known = dir.join(".well-known");
            std::fs::create_dir_all(&well_known)
                .with_context(|| format!("failed to create {}", well_known.display()))?;
            for (file_name, body) in [("openid-configuration", &discovery), ("jwks.json", &jwks)] {
                let path = well_known.join(file_name);
                std::fs::write(&path, body)
                    .with_context(|| format!("failed to write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let printed = serde_json::json!({
                DISCOVERY_FILE: serde_json::from_str::<serde_json::Value>(&discovery)?,
                JWKS_FILE: serde_json::from_str::<serde_json::Value>(&jwks)?,
            });
            println!("{}", serde_json::to_string_pretty(&printed)?);
        }
    }
    Ok(())
}
