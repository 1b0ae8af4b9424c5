//! `kubectl fedid` (the `fedid` binary installed as `kubectl-fedid`, or `fedid plugin`): status
//! of an identity or issuer, renewing a token, rotating an issuer's keys, printing a token.
//! This file reads and writes through the kube client; what is shown is built in `view`, and
//! when a renewal is answered is the core's decision.

mod view;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fedid_core::{
    crd::{
        FederatedIdentity, IdentityIssuer, identity::RENEW_REQUESTED_AT_ANNOTATION,
        issuer::ROTATE_KEYS_ANNOTATION,
    },
    credentials::secret::{Ownership, TOKEN_KEY, UNSIGNED_TOKEN_ANNOTATION, ownership},
    identity::schedule::renew_request_answered,
    time::whole_seconds,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use view::{BareName, IdentityReport, IssuerReport, Target, TokenSource, TokenView, Verification};

use super::{run::parse_duration, token};

/// How often a waiting command looks at the object again.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `kubectl fedid`: what the binary parses when it is called `kubectl-fedid`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-fedid",
    bin_name = "kubectl fedid",
    version,
    about = "Inspect and operate fedid's FederatedIdentities and IdentityIssuers."
)]
pub struct PluginCli {
    /// How to reach the cluster.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The command.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The kubeconfig, context and namespace, as kubectl takes them.
#[derive(Clone, Debug, Args)]
pub struct ConnectionArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Namespace of the FederatedIdentity (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// The plugin's commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show a FederatedIdentity (fid/NAME) or an IdentityIssuer (issuer/NAME): conditions,
    /// times, the token's claims and whether it verifies, recent Events.
    Status(StatusArgs),
    /// Ask for a new token for a FederatedIdentity now (and exchange it again), and wait for it.
    Renew(RenewArgs),
    /// Ask an IdentityIssuer for a new signing key, and wait until it is published.
    Rotate(RotateArgs),
    /// Print the token in a FederatedIdentity's Secret, or with --decode its header and claims.
    Token(TokenArgs),
}

/// Output formats of `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable sections and tables.
    #[default]
    Table,
    /// One JSON object.
    Json,
    /// One YAML document.
    Yaml,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// fid/NAME (federatedidentity/NAME) or issuer/NAME (identityissuer/NAME); a bare NAME is
    /// a FederatedIdentity.
    pub target: String,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// PEM bundle of the only CAs trusted when fetching the issuer's JWKS (for an issuer URL
    /// served with a private CA).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Whether and how long to wait for the controller's answer.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait for the controller to answer (`--wait=false` only asks).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub wait: bool,

    /// How long to wait, for example `60s` or `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options of `renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// fid/NAME, or a bare NAME.
    pub target: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Options of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// issuer/NAME, or a bare NAME.
    pub target: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Options of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The FederatedIdentity: NAME or fid/NAME.
    pub target: String,

    /// Print the token's header and claims instead of the token (not verified).
    #[arg(long)]
    pub decode: bool,
}

/// Whether this process was started as the kubectl plugin (its file name is `kubectl-fedid`).
pub fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_stem)
        .is_some_and(|stem| stem == "kubectl-fedid")
}

/// Runs one plugin command.
pub async fn run(cli: PluginCli) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (client, namespace) = connect(&cli.connection).await?;
    let session = Session { client, namespace };
    match cli.command {
        PluginCommand::Status(args) => session.status(&args).await,
        PluginCommand::Renew(args) => session.renew(&args).await,
        PluginCommand::Rotate(args) => session.rotate(&args).await,
        PluginCommand::Token(args) => session.token(&args).await,
    }
}

/// A client for the kubeconfig's cluster, and the namespace to use.
async fn connect(args: &ConnectionArgs) -> Result<(Client, String)> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .map_err(|error| anyhow!("cannot read the kubeconfig {}: {error}", path.display()))?,
        None => Kubeconfig::read().map_err(|error| {
            anyhow!("no usable kubeconfig (set KUBECONFIG or pass --kubeconfig): {error}")
        })?,
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|error| anyhow!("the kubeconfig cannot be used: {error}"))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("failed to set up the Kubernetes client")?;
    Ok((client, namespace))
}

