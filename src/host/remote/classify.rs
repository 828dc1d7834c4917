//! Which failures are worth retrying.

use std::fmt;

use crate::model::step::{ErrorKind, StepError};

/// What a command does, because the same exit code means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// rsync (directly or as the payload of a remote command).
    Transfer,
    /// Anything else.
    Plain,
}

/// A command that ran and failed, classified.
#[derive(Debug, Clone)]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandError {}

/// rsync exit codes that mean "the transfer was cut short": socket or protocol
/// errors (a dropped connection), partial transfers, timeouts, and 255 from the
/// ssh it runs over.
const RSYNC_TRANSIENT: [i32; 8] = [10, 12, 23, 24, 30, 35, 255, 14];

/// Output that proves retrying cannot help, whatever the exit code.
const PERMANENT_MARKERS: [&str; 4] = [
    "No space left on device",
    "Disk quota exceeded",
    "Host key verification failed",
    "Permission denied (publickey",
];

/// The line of a failed command's output that says why: one naming a permanent cause
/// (a full disk, a refused key) if any, else the last non-blank one. rsync ends with
/// its summary ("rsync error: ... (code 11)") or a blank line after its progress
/// updates, either of which alone hides the cause.
pub fn telling_line(output_tail: &[String]) -> String {
    output_tail
        .iter()
        .rev()
        .find(|l| PERMANENT_MARKERS.iter().any(|m| l.contains(m)))
        .or_else(|| output_tail.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_default()
}

pub fn classify_exit(what: CommandKind, code: Option<i32>, output_tail: &[String]) -> ErrorKind {
    if output_tail
        .iter()
        .any(|l| PERMANENT_MARKERS.iter().any(|m| l.contains(m)))
    {
        return ErrorKind::Permanent;
    }
    match (what, code) {
        // Killed by a signal (e.g. the remote sshd died under it).
        (_, None) => ErrorKind::Transient,
        (CommandKind::Transfer, Some(c)) if RSYNC_TRANSIENT.contains(&c) => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// ssh's own words for a connection it could not open (`connect to host H port P:
/// Connection refused`, also timed out or no route), found in `text`: a command's
/// output, or an error that quotes it. An inner ssh (OLD pushing to NEW) says it on
/// OLD, where only these words tell that NEW is the host out of reach.
pub fn connect_failure(text: &str) -> Option<&str> {
    text.lines().find_map(|l| {
        let rest = &l[l.find("connect to host ")?..];
        rest.contains(" port ").then(|| rest.trim_end())
    })
}

/// Classifies a failed connection attempt by what ssh said.
pub fn classify_connect(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    let permanent = [
        "permission denied",
        "host key verification failed",
        "remote host identification has changed",
        "no matching host key",
        "too long for unix domain socket",
        "could not resolve hostname",
        "bad configuration option",
    ];
    if permanent.iter().any(|p| m.contains(p)) {
        ErrorKind::Permanent
    } else {
        // Refused, timed out, reset during key exchange (MaxStartups), unreachable.
        ErrorKind::Transient
    }
}

impl From<CommandError> for StepError {
    fn from(e: CommandError) -> Self {
        StepError {
            kind: e.kind,
            message: e.message,
        }
    }
}

impl From<super::SshError> for StepError {
    fn from(e: super::SshError) -> Self {
        StepError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connect_failure;

    #[test]
    fn ssh_connect_failures_are_found_in_an_error() {
        let e = "command on root@10.0.0.1:22 failed (exit 255): ssh: connect to host 10.0.1.1 port 22: Connection refused";
        assert_eq!(
            connect_failure(e),
            Some("connect to host 10.0.1.1 port 22: Connection refused")
        );
        let tail = "rsync: connection unexpectedly closed\nssh: connect to host new.example.org port 2222: Connection timed out\n";
        assert_eq!(
            connect_failure(tail),
            Some("connect to host new.example.org port 2222: Connection timed out")
        );
        assert_eq!(
            connect_failure("rsync error: unexplained error (code 255) at io.c(285)"),
            None
        );
        assert_eq!(connect_failure("Permission denied (publickey)."), None);
    }
}
