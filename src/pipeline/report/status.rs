//! `cmfleet status`: the journal as a table or as JSON, for the selected relays.

use std::fmt::Write as _;

use serde::Serialize;

use super::fmt;
use super::summary::kind_name;
use super::ReportError;
use crate::model::step::ErrorKind;
use crate::model::step::Step;
use crate::pipeline::journal::{
    now_ms, Deployed, JournalData, RelayRecord, RelayState, StepStatus,
};

/// How wide the error column may grow before it is cut.
const ERROR_WIDTH: usize = 70;

/// One relay's line of `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusRow {
    pub relay: String,
    pub state: RelayState,
    /// The step it is at: failed, running, or the next to run; `None` when done or
    /// not started.
    pub step: Option<Step>,
    pub step_status: Option<StepStatus>,
    pub attempts: u32,
    pub down_since_ms: Option<u64>,
    pub up_again_ms: Option<u64>,
    /// Downtime so far (still running for a relay that is DOWN).
    pub downtime_ms: Option<u64>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub rollbacks: usize,
    /// The chatmail relay commits steps 2 and 6 deployed on NEW; `None` where not known.
    pub deployed: Deployed,
}

/// The rows for `relays` (in the given order) as of `now_ms`; relays the journal does
/// not know have not started.
pub fn status_rows(journal: &JournalData, relays: &[&str], now_ms: u64) -> Vec<StatusRow> {
    let empty = RelayRecord::new();
    relays
        .iter()
        .map(|name| {
            let rec = journal.relays.get(*name).unwrap_or(&empty);
            let state = rec.state();
            let step = match state {
                RelayState::Done | RelayState::NotStarted => None,
                _ => rec
                    .failed_step()
                    .or_else(|| {
                        Step::ALL
                            .into_iter()
                            .find(|s| rec.step(*s).status == StepStatus::Running)
                    })
                    .or_else(|| rec.next_step()),
            };
            let record = step.map(|s| rec.step(s));
            StatusRow {
                relay: name.to_string(),
                state,
                step,
                step_status: record.map(|r| r.status),
                attempts: record.map_or(0, |r| r.attempts),
                down_since_ms: rec.down_since_ms,
                up_again_ms: rec.up_again_ms,
                downtime_ms: rec
                    .down_since_ms
                    .map(|s| rec.up_again_ms.unwrap_or(now_ms).saturating_sub(s)),
                error: record.and_then(|r| r.error.clone()),
                error_kind: record.and_then(|r| r.error_kind),
                rollbacks: rec.rollbacks.len(),
                deployed: rec.deployed.clone(),
            }
        })
        .collect()
}

/// `cmfleet status`'s exit code: `RELAYS_FAILED` when a selected relay is DOWN (its
/// users get no mail, also while a running `migrate` is inside its cutover: the journal
/// cannot tell that from a run that died there) or its last attempt at a step failed
/// (OLD may still serve, but `migrate` must run again for it, and `migrate` would have
/// exited 2); `OK` while every selected relay is done, not started, or staged with
/// nothing failed, so a script can tell trouble from a fleet still on its way.
pub fn status_exit_code(journal: &JournalData, relays: &[&str]) -> i32 {
    let trouble = status_rows(journal, relays, now_ms())
        .iter()
        .any(|r| r.state == RelayState::Down || r.step_status == Some(StepStatus::Failed));
    if trouble {
        crate::model::exit::RELAYS_FAILED
    } else {
        crate::model::exit::OK
    }
}

/// The journal as a table for `cmfleet status` (downtimes of DOWN relays up to now).
pub fn status_table(journal: &JournalData, relays: &[&str]) -> String {
    status_table_at(journal, relays, now_ms())
}

/// `status_table` as of `now_ms`: a pure function, for tests.
pub fn status_table_at(journal: &JournalData, relays: &[&str], now_ms: u64) -> String {
    let rows = status_rows(journal, relays, now_ms);
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.relay.clone(),
                match (r.step, r.step_status) {
                    (Some(s), Some(st)) => format!("{s} ({})", status_name(st)),
                    _ => "-".into(),
                },
                state_name(r.state).into(),
                if r.attempts == 0 {
                    "-".into()
                } else {
                    r.attempts.to_string()
                },
                match (r.downtime_ms, r.state) {
                    (Some(ms), RelayState::Down) => format!("{} so far", fmt::duration_ms(ms)),
                    (Some(ms), _) => fmt::duration_ms(ms),
                    (None, _) => "-".into(),
                },
                fmt::deployed(&r.deployed),
                match (&r.error, r.error_kind) {
                    (Some(e), Some(k)) => {
                        format!("{}: {}", kind_name(k), fmt::one_line(e, ERROR_WIDTH))
                    }
                    (Some(e), None) => fmt::one_line(e, ERROR_WIDTH),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    let header = [
        "RELAY",
        "STEP",
        "STATE",
        "ATTEMPTS",
        "DOWNTIME",
        "DEPLOYED",
        "LAST ERROR",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 7]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(header);
    for row in &cells {
        line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6],
        ]);
    }
    let count = |st: RelayState| rows.iter().filter(|r| r.state == st).count();
    let _ = writeln!(
        out,
        "{} relays: {} done, {} DOWN, {} staged, {} not started",
        rows.len(),
        count(RelayState::Done),
        count(RelayState::Down),
        count(RelayState::Staged),
        count(RelayState::NotStarted)
    );
    out
}

/// The journal as JSON for `cmfleet status --format json`: `{"version":1,"relays":[...]}`.
pub fn status_json(journal: &JournalData, relays: &[&str]) -> Result<String, ReportError> {
    status_json_at(journal, relays, now_ms())
}

pub fn status_json_at(
    journal: &JournalData,
    relays: &[&str],
    now_ms: u64,
) -> Result<String, ReportError> {
    #[derive(Serialize)]
    struct Status {
        version: u32,
        /// The cmfleet reading the journal (the report of each run names the one
        /// that ran it).
        cmfleet: crate::model::version::Build,
        now_ms: u64,
        relays: Vec<StatusRow>,
    }
    serde_json::to_string_pretty(&Status {
        version: super::summary::REPORT_VERSION,
        cmfleet: crate::model::version::THIS,
        now_ms,
        relays: status_rows(journal, relays, now_ms),
    })
    .map_err(|source| ReportError::Json {
        what: "the status",
        source,
    })
}

pub(crate) fn state_name(s: RelayState) -> &'static str {
    match s {
        RelayState::NotStarted => "not started",
        RelayState::Staged => "staged",
        RelayState::Down => "DOWN",
        RelayState::Done => "done",
    }
}

fn status_name(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "next",
        StepStatus::Running => "running",
        StepStatus::Done => "done",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}
