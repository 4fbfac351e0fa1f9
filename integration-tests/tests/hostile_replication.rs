//! Bad input on the replication port of a running active: each attempt is
//! refused with a clear log line, while the agent keeps serving its real
//! peers and its memory stays flat.

use integration_tests::{change_log, understudy_bin, wait_until, write_workload};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use understudy::config::{DatabaseUrl, TlsPaths};
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec, proc_usage};
use understudy::model::{Epoch, MemberId, Position, Role};
use understudy::transport::TlsContext;
use understudy::wire::{ClientMsg, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, ServerMsg};
use understudy::workload::Workload;

fn paths(dir: &std::path::Path, m: &str) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{m}.pem")),
        key: dir.join(format!("{m}.key")),
    }
}

/// A TLS client that presents no certificate at all.
async fn tls_without_client_cert(addr: &str, ca: &std::path::Path) -> std::io::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let mut s = conn
        .connect(ServerName::try_from("a").unwrap(), tcp)
        .await?;
    // TLS 1.3: the server's refusal of the missing certificate arrives on
    // the first read.
    s.write_all(b"\0\0\0\x05hello").await?;
    let mut buf = [0u8; 16];
    match s.read(&mut buf).await {
        Ok(0) => Err(std::io::Error::other("closed")),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

fn hello(cluster: &str, member: &str, protocol: u16) -> ClientMsg {
    ClientMsg::Hello(Hello {
        protocol,
        cluster: cluster.into(),
        member: MemberId::new(member),
        role: Role::Passive,
        epoch: Epoch(1),
        position: Position::ZERO,
        want_snapshot: false,
        schema: None,
    })
}

/// Connect with `ctx` as a member, send a hello, return the answer.
async fn hello_answer(ctx: &TlsContext, addr: &str, msg: ClientMsg) -> Option<ServerMsg> {
    let s = ctx.connect(addr, &MemberId::new("a")).await.ok()?;
    let (r, w) = tokio::io::split(s);
    let mut reader: FrameReader<_, ServerMsg> = FrameReader::new(r);
    let mut writer: FrameWriter<_, ClientMsg> = FrameWriter::new(w);
    writer.send(&msg).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), reader.recv())
        .await
        .ok()?
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_port_refuses_bad_input_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(d.join(format!("{m}.db")))),
        })
        .collect();
    let mut cl = LocalCluster::create(
        d,
        &understudy_bin(),
        &specs,
        ClusterOptions {
            auto_failover: false,
            ..Default::default()
        },
    )
    .unwrap();
    cl.init_all().unwrap();
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let addr = cl.member("a").replication.clone();
    let url = cl.member("a").database.clone().unwrap();
    let mut w = Workload::new(17);
    let mut app = understudy::workload::AppConn::connect(&url).await.unwrap();
    app.execute(&w.setup()).await.unwrap();
    write_workload(&url, &mut w, 500, 5).await.unwrap();
    cl.wait_converged("a", 500, Duration::from_secs(60))
        .await
        .unwrap();
    let pid = cl.member("a").pid().unwrap();
    let (rss_before, _) = proc_usage(pid).unwrap();

    let certs = d.join("certs");
    // A member certificate from the cluster CA whose name is not a configured member.
    understudy::certs::init_certs(&certs, &[MemberId::new("zed")], false).unwrap();
    // A complete set from another CA, with a real member's name.
    let other = d.join("other-ca");
    understudy::certs::init_certs(&other, &[MemberId::new("b")], false).unwrap();

    for round in 0..3 {
        // 1. A plain TCP client sending garbage.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut buf = vec![0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
        // 2. TLS without a client certificate.
        assert!(
            tls_without_client_cert(&addr, &certs.join("ca.pem"))
                .await
                .is_err(),
            "no client cert accepted"
        );
        // 3. A certificate from another CA.
        let foreign = TlsContext::load(&paths(&other, "b"), vec![MemberId::new("a")]).unwrap();
        assert!(
            hello_answer(&foreign, &addr, hello("local", "b", PROTOCOL_VERSION))
                .await
                .is_none(),
            "foreign CA accepted"
        );
        // 4. A valid certificate with an unknown member name.
        let zed = TlsContext::load(&paths(&certs, "zed"), vec![MemberId::new("a")]).unwrap();
        assert!(
            hello_answer(&zed, &addr, hello("local", "zed", PROTOCOL_VERSION))
                .await
                .is_none(),
            "unknown member accepted"
        );
        // 5./6. A real member's certificate with a wrong cluster, a wrong protocol version.
        let c = TlsContext::load(&paths(&certs, "c"), vec![MemberId::new("a")]).unwrap();
        match hello_answer(&c, &addr, hello("other-cluster", "c", PROTOCOL_VERSION)).await {
            Some(ServerMsg::Refuse { reason }) => assert!(reason.contains("cluster"), "{reason}"),
            other => panic!("wrong cluster: {other:?}"),
        }
        match hello_answer(&c, &addr, hello("local", "c", PROTOCOL_VERSION + 7)).await {
            Some(ServerMsg::Refuse { reason }) => assert!(reason.contains("protocol"), "{reason}"),
            other => panic!("wrong protocol: {other:?}"),
        }
        // 7. Garbage after the TLS handshake; 8. a header announcing 4 GiB.
        for bytes in [
            b"\x13\x37garbage-garbage-garbage".to_vec(),
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ] {
            let mut s = c.connect(&addr, &MemberId::new("a")).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let mut buf = vec![0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "round {round}: the connection stayed open after bad bytes: {r:?}"
            );
        }
    }

    // Still serving its real peers.
    write_workload(&url, &mut w, 500, 5).await.unwrap();
    cl.wait_converged("a", 1000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        change_log(&url).await.unwrap(),
        change_log(cl.member("b").database.as_ref().unwrap())
            .await
            .unwrap()
    );
    let (rss_after, _) = proc_usage(pid).unwrap();
    assert!(
        rss_after < rss_before + 20_000,
        "memory grew from {rss_before} kB to {rss_after} kB"
    );

    // Each refusal has a clear log line.
    wait_until(Duration::from_secs(5), "refusals in the log", || async {
        let log = std::fs::read_to_string(&cl.member("a").log).unwrap_or_default();
        ["cluster", "protocol", "zed"]
            .iter()
            .all(|w| log.contains(w))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cl.log_tail("a", 60)));
    let log = std::fs::read_to_string(&cl.member("a").log).unwrap();
    let warn_lines = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warn_lines >= 3 * 8,
        "expected a warning per refused attempt, got {warn_lines}:\n{log}"
    );
    cl.kill("a");
}
