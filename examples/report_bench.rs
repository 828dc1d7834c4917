//! How fast the reporter consumes events: pushes 100,000 events of a 200-relay run
//! (mostly rsync progress and output lines, as a real run sends them) through the
//! live, plain and JSON views into a sink, and prints events per second.
//!
//! `cargo run --release --example report_bench`
//!
//! With `--demo`, it instead plays a simulated 40-relay night (20 in flight, at most
//! 4 in their downtime window) on this terminal at human speed, for looking at the
//! live view (`--progress` from `CMFLEET_PROGRESS`: live, plain or json).

use std::time::{Duration, Instant};

use cmfleet::model::events::{Event, WaitReason};
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::JournalData;
use cmfleet::pipeline::report::{ProgressMode, ReportContext, Reporter};

const EVENTS: usize = 100_000;
const RELAYS: usize = 200;

/// A deterministic stream: every relay walks its six steps while progress and output
/// events make up most of the traffic.
fn events(names: &[String]) -> Vec<Event> {
    let mut out = Vec::with_capacity(EVENTS);
    out.push(Event::RunStarted { relays: RELAYS });
    let mut i = 0usize;
    while out.len() < EVENTS - 1 {
        let relay = names[i % RELAYS].clone();
        let round = i / RELAYS;
        let step = Step::ALL[(round / 80) % 6];
        let ev = match round % 80 {
            0 => Event::StepStarted {
                relay,
                step,
                attempt: 1,
            },
            1 => Event::Waiting {
                relay,
                reason: WaitReason::CutoverLimit,
            },
            79 if i.is_multiple_of(7) => Event::StepFailed {
                relay,
                step,
                attempt: 1,
                kind: ErrorKind::Transient,
                error: "connection reset".into(),
                will_retry: true,
            },
            79 => Event::StepDone {
                relay,
                step,
                elapsed: Duration::from_secs(3),
                note: None,
                deployed: None,
            },
            n if n % 2 == 0 => Event::Progress {
                relay,
                step,
                bytes: (n as u64) << 24,
                percent: (n * 100 / 80) as u8,
                rate: "112.45MB/s".into(),
            },
            n => Event::Output {
                relay,
                step,
                line: format!("    {n} 100%  112.45MB/s    0:00:00 (xfr#{n}, to-chk=0/{n})"),
            },
        };
        out.push(ev);
        i += 1;
    }
    out.push(Event::RunFinished {
        elapsed: Duration::from_secs(3600),
    });
    out
}

