//! `cmfleet verify`: after a migration, is each relay really served by NEW?
//!
//! Per relay: the authoritative DNS serves NEW's addresses, NEW accepts TCP on the
//! mail ports, OLD no longer does, and NEW holds every message and account OLD has.
//! After step 3 OLD is frozen, so OLD's mailbox tree is the reference; NEW may have
//! more (mail delivered since step 6) and may have renamed messages (a client read
//! or flagged them), so messages are compared by mailbox and maildir unique name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::check::{
    for_each_relay, quiet_sink, ssh_host, ssh_pool, CheckError, Finding, RelayFindings,
};
use crate::dns::Dns;
use crate::inventory::{DnsProviderKind, Host, Inventory, MailDomain, Relay};
use crate::remote::{CommandKind, SshPool, Stdout};
use crate::steps::commands;
use crate::steps::dns::addrs;

/// The ports a chatmail relay serves mail on: SMTP, SMTPS (submission), IMAPS.
pub const MAIL_PORTS: [u16; 3] = [25, 465, 993];
/// How long verify waits for authoritative servers to agree.
const DNS_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Differences named in a finding; the rest are counted.
const SHOWN: usize = 5;

/// Verifies every selected relay, concurrently.
pub async fn verify(inv: &Inventory, relays: &[&Relay]) -> Result<Vec<RelayFindings>, CheckError> {
    let ssh = ssh_pool(inv)?;
    let results = for_each_relay(relays, inv.fleet.limits.forks, |r| {
        let ssh = &ssh;
        async move {
            let (dns, new, old, mail) = tokio::join!(
                dns_finding(r),
                ports_finding(&r.new, true),
                ports_finding(&r.old, false),
                mailbox_finding(ssh, r),
            );
            RelayFindings::new(&r.name, vec![dns, new, old, mail])
        }
    })
    .await;
    ssh.close().await;
    Ok(results)
}

async fn dns_finding(relay: &Relay) -> Finding {
    const CHECK: &str = "dns";
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        return Finding::pass(
            CHECK,
            format!("skipped: mail_domain is the address {ip}; it must have moved to NEW itself"),
        );
    }
    if relay.settings.dns.provider == DnsProviderKind::None {
        return Finding::pass(
            CHECK,
            "skipped: dns provider \"none\" (DNS is handled outside cmfleet)",
        );
    }
    let dns = match Dns::from_settings(&relay.settings.dns) {
        Ok(d) => d,
        Err(e) => return Finding::fail(CHECK, e.to_string()),
    };
    let new = addrs(&relay.new);
    match dns
        .wait_propagated(&relay.name, &new, DNS_WAIT, |_, _| {})
        .await
    {
        Ok(p) => Finding::pass(
            CHECK,
            format!(
                "{} authoritative server(s) serve NEW ({new})",
                p.servers.len()
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("the authoritative servers do not all serve NEW ({new}): {e}"),
        ),
    }
}

async fn accepts(ip: Ipv4Addr, port: u16) -> bool {
    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ip, port)))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// NEW must accept on every mail port; OLD on none (mail delivered there is lost to NEW).
async fn ports_finding(host: &Host, want_open: bool) -> Finding {
    let open = futures::future::join_all(MAIL_PORTS.map(|p| accepts(host.ip4, p))).await;
    let wrong: Vec<String> = MAIL_PORTS
        .iter()
        .zip(open)
        .filter(|(_, o)| *o != want_open)
        .map(|(p, _)| p.to_string())
        .collect();
    let ports = MAIL_PORTS.map(|p| p.to_string()).join(", ");
    match (want_open, wrong.is_empty()) {
        (true, true) => Finding::pass("new listens", format!("NEW {} accepts TCP on {ports}", host.ip4)),
        (true, false) => Finding::fail(
            "new listens",
            format!("NEW {} does not accept TCP on port {} (hint: is mail active on NEW? re-run step 6 with `cmfleet migrate --from-step 6`)", host.ip4, wrong.join(", ")),
        ),
        (false, true) => Finding::pass("old silent", format!("OLD {} no longer accepts TCP on {ports}", host.ip4)),
        (false, false) => Finding::fail(
            "old silent",
            format!("OLD {} still accepts TCP on port {}: mail delivered there never reaches NEW (hint: disable mail on OLD)", host.ip4, wrong.join(", ")),
        ),
    }
}

