//! The pod server, on its own HTTPS listener (every replica): the mutating admission webhook
//! (`POST /mutate`) and the token endpoint (`POST /v1/token`), answering from caches of
//! opted-in pods and FederatedIdentities.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_server::{Handle, tls_rustls::RustlsConfig};
use fedid_core::{
    crd::{FederatedIdentity, pods::POD_IDENTITY_LABEL},
    credentials::token::Minted,
    identity::{mint::mint, validate::validate},
    pod::{
        allows_service_account, bind_with, identity_name,
        mutate::{InjectSettings, mutate},
        service_account,
        token_request::{BoundPod, TokenRequestError, admit, check_bound_pod, parse_request},
    },
    reason::message_chain,
    time::whole_seconds,
    timing::TokenBucket,
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{PartialObjectMeta, PostParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
    runtime::reflector::{ObjectRef, Store},
};
use rand::Rng;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{
    identity::reconcile::{fetch_from_caches, unusable_issuer},
    issuer::registry::IssuerRegistry,
    runtime::{
        metrics::{Metrics, OutcomeLabels},
        scope::WatchScope,
    },
};

/// How long a successful TokenReview is reused for the same service-account token. The pod's
/// liveness is checked on every request from the pod cache, whatever the review cache says.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);

/// Most entries kept in each per-token or per-pod table before it is swept.
const MAX_TABLE_ENTRIES: usize = 10_000;

/// The extra field of a TokenReview naming the pod a service-account token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The extra field naming the bound pod's UID.
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Per-pod request budget of the token endpoint.
#[derive(Clone, Copy, Debug)]
pub struct RequestBudget {
    /// Requests per second each pod may make.
    pub qps: f64,
    /// Requests a pod may make at once before `qps` applies.
    pub burst: u32,
}

/// Everything the pod server answers from.
pub struct PodServerState {
    /// Kubernetes client (TokenReviews, pods missing from the cache, namespaces).
    pub client: Client,
    /// Issuers and their keys.
    pub registry: Arc<IssuerRegistry>,
    /// FederatedIdentities.
    pub identities: Store<FederatedIdentity>,
    /// Pods labelled `fedid.dev/identity`.
    pub pods: Store<Pod>,
    /// Namespaces' metadata (an issuer may select namespaces by label).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// What the webhook injects besides the identity's own settings.
    pub inject: InjectSettings,
    /// Shortest token lifetime a pod may ask for.
    pub min_token_lifetime: Duration,
    /// Per-pod budget.
    pub budget: RequestBudget,
    /// The namespaces fedid serves: a pod elsewhere is refused, never looked up.
    pub scope: WatchScope,
    reviews: Mutex<HashMap<[u8; 32], (BoundPod, Instant)>>,
    buckets: Mutex<HashMap<String, (TokenBucket, f64)>>,
    started: Instant,
}

impl PodServerState {
    /// A server state with empty review and budget tables.
    #[expect(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        registry: Arc<IssuerRegistry>,
        identities: Store<FederatedIdentity>,
        pods: Store<Pod>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        metrics: Arc<Metrics>,
        inject: InjectSettings,
        min_token_lifetime: Duration,
        budget: RequestBudget,
    ) -> Self {
        Self {
            client,
            registry,
            identities,
            pods,
            namespaces,
            metrics,
            inject,
            min_token_lifetime,
            budget,
            scope: WatchScope::Cluster,
            reviews: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// The same, serving only the namespaces of `scope`.
    pub fn serving(mut self, scope: WatchScope) -> Self {
        self.scope = scope;
        self
    }
}

/// Most a request waits for the caches to be filled after a start, before it is answered as
/// unavailable.
const CACHE_WAIT: Duration = Duration::from_secs(3);

/// Whether the caches of identities and pods are filled, waiting up to [`CACHE_WAIT`] after a
/// start: until then "no such identity" would be a lie.
async fn caches_ready(state: &PodServerState) -> bool {
    tokio::time::timeout(CACHE_WAIT, async {
        state.identities.wait_until_ready().await.is_ok()
            && state.pods.wait_until_ready().await.is_ok()
            && state.namespaces.wait_until_ready().await.is_ok()
    })
    .await
    .unwrap_or(false)
}

/// The pod server's routes (exposed for tests).
pub fn router(state: Arc<PodServerState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/mutate", post(webhook))
        .route("/v1/token", post(token))
        .with_state(state)
}

/// Serves HTTPS on `listener` with `tls` until `shutdown` resolves.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    state: Arc<PodServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = Handle::new();
    let drain = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        drain.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(?addr, "serving the pod webhook and token endpoint");
    let mut server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
    crate::serve::http::limit_connections(server.http_builder());
    server.serve(router(state).into_make_service()).await
}

fn count(
    family: &prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    outcome: &str,
) {
    family
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// `POST /mutate`: the admission review of a pod that opted in.
async fn webhook(
    State(state): State<Arc<PodServerState>>,
    body: Bytes,
) -> Json<AdmissionReview<DynamicObject>> {
    // Timed from the raw body, so that parsing the pod is counted too.
    let started = Instant::now();
    let request = serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .map_err(|error| format!("the body is not an AdmissionReview of a Pod: {error}"))
        .and_then(|review| {
            let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
            request.map_err(|error| error.to_string())
        });
    let (response, outcome) = match request {
        Ok(_) if !caches_ready(&state).await => (
            AdmissionResponse::invalid("fedid is starting: its caches are not filled yet; retry"),
            "error",
        ),
        Ok(request) => admit_pod(&state, &request),
        Err(error) => (AdmissionResponse::invalid(error), "error"),
    };
    count(&state.metrics.webhook_reviews, outcome);
    state
        .metrics
        .webhook_duration
        .observe(started.elapsed().as_secs_f64());
    Json(response.into_review())
}

/// The webhook's verdict: the patch, or a denial saying why the pod cannot have a token.
fn admit_pod(
    state: &PodServerState,
    request: &AdmissionRequest<Pod>,
) -> (AdmissionResponse, &'static str) {
    let response = AdmissionResponse::from(request);
    let Some(pod) = &request.object else {
        return (response, "mutated");
    };
    let Some(name) = identity_name(pod) else {
        // Only labelled pods are sent here; one without the label is let through unchanged.
        return (response, "mutated");
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    if !state.scope.includes(&namespace) {
        return (
            response.deny(format!(
                "fedid: namespace {namespace} is not served: fedid watches only {} (--watch-namespaces)",
                state.scope.describe()
            )),
            "denied",
        );
    }
    let Some(identity) = state
        .identities
        .get(&ObjectRef::new(name).within(&namespace))
    else {
        return (
            response.deny(format!(
                "fedid: the pod's label {POD_IDENTITY_LABEL}={name} names no FederatedIdentity in namespace {namespace}"
            )),
            "denied",
        );
    };
    let Some(pods) = &identity.spec.pods else {
        return (
            response.deny(format!(
                "fedid: FederatedIdentity {namespace}/{name} has no spec.pods: it does not issue per-pod tokens"
            )),
            "denied",
        );
    };
    let account = service_account(pod);
    if !allows_service_account(pods, account) {
        return (
            response.deny(format!(
                "fedid: service account {account} may not use FederatedIdentity {name} (spec.pods.serviceAccounts: {})",
                pods.service_accounts.join(", ")
            )),
            "denied",
        );
    }
    let suffix = random_suffix();
    match mutate(pod, name, &identity.spec, &state.inject, &suffix)
        .map_err(|error| error.to_string())
        .and_then(|mutation| {
            response
                .clone()
                .with_patch(mutation.patch)
                .map_err(|error| error.to_string())
        }) {
        Ok(patched) => (patched, "mutated"),
        Err(error) => (AdmissionResponse::invalid(error), "error"),
    }
}

/// Eight random lowercase letters and digits.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// `POST /v1/token`.
async fn token(
    State(state): State<Arc<PodServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match issue(&state, &headers, &body).await {
        Ok((minted, lifetime)) => {
            count(&state.metrics.token_requests, "issued");
            let expires_in = lifetime.as_secs();
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(serde_json::json!({
                    "token": minted.jwt,
                    "access_token": minted.jwt,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "token_type": "N_A",
                    "expires_in": expires_in,
                    "expires_at": minted.expires_at.to_string(),
                })),
            )
                .into_response()
        }
        Err(error) => {
            count(&state.metrics.token_requests, error.code());
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = (
                status,
                [(header::CACHE_CONTROL, "no-store")],
                Json(error.body()),
            )
                .into_response();
            if let TokenRequestError::TooManyRequests {
                retry_after_seconds,
            } = &error
                && let Ok(value) = retry_after_seconds.to_string().parse()
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

async fn issue(
    state: &PodServerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Minted, fedid_core::crd::Duration), TokenRequestError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            TokenRequestError::Unauthenticated(
                "send the pod's projected service-account token as Authorization: Bearer".into(),
            )
        })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json");
    let request = parse_request(content_type, body)?;
    if !caches_ready(state).await {
        return Err(TokenRequestError::Unavailable(
            "fedid is starting: its caches are not filled yet; retry".into(),
        ));
    }
    let reviewed = review(state, bearer).await?;
    let pod = live_pod(state, &reviewed).await?;
    spend_budget(state, &reviewed.uid)?;
    let forbidden = TokenRequestError::Forbidden;
    let name = identity_name(&pod).unwrap_or_default().to_owned();
    let identity = state
        .identities
        .get(&ObjectRef::new(&name).within(&reviewed.namespace))
        .ok_or_else(|| {
            forbidden(format!(
                "FederatedIdentity {}/{name} does not exist",
                reviewed.namespace
            ))
        })?;
    let fetched = fetch_from_caches(&identity, &state.registry, &state.namespaces)
        .map_err(|error| TokenRequestError::Unavailable(message_chain(&error)))?;
    let issuer = fetched.issuer;
    let config = issuer.config.as_ref().map_err(|unusable| {
        TokenRequestError::Unavailable(message_chain(&unusable_issuer(&issuer, unusable)))
    })?;
    let labels = fetched.namespace_labels;
    let template = validate(
        &identity,
        &issuer.resource,
        config,
        labels.as_ref(),
        state.min_token_lifetime,
    )
    .map_err(|error| forbidden(message_chain(&error)))?;
    let (audience, lifetime) = admit(
        &request,
        &name,
        &identity.spec,
        template.claims.lifetime(),
        fedid_core::crd::Duration::from_std_saturating(state.min_token_lifetime),
        config.maximum_lifetime,
    )?;
    let bound = bind_with(
        &identity.spec,
        &template,
        config,
        &pod,
        &[audience],
        lifetime,
    )
    .map_err(|error| forbidden(message_chain(&error)))?;
    let now = whole_seconds(jiff::Timestamp::now());
    let signer = issuer.signer(now).ok_or_else(|| {
        TokenRequestError::Unavailable(format!(
            "IdentityIssuer {} has no signing key",
            issuer.name()
        ))
    })?;
    let jti = format!("{:032x}", rand::random::<u128>());
    let started = Instant::now();
    let minted = tokio::task::spawn_blocking(move || mint(&bound, &signer, now, &jti))
        .await
        .map_err(|join| TokenRequestError::Unavailable(join.to_string()))?
        .map_err(|error| TokenRequestError::Unavailable(message_chain(&error)))?;
    state
        .metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    info!(namespace = %reviewed.namespace, pod = %reviewed.name, identity = %name, "issued a requested token");
    Ok((minted, lifetime))
}

/// The apiserver's verdict on `token` for fedid's audience, reused for [`REVIEW_CACHE_TTL`].
async fn review(state: &PodServerState, token: &str) -> Result<BoundPod, TokenRequestError> {
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Ok(cache) = state.reviews.lock()
        && let Some((reviewed, at)) = cache.get(&key)
        && at.elapsed() < REVIEW_CACHE_TTL
    {
        return Ok(reviewed.clone());
    }
    let audience = state.inject.token_request_audience.clone();
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.clone()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(state.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|error| {
            warn!(%error, "TokenReview failed");
            TokenRequestError::Unavailable("the apiserver could not review the token".into())
        })?;
    let status = reviewed.status.unwrap_or_default();
    if status
        .error
        .as_deref()
        .is_some_and(|error| error.contains("has been invalidated"))
    {
        // A bound token dies with its pod: the apiserver says so once the pod is gone.
        return Err(TokenRequestError::Forbidden(
            "the pod this token was bound to no longer exists".into(),
        ));
    }
    if status.authenticated != Some(true) {
        return Err(TokenRequestError::Unauthenticated(format!(
            "the token is not a valid service-account token for audience {audience}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(TokenRequestError::Forbidden(format!(
            "{username} is not a service account"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (first(POD_NAME_EXTRA), first(POD_UID_EXTRA)) else {
        return Err(TokenRequestError::Forbidden(
            "the token is not bound to a pod: use the pod's projected service-account token".into(),
        ));
    };
    let reviewed = BoundPod {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        name: pod_name,
        uid: pod_uid,
    };
    if let Ok(mut cache) = state.reviews.lock() {
        if cache.len() >= MAX_TABLE_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < REVIEW_CACHE_TTL);
            if cache.len() >= MAX_TABLE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (reviewed.clone(), Instant::now()));
    }
    Ok(reviewed)
}

/// The live, opted-in pod the token is bound to: from the cache, or from the apiserver to say
/// precisely why it is not there.
async fn live_pod(state: &PodServerState, bound: &BoundPod) -> Result<Pod, TokenRequestError> {
    if !state.scope.includes(&bound.namespace) {
        return Err(TokenRequestError::Forbidden(format!(
            "namespace {} is not served: fedid watches only {}",
            bound.namespace,
            state.scope.describe()
        )));
    }
    let cached = state
        .pods
        .get(&ObjectRef::new(&bound.name).within(&bound.namespace));
    let pod = match cached {
        Some(pod) => Some((*pod).clone()),
        // Not among the opted-in pods: read it, to say precisely why it may not ask.
        None => Api::<Pod>::namespaced(state.client.clone(), &bound.namespace)
            .get_opt(&bound.name)
            .await
            .map_err(|error| {
                TokenRequestError::Unavailable(format!("cannot read the pod: {error}"))
            })?,
    };
    check_bound_pod(pod.as_ref(), bound)?;
    pod.ok_or_else(|| TokenRequestError::Forbidden("the pod no longer exists".into()))
}

/// Takes one request from the pod's token bucket.
fn spend_budget(state: &PodServerState, pod_uid: &str) -> Result<(), TokenRequestError> {
    let RequestBudget { qps, burst } = state.budget;
    let now = state.started.elapsed().as_secs_f64();
    let Ok(mut buckets) = state.buckets.lock() else {
        return Ok(());
    };
    if buckets.len() >= MAX_TABLE_ENTRIES {
        // A bucket untouched for longer than it takes to refill is full: forgetting it is free.
        let refill = f64::from(burst) / qps;
        buckets.retain(|_, (_, used)| now - *used < refill);
    }
    let (bucket, used) = buckets
        .entry(pod_uid.to_owned())
        .or_insert_with(|| (TokenBucket::new(qps, burst, now), now));
    *used = now;
    bucket
        .try_take(now)
        .map_err(|wait| TokenRequestError::TooManyRequests {
            retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
}
