//! Every shell program cmfleet runs on a host (over ssh) or on the controller passes
//! shellcheck, Debian's package (`apt-get install shellcheck`; run-tests.sh installs
//! it). The programs are rendered as they run, from an inventory whose paths carry a
//! quote and a space wherever a path can, and linted with the dialect of the shell
//! that reads them: POSIX `sh` for what runs over ssh (the remote login shell is
//! only known to be a POSIX shell) and on the controller, `bash` where cmfleet
//! starts bash itself. An exception is a `# shellcheck disable=SCxxxx # reason`
//! inside the program, so it travels with it; this test never excludes anything.
//! Then the lab's shell assets (src/lab/assets), as files and as the lab renders them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cmfleet::host::{catalogue, inspect, proof, remote};
use cmfleet::infra::shell::{join, quote};
use cmfleet::model::inventory::{Inventory, MailDomain, Relay, TransferMode};

/// The shell dialect a program is read by.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    Sh,
    Bash,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Dialect::Sh => "sh",
            Dialect::Bash => "bash",
        }
    }
}

/// One program as it runs, and what it is called in a finding.
struct Program {
    name: String,
    dialect: Dialect,
    text: String,
}

fn program(name: impl Into<String>, dialect: Dialect, text: impl Into<String>) -> Program {
    Program {
        name: name.into(),
        dialect,
        text: text.into(),
    }
}

/// Fails (never skips) without shellcheck: CI must lint, not pass silently.
fn require_shellcheck() {
    let found = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "shellcheck is not installed, so the remote shell programs cannot be linted \
         (hint: apt-get install shellcheck, or run ./run-tests.sh, which installs it)"
    );
}

/// shellcheck's findings on `p` (gcc format, one a line), or nothing when it passes.
/// `--norc`: a ~/.shellcheckrc of whoever runs the tests must not hide anything.
fn findings(p: &Program) -> Vec<String> {
    let mut child = Command::new("shellcheck")
        .args(["--norc", "--format=gcc", "--shell", p.dialect.name(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run shellcheck: {e}"));
    // A program without a final newline is what runs; shellcheck wants none added.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(p.text.as_bytes())
        .expect("write to shellcheck");
    let out = child.wait_with_output().expect("shellcheck");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Vec::new(),
        Some(1) => text
            .lines()
            .map(|l| {
                // `-:LINE:COL: level: message [SCxxxx]`, with the line itself to read it.
                let line = l
                    .split(':')
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| p.text.lines().nth(n - 1))
                    .unwrap_or("");
                format!("{} ({}): {l}\n      | {line}", p.name, p.dialect.name())
            })
            .collect(),
        _ => vec![format!("{}: shellcheck failed: {text}", p.name)],
    }
}

/// Lints every program; fails with every finding of every program at once.
fn assert_clean(programs: &[Program]) {
    require_shellcheck();
    let mut all = Vec::new();
    for p in programs {
        all.extend(findings(p));
        all.extend(unexplained_exceptions(p));
    }
    assert!(
        all.is_empty(),
        "shellcheck findings ({}; fix them, or justify one inline as \
         `# shellcheck disable=SCxxxx # reason`):\n{}",
        all.len(),
        all.join("\n")
    );
}

/// A `# shellcheck disable=...` without a reason after it, in the program.
fn unexplained_exceptions(p: &Program) -> Vec<String> {
    p.text
        .lines()
        .filter_map(|l| {
            let (_, directive) = l.split_once("# shellcheck disable=")?;
            let reason = directive.split_once(" # ").map_or("", |(_, r)| r.trim());
            (reason.len() < 10).then(|| format!("{}: an exception without its reason: {l}", p.name))
        })
        .collect()
}

/// A fleet whose every path holds a quote and a space: the inventory's folder (so
/// the chatmail.ini, the state dir and the checkout), and cmdeploy's HOME.
struct Hostile {
    _dir: tempfile::TempDir,
    inv: Inventory,
}

fn hostile(transfer: TransferMode) -> Hostile {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("it's a fleet");
    let config = root.join("c1 relay");
    std::fs::create_dir_all(&config).expect("mkdir");
    std::fs::write(
        config.join("chatmail.ini"),
        "[params]\nmail_domain = c1.example.org\n",
    )
    .expect("write");
    let scripts = root.join("chatmail relay/scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir");
    std::fs::create_dir_all(root.join("chatmail relay/.git")).expect("mkdir");
    std::fs::write(scripts.join("cmdeploy"), "#!/bin/sh\nexit 1\n").expect("write");
    let transfer = match transfer {
        TransferMode::Direct => "direct",
        TransferMode::Staged => "staged",
    };
    let text = format!(
        "[fleet]\ncmdeploy = \"chatmail relay/scripts/cmdeploy\"\nstate_dir = \"state 'dir'\"\n\
         cmdeploy_home = \"cmdeploy's home\"\n\
         cmdeploy_env = {{ LAB_DIR = \"it's a dir\", https_proxy = \"http://p:3128\" }}\n\
         [defaults]\ntransfer = \"{transfer}\"\ncipher = \"aes128-gcm@openssh.com\"\nkex = \"^curve25519-sha256\"\n\
         skip_dns_check = true\ndns = {{ provider = \"none\" }}\n\
         [[relay]]\nmail_domain = \"c1.example.org\"\nconfig = \"c1 relay/chatmail.ini\"\n\
         old = {{ ssh = \"old.example.org\", ip4 = \"192.0.2.1\" }}\n\
         new = {{ ssh = \"new.example.org\", ip4 = \"192.0.2.2\", port = 2222 }}\n"
    );
    let path = root.join("fleet.toml");
    std::fs::write(&path, text).expect("write inventory");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("the hostile inventory: {e}"));
    Hostile { _dir: dir, inv }
}

