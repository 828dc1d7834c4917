//! The inventory: inheritance, validation errors with positions, `--limit`.

use std::path::{Path, PathBuf};

use cmfleet::model::inventory::{self, DnsProviderKind, Inventory, InventoryError, TransferMode};

/// Writes `toml` as an inventory next to chatmail.ini files for c1..c9.
fn load(toml: &str) -> Result<Inventory, InventoryError> {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 1..=9 {
        let d = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("chatmail.ini"),
            format!("mail_domain = c{i}.example.org\n"),
        )
        .expect("write");
    }
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, toml).expect("write inventory");
    let result = Inventory::load(&path);
    // Keep paths stable in messages: report the file as "fleet.toml".
    result.map_err(|e| match e {
        InventoryError::Invalid { problems } => InventoryError::Invalid {
            problems: problems
                .into_iter()
                .map(|mut p| {
                    p.file = "fleet.toml".into();
                    p
                })
                .collect(),
        },
        other => other,
    })
}

fn errors(toml: &str) -> String {
    match load(toml) {
        Ok(_) => panic!("expected the inventory to be refused:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

const FLEET: &str = "[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\n";

fn relay(i: u32, extra: &str) -> String {
    format!(
        "\n[[relay]]\nmail_domain = \"c{i}.example.org\"\nconfig = \"c{i}/chatmail.ini\"\n\
         old = {{ ssh = \"10.0.0.{i}\", ip4 = \"10.0.0.{i}\" }}\n\
         new = {{ ssh = \"10.0.1.{i}\", ip4 = \"10.0.1.{i}\" }}\n{extra}"
    )
}

#[test]
fn settings_inherit_relay_over_group_over_defaults_over_builtin() {
    let toml = format!(
        "{FLEET}
[defaults]
ssh_port = 2200
transfer = \"staged\"
connect_timeout = \"30s\"
[defaults.dns]
provider = \"rfc2136\"
server = \"192.0.2.53\"
tsig_key_file = \"k.key\"
ttl = 600
[groups.a]
ssh_port = 2201
[groups.a.dns]
ttl = 120
{}{}{}",
        relay(1, "group = \"a\"\nssh_port = 2202\n"),
        relay(2, "group = \"a\"\n"),
        relay(3, "transfer = \"direct\"\n"),
    );
    let inv = load(&toml).expect("valid inventory");
    let [r1, r2, r3] = [&inv.relays[0], &inv.relays[1], &inv.relays[2]];
    assert_eq!((r1.old.port, r2.old.port, r3.old.port), (2202, 2201, 2200));
    assert_eq!(r1.settings.transfer, TransferMode::Staged);
    assert_eq!(r3.settings.transfer, TransferMode::Direct);
    // Nested tables merge key by key: the group sets only the TTL.
    assert_eq!(r2.settings.dns.ttl, 120);
    assert_eq!(r2.settings.dns.provider, DnsProviderKind::Rfc2136);
    assert_eq!(r3.settings.dns.ttl, 600);
    assert_eq!(r3.settings.connect_timeout.as_secs(), 30);
    // Built-in defaults.
    assert_eq!(r3.old.user, "root");
    assert_eq!(r3.settings.retry.attempts, 3);
    assert_eq!(inv.fleet.limits.forks, 20);
    // Relative paths are anchored at the inventory's folder, absolutely.
    assert!(r1.config.is_absolute() && r1.config.ends_with("c1/chatmail.ini"));
}

#[test]
fn syntax_error_names_line_and_column() {
    let msg = errors(&format!("{FLEET}forks = = 3\n"));
    assert!(msg.contains("fleet.toml:3:"), "{msg}");
}

#[test]
fn unknown_key_names_field_line_and_column() {
    let msg = errors(&format!("{FLEET}{}", relay(1, "colour = \"red\"\n")));
    assert!(msg.contains("fleet.toml:"), "{msg}");
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    assert!(msg.contains("relay[0]"), "{msg}");
}

#[test]
fn wrong_type_names_field() {
    let msg = errors(&format!(
        "[fleet]\ncmdeploy = \"x\"\nforks = \"many\"\n{}",
        relay(1, "")
    ));
    assert!(msg.contains("fleet.toml:3:9: fleet.forks:"), "{msg}");
}

#[test]
fn many_problems_are_reported_at_once_with_positions() {
    let bad = "
[[relay]]
mail_domain = \"not a domain\"
config = \"missing/chatmail.ini\"
group = \"nope\"
old = { ssh = \"10.0.0.1\", ip4 = \"10.0.0.256\" }
new = { ssh = \"10.0.0.1\", ip4 = \"10.0.1.1\", ip6 = \"zz::1\" }
transfer = \"carrier-pigeon\"
";
    let msg = errors(&format!("{FLEET}{bad}{}{}", relay(1, ""), relay(1, "")));
    let expected = [
        "fleet.toml:5:15: relay[0].mail_domain: \"not a domain\" is not a valid domain name",
        "fleet.toml:6:10: relay[0].config: chatmail.ini",
        "fleet.toml:7:9: relay[0].group: no group \"nope\" is defined",
        "fleet.toml:8:33: relay[0].old.ip4: \"10.0.0.256\" is not an IPv4 address",
        "fleet.toml:9:51: relay[0].new.ip6: \"zz::1\" is not an IPv6 address",
        "fleet.toml:10:12: relay[0].transfer: \"carrier-pigeon\" is not a transfer mode",
        "relay[2].mail_domain: \"c1.example.org\" is already the mail_domain of relay[1]",
        "relay[2].new.ssh: \"10.0.1.1\" (port 22) is also relay[1].new.ssh (c1.example.org)",
    ];
    for e in expected {
        assert!(msg.contains(e), "missing {e:?} in:\n{msg}");
    }
}

/// chatmail gives a mail_domain that starts with `_` a self-signed certificate: such
/// a relay is accepted; an underscore anywhere else is not a host name.
#[test]
fn a_self_signed_chatmail_domain_with_a_leading_underscore_is_accepted() {
    let ok = format!(
        "{FLEET}{}",
        relay(1, "").replace("\"c1.example.org\"", "\"_c1.example.org\"")
    );
    let inv = load(&ok).expect("a leading underscore");
    assert_eq!(inv.relays[0].name, "_c1.example.org");
    for bad in [
        "\"_.example.org\"",
        "\"c_1.example.org\"",
        "\"__c1.example.org\"",
    ] {
        let msg = errors(&format!(
            "{FLEET}{}",
            relay(1, "").replace("\"c1.example.org\"", bad)
        ));
        assert!(msg.contains("relay[0].mail_domain"), "{bad}: {msg}");
    }
}

/// One machine, one role. relay2's NEW written as relay1's OLD once made step 1's
/// `rsync --delete` replace relay1's live mail with relay2's: refused now, naming
/// both relays and fields, whether the ssh destination or a public address is shared.
#[test]
fn a_machine_in_two_roles_is_refused_naming_both_relays() {
    let two = |extra2: &str| {
        format!(
            "{FLEET}{}\n[[relay]]\nmail_domain = \"c2.example.org\"\nconfig = \"c2/chatmail.ini\"\n{extra2}",
            relay(1, "")
        )
    };
    // NEW of relay2 is OLD of relay1 (by ssh and ip4).
    let msg = errors(&two(
        "old = { ssh = \"10.0.0.2\", ip4 = \"10.0.0.2\" }\nnew = { ssh = \"10.0.0.1\", ip4 = \"10.0.0.1\" }\n",
    ));
    for e in [
        "relay[1].new.ssh: \"10.0.0.1\" (port 22) is also relay[0].old.ssh (c1.example.org): one machine cannot be OLD of one relay and NEW of another",
        "relay[1].new.ip4: \"10.0.0.1\" is also relay[0].old.ip4",
    ] {
        assert!(msg.contains(e), "missing {e:?} in:\n{msg}");
    }
    // Only the public address is shared: a name for the same machine.
    let msg = errors(&two(
        "old = { ssh = \"10.0.0.2\", ip4 = \"10.0.0.2\" }\nnew = { ssh = \"relay1-old.example.net\", ip4 = \"10.0.0.1\" }\n",
    ));
    assert!(
        msg.contains("relay[1].new.ip4: \"10.0.0.1\" is also relay[0].old.ip4 (c1.example.org)"),
        "{msg}"
    );
    // OLD of two relays.
    let msg = errors(&two(
        "old = { ssh = \"10.0.0.1\", ip4 = \"10.0.0.1\" }\nnew = { ssh = \"10.0.1.2\", ip4 = \"10.0.1.2\" }\n",
    ));
    assert!(msg.contains("relay[1].old.ssh"), "{msg}");
    assert!(msg.contains("OLD of one relay and OLD of another"), "{msg}");
    // Within one relay: the same ssh with another ip4, or the same ip4.
    let msg = errors(&two(
        "old = { ssh = \"10.0.0.2\", ip4 = \"10.0.0.2\" }\nnew = { ssh = \"10.0.0.2\", ip4 = \"10.0.1.2\" }\n",
    ));
    assert!(msg.contains("relay[1].new.ssh: \"10.0.0.2\" (port 22) is also relay[1].old.ssh: old and new are the same machine"), "{msg}");
    let msg = errors(&two(
        "old = { ssh = \"10.0.0.2\", ip4 = \"10.0.0.2\" }\nnew = { ssh = \"10.0.1.2\", ip4 = \"10.0.0.2\" }\n",
    ));
    assert!(msg.contains("relay[1].new.ip4"), "{msg}");
    // The same ssh address on another port may be another machine behind a NAT.
    let ok = two(
        "old = { ssh = \"10.0.0.2\", ip4 = \"10.0.0.2\" }\nnew = { ssh = \"10.0.0.2\", port = 2222, ip4 = \"10.0.1.2\" }\n",
    );
    load(&ok).expect("another port is another machine");
}

#[test]
fn dns_provider_requirements_and_bad_values() {
    let msg = errors(&format!(
        "{FLEET}{}",
        relay(
            1,
            "dns = { provider = \"rfc2136\", propagation_timeout = \"soon\" }\n"
        )
    ));
    assert!(
        msg.contains("relay[0].dns.server: the \"rfc2136\" DNS provider needs `server`"),
        "{msg}"
    );
    assert!(
        msg.contains("relay[0].dns.propagation_timeout: \"soon\" is not a duration"),
        "{msg}"
    );
    let msg = errors(&format!("{FLEET}waves = [0, \"150%\"]\n{}", relay(1, "")));
    assert!(msg.contains("fleet.waves: 0 is not valid"), "{msg}");
    assert!(msg.contains("fleet.waves: \"150%\" is not valid"), "{msg}");
}

#[test]
fn hostile_ssh_address_and_user_are_refused() {
    let msg = errors(&format!(
        "{FLEET}{}",
        relay(1, "").replace(
            "ssh = \"10.0.1.1\"",
            "ssh = \"-oProxyCommand=touch /tmp/x\", user = \"r;oot\""
        )
    ));
    assert!(msg.contains("is not an IP address or host name"), "{msg}");
    assert!(msg.contains("\"r;oot\" is not a valid user name"), "{msg}");
}

#[test]
fn empty_fleet_is_refused() {
    let msg = errors(FLEET);
    assert!(msg.contains("no [[relay]] entries"), "{msg}");
}

#[test]
fn ip_mail_domain_is_accepted() {
    let toml = format!(
        "{FLEET}{}",
        relay(1, "").replace("c1.example.org", "192.0.2.7")
    );
    let inv = load(&toml).expect("valid");
    assert_eq!(inv.relays[0].name, "192.0.2.7");
}

fn names(inv: &Inventory, limit: &str) -> Result<Vec<String>, String> {
    inventory::select(inv, Some(limit))
        .map(|rs| rs.iter().map(|r| r.name.clone()).collect())
        .map_err(|e| e.to_string())
}

#[test]
fn limit_by_name_glob_group_file_and_exclusion() {
    let toml = format!(
        "{FLEET}[groups.a]\n[groups.b]\n{}{}{}{}",
        relay(1, "group = \"a\"\n"),
        relay(2, "group = \"a\"\n"),
        relay(3, "group = \"b\"\n"),
        relay(4, ""),
    );
    let inv = load(&toml).expect("valid");
    assert_eq!(names(&inv, "c3.example.org").unwrap(), ["c3.example.org"]);
    assert_eq!(
        names(&inv, "c[12].*").unwrap(),
        ["c1.example.org", "c2.example.org"]
    );
    assert_eq!(
        names(&inv, "a").unwrap(),
        ["c1.example.org", "c2.example.org"]
    );
    assert_eq!(
        names(&inv, "a,!c1.example.org").unwrap(),
        ["c2.example.org"]
    );
    assert_eq!(names(&inv, "!b").unwrap().len(), 3);
    let file = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(file.path(), "c4.example.org\n\n# comment\nc2.example.org\n").expect("write");
    let at = format!("@{}", file.path().display());
    assert_eq!(
        names(&inv, &at).unwrap(),
        ["c2.example.org", "c4.example.org"]
    );
    let err = names(&inv, "c1.example.org,typo.example.org").unwrap_err();
    assert!(
        err.contains("\"typo.example.org\" matches no relay"),
        "{err}"
    );
    let err = names(&inv, "@/nonexistent/failed.txt").unwrap_err();
    assert!(err.contains("cannot read /nonexistent/failed.txt"), "{err}");
}

fn example() -> Inventory {
    Inventory::load(Path::new("inventory/example.toml")).expect("example inventory loads")
}

#[test]
fn example_plan_snapshot() {
    let inv = example();
    let relays = inventory::select(&inv, Some("c1.example.org,c6.example.org,203.0.113.99"))
        .expect("select");
    let text =
        cmfleet::pipeline::plan::render_text(&cmfleet::pipeline::plan::plan(&inv.fleet, &relays));
    let root: PathBuf = std::env::current_dir().expect("cwd");
    let text = text.replace(&root.display().to_string(), "<checkout>");
    insta::assert_snapshot!(text);
}

#[test]
fn example_plan_json_parses_and_has_six_steps_per_relay() {
    let inv = example();
    let relays = inventory::select(&inv, None).expect("select");
    let plan = cmfleet::pipeline::plan::plan(&inv.fleet, &relays);
    let json = serde_json::to_string(&plan).expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("parses");
    let rs = v["relays"].as_array().expect("relays");
    assert_eq!(rs.len(), 10);
    for r in rs {
        assert_eq!(r["steps"].as_array().map(Vec::len), Some(6));
    }
}

/// `disable_old` is inherited like every setting (relay > group > defaults), is the
/// guide's cmdeploy run unless set, and a typo names the key and the choices.
#[test]
fn disable_old_inherits_defaults_to_cmdeploy_and_refuses_typos() {
    use cmfleet::model::inventory::DisableOld;
    let toml = format!(
        "{FLEET}
[groups.fast]
disable_old = \"systemctl\"
{}{}{}",
        relay(1, "group = \"fast\"\n"),
        relay(2, "group = \"fast\"\ndisable_old = \"cmdeploy\"\n"),
        relay(3, ""),
    );
    let inv = load(&toml).expect("valid inventory");
    let ways: Vec<DisableOld> = inv.relays.iter().map(|r| r.settings.disable_old).collect();
    assert_eq!(
        ways,
        [
            DisableOld::Systemctl,
            DisableOld::Cmdeploy,
            DisableOld::Cmdeploy
        ]
    );
    let defaults = format!(
        "{FLEET}[defaults]\ndisable_old = \"systemctl\"\n{}",
        relay(1, "")
    );
    let inv = load(&defaults).expect("valid inventory");
    assert_eq!(inv.relays[0].settings.disable_old, DisableOld::Systemctl);

    let msg = errors(&format!(
        "{FLEET}{}",
        relay(1, "disable_old = \"systemd\"\n")
    ));
    assert!(msg.contains("relay[0].disable_old"), "{msg}");
    assert!(msg.contains("\"cmdeploy\" or \"systemctl\""), "{msg}");
    assert!(msg.contains("fleet.toml:"), "{msg}");
}

/// The plan says which way step 3 runs: the systemctl command on old, not cmdeploy.
#[test]
fn the_plan_shows_how_step_3_disables_old() {
    let inv = example();
    let relays = inventory::select(&inv, Some("c1.example.org,c6.example.org")).expect("select");
    let plan = cmfleet::pipeline::plan::plan(&inv.fleet, &relays);
    // What disables OLD, after the example's pre_cutover hook.
    let step3 = |i: usize| -> Vec<String> {
        plan.relays[i].steps[2]
            .actions
            .iter()
            .map(|a| a.command.clone())
            .filter(|c| !c.contains("# the pre_cutover hook"))
            .collect()
    };
    assert!(step3(0)[0].contains("--disable-mail"), "{:?}", step3(0));
    assert_eq!(
        step3(1)[0],
        "systemctl disable --now dovecot.service postfix.service"
    );
    assert!(step3(1).iter().all(|c| !c.contains("cmdeploy")));
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["relays"][1]["disable_old"], "systemctl");
}

/// `skip_dns_check` adds `--skip-dns-check` to every cmdeploy run of the relays that
/// inherit it, and `[fleet] cmdeploy_home` is the `HOME` every run gets, shown in
/// the plan (what runs is what the plan prints).
#[test]
fn the_plan_shows_skip_dns_check_and_cmdeploy_home() {
    let toml = format!(
        "[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\ncmdeploy_home = \"lab home\"\ncmdeploy_env = {{ LAB_BINARIES = \"/var/cache/x y\", API_TOKEN = \"tok3n-value-42\" }}\n{}{}",
        relay(1, "skip_dns_check = true\n"),
        relay(2, "")
    );
    let inv = load(&toml).expect("inventory");
    assert!(inv.relays[0].settings.skip_dns_check);
    assert!(!inv.relays[1].settings.skip_dns_check);
    let relays = inventory::select(&inv, None).expect("select");
    let plan = cmfleet::pipeline::plan::plan(&inv.fleet, &relays);
    let cmdeploy_runs = |i: usize| -> Vec<String> {
        plan.relays[i]
            .steps
            .iter()
            .flat_map(|s| s.actions.iter().map(|a| a.command.clone()))
            .filter(|c| c.contains("scripts/cmdeploy"))
            .collect()
    };
    let (one, two) = (cmdeploy_runs(0), cmdeploy_runs(1));
    assert_eq!(one.len(), 3, "{one:?}");
    for c in &one {
        assert!(c.contains(" --skip-dns-check "), "{c}");
        assert!(c.contains("HOME=") && c.contains("lab home'"), "{c}");
        assert!(c.contains("LAB_BINARIES='/var/cache/x y'"), "{c}");
    }
    // A credential-named variable's value is a secret: masked wherever it is shown.
    let shown = cmfleet::infra::redact::clean(&one[0]).into_owned();
    assert!(!shown.contains("tok3n-value-42"), "{shown}");
    // What cmfleet sets itself cannot be overridden.
    let msg = errors(&format!(
        "[fleet]\ncmdeploy = \"relay/scripts/cmdeploy\"\ncmdeploy_env = {{ CMDEPLOY_STAGES = \"activate\", \"bad name\" = \"x\" }}\n{}",
        relay(1, "")
    ));
    assert!(msg.contains("fleet.cmdeploy_env.CMDEPLOY_STAGES"), "{msg}");
    assert!(
        msg.contains("\"bad name\" is not an environment variable name"),
        "{msg}"
    );
    assert!(
        two.iter().all(|c| !c.contains("--skip-dns-check")),
        "{two:?}"
    );
}

/// The plan shows the operator's hooks where they run, their credentials masked:
/// `pre_cutover` first in step 3 (before cmdeploy or systemctl touch OLD),
/// `post_cutover` last in step 6 (after the activation), in text and JSON.
#[test]
fn the_plan_shows_the_hooks_where_they_run_masked() {
    use cmfleet::pipeline::plan::{self, Site};
    let toml = format!(
        "{FLEET}[defaults]\nhooks = {{ pre_cutover = \"curl -fsS -H 'Authorization: Bearer PLANBEARER123' https://status.example/m\", post_cutover = \"echo PASSWORD=PLANPASS456; exit 0\" }}\n{}{}",
        relay(1, ""),
        relay(2, "disable_old = \"systemctl\"\n"),
    );
    let inv = load(&toml).expect("valid inventory");
    let relays = inventory::select(&inv, None).expect("select");
    let plan = plan::plan(&inv.fleet, &relays);
    for r in &plan.relays {
        let step3 = &r.steps[2].actions;
        assert_eq!(step3[0].site, Site::Controller);
        assert_eq!(
            step3[0].command,
            "curl -fsS -H 'Authorization: Bearer [redacted]' https://status.example/m   \
             # the pre_cutover hook (sh -c), the relay's facts in CMFLEET_* variables"
        );
        assert!(
            step3[1].command.contains("--disable-mail")
                || step3[1].command.starts_with("systemctl"),
            "{step3:?}"
        );
        let step6 = &r.steps[5].actions;
        assert!(
            step6[0].command.contains("CMDEPLOY_STAGES=activate"),
            "{step6:?}"
        );
        assert_eq!(
            step6.last().map(|a| a.command.as_str()),
            Some(
                "echo PASSWORD=[redacted]; exit 0   \
                 # the post_cutover hook (sh -c), the relay's facts in CMFLEET_* variables"
            )
        );
    }
    let text = plan::render_text(&plan);
    let json = serde_json::to_string(&plan).expect("json");
    for out in [&text, &json] {
        assert!(
            !out.contains("PLANBEARER123") && !out.contains("PLANPASS456"),
            "{out}"
        );
        assert!(
            out.contains("$ echo PASSWORD=[redacted]; exit 0")
                || out.contains("\"echo PASSWORD=[redacted]; exit 0"),
            "{out}"
        );
    }
}
