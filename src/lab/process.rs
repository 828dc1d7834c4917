//! Processes the lab starts and stops: running helper commands, recording PIDs in a way
//! that survives PID reuse, killing and waiting, and finding every process that lives
//! inside one of a lab's hosts (so a crashed lab can still be cleaned up).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::error::{LabError, Result};

/// A process the lab started: the PID plus its start time (from /proc), so a PID that
/// the kernel reused for somebody else's process is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcRecord {
    /// The process id.
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start_time: u64,
}

impl ProcRecord {
    /// Records a running process; `None` if it is already gone.
    pub fn of(pid: i32) -> Option<ProcRecord> {
        let stat = read_stat(pid)?;
        Some(ProcRecord {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process (not a PID reuse) still runs (zombies count as gone).
    pub fn alive(&self) -> bool {
        matches!(read_stat(self.pid), Some(s) if s.start_time == self.start_time && s.state != 'Z')
    }
}

/// The two fields of /proc/PID/stat the lab needs.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); start time is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Runs a helper to completion; a non-zero exit becomes `LabError::Command` with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    checked(shown, out).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for a spawned helper; a non-zero exit becomes `LabError::Command`.
pub fn wait(shown: String, child: std::process::Child) -> Result<std::process::Output> {
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("wait for `{shown}`")))?;
    checked(shown, out)
}

/// A finished helper's output, or `LabError::Command` with the end of its stderr.
fn checked(shown: String, out: std::process::Output) -> Result<std::process::Output> {
    if out.status.success() {
        return Ok(out);
    }
    Err(LabError::Command {
        command: shown,
        status: out.status.to_string(),
        stderr: tail(&String::from_utf8_lossy(&out.stderr), 800),
    })
}

/// A command line as the operator would type it (for error messages).
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `max` bytes of `s` (on a char boundary), trimmed.
pub fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// The end of a log file, or a note that it is empty/unreadable.
pub fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => tail(&s, 600),
        _ => "(log empty)".into(),
    }
}

/// What `stop_all` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The process id.
    pub pid: i32,
    /// What it was ("sshd 127.77.0.1", "ssh-agent", "process in host namespace", ...).
    pub what: String,
}

/// Sends SIGTERM to every target, waits up to `grace` for them to exit, then SIGKILLs the
/// rest and waits again. Children of this process are reaped so none stays a zombie.
pub fn stop_all(targets: &[(ProcRecord, String)], grace: Duration) -> Result<Vec<Stopped>> {
    let mut stopped = Vec::new();
    let mut live: Vec<&(ProcRecord, String)> = Vec::new();
    for t in targets {
        if t.0.alive() && kill(Pid::from_raw(t.0.pid), Signal::SIGTERM).is_ok() {
            stopped.push(Stopped {
                pid: t.0.pid,
                what: t.1.clone(),
            });
            live.push(t);
        }
        reap(t.0.pid);
    }
    for (round, signal) in [
        (grace, None),
        (Duration::from_secs(3), Some(Signal::SIGKILL)),
    ] {
        if let Some(sig) = signal {
            for t in &live {
                if t.0.alive() {
                    let _ = kill(Pid::from_raw(t.0.pid), sig);
                }
            }
        }
        let deadline = Instant::now() + round;
        loop {
            live.retain(|t| {
                reap(t.0.pid);
                t.0.alive()
            });
            if live.is_empty() || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(10));
        }
    }
    if !live.is_empty() {
        return Err(LabError::Survivors {
            pids: live.iter().map(|t| t.0.pid).collect(),
        });
    }
    Ok(stopped)
}

/// Reaps `pid` if it is our exited child; harmless otherwise (ECHILD).
fn reap(pid: i32) {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Every PID on the machine, with its command line split at NULs.
fn all_processes() -> Vec<(i32, Vec<String>)> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let argv = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push((pid, argv));
    }
    out
}

/// How bind mounts out of a lab directory appear in /proc/PID/mountinfo: the device of the
/// filesystem holding the directory and the directory's path inside that filesystem.
struct MountKey {
    dev: String,
    root: String,
}

