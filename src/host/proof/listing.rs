//! The listing each host sends for the proof: one command, run on OLD and on NEW.
//!
//! Records are NUL-terminated (file names may hold tabs, newlines and bytes that
//! are not UTF-8; only NUL and `/` cannot appear in them) and have six tab-separated
//! fields, the path last, so a path may hold tabs too:
//!
//! | section | fields 2-5 | field 6 |
//! |---|---|---|
//! | `M` mailboxes | type, size, mtime, `uid:gid` | path under /home/vmail/mail |
//! | `S` state entries | type, size, link target, `uid:gid` | absolute path |
//! | `D` state contents | `-`, `-`, sha256, `-` | absolute path of a regular file |
//! | `Q` Postfix queue | `-`, `-`, `-`, queue ID (file name) | `QUEUE/sha256` of one queue file |
//! | `U` Dovecot uidlists | `-`, UIDVALIDITY, UIDNEXT (as IMAP sees it), `-` | path of a `dovecot-uidlist` |
//!
//! The records are sorted on the host (section, then path, bytewise). A header comes
//! first (the host's vmail owner and the DKIM owner cmfleet recorded on it) and a
//! trailer last, computed on the host over the sorted records: their count and
//! SHA-256. Every part of the listing writes into a file and its exit status is
//! checked (no pipeline hides a failing `find`); only a complete listing is sent.
//!
//! The mailboxes are walked once: the uidlists `awk` reads are the regular files
//! named `dovecot-uidlist` among the `M` records (a second `find` cost a second
//! walk of half a million entries inside the downtime).

use crate::host::catalogue::{DKIM_OWNER_FILE, MAIL_DIR, OPTIONAL_FILES};
use crate::model::inventory::TransferMode;

/// First record: `#cmfleet-manifest 1 vmail=UID:GID dkim=UID:GID` (`-` unknown).
pub const HEADER: &str = "#cmfleet-manifest 1";
/// Last record: `#cmfleet-end COUNT SHA256`.
pub const TRAILER: &str = "#cmfleet-end";
/// The state the proof compares by content.
pub const STATE_PATHS: [&str; 2] = ["/var/lib/acme", "/etc/dkimkeys"];
/// Postfix's queue directories: their files are compared per directory by content
/// (`postsuper -s` renames queue files after their new inode numbers).
pub const QUEUES: [&str; 6] = [
    "maildrop", "incoming", "active", "deferred", "hold", "corrupt",
];
pub const SPOOL: &str = "/var/spool/postfix";

/// Run by `awk` over a batch of `dovecot-uidlist` files: one `U` record each, with
/// the header's UIDVALIDITY (`3 V<uidvalidity> N<uidnext> G<guid>`; `-` if absent) and
/// the UIDNEXT a client sees: the header's, or one past the highest UID listed if that
/// is more (Dovecot appends lines without rewriting the header). One process for all
/// files: this runs inside the downtime. An empty file has no record (its `M` record
/// still compares); one that cannot be read fails the listing (awk exits 2).
const UIDLISTS: &str = r#"function out() { if (f != "") printf "U\t-\t%s\t%.0f\t-\t%s%c", v, (m > n ? m : n), substr(f, 3), 0 }
FNR == 1 { out(); f = FILENAME; v = "-"; n = 0; m = 0; for (i = 2; i <= NF; i++) { if ($i ~ /^V/) v = substr($i, 2); else if ($i ~ /^N/) n = substr($i, 2) + 0 } next }
$1 ~ /^[0-9]+$/ && $1 + 1 > m { m = $1 + 1 }
END { out() }"#;

/// `verify`'s addition to [`UIDLISTS`]: a `K` record per message a uidlist names,
/// `K u UID - - MAILBOX/UNIQUE` (a uidlist line is `UID [EXT...] :FILENAME`; the
/// unique name is the file name before `:2,flags`; the mailbox is the uidlist's
/// directory).
const MESSAGE_UIDS: &str = r#"
FNR > 1 && $1 ~ /^[0-9]+$/ { i = index($0, " :"); if (i == 0) next; u = substr($0, i + 2); sub(/:.*/, "", u); printf "K\tu\t%s\t-\t-\t%s/%s%c", $1, substr(FILENAME, 3, length(FILENAME) - 18), u, 0 }"#;

/// What a listing is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Step 4's proof: every entry as it is.
    Proof,
    /// `verify`: messages by identity, not by name ([`verify_listing`]).
    Verify,
}

/// The listing command (the same on both hosts).
pub fn listing() -> String {
    listing_for(Purpose::Proof)
}

/// `verify`'s listing: the proof's, but each message (a regular file in a `new/` or
/// `cur/` directory) is a `K` record keyed by its identity, `MAILBOX/UNIQUE` (the
/// maildir unique name, before `:2,flags`), with its size and owner, beside a `K`
/// record of the UID each uidlist gives it:
///
/// | section | fields 2-5 | field 6 |
/// |---|---|---|
/// | `K` message file | `f`, size, `-`, `uid:gid` | `MAILBOX/UNIQUE` |
/// | `K` message UID | `u`, UID, `-`, `-` | `MAILBOX/UNIQUE` |
///
/// A message moved from new/ to cur/ or flagged keeps its key, and sorting on the
/// host (bounded memory there, `sort` spills to disk) puts both hosts' records of a
/// message side by side, so `verify` merges the two listings as they arrive like the
/// proof does, whatever the relay's size.
pub fn verify_listing() -> String {
    listing_for(Purpose::Verify)
}

