//! A real lab's record of itself (`DIR/real-lab.json`): its network, the rootfs its
//! hosts boot and each host with the systemd-nspawn it runs, so `down` and `open` work
//! from any process (the one that ran `up` has long exited). Saved before each thing
//! is created, so a crash mid-`up` leaves a record `down` can clean up after.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::super::error::Result;
use super::super::process::ProcRecord;
use super::net::RealNet;

/// The state file's name inside the lab directory (not the loopback lab's `lab.json`:
/// the two kinds of lab never read each other's record).
pub const STATE_FILE: &str = crate::lab::state::REAL_STATE_FILE;

/// Everything a real lab needs to find again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RealLabState {
    /// Bumped when the shape changes.
    pub version: u32,
    /// The lab directory (absolute).
    pub dir: PathBuf,
    /// The lab's 198.18.X.0/24.
    pub net: RealNet,
    /// Whether this lab made (and so must remove) the network's bridge, NAT table,
    /// namespaces and cgroups. Set before the first of them is made, cleared when
    /// `down` has removed them: a second `down`, after another lab took the same
    /// network, must not touch that lab's.
    pub owns_net: bool,
    /// The rootfs cache (also where the machine-wide locks are).
    pub cache: PathBuf,
    /// The cached rootfs the hosts' overlays sit on (`None` before it is known).
    pub rootfs: Option<PathBuf>,
    /// Every host, in the order asked for.
    pub hosts: Vec<RealHost>,
}

/// One real lab host: a booted Debian 12 systemd container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RealHost {
    /// Its name: hostname inside, `Host` in the lab's ssh_config.
    pub name: String,
    /// 198.18.X.N: sshd listens on port 22 there.
    pub addr: Ipv4Addr,
    /// `cmfleetX-N`: its network namespace, veth, nspawn machine name and cgroup.
    pub id: String,
    /// `DIR/hosts/NAME`: its overlay (`upper/`, `work/`, `root/`) and `console.log`.
    pub dir: PathBuf,
    /// The systemd-nspawn running it (`None` when stopped or not yet started).
    pub nspawn: Option<ProcRecord>,
}

impl RealHost {
    /// The host's last address byte (N of 198.18.X.N).
    pub fn n(&self) -> u8 {
        self.addr.octets()[3]
    }

    /// `DIR/hosts/NAME/upper`: the overlay's upper layer, everything the host wrote or
    /// `up` gave it (host keys, authorized_keys, resolv.conf, ...).
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The overlay's work directory (same filesystem as `upper`, as overlayfs needs).
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The mount point of its root, mounted only inside the container's own mount
    /// namespace (empty when seen from the machine).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where systemd-nspawn writes the container's console (boot messages).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

impl RealLabState {
    /// Reads `DIR/real-lab.json`.
    pub fn load(dir: &Path) -> Result<RealLabState> {
        crate::lab::state::load_record(dir, STATE_FILE)
    }

    /// Writes `DIR/real-lab.json` atomically: a crash mid-write must not lose the PIDs
    /// `down` needs.
    pub fn save(&self) -> Result<()> {
        crate::lab::state::save_record(&self.dir, STATE_FILE, self)
    }
}
