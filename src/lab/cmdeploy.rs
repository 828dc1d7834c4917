//! The lab's chatmail relay checkout with its stand-in `cmdeploy`, and the programs lab
//! hosts find in /usr/local/sbin: logging wrappers around the real postfix and
//! postsuper, the mail system's start/stop script, a `systemctl` for postfix and dovecot
//! (step 3 with `disable_old = "systemctl"`), rsync and tar wrappers (slow links) and the
//! lab's mail client.
//!
//! The real cmdeploy deploys a whole relay with pyinfra (packages, systemd units, nginx,
//! acme, ...) and needs a full Debian 12 machine per host; lab hosts are sshds in mount
//! namespaces on one machine. The stand-in keeps what cmfleet depends on: the CLI and
//! its errors, `CMDEPLOY_STAGES`, the target host, the working-directory hazards (venv/,
//! ./chatmaild/dist, www/build) and an observable effect on the host.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::error::{LabError, Result};
use super::process::run;
use crate::infra::shell::quote;

const SCRIPTS_CMDEPLOY: &str = include_str!("assets/scripts-cmdeploy");
const VENV_ACTIVATE: &str = include_str!("assets/venv-activate");
const VENV_CMDEPLOY: &str = include_str!("assets/venv-cmdeploy");
const REMOTE: &str = include_str!("assets/remote.sh");
const MAIL: &str = include_str!("assets/chatmail-lab-mail");
const CLIENT: &str = include_str!("assets/lab-client.py");
const POSTFIX: &str = include_str!("assets/postfix");
const POSTSUPER: &str = include_str!("assets/postsuper");
const RSYNC: &str = include_str!("assets/rsync");
const TAR: &str = include_str!("assets/tar");
const SYSTEMCTL: &str = include_str!("assets/systemctl");

/// Writes `text` to `path` with `mode`.
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(LabError::io(format!("create {}", parent.display())))?;
    }
    fs::write(path, text).map_err(LabError::io(format!("write {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))
}

/// Creates the checkout at `checkout` (a git repository with one commit, like a clone of
/// the chatmail relay repository) plus its untracked `venv/`.
pub fn create_checkout(checkout: &Path, lab_dir: &Path) -> Result<()> {
    let venv = checkout.join("venv");
    write(&checkout.join("scripts/cmdeploy"), SCRIPTS_CMDEPLOY, 0o755)?;
    write(
        &checkout.join("www/src/index.md"),
        "# chatmail relay @MAIL_DOMAIN@ (lab)\n\nThe website cmdeploy renders into www/build.\n",
        0o644,
    )?;
    // The package the venv imports (an editable install of the checkout's own
    // cmdeploy/src, as `scripts/initenv.sh` makes it): where the website is rendered.
    write(
        &checkout.join("cmdeploy/src/cmdeploy/__init__.py"),
        "# stand-in: the lab's cmdeploy is venv/bin/cmdeploy\n",
        0o644,
    )?;
    write(
        &checkout.join("chatmaild/pyproject.toml"),
        "[project]\nname = \"chatmaild\"\nversion = \"0.2\"\n",
        0o644,
    )?;
    write(
        &checkout.join("README.md"),
        "A stand-in chatmail relay checkout made by `cmfleet lab` (see cmfleet::lab).\n",
        0o644,
    )?;
    // As in the real repository, the venv and build outputs are not tracked.
    write(
        &checkout.join(".gitignore"),
        "/venv/\n/chatmaild/dist/\n/www/build/\n",
        0o644,
    )?;
    write(&venv.join("bin/activate"), &venv_activate(&venv), 0o644)?;
    write(&venv.join("bin/cmdeploy"), &venv_cmdeploy(lab_dir), 0o755)?;
    write(&venv.join("lib/cmdeploy-lab/remote.sh"), REMOTE, 0o644)?;
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=cmfleet lab",
                "-c",
                "user.email=lab@cmfleet.invalid",
            ])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(checkout))
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&[
        "commit",
        "-q",
        "-m",
        "chatmail relay checkout (cmfleet lab stand-in)",
    ])?;
    Ok(())
}

/// `venv/bin/activate` of the checkout whose venv is `venv` (a shell word, quoted).
pub fn venv_activate(venv: &Path) -> String {
    VENV_ACTIVATE.replace("@VENV@", &quote(&venv.to_string_lossy()))
}

/// The stand-in `venv/bin/cmdeploy` of the lab in `lab_dir` (a shell word, quoted).
pub fn venv_cmdeploy(lab_dir: &Path) -> String {
    VENV_CMDEPLOY.replace("@LAB_DIR@", &quote(&lab_dir.to_string_lossy()))
}

/// The lab's mail client in `DIR/bin` (see assets/lab-client.py).
pub const CLIENT_NAME: &str = "lab-client";

/// Fills the directory mounted over every host's /usr/local/sbin.
pub fn write_host_bin(bin: &Path) -> Result<()> {
    write(&bin.join("postfix"), POSTFIX, 0o755)?;
    write(&bin.join("postsuper"), POSTSUPER, 0o755)?;
    write(&bin.join("rsync"), RSYNC, 0o755)?;
    write(&bin.join("tar"), TAR, 0o755)?;
    write(&bin.join("chatmail-lab-mail"), MAIL, 0o755)?;
    write(&bin.join("systemctl"), SYSTEMCTL, 0o755)?;
    write(&bin.join(CLIENT_NAME), CLIENT, 0o755)
}
