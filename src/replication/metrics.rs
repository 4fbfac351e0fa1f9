//! Prometheus metrics: the counters the replication tasks bump as events
//! happen, and the rendering of those counters plus the live view into the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Owns: the `Metrics` registry (plain atomics, no locks on the hot path),
//! the apply-latency histogram, and the text format (HELP/TYPE lines, name
//! rules, label escaping).
//! Must never: carry key content or the token in a name, label or value, or
//! block a replication task (every update is one relaxed atomic add).

use super::live::StatusDoc;
use crate::model::Role;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the apply-latency buckets: a batch commit on a
/// local disk takes around a millisecond; seconds mean trouble.
pub const APPLY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram of durations with fixed buckets. Each observation lands in
/// exactly one slot; rendering makes the buckets cumulative.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound plus the +Inf slot.
    slots: Vec<AtomicU64>,
    /// Sum of observations in nanoseconds (u64 ns overflows after 584 years).
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(slot) = self.slots.get(i) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (cumulative bucket counts incl. +Inf, sum in seconds, count). The
    /// count is taken as the +Inf bucket so the two always agree even while
    /// observations race with the read.
    fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative: Vec<u64> = self
            .slots
            .iter()
            .map(|s| {
                acc += s.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum, acc)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Progress of a snapshot transfer (on the receiving passive or the sending
/// active). Set by the snapshot code; all zero while none runs.
#[derive(Debug, Default)]
pub struct SnapshotProgress {
    /// 1 while a snapshot is being sent or received.
    pub running: Gauge,
    /// Rows the running snapshot holds in all, and how many have been moved.
    pub rows_total: Gauge,
    pub rows_done: Gauge,
    /// Snapshots completed since start, and bytes moved by all of them.
    pub completed: Counter,
    pub bytes: Counter,
}

/// Every counter of one member. Held in an `Arc` by the node context; the
/// tasks that see an event bump its counter.
#[derive(Debug)]
pub struct Metrics {
    pub heartbeats_sent: Counter,
    pub heartbeats_received: Counter,
    /// Elections this member started as a candidate.
    pub elections: Counter,
    /// Times this member became the active.
    pub promotions: Counter,
    /// Times this member fenced its database (stepped down, lost its lease,
    /// stopped on purpose).
    pub fences: Counter,
    pub batches_shipped: Counter,
    pub changes_shipped: Counter,
    /// Frame bytes written to passives (TLS overhead not included).
    pub bytes_shipped: Counter,
    pub batches_applied: Counter,
    pub changes_applied: Counter,
    /// Time of one `apply` call on a passive (one received batch).
    pub apply_seconds: Histogram,
    pub database_probe_failures: Counter,
    /// POST requests refused for a missing or wrong token.
    pub unauthorized_requests: Counter,
    pub snapshot: SnapshotProgress,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            heartbeats_sent: Counter::default(),
            heartbeats_received: Counter::default(),
            elections: Counter::default(),
            promotions: Counter::default(),
            fences: Counter::default(),
            batches_shipped: Counter::default(),
            changes_shipped: Counter::default(),
            bytes_shipped: Counter::default(),
            batches_applied: Counter::default(),
            changes_applied: Counter::default(),
            apply_seconds: Histogram::new(&APPLY_BUCKETS),
            database_probe_failures: Counter::default(),
            unauthorized_requests: Counter::default(),
            snapshot: SnapshotProgress::default(),
        }
    }
}

/// The text exposition format, one family at a time.
pub struct TextWriter {
    out: String,
}

