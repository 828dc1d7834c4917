//! The address facts step 5 works with, and the record sets seen on a server.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The addresses of one site (old or new) of a relay, as the inventory gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The A record: every relay has an IPv4 address.
    pub ip4: Ipv4Addr,
    /// The AAAA record, if the site has IPv6; `None` means "no AAAA rrset".
    pub ip6: Option<Ipv6Addr>,
}

impl Addrs {
    /// The record sets these addresses stand for.
    pub fn to_rrsets(&self) -> Rrsets {
        Rrsets {
            a: vec![self.ip4],
            aaaa: self.ip6.into_iter().collect(),
        }
    }

    /// The zone-file lines that publish these addresses for `domain`.
    pub fn zone_lines(&self, domain: &str, ttl: u32) -> Vec<String> {
        let owner = fqdn(domain);
        let mut lines = vec![format!("{owner} {ttl} IN A {}", self.ip4)];
        if let Some(ip6) = self.ip6 {
            lines.push(format!("{owner} {ttl} IN AAAA {ip6}"));
        }
        lines
    }
}

impl fmt::Display for Addrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_rrsets().fmt(f)
    }
}

/// The A and AAAA rrsets of one name as a server serves them (sorted, so two views
/// compare equal when the sets are equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rrsets {
    /// The A records, sorted.
    pub a: Vec<Ipv4Addr>,
    /// The AAAA records, sorted.
    pub aaaa: Vec<Ipv6Addr>,
}

impl Rrsets {
    /// Sort both sets so comparisons ignore the order the server chose.
    pub fn normalized(mut self) -> Self {
        self.a.sort();
        self.a.dedup();
        self.aaaa.sort();
        self.aaaa.dedup();
        self
    }

    /// Whether these are exactly the given addresses (no more, no less).
    pub fn matches(&self, addrs: &Addrs) -> bool {
        self.clone().normalized() == addrs.to_rrsets()
    }
}

impl fmt::Display for Rrsets {
    /// "A 192.0.2.1, AAAA 2001:db8::1" or "no A, no AAAA".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(kind: &str, items: &[T]) -> String {
            if items.is_empty() {
                format!("no {kind}")
            } else {
                let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                format!("{kind} {}", items.join(" "))
            }
        }
        write!(f, "{}, {}", list("A", &self.a), list("AAAA", &self.aaaa))
    }
}

/// `domain` with exactly one trailing dot, as zone files want owner names.
pub(crate) fn fqdn(domain: &str) -> String {
    format!("{}.", domain.trim_end_matches('.'))
}
