//! A real lab host's cgroup. systemd-nspawn with `--keep-unit` (no systemd on the
//! machine to ask for a scope: PID 1 here is not systemd) runs the container in the
//! cgroup it was started in, and creates its `supervisor` and `payload` groups below it.
//! Two containers started from one cgroup would share it, so each gets a directory of
//! its own, `cmfleetX-N`, at the top of every hierarchy nspawn uses, made before it
//! starts. The same directory is how `down` finds every process of a container (also
//! one whose nspawn died) and kills them all.
//!
//! Which hierarchies: on a cgroup v1 "hybrid" machine (this kind of machine) systemd's
//! named hierarchy `/sys/fs/cgroup/systemd` and the cgroup2 one at
//! `/sys/fs/cgroup/unified`; on a pure cgroup2 machine `/sys/fs/cgroup` alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::super::error::{LabError, Result};

/// The cgroup hierarchies nspawn uses here (empty when none is mounted as expected).
pub fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    ["systemd", "unified"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// The cgroup directories of one host (one per hierarchy).
pub fn dirs(id: &str) -> Vec<PathBuf> {
    hierarchies().into_iter().map(|h| h.join(id)).collect()
}

/// Creates the host's cgroup directories (an existing one is a leftover of a crashed
/// lab on the same network: `down` removes those first, so here it is an error).
pub fn create(id: &str) -> Result<Vec<PathBuf>> {
    let dirs = dirs(id);
    for d in &dirs {
        fs::create_dir(d).map_err(LabError::io(format!("create the cgroup {}", d.display())))?;
    }
    Ok(dirs)
}

/// Every process in the host's cgroups, at any depth.
pub fn processes(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for d in dirs(id) {
        collect(&d, &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&e.path(), pids);
            }
        }
    }
}

/// Kills every process of the host (SIGKILL, through `cgroup.kill` where the kernel has
/// it, by PID too in case it does not) and waits up to `wait` for them to be gone.
/// Returns the PIDs that survived.
pub fn kill_all(id: &str, wait: Duration) -> Vec<i32> {
    let deadline = Instant::now() + wait;
    loop {
        let pids = processes(id);
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        for d in dirs(id) {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        sleep(Duration::from_millis(50));
    }
}

/// Removes the host's cgroup directories, deepest first (the container's systemd made
/// a tree below them). Only empty cgroups can go: call after `kill_all`.
pub fn remove(id: &str) -> Result<()> {
    for d in dirs(id) {
        if d.exists() {
            remove_tree(&d)?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(LabError::io(format!("list {}", dir.display())))?;
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    // A cgroup's files are not files: rmdir removes the directory with them.
    fs::remove_dir(dir).map_err(LabError::io(format!("remove the cgroup {}", dir.display())))
}

/// Every cgroup directory of network `prefix` (`cmfleetX-`) on the machine: what `down`
/// must remove, also for hosts the state file does not know of.
pub fn ids_with_prefix(prefix: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for h in hierarchies() {
        let Ok(rd) = fs::read_dir(&h) else { continue };
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if name.starts_with(prefix) && !ids.iter().any(|i| i == name) {
                    ids.push(name.to_string());
                }
            }
        }
    }
    ids
}
