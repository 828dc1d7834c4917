//! `verify`'s data check: does NEW hold every message, account and DKIM key of OLD?
//!
//! Both hosts send the proof's listing (complete and self-vouching, see
//! `proof`), but NEW is live by now, so the comparison is the one a user
//! would make, not step 4's exact one: NEW may have more (mail delivered since step
//! 6) and may have renamed messages (a client read or flagged them), so messages
//! are compared by mailbox and maildir unique name; the Postfix queue drains and
//! acme renews, so neither is compared. What the migration sets is checked on NEW:
//! the mailboxes owned by vmail, the DKIM keys by the owner step 2 gave them.

use std::collections::BTreeMap;
use std::path::Path;

use super::clients;
use crate::host::inspect::{quiet_sink, ssh_host, Finding};
use crate::host::proof::{self, Cutover, Incomplete, Listing, Owners, Record};
use crate::host::remote::{CommandKind, HostConn, LineSink, SshPool, Stdout};
use crate::model::inventory::Relay;

/// Differences named in a finding; the rest are counted.
const SHOWN: usize = 5;

const CHECK: &str = "mailboxes";

/// The data findings of one relay: NEW holds OLD's mail (`mailboxes`), clients see
/// the same mailboxes (`client view`), OLD's queue drains from NEW (`queue`).
pub(super) async fn findings(ssh: &SshPool, relay: &Relay, state_dir: &Path) -> Vec<Finding> {
    let ((f_old, old), (f_new, new)) = tokio::join!(
        ssh_host(ssh, relay, &relay.old, CHECK, || {}),
        ssh_host(ssh, relay, &relay.new, CHECK, || {})
    );
    let (Some(old), Some(new)) = (old, new) else {
        let mut f = if f_old.status == crate::host::inspect::Status::Fail {
            f_old
        } else {
            f_new
        };
        f.reason = format!("cannot compare: {}", f.reason);
        return vec![f];
    };
    let sink = quiet_sink(relay);
    let uids = clients::message_uids_script();
    let (a, b, c, d) = tokio::join!(
        listing(ssh, &old, "old", &sink),
        listing(ssh, &new, "new", &sink),
        records(ssh, &old, &uids, &sink),
        records(ssh, &new, &uids, &sink),
    );
    let (old_listing, new_listing, old_uids, new_uids) = match (a, b, c, d) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
            let reason = format!("cannot list the mailboxes: {e}");
            return vec![Finding::fail(CHECK, reason)];
        }
    };
    let on_new = tree(&new_listing.1).messages;
    let renumbered = clients::compare_message_uids(
        &clients::parse_message_uids(&old_uids),
        &clients::parse_message_uids(&new_uids),
        |key| on_new.contains_key(key),
    );
    let cutover = match Cutover::load(state_dir, &relay.name) {
        Ok(c) => c,
        Err(e) => return vec![Finding::fail("client view", e.to_string())],
    };
    let (reference, source) = match &cutover {
        Some(c) => (c.mailboxes.clone(), "step 4's cutover record"),
        None => (clients::uidlists(&old_listing.1), "OLD's uidlists now"),
    };
    vec![
        mail_finding(&old_listing.1, &new_listing),
        clients::uids_finding(&reference, source, &new_listing.1, renumbered),
        clients::queue_finding(ssh, relay, &new, cutover.as_ref()).await,
    ]
}

fn mail_finding(old: &[Record], new: &(Owners, Vec<Record>)) -> Finding {
    let d = compare(old, &new.1, &new.0);
    if d.problems.is_empty() {
        Finding::pass(
            CHECK,
            format!(
                "NEW holds all {} message(s) and {} account(s) of OLD ({} delivered to NEW since)",
                d.messages, d.accounts, d.extra_on_new
            ),
        )
    } else {
        Finding::fail(
            CHECK,
            format!("NEW differs from OLD: {}", d.problems.join("; ")),
        )
    }
}

/// One host's whole listing (verify runs after the downtime: holding it is fine).
async fn listing(
    ssh: &SshPool,
    conn: &HostConn,
    side: &'static str,
    sink: &LineSink,
) -> Result<(Owners, Vec<Record>), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let to = Stdout::Records { to: tx, end: 0 };
    let script = proof::listing();
    let (ran, read) = tokio::join!(
        ssh.run(conn, &script, false, CommandKind::Plain, sink, to),
        collect(side, rx)
    );
    ran.map_err(|e| e.message)?;
    read.map_err(|e| e.to_string())
}

