//! Transport tests over real TLS on 127.0.0.1, with certificates made by
//! `certs::init_certs` in temporary folders.

use super::*;
use crate::certs::{ca_cert_path, init_certs, member_cert_path, member_key_path};
use crate::config::TlsPaths;
use crate::model::{Epoch, MemberId, Position, Role};
use crate::wire::alloc_probe::measure;
use crate::wire::{self, ClientMsg, Hello, PROTOCOL_VERSION, ServerMsg, WireError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn id(s: &str) -> MemberId {
    MemberId::new(s)
}

fn ids(names: &[&str]) -> Vec<MemberId> {
    names.iter().map(|n| id(n)).collect()
}

fn paths(dir: &Path, member: &str) -> TlsPaths {
    TlsPaths {
        ca: ca_cert_path(dir),
        cert: member_cert_path(dir, &id(member)),
        key: member_key_path(dir, &id(member)),
    }
}

/// A cluster folder with members a, b and c (c is never an allowed peer).
fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_certs(dir.path(), &ids(&["a", "b", "c"]), false).unwrap();
    dir
}

fn ctx(dir: &Path, member: &str, allowed: &[&str]) -> Arc<TlsContext> {
    let t = Timeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
    };
    TlsContext::load_with(&paths(dir, member), ids(allowed), t).unwrap()
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Accept one connection on `l` with `server` in a task.
fn accept_one(
    server: &Arc<TlsContext>,
    l: TcpListener,
) -> tokio::task::JoinHandle<Result<(MemberId, ServerTlsStream), TransportError>> {
    let server = server.clone();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        server.accept(tcp).await
    })
}

fn hello(member: &str, cluster: &str, protocol: u16) -> Hello {
    Hello {
        protocol,
        cluster: cluster.into(),
        member: id(member),
        role: Role::Passive,
        epoch: Epoch(1),
        position: Position::new(1, 7),
        want_snapshot: false,
        schema: None,
    }
}

#[tokio::test]
async fn mutual_tls_between_two_members_names_the_dialler() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b", "w"]);
    let b = ctx(dir.path(), "b", &["a", "w"]);
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);

    let client = b.connect(&addr, &id("a")).await.unwrap();
    let (who, server) = acc.await.unwrap().unwrap();
    assert_eq!(who, id("b"));

    // Frames flow both ways over the TLS streams, the handshake checked.
    let (mut b_rx, mut b_tx) = wire::split::<_, ServerMsg, ClientMsg>(client);
    let (mut a_rx, mut a_tx) = wire::split::<_, ClientMsg, ServerMsg>(server);
    b_tx.send(&ClientMsg::Hello(hello("b", "prod", PROTOCOL_VERSION)))
        .await
        .unwrap();
    let Some(ClientMsg::Hello(h)) = a_rx.recv().await.unwrap() else {
        panic!("expected a hello");
    };
    assert_eq!(h.check("prod", &who), Ok(()));
    a_tx.send(&ServerMsg::Welcome(hello("a", "prod", PROTOCOL_VERSION)))
        .await
        .unwrap();
    assert!(matches!(
        b_rx.recv().await.unwrap(),
        Some(ServerMsg::Welcome(_))
    ));
}

