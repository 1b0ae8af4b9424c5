//! Property tests of the exchange replies (`fedid_core::exchange::parse_reply`) for every
//! kind, the endpoint URL parser and `Retry-After`, through the public API: any status and
//! any body (near-valid JSON and XML, deeply nested JSON, 64 KB, not UTF-8) never panic and
//! end in credentials or a typed exchange error; the error codes that reach status and Events
//! stay short and printable; and a valid reply gives back exactly the values put in.

use std::collections::BTreeMap;

use fedid_core::{
    crd::{ExchangePolicy, ExchangeSpec},
    credentials::token::Minted,
    exchange::{
        Endpoint, ExchangeError, Exchanged, MAX_RETRY_AFTER, Reply, Stage, Step, Transport,
        ValidatedExchange, parse_reply, parse_retry_after, validate,
    },
    reason::{Failure, Reason, Retry},
};
use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

const T0: i64 = 1_800_000_000;
const PROVIDER: &str =
    "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/fedid";

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid timestamp")
}

fn token() -> Minted {
    Minted {
        jwt: "header.payload.signature".into(),
        key_id: "kid-1".into(),
        issued_at: at(T0),
        expires_at: at(T0 + 3600),
    }
}

fn exchange(spec: Value) -> ValidatedExchange {
    let spec: ExchangeSpec = serde_json::from_value(spec).expect("exchange spec");
    let policy = ExchangePolicy {
        allowed_endpoints: vec![
            "https://sts.example.com".into(),
            "https://vault.example.com".into(),
            "https://sts.amazonaws.com".into(),
            "https://login.microsoftonline.com".into(),
            "https://sts.googleapis.com/v1/".into(),
            "https://iamcredentials.googleapis.com/v1/".into(),
        ],
        private_key_jwt_client_ids: Vec::new(),
    };
    validate(&spec, "ci", "team", Some(&policy)).expect("valid exchange")
}

fn oauth2() -> ValidatedExchange {
    exchange(json!({"oauth2": {"tokenURL": "https://sts.example.com/token"}}))
}
fn vault() -> ValidatedExchange {
    exchange(json!({"vault": {"address": "https://vault.example.com", "role": "ci"}}))
}
fn aws() -> ValidatedExchange {
    exchange(json!({"aws": {"roleARN": "arn:aws:iam::123456789012:role/ci", "mountPath": "/aws"}}))
}
fn azure() -> ValidatedExchange {
    exchange(json!({"azure": {"tenantID": "t", "clientID": "c", "scope": "s"}}))
}
fn gcp() -> ValidatedExchange {
    exchange(json!({"gcp": {"audience": PROVIDER}}))
}
fn gcp_impersonating() -> ValidatedExchange {
    exchange(
        json!({"gcp": {"audience": PROVIDER, "serviceAccountEmail": "ci@p.iam.gserviceaccount.com"}}),
    )
}

/// Every exchange with the stages its replies may answer.
fn all_exchanges() -> Vec<(&'static str, ValidatedExchange, Stage)> {
    vec![
        ("oauth2", oauth2(), Stage::Exchange),
        ("vault", vault(), Stage::Exchange),
        ("aws", aws(), Stage::Exchange),
        ("azure", azure(), Stage::Exchange),
        ("gcp", gcp(), Stage::Exchange),
        ("gcp", gcp_impersonating(), Stage::Exchange),
        ("gcp", gcp_impersonating(), Stage::Impersonation),
    ]
}

fn response(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply::Response {
        status,
        retry_after: None,
        body: body.into(),
    }
}

/// A credentials verdict, or the error's checks: a reply-caused error has one of the three
/// reply reasons, backs off, names the host, and keeps its upstream code short and printable.
fn check_outcome(
    kind: &str,
    result: &Result<Step, ExchangeError>,
    status: u16,
) -> Result<(), TestCaseError> {
    match result {
        Ok(_) => prop_assert_eq!(status, 200, "{}: credentials from HTTP {}", kind, status),
        Err(error) => {
            prop_assert!(
                [
                    Reason::ExchangeRejected,
                    Reason::ExchangeUnavailable,
                    Reason::ExchangeMalformed
                ]
                .contains(&error.reason()),
                "{}: {:?}",
                kind,
                error
            );
            prop_assert_eq!(error.retry(), Retry::Backoff);
            prop_assert!(error.host().is_some_and(|host| !host.is_empty()));
            prop_assert!(!error.to_string().is_empty());
            if let Some(code) = error.upstream_code() {
                prop_assert!(code.chars().count() <= 64, "{}: code {:?}", kind, code);
                prop_assert!(
                    code.chars().all(|c| c.is_ascii_graphic() || c == ' '),
                    "{}: code {:?}",
                    kind,
                    code
                );
            }
            prop_assert!(
                error
                    .retry_after()
                    .is_none_or(|delay| delay <= MAX_RETRY_AFTER)
            );
        }
    }
    Ok(())
}

