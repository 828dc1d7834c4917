//! The listing each host sends for the proof: one command for OLD, one for NEW.
//!
//! Records are NUL-terminated (file names may hold tabs, newlines and bytes that
//! are not UTF-8; only NUL and `/` cannot appear in them) and have six tab-separated
//! fields, the path last, so a path may hold tabs too:
//!
//! | section | fields 2-5 | field 6 |
//! |---|---|---|
//! | `M` mailboxes | type, size, mtime (whole seconds), owner | path under /home/vmail/mail |
//! | `S` state entries | type, size (`0` unless a regular file), link target, owner | absolute path |
//! | `D` state contents | `-`, `-`, sha256, `-` | absolute path of a regular file |
//! | `Q` Postfix queue | `-`, `-`, `-`, queue ID (file name) | `QUEUE/sha256` of one queue file |
//! | `U` Dovecot uidlists | `-`, UIDVALIDITY, UIDNEXT (as IMAP sees it), `-` | path of a `dovecot-uidlist` |
//!
//! An owner is `uid:gid`, or `=` where the listing vouches that it is what the
//! migration gives the entry on NEW ([`Role`]): NEW's listing reads as `=` the
//! mailboxes' owner when it is the host's vmail, /var/lib/acme's when root, and
//! /etc/dkimkeys' when the DKIM owner recorded on it (any, when none is); the
//! others' owners are not compared, and read `=`. OLD's listing reads every owner
//! as `=`: OLD's owners are not compared. So the listings of a correct copy are
//! equal byte for byte but for the queue IDs (`postsuper -s` renames queue files),
//! and what the proof compares and what it leaves out is the same whether the
//! controller merges the records (`compare`) or only compares the digests below.
//! Mtimes are whole seconds (`%Ts`): filesystems keep different sub-second
//! precision, and a copy made by `tar` (step 1) keeps none, which rsync then leaves.
//!
//! The records are sorted on the host (section, then path, bytewise; each section
//! on its own, and they follow one another: D, M, Q, S, U). The exchange:
//! 1. a header, `#cmfleet-manifest 2 vmail=UID:GID dkim=UID:GID` (the host's vmail
//!    owner and the DKIM owner cmfleet recorded on it; `-` unknown);
//! 2. a digest line, `#cmfleet-digest ROLE COUNT SHA256` (`old` or `new`): the count
//!    of the host's records, and the SHA-256 of its sections' SHA-256s (`sha256sum`'s
//!    lines, D, M, Q, S, U), each section sorted and every queue ID read as `-`. The
//!    M section, nearly all of a relay, is digested while the rest is listed;
//! 3. the host then reads the controller's answer on its stdin: `all`, every record;
//!    `kept`, only the `Q` and `U` records (the digests matched, so the records
//!    would match too; these are what the cutover record keeps). At EOF (the
//!    controller gave up) it sends nothing more;
//! 4. the records asked for, and a trailer, `#cmfleet-end COUNT SHA256`, over them.
//!
//! Every part of the listing writes into a file and its exit status is checked (no
//! pipeline hides a failing `find`); only a complete listing is digested and sent.
//! The mailboxes are walked once, in three parts ([`mail_walk`]: the top, then two
//! halves at once): the same `find`s write the `M` records and the names of the
//! uidlists `awk` reads (a second `find` cost a second walk of half a million
//! entries inside the downtime; picking them out of the `M` records with `sed`,
//! 0.7 s).

use super::prune::Handoff;
use crate::host::catalogue::{ACME_DIR, DKIM_OWNER_FILE, MAIL_DIR, OPTIONAL_FILES};
use crate::model::inventory::TransferMode;

