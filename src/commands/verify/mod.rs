//! `cmfleet verify`: after a migration, is each relay really served by NEW?
//!
//! Per relay: the authoritative DNS serves NEW's addresses, NEW accepts TCP on the
//! mail ports, OLD no longer does, and NEW holds every message and account OLD has.
//! After step 3 OLD is frozen, so OLD's mailbox tree is the reference; NEW may have
//! more (mail delivered since step 6) and may have renamed messages (a client read
//! or flagged them), so messages are compared by mailbox and maildir unique name.

use std::net::Ipv4Addr;
use std::time::Duration;

mod clients;
mod mailboxes;

pub use clients::{compare_uids, queue_fates, queue_script, QueueFate, UidsDiff};
pub use mailboxes::{merge, ClientView, MailboxDiff, Named, Verdict};

use super::check::CheckError;
use crate::host::inspect::{for_each_relay, ssh_pool, Finding, RelayFindings};
use crate::infra::dns::Dns;
use crate::model::inventory::{DnsProviderKind, Host, Inventory, MailDomain, Relay};

/// The ports a chatmail relay serves mail on: SMTP, SMTPS (submission), IMAPS.
pub const MAIL_PORTS: [u16; 3] = [25, 465, 993];
/// How long verify waits for authoritative servers to agree.
const DNS_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Verifies every selected relay, concurrently.
pub async fn verify(inv: &Inventory, relays: &[&Relay]) -> Result<Vec<RelayFindings>, CheckError> {
    let ssh = ssh_pool(inv)?;
    let results = for_each_relay(relays, inv.fleet.limits.forks, |r| {
        let ssh = &ssh;
        async move {
            let (dns, new, old, data) = tokio::join!(
                dns_finding(r),
                ports_finding(&r.new, true),
                ports_finding(&r.old, false),
                mailboxes::findings(ssh, r, &inv.fleet.state_dir),
            );
            let mut findings = vec![dns, new, old];
            findings.extend(data);
            RelayFindings::new(&r.name, findings)
        }
    })
    .await;
    ssh.close().await;
    Ok(results)
}

async fn dns_finding(relay: &Relay) -> Finding {
    const CHECK: &str = "dns";
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        return Finding::pass(
            CHECK,
            format!("skipped: mail_domain is the address {ip}; it must have moved to NEW itself"),
        );
    }
    if relay.settings.dns.provider == DnsProviderKind::None {
        return Finding::pass(
            CHECK,
            "skipped: dns provider \"none\" (DNS is handled outside cmfleet)",
        );
    }
    let dns = match Dns::from_settings(&relay.settings.dns) {
        Ok(d) => d,
        Err(e) => return Finding::fail(CHECK, e.to_string()),
    };
    let new = relay.new.addrs();
    match dns
        .wait_propagated(&relay.name, &new, DNS_WAIT, |_, _| {})
        .await
    {
        Ok(p) => Finding::pass(
            CHECK,
            format!(
                "{} authoritative server(s) serve NEW ({new})",
                p.servers.len()
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("the authoritative servers do not all serve NEW ({new}): {e}"),
        ),
    }
}

async fn accepts(ip: Ipv4Addr, port: u16) -> bool {
    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ip, port)))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// NEW must accept on every mail port; OLD on none (mail delivered there is lost to NEW).
async fn ports_finding(host: &Host, want_open: bool) -> Finding {
    let open = futures::future::join_all(MAIL_PORTS.map(|p| accepts(host.ip4, p))).await;
    let wrong: Vec<String> = MAIL_PORTS
        .iter()
        .zip(open)
        .filter(|(_, o)| *o != want_open)
        .map(|(p, _)| p.to_string())
        .collect();
    let ports = MAIL_PORTS.map(|p| p.to_string()).join(", ");
    match (want_open, wrong.is_empty()) {
        (true, true) => Finding::pass("new listens", format!("NEW {} accepts TCP on {ports}", host.ip4)),
        (true, false) => Finding::fail(
            "new listens",
            format!("NEW {} does not accept TCP on port {} (hint: is mail active on NEW? re-run step 6 with `cmfleet migrate --from-step 6`)", host.ip4, wrong.join(", ")),
        ),
        (false, true) => Finding::pass("old silent", format!("OLD {} no longer accepts TCP on {ports}", host.ip4)),
        (false, false) => Finding::fail(
            "old silent",
            format!("OLD {} still accepts TCP on port {}: mail delivered there never reaches NEW (hint: disable mail on OLD)", host.ip4, wrong.join(", ")),
        ),
    }
}
