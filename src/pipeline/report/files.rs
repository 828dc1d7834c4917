//! Files the reporter leaves behind: `failed.txt`, the `--report` JSON and the HTML
//! page, all written atomically (a crash never leaves half a list for `--limit
//! @FILE`), 0600 and with known secrets masked.

use std::path::{Path, PathBuf};

use super::summary::Summary;
use super::ReportError;
use crate::infra::state_dir::failed_list_path;

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

/// Writes `path` whole (see `crate::infra::atomic`), with known secrets masked: a journal
/// written before a secret was known (or by an older cmfleet) may still hold it,
/// so the file is cleaned on its way out too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let cleaned;
    let bytes = match std::str::from_utf8(bytes) {
        Ok(text) => {
            cleaned = crate::infra::redact::clean(text);
            cleaned.as_bytes()
        }
        Err(_) => bytes,
    };
    crate::infra::atomic::write(path, bytes).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}
