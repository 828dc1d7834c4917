//! The command line as a user meets it: help on every flag, completions, the man page,
//! `report --html`. The headless-browser check needs Debian's chromium
//! (`apt-get install chromium`; `run-tests.sh` installs it, so CI runs it).

use std::process::Command;

use clap::CommandFactory;
use cmfleet::cli::Cli;

fn cmfleet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(args)
        .env_remove("CMFLEET_INVENTORY")
        .env_remove("CMFLEET_LIMIT")
        .output()
        .expect("run cmfleet")
}

#[test]
fn every_flag_and_subcommand_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() && !path.is_empty() {
            missing.push(format!("{path}: no about"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "", &mut missing);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
    Cli::command().debug_assert();
}

/// `--version` names the build: the package version and, in a git checkout, the
/// commit it was built from (what an operator quotes in a bug report).
#[test]
fn version_names_the_build_commit() {
    let out = cmfleet(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let root = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success() && std::path::Path::new(root).join(".git").exists())
        .map_or("unknown".to_string(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    assert_eq!(
        text.trim(),
        format!("cmfleet {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_and_man_page_generate() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = cmfleet(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("cmfleet") && text.contains("migrate"),
            "{shell}"
        );
    }
    let out = cmfleet(&["man"]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH cmfleet 1"), "{man}");
    let out = cmfleet(&["man", "migrate"]);
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH cmfleet-migrate 1"), "{man}");
    assert!(
        man.contains("CMFLEET_INVENTORY") && man.contains("until\\-step"),
        "{man}"
    );
    let out = cmfleet(&["man", "dns", "lower-ttl"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH cmfleet-dns-lower-ttl 1"));
    assert!(!cmfleet(&["man", "nope"]).status.success());
}

#[test]
fn report_html_from_an_empty_journal() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("relays/a.example.org/chatmail.ini");
    std::fs::create_dir_all(ini.parent().unwrap()).unwrap();
    std::fs::write(&ini, "[params]\n").unwrap();
    let inv = dir.path().join("fleet.toml");
    std::fs::write(
        &inv,
        "[fleet]\ncmdeploy = \"x\"\n[[relay]]\nmail_domain = \"a.example.org\"\n\
         config = \"relays/a.example.org/chatmail.ini\"\n\
         old = { ssh = \"192.0.2.1\", ip4 = \"192.0.2.1\" }\nnew = { ssh = \"192.0.2.2\", ip4 = \"192.0.2.2\" }\n",
    )
    .unwrap();
    let html = dir.path().join("t.html");
    let out = cmfleet(&[
        "-q",
        "--color",
        "never",
        "report",
        "-i",
        inv.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Nothing has run yet"));
    assert!(page.contains("a.example.org"));
}

#[test]
fn usage_errors_name_the_missing_inventory() {
    let out = cmfleet(&["plan"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inventory"));
}

/// Renders a journal with a done, a DOWN-and-failed and a rolled-back relay, loads it in
/// headless chromium, and checks the DOM it built and that a screenshot is drawn.
#[test]
fn html_report_renders_in_headless_chromium() {
    // Fails (never skips) without a browser, as the lab tests do without root.
    let found = Command::new("chromium").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs Debian's chromium: apt-get install chromium (run-tests.sh installs it)"
    );
    use cmfleet::model::step::ErrorKind;
    use cmfleet::pipeline::journal::{JournalData, RelayRecord, StepRecord, StepStatus};
    let t0 = 1_773_450_000_000u64;
    let done = |a: u64, b: u64| StepRecord {
        status: StepStatus::Done,
        attempts: 1,
        started_ms: Some(t0 + a),
        finished_ms: Some(t0 + b),
        ..StepRecord::default()
    };
    let mut relays = std::collections::BTreeMap::new();
    for i in 0..20u64 {
        let o = i * 1_000;
        let mut r = RelayRecord {
            steps: (0..6)
                .map(|s| done(o + s * 3_000, o + s * 3_000 + 2_500))
                .collect(),
            down_since_ms: Some(t0 + o + 6_000),
            up_again_ms: Some(t0 + o + 17_500),
            ..RelayRecord::default()
        };
        if i == 7 {
            r.steps[3] = StepRecord {
                status: StepStatus::Failed,
                error: Some("rsync: connection closed".into()),
                error_kind: Some(ErrorKind::Transient),
                ..done(o + 9_000, o + 11_000)
            };
            r.steps[4] = StepRecord::default();
            r.steps[5] = StepRecord::default();
            r.up_again_ms = None;
        }
        relays.insert(format!("relay{i}.example.org"), r);
    }
    let journal = JournalData {
        version: 1,
        inventory: "/srv/fleet.toml".into(),
        relays,
    };
    let names: Vec<String> = journal.relays.keys().cloned().collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let html = cmfleet::pipeline::report::html::render(&journal, &names, t0 + 40_000);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html).unwrap();
    let url = format!("file://{}", page.display());
    let profile = dir.path().join("profile");
    let chromium = |extra: &[&str]| {
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ];
        args.extend_from_slice(extra);
        // A fresh profile per run: nothing from an earlier run (or the machine's
        // user) is loaded, and no first-run work reaches for the network.
        let profile_arg = format!("--user-data-dir={}", profile.display());
        // A browser that hangs (waiting on a network it cannot reach) must fail the
        // test, not stall the suite.
        let out = Command::new("timeout")
            .args(["--kill-after=10", "120", "chromium"])
            .args(&args)
            .arg(profile_arg)
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {extra:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<g class=\"row").count(), 20, "{dom}");
    assert!(dom.contains("id=\"err-relay7.example.org-4\""));
    let shot = dir.path().join("shot.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(&[&arg, "--window-size=1400,900"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}

/// `status` is what a script asks between runs: exit 0 while every selected relay is
/// done, not started, or staged with nothing failed; exit 2 once one is DOWN (mail not
/// served) or its last attempt at a step failed, as `migrate` would have exited.
#[test]
fn status_exits_2_while_a_relay_is_down_or_a_step_failed() {
    use cmfleet::model::step::{ErrorKind, Step};
    use cmfleet::pipeline::journal::{journal_path, JournalData, RelayRecord, StepStatus};
    let dir = tempfile::tempdir().unwrap();
    let mut text = "[fleet]\ncmdeploy = \"x\"\nstate_dir = \"state\"\n".to_string();
    for (i, name) in ["done", "staged", "trouble"].iter().enumerate() {
        let ini = dir.path().join(format!("{name}/chatmail.ini"));
        std::fs::create_dir_all(ini.parent().unwrap()).unwrap();
        std::fs::write(&ini, "[params]\n").unwrap();
        text.push_str(&format!(
            "[[relay]]\nmail_domain = \"{name}.example.org\"\nconfig = \"{name}/chatmail.ini\"\n\
             old = {{ ssh = \"192.0.2.{i}\", ip4 = \"192.0.2.{i}\" }}\n\
             new = {{ ssh = \"198.51.100.{i}\", ip4 = \"198.51.100.{i}\" }}\n"
        ));
    }
    let inv_path = dir.path().join("fleet.toml");
    std::fs::write(&inv_path, text).unwrap();
    let inv = cmfleet::model::inventory::Inventory::load(&inv_path).unwrap();
    let finish = |r: &mut RelayRecord, steps: &[Step]| {
        for s in steps {
            r.step_mut(*s).status = StepStatus::Done;
            r.step_mut(*s).attempts = 1;
        }
    };
    let mut done = RelayRecord::new();
    finish(&mut done, &Step::ALL);
    done.down_since_ms = Some(1_000);
    done.up_again_ms = Some(9_000);
    let mut staged = RelayRecord::new();
    finish(&mut staged, &[Step::InitialSync, Step::Preconfigure]);
    let mut down = RelayRecord::new();
    finish(
        &mut down,
        &[Step::InitialSync, Step::Preconfigure, Step::DisableOld],
    );
    down.down_since_ms = Some(1_000);
    let step = down.step_mut(Step::FinalSync);
    step.status = StepStatus::Failed;
    step.attempts = 1;
    step.error = Some("rsync error".into());
    step.error_kind = Some(ErrorKind::Transient);
    let mut failed_early = RelayRecord::new();
    let step = failed_early.step_mut(Step::InitialSync);
    step.status = StepStatus::Failed;
    step.attempts = 3;
    step.error = Some("connection refused".into());
    step.error_kind = Some(ErrorKind::Transient);

    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let status = |trouble: &RelayRecord, format: &str| {
        let journal = JournalData {
            version: 1,
            inventory: inv.path.clone(),
            relays: [
                ("done.example.org".to_string(), done.clone()),
                ("staged.example.org".to_string(), staged.clone()),
                ("trouble.example.org".to_string(), trouble.clone()),
            ]
            .into_iter()
            .collect(),
        };
        std::fs::write(
            journal_path(&inv.fleet.state_dir, &inv.path),
            serde_json::to_string(&journal).unwrap(),
        )
        .unwrap();
        let out = cmfleet(&[
            "status",
            "-i",
            inv_path.to_str().unwrap(),
            "--format",
            format,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    for format in ["text", "json"] {
        // Done, staged and not started: nothing for anyone to do.
        let (code, out) = status(&RelayRecord::new(), format);
        assert_eq!(code, Some(0), "{out}");
        let (code, out) = status(&staged, format);
        assert_eq!(code, Some(0), "{out}");
        // DOWN: users get no mail.
        let (code, out) = status(&down, format);
        assert_eq!(code, Some(2), "{out}");
        // Staged, OLD serving, but step 1 failed: `migrate` must be run again.
        let (code, out) = status(&failed_early, format);
        assert_eq!(code, Some(2), "{out}");
    }
    let (_, out) = status(&down, "text");
    assert!(out.contains("1 DOWN"), "{out}");
}
