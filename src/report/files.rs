//! Files the reporter leaves behind: `failed.txt`, the `--report` JSON and the HTML
//! page, all written atomically (a crash never leaves half a list for `--limit
//! @FILE`), 0600 and with known secrets masked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::summary::Summary;
use super::ReportError;

/// `<state_dir>/failed.txt`: the relays to retry with `--limit @FILE`.
pub fn failed_list_path(state_dir: &Path) -> PathBuf {
    state_dir.join("failed.txt")
}

/// `<state_dir>/logs/<relay>.log`: everything one relay's commands printed.
pub fn log_path(state_dir: &Path, relay: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{relay}.log"))
}

/// Writes `failed.txt` (one mail_domain a line), empty when nothing failed so a stale
/// list from an earlier run cannot be retried by mistake. Returns its path.
pub fn write_failed_list(state_dir: &Path, summary: &Summary) -> Result<PathBuf, ReportError> {
    let path = failed_list_path(state_dir);
    let mut text = String::new();
    for r in summary.failed_relays() {
        text.push_str(&r.relay);
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes the `--report FILE.json` (schema: docs/report-schema.md).
pub fn write_json_report(path: &Path, summary: &Summary) -> Result<(), ReportError> {
    let mut json = serde_json::to_vec_pretty(summary).map_err(|source| ReportError::Json {
        what: "the report",
        source,
    })?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Temp file in the same directory, fsync, rename, fsync of the directory: readers
/// see the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A journal written before a secret was known (or by an older cmfleet) may
    // still hold it: the file is cleaned on its way out too.
    let cleaned;
    let bytes = match std::str::from_utf8(bytes) {
        Ok(text) => {
            cleaned = crate::redact::clean(text);
            cleaned.as_bytes()
        }
        Err(_) => bytes,
    };
    let result = (|| {
        // A litter temp file of a crashed run may be another user's or too open:
        // the report is created fresh, 0600 (it names hosts, errors, command output).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is litter, not a lie.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}
