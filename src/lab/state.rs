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

/// A real lab's record (`lab::real`), named here beside the others so that each kind's
/// `lab up` can tell the other kinds' directories.
pub const REAL_STATE_FILE: &str = "real-lab.json";

/// A real-chatmail lab's record (`lab::real::fleet`).
pub const CHATMAIL_STATE_FILE: &str = "chatmail-lab.json";

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
        load_record(dir, STATE_FILE)
    }

    /// Writes `DIR/lab.json` atomically (temp file, fsync, rename): a crash mid-write
    /// must not lose the PIDs `down` needs.
    pub fn save(&self) -> Result<()> {
        save_record(&self.dir, STATE_FILE, self)
    }
}

/// Reads a lab's record `DIR/FILE` (JSON); a missing one is "no lab here".
pub(crate) fn load_record<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
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

/// Writes a lab's record `DIR/FILE` atomically: a crash mid-write must not lose the
/// PIDs `down` needs.
pub(crate) fn save_record<T: serde::Serialize>(dir: &Path, file: &str, record: &T) -> Result<()> {
    let path = dir.join(file);
    let text = serde_json::to_string_pretty(record).map_err(|source| LabError::State {
        path: path.clone(),
        source,
    })?;
    crate::infra::atomic::write(&path, text.as_bytes())
        .map_err(LabError::io(format!("write {}", path.display())))
}

/// Every kind of lab by the record it keeps in its directory: `lab up` into one kind's
/// directory names the other kind instead of calling it "not a lab".
const LAB_KINDS: [(&str, &str); 3] = [
    (STATE_FILE, "loopback lab"),
    (REAL_STATE_FILE, "real lab"),
    (CHATMAIL_STATE_FILE, "real-chatmail lab"),
];

/// Empties `dir` for a new lab whose record is `state_file`: a stopped lab there is
/// taken `down` and replaced; a running one (`running`), or a directory that holds
/// something else, is refused.
pub(crate) fn clear_lab_dir<D>(
    dir: &Path,
    state_file: &'static str,
    running: impl FnOnce(&Path) -> bool,
    down: impl FnOnce(&Path) -> Result<D>,
) -> Result<()> {
    if dir.join(state_file).exists() {
        if running(dir) {
            return Err(LabError::AlreadyRunning {
                dir: dir.to_path_buf(),
            });
        }
        down(dir)?;
        fs::remove_dir_all(dir).map_err(LabError::io(format!(
            "remove the old lab {}",
            dir.display()
        )))?;
    } else if dir.exists() {
        if let Some((file, kind)) = LAB_KINDS
            .iter()
            .find(|(file, _)| *file != state_file && dir.join(file).exists())
        {
            return Err(LabError::OtherKindOfLab {
                dir: dir.to_path_buf(),
                kind,
                file,
            });
        }
        let empty = fs::read_dir(dir)
            .map_err(LabError::io(format!("list {}", dir.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(LabError::NotALabDir {
                dir: dir.to_path_buf(),
                file: state_file,
            });
        }
    }
    fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_another_kind_of_lab_is_named_not_called_not_a_lab() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(CHATMAIL_STATE_FILE), "{}").unwrap();
        let err = clear_lab_dir(&dir, STATE_FILE, |_| false, |_| Ok(())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("holds a real-chatmail lab (chatmail-lab.json in it)")
                && text.contains("cmfleet lab down --purge --dir"),
            "{text}"
        );
        assert!(dir.join("chatmail-lab.json").exists(), "nothing is removed");

        fs::remove_file(dir.join("chatmail-lab.json")).unwrap();
        fs::write(dir.join("notes"), "mine").unwrap();
        let text = clear_lab_dir(&dir, CHATMAIL_STATE_FILE, |_| false, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(text.contains("no chatmail-lab.json in it"), "{text}");
    }
}
