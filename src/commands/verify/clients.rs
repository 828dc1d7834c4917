//! `verify`'s client view: what a mail client notices after the move.
//!
//! - Every mailbox keeps OLD's UIDVALIDITY, and its UIDNEXT did not go back: a client
//!   that sees another UIDVALIDITY forgets what it fetched (Delta Chat jumps to the
//!   new UIDNEXT and never fetches what was unread; others download everything
//!   again), and a lower UIDNEXT would hand out UIDs the client already knows.
//! - The Postfix queue NEW took over from OLD drains from NEW: each message is still
//!   queued on NEW, or NEW's mail log says it was delivered (or bounced).
//!
//! The reference is step 4's cutover record (`proof::Reader`); without one,
//! OLD's uidlists as read now (OLD is frozen since step 3) and no queue check.

use std::collections::{BTreeMap, BTreeSet};

use crate::host::inspect::{quiet_sink, Finding};
use crate::host::proof::{Queued, Uids, QUEUES, SPOOL};
use crate::host::remote::{CommandKind, HostConn, SshPool, Stdout};
use crate::model::inventory::Relay;

/// Mailboxes or messages named in a finding; the rest are counted.
pub(super) const SHOWN: usize = 5;

/// `dom/addr/.Folder/dovecot-uidlist` -> `addr/Folder`; the maildir root is INBOX.
fn mailbox_name(uidlist: &str) -> String {
    let dir = uidlist.strip_suffix("/dovecot-uidlist").unwrap_or(uidlist);
    let mut parts = dir.split('/').skip(1);
    let account = parts.next().unwrap_or(dir);
    match parts.next() {
        None => format!("{account}/INBOX"),
        Some(folder) => format!("{account}/{}", folder.trim_start_matches('.')),
    }
}

/// One line per mailbox whose messages a client would see renumbered: `n` of them,
/// `example` one (`dir` is the mailbox's directory under /home/vmail/mail).
pub(super) fn renumbered(dir: &str, n: usize, example: &str) -> String {
    let name = mailbox_name(&format!("{dir}/dovecot-uidlist"));
    format!("{name}: {n} message(s) with another UID on NEW (e.g. {example})")
}

/// What the UID comparison found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UidsDiff {
    pub mailboxes: usize,
    /// Mailboxes whose UIDNEXT grew since (mail delivered to NEW).
    pub advanced: usize,
    pub problems: Vec<String>,
}

/// NEW's uidlists against the reference: same UIDVALIDITY, UIDNEXT not lower.
pub fn compare_uids(reference: &BTreeMap<String, Uids>, new: &BTreeMap<String, Uids>) -> UidsDiff {
    let mut d = UidsDiff::default();
    for (path, old) in reference {
        if let Some(problem) = d.one(path, old, new.get(path)) {
            d.problems.push(problem);
        }
    }
    d
}

impl UidsDiff {
    /// One mailbox of the reference (`path`: its uidlist's) against NEW's `now`:
    /// counted, and what a client would notice, if anything.
    pub(super) fn one(&mut self, path: &str, old: &Uids, now: Option<&Uids>) -> Option<String> {
        self.mailboxes += 1;
        let name = mailbox_name(path);
        let Some(now) = now else {
            return Some(format!(
                "{name}: no uidlist on NEW (Dovecot gives it a new UIDVALIDITY)"
            ));
        };
        if now.uidvalidity != old.uidvalidity {
            return Some(format!(
                "{name}: UIDVALIDITY {} on NEW, {} on OLD",
                now.uidvalidity, old.uidvalidity
            ));
        }
        match (old.uidnext.parse::<u64>(), now.uidnext.parse::<u64>()) {
            (Ok(o), Ok(n)) if n < o => Some(format!(
                "{name}: UIDNEXT {n} on NEW, {o} on OLD (UIDs clients know would be reused)"
            )),
            (Ok(o), Ok(n)) if n > o => {
                self.advanced += 1;
                None
            }
            (Ok(_), Ok(_)) => None,
            _ if old.uidnext == now.uidnext => None,
            _ => Some(format!(
                "{name}: UIDNEXT {} on NEW, {} on OLD",
                now.uidnext, old.uidnext
            )),
        }
    }
}