/// Metric and label names: `[a-zA-Z_:][a-zA-Z0-9_:]*` (labels without `:`).
pub fn valid_name(name: &str, label: bool) -> bool {
    let mut chars = name.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (!label && c == ':');
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || c == '_' || (!label && c == ':');
    match chars.next() {
        Some(c) if ok_first(c) => chars.all(ok_rest),
        _ => false,
    }
}

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escape HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Default for TextWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TextWriter {
    pub fn new() -> Self {
        TextWriter { out: String::new() }
    }

    /// Start a family. Names are compile-time constants here, so an invalid
    /// one is a bug: it is caught by the unit tests, and in release builds
    /// the family is still written (a scraper reports it) rather than panic.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(valid_name(name, false), "bad metric name {name}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k, true), "bad label name {k}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_value(value));
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let (cumulative, sum, count) = h.snapshot();
        let bucket = format!("{name}_bucket");
        for (i, c) in cumulative.iter().enumerate() {
            let le = h
                .bounds
                .get(i)
                .map(|b| fmt_value(*b))
                .unwrap_or_else(|| "+Inf".into());
            self.sample(&bucket, &[("le", &le)], *c as f64);
        }
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

const ROLES: [Role; 5] = [
    Role::Active,
    Role::Passive,
    Role::Candidate,
    Role::Fenced,
    Role::Witness,
];

/// Render every metric of a member: the counters plus gauges taken from the
/// live view's status document.
pub fn render(doc: &StatusDoc, m: &Metrics) -> String {
    let mut w = TextWriter::new();
    w.family(
        "understudy_info",
        "gauge",
        "Constant 1, labelled with the member's identity and build.",
    );
    w.sample(
        "understudy_info",
        &[
            ("cluster", &doc.cluster),
            ("member", &doc.member),
            ("version", doc.version),
            ("backend", doc.backend),
        ],
        1.0,
    );
    w.family(
        "understudy_role",
        "gauge",
        "1 for the role this member has now, 0 for the others.",
    );
    for r in ROLES {
        let v = if doc.role == r { 1.0 } else { 0.0 };
        w.sample("understudy_role", &[("role", r.as_str())], v);
    }
    w.single(
        "understudy_epoch",
        "gauge",
        "The epoch (term) this member is in.",
        doc.epoch as f64,
    );
    w.single(
        "understudy_position_seq",
        "gauge",
        "Change-log position: the head on the active, the applied position on a passive.",
        doc.position.seq as f64,
    );
    w.single(
        "understudy_position_epoch",
        "gauge",
        "Epoch of the change at this member's position.",
        doc.position.epoch as f64,
    );
    w.single(
        "understudy_lag_changes",
        "gauge",
        "On a passive: changes the active has announced that are not applied here yet.",
        doc.lag.changes as f64,
    );
    w.single(
        "understudy_lag_seconds",
        "gauge",
        "On a passive: how long it has known of changes it has not applied.",
        doc.lag.ms as f64 / 1000.0,
    );
    w.single(
        "understudy_last_heartbeat_age_seconds",
        "gauge",
        "On a passive: time since the active was last heard (-1 if never).",
        doc.last_heartbeat_ms
            .map(|ms| ms as f64 / 1000.0)
            .unwrap_or(-1.0),
    );
    w.single(
        "understudy_database_up",
        "gauge",
        "1 while the member's database answers.",
        if doc.database_ok { 1.0 } else { 0.0 },
    );
    w.single(
        "understudy_divergent_changes",
        "gauge",
        "Changes held in the divergence quarantine.",
        doc.divergent_changes as f64,
    );
    w.single(
        "understudy_apply_blocked",
        "gauge",
        "1 while applying the active's changes is blocked (apply.reason in /status says why).",
        if doc.apply.state == "blocked" {
            1.0
        } else {
            0.0
        },
    );
    w.single(
        "understudy_uptime_seconds",
        "gauge",
        "Time since the agent started.",
        doc.uptime_ms as f64 / 1000.0,
    );

    w.family(
        "understudy_peer_connected",
        "gauge",
        "1 while a replication connection to the peer is open.",
    );
    for p in &doc.peers {
        let v = if p.connected { 1.0 } else { 0.0 };
        w.sample("understudy_peer_connected", &[("peer", &p.member)], v);
    }
    w.family(
        "understudy_peer_position_seq",
        "gauge",
        "Last position the peer reported.",
    );
    for p in &doc.peers {
        w.sample(
            "understudy_peer_position_seq",
            &[("peer", &p.member)],
            p.position.seq as f64,
        );
    }
    w.family(
        "understudy_peer_lag_changes",
        "gauge",
        "On the active: changes a passive has not acknowledged yet.",
    );
    for p in doc.peers.iter().filter(|p| !p.witness) {
        w.sample(
            "understudy_peer_lag_changes",
            &[("peer", &p.member)],
            p.lag_changes as f64,
        );
    }
    w.family(
        "understudy_peer_lag_seconds",
        "gauge",
        "On the active: how long a passive has been behind the head.",
    );
    for p in doc.peers.iter().filter(|p| !p.witness) {
        w.sample(
            "understudy_peer_lag_seconds",
            &[("peer", &p.member)],
            p.lag_ms as f64 / 1000.0,
        );
    }

    let counters: [(&str, &str, &Counter); 13] = [
        (
            "understudy_heartbeats_sent_total",
            "Heartbeats sent to peers.",
            &m.heartbeats_sent,
        ),
        (
            "understudy_heartbeats_received_total",
            "Heartbeats received from peers.",
            &m.heartbeats_received,
        ),
        (
            "understudy_elections_total",
            "Elections this member started as a candidate.",
            &m.elections,
        ),
        (
            "understudy_promotions_total",
            "Times this member became the active.",
            &m.promotions,
        ),
        (
            "understudy_fences_total",
            "Times this member fenced its database.",
            &m.fences,
        ),
        (
            "understudy_batches_shipped_total",
            "Batches streamed to passives.",
            &m.batches_shipped,
        ),
        (
            "understudy_changes_shipped_total",
            "Changes streamed to passives.",
            &m.changes_shipped,
        ),
        (
            "understudy_shipped_bytes_total",
            "Frame bytes of batches streamed to passives.",
            &m.bytes_shipped,
        ),
        (
            "understudy_batches_applied_total",
            "Batches applied from the active.",
            &m.batches_applied,
        ),
        (
            "understudy_changes_applied_total",
            "Changes applied from the active.",
            &m.changes_applied,
        ),
        (
            "understudy_database_probe_failures_total",
            "Health probes of the member database that failed.",
            &m.database_probe_failures,
        ),
        (
            "understudy_unauthorized_requests_total",
            "POST requests refused for a missing or wrong token.",
            &m.unauthorized_requests,
        ),
        (
            "understudy_snapshots_completed_total",
            "Snapshot transfers completed.",
            &m.snapshot.completed,
        ),
    ];
    for (name, help, c) in counters {
        w.single(name, "counter", help, c.get() as f64);
    }
    w.single(
        "understudy_snapshot_bytes_total",
        "counter",
        "Bytes moved by snapshot transfers.",
        m.snapshot.bytes.get() as f64,
    );
    w.single(
        "understudy_snapshot_running",
        "gauge",
        "1 while a snapshot is being sent or received.",
        m.snapshot.running.get() as f64,
    );
    w.single(
        "understudy_snapshot_rows",
        "gauge",
        "Rows in the running snapshot.",
        m.snapshot.rows_total.get() as f64,
    );
    w.single(
        "understudy_snapshot_rows_done",
        "gauge",
        "Rows of the running snapshot moved so far.",
        m.snapshot.rows_done.get() as f64,
    );
    w.histogram(
        "understudy_apply_batch_seconds",
        "Time to apply one received batch on a passive.",
        &m.apply_seconds,
    );
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MemberId, Position};
    use crate::replication::live::{Live, LiveInner, PeerLive};
    use std::collections::BTreeMap;
    use std::time::Instant;

    #[test]
    fn names_follow_the_rules() {
        assert!(valid_name("understudy_epoch", false));
        assert!(valid_name("a:b_c9", false));
        assert!(!valid_name("9abc", false));
        assert!(!valid_name("a-b", false));
        assert!(!valid_name("", false));
        assert!(!valid_name("a:b", true));
        assert!(valid_name("_le", true));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut w = TextWriter::new();
        w.family("m", "gauge", "help with \\ and\nnewline");
        w.sample("m", &[("peer", "q\"uote")], 1.5);
        let t = w.finish();
        assert_eq!(
            t,
            "# HELP m help with \\\\ and\\nnewline\n# TYPE m gauge\nm{peer=\"q\\\"uote\"} 1.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_count() {
        static B: [f64; 3] = [0.001, 0.01, 0.1];
        let h = Histogram::new(&B);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let mut w = TextWriter::new();
        w.histogram("lat_seconds", "latency", &h);
        let t = w.finish();
        assert!(t.contains("lat_seconds_bucket{le=\"0.001\"} 1\n"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"0.01\"} 3\n"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"0.1\"} 3\n"), "{t}");
        assert!(t.contains("lat_seconds_bucket{le=\"+Inf\"} 4\n"), "{t}");
        assert!(t.contains("lat_seconds_count 4\n"), "{t}");
        let sum: f64 = t
            .lines()
            .find_map(|l| l.strip_prefix("lat_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        assert!((sum - 3.0105).abs() < 1e-9, "{t}");
        assert_eq!(h.count(), 4);
    }

    fn doc() -> StatusDoc {
        let mut peers = BTreeMap::new();
        peers.insert(
            MemberId::new("b"),
            PeerLive {
                connected: true,
                role: Some(Role::Passive),
                ..PeerLive::default()
            },
        );
        peers.insert(
            MemberId::new("w"),
            PeerLive {
                witness: true,
                ..PeerLive::default()
            },
        );
        Live::new(LiveInner {
            cluster: "prod \"east\"".into(),
            member: MemberId::new("a"),
            role: Role::Active,
            epoch: crate::model::Epoch(3),
            active: Some(MemberId::new("a")),
            position: Position::new(3, 42),
            active_head: Position::new(3, 42),
            behind_since: None,
            last_heartbeat: None,
            database_ok: true,
            database_error: None,
            stalled_write: None,
            divergent_changes: 0,
            peers,
            started: Instant::now(),
            backend: "sqlite",
            snapshot: None,
            controller: None,
            hooks: Vec::new(),
            lease_until: None,
            schema_fingerprint: String::new(),
            schema_version: 0,
            apply_blocked: None,
        })
        .status(Instant::now())
    }

    /// Every line is a comment or `name{labels} value`; every sample's
    /// family has exactly one HELP and one TYPE line, before its samples.
    #[test]
    fn rendered_exposition_is_well_formed() {
        let m = Metrics::default();
        m.heartbeats_sent.add(7);
        m.apply_seconds.observe(Duration::from_millis(2));
        let text = render(&doc(), &m);
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("");
                assert!(helped.insert(name.to_string()), "two HELP for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(
                    typed.insert(name.into(), kind.into()).is_none(),
                    "two TYPE for {name}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} lacks _total");
                }
                continue;
            }
            let name_end = line.find(['{', ' ']).expect("sample has a value");
            let name = &line[..name_end];
            assert!(valid_name(name, false), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before TYPE: {line}");
            let value = line.rsplit(' ').next().unwrap_or("");
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf",
                "bad value in {line}"
            );
        }
        assert!(
            text.contains("understudy_role{role=\"active\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("understudy_role{role=\"passive\"} 0\n"));
        assert!(text.contains("cluster=\"prod \\\"east\\\"\""), "{text}");
        assert!(text.contains("understudy_heartbeats_sent_total 7\n"));
        assert!(text.contains("understudy_peer_lag_changes{peer=\"b\"} 42\n"));
        assert!(
            !text.contains("understudy_peer_lag_changes{peer=\"w\"}"),
            "witnesses have no lag"
        );
        assert!(text.contains("understudy_apply_batch_seconds_count 1\n"));
        assert!(text.contains("understudy_epoch 3\n"));
    }
}
