//! The long-running `fedid run` command and the cluster-backed `fedid issuer files` command.
//!
//! `run` wires the I/O shell together: the registry sync (every replica), the issuer and
//! identity controllers, and the HTTP server, all stopped together on SIGTERM or Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::{
    conditions::ready_condition,
    controller::{
        Context, Settings,
        identity::{self, IdentityContext, IdentityState},
        issuer::{self, DISCOVERY_FILE, JWKS_FILE},
    },
    crd::{FederatedIdentity, IdentityIssuer},
    http::{self, AppState, ServerConfig, TlsFiles},
    issuer::{ISSUER_LABEL, IssuerRegistry, static_files_config_map_name, sync_registry},
    leader::{Elector, LeaseTiming},
    metrics::{ConditionLabels, IdentityLabels, IdentityObservation, Metrics},
    secret_output::IDENTITY_LABEL,
};

/// Namespace the operator runs in when `POD_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "fedid-system";

/// Format of log lines written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `fedid run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Namespace of the operator; issuer key rings are stored in Secrets here.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Address of the server for discovery documents, JWKS, health and metrics.
    #[arg(long, env = "FEDID_HTTP_ADDR", default_value = "0.0.0.0:8443")]
    pub http_addr: SocketAddr,

    /// PEM certificate chain for serving HTTPS; plain HTTP is served without it.
    #[arg(long, env = "FEDID_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for serving HTTPS.
    #[arg(long, env = "FEDID_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Format of log lines; the level is taken from RUST_LOG (default: info).
    #[arg(long, env = "FEDID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most objects of each kind reconciled at the same time.
    #[arg(long, env = "FEDID_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Shortest token lifetime an identity may ask for. Lower it only for tests.
    #[arg(long, env = "FEDID_MIN_TOKEN_LIFETIME", default_value = "10m", value_parser = parse_duration)]
    pub min_token_lifetime: Duration,

    /// Tokens are renewed at least this long before they expire, leaving the kubelet time to
    /// update mounted files. Lower it only for tests.
    #[arg(long, env = "FEDID_RENEW_BEFORE_EXPIRY", default_value = "5m", value_parser = parse_duration)]
    pub renew_before_expiry: Duration,

    /// Elect one leader among the replicas through a Lease; only the leader reconciles, every
    /// replica serves discovery and JWKS.
    #[arg(long, env = "FEDID_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease in the operator namespace.
    #[arg(
        long,
        env = "FEDID_LEADER_ELECTION_LEASE_NAME",
        default_value = "fedid-leader"
    )]
    pub leader_election_lease_name: String,

    /// How long the Lease holds without renewal: the longest a standby waits after the leader
    /// dies without releasing it.
    #[arg(long, env = "FEDID_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
}

fn parse_duration(input: &str) -> Result<Duration, String> {
    input
        .parse::<crate::crd::Duration>()
        .map(crate::crd::Duration::to_std)
        .map_err(|error| error.to_string())
}

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

