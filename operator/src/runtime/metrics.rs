//! Prometheus metrics served at `/metrics`.
//!
//! Counters and histograms are updated by the reconcilers as they act. The
//! gauges (identities by condition, per-identity expiry, renewal, conditions and failed
//! attempts, per-issuer keys and rotation) are recomputed at scrape time from the caches, so
//! a deleted identity or issuer can never leave a stale series behind. `fedid_leader` is set
//! by the leader election as this replica gains or loses the Lease.
//!
//! The chart's alerts (`charts/fedid/templates/prometheusrule.yaml`) and dashboard
//! (`charts/fedid/dashboards/fedid.json`) are written against these names.

use std::sync::atomic::AtomicU64;

use fedid_core::reason::Reason;

use super::api_rate::ThrottleMetrics;

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

/// Labels of one condition of one FederatedIdentity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityConditionLabels {
    /// The identity's namespace.
    pub namespace: String,
    /// The identity's name.
    pub name: String,
    /// The condition type: `Ready` or `CredentialsFresh`.
    pub r#type: String,
    /// Condition status: `True`, `False` or `Unknown`.
    pub status: String,
    /// The condition's reason, e.g. `Issued` or `ExchangeRejected`.
    pub reason: String,
}

/// One condition of an identity, as observed at scrape time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSample {
    /// The condition type.
    pub type_: String,
    /// Its status.
    pub status: String,
    /// Its reason.
    pub reason: String,
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

/// Labels naming a kind: of exchange, or of object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `oauth2`, `vault` or `aws`; `FederatedIdentity` or `IdentityIssuer`.
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
    /// When fedid renews the token (and exchanges it again), as Unix seconds. It stays at the
    /// last planned time while renewals fail.
    pub renew_at: Option<i64>,
    /// Consecutive failed attempts since the last success.
    pub failed_attempts: u32,
    /// Every condition of the identity (`Ready`, `CredentialsFresh`).
    pub conditions: Vec<ConditionSample>,
}

/// One snapshot of an issuer as this replica serves it, for the scrape-time gauges.
#[derive(Clone, Debug)]
pub struct IssuerObservation {
    /// The issuer's name.
    pub issuer: String,
    /// Keys this replica publishes in the issuer's JWKS.
    pub published_keys: usize,
    /// Whether this replica serves the issuer's discovery document and JWKS.
    pub jwks_served: bool,
    /// When the key that signs now took over signing, as Unix seconds.
    pub signing_key_activated_at: Option<i64>,
    /// The issuer's `spec.signing.rotationPeriod` in seconds, when its spec is valid.
    pub rotation_period_seconds: Option<i64>,
}