/// Bodies close to what token services send, with hostile values.
fn reply_body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[0-9]{1,25}".prop_map(Value::from),
        Just(json!({})),
        Just(json!([])),
        Just(json!({"status": "PERMISSION_DENIED"})),
    ];
    let key = prop::sample::select(vec![
        "access_token",
        "token_type",
        "expires_in",
        "issued_token_type",
        "error",
        "errors",
        "auth",
        "client_token",
        "lease_duration",
        "accessToken",
        "expireTime",
    ]);
    let object = prop::collection::btree_map(key, value.clone(), 0..6).prop_map(|map| {
        let mut object: serde_json::Map<String, Value> =
            map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Some(auth) = object.get("client_token").cloned() {
            object.insert("auth".into(), json!({"client_token": auth, "lease_duration": object.get("lease_duration").cloned().unwrap_or(Value::Null)}));
        }
        if let Some(errors) = object.get_mut("errors") {
            *errors = json!([errors.clone()]);
        }
        serde_json::to_vec(&Value::Object(object)).expect("serializes")
    });
    let xml_tag = prop::sample::select(vec![
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
        "Code",
        "Message",
    ]);
    let xml = prop::collection::vec((xml_tag, any::<String>(), any::<bool>()), 0..6).prop_map(
        |elements| {
            elements
                .into_iter()
                .map(|(tag, text, closed)| {
                    if closed {
                        format!("<{tag}>{text}</{tag}>")
                    } else {
                        format!("<{tag}>{text}")
                    }
                })
                .collect::<String>()
                .into_bytes()
        },
    );
    prop_oneof![
        3 => object,
        2 => xml,
        1 => any::<Vec<u8>>(),
        1 => any::<String>().prop_map(String::into_bytes),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(200u16),
        3 => prop::sample::select(vec![0u16, 99, 100, 201, 204, 301, 302, 400, 401, 403, 404, 429, 500, 503, 599, 600, 999]),
        1 => any::<u16>(),
    ]
}

/// Text that reads back as itself from an XML element: no leading or trailing whitespace,
/// no line breaks, with the characters that must be escaped.
fn xml_safe_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9/+=&<>\"'%:;,._-][A-Za-z0-9/+=&<>\"'%:;,._ -]{0,60}[A-Za-z0-9/+=&<>\"'%:;,._-]"
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn sts_reply(access_key: &str, secret_key: &str, session_token: &str, expiration: &str) -> Vec<u8> {
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleWithWebIdentityResult><Credentials>\
         <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
         <SessionToken>{}</SessionToken><Expiration>{}</Expiration>\
         </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
        xml_escape(access_key),
        xml_escape(secret_key),
        xml_escape(session_token),
        expiration
    )
    .into_bytes()
}

fn done(step: Step) -> Exchanged {
    match step {
        Step::Done(exchanged) => exchanged,
        Step::Next(request) => panic!("unexpected second request {request:?}"),
    }
}

fn files(exchanged: &Exchanged) -> BTreeMap<&'static str, String> {
    exchanged
        .files
        .iter()
        .map(|file| {
            (
                file.key,
                String::from_utf8(file.value.clone()).expect("UTF-8"),
            )
        })
        .collect()
}

/// The key-value pairs of an INI file's `[default]` profile, as SDKs read it.
fn ini_default_profile(text: &str) -> (BTreeMap<String, String>, usize) {
    let mut sections = 0;
    let mut pairs = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('[') {
            sections += 1;
        } else if let Some((key, value)) = line.split_once(" = ") {
            pairs.insert(key.to_owned(), value.to_owned());
        }
    }
    (pairs, sections)
}

