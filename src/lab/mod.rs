//! The lab: a real fleet of chatmail relay hosts on one machine, for tests and demos.
//!
//! A lab host is one `/usr/sbin/sshd -D` in its own private mount namespace
//! (`unshare -m --propagation private`), listening on its own loopback address
//! (127.X.Y.Z:22). Inside the namespace, per-host directories of the lab are bind-mounted
//! over /home/vmail, /var/lib/acme, /etc/dkimkeys, /var/spool/postfix, /root/.ssh and
//! /var/lib/chatmail-lab, the host gets its own /etc/passwd and /etc/group (the machine's
//! plus `vmail` and `opendkim`), an empty /root/.bashrc (the machine's runs `pyenv init`,
//! ~100 ms per remote command) and the lab's stand-ins in /usr/local/sbin (`postfix
//! set-permissions`, `postsuper -s`, the mail listener, and an `rsync` wrapper that
//! obeys a per-host link limit, see `Lab::set_link_limit`). So the guide's commands (tar,
//! rsync, chown) run unchanged and never touch the machine's directories; the only trace
//! on the machine is empty mount points and /run/sshd. The mounts exist only inside the
//! namespaces and disappear with the hosts' last processes.
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
//! `invocations.log`, and while active a daemon answering on ports 25, 465 and 993 of the
//! host's address. A file `DIR/faults/<host>/cmdeploy-fail` makes it fail.
//!
//! # Layout of a lab directory
//! `lab.json` (what runs: PIDs with start times), `inventory.toml`, `ssh_config`,
//! `known_hosts`, `id_ed25519`, `agent.sock`, `relay/` (checkout), `relays/<domain>/
//! chatmail.ini`, `bin/` (host /usr/local/sbin), `faults/`, and `hosts/<addr>/` with the
//! host's `sshd_config`, keys, logs, `start.sh` and its filesystem under `fs/`.
//!
//! Addresses: a lab owns 127.X.Y.0/24; relay i's OLD host is .(2i-1), its NEW host .(2i).

mod activity;
mod addr;
mod agent;
mod cli;
mod cmdeploy;
mod data;
mod error;
mod fleet;
mod host;
mod inventory_file;
mod manifest;
mod process;
mod sshd;
mod state;
mod users;

pub use activity::{simulate as simulate_activity, Activity, ActivityReport};
pub use addr::{Side, Subnet, MAX_RELAYS};
pub use cli::{run, LabCommand};
pub use data::{user_address, DataOptions};
pub use error::{LabError, Result};
pub use fleet::{
    port_accepts, HostState, HostStatus, Lab, LabOptions, LabRelay, LabStatus, DEFAULT_DIR,
};
pub use host::{LabHost, BIND_DIRS, STATE_DIR};
pub use manifest::{Entry, Kind, Manifest};
pub use process::{lab_mounts_remain, lab_processes, ProcRecord, Stopped};
pub use users::LabUsers;