fn main() {
    if std::env::args().any(|a| a == "--demo") {
        demo::run();
        return;
    }
    let names: Vec<String> = (0..RELAYS)
        .map(|i| format!("relay{i:03}.example.org"))
        .collect();
    let evs = events(&names);
    let state = std::env::temp_dir().join(format!("cmfleet-report-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&state) {
        eprintln!("cannot create {}: {e}", state.display());
        std::process::exit(1);
    }
    let journal = JournalData {
        version: 1,
        inventory: "/bench/fleet.toml".into(),
        relays: Default::default(),
    };
    for (label, mode) in [
        ("live", ProgressMode::Live),
        ("plain", ProgressMode::Plain),
        ("json", ProgressMode::Json),
    ] {
        let ctx = ReportContext {
            inventory: "fleet.toml".into(),
            relays: names.clone(),
            state_dir: state.clone(),
            until_step: cmfleet::model::step::Step::Activate,
        };
        let mut reporter = Reporter::with_writer(mode, ctx, Box::new(std::io::sink()));
        let start = Instant::now();
        let mut worst = Duration::ZERO;
        for ev in &evs {
            let t = Instant::now();
            reporter.handle(ev);
            worst = worst.max(t.elapsed());
        }
        let took = start.elapsed();
        let stats = reporter.run_stats();
        let finished = reporter.finish(&journal, stats);
        for e in &finished.errors {
            eprintln!("{label}: {e}");
        }
        println!(
            "{label:>5}: {} events in {:.3}s = {:.0} events/s (slowest event {:.2} ms)",
            evs.len(),
            took.as_secs_f64(),
            evs.len() as f64 / took.as_secs_f64(),
            worst.as_secs_f64() * 1e3
        );
    }
    paced(&names, &evs, &state);
    let _ = std::fs::remove_dir_all(&state);
}

/// The live view at a steady 10,000 events per second for 3 s, redraws included: how
/// much of one core the reporter needs.
fn paced(names: &[String], evs: &[Event], state: &std::path::Path) {
    const RATE: usize = 10_000;
    const SECS: usize = 3;
    let ctx = ReportContext {
        inventory: "fleet.toml".into(),
        relays: names.to_vec(),
        state_dir: state.to_path_buf(),
        until_step: cmfleet::model::step::Step::Activate,
    };
    let mut reporter = Reporter::with_writer(ProgressMode::Live, ctx, Box::new(std::io::sink()));
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    // Batches of 10 events every millisecond.
    for (i, batch) in evs.chunks(10).take(RATE * SECS / 10).enumerate() {
        let due = Duration::from_millis(i as u64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        for ev in batch {
            reporter.handle(ev);
        }
        busy += t.elapsed();
    }
    let wall = start.elapsed();
    println!(
        " live, paced at {RATE} events/s for {:.1}s: reporter busy {:.1}% of one core",
        wall.as_secs_f64(),
        busy.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
}

mod demo {
    use std::time::Duration;

    use cmfleet::model::events::{Event, WaitReason};
    use cmfleet::model::step::ErrorKind;
    use cmfleet::model::step::Step;
    use cmfleet::pipeline::journal::Journal;
    use cmfleet::pipeline::report::{ProgressMode, ReportContext, Reporter};

    const RELAYS: usize = 40;
    const FORKS: usize = 20;
    const CUTOVERS: usize = 4;
    const TICK: Duration = Duration::from_millis(50);

    struct Sim {
        step: usize,
        ticks: u32,
        percent: u8,
        attempt: u32,
        active: bool,
        finished: bool,
        waiting: bool,
    }

    /// How many ticks a step takes for relay `i` (deterministic variety).
    fn length(i: usize, step: usize) -> u32 {
        let base = [60, 40, 10, 30, 12, 20][step];
        base + ((i * 37 + step * 11) % 25) as u32
    }

    pub fn run() {
        let mode = match std::env::var("CMFLEET_PROGRESS").as_deref() {
            Ok("plain") => ProgressMode::Plain,
            Ok("json") => ProgressMode::Json,
            Ok("live") => ProgressMode::Live,
            _ => ProgressMode::Auto,
        };
        let names: Vec<String> = (1..=RELAYS)
            .map(|i| format!("relay{i:02}.example.org"))
            .collect();
        let state =
            std::env::temp_dir().join(format!("cmfleet-report-demo-{}", std::process::id()));
        let inventory = state.join("fleet.toml");
        let mut journal = match Journal::open(&state, &inventory) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let ctx = ReportContext {
            inventory: "fleet.toml".into(),
            relays: names.clone(),
            state_dir: state.clone(),
            until_step: cmfleet::model::step::Step::Activate,
        };
        let mut reporter = Reporter::new(mode, ctx);
        let mut send = |reporter: &mut Reporter, ev: Event| {
            journal.apply(&ev);
            reporter.handle(&ev);
        };
        send(&mut reporter, Event::RunStarted { relays: RELAYS });
        let mut sims: Vec<Sim> = (0..RELAYS)
            .map(|_| Sim {
                step: 0,
                ticks: 0,
                percent: 0,
                attempt: 1,
                active: false,
                finished: false,
                waiting: false,
            })
            .collect();
        let started = std::time::Instant::now();
        loop {
            let active = sims.iter().filter(|s| s.active).count();
            if active == 0 && sims.iter().all(|s| s.finished) {
                break;
            }
            // Admit new relays up to the fork limit.
            let mut free = FORKS.saturating_sub(active);
            for (i, s) in sims.iter_mut().enumerate() {
                if free == 0 {
                    break;
                }
                if !s.active && !s.finished {
                    s.active = true;
                    free -= 1;
                    send(
                        &mut reporter,
                        Event::StepStarted {
                            relay: names[i].clone(),
                            step: Step::InitialSync,
                            attempt: 1,
                        },
                    );
                }
            }
            let mut in_cutover = sims
                .iter()
                .filter(|s| s.active && s.step >= 2 && !s.waiting)
                .count();
            for (i, s) in sims.iter_mut().enumerate() {
                if !s.active {
                    continue;
                }
                let relay = names[i].clone();
                let step = Step::ALL[s.step];
                if s.waiting {
                    if in_cutover < CUTOVERS {
                        in_cutover += 1;
                        s.waiting = false;
                        send(
                            &mut reporter,
                            Event::StepStarted {
                                relay,
                                step,
                                attempt: 1,
                            },
                        );
                    }
                    continue;
                }
                s.ticks += 1;
                let len = length(i, s.step);
                if matches!(step, Step::InitialSync | Step::FinalSync) && s.ticks % 2 == 0 {
                    s.percent = (s.ticks * 100 / len).min(100) as u8;
                    send(
                        &mut reporter,
                        Event::Progress {
                            relay: relay.clone(),
                            step,
                            bytes: (u64::from(s.percent) * (30 + i as u64)) << 20,
                            percent: s.percent,
                            rate: format!("{:.2}MB/s", 80.0 + i as f64),
                        },
                    );
                } else if s.ticks % 5 == 0 {
                    send(
                        &mut reporter,
                        Event::Output {
                            relay: relay.clone(),
                            step,
                            line: format!(
                                "[{}] {} operation {} of {len}",
                                names[i],
                                step.name(),
                                s.ticks
                            ),
                        },
                    );
                }
                if s.ticks < len {
                    continue;
                }
                // Scripted trouble: a relay left DOWN, one failing before cutover,
                // one that succeeds on its second attempt.
                let failure = match (i, step) {
                    (6, Step::FinalSync) => Some((
                        ErrorKind::Transient,
                        "rsync exited with 12 (error in rsync protocol data stream)",
                        false,
                    )),
                    (12, Step::Preconfigure) => Some((
                        ErrorKind::Permanent,
                        "cmdeploy run exited with 1: unsupported OS",
                        false,
                    )),
                    (20, Step::InitialSync) if s.attempt == 1 => {
                        Some((ErrorKind::Transient, "ssh: connection refused", true))
                    }
                    _ => None,
                };
                if let Some((kind, error, will_retry)) = failure {
                    send(
                        &mut reporter,
                        Event::StepFailed {
                            relay: relay.clone(),
                            step,
                            attempt: s.attempt,
                            kind,
                            error: error.into(),
                            will_retry,
                        },
                    );
                    if will_retry {
                        s.attempt += 1;
                        s.ticks = 0;
                        send(
                            &mut reporter,
                            Event::StepStarted {
                                relay,
                                step,
                                attempt: s.attempt,
                            },
                        );
                    } else {
                        s.active = false;
                        s.finished = true;
                    }
                    continue;
                }
                send(
                    &mut reporter,
                    Event::StepDone {
                        relay: relay.clone(),
                        step,
                        elapsed: TICK * s.ticks,
                        note: None,
                        deployed: None,
                    },
                );
                s.ticks = 0;
                s.percent = 0;
                s.attempt = 1;
                if step == Step::Activate {
                    s.active = false;
                    s.finished = true;
                    in_cutover -= 1;
                    continue;
                }
                s.step += 1;
                let next = Step::ALL[s.step];
                if next == Step::DisableOld && in_cutover >= CUTOVERS {
                    s.waiting = true;
                    send(
                        &mut reporter,
                        Event::Waiting {
                            relay,
                            reason: WaitReason::CutoverLimit,
                        },
                    );
                } else {
                    if next == Step::DisableOld {
                        in_cutover += 1;
                    }
                    send(
                        &mut reporter,
                        Event::StepStarted {
                            relay,
                            step: next,
                            attempt: 1,
                        },
                    );
                }
            }
            std::thread::sleep(TICK);
        }
        send(
            &mut reporter,
            Event::RunFinished {
                elapsed: started.elapsed(),
            },
        );
        let stats = reporter.run_stats();
        let finished = reporter.finish(&journal.data, stats);
        for e in &finished.errors {
            eprintln!("{e}");
        }
        drop(journal);
        let _ = std::fs::remove_dir_all(&state);
    }
}
