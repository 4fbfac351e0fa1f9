//! The fault proxy itself, against a local echo server: bytes flow through
//! unchanged, each fault does what it says on open and new connections, and
//! dropping the proxy leaves nothing behind.

use integration_tests::proxy::{Direction, FaultProxy, Mode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How long "nothing arrives" is watched for. Silence can only be observed
/// for a while; this is long enough for loopback forwarding to have happened
/// many times over.
const SILENCE: Duration = Duration::from_millis(400);
/// Upper bound for anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

/// An echo server on the test's runtime, counting its connections and the
/// bytes it received.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (a, c, r) = (accepted.clone(), closed.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, r) = (c.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                r.fetch_add(n as u64, Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Echo {
            addr,
            accepted,
            closed,
            received,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
    fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }
    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

/// Write `data` and read the same number of bytes back.
async fn round_trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    timeout(PROMPT, s.read_exact(&mut back))
        .await
        .expect("echo did not come back in time")
        .unwrap();
    back
}

/// The connection stays open and nothing arrives on it for `SILENCE`.
async fn assert_silent(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(SILENCE, s.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("the connection was closed, expected it open and silent"),
        Ok(Ok(n)) => panic!("{n} bytes arrived, expected silence"),
        Ok(Err(e)) => panic!("the connection failed ({e}), expected it open and silent"),
    }
}

/// The peer closes the connection (EOF or reset) promptly.
async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(PROMPT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{n} bytes arrived, expected the connection closed"),
        Err(_) => panic!("the connection stayed open, expected it closed"),
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn bytes_flow_both_ways_unchanged_and_are_counted() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    assert_eq!(proxy.upstream(), echo.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let data = pattern(300_000);
    // Write from one task and read from another, so a large payload cannot
    // deadlock on full socket buffers.
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        // Half-close: the proxy must pass it on and still carry the echo back.
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = timeout(PROMPT, r.read_to_end(&mut back));
    let ((), got) = tokio::join!(send, recv);
    got.expect("echo did not finish in time").unwrap();
    assert!(back == data, "the echo differs from what was sent");
    let c = proxy.counters();
    assert_eq!(c.accepted, 1);
    assert_eq!(c.bytes_to_upstream, data.len() as u64);
    assert_eq!(c.bytes_from_upstream, data.len() as u64);
    wait_for("the connection to close", || proxy.counters().open == 0).await;
}

#[tokio::test]
async fn refuse_partition_closes_open_connections_and_new_ones_until_heal() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"before").await, b"before");

    proxy.partition(Mode::Refuse);
    assert_closed(&mut old).await;
    wait_for("upstream to see the close", || echo.closed() == 1).await;
    let upstream_before = echo.accepted();
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_closed(&mut refused).await;
    assert_eq!(
        echo.accepted(),
        upstream_before,
        "a refused connection reached upstream"
    );

    proxy.heal();
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut new, b"after").await, b"after");
    assert_eq!(proxy.counters().accepted, 3);
}

#[tokio::test]
async fn blackhole_partition_swallows_bytes_until_heal_closes_what_it_touched() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"before").await, b"before");
    let before = proxy.counters();
    let upstream_conns = echo.accepted();

    proxy.partition(Mode::Blackhole);
    // The open connection stays open; writes succeed and vanish.
    old.write_all(b"into the void").await.unwrap();
    assert_silent(&mut old).await;
    // A new connection is accepted, never reaches upstream, answers nothing.
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    new.write_all(b"hello?").await.unwrap();
    assert_silent(&mut new).await;
    assert_eq!(
        echo.accepted(),
        upstream_conns,
        "a blackholed connection reached upstream"
    );
    let during = proxy.counters();
    assert_eq!(during.bytes_to_upstream, before.bytes_to_upstream);
    assert_eq!(during.bytes_from_upstream, before.bytes_from_upstream);
    assert_eq!(during.open, 2);

    proxy.heal();
    // Both lost bytes, so both are closed; a fresh connection works.
    assert_closed(&mut old).await;
    assert_closed(&mut new).await;
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"after").await, b"after");
}

