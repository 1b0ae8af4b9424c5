//! The controllers' wiring: which watches feed which reconciler, and what an issuer change
//! requeues.

use std::sync::Arc;

use fedid_core::{
    conditions::{EventNote, Severity, ready_condition},
    crd::ExchangeSpec,
    crd::pods::POD_IDENTITY_LABEL,
    crd::{FederatedIdentity, IdentityIssuer, identity::RENEW_REQUESTED_AT_ANNOTATION},
    credentials::secret::IDENTITY_LABEL,
    exchange::{CA_BUNDLE_LABEL, CLIENT_CREDENTIALS_LABEL},
    issuer::{key_store::ISSUER_LABEL, status::IssuerChange},
    reason::Reason,
};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    exchange::Exchanger,
    identity::{
        recent_status::RecentStatuses,
        reconcile::{self as identity, IdentityContext},
        secrets::{ExchangeBackoffs, OwnSecrets},
    },
    issuer::{
        reconcile::{self as issuer, IssuerContext},
        registry::IssuerRegistry,
    },
    pod::reconcile::{self as pod_reconcile, PodContext},
    runtime::{
        context::Context,
        metrics::{ConditionLabels, ConditionSample, IdentityLabels, IdentityObservation},
        undecodable::{Guarded, Report, Reporting, UndecodableObjects, admit},
    },
};

