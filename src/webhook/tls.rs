//! The serving certificate, re-read from disk so rotation needs no restart.
//!
//! Every new connection asks [`CertSource::current`] for a configuration. The
//! files are small, so they are read and hashed each time: a rotation that
//! keeps the same size and lands within the file system's timestamp
//! granularity is still noticed. A pair that fails to load (for example a new
//! certificate next to the old key, half-way through a non-atomic rotation)
//! leaves the last good configuration in service.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate {} and key {} are not usable together: {source}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Hands out the current server configuration, reloading it when the
/// certificate or key files change.
pub struct CertSource {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    fingerprint: u64,
    config: Arc<ServerConfig>,
    /// Fingerprint of a pair that failed to load, so it is warned about once
    /// rather than on every connection.
    rejected: Option<u64>,
    /// Last read error warned about, for the same reason.
    unreadable: Option<String>,
}

/// The files as read; the key is wiped from memory when dropped.
struct Pair {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl Pair {
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.cert.hash(&mut hasher);
        self.key.hash(&mut hasher);
        hasher.finish()
    }
}

impl CertSource {
    /// Loads the pair once; an error here names the file and stops start-up,
    /// since there is no earlier certificate to fall back on.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        // Explicit, so the process-wide default (which other code may set or
        // leave ambiguous) does not matter here.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = Pair {
            cert: read(&cert_path)?,
            key: Zeroizing::new(read(&key_path)?),
        };
        let config = server_config(&provider, &pair, &cert_path, &key_path)?;
        Ok(Self {
            state: Mutex::new(State {
                fingerprint: pair.fingerprint(),
                config: Arc::new(config),
                rejected: None,
                unreadable: None,
            }),
            cert_path,
            key_path,
            provider,
        })
    }

    /// The configuration for a new connection: the files' current content if it
    /// loads, otherwise the last good one.
    pub async fn current(&self) -> Arc<ServerConfig> {
        let pair = match (
            tokio::fs::read(&self.cert_path).await,
            tokio::fs::read(&self.key_path).await,
        ) {
            (Ok(cert), Ok(key)) => Ok(Pair {
                cert,
                key: Zeroizing::new(key),
            }),
            (Err(source), _) => Err(TlsError::Read {
                path: self.cert_path.clone(),
                source,
            }),
            (_, Err(source)) => Err(TlsError::Read {
                path: self.key_path.clone(),
                source,
            }),
        };
        // A panic elsewhere cannot leave `State` half-updated (every field is
        // assigned whole), so a poisoned lock is still safe to use.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pair = match pair {
            Ok(pair) => {
                state.unreadable = None;
                pair
            }
            Err(error) => {
                let message = error.to_string();
                if state.unreadable.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "cannot re-read the serving certificate; keeping the last good one");
                    state.unreadable = Some(message);
                }
                return state.config.clone();
            }
        };
        let fingerprint = pair.fingerprint();
        if fingerprint == state.fingerprint || state.rejected == Some(fingerprint) {
            return state.config.clone();
        }
        match server_config(&self.provider, &pair, &self.cert_path, &self.key_path) {
            Ok(config) => {
                state.fingerprint = fingerprint;
                state.config = Arc::new(config);
                state.rejected = None;
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
            }
            Err(error) => {
                state.rejected = Some(fingerprint);
                tracing::warn!(error = %error, "new serving certificate rejected; keeping the last good one");
            }
        }
        state.config.clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    pair: &Pair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&pair.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pair.key).map_err(|source| TlsError::Pem {
        path: key_path.to_path_buf(),
        source,
    })?;
    let rejected = |source| TlsError::Rejected {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn startup_errors_name_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let error = CertSource::load(&cert, &key).err().expect("no files");
        assert!(
            error.to_string().contains(&cert.display().to_string()),
            "{error}"
        );

        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(&key, "not pem").expect("write");
        let error = CertSource::load(&cert, &key).err().expect("no certificate");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(
            error.to_string().contains(&cert.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn a_mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, _) = self_signed();
        let (_, other_key) = self_signed();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, cert_pem).expect("write");
        std::fs::write(&key, other_key).expect("write");
        let error = CertSource::load(&cert, &key).err().expect("mismatch");
        assert!(matches!(error, TlsError::Rejected { .. }), "{error}");
    }

    #[tokio::test]
    async fn changes_reload_and_bad_pairs_keep_the_last_good_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let write = |(cert_pem, key_pem): (String, String)| {
            std::fs::write(&cert, cert_pem).expect("write");
            std::fs::write(&key, key_pem).expect("write");
        };
        write(self_signed());
        let source = CertSource::load(&cert, &key).expect("loads");

        let first = source.current().await;
        assert!(
            Arc::ptr_eq(&first, &source.current().await),
            "unchanged files are not re-parsed"
        );

        write(self_signed());
        let second = source.current().await;
        assert!(!Arc::ptr_eq(&first, &second), "a new pair is picked up");

        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        assert!(
            Arc::ptr_eq(&second, &source.current().await),
            "a broken key keeps the last good pair"
        );
        std::fs::remove_file(&cert).expect("remove");
        assert!(
            Arc::ptr_eq(&second, &source.current().await),
            "a missing file keeps the last good pair"
        );

        write(self_signed());
        assert!(
            !Arc::ptr_eq(&second, &source.current().await),
            "recovers once the files are good again"
        );
    }
}
