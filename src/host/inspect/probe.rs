//! What cmfleet needs to know about one host, gathered by one remote command.
//!
//! One script per host (not one ssh round trip per fact): the output is `key=value`
//! lines, parsed leniently so a missing fact becomes "unknown", never a crash.

use std::collections::HashMap;

use crate::host::catalogue::{LEGACY_PASSDB, MAIL_DIR};

/// Facts about a host, as its shell reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The remote user's uid (migrations need root).
    pub uid: Option<u32>,
    /// `ID` and `VERSION_ID` of /etc/os-release, e.g. ("debian", "12").
    pub os: Option<(String, String)>,
    pub has_rsync: bool,
    pub has_tar: bool,
    /// Bytes available where the mailboxes go (/home/vmail, else /home).
    pub avail: Option<u64>,
    /// Bytes the mailbox tree occupies now (0 when absent).
    pub mail_used: Option<u64>,
    /// Files and directories in the mailbox tree (0 when absent).
    pub mail_entries: Option<u64>,
    /// The legacy password database exists.
    pub passdb: bool,
    /// The mailbox tree is absent or empty (a NEW that was never copied to).
    pub mail_empty: bool,
    /// The entries directly under the mailbox tree: the mail domains it holds mail
    /// for (a chatmail relay has one, its own).
    pub mail_names: Vec<String>,
}

/// The probe run on every host. /etc/os-release is read in a subshell: its
/// variables (`NAME`, `ID`, ...) stay out of the rest of the probe.
pub fn script() -> String {
    format!(
        "echo \"uid=$(id -u)\"\n\
         # shellcheck disable=SC1091 # /etc/os-release is the host's own (shell assignments, made to be sourced: os-release(5)), not a file cmfleet has\n\
         if [ -r /etc/os-release ]; then (. /etc/os-release; echo \"os=${{ID:-?}} ${{VERSION_ID:-?}}\"); fi\n\
         for t in rsync tar; do if command -v $t >/dev/null 2>&1; then echo has_$t=1; else echo has_$t=0; fi; done; \
         d=/home/vmail; [ -d \"$d\" ] || d=/home; \
         echo \"avail=$(df -P -B1 \"$d\" | awk 'NR==2 {{print $4}}')\"; \
         if [ -d {MAIL_DIR} ]; then echo \"mail_used=$(du -sb {MAIL_DIR} | cut -f1)\"; \
           echo \"mail_entries=$(du -s --inodes {MAIL_DIR} | cut -f1)\"; else echo mail_used=0; fi; \
         if [ -e {LEGACY_PASSDB} ]; then echo passdb=1; else echo passdb=0; fi; \
         if [ -n \"$(ls -A {MAIL_DIR} 2>/dev/null)\" ]; then echo mail_empty=0; else echo mail_empty=1; fi; \
         if [ -d {MAIL_DIR} ]; then find {MAIL_DIR} -mindepth 1 -maxdepth 1 -printf 'mail_name=%f\\n'; fi"
    )
}

/// Parses the probe's output.
pub fn parse(out: &str) -> HostFacts {
    let kv: HashMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
    HostFacts {
        uid: kv.get("uid").and_then(|v| v.parse().ok()),
        os: kv.get("os").and_then(|v| {
            let (id, version) = v.split_once(' ')?;
            Some((id.to_string(), version.trim_matches('"').to_string()))
        }),
        has_rsync: kv.get("has_rsync") == Some(&"1"),
        has_tar: kv.get("has_tar") == Some(&"1"),
        avail: num("avail"),
        mail_used: num("mail_used"),
        mail_entries: num("mail_entries"),
        passdb: kv.get("passdb") == Some(&"1"),
        mail_empty: kv.get("mail_empty") == Some(&"1"),
        mail_names: out
            .lines()
            .filter_map(|l| l.strip_prefix("mail_name="))
            .map(str::to_string)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_probe() {
        let f = parse(
            "uid=0\nos=debian 12\nhas_rsync=1\nhas_tar=0\navail=1000\nmail_used=10\nmail_entries=3\npassdb=0\nmail_empty=1\n",
        );
        assert_eq!(f.uid, Some(0));
        assert_eq!(f.os, Some(("debian".into(), "12".into())));
        assert!(f.has_rsync && !f.has_tar && !f.passdb && f.mail_empty);
        assert_eq!((f.avail, f.mail_used), (Some(1000), Some(10)));
        assert_eq!(f.mail_entries, Some(3));
        assert!(f.mail_names.is_empty());
        let f = parse("mail_name=c1.example.org\nmail_name=c2.example.org\n");
        assert_eq!(f.mail_names, ["c1.example.org", "c2.example.org"]);
    }

    #[test]
    fn missing_facts_are_unknown() {
        let f = parse("garbage\n");
        assert_eq!(f, HostFacts::default());
    }
}
