//! `cmfleet lab up/status/down` as the CLI runs them: 20 relays come up in seconds, and
//! down leaves no process and no mount behind, also for a lab that lost its state file.

mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use cmfleet::lab::{
    lab_mounts_remain, lab_processes, port_accepts, run, DataOptions, Lab, LabCommand,
};
use common::lab::Reservation;

/// Processes whose command line names `dir`, and processes that see a mount out of `dir`
/// (checked independently of the lab's own sweep). mountinfo shows a bind mount's source
/// relative to its filesystem, so look for the lab dir's unique name there.
fn leftovers(dir: &Path) -> Vec<String> {
    let name = format!("/{}/", dir.file_name().unwrap().to_string_lossy());
    let dir = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) {
            out.push(format!("process {pid}: {cmdline}"));
        }
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if mounts.contains(&name) {
            out.push(format!(
                "process {pid} ({cmdline}) sees a mount from the lab"
            ));
        }
    }
    out
}

#[test]
fn lab_up_20_relays_in_seconds_and_down_leaves_nothing() {
    let r = Reservation::new();
    let dir = r.dir.path().to_path_buf();
    let data = DataOptions {
        users: 10,
        messages: 10,
        message_size: 4096,
        seed: 1,
    };
    let started = Instant::now();
    run(LabCommand::Up {
        relays: 20,
        dir: dir.clone(),
        subnet: r.subnet,
        users: data.users,
        messages: data.messages,
        message_size: data.message_size,
        seed: data.seed,
        cmdeploy_cost: cmfleet::lab::CostModel::Fast,
        cmdeploy_scale: 0.0,
        real_chatmail: false,
        real_net: 1,
        chatmail: cmfleet::lab::real::chatmail::ChatmailRelayArgs {
            chatmail_relay: None,
            chatmail_ref: cmfleet::lab::real::chatmail::DEFAULT_REF.to_string(),
        },
    })
    .unwrap();
    let took = started.elapsed();
    eprintln!(
        "lab up of 20 relays (40 hosts, 10x10 messages each) in {} took {took:.2?}",
        dir.display()
    );
    assert!(took.as_secs() < 30, "lab up took {took:?}");

    let lab = Lab::open(&dir).unwrap();
    assert_eq!(lab.hosts().len(), 40);
    assert!(lab.hosts().iter().all(|h| port_accepts(h.addr, 22)));
    let status = Lab::status(&dir).unwrap();
    assert!(status.agent_running && status.hosts.iter().all(|h| h.sshd_running));
    run(LabCommand::Status { dir: dir.clone() }).unwrap();
    let inventory = fs::read_to_string(lab.inventory()).unwrap();
    assert_eq!(inventory.matches("[[relay]]").count(), 20);
    assert!(inventory.contains("mail_domain = \"relay20.lab.test\""));
    assert!(lab.relay_config(20).exists());
    // The inventory module accepts what the lab wrote.
    let inv = cmfleet::model::inventory::Inventory::load(&lab.inventory())
        .unwrap_or_else(|e| panic!("the lab's inventory does not load: {e}"));
    assert_eq!(inv.relays.len(), 20);
    assert!(
        !leftovers(&dir).is_empty(),
        "the leftover check finds a running lab"
    );

    run(LabCommand::Down {
        dir: dir.clone(),
        purge: false,
    })
    .unwrap();
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert!(lab_processes(&dir).is_empty());
    assert!(!lab_mounts_remain(&dir));
    assert!(lab.hosts().iter().all(|h| !port_accepts(h.addr, 22)));
    // Down is idempotent.
    assert!(Lab::down(&dir).unwrap().is_empty());
}

#[test]
fn down_cleans_a_lab_that_lost_its_state() {
    let r = Reservation::new();
    let dir = r.dir.path().to_path_buf();
    let mut opts = cmfleet::lab::LabOptions::new(&dir, 2, r.subnet);
    opts.data = common::lab::small_data();
    let lab = Lab::up(opts).unwrap();
    // A session left running inside a host, as a crashed migration would leave one.
    let old = lab.relay(1).unwrap().old.addr;
    let mut sleeper = lab
        .ssh(old, &[])
        .arg("sleep 600 </dev/null >/dev/null 2>&1 &")
        .spawn()
        .unwrap();
    sleeper.wait().unwrap();
    // The crash: lab.json is gone, nothing knows the PIDs.
    fs::remove_file(dir.join("lab.json")).unwrap();
    let stopped = Lab::down(&dir).unwrap();
    assert!(stopped.len() >= 5, "{stopped:?}");
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert!(!lab_mounts_remain(&dir));
}

#[test]
fn lab_up_refuses_a_running_lab_and_a_foreign_dir() {
    let r = Reservation::new();
    let dir = r.dir.path().to_path_buf();
    fs::write(dir.join("precious.txt"), "not a lab").unwrap();
    let opts = cmfleet::lab::LabOptions::new(&dir, 1, r.subnet);
    let err = Lab::up(opts.clone()).unwrap_err().to_string();
    assert!(err.contains("is not a lab directory"), "{err}");
    assert!(dir.join("precious.txt").exists());
    fs::remove_file(dir.join("precious.txt")).unwrap();
    let mut small = opts;
    small.data = common::lab::small_data();
    let _lab = Lab::up(small.clone()).unwrap();
    let err = Lab::up(small.clone()).unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");
    Lab::down(&dir).unwrap();
    // A stopped lab is replaced.
    Lab::up(small).unwrap();
    Lab::down(&dir).unwrap();
}
