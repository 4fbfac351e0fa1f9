//! The drill's timeline: what happened when, relative to the drill's start.
//! Events (faults, role changes, fences, promotions, write outages), write
//! outcomes in 100 ms buckets and lag samples, recorded by the monitor, the
//! writer and the scenario driver, read once at the end for the reports.
//!
//! Owns: the shared, append-only record and its clock.
//! Must never: block for long (callers hold the lock only to push), or hold
//! key content (nothing here ever sees a key's bytes).

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Width of a write-outcome bucket.
pub const BUCKET_MS: u64 = 100;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub t_ms: u64,
    pub scenario: Option<String>,
    /// `scenario_start`, `fault`, `detected`, `promoted`, `role`, `fence`,
    /// `down`, `writes_failing`, `writes_resumed`, `restore`, `rejoined`,
    /// `converged`, `injected`, `scenario_end`.
    pub kind: String,
    pub member: Option<String>,
    pub detail: String,
}

/// One member's role as seen by the monitor (`down` when it did not answer).
#[derive(Clone, Debug, Serialize)]
pub struct RoleSample {
    pub t_ms: u64,
    pub member: String,
    pub role: String,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LagSample {
    pub t_ms: u64,
    pub member: String,
    pub lag_changes: u64,
    pub lag_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WriteBucket {
    pub t_ms: u64,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Default)]
struct Inner {
    scenario: Option<String>,
    events: Vec<Event>,
    roles: Vec<RoleSample>,
    lag: Vec<LagSample>,
    writes: BTreeMap<u64, WriteBucket>,
}

/// Everything recorded, for the reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recorded {
    pub events: Vec<Event>,
    pub roles: Vec<RoleSample>,
    pub lag: Vec<LagSample>,
    pub writes: Vec<WriteBucket>,
}

pub struct Timeline {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere while pushing leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds from the drill's start to `t`.
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }

    pub fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    /// Events from now on belong to `name` (or to no scenario).
    pub fn set_scenario(&self, name: Option<&str>) {
        self.lock().scenario = name.map(str::to_string);
    }

    pub fn event_at(
        &self,
        t: Instant,
        kind: &str,
        member: Option<&str>,
        detail: impl Into<String>,
    ) {
        let t_ms = self.ms(t);
        let mut g = self.lock();
        let scenario = g.scenario.clone();
        g.events.push(Event {
            t_ms,
            scenario,
            kind: kind.to_string(),
            member: member.map(str::to_string),
            detail: detail.into(),
        });
    }

    pub fn event(&self, kind: &str, member: Option<&str>, detail: impl Into<String>) {
        self.event_at(Instant::now(), kind, member, detail);
    }

    pub fn role(&self, t: Instant, member: &str, role: &str, epoch: u64) {
        let t_ms = self.ms(t);
        self.lock().roles.push(RoleSample {
            t_ms,
            member: member.to_string(),
            role: role.to_string(),
            epoch,
        });
    }

    pub fn lag(&self, t: Instant, member: &str, lag_changes: u64, lag_ms: u64) {
        let t_ms = self.ms(t);
        self.lock().lag.push(LagSample {
            t_ms,
            member: member.to_string(),
            lag_changes,
            lag_ms,
        });
    }

    pub fn write(&self, t: Instant, ok: bool) {
        let b = self.ms(t) / BUCKET_MS * BUCKET_MS;
        let mut g = self.lock();
        let e = g.writes.entry(b).or_insert(WriteBucket {
            t_ms: b,
            ..WriteBucket::default()
        });
        if ok {
            e.ok += 1;
        } else {
            e.failed += 1;
        }
    }

    pub fn recorded(&self) -> Recorded {
        let g = self.lock();
        let mut events = g.events.clone();
        events.sort_by_key(|e| e.t_ms);
        Recorded {
            events,
            roles: g.roles.clone(),
            lag: g.lag.clone(),
            writes: g.writes.values().copied().collect(),
        }
    }
}
