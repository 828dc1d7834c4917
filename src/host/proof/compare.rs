//! The proof: OLD's and NEW's digests first, the merge of their listings when they
//! differ, and what counts as a difference.
//!
//! Each host's digest stands for its whole listing, normalised so that the
//! listings of a correct copy are equal byte for byte (`listing`'s module doc):
//! equal digests prove the copy without a record crossing the network, and only
//! the queue and the uidlists are then sent and merged, for the cutover record.
//! Digests that differ bring every record of both hosts, and the merge names each
//! difference, as if there were no digests.
//!
//! Only what the migration promises is compared, so nothing it changes on purpose
//! reads as a difference:
//! - mailboxes (`M`): path, type, size and mtime (whole seconds) equal; on NEW every
//!   entry owned by NEW's vmail (step 4 chowns the tree; OLD's owners do not matter;
//!   `=`, NEW's listing vouching for it, or the `uid:gid` its header names);
//!   directory sizes and times depend on the filesystem and are left out;
//! - state (`S`, `D`): the same entries, types, sizes, link targets and contents; on
//!   NEW /var/lib/acme owned by root and /etc/dkimkeys by the owner step 2 gave it;
//! - the Postfix queue (`Q`): per queue directory, the same files by content, since
//!   `postsuper -s` renames them;
//! - Dovecot's uidlists (`U`): the same UIDVALIDITY and UIDNEXT per mailbox (the
//!   files are copied byte for byte; this says so in the terms a mail client uses).
//!
//! The merge also hands what `verify` needs once OLD is gone to a [`Keep`] (the
//! cutover record, written as it goes).

use super::cutover::{Keep, Queued, Uids};
use super::listing::{Role, SEND_ALL, SEND_KEPT};
use super::read::{Incomplete, Listing, Owners, Record, Side};

/// At most this many differences are listed in an error.
const SHOWN: usize = 10;

/// The differences found: the first [`SHOWN`], and how many in all.
#[derive(Debug, Default)]
pub struct Differences {
    shown: Vec<String>,
    total: usize,
    /// Records merged (for the log).
    pub entries: u64,
    /// The records both digests vouch for, when they matched (then only the queue
    /// and the uidlists are merged).
    pub by_digest: Option<u64>,
    /// When each host's listing began to arrive: the host had walked, sorted and
    /// digested its trees by then (for the log's times of step 4's parts).
    pub old_ready: Option<tokio::time::Instant>,
    pub new_ready: Option<tokio::time::Instant>,
}

impl Differences {
    fn note(&mut self, s: String) {
        self.total += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(s);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many differences in all (only the first few are kept).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Human-readable differences, empty when there were none.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.total > self.shown.len() {
            let more = self.total - self.shown.len();
            self.shown.push(format!("... and {more} more differences"));
        }
        self.shown
    }

    /// Hands what the cutover record needs from OLD's record `old` and NEW's `new`
    /// to `keep`.
    fn remember(keep: &mut (dyn Keep + Send), old: Option<&Record>, new: Option<&Record>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if let Some(r) = old.filter(|r| r.section == b'U') {
            let uids = Uids {
                uidvalidity: text(&r.fields[1]),
                uidnext: text(&r.fields[2]),
            };
            keep.mailbox(&r.path, uids);
        }
        if let Some(r) = new.filter(|r| r.section == b'Q') {
            let path = text(&r.path);
            let queue = path.split('/').next().unwrap_or_default().to_string();
            let id = text(&r.fields[3]);
            keep.queued(Queued { queue, id });
        }
    }

    /// A record on one side only.
    fn one_side(&mut self, r: &Record, missing_on_new: bool) {
        let (what, path) = match r.section {
            b'Q' => {
                let shown = r.shown_path();
                let (queue, sum) = shown.split_once('/').unwrap_or((&shown, ""));
                let short = sum.get(..12).unwrap_or(sum);
                ("queue file", format!("{queue} (content {short}...)"))
            }
            b'D' => ("content of", r.shown_path()),
            b'U' => ("uidlist", r.shown_path()),
            _ => ("", r.shown_path()),
        };
        let side = if missing_on_new {
            "missing on new"
        } else {
            "only on new"
        };
        let what = if what.is_empty() {
            String::new()
        } else {
            format!("{what} ")
        };
        self.note(format!("{side}: {what}{path}"));
    }

    /// The same path on both sides.
    fn pair(&mut self, old: &Record, new: &Record, owners: &Owners) {
        let path = || new.shown_path();
        let [kind, size, third, _] = &old.fields;
        let [new_kind, new_size, new_third, new_owner] = &new.fields;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let same = match old.section {
            b'M' if kind == b"d" => kind == new_kind,
            b'M' => kind == new_kind && size == new_size && seconds(third) == seconds(new_third),
            b'S' => kind == new_kind && (kind != b"f" || size == new_size) && third == new_third,
            b'D' => third == new_third,
            b'U' => size == new_size && third == new_third,
            _ => true,
        };
        if !same {
            let detail = match old.section {
                b'D' => "content differs".to_string(),
                b'U' => format!(
                    "UIDVALIDITY/UIDNEXT old {}/{}, new {}/{}",
                    text(size),
                    text(third),
                    text(new_size),
                    text(new_third)
                ),
                _ => format!(
                    "old {} {} B {}, new {} {} B {}",
                    text(kind),
                    text(size),
                    text(third),
                    text(new_kind),
                    text(new_size),
                    text(new_third)
                ),
            };
            self.note(format!("differs: {} ({detail})", path()));
        }
        if let Some(want) = expected_owner(new, owners) {
            if new_owner.as_slice() != b"=" && new_owner.as_slice() != want.as_bytes() {
                self.note(format!(
                    "owner on new: {} is {}, not {want}",
                    path(),
                    text(new_owner)
                ));
            }
        }
    }
}

