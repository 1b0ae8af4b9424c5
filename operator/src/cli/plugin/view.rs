//! What `kubectl fedid status` shows, built from the objects already read: plain values in,
//! a serializable report and its text out. No I/O here, so every line is unit-tested.

use std::fmt::Write as _;

use fedid_core::{
    crd::{
        FederatedIdentity, IdentityIssuer, identity::RENEW_REQUESTED_AT_ANNOTATION,
        issuer::ROTATE_KEYS_ANNOTATION,
    },
    credentials::token::{self, DecodedToken},
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::core::v1::Event,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Map, Value};

/// Most Events `status` shows (the latest ones).
pub const MAX_EVENTS: usize = 10;

/// The object a plugin command names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `fid/NAME`, `federatedidentity/NAME`.
    Identity(String),
    /// `issuer/NAME`, `identityissuer/NAME`.
    Issuer(String),
}

/// Which kind a bare `NAME` (no `kind/`) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareName {
    /// A bare name is a FederatedIdentity.
    Identity,
    /// A bare name is an IdentityIssuer.
    Issuer,
}

const IDENTITY_KINDS: &[&str] = &[
    "fid",
    "fids",
    "federatedidentity",
    "federatedidentities",
    "federatedidentity.fedid.dev",
    "federatedidentities.fedid.dev",
];

const ISSUER_KINDS: &[&str] = &[
    "issuer",
    "issuers",
    "identityissuer",
    "identityissuers",
    "identityissuer.fedid.dev",
    "identityissuers.fedid.dev",
];

impl Target {
    /// Parses `kind/NAME` (the kinds as kubectl spells them, case-insensitive) or, where
    /// `bare` allows it, a bare `NAME`.
    pub fn parse(text: &str, bare: BareName) -> Result<Self, String> {
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (Some(kind.to_ascii_lowercase()), name),
            None => (None, text),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "{text:?} is not KIND/NAME: use fid/NAME (FederatedIdentity) or issuer/NAME \
                 (IdentityIssuer)"
            ));
        }
        match (kind.as_deref(), bare) {
            (Some(kind), _) if IDENTITY_KINDS.contains(&kind) => Ok(Self::Identity(name.into())),
            (Some(kind), _) if ISSUER_KINDS.contains(&kind) => Ok(Self::Issuer(name.into())),
            (Some(kind), _) => Err(format!(
                "unknown kind {kind:?}: use fid/NAME (FederatedIdentity) or issuer/NAME \
                 (IdentityIssuer)"
            )),
            (None, BareName::Identity) => Ok(Self::Identity(name.into())),
            (None, BareName::Issuer) => Ok(Self::Issuer(name.into())),
        }
    }
}

/// One condition of an object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// `Ready`, `CredentialsFresh`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: Timestamp,
}

impl ConditionView {
    fn from_condition(condition: &Condition) -> Self {
        Self {
            type_: condition.type_.clone(),
            status: condition.status.clone(),
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            last_transition_time: condition.last_transition_time.0,
        }
    }
}

/// The most recent exchange request of an identity.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeView {
    /// Host (and port) of the token service.
    pub endpoint_host: String,
    /// `Exchanged`, or the failure's reason.
    pub outcome: String,
    /// The service's error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_code: Option<String>,
    /// When the request was made.
    pub time: Timestamp,
    /// No request goes before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
}

/// Where the shown claims come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSource {
    /// The Secret's `token` key: the signed token.
    Secret,
    /// The Secret's `fedid.dev/unsigned-token` annotation (`output.includeSubjectToken:
    /// false`): the token without its signature.
    UnsignedToken,
}

/// The token's decoded header and claims (never the token itself).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Where they were read from; absent when they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<TokenSource>,
    /// The JOSE header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Map<String, Value>>,
    /// The claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl TokenView {
    /// Decodes `jwt` (signed, or unsigned with an empty signature) read from `source`.
    pub fn decode(jwt: &str, source: TokenSource) -> Self {
        match token::decode_unverified(jwt) {
            Ok(DecodedToken { header, claims }) => Self {
                source: Some(source),
                header: Some(header),
                claims: Some(claims),
                unavailable: None,
            },
            Err(error) => Self::unavailable(format!("the stored token cannot be decoded: {error}")),
        }
    }

    /// No claims, and why.
    pub fn unavailable(why: impl Into<String>) -> Self {
        Self {
            unavailable: Some(why.into()),
            ..Self::default()
        }
    }
}

/// Outcome of checking the token against the issuer's served JWKS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VerificationResult {
    /// Signature, audience, issuer and validity hold.
    Verified,
    /// The check ran and the token failed it.
    Failed,
    /// The check could not run (no signed token, the JWKS unreachable, ...).
    NotChecked,
}

