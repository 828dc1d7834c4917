//! The mailboxes' prune: at step 4's first final sync, NEW drops what OLD does not
//! have by comparing the two proof listings, instead of rsync's `--delete`. The
//! early prune ([`early`](super::early)) does it while the copy runs, from a list of
//! NEW's paths made before the downtime; this one, in NEW's listing after the
//! copy, when the early one did not (no list, or it failed).
//!
//! The handoff file, `/root/.ssh/cmfleet_old_paths.NONCE` on NEW (root's only, beside
//! cmfleet's other files there; a lab host has its own /root/.ssh): OLD's mailbox paths
//! (field 6 of its `M` records, relative to /home/vmail/mail), NUL-terminated, in
//! the listings' own order (bytewise). OLD's proof listing writes it through the
//! copy's own ssh (as `.part`, renamed once whole) before it sends its digest, and
//! the controller starts NEW's listing only once it has that digest. NEW's listing,
//! right after its walk, removes every path it found that the file does not hold,
//! drops those paths' records, and goes on as before: the proof then compares what
//! is left on NEW, entry by entry, with OLD. `NONCE` is the pass's own: a file
//! left by an earlier pass or run is never read, and NEW's listing removes them all.
//!
//! Why: `rsync --delete` reads every directory of NEW's half-million-entry tree a
//! second time and stats each entry again, inside the downtime (4.5 s of a 12.7 s
//! copy on the big relay of docs/performance.md); the listing has walked NEW anyway.
//! Without the file (staged transfers, the second pass, a handoff that failed),
//! nothing is removed and the mailboxes' rsync mirrors with `--delete` as before
//! (`catalogue::final_sync`); a first pass that could not prune leaves differences
//! that the second pass, with `--delete`, removes.
//!
//! What is removed is only ever a path NEW's own `find` listed under
//! /home/vmail/mail that OLD, frozen since step 3, does not have: exactly what
//! `--delete` removes ([`remove`](super::remove) removes it).

use crate::host::catalogue::MAIL_DIR;

/// Where the handoff files live on NEW: root's only, and each lab host's own.
pub(super) const HANDOFF_DIR: &str = "/root/.ssh";
/// Their names, before the nonce.
pub(super) const HANDOFF_NAME: &str = "cmfleet_old_paths";
/// The list of NEW's mailbox paths made before the downtime, for the early prune
/// (`early`); removed with the handoff files.
pub const NEW_PATHS: &str = "/root/.ssh/cmfleet_new_paths";

/// OLD's mailbox paths for NEW's listing at one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// On OLD: the shell words that run a command on NEW (the copy's inner ssh
    /// and NEW's address, quoted), to which the remote command is appended.
    pub to_new: String,
    /// Letters and digits only: it becomes part of a file name.
    pub nonce: String,
}

impl Handoff {
    /// A handoff with a fresh random nonce.
    pub fn new(to_new: String) -> Handoff {
        use rand::Rng;
        let n: u128 = rand::rng().random();
        Handoff {
            to_new,
            nonce: format!("{n:032x}"),
        }
    }

    /// The file on NEW.
    pub fn file(&self) -> String {
        format!("{HANDOFF_DIR}/{HANDOFF_NAME}.{}", self.nonce)
    }
}

