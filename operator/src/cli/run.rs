//! `fedid run`: the composition root. It wires the I/O shell together: the registry sync
//! (every replica), the HTTP server (every replica), leader election, and the issuer and
//! identity controllers (the leader only), all stopped together on SIGTERM or Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use clap::{Args, ValueEnum};
use fedid::{
    controllers::strip_pod,
    pod::{
        server::{self as pod_server, PodServerState, RequestBudget},
        tls,
    },
};
use fedid::{
    controllers::{observe, run_controllers},
    issuer::registry::{IssuerRegistry, sync_registry},
    runtime::{
        api_rate::ApiRateLimitLayer,
        context::{Context, Settings},
        leader::{Elector, LeaseTiming},
        metrics::Metrics,
        scope::WatchScope,
        undecodable::{Guarded, UndecodableObjects, admit},
    },
    serve::http::{self, AppState, ServerConfig, TlsFiles},
};
use fedid_core::{
    crd::{FederatedIdentity, pods::POD_IDENTITY_LABEL},
    pod::mutate::InjectSettings,
};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::{mpsc, watch};
use tracing::info;

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

    /// Namespaces whose identities, token Secrets and pods fedid watches and writes,
    /// comma-separated; every namespace when not given. With a list, fedid needs rights only in
    /// those namespaces and its own: one watch per namespace and kind, no cluster-wide watch.
    #[arg(long, env = "FEDID_WATCH_NAMESPACES", value_delimiter = ',', value_parser = parse_namespace_name)]
    pub watch_namespaces: Vec<String>,

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

    /// Requests per second fedid may send to the Kubernetes API, all controllers together (the
    /// leader Lease apart); 0 (the default) sets no client-side limit and leaves protection to
    /// the apiserver's API Priority and Fairness. A watch counts once, when it starts.
    #[arg(long, env = "FEDID_KUBE_API_QPS", default_value_t = 0.0, value_parser = parse_optional_rate)]
    pub kube_api_qps: f64,

    /// Requests fedid may send to the Kubernetes API at once before `--kube-api-qps` applies.
    #[arg(long, env = "FEDID_KUBE_API_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_burst: u32,

    /// Exchange requests per second that each token-service host may receive from fedid, shared
    /// by all identities; first issues go before refreshes when it is spent.
    #[arg(long, env = "FEDID_EXCHANGE_QPS", default_value_t = 20.0, value_parser = parse_rate)]
    pub exchange_qps: f64,

    /// Exchange requests each token-service host may receive at once before `--exchange-qps`
    /// applies.
    #[arg(long, env = "FEDID_EXCHANGE_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub exchange_burst: u32,

    /// Exchange requests in flight at once to each token-service host, shared by all
    /// identities. With `--concurrency` above it, Secret and status writes overlap the
    /// requests instead of waiting for them.
    #[arg(long, env = "FEDID_EXCHANGE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub exchange_concurrency: u32,

    /// Act on `spec.output.rollout`: restart the Deployments, StatefulSets and DaemonSets an
    /// identity lists when its Secret's contents change. Needs `patch` on those kinds (the
    /// chart's `rollout.enabled` grants it); without it such identities report
    /// `RolloutDisabled`.
    #[arg(long, env = "FEDID_ROLLOUT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub rollout: bool,

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

    /// Address of the pod server (HTTPS, every replica): the mutating webhook `POST /mutate`
    /// and the token endpoint `POST /v1/token`. Not served when omitted.
    #[arg(long, env = "FEDID_POD_SERVER_ADDR")]
    pub pod_server_addr: Option<SocketAddr>,

    /// PEM certificate of the pod server, kept current by another tool (cert-manager); fedid
    /// reloads it every minute. Without it fedid generates a CA and certificate into
    /// `--pod-tls-secret-name`.
    #[arg(long, env = "FEDID_POD_TLS_CERT_FILE", requires_all = ["pod_tls_key_file", "pod_tls_ca_file"])]
    pub pod_tls_cert_file: Option<PathBuf>,

    /// PEM private key of `--pod-tls-cert-file`.
    #[arg(long, env = "FEDID_POD_TLS_KEY_FILE", requires = "pod_tls_cert_file")]
    pub pod_tls_key_file: Option<PathBuf>,

    /// PEM CA of `--pod-tls-cert-file`, written into pod Secrets for the token endpoint's
    /// clients.
    #[arg(long, env = "FEDID_POD_TLS_CA_FILE", requires = "pod_tls_cert_file")]
    pub pod_tls_ca_file: Option<PathBuf>,

    /// Secret in the operator namespace holding the generated CA and certificate (created by
    /// the first replica that needs it; delete it to generate new ones).
    #[arg(
        long,
        env = "FEDID_POD_TLS_SECRET_NAME",
        default_value = "fedid-pod-server-tls"
    )]
    pub pod_tls_secret_name: String,

    /// DNS names and IP addresses of the generated certificate, comma-separated (default
    /// `fedid-pods.<namespace>.svc`).
    #[arg(long, env = "FEDID_POD_TLS_HOSTS", value_delimiter = ',')]
    pub pod_tls_hosts: Vec<String>,

    /// MutatingWebhookConfiguration whose webhooks get the generated CA as `caBundle`.
    #[arg(long, env = "FEDID_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,

    /// URL pods reach the token endpoint at, injected as `FEDID_TOKEN_URL` (default
    /// `https://<first --pod-tls-hosts>/v1/token`).
    #[arg(long, env = "FEDID_POD_TOKEN_URL")]
    pub pod_token_url: Option<String>,

    /// Audience of the projected service-account token pods send to the token endpoint.
    #[arg(
        long,
        env = "FEDID_TOKEN_REQUEST_AUDIENCE",
        default_value = "fedid.dev/token-request"
    )]
    pub token_request_audience: String,

    /// Token requests per second each pod may make.
    #[arg(long, env = "FEDID_TOKEN_REQUEST_QPS", default_value_t = 1.0, value_parser = parse_rate)]
    pub token_request_qps: f64,

    /// Token requests each pod may make at once before `--token-request-qps` applies.
    #[arg(long, env = "FEDID_TOKEN_REQUEST_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_request_burst: u32,
}

