//! Scheduled-job takeover on promotion (policy `any` and `static`) and the
//! role-change hooks, with real processes.

use integration_tests::{control_cli, seed, understudy_bin, wait_until, write_workload};
use std::path::Path;
use std::time::Duration;
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::workload::Workload;

fn create(dir: &Path, extra_top: &str) -> LocalCluster {
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("{m}.db")))),
        })
        .collect();
    let cl = LocalCluster::create(
        dir,
        &understudy_bin(),
        &specs,
        ClusterOptions {
            extra_top: extra_top.to_string(),
            ..ClusterOptions::default()
        },
    )
    .expect("cluster files");
    cl.init_all().expect("init");
    cl
}

fn url(cl: &LocalCluster, id: &str) -> DatabaseUrl {
    cl.member(id).database.clone().unwrap()
}

/// Owner of every job in a member's database.
fn owners(url: &DatabaseUrl) -> Vec<Option<String>> {
    let DatabaseUrl::Sqlite(p) = url else {
        panic!("SQLite only")
    };
    let c = rusqlite::Connection::open(p).unwrap();
    let mut st = c
        .prepare("SELECT owner_member FROM jobs ORDER BY id")
        .unwrap();
    st.query_map([], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Seed jobs owned by a, kill a, wait for the new active and convergence.
async fn fail_over_with_jobs_of_a(cl: &mut LocalCluster) -> String {
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let u = url(cl, "a");
    let mut w = Workload::new(seed(71)).with_owner("a");
    integration_tests::execute_retrying(&u, &w.setup())
        .await
        .unwrap();
    write_workload(&u, &mut w, 200, 5).await.unwrap();
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(owners(&u).iter().all(|o| o.as_deref() == Some("a")));
    cl.kill("a");
    let mut winner = String::new();
    for _ in 0..500 {
        for m in ["b", "c"] {
            if cl.status(m).await.is_ok_and(|s| s["role"] == "active") {
                winner = m.to_string();
            }
        }
        if !winner.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!winner.is_empty(), "no member took over");
    winner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_active_takes_over_the_dead_members_jobs_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), "");
    cl.start_all().unwrap();
    let winner = fail_over_with_jobs_of_a(&mut cl).await;
    // The ownership change is a captured write: every survivor shows it.
    for m in ["b", "c"] {
        let u = url(&cl, m);
        let want = winner.clone();
        wait_until(
            Duration::from_secs(20),
            "jobs owned by the new active",
            || {
                let u = u.clone();
                let want = want.clone();
                async move {
                    let o = owners(&u);
                    !o.is_empty() && o.iter().all(|o| o.as_deref() == Some(want.as_str()))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{m}: {e}\n{}", cl.log_tail(&winner, 20)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_policy_leaves_unlisted_members_jobs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(
        dir.path(),
        "takeover_policy = \"static\"\ntakeover_members = [\"x\"]\n",
    );
    cl.start_all().unwrap();
    let winner = fail_over_with_jobs_of_a(&mut cl).await;
    // Give a takeover every chance to happen, then check it did not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in ["b", "c"] {
        let o = owners(&url(&cl, m));
        assert!(
            o.iter().all(|o| o.as_deref() == Some("a")),
            "{m}: jobs changed owner under a static policy without a"
        );
    }
    assert!(
        cl.log_tail(&winner, 60)
            .contains("takeover policy does not list"),
        "{}",
        cl.log_tail(&winner, 60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_once_per_transition_with_their_environment_and_hang_no_longer_than_their_timeout()
 {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let line = |what: &str| {
        format!(
            "echo \\\"{what} $UNDERSTUDY_MEMBER $UNDERSTUDY_ROLE $UNDERSTUDY_EPOCH $UNDERSTUDY_ACTIVE\\\" >> {}",
            log.display()
        )
    };
    let mut cl = create(dir.path(), "");
    // Hooks go in each member's [hooks] table (appended at the end).
    for m in ["a", "b", "c"] {
        let p = cl.member(m).config.clone();
        let mut text = std::fs::read_to_string(&p).unwrap();
        let fence = if m == "a" {
            // a's on_fence hangs: it is killed at the 300 ms timeout.
            format!(
                "{}; sleep 30; echo late >> {}",
                line("fence"),
                log.display()
            )
        } else {
            line("fence")
        };
        text.push_str(&format!(
            "\n[hooks]\non_promote = \"{}\"\non_demote = \"{}\"\non_fence = \"{}\"\ntimeout_ms = 300\n",
            line("promote"),
            line("demote"),
            fence
        ));
        std::fs::write(&p, text).unwrap();
    }
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    cl.wait_converged("a", 0, Duration::from_secs(30))
        .await
        .unwrap();
    // Start-up: a fenced itself (hook hangs, killed), then was promoted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("fence a fenced 1 a"), "{text}");
    assert!(text.contains("promote a active 1 a"), "{text}");
    assert!(
        !text.contains("late"),
        "the hanging hook ran past its timeout: {text}"
    );
    let st = cl.status("a").await.unwrap();
    let hooks = st["hooks"].to_string();
    assert!(hooks.contains("\"timed_out\":true"), "{st}");

    // A switchover a -> b: b's on_promote once, a's on_demote once.
    std::fs::write(&log, "").unwrap();
    control_cli(&cl, "a", &["switchover", "--to", "b"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("promote b active 2 b"), 1, "{text}");
    assert_eq!(count("promote"), 1, "{text}");
    assert_eq!(count("demote a "), 1, "{text}");
    assert_eq!(count("demote"), 1, "{text}");
    assert!(!text.contains("late"), "{text}");
}
