//! How the controller reaches real lab hosts: `DIR/ssh_config` with one `Host` block
//! per host (matching its name and its address), the lab key as the only identity,
//! and `DIR/known_hosts` with every host key each host was given, so `ssh -F
//! DIR/ssh_config NAME` (or `root@ADDR`) checks the host strictly and never reads or
//! writes the operator's own ~/.ssh.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::super::error::{LabError, Result};
use super::state::RealHost;

/// The file names of the host keys `ssh-keygen -A` makes (public halves).
pub const HOST_KEYS: &[&str] = &[
    "ssh_host_ed25519_key.pub",
    "ssh_host_ecdsa_key.pub",
    "ssh_host_rsa_key.pub",
];

/// Writes `ssh_config` and `known_hosts` into `dir` for `hosts`, with `key` (a private
/// key) as the identity. The host keys are read from each host's upper layer.
pub fn write_files(dir: &Path, hosts: &[RealHost], key: &Path) -> Result<()> {
    let known_path = dir.join("known_hosts");
    let mut config = String::from(
        "# Real lab hosts (Debian 12 systemd containers), written by cmfleet's lab.\n\
         # Use: ssh -F THIS_FILE NAME (or root@ADDRESS)\n",
    );
    let mut known = String::new();
    for h in hosts {
        config += &format!(
            "\nHost {name} {addr}\n\
             \x20   HostName {addr}\n\
             \x20   User root\n\
             \x20   IdentityFile {key}\n\
             \x20   IdentitiesOnly yes\n\
             \x20   UserKnownHostsFile {known}\n\
             \x20   GlobalKnownHostsFile /dev/null\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   BatchMode yes\n\
             \x20   ConnectTimeout 5\n\
             \x20   LogLevel ERROR\n",
            name = h.name,
            addr = h.addr,
            key = key.display(),
            known = known_path.display(),
        );
        for file in HOST_KEYS {
            let path = h.upper().join("etc/ssh").join(file);
            let text = fs::read_to_string(&path)
                .map_err(LabError::io(format!("read {}", path.display())))?;
            let mut words = text.split_whitespace();
            if let (Some(kind), Some(b64)) = (words.next(), words.next()) {
                known += &format!("{},{} {kind} {b64}\n", h.addr, h.name);
            }
        }
    }
    let cfg_path = dir.join("ssh_config");
    fs::write(&cfg_path, config).map_err(LabError::io(format!("write {}", cfg_path.display())))?;
    fs::write(&known_path, known).map_err(LabError::io(format!("write {}", known_path.display())))
}

/// `ssh -F DIR/ssh_config NAME -- COMMAND` with stdin closed and output captured.
pub fn command(dir: &Path, host: &RealHost, remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg(dir.join("ssh_config"))
        .arg(&host.name)
        .arg("--")
        .arg(remote)
        .stdin(Stdio::null());
    cmd
}
