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
    // The socket exists from ssh-agent's bind(), and accepts connections from its
    // listen() just after: ssh-add in between is refused ("Error connecting to
    // agent: Connection refused", seen once in the suite on a loaded machine).
    if !accepts(sock, deadline) {
        return Err(LabError::Command {
            command: format!("ssh-agent -D -a {}", sock.display()),
            status: "its socket accepted no connection in 5s".into(),
            stderr: log_tail(log),
        });
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

/// Whether the unix socket `sock` accepts a connection before `deadline` (a socket
/// bound but not yet listening refuses).
fn accepts(sock: &Path, deadline: Instant) -> bool {
    loop {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A socket that is bound a second before it listens (ssh-agent's bind and
    /// listen, far apart): its file exists at once, a connection is refused until
    /// the listen, and `accepts` waits for it.
    #[test]
    fn a_bound_socket_is_waited_for_until_it_listens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let mut late = std::process::Command::new("python3")
            .arg("-c")
            .arg("import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ntime.sleep(1)\ns.listen()\ntime.sleep(5)")
            .arg(&sock)
            .spawn()
            .expect("python3");
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "no socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            std::os::unix::net::UnixStream::connect(&sock).is_err(),
            "bound, not listening: refused"
        );
        assert!(super::accepts(
            &sock,
            Instant::now() + Duration::from_secs(5)
        ));
        let _ = late.kill();
        let _ = late.wait();
    }
}
