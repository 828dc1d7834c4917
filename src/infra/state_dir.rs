//! What cmfleet keeps in its state directory, and where: one place names every path.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Creates `dir` (and its parents) 0700: logs and the journal are nobody else's
/// business.
pub fn ensure(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `<state_dir>/logs`: one log per relay.
pub fn logs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs")
}

/// `<state_dir>/logs/<relay>.log`: everything one relay's commands printed.
pub fn log_path(state_dir: &Path, relay: &str) -> PathBuf {
    logs_dir(state_dir).join(format!("{relay}.log"))
}

/// `<state_dir>/failed.txt`: the relays to retry with `--limit @FILE`.
pub fn failed_list_path(state_dir: &Path) -> PathBuf {
    state_dir.join("failed.txt")
}

/// `<state_dir>/cutover/<relay>.json`: what OLD served at the cutover (step 4), for
/// `verify`.
pub fn cutover_path(state_dir: &Path, relay: &str) -> PathBuf {
    state_dir.join("cutover").join(format!("{relay}.json"))
}
