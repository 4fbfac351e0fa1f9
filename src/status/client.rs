//! A minimal HTTP/1.1 client for the status endpoint, used by the CLI, the
//! bench and the drills: plain HTTP, or HTTPS trusting the cluster CA when
//! the status endpoints run with `[status] tls = true`.
//!
//! Owns: parsing a status URL, one request, one response, with timeouts and
//! a response size limit.
//! Must never: follow redirects or keep connections; send the token anywhere
//! but the Authorization header.

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body read (a `/status` of a big cluster is a few KiB).
const MAX_RESPONSE: u64 = 16 << 20;

/// Where a status endpoint is, and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// host:port
    pub addr: String,
    /// `Some` for https.
    pub tls: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

impl Endpoint {
    pub fn plain(addr: impl Into<String>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            tls: None,
        }
    }

    /// Parse `http://host:port`, `https://host:port` or `host:port` (plain
    /// HTTP unless `tls` is given). `tls` is needed for https.
    pub fn parse(url: &str, tls: Option<Arc<ClientConfig>>) -> Result<Endpoint, HttpError> {
        let bad = |reason: &str| HttpError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if url.contains("://") {
            return Err(bad("only http:// and https:// are supported"));
        } else {
            (tls.is_some(), url)
        };
        let addr = rest.strip_suffix('/').unwrap_or(rest);
        if addr.is_empty() || addr.contains('/') {
            return Err(bad("expected host:port, without a path"));
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(bad("expected host:port (the port is required)"));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("expected host:port with a port number"));
        }
        let tls = if https {
            Some(tls.ok_or_else(|| {
                bad("an https URL needs the cluster CA: pass --config FILE (its [tls] ca) or --ca FILE")
            })?)
        } else {
            None
        };
        Ok(Endpoint {
            addr: addr.to_string(),
            tls,
        })
    }

    /// The same scheme at another address (a peer's status address).
    pub fn with_addr(&self, addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            tls: self.tls.clone(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr} sent a malformed HTTP response")]
    Malformed { addr: String },
    #[error("bad status URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
}

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub code: u16,
    pub body: String,
}

/// Send one request to `addr` (host:port) over plain HTTP.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    request_to(&Endpoint::plain(addr), method, path, token, body, timeout).await
}

async fn open(ep: &Endpoint) -> Result<Box<dyn Io>, HttpError> {
    let addr = ep.addr.as_str();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| HttpError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let Some(cfg) = &ep.tls else {
        return Ok(Box::new(tcp));
    };
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    // The verifier checks the certificate under the member name it carries;
    // the name here only fills in SNI.
    let name = ServerName::try_from(host.to_string())
        .or_else(|_| ServerName::try_from("understudy".to_string()))
        .map_err(|e| HttpError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| HttpError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    Ok(Box::new(tls))
}

/// Send one request to an endpoint.
pub async fn request_to(
    ep: &Endpoint,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let addr = ep.addr.as_str();
    let fut = async {
        let mut s = open(ep).await?;
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let malformed = || HttpError::Malformed {
            addr: addr.to_string(),
        };
        s.write_all(req.as_bytes()).await.map_err(|_| malformed())?;
        let mut buf = Vec::new();
        let read = (&mut s).take(MAX_RESPONSE).read_to_end(&mut buf).await;
        // A TLS peer that closes without close_notify still sent a whole
        // response when the head and body are there; judge by content.
        if read.is_err() && buf.is_empty() {
            return Err(malformed());
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(malformed)?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok(HttpResponse { code, body })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HttpError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })?
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET `path` and parse the body as JSON.
pub async fn get_json(addr: &str, path: &str) -> Result<serde_json::Value, HttpError> {
    get_json_from(&Endpoint::plain(addr), path, Duration::from_secs(3)).await
}

/// GET `path` from an endpoint and parse the body as JSON (whatever the
/// status code: error answers are JSON too).
pub async fn get_json_from(
    ep: &Endpoint,
    path: &str,
    timeout: Duration,
) -> Result<serde_json::Value, HttpError> {
    let r = request_to(ep, "GET", path, None, None, timeout).await?;
    serde_json::from_str(&r.body).map_err(|_| HttpError::Malformed {
        addr: ep.addr.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:7501", None).unwrap().addr,
            "127.0.0.1:7501"
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:7501/", None)
                .unwrap()
                .url(),
            "http://127.0.0.1:7501"
        );
        for bad in [
            "ftp://x:1",
            "127.0.0.1",
            "http://h:port",
            "http://h:1/status",
            "",
        ] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
        let e = Endpoint::parse("https://h:1", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CA"), "{e}");
    }

    #[test]
    fn chunked_bodies_join() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
