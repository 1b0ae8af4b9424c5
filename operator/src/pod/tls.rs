//! The pod server's certificate: files another tool keeps current (cert-manager), or a CA and
//! serving certificate fedid generates once into a Secret in its own namespace, shared by
//! every replica, with the CA patched into the MutatingWebhookConfiguration.

use std::collections::BTreeMap;

use fedid_core::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tracing::info;

use crate::runtime::context::FIELD_MANAGER;

/// Data key of the generated Secret holding the CA certificate.
pub const CA_KEY: &str = "ca.crt";
/// Data key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Data key of the serving certificate's private key.
pub const KEY_KEY: &str = "tls.key";

/// Years a generated CA and serving certificate are valid; delete the Secret to replace them.
pub const GENERATED_VALIDITY_YEARS: i32 = 10;

/// A CA and the serving certificate it signed, in PEM.
#[derive(Clone)]
pub struct ServingCertificate {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ServingCertificate").finish_non_exhaustive()
    }
}

/// Why the certificate could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the certificates failed.
    #[error("failed to generate the pod server's certificate")]
    Generate(#[from] rcgen::Error),
    /// Reading or writing the Secret failed.
    #[error("failed to read or write Secret {secret}")]
    Secret {
        /// Secret name.
        secret: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but lacks a key.
    #[error("Secret {secret} lacks {key}: delete it and fedid generates a new certificate")]
    Incomplete {
        /// Secret name.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// Patching the webhook configuration failed.
    #[error("failed to set the caBundle of MutatingWebhookConfiguration {name}")]
    CaBundle {
        /// Configuration name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// Generates a CA and a serving certificate for `hosts` (DNS names or IP addresses), valid
/// from now for [`GENERATED_VALIDITY_YEARS`].
pub fn generate(
    hosts: &[String],
    now: jiff::Timestamp,
) -> Result<ServingCertificate, rcgen::Error> {
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let not_after = rcgen::date_time_ymd(
        i32::from(today.year()) + GENERATED_VALIDITY_YEARS,
        today.month().unsigned_abs(),
        today.day().unsigned_abs().min(28),
    );
    let not_before = rcgen::date_time_ymd(
        i32::from(today.year()),
        today.month().unsigned_abs(),
        today.day().unsigned_abs().min(28),
    ) - std::time::Duration::from_secs(86_400);
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fedid pod server CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = rcgen::CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts.first().cloned().unwrap_or_else(|| "fedid".to_owned()),
    );
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(ServingCertificate {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn read(secret: &Secret, name: &str) -> Result<ServingCertificate, TlsError> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &'static str| {
        data.get(key)
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .ok_or_else(|| TlsError::Incomplete {
                secret: name.to_owned(),
                key,
            })
    };
    Ok(ServingCertificate {
        ca_pem: get(CA_KEY)?,
        cert_pem: get(CERT_KEY)?,
        key_pem: get(KEY_KEY)?,
    })
}

/// The certificate in Secret `name` of `namespace`, generated for `hosts` and created first
/// when the Secret does not exist (a replica that loses the race reads the winner's).
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
    hosts: &[String],
) -> Result<ServingCertificate, TlsError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let failed = |source| TlsError::Secret {
        secret: name.to_owned(),
        source,
    };
    if let Some(existing) = api.get_opt(name).await.map_err(failed)? {
        return read(&existing, name);
    }
    let generated = generate(hosts, jiff::Timestamp::now())?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                CA_KEY.to_owned(),
                ByteString(generated.ca_pem.clone().into_bytes()),
            ),
            (
                CERT_KEY.to_owned(),
                ByteString(generated.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_owned(),
                ByteString(generated.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, &secret).await {
        Ok(_) => {
            info!(secret = %name, hosts = ?hosts, "generated the pod server's certificate");
            Ok(generated)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let winner = api.get(name).await.map_err(failed)?;
            read(&winner, name)
        }
        Err(source) => Err(failed(source)),
    }
}

/// Sets `ca_pem` as the `caBundle` of every webhook in MutatingWebhookConfiguration `name`,
/// writing only when one differs.
pub async fn ensure_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<bool, TlsError> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let failed = |source| TlsError::CaBundle {
        name: name.to_owned(),
        source,
    };
    let configuration = api.get(name).await.map_err(failed)?;
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks = configuration.webhooks.unwrap_or_default();
    let operations: Vec<serde_json::Value> = webhooks
        .iter()
        .enumerate()
        .filter(|(_, webhook)| webhook.client_config.ca_bundle.as_ref() != Some(&wanted))
        .map(|(index, _)| {
            serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{index}/clientConfig/caBundle"),
                "value": wanted,
            })
        })
        .collect();
    if operations.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
        .map_err(|error| failed(kube::Error::SerdeError(error)))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(failed)?;
    info!(configuration = %name, "set the webhook's caBundle");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_chain_to_the_ca_and_name_the_hosts() {
        let hosts = vec![
            "fedid-pods.fedid-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let generated = generate(
            &hosts,
            jiff::Timestamp::from_second(1_800_000_000).expect("time"),
        )
        .expect("generates");
        assert!(generated.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            generated
                .cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(generated.key_pem.contains("PRIVATE KEY"));
        assert_ne!(generated.ca_pem, generated.cert_pem);
        assert_eq!(format!("{generated:?}"), "ServingCertificate { .. }");
    }
}
