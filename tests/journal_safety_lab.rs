//! The journal and the report tell the truth about a relay's state after failures
//! around the cutover (issue 18), on the lab.

mod common;

use cmfleet::inventory::Inventory;
use cmfleet::journal::RelayState;
use cmfleet::steps::Step;
use common::lab::TestLab;
use common::run::{cmfleet, peek, variant, with_settings};

/// A `pre_cutover` hook that fails stops the relay before anything touched OLD:
/// the relay is reported staged (OLD serving), never DOWN, and no downtime counts.
#[test]
fn a_failing_pre_cutover_hook_leaves_the_relay_staged_not_down() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "hook.toml", |t| {
        with_settings(
            t,
            "",
            "hooks = { pre_cutover = \"echo the status page refused >&2; exit 3\" }\n",
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.failed_step(), Some(Step::DisableOld), "{rec:#?}");
    let error = rec.step(Step::DisableOld).error.clone().unwrap_or_default();
    assert!(error.contains("pre_cutover hook failed"), "{error}");
    assert_eq!(rec.state(), RelayState::Staged, "{rec:#?}");
    assert!(rec.down_since_ms.is_none(), "{rec:#?}");
    assert!(rec.downtime().is_none());
    assert!(!text.contains("left DOWN"), "{text}");
    assert!(text.contains("the relay is not down"), "{text}");
    let old = lab.host_state(relay.old.addr).expect("old state");
    assert!(!old.mail_disabled, "mail on OLD was disabled: {old:?}");
    let (_, status) = cmfleet(&["status"], &path);
    assert!(status.contains("0 DOWN"), "{status}");
}
