//! `cmfleet dns lower-ttl` and `restore-ttl`: the guide's advice, made commands.
//!
//! Lowering records each relay's served TTL in the journal, so `migrate` can refuse
//! a cutover until resolvers may still cache the old address no longer, and so
//! `restore-ttl` knows what to put back.

use std::time::Duration;

use serde::Serialize;

use crate::infra::dns::{Dns, DnsAction, SwitchOutcome};
use crate::model::inventory::{MailDomain, Relay};
use crate::pipeline::journal::{now_ms, Journal, RelayState, TtlRecord};

/// What happened to one relay's TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum TtlOutcome {
    Changed {
        from: u32,
        to: u32,
    },
    Unchanged {
        ttl: u32,
    },
    /// The operator must change it (manual provider): the zone lines to set.
    Manual {
        set: Vec<String>,
    },
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

fn dns_for(relay: &Relay) -> Result<Dns, TtlOutcome> {
    if let MailDomain::Ip(_) = relay.mail_domain {
        return Err(TtlOutcome::Skipped {
            reason: "the mail_domain is an IP address: no DNS records".into(),
        });
    }
    Dns::from_settings(&relay.settings.dns).map_err(|e| TtlOutcome::Failed {
        error: e.to_string(),
    })
}

/// Lowers the TTL of `relay`'s A/AAAA (still pointing at OLD) to `ttl`, recording the original.
pub async fn lower(relay: &Relay, ttl: u32, journal: &mut Journal) -> TtlOutcome {
    let dns = match dns_for(relay) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let current = match dns.current_ttl(&relay.name).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return TtlOutcome::Failed {
                error: format!("{} has no A/AAAA records", relay.name),
            }
        }
        Err(e) => {
            return TtlOutcome::Failed {
                error: e.to_string(),
            }
        }
    };
    // A second lower-ttl must not overwrite the original with the lowered value.
    let original = journal
        .relay(&relay.name)
        .dns_ttl
        .map_or(current, |r| r.original);
    if current <= ttl {
        journal.relay(&relay.name).dns_ttl.get_or_insert(TtlRecord {
            original,
            lowered_to: current,
            lowered_at_ms: now_ms(),
        });
        return TtlOutcome::Unchanged { ttl: current };
    }
    match dns
        .set_ttl(&relay.name, &relay.old.addrs(), ttl, DnsAction::LowerTtl)
        .await
    {
        Ok(SwitchOutcome::Manual { set, .. }) => TtlOutcome::Manual { set },
        Ok(SwitchOutcome::NotApplicable { reason }) => TtlOutcome::Skipped { reason },
        Ok(_) => {
            journal.relay(&relay.name).dns_ttl = Some(TtlRecord {
                original,
                lowered_to: ttl,
                lowered_at_ms: now_ms(),
            });
            TtlOutcome::Changed {
                from: current,
                to: ttl,
            }
        }
        Err(e) => TtlOutcome::Failed {
            error: e.to_string(),
        },
    }
}

/// Puts back the recorded (or the given) TTL on whatever site the relay is on now.
pub async fn restore(relay: &Relay, ttl: Option<u32>, journal: &mut Journal) -> TtlOutcome {
    let rec = journal.relay(&relay.name).clone();
    let Some(ttl) = ttl.or(rec.dns_ttl.map(|r| r.original)) else {
        return TtlOutcome::Skipped {
            reason: "no TTL was recorded by lower-ttl (hint: give --ttl)".into(),
        };
    };
    let dns = match dns_for(relay) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let site = if rec.state() == RelayState::Done {
        &relay.new
    } else {
        &relay.old
    };
    let current = dns
        .current_ttl(&relay.name)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    match dns
        .set_ttl(&relay.name, &site.addrs(), ttl, DnsAction::RestoreTtl)
        .await
    {
        Ok(SwitchOutcome::Manual { set, .. }) => TtlOutcome::Manual { set },
        Ok(SwitchOutcome::NotApplicable { reason }) => TtlOutcome::Skipped { reason },
        Ok(_) => {
            journal.relay(&relay.name).dns_ttl = None;
            TtlOutcome::Changed {
                from: current,
                to: ttl,
            }
        }
        Err(e) => TtlOutcome::Failed {
            error: e.to_string(),
        },
    }
}

/// Why `relay` may not be cut over yet, if the TTL lowered for it has not elapsed.
pub fn cutover_hold(journal: &Journal, relay: &str, now: u64) -> Option<String> {
    let rec = journal.data.relays.get(relay)?.dns_ttl?;
    let left = rec.remaining(now);
    (left > Duration::ZERO).then(|| {
        format!(
            "not cut over: resolvers may cache the old address for {}s after the TTL was lowered; {} left (hint: wait, or --force)",
            rec.original,
            humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
        )
    })
}
