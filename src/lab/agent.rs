//! The lab's ssh-agent: holds the lab key so that a command running on an OLD host can
//! reach the NEW host through the controller's forwarded agent (`ssh -A`), as in the guide.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::host::append;
use super::process::{log_tail, run, ProcRecord};

/// Starts `ssh-agent -D -a SOCK` (foreground, so the PID we record is the agent's) and
/// adds `key` to it.
pub fn start(sock: &Path, log: &Path, key: &Path) -> Result<ProcRecord> {
    // A socket left by a crashed lab would make ssh-agent refuse to bind.
    let _ = std::fs::remove_file(sock);
    let mut child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(append(log)?)
        .stderr(append(log)?)
        .process_group(0)
        .spawn()
        .map_err(LabError::io("start ssh-agent"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Command {
                command: format!("ssh-agent -D -a {}", sock.display()),
                status: status.to_string(),
                stderr: log_tail(log),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::Command {
                command: format!("ssh-agent -D -a {}", sock.display()),
                status: "no socket after 5s".into(),
                stderr: log_tail(log),
            });
        }
        sleep(Duration::from_millis(5));
    }
    let rec = ProcRecord::of(child.id() as i32).ok_or_else(|| LabError::Command {
        command: "ssh-agent".into(),
        status: "exited right after start".into(),
        stderr: log_tail(log),
    })?;
    run(Command::new("ssh-add")
        .arg("-q")
        .arg(key)
        .env("SSH_AUTH_SOCK", sock))?;
    Ok(rec)
}
