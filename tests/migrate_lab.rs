//! `migrate` for real on the lab: six steps over ssh, verified data, resume.

mod common;

use std::path::Path;

use cmfleet::lab::{Activity, Manifest};
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, RelayState};
use cmfleet::pipeline::migrate::migrate;
use cmfleet::pipeline::scheduler::Cancel;
use common::lab::TestLab;
use common::run::{assert_trees_equal, options, rfc2136_inventory, variant, with_settings};

/// Runs migrate through the library, as `cmfleet migrate --yes` does.
fn run(inv: &Inventory, until: Step) -> (cmfleet::pipeline::scheduler::Outcome, Journal) {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    rt.block_on(migrate(inv, &relays, &options(until), rx, |_, _| {}))
        .unwrap_or_else(|e| panic!("migrate failed to run: {e}"))
}

#[test]
fn full_migration_with_mail_activity_leaves_exact_copies() {
    let lab = TestLab::start(4);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");

    // Pre-stage the fleet (no downtime), then mail keeps arriving and moving.
    let (outcome, journal) = run(&inv, Step::Preconfigure);
    assert_eq!(outcome.failed, Vec::<String>::new(), "{:#?}", journal.data);
    drop(journal);
    for relay in lab.relays() {
        let report = lab
            .simulate_activity(
                relay.index,
                &Activity {
                    new_messages: 3,
                    seen: 2,
                    flag_changes: 2,
                    deletions: 2,
                    message_size: 700,
                    seed: 11,
                },
            )
            .expect("activity");
        assert_eq!(report.renamed.len(), 4);
        assert_eq!(report.deleted.len(), 2);
        let state = lab.host_state(relay.new.addr).expect("state");
        assert!(state.configured && !state.active, "{state:?}");
    }

    let started = std::time::Instant::now();
    let (outcome, journal) = run(&inv, Step::Activate);
    eprintln!(
        "cutover of 4 lab relays: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(outcome.done.len(), 4, "{outcome:?}\n{:#?}", journal.data);
    for r in journal.data.relays.values() {
        assert_eq!(r.state(), RelayState::Done);
        assert!(r.downtime().is_some());
    }
    // No duplicates from renames, no resurrected deletions: the trees are identical.
    assert_trees_equal(&lab);
    let users = lab.users();
    for relay in lab.relays() {
        let mail = Manifest::of(&relay.new.path("/home/vmail/mail")).expect("manifest");
        assert!(mail
            .0
            .values()
            .all(|e| e.uid == users.vmail_uid && e.gid == users.vmail_gid));
        let old = lab.host_state(relay.old.addr).expect("old state");
        let new = lab.host_state(relay.new.addr).expect("new state");
        assert!(old.mail_disabled && !old.active, "old: {old:?}");
        assert!(new.active && new.configured, "new: {new:?}");
        // A direct copy keeps the spool's owners by name: nothing for set-permissions.
        assert!(
            !new.postfix_log
                .iter()
                .any(|l| l.contains("set-permissions")),
            "{:?}",
            new.postfix_log
        );
        assert_spool_owned_by_postfix(&relay.new, &users);
        assert!(
            new.postfix_log.iter().any(|l| l.contains("postsuper -s")),
            "{:?}",
            new.postfix_log
        );
        assert!(cmfleet::lab::port_accepts(relay.new.addr, 25));
        assert!(!cmfleet::lab::port_accepts(relay.old.addr, 25));
    }
    // Logs are private.
    let log = inv
        .fleet
        .state_dir
        .join("logs")
        .join(format!("{}.log", lab.relays()[0].mail_domain));
    let mode = std::fs::metadata(&log)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "{}", log.display());

    // A second run has nothing left to do.
    drop(journal);
    let (outcome, _) = run(&inv, Step::Activate);
    assert!(
        outcome.done.is_empty() && outcome.failed.is_empty(),
        "{outcome:?}"
    );
}

#[test]
fn staged_mode_works_when_old_cannot_reach_new() {
    let lab = TestLab::start(2);
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let text = text.replace("[defaults]\n", "[defaults]\ntransfer = \"staged\"\n");
    let path = lab.path().join("staged.toml");
    std::fs::write(&path, text).expect("write inventory");
    // Without the agent, OLD cannot authenticate to NEW: only the staged path works.
    for relay in lab.relays() {
        let out = lab
            .ssh(relay.old.addr, &["-a"])
            .arg(format!(
                "ssh -o BatchMode=yes -o ConnectTimeout=3 root@{} true",
                relay.new.addr
            ))
            .output()
            .expect("ssh");
        assert!(!out.status.success(), "OLD reached NEW without an agent");
    }
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 2, "{outcome:?}\n{:#?}", journal.data);
    assert_trees_equal(&lab);
    // The staged copy carries OLD's numeric owners: Postfix's own repair runs.
    for relay in lab.relays() {
        let new = lab.host_state(relay.new.addr).expect("new state");
        assert!(
            new.postfix_log
                .iter()
                .any(|l| l.contains("set-permissions")),
            "{:?}",
            new.postfix_log
        );
        assert_spool_owned_by_postfix(&relay.new, &lab.users());
    }
    assert!(!Path::new(
        &inv.fleet
            .state_dir
            .join("staging")
            .join(&lab.relays()[0].mail_domain)
    )
    .exists());
}