/// Whether the token verifies against the JWKS the issuer serves right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The outcome.
    pub result: VerificationResult,
    /// What was checked, or why it failed or was not checked.
    pub detail: String,
    /// The JWKS checked against.
    #[serde(rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
}

impl Verification {
    /// The check could not run.
    pub fn not_checked(why: impl Into<String>, jwks_url: Option<&str>) -> Self {
        Self {
            result: VerificationResult::NotChecked,
            detail: why.into(),
            jwks_url: jwks_url.map(str::to_owned),
        }
    }

    /// Verifies `jwt` against `jwks` (fetched from `jwks_url`) for `audience` and `issuer` at
    /// `now`, with the core's verification (as `fedid token verify` does).
    pub fn check(
        jwt: &str,
        jwks: &Value,
        jwks_url: &str,
        audience: &str,
        issuer: &str,
        now: Timestamp,
    ) -> Self {
        match token::verify(jwt, jwks, audience, Some(issuer), now) {
            Ok(_) => Self {
                result: VerificationResult::Verified,
                detail: format!("signature, audience {audience:?}, issuer and expiry hold"),
                jwks_url: Some(jwks_url.to_owned()),
            },
            Err(error) => Self {
                result: VerificationResult::Failed,
                detail: fedid_core::reason::message_chain(&error),
                jwks_url: Some(jwks_url.to_owned()),
            },
        }
    }

    fn line(&self) -> String {
        let against = self
            .jwks_url
            .as_deref()
            .map(|url| format!(" against {url}"))
            .unwrap_or_default();
        match self.result {
            VerificationResult::Verified => format!("verified{against}"),
            VerificationResult::Failed => format!("FAILED{against}: {}", self.detail),
            VerificationResult::NotChecked => format!("not checked: {}", self.detail),
        }
    }
}

/// One Event about the object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The reason.
    pub reason: String,
    /// The message (note).
    pub message: String,
    /// How often it happened.
    pub count: i32,
    /// When it last happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

/// The latest [`MAX_EVENTS`] of `events`, oldest first (as `kubectl describe` lists them).
pub fn event_views(events: &[Event]) -> Vec<EventView> {
    let mut views: Vec<EventView> = events
        .iter()
        .map(|event| EventView {
            type_: event.type_.clone().unwrap_or_else(|| "Normal".into()),
            reason: event.reason.clone().unwrap_or_default(),
            message: event.message.clone().unwrap_or_default(),
            count: event
                .series
                .as_ref()
                .and_then(|series| series.count)
                .or(event.count)
                .unwrap_or(1),
            last_seen: event
                .series
                .as_ref()
                .and_then(|series| series.last_observed_time.as_ref())
                .map(|time| time.0)
                .or(event.last_timestamp.as_ref().map(|time| time.0))
                .or(event.event_time.as_ref().map(|time| time.0))
                .or(event.first_timestamp.as_ref().map(|time| time.0))
                .or(event
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|time| time.0)),
        })
        .collect();
    views.sort_by_key(|event| event.last_seen);
    let skip = views.len().saturating_sub(MAX_EVENTS);
    views.split_off(skip)
}

/// What `kubectl fedid status fid/NAME` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    /// `FederatedIdentity`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether it is a pod template (`spec.pods`): its pods get their own tokens.
    pub pod_template: bool,
    /// Conditions.
    pub conditions: Vec<ConditionView>,
    /// The issuer that signed the token (or the one named, before a token exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `kid` of the key that signed the token.
    #[serde(rename = "keyID", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `iat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Timestamp>,
    /// `exp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When fedid replaces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Timestamp>,
    /// When the exchanged credentials expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_expire_at: Option<Timestamp>,
    /// The annotation `fedid.dev/renew-requested-at`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_requested_at: Option<String>,
    /// Consecutive failed attempts.
    #[serde(skip_serializing_if = "is_zero")]
    pub failed_attempts: u32,
    /// Reason of the last failed attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
    /// The most recent exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exchange: Option<ExchangeView>,
    /// The Secret holding the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The token's header and claims.
    pub token: TokenView,
    /// Whether it verifies against the served JWKS.
    pub verification: Verification,
    /// Recent Events, oldest first.
    pub events: Vec<EventView>,
    /// Why the Events could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_unavailable: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn conditions(conditions: &[Condition]) -> Vec<ConditionView> {
    conditions
        .iter()
        .map(ConditionView::from_condition)
        .collect()
}

fn time(time: Option<&Time>) -> Option<Timestamp> {
    time.map(|time| time.0)
}

