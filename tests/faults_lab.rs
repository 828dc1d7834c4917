//! Faults a night-long fleet migration meets, injected on the lab: hosts crashing mid
//! transfer, an unreachable OLD at the cutover, a full disk, cmdeploy failing, the
//! controller killed at random points, a slow link. Each test ends with the relay done
//! or in a clearly reported state, the journal consistent, and (once the fault is gone)
//! NEW holding exactly OLD's data: no message lost, duplicated or resurrected.
//!
//! The full SIGKILL sweep: `CMFLEET_SIGKILL_POINTS=12 cargo test --test faults_lab sigkill`.

mod common;

use std::time::{Duration, Instant};

use cmfleet::lab::{Activity, DataOptions, Lab};
use cmfleet::model::inventory::Inventory;
use cmfleet::model::step::ErrorKind;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{RelayState, StepStatus};
use common::lab::TestLab;
use common::run::{
    assert_relay_equal, assert_trees_equal, cmfleet, disk_filled_inside_the_downtime, failures,
    peek, run, variant, wait_for_log, with_settings,
};

/// Transient failures get enough attempts to outlive a host down for a few seconds.
const RETRY: &str = "retry = { attempts = 6, backoff = \"1s\", max_backoff = \"2s\" }\n";

/// Crashes the host at `addr` of the lab in `dir` (sessions and transfers die with it)
/// and starts it again `down_for` later.
fn crash_and_restart(dir: &std::path::Path, addr: std::net::Ipv4Addr, down_for: Duration) {
    let mut lab = Lab::open(dir).expect("open lab");
    lab.crash_host(addr).expect("crash host");
    std::thread::sleep(down_for);
    lab.start_host(addr).expect("start host again");
}

/// After a run through a crash: the relay is done, and `step` failed only
/// transiently, was retried and took more than one attempt.
fn assert_recovered_at(
    outcome: &cmfleet::pipeline::scheduler::Outcome,
    journal: &cmfleet::pipeline::journal::Journal,
    events: &[cmfleet::model::events::Event],
    domain: &str,
    step: Step,
) {
    assert_eq!(outcome.done.len(), 1, "{outcome:?}\n{:#?}", journal.data);
    let f = failures(events, domain, step);
    assert!(!f.is_empty(), "{step}: the crash caused no failed attempt");
    for (kind, error, will_retry) in &f {
        assert_eq!(*kind, ErrorKind::Transient, "{step}: {error}");
        assert!(*will_retry, "{step}: not retried: {error}");
    }
    let rec = &journal.data.relays[domain];
    assert!(rec.step(step).attempts >= 2);
    assert_eq!(rec.state(), RelayState::Done);
}

/// NEW crashes while step 1's rsync pushes to it (OLD's link is slowed so the
/// transfer lasts seconds) and comes back 2 s later: retried, completes, exact copy.
#[test]
fn new_host_crash_mid_step_1_is_retried_and_the_copy_is_exact() {
    let lab = TestLab::start_with(
        1,
        DataOptions {
            users: 6,
            messages: 25,
            message_size: 8192,
            seed: 3,
        },
    );
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "retry.toml", |t| with_settings(t, "", RETRY));
    let inv = Inventory::load(&path).expect("inventory");
    lab.set_link_limit(relay.old.addr, Some(400))
        .expect("slow link");
    let watcher = std::thread::spawn({
        let (inv, dir, domain, new) = (
            inv.clone(),
            lab.path().to_path_buf(),
            relay.mail_domain.clone(),
            relay.new.addr,
        );
        move || {
            let waited = std::panic::catch_unwind(|| {
                // The first copy (tar, NEW is empty); the retry is an rsync delta.
                wait_for_log(&inv, &domain, 60, |l| l.contains("tar c -C / "))
            });
            if let Err(e) = waited {
                // Diagnostics for a run that never reached its transfer.
                let lab = Lab::open(&dir).expect("open lab");
                for host in lab.hosts() {
                    eprintln!(
                        "--- {} sshd log:\n{}",
                        host.addr,
                        std::fs::read_to_string(host.sshd_log()).unwrap_or_default()
                    );
                }
                let ps = std::process::Command::new("ps")
                    .args(["-eo", "pid,ppid,stat,etime,args"])
                    .output()
                    .expect("ps");
                for l in String::from_utf8_lossy(&ps.stdout).lines() {
                    if l.contains("ssh") || l.contains("rsync") || l.contains("cmdeploy") {
                        eprintln!("{l}");
                    }
                }
                std::panic::resume_unwind(e);
            }
            std::thread::sleep(Duration::from_millis(300));
            crash_and_restart(&dir, new, Duration::from_secs(2));
        }
    });
    let (outcome, journal, events) = run(&inv, Step::Activate);
    watcher.join().expect("watcher");
    assert_recovered_at(
        &outcome,
        &journal,
        &events,
        &relay.mail_domain,
        Step::InitialSync,
    );
    let rec = &journal.data.relays[&relay.mail_domain];
    assert!(Step::ALL
        .iter()
        .all(|s| rec.step(*s).status == StepStatus::Done || *s == Step::Dns));
    let files = assert_trees_equal(&lab);
    // The lab's files, the mail delivered over SMTP, and Dovecot's uidlists and indexes
    // of the accounts that got it.
    let smtp = cmfleet::lab::SMTP_ACCOUNTS.min(6) * cmfleet::lab::SMTP_MESSAGES;
    assert!(
        files > 6 * 25 + 6 * 4 + smtp,
        "every message and state file arrived: {files}"
    );
}

