//! Vault / OpenBao JWT auth login: `POST <address>/v1/auth/<mount>/login` with `{role, jwt}`.

use jiff::Timestamp;
use serde_json::json;

use super::{
    ExchangeError, OutputFile, RequestBody, Upstream,
    reply::{after, json_reply, string_field},
};
use crate::{crd::exchange::VaultExchange, credentials::token::Minted};

/// Secret key of the Vault token.
pub const VAULT_TOKEN_KEY: &str = "vault-token";

/// The login URL of `spec`.
/// Checks what the schema cannot be trusted to have checked (an object written with validation
/// off): the namespace must be sendable as a header.
pub(crate) fn check_settings(spec: &VaultExchange) -> Result<(), ExchangeError> {
    let valid = |namespace: &str| {
        !namespace.is_empty()
            && namespace
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._/-".contains(&byte))
    };
    match &spec.vault_namespace {
        Some(namespace) if !valid(namespace) => Err(ExchangeError::InvalidSetting {
            field: "vault.vaultNamespace",
            problem: "only letters, digits and . _ - / are allowed".into(),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn login_url(spec: &VaultExchange) -> String {
    format!(
        "{}/v1/auth/{}/login",
        spec.address.trim_end_matches('/'),
        spec.auth_mount.trim_matches('/')
    )
}

/// Headers and body of the login with `jwt`.
pub(crate) fn request(spec: &VaultExchange, jwt: &str) -> (Vec<(String, String)>, RequestBody) {
    let headers = spec
        .vault_namespace
        .iter()
        .map(|namespace| ("X-Vault-Namespace".to_owned(), namespace.clone()))
        .collect();
    (
        headers,
        RequestBody::Json(json!({"role": spec.role, "jwt": jwt})),
    )
}

/// The token in a login reply, or why there is none. A lease of 0 (a token that never expires)
/// is refreshed with the subject token.
pub(crate) fn parse(
    status: u16,
    body: &[u8],
    subject: &Minted,
    now: Timestamp,
) -> Result<(Vec<OutputFile>, Timestamp), Upstream> {
    // Vault's errors are sentences; the first one is the code reported.
    let object = json_reply(status, body, |object| {
        object
            .get("errors")?
            .get(0)?
            .as_str()
            .filter(|error| !error.is_empty())
    })?;
    let auth = object
        .get("auth")
        .and_then(|auth| auth.as_object())
        .ok_or(Upstream::Malformed("no auth object"))?;
    let token = string_field(auth, "client_token").ok_or(Upstream::Malformed("no client_token"))?;
    let lease = auth
        .get("lease_duration")
        .and_then(serde_json::Value::as_u64)
        .ok_or(Upstream::Malformed("no lease_duration"))?;
    let expires_at = if lease == 0 {
        subject.expires_at
    } else {
        after(now, lease)
    };
    Ok((
        vec![OutputFile {
            key: VAULT_TOKEN_KEY,
            value: token.as_bytes().to_vec(),
        }],
        expires_at,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        exchange::{
            Reply, Requester, build_request,
            tests::{at, parse_one, token, validated},
        },
        reason::{Failure, Reason},
    };

    fn exchange() -> crate::exchange::ValidatedExchange {
        validated(json!({"vault": {
            "address": "https://bao.example.com:8200/", "authMount": "ci/jwt", "role": "deploy",
            "vaultNamespace": "team-a"
        }}))
    }

    #[test]
    fn the_login_request() {
        let request = build_request(
            &exchange(),
            &token(),
            None,
            Requester {
                namespace: "ci",
                name: "deploy",
            },
        );
        assert_eq!(
            request.url,
            "https://bao.example.com:8200/v1/auth/ci/jwt/login"
        );
        assert_eq!(
            request.headers,
            vec![("X-Vault-Namespace".to_owned(), "team-a".to_owned())]
        );
        assert_eq!(
            request.body,
            RequestBody::Json(json!({"role": "deploy", "jwt": "header.payload.signature"}))
        );
        let default_mount =
            validated(json!({"vault": {"address": "https://b.example.com", "role": "r"}}));
        assert_eq!(
            default_mount.endpoint.url(),
            "https://b.example.com/v1/auth/jwt/login"
        );
    }

    fn reply(status: u16, body: serde_json::Value) -> Reply {
        Reply::Response {
            status,
            retry_after: None,
            body: serde_json::to_vec(&body).expect("json"),
        }
    }

    #[test]
    fn a_login_yields_the_token_and_its_lease() {
        let now = at(1_800_000_000);
        let exchanged = parse_one(
            &exchange(),
            &token(),
            &reply(200, json!({"auth": {"client_token": "s.abc", "lease_duration": 1200, "renewable": true}})),
            now,
        )
        .expect("a token");
        assert_eq!(exchanged.expires_at, at(1_800_001_200));
        assert_eq!(exchanged.files[0].key, VAULT_TOKEN_KEY);
        assert_eq!(exchanged.files[0].value, b"s.abc");
        let forever = parse_one(
            &exchange(),
            &token(),
            &reply(
                200,
                json!({"auth": {"client_token": "s.abc", "lease_duration": 0}}),
            ),
            now,
        )
        .expect("a token");
        assert_eq!(forever.expires_at, token().expires_at);
    }

    #[test]
    fn errors_are_classified() {
        let now = at(1_800_000_000);
        for (status, body, reason, code) in [
            (
                400,
                json!({"errors": ["permission denied"]}),
                Reason::ExchangeRejected,
                Some("permission denied"),
            ),
            (403, json!({"errors": []}), Reason::ExchangeRejected, None),
            (
                503,
                json!({"errors": ["Vault is sealed"]}),
                Reason::ExchangeUnavailable,
                Some("Vault is sealed"),
            ),
            (429, json!({}), Reason::ExchangeUnavailable, None),
            (200, json!({"auth": null}), Reason::ExchangeMalformed, None),
            (
                200,
                json!({"auth": {"client_token": "x"}}),
                Reason::ExchangeMalformed,
                None,
            ),
        ] {
            let error = parse_one(&exchange(), &token(), &reply(status, body.clone()), now)
                .expect_err("an error");
            assert_eq!(error.reason(), reason, "{status} {body}");
            assert_eq!(error.upstream_code(), code, "{status} {body}");
        }
    }
}
