//! Prometheus metrics served at `/metrics`.
//!
//! Counters and histograms are updated by the reconcilers as they act. The
//! gauges (identities by condition, token expiry, published keys per issuer) are
//! recomputed at scrape time from the caches, so a deleted identity or issuer can
//! never leave a stale series behind.

use std::sync::atomic::AtomicU64;

use fedid_core::reason::Reason;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of the per-identity-condition gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// Condition status: `True`, `False` or `Unknown`.
    pub status: String,
    /// The condition's reason, e.g. `Issued` or `SecretConflict`.
    pub reason: String,
}

/// Labels naming one FederatedIdentity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The identity's namespace.
    pub namespace: String,
    /// The identity's name.
    pub name: String,
}

/// Labels naming one IdentityIssuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    /// The issuer's name.
    pub issuer: String,
}

/// Labels of a failure counter: which controller and the error's stable reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `identity` or `issuer`.
    pub controller: String,
    /// The stable reason of the failure (the same string as the condition reason).
    pub reason: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `identity` or `issuer`.
    pub controller: String,
}

/// Labels of an exchange request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// `oauth2`, `vault` or `aws`.
    pub kind: String,
    /// The endpoint's host and port.
    pub host: String,
    /// `Exchanged`, or the failure's reason (`ExchangeRejected`, ...).
    pub outcome: String,
}

/// Labels of the pod server's counters: what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// For the webhook `mutated`, `denied` or `error`; for token requests `issued` or the OAuth
    /// error code of the refusal (`invalid_target`, `access_denied`, …).
    pub outcome: String,
}

/// Labels naming an exchange kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `oauth2`, `vault` or `aws`.
    pub kind: String,
}

/// Labels naming an endpoint host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    /// The endpoint's host and port.
    pub host: String,
}

/// Labels of the workload restart counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// `restarted`, or `failed`.
    pub outcome: String,
}

fn exchange_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// One snapshot of an identity, as the scrape-time gauges need it.
#[derive(Clone, Debug)]
pub struct IdentityObservation {
    /// The identity's namespace and name.
    pub labels: IdentityLabels,
    /// The Ready condition's status and reason, if it has one.
    pub ready: Option<ConditionLabels>,
    /// When the current token expires, as Unix seconds.
    pub expires_at: Option<i64>,
    /// When the exchanged credentials expire, as Unix seconds.
    pub credentials_expire_at: Option<i64>,
}

/// Every metric fedid exports.
pub struct Metrics {
    registry: Registry,
    identities: Family<ConditionLabels, Gauge>,
    token_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    /// Tokens minted and written, by issuer.
    pub tokens_issued: Family<IssuerLabels, Counter>,
    /// Failed reconcile attempts, by controller and reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile passes, by controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Time spent signing one token, in seconds.
    pub signing_duration: Histogram,
    published_keys: Family<IssuerLabels, Gauge>,
    /// Signing keys created, by issuer (bootstrap, scheduled and forced rotations).
    pub keys_created: Family<IssuerLabels, Counter>,
    /// Exchange requests sent, by kind, endpoint host and outcome.
    pub exchange_requests: Family<ExchangeLabels, Counter>,
    /// Time one exchange request took, by kind.
    pub exchange_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Exchange requests that waited for the per-host request budget.
    pub exchange_budget_waits: Family<HostLabels, Counter>,
    credentials_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    /// Per-pod tokens minted and written to the pod's Secret, by issuer.
    pub pod_tokens_issued: Family<IssuerLabels, Counter>,
    /// Admission reviews answered by the pod webhook, by outcome.
    pub webhook_reviews: Family<OutcomeLabels, Counter>,
    /// Time the webhook took to answer one review, in seconds.
    pub webhook_duration: Histogram,
    /// Token requests answered at `POST /v1/token`, by outcome.
    pub token_requests: Family<OutcomeLabels, Counter>,
    /// Workload restarts for `spec.output.rollout`, by namespace, kind and outcome.
    pub rollout_restarts: Family<RolloutLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fedid");
        let identities = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "identities",
            "FederatedIdentities by the status and reason of their Ready condition",
            identities.clone(),
        );
        let token_expiry = Family::<IdentityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_expiration_timestamp_seconds",
            "When the token currently in each identity's Secret expires (Unix time)",
            token_expiry.clone(),
        );
        let tokens_issued = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "tokens_issued",
            "Tokens minted and written to their Secret",
            tokens_issued.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconcile attempts by controller and reason",
            failures.clone(),
        );
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by controller",
            reconciles.clone(),
        );
        let signing_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "signing_duration_seconds",
            "Time spent signing one token",
            signing_duration.clone(),
        );
        let published_keys = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "issuer_published_keys",
            "Keys published in each issuer's JWKS",
            published_keys.clone(),
        );
        let keys_created = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "issuer_keys_created",
            "Signing keys created per issuer",
            keys_created.clone(),
        );
        let exchange_requests = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "exchange_requests",
            "Exchange requests sent to token services, by kind, endpoint host and outcome",
            exchange_requests.clone(),
        );
        let exchange_duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                exchange_histogram,
            );
        registry.register(
            "exchange_duration_seconds",
            "Time one exchange request took, by kind",
            exchange_duration.clone(),
        );
        let exchange_budget_waits = Family::<HostLabels, Counter>::default();
        registry.register(
            "exchange_budget_waits",
            "Exchange requests that waited for the per-host request budget (--exchange-qps, --exchange-concurrency)",
            exchange_budget_waits.clone(),
        );
        let credentials_expiry = Family::<IdentityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "credentials_expiration_timestamp_seconds",
            "When the exchanged credentials in each identity's Secret expire (Unix time)",
            credentials_expiry.clone(),
        );
        let pod_tokens_issued = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "pod_tokens_issued",
            "Per-pod tokens minted and written to the pod's Secret",
            pod_tokens_issued.clone(),
        );
        let webhook_reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_reviews",
            "Pod admission reviews answered, by outcome (mutated, denied, error)",
            webhook_reviews.clone(),
        );
        let webhook_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "webhook_duration_seconds",
            "Time the pod webhook took to answer one admission review",
            webhook_duration.clone(),
        );
        let token_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Requests to POST /v1/token, by outcome (issued, or the OAuth error code)",
            token_requests.clone(),
        );
        let rollout_restarts = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "rollout_restarts",
            "Workloads restarted (or that failed to restart) for new credentials, by namespace, kind and outcome",
            rollout_restarts.clone(),
        );
        Self {
            rollout_restarts,
            pod_tokens_issued,
            webhook_reviews,
            webhook_duration,
            token_requests,
            exchange_requests,
            exchange_duration,
            exchange_budget_waits,
            credentials_expiry,
            registry,
            identities,
            token_expiry,
            tokens_issued,
            failures,
            reconciles,
            signing_duration,
            published_keys,
            keys_created,
        }
    }
}

