//! Property tests of issuer URL validation (`fedid_core::issuer::discovery::IssuerUrl`, through
//! `validate_issuer_spec` too): arbitrary text never panics, every rejection has an
//! `IssuerURL*` reason, and every accepted URL is exactly `https://host[:port][/path]` in the
//! form relying parties compare byte for byte.

use fedid_core::{
    crd::IdentityIssuerSpec,
    issuer::{
        config::validate_issuer_spec,
        discovery::{DISCOVERY_SUFFIX, IssuerUrl, JWKS_SUFFIX},
    },
    reason::Reason,
};
use proptest::prelude::*;

const URL_REASONS: &[Reason] = &[
    Reason::IssuerURLNotHTTPS,
    Reason::IssuerURLMissingHost,
    Reason::IssuerURLUserInfo,
    Reason::IssuerURLQuery,
    Reason::IssuerURLFragment,
    Reason::IssuerURLTrailingSlash,
    Reason::IssuerURLInvalidHost,
    Reason::IssuerURLInvalidPort,
    Reason::IssuerURLInvalidPath,
];

/// Whether `host` is a lowercase DNS name (labels of 1 to 63 letters, digits and inner
/// hyphens; 253 characters at most), written independently of the parser.
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Whether a URL parser reads `host` as an IPv4 address (its last label is a decimal or
/// `0x` hexadecimal number), and so would rewrite it unless it is canonical.
fn is_ipv4_like(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or_default();
    (!last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
        || last
            .strip_prefix("0x")
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether `host` is the canonical dotted-decimal form of an IPv4 address.
fn is_canonical_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|address| address.to_string() == host)
}

/// Whether `port` is a decimal number from 1 to 65535 without a sign or leading zero.
fn is_port(port: &str) -> bool {
    !port.is_empty()
        && !port.starts_with('0')
        && port.chars().all(|c| c.is_ascii_digit())
        && port
            .parse::<u32>()
            .is_ok_and(|number| (1..=65535).contains(&number))
}

/// URL-like text: the scheme, hosts, ports and paths, mixed with every separator a URL
/// parser cares about.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "https://", "https://", "https://", "http://", "HTTPS://", "https:/", "",
    ]);
    let host = prop_oneof![
        3 => "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}",
        1 => "[a-z]{60,70}\\.example",
        1 => prop::sample::select(vec![
            "", "Example.com", "a..b", "-a.b", "a-.b", "[::1]", "1.2.3.4", "user@host", "a b",
            "é.example", "a\u{0}b", "a_b.example",
        ])
        .prop_map(str::to_owned),
        1 => prop::collection::vec(
            prop::sample::select(vec!["0", "1", "01", "127", "255", "256", "0x7f", "0x", "a1"]),
            1..6,
        )
        .prop_map(|labels| labels.join(".")),
    ];
    let port = prop::option::of(prop::sample::select(vec![
        "",
        "0",
        "1",
        "443",
        "8443",
        "65535",
        "65536",
        "080",
        "+443",
        "-1",
        " 443",
        "44 3",
        "４４３",
        "99999999999999999999",
    ]));
    let path = prop::collection::vec(
        prop_oneof![
            4 => "[A-Za-z0-9._~-]{1,6}",
            1 => prop::sample::select(vec![
                "", ".", "..", "%2e", "a b", "?", "#", "@", "\\", ":", "\n", "é",
            ])
            .prop_map(str::to_owned),
        ],
        0..4,
    );
    let tail = prop::sample::select(vec!["", "", "", "/", "?", "?a=b", "#x", "\n"]);
    (scheme, host, port, path, tail).prop_map(|(scheme, host, port, path, tail)| {
        let mut url = format!("{scheme}{host}");
        if let Some(port) = port {
            url.push(':');
            url.push_str(port);
        }
        for segment in path {
            url.push('/');
            url.push_str(&segment);
        }
        url.push_str(tail);
        url
    })
}

/// Checks an accepted URL against the documented form, written independently of the parser.
fn assert_well_formed(url: &str, parsed: &IssuerUrl) {
    assert_eq!(parsed.as_str(), url);
    assert_eq!(parsed.to_string(), url);
    let rest = url.strip_prefix("https://").expect("https");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert_eq!(parsed.path(), path, "{url:?}");
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if is_ipv4_like(host) {
        assert!(
            is_canonical_ipv4(host),
            "{url:?}: accepted address {host:?}"
        );
    } else {
        assert!(is_dns_name(host), "{url:?}: accepted host {host:?}");
    }
    assert!(port.is_none_or(is_port), "{url:?}: accepted port {port:?}");
    if !path.is_empty() {
        for segment in path.split('/').skip(1) {
            assert!(
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
                "{url:?}: accepted path segment {segment:?}"
            );
        }
    }
    assert!(!url.contains(['?', '#', '@', '\\']) && !url.ends_with('/'));
    assert_eq!(parsed.discovery_url(), format!("{url}{DISCOVERY_SUFFIX}"));
    assert_eq!(parsed.jwks_url(), format!("{url}{JWKS_SUFFIX}"));
}

