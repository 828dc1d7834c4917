//! `cmfleet migrate`: the journal decides what is left, the scheduler runs it,
//! every event is recorded before it is shown.

use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;

use crate::model::events::{Event, EventSink};
use crate::model::inventory::{Inventory, Relay};
use crate::model::step::Step;
use crate::pipeline::journal::{Journal, JournalError, RelayState, StepStatus};
use crate::pipeline::scheduler::{Cancel, Job, Outcome, Scheduler, StepRunner};
use crate::pipeline::steps::exec::Executor;

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot prepare the run: {0}")]
    Setup(String),
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub from_step: Option<Step>,
    pub until_step: Step,
    /// Forget the journal of the selected relays first.
    pub restart: bool,
    pub dry_run: bool,
    /// Cut over even if a lowered TTL has not elapsed yet.
    pub force: bool,
    /// Run step 1 again for relays not cut over yet: a last delta right before the
    /// cutover, so the final sync inside the downtime moves little.
    pub refresh: bool,
}

/// A relay's work in this run, and why it stops short of its cutover, if it does.
struct Work {
    steps: Vec<Step>,
    held: Option<String>,
}

/// Which steps a relay still needs, from the journal and the options, and the
/// safety gates in front of its cutover.
fn work_for(journal: &mut Journal, relay: &Relay, opts: &MigrateOptions) -> Work {
    let rec = journal.relay(&relay.name).clone();
    let done = |s: Step| matches!(rec.step(s).status, StepStatus::Done | StepStatus::Skipped);
    let mut steps: Vec<Step> = Step::ALL
        .into_iter()
        .filter(|s| !done(*s) && *s <= opts.until_step && opts.from_step.is_none_or(|f| *s >= f))
        .collect();
    // Step 1 is repeatable while the old site is authoritative and the new one inactive.
    let before_cutover =
        rec.step(Step::DisableOld).status == StepStatus::Pending && rec.down_since_ms.is_none();
    if before_cutover
        && done(Step::InitialSync)
        && (opts.refresh || stale_copy(&rec, relay, &steps))
    {
        steps.insert(0, Step::InitialSync);
    }
    let mut held = None;
    // Never take a relay down whose data and new site are not ready.
    if steps.contains(&Step::DisableOld) {
        if let Some(pre) = [Step::InitialSync, Step::Preconfigure]
            .into_iter()
            .find(|p| !done(*p) && !steps.contains(p))
        {
            held = Some(format!(
                "not started: step {pre} is not done, and steps 1 and 2 must be done before step 3 (hint: drop --from-step)"
            ));
            steps.clear();
        }
    }
    // Nor while resolvers may still send its users to the old address for long.
    let not_down_yet = rec.down_since_ms.is_none();
    if held.is_none() && !opts.force && not_down_yet && steps.contains(&Step::DisableOld) {
        if let Some(why) = crate::pipeline::ttl::cutover_hold(
            journal,
            &relay.name,
            crate::pipeline::journal::now_ms(),
        ) {
            steps.retain(|s| *s < Step::DisableOld);
            held = Some(why);
        }
    }
    Work { steps, held }
}

/// A cutover is due and step 1 finished longer ago than the relay's
/// `refresh_after`: the mail changed since, and all of it would be copied inside
/// the downtime. A delta now, while OLD still serves, keeps step 4 short.
fn stale_copy(rec: &crate::pipeline::journal::RelayRecord, relay: &Relay, steps: &[Step]) -> bool {
    let (Some(after), Some(copied)) = (
        relay.settings.refresh_after,
        rec.step(Step::InitialSync).finished_ms,
    ) else {
        return false;
    };
    let age = crate::pipeline::journal::now_ms().saturating_sub(copied);
    steps.contains(&Step::DisableOld) && u128::from(age) > after.as_millis()
}

