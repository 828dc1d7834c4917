//! Running migrations in tests: through the library (events collected) or the binary,
//! inventory variants of a lab, and the data check every fault test ends with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use cmfleet::lab::Manifest;
use cmfleet::model::events::Event;
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, JournalData, JournalError};
use cmfleet::pipeline::migrate::{migrate, MigrateError, MigrateOptions};
use cmfleet::pipeline::scheduler::{Cancel, Outcome};

use super::lab::TestLab;

/// The trees a migration moves (and that must be identical afterwards).
pub const TREES: [&str; 4] = [
    "/home/vmail/mail",
    "/var/lib/acme",
    "/etc/dkimkeys",
    "/var/spool/postfix",
];

pub fn options(until: Step) -> MigrateOptions {
    MigrateOptions {
        from_step: None,
        until_step: until,
        restart: false,
        dry_run: false,
        force: false,
        refresh: false,
    }
}

/// Runs migrate through the library, as `cmfleet migrate --yes` does; returns the
/// outcome, the journal and every event.
pub fn run(inv: &Inventory, until: Step) -> (Outcome, Journal, Vec<Event>) {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    // The journal's lock (`flock`) of the run before this one can outlive it for a
    // moment: another test thread that forks a process between its fork and exec
    // holds a copy of every open descriptor, the lock's too. A test binary runs its
    // tests side by side; a `cmfleet` process runs one migrate.
    let mut attempts = 0;
    let (outcome, journal) = loop {
        let seen = seen.clone();
        match rt.block_on(migrate(
            inv,
            &relays,
            &options(until),
            rx.clone(),
            move |ev, _| {
                if !matches!(ev, Event::Output { .. } | Event::Progress { .. }) {
                    seen.lock().expect("events").push(ev.clone());
                }
            },
        )) {
            Ok(done) => break done,
            Err(MigrateError::Journal(JournalError::Locked { .. })) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("migrate failed to run: {e}"),
        }
    };
    let events = std::mem::take(&mut *events.lock().expect("events"));
    (outcome, journal, events)
}

/// Failed attempts of `step` of `relay` in `events`: (kind, error, will_retry).
pub fn failures(
    events: &[Event],
    relay: &str,
    step: Step,
) -> Vec<(cmfleet::model::step::ErrorKind, String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepFailed {
                relay: r,
                step: s,
                kind,
                error,
                will_retry,
                ..
            } if r == relay && *s == step => Some((*kind, error.clone(), *will_retry)),
            _ => None,
        })
        .collect()
}

