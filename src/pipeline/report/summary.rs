//! The end-of-run report: the facts (`Summary`, also the `--report` JSON) and their
//! text rendering. Both are pure functions of the journal, the run's statistics and
//! the remembered output lines, so the text can be snapshot-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::fmt;
use super::{ReportContext, RunStats};
use crate::infra::shell::quote;
use crate::infra::state_dir::{failed_list_path, log_path};
use crate::model::step::ErrorKind;
use crate::model::step::Step;
use crate::model::version::Build;
use crate::pipeline::journal::{Deployed, JournalData, RelayRecord, RelayState};

/// Version of the `--report` JSON schema (docs/report-schema.md).
pub const REPORT_VERSION: u32 = 1;

/// How long an error message may be in the text report.
const ERROR_WIDTH: usize = 160;

/// What happened to one relay, as far as this run is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Migrated in this run.
    Succeeded,
    /// Already migrated before this run: nothing was done.
    AlreadyDone,
    /// A step failed and was not retried (again).
    Failed,
    /// Started but neither done nor failed: the run was interrupted or halted.
    Incomplete,
    /// No step ever ran.
    NotStarted,
}

/// One thing the operator can run next, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextAction {
    pub command: String,
    pub why: String,
}

/// Everything the report says about one relay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelaySummary {
    pub relay: String,
    pub outcome: Outcome,
    pub state: RelayState,
    /// The failed step, or the step it stopped before; `None` when done or not started.
    pub step: Option<Step>,
    pub attempts: u32,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub down_since_ms: Option<u64>,
    pub up_again_ms: Option<u64>,
    /// Closed window (down to up again), or until the end of the run if still down.
    pub downtime_ms: Option<u64>,
    /// The chatmail relay commits steps 2 and 6 deployed on NEW (from the journal,
    /// so also those of earlier runs); `None` where not known.
    pub deployed: Deployed,
    pub log: PathBuf,
    /// The last lines of its output seen in this run (oldest first).
    pub last_output: Vec<String>,
    pub next: Vec<NextAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub selected: usize,
    pub succeeded: usize,
    pub already_done: usize,
    pub failed: usize,
    pub incomplete: usize,
    pub not_started: usize,
    /// Relays left DOWN (old disabled, new not active), whatever their outcome.
    pub down: usize,
}

/// Downtime of the relays migrated in this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DowntimeStats {
    pub relays: usize,
    pub min_ms: u64,
    pub median_ms: u64,
    pub max_ms: u64,
}

/// The facts of a finished run; serialised as-is for `--report FILE.json`.
/// A relay the run did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldRelay {
    pub relay: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub version: u32,
    /// The cmfleet that ran (and wrote this report).
    pub cmfleet: Build,
    pub inventory: PathBuf,
    pub state_dir: PathBuf,
    /// Where `failed.txt` is written (for `--limit @FILE`).
    pub failed_file: PathBuf,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub wall_time_ms: u64,
    /// Why the run stopped starting relays, if it did.
    pub halted: Option<String>,
    pub interrupted: bool,
    /// Relays the run did not start, and why (a safety gate: for example one that is
    /// DOWN in the journal and needs `--from-step` or `rollback`).
    pub held: Vec<HeldRelay>,
    pub counts: Counts,
    pub downtime: Option<DowntimeStats>,
    /// Every selected relay, in selection order.
    pub relays: Vec<RelaySummary>,
    /// The one-line advice that ends the text report.
    pub next: String,
}