fn listing_for(purpose: Purpose) -> String {
    let (awk, mail) = match purpose {
        Purpose::Proof => (UIDLISTS.to_string(), ""),
        Purpose::Verify => (
            format!("{UIDLISTS}{MESSAGE_UIDS}"),
            r#"sed -z -E "s/^M${tab}f${tab}([^${tab}]*)${tab}[^${tab}]*${tab}([^${tab}]*)${tab}(.*)\/(new|cur)\/([^/:]*)(:[^/]*)?\$/K${tab}f${tab}\1${tab}-${tab}\2${tab}\3\/\5/" "$t/m" > "$t/k" || die "sed failed"
mv "$t/k" "$t/m" || die "cannot write a temp file"
"#,
        ),
    };
    let state = STATE_PATHS
        .iter()
        .chain(OPTIONAL_FILES.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let queues = QUEUES.join(" ");
    format!(
        r#"t=$(mktemp -d) || exit 70; trap 'rm -rf "$t"' EXIT; tab=$(printf '\t')
die() {{ echo "cmfleet listing on $(hostname): $1" >&2; exit 70; }}
vm=$(id -u vmail 2>/dev/null):$(id -g vmail 2>/dev/null); [ "$vm" = : ] && vm=-
dk=$(cat {DKIM_OWNER_FILE} 2>/dev/null) || dk=-
cd {MAIL_DIR} || die "cannot enter {MAIL_DIR}"
find . -ignore_readdir_race -mindepth 1 \( -type d -printf 'M\td\t0\t0\t%U:%G\t%P\0' \) -o -printf 'M\t%y\t%s\t%T@\t%U:%G\t%P\0' > "$t/m" || die "find failed in {MAIL_DIR}"
sed -z -n "s/^M${{tab}}f${{tab}}\([^${{tab}}]*${{tab}}\)\{{3\}}\(\(.*\/\)\{{0,1\}}dovecot-uidlist\)\$/.\/\2/p" "$t/m" > "$t/ul" || die "sed failed"
# shellcheck disable=SC2016 # awk's program: its $ are awk's fields
xargs -0 -r awk '{awk}' < "$t/ul" > "$t/u" || die "cannot read the uidlists in {MAIL_DIR}"
{mail}set --; for p in {state}; do [ -e "$p" ] && set -- "$@" "$p"; done
: > "$t/s"; : > "$t/d0"; : > "$t/q0"
if [ $# -gt 0 ]; then
  find "$@" \( -type d -printf 'S\td\t0\t-\t%U:%G\t%p\0' \) -o \( -type l -printf 'S\tl\t0\t%l\t%U:%G\t%p\0' \) -o -printf 'S\t%y\t%s\t-\t%U:%G\t%p\0' > "$t/s" || die "find failed in $*"
  find "$@" -type f -exec sha256sum -z -- {{}} + > "$t/d0" || die "cannot read the files of $*"
fi
if [ -d {SPOOL} ]; then
  cd {SPOOL} || die "cannot enter {SPOOL}"
  set --; for q in {queues}; do [ -d "$q" ] && set -- "$@" "$q"; done
  if [ $# -gt 0 ]; then find "$@" -type f -exec sha256sum -z -- {{}} + > "$t/q0" || die "cannot read the Postfix queue"; fi
fi
sed -z 's/^\([0-9a-f]\{{64\}}\)  /D\t-\t-\t\1\t-\t/' "$t/d0" > "$t/d" || die "sed failed"
sed -z 's/^\([0-9a-f]\{{64\}}\)  \([^/]*\)\/\(.*\/\)\{{0,1\}}\([^/]*\)$/Q\t-\t-\t-\t\4\t\2\/\1/' "$t/q0" > "$t/q" || die "sed failed"
LC_ALL=C sort -z -t "$tab" -k1,1 -k6 -o "$t/all" "$t/m" "$t/u" "$t/s" "$t/d" "$t/q" || die "sort failed"
n=$(tr -cd '\0' < "$t/all" | wc -c) || die "cannot count the listing"
sum=$(sha256sum < "$t/all") || die "cannot digest the listing"
printf '{HEADER} vmail=%s dkim=%s\0' "$vm" "$dk"
cat "$t/all" || die "cannot send the listing"
printf '{TRAILER} %s %s\0' "$n" "${{sum%% *}}""#
    )
}

/// On NEW after the final sync, in one command: the ownership repair (small trees
/// after a direct copy, which set the mailboxes' owners itself), then the listing.
/// `acme`: whether /var/lib/acme must be there (`catalogue::acme_required`).
pub fn settle_new(transfer: TransferMode, acme: bool) -> String {
    format!(
        "{} || exit $?\n{}",
        crate::host::catalogue::fix_ownership(transfer, acme),
        listing()
    )
}
