//! The reporter's views: plain lines for a scripted run (snapshot), JSON lines, and
//! the live view drawing into a writer without falling over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmfleet::model::events::{Event, WaitReason};
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{JournalData, RelayRecord, StepStatus};
use cmfleet::pipeline::report::{ManualClock, ProgressMode, ReportContext, Reporter};

/// 2026-03-14 01:00:00 UTC: the night of the migration.
const T0: u64 = 1_773_450_000_000;

/// A writer the test can read back after the reporter is gone.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

fn ctx(state_dir: PathBuf, relays: &[&str]) -> ReportContext {
    ReportContext {
        inventory: "fleet.toml".into(),
        relays: relays.iter().map(|s| s.to_string()).collect(),
        state_dir,
        until_step: cmfleet::model::step::Step::Activate,
    }
}

const A: &str = "a.example.org";
const B: &str = "b.example.org";
const C: &str = "c.example.org";

fn started(relay: &str, step: Step, attempt: u32) -> Event {
    Event::StepStarted {
        relay: relay.into(),
        step,
        attempt,
    }
}

fn done(relay: &str, step: Step, secs: u64) -> Event {
    Event::StepDone {
        relay: relay.into(),
        step,
        elapsed: Duration::from_secs(secs),
        note: None,
        deployed: None,
    }
}

fn progress(relay: &str, step: Step, percent: u8) -> Event {
    Event::Progress {
        relay: relay.into(),
        step,
        bytes: (u64::from(percent) * 40) << 20,
        percent,
        rate: "31.25MB/s".into(),
    }
}

fn output(relay: &str, step: Step, line: &str) -> Event {
    Event::Output {
        relay: relay.into(),
        step,
        line: line.into(),
    }
}

fn waiting(relay: &str, reason: WaitReason) -> Event {
    Event::Waiting {
        relay: relay.into(),
        reason,
    }
}

/// A night in the life of three relays, with the seconds that pass before each
/// event: A migrates, B fails before cutover, C is left DOWN.
fn script() -> Vec<(u64, Event)> {
    use Step::*;
    vec![
        (0, Event::RunStarted { relays: 3 }),
        (0, waiting(A, WaitReason::ConnectRate)),
        (0, waiting(A, WaitReason::ConnectRate)),
        (0, started(A, InitialSync, 1)),
        (0, started(B, InitialSync, 1)),
        (0, started(C, InitialSync, 1)),
        (1, output(A, InitialSync, "sending incremental file list")),
        (0, progress(A, InitialSync, 5)),
        (1, progress(A, InitialSync, 10)), // throttled: same quarter, 1 s later
        (1, progress(A, InitialSync, 26)), // a new quarter
        (1, progress(A, InitialSync, 30)), // throttled
        (5, progress(A, InitialSync, 40)), // 5 s later
        (
            0,
            Event::StepFailed {
                relay: B.into(),
                step: InitialSync,
                attempt: 1,
                kind: ErrorKind::Transient,
                error: "ssh: connect to host 10.0.0.2 port 22: Connection refused".into(),
                will_retry: true,
            },
        ),
        (0, waiting(B, WaitReason::Backoff(Duration::from_secs(30)))),
        (2, progress(A, InitialSync, 100)),
        (0, done(A, InitialSync, 11)),
        (0, done(C, InitialSync, 11)),
        (0, started(A, Preconfigure, 1)),
        (
            0,
            output(
                A,
                Preconfigure,
                "\u{1b}[32mDeploying\u{1b}[0m stage install",
            ),
        ),
        (0, started(C, Preconfigure, 1)),
        (30, done(A, Preconfigure, 30)),
        (0, done(C, Preconfigure, 30)),
        (0, started(B, InitialSync, 2)),
        (0, waiting(C, WaitReason::CutoverLimit)),
        (0, started(A, DisableOld, 1)),
        (4, done(A, DisableOld, 4)),
        (0, started(A, FinalSync, 1)),
        (0, started(C, DisableOld, 1)),
        (3, done(C, DisableOld, 3)),
        (0, started(C, FinalSync, 1)),
        (
            0,
            output(
                C,
                FinalSync,
                "rsync: [sender] write error: Broken pipe (32)",
            ),
        ),
        (
            0,
            output(
                C,
                FinalSync,
                "rsync error: error in socket IO (code 10) at io.c(848)",
            ),
        ),
        (
            1,
            Event::StepFailed {
                relay: C.into(),
                step: FinalSync,
                attempt: 3,
                kind: ErrorKind::Transient,
                error: "rsync exited with 10\n(error in socket IO)".into(),
                will_retry: false,
            },
        ),
        (5, done(A, FinalSync, 6)),
        (0, started(A, Dns, 1)),
        (
            0,
            Event::StepDone {
                relay: A.into(),
                step: Dns,
                elapsed: Duration::from_millis(2500),
                note: None,
                deployed: None,
            },
        ),
        (0, started(A, Activate, 1)),
        (20, done(A, Activate, 20)),
        (4, done(B, InitialSync, 4)),
        (0, started(B, Preconfigure, 1)),
        (
            0,
            output(B, Preconfigure, "Error: unsupported OS: Debian 11"),
        ),
        (
            9,
            Event::StepFailed {
                relay: B.into(),
                step: Preconfigure,
                attempt: 1,
                kind: ErrorKind::Permanent,
                error: "cmdeploy run exited with 1".into(),
                will_retry: false,
            },
        ),
        (
            0,
            Event::Halted {
                reason: "2 of 3 finished relays failed (max_fail_percent = 50)".into(),
            },
        ),
        (
            0,
            Event::RunFinished {
                elapsed: Duration::from_secs(95),
            },
        ),
    ]
}