/// The client view's finding: `problems` (the first few, and how many in all) over
/// `mailboxes` compared against `source`, `advanced` of them since by new mail.
pub(super) fn uids_finding(
    mailboxes: usize,
    advanced: usize,
    source: &str,
    problems: &[String],
    total: usize,
) -> Finding {
    const CHECK: &str = "client view";
    if total == 0 {
        return Finding::pass(
            CHECK,
            format!(
                "{mailboxes} mailbox(es) keep OLD's UIDVALIDITY and UIDNEXT ({advanced} advanced since by new mail; reference: {source})"
            ),
        );
    }
    let mut shown: Vec<String> = problems.iter().take(SHOWN).cloned().collect();
    if total > shown.len() {
        shown.push(format!("... ({} more)", total - shown.len()));
    }
    Finding::fail(
        CHECK,
        format!(
            "{total} difference(s) a mail client would see, in {mailboxes} mailbox(es) (reference: {source}): {}",
            shown.join("; ")
        ),
    )
}

/// Where one message of OLD's queue is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueFate {
    Queued,
    Delivered,
    Bounced,
    /// Neither in NEW's queue nor in its mail log.
    Unknown,
}

/// Classifies each recorded queue ID from the host's answer: `Q ID QUEUE` lines (NEW's
/// queue now) and `L LOGLINE` lines (NEW's mail log, lines naming a recorded ID).
pub fn queue_fates(ids: &[String], answer: &str) -> Vec<(String, QueueFate)> {
    let mut queued = BTreeSet::new();
    let mut done: BTreeMap<&str, QueueFate> = BTreeMap::new();
    for line in answer.lines() {
        if let Some(rest) = line.strip_prefix("Q ") {
            queued.insert(rest.split(' ').next().unwrap_or_default());
        } else if let Some(log) = line.strip_prefix("L ") {
            let names = |id: &String| {
                let said = format!("{id}: ");
                log.starts_with(&said) || log.contains(&format!(" {said}"))
            };
            for id in ids.iter().filter(|id| names(id)) {
                let bounced = log.contains("status=bounced") || log.contains("status=expired");
                let fate = done.entry(id).or_insert(QueueFate::Delivered);
                if bounced {
                    *fate = QueueFate::Bounced;
                }
            }
        }
    }
    ids.iter()
        .map(|id| {
            let fate = if queued.contains(id.as_str()) {
                QueueFate::Queued
            } else {
                done.get(id.as_str()).copied().unwrap_or(QueueFate::Unknown)
            };
            (id.clone(), fate)
        })
        .collect()
}

/// Queue IDs are letters and digits (short and long forms): anything else in a
/// record is not put into a command.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// On NEW: its queue now, and the mail log's final lines for `ids`. The log is
/// `maillog_file` where Postfix writes one, else the journal.
pub fn queue_script(ids: &[String]) -> String {
    let queues = QUEUES.join(" ");
    format!(
        r#"t=$(mktemp -d) || exit 70; trap 'rm -rf "$t"' EXIT
die() {{ echo "cmfleet queue check on $(hostname): $1" >&2; exit 70; }}
printf '%s\n' {ids} > "$t/ids" || die "cannot write a temp file"
cd {SPOOL} || die "cannot enter {SPOOL}"
set --; for q in {queues}; do [ -d "$q" ] && set -- "$@" "$q"; done
: > "$t/q"; if [ $# -gt 0 ]; then find "$@" -type f -printf 'Q %f %H\n' > "$t/q" || die "cannot list the Postfix queue"; fi
f=$(postconf -h maillog_file 2>/dev/null) || f=
if [ -n "$f" ]; then log=$f; else log=$t/j; journalctl -q -o cat --no-pager -u 'postfix*' > "$log" 2>/dev/null || die "Postfix has no maillog_file and the journal cannot be read"; fi
grep -F -w -f "$t/ids" -- "$log" > "$t/l"; [ $? -le 1 ] || die "cannot read $log"
grep -E ': (removed|to=.*status=(sent|delivered|bounced|expired).*)$' "$t/l" > "$t/m"; [ $? -le 1 ] || die "grep failed"
{{ cat "$t/q" && sed 's/^/L /' "$t/m"; }} || die "cannot send the answer""#,
        ids = ids.join(" ")
    )
}

pub(super) async fn queue_finding(
    ssh: &SshPool,
    relay: &Relay,
    new: &HostConn,
    queue: Option<&[Queued]>,
) -> Finding {
    const CHECK: &str = "queue";
    let Some(queue) = queue else {
        return Finding::warn(
            CHECK,
            "not checked: no cutover record from step 4 in this state_dir (an older cmfleet, or another controller ran it)",
        );
    };
    let ids: Vec<String> = queue.iter().map(|q| q.id.clone()).collect();
    if ids.is_empty() {
        return Finding::pass(CHECK, "OLD's queue was empty at the cutover");
    }
    if let Some(bad) = ids.iter().find(|id| !plain_id(id)) {
        return Finding::fail(
            CHECK,
            format!("the cutover record holds a queue ID that is not one: {bad:?}"),
        );
    }
    let sink = quiet_sink(relay);
    let out = ssh
        .run(
            new,
            &queue_script(&ids),
            false,
            CommandKind::Plain,
            &sink,
            Stdout::Capture,
        )
        .await;
    let answer = match out {
        Ok(o) => o.stdout.unwrap_or_default(),
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot read NEW's queue and mail log: {}", e.message),
            )
        }
    };
    queue_verdict(&queue_fates(&ids, &answer))
}

