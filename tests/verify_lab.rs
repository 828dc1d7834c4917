//! `cmfleet verify` on the lab: passes after a full migration; fails, naming the relay
//! and the reason, when a NEW host's listener is stopped or a message is gone on NEW.

mod common;

use std::path::{Path, PathBuf};

use cmfleet::host::inspect::{RelayFindings, Status};
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::Step;
use cmfleet::pipeline::migrate::migrate;
use cmfleet::pipeline::scheduler::Cancel;
use common::lab::TestLab;

fn run_verify(inv: &Inventory) -> Vec<RelayFindings> {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(cmfleet::commands::verify::verify(inv, &relays))
        .expect("verify runs")
}

fn cli_verify(inventory: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(["verify", "-i"])
        .arg(inventory)
        .output()
        .expect("run cmfleet verify");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Some message file in a `cur/` directory under `dir`.
fn a_message(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "cur") {
                if let Some(f) = std::fs::read_dir(&p).ok()?.flatten().next() {
                    return Some(f.path());
                }
            } else if let Some(found) = a_message(&p) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn verify_passes_after_migration_and_names_a_stopped_listener_and_a_lost_message() {
    let lab = TestLab::start(3);
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let relays = inventory::select(&inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let opts = common::run::options(Step::Activate);
    let (outcome, journal) = rt
        .block_on(migrate(&inv, &relays, &opts, rx, |_, _| {}))
        .expect("migrate runs");
    assert_eq!(outcome.done.len(), 3, "{outcome:?}");
    drop(journal);

    let results = run_verify(&inv);
    for r in &results {
        assert_eq!(r.status, Status::Pass, "{r:#?}");
    }
    let (code, stdout) = cli_verify(&lab.inventory());
    assert_eq!(code, Some(0), "{stdout}");

    // relay1: NEW's mail system dies. relay2: a message disappears on NEW.
    let lab_relays = lab.relays();
    let new1 = lab_relays[0].new.addr;
    lab.crash_mail(new1)
        .expect("kill NEW's postfix and dovecot");
    let lost = a_message(&lab_relays[1].new.path("/home/vmail/mail")).expect("a message on NEW");
    std::fs::remove_file(&lost).expect("delete a message");
    let unique = lost
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split(':').next())
        .expect("message name")
        .to_string();

    let results = run_verify(&inv);
    let failed =
        |i: usize| -> Vec<&str> { results[i].failures().map(|f| f.check.as_str()).collect() };
    assert_eq!(failed(0), vec!["new listens"], "{:#?}", results[0]);
    assert_eq!(failed(1), vec!["mailboxes"], "{:#?}", results[1]);
    assert_eq!(failed(2), Vec::<&str>::new(), "{:#?}", results[2]);
    let mail = results[1].failures().next().expect("mailboxes");
    assert!(
        mail.reason.contains("1 message(s) missing on NEW") && mail.reason.contains(&unique),
        "{mail:?}"
    );

    let (code, stdout) = cli_verify(&lab.inventory());
    assert_eq!(code, Some(2), "{stdout}");
    let r1 = &lab_relays[0].mail_domain;
    let r2 = &lab_relays[1].mail_domain;
    assert!(
        stdout.contains(&format!(
            "FAIL {r1}: new listens: NEW {new1} does not accept TCP on port 25, 465, 993"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("FAIL {r2}: mailboxes: ")),
        "{stdout}"
    );
}