/// Runs the issuer and identity controllers until `stop` resolves.
///
/// Identities are reconciled on their own changes (not on status-only writes), on changes of
/// the fedid-labelled Secrets they own, on every issuer change that concerns them (see
/// [`identities_concerned`]), and on label changes of their namespace. Issuers are reconciled on their own changes and on changes of
/// their key-ring Secrets in the operator's namespace.
#[expect(clippy::too_many_arguments)]
pub async fn run_controllers(
    client: Client,
    ctx: Arc<Context>,
    registry: Arc<IssuerRegistry>,
    identities: Store<FederatedIdentity>,
    identity_writer: reflector::store::Writer<FederatedIdentity>,
    issuer_changes: mpsc::Receiver<IssuerChange>,
    pods_enabled: bool,
    token_request_ca: Option<String>,
    stop: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    // Opted-in pods, stripped to what their tokens need. Changes of their Secrets and of
    // their identities requeue them through `pod_triggers`.
    let (pods, pod_writer) = reflector::store::<Pod>();
    let scope = &ctx.settings.watch_scope;
    let pod_events = scope
        .watch::<Pod>(
            &client,
            watcher::Config::default().labels(POD_IDENTITY_LABEL),
        )
        .modify(strip_pod)
        .reflect(pod_writer)
        .touched_objects()
        // Status updates (the kubelet's conditions, IPs) that leave the phase alone are no reason
        // for a pass: under a burst of new pods they would only crowd the queue.
        .predicate_filter(pod_token_inputs, Default::default());
    let (pod_triggers, pod_triggered) = mpsc::channel::<ObjectRef<Pod>>(4096);
    let secret_pod_triggers = pod_triggers.clone();
    let policy_pod_triggers = PodRequeue {
        pods: pods.clone(),
        triggers: pod_triggers.clone(),
    };
    let namespace_pod_triggers = policy_pod_triggers.clone();
    let identity_pod_triggers = pod_triggers;
    let pods_of_identity = pods.clone();
    let (invalid_objects, invalid_reports) = mpsc::channel(256);
    tokio::spawn(report_invalid_objects(ctx.clone(), invalid_reports));
    let undecodable_identities = Arc::new(UndecodableObjects::new(
        identities.clone(),
        Some(Reporting {
            count: ctx.metrics.invalid_objects("FederatedIdentity"),
            events: invalid_objects.clone(),
        }),
    ));
    let identity_events = scope
        .watch::<Guarded<FederatedIdentity>>(&client, watcher::Config::default())
        .filter_map(move |event| std::future::ready(admit(&undecodable_identities, event)))
        .modify(|identity| identity.managed_fields_mut().clear())
        .reflect(identity_writer)
        .touched_objects()
        // Status writes do not change the generation: they must not trigger a pass. A renew
        // request is metadata only, so its annotation counts as well.
        .predicate_filter(
            predicates::generation.combine(renew_request),
            Default::default(),
        )
        .inspect(move |identity| {
            if let Ok(identity) = identity {
                for pod in pods_using(&pods_of_identity, identity) {
                    let _ = identity_pod_triggers.try_send(pod);
                }
            }
        });
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let secret_events = scope
        .watch::<Secret>(&client, watcher::Config::default().labels(IDENTITY_LABEL))
        .modify(|secret| secret.managed_fields_mut().clear())
        .reflect(secret_writer)
        .touched_objects()
        .inspect(move |secret| {
            if let Ok(secret) = secret
                && let Some(pod) = owning_pod(secret)
            {
                let _ = secret_pod_triggers.try_send(pod);
            }
        });
    // Namespaces' metadata only: their labels decide selector policies. A label change
    // requeues the identities in that namespace.
    let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let namespace_changes = scope
        .watch_namespaces(&client)
        .modify(|namespace| namespace.managed_fields_mut().clear())
        .reflect(namespace_writer)
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default())
        .filter_map(
            |namespace| async move { namespace.ok().map(|namespace| namespace.name_any()) },
        );
    // Client credentials for exchanges: only Secrets their owners labelled for fedid. A change
    // requeues the identities of that namespace that reference the Secret.
    let (client_credentials, client_credentials_writer) = reflector::store::<Secret>();
    let client_credential_changes = scope
        .watch::<Secret>(
            &client,
            watcher::Config::default().labels(&format!("{CLIENT_CREDENTIALS_LABEL}=true")),
        )
        .modify(|secret| secret.managed_fields_mut().clear())
        .reflect(client_credentials_writer)
        .touched_objects()
        .filter_map(|secret| async move {
            secret
                .ok()
                .map(|secret| (secret.namespace().unwrap_or_default(), secret.name_any()))
        });
    // CA bundles for exchanges: only ConfigMaps labelled for fedid, the same way.
    let (ca_bundles, ca_bundles_writer) = reflector::store::<ConfigMap>();
    let ca_bundle_changes = scope
        .watch::<ConfigMap>(
            &client,
            watcher::Config::default().labels(&format!("{CA_BUNDLE_LABEL}=true")),
        )
        .modify(|config_map| config_map.managed_fields_mut().clear())
        .reflect(ca_bundles_writer)
        .touched_objects()
        .filter_map(|config_map| async move {
            config_map.ok().map(|config_map| {
                (
                    config_map.namespace().unwrap_or_default(),
                    config_map.name_any(),
                )
            })
        });
    let issuer_registry = registry.clone();
    let mapping_store = identities.clone();
    let ca_bundle_mapping_store = identities.clone();
    let namespace_mapping_store = identities.clone();
    let credentials_mapping_store = identities.clone();
    let pod_identities = identities.clone();
    let identity_ctx = Arc::new(IdentityContext {
        shared: ctx.clone(),
        registry,
        secrets: OwnSecrets::new(secrets),
        namespaces,
        client_credentials,
        ca_bundles,
        exchanger: Arc::new(Exchanger::new(
            ctx.settings.exchange_qps,
            ctx.settings.exchange_burst,
            ctx.settings.exchange_concurrency,
            ctx.metrics.clone(),
        )),
        backoffs: ExchangeBackoffs::default(),
        recent_statuses: RecentStatuses::default(),
    });
    let pod_ctx = Arc::new(PodContext::new(
        identity_ctx.clone(),
        pod_identities,
        token_request_ca,
    ));
    let pod_controller = Controller::for_stream(pod_events, pods)
        .reconcile_on(stream::unfold(pod_triggered, |mut receiver| async move {
            receiver.recv().await.map(|pod| (pod, receiver))
        }))
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency))
        .graceful_shutdown_on(stop.clone())
        .run(
            pod_reconcile::reconcile,
            pod_reconcile::error_policy,
            pod_ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "pod controller");
            }
        });
    // Every issuer change the registry notices also has the issuer controller look at every
    // issuer again: which one serves a shared URL path can change with another's spec.
    let (issuers_changed, issuer_rechecks) = futures::channel::mpsc::unbounded::<()>();
    let identity_controller = Controller::for_stream(identity_events, identities)
        .owns_stream(secret_events)
        .reconcile_on(
            issuer_change_stream(issuer_changes).flat_map(move |change| {
                // A full channel or a stopped issuer controller only loses a recheck.
                let _ = issuers_changed.unbounded_send(());
                let concerned = identities_concerned(&mapping_store, &change);
                // A pod's own token may be revoked by the change as well: look at those pods now.
                policy_pod_triggers.requeue_pods_of(&mapping_store, &concerned);
                stream::iter(concerned)
            }),
        )
        .reconcile_on(namespace_changes.flat_map(move |namespace| {
            let affected = identities_in(&namespace_mapping_store, &namespace);
            namespace_pod_triggers.requeue_pods_of(&namespace_mapping_store, &affected);
            stream::iter(affected)
        }))
        .reconcile_on(
            client_credential_changes.flat_map(move |(namespace, secret)| {
                stream::iter(identities_referencing(
                    &credentials_mapping_store,
                    &namespace,
                    &secret,
                    client_secret_name,
                ))
            }),
        )
        .reconcile_on(ca_bundle_changes.flat_map(move |(namespace, config_map)| {
            stream::iter(identities_referencing(
                &ca_bundle_mapping_store,
                &namespace,
                &config_map,
                ca_bundle_name,
            ))
        }))
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency))
        .graceful_shutdown_on(stop.clone())
        .run(identity::reconcile, identity::error_policy, identity_ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "identity controller");
            }
        });

    let namespace = ctx.settings.namespace.clone();
    let (issuers, issuer_writer) = reflector::store::<IdentityIssuer>();
    let undecodable_issuers = Arc::new(UndecodableObjects::new(
        issuers.clone(),
        Some(Reporting {
            count: ctx.metrics.invalid_objects("IdentityIssuer"),
            events: invalid_objects,
        }),
    ));
    let issuer_events = watcher(
        Api::<Guarded<IdentityIssuer>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(move |event| std::future::ready(admit(&undecodable_issuers, event)))
    .modify(|issuer| issuer.managed_fields_mut().clear())
    .reflect(issuer_writer)
    .touched_objects();
    let issuer_controller = Controller::for_stream(issuer_events, issuers)
        .owns(
            Api::<Secret>::namespaced(client, &namespace),
            watcher::Config::default().labels(ISSUER_LABEL),
        )
        .reconcile_all_on(issuer_rechecks)
        .with_config(controller::Config::default().concurrency(4))
        .graceful_shutdown_on(stop)
        .run(
            issuer::reconcile,
            issuer::error_policy,
            Arc::new(IssuerContext::serving(ctx, issuer_registry)),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "issuer controller");
            }
        });
    // Without the pod server no pod is injected: the pod controller (and its watch of pods,
    // which needs the rights only the chart's pods.enabled grants) runs only with it.
    let pod_controller = async move {
        if pods_enabled {
            pod_controller.await;
        }
    };
    tokio::join!(identity_controller, issuer_controller, pod_controller);
}