/// Finds the filesystem that holds `dir` in our own mount table.
fn mount_key(dir: &Path) -> Option<MountKey> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = dir.to_str()?;
    let mut best: Option<(usize, MountKey)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(root), Some(point)) = (f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let inside = *point == "/" || dir == *point || dir.starts_with(&format!("{point}/"));
        if inside && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            let rel = if *point == "/" {
                dir
            } else {
                &dir[point.len()..]
            };
            let root = if *root == "/" {
                rel.to_string()
            } else {
                format!("{root}{rel}")
            };
            best = Some((
                point.len(),
                MountKey {
                    dev: dev.to_string(),
                    root,
                },
            ));
        }
    }
    best.map(|(_, k)| k)
}

/// Whether a mount table has a bind mount whose source lies in the lab directory.
fn mounts_from(info: &str, key: &MountKey) -> bool {
    let prefix = format!("{}/", key.root);
    info.lines().any(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        f.get(2) == Some(&key.dev.as_str())
            && f.get(3)
                .is_some_and(|r| *r == key.root || r.starts_with(&prefix))
    })
}

/// Every process that belongs to the lab in `dir`, found without the state file:
/// processes in a mount namespace holding bind mounts out of `dir` (sshds, their sessions,
/// Postfix and Dovecot) and lab daemons naming `dir` on their command line (ssh-agent).
/// Never this process or its ancestors.
pub fn lab_processes(dir: &Path) -> Vec<(ProcRecord, String)> {
    let me = std::process::id() as i32;
    let ancestors = ancestors(me);
    let key = mount_key(dir);
    let own_ns = fs::read_link("/proc/self/ns/mnt").ok();
    let dir_s = dir.to_string_lossy().into_owned();
    let dir_prefix = format!("{dir_s}/");
    // Reading mountinfo once per namespace keeps this fast with thousands of processes.
    let mut ns_has_lab: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for (pid, argv) in all_processes() {
        if pid == me || ancestors.contains(&pid) {
            continue;
        }
        let Some(rec) = ProcRecord::of(pid) else {
            continue;
        };
        let ns = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let in_lab_ns = match (&ns, &key) {
            (Some(ns), Some(key)) if Some(ns) != own_ns.as_ref() => {
                *ns_has_lab.entry(ns.clone()).or_insert_with(|| {
                    fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                        .map(|info| mounts_from(&info, key))
                        .unwrap_or(false)
                })
            }
            _ => false,
        };
        let name = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        let names_dir = argv.iter().any(|a| {
            a == &dir_s || a.starts_with(&dir_prefix) || a.contains(&format!("={dir_prefix}"))
        });
        // Only the lab's own daemons: an editor or a `cmfleet lab down` naming the
        // directory must survive.
        let lab_daemon = names_dir && matches!(name.as_str(), "ssh-agent" | "sshd" | "unshare");
        if in_lab_ns {
            out.push((rec, format!("{} (inside a lab host)", argv.join(" "))));
        } else if lab_daemon {
            out.push((rec, argv.join(" ")));
        }
    }
    out
}

/// Every process in the mount namespace of `pid` (a lab host's sshd): its sessions and
/// whatever they run. Empty if `pid` is gone.
pub fn namespace_processes(pid: i32) -> Vec<(ProcRecord, String)> {
    let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    all_processes()
        .into_iter()
        .filter(|(p, _)| {
            *p != me && fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|n| n == ns)
        })
        .filter_map(|(p, argv)| Some((ProcRecord::of(p)?, argv.join(" "))))
        .collect()
}

/// Whether any process on the machine still sees a mount out of the lab directory.
pub fn lab_mounts_remain(dir: &Path) -> bool {
    let Some(key) = mount_key(dir) else {
        return false;
    };
    all_processes().iter().any(|(pid, _)| {
        fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|i| mounts_from(&i, &key))
    })
}

/// PIDs of this process's parents up to init.
fn ancestors(mut pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    while pid > 1 {
        let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                let rest = t[t.rfind(')')? + 2..].to_string();
                rest.split_whitespace().nth(1)?.parse::<i32>().ok()
            })
        else {
            break;
        };
        out.push(ppid);
        pid = ppid;
    }
    out
}