#[tokio::test]
async fn a_hello_is_refused_for_wrong_cluster_protocol_or_claimed_name() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let b = ctx(dir.path(), "b", &["a"]);
    for (h, expect) in [
        (hello("b", "staging", PROTOCOL_VERSION), "cluster"),
        (hello("b", "prod", PROTOCOL_VERSION + 7), "protocol version"),
        // b's certificate, claiming to be c.
        (hello("c", "prod", PROTOCOL_VERSION), "certificate"),
    ] {
        let (l, addr) = listener().await;
        let acc = accept_one(&a, l);
        let client = b.connect(&addr, &id("a")).await.unwrap();
        let (who, server) = acc.await.unwrap().unwrap();
        let (mut b_rx, mut b_tx) = wire::split::<_, ServerMsg, ClientMsg>(client);
        let (mut a_rx, mut a_tx) = wire::split::<_, ClientMsg, ServerMsg>(server);
        b_tx.send(&ClientMsg::Hello(h)).await.unwrap();
        let Some(ClientMsg::Hello(got)) = a_rx.recv().await.unwrap() else {
            panic!("expected a hello");
        };
        let reason = got.check("prod", &who).unwrap_err();
        assert!(reason.contains(expect), "{reason}");
        a_tx.send(&ServerMsg::Refuse { reason }).await.unwrap();
        match b_rx.recv().await.unwrap() {
            Some(ServerMsg::Refuse { reason }) => assert!(reason.contains(expect)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_plain_tcp_client_is_dropped_at_the_handshake_timeout() {
    let dir = cluster();
    let t = Timeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_millis(300),
    };
    let a = TlsContext::load_with(&paths(dir.path(), "a"), ids(&["b"]), t).unwrap();
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    let _silent = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), acc)
        .await
        .expect("accept must give up on its own")
        .unwrap();
    assert!(
        matches!(res, Err(TransportError::HandshakeTimeout { .. })),
        "{res:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn plain_tcp_bytes_are_refused() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let res = acc.await.unwrap();
    assert!(
        matches!(res, Err(TransportError::Handshake { .. })),
        "{res:?}"
    );
}

#[tokio::test]
async fn tls_without_a_client_certificate_is_refused() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_cert_path(dir.path())).unwrap();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(&addr).await.unwrap();
    // TLS 1.3: the client may think it is done; the server is not.
    let client = connector
        .connect(rustls_pki_types::ServerName::try_from("a").unwrap(), tcp)
        .await;
    let res = acc.await.unwrap();
    match res {
        Err(TransportError::Handshake { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
    if let Ok(mut c) = client {
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf).await;
        assert!(!matches!(n, Ok(n) if n > 0), "no data may come back");
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let dir = cluster();
    let other = tempfile::tempdir().unwrap();
    init_certs(other.path(), &ids(&["a", "b"]), false).unwrap();
    let a = ctx(dir.path(), "a", &["b"]);
    let rogue_b = ctx(other.path(), "b", &["a"]);

    // Our server, their client.
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    let _ = rogue_b.connect(&addr, &id("a")).await;
    let res = acc.await.unwrap();
    assert!(
        matches!(res, Err(TransportError::Handshake { .. })),
        "{res:?}"
    );

    // Their server, our client.
    let b = ctx(dir.path(), "b", &["a"]);
    let rogue_a = ctx(other.path(), "a", &["b"]);
    let (l, addr) = listener().await;
    let _acc = accept_one(&rogue_a, l);
    let res = b.connect(&addr, &id("a")).await;
    assert!(
        matches!(res, Err(TransportError::Handshake { .. })),
        "{res:?}"
    );
}

#[tokio::test]
async fn a_valid_certificate_of_a_member_not_allowed_is_refused() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let c = ctx(dir.path(), "c", &["a"]);
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    let _client = c.connect(&addr, &id("a")).await;
    match acc.await.unwrap() {
        Err(TransportError::NotAllowed { reason, .. }) => {
            assert!(reason.contains("\"c\""), "{reason}");
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn the_dialler_checks_the_server_is_the_member_it_expects() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let b = ctx(dir.path(), "b", &["a", "c"]);
    let (l, addr) = listener().await;
    let _acc = accept_one(&a, l);
    // a answers at the address b believes is c's.
    let res = b.connect(&addr, &id("c")).await;
    assert!(
        matches!(res, Err(TransportError::Handshake { .. })),
        "{res:?}"
    );
}

#[test]
fn garbage_and_a_4_gib_header_after_the_handshake_are_errors_without_big_allocations() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let b = ctx(dir.path(), "b", &["a"]);
    let bad_inputs: [&[u8]; 2] = [
        &u32::MAX.to_be_bytes(),
        b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb",
    ];
    for bytes in bad_inputs {
        let mut a_rx = rt.block_on(async {
            let (l, addr) = listener().await;
            let acc = accept_one(&a, l);
            let mut client = b.connect(&addr, &id("a")).await.unwrap();
            let (_, server) = acc.await.unwrap().unwrap();
            client.write_all(bytes).await.unwrap();
            client.flush().await.unwrap();
            // Keep the client open: the reader must not wait for more.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(client);
            });
            wire::FrameReader::<_, ClientMsg>::new(server)
        });
        let (res, allocs) = measure(|| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await })
        });
        let err = res.expect("must not wait for more bytes").unwrap_err();
        assert!(err.is_malformed(), "{err}");
        if bytes.len() == 4 {
            assert!(matches!(err, WireError::Oversized { .. }), "{err}");
        }
        assert!(allocs.largest < 1024 * 1024, "{allocs:?}");
    }
}

