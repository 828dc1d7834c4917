//! Every example inventory in `examples/inventories/` loads and renders its plan, and
//! each shows the case it is there for.

use std::path::{Path, PathBuf};

use cmfleet::model::inventory::{self, DnsProviderKind, Inventory, MailDomain, TransferMode};
use cmfleet::pipeline::plan;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventories");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/inventories exists")
        .filter_map(|e| {
            let p = e.ok()?.path().join("fleet.toml");
            p.is_file().then_some(p)
        })
        .collect();
    found.sort();
    found
}

fn load(name: &str) -> (Inventory, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/inventories")
        .join(name)
        .join("fleet.toml");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let relays = inventory::select(&inv, None).expect("select all");
    let text = plan::render_text(&plan::plan(&inv.fleet, &relays));
    (inv, text)
}

#[test]
fn every_example_loads_and_plans_six_steps_per_relay() {
    let all = examples();
    assert!(
        all.len() >= 4,
        "expected the four example inventories, found {all:?}"
    );
    for path in all {
        let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let relays = inventory::select(&inv, None).expect("select all");
        let plan = plan::plan(&inv.fleet, &relays);
        assert_eq!(plan.relays.len(), inv.relays.len(), "{}", path.display());
        for r in &plan.relays {
            assert_eq!(r.steps.len(), 6, "{}: {}", path.display(), r.relay);
            assert!(r.steps.iter().all(|s| !s.actions.is_empty()));
        }
        // The JSON plan renders too (what scripts read).
        serde_json::to_string(&plan).expect("plan as JSON");
    }
}

#[test]
fn datacenter_move_uses_groups_waves_and_rfc2136() {
    let (inv, text) = load("datacenter-move");
    assert_eq!(inv.groups.len(), 2);
    assert_eq!(inv.groups["fra1-b"].max_transfers, Some(2));
    assert_eq!(inv.fleet.waves.len(), 3);
    assert!(inv.relays.iter().all(|r| r.group.is_some()));
    assert!(inv
        .relays
        .iter()
        .all(|r| r.settings.dns.provider == DnsProviderKind::Rfc2136));
    // The group's connect_timeout overrides the default for its relays only.
    let c1 = &inv.relays[0];
    let c4 = inv
        .relays
        .iter()
        .find(|r| r.name == "c4.chat.example.net")
        .unwrap();
    assert_eq!(c1.settings.connect_timeout.as_secs(), 15);
    assert_eq!(c4.settings.connect_timeout.as_secs(), 30);
    let c6 = inv
        .relays
        .iter()
        .find(|r| r.name == "c6.chat.example.net")
        .unwrap();
    assert_eq!(c6.old.port, 2222);
    assert!(text.contains("c6.chat.example.net"));
}

#[test]
fn ipv4_only_relays_have_no_dns_step() {
    let (inv, text) = load("ipv4-only");
    for r in &inv.relays {
        assert!(matches!(r.mail_domain, MailDomain::Ip(_)), "{}", r.name);
        assert_eq!(r.settings.dns.provider, DnsProviderKind::None);
    }
    assert_eq!(
        text.matches("that address itself must move").count(),
        inv.relays.len(),
        "{text}"
    );
}

#[test]
fn staged_transfers_go_through_the_controller() {
    let (inv, text) = load("staged");
    let m1 = &inv.relays[0];
    assert_eq!(m1.settings.transfer, TransferMode::Staged);
    assert_eq!(inv.relays[1].settings.transfer, TransferMode::Direct);
    assert_eq!(inv.fleet.limits.staging_budget, 120 << 30);
    let staging = inv.fleet.state_dir.join("staging").join("m1.example.com");
    assert!(text.contains(&staging.display().to_string()), "{text}");
    assert!(text.contains("(staged: "));
    assert!(text.contains("(direct: "));
}

#[test]
fn command_hook_runs_the_script_next_to_the_inventory() {
    let (inv, text) = load("dns-command");
    let hook = inv.relays[0]
        .settings
        .dns
        .command
        .clone()
        .expect("a command");
    assert!(hook.is_absolute() && hook.ends_with("dns-command/dns-hook.sh"));
    assert!(hook.is_file(), "{} is shipped", hook.display());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&hook).unwrap().permissions());
    assert!(mode & 0o111 != 0, "the hook is executable");
    assert!(text.contains(&format!("run {}", hook.display())), "{text}");
    // One relay overrides the provider.
    assert_eq!(inv.relays[2].settings.dns.provider, DnsProviderKind::Manual);
    assert!(text.contains("set by hand: relay-c.example.org."));
}
