//! One machine, one role, once names are resolved and host keys are known.
//!
//! The inventory itself refuses a host written twice (`model::inventory::roles`
//! compares what is written). Two entries can still reach one machine: two names
//! for one address (`relay1-old.example.net` and `203.0.113.7`), or two addresses of
//! one machine, which only its host key gives away. So before anything runs,
//! `migrate`, `check` and `plan` compare
//! - the addresses each entry's `ssh` resolves to (with its port), and
//! - the host keys cmfleet's known_hosts holds for each entry (learned at the first
//!   connection; `check` learns them all).
//!
//! A name that does not resolve is no finding here (`check` reports reachability).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;

use crate::model::inventory::{Host, Inventory};

/// Two inventory entries that reach one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameMachine {
    /// `relay[I].ROLE` (mail_domain) of the entry written first.
    pub first: String,
    /// The same of the later entry.
    pub second: String,
    /// What they share: "both resolve to 203.0.113.7 port 22", "the same host key".
    pub shared: String,
}

impl std::fmt::Display for SameMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} and {} are one machine ({}): one machine cannot hold two roles",
            self.second, self.first, self.shared
        )
    }
}

/// A fleet in which some machine holds two roles: every pair, one a line.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.0))]
pub struct SameMachines(pub Vec<SameMachine>);

fn render(found: &[SameMachine]) -> String {
    let lines: Vec<String> = found.iter().map(|s| format!("  {s}")).collect();
    format!(
        "the inventory names one machine twice (nothing was changed):\n{}",
        lines.join("\n")
    )
}

/// Refuses a fleet in which entries reach one machine (see [`same_machines`]),
/// with cmfleet's known_hosts in `inv`'s state directory.
pub fn refuse_same_machines(inv: &Inventory) -> Result<(), SameMachines> {
    let found = same_machines(inv, &inv.fleet.state_dir.join("known_hosts"));
    if found.is_empty() {
        Ok(())
    } else {
        Err(SameMachines(found))
    }
}

/// Every pair of entries of `inv` that reach one machine, by resolved address or by
/// the host keys in `known_hosts` (cmfleet's own).
pub fn same_machines(inv: &Inventory, known_hosts: &Path) -> Vec<SameMachine> {
    let keys = read_known_hosts(known_hosts);
    let mut by_addr: HashMap<(IpAddr, u16), String> = HashMap::new();
    let mut by_key: HashMap<String, String> = HashMap::new();
    let mut found = Vec::new();
    for (i, relay) in inv.relays.iter().enumerate() {
        for (role, host) in [("old", &relay.old), ("new", &relay.new)] {
            let here = format!("relay[{i}].{role} ({})", relay.name);
            for addr in resolve(host) {
                match by_addr.get(&(addr, host.port)) {
                    Some(first) if *first != here => found.push(SameMachine {
                        first: first.clone(),
                        second: here.clone(),
                        shared: format!("both reach {addr} port {}", host.port),
                    }),
                    Some(_) => {}
                    None => {
                        by_addr.insert((addr, host.port), here.clone());
                    }
                }
            }
            for key in keys.get(&pattern(host)).into_iter().flatten() {
                match by_key.get(key) {
                    Some(first) if *first != here => found.push(SameMachine {
                        first: first.clone(),
                        second: here.clone(),
                        shared: "the same host key in cmfleet's known_hosts; if they really are two machines, they share a host key, which must be regenerated on one of them".into(),
                    }),
                    Some(_) => {}
                    None => {
                        by_key.insert(key.clone(), here.clone());
                    }
                }
            }
        }
    }
    found.dedup_by(|a, b| a.first == b.first && a.second == b.second);
    found
}

/// The addresses `host.ssh` resolves to (none when it does not).
fn resolve(host: &Host) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = (host.ssh.as_str(), host.port)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// How known_hosts names `host` (OpenSSH's form: `[name]:port` off port 22).
fn pattern(host: &Host) -> String {
    if host.port == 22 {
        host.ssh.clone()
    } else {
        format!("[{}]:{}", host.ssh, host.port)
    }
}

/// known_hosts as host pattern -> key blobs (`type base64`). Hashed or multi-name
/// lines are read name by name; markers (`@revoked`) and comments are skipped.
fn read_known_hosts(path: &Path) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(names), Some(kind), Some(blob)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if names.starts_with('#') || names.starts_with('@') {
            continue;
        }
        for name in names.split(',') {
            out.entry(name.to_string())
                .or_default()
                .push(format!("{kind} {blob}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(hosts: [(&str, &str); 4]) -> Inventory {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = "[fleet]\ncmdeploy = \"x\"\n".to_string();
        for (i, pair) in hosts.chunks(2).enumerate() {
            let ini = dir.path().join(format!("c{i}.ini"));
            std::fs::write(&ini, format!("mail_domain = c{i}.example.org\n")).expect("ini");
            toml.push_str(&format!(
                "[[relay]]\nmail_domain = \"c{i}.example.org\"\nconfig = {:?}\n\
                 old = {{ ssh = {:?}, ip4 = {:?} }}\nnew = {{ ssh = {:?}, ip4 = {:?} }}\n",
                ini.display().to_string(),
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            ));
        }
        Inventory::parse(&dir.path().join("fleet.toml"), &toml).expect("inventory")
    }

    /// `localhost` and `127.0.0.1` are one machine (the system resolver answers from
    /// /etc/hosts: nothing leaves the machine).
    #[test]
    fn two_names_of_one_address_are_one_machine() {
        let inv = inventory([
            ("127.0.0.1", "192.0.2.1"),
            ("127.0.0.2", "192.0.2.2"),
            ("127.0.0.3", "192.0.2.3"),
            ("localhost", "192.0.2.4"),
        ]);
        let found = same_machines(&inv, Path::new("/nonexistent"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].first, "relay[0].old (c0.example.org)");
        assert_eq!(found[0].second, "relay[1].new (c1.example.org)");
        assert!(found[0]
            .to_string()
            .contains("both reach 127.0.0.1 port 22"));
    }

    /// Two addresses with the same host key are one machine.
    #[test]
    fn one_host_key_under_two_addresses_is_one_machine() {
        let inv = inventory([
            ("192.0.2.11", "192.0.2.1"),
            ("192.0.2.12", "192.0.2.2"),
            ("192.0.2.13", "192.0.2.3"),
            ("192.0.2.14", "192.0.2.4"),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let known = dir.path().join("known_hosts");
        std::fs::write(
            &known,
            "192.0.2.11 ssh-ed25519 AAAAone\n192.0.2.12 ssh-ed25519 AAAAtwo\n\
             192.0.2.13 ssh-ed25519 AAAAthree\n192.0.2.14 ssh-ed25519 AAAAtwo\n",
        )
        .expect("write");
        let found = same_machines(&inv, &known);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].first, "relay[0].new (c0.example.org)");
        assert_eq!(found[0].second, "relay[1].new (c1.example.org)");
        assert!(found[0].shared.contains("host key"));
    }
}
