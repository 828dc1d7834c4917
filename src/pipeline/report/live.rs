//! The live view (indicatif): a fleet bar, one line per active relay (at most
//! `MAX_LINES`, the rest summarised), and a count of relays that are DOWN right now.
//!
//! Drawing is rate limited by indicatif's draw target (`DRAW_HZ`), so a burst of
//! events costs only bookkeeping, never a redraw per event.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use super::{ReportContext, SharedWriter};
use crate::model::events::{Event, WaitReason};
use crate::model::step::Step;
use crate::pipeline::journal::{JournalData, RelayState};

/// Relay lines shown at most; 200 relays in flight must stay readable.
const MAX_LINES: usize = 15;
/// Redraws per second at most.
const DRAW_HZ: u8 = 10;
/// Relay names are cut to this width so the step column stays aligned.
const NAME_WIDTH: usize = 30;
/// Width of a live view drawn into a writer (there is no terminal to ask).
const WRITER_WIDTH: u16 = 100;
/// Spinner speed for steps without byte progress (cmdeploy, DNS).
const TICK: Duration = Duration::from_millis(120);

const RED: &str = "\u{1b}[1;31m";
const RESET: &str = "\u{1b}[0m";

/// What the view knows about one relay.
#[derive(Default)]
struct Relay {
    step: Option<Step>,
    waiting: Option<WaitReason>,
    /// Latest (bytes, rate) of a sync.
    progress: Option<(u64, String)>,
    percent: u8,
    /// Latest output line (for the spinner's message).
    last_line: Option<String>,
    /// Started a step and not finished.
    active: bool,
    /// Waiting before its first step.
    queued: bool,
    /// Inside steps 3..6 and not yet activated.
    down: bool,
    /// Finished with a failure (no retry).
    failed: bool,
    done: bool,
    /// Its current step is done and the next has not started.
    between: bool,
    /// How its line is drawn now (`None`: no line, or not drawn yet).
    drawn: Option<Kind>,
    drawn_step: Option<Step>,
}

/// The three looks of a relay line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Waiting,
    Transfer,
    Spinner,
}

/// Templates, parsed once.
struct Styles {
    /// Until a relay finishes in this run there is no pace to estimate an ETA from.
    fleet: ProgressStyle,
    fleet_eta: ProgressStyle,
    sync: ProgressStyle,
    spin: ProgressStyle,
    text: ProgressStyle,
}

impl Styles {
    fn new() -> Styles {
        let style = |t: &str| {
            ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        Styles {
            fleet: style(
                "{spinner:.green} {elapsed_precise} [{bar:24.green/white}] {pos}/{len} finished: {msg}",
            )
            .progress_chars("=> "),
            fleet_eta: style(
                "{spinner:.green} {elapsed_precise} [{bar:24.green/white}] {pos}/{len} finished: {msg}  ETA {eta}",
            )
            .progress_chars("=> "),
            sync: style("  {prefix} {elapsed:>4} [{bar:20.cyan/blue}] {pos:>3}% {wide_msg}")
                .progress_chars("=> "),
            spin: style("  {prefix} {elapsed:>4} {spinner:.cyan} {wide_msg}"),
            text: style("  {prefix}      {wide_msg}"),
        }
    }
}

pub(crate) struct LiveView {
    multi: MultiProgress,
    fleet: ProgressBar,
    /// "... and N more in flight", present while some active relays have no line.
    more: Option<ProgressBar>,
    /// Relays with a line of their own.
    shown: HashMap<String, ProgressBar>,
    /// Active relays waiting for a free line, oldest first.
    hidden: VecDeque<String>,
    relays: HashMap<String, Relay>,
    done: usize,
    failed: usize,
    down: usize,
    /// Relays in flight: started and not finished (running or waiting).
    running: usize,
    queued: usize,
    eta_shown: bool,
    styles: Styles,
    name_width: usize,
    color: bool,
}

impl LiveView {
    pub(crate) fn stdout(ctx: &ReportContext, color: bool) -> LiveView {
        Self::with_target(ctx, ProgressDrawTarget::stdout_with_hz(DRAW_HZ), color)
    }

    pub(crate) fn writer(ctx: &ReportContext, w: SharedWriter, color: bool) -> LiveView {
        let term = TermAdapter {
            w,
            width: WRITER_WIDTH,
        };
        Self::with_target(
            ctx,
            ProgressDrawTarget::term_like_with_hz(Box::new(term), DRAW_HZ),
            color,
        )
    }