/// One clear line for a failed API call about `what` (`FederatedIdentity team/web`).
fn api_error(error: kube::Error, what: &str) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) if status.code == 404 => anyhow!("{what} not found"),
        kube::Error::Api(status) if status.code == 403 => {
            anyhow!("forbidden: {}", one_line(&status.message))
        }
        kube::Error::Api(status) if status.code == 401 => {
            anyhow!("unauthorized: the kubeconfig's credentials were refused")
        }
        kube::Error::Api(status) => anyhow!("{what}: {}", one_line(&status.message)),
        _ => anyhow!(
            "cannot reach the cluster for {what}: {}",
            one_line(&fedid_core::reason::message_chain(&error))
        ),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Session {
    client: Client,
    namespace: String,
}

impl Session {
    fn identities(&self) -> Api<FederatedIdentity> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn issuers(&self) -> Api<IdentityIssuer> {
        Api::all(self.client.clone())
    }

    fn identity_label(&self, name: &str) -> String {
        format!("FederatedIdentity {}/{name}", self.namespace)
    }

    async fn identity(&self, name: &str) -> Result<FederatedIdentity> {
        self.identities()
            .get(name)
            .await
            .map_err(|error| api_error(error, &self.identity_label(name)))
    }

    async fn issuer(&self, name: &str) -> Result<IdentityIssuer> {
        self.issuers()
            .get(name)
            .await
            .map_err(|error| api_error(error, &format!("IdentityIssuer {name}")))
    }

    /// The Events whose involved object has `uid`, in `namespace` (all namespaces for `None`).
    async fn events(
        &self,
        namespace: Option<&str>,
        uid: Option<String>,
    ) -> Result<Vec<Event>, String> {
        let uid = uid.ok_or_else(|| "the object has no UID".to_owned())?;
        let api: Api<Event> = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        api.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
            .await
            .map(|list| list.items)
            .map_err(|error| format!("{:#}", api_error(error, "Events")))
    }

    async fn status(&self, args: &StatusArgs) -> Result<()> {
        let (text, value) = match Target::parse(&args.target, BareName::Identity)
            .map_err(|message| anyhow!(message))?
        {
            Target::Identity(name) => {
                let report = self.identity_report(&name, args).await?;
                (
                    report.render(Timestamp::now()),
                    serde_report(&report, args.output)?,
                )
            }
            Target::Issuer(name) => {
                let issuer = self.issuer(&name).await?;
                let events = self.events(None, issuer.uid()).await;
                let report = IssuerReport::new(&issuer, events.as_deref().map_err(Clone::clone));
                (
                    report.render(Timestamp::now()),
                    serde_report(&report, args.output)?,
                )
            }
        };
        match value {
            Some(value) => println!("{value}"),
            None => print!("{text}"),
        }
        Ok(())
    }

    async fn identity_report(&self, name: &str, args: &StatusArgs) -> Result<IdentityReport> {
        let identity = self.identity(name).await?;
        let (token, signed) = self.stored_token(&identity).await;
        let verification = match signed {
            Some(jwt) => self.verify(&identity, &jwt, args).await,
            None => Verification::not_checked(
                token.unavailable.clone().unwrap_or_else(|| {
                    "the Secret holds no signed token (output.includeSubjectToken: false)"
                        .to_owned()
                }),
                None,
            ),
        };
        let events = self.events(Some(&self.namespace), identity.uid()).await;
        Ok(IdentityReport::new(
            &identity,
            token,
            verification,
            events.as_deref().map_err(Clone::clone),
        ))
    }