/// Why step 4 runs no `postfix set-permissions` after a direct copy: the final sync
/// gives the spool's files the owner of the same *name* on NEW, whatever its number
/// there. A user whose uid and gid differ between OLD and NEW owns a file in OLD's
/// spool; on NEW the copy belongs to NEW's numbers for that name.
#[test]
fn a_direct_final_sync_gives_the_spool_owners_by_name() {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt;
    let lab = TestLab::start(1);
    let relay = &lab.relays()[0];
    let (name, old_id, new_id) = ("cmfleet-probe", 6101, 6102);
    for (host, id) in [(&relay.old, old_id), (&relay.new, new_id)] {
        // The host's own /etc/passwd and /etc/group (bind-mounted from its directory).
        for (table, line) in [
            (
                "passwd",
                format!("{name}:x:{id}:{id}::/:/usr/sbin/nologin\n"),
            ),
            ("group", format!("{name}:x:{id}:\n")),
        ] {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(host.dir.join(table))
                .expect("open host table");
            f.write_all(line.as_bytes()).expect("append");
        }
    }
    let probe = "/var/spool/postfix/cmfleet-owner-probe";
    std::fs::write(relay.old.path(probe), "x").expect("write probe");
    std::os::unix::fs::chown(relay.old.path(probe), Some(old_id), Some(old_id)).expect("chown");

    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let (outcome, journal) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{outcome:?}\n{:#?}", journal.data);
    let meta = std::fs::metadata(relay.new.path(probe)).expect("probe copied to new");
    assert_eq!((meta.uid(), meta.gid()), (new_id, new_id), "owner on new");
    assert_spool_owned_by_postfix(&relay.new, &lab.users());
}

#[test]
fn a_second_concurrent_migrate_refuses() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let _held = Journal::open(&inv.fleet.state_dir, &inv.path).expect("first lock");
    let relays = inventory::select(&inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let err = rt
        .block_on(migrate(
            &inv,
            &relays,
            &options(Step::Activate),
            rx,
            |_, _| {},
        ))
        .expect_err("second run must refuse");
    assert!(
        err.to_string()
            .contains("another cmfleet run holds the journal lock"),
        "{err}"
    );
}

#[test]
fn rfc2136_dns_switch_against_real_bind_primary_and_secondary() {
    use common::bind::Bind;
    let lab = TestLab::start(2);
    let relays = lab.relays();
    let records: Vec<String> = relays
        .iter()
        .map(|r| format!("relay{} 300 IN A {}", r.index, r.old.addr))
        .collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let (primary, secondary) = Bind::pair("lab.test", &records);
    let path = rfc2136_inventory(
        &lab,
        &primary,
        Bind::nameservers(&primary, Some(&secondary)),
    );
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 2, "{outcome:?}\n{:#?}", journal.data);
    for r in &relays {
        let name = format!("relay{}.lab.test", r.index);
        assert_eq!(primary.dig(&name, "A"), vec![r.new.addr.to_string()]);
        assert_eq!(secondary.dig(&name, "A"), vec![r.new.addr.to_string()]);
    }
    // The TSIG secret never reaches the journal or the logs.
    let secret = std::fs::read_to_string(&primary.key_file).expect("key");
    let secret = secret
        .split('"')
        .nth(3)
        .expect("secret in key file")
        .to_string();
    let journal_text = std::fs::read_to_string(journal.path()).expect("journal");
    assert!(!journal_text.contains(&secret));
    for r in &relays {
        let log = inv
            .fleet
            .state_dir
            .join("logs")
            .join(format!("relay{}.lab.test.log", r.index));
        let log = std::fs::read_to_string(log).expect("log");
        assert!(!log.contains(&secret));
        assert!(log.contains("propagated to 2 nameservers"), "{log}");
    }
}

