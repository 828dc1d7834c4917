//! How the real cmdeploy reaches the lab's hosts without touching the operator's
//! ~/.ssh. cmdeploy connects twice per run, both times as root with no option to
//! point at an ssh config:
//! - pyinfra (paramiko) reads `~/.ssh/config` and `~/.ssh/known_hosts`, expanding `~`
//!   from `$HOME`;
//! - the DNS-check session (execnet) and pyinfra's rsync run the system `ssh`, which
//!   takes `~` from the passwd entry and ignores `$HOME`.
//!
//! So a cmdeploy run of the lab gets `HOME=DIR/cmdeploy-home`, whose `.ssh/config`
//! and `.ssh/known_hosts` name the lab's hosts and key, and `DIR/cmdeploy-home/bin`
//! first in `PATH`, where an `ssh` wrapper passes that config with `-F`
//! (assets/cmdeploy-ssh). An operator's real night uses their own ~/.ssh as it is.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::lab::error::{LabError, Result};

const SSH_WRAPPER: &str = include_str!("../../assets/cmdeploy-ssh");

/// DIR/cmdeploy-home: the HOME of the lab's cmdeploy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdeployHome {
    /// The directory (absolute).
    pub home: PathBuf,
}

impl CmdeployHome {
    /// `DIR/cmdeploy-home` of the lab in `lab_dir`.
    pub fn of(lab_dir: &Path) -> CmdeployHome {
        CmdeployHome {
            home: lab_dir.join("cmdeploy-home"),
        }
    }

    /// `.ssh/config`.
    pub fn ssh_config(&self) -> PathBuf {
        self.home.join(".ssh/config")
    }

    /// `.ssh/known_hosts`.
    pub fn known_hosts(&self) -> PathBuf {
        self.home.join(".ssh/known_hosts")
    }

    /// `bin/`, with the `ssh` wrapper.
    pub fn bin(&self) -> PathBuf {
        self.home.join("bin")
    }

    /// `HOME` and `PATH` for a cmdeploy run (PATH: `bin/` before `path`, the caller's).
    pub fn env(&self, path: Option<OsString>) -> Vec<(&'static str, OsString)> {
        let mut dirs = vec![self.bin()];
        dirs.extend(std::env::split_paths(&path.unwrap_or_default()));
        let joined = std::env::join_paths(dirs).unwrap_or_else(|_| self.bin().into_os_string());
        vec![
            ("HOME", self.home.clone().into_os_string()),
            ("PATH", joined),
        ]
    }
}

/// Writes DIR/cmdeploy-home (`.ssh/config`, `.ssh/known_hosts`, `bin/ssh`) for
/// `hosts`, each an address and its host key line (`TYPE BASE64 [comment]`, as in
/// /etc/ssh/ssh_host_ed25519_key.pub), reached as root with the key `identity`.
pub fn write_cmdeploy_home(
    lab_dir: &Path,
    identity: &Path,
    hosts: &[(IpAddr, &str)],
) -> Result<CmdeployHome> {
    let home = CmdeployHome::of(lab_dir);
    for path in [&home.home, identity] {
        plain_path(path)?;
    }
    let ssh_dir = home.home.join(".ssh");
    for (dir, mode) in [(&home.home, 0o755), (&ssh_dir, 0o700), (&home.bin(), 0o755)] {
        fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))?;
        set_mode(dir, mode)?;
    }
    let known_hosts = render_known_hosts(hosts)?;
    write(&home.known_hosts(), &known_hosts, 0o600)?;
    write(
        &home.ssh_config(),
        &render_ssh_config(&home.known_hosts(), identity, hosts),
        0o600,
    )?;
    let ssh = real_ssh(&home.bin())?;
    plain_path(&ssh)?;
    let wrapper = SSH_WRAPPER
        .replace("@SSH@", &ssh.to_string_lossy())
        .replace("@CONFIG@", &home.ssh_config().to_string_lossy());
    write(&home.bin().join("ssh"), &wrapper, 0o755)?;
    Ok(home)
}

