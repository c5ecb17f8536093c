//! The webhook's `http://` URL: only what a plain HTTP/1.1 POST needs.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// An IP address (IPv6 without its brackets) or a name to resolve when connecting.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("https is not supported")]
    Https,
    #[error("it does not start with http://")]
    Scheme,
    #[error("it has no host")]
    NoHost,
    #[error("user information is not supported")]
    UserInfo,
    #[error("the IPv6 address lacks its closing bracket")]
    Bracket,
    #[error("{0:?} is not a port number")]
    Port(String),
    #[error("{0:?} is not a host name or IP address")]
    Host(String),
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(UrlError::Https)
            }
            _ => return Err(UrlError::Scheme),
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::Bracket)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_');
        if !host.chars().all(fine) {
            return Err(UrlError::Host(host.to_owned()));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| UrlError::Port(p.to_owned()))?,
        };
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(UrlError::Host(host.to_owned()));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/events?x=1#frag").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 8080, "/events?x=1")
        );
        let url = HttpUrl::parse("HTTP://[::1]").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 80, "/")
        );
        assert_eq!(url.to_string(), "http://[::1]/");
        let url = HttpUrl::parse("http://collector.example.com:81").unwrap();
        assert_eq!(url.authority(), "collector.example.com:81");
    }

    #[test]
    fn refusals() {
        assert_eq!(HttpUrl::parse("https://a.test/"), Err(UrlError::Https));
        assert_eq!(HttpUrl::parse("a.test/x"), Err(UrlError::Scheme));
        assert_eq!(HttpUrl::parse("http://:80/"), Err(UrlError::NoHost));
        assert_eq!(
            HttpUrl::parse("http://a.test:0/"),
            Err(UrlError::Port("0".into()))
        );
        assert_eq!(
            HttpUrl::parse("http://a b.test/"),
            Err(UrlError::Host("a b.test".into()))
        );
    }
}