/// Publishes a Warning Event `InvalidObject` for each undecodable object reported.
async fn report_invalid_objects(ctx: Arc<Context>, mut reports: mpsc::Receiver<Report>) {
    while let Some((object, problem)) = reports.recv().await {
        let kind = object.kind.clone().unwrap_or_default();
        let note = EventNote {
            severity: Severity::Warning,
            reason: Reason::InvalidObject,
            action: "Decode",
            note: format!(
                "fedid cannot decode this {kind} and ignores it until it is fixed: {problem}"
            ),
        };
        ctx.publish(&object, note).await;
    }
}

/// The hash of an identity's renew request (`fedid.dev/renew-requested-at`), so that a new
/// request passes the watch's predicate although the generation did not change.
pub fn renew_request(identity: &FederatedIdentity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let value = identity.annotations().get(RENEW_REQUESTED_AT_ANNOTATION)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    Some(hasher.finish())
}

/// Keeps of a pod what its token needs (metadata, service account, phase): the cache of
/// opted-in pods stays small however large their specs are.
pub fn strip_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    if let Some(spec) = pod.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            service_account_name: spec.service_account_name.take(),
            ..k8s_openapi::api::core::v1::PodSpec::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            ..k8s_openapi::api::core::v1::PodStatus::default()
        };
    }
}

