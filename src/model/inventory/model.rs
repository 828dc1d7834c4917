//! The checked inventory: what the rest of cmfleet works with.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The whole fleet, validated, with every relay's settings already inherited.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// The inventory file, as given.
    pub path: PathBuf,
    pub fleet: Fleet,
    pub groups: BTreeMap<String, GroupLimits>,
    pub relays: Vec<Relay>,
}

/// Fleet-wide settings from `[fleet]`.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// `scripts/cmdeploy` of the operator's chatmail relay checkout.
    pub cmdeploy: PathBuf,
    /// Journal, logs, staging area and cmfleet's own known_hosts live here.
    pub state_dir: PathBuf,
    /// The ssh-agent to use and forward; `None` means `$SSH_AUTH_SOCK`.
    pub ssh_auth_sock: Option<PathBuf>,
    /// `HOME` for cmdeploy runs: cmdeploy's ssh (its DNS check's `ssh` and pyinfra's
    /// paramiko) reads `~/.ssh/config` and `~/.ssh/known_hosts` there. `None`: the
    /// operator's own HOME, as when they run cmdeploy by hand.
    pub cmdeploy_home: Option<PathBuf>,
    /// More environment for cmdeploy runs (`[fleet] cmdeploy_env`), e.g. a proxy
    /// for its downloads. `CMDEPLOY_STAGES`, `HOME` and `PYTHONPATH` are cmfleet's.
    pub cmdeploy_env: BTreeMap<String, String>,
    pub limits: Limits,
    pub waves: Vec<Wave>,
}

/// Fleet-wide concurrency and rate limits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limits {
    /// Relays in flight at once.
    pub forks: usize,
    /// Concurrent bulk transfers (steps 1 and 4).
    pub transfers: usize,
    /// Concurrent cmdeploy runs on the controller (= workspaces in the pool).
    pub cmdeploy_runs: usize,
    /// Relays inside their downtime window (step 3 to step 6) at once.
    pub cutovers: usize,
    pub ssh_connects_per_sec: u32,
    pub dns_updates_per_sec: u32,
    /// Bytes that staged transfers may occupy on the controller.
    pub staging_budget: u64,
    /// Stop starting relays once this share of the finished ones failed.
    pub max_fail_percent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            forks: 20,
            transfers: 8,
            cmdeploy_runs: 4,
            cutovers: 4,
            ssh_connects_per_sec: 10,
            dns_updates_per_sec: 5,
            staging_budget: 20 << 30,
            max_fail_percent: 100,
        }
    }
}

/// One wave of Ansible-`serial`-style rollout.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum Wave {
    Count(usize),
    Percent(u32),
}

impl Wave {
    /// How many relays this wave holds, out of `total` selected (at least one).
    pub fn size(self, total: usize) -> usize {
        let n = match self {
            Wave::Count(n) => n,
            Wave::Percent(p) => (total * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

/// Per-group limits from `[groups.NAME]`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GroupLimits {
    pub max_transfers: Option<usize>,
    pub ssh_connects_per_sec: Option<u32>,
}

/// One relay to move.
#[derive(Debug, Clone, Serialize)]
pub struct Relay {
    /// The relay's name everywhere (journal, logs, `--limit`): its mail_domain.
    pub name: String,
    pub mail_domain: MailDomain,
    /// Its chatmail.ini, resolved against the inventory's folder.
    pub config: PathBuf,
    pub group: Option<String>,
    pub old: Host,
    pub new: Host,
    pub settings: RelaySettings,
}

/// A relay's mail_domain: a DNS name, or an IP address (then there is no DNS step).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum MailDomain {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for MailDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailDomain::Name(n) => f.write_str(n),
            MailDomain::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An old or new machine of a relay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Host {
    /// Address or name used to connect over ssh.
    pub ssh: String,
    pub ip4: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    pub user: String,
    pub port: u16,
    pub key: Option<PathBuf>,
}

impl Host {
    /// The addresses DNS must serve for this host.
    pub fn addrs(&self) -> crate::infra::dns::Addrs {
        crate::infra::dns::Addrs {
            ip4: self.ip4,
            ip6: self.ip6,
        }
    }
}

impl Host {
    /// `user@ssh`, the destination as ssh and rsync write it.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.ssh)
    }
}

/// Settings a relay inherits (relay > group > defaults > built-in).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelaySettings {
    pub transfer: TransferMode,
    pub connect_timeout: Duration,
    /// A cutover whose step 1 finished longer ago than this copies the mail again
    /// first (a delta, no downtime), so that step 4 inside the downtime moves
    /// little; `None`: never (`"off"`).
    pub refresh_after: Option<Duration>,
    pub host_key_policy: HostKeyPolicy,
    pub cipher: Option<String>,
    /// ssh KexAlgorithms for every connection of the relay (controller and OLD->NEW);
    /// `None` keeps OpenSSH's own.
    pub kex: Option<String>,
    /// How step 3 stops mail on OLD.
    pub disable_old: DisableOld,
    /// Pass `--skip-dns-check` to every cmdeploy run (a relay whose DNS cmdeploy
    /// cannot check from here, such as a lab relay or one whose records are not
    /// live yet).
    pub skip_dns_check: bool,
    pub dns: DnsConfig,
    pub retry: RetryPolicy,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransferMode {
    /// OLD pushes to NEW with the controller's forwarded agent (the guide's way).
    Direct,
    /// Through a staging directory on the controller (two rsync hops).
    Staged,
}

/// How step 3 stops mail on OLD (and so how a rollback starts it again).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DisableOld {
    /// The guide's `cmdeploy run --disable-mail`: a whole deploy inside the downtime.
    #[default]
    Cmdeploy,
    /// `systemctl disable --now` of dovecot and postfix over cmfleet's own connection:
    /// what `--disable-mail` does to them, without the deploy around it.
    Systemctl,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Learn unknown hosts' keys on first contact, refuse changed ones.
    AcceptNew,
    /// Only hosts already in cmfleet's known_hosts.
    Strict,
}

/// How step 5 changes the relay's A/AAAA records: the DNS module's own settings
/// type, so the inventory and the DNS code cannot drift apart.
pub use crate::infra::dns::{DnsSettings as DnsConfig, ProviderKind as DnsProviderKind};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per step for transient failures (1 = no retry).
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Hooks {
    pub pre_cutover: Option<String>,
    pub post_cutover: Option<String>,
}
