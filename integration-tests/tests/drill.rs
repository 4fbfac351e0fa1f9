//! `understudy drill`, the real binary: the local drill passes on SQLite
//! (3 members; 2 members + a witness) and on PostgreSQL, its verdict fails
//! when a committed write is lost (exit code 1 and the reason), its
//! report.html renders in headless Chromium with the drill's events in the
//! timeline, and against a running cluster it does only the switchover and
//! back (destructive drills are refused).

use integration_tests::{pg, tools, understudy_bin};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};

/// Drills measure time: one at a time, so they do not compete for the CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn drill(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let started = Instant::now();
    let mut c = Command::new(understudy_bin());
    c.arg("drill").args(args).env_remove("DATABASE_URL");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run understudy drill");
    eprintln!(
        "understudy drill {} -> {:?} in {:?}\n--- stdout\n{}\n--- stderr (tail)\n{}",
        args.join(" "),
        out.status.code(),
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 30)
    );
    out
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// The fields DESIGN.md fixes, on every scenario, and the pass rules.
fn assert_passed(r: &Value, names: &[&str]) {
    assert_eq!(r["verdict"], "pass", "{:#}", r["reasons"]);
    let sc = r["scenarios"].as_array().expect("scenarios");
    let got: Vec<&str> = sc.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(got, names);
    for s in sc {
        for f in [
            "detection_ms",
            "promotion_ms",
            "unavailable_ms",
            "lost_changes",
            "divergent_changes",
        ] {
            assert!(s[f].is_u64(), "{} has no numeric {f}: {s:#}", s["name"]);
        }
        assert_eq!(s["checksums_match"], true, "{s:#}");
        assert_eq!(s["lost_changes"], 0, "{s:#}");
        assert!(
            s["writes_committed"].as_u64().unwrap() > 20,
            "the writer made progress: {s:#}"
        );
        if s["name"] != "kill-passive" {
            assert_ne!(s["old_active"], s["new_active"], "{s:#}");
        } else {
            assert_eq!(s["old_active"], s["new_active"], "{s:#}");
        }
    }
    let kinds: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "fault",
        "detected",
        "promoted",
        "fence",
        "writes_failing",
        "rejoined",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
}

const ALL: [&str; 4] = [
    "switchover",
    "kill-active",
    "partition-active",
    "kill-passive",
];

#[test]
fn local_drill_passes_on_sqlite_with_three_members_and_its_html_report_renders() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = drill(&["--report", dir.path().to_str().unwrap()], &[]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    for s in ALL {
        assert!(stdout.contains(&format!("{s}: pass")), "{stdout}");
    }
    let r = report(dir.path());
    assert_passed(&r, &ALL);
    assert!(
        took < Duration::from_secs(120),
        "the default drill took {took:?}"
    );
    // The switchover lost nothing and divergent changes only come from
    // the killed or cut-off active's tail.
    assert_eq!(r["scenarios"][0]["divergent_changes"], 0);
    // The cluster's own history lists every transition of the drill, in
    // order, with its reason: the initial active, the switchover, the two
    // failovers (a passive's death changes no role).
    let h = r["history"]["history"]
        .as_array()
        .expect("history in the report");
    let reasons: Vec<&str> = h.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(reasons[0], "initial", "{reasons:?}");
    assert!(reasons[1].starts_with("switchover from "), "{reasons:?}");
    assert!(reasons[2].starts_with("failover from "), "{reasons:?}");
    assert!(reasons[3].starts_with("failover from "), "{reasons:?}");
    let epochs: Vec<u64> = h.iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    // Each entry's "from" is the previous entry's active.
    for w in h.windows(2) {
        let from = w[0]["active"].as_str().unwrap();
        assert!(
            w[1]["reason"]
                .as_str()
                .unwrap()
                .ends_with(&format!("from {from}")),
            "{h:?}"
        );
    }
    render_html(dir.path(), &r);
}

/// report.html in headless Chromium: a screenshot that is clearly more than
/// an empty page, and a DOM whose SVG timeline names every scenario and
/// shows the faults and promotions.
fn render_html(dir: &Path, r: &Value) {
    let chromium = tools::ensure("chromium", "chromium");
    let html = dir.join("report.html");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
    let run = |args: &[&str]| {
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,1400",
            ])
            .args(args)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let shot = dir.join("report.png");
    let url = format!("file://{}", html.display());
    run(&[&format!("--screenshot={}", shot.display()), &url]);
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_shot = dir.join("blank.png");
    run(&[
        &format!("--screenshot={}", blank_shot.display()),
        &format!("file://{}", blank.display()),
    ]);
    let png = std::fs::read(&shot).expect("screenshot written");
    let blank_png = std::fs::read(&blank_shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert_eq!(width, 1280);
    eprintln!(
        "report.png: {} bytes (an empty page: {} bytes)",
        png.len(),
        blank_png.len()
    );
    assert!(
        png.len() > 4 * blank_png.len() && png.len() > 20_000,
        "the screenshot looks empty: {} bytes vs. {} for a blank page",
        png.len(),
        blank_png.len()
    );

    let dom = String::from_utf8_lossy(&run(&["--dump-dom", &url]).stdout).into_owned();
    let start = dom.find("<svg").expect("an SVG in the rendered DOM");
    let end = dom[start..].find("</svg>").expect("the SVG ends") + start;
    let svg = &dom[start..end];
    for s in r["scenarios"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        assert!(
            svg.contains(&format!(">{name} (pass)<")),
            "{name} in the timeline"
        );
    }
    let faults = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "fault")
        .count();
    assert_eq!(
        svg.matches("fault: ").count(),
        faults,
        "one label per fault"
    );
    assert!(svg.contains("fault: kill -9 of"), "the kill is labelled");
    assert!(svg.contains("cut off from every other member"));
    assert!(svg.contains("promoted "), "promotions are labelled");
    for m in ["a", "b", "c"] {
        assert!(svg.contains(&format!(">member {m}<")), "lane of {m}");
    }
    assert!(svg.contains("writes") && svg.contains("lag (max"));
}

