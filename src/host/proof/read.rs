//! Reading one host's listing as it arrives: header, the proof's digest line,
//! records, trailer.
//!
//! Nothing is trusted that the trailer does not vouch for: the records are counted
//! and digested as they pass, checked to be in order (the merge depends on it),
//! and a listing that ends without its trailer, or whose count or digest differ
//! from the host's, is an [`Incomplete`] listing: never a difference, never a pass.

use ring::digest::{Context, SHA256};
use tokio::sync::mpsc::Receiver;

use super::listing::{DIGEST, HEADER, TRAILER};

/// Why a listing cannot be used; the caller retries (the data may be fine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the listing from {side} is incomplete: {why}")]
pub struct Incomplete {
    pub side: &'static str,
    pub why: String,
}

/// The header's facts about the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// `uid:gid` of vmail on this host (`None`: no vmail user).
    pub vmail: Option<String>,
    /// `uid:gid` cmfleet recorded for /etc/dkimkeys (`None`: not recorded).
    pub dkim: Option<String>,
}

/// A proof listing's digest line: the count and SHA-256 of the host's whole
/// listing, normalised (`listing`'s module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    /// 64 lowercase hex digits.
    pub sum: String,
}

/// One host's proof listing as step 4 reads it: its records as they arrive, and
/// the answer to its digest (`listing::SEND_ALL` or `SEND_KEPT`, a line), which
/// the host waits for on its stdin (`remote::Stdout::Dialogue`).
pub struct Side {
    pub records: Receiver<Vec<u8>>,
    pub answer: tokio::sync::oneshot::Sender<Vec<u8>>,
    /// Fired once the host's digest has been read ([`Side::when_digested`]).
    pub digested: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Side {
    /// A side, the sender its records go into (`capacity` in flight), and the
    /// receiver its answer comes out of.
    pub fn channel(
        capacity: usize,
    ) -> (
        Side,
        tokio::sync::mpsc::Sender<Vec<u8>>,
        tokio::sync::oneshot::Receiver<Vec<u8>>,
    ) {
        let (tx, records) = tokio::sync::mpsc::channel(capacity);
        let (answer, asked) = tokio::sync::oneshot::channel();
        let side = Side {
            records,
            answer,
            digested: None,
        };
        (side, tx, asked)
    }

    /// Resolves once the host's digest line has been read; an error if its listing
    /// ended (or was given up) before.
    pub fn when_digested(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.digested = Some(tx);
        rx
    }
}

/// One record: section letter, four fields, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub section: u8,
    pub fields: [Vec<u8>; 4],
    pub path: Vec<u8>,
}

impl Record {
    fn parse(raw: &[u8]) -> Option<Record> {
        let mut parts = raw.splitn(6, |b| *b == b'\t');
        let section = *parts.next()?.first()?;
        let mut field = || parts.next().map(<[u8]>::to_vec);
        let fields = [field()?, field()?, field()?, field()?];
        Some(Record {
            section,
            fields,
            path: field()?,
        })
    }

    /// What the merge orders by, as `sort -k1,1 -k6` does under `LC_ALL=C`.
    pub fn key(&self) -> (u8, &[u8]) {
        (self.section, &self.path)
    }

    /// The path for people: invalid UTF-8 replaced, control characters escaped.
    pub fn shown_path(&self) -> String {
        String::from_utf8_lossy(&self.path)
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    }
}

/// One host's listing being read.
pub struct Listing {
    side: &'static str,
    rx: Receiver<Vec<u8>>,
    digest: Context,
    count: u64,
    last: Option<Record>,
    ended: bool,
}

impl Listing {
    /// Reads the header; `side` names the host in errors ("old", "new").
    pub async fn open(
        side: &'static str,
        mut rx: Receiver<Vec<u8>>,
    ) -> Result<(Listing, Owners), Incomplete> {
        let first = rx.recv().await;
        let owners = first
            .as_deref()
            .and_then(parse_header)
            .ok_or_else(|| Incomplete {
                side,
                why: "it does not start with cmfleet's header".into(),
            })?;
        let listing = Listing {
            side,
            rx,
            digest: Context::new(&SHA256),
            count: 0,
            last: None,
            ended: false,
        };
        Ok((listing, owners))
    }

