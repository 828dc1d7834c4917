//! The inventory a lab writes for itself (format: inventory/README.md), so
//! `cmfleet plan -i DIR/inventory.toml` works right after `lab up`.

use std::fmt::Write;

use super::addr::Side;
use super::state::LabState;

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The inventory text. Paths are relative to the lab directory, where the file lives.
pub fn render(state: &LabState) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `cmfleet lab up`: {} relays on {}.0/24 (relay i: old .2i-1, new .2i).\n",
        state.domains.len(),
        state.subnet
    );
    let _ = writeln!(s, "[fleet]");
    let _ = writeln!(s, "cmdeploy = {}", q("relay/scripts/cmdeploy"));
    let _ = writeln!(s, "ssh_auth_sock = {}\n", q("agent.sock"));
    let _ = writeln!(s, "[defaults]");
    let _ = writeln!(s, "ssh_key = {}", q("id_ed25519"));
    let _ = writeln!(s, "dns = {{ provider = \"none\" }}");
    for (i, domain) in state.domains.iter().enumerate() {
        let host = |side: Side| {
            state
                .hosts
                .iter()
                .find(|h| h.relay == i + 1 && h.side == side)
                .map(|h| h.addr.to_string())
                .unwrap_or_default()
        };
        let (old, new) = (host(Side::Old), host(Side::New));
        let _ = writeln!(s, "\n[[relay]]");
        let _ = writeln!(s, "mail_domain = {}", q(domain));
        let _ = writeln!(
            s,
            "config = {}",
            q(&format!("relays/{domain}/chatmail.ini"))
        );
        let _ = writeln!(s, "old = {{ ssh = {}, ip4 = {} }}", q(&old), q(&old));
        let _ = writeln!(s, "new = {{ ssh = {}, ip4 = {} }}", q(&new), q(&new));
    }
    s
}

/// A relay's chatmail.ini (the stand-in cmdeploy reads only mail_domain).
pub fn chatmail_ini(domain: &str) -> String {
    format!("[params]\n# chatmail relay config (cmfleet lab)\nmail_domain = {domain}\n")
}
