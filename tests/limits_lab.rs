//! Fleet limits on the lab: the ssh connection rate, and the second Ctrl-C.

mod common;

use std::time::{Duration, Instant};

use cmfleet::model::events::{Event, WaitReason};
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, StepStatus};
use cmfleet::pipeline::migrate::migrate;
use cmfleet::pipeline::scheduler::Cancel;
use common::lab::TestLab;

/// Writes a variant of the lab inventory with `fleet_keys` added to `[fleet]`.
fn inventory_with(lab: &TestLab, name: &str, fleet_keys: &str) -> Inventory {
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let path = lab.path().join(name);
    std::fs::write(
        &path,
        text.replace("[fleet]\n", &format!("[fleet]\n{fleet_keys}\n")),
    )
    .expect("write");
    Inventory::load(&path).expect("inventory")
}

/// Four relays need eight ssh masters; at one new connection per second the
/// limiter must hold relays back (and say so), and the connections cannot all
/// have been made in less than the rate allows.
#[test]
fn new_ssh_connections_are_rate_limited_and_relays_say_they_wait() {
    let lab = TestLab::start(4);
    let inv = inventory_with(&lab, "rate.toml", "ssh_connects_per_sec = 1");
    let relays = inventory::select(&inv, None).expect("select");
    let opts = common::run::options(Step::InitialSync);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let mut waits = 0;
    let started = Instant::now();
    let (outcome, _journal) = rt
        .block_on(migrate(&inv, &relays, &opts, rx, |ev, _| {
            if matches!(
                ev,
                Event::Waiting {
                    reason: WaitReason::ConnectRate,
                    ..
                }
            ) {
                waits += 1;
            }
        }))
        .expect("migrate");
    let elapsed = started.elapsed();
    assert_eq!(outcome.done.len(), 4, "{outcome:?}");
    assert!(
        waits >= 3,
        "only {waits} relays reported waiting for the connection rate"
    );
    // A burst of one, then one a second: eight masters take at least seven seconds.
    assert!(
        elapsed >= Duration::from_secs(6),
        "8 connections in {elapsed:?} at 1/s"
    );
}

/// First Ctrl-C: nothing new starts. Second: running steps stop now, their processes
/// are killed (not orphaned) and the journal records the step as interrupted.
#[test]
fn a_second_ctrl_c_stops_running_steps_and_records_them_interrupted() {
    // ~3.3 MB over a 256 KiB/s link: the copy would go on for ~12 s after the kill
    // if the kill did not end it.
    let lab = TestLab::start_with(
        1,
        cmfleet::lab::DataOptions {
            users: 4,
            messages: 50,
            message_size: 16384,
            seed: 3,
        },
    );
    let relay = lab.relays()[0].clone();
    lab.set_link_limit(relay.old.addr, Some(256))
        .expect("slow link");
    let inv = inventory_with(&lab, "cancel.toml", "");
    let relays = inventory::select(&inv, None).expect("select");
    let opts = common::run::options(Step::Activate);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let journal_path = cmfleet::pipeline::journal::journal_path(&inv.fleet.state_dir, &inv.path);
    let canceller = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&journal_path)
            .unwrap_or_default()
            .contains("\"running\"")
        {
            assert!(Instant::now() < deadline, "step 1 never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = tx.send(Cancel::StopStarting);
        std::thread::sleep(Duration::from_millis(200));
        let _ = tx.send(Cancel::Kill);
    });
    let started = Instant::now();
    let (outcome, journal) = rt
        .block_on(migrate(&inv, &relays, &opts, rx, |_, _| {}))
        .expect("migrate");
    canceller.join().expect("canceller");
    assert!(outcome.interrupted, "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the kill did not stop the step"
    );
    let step1 = journal.data.relays[&relay.mail_domain]
        .step(Step::InitialSync)
        .clone();
    assert_eq!(step1.status, StepStatus::Failed, "{step1:?}");
    assert_eq!(step1.error_kind, Some(ErrorKind::Interrupted), "{step1:?}");
    // Nothing of the step survives it, on the controller (no process there: commands
    // are channels) or on OLD, where the copy's process group is killed.
    let copying = || {
        cmfleet::lab::lab_processes(lab.path())
            .into_iter()
            .filter(|(_, what)| what.contains("rsync") || what.contains("cmfleet-copied"))
            .map(|(_, what)| what)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !copying().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        copying(),
        Vec::<String>::new(),
        "the copy outlived the kill"
    );
    drop(journal);
    // The next run resumes and finishes the relay.
    lab.set_link_limit(relay.old.addr, None)
        .expect("normal link");
    let (_tx2, rx2) = tokio::sync::watch::channel(Cancel::None);
    let (outcome, _) = rt
        .block_on(migrate(&inv, &relays, &opts, rx2, |_, _| {}))
        .expect("migrate again");
    assert_eq!(outcome.done.len(), 1, "{outcome:?}");
    let _ = Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal readable");
}

/// A terminal's Ctrl-C reaches the whole foreground process group: cmfleet and
/// every process it started. Sent during a 4-relay cutover (2 at once, activations
/// lasting 3 s), it must leave every relay done or staged: the running cmdeploys
/// finish (they run in process groups of their own), relays inside their cutover
/// finish it, none starts a new one. Before the fix the signal killed the running
/// activation and the relay was left DOWN, filed as a permanent failure.
#[test]
fn a_ctrl_c_to_the_whole_process_group_leaves_every_relay_done_or_staged() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;

    let lab = TestLab::start(4);
    let inv = inventory_with(&lab, "ctrl-c.toml", "cutovers = 2");
    let path = inv.path.clone();
    let (code, text) = common::run::cmfleet(&common::run::PRE_STAGE, &path);
    assert_eq!(code, Some(0), "{text}");
    // The stand-in cmdeploy's activations and disables last a few seconds, as real
    // ones do: the signal lands inside one.
    std::fs::write(
        lab.path().join("cmdeploy-cost"),
        "activate 3 0\ndisable-mail 2 0\n",
    )
    .expect("cost file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(["migrate", "--yes", "--progress", "json", "-i"])
        .arg(&path)
        .env_remove("CMFLEET_PROGRESS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        // Its own group, standing for the terminal's foreground group.
        .process_group(0)
        .spawn()
        .expect("spawn cmfleet");
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().expect("stdout");
    let mut signalled = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("read events");
        if !signalled && line.contains("\"step-started\"") && line.contains("\"activate\"") {
            std::thread::sleep(Duration::from_millis(500));
            nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
            signalled = true;
        }
    }
    let status = child.wait().expect("wait");
    assert!(signalled, "no activation started");
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let journal = Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal");
    let mut done = 0;
    for relay in &inv.relays {
        let rec = &journal.relays[&relay.name];
        let state = rec.state();
        assert!(
            matches!(
                state,
                cmfleet::pipeline::journal::RelayState::Done
                    | cmfleet::pipeline::journal::RelayState::Staged
            ),
            "{}: {state:?} after one Ctrl-C\n{rec:#?}",
            relay.name
        );
        for step in Step::ALL {
            assert_ne!(rec.step(step).status, StepStatus::Failed, "{rec:#?}");
        }
        done += usize::from(state == cmfleet::pipeline::journal::RelayState::Done);
    }
    assert!(
        done >= 1,
        "the relay activating when the signal came finished"
    );
    assert!(done < 4, "the first Ctrl-C started no new cutover");
    // The next run finishes the rest.
    std::fs::remove_file(lab.path().join("cmdeploy-cost")).expect("cost file");
    let (code, text) = common::run::cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
}
