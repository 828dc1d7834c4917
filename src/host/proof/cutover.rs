//! What OLD served at the cutover, as step 4's proof saw it: `verify`'s reference for
//! what a mail client sees, kept on the controller so it outlives OLD.
//!
//! A client such as Delta Chat tracks each mailbox by UIDVALIDITY and UIDs: NEW must
//! present every mailbox with OLD's UIDVALIDITY and at least OLD's UIDNEXT, or clients
//! forget what they fetched. And the Postfix queue NEW took over must drain from NEW:
//! its queue IDs on NEW (after `postsuper -s`) are recorded so `verify` can tell which
//! are still queued and which NEW's Postfix delivered.
//!
//! The record is JSON Lines, one entry per line, written as the proof's merge goes
//! and read back the same way, so neither step 4 nor `verify` holds a relay's tens of
//! thousands of mailboxes:
//!
//! ```text
//! {"version":2}
//! {"queued":{"queue":"deferred","id":"4Xk9Zq1rTz"}}
//! {"mailbox":{"path":"DOMAIN/ADDR/dovecot-uidlist","uidvalidity":"1700000000","uidnext":"31"}}
//! ```
//!
//! Mailboxes come in the listing's order (bytewise by path), which is the order
//! `verify`'s merge reads NEW's uidlists in. A path that is not UTF-8 has its bytes in
//! `raw` (hex) beside the readable `path`. A record of an older cmfleet (one JSON
//! object, `mailboxes` and `queue`) is still read.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One mailbox's IMAP identity, from its `dovecot-uidlist` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uids {
    pub uidvalidity: String,
    pub uidnext: String,
}

impl Uids {
    pub fn new(uidvalidity: &str, uidnext: &str) -> Uids {
        Uids {
            uidvalidity: uidvalidity.into(),
            uidnext: uidnext.into(),
        }
    }
}

/// One queue file NEW took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    /// The queue directory (`deferred`, `active`, ...).
    pub queue: String,
    /// Its queue ID (file name) on NEW.
    pub id: String,
}

/// One mailbox of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    /// The uidlist's path under /home/vmail/mail, for people (invalid UTF-8 replaced).
    pub path: String,
    /// The path's bytes in hex, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    pub uidvalidity: String,
    pub uidnext: String,
}

impl Mailbox {
    pub fn new(path: &[u8], uids: Uids) -> Mailbox {
        let (path, raw) = match std::str::from_utf8(path) {
            Ok(p) => (p.to_string(), None),
            Err(_) => (
                String::from_utf8_lossy(path).into_owned(),
                Some(data_encoding::HEXLOWER.encode(path)),
            ),
        };
        Mailbox {
            path,
            raw,
            uidvalidity: uids.uidvalidity,
            uidnext: uids.uidnext,
        }
    }

    /// The path's bytes, as the listing has them (the merge's order).
    pub fn key(&self) -> Vec<u8> {
        self.raw
            .as_deref()
            .and_then(|h| data_encoding::HEXLOWER.decode(h.as_bytes()).ok())
            .unwrap_or_else(|| self.path.as_bytes().to_vec())
    }

    pub fn uids(&self) -> Uids {
        Uids {
            uidvalidity: self.uidvalidity.clone(),
            uidnext: self.uidnext.clone(),
        }
    }
}

/// One line of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    Version(u32),
    Mailbox(Mailbox),
    Queued(Queued),
}

const VERSION: u32 = 2;

/// What the proof's merge keeps of OLD's uidlists and NEW's queue for `verify`.
pub trait Keep {
    fn mailbox(&mut self, path: &[u8], uids: Uids);
    fn queued(&mut self, q: Queued);
}

/// The record in memory (tests, and an older cmfleet's record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutover {
    /// By the uidlist's path under /home/vmail/mail (for people: invalid UTF-8
    /// replaced), OLD's UIDVALIDITY and UIDNEXT.
    pub mailboxes: BTreeMap<String, Uids>,
    /// OLD's Postfix queue, as NEW holds it.
    pub queue: Vec<Queued>,
}

impl Keep for Cutover {
    fn mailbox(&mut self, path: &[u8], uids: Uids) {
        self.mailboxes
            .insert(String::from_utf8_lossy(path).into_owned(), uids);
    }
    fn queued(&mut self, q: Queued) {
        self.queue.push(q);
    }
}

/// Keeps nothing (a proof whose record is not wanted).
pub struct Discard;

impl Keep for Discard {
    fn mailbox(&mut self, _: &[u8], _: Uids) {}
    fn queued(&mut self, _: Queued) {}
}

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error("cannot read the cutover record {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cutover record {} is not valid: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the cutover record {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub use crate::infra::state_dir::cutover_path;

/// The record being written as the proof's merge goes; it replaces the relay's
/// record only on [`Writer::commit`] (a proof that fails leaves the old one).
pub struct Writer {
    path: PathBuf,
    file: crate::infra::atomic::Writer,
    /// The first write error: the rest are skipped, `commit` reports it.
    failed: Option<std::io::Error>,
    /// Entries written.
    pub mailboxes: usize,
    pub queued: usize,
}

impl Writer {
    pub fn create(state_dir: &Path, relay: &str) -> Result<Writer, CutoverError> {
        let path = cutover_path(state_dir, relay);
        let write = |source| CutoverError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let file = crate::infra::atomic::Writer::create(&path).map_err(write)?;
        let mut w = Writer {
            path,
            file,
            failed: None,
            mailboxes: 0,
            queued: 0,
        };
        w.line(&Entry::Version(VERSION));
        Ok(w)
    }

    fn line(&mut self, e: &Entry) {
        if self.failed.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut self.file, e)
            .map_err(std::io::Error::other)
            .and_then(|()| self.file.write_all(b"\n"));
        if let Err(e) = written {
            self.failed = Some(e);
        }
    }

    pub fn commit(self) -> Result<(), CutoverError> {
        let path = self.path;
        let write = |source| CutoverError::Write { path, source };
        if let Some(e) = self.failed {
            return Err(write(e));
        }
        self.file.commit().map_err(write)
    }
}

