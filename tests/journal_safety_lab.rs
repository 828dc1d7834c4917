//! The journal and the report tell the truth about a relay's state after failures
//! around the cutover (issue 18), on the lab.

mod common;

use cmfleet::model::inventory::Inventory;
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::RelayState;
use common::lab::TestLab;
use common::run::{cmfleet, peek, variant, with_settings};

/// A `pre_cutover` hook that fails stops the relay before anything touched OLD:
/// the relay is reported staged (OLD serving), never DOWN, and no downtime counts.
#[test]
fn a_failing_pre_cutover_hook_leaves_the_relay_staged_not_down() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = variant(&lab, "hook.toml", |t| {
        with_settings(
            t,
            "",
            "hooks = { pre_cutover = \"echo the status page refused >&2; exit 3\" }\n",
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(2), "{text}");
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.failed_step(), Some(Step::DisableOld), "{rec:#?}");
    let error = rec.step(Step::DisableOld).error.clone().unwrap_or_default();
    assert!(
        error.contains("the pre_cutover hook exited with 3: the status page refused"),
        "{error}"
    );
    assert_eq!(rec.state(), RelayState::Staged, "{rec:#?}");
    assert!(rec.down_since_ms.is_none(), "{rec:#?}");
    assert!(rec.downtime().is_none());
    assert!(!text.contains("left DOWN"), "{text}");
    assert!(text.contains("the relay is not down"), "{text}");
    let old = lab.host_state(relay.old.addr).expect("old state");
    assert!(!old.mail_disabled, "mail on OLD was disabled: {old:?}");
    let (_, status) = cmfleet(&["status"], &path);
    assert!(status.contains("0 DOWN"), "{status}");
}

