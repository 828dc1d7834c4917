//! The scheduler with a simulated executor: limits, retries, waves, cancellation.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmfleet::model::events::{Event, EventSink};
use cmfleet::model::inventory::{Inventory, Limits, Relay, Wave};
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::model::step::{StepError, StepOutcome, StepSuccess};
use cmfleet::pipeline::scheduler::{Cancel, Job, Outcome, Scheduler, StepRunner};

/// A fleet of `n` relays (retry backoff 10 ms so retry tests stay fast).
fn fleet(n: usize) -> (tempfile::TempDir, Vec<Relay>) {
    fleet_with(n, "")
}

/// `n` relays; `defaults` is added to `[defaults]`.
fn fleet_with(n: usize, defaults: &str) -> (tempfile::TempDir, Vec<Relay>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.ini"), "mail_domain = x\n").expect("ini");
    let mut toml = format!(
        "[fleet]\ncmdeploy = \"x\"\n[defaults]\n{defaults}\n[defaults.retry]\nattempts = 3\nbackoff = \"10ms\"\nmax_backoff = \"40ms\"\n[groups.g]\n",
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[relay]]\nmail_domain = \"r{i}.example.org\"\nconfig = \"c.ini\"\ngroup = \"g\"\n\
             old = {{ ssh = \"10.1.{}.{}\", ip4 = \"10.1.{}.{}\" }}\nnew = {{ ssh = \"10.2.{}.{}\", ip4 = \"10.2.{}.{}\" }}\n",
            i / 250, i % 250 + 1, i / 250, i % 250 + 1, i / 250, i % 250 + 1, i / 250, i % 250 + 1
        ));
    }
    let path = dir.path().join("f.toml");
    std::fs::write(&path, toml).expect("write");
    let inv = Inventory::load(&path).expect("inventory");
    (dir, inv.relays)
}

/// Counts what runs at once, and fails where told.
#[derive(Default)]
struct Sim {
    transfers: AtomicUsize,
    max_transfers: AtomicUsize,
    cutovers: AtomicUsize,
    max_cutovers: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Relays between the start of step 3 and the start of their final sync.
    awaiting_final_sync: AtomicUsize,
    /// Initial syncs started while some relay was down and awaiting its final sync.
    initial_syncs_while_down: AtomicUsize,
    /// Simulated duration of an initial sync.
    initial_sync_ms: u64,
    /// Simulated durations of step 2 (pre-staging cmdeploy) and step 4.
    preconfigure_ms: u64,
    final_sync_ms: u64,
    /// cmdeploy runs (steps 2, 3, 6) in progress, and the most at once.
    cmdeploys: AtomicUsize,
    max_cmdeploys: AtomicUsize,
    /// Relays down (step 3 done) whose activation has not started.
    awaiting_activation: AtomicUsize,
    /// Pre-staging runs (step 2) started while a relay awaited its activation.
    prestaging_while_activation_waits: AtomicUsize,
    /// Step 3 runs started while a relay awaited its activation.
    disables_while_activation_waits: AtomicUsize,
    /// (relay, step) -> failures to return before succeeding, and their kind.
    faults: Mutex<HashMap<(String, Step), (u32, ErrorKind)>>,
    calls: Mutex<Vec<(String, Step)>>,
}

fn bump(cur: &AtomicUsize, max: &AtomicUsize) {
    let now = cur.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(now, Ordering::SeqCst);
}

