//! One machine, one role: no host of the fleet is written twice.
//!
//! A host that is NEW of one relay and OLD of another gets its live mail replaced
//! by step 1's mirror (`rsync --delete`); OLD of two relays gets disabled for both
//! at the first cutover. So two entries that reach the same machine are refused
//! when the inventory is loaded (every command then refuses the fleet), naming both
//! relays and fields.
//!
//! Entries reach the same machine when they share
//! - the ssh destination (`ssh` and port; the name compared as written — names that
//!   resolve to one address are compared by `host::identity`, which also compares
//!   host keys),
//! - or a public address (`ip4`, `ip6`): one address serves one mail system.
//!
//! The one exception is a relay whose mail_domain is an IP address: that address
//! moves from OLD to NEW (no DNS step), so both may name it.

use std::collections::HashMap;

use super::checker::Checker;
use super::model::{MailDomain, Relay};
use super::raw::{RawRelay, Text};

/// Where a host is written: relay index and role.
#[derive(Clone, Copy)]
struct Place {
    relay: usize,
    role: &'static str,
}

impl Place {
    fn field(self, f: &str) -> String {
        format!("relay[{}].{}.{f}", self.relay, self.role)
    }
}

/// Records a problem for every host entry that reaches a machine an earlier entry
/// already reaches. `relays` holds the relays that resolved, with their index.
pub(crate) fn check_roles(raw: &[RawRelay], relays: &[(usize, &Relay)], c: &mut Checker) {
    let mut seen: HashMap<String, (Place, String)> = HashMap::new();
    for &(i, relay) in relays {
        let moving_ip = match &relay.mail_domain {
            MailDomain::Ip(ip) => Some(ip.to_string()),
            MailDomain::Name(_) => None,
        };
        for (role, host, raw_host) in [
            ("old", &relay.old, &raw[i].old),
            ("new", &relay.new, &raw[i].new),
        ] {
            let here = Place { relay: i, role };
            let mut keys: Vec<(String, &Text, &str, String)> = vec![(
                format!("ssh {}:{}", host.ssh.to_ascii_lowercase(), host.port),
                &raw_host.ssh,
                "ssh",
                format!("{:?} (port {})", host.ssh, host.port),
            )];
            keys.push((
                format!("ip {}", host.ip4),
                &raw_host.ip4,
                "ip4",
                format!("{:?}", host.ip4.to_string()),
            ));
            if let (Some(ip6), Some(raw6)) = (host.ip6, raw_host.ip6.as_ref()) {
                keys.push((
                    format!("ip {ip6}"),
                    raw6,
                    "ip6",
                    format!("{:?}", ip6.to_string()),
                ));
            }
            for (key, at, field, shown) in keys {
                let first = match seen.get(&key) {
                    None => {
                        seen.insert(key, (here, field.to_string()));
                        continue;
                    }
                    Some(first) => first,
                };
                let (there, there_field) = (first.0, first.1.as_str());
                let same_relay = there.relay == i;
                if same_relay && field != "ssh" && moving_ip.as_deref() == Some(key_ip(&key)) {
                    continue;
                }
                let message = if same_relay {
                    format!(
                        "{shown} is also {}: old and new are the same machine",
                        there.field(there_field)
                    )
                } else {
                    format!(
                        "{shown} is also {} ({}): one machine cannot be {} of one relay and {} of another",
                        there.field(there_field),
                        raw[there.relay].mail_domain.get_ref(),
                        role_name(there.role),
                        role_name(role),
                    )
                };
                c.problem(at, &here.field(field), message);
            }
        }
    }
}

fn key_ip(key: &str) -> &str {
    key.strip_prefix("ip ").unwrap_or(key)
}

fn role_name(role: &str) -> &'static str {
    if role == "old" {
        "OLD"
    } else {
        "NEW"
    }
}