fn queue_verdict(fates: &[(String, QueueFate)]) -> Finding {
    const CHECK: &str = "queue";
    let count = |f: QueueFate| fates.iter().filter(|(_, x)| *x == f).count();
    let summary = format!(
        "OLD's queue at the cutover: {} message(s); {} delivered from NEW, {} still queued on NEW, {} bounced",
        fates.len(),
        count(QueueFate::Delivered),
        count(QueueFate::Queued),
        count(QueueFate::Bounced)
    );
    let unknown: Vec<&str> = fates
        .iter()
        .filter(|(_, f)| *f == QueueFate::Unknown)
        .map(|(id, _)| id.as_str())
        .take(SHOWN)
        .collect();
    if !unknown.is_empty() {
        return Finding::fail(
            CHECK,
            format!(
                "{summary}; {} neither queued on NEW nor in its mail log: {}",
                count(QueueFate::Unknown),
                unknown.join(", ")
            ),
        );
    }
    if count(QueueFate::Bounced) > 0 {
        return Finding::warn(CHECK, format!("{summary} (their senders got a bounce)"));
    }
    Finding::pass(CHECK, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids(v: &str, n: &str) -> Uids {
        Uids::new(v, n)
    }

    #[test]
    fn a_new_uidvalidity_a_lower_uidnext_and_a_missing_uidlist_are_named() {
        let reference = BTreeMap::from([
            ("d/a@d/dovecot-uidlist".to_string(), uids("100", "5")),
            ("d/b@d/dovecot-uidlist".to_string(), uids("100", "5")),
            (
                "d/c@d/.DeltaChat/dovecot-uidlist".to_string(),
                uids("100", "5"),
            ),
            ("d/e@d/dovecot-uidlist".to_string(), uids("100", "5")),
            ("d/f@d/dovecot-uidlist".to_string(), uids("100", "5")),
        ]);
        let new = BTreeMap::from([
            ("d/a@d/dovecot-uidlist".to_string(), uids("100", "5")),
            ("d/b@d/dovecot-uidlist".to_string(), uids("100", "9")),
            (
                "d/c@d/.DeltaChat/dovecot-uidlist".to_string(),
                uids("200", "5"),
            ),
            ("d/e@d/dovecot-uidlist".to_string(), uids("100", "4")),
        ]);
        let d = compare_uids(&reference, &new);
        assert_eq!((d.mailboxes, d.advanced), (5, 1));
        assert_eq!(
            d.problems,
            [
                "c@d/DeltaChat: UIDVALIDITY 200 on NEW, 100 on OLD",
                "e@d/INBOX: UIDNEXT 4 on NEW, 5 on OLD (UIDs clients know would be reused)",
                "f@d/INBOX: no uidlist on NEW (Dovecot gives it a new UIDVALIDITY)",
            ]
        );
    }

    #[test]
    fn queued_delivered_bounced_and_vanished_messages_are_told_apart() {
        let ids: Vec<String> = ["AAA1", "BBB2", "CCC3", "DDD4"].map(String::from).to_vec();
        let answer = "Q AAA1 deferred\n\
                      L Dec  2 postfix/smtp[9]: BBB2: to=<x@y>, relay=y, status=sent (250 ok)\n\
                      L Dec  2 postfix/qmgr[9]: BBB2: removed\n\
                      L Dec  2 postfix/smtp[9]: CCC3: to=<x@y>, status=bounced (550 no)\n\
                      L Dec  2 postfix/qmgr[9]: XDDD4: removed\n";
        let fates = queue_fates(&ids, answer);
        use QueueFate::*;
        let got: Vec<QueueFate> = fates.iter().map(|(_, f)| *f).collect();
        assert_eq!(got, [Queued, Delivered, Bounced, Unknown]);
        let f = queue_verdict(&fates);
        assert_eq!(f.status, crate::host::inspect::Status::Fail);
        assert!(
            f.reason
                .contains("1 delivered from NEW, 1 still queued on NEW, 1 bounced"),
            "{}",
            f.reason
        );
        assert!(f.reason.ends_with("in its mail log: DDD4"), "{}", f.reason);
    }
}