    fn with_target(ctx: &ReportContext, target: ProgressDrawTarget, color: bool) -> LiveView {
        let styles = Styles::new();
        let multi = MultiProgress::with_draw_target(target);
        let total = ctx.relays.len();
        let fleet = multi.add(ProgressBar::new(total as u64).with_style(styles.fleet.clone()));
        let name_width = ctx
            .relays
            .iter()
            .map(|r| r.chars().count())
            .max()
            .unwrap_or(0)
            .min(NAME_WIDTH);
        let view = LiveView {
            multi,
            fleet,
            more: None,
            shown: HashMap::new(),
            hidden: VecDeque::new(),
            relays: HashMap::new(),
            done: 0,
            failed: 0,
            down: 0,
            running: 0,
            queued: 0,
            eta_shown: false,
            styles,
            name_width,
            color,
        };
        view.fleet
            .enable_steady_tick(Duration::from_millis(1000 / u64::from(DRAW_HZ)));
        view.update_fleet();
        view
    }

    pub(crate) fn set_color(&mut self, on: bool) {
        self.color = on;
        self.update_fleet();
    }

    /// Counts relays already done, and those left DOWN by an earlier run.
    pub(crate) fn preload(&mut self, journal: &JournalData) {
        for (name, rec) in &journal.relays {
            let r = self.relays.entry(name.clone()).or_default();
            match rec.state() {
                RelayState::Done if !r.done => {
                    r.done = true;
                    self.done += 1;
                }
                RelayState::Down if !r.down => {
                    r.down = true;
                    self.down += 1;
                }
                _ => {}
            }
        }
        self.fleet.set_position((self.done + self.failed) as u64);
        // The ETA must come from this run's pace, not from relays done earlier.
        self.fleet.reset_eta();
        self.update_fleet();
    }

    pub(crate) fn handle(&mut self, ev: &Event, clean_line: Option<&str>) {
        match ev {
            Event::RunStarted { .. } => {
                self.fleet.reset_elapsed();
                self.fleet.reset_eta();
            }
            Event::Waiting { relay, reason } => {
                let r = self.relays.entry(relay.clone()).or_default();
                r.waiting = Some(reason.clone());
                if r.active {
                    self.redraw(relay);
                } else if !r.queued && !r.done {
                    r.queued = true;
                    self.queued += 1;
                    self.update_fleet();
                }
            }
            Event::StepStarted { relay, step, .. } => {
                let r = self.relays.entry(relay.clone()).or_default();
                r.step = Some(*step);
                r.between = false;
                r.waiting = None;
                r.progress = None;
                r.percent = 0;
                r.last_line = None;
                let mut counts_changed = false;
                let mut went_down = false;
                if step.in_cutover() && !r.down {
                    r.down = true;
                    self.down += 1;
                    counts_changed = true;
                    went_down = true;
                }
                if r.failed {
                    // Started again after a final failure (a later wave): active again.
                    r.failed = false;
                    self.failed -= 1;
                    self.fleet.set_position((self.done + self.failed) as u64);
                }
                if !r.active {
                    r.active = true;
                    if r.queued {
                        r.queued = false;
                        self.queued -= 1;
                    }
                    self.running += 1;
                    counts_changed = true;
                    self.assign_line(relay);
                } else if went_down {
                    self.make_visible(relay);
                }
                if let Some(pb) = self.shown.get(relay.as_str()) {
                    // A new step (or attempt) counts its own time, even when the line
                    // already showed this step while waiting for it.
                    pb.reset_elapsed();
                }
                self.redraw(relay);
                if counts_changed {
                    self.update_fleet();
                }
            }
            Event::Output { relay, .. } => {
                let Some(line) = clean_line else { return };
                let Some(r) = self.relays.get_mut(relay.as_str()) else {
                    return;
                };
                if r.progress.is_none() {
                    r.last_line = Some(line.to_string());
                    self.redraw(relay);
                }
            }
            Event::Progress {
                relay,
                bytes,
                percent,
                rate,
                ..
            } => {
                let Some(r) = self.relays.get_mut(relay.as_str()) else {
                    return;
                };
                r.progress = Some((*bytes, rate.clone()));
                r.percent = (*percent).min(100);
                self.redraw(relay);
            }
            Event::StepDone { relay, step, .. } => {
                if *step == Step::Activate {
                    self.finish_relay(relay, false);
                    return;
                }
                if let Some(r) = self.relays.get_mut(relay.as_str()) {
                    // The line shows "done" until the next step starts.
                    r.progress = None;
                    r.last_line = None;
                    r.between = true;
                }
                if let Some(pb) = self.shown.get(relay.as_str()) {
                    pb.set_message(format!("{} done", step.name()));
                }
            }
            Event::StepFailed {
                relay,
                step,
                attempt,
                error,
                will_retry,
                ..
            } => {
                let error = super::fmt::one_line(error, 120);
                if *will_retry {
                    if let Some(pb) = self.shown.get(relay.as_str()) {
                        pb.set_message(format!("attempt {attempt} failed, will retry: {error}"));
                    }
                } else {
                    let down = self.relays.get(relay.as_str()).is_some_and(|r| r.down);
                    let line = if down {
                        self.paint(&format!("✗ {relay} {step}: {error} (left DOWN)"))
                    } else {
                        format!("✗ {relay} {step}: {error}")
                    };
                    // Failures stay on screen above the bars; printing can only fail
                    // when the terminal is gone, and then there is nobody to tell.
                    let _ = self.multi.println(line);
                    self.finish_relay(relay, true);
                }
            }
            Event::OldStillServing { relay } => {
                // Step 3 failed before disabling anything: not down after all.
                if let Some(r) = self.relays.get_mut(relay.as_str()) {
                    if r.down {
                        r.down = false;
                        self.down -= 1;
                        self.update_fleet();
                    }
                }
            }
            // Recorded by the journal; shown by the step it belongs to.
            Event::ServingChange { .. } => {}
            Event::Halted { reason } => {
                let _ = self.multi.println(format!("halted: {reason}"));
            }
            Event::RunFinished { .. } => {}
        }
    }

