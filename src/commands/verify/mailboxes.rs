//! `verify`'s data check: does NEW hold every message, account and DKIM key of OLD,
//! and does a mail client see the same mailboxes?
//!
//! Both hosts send `verify`'s listing (`proof::verify_listing`: complete and
//! self-vouching like the proof's, with each message keyed by its mailbox and maildir
//! unique name and sorted on the host), and the two are merged as they arrive, so
//! memory does not grow with the relay's size (a relay of 560,000 files held whole
//! took 872 MB). NEW is live by now, so the comparison is the one a user would make,
//! not step 4's exact one: NEW may have more (mail delivered since step 6) and may
//! have renamed messages (a client read or flagged them: same key); the Postfix queue
//! drains and acme renews, so neither is compared. What the migration sets is
//! checked on NEW: the mailboxes owned by vmail, the DKIM keys by the owner step 2
//! gave them.

use std::cmp::Ordering;
use std::path::Path;

use tokio::sync::mpsc::Receiver;

use super::clients::{self, SHOWN};
use crate::host::inspect::{quiet_sink, ssh_host, Finding};
use crate::host::proof::{self, Incomplete, Listing, Owners, Queued, Record, Uids};
use crate::host::remote::{CommandKind, Stdout};
use crate::model::inventory::Relay;

const CHECK: &str = "mailboxes";

/// Listing records buffered between a host and the merge, per side.
const RECORDS_IN_FLIGHT: usize = 128;

/// The data findings of one relay: NEW holds OLD's mail (`mailboxes`), clients see
/// the same mailboxes (`client view`), OLD's queue drains from NEW (`queue`).
pub(super) async fn findings(
    ssh: &crate::host::remote::SshPool,
    relay: &Relay,
    state_dir: &Path,
) -> Vec<Finding> {
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
    let mut reference = match proof::Reader::open(state_dir, &relay.name) {
        Ok(r) => r.map(Reference::new),
        Err(e) => return vec![Finding::fail("client view", e.to_string())],
    };
    let sink = quiet_sink(relay);
    let script = proof::verify_listing();
    let (old_tx, old_rx) = tokio::sync::mpsc::channel(RECORDS_IN_FLIGHT);
    let (new_tx, new_rx) = tokio::sync::mpsc::channel(RECORDS_IN_FLIGHT);
    let records = |to| Stdout::Records { to, end: 0 };
    let plain = CommandKind::Plain;
    let (a, b, merged) = tokio::join!(
        ssh.run(&old, &script, false, plain, &sink, records(old_tx)),
        ssh.run(&new, &script, false, plain, &sink, records(new_tx)),
        Box::pin(merge(old_rx, new_rx, reference.as_mut())),
    );
    let listed = a
        .map_err(|e| e.message)
        .and(b.map_err(|e| e.message))
        .and(merged.map_err(|e| e.to_string()));
    let verdict = match listed {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("cannot list the mailboxes: {e}");
            return vec![Finding::fail(CHECK, reason)];
        }
    };
    let source = match &reference {
        Some(_) => "step 4's cutover record",
        None => "OLD's uidlists now",
    };
    let (mut problems, mut total) = (verdict.uids.problems.shown, verdict.uids.problems.total);
    let renumbered = verdict.uids.renumbered;
    problems.extend(renumbered.shown);
    total += renumbered.total;
    let client_view = match reference.as_mut().and_then(|r| r.error.take()) {
        Some(e) => Finding::fail("client view", e.to_string()),
        None => clients::uids_finding(
            verdict.uids.mailboxes,
            verdict.uids.advanced,
            source,
            &problems,
            total,
        ),
    };
    let queue = reference.as_ref().map(|r| r.queue.as_slice());
    vec![
        mail_finding(&verdict.mail),
        client_view,
        clients::queue_finding(ssh, relay, &new, queue).await,
    ]
}

/// Step 4's cutover record as the merge reads it: the mailboxes in the listing's
/// order, one ahead at most; the queue IDs (a queue's worth) collected on the way.
pub struct Reference {
    reader: proof::Reader,
    ahead: Option<proof::Mailbox>,
    /// OLD's queue as NEW took it over.
    pub queue: Vec<Queued>,
    /// Why the record could not be read to its end, if it could not.
    pub error: Option<proof::CutoverError>,
}

