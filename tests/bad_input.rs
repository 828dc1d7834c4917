//! Bad input: every mistake is refused with exit code 1 and a message naming the file,
//! line and field (or the path) — and nothing changes: no journal is created, an
//! existing one stays byte for byte. Plus a property test: the inventory parser never
//! panics, whatever the text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

mod common;

/// A fleet on paper (no hosts behind it): chatmail.ini files for c1..c3 and an
/// inventory, in a temp dir; the state dir is `DIR/state`.
struct Paper {
    dir: tempfile::TempDir,
}

const BIN: &str = env!("CARGO_BIN_EXE_cmfleet");

fn relay(i: u32, extra: &str) -> String {
    format!(
        "\n[[relay]]\nmail_domain = \"c{i}.example.org\"\nconfig = \"c{i}/chatmail.ini\"\n\
         old = {{ ssh = \"10.0.0.{i}\", ip4 = \"10.0.0.{i}\" }}\n\
         new = {{ ssh = \"10.0.1.{i}\", ip4 = \"10.0.1.{i}\" }}\n{extra}"
    )
}

fn valid() -> String {
    format!(
        "[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\nstate_dir = \"state\"\n{}{}",
        relay(1, ""),
        relay(2, "")
    )
}

impl Paper {
    fn new() -> Paper {
        let dir = tempfile::tempdir().expect("temp dir");
        for i in 1..=3 {
            let d = dir.path().join(format!("c{i}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(
                d.join("chatmail.ini"),
                format!("[params]\nmail_domain = c{i}.example.org\n"),
            )
            .expect("write");
        }
        // Enough of a chatmail relay checkout for cmfleet to accept the path (nothing
        // here ever runs: every test fails before).
        let scripts = dir.path().join("relay/scripts");
        std::fs::create_dir_all(&scripts).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("relay/.git")).expect("mkdir");
        std::fs::write(scripts.join("cmdeploy"), "#!/bin/sh\nexit 1\n").expect("write");
        Paper { dir }
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn journal(&self) -> PathBuf {
        self.state().join("fleet.journal.json")
    }

    fn write(&self, text: &str) -> &Self {
        std::fs::write(self.inventory(), text).expect("write inventory");
        self
    }

    /// A journal that belongs to this inventory, with c1 done.
    fn write_journal(&self, inventory: &Path, relays: &[(&str, &str)]) -> String {
        std::fs::create_dir_all(self.state()).expect("state dir");
        let step = |s: &str| {
            format!("{{\"status\":\"{s}\",\"attempts\":1,\"started_ms\":1,\"finished_ms\":2,\"error\":null,\"error_kind\":null,\"note\":null}}")
        };
        let rels: Vec<String> = relays
            .iter()
            .map(|(name, status)| {
                let steps: Vec<String> = (0..6).map(|_| step(status)).collect();
                format!(
                    "\"{name}\":{{\"steps\":[{}],\"down_since_ms\":1,\"up_again_ms\":null}}",
                    steps.join(",")
                )
            })
            .collect();
        let text = format!(
            "{{\"version\":1,\"inventory\":{},\"relays\":{{{}}}}}",
            serde_json::to_string(&inventory.display().to_string()).expect("json"),
            rels.join(",")
        );
        std::fs::write(self.journal(), &text).expect("write journal");
        text
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("-i")
            .arg(self.inventory())
            .current_dir(self.dir.path())
            .env_remove("CMFLEET_PROGRESS")
            .output()
            .expect("run cmfleet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Every file under the state dir with its content.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.state()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "lock")
                    && std::fs::metadata(&p).is_ok_and(|m| m.len() == 0)
                {
                    // The journal's (empty) lock file is taken before the journal is
                    // read; it holds nothing.
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        out
    }

    /// `cmfleet ARGS` must refuse (exit 1) with every one of `needles` in its output,
    /// and leave the state dir as it was.
    fn refuses(&self, args: &[&str], needles: &[&str]) -> String {
        let before = self.snapshot();
        let (code, text) = self.run(args);
        assert_eq!(code, Some(1), "{args:?} must exit 1:\n{text}");
        for n in needles {
            assert!(text.contains(n), "{args:?}: no {n:?} in:\n{text}");
        }
        assert!(!text.contains("panicked"), "{text}");
        let after = self.snapshot();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{args:?} changed the state dir:\n{text}"
        );
        assert!(before == after, "{args:?} changed a file in the state dir");
        text
    }
}

/// Each command that reads the inventory, as an operator would run it.
const COMMANDS: [&[&str]; 3] = [
    &["plan"],
    &["migrate", "--yes", "--progress", "plain"],
    &["status"],
];

fn refused_by_all(paper: &Paper, needles: &[&str]) {
    for args in COMMANDS {
        paper.refuses(args, needles);
    }
    assert!(!paper.state().exists(), "no state dir may be created");
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let p = Paper::new();
    p.write(&valid().replace("[[relay]]", "[[relay]"));
    refused_by_all(&p, &["fleet.toml:5:"]);
    p.write(&valid().replace("state_dir = \"state\"", "state_dir = \"state"));
    refused_by_all(&p, &["fleet.toml:3:"]);
    p.write("\u{0}\u{1}binary garbage \u{7f}");
    refused_by_all(&p, &["fleet.toml:1:"]);
    p.write("");
    refused_by_all(&p, &["fleet.toml", "fleet"]);
}

#[test]
fn wrong_types_name_the_field() {
    let p = Paper::new();
    p.write(&valid().replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\nforks = \"many\"",
    ));
    refused_by_all(&p, &["fleet.toml:4:9: fleet.forks:"]);
    p.write(&format!("{}ssh_port = \"22\"\n", valid()));
    refused_by_all(&p, &["fleet.toml:", "ssh_port"]);
    p.write(&format!("{}ssh_port = 70000\n", valid()));
    refused_by_all(&p, &["fleet.toml:", "ssh_port"]);
    p.write(&valid().replacen("[[relay]]", "[relay]", 1));
    refused_by_all(&p, &["fleet.toml:", "duplicate key"]);
}

/// Several wrong types are all reported in one error, each with its position and
/// field (serde stops at the first: the loader blanks that key and parses again), and
/// a key blanked that way is never reported missing.
#[test]
fn several_wrong_types_are_reported_at_once() {
    let p = Paper::new();
    let text = format!(
        "{}{}{}\n[defaults]\nconnect_timeout = 30\n",
        "[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\nstate_dir = \"state\"\nforks = \"many\"\n",
        relay(1, "ssh_port = \"22\"\n"),
        relay(2, "")
    );
    p.write(&text);
    let out = p.refuses(
        &["plan"],
        &[
            "the inventory has 3 problems:",
            "fleet.toml:4:9: fleet.forks: invalid type: string \"many\", expected u32",
            "fleet.toml:11:12: relay[0].ssh_port: invalid type: string \"22\", expected u16",
            "fleet.toml:20:19: defaults.connect_timeout: invalid type: integer `30`, expected a string",
        ],
    );
    assert!(!out.contains("missing"), "{out}");
    refused_by_all(
        &p,
        &[
            "3 problems",
            "fleet.forks",
            "relay[0].ssh_port",
            "defaults.connect_timeout",
        ],
    );

    // A wrong type inside an inline table (only that pair is blanked: `new` is not
    // reported missing), an unknown key, and what validation finds in the rest (an
    // address) come together.
    let text = valid()
        .replacen(
            "new = { ssh = \"10.0.1.1\", ip4 = \"10.0.1.1\" }",
            "new = { ssh = \"10.0.1.1\", ip4 = \"10.0.1.1\", port = \"2222\" }",
            1,
        )
        .replacen("ip4 = \"10.0.1.2\"", "ip4 = \"10.0.1\"", 1)
        + "colour = \"red\"\n";
    p.write(&text);
    let out = p.refuses(
        &["plan"],
        &[
            "the inventory has 3 problems:",
            "fleet.toml:9:52: relay[0].new.port: invalid type: string \"2222\", expected u16",
            "fleet.toml:15:",
            "relay[1].new.ip4",
            "fleet.toml:16:1: relay[1].colour: unknown field `colour`",
        ],
    );
    assert!(!out.contains("missing"), "{out}");

    // Nor is a key validation needs because of another (the rfc2136 provider needs
    // `tsig_key_file`), inherited by every relay from [defaults].
    p.write(&format!(
        "{}\n[defaults]\ndns = {{ provider = \"rfc2136\", server = \"127.0.0.1:53\", tsig_key_file = 5 }}\n",
        valid()
    ));
    let out = p.refuses(
        &["plan"],
        &[
            "the inventory has 1 problem:",
            "defaults.dns.tsig_key_file: invalid type: integer `5`, expected a string",
        ],
    );
    assert!(!out.contains("needs"), "{out}");

    // A required key of the wrong type is not reported missing as well (the keys
    // serde reads after it are checked once it is fixed: it cannot be blanked).
    p.write(&valid().replacen("cmdeploy = \"relay/scripts/cmdeploy\"", "cmdeploy = 7", 1));
    let out = p.refuses(
        &["plan"],
        &["fleet.toml:2:12: fleet.cmdeploy: invalid type: integer `7`, expected a string"],
    );
    assert!(!out.contains("missing"), "{out}");
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let p = Paper::new();
    p.write(&format!("{}colour = \"red\"\n", valid()));
    refused_by_all(&p, &["fleet.toml:", "unknown field `colour`", "relay[1]"]);
    p.write(&valid().replace("[fleet]", "[fleet]\nforkz = 3"));
    refused_by_all(&p, &["fleet.toml:2:", "unknown field `forkz`"]);
    p.write(&format!("{}\n[defaults.retry]\ntries = 3\n", valid()));
    refused_by_all(&p, &["fleet.toml:", "unknown field `tries`"]);
}

#[test]
fn invalid_addresses_and_domain_names_are_refused_with_positions() {
    let p = Paper::new();
    for (from, to, field) in [
        (
            "ip4 = \"10.0.0.1\"",
            "ip4 = \"10.0.0.256\"",
            "relay[0].old.ip4",
        ),
        ("ip4 = \"10.0.1.2\"", "ip4 = \"10.0.1\"", "relay[1].new.ip4"),
        (
            "ip4 = \"10.0.0.1\" }",
            "ip4 = \"10.0.0.1\", ip6 = \"fe80::zz\" }",
            "relay[0].old.ip6",
        ),
        (
            "\"c1.example.org\"",
            "\"c1 example.org\"",
            "relay[0].mail_domain",
        ),
        (
            "\"c1.example.org\"",
            "\"-c1.example.org\"",
            "relay[0].mail_domain",
        ),
        (
            "\"c1.example.org\"",
            "\"c1..example.org\"",
            "relay[0].mail_domain",
        ),
        (
            "\"c1.example.org\"",
            "\"c1_x.example.org\"",
            "relay[0].mail_domain",
        ),
        (
            "\"c1.example.org\"",
            "\"c1.example.123\"",
            "relay[0].mail_domain",
        ),
        (
            "ssh = \"10.0.0.1\"",
            "ssh = \"host name\"",
            "relay[0].old.ssh",
        ),
        (
            "ssh = \"10.0.1.2\"",
            "ssh = \"-oProxyCommand=x\"",
            "relay[1].new.ssh",
        ),
    ] {
        let text = valid().replacen(from, to, 1);
        assert_ne!(text, valid(), "{from} not found");
        p.write(&text);
        let msg = p.refuses(&["plan"], &["fleet.toml:", field]);
        assert!(msg.contains("problem"), "{msg}");
    }
    let long = format!("\"{}.example.org\"", "a".repeat(64));
    p.write(&valid().replacen("\"c1.example.org\"", &long, 1));
    refused_by_all(&p, &["relay[0].mail_domain", "not a valid domain name"]);
    p.write(&valid().replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\n[defaults]\ndns = { provider = \"rfc2136\", server = \"ns.example\", tsig_key_file = \"k\" }",
    ));
    refused_by_all(&p, &["fleet.toml:", "dns.server"]);
}

#[test]
fn duplicate_relays_are_refused() {
    let p = Paper::new();
    p.write(&format!("{}{}", valid(), relay(1, "")));
    refused_by_all(
        &p,
        &[
            "relay[2].mail_domain",
            "already the mail_domain of relay[0]",
        ],
    );
    // Case and a trailing dot do not make another relay.
    p.write(&format!(
        "{}{}",
        valid(),
        relay(3, "").replace("c3.example.org\"", "C1.Example.org.\"")
    ));
    refused_by_all(&p, &["already the mail_domain of relay[0]"]);
    // Two relays moving to one new machine.
    p.write(&format!(
        "{}{}",
        valid(),
        relay(3, "").replace("10.0.1.3\"", "10.0.1.1\"")
    ));
    refused_by_all(&p, &["relay[2].new.ssh", "is also relay[0].new.ssh"]);
}

#[test]
fn missing_files_are_named() {
    let p = Paper::new();
    // The inventory itself.
    refused_by_all(&p, &["cannot read inventory", "fleet.toml"]);
    // A relay's chatmail.ini.
    p.write(&valid().replace("c2/chatmail.ini", "c9/chatmail.ini"));
    refused_by_all(&p, &["relay[1].config", "c9/chatmail.ini does not exist"]);
    // A --limit file.
    p.write(&valid());
    p.refuses(
        &["plan", "--limit", "@failed.txt"],
        &["--limit", "failed.txt"],
    );
    // The cmdeploy checkout: refused before any relay is touched.
    p.write(&valid().replace("relay/scripts/cmdeploy", "nowhere/scripts/cmdeploy"));
    let text = p.refuses(
        &["migrate", "--yes", "--progress", "plain"],
        &[
            "nowhere/scripts/cmdeploy",
            "does not look like scripts/cmdeploy",
        ],
    );
    assert!(!p.journal().exists(), "{text}");
}

#[test]
fn an_empty_fleet_is_refused() {
    let p = Paper::new();
    p.write("[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\nstate_dir = \"state\"\n");
    refused_by_all(&p, &["fleet.toml", "no [[relay]] entries"]);
}

#[test]
fn a_limit_matching_nothing_is_refused() {
    let p = Paper::new();
    p.write(&valid());
    for args in COMMANDS {
        let mut a = args.to_vec();
        a.extend(["--limit", "c1.example.org,c7.example.org"]);
        p.refuses(&a, &["\"c7.example.org\" matches no relay"]);
        let mut a = args.to_vec();
        a.extend(["--limit", "*.example.net"]);
        p.refuses(&a, &["matches no relay"]);
        let mut a = args.to_vec();
        a.extend(["--limit", "c1.example.org,!c1.example.org"]);
        p.refuses(&a, &["selects no relay"]);
    }
    assert!(!p.state().exists());
}

/// Two names of one machine (`localhost` and `127.0.0.1`: the resolver answers from
/// /etc/hosts) in two roles: `plan` and `migrate` refuse the fleet before anything is
/// written, naming both entries and what they share.
#[test]
fn two_names_of_one_machine_are_refused() {
    let p = Paper::new();
    p.write(
        &valid()
            .replace("old = { ssh = \"10.0.0.1\"", "old = { ssh = \"127.0.0.1\"")
            .replace("new = { ssh = \"10.0.1.2\"", "new = { ssh = \"localhost\""),
    );
    for args in [&["plan"][..], &["migrate", "--yes", "--progress", "plain"]] {
        let text = p.refuses(
            args,
            &[
                "relay[1].new (c2.example.org) and relay[0].old (c1.example.org) are one machine",
                "both reach 127.0.0.1 port 22",
            ],
        );
        assert!(!text.contains("panicked"), "{text}");
    }
    assert!(!p.state().exists(), "nothing may be written");
}

/// An empty `--limit` (an empty failed.txt after a clean night, `''`, `','`,
/// `@/dev/null`) selects no relay: nothing to do, exit 0, nothing written. Before,
/// each of these selected the whole fleet.
#[test]
fn an_empty_selection_selects_nothing() {
    let p = Paper::new();
    p.write(&valid());
    let failed = p.dir.path().join("failed.txt");
    std::fs::write(&failed, "").expect("write");
    let at_failed = format!("@{}", failed.display());
    for limit in ["", ",", " , ", "@/dev/null", at_failed.as_str()] {
        for args in [
            &["plan"][..],
            &["plan", "--format", "json"],
            &["migrate", "--yes", "--progress", "plain"],
            &["status"],
            &["check"],
            &["verify"],
        ] {
            let mut a = args.to_vec();
            a.extend(["--limit", limit]);
            let (code, text) = p.run(&a);
            assert_eq!(code, Some(0), "{a:?} must exit 0:\n{text}");
            assert!(text.contains("nothing to do"), "{a:?}:\n{text}");
            assert!(
                !text.contains("c1.example.org"),
                "{a:?} planned a relay:\n{text}"
            );
        }
    }
    assert!(!p.state().exists(), "nothing may be written");
}

/// `rollback` needs relays named: an empty selection is refused, and so is one
/// that covers the whole fleet without `--all` (with `--force` that would undo a
/// migrated fleet). Nothing is changed either way.
#[test]
fn rollback_needs_an_explicit_selection_and_all_for_the_whole_fleet() {
    let p = Paper::new();
    p.write(&valid());
    p.write_journal(
        &p.inventory(),
        &[("c1.example.org", "done"), ("c2.example.org", "done")],
    );
    for limit in ["", ",", "@/dev/null"] {
        p.refuses(
            &["rollback", "--force", "--limit", limit],
            &["selects no relay"],
        );
    }
    for limit in ["*", "*.example.org", "c1.example.org,c2.example.org"] {
        p.refuses(
            &["rollback", "--force", "--limit", limit],
            &["every relay of the fleet", "--all"],
        );
    }
}

/// A `--limit @FILE` line that is not a name is not echoed: `@/etc/shadow` must not
/// print a password hash. A name that matches nothing is named with its line.
#[test]
fn a_limit_file_line_is_named_by_number_not_echoed() {
    let p = Paper::new();
    p.write(&valid());
    let file = p.dir.path().join("shadow");
    std::fs::write(&file, "root:$y$j9T$HASHSECRET42:19000:0:99999:7:::\n").expect("write");
    let limit = format!("@{}", file.display());
    let text = p.refuses(&["plan", "--limit", &limit], &["line 1 of", "shadow"]);
    assert!(!text.contains("HASHSECRET42"), "{text}");
    std::fs::write(&file, "# retry\nc1.example.org\n\nc7.example.org\n").expect("write");
    p.refuses(
        &["plan", "--limit", &limit],
        &["line 4 of", "(\"c7.example.org\") matches no relay"],
    );
}

#[test]
fn a_corrupt_journal_is_refused_and_kept() {
    let p = Paper::new();
    p.write(&valid());
    let good = p.write_journal(&p.inventory(), &[("c1.example.org", "done")]);
    for bad in [
        "{not json".to_string(),
        good[..good.len() / 2].to_string(),
        good.replace("\"version\":1", "\"version\":99"),
        good.replacen("{\"status\":\"done\",", "{\"status\":\"exploded\",", 1),
        // Five steps instead of six.
        good.replacen(
            "{\"status\":\"done\",\"attempts\":1,\"started_ms\":1,\"finished_ms\":2,\"error\":null,\"error_kind\":null,\"note\":null},",
            "",
            1,
        ),
        String::new(),
    ] {
        std::fs::write(p.journal(), &bad).expect("write");
        for args in [&["migrate", "--yes", "--progress", "plain"][..], &["status"]] {
            p.refuses(args, &["fleet.journal.json", "is corrupt", "never reset silently"]);
        }
        assert_eq!(std::fs::read_to_string(p.journal()).expect("read"), bad);
    }
}

#[test]
fn a_foreign_journal_is_refused_and_kept() {
    let p = Paper::new();
    p.write(&valid());
    // Another inventory, also named fleet.toml, shares this state_dir.
    let other = Path::new("/srv/other/fleet.toml");
    let text = p.write_journal(other, &[("c1.example.org", "done")]);
    for args in COMMANDS.iter().skip(1) {
        p.refuses(
            args,
            &[
                "belongs to the inventory /srv/other/fleet.toml",
                "another state_dir",
            ],
        );
    }
    assert_eq!(std::fs::read_to_string(p.journal()).expect("read"), text);
}

/// The journal remembers a relay the inventory no longer has (removed, or renamed to
/// another mail_domain): its record is kept, never dropped; `status` still works; and
/// `migrate` reports one left DOWN (exit 2) instead of forgetting it.
#[test]
fn a_journal_from_an_older_inventory_keeps_and_reports_removed_relays() {
    let p = Paper::new();
    p.write(&valid());
    let text = p.write_journal(
        &p.inventory(),
        &[("c1.example.org", "done"), ("gone.example.org", "failed")],
    );
    let (code, out) = p.run(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("c1.example.org"), "{out}");
    assert_eq!(std::fs::read_to_string(p.journal()).expect("read"), text);

    // On a lab (a real checkout): relay1 is done, gone.lab.test is DOWN and missing.
    let lab = common::lab::TestLab::start(1);
    let inv = cmfleet::model::inventory::Inventory::load(&lab.inventory()).expect("inventory");
    let journal = cmfleet::pipeline::journal::journal_path(&inv.fleet.state_dir, &inv.path);
    std::fs::create_dir_all(&inv.fleet.state_dir).expect("state dir");
    let lab_paper = Paper {
        dir: tempfile::tempdir().expect("dir"),
    };
    lab_paper.write_journal(
        &lab.inventory(),
        &[("relay1.lab.test", "done"), ("gone.lab.test", "failed")],
    );
    std::fs::copy(lab_paper.journal(), &journal).expect("copy journal");
    let (code, out) = common::run::cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("held back: gone.lab.test: in the journal but not in the inventory, and DOWN"),
        "{out}"
    );
    let data = cmfleet::pipeline::journal::Journal::peek(&inv.fleet.state_dir, &inv.path)
        .expect("journal");
    assert!(
        data.relays.contains_key("gone.lab.test"),
        "the record is kept"
    );
    assert_eq!(
        data.relays["gone.lab.test"].state(),
        cmfleet::pipeline::journal::RelayState::Down
    );
}

