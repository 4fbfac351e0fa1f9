//! A fault-injecting TCP proxy for the black-box tests: put [`FaultProxy::addr`]
//! in a member's config instead of a peer's real address, then partition,
//! delay, drop or cut the traffic while the members run.
//!
//! Owns: one listener on 127.0.0.1 and, for each accepted connection, one
//! connection to the upstream address with a pump each way. The faults are
//! plain shared state that every pump reads for every chunk, so a change takes
//! effect on open connections at once.
//! Must never: outlive its [`FaultProxy`] value (dropping it stops the runtime
//! thread, which closes the listener and every connection), change the bytes
//! it forwards (it only delays, withholds or drops whole chunks), or block
//! the caller's runtime (it runs on a thread of its own, so it serves sync
//! and async tests alike).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// How a partition treats connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Open connections are closed at once and new ones are accepted and
    /// closed immediately: the peer learns right away (EOF), as when the
    /// process behind the port has died.
    Refuse,
    /// Open connections stay open but every byte, both ways, is silently
    /// discarded; new connections are accepted and swallowed the same way
    /// (upstream is never dialled). Nobody learns anything except by their own
    /// timeouts, like a cut network cable.
    Blackhole,
}

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client that dialled the proxy to the upstream server.
    ToUpstream,
    /// From the upstream server back to the client.
    FromUpstream,
}

/// A snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the listener accepted, including refused and blackholed ones.
    pub accepted: u64,
    /// Connections open right now (accepted and not yet closed).
    pub open: u64,
    /// Bytes forwarded to upstream (not counting discarded ones).
    pub bytes_to_upstream: u64,
    /// Bytes forwarded back to clients.
    pub bytes_from_upstream: u64,
}

/// The faults in force; read by every pump for every chunk.
#[derive(Debug)]
struct Faults {
    partition: Option<Mode>,
    cut_to_upstream: bool,
    cut_from_upstream: bool,
    delay: Duration,
    drop_probability: f64,
    rng: SplitMix64,
}

struct Shared {
    upstream: SocketAddr,
    seed: u64,
    faults: Mutex<Faults>,
    /// Bumped to close every connection opened before the bump: each
    /// connection remembers the value it started under and ends when it
    /// changes (or when the sender goes away at shutdown).
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
    to_upstream: AtomicU64,
    from_upstream: AtomicU64,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A poisoned lock only means a test thread panicked while holding it;
        // the plain-data state inside is still consistent.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Callers hold the faults lock, so a new connection sees either the
    /// old faults and the old generation (and is then closed) or the new
    /// faults and the new generation, never a mix.
    fn close_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn counter(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::FromUpstream => &self.from_upstream,
        }
    }
}

/// A TCP proxy from [`FaultProxy::addr`] to an upstream address, with faults
/// switchable at any time. Dropping it closes everything.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Used when neither the caller nor `UNDERSTUDY_TEST_SEED` gives a seed.
const DEFAULT_SEED: u64 = 0x5EED_FA17;