/// Who must own `new`'s entry after step 4; `None`: not compared. NEW's listing
/// reads exactly these owners as `=` (`listing::owners`).
fn expected_owner<'a>(new: &Record, owners: &'a Owners) -> Option<std::borrow::Cow<'a, str>> {
    match new.section {
        b'M' => Some(
            owners
                .vmail
                .as_deref()
                .unwrap_or("vmail (no such user)")
                .into(),
        ),
        b'S' if new.path.starts_with(b"/var/lib/acme") => Some("0:0".into()),
        b'S' if new.path.starts_with(b"/etc/dkimkeys") => owners.dkim.as_deref().map(Into::into),
        _ => None,
    }
}

/// An mtime (`%T@`) in whole seconds: filesystems keep different sub-second
/// precision, and whole seconds are what matter (a `password` file's mtime is its
/// user's last login).
fn seconds(mtime: &[u8]) -> &[u8] {
    mtime.split(|b| *b == b'.').next().unwrap_or(mtime)
}

/// Proves NEW's copy against OLD: their digests, then the merge of what each host
/// sends (every record if the digests differ, else the queue and the uidlists),
/// as it arrives (memory stays bounded by the channels), handing OLD's uidlists
/// and NEW's queue to `keep`. An incomplete listing on either side is an error,
/// never a result; a host is never left waiting for its answer (dropped, its
/// stdin ends).
pub async fn compare(
    old: Side,
    new: Side,
    keep: &mut (dyn Keep + Send),
) -> Result<Differences, Incomplete> {
    let opened = |role: Role, rx, digested: Option<tokio::sync::oneshot::Sender<()>>| async move {
        let (mut listing, owners) = Listing::open(role.name(), rx).await?;
        let ready = tokio::time::Instant::now();
        let digest = listing.digest(role.name()).await?;
        if let Some(d) = digested {
            let _ = d.send(());
        }
        Ok::<_, Incomplete>((listing, owners, digest, ready))
    };
    let (old_opened, new_opened) = (
        opened(Role::Old, old.records, old.digested),
        opened(Role::New, new.records, new.digested),
    );
    let (
        (mut old_listing, _, old_digest, old_ready),
        (mut new_listing, owners, new_digest, new_ready),
    ) = tokio::try_join!(old_opened, new_opened)?;
    let by_digest = (old_digest == new_digest).then_some(old_digest.count);
    let ask = format!(
        "{}\n",
        if by_digest.is_some() {
            SEND_KEPT
        } else {
            SEND_ALL
        }
    );
    // A host that ended since cannot be asked: its listing then ends without its
    // trailer, which the merge finds.
    let _ = old.answer.send(ask.clone().into_bytes());
    let _ = new.answer.send(ask.into_bytes());
    let mut d = Differences {
        old_ready: Some(old_ready),
        new_ready: Some(new_ready),
        by_digest,
        ..Differences::default()
    };
    Box::pin(merge(
        &mut old_listing,
        &mut new_listing,
        &owners,
        keep,
        &mut d,
    ))
    .await?;
    Ok(d)
}

/// The record-by-record merge of two sorted listings into `d`.
async fn merge(
    old: &mut Listing,
    new: &mut Listing,
    owners: &Owners,
    keep: &mut (dyn Keep + Send),
    d: &mut Differences,
) -> Result<(), Incomplete> {
    let (mut x, mut y) = next_both(old, new).await?;
    loop {
        let order = match (&x, &y) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.key().cmp(&b.key()),
        };
        d.entries += 1;
        match (order, x.as_ref(), y.as_ref()) {
            (std::cmp::Ordering::Less, Some(a), _) => {
                Differences::remember(keep, Some(a), None);
                d.one_side(a, true);
                x = old.next().await?;
            }
            (std::cmp::Ordering::Greater, _, Some(b)) => {
                Differences::remember(keep, None, Some(b));
                d.one_side(b, false);
                y = new.next().await?;
            }
            (_, Some(a), Some(b)) => {
                Differences::remember(keep, Some(a), Some(b));
                d.pair(a, b, owners);
                (x, y) = next_both(old, new).await?;
            }
            _ => return Ok(()),
        }
    }
}

type Pair = (Option<Record>, Option<Record>);

async fn next_both(old: &mut Listing, new: &mut Listing) -> Result<Pair, Incomplete> {
    let (a, b) = tokio::join!(old.next(), new.next());
    Ok((a?, b?))
}
