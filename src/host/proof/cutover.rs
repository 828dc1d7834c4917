//! What OLD served at the cutover, as step 4's proof saw it: `verify`'s reference for
//! what a mail client sees, kept on the controller so it outlives OLD.
//!
//! A client such as Delta Chat tracks each mailbox by UIDVALIDITY and UIDs: NEW must
//! present every mailbox with OLD's UIDVALIDITY and at least OLD's UIDNEXT, or clients
//! forget what they fetched. And the Postfix queue NEW took over must drain from NEW:
//! its queue IDs on NEW (after `postsuper -s` renamed them) are recorded so `verify`
//! can tell which are still queued and which NEW's Postfix delivered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One mailbox's IMAP identity, from its `dovecot-uidlist` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uids {
    pub uidvalidity: String,
    pub uidnext: String,
}

/// One queue file NEW took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The queue directory (`deferred`, `active`, ...).
    pub queue: String,
    /// Its queue ID (file name) on NEW.
    pub id: String,
}

/// The record of one relay's cutover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutover {
    /// By the uidlist's path under /home/vmail/mail (for people: invalid UTF-8
    /// replaced), OLD's UIDVALIDITY and UIDNEXT.
    pub mailboxes: BTreeMap<String, Uids>,
    /// OLD's Postfix queue, as NEW holds it.
    pub queue: Vec<Queued>,
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

impl Cutover {
    /// The record of `relay`, `None` if step 4 never recorded one (an older cmfleet,
    /// or another controller).
    pub fn load(state_dir: &Path, relay: &str) -> Result<Option<Cutover>, CutoverError> {
        let path = cutover_path(state_dir, relay);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CutoverError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CutoverError::Parse { path, source })
    }

    pub fn save(&self, state_dir: &Path, relay: &str) -> Result<(), CutoverError> {
        let path = cutover_path(state_dir, relay);
        let write = || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            crate::infra::atomic::write(&path, &json)
        };
        write().map_err(|source| CutoverError::Write {
            path: path.clone(),
            source,
        })
    }
}
