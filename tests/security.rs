//! Security: inventory values reach shells as data, never as code; secrets never reach
//! logs, the journal, reports or the plan; state is private; a changed host key is
//! refused, naming the host and the fingerprint.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cmfleet::infra::shell::quote;
use cmfleet::model::inventory::{Inventory, InventoryError};
use common::lab::{ok, TestLab};
use common::run::{assert_trees_equal, cmfleet, peek, variant};

/// Values an attacker (or a typo) could put in an inventory.
const HOSTILE: [&str; 11] = [
    "it's",
    "a\"b",
    "x; touch /tmp/cmfleet-pwned-1",
    "$(touch /tmp/cmfleet-pwned-2)",
    "`touch /tmp/cmfleet-pwned-3`",
    "line1\nline2; touch /tmp/cmfleet-pwned-4",
    "-rf",
    "--delete /",
    "with  spaces\tand tab",
    "back\\slash \\' '\\''",
    "*",
];

fn no_pwned_files() {
    for i in 1..=6 {
        let p = format!("/tmp/cmfleet-pwned-{i}");
        assert!(!Path::new(&p).exists(), "{p} exists: a value ran as code");
    }
}

/// Every quoted value comes back byte for byte from a lab host's shell, and the
/// command that vouches for NEW's host key on OLD writes a hostile line as data.
#[test]
fn hostile_values_reach_a_lab_host_as_data() {
    let lab = TestLab::start(1);
    let old = lab.relay(1).expect("relay").old;
    for v in HOSTILE {
        let out = ok(lab
            .ssh(old.addr, &[])
            .arg(format!("printf '%s' {}", quote(v))));
        assert_eq!(out, v, "through ssh and the remote shell");
        ok(lab
            .ssh(old.addr, &[])
            .arg(cmfleet::host::catalogue::install_known_host(v)));
        let written = std::fs::read_to_string(old.path(cmfleet::host::catalogue::OLD_KNOWN_HOSTS))
            .expect("read");
        assert_eq!(written, format!("{v}\n"));
    }
    no_pwned_files();
}

fn problems(src: &str) -> String {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("c.ini"), "mail_domain = c1.example.org\n").expect("ini");
    match Inventory::parse(&dir.path().join("fleet.toml"), src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(InventoryError::Invalid { problems }) => problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => e.to_string(),
    }
}

/// Values that end up in ssh's or rsync's argv (addresses, users, the mail domain,
/// the cipher) are refused when hostile, naming the field; nothing gets to run.
#[test]
fn hostile_addresses_users_domains_and_ciphers_are_refused() {
    let base = |field: &str, value: &str| {
        let v = toml::Value::String(value.to_string()).to_string();
        let (old_ssh, user, domain, cipher) = match field {
            "old.ssh" => (
                v.as_str(),
                "\"root\"",
                "\"c1.example.org\"",
                "\"aes128-ctr\"",
            ),
            "old.user" => (
                "\"10.0.0.1\"",
                v.as_str(),
                "\"c1.example.org\"",
                "\"aes128-ctr\"",
            ),
            "mail_domain" => ("\"10.0.0.1\"", "\"root\"", v.as_str(), "\"aes128-ctr\""),
            _ => ("\"10.0.0.1\"", "\"root\"", "\"c1.example.org\"", v.as_str()),
        };
        format!(
            "[fleet]\ncmdeploy = \"x/scripts/cmdeploy\"\n[[relay]]\nmail_domain = {domain}\n\
             config = \"c.ini\"\ncipher = {cipher}\n\
             old = {{ ssh = {old_ssh}, ip4 = \"10.0.0.1\", user = {user} }}\n\
             new = {{ ssh = \"10.0.1.1\", ip4 = \"10.0.1.1\" }}\n"
        )
    };
    let mut refused = 0;
    for field in ["old.ssh", "old.user", "mail_domain", "cipher"] {
        for v in HOSTILE
            .iter()
            .chain(["-oProxyCommand=touch /tmp/cmfleet-pwned-5", ""].iter())
        {
            let msg = problems(&base(field, v));
            assert!(msg.contains(field), "{field} = {v:?}:\n{msg}");
            refused += 1;
        }
    }
    eprintln!("{refused} hostile values refused");
    no_pwned_files();
}

