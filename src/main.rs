//! The `understudy` command line: parse, dispatch, exit codes. Nothing else.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use understudy::config::Config;
use understudy::model::MemberId;
use understudy::store::{AnyStore, InitParams, MemberStore};

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "Replication and failover sidecar for clustered job schedulers"
)]
struct Cli {
    /// Log format on stderr: text or json. Filter with RUST_LOG (default info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or upgrade the schema in the member's database (idempotent).
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// The captured tables as the member's database describes them (keys,
    /// columns with portable and declared types, secret columns, id
    /// sources, foreign keys) and the schema fingerprint. Run it after
    /// `init`; a table understudy cannot capture is refused by name.
    Tables {
        #[arg(long)]
        config: PathBuf,
        /// One JSON document instead of the text tables.
        #[arg(long)]
        json: bool,
    },
    /// Run the sidecar (SIGTERM or SIGINT: graceful stop).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print captured changes (key content redacted).
    Log {
        #[arg(long)]
        config: PathBuf,
        /// Only changes with a seq above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many changes.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cluster table: members, roles, epoch, positions, lag (asks one
    /// member's status endpoint, then each peer's).
    Status {
        #[command(flatten)]
        target: StatusTarget,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Every role change this member's database records: epoch, active,
    /// start position, time, reason.
    History {
        #[command(flatten)]
        target: StatusTarget,
        #[arg(long)]
        json: bool,
    },
    /// Planned, zero-loss role change: the active fences, `--to` reaches
    /// the exact head, then takes over. Asks the active (found from any
    /// member's endpoint) and waits until the target answers as active.
    Switchover {
        /// The member that becomes the active.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: StatusTarget,
        #[command(flatten)]
        auth: TokenArg,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        #[arg(long)]
        json: bool,
    },
    /// A schema change of the captured tables: run on the active with an
    /// entry in its change log, and by every member at that position. Exit
    /// 0 when every data member has it, 3 when some did not confirm in
    /// time (named; they apply it when they catch up), 1 when it failed on
    /// the active (nothing changed anywhere). The DDL runs with capture
    /// off on every member: back-fills in it must be deterministic.
    Migrate {
        /// One DDL file for every member (a single-backend cluster).
        #[arg(long, conflicts_with_all = ["sqlite", "postgres"], required_unless_present_all = ["sqlite", "postgres"])]
        sql: Option<PathBuf>,
        /// What SQLite members run (with --postgres: a mixed cluster).
        #[arg(long, requires = "postgres")]
        sqlite: Option<PathBuf>,
        /// What PostgreSQL members run.
        #[arg(long, requires = "sqlite")]
        postgres: Option<PathBuf>,
        #[command(flatten)]
        target: StatusTarget,
        #[command(flatten)]
        auth: TokenArg,
        /// How long to wait for every data member to confirm.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        #[arg(long)]
        json: bool,
    },
    /// Operator-declared failover: make the member at --url (default: this
    /// config's member) the active without a quorum. Changes the old active
    /// had and this member lacks are at risk; use only when it is gone.
    Promote {
        /// Required: says you accept the risk.
        #[arg(long)]
        force: bool,
        /// The member to promote (found from --url's member); default: the
        /// member at --url itself.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        target: StatusTarget,
        #[command(flatten)]
        auth: TokenArg,
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        #[arg(long)]
        json: bool,
    },
    /// Suspend automatic failover cluster-wide (persisted on every member).
    Pause {
        #[command(flatten)]
        target: StatusTarget,
        #[command(flatten)]
        auth: TokenArg,
        #[arg(long)]
        json: bool,
    },
    /// Resume automatic failover cluster-wide.
    Resume {
        #[command(flatten)]
        target: StatusTarget,
        #[command(flatten)]
        auth: TokenArg,
        #[arg(long)]
        json: bool,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Compare per-table checksums of every data member at one common
    /// position. Exit 0: all match; 1: a table differs; 2: a member could not
    /// be verified.
    Verify {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// How long a passive may take to reach the active's position.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Replace this member's data with a snapshot of the active's (its agent
    /// must be stopped); start the agent again to stream on from there.
    Resnapshot {
        #[arg(long)]
        config: PathBuf,
    },
    /// Replication throughput and lag benchmarks.
    Bench(understudy::bench::BenchArgs),
    /// Failover drill: on a throw-away local cluster (default) kill,
    /// partition and switch over the active under a writer and measure
    /// detection, promotion, unavailability, lost and divergent changes and
    /// checksums; against a real cluster (--cluster) a switchover and back.
    /// Exit code 0 only on a pass.
    Drill(understudy::drill::DrillArgs),
    /// Changes quarantined as divergent (a former active's tail, late
    /// writes past the fence): list, export for recovery, mark resolved.
    Divergence {
        #[command(subcommand)]
        cmd: DivergenceCmd,
    },
}

#[derive(Subcommand)]
enum DivergenceCmd {
    /// Table of quarantined changes (key content never shown).
    List {
        #[arg(long)]
        config: PathBuf,
        /// Also resolved ones.
        #[arg(long)]
        include_resolved: bool,
        /// One JSON document instead of the table (key content redacted).
        #[arg(long)]
        json: bool,
    },
    /// Full row images for recovery as JSON. With --out: a new file (mode
    /// 0600, never overwritten) including key content as base64; without:
    /// stdout, key content only with --include-secrets.
    Export {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print key content on stdout (without --out).
        #[arg(long)]
        include_secrets: bool,
        /// Also resolved ones.
        #[arg(long)]
        include_resolved: bool,
        /// With --out: print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark quarantined changes as dealt with.
    Resolve {
        #[arg(long)]
        config: PathBuf,
        /// A quarantine id (repeatable).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every unresolved change.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Which status endpoint to ask.
#[derive(clap::Args)]
struct StatusTarget {
    /// http://HOST:PORT, https://HOST:PORT or HOST:PORT. Default: the
    /// config's status.listen with --config, else 127.0.0.1:7501.
    #[arg(long)]
    url: Option<String>,
    /// A member config: gives the default URL and, for https, the cluster CA.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster CA for https URLs (default: the config's [tls] ca).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Time limit per request, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// The bearer token for the POST endpoints.
#[derive(clap::Args)]
struct TokenArg {
    /// Default: $UNDERSTUDY_TOKEN, else the --config file's status.token.
    #[arg(long, env = "UNDERSTUDY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl TokenArg {
    fn resolve(&self, target: &StatusTarget) -> Result<String> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(t.clone());
        }
        match &target.config {
            Some(c) => Ok(load(c)?.status.token),
            None => bail!(
                "no token for the POST endpoints: pass --config FILE (its status.token), --token or UNDERSTUDY_TOKEN"
            ),
        }
    }
}

/// Print an operator action's outcome.
fn report(r: understudy::status::cli_control::ControlReport, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        println!("{}", r.line);
    }
    Ok(ExitCode::SUCCESS)
}

impl StatusTarget {
    fn endpoint(&self) -> Result<understudy::status::client::Endpoint> {
        use understudy::status::{client::Endpoint, tls::client_config};
        let cfg = self.config.as_deref().map(load).transpose()?;
        let ca = self
            .ca
            .clone()
            .or_else(|| cfg.as_ref().map(|c| c.tls.ca.clone()));
        let default = || match &cfg {
            Some(c) => {
                let mut a = c.status.listen;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if c.status.tls { "https" } else { "http" };
                format!("{scheme}://{a}")
            }
            None => "http://127.0.0.1:7501".to_string(),
        };
        let url = self.url.clone().unwrap_or_else(default);
        let tls = match &ca {
            Some(ca) if url.starts_with("https://") => Some(client_config(ca)?),
            _ => None,
        };
        Ok(Endpoint::parse(&url, tls)?)
    }

    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.max(1))
    }
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A dev CA and member certificates: DIR/ca.pem, DIR/<member>.pem, DIR/<member>.key.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated member ids (witnesses included).
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

async fn open_store(cfg: &Config) -> Result<AnyStore> {
    let Some(url) = &cfg.database else {
        bail!(
            "{}: member {} is a witness and has no database",
            cfg.file.display(),
            cfg.member
        );
    };
    Ok(AnyStore::open(url, &cfg.capture).await?)
}

/// `understudy tables`. Opening a store does not refuse tables it cannot
/// capture (`init` must open an empty database); `check_schema` does, by
/// name, and also says when `init` has not run (no description to show).
async fn tables(config: &Path, json: bool) -> Result<ExitCode> {
    let cfg = load(config)?;
    let store = open_store(&cfg).await?;
    store.check_schema().await?;
    let catalog = store.catalog();
    let out = if json {
        let doc = understudy::tables_cmd::to_json(&catalog);
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        understudy::tables_cmd::render_text(&catalog)
    };
    // `understudy tables | head` is a normal thing to run: a reader that
    // stops early is not an error (println! would panic on it).
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

async fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    let cmd_name = match &cmd {
        Cmd::Pause { .. } => "pause",
        Cmd::Resume { .. } => "resume",
        _ => "",
    };
    match cmd {
        Cmd::Init { config } => {
            let cfg = load(&config)?;
            let Some(url) = &cfg.database else {
                println!("member {} is a witness: nothing to initialise", cfg.member);
                return Ok(ExitCode::SUCCESS);
            };
            let report = understudy::store::init_database(
                url,
                &InitParams {
                    cluster: cfg.cluster.clone(),
                    member: cfg.member.clone(),
                    initial_active: cfg.initial_active.clone(),
                },
                &cfg.capture,
            )
            .await?;
            if report.from_version == report.to_version {
                println!("{url}: schema is current (version {})", report.to_version);
            } else {
                println!(
                    "{url}: schema upgraded from version {} to {}",
                    report.from_version, report.to_version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tables { config, json } => tables(&config, json).await,
        Cmd::Run { config } => {
            let cfg = load(&config)?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            understudy::agent::run(cfg, rx)
                .await
                .context("the agent stopped")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Log {
            config,
            since,
            limit,
            json,
        } => {
            let cfg = load(&config)?;
            let store = open_store(&cfg).await?;
            store.check_schema().await?;
            store.sequence().await?;
            let mut after = since;
            let mut left = limit;
            let mut out = Vec::new();
            while left > 0 {
                let read = store.read_changes(after, left.min(1000), 4 << 20).await?;
                let Some(last) = read.changes.last() else {
                    break;
                };
                after = last.pos.seq;
                left -= read.changes.len();
                out.extend(read.changes);
            }
            let catalog = store.catalog();
            if json {
                let docs: Vec<_> = out
                    .iter()
                    .map(|c| understudy::capture::change_json(&catalog, c))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&docs)?);
            } else {
                for c in &out {
                    println!("{}", understudy::capture::change_line(&catalog, c));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    out,
                    members,
                    force,
                },
        } => {
            let ids: Vec<MemberId> = members.iter().map(MemberId::new).collect();
            if ids.is_empty() {
                bail!("--members needs at least one member id, e.g. --members a,b,w");
            }
            let report = understudy::certs::init_certs(&out, &ids, force)?;
            match report.ca {
                understudy::certs::CaOutcome::Created => {
                    println!("created cluster CA {}", report.ca_cert.display())
                }
                understudy::certs::CaOutcome::Reused => {
                    println!("issued from the existing CA {}", report.ca_cert.display())
                }
            }
            for m in &report.members {
                println!("{}: {} {}", m.member, m.cert.display(), m.key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            config,
            json,
            timeout_secs,
        } => {
            let cfg = load(&config)?;
            let report =
                understudy::verify::run(&cfg, std::time::Duration::from_secs(timeout_secs)).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&understudy::verify::to_json(&report))?
                );
            } else {
                print!("{}", understudy::verify::render_text(&report));
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Cmd::Resnapshot { config } => {
            let cfg = load(&config)?;
            let own = cfg.status.listen;
            if tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tokio::net::TcpStream::connect(own),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                bail!(
                    "the agent of member {} answers on its status address {own}: stop it first (a snapshot replaces everything its database holds)",
                    cfg.member
                );
            }
            let store = open_store(&cfg).await?;
            store.check_schema().await?;
            let mut bar = understudy::progress::Bar::stderr();
            let mut rows = 0;
            let pulled = understudy::replication::snapshot::pull(&cfg, &store, |p| {
                rows = p.rows_done;
                bar.update(p.rows_done, p.rows_total, p.bytes, p.rates().0);
            })
            .await;
            bar.finish();
            let pos = pulled.context("the snapshot failed; this member's data is unchanged")?;
            println!(
                "member {} now holds the active's snapshot at position {pos} ({rows} rows); start its agent to stream on from there",
                cfg.member
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(args) => understudy::bench::run(args).await,
        Cmd::Drill(args) => Ok(understudy::drill::run(args).await?),
        Cmd::Divergence { cmd } => {
            use understudy::divergence::Action;
            let (config, action) = match cmd {
                DivergenceCmd::List {
                    config,
                    include_resolved,
                    json,
                } => (
                    config,
                    Action::List {
                        include_resolved,
                        json,
                    },
                ),
                DivergenceCmd::Export {
                    config,
                    out,
                    include_secrets,
                    include_resolved,
                    json,
                } => (
                    config,
                    Action::Export {
                        out,
                        include_secrets,
                        include_resolved,
                        json,
                    },
                ),
                DivergenceCmd::Resolve {
                    config,
                    ids,
                    all,
                    json,
                } => (config, Action::Resolve { ids, all, json }),
            };
            let cfg = load(&config)?;
            let store = open_store(&cfg).await?;
            store.check_schema().await?;
            print!(
                "{}",
                understudy::divergence::run(&cfg, &store, action).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { target, json } => {
            let ep = target.endpoint()?;
            let view = understudy::status::cli_status::gather(&ep, target.timeout())
                .await
                .with_context(|| format!("cannot get the cluster status from {}", ep.url()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", understudy::status::cli_status::table(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate {
            sql,
            sqlite,
            postgres,
            target,
            auth,
            timeout_secs,
            json,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the DDL file {}", p.display()))
            };
            let (lite, pg) = match (&sql, &sqlite, &postgres) {
                (Some(f), _, _) => (read(f)?, read(f)?),
                (None, Some(a), Some(b)) => (read(a)?, read(b)?),
                _ => bail!("give --sql FILE, or --sqlite FILE and --postgres FILE"),
            };
            let token = auth.resolve(&target)?;
            let ep = target.endpoint()?;
            let r = understudy::status::cli_control::migrate(
                &ep,
                &token,
                &lite,
                &pg,
                std::time::Duration::from_secs(timeout_secs.max(1)),
            )
            .await
            .context("the schema change did not run")?;
            let ok = r.all_confirmed;
            report(r.report, json)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Cmd::Switchover {
            to,
            target,
            auth,
            wait_secs,
            json,
        } => {
            understudy::config::check_member_id(&to)
                .map_err(|r| anyhow::anyhow!("--to {to:?}: {r}"))?;
            let token = auth.resolve(&target)?;
            let ep = target.endpoint()?;
            let r = understudy::status::cli_control::switchover(
                &ep,
                &token,
                &to,
                std::time::Duration::from_secs(wait_secs.max(1)),
            )
            .await
            .with_context(|| format!("switchover to {to} did not happen"))?;
            report(r, json)
        }
        Cmd::Promote {
            force,
            to,
            target,
            auth,
            wait_secs,
            json,
        } => {
            if !force {
                bail!(
                    "promote needs --force (it skips the quorum); for a planned role change run `understudy switchover --to <member>`"
                );
            }
            let token = auth.resolve(&target)?;
            let mut ep = target.endpoint()?;
            if let Some(m) = &to {
                understudy::config::check_member_id(m)
                    .map_err(|r| anyhow::anyhow!("--to {m:?}: {r}"))?;
                ep = understudy::status::cli_control::endpoint_of(&ep, m, target.timeout())
                    .await
                    .with_context(|| format!("cannot find member {m}"))?;
            }
            let r = understudy::status::cli_control::promote_force(
                &ep,
                &token,
                std::time::Duration::from_secs(wait_secs.max(1)),
            )
            .await
            .with_context(|| format!("{} was not promoted", ep.url()))?;
            report(r, json)
        }
        Cmd::Pause { target, auth, json } | Cmd::Resume { target, auth, json } => {
            let paused = matches!(cmd_name, "pause");
            let token = auth.resolve(&target)?;
            let ep = target.endpoint()?;
            let r = understudy::status::cli_control::set_paused(
                &ep,
                &token,
                paused,
                std::time::Duration::from_secs(5),
            )
            .await
            .with_context(|| format!("cannot {cmd_name} automatic failover via {}", ep.url()))?;
            report(r, json)
        }
        Cmd::History { target, json } => {
            let ep = target.endpoint()?;
            let r = understudy::status::client::request_to(
                &ep,
                "GET",
                "/history",
                None,
                None,
                target.timeout(),
            )
            .await
            .with_context(|| format!("cannot get the history from {}", ep.url()))?;
            let doc: serde_json::Value = serde_json::from_str(&r.body)
                .with_context(|| format!("{} sent a history that is not JSON", ep.url()))?;
            if r.code != 200 {
                bail!(
                    "{}: {}",
                    ep.url(),
                    doc["error"]
                        .as_str()
                        .unwrap_or("the history is unavailable")
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!(
                    "{:<6} {:<12} {:<14} {:<24} REASON",
                    "EPOCH", "ACTIVE", "START", "TIME"
                );
                for h in doc["history"].as_array().into_iter().flatten() {
                    let at = h["at_ms"].as_i64().unwrap_or(0);
                    println!(
                        "{:<6} {:<12} {:<14} {:<24} {}",
                        h["epoch"],
                        h["active"].as_str().unwrap_or("-"),
                        format!("{}/{}", h["start"]["epoch"], h["start"]["seq"]),
                        understudy::status::cli_status::utc(at),
                        h["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
