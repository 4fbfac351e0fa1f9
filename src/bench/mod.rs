//! `understudy bench`: figures, not tests. Capture overhead (writer with and
//! without the capture triggers), replication throughput and lag (a real
//! active and passive over mutual TLS on loopback), snapshot rates, and the
//! same replication workload on PostgreSQL's built-in logical replication
//! for comparison.
//!
//! Owns: the benchmark drivers and their printed reports.
//! Must never: run as part of the test suite, or touch a database it did not
//! create itself.

pub mod capture;
pub mod failover;
pub mod logical;
pub mod pin;
pub mod replication;
pub mod scheduler;
pub mod snapshot;

use anyhow::Result;
use clap::{Args, ValueEnum};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Writer rate with capture on vs. off (the capture overhead).
    Capture,
    /// Writer rate vs. end-to-end rate on a passive, and lag at a fixed rate.
    Replication,
    /// Snapshot read, copy and join rates (rows/s, MB/s); `--ops` is the
    /// number of jobs seeded.
    Snapshot,
    /// PostgreSQL's built-in logical replication (publication/subscription)
    /// driven by the same writer as `replication`, for comparison. Needs
    /// --database-url (publisher, wal_level=logical) and
    /// --passive-database-url (subscriber).
    PgLogical,
    /// kill -9 the active of a local 3-member SQLite cluster `--kills`
    /// times with the default timings; detection, promotion and time until
    /// writes succeed again (median, p99, max).
    Failover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "replication")]
    pub mode: Mode,
    /// Backend of the active (and, unless --passive-backend, the passive).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    #[arg(long, value_enum)]
    pub passive_backend: Option<Backend>,
    /// A PostgreSQL server URL (without database name) for postgres backends,
    /// e.g. postgres://postgres@127.0.0.1:5432. The bench creates and drops
    /// its own databases there.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// A second PostgreSQL server URL for the passive's (subscriber's)
    /// databases; without it the passive's databases go to --database-url.
    #[arg(long, env = "DATABASE_URL_2")]
    pub passive_database_url: Option<String>,
    /// Mutations for the throughput runs (jobs seeded for --mode snapshot).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Operations per application transaction.
    #[arg(long, default_value_t = 1)]
    pub tx_size: usize,
    /// Fixed rate (mutations/s) for the lag run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Replication mode only: extra TOML lines for both members'
    /// [replication] tables (e.g. "batch_max_delay_ms = 0"), to try settings.
    #[arg(long, default_value = "")]
    pub member_replication: String,
    /// Lag runs: also print the largest lag samples with their times (ms
    /// after the run's start), to see whether the tail is periodic.
    #[arg(long)]
    pub lag_trace: bool,
    /// Replication mode (Linux): run the writer on CPU 0 and both agents on
    /// CPU 1, so the ratio shows whether the agents keep up rather than how
    /// three busy processes share two cores.
    #[arg(long)]
    pub pin: bool,
    /// Replication mode, SQLite passive: put the passive's database in a
    /// folder under DIR instead of the system's temporary folder, e.g. on
    /// another disk, as a passive on another host would be (on one disk
    /// the two databases share its bandwidth; see BENCHMARKS.md).
    #[arg(long, value_name = "DIR")]
    pub passive_dir: Option<std::path::PathBuf>,
    /// Seconds of the lag run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Capture mode: how many times each transaction size is measured,
    /// with and without capture alternating (which goes first swaps every
    /// round); the figures are the medians. One run on a shared disk
    /// varies by a third either way.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Failover mode: how many times the active is killed.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Capture mode: `example` (the standard workload on the example
    /// schema) or `scheduler` (the scheduler-shaped fixture of
    /// schemas/examples/, nine tables with composite keys and cascades).
    #[arg(long, value_enum, default_value = "example")]
    pub schema: SchemaChoice,
}