/// First record: `#cmfleet-manifest 2 vmail=UID:GID dkim=UID:GID` (`-` unknown).
pub const HEADER: &str = "#cmfleet-manifest 2";
/// The proof's second record: `#cmfleet-digest ROLE COUNT SHA256`.
pub const DIGEST: &str = "#cmfleet-digest";
/// Last record: `#cmfleet-end COUNT SHA256`.
pub const TRAILER: &str = "#cmfleet-end";
/// The controller's answers to a proof listing's digest: send every record, or
/// only the queue and the uidlists (what the cutover record keeps).
pub const SEND_ALL: &str = "all";
pub const SEND_KEPT: &str = "kept";
/// Where the DKIM keys are: NEW's are owned as step 2 made them.
pub const DKIM_DIR: &str = "/etc/dkimkeys";
/// The state the proof compares by content.
pub const STATE_PATHS: [&str; 2] = [ACME_DIR, DKIM_DIR];
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

/// Which host a proof listing is for: what its owners read as `=` (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Old,
    New,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Old => "old",
            Role::New => "new",
        }
    }
}

/// What a listing is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Step 4's proof on OLD or NEW: every entry as it is, digested first.
    Proof(Role),
    /// `verify`: messages by identity, not by name ([`verify_listing`]), every
    /// owner as it is, sent whole.
    Verify,
}

/// The proof's listing on `role`'s host.
pub fn listing(role: Role) -> String {
    listing_for(Purpose::Proof(role), &Steps::default())
}

/// The proof's listing on `role`'s host at a first final sync that prunes
/// ([`prune`](super::prune)): OLD's hands its mailbox paths to NEW before its
/// digest, NEW's removes what they do not hold before its own.
pub fn pruning_listing(role: Role, handoff: &Handoff) -> String {
    let steps = match role {
        Role::Old => Steps {
            after_walk: super::prune::hand_over(handoff),
            before_digest: "",
            dir_times: true,
        },
        Role::New => Steps {
            after_walk: super::prune::prune(handoff),
            before_digest: super::prune::pruned(),
            dir_times: false,
        },
    };
    listing_for(Purpose::Proof(role), &steps)
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
    listing_for(Purpose::Verify, &Steps::default())
}

/// What a proof listing runs besides the listing itself.
#[derive(Default)]
struct Steps {
    /// In /home/vmail/mail right after the walk (`$t/m` sorted by then), before
    /// the uidlists (`$t/ul`) are read.
    after_walk: String,
    /// Right before the digest.
    before_digest: &'static str,
    /// The walk also writes each mailbox directory's mtime into `$t/dt`
    /// (`MTIME\tPATH\0`, [`prune::DIR_TIMES`](super::prune::DIR_TIMES)).
    dir_times: bool,
}

