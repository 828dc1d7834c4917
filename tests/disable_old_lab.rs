//! `disable_old = "systemctl"` on the lab: step 3 stops dovecot and postfix on OLD over
//! cmfleet's own connection instead of a cmdeploy run, checks that port 25 refuses,
//! and a rollback starts them again.

mod common;

use cmfleet::commands::rollback::{self, RollbackStatus};
use cmfleet::lab::{port_accepts, StopFault};
use cmfleet::model::inventory::{DisableOld, Inventory, Relay};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, RelayState};
use common::lab::TestLab;
use common::run::{assert_trees_equal, failures, run, variant, with_settings};

/// The lab's inventory with step 3 by systemctl and no retries (a failure is final).
fn systemctl_inventory(lab: &TestLab) -> Inventory {
    let path = variant(lab, "systemctl.toml", |t| {
        with_settings(
            t,
            "",
            "disable_old = \"systemctl\"\nretry = { attempts = 1 }\n",
        )
    });
    Inventory::load(&path).expect("inventory")
}

fn run_rollback(inv: &Inventory, relay: &Relay) -> rollback::RollbackRow {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = rt
        .block_on(rollback::rollback(inv, &[relay], false))
        .expect("rollback runs");
    rows.pop().expect("one row")
}

/// cmdeploy runs that targeted `--disable-mail` or a full deploy at OLD after `lab up`.
fn cmdeploy_runs_on_old(lab: &TestLab, relay: &cmfleet::lab::LabRelay) -> Vec<String> {
    let old = lab.host_state(relay.old.addr).expect("old state");
    old.invocations
        .into_iter()
        .filter(|l| !l.contains("args=[lab up]"))
        .collect()
}

#[test]
fn a_systemctl_step_3_migrates_the_relay_and_closes_old() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let inv = systemctl_inventory(&lab);
    assert_eq!(inv.relays[0].settings.disable_old, DisableOld::Systemctl);

    let (outcome, journal, _) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{outcome:?}\n{:#?}", journal.data);
    let rec = &journal.data.relays[&relay.mail_domain];
    assert_eq!(rec.state(), RelayState::Done);
    assert_eq!(rec.old_disabled_by, DisableOld::Systemctl);
    drop(journal);

    // OLD's mail is off, and stays off across a reboot; no cmdeploy ever ran there.
    for port in [25, 465, 587, 143, 993] {
        assert!(!port_accepts(relay.old.addr, port), "OLD still on {port}");
    }
    let old = lab.host_state(relay.old.addr).expect("old state");
    assert!(old.mail_disabled && !old.active, "old: {old:?}");
    assert!(old.postfix_pid.is_none() && old.dovecot_pid.is_none());
    assert_eq!(cmdeploy_runs_on_old(&lab, &relay), Vec::<String>::new());
    // Port 25 was checked from both sides, and both saw it refused.
    let log = std::fs::read_to_string(
        inv.fleet
            .state_dir
            .join("logs")
            .join(format!("{}.log", relay.mail_domain)),
    )
    .expect("relay log");
    assert!(
        log.contains("systemctl disable --now dovecot.service postfix.service"),
        "{log}"
    );
    assert!(
        log.contains("closed from the old host, closed from the controller"),
        "{log}"
    );
    // NEW serves, with an exact copy.
    assert!(port_accepts(relay.new.addr, 25));
    assert!(lab.host_state(relay.new.addr).expect("new").active);
    assert_trees_equal(&lab);
}

/// Step 3's failures of a relay, as `common::run::failures` lists them.
type Failures = Vec<(cmfleet::model::step::ErrorKind, String, bool)>;

/// Migrates relay 1 with `fault` on its OLD host's stop; step 3 must fail. The
/// journal, and step 3's failures.
fn fail_step_3(lab: &TestLab, inv: &Inventory, fault: StopFault) -> (Journal, Failures) {
    let relay = lab.relay(1).expect("relay");
    lab.set_smtp_stays_open(relay.old.addr, Some(fault))
        .expect("fault");
    let (outcome, journal, events) = run(inv, Step::Activate);
    assert_eq!(
        outcome.failed,
        vec![relay.mail_domain.clone()],
        "{outcome:?}"
    );
    let failed = failures(&events, &relay.mail_domain, Step::DisableOld);
    (journal, failed)
}

