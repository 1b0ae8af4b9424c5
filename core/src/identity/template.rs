//! `spec.output.template`: extra Secret keys rendered by MiniJinja from the credentials.
//!
//! Templates see plain values only (no file or network access); rendering is bounded by
//! MiniJinja's fuel and by the size of what it produces, and an unknown variable is an error,
//! never an empty string.

use std::collections::BTreeMap;

use base64::Engine;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde_json::{Map, json};
use sha2::{Digest, Sha256};

use crate::{
    crd::output::{OutputSpec, SecretType},
    credentials::secret::{EXPIRES_AT_KEY, TOKEN_KEY},
    exchange::{
        Credentials, ExchangeKind,
        aws::{CONFIG_KEY, CREDENTIAL_PROCESS_KEY, CREDENTIALS_KEY},
        gcp::EXTERNAL_ACCOUNT_KEY,
        oauth2::{ACCESS_TOKEN_KEY, ISSUED_TOKEN_TYPE_KEY, TOKEN_TYPE_KEY},
        vault::VAULT_TOKEN_KEY,
    },
    reason::{Failure, Reason, Retry},
    time::whole_seconds,
};

/// Instructions one template may spend: far above any credential file, low enough that a loop
/// over a large range stops at once.
const TEMPLATE_FUEL: u64 = 50_000;

/// The key a `kubernetes.io/dockerconfigjson` Secret must hold.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

/// Most bytes all rendered templates may produce together (a Secret holds at most 1 MiB).
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;

/// Why the output templates cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A template does not parse, or fails while rendering (an unknown variable, a filter
    /// given the wrong value, too much work).
    #[error("output.template[{key:?}]: {message}")]
    Invalid {
        /// The Secret key of the template.
        key: String,
        /// MiniJinja's description, with the line.
        message: String,
    },
    /// A template names a key fedid writes itself.
    #[error("output.template[{key:?}]: fedid writes that key itself; choose another name")]
    ReservedKey {
        /// The Secret key.
        key: String,
    },
    /// `secretType: kubernetes.io/dockerconfigjson` without a template for its key.
    #[error(
        "output.secretType kubernetes.io/dockerconfigjson needs an output.template entry for the key .dockerconfigjson"
    )]
    MissingDockerConfig,
    /// The rendered templates are larger than a Secret should hold.
    #[error("output.template renders {bytes} bytes, more than the limit of {MAX_RENDERED_BYTES}")]
    TooLarge {
        /// Bytes rendered.
        bytes: usize,
    },
}

impl Failure for TemplateError {
    fn reason(&self) -> Reason {
        Reason::InvalidTemplate
    }

    /// Only a spec change can fix a template; meanwhile the Secret is left as it is.
    fn retry(&self) -> Retry {
        Retry::WaitForChange
    }
}

/// The validated `spec.output`: templates whose syntax is known to be good, and the type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputTemplates {
    /// Template source by Secret key.
    templates: BTreeMap<String, String>,
    /// The Secret's type.
    secret_type: SecretType,
}

impl OutputTemplates {
    /// Checks every template of `spec` parses; `None` (no output section) means none.
    pub fn parse(spec: Option<&OutputSpec>) -> Result<Self, TemplateError> {
        let Some(spec) = spec else {
            return Ok(Self::default());
        };
        let environment = environment();
        for entry in &spec.template {
            environment
                .template_from_str(&entry.template)
                .map_err(|error| invalid(&entry.key, &error))?;
        }
        let templates: BTreeMap<String, String> = spec
            .template
            .iter()
            .map(|entry| (entry.key.clone(), entry.template.clone()))
            .collect();
        let secret_type = spec.secret_type.unwrap_or_default();
        if secret_type == SecretType::DockerConfigJson
            && !templates.contains_key(DOCKER_CONFIG_JSON_KEY)
        {
            return Err(TemplateError::MissingDockerConfig);
        }
        Ok(Self {
            templates,
            secret_type,
        })
    }

    /// The Secret's type.
    pub fn secret_type(&self) -> SecretType {
        self.secret_type
    }

    /// Whether there is nothing beyond fedid's own Opaque Secret.
    pub fn is_default(&self) -> bool {
        self.templates.is_empty() && self.secret_type == SecretType::Opaque
    }

