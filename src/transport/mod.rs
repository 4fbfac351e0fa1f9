//! Replication transport: TCP + rustls with mutual TLS between members.
//!
//! Owns: building the TLS configurations from the cluster CA and the member's
//! certificate and key, accepting and dialling connections (with timeouts),
//! establishing the peer's member id from its certificate, reloading the
//! certificates when their files change, and the reconnect backoff policy.
//! Must never: let a connection through whose certificate is not signed by
//! the cluster CA or does not name an allowed member; read a frame (that is
//! the caller's job, and only after `accept`/`connect` succeeded); depend on
//! a process-wide crypto provider; log key material.

mod context;
mod identity;
mod reload;
mod retry;
mod tls;

#[cfg(test)]
mod tests;

pub use context::TlsContext;
pub use reload::CertWatcher;
pub use retry::Retry;

use std::path::PathBuf;
use std::time::Duration;

/// The stream `TlsContext::accept` hands out.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
/// The stream `TlsContext::connect` hands out.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Time limits for setting up a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect, when dialling.
    pub connect: Duration,
    /// TLS handshake, both ways. Bounds how long a silent client can hold
    /// an accepting task.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            handshake: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate, key or CA file could not be read or parsed.
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// The files parsed but do not make a TLS configuration (e.g. the key
    /// does not belong to the certificate).
    #[error("TLS configuration from {cert} and {key}: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{member:?} cannot be a TLS server name: {reason}")]
    ServerName { member: String, reason: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("TLS handshake with {peer}: {reason}")]
    Handshake { peer: String, reason: String },
    #[error("TLS handshake with {peer}: not finished within {after:?}")]
    HandshakeTimeout { peer: String, after: Duration },
    /// The peer's certificate is valid but does not name an allowed member.
    #[error("peer {peer} refused: {reason}")]
    NotAllowed { peer: String, reason: String },
    #[error("watching certificate files: {0}")]
    Watch(String),
}
