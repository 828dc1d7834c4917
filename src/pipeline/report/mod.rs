//! The reporter: the only part of cmfleet that prints while a run is going on.
//!
//! The engine sends `Event`s; `Reporter::handle` draws them in one of three views
//! (live bars on a terminal, plain timestamped lines for logs and CI, JSON lines for
//! scripts) and remembers the last output lines of every relay. `Reporter::finish`
//! prints the end-of-run report, always, and writes `failed.txt`.
//!
//! Everything a test wants to pin down (the report text, `status`) is a pure
//! function of the journal and the run's statistics; the clock is injectable.

mod clock;
mod files;
pub mod fmt;
pub mod html;
mod json_lines;
mod live;
mod plain;
mod status;
mod summary;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use thiserror::Error;

pub use crate::infra::state_dir::{failed_list_path, log_path};
pub use clock::{Clock, ManualClock, SystemClock};
pub use files::{write_atomic, write_failed_list, write_json_report};
pub use status::{
    status_exit_code, status_json, status_json_at, status_rows, status_table, status_table_at,
    StatusRow,
};
pub use summary::{
    render_text, Counts, DowntimeStats, NextAction, Outcome, RelaySummary, Summary, REPORT_VERSION,
};

use crate::model::events::Event;
use crate::model::step::ErrorKind;
use crate::model::step::Step;
use crate::pipeline::journal::JournalData;

/// Output lines kept per relay for the final report.
const LAST_LINES: usize = 10;
/// Longest output line kept (characters): the report is not a log file.
const LINE_WIDTH: usize = 300;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot write the report to the terminal or output: {source}")]
    Output { source: io::Error },
    #[error("cannot render {what} as JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// How progress is shown while a run is going on (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Live on a terminal, plain otherwise.
    #[default]
    Auto,
    /// Bars redrawn in place (indicatif).
    Live,
    /// One timestamped line per event, no escape codes.
    Plain,
    /// One JSON object per event per line; the report is the last line.
    Json,
}

/// What the reporter must know about the run besides its events.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportContext {
    /// The inventory file, as the operator gave it (it appears in next commands).
    pub inventory: PathBuf,
    /// The selected relays' names, in inventory order.
    pub relays: Vec<String>,
    /// The fleet's state directory (logs, `failed.txt`).
    pub state_dir: PathBuf,
    /// The last step this run was asked to reach (`--until-step`): a relay that got
    /// there succeeded, even if it is not migrated yet (pre-staging).
    pub until_step: crate::model::step::Step,
}

/// Facts about the run that the journal does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// Why the run stopped starting relays (max_fail_percent, Ctrl-C), if it did.
    pub halted: Option<String>,
    /// Stopped by Ctrl-C (exit code 130).
    pub interrupted: bool,
    /// Relays the run did not start, and why (a safety gate, or not in the inventory).
    pub held: Vec<(String, String)>,
}

/// What `finish` leaves: the facts, and what went wrong while reporting them.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    /// `failed.txt`, if it could be written.
    pub failed_list: Option<PathBuf>,
    /// Problems writing the report or `failed.txt`; the run's outcome stands.
    pub errors: Vec<ReportError>,
}

impl Finished {
    pub fn exit_code(&self) -> i32 {
        self.summary.exit_code()
    }
}

/// Where text goes. Remembers the first write error instead of failing: a closed
/// terminal must not stop a migration half-way.
pub(crate) struct Out {
    w: io::BufWriter<Box<dyn Write + Send>>,
    error: Option<io::Error>,
}

impl Out {
    fn new(w: Box<dyn Write + Send>) -> Out {
        Out {
            w: io::BufWriter::new(w),
            error: None,
        }
    }

    pub(crate) fn line(&mut self, s: &str) {
        if self.error.is_none() {
            if let Err(e) = self
                .w
                .write_all(s.as_bytes())
                .and_then(|()| self.w.write_all(b"\n"))
            {
                self.error = Some(e);
            }
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.w.flush() {
                self.error = Some(e);
            }
        }
    }
}

/// A writer shared between the live view's draw target and the final report.
#[derive(Clone)]
pub(crate) struct SharedWriter(pub(crate) Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut w) => w.write(buf),
            Err(_) => Err(io::Error::other("output lock poisoned")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Err(io::Error::other("output lock poisoned")),
        }
    }
}

enum View {
    Live(Box<live::LiveView>),
    Plain(plain::PlainView),
    Json,
}

/// Consumes the engine's events and owns all output of a run.
pub struct Reporter {
    ctx: ReportContext,
    clock: Box<dyn Clock>,
    /// ANSI colours in the final report.
    color: bool,
    view: View,
    out: Out,
    /// Last output lines per relay (sanitised), oldest first, of its latest step:
    /// the lines of the step that failed, not the noise of the steps before.
    last_lines: HashMap<String, (Step, VecDeque<String>)>,
    started_ms: u64,
    halted: Option<String>,
    interrupted: bool,
}