    /// Digest of the templates and type (recorded on the Secret, so a change re-renders it);
    /// `None` for the default output.
    pub fn digest(&self) -> Option<String> {
        if self.is_default() {
            return None;
        }
        let mut hasher = Sha256::new();
        hasher.update(self.secret_type.as_str().as_bytes());
        for (key, source) in &self.templates {
            hasher.update([0]);
            hasher.update(key.as_bytes());
            hasher.update([0]);
            hasher.update(source.as_bytes());
        }
        Some(
            hasher
                .finalize()
                .iter()
                .take(8)
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    /// Renders every template over `credentials`, beside the keys fedid itself writes
    /// (`fedid_keys`); `include_token` says whether templates may see the signed token.
    pub fn render(
        &self,
        credentials: &Credentials,
        kind: Option<ExchangeKind>,
        include_token: bool,
        fedid_keys: &BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
        let claims = crate::credentials::token::decode_unverified(&credentials.token.jwt)
            .map(|decoded| decoded.claims)
            .unwrap_or_default();
        let variables = Variables {
            token: include_token.then_some(credentials.token.jwt.as_str()),
            claims,
            expires_at: credentials.expires_at(),
            kind,
            fedid_keys,
        };
        self.render_variables(&variables)
    }

    /// Renders every template with stand-in credentials of the right shape (an exchange of
    /// `kind`, a token with `claims`): an unknown variable, a reserved key or a failing filter
    /// is found before any token is signed.
    pub fn check(
        &self,
        claims: Map<String, serde_json::Value>,
        kind: Option<ExchangeKind>,
        include_token: bool,
    ) -> Result<(), TemplateError> {
        if self.templates.is_empty() {
            return Ok(());
        }
        let fedid_keys = sample_keys(kind, include_token);
        let variables = Variables {
            token: include_token.then_some(SAMPLE_JWT),
            claims,
            expires_at: jiff::Timestamp::UNIX_EPOCH,
            kind,
            fedid_keys: &fedid_keys,
        };
        self.render_variables(&variables).map(|_| ())
    }

    fn render_variables(
        &self,
        variables: &Variables<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
        if let Some(key) = self
            .templates
            .keys()
            .find(|key| variables.fedid_keys.contains_key(*key))
        {
            return Err(TemplateError::ReservedKey { key: key.clone() });
        }
        let context = variables.context();
        let environment = environment();
        let mut rendered = BTreeMap::new();
        let mut bytes = 0;
        for (key, source) in &self.templates {
            let output = environment
                .template_from_str(source)
                .and_then(|template| template.render(&context))
                .map_err(|error| invalid(key, &error))?;
            bytes += output.len();
            if bytes > MAX_RENDERED_BYTES {
                return Err(TemplateError::TooLarge { bytes });
            }
            rendered.insert(key.clone(), output.into_bytes());
        }
        Ok(rendered)
    }
}

/// Stand-in for the signed token when templates are checked.
const SAMPLE_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.e30.c2FtcGxl";

/// The keys fedid writes for an exchange of `kind`, with stand-in values of the real format.
fn sample_keys(kind: Option<ExchangeKind>, include_token: bool) -> BTreeMap<String, Vec<u8>> {
    let mut keys = vec![(EXPIRES_AT_KEY, "1970-01-01T00:00:00Z".to_owned())];
    if include_token {
        keys.push((TOKEN_KEY, SAMPLE_JWT.to_owned()));
    }
    let oauth = [
        (ACCESS_TOKEN_KEY, "sample-access-token".to_owned()),
        (TOKEN_TYPE_KEY, "Bearer".to_owned()),
    ];
    match kind {
        Some(ExchangeKind::OAuth2) => {
            keys.extend(oauth);
            keys.push((
                ISSUED_TOKEN_TYPE_KEY,
                "urn:ietf:params:oauth:token-type:access_token".into(),
            ));
        }
        Some(ExchangeKind::Azure) => keys.extend(oauth),
        Some(ExchangeKind::Gcp) => {
            keys.extend(oauth);
            keys.push((EXTERNAL_ACCOUNT_KEY, "{}".into()));
        }
        Some(ExchangeKind::Vault) => keys.push((VAULT_TOKEN_KEY, "sample-vault-token".into())),
        Some(ExchangeKind::Aws) => keys.extend([
            (CREDENTIALS_KEY, "[default]\n".to_owned()),
            (CONFIG_KEY, "[default]\n".to_owned()),
            (
                CREDENTIAL_PROCESS_KEY,
                json!({
                    "Version": 1,
                    "AccessKeyId": "ASIASAMPLE",
                    "SecretAccessKey": "sample-secret",
                    "SessionToken": "sample-session",
                    "Expiration": "1970-01-01T00:00:00Z",
                })
                .to_string(),
            ),
        ]),
        None => {}
    }
    keys.into_iter()
        .map(|(key, value)| (key.to_owned(), value.into_bytes()))
        .collect()
}

/// What a template may see.
struct Variables<'a> {
    token: Option<&'a str>,
    claims: Map<String, serde_json::Value>,
    expires_at: jiff::Timestamp,
    kind: Option<ExchangeKind>,
    fedid_keys: &'a BTreeMap<String, Vec<u8>>,
}

impl Variables<'_> {
    /// The variables as a template context (documented on `OutputSpec.template`).
    fn context(&self) -> Value {
        let text = |key: &str| {
            self.fedid_keys
                .get(key)
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        };
        let mut variables = Map::new();
        if let Some(token) = self.token {
            variables.insert("token".into(), json!(token));
        }
        variables.insert(
            "claims".into(),
            serde_json::Value::Object(self.claims.clone()),
        );
        variables.insert(
            "expires_at".into(),
            json!(whole_seconds(self.expires_at).to_string()),
        );
        let files: Map<String, serde_json::Value> = self
            .fedid_keys
            .keys()
            .filter(|key| self.token.is_some() || key.as_str() != TOKEN_KEY)
            .filter_map(|key| Some((key.clone(), json!(text(key)?))))
            .collect();
        variables.insert("files".into(), serde_json::Value::Object(files));
        match self.kind {
            Some(ExchangeKind::OAuth2 | ExchangeKind::Gcp | ExchangeKind::Azure) => {
                for (variable, key) in [
                    ("access_token", ACCESS_TOKEN_KEY),
                    ("token_type", TOKEN_TYPE_KEY),
                ] {
                    if let Some(value) = text(key) {
                        variables.insert(variable.into(), json!(value));
                    }
                }
            }
            Some(ExchangeKind::Vault) => {
                if let Some(value) = text(VAULT_TOKEN_KEY) {
                    variables.insert("vault_token".into(), json!(value));
                }
            }
            Some(ExchangeKind::Aws) => {
                let process = text(CREDENTIAL_PROCESS_KEY)
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
                if let Some(process) = process {
                    variables.insert(
                        "aws".into(),
                        json!({
                            "access_key_id": process["AccessKeyId"],
                            "secret_access_key": process["SecretAccessKey"],
                            "session_token": process["SessionToken"],
                            "expiration": process["Expiration"],
                        }),
                    );
                }
            }
            None => {}
        }
        Value::from(minijinja::value::Serde(serde_json::Value::Object(
            variables,
        )))
    }
}

