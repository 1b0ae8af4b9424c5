//! The plan phase: given the validated identity, the Secret that exists and the time, keep the
//! stored token (and until when), or issue a new one (and why). Nothing is built when the
//! plan is to keep.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Map, Value};

use crate::{
    credentials::{
        secret::{
            CREDENTIALS_EXPIRE_AT_ANNOTATION, EXCHANGE_DIGEST_ANNOTATION, OUTPUT_DIGEST_ANNOTATION,
            Ownership, TOKEN_KEY, UNSIGNED_TOKEN_ANNOTATION, data_changed_since_written, ownership,
        },
        token::decode_unverified,
    },
    exchange::Credentials,
    identity::{
        schedule::{
            ExistingToken, ReissueDecision, ReissueInput, ReissueReason, renew_at, should_reissue,
        },
        validate::ValidatedIdentity,
    },
    reason::{Failure, Reason, Retry},
    timing::deterministic_jitter,
};

/// The token an identity's Secret holds after a successful pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Secret name.
    pub secret_name: String,
    /// Issuer name.
    pub issuer: String,
    /// Signing key id.
    pub key_id: String,
    /// `iat`.
    pub issued_at: Timestamp,
    /// `exp`.
    pub expires_at: Timestamp,
    /// When to renew.
    pub renew_at: Timestamp,
    /// When the exchanged credentials expire, for an identity with an exchange.
    pub credentials_expire_at: Option<Timestamp>,
    /// Set when this pass wrote a new token, with why.
    pub written: Option<ReissueReason>,
}

impl Issued {
    /// The credentials this pass obtained and wrote for `identity`, with their deterministic
    /// renewal time (`margin` is the least validity left at renewal).
    pub fn written(
        identity: &ValidatedIdentity,
        credentials: &Credentials,
        reason: ReissueReason,
        margin: SignedDuration,
    ) -> Self {
        let token = &credentials.token;
        Self {
            secret_name: identity.secret_name.clone(),
            issuer: identity.issuer.clone(),
            key_id: token.key_id.clone(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            renew_at: renewal_time(
                &identity.uid,
                token.issued_at,
                credentials.expires_at(),
                margin,
            ),
            credentials_expire_at: credentials
                .exchanged
                .as_ref()
                .map(|exchanged| exchanged.expires_at),
            written: Some(reason),
        }
    }
}

/// What the plan phase decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The stored token stays; nothing is minted or written.
    Keep(Issued),
    /// A new token is minted and written.
    Issue {
        /// Why.
        reason: ReissueReason,
        /// Whether fedid's Secret already exists (apply it) or not (create it).
        secret_exists: bool,
    },
}

/// Why the plan phase refuses to go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The Secret exists and fedid does not own it.
    #[error(
        "Secret {secret} exists and is not managed by fedid for this FederatedIdentity; fedid \
         never takes over a Secret it did not create: delete that Secret or set spec.secretName"
    )]
    SecretConflict {
        /// Secret name.
        secret: String,
    },
}

impl Failure for PlanError {
    fn reason(&self) -> Reason {
        match self {
            Self::SecretConflict { .. } => Reason::SecretConflict,
        }
    }

    fn retry(&self) -> Retry {
        Retry::WaitForChange
    }
}

/// When the token issued at `issued_at` for identity `uid` is renewed: deterministic per
/// token, so a restarted operator computes the same time.
pub fn renewal_time(
    uid: &str,
    issued_at: Timestamp,
    expires_at: Timestamp,
    margin: SignedDuration,
) -> Timestamp {
    let jitter = deterministic_jitter(&format!("{uid}/{}", issued_at.as_second()));
    renew_at(issued_at, expires_at, jitter, margin)
}

/// Whether a failure with `reason` takes the identity's right to a token away, so that the
/// token Secret it owns is deleted rather than left valid until it expires: the issuer's policy
/// no longer allows its namespace (names or selector), or the issuer it names is gone.
pub fn revokes(reason: Reason) -> bool {
    matches!(reason, Reason::NamespaceNotAllowed | Reason::IssuerNotFound)
}