/// Unix seconds as a gauge value; they fit exactly in an f64 for millions of years.
#[allow(clippy::cast_precision_loss)]
fn seconds(value: i64) -> f64 {
    value as f64
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
    /// Tokens replaced only after they had expired (a lapse), per issuer.
    pub token_lapses: Family<IssuerLabels, Counter>,
    /// Key rings found lost (deleted, emptied, corrupted) and replaced, per issuer.
    pub key_rings_lost: Family<IssuerLabels, Counter>,
    /// Exchange requests sent, by kind, endpoint host and outcome.
    pub exchange_requests: Family<ExchangeLabels, Counter>,
    /// Time one exchange request took, by kind.
    pub exchange_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Exchange requests that waited for the per-host request budget.
    pub exchange_budget_waits: Family<HostLabels, Counter>,
    credentials_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    renewal: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    failed_attempts: Family<IdentityLabels, Gauge>,
    identity_conditions: Family<IdentityConditionLabels, Gauge>,
    jwks_served: Family<IssuerLabels, Gauge>,
    signing_key_activated: Family<IssuerLabels, Gauge<f64, AtomicU64>>,
    rotation_period: Family<IssuerLabels, Gauge>,
    leader: Gauge,
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
    /// Kubernetes API requests that waited for `--kube-api-qps`, and how long.
    pub kube_api_throttle: ThrottleMetrics,
    invalid_objects: Family<KindLabels, Gauge>,
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
        let token_lapses = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "token_lapses",
            "Tokens replaced only after they had expired: the Secret held no valid token for a while",
            token_lapses.clone(),
        );
        let key_rings_lost = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "issuer_key_rings_lost",
            "Key rings found deleted, emptied or corrupted and replaced with a new key",
            key_rings_lost.clone(),
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
        let invalid_objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "invalid_objects",
            "Stored objects fedid cannot decode and ignores, by kind (reported by the leader)",
            invalid_objects.clone(),
        );
        let kube_api_throttle = ThrottleMetrics::default();
        registry.register(
            "kube_api_throttled_requests",
            "Kubernetes API requests that waited for the client-side budget (--kube-api-qps)",
            kube_api_throttle.waits.clone(),
        );
        registry.register(
            "kube_api_throttled_seconds",
            "Seconds Kubernetes API requests spent waiting for the client-side budget (--kube-api-qps)",
            kube_api_throttle.waited_seconds.clone(),
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
        let renewal = Family::<IdentityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_renewal_timestamp_seconds",
            "When fedid renews each identity's token and credentials (Unix time); it stays in the past while renewals fail",
            renewal.clone(),
        );
        let failed_attempts = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "identity_failed_attempts",
            "Consecutive failed attempts to issue or exchange each identity's token since its last success",
            failed_attempts.clone(),
        );
        let identity_conditions = Family::<IdentityConditionLabels, Gauge>::default();
        registry.register(
            "identity_condition",
            "Each condition of each identity (Ready, CredentialsFresh) with its status and reason; always 1",
            identity_conditions.clone(),
        );
        let jwks_served = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "issuer_jwks_served",
            "1 when this replica serves the issuer's discovery document and JWKS at its URL, else 0",
            jwks_served.clone(),
        );
        let signing_key_activated = Family::<IssuerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "issuer_signing_key_activated_timestamp_seconds",
            "When each issuer's current signing key took over signing (Unix time)",
            signing_key_activated.clone(),
        );
        let rotation_period = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "issuer_rotation_period_seconds",
            "Each issuer's spec.signing.rotationPeriod: how long a key signs before the next takes over",
            rotation_period.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election) and reconciles, else 0",
            leader.clone(),
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
            kube_api_throttle,
            invalid_objects,
            credentials_expiry,
            renewal,
            failed_attempts,
            identity_conditions,
            jwks_served,
            signing_key_activated,
            rotation_period,
            leader,
            registry,
            identities,
            token_expiry,
            tokens_issued,
            failures,
            reconciles,
            signing_duration,
            published_keys,
            keys_created,
            key_rings_lost,
            token_lapses,
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

    /// Records whether this replica leads (and so reconciles).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Renders the OpenMetrics text, first replacing the scrape-time gauges with `identities`
    /// The gauge of undecodable objects of `kind` (`FederatedIdentity`, `IdentityIssuer`).
    pub fn invalid_objects(&self, kind: &str) -> Gauge {
        self.invalid_objects
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .clone()
    }

    /// and `issuers`.
    pub fn render(
        &self,
        identities: impl IntoIterator<Item = IdentityObservation>,
        issuers: impl IntoIterator<Item = IssuerObservation>,
    ) -> String {
        self.identities.clear();
        self.token_expiry.clear();
        self.credentials_expiry.clear();
        self.renewal.clear();
        self.failed_attempts.clear();
        self.identity_conditions.clear();
        self.published_keys.clear();
        self.jwks_served.clear();
        self.signing_key_activated.clear();
        self.rotation_period.clear();
        for observation in issuers {
            let labels = IssuerLabels {
                issuer: observation.issuer,
            };
            self.published_keys
                .get_or_create(&labels)
                .set(i64::try_from(observation.published_keys).unwrap_or(i64::MAX));
            self.jwks_served
                .get_or_create(&labels)
                .set(i64::from(observation.jwks_served));
            if let Some(activated_at) = observation.signing_key_activated_at {
                self.signing_key_activated
                    .get_or_create(&labels)
                    .set(seconds(activated_at));
            }
            if let Some(period) = observation.rotation_period_seconds {
                self.rotation_period.get_or_create(&labels).set(period);
            }
        }
        for observation in identities {
            let ready = observation.ready.unwrap_or_else(|| ConditionLabels {
                status: "Unknown".to_owned(),
                reason: Reason::Pending.as_str().to_owned(),
            });
            self.identities.get_or_create(&ready).inc();
            let labels = observation.labels;
            if let Some(expires_at) = observation.expires_at {
                self.token_expiry
                    .get_or_create(&labels)
                    .set(seconds(expires_at));
            }
            if let Some(expires_at) = observation.credentials_expire_at {
                self.credentials_expiry
                    .get_or_create(&labels)
                    .set(seconds(expires_at));
            }
            if let Some(renew_at) = observation.renew_at {
                self.renewal.get_or_create(&labels).set(seconds(renew_at));
            }
            self.failed_attempts
                .get_or_create(&labels)
                .set(i64::from(observation.failed_attempts));
            for condition in observation.conditions {
                self.identity_conditions
                    .get_or_create(&IdentityConditionLabels {
                        namespace: labels.namespace.clone(),
                        name: labels.name.clone(),
                        r#type: condition.type_,
                        status: condition.status,
                        reason: condition.reason,
                    })
                    .set(1);
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

    impl IssuerObservation {
        /// An issuer publishing `published_keys` keys, with nothing else known.
        fn with_keys(issuer: &str, published_keys: usize) -> Self {
            Self {
                issuer: issuer.to_owned(),
                published_keys,
                jwks_served: published_keys > 0,
                signing_key_activated_at: None,
                rotation_period_seconds: None,
            }
        }
    }

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
            renew_at: expires_at.map(|at| at - 1_200),
            failed_attempts: 0,
            conditions: vec![ConditionSample {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
            }],
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
            vec![
                IssuerObservation::with_keys("ci", 2),
                IssuerObservation::with_keys("old", 1),
            ],
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
            vec![IssuerObservation::with_keys("ci", 2)],
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
        assert!(
            !text.contains(r#"name="c""#),
            "no per-identity gauge may outlive its identity"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn scrape_reports_renewal_failures_and_conditions_per_identity() {
        let metrics = Metrics::default();
        let mut failing = observation("x", "True", "Issued", Some(1_800_000_000));
        failing.failed_attempts = 3;
        failing.conditions.push(ConditionSample {
            type_: "CredentialsFresh".into(),
            status: "False".into(),
            reason: "ExchangeUnavailable".into(),
        });
        let text = metrics.render(vec![failing], Vec::new());
        assert!(
            text.contains(
                r#"fedid_token_renewal_timestamp_seconds{namespace="ci",name="x"} 1799998800.0"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"fedid_identity_failed_attempts{namespace="ci",name="x"} 3"#));
        assert!(text.contains(
            r#"fedid_identity_condition{namespace="ci",name="x",type="Ready",status="True",reason="Issued"} 1"#
        ));
        assert!(text.contains(
            r#"fedid_identity_condition{namespace="ci",name="x",type="CredentialsFresh",status="False",reason="ExchangeUnavailable"} 1"#
        ));

        let recovered = observation("x", "True", "Issued", Some(1_800_000_000));
        let text = metrics.render(vec![recovered], Vec::new());
        assert!(text.contains(r#"fedid_identity_failed_attempts{namespace="ci",name="x"} 0"#));
        assert!(
            !text.contains("ExchangeUnavailable"),
            "a condition's old reason must leave no series: {text}"
        );
    }

    #[test]
    fn scrape_reports_each_issuers_rotation_and_whether_its_jwks_is_served() {
        let metrics = Metrics::default();
        let text = metrics.render(
            Vec::new(),
            vec![
                IssuerObservation {
                    signing_key_activated_at: Some(1_800_000_000),
                    rotation_period_seconds: Some(2_592_000),
                    ..IssuerObservation::with_keys("ci", 2)
                },
                IssuerObservation::with_keys("broken", 0),
            ],
        );
        for line in [
            r#"fedid_issuer_jwks_served{issuer="ci"} 1"#,
            r#"fedid_issuer_jwks_served{issuer="broken"} 0"#,
            r#"fedid_issuer_signing_key_activated_timestamp_seconds{issuer="ci"} 1800000000.0"#,
            r#"fedid_issuer_rotation_period_seconds{issuer="ci"} 2592000"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains(r#"fedid_issuer_rotation_period_seconds{issuer="broken"}"#),
            "an issuer without a valid spec has no rotation period"
        );
        let text = metrics.render(Vec::new(), Vec::new());
        assert!(
            !text.contains(r#"issuer="ci""#),
            "a deleted issuer leaves no series"
        );
    }

    #[test]
    fn the_leader_gauge_follows_the_lease() {
        let metrics = Metrics::default();
        assert!(
            metrics
                .render(Vec::new(), Vec::new())
                .contains("\nfedid_leader 0\n")
        );
        metrics.set_leader(true);
        assert!(
            metrics
                .render(Vec::new(), Vec::new())
                .contains("\nfedid_leader 1\n")
        );
        metrics.set_leader(false);
        assert!(
            metrics
                .render(Vec::new(), Vec::new())
                .contains("\nfedid_leader 0\n")
        );
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

    #[test]
    fn the_readme_documents_every_metric_and_no_other() {
        // Every name this file registers (families without series are not rendered, so the
        // source is the list), against the README's metrics table (counters end in `_total`).
        let source = include_str!("metrics.rs");
        let registered: std::collections::BTreeSet<String> = source
            .split("registry.register(\n")
            .skip(1)
            .filter_map(|call| call.split('"').nth(1))
            .map(|name| format!("fedid_{name}"))
            .collect();
        let readme = include_str!("../../../README.md");
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `fedid_"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| format!("fedid_{name}"))
            .map(|name| match name.strip_suffix("_total") {
                Some(counter) if registered.contains(counter) => counter.to_owned(),
                _ => name,
            })
            .collect();
        assert!(registered.len() > 20, "{registered:?}");
        assert_eq!(
            registered, documented,
            "the README's metrics table must list exactly the registered metrics"
        );
    }
}
