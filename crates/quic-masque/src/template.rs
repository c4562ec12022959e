//! The URI template of a CONNECT-UDP proxy (RFC 9298 §2): a path holding the
//! variables `{target_host}` and `{target_port}`, expanded by clients and matched by
//! the proxy.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The template RFC 9298 §3 asks proxies to serve.
pub const DEFAULT_TEMPLATE: &str = "/.well-known/masque/udp/{target_host}/{target_port}/";

/// What a simple expansion leaves unencoded (RFC 6570 §3.2.2: the unreserved set).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A template was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// It lacks a variable, or holds one twice.
    #[error("the template must hold {{target_host}} and {{target_port}} once each: {0}")]
    Variables(String),
    /// It is not an absolute path.
    #[error("the template must be an absolute path (starting with /): {0}")]
    NotAPath(String),
    /// Two variables touch: their values could not be told apart.
    #[error("the template's variables must be separated by text: {0}")]
    Adjacent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Host,
    Port,
}

/// A CONNECT-UDP URI template's path (and query), as a proxy serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for UriTemplate {
    fn default() -> Self {
        Self::new(DEFAULT_TEMPLATE).expect("the default template is valid")
    }
}

impl std::fmt::Display for UriTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl UriTemplate {
    /// Parses a template such as [`DEFAULT_TEMPLATE`].
    pub fn new(template: &str) -> Result<Self, TemplateError> {
        if !template.starts_with('/') {
            return Err(TemplateError::NotAPath(template.to_owned()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::Variables(template.to_owned()))?;
            let part = match &rest[open + 1..open + close] {
                "target_host" => Part::Host,
                "target_port" => Part::Port,
                _ => return Err(TemplateError::Variables(template.to_owned())),
            };
            if matches!(parts.last(), Some(Part::Host | Part::Port)) {
                return Err(TemplateError::Adjacent(template.to_owned()));
            }
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let count = |p: &Part| parts.iter().filter(|q| *q == p).count();
        if count(&Part::Host) != 1 || count(&Part::Port) != 1 {
            return Err(TemplateError::Variables(template.to_owned()));
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// The path (and query) for `host` and `port`: IPv6 literals without brackets,
    /// their colons percent-encoded (RFC 9298 §2).
    pub fn expand(&self, host: &str, port: u16) -> String {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut out = String::with_capacity(self.source.len() + host.len());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Host => out.extend(utf8_percent_encode(host, UNRESERVED)),
                Part::Port => out.push_str(&port.to_string()),
            }
        }
        out
    }

    /// The target a request's path and query name, if they match the template.
    pub fn match_target(&self, path_and_query: &str) -> Option<Target> {
        let mut rest = path_and_query;
        let (mut host, mut port) = (None, None);
        for (i, p) in self.parts.iter().enumerate() {
            match p {
                Part::Text(t) => rest = rest.strip_prefix(t.as_str())?,
                Part::Host | Part::Port => {
                    // A value runs to the next text, which may not occur inside it.
                    let end = match self.parts.get(i + 1) {
                        Some(Part::Text(t)) => rest.find(t.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if value.is_empty() || value.contains('/') {
                        return None;
                    }
                    if *p == Part::Host {
                        host = Some(value);
                    } else {
                        port = Some(value);
                    }
                    rest = &rest[end..];
                }
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Target::from_template(host?, port?)
    }
}

/// Where a tunnel goes: a host (name or address) and a UDP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The UDP port, 1..=65535.
    pub port: u16,
}

impl Target {
    /// From the template's percent-encoded values; `None` if they are not a host and a
    /// port.
    fn from_template(host: &str, port: &str) -> Option<Self> {
        let host = percent_decode_str(host).decode_utf8().ok()?;
        let port = percent_decode_str(port).decode_utf8().ok()?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        valid.then(|| Self {
            host: host.into_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_expands_and_matches_back() {
        let t = UriTemplate::default();
        for (host, port, path) in [
            ("192.0.2.6", 443, "/.well-known/masque/udp/192.0.2.6/443/"),
            (
                "2001:db8::42",
                53,
                "/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/",
            ),
            (
                "[2001:db8::42]",
                53,
                "/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/",
            ),
            (
                "example.com",
                8443,
                "/.well-known/masque/udp/example.com/8443/",
            ),
        ] {
            assert_eq!(t.expand(host, port), path);
            let target = t.match_target(path).unwrap();
            assert_eq!(target.host, host.trim_matches(|c| c == '[' || c == ']'));
            assert_eq!(target.port, port);
        }
    }

    #[test]
    fn bad_paths_and_values_do_not_match() {
        let t = UriTemplate::default();
        for path in [
            "/.well-known/masque/udp/192.0.2.6/443",
            "/.well-known/masque/udp/192.0.2.6/0/",
            "/.well-known/masque/udp/192.0.2.6/65536/",
            "/.well-known/masque/udp//443/",
            "/.well-known/masque/udp/a/b/443/",
            "/.well-known/masque/udp/exa%20mple/443/",
            "/.well-known/masque/udp/host/port/",
            "/other/192.0.2.6/443/",
            "/.well-known/masque/udp/192.0.2.6/443/extra",
        ] {
            assert_eq!(t.match_target(path), None, "{path}");
        }
    }

    #[test]
    fn templates_with_a_query_work_and_bad_ones_are_refused() {
        let t = UriTemplate::new("/udp?h={target_host}&p={target_port}").unwrap();
        assert_eq!(t.expand("::1", 9), "/udp?h=%3A%3A1&p=9");
        assert_eq!(
            t.match_target("/udp?h=%3A%3A1&p=9"),
            Some(Target {
                host: "::1".into(),
                port: 9
            })
        );
        assert!(matches!(
            UriTemplate::new("/udp/{target_host}/"),
            Err(TemplateError::Variables(_))
        ));
        assert!(matches!(
            UriTemplate::new("/udp/{target_host}{target_port}/"),
            Err(TemplateError::Adjacent(_))
        ));
        assert!(matches!(
            UriTemplate::new("udp/{target_host}/{target_port}"),
            Err(TemplateError::NotAPath(_))
        ));
        assert!(matches!(
            UriTemplate::new("/u/{target_host}/{target_port}/{other}"),
            Err(TemplateError::Variables(_))
        ));
    }
}