/// All of a command's NUL-ended records (verify runs after the downtime: holding
/// them is fine).
async fn records(
    ssh: &SshPool,
    conn: &HostConn,
    script: &str,
    sink: &LineSink,
) -> Result<Vec<Vec<u8>>, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(128);
    let to = Stdout::Records { to: tx, end: 0 };
    let read = async {
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(r);
        }
        all
    };
    let (ran, all) = tokio::join!(
        ssh.run(conn, script, false, CommandKind::Plain, sink, to),
        read
    );
    ran.map_err(|e| e.message)?;
    Ok(all)
}

async fn collect(
    side: &'static str,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(Owners, Vec<Record>), Incomplete> {
    let (mut listing, owners) = Listing::open(side, rx).await?;
    let mut records = Vec::new();
    while let Some(r) = listing.next().await? {
        records.push(r);
    }
    Ok((owners, records))
}

/// What the comparison found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailboxDiff {
    /// Messages and accounts on OLD.
    pub messages: usize,
    pub accounts: usize,
    /// Messages only on NEW (delivered after the cutover).
    pub extra_on_new: usize,
    /// Missing messages, accounts or DKIM keys; other sizes or contents; owners.
    pub problems: Vec<String>,
}

/// A message's identity: its mailbox directory and maildir unique name (the file name
/// before `:2,flags`), so moves from new/ to cur/ and flag changes are not differences.
fn message_key(path: &str) -> Option<(String, String)> {
    let (dir, file) = path.rsplit_once('/')?;
    let (mailbox, sub) = dir.rsplit_once('/')?;
    if sub != "new" && sub != "cur" {
        return None;
    }
    let unique = file.split(':').next().unwrap_or(file);
    Some((mailbox.to_string(), unique.to_string()))
}

/// What one host holds, as verify compares it.
#[derive(Default)]
struct Tree {
    /// Messages by key, with their size.
    messages: BTreeMap<(String, String), u64>,
    /// Mailboxes with a `password` file.
    accounts: Vec<String>,
    /// DKIM files and the digest of their content.
    dkim: BTreeMap<String, Vec<u8>>,
    /// Mailbox entries (and DKIM entries) and their owners (`uid:gid`).
    owners: Vec<(u8, String, String)>,
}

fn tree(records: &[Record]) -> Tree {
    let mut t = Tree::default();
    for r in records {
        let path = r.shown_path();
        let [kind, size, third, owner] = &r.fields;
        let owner = String::from_utf8_lossy(owner).into_owned();
        match r.section {
            b'M' => {
                t.owners.push((b'M', path.clone(), owner));
                if kind != b"f" {
                    continue;
                }
                if let Some(account) = path.strip_suffix("/password") {
                    t.accounts.push(account.to_string());
                } else if let Some(key) = message_key(&path) {
                    let size = String::from_utf8_lossy(size).parse().unwrap_or(0);
                    t.messages.insert(key, size);
                }
            }
            b'S' if path.starts_with("/etc/dkimkeys") => t.owners.push((b'S', path, owner)),
            b'D' if path.starts_with("/etc/dkimkeys") => {
                t.dkim.insert(path, third.clone());
            }
            _ => {}
        }
    }
    t
}