/// On OLD, in its proof listing once `$t/m` is sorted: hand its mailbox directories'
/// times (`$t/dt`, [`DIR_TIMES`]) and then its paths to NEW. A failure is only a
/// warning: NEW then prunes nothing, and the proof's second pass mirrors with
/// `--delete`. The paths go last: their file being there says the times are too.
pub(super) fn hand_over(h: &Handoff) -> String {
    let file = h.file();
    format!(
        r#"printf '%s\t\0' "$(stat -c %Y .)" >> "$t/dt" || die "cannot read the times of {MAIL_DIR}"
cut -z -f6- "$t/m" > "$t/p" || die "cut failed"
if ! {{ {} && {}; }}; then echo "cmfleet listing on $(hostname): the mailbox paths did not reach the new host whole; what the old host does not have stays there until the next final sync" >&2; fi
rm -f "$t/p" "$t/dt"
"#,
        send(h, r#""$t/dt""#, &format!("{file}{DIR_TIMES}")),
        send(h, r#""$t/p""#, &file),
    )
}

/// The handoff's second file on NEW, beside the paths (`FILE.dirs`): OLD's mailbox
/// directories' mtimes, `MTIME\tPATH\0` (whole seconds; the path relative to
/// /home/vmail/mail, empty for /home/vmail/mail itself), in no order. What the
/// removal ([`remove`](super::remove)) gives a directory it removed from.
pub const DIR_TIMES: &str = ".dirs";

/// Shell on OLD: copy the local file `local` (quoted already) to `remote` on NEW,
/// renamed into place only whole: a connection cut short ends `cat` with EOF and
/// status 0, so NEW checks the size OLD sent (the word between the two parts).
fn send(h: &Handoff, local: &str, remote: &str) -> String {
    let quote = crate::infra::shell::quote;
    let (before, after) = (
        format!("umask 077 && cat > {remote}.part && [ \"$(wc -c < {remote}.part)\" ="),
        format!("] && mv {remote}.part {remote}"),
    );
    format!(
        r#"{} {} "$(wc -c < {local})" {} < {local}"#,
        h.to_new,
        quote(&before),
        quote(&after)
    )
}

/// Run by `awk` (bytewise: `LC_ALL=C`) over NEW's sorted `M` records, reading
/// OLD's sorted paths from the file `old` beside them, a merge in one pass: a record
/// whose path OLD has is printed, and the `./PATH` of each uidlist kept goes to the
/// file `ul` (the walk's list named every uidlist); any other record's path goes to
/// the file `x`, to be removed. Each side must be strictly ascending, or the
/// status is 3 and `x` is not to be used (a list out of order makes present paths
/// look absent; only the whole pass can tell).
/// An unreadable `old` is exit 4, never "OLD has nothing". Paths are compared as
/// strings (`""` appended: awk compares two numeric-looking values as numbers,
/// `1000` and `1e3` alike). The path starts after the first five fields (they hold
/// no tab).
const JOIN: &str = r#"function next_old() { ps = s; r = (getline s < old); if (r < 0) { bad = 4; exit } more = r > 0; s = s ""; if (more && had && s <= ps) { bad = 3; exit } had = 1 }
BEGIN { RS = ORS = "\0"; FS = "\t"; next_old() }
{ p = substr($0, length($1 $2 $3 $4 $5) + 6) ""; if (NR > 1 && p <= pp) { bad = 3; exit } pp = p
  while (more && s < p) next_old()
  if (more && s == p) { next_old(); print; if ($2 == "f" && p ~ /(^|\/)dovecot-uidlist$/) print "./" p > ul; next }
  print p > x }
END { if (bad) exit bad }"#;

/// On NEW, in its proof listing in /home/vmail/mail once `$t/m` is sorted: remove
/// what OLD does not have, if OLD's paths for this pass are there (module doc).
/// The removal ([`remove`](super::remove)) runs while the listing goes on
/// (nothing after the walk reads what it removes); [`pruned`] waits for it before
/// the digest. Run only when the early prune ([`early`](super::early)) did not.
pub(super) fn prune(h: &Handoff) -> String {
    let file = h.file();
    let remove = super::remove::remove_listed(r#""$t/x""#, r#""$t/dt""#);
    format!(
        r#"rmp=
if [ -f {file} ] && [ -f {file}{DIR_TIMES} ]; then
  : > "$t/x"; : > "$t/ul2"
  # shellcheck disable=SC2016 # awk's program: its $ are awk's fields
  LC_ALL=C awk -v old={file} -v x="$t/x" -v ul="$t/ul2" '{JOIN}' "$t/m" > "$t/m2"; jr=$?
  case $jr in
    0) ;;
    3) die "the old host's mailbox paths or this host's are not in order, so nothing was removed" ;;
    4) die "cannot read the old host's mailbox paths in {file}, so nothing was removed" ;;
    *) die "cannot compare the mailboxes with the old host's paths (awk exited with $jr), so nothing was removed" ;;
  esac
  mv "$t/m2" "$t/m" || die "cannot write a temp file"
  mv "$t/ul2" "$t/ul" || die "cannot write a temp file"
  if [ -s "$t/x" ]; then
    # OLD's directory times: the handoff files go below, while the removal runs.
    mv {file}{DIR_TIMES} "$t/dt" || die "cannot read the old host's directory times in {file}{DIR_TIMES}"
    # shellcheck disable=SC2016 # perl's program: its $ are perl's
    {remove} & rmp=$!
    echo "cmfleet listing on $(hostname): removed $(tr -cd '\0' < "$t/x" | wc -c) entries of /home/vmail/mail that the old host does not have" >&2
  fi
fi
rm -f {HANDOFF_DIR}/{HANDOFF_NAME}.* {NEW_PATHS}
"#
    )
}

