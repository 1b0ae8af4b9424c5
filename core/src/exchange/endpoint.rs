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
        ] {
            let error = Endpoint::parse(bad).expect_err(bad);
            assert!(error.contains(problem), "{bad}: {error}");
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