impl Keep for Writer {
    fn mailbox(&mut self, path: &[u8], uids: Uids) {
        self.mailboxes += 1;
        self.line(&Entry::Mailbox(Mailbox::new(path, uids)));
    }
    fn queued(&mut self, q: Queued) {
        self.queued += 1;
        self.line(&Entry::Queued(q));
    }
}

/// The record read back, entry by entry.
pub struct Reader {
    path: PathBuf,
    source: Source,
}

enum Source {
    Lines(std::io::Lines<BufReader<std::fs::File>>),
    /// An older cmfleet's record, read whole (it held no more).
    Whole(std::vec::IntoIter<Entry>),
}

impl Reader {
    /// The record of `relay`, `None` if step 4 never recorded one (an older cmfleet,
    /// or another controller).
    pub fn open(state_dir: &Path, relay: &str) -> Result<Option<Reader>, CutoverError> {
        let path = cutover_path(state_dir, relay);
        let read = |source| CutoverError::Read {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let mut lines = BufReader::new(file).lines();
        let first = lines.next().transpose().map_err(read)?.unwrap_or_default();
        if first.trim() == "{" {
            // The older record: one pretty-printed object.
            let bytes = std::fs::read(&path).map_err(read)?;
            let old: Cutover =
                serde_json::from_slice(&bytes).map_err(|source| CutoverError::Parse {
                    path: path.clone(),
                    source,
                })?;
            let mut entries: Vec<Entry> = old.queue.into_iter().map(Entry::Queued).collect();
            let mut boxes: Vec<Mailbox> = old
                .mailboxes
                .into_iter()
                .map(|(p, u)| Mailbox::new(p.as_bytes(), u))
                .collect();
            boxes.sort_by_key(Mailbox::key);
            entries.extend(boxes.into_iter().map(Entry::Mailbox));
            return Ok(Some(Reader {
                path,
                source: Source::Whole(entries.into_iter()),
            }));
        }
        match serde_json::from_str::<Entry>(&first) {
            Ok(Entry::Version(VERSION)) => Ok(Some(Reader {
                path,
                source: Source::Lines(lines),
            })),
            Ok(_) => Err(CutoverError::Parse {
                path,
                source: serde::de::Error::custom("it does not start with its version"),
            }),
            Err(source) => Err(CutoverError::Parse { path, source }),
        }
    }

    /// The next entry, `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, CutoverError> {
        match &mut self.source {
            Source::Whole(it) => Ok(it.next()),
            Source::Lines(lines) => loop {
                let Some(line) = lines.next() else {
                    return Ok(None);
                };
                let line = line.map_err(|source| CutoverError::Read {
                    path: self.path.clone(),
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(&line).map(Some).map_err(|source| {
                    CutoverError::Parse {
                        path: self.path.clone(),
                        source,
                    }
                });
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Uids as U;
    fn uids(v: &str, n: &str) -> Uids {
        U::new(v, n)
    }

    fn all(state: &Path) -> Vec<Entry> {
        let mut r = Reader::open(state, "r").expect("open").expect("a record");
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().expect("entry") {
            out.push(e);
        }
        out
    }

    /// Written as the merge goes, read back entry by entry, in order; a name that is
    /// not UTF-8 keeps its bytes; nothing replaces the record until it is committed.
    #[test]
    fn the_record_is_written_and_read_line_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::create(dir.path(), "r").expect("create");
        w.queued(Queued {
            queue: "deferred".into(),
            id: "ABC".into(),
        });
        w.mailbox(b"d/a/dovecot-uidlist", uids("1", "2"));
        w.mailbox(b"d/\xff/dovecot-uidlist", uids("3", "4"));
        drop(w);
        assert!(Reader::open(dir.path(), "r").expect("open").is_none());
        let mut w = Writer::create(dir.path(), "r").expect("create");
        w.mailbox(b"d/a/dovecot-uidlist", uids("1", "2"));
        w.mailbox(b"d/\xff/dovecot-uidlist", uids("3", "4"));
        w.commit().expect("commit");
        let got = all(dir.path());
        assert_eq!(got.len(), 2, "{got:?}");
        let Entry::Mailbox(m) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(m.key(), b"d/\xff/dovecot-uidlist");
        assert_eq!(m.path, "d/\u{fffd}/dovecot-uidlist");
    }

    /// A record of an older cmfleet (one object) reads as the same entries.
    #[test]
    fn an_older_record_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Cutover {
            mailboxes: BTreeMap::from([("d/a/dovecot-uidlist".to_string(), uids("1", "2"))]),
            queue: vec![Queued {
                queue: "active".into(),
                id: "Q1".into(),
            }],
        };
        let path = cutover_path(dir.path(), "r");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, serde_json::to_vec_pretty(&old).expect("json")).expect("write");
        let got = all(dir.path());
        assert_eq!(
            got,
            vec![
                Entry::Queued(old.queue[0].clone()),
                Entry::Mailbox(Mailbox::new(b"d/a/dovecot-uidlist", uids("1", "2"))),
            ]
        );
    }
}
