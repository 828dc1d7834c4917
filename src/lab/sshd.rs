//! sshd configuration and host keys of lab hosts.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::error::{LabError, Result};
use super::process::{run, show};

/// A host's sshd_config. Limits are raised because a fleet migration multiplexes many
/// channels over one connection (MaxSessions) and opens bursts of connections
/// (MaxStartups); StrictModes is off because the lab's files live under /tmp.
/// `dir` holds the host's keys and pid file.
pub fn config(name: &str, addr: Ipv4Addr, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# sshd of lab host {name} ({addr}), written by cmfleet lab\n\
         ListenAddress {addr}:22\n\
         HostKey {d}/ssh_host_ed25519_key\n\
         PidFile {d}/sshd.pid\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         AllowAgentForwarding yes\n\
         AllowTcpForwarding yes\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         MaxSessions 64\n\
         MaxStartups 200:30:400\n\
         LoginGraceTime 30\n\
         AuthorizedKeysFile /root/.ssh/authorized_keys\n\
         StrictModes no\n\
         LogLevel INFO\n\
         Subsystem sftp internal-sftp\n",
    )
}

/// Generates ed25519 keys (no passphrase) at each path, all at once: ssh-keygen is a
/// process per key and the machine has cores to spare while they run.
pub fn keygen_all(paths: &[&Path], comment: &str) -> Result<()> {
    let mut children = Vec::new();
    for p in paths {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(p)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let shown = show(&cmd);
        let child = cmd
            .spawn()
            .map_err(LabError::io(format!("run `{shown}`")))?;
        children.push((shown, child));
    }
    for (shown, child) in children {
        super::process::wait(shown, child)?;
    }
    Ok(())
}

/// The public half of a key as "type base64" (without the comment).
pub fn public_key(private: &Path) -> Result<String> {
    let pubfile = private.with_extension("pub");
    let text = std::fs::read_to_string(&pubfile)
        .map_err(LabError::io(format!("read {}", pubfile.display())))?;
    let mut f = text.split_whitespace();
    match (f.next(), f.next()) {
        (Some(t), Some(k)) => Ok(format!("{t} {k}")),
        _ => Err(LabError::Options(format!(
            "{} is not an ssh public key",
            pubfile.display()
        ))),
    }
}

/// Checks that `sshd -t` accepts a config (gives a clear error before 40 hosts fail).
pub fn check_config(cfg: &Path) -> Result<()> {
    run(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(cfg)).map(|_| ())
}