fn listing_for(purpose: Purpose, steps: &Steps) -> String {
    let (awk, mail) = match purpose {
        Purpose::Proof(_) => (
            UIDLISTS.to_string(),
            format!(
                r#"LC_ALL=C sort -z -t "$tab" -k1,1 -k6 -o "$t/m" "$t/m" || die "sort failed"
{}# The mailboxes' records, most of the listing, are final: digested and counted
# while the rest is listed.
sha256sum < "$t/m" > "$t/m.sum" & msum=$!
tr -cd '\0' < "$t/m" | wc -c > "$t/m.n" & mnum=$!
"#,
                steps.after_walk
            ),
        ),
        Purpose::Verify => (
            format!("{UIDLISTS}{MESSAGE_UIDS}"),
            r#"sed -z -E "s/^M${tab}f${tab}([^${tab}]*)${tab}[^${tab}]*${tab}([^${tab}]*)${tab}(.*)\/(new|cur)\/([^/:]*)(:[^/]*)?\$/K${tab}f${tab}\1${tab}-${tab}\2${tab}\3\/\5/" "$t/m" > "$t/k" || die "sed failed"
mv "$t/k" "$t/m" || die "cannot write a temp file"
"#
            .to_string(),
        ),
    };
    let owners = owners(purpose);
    let walk = mail_walk(steps.dir_times);
    let tail = match purpose {
        Purpose::Proof(role) => proof_tail(role, steps.before_digest),
        Purpose::Verify => verify_tail(),
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
{owners}
cd {MAIL_DIR} || die "cannot enter {MAIL_DIR}"
{walk}
{mail}# The uidlists are read while the rest is listed (nothing removes them now).
# shellcheck disable=SC2016 # awk's program: its $ are awk's fields
xargs -0 -r awk '{awk}' < "$t/ul" > "$t/u" & up=$!
set --; for p in {state}; do [ -e "$p" ] && set -- "$@" "$p"; done
: > "$t/s0"; : > "$t/d0"; : > "$t/q0"
if [ $# -gt 0 ]; then
  find "$@" \( -type d -printf 'S\td\t0\t-\t%U:%G\t%p\0' \) -o \( -type l -printf 'S\tl\t0\t%l\t%U:%G\t%p\0' \) -o \( -type f -printf 'S\tf\t%s\t-\t%U:%G\t%p\0' \) -o -printf 'S\t%y\t0\t-\t%U:%G\t%p\0' > "$t/s0" || die "find failed in $*"
  find "$@" -type f -exec sha256sum -z -- {{}} + > "$t/d0" || die "cannot read the files of $*"
fi
sed -z "$so" "$t/s0" > "$t/s" || die "sed failed"
if [ -d {SPOOL} ]; then
  cd {SPOOL} || die "cannot enter {SPOOL}"
  set --; for q in {queues}; do [ -d "$q" ] && set -- "$@" "$q"; done
  if [ $# -gt 0 ]; then find "$@" -type f -exec sha256sum -z -- {{}} + > "$t/q0" || die "cannot read the Postfix queue"; fi
fi
sed -z 's/^\([0-9a-f]\{{64\}}\)  /D\t-\t-\t\1\t-\t/' "$t/d0" > "$t/d" || die "sed failed"
sed -z 's/^\([0-9a-f]\{{64\}}\)  \([^/]*\)\/\(.*\/\)\{{0,1\}}\([^/]*\)$/Q\t-\t-\t-\t\4\t\2\/\1/' "$t/q0" > "$t/q" || die "sed failed"
wait "$up" || die "cannot read the uidlists in {MAIL_DIR}"
{tail}"#
    )
}

/// The mailboxes' walk, into `$t/m` (the `M` records) and `$t/ul` (the uidlists'
/// `./PATH`), in three `find`s: down to the mailboxes' own directories (depth 2),
/// then below them in two halves at once (`-files0-from`: the depth-2 directories,
/// every other one), each part into a file of its own and each exit status checked.
/// After step 4's copy NEW's walk is the critical path, and a second core or disk
/// queue does it in about half the time. `"$@"`: the owner test ([`owners`]).
/// `dir_times`: each directory's mtime goes into `$t/dt` too (see [`Steps`]).
fn mail_walk(dir_times: bool) -> String {
    // %P: the path below the start `.`; %p: the whole path, the start a depth-2
    // directory given relative to the mailboxes.
    let uidlists = |f: char, out: &str| {
        format!(r#"\( -name dovecot-uidlist -type f -fprintf "$t/{out}" './%{f}\0' -o -true \)"#)
    };
    let records = |f: char| {
        format!(
            r#"\( -type d \( "$@" -printf 'M\td\t0\t0\t=\t%{f}\0' -o -printf 'M\td\t0\t0\t%U:%G\t%{f}\0' \) \) -o \( "$@" -printf 'M\t%y\t%s\t%Ts\t=\t%{f}\0' \) -o -printf 'M\t%y\t%s\t%Ts\t%U:%G\t%{f}\0'"#
        )
    };
    let (top, half) = (records('P'), records('p'));
    // Written beside the records, in the same `find`s: the directories' times cost
    // one more `-fprintf` per directory, not another walk.
    let times = |f: char, out: &str| {
        if dir_times {
            format!(r#"\( -type d -fprintf "$t/{out}" '%Ts\t%{f}\0' -o -true \) , "#)
        } else {
            String::new()
        }
    };
    let (dta, dtb, dtc) = (times('P', "dta"), times('p', "dtb"), times('p', "dtc"));
    let (ula, ulb, ulc) = (
        uidlists('P', "ula"),
        uidlists('p', "ulb"),
        uidlists('p', "ulc"),
    );
    format!(
        r#"# %Ts: whole seconds since the epoch (strftime's %s); TZ=UTC0 spares find a read of
# /etc/localtime for every file.
TZ=UTC0 find . -ignore_readdir_race -mindepth 1 -maxdepth 2 {dta}{ula} , \( -path './*/*' -type d -fprintf "$t/starts" '%P\0' -o -true \) , {top} > "$t/ma" || die "find failed in {MAIL_DIR}"
: > "$t/sa"; : > "$t/sb"
awk 'BEGIN {{ RS = ORS = "\0" }} {{ print > (NR % 2 ? a : b) }}' a="$t/sa" b="$t/sb" "$t/starts" || die "cannot split the mailboxes in two"
# shellcheck disable=SC2185 # the starting points are in the file -files0-from names
TZ=UTC0 find -files0-from "$t/sa" -ignore_readdir_race -mindepth 1 {dtb}{ulb} , {half} > "$t/mb" & wb=$!
# shellcheck disable=SC2185 # the starting points are in the file -files0-from names
TZ=UTC0 find -files0-from "$t/sb" -ignore_readdir_race -mindepth 1 {dtc}{ulc} , {half} > "$t/mc" || die "find failed in {MAIL_DIR}"
wait "$wb" || die "find failed in {MAIL_DIR}"
cat "$t/ma" "$t/mb" "$t/mc" > "$t/m" || die "cannot write a temp file"
cat "$t/ula" "$t/ulb" "$t/ulc" > "$t/ul" || die "cannot write a temp file"{}
rm -f "$t/ma" "$t/mb" "$t/mc""#,
        if dir_times {
            "\ncat \"$t/dta\" \"$t/dtb\" \"$t/dtc\" > \"$t/dt\" || die \"cannot write a temp file\""
        } else {
            ""
        }
    )
}

/// The owners a listing reads as `=` (module doc): `find`'s test for a mailbox
/// entry, in `"$@"`, and the `sed` program for the state entries, in `$so`.
fn owners(purpose: Purpose) -> String {
    // The fields before a state entry's owner, as sed group 1.
    let head = r"\(S\(${tab}[^${tab}]*\)\{3\}${tab}\)";
    let path = |p: &str| p.replace('/', r"\/");
    match purpose {
        Purpose::Proof(Role::Old) => {
            format!(r#"set -- -true; so="s/^{head}[^${{tab}}]*${{tab}}/\1=${{tab}}/""#)
        }
        // What `compare::expected_owner` wants on NEW; any other owner stays as it
        // is, for the merge to name. A DKIM owner that is not `uid:gid` matches none.
        Purpose::Proof(Role::New) => {
            let (acme, dkim) = (path(ACME_DIR), path(DKIM_DIR));
            format!(
                r#"case $vm in *[!0-9:]*) set -- -false ;; *) set -- -uid "${{vm%:*}}" -gid "${{vm#*:}}" ;; esac
case $dk in -|'') dko="[^${{tab}}]*" ;; *[!0-9:]*) dko='#' ;; *) dko=$dk ;; esac
so="s/^{head}0:0${{tab}}{acme}/\1=${{tab}}{acme}/
s/^{head}$dko${{tab}}{dkim}/\1=${{tab}}{dkim}/
/^{head}[^${{tab}}]*${{tab}}{acme}/b
/^{head}[^${{tab}}]*${{tab}}{dkim}/b
s/^{head}[^${{tab}}]*${{tab}}/\1=${{tab}}/""#
            )
        }
        // verify checks NEW's owners itself, as they are.
        Purpose::Verify => "set -- -false; so=".to_string(),
    }
}

/// The proof's end (`M` is sorted, and being digested, since the walk): each
/// section sorted on its own, `before_digest`, the digest of the normalised whole
/// (queue IDs read as `-`; module doc), then what the controller asks for.
fn proof_tail(role: Role, before_digest: &str) -> String {
    let role = role.name();
    format!(
        r#"for f in d q s u; do LC_ALL=C sort -z -t "$tab" -k1,1 -k6 -o "$t/$f" "$t/$f" || die "sort failed"; done
sed -z "s/^\(Q\(${{tab}}[^${{tab}}]*\)\{{3\}}${{tab}}\)[^${{tab}}]*${{tab}}/\1-${{tab}}/" "$t/q" > "$t/qn" || die "sed failed"
{before_digest}
wait "$msum" || die "cannot digest the listing"
wait "$mnum" || die "cannot count the listing"
{{ sha256sum < "$t/d" && cat "$t/m.sum" && sha256sum < "$t/qn" && sha256sum < "$t/s" && sha256sum < "$t/u"; }} > "$t/sums" || die "cannot digest the listing"
sum=$(sha256sum < "$t/sums") || die "cannot digest the listing"
mn=$(cat "$t/m.n") || die "cannot count the listing"
rn=$(cat "$t/d" "$t/qn" "$t/s" "$t/u" | tr -cd '\0' | wc -c) || die "cannot count the listing"
n=$((mn + rn))
printf '{HEADER} vmail=%s dkim=%s\0' "$vm" "$dk"
printf '{DIGEST} {role} %s %s\0' "$n" "${{sum%% *}}"
# The controller's answer; none (EOF): it gave up on this listing.
IFS= read -r want || exit 0
case $want in
  {SEND_ALL}) set -- "$t/d" "$t/m" "$t/q" "$t/s" "$t/u" ;;
  {SEND_KEPT}) set -- "$t/q" "$t/u" ;;
  *) die "unexpected answer: $want" ;;
esac
cat "$@" > "$t/out" || die "cannot write a temp file"
n=$(tr -cd '\0' < "$t/out" | wc -c) || die "cannot count the listing"
sum=$(sha256sum < "$t/out") || die "cannot digest the listing"
cat "$t/out" || die "cannot send the listing"
printf '{TRAILER} %s %s\0' "$n" "${{sum%% *}}""#
    )
}