/// The environment every template renders in: strict about unknown variables, no escaping,
/// bounded work, and the extra filters.
fn environment() -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment.set_auto_escape_callback(|_| AutoEscape::None);
    environment.set_fuel(Some(TEMPLATE_FUEL));
    environment.set_recursion_limit(64);
    // Files such as `.env` end with a newline; Jinja drops the last one unless told not to.
    // (Building this syntax cannot fail: only the delimiters, left alone, are checked.)
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        environment.set_syntax(syntax);
    }
    environment.add_filter("b64encode", |value: String| {
        base64::engine::general_purpose::STANDARD.encode(value)
    });
    environment
}

fn invalid(key: &str, error: &minijinja::Error) -> TemplateError {
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(line) = error.line() {
        message.push_str(&format!(" (line {line})"));
    }
    TemplateError::Invalid {
        key: key.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::credentials::token::Minted;

    /// Parses an output spec whose `template` is written as a map, for brevity.
    fn templates(mut spec: serde_json::Value) -> Result<OutputTemplates, TemplateError> {
        if let Some(map) = spec.get("template").and_then(|t| t.as_object()).cloned() {
            spec["template"] = map
                .into_iter()
                .map(|(key, template)| json!({"key": key, "template": template}))
                .collect();
        }
        let spec: OutputSpec = serde_json::from_value(spec).expect("output spec");
        OutputTemplates::parse(Some(&spec))
    }

    fn claims() -> Map<String, serde_json::Value> {
        json!({"sub": "ci:deploy", "aud": "registry"})
            .as_object()
            .cloned()
            .expect("object")
    }

    /// A token whose payload is `claims()`.
    fn credentials() -> Credentials {
        let encode = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        Credentials {
            token: Minted {
                jwt: format!(
                    "{}.{}.c2ln",
                    encode(json!({"alg": "RS256", "kid": "k"})),
                    encode(serde_json::Value::Object(claims()))
                ),
                key_id: "k".into(),
                issued_at: Timestamp::from_second(1_800_000_000).expect("valid"),
                expires_at: Timestamp::from_second(1_800_003_600).expect("valid"),
            },
            exchanged: None,
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.as_bytes().to_vec()))
            .collect()
    }

    fn text(rendered: &BTreeMap<String, Vec<u8>>, key: &str) -> String {
        String::from_utf8(rendered[key].clone()).expect("utf-8")
    }

    #[test]
    fn a_syntax_error_names_the_key_and_line() {
        let error = templates(json!({"template": {"app.env": "A={{ token }}\nB={{ token "}}))
            .expect_err("does not parse");
        let TemplateError::Invalid { key, message } = &error else {
            panic!("unexpected {error:?}");
        };
        assert_eq!(key, "app.env");
        assert!(message.contains("line 2"), "{message}");
        assert_eq!(error.reason(), Reason::InvalidTemplate);
    }

    #[test]
    fn the_check_knows_which_variables_an_exchange_gives() {
        let uses = |source: &str| templates(json!({"template": {"out": source}})).expect("parses");
        let check =
            |source: &str, kind, include_token| uses(source).check(claims(), kind, include_token);
        assert_eq!(
            check("{{ token }} {{ claims.sub }} {{ expires_at }}", None, true),
            Ok(())
        );
        assert_eq!(
            check("{{ access_token }}", Some(ExchangeKind::OAuth2), true),
            Ok(())
        );
        assert_eq!(
            check("{{ access_token }}", Some(ExchangeKind::Gcp), true),
            Ok(())
        );
        assert_eq!(
            check("{{ vault_token }}", Some(ExchangeKind::Vault), true),
            Ok(())
        );
        assert_eq!(
            check(
                "{{ aws.access_key_id }} {{ files.config }}",
                Some(ExchangeKind::Aws),
                true
            ),
            Ok(())
        );
        for (source, kind, include_token) in [
            ("{{ access_token }}", None, true),
            ("{{ vault_token }}", Some(ExchangeKind::Aws), true),
            ("{{ claims.subb }}", None, true),
            ("{{ token }}", Some(ExchangeKind::Aws), false),
            ("{{ files.token }}", Some(ExchangeKind::Aws), false),
            ("{{ token | nosuchfilter }}", None, true),
        ] {
            let error = check(source, kind, include_token).expect_err(source);
            assert!(
                matches!(&error, TemplateError::Invalid { key, .. } if key == "out"),
                "{source}: {error:?}"
            );
        }
    }

    #[test]
    fn aws_credentials_render_into_an_env_file() {
        let output = templates(json!({"template": {
            ".env": "AWS_ACCESS_KEY_ID={{ aws.access_key_id }}\nAWS_SECRET_ACCESS_KEY={{ aws.secret_access_key }}\nAWS_SESSION_TOKEN={{ aws.session_token }}\nEXPIRES={{ aws.expiration }}\n"
        }}))
        .expect("parses");
        let process = json!({
            "Version": 1, "AccessKeyId": "ASIA1", "SecretAccessKey": "s/k+",
            "SessionToken": "st==", "Expiration": "2027-01-15T09:00:00Z"
        })
        .to_string();
        let fedid_keys = keys(&[
            (TOKEN_KEY, "t"),
            (EXPIRES_AT_KEY, "2027-01-15T09:00:00Z"),
            (CREDENTIAL_PROCESS_KEY, &process),
        ]);
        let rendered = output
            .render(&credentials(), Some(ExchangeKind::Aws), true, &fedid_keys)
            .expect("renders");
        assert_eq!(
            text(&rendered, ".env"),
            "AWS_ACCESS_KEY_ID=ASIA1\nAWS_SECRET_ACCESS_KEY=s/k+\nAWS_SESSION_TOKEN=st==\n\
             EXPIRES=2027-01-15T09:00:00Z\n"
        );
    }

    #[test]
    fn a_docker_config_takes_the_access_token_base64_encoded_and_nothing_is_escaped() {
        let output = templates(json!({
            "secretType": "kubernetes.io/dockerconfigjson",
            "template": {".dockerconfigjson": "{\"auths\":{\"registry.example.com\":{\"auth\":\"{{ ('oauth2accesstoken:' ~ access_token) | b64encode }}\"}}}"}
        }))
        .expect("parses");
        assert_eq!(output.secret_type(), SecretType::DockerConfigJson);
        let fedid_keys = keys(&[(ACCESS_TOKEN_KEY, "at<&>\"x")]);
        let rendered = output
            .render(
                &credentials(),
                Some(ExchangeKind::OAuth2),
                true,
                &fedid_keys,
            )
            .expect("renders");
        let expected =
            base64::engine::general_purpose::STANDARD.encode("oauth2accesstoken:at<&>\"x");
        assert_eq!(
            text(&rendered, ".dockerconfigjson"),
            format!("{{\"auths\":{{\"registry.example.com\":{{\"auth\":\"{expected}\"}}}}}}")
        );
    }

    #[test]
    fn jinja_builtins_tojson_and_urlencode_are_there() {
        let output = templates(json!({"template": {
            "claims.json": "{{ claims | tojson }}",
            "query": "sub={{ claims.sub | urlencode }}",
        }}))
        .expect("parses");
        let rendered = output
            .render(&credentials(), None, true, &keys(&[(TOKEN_KEY, "t")]))
            .expect("renders");
        let claims_json: serde_json::Value =
            serde_json::from_slice(&rendered["claims.json"]).expect("json");
        assert_eq!(claims_json, serde_json::Value::Object(claims()));
        assert_eq!(text(&rendered, "query"), "sub=ci%3Adeploy");
    }

    #[test]
    fn claims_come_from_the_token_itself() {
        let output = templates(json!({"template": {"who": "{{ claims.sub }}@{{ claims.aud }}"}}))
            .expect("parses");
        let rendered = output
            .render(&credentials(), None, true, &keys(&[(TOKEN_KEY, "t")]))
            .expect("renders");
        assert_eq!(text(&rendered, "who"), "ci:deploy@registry");
    }

    #[test]
    fn a_key_fedid_writes_is_refused() {
        let output = templates(json!({"template": {"token": "x"}})).expect("parses");
        assert_eq!(
            output.check(claims(), None, true),
            Err(TemplateError::ReservedKey {
                key: "token".into()
            })
        );
        let output = templates(json!({"template": {"config": "x"}})).expect("parses");
        assert_eq!(output.check(claims(), None, true), Ok(()));
        assert_eq!(
            output.check(claims(), Some(ExchangeKind::Aws), true),
            Err(TemplateError::ReservedKey {
                key: "config".into()
            })
        );
    }

    #[test]
    fn runaway_templates_stop() {
        let looping = templates(json!({"template": {
            "out": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        }}))
        .expect("parses");
        assert!(matches!(
            looping.check(claims(), None, true),
            Err(TemplateError::Invalid { .. })
        ));
        let huge = templates(json!({"template": {"out": "{{ 'x' * 300000 }}"}})).expect("parses");
        assert!(matches!(
            huge.check(claims(), None, true),
            Err(TemplateError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_digest_follows_the_templates_and_the_type() {
        assert_eq!(OutputTemplates::parse(None).expect("none").digest(), None);
        assert_eq!(templates(json!({})).expect("empty").digest(), None);
        let one = templates(json!({"template": {"a": "1"}})).expect("parses");
        let two = templates(json!({"template": {"a": "2"}})).expect("parses");
        let typed = templates(json!({
            "template": {"a": "1", ".dockerconfigjson": "{}"},
            "secretType": "kubernetes.io/dockerconfigjson"
        }))
        .expect("parses");
        let untyped =
            templates(json!({"template": {"a": "1", ".dockerconfigjson": "{}"}})).expect("parses");
        let digests = [one.digest(), two.digest(), typed.digest(), untyped.digest()];
        assert!(digests.iter().all(Option::is_some));
        assert_ne!(digests[0], digests[1]);
        assert_ne!(digests[0], digests[2]);
        assert_ne!(digests[2], digests[3]);
        assert_eq!(
            templates(
                json!({"template": {"a": "1"}, "secretType": "kubernetes.io/dockerconfigjson"})
            ),
            Err(TemplateError::MissingDockerConfig)
        );
        assert_eq!(one.digest(), one.clone().digest());
    }
}
