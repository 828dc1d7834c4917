//! A relay's chatmail.ini, written the way chatmail writes one: `cmdeploy init
//! --config PATH DOMAIN` from the checkout's venv (chatmaild's own ini template,
//! with its defaults for the checkout's version).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab::error::{LabError, Result};
use crate::lab::process::run;

/// Writes `lab_dir/relays/DOMAIN/chatmail.ini` for `domain`, replacing one that is
/// there. The lab's domains start with `_`: chatmail (1.10 and later, and 1.9.0 with
/// the lab's overlay) gives them a self-signed certificate, and no ACME is needed.
pub fn write_relay_ini(lab_dir: &Path, checkout: &Path, domain: &str) -> Result<PathBuf> {
    check_domain(domain)?;
    let dir = lab_dir.join("relays").join(domain);
    fs::create_dir_all(&dir).map_err(LabError::io(format!("create {}", dir.display())))?;
    let ini = dir.join("chatmail.ini");
    // `cmdeploy init` refuses an existing file and writes in place: write a fresh
    // name and rename, so the ini is never half there.
    let tmp = dir.join(".chatmail.ini.tmp");
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(LabError::io(format!("remove {}", tmp.display())))?;
    }
    run(Command::new(checkout.join("venv/bin/cmdeploy"))
        .current_dir(checkout)
        .arg("init")
        .arg("--config")
        .arg(&tmp)
        .arg(domain))?;
    let text = fs::read_to_string(&tmp).map_err(LabError::io(format!("read {}", tmp.display())))?;
    if let Some(lab) = lab_limits(&text) {
        fs::write(&tmp, lab).map_err(LabError::io(format!("write {}", tmp.display())))?;
    }
    fs::rename(&tmp, &ini).map_err(LabError::io(format!("rename {}", tmp.display())))?;
    Ok(ini)
}

/// The line of chatmail's ini template (1.12.0) that refuses new accounts above a
/// 1-minute load average of 5 (doveauth: "registration rejected: load avg").
const MAX_LOAD_DEFAULT: &str = "#max_load_1m = 5\n";

/// The ini with the load limit lifted, if its template has one. A container's load
/// average is the machine's: on a lab machine busy with other work, a relay would
/// refuse every new account. The limit stays a relay setting; only the lab's value
/// differs.
fn lab_limits(text: &str) -> Option<String> {
    text.contains(MAX_LOAD_DEFAULT).then(|| {
        text.replacen(
            MAX_LOAD_DEFAULT,
            "# cmfleet lab: the containers share the machine's load average.\nmax_load_1m = 1000\n",
            1,
        )
    })
}

/// A lab mail_domain: starts with `_` (self-signed TLS), and is a plain DNS name of
/// two labels or more, as it also names a directory.
fn check_domain(domain: &str) -> Result<()> {
    let plain = domain.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !domain.starts_with('_') || !domain.contains('.') || !plain {
        return Err(LabError::Options(format!(
            "the real-chatmail lab's mail_domain {domain:?} must be a DNS name starting with `_` (self-signed TLS, no ACME)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_limit_is_lifted_where_the_template_has_one() {
        let lab = lab_limits("[params]\n#max_load_1m = 5\n#x = 1\n").unwrap();
        assert!(lab.contains("\nmax_load_1m = 1000\n"), "{lab}");
        assert!(lab.ends_with("#x = 1\n"), "{lab}");
        assert_eq!(lab_limits("[params]\nmail_domain = _a.b\n"), None);
    }

    #[test]
    fn lab_domains_start_with_underscore_and_cannot_leave_the_relays_dir() {
        for good in ["_relay1.lab", "_a-b.example.test"] {
            assert!(check_domain(good).is_ok(), "{good}");
        }
        for bad in ["relay1.lab", "_../x", "_a/b", "_a..b", "_", "_a.", "_a b"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}