/// `verify`'s end: one sort of everything (its `K` records fall between `D` and
/// `M`), then the whole listing.
fn verify_tail() -> String {
    format!(
        r#"LC_ALL=C sort -z -t "$tab" -k1,1 -k6 -o "$t/all" "$t/m" "$t/u" "$t/s" "$t/d" "$t/q" || die "sort failed"
n=$(tr -cd '\0' < "$t/all" | wc -c) || die "cannot count the listing"
sum=$(sha256sum < "$t/all") || die "cannot digest the listing"
printf '{HEADER} vmail=%s dkim=%s\0' "$vm" "$dk"
cat "$t/all" || die "cannot send the listing"
printf '{TRAILER} %s %s\0' "$n" "${{sum%% *}}""#
    )
}

/// On NEW after the final sync, in one command: the ownership repair (small trees
/// after a direct copy, which set the mailboxes' owners itself), then the listing.
/// `acme`: whether /var/lib/acme must be there (`catalogue::acme_required`);
/// `handoff`: OLD's paths to prune by, at a first final sync ([`pruning_listing`]).
pub fn settle_new(transfer: TransferMode, acme: bool, handoff: Option<&Handoff>) -> String {
    format!(
        "{} || exit $?\n{}",
        crate::host::catalogue::fix_ownership(transfer, acme),
        match handoff {
            Some(h) => pruning_listing(Role::New, h),
            None => listing(Role::New),
        }
    )
}
