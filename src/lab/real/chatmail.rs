//! The real-chatmail lab's controller side: a chatmail relay checkout in DIR/relay
//! whose real `scripts/cmdeploy run` deploys a relay onto a fresh Debian 12 host of
//! the lab, on a machine that reaches only the package registries.
//!
//! `prepare_checkout` makes `DIR/relay`: a clone of the relay repository (default: the
//! shared bundle at tag 1.9.0) on a branch `cmfleet-lab`, plus one overlay commit by
//! "cmfleet lab" whose stand-ins for downloads from outside the registries are switched
//! on by environment variables (`overlay`; docs/how-it-works.md lists each change).

mod checkout;
mod git;
mod overlay;
mod source;

use std::path::Path;

pub use checkout::BRANCH;
pub use git::{LAB_EMAIL, LAB_NAME};
pub use overlay::{
    Overlay, COMMIT_SUBJECT, ENV_BINARIES, ENV_DEBIAN_DOVECOT, ENV_SELF_SIGNED, OVERLAYS,
};
pub use source::{shared_turn_bundle, ChatmailRelayArgs, RelaySource, DEFAULT_REF};

use crate::lab::error::Result;

/// Only the checkout, DIR/relay, with its overlay (no binaries, no venv): which
/// overlay fits a version, in a second or two.
pub fn prepare_checkout(lab_dir: &Path, relay: &RelaySource) -> Result<&'static Overlay> {
    checkout::ensure(relay, &lab_dir.join("relay"))
}
