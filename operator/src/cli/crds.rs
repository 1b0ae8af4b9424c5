//! `fedid crds`: the CustomResourceDefinitions, rendered from the Rust types.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fedid_core::crd::{crd_manifests, multi_document_yaml};

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Prints the CRDs, or writes one file per CRD under `--out-dir`.
pub fn print_crds(args: &CrdsArgs) -> Result<()> {
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
