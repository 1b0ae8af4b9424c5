//! The reconcilers: the I/O shell around the pure core.
//!
//! Each reconcile reads (registry, caches, apiserver), validates and builds through the pure
//! modules, applies with one stable field manager, and reports status and Events. Writes
//! happen only when something changed.

pub mod identity;
pub mod issuer;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::warn;

use crate::{issuer::IssuerRegistry, metrics::Metrics};

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
}

/// The source of the current time; tests inject a fixed one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Issuers and their keys, as loaded by the registry sync.
    pub registry: Arc<IssuerRegistry>,
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
        registry: Arc<IssuerRegistry>,
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
            registry,
            metrics,
            settings,
            clock: Arc::new(Timestamp::now),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Publishes an Event; a failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            warn!(%error, reason, "failed to publish an Event");
        }
    }
}

/// Server-side-applies `status` to the status subresource of object `name`, as fedid's field
/// manager: only the fields fedid owns are sent.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
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
    .map(|_| ())
}

/// How long until `at`, at least one second (a requeue in the past would spin).
pub fn until(at: Timestamp, now: Timestamp) -> Duration {
    let seconds = at.as_second().saturating_sub(now.as_second()).max(1);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

/// The message of an error and all its sources, for conditions and Events.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_never_returns_less_than_a_second() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            until(Timestamp::from_second(1_090).unwrap(), now),
            Duration::from_secs(90)
        );
        assert_eq!(
            until(Timestamp::from_second(900).unwrap(), now),
            Duration::from_secs(1)
        );
        assert_eq!(until(now, now), Duration::from_secs(1));
    }

    #[test]
    fn error_chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to write Secret ci/x")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            error_chain(&error),
            "failed to write Secret ci/x: connection refused"
        );
    }
}
