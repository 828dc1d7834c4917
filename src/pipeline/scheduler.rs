//! The fleet scheduler: drives every selected relay through its steps, within the
//! fleet's limits, with retries, waves, and cancellation.
//!
//! It knows nothing about ssh: steps run through [`StepRunner`], so tests and the
//! scale benchmark can drive it with a simulated executor.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::model::events::{Event, EventSink, WaitReason};
use crate::model::inventory::{DisableOld, GroupLimits, Limits, Relay, RetryPolicy, Wave};
use crate::model::step::{ErrorKind, Step, StepError, StepOutcome};

/// Runs one step of one relay.
pub trait StepRunner: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        relay: &'a Relay,
        step: Step,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>>;
}

/// How far cancellation has gone; it only escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cancel {
    None,
    /// First Ctrl-C: start nothing new, let running steps finish.
    StopStarting,
    /// Second Ctrl-C: stop running steps now (their processes are killed).
    Kill,
}

/// One relay's work in this run.
#[derive(Debug, Clone)]
pub struct Job {
    pub relay: Relay,
    /// Steps to run, in order (already filtered by the journal and --from/--until).
    pub steps: Vec<Step>,
}

/// How the run ended, for the summary and the exit code.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub done: Vec<String>,
    pub failed: Vec<String>,
    pub not_started: Vec<String>,
    pub halted: Option<String>,
    pub interrupted: bool,
    /// Relays held back before their cutover by a safety gate, with the reason.
    pub held: Vec<(String, String)>,
    /// Set when the journal could not be saved during the run (by `migrate`, which
    /// then stopped new work): the error, and whether the disk caught up.
    pub journal_error: Option<String>,
}

/// Limits shared by every relay's task.
struct Gates {
    forks: Arc<Semaphore>,
    transfers: Arc<Semaphore>,
    cutovers: Arc<Semaphore>,
    /// The `cmdeploy_runs` slots of steps 2, 3 and 6, by priority.
    cmdeploy: Arc<CmdeployGate>,
    groups: HashMap<String, Arc<Semaphore>>,
    /// Relays inside their cutover window whose final sync has no transfer slot
    /// yet. Initial syncs leave that many slots free, so pre-staging never
    /// stretches a downtime.
    cutover_claims: AtomicUsize,
    /// Set when max_fail_percent is exceeded: relays not yet started stay so.
    halted: std::sync::atomic::AtomicBool,
}

pub struct Scheduler {
    pub limits: Limits,
    pub groups: HashMap<String, GroupLimits>,
    pub waves: Vec<Wave>,
    pub events: EventSink,
    pub cancel: watch::Receiver<Cancel>,
}

impl Scheduler {
    pub async fn run(&self, jobs: Vec<Job>, runner: Arc<dyn StepRunner>) -> Outcome {
        let gates = Arc::new(Gates {
            forks: Arc::new(Semaphore::new(self.limits.forks)),
            transfers: Arc::new(Semaphore::new(self.limits.transfers)),
            cutovers: Arc::new(Semaphore::new(self.limits.cutovers)),
            cmdeploy: Arc::new(CmdeployGate::new(self.limits.cmdeploy_runs)),
            groups: self
                .groups
                .iter()
                .filter_map(|(g, l)| {
                    l.max_transfers
                        .map(|n| (g.clone(), Arc::new(Semaphore::new(n.max(1)))))
                })
                .collect(),
            cutover_claims: AtomicUsize::new(0),
            halted: std::sync::atomic::AtomicBool::new(false),
        });
        let mut outcome = Outcome::default();
        let total = jobs.len();
        let mut queue = jobs.into_iter();
        let mut finished = 0usize;
        for (wave_no, size) in wave_sizes(&self.waves, total).into_iter().enumerate() {
            let wave: Vec<Job> = queue.by_ref().take(size).collect();
            if wave.is_empty() {
                break;
            }
            if self.stopping(&mut outcome) {
                outcome
                    .not_started
                    .extend(wave.into_iter().map(|j| j.relay.name));
                continue;
            }
            self.run_wave(wave, wave_no, &gates, &runner, &mut outcome, &mut finished)
                .await;
        }
        outcome.not_started.extend(queue.map(|j| j.relay.name));
        outcome.interrupted = *self.cancel.borrow() > Cancel::None;
        outcome
    }

