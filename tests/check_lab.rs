//! `cmfleet check` on the lab: each predictable failure is caught before any downtime,
//! and `migrate` refuses (at step 1) exactly the relays that fail it.

mod common;

use cmfleet::commands::check;
use cmfleet::host::inspect::{self, RelayFindings, Status};
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{Journal, StepStatus};
use cmfleet::pipeline::migrate::migrate;
use cmfleet::pipeline::scheduler::Cancel;
use common::bind::Bind;
use common::lab::{ok, TestLab};

fn run_check(inv: &Inventory) -> Vec<RelayFindings> {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(check::check(inv, &relays)).expect("check runs")
}

/// The finding `name` of relay `relay`.
fn finding<'a>(results: &'a [RelayFindings], relay: &str, name: &str) -> &'a inspect::Finding {
    let r = results
        .iter()
        .find(|r| r.relay == relay)
        .unwrap_or_else(|| panic!("no relay {relay}"));
    r.findings
        .iter()
        .find(|f| f.check == name)
        .unwrap_or_else(|| panic!("no check {name} for {relay}: {r:#?}"))
}

fn failed_checks(r: &RelayFindings) -> Vec<&str> {
    r.failures().map(|f| f.check.as_str()).collect()
}

/// Step 1 only: no downtime, but the preflight runs.
fn migrate_step_1(inv: &Inventory) -> Journal {
    let relays = inventory::select(inv, None).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tx, rx) = tokio::sync::watch::channel(Cancel::None);
    let opts = common::run::options(Step::InitialSync);
    rt.block_on(migrate(inv, &relays, &opts, rx, |_, _| {}))
        .expect("migrate runs")
        .1
}

/// One inventory with one retry: the faults here are not transient.
fn no_retries(lab: &TestLab, name: &str, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let text = text.replace(
        "[defaults]\n",
        &format!("[defaults]\nretry = {{ attempts = 1 }}\n{extra}"),
    );
    let path = lab.path().join(name);
    std::fs::write(&path, text).expect("write inventory");
    path
}

