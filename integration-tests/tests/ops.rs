//! The operator surface, black-box: the status endpoint's answers and its
//! behaviour under bad and slow requests, Prometheus metrics checked by
//! promtool, routing to the active through a real HAProxy, the
//! `understudy status` command, and graceful stops.

use integration_tests::tools;
use integration_tests::{change_log, checksums, seed, understudy_bin, wait_until, write_workload};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::model::Secret;
use understudy::status::client::{self, HttpResponse};
use understudy::workload::{AppConn, AppOp, Workload};

const TOKEN: &str = "ops-test-token-0123456789";
const KEY_CONTENT: &[u8] = b"ops-test-secret-key-content";

/// A 3-member SQLite cluster with static roles (a active), started.
/// `status_tls` turns on `[status] tls = true` for every member.
fn start_cluster(dir: &Path, status_tls: bool) -> LocalCluster {
    start_cluster_with(dir, status_tls, false)
}

fn start_cluster_with(dir: &Path, status_tls: bool, auto_failover: bool) -> LocalCluster {
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("{m}.db")))),
        })
        .collect();
    let mut cl = LocalCluster::create(
        dir,
        &understudy_bin(),
        &specs,
        ClusterOptions {
            auto_failover,
            token: TOKEN.into(),
            ..ClusterOptions::default()
        },
    )
    .expect("cluster files");
    if status_tls {
        for m in &cl.members {
            let text = std::fs::read_to_string(&m.config).unwrap();
            let from = format!("token = {TOKEN:?}\n");
            assert!(text.contains(&from));
            let text = text.replace(&from, &format!("{from}tls = true\n"));
            std::fs::write(&m.config, text).unwrap();
        }
    }
    cl.init_all().expect("init");
    cl.start_all().expect("start");
    cl
}

fn url(cl: &LocalCluster, id: &str) -> DatabaseUrl {
    cl.member(id).database.clone().unwrap()
}

/// Seed the active with the standard workload and one key of known content.
async fn seed_data(cl: &LocalCluster, ops: u64) {
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let a = url(cl, "a");
    let mut w = Workload::new(seed(7));
    integration_tests::execute_retrying(&a, &w.setup())
        .await
        .unwrap();
    integration_tests::execute_retrying(
        &a,
        &[AppOp::UpsertKey {
            path: "keys/ops/secret".into(),
            kind: "password",
            content: Secret(KEY_CONTENT.to_vec()),
        }],
    )
    .await
    .unwrap();
    write_workload(&a, &mut w, ops, 5).await.unwrap();
}

async fn converge(cl: &LocalCluster) {
    if let Err(e) = cl.wait_converged("a", 1, Duration::from_secs(60)).await {
        dump(cl);
        panic!("{e}");
    }
}

fn dump(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 30));
    }
}

