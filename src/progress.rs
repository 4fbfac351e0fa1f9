//! A one-line progress bar on stderr for CLI commands that run long (a
//! snapshot pulled by `understudy resnapshot`).
//!
//! Owns: drawing, and the decision to draw only when stderr is a terminal.
//! Must never: write to stdout (it carries the command's result), or draw
//! into a file or pipe (logs stay clean; the agent logs progress lines
//! instead).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Bar {
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Bar {
    /// A bar that draws only when stderr is a terminal.
    pub fn stderr() -> Bar {
        Bar {
            enabled: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    /// Redraw (at most ten times a second): `done` of `total` rows, `bytes`
    /// so far, `rate` rows/s.
    pub fn update(&mut self, done: u64, total: u64, bytes: u64, rate: f64) {
        if !self.enabled {
            return;
        }
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            && done < total
        {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30usize;
        let frac = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        };
        let filled = (frac * width as f64).round() as usize;
        let line = format!(
            "\r[{}{}] {:>5.1}% {done}/{total} rows  {:.1} MB  {:.0} rows/s ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            bytes as f64 / 1e6,
            rate
        );
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(line.as_bytes());
        let _ = e.flush();
        self.drawn = true;
    }

    /// End the bar's line.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = std::io::stderr().write_all(b"\n");
            self.drawn = false;
        }
    }
}