/// The controller dies (SIGKILL) in the middle of step 1; the next run re-runs the
/// interrupted step (every step is idempotent) and finishes with identical data.
#[test]
fn sigkill_mid_step_1_then_migrate_again_finishes_with_identical_data() {
    let lab = TestLab::start_with(
        2,
        cmfleet::lab::DataOptions {
            users: 20,
            messages: 40,
            message_size: 4096,
            seed: 5,
        },
    );
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let journal = cmfleet::pipeline::journal::journal_path(&inv.fleet.state_dir, &inv.path);
    let bin = env!("CARGO_BIN_EXE_cmfleet");
    let mut child = std::process::Command::new(bin)
        .args(["migrate", "--yes", "--progress", "plain", "-i"])
        .arg(lab.inventory())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cmfleet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if text.contains("\"running\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "step 1 never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let text = std::fs::read_to_string(&journal).expect("journal");
    assert!(
        text.contains("\"running\""),
        "killed while a step was running"
    );

    let out = std::process::Command::new(bin)
        .args(["migrate", "--yes", "--progress", "plain", "-i"])
        .arg(lab.inventory())
        .output()
        .expect("run cmfleet again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_trees_equal(&lab);
    let data = Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal");
    assert!(data.relays.values().all(|r| r.state() == RelayState::Done));
}

/// The same concurrent runs that break in one checkout (see lab_cmdeploy) succeed
/// when each borrows its own workspace from the pool.
#[test]
fn concurrent_cmdeploy_runs_succeed_with_the_workspace_pool() {
    use cmfleet::host::remote::WorkspacePool;
    let lab = TestLab::start(3);
    let root = lab.path().join("ws");
    let pool = WorkspacePool::prepare(&lab.cmdeploy(), &root, 3).expect("pool");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sock = lab.agent_sock();
    let relays = lab.relays();
    let results = rt.block_on(async {
        let runs = relays.iter().map(|r| {
            let (pool, sock) = (&pool, &sock);
            async move {
                let ws = pool.borrow(false).await.expect("workspace");
                tokio::process::Command::new(ws.dir().join(&pool.script))
                    .args(["run", "--config"])
                    .arg(&r.config)
                    .args(["--ssh-host", &r.new.addr.to_string()])
                    .env("CMDEPLOY_STAGES", "install,configure")
                    .env("SSH_AUTH_SOCK", sock)
                    .current_dir(ws.dir())
                    .output()
                    .await
                    .expect("run cmdeploy")
            }
        });
        futures::future::join_all(runs).await
    });
    for out in &results {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for r in lab.relays() {
        assert!(lab.host_state(r.new.addr).expect("state").configured);
    }
}

/// Each relay's NEW gets its own website. The real cmdeploy renders it from and into
/// the repository its imported package lives in (www.py, get_paths), which for the
/// workspaces' shared venv is the operator's checkout: four concurrent pre-stagings
/// rendered into one www/build, and a NEW could serve another relay's page (before the
/// fix, the original checkout had a www/build). cmfleet puts each workspace's own
/// packages first on PYTHONPATH.
#[test]
fn concurrent_pre_stagings_render_each_relays_own_website_in_its_workspace() {
    let lab = TestLab::start(4);
    let path = variant(&lab, "websites.toml", |t| {
        with_settings(t, "cmdeploy_runs = 4\n", "")
    });
    let (code, text) = common::run::cmfleet(&common::run::PRE_STAGE, &path);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !lab.cmdeploy()
            .parent()
            .and_then(|scripts| scripts.parent())
            .expect("checkout")
            .join("www/build")
            .exists(),
        "a run rendered the website into the operator's checkout"
    );
    for r in lab.relays() {
        let page = std::fs::read_to_string(r.new.path("/var/lib/chatmail-lab/www/index.html"))
            .expect("the uploaded page");
        assert!(
            page.contains(&format!("chatmail relay {} (lab)", r.mail_domain)),
            "{}: {page}",
            r.mail_domain
        );
    }
}

/// Debian's package scripts start postfix, dovecot and opendkim when step 2 installs
/// them, and chatmail's activate-only step 6 restarts nothing that runs: left running,
/// they kept step 2's setup through the cutover (on a real 1.9.0 relay: dovecot with
/// Debian's PAM default, so no user could log in on NEW). The stand-in starts the mail
/// system at install like the packages do; cmfleet stops it again at the end of step
/// 2, so NEW takes no mail before step 6 and its activation starts it fresh.
#[test]
fn new_serves_no_mail_between_the_pre_stage_and_its_activation() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let (code, text) = common::run::cmfleet(&common::run::PRE_STAGE, &lab.inventory());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !cmfleet::lab::port_accepts(relay.new.addr, 25),
        "NEW takes mail after step 2"
    );
    let (code, text) = common::run::cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(cmfleet::lab::port_accepts(relay.new.addr, 25));
}

