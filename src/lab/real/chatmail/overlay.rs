//! The lab's one overlay commit on chatmail: local stand-ins for what the deploy would
//! fetch from outside the registries this machine reaches (Debian, PyPI, crates.io,
//! npm). Each stand-in is switched on by an environment variable, so a run without
//! them is upstream's code. What each patch changes, and why: docs/how-it-works.md,
//! "The real-chatmail lab".

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use super::git::{command, git};
use crate::lab::error::{LabError, Result};
use crate::lab::process::{show, wait};

/// `CMFLEET_LAB_BINARIES=DIR`: upload DIR/chatmail-turn, DIR/iroh-relay and DIR/mtail
/// instead of downloading them from GitHub.
pub const ENV_BINARIES: &str = "CMFLEET_LAB_BINARIES";
/// `CMFLEET_LAB_DEBIAN_DOVECOT=1`: Debian's dovecot through apt instead of chatmail's
/// 2.3.21 .debs from download.delta.chat.
pub const ENV_DEBIAN_DOVECOT: &str = "CMFLEET_LAB_DEBIAN_DOVECOT";
/// `CMFLEET_LAB_RESOLVER=ADDR`: opendkim looks DKIM keys up through the resolver at
/// ADDR (the lab's BIND) instead of from the root servers with DNSSEC, which the lab
/// cannot reach and whose chain of trust `lab.example` is not in.
pub const ENV_RESOLVER: &str = "CMFLEET_LAB_RESOLVER";
/// `CMFLEET_LAB_SELF_SIGNED=1` (1.9.0 only; 1.10 and later do it for `_` domains):
/// a self-signed certificate instead of Let's Encrypt, and TLS without verification
/// to domains starting with `_`.
pub const ENV_SELF_SIGNED: &str = "CMFLEET_LAB_SELF_SIGNED";

/// `CHATMAIL_FILTERMAIL_BINARY=PATH` (upstream's own switch, 1.10 and later): upload
/// PATH as /usr/local/bin/filtermail instead of downloading the Rust filtermail.
pub const ENV_FILTERMAIL: &str = "CHATMAIL_FILTERMAIL_BINARY";

/// The subject line of every overlay commit (how a checkout is recognised as the lab's).
pub const COMMIT_SUBJECT: &str = "cmfleet lab overlay";

/// One overlay: a patch for a range of chatmail versions.
#[derive(Debug, PartialEq, Eq)]
pub struct Overlay {
    /// The patch's file name in src/lab/assets/.
    pub name: &'static str,
    /// The patch (`git diff` output).
    pub patch: &'static str,
    /// The environment variables its code reads.
    pub switches: &'static [&'static str],
    /// The files it changes or adds, relative to the checkout.
    pub files: &'static [&'static str],
    /// Whether the versions it fits download the Rust filtermail (1.10 and later), so
    /// the lab sets `ENV_FILTERMAIL` to its pass-through stand-in (`FILTERMAIL_STANDIN`).
    pub filtermail_standin: bool,
}

