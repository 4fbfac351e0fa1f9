//! The drill's findings: one result per scenario, the verdict rules, the
//! summary table for the terminal and `report.json`.
//!
//! Owns: the report's shape (DESIGN.md fixes `verdict` and the scenario
//! fields `name`, `detection_ms`, `promotion_ms`, `unavailable_ms`,
//! `lost_changes`, `divergent_changes`, `checksums_match`) and the rules
//! that turn measurements into pass or fail.
//! Must never: pass a scenario that lost a write the writer saw commit, or
//! one whose members' checksums differ.

use super::timeline::Recorded;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub verdict: &'static str,
    /// Fault to the first sign a member noticed (see README: "Drills").
    pub detection_ms: Option<u64>,
    /// Fault to a member other than the faulted one answering `/active`
    /// with 200 (kill-passive: 0, nobody needs promoting).
    pub promotion_ms: Option<u64>,
    /// Longest stretch in which every write of the writer failed.
    pub unavailable_ms: u64,
    pub lost_changes: u64,
    pub divergent_changes: u64,
    pub checksums_match: bool,
    /// Committed writes that are on no member's tables but in a
    /// divergence quarantine (kill-active, partition-active: not lost).
    pub quarantined_writes: u64,
    pub writes_committed: u64,
    pub writes_failed: u64,
    pub old_active: Option<String>,
    pub new_active: Option<String>,
    pub epoch_before: Option<u64>,
    pub epoch_after: Option<u64>,
    /// The promotion limit this scenario was held to.
    pub promotion_budget_ms: Option<u64>,
    pub start_ms: u64,
    pub fault_ms: Option<u64>,
    pub end_ms: u64,
    pub reasons: Vec<String>,
}

impl ScenarioResult {
    pub fn new(name: &str, start_ms: u64) -> ScenarioResult {
        ScenarioResult {
            name: name.to_string(),
            verdict: "fail",
            detection_ms: None,
            promotion_ms: None,
            unavailable_ms: 0,
            lost_changes: 0,
            divergent_changes: 0,
            checksums_match: false,
            quarantined_writes: 0,
            writes_committed: 0,
            writes_failed: 0,
            old_active: None,
            new_active: None,
            epoch_before: None,
            epoch_after: None,
            promotion_budget_ms: None,
            start_ms,
            fault_ms: None,
            end_ms: start_ms,
            reasons: Vec::new(),
        }
    }