/// NEW crashes during the final sync (inside the downtime window) and comes back:
/// retried, the relay comes up on NEW with exactly OLD's mail, including the mail
/// that arrived after step 1.
#[test]
fn new_host_crash_mid_step_4_is_retried_and_the_copy_is_exact() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "retry.toml", |t| with_settings(t, "", RETRY));
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);
    // Mail keeps arriving after the initial sync: step 4 has ~1.2 MB to move.
    let report = lab
        .simulate_activity(
            1,
            &Activity {
                new_messages: 150,
                seen: 3,
                flag_changes: 3,
                deletions: 2,
                message_size: 8192,
                seed: 9,
            },
        )
        .expect("activity");
    assert_eq!(report.created.len(), 150);
    lab.set_link_limit(relay.old.addr, Some(400))
        .expect("slow link");
    let watcher = std::thread::spawn({
        let (inv, dir, domain, new) = (
            inv.clone(),
            lab.path().to_path_buf(),
            relay.mail_domain.clone(),
            relay.new.addr,
        );
        move || {
            wait_for_log(&inv, &domain, 60, |l| l.contains("rsync -aHR "));
            std::thread::sleep(Duration::from_millis(300));
            crash_and_restart(&dir, new, Duration::from_secs(2));
        }
    });
    let (outcome, journal, events) = run(&inv, Step::Activate);
    watcher.join().expect("watcher");
    assert_recovered_at(
        &outcome,
        &journal,
        &events,
        &relay.mail_domain,
        Step::FinalSync,
    );
    assert!(journal.data.relays[&relay.mail_domain].downtime().is_some());
    assert_trees_equal(&lab);
    let new = lab.host_state(relay.new.addr).expect("new state");
    assert!(new.active, "{new:?}");
}

/// OLD cannot be reached when step 3 is due: the relay is not cut over, mail on OLD
/// is never disabled (OLD keeps serving), the failure is reported at step 3 with its
/// kind, and once OLD is back the migration finishes.
#[test]
fn old_unreachable_at_step_3_is_not_cut_over() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "retry.toml", |t| {
        with_settings(
            t,
            "",
            "retry = { attempts = 2, backoff = \"1s\", max_backoff = \"1s\" }\n",
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);
    lab.stop_host(relay.old.addr).expect("stop OLD");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    lab.start_host(relay.old.addr).expect("start OLD");
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.failed_step(), Some(Step::DisableOld), "{rec:#?}");
    let s3 = rec.step(Step::DisableOld);
    let error = s3.error.clone().unwrap_or_default();
    assert!(
        error.contains(&relay.old.addr.to_string()),
        "the error names OLD: {error}"
    );
    assert!(s3.error_kind.is_some());
    assert!(text.contains("disable-old: FAILED"), "{text}");
    // Nothing after step 3 ran; NEW is not active; OLD still serves mail.
    for s in [Step::FinalSync, Step::Dns, Step::Activate] {
        assert_eq!(rec.step(s).attempts, 0, "{s:?} ran: {rec:#?}");
    }
    let old = lab.host_state(relay.old.addr).expect("old state");
    assert!(!old.mail_disabled, "mail on OLD was disabled: {old:?}");
    assert!(!lab.host_state(relay.new.addr).expect("new").active);
    // After the failure cmfleet looked: OLD still accepts mail, so the relay is not
    // DOWN (no rollback needed) and the report says so.
    assert_eq!(rec.state(), RelayState::Staged);
    assert!(rec.old_still_serving);
    assert!(text.contains("the old host still accepts mail"), "{text}");
    // OLD is back: the migration finishes from step 3.
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
}

