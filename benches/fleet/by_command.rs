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
    pub fn stop(self) -> Result<BTreeMap<String, f64>> {
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

/// dump-acct's records: `command|version|user|system|...`, times in ticks of 1/100 s.
fn per_command(dump: &str) -> BTreeMap<String, f64> {
    let mut cpu = BTreeMap::new();
    for line in dump.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(user), Some(sys)) = (f.first(), f.get(2), f.get(3)) else {
            continue;
        };
        let (Ok(user), Ok(sys)) = (user.parse::<f64>(), sys.parse::<f64>()) else {
            continue;
        };
        *cpu.entry(name.to_string()).or_insert(0.0) += (user + sys) / 100.0;
    }
    cpu
}

/// The `top` busiest commands, then the rest, on one line.
pub fn line(cpu: &BTreeMap<String, f64>, top: usize) -> String {
    let mut v: Vec<(&String, &f64)> = cpu.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let total: f64 = cpu.values().sum();
    let mut parts: Vec<String> = v
        .iter()
        .take(top)
        .map(|(n, s)| format!("{n} {s:.1}"))
        .collect();
    let rest: f64 = v.iter().skip(top).map(|(_, s)| **s).sum();
    parts.push(format!("other {rest:.1}"));
    format!("{total:.1} s: {}", parts.join(", "))
}