/// Binds a unix socket at `path` (the file stays after the binder closes it), as a
/// running service's; returns its inode.
fn socket_at(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_file(path);
    drop(std::os::unix::net::UnixListener::bind(path).expect("bind a socket"));
    std::fs::metadata(path).expect("socket").ino()
}

/// Step 4 mirrors OLD's Postfix spool with `--delete`, but the spool also holds the
/// running services' sockets: before the fix a socket only NEW's services had was
/// deleted (and OLD's were copied as dead files). Now no socket is copied and NEW's
/// are kept, the very same files.
#[test]
fn the_final_sync_keeps_news_sockets_and_copies_none_of_olds() {
    use std::os::unix::fs::MetadataExt;
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let (code, text) = common::run::cmfleet(&common::run::PRE_STAGE, &lab.inventory());
    assert_eq!(code, Some(0), "{text}");
    let spool =
        |host: &cmfleet::lab::LabHost, rel: &str| host.path(&format!("/var/spool/postfix/{rel}"));
    std::fs::create_dir_all(spool(&relay.new, "opendkim")).expect("mkdir");
    let live = [
        socket_at(&spool(&relay.new, "private/cmfleet-new-only")),
        socket_at(&spool(&relay.new, "opendkim/opendkim.sock")),
    ];
    socket_at(&spool(&relay.old, "private/cmfleet-old-only"));
    let (code, text) = common::run::cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(0), "{text}");
    for (rel, ino) in [
        ("private/cmfleet-new-only", live[0]),
        ("opendkim/opendkim.sock", live[1]),
    ] {
        let meta = std::fs::symlink_metadata(spool(&relay.new, rel))
            .unwrap_or_else(|e| panic!("NEW's {rel} is gone: {e}"));
        assert_eq!(meta.ino(), ino, "NEW's {rel} was replaced");
    }
    assert!(
        !spool(&relay.new, "private/cmfleet-old-only").exists(),
        "a dead copy of OLD's socket is on NEW"
    );
}

