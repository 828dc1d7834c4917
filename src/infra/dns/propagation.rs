//! Waiting until every authoritative nameserver of the zone serves the new records.
//!
//! The nameservers come from the zone's NS rrset (asked at the primary, or via the
//! system resolver when no primary is configured); each name is mapped to an
//! address by the override map, the glue in the NS answer, or the system resolver.
//! Each server is then queried directly, without recursion, so no cache can lie.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::time::Instant;

use super::error::DnsError;
use super::query::{self, decode, Ctx};
use super::records::Addrs;

/// Bound on each query while polling (a lagging server must not stall the round).
const POLL_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest pause between polling rounds.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// One authoritative nameserver of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameServer {
    /// Its name in the NS rrset (without the trailing dot).
    pub name: String,
    /// Where we query it.
    pub addr: SocketAddr,
}

/// What a successful wait saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagated {
    /// The servers that all serve the new records.
    pub servers: Vec<NameServer>,
    /// The primary's serial they all reached, if a primary was known.
    pub serial: Option<u32>,
}

/// Where to look things up.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// The zone's primary, if configured.
    pub primary: Option<SocketAddr>,
    /// The zone, if configured (else the parent of each domain).
    pub zone: Option<Name>,
    /// NS name (lowercase, no trailing dot) -> address override.
    pub overrides: BTreeMap<String, SocketAddr>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Lookup {
    pub fn new(
        primary: Option<SocketAddr>,
        zone: Option<Name>,
        overrides: &BTreeMap<String, SocketAddr>,
    ) -> Self {
        Lookup {
            primary,
            zone,
            overrides: overrides.iter().map(|(k, v)| (key(k), *v)).collect(),
        }
    }

    /// The zone's authoritative nameservers and their addresses.
    pub async fn nameservers(
        &self,
        domain: &str,
        zone: &Name,
    ) -> Result<Vec<NameServer>, DnsError> {
        let answer = match self.primary {
            Some(server) => {
                let ctx = Ctx {
                    domain,
                    server,
                    timeout: POLL_QUERY_TIMEOUT,
                };
                query::query(ctx, zone, RecordType::NS).await?
            }
            // No primary but an explicit list: that list is the truth.
            None if !self.overrides.is_empty() => {
                return Ok(self
                    .overrides
                    .iter()
                    .map(|(name, addr)| NameServer {
                        name: name.clone(),
                        addr: *addr,
                    })
                    .collect())
            }
            None => system_query(domain, zone, RecordType::NS).await?,
        };
        let ns_names: Vec<Name> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) if &r.name == zone => Some(ns.0.clone()),
                _ => None,
            })
            .collect();
        if ns_names.is_empty() {
            return Err(DnsError::Config(format!(
                "zone {zone} of {domain} has no NS records"
            )));
        }
        let mut servers = Vec::new();
        for ns in ns_names {
            let name = key(&ns.to_ascii());
            let addr = match self.overrides.get(&name) {
                Some(addr) => *addr,
                None => match glue(&answer, &ns) {
                    Some(ip) => SocketAddr::new(ip, 53),
                    None => resolve(domain, &name).await?,
                },
            };
            if !servers.iter().any(|s: &NameServer| s.addr == addr) {
                servers.push(NameServer { name, addr });
            }
        }
        Ok(servers)
    }

    /// Poll every nameserver until all serve exactly `expected` (and reached the
    /// primary's current serial), calling `progress(ok, total)` whenever the count
    /// changes.
    pub async fn wait(
        &self,
        domain: &str,
        expected: &Addrs,
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Propagated, DnsError> {
        let deadline = Instant::now() + timeout;
        let name = query::parse_name(domain)?;
        let zone = super::rfc2136::zone_for(self.zone.as_ref(), &name)?;
        // The serial every server must reach: the primary's, read now, after the change.
        let serial = match self.primary {
            Some(server) => {
                let ctx = Ctx {
                    domain,
                    server,
                    timeout: POLL_QUERY_TIMEOUT,
                };
                query::soa_serial(ctx, &zone).await?
            }
            None => None,
        };
        let servers = self.nameservers(domain, &zone).await?;
        let total = servers.len();
        let mut last_ok = None;
        let mut pause = FIRST_PAUSE;
        loop {
            let checks = futures::future::join_all(
                servers
                    .iter()
                    .map(|s| check(domain, &name, &zone, s, expected, serial)),
            )
            .await;
            let lagging: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
            let ok = total - lagging.len();
            if last_ok != Some(ok) {
                progress(ok, total);
                last_ok = Some(ok);
            }
            if lagging.is_empty() {
                return Ok(Propagated { servers, serial });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DnsError::PropagationTimeout {
                    domain: domain.to_string(),
                    timeout,
                    total,
                    lagging,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Whether one server is up to date; the error is what it lags on, in words.
async fn check(
    domain: &str,
    name: &Name,
    zone: &Name,
    server: &NameServer,
    expected: &Addrs,
    serial: Option<u32>,
) -> Result<(), String> {
    let who = format!("{} ({})", server.name, server.addr);
    let ctx = Ctx {
        domain,
        server: server.addr,
        timeout: POLL_QUERY_TIMEOUT,
    };
    let (found, _, authoritative) = query::rrsets(ctx, name)
        .await
        .map_err(|e| format!("{who}: {e}"))?;
    if !authoritative {
        return Err(format!("{who}: not authoritative for {zone}"));
    }
    if !found.matches(expected) {
        return Err(format!("{who}: serves {found}, want {expected}"));
    }
    if let Some(want) = serial {
        let have = query::soa_serial(ctx, zone)
            .await
            .map_err(|e| format!("{who}: {e}"))?;
        match have {
            Some(have) if serial_ge(have, want) => {}
            Some(have) => return Err(format!("{who}: serial {have}, primary has {want}")),
            None => return Err(format!("{who}: no SOA for {zone}")),
        }
    }
    Ok(())
}

/// `a >= b` in RFC 1982 serial number arithmetic (serials wrap around).
fn serial_ge(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}

/// An address for `ns` from the additional section of the NS answer.
fn glue(answer: &Message, ns: &Name) -> Option<IpAddr> {
    answer.additionals.iter().find_map(|r| match &r.data {
        RData::A(a) if &r.name == ns => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) if &r.name == ns => Some(IpAddr::V6(a.0)),
        _ => None,
    })
}

/// The system resolver's address for a nameserver name.
async fn resolve(domain: &str, ns: &str) -> Result<SocketAddr, DnsError> {
    let mut addrs = tokio::net::lookup_host((ns, 53)).await.map_err(|e| {
        DnsError::Config(format!("cannot resolve nameserver {ns} of {domain}: {e}"))
    })?;
    addrs
        .next()
        .ok_or_else(|| DnsError::Config(format!("nameserver {ns} of {domain} has no address")))
}

/// A recursive query through the first resolver of /etc/resolv.conf, for setups
/// without a configured primary.
async fn system_query(domain: &str, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
    let conf = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
    let resolver = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .ok_or_else(|| {
            DnsError::Config(format!(
                "no `server` configured for {domain} and no resolver in /etc/resolv.conf to find the zone's nameservers"
            ))
        })?;
    let ctx = Ctx {
        domain,
        server: SocketAddr::new(resolver, 53),
        timeout: POLL_QUERY_TIMEOUT,
    };
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    let mut q = Query::query(name.clone(), rtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.metadata.recursion_desired = true;
    let bytes = msg
        .to_vec()
        .map_err(|e| ctx.protocol(format!("cannot encode query: {e}")))?;
    // TCP: a full NS answer with glue may not fit a plain UDP datagram.
    let answer = decode(ctx, &query::exchange_tcp(ctx, &bytes).await?)?;
    if answer.metadata.id != msg.metadata.id {
        return Err(ctx.protocol("answer does not match the query"));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::serial_ge;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_ge(5, 5));
        assert!(serial_ge(6, 5));
        assert!(!serial_ge(5, 6));
        assert!(serial_ge(1, u32::MAX));
        assert!(!serial_ge(u32::MAX, 1));
    }
}