/// A chatmail.ini path and a state_dir full of shell syntax, a hook reading the
/// relay's facts from its environment, and an explicit cipher: a whole migration on
/// the lab runs them as data (cmdeploy gets the path as one argument) and finishes.
#[test]
fn hostile_paths_and_hooks_run_as_data_in_a_real_migration() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let weird = "cfg 'q' \"dq\" $(touch /tmp/cmfleet-pwned-1) `touch /tmp/cmfleet-pwned-2`; -rf";
    let dir = lab.path().join(weird);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ini = dir.join("chatmail.ini");
    std::fs::copy(&relay.config, &ini).expect("copy ini");
    let state = "state 'x' $(touch /tmp/cmfleet-pwned-3)";
    let hook_out = lab.path().join("hook.out");
    let hook = format!(
        "printf '%s|%s|%s\\n' \"$CMFLEET_RELAY\" \"$CMFLEET_HOOK\" \"$CMFLEET_OLD_SSH\" >> {}",
        quote(&hook_out.display().to_string())
    );
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let path = variant(&lab, "hostile.toml", |t| {
        t.replace(
            &format!("config = {}", q(&format!("relays/{}/chatmail.ini", relay.mail_domain))),
            &format!("config = {}", q(&format!("{weird}/chatmail.ini"))),
        )
        .replace("[fleet]\n", &format!("[fleet]\nstate_dir = {}\n", q(state)))
        .replace(
            "[defaults]\n",
            &format!(
                "[defaults]\ncipher = \"aes128-ctr\"\nhooks = {{ pre_cutover = {}, post_cutover = {} }}\n",
                q(&hook),
                q(&hook)
            ),
        )
    });
    let inv = Inventory::load(&path).expect("inventory");
    assert_eq!(inv.relays[0].config, ini);
    // The plan shows the path shell-quoted: pasted into a shell, it is one word.
    let (code, plan) = cmfleet(&["plan"], &path);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains(&quote(&ini.display().to_string())), "{plan}");

    let (code, text) = cmfleet(&["migrate", "--yes", "--progress", "plain"], &path);
    assert_eq!(code, Some(0), "{text}");
    assert_trees_equal(&lab);
    no_pwned_files();
    assert!(lab
        .path()
        .join(state)
        .join("hostile.journal.json")
        .is_file());
    let hooked = std::fs::read_to_string(&hook_out).expect("hook output");
    let old = relay.old.addr;
    assert_eq!(
        hooked,
        format!(
            "{d}|pre_cutover|{old}\n{d}|post_cutover|{old}\n",
            d = relay.mail_domain
        )
    );
    // cmdeploy got the path as one argument, on NEW (steps 2, 6) and OLD (step 3).
    for addr in [relay.new.addr, relay.old.addr] {
        let inv = lab.host_state(addr).expect("state").invocations;
        assert!(
            inv.iter().any(|l| l.contains(&ini.display().to_string())),
            "{inv:#?}"
        );
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The lab inventory with rfc2136 against `primary` as its only nameserver.
fn rfc2136_inventory(lab: &TestLab, primary: &common::bind::Bind) -> PathBuf {
    common::run::rfc2136_inventory(lab, primary, common::bind::Bind::nameservers(primary, None))
}

/// Every file under `dir`, with its path.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// A migration with TSIG-signed DNS updates against a real BIND: neither the TSIG
/// secret nor the ssh private key appears in any output, log, journal, report or
/// plan; the state directory is 0700, the journal, its lock and the logs 0600.
#[test]
fn secrets_never_leak_and_state_is_private() {
    use common::bind::Bind;
    let lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let primary = Bind::primary(
        "lab.test",
        &[&format!("relay1 300 IN A {}", relay.old.addr)],
    );
    let path = rfc2136_inventory(&lab, &primary);
    let inv = Inventory::load(&path).expect("inventory");
    let key = std::fs::read_to_string(&primary.key_file).expect("key");
    let tsig = key.split('"').nth(3).expect("secret").to_string();
    assert!(tsig.len() >= 20);
    let ssh_key = std::fs::read_to_string(lab.key()).expect("ssh key");
    let ssh_secret: Vec<&str> = ssh_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    assert!(!ssh_secret.is_empty());

    let report = lab.path().join("report.json");
    let mut outputs = Vec::new();
    for args in [
        vec!["plan"],
        vec!["plan", "--format", "json"],
        vec!["migrate", "--yes", "--progress", "json", "--report"],
    ] {
        let mut args: Vec<&str> = args;
        let r = report.display().to_string();
        if args.last() == Some(&"--report") {
            args.push(&r);
            let (code, text) = cmfleet(&args, &path);
            assert_eq!(code, Some(0), "{text}");
            outputs.push(text);
        } else {
            let (code, text) = cmfleet(&args, &path);
            assert_eq!(code, Some(0), "{text}");
            outputs.push(text);
        }
    }
    for args in [vec!["status"], vec!["status", "--format", "json"]] {
        outputs.push(cmfleet(&args, &path).1);
    }
    assert_eq!(
        primary.dig("relay1.lab.test", "A"),
        vec![relay.new.addr.to_string()]
    );
    let state = &inv.fleet.state_dir;
    let mut searched = vec![report.clone()];
    searched.extend(
        files(state)
            .into_iter()
            .filter(|p| !p.starts_with(state.join("workspaces"))),
    );
    for f in &searched {
        outputs.push(String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned());
    }
    for text in &outputs {
        assert!(!text.contains(&tsig), "the TSIG secret leaked:\n{text}");
        for l in &ssh_secret {
            assert!(!text.contains(l), "the ssh private key leaked:\n{text}");
        }
    }
    eprintln!("{} outputs and files searched for secrets", outputs.len());

    assert_eq!(mode(state), 0o700, "{}", state.display());
    assert_eq!(mode(&state.join("logs")), 0o700);
    let journal = cmfleet::pipeline::journal::journal_path(state, &inv.path);
    for f in [
        journal.clone(),
        journal.with_extension("lock"),
        state
            .join("logs")
            .join(format!("{}.log", relay.mail_domain)),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// NEW's host key changes between two runs (a reinstalled or impostor machine): the
/// next run refuses it, naming the host and the new key's fingerprint, and cmfleet's
/// known_hosts keeps the key it learned.
#[test]
fn a_changed_host_key_on_new_is_refused_with_host_and_fingerprint() {
    let mut lab = TestLab::start(1);
    let relay = lab.relay(1).expect("relay");
    let path = lab.inventory();
    let (code, text) = cmfleet(
        &[
            "migrate",
            "--yes",
            "--until-step",
            "1",
            "--progress",
            "plain",
        ],
        &path,
    );
    // Step 1 only (a pre-staging run).
    assert!(matches!(code, Some(0 | 2)), "{text}");
    let inv = Inventory::load(&path).expect("inventory");
    assert_eq!(
        peek(&inv).relays[&relay.mail_domain]
            .step(cmfleet::model::step::Step::InitialSync)
            .status,
        cmfleet::pipeline::journal::StepStatus::Done
    );
    let known = inv.fleet.state_dir.join("known_hosts");
    let learned = std::fs::read_to_string(&known).expect("known_hosts");
    assert!(learned.contains(&relay.new.addr.to_string()));

    let key = relay.new.dir.join("ssh_host_ed25519_key");
    std::fs::remove_file(&key).expect("rm key");
    std::fs::remove_file(key.with_extension("pub")).expect("rm pub");
    ok(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let fingerprint = ok(std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub")));
    let fingerprint = fingerprint
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"));
    // A new host key means a reinstalled machine: its open connections (the master
    // the last run kept) are gone with it.
    lab.crash_host(relay.new.addr).expect("stop");
    lab.start_host(relay.new.addr).expect("start");

    // Step 1 again (cmfleet's own connection; cmdeploy at step 2 would check the key
    // against the operator's known_hosts, outside cmfleet).
    let (code, text) = cmfleet(
        &[
            "migrate",
            "--yes",
            "--restart",
            "--until-step",
            "1",
            "--progress",
            "plain",
        ],
        &path,
    );
    let log = std::fs::read_to_string(
        inv.fleet
            .state_dir
            .join("logs")
            .join(format!("{}.log", relay.mail_domain)),
    )
    .unwrap_or_default();
    let now_known = std::fs::read_to_string(&known).unwrap_or_default();
    assert_eq!(
        code,
        Some(2),
        "{text}\nlog:\n{log}\nknown_hosts before:\n{learned}\nafter:\n{now_known}\nnew key: {fingerprint}"
    );
    let data = peek(&inv);
    let rec = &data.relays[&relay.mail_domain];
    let error = rec
        .steps
        .iter()
        .find_map(|s| s.error.clone())
        .unwrap_or_default();
    assert!(error.contains(&relay.new.addr.to_string()), "{error}");
    assert!(
        error.contains(&fingerprint),
        "names the offered key: {error}"
    );
    assert!(text.contains(&fingerprint), "{text}");
    assert_eq!(
        rec.steps.iter().find_map(|s| s.error_kind),
        Some(cmfleet::model::step::ErrorKind::Permanent)
    );
    assert_eq!(
        std::fs::read_to_string(&known).expect("known_hosts"),
        learned
    );
    // Nothing past step 1 ran: OLD still serves mail.
    assert!(!lab.host_state(relay.old.addr).expect("old").mail_disabled);
}
