//! `cmfleet rollback` on the lab: a relay that failed at step 4 is DOWN; rollback
//! brings OLD's listener back and records it; `migrate` then completes the relay.

mod common;

use cmfleet::commands::check;
use cmfleet::commands::rollback::{self, RollbackStatus};
use cmfleet::lab::{port_accepts, DataOptions};
use cmfleet::model::inventory::{self, Inventory, Relay};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, RelayState};
use cmfleet::pipeline::migrate::migrate;
use cmfleet::pipeline::scheduler::Cancel;
use common::lab::TestLab;

fn run_migrate(inv: &Inventory, until: Step) -> (cmfleet::pipeline::scheduler::Outcome, Journal) {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let opts = common::run::options(until);
    rt.block_on(migrate(inv, &relays, &opts, rx, |_, _| {}))
        .expect("migrate runs")
}

fn run_rollback(inv: &Inventory, relay: &Relay, force: bool) -> rollback::RollbackRow {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = rt
        .block_on(rollback::rollback(inv, &[relay], force))
        .expect("rollback runs");
    rows.pop().expect("one row")
}

#[test]
fn a_relay_down_at_step_4_is_rolled_back_then_migrated() {
    // ~600 KB of mail per relay: more than NEW's tiny tmpfs below holds.
    let mut lab = TestLab::start_with(
        2,
        DataOptions {
            users: 3,
            messages: 10,
            message_size: 20_000,
            seed: 3,
        },
    );
    // Relay1's NEW fills up inside its downtime: its final sync cannot fit.
    let hook = common::run::disk_filled_inside_the_downtime(&mut lab, 1);
    let domain1 = lab.relay(1).expect("relay").mail_domain;
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let path = lab.path().join("rollback.toml");
    std::fs::write(
        &path,
        text.replace("[defaults]\n", "[defaults]\nretry = { attempts = 1 }\n")
            .replace(
                &format!("mail_domain = \"{domain1}\"\n"),
                &format!("mail_domain = \"{domain1}\"\nhooks = {{ pre_cutover = \"{hook}\" }}\n"),
            ),
    )
    .expect("write inventory");
    let inv = Inventory::load(&path).expect("inventory");
    let relays = lab.relays();
    let (r1, r2) = (&inv.relays[0], &inv.relays[1]);
    let (old1, new1) = (relays[0].old.addr, relays[0].new.addr);

    let (outcome, journal) = run_migrate(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{outcome:?}");
    drop(journal);
    let (outcome, journal) = run_migrate(&inv, Step::Activate);
    assert_eq!(outcome.failed, vec![r1.name.clone()], "{outcome:?}");
    let rec = journal.data.relays[&r1.name].clone();
    assert_eq!(rec.state(), RelayState::Down, "{rec:#?}");
    assert_eq!(rec.failed_step(), Some(Step::FinalSync), "{rec:#?}");
    assert_eq!(journal.data.relays[&r2.name].state(), RelayState::Done);
    drop(journal);
    assert!(!port_accepts(old1, 25), "OLD of relay1 is disabled");
    let view = check::journal_finding(Some(&rec));
    assert!(view.reason.starts_with("DOWN"), "{view:?}");

    // Relay2 is active on NEW: refused without --force, and the message says why.
    let row = run_rollback(&inv, r2, false);
    assert_eq!(row.status, RollbackStatus::Refused, "{row:?}");
    assert!(
        row.message.contains("may have received mail") && row.message.contains("--force"),
        "{row:?}"
    );

    // Relay1 goes back to OLD.
    let row = run_rollback(&inv, r1, false);
    assert_eq!(row.status, RollbackStatus::RolledBack, "{row:?}");
    assert!(port_accepts(old1, 25), "OLD of relay1 listens again");
    let state = lab.host_state(old1).expect("old state");
    assert!(state.active && !state.mail_disabled, "{state:?}");
    assert!(
        state
            .invocations
            .last()
            .is_some_and(|l| !l.contains("--disable-mail")),
        "{:?}",
        state.invocations
    );
    let data = Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal");
    let rec = &data.relays[&r1.name];
    assert_eq!(rec.rollbacks.len(), 1, "{rec:#?}");
    assert_eq!(rec.state(), RelayState::NotStarted, "{rec:#?}");
    assert_eq!(rec.next_step(), Some(Step::InitialSync));
    // A second rollback has nothing left to do.
    let row = run_rollback(&inv, r1, false);
    assert_eq!(row.status, RollbackStatus::NothingToDo, "{row:?}");

    // NEW gets its disk back; migrate starts relay1 again from step 1 and completes it.
    lab.set_vmail_tmpfs(new1, None).expect("normal disk");
    let (outcome, journal) = run_migrate(&inv, Step::Activate);
    assert_eq!(outcome.done, vec![r1.name.clone()], "{outcome:?}");
    let rec = &journal.data.relays[&r1.name];
    assert_eq!(rec.state(), RelayState::Done);
    assert_eq!(rec.rollbacks.len(), 1, "the rollback stays on record");
    assert!(port_accepts(new1, 25) && !port_accepts(old1, 25));
}