fn listed(what: &str, items: &[String]) -> String {
    let mut s = format!(
        "{} {what}: {}",
        items.len(),
        items
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if items.len() > SHOWN {
        s.push_str(&format!(", ... ({} more)", items.len() - SHOWN));
    }
    s
}

/// Compares OLD's records (the reference) with NEW's; `owners` is NEW's header.
pub fn compare(old: &[Record], new: &[Record], owners: &Owners) -> MailboxDiff {
    let (old, new) = (tree(old), tree(new));
    let mut missing = Vec::new();
    let mut resized = Vec::new();
    for (key, size) in &old.messages {
        match new.messages.get(key) {
            None => missing.push(format!("{}/{}", key.0, key.1)),
            Some(s) if s != size => {
                resized.push(format!("{}/{} (OLD {size} B, NEW {s} B)", key.0, key.1))
            }
            Some(_) => {}
        }
    }
    let lost_accounts: Vec<String> = old
        .accounts
        .iter()
        .filter(|a| !new.accounts.contains(a))
        .cloned()
        .collect();
    let dkim: Vec<String> = old
        .dkim
        .iter()
        .filter(|(path, sum)| new.dkim.get(*path) != Some(sum))
        .map(|(path, _)| path.clone())
        .collect();
    let foreign: Vec<String> = new
        .owners
        .iter()
        .filter(|(section, _, owner)| {
            let want = if *section == b'M' {
                &owners.vmail
            } else {
                &owners.dkim
            };
            want.as_ref().is_some_and(|w| w != owner) || (*section == b'M' && want.is_none())
        })
        .map(|(_, path, owner)| format!("{path} ({owner})"))
        .collect();
    let mut problems = Vec::new();
    for (what, items) in [
        ("message(s) missing on NEW", &missing),
        ("message(s) of another size on NEW", &resized),
        ("account(s) missing on NEW", &lost_accounts),
        ("DKIM file(s) missing or different on NEW", &dkim),
        (
            "entries on NEW not owned as the migration sets them",
            &foreign,
        ),
    ] {
        if !items.is_empty() {
            problems.push(listed(what, items));
        }
    }
    MailboxDiff {
        messages: old.messages.len(),
        accounts: old.accounts.len(),
        extra_on_new: new
            .messages
            .keys()
            .filter(|k| !old.messages.contains_key(*k))
            .count(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<Record> {
        text.lines()
            .map(|l| {
                let mut f = l.splitn(6, '\t');
                let mut next = || f.next().unwrap_or("").as_bytes().to_vec();
                let section = next()[0];
                Record {
                    section,
                    fields: [next(), next(), next(), next()],
                    path: next(),
                }
            })
            .collect()
    }

    const OLD: &str = "M\td\t0\t0\t0:0\td/u\n\
                       M\tf\t10\t5\t0:0\td/u/cur/1.M1:2,\n\
                       M\tf\t20\t5\t5:5\td/u/new/2.M2\n\
                       M\tf\t3\t5\t5:5\td/u/password\n\
                       M\tf\t99\t5\t5:5\td/u/dovecot.index\n\
                       D\t-\t-\taaaa\t-\t/etc/dkimkeys/opendkim.private\n";

    fn owners() -> Owners {
        Owners {
            vmail: Some("5:5".into()),
            dkim: Some("7:7".into()),
        }
    }

    #[test]
    fn reads_moves_flags_new_mail_and_old_owners_are_fine() {
        let new = "M\td\t0\t0\t5:5\td/u\n\
                   M\tf\t10\t9\t5:5\td/u/cur/1.M1:2,S\n\
                   M\tf\t20\t9\t5:5\td/u/cur/2.M2:2,\n\
                   M\tf\t7\t9\t5:5\td/u/new/3.M3\n\
                   M\tf\t3\t9\t5:5\td/u/password\n\
                   S\tf\t1\t-\t7:7\t/etc/dkimkeys/opendkim.private\n\
                   D\t-\t-\taaaa\t-\t/etc/dkimkeys/opendkim.private\n";
        let d = compare(&records(OLD), &records(new), &owners());
        assert_eq!(d.problems, Vec::<String>::new());
        assert_eq!((d.messages, d.accounts, d.extra_on_new), (2, 1, 1));
    }

    #[test]
    fn a_lost_message_account_key_and_a_wrong_owner_are_named() {
        let new = "M\tf\t11\t9\t0:0\td/u/cur/1.M1:2,\n\
                   D\t-\t-\tbbbb\t-\t/etc/dkimkeys/opendkim.private\n";
        let d = compare(&records(OLD), &records(new), &owners());
        assert_eq!(d.problems.len(), 5, "{:?}", d.problems);
        assert!(d.problems[0].contains("1 message(s) missing on NEW: d/u/2.M2"));
        assert!(d.problems[1].contains("OLD 10 B, NEW 11 B"));
        assert!(d.problems[2].contains("account(s) missing on NEW: d/u"));
        assert!(d.problems[3]
            .contains("DKIM file(s) missing or different on NEW: /etc/dkimkeys/opendkim.private"));
        assert!(
            d.problems[4].contains("d/u/cur/1.M1:2, (0:0)"),
            "{:?}",
            d.problems
        );
    }
}
