//! Google Cloud workload identity federation: Google's STS takes the token in an RFC 8693
//! exchange for a federated access token; with a service account, IAM Credentials'
//! `generateAccessToken` then trades that for the service account's own access token.
//! Beside the access token, fedid writes an `external_account.json` for SDKs that exchange by
//! themselves: it reads the token fedid keeps fresh at `<mountPath>/token`.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    OutputFile, RequestBody, Upstream,
    oauth2::{ACCESS_TOKEN_KEY, TOKEN_TYPE_KEY},
    reply::{after, expires_in, json_reply, oauth_reply, string_field},
};
use crate::{crd::exchange::GcpExchange, credentials::secret::TOKEN_KEY};

/// Google's STS token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

/// Where a service account's `generateAccessToken` lives, before its email.
pub const DEFAULT_IMPERSONATION_BASE: &str =
    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/";

/// The scope requested when the spec names none.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Secret key of the credential configuration for Google's SDKs
/// (`GOOGLE_APPLICATION_CREDENTIALS`).
pub const EXTERNAL_ACCOUNT_KEY: &str = "external_account.json";

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// What a GCP reply leads to.
pub(crate) enum Parsed {
    /// The credentials, with their expiry.
    Issued(Vec<OutputFile>, Timestamp),
    /// The federated token must still be traded for the service account's: the headers and
    /// body of that request.
    Impersonate(Vec<(String, String)>, RequestBody),
}

/// The STS endpoint of `spec`.
pub(crate) fn token_url(spec: &GcpExchange) -> String {
    spec.token_url
        .clone()
        .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned())
}

/// The `generateAccessToken` URL of `spec`'s service account, when it names one.
pub(crate) fn impersonation_url(spec: &GcpExchange) -> Option<String> {
    let email = spec.service_account_email.as_ref()?;
    Some(
        spec.impersonation_url
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_IMPERSONATION_BASE}{email}:generateAccessToken")),
    )
}

fn scopes(spec: &GcpExchange) -> Vec<String> {
    if spec.scopes.is_empty() {
        vec![CLOUD_PLATFORM_SCOPE.to_owned()]
    } else {
        spec.scopes.clone()
    }
}

/// The STS exchange of `jwt`: a form with no client authentication (STS authenticates the
/// token itself).
pub(crate) fn request(spec: &GcpExchange, jwt: &str) -> (Vec<(String, String)>, RequestBody) {
    let form = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("audience", spec.audience.as_str()),
        ("scope", scopes(spec).join(" ").as_str()),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token", jwt),
        ("subject_token_type", JWT_TOKEN_TYPE),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    (Vec::new(), RequestBody::Form(form))
}

/// The `generateAccessToken` request authenticated by the federated token.
fn impersonation_request(
    spec: &GcpExchange,
    federated_token: &str,
) -> (Vec<(String, String)>, RequestBody) {
    let mut body = json!({"scope": scopes(spec)});
    if let Some(seconds) = spec.token_lifetime_seconds {
        body["lifetime"] = json!(format!("{seconds}s"));
    }
    (
        vec![(
            "Authorization".to_owned(),
            format!("Bearer {federated_token}"),
        )],
        RequestBody::Json(body),
    )
}

/// Judges the STS reply (`impersonating` false) or the `generateAccessToken` reply (true).
pub(crate) fn parse(
    spec: &GcpExchange,
    impersonating: bool,
    status: u16,
    body: &[u8],
    now: Timestamp,
) -> Result<Parsed, Upstream> {
    if impersonating {
        let (access_token, expires_at) = parse_generated(status, body)?;
        return Ok(Parsed::Issued(files(spec, access_token), expires_at));
    }
    let object = oauth_reply(status, body)?;
    let federated =
        string_field(&object, "access_token").ok_or(Upstream::Malformed("no access_token"))?;
    if spec.service_account_email.is_some() {
        // It becomes the next request's `Authorization` header: visible ASCII only.
        if !federated.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Upstream::Malformed("access_token is not a bearer token"));
        }
        let (headers, body) = impersonation_request(spec, federated);
        return Ok(Parsed::Impersonate(headers, body));
    }
    let seconds = expires_in(&object)?.ok_or(Upstream::Malformed("no expires_in"))?;
    Ok(Parsed::Issued(
        files(spec, federated.to_owned()),
        after(now, seconds),
    ))
}

/// The service account's token and its `expireTime`, or the classified error (Google's error
/// object carries its `status` word, for example `PERMISSION_DENIED`).
fn parse_generated(status: u16, body: &[u8]) -> Result<(String, Timestamp), Upstream> {
    let object = json_reply(status, body, |object| {
        string_field(object.get("error")?.as_object()?, "status")
    })?;
    let access_token =
        string_field(&object, "accessToken").ok_or(Upstream::Malformed("no accessToken"))?;
    let expires_at = string_field(&object, "expireTime")
        .ok_or(Upstream::Malformed("no expireTime"))?
        .parse::<Timestamp>()
        .map_err(|_| Upstream::Malformed("expireTime is not an RFC 3339 time"))?;
    Ok((access_token.to_owned(), expires_at))
}

