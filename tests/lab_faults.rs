//! Fault injection in the lab: a host whose sshd is down, a host whose disk fills.

mod common;

use std::net::Ipv4Addr;

use cmfleet::lab::port_accepts;
use common::lab::{ok, TestLab};

fn ssh_works(lab: &TestLab, addr: Ipv4Addr) -> bool {
    lab.ssh(addr, &[])
        .arg("true")
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn stop_and_start_a_host() {
    let mut lab = TestLab::start(1);
    let new = lab.relay(1).unwrap().new.addr;
    lab.stop_host(new).unwrap();
    assert!(!port_accepts(new, 22));
    assert!(!ssh_works(&lab, new));
    lab.start_host(new).unwrap();
    assert!(ssh_works(&lab, new));
}

#[test]
fn a_tiny_tmpfs_fills_up() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let new = relay.new.addr;
    lab.set_vmail_tmpfs(new, Some(256 * 1024)).unwrap();
    let host = lab.host(new).unwrap().clone();
    // vmail owns the tmpfs, like the bind-mounted /home/vmail.
    let out = ok(lab.ssh(new, &[]).arg("stat -c %U /home/vmail"));
    assert_eq!(out.trim(), "vmail");
    let out = lab
        .ssh(relay.old.addr, &["-A"])
        .arg(format!("dd if=/dev/zero bs=1024 count=1024 2>/dev/null | ssh root@{new} 'cat > /home/vmail/big'"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The controller sees the tmpfs through the host's namespace.
    assert!(host.path("/home/vmail/big").exists());
    // Back to the normal disk.
    lab.set_vmail_tmpfs(new, None).unwrap();
    assert!(!lab.host(new).unwrap().path("/home/vmail/big").exists());
}

#[test]
fn activity_is_deterministic_by_seed() {
    let a = TestLab::start(1);
    let b = TestLab::start(1);
    let act = cmfleet::lab::Activity {
        new_messages: 3,
        seen: 2,
        flag_changes: 2,
        deletions: 2,
        message_size: 500,
        seed: 42,
    };
    let ra = a.simulate_activity(1, &act).unwrap();
    let rb = b.simulate_activity(1, &act).unwrap();
    assert_eq!(ra, rb);
    assert_eq!(
        (ra.created.len(), ra.renamed.len(), ra.deleted.len()),
        (3, 4, 2)
    );
    assert!(ra.renamed.iter().any(
        |(f, t)| f.to_string_lossy().contains("/new/") && t.to_string_lossy().ends_with(":2,S")
    ));
    assert!(ra.renamed.iter().any(
        |(f, t)| f.to_string_lossy().ends_with(":2,") && t.to_string_lossy().ends_with(":2,S")
    ));
}
