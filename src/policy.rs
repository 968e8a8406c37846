//! Where a secret may go: host patterns and port (pure).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

pub const MAX_HOSTS: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid host pattern {pattern:?}: {reason}")]
    InvalidHost {
        pattern: String,
        reason: &'static str,
    },
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    InvalidPort(String),
    #[error("{count} host patterns; at most {MAX_HOSTS} per secret")]
    TooManyHosts { count: usize },
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    /// This name exactly.
    Exact(String),
    /// Any name strictly under this one (`*.example.com`).
    Suffix(String),
    /// This address, no DNS needed.
    Ip(IpAddr),
}

fn invalid(pattern: &str, reason: &'static str) -> PolicyError {
    PolicyError::InvalidHost {
        pattern: pattern.to_owned(),
        reason,
    }
}

fn valid_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name has 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with '-'");
        }
    }
    Ok(())
}

impl FromStr for HostPattern {
    type Err = PolicyError;

    fn from_str(raw: &str) -> Result<Self, PolicyError> {
        let text = raw.trim();
        if text.contains("://") {
            return Err(invalid(raw, "a host name, not a URL"));
        }
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if text.contains(':') {
            return Err(invalid(raw, "no port here: use the port setting"));
        }
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            valid_dns_name(suffix).map_err(|reason| invalid(raw, reason))?;
            return Ok(Self::Suffix(suffix.to_owned()));
        }
        if lower.contains('*') {
            return Err(invalid(raw, "'*' is only allowed as a leading '*.' label"));
        }
        valid_dns_name(&lower).map_err(|reason| invalid(raw, reason))?;
        Ok(Self::Exact(lower))
    }
}

impl HostPattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Self::Exact(exact) => name == *exact,
            Self::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Self::Ip(ip) => name.parse::<IpAddr>().is_ok_and(|parsed| parsed == *ip),
        }
    }

    /// The name the kernel looks for in DNS answers and server names.
    pub fn dns_name(&self) -> Option<&str> {
        match self {
            Self::Exact(name) | Self::Suffix(name) => Some(name),
            Self::Ip(_) => None,
        }
    }

    pub fn is_suffix(&self) -> bool {
        matches!(self, Self::Suffix(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(name) => write!(f, "*.{name}"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Comma- or space-separated patterns; duplicates dropped, order kept.
pub fn parse_hosts(list: &str) -> Result<Vec<HostPattern>, PolicyError> {
    let mut hosts: Vec<HostPattern> = Vec::new();
    for item in list.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.is_empty() {
            continue;
        }
        let pattern = item.parse()?;
        if !hosts.contains(&pattern) {
            hosts.push(pattern);
        }
    }
    if hosts.len() > MAX_HOSTS {
        return Err(PolicyError::TooManyHosts { count: hosts.len() });
    }
    Ok(hosts)
}

pub fn parse_port(text: &str) -> Result<u16, PolicyError> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(PolicyError::InvalidPort(text.to_owned())),
    }
}

/// Where one secret may be sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub port: Option<u16>,
}

impl Policy {
    pub fn allows_any_host(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// FNV-1a, 64 bits: the kernel side hashes host names the same way.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_suffixes_and_addresses() {
        assert_eq!(
            "API.Example.com.".parse(),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            "*.example.com".parse(),
            Ok(HostPattern::Suffix("example.com".into()))
        );
        assert_eq!(
            "10.0.0.1".parse(),
            Ok(HostPattern::Ip("10.0.0.1".parse().expect("ip")))
        );
        assert_eq!(
            "[::1]".parse(),
            Ok(HostPattern::Ip("::1".parse().expect("ip")))
        );
    }

    #[test]
    fn rejects_bad_patterns_with_reasons() {
        for bad in [
            "*",
            "*foo.com",
            "a.*.com",
            "host:443",
            "https://x.com",
            "-a.com",
            "a..b",
            "a b",
        ] {
            let err = bad.parse::<HostPattern>().unwrap_err();
            assert!(
                err.to_string().contains("invalid host pattern"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn suffix_matches_strictly_below() {
        let p: HostPattern = "*.example.com".parse().expect("pattern");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.EXAMPLE.com."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert_eq!(p.to_string(), "*.example.com");
    }

    #[test]
    fn host_lists_and_ports() {
        let hosts = parse_hosts("a.com, b.com a.com,,").expect("hosts");
        assert_eq!(hosts.len(), 2);
        let many: Vec<String> = (0..17).map(|i| format!("h{i}.com")).collect();
        assert_eq!(
            parse_hosts(&many.join(",")),
            Err(PolicyError::TooManyHosts { count: 17 })
        );
        assert_eq!(parse_port("443"), Ok(443));
        for bad in ["0", "65536", "x", ""] {
            assert!(parse_port(bad)
                .unwrap_err()
                .to_string()
                .contains("1 to 65535"));
        }
    }

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
