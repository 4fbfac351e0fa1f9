//! Reconnect policy: exponential backoff with jitter.
//!
//! Owns: the delay before the next reconnect attempt. Wraps the `backoff`
//! crate behind this one small type so it can be replaced without touching
//! callers.
//! Must never: give up (a replication link retries for as long as the agent
//! runs), or return a delay above the configured maximum.

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use std::time::Duration;

/// Each delay is drawn from ±`JITTER` around the current interval, so members
/// that lost the same peer at the same moment do not retry in lockstep.
const JITTER: f64 = 0.5;
const MULTIPLIER: f64 = 2.0;

#[derive(Debug)]
pub struct Retry {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Retry {
    /// Delays start around `initial` and double up to `max` (jitter
    /// included: no delay exceeds `max`).
    pub fn new(initial: Duration, max: Duration) -> Retry {
        let max = max.max(initial);
        // The jittered delay reaches interval * (1 + JITTER); cap the
        // interval so that stays within `max`.
        let interval_cap = max.div_f64(1.0 + JITTER).max(Duration::from_millis(1));
        let mut inner = ExponentialBackoff {
            current_interval: initial,
            initial_interval: initial,
            randomization_factor: JITTER,
            multiplier: MULTIPLIER,
            max_interval: interval_cap,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        inner.reset();
        Retry { inner, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Without an elapsed-time limit the policy never gives up; should it
        // ever, keep retrying at the maximum.
        self.inner.next_backoff().unwrap_or(self.max).min(self.max)
    }

    /// After a connection succeeded (and stayed up): start small again.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

impl Default for Retry {
    /// 100 ms, doubling up to 5 s.
    fn default() -> Self {
        Retry::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_stay_under_the_cap_and_reset() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut r = Retry::new(initial, max);
        let delays: Vec<Duration> = (0..30).map(|_| r.next_delay()).collect();
        let first = delays[0];
        assert!(
            first >= initial.mul_f64(1.0 - JITTER) && first <= initial.mul_f64(1.0 + JITTER),
            "{first:?}"
        );
        assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
        // Grows: late delays are well above the start (the interval is at its
        // cap by then, and the smallest jittered value of the cap is
        // 2s / 1.5 * 0.5 = 667 ms).
        assert!(
            delays[10..]
                .iter()
                .all(|d| *d >= Duration::from_millis(600)),
            "{delays:?}"
        );
        // Jitter: not all the capped delays are equal.
        assert!(delays[10..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");

        r.reset();
        let again = r.next_delay();
        assert!(again <= initial.mul_f64(1.0 + JITTER), "{again:?}");
    }

    #[test]
    fn a_maximum_below_the_initial_delay_is_raised_to_it() {
        let mut r = Retry::new(Duration::from_millis(300), Duration::from_millis(10));
        for _ in 0..10 {
            assert!(r.next_delay() <= Duration::from_millis(300));
        }
    }
}