/// Every regular file under `dir`.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A token written into a hook's command line (and echoed by the hook) and an API
/// token a DNS `command` program gets from the environment and prints on stderr when
/// it fails: neither reaches the terminal (JSON lines), the logs, the journal, the
/// JSON report, `status` or the HTML page, where `[redacted]` stands instead; the
/// reports and failed.txt are 0600.
#[test]
fn secrets_in_a_hook_line_and_a_dns_programs_stderr_never_leak() {
    const HOOK_TOKEN: &str = "hk-7f3a9c1e5b2d8406";
    const DNS_TOKEN: &str = "dns-0c4e8a2f6b1d9357";
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    // The preflight checks the relay's DNS: a real zone, changed by the program.
    let primary = common::bind::Bind::primary(
        "lab.test",
        &[&format!("relay1 300 IN A {}", relay.old.addr)],
    );
    let ns: Vec<String> = common::bind::Bind::nameservers(&primary, None)
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
        .collect();
    let program = lab.path().join("dns-api.sh");
    std::fs::write(
        &program,
        "#!/bin/sh\necho \"POST /zones: 403 for token $DNS_API_TOKEN\" >&2\nexit 1\n",
    )
    .expect("write program");
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let hook = format!(
        "STATUS_TOKEN={HOOK_TOKEN} sh -c 'echo \"status page: maintenance set with $STATUS_TOKEN\" >&2'"
    );
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let path = variant(&lab, "secret.toml", |t| {
        with_settings(
            t,
            "",
            &format!("hooks = {{ pre_cutover = {} }}\n", q(&hook)),
        )
        .replace(
            "dns = { provider = \"none\" }",
            &format!(
                "dns = {{ provider = \"command\", command = {}, server = \"{}\", zone = \"lab.test\", propagation_timeout = \"5s\", nameservers = {{ {} }} }}",
                q(&program.display().to_string()),
                primary.addr,
                ns.join(", ")
            ),
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    assert_eq!(
        inv.relays[0].settings.dns.provider,
        cmfleet::infra::dns::ProviderKind::Command,
        "the lab inventory's dns line changed"
    );
    let report = lab.path().join("report.json");
    let html = lab.path().join("timeline.html");
    let bin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cmfleet"))
            .args(args)
            .arg("-i")
            .arg(&path)
            .env_remove("CMFLEET_PROGRESS")
            .env("DNS_API_TOKEN", DNS_TOKEN)
            .output()
            .expect("run cmfleet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let mut outputs = Vec::new();
    let (code, text) = bin(&[
        "migrate",
        "--yes",
        "--progress",
        "json",
        "--report",
        &report.display().to_string(),
    ]);
    assert_eq!(code, Some(2), "{text}");
    outputs.push(("migrate".to_string(), text));
    for args in [
        vec!["status"],
        vec!["status", "--format", "json"],
        vec!["report", "--html", &html.display().to_string()],
    ] {
        let (code, text) = bin(&args);
        assert!(matches!(code, Some(0 | 2)), "{text}");
        outputs.push((args.join(" "), text));
    }
    // The DNS program ran and failed, and the hook ran: both had their secret to leak.
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    assert_eq!(rec.failed_step(), Some(Step::Dns), "{rec:#?}");
    let error = rec.step(Step::Dns).error.clone().unwrap_or_default();
    assert!(
        error.contains("403 for token [redacted]"),
        "the DNS program's stderr is reported, masked: {error}"
    );
    let state = &inv.fleet.state_dir;
    let log = std::fs::read_to_string(
        state
            .join("logs")
            .join(format!("{}.log", relay.mail_domain)),
    )
    .expect("log");
    assert!(log.contains("[hook pre_cutover]"), "{log}");
    assert!(log.contains("maintenance set with [redacted]"), "{log}");
    let mut searched = vec![report.clone(), html.clone()];
    searched.extend(
        files(state)
            .into_iter()
            .filter(|p| !p.starts_with(state.join("workspaces"))),
    );
    for f in &searched {
        let text = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        outputs.push((f.display().to_string(), text));
    }
    for (what, text) in &outputs {
        for secret in [HOOK_TOKEN, DNS_TOKEN] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {what}:\n{text}"
            );
        }
    }
    for f in [
        report,
        html,
        cmfleet::pipeline::report::failed_list_path(state),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// Credentials in both hooks of a real migration (`--progress json`): a bearer token
/// in a curl header inside `sh -c "..."` (nested quotes; the stand-in curl prints its
/// arguments as `curl -v` prints the header), and a `post_cutover` hook printing
/// `PASSWORD=...` with `; exit 0` after it. Neither reaches any file of the state
/// directory, the JSON report or the JSON stream; the log keeps `; exit 0` (the mask
/// ends at the `;`). Run the way an operator runs it, from the inventory's directory
/// (PWD, OLDPWD set): no path anywhere is masked, the log and the report name the
/// state directory as it is.
#[test]
fn credentials_in_hooks_and_their_output_never_leak_and_paths_are_never_masked() {
    const BEARER: &str = "BEARER555xyz";
    const PASSWORD: &str = "UPPER222xyz";
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    // No status page in the lab: a curl that prints each argument.
    let curl = lab.path().join("curl");
    std::fs::write(&curl, "#!/bin/sh\nfor a; do echo \"> $a\" >&2; done\n").expect("write curl");
    std::fs::set_permissions(&curl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let pre = format!(
        "sh -c \"{} -fsS -X POST -H 'Authorization: Bearer {BEARER}' https://status.example/maintenance\"",
        curl.display()
    );
    let post = format!("echo PASSWORD={PASSWORD}; exit 0");
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let path = variant(&lab, "hook-secrets.toml", |t| {
        with_settings(
            t,
            "",
            &format!(
                "hooks = {{ pre_cutover = {}, post_cutover = {} }}\n",
                q(&pre),
                q(&post)
            ),
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    let state = &inv.fleet.state_dir;
    let report = lab.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cmfleet"))
        .args(["migrate", "--yes", "--progress", "json", "--report"])
        .arg(&report)
        .arg("-i")
        .arg(&path)
        .current_dir(lab.path())
        .env("PWD", lab.path())
        .env("OLDPWD", lab.path().parent().unwrap_or(lab.path()))
        .env_remove("CMFLEET_PROGRESS")
        .output()
        .expect("run cmfleet");
    let stream = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stream}{stderr}");
    let data = peek(&inv);
    assert_eq!(
        data.relays[&relay.mail_domain].state(),
        RelayState::Done,
        "{data:#?}"
    );
    let mut outputs = vec![
        ("the JSON stream".to_string(), stream.clone()),
        ("stderr".to_string(), stderr),
    ];
    let mut searched = vec![report.clone()];
    searched.extend(files(state));
    for f in &searched {
        let text = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        outputs.push((f.display().to_string(), text));
    }
    for (what, text) in &outputs {
        for secret in [BEARER, PASSWORD] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {what}:\n{text}"
            );
        }
        assert!(
            !text.contains("[redacted]/"),
            "a path is masked in {what}:\n{text}"
        );
    }
    let log = std::fs::read_to_string(
        state
            .join("logs")
            .join(format!("{}.log", relay.mail_domain)),
    )
    .expect("log");
    for shown in [
        "-H 'Authorization: Bearer [redacted]' https://status.example/maintenance\"\n",
        "\n> Authorization: Bearer [redacted]\n",
        "[hook post_cutover] echo PASSWORD=[redacted]; exit 0\n",
        "\nPASSWORD=[redacted]\n",
    ] {
        assert!(log.contains(shown), "the log lacks {shown:?}:\n{log}");
    }
    // Paths read as they are: cmdeploy's workspace in the log, the report's state_dir.
    let state_text = state.display().to_string();
    assert!(
        log.contains(&format!("$ [controller {state_text}/workspaces/")),
        "{log}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report json");
    assert_eq!(json["state_dir"], state_text.as_str(), "{json:#}");
    assert!(
        stream.contains("PASSWORD=[redacted]"),
        "the post_cutover hook's output is in the stream, masked:\n{stream}"
    );
}

/// The state directory fills up while one of two relays is inside its cutover (the
/// other waits for the single cutover slot): the first failed save stops new work,
/// the relay in its cutover finishes, the other is never cut over (OLD keeps
/// serving), the report is printed from memory (the finished relay done) with the
/// journal's error, and the run exits with its own code, 3.
#[test]
fn a_journal_that_cannot_be_saved_stops_new_work_and_lets_cutovers_finish() {
    let lab = TestLab::start(2);
    let path = variant(&lab, "full.toml", |t| {
        with_settings(t, "cutovers = 1\n", "")
    });
    let inv = Inventory::load(&path).expect("inventory");
    let state = &inv.fleet.state_dir;
    let out = lab.path().join("migrate.out");
    let on_disk = lab.path().join("journal-on-disk.json");
    let journal = cmfleet::pipeline::journal::journal_path(state, &inv.path);
    // The state dir is a tmpfs of this mount namespace only; it is filled as soon as
    // a relay's log shows step 3's cmdeploy (the relay is inside its cutover). The
    // cmdeploy workspaces get a filesystem of their own: cmdeploy writes into its
    // workspace, and with that full no cutover could finish at all.
    let script = format!(
        "mkdir -p {s} && mount -t tmpfs -o size=64m,mode=700 cmf {s} || exit 99\n\
         mkdir {s}/workspaces && mount -t tmpfs -o size=256m cmf-ws {s}/workspaces || exit 98\n\
         {bin} migrate --yes --progress plain -i {inv} > {out} 2>&1 &\n\
         pid=$!\n\
         i=0; until grep -qs -- --disable-mail {s}/logs/*.log; do sleep 0.01; i=$((i+1)); [ $i -gt 12000 ] && break; done\n\
         dd if=/dev/zero of={s}/filler bs=64k 2>/dev/null\n\
         wait $pid; echo \"exit=$?\" >> {out}\n\
         cp {journal} {disk}\n",
        s = state.display(),
        bin = env!("CARGO_BIN_EXE_cmfleet"),
        inv = path.display(),
        out = out.display(),
        journal = journal.display(),
        disk = on_disk.display(),
    );
    let status = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("CMFLEET_PROGRESS")
        .status()
        .expect("unshare");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&out).expect("output");
    assert!(text.contains("exit=3"), "{text}");
    assert!(text.contains("cannot write the journal"), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    // Exactly one relay was cut over (the one inside its cutover when the disk
    // filled); the other was never touched past its pre-staging.
    let mut done = Vec::new();
    for relay in lab.relays() {
        let old = lab.host_state(relay.old.addr).expect("old");
        let new = lab.host_state(relay.new.addr).expect("new");
        if new.active {
            assert!(old.mail_disabled, "{old:?}");
            done.push(relay.mail_domain.clone());
        } else {
            assert!(
                !old.mail_disabled,
                "a relay was cut over after the failed save"
            );
        }
    }
    assert_eq!(done.len(), 1, "{text}");
    // The report is from memory: it knows the relay is done, the disk does not.
    assert!(
        text.lines()
            .any(|l| l.contains(&done[0]) && l.to_lowercase().contains("done")),
        "{text}"
    );
    let disk: cmfleet::pipeline::journal::JournalData =
        serde_json::from_str(&std::fs::read_to_string(&on_disk).expect("journal on disk"))
            .expect("the journal on disk is whole");
    assert_ne!(
        disk.relays[&done[0]].state(),
        RelayState::Done,
        "the disk was not full: the test measured nothing"
    );
}

/// Write-ahead: when `cmdeploy --disable-mail` starts, the journal on disk already
/// says OLD may be disabled (a controller SIGKILLed from then on leaves a journal
/// that says DOWN); when the activation starts, step 6 is on disk as running. A
/// stand-in cmdeploy reads the journal file at its start, as a crash would leave it.
#[test]
fn the_journal_is_on_disk_before_cmdeploy_changes_what_serves_mail() {
    let lab = TestLab::start(2);
    let inv = Inventory::load(&lab.inventory()).expect("inventory");
    let journal = cmfleet::pipeline::journal::journal_path(&inv.fleet.state_dir, &inv.path);
    let seen = lab.path().join("seen-at-cmdeploy-start.txt");
    let checkout = lab.checkout();
    let script = checkout.join("scripts/cmdeploy");
    std::fs::rename(&script, checkout.join("scripts/cmdeploy-real")).expect("rename");
    // Which relay: relays/<domain>/chatmail.ini in --config. What the journal says
    // of it goes to `seen`, one line per run that changes what serves mail.
    let wrapper = format!(
        r#"#!/bin/bash
cfg=; dis=0; prev=
for a in "$@"; do [ "$prev" = --config ] && cfg=$a; [ "$a" = --disable-mail ] && dis=1; prev=$a; done
relay=$(basename "$(dirname "$cfg")")
what=
[ $dis = 1 ] && what=disable
[ "${{CMDEPLOY_STAGES:-}}" = activate ] && what=activate
if [ -n "$what" ]; then
  python3 - "{journal}" "$relay" "$what" "{seen}" <<'PY'
import json, os, sys
path, relay, what, seen = sys.argv[1:]
r = json.load(open(path))["relays"][relay]
steps = r["steps"]
line = " ".join(str(f) for f in (what, relay, r.get("old_may_be_disabled"), steps[2]["status"], steps[5]["status"]))
# Both relays' runs append at once: one write(2) per line on an O_APPEND
# descriptor keeps lines whole (print() may write a line in pieces).
fd = os.open(seen, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (line + "\n").encode())
os.close(fd)
PY
fi
exec "$(dirname "$0")/cmdeploy-real" "$@"
"#,
        journal = journal.display(),
        seen = seen.display()
    );
    std::fs::write(&script, wrapper).expect("write wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let git = |args: &[&str]| {
        common::lab::ok(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&checkout)
                .args(args),
        )
    };
    git(&["add", "-A"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "wrapper",
    ]);

    let (outcome, journal_data, _) = common::run::run(&inv, Step::Activate);
    assert_eq!(outcome.done.len(), 2, "{:#?}", journal_data.data);
    let seen = std::fs::read_to_string(&seen).expect("the wrapper ran");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 4, "{seen}");
    for relay in &inv.relays {
        let name = &relay.name;
        assert!(
            lines.contains(&format!("disable {name} True running pending").as_str()),
            "OLD was disabled before the journal said so:\n{seen}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("activate {name} True done"))
                    && l.ends_with("running")),
            "NEW was activated before the journal said so:\n{seen}"
        );
    }
}