impl Metrics {
    /// Counts one reconcile pass of `controller`.
    pub fn count_reconcile(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Counts one failed reconcile of `controller` with the error's stable `reason`.
    pub fn count_failure(&self, controller: &str, reason: Reason) {
        self.failures
            .get_or_create(&FailureLabels {
                controller: controller.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Renders the OpenMetrics text, first replacing the gauges with `identities` and with
    /// `published_keys`, the number of keys each issuer publishes.
    pub fn render(
        &self,
        identities: impl IntoIterator<Item = IdentityObservation>,
        published_keys: impl IntoIterator<Item = (String, usize)>,
    ) -> String {
        self.identities.clear();
        self.token_expiry.clear();
        self.credentials_expiry.clear();
        self.published_keys.clear();
        for (issuer, keys) in published_keys {
            self.published_keys
                .get_or_create(&IssuerLabels { issuer })
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
        for observation in identities {
            let ready = observation.ready.unwrap_or_else(|| ConditionLabels {
                status: "Unknown".to_owned(),
                reason: Reason::Pending.as_str().to_owned(),
            });
            self.identities.get_or_create(&ready).inc();
            if let Some(expires_at) = observation.expires_at {
                // Unix seconds fit exactly in an f64 for the next few million years.
                #[allow(clippy::cast_precision_loss)]
                self.token_expiry
                    .get_or_create(&observation.labels)
                    .set(expires_at as f64);
            }
            if let Some(expires_at) = observation.credentials_expire_at {
                #[allow(clippy::cast_precision_loss)]
                self.credentials_expiry
                    .get_or_create(&observation.labels)
                    .set(expires_at as f64);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(
        name: &str,
        status: &str,
        reason: &str,
        expires_at: Option<i64>,
    ) -> IdentityObservation {
        IdentityObservation {
            labels: IdentityLabels {
                namespace: "ci".into(),
                name: name.into(),
            },
            ready: Some(ConditionLabels {
                status: status.into(),
                reason: reason.into(),
            }),
            expires_at,
            credentials_expire_at: expires_at.map(|at| at - 60),
        }
    }

    #[test]
    fn scrape_counts_identities_by_condition_and_drops_deleted_ones() {
        let metrics = Metrics::default();
        let text = metrics.render(
            vec![
                observation("a", "True", "Issued", Some(1_800_000_000)),
                observation("b", "True", "Issued", Some(1_800_000_100)),
                observation("c", "False", "SecretConflict", None),
            ],
            vec![("ci".to_owned(), 2), ("old".to_owned(), 1)],
        );
        assert!(
            text.contains(r#"fedid_issuer_published_keys{issuer="ci"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fedid_identities{status="True",reason="Issued"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"fedid_identities{status="False",reason="SecretConflict"} 1"#));
        assert!(text.contains(
            r#"fedid_token_expiration_timestamp_seconds{namespace="ci",name="a"} 1800000000.0"#
        ));
        assert!(text.contains(
            r#"fedid_credentials_expiration_timestamp_seconds{namespace="ci",name="a"} 1799999940.0"#
        ));

        let text = metrics.render(
            vec![observation("a", "True", "Issued", Some(1_800_000_000))],
            vec![("ci".to_owned(), 2)],
        );
        assert!(
            !text.contains(r#"issuer="old""#),
            "a deleted issuer must leave no series"
        );
        assert!(text.contains(r#"fedid_identities{status="True",reason="Issued"} 1"#));
        assert!(
            !text.contains("SecretConflict"),
            "a deleted identity must leave no series"
        );
        assert!(!text.contains(r#"name="b""#));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn failures_are_counted_by_controller_and_reason() {
        let metrics = Metrics::default();
        metrics.count_failure("identity", Reason::ApiError);
        metrics.count_failure("identity", Reason::ApiError);
        let text = metrics.render(Vec::new(), Vec::new());
        assert!(
            text.contains(
                r#"fedid_reconcile_failures_total{controller="identity",reason="ApiError"} 2"#
            ),
            "{text}"
        );
    }
}
