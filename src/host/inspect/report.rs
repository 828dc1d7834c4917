//! Results of `check` and `verify`: one row per check, per relay; a table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::model::exit;

/// How a check came out. Ordered: the worst status of a relay is its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check of one relay, with the reason for its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short name, e.g. `ssh new`, `disk new`, `dns ttl`.
    pub check: String,
    pub status: Status,
    pub reason: String,
    /// A retry may help (a refused connection, a DNS timeout): preflight then
    /// lets the scheduler retry instead of refusing the relay for good.
    #[serde(skip)]
    pub transient: bool,
}

impl Finding {
    pub fn new(check: &str, status: Status, reason: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            status,
            reason: reason.into(),
            transient: false,
        }
    }
    pub fn pass(check: &str, reason: impl Into<String>) -> Finding {
        Finding::new(check, Status::Pass, reason)
    }
    pub fn warn(check: &str, reason: impl Into<String>) -> Finding {
        Finding::new(check, Status::Warn, reason)
    }
    pub fn fail(check: &str, reason: impl Into<String>) -> Finding {
        Finding::new(check, Status::Fail, reason)
    }
}

/// Every finding of one relay, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayFindings {
    pub relay: String,
    /// The worst status among the findings.
    pub status: Status,
    pub findings: Vec<Finding>,
}

impl RelayFindings {
    pub fn new(relay: &str, findings: Vec<Finding>) -> RelayFindings {
        RelayFindings {
            relay: relay.to_string(),
            status: findings
                .iter()
                .map(|f| f.status)
                .max()
                .unwrap_or(Status::Pass),
            findings,
        }
    }

    /// The failed findings.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.status == Status::Fail)
    }
}

/// 0 when nothing failed (warnings are fine), 2 when some relay failed a check.
pub fn exit_code(results: &[RelayFindings]) -> i32 {
    if results.iter().any(|r| r.status == Status::Fail) {
        exit::RELAYS_FAILED
    } else {
        exit::OK
    }
}

/// The table: a line per check, relays in the given order, then a summary with
/// every failure named again (relay and reason) so it is never lost in a long table.
pub fn render_text(what: &str, results: &[RelayFindings]) -> String {
    let width = results
        .iter()
        .flat_map(|r| r.findings.iter().map(|f| f.check.len()))
        .max()
        .unwrap_or(5);
    let mut s = String::new();
    for r in results {
        let _ = writeln!(s, "{}  [{}]", r.relay, r.status.label());
        for f in &r.findings {
            let _ = writeln!(
                s,
                "  {:<4}  {:<width$}  {}",
                f.status.label(),
                f.check,
                f.reason
            );
        }
    }
    let count = |st: Status| results.iter().filter(|r| r.status == st).count();
    let _ = writeln!(
        s,
        "\n{what}: {} relay(s): {} pass, {} with warnings, {} failed",
        results.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    );
    for r in results {
        for f in r.failures() {
            let _ = writeln!(s, "  FAIL {}: {}: {}", r.relay, f.check, f.reason);
        }
    }
    s
}

/// JSON: `{"relays": [...], "failed": N}`.
pub fn render_json(results: &[RelayFindings]) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Out<'a> {
        relays: &'a [RelayFindings],
        failed: usize,
    }
    serde_json::to_string_pretty(&Out {
        relays: results,
        failed: results.iter().filter(|r| r.status == Status::Fail).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_status_and_exit_code() {
        let ok = RelayFindings::new(
            "a",
            vec![Finding::pass("x", "fine"), Finding::warn("y", "hm")],
        );
        assert_eq!(ok.status, Status::Warn);
        assert_eq!(exit_code(std::slice::from_ref(&ok)), exit::OK);
        let bad = RelayFindings::new("b", vec![Finding::fail("disk new", "too small")]);
        assert_eq!(exit_code(&[ok.clone(), bad.clone()]), exit::RELAYS_FAILED);
        let text = render_text("check", &[ok, bad]);
        assert!(text.contains("FAIL b: disk new: too small"), "{text}");
        assert!(text.contains("1 with warnings, 1 failed"), "{text}");
    }
}
