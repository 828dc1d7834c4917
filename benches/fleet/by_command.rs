//! `--by-command`: where the machine's CPU goes during a phase, by command name.
//!
//! In the lab the controller and every host share the machine's cores, so a phase's
//! wall time follows the machine's busy CPU; the controller's own CPU (its process
//! tree) misses the hosts' sshd, rsync, find and sort. BSD process accounting records
//! every process of the machine when it exits, with its user and system time.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Process accounting switched on into one file until `stop`.
pub struct Recording {
    file: PathBuf,
}

impl Recording {
    pub fn start(file: &Path) -> Result<Recording> {
        fs::write(file, b"").with_context(|| format!("create {}", file.display()))?;
        run(Command::new("accton").arg(file))?;
        Ok(Recording {
            file: file.to_path_buf(),
        })
    }

    /// Switches accounting off and returns CPU seconds per command name.
    pub fn stop(self) -> Result<BTreeMap<String, Usage>> {
        // The hosts' sshd end a moment after the controller's ssh.
        std::thread::sleep(std::time::Duration::from_millis(500));
        run(Command::new("accton").arg("off"))?;
        let out = Command::new("dump-acct")
            .arg(&self.file)
            .output()
            .context("run dump-acct (Debian's acct package)")?;
        if !out.status.success() {
            bail!("dump-acct {} failed", self.file.display());
        }
        Ok(per_command(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// A phase that failed (`?` past `stop`) must not leave the whole machine's
/// accounting on; switching it off twice is harmless.
impl Drop for Recording {
    fn drop(&mut self) {
        let _ = Command::new("accton").arg("off").output();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("run {cmd:?} (Debian's acct package)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// CPU seconds and process count of one command name.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub cpu: f64,
    pub processes: usize,
}

/// dump-acct's records: `command|version|user|system|...`, times in ticks of 1/100 s.
fn per_command(dump: &str) -> BTreeMap<String, Usage> {
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for line in dump.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(user), Some(sys)) = (f.first(), f.get(2), f.get(3)) else {
            continue;
        };
        let (Ok(user), Ok(sys)) = (user.parse::<f64>(), sys.parse::<f64>()) else {
            continue;
        };
        let u = usage.entry(name.to_string()).or_default();
        u.cpu += (user + sys) / 100.0;
        u.processes += 1;
    }
    usage
}

/// The `top` busiest commands and the rest, then the commands that started the most
/// processes: accounting rounds each process down to whole ticks, so many short
/// processes (a `chown` per file) show in the count, not in the CPU.
pub fn line(usage: &BTreeMap<String, Usage>, top: usize) -> String {
    let mut v: Vec<(&String, &Usage)> = usage.iter().collect();
    v.sort_by(|a, b| b.1.cpu.total_cmp(&a.1.cpu));
    let total: f64 = usage.values().map(|u| u.cpu).sum();
    let processes: usize = usage.values().map(|u| u.processes).sum();
    let mut parts: Vec<String> = v
        .iter()
        .take(top)
        .map(|(n, u)| format!("{n} {:.1}", u.cpu))
        .collect();
    let rest: f64 = v.iter().skip(top).map(|(_, u)| u.cpu).sum();
    parts.push(format!("other {rest:.1}"));
    v.sort_by_key(|(_, u)| std::cmp::Reverse(u.processes));
    let most: Vec<String> = v
        .iter()
        .take(top / 2)
        .map(|(n, u)| format!("{n} {}", u.processes))
        .collect();
    format!(
        "{total:.1} s: {}; {processes} processes, most: {}",
        parts.join(", "),
        most.join(", ")
    )
}
