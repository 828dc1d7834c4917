//! Where a lab's files, hosts and relays are: the paths in its directory, the hosts
//! by address, the relays as an inventory names them, ssh to a host.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::addr::{Side, Subnet};
use super::data::DataOptions;
use super::error::{LabError, Result};
use super::fleet::{Lab, LabRelay};
use super::host::LabHost;
use super::users::LabUsers;

impl Lab {
    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// `DIR/inventory.toml`.
    pub fn inventory(&self) -> PathBuf {
        self.state.dir.join("inventory.toml")
    }

    /// `DIR/ssh_config`: `ssh -F` it to reach any host by address or name (relay1-old).
    pub fn ssh_config(&self) -> PathBuf {
        self.state.dir.join("ssh_config")
    }

    /// `DIR/known_hosts`: every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.state.dir.join("known_hosts")
    }

    /// `DIR/id_ed25519`: the lab key, authorized on every host and held by the agent.
    pub fn key(&self) -> PathBuf {
        self.state.dir.join("id_ed25519")
    }

    /// `DIR/agent.sock`: the lab's ssh-agent.
    pub fn agent_sock(&self) -> PathBuf {
        self.state.dir.join("agent.sock")
    }

    /// `DIR/relay`: the chatmail relay checkout (run cmdeploy from here).
    pub fn checkout(&self) -> PathBuf {
        self.state.dir.join("relay")
    }

    /// `DIR/relay/scripts/cmdeploy`.
    pub fn cmdeploy(&self) -> PathBuf {
        self.checkout().join("scripts/cmdeploy")
    }

    pub(super) fn faults_dir(&self) -> PathBuf {
        self.state.dir.join("faults")
    }

    /// Relay `index`'s chatmail.ini.
    pub fn relay_config(&self, index: usize) -> PathBuf {
        let domain = self
            .state
            .domains
            .get(index.wrapping_sub(1))
            .cloned()
            .unwrap_or_default();
        self.state
            .dir
            .join("relays")
            .join(domain)
            .join("chatmail.ini")
    }

    /// The lab's /24.
    pub fn subnet(&self) -> Subnet {
        self.state.subnet
    }

    /// The vmail/opendkim ids on every host.
    pub fn users(&self) -> LabUsers {
        self.state.users
    }

    /// The data OLD hosts got.
    pub fn data(&self) -> DataOptions {
        self.state.data
    }

    /// Every host.
    pub fn hosts(&self) -> &[LabHost] {
        &self.state.hosts
    }

    /// The host at `addr`.
    pub fn host(&self, addr: Ipv4Addr) -> Result<&LabHost> {
        self.state
            .hosts
            .iter()
            .find(|h| h.addr == addr)
            .ok_or(LabError::UnknownHost { addr })
    }

    /// All relays, relay 1 first.
    pub fn relays(&self) -> Vec<LabRelay> {
        (1..=self.state.domains.len())
            .filter_map(|i| self.relay(i))
            .collect()
    }

    /// Relay `index` (1-based).
    pub fn relay(&self, index: usize) -> Option<LabRelay> {
        let find = |side| {
            self.state
                .hosts
                .iter()
                .find(|h| h.relay == index && h.side == side)
                .cloned()
        };
        Some(LabRelay {
            index,
            mail_domain: self.state.domains.get(index.checked_sub(1)?)?.clone(),
            config: self.relay_config(index),
            old: find(Side::Old)?,
            new: find(Side::New)?,
        })
    }

    /// `ssh -F DIR/ssh_config [opts] root@ADDR` with the lab agent in SSH_AUTH_SOCK; add
    /// the remote command with `.arg()`.
    pub fn ssh(&self, addr: Ipv4Addr, opts: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.ssh_config())
            .args(opts)
            .arg(format!("root@{addr}"))
            .env("SSH_AUTH_SOCK", self.agent_sock());
        c
    }

    pub(super) fn render_ssh_config(&self) -> String {
        let d = self.state.dir.display();
        let mut s = format!(
            "# ssh config of the lab in {d} (cmfleet lab): ssh -F {d}/ssh_config relay1-old\n"
        );
        // A relay's mail_domain resolves to its OLD host, as public DNS does before the
        // cutover: cmdeploy without --ssh-host hits OLD.
        for h in &self.state.hosts {
            let domain = match h.side {
                Side::Old => self
                    .state
                    .domains
                    .get(h.relay - 1)
                    .map_or("", String::as_str),
                Side::New => "",
            };
            s += &format!("Host {} {domain}\n    HostName {}\n", h.name, h.addr);
        }
        s += &format!(
            "Host *\n    User root\n    IdentityFile {d}/id_ed25519\n    IdentitiesOnly yes\n    \
             IdentityAgent {d}/agent.sock\n    UserKnownHostsFile {d}/known_hosts\n    \
             GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n    \
             ConnectTimeout 5\n    LogLevel ERROR\n"
        );
        s
    }
}
