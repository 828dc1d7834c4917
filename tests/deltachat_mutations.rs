//! Each claim of the Delta Chat night (tests/deltachat_night.rs) fails when it should
//! (issue 26): one night in which NEW is broken right before step 6, a different way on
//! each relay, in cutover order (`dc-mutate-cmdeploy.sh`, committed into the lab's
//! chatmail checkout; chatmail's own cmdeploy then runs unchanged):
//!
//! - 1st relay: Dovecot's uidlists and indexes regenerated (new UIDVALIDITY). Delta
//!   Chat skips what was delivered while it was away: the account that was offline
//!   through the cutover never shows the messages sent to it in between.
//! - 2nd relay: NEW signs with a DKIM key of its own, not OLD's (the published one).
//!   The other relays' opendkim refuses its mail: messages sent after the cutover from
//!   that relay to another are missing there, or fail at the sender.
//! - 3rd relay: NEW's Postfix queue emptied, as if step 4 had not carried OLD's. What
//!   OLD held deferred for the relays that were down before it is missing: messages
//!   from it sent while their recipient's relay was down and it was not yet.
//!
//! The test passes when Delta Chat's view names each break, and prints what it named.
//! The views go to `deltachat-mutations.json` in Cargo's test tmp dir.

mod common;

use common::dc_night::{parse_text, relay_of, run_night, Kind, Mutation, Night};

/// The problems that show this mutation on relay `r`.
fn named_by(mutation: &str, r: usize, night: &Night) -> Vec<String> {
    // Whether `text` was sent while relay `down` was down and relay `up` was not yet:
    // it waited in `up`'s OLD queue for `down` (Postfix retries a deferred message
    // after 5 minutes at the earliest; the test flushes queues only after the night).
    let queued = |text: &str, down: usize, up: usize| {
        let at = night.sent_ms.get(text).copied();
        let window = |i: usize| night.windows.get(i).copied().flatten();
        match (at, window(down), window(up)) {
            (Some(t), Some((d0, d1)), Some((u0, _))) => t >= d0 && t <= d1 && t < u0,
            _ => false,
        }
    };
    night
        .problems
        .iter()
        .filter(|p| {
            let Some((phase, from, to)) = parse_text(&p.text) else {
                return false;
            };
            let (Some(from), Some(to)) = (relay_of(from), relay_of(to)) else {
                return false;
            };
            let lost = matches!(p.kind, Kind::Missing | Kind::Error(_));
            match mutation {
                // Sent to the relay's offline account in between, never shown.
                "uidlists" => {
                    lost && phase == "between" && to == r && relay_of(&p.account) == Some(r)
                }
                // Sent from the relay to another after its cutover.
                "dkim" => lost && phase == "after" && from == r && to != r,
                // Held in the relay's OLD queue for a relay that was down. (Mail the
                // uidlists' relay got after it was up may be missing for the uidlists'
                // sake: that was sent outside the recipient's downtime.)
                "queue" => {
                    lost && phase == "during" && from == r && to != r && queued(&p.text, to, r)
                }
                _ => false,
            }
        })
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn delta_chat_names_what_each_broken_new_lost() {
    let plan = [Mutation::Uidlists, Mutation::Dkim, Mutation::Queue];
    let night = run_night(&plan, "deltachat-mutations.json");
    let all: Vec<String> = night.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        night.applied.len(),
        plan.len(),
        "the wrapper applied {:?} (migrate exited {:?}):\n{}",
        night.applied,
        night.cutover.0,
        night.cutover.1
    );
    let mut unnoticed = Vec::new();
    for a in &night.applied {
        if a.mutation == "queue" {
            assert!(
                !a.did.contains("Deleted: 0") && a.did.contains("Deleted:"),
                "the queue mutation found nothing to drop ({}): the night left no deferred mail on OLD",
                a.did
            );
        }
        let named = named_by(&a.mutation, a.relay, &night);
        eprintln!(
            "{} on relay {} ({}): Delta Chat shows {} problem(s), e.g.:\n  {}",
            a.mutation,
            a.relay + 1,
            a.did,
            named.len(),
            named
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        if named.is_empty() {
            unnoticed.push(format!(
                "{} on relay {} ({})",
                a.mutation,
                a.relay + 1,
                a.did
            ));
        }
    }
    assert!(
        unnoticed.is_empty(),
        "Delta Chat's view did not show: {}\nall it showed (views in {}):\n{}",
        unnoticed.join(", "),
        night.record.display(),
        all.join("\n")
    );
}
