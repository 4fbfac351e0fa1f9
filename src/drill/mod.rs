//! `understudy drill`: rehearse failure and measure it. Without a cluster
//! config it builds a throw-away local cluster of real `understudy run`
//! processes, runs a writer through every scenario (kill -9 of the active,
//! the active cut off the network, a planned switchover, kill -9 of a
//! passive) and reports detection and promotion times, how long writes
//! failed, lost and divergent changes and final checksum agreement, with a
//! pass/fail verdict (exit code 0 only on pass). Against a real cluster it
//! runs only the non-destructive drill: a switchover and back, checksums
//! compared before and after.
//!
//! Owns: the drill's scenarios (`local`, `remote`), its background loops
//! (`traffic`), its record (`timeline`), its reports (`report`, `html`) and
//! the relay used to partition local members (`proxy`).
//! Must never: run a destructive scenario against a cluster it did not
//! create; leave a process, a temp folder (unless `--keep`) or a database
//! it created behind.

pub mod html;
pub mod local;
pub mod proxy;
pub mod remote;
pub mod report;
pub mod timeline;
pub mod traffic;

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Cluster(#[from] crate::localcluster::ClusterError),
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    #[error("{what}: {reason}")]
    Database { what: String, reason: String },
    #[error(transparent)]
    Control(#[from] crate::status::cli_control::ControlCliError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Setup(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DrillError {
    let what = what.into();
    move |e| DrillError::Io {
        what,
        reason: e.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// kill -9 of the active's agent; it comes back and rejoins.
    KillActive,
    /// The active is cut off from every other member (its replication
    /// traffic blackholed both ways); healed afterwards.
    PartitionActive,
    /// Planned switchover to the most up-to-date passive: zero loss.
    Switchover,
    /// kill -9 of a passive's agent: the active must stay the active.
    KillPassive,
    /// All of the above, in the order switchover, kill-active,
    /// partition-active, kill-passive.
    All,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillActive => "kill-active",
            Scenario::PartitionActive => "partition-active",
            Scenario::Switchover => "switchover",
            Scenario::KillPassive => "kill-passive",
            Scenario::All => "all",
        }
    }
}

/// The scenarios to run, in order, without repeats (`all` expanded).
pub fn expand(list: &[Scenario]) -> Vec<Scenario> {
    let mut out = Vec::new();
    for s in list {
        let add: &[Scenario] = match s {
            Scenario::All => &[
                Scenario::Switchover,
                Scenario::KillActive,
                Scenario::PartitionActive,
                Scenario::KillPassive,
            ],
            one => std::slice::from_ref(one),
        };
        for a in add {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Args, Debug, Clone)]
pub struct DrillArgs {
    /// Scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Data members of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Add a witness (a voter without a database) to the local cluster.
    #[arg(long)]
    pub witness: bool,
    /// Database backend of the local cluster's members.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// PostgreSQL server URL without a database name
    /// (postgres://USER@HOST:PORT) for `--backend postgres`; the drill
    /// creates one database per member there and drops them at the end.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Write report.json and report.html into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Drill a real cluster (non-destructive: switchover and back) through
    /// this member config: its status address, token and peers.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Drill a real cluster: the status URL of any member (with --cluster it
    /// overrides the member asked).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token for a real cluster's POST endpoints (default: the
    /// --cluster config's status.token).
    #[arg(long, env = "UNDERSTUDY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Ask for destructive scenarios against a real cluster (refused: not
    /// supported).
    #[arg(long)]
    pub allow_destructive: bool,
    /// Keep the local cluster's folder (configs, databases, member logs).
    #[arg(long)]
    pub keep: bool,
    /// Seed of the data written before the scenarios.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Delete one committed write from the final active of the first
    /// scenario, behind the writer's back: shows what a failing verdict
    /// looks like.
    #[arg(long, hide = true)]
    pub inject_lost_change: bool,
}

/// Run the drill; the exit code is 0 only on a `pass` verdict.
pub async fn run(args: DrillArgs) -> Result<ExitCode, DrillError> {
    let report = if args.cluster.is_some() || args.url.is_some() {
        remote::run(&args).await?
    } else {
        local::run(&args).await?
    };
    print!("\n{}", report.summary());
    if let Some(dir) = &args.report {
        write_reports(dir, &report)?;
        println!(
            "report: {} and {}",
            dir.join("report.json").display(),
            dir.join("report.html").display()
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn write_reports(dir: &std::path::Path, report: &report::Report) -> Result<(), DrillError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| DrillError::Io {
        what: "encoding report.json".into(),
        reason: e.to_string(),
    })?;
    let p = dir.join("report.json");
    std::fs::write(&p, json + "\n").map_err(io_err(format!("writing {}", p.display())))?;
    let p = dir.join("report.html");
    std::fs::write(&p, html::render(report)).map_err(io_err(format!("writing {}", p.display())))?;
    Ok(())
}

/// Progress lines on stdout, stamped with the time since the drill began.
pub(crate) fn progress(tl: &timeline::Timeline, line: impl AsRef<str>) {
    let ms = tl.now_ms();
    println!(
        "[{:>4}.{}s] {}",
        ms / 1000,
        (ms % 1000) / 100,
        line.as_ref()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_in_order_without_repeats() {
        assert_eq!(
            expand(&[Scenario::KillPassive, Scenario::All]),
            vec![
                Scenario::KillPassive,
                Scenario::Switchover,
                Scenario::KillActive,
                Scenario::PartitionActive
            ]
        );
    }
}
