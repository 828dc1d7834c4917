//! The copy proof of step 4 on the lab's real hosts: what it passes (what the
//! migration changes on purpose, names no line-based listing can carry) and what it
//! catches (a DKIM key or a queue file that is not OLD's, a listing that fails).

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cmfleet::host::proof;
use cmfleet::host::remote::{CommandKind, ConnectOptions, Stdout};
use cmfleet::model::inventory::{Inventory, Relay};
use cmfleet::model::step::Step;
use common::lab::{quiet_sink, ssh_pool, TestLab};
use common::run::{failures, run};

/// Some message file in a `cur/` directory under `dir`.
fn a_message(dir: &Path) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if d.file_name().is_some_and(|n| n == "cur") {
                return p;
            }
        }
    }
    panic!("no message under {}", dir.display())
}

/// File names a line-based listing cannot carry: a tab, a newline, bytes that are
/// not UTF-8 (two of them, which a lossy reading would merge into one name).
const HOSTILE: [&[u8]; 4] = [
    b"1700000000.M1P1.host:2,S\tx",
    b"1700000001.M1P1.host\nfake\tf\t0\t0\t0:0",
    b"1700000002.M1P1.\xff\xfe:2,",
    b"1700000002.M1P1.\xff\xfd:2,",
];

/// A root-owned message on OLD (an operator's restore) and hostile names: the
/// migration chowns NEW, so OLD's owner is no difference, and every name arrives.
#[test]
fn hostile_names_and_a_root_owned_message_are_migrated_and_proven() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let relay = lab.relay(1).expect("relay");
    let message = a_message(&relay.old.path("/home/vmail/mail"));
    std::os::unix::fs::chown(&message, Some(0), Some(0)).expect("chown root");
    let cur = message.parent().expect("cur").to_path_buf();
    for name in HOSTILE {
        let path = cur.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&path, b"hostile\n").expect("write");
        let users = lab.users();
        std::os::unix::fs::chown(&path, Some(users.vmail_uid), Some(users.vmail_gid))
            .expect("chown");
    }

    let (outcome, journal, events) = run(&inv, Step::Activate);
    assert_eq!(
        outcome.done.len(),
        1,
        "{outcome:?}\n{:#?}\n{events:#?}",
        journal.data
    );

    let new_cur = relay.new.path("/home/vmail/mail").join(
        cur.strip_prefix(relay.old.path("/home/vmail/mail"))
            .expect("under mail"),
    );
    for name in HOSTILE {
        let copy = new_cur.join(std::ffi::OsStr::from_bytes(name));
        assert_eq!(std::fs::read(&copy).expect("copied"), b"hostile\n");
    }
    let copied = new_cur.join(message.file_name().expect("name"));
    let meta = std::fs::metadata(&copied).expect("copied message");
    assert_eq!(meta.uid(), lab.users().vmail_uid, "NEW's copy is vmail's");
    let log =
        std::fs::read_to_string(inv.fleet.state_dir.join("logs/relay1.lab.test.log")).expect("log");
    assert!(
        log.contains("not vmail's"),
        "the preflight names the root-owned message:\n{log}"
    );
    assert!(log.contains("records identical on old and new"), "{log}");
}

/// The proof as step 4 runs it: both hosts' digests, then their listings merged as
/// they arrive if the digests differ. The differences, and whether the digests
/// matched.
fn prove_by(inv: &Inventory, relay: &Relay) -> (Vec<String>, bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ssh = ssh_pool(inv);
        let opts = ConnectOptions::for_relay(relay);
        let old = ssh.connect(&relay.old, opts, || {}).await.expect("old");
        let new = ssh.connect(&relay.new, opts, || {}).await.expect("new");
        let sink = quiet_sink(&relay.name);
        let (on_old, on_new) = (
            proof::listing(proof::Role::Old),
            proof::listing(proof::Role::New),
        );
        let (old_side, old_tx, old_asked) = proof::Side::channel(16);
        let (new_side, new_tx, new_asked) = proof::Side::channel(16);
        let records = |to, answer| Stdout::Dialogue { to, end: 0, answer };
        let plain = CommandKind::Plain;
        let mut discard = proof::Discard;
        let (a, b, d) = tokio::join!(
            ssh.run(
                &old,
                &on_old,
                false,
                plain,
                &sink,
                records(old_tx, old_asked)
            ),
            ssh.run(
                &new,
                &on_new,
                false,
                plain,
                &sink,
                records(new_tx, new_asked)
            ),
            proof::compare(old_side, new_side, &mut discard)
        );
        a.expect("listing on old");
        b.expect("listing on new");
        ssh.close().await;
        let d = d.expect("complete listings");
        let by_digest = d.by_digest.is_some();
        (d.into_lines(), by_digest)
    })
}

fn prove(inv: &Inventory, relay: &Relay) -> Vec<String> {
    prove_by(inv, relay).0
}

