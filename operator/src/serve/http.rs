//! The HTTP server: OIDC discovery and JWKS for every issuer, plus health and metrics.
//!
//! Issuers are routed by the path of their issuer URL: an issuer whose URL is
//! `https://ci.example.com/clusters/prod` serves
//! `/clusters/prod/.well-known/openid-configuration` and
//! `/clusters/prod/.well-known/jwks.json`. Documents carry `Cache-Control:
//! max-age` and a strong `ETag`, and conditional requests get `304 Not Modified`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use axum_server::{Handle, tls_rustls::RustlsConfig};
use tracing::{info, warn};

use fedid_core::issuer::discovery::{DISCOVERY_SUFFIX, JWKS_SUFFIX};

use crate::{
    issuer::registry::{IssuerRegistry, LoadedIssuer, ServedDocument},
    runtime::metrics::{IssuerObservation, Metrics},
};

/// How often the serving certificate is re-read from disk (cert-manager renews it in place).
const CERTIFICATE_RELOAD_INTERVAL: Duration = Duration::from_secs(300);

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// PEM certificate chain and key for HTTPS; plain HTTP when absent (TLS ends at an ingress).
    pub tls: Option<TlsFiles>,
}

/// Paths of a PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate or key could not be loaded.
    #[error("failed to load the TLS certificate {cert} and key {key}")]
    LoadCertificate {
        /// Certificate path.
        cert: PathBuf,
        /// Key path.
        key: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding or serving failed.
    #[error("failed to serve HTTP on {addr}")]
    Serve {
        /// Listen address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Issuers and their rendered documents.
    pub registry: Arc<IssuerRegistry>,
    /// Metrics, rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Renders the per-identity observations for a scrape.
    pub observe_identities:
        Arc<dyn Fn() -> Vec<crate::runtime::metrics::IdentityObservation> + Send + Sync>,
}

/// Builds the router (exposed for tests).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(issuer_document)
        .with_state(state)
}

/// Longest time a client may take to send a request's headers, on a new connection or between
/// two requests on a kept-alive one: a slow or idle client is disconnected then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted; a larger one is refused with 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// Bounds what one client can hold of a server: [`HEADER_READ_TIMEOUT`] and
/// [`MAX_REQUEST_HEAD_BYTES`] over HTTP/1, and over HTTP/2 pings that close a connection whose
/// peer stopped answering.
pub fn limit_connections(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD_BYTES).unwrap_or(u32::MAX));
}

/// Serves until `shutdown` resolves, then drains connections for up to 10 s.
pub async fn serve(
    config: ServerConfig,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(state).into_make_service();
    let handle = Handle::new();
    let drain = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        drain.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let addr = config.addr;
    match config.tls {
        Some(files) => {
            let tls = RustlsConfig::from_pem_file(&files.cert, &files.key)
                .await
                .map_err(|source| ServeError::LoadCertificate {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    source,
                })?;
            tokio::spawn(reload_certificate(tls.clone(), files));
            info!(%addr, "serving HTTPS");
            let mut server = axum_server::bind_rustls(addr, tls).handle(handle);
            limit_connections(server.http_builder());
            server.serve(app).await
        }
        None => {
            info!(%addr, "serving plain HTTP");
            let mut server = axum_server::bind(addr).handle(handle);
            limit_connections(server.http_builder());
            server.serve(app).await
        }
    }
    .map_err(|source| ServeError::Serve { addr, source })
}

