//! Time for the reporter, injectable so that rendered output can be snapshot-tested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::pipeline::journal::now_ms;

/// Where the reporter gets "now" from.
pub trait Clock: Send {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// `HH:MM:SS` of the instant `ms`, as the operator reads clocks.
    fn time_of_day(&self, ms: u64) -> String;
}

/// The real clock; times of day in UTC.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    /// In UTC, like the journal and the reports: a fleet spans time zones, and an
    /// operator comparing a live line with a host's log or a report needs one clock.
    fn time_of_day(&self, ms: u64) -> String {
        hms((ms / 1000) as i64)
    }
}

/// A clock that only moves when told to; clones share the same time. For tests and
/// for replaying recorded events.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    /// Shared so the test can advance the clock the reporter owns.
    ms: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }

    /// In UTC, so snapshots do not depend on the machine's time zone.
    fn time_of_day(&self, ms: u64) -> String {
        hms((ms / 1000) as i64)
    }
}

fn hms(secs: i64) -> String {
    let s = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_formats_utc() {
        let c = ManualClock::new(((23 * 3600 + 59 * 60 + 58) * 1000) as u64);
        assert_eq!(c.time_of_day(c.now_ms()), "23:59:58");
        c.advance(std::time::Duration::from_secs(3));
        assert_eq!(c.time_of_day(c.now_ms()), "00:00:01");
    }
}
