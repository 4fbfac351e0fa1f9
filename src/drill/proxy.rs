//! A partitionable TCP relay for the `partition-active` drill: each member's
//! peer addresses point at a relay, so the drill can cut a member off from
//! the others (both directions) and heal it again while every process runs.
//!
//! Owns: one listener on 127.0.0.1 and, per accepted connection, a pump each
//! way to the upstream address, on tasks of the caller's runtime.
//! Must never: change the bytes it forwards (it only withholds them), keep a
//! connection open across a heal (a stream that silently lost bytes must not
//! carry on), or outlive its [`Relay`] (dropping it aborts every task).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Shared {
    upstream: SocketAddr,
    /// While set, every byte either way is read and discarded and new
    /// connections are swallowed: a cut cable, noticed only by timeouts.
    cut: AtomicBool,
    /// Bumped by a heal: connections started under an older value end.
    generation: watch::Sender<u64>,
}

/// A relay from [`Relay::addr`] to an upstream address.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Bind a loopback port and start relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            cut: AtomicBool::new(false),
            generation: watch::Sender::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors and the like: pause rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let s = s.clone();
                let mut gen_rx = s.generation.subscribe();
                let started = *gen_rx.borrow();
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve(client, &s) => {}
                        _ = gen_rx.wait_for(|g| *g != started) => {}
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Withhold everything, both ways, on open and new connections.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forward again; connections that lived through the cut are closed.
    pub fn heal(&self) {
        if self.shared.cut.swap(false, Ordering::SeqCst) {
            self.shared.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every connection task (they wait on the generation too).
        self.shared.generation.send_modify(|g| *g = u64::MAX);
    }
}

async fn serve(mut client: TcpStream, s: &Shared) {
    if s.cut.load(Ordering::SeqCst) {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    }
    let Ok(upstream) = TcpStream::connect(s.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let _ = tokio::try_join!(
        pump(&mut cr, &mut uw, &s.cut),
        pump(&mut ur, &mut cw, &s.cut)
    );
}

async fn pump<R, W>(r: &mut R, w: &mut W, cut: &AtomicBool) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        // Decided per chunk, so bytes in flight when the cut starts are
        // lost with it, as on a real link.
        if !cut.load(Ordering::SeqCst) {
            w.write_all(&buf[..n]).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn relays_withholds_while_cut_and_heals() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start(up).await.unwrap();
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");

        relay.cut();
        c.write_all(b"lost").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), c.read(&mut b)).await;
        assert!(r.is_err(), "nothing comes back while cut");

        relay.heal();
        // The connection that lived through the cut is closed...
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        // ...and a new one is relayed again.
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"back").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"back");
    }
}