/// NEW stops answering ssh right before step 4 (its sshd stopped; the controller's
/// masters kept by the pre-staging run live on, so the controller still gets through):
/// OLD's push to NEW is refused. The error names NEW and ssh's cause, not only the
/// command on OLD that ran the push; it stays transient (a retry may help), the relay
/// is DOWN, and once NEW is back the migration finishes with an exact copy.
#[test]
fn new_unreachable_at_step_4_names_the_new_host() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "retry.toml", |t| {
        with_settings(
            t,
            "",
            "retry = { attempts = 1, backoff = \"1s\", max_backoff = \"1s\" }\n",
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let migrate = ["migrate", "--yes", "--progress", "plain"];
    let (code, text) = cmfleet(&[&migrate[..], &["--until-step", "3"]].concat(), &path);
    assert_eq!(code, Some(0), "{text}");
    lab.stop_host(relay.new.addr).expect("stop NEW");
    let (code, text) = cmfleet(&migrate, &path);
    lab.start_host(relay.new.addr).expect("start NEW");
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.failed_step(), Some(Step::FinalSync), "{rec:#?}");
    let s4 = rec.step(Step::FinalSync);
    assert_eq!(s4.error_kind, Some(ErrorKind::Transient), "{rec:#?}");
    let error = s4.error.clone().unwrap_or_default();
    let new = relay.new.addr.to_string();
    let headline = error.lines().next().unwrap_or_default();
    assert!(
        headline.contains(&format!("new host root@{new}"))
            && headline.contains("Connection refused"),
        "the error names NEW and the cause: {error}"
    );
    assert!(
        text.contains("final-sync: FAILED") && text.contains(headline),
        "{text}"
    );
    assert_eq!(rec.state(), RelayState::Down);
    // NEW is back: the migration finishes from step 4.
    let (code, text) = cmfleet(&migrate, &path);
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
    assert_eq!(
        peek(&inv).relays[&relay.mail_domain].state(),
        RelayState::Done
    );
}

/// NEW's disk is too small for what OLD gained since step 1 when the cutover is due:
/// step 3's preflight refuses before OLD is touched. The relay stays staged, OLD keeps
/// serving, the error gives the numbers; with the disk fixed, migrate finishes.
/// (Before the fix step 3 took OLD down and step 4 failed with "No space left on
/// device", leaving the relay DOWN.)
#[test]
fn a_new_too_full_for_the_cutover_stays_staged_with_old_serving() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "retry.toml", |t| with_settings(t, "", RETRY));
    let inv = Inventory::load(&path).expect("inventory");
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert!(outcome.failed.is_empty(), "{:#?}", journal.data);
    drop(journal);
    lab.set_vmail_tmpfs(relay.new.addr, Some(16 * 1024))
        .expect("tiny disk");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(2), "{text}");
    let rec = peek(&inv).relays[&relay.mail_domain].clone();
    let s3 = rec.step(Step::DisableOld);
    assert_eq!(s3.status, StepStatus::Failed, "{rec:#?}");
    let error = s3.error.clone().unwrap_or_default();
    assert!(error.contains("disk new: too small"), "{error}");
    assert!(error.contains("needed with margin"), "{error}");
    assert_eq!(rec.state(), RelayState::Staged, "{rec:#?}");
    assert_eq!(rec.step(Step::FinalSync).attempts, 0, "{rec:#?}");
    assert!(!lab.host_state(relay.old.addr).expect("old").mail_disabled);
    assert!(cmfleet::lab::port_accepts(relay.old.addr, 25));
    assert!(text.contains("the old host still accepts mail"), "{text}");
    lab.set_vmail_tmpfs(relay.new.addr, None)
        .expect("normal disk");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
}