/// Which schema a capture bench writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaChoice {
    Example,
    Scheduler,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let doc = match args.mode {
        Mode::Capture if args.schema == SchemaChoice::Scheduler => scheduler::run(&args).await?,
        Mode::Capture => capture::run(&args).await?,
        _ if args.schema == SchemaChoice::Scheduler => {
            anyhow::bail!("--schema scheduler is for --mode capture only")
        }
        Mode::Replication => replication::run(&args).await?,
        Mode::Snapshot => snapshot::run(&args).await?,
        Mode::PgLogical => logical::run(&args).await?,
        Mode::Failover => failover::run(args.kills).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&doc, "");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(v: &serde_json::Value, indent: &str) {
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            if val.is_object() || val.is_array() {
                println!("{indent}{k}:");
                print_text(val, &format!("{indent}  "));
            } else {
                println!("{indent}{k}: {val}");
            }
        }
    } else if let Some(arr) = v.as_array() {
        for (i, val) in arr.iter().enumerate() {
            println!("{indent}[{i}]");
            print_text(val, &format!("{indent}  "));
        }
    }
}

/// One lag observation of a fixed-rate run: when it was seen (ms after the
/// run started) and the lag (ms).
#[derive(Clone, Copy, Debug)]
pub struct LagSample {
    pub at_ms: f64,
    pub lag_ms: f64,
}

/// The lag fields shared by every replication bench (`lag_samples`,
/// `lag_p50_ms`, `lag_p99_ms`, `lag_max_ms`), plus, with `trace`, the 20
/// largest samples in time order and the largest lag of every 100 ms
/// window, to tell a periodic stall (checkpoints, trims, heartbeats) from a
/// one-off.
pub fn lag_fields(
    samples: &[LagSample],
    trace: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut sorted: Vec<f64> = samples.iter().map(|s| s.lag_ms).collect();
    sorted.sort_by(f64::total_cmp);
    let mut m = serde_json::Map::new();
    m.insert("lag_samples".into(), sorted.len().into());
    m.insert("lag_p50_ms".into(), percentile(&sorted, 50.0).into());
    m.insert("lag_p99_ms".into(), percentile(&sorted, 99.0).into());
    m.insert(
        "lag_max_ms".into(),
        sorted.last().copied().unwrap_or(0.0).into(),
    );
    if trace {
        let mut worst: Vec<LagSample> = samples.to_vec();
        worst.sort_by(|a, b| b.lag_ms.total_cmp(&a.lag_ms));
        worst.truncate(20);
        worst.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        m.insert(
            "lag_worst".into(),
            worst
                .iter()
                .map(|s| serde_json::json!([s.at_ms.round(), s.lag_ms]))
                .collect::<Vec<_>>()
                .into(),
        );
        let windows = samples
            .iter()
            .map(|s| (s.at_ms / 100.0) as usize)
            .max()
            .unwrap_or(0);
        let mut per = vec![0.0f64; windows + 1];
        for s in samples {
            let w = &mut per[(s.at_ms / 100.0) as usize];
            *w = w.max(s.lag_ms);
        }
        m.insert("lag_max_per_100ms".into(), per.into());
    }
    m
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&v, 100.0), 100.0);
        assert_eq!(super::percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn lag_trace_keeps_the_worst_samples_and_a_window_profile() {
        use super::{LagSample, lag_fields};
        // 100 samples over 1 s, one 80 ms stall at 450 ms.
        let samples: Vec<LagSample> = (0..100)
            .map(|i| LagSample {
                at_ms: f64::from(i) * 10.0,
                lag_ms: if i == 45 { 80.0 } else { 5.0 },
            })
            .collect();
        let plain = lag_fields(&samples, false);
        assert_eq!(plain["lag_samples"], 100);
        assert_eq!(plain["lag_p50_ms"], 5.0);
        assert_eq!(plain["lag_max_ms"], 80.0);
        assert!(plain.get("lag_worst").is_none());
        let traced = lag_fields(&samples, true);
        let worst = traced["lag_worst"].as_array().map(Vec::len);
        assert_eq!(worst, Some(20));
        let windows: Vec<f64> = traced["lag_max_per_100ms"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        assert_eq!(windows.len(), 10);
        assert_eq!(windows[4], 80.0);
        assert_eq!(windows[3], 5.0);
    }
}