/// The journal the engine would have written for `script()`, with times in ms after T0.
fn journal() -> JournalData {
    let at = |s: u64| Some(T0 + s * 1000);
    let mut relays = BTreeMap::new();
    let done_steps = |r: &mut RelayRecord, steps: &[Step]| {
        for s in steps {
            let rec = r.step_mut(*s);
            rec.status = StepStatus::Done;
            rec.attempts = 1;
        }
    };
    let mut a = RelayRecord::new();
    done_steps(&mut a, &Step::ALL);
    a.down_since_ms = at(42);
    a.up_again_ms = at(75);
    relays.insert(A.to_string(), a);

    let mut b = RelayRecord::new();
    done_steps(&mut b, &[Step::InitialSync]);
    b.step_mut(Step::InitialSync).attempts = 2;
    let p = b.step_mut(Step::Preconfigure);
    p.status = StepStatus::Failed;
    p.attempts = 1;
    p.error = Some("cmdeploy run exited with 1".into());
    p.error_kind = Some(ErrorKind::Permanent);
    relays.insert(B.to_string(), b);

    let mut c = RelayRecord::new();
    done_steps(
        &mut c,
        &[Step::InitialSync, Step::Preconfigure, Step::DisableOld],
    );
    let f = c.step_mut(Step::FinalSync);
    f.status = StepStatus::Failed;
    f.attempts = 3;
    f.error = Some("rsync exited with 10\n(error in socket IO)".into());
    f.error_kind = Some(ErrorKind::Transient);
    c.down_since_ms = at(42);
    relays.insert(C.to_string(), c);
    JournalData {
        version: 1,
        inventory: "/srv/fleet/fleet.toml".into(),
        relays,
    }
}

fn run(mode: ProgressMode, state_dir: PathBuf) -> String {
    let capture = Capture::default();
    let clock = ManualClock::new(T0);
    let mut reporter = Reporter::with_writer(
        mode,
        ctx(state_dir.clone(), &[A, B, C]),
        Box::new(capture.clone()),
    )
    .with_clock(clock.clone());
    for (secs, ev) in script() {
        clock.advance(Duration::from_secs(secs));
        reporter.handle(&ev);
    }
    let stats = reporter.run_stats();
    let finished = reporter.finish(&journal(), stats);
    assert!(finished.errors.is_empty(), "{:?}", finished.errors);
    assert_eq!(finished.exit_code(), cmfleet::model::exit::RELAYS_FAILED);
    capture
        .text()
        .replace(&state_dir.display().to_string(), "[STATE]")
}

#[test]
fn plain_reporter_prints_a_scripted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = run(ProgressMode::Plain, dir.path().to_path_buf());
    assert!(!text.contains('\u{1b}'), "plain output has no escape codes");
    insta::assert_snapshot!(text);
    let failed = std::fs::read_to_string(dir.path().join("failed.txt")).expect("failed.txt");
    assert_eq!(failed, format!("{B}\n{C}\n"));
}

#[test]
fn auto_mode_on_a_writer_is_plain() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(
        run(ProgressMode::Auto, dir.path().to_path_buf()),
        run(ProgressMode::Plain, dir.path().to_path_buf())
    );
}

