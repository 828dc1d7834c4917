//! DNS: step 5 (switch A/AAAA), propagation wait, TTL management.
//!
//! Build one [`Dns`] per relay from its (inherited) [`DnsSettings`], then:
//! [`Dns::switch`] and [`Dns::wait_propagated`] in step 5, [`Dns::current_ttl`] and
//! [`Dns::set_ttl`] for `cmfleet dns lower-ttl/restore-ttl`, [`Dns::rollback`] to
//! point a relay back at its old site. Callers that change DNS for many relays
//! share one [`DnsGate`] (in-flight and rate bound).
//!
//! ```ignore
//! let dns = Dns::from_settings(&settings)?;            // per relay; reads the TSIG key
//! let outcome = gate.run(dns.switch(&req)).await?;     // Switched / AlreadySwitched / Manual{..} / NotApplicable{..}
//! if let SwitchOutcome::Manual { set, remove } = &outcome { /* reporter prints the lines */ }
//! dns.wait_propagated(&req.domain, &req.new, dns.propagation_timeout(), |ok, n| {
//!     /* event: "ok of n nameservers" */
//! }).await?;
//! // Errors: `e.is_transient()` decides whether the scheduler retries.
//! ```
//!
//! Step 5 is safe to re-run: the update's prerequisites make a second switch a
//! no-op (`AlreadySwitched`), and a record somebody else changed is reported
//! (`UnexpectedRecords`), never overwritten.

mod command;
mod error;
mod gate;
mod propagation;
mod query;
mod records;
mod rfc2136;
mod tsig;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use command::{CommandProvider, DnsAction, EXIT_TEMPFAIL};
pub use error::DnsError;
pub use gate::{DnsGate, GatePermit, DEFAULT_MAX_IN_FLIGHT};
pub use propagation::{NameServer, Propagated};
pub use records::{Addrs, Rrsets};
pub use rfc2136::{Rfc2136, DEFAULT_IO_TIMEOUT};
pub use tsig::{TsigAlg, TsigKey};

use propagation::Lookup;

/// TTL of the new records unless configured.
pub const DEFAULT_TTL: u32 = 300;
/// Propagation timeout unless configured.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(600);

/// Which provider changes a relay's records (inventory `dns.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// RFC 2136 dynamic update with TSIG to the zone's primary.
    Rfc2136,
    /// An operator program with the relay's facts in its environment.
    Command,
    /// The operator changes the records; cmfleet prints them and waits.
    #[default]
    Manual,
    /// mail_domain is an IP address: there is nothing to change in DNS.
    None,
}

/// The DNS settings of one relay, after inheritance (inventory `[.. .dns]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DnsSettings {
    /// Which provider to use.
    pub provider: ProviderKind,
    /// The zone's primary (rfc2136: where updates go; others: where TTLs and the
    /// NS rrset are read, if given).
    pub server: Option<SocketAddr>,
    /// The zone; default: the parent of mail_domain.
    pub zone: Option<String>,
    /// rfc2136: BIND key file (tsig-keygen output).
    pub tsig_key_file: Option<PathBuf>,
    /// command: the program, run without arguments and without a shell.
    pub command: Option<PathBuf>,
    /// TTL of the new records.
    pub ttl: u32,
    /// Bound on the propagation wait (and on one run of the command).
    pub propagation_timeout: Duration,
    /// NS name -> address:port overrides (tests, split horizon).
    pub nameservers: BTreeMap<String, SocketAddr>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            provider: ProviderKind::default(),
            server: None,
            zone: None,
            tsig_key_file: None,
            command: None,
            ttl: DEFAULT_TTL,
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            nameservers: BTreeMap::new(),
        }
    }
}