/// A hash of what a pod's token depends on: its UID, labels, annotations, service account,
/// phase and whether it is being deleted.
pub fn pod_token_inputs(pod: &Pod) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pod.metadata.uid.hash(&mut hasher);
    pod.labels().hash(&mut hasher);
    pod.annotations().hash(&mut hasher);
    fedid_core::pod::service_account(pod).hash(&mut hasher);
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .hash(&mut hasher);
    pod.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// The pod that controls `secret`, if a pod does.
pub fn owning_pod(secret: &Secret) -> Option<ObjectRef<Pod>> {
    let owner = secret.owner_references().iter().find(|owner| {
        owner.controller == Some(true) && owner.kind == "Pod" && owner.api_version == "v1"
    })?;
    Some(ObjectRef::new(&owner.name).within(&secret.namespace()?))
}

/// The cached pods that opted into `identity`.
pub fn pods_using(pods: &Store<Pod>, identity: &FederatedIdentity) -> Vec<ObjectRef<Pod>> {
    let namespace = identity.namespace();
    let name = identity.name_any();
    pods.state()
        .iter()
        .filter(|pod| pod.namespace() == namespace)
        .filter(|pod| fedid_core::pod::identity_name(pod) == Some(name.as_str()))
        .map(|pod| ObjectRef::from_obj(pod.as_ref()))
        .collect()
}

/// Requeues the pods of pod-template identities, when an issuer or namespace change may have
/// taken away (or given back) their right to a token.
#[derive(Clone)]
struct PodRequeue {
    pods: Store<Pod>,
    triggers: mpsc::Sender<ObjectRef<Pod>>,
}

impl PodRequeue {
    /// Requeues the pods of those of `concerned` that are pod templates (`spec.pods`). A full
    /// queue drops a pod, which its next renewal looks at anyway.
    fn requeue_pods_of(
        &self,
        identities: &Store<FederatedIdentity>,
        concerned: &[ObjectRef<FederatedIdentity>],
    ) {
        for reference in concerned {
            let Some(identity) = identities.get(reference) else {
                continue;
            };
            if identity.spec.pods.is_none() {
                continue;
            }
            for pod in pods_using(&self.pods, &identity) {
                let _ = self.triggers.try_send(pod);
            }
        }
    }
}

/// The registry's change notifications as a watch stream.
fn issuer_change_stream(
    changes: mpsc::Receiver<IssuerChange>,
) -> impl futures::Stream<Item = IssuerChange> + Send {
    stream::unfold(changes, |mut receiver| async move {
        receiver.recv().await.map(|change| (change, receiver))
    })
}

/// The identities an issuer change concerns: those naming the issuer, and those naming none
/// when the issuer was or is the default.
pub fn identities_concerned(
    identities: &Store<FederatedIdentity>,
    change: &IssuerChange,
) -> Vec<ObjectRef<FederatedIdentity>> {
    identities
        .state()
        .iter()
        .filter(|identity| change.concerns(identity.spec.issuer_ref.as_deref()))
        .map(|identity| ObjectRef::from_obj(identity.as_ref()))
        .collect()
}

