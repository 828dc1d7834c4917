//! The relay users a lab host needs (`vmail`, `opendkim`) without touching the machine:
//! each host gets its own /etc/passwd and /etc/group, copies of the machine's plus these.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::error::{LabError, Result};

/// The numeric ids the lab gives the relay users (the same on every host of a lab, as a
/// migration between two freshly installed relays would usually find them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabUsers {
    /// uid of `vmail` (owns /home/vmail).
    pub vmail_uid: u32,
    /// gid of group `vmail`.
    pub vmail_gid: u32,
    /// uid of `opendkim` (owns /etc/dkimkeys).
    pub opendkim_uid: u32,
    /// gid of group `opendkim`.
    pub opendkim_gid: u32,
    /// uid of `postfix` (owns the queue), from the machine's postfix package.
    #[serde(default)]
    pub postfix_uid: u32,
    /// gid of group `postfix`.
    #[serde(default)]
    pub postfix_gid: u32,
    /// gid of group `postdrop` (public/ and maildrop/ of the queue).
    #[serde(default)]
    pub postdrop_gid: u32,
}

/// The machine's user and group tables.
pub struct MachineTables {
    passwd: String,
    group: String,
}

impl MachineTables {
    /// Reads /etc/passwd and /etc/group.
    pub fn read() -> Result<MachineTables> {
        Ok(MachineTables {
            passwd: fs::read_to_string("/etc/passwd").map_err(LabError::io("read /etc/passwd"))?,
            group: fs::read_to_string("/etc/group").map_err(LabError::io("read /etc/group"))?,
        })
    }

    /// Picks ids: the machine's own if it has the users, else the first free ones from 5000.
    pub fn choose_ids(&self) -> LabUsers {
        let ids = |table: &str, col: usize| -> BTreeSet<u32> {
            table
                .lines()
                .filter_map(|l| l.split(':').nth(col)?.parse().ok())
                .collect()
        };
        let mut used: BTreeSet<u32> = ids(&self.passwd, 2);
        used.extend(ids(&self.group, 2));
        let mut next = 5000;
        let mut fresh = || {
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            next
        };
        let find = |table: &str, name: &str, col: usize| -> Option<u32> {
            table.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| f.get(col)?.parse().ok())?
            })
        };
        let vmail_uid = find(&self.passwd, "vmail", 2).unwrap_or_else(&mut fresh);
        let vmail_gid = find(&self.group, "vmail", 2).unwrap_or_else(&mut fresh);
        let opendkim_uid = find(&self.passwd, "opendkim", 2).unwrap_or_else(&mut fresh);
        let opendkim_gid = find(&self.group, "opendkim", 2).unwrap_or_else(&mut fresh);
        // Postfix's users come with its package: the hosts' tables copy the machine's,
        // so they exist wherever `Lab::preflight` passed (0 only in a table without them).
        LabUsers {
            vmail_uid,
            vmail_gid,
            opendkim_uid,
            opendkim_gid,
            postfix_uid: find(&self.passwd, "postfix", 2).unwrap_or(0),
            postfix_gid: find(&self.group, "postfix", 2).unwrap_or(0),
            postdrop_gid: find(&self.group, "postdrop", 2).unwrap_or(0),
        }
    }

    /// Whether the machine has the users and groups the mail system runs as (the
    /// postfix and dovecot packages create them).
    pub fn missing_mail_users(&self) -> Vec<&'static str> {
        let has =
            |table: &str, name: &str| table.lines().any(|l| l.starts_with(&format!("{name}:")));
        let mut out = Vec::new();
        for name in ["postfix", "dovecot", "dovenull"] {
            if !has(&self.passwd, name) {
                out.push(name);
            }
        }
        if !has(&self.group, "postdrop") {
            out.push("postdrop");
        }
        out
    }

    /// Writes a host's passwd and group: the machine's lines plus the relay users.
    pub fn write_host_tables(&self, ids: &LabUsers, passwd: &Path, group: &Path) -> Result<()> {
        let mut p = self.passwd.clone();
        let mut g = self.group.clone();
        for text in [&mut p, &mut g] {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
        }
        let has =
            |table: &str, name: &str| table.lines().any(|l| l.starts_with(&format!("{name}:")));
        if !has(&p, "vmail") {
            p += &format!(
                "vmail:x:{}:{}:chatmail mailboxes:/home/vmail:/usr/sbin/nologin\n",
                ids.vmail_uid, ids.vmail_gid
            );
        }
        if !has(&p, "opendkim") {
            p += &format!(
                "opendkim:x:{}:{}::/run/opendkim:/usr/sbin/nologin\n",
                ids.opendkim_uid, ids.opendkim_gid
            );
        }
        if !has(&g, "vmail") {
            g += &format!("vmail:x:{}:\n", ids.vmail_gid);
        }
        if !has(&g, "opendkim") {
            g += &format!("opendkim:x:{}:\n", ids.opendkim_gid);
        }
        fs::write(passwd, p).map_err(LabError::io(format!("write {}", passwd.display())))?;
        fs::write(group, g).map_err(LabError::io(format!("write {}", group.display())))?;
        Ok(())
    }
}