impl FaultProxy {
    /// Start forwarding to `upstream`, with no faults. The drop PRNG's seed
    /// is `UNDERSTUDY_TEST_SEED` if set, else a fixed default.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let seed = std::env::var("UNDERSTUDY_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SEED);
        FaultProxy::start_with_seed(upstream, seed)
    }

    /// Start forwarding to `upstream`, seeding the drop PRNG with `seed`.
    ///
    /// Panics if it cannot bind a port or start its thread: this is test
    /// harness set-up, and nothing useful can run without it.
    pub fn start_with_seed(upstream: SocketAddr, seed: u64) -> FaultProxy {
        // Bind here, synchronously, so `addr()` is known before `start`
        // returns and connections made right after are queued, not refused.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("fault proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("fault proxy: non-blocking listener");
        let addr = listener.local_addr().expect("fault proxy: local address");
        let shared = Arc::new(Shared {
            upstream,
            seed,
            faults: Mutex::new(Faults {
                partition: None,
                cut_to_upstream: false,
                cut_from_upstream: false,
                delay: Duration::ZERO,
                drop_probability: 0.0,
                rng: SplitMix64(seed),
            }),
            generation: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            from_upstream: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fault proxy: runtime");
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fault proxy {addr}: cannot use the listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, thread_shared) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task still
                // spawned on it, and with them their sockets.
                drop(runtime);
            })
            .expect("fault proxy: thread");
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address to dial instead of the upstream one.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The drop PRNG's seed.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Partition the upstream away. `Refuse` also closes every open
    /// connection now; `Blackhole` leaves them open and silent.
    pub fn partition(&self, mode: Mode) {
        let mut f = self.shared.faults();
        f.partition = Some(mode);
        if mode == Mode::Refuse {
            self.shared.close_all();
        }
    }

    /// End a partition and any one-way cut. Connections that were open
    /// during one are closed: bytes were discarded on them, and a TCP stream
    /// never resumes with a gap, so letting them carry on would hand the
    /// endpoints a corruption no real network produces. New connections are
    /// forwarded again. Delay and drop probability are left as set.
    pub fn heal(&self) {
        let mut f = self.shared.faults();
        let was_faulty = f.partition.is_some() || f.cut_to_upstream || f.cut_from_upstream;
        f.partition = None;
        f.cut_to_upstream = false;
        f.cut_from_upstream = false;
        if was_faulty {
            self.shared.close_all();
        }
    }

    /// Hold every chunk, both ways, for `delay` before forwarding it. This is
    /// latency, not a throughput cap: chunks read meanwhile are held in
    /// parallel and leave in order.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults().delay = delay;
    }

    /// Drop each chunk (each read from a socket, either way) with probability
    /// `p` (clamped to 0..=1), from the seeded PRNG. The receiver then sees a
    /// stream with bytes missing: the fault that exercises framing and decode
    /// errors. Which chunks are dropped also depends on how the kernel
    /// splits the stream, so a seed replays the decisions, not the chunking.
    pub fn set_drop_probability(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.shared.faults().drop_probability = p;
        if p > 0.0 {
            eprintln!(
                "fault proxy {}: dropping chunks with p = {p}, seed = {} (replay with UNDERSTUDY_TEST_SEED={})",
                self.addr, self.shared.seed, self.shared.seed
            );
        }
    }

    /// Silently discard everything sent in one direction, on open and new
    /// connections, until [`FaultProxy::heal`].
    pub fn cut(&self, dir: Direction) {
        let mut f = self.shared.faults();
        match dir {
            Direction::ToUpstream => f.cut_to_upstream = true,
            Direction::FromUpstream => f.cut_from_upstream = true,
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            open: self.shared.open.load(Ordering::SeqCst),
            bytes_to_upstream: self.shared.to_upstream.load(Ordering::SeqCst),
            bytes_from_upstream: self.shared.from_upstream.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may already be gone (listener error); nothing to stop then.
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // Joining makes "dropped" mean "port closed and all sockets
            // closed" by the time drop returns. A panic in the thread has
            // already been printed; re-raising it from a destructor would abort.
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than
                // spin, and keep serving.
                eprintln!("fault proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Counted here rather than in the task, so `open` includes a
        // connection as soon as `accepted` does.
        shared.open.fetch_add(1, Ordering::SeqCst);
        let open = OpenGuard(shared.clone());
        tokio::spawn(async move {
            let shared = &open.0;
            let generation = shared.generation.subscribe();
            // One consistent view of faults and generation (see close_all).
            let (started, partition) = {
                let f = shared.faults();
                (*generation.borrow(), f.partition)
            };
            tokio::select! {
                () = serve(client, partition, shared) => {}
                () = closed_by_proxy(generation, started) => {}
            }
        });
    }
}

/// Keeps `Counters::open` right however the connection task ends (including
/// being dropped with the runtime).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves when the proxy closes connections started under `started`.
async fn closed_by_proxy(mut generation: watch::Receiver<u64>, started: u64) {
    // An error means the proxy is shutting down: close as well.
    let _ = generation.wait_for(|g| *g != started).await;
}

async fn serve(mut client: TcpStream, partition: Option<Mode>, shared: &Shared) {
    match partition {
        Some(Mode::Refuse) => return,
        Some(Mode::Blackhole) => {
            // Read and forget until closed; never dial upstream.
            let mut buf = vec![0u8; 16 * 1024];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            return;
        }
        None => {}
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        // Upstream down: the client sees its connection closed, as it would
        // have seen a refused connect.
        return;
    };
    // Both ends carry small latency-sensitive frames; do not let Nagle add
    // delays the test did not ask for.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    // try_join: a clean EOF one way half-closes that way and lets the other
    // finish; an error either way ends the whole connection.
    let _ = tokio::try_join!(
        pump(cr, uw, Direction::ToUpstream, shared),
        pump(ur, cw, Direction::FromUpstream, shared),
    );
}

/// Copy one direction: a reader stamps each chunk with when it may leave, a
/// writer waits for that moment, asks the faults whether to deliver it, and
/// writes it. Splitting the two is what makes a delay latency rather than a
/// cap on throughput.
async fn pump<R, W>(mut r: R, mut w: W, dir: Direction, shared: &Shared) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Bounded, so a slow upstream pushes back on the sender as TCP would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let due = Instant::now() + shared.faults().delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
        // `tx` drops here, which tells the writer the stream ended.
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Decide at delivery time, so bytes still in flight when a
            // partition starts are lost with it, as on a real link.
            if deliver(dir, shared) {
                // Counted before the write, so a test that has just received
                // bytes always finds them counted already.
                shared
                    .counter(dir)
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                w.write_all(&chunk).await?;
            }
        }
        // The reader saw EOF (or failed): pass the half-close on.
        w.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Whether a chunk going `dir` gets through the faults in force now.
fn deliver(dir: Direction, shared: &Shared) -> bool {
    let mut f = shared.faults();
    let cut = match dir {
        Direction::ToUpstream => f.cut_to_upstream,
        Direction::FromUpstream => f.cut_from_upstream,
    };
    if f.partition.is_some() || cut {
        return false;
    }
    let p = f.drop_probability;
    // Draw only when dropping is on, so the PRNG sequence for a seed starts
    // at the first chunk sent under a drop probability.
    !(p > 0.0 && f.rng.next_f64() < p)
}

/// SplitMix64: tiny, seedable, good enough to decide which chunks to drop,
/// and needs no extra dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits as a fraction.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
