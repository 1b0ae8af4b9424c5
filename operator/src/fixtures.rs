//! Builders shared by the unit tests: issuers, key rings and a loaded registry, without a
//! cluster.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    api::ObjectMeta,
    runtime::{reflector, watcher},
};

use fedid_core::{
    crd::{IdentityIssuer, IdentityIssuerSpec, SigningAlgorithm},
    issuer::{
        key_store::{KEY_RING_DATA_KEY, key_ring_secret_name},
        keys::{KeyRing, generate_key},
    },
    time::whole_seconds,
};

use crate::issuer::registry::IssuerRegistry;

/// The operator namespace the fixtures use.
pub const NAMESPACE: &str = "fedid-system";

/// An IdentityIssuer from a JSON spec, as the apiserver would return it.
pub fn issuer(name: &str, spec: serde_json::Value) -> IdentityIssuer {
    let spec: IdentityIssuerSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut issuer = IdentityIssuer::new(name, spec);
    issuer.metadata.resource_version = Some("1".into());
    issuer.metadata.uid = Some(format!("uid-{name}"));
    issuer
}

/// A ring with one RS256 key that signs from now on (whole seconds, as the controllers decide).
pub fn ring() -> KeyRing {
    let now = whole_seconds(Timestamp::now());
    KeyRing {
        keys: vec![generate_key(SigningAlgorithm::RS256, now).expect("a key")],
        last_rotation_request: None,
    }
}

/// The key-ring Secret of `issuer` holding `ring`.
pub fn key_secret(issuer: &str, ring: &KeyRing) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(key_ring_secret_name(issuer)),
            namespace: Some(NAMESPACE.into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            KEY_RING_DATA_KEY.to_owned(),
            ByteString(ring.to_json().expect("ring serializes")),
        )])),
        ..Secret::default()
    }
}

/// A synced registry holding `issuers`, each with the ring given for it (or none).
pub fn registry(issuers: Vec<(IdentityIssuer, Option<KeyRing>)>) -> Arc<IssuerRegistry> {
    let (store, mut writer) = reflector::store::<Secret>();
    let mut resources = Vec::new();
    for (issuer, ring) in issuers {
        if let Some(ring) = ring {
            let name = issuer.metadata.name.clone().unwrap_or_default();
            writer.apply_watcher_event(&watcher::Event::Apply(key_secret(&name, &ring)));
        }
        resources.push(Arc::new(issuer));
    }
    let registry = Arc::new(IssuerRegistry::default());
    registry.refresh(&resources, &store, NAMESPACE);
    registry.mark_synced();
    registry
}

/// The settings the reconciler tests use: production defaults.
pub fn settings() -> crate::runtime::context::Settings {
    crate::runtime::context::Settings {
        namespace: NAMESPACE.into(),
        min_token_lifetime: std::time::Duration::from_secs(600),
        renew_before_expiry: std::time::Duration::from_secs(300),
        concurrency: 1,
        exchange_qps: 100.0,
        exchange_burst: 100,
        exchange_concurrency: 100,
        rollout: true,
        watch_scope: crate::runtime::scope::WatchScope::Cluster,
    }
}

/// A mock apiserver for request-level tests: every request fedid makes is awaited and
/// asserted in order, and anything unexpected fails the test.
pub mod apiserver {
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use kube::{Client, client::Body};
    use serde_json::Value;
    use tower_test::mock::{Handle, SendResponse, pair};

    /// The test's end of the mock apiserver.
    pub type MockHandle = Handle<Request<Body>, Response<Body>>;

    /// A client talking to a fresh mock apiserver, and the handle that answers it.
    pub fn mock_client() -> (Client, MockHandle) {
        let (service, handle) = pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    /// The JSON body of a request.
    pub async fn body_json(request: Request<Body>) -> Value {
        let bytes = request.into_body().collect_bytes().await.expect("a body");
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    /// A JSON response.
    pub fn respond(status: StatusCode, body: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("serializes")))
            .expect("a response")
    }

    /// A Kubernetes `Status` error response.
    pub fn status_error(code: u16, reason: &str) -> Response<Body> {
        let status = StatusCode::from_u16(code).expect("a status code");
        respond(
            status,
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "code": code, "reason": reason, "message": reason}),
        )
    }

    /// Fails on any request arriving within 300 ms (a dropped client is fine).
    pub async fn assert_no_request(handle: &mut MockHandle) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
        {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }

    /// The next request, within 2 s.
    pub async fn next(handle: &mut MockHandle) -> (Request<Body>, SendResponse<Response<Body>>) {
        tokio::time::timeout(Duration::from_secs(2), handle.next_request())
            .await
            .expect("fedid made the expected request")
            .expect("the client is alive")
    }
}
