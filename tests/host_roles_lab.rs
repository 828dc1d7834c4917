//! One machine, one role, on the lab: a host written into the inventory in two roles,
//! a NEW that holds another relay's mail, and a NEW that holds mail cmfleet did not
//! put there. In each case no mail is deleted.

mod common;

use std::path::Path;

use common::lab::TestLab;
use common::run::{assert_trees_equal, cmfleet, variant};

/// Files under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// relay2's NEW written as relay1's OLD (still serving): `migrate --limit relay2
/// --until-step 1` once replaced relay1's 3,415 mail files with relay2's through step
/// 1's `rsync --delete`, and exited 0. Now every command refuses the inventory,
/// naming both relays, and relay1's OLD keeps every mail file.
#[test]
fn a_host_in_two_roles_is_refused_and_keeps_its_mail() {
    let lab = TestLab::start(2);
    let relays = lab.relays();
    let (r1, r2) = (&relays[0], &relays[1]);
    let old1 = r1.old.path("/home/vmail/mail");
    let before = count_files(&old1);
    assert!(before > 0);
    let path = variant(&lab, "two-roles.toml", |t| {
        t.replace(
            &format!("new = {{ ssh = \"{0}\", ip4 = \"{0}\" }}", r2.new.addr),
            &format!("new = {{ ssh = \"{0}\", ip4 = \"{0}\" }}", r1.old.addr),
        )
    });
    for args in [
        &["plan"][..],
        &["check"],
        &[
            "migrate",
            "--limit",
            &r2.mail_domain,
            "--until-step",
            "1",
            "-y",
            "--progress",
            "plain",
        ],
    ] {
        let (code, text) = cmfleet(args, &path);
        assert_eq!(code, Some(1), "{args:?}:\n{text}");
        assert!(
            text.contains("relay[1].new.ssh") && text.contains("relay[0].old.ssh"),
            "{args:?} names both relays and fields:\n{text}"
        );
    }
    assert_eq!(count_files(&old1), before, "relay1's OLD lost mail");
}

/// A NEW that holds mail of another domain (another relay's host, a machine reused
/// without being wiped) is refused by `check` and by step 1's preflight; its mail
/// stays.
#[test]
fn a_new_holding_another_domains_mail_is_refused_and_keeps_it() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let foreign = relay
        .new
        .path("/home/vmail/mail/other.example.org/someone@other.example.org/cur");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("1.msg"), "a message of another relay\n").expect("write");
    let (code, text) = cmfleet(&["check"], &lab.inventory());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("mail new"), "{text}");
    assert!(text.contains("\"other.example.org\""), "{text}");
    let (code, text) = cmfleet(
        &["migrate", "--until-step", "1", "-y", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("refused by the preflight check: mail new"),
        "{text}"
    );
    assert!(
        foreign.join("1.msg").exists(),
        "the other relay's mail was deleted"
    );
}

/// Step 1 deletes on NEW only what cmfleet put there: a first step 1 into a NEW that
/// already holds files of this relay (not copied by cmfleet) adds and deletes
/// nothing; step 4, inside the downtime and after its preflights, mirrors exactly.
#[test]
fn step_1_deletes_only_what_cmfleet_put_on_new() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let domain_dir = relay
        .new
        .path(&format!("/home/vmail/mail/{}", relay.mail_domain));
    std::fs::create_dir_all(&domain_dir).expect("mkdir");
    let stray = domain_dir.join("not-from-cmfleet");
    std::fs::write(&stray, "kept\n").expect("write");
    let step1 = ["migrate", "--until-step", "1", "-y", "--progress", "plain"];
    let (code, text) = cmfleet(&step1, &lab.inventory());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        stray.exists(),
        "the first step 1 deleted a file cmfleet did not copy"
    );
    let (code, text) = cmfleet(&["migrate", "-y", "--progress", "plain"], &lab.inventory());
    assert_eq!(code, Some(0), "{text}");
    assert!(!stray.exists(), "step 4 mirrors OLD exactly");
    assert_trees_equal(&lab);
}
