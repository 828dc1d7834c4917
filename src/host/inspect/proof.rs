//! What the copy proof will meet, found before any downtime: `check`, the
//! preflight before step 1, and again right before step 3 (OLD is still live then,
//! so much can change in between).
//!
//! On OLD: can the mailbox tree be listed completely (a `find` that fails there
//! would fail the proof inside the downtime), which entries are not vmail's (fine:
//! step 4 chowns NEW's copies and the proof checks NEW's owners, but an operator
//! wants to know), and is every tree the final sync moves there. On NEW, right
//! before step 3: /etc/dkimkeys as step 2 made it, whose owner is recorded for step 4.

use std::collections::HashMap;

use super::report::Finding;
use crate::host::catalogue::{required_state, MAIL_DIR, STATE_DIRS};
use crate::host::remote::{CommandKind, HostConn, LineSink, SshPool, Stdout};
use crate::model::inventory::{Relay, TransferMode};
use crate::model::step::ErrorKind;

/// Examples named in a finding.
const EXAMPLES: usize = 3;

pub const CHECK_OLD: &str = "proof old";
pub const CHECK_NEW: &str = "proof new";

/// On OLD: `key=value` lines (in example names, newlines and tabs read `?`).
/// `missing=` names a tree the final sync requires of `relay` (`required_state`).
pub fn old_script(relay: &Relay) -> String {
    let state = required_state(relay).join(" ");
    format!(
        r#"t=$(mktemp -d) || exit 70; trap 'rm -rf "$t"' EXIT
for p in {state} {MAIL_DIR}; do [ -e "$p" ] || echo "missing=$p"; done
if [ -d {MAIL_DIR} ]; then
  if err=$(cd {MAIL_DIR} && find . -ignore_readdir_race -mindepth 1 -fprintf "$t/all" . \( \( -user vmail -group vmail \) -o -printf '%P\0' \) 2>&1 >"$t/foreign"); then echo listable=1; else echo listable=0; echo "list_error=$(printf '%s' "$err" | tr '\n' ' ' | cut -c1-300)"; fi
  echo "entries=$(wc -c < "$t/all")"
  echo "foreign=$(tr -cd '\0' < "$t/foreign" | wc -c)"
  head -z -n {EXAMPLES} "$t/foreign" | tr '\n\t\0' '??\n' | sed 's/^/foreign_example=/'
fi"#
    )
}

/// What the script found on OLD.
#[derive(Debug, Default, PartialEq, Eq)]
struct OldFacts {
    missing: Vec<String>,
    listable: Option<bool>,
    list_error: String,
    entries: u64,
    foreign: u64,
    foreign_examples: Vec<String>,
}

fn parse(out: &str) -> OldFacts {
    let mut f = OldFacts::default();
    let mut single = HashMap::new();
    for (k, v) in out.lines().filter_map(|l| l.split_once('=')) {
        match k {
            "missing" => f.missing.push(v.to_string()),
            "foreign_example" => f.foreign_examples.push(v.to_string()),
            _ => {
                single.insert(k, v);
            }
        }
    }
    f.listable = single.get("listable").map(|v| *v == "1");
    f.list_error = single.get("list_error").unwrap_or(&"").to_string();
    let num = |k: &str| single.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (f.entries, f.foreign) = (num("entries"), num("foreign"));
    f
}