    /// The digest line that follows a proof listing's header; `role` (`old`,
    /// `new`): the host the listing must have been made for, since what its owners
    /// read as `=` depends on it. A digest is 64 hex digits: two hosts that both
    /// failed to digest must not match.
    pub async fn digest(&mut self, role: &str) -> Result<Digest, Incomplete> {
        let raw = self
            .rx
            .recv()
            .await
            .ok_or_else(|| self.incomplete("it ended before its digest"))?;
        let words = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| t.strip_prefix(DIGEST))
            .and_then(|t| t.strip_prefix(' '))
            .map(|t| t.split(' ').collect::<Vec<_>>())
            .ok_or_else(|| self.incomplete("it sent no digest after its header"))?;
        let is_sum = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match words.as_slice() {
            [made_for, count, sum] if is_sum(sum) => {
                if *made_for != role {
                    return Err(
                        self.incomplete(format!("it was made for {made_for}, not for {role}"))
                    );
                }
                let count = count
                    .parse()
                    .map_err(|_| self.incomplete("its digest line is malformed"))?;
                Ok(Digest {
                    count,
                    sum: (*sum).to_string(),
                })
            }
            _ => Err(self.incomplete("its digest line is malformed")),
        }
    }

    fn incomplete(&self, why: impl Into<String>) -> Incomplete {
        Incomplete {
            side: self.side,
            why: why.into(),
        }
    }

    /// The next record, `None` after a trailer that vouches for all of them.
    pub async fn next(&mut self) -> Result<Option<Record>, Incomplete> {
        if self.ended {
            return Ok(None);
        }
        let Some(raw) = self.rx.recv().await else {
            return Err(self.incomplete(format!(
                "it ended after {} records without its trailer",
                self.count
            )));
        };
        if let Some(rest) = raw.strip_prefix(TRAILER.as_bytes()) {
            self.check_trailer(rest)?;
            self.ended = true;
            return Ok(None);
        }
        self.digest.update(&raw);
        self.digest.update(b"\0");
        self.count += 1;
        let record = Record::parse(&raw)
            .ok_or_else(|| self.incomplete(format!("record {} is malformed", self.count)))?;
        // Equal keys are fine: two queue files with the same content.
        if self.last.as_ref().is_some_and(|l| l.key() > record.key()) {
            return Err(self.incomplete(format!("record {} is out of order", self.count)));
        }
        self.last = Some(record.clone());
        Ok(Some(record))
    }

    fn check_trailer(&mut self, rest: &[u8]) -> Result<(), Incomplete> {
        let text = String::from_utf8_lossy(rest);
        let mut words = text.split_whitespace();
        let (count, sum) = (words.next(), words.next());
        let digest = std::mem::replace(&mut self.digest, Context::new(&SHA256)).finish();
        let ours = data_encoding::HEXLOWER.encode(digest.as_ref());
        match (count.and_then(|c| c.parse::<u64>().ok()), sum) {
            (Some(n), _) if n != self.count => Err(self.incomplete(format!(
                "the host listed {n} records, {} arrived",
                self.count
            ))),
            (Some(_), Some(s)) if s == ours => Ok(()),
            (Some(_), Some(_)) => Err(self.incomplete("its digest differs from the host's")),
            _ => Err(self.incomplete("its trailer is malformed")),
        }
    }
}

/// `#cmfleet-manifest 2 vmail=U:G dkim=U:G`.
fn parse_header(raw: &[u8]) -> Option<Owners> {
    let text = std::str::from_utf8(raw).ok()?;
    let rest = text.strip_prefix(HEADER)?;
    let mut owners = Owners::default();
    for word in rest.split_whitespace() {
        let known = |v: &str| (v != "-" && !v.is_empty()).then(|| v.to_string());
        if let Some(v) = word.strip_prefix("vmail=") {
            owners.vmail = known(v);
        } else if let Some(v) = word.strip_prefix("dkim=") {
            owners.dkim = known(v);
        }
    }
    Some(owners)
}
