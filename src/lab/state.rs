//! The lab's record of itself (`DIR/lab.json`): what it started, so `down` and `status`
//! work from any process, also after a crash.

use std::fs;
use std::path::{Path, PathBuf};

use super::addr::Subnet;
use super::data::DataOptions;
use super::error::{LabError, Result};
use super::host::LabHost;
use super::process::ProcRecord;
use super::users::LabUsers;

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "lab.json";

/// Everything the lab needs to find again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabState {
    /// Bumped when the shape changes.
    pub version: u32,
    /// The lab directory (absolute).
    pub dir: PathBuf,
    /// The lab's /24.
    pub subnet: Subnet,
    /// The relay users' ids on every host.
    pub users: LabUsers,
    /// The data OLD hosts got.
    pub data: DataOptions,
    /// The lab's ssh-agent.
    pub agent: Option<ProcRecord>,
    /// Relays' mail domains, index i-1 for relay i.
    pub domains: Vec<String>,
    /// Every host, OLD and NEW of relay 1, then relay 2, ...
    pub hosts: Vec<LabHost>,
}

impl LabState {
    /// Reads `DIR/lab.json`.
    pub fn load(dir: &Path) -> Result<LabState> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NoLab {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(LabError::io(format!("read {}", path.display()))(e)),
        };
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    /// Writes `DIR/lab.json` atomically (temp file, fsync, rename): a crash mid-write
    /// must not lose the PIDs `down` needs.
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        crate::infra::atomic::write(&path, text.as_bytes())
            .map_err(LabError::io(format!("write {}", path.display())))
    }
}