impl StepRunner for Sim {
    fn run<'a>(
        &'a self,
        relay: &'a Relay,
        step: Step,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((relay.name.clone(), step));
            match step {
                Step::DisableOld => {
                    self.awaiting_final_sync.fetch_add(1, Ordering::SeqCst);
                }
                Step::FinalSync => {
                    self.awaiting_final_sync.fetch_sub(1, Ordering::SeqCst);
                }
                Step::InitialSync if self.awaiting_final_sync.load(Ordering::SeqCst) > 0 => {
                    self.initial_syncs_while_down.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
            let transfer = matches!(step, Step::InitialSync | Step::FinalSync);
            let cmdeploy = matches!(step, Step::Preconfigure | Step::DisableOld | Step::Activate);
            let waiting_activations = self.awaiting_activation.load(Ordering::SeqCst);
            match step {
                Step::Preconfigure if waiting_activations > 0 => {
                    self.prestaging_while_activation_waits
                        .fetch_add(1, Ordering::SeqCst);
                }
                Step::DisableOld if waiting_activations > 0 => {
                    self.disables_while_activation_waits
                        .fetch_add(1, Ordering::SeqCst);
                }
                Step::Activate => {
                    self.awaiting_activation.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
            if cmdeploy {
                bump(&self.cmdeploys, &self.max_cmdeploys);
            }
            if step == Step::DisableOld {
                bump(&self.cutovers, &self.max_cutovers);
            }
            if transfer {
                bump(&self.transfers, &self.max_transfers);
            }
            bump(&self.in_flight, &self.max_in_flight);
            let ms = match step {
                Step::InitialSync => self.initial_sync_ms,
                Step::Preconfigure => self.preconfigure_ms,
                Step::FinalSync => self.final_sync_ms,
                _ => 2,
            };
            tokio::time::sleep(Duration::from_millis(ms.max(2))).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if cmdeploy {
                self.cmdeploys.fetch_sub(1, Ordering::SeqCst);
            }
            if transfer {
                self.transfers.fetch_sub(1, Ordering::SeqCst);
            }
            let fault = {
                let mut f = self.faults.lock().unwrap();
                match f.get_mut(&(relay.name.clone(), step)) {
                    Some((n, kind)) if *n > 0 => {
                        *n -= 1;
                        Some(*kind)
                    }
                    _ => None,
                }
            };
            if step == Step::DisableOld && fault.is_none() {
                self.awaiting_activation.fetch_add(1, Ordering::SeqCst);
            }
            let failed_cutover = fault.is_some() && step.in_cutover();
            if step == Step::Activate || failed_cutover {
                self.cutovers.fetch_sub(1, Ordering::SeqCst);
            }
            match fault {
                Some(kind) => Err(StepError {
                    kind,
                    message: format!("simulated {kind:?} failure"),
                }),
                None => Ok(StepSuccess::default()),
            }
        })
    }
}

fn jobs(relays: &[Relay]) -> Vec<Job> {
    relays
        .iter()
        .map(|r| Job {
            relay: r.clone(),
            steps: Step::ALL.to_vec(),
        })
        .collect()
}

async fn run(
    relays: &[Relay],
    limits: Limits,
    waves: Vec<Wave>,
    sim: Arc<Sim>,
    cancel: tokio::sync::watch::Receiver<Cancel>,
) -> (Outcome, Vec<Event>) {
    let (events, mut rx) = EventSink::channel();
    let scheduler = Scheduler {
        limits,
        groups: HashMap::new(),
        waves,
        events,
        cancel,
    };
    let outcome = scheduler.run(jobs(relays), sim).await;
    drop(scheduler);
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        seen.push(ev.event);
    }
    (outcome, seen)
}