/// The identities in `namespace`, requeued when its labels change.
pub fn identities_in(
    identities: &Store<FederatedIdentity>,
    namespace: &str,
) -> Vec<ObjectRef<FederatedIdentity>> {
    identities
        .state()
        .iter()
        .filter(|identity| identity.namespace().as_deref() == Some(namespace))
        .map(|identity| ObjectRef::from_obj(identity.as_ref()))
        .collect()
}

/// The Secret an exchange takes its client secret from.
pub fn client_secret_name(exchange: &ExchangeSpec) -> Option<&String> {
    exchange
        .client_secret_ref()
        .map(|reference| &reference.name)
}

/// The ConfigMap an exchange takes its CA bundle from.
pub fn ca_bundle_name(exchange: &ExchangeSpec) -> Option<&String> {
    exchange
        .ca_bundle_ref
        .as_ref()
        .map(|reference| &reference.name)
}

/// The identities in `namespace` whose exchange refers, through `reference`, to the object
/// named `name` (the client secret's Secret, the CA bundle's ConfigMap).
pub fn identities_referencing(
    identities: &Store<FederatedIdentity>,
    namespace: &str,
    name: &str,
    reference: impl Fn(&ExchangeSpec) -> Option<&String>,
) -> Vec<ObjectRef<FederatedIdentity>> {
    identities
        .state()
        .iter()
        .filter(|identity| identity.namespace().as_deref() == Some(namespace))
        .filter(|identity| {
            identity
                .spec
                .exchange
                .as_ref()
                .and_then(&reference)
                .is_some_and(|referenced| referenced == name)
        })
        .map(|identity| ObjectRef::from_obj(identity.as_ref()))
        .collect()
}

