//! Input of `kloak run`: --secret specs, a TOML file, trusted DNS servers (pure but for reading files).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::placeholder::{SecretValue, MAX_VALUE_LEN};
use crate::policy::{parse_hosts, HostPattern, Policy, PolicyError};

#[derive(Debug, Error)]
pub enum ConfigError {
    /// The spec itself is not shown: people paste the real value there by mistake.
    #[error("--secret for {0}: expected NAME, NAME=@FILE or NAME=env:VAR (the value given is not shown in case it is a secret)")]
    SecretSyntax(String),
    #[error("a secret name must be a valid environment variable name (the name given is not shown in case it is a secret)")]
    SecretName,
    #[error("secret {0} is given twice")]
    Duplicate(String),
    #[error("secret {name}: {source}")]
    Policy { name: String, source: PolicyError },
    #[error("--allow-host: {0}")]
    AllowHost(PolicyError),
    #[error("secret {name}: environment variable {var} is not set")]
    MissingEnv { name: String, var: String },
    #[error("secret {name}: cannot read {path}: {source}")]
    File {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {name}: {reason}")]
    Value { name: String, reason: String },
    #[error("secret {0} has no allowed hosts and --require-hosts is set")]
    HostsRequired(String),
    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("DNS server {0:?}: expected IP or IP:PORT")]
    DnsServer(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "@{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretConfig {
    pub name: String,
    pub source: SecretSource,
    pub policy: Policy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub secrets: Vec<SecretConfig>,
    pub dns_servers: Vec<SocketAddr>,
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `@FILE` (relative paths from `base`) or `env:VAR`.
fn parse_source(name: &str, spec: &str, base: Option<&Path>) -> Result<SecretSource, ConfigError> {
    let shown = || {
        if valid_env_name(name) {
            name.to_owned()
        } else {
            "a secret".to_owned()
        }
    };
    if let Some(path) = spec.strip_prefix('@') {
        if path.is_empty() {
            return Err(ConfigError::SecretSyntax(shown()));
        }
        let path = PathBuf::from(path);
        return Ok(SecretSource::File(match base {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }));
    }
    if let Some(var) = spec.strip_prefix("env:") {
        if !valid_env_name(var) {
            return Err(ConfigError::SecretSyntax(shown()));
        }
        return Ok(SecretSource::Env(var.to_owned()));
    }
    Err(ConfigError::SecretSyntax(shown()))
}

/// `NAME`, `NAME=@/path` or `NAME=env:VAR`.
pub fn parse_secret_spec(raw: &str) -> Result<(String, SecretSource), ConfigError> {
    let (name, source) = match raw.split_once('=') {
        None => (raw, SecretSource::Env(raw.to_owned())),
        Some((name, spec)) => (name, parse_source(name, spec, None)?),
    };
    if !valid_env_name(name) {
        return Err(ConfigError::SecretName);
    }
    Ok((name.to_owned(), source))
}

pub fn parse_dns_server(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map_err(|_| ConfigError::DnsServer(text.to_owned()))?;
    Ok(SocketAddr::new(ip, 53))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    secret: Vec<FileSecret>,
    #[serde(default)]
    dns: Option<FileDns>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecret {
    name: String,
    from: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDns {
    #[serde(default)]
    servers: Vec<String>,
}

/// Everything `kloak run` was asked for, checked, before anything is loaded.
pub struct RunInput<'a> {
    pub secrets: &'a [String],
    pub allow_hosts: &'a [String],
    pub port: Option<u16>,
    pub file: Option<(&'a Path, &'a str)>,
    pub dns_servers: &'a [String],
    pub require_hosts: bool,
}

pub fn build(input: RunInput<'_>) -> Result<RunConfig, ConfigError> {
    let mut hosts: Vec<HostPattern> = Vec::new();
    for item in input.allow_hosts {
        for host in parse_hosts(item).map_err(ConfigError::AllowHost)? {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    let cli_policy = Policy {
        hosts,
        port: input.port,
    };
    let mut config = RunConfig::default();
    for raw in input.secrets {
        let (name, source) = parse_secret_spec(raw)?;
        config.secrets.push(SecretConfig {
            name,
            source,
            policy: cli_policy.clone(),
        });
    }
    if let Some((path, text)) = input.file {
        let file: FileConfig = toml::from_str(text).map_err(|err| ConfigError::ConfigFile {
            path: path.to_path_buf(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
        for secret in file.secret {
            let source = match &secret.from {
                Some(spec) => parse_source(&secret.name, spec, path.parent())?,
                None => SecretSource::Env(secret.name.clone()),
            };
            if !valid_env_name(&secret.name) {
                return Err(ConfigError::SecretName);
            }
            let hosts =
                parse_hosts(&secret.hosts.join(",")).map_err(|source| ConfigError::Policy {
                    name: secret.name.clone(),
                    source,
                })?;
            config.secrets.push(SecretConfig {
                name: secret.name,
                source,
                policy: Policy {
                    hosts,
                    port: secret.port,
                },
            });
        }
        for server in file.dns.map(|dns| dns.servers).unwrap_or_default() {
            config.dns_servers.push(parse_dns_server(&server)?);
        }
    }
    for server in input.dns_servers {
        config.dns_servers.push(parse_dns_server(server)?);
    }
    let mut seen = BTreeSet::new();
    for secret in &config.secrets {
        if !seen.insert(secret.name.as_str()) {
            return Err(ConfigError::Duplicate(secret.name.clone()));
        }
        if input.require_hosts && secret.policy.allows_any_host() {
            return Err(ConfigError::HostsRequired(secret.name.clone()));
        }
    }
    Ok(config)
}

/// Reads a secret's value; errors name the secret and source, never the value.
pub fn load_value(
    secret: &SecretConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SecretValue, ConfigError> {
    let bytes = match &secret.source {
        SecretSource::Env(var) => env(var)
            .ok_or_else(|| ConfigError::MissingEnv {
                name: secret.name.clone(),
                var: var.clone(),
            })?
            .into_bytes(),
        SecretSource::File(path) => {
            let io_error = |source| ConfigError::File {
                name: secret.name.clone(),
                path: path.clone(),
                source,
            };
            // Never read a huge file into memory: a secret is at most 4 KiB (+ newline).
            let size = std::fs::metadata(path).map_err(io_error)?.len();
            if size > MAX_VALUE_LEN as u64 + 2 {
                return Err(ConfigError::Value {
                    name: secret.name.clone(),
                    reason: format!(
                        "{} is {size} bytes; secrets must be at most {MAX_VALUE_LEN} bytes",
                        path.display()
                    ),
                });
            }
            let mut bytes = std::fs::read(path).map_err(io_error)?;
            // Files usually end with one newline that is not part of the secret.
            if bytes.ends_with(b"\r\n") {
                bytes.truncate(bytes.len() - 2);
            } else if bytes.ends_with(b"\n") {
                bytes.pop();
            }
            bytes
        }
    };
    let value = SecretValue::new(bytes);
    value.check_length().map_err(|err| ConfigError::Value {
        name: secret.name.clone(),
        reason: err.to_string(),
    })?;
    Ok(value)
}

/// Nameservers of an /etc/resolv.conf.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|addr| addr.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(secrets: &'a [String], hosts: &'a [String]) -> RunInput<'a> {
        RunInput {
            secrets,
            allow_hosts: hosts,
            port: Some(443),
            file: None,
            dns_servers: &[],
            require_hosts: false,
        }
    }

    #[test]
    fn secret_specs() {
        assert_eq!(
            parse_secret_spec("API").unwrap(),
            ("API".into(), SecretSource::Env("API".into()))
        );
        assert_eq!(
            parse_secret_spec("API=@/run/key").unwrap(),
            ("API".into(), SecretSource::File("/run/key".into()))
        );
        assert_eq!(
            parse_secret_spec("API=env:OTHER").unwrap(),
            ("API".into(), SecretSource::Env("OTHER".into()))
        );
        for bad in ["API=value", "1API", "API=@", "A-B=@x"] {
            assert!(parse_secret_spec(bad).is_err(), "{bad}");
        }
        let err = parse_secret_spec("API=sk-live-pasted-by-mistake")
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME=@FILE") && err.contains("API"), "{err}");
        assert!(
            !err.contains("sk-live"),
            "a pasted value must not be echoed: {err}"
        );
        let err = parse_secret_spec("sk-live-pasted-as-name")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-live"), "{err}");
    }

    #[test]
    fn cli_secrets_take_the_global_policy() {
        let secrets = vec!["A=env:X".to_owned()];
        let hosts = vec!["api.example.com,*.example.org".to_owned()];
        let config = build(input(&secrets, &hosts)).expect("config");
        assert_eq!(config.secrets[0].policy.hosts.len(), 2);
        assert_eq!(config.secrets[0].policy.port, Some(443));
        let bad = vec!["exa mple:1".to_owned()];
        assert!(build(input(&secrets, &bad)).is_err());
        let twice = vec!["A".to_owned(), "A=env:B".to_owned()];
        assert!(matches!(
            build(input(&twice, &[])),
            Err(ConfigError::Duplicate(_))
        ));
    }

    #[test]
    fn toml_file_with_dns_and_unknown_keys() {
        let text = r#"
            [[secret]]
            name = "OPENAI_API_KEY"
            from = "@/etc/key"
            hosts = ["api.openai.com"]
            port = 443
            [dns]
            servers = ["127.0.0.53", "10.96.0.10:5353"]
        "#;
        let file = Some((Path::new("kloak.toml"), text));
        let config = build(RunInput {
            file,
            ..input(&[], &[])
        })
        .expect("config");
        assert_eq!(
            config.secrets[0].source,
            SecretSource::File("/etc/key".into())
        );
        assert_eq!(config.dns_servers[0].port(), 53);
        assert_eq!(config.dns_servers[1].port(), 5353);
        let bad = Some((
            Path::new("kloak.toml"),
            "[[secret]]\nname = \"A\"\nhots = []\n",
        ));
        let err = build(RunInput {
            file: bad,
            ..input(&[], &[])
        })
        .expect_err("error")
        .to_string();
        assert!(err.contains("kloak.toml") && err.contains("hots"), "{err}");
    }

    #[test]
    fn require_hosts_refuses_open_secrets() {
        let secrets = vec!["A".to_owned()];
        let err = build(RunInput {
            require_hosts: true,
            ..input(&secrets, &[])
        })
        .expect_err("error");
        assert!(err.to_string().contains("--require-hosts"));
    }

    #[test]
    fn values_are_checked_and_never_echoed() {
        let secret = SecretConfig {
            name: "A".into(),
            source: SecretSource::Env("X".into()),
            policy: Policy::default(),
        };
        let short = load_value(&secret, |_| Some("tiny-secret".into()))
            .expect_err("error")
            .to_string();
        assert!(
            short.contains("at least 12") && !short.contains("tiny-secret"),
            "{short}"
        );
        let missing = load_value(&secret, |_| None)
            .expect_err("error")
            .to_string();
        assert!(missing.contains("X is not set"), "{missing}");
        assert_eq!(
            load_value(&secret, |_| Some("sk-live-0123456".into()))
                .expect("ok")
                .len(),
            15
        );
    }

    #[test]
    fn resolv_conf() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch a\n";
        assert_eq!(resolv_conf_nameservers(text).len(), 2);
    }
}
