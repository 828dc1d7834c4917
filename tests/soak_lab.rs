//! A migration night, many times over: fresh 20-relay labs with the default data
//! (100 mailboxes x 30 messages per relay), pre-staged, then mail activity on every
//! OLD (late deliveries, new -> cur moves, flag renames, expunges), then the
//! cutover. Every round must leave no relay DOWN and every NEW tree exact.
//!
//! Too long for every CI run (about a minute a round on two cores); run it before
//! calling a change to how cmfleet copies or proves anything done:
//!
//! ```sh
//! CMFLEET_SOAK_ROUNDS=10 cargo test --release --test soak_lab -- --ignored --nocapture
//! ```

mod common;

use cmfleet::lab::{Activity, DataOptions};
use cmfleet::model::inventory::Inventory;
use cmfleet::model::step::Step;
use common::lab::TestLab;
use common::run::{assert_trees_equal, run};

#[test]
#[ignore = "a soak of 10 x 20 relays; run with --ignored"]
fn ten_migration_nights_of_twenty_relays_leave_none_down() {
    let rounds: u64 = std::env::var("CMFLEET_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let relays: usize = std::env::var("CMFLEET_SOAK_RELAYS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    for round in 1..=rounds {
        let started = std::time::Instant::now();
        let lab = TestLab::start_with(relays, DataOptions::default());
        let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
        let (outcome, journal, _) = run(&inv, Step::Preconfigure);
        assert_eq!(
            outcome.failed,
            Vec::<String>::new(),
            "round {round} pre-stage: {:#?}",
            journal.data
        );
        drop(journal);
        let mut changed = 0;
        for relay in lab.relays() {
            let activity = Activity {
                new_messages: 5,
                seen: 5,
                flag_changes: 5,
                deletions: 3,
                message_size: 3000,
                seed: round * 1000 + relay.index as u64,
            };
            let report = lab
                .simulate_activity(relay.index, &activity)
                .expect("activity");
            changed += report.created.len() + report.renamed.len() + report.deleted.len();
        }
        let (outcome, journal, events) = run(&inv, Step::Activate);
        let down: Vec<&String> = outcome.failed.iter().collect();
        assert!(
            down.is_empty() && outcome.done.len() == relays,
            "round {round}: {down:?} failed\n{:#?}\n{events:#?}",
            journal.data
        );
        let files = assert_trees_equal(&lab);
        // OLD is frozen at step 4: a proof that needs its second pass, or a listing
        // that arrives incomplete, is a bug to root-cause even when the relay ends up.
        let (second, incomplete) = log_counts(&inv);
        eprintln!(
            "round {round}: {relays}/{relays} relays done, {changed} mail changes between pre-stage and cutover, {files} mail files exact on NEW, {second} second proofs, {incomplete} incomplete listings, {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!((second, incomplete), (0, 0), "round {round}");
    }
}

/// Second proofs and incomplete listings, over every relay's log.
fn log_counts(inv: &Inventory) -> (usize, usize) {
    let logs = inv.fleet.state_dir.join("logs");
    let mut counts = (0, 0);
    for entry in std::fs::read_dir(&logs).expect("logs").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        counts.0 += text.matches("one more final sync and proof").count();
        counts.1 += text.matches("is incomplete").count();
    }
    counts
}
