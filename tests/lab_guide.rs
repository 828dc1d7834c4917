//! The guide's steps 1 and 4, typed by hand over ssh against a lab: agent forwarding from
//! OLD to NEW works, the trees arrive intact, chown to vmail/opendkim works on NEW.

mod common;

use cmfleet::lab::{Activity, Kind, Manifest, SMTP_ACCOUNTS, SMTP_MESSAGES};
use common::lab::{ok, TestLab};

const TREES: [&str; 4] = [
    "/home/vmail/mail",
    "/var/lib/acme",
    "/etc/dkimkeys",
    "/var/spool/postfix",
];

#[test]
fn guide_steps_1_and_4_copy_old_to_new_with_owners() {
    let lab = TestLab::start(2);
    let users = lab.users();
    for relay in lab.relays() {
        let (old, new) = (relay.old.addr, relay.new.addr);
        // Step 1, verbatim, from a shell on OLD with the controller's agent forwarded.
        ok(lab.ssh(old, &["-A"]).arg(format!(
            "tar c /home/vmail/mail | ssh root@{new} \"tar x -C /\""
        )));
        // Mail keeps arriving before the cutover (additions only: the guide's final
        // rsync has no --delete, see the next test).
        let report = lab
            .simulate_activity(
                relay.index,
                &Activity {
                    new_messages: 4,
                    message_size: 900,
                    seed: 3,
                    ..Activity::default()
                },
            )
            .unwrap();
        assert_eq!(report.created.len(), 4);
        // Step 4, verbatim.
        ok(lab.ssh(old, &["-A"]).arg(format!(
            "tar c /var/lib/acme /etc/dkimkeys /var/spool/postfix | ssh root@{new} \"tar x -C /\" \
             && rsync -azH /home/vmail/mail root@{new}:/home/vmail/"
        )));
        ok(lab
            .ssh(new, &[])
            .arg("chown root: -R /var/lib/acme && chown opendkim: -R /etc/dkimkeys && chown vmail: -R /home/vmail/mail"));

        for tree in TREES {
            // tar skips sockets (Postfix's and Dovecot's in the queue's private/ and
            // public/): the daemons on NEW make their own when they start.
            let files = |m: Manifest| {
                Manifest(
                    m.0.into_iter()
                        .filter(|(_, e)| e.kind != Kind::Other)
                        .collect(),
                )
            };
            let a = files(Manifest::of(&relay.old.path(tree)).unwrap());
            let b = files(Manifest::of(&relay.new.path(tree)).unwrap());
            assert!(a.files() > 0, "{tree} on OLD is empty");
            let diff = a.diff(&b);
            assert!(
                diff.is_empty(),
                "relay {} {tree} differs:\n{}",
                relay.index,
                diff.join("\n")
            );
        }
        let mail = Manifest::of(&relay.new.path("/home/vmail/mail")).unwrap();
        let messages = mail
            .0
            .keys()
            .filter(|p| p.contains("/cur/") || p.contains("/new/"))
            .count();
        assert_eq!(
            messages,
            3 * 5 + SMTP_ACCOUNTS.min(3) * SMTP_MESSAGES + 4,
            "3 users x 5 messages + those delivered over SMTP + 4 new"
        );
        assert!(
            mail.0.keys().any(|p| p.ends_with("/dovecot-uidlist")),
            "Dovecot's uidlists moved too"
        );
        assert!(mail
            .0
            .values()
            .all(|e| e.uid == users.vmail_uid && e.gid == users.vmail_gid));
        let dkim = Manifest::of(&relay.new.path("/etc/dkimkeys")).unwrap();
        assert!(dkim
            .0
            .values()
            .all(|e| e.uid == users.opendkim_uid && e.gid == users.opendkim_gid));
        let acme = Manifest::of(&relay.new.path("/var/lib/acme")).unwrap();
        assert!(acme.0.values().all(|e| e.uid == 0 && e.gid == 0));
        // The password file's mtime (last login) survived.
        let pw = mail
            .0
            .iter()
            .find(|(p, e)| p.ends_with("/password") && e.kind == Kind::File)
            .unwrap();
        assert!(
            pw.1.mtime < 1_700_000_000,
            "password mtime not preserved: {}",
            pw.1.mtime
        );
    }
}

#[test]
fn chown_by_name_on_new_uses_the_hosts_own_users() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let out = ok(lab
        .ssh(relay.new.addr, &[])
        .arg("id -u vmail; id -u opendkim; touch /home/vmail/x; chown vmail: /home/vmail/x; stat -c %u /home/vmail/x"));
    let u = lab.users();
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [u.vmail_uid, u.opendkim_uid, u.vmail_uid].map(|n| n.to_string())
    );
    // ... and the machine itself has no such file.
    assert!(!std::path::Path::new("/home/vmail/x").exists());
}

#[test]
fn guide_final_rsync_without_delete_leaves_renamed_messages_on_new() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let (old, new) = (relay.old.addr, relay.new.addr);
    ok(lab.ssh(old, &["-A"]).arg(format!(
        "tar c /home/vmail/mail | ssh root@{new} \"tar x -C /\""
    )));
    let report = lab
        .simulate_activity(
            1,
            &Activity {
                flag_changes: 3,
                seen: 2,
                deletions: 1,
                seed: 9,
                ..Activity::default()
            },
        )
        .unwrap();
    assert_eq!((report.renamed.len(), report.deleted.len()), (5, 1));
    ok(lab.ssh(old, &["-A"]).arg(format!(
        "rsync -azH /home/vmail/mail root@{new}:/home/vmail/"
    )));
    let a = Manifest::of(&relay.old.path("/home/vmail/mail")).unwrap();
    let b = Manifest::of(&relay.new.path("/home/vmail/mail")).unwrap();
    let extra: Vec<String> = a
        .diff(&b)
        .into_iter()
        .filter(|l| l.starts_with("extra:"))
        .collect();
    // 5 old names of renamed messages + 1 deleted message come back on NEW.
    assert_eq!(extra.len(), 6, "{extra:?}");
    // With --delete the copy is exact.
    ok(lab.ssh(old, &["-A"]).arg(format!(
        "rsync -azH --delete /home/vmail/mail root@{new}:/home/vmail/"
    )));
    let b = Manifest::of(&relay.new.path("/home/vmail/mail")).unwrap();
    assert!(a.diff(&b).is_empty(), "{:?}", a.diff(&b));
}
