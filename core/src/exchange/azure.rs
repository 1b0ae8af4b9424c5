//! Microsoft Entra workload identity federation: the OAuth 2.0 client credentials grant where the
//! client authenticates with fedid's token as a `client_assertion` (RFC 7523).

use jiff::Timestamp;

use super::{
    OutputFile, RequestBody, Upstream,
    oauth2::{ACCESS_TOKEN_KEY, TOKEN_TYPE_KEY},
    reply::{after, expires_in, oauth_reply, string_field},
};
use crate::crd::exchange::AzureExchange;

/// Default authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The token endpoint of `spec`: its `tokenURL`, or the tenant's endpoint at the authority.
pub(crate) fn token_url(spec: &AzureExchange) -> String {
    if let Some(url) = &spec.token_url {
        return url.clone();
    }
    let authority = spec
        .authority_host
        .as_deref()
        .unwrap_or(DEFAULT_AUTHORITY_HOST)
        .trim_end_matches('/');
    let tenant = spec.tenant_id.as_deref().unwrap_or_default();
    format!("{authority}/{tenant}/oauth2/v2.0/token")
}

/// The form of the grant with `jwt` as the client assertion.
pub(crate) fn request(spec: &AzureExchange, jwt: &str) -> (Vec<(String, String)>, RequestBody) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", spec.client_id.as_str()),
        ("scope", spec.scope.as_str()),
        ("client_assertion_type", JWT_BEARER_ASSERTION),
        ("client_assertion", jwt),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    (Vec::new(), RequestBody::Form(form))
}

/// The access token in a reply, or why there is none.
pub(crate) fn parse(
    status: u16,
    body: &[u8],
    now: Timestamp,
) -> Result<(Vec<OutputFile>, Timestamp), Upstream> {
    let object = oauth_reply(status, body)?;
    let access_token =
        string_field(&object, "access_token").ok_or(Upstream::Malformed("no access_token"))?;
    let token_type = string_field(&object, "token_type").unwrap_or("Bearer");
    let seconds = expires_in(&object)?.ok_or(Upstream::Malformed("no expires_in"))?;
    Ok((
        vec![
            OutputFile {
                key: ACCESS_TOKEN_KEY,
                value: access_token.as_bytes().to_vec(),
            },
            OutputFile {
                key: TOKEN_TYPE_KEY,
                value: token_type.as_bytes().to_vec(),
            },
        ],
        after(now, seconds),
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
        validated(json!({"azure": {
            "tenantID": "contoso.onmicrosoft.com", "clientID": "00000000-0000-0000-0000-000000000001",
            "scope": "https://management.azure.com/.default"
        }}))
    }

    #[test]
    fn the_grant_carries_the_token_as_client_assertion() {
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
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let RequestBody::Form(form) = request.body else {
            panic!("a form");
        };
        let expected: Vec<(String, String)> = [
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000001"),
            ("scope", "https://management.azure.com/.default"),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_assertion", "header.payload.signature"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
        assert_eq!(form, expected);
    }

    #[test]
    fn a_token_url_replaces_the_authority_path() {
        let custom = validated(json!({"azure": {
            "clientID": "azure-app", "scope": "openid",
            "tokenURL": "https://kc.example.com/realms/fedid/protocol/openid-connect/token"
        }}));
        assert_eq!(
            custom.endpoint.url(),
            "https://kc.example.com/realms/fedid/protocol/openid-connect/token"
        );
        let sovereign = validated(json!({"azure": {
            "tenantID": "t", "clientID": "c", "scope": "s",
            "authorityHost": "https://login.microsoftonline.us/"
        }}));
        assert_eq!(
            sovereign.endpoint.url(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
    }

    #[test]
    fn replies_are_judged() {
        let now = at(1_800_000_000);
        let reply = |status, body: serde_json::Value| Reply::Response {
            status,
            retry_after: None,
            body: serde_json::to_vec(&body).expect("json"),
        };
        let ok = parse_one(
            &exchange(),
            &token(),
            &reply(
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "eyA"}),
            ),
            now,
        )
        .expect("a token");
        assert_eq!(ok.expires_at, at(1_800_003_599));
        assert_eq!(ok.files[0].value, b"eyA");
        for (status, body, reason, code) in [
            (
                400,
                json!({"error": "invalid_client", "error_codes": [700_213]}),
                Reason::ExchangeRejected,
                Some("invalid_client"),
            ),
            (
                401,
                json!({"error": "unauthorized_client"}),
                Reason::ExchangeRejected,
                Some("unauthorized_client"),
            ),
            (
                400,
                json!({"error": "temporarily_unavailable"}),
                Reason::ExchangeUnavailable,
                Some("temporarily_unavailable"),
            ),
            (503, json!({}), Reason::ExchangeUnavailable, None),
            (
                200,
                json!({"access_token": "x"}),
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