/// The guide's TTL advice as commands: lower-ttl records and lowers, migrate holds
/// the cutover until the old TTL has elapsed (or --force), restore-ttl puts it back.
#[test]
fn lower_ttl_holds_the_cutover_and_restore_ttl_puts_it_back() {
    use common::bind::Bind;
    let lab = TestLab::start(1);
    let relay = &lab.relays()[0];
    let (name, old, new) = (
        "relay1.lab.test",
        relay.old.addr.to_string(),
        relay.new.addr.to_string(),
    );
    let primary = Bind::primary("lab.test", &[&format!("relay1 3600 IN A {old}")]);
    let path = rfc2136_inventory(&lab, &primary, Bind::nameservers(&primary, None));
    let bin = env!("CARGO_BIN_EXE_cmfleet");
    let cmfleet = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("-i")
            .arg(&path)
            .output()
            .expect("run cmfleet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = cmfleet(&["dns", "lower-ttl", "--ttl", "60"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("TTL 3600s -> 60s"), "{text}");
    assert_eq!(primary.records(name, "A"), vec![(60, old.clone())]);

    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("held back: relay1.lab.test: not cut over"),
        "{text}"
    );
    let state = lab.host_state(relay.old.addr).expect("state");
    assert!(!state.mail_disabled, "the old site must still serve mail");
    assert!(
        lab.host_state(relay.new.addr).expect("state").configured,
        "steps 1-2 ran"
    );

    let (code, text) = cmfleet(&["migrate", "--yes", "--force", "--progress", "plain"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(primary.dig(name, "A"), vec![new.clone()]);

    let (code, text) = cmfleet(&["dns", "restore-ttl"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(primary.records(name, "A"), vec![(3600, new)]);
}

/// Six relays, forks 3, one cutover at a time, and one NEW host unreachable for
/// the first seconds: the transient failures are retried and every relay finishes.
#[test]
fn a_new_host_down_at_first_is_retried_and_the_fleet_finishes() {
    let mut lab = TestLab::start(6);
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let text = text
        .replace("[fleet]\n", "[fleet]\nforks = 3\ncutovers = 1\n")
        .replace(
            "[defaults]\n",
            "[defaults]\nretry = { attempts = 6, backoff = \"1s\", max_backoff = \"2s\" }\n",
        );
    let path = lab.path().join("limits.toml");
    std::fs::write(&path, text).expect("write inventory");
    let inv = Inventory::load(&path).expect("inventory");
    let down = lab.relays()[0].new.addr;
    lab.stop_host(down).expect("stop NEW");
    let restart = std::thread::spawn({
        let dir = lab.path().to_path_buf();
        move || {
            std::thread::sleep(std::time::Duration::from_secs(5));
            let mut lab = cmfleet::lab::Lab::open(&dir).expect("open lab");
            lab.start_host(down).expect("start NEW again");
        }
    });
    let (outcome, journal) = run(&inv, Step::Activate);
    restart.join().expect("restart thread");
    assert_eq!(outcome.done.len(), 6, "{outcome:?}\n{:#?}", journal.data);
    let first = &journal.data.relays[&lab.relays()[0].mail_domain];
    let s1 = first.step(Step::InitialSync);
    assert!(s1.attempts >= 2, "the unreachable host was retried: {s1:?}");
    // Cutovers never overlapped (cutovers = 1).
    let mut windows: Vec<(u64, u64)> = journal
        .data
        .relays
        .values()
        .map(|r| (r.down_since_ms.unwrap_or(0), r.up_again_ms.unwrap_or(0)))
        .collect();
    windows.sort();
    for w in windows.windows(2) {
        assert!(w[0].1 <= w[1].0, "downtime windows overlap: {windows:?}");
    }
    assert_trees_equal(&lab);
}

/// `--refresh` runs step 1 again before the cutover: NEW catches up with mail that
/// arrived since the pre-stage, while OLD keeps serving, so the final sync inside
/// the downtime has little left to move.
#[test]
fn refresh_reruns_step_1_before_the_cutover_only() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let (outcome, journal) = run(&inv, Step::Preconfigure);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    drop(journal);
    let relay = &lab.relays()[0];
    lab.simulate_activity(
        1,
        &Activity {
            new_messages: 5,
            seen: 2,
            flag_changes: 2,
            deletions: 1,
            message_size: 500,
            seed: 3,
        },
    )
    .expect("activity");
    let bin = env!("CARGO_BIN_EXE_cmfleet");
    let refresh = |until: &str| {
        std::process::Command::new(bin)
            .args([
                "migrate",
                "--yes",
                "--progress",
                "plain",
                "--refresh",
                "--until-step",
                until,
                "-i",
            ])
            .arg(lab.inventory())
            .output()
            .expect("run cmfleet")
    };
    let out = refresh("1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let old = Manifest::of(&relay.old.path("/home/vmail/mail")).expect("old");
    let new = Manifest::of(&relay.new.path("/home/vmail/mail")).expect("new");
    assert!(
        old.diff(&new).is_empty(),
        "NEW caught up: {:?}",
        old.diff(&new)
    );
    let data = Journal::peek(&inv.fleet.state_dir, &inv.path).expect("journal");
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(
        rec.step(Step::InitialSync).attempts,
        1,
        "a fresh run of step 1, not a retry"
    );
    assert!(
        !lab.host_state(relay.old.addr).expect("old").mail_disabled,
        "OLD still serves"
    );
    // Once the relay is cut over, --refresh never touches step 1 again.
    let (outcome, journal) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    drop(journal);
    let out = refresh("6");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("initial-sync: started"));
}

/// A cutover run soon after the pre-staging run reuses the pre-staging run's ssh
/// masters (kept idle for a while) instead of logging in to OLD and NEW again; after
/// the cutover none is kept.
#[test]
fn a_cutover_soon_after_pre_staging_reuses_its_connections() {
    let lab = TestLab::start(1);
    let relay = lab.relays()[0].clone();
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let kept = || {
        std::fs::read_to_string(inv.fleet.state_dir.join("masters"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let logins = || {
        let host = lab.host(relay.old.addr).expect("old host");
        std::fs::read_to_string(host.sshd_log())
            .expect("sshd log")
            .matches("Accepted publickey")
            .count()
    };

    let (outcome, journal) = run(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);
    assert_eq!(kept(), 2, "OLD's and NEW's masters are kept");
    let before = logins();
    let (outcome, journal) = run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 1, "{:#?}", journal.data);
    // The one new login on OLD is the stand-in cmdeploy's own (step 3).
    assert_eq!(logins() - before, 1, "cmfleet logged in to OLD again");
    assert_eq!(kept(), 0, "nothing is kept after the cutover");
    assert_trees_equal(&lab);
}

/// A pre-stage older than `refresh_after` is refreshed right before step 3 (while
/// OLD still serves), so the final sync inside the downtime moves little; a recent
/// one is not.
#[test]
fn an_old_pre_stage_is_refreshed_before_the_cutover() {
    let lab = TestLab::start(2);
    let path = common::run::variant(&lab, "refresh.toml", |text| {
        // Relay 2 keeps the default (an hour); relay 1's pre-stage is old after 1 s.
        text.replacen("[[relay]]\n", "[[relay]]\nrefresh_after = \"1s\"\n", 1)
    });
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal, _) = common::run::run(&inv, Step::Preconfigure);
    assert_eq!(outcome.done.len(), 2, "{:#?}", journal.data);
    drop(journal);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (outcome, journal, events) = common::run::run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 2, "{:#?}", journal.data);
    let started = |relay: &str| -> Vec<Step> {
        events
            .iter()
            .filter_map(|e| match e {
                cmfleet::model::events::Event::StepStarted { relay: r, step, .. } if r == relay => {
                    Some(*step)
                }
                _ => None,
            })
            .collect()
    };
    let first = inv.relays[0].name.clone();
    let second = inv.relays[1].name.clone();
    assert_eq!(
        started(&first)[..2],
        [Step::InitialSync, Step::DisableOld],
        "{:?}",
        started(&first)
    );
    assert_eq!(
        started(&second)[0],
        Step::DisableOld,
        "{:?}",
        started(&second)
    );
    common::run::assert_trees_equal(&lab);
}

/// `-vv` shows what cmfleet decides, per relay and step: every line of a relay's
/// work names it (a span), and connections and retries say what happened.
#[test]
fn verbose_logs_carry_the_relay_and_step() {
    let lab = TestLab::start(1);
    let out = common::run::cmfleet_output(
        &["migrate", "--yes", "--progress", "plain", "-vv"],
        &lab.inventory(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("relay{name=relay1.lab.test}:step{step=final-sync}"),
        "{err}"
    );
    assert!(err.contains("new master connection"), "{err}");
    assert!(err.contains("cutover slot taken"), "{err}");
}

/// The chatmail checkout moves to a new commit between pre-staging and the
/// cutover (the operator pulled): the reports name, per relay, the commit step 2
/// deployed on NEW and the one step 6 deployed, and which cmfleet ran.
#[test]
fn a_checkout_moved_between_runs_is_named_per_step_in_the_reports() {
    let lab = TestLab::start(1);
    let inv = lab.inventory();
    let relay = lab.relay(1).expect("relay").mail_domain;
    let checkout = lab.checkout();
    let git = |args: &[&str]| {
        common::lab::ok(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&checkout)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args),
        )
        .trim()
        .to_string()
    };
    let json = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("read a JSON report"))
            .expect("a JSON report")
    };
    let first_commit = git(&["rev-parse", "HEAD"]);
    let staged = lab.path().join("staged.json");
    let (code, text) = common::run::cmfleet(
        &[
            "migrate",
            "--yes",
            "--progress",
            "plain",
            "--until-step",
            "2",
            "--report",
            &staged.display().to_string(),
        ],
        &inv,
    );
    assert_eq!(code, Some(0), "{text}");
    let staged = json(&staged);
    assert_eq!(
        staged["relays"][0]["deployed"]["preconfigure"], first_commit,
        "{staged:#}"
    );
    assert!(
        staged["relays"][0]["deployed"]["activate"].is_null(),
        "{staged:#}"
    );

    std::fs::write(checkout.join("UPGRADE-NOTE"), "a new chatmail release\n").expect("write");
    git(&["add", "UPGRADE-NOTE"]);
    git(&["commit", "-qm", "the operator pulled"]);
    let second_commit = git(&["rev-parse", "HEAD"]);
    assert_ne!(first_commit, second_commit);

    let night = lab.path().join("night.json");
    let (code, text) = common::run::cmfleet(
        &[
            "migrate",
            "--yes",
            "--progress",
            "plain",
            "--report",
            &night.display().to_string(),
        ],
        &inv,
    );
    assert_eq!(code, Some(0), "{text}");
    let (status, status_json) = common::run::cmfleet(&["status", "--format", "json"], &inv);
    assert_eq!(status, Some(0), "{status_json}");
    let status_json: serde_json::Value = serde_json::from_str(&status_json).expect("status JSON");
    let night = json(&night);
    for (what, doc) in [("report", &night), ("status", &status_json)] {
        let r = &doc["relays"][0];
        assert_eq!(r["relay"], relay.as_str(), "{what}: {doc:#}");
        assert_eq!(
            r["deployed"]["preconfigure"], first_commit,
            "{what}: {doc:#}"
        );
        assert_eq!(r["deployed"]["activate"], second_commit, "{what}: {doc:#}");
        assert_eq!(
            doc["cmfleet"]["version"],
            env!("CARGO_PKG_VERSION"),
            "{what}: {doc:#}"
        );
        assert!(doc["cmfleet"]["commit"].is_string(), "{what}: {doc:#}");
    }
    let (code, table) = common::run::cmfleet(&["status"], &inv);
    assert_eq!(code, Some(0), "{table}");
    for commit in [&first_commit, &second_commit] {
        assert!(table.contains(&commit[..12]), "{table}");
    }
    let page = lab.path().join("night.html");
    let (code, text) =
        common::run::cmfleet(&["report", "--html", &page.display().to_string()], &inv);
    assert_eq!(code, Some(0), "{text}");
    let page = std::fs::read_to_string(&page).expect("the HTML timeline");
    for commit in [&first_commit, &second_commit] {
        assert!(page.contains(&commit[..12]), "{page}");
    }
}

/// Postfix's queue on `host` as Postfix needs it: every queue directory and every
/// queued message owned by `postfix`, maildrop/ and public/ in group `postdrop`.
fn assert_spool_owned_by_postfix(host: &cmfleet::lab::LabHost, users: &cmfleet::lab::LabUsers) {
    use std::os::unix::fs::MetadataExt;
    let spool = host.path("/var/spool/postfix");
    let mut queued = 0;
    for queue in [
        "active", "deferred", "defer", "hold", "incoming", "maildrop", "public",
    ] {
        let dir = spool.join(queue);
        let meta = std::fs::metadata(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(meta.uid(), users.postfix_uid, "owner of {}", dir.display());
        if matches!(queue, "maildrop" | "public") {
            assert_eq!(meta.gid(), users.postdrop_gid, "group of {}", dir.display());
        }
        for entry in walk(&dir) {
            let meta = std::fs::symlink_metadata(&entry).expect("stat queue file");
            if meta.is_file() && queue != "maildrop" {
                assert_eq!(
                    meta.uid(),
                    users.postfix_uid,
                    "owner of {}",
                    entry.display()
                );
                queued += 1;
            }
        }
    }
    assert!(queued > 0, "no queued message in {}", spool.display());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