    /// Gives `relay` a line of its own if there is room, else queues it for one.
    fn assign_line(&mut self, relay: &str) {
        if self.shown.len() < MAX_LINES {
            let pb = ProgressBar::new(100).with_prefix(prefix(relay, self.name_width));
            if let Some(r) = self.relays.get_mut(relay) {
                r.drawn = None;
            }
            let pb = match &self.more {
                Some(more) => self.multi.insert_before(more, pb),
                None => self.multi.add(pb),
            };
            self.shown.insert(relay.to_string(), pb);
        } else {
            self.hidden.push_back(relay.to_string());
            self.update_more();
        }
    }

    /// Relays that are DOWN matter most: one without a line takes the line of a
    /// relay that is not down (a waiting one first), which queues for a line again.
    fn make_visible(&mut self, relay: &str) {
        let Some(pos) = self.hidden.iter().position(|h| h == relay) else {
            return;
        };
        let relays = &self.relays;
        let not_down = |name: &&String| relays.get(name.as_str()).is_some_and(|r| !r.down);
        let waiting = |name: &&String| {
            relays
                .get(name.as_str())
                .is_some_and(|r| !r.down && r.waiting.is_some())
        };
        let victim = self
            .shown
            .keys()
            .find(waiting)
            .or_else(|| self.shown.keys().find(not_down))
            .cloned();
        let Some(victim) = victim else {
            return;
        };
        if let Some(pb) = self.shown.remove(&victim) {
            pb.disable_steady_tick();
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        self.hidden.remove(pos);
        self.hidden.push_front(victim);
        self.assign_line(relay);
    }

    fn finish_relay(&mut self, relay: &str, failed: bool) {
        let Some(r) = self.relays.get_mut(relay) else {
            return;
        };
        if r.active {
            r.active = false;
            self.running -= 1;
        }
        if failed {
            if !r.failed {
                r.failed = true;
                self.failed += 1;
            }
        } else if !r.done {
            r.done = true;
            self.done += 1;
            if r.down {
                r.down = false;
                self.down -= 1;
            }
        }
        if let Some(pb) = self.shown.remove(relay) {
            pb.disable_steady_tick();
            pb.finish_and_clear();
            self.multi.remove(&pb);
            // The oldest relay without a line takes the free one.
            if let Some(next) = self.hidden.pop_front() {
                self.assign_line(&next);
                self.redraw(&next);
            }
        } else {
            self.hidden.retain(|h| h != relay);
        }
        self.update_more();
        if !self.eta_shown {
            self.eta_shown = true;
            self.fleet.set_style(self.styles.fleet_eta.clone());
        }
        self.fleet.set_position((self.done + self.failed) as u64);
        self.update_fleet();
    }

    /// Updates a relay's line: its style only when its kind (transfer, spinner,
    /// waiting) or step changed, which is rarer and costlier than a new message.
    fn redraw(&mut self, relay: &str) {
        let (Some(pb), Some(r)) = (self.shown.get(relay), self.relays.get_mut(relay)) else {
            return;
        };
        // Waiting between two steps is waiting for the next one: show that one.
        let shown_step = match (r.between && r.waiting.is_some(), r.step) {
            (true, Some(s)) => Step::from_number(s.number() + 1).or(Some(s)),
            (_, s) => s,
        };
        if r.drawn_step != shown_step || r.drawn.is_none() {
            let step = shown_step.map_or(String::new(), |s| s.to_string());
            pb.set_prefix(format!("{} {step:<15}", prefix(relay, self.name_width)));
            pb.reset_elapsed();
            r.drawn_step = shown_step;
        }
        let want = if r.waiting.is_some() {
            Kind::Waiting
        } else if r.progress.is_some() {
            Kind::Transfer
        } else {
            Kind::Spinner
        };
        if r.drawn != Some(want) {
            let (style, tick) = match want {
                Kind::Waiting => (&self.styles.text, false),
                Kind::Transfer => (&self.styles.sync, false),
                Kind::Spinner => (&self.styles.spin, true),
            };
            pb.set_style(style.clone());
            if tick {
                pb.enable_steady_tick(TICK);
            } else {
                pb.disable_steady_tick();
            }
            r.drawn = Some(want);
        }
        match want {
            Kind::Waiting => {
                if let Some(reason) = &r.waiting {
                    pb.set_message(format!("waiting: {reason}"));
                }
            }
            Kind::Transfer => {
                if let Some((bytes, rate)) = &r.progress {
                    pb.set_position(u64::from(r.percent));
                    pb.set_message(format!("{}  {rate}", super::fmt::bytes(*bytes)));
                }
            }
            Kind::Spinner => {
                let sync = matches!(r.step, Some(Step::InitialSync | Step::FinalSync));
                let msg = match (&r.last_line, sync) {
                    (Some(l), _) => l.clone(),
                    (None, true) => "starting transfer".to_string(),
                    (None, false) => String::new(),
                };
                pb.set_message(msg);
            }
        }
    }

    fn paint(&self, s: &str) -> String {
        if self.color {
            format!("{RED}{s}{RESET}")
        } else {
            s.to_string()
        }
    }

    fn update_more(&mut self) {
        let n = self.hidden.len();
        match (&self.more, n) {
            (Some(pb), 0) => {
                pb.finish_and_clear();
                self.multi.remove(pb);
                self.more = None;
            }
            (Some(pb), n) => pb.set_message(format!("… and {n} more in flight")),
            (None, 0) => {}
            (None, n) => {
                let pb = self.multi.add(
                    ProgressBar::new(0)
                        .with_style(self.styles.text.clone())
                        .with_message(format!("… and {n} more in flight")),
                );
                self.more = Some(pb);
            }
        }
    }

    fn update_fleet(&self) {
        let down = format!("{} DOWN", self.down);
        let down = if self.down > 0 {
            self.paint(&down)
        } else {
            down
        };
        let failed = format!("{} failed", self.failed);
        let failed = if self.failed > 0 {
            self.paint(&failed)
        } else {
            failed
        };
        self.fleet.set_message(format!(
            "{} done, {failed}; {} in flight, {down}, {} queued",
            self.done, self.running, self.queued
        ));
    }

    /// Clears the bars so the final report starts on a clean screen.
    pub(crate) fn close(self) {
        self.fleet.disable_steady_tick();
        for pb in self.shown.values() {
            pb.disable_steady_tick();
        }
        // Clearing can only fail when the terminal is gone.
        let _ = self.multi.clear();
    }
}

/// A relay name cut and padded so the step column stays aligned.
fn prefix(relay: &str, width: usize) -> String {
    let name = super::fmt::cut(relay, width, false);
    format!("{name:<width$}")
}

/// Lets indicatif draw into any writer (tests, benchmarks) as if it were a terminal.
struct TermAdapter {
    w: SharedWriter,
    width: u16,
}

impl fmt::Debug for TermAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TermAdapter")
            .field("width", &self.width)
            .finish()
    }
}

impl TermAdapter {
    fn put(&self, s: &str) -> std::io::Result<()> {
        self.w.clone().write_all(s.as_bytes())
    }
}

impl TermLike for TermAdapter {
    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        // Tall enough for every line the view ever shows.
        (MAX_LINES + 8) as u16
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\u{1b}[{n}A"))?;
        }
        Ok(())
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\u{1b}[{n}B"))?;
        }
        Ok(())
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\u{1b}[{n}C"))?;
        }
        Ok(())
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\u{1b}[{n}D"))?;
        }
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(s)?;
        self.put("\n")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\u{1b}[2K")
    }

    fn flush(&self) -> std::io::Result<()> {
        self.w.clone().flush()
    }
}