/// Step 5 for one relay: move `domain` from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRequest {
    /// The relay's mail_domain.
    pub domain: String,
    /// The old site's addresses: what DNS must serve now.
    pub old: Addrs,
    /// The new site's addresses.
    pub new: Addrs,
    /// TTL of the new records.
    pub ttl: u32,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The records were changed now.
    Switched,
    /// The records already were the wanted ones (a re-run): nothing changed.
    AlreadySwitched,
    /// The operator must change the records: replace the name's A/AAAA rrsets by
    /// `set` and delete `remove` (zone-file lines), then the propagation wait runs.
    Manual {
        set: Vec<String>,
        remove: Vec<String>,
    },
    /// There is no DNS step (mail_domain is an IP address); the reason says what
    /// the operator must do instead.
    NotApplicable { reason: String },
}

/// The provider a relay uses.
#[derive(Debug, Clone)]
pub enum DnsProvider {
    Rfc2136(Rfc2136),
    Command(CommandProvider),
    Manual,
    None,
}

/// A relay's DNS: its provider plus where to look records up.
#[derive(Debug, Clone)]
pub struct Dns {
    provider: DnsProvider,
    lookup: Lookup,
    ttl: u32,
    propagation_timeout: Duration,
}

const IP_REASON: &str =
    "mail_domain is an IP address: there is no DNS record to change, the address itself must move to the new machine";

impl Dns {
    /// Check the settings and load the key (rfc2136).
    pub fn from_settings(settings: &DnsSettings) -> Result<Self, DnsError> {
        let provider = match settings.provider {
            ProviderKind::Rfc2136 => {
                let server = settings.server.ok_or_else(|| {
                    DnsError::Config("provider rfc2136 needs `server` (the zone's primary)".into())
                })?;
                let path = settings.tsig_key_file.as_ref().ok_or_else(|| {
                    DnsError::Config("provider rfc2136 needs `tsig_key_file`".into())
                })?;
                let key = TsigKey::from_bind_file(path)?;
                DnsProvider::Rfc2136(Rfc2136::new(server, settings.zone.as_deref(), key)?)
            }
            ProviderKind::Command => {
                let command = settings
                    .command
                    .clone()
                    .ok_or_else(|| DnsError::Config("provider command needs `command`".into()))?;
                DnsProvider::Command(CommandProvider::new(command, settings.propagation_timeout)?)
            }
            ProviderKind::Manual => DnsProvider::Manual,
            ProviderKind::None => DnsProvider::None,
        };
        let zone = settings
            .zone
            .as_deref()
            .map(query::parse_name)
            .transpose()?;
        Ok(Dns {
            provider,
            lookup: Lookup::new(settings.server, zone, &settings.nameservers),
            ttl: settings.ttl,
            propagation_timeout: settings.propagation_timeout,
        })
    }

    /// The provider.
    pub fn provider(&self) -> &DnsProvider {
        &self.provider
    }

    /// The configured TTL for new records.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The configured propagation timeout.
    pub fn propagation_timeout(&self) -> Duration {
        self.propagation_timeout
    }

    /// Point `req.domain` at `req.new`, provided it still points at `req.old`.
    pub async fn switch(&self, req: &SwitchRequest) -> Result<SwitchOutcome, DnsError> {
        self.change(DnsAction::Switch, &req.domain, &req.old, &req.new, req.ttl)
            .await
    }

    /// Point `req.domain` back at `req.old`, provided it points at `req.new`.
    /// The command provider gets the same OLD/NEW facts with `CMFLEET_ACTION=rollback`.
    pub async fn rollback(&self, req: &SwitchRequest) -> Result<SwitchOutcome, DnsError> {
        if let DnsProvider::Command(cmd) = &self.provider {
            if !is_ip(&req.domain) {
                cmd.run(
                    DnsAction::Rollback,
                    &req.domain,
                    &req.old,
                    &req.new,
                    req.ttl,
                )
                .await?;
                return Ok(SwitchOutcome::Switched);
            }
        }
        self.change(
            DnsAction::Rollback,
            &req.domain,
            &req.new,
            &req.old,
            req.ttl,
        )
        .await
    }