#[test]
fn local_drill_passes_with_two_members_and_a_witness() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = drill(
        &[
            "--members",
            "2",
            "--witness",
            "--report",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let r = report(dir.path());
    assert_eq!(r["setup"]["members"], serde_json::json!(["a", "b", "w"]));
    assert_passed(&r, &ALL);
}

#[test]
fn local_drill_passes_on_postgres() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let server = match std::env::var("DATABASE_URL") {
        Ok(u) => u,
        Err(_) => pg::shared_server()
            .expect("a private PostgreSQL server")
            .url_for(""),
    };
    let dir = tempfile::tempdir().unwrap();
    let out = drill(
        &[
            "--backend",
            "postgres",
            "--report",
            dir.path().to_str().unwrap(),
        ],
        &[("DATABASE_URL", &server)],
    );
    assert_eq!(out.status.code(), Some(0));
    let r = report(dir.path());
    assert_eq!(r["setup"]["backend"], "postgres");
    assert_passed(&r, &ALL);

    // Two members and a witness on PostgreSQL too.
    let dir = tempfile::tempdir().unwrap();
    let out = drill(
        &[
            "--backend",
            "postgres",
            "--members",
            "2",
            "--witness",
            "--report",
            dir.path().to_str().unwrap(),
        ],
        &[("DATABASE_URL", &server)],
    );
    assert_eq!(out.status.code(), Some(0));
    let r = report(dir.path());
    assert_eq!(r["setup"]["members"], serde_json::json!(["a", "b", "w"]));
    assert_passed(&r, &ALL);
}

#[test]
fn an_injected_lost_change_fails_the_verdict_with_the_reason() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = drill(
        &[
            "--scenario",
            "switchover",
            "--inject-lost-change",
            "--report",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "a failed drill exits 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    let r = report(dir.path());
    assert_eq!(r["verdict"], "fail");
    let s = &r["scenarios"][0];
    assert_eq!(s["name"], "switchover");
    assert_eq!(s["verdict"], "fail");
    assert_eq!(s["lost_changes"], 1, "{s:#}");
    // Deleted as the application would, so every member agrees: the
    // failure is the loss alone.
    assert_eq!(s["checksums_match"], true);
    let reasons = r["reasons"].to_string();
    assert!(
        reasons.contains("switchover: 1 write(s) the writer saw commit"),
        "{reasons}"
    );
    assert!(reasons.contains("lost: drill-switchover-"), "{reasons}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("Why it failed") && html.contains("injected loss"));
}

#[test]
fn bad_local_setups_are_refused_with_a_reason() {
    let out = drill(&["--members", "2"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --witness"));
    let out = drill(&["--backend", "postgres"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

// The guard only keeps other tests' drills from running meanwhile; no task
// of this runtime ever takes it.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_running_cluster_only_the_switchover_and_back() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.path().join(format!("{m}.db")))),
        })
        .collect();
    let mut cl = LocalCluster::create(
        dir.path(),
        &understudy_bin(),
        &specs,
        ClusterOptions::default(),
    )
    .unwrap();
    cl.init_all().unwrap();
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let mut w = understudy::workload::Workload::new(integration_tests::seed(81));
    let a_url = cl.member("a").database.clone().unwrap();
    let mut app = understudy::workload::AppConn::connect(&a_url)
        .await
        .unwrap();
    app.execute(&w.setup()).await.unwrap();
    integration_tests::write_workload(&a_url, &mut w, 100, 5)
        .await
        .unwrap();
    cl.wait_converged("a", 1, Duration::from_secs(30))
        .await
        .unwrap();
    let cfg = cl.member("a").config.to_str().unwrap().to_string();

    let out = drill(&["--cluster", &cfg, "--allow-destructive"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "destructive drills (kill -9, partition) against a real cluster are not supported yet"
    ));
    let out = drill(&["--cluster", &cfg, "--scenario", "kill-active"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would harm it"));
    let out = drill(
        &["--url", &format!("http://{}", cl.member("a").status)],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --cluster CONFIG"));

    let rep = dir.path().join("report");
    let out = drill(&["--cluster", &cfg, "--report", rep.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0));
    let r = report(&rep);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["setup"]["mode"], "cluster");
    let sc = r["scenarios"].as_array().unwrap();
    assert_eq!(sc.len(), 2);
    assert_eq!(sc[0]["name"], "switchover");
    assert_eq!(sc[1]["name"], "switchover-back");
    assert_eq!(sc[0]["old_active"], "a");
    assert_eq!(sc[1]["new_active"], "a", "and back");
    for s in sc {
        assert_eq!(s["lost_changes"], 0);
        assert_eq!(s["checksums_match"], true);
        assert!(s["promotion_ms"].is_u64());
    }
    // Nothing was killed: every process still runs, a is the active again.
    let st = cl.status("a").await.unwrap();
    assert_eq!(st["role"], "active");
    for m in ["b", "c"] {
        assert_eq!(cl.status(m).await.unwrap()["role"], "passive");
    }
}