/// The Kubernetes clients from the environment (in-cluster or kubeconfig): the one every
/// controller shares, under the `--kube-api-qps` budget when one is set, and one of its own
/// for the leader Lease, so that a queue of throttled writes never delays a renewal past the
/// Lease's deadline.
async fn kube_clients(args: &RunArgs, metrics: &Metrics) -> anyhow::Result<(Client, Client)> {
    let config = kube::Config::infer()
        .await
        .context("failed to configure the Kubernetes client")?;
    let lease_client =
        Client::try_from(config.clone()).context("failed to configure the Kubernetes client")?;
    let builder = kube::client::ClientBuilder::try_from(config)
        .context("failed to configure the Kubernetes client")?;
    let client = if args.kube_api_qps > 0.0 {
        let layer = ApiRateLimitLayer::new(
            args.kube_api_qps,
            args.kube_api_burst,
            metrics.kube_api_throttle.clone(),
        );
        builder.with_layer(&layer).build()
    } else {
        builder.build()
    };
    Ok((client, lease_client))
}

/// Keeps `fedid_leader` equal to whether this replica leads, until the election ends.
async fn report_leadership(mut leading: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        metrics.set_leader(*leading.borrow_and_update());
        if leading.changed().await.is_err() {
            return;
        }
    }
}

fn parse_rate(input: &str) -> Result<f64, String> {
    match input.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{input:?} is not a positive number of requests per second"
        )),
    }
}

fn parse_optional_rate(input: &str) -> Result<f64, String> {
    match input.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{input:?} is not a number of requests per second (0 for no limit)"
        )),
    }
}

