//! The JSON view: one object per event per line, for scripts (`--progress=json`).

use super::summary::Summary;
use super::{Out, ReportError};
use crate::model::events::Event;

/// Writes `{"ts_ms":...,"event":"...",...}`: the event as serde renders it, with the
/// time it was seen in front.
pub(crate) fn write_event(ev: &Event, now_ms: u64, out: &mut Out) {
    // Serialising straight to a string and splicing the timestamp in avoids building
    // a `serde_json::Value` per event.
    if let Ok(s) = serde_json::to_string(ev) {
        if let Some(rest) = s.strip_prefix('{') {
            out.line(&format!("{{\"ts_ms\":{now_ms},{rest}"));
        }
    }
}

/// The final report as one line: `{"event":"report", ...summary}`.
pub(crate) fn report_line(summary: &Summary) -> Result<String, ReportError> {
    let s = serde_json::to_string(summary).map_err(|source| ReportError::Json {
        what: "the report",
        source,
    })?;
    Ok(match s.strip_prefix('{') {
        Some(rest) => format!("{{\"event\":\"report\",{rest}"),
        None => s,
    })
}
