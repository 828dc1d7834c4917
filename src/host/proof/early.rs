//! The early prune: NEW drops what OLD does not have while step 4's copy runs,
//! from a list of NEW's own mailbox paths made before the downtime.
//!
//! `/root/.ssh/cmfleet_new_paths` on NEW (root's only, beside cmfleet's other
//! files): NEW's mailbox paths, relative to /home/vmail/mail, NUL-terminated,
//! sorted bytewise. The preflight right before step 3 writes it ([`record_paths`]):
//! NEW's services are stopped since step 2, so only step 4's copy changes the
//! mailboxes after it. Once OLD's listing has handed its paths over
//! ([`Handoff`]), the controller runs [`early_prune`] on NEW, beside the copy:
//! every path of NEW's list that OLD does not have goes.
//!
//! Why it is right whatever the list: a path OLD does not have must not be on NEW
//! after step 4 (the copy mirrors OLD, frozen since step 3), and the copy only ever
//! writes OLD's paths (rsync's temporary files get fresh names). A list older than
//! NEW's tree (a run resumed days later) leaves out what NEW got since: the proof
//! names it, and the second final sync mirrors with `--delete`. What the early
//! prune removes, [`remove`](super::remove) removes inside the mailboxes only, and
//! it gives the directories it removed from OLD's times, whether rsync set them
//! before or after.
//! The one thing the copy may do to the same paths at the same time: replace a
//! directory of NEW that OLD has made a file or a symlink since the pre-stage
//! (rsync's `--force` removes it whole). Both removing the same entries, rsync may
//! find one gone and end with status 23, a transient error: the step is retried,
//! without the list (it is used once), so with the prune after the copy.
//!
//! Why: the prune after the copy ([`prune`](super::prune)) joins NEW's half-million
//! records with OLD's paths and removes, after NEW's walk and inside the downtime
//! (about 1.2 s of the big relay's 4 s after the copy in docs/performance.md). Here
//! the join is `comm` over two path lists, and the removal happens while the copy
//! still runs; NEW's listing after the copy only lists. Should the early prune not
//! run or fail, that listing prunes as before.

use super::prune::{Handoff, DIR_TIMES, HANDOFF_DIR, HANDOFF_NAME, NEW_PATHS};
use super::remove::remove_listed;
use crate::host::catalogue::MAIL_DIR;

/// What [`early_prune`] prints on stdout once it has removed what it should.
pub const PRUNED: &str = "pruned";

/// On NEW, in the preflight right before step 3: list the mailbox paths into
/// [`NEW_PATHS`], written whole or not at all. Sets `paths` to what the preflight
/// says of it; a tree that cannot be listed fails (step 4's proof would fail on
/// it, with the relay down). No mailboxes yet: nothing to list, no file.
pub fn record_paths() -> String {
    let f = NEW_PATHS;
    format!(
        r#"rm -f {f} {f}.part
if [ -d {MAIL_DIR} ]; then
  (umask 077 && cd {MAIL_DIR} && find . -ignore_readdir_race -mindepth 1 -printf '%P\0' > {f}.part) || {{ rm -f {f}.part; echo "the new host's mailboxes cannot be listed completely, so the copy could not be proven" >&2; exit 3; }}
  if ! {{ LC_ALL=C sort -z -o {f}.part {f}.part && mv {f}.part {f}; }}; then rm -f {f}.part; echo "cannot write the list of the new host's mailbox paths to {f}" >&2; exit 3; fi
  paths=", $(tr -cd '\0' < {f} | wc -c) mailbox paths listed for step 4"
else
  paths=", no mailboxes yet"
fi"#
    )
}

/// On NEW while step 4's copy runs, once OLD's paths are there: remove every path
/// of [`NEW_PATHS`] that OLD's do not hold, then both lists. Prints [`PRUNED`] when
/// that is done; nothing, with the reason on stderr, when it could not run (no
/// list, either list out of order, a removal that failed): NEW's listing after the
/// copy then prunes.
pub fn early_prune(h: &Handoff) -> String {
    let (new, old) = (NEW_PATHS, h.file());
    let remove = remove_listed(r#""$t/x""#, &format!("{old}{DIR_TIMES}"));
    format!(
        r#"say() {{ echo "cmfleet prune on $(hostname): $1" >&2; }}
if [ ! -f {new} ]; then say "no list of this host's mailbox paths from before the downtime; the listing after the copy removes what the old host does not have"; exit 0; fi
if [ ! -f {old} ] || [ ! -f {old}{DIR_TIMES} ]; then say "the old host's mailbox paths are not here; the listing after the copy removes nothing"; exit 0; fi
t=$(mktemp -d) || exit 70; trap 'rm -rf "$t"' EXIT
if ! LC_ALL=C comm -z -23 --check-order {new} {old} > "$t/x"; then say "the mailbox paths are not in order, so nothing was removed while the copy ran"; exit 0; fi
cd {MAIL_DIR} || exit 70
# shellcheck disable=SC2016 # perl's program: its $ are perl's
if ! {remove}; then say "a removal failed; the listing after the copy removes the rest"; exit 0; fi
say "removed $(tr -cd '\0' < "$t/x" | wc -c) entries of {MAIL_DIR} that the old host does not have, while the copy ran"
rm -f {new} {HANDOFF_DIR}/{HANDOFF_NAME}.*
echo {PRUNED}"#
    )
}