    /// The claims of the identity's stored token, and the signed token when the Secret holds
    /// one (kept only to verify it, never shown).
    async fn stored_token(&self, identity: &FederatedIdentity) -> (TokenView, Option<String>) {
        if identity.spec.pods.is_some() {
            return (
                TokenView::unavailable(
                    "a pod template has no token of its own: each pod's is in the pod's Secret",
                ),
                None,
            );
        }
        let Some(secret_name) = identity
            .status
            .as_ref()
            .and_then(|status| status.secret_name.clone())
        else {
            return (
                TokenView::unavailable("no Secret yet (status.secretName is empty)"),
                None,
            );
        };
        let secret = match Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(&secret_name)
            .await
        {
            Ok(secret) => secret,
            Err(error) => {
                let what = format!("Secret {}/{secret_name}", self.namespace);
                return (
                    TokenView::unavailable(format!("{:#}", api_error(error, &what))),
                    None,
                );
            }
        };
        let signed = secret
            .data
            .as_ref()
            .and_then(|data| data.get(TOKEN_KEY))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_owned());
        if let Some(jwt) = signed {
            return (TokenView::decode(&jwt, TokenSource::Secret), Some(jwt));
        }
        match secret.annotations().get(UNSIGNED_TOKEN_ANNOTATION) {
            Some(unsigned) => (
                TokenView::decode(unsigned, TokenSource::UnsignedToken),
                None,
            ),
            None => (
                TokenView::unavailable(format!("Secret {secret_name} holds no token")),
                None,
            ),
        }
    }

    /// Verifies `jwt` against the JWKS its issuer serves now.
    async fn verify(
        &self,
        identity: &FederatedIdentity,
        jwt: &str,
        args: &StatusArgs,
    ) -> Verification {
        let Some(issuer_name) = identity
            .status
            .as_ref()
            .and_then(|status| status.issuer.clone())
            .or_else(|| identity.spec.issuer_ref.clone())
        else {
            return Verification::not_checked("the identity names no issuer yet", None);
        };
        let issuer = match self.issuer(&issuer_name).await {
            Ok(issuer) => issuer,
            Err(error) => return Verification::not_checked(format!("{error:#}"), None),
        };
        let Some(jwks_url) = issuer
            .status
            .as_ref()
            .and_then(|status| status.jwks_url.clone())
        else {
            return Verification::not_checked(
                format!("IdentityIssuer {issuer_name} reports no jwksURL"),
                None,
            );
        };
        let Some(audience) = identity.spec.audiences.first() else {
            return Verification::not_checked("the identity has no audience", Some(&jwks_url));
        };
        match token::load_jwks(&jwks_url, args.ca_file.as_deref()).await {
            Ok(jwks) => Verification::check(
                jwt,
                &jwks,
                &jwks_url,
                audience,
                &issuer.spec.issuer_url,
                Timestamp::now(),
            ),
            Err(error) => {
                Verification::not_checked(one_line(&format!("{error:#}")), Some(&jwks_url))
            }
        }
    }

    async fn renew(&self, args: &RenewArgs) -> Result<()> {
        let name = match Target::parse(&args.target, BareName::Identity)
            .map_err(|message| anyhow!(message))?
        {
            Target::Identity(name) => name,
            Target::Issuer(name) => bail!(
                "renew works on FederatedIdentities (fid/NAME); to rotate issuer/{name}'s keys \
                 use `kubectl fedid rotate issuer/{name}`"
            ),
        };
        let identity = self.identity(&name).await?;
        if identity.spec.pods.is_some() {
            bail!(
                "fid/{name} is a pod template (spec.pods): it has no token of its own; each \
                 pod's token is renewed with the pod"
            );
        }
        // The next whole second: later than any token issued so far (`iat` has whole
        // seconds), so a second renewal right after the first still gets a new token.
        let requested = fedid_core::time::plus(
            whole_seconds(Timestamp::now()),
            jiff::SignedDuration::from_secs(1),
        );
        let patch = json!({"metadata": {"annotations": {RENEW_REQUESTED_AT_ANNOTATION: requested.to_string()}}});
        self.identities()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|error| api_error(error, &self.identity_label(&name)))?;
        println!("fid/{name}: renewal requested at {requested}");
        if !args.wait.wait {
            return Ok(());
        }
        let renewed = wait_until(args.wait.timeout, || async {
            let identity = self.identity(&name).await?;
            let issued = identity
                .status
                .as_ref()
                .and_then(|status| status.issued_at.as_ref())
                .map(|time| time.0);
            Ok(match issued {
                Some(issued) if renew_request_answered(requested, issued) => Ok(identity),
                _ => Err(identity),
            })
        })
        .await?;
        match renewed {
            Ok(identity) => {
                let status = identity.status.unwrap_or_default();
                let field =
                    |time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
                        time.map_or_else(|| "?".to_owned(), |time| time.0.to_string())
                    };
                println!(
                    "fid/{name}: new token issued at {} (key {}), expires at {}{}",
                    field(status.issued_at.as_ref()),
                    status.key_id.as_deref().unwrap_or("?"),
                    field(status.expires_at.as_ref()),
                    status
                        .credentials_expire_at
                        .as_ref()
                        .map(|time| format!("; credentials expire at {}", time.0))
                        .unwrap_or_default(),
                );
                Ok(())
            }
            Err(last) => bail!(
                "fid/{name} was not renewed within {}: {}",
                view::human(jiff::SignedDuration::try_from(args.wait.timeout).unwrap_or_default()),
                why_not_renewed(&last)
            ),
        }
    }

    async fn rotate(&self, args: &RotateArgs) -> Result<()> {
        let name = match Target::parse(&args.target, BareName::Issuer)
            .map_err(|message| anyhow!(message))?
        {
            Target::Issuer(name) => name,
            Target::Identity(name) => bail!(
                "rotate works on IdentityIssuers (issuer/NAME); to renew fid/{name}'s token use \
                 `kubectl fedid renew fid/{name}`"
            ),
        };
        let issuer = self.issuer(&name).await?;
        let (before, previous) = issuer
            .status
            .as_ref()
            .map(|status| {
                (
                    status.published_key_ids.clone(),
                    status.active_key_id.clone(),
                )
            })
            .unwrap_or_default();
        // Any new value asks for one rotation; the time (to the nanosecond) is always new.
        let request = Timestamp::now().to_string();
        let patch = json!({"metadata": {"annotations": {ROTATE_KEYS_ANNOTATION: request}}});
        self.issuers()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|error| api_error(error, &format!("IdentityIssuer {name}")))?;
        println!("issuer/{name}: key rotation requested ({ROTATE_KEYS_ANNOTATION}={request})");
        if !args.wait.wait {
            return Ok(());
        }
        let found = wait_until(args.wait.timeout, || async {
            let issuer = self.issuer(&name).await?;
            let status = issuer.status.clone().unwrap_or_default();
            Ok(
                match status
                    .published_key_ids
                    .iter()
                    .find(|kid| !before.contains(kid))
                {
                    Some(kid) => Ok((kid.clone(), status)),
                    None => Err(status),
                },
            )
        })
        .await?;
        match found {
            Ok((kid, status)) => {
                let signs = if status.active_key_id.as_deref() == Some(kid.as_str()) {
                    "it signs now".to_owned()
                } else {
                    status.next_rotation_time.as_ref().map_or_else(
                        || "it signs after the issuer's prepublishPeriod".to_owned(),
                        |time| format!("it signs from {}", time.0),
                    )
                };
                println!(
                    "issuer/{name}: new key {kid} published; {signs}; tokens signed by {} keep \
                     verifying",
                    previous.as_deref().map_or_else(
                        || "the previous key".to_owned(),
                        |active| format!("key {active}"),
                    )
                );
                Ok(())
            }
            Err(status) => bail!(
                "issuer/{name} published no new key within {}: a key already published but not \
                 yet signing ({}) must take over first, or the operator is not running (Ready: {})",
                view::human(jiff::SignedDuration::try_from(args.wait.timeout).unwrap_or_default()),
                view::pending_keys(&status.published_key_ids, status.active_key_id.as_deref())
                    .join(", "),
                ready_summary(&status.conditions),
            ),
        }
    }

    async fn token(&self, args: &TokenArgs) -> Result<()> {
        let name = match Target::parse(&args.target, BareName::Identity)
            .map_err(|message| anyhow!(message))?
        {
            Target::Identity(name) => name,
            Target::Issuer(name) => {
                bail!("token works on FederatedIdentities (fid/NAME or NAME), not issuer/{name}")
            }
        };
        let identity = self.identity(&name).await?;
        if identity.spec.pods.is_some() {
            bail!(
                "fid/{name} is a pod template (spec.pods): it has no token of its own; each \
                 pod's token is in the Secret its fedid.dev/secret-name annotation names"
            );
        }
        let Some(secret_name) = identity
            .status
            .as_ref()
            .and_then(|status| status.secret_name.clone())
        else {
            bail!(
                "fid/{name} has no Secret yet (status.secretName is empty; Ready: {})",
                ready_summary(&identity.status.unwrap_or_default().conditions)
            );
        };
        let what = format!("Secret {}/{secret_name}", self.namespace);
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(&secret_name)
            .await
            .map_err(|error| api_error(error, &what))?;
        let uid = identity.uid().unwrap_or_default();
        if ownership(Some(&secret), &uid) != Ownership::Ours {
            bail!("{what} is not fedid's Secret for fid/{name}: refusing to print it");
        }
        let jwt = secret
            .data
            .as_ref()
            .and_then(|data| data.get(TOKEN_KEY))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_owned());
        let Some(jwt) = jwt else {
            if identity.spec.includes_subject_token() {
                bail!("{what} holds no token yet");
            }
            bail!(
                "{what} holds no token: fid/{name} has output.includeSubjectToken: false, so \
                 only the exchanged credentials are kept"
            );
        };
        if args.decode {
            token::print_decoded(&jwt)
        } else {
            println!("{jwt}");
            Ok(())
        }
    }
}