/// `cmfleet ARGS` (the binary): exit code and stdout + stderr.
pub fn cmfleet(args: &[&str], inventory: &Path) -> (Option<i32>, String) {
    let out = cmfleet_output(args, inventory);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

pub fn cmfleet_output(args: &[&str], inventory: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(args)
        .arg("-i")
        .arg(inventory)
        .env_remove("CMFLEET_PROGRESS")
        .output()
        .expect("run cmfleet")
}

/// Writes a variant of the lab's inventory (`edit` gets the text) next to it.
pub fn variant(lab: &TestLab, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let path = lab.path().join(name);
    std::fs::write(&path, edit(text)).expect("write inventory");
    path
}

/// Gives relay `index`'s NEW an empty 128 MiB tmpfs over /home/vmail (room for the
/// preflights: the mail plus their 64 MiB margin) and returns a `pre_cutover` hook
/// line that fills it and delivers a 4 MiB message to OLD: step 4, inside the
/// downtime, then runs out of space on NEW.
pub fn disk_filled_inside_the_downtime(lab: &mut TestLab, index: usize) -> String {
    let relay = lab.relay(index).expect("relay");
    lab.set_vmail_tmpfs(relay.new.addr, Some(128 << 20))
        .expect("small disk");
    // Reached through the running sshd's root (the tmpfs is in its namespace).
    let fill = lab
        .relay(index)
        .expect("relay")
        .new
        .path("/home/vmail/fill");
    let late = relay.old.path(&format!(
        "/home/vmail/mail/{}/late-arrival",
        relay.mail_domain
    ));
    format!(
        "dd if=/dev/zero of='{fill}' bs=1M >/dev/null 2>&1; head -c 4M /dev/urandom > '{late}'; chown --reference='{dir}' '{late}'; exit 0",
        fill = fill.display(),
        late = late.display(),
        dir = late.parent().expect("domain dir").display(),
    )
}

/// Adds `lines` to the inventory's `[fleet]` and `[defaults]` tables.
pub fn with_settings(text: String, fleet: &str, defaults: &str) -> String {
    text.replace("[fleet]\n", &format!("[fleet]\n{fleet}"))
        .replace("[defaults]\n", &format!("[defaults]\n{defaults}"))
}

/// Every relay's trees on NEW are exact copies of OLD's: nothing lost, nothing
/// duplicated or resurrected. Returns the number of mail files compared.
pub fn assert_trees_equal(lab: &TestLab) -> usize {
    let mut files = 0;
    for relay in lab.relays() {
        files += assert_relay_equal(lab, relay.index);
    }
    files
}

/// One relay's trees on NEW equal OLD's; returns the number of mail files.
pub fn assert_relay_equal(lab: &TestLab, index: usize) -> usize {
    let relay = lab.relay(index).expect("relay");
    let mut files = 0;
    for tree in TREES {
        if tree == "/var/spool/postfix" {
            assert_queue_equal(&relay.old.path(tree), &relay.new.path(tree), relay.index);
            continue;
        }
        let a = Manifest::of(&relay.old.path(tree)).expect("old manifest");
        let b = Manifest::of(&relay.new.path(tree)).expect("new manifest");
        let diff = a.diff(&b);
        assert!(
            diff.is_empty(),
            "relay {} {tree} differs:\n{}",
            relay.index,
            diff.join("\n")
        );
        if tree == "/home/vmail/mail" {
            files = a.files();
        }
    }
    files
}

/// The Postfix queue on NEW holds what OLD's held: per queue directory the same number
/// of files with the same contents. Names may differ (`postsuper -s` renames queue files
/// after their inodes, which changed), sockets are the daemons' own (recreated when they
/// start) and pid/ is the running master's.
fn assert_queue_equal(old: &Path, new: &Path, relay: usize) {
    fn contents(dir: &Path, out: &mut Vec<Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("list queue dir") {
            let e = e.expect("queue entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                contents(&e.path(), out);
            } else if ft.is_file() {
                out.push(std::fs::read(e.path()).expect("read queue file"));
            }
        }
    }
    let queues = |root: &Path| -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
        let mut m = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(root).expect("list queue") {
            let e = e.expect("queue dir");
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().expect("file type").is_dir() && name != "pid" {
                let mut files = Vec::new();
                contents(&e.path(), &mut files);
                files.sort();
                m.insert(name, files);
            }
        }
        m
    };
    let (a, b) = (queues(old), queues(new));
    for (q, files) in &a {
        let other = b.get(q).map_or(0, Vec::len);
        assert_eq!(
            Some(files),
            b.get(q),
            "relay {relay}: queue {q}: {} file(s) on OLD, {other} on NEW (or different contents)",
            files.len()
        );
    }
    assert!(
        a.values().map(Vec::len).sum::<usize>() > 0,
        "relay {relay}: OLD's queue is empty: the lab put deferred mail there"
    );
}

/// The journal as the next run would read it (unlocked).
pub fn peek(inv: &Inventory) -> JournalData {
    Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal")
}

/// Waits (polling) until `pred` holds for the relay's log, or panics after `secs`.
pub fn wait_for_log(inv: &Inventory, relay: &str, secs: u64, pred: impl Fn(&str) -> bool) {
    let log = inv
        .fleet
        .state_dir
        .join("logs")
        .join(format!("{relay}.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if pred(&std::fs::read_to_string(&log).unwrap_or_default()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never showed what the test waits for:\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Writes a copy of the lab inventory whose relays use rfc2136 against `primary`.
pub fn rfc2136_inventory(
    lab: &TestLab,
    primary: &super::bind::Bind,
    ns: std::collections::BTreeMap<String, std::net::SocketAddr>,
) -> std::path::PathBuf {
    let ns: Vec<String> = ns
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
        .collect();
    let dns = format!(
        "dns = {{ provider = \"rfc2136\", server = \"{}\", zone = \"lab.test\", tsig_key_file = \"{}\", propagation_timeout = \"30s\", nameservers = {{ {} }} }}",
        primary.addr,
        primary.key_file.display(),
        ns.join(", ")
    );
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let text = text.replace("dns = { provider = \"none\" }", &dns);
    let path = lab.path().join("dns.toml");
    std::fs::write(&path, text).expect("write inventory");
    path
}

/// `migrate` up to step 2, as operators pre-stage (no prompt, plain progress).
pub const PRE_STAGE: [&str; 6] = [
    "migrate",
    "--yes",
    "--until-step",
    "2",
    "--progress",
    "plain",
];
