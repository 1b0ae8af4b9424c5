//! Small readers and writers shared by the exchange kinds: JSON fields, XML element text, and
//! form encoding.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value};

use super::Upstream;
use crate::{credentials::token::decode_unverified, time::plus};

/// The body as a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// A non-empty string field of `object`.
pub(crate) fn string_field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
}

/// `now + seconds`, for replies that give a lifetime rather than an instant.
pub(crate) fn after(now: Timestamp, seconds: u64) -> Timestamp {
    plus(
        now,
        SignedDuration::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX / 2)),
    )
}

/// The `exp` of `token` when it is a JWT, else `fallback`.
pub(crate) fn jwt_expiry_or(token: &str, fallback: Timestamp) -> Timestamp {
    decode_unverified(token)
        .ok()
        .and_then(|decoded| decoded.expires_at())
        .unwrap_or(fallback)
}

/// The text of the first `<tag>…</tag>` element (namespace-free tag names, as STS replies
/// use), with the five predefined entities unescaped and surrounding whitespace trimmed.
/// `None` when absent, empty, or holding a control character such as a line break: every
/// STS field read (keys, session token, time, error code) is one line of printable text, and
/// the keys are written into an INI file, where a line break would add lines.
pub(crate) fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    let text = body[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let text = text.trim();
    (!text.is_empty() && !text.chars().any(char::is_control)).then(|| text.to_owned())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// RFC 6749 §5.2 error codes that mean "try again later" rather than "no".
const RETRYABLE_OAUTH_CODES: [&str; 3] = ["temporarily_unavailable", "server_error", "slow_down"];

/// A JSON service's reply: the object of a 200, or the error of any other status, classified
/// by the status, with the code `error_code` finds in the body.
pub(crate) fn json_reply(
    status: u16,
    body: &[u8],
    error_code: impl FnOnce(&Map<String, Value>) -> Option<&str>,
) -> Result<Map<String, Value>, Upstream> {
    if let Some(unexpected) = unexpected_status(status) {
        return Err(unexpected);
    }
    let object = json_object(body);
    if status != 200 {
        let code = object.as_ref().and_then(error_code).map(str::to_owned);
        return Err(Upstream::by_status(status, code));
    }
    object.ok_or(Upstream::Malformed("the body is not a JSON object"))
}

/// An OAuth token endpoint's reply: the JSON object of a 200, or the classified error of any
/// other status (its `error` code, retryable or not).
pub(crate) fn oauth_reply(status: u16, body: &[u8]) -> Result<Map<String, Value>, Upstream> {
    json_reply(status, body, |object| string_field(object, "error")).map_err(|upstream| {
        match upstream {
            Upstream::Rejected(Some(code)) if RETRYABLE_OAUTH_CODES.contains(&code.as_str()) => {
                Upstream::Unavailable(Some(code))
            }
            other => other,
        }
    })
}

/// `expires_in` of an OAuth reply, a number or a numeric string; `None` when absent.
pub(crate) fn expires_in(object: &Map<String, Value>) -> Result<Option<u64>, Upstream> {
    object
        .get("expires_in")
        .map(|value| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                .ok_or(Upstream::Malformed("expires_in is not a number of seconds"))
        })
        .transpose()
}

/// Replies that are neither success nor error: redirects (never followed) and other statuses
/// outside 200..=599.
pub(crate) fn unexpected_status(status: u16) -> Option<Upstream> {
    match status {
        300..=399 => Some(Upstream::Malformed(
            "a redirect, which fedid does not follow",
        )),
        100..=199 | 600.. | 0..=99 => Some(Upstream::Malformed("an unexpected HTTP status")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_reads_the_first_element_and_unescapes() {
        let body = "<R><Code>A&amp;B</Code><Code>second</Code><Empty></Empty></R>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("A&B"));
        assert_eq!(xml_text(body, "Empty"), None);
        assert_eq!(xml_text(body, "Missing"), None);
        assert_eq!(xml_text("<Code>unterminated", "Code"), None);
        assert_eq!(
            xml_text("<Code>\n two words \n</Code>", "Code").as_deref(),
            Some("two words")
        );
        for multi_line in ["<K>AKIA\n[default]</K>", "<K>a\rb</K>", "<K>a\u{0}b</K>"] {
            assert_eq!(xml_text(multi_line, "K"), None, "{multi_line:?}");
        }
    }

    #[test]
    fn form_encoding_follows_the_html_rules() {
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
        assert_eq!(form_encode("safe-._*"), "safe-._*");
    }
}