impl IdentityReport {
    /// The report for `identity`, given what was read beside it.
    pub fn new(
        identity: &FederatedIdentity,
        token: TokenView,
        verification: Verification,
        events: Result<&[Event], String>,
    ) -> Self {
        let status = identity.status.clone().unwrap_or_default();
        let (events, events_unavailable) = match events {
            Ok(events) => (event_views(events), None),
            Err(why) => (Vec::new(), Some(why)),
        };
        Self {
            kind: "FederatedIdentity",
            namespace: identity.namespace().unwrap_or_default(),
            name: identity.name_any(),
            pod_template: identity.spec.pods.is_some(),
            conditions: conditions(&status.conditions),
            issuer: status
                .issuer
                .clone()
                .or_else(|| identity.spec.issuer_ref.clone()),
            key_id: status.key_id.clone(),
            issued_at: time(status.issued_at.as_ref()),
            expires_at: time(status.expires_at.as_ref()),
            renew_at: time(status.renew_at.as_ref()),
            credentials_expire_at: time(status.credentials_expire_at.as_ref()),
            renew_requested_at: identity
                .annotations()
                .get(RENEW_REQUESTED_AT_ANNOTATION)
                .cloned(),
            failed_attempts: status.failed_attempts,
            last_failure_reason: status.last_failure_reason.clone(),
            last_exchange: status.last_exchange.as_ref().map(|last| ExchangeView {
                endpoint_host: last.endpoint_host.clone(),
                outcome: last.outcome.clone(),
                upstream_code: last.upstream_code.clone(),
                time: last.time.0,
                next_attempt_at: time(last.next_attempt_at.as_ref()),
            }),
            secret_name: status.secret_name.clone(),
            token,
            verification,
            events,
            events_unavailable,
        }
    }

    /// The text `status` prints by default.
    pub fn render(&self, now: Timestamp) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "FederatedIdentity {}/{}", self.namespace, self.name);
        let mut fields = Fields::default();
        if self.pod_template {
            fields.push(
                "Pod template",
                "yes: each opted-in pod gets its own token and Secret",
            );
        }
        fields.push_opt("Issuer", self.issuer.clone());
        fields.push_opt("Key ID", self.key_id.clone());
        fields.push_opt("Secret", self.secret_name.clone());
        fields.push_opt("Issued", at(self.issued_at, now));
        fields.push_opt("Expires", at(self.expires_at, now));
        fields.push_opt("Renews", at(self.renew_at, now));
        fields.push_opt("Credentials expire", at(self.credentials_expire_at, now));
        fields.push_opt("Renew requested", self.renew_requested_at.clone());
        if self.failed_attempts > 0 {
            fields.push(
                "Failed attempts",
                format!(
                    "{} (last: {})",
                    self.failed_attempts,
                    self.last_failure_reason.as_deref().unwrap_or("unknown")
                ),
            );
        }
        out.push_str(&fields.render());
        render_conditions(&mut out, &self.conditions, now);
        if let Some(last) = &self.last_exchange {
            let _ = writeln!(out, "\nLast exchange:");
            let mut fields = Fields::default();
            fields.push("Host", last.endpoint_host.clone());
            fields.push("Outcome", last.outcome.clone());
            fields.push_opt("Upstream code", last.upstream_code.clone());
            fields.push_opt("Time", at(Some(last.time), now));
            fields.push_opt("Next attempt", at(last.next_attempt_at, now));
            out.push_str(&fields.render());
        }
        let _ = writeln!(out, "\nToken:");
        let mut fields = Fields::default();
        match (&self.token.source, &self.token.unavailable) {
            (_, Some(why)) => fields.push("Claims", format!("not read: {why}")),
            (Some(source), None) => {
                let secret = self.secret_name.as_deref().unwrap_or("?");
                fields.push(
                    "Read from",
                    match source {
                        TokenSource::Secret => format!("Secret {secret}, key token"),
                        TokenSource::UnsignedToken => format!(
                            "Secret {secret}, annotation fedid.dev/unsigned-token (the Secret \
                             holds no signed token: output.includeSubjectToken is false)"
                        ),
                    },
                );
                if let Some(header) = &self.token.header {
                    fields.push("Header", inline(header));
                }
            }
            (None, None) => {}
        }
        fields.push("Verification", self.verification.line());
        out.push_str(&fields.render());
        if let Some(claims) = &self.token.claims {
            let _ = writeln!(out, "  Claims:");
            let mut claim_fields = Fields::indented(4);
            for (name, value) in claims {
                claim_fields.push(name, claim_value(name, value, now));
            }
            out.push_str(&claim_fields.render());
        }
        render_events(
            &mut out,
            &self.events,
            self.events_unavailable.as_deref(),
            now,
        );
        out
    }
}

