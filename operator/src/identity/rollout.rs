//! The rollout phase's I/O: the core decides whether the workloads of `spec.output.rollout`
//! must restart for the Secret's current contents; this merge-patches their pod template
//! annotation, which makes their controllers roll the pods.

use fedid_core::{
    crd::{FederatedIdentity, output::RolloutTarget},
    identity::rollout::{RolloutDecision, RolloutOutcome, decide_rollout, restart_patch},
};
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use tracing::{info, warn};

use crate::runtime::{
    context::{Context, FIELD_MANAGER},
    metrics::RolloutLabels,
};

/// Runs the rollout phase for `identity`, whose Secret now holds contents of `digest`.
pub(crate) async fn roll_out(
    ctx: &Context,
    identity: &FederatedIdentity,
    digest: &str,
    now: Timestamp,
) -> RolloutOutcome {
    let spec = identity
        .spec
        .output
        .as_ref()
        .and_then(|output| output.rollout.as_ref());
    let previous = identity
        .status
        .as_ref()
        .and_then(|status| status.rollout.as_ref());
    match decide_rollout(spec, ctx.settings.rollout, previous, digest, now) {
        RolloutDecision::NotConfigured => RolloutOutcome::NotConfigured,
        RolloutDecision::Disabled => RolloutOutcome::Disabled,
        RolloutDecision::Record => RolloutOutcome::Recorded {
            digest: digest.to_owned(),
        },
        RolloutDecision::UpToDate => RolloutOutcome::UpToDate,
        RolloutDecision::Wait { until } => RolloutOutcome::Waiting { until },
        RolloutDecision::Restart => {
            let Some(spec) = spec else {
                return RolloutOutcome::NotConfigured;
            };
            let namespace = identity.namespace().unwrap_or_default();
            let mut failures = Vec::new();
            for target in &spec.targets {
                let result = restart(ctx, &namespace, target, digest).await;
                let outcome = if result.is_ok() {
                    "restarted"
                } else {
                    "failed"
                };
                ctx.metrics
                    .rollout_restarts
                    .get_or_create(&RolloutLabels {
                        namespace: namespace.clone(),
                        kind: target.kind.as_str().to_owned(),
                        outcome: outcome.to_owned(),
                    })
                    .inc();
                match result {
                    Ok(()) => info!(
                        kind = target.kind.as_str(), workload = %target.name,
                        "restarted a workload for new credentials"
                    ),
                    Err(error) => {
                        warn!(
                            kind = target.kind.as_str(), workload = %target.name, %error,
                            "could not restart a workload"
                        );
                        failures.push((target.clone(), error));
                    }
                }
            }
            if failures.is_empty() {
                RolloutOutcome::Restarted {
                    digest: digest.to_owned(),
                    targets: spec.targets.clone(),
                }
            } else {
                RolloutOutcome::Failed {
                    failures,
                    retry_after: spec.min_interval().to_std(),
                }
            }
        }
    }
}

/// Patches the pod template annotation of one workload; the error says why not, in words
/// fit for a condition.
async fn restart(
    ctx: &Context,
    namespace: &str,
    target: &RolloutTarget,
    digest: &str,
) -> Result<(), String> {
    let kind = target.kind.as_str();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", kind),
        &format!("{}s", kind.to_ascii_lowercase()),
    );
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), namespace, &resource);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch(&target.name, &params, &Patch::Merge(restart_patch(digest)))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err("not found".to_owned()),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "forbidden: the operator may not patch {}s (chart value rollout.enabled)",
            kind.to_ascii_lowercase()
        )),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(error) => Err(error.to_string()),
    }
}