/// The ssh config: a `Host ADDR` block per host (root, the lab key), then defaults that
/// keep every connection to the lab's known hosts file and never prompt.
pub fn render_ssh_config(known_hosts: &Path, identity: &Path, hosts: &[(IpAddr, &str)]) -> String {
    let mut s = String::from(
        "# ssh config of the real-chatmail lab's cmdeploy runs (written by cmfleet lab):\n\
         # pyinfra reads it as HOME/.ssh/config, the system ssh through bin/ssh -F.\n",
    );
    for (addr, _) in hosts {
        let _ = write!(
            s,
            "Host {addr}\n    HostName {addr}\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n",
            identity.display()
        );
    }
    let _ = write!(
        s,
        "Host *\n    UserKnownHostsFile {}\n    GlobalKnownHostsFile /dev/null\n    \
         StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n",
        known_hosts.display()
    );
    s
}

/// known_hosts lines `ADDR TYPE BASE64` for `hosts`; a key that is not one
/// `TYPE BASE64 [comment]` line is an error.
pub fn render_known_hosts(hosts: &[(IpAddr, &str)]) -> Result<String> {
    let mut s = String::new();
    for (addr, line) in hosts {
        let bad = || LabError::HostKey {
            addr: *addr,
            line: line.to_string(),
        };
        if line.trim().contains('\n') {
            return Err(bad());
        }
        let mut fields = line.split_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            return Err(bad());
        };
        let kind_ok =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        let key_ok = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
        if !kind_ok || !key_ok {
            return Err(bad());
        }
        let _ = writeln!(s, "{addr} {kind} {key}");
    }
    Ok(s)
}

/// The system ssh: the first `ssh` in PATH that is not the wrapper itself.
fn real_ssh(wrapper_dir: &Path) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir != wrapper_dir)
        .map(|dir| dir.join("ssh"))
        .find(|p| p.is_file())
        .ok_or(LabError::MissingTool {
            tool: "ssh".into(),
            hint: "apt-get install openssh-client",
        })
}

/// ssh config and the wrapper's quoting take paths without whitespace or quotes.
fn plain_path(path: &Path) -> Result<()> {
    let s = path.to_string_lossy();
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"')
    {
        return Err(LabError::Options(format!(
            "{s:?}: the lab's ssh config cannot hold a path with spaces or quotes"
        )));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))
}

/// Writes through a temporary name, so a cmdeploy starting meanwhile reads the old
/// file or the new one, never half of one.
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text).map_err(LabError::io(format!("write {}", tmp.display())))?;
    set_mode(&tmp, mode)?;
    fs::rename(&tmp, path).map_err(LabError::io(format!("rename {}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdJ9gGq0kqfH7mM7x+Q2bq1zOe0Xn0b7yQ6z8m1bH0k root@relay1-old";

    #[test]
    fn config_has_a_block_per_host_with_the_lab_key_and_known_hosts() {
        let addr: IpAddr = "198.18.0.2".parse().unwrap();
        let s = render_ssh_config(
            Path::new("/lab/cmdeploy-home/.ssh/known_hosts"),
            Path::new("/lab/id_ed25519"),
            &[(addr, KEY)],
        );
        assert!(s.contains("Host 198.18.0.2\n    HostName 198.18.0.2\n    User root\n    IdentityFile /lab/id_ed25519\n"), "{s}");
        assert!(
            s.contains("UserKnownHostsFile /lab/cmdeploy-home/.ssh/known_hosts\n"),
            "{s}"
        );
        assert!(s.contains("StrictHostKeyChecking yes\n"), "{s}");
    }

    #[test]
    fn known_hosts_drop_the_comment_and_refuse_malformed_keys() {
        let addr: IpAddr = "198.18.0.2".parse().unwrap();
        let s = render_known_hosts(&[(addr, KEY)]).unwrap();
        assert_eq!(s.lines().count(), 1);
        assert!(s.starts_with("198.18.0.2 ssh-ed25519 AAAAC3Nza"), "{s}");
        assert!(!s.contains("root@"), "{s}");
        for bad in [
            "",
            "ssh-ed25519",
            "AAAA ssh-ed25519",
            "ssh-ed25519 AA AA\nx y",
            "ssh-ed25519 A;B",
        ] {
            assert!(render_known_hosts(&[(addr, bad)]).is_err(), "{bad:?}");
        }
    }
}