    /// Runs one wave: a relay's task is spawned only once it holds a fork slot, so
    /// memory grows with `forks`, not with the fleet.
    async fn run_wave(
        &self,
        wave: Vec<Job>,
        wave_no: usize,
        gates: &Arc<Gates>,
        runner: &Arc<dyn StepRunner>,
        outcome: &mut Outcome,
        finished: &mut usize,
    ) {
        let mut queue = wave.into_iter();
        for job in queue.as_slice().iter().skip(self.limits.forks) {
            let reason = if wave_no > 0 {
                WaitReason::Wave(wave_no + 1)
            } else {
                WaitReason::Forks
            };
            self.events.send(Event::Waiting {
                relay: job.relay.name.clone(),
                reason,
            });
        }
        let mut tasks = JoinSet::new();
        loop {
            let may_start = queue.len() > 0
                && !gates.halted.load(Ordering::SeqCst)
                && *self.cancel.borrow() == Cancel::None;
            tokio::select! {
                fork = gates.forks.clone().acquire_owned(), if may_start => {
                    let (Ok(fork), Some(job)) = (fork, queue.next()) else { break };
                    let task = RelayTask {
                        gates: gates.clone(),
                        runner: runner.clone(),
                        events: self.events.clone(),
                        cancel: self.cancel.clone(),
                        retry: job.relay.settings.retry,
                        at: Arc::default(),
                        activation_claim: Mutex::new(None),
                        activation_ahead: Default::default(),
                    };
                    // Every log line of this relay's steps carries its name (`-vv`).
                    let span = tracing::info_span!("relay", name = %job.relay.name);
                    tasks.spawn(tracing::Instrument::instrument(task.drive_catching(job, fork), span));
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    // A task's panic is caught inside it (`drive_catching`), and tasks
                    // are never aborted: a join error cannot lose a relay.
                    let Ok((name, result)) = joined else { continue };
                    *finished += 1;
                    match result {
                        RelayResult::Done => outcome.done.push(name),
                        RelayResult::Failed => outcome.failed.push(name),
                        RelayResult::NotStarted => outcome.not_started.push(name),
                    }
                    self.check_failure_rate(gates, outcome, *finished);
                }
                else => break,
            }
        }
        outcome.not_started.extend(queue.map(|j| j.relay.name));
    }

    fn check_failure_rate(&self, gates: &Gates, outcome: &mut Outcome, finished: usize) {
        if outcome.halted.is_some() {
            return;
        }
        if let Some(why) = self.failure_rate_exceeded(outcome, finished) {
            gates.halted.store(true, Ordering::SeqCst);
            self.events.send(Event::Halted {
                reason: why.clone(),
            });
            outcome.halted = Some(why);
        }
    }

    fn stopping(&self, outcome: &mut Outcome) -> bool {
        if *self.cancel.borrow() > Cancel::None && outcome.halted.is_none() {
            outcome.halted = Some("interrupted by the operator".into());
        }
        outcome.halted.is_some()
    }

    /// Ansible's max_fail_percentage, over the relays finished so far.
    fn failure_rate_exceeded(&self, outcome: &Outcome, finished: usize) -> Option<String> {
        let max = self.limits.max_fail_percent as usize;
        let failed = outcome.failed.len();
        (max < 100 && finished > 0 && failed * 100 > max * finished).then(|| {
            format!(
                "{failed} of {finished} finished relays failed, more than max_fail_percent = {max}%; no new relay was started"
            )
        })
    }
}

/// Relay counts of each wave: the configured ones, then the last repeated.
fn wave_sizes(waves: &[Wave], total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let w = waves
            .get(i)
            .or(waves.last())
            .copied()
            .unwrap_or(Wave::Percent(100));
        let n = w.size(total).min(left);
        sizes.push(n);
        left -= n;
        i += 1;
    }
    sizes
}

