//! The real-chatmail lab's controller side: a chatmail relay checkout in DIR/relay
//! whose real `scripts/cmdeploy run` deploys a relay onto a fresh Debian 12 host of
//! the lab, on a machine that reaches only the package registries.
//!
//! `prepare` makes, in a lab directory DIR:
//! - `relay/`: a clone of the relay repository (default: the shared bundle at tag
//!   1.9.0) on a branch `cmfleet-lab`, plus one overlay commit by "cmfleet lab" whose
//!   stand-ins for downloads from outside the registries are switched on by
//!   environment variables (`overlay`; docs/how-it-works.md lists each change);
//! - `relay/venv/`: the checkout's own venv with chatmaild and cmdeploy (`venv`);
//! - `chatmail-binaries/`: links to chatmail-turn, iroh-relay and mtail in the
//!   machine's cache, /var/cache/cmfleet-lab/bin/, built there once (`binaries`);
//! - `filtermail-passthrough`, for a version that downloads the Rust filtermail (1.10
//!   and later): the lab's pass-through stand-in, which enforces no encryption, uploaded
//!   by upstream's own `CHATMAIL_FILTERMAIL_BINARY` (in `RealChatmail::env`).
//!
//! Per relay, `write_relay_ini` writes `relays/DOMAIN/chatmail.ini` with `cmdeploy
//! init`; `write_cmdeploy_home` writes `cmdeploy-home/` (ssh config, known hosts and
//! an ssh wrapper) for the lab's hosts. A cmdeploy run then needs, from DIR/relay:
//! `scripts/cmdeploy run --config INI --ssh-host ADDR [--skip-dns-check]` with
//! `RealChatmail::env` and `CmdeployHome::env` in its environment.

mod binaries;
mod checkout;
pub(crate) mod git;
mod ini;
mod overlay;
mod source;
mod ssh_home;
mod venv;
mod wanted;

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use binaries::{Binary, DEFAULT_CACHE};
pub use checkout::BRANCH;
pub use git::{LAB_EMAIL, LAB_NAME};
pub use ini::write_relay_ini;
pub use overlay::{
    Overlay, COMMIT_SUBJECT, ENV_BINARIES, ENV_DEBIAN_DOVECOT, ENV_FILTERMAIL, ENV_RESOLVER,
    ENV_SELF_SIGNED, FILTERMAIL_STANDIN, FILTERMAIL_STANDIN_NAME, OVERLAYS,
};
pub use source::{shared_turn_bundle, ChatmailRelayArgs, RelaySource, DEFAULT_REF};
pub use ssh_home::{render_known_hosts, render_ssh_config, write_cmdeploy_home, CmdeployHome};
pub use wanted::{wanted, Wanted};

use crate::lab::error::{LabError, Result};

/// What to prepare the checkout from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// The relay repository and ref.
    pub relay: RelaySource,
    /// The chatmail-turn repository (its tags are the versions relays download).
    pub turn_bundle: PathBuf,
    /// The machine's binary cache (`bin/`, `build/`).
    pub cache: PathBuf,
}

impl PrepareOptions {
    /// `relay`, with the shared chatmail-turn bundle and the machine's cache.
    pub fn new(relay: RelaySource) -> Result<PrepareOptions> {
        Ok(PrepareOptions {
            relay,
            turn_bundle: shared_turn_bundle()?,
            cache: PathBuf::from(DEFAULT_CACHE),
        })
    }
}

/// A prepared checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealChatmail {
    /// DIR/relay: run `scripts/cmdeploy` from here.
    pub checkout: PathBuf,
    /// The overlay committed on top of the ref.
    pub overlay: &'static Overlay,
    /// DIR/chatmail-binaries: what `CMFLEET_LAB_BINARIES` points at.
    pub binaries_dir: PathBuf,
    /// The binaries in the cache, and how long each took to build if this call built it.
    pub binaries: Vec<Binary>,
    /// How long this call took to make the venv (`None`: it was there).
    pub venv_built_in: Option<Duration>,
    /// DIR/filtermail-passthrough, for a version that downloads the Rust filtermail:
    /// what `CHATMAIL_FILTERMAIL_BINARY` points at (a pass-through: no encryption is
    /// enforced on such a lab relay).
    pub filtermail: Option<PathBuf>,
}