/// On NEW, before its digest: the removal [`prune`] started has ended well.
pub(super) fn pruned() -> &'static str {
    r#"if [ -n "$rmp" ]; then wait "$rmp" || die "cannot remove what the old host does not have"; fi
"#
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    type Paths = Vec<Vec<u8>>;

    /// Runs [`super::JOIN`] with `awk` as NEW's listing does, over `records` (the
    /// `M` records' paths, each given its five fields) and OLD's `old` paths:
    /// the exit code, the records kept (paths), the paths to remove and the uidlists.
    fn join(records: &[&[u8]], old: Option<&[&[u8]]>) -> (i32, Paths, Paths, Paths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let nul = |items: &mut dyn Iterator<Item = Vec<u8>>| -> Vec<u8> {
            items.flat_map(|i| [i, vec![0]].concat()).collect()
        };
        let m: Vec<u8> = nul(&mut records
            .iter()
            .map(|p| [b"M\tf\t1\t2\t=\t".as_slice(), p].concat()));
        std::fs::write(dir.path().join("m"), m).expect("write m");
        if let Some(old) = old {
            std::fs::write(
                dir.path().join("old"),
                nul(&mut old.iter().map(|p| p.to_vec())),
            )
            .expect("write old");
        }
        let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let out = Command::new("awk")
            .env("LC_ALL", "C")
            .args(["-v", &format!("old={}", path("old"))])
            .args(["-v", &format!("x={}", path("x"))])
            .args(["-v", &format!("ul={}", path("ul"))])
            .args([super::JOIN, &path("m")])
            .output()
            .expect("run awk");
        let split = |bytes: Vec<u8>, strip: usize| -> Paths {
            bytes
                .split(|b| *b == 0)
                .filter(|r| !r.is_empty())
                .map(|r| r[strip.min(r.len())..].to_vec())
                .collect()
        };
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap_or_default();
        (
            out.status.code().unwrap_or(-1),
            split(out.stdout, b"M\tf\t1\t2\t=\t".len()),
            split(read("x"), 0),
            split(read("ul"), 0),
        )
    }

    fn owned(paths: &[&[u8]]) -> Paths {
        paths.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn the_join_keeps_what_old_has_and_removes_the_rest() {
        // Bytewise order: `\t` < ` ` < `-` < `1` < `a` < non-ASCII.
        let new: &[&[u8]] = &[
            b"a\tb",
            b"a b",
            b"a/1000",
            b"a/1e3",
            b"a/dovecot-uidlist",
            b"a/new\nline",
            b"b/dovecot-uidlist",
            b"\xff",
        ];
        let old: &[&[u8]] = &[b"a b", b"a/1000", b"a/dovecot-uidlist", b"a/old", b"\xff"];
        let (code, kept, removed, uidlists) = join(new, Some(old));
        assert_eq!(code, 0);
        assert_eq!(
            kept,
            owned(&[b"a b", b"a/1000", b"a/dovecot-uidlist", b"\xff"])
        );
        assert_eq!(
            removed,
            owned(&[b"a\tb", b"a/1e3", b"a/new\nline", b"b/dovecot-uidlist"])
        );
        assert_eq!(uidlists, owned(&[b"./a/dovecot-uidlist"]));
    }

    #[test]
    fn the_join_decides_nothing_on_a_list_out_of_order_or_unreadable() {
        let new: &[&[u8]] = &[b"a", b"b", b"c"];
        // OLD's list out of order: `b` looked absent once `c` was read. Only the
        // status tells (the listing dies on it before it removes anything).
        let (code, _, _, _) = join(new, Some(&[b"a", b"c", b"b"]));
        assert_eq!(code, 3);
        // NEW's records out of order.
        let (code, _, _, _) = join(&[b"b", b"a"], Some(&[b"a", b"b"]));
        assert_eq!(code, 3);
        // A duplicate is out of order too.
        let (code, _, _, _) = join(new, Some(&[b"a", b"a", b"b"]));
        assert_eq!(code, 3);
        // No file: never read as "OLD has nothing".
        let (code, _, removed, _) = join(new, None);
        assert_eq!(code, 4);
        assert!(removed.is_empty(), "{removed:?}");
    }
}