/// What `kubectl fedid status issuer/NAME` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReport {
    /// `IdentityIssuer`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// `spec.issuerURL`: the `iss` claim.
    #[serde(rename = "issuerURL")]
    pub issuer_url: String,
    /// Whether it is the default issuer (`fedid.dev/default-issuer: "true"`).
    pub default: bool,
    /// Conditions.
    pub conditions: Vec<ConditionView>,
    /// The key that signs now.
    #[serde(rename = "activeKeyID", skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// Every key in the JWKS, by activation time.
    #[serde(rename = "publishedKeyIDs")]
    pub published_key_ids: Vec<String>,
    /// Published keys that take over after the active one (prepublished, not signing yet).
    #[serde(rename = "pendingKeyIDs")]
    pub pending_key_ids: Vec<String>,
    /// When the next key takes over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Timestamp>,
    /// The discovery document's URL.
    #[serde(rename = "discoveryURL", skip_serializing_if = "Option::is_none")]
    pub discovery_url: Option<String>,
    /// The JWKS URL.
    #[serde(rename = "jwksURL", skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The annotation `fedid.dev/rotate-keys`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_keys_request: Option<String>,
    /// Recent Events, oldest first.
    pub events: Vec<EventView>,
    /// Why the Events could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_unavailable: Option<String>,
}

/// The published keys that come after the active one. The status lists published keys by
/// activation time (the core's `KeyRing::published_keys`), so these are the pending ones.
pub fn pending_keys(published: &[String], active: Option<&str>) -> Vec<String> {
    match active.and_then(|active| published.iter().position(|kid| kid == active)) {
        Some(position) => published[position + 1..].to_vec(),
        None => Vec::new(),
    }
}

impl IssuerReport {
    /// The report for `issuer`.
    pub fn new(issuer: &IdentityIssuer, events: Result<&[Event], String>) -> Self {
        let status = issuer.status.clone().unwrap_or_default();
        let (events, events_unavailable) = match events {
            Ok(events) => (event_views(events), None),
            Err(why) => (Vec::new(), Some(why)),
        };
        Self {
            kind: "IdentityIssuer",
            name: issuer.name_any(),
            issuer_url: issuer.spec.issuer_url.clone(),
            default: issuer.is_default(),
            conditions: conditions(&status.conditions),
            pending_key_ids: pending_keys(
                &status.published_key_ids,
                status.active_key_id.as_deref(),
            ),
            active_key_id: status.active_key_id,
            published_key_ids: status.published_key_ids,
            next_rotation_time: time(status.next_rotation_time.as_ref()),
            discovery_url: status.discovery_url,
            jwks_url: status.jwks_url,
            rotate_keys_request: issuer.annotations().get(ROTATE_KEYS_ANNOTATION).cloned(),
            events,
            events_unavailable,
        }
    }

    /// The text `status` prints by default.
    pub fn render(&self, now: Timestamp) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "IdentityIssuer {}", self.name);
        let mut fields = Fields::default();
        fields.push("Issuer URL", self.issuer_url.clone());
        fields.push("Default", if self.default { "yes" } else { "no" });
        fields.push_opt("Active key", self.active_key_id.clone());
        let published = self
            .published_key_ids
            .iter()
            .map(|kid| {
                let role = if Some(kid) == self.active_key_id.as_ref() {
                    "signing"
                } else if self.pending_key_ids.contains(kid) {
                    "pending"
                } else {
                    "retired"
                };
                format!("{kid} ({role})")
            })
            .collect::<Vec<_>>();
        fields.push(
            "Published keys",
            if published.is_empty() {
                "none".to_owned()
            } else {
                published.join(", ")
            },
        );
        fields.push_opt("Next rotation", at(self.next_rotation_time, now));
        fields.push_opt("Discovery", self.discovery_url.clone());
        fields.push_opt("JWKS", self.jwks_url.clone());
        fields.push_opt("Rotation request", self.rotate_keys_request.clone());
        out.push_str(&fields.render());
        render_conditions(&mut out, &self.conditions, now);
        render_events(
            &mut out,
            &self.events,
            self.events_unavailable.as_deref(),
            now,
        );
        out
    }
}

/// `name: value` lines with the values aligned.
struct Fields {
    indent: usize,
    rows: Vec<(String, String)>,
}

impl Default for Fields {
    fn default() -> Self {
        Self::indented(2)
    }
}

impl Fields {
    fn indented(indent: usize) -> Self {
        Self {
            indent,
            rows: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((format!("{name}:"), value.into()));
    }

    fn push_opt(&mut self, name: &str, value: Option<String>) {
        if let Some(value) = value {
            self.push(name, value);
        }
    }

    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (name, value) in &self.rows {
            let _ = writeln!(
                out,
                "{:indent$}{name:<width$} {value}",
                "",
                indent = self.indent
            );
        }
        out
    }
}

