//! The render phase: the output Secret's desired contents, from the validated identity and the
//! credentials the exchange phase produced.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    credentials::secret::{
        CREDENTIALS_EXPIRE_AT_ANNOTATION, DATA_DIGEST_ANNOTATION, EXCHANGE_DIGEST_ANNOTATION,
        EXPIRES_AT_KEY, IDENTITY_LABEL, KEY_ID_ANNOTATION, OUTPUT_DIGEST_ANNOTATION, TOKEN_KEY,
        UNSIGNED_TOKEN_ANNOTATION, data_digest, identity_label_value, unsigned_token,
    },
    exchange::Credentials,
    identity::template::TemplateError,
    identity::validate::ValidatedIdentity,
    time::whole_seconds,
};

/// The render phase: the Secret of `identity` holding `credentials`: of the type
/// `output.secretType` asks for (`Opaque` by default), data keys [`TOKEN_KEY`] (or, without
/// the subject token, the [`UNSIGNED_TOKEN_ANNOTATION`]) and [`EXPIRES_AT_KEY`] plus the
/// exchange's files and the rendered `output.template` keys, fedid's labels, the signing key's
/// ID (for an exchange, the spec digest and the credentials' expiry; for templates, their
/// digest) as annotations, and a controller owner reference to the identity so the Secret is
/// garbage-collected with it.
pub fn render_secret(
    identity: &ValidatedIdentity,
    credentials: &Credentials,
) -> Result<Secret, TemplateError> {
    render_secret_with(identity, credentials, BTreeMap::new())
}

