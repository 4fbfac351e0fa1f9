//! A minimal HTTP/1.1 client for the status endpoint, used by the CLI, the
//! bench and the drills (no TLS, loopback or a trusted network).
//!
//! Owns: one request, one response, with timeouts.
//! Must never: follow redirects or keep connections; send the token anywhere
//! but the Authorization header.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr} sent a malformed HTTP response")]
    Malformed { addr: String },
}

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub code: u16,
    pub body: String,
}

/// Send one request to `addr` (host:port).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| HttpError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
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
        s.read_to_end(&mut buf).await.map_err(|_| malformed())?;
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
    let r = request(addr, "GET", path, None, None, Duration::from_secs(3)).await?;
    serde_json::from_str(&r.body).map_err(|_| HttpError::Malformed {
        addr: addr.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_join() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
