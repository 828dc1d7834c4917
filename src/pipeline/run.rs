//! A `migrate` run as the command starts it: the engine ([`crate::pipeline::migrate`]) on a
//! tokio runtime, the reporter drawing on its own thread, Ctrl-C escalating from
//! "start nothing new" to "stop running steps", and the end-of-run report with
//! everything the run knows (including the relays it held back).

use tokio::sync::watch;

use crate::model::events::Event;
use crate::model::inventory::{Inventory, Relay};
use crate::pipeline::journal::now_ms;
use crate::pipeline::migrate::{migrate, MigrateError, MigrateOptions};
use crate::pipeline::report::{Finished, Reporter, RunStats};
use crate::pipeline::scheduler::{Cancel, Outcome};

/// What a reported run leaves: the report, and what the engine said.
pub struct RunResult {
    pub finished: Finished,
    pub outcome: Outcome,
}

impl RunResult {
    /// The process exit code (see `crate::model::exit`): a journal that could not be saved
    /// outranks everything, then the report's verdict.
    pub fn exit_code(&self) -> i32 {
        if self.outcome.journal_error.is_some() {
            crate::model::exit::JOURNAL_UNSAVED
        } else {
            self.finished.exit_code()
        }
    }
}

/// Migrates `relays`, showing every event through `reporter` once the journal has
/// recorded it.
pub fn run(
    inv: &Inventory,
    relays: &[&Relay],
    opts: &MigrateOptions,
    reporter: Reporter,
) -> Result<RunResult, MigrateError> {
    // The reporter draws on its own thread: a stalled terminal or a full pipe must
    // never hold up the engine or the journal.
    let (report_tx, report_rx) = std::sync::mpsc::channel::<Event>();
    let drawer = std::thread::spawn(move || {
        let mut reporter = reporter;
        for ev in report_rx {
            reporter.handle(&ev);
        }
        reporter
    });
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| MigrateError::Setup(format!("cannot start the async runtime: {e}")))?;
    let (cancel_tx, cancel_rx) = watch::channel(Cancel::None);
    let started_ms = now_ms();
    let result = rt.block_on(async {
        tokio::spawn(escalate_on_ctrl_c(cancel_tx));
        migrate(inv, relays, opts, cancel_rx, |ev, _| {
            let _ = report_tx.send(ev.clone());
        })
        .await
    });
    drop(report_tx);
    let reporter = drawer
        .join()
        .map_err(|_| MigrateError::Setup("the progress display crashed".into()))?;
    let (outcome, journal) = result?;
    let stats = RunStats {
        started_ms,
        ended_ms: now_ms(),
        halted: outcome.halted.clone(),
        interrupted: outcome.interrupted,
        held: outcome.held.clone(),
    };
    let finished = reporter.finish(&journal.data, stats);
    Ok(RunResult { finished, outcome })
}

/// First Ctrl-C: start nothing new. Second: stop running steps.
async fn escalate_on_ctrl_c(cancel: watch::Sender<Cancel>) {
    for level in [Cancel::StopStarting, Cancel::Kill] {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        let _ = cancel.send(level);
    }
}
