//! The lab's stand-in cmdeploy: CLI, stages, effect on the host, working-directory hazard.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Output};

use cmfleet::lab::{port_accepts, Lab};
use common::lab::TestLab;

const MAIL_PORTS: [u16; 3] = [25, 465, 993];

/// `scripts/cmdeploy run ARGS` from the checkout with CMDEPLOY_STAGES set or removed.
fn cmdeploy(lab: &Lab, stages: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(lab.cmdeploy());
    c.current_dir(lab.checkout()).arg("run").args(args);
    match stages {
        Some(s) => c.env("CMDEPLOY_STAGES", s),
        None => c.env_remove("CMDEPLOY_STAGES"),
    };
    c
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn succeeds(cmd: &mut Command) {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ports_open(addr: Ipv4Addr) -> Vec<bool> {
    MAIL_PORTS.iter().map(|p| port_accepts(addr, *p)).collect()
}

#[test]
fn configure_activate_disable_change_the_host_and_its_ports() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let (ini, new) = (relay.config.to_str().unwrap().to_string(), relay.new.addr);
    let host = new.to_string();
    let args = ["--config", &ini, "--ssh-host", &host];

    succeeds(&mut cmdeploy(&lab, Some("install,configure"), &args));
    let st = lab.host_state(new).unwrap();
    assert!(st.configured && !st.active && !st.mail_disabled, "{st:?}");
    // Like the real one's packages (Debian's postinst), installing starts the mail
    // system on a fresh host; cmfleet stops it again after step 2.
    assert_eq!(ports_open(new), [true; 3]);
    // Like the real one, configure leaves a throwaway DKIM key owned by opendkim.
    let key = relay.new.path("/etc/dkimkeys/opendkim.private");
    assert!(std::fs::read_to_string(&key).unwrap().contains("throwaway"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().uid(),
        lab.users().opendkim_uid
    );

    succeeds(&mut cmdeploy(&lab, Some("activate"), &args));
    let st = lab.host_state(new).unwrap();
    assert!(st.active && !st.mail_disabled, "{st:?}");
    assert_eq!(ports_open(new), [true; 3], "mail ports of the active host");
    assert_eq!(
        ports_open(lab.subnet().host(250)),
        [false; 3],
        "listeners bind only their host's address"
    );
    // Activating again reloads the running Postfix and Dovecot (same masters).
    let pids = (st.postfix_pid.unwrap(), st.dovecot_pid.unwrap());
    succeeds(&mut cmdeploy(&lab, Some("activate"), &args));
    let st = lab.host_state(new).unwrap();
    assert_eq!(
        (st.postfix_pid, st.dovecot_pid),
        (Some(pids.0), Some(pids.1))
    );

    succeeds(&mut cmdeploy(
        &lab,
        None,
        &["--disable-mail", "--config", &ini, "--ssh-host", &host],
    ));
    let st = lab.host_state(new).unwrap();
    assert!(st.mail_disabled && !st.active && st.configured, "{st:?}");
    assert_eq!(ports_open(new), [false; 3]);
    assert_eq!((st.postfix_pid, st.dovecot_pid), (None, None), "{st:?}");
    assert_eq!(st.invocations.len(), 4, "{:?}", st.invocations);
    assert!(
        st.invocations[0].contains("stages=install,configure"),
        "{:?}",
        st.invocations
    );

    // --dry-run records the run and changes nothing.
    succeeds(&mut cmdeploy(
        &lab,
        None,
        &[
            "--dry-run",
            "--skip-dns-check",
            "--config",
            &ini,
            "--ssh-host",
            &host,
        ],
    ));
    let st2 = lab.host_state(new).unwrap();
    assert_eq!((st2.active, st2.invocations.len()), (false, 5));
}

#[test]
fn mail_system_is_stopped_by_lab_down() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let ini = relay.config.to_str().unwrap().to_string();
    let host = relay.new.addr.to_string();
    succeeds(&mut cmdeploy(
        &lab,
        None,
        &["--config", &ini, "--ssh-host", &host],
    ));
    let st = lab.host_state(relay.new.addr).unwrap();
    let pids = [st.postfix_pid.unwrap(), st.dovecot_pid.unwrap()];
    assert!(std::path::Path::new(&format!("/proc/{}", pids[0])).exists());
    Lab::down(lab.dir()).unwrap();
    assert_eq!(ports_open(relay.new.addr), [false; 3]);
    for pid in pids {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.contains(") Z "));
        assert!(gone, "mail master {pid} survived lab down");
    }
}