/// OLD's Postfix outlives the stop: port 25 still takes mail. Step 3 fails naming
/// port 25, and since dovecot did stop the relay is DOWN (possibly disabled), not
/// "still serving"; nothing after step 3 runs. The rollback brings both back.
#[test]
fn old_keeping_port_25_open_fails_step_3_and_stays_maybe_disabled() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let inv = systemctl_inventory(&lab);
    let (journal, failed) = fail_step_3(&lab, &inv, StopFault::Silent);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let error = &failed[0].1;
    assert!(
        error.contains("port 25") && error.contains(&format!("{}:25", relay.old.addr)),
        "{error}"
    );
    assert!(error.contains("still accepts connections"), "{error}");
    assert!(error.contains("open from the old host"), "{error}");
    let rec = journal.data.relays[&relay.mail_domain].clone();
    drop(journal);
    assert_eq!(rec.failed_step(), Some(Step::DisableOld), "{rec:#?}");
    assert!(rec.old_may_be_disabled, "{rec:#?}");
    assert!(!rec.old_still_serving, "{rec:#?}");
    assert_eq!(rec.state(), RelayState::Down, "{rec:#?}");
    for s in [Step::FinalSync, Step::Dns, Step::Activate] {
        assert_eq!(rec.step(s).attempts, 0, "{s:?} ran: {rec:#?}");
    }
    assert!(
        port_accepts(relay.old.addr, 25),
        "the fault keeps Postfix up"
    );
    assert!(!port_accepts(relay.old.addr, 143), "dovecot stopped");

    lab.set_smtp_stays_open(relay.old.addr, None)
        .expect("fault off");
    let row = run_rollback(&inv, &inv.relays[0]);
    assert_eq!(row.status, RollbackStatus::RolledBack, "{row:?}");
    assert!(port_accepts(relay.old.addr, 25) && port_accepts(relay.old.addr, 143));
}

/// `systemctl` itself fails after dovecot stopped: port 25 still answers, but users
/// cannot read their mail, so the relay is DOWN (possibly disabled), not "still
/// serving" as a failure that changed nothing would leave it.
#[test]
fn a_systemctl_failing_halfway_leaves_the_relay_down() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let inv = systemctl_inventory(&lab);
    let (journal, failed) = fail_step_3(&lab, &inv, StopFault::Fails);
    assert!(
        failed
            .iter()
            .any(|f| f.1.contains("postfix.service failed")),
        "{failed:?}"
    );
    let rec = journal.data.relays[&relay.mail_domain].clone();
    assert!(
        rec.old_may_be_disabled && !rec.old_still_serving,
        "{rec:#?}"
    );
    assert_eq!(rec.state(), RelayState::Down, "{rec:#?}");
    assert!(port_accepts(relay.old.addr, 25) && !port_accepts(relay.old.addr, 143));
}

/// A relay DOWN after a systemctl step 3 is brought back by `systemctl enable --now`
/// on OLD (not a cmdeploy run), and OLD serves mail again, also after a reboot.
#[test]
fn rollback_after_a_systemctl_step_3_starts_old_again() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let inv = systemctl_inventory(&lab);
    let (outcome, journal, _) = run(&inv, Step::DisableOld);
    assert!(outcome.failed.is_empty(), "{outcome:?}");
    assert_eq!(
        journal.data.relays[&relay.mail_domain].state(),
        RelayState::Down
    );
    drop(journal);
    assert!(!port_accepts(relay.old.addr, 25));

    let row = run_rollback(&inv, &inv.relays[0]);
    assert_eq!(row.status, RollbackStatus::RolledBack, "{row:?}");
    for port in [25, 143, 993] {
        assert!(port_accepts(relay.old.addr, port), "OLD not back on {port}");
    }
    let old = lab.host_state(relay.old.addr).expect("old state");
    assert!(old.active && !old.mail_disabled, "old: {old:?}");
    assert_eq!(cmdeploy_runs_on_old(&lab, &relay), Vec::<String>::new());
    // Enabled again: a crashed and restarted OLD starts its mail.
    lab.crash_host(relay.old.addr).expect("crash");
    lab.start_host(relay.old.addr).expect("boot");
    assert!(
        port_accepts(relay.old.addr, 25),
        "mail did not start at boot"
    );
}
