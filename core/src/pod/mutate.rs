//! What fedid's admission webhook adds to a pod that opted in: a pure function of the pod and
//! its identity, returning a JSON patch. A second pass over the mutated pod adds nothing.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, ProjectedVolumeSource, SecretVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use crate::{
    crd::{
        FederatedIdentitySpec,
        identity::is_dns_subdomain,
        pods::{DEFAULT_POD_MOUNT_PATH, POD_SECRET_ANNOTATION, TOKEN_REQUEST_MOUNT_PATH},
    },
    credentials::secret::TOKEN_KEY,
};

/// Name of the volume holding the pod's Secret.
pub const TOKEN_VOLUME: &str = "fedid-token";

/// Name of the projected service-account token volume for the token endpoint.
pub const TOKEN_REQUEST_VOLUME: &str = "fedid-token-request";

/// Data key of the pod's Secret holding the CA that signs the token endpoint's certificate.
pub const TOKEN_REQUEST_CA_KEY: &str = "token-request-ca.crt";

/// Lifetime asked for the projected service-account token the pod sends to the token
/// endpoint (the kubelet refreshes it at 80%).
pub const TOKEN_REQUEST_EXPIRATION_SECONDS: i64 = 3600;

/// Longest identity-name prefix in a generated Secret name.
const MAX_SECRET_PREFIX: usize = 200;

/// How the webhook is set up: what it cannot learn from the pod or the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    /// URL of the token endpoint (`FEDID_TOKEN_URL`), when it is served.
    pub token_url: Option<String>,
    /// Audience of the projected service-account token the token endpoint accepts.
    pub token_request_audience: String,
}

/// The webhook's verdict on one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// The JSON patch to apply (empty when the pod already has everything).
    pub patch: json_patch::Patch,
    /// The Secret the pod mounts.
    pub secret_name: String,
}

