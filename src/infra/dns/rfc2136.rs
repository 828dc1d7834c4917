//! The `rfc2136` provider: TSIG-signed dynamic UPDATE to the zone's primary.
//!
//! Every change is ONE update message that deletes and re-adds the A and AAAA
//! rrsets, guarded by prerequisites that the rrsets are exactly what we expect, so a
//! concurrent manual change makes the server refuse the whole message (nothing is
//! overwritten) and resolvers never see a half-switched name.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::error::DnsError;
use super::query::{self, decode, exchange_tcp, parse_name, Ctx};
use super::records::{Addrs, Rrsets};
use super::tsig::TsigKey;
use super::SwitchOutcome;

/// How long one exchange with the primary may take by default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A zone primary that accepts TSIG-signed updates.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    /// The primary's address (TCP and UDP).
    server: SocketAddr,
    /// The zone to update; `None` = the parent of each domain.
    zone: Option<Name>,
    /// The TSIG key the primary's update-policy grants.
    key: TsigKey,
    /// Bound on one exchange (connect, send, answer).
    timeout: Duration,
}

impl Rfc2136 {
    /// A provider talking to `server`, updating `zone` (or each domain's parent).
    pub fn new(server: SocketAddr, zone: Option<&str>, key: TsigKey) -> Result<Self, DnsError> {
        let zone = zone.map(parse_name).transpose()?;
        Ok(Rfc2136 {
            server,
            zone,
            key,
            timeout: DEFAULT_IO_TIMEOUT,
        })
    }

    /// Change the per-exchange timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The primary's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The zone that holds `domain`: the configured one (which must contain it) or
    /// the domain's parent.
    pub(crate) fn zone_for(&self, domain: &Name) -> Result<Name, DnsError> {
        zone_for(self.zone.as_ref(), domain)
    }

    fn ctx<'a>(&self, domain: &'a str) -> Ctx<'a> {
        Ctx {
            domain,
            server: self.server,
            timeout: self.timeout,
        }
    }

    /// Replace `old` by `new` (see the module doc); idempotent.
    pub async fn switch(
        &self,
        domain: &str,
        old: &Addrs,
        new: &Addrs,
        ttl: u32,
    ) -> Result<SwitchOutcome, DnsError> {
        self.replace(domain, old, new, ttl).await
    }

    /// Re-publish `addrs` with a new TTL, provided the records are still `addrs`.
    pub async fn set_ttl(
        &self,
        domain: &str,
        addrs: &Addrs,
        ttl: u32,
    ) -> Result<SwitchOutcome, DnsError> {
        self.replace(domain, addrs, addrs, ttl).await
    }

    /// The A/AAAA records the primary serves for `domain` and their TTL.
    pub async fn records(&self, domain: &str) -> Result<(Rrsets, Option<u32>), DnsError> {
        let name = parse_name(domain)?;
        let (sets, ttl, _) = query::rrsets(self.ctx(domain), &name).await?;
        Ok((sets, ttl))
    }

    async fn replace(
        &self,
        domain: &str,
        current: &Addrs,
        target: &Addrs,
        ttl: u32,
    ) -> Result<SwitchOutcome, DnsError> {
        let ctx = self.ctx(domain);
        let name = parse_name(domain)?;
        let zone = self.zone_for(&name)?;
        let msg = build_update(&zone, &name, current, target, ttl);
        match self.send_signed(ctx, &zone, msg).await? {
            ResponseCode::NoError => Ok(SwitchOutcome::Switched),
            // The prerequisite failed: find out whether we already did this (a
            // retry after a lost answer) or somebody else changed the records.
            ResponseCode::YXRRSet | ResponseCode::NXRRSet => {
                let (found, _, _) = query::rrsets(ctx, &name).await?;
                if found.matches(target) {
                    Ok(SwitchOutcome::AlreadySwitched)
                } else {
                    Err(DnsError::UnexpectedRecords {
                        domain: domain.to_string(),
                        server: self.server,
                        found: Box::new(found),
                        expected: Box::new(current.to_rrsets()),
                    })
                }
            }
            rcode => Err(ctx.rcode(rcode, "update")),
        }
    }

    /// Sign, send over TCP, and check the answer's TSIG before its rcode: a TSIG
    /// failure is reported in plain words instead of hickory's verifier error.
    async fn send_signed(
        &self,
        ctx: Ctx<'_>,
        zone: &Name,
        mut msg: Message,
    ) -> Result<ResponseCode, DnsError> {
        let signer = self.key.signer()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|_| DnsError::Config("the system clock is before 1970".to_string()))?;
        let verifier = msg
            .finalize(&signer, now)
            .map_err(|e| ctx.protocol(format!("cannot sign the update: {e}")))?;
        let bytes = msg
            .to_vec()
            .map_err(|e| ctx.protocol(format!("cannot encode the update: {e}")))?;
        let answer_bytes = exchange_tcp(ctx, &bytes).await?;
        let answer = decode(ctx, &answer_bytes)?;
        if answer.metadata.id != msg.metadata.id
            || answer.metadata.message_type != MessageType::Response
        {
            return Err(ctx.protocol("answer does not match the update"));
        }
        let rcode = answer.metadata.response_code;
        let auth = |reason: String| DnsError::Auth {
            domain: ctx.domain.to_string(),
            server: ctx.server,
            reason,
        };
        match answer.signature() {
            Some(sig) => {
                if let Some(err) = sig.data.error {
                    return Err(auth(self.tsig_error_words(err)));
                }
                let mut verifier = verifier.ok_or_else(|| ctx.protocol("no tsig verifier"))?;
                verifier.verify(&answer_bytes).map_err(|_| {
                    auth(format!(
                        "the answer's signature does not verify with {} (hint: a forged answer, or clocks more than 300s apart)",
                        self.key
                    ))
                })?;
            }
            None if rcode == ResponseCode::NotAuth => {
                return Err(auth(format!(
                "NOTAUTH: the server is not authoritative for zone {zone} or does not accept {}",
                self.key
            )))
            }
            None if rcode == ResponseCode::NoError => {
                return Err(auth(
                    "the answer is not signed although the update was".to_string(),
                ))
            }
            // Unsigned FORMERR and the like: the rcode says it all.
            None => {}
        }
        if rcode == ResponseCode::NotAuth {
            return Err(auth(format!(
                "NOTAUTH: the server is not the primary of zone {zone} or {} may not update it",
                self.key
            )));
        }
        Ok(rcode)
    }

    fn tsig_error_words(&self, err: TsigError) -> String {
        let key = &self.key;
        match err {
            TsigError::BadKey => format!(
                "BADKEY: the server does not know {key} (hint: check the key name and algorithm against the server's configuration)"
            ),
            TsigError::BadSig => format!(
                "BADSIG: the signature made with {key} does not match (hint: the secret differs from the server's)"
            ),
            TsigError::BadTime => {
                "BADTIME: our clock and the server's differ by more than 300s (hint: check ntp)".to_string()
            }
            TsigError::BadTrunc => "BADTRUNC: the server rejected a truncated signature".to_string(),
            TsigError::Unknown(code) => format!("tsig error {code}"),
        }
    }
}