fn no_cancel() -> tokio::sync::watch::Receiver<Cancel> {
    let (tx, rx) = tokio::sync::watch::channel(Cancel::None);
    std::mem::forget(tx);
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_never_exceeded() {
    let (_d, relays) = fleet(40);
    let sim = Arc::new(Sim::default());
    let limits = Limits {
        forks: 8,
        transfers: 3,
        cutovers: 2,
        ..Limits::default()
    };
    let (outcome, _) = run(
        &relays,
        limits,
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.done.len(), 40);
    assert!(sim.max_in_flight.load(Ordering::SeqCst) <= 8);
    assert!(
        sim.max_transfers.load(Ordering::SeqCst) <= 3,
        "transfers {}",
        sim.max_transfers.load(Ordering::SeqCst)
    );
    assert!(
        sim.max_cutovers.load(Ordering::SeqCst) <= 2,
        "cutovers {}",
        sim.max_cutovers.load(Ordering::SeqCst)
    );
    // The limits were actually reached, so the assertions above measured something.
    assert_eq!(sim.max_transfers.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_deadlock_with_every_limit_at_one() {
    let (_d, relays) = fleet(12);
    let sim = Arc::new(Sim::default());
    let limits = Limits {
        forks: 1,
        transfers: 1,
        cutovers: 1,
        cmdeploy_runs: 1,
        ..Limits::default()
    };
    let run = run(
        &relays,
        limits,
        vec![Wave::Count(1)],
        sim.clone(),
        no_cancel(),
    );
    let (outcome, _) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("no deadlock");
    assert_eq!(outcome.done.len(), 12);
    // One relay at a time; its steps 5 and 6 side by side are the only overlap.
    assert_eq!(sim.max_in_flight.load(Ordering::SeqCst), 2);
}

/// Steps 5 and 6 run at once (the DNS wait and the activation overlap), and the
/// relay is done only when both are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_activation_run_side_by_side() {
    let (_d, relays) = fleet(3);
    let sim = Arc::new(Sim::default());
    let (outcome, events) = run(
        &relays,
        Limits::default(),
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.done.len(), 3, "{outcome:?}");
    // (relay, step, started?) of each step event, in order.
    let marks: Vec<(String, Step, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { relay, step, .. } => Some((relay.clone(), *step, true)),
            Event::StepDone { relay, step, .. } => Some((relay.clone(), *step, false)),
            _ => None,
        })
        .collect();
    for r in &relays {
        let at = |step: Step, started: bool| {
            marks
                .iter()
                .position(|m| m.0 == r.name && m.1 == step && m.2 == started)
                .expect("event")
        };
        assert!(
            at(Step::Activate, true) < at(Step::Dns, false)
                && at(Step::Dns, true) < at(Step::Activate, false),
            "{} ran steps 5 and 6 one after the other",
            r.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_stop_only_that_relay() {
    let (_d, relays) = fleet(3);
    let sim = Arc::new(Sim::default());
    sim.faults.lock().unwrap().insert(
        (relays[0].name.clone(), Step::InitialSync),
        (2, ErrorKind::Transient),
    );
    sim.faults.lock().unwrap().insert(
        (relays[1].name.clone(), Step::Preconfigure),
        (1, ErrorKind::Permanent),
    );
    let (outcome, events) = run(
        &relays,
        Limits::default(),
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert!(outcome.done.contains(&relays[0].name) && outcome.done.contains(&relays[2].name));
    assert_eq!(outcome.failed, vec![relays[1].name.clone()]);
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted {
                relay,
                step: Step::InitialSync,
                attempt,
            } if *relay == relays[0].name => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    // The permanent failure was not retried and nothing after it ran.
    let calls = sim.calls.lock().unwrap();
    let r1: Vec<Step> = calls
        .iter()
        .filter(|(r, _)| *r == relays[1].name)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(r1, vec![Step::InitialSync, Step::Preconfigure]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_canary_stops_the_next_waves() {
    let (_d, relays) = fleet(10);
    let sim = Arc::new(Sim::default());
    sim.faults.lock().unwrap().insert(
        (relays[0].name.clone(), Step::InitialSync),
        (9, ErrorKind::Permanent),
    );
    let limits = Limits {
        max_fail_percent: 10,
        ..Limits::default()
    };
    let (outcome, events) = run(
        &relays,
        limits,
        vec![Wave::Count(1), Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.failed, vec![relays[0].name.clone()]);
    assert_eq!(outcome.not_started.len(), 9);
    assert!(
        outcome
            .halted
            .as_deref()
            .is_some_and(|h| h.contains("max_fail_percent")),
        "{outcome:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Halted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_cancel_starts_nothing_new_but_finishes_cutovers() {
    let (_d, relays) = fleet(6);
    let sim = Arc::new(Sim::default());
    let (tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let limits = Limits {
        forks: 2,
        ..Limits::default()
    };
    let handle = {
        let sim = sim.clone();
        let relays = relays.clone();
        tokio::spawn(async move { run(&relays, limits, vec![Wave::Percent(100)], sim, rx).await })
    };
    // Wait until some relay is inside its cutover, then ask to stop.
    while sim.max_cutovers.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tx.send(Cancel::StopStarting).expect("send");
    let (outcome, _) = handle.await.expect("join");
    assert!(outcome.interrupted);
    assert!(
        !outcome.done.is_empty(),
        "relays in their cutover finish: {outcome:?}"
    );
    assert!(
        !outcome.not_started.is_empty(),
        "no new relay starts: {outcome:?}"
    );
    assert!(outcome.failed.is_empty(), "{outcome:?}");
}

/// Downtime first: while a relay is down, no new initial sync takes the transfer
/// slot its final sync needs (one slot, one cutover at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_syncs_never_take_the_slot_a_down_relay_needs() {
    let (_d, relays) = fleet(8);
    let sim = Arc::new(Sim {
        initial_sync_ms: 20,
        ..Sim::default()
    });
    let limits = Limits {
        forks: 8,
        transfers: 1,
        cutovers: 1,
        ..Limits::default()
    };
    let (outcome, _) = run(
        &relays,
        limits,
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.done.len(), 8);
    assert_eq!(sim.initial_syncs_while_down.load(Ordering::SeqCst), 0);
}

/// Panics at one step of one relay, runs every other step.
struct Panicky {
    relay: String,
    step: Step,
}

impl StepRunner for Panicky {
    fn run<'a>(
        &'a self,
        relay: &'a Relay,
        step: Step,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if relay.name == self.relay && step == self.step {
                let at: Vec<usize> = Vec::new();
                panic!("simulated bug: index {} out of range", at.len() + 7);
            }
            Ok(StepSuccess::default())
        })
    }
}

/// A relay whose task panics (a bug in a step) ends as a failed relay with the
/// panic's message: in the outcome, in a failed step's event and in the journal;
/// the other relays finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_relay_task_ends_as_a_failed_relay_with_the_message() {
    let (dir, relays) = fleet(3);
    let runner = Arc::new(Panicky {
        relay: relays[1].name.clone(),
        step: Step::FinalSync,
    });
    let (events, mut rx) = EventSink::channel();
    let scheduler = Scheduler {
        limits: Limits::default(),
        groups: HashMap::new(),
        waves: vec![Wave::Percent(100)],
        events,
        cancel: no_cancel(),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        scheduler.run(jobs(&relays), runner),
    )
    .await
    .expect("the run ends");
    drop(scheduler);
    assert_eq!(outcome.failed, vec![relays[1].name.clone()], "{outcome:?}");
    assert_eq!(outcome.done.len(), 2, "{outcome:?}");
    let mut journal =
        cmfleet::pipeline::journal::Journal::open(dir.path(), &dir.path().join("f.toml"))
            .expect("journal");
    let mut failed = Vec::new();
    while let Ok(envelope) = rx.try_recv() {
        let ev = envelope.event;
        journal.apply(&ev);
        if let Event::StepFailed {
            relay,
            step,
            kind,
            error,
            will_retry,
            ..
        } = ev
        {
            failed.push((relay, step, kind, error, will_retry));
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (relay, step, kind, error, will_retry) = &failed[0];
    assert_eq!((relay, *step), (&relays[1].name, Step::FinalSync));
    assert_eq!(*kind, ErrorKind::Permanent);
    assert!(!will_retry);
    assert!(
        error.contains("simulated bug: index 7 out of range"),
        "{error}"
    );
    let rec = &journal.data.relays[&relays[1].name];
    assert_eq!(rec.failed_step(), Some(Step::FinalSync), "{rec:#?}");
    let recorded = rec.step(Step::FinalSync).error.clone().unwrap_or_default();
    assert!(recorded.contains("index 7 out of range"), "{recorded}");
}

/// The scheduler keeps to `cmdeploy_runs`: its slots are the night's bottleneck, and
/// the executor's workspace pool must never have to queue a run behind another.
#[tokio::test(start_paused = true)]
async fn cmdeploy_runs_are_never_exceeded() {
    let (_d, relays) = fleet(30);
    let sim = Arc::new(Sim {
        initial_sync_ms: 50,
        preconfigure_ms: 200,
        ..Sim::default()
    });
    let limits = Limits {
        forks: 30,
        transfers: 30,
        cutovers: 30,
        cmdeploy_runs: 3,
        ..Limits::default()
    };
    let (outcome, events) = run(
        &relays,
        limits,
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.done.len(), 30);
    assert_eq!(sim.max_cmdeploys.load(Ordering::SeqCst), 3);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Waiting {
            reason: cmfleet::model::events::WaitReason::CmdeployLimit,
            ..
        }
    )));
}

/// Downtime first, at the bottleneck too: once a relay is down (step 3 done), no
/// pre-staging run and no other relay's step 3 may take the cmdeploy slot its
/// activation needs, even while it is busy with its final sync (minutes long in a
/// real night: a step 2 started then would hold up the activation for a whole
/// deploy). One slot, two cutovers at a time, long pre-staging runs.
#[tokio::test(start_paused = true)]
async fn a_down_relays_activation_never_waits_behind_pre_staging() {
    let (_d, relays) = fleet(12);
    let sim = Arc::new(Sim {
        initial_sync_ms: 10,
        preconfigure_ms: 300,
        final_sync_ms: 100,
        ..Sim::default()
    });
    let limits = Limits {
        forks: 12,
        transfers: 12,
        cutovers: 2,
        cmdeploy_runs: 1,
        ..Limits::default()
    };
    let (outcome, _) = run(
        &relays,
        limits,
        vec![Wave::Percent(100)],
        sim.clone(),
        no_cancel(),
    )
    .await;
    assert_eq!(outcome.done.len(), 12);
    assert_eq!(sim.max_cmdeploys.load(Ordering::SeqCst), 1);
    assert_eq!(
        sim.prestaging_while_activation_waits.load(Ordering::SeqCst),
        0
    );
    assert_eq!(
        sim.disables_while_activation_waits.load(Ordering::SeqCst),
        0
    );
}

/// A systemctl step 3 runs no cmdeploy: it must not queue for a cmdeploy slot behind
/// another relay's hour-long pre-staging deploy while OLD still serves.
#[tokio::test(start_paused = true)]
async fn a_systemctl_step_3_takes_no_cmdeploy_slot() {
    let (_d, relays) = fleet_with(2, "disable_old = \"systemctl\"");
    let sim = Arc::new(Sim {
        initial_sync_ms: 10,
        preconfigure_ms: 1000,
        ..Sim::default()
    });
    let limits = Limits {
        cmdeploy_runs: 1,
        ..Limits::default()
    };
    // relay 0 pre-stages (its step 2 holds the only slot from the start); relay 1
    // was pre-staged before and goes from its refresh straight to the cutover.
    let jobs = vec![
        Job {
            relay: relays[0].clone(),
            steps: vec![Step::Preconfigure],
        },
        Job {
            relay: relays[1].clone(),
            steps: vec![Step::InitialSync, Step::DisableOld, Step::FinalSync],
        },
    ];
    let (events, mut rx) = EventSink::channel();
    let scheduler = Scheduler {
        limits,
        groups: HashMap::new(),
        waves: vec![Wave::Percent(100)],
        events,
        cancel: no_cancel(),
    };
    let outcome = scheduler.run(jobs, sim).await;
    assert_eq!(outcome.done.len(), 2);
    drop(scheduler);
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        seen.push(ev.event);
    }
    let at = |want: &dyn Fn(&Event) -> bool| seen.iter().position(want).expect("event");
    let r1 = relays[1].name.clone();
    let started = at(
        &|e| matches!(e, Event::StepStarted { relay, step: Step::DisableOld, .. } if *relay == r1),
    );
    let prestaged = at(&|e| {
        matches!(
            e,
            Event::StepDone {
                step: Step::Preconfigure,
                ..
            }
        )
    });
    assert!(
        started < prestaged,
        "step 3 waited for the pre-staging deploy: {seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Waiting { relay, .. } if *relay == r1)),
        "{seen:#?}"
    );
}