impl Summary {
    /// Builds the facts from the journal; `last_lines` are the remembered output
    /// lines per relay.
    pub fn build(
        ctx: &ReportContext,
        journal: &JournalData,
        stats: &RunStats,
        last_lines: &BTreeMap<String, Vec<String>>,
    ) -> Summary {
        let empty = RelayRecord::new();
        let failed_file = failed_list_path(&ctx.state_dir);
        let inv = quote(&ctx.inventory.to_string_lossy());
        let relays: Vec<RelaySummary> = ctx
            .relays
            .iter()
            .map(|name| {
                let rec = journal.relays.get(name).unwrap_or(&empty);
                relay_summary(name, rec, stats, ctx, &inv, &failed_file, last_lines)
            })
            .collect();

        let mut counts = Counts {
            selected: relays.len(),
            ..Counts::default()
        };
        for r in &relays {
            match r.outcome {
                Outcome::Succeeded => counts.succeeded += 1,
                Outcome::AlreadyDone => counts.already_done += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Incomplete => counts.incomplete += 1,
                Outcome::NotStarted => counts.not_started += 1,
            }
            if r.state == RelayState::Down {
                counts.down += 1;
            }
        }
        let mut windows: Vec<u64> = relays
            .iter()
            .filter(|r| r.outcome == Outcome::Succeeded)
            .filter_map(|r| r.downtime_ms)
            .collect();
        windows.sort_unstable();
        let downtime = (!windows.is_empty()).then(|| DowntimeStats {
            relays: windows.len(),
            min_ms: windows[0],
            median_ms: median(&windows),
            max_ms: windows[windows.len() - 1],
        });
        let next = advice(
            &counts,
            &inv,
            &failed_file,
            stats.interrupted,
            ctx.until_step,
        );
        Summary {
            version: REPORT_VERSION,
            cmfleet: crate::model::version::THIS,
            inventory: ctx.inventory.clone(),
            state_dir: ctx.state_dir.clone(),
            failed_file,
            started_ms: stats.started_ms,
            ended_ms: stats.ended_ms,
            wall_time_ms: stats.ended_ms.saturating_sub(stats.started_ms),
            halted: stats.halted.clone(),
            interrupted: stats.interrupted,
            held: stats
                .held
                .iter()
                .map(|(relay, why)| HeldRelay {
                    relay: relay.clone(),
                    why: why.clone(),
                })
                .collect(),
            counts,
            downtime,
            relays,
            next,
        }
    }

    /// The relays that belong in `failed.txt`: started and not finished, so that
    /// `--limit @failed.txt` retries exactly those, each from where it stopped.
    pub fn failed_relays(&self) -> impl Iterator<Item = &RelaySummary> {
        self.relays
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed | Outcome::Incomplete))
    }

    /// The process exit code this run deserves (see `crate::model::exit`).
    pub fn exit_code(&self) -> i32 {
        let c = &self.counts;
        if self.interrupted {
            crate::model::exit::INTERRUPTED
        } else if c.succeeded + c.already_done == c.selected && self.held.is_empty() {
            crate::model::exit::OK
        } else {
            crate::model::exit::RELAYS_FAILED
        }
    }
}