#[tokio::test]
async fn delay_adds_at_least_the_delay_each_way() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"warm").await, b"warm");

    let delay = Duration::from_millis(150);
    proxy.set_delay(delay);
    let t = Instant::now();
    assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
    let took = t.elapsed();
    // Once to upstream, once back.
    assert!(
        took >= 2 * delay,
        "round trip took {took:?}, expected at least {:?}",
        2 * delay
    );

    // It is latency, not a throughput cap: many chunks in flight at once
    // arrive after about one delay each way, not one delay per chunk.
    s.set_nodelay(true).unwrap();
    let t = Instant::now();
    let chunks = 20;
    for i in 0..chunks {
        s.write_all(&[i as u8; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut back = vec![0u8; chunks * 100];
    timeout(PROMPT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    assert!(took >= 2 * delay, "took {took:?}");
    for i in 0..chunks {
        assert!(
            back[i * 100..(i + 1) * 100].iter().all(|b| *b == i as u8),
            "chunk {i} out of order"
        );
    }

    proxy.set_delay(Duration::ZERO);
    assert_eq!(round_trip(&mut s, b"fast").await, b"fast");
}

#[tokio::test]
async fn cut_to_upstream_discards_requests_only() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"one").await, b"one");
    let received = echo.received();

    proxy.cut(Direction::ToUpstream);
    s.write_all(b"lost").await.unwrap();
    assert_silent(&mut s).await;
    assert_eq!(
        echo.received(),
        received,
        "upstream got bytes through a cut"
    );

    proxy.heal();
    assert_closed(&mut s).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"two").await, b"two");
}

#[tokio::test]
async fn cut_from_upstream_lets_requests_through_but_no_answers() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"one").await, b"one");
    let received = echo.received();
    let from = proxy.counters().bytes_from_upstream;

    proxy.cut(Direction::FromUpstream);
    s.write_all(b"heard").await.unwrap();
    wait_for("upstream to receive the request", || {
        echo.received() == received + 5
    })
    .await;
    assert_silent(&mut s).await;
    assert_eq!(proxy.counters().bytes_from_upstream, from);
    // New connections are cut the same way.
    let mut s2 = TcpStream::connect(proxy.addr()).await.unwrap();
    s2.write_all(b"also").await.unwrap();
    wait_for("upstream to receive the second request", || {
        echo.received() == received + 9
    })
    .await;
    assert_silent(&mut s2).await;
}

#[tokio::test]
async fn drop_probability_drops_whole_chunks_from_a_seeded_stream() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start_with_seed(echo.addr, 42);
    assert_eq!(proxy.seed(), 42);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();

    proxy.set_drop_probability(1.0);
    s.write_all(b"gone").await.unwrap();
    assert_silent(&mut s).await;
    assert_eq!(echo.received(), 0);

    // Half the chunks to upstream (and half of the echoes back) get lost.
    // Writes are spaced so most arrive as separate chunks; with dozens of
    // chunks, "none" or "all" delivered would take a broken PRNG.
    proxy.set_drop_probability(0.5);
    let chunks = 60u64;
    for _ in 0..chunks {
        s.write_all(&[7u8; 10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(SILENCE).await;
    let got = echo.received();
    assert!(
        got > 0 && got < chunks * 10,
        "upstream received {got} of {} bytes",
        chunks * 10
    );
    assert_eq!(got % 10, 0, "a chunk was split or damaged: {got} bytes");

    proxy.set_drop_probability(0.0);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"whole").await, b"whole");
}

#[tokio::test]
async fn dropping_the_proxy_closes_the_port_and_every_connection() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr);
    let addr = proxy.addr();
    let mut a = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut a, b"a").await, b"a");
    // One more connection with a chunk held by a long delay, to show those
    // end too.
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut b, b"b").await, b"b");
    proxy.set_delay(Duration::from_secs(3600));
    b.write_all(b"in flight").await.unwrap();

    drop(proxy);
    // Drop joined the proxy's thread: the listener is gone now.
    let err = TcpStream::connect(addr)
        .await
        .expect_err("the proxy's port still accepts after drop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_closed(&mut a).await;
    assert_closed(&mut b).await;
    wait_for("upstream to see both connections closed", || {
        echo.closed() == 2
    })
    .await;
}

/// The proxy runs on its own thread, so plain blocking code can use it.
#[test]
fn works_from_a_sync_test() {
    use std::io::{Read, Write};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let proxy = FaultProxy::start(upstream_addr);
    let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(PROMPT)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    server.join().unwrap();
    let addr = proxy.addr();
    drop(proxy);
    assert!(std::net::TcpStream::connect(addr).is_err());
}