enum RelayResult {
    Done,
    Failed,
    NotStarted,
}

struct RelayTask {
    gates: Arc<Gates>,
    runner: Arc<dyn StepRunner>,
    events: EventSink,
    cancel: watch::Receiver<Cancel>,
    retry: RetryPolicy,
    /// The step and attempt running now, kept outside the task so that a panic
    /// can still be recorded against them.
    at: Arc<Mutex<Option<(Step, u32)>>>,
    /// From the end of step 3 until step 6 has its cmdeploy slot: the relay is down
    /// and its activation must not wait behind a run that could have waited.
    activation_claim: Mutex<Option<ActivationClaim>>,
    /// This run goes on to step 6 (so a done step 3 claims a slot for it).
    activation_ahead: std::sync::atomic::AtomicBool,
}

impl RelayTask {
    /// [`RelayTask::drive`], but a panic (a bug in a step or in the scheduler) ends
    /// the relay as failed, with the panic's message recorded as its step's error:
    /// a task that vanished would leave the relay out of the outcome and the
    /// failure count, and possibly DOWN without anybody being told.
    async fn drive_catching(
        self,
        job: Job,
        fork: tokio::sync::OwnedSemaphorePermit,
    ) -> (String, RelayResult) {
        let relay = job.relay.name.clone();
        let first = job.steps.first().copied();
        let (at, events) = (self.at.clone(), self.events.clone());
        // Nothing the task shares is left half-updated by a panic: gates are
        // semaphores and atomics, released by the unwinding drops.
        let panic = match AssertUnwindSafe(self.drive(job, fork)).catch_unwind().await {
            Ok(result) => return (relay, result),
            Err(panic) => panic,
        };
        let position = *at.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((step, attempt)) = position.or(first.map(|s| (s, 1))) {
            events.send(Event::StepFailed {
                relay: relay.clone(),
                step,
                attempt,
                kind: ErrorKind::Permanent,
                error: format!(
                    "cmfleet panicked (a bug, please report it): {}",
                    panic_message(panic.as_ref())
                ),
                will_retry: false,
            });
        }
        (relay, RelayResult::Failed)
    }

    /// Carries one relay through its steps; `_fork` is its slot among `forks`.
    async fn drive(self, job: Job, _fork: tokio::sync::OwnedSemaphorePermit) -> RelayResult {
        let name = job.relay.name.clone();
        let mut cutover = None;
        let mut claim = None;
        let final_sync_ahead = job.steps.contains(&Step::FinalSync);
        let overlap = job.steps.contains(&Step::Dns) && job.steps.contains(&Step::Activate);
        self.activation_ahead
            .store(job.steps.contains(&Step::Activate), Ordering::SeqCst);
        for step in job.steps {
            let stop =
                *self.cancel.borrow() > Cancel::None || self.gates.halted.load(Ordering::SeqCst);
            if stop && cutover.is_none() {
                // Never abandon a relay inside its cutover; before it, stopping is safe
                // (the journal keeps what was pre-staged).
                return RelayResult::NotStarted;
            }
            if step.in_cutover() && cutover.is_none() {
                if self.gates.cutovers.available_permits() == 0 {
                    self.events.send(Event::Waiting {
                        relay: name.clone(),
                        reason: WaitReason::CutoverLimit,
                    });
                }
                let Ok(p) = self.gates.cutovers.clone().acquire_owned().await else {
                    return RelayResult::Failed;
                };
                // The wait for a slot can be long: a stop that came meanwhile (Ctrl-C,
                // max_fail_percent, an unsaved journal) keeps the relay out of its
                // cutover, as it would have before the wait.
                let stop = *self.cancel.borrow() > Cancel::None
                    || self.gates.halted.load(Ordering::SeqCst);
                if stop {
                    tracing::debug!("stopping: not going into the cutover");
                    return RelayResult::NotStarted;
                }
                tracing::debug!("cutover slot taken: the relay may go down now");
                cutover = Some(p);
                if final_sync_ahead {
                    claim = Some(Claim::new(&self.gates));
                }
            }
            if step == Step::Activate && overlap {
                continue; // Already run, beside step 5.
            }
            let ok = if step == Step::Dns && overlap {
                self.dns_beside_activation(&job.relay).await
            } else {
                self.attempt_step(&job.relay, step, &mut claim).await
            };
            if !ok {
                return RelayResult::Failed;
            }
        }
        RelayResult::Done
    }

