//! What every reconcile shares: the client, metrics, the Event recorder,
//! the operator's settings and the clock; and the two writes every pipeline's report phase
//! makes (status by server-side apply, Events).

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::Store;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::warn;

use fedid_core::conditions::{EventNote, Severity};

use crate::runtime::metrics::Metrics;

/// The field manager of every write fedid makes.
pub const FIELD_MANAGER: &str = "fedid.dev/operator";

/// Tunables of the reconcilers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's namespace: key rings and static files live here, nowhere else.
    pub namespace: String,
    /// Shortest token lifetime an identity may ask for.
    pub min_token_lifetime: Duration,
    /// A token is renewed at least this long before it expires.
    pub renew_before_expiry: Duration,
    /// Identities reconciled at once.
    pub concurrency: u16,
    /// Exchange requests per second allowed to each endpoint host.
    pub exchange_qps: f64,
    /// Exchange requests each endpoint host may receive at once before the rate applies.
    pub exchange_burst: u32,
    /// Exchange requests in flight at once to each endpoint host.
    pub exchange_concurrency: u32,
    /// Whether `spec.output.rollout` restarts workloads (`--rollout`).
    pub rollout: bool,
    /// The namespaces whose identities, Secrets and pods are watched (`--watch-namespaces`).
    pub watch_scope: crate::runtime::scope::WatchScope,
}

/// The source of the current time; tests inject a fixed one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Tunables.
    pub settings: Settings,
    /// The current time.
    pub clock: Clock,
}

impl Context {
    /// Builds a context with the wall clock.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "fedid".to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            clock: Arc::new(Timestamp::now),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Publishes the Event the core decided on; a failure to publish is logged, never fatal.
    pub async fn publish(&self, object: &ObjectReference, event: EventNote) {
        let reason = event.reason.as_str();
        let event = Event {
            type_: match event.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: reason.to_owned(),
            note: Some(event.note),
            action: event.action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            warn!(%error, reason, "failed to publish an Event");
        }
    }
}

/// Server-side-applies `status` to the status subresource of object `name`, as fedid's field
/// manager: only the fields fedid owns are sent. Returns the object as written.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Whether a reflector store has received its initial list. Never waits: a reconciler holding
/// its slot while waiting would keep the controller from polling the very watch that fills it.
pub fn is_listed<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}