/// After a migration the proof passes; a DKIM key of the same size but another
/// content, a queue file gone and one with the wrong owner are each named; a queue
/// file renamed (as `postsuper -s` does) is no difference.
#[test]
fn the_proof_names_a_dkim_key_and_a_queue_file_that_are_not_olds() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let (outcome, journal, _) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    let relay = lab.relay(1).expect("relay");
    assert_eq!(prove(&inv, &inv.relays[0]), Vec::<String>::new());

    let deferred = relay.new.path("/var/spool/postfix/deferred");
    let mut queue: Vec<PathBuf> = walk_files(&deferred);
    queue.sort();
    assert!(queue.len() >= 2, "the lab queues mail on OLD: {queue:?}");
    let renamed = queue[0].with_file_name("4ZRENAMED0");
    std::fs::rename(&queue[0], &renamed).expect("rename");
    assert_eq!(
        prove(&inv, &inv.relays[0]),
        Vec::<String>::new(),
        "a rename is no difference"
    );

    std::fs::remove_file(&queue[1]).expect("remove a queue file");
    let key = relay.new.path("/etc/dkimkeys/opendkim.private");
    let mut bytes = std::fs::read(&key).expect("key");
    bytes[0] ^= 1;
    std::fs::write(&key, &bytes).expect("write key");
    let acme = relay.new.path("/var/lib/acme");
    std::os::unix::fs::chown(&acme, Some(lab.users().vmail_uid), None).expect("chown");
    let d = prove(&inv, &inv.relays[0]);
    assert_eq!(d.len(), 3, "{d:#?}");
    assert!(
        d.contains(&"differs: /etc/dkimkeys/opendkim.private (content differs)".to_string()),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .any(|l| l.starts_with("missing on new: queue file deferred (content ")),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .any(|l| l.starts_with("owner on new: /var/lib/acme is ")),
        "{d:#?}"
    );
}

