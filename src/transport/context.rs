//! The TLS context of one member: current configurations, accept, connect.
//!
//! Owns: the configurations in use (swapped atomically on reload), the
//! allowed peer ids, the connection time limits, and the refusal of any
//! connection that fails the handshake or names no allowed member (logged
//! with the peer's address and the reason).
//! Must never: hand out a stream before the peer's identity is established,
//! or block a task on a silent peer past the handshake timeout.

use super::tls::{CertFiles, TlsConfigs, build};
use super::{ClientTlsStream, ServerTlsStream, Timeouts, TransportError, identity};
use crate::config::TlsPaths;
use crate::model::MemberId;
use rustls_pki_types::ServerName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub struct TlsContext {
    paths: TlsPaths,
    allowed: Vec<MemberId>,
    timeouts: Timeouts,
    current: RwLock<Arc<TlsConfigs>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("paths", &self.paths)
            .field("allowed", &self.allowed)
            .field("timeouts", &self.timeouts)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Load the CA, certificate and key; `allowed` are the member ids that
    /// may connect to this member (its configured peers).
    pub fn load(
        paths: &TlsPaths,
        allowed: Vec<MemberId>,
    ) -> Result<Arc<TlsContext>, TransportError> {
        Self::load_with(paths, allowed, Timeouts::default())
    }

    pub fn load_with(
        paths: &TlsPaths,
        allowed: Vec<MemberId>,
        timeouts: Timeouts,
    ) -> Result<Arc<TlsContext>, TransportError> {
        let files = CertFiles::read(paths)?;
        let configs = build(paths, &files)?;
        Ok(Arc::new(TlsContext {
            paths: paths.clone(),
            allowed,
            timeouts,
            current: RwLock::new(Arc::new(configs)),
            generation: AtomicU64::new(0),
        }))
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    pub fn allowed(&self) -> &[MemberId] {
        &self.allowed
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// How many reloads have replaced the configuration since `load` (for
    /// status and tests).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-read the files and, if they changed and make a valid
    /// configuration, use it for every new connection (established ones keep
    /// theirs). `Ok(false)`: the files are unchanged. On error the previous
    /// configuration stays in use.
    pub fn reload(&self) -> Result<bool, TransportError> {
        let files = CertFiles::read(&self.paths)?;
        if files.fingerprint() == self.configs().fingerprint {
            return Ok(false);
        }
        let fresh = Arc::new(build(&self.paths, &files)?);
        // A poisoned lock only means a panic elsewhere while holding it; the
        // Arc inside is always whole, so keep going.
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = fresh;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Whether the configuration in use was built from the files as they
    /// are now on disk (false after a failed or not yet run reload), for
    /// status pages and tests.
    pub fn is_current(&self) -> Result<bool, TransportError> {
        Ok(CertFiles::read(&self.paths)?.fingerprint() == self.configs().fingerprint)
    }

    fn configs(&self) -> Arc<TlsConfigs> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Run the server side of the handshake on an accepted TCP connection.
    /// Returns the peer's member id (from its verified certificate) and the
    /// stream, or an error; every refusal is logged here with the peer's
    /// address and the reason, so callers need not log it again.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(MemberId, ServerTlsStream), TransportError> {
        let peer = tcp
            .peer_addr()
            .map_or_else(|_| "unknown address".to_string(), |a| a.to_string());
        let res = self.accept_inner(tcp, &peer).await;
        if let Err(e) = &res {
            tracing::warn!(peer = %peer, reason = %e, "replication connection refused");
        }
        res
    }

    async fn accept_inner(
        &self,
        tcp: TcpStream,
        peer: &str,
    ) -> Result<(MemberId, ServerTlsStream), TransportError> {
        // Small frames (acks, heartbeats) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(self.configs().server.clone());
        let after = self.timeouts.handshake;
        let stream = timeout(after, acceptor.accept(tcp))
            .await
            .map_err(|_| TransportError::HandshakeTimeout {
                peer: peer.to_string(),
                after,
            })?
            .map_err(|e| TransportError::Handshake {
                peer: peer.to_string(),
                reason: e.to_string(),
            })?;
        // The verifier requires a client certificate, so one is there; the
        // check stays because an empty chain must never mean "anyone".
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| TransportError::Handshake {
                peer: peer.to_string(),
                reason: "no client certificate".into(),
            })?;
        let member = identity::member_of(cert.as_ref(), &self.allowed).map_err(|reason| {
            TransportError::NotAllowed {
                peer: peer.to_string(),
                reason,
            }
        })?;
        Ok((member, stream))
    }

    /// Dial `addr` and run the client side of the handshake, requiring the
    /// server's certificate to be signed by the cluster CA and to name
    /// `expected`.
    ///
    /// With TLS 1.3 the server checks our certificate after this side has
    /// finished: a server that refuses it shows up as an error on the first
    /// read, not here.
    pub async fn connect(
        &self,
        addr: &str,
        expected: &MemberId,
    ) -> Result<ClientTlsStream, TransportError> {
        let name = ServerName::try_from(expected.as_str().to_owned()).map_err(|e| {
            TransportError::ServerName {
                member: expected.0.clone(),
                reason: e.to_string(),
            }
        })?;
        let after = self.timeouts.connect;
        let tcp = timeout(after, TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                addr: addr.to_string(),
                after,
            })?
            .map_err(|source| TransportError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(self.configs().client.clone());
        let after = self.timeouts.handshake;
        let peer = format!("{expected} at {addr}");
        timeout(after, connector.connect(name, tcp))
            .await
            .map_err(|_| TransportError::HandshakeTimeout {
                peer: peer.clone(),
                after,
            })?
            .map_err(|e| TransportError::Handshake {
                peer,
                reason: e.to_string(),
            })
    }
}