#[test]
fn json_lines_are_one_object_per_event_and_end_with_the_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = run(ProgressMode::Json, dir.path().to_path_buf());
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), script().len() + 1);
    assert_eq!(lines[0]["event"], "run-started");
    assert_eq!(lines[0]["ts_ms"], T0);
    assert_eq!(lines[3]["event"], "step-started");
    assert_eq!(lines[3]["step"], "initial-sync");
    let report = &lines[lines.len() - 1];
    assert_eq!(report["event"], "report");
    assert_eq!(report["counts"]["succeeded"], 1);
    assert_eq!(report["counts"]["down"], 1);
}

#[test]
fn live_view_draws_into_a_writer_and_ends_with_the_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = run(ProgressMode::Live, dir.path().to_path_buf());
    // The bars are cleared; what stays is failures printed above them and the report.
    assert!(text.contains("✗ c.example.org 4 final-sync"), "{text}");
    assert!(text.contains("LEFT DOWN"), "{text}");
    assert!(text.contains("what to do next:"), "{text}");
}

#[test]
fn live_view_with_many_relays_keeps_going() {
    let names: Vec<String> = (0..60).map(|i| format!("r{i:02}.example.org")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let capture = Capture::default();
    let mut reporter = Reporter::with_writer(
        ProgressMode::Live,
        ctx(dir.path().to_path_buf(), &refs),
        Box::new(capture.clone()),
    );
    for n in &names {
        reporter.handle(&started(n, Step::InitialSync, 1));
    }
    for pct in [10, 50, 90] {
        for n in &names {
            reporter.handle(&progress(n, Step::InitialSync, pct));
        }
    }
    for n in &names[..40] {
        reporter.handle(&done(n, Step::Activate, 1));
    }
    std::thread::sleep(Duration::from_millis(150));
    reporter.handle(&progress(&names[59], Step::InitialSync, 95));
    let journal = JournalData {
        version: 1,
        inventory: "/srv/fleet/fleet.toml".into(),
        relays: BTreeMap::new(),
    };
    let stats = reporter.run_stats();
    let finished = reporter.finish(&journal, stats);
    assert!(finished.errors.is_empty(), "{:?}", finished.errors);
    let text = capture.text();
    assert!(
        text.contains("more in flight"),
        "the overflow line was drawn"
    );
    assert!(text.contains("not started"), "{text}");
}

/// The downtime a relay's line reports is the journal's, as in the summary: a relay
/// left DOWN by an earlier run counts from when that run disabled OLD (the preloaded
/// journal), not from this run's first cutover step; one going down in this run counts
/// from the recorded serving change, not from step 3's preflight.
#[test]
fn plain_reporter_counts_downtime_from_the_journal() {
    use cmfleet::model::events::ServingChange;
    let dir = tempfile::tempdir().expect("temp dir");
    // C was left DOWN at step 4 by a run that disabled OLD 10 s before this one.
    let mut before = journal();
    before
        .relays
        .get_mut(C)
        .expect("c in the journal")
        .down_since_ms = Some(T0 - 10_000);
    before.relays.remove(A);
    let capture = Capture::default();
    let clock = ManualClock::new(T0);
    let mut reporter = Reporter::with_writer(
        ProgressMode::Plain,
        ctx(dir.path().to_path_buf(), &[A, C]),
        Box::new(capture.clone()),
    )
    .with_clock(clock.clone());
    reporter.preload(&before);
    let script = vec![
        (0, Event::RunStarted { relays: 2 }),
        (0, started(C, Step::FinalSync, 1)),
        (0, started(A, Step::DisableOld, 1)),
        // A's cutover preflight and hook: OLD still serves.
        (
            3,
            Event::ServingChange {
                relay: A.into(),
                change: ServingChange::DisableOld,
            },
        ),
        (1, done(C, Step::FinalSync, 4)),
        (0, done(A, Step::DisableOld, 4)),
        (0, started(C, Step::Activate, 1)),
        (0, started(A, Step::Activate, 1)),
        (2, done(C, Step::Activate, 2)),
        (0, done(A, Step::Activate, 2)),
    ];
    for (secs, ev) in script {
        clock.advance(Duration::from_secs(secs));
        reporter.handle(&ev);
    }
    let stats = reporter.run_stats();
    reporter.finish(&before, stats);
    let text = capture.text();
    assert!(
        text.contains("c.example.org: migrated (down for 16s)"),
        "10 s before this run and 6 s in it:\n{text}"
    );
    assert!(
        text.contains("a.example.org: migrated (down for 3.0s)"),
        "from the serving change, not the preflight:\n{text}"
    );
}
