//! What a lab host's stand-in cmdeploy recorded, and whether its mail system runs.

use std::fs;

use super::host::{LabHost, STATE_DIR};

/// What the stand-in cmdeploy recorded on a host, and its mail system's masters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// An install or configure stage ran.
    pub configured: bool,
    /// `--disable-mail` or the lab's `systemctl disable` ran last (and no activate since).
    pub mail_disabled: bool,
    /// The activate stage ran last: Postfix and Dovecot run.
    pub active: bool,
    /// One line per cmdeploy run against this host (args, stages), oldest first.
    pub invocations: Vec<String>,
    /// One line per run of `postfix` or `postsuper` in the host (the lab's logging
    /// wrappers around the real ones), oldest first.
    pub postfix_log: Vec<String>,
    /// PID of the host's running Postfix master, if any.
    pub postfix_pid: Option<i32>,
    /// PID of the host's running Dovecot master, if any.
    pub dovecot_pid: Option<i32>,
}

/// The PID in `pid_file` if that process runs and is called `comm` (a stale pid file
/// of a stopped master, its PID since reused, must not count).
fn running(host: &LabHost, pid_file: &str, comm: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(host.path(pid_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?;
    let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
    (name == comm && state != 'Z').then_some(pid)
}

/// Reads the host's record and checks its masters.
pub fn read_host_state(h: &LabHost) -> HostState {
    let read =
        |name: &str| fs::read_to_string(h.path(&format!("{STATE_DIR}/{name}"))).unwrap_or_default();
    let lines = |t: String| t.lines().map(str::to_string).collect::<Vec<_>>();
    let state = read("state");
    let flag = |k: &str| state.lines().any(|l| l.trim() == format!("{k}=1"));
    HostState {
        configured: flag("configured"),
        mail_disabled: flag("mail_disabled"),
        active: flag("active"),
        invocations: lines(read("invocations.log")),
        postfix_log: lines(read("postfix.log")),
        postfix_pid: running(h, "/var/spool/postfix/pid/master.pid", "master"),
        dovecot_pid: running(h, "/run/dovecot/master.pid", "dovecot"),
    }
}
