//! Talking to one DNS server: TCP and UDP exchanges and plain (non-recursive)
//! queries against authoritative servers.
//!
//! We frame TCP ourselves (one connection per exchange) instead of using
//! hickory-net's client: it keeps the raw answer bytes in our hands (TSIG errors
//! must be read before hickory's verifier turns them into "truncated HMAC"), gives
//! exact connect/answer timeouts and error kinds for the transient/permanent split,
//! and sidesteps the 32-in-flight limit of its TCP multiplexer.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::error::DnsError;
use super::records::Rrsets;

/// Where and about what we are talking, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub domain: &'a str,
    pub server: SocketAddr,
    pub timeout: Duration,
}

impl Ctx<'_> {
    pub fn unreachable(&self, source: std::io::Error) -> DnsError {
        DnsError::Unreachable {
            domain: self.domain.to_string(),
            server: self.server,
            source,
        }
    }

    pub fn timed_out(&self) -> DnsError {
        DnsError::Timeout {
            domain: self.domain.to_string(),
            server: self.server,
            timeout: self.timeout,
        }
    }

    pub fn protocol(&self, reason: impl Into<String>) -> DnsError {
        DnsError::Protocol {
            domain: self.domain.to_string(),
            server: self.server,
            reason: reason.into(),
        }
    }

    pub fn rcode(&self, rcode: ResponseCode, what: &'static str) -> DnsError {
        DnsError::Rcode {
            domain: self.domain.to_string(),
            server: self.server,
            rcode: rcode.to_str().to_string(),
            what,
        }
    }
}

/// Send one message over a fresh TCP connection and read one answer, all within
/// `ctx.timeout`.
pub(crate) async fn exchange_tcp(ctx: Ctx<'_>, request: &[u8]) -> Result<Vec<u8>, DnsError> {
    let len = u16::try_from(request.len()).map_err(|_| ctx.protocol("request too large"))?;
    let io = async {
        let mut stream = TcpStream::connect(ctx.server).await?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(ctx.timeout, io).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(ctx.unreachable(e)),
        Err(_) => Err(ctx.timed_out()),
    }
}

/// Send one datagram and wait for the answer with our id; resend a few times
/// within `ctx.timeout` because UDP loses packets.
async fn exchange_udp(ctx: Ctx<'_>, request: &[u8], id: u16) -> Result<Vec<u8>, DnsError> {
    let bind: SocketAddr = if ctx.server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| ctx.unreachable(e))?;
    socket
        .connect(ctx.server)
        .await
        .map_err(|e| ctx.unreachable(e))?;
    const TRIES: u32 = 3;
    let per_try = ctx.timeout / TRIES;
    let mut buf = vec![0u8; 65535];
    for _ in 0..TRIES {
        socket.send(request).await.map_err(|e| ctx.unreachable(e))?;
        let deadline = tokio::time::Instant::now() + per_try;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(ctx.unreachable(e)),
                // Stray or late datagrams of an earlier try: keep listening.
                Ok(Ok(n)) if n < 2 || buf[..2] != id.to_be_bytes() => continue,
                Ok(Ok(n)) => return Ok(buf[..n].to_vec()),
            }
        }
    }
    Err(ctx.timed_out())
}

/// A non-recursive query for `name`/`rtype`: UDP first, TCP if the answer was
/// truncated. Returns the answer message if its rcode is NOERROR or NXDOMAIN.
pub(crate) async fn query(
    ctx: Ctx<'_>,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, DnsError> {
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    let mut q = Query::query(name.clone(), rtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.metadata.recursion_desired = false;
    let id = msg.metadata.id;
    let bytes = msg
        .to_vec()
        .map_err(|e| ctx.protocol(format!("cannot encode query: {e}")))?;
    let mut answer = decode(ctx, &exchange_udp(ctx, &bytes, id).await?)?;
    if answer.metadata.truncation {
        answer = decode(ctx, &exchange_tcp(ctx, &bytes).await?)?;
    }
    if answer.metadata.id != id || answer.metadata.message_type != MessageType::Response {
        return Err(ctx.protocol("answer does not match the query"));
    }
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
        rcode => Err(ctx.rcode(rcode, "query")),
    }
}

pub(crate) fn decode(ctx: Ctx<'_>, bytes: &[u8]) -> Result<Message, DnsError> {
    Message::from_vec(bytes).map_err(|e| ctx.protocol(format!("cannot decode answer: {e}")))
}

/// The A and AAAA rrsets of `name` served by the server, the larger TTL of the two
/// (what a cache may hold longest) and whether every answer was authoritative.
pub(crate) async fn rrsets(
    ctx: Ctx<'_>,
    name: &Name,
) -> Result<(Rrsets, Option<u32>, bool), DnsError> {
    let a = query(ctx, name, RecordType::A).await?;
    let aaaa = query(ctx, name, RecordType::AAAA).await?;
    let mut sets = Rrsets::default();
    let mut ttl = None;
    for r in a.answers.iter().filter(|r| &r.name == name) {
        if let RData::A(ip) = &r.data {
            sets.a.push(ip.0);
            ttl = Some(ttl.map_or(r.ttl, |t: u32| t.max(r.ttl)));
        }
    }
    for r in aaaa.answers.iter().filter(|r| &r.name == name) {
        if let RData::AAAA(ip) = &r.data {
            sets.aaaa.push(ip.0);
            ttl = Some(ttl.map_or(r.ttl, |t: u32| t.max(r.ttl)));
        }
    }
    let authoritative = a.metadata.authoritative && aaaa.metadata.authoritative;
    Ok((sets.normalized(), ttl, authoritative))
}

/// The SOA serial of `zone` on the server, if it serves the zone authoritatively.
pub(crate) async fn soa_serial(ctx: Ctx<'_>, zone: &Name) -> Result<Option<u32>, DnsError> {
    let answer = query(ctx, zone, RecordType::SOA).await?;
    if !answer.metadata.authoritative {
        return Ok(None);
    }
    Ok(answer.answers.iter().find_map(|r| match &r.data {
        RData::SOA(soa) if &r.name == zone => Some(soa.serial),
        _ => None,
    }))
}

/// Parse a domain name given by the inventory, as an absolute name.
pub(crate) fn parse_name(domain: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_ascii(domain.trim_end_matches('.'))
        .map_err(|e| DnsError::Config(format!("{domain:?} is not a valid dns name: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}