/// A known_hosts line as cmfleet vouches for NEW, with a quote in its comment.
const KNOWN_HOSTS: &str =
    "[new.example.org]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0yJvGf2pKd3ELkq2mYJ3vJq it's new";

/// What runs on OLD and NEW over ssh, and on the controller, for `relay`.
fn remote_programs(relay: &Relay, inv: &Inventory) -> Vec<Program> {
    use Dialect::Sh;
    let fleet = &inv.fleet;
    let handoff = proof::Handoff::new(catalogue::to_new(relay));
    let mut p = vec![
        program("probe (every host)", Sh, inspect::probe_script()),
        program(
            "proof preflight on old",
            Sh,
            inspect::proof_old_script(relay),
        ),
        program(
            "proof preflight on new",
            Sh,
            inspect::proof_new_script(relay),
        ),
        program("early prune on new", Sh, proof::early_prune(&handoff)),
        program(
            "old reaches new",
            Sh,
            inspect::old_to_new_script(relay, &[KNOWN_HOSTS.to_string(), KNOWN_HOSTS.into()]),
        ),
        program("proof listing on old", Sh, proof::listing(proof::Role::Old)),
        program("proof listing on new", Sh, proof::listing(proof::Role::New)),
        program(
            "pruning proof listing on old",
            Sh,
            proof::pruning_listing(proof::Role::Old, &handoff),
        ),
        program(
            "pruning proof listing on new",
            Sh,
            proof::pruning_listing(proof::Role::New, &handoff),
        ),
        program("disk usage on old", Sh, catalogue::disk_usage()),
        program("mail KiB on old", Sh, catalogue::used_kib()),
        program("free KiB on new", Sh, catalogue::free_and_used_kib()),
        program("record the DKIM owner", Sh, catalogue::record_dkim_owner()),
        program(
            "before the final sync on new",
            Sh,
            catalogue::before_final_sync(),
        ),
        program("DKIM chown", Sh, catalogue::dkim_chown()),
        program("systemctl disable", Sh, catalogue::systemctl_disable_mail()),
        program("systemctl enable", Sh, catalogue::systemctl_enable_mail()),
        program(
            "stop what the packages started on new",
            Sh,
            catalogue::stop_package_services(),
        ),
        program("smtp probe", Sh, catalogue::smtp_probe(relay.old.ip4)),
        program(
            "smtp probe's bash -c",
            Dialect::Bash,
            catalogue::smtp_connect(relay.old.ip4),
        ),
        program(
            "install the known host",
            Sh,
            catalogue::install_known_host(KNOWN_HOSTS),
        ),
        program("verify listing", Sh, proof::verify_listing()),
        program(
            "queue check (verify)",
            Sh,
            cmfleet::commands::verify::queue_script(&["4Xk9Zq1rTz".into(), "ABC123".into()]),
        ),
    ];
    for transfer in [TransferMode::Direct, TransferMode::Staged] {
        for acme in [true, false] {
            p.push(program(
                format!("ownership ({transfer:?}, acme required: {acme})"),
                Sh,
                catalogue::fix_ownership(transfer, acme),
            ));
            p.push(program(
                format!("settle new ({transfer:?}, acme required: {acme})"),
                Sh,
                proof::settle_new(transfer, acme, None),
            ));
            p.push(program(
                format!("settle new, pruning ({transfer:?}, acme required: {acme})"),
                Sh,
                proof::settle_new(transfer, acme, Some(&handoff)),
            ));
        }
    }
    // The copies, each as it runs on OLD: inside the vouched push, itself inside the
    // wrapper that stops it with the channel; and each alone, as `sh -c` runs it there.
    let copies = [
        (
            "first copy",
            catalogue::first_copy(relay, Some(123_456_789)),
        ),
        ("first copy (plan)", catalogue::first_copy(relay, None)),
        ("initial sync", catalogue::initial_sync(relay, false)),
        (
            "initial sync mirrored",
            catalogue::initial_sync(relay, true),
        ),
        (
            "final sync",
            catalogue::final_sync(relay, Some((5000, 5000)), false),
        ),
        (
            "final sync mirrored",
            catalogue::final_sync(relay, Some((5000, 5000)), true),
        ),
        (
            "final sync (plan)",
            catalogue::final_sync(relay, None, false),
        ),
    ];
    for (name, copy) in copies {
        let pushed = format!(
            "{} && {{ {copy}; }}",
            catalogue::install_known_host(KNOWN_HOSTS)
        );
        p.push(program(
            format!("{name}, vouched push"),
            Sh,
            catalogue::vouched_push(KNOWN_HOSTS, &copy),
        ));
        p.push(program(format!("{name}, inside setsid sh -c"), Sh, pushed));
        p.push(program(name, Sh, copy));
    }
    p.push(program(
        "stops with the channel",
        Sh,
        catalogue::stops_with_channel("sleep 1; echo 'it''s done'"),
    ));
    p.push(program("inner ssh", Sh, catalogue::inner_ssh(relay)));
    // On the controller: cmdeploy as the plan and the log show it, the staged hops
    // as the plan shows them, and the master's ssh command (rsync's `-e`).
    for (name, run) in [
        ("cmdeploy step 2", catalogue::preconfigure(relay)),
        ("cmdeploy step 3", catalogue::disable_old(relay)),
        ("cmdeploy step 6", catalogue::activate(relay)),
        ("cmdeploy rollback old", catalogue::reenable_old(relay)),
        ("cmdeploy rollback new", catalogue::disable_new(relay)),
    ] {
        p.push(program(name, Sh, run.render(&fleet.cmdeploy, fleet)));
    }
    let socket = fleet.state_dir.join("masters/it's old.sock");
    let ssh = remote::master_ssh_command(&socket);
    p.push(program("master ssh (rsync -e)", Sh, ssh.clone()));
    for last in [false, true] {
        let hops = catalogue::staged_hops(
            &fleet.state_dir.join("staging"),
            relay,
            last,
            true,
            &ssh,
            &ssh,
        );
        p.push(program(
            format!("staged pull (final: {last})"),
            Sh,
            join(&hops.pull),
        ));
        p.push(program(
            format!("staged push (final: {last})"),
            Sh,
            format!(
                "cd {} && {}",
                quote(&hops.dir.display().to_string()),
                join(&hops.push)
            ),
        ));
    }
    p
}

