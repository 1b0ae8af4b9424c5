//! AWS STS `AssumeRoleWithWebIdentity` over the query API, and the files AWS SDKs read: a
//! shared-credentials file, a `credential_process` JSON document and a config profile that
//! runs it (so SDKs re-read the credentials before they expire).

use jiff::Timestamp;
use serde_json::json;

use super::{
    ExchangeError, OutputFile, RequestBody, Requester, Upstream,
    reply::{unexpected_status, xml_text},
};
use crate::crd::exchange::AwsExchange;

/// STS API version.
pub const STS_VERSION: &str = "2011-06-15";
/// Default session name template.
pub const DEFAULT_SESSION_NAME: &str = "fedid-{namespace}-{name}";
/// Longest session name STS accepts.
pub const MAX_SESSION_NAME: usize = 64;

/// Secret key of the shared-credentials file (`AWS_SHARED_CREDENTIALS_FILE`).
pub const CREDENTIALS_KEY: &str = "credentials";
/// Secret key of the `credential_process` output document.
pub const CREDENTIAL_PROCESS_KEY: &str = "credential-process.json";
/// Secret key of the config file (`AWS_CONFIG_FILE`).
pub const CONFIG_KEY: &str = "config";

/// STS error codes that mean "try again later".
const RETRYABLE_CODES: [&str; 6] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "IDPCommunicationError",
    "ServiceUnavailable",
    "InternalFailure",
];

/// The STS endpoint of `spec`.
pub(crate) fn endpoint_url(spec: &AwsExchange) -> String {
    match (&spec.sts_endpoint, &spec.region) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(region)) => format!("https://sts.{region}.amazonaws.com/"),
        (None, None) => "https://sts.amazonaws.com/".to_owned(),
    }
}

/// Checks what the schema cannot: the session name's placeholders.
pub(crate) fn check(spec: &AwsExchange) -> Result<(), ExchangeError> {
    let template = spec.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME);
    let stripped = template.replace("{namespace}", "").replace("{name}", "");
    if stripped.contains(['{', '}']) {
        return Err(ExchangeError::InvalidSetting {
            field: "aws.sessionName",
            problem: "the only placeholders are {namespace} and {name}".to_owned(),
        });
    }
    Ok(())
}

/// The session name for `requester`: the template rendered, characters STS refuses replaced
/// by `-`, cut to 64 characters and padded to STS's minimum of 2.
pub fn session_name(template: Option<&str>, requester: Requester<'_>) -> String {
    let rendered = template
        .unwrap_or(DEFAULT_SESSION_NAME)
        .replace("{namespace}", requester.namespace)
        .replace("{name}", requester.name);
    let mut name: String = rendered
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || "_=,.@-".contains(character) {
                character
            } else {
                '-'
            }
        })
        .take(MAX_SESSION_NAME)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// The form of the request with `jwt`.
pub(crate) fn request(
    spec: &AwsExchange,
    jwt: &str,
    requester: Requester<'_>,
) -> (Vec<(String, String)>, RequestBody) {
    let mut form = vec![
        ("Action".to_owned(), "AssumeRoleWithWebIdentity".to_owned()),
        ("Version".to_owned(), STS_VERSION.to_owned()),
        ("RoleArn".to_owned(), spec.role_arn.clone()),
        (
            "RoleSessionName".to_owned(),
            session_name(spec.session_name.as_deref(), requester),
        ),
        ("WebIdentityToken".to_owned(), jwt.to_owned()),
    ];
    if let Some(seconds) = spec.duration_seconds {
        form.push(("DurationSeconds".to_owned(), seconds.to_string()));
    }
    (Vec::new(), RequestBody::Form(form))
}