/// Runs the operator until SIGTERM or Ctrl-C, or until it loses the leader Lease (an error:
/// the process must exit so that it never writes as a stale leader).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // kube and reqwest both use rustls on aws-lc-rs; make it the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("failed to configure the Kubernetes client")?;
    let namespace = args.namespace.clone();
    let registry = Arc::new(IssuerRegistry::default());
    let metrics = Arc::new(Metrics::default());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("fedid-{:08x}", rand::random::<u32>()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        registry.clone(),
        metrics.clone(),
        Settings {
            namespace: namespace.clone(),
            min_token_lifetime: args.min_token_lifetime,
            renew_before_expiry: args.renew_before_expiry,
            concurrency: args.concurrency,
        },
        Some(identity.clone()),
    ));
    info!(%namespace, addr = %args.http_addr, %identity, "starting fedid");

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });

    // Every replica: keep the issuers loaded and serve them.
    let (issuer_changes, issuer_changed) = mpsc::channel(256);
    let sync = tokio::spawn(sync_registry(
        client.clone(),
        namespace.clone(),
        registry.clone(),
        issuer_changes,
    ));
    let (identities, identity_writer) = reflector::store::<FederatedIdentity>();
    let observed = identities.clone();
    let tls = match (args.tls_cert_file, args.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let server = tokio::spawn(http::serve(
        ServerConfig {
            addr: args.http_addr,
            tls,
        },
        AppState {
            registry,
            metrics,
            observe_identities: Arc::new(move || observe(&observed)),
        },
        stopped(stop.clone()),
    ));

    // Only the leader reconciles.
    let (leading_tx, leading) = watch::channel(!args.leader_election);
    let elector = Arc::new(Elector::new(
        client.clone(),
        &namespace,
        &args.leader_election_lease_name,
        identity,
        LeaseTiming::from_duration(args.leader_election_lease_duration),
    ));
    let election = if args.leader_election {
        let (elector, stop) = (elector.clone(), stop.clone());
        tokio::spawn(async move { elector.run(leading_tx, stop).await })
    } else {
        tokio::spawn(async move {
            // Keep the sender alive: without election this replica leads until it stops.
            let _leading = leading_tx;
            Ok(())
        })
    };
    let mut campaign = leading.clone();
    let became_leader = tokio::select! {
        led = campaign.wait_for(|leading| *leading) => led.is_ok(),
        () = stopped(stop.clone()) => false,
    };
    if became_leader {
        let writers_stop = {
            let (stop, mut leading) = (stop.clone(), leading.clone());
            async move {
                tokio::select! {
                    () = stopped(stop) => {},
                    _ = leading.wait_for(|leading| !*leading) => {},
                }
            }
            .shared()
        };
        run_controllers(
            client,
            ctx,
            identities,
            identity_writer,
            issuer_changed,
            args.concurrency,
            writers_stop,
        )
        .await;
    }

    let stopping = *stop.borrow();
    if stopping {
        // Writers are done: hand the Lease over now rather than after it expires.
        elector.release().await;
        let _ = election.await;
        sync.abort();
        let served = server.await.context("the HTTP server task failed")?;
        info!("fedid stopped");
        return served.context("the HTTP server failed");
    }
    sync.abort();
    match election.await.context("the leader election task failed")? {
        Err(lost) => Err(lost).context("stopping: another replica may lead now"),
        Ok(()) => Err(anyhow::anyhow!("the controllers stopped unexpectedly")),
    }
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Runs the issuer and identity controllers until `stop` resolves.
async fn run_controllers(
    client: Client,
    ctx: Arc<Context>,
    identities: Store<FederatedIdentity>,
    identity_writer: reflector::store::Writer<FederatedIdentity>,
    issuer_changed: mpsc::Receiver<IdentityIssuer>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let identity_events = watcher(
        Api::<FederatedIdentity>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|identity| identity.managed_fields_mut().clear())
    .reflect(identity_writer)
    .touched_objects()
    // Status writes do not change the generation: they must not trigger a pass.
    .predicate_filter(predicates::generation, Default::default());
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let secret_events = watcher(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(IDENTITY_LABEL),
    )
    .default_backoff()
    .modify(|secret| secret.managed_fields_mut().clear())
    .reflect(secret_writer)
    .touched_objects();
    let issuer_events = stream::unfold(issuer_changed, |mut receiver| async move {
        receiver.recv().await.map(|issuer| (Ok(issuer), receiver))
    });
    let mapping_store = identities.clone();
    let identity_ctx = Arc::new(IdentityContext {
        shared: ctx.clone(),
        state: IdentityState {
            secrets,
            recent_writes: Default::default(),
        },
    });
    let identity_controller = Controller::for_stream(identity_events, identities)
        .owns_stream(secret_events)
        .watches_stream(issuer_events, move |issuer: IdentityIssuer| {
            identities_using(&mapping_store, &issuer)
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.clone())
        .run(identity::reconcile, identity::error_policy, identity_ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "identity controller");
            }
        });

    let namespace = ctx.settings.namespace.clone();
    let issuer_controller = Controller::new(
        Api::<IdentityIssuer>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Secret>::namespaced(client, &namespace),
        watcher::Config::default().labels(ISSUER_LABEL),
    )
    .with_config(controller::Config::default().concurrency(4))
    .graceful_shutdown_on(stop)
    .run(issuer::reconcile, issuer::error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            debug!(%error, "issuer controller");
        }
    });
    tokio::join!(identity_controller, issuer_controller);
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutting down");
}

/// The identities that use `issuer`: those naming it, and those naming none when it is the
/// default.
fn identities_using(
    identities: &Store<FederatedIdentity>,
    issuer: &IdentityIssuer,
) -> Vec<ObjectRef<FederatedIdentity>> {
    let name = issuer.name_any();
    let is_default = issuer.is_default();
    identities
        .state()
        .iter()
        .filter(|identity| match &identity.spec.issuer_ref {
            Some(reference) => *reference == name,
            None => is_default,
        })
        .map(|identity| ObjectRef::from_obj(identity.as_ref()))
        .collect()
}

/// Per-identity samples for the scrape-time gauges.
fn observe(identities: &Store<FederatedIdentity>) -> Vec<IdentityObservation> {
    identities
        .state()
        .iter()
        .map(|identity| {
            let status = identity.status.as_ref();
            IdentityObservation {
                labels: IdentityLabels {
                    namespace: identity.namespace().unwrap_or_default(),
                    name: identity.name_any(),
                },
                ready: status
                    .and_then(|status| ready_condition(&status.conditions))
                    .map(|condition| ConditionLabels {
                        status: condition.status.clone(),
                        reason: condition.reason.clone(),
                    }),
                expires_at: status
                    .and_then(|status| status.expires_at.as_ref())
                    .map(|time| time.0.as_second()),
            }
        })
        .collect()
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