#[test]
fn every_remote_and_controller_program_passes_shellcheck() {
    let mut programs = Vec::new();
    for transfer in [TransferMode::Direct, TransferMode::Staged] {
        let fleet = hostile(transfer);
        // The same relay with a self-signed certificate (a mail_domain starting with
        // `_`): /var/lib/acme is moved when OLD has it, not required.
        let mut self_signed = fleet.inv.relays[0].clone();
        self_signed.mail_domain = MailDomain::Name("_c1.example.org".into());
        for (relay, what) in [(&fleet.inv.relays[0], ""), (&self_signed, ", self-signed")] {
            for mut p in remote_programs(relay, &fleet.inv) {
                p.name = format!("{transfer:?}{what}: {}", p.name);
                programs.push(p);
            }
        }
    }
    assert_clean(&programs);
}

#[test]
fn the_final_sync_requires_acme_only_of_relays_with_lets_encrypt() {
    let fleet = hostile(TransferMode::Direct);
    let acme = &fleet.inv.relays[0];
    let mut self_signed = acme.clone();
    self_signed.mail_domain = MailDomain::Name("_c1.example.org".into());
    assert!(catalogue::acme_required(acme));
    assert!(!catalogue::acme_required(&self_signed));
    let required = "for p in /var/lib/acme /etc/dkimkeys /var/spool/postfix /home/vmail/mail;";
    assert!(catalogue::final_sync(acme, None, false).contains(required));
    let sync = catalogue::final_sync(&self_signed, None, false);
    assert!(
        sync.contains("for p in /etc/dkimkeys /var/spool/postfix /home/vmail/mail;")
            && sync.contains("if [ -e /var/lib/acme ]; then set -- \"$@\" /var/lib/acme; fi;"),
        "{sync}"
    );
    assert!(inspect::proof_old_script(acme).contains("for p in /var/lib/acme "));
    assert!(!inspect::proof_old_script(&self_signed).contains("/var/lib/acme"));
}