/// Whether the path of `url` is free of the dot segments a WHATWG URL parser would resolve
/// (`.`, `..`, their `%2e` spellings, with `\` as a separator as in https URLs).
fn has_no_dot_segments(url: &str) -> bool {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let path = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split(['/', '\\']).all(|segment| {
        let lowered = segment.to_ascii_lowercase().replace("%2e", ".");
        lowered != "." && lowered != ".."
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_reply_yields_credentials_or_a_typed_error(
        status in status(),
        body in reply_body(),
        retry_after in prop::option::of(prop_oneof![any::<String>(), "[0-9]{1,30}"]),
    ) {
        let reply = Reply::Response { status, retry_after, body };
        for (kind, exchange, stage) in all_exchanges() {
            let result = parse_reply(&exchange, &token(), stage, &reply, at(T0));
            check_outcome(kind, &result, status)?;
            if let Ok(Step::Done(exchanged)) = &result {
                prop_assert!(!exchanged.files.is_empty());
                prop_assert_eq!(&exchanged.spec_digest, &exchange.spec_digest);
            }
        }
    }

    #[test]
    fn oauth2_and_azure_replies_give_back_their_values(
        access_token in any::<String>(),
        token_type in any::<String>(),
        issued in prop::option::of(any::<String>()),
        expires_in in prop_oneof![Just(None), any::<u32>().prop_map(|n| Some(json!(n))), any::<u32>().prop_map(|n| Some(json!(n.to_string())))],
    ) {
        prop_assume!(!access_token.is_empty() && !token_type.is_empty());
        let mut body = json!({"access_token": access_token, "token_type": token_type});
        if let Some(issued) = &issued {
            body["issued_token_type"] = json!(issued);
        }
        if let Some(expires_in) = &expires_in {
            body["expires_in"] = expires_in.clone();
        }
        let seconds = expires_in.as_ref().map(|value| value.as_u64().or_else(|| value.as_str()?.parse().ok()).expect("a number"));
        let reply = response(200, serde_json::to_vec(&body).expect("JSON"));

        let read = done(parse_reply(&oauth2(), &token(), Stage::Exchange, &reply, at(T0)).expect("oauth2 credentials"));
        let read_files = files(&read);
        prop_assert_eq!(&read_files["access-token"], &access_token);
        prop_assert_eq!(&read_files["token-type"], &token_type);
        prop_assert_eq!(read_files.get("issued-token-type"), issued.as_ref().filter(|text| !text.is_empty()));
        let expected = seconds.map_or(token().expires_at, |seconds| at(T0 + i64::from(u32::try_from(seconds).expect("u32"))));
        prop_assert_eq!(read.expires_at, expected);

        let azure_result = parse_reply(&azure(), &token(), Stage::Exchange, &reply, at(T0));
        match seconds {
            Some(seconds) => {
                let read = done(azure_result.expect("azure credentials"));
                prop_assert_eq!(&files(&read)["access-token"], &access_token);
                prop_assert_eq!(read.expires_at, at(T0 + i64::try_from(seconds).expect("fits")));
            }
            None => prop_assert_eq!(azure_result.expect_err("no expires_in").reason(), Reason::ExchangeMalformed),
        }
    }

    #[test]
    fn vault_replies_give_back_their_values(client_token in any::<String>(), lease in any::<u32>()) {
        prop_assume!(!client_token.is_empty());
        let body = json!({"auth": {"client_token": client_token, "lease_duration": lease}});
        let reply = response(200, serde_json::to_vec(&body).expect("JSON"));
        let read = done(parse_reply(&vault(), &token(), Stage::Exchange, &reply, at(T0)).expect("credentials"));
        prop_assert_eq!(&files(&read)["vault-token"], &client_token);
        let expected = if lease == 0 { token().expires_at } else { at(T0 + i64::from(lease)) };
        prop_assert_eq!(read.expires_at, expected);
    }

    #[test]
    fn gcp_replies_give_back_their_values(
        // A bearer token: the impersonation request sends it as a header.
        federated in "[!-~]{1,200}",
        generated in any::<String>(),
        expires_in in any::<u32>(),
        expire_second in 0i64..253_402_300_799,
    ) {
        prop_assume!(!federated.is_empty() && !generated.is_empty());
        let sts = response(200, serde_json::to_vec(&json!({"access_token": federated, "expires_in": expires_in})).expect("JSON"));
        let read = done(parse_reply(&gcp(), &token(), Stage::Exchange, &sts, at(T0)).expect("credentials"));
        prop_assert_eq!(&files(&read)["access-token"], &federated);
        prop_assert_eq!(read.expires_at, at(T0 + i64::from(expires_in)));

        let impersonating = gcp_impersonating();
        let next = match parse_reply(&impersonating, &token(), Stage::Exchange, &sts, at(T0)).expect("next") {
            Step::Next(request) => request,
            Step::Done(_) => panic!("the service account's token is still to be asked for"),
        };
        let bearer = format!("Bearer {federated}");
        prop_assert!(next.headers.iter().any(|(name, value)| name == "Authorization" && *value == bearer));
        let expire_time = at(expire_second);
        let generated_reply = response(200, serde_json::to_vec(&json!({"accessToken": generated, "expireTime": expire_time.to_string()})).expect("JSON"));
        let read = done(parse_reply(&impersonating, &token(), Stage::Impersonation, &generated_reply, at(T0)).expect("credentials"));
        prop_assert_eq!(&files(&read)["access-token"], &generated);
        prop_assert_eq!(read.expires_at, expire_time);
    }

    #[test]
    fn aws_replies_give_back_their_values(
        access_key in xml_safe_text(),
        secret_key in xml_safe_text(),
        session_token in xml_safe_text(),
        expire_second in 0i64..253_402_300_799,
    ) {
        let expiration = at(expire_second);
        let reply = response(200, sts_reply(&access_key, &secret_key, &session_token, &expiration.to_string()));
        let read = done(parse_reply(&aws(), &token(), Stage::Exchange, &reply, at(T0)).expect("credentials"));
        prop_assert_eq!(read.expires_at, expiration);
        let read_files = files(&read);
        let process: Value = serde_json::from_str(&read_files["credential-process.json"]).expect("JSON");
        prop_assert_eq!(&process["AccessKeyId"], &json!(access_key));
        prop_assert_eq!(&process["SecretAccessKey"], &json!(secret_key));
        prop_assert_eq!(&process["SessionToken"], &json!(session_token));
        prop_assert_eq!(&process["Expiration"], &json!(expiration.to_string()));
        let (profile, sections) = ini_default_profile(&read_files["credentials"]);
        prop_assert_eq!(sections, 1);
        prop_assert_eq!(&profile["aws_access_key_id"], &access_key);
        prop_assert_eq!(&profile["aws_secret_access_key"], &secret_key);
        prop_assert_eq!(&profile["aws_session_token"], &session_token);
    }

    #[test]
    fn error_codes_reach_status_short_and_printable(code in any::<String>(), status in 400u16..600) {
        let json_error = response(status, serde_json::to_vec(&json!({"error": code, "errors": [code]})).expect("JSON"));
        let xml_error = response(status, format!("<ErrorResponse><Error><Code>{}</Code></Error></ErrorResponse>", xml_escape(&code)).into_bytes());
        for (kind, exchange, stage) in all_exchanges() {
            let reply = if kind == "aws" { &xml_error } else { &json_error };
            let result = parse_reply(&exchange, &token(), stage, reply, at(T0));
            prop_assert!(result.is_err(), "{}: HTTP {} accepted", kind, status);
            check_outcome(kind, &result, status)?;
        }
    }

    #[test]
    fn retry_after_is_bounded_and_never_panics(value in any::<String>(), seconds in any::<u64>(), now in -100_000_000_000i64..100_000_000_000) {
        let now = at(now);
        prop_assert!(parse_retry_after(&value, now).is_none_or(|delay| delay <= MAX_RETRY_AFTER));
        let expected = std::time::Duration::from_secs(seconds).min(MAX_RETRY_AFTER);
        prop_assert_eq!(parse_retry_after(&format!(" {seconds} "), now), Some(expected));
    }

    #[test]
    fn endpoints_parse_or_refuse_without_panicking(
        url in prop_oneof![
            any::<String>(),
            any::<String>().prop_map(|rest| format!("https://{rest}")),
            prop::collection::vec(prop::sample::select(vec![
                "https://", "sts.example.com", "STS.example.com", ":8443", "/", "v1", ".", "..",
                "%2e", "%2E%2e", "\\", "?", "#", "@", "x", " ", "\t", "\u{0}", "é",
            ]), 0..8).prop_map(|pieces| pieces.concat()),
            (
                prop::sample::select(vec!["https://sts.example.com", "https://sts.example.com:8443"]),
                prop::collection::vec(prop::sample::select(vec![
                    "/v1", "/", "/.", "/..", "/%2e", "/%2E%2e", "/.%2e", "\\..", "/x", "?a=/..",
                ]), 0..5),
            )
                .prop_map(|(base, path)| format!("{base}{}", path.concat())),
        ],
        prefix in prop::sample::select(vec![
            "https://sts.example.com", "https://sts.example.com/", "https://sts.example.com/v1",
            "https://sts.example.com/v1/", "https://sts.example.com:8443/v1",
        ]),
    ) {
        if let Ok(endpoint) = Endpoint::parse(&url) {
            prop_assert_eq!(endpoint.url(), url.as_str());
            let rest = url.strip_prefix("https://").expect("https");
            prop_assert!(rest.starts_with(endpoint.host()) || rest.to_ascii_lowercase().starts_with(endpoint.host()));
            prop_assert!(!endpoint.host().is_empty() && !endpoint.host().contains('@'));
            prop_assert!(!url.contains('#'));
            prop_assert!(!url.chars().any(|c| c.is_whitespace() || c.is_control()));
            // An endpoint the policy allows stays under the prefix once the HTTP client
            // resolves its path.
            if endpoint.starts_with(prefix) {
                prop_assert!(has_no_dot_segments(&url), "{:?} is allowed by {:?} but leaves it", url, prefix);
            }
        }
    }
}

#[test]
fn transport_failures_and_huge_or_deep_replies_are_typed_errors() {
    for transport in [
        Transport::Timeout,
        Transport::Connect,
        Transport::Redirect,
        Transport::Other,
    ] {
        for (_, exchange, stage) in all_exchanges() {
            let error = parse_reply(
                &exchange,
                &token(),
                stage,
                &Reply::NoResponse(transport),
                at(T0),
            )
            .expect_err("no response");
            assert_eq!(error.reason(), Reason::ExchangeUnavailable);
        }
    }
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        "{}1{}",
        "{\"access_token\":".repeat(100_000),
        "}".repeat(100_000)
    );
    let huge = serde_json::to_vec(
        &json!({"error": "x".repeat(64 * 1024), "errors": ["\n".repeat(64 * 1024)]}),
    )
    .expect("JSON");
    let huge_xml = format!("<Code>{}</Code>", "<".repeat(64 * 1024));
    for body in [
        deep_array.into_bytes(),
        deep_object.into_bytes(),
        huge,
        huge_xml.into_bytes(),
        vec![0xff; 64 * 1024],
    ] {
        for status in [200, 400, 503] {
            for (kind, exchange, stage) in all_exchanges() {
                let result = parse_reply(
                    &exchange,
                    &token(),
                    stage,
                    &response(status, body.clone()),
                    at(T0),
                );
                check_outcome(kind, &result, status).expect("typed error");
                assert!(result.is_err(), "{kind}: HTTP {status} accepted");
            }
        }
    }
    // A 64 KB access token is carried whole.
    let big = "t".repeat(64 * 1024);
    let reply = response(
        200,
        serde_json::to_vec(&json!({"access_token": big, "token_type": "Bearer", "expires_in": 60}))
            .expect("JSON"),
    );
    let read = done(
        parse_reply(&oauth2(), &token(), Stage::Exchange, &reply, at(T0)).expect("credentials"),
    );
    assert_eq!(files(&read)["access-token"], big);
}

/// An STS value with a line break (a hostile or broken endpoint) must not add lines to the
/// shared-credentials file, which aws.rs writes the values into as they are.
#[test]
fn aws_values_cannot_add_lines_to_the_credentials_file() {
    let hostile = "AKIA\n[default]\naws_session_token = forged";
    let reply = response(
        200,
        sts_reply(hostile, "secret", "token", "2027-01-15T08:00:00Z"),
    );
    match parse_reply(&aws(), &token(), Stage::Exchange, &reply, at(T0)) {
        Err(error) => assert_eq!(error.reason(), Reason::ExchangeMalformed),
        Ok(step) => {
            let (profile, sections) = ini_default_profile(&files(&done(step))["credentials"]);
            assert_eq!(sections, 1, "a value added a section");
            assert_eq!(
                profile["aws_session_token"], "token",
                "a value replaced the session token"
            );
        }
    }
}

/// Whether `value` can be sent as an HTTP header value (visible ASCII, space and tab), as
/// the HTTP client requires; it refuses anything else before sending.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| byte == b'\t' || (0x20..=0x7e).contains(&byte))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Headers of the first request come from the spec and fedid's own values only.
    #[test]
    fn first_requests_carry_sendable_headers(
        client_id in "[A-Za-z0-9._:-]{1,20}",
        secret in any::<String>(),
    ) {
        let with_secret = exchange(json!({"oauth2": {
            "tokenURL": "https://sts.example.com/token",
            "clientAuth": {"clientID": client_id, "clientSecret": {"secretRef": {"name": "c"}}}
        }}));
        let client = fedid_core::exchange::ClientCredential::Secret(secret);
        let requester = fedid_core::exchange::Requester { namespace: "team", name: "deploy" };
        for (exchange, client) in [(&with_secret, Some(&client)), (&aws(), None), (&azure(), None), (&gcp(), None), (&vault(), None)] {
            let request = fedid_core::exchange::build_request(exchange, &token(), client, requester);
            for (name, value) in &request.headers {
                prop_assert!(is_header_value(value), "{}: {:?}", name, value);
            }
        }
    }
}