impl Reference {
    pub fn new(reader: proof::Reader) -> Reference {
        Reference {
            reader,
            ahead: None,
            queue: Vec::new(),
            error: None,
        }
    }

    fn peek(&mut self) -> Option<&proof::Mailbox> {
        while self.ahead.is_none() && self.error.is_none() {
            match self.reader.next_entry() {
                Ok(Some(proof::Entry::Mailbox(m))) => self.ahead = Some(m),
                Ok(Some(proof::Entry::Queued(q))) => self.queue.push(q),
                Ok(Some(proof::Entry::Version(_))) => {}
                Ok(None) => break,
                Err(e) => self.error = Some(e),
            }
        }
        self.ahead.as_ref()
    }

    fn pop(&mut self) -> Option<proof::Mailbox> {
        self.peek();
        self.ahead.take()
    }
}

fn mail_finding(d: &MailboxDiff) -> Finding {
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

/// Things of one kind: the first [`SHOWN`] named, all counted (memory stays bounded
/// however many there are).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub shown: Vec<String>,
    pub total: usize,
}

impl Named {
    fn push(&mut self, item: impl FnOnce() -> String) {
        self.total += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(item());
        }
    }

    /// `3 WHAT: a, b, c` with `, ... (N more)` past [`SHOWN`]; `None` if empty.
    fn line(&self, what: &str) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let mut s = format!("{} {what}: {}", self.total, self.shown.join(", "));
        if self.total > self.shown.len() {
            s.push_str(&format!(", ... ({} more)", self.total - self.shown.len()));
        }
        Some(s)
    }
}

/// The client view's findings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientView {
    /// Mailboxes of the reference, and how many got new mail since.
    pub mailboxes: usize,
    pub advanced: usize,
    /// Mailboxes with another UIDVALIDITY, a lower UIDNEXT or no uidlist on NEW.
    pub problems: Named,
    /// Mailboxes with messages NEW gives another UID (one line per mailbox).
    pub renumbered: Named,
}

/// Both findings of the merge.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub mail: MailboxDiff,
    pub uids: ClientView,
}

/// One host's listing, record groups of one key at a time (a message's file and its
/// UID, or two files of one message, share a key).
struct Groups {
    listing: Listing,
    ahead: Option<Record>,
}

impl Groups {
    async fn next(&mut self) -> Result<Option<Vec<Record>>, Incomplete> {
        let first = match self.ahead.take() {
            Some(r) => r,
            None => match self.listing.next().await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let mut group = vec![first];
        loop {
            match self.listing.next().await? {
                Some(r) if r.key() == group[0].key() => group.push(r),
                other => {
                    self.ahead = other;
                    return Ok(Some(group));
                }
            }
        }
    }
}

/// Merges OLD's and NEW's `verify` listings as they arrive. `reference`: the
/// mailboxes' UIDVALIDITY and UIDNEXT at the cutover (step 4's record, read along);
/// without it, OLD's uidlists now. An incomplete listing is an error, never a verdict.
pub async fn merge(
    old: Receiver<Vec<u8>>,
    new: Receiver<Vec<u8>>,
    reference: Option<&mut Reference>,
) -> Result<Verdict, Incomplete> {
    let (old, new) = tokio::join!(Listing::open("old", old), Listing::open("new", new));
    let ((old, _), (new, owners)) = (old?, new?);
    let (mut old, mut new) = (
        Groups {
            listing: old,
            ahead: None,
        },
        Groups {
            listing: new,
            ahead: None,
        },
    );
    let mut m = Merge {
        owners,
        reference,
        run: None,
        v: Verdict::default(),
        missing: Named::default(),
        resized: Named::default(),
        lost_accounts: Named::default(),
        dkim: Named::default(),
        foreign: Named::default(),
    };
    let (mut x, mut y) = tokio::join!(old.next(), new.next());
    loop {
        let (a, b) = (x?, y?);
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a[0].key().cmp(&b[0].key()),
        };
        match order {
            Ordering::Less => {
                m.group(a.as_deref().unwrap_or_default(), &[]);
                (x, y) = (old.next().await, Ok(b));
            }
            Ordering::Greater => {
                m.group(&[], b.as_deref().unwrap_or_default());
                (x, y) = (Ok(a), new.next().await);
            }
            Ordering::Equal => {
                m.group(
                    a.as_deref().unwrap_or_default(),
                    b.as_deref().unwrap_or_default(),
                );
                (x, y) = tokio::join!(old.next(), new.next());
            }
        }
    }
    Ok(m.finish())
}