/// Runs `script` (sh) in a private mount namespace, so mounts are the test's alone.
fn in_namespace(script: &str) -> (Option<i32>, String) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env_remove("CMFLEET_PROGRESS")
        .output()
        .expect("unshare");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_read_only_state_dir_is_refused_and_kept() {
    let p = Paper::new();
    p.write(&valid());
    let journal = p.write_journal(&p.inventory(), &[("c1.example.org", "done")]);
    let state = p.state();
    let script = format!(
        "set -e; mount --bind {s} {s}; mount -o remount,bind,ro {s}; \
         {bin} migrate --yes --progress plain -i {inv}; echo \"exit=$?\"",
        s = state.display(),
        bin = BIN,
        inv = p.inventory().display()
    );
    let (code, text) = in_namespace(&script.replace("; echo", " || echo"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("exit=1"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(text.contains(&state.display().to_string()), "{text}");
    assert_eq!(std::fs::read_to_string(p.journal()).expect("read"), journal);
    // A read-only state dir where no journal exists yet: refused the same way.
    std::fs::remove_file(p.journal()).expect("rm");
    let (_, text) = in_namespace(&script.replace("; echo", " || echo"));
    assert!(
        text.contains("exit=1") && text.contains("Read-only"),
        "{text}"
    );
    assert!(!p.journal().exists());
}

#[test]
fn a_full_disk_for_the_journal_is_refused_and_the_journal_kept() {
    let p = Paper::new();
    p.write(&valid());
    let journal = p.write_journal(&p.inventory(), &[("c1.example.org", "done")]);
    let state = p.state();
    // A 64 KiB tmpfs over the state dir, holding the journal, filled up.
    let script = format!(
        "set -e; cp {s}/fleet.journal.json /tmp/cmf-j.$$; mount -t tmpfs -o size=64k cmf {s}; \
         cp /tmp/cmf-j.$$ {s}/fleet.journal.json; rm /tmp/cmf-j.$$; \
         dd if=/dev/zero of={s}/filler bs=4096 2>/dev/null || true; \
         {bin} migrate --yes --progress plain -i {inv} || echo \"exit=$?\"; \
         echo '--- journal:'; cat {s}/fleet.journal.json; echo; echo '--- files:'; ls {s}",
        s = state.display(),
        bin = BIN,
        inv = p.inventory().display()
    );
    let (code, text) = in_namespace(&script);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("exit=1"), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    let (_, rest) = text.split_once("--- journal:\n").expect("journal shown");
    let (shown, files) = rest.split_once("\n--- files:").expect("files shown");
    assert_eq!(shown, journal, "the journal is unchanged");
    assert!(
        !files.lines().any(|l| l.ends_with(".tmp")),
        "no temp file is left behind: {files}"
    );
}

/// Inventories made from valid ones by edits at random places.
fn mutated() -> impl Strategy<Value = String> {
    let base = format!(
        "{}[defaults]\nretry = {{ attempts = 3, backoff = \"2s\" }}\ndns = {{ provider = \"rfc2136\", server = \"192.0.2.53:53\", tsig_key_file = \"k\", nameservers = {{ \"ns1.example.org\" = \"192.0.2.1\" }} }}\n[groups.a]\nmax_transfers = 2\n{}",
        valid().replace("[[relay]]", "[[relay]]\ngroup = \"a\""),
        relay(3, "cipher = \"aes128-ctr\"\nwaves = [1, \"50%\"]\n"),
    );
    let len = base.len();
    let edits = prop::collection::vec(
        (
            0..len,
            prop_oneof![
                Just(String::new()),
                "[\\[\\]{}\"'=,.#\\\\\n -~]{1,3}",
                Just("\"".to_string()),
                Just("0".repeat(30)),
                Just("-1".to_string()),
                Just("\u{fffd}é\u{1F600}".to_string()),
            ],
            0usize..4,
        ),
        1..6,
    );
    edits.prop_map(move |edits| {
        let mut s = base.clone();
        for (at, insert, delete) in edits {
            let mut at = at.min(s.len());
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + delete).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            s.replace_range(at..end, &insert);
        }
        s
    })
}

fn parse_never_panics(src: &str) {
    let dir = std::env::temp_dir();
    let path = dir.join("cmfleet-prop").join("fleet.toml");
    let result = std::panic::catch_unwind(|| {
        let r = cmfleet::model::inventory::Inventory::parse(&path, src);
        // Errors render (positions inside the text) without panicking either.
        if let Err(e) = &r {
            let _ = e.to_string();
        }
    });
    assert!(result.is_ok(), "the parser panicked on:\n{src:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_inventory_parser_never_panics_on_arbitrary_text(src in "\\PC{0,400}") {
        parse_never_panics(&src);
    }

    #[test]
    fn the_inventory_parser_never_panics_on_mutated_inventories(src in mutated()) {
        parse_never_panics(&src);
    }
}