/// The token found in an identity's Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToken {
    /// Its decoded (not verified) claims.
    pub claims: Map<String, Value>,
    /// The `kid` of its header.
    pub key_id: String,
    /// `iat`.
    pub issued_at: Timestamp,
    /// `exp`.
    pub expires_at: Timestamp,
    /// When it is due for renewal.
    pub renew_at: Timestamp,
    /// The exchanged credentials stored beside it, if any.
    pub credentials: Option<StoredCredentials>,
    /// Whether the Secret holds the signed token (else only its unsigned form, in an
    /// annotation).
    pub signed: bool,
    /// The digest of the output templates and type it was rendered with, if any.
    pub output_digest: Option<String>,
}

/// What fedid recorded about the exchanged credentials in a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredentials {
    /// Digest of the exchange spec they were obtained with.
    pub spec_digest: String,
    /// When they expire (`None` when the annotation is unreadable).
    pub expires_at: Option<Timestamp>,
}

impl StoredCredentials {
    /// Reads fedid's annotations on `secret`; `None` when it holds no exchanged credentials.
    pub fn read(secret: &Secret) -> Option<Self> {
        let annotations = secret.metadata.annotations.as_ref()?;
        Some(Self {
            spec_digest: annotations.get(EXCHANGE_DIGEST_ANNOTATION)?.clone(),
            expires_at: annotations
                .get(CREDENTIALS_EXPIRE_AT_ANNOTATION)
                .and_then(|text| text.parse().ok()),
        })
    }
}

impl StoredToken {
    /// Decodes the token in `secret` (the signed one in its data, else the unsigned one in its
    /// annotation); `None` when there is none or it is unreadable.
    pub fn read(secret: &Secret, uid: &str, margin: SignedDuration) -> Option<Self> {
        let signed = secret
            .data
            .as_ref()
            .and_then(|data| data.get(TOKEN_KEY))
            .map(|bytes| std::str::from_utf8(&bytes.0).ok());
        let jwt = match signed {
            Some(jwt) => jwt?,
            None => secret
                .metadata
                .annotations
                .as_ref()?
                .get(UNSIGNED_TOKEN_ANNOTATION)?,
        };
        let decoded = decode_unverified(jwt).ok()?;
        let key_id = decoded.key_id()?.to_owned();
        let issued_at = decoded.issued_at()?;
        let expires_at = decoded.expires_at()?;
        let credentials = StoredCredentials::read(secret);
        let usable_until = credentials
            .as_ref()
            .and_then(|credentials| credentials.expires_at)
            .map_or(expires_at, |credentials| credentials.min(expires_at));
        Some(Self {
            renew_at: renewal_time(uid, issued_at, usable_until, margin),
            credentials,
            claims: decoded.claims,
            key_id,
            issued_at,
            expires_at,
            signed: signed.is_some(),
            output_digest: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(OUTPUT_DIGEST_ANNOTATION))
                .cloned(),
        })
    }
}

/// Whether the exchanged credentials beside a token that can stay can stay too: they must
/// exist exactly when the identity has an exchange, come from the same exchange spec, and not
/// be due (the stored `renew_at` already accounts for their expiry); and the Secret must hold
/// the signed token exactly when `output.includeSubjectToken` asks for it, rendered with the
/// current `output.template` and `output.secretType`.
fn exchange_decision(
    identity: &ValidatedIdentity,
    stored: &StoredToken,
    renew_at: Timestamp,
    now: Timestamp,
) -> ReissueDecision {
    let reissue = |reason| ReissueDecision::Reissue { reason };
    if stored.signed != identity.include_subject_token
        || stored.output_digest != identity.output.digest()
    {
        return reissue(ReissueReason::SpecChanged);
    }
    match (&identity.exchange, &stored.credentials) {
        (None, None) => ReissueDecision::Keep { renew_at },
        (None, Some(_)) => reissue(ReissueReason::SpecChanged),
        (Some(_), None) => reissue(ReissueReason::NoToken),
        (Some(exchange), Some(credentials)) => match credentials.expires_at {
            _ if credentials.spec_digest != exchange.spec_digest => {
                reissue(ReissueReason::SpecChanged)
            }
            None => reissue(ReissueReason::NoToken),
            Some(expires_at) if expires_at <= now => reissue(ReissueReason::Expired),
            Some(_) if stored.renew_at <= now => reissue(ReissueReason::DueForRenewal),
            Some(_) => ReissueDecision::Keep {
                renew_at: renew_at.min(stored.renew_at),
            },
        },
    }
}