/// The merge's state: counts, the first few of each kind of difference, and the
/// mailbox whose renumbered messages are being counted.
struct Merge<'a> {
    /// NEW's header: who must own what there.
    owners: Owners,
    reference: Option<&'a mut Reference>,
    /// The mailbox directory of the messages being counted, how many and an example.
    run: Option<(String, usize, String)>,
    v: Verdict,
    missing: Named,
    resized: Named,
    lost_accounts: Named,
    dkim: Named,
    foreign: Named,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Merge<'_> {
    /// The records of one key on OLD and on NEW (either may be empty).
    fn group(&mut self, old: &[Record], new: &[Record]) {
        let Some(section) = old.first().or(new.first()).map(|r| r.section) else {
            return;
        };
        let path = || old.first().or(new.first()).map(Record::shown_path);
        let path = path().unwrap_or_default();
        let vmail = self.owners.vmail.clone();
        match section {
            b'K' => self.message(&path, old, new),
            b'M' => {
                for r in new {
                    self.owned(r, vmail.as_deref(), true);
                }
                let account = |rs: &[Record]| {
                    rs.iter()
                        .any(|r| r.fields[0] == b"f" && r.path.ends_with(b"/password"))
                };
                if account(old) {
                    self.v.mail.accounts += 1;
                    if !account(new) {
                        let dir = path.strip_suffix("/password").unwrap_or(&path).to_string();
                        self.lost_accounts.push(|| dir);
                    }
                }
            }
            b'S' if path.starts_with("/etc/dkimkeys") => {
                let dkim = self.owners.dkim.clone();
                for r in new {
                    self.owned(r, dkim.as_deref(), false);
                }
            }
            b'D' if path.starts_with("/etc/dkimkeys") => {
                let sum = |rs: &[Record]| rs.first().map(|r| r.fields[2].clone());
                if !old.is_empty() && sum(old) != sum(new) {
                    self.dkim.push(|| path);
                }
            }
            b'U' => self.uidlist(&path, old.first(), new.first()),
            _ => {}
        }
    }

    /// NEW's entry `r` must be owned by `want`; `required`: an unknown owner (no
    /// vmail user on NEW) is a difference too.
    fn owned(&mut self, r: &Record, want: Option<&str>, required: bool) {
        let owner = &r.fields[3];
        let wrong = match want {
            Some(w) => owner.as_slice() != w.as_bytes(),
            None => required,
        };
        if wrong {
            self.foreign
                .push(|| format!("{} ({})", r.shown_path(), text(owner)));
        }
    }

    /// One message (`key`: `MAILBOX/UNIQUE`): its files and UIDs on both hosts.
    fn message(&mut self, key: &str, old: &[Record], new: &[Record]) {
        let file = |rs: &[Record]| {
            rs.iter()
                .find(|r| r.fields[0] == b"f")
                .map(|r| r.fields[1].clone())
        };
        let uid = |rs: &[Record]| {
            rs.iter()
                .find(|r| r.fields[0] == b"u")
                .map(|r| r.fields[1].clone())
        };
        let vmail = self.owners.vmail.clone();
        for r in new.iter().filter(|r| r.fields[0] == b"f") {
            self.owned(r, vmail.as_deref(), true);
        }
        let (old_size, new_size) = (file(old), file(new));
        match (&old_size, &new_size) {
            (Some(_), None) => {
                self.v.mail.messages += 1;
                self.missing.push(|| key.to_string());
            }
            (Some(o), Some(n)) => {
                self.v.mail.messages += 1;
                if o != n {
                    self.resized
                        .push(|| format!("{key} (OLD {} B, NEW {} B)", text(o), text(n)));
                }
            }
            (None, Some(_)) => self.v.mail.extra_on_new += 1,
            (None, None) => {}
        }
        let Some(old_uid) = uid(old) else { return };
        let unique = key.rsplit_once('/').map_or(key, |(_, u)| u);
        let example = match uid(new) {
            Some(n) if n == old_uid => return,
            Some(n) => format!(
                "{unique}: UID {} on OLD, {} on NEW",
                text(&old_uid),
                text(&n)
            ),
            None if new_size.is_some() => {
                format!("{unique}: UID {} on OLD, none on NEW", text(&old_uid))
            }
            // Deleted by its user since: not a difference.
            None => return,
        };
        let mailbox = key.rsplit_once('/').map_or("", |(m, _)| m);
        match &mut self.run {
            Some((dir, n, _)) if dir == mailbox => *n += 1,
            _ => {
                self.end_run();
                self.run = Some((mailbox.to_string(), 1, example));
            }
        }
    }

    /// The mailbox whose renumbered messages were being counted is done (its messages
    /// are adjacent: they share the key's prefix).
    fn end_run(&mut self) {
        if let Some((dir, n, example)) = self.run.take() {
            self.v
                .uids
                .renumbered
                .push(|| clients::renumbered(&dir, n, &example));
        }
    }

    /// One uidlist (`path`, for people): NEW's against the reference's (the
    /// record's, read up to it; or OLD's now).
    fn uidlist(&mut self, path: &str, old: Option<&Record>, new: Option<&Record>) {
        let uids = |r: &Record| Uids {
            uidvalidity: text(&r.fields[1]),
            uidnext: text(&r.fields[2]),
        };
        let now = new.map(uids);
        let Some(reference) = self.reference.as_deref_mut() else {
            if let Some(r) = old {
                if let Some(p) = self.v.uids.one(path, &uids(r), now.as_ref()) {
                    self.v.uids.problems.push(|| p);
                }
            }
            return;
        };
        let Some(key) = old.or(new).map(|r| r.path.clone()) else {
            return;
        };
        // The record's mailboxes before this one have no uidlist on NEW.
        while reference.peek().is_some_and(|m| m.key() < key) {
            if let Some(m) = reference.pop() {
                if let Some(p) = self.v.uids.one(&m.path, &m.uids(), None) {
                    self.v.uids.problems.push(|| p);
                }
            }
        }
        if reference.peek().is_some_and(|m| m.key() == key) {
            if let Some(m) = reference.pop() {
                if let Some(p) = self.v.uids.one(&m.path, &m.uids(), now.as_ref()) {
                    self.v.uids.problems.push(|| p);
                }
            }
        }
    }

    fn finish(mut self) -> Verdict {
        self.end_run();
        if let Some(reference) = self.reference.as_deref_mut() {
            while let Some(m) = reference.pop() {
                if let Some(p) = self.v.uids.one(&m.path, &m.uids(), None) {
                    self.v.uids.problems.push(|| p);
                }
            }
        }
        for (what, items) in [
            ("message(s) missing on NEW", &self.missing),
            ("message(s) of another size on NEW", &self.resized),
            ("account(s) missing on NEW", &self.lost_accounts),
            ("DKIM file(s) missing or different on NEW", &self.dkim),
            (
                "entries on NEW not owned as the migration sets them",
                &self.foreign,
            ),
        ] {
            if let Some(line) = items.line(what) {
                self.v.mail.problems.push(line);
            }
        }
        self.v
    }
}