async fn req(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    client::request(addr, method, path, token, body, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// Send raw bytes, read whatever comes back until the server closes (or 10 s).
async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn code_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn run_cli(args: &[&str]) -> Output {
    Command::new(understudy_bin())
        .args(args)
        .output()
        .expect("run understudy")
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_per_contract_and_refuse_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let cl = start_cluster(dir.path(), false);
    seed_data(&cl, 200).await;
    converge(&cl).await;
    let a = cl.member("a").status.clone();
    let b = cl.member("b").status.clone();

    // The views.
    for addr in [&a, &b] {
        assert_eq!(req(addr, "GET", "/health", None, None).await.code, 200);
    }
    assert_eq!(req(&a, "GET", "/active", None, None).await.code, 200);
    assert_eq!(req(&b, "GET", "/active", None, None).await.code, 503);
    assert_eq!(req(&b, "GET", "/passive", None, None).await.code, 200);
    assert_eq!(
        req(&b, "GET", "/passive?max_lag_ms=60000", None, None)
            .await
            .code,
        200
    );
    assert_eq!(req(&a, "GET", "/passive", None, None).await.code, 503);
    let r = req(&b, "GET", "/passive?max_lag_ms=soon", None, None).await;
    assert_eq!(r.code, 400, "{}", r.body);

    let st = json(&req(&a, "GET", "/status", None, None).await);
    for k in [
        "cluster",
        "member",
        "role",
        "epoch",
        "active",
        "position",
        "lag",
        "last_heartbeat_ms",
        "peers",
        "divergent_changes",
        "version",
    ] {
        assert!(st.get(k).is_some(), "/status lacks {k}: {st}");
    }
    assert_eq!(st["role"], "active");
    assert_eq!(st["active"], "a");
    let peers = st["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        for k in [
            "member",
            "role",
            "connected",
            "position",
            "lag_changes",
            "lag_ms",
            "status",
        ] {
            assert!(p.get(k).is_some(), "peer entry lacks {k}: {p}");
        }
    }
    let hist = json(&req(&b, "GET", "/history", None, None).await);
    assert_eq!(hist["member"], "b");
    assert_eq!(hist["history"][0]["epoch"], 1);
    assert_eq!(hist["history"][0]["active"], "a");
    assert_eq!(hist["history"][0]["reason"], "initial");

    // Unknown path, wrong method.
    let r = req(&a, "GET", "/nope", None, None).await;
    assert_eq!(r.code, 404);
    assert!(json(&r)["error"].is_string());
    assert_eq!(req(&a, "POST", "/status", None, None).await.code, 405);
    assert_eq!(req(&a, "GET", "/pause", None, None).await.code, 405);
    assert_eq!(req(&a, "DELETE", "/metrics", None, None).await.code, 405);

    // The token: missing or wrong.
    for action in ["/switchover", "/promote", "/pause", "/resume"] {
        let r = req(&a, "POST", action, None, None).await;
        assert_eq!(r.code, 401, "{action}: {}", r.body);
        let r = req(&a, "POST", action, Some("wrong-token-xxxxxxxx"), None).await;
        assert_eq!(r.code, 401, "{action}: {}", r.body);
    }
    // With the token the controller answers: pause is cluster-wide (b
    // learns it from a), resume lifts it everywhere.
    let r = req(&a, "POST", "/pause", Some(TOKEN), None).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(json(&r)["result"]["paused"], true, "{}", r.body);
    for addr in [&a, &b] {
        let addr = addr.clone();
        wait_until(
            Duration::from_secs(10),
            "every member to show the pause",
            || {
                let addr = addr.clone();
                async move {
                    let st = json(&req(&addr, "GET", "/status", None, None).await);
                    st["paused"] == true
                }
            },
        )
        .await
        .unwrap();
    }
    let st = json(&req(&b, "GET", "/status", None, None).await);
    let reasons = st["failover"]["not_promoting"].to_string();
    assert!(reasons.contains("paused"), "{st}");
    let r = req(&b, "POST", "/resume", Some(TOKEN), None).await;
    assert_eq!(r.code, 200, "{}", r.body);
    for addr in [&a, &b] {
        let addr = addr.clone();
        wait_until(
            Duration::from_secs(10),
            "every member to show the resume",
            || {
                let addr = addr.clone();
                async move {
                    let st = json(&req(&addr, "GET", "/status", None, None).await);
                    st["paused"] == false
                }
            },
        )
        .await
        .unwrap();
    }
    // A promotion without force is a switchover; an unknown target is a
    // bad request; a switchover asked of a passive is refused.
    let r = req(&b, "POST", "/promote", Some(TOKEN), None).await;
    assert_eq!(r.code, 400, "{}", r.body);
    let r = req(
        &a,
        "POST",
        "/switchover",
        Some(TOKEN),
        Some(r#"{"to": "zed"}"#),
    )
    .await;
    assert_eq!(r.code, 400, "{}", r.body);
    let r = req(
        &b,
        "POST",
        "/switchover",
        Some(TOKEN),
        Some(r#"{"to": "b"}"#),
    )
    .await;
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("only the active"),
        "{}",
        r.body
    );
    let malformed = format!(
        "POST /pause HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(code_of(&raw(&a, malformed.as_bytes()).await), 401);
    let r = req(&a, "POST", "/switchover", Some(TOKEN), Some("{not json")).await;
    assert_eq!(r.code, 400, "{}", r.body);
    let r = req(&a, "POST", "/switchover", Some(TOKEN), Some("{}")).await;
    assert_eq!(r.code, 400, "{}", r.body);

    // Oversized bodies: declared, and chunked without a length.
    let big = "x".repeat(100 * 1024);
    let r = req(&a, "POST", "/switchover", Some(TOKEN), Some(&big)).await;
    assert_eq!(r.code, 413, "{}", r.body);
    let r = req(&a, "POST", "/pause", None, Some(&big)).await;
    assert_eq!(
        r.code, 413,
        "a body too large is refused before anything else"
    );
    let mut chunked = format!(
        "POST /switchover HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b'y'; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(code_of(&raw(&a, &chunked).await), 413);

    // Garbage is refused without harm.
    let g = raw(&a, b"\x00\x01\x02 not http at all\r\n\r\n").await;
    assert!(g.is_empty() || code_of(&g) == 400, "{g}");
    assert_eq!(req(&a, "GET", "/health", None, None).await.code, 200);

    // Neither the token nor key content shows in any answer or log line.
    let mut seen = String::new();
    for addr in [&a, &b] {
        for path in ["/status", "/metrics", "/history", "/health", "/active"] {
            seen.push_str(&req(addr, "GET", path, None, None).await.body);
        }
    }
    let key = String::from_utf8_lossy(KEY_CONTENT).into_owned();
    assert!(!seen.contains(TOKEN), "the token leaked into a response");
    assert!(!seen.contains(&key), "key content leaked into a response");
    for m in &cl.members {
        let log = std::fs::read_to_string(&m.log).unwrap();
        assert!(!log.contains(TOKEN), "the token is in {}'s log", m.id);
        assert!(!log.contains(&key), "key content is in {}'s log", m.id);
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", m.id);
    }
    let unauthorized = req(&a, "GET", "/metrics", None, None).await.body;
    let n = unauthorized
        .lines()
        .find_map(|l| l.strip_prefix("understudy_unauthorized_requests_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(n >= 9.0, "unauthorised requests counted: {n}");
}

/// A client that sends half a request and then nothing holds only its own
/// connection: everyone else is served at once, and the server closes the
/// silent one after its header time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let cl = start_cluster(dir.path(), false);
    let a = cl.member("a").status.clone();
    wait_until(Duration::from_secs(30), "a's status endpoint", || async {
        client::get_json(&a, "/status").await.is_ok()
    })
    .await
    .unwrap();

    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&a).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut body_slow = TcpStream::connect(&a).await.unwrap();
    body_slow
        .write_all(
            format!("POST /pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .unwrap();
    let held_since = Instant::now();

    // Sequential and concurrent requests all succeed while those are held.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(req(&a, "GET", "/status", None, None).await.code, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let many: Vec<_> = (0..20)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { req(&a, "GET", "/health", None, None).await.code })
        })
        .collect();
    for h in many {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert!(
        held_since.elapsed() < Duration::from_millis(4500),
        "the other requests were served while the slow ones were open"
    );
    // ... and the slow ones are indeed still open, waiting.
    let mut probe = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow[0].read(&mut probe))
            .await
            .is_err(),
        "the first slow connection was already answered or closed"
    );

    // The silent connections are closed by the server (header time limit
    // 5 s; generous margin).
    for mut s in slow {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "a silent connection stayed open");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || code_of(&text) == 408,
            "unexpected answer to half a request: {text}"
        );
    }
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), body_slow.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a connection with a stalled body stayed open");
    assert_eq!(
        code_of(&String::from_utf8_lossy(&buf)),
        408,
        "a stalled body gets 408"
    );
    assert_eq!(req(&a, "GET", "/health", None, None).await.code, 200);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_of_active_and_passive() {
    let promtool = tools::ensure("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let cl = start_cluster(dir.path(), false);
    seed_data(&cl, 300).await;
    converge(&cl).await;
    // Let a few heartbeats pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in ["a", "b"] {
        let r = req(&cl.member(id).status, "GET", "/metrics", None, None).await;
        assert_eq!(r.code, 200);
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(r.body.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics refused {id}'s metrics:\n{}{}\n---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            r.body
        );
        let t = &r.body;
        if id == "a" {
            assert_eq!(metric(t, "understudy_role{role=\"active\"}"), 1.0);
            assert!(metric(t, "understudy_changes_shipped_total") >= 600.0);
            assert!(metric(t, "understudy_shipped_bytes_total") > 0.0);
            assert!(metric(t, "understudy_heartbeats_received_total") > 0.0);
            assert_eq!(metric(t, "understudy_peer_lag_changes{peer=\"b\"}"), 0.0);
        } else {
            assert_eq!(metric(t, "understudy_role{role=\"passive\"}"), 1.0);
            assert!(metric(t, "understudy_changes_applied_total") >= 300.0);
            assert!(metric(t, "understudy_apply_batch_seconds_count") > 0.0);
            assert!(metric(t, "understudy_heartbeats_sent_total") > 0.0);
        }
        assert_eq!(metric(t, "understudy_epoch"), 1.0);
        assert_eq!(metric(t, "understudy_database_up"), 1.0);
        assert_eq!(metric(t, "understudy_elections_total"), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_to_the_active_only() {
    let haproxy = tools::ensure("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let mut cl = start_cluster_with(dir.path(), false, true);
    converge_started(&cl).await;
    let front = free_addr();
    let sock = dir.path().join("haproxy.sock");
    let mut cfg = format!(
        "global\n    maxconn 256\n    stats socket {}\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n    timeout check 1s\n    retries 1\n    option redispatch\n\n\
         frontend app\n    bind {front}\n    default_backend active\n\n\
         backend active\n    option httpchk GET /active\n    http-check expect status 200\n    default-server inter 200ms fall 1 rise 1\n",
        sock.display()
    );
    for m in &cl.members {
        cfg.push_str(&format!("    server {} {} check\n", m.id, m.status));
    }
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The shipped example is valid too.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/haproxy.cfg");
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "config/haproxy.cfg: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _proxy = Guard(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy"),
    );

    let through = |front: String| async move {
        client::request(&front, "GET", "/status", None, None, Duration::from_secs(3)).await
    };
    // HAProxy takes servers as up until their first check has run: wait
    // until the checks have marked the passives down.
    wait_until(
        Duration::from_secs(20),
        "HAProxy's checks: a up, b and c down",
        || async {
            let st = haproxy_states(&sock).await;
            st.get("a").map(String::as_str) == Some("UP")
                && st.get("b").map(String::as_str) == Some("DOWN")
                && st.get("c").map(String::as_str) == Some("DOWN")
        },
    )
    .await
    .unwrap();
    for _ in 0..30 {
        let r = through(front.clone()).await.unwrap();
        assert_eq!(r.code, 200);
        assert_eq!(json(&r)["member"], "a", "HAProxy routed to a passive");
    }

    // kill -9 the active: within failover_timeout + the check interval
    // + 1 s, requests reach the new active, and never a passive.
    let opts = cl.options.clone();
    let budget = Duration::from_millis(opts.failover_ms + 200 + 1000);
    let killed = Instant::now();
    tokio::task::block_in_place(|| cl.kill("a"));
    let new_active = loop {
        // A request caught on the dead member is abandoned after a short
        // wait, as a client would retry it.
        let r = client::request(
            &front,
            "GET",
            "/status",
            None,
            None,
            Duration::from_millis(500),
        )
        .await;
        if let Ok(r) = r
            && r.code == 200
        {
            let st = json(&r);
            assert_eq!(st["role"], "active", "routed to a non-active: {st}");
            if st["member"] != "a" {
                break st["member"].as_str().unwrap().to_string();
            }
        }
        if killed.elapsed() > budget + Duration::from_secs(5) {
            dump(&cl);
            panic!("HAProxy never reached a new active");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    if took > budget {
        dump(&cl);
    }
    assert!(
        took <= budget,
        "requests reached the new active {new_active} after {took:?} (budget {budget:?})"
    );
    eprintln!("HAProxy routed to the new active {new_active} {took:?} after the kill");

    // The old active comes back as a passive; HAProxy keeps routing to the
    // new active only.
    cl.start("a").unwrap();
    wait_until(
        Duration::from_secs(20),
        "a to rejoin as a passive",
        || async { cl.status("a").await.is_ok_and(|st| st["role"] == "passive") },
    )
    .await
    .unwrap();
    for _ in 0..20 {
        let r = through(front.clone()).await.unwrap();
        assert_eq!(r.code, 200);
        assert_eq!(json(&r)["member"], new_active.as_str());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Server name -> status ("UP", "DOWN", ...) of the `active` backend, from
/// HAProxy's stats socket (`show stat`, CSV).
async fn haproxy_states(sock: &Path) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let Ok(mut s) = tokio::net::UnixStream::connect(sock).await else {
        return out;
    };
    if s.write_all(b"show stat\n").await.is_err() {
        return out;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    // Columns: pxname, svname, ..., status is the 18th (index 17).
    for line in text.lines().filter(|l| l.starts_with("active,")) {
        let cols: Vec<&str> = line.split(',').collect();
        if let (Some(sv), Some(st)) = (cols.get(1), cols.get(17)) {
            out.insert(sv.to_string(), st.to_string());
        }
    }
    out
}

async fn converge_started(cl: &LocalCluster) {
    let deadline = Duration::from_secs(30);
    for m in &cl.members {
        let addr = m.status.clone();
        wait_until(deadline, "the status endpoints", || async {
            client::get_json(&addr, "/health").await.is_ok()
        })
        .await
        .unwrap();
    }
}

fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure: {o:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(o.stdout.is_empty(), "nothing on stdout: {o:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_shows_the_cluster_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = start_cluster(dir.path(), false);
    seed_data(&cl, 50).await;
    converge(&cl).await;
    let b_url = format!("http://{}", cl.member("b").status);

    // The table, from a passive's endpoint.
    let o = run_cli(&["status", "--url", &b_url]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{out}");
    assert!(o.status.success(), "{o:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("active a"), "{out}");
    assert!(lines[1].starts_with("MEMBER"), "{out}");
    assert!(
        lines[2].starts_with("a ") && lines[2].contains("active"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("b*") && lines[3].contains("passive"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("c ") && lines[4].contains("passive"),
        "{out}"
    );

    // JSON, with the URL from a config file.
    let cfg = cl.member("c").config.to_str().unwrap().to_string();
    let o = run_cli(&["status", "--config", &cfg, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["asked"], "c");
    assert_eq!(doc["active"], "a");
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let head = members[0]["position"]["seq"].as_u64().unwrap();
    for m in members {
        assert_eq!(m["reachable"], true);
        assert_eq!(m["epoch"], 1);
        assert_eq!(m["position"]["seq"].as_u64().unwrap(), head);
    }

    // History.
    let o = run_cli(&["history", "--url", &b_url, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["history"][0]["active"], "a");

    // A peer down: still a table, the peer marked unreachable.
    tokio::task::block_in_place(|| cl.kill("c"));
    let o = run_cli(&["status", "--url", &b_url]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("c ") && l.contains("unreachable")),
        "{out}"
    );

    // The member asked is down, or the URL is wrong: one line, non-zero.
    let c_url = format!("http://{}", cl.member("c").status);
    let err = one_line_error(&run_cli(&["status", "--url", &c_url]));
    assert!(err.contains(&cl.member("c").status), "{err}");
    let err = one_line_error(&run_cli(&["status", "--url", &free_addr(), "--json"]));
    assert!(err.contains("cannot"), "{err}");
    let err = one_line_error(&run_cli(&["status", "--url", "ftp://127.0.0.1:1"]));
    assert!(err.contains("http"), "{err}");
    let err = one_line_error(&run_cli(&["status", "--url", "127.0.0.1"]));
    assert!(err.contains("port"), "{err}");
    // Something that answers, but not a status endpoint.
    let not_us = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_us_addr = not_us.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = not_us.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .await;
        }
    });
    let out = tokio::task::spawn_blocking(move || run_cli(&["status", "--url", &not_us_addr]))
        .await
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("malformed"), "{err}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_tls_with_the_member_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cl = start_cluster(dir.path(), true);
    let cfg = cl.member("a").config.to_str().unwrap().to_string();
    let a = cl.member("a").status.clone();
    let ok = || {
        let o = run_cli(&["status", "--config", &cfg, "--json"]);
        o.status.success().then_some(o)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        if let Some(o) = tokio::task::block_in_place(ok) {
            break o;
        }
        assert!(Instant::now() < deadline, "status over TLS never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(
        members
            .iter()
            .all(|m| m["status_url"].as_str().unwrap().starts_with("https://")),
        "{doc}"
    );
    // An explicit https URL with the CA.
    let ca = dir.path().join("certs/ca.pem");
    let o = run_cli(&[
        "status",
        "--url",
        &format!("https://{a}"),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    // Without the CA: a clear refusal; plain HTTP gets no answer.
    let err = one_line_error(&run_cli(&["status", "--url", &format!("https://{a}")]));
    assert!(err.contains("CA"), "{err}");
    let r = client::request(&a, "GET", "/health", None, None, Duration::from_secs(8)).await;
    assert!(
        !matches!(&r, Ok(r) if r.code == 200),
        "plain HTTP was served: {r:?}"
    );
    // A CA that did not sign the member's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    understudy::certs::init_certs(other.path(), &[understudy::model::MemberId::new("x")], true)
        .unwrap();
    let err = one_line_error(&run_cli(&[
        "status",
        "--url",
        &format!("https://{a}"),
        "--ca",
        other.path().join("ca.pem").to_str().unwrap(),
    ]));
    assert!(err.contains("TLS"), "{err}");
}

/// SIGTERM: exit code 0 for the active and a passive, the passive's data
/// consistent, the stopped active refuses writes at once (its lease ended),
/// and both come back in their roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_fences_the_active_and_keeps_data_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = start_cluster(dir.path(), false);
    seed_data(&cl, 200).await;
    converge(&cl).await;
    let a_url = url(&cl, "a");
    let b_url = url(&cl, "b");

    // Stop b while the active is writing: b finishes or rolls back the batch
    // in hand, and what it committed is whole.
    let writer = {
        let a_url = a_url.clone();
        tokio::spawn(async move {
            let mut w = Workload::new(seed(11));
            write_workload(&a_url, &mut w, 3000, 5).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = tokio::task::block_in_place(|| cl.stop("b", Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{}", cl.log_tail("b", 20));
    let b_log = change_log(&b_url).await.unwrap();
    let b_state = integration_tests::open_store(&b_url).await.unwrap();
    let st = understudy::store::MemberStore::state(&b_state)
        .await
        .unwrap();
    assert_eq!(
        Some(st.position),
        b_log.last().map(|c| c.pos),
        "the applied position is the last change b holds"
    );
    drop(b_state);
    writer.await.unwrap().unwrap();
    cl.start("b").unwrap();
    converge(&cl).await;

    // Stop the active: it hands over to an up-to-date passive (automatic
    // failover is off in this cluster, so only the handover can make a new
    // active), exits 0, and its database refuses writes from then on.
    let code = tokio::task::block_in_place(|| cl.stop("a", Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{}", cl.log_tail("a", 20));
    let mut app = AppConn::connect(&a_url).await.unwrap();
    let err = app
        .execute(&[AppOp::UpsertProject {
            name: "after-stop".into(),
            description: "must be refused".into(),
            config: "{}".into(),
        }])
        .await
        .expect_err("a write to a stopped active must be refused");
    let msg = err.0;
    // Fenced, or already a passive of the successor it waited for.
    assert!(
        msg.contains("fenced") || msg.contains("lease") || msg.contains("is passive"),
        "{msg}"
    );
    assert!(
        cl.log_tail("a", 40).contains("handed over"),
        "{}",
        cl.log_tail("a", 40)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_active = 'found: loop {
        for m in ["b", "c"] {
            if let Ok(st) = cl.status(m).await
                && st["role"] == "active"
            {
                break 'found m.to_string();
            }
        }
        if Instant::now() > deadline {
            dump(&cl);
            panic!("neither b nor c became the active after a's handover");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n_url = url(&cl, &new_active);
    let mut app = AppConn::connect(&n_url).await.unwrap();
    app.execute(&[AppOp::UpsertProject {
        name: "after-handover".into(),
        description: "accepted by the new active".into(),
        config: "{}".into(),
    }])
    .await
    .unwrap();

    // The old active comes back as a passive and catches up exactly.
    cl.start("a").unwrap();
    if let Err(e) = cl
        .wait_converged(&new_active, 1, Duration::from_secs(60))
        .await
    {
        dump(&cl);
        panic!("{e}");
    }
    assert_eq!(cl.status("a").await.unwrap()["role"], "passive");
    for m in ["a", "b", "c"] {
        let u = url(&cl, m);
        assert_eq!(
            checksums(&u).await.unwrap(),
            checksums(&n_url).await.unwrap(),
            "{m}"
        );
        assert!(
            change_log(&u).await.unwrap() == change_log(&n_url).await.unwrap(),
            "{m}"
        );
    }
}
