//! Exchange endpoint URLs: parsed just enough to know the host and to match an issuer's
//! allowed prefixes at a path boundary.

/// An https endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    host: String,
}

impl Endpoint {
    /// Parses `url`: it must be `https://`, with a host, without user information or a
    /// fragment.
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        let rest = url
            .strip_prefix("https://")
            .ok_or("it must be an https URL")?;
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let host = &rest[..host_end];
        if host.is_empty() {
            return Err("it has no host");
        }
        if host.contains('@') {
            return Err("it must not contain user information");
        }
        if url.contains('#') {
            return Err("it must not contain a fragment");
        }
        if url
            .chars()
            .any(|character| character.is_whitespace() || character.is_control())
        {
            return Err("it must not contain whitespace");
        }
        if rest.split('?').next().unwrap_or_default().contains('\\') {
            return Err("it must not contain a backslash");
        }
        if has_dot_segment(&rest[host_end..]) {
            return Err("it must not contain . or .. path segments");
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_ascii_lowercase(),
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Host and port, lowercase.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether this endpoint starts with `prefix` at a boundary: the prefix is the whole URL,
    /// ends with `/`, or is followed by `/` or `?`. So `https://sts.example.com` allows
    /// `https://sts.example.com/x` but not `https://sts.example.com.evil.net/`. Hosts compare
    /// case-insensitively.
    pub fn starts_with(&self, prefix: &str) -> bool {
        let Ok(prefix) = Self::parse(prefix) else {
            return false;
        };
        if prefix.host != self.host {
            return false;
        }
        let prefix_path = prefix.path();
        if prefix_path.is_empty() || prefix_path == "/" {
            return true;
        }
        match self.path().strip_prefix(prefix_path) {
            Some(rest) => {
                prefix_path.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
            }
            None => false,
        }
    }

    /// Everything after the host: path and query.
    fn path(&self) -> &str {
        &self.url["https://".len() + self.host.len()..]
    }
}

/// Whether the path of `path_and_query` has a `.` or `..` segment, plainly or
/// percent-encoded (`%2e`). HTTP clients resolve them before sending, so
/// `https://sts.example.com/v1/../admin` would leave an allowed `https://sts.example.com/v1/`
/// once sent.
fn has_dot_segment(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or_default();
    path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        let endpoint =
            Endpoint::parse("https://Vault.Example.com:8200/v1/auth/jwt/login").expect("valid");
        assert_eq!(endpoint.host(), "vault.example.com:8200");
        for (bad, problem) in [
            ("http://sts.example.com", "https"),
            ("https:///path", "no host"),
            ("https://user:pw@sts.example.com/", "user information"),
            ("https://sts.example.com/#x", "fragment"),
            ("https://sts.example.com/ x", "whitespace"),
            ("https://sts.example.com/v1/../admin", ". or .."),
            ("https://sts.example.com/v1/%2E%2e/admin", ". or .."),
            ("https://sts.example.com/v1/.%2e", ". or .."),
            ("https://sts.example.com/./v1", ". or .."),
            ("https://sts.example.com/v1\\..\\admin", "backslash"),
            ("https://sts.example.com\\evil/", "backslash"),
        ] {
            let error = Endpoint::parse(bad).expect_err(bad);
            assert!(error.contains(problem), "{bad}: {error}");
        }
    }

    #[test]
    fn dots_inside_segments_and_in_the_query_are_kept() {
        for url in [
            "https://sts.example.com/v1.2/a..b/.well-known",
            "https://sts.example.com/v1/token?next=/../x&y=\\",
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ci@p.iam.gserviceaccount.com:generateAccessToken",
        ] {
            assert_eq!(Endpoint::parse(url).expect(url).url(), url);
        }
    }

    #[test]
    fn prefixes_match_at_boundaries_only() {
        let endpoint = Endpoint::parse("https://sts.example.com:8443/v1/token?x=1").expect("ok");
        for allowed in [
            "https://sts.example.com:8443",
            "https://STS.example.com:8443/",
            "https://sts.example.com:8443/v1",
            "https://sts.example.com:8443/v1/",
            "https://sts.example.com:8443/v1/token",
        ] {
            assert!(endpoint.starts_with(allowed), "{allowed}");
        }
        for refused in [
            "https://sts.example.com",
            "https://sts.example.com:84",
            "https://sts.example.com:8443/v",
            "https://sts.example.com:8443/v1/tok",
            "https://sts.example.com:8443/v2/",
            "http://sts.example.com:8443/",
            "https://evil.net/",
            "not a url",
        ] {
            assert!(!endpoint.starts_with(refused), "{refused}");
        }
        let bare = Endpoint::parse("https://sts.example.com").expect("ok");
        assert!(bare.starts_with("https://sts.example.com/"));
        assert!(
            !Endpoint::parse("https://sts.example.com.evil.net/")
                .expect("ok")
                .starts_with("https://sts.example.com")
        );
    }
}
