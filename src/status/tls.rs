//! Optional TLS for the status endpoint (`[status] tls = true`), with the
//! member's own certificate and key, and the matching client side for the
//! CLI.
//!
//! The server asks for no client certificate: load balancers, Prometheus
//! and curl must reach `/health` and `/metrics`; the POST routes are guarded
//! by the bearer token, which TLS then keeps off the wire. The client trusts
//! the cluster CA and accepts any certificate it signed that names a member
//! (the CLI is often pointed at an address, not a member id).
//!
//! Owns: building both configurations; re-reading the certificate files
//! when they change on disk (checked by modification time on each new
//! connection, so rotation needs no restart).
//! Must never: put key bytes into an error or a log line.

use crate::config::TlsPaths;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum StatusTlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("status TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(p: &Path) -> Result<Vec<u8>, StatusTlsError> {
    std::fs::read(p).map_err(|e| StatusTlsError::File {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, StatusTlsError> {
    let bytes = read(p)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StatusTlsError::File {
            path: p.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if chain.is_empty() {
        return Err(StatusTlsError::File {
            path: p.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(chain)
}

fn server_config(paths: &TlsPaths) -> Result<Arc<ServerConfig>, StatusTlsError> {
    let chain = certs(&paths.cert)?;
    let key_bytes = read(&paths.key)?;
    // The pem error says what is wrong with the file, never its content.
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| StatusTlsError::File {
        path: paths.key.clone(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StatusTlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| StatusTlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn mtimes(paths: &TlsPaths) -> [Option<SystemTime>; 2] {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [m(&paths.cert), m(&paths.key)]
}

/// The status server's TLS configuration, rebuilt when the files change.
pub struct StatusTls {
    paths: TlsPaths,
    current: RwLock<([Option<SystemTime>; 2], Arc<ServerConfig>)>,
}

impl std::fmt::Debug for StatusTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTls")
            .field("cert", &self.paths.cert)
            .finish_non_exhaustive()
    }
}

impl StatusTls {
    pub fn load(paths: &TlsPaths) -> Result<StatusTls, StatusTlsError> {
        let stamp = mtimes(paths);
        let cfg = server_config(paths)?;
        Ok(StatusTls {
            paths: paths.clone(),
            current: RwLock::new((stamp, cfg)),
        })
    }

    /// The configuration for a new connection. A failed rebuild keeps the
    /// previous configuration (and says so in the log).
    pub fn config(&self) -> Arc<ServerConfig> {
        let stamp = mtimes(&self.paths);
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == stamp {
                return cur.1.clone();
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        match server_config(&self.paths) {
            Ok(cfg) => {
                tracing::info!(cert = %self.paths.cert.display(), "status endpoint certificate reloaded");
                *cur = (stamp, cfg);
            }
            Err(e) => {
                tracing::warn!(error = %e, "status endpoint certificate reload failed; keeping the previous one");
                // Do not retry on every connection until the files change again.
                cur.0 = stamp;
            }
        }
        cur.1.clone()
    }
}

/// The first DNS name a certificate carries (member certificates carry
/// their member id).
fn dns_name(cert: &[u8]) -> Option<String> {
    let (_, c) = X509Certificate::from_der(cert).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|g| match g {
        GeneralName::DNSName(n) => Some((*n).to_string()),
        _ => None,
    })
}

/// Verifies a server certificate against the cluster CA under the member
/// name the certificate itself carries: any member of the cluster is
/// accepted, nothing else is.
#[derive(Debug)]
struct AnyClusterMember {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyClusterMember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = dns_name(end_entity.as_ref()).ok_or_else(|| {
            rustls::Error::General("the server certificate names no member".into())
        })?;
        let name = ServerName::try_from(name)
            .map_err(|e| rustls::Error::General(format!("bad member name: {e}")))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration trusting the cluster CA in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, StatusTlsError> {
    let mut roots = RootCertStore::empty();
    for der in certs(ca)? {
        roots.add(der).map_err(|e| StatusTlsError::File {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| StatusTlsError::Config(e.to_string()))?;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StatusTlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyClusterMember { inner }))
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