/// A namespace name (an RFC 1123 label): what `--watch-namespaces` lists.
fn parse_namespace_name(input: &str) -> Result<String, String> {
    let valid = !input.is_empty()
        && input.len() <= 63
        && input
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !input.starts_with('-')
        && !input.ends_with('-');
    if valid {
        Ok(input.to_owned())
    } else {
        Err(format!(
            "{input:?} is not a namespace name (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ))
    }
}

pub(crate) fn parse_duration(input: &str) -> Result<Duration, String> {
    input
        .parse::<fedid_core::crd::Duration>()
        .map(fedid_core::crd::Duration::to_std)
        .map_err(|error| error.to_string())
}

/// Runs the operator until SIGTERM or Ctrl-C, or until it loses the leader Lease (an error:
/// the process must exit so that it never writes as a stale leader).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // kube and reqwest both use rustls on aws-lc-rs; make it the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let (client, lease_client) = kube_clients(&args, &metrics).await?;
    let namespace = args.namespace.clone();
    let registry = Arc::new(IssuerRegistry::default());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("fedid-{:08x}", rand::random::<u32>()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        Settings {
            namespace: namespace.clone(),
            min_token_lifetime: args.min_token_lifetime,
            renew_before_expiry: args.renew_before_expiry,
            concurrency: args.concurrency,
            exchange_qps: args.exchange_qps,
            exchange_burst: args.exchange_burst,
            exchange_concurrency: args.exchange_concurrency,
            rollout: args.rollout,
            watch_scope: WatchScope::from_names(&args.watch_namespaces),
        },
        Some(identity.clone()),
    ));
    info!(%namespace, addr = %args.http_addr, %identity, watching = %ctx.settings.watch_scope.describe(), "starting fedid");

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });

    // Every replica: keep the issuers loaded and serve them.
    let (issuer_changes, issuer_changed) = mpsc::channel(256);
    let served_registry = registry.clone();
    let sync = tokio::spawn(sync_registry(
        client.clone(),
        namespace.clone(),
        registry.clone(),
        issuer_changes,
    ));
    let (identities, identity_writer) = reflector::store::<FederatedIdentity>();
    let token_request_ca = match args.pod_server_addr {
        Some(addr) => Some(
            start_pod_server(
                &args,
                addr,
                &client,
                &namespace,
                registry.clone(),
                metrics.clone(),
                stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
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
            metrics: metrics.clone(),
            observe_identities: Arc::new(move || observe(&observed)),
        },
        stopped(stop.clone()),
    ));

    // Only the leader reconciles.
    let (leading_tx, leading) = watch::channel(!args.leader_election);
    tokio::spawn(report_leadership(leading.clone(), metrics));
    let elector = Arc::new(Elector::new(
        lease_client,
        &namespace,
        &args.leader_election_lease_name,
        identity,
        LeaseTiming::from_duration(args.leader_election_lease_duration),
    ));
    let election = if args.leader_election {
        let (elector, stop) = (elector.clone(), stop.clone());
        tokio::spawn(async move { elector.run(leading_tx, stop).await })
    } else {
        // Without election this replica leads until it stops: the sender must live as long,
        // or the writers would see leadership end at once.
        let stop = stop.clone();
        tokio::spawn(async move {
            let _leading = leading_tx;
            stopped(stop).await;
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
            served_registry,
            identities,
            identity_writer,
            issuer_changed,
            token_request_ca.is_some(),
            token_request_ca,
            writers_stop,
        )
        .await;
    }

    let stopping = *stop.borrow();
    if stopping {
        // Writers are done: hand the Lease over now rather than after it expires.
        if args.leader_election {
            elector.release().await;
        }
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

/// Starts the pod server (webhook and token endpoint) with its own caches of opted-in pods and
/// FederatedIdentities; returns the CA pods trust for the token endpoint.
async fn start_pod_server(
    args: &RunArgs,
    addr: SocketAddr,
    client: &Client,
    namespace: &str,
    registry: Arc<IssuerRegistry>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let hosts = if args.pod_tls_hosts.is_empty() {
        vec![format!("fedid-pods.{namespace}.svc")]
    } else {
        args.pod_tls_hosts.clone()
    };
    let (tls, ca) = match (
        &args.pod_tls_cert_file,
        &args.pod_tls_key_file,
        &args.pod_tls_ca_file,
    ) {
        (Some(cert), Some(key), Some(ca)) => {
            let tls = RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!("failed to load {} and {}", cert.display(), key.display())
                })?;
            tokio::spawn(reload_pod_certificate(
                tls.clone(),
                cert.clone(),
                key.clone(),
            ));
            let ca = tokio::fs::read_to_string(ca)
                .await
                .with_context(|| format!("failed to read {}", ca.display()))?;
            (tls, ca)
        }
        _ => {
            let generated =
                tls::load_or_create(client, namespace, &args.pod_tls_secret_name, &hosts)
                    .await
                    .context("failed to prepare the pod server's certificate")?;
            let tls = RustlsConfig::from_pem(
                generated.cert_pem.clone().into_bytes(),
                generated.key_pem.clone().into_bytes(),
            )
            .await
            .context("failed to load the generated certificate")?;
            if let Some(configuration) = &args.webhook_configuration {
                tokio::spawn(keep_ca_bundle(
                    client.clone(),
                    configuration.clone(),
                    generated.ca_pem.clone(),
                ));
            }
            (tls, generated.ca_pem)
        }
    };
    let (identities, identity_writer) = reflector::store::<FederatedIdentity>();
    // Undecodable identities stay out; the leader's identity controller reports them.
    let undecodable = UndecodableObjects::new(identities.clone(), None);
    let scope = WatchScope::from_names(&args.watch_namespaces);
    let identity_cache = scope
        .watch::<Guarded<FederatedIdentity>>(client, watcher::Config::default())
        .filter_map(move |event| std::future::ready(admit(&undecodable, event)))
        .modify(|identity| identity.managed_fields_mut().clear())
        .reflect(identity_writer)
        .for_each(|_| async {});
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_cache = scope
        .watch::<Pod>(
            client,
            watcher::Config::default().labels(POD_IDENTITY_LABEL),
        )
        .modify(strip_pod)
        .reflect(pod_writer)
        .for_each(|_| async {});
    let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let namespace_cache = scope
        .watch_namespaces(client)
        .modify(|namespace| namespace.managed_fields_mut().clear())
        .reflect(namespace_writer)
        .for_each(|_| async {});
    tokio::spawn(identity_cache);
    tokio::spawn(pod_cache);
    tokio::spawn(namespace_cache);
    let token_url = args
        .pod_token_url
        .clone()
        .unwrap_or_else(|| format!("https://{}/v1/token", hosts[0]));
    let state = Arc::new(
        PodServerState::new(
            client.clone(),
            registry,
            identities,
            pods,
            namespaces,
            metrics,
            InjectSettings {
                token_url: Some(token_url),
                token_request_audience: args.token_request_audience.clone(),
            },
            args.min_token_lifetime,
            RequestBudget {
                qps: args.token_request_qps,
                burst: args.token_request_burst,
            },
        )
        .serving(scope),
    );
    // Bound now, so that a port in use stops the process instead of leaving a replica that
    // looks ready while the webhook refuses every opted-in pod.
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("failed to listen on {addr} for the pod server"))?;
    listener
        .set_nonblocking(true)
        .context("failed to configure the pod server's listener")?;
    tokio::spawn(async move {
        if let Err(error) = pod_server::serve(listener, tls, state, stopped(stop)).await {
            tracing::error!(%error, %addr, "the pod server failed");
        }
    });
    Ok(ca)
}

