//! The documents an issuer publishes: its discovery document and JWKS for a set of published
//! keys, as the exact bytes that are served and mirrored.

use crate::issuer::{
    config::IssuerConfig,
    discovery::discovery_document,
    keys::{KeyError, KeyRecord, jwks},
};

/// An issuer's discovery document and JWKS, serialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedDocuments {
    /// `/.well-known/openid-configuration`, pretty-printed JSON.
    pub discovery: Vec<u8>,
    /// `/.well-known/jwks.json`, pretty-printed JSON.
    pub jwks: Vec<u8>,
}

/// Renders the documents of the issuer `config` publishing `published` (from
/// [`KeyRing::published_keys`](crate::issuer::keys::KeyRing::published_keys)).
pub fn render_documents(
    config: &IssuerConfig,
    published: &[&KeyRecord],
) -> Result<PublishedDocuments, KeyError> {
    let keys = jwks(published)?;
    let algorithms: Vec<_> = published.iter().map(|key| key.alg).collect();
    let discovery = discovery_document(&config.issuer_url, &algorithms, &config.claim_names());
    // Serializing a serde_json::Value cannot fail.
    Ok(PublishedDocuments {
        discovery: serde_json::to_vec_pretty(&discovery).unwrap_or_default(),
        jwks: serde_json::to_vec_pretty(&keys).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::Value;

    use super::*;
    use crate::issuer::{
        config::validate_issuer_spec,
        key_store::rotate,
        keys::{KeyRing, generate_key},
    };

    #[test]
    fn documents_list_exactly_the_published_keys() {
        let spec: crate::crd::IdentityIssuerSpec = serde_json::from_value(
            serde_json::json!({"issuerURL": "https://fedid.example.com/ci"}),
        )
        .expect("spec");
        let config = validate_issuer_spec(&spec).expect("valid");
        let now = Timestamp::from_second(1_800_000_000).expect("valid timestamp");
        let ring = rotate(
            KeyRing::default(),
            &config.rotation,
            None,
            now,
            generate_key,
        )
        .expect("rotates")
        .ring;
        let published = ring.published_keys(&config.rotation, now);
        let documents = render_documents(&config, &published).expect("renders");
        let jwks: Value = serde_json::from_slice(&documents.jwks).expect("JSON");
        assert_eq!(jwks["keys"][0]["kid"], published[0].kid.as_str());
        let discovery: Value = serde_json::from_slice(&documents.discovery).expect("JSON");
        assert_eq!(discovery["issuer"], "https://fedid.example.com/ci");
        assert_eq!(
            discovery["jwks_uri"],
            "https://fedid.example.com/ci/.well-known/jwks.json"
        );
    }
}