    /// Re-publish `addrs` with `ttl` (`action` is LowerTtl or RestoreTtl, for the
    /// command provider), provided the records are still `addrs`.
    pub async fn set_ttl(
        &self,
        domain: &str,
        addrs: &Addrs,
        ttl: u32,
        action: DnsAction,
    ) -> Result<SwitchOutcome, DnsError> {
        self.change(action, domain, addrs, addrs, ttl).await
    }

    async fn change(
        &self,
        action: DnsAction,
        domain: &str,
        from: &Addrs,
        to: &Addrs,
        ttl: u32,
    ) -> Result<SwitchOutcome, DnsError> {
        if is_ip(domain) {
            return Ok(SwitchOutcome::NotApplicable {
                reason: IP_REASON.to_string(),
            });
        }
        match &self.provider {
            DnsProvider::Rfc2136(p) => p.switch(domain, from, to, ttl).await,
            DnsProvider::Command(cmd) => {
                cmd.run(action, domain, from, to, ttl).await?;
                Ok(SwitchOutcome::Switched)
            }
            DnsProvider::Manual => {
                let mut remove = Vec::new();
                if let (Some(old6), None) = (from.ip6, to.ip6) {
                    remove.push(format!("{} IN AAAA {old6}", records::fqdn(domain)));
                }
                Ok(SwitchOutcome::Manual {
                    set: to.zone_lines(domain, ttl),
                    remove,
                })
            }
            DnsProvider::None => Ok(SwitchOutcome::NotApplicable {
                reason: IP_REASON.to_string(),
            }),
        }
    }

    /// The TTL the zone's primary serves for `domain`'s A/AAAA (the larger of the
    /// two), `None` if the name has no such records.
    pub async fn current_ttl(&self, domain: &str) -> Result<Option<u32>, DnsError> {
        Ok(self.current_records(domain).await?.1)
    }

    /// The A/AAAA records the primary serves for `domain`, and their TTL.
    pub async fn current_records(&self, domain: &str) -> Result<(Rrsets, Option<u32>), DnsError> {
        let server = match (&self.provider, self.lookup.primary) {
            (DnsProvider::Rfc2136(p), _) => p.server(),
            (_, Some(server)) => server,
            (_, None) => {
                return Err(DnsError::Config(format!(
                    "reading the records of {domain} needs `server` (the zone's primary): a resolver would show a cached, decreasing ttl"
                )))
            }
        };
        let name = query::parse_name(domain)?;
        let ctx = query::Ctx {
            domain,
            server,
            timeout: DEFAULT_IO_TIMEOUT,
        };
        let (sets, ttl, _) = query::rrsets(ctx, &name).await?;
        Ok((sets, ttl))
    }

    /// The zone's authoritative nameservers, as the propagation wait will query them.
    pub async fn nameservers(&self, domain: &str) -> Result<Vec<NameServer>, DnsError> {
        let name = query::parse_name(domain)?;
        let zone = rfc2136::zone_for(self.lookup.zone.as_ref(), &name)?;
        self.lookup.nameservers(domain, &zone).await
    }

    /// Wait until every authoritative nameserver of the zone serves exactly
    /// `expected` and has the primary's serial; `progress(ok, total)` reports
    /// "ok of total nameservers" whenever that count changes.
    pub async fn wait_propagated(
        &self,
        domain: &str,
        expected: &Addrs,
        timeout: Duration,
        progress: impl FnMut(usize, usize),
    ) -> Result<Propagated, DnsError> {
        if is_ip(domain) || matches!(self.provider, DnsProvider::None) {
            return Ok(Propagated {
                servers: Vec::new(),
                serial: None,
            });
        }
        self.lookup.wait(domain, expected, timeout, progress).await
    }
}

/// Whether mail_domain is an IP address (no DNS step for such relays).
pub fn is_ip(domain: &str) -> bool {
    domain
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}