impl ClientView {
    /// One mailbox of the reference against NEW (see `clients`).
    fn one(&mut self, path: &str, old: &Uids, now: Option<&Uids>) -> Option<String> {
        let mut d = clients::UidsDiff::default();
        let problem = d.one(path, old, now);
        self.mailboxes += d.mailboxes;
        self.advanced += d.advanced;
        problem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing as a host sends it: header, records sorted as `sort -k1,1 -k6`
    /// does, trailer with their count and digest.
    fn listing(text: &str, owners: &str) -> Receiver<Vec<u8>> {
        let mut records: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
        let key = |r: &Vec<u8>| {
            let path = r.splitn(6, |b| *b == b'\t').nth(5).unwrap_or(b"").to_vec();
            (r[0], path, r.clone())
        };
        records.sort_by_key(key);
        let body: Vec<u8> = records
            .iter()
            .flat_map(|r| [r.as_slice(), b"\0"].concat())
            .collect();
        let sum = ring::digest::digest(&ring::digest::SHA256, &body);
        let trailer = format!(
            "#cmfleet-end {} {}",
            records.len(),
            data_encoding::HEXLOWER.encode(sum.as_ref())
        );
        let mut out = vec![format!("#cmfleet-manifest 2 {owners}").into_bytes()];
        out.extend(records);
        out.push(trailer.into_bytes());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for r in out {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    const OWNERS: &str = "vmail=5:5 dkim=7:7";

    const OLD: &str = "M\td\t0\t0\t0:0\td/u\n\
                       K\tf\t10\t-\t0:0\td/u/1.M1\n\
                       K\tu\t1\t-\t-\td/u/1.M1\n\
                       K\tf\t20\t-\t5:5\td/u/2.M2\n\
                       K\tu\t2\t-\t-\td/u/2.M2\n\
                       M\tf\t3\t5\t5:5\td/u/password\n\
                       M\tf\t99\t5\t5:5\td/u/dovecot.index\n\
                       U\t-\t100\t3\t-\td/u/dovecot-uidlist\n\
                       D\t-\t-\taaaa\t-\t/etc/dkimkeys/opendkim.private\n";

    async fn verdict(old: &str, new: &str) -> Verdict {
        merge(listing(old, OWNERS), listing(new, OWNERS), None)
            .await
            .expect("complete listings")
    }

    #[tokio::test]
    async fn reads_moves_flags_new_mail_and_old_owners_are_fine() {
        let new = "M\td\t0\t0\t5:5\td/u\n\
                   K\tf\t10\t-\t5:5\td/u/1.M1\n\
                   K\tu\t1\t-\t-\td/u/1.M1\n\
                   K\tf\t20\t-\t5:5\td/u/2.M2\n\
                   K\tu\t2\t-\t-\td/u/2.M2\n\
                   K\tf\t7\t-\t5:5\td/u/3.M3\n\
                   M\tf\t3\t9\t5:5\td/u/password\n\
                   U\t-\t100\t4\t-\td/u/dovecot-uidlist\n\
                   S\tf\t1\t-\t7:7\t/etc/dkimkeys/opendkim.private\n\
                   D\t-\t-\taaaa\t-\t/etc/dkimkeys/opendkim.private\n";
        let v = verdict(OLD, new).await;
        assert_eq!(v.mail.problems, Vec::<String>::new());
        assert_eq!(
            (v.mail.messages, v.mail.accounts, v.mail.extra_on_new),
            (2, 1, 1)
        );
        assert_eq!(
            v.uids,
            ClientView {
                mailboxes: 1,
                advanced: 1,
                ..ClientView::default()
            }
        );
    }

    #[tokio::test]
    async fn a_lost_message_account_key_a_wrong_owner_and_new_uids_are_named() {
        let new = "K\tf\t11\t-\t0:0\td/u/1.M1\n\
                   K\tu\t9\t-\t-\td/u/1.M1\n\
                   U\t-\t200\t3\t-\td/u/dovecot-uidlist\n\
                   D\t-\t-\tbbbb\t-\t/etc/dkimkeys/opendkim.private\n";
        let v = verdict(OLD, new).await;
        let p = &v.mail.problems;
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p[0].contains("1 message(s) missing on NEW: d/u/2.M2"),
            "{p:?}"
        );
        assert!(p[1].contains("OLD 10 B, NEW 11 B"), "{p:?}");
        assert!(p[2].contains("account(s) missing on NEW: d/u"), "{p:?}");
        assert!(p[3]
            .contains("DKIM file(s) missing or different on NEW: /etc/dkimkeys/opendkim.private"));
        assert!(p[4].contains("d/u/1.M1 (0:0)"), "{p:?}");
        assert_eq!(
            v.uids.renumbered.shown,
            ["u/INBOX: 1 message(s) with another UID on NEW (e.g. 1.M1: UID 1 on OLD, 9 on NEW)"]
        );
        assert_eq!(
            v.uids.problems.shown,
            ["u/INBOX: UIDVALIDITY 200 on NEW, 100 on OLD"]
        );
    }

    /// A relay of any size: the merge holds a few records, not the listing.
    #[tokio::test]
    async fn thousands_of_differences_are_counted_and_a_few_named() {
        let old: String = (0..5000)
            .map(|i| format!("K\tf\t10\t-\t5:5\td/u/{i:05}.M\nK\tu\t{i}\t-\t-\td/u/{i:05}.M\n"))
            .collect();
        let new: String = (0..5000)
            .map(|i| {
                format!(
                    "K\tf\t10\t-\t5:5\td/u/{i:05}.M\nK\tu\t{}\t-\t-\td/u/{i:05}.M\n",
                    i + 1
                )
            })
            .collect();
        let v = verdict(&old, &format!("{new}M\tf\t1\t1\t5:5\td/x\n")).await;
        assert_eq!(v.mail.messages, 5000);
        assert_eq!(v.mail.problems, Vec::<String>::new());
        assert_eq!(v.uids.renumbered.total, 1, "one mailbox");
        assert!(v.uids.renumbered.shown[0].starts_with("u/INBOX: 5000 message(s)"));
        let none = verdict(&old, "").await;
        assert!(
            none.mail.problems[0]
                .starts_with("5000 message(s) missing on NEW: d/u/00000.M, d/u/00001.M"),
            "{:?}",
            none.mail.problems
        );
        assert!(none.mail.problems[0].ends_with(", ... (4995 more)"));
    }

    /// Step 4's record is read along with NEW's uidlists: a mailbox NEW lacks, one
    /// with another UIDVALIDITY and one past NEW's last are named; the queue on the
    /// way is kept for the queue check; OLD's uidlists now do not count.
    #[tokio::test]
    async fn the_cutover_record_is_read_along_with_news_uidlists() {
        use crate::host::proof::Keep;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = proof::Writer::create(dir.path(), "r").expect("create");
        let uids = |v: &str| Uids {
            uidvalidity: v.into(),
            uidnext: "5".into(),
        };
        w.queued(Queued {
            queue: "deferred".into(),
            id: "Q1".into(),
        });
        for (p, v) in [("d/a", "1"), ("d/b", "1"), ("d/c", "1"), ("d/e", "1")] {
            w.mailbox(format!("{p}/dovecot-uidlist").as_bytes(), uids(v));
        }
        w.commit().expect("commit");
        let reader = proof::Reader::open(dir.path(), "r")
            .expect("open")
            .expect("record");
        let mut reference = Reference::new(reader);
        let old = "U\t-\t9\t9\t-\td/a/dovecot-uidlist\n";
        let new = "U\t-\t1\t5\t-\td/a/dovecot-uidlist\n\
                   U\t-\t2\t5\t-\td/c/dovecot-uidlist\n\
                   U\t-\t1\t5\t-\td/d/dovecot-uidlist\n";
        let v = merge(
            listing(old, OWNERS),
            listing(new, OWNERS),
            Some(&mut reference),
        )
        .await
        .expect("complete listings");
        assert_eq!(
            v.uids.problems.shown,
            [
                "b/INBOX: no uidlist on NEW (Dovecot gives it a new UIDVALIDITY)",
                "c/INBOX: UIDVALIDITY 2 on NEW, 1 on OLD",
                "e/INBOX: no uidlist on NEW (Dovecot gives it a new UIDVALIDITY)",
            ]
        );
        assert_eq!(v.uids.mailboxes, 4);
        assert_eq!(reference.queue.len(), 1);
        assert!(reference.error.is_none());
    }
}