/// Where the pod's Secret is mounted: `spec.pods.mountPath`, or the aws or gcp exchange's
/// `mountPath` (its files name that path), or [`DEFAULT_POD_MOUNT_PATH`].
pub fn mount_path(spec: &FederatedIdentitySpec) -> String {
    let from_exchange = spec.exchange.as_ref().and_then(|exchange| {
        exchange
            .aws
            .as_ref()
            .map(|aws| aws.mount_path.clone())
            .or_else(|| exchange.gcp.as_ref().map(|gcp| gcp.mount_path.clone()))
    });
    spec.pods
        .as_ref()
        .and_then(|pods| pods.mount_path.clone())
        .or(from_exchange)
        .unwrap_or_else(|| DEFAULT_POD_MOUNT_PATH.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Whether pods of this identity can ask the token endpoint for tokens.
pub fn token_requests_enabled(spec: &FederatedIdentitySpec, settings: &InjectSettings) -> bool {
    settings.token_url.is_some()
        && spec
            .pods
            .as_ref()
            .is_some_and(|pods| !pods.allowed_audiences.is_empty())
}

/// The environment the SDKs read for the identity's exchange kind, with the Secret mounted at
/// `mount`: always `FEDID_TOKEN_FILE` (when the Secret holds the token); `AWS_CONFIG_FILE`
/// for `exchange.aws`; `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` for
/// `pods.awsRoleARN`; `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
/// `AZURE_AUTHORITY_HOST` for `exchange.azure`; `GOOGLE_APPLICATION_CREDENTIALS` for
/// `exchange.gcp`; and `FEDID_TOKEN_URL`, `FEDID_TOKEN_CA_FILE` when token requests are on.
pub fn environment(
    spec: &FederatedIdentitySpec,
    settings: &InjectSettings,
    mount: &str,
) -> Vec<(String, String)> {
    let token_file = format!("{mount}/{TOKEN_KEY}");
    let with_token = spec.includes_subject_token();
    let mut env: Vec<(&str, String)> = Vec::new();
    if with_token {
        env.push(("FEDID_TOKEN_FILE", token_file.clone()));
    }
    let exchange = spec.exchange.as_ref();
    if exchange
        .and_then(|exchange| exchange.aws.as_ref())
        .is_some()
    {
        env.push(("AWS_CONFIG_FILE", format!("{mount}/config")));
    }
    if let Some(role) = spec
        .pods
        .as_ref()
        .and_then(|pods| pods.aws_role_arn.as_ref())
        && with_token
    {
        env.push(("AWS_ROLE_ARN", role.clone()));
        env.push(("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.clone()));
    }
    if let Some(azure) = exchange.and_then(|exchange| exchange.azure.as_ref())
        && with_token
    {
        env.push(("AZURE_FEDERATED_TOKEN_FILE", token_file.clone()));
        env.push(("AZURE_CLIENT_ID", azure.client_id.clone()));
        if let Some(tenant) = &azure.tenant_id {
            env.push(("AZURE_TENANT_ID", tenant.clone()));
        }
        if let Some(authority) = &azure.authority_host {
            env.push(("AZURE_AUTHORITY_HOST", authority.clone()));
        }
    }
    if exchange
        .and_then(|exchange| exchange.gcp.as_ref())
        .is_some()
    {
        env.push((
            "GOOGLE_APPLICATION_CREDENTIALS",
            format!("{mount}/external_account.json"),
        ));
    }
    if token_requests_enabled(spec, settings)
        && let Some(url) = &settings.token_url
    {
        env.push(("FEDID_TOKEN_URL", url.clone()));
        env.push((
            "FEDID_TOKEN_CA_FILE",
            format!("{mount}/{TOKEN_REQUEST_CA_KEY}"),
        ));
    }
    env.into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// The name of a new pod Secret: the identity's name (cut to 200 characters) and `suffix`, a
/// random lowercase alphanumeric string chosen by the caller.
pub fn new_secret_name(identity_name: &str, suffix: &str) -> String {
    let prefix: String = identity_name.chars().take(MAX_SECRET_PREFIX).collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// Decides the webhook's patch for `pod` using `spec` (the identity named by its label):
/// the annotation recording the Secret's name (kept when already set), the Secret volume,
/// the projected token volume when token requests are on, and in every container and init
/// container the mounts and environment, never replacing a volume, mount path or variable the
/// pod already has. `suffix` makes a new Secret name unique.
pub fn mutate(
    pod: &Pod,
    identity_name: &str,
    spec: &FederatedIdentitySpec,
    settings: &InjectSettings,
    suffix: &str,
) -> Result<Mutation, serde_json::Error> {
    let before = serde_json::to_value(pod)?;
    let mut pod = pod.clone();
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    let secret_name = match annotations.get(POD_SECRET_ANNOTATION) {
        Some(existing) if is_dns_subdomain(existing) => existing.clone(),
        _ => {
            let name = new_secret_name(identity_name, suffix);
            annotations.insert(POD_SECRET_ANNOTATION.to_owned(), name.clone());
            name
        }
    };
    let mount = mount_path(spec);
    let requests = token_requests_enabled(spec, settings);
    let env = environment(spec, settings, &mount);
    let pod_spec = pod.spec.get_or_insert_with(Default::default);
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|volume| volume.name == TOKEN_VOLUME) {
        volumes.push(Volume {
            name: TOKEN_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if requests
        && !volumes
            .iter()
            .any(|volume| volume.name == TOKEN_REQUEST_VOLUME)
    {
        volumes.push(Volume {
            name: TOKEN_REQUEST_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(settings.token_request_audience.clone()),
                        expiration_seconds: Some(TOKEN_REQUEST_EXPIRATION_SECONDS),
                        path: TOKEN_KEY.to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let mut mounts = vec![(TOKEN_VOLUME, mount.clone())];
    if requests {
        mounts.push((TOKEN_REQUEST_VOLUME, TOKEN_REQUEST_MOUNT_PATH.to_owned()));
    }
    let inject = |container: &mut Container| {
        let existing = container.volume_mounts.get_or_insert_with(Vec::new);
        for (volume, path) in &mounts {
            let taken = existing
                .iter()
                .any(|mounted| mounted.name == *volume || mounted.mount_path == *path);
            if !taken {
                existing.push(VolumeMount {
                    name: (*volume).to_owned(),
                    mount_path: path.clone(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
            }
        }
        let variables = container.env.get_or_insert_with(Vec::new);
        for (name, value) in &env {
            if !variables.iter().any(|variable| &variable.name == name) {
                variables.push(EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                });
            }
        }
    };
    pod_spec.containers.iter_mut().for_each(inject);
    pod_spec
        .init_containers
        .iter_mut()
        .flatten()
        .for_each(inject);
    let after = serde_json::to_value(&pod)?;
    Ok(Mutation {
        patch: json_patch::diff(&before, &after),
        secret_name,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            token_url: Some("https://fedid-token.fedid-system.svc/v1/token".to_owned()),
            token_request_audience: "fedid.dev/token-request".to_owned(),
        }
    }

    fn spec(value: serde_json::Value) -> FederatedIdentitySpec {
        serde_json::from_value(value).expect("identity spec")
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn apply(pod_value: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut value = serde_json::to_value(pod_value).expect("pod json");
        json_patch::patch(&mut value, patch).expect("patch applies");
        serde_json::from_value(value).expect("patched pod")
    }

    fn env_of(container: &Container) -> Vec<(String, String)> {
        container
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
            .collect()
    }

    fn ci_pod() -> Pod {
        pod(json!({
            "metadata": {"generateName": "build-", "labels": {"fedid.dev/identity": "deploy"}},
            "spec": {
                "initContainers": [{"name": "clone", "image": "git"}],
                "containers": [
                    {"name": "build", "image": "builder", "env": [{"name": "FEDID_TOKEN_FILE", "value": "/mine"}]},
                    {"name": "sidecar", "image": "proxy", "volumeMounts": [{"name": "cache", "mountPath": "/var/run/secrets/fedid"}]}
                ],
                "volumes": [{"name": "cache", "emptyDir": {}}]
            }
        }))
    }

    #[test]
    fn a_pod_gets_volume_mounts_and_environment_without_losing_its_own() {
        let spec = spec(json!({"audiences": ["sts.amazonaws.com"], "pods": {
            "awsRoleARN": "arn:aws:iam::123456789012:role/ci"}}));
        let original = ci_pod();
        let mutation =
            mutate(&original, "deploy", &spec, &settings(), "x7k2p9qa").expect("mutates");
        assert_eq!(mutation.secret_name, "deploy-x7k2p9qa");
        let mutated = apply(&original, &mutation.patch);
        let annotations = mutated.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations[POD_SECRET_ANNOTATION], "deploy-x7k2p9qa");
        let pod_spec = mutated.spec.clone().expect("spec");
        let volumes = pod_spec.volumes.clone().unwrap_or_default();
        assert_eq!(
            volumes.len(),
            2,
            "no token-request volume without allowedAudiences"
        );
        let secret = volumes[1].secret.clone().expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("deploy-x7k2p9qa"));
        assert_eq!(secret.optional, Some(false));
        let build = &pod_spec.containers[0];
        assert_eq!(
            env_of(build),
            [
                ("FEDID_TOKEN_FILE".to_owned(), "/mine".to_owned()),
                (
                    "AWS_ROLE_ARN".to_owned(),
                    "arn:aws:iam::123456789012:role/ci".to_owned()
                ),
                (
                    "AWS_WEB_IDENTITY_TOKEN_FILE".to_owned(),
                    "/var/run/secrets/fedid/token".to_owned()
                ),
            ]
        );
        let mount = &build.volume_mounts.clone().unwrap_or_default()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            (TOKEN_VOLUME, "/var/run/secrets/fedid")
        );
        assert_eq!(mount.read_only, Some(true));
        // The sidecar already uses the mount path: its own volume stays, no second mount.
        let sidecar_mounts = pod_spec.containers[1]
            .volume_mounts
            .clone()
            .unwrap_or_default();
        assert_eq!(sidecar_mounts.len(), 1);
        assert_eq!(sidecar_mounts[0].name, "cache");
        let init = &pod_spec.init_containers.clone().unwrap_or_default()[0];
        assert_eq!(
            init.volume_mounts.clone().unwrap_or_default()[0].name,
            TOKEN_VOLUME
        );
        assert_eq!(
            env_of(init)[0],
            (
                "FEDID_TOKEN_FILE".to_owned(),
                "/var/run/secrets/fedid/token".to_owned()
            )
        );
    }

    #[test]
    fn a_second_pass_changes_nothing() {
        let spec = spec(json!({"audiences": ["a"], "pods": {"allowedAudiences": ["vault"]}}));
        let original = ci_pod();
        let first = mutate(&original, "deploy", &spec, &settings(), "aaaa").expect("mutates");
        let mutated = apply(&original, &first.patch);
        let second = mutate(&mutated, "deploy", &spec, &settings(), "bbbb").expect("mutates");
        assert!(second.patch.0.is_empty(), "{:?}", second.patch);
        assert_eq!(second.secret_name, "deploy-aaaa");
    }

    #[test]
    fn token_requests_add_the_projected_token_and_the_endpoint() {
        let spec = spec(json!({"audiences": ["a"], "pods": {"allowedAudiences": ["vault"]}}));
        let mutated = apply(
            &ci_pod(),
            &mutate(&ci_pod(), "deploy", &spec, &settings(), "s")
                .expect("mutates")
                .patch,
        );
        let pod_spec = mutated.spec.expect("spec");
        let volume = pod_spec
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|volume| volume.name == TOKEN_REQUEST_VOLUME)
            .expect("projected volume");
        let projection = volume
            .projected
            .and_then(|projected| projected.sources)
            .unwrap_or_default()[0]
            .service_account_token
            .clone()
            .expect("token projection");
        assert_eq!(
            projection.audience.as_deref(),
            Some("fedid.dev/token-request")
        );
        assert_eq!(projection.expiration_seconds, Some(3600));
        let env = env_of(&pod_spec.containers[0]);
        assert!(env.contains(&(
            "FEDID_TOKEN_URL".to_owned(),
            "https://fedid-token.fedid-system.svc/v1/token".to_owned()
        )));
        assert!(env.contains(&(
            "FEDID_TOKEN_CA_FILE".to_owned(),
            "/var/run/secrets/fedid/token-request-ca.crt".to_owned()
        )));
        let mounts = pod_spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default();
        assert!(mounts.iter().any(|mount| mount.name == TOKEN_REQUEST_VOLUME
            && mount.mount_path == TOKEN_REQUEST_MOUNT_PATH));
        // Without a served endpoint, nothing of it is added.
        let off = InjectSettings {
            token_url: None,
            ..settings()
        };
        assert!(!token_requests_enabled(&spec, &off));
    }

    #[test]
    fn each_exchange_kind_sets_its_sdk_variables() {
        let cases = [
            (
                json!({"aws": {"roleARN": "arn:aws:iam::123456789012:role/ci", "region": "eu-west-1"}}),
                vec!["FEDID_TOKEN_FILE", "AWS_CONFIG_FILE"],
            ),
            (
                json!({"azure": {"tenantID": "t", "clientID": "c", "scope": "s/.default", "authorityHost": "https://login.example"}}),
                vec![
                    "FEDID_TOKEN_FILE",
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "AZURE_CLIENT_ID",
                    "AZURE_TENANT_ID",
                    "AZURE_AUTHORITY_HOST",
                ],
            ),
            (
                json!({"gcp": {"audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/f"}}),
                vec!["FEDID_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS"],
            ),
            (
                json!({"vault": {"address": "https://vault.example", "role": "ci"}}),
                vec!["FEDID_TOKEN_FILE"],
            ),
        ];
        for (exchange, expected) in cases {
            let spec = spec(json!({"audiences": ["a"], "exchange": exchange, "pods": {}}));
            let names: Vec<String> = environment(&spec, &settings(), &mount_path(&spec))
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            assert_eq!(names, expected, "{exchange}");
        }
        let aws = spec(
            json!({"audiences": ["a"], "exchange": {"aws": {"roleARN": "arn:aws:iam::123456789012:role/ci", "mountPath": "/aws/"}}, "pods": {}}),
        );
        assert_eq!(mount_path(&aws), "/aws");
        assert_eq!(environment(&aws, &settings(), "/aws")[1].1, "/aws/config");
        let hidden = spec(
            json!({"audiences": ["a"], "output": {"includeSubjectToken": false},
            "exchange": {"azure": {"tenantID": "t", "clientID": "c", "scope": "s"}}, "pods": {}}),
        );
        assert!(
            environment(&hidden, &settings(), "/m").is_empty(),
            "no token file to point at"
        );
    }

    #[test]
    fn a_preset_secret_name_is_kept_and_an_invalid_one_replaced() {
        let spec = spec(json!({"audiences": ["a"], "pods": {}}));
        let mut original = ci_pod();
        original.metadata.annotations =
            Some([(POD_SECRET_ANNOTATION.to_owned(), "Not_Valid".to_owned())].into());
        assert_eq!(
            mutate(&original, "deploy", &spec, &settings(), "s1")
                .expect("mutates")
                .secret_name,
            "deploy-s1"
        );
        let long = "a".repeat(253);
        assert_eq!(new_secret_name(&long, "s1").len(), 203);
    }
}