    /// Steps 5 and 6 at once: the DNS update goes out and activation starts
    /// together, and the relay is up when both are done (the journal says so only
    /// then). Both wait on something slow that the other does not need: DNS on the
    /// authoritative servers, activation on a deploy of NEW. Both still run to
    /// their end (with retries) even when the other fails, so a retry of the relay
    /// has only the failed one left.
    async fn dns_beside_activation(&self, relay: &Relay) -> bool {
        let (mut no_claim, mut no_claim_either) = (None, None);
        let (dns, activate) = tokio::join!(
            self.attempt_step(relay, Step::Dns, &mut no_claim),
            self.attempt_step(relay, Step::Activate, &mut no_claim_either)
        );
        dns && activate
    }

    /// Runs one step with retries; returns whether it succeeded.
    async fn attempt_step(&self, relay: &Relay, step: Step, claim: &mut Option<Claim>) -> bool {
        let span = tracing::info_span!("step", step = %step.name());
        tracing::Instrument::instrument(self.attempt_step_inner(relay, step, claim), span).await
    }

    async fn attempt_step_inner(
        &self,
        relay: &Relay,
        step: Step,
        claim: &mut Option<Claim>,
    ) -> bool {
        let mut backoff = self.retry.backoff;
        for attempt in 1..=self.retry.attempts {
            tracing::debug!(attempt, "starting");
            let _transfer = self.transfer_slot(relay, step, claim).await;
            let _cmdeploy = self.cmdeploy_slot(relay, step).await;
            *self.at.lock().unwrap_or_else(PoisonError::into_inner) = Some((step, attempt));
            self.events.send(Event::StepStarted {
                relay: relay.name.clone(),
                step,
                attempt,
            });
            let started = Instant::now();
            let result = self.run_cancellable(relay, step).await;
            drop(_transfer);
            if result.is_ok()
                && step == Step::DisableOld
                && self.activation_ahead.load(Ordering::SeqCst)
            {
                // Before step 3's slot is given back, or the next waiter takes it
                // from under the claim.
                *self
                    .activation_claim
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some(ActivationClaim::new(&self.gates.cmdeploy));
            }
            drop(_cmdeploy);
            match result {
                Ok(done) => {
                    self.events.send(Event::StepDone {
                        relay: relay.name.clone(),
                        step,
                        elapsed: started.elapsed(),
                        note: done.note,
                        deployed: done.deployed,
                    });
                    return true;
                }
                Err(e) => {
                    let kind = e.kind;
                    let will_retry = e.kind == ErrorKind::Transient
                        && attempt < self.retry.attempts
                        && *self.cancel.borrow() == Cancel::None;
                    self.events.send(Event::StepFailed {
                        relay: relay.name.clone(),
                        step,
                        attempt,
                        kind: e.kind,
                        error: e.message,
                        will_retry,
                    });
                    if !will_retry {
                        tracing::info!(
                            ?kind,
                            attempt,
                            "failed; not retried (permanent, last attempt or stopping)"
                        );
                        return false;
                    }
                    let wait = jitter(backoff);
                    tracing::info!(
                        attempt,
                        ?wait,
                        "failed (transient); retrying after a backoff"
                    );
                    self.events.send(Event::Waiting {
                        relay: relay.name.clone(),
                        reason: WaitReason::Backoff(wait),
                    });
                    if self.sleep_or_kill(wait).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
        false
    }

    async fn run_cancellable(&self, relay: &Relay, step: Step) -> StepOutcome {
        let mut cancel = self.cancel.clone();
        tokio::select! {
            r = self.runner.run(relay, step) => r,
            _ = cancel.wait_for(|c| *c == Cancel::Kill) => Err(StepError {
                kind: ErrorKind::Interrupted,
                message: "stopped by the operator (second Ctrl-C)".into(),
            }),
        }
    }

    /// Sleeps for a backoff; returns true if a kill arrived meanwhile.
    async fn sleep_or_kill(&self, d: Duration) -> bool {
        let mut cancel = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = cancel.wait_for(|c| *c == Cancel::Kill) => true,
        }
    }

    /// A cmdeploy slot for the steps that run cmdeploy (2, 3 and 6), by priority:
    /// activations first (they end a downtime), then step 3, then pre-staging.
    async fn cmdeploy_slot(&self, relay: &Relay, step: Step) -> Option<CmdeployPermit> {
        let class = CmdeployClass::of(step, relay)?;
        if self.gates.cmdeploy.available() == 0 {
            self.events.send(Event::Waiting {
                relay: relay.name.clone(),
                reason: WaitReason::CmdeployLimit,
            });
        }
        let permit = self.gates.cmdeploy.acquire(class).await;
        if step == Step::Activate {
            // Honoured: the slot held for this relay is the one it now runs in.
            self.activation_claim
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        Some(permit)
    }

    /// Transfer permits (fleet-wide and per group) for steps 1 and 4.
    async fn transfer_slot(
        &self,
        relay: &Relay,
        step: Step,
        claim: &mut Option<Claim>,
    ) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        if !matches!(step, Step::InitialSync | Step::FinalSync) {
            return Vec::new();
        }
        let mut held = Vec::new();
        let in_cutover = step.in_cutover();
        if self.gates.transfers.available_permits() == 0 {
            self.events.send(Event::Waiting {
                relay: relay.name.clone(),
                reason: WaitReason::TransferLimit,
            });
        }
        loop {
            let Ok(p) = self.gates.transfers.clone().acquire_owned().await else {
                break;
            };
            let left = self.gates.transfers.available_permits();
            if !in_cutover && left < self.gates.cutover_claims.load(Ordering::SeqCst) {
                // That slot is spoken for by a relay that is down right now.
                drop(p);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if in_cutover {
                // The claim is honoured: initial syncs may use the slot it reserved.
                claim.take();
            }
            held.push(p);
            break;
        }
        if let Some(g) = relay.group.as_ref().and_then(|g| self.gates.groups.get(g)) {
            if g.available_permits() == 0 {
                self.events.send(Event::Waiting {
                    relay: relay.name.clone(),
                    reason: WaitReason::GroupTransferLimit(relay.group.clone().unwrap_or_default()),
                });
            }
            if let Ok(p) = g.clone().acquire_owned().await {
                held.push(p);
            }
        }
        held
    }
}

/// A down relay's claim on a transfer slot for its final sync; released when the
/// slot is taken or the relay stops.
struct Claim {
    gates: Arc<Gates>,
}

impl Claim {
    fn new(gates: &Arc<Gates>) -> Claim {
        gates.cutover_claims.fetch_add(1, Ordering::SeqCst);
        Claim {
            gates: gates.clone(),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.gates.cutover_claims.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Order in the queue for a cmdeploy slot (lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CmdeployClass {
    /// Step 6: ends a relay's downtime.
    Activate,
    /// Step 3: starts one (waiting here costs no downtime).
    DisableOld,
    /// Step 2: pre-staging, nobody is waiting for it.
    Preconfigure,
}

impl CmdeployClass {
    /// `None`: the step runs no cmdeploy (a systemctl step 3 works over ssh alone).
    fn of(step: Step, relay: &Relay) -> Option<CmdeployClass> {
        match step {
            Step::Preconfigure => Some(CmdeployClass::Preconfigure),
            Step::DisableOld if relay.settings.disable_old == DisableOld::Systemctl => None,
            Step::DisableOld => Some(CmdeployClass::DisableOld),
            Step::Activate => Some(CmdeployClass::Activate),
            _ => None,
        }
    }
}

/// The fleet's cmdeploy slots (`cmdeploy_runs`): the bottleneck of a night (each
/// relay needs minutes of cmdeploy, three runs), so a slot must never idle while a
/// run could use it, and a down relay's runs must never queue behind pre-staging.
/// Waiters are served by class, then in arrival order. A relay that is down (step 3
/// done) claims a slot for its activation until it takes one: only activations may
/// use the last free slots while claims are open, so a step 2 (minutes long) started
/// during the relay's final sync cannot hold up its activation. The cost is a
/// slot idle during a final sync (seconds), the gain a downtime without the wait for
/// a whole pre-staging run (docs/performance.md, "The scheduler against its limit").
/// No polling: a release hands the slot to the next waiter directly.
struct CmdeployGate {
    state: Mutex<GateState>,
}

struct GateState {
    free: usize,
    /// Down relays whose activation has no slot yet.
    claims: usize,
    waiting: std::collections::BTreeMap<(CmdeployClass, u64), tokio::sync::oneshot::Sender<()>>,
    arrivals: u64,
}

impl GateState {
    /// Hands free slots to waiters, best first, as far as the claims allow.
    fn dispatch(&mut self) {
        while self.free > 0 {
            let Some(entry) = self.waiting.first_entry() else {
                return;
            };
            if entry.key().0 != CmdeployClass::Activate && self.free <= self.claims {
                return;
            }
            let tx = entry.remove();
            self.free -= 1;
            if tx.send(()).is_err() {
                // The waiter is gone (its relay stopped): the slot is still free.
                self.free += 1;
            }
        }
    }
}

impl CmdeployGate {
    fn new(slots: usize) -> CmdeployGate {
        CmdeployGate {
            state: Mutex::new(GateState {
                free: slots.max(1),
                claims: 0,
                waiting: Default::default(),
                arrivals: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn available(&self) -> usize {
        self.lock().free
    }

    async fn acquire(self: &Arc<Self>, class: CmdeployClass) -> CmdeployPermit {
        let (key, rx) = {
            let mut st = self.lock();
            let key = (class, st.arrivals);
            st.arrivals += 1;
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.waiting.insert(key, tx);
            st.dispatch();
            (key, rx)
        };
        let mut waiter = Waiter {
            gate: self.clone(),
            key,
            served: false,
        };
        // The sender is only dropped after sending (dispatch) or by this waiter's
        // own removal, so an error cannot happen while the waiter lives.
        let _ = rx.await;
        waiter.served = true;
        CmdeployPermit { gate: self.clone() }
    }

    fn release(&self) {
        let mut st = self.lock();
        st.free += 1;
        st.dispatch();
    }
}

/// A queued `acquire`; if it is dropped while waiting (its relay stopped), it leaves
/// the queue, or gives back the slot it was handed meanwhile.
struct Waiter {
    gate: Arc<CmdeployGate>,
    key: (CmdeployClass, u64),
    served: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut st = self.gate.lock();
        if st.waiting.remove(&self.key).is_none() {
            st.free += 1;
            st.dispatch();
        }
    }
}

/// A cmdeploy slot, given back on drop.
struct CmdeployPermit {
    gate: Arc<CmdeployGate>,
}

impl Drop for CmdeployPermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A down relay's claim on a cmdeploy slot for its activation.
struct ActivationClaim {
    gate: Arc<CmdeployGate>,
}

impl ActivationClaim {
    fn new(gate: &Arc<CmdeployGate>) -> ActivationClaim {
        gate.lock().claims += 1;
        ActivationClaim { gate: gate.clone() }
    }
}

impl Drop for ActivationClaim {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.claims -= 1;
        st.dispatch();
    }
}

/// The text a panic was raised with (`panic!`'s message, `expect`'s, an index error's).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Backoff with ±25% jitter, so relays failing together do not retry together.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}
