//! TLS for the listeners: loading the certificate chain and key from PEM
//! files, and swapping them in while the broker runs (on SIGHUP, or when the
//! files change), without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or parsed as PEM.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        /// "certificate chain" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or is of an unsupported type.
    #[error("unusable TLS key in {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .expect("no code panics while holding the certificate lock"),
        ))
    }
}

/// The TLS identity of a listener, reloadable in place.
pub struct TlsReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SwappableCert>,
    /// Modification times of the files when last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

fn load_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem_error = |what, path: &Path, reason: String| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|err| pem_error("certificate chain", cert_path, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| pem_error("certificate chain", cert_path, err.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            "certificate chain",
            cert_path,
            "no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|err| pem_error("private key", key_path, err.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|err| TlsError::Key {
        path: key_path.display().to_string(),
        reason: err.to_string(),
    })?;
    Ok(Arc::new(certified))
}

impl TlsReloader {
    /// Loads the certificate chain and key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamps = (modified(cert_path), modified(key_path));
        let certified = load_key(&provider, cert_path, key_path)?;
        let resolver = Arc::new(SwappableCert {
            current: RwLock::new(certified),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            resolver,
            loaded: Mutex::new(stamps),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor for incoming connections; it always presents the latest
    /// loaded certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again and, if they are valid, serves them to new
    /// connections from now on. On error the previous certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (modified(&self.cert_path), modified(&self.key_path));
        let certified = load_key(&self.provider, &self.cert_path, &self.key_path)?;
        *self
            .resolver
            .current
            .write()
            .expect("no code panics while holding the certificate lock") = certified;
        *self
            .loaded
            .lock()
            .expect("no code panics while holding the stamp lock") = stamps;
        Ok(())
    }

    /// Reloads if either file's modification time changed since the last
    /// load. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps = (modified(&self.cert_path), modified(&self.key_path));
        let changed = *self
            .loaded
            .lock()
            .expect("no code panics while holding the stamp lock")
            != stamps;
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}
