//! `understudy bench`: figures, not tests. Capture overhead (writer with and
//! without the capture triggers), replication throughput and lag (a real
//! active and passive over mutual TLS on loopback), and snapshot rates.
//!
//! Owns: the benchmark drivers and their printed reports.
//! Must never: run as part of the test suite, or touch a database it did not
//! create itself.

pub mod capture;
pub mod replication;
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
    /// Mutations for the throughput runs (jobs seeded for --mode snapshot).
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Operations per application transaction.
    #[arg(long, default_value_t = 1)]
    pub tx_size: usize,
    /// Fixed rate (mutations/s) for the lag run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of the lag run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let doc = match args.mode {
        Mode::Capture => capture::run(&args).await?,
        Mode::Replication => replication::run(&args).await?,
        Mode::Snapshot => snapshot::run(&args).await?,
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
}