    /// Apply the verdict rules on top of reasons already recorded (errors
    /// while running the scenario).
    pub fn judge(&mut self) {
        if self.lost_changes > 0 {
            self.reasons.push(format!(
                "{} write(s) the writer saw commit are on no member and in no quarantine",
                self.lost_changes
            ));
        }
        if !self.checksums_match {
            self.reasons
                .push("the members' table checksums differ at the end".into());
        }
        match (self.promotion_ms, self.promotion_budget_ms) {
            (Some(p), Some(b)) if p > b => self
                .reasons
                .push(format!("promotion took {p} ms, over the {b} ms allowed")),
            (None, Some(_)) => self.reasons.push("no member was promoted".to_string()),
            _ => {}
        }
        self.reasons.dedup();
        self.verdict = if self.reasons.is_empty() {
            "pass"
        } else {
            "fail"
        };
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub mode: &'static str,
    pub backend: String,
    pub members: Vec<String>,
    pub witness: bool,
    pub heartbeat_ms: u64,
    pub lease_timeout_ms: u64,
    pub failover_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub verdict: &'static str,
    pub setup: Setup,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub scenarios: Vec<ScenarioResult>,
    /// Every scenario's failure reasons, prefixed with its name, plus
    /// drill-wide ones (two actives at once).
    pub reasons: Vec<String>,
    pub events: Vec<super::timeline::Event>,
    pub series: Series,
    /// The cluster's own record of the role changes (`GET /history` of the
    /// member holding the longest one), for comparison with the events.
    pub history: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub roles: Vec<super::timeline::RoleSample>,
    pub lag: Vec<super::timeline::LagSample>,
    pub writes: Vec<super::timeline::WriteBucket>,
}

impl Report {
    pub fn new(
        setup: Setup,
        started_at_ms: i64,
        duration_ms: u64,
        scenarios: Vec<ScenarioResult>,
        mut general: Vec<String>,
        rec: Recorded,
    ) -> Report {
        let mut reasons: Vec<String> = scenarios
            .iter()
            .flat_map(|s| s.reasons.iter().map(move |r| format!("{}: {r}", s.name)))
            .collect();
        reasons.append(&mut general);
        let pass = !scenarios.is_empty() && reasons.is_empty();
        Report {
            verdict: if pass { "pass" } else { "fail" },
            setup,
            started_at_ms,
            duration_ms,
            scenarios,
            reasons,
            events: rec.events,
            series: Series {
                roles: rec.roles,
                lag: rec.lag,
                writes: rec.writes,
            },
            history: serde_json::Value::Null,
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// The summary table and verdict for the terminal.
    pub fn summary(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        let header = [
            "SCENARIO",
            "RESULT",
            "DETECTION",
            "PROMOTION",
            "UNAVAILABLE",
            "LOST",
            "DIVERGENT",
            "CHECKSUMS",
            "WRITES",
            "ACTIVE",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for s in &self.scenarios {
            rows.push(vec![
                s.name.clone(),
                s.verdict.to_string(),
                ms(s.detection_ms),
                ms(s.promotion_ms),
                format!("{} ms", s.unavailable_ms),
                s.lost_changes.to_string(),
                s.divergent_changes.to_string(),
                if s.checksums_match { "match" } else { "DIFFER" }.to_string(),
                format!(
                    "{}/{}",
                    s.writes_committed,
                    s.writes_committed + s.writes_failed
                ),
                format!(
                    "{} -> {}",
                    s.old_active.as_deref().unwrap_or("?"),
                    s.new_active.as_deref().unwrap_or("?")
                ),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        let _ = writeln!(
            out,
            "\nverdict: {} ({} scenario(s), {} ms; {} members{} on {})",
            self.verdict.to_uppercase(),
            self.scenarios.len(),
            self.duration_ms,
            self.setup.members.len(),
            if self.setup.witness { " + witness" } else { "" },
            self.setup.backend
        );
        for r in &self.reasons {
            let _ = writeln!(out, "  - {r}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> ScenarioResult {
        let mut s = ScenarioResult::new(name, 0);
        s.promotion_ms = Some(1700);
        s.promotion_budget_ms = Some(2500);
        s.checksums_match = true;
        s
    }

    #[test]
    fn verdict_rules() {
        let mut s = ok("kill-active");
        s.judge();
        assert_eq!(s.verdict, "pass", "{:?}", s.reasons);

        let mut s = ok("switchover");
        s.lost_changes = 1;
        s.judge();
        assert_eq!(s.verdict, "fail");
        assert!(s.reasons[0].contains("1 write(s)"), "{:?}", s.reasons);

        let mut s = ok("kill-active");
        s.promotion_ms = Some(2501);
        s.judge();
        assert_eq!(s.verdict, "fail");

        let mut s = ok("kill-active");
        s.promotion_ms = None;
        s.judge();
        assert!(s.reasons.iter().any(|r| r.contains("no member")));

        let mut s = ok("x");
        s.checksums_match = false;
        s.judge();
        assert_eq!(s.verdict, "fail");
    }

    #[test]
    fn report_fails_on_any_reason_and_on_nothing_run() {
        let setup = Setup {
            mode: "local",
            backend: "sqlite".into(),
            members: vec!["a".into()],
            witness: false,
            heartbeat_ms: 1,
            lease_timeout_ms: 2,
            failover_timeout_ms: 3,
        };
        let mut s = ok("a");
        s.judge();
        let r = Report::new(
            setup.clone(),
            0,
            1,
            vec![s.clone()],
            vec![],
            Recorded::default(),
        );
        assert!(r.passed());
        let r = Report::new(
            setup.clone(),
            0,
            1,
            vec![s],
            vec!["two actives".into()],
            Recorded::default(),
        );
        assert!(!r.passed());
        let r = Report::new(setup, 0, 1, vec![], vec![], Recorded::default());
        assert!(!r.passed());
        assert!(r.summary().contains("FAIL"));
    }
}