async fn reload_certificate(tls: RustlsConfig, files: TlsFiles) {
    let mut ticker = tokio::time::interval(CERTIFICATE_RELOAD_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(error) = tls.reload_from_pem_file(&files.cert, &files.key).await {
            warn!(%error, cert = %files.cert.display(), "keeping the current certificate: reload failed");
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.registry.is_synced() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "issuers and keys not loaded yet",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let now = jiff::Timestamp::now();
    let issuers = state
        .registry
        .all()
        .into_iter()
        .map(|issuer| observe_issuer(&state.registry, &issuer, now));
    let body = state.metrics.render((state.observe_identities)(), issuers);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// What the scrape-time issuer gauges say about `issuer` at `now`: its published keys, whether
/// its documents are served (exactly when `issuer_document` answers 200 for its URL's path: it
/// has documents, and no older issuer has the same path), and its rotation.
fn observe_issuer(
    registry: &IssuerRegistry,
    issuer: &LoadedIssuer,
    now: jiff::Timestamp,
) -> IssuerObservation {
    let served_here = issuer.config.as_ref().ok().is_some_and(|config| {
        registry
            .find_by_path(config.issuer_url.path())
            .is_some_and(|winner| winner.name() == issuer.name())
    });
    IssuerObservation {
        issuer: issuer.name(),
        published_keys: issuer.published_kids(now).len(),
        jwks_served: served_here && issuer.documents(now).is_some(),
        signing_key_activated_at: issuer
            .config
            .as_ref()
            .ok()
            .and_then(|_| issuer.ring().signing_key(now))
            .map(|key| key.activates_at.as_second()),
        rotation_period_seconds: issuer
            .config
            .as_ref()
            .ok()
            .map(|config| config.rotation.rotation_period.as_secs()),
    }
}

async fn issuer_document(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path = uri.path();
    let (prefix, wants_jwks) = if let Some(prefix) = path.strip_suffix(DISCOVERY_SUFFIX) {
        (prefix, false)
    } else if let Some(prefix) = path.strip_suffix(JWKS_SUFFIX) {
        (prefix, true)
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(issuer) = state.registry.find_by_path(prefix) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(documents) = issuer.documents(jiff::Timestamp::now()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "the issuer has no signing keys yet",
        )
            .into_response();
    };
    let document = if wants_jwks {
        &documents.jwks
    } else {
        &documents.discovery
    };
    respond(
        document,
        &documents.cache_control,
        &headers,
        method == Method::HEAD,
    )
}

fn respond(
    document: &ServedDocument,
    cache_control: &HeaderValue,
    request: &HeaderMap,
    head: bool,
) -> Response {
    let not_modified = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == document.etag
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if head {
        StatusCode::OK.into_response()
    } else {
        Response::new(Body::from(document.body.clone()))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, cache_control.clone());
    headers.insert(header::ETAG, document.etag_header.clone());
    response
}

#[cfg(test)]
mod tests {
    use axum::{body::to_bytes, http::Request};
    use serde_json::json;
    use tower::ServiceExt;

    use super::*;
    use crate::fixtures;

    /// A router over one issuer at `/clusters/prod` with one RS256 key, and an issuer without keys.
    fn app(synced: bool) -> (Router, String) {
        let ring = fixtures::ring();
        let kid = ring.keys[0].kid.clone();
        let registry = fixtures::registry(vec![
            (
                fixtures::issuer(
                    "prod",
                    json!({"issuerURL": "https://fedid.example.com/clusters/prod"}),
                ),
                Some(ring),
            ),
            (
                fixtures::issuer(
                    "empty",
                    json!({"issuerURL": "https://fedid.example.com/clusters/empty"}),
                ),
                None,
            ),
        ]);
        let registry = if synced {
            registry
        } else {
            Arc::new(IssuerRegistry::default())
        };
        let state = AppState {
            registry,
            metrics: Arc::new(Metrics::default()),
            observe_identities: Arc::new(Vec::new),
        };
        (router(state), kid)
    }

    async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn json(response: Response) -> serde_json::Value {
        serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn serves_discovery_and_jwks_under_the_issuer_path() {
        let (app, kid) = app(true);
        let response = get(&app, "/clusters/prod/.well-known/openid-configuration", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=3600"
        );
        let document = json(response).await;
        assert_eq!(
            document["issuer"],
            "https://fedid.example.com/clusters/prod"
        );
        assert_eq!(
            document["jwks_uri"],
            "https://fedid.example.com/clusters/prod/.well-known/jwks.json"
        );

        let response = get(&app, "/clusters/prod/.well-known/jwks.json", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let keys = json(response).await;
        assert_eq!(keys["keys"][0]["kid"], kid.as_str());
        assert!(
            keys["keys"][0].get("d").is_none(),
            "no private parameter is ever served"
        );
    }

    #[tokio::test]
    async fn conditional_requests_get_not_modified() {
        let (app, _) = app(true);
        let path = "/clusters/prod/.well-known/jwks.json";
        let first = get(&app, path, &[]).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'));
        let again = get(&app, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(to_bytes(again.into_body(), 1024).await.unwrap().is_empty());
        let listed = get(
            &app,
            path,
            &[("if-none-match", &format!("\"other\", W/{etag}"))],
        )
        .await;
        assert_eq!(listed.status(), StatusCode::NOT_MODIFIED);
        let stale = get(&app, path, &[("if-none-match", "\"other\"")]).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_paths_and_keyless_issuers() {
        let (app, _) = app(true);
        for path in [
            "/clusters/nope/.well-known/jwks.json",
            "/clusters/prod/.well-known/other",
            "/clusters/prod",
            "/",
        ] {
            assert_eq!(
                get(&app, path, &[]).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let keyless = get(&app, "/clusters/empty/.well-known/jwks.json", &[]).await;
        assert_eq!(keyless.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(keyless.headers()[header::RETRY_AFTER], "5");
        let post = app
            .clone()
            .oneshot(
                Request::post("/clusters/prod/.well-known/jwks.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn an_issuer_whose_path_an_older_issuer_serves_is_not_served() {
        let older = |name: &str, second: i64| {
            let mut issuer = fixtures::issuer(
                name,
                json!({"issuerURL": format!("https://{name}.example.com/clusters/shared")}),
            );
            issuer.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(second).unwrap(),
                ));
            issuer
        };
        let registry = fixtures::registry(vec![
            (older("first", 1_800_000_000), Some(fixtures::ring())),
            (older("second", 1_800_000_100), Some(fixtures::ring())),
        ]);
        let app = router(AppState {
            registry,
            metrics: Arc::new(Metrics::default()),
            observe_identities: Arc::new(Vec::new),
        });
        let text = to_bytes(get(&app, "/metrics", &[]).await.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains(r#"fedid_issuer_jwks_served{issuer="first"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fedid_issuer_jwks_served{issuer="second"} 0"#),
            "the younger issuer's URL answers with the older one's JWKS: {text}"
        );
    }

    #[tokio::test]
    async fn ready_only_once_issuers_are_loaded() {
        let (loading, _) = app(false);
        assert_eq!(
            get(&loading, "/readyz", &[]).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(&loading, "/healthz", &[]).await.status(),
            StatusCode::OK
        );
        let (loaded, _) = app(true);
        assert_eq!(get(&loaded, "/readyz", &[]).await.status(), StatusCode::OK);
        let metrics = get(&loaded, "/metrics", &[]).await;
        assert_eq!(metrics.status(), StatusCode::OK);
        let text = to_bytes(metrics.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains(r#"fedid_issuer_published_keys{issuer="prod"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"fedid_issuer_published_keys{issuer="empty"} 0"#));
        assert!(
            text.contains(r#"fedid_issuer_jwks_served{issuer="prod"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fedid_issuer_jwks_served{issuer="empty"} 0"#),
            "the keyless issuer answers 503, so its JWKS is not served"
        );
        assert!(
            text.contains(r#"fedid_issuer_signing_key_activated_timestamp_seconds{issuer="prod"}"#)
        );
        assert!(text.contains(r#"fedid_issuer_rotation_period_seconds{issuer="prod"}"#));
        assert!(text.contains("# EOF"));
    }
}
