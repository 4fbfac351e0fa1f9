//! rustls configurations from PEM files.
//!
//! Owns: reading the CA, certificate and key files, and building the server
//! configuration (client certificate required, signed by the cluster CA) and
//! the client configuration (server verified against the cluster CA, our
//! certificate presented), both on the `ring` provider, TLS 1.3 only, with
//! session resumption off.
//! Must never: use a process-wide default provider, or put key bytes in an
//! error or a log line.

use super::TransportError;
use crate::config::TlsPaths;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// One consistent pair of configurations, swapped as a whole on reload.
pub(crate) struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// SHA-256 over the three files' bytes: tells whether a file event
    /// changed anything.
    pub fingerprint: [u8; 32],
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files' bytes, read once so parsing and fingerprint agree.
pub(crate) struct CertFiles {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl CertFiles {
    pub fn read(paths: &TlsPaths) -> Result<CertFiles, TransportError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TransportError::Load {
                path: p.to_path_buf(),
                reason: e.to_string(),
            })
        };
        Ok(CertFiles {
            ca: read(&paths.ca)?,
            cert: read(&paths.cert)?,
            key: read(&paths.key)?,
        })
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.ca, &self.cert, &self.key] {
            // Length-prefixed, so moving bytes between files changes it.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

pub(crate) fn build(paths: &TlsPaths, files: &CertFiles) -> Result<TlsConfigs, TransportError> {
    let load = |p: &Path, reason: String| TransportError::Load {
        path: p.to_path_buf(),
        reason,
    };
    let config = |reason: String| TransportError::Config {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        reason,
    };

    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&files.ca) {
        let der = der.map_err(|e| load(&paths.ca, format!("not a PEM certificate file: {e}")))?;
        roots
            .add(der)
            .map_err(|e| load(&paths.ca, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(load(&paths.ca, "holds no certificate".into()));
    }
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load(&paths.cert, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(load(&paths.cert, "holds no certificate".into()));
    }
    // The pem error names what is wrong with the file, never its content.
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| load(&paths.key, format!("not a PEM private key: {e}")))?;

    let roots = Arc::new(roots);
    let provider = provider();
    let versions = &[&rustls::version::TLS13];

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| load(&paths.ca, e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config(e.to_string()))?;
    // No resumption: every connection presents and verifies certificates
    // against the current CA, so a reload takes effect for all new ones.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config(e.to_string()))?;
    client.resumption = Resumption::disabled();

    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        fingerprint: files.fingerprint(),
    })
}
