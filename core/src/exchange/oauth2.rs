//! RFC 8693 OAuth 2.0 Token Exchange: the request fedid sends to a token endpoint and the
//! meaning of its reply (RFC 6749 §5 for errors).

use base64::{Engine, engine::general_purpose::STANDARD};
use jiff::Timestamp;

use super::{
    ClientCredential, OutputFile, RequestBody, Upstream,
    azure::JWT_BEARER_ASSERTION,
    reply::{after, expires_in, form_encode, jwt_expiry_or, oauth_reply, string_field},
};
use crate::{
    crd::exchange::{ClientSecretMethod, OAuth2Exchange},
    credentials::token::Minted,
};

/// `grant_type` of a token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Default `subject_token_type`: fedid's token is a JWT.
pub const DEFAULT_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Secret key of the issued token.
pub const ACCESS_TOKEN_KEY: &str = "access-token";
/// Secret key of `token_type` (for example `Bearer`).
pub const TOKEN_TYPE_KEY: &str = "token-type";
/// Secret key of `issued_token_type`.
pub const ISSUED_TOKEN_TYPE_KEY: &str = "issued-token-type";

/// Headers and form of the exchange of `subject_token`, with the client's secret or signed
/// assertion in `client`.
pub(crate) fn request(
    spec: &OAuth2Exchange,
    subject_token: &str,
    client: Option<&ClientCredential>,
) -> (Vec<(String, String)>, RequestBody) {
    let mut form = vec![
        ("grant_type".to_owned(), GRANT_TYPE.to_owned()),
        ("subject_token".to_owned(), subject_token.to_owned()),
        (
            "subject_token_type".to_owned(),
            spec.subject_token_type
                .clone()
                .unwrap_or_else(|| DEFAULT_SUBJECT_TOKEN_TYPE.to_owned()),
        ),
    ];
    let optional = [
        ("audience", spec.audience.clone()),
        ("resource", spec.resource.clone()),
        (
            "scope",
            (!spec.scopes.is_empty()).then(|| spec.scopes.join(" ")),
        ),
        ("requested_token_type", spec.requested_token_type.clone()),
    ];
    form.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    form.extend(
        spec.extra_parameters
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    let mut headers = Vec::new();
    if let Some(auth) = &spec.client_auth {
        let basic = auth
            .client_secret
            .as_ref()
            .is_none_or(|secret| secret.method == ClientSecretMethod::Basic);
        match client {
            Some(ClientCredential::Secret(value)) if basic => {
                let pair = format!("{}:{}", form_encode(&auth.client_id), form_encode(value));
                headers.push((
                    "Authorization".to_owned(),
                    format!("Basic {}", STANDARD.encode(pair)),
                ));
            }
            Some(ClientCredential::Secret(value)) => {
                form.push(("client_id".to_owned(), auth.client_id.clone()));
                form.push(("client_secret".to_owned(), value.clone()));
            }
            // RFC 7523 §2.2; client_id is optional there, and some servers want it.
            Some(ClientCredential::Assertion(assertion)) => {
                form.push(("client_id".to_owned(), auth.client_id.clone()));
                form.push((
                    "client_assertion_type".to_owned(),
                    JWT_BEARER_ASSERTION.to_owned(),
                ));
                form.push(("client_assertion".to_owned(), assertion.clone()));
            }
            None => form.push(("client_id".to_owned(), auth.client_id.clone())),
        }
    }
    (headers, RequestBody::Form(form))
}

/// The credentials in a reply, or why there are none.
pub(crate) fn parse(
    status: u16,
    body: &[u8],
    subject: &Minted,
    now: Timestamp,
) -> Result<(Vec<OutputFile>, Timestamp), Upstream> {
    let object = oauth_reply(status, body)?;
    let access_token =
        string_field(&object, "access_token").ok_or(Upstream::Malformed("no access_token"))?;
    let token_type =
        string_field(&object, "token_type").ok_or(Upstream::Malformed("no token_type"))?;
    let expires_at = match expires_in(&object)? {
        None => jwt_expiry_or(access_token, subject.expires_at),
        Some(seconds) => after(now, seconds),
    };
    let mut files = vec![
        OutputFile {
            key: ACCESS_TOKEN_KEY,
            value: access_token.as_bytes().to_vec(),
        },
        OutputFile {
            key: TOKEN_TYPE_KEY,
            value: token_type.as_bytes().to_vec(),
        },
    ];
    if let Some(issued) = string_field(&object, "issued_token_type") {
        files.push(OutputFile {
            key: ISSUED_TOKEN_TYPE_KEY,
            value: issued.as_bytes().to_vec(),
        });
    }
    Ok((files, expires_at))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        exchange::{
            ExchangeError, Reply, Requester, build_request,
            tests::{at, parse_one, token, validated},
        },
        reason::{Failure, Reason},
    };

    fn form_of(request: &super::super::ExchangeRequest) -> Vec<(String, String)> {
        match &request.body {
            RequestBody::Form(form) => form.clone(),
            RequestBody::Json(_) => panic!("a form"),
        }
    }

    const REQUESTER: Requester<'static> = Requester {
        namespace: "ci",
        name: "deploy",
    };

    #[test]
    fn the_request_carries_every_parameter() {
        let exchange = validated(json!({"oauth2": {
            "tokenURL": "https://dex.example.com/token",
            "audience": "api",
            "resource": "https://api.example.com",
            "scopes": ["openid", "groups"],
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
            "extraParameters": {"connector_id": "fedid"},
            "clientAuth": {"clientID": "ci app", "clientSecret": {"secretRef": {"name": "dex"}}}
        }}));
        let secret = ClientCredential::Secret("s3cr:t".into());
        let request = build_request(&exchange, &token(), Some(&secret), REQUESTER);
        assert_eq!(request.url, "https://dex.example.com/token");
        assert_eq!(request.host, "dex.example.com");
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        assert_eq!(
            form_of(&request),
            pairs(&[
                ("grant_type", GRANT_TYPE),
                ("subject_token", "header.payload.signature"),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token"
                ),
                ("audience", "api"),
                ("resource", "https://api.example.com"),
                ("scope", "openid groups"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:access_token"
                ),
                ("connector_id", "fedid"),
            ])
        );
        // client_secret_basic: both halves form-encoded, then base64 (RFC 6749 §2.3.1).
        assert_eq!(
            request.headers,
            pairs(&[(
                "Authorization",
                &format!("Basic {}", STANDARD.encode("ci+app:s3cr%3At"))
            )])
        );
    }

    #[test]
    fn client_secret_post_and_public_clients() {
        let post = validated(json!({"oauth2": {
            "tokenURL": "https://kc.example.com/token",
            "clientAuth": {"clientID": "app", "clientSecret": {"secretRef": {"name": "c"}, "method": "post"}}
        }}));
        let request = build_request(
            &post,
            &token(),
            Some(&ClientCredential::Secret("pw".into())),
            REQUESTER,
        );
        assert!(request.headers.is_empty());
        let form = form_of(&request);
        assert!(form.contains(&("client_id".into(), "app".into())));
        assert!(form.contains(&("client_secret".into(), "pw".into())));
        assert!(form.contains(&(
            "subject_token_type".into(),
            DEFAULT_SUBJECT_TOKEN_TYPE.into()
        )));

        let none = validated(json!({"oauth2": {"tokenURL": "https://kc.example.com/token"}}));
        let form = form_of(&build_request(&none, &token(), None, REQUESTER));
        assert!(!form.iter().any(|(name, _)| name.starts_with("client_")));
    }

    #[test]
    fn private_key_jwt_sends_the_assertion_and_no_secret() {
        let exchange = validated(json!({"oauth2": {
            "tokenURL": "https://kc.example.com/token",
            "clientAuth": {"clientID": "ci-team", "privateKeyJWT": {}}
        }}));
        let assertion = ClientCredential::Assertion("a.b.c".into());
        let request = build_request(&exchange, &token(), Some(&assertion), REQUESTER);
        assert!(request.headers.is_empty());
        let form = form_of(&request);
        for pair in [
            ("client_id", "ci-team"),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_assertion", "a.b.c"),
            ("subject_token", "header.payload.signature"),
        ] {
            assert!(
                form.contains(&(pair.0.into(), pair.1.into())),
                "{pair:?} in {form:?}"
            );
        }
        assert!(!form.iter().any(|(name, _)| name == "client_secret"));
    }

    fn reply(status: u16, body: serde_json::Value) -> Reply {
        Reply::Response {
            status,
            retry_after: Some("7".into()),
            body: serde_json::to_vec(&body).expect("json"),
        }
    }

    fn exchange() -> crate::exchange::ValidatedExchange {
        validated(json!({"oauth2": {"tokenURL": "https://dex.example.com/token"}}))
    }

    #[test]
    fn a_success_yields_the_files_and_the_real_expiry() {
        let now = at(1_800_000_000);
        let exchanged = parse_one(
            &exchange(),
            &token(),
            &reply(
                200,
                json!({
                    "access_token": "at", "token_type": "Bearer", "expires_in": 600,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"
                }),
            ),
            now,
        )
        .expect("credentials");
        assert_eq!(exchanged.expires_at, at(1_800_000_600));
        let keys: Vec<_> = exchanged.files.iter().map(|file| file.key).collect();
        assert_eq!(
            keys,
            [ACCESS_TOKEN_KEY, TOKEN_TYPE_KEY, ISSUED_TOKEN_TYPE_KEY]
        );
        assert_eq!(exchanged.files[0].value, b"at");
        assert_eq!(exchanged.host, "dex.example.com");

        // Without expires_in, an opaque token lasts as long as the subject token.
        let opaque = parse_one(
            &exchange(),
            &token(),
            &reply(200, json!({"access_token": "at", "token_type": "Bearer"})),
            now,
        )
        .expect("credentials");
        assert_eq!(opaque.expires_at, token().expires_at);
    }

    #[test]
    fn errors_are_classified() {
        let now = at(1_800_000_000);
        let classify = |status, body| {
            parse_one(&exchange(), &token(), &reply(status, body), now).expect_err("an error")
        };
        for (status, body, reason, code) in [
            (
                400,
                json!({"error": "invalid_grant"}),
                Reason::ExchangeRejected,
                Some("invalid_grant"),
            ),
            (
                401,
                json!({"error": "invalid_client"}),
                Reason::ExchangeRejected,
                Some("invalid_client"),
            ),
            (403, json!({}), Reason::ExchangeRejected, None),
            (
                400,
                json!({"error": "temporarily_unavailable"}),
                Reason::ExchangeUnavailable,
                Some("temporarily_unavailable"),
            ),
            (
                503,
                json!({"error": "server_error"}),
                Reason::ExchangeUnavailable,
                Some("server_error"),
            ),
            (502, json!("<html>"), Reason::ExchangeUnavailable, None),
            (429, json!({}), Reason::ExchangeUnavailable, None),
            (
                200,
                json!({"token_type": "Bearer"}),
                Reason::ExchangeMalformed,
                None,
            ),
            (
                200,
                json!({"access_token": "a", "token_type": "B", "expires_in": "soon"}),
                Reason::ExchangeMalformed,
                None,
            ),
            (
                200,
                json!(["not", "an", "object"]),
                Reason::ExchangeMalformed,
                None,
            ),
            (302, json!({}), Reason::ExchangeMalformed, None),
        ] {
            let error = classify(status, body.clone());
            assert_eq!(error.reason(), reason, "{status} {body}");
            assert_eq!(error.upstream_code(), code, "{status} {body}");
        }
        // Retry-After is honoured on unavailability.
        let throttled = classify(429, json!({}));
        assert!(matches!(
            throttled,
            ExchangeError::Unavailable { retry_after: Some(delay), .. } if delay.as_secs() == 7
        ));
        assert_eq!(
            throttled.retry_after().map(|delay| delay.as_secs()),
            Some(7)
        );
        // No body, token or secret reaches the message.
        let rejected = classify(
            400,
            json!({"error": "invalid_grant", "error_description": "token header.payload.signature bad"}),
        );
        assert_eq!(
            rejected.to_string(),
            "dex.example.com rejected the exchange (HTTP 400, error invalid_grant)"
        );
    }
}