fn median(sorted: &[u64]) -> u64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn relay_summary(
    name: &str,
    rec: &RelayRecord,
    stats: &RunStats,
    ctx: &ReportContext,
    inv: &str,
    failed_file: &std::path::Path,
    last_lines: &BTreeMap<String, Vec<String>>,
) -> RelaySummary {
    let state = rec.state();
    let failed = rec.failed_step();
    let reached_target = rec.next_step().is_none_or(|next| next > ctx.until_step);
    let outcome = match state {
        RelayState::Done if rec.up_again_ms.is_some_and(|t| t < stats.started_ms) => {
            Outcome::AlreadyDone
        }
        RelayState::Done => Outcome::Succeeded,
        _ if failed.is_some() => Outcome::Failed,
        _ if reached_target && state != RelayState::NotStarted => Outcome::Succeeded,
        RelayState::NotStarted => Outcome::NotStarted,
        _ => Outcome::Incomplete,
    };
    let step = match outcome {
        Outcome::Failed => failed,
        Outcome::Incomplete => rec.next_step(),
        _ => None,
    };
    let record = step.map(|s| rec.step(s));
    let downtime_ms = rec.down_since_ms.map(|start| {
        rec.up_again_ms
            .unwrap_or(stats.ended_ms)
            .saturating_sub(start)
    });
    let q = quote(name);
    let next = match (outcome, state) {
        (Outcome::Failed | Outcome::Incomplete, RelayState::Down) => vec![
            NextAction {
                command: format!("cmfleet migrate -i {inv} --limit {q}"),
                why: "finish the migration (it resumes where it stopped)".into(),
            },
            NextAction {
                command: format!("cmfleet rollback -i {inv} --limit {q}"),
                why: "or put it back on the old machine".into(),
            },
        ],
        (Outcome::Failed | Outcome::Incomplete, _) => vec![NextAction {
            command: format!(
                "cmfleet migrate -i {inv} --limit {}",
                quote(&format!("@{}", failed_file.display()))
            ),
            why: if outcome == Outcome::Failed {
                "fix the cause, then retry the failed relays".into()
            } else {
                "resume the unfinished relays".into()
            },
        }],
        _ => Vec::new(),
    };
    RelaySummary {
        relay: name.to_string(),
        outcome,
        state,
        step,
        attempts: record.map_or(0, |r| r.attempts),
        error: record.and_then(|r| r.error.clone()),
        error_kind: record.and_then(|r| r.error_kind),
        down_since_ms: rec.down_since_ms,
        up_again_ms: rec.up_again_ms,
        downtime_ms,
        deployed: rec.deployed.clone(),
        log: log_path(&ctx.state_dir, name),
        last_output: last_lines.get(name).cloned().unwrap_or_default(),
        next,
    }
}

fn advice(
    c: &Counts,
    inv: &str,
    failed_file: &std::path::Path,
    interrupted: bool,
    until: Step,
) -> String {
    let retry = format!(
        "cmfleet migrate -i {inv} --limit {}",
        quote(&format!("@{}", failed_file.display()))
    );
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    // In order of urgency: relays users cannot reach, then failures, then the rest.
    let mut todo = Vec::new();
    if c.down > 0 {
        todo.push(format!(
            "{} relay{} DOWN: finish (migrate) or roll back each one first, with the commands above",
            c.down,
            if c.down == 1 { " is" } else { "s are" }
        ));
    }
    let others = c.failed + c.incomplete - c.down.min(c.failed + c.incomplete);
    if others > 0 {
        let which = if c.down > 0 {
            "the other failures"
        } else {
            "the causes above"
        };
        todo.push(format!("fix {which} and run: {retry}"));
    }
    if c.not_started > 0 {
        let why = if interrupted {
            "interrupted"
        } else {
            "stopped early"
        };
        todo.push(format!(
            "the run {why}: `cmfleet migrate -i {inv}` continues with the {} relay{} not started",
            c.not_started,
            plural(c.not_started)
        ));
    }
    if todo.is_empty() && until < Step::Activate {
        format!(
            "every selected relay reached step {until}; when the time comes, cut over with: cmfleet migrate -i {inv}"
        )
    } else if todo.is_empty() {
        "nothing: every selected relay is migrated.".to_string()
    } else {
        todo.join("; then ")
    }
}

const RED: &str = "\u{1b}[1;31m";
const YELLOW: &str = "\u{1b}[33m";
const BOLD: &str = "\u{1b}[1m";
const RESET: &str = "\u{1b}[0m";

/// Paints `s` when colour is on.
fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("{code}{s}{RESET}")
    } else {
        s.to_string()
    }
}