#[test]
fn check_catches_sshd_down_small_disk_and_wrong_ini_and_migrate_refuses_them() {
    let mut lab = TestLab::start(4);
    let relays = lab.relays();
    let domain = |i: usize| relays[i - 1].mail_domain.clone();
    let inv = Inventory::load(&no_retries(&lab, "check.toml", "")).expect("inventory");

    let results = run_check(&inv);
    for r in &results {
        assert_ne!(r.status, Status::Fail, "{r:#?}");
    }
    assert_eq!(inspect::exit_code(&results), 0);

    // relay2: NEW's sshd is down. relay3: NEW's disk is tiny. relay4: its
    // chatmail.ini names relay1.
    lab.stop_host(relays[1].new.addr).expect("stop host");
    lab.set_vmail_tmpfs(relays[2].new.addr, Some(1 << 20))
        .expect("tmpfs");
    std::fs::write(
        &relays[3].config,
        format!("[params]\nmail_domain = {}\n", domain(1)),
    )
    .expect("write ini");

    let results = run_check(&inv);
    assert_eq!(inspect::exit_code(&results), 2);
    assert_eq!(
        failed_checks(&results[0]),
        Vec::<&str>::new(),
        "{:#?}",
        results[0]
    );
    assert_eq!(
        failed_checks(&results[1]),
        vec!["ssh new"],
        "{:#?}",
        results[1]
    );
    assert_eq!(
        failed_checks(&results[2]),
        vec!["disk new"],
        "{:#?}",
        results[2]
    );
    assert_eq!(
        failed_checks(&results[3]),
        vec!["chatmail.ini"],
        "{:#?}",
        results[3]
    );
    let disk = finding(&results, &domain(3), "disk new");
    assert!(disk.reason.contains("too small"), "{disk:?}");
    let ini = finding(&results, &domain(4), "chatmail.ini");
    assert!(
        ini.reason
            .contains(&format!("names mail_domain {}", domain(1))),
        "{ini:?}"
    );

    // The same checks gate step 1: relay1 goes on, the others are refused.
    let journal = migrate_step_1(&inv);
    let rec = |i: usize| {
        journal
            .data
            .relays
            .get(&domain(i))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(rec(1).step(Step::InitialSync).status, StepStatus::Done);
    for (i, why) in [(2, "ssh new"), (3, "disk new"), (4, "chatmail.ini")] {
        let s = rec(i).step(Step::InitialSync).clone();
        assert_eq!(s.status, StepStatus::Failed, "relay{i}: {s:?}");
        let error = s.error.unwrap_or_default();
        assert!(
            error.contains("refused by the preflight check") && error.contains(why),
            "relay{i}: {error}"
        );
    }
    // Nothing reached the refused relays' NEW hosts.
    assert!(!relays[3]
        .new
        .path("/home/vmail/mail")
        .join(domain(4))
        .exists());
    drop(journal);

    // The journal's view: relay1 is partly done.
    let results = run_check(&inv);
    let j = finding(&results, &domain(1), "journal");
    assert!(j.reason.starts_with("partly done"), "{j:?}");
}

#[test]
fn check_catches_old_unable_to_reach_new() {
    let lab = TestLab::start(1);
    let relay = &lab.relays()[0];
    let inv = Inventory::load(&no_retries(&lab, "reach.toml", "")).expect("inventory");
    // The controller logs in with the key file; OLD can only use the forwarded agent.
    // An empty agent leaves OLD without a key for NEW.
    ok(std::process::Command::new("ssh-add")
        .arg("-D")
        .env("SSH_AUTH_SOCK", lab.agent_sock()));
    let results = run_check(&inv);
    assert_eq!(
        failed_checks(&results[0]),
        vec!["old -> new"],
        "{:#?}",
        results[0]
    );
    let f = finding(&results, &relay.mail_domain, "old -> new");
    assert!(f.reason.contains("cannot log in"), "{f:?}");

    // migrate does not test this before step 1 (the push is the test), but a failed
    // push is diagnosed the same way.
    let journal = migrate_step_1(&inv);
    let step = journal.data.relays[&relay.mail_domain]
        .step(Step::InitialSync)
        .clone();
    assert_eq!(step.status, StepStatus::Failed, "{step:?}");
    let error = step.error.unwrap_or_default();
    assert!(
        error.contains("old -> new") && error.contains("cannot log in"),
        "{error}"
    );

    // Staged mode does not need OLD to reach NEW.
    let staged = no_retries(&lab, "staged.toml", "transfer = \"staged\"\n");
    let results = run_check(&Inventory::load(&staged).expect("inventory"));
    assert_eq!(results[0].status, Status::Pass, "{:#?}", results[0]);
}

#[test]
fn check_catches_dns_pointing_elsewhere_and_a_high_ttl_with_bind() {
    let lab = TestLab::start(2);
    let relays = lab.relays();
    let records = [
        "relay1 300 IN A 192.0.2.99".to_string(),
        format!("relay2 3600 IN A {}", relays[1].old.addr),
    ];
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    let primary = Bind::primary("lab.test", &records);
    let dns = format!(
        "dns = {{ provider = \"rfc2136\", server = \"{}\", zone = \"lab.test\", tsig_key_file = \"{}\", propagation_timeout = \"10s\", nameservers = {{ \"ns1.lab.test\" = \"{}\" }} }}",
        primary.addr,
        primary.key_file.display(),
        primary.addr
    );
    let text = std::fs::read_to_string(lab.inventory()).expect("read inventory");
    let path = lab.path().join("dns.toml");
    std::fs::write(&path, text.replace("dns = { provider = \"none\" }", &dns)).expect("write");
    let inv = Inventory::load(&path).expect("inventory");

    let results = run_check(&inv);
    let d1 = finding(&results, "relay1.lab.test", "dns");
    assert_eq!(d1.status, Status::Fail, "{d1:?}");
    assert!(
        d1.reason.contains("192.0.2.99") && d1.reason.contains("neither OLD"),
        "{d1:?}"
    );
    let d2 = finding(&results, "relay2.lab.test", "dns");
    assert_eq!(d2.status, Status::Pass, "{d2:?}");
    let ttl = finding(&results, "relay2.lab.test", "dns ttl");
    assert_eq!(ttl.status, Status::Warn, "{ttl:?}");
    assert!(
        ttl.reason.starts_with("3600 s") && ttl.reason.contains("1h"),
        "{ttl:?}"
    );
    assert_eq!(results[1].status, Status::Warn, "{:#?}", results[1]);

    // The binary: a table naming the failure, exit code 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(["check", "-i"])
        .arg(&path)
        .output()
        .expect("run cmfleet check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("FAIL relay1.lab.test: dns: "), "{stdout}");
    assert!(stdout.contains("1 with warnings, 1 failed"), "{stdout}");

    // Already pointing at NEW is fine, and noted.
    primary.nsupdate(&[
        "update delete relay1.lab.test. A",
        &format!("update add relay1.lab.test. 300 A {}", relays[0].new.addr),
    ]);
    let results = run_check(&inv);
    let d1 = finding(&results, "relay1.lab.test", "dns");
    assert_eq!(d1.status, Status::Pass, "{d1:?}");
    assert!(d1.reason.contains("already points to NEW"), "{d1:?}");
}
