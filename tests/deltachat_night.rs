//! Delta Chat judges a migration night on real chatmail relays (issue 26): nothing may
//! go wrong. The night and the judge are in tests/common/dc_night.rs.
//!
//! Per account, from Delta Chat's own view: every message sent to it, before, between
//! or during the downtime, and after it, is in its chat exactly once; nothing it had
//! read comes back as unread; every message shows the padlock and none has an error;
//! every contact keeps its key; the account reached its relay at NEW's address. The
//! clients' outages, with OLD refusing and with OLD switched off, are printed next to
//! cmfleet's downtime and written with the views to `deltachat-night.json` in Cargo's
//! test tmp dir (`target/tmp/` by default).
//!
//! `CMFLEET_DC_RELAYS` (default 3) and `CMFLEET_DC_ACCOUNTS` per relay (default 4).

mod common;

use common::dc_night::run_night;

#[test]
fn delta_chat_sees_every_message_once_across_a_night() {
    let night = run_night(&[], "deltachat-night.json");
    let (code, out) = &night.cutover;
    assert_eq!(*code, Some(0), "cutover:\n{out}");
    let problems: Vec<String> = night.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        problems.is_empty(),
        "Delta Chat after the night (views in {}):\n{}",
        night.record.display(),
        problems.join("\n")
    );
}