fn findings(f: &OldFacts) -> Finding {
    if !f.missing.is_empty() {
        return Finding::fail(
            CHECK_OLD,
            format!(
                "the final sync moves {}, {MAIL_DIR} but OLD has no {}",
                STATE_DIRS.join(", "),
                f.missing.join(", ")
            ),
        );
    }
    match f.listable {
        Some(true) => {}
        Some(false) => {
            return Finding::fail(
                CHECK_OLD,
                format!(
                "OLD's mailboxes cannot be listed completely, so the copy could not be proven: {}",
                f.list_error
            ),
            )
        }
        None => return Finding::fail(CHECK_OLD, "OLD's mailboxes were not inspected"),
    }
    if f.foreign == 0 {
        return Finding::pass(
            CHECK_OLD,
            format!("all {} mailbox entries listable and vmail's", f.entries),
        );
    }
    Finding::warn(
        CHECK_OLD,
        format!(
            "{} of {} mailbox entries on OLD are not vmail's (e.g. {}): NEW's copies will be (step 4 chowns them), and the proof checks NEW's owners, not OLD's",
            f.foreign,
            f.entries,
            f.foreign_examples.join(", ")
        ),
    )
}

/// The finding on OLD (a failure to run the script is one too).
pub async fn old_finding(ssh: &SshPool, relay: &Relay, old: &HostConn, sink: &LineSink) -> Finding {
    run_finding(ssh, old, &old_script(relay), CHECK_OLD, sink, |out| {
        findings(&parse(&out))
    })
    .await
}

/// On NEW right before step 3: record /etc/dkimkeys' owner for step 4, and, for a
/// direct copy, NEW's mailbox paths for step 4's early prune
/// ([`proof::record_paths`](crate::host::proof::record_paths)); say both.
pub fn new_script(relay: &Relay) -> String {
    let paths = match relay.settings.transfer {
        TransferMode::Direct => crate::host::proof::record_paths(),
        TransferMode::Staged => "paths=".to_string(),
    };
    format!(
        "{} || exit $?\n{paths}\necho \"dkim owner $(cat {})$paths\"",
        crate::host::catalogue::record_dkim_owner(),
        crate::host::catalogue::DKIM_OWNER_FILE
    )
}

/// On NEW right before step 3: record what step 4 reads there ([`new_script`]).
pub async fn new_finding(ssh: &SshPool, relay: &Relay, new: &HostConn, sink: &LineSink) -> Finding {
    run_finding(ssh, new, &new_script(relay), CHECK_NEW, sink, |out| {
        Finding::pass(CHECK_NEW, out.trim())
    })
    .await
}

/// Runs `script` and judges its output; a script that fails is a failed finding
/// (transient when a retry may help).
async fn run_finding(
    ssh: &SshPool,
    conn: &HostConn,
    script: &str,
    check: &str,
    sink: &LineSink,
    judge: impl FnOnce(String) -> Finding,
) -> Finding {
    match ssh
        .run(
            conn,
            script,
            false,
            CommandKind::Plain,
            sink,
            Stdout::Capture,
        )
        .await
    {
        Ok(out) => judge(out.stdout.unwrap_or_default()),
        Err(e) => {
            let mut f = Finding::fail(
                check,
                format!("cannot inspect {}: {}", conn.dest, e.message),
            );
            f.transient = e.kind == ErrorKind::Transient;
            f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::inspect::Status;

    #[test]
    fn foreign_owners_warn_with_examples_and_unlistable_trees_fail() {
        let f = parse(
            "listable=1\nentries=10\nforeign=2\nforeign_example=a/cur/x\nforeign_example=b?c\n",
        );
        let finding = findings(&f);
        assert_eq!(finding.status, Status::Warn);
        assert!(finding.reason.contains("2 of 10"), "{}", finding.reason);
        assert!(
            finding.reason.contains("a/cur/x, b?c"),
            "{}",
            finding.reason
        );
        let f =
            parse("listable=0\nlist_error=find: 'x': Input/output error\nentries=3\nforeign=0\n");
        assert_eq!(findings(&f).status, Status::Fail);
        let f = parse("missing=/var/spool/postfix\nlistable=1\n");
        let finding = findings(&f);
        assert_eq!(finding.status, Status::Fail);
        assert!(
            finding.reason.contains("no /var/spool/postfix"),
            "{}",
            finding.reason
        );
        assert_eq!(
            findings(&parse("listable=1\nentries=4\nforeign=0\n")).status,
            Status::Pass
        );
    }
}