async fn mailbox_finding(ssh: &SshPool, relay: &Relay) -> Finding {
    const CHECK: &str = "mailboxes";
    let ((f_old, old), (f_new, new)) = tokio::join!(
        ssh_host(ssh, relay, &relay.old, CHECK, || {}),
        ssh_host(ssh, relay, &relay.new, CHECK, || {})
    );
    let (Some(old), Some(new)) = (old, new) else {
        let mut f = if f_old.status == crate::check::Status::Fail {
            f_old
        } else {
            f_new
        };
        f.reason = format!("cannot compare: {}", f.reason);
        return f;
    };
    let sink = quiet_sink(relay);
    let script = commands::manifest();
    let (a, b) = tokio::join!(
        ssh.run(
            &old,
            &script,
            false,
            CommandKind::Plain,
            &sink,
            Stdout::Capture
        ),
        ssh.run(
            &new,
            &script,
            false,
            CommandKind::Plain,
            &sink,
            Stdout::Capture
        )
    );
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a.stdout.unwrap_or_default(), b.stdout.unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => {
            return Finding::fail(CHECK, format!("cannot list the mailboxes: {}", e.message))
        }
    };
    let d = compare(&a, &b);
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

/// What the mailbox comparison found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailboxDiff {
    /// Messages and accounts on OLD.
    pub messages: usize,
    pub accounts: usize,
    /// Messages only on NEW (delivered after the cutover).
    pub extra_on_new: usize,
    /// Missing messages, missing accounts, messages of another size.
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

type Tree = (BTreeMap<(String, String), u64>, Vec<String>);

/// Messages (by key, with size) and accounts (`password` files) of a manifest.
fn parse_tree(manifest: &str) -> Tree {
    let mut messages = BTreeMap::new();
    let mut accounts = Vec::new();
    for line in manifest.lines() {
        let mut f = line.split('\t');
        let (Some(path), Some(kind), Some(size)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if kind != "f" {
            continue;
        }
        if path.ends_with("/password") {
            accounts.push(path.to_string());
        } else if let Some(key) = message_key(path) {
            messages.insert(key, size.parse().unwrap_or(0));
        }
    }
    (messages, accounts)
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

/// Compares OLD's manifest (the reference) with NEW's (both from `commands::manifest`).
pub fn compare(old: &str, new: &str) -> MailboxDiff {
    let (old_msgs, old_accounts) = parse_tree(old);
    let (new_msgs, new_accounts) = parse_tree(new);
    let mut missing = Vec::new();
    let mut resized = Vec::new();
    for (key, size) in &old_msgs {
        match new_msgs.get(key) {
            None => missing.push(format!("{}/{}", key.0, key.1)),
            Some(s) if s != size => {
                resized.push(format!("{}/{} (OLD {size} B, NEW {s} B)", key.0, key.1))
            }
            Some(_) => {}
        }
    }
    let lost_accounts: Vec<String> = old_accounts
        .iter()
        .filter(|a| !new_accounts.contains(a))
        .map(|a| a.trim_end_matches("/password").to_string())
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(listed("message(s) missing on NEW", &missing));
    }
    if !resized.is_empty() {
        problems.push(listed("message(s) of another size on NEW", &resized));
    }
    if !lost_accounts.is_empty() {
        problems.push(listed("account(s) missing on NEW", &lost_accounts));
    }
    MailboxDiff {
        messages: old_msgs.len(),
        accounts: old_accounts.len(),
        extra_on_new: new_msgs
            .keys()
            .filter(|k| !old_msgs.contains_key(*k))
            .count(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "d/u\td\t0\t0\tvmail:vmail\n\
                       d/u/cur/1.M1:2,\tf\t10\t5\tvmail:vmail\n\
                       d/u/new/2.M2\tf\t20\t5\tvmail:vmail\n\
                       d/u/password\tf\t3\t5\tvmail:vmail\n\
                       d/u/dovecot.index\tf\t99\t5\tvmail:vmail\n";

    #[test]
    fn reads_moves_flags_and_new_mail_are_fine() {
        let new = "d/u/cur/1.M1:2,S\tf\t10\t9\tvmail:vmail\n\
                   d/u/cur/2.M2:2,\tf\t20\t9\tvmail:vmail\n\
                   d/u/new/3.M3\tf\t7\t9\tvmail:vmail\n\
                   d/u/password\tf\t3\t9\tvmail:vmail\n";
        let d = compare(OLD, new);
        assert_eq!(d.problems, Vec::<String>::new());
        assert_eq!((d.messages, d.accounts, d.extra_on_new), (2, 1, 1));
    }

    #[test]
    fn a_deleted_message_and_a_lost_account_are_named() {
        let new = "d/u/cur/1.M1:2,\tf\t11\t9\tvmail:vmail\n";
        let d = compare(OLD, new);
        assert_eq!(d.problems.len(), 3, "{:?}", d.problems);
        assert!(
            d.problems[0].contains("1 message(s) missing on NEW: d/u/2.M2"),
            "{:?}",
            d.problems
        );
        assert!(d.problems[1].contains("OLD 10 B, NEW 11 B"));
        assert!(d.problems[2].contains("account(s) missing on NEW: d/u"));
    }
}
