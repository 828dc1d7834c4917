//! The lab: a real fleet of chatmail relay hosts on one machine, for tests and demos.
//!
//! A lab host is one `/usr/sbin/sshd -D` in its own private mount namespace
//! (`unshare -m --propagation private`), listening on its own loopback address
//! (127.X.Y.Z:22). Inside the namespace, per-host directories of the lab are bind-mounted
//! over /home/vmail, /var/lib/acme, /etc/dkimkeys, /var/spool/postfix, /root/.ssh,
//! /var/lib/chatmail-lab and the mail system's /etc/postfix, /var/lib/postfix,
//! /etc/dovecot, /run/dovecot and /var/lib/dovecot; the host gets its own /etc/passwd and
//! /etc/group (the machine's plus `vmail` and `opendkim`), an empty /root/.bashrc (the
//! machine's runs `pyenv init`, ~100 ms per remote command) and the lab's programs in
//! /usr/local/sbin (logging wrappers around the real `postfix` and `postsuper`, the mail
//! system's start/stop script, and `rsync`/`tar` wrappers that obey a per-host link limit,
//! see `Lab::set_link_limit`). So the guide's commands (tar, rsync, chown, postsuper) run
//! unchanged and never touch the machine's directories; the traces on the machine are
//! empty mount points, /run/sshd and, while the lab runs, the hosts' addresses on lo. The
//! mounts exist only inside the namespaces and disappear with the hosts' last processes.
//!
//! # Real mail
//! Every host runs Debian's own Postfix and Dovecot (see `mail`): SMTP 25, SMTPS 465,
//! submission 587, IMAP 143, IMAPS 993 on its own address, Postfix delivering to Dovecot
//! over LMTP, maildirs at /home/vmail/mail/DOMAIN/ADDRESS with Dovecot's uidlist and
//! indexes and a `password` file per user. OLD hosts run them from `lab up` on; NEW hosts
//! from the stand-in's activate stage. `lab up` sends part of each OLD host's mail over
//! SMTP, reads and flags some over IMAP and leaves mail for a down destination in
//! Postfix's deferred queue (`client`); the bulk is written as maildir files (`data`).
//! `DIR/accounts.txt` lists every account with its password and hosts.
//!
//! One lab key, authorized on every host and held by a lab `ssh-agent`, lets a command on
//! an OLD host reach its NEW host through the controller's forwarded agent (`ssh -A`), as
//! the guide does. Every host knows every other host's key.
//!
//! # The stand-in cmdeploy
//! The lab creates a chatmail relay checkout (`DIR/relay`, a git repository with
//! `scripts/cmdeploy`, an untracked `venv/` and the website source) whose cmdeploy is a
//! stand-in: the real one deploys a full relay with pyinfra (packages, systemd services,
//! nginx, acme, ...) and needs a whole Debian 12 machine per host, which lab hosts are
//! not. The stand-in keeps what cmfleet depends on: the CLI (`cmdeploy run [--config
//! PATH] [--disable-mail] [--dry-run] [--skip-dns-check] [--ssh-host HOST]`, unknown
//! arguments exit 2), `CMDEPLOY_STAGES` (obeyed even when stale), the target (from
//! `--ssh-host`, else the config's `mail_domain`), the working-directory hazards (it
//! sources `venv/bin/activate` and rebuilds `./chatmaild/dist` relative to the working
//! directory, so two concurrent runs from one checkout fail), and an effect on the host
//! over ssh: `/var/lib/chatmail-lab/state` (configured, mail_disabled, active), an
//! `invocations.log`, and the host's real Postfix and Dovecot stopped (`--disable-mail`)
//! or started (activate), as the real one does with systemd. A file
//! `DIR/faults/<host>/cmdeploy-fail` makes it fail. `DIR/cmdeploy-cost` (`cmfleet lab up
//! --cmdeploy-cost real --cmdeploy-scale F`, or `Lab::set_cmdeploy_cost`) makes each run
//! cost what the real one would, scaled: wall time slept, controller CPU burned (see
//! `CmdeployCost`); without it a run takes a fraction of a second.
//!
//! # Layout of a lab directory
//! `lab.json` (what runs: PIDs with start times), `inventory.toml`, `accounts.txt`,
//! `ssh_config`, `known_hosts`, `id_ed25519`, `agent.sock`, `relay/` (checkout),
//! `relays/<domain>/chatmail.ini`, `bin/` (host /usr/local/sbin, and `lab-client`),
//! `tls/` (the hosts' certificate), `mail/transport`, `faults/`, and `hosts/<addr>/` with
//! the host's `sshd_config`, keys, logs, `start.sh` and its filesystem under `fs/` (mail
//! logs in `fs/var/lib/chatmail-lab/{mail,dovecot}.log`).
//!
//! Addresses: a lab owns 127.X.Y.0/24; relay i's OLD host is .(2i-1), its NEW host .(2i).

mod accounts;
mod activity;
mod addr;
mod agent;
mod cli;
mod client;
mod cmdeploy;
mod cost;
mod data;
mod error;
mod faults;
mod fleet;
mod host;
mod hoststate;
mod inventory_file;
mod layout;
mod mail;
mod mail_lab;
mod manifest;
mod process;
pub mod real;
mod sshd;
mod state;
mod users;

pub use accounts::Account;
pub use activity::{simulate as simulate_activity, Activity, ActivityReport};
pub use addr::{Side, Subnet, MAX_RELAYS};
pub use cli::{run, LabCommand};
pub use client::{
    AccountsView, MailboxView, DEFERRED_MESSAGES, IMAP_ACCOUNTS, SMTP_ACCOUNTS, SMTP_MESSAGES,
};
pub use cmdeploy::{venv_activate, venv_cmdeploy};
pub use cost::{CmdeployCost, CmdeployKind, CostModel, RunCost};
pub use data::{user_address, DataOptions};
pub use error::{LabError, Result};
pub use faults::StopFault;
pub use fleet::{port_accepts, HostStatus, Lab, LabOptions, LabRelay, LabStatus, DEFAULT_DIR};
pub use host::{LabHost, BIND_DIRS, STATE_DIR};
pub use hoststate::HostState;
pub use mail::{later_addr, LATER_DOMAIN, LATER_PORT};
pub use mail_lab::MAIL_PORTS;
pub use manifest::{Entry, Kind, Manifest};
pub use process::{lab_mounts_remain, lab_processes, ProcRecord, Stopped};
pub use users::LabUsers;
