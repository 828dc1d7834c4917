//! Step 4's prune on the lab's real hosts: NEW removes what OLD does not have (from
//! OLD's listing, handed over through the copy's ssh) instead of the mailboxes'
//! rsync's `--delete`, while the copy runs (the early prune, from NEW's paths
//! listed before the downtime) or in its proof listing, and the proof then passes
//! at once.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cmfleet::host::proof::NEW_PATHS;
use cmfleet::model::inventory::Inventory;
use cmfleet::model::step::Step;
use common::lab::TestLab;
use common::run::{assert_relay_equal, run};

/// Names on NEW only that a careless prune gets wrong: a tab, a newline with a
/// fake record after it, bytes that are not UTF-8, a leading dash (rm's option),
/// and `1e3` beside OLD's `1000` (equal as numbers, as awk may compare them).
const STALE: [&[u8]; 5] = [
    b"1700000000.M9P9.host:2,S\tstale",
    b"1700000001.M9P9.host\nM\tf\t0\t0\t=\tfake",
    b"1700000002.M9P9.\xff\xfe:2,",
    b"-rf",
    b"1e3",
];

/// A lab of one relay, pre-staged (steps 1 and 2).
fn prestaged() -> (TestLab, Inventory) {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    (lab, inv)
}

/// Steps 3 to 6: the relay is migrated and NEW's trees are OLD's. The relay's log.
fn cut_over(lab: &TestLab, inv: &Inventory) -> String {
    let (outcome, journal, events) = run(inv, Step::Activate);
    assert_eq!(
        outcome.done.len(),
        1,
        "{outcome:?}\n{:#?}\n{events:#?}",
        journal.data
    );
    assert_relay_equal(lab, 1);
    std::fs::read_to_string(inv.fleet.state_dir.join("logs/relay1.lab.test.log")).expect("log")
}

fn write(path: &Path, body: &[u8], owner: (u32, u32)) {
    std::fs::write(path, body).expect("write");
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).expect("chown");
}

/// Between the pre-stage and the cutover, NEW gets files, a whole mailbox (with
/// its uidlist) and names OLD does not have, and OLD loses a message and renames
/// another: the cutover's first final sync and proof leave NEW exactly OLD's, with
/// the mailboxes' rsync not deleting anything itself.
#[test]
fn new_loses_what_old_does_not_have_and_the_first_proof_passes() {
    let (lab, inv) = prestaged();
    let relay = lab.relay(1).expect("relay");
    let users = lab.users();
    let vmail = (users.vmail_uid, users.vmail_gid);
    let (old_mail, new_mail) = (
        relay.old.path("/home/vmail/mail"),
        relay.new.path("/home/vmail/mail"),
    );

    // OLD, as mail goes on: a message expunged, one flagged (renamed), and a file
    // `1000` at the top of the mailboxes.
    let domain = std::fs::read_dir(&old_mail)
        .expect("old mail")
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a domain")
        .file_name();
    let mailbox = std::fs::read_dir(old_mail.join(&domain))
        .expect("domain")
        .flatten()
        .find(|e| e.path().join("cur").is_dir())
        .expect("a mailbox")
        .path();
    let mut messages: Vec<_> = std::fs::read_dir(mailbox.join("cur"))
        .expect("cur")
        .flatten()
        .map(|e| e.path())
        .collect();
    messages.sort();
    assert!(messages.len() >= 2, "the lab's mailboxes hold messages");
    std::fs::remove_file(&messages[0]).expect("expunge");
    let flagged = format!("{}F", messages[1].display());
    std::fs::rename(&messages[1], &flagged).expect("flag");
    write(&old_mail.join("1000"), b"kept\n", vmail);

    // NEW: stale names in a mailbox's cur/ and at the top, and a mailbox OLD never had.
    let new_cur = new_mail
        .join(mailbox.strip_prefix(&old_mail).expect("under"))
        .join("cur");
    for name in STALE {
        write(
            &new_cur.join(std::ffi::OsStr::from_bytes(name)),
            b"stale\n",
            vmail,
        );
        write(
            &new_mail.join(std::ffi::OsStr::from_bytes(name)),
            b"stale\n",
            vmail,
        );
    }
    let gone = new_mail.join(&domain).join("gone@example.org");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(gone.join(d)).expect("mkdir");
    }
    write(
        &gone.join("cur/1700000009.M1P1.host:2,"),
        b"old mail\n",
        vmail,
    );
    write(
        &gone.join("dovecot-uidlist"),
        b"3 V1 N2 G0\n1 :1700000009.M1P1.host\n",
        vmail,
    );

    let log = cut_over(&lab, &inv);
    assert!(!gone.exists(), "the mailbox OLD never had is gone");
    // 2 x 5 stale names, the mailbox (itself, cur, new, tmp, its message and its
    // uidlist), the expunged message and the flagged one's old name.
    assert!(
        log.contains(
            "removed 18 entries of /home/vmail/mail that the old host does not have, while the copy ran"
        ),
        "the early prune removed them:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("cmfleet listing on ") && l.contains("removed")),
        "NEW's listing after the copy removed nothing more:\n{log}"
    );
    assert!(
        log.contains("records identical on old and new (by their digests"),
        "the first proof passed by its digests:\n{log}"
    );
    assert!(
        !log.contains("one more final sync"),
        "no second pass was needed:\n{log}"
    );
    let passes = mail_rsyncs(&log);
    assert_eq!(passes.len(), 1, "one final sync:\n{log}");
    assert!(
        passes[0].contains(&"--force") && !passes[0].contains(&"--delete"),
        "the mailboxes' rsync of the first pass does not delete: {:?}",
        passes[0]
    );
}