/// The credentials in an STS reply, as the three files SDKs read, or why there are none.
pub(crate) fn parse(
    spec: &AwsExchange,
    status: u16,
    body: &[u8],
) -> Result<(Vec<OutputFile>, Timestamp), Upstream> {
    if let Some(unexpected) = unexpected_status(status) {
        return Err(unexpected);
    }
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        let code = xml_text(&text, "Code");
        return Err(match code {
            Some(code) if RETRYABLE_CODES.contains(&code.as_str()) => {
                Upstream::Unavailable(Some(code))
            }
            code => Upstream::by_status(status, code),
        });
    }
    let field = |tag, missing| xml_text(&text, tag).ok_or(Upstream::Malformed(missing));
    let access_key = field("AccessKeyId", "no AccessKeyId")?;
    let secret_key = field("SecretAccessKey", "no SecretAccessKey")?;
    let session_token = field("SessionToken", "no SessionToken")?;
    let expiration: Timestamp = field("Expiration", "no Expiration")?
        .parse()
        .map_err(|_| Upstream::Malformed("Expiration is not a timestamp"))?;
    let expiration_text = crate::time::whole_seconds(expiration).to_string();
    let credentials = format!(
        "[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n\
         aws_session_token = {session_token}\n"
    );
    let process = json!({
        "Version": 1,
        "AccessKeyId": access_key,
        "SecretAccessKey": secret_key,
        "SessionToken": session_token,
        "Expiration": expiration_text,
    });
    let mut config = format!(
        "[default]\ncredential_process = cat {}/{CREDENTIAL_PROCESS_KEY}\n",
        spec.mount_path.trim_end_matches('/')
    );
    if let Some(region) = &spec.region {
        config.push_str(&format!("region = {region}\n"));
    }
    Ok((
        vec![
            OutputFile {
                key: CREDENTIALS_KEY,
                value: credentials.into_bytes(),
            },
            OutputFile {
                key: CREDENTIAL_PROCESS_KEY,
                value: process.to_string().into_bytes(),
            },
            OutputFile {
                key: CONFIG_KEY,
                value: config.into_bytes(),
            },
        ],
        expiration,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        crd::ExchangePolicy,
        exchange::{
            Reply, build_request,
            tests::{at, parse_one, spec, token, validated},
            validate,
        },
        reason::{Failure, Reason},
    };

    const REQUESTER: Requester<'static> = Requester {
        namespace: "team-a",
        name: "deploy",
    };

    fn exchange() -> crate::exchange::ValidatedExchange {
        validated(json!({"aws": {
            "roleARN": "arn:aws:iam::123456789012:role/ci", "durationSeconds": 900,
            "region": "eu-west-1", "mountPath": "/creds/"
        }}))
    }

    #[test]
    fn the_request_and_the_default_endpoints() {
        let request = build_request(&exchange(), &token(), None, REQUESTER);
        assert_eq!(request.url, "https://sts.eu-west-1.amazonaws.com/");
        let RequestBody::Form(form) = request.body else {
            panic!("a form");
        };
        let expected: Vec<(String, String)> = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", STS_VERSION),
            ("RoleArn", "arn:aws:iam::123456789012:role/ci"),
            ("RoleSessionName", "fedid-team-a-deploy"),
            ("WebIdentityToken", "header.payload.signature"),
            ("DurationSeconds", "900"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
        assert_eq!(form, expected);
        let global = validated(json!({"aws": {"roleARN": "arn:aws:iam::1:role/ci-role"}}));
        assert_eq!(global.endpoint.url(), "https://sts.amazonaws.com/");
    }

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(
            session_name(Some("{namespace}/{name} x"), REQUESTER),
            "team-a-deploy-x"
        );
        assert_eq!(
            session_name(
                Some("{name}"),
                Requester {
                    namespace: "n",
                    name: "a"
                }
            ),
            "a-"
        );
        assert_eq!(
            session_name(Some(&"y".repeat(100)), REQUESTER).len(),
            MAX_SESSION_NAME
        );
        let bad = spec(
            json!({"aws": {"roleARN": "arn:aws:iam::1:role/ci-role", "sessionName": "{uid}"}}),
        );
        let policy = ExchangePolicy {
            allowed_endpoints: vec!["https://sts.amazonaws.com".into()],
            ..ExchangePolicy::default()
        };
        let error = validate(&bad, "ci", "team", Some(&policy)).expect_err("bad placeholder");
        assert_eq!(error.reason(), Reason::InvalidExchange);
        assert!(error.to_string().contains("aws.sessionName"), "{error}");
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply::Response {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_success_yields_the_three_sdk_files() {
        let body = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <AccessKeyId>AKIAEXAMPLE</AccessKeyId><SecretAccessKey>se/cret+</SecretAccessKey>
    <SessionToken>tok&amp;en</SessionToken><Expiration>2027-01-15T08:15:00.123Z</Expiration>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let exchanged =
            parse_one(&exchange(), &token(), &reply(200, body), at(1_800_000_000)).expect("ok");
        assert_eq!(
            exchanged.expires_at,
            "2027-01-15T08:15:00.123Z".parse::<Timestamp>().expect("ts")
        );
        let file = |key| {
            let file = exchanged
                .files
                .iter()
                .find(|file| file.key == key)
                .expect(key);
            String::from_utf8(file.value.clone()).expect("utf-8")
        };
        assert_eq!(
            file(CREDENTIALS_KEY),
            "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = se/cret+\naws_session_token = tok&en\n"
        );
        let process: Value = serde_json::from_str(&file(CREDENTIAL_PROCESS_KEY)).expect("json");
        assert_eq!(
            process,
            json!({"Version": 1, "AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": "se/cret+",
                   "SessionToken": "tok&en", "Expiration": "2027-01-15T08:15:00Z"})
        );
        assert_eq!(
            file(CONFIG_KEY),
            "[default]\ncredential_process = cat /creds/credential-process.json\nregion = eu-west-1\n"
        );
    }

    #[test]
    fn errors_are_classified() {
        let error_body = |code: &str| {
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>"
            )
        };
        for (status, body, reason, code) in [
            (400, error_body("InvalidIdentityToken"), Reason::ExchangeRejected, Some("InvalidIdentityToken")),
            (403, error_body("AccessDenied"), Reason::ExchangeRejected, Some("AccessDenied")),
            (400, error_body("IDPCommunicationError"), Reason::ExchangeUnavailable, Some("IDPCommunicationError")),
            (400, error_body("Throttling"), Reason::ExchangeUnavailable, Some("Throttling")),
            (500, "oops".to_owned(), Reason::ExchangeUnavailable, None),
            (200, "<x/>".to_owned(), Reason::ExchangeMalformed, None),
            (200, "<AccessKeyId>a</AccessKeyId><SecretAccessKey>b</SecretAccessKey><SessionToken>c</SessionToken><Expiration>later</Expiration>".to_owned(), Reason::ExchangeMalformed, None),
        ] {
            let error = parse_one(&exchange(), &token(), &reply(status, &body), at(0))
                .expect_err("an error");
            assert_eq!(error.reason(), reason, "{status} {body}");
            assert_eq!(error.upstream_code(), code, "{status} {body}");
        }
    }
}