/// Tried in this order; the first whose `git apply --check` passes is applied. 1.9.0's
/// also applies to 1.8.0, 1.12.0's to 1.11.0; 1.10.0 (its TLS code changed, no
/// `download_executable` yet) takes neither.
pub const OVERLAYS: &[Overlay] = &[
    Overlay {
        name: "chatmail-1.9.0-lab.patch",
        patch: include_str!("../../assets/chatmail-1.9.0-lab.patch"),
        switches: &[
            ENV_BINARIES,
            ENV_DEBIAN_DOVECOT,
            ENV_RESOLVER,
            ENV_SELF_SIGNED,
        ],
        files: &[
            "cmdeploy/src/cmdeploy/deployers.py",
            "cmdeploy/src/cmdeploy/dovecot/deployer.py",
            "cmdeploy/src/cmdeploy/lab.py",
            "cmdeploy/src/cmdeploy/mtail/deployer.py",
            "cmdeploy/src/cmdeploy/opendkim/deployer.py",
            "cmdeploy/src/cmdeploy/opendkim/opendkim.conf",
            "cmdeploy/src/cmdeploy/postfix/deployer.py",
            "cmdeploy/src/cmdeploy/postfix/main.cf.j2",
        ],
        filtermail_standin: false,
    },
    Overlay {
        name: "chatmail-1.12.0-lab.patch",
        patch: include_str!("../../assets/chatmail-1.12.0-lab.patch"),
        switches: &[ENV_BINARIES, ENV_DEBIAN_DOVECOT, ENV_RESOLVER],
        files: &[
            "cmdeploy/src/cmdeploy/basedeploy.py",
            "cmdeploy/src/cmdeploy/dovecot/deployer.py",
            "cmdeploy/src/cmdeploy/lab.py",
            "cmdeploy/src/cmdeploy/opendkim/deployer.py",
            "cmdeploy/src/cmdeploy/opendkim/opendkim.conf",
        ],
        filtermail_standin: true,
    },
];

/// The pass-through filtermail a 1.10-and-later lab relay runs (it enforces no
/// encryption; its header says what each mode does).
pub const FILTERMAIL_STANDIN: &str = include_str!("../../assets/filtermail-passthrough");

/// Its file name in the lab directory (and in src/lab/assets/).
pub const FILTERMAIL_STANDIN_NAME: &str = "filtermail-passthrough";

/// Applies the first overlay that fits the checkout at `dir` and commits it as the
/// lab (one commit, so `git status` stays clean and cmdeploy's version upload, which
/// sends `git diff`, shows no local change).
pub fn apply(dir: &Path, reference: &str) -> Result<&'static Overlay> {
    let overlay = OVERLAYS
        .iter()
        .find(|o| git_apply(dir, o, true).is_ok())
        .ok_or_else(|| LabError::NoOverlay {
            reference: reference.to_string(),
            patches: OVERLAYS.iter().map(|o| o.name).collect(),
        })?;
    git_apply(dir, overlay, false)?;
    git(dir, &["add", "-A"])?;
    let message = format!(
        "{COMMIT_SUBJECT} ({name})\n\nLocal stand-ins for downloads from outside the \
         package registries, each behind an environment variable ({switches}); \
         without them this is upstream's code. Made by cmfleet's real-chatmail lab.\n",
        name = overlay.name,
        switches = overlay.switches.join(", "),
    );
    git(dir, &["commit", "-q", "-m", &message])?;
    Ok(overlay)
}

/// `git apply [--check]` with the patch on stdin.
fn git_apply(dir: &Path, overlay: &Overlay, check: bool) -> Result<()> {
    let mut cmd = command(dir);
    cmd.arg("apply");
    if check {
        cmd.arg("--check");
    }
    cmd.arg("-");
    let shown = format!("{} < {}", show(&cmd), overlay.name);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(overlay.patch.as_bytes())
            .map_err(LabError::io(format!("write {} to git apply", overlay.name)))?;
    }
    wait(shown, child).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_overlay_lists_exactly_the_files_its_patch_touches() {
        for o in OVERLAYS {
            let mut touched: Vec<&str> = o
                .patch
                .lines()
                .filter_map(|l| l.strip_prefix("+++ b/"))
                .collect();
            touched.sort_unstable();
            assert_eq!(touched, o.files, "{}", o.name);
        }
    }

    #[test]
    fn each_overlay_reads_its_switches_and_no_other() {
        for o in OVERLAYS {
            for var in [
                ENV_BINARIES,
                ENV_DEBIAN_DOVECOT,
                ENV_RESOLVER,
                ENV_SELF_SIGNED,
            ] {
                assert_eq!(
                    o.patch.contains(var),
                    o.switches.contains(&var),
                    "{} and {var}",
                    o.name
                );
            }
        }
    }
}