/// [`render_secret`] with `extra` data keys fedid writes besides its usual ones (for a pod, the
/// token endpoint's CA), which templates see and may not overwrite.
pub fn render_secret_with(
    identity: &ValidatedIdentity,
    credentials: &Credentials,
    extra: BTreeMap<String, Vec<u8>>,
) -> Result<Secret, TemplateError> {
    let token = &credentials.token;
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (
            IDENTITY_LABEL.to_owned(),
            identity_label_value(&identity.name),
        ),
    ]);
    let mut annotations = BTreeMap::from([(KEY_ID_ANNOTATION.to_owned(), token.key_id.clone())]);
    let mut data = BTreeMap::from([(
        EXPIRES_AT_KEY.to_owned(),
        ByteString(
            whole_seconds(credentials.expires_at())
                .to_string()
                .into_bytes(),
        ),
    )]);
    if identity.include_subject_token {
        data.insert(
            TOKEN_KEY.to_owned(),
            ByteString(token.jwt.as_bytes().to_vec()),
        );
    } else {
        annotations.insert(
            UNSIGNED_TOKEN_ANNOTATION.to_owned(),
            unsigned_token(&token.jwt),
        );
    }
    if let Some(exchanged) = &credentials.exchanged {
        annotations.insert(
            EXCHANGE_DIGEST_ANNOTATION.to_owned(),
            exchanged.spec_digest.clone(),
        );
        annotations.insert(
            CREDENTIALS_EXPIRE_AT_ANNOTATION.to_owned(),
            whole_seconds(exchanged.expires_at).to_string(),
        );
        data.extend(
            exchanged
                .files
                .iter()
                .map(|file| (file.key.to_owned(), ByteString(file.value.clone()))),
        );
    }
    data.extend(
        extra
            .into_iter()
            .map(|(key, value)| (key, ByteString(value))),
    );
    if let Some(digest) = identity.output.digest() {
        annotations.insert(OUTPUT_DIGEST_ANNOTATION.to_owned(), digest);
        let fedid_keys: BTreeMap<String, Vec<u8>> = data
            .iter()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect();
        let rendered = identity.output.render(
            credentials,
            identity.exchange.as_ref().map(|exchange| exchange.kind),
            identity.include_subject_token,
            &fedid_keys,
        )?;
        data.extend(
            rendered
                .into_iter()
                .map(|(key, value)| (key, ByteString(value))),
        );
    }
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(identity.secret_name.clone()),
            namespace: Some(identity.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![identity.owner.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some(identity.output.secret_type().as_str().to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    let digest = data_digest(&secret);
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.insert(DATA_DIGEST_ANNOTATION.to_owned(), digest);
    }
    Ok(secret)
}

/// Annotation keys of fedid's own (`fedid.dev/…`); others on its Secrets are left alone.
const FEDID_ANNOTATION_PREFIX: &str = "fedid.dev/";

/// The JSON merge patch that removes from `existing` (fedid's own Secret, as last seen) the data
/// keys and fedid annotations that `desired` no longer has, such as an exchange's files once the
/// exchange is removed; `None` when nothing is left over. Server-side apply only drops the
/// fields that its own apply set before: the ones written by the create, or by hand, would stay.
pub fn leftover_entries(existing: &Secret, desired: &Secret) -> Option<serde_json::Value> {
    let wanted_data = desired.data.as_ref();
    let data: serde_json::Map<String, serde_json::Value> = existing
        .data
        .iter()
        .flatten()
        .map(|(key, _)| key)
        .filter(|key| !wanted_data.is_some_and(|wanted| wanted.contains_key(*key)))
        .map(|key| (key.clone(), serde_json::Value::Null))
        .collect();
    let wanted_annotations = desired.metadata.annotations.as_ref();
    let annotations: serde_json::Map<String, serde_json::Value> = existing
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with(FEDID_ANNOTATION_PREFIX))
        .filter(|key| !wanted_annotations.is_some_and(|wanted| wanted.contains_key(*key)))
        .map(|key| (key.clone(), serde_json::Value::Null))
        .collect();
    if data.is_empty() && annotations.is_empty() {
        return None;
    }
    let mut patch = serde_json::json!({});
    if !data.is_empty() {
        patch["data"] = serde_json::Value::Object(data);
    }
    if !annotations.is_empty() {
        patch["metadata"] = serde_json::json!({"annotations": annotations});
    }
    Some(patch)
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use kube_core::Resource;
    use serde_json::json;

    use super::*;
    use crate::{
        claims::{ClaimTemplate, ClaimsInput, SubjectTemplate},
        crd::{Duration, FederatedIdentity, FederatedIdentitySpec},
        credentials::{
            secret::{Ownership, ownership},
            token::Minted,
        },
        identity::template::OutputTemplates,
    };

    const UID: &str = "6f1d2c3b-0000-4000-8000-000000000001";

    fn identity(name: &str) -> ValidatedIdentity {
        let spec: FederatedIdentitySpec =
            serde_json::from_value(json!({"audiences": ["sts.amazonaws.com"]})).expect("spec");
        let mut resource = FederatedIdentity::new(name, spec);
        resource.metadata.namespace = Some("ci".into());
        resource.metadata.uid = Some(UID.into());
        let claims = ClaimTemplate::build(&ClaimsInput {
            issuer_url: "https://issuer.example.com",
            subject_template: &SubjectTemplate::parse("{namespace}:{name}").expect("template"),
            issuer_claims: &[],
            namespace: "ci",
            name,
            identity_claims: &[],
            audiences: &["sts.amazonaws.com".to_owned()],
            lifetime: Duration::from_hours(1),
            pod: None,
        })
        .expect("claims");
        ValidatedIdentity {
            namespace: "ci".into(),
            name: name.into(),
            uid: UID.into(),
            owner: resource.controller_owner_ref(&()).expect("owner"),
            issuer: "ci".into(),
            secret_name: "deploy-token".into(),
            claims,
            exchange: None,
            include_subject_token: true,
            output: OutputTemplates::default(),
            renew_requested_at: None,
        }
    }

    fn credentials(jwt: &str, key_id: &str) -> Credentials {
        Credentials {
            token: Minted {
                jwt: jwt.into(),
                key_id: key_id.into(),
                issued_at: Timestamp::from_second(1_800_000_000).expect("valid timestamp"),
                expires_at: Timestamp::from_second(1_800_003_600).expect("valid timestamp"),
            },
            exchanged: None,
        }
    }

    #[test]
    fn renders_the_exact_secret() {
        let secret =
            render_secret(&identity("deploy"), &credentials("a.b.c", "kid-1")).expect("renders");
        assert_eq!(
            serde_json::to_value(&secret).expect("serializes"),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "deploy-token",
                    "namespace": "ci",
                    "labels": {
                        "app.kubernetes.io/managed-by": "fedid",
                        "fedid.dev/identity": "deploy"
                    },
                    "annotations": {
                        "fedid.dev/key-id": "kid-1",
                        // data_digest of the data below
                        "fedid.dev/data-digest": "a4d0a2431a2ba81f"
                    },
                    "ownerReferences": [{
                        "apiVersion": "fedid.dev/v1alpha1",
                        "kind": "FederatedIdentity",
                        "name": "deploy",
                        "uid": UID,
                        "controller": true
                    }]
                },
                "type": "Opaque",
                "data": {
                    // base64 of "a.b.c" and "2027-01-15T09:00:00Z"
                    "token": "YS5iLmM=",
                    "expires-at": "MjAyNy0wMS0xNVQwOTowMDowMFo="
                }
            })
        );
    }

    #[test]
    fn the_rendered_secret_is_owned_by_its_identity_and_labelled() {
        let long = format!("{}.x", "a".repeat(100));
        let secret = render_secret(&identity(&long), &credentials("t", "k")).expect("renders");
        assert_eq!(ownership(Some(&secret), UID), Ownership::Ours);
        assert_eq!(
            secret.metadata.labels.expect("labels")[IDENTITY_LABEL],
            identity_label_value(&long)
        );
    }

    #[test]
    fn leftovers_are_the_data_keys_and_fedid_annotations_no_longer_rendered() {
        let plain =
            render_secret(&identity("deploy"), &credentials("a.b.c", "kid-1")).expect("renders");
        assert_eq!(leftover_entries(&plain, &plain), None);
        let mut with_exchange = plain.clone();
        if let Some(data) = with_exchange.data.as_mut() {
            data.insert("access-token".into(), ByteString(b"at".to_vec()));
        }
        if let Some(annotations) = with_exchange.metadata.annotations.as_mut() {
            annotations.insert(EXCHANGE_DIGEST_ANNOTATION.into(), "d1".into());
            annotations.insert("example.com/note".into(), "a user's".into());
        }
        assert_eq!(
            leftover_entries(&with_exchange, &plain),
            Some(json!({
                "data": {"access-token": null},
                "metadata": {"annotations": {"fedid.dev/exchange-digest": null}}
            }))
        );
        // What the desired Secret adds is the apply's business, not a leftover.
        assert_eq!(leftover_entries(&plain, &with_exchange), None);
    }
}