/// Columns padded to their widest cell, the last one unpadded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("  ");
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[index].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render_conditions(out: &mut String, conditions: &[ConditionView], now: Timestamp) {
    let _ = writeln!(out, "\nConditions:");
    if conditions.is_empty() {
        let _ = writeln!(out, "  none yet: not reconciled");
        return;
    }
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|condition| {
            vec![
                condition.type_.clone(),
                condition.status.clone(),
                condition.reason.clone(),
                age(condition.last_transition_time, now),
                condition.message.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
        &rows,
    ));
}

fn render_events(
    out: &mut String,
    events: &[EventView],
    unavailable: Option<&str>,
    now: Timestamp,
) {
    let _ = writeln!(out, "\nEvents:");
    if let Some(why) = unavailable {
        let _ = writeln!(out, "  not listed: {why}");
        return;
    }
    if events.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                event.type_.clone(),
                event.reason.clone(),
                event
                    .last_seen
                    .map_or_else(|| "?".to_owned(), |seen| age(seen, now)),
                if event.count > 1 {
                    format!("x{}", event.count)
                } else {
                    String::new()
                },
                event.message.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"],
        &rows,
    ));
}

/// A header as `alg=RS256 kid=... typ=JWT`.
fn inline(map: &Map<String, Value>) -> String {
    map.iter()
        .map(|(name, value)| format!("{name}={}", scalar(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A claim's value; the time claims also as a time relative to `now`.
fn claim_value(name: &str, value: &Value, now: Timestamp) -> String {
    let text = scalar(value);
    match (name, value.as_i64()) {
        ("iat" | "nbf" | "exp", Some(second)) => Timestamp::from_second(second)
            .map_or(text.clone(), |stamp| {
                format!("{text} = {}", at(Some(stamp), now).unwrap_or_default())
            }),
        _ => text,
    }
}

/// `2027-01-15T08:00:00Z (3m ago)` or `(in 42m)`.
fn at(time: Option<Timestamp>, now: Timestamp) -> Option<String> {
    let time = time?;
    let offset = time.duration_since(now);
    let relative = if offset.is_negative() {
        format!("{} ago", human(offset.abs()))
    } else {
        format!("in {}", human(offset))
    };
    Some(format!("{time} ({relative})"))
}

/// The age of something that happened at `time`.
fn age(time: Timestamp, now: Timestamp) -> String {
    human(now.duration_since(time).max(SignedDuration::ZERO))
}

/// A duration as kubectl prints ages: `45s`, `3m20s`, `42m`, `2h5m`, `30h`, `3d4h`, `12d`.
pub fn human(duration: SignedDuration) -> String {
    let seconds = duration.as_secs().max(0);
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        }
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        }
    } else {
        format!("{days}d")
    }
}

#[cfg(test)]
mod tests {
    use fedid_core::issuer::keys::{Signer, generate_key, jwks};
    use k8s_openapi::api::core::v1::EventSeries;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    use super::*;

    const T0: i64 = 1_800_000_000;
    const ISSUER_URL: &str = "https://fedid.example.com/issuers/ci";
    const JWKS_URL: &str = "https://fedid.example.com/issuers/ci/.well-known/jwks.json";

    fn at_second(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    fn identity() -> FederatedIdentity {
        serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": "deploy", "namespace": "team-a", "uid": "uid-1",
                         "annotations": {"fedid.dev/renew-requested-at": "2027-01-15T08:00:00Z"}},
            "spec": {"audiences": ["sts.example.com"], "exchange": {"vault": {"address": "https://bao.example.com", "role": "r"}}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Issued",
                     "message": "token from IdentityIssuer ci", "lastTransitionTime": "2027-01-15T08:00:00Z"},
                    {"type": "CredentialsFresh", "status": "False", "reason": "ExchangeRejected",
                     "message": "the token service refused", "lastTransitionTime": "2027-01-15T08:05:00Z"},
                ],
                "secretName": "deploy-token", "issuer": "ci", "keyID": "kid-1",
                "issuedAt": "2027-01-15T08:00:00Z", "expiresAt": "2027-01-15T09:00:00Z",
                "renewAt": "2027-01-15T08:40:00Z", "credentialsExpireAt": "2027-01-15T08:30:00Z",
                "failedAttempts": 2, "lastFailureReason": "ExchangeRejected",
                "lastExchange": {"endpointHost": "bao.example.com", "outcome": "ExchangeRejected",
                                 "upstreamCode": "permission denied", "time": "2027-01-15T08:05:00Z",
                                 "nextAttemptAt": "2027-01-15T08:05:10Z"},
            },
        }))
        .expect("identity")
    }

    fn event(reason: &str, seen: i64, count: Option<i32>) -> Event {
        Event {
            type_: Some("Normal".into()),
            reason: Some(reason.into()),
            message: Some(format!("{reason} happened")),
            event_time: Some(MicroTime(at_second(seen))),
            series: count.map(|count| EventSeries {
                count: Some(count),
                last_observed_time: Some(MicroTime(at_second(seen + 30))),
            }),
            ..Event::default()
        }
    }

    /// A signed token and the JWKS that verifies it.
    fn signed(audience: &str, issued: i64) -> (String, Value) {
        let key = generate_key(fedid_core::crd::SigningAlgorithm::ES256, at_second(T0 - 60))
            .expect("key");
        let signer = Signer::new(&key).expect("signer");
        let claims = json!({"iss": ISSUER_URL, "sub": "system:fedid:team-a:deploy", "aud": [audience],
                            "iat": issued, "nbf": issued, "exp": issued + 3600, "jti": "j1"});
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        let jwt = signer.sign(&claims).expect("signs");
        let set = jwks(&[&key]).expect("jwks");
        (jwt, set)
    }

    #[test]
    fn targets_name_a_kind_as_kubectl_spells_it() {
        for text in [
            "fid/web",
            "FID/web",
            "federatedidentity/web",
            "federatedidentities.fedid.dev/web",
        ] {
            assert_eq!(
                Target::parse(text, BareName::Issuer),
                Ok(Target::Identity("web".into())),
                "{text}"
            );
        }
        for text in [
            "issuer/ci",
            "identityissuer/ci",
            "identityissuers.fedid.dev/ci",
        ] {
            assert_eq!(
                Target::parse(text, BareName::Identity),
                Ok(Target::Issuer("ci".into())),
                "{text}"
            );
        }
        assert_eq!(
            Target::parse("web", BareName::Identity),
            Ok(Target::Identity("web".into()))
        );
        assert_eq!(
            Target::parse("ci", BareName::Issuer),
            Ok(Target::Issuer("ci".into()))
        );
        let unknown = Target::parse("pod/web", BareName::Identity).expect_err("unknown kind");
        assert!(unknown.contains("unknown kind \"pod\""), "{unknown}");
        for bad in ["fid/", "fid/a/b", ""] {
            assert!(Target::parse(bad, BareName::Identity).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (200, "3m20s"),
            (300, "5m"),
            (42 * 60, "42m"),
            (2 * 3600 + 300, "125m"),
            (3 * 3600 + 300, "3h5m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (12 * 86_400, "12d"),
        ];
        for (seconds, text) in cases {
            assert_eq!(human(SignedDuration::from_secs(seconds)), text, "{seconds}");
        }
    }

    #[test]
    fn the_identity_report_holds_every_field_and_no_token() {
        let (jwt, set) = signed("sts.example.com", T0);
        let token = TokenView::decode(&jwt, TokenSource::Secret);
        let verification = Verification::check(
            &jwt,
            &set,
            JWKS_URL,
            "sts.example.com",
            ISSUER_URL,
            at_second(T0 + 60),
        );
        let events = [
            event("Issued", T0, None),
            event("ExchangeRejected", T0 + 300, Some(3)),
        ];
        let report = IdentityReport::new(&identity(), token, verification, Ok(&events));
        let value = serde_json::to_value(&report).expect("serializes");
        assert_eq!(value["kind"], "FederatedIdentity");
        assert_eq!(value["namespace"], "team-a");
        assert_eq!(value["issuer"], "ci");
        assert_eq!(value["keyID"], "kid-1");
        assert_eq!(value["secretName"], "deploy-token");
        assert_eq!(value["issuedAt"], "2027-01-15T08:00:00Z");
        assert_eq!(value["expiresAt"], "2027-01-15T09:00:00Z");
        assert_eq!(value["renewAt"], "2027-01-15T08:40:00Z");
        assert_eq!(value["credentialsExpireAt"], "2027-01-15T08:30:00Z");
        assert_eq!(value["renewRequestedAt"], "2027-01-15T08:00:00Z");
        assert_eq!(value["failedAttempts"], 2);
        assert_eq!(
            value["lastExchange"],
            json!({"endpointHost": "bao.example.com", "outcome": "ExchangeRejected",
                   "upstreamCode": "permission denied", "time": "2027-01-15T08:05:00Z",
                   "nextAttemptAt": "2027-01-15T08:05:10Z"})
        );
        assert_eq!(
            value["conditions"][1],
            json!({"type": "CredentialsFresh", "status": "False", "reason": "ExchangeRejected",
                   "message": "the token service refused", "lastTransitionTime": "2027-01-15T08:05:00Z"})
        );
        assert_eq!(value["token"]["source"], "secret");
        assert_eq!(value["token"]["claims"]["jti"], "j1");
        assert_eq!(value["token"]["header"]["alg"], "ES256");
        assert_eq!(
            value["verification"],
            json!({"result": "verified", "jwksURL": JWKS_URL,
                   "detail": "signature, audience \"sts.example.com\", issuer and expiry hold"})
        );
        assert_eq!(
            value["events"],
            json!([
                {"type": "Normal", "reason": "Issued", "message": "Issued happened", "count": 1,
                 "lastSeen": "2027-01-15T08:00:00Z"},
                {"type": "Normal", "reason": "ExchangeRejected", "message": "ExchangeRejected happened",
                 "count": 3, "lastSeen": "2027-01-15T08:05:30Z"},
            ])
        );
        // Neither the JSON nor the text carries the token (or its signature).
        let signature = jwt.rsplit('.').next().expect("a signature");
        let yaml = serde_saphyr::to_string(&report).expect("yaml");
        let text = report.render(at_second(T0 + 600));
        for shown in [value.to_string(), yaml, text] {
            assert!(!shown.contains(&jwt) && !shown.contains(signature));
        }
    }

    #[test]
    fn the_identity_text_has_its_sections() {
        let (jwt, set) = signed("sts.example.com", T0);
        let report = IdentityReport::new(
            &identity(),
            TokenView::decode(&jwt, TokenSource::Secret),
            Verification::check(
                &jwt,
                &set,
                JWKS_URL,
                "sts.example.com",
                ISSUER_URL,
                at_second(T0),
            ),
            Ok(&[event("Issued", T0, None)]),
        );
        let text = report.render(at_second(T0 + 600));
        let expected_lines = [
            "FederatedIdentity team-a/deploy",
            "  Issuer:             ci",
            "  Key ID:             kid-1",
            "  Secret:             deploy-token",
            "  Issued:             2027-01-15T08:00:00Z (10m ago)",
            "  Expires:            2027-01-15T09:00:00Z (in 50m)",
            "  Renews:             2027-01-15T08:40:00Z (in 30m)",
            "  Credentials expire: 2027-01-15T08:30:00Z (in 20m)",
            "  Renew requested:    2027-01-15T08:00:00Z",
            "  Failed attempts:    2 (last: ExchangeRejected)",
            "Conditions:",
            "  TYPE              STATUS  REASON            AGE  MESSAGE",
            "  Ready             True    Issued            10m  token from IdentityIssuer ci",
            "  CredentialsFresh  False   ExchangeRejected  5m   the token service refused",
            "Last exchange:",
            "  Upstream code: permission denied",
            "  Next attempt:  2027-01-15T08:05:10Z (4m50s ago)",
            "Token:",
            "  Read from:    Secret deploy-token, key token",
            &format!("  Verification: verified against {JWKS_URL}"),
            "  Claims:",
            "    jti: j1",
            "    exp: 1800003600 = 2027-01-15T09:00:00Z (in 50m)",
            "Events:",
            "  TYPE    REASON  AGE  COUNT  MESSAGE",
            "  Normal  Issued  10m         Issued happened",
        ];
        for line in expected_lines {
            assert!(
                text.lines().any(|shown| shown == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            text.contains("  Header:       alg=ES256 kid="),
            "header in:\n{text}"
        );
    }

    #[test]
    fn verification_fails_or_is_not_checked_with_the_reason() {
        let (jwt, set) = signed("sts.example.com", T0);
        let other_audience =
            Verification::check(&jwt, &set, JWKS_URL, "vault", ISSUER_URL, at_second(T0));
        assert_eq!(other_audience.result, VerificationResult::Failed);
        assert!(
            other_audience.detail.contains("audience"),
            "{other_audience:?}"
        );
        let expired = Verification::check(
            &jwt,
            &set,
            JWKS_URL,
            "sts.example.com",
            ISSUER_URL,
            at_second(T0 + 7200),
        );
        assert_eq!(expired.result, VerificationResult::Failed);
        assert!(
            expired.line().starts_with("FAILED against "),
            "{}",
            expired.line()
        );
        let (_, other_keys) = signed("sts.example.com", T0);
        let unknown_key = Verification::check(
            &jwt,
            &other_keys,
            JWKS_URL,
            "sts.example.com",
            ISSUER_URL,
            at_second(T0),
        );
        assert!(
            unknown_key.detail.contains("no key with kid"),
            "{unknown_key:?}"
        );
        let unreachable = Verification::not_checked("connection refused", Some(JWKS_URL));
        assert_eq!(unreachable.line(), "not checked: connection refused");
        assert_eq!(
            serde_json::to_value(&unreachable).expect("json")["result"],
            "notChecked"
        );
    }

    #[test]
    fn an_unsigned_token_shows_its_claims_and_is_not_verified() {
        let (jwt, _) = signed("sts.example.com", T0);
        let unsigned = fedid_core::credentials::secret::unsigned_token(&jwt);
        let token = TokenView::decode(&unsigned, TokenSource::UnsignedToken);
        assert_eq!(
            token.claims.as_ref().map(|claims| claims["jti"].clone()),
            Some(json!("j1"))
        );
        let report = IdentityReport::new(
            &identity(),
            token,
            Verification::not_checked("the Secret holds no signed token", None),
            Err("forbidden".into()),
        );
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(value["token"]["source"], "unsigned-token");
        assert_eq!(value["eventsUnavailable"], "forbidden");
        let text = report.render(at_second(T0));
        assert!(
            text.contains("annotation fedid.dev/unsigned-token"),
            "{text}"
        );
        assert!(text.contains("  not listed: forbidden"), "{text}");
        let garbage = TokenView::decode("garbage", TokenSource::Secret);
        assert!(garbage.claims.is_none() && garbage.unavailable.is_some());
    }

    #[test]
    fn an_unreconciled_identity_says_so() {
        let mut fresh = identity();
        fresh.status = None;
        fresh.metadata.annotations = None;
        let report = IdentityReport::new(
            &fresh,
            TokenView::unavailable("fid/deploy has no Secret yet"),
            Verification::not_checked("no token yet", None),
            Ok(&[]),
        );
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(value["conditions"], json!([]));
        assert!(value.get("issuedAt").is_none() && value.get("failedAttempts").is_none());
        let text = report.render(at_second(T0));
        assert!(text.contains("none yet: not reconciled"), "{text}");
        assert!(
            text.contains("Claims:       not read: fid/deploy has no Secret yet"),
            "{text}"
        );
        assert!(text.contains("Events:\n  none"), "{text}");
    }

    #[test]
    fn only_the_latest_events_are_shown_oldest_first() {
        let events: Vec<Event> = (0..15)
            .rev()
            .map(|n| event(&format!("R{n}"), T0 + n, None))
            .collect();
        let shown = event_views(&events);
        assert_eq!(shown.len(), MAX_EVENTS);
        assert_eq!(shown[0].reason, "R5");
        assert_eq!(shown[MAX_EVENTS - 1].reason, "R14");
    }

    #[test]
    fn the_issuer_report_marks_the_signing_pending_and_retired_keys() {
        let issuer: IdentityIssuer = serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer",
            "metadata": {"name": "ci", "annotations": {"fedid.dev/default-issuer": "true",
                                                       "fedid.dev/rotate-keys": "r1"}},
            "spec": {"issuerURL": ISSUER_URL},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KeysReady",
                                "message": "key k2 signs tokens; 3 key(s) published",
                                "lastTransitionTime": "2027-01-15T08:00:00Z"}],
                "activeKeyID": "k2", "publishedKeyIDs": ["k1", "k2", "k3"],
                "nextRotationTime": "2027-01-15T10:00:00Z",
                "discoveryURL": format!("{ISSUER_URL}/.well-known/openid-configuration"),
                "jwksURL": JWKS_URL,
            },
        }))
        .expect("issuer");
        let report = IssuerReport::new(&issuer, Ok(&[event("KeyCreated", T0, None)]));
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(value["activeKeyID"], "k2");
        assert_eq!(value["publishedKeyIDs"], json!(["k1", "k2", "k3"]));
        assert_eq!(value["pendingKeyIDs"], json!(["k3"]));
        assert_eq!(value["nextRotationTime"], "2027-01-15T10:00:00Z");
        assert_eq!(value["jwksURL"], JWKS_URL);
        assert_eq!(value["default"], true);
        assert_eq!(value["rotateKeysRequest"], "r1");
        assert_eq!(value["conditions"][0]["reason"], "KeysReady");
        let text = report.render(at_second(T0));
        for line in [
            "IdentityIssuer ci",
            "  Default:          yes",
            "  Active key:       k2",
            "  Published keys:   k1 (retired), k2 (signing), k3 (pending)",
            "  Next rotation:    2027-01-15T10:00:00Z (in 120m)",
            &format!("  JWKS:             {JWKS_URL}"),
            "  Rotation request: r1",
        ] {
            assert!(
                text.lines().any(|shown| shown == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert_eq!(pending_keys(&["k1".into()], None), Vec::<String>::new());
        assert_eq!(
            pending_keys(&["k1".into()], Some("k1")),
            Vec::<String>::new()
        );
    }
}