/// A GCP STS token that cannot be sent in a header is a malformed reply (it becomes the
/// impersonation request's `Authorization: Bearer …`, which the HTTP client would refuse to send,
/// and the failure would read as `ExchangeUnavailable`).
#[test]
fn a_federated_token_that_is_no_header_value_is_malformed() {
    for federated in ["ya29.a\r\nX-Injected: 1", "ya29.\u{0}", "ya29.\u{7f}"] {
        let sts = response(
            200,
            serde_json::to_vec(&json!({"access_token": federated, "expires_in": 3600}))
                .expect("JSON"),
        );
        match parse_reply(
            &gcp_impersonating(),
            &token(),
            Stage::Exchange,
            &sts,
            at(T0),
        ) {
            Ok(Step::Next(request)) => {
                for (name, value) in &request.headers {
                    assert!(is_header_value(value), "{federated:?}: {name}: {value:?}");
                }
            }
            Ok(Step::Done(_)) => panic!("{federated:?}: no second request"),
            Err(error) => assert_eq!(error.reason(), Reason::ExchangeMalformed, "{federated:?}"),
        }
    }
}

/// A `vaultNamespace` that cannot be sent as `X-Vault-Namespace` (an object that bypassed the
/// schema's pattern) is an invalid setting, waiting for a spec change, not an unavailable service
/// retried with backoff forever.
#[test]
fn a_vault_namespace_that_is_no_header_value_is_an_invalid_setting() {
    let spec: ExchangeSpec = serde_json::from_value(json!({"vault": {
        "address": "https://vault.example.com", "role": "ci", "vaultNamespace": "team\r\nX-Injected: 1"
    }}))
    .expect("deserializes without the schema's pattern");
    let policy = ExchangePolicy {
        allowed_endpoints: vec!["https://vault.example.com".into()],
        private_key_jwt_client_ids: Vec::new(),
    };
    let error = validate(&spec, "ci", "team", Some(&policy)).expect_err("unsendable header");
    assert_eq!(error.reason(), Reason::InvalidExchange);
}

proptest! {
    /// The AWS session name is the only template an exchange renders from the spec: whatever
    /// the template and names, it is 2 to 64 of the characters STS accepts.
    #[test]
    fn aws_session_names_are_always_acceptable_to_sts(
        template in prop::option::of(prop_oneof![any::<String>(), "(\\{namespace\\}|\\{name\\}|[a-z:/ ]){0,12}"]),
        namespace in any::<String>(),
        name in any::<String>(),
    ) {
        let session = fedid_core::exchange::aws::session_name(
            template.as_deref(),
            fedid_core::exchange::Requester { namespace: &namespace, name: &name },
        );
        prop_assert!((2..=64).contains(&session.len()), "{:?}", session);
        prop_assert!(session.chars().all(|c| c.is_ascii_alphanumeric() || "_=,.@-".contains(c)), "{:?}", session);
    }
}