fn check(url: &str) {
    match IssuerUrl::parse(url) {
        Ok(parsed) => assert_well_formed(url, &parsed),
        Err(error) => {
            assert!(URL_REASONS.contains(&error.reason()), "{url:?}: {error}");
            assert!(error.to_string().contains(&format!("{url:?}")), "{error}");
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_text_is_a_well_formed_url_or_a_typed_error(url in any::<String>()) {
        check(&url);
        check(&format!("https://{url}"));
    }

    #[test]
    fn url_like_text_is_a_well_formed_url_or_a_typed_error(url in url_like()) {
        check(&url);
    }

    #[test]
    fn valid_urls_are_accepted_verbatim(
        labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..4),
        port in prop::option::of(1u16..),
        segments in prop::collection::vec("[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}", 0..4),
    ) {
        let host = labels.join(".");
        // A name whose last label is a number is an address (checked above).
        prop_assume!(!is_ipv4_like(&host));
        let mut url = format!("https://{host}");
        if let Some(port) = port {
            url.push_str(&format!(":{port}"));
        }
        for segment in &segments {
            url.push('/');
            url.push_str(segment);
        }
        let parsed = IssuerUrl::parse(&url).expect("a valid URL");
        assert_well_formed(&url, &parsed);
    }

    #[test]
    fn the_issuer_spec_reports_url_errors_with_their_reason(url in url_like()) {
        let spec: IdentityIssuerSpec =
            serde_json::from_value(serde_json::json!({"issuerURL": url})).expect("spec");
        match (validate_issuer_spec(&spec), IssuerUrl::parse(&url)) {
            (Ok(config), Ok(parsed)) => prop_assert_eq!(config.issuer_url, parsed),
            (Err(error), Err(url_error)) => prop_assert_eq!(error.reason(), url_error.reason()),
            (spec_result, url_result) => {
                prop_assert!(false, "{url:?}: spec {spec_result:?}, URL {url_result:?}")
            }
        }
    }
}

#[test]
fn huge_urls_are_rejected_or_kept_whole() {
    for url in [
        format!("https://{}", "a".repeat(64 * 1024)),
        format!("https://example.com/{}", "a/".repeat(32 * 1024)),
        format!("https://example.com:{}", "9".repeat(64 * 1024)),
        format!("https://{}", ".".repeat(64 * 1024)),
        "https://".repeat(8 * 1024),
    ] {
        check(&url);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any lifetimes and rotation timing, written as duration strings as the apiserver stores
    /// them, validate into the documented bounds or fail with one of the issuer reasons.
    #[test]
    fn issuer_timing_validates_into_its_bounds_or_fails_with_a_reason(
        default in prop_oneof![3 => 0u32..100_000, 1 => any::<u32>()],
        maximum in prop_oneof![3 => 0u32..100_000, 1 => any::<u32>()],
        rotation in prop_oneof![3 => 0u32..4_000_000, 1 => any::<u32>()],
        prepublish in prop_oneof![3 => 0u32..100_000, 1 => any::<u32>()],
        margin in prop_oneof![3 => 0u32..10_000, 1 => any::<u32>()],
    ) {
        let seconds = [default, maximum, rotation, prepublish, margin];
        use fedid_core::crd::Duration;
        let text = |index: usize| Duration::from_secs(seconds[index]).to_string();
        let spec: IdentityIssuerSpec = serde_json::from_value(serde_json::json!({
            "issuerURL": "https://issuer.example.com",
            "tokenLifetime": {"default": text(0), "maximum": text(1)},
            "signing": {"rotationPeriod": text(2), "prepublishPeriod": text(3), "retirementMargin": text(4)},
        }))
        .expect("spec");
        match validate_issuer_spec(&spec) {
            Ok(config) => {
                prop_assert!(config.default_lifetime >= fedid_core::crd::issuer::MIN_TOKEN_LIFETIME);
                prop_assert!(config.maximum_lifetime <= fedid_core::crd::issuer::MAX_TOKEN_LIFETIME);
                prop_assert!(config.default_lifetime <= config.maximum_lifetime);
                prop_assert!(config.rotation.rotation_period > config.rotation.prepublish_period);
                let retention = u64::from(seconds[1]) + u64::from(seconds[4]);
                let keys = 2 + retention.div_ceil(u64::from(seconds[2]).max(1));
                prop_assert!(keys <= fedid_core::issuer::config::MAX_PUBLISHED_KEYS);
            }
            Err(error) => {
                prop_assert!(
                    [
                        Reason::DefaultLifetimeTooShort,
                        Reason::MaximumLifetimeTooLong,
                        Reason::DefaultLifetimeAboveMaximum,
                        Reason::RotationWithinPrepublish,
                        Reason::TooManyPublishedKeys,
                    ]
                    .contains(&error.reason()),
                    "{}",
                    error
                );
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }
}