/// The digests stand for the listings: after a migration they match, so no listing
/// crosses the network, also when NEW keeps a message's mtime only to the second
/// (step 1's `tar` keeps no more) and OLD's DKIM key has another owner (OLD's owners
/// are not compared); a message on NEW that is not vmail's makes them differ, and
/// the merge names it.
#[test]
fn the_digests_prove_a_migrated_relay_and_a_wrong_owner_is_still_named() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let (outcome, journal, _) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    let log =
        std::fs::read_to_string(inv.fleet.state_dir.join("logs/relay1.lab.test.log")).expect("log");
    assert!(
        log.contains("identical on old and new (by their digests"),
        "{log}"
    );
    let relay = lab.relay(1).expect("relay");
    assert_eq!(prove_by(&inv, &inv.relays[0]), (vec![], true));

    let new_mail = relay.new.path("/home/vmail/mail");
    let message = a_message(&new_mail);
    let mtime = std::fs::metadata(&message)
        .and_then(|m| m.modified())
        .expect("mtime");
    let second = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let other = std::time::UNIX_EPOCH + std::time::Duration::new(second, 987_654_321);
    std::fs::File::options()
        .write(true)
        .open(&message)
        .and_then(|f| f.set_modified(other))
        .expect("set the mtime");
    let old_key = relay.old.path("/etc/dkimkeys/opendkim.private");
    std::os::unix::fs::chown(&old_key, Some(4242), Some(4242)).expect("chown OLD's key");
    assert_eq!(prove_by(&inv, &inv.relays[0]), (vec![], true));

    std::os::unix::fs::chown(&message, Some(0), Some(0)).expect("chown root");
    let shown = message
        .strip_prefix(&new_mail)
        .expect("under mail")
        .display()
        .to_string();
    let users = lab.users();
    assert_eq!(
        prove_by(&inv, &inv.relays[0]),
        (
            vec![format!(
                "owner on new: {shown} is 0:0, not {}:{}",
                users.vmail_uid, users.vmail_gid
            )],
            false
        )
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The lab hosts' `find` (they find /usr/local/sbin first): `script` (sh), which
/// ends by running the real one.
fn install_find(lab: &TestLab, script: &str) {
    let wrapper = lab.dir().join("bin/find");
    std::fs::write(&wrapper, format!("#!/bin/sh\n{script}")).expect("write find wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
}

/// A `find` that fails on the host: it lists half, complains and exits 1 when the
/// host has a fault file.
fn install_failing_find(lab: &TestLab) {
    install_find(
        lab,
        "if [ -e /var/lib/chatmail-lab/fault-find ]; then\n  /usr/bin/find \"$@\" | head -c 2000\n  echo 'find: ‘./x’: Input/output error' >&2; exit 1\nfi\nexec /usr/bin/find \"$@\"\n",
    );
}

/// A listing that fails on OLD: before step 3 the cutover is refused while OLD
/// still serves; found only inside the downtime (OLD broke after step 3), step 4
/// fails loudly with the host's error, never as a difference and never a pass.
#[test]
fn a_failing_find_refuses_the_cutover_or_fails_step_4_never_passes() {
    let lab = TestLab::start(2);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    install_failing_find(&lab);
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);
    let fault = |index: usize, on: bool| {
        let r = lab.relay(index).expect("relay");
        let path = r.old.path("/var/lib/chatmail-lab/fault-find");
        if on {
            std::fs::write(path, "").expect("fault");
        } else {
            let _ = std::fs::remove_file(path);
        }
    };

    // Relay 1's OLD cannot be listed when step 3 is due; relay 2's breaks only
    // after its step 3, inside the downtime.
    fault(1, true);
    let (outcome, journal, events) = run(&inv, Step::DisableOld);
    assert_eq!(outcome.failed, vec!["relay1.lab.test".to_string()]);
    let f = failures(&events, "relay1.lab.test", Step::DisableOld);
    assert!(f[0].1.contains("cannot be listed completely"), "{f:#?}");
    assert!(f[0].1.contains("Input/output error"), "{f:#?}");
    assert!(
        cmfleet::lab::port_accepts(lab.relay(1).expect("r").old.addr, 25),
        "OLD still serves"
    );
    let state = journal.data.relays["relay1.lab.test"].state();
    assert_eq!(
        state,
        cmfleet::pipeline::journal::RelayState::Staged,
        "not DOWN"
    );
    drop(journal);

    fault(1, false);
    fault(2, true);
    let (outcome, _journal, events) = run(&inv, Step::Activate);
    assert_eq!(
        outcome.done,
        vec!["relay1.lab.test".to_string()],
        "{outcome:?}"
    );
    assert_eq!(outcome.failed, vec!["relay2.lab.test".to_string()]);
    let f = failures(&events, "relay2.lab.test", Step::FinalSync);
    let last = &f.last().expect("step 4 failed").1;
    assert!(last.contains("find failed in /home/vmail/mail"), "{f:#?}");
    assert!(!last.contains("differ"), "never a difference: {last}");
    let dns_started = events.iter().any(|e| {
        matches!(e, cmfleet::model::events::Event::StepStarted { relay, step: Step::Dns, .. } if relay == "relay2.lab.test")
    });
    assert!(!dns_started, "DNS is never touched");
}

/// A `find` that records its walks in the mailboxes (the listing walks them from
/// /home/vmail/mail: `find .` down to depth 2, then `find -files0-from` twice, each
/// over half of the depth-2 directories) in the host's
/// /var/lib/chatmail-lab/mail-walks, one line per walk: its first argument.
fn install_counting_find(lab: &TestLab) {
    install_find(
        lab,
        "if [ \"$(pwd)\" = /home/vmail/mail ]; then echo \"$1\" >> /var/lib/chatmail-lab/mail-walks; fi\nexec /usr/bin/find \"$@\"\n",
    );
}

/// Step 4 inside the downtime: the proof's listing walks each host's mailboxes once
/// (in three parts),
/// and the copy itself owns every mailbox entry on NEW as `chown -R vmail:` did, a
/// file rsync skips as up to date included (one step 1 copied, then owned by root on
/// both hosts: `-a` alone would give NEW's copy root's owner).
#[test]
fn step_4_walks_the_mailboxes_once_and_owns_skipped_files_as_vmails() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let relay = lab.relay(1).expect("relay");
    let (outcome, journal, _) = run(&inv, Step::DisableOld);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);

    // Root's on both hosts (an operator's restore on OLD, a hand-made copy on NEW):
    // up to date, so rsync skips the file; only its owner is set.
    let old_mail = relay.old.path("/home/vmail/mail");
    let new_mail = relay.new.path("/home/vmail/mail");
    let on_old = a_message(&old_mail);
    let message = new_mail.join(on_old.strip_prefix(&old_mail).expect("under mail"));
    let cur = message.parent().expect("cur").to_path_buf();
    for p in [&on_old, &message, &cur] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).expect("chown root");
    }
    install_counting_find(&lab);

    let (outcome, journal, events) = run(&inv, Step::Activate);
    assert_eq!(
        outcome.done.len(),
        1,
        "{outcome:?}\n{:#?}\n{events:#?}",
        journal.data
    );
    let users = lab.users();
    for p in [&message, &cur] {
        let meta = std::fs::symlink_metadata(p).expect("still on NEW");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (users.vmail_uid, users.vmail_gid),
            "{} is vmail's",
            p.display()
        );
    }
    let log =
        std::fs::read_to_string(inv.fleet.state_dir.join("logs/relay1.lab.test.log")).expect("log");
    assert!(log.contains("records identical on old and new"), "{log}");
    assert!(!log.contains("chown vmail: -R"), "no chown walk: {log}");
    for host in [&relay.old, &relay.new] {
        let walks = std::fs::read_to_string(host.path("/var/lib/chatmail-lab/mail-walks"))
            .unwrap_or_default();
        // The state's finds start at their own trees.
        let mut walks: Vec<&str> = walks.lines().filter(|w| !w.starts_with('/')).collect();
        walks.sort_unstable();
        assert_eq!(
            walks,
            ["-files0-from", "-files0-from", "."],
            "the mailboxes walked once, in three parts, on {}",
            host.addr
        );
    }
}
