//! The one error type of the DNS area, classified transient or permanent so the
//! scheduler knows whether a retry can help.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::records::Rrsets;

/// Everything that can go wrong in step 5 and the TTL commands.
///
/// Messages are lowercase, name the domain and the server, and never contain a TSIG
/// secret (the key parser does not even echo the tokens it rejects).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The key file could not be read.
    #[error("cannot read tsig key file {path}: {source}")]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is not a single BIND `key` statement we can use.
    #[error("invalid tsig key file {path}: {reason}")]
    KeyFileInvalid { path: PathBuf, reason: String },
    /// The settings do not allow the requested operation.
    #[error("dns settings: {0}")]
    Config(String),
    /// TCP connect or socket I/O failed (refused, reset, unreachable).
    #[error("cannot reach dns server {server} for {domain}: {source}")]
    Unreachable {
        domain: String,
        server: SocketAddr,
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("dns server {server} did not answer for {domain} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        domain: String,
        server: SocketAddr,
        timeout: Duration,
    },
    /// TSIG was rejected (NOTAUTH / BADKEY / BADSIG / BADTIME) or the answer's
    /// signature did not verify. A retry with the same key cannot succeed.
    #[error("dns server {server} rejected the signed update of {domain}: {reason}")]
    Auth {
        domain: String,
        server: SocketAddr,
        reason: String,
    },
    /// The server answered with an error response code.
    #[error("dns server {server} answered {rcode} to the {what} of {domain}")]
    Rcode {
        domain: String,
        server: SocketAddr,
        rcode: String,
        what: &'static str,
    },
    /// The prerequisite failed: somebody else changed the records. Nothing was changed.
    #[error(
        "{domain} on {server} serves [{found}] but cmfleet expected [{expected}]: records changed outside cmfleet, nothing was overwritten (hint: fix the records or the inventory, then retry)"
    )]
    UnexpectedRecords {
        domain: String,
        server: SocketAddr,
        // Boxed: keeps every Result<_, DnsError> small.
        found: Box<Rrsets>,
        expected: Box<Rrsets>,
    },
    /// The answer could not be parsed or did not match the question.
    #[error("bad answer from dns server {server} for {domain}: {reason}")]
    Protocol {
        domain: String,
        server: SocketAddr,
        reason: String,
    },
    /// Some authoritative servers still serve old data when the timeout expired.
    #[error("{domain} not propagated after {}: {} of {total} nameservers lag: {}", humantime::format_duration(*.timeout), .lagging.len(), .lagging.join("; "))]
    PropagationTimeout {
        domain: String,
        timeout: Duration,
        total: usize,
        lagging: Vec<String>,
    },
    /// The operator's program could not be started.
    #[error("cannot run dns command {program} for {domain}: {source}")]
    CommandSpawn {
        domain: String,
        program: String,
        source: std::io::Error,
    },
    /// The operator's program failed or timed out.
    #[error("dns command {program} failed for {domain} ({status}): {stderr_tail}")]
    CommandFailed {
        domain: String,
        program: String,
        status: String,
        stderr_tail: String,
        /// Exit code 75 (EX_TEMPFAIL) or a timeout: the program asks for a retry.
        transient: bool,
    },
}

impl DnsError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DnsError::Unreachable { .. }
            | DnsError::Timeout { .. }
            | DnsError::Protocol { .. }
            | DnsError::PropagationTimeout { .. } => true,
            // SERVFAIL is the server's own trouble (e.g. the update quota, a journal
            // write); the others (REFUSED, NOTZONE, FORMERR...) are configuration.
            DnsError::Rcode { rcode, .. } => rcode == "SERVFAIL",
            DnsError::CommandFailed { transient, .. } => *transient,
            DnsError::KeyFileRead { .. }
            | DnsError::KeyFileInvalid { .. }
            | DnsError::Config(_)
            | DnsError::Auth { .. }
            | DnsError::UnexpectedRecords { .. }
            | DnsError::CommandSpawn { .. } => false,
        }
    }
}