/// The lab's scripts as they are in the tree (their shebang, or the shell that reads
/// them), and `lab-client.py` aside.
fn asset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab/assets")
}

fn asset_dialect(name: &str, text: &str) -> Option<Dialect> {
    let first = text.lines().next().unwrap_or("");
    match (name, first) {
        (_, f) if f.starts_with("#!/bin/bash") || f.starts_with("#!/usr/bin/env bash") => {
            Some(Dialect::Bash)
        }
        (_, f) if f.starts_with("#!/bin/sh") => Some(Dialect::Sh),
        // Fed to `bash -s` over ssh by the stand-in cmdeploy.
        ("remote.sh", _) => Some(Dialect::Bash),
        // Sourced by scripts/cmdeploy (bash), written for any POSIX shell like a venv's.
        ("venv-activate", _) => Some(Dialect::Sh),
        _ => None,
    }
}

#[test]
fn the_lab_shell_assets_pass_shellcheck() {
    let mut programs = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(asset_dir())
        .expect("src/lab/assets")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(asset_dir().join(&name)).expect("read an asset");
        match asset_dialect(&name, &text) {
            Some(d) => programs.push(program(format!("src/lab/assets/{name}"), d, text)),
            // Python, and chatmail's lab overlays (patches to Python code).
            None => assert!(
                name.ends_with(".py")
                    || name.ends_with(".patch")
                    || text.starts_with("#!/usr/bin/python3\n"),
                "src/lab/assets/{name}: which shell reads it? (add it to asset_dialect)"
            ),
        }
    }
    assert!(programs.len() >= 9, "{} assets found", programs.len());
    // The two templates as the lab writes them (its folder is a plain path: sshd's
    // configs and the hosts' fstabs could not hold a space or a quote either).
    let lab = Path::new(cmfleet::lab::DEFAULT_DIR);
    programs.push(program(
        "venv/bin/cmdeploy as written",
        Dialect::Bash,
        cmfleet::lab::venv_cmdeploy(lab),
    ));
    programs.push(program(
        "venv/bin/activate as written",
        Dialect::Sh,
        cmfleet::lab::venv_activate(&lab.join("relay/venv")),
    ));
    assert_clean(&programs);
}

/// Shell files under `dir`, recursively.
fn shell_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read a folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            shell_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "sh") {
            out.push(p);
        }
    }
}

/// The shell programs (`*.sh`) under `dir`, relative to the repository, read by the
/// shell their shebang names (sh unless it says bash).
fn shell_programs_under(dir: &str) -> Vec<Program> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    shell_files(&root.join(dir), &mut files);
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read a shell program");
            let dialect = match text.lines().next() {
                Some(l) if l.contains("bash") => Dialect::Bash,
                _ => Dialect::Sh,
            };
            let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
            program(name, dialect, text)
        })
        .collect()
}

/// The example inventories' programs (a `command` DNS hook): cmfleet runs them on
/// the controller once an operator adopts them.
#[test]
fn the_example_hook_programs_pass_shellcheck() {
    let programs = shell_programs_under("examples");
    assert!(!programs.is_empty(), "no example shell programs found");
    assert_clean(&programs);
}

/// The test harness's own shell programs (tests/common/*.sh: a pre_cutover hook and a
/// fault-injecting cmdeploy wrapper of the Delta Chat nights).
#[test]
fn the_test_harness_shell_programs_pass_shellcheck() {
    let programs = shell_programs_under("tests");
    assert!(
        programs.len() >= 2,
        "{} test shell programs found",
        programs.len()
    );
    assert_clean(&programs);
}