impl Reporter {
    /// A reporter printing to stdout; `Auto` is live on a terminal, plain otherwise.
    /// Colours are on for a terminal unless `NO_COLOR` is set.
    pub fn new(mode: ProgressMode, ctx: ReportContext) -> Reporter {
        let tty = io::stdout().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let mode = match mode {
            ProgressMode::Auto if tty => ProgressMode::Live,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let (view, out) = match mode {
            ProgressMode::Live => (
                View::Live(Box::new(live::LiveView::stdout(&ctx, color))),
                Out::new(Box::new(io::stdout())),
            ),
            m => (Self::text_view(m), Out::new(Box::new(io::stdout()))),
        };
        Self::assemble(ctx, view, out, color)
    }

    /// A reporter writing to `out` (tests, benchmarks, a log file). `Auto` is plain:
    /// a writer is not a terminal. Live draws at a fixed width of 100 columns.
    pub fn with_writer(
        mode: ProgressMode,
        ctx: ReportContext,
        out: Box<dyn Write + Send>,
    ) -> Reporter {
        match mode {
            ProgressMode::Live => {
                let shared = SharedWriter(Arc::new(Mutex::new(out)));
                let view = View::Live(Box::new(live::LiveView::writer(
                    &ctx,
                    shared.clone(),
                    false,
                )));
                Self::assemble(ctx, view, Out::new(Box::new(shared)), false)
            }
            m => Self::assemble(ctx, Self::text_view(m), Out::new(out), false),
        }
    }

    fn text_view(mode: ProgressMode) -> View {
        match mode {
            ProgressMode::Json => View::Json,
            _ => View::Plain(plain::PlainView::default()),
        }
    }

    fn assemble(ctx: ReportContext, view: View, out: Out, color: bool) -> Reporter {
        let clock: Box<dyn Clock> = Box::new(SystemClock);
        Reporter {
            started_ms: clock.now_ms(),
            ctx,
            clock,
            color,
            view,
            out,
            last_lines: HashMap::new(),
            halted: None,
            interrupted: false,
        }
    }

    /// Replaces the clock (fixed timestamps for snapshots, replays).
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Reporter {
        self.started_ms = clock.now_ms();
        self.clock = Box::new(clock);
        self
    }

    /// Forces colours in the final report on or off (`--color`).
    pub fn with_color(mut self, on: bool) -> Reporter {
        self.color = on;
        if let View::Live(l) = &mut self.view {
            l.set_color(on);
        }
        self
    }

    /// Seeds the views from the journal before the run: the live counters (relays
    /// already done, relays still DOWN from an earlier run) and, for the plain lines,
    /// when each relay still DOWN went down, so a resumed relay's downtime is counted
    /// as the summary counts it.
    pub fn preload(&mut self, journal: &JournalData) {
        match &mut self.view {
            View::Live(l) => l.preload(journal),
            View::Plain(p) => p.preload(journal),
            View::Json => {}
        }
    }

    /// Draws one event. Never fails and never blocks on anything but the output.
    pub fn handle(&mut self, ev: &Event) {
        let now = self.clock.now_ms();
        let mut clean = None;
        match ev {
            Event::RunStarted { .. } => self.started_ms = now,
            Event::Output {
                relay, step, line, ..
            } => clean = self.remember(relay, *step, line),
            Event::Halted { reason } => self.halted = Some(reason.clone()),
            Event::StepFailed {
                kind: ErrorKind::Interrupted,
                ..
            } => self.interrupted = true,
            _ => {}
        }
        match &mut self.view {
            View::Live(l) => l.handle(ev, clean.as_deref()),
            View::Plain(p) => {
                p.handle(ev, now, self.clock.as_ref(), &mut self.out);
                self.out.flush();
            }
            View::Json => {
                json_lines::write_event(ev, now, &mut self.out);
                self.out.flush();
            }
        }
    }

    /// Keeps the line for the report; returns it cleaned for display, `None` if blank.
    fn remember(&mut self, relay: &str, step: Step, line: &str) -> Option<String> {
        let clean = fmt::sanitize(line);
        if clean.trim().is_empty() {
            return None;
        }
        let clean = fmt::cut(&clean, LINE_WIDTH, false);
        let (last_step, lines) = self
            .last_lines
            .entry(relay.to_string())
            .or_insert_with(|| (step, VecDeque::new()));
        if *last_step != step {
            *last_step = step;
            lines.clear();
        }
        if lines.len() == LAST_LINES {
            lines.pop_front();
        }
        lines.push_back(clean.clone());
        Some(clean)
    }

    /// The last output lines seen per relay (of its latest step), oldest first.
    pub fn last_lines(&self) -> BTreeMap<String, Vec<String>> {
        self.last_lines
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    /// What the reporter saw of the run: start (`RunStarted`), now, the halt reason,
    /// and whether a step was interrupted. The caller may override fields it knows
    /// better (e.g. `interrupted` after Ctrl-C).
    pub fn run_stats(&self) -> RunStats {
        RunStats {
            started_ms: self.started_ms,
            ended_ms: self.clock.now_ms(),
            halted: self.halted.clone(),
            interrupted: self.interrupted,
            held: Vec::new(),
        }
    }

    /// Ends the live view, prints the end-of-run report (always) and writes
    /// `failed.txt`. In JSON mode the report is the last line, as
    /// `{"event":"report", ...}`.
    pub fn finish(mut self, journal: &JournalData, mut run: RunStats) -> Finished {
        if run.halted.is_none() {
            run.halted = self.halted.take();
        }
        let summary = Summary::build(&self.ctx, journal, &run, &self.last_lines());
        let mut errors = Vec::new();
        let failed_list = match write_failed_list(&self.ctx.state_dir, &summary) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let json = matches!(self.view, View::Json);
        match std::mem::replace(&mut self.view, View::Json) {
            View::Live(l) => {
                l.close();
                self.out.line(&render_text(&summary, self.color));
            }
            View::Plain(_) => {
                self.out.line("");
                self.out.line(&render_text(&summary, false));
            }
            View::Json => match json_lines::report_line(&summary) {
                Ok(line) => self.out.line(&line),
                Err(e) => errors.push(e),
            },
        }
        for e in &errors {
            // A JSON stream must stay JSON; the caller gets the errors either way.
            if let (ReportError::Write { .. }, false) = (e, json) {
                self.out.line(&format!("warning: {e}"));
            }
        }
        self.out.flush();
        if let Some(source) = self.out.error.take() {
            errors.push(ReportError::Output { source });
        }
        Finished {
            summary,
            failed_list,
            errors,
        }
    }
}