#[test]
fn bad_arguments_and_wrong_directory_fail_like_the_real_one() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let ini = relay.config.to_str().unwrap().to_string();
    let out = output(&mut cmdeploy(
        &lab,
        None,
        &["--config", &ini, "--no-such-flag"],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized arguments: --no-such-flag"));
    let out = output(
        Command::new(lab.cmdeploy())
            .current_dir(lab.checkout())
            .arg("deploy"),
    );
    assert_eq!(out.status.code(), Some(2));
    // An unknown or empty stage fails the deploy with 1, like the real one.
    for stages in ["install,frobnicate", ""] {
        let out = output(&mut cmdeploy(&lab, Some(stages), &["--config", &ini]));
        assert_eq!(out.status.code(), Some(1), "{stages:?}");
    }
    // The real one's -v and --website-only are accepted.
    succeeds(&mut cmdeploy(
        &lab,
        Some("install,configure"),
        &[
            "--config",
            &ini,
            "-v",
            "--website-only",
            "--ssh-host",
            &relay.new.addr.to_string(),
        ],
    ));
    // Outside the checkout there is no venv/: the wrapper fails before doing anything.
    let out = output(cmdeploy(&lab, None, &["--config", &ini]).current_dir(lab.dir()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("venv/bin/activate"));
    // Only `lab up` ran the stand-in on OLD (it serves mail, like a production relay).
    assert_eq!(lab.host_state(relay.old.addr).unwrap().invocations.len(), 1);
}

#[test]
fn stale_stages_from_the_environment_are_obeyed_and_mail_domain_means_old() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let ini = relay.config.to_str().unwrap().to_string();
    // An operator's shell still has CMDEPLOY_STAGES from step 2: "activate" silently
    // does not happen.
    let host = relay.new.addr.to_string();
    succeeds(&mut cmdeploy(
        &lab,
        Some("install,configure"),
        &["--config", &ini, "--ssh-host", &host],
    ));
    let st = lab.host_state(relay.new.addr).unwrap();
    assert!(st.configured && !st.active, "{st:?}");
    // Without --ssh-host the target is mail_domain, which still points at OLD.
    succeeds(&mut cmdeploy(&lab, Some("install"), &["--config", &ini]));
    // `lab up` activated OLD (a production relay), then this run.
    assert_eq!(lab.host_state(relay.old.addr).unwrap().invocations.len(), 2);
    assert_eq!(lab.host_state(relay.new.addr).unwrap().invocations.len(), 1);
}

#[test]
fn concurrent_runs_from_one_checkout_break_sequential_ones_do_not() {
    let lab = TestLab::start(2);
    let run = |i: usize| {
        let r = lab.relay(i).unwrap();
        let host = r.new.addr.to_string();
        cmdeploy(
            &lab,
            Some("install,configure"),
            &["--config", r.config.to_str().unwrap(), "--ssh-host", &host],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (run(1), run(2));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        !a.status.success() || !b.status.success(),
        "two concurrent runs from one checkout both succeeded"
    );
    let failed = if a.status.success() { &b } else { &a };
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("exactly one file"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    for i in [1, 2] {
        let status = run(i).wait_with_output().unwrap().status;
        assert!(status.success(), "sequential run {i} failed");
    }
}

#[test]
fn fault_file_makes_cmdeploy_fail_until_cleared() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let ini = relay.config.to_str().unwrap().to_string();
    let host = relay.new.addr.to_string();
    lab.set_cmdeploy_fault(&host, "lab says no").unwrap();
    let out = output(&mut cmdeploy(
        &lab,
        None,
        &["--config", &ini, "--ssh-host", &host],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lab says no"));
    assert!(!lab.host_state(relay.new.addr).unwrap().configured);
    lab.clear_cmdeploy_fault(&host).unwrap();
    succeeds(&mut cmdeploy(
        &lab,
        None,
        &["--config", &ini, "--ssh-host", &host],
    ));
    assert!(lab.host_state(relay.new.addr).unwrap().active);
}

/// File names in a host's deferred queue, sorted.
fn deferred(host: &cmfleet::lab::LabHost) -> Vec<String> {
    let mut out = Vec::new();
    let root = host.path("/var/spool/postfix/deferred");
    for sub in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn postsuper_and_set_permissions_are_the_real_ones() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let (old, new) = (relay.old.addr, relay.new.addr);
    // OLD's deferred queue, copied the guide's way: new inodes on NEW.
    common::lab::ok(lab.ssh(old, &["-A"]).arg(format!(
        "tar c /var/spool/postfix/deferred 2>/dev/null | ssh root@{new} \"tar x -C /\""
    )));
    let copied = deferred(&relay.new);
    assert_eq!(copied.len(), cmfleet::lab::DEFERRED_MESSAGES, "{copied:?}");
    assert_eq!(copied, deferred(&relay.old));
    common::lab::ok(
        lab.ssh(new, &[])
            .arg("postsuper -s && postfix set-permissions"),
    );
    let log = lab.host_state(new).unwrap().postfix_log;
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].contains("postsuper -s") && log[1].contains("postfix set-permissions"));
    // Queue file names follow inode numbers: the real postsuper renamed every one.
    let renamed = deferred(&relay.new);
    assert_eq!(renamed.len(), copied.len());
    assert!(
        renamed.iter().all(|n| !copied.contains(n)),
        "{copied:?} -> {renamed:?}"
    );
    // NEW's Postfix takes them over: both deferred messages are in its queue.
    let queue = common::lab::ok(lab.ssh(new, &[]).arg("postfix start 2>/dev/null; mailq"));
    assert_eq!(
        queue
            .matches(&format!("@{}", cmfleet::lab::LATER_DOMAIN))
            .count(),
        cmfleet::lab::DEFERRED_MESSAGES,
        "{queue}"
    );
}

/// With a cost model, each kind of run takes its wall time and burns its CPU in the
/// stand-in's own process tree on the controller (where the benchmark's accounting
/// sees it); the kind follows the stages and `--disable-mail` as cmfleet passes them.
#[test]
fn a_cost_model_makes_each_kind_of_run_take_its_wall_and_cpu() {
    use cmfleet::lab::{CmdeployCost, RunCost};
    use std::time::{Duration, Instant};
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let ini = relay.config.to_str().unwrap().to_string();
    let (old, new) = (relay.old.addr.to_string(), relay.new.addr.to_string());
    let c = |wall_ms: u64, cpu_ms: u64| RunCost {
        wall: Duration::from_millis(wall_ms),
        cpu: Duration::from_millis(cpu_ms),
    };
    let cost = CmdeployCost {
        install_configure: c(1600, 800),
        disable_mail: c(1200, 100),
        full: c(2000, 100),
        activate: c(800, 400),
    };
    lab.set_cmdeploy_cost(Some(&cost)).unwrap();
    // (stages, --disable-mail, host, the kind and cost it must take)
    let runs = [
        (
            Some("install,configure"),
            false,
            &new,
            "install-configure",
            cost.install_configure,
        ),
        (None, true, &old, "disable-mail", cost.disable_mail),
        (Some("activate"), false, &new, "activate", cost.activate),
        (None, false, &old, "full", cost.full),
    ];
    for (stages, disable, host, kind, want) in runs {
        let mut args = vec!["--config", ini.as_str()];
        if disable {
            args.push("--disable-mail");
        }
        args.extend(["--ssh-host", host.as_str()]);
        // bash's `times` after the run: the second line is its children's CPU.
        let mut cmd = Command::new("bash");
        cmd.current_dir(lab.checkout())
            .arg("-c")
            .arg("\"$@\" >&2 || exit $?; times")
            .arg("bash")
            .arg(lab.cmdeploy())
            .arg("run")
            .args(&args);
        match stages {
            Some(s) => cmd.env("CMDEPLOY_STAGES", s),
            None => cmd.env_remove("CMDEPLOY_STAGES"),
        };
        let started = Instant::now();
        let out = output(&mut cmd);
        let took = started.elapsed();
        assert!(out.status.success(), "{stages:?} {disable}: {out:?}");
        let times = String::from_utf8_lossy(&out.stdout);
        let children: f64 = times
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| {
                let (m, s) = f.trim_end_matches('s').split_once('m')?;
                Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
            })
            .sum();
        assert!(
            took >= want.wall,
            "{stages:?} disable={disable}: took {took:?}, less than {:?}",
            want.wall
        );
        let said = format!("cmdeploy: lab cost model: {kind} run");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&said),
            "{stages:?} disable={disable}: not a {kind} run: {out:?}"
        );
        assert!(
            children >= want.cpu.as_secs_f64() * 0.95,
            "{stages:?} disable={disable}: {children} s of CPU, less than {:?} ({times})",
            want.cpu
        );
    }
    // Without the file, a run costs nothing extra again (said by what it prints, not
    // by a wall-clock bound that a loaded machine breaks).
    lab.set_cmdeploy_cost(None).unwrap();
    let out = output(&mut cmdeploy(
        &lab,
        Some("activate"),
        &["--config", &ini, "--ssh-host", &new],
    ));
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("lab cost model"), "{said}");
}