/// Runs the migration of `relays`. `report` sees every event after the journal recorded it.
pub async fn migrate(
    inv: &Inventory,
    relays: &[&Relay],
    opts: &MigrateOptions,
    cancel: watch::Receiver<Cancel>,
    mut report: impl FnMut(&Event, &Journal) + Send,
) -> Result<(Outcome, Journal), MigrateError> {
    if !opts.dry_run {
        // A wrong cmdeploy path is refused before the journal or anything else is written.
        crate::host::remote::WorkspacePool::checkout_of(&inv.fleet.cmdeploy)
            .map_err(|e| MigrateError::Setup(e.to_string()))?;
    }
    // One machine, one role: a host reached under two names would have its mail
    // replaced by another relay's step 1. Refused before anything is written.
    crate::host::identity::refuse_same_machines(inv)
        .map_err(|e| MigrateError::Setup(e.to_string()))?;
    let mut journal = Journal::open(&inv.fleet.state_dir, &inv.path)?;
    if opts.restart {
        journal.forget(&relays.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
    }
    journal.recover_interrupted();
    let mut jobs = Vec::new();
    let mut held = Vec::new();
    for r in relays {
        let work = work_for(&mut journal, r, opts);
        if let Some(why) = work.held {
            held.push((r.name.clone(), why));
        }
        if !work.steps.is_empty() {
            jobs.push(Job {
                relay: (*r).clone(),
                steps: work.steps,
            });
        }
    }
    held.extend(lost_relays(&journal, inv));
    journal.save()?;
    if opts.dry_run {
        return Ok((
            Outcome {
                held,
                ..Outcome::default()
            },
            journal,
        ));
    }
    let (events, mut rx) = EventSink::channel();
    // migrate holds the journal lock, so it alone may reuse and keep masters.
    let executor = Executor::new(&inv.fleet, &inv.groups, events.clone(), true)
        .map_err(|e| MigrateError::Setup(e.message))?;
    executor.vouch_placed(
        journal
            .data
            .relays
            .iter()
            .filter(|(_, rec)| rec.step(Step::InitialSync).attempts > 0)
            .map(|(name, _)| name.clone()),
    );
    let executor = Arc::new(executor);
    // The scheduler's stop signal: the operator's (forwarded below), raised to
    // "start nothing new" by this loop when the journal cannot be saved.
    let mut cancel = cancel;
    let (stop, stop_rx) = watch::channel(*cancel.borrow());
    let scheduler = Scheduler {
        limits: inv.fleet.limits.clone(),
        groups: inv.groups.clone().into_iter().collect(),
        waves: inv.fleet.waves.clone(),
        events: events.clone(),
        cancel: stop_rx,
    };
    let started = std::time::Instant::now();
    events.send(Event::RunStarted { relays: jobs.len() });
    let runner: Arc<dyn StepRunner> = executor.clone();
    let run = scheduler.run(jobs, runner);
    tokio::pin!(run);
    // One loop owns the journal: record, save, then show.
    let mut save_error = None;
    let mut operator_open = true;
    let mut outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(envelope) = rx.recv() => {
                record(&mut journal, envelope, &mut report, &mut save_error);
                // Copied out first: a borrow held across `send_replace` deadlocks.
                let stopping = *stop.borrow();
                if let (Some(e), Cancel::None) = (&save_error, stopping) {
                    // What happens from now on is not recorded: a relay started now
                    // could be left DOWN with a journal saying it serves. Cutovers in
                    // flight finish (abandoning them is worse), nothing else starts.
                    stop.send_replace(Cancel::StopStarting);
                    events.send(Event::Halted {
                        reason: journal_halt(e),
                    });
                }
            }
            changed = cancel.changed(), if operator_open => match changed {
                Ok(()) => {
                    let asked = *cancel.borrow();
                    stop.send_if_modified(|s| {
                        let raise = asked > *s;
                        if raise {
                            *s = asked;
                        }
                        raise
                    });
                }
                Err(_) => operator_open = false,
            },
        }
    };
    // A relay pre-staged by this run (`--until-step`) keeps its two masters for a
    // while: a cutover run soon after reuses them instead of two new handshakes.
    let staged: Vec<&Relay> = match opts.until_step {
        Step::Activate => Vec::new(),
        _ => relays
            .iter()
            .filter(|r| outcome.done.contains(&r.name))
            .copied()
            .collect(),
    };
    executor.close_keeping(&staged).await;
    events.send(Event::RunFinished {
        elapsed: started.elapsed(),
    });
    while let Ok(envelope) = rx.try_recv() {
        record(&mut journal, envelope, &mut report, &mut save_error);
    }
    let last_save = journal.save();
    outcome.held = held;
    if let Some(e) = save_error {
        // The caller reports from memory (the journal it gets back is complete)
        // and exits with its own code; the run was not an operator's interrupt.
        outcome.interrupted = *cancel.borrow() > Cancel::None;
        outcome.halted = Some(journal_halt(&e));
        outcome.journal_error = Some(match last_save {
            Ok(()) => format!("{e}; saved again at the end of the run"),
            Err(last) => format!(
                "{last}; the journal on disk is behind this report (hint: free space in {}, then compare `cmfleet status` with this report before running migrate again: a relay done here may look staged or DOWN there)",
                inv.fleet.state_dir.display()
            ),
        });
        return Ok((outcome, journal));
    }
    last_save?;
    Ok((outcome, journal))
}

/// Why the run stopped starting relays after a failed journal save.
fn journal_halt(e: &JournalError) -> String {
    format!("{e}: no relay or step was started after that; relays inside their cutover finished")
}

/// Relays the journal has left in the middle of a migration (staged or DOWN) that the
/// inventory no longer lists (removed, or renamed to another mail_domain). Their record
/// is kept as it is, never dropped; they are reported so none stays down unseen.
fn lost_relays(journal: &Journal, inv: &Inventory) -> Vec<(String, String)> {
    journal
        .data
        .relays
        .iter()
        .filter(|(name, _)| !inv.relays.iter().any(|r| &r.name == *name))
        .filter_map(|(name, rec)| {
            let state = match rec.state() {
                RelayState::Down => "DOWN (mail on its old machine was disabled)",
                RelayState::Staged => "staged (its old machine still serves mail)",
                RelayState::Done | RelayState::NotStarted => return None,
            };
            Some((
                name.clone(),
                format!(
                    "in the journal but not in the inventory, and {state}; its record is kept (hint: put it back in the inventory to finish or roll it back)"
                ),
            ))
        })
        .collect()
}

/// Records an event, saves the journal, then shows the event; whoever waits for
/// the event to be on disk (write-ahead) is told whether the journal is saved.
fn record(
    journal: &mut Journal,
    envelope: crate::model::events::Envelope,
    report: &mut impl FnMut(&Event, &Journal),
    save_error: &mut Option<JournalError>,
) {
    let ev = &envelope.event;
    if journal.apply(ev) {
        if let Err(e) = journal.save() {
            save_error.get_or_insert(e);
        }
    }
    if let Some(waiting) = envelope.recorded {
        // After any failed save the journal may be behind: nothing more is vouched for.
        let _ = waiting.send(save_error.is_none());
    }
    report(ev, journal);
}