/// The plan phase. `existing` is the Secret of that name as fedid last saw it (its own cache
/// overlaid with its own writes), `published_key_ids` the issuer's JWKS at `now`, `margin` the
/// least validity left when a token is renewed.
pub fn plan(
    identity: &ValidatedIdentity,
    existing: Option<&Secret>,
    published_key_ids: &[String],
    now: Timestamp,
    margin: SignedDuration,
) -> Result<Plan, PlanError> {
    let secret_exists = match ownership(existing, &identity.uid) {
        Ownership::Foreign => {
            return Err(PlanError::SecretConflict {
                secret: identity.secret_name.clone(),
            });
        }
        Ownership::Ours => true,
        Ownership::Absent => false,
    };
    // Data someone else changed is written again, whatever it holds now.
    if existing.is_some_and(data_changed_since_written) {
        return Ok(Plan::Issue {
            reason: ReissueReason::SecretChanged,
            secret_exists,
        });
    }
    let stored = existing.and_then(|secret| StoredToken::read(secret, &identity.uid, margin));
    let decision = should_reissue(&ReissueInput {
        existing: stored.as_ref().map(|token| ExistingToken {
            claims: &token.claims,
            key_id: &token.key_id,
            renew_at: token.renew_at,
        }),
        desired_claims: identity.claims.stable_claims(),
        desired_lifetime_seconds: i64::from(identity.claims.lifetime().as_secs()),
        published_key_ids,
        renew_requested_at: identity.renew_requested_at,
        now,
    });
    let decision = match (decision, &stored) {
        (ReissueDecision::Keep { renew_at }, Some(stored)) => {
            exchange_decision(identity, stored, renew_at, now)
        }
        (decision, _) => decision,
    };
    Ok(match (decision, stored) {
        (ReissueDecision::Keep { renew_at }, Some(stored)) => Plan::Keep(Issued {
            credentials_expire_at: stored
                .credentials
                .as_ref()
                .and_then(|credentials| credentials.expires_at),
            secret_name: identity.secret_name.clone(),
            issuer: identity.issuer.clone(),
            key_id: stored.key_id,
            issued_at: stored.issued_at,
            expires_at: stored.expires_at,
            renew_at,
            written: None,
        }),
        (ReissueDecision::Reissue { reason }, _) => Plan::Issue {
            reason,
            secret_exists,
        },
        (ReissueDecision::Keep { .. }, None) => Plan::Issue {
            reason: ReissueReason::NoToken,
            secret_exists,
        },
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use kube_core::Resource;
    use serde_json::json;

    use super::*;
    use crate::{
        crd::{FederatedIdentity, IdentityIssuer},
        exchange::without_exchange,
        identity::{mint::mint, render::render_secret, validate::validate},
        issuer::{
            config::validate_issuer_spec,
            key_store::rotate,
            keys::{KeyRing, Signer, generate_key},
        },
    };

    const T0: i64 = 1_800_000_000;
    const MARGIN: SignedDuration = SignedDuration::from_mins(5);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    struct World {
        issuer: IdentityIssuer,
        identity: FederatedIdentity,
        signer: Signer,
    }

    impl World {
        fn new() -> Self {
            let issuer: IdentityIssuer = serde_json::from_value(json!({
                "apiVersion": "fedid.dev/v1alpha1", "kind": "IdentityIssuer",
                "metadata": {"name": "ci", "uid": "uid-ci"},
                "spec": {"issuerURL": "https://fedid.example.com", "allowedNamespaces": {"all": true}},
            }))
            .expect("issuer");
            let identity: FederatedIdentity = serde_json::from_value(json!({
                "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
                "metadata": {"name": "deploy", "namespace": "ci", "uid": "uid-deploy"},
                "spec": {"audiences": ["sts.example.com"]},
            }))
            .expect("identity");
            let config = validate_issuer_spec(&issuer.spec).expect("valid");
            let ring = rotate(
                KeyRing::default(),
                &config.rotation,
                None,
                at(T0 - 60),
                generate_key,
            )
            .expect("ring")
            .ring;
            let signer =
                Signer::new(ring.signing_key(at(T0)).expect("a key signs")).expect("signer");
            Self {
                issuer,
                identity,
                signer,
            }
        }

        fn validated(&self) -> ValidatedIdentity {
            let config = validate_issuer_spec(&self.issuer.spec).expect("valid");
            validate(
                &self.identity,
                &self.issuer,
                &config,
                None,
                std::time::Duration::from_secs(600),
            )
            .expect("valid identity")
        }

        /// The Secret fedid would have written for a token minted at `issued_at`.
        fn secret(&self, issued_at: i64) -> Secret {
            let validated = self.validated();
            let minted = mint(&validated, &self.signer, at(issued_at), "jti").expect("mints");
            render_secret(&validated, &without_exchange(minted)).expect("renders")
        }

        fn published(&self) -> Vec<String> {
            vec![self.signer.kid().to_owned()]
        }
    }

    #[test]
    fn no_secret_means_issue_and_create() {
        let world = World::new();
        assert_eq!(
            plan(&world.validated(), None, &world.published(), at(T0), MARGIN),
            Ok(Plan::Issue {
                reason: ReissueReason::NoToken,
                secret_exists: false
            })
        );
    }

    #[test]
    fn a_valid_token_is_kept_until_its_deterministic_renewal_time() {
        let world = World::new();
        let secret = world.secret(T0);
        let kept = plan(
            &world.validated(),
            Some(&secret),
            &world.published(),
            at(T0 + 60),
            MARGIN,
        )
        .expect("plans");
        let renew_at = renewal_time("uid-deploy", at(T0), at(T0 + 3600), MARGIN);
        assert_eq!(
            kept,
            Plan::Keep(Issued {
                credentials_expire_at: None,
                secret_name: "deploy-token".into(),
                issuer: "ci".into(),
                key_id: world.signer.kid().to_owned(),
                issued_at: at(T0),
                expires_at: at(T0 + 3600),
                renew_at,
                written: None,
            })
        );
        // Two thirds of the hour, ±10%.
        assert!(
            renew_at >= at(T0 + 2160) && renew_at <= at(T0 + 2640),
            "{renew_at}"
        );
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                renew_at,
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::DueForRenewal,
                secret_exists: true
            })
        );
    }

    #[test]
    fn a_changed_spec_or_an_unpublished_key_means_reissue() {
        let mut world = World::new();
        let secret = world.secret(T0);
        assert_eq!(
            plan(&world.validated(), Some(&secret), &[], at(T0 + 60), MARGIN),
            Ok(Plan::Issue {
                reason: ReissueReason::KeyUnpublished,
                secret_exists: true
            })
        );
        world.identity.spec.audiences = vec!["other".into()];
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0 + 60),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::SpecChanged,
                secret_exists: true
            })
        );
    }

    /// Sets the identity's renew-requested-at annotation.
    fn request_renewal(world: &mut World, requested_at: &str) {
        world.identity.metadata.annotations = Some(std::collections::BTreeMap::from([(
            crate::crd::identity::RENEW_REQUESTED_AT_ANNOTATION.to_owned(),
            requested_at.to_owned(),
        )]));
    }

    #[test]
    fn a_renew_request_reissues_a_token_issued_before_it_and_only_that_one() {
        let mut world = World::new();
        let secret = world.secret(T0);
        // Asked for a minute after the token was issued, seen two minutes in.
        request_renewal(&mut world, "2027-01-15T08:01:00Z");
        assert_eq!(world.validated().renew_requested_at, Some(at(T0 + 60)));
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0 + 120),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::RenewRequested,
                secret_exists: true
            })
        );
        // The token written for it (issued in the request's second or later) is kept.
        for issued in [T0 + 60, T0 + 120] {
            let renewed = world.secret(issued);
            assert!(
                matches!(
                    plan(
                        &world.validated(),
                        Some(&renewed),
                        &world.published(),
                        at(T0 + 120),
                        MARGIN
                    ),
                    Ok(Plan::Keep(Issued { issued_at, .. })) if issued_at == at(issued)
                ),
                "issued at T0+{}",
                issued - T0
            );
        }
        // A request older than the token is already answered; an unreadable one is ignored.
        for answered in ["2027-01-15T07:59:59Z", "soon"] {
            request_renewal(&mut world, answered);
            assert!(
                matches!(
                    plan(
                        &world.validated(),
                        Some(&secret),
                        &world.published(),
                        at(T0 + 120),
                        MARGIN
                    ),
                    Ok(Plan::Keep(_))
                ),
                "{answered}"
            );
        }
    }

    #[test]
    fn a_renew_request_dated_later_is_kept_for_its_time() {
        let mut world = World::new();
        let secret = world.secret(T0);
        request_renewal(&mut world, "2027-01-15T08:10:00Z");
        let Ok(Plan::Keep(kept)) = plan(
            &world.validated(),
            Some(&secret),
            &world.published(),
            at(T0 + 60),
            MARGIN,
        ) else {
            panic!("kept until the requested time");
        };
        assert_eq!(kept.renew_at, at(T0 + 600));
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0 + 600),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::RenewRequested,
                secret_exists: true
            })
        );
    }

    #[test]
    fn a_renew_request_exchanges_again() {
        let mut world = World::new();
        exchanging(&mut world, "deploy");
        request_renewal(&mut world, "2027-01-15T08:01:00Z");
        let validated = world.validated();
        let secret = exchanged_secret(&world, &validated, T0 + 3600);
        assert_eq!(
            plan(
                &validated,
                Some(&secret),
                &world.published(),
                at(T0 + 120),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::RenewRequested,
                secret_exists: true
            })
        );
    }

    #[test]
    fn a_secret_owned_by_anyone_else_is_a_conflict_waiting_for_a_change() {
        let world = World::new();
        let mut secret = world.secret(T0);
        secret.metadata.owner_references = None;
        let error = plan(
            &world.validated(),
            Some(&secret),
            &world.published(),
            at(T0),
            MARGIN,
        )
        .expect_err("conflict");
        assert_eq!(error.reason(), Reason::SecretConflict);
        assert_eq!(error.retry(), Retry::WaitForChange);
        // A Secret of the same name owned by another identity is just as foreign.
        let mut other = world.identity.clone();
        other.metadata.uid = Some("uid-other".into());
        secret.metadata.owner_references = other.controller_owner_ref(&()).map(|owner| vec![owner]);
        assert!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0),
                MARGIN
            )
            .is_err()
        );
    }

    #[test]
    fn a_written_token_is_kept_until_the_renewal_time_it_was_reported_with() {
        let world = World::new();
        let validated = world.validated();
        let minted = mint(&validated, &world.signer, at(T0), "jti").expect("mints");
        let written = Issued::written(
            &validated,
            &without_exchange(minted.clone()),
            ReissueReason::NoToken,
            MARGIN,
        );
        let secret = render_secret(&validated, &without_exchange(minted)).expect("renders");
        let Ok(Plan::Keep(kept)) = plan(
            &validated,
            Some(&secret),
            &world.published(),
            at(T0 + 1),
            MARGIN,
        ) else {
            panic!("the written token is kept");
        };
        assert_eq!(kept.renew_at, written.renew_at);
        assert_eq!(
            (kept.key_id, kept.expires_at),
            (written.key_id, written.expires_at)
        );
        assert_eq!(written.written, Some(ReissueReason::NoToken));
    }

    #[test]
    fn data_changed_by_someone_else_is_written_again_and_their_labels_are_not() {
        let world = World::new();
        let validated = world.validated();
        let decide = |secret: &Secret| {
            plan(
                &validated,
                Some(secret),
                &world.published(),
                at(T0 + 60),
                MARGIN,
            )
        };
        let written = world.secret(T0);
        assert!(matches!(decide(&written), Ok(Plan::Keep(_))));

        let mut labelled = written.clone();
        labelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        labelled
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("example.com/note".into(), "b".into());
        assert!(matches!(decide(&labelled), Ok(Plan::Keep(_))));

        let edits: [fn(&mut std::collections::BTreeMap<String, k8s_openapi::ByteString>); 3] = [
            |data| {
                data.insert(
                    "expires-at".into(),
                    k8s_openapi::ByteString(b"2099-01-01T00:00:00Z".to_vec()),
                );
            },
            |data| {
                data.insert("extra".into(), k8s_openapi::ByteString(b"x".to_vec()));
            },
            |data| data.clear(),
        ];
        for edit in edits {
            let mut tampered = written.clone();
            if let Some(data) = tampered.data.as_mut() {
                edit(data);
            }
            assert_eq!(
                decide(&tampered),
                Ok(Plan::Issue {
                    reason: ReissueReason::SecretChanged,
                    secret_exists: true,
                })
            );
        }
    }

    #[test]
    fn renewal_time_is_stable_across_restarts_and_respects_the_margin() {
        let first = renewal_time("uid-1", at(1_000), at(4_600), MARGIN);
        assert_eq!(first, renewal_time("uid-1", at(1_000), at(4_600), MARGIN));
        let short = renewal_time("uid-1", at(1_000), at(1_030), SignedDuration::from_secs(5));
        assert!(short <= at(1_025) && short >= at(1_018), "{short}");
    }

    #[test]
    fn an_unreadable_token_is_no_token() {
        let world = World::new();
        let mut secret = world.secret(T0);
        if let Some(data) = secret.data.as_mut() {
            data.insert(
                TOKEN_KEY.into(),
                k8s_openapi::ByteString(b"garbage".to_vec()),
            );
        }
        // As in a Secret written before fedid recorded its data's digest.
        if let Some(annotations) = secret.metadata.annotations.as_mut() {
            annotations.remove(crate::credentials::secret::DATA_DIGEST_ANNOTATION);
        }
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::NoToken,
                secret_exists: true
            })
        );
    }

    /// The world's identity with a Vault exchange its issuer allows.
    fn exchanging(world: &mut World, role: &str) -> ValidatedIdentity {
        world.issuer.spec.exchange = Some(crate::crd::ExchangePolicy {
            allowed_endpoints: vec!["https://bao.example.com/".into()],
            ..crate::crd::ExchangePolicy::default()
        });
        world.identity.spec.exchange = Some(
            serde_json::from_value(
                json!({"vault": {"address": "https://bao.example.com", "role": role}}),
            )
            .expect("exchange"),
        );
        world.validated()
    }

    fn exchanged_secret(
        world: &World,
        validated: &ValidatedIdentity,
        credentials_expire: i64,
    ) -> Secret {
        let minted = mint(validated, &world.signer, at(T0), "jti").expect("mints");
        let exchange = validated.exchange.as_ref().expect("an exchange");
        let credentials = Credentials {
            token: minted,
            exchanged: Some(crate::exchange::Exchanged {
                files: Vec::new(),
                expires_at: at(credentials_expire),
                host: "bao.example.com".into(),
                spec_digest: exchange.spec_digest.clone(),
            }),
        };
        render_secret(validated, &credentials).expect("renders")
    }

    #[test]
    fn exchanged_credentials_are_renewed_by_the_earlier_expiry_and_on_spec_change() {
        let mut world = World::new();
        let validated = exchanging(&mut world, "deploy");
        // Credentials for 15 minutes beside a one-hour token: renewed by theirs.
        let secret = exchanged_secret(&world, &validated, T0 + 900);
        let Ok(Plan::Keep(kept)) = plan(
            &validated,
            Some(&secret),
            &world.published(),
            at(T0 + 60),
            MARGIN,
        ) else {
            panic!("kept");
        };
        assert_eq!(kept.credentials_expire_at, Some(at(T0 + 900)));
        assert_eq!(
            kept.renew_at,
            renewal_time("uid-deploy", at(T0), at(T0 + 900), MARGIN)
        );
        assert!(
            kept.renew_at <= at(T0 + 900 - 300),
            "never later than the margin"
        );
        let due = plan(
            &validated,
            Some(&secret),
            &world.published(),
            kept.renew_at,
            MARGIN,
        );
        assert_eq!(
            due,
            Ok(Plan::Issue {
                reason: ReissueReason::DueForRenewal,
                secret_exists: true
            })
        );
        // Another role: the stored credentials answer another request.
        let changed = exchanging(&mut world, "other");
        assert_eq!(
            plan(
                &changed,
                Some(&secret),
                &world.published(),
                at(T0 + 60),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::SpecChanged,
                secret_exists: true
            })
        );
        // A token-only Secret for an identity that now exchanges: nothing exchanged yet.
        let plain = world.secret(T0);
        assert_eq!(
            plan(
                &changed,
                Some(&plain),
                &world.published(),
                at(T0 + 60),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::NoToken,
                secret_exists: true
            })
        );
        // Exchange removed: the credentials must go.
        world.identity.spec.exchange = None;
        assert_eq!(
            plan(
                &world.validated(),
                Some(&secret),
                &world.published(),
                at(T0 + 60),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::SpecChanged,
                secret_exists: true
            })
        );
    }

    #[test]
    fn the_rendered_secret_holds_the_files_and_the_earliest_expiry() {
        let mut world = World::new();
        let validated = exchanging(&mut world, "deploy");
        let secret = exchanged_secret(&world, &validated, T0 + 900);
        let annotations = secret.metadata.annotations.clone().expect("annotations");
        assert_eq!(
            annotations[CREDENTIALS_EXPIRE_AT_ANNOTATION],
            "2027-01-15T08:15:00Z"
        );
        assert_eq!(
            annotations[EXCHANGE_DIGEST_ANNOTATION],
            validated.exchange.as_ref().expect("exchange").spec_digest
        );
        let data = secret.data.expect("data");
        assert_eq!(
            data[crate::credentials::secret::EXPIRES_AT_KEY].0,
            b"2027-01-15T08:15:00Z"
        );
    }

    #[test]
    fn without_the_subject_token_the_unsigned_one_decides_and_a_toggle_rewrites() {
        let mut world = World::new();
        let mut validated = exchanging(&mut world, "deploy");
        validated.include_subject_token = false;
        let minted = mint(&validated, &world.signer, at(T0), "jti-1").expect("mint");
        let exchanged = crate::exchange::Exchanged {
            files: Vec::new(),
            expires_at: at(T0 + 3600),
            host: "bao.example.com".into(),
            spec_digest: validated
                .exchange
                .as_ref()
                .map(|exchange| exchange.spec_digest.clone())
                .unwrap_or_default(),
        };
        let credentials = Credentials {
            token: minted.clone(),
            exchanged: Some(exchanged),
        };
        let secret = render_secret(&validated, &credentials).expect("renders");
        let data = secret.data.as_ref().expect("data");
        assert!(!data.contains_key(TOKEN_KEY), "the signed token stays out");
        let annotations = secret.metadata.annotations.as_ref().expect("annotations");
        let unsigned = &annotations[UNSIGNED_TOKEN_ANNOTATION];
        assert!(unsigned.ends_with('.') && minted.jwt.starts_with(unsigned.as_str()));
        assert!(unsigned.len() < minted.jwt.len(), "no signature");
        let Ok(Plan::Keep(kept)) = plan(
            &validated,
            Some(&secret),
            &world.published(),
            at(T0 + 1),
            MARGIN,
        ) else {
            panic!("the unsigned token is enough to keep");
        };
        assert_eq!(kept.expires_at, minted.expires_at);
        // Asking for the signed token again rewrites the Secret.
        validated.include_subject_token = true;
        assert_eq!(
            plan(
                &validated,
                Some(&secret),
                &world.published(),
                at(T0 + 1),
                MARGIN
            ),
            Ok(Plan::Issue {
                reason: ReissueReason::SpecChanged,
                secret_exists: true
            })
        );
    }
}
