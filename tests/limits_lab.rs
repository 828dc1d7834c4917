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