/// Reloads a certificate another tool renews.
async fn reload_pod_certificate(tls: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(error) = tls.reload_from_pem_file(&cert, &key).await {
            tracing::warn!(%error, cert = %cert.display(), "keeping the pod server's certificate: reload failed");
        }
    }
}

/// Keeps the generated CA in the webhook configuration (a `helm upgrade` may reset it).
async fn keep_ca_bundle(client: Client, configuration: String, ca: String) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticker.tick().await;
        if let Err(error) = tls::ensure_ca_bundle(&client, &configuration, &ca).await {
            tracing::warn!(error = %fedid_core::reason::message_chain(&error), "retrying in a minute");
        }
    }
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn watch_namespaces_takes_a_comma_separated_list_of_namespace_names() {
        let parsed = Run::try_parse_from(["fedid", "--watch-namespaces", "team-b,team-a,team-b"])
            .expect("valid names");
        assert_eq!(
            WatchScope::from_names(&parsed.args.watch_namespaces),
            WatchScope::Namespaces(vec!["team-a".into(), "team-b".into()])
        );
        let every = Run::try_parse_from(["fedid"]).expect("no flag");
        assert_eq!(
            WatchScope::from_names(&every.args.watch_namespaces),
            WatchScope::Cluster
        );
        for bad in ["Team-A", "-a", "a-", "a_b", "", &"a".repeat(64)] {
            let flag = format!("--watch-namespaces={bad}");
            let error = Run::try_parse_from(["fedid", flag.as_str()])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                error.to_string().contains("is not a namespace name"),
                "{bad:?}: {error}"
            );
        }
    }
}