#[tokio::test]
async fn a_reload_that_fails_keeps_the_working_certificates() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let b = ctx(dir.path(), "b", &["a"]);
    assert!(!a.reload().unwrap(), "unchanged files: nothing to do");
    assert!(a.is_current().unwrap());

    // A half-written key.
    let key = member_key_path(dir.path(), &id("a"));
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, &good_key[..good_key.len() / 2]).unwrap();
    let err = a.reload().unwrap_err();
    assert!(matches!(err, TransportError::Load { .. }), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY-----\n"), "{err}");

    // A key that does not belong to the certificate.
    std::fs::copy(member_key_path(dir.path(), &id("c")), &key).unwrap();
    let err = a.reload().unwrap_err();
    assert!(matches!(err, TransportError::Config { .. }), "{err}");
    assert_eq!(a.generation(), 0);
    assert!(!a.is_current().unwrap());

    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    b.connect(&addr, &id("a")).await.unwrap();
    assert_eq!(acc.await.unwrap().unwrap().0, id("b"));
}

#[tokio::test]
async fn regenerated_certificates_are_used_by_new_connections_without_a_restart() {
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let _watch = a.watch().unwrap();
    let old_b = ctx(dir.path(), "b", &["a"]);

    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    old_b.connect(&addr, &id("a")).await.unwrap();
    acc.await.unwrap().unwrap();

    // A new CA and new member files, replaced in place by renames.
    init_certs(dir.path(), &ids(&["a", "b"]), true).unwrap();
    // Wait for the watcher to have loaded the final files (a reload may
    // also have caught the burst half-way).
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.generation() == 0 || !a.is_current().unwrap() {
        assert!(
            Instant::now() < deadline,
            "no reload within 15 s of the files changing"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // A member with the new files gets in...
    let new_b = ctx(dir.path(), "b", &["a"]);
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    new_b.connect(&addr, &id("a")).await.unwrap();
    assert_eq!(acc.await.unwrap().unwrap().0, id("b"));

    // ...and one still on the old CA no longer does.
    let (l, addr) = listener().await;
    let acc = accept_one(&a, l);
    let res = old_b.connect(&addr, &id("a")).await;
    assert!(res.is_err(), "old CA must not trust the new certificate");
    assert!(acc.await.unwrap().is_err());
}

/// A `MakeWriter` that collects log output for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn a_refusal_is_logged_with_the_address_and_the_reason() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = cluster();
    let a = ctx(dir.path(), "a", &["b"]);
    let c = ctx(dir.path(), "c", &["a"]);
    let client_addr = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let (l, addr) = listener().await;
            let acc = accept_one(&a, l);
            let client = c.connect(&addr, &id("a")).await.unwrap();
            let local = client.get_ref().0.local_addr().unwrap().to_string();
            assert!(acc.await.unwrap().is_err());
            local
        })
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("replication connection refused"), "{text}");
    assert!(text.contains(&client_addr), "{text}");
    assert!(text.contains("not an allowed member"), "{text}");
}