/// The text report. `color` adds ANSI colours (only for a terminal, or when asked).
pub fn render_text(s: &Summary, color: bool) -> String {
    let mut out = String::new();
    let c = &s.counts;
    let _ = writeln!(
        out,
        "{} {} relay{} in {}",
        paint(color, BOLD, "cmfleet run finished:"),
        c.selected,
        if c.selected == 1 { "" } else { "s" },
        fmt::duration_ms(s.wall_time_ms)
    );
    let rows = [
        ("succeeded", c.succeeded),
        ("already done", c.already_done),
        ("failed", c.failed),
        ("unfinished", c.incomplete),
        ("not started", c.not_started),
    ];
    for (label, n) in rows {
        if n > 0 || matches!(label, "succeeded" | "failed") {
            let mut line = format!("  {label:<13}{n:>5}");
            if label == "failed" && c.down > 0 {
                line = paint(color, RED, &format!("{line}   ({} left DOWN)", c.down));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(d) = &s.downtime {
        let _ = writeln!(
            out,
            "downtime ({} relay{} migrated in this run): min {}, median {}, max {}",
            d.relays,
            if d.relays == 1 { "" } else { "s" },
            fmt::duration_ms(d.min_ms),
            fmt::duration_ms(d.median_ms),
            fmt::duration_ms(d.max_ms)
        );
    }
    if s.interrupted {
        let _ = writeln!(
            out,
            "interrupted: relays in flight were stopped where they stood"
        );
    }
    if let Some(reason) = &s.halted {
        let _ = writeln!(out, "stopped early: {reason}");
    }
    for h in &s.held {
        let _ = writeln!(
            out,
            "{} {}: {}",
            paint(color, RED, "held back:"),
            h.relay,
            h.why
        );
    }

    // DOWN relays first: users of those cannot get mail until someone acts.
    let down: Vec<&RelaySummary> = s
        .failed_relays()
        .filter(|r| r.state == RelayState::Down)
        .collect();
    let up: Vec<&RelaySummary> = s
        .failed_relays()
        .filter(|r| r.state != RelayState::Down)
        .collect();
    if !down.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            paint(
                color,
                RED,
                "LEFT DOWN (old disabled, new not active: users cannot get mail)"
            )
        );
        for r in down {
            render_relay(&mut out, r, color);
        }
    }
    if !up.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            paint(
                color,
                YELLOW,
                "NOT MIGRATED (stopped before cutover: the old machine still serves mail)"
            )
        );
        for r in up {
            render_relay(&mut out, r, color);
        }
    }
    let _ = writeln!(
        out,
        "\n{} {}",
        paint(color, BOLD, "what to do next:"),
        s.next
    );
    out
}

fn render_relay(out: &mut String, r: &RelaySummary, color: bool) {
    let state = match r.state {
        RelayState::Down => format!(
            "DOWN for {}",
            r.downtime_ms.map_or("?".into(), fmt::duration_ms)
        ),
        RelayState::Staged => "staged, old machine active".into(),
        RelayState::NotStarted => "not started".into(),
        RelayState::Done => "done".into(),
    };
    let head = format!("✗ {}  {}", r.relay, state);
    let code = if r.state == RelayState::Down {
        RED
    } else {
        BOLD
    };
    let _ = writeln!(out, "{}", paint(color, code, &head));
    if let Some(step) = r.step {
        let verb = if r.outcome == Outcome::Failed {
            "failed at"
        } else {
            "stopped before"
        };
        let kind = r
            .error_kind
            .map_or(String::new(), |k| format!(" ({})", kind_name(k)));
        let attempts = match r.attempts {
            0 => String::new(),
            1 => ", 1 attempt".into(),
            n => format!(", {n} attempts"),
        };
        let _ = writeln!(out, "    step    {verb} {step}{attempts}{kind}");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "    error   {}", fmt::one_line(e, ERROR_WIDTH));
    }
    for (i, line) in r.last_output.iter().enumerate() {
        let label = if i == 0 { "output" } else { "" };
        let _ = writeln!(out, "    {label:<7} | {line}");
    }
    let _ = writeln!(out, "    log     {}", r.log.display());
    // The reason on its own line keeps the command whole for copy and paste.
    for (i, a) in r.next.iter().enumerate() {
        let label = if i == 0 { "next" } else { "" };
        let _ = writeln!(out, "    {label:<7} {}:", a.why);
        let _ = writeln!(out, "              {}", a.command);
    }
}

pub(crate) fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::Transient => "transient",
        ErrorKind::Permanent => "permanent",
        ErrorKind::Interrupted => "interrupted",
    }
}
