//! The plain view: one timestamped line per meaningful event, no escape codes, for
//! log files and CI. Raw output lines are left to the per-relay log files; progress
//! is throttled so 200 syncing relays do not flood the log.

use std::collections::HashMap;

use super::clock::Clock;
use super::fmt;
use super::summary::kind_name;
use super::Out;
use crate::model::events::{Event, WaitReason};
use crate::model::step::Step;
use crate::pipeline::journal::{JournalData, RelayState};

/// At most one progress line per relay this often...
const PROGRESS_EVERY_MS: u64 = 5_000;
/// ...unless a new quarter of the transfer is reached.
const PROGRESS_QUARTER: u8 = 25;
/// Errors are cut to this many characters (the full text is in the log and journal).
const ERROR_WIDTH: usize = 200;

#[derive(Default)]
struct RelayLine {
    /// When the last progress line of the current step was printed.
    progress_ms: Option<u64>,
    /// Quarter of the transfer (0 to 4) shown last.
    quarter: u8,
    /// The reason printed last, so a repeated `Waiting` is not printed again.
    waiting: Option<WaitReason>,
    /// When the relay's downtime began: the journal's (preloaded from an earlier run,
    /// or when this run recorded OLD's disabling), else when its cutover step started.
    down_since_ms: Option<u64>,
    /// `down_since_ms` is the journal's, so a later step 3 attempt keeps it, as the
    /// journal does: the summary counts from the same moment.
    down_recorded: bool,
}

#[derive(Default)]
pub(crate) struct PlainView {
    relays: HashMap<String, RelayLine>,
}

impl PlainView {
    fn relay(&mut self, name: &str) -> &mut RelayLine {
        self.relays.entry(name.to_string()).or_default()
    }

    /// Relays left DOWN by an earlier run: their downtime began then, not when this
    /// run resumes them.
    pub(crate) fn preload(&mut self, journal: &JournalData) {
        for (name, rec) in &journal.relays {
            if let (RelayState::Down, Some(since)) = (rec.state(), rec.down_since_ms) {
                let r = self.relay(name);
                r.down_since_ms = Some(since);
                r.down_recorded = true;
            }
        }
    }

    pub(crate) fn handle(&mut self, ev: &Event, now: u64, clock: &dyn Clock, out: &mut Out) {
        let ts = || clock.time_of_day(now);
        match ev {
            Event::RunStarted { relays } => {
                out.line(&format!(
                    "{} run started: {relays} relay{}",
                    ts(),
                    plural(*relays)
                ));
            }
            Event::Waiting { relay, reason } => {
                let r = self.relay(relay);
                if r.waiting.as_ref() != Some(reason) {
                    r.waiting = Some(reason.clone());
                    out.line(&format!("{} {relay}: waiting: {reason}", ts()));
                }
            }
            Event::StepStarted {
                relay,
                step,
                attempt,
            } => {
                let r = self.relay(relay);
                r.waiting = None;
                r.progress_ms = None;
                r.quarter = 0;
                if step.in_cutover() && r.down_since_ms.is_none() {
                    r.down_since_ms = Some(now);
                }
                let again = if *attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                let down = if *step == Step::DisableOld {
                    ": the relay goes DOWN"
                } else {
                    ""
                };
                out.line(&format!("{} {relay} {step}: started{again}{down}", ts()));
            }
            Event::Output { .. } => {}
            Event::Progress {
                relay,
                step,
                bytes,
                percent,
                rate,
            } => {
                let r = self.relay(relay);
                let quarter = (*percent).min(100) / PROGRESS_QUARTER;
                // rsync's first update (nothing moved yet) says no more than "started".
                let due = *bytes > 0
                    && match r.progress_ms {
                        None => true,
                        Some(t) => {
                            now.saturating_sub(t) >= PROGRESS_EVERY_MS || quarter > r.quarter
                        }
                    };
                if due {
                    r.progress_ms = Some(now);
                    r.quarter = quarter;
                    out.line(&format!(
                        "{} {relay} {step}: {percent}% {} {rate}",
                        ts(),
                        fmt::bytes(*bytes)
                    ));
                }
            }
            Event::StepDone {
                relay,
                step,
                elapsed,
                note,
                ..
            } => {
                let r = self.relay(relay);
                r.waiting = None;
                let msg = match note {
                    Some(n) => format!("done in {} ({n})", fmt::duration(*elapsed)),
                    None => format!("done in {}", fmt::duration(*elapsed)),
                };
                out.line(&format!("{} {relay} {step}: {msg}", ts()));
                if *step == Step::Activate {
                    r.down_recorded = false;
                    let down = r
                        .down_since_ms
                        .take()
                        .map(|t| format!(" (down for {})", fmt::duration_ms(now.saturating_sub(t))))
                        .unwrap_or_default();
                    out.line(&format!("{} {relay}: migrated{down}", ts()));
                }
            }
            Event::StepFailed {
                relay,
                step,
                attempt,
                kind,
                error,
                will_retry,
            } => {
                let r = self.relay(relay);
                r.waiting = None;
                let then = if *will_retry {
                    "; will retry"
                } else if r.down_since_ms.is_some() {
                    "; the relay is left DOWN"
                } else {
                    ""
                };
                out.line(&format!(
                    "{} {relay} {step}: FAILED (attempt {attempt}, {}): {}{then}",
                    ts(),
                    kind_name(*kind),
                    fmt::one_line(error, ERROR_WIDTH)
                ));
            }
            Event::OldStillServing { relay } => {
                let r = self.relay(relay);
                r.down_since_ms = None;
                r.down_recorded = false;
                out.line(&format!(
                    "{} {relay}: the old host still accepts mail: the relay is not down",
                    ts()
                ));
            }
            // Shown by the step it belongs to; the downtime starts here, as in the
            // journal (step 3's preflight and hook leave OLD serving).
            Event::ServingChange { relay, change } => {
                let r = self.relay(relay);
                if change.disables_old().is_some() && !r.down_recorded {
                    r.down_since_ms = Some(now);
                    r.down_recorded = true;
                }
            }
            Event::Halted { reason } => {
                out.line(&format!("{} run halted: {reason}", ts()));
            }
            Event::RunFinished { elapsed } => {
                out.line(&format!(
                    "{} run finished in {}",
                    ts(),
                    fmt::duration(*elapsed)
                ));
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
