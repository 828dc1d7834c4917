//! Which binaries a chatmail checkout's deploy downloads, and which versions: read
//! from the download URLs in its own source, so the lab builds what that version
//! wants (1.9.0: chatmail-turn v0.3; 1.12.0: v0.4) without a table to keep in step.

use std::fs;
use std::path::Path;

use crate::lab::error::{LabError, Result};

/// The binaries (and versions) a checkout's deploy would fetch from GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wanted {
    /// chatmail-turn's release tag (`v0.3`), if the deploy installs it.
    pub chatmail_turn: Option<String>,
    /// iroh-relay's version (`0.35.0`, without the `v`), if the deploy installs it.
    pub iroh_relay: Option<String>,
    /// Whether the deploy installs mtail (1.9.0 does even without `mtail_address`).
    pub mtail: bool,
}

const TURN_URL: &str = "chatmail-turn/releases/download/";
const IROH_URL: &str = "n0-computer/iroh/releases/download/v";
const MTAIL_URL: &str = "google/mtail/releases/download/";

/// Reads the deploy's Python source under `checkout/cmdeploy/src/cmdeploy`.
pub fn wanted(checkout: &Path) -> Result<Wanted> {
    let mut sources = Vec::new();
    python_files(&checkout.join("cmdeploy/src/cmdeploy"), &mut sources)?;
    let mut w = Wanted::default();
    for text in &sources {
        merge(
            &mut w.chatmail_turn,
            versions_after(text, TURN_URL),
            "chatmail-turn",
        )?;
        merge(
            &mut w.iroh_relay,
            versions_after(text, IROH_URL),
            "iroh-relay",
        )?;
        w.mtail |= text.contains(MTAIL_URL);
    }
    Ok(w)
}

/// Every `VERSION` in `...{prefix}VERSION/...`.
fn versions_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            rest.find('/').map(|end| &rest[..end])
        })
        .collect()
}

/// One version per binary: two different ones (x86_64 and aarch64 differ?) is a
/// checkout the lab does not understand.
fn merge(slot: &mut Option<String>, found: Vec<&str>, name: &str) -> Result<()> {
    for v in found {
        match slot {
            Some(have) if have != v => {
                return Err(LabError::Options(format!(
                    "the chatmail checkout downloads two versions of {name}: {have} and {v}"
                )))
            }
            _ => *slot = Some(v.to_string()),
        }
    }
    Ok(())
}

/// The text of every `.py` file under `dir` except the tests.
fn python_files(dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(LabError::io(format!("read {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(LabError::io(format!("read {}", dir.display())))?
            .path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                python_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "py") {
            out.push(
                fs::read_to_string(&path)
                    .map_err(LabError::io(format!("read {}", path.display())))?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_download_urls() {
        let text = r#"
            "https://github.com/chatmail/chatmail-turn/releases/download/v0.3/chatmail-turn-x86_64-linux",
            "https://github.com/chatmail/chatmail-turn/releases/download/v0.3/chatmail-turn-aarch64-linux",
            "https://github.com/n0-computer/iroh/releases/download/v0.35.0/iroh-relay-v0.35.0-x86_64-unknown-linux-musl.tar.gz",
        "#;
        assert_eq!(versions_after(text, TURN_URL), ["v0.3", "v0.3"]);
        assert_eq!(versions_after(text, IROH_URL), ["0.35.0"]);
        let mut slot = None;
        merge(&mut slot, versions_after(text, TURN_URL), "t").unwrap();
        assert_eq!(slot.as_deref(), Some("v0.3"));
        assert!(merge(&mut slot, vec!["v0.4"], "t").is_err());
    }
}