impl RealChatmail {
    /// `DIR/relay/scripts/cmdeploy`.
    pub fn cmdeploy(&self) -> PathBuf {
        self.checkout.join("scripts/cmdeploy")
    }

    /// The overlay's switches, all on, and upstream's `CHATMAIL_FILTERMAIL_BINARY` for
    /// a version with the Rust filtermail, for every lab cmdeploy run (add
    /// `CmdeployHome::env`, and `CMDEPLOY_STAGES` as cmfleet sets it). `resolver`: the
    /// lab's resolver, for opendkim (`None`: that switch stays off).
    pub fn env(&self, resolver: Option<Ipv4Addr>) -> Vec<(&'static str, OsString)> {
        let switches = self.overlay.switches.iter().filter_map(move |&var| {
            let value = match var {
                ENV_BINARIES => self.binaries_dir.clone().into_os_string(),
                ENV_RESOLVER => OsString::from(resolver?.to_string()),
                _ => OsString::from("1"),
            };
            Some((var, value))
        });
        let filtermail = self
            .filtermail
            .iter()
            .map(|path| (ENV_FILTERMAIL, path.clone().into_os_string()));
        switches.chain(filtermail).collect()
    }
}

/// Prepares DIR/relay (checkout and overlay), the cached binaries it wants and its
/// venv. Each part already there and whole is kept; a cold machine spends minutes
/// building iroh-relay and chatmail-turn.
pub fn prepare(lab_dir: &Path, opts: &PrepareOptions) -> Result<RealChatmail> {
    let checkout = lab_dir.join("relay");
    let overlay = prepare_checkout(lab_dir, &opts.relay)?;
    let binaries = binaries::ensure(&opts.cache, &opts.turn_bundle, &wanted(&checkout)?)?;
    let binaries_dir = lab_dir.join("chatmail-binaries");
    link_binaries(&binaries_dir, &binaries)?;
    let venv_built_in = venv::ensure(&checkout)?;
    let filtermail = match overlay.filtermail_standin {
        true => Some(write_filtermail_standin(lab_dir)?),
        false => None,
    };
    Ok(RealChatmail {
        checkout,
        overlay,
        binaries_dir,
        binaries,
        venv_built_in,
        filtermail,
    })
}

/// DIR/filtermail-passthrough, mode 755 (the deploy uploads it with the same mode).
fn write_filtermail_standin(lab_dir: &Path) -> Result<PathBuf> {
    let path = lab_dir.join(FILTERMAIL_STANDIN_NAME);
    crate::infra::atomic::write(&path, FILTERMAIL_STANDIN.as_bytes())
        .map_err(LabError::io(format!("write {}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .map_err(LabError::io(format!("make {} executable", path.display())))?;
    Ok(path)
}

/// Only the checkout, DIR/relay, with its overlay (no binaries, no venv): which
/// overlay fits a version, in a second or two.
pub fn prepare_checkout(lab_dir: &Path, relay: &RelaySource) -> Result<&'static Overlay> {
    checkout::ensure(relay, &lab_dir.join("relay"))
}

/// `dir/NAME` -> the cached file, for each binary (the names the overlay uploads).
fn link_binaries(dir: &Path, binaries: &[Binary]) -> Result<()> {
    fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))?;
    for b in binaries {
        let link = dir.join(b.name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).map_err(LabError::io(format!("remove {}", link.display())))?;
        }
        symlink(&b.path, &link).map_err(LabError::io(format!("link {}", link.display())))?;
    }
    Ok(())
}