/// The JSON or YAML of `report`, or `None` for the table.
fn serde_report(report: &impl serde::Serialize, output: Output) -> Result<Option<String>> {
    Ok(match output {
        Output::Table => None,
        Output::Json => Some(serde_json::to_string_pretty(report)?),
        Output::Yaml => Some(
            serde_saphyr::to_string(report)
                .context("failed to render YAML")?
                .trim_end()
                .to_owned(),
        ),
    })
}

/// `Ready`'s status and reason, and its message.
fn ready_summary(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    fedid_core::conditions::ready_condition(conditions).map_or_else(
        || "not reconciled yet".to_owned(),
        |ready| format!("{} ({}): {}", ready.status, ready.reason, ready.message),
    )
}

/// Why `identity` still has a token from before the request.
fn why_not_renewed(identity: &FederatedIdentity) -> String {
    let status = identity.status.clone().unwrap_or_default();
    let mut why = format!("Ready is {}", ready_summary(&status.conditions));
    if let Some(next) = status
        .last_exchange
        .as_ref()
        .and_then(|last| last.next_attempt_at.as_ref())
    {
        why.push_str(&format!("; the next exchange may go at {}", next.0));
    }
    why
}

/// Calls `poll` until it returns `Ok(Ok(_))` or `timeout` passes (then the last `Ok(Err(_))`);
/// an error of `poll` ends the wait.
async fn wait_until<T, E, F, Fut>(timeout: Duration, mut poll: F) -> Result<Result<T, E>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, E>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = poll().await?;
        if last.is_ok() || tokio::time::Instant::now() >= deadline {
            return Ok(last);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name() {
        for argv0 in [
            "kubectl-fedid",
            "/usr/local/bin/kubectl-fedid",
            "kubectl-fedid.exe",
        ] {
            assert!(invoked_as_plugin(Some(argv0.as_ref())), "{argv0}");
        }
        for argv0 in ["fedid", "/fedid", "kubectl", "kubectl-fedid-old"] {
            assert!(!invoked_as_plugin(Some(argv0.as_ref())), "{argv0}");
        }
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn the_command_line_parses_as_documented() {
        PluginCli::command().debug_assert();
        let cli = PluginCli::try_parse_from([
            "kubectl-fedid",
            "status",
            "fid/web",
            "-n",
            "team",
            "-o",
            "json",
            "--ca-file",
            "ca.pem",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
        ])
        .expect("parses");
        assert_eq!(cli.connection.namespace.as_deref(), Some("team"));
        assert_eq!(cli.connection.context.as_deref(), Some("prod"));
        assert!(matches!(
            cli.command,
            PluginCommand::Status(StatusArgs {
                output: Output::Json,
                ..
            })
        ));
        let renew = |args: &[&str]| {
            let cli =
                PluginCli::try_parse_from(["kubectl-fedid", "renew", "fid/web"].iter().chain(args))
                    .expect("parses");
            match cli.command {
                PluginCommand::Renew(args) => (args.wait.wait, args.wait.timeout),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(renew(&[]), (true, Duration::from_secs(60)));
        assert_eq!(renew(&["--wait=false"]), (false, Duration::from_secs(60)));
        assert_eq!(
            renew(&["--wait", "--timeout", "2m"]),
            (true, Duration::from_secs(120))
        );
        assert!(
            PluginCli::try_parse_from(["kubectl-fedid", "status", "fid/web", "-o", "wide"])
                .is_err()
        );
    }
}