/// Per-identity samples for the scrape-time gauges.
pub fn observe(identities: &Store<FederatedIdentity>) -> Vec<IdentityObservation> {
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
                credentials_expire_at: status
                    .and_then(|status| status.credentials_expire_at.as_ref())
                    .map(|time| time.0.as_second()),
                renew_at: status
                    .and_then(|status| status.renew_at.as_ref())
                    .map(|time| time.0.as_second()),
                failed_attempts: status.map_or(0, |status| status.failed_attempts),
                conditions: status
                    .map(|status| {
                        status
                            .conditions
                            .iter()
                            .map(|condition| ConditionSample {
                                type_: condition.type_.clone(),
                                status: condition.status.clone(),
                                reason: condition.reason.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher;
    use serde_json::json;

    use super::*;

    fn identity(name: &str, issuer_ref: Option<&str>) -> FederatedIdentity {
        let mut spec = json!({"audiences": ["a"]});
        if let Some(issuer) = issuer_ref {
            spec["issuerRef"] = json!(issuer);
        }
        serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": name, "namespace": "team-a"}, "spec": spec,
        }))
        .expect("identity")
    }

    fn names(refs: Vec<ObjectRef<FederatedIdentity>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_scrape_observes_each_identitys_times_attempts_and_conditions() {
        let (store, mut writer) = reflector::store::<FederatedIdentity>();
        let mut failing = identity("failing", None);
        failing.status = serde_json::from_value(json!({
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Issued", "message": "",
                 "lastTransitionTime": "2027-01-15T12:00:00Z"},
                {"type": "CredentialsFresh", "status": "False", "reason": "ExchangeUnavailable",
                 "message": "", "lastTransitionTime": "2027-01-15T12:20:00Z"},
            ],
            "expiresAt": "2027-01-15T13:00:00Z",
            "renewAt": "2027-01-15T12:40:00Z",
            "credentialsExpireAt": "2027-01-15T12:50:00Z",
            "failedAttempts": 4,
        }))
        .expect("status");
        writer.apply_watcher_event(&watcher::Event::Apply(failing));
        writer.apply_watcher_event(&watcher::Event::Apply(identity("new", None)));
        let mut observed = observe(&store);
        observed.sort_by(|a, b| a.labels.name.cmp(&b.labels.name));
        let [failing, new] = observed.as_slice() else {
            panic!("two identities: {observed:?}");
        };
        let at = |text: &str| text.parse::<jiff::Timestamp>().expect("time").as_second();
        assert_eq!(failing.renew_at, Some(at("2027-01-15T12:40:00Z")));
        assert_eq!(failing.expires_at, Some(at("2027-01-15T13:00:00Z")));
        assert_eq!(
            failing.credentials_expire_at,
            Some(at("2027-01-15T12:50:00Z"))
        );
        assert_eq!(failing.failed_attempts, 4);
        assert_eq!(
            failing.conditions[1],
            ConditionSample {
                type_: "CredentialsFresh".into(),
                status: "False".into(),
                reason: "ExchangeUnavailable".into(),
            }
        );
        assert_eq!(failing.conditions.len(), 2);
        assert_eq!(
            (new.renew_at, new.failed_attempts, new.conditions.len()),
            (None, 0, 0),
            "an identity not reconciled yet has no renewal time and no conditions"
        );
    }

    #[test]
    fn an_issuer_change_requeues_exactly_the_identities_it_concerns() {
        let (store, mut writer) = reflector::store::<FederatedIdentity>();
        for object in [
            identity("names-ci", Some("ci")),
            identity("uses-default", None),
            identity("names-other", Some("other")),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        let change = |default_before, default_after| IssuerChange {
            name: "ci".into(),
            default_before,
            default_after,
        };
        // The default mark removed: those that used it as the default must hear of it.
        assert_eq!(
            names(identities_concerned(&store, &change(true, false))),
            ["names-ci", "uses-default"]
        );
        assert_eq!(
            names(identities_concerned(&store, &change(false, true))),
            ["names-ci", "uses-default"]
        );
        assert_eq!(
            names(identities_concerned(&store, &change(false, false))),
            ["names-ci"]
        );
    }

    #[test]
    fn a_renew_request_passes_the_identity_watch_but_a_status_write_does_not() {
        use futures::StreamExt;
        let mut base = identity("web", None);
        base.metadata.generation = Some(1);
        base.metadata.uid = Some("uid-web".into());
        let mut status_written = base.clone();
        status_written.status = Some(fedid_core::crd::FederatedIdentityStatus {
            issuer: Some("ci".into()),
            ..Default::default()
        });
        let annotate = |object: &FederatedIdentity, value: &str| {
            let mut annotated = object.clone();
            annotated.metadata.annotations = Some(std::collections::BTreeMap::from([(
                RENEW_REQUESTED_AT_ANNOTATION.to_owned(),
                value.to_owned(),
            )]));
            annotated
        };
        let first = annotate(&status_written, "2027-01-15T08:00:00Z");
        let same_again = first.clone();
        let second = annotate(&status_written, "2027-01-15T08:05:00Z");
        let mut spec_changed = second.clone();
        spec_changed.metadata.generation = Some(2);
        let events = vec![
            base,
            status_written,
            first,
            same_again,
            second,
            spec_changed,
        ];
        let passed: Vec<Option<String>> = futures::executor::block_on(
            futures::stream::iter(events.into_iter().map(Ok::<_, watcher::Error>))
                .predicate_filter(
                    predicates::generation.combine(renew_request),
                    Default::default(),
                )
                .map(|identity| {
                    let identity = identity.expect("no error");
                    identity
                        .annotations()
                        .get(RENEW_REQUESTED_AT_ANNOTATION)
                        .cloned()
                })
                .collect(),
        );
        assert_eq!(
            passed,
            [
                None,
                Some("2027-01-15T08:00:00Z".to_owned()),
                Some("2027-01-15T08:05:00Z".to_owned()),
                Some("2027-01-15T08:05:00Z".to_owned()),
            ]
        );
    }

    #[test]
    fn only_what_a_pods_token_depends_on_passes_the_pod_watch() {
        let pod = |phase: &str, ip: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "job", "namespace": "ci", "uid": "u1",
                             "labels": {"fedid.dev/identity": "deploy"}},
                "spec": {"serviceAccountName": "runner", "containers": []},
                "status": {"phase": phase, "podIP": ip}
            }))
            .expect("pod")
        };
        let stripped = |mut pod: Pod| {
            strip_pod(&mut pod);
            pod
        };
        let running = pod_token_inputs(&stripped(pod("Running", "10.0.0.1")));
        assert_eq!(
            running,
            pod_token_inputs(&stripped(pod("Running", "10.0.0.2")))
        );
        assert_ne!(
            running,
            pod_token_inputs(&stripped(pod("Succeeded", "10.0.0.1")))
        );
        let mut relabelled = stripped(pod("Running", "10.0.0.1"));
        relabelled.labels_mut().insert("team".into(), "a".into());
        assert_ne!(running, pod_token_inputs(&relabelled));
        let stripped_pod = stripped(pod("Running", "10.0.0.1"));
        assert!(
            stripped_pod
                .status
                .as_ref()
                .is_some_and(|status| status.pod_ip.is_none())
        );
        assert_eq!(
            stripped_pod
                .spec
                .as_ref()
                .and_then(|spec| spec.service_account_name.as_deref()),
            Some("runner")
        );
    }

    #[test]
    fn a_namespace_label_change_requeues_the_identities_in_it() {
        let (store, mut writer) = reflector::store::<FederatedIdentity>();
        let mut elsewhere = identity("elsewhere", None);
        elsewhere.metadata.namespace = Some("team-b".into());
        for object in [
            identity("one", None),
            identity("two", Some("ci")),
            elsewhere,
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        assert_eq!(names(identities_in(&store, "team-a")), ["one", "two"]);
        assert_eq!(names(identities_in(&store, "team-b")), ["elsewhere"]);
        assert!(identities_in(&store, "team-c").is_empty());
    }

    #[test]
    fn a_labelled_secret_or_configmap_requeues_the_identities_referencing_it() {
        let (store, mut writer) = reflector::store::<FederatedIdentity>();
        let exchanging = |name: &str, namespace: &str, exchange: serde_json::Value| {
            let mut object = identity(name, None);
            object.metadata.namespace = Some(namespace.into());
            object.spec.exchange = Some(serde_json::from_value(exchange).expect("exchange"));
            object
        };
        let oauth2 = |secret: &str| {
            json!({"oauth2": {"tokenURL": "https://a.example/t", "clientAuth": {
                "clientID": "c", "clientSecret": {"secretRef": {"name": secret}}}}})
        };
        let with_ca = |config_map: &str| {
            json!({"vault": {"address": "https://v.example", "role": "r"},
                   "caBundleRef": {"name": config_map}})
        };
        for object in [
            exchanging("uses-dex", "team-a", oauth2("dex")),
            exchanging("uses-dex-elsewhere", "team-b", oauth2("dex")),
            exchanging("uses-other", "team-a", oauth2("other")),
            exchanging("trusts-ca", "team-a", with_ca("dex")),
            identity("plain", None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        // The same name means a Secret to one reference and a ConfigMap to the other.
        assert_eq!(
            names(identities_referencing(
                &store,
                "team-a",
                "dex",
                client_secret_name
            )),
            ["uses-dex"]
        );
        assert_eq!(
            names(identities_referencing(
                &store,
                "team-a",
                "dex",
                ca_bundle_name
            )),
            ["trusts-ca"]
        );
        assert!(identities_referencing(&store, "team-c", "dex", client_secret_name).is_empty());
    }
}
