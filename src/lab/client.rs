//! A mail client's view of the lab: SMTP and IMAP against the hosts' real Postfix and
//! Dovecot, through the lab's Python client (`DIR/bin/lab-client`, Python's smtplib and
//! imaplib). `lab up` seeds mail with it; tests judge a migration with it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::error::{LabError, Result};
use super::process;

/// Accounts per OLD host that `lab up` sends mail to over SMTP; every other message is
/// written into the maildirs directly, which is 100 times faster and what a relay that
/// ran for a while looks like to Dovecot too.
pub const SMTP_ACCOUNTS: usize = 3;
/// Of those, accounts whose INBOX a client then opens (Dovecot moves new/ to cur/), and
/// where the user reads one message and flags another. Only one: the rest keep unseen
/// mail in new/, which the lab's file-level activity (`activity`) turns into seen mail.
pub const IMAP_ACCOUNTS: usize = 1;
/// Messages each of those accounts gets over SMTP.
pub const SMTP_MESSAGES: usize = 2;
/// Messages `lab up` queues on each OLD host for a destination that is down
/// (`mail::LATER_DOMAIN`): they wait in its deferred queue.
pub const DEFERRED_MESSAGES: usize = 2;

/// What `seed` does on one OLD host.
#[derive(Debug, Clone, Serialize)]
pub struct SeedHost {
    /// The host's address.
    pub addr: Ipv4Addr,
    /// The relay's mail domain.
    pub domain: String,
    /// The host's queue directory, as the controller reaches it.
    pub spool: String,
    /// (address, password, messages already in the maildir) of each account to seed.
    pub accounts: Vec<(String, String, usize)>,
    /// Messages per account over SMTP.
    pub messages: usize,
    /// The first this many accounts are opened, read and flagged over IMAP.
    pub imap_accounts: usize,
    /// Messages to queue for the down destination.
    pub deferred: usize,
    /// The down destination's domain.
    pub later: String,
}

/// One mailbox as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MailboxView {
    /// IMAP UIDVALIDITY: a change makes clients forget what they fetched.
    pub uidvalidity: u64,
    /// IMAP UIDNEXT.
    pub uidnext: u64,
    /// (UID, flags without \Recent, sha256 of the message) per message, by UID.
    pub messages: Vec<(u64, Vec<String>, String)>,
}

/// Per account, per mailbox name.
pub type AccountsView = BTreeMap<String, BTreeMap<String, MailboxView>>;

/// Runs `lab-client CMD` with `request` as JSON on stdin; its JSON answer.
fn run_client<T: Serialize>(bin: &Path, cmd: &str, request: &T) -> Result<serde_json::Value> {
    let script = bin.join(super::cmdeploy::CLIENT_NAME);
    let body = serde_json::to_vec(request)
        .map_err(|e| LabError::Options(format!("cannot encode a lab-client request: {e}")))?;
    // The machine's python3, not a pyenv shim in PATH: the lab checked it exists.
    let mut c = Command::new("/usr/bin/python3");
    c.arg(&script)
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = process::show(&c);
    let mut child = c.spawn().map_err(LabError::io(format!("run `{shown}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&body)
            .map_err(LabError::io(format!("feed `{shown}`")))?;
    }
    let out = process::wait(shown.clone(), child)?;
    serde_json::from_slice(&out.stdout).map_err(|e| LabError::Command {
        command: shown,
        status: "bad output".into(),
        stderr: e.to_string(),
    })
}

/// Seeds the OLD hosts' mail through their Postfix and Dovecot, all hosts at once.
pub fn seed(bin: &Path, hosts: &[SeedHost]) -> Result<()> {
    #[derive(Serialize)]
    struct Request<'a> {
        hosts: &'a [SeedHost],
        timeout: u64,
    }
    run_client(bin, "seed", &Request { hosts, timeout: 60 }).map(|_| ())
}

/// What a client sees of `accounts` ((address, password)) on the host at `addr`:
/// every mailbox's UIDVALIDITY, UIDNEXT and messages.
pub fn snapshot(bin: &Path, addr: Ipv4Addr, accounts: &[(String, String)]) -> Result<AccountsView> {
    #[derive(Serialize)]
    struct Request<'a> {
        host: Ipv4Addr,
        accounts: &'a [(String, String)],
    }
    let v = run_client(
        bin,
        "snapshot",
        &Request {
            host: addr,
            accounts,
        },
    )?;
    serde_json::from_value(v).map_err(|e| LabError::Options(format!("lab-client snapshot: {e}")))
}

/// Sends one message over SMTP to `addr:port`.
pub fn send(
    bin: &Path,
    addr: Ipv4Addr,
    port: u16,
    from: &str,
    to: &str,
    subject: &str,
) -> Result<()> {
    let req = serde_json::json!({
        "host": addr, "port": port, "from": from, "to": to,
        "subject": subject, "body": format!("{subject} (sent by the lab client)"),
    });
    run_client(bin, "send", &req).map(|_| ())
}

/// A client opens `account`'s INBOX on `addr` and adds `flags` (IMAP syntax, e.g.
/// `(\\Flagged)`) to the newest message; returns its UID.
pub fn flag(bin: &Path, addr: Ipv4Addr, account: (&str, &str), flags: &str) -> Result<u64> {
    let req = serde_json::json!({
        "host": addr, "address": account.0, "password": account.1, "flags": flags,
    });
    let v = run_client(bin, "flag", &req)?;
    v.get("uid")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| LabError::Options(format!("lab-client flag: no uid in {v}")))
}
