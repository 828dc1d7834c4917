//! Machine-wide locks of real labs: `flock` on a file in the rootfs cache, which
//! outlives every lab (so the lock files are not traces a lab leaves behind). Parallel
//! labs wait for one rootfs build and never turn IP forwarding on and off under each
//! other.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::super::error::{LabError, Result};

/// Holds an exclusive lock on `path` (created if missing) until dropped; waits for it.
pub fn exclusive(path: &Path) -> Result<Flock<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LabError::io(format!("open {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| LabError::io(format!("lock {}", path.display()))(e.into()))
}