fn files(spec: &GcpExchange, access_token: String) -> Vec<OutputFile> {
    vec![
        OutputFile {
            key: ACCESS_TOKEN_KEY,
            value: access_token.into_bytes(),
        },
        OutputFile {
            key: TOKEN_TYPE_KEY,
            value: b"Bearer".to_vec(),
        },
        OutputFile {
            key: EXTERNAL_ACCOUNT_KEY,
            value: external_account(spec).to_string().into_bytes(),
        },
    ]
}

/// The `external_account` credential configuration of `spec`: Google's SDKs read the token
/// from `<mountPath>/token` and make the same exchange themselves.
pub fn external_account(spec: &GcpExchange) -> Value {
    let mut config = Map::new();
    config.insert("type".into(), json!("external_account"));
    config.insert("audience".into(), json!(spec.audience));
    config.insert("subject_token_type".into(), json!(JWT_TOKEN_TYPE));
    config.insert("token_url".into(), json!(token_url(spec)));
    if let Some(url) = impersonation_url(spec) {
        config.insert("service_account_impersonation_url".into(), json!(url));
        if let Some(seconds) = spec.token_lifetime_seconds {
            config.insert(
                "service_account_impersonation".into(),
                json!({"token_lifetime_seconds": seconds}),
            );
        }
    }
    let file = format!("{}/{TOKEN_KEY}", spec.mount_path.trim_end_matches('/'));
    config.insert(
        "credential_source".into(),
        json!({"file": file, "format": {"type": "text"}}),
    );
    Value::Object(config)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        exchange::{
            Reply, Requester, Stage, Step, build_request, parse_reply,
            tests::{at, token, validated},
        },
        reason::{Failure, Reason},
    };

    const PROVIDER: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/fedid";

    fn federated_only() -> crate::exchange::ValidatedExchange {
        validated(json!({"gcp": {"audience": PROVIDER}}))
    }

    fn impersonating() -> crate::exchange::ValidatedExchange {
        validated(json!({"gcp": {
            "audience": PROVIDER,
            "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"],
            "serviceAccountEmail": "ci@proj.iam.gserviceaccount.com",
            "tokenLifetimeSeconds": 1200,
            "mountPath": "/fedid/"
        }}))
    }

    fn reply(status: u16, body: &Value) -> Reply {
        Reply::Response {
            status,
            retry_after: None,
            body: serde_json::to_vec(body).expect("json"),
        }
    }

    const REQUESTER: Requester<'static> = Requester {
        namespace: "ci",
        name: "deploy",
    };

    #[test]
    fn the_sts_exchange_sends_the_token_with_googles_parameters_and_no_client() {
        let request = build_request(&federated_only(), &token(), None, REQUESTER);
        assert_eq!(request.url, DEFAULT_TOKEN_URL);
        assert_eq!(request.stage, Stage::Exchange);
        assert!(request.headers.is_empty());
        let RequestBody::Form(form) = request.body else {
            panic!("a form");
        };
        let expected: Vec<(String, String)> = [
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("audience", PROVIDER),
            ("scope", CLOUD_PLATFORM_SCOPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", "header.payload.signature"),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
        assert_eq!(form, expected);
    }

    #[test]
    fn without_a_service_account_the_federated_token_is_the_credential() {
        let now = at(1_800_000_000);
        let step = parse_reply(
            &federated_only(),
            &token(),
            Stage::Exchange,
            &reply(
                200,
                &json!({"access_token": "ya29.fed", "expires_in": 3599, "token_type": "Bearer",
                        "issued_token_type": ACCESS_TOKEN_TYPE}),
            ),
            now,
        )
        .expect("credentials");
        let Step::Done(exchanged) = step else {
            panic!("done after STS");
        };
        assert_eq!(exchanged.expires_at, at(1_800_003_599));
        let keys: Vec<&str> = exchanged.files.iter().map(|file| file.key).collect();
        assert_eq!(
            keys,
            [ACCESS_TOKEN_KEY, TOKEN_TYPE_KEY, EXTERNAL_ACCOUNT_KEY]
        );
        assert_eq!(exchanged.files[0].value, b"ya29.fed");
        let config: Value =
            serde_json::from_slice(&exchanged.files[2].value).expect("external_account JSON");
        assert_eq!(
            config,
            json!({
                "type": "external_account",
                "audience": PROVIDER,
                "subject_token_type": JWT_TOKEN_TYPE,
                "token_url": DEFAULT_TOKEN_URL,
                "credential_source": {"file": "/var/run/secrets/fedid/token", "format": {"type": "text"}}
            })
        );
    }

    #[test]
    fn with_a_service_account_the_federated_token_buys_the_accounts_token() {
        let exchange = impersonating();
        let now = at(1_800_000_000);
        let step = parse_reply(
            &exchange,
            &token(),
            Stage::Exchange,
            &reply(
                200,
                &json!({"access_token": "ya29.fed", "expires_in": 3599}),
            ),
            now,
        )
        .expect("a next request");
        let Step::Next(next) = step else {
            panic!("impersonation follows");
        };
        assert_eq!(next.stage, Stage::Impersonation);
        assert_eq!(
            next.url,
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ci@proj.iam.gserviceaccount.com:generateAccessToken"
        );
        assert_eq!(next.host, "iamcredentials.googleapis.com");
        assert_eq!(
            next.headers,
            [("Authorization".to_owned(), "Bearer ya29.fed".to_owned())]
        );
        assert_eq!(
            next.body,
            RequestBody::Json(json!({
                "scope": ["https://www.googleapis.com/auth/devstorage.read_only"],
                "lifetime": "1200s"
            }))
        );
        let done = parse_reply(
            &exchange,
            &token(),
            Stage::Impersonation,
            &reply(
                200,
                &json!({"accessToken": "ya29.sa", "expireTime": "2027-01-15T08:15:00Z"}),
            ),
            now,
        )
        .expect("credentials");
        let Step::Done(exchanged) = done else {
            panic!("done after impersonation");
        };
        assert_eq!(exchanged.host, "iamcredentials.googleapis.com");
        assert_eq!(exchanged.files[0].value, b"ya29.sa");
        assert_eq!(
            exchanged.expires_at,
            "2027-01-15T08:15:00Z".parse::<Timestamp>().expect("ts")
        );
        let config: Value = serde_json::from_slice(&exchanged.files[2].value).expect("JSON");
        assert_eq!(config["service_account_impersonation_url"], json!(next.url));
        assert_eq!(
            config["service_account_impersonation"],
            json!({"token_lifetime_seconds": 1200})
        );
        assert_eq!(config["credential_source"]["file"], json!("/fedid/token"));
    }

    #[test]
    fn both_endpoints_must_be_allowed() {
        let spec = crate::exchange::tests::spec(json!({"gcp": {
            "audience": PROVIDER,
            "serviceAccountEmail": "ci@proj.iam.gserviceaccount.com",
            "impersonationURL": "https://iam.elsewhere.example/v1/x:generateAccessToken"
        }}));
        let policy = crate::crd::ExchangePolicy {
            allowed_endpoints: vec!["https://sts.googleapis.com/".into()],
            ..crate::crd::ExchangePolicy::default()
        };
        let error = crate::exchange::validate(&spec, "ci", "team", Some(&policy))
            .expect_err("the impersonation URL is not allowed");
        assert_eq!(error.reason(), Reason::EndpointNotAllowed);
        assert!(
            error.to_string().contains("iam.elsewhere.example"),
            "{error}"
        );
        assert_eq!(
            impersonating()
                .impersonation
                .map(|endpoint| endpoint.host().to_owned()),
            Some("iamcredentials.googleapis.com".to_owned())
        );
        assert_eq!(federated_only().impersonation, None);
    }

    #[test]
    fn failures_of_either_step_are_classified_with_the_hosts_code() {
        let now = at(1_800_000_000);
        for (stage, status, body, reason, code, host) in [
            (
                Stage::Exchange,
                400,
                json!({"error": "invalid_grant", "error_description": "The audience in ID Token does not match"}),
                Reason::ExchangeRejected,
                Some("invalid_grant"),
                "sts.googleapis.com",
            ),
            (
                Stage::Exchange,
                503,
                json!({"error": "temporarily_unavailable"}),
                Reason::ExchangeUnavailable,
                Some("temporarily_unavailable"),
                "sts.googleapis.com",
            ),
            (
                Stage::Exchange,
                200,
                json!({"token_type": "Bearer"}),
                Reason::ExchangeMalformed,
                None,
                "sts.googleapis.com",
            ),
            (
                Stage::Impersonation,
                403,
                json!({"error": {"code": 403, "message": "Permission 'iam.serviceAccounts.getAccessToken' denied", "status": "PERMISSION_DENIED"}}),
                Reason::ExchangeRejected,
                Some("PERMISSION_DENIED"),
                "iamcredentials.googleapis.com",
            ),
            (
                Stage::Impersonation,
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
                Reason::ExchangeUnavailable,
                Some("RESOURCE_EXHAUSTED"),
                "iamcredentials.googleapis.com",
            ),
            (
                Stage::Impersonation,
                200,
                json!({"accessToken": "ya29.sa", "expireTime": "tomorrow"}),
                Reason::ExchangeMalformed,
                None,
                "iamcredentials.googleapis.com",
            ),
        ] {
            let error = parse_reply(
                &impersonating(),
                &token(),
                stage,
                &reply(status, &body),
                now,
            )
            .expect_err("an error");
            assert_eq!(error.reason(), reason, "{stage:?} {status} {body}");
            assert_eq!(error.upstream_code(), code, "{stage:?} {status} {body}");
            assert!(error.to_string().contains(host), "{error}");
        }
    }
}