/// The zone holding `domain`: `zone` if given (it must contain the name) or the
/// domain's parent.
pub(crate) fn zone_for(zone: Option<&Name>, domain: &Name) -> Result<Name, DnsError> {
    match zone {
        Some(zone) if zone.zone_of(domain) => Ok(zone.clone()),
        Some(zone) => Err(DnsError::Config(format!(
            "{domain} is not inside the zone {zone}"
        ))),
        None => Ok(domain.base_name()),
    }
}

/// One UPDATE: prerequisites "A is exactly current.ip4" and "AAAA is exactly
/// current.ip6 / does not exist" (RFC 2136 2.4.2 and 2.4.3), then delete both
/// rrsets and add the target's (2.5.2, 2.5.1).
fn build_update(zone: &Name, name: &Name, current: &Addrs, target: &Addrs, ttl: u32) -> Message {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Update);
    msg.metadata.recursion_desired = false;
    let mut zq = Query::query(zone.clone(), RecordType::SOA);
    zq.set_query_class(DNSClass::IN);
    msg.add_zone(zq);

    // Value-dependent prerequisites carry TTL 0 and class IN.
    msg.add_pre_requisite(Record::from_rdata(
        name.clone(),
        0,
        RData::A(A(current.ip4)),
    ));
    match current.ip6 {
        Some(ip6) => {
            msg.add_pre_requisite(Record::from_rdata(name.clone(), 0, RData::AAAA(AAAA(ip6))))
        }
        None => {
            let mut absent = Record::update0(name.clone(), 0, RecordType::AAAA);
            absent.dns_class = DNSClass::NONE;
            msg.add_pre_requisite(absent);
        }
    }

    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut delete = Record::update0(name.clone(), 0, rtype);
        delete.dns_class = DNSClass::ANY;
        msg.add_update(delete);
    }
    msg.add_update(Record::from_rdata(
        name.clone(),
        ttl,
        RData::A(A(target.ip4)),
    ));
    if let Some(ip6) = target.ip6 {
        msg.add_update(Record::from_rdata(
            name.clone(),
            ttl,
            RData::AAAA(AAAA(ip6)),
        ));
    }
    msg
}