/// The options of each final sync's mailbox rsync in the relay's log (the one with
/// `--chown`), up to its `--chown`.
fn mail_rsyncs(log: &str) -> Vec<Vec<&str>> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("sampled rsync ")?;
            let (options, _) = rest.split_once(" --chown=")?;
            Some(options.split(' ').collect())
        })
        .collect()
}

/// OLD's paths reach NEW cut short (the connection dropped): the first pass prunes
/// nothing and its proof names NEW's extra file, the second final sync mirrors with
/// `--delete`, and the relay is migrated all the same.
#[test]
fn without_old_paths_the_second_final_sync_mirrors() {
    let (lab, inv) = prestaged();
    let relay = lab.relay(1).expect("relay");
    let users = lab.users();
    let stale = relay.new.path("/home/vmail/mail").join("stale");
    write(&stale, b"stale\n", (users.vmail_uid, users.vmail_gid));
    // The lab hosts' `cat` (they find /usr/local/sbin first) writes a handoff file
    // cut short and ends well, as `cat` does when the connection drops (EOF).
    let wrapper = lab.dir().join("bin/cat");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase $(readlink /proc/$$/fd/1) in *cmfleet_old_paths*) /usr/bin/head -c 100; /bin/cat > /dev/null; exit 0 ;; esac\nexec /bin/cat \"$@\"\n",
    )
    .expect("write cat wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    let log = cut_over(&lab, &inv);
    assert!(!stale.exists());
    // The host's own warning, not the script's text (the log holds the command too).
    assert!(
        log.lines().any(|l| l.starts_with("cmfleet listing on ")
            && l.contains("the mailbox paths did not reach the new host whole")),
        "OLD's listing warns:\n{log}"
    );
    assert!(log.contains("one more final sync"), "a second pass:\n{log}");
    let passes = mail_rsyncs(&log);
    assert_eq!(passes.len(), 2, "two final syncs:\n{log}");
    assert!(
        passes[1].contains(&"--delete"),
        "the second pass mirrors: {:?}",
        passes[1]
    );
}

/// A file of vmail's at the top of NEW's mailboxes, which OLD does not have.
fn stale_on_new(lab: &TestLab, name: &str) -> std::path::PathBuf {
    let users = lab.users();
    let path = lab
        .relay(1)
        .expect("relay")
        .new
        .path("/home/vmail/mail")
        .join(name);
    write(&path, b"stale\n", (users.vmail_uid, users.vmail_gid));
    path
}

/// Steps 1 to 3, then `between` on the lab: the relay's log of steps 4 to 6.
fn around_step_3(between: impl FnOnce(&TestLab)) -> String {
    let (lab, inv) = prestaged();
    {
        // The journal (and its lock) goes with this scope.
        let (outcome, journal, _) = run(&inv, Step::DisableOld);
        assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    }
    between(&lab);
    cut_over(&lab, &inv)
}

/// NEW gets a stale file after step 3's preflight listed its paths: the early
/// prune removes what its list names, NEW's listing after the copy does not look
/// again, so the proof names the late file and the second final sync mirrors it
/// away.
#[test]
fn what_new_got_after_its_paths_were_listed_goes_at_the_second_final_sync() {
    let mut paths = None;
    let log = around_step_3(|lab| {
        let listed = lab.relay(1).expect("relay").new.path(NEW_PATHS);
        assert!(listed.exists(), "step 3's preflight listed NEW's paths");
        paths = Some((stale_on_new(lab, "late"), listed));
    });
    let (late, listed) = paths.expect("ran");
    assert!(!late.exists());
    assert!(
        log.contains(
            "removed 0 entries of /home/vmail/mail that the old host does not have, while the copy ran"
        ),
        "the early prune ran:\n{log}"
    );
    assert!(log.contains("one more final sync"), "a second pass:\n{log}");
    assert!(!listed.exists(), "the list is used once");
}

/// Without the list of NEW's paths (a run resumed after its step 4 used it), NEW's
/// listing after the copy removes what OLD does not have, and the first proof passes.
#[test]
fn without_new_paths_the_listing_after_the_copy_prunes() {
    let mut stale = None;
    let log = around_step_3(|lab| {
        let relay = lab.relay(1).expect("relay");
        std::fs::remove_file(relay.new.path(NEW_PATHS)).expect("rm list");
        stale = Some(stale_on_new(lab, "stale"));
    });
    assert!(!stale.expect("ran").exists());
    assert!(
        log.lines().any(|l| l.starts_with("cmfleet prune on ")
            && l.contains("no list of this host's mailbox paths")),
        "the early prune says why it did not run:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("cmfleet listing on ")
            && l.contains("removed 1 entries of /home/vmail/mail")),
        "NEW's listing pruned:\n{log}"
    );
    assert!(!log.contains("one more final sync"), "one pass:\n{log}");
}