/// NEW's disk fills up inside the downtime (after step 3's preflight passed: a
/// `pre_cutover` hook fills it): a permanent failure (not retried), the relay is
/// DOWN and reported so with the rollback command; the rollback puts it back on
/// OLD; with the disk fixed, migrating again finishes with an exact copy.
#[test]
fn new_disk_full_at_step_4_is_down_reported_and_rolled_back() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let hook = disk_filled_inside_the_downtime(&mut lab, 1);
    let path = variant(&lab, "retry.toml", |t| {
        with_settings(
            t,
            "",
            &format!("{RETRY}hooks = {{ pre_cutover = \"{hook}\" }}\n"),
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    let s4 = rec.step(Step::FinalSync);
    assert_eq!(s4.status, StepStatus::Failed, "{rec:#?}");
    assert_eq!(s4.error_kind, Some(ErrorKind::Permanent), "{rec:#?}");
    assert_eq!(s4.attempts, 1, "a full disk is not retried");
    assert_eq!(rec.state(), RelayState::Down);
    let rollback = format!("cmfleet rollback -i {}", path.display());
    assert!(text.contains("DOWN"), "{text}");
    assert!(text.contains(&rollback), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    // cmfleet's own diagnosis, which does not depend on rsync's message making it
    // back through two ssh hops.
    let error = s4.error.clone().unwrap_or_default();
    assert!(error.contains("KiB free on its /home/vmail"), "{error}");
    assert!(lab.host_state(relay.old.addr).expect("old").mail_disabled);

    let (code, text) = cmfleet(&["rollback", "--limit", &relay.mail_domain], &path);
    assert_eq!(code, Some(0), "{text}");
    let old = lab.host_state(relay.old.addr).expect("old");
    assert!(!old.mail_disabled, "{old:?}");
    assert!(cmfleet::lab::port_accepts(relay.old.addr, 25));
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.rollbacks.len(), 1, "{rec:#?}");
    assert_ne!(rec.state(), RelayState::Down);

    // The disk is fixed (NEW's normal disk is empty: step 1 copies again).
    lab.set_vmail_tmpfs(relay.new.addr, None)
        .expect("normal disk");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
    assert_eq!(
        peek(&inv).relays[&relay.mail_domain].state(),
        RelayState::Done
    );
}

/// The stand-in cmdeploy fails (exit 1) at step 2 for relay 1, at step 3 for relay 2,
/// at step 6 for relay 3. Each fails at that step with cmdeploy's message; relays 1
/// and 2 keep OLD serving mail, relay 3 is DOWN and reported so. Without the faults,
/// the next run finishes all three.
#[test]
fn cmdeploy_failing_at_steps_2_3_6() {
    let lab = TestLab::start(3);
    let relays = lab.relays();
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let (r1, r2, r3) = (&relays[0], &relays[1], &relays[2]);
    let msg = |n: u8| format!("injected failure at step {n}");
    lab.set_cmdeploy_fault(&r1.new.addr.to_string(), &msg(2))
        .expect("fault");
    lab.set_cmdeploy_fault(&r2.old.addr.to_string(), &msg(3))
        .expect("fault");
    let (outcome, journal, _) = run(&inv, Step::Preconfigure);
    assert_eq!(outcome.failed, vec![r1.mail_domain.clone()]);
    drop(journal);
    lab.set_cmdeploy_fault(&r3.new.addr.to_string(), &msg(6))
        .expect("fault");
    let (code, text) = cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    for (r, step, n) in [
        (r1, Step::Preconfigure, 2),
        (r2, Step::DisableOld, 3),
        (r3, Step::Activate, 6),
    ] {
        let rec = &data.relays[&r.mail_domain];
        assert_eq!(rec.failed_step(), Some(step), "{rec:#?}");
        let s = rec.step(step);
        let error = s.error.clone().unwrap_or_default();
        assert!(error.contains(&msg(n)), "{error}");
        assert_eq!(s.error_kind, Some(ErrorKind::Permanent));
        assert!(
            text.contains(&msg(n)),
            "the report shows the message:\n{text}"
        );
    }
    // Relay 1: never started its cutover. Relay 2: cmdeploy failed before touching
    // OLD, which still accepts mail afterwards: not DOWN.
    for r in [r1, r2] {
        let old = lab.host_state(r.old.addr).expect("old");
        assert!(!old.mail_disabled, "{old:?}");
        assert!(!lab.host_state(r.new.addr).expect("new").active);
    }
    assert_eq!(data.relays[&r1.mail_domain].state(), RelayState::Staged);
    assert_eq!(data.relays[&r2.mail_domain].state(), RelayState::Staged);
    assert_eq!(
        data.relays[&r2.mail_domain].step(Step::FinalSync).attempts,
        0
    );
    // Relay 3: OLD disabled, data and DNS moved, NEW not active: DOWN, and said so.
    let rec3 = &data.relays[&r3.mail_domain];
    assert_eq!(rec3.state(), RelayState::Down);
    assert!(lab.host_state(r3.old.addr).expect("old").mail_disabled);
    assert!(!lab.host_state(r3.new.addr).expect("new").active);
    assert!(
        text.contains(&format!("{}  DOWN", r3.mail_domain)),
        "relay 3 reported DOWN:\n{text}"
    );
    assert_relay_equal(&lab, 3);

    for r in [r1, r2, r3] {
        lab.clear_cmdeploy_fault(&r.new.addr.to_string())
            .expect("clear");
        lab.clear_cmdeploy_fault(&r.old.addr.to_string())
            .expect("clear");
    }
    let (code, text) = cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
    assert!(peek(&inv)
        .relays
        .values()
        .all(|r| r.state() == RelayState::Done));
}

/// A tiny deterministic generator (splitmix64): the kill points depend on the seed only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The controller is SIGKILLed at seeded random points across a 6-relay migration
/// (CMFLEET_SIGKILL_POINTS times, default 3; seed CMFLEET_SIGKILL_SEED), each time
/// started again; then one last run finishes. Every relay ends done with exact data,
/// and the journal is readable after every kill.
#[test]
fn sigkill_at_random_points_then_migrate_again_finishes_exactly() {
    let points = env_u64("CMFLEET_SIGKILL_POINTS", 3);
    let seed = env_u64("CMFLEET_SIGKILL_SEED", 20240907);
    let lab = TestLab::start_with(
        6,
        DataOptions {
            users: 4,
            messages: 10,
            message_size: 4096,
            seed: 5,
        },
    );
    let path = variant(&lab, "sweep.toml", |t| {
        with_settings(t, "forks = 3\ncutovers = 2\n", RETRY)
    });
    let inv = Inventory::load(&path).expect("inventory");
    let bin = env!("CARGO_BIN_EXE_cmfleet");
    let mut rng = SplitMix(seed);
    let mut seen = Vec::new();
    for point in 0..points {
        // Kill after 0.3 to 3.3 s of a run: anywhere from the preflight to activation.
        let after = Duration::from_millis(300 + rng.next() % 3000);
        let started = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(["migrate", "--yes", "--progress", "plain", "-i"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start cmfleet");
        let finished = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() >= after {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if finished.is_none() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        // Readable, consistent, never half-written.
        let data = peek(&inv);
        let where_: Vec<String> = data
            .relays
            .iter()
            .map(|(n, r)| format!("{n}:{:?}", r.next_step().map(|s| s.number())))
            .collect();
        eprintln!(
            "kill point {}: after {} ms ({}): {}",
            point + 1,
            after.as_millis(),
            if finished.is_some() {
                "run had finished"
            } else {
                "killed"
            },
            where_.join(" ")
        );
        seen.push(where_);
        for r in data.relays.values() {
            if r.state() == RelayState::Done {
                assert!(r.downtime().is_some());
            }
        }
    }
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
    let data = peek(&inv);
    assert_eq!(data.relays.len(), 6);
    assert!(data.relays.values().all(|r| r.state() == RelayState::Done));
    assert_trees_equal(&lab);
}

/// One relay's OLD sends over a slow link (16 KiB/s): with 2 transfer slots for 3
/// relays, the slow host holds one slot, not the fleet. The others are never queued
/// behind it, copy faster and finish before it. (Relative timings
/// only: on a loaded CI machine everything is slow, the slow link is slower still.)
#[test]
fn a_slow_host_does_not_delay_the_others() {
    let lab = TestLab::start_with(
        3,
        DataOptions {
            users: 2,
            messages: 10,
            message_size: 4096,
            seed: 8,
        },
    );
    let relays = lab.relays();
    let path = variant(&lab, "slow.toml", |t| {
        with_settings(t, "transfers = 2\n", "")
    });
    let inv = Inventory::load(&path).expect("inventory");
    lab.set_link_limit(relays[0].old.addr, Some(16))
        .expect("slow link");
    let started = Instant::now();
    let (outcome, journal, _) = run(&inv, Step::Activate);
    eprintln!(
        "3 relays, one slow: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(outcome.done.len(), 3, "{outcome:?}\n{:#?}", journal.data);
    let span = |r: &cmfleet::pipeline::journal::RelayRecord, s: Step| {
        let rec = r.step(s);
        (
            rec.started_ms.expect("started"),
            rec.finished_ms.expect("finished"),
        )
    };
    let slow = &journal.data.relays[&relays[0].mail_domain];
    let (slow_start, slow_end) = span(slow, Step::InitialSync);
    let slow_up = slow.up_again_ms.expect("slow relay up");
    for r in &relays[1..] {
        let rec = &journal.data.relays[&r.mail_domain];
        let (start, end) = span(rec, Step::InitialSync);
        let msg = format!(
            "{}: step 1 {start}-{end}, slow relay's {slow_start}-{slow_end}",
            r.mail_domain
        );
        assert!(start < slow_end, "queued behind the slow relay: {msg}");
        assert!(
            end - start < slow_end - slow_start,
            "not faster than the slow link: {msg}"
        );
        assert!(
            rec.up_again_ms.expect("up") < slow_up,
            "finished after the slow relay: {msg}"
        );
    }
    assert_trees_equal(&lab);
}

/// Everything an operator reads after a night with failures (the live lines, the
/// report, `status` in both formats, the HTML timeline, the journal, `failed.txt`
/// and the relays' logs) holds no Rust debug text: a failure once read
/// `the pre_cutover hook failed (Some(7))`. Three relays fail three ways: cmdeploy at
/// step 2, a `pre_cutover` hook exiting 7, cmdeploy at step 6 (the relay is DOWN).
#[test]
fn what_operators_read_after_failures_holds_no_rust_debug_text() {
    let lab = TestLab::start(3);
    let relays = lab.relays();
    let (r1, r2, r3) = (&relays[0], &relays[1], &relays[2]);
    lab.set_cmdeploy_fault(&r1.new.addr.to_string(), "injected failure at step 2")
        .expect("fault");
    let path = variant(&lab, "debug-text.toml", |t| {
        t.replace(
            &format!("mail_domain = \"{}\"\n", r2.mail_domain),
            &format!(
                "mail_domain = \"{}\"\nhooks = {{ pre_cutover = \"echo the status page said no >&2; exit 7\" }}\n",
                r2.mail_domain
            ),
        )
    });
    // Relay 3's fault comes after its step 2 (a fault file is read at every run).
    let (code, _) = cmfleet(&common::run::PRE_STAGE, &path);
    assert_eq!(code, Some(2));
    lab.set_cmdeploy_fault(&r3.new.addr.to_string(), "injected failure at step 6")
        .expect("fault");
    let report = lab.path().join("report.json");
    let html = lab.path().join("timeline.html");
    let report_arg = report.to_string_lossy().into_owned();
    let html_arg = html.to_string_lossy().into_owned();
    let mut read: Vec<(String, String)> = Vec::new();
    for args in [
        &[
            "migrate",
            "--yes",
            "--progress",
            "plain",
            "--report",
            &report_arg,
        ][..],
        &["status"],
        &["status", "--format", "json"],
        &["report", "--html", &html_arg],
    ] {
        let (_, text) = cmfleet(args, &path);
        read.push((args.join(" "), text));
    }
    for file in [&report, &html] {
        read.push((
            file.display().to_string(),
            std::fs::read_to_string(file).expect("read"),
        ));
    }
    let state = lab.path().join(".cmfleet");
    let mut stack = vec![state];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                read.push((p.display().to_string(), text));
            }
        }
    }
    let rust = regex_lite_debug();
    for (what, text) in &read {
        for line in text.lines() {
            assert!(!rust(line), "{what}: Rust debug text: {line}");
        }
    }
    // The three failures are there, worded for people.
    let all: String = read.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        all.contains("the pre_cutover hook exited with 7: the status page said no"),
        "{all}"
    );
    assert!(all.contains("injected failure at step 2"));
    assert!(all.contains("injected failure at step 6"));
}

/// Whether a line holds `Some(`, `Ok(`, `Err(` or a bare `None`, as `{:?}` prints them.
fn regex_lite_debug() -> impl Fn(&str) -> bool {
    |line: &str| {
        ["Some(", "Ok(", "Err("].iter().any(|p| line.contains(p))
            || line
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(|w| w == "None")
    }
}
