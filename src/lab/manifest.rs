//! Tree manifests: what a directory holds, to compare an OLD host with a NEW one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::{LabError, Result};

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// One entry of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// Size in bytes for files and symlinks; 0 for directories (their size depends on
    /// the filesystem, not the content).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
}

/// Relative path ("" is the root itself) -> entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest(pub BTreeMap<String, Entry>);

impl Manifest {
    /// Walks `root` (not following symlinks).
    pub fn of(root: &Path) -> Result<Manifest> {
        let mut m = BTreeMap::new();
        walk(root, "", &mut m)?;
        Ok(Manifest(m))
    }

    /// Differences from `self` (the reference, e.g. OLD) to `other` (e.g. NEW), one line
    /// each: missing, extra, or which fields differ. Empty when equal.
    pub fn diff(&self, other: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        for (p, a) in &self.0 {
            match other.0.get(p) {
                None => out.push(format!("missing: /{p}")),
                Some(b) if a != b => out.push(format!("differs: /{p}: {a} vs {b}")),
                Some(_) => {}
            }
        }
        for p in other.0.keys().filter(|p| !self.0.contains_key(*p)) {
            out.push(format!("extra: /{p}"));
        }
        out
    }

    /// Number of regular files.
    pub fn files(&self) -> usize {
        self.0.values().filter(|e| e.kind == Kind::File).count()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} size={} mtime={} owner={}:{} mode={:o}",
            self.kind, self.size, self.mtime, self.uid, self.gid, self.mode
        )
    }
}

fn walk(path: &Path, rel: &str, out: &mut BTreeMap<String, Entry>) -> Result<()> {
    let md =
        fs::symlink_metadata(path).map_err(LabError::io(format!("stat {}", path.display())))?;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    out.insert(
        rel.to_string(),
        Entry {
            kind,
            size: if kind == Kind::Dir { 0 } else { md.size() },
            mtime: md.mtime(),
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
        },
    );
    if kind == Kind::Dir {
        let rd = fs::read_dir(path).map_err(LabError::io(format!("list {}", path.display())))?;
        for e in rd {
            let e = e.map_err(LabError::io(format!("list {}", path.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(&e.path(), &child, out)?;
        }
    }
    Ok(())
}
