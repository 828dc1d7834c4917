//! Whole-file writes: a reader (or a crash) sees the old file or the new one, never
//! half of one. Temp file in the same directory, fsync, rename, fsync of the
//! directory. Files are created 0600: everything cmfleet keeps names hosts, errors
//! and command output.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = Writer::create(path)?;
    w.write_all(bytes)?;
    w.commit()
}

/// A file written piece by piece that replaces `path` only on [`Writer::commit`]
/// (a record too large to build in memory first); dropped uncommitted, its temp
/// file is removed and `path` is untouched.
pub struct Writer {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map_or("file".into(), |n| n.to_string_lossy());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        // A litter temp file of a crashed run may be another user's or too open:
        // the file is created fresh.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(Writer {
            path: path.to_path_buf(),
            dir,
            tmp,
            file: Some(BufWriter::new(f)),
        })
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> std::io::Result<()> {
        let Some(buf) = self.file.take() else {
            return Ok(());
        };
        let result = (|| {
            let f = buf.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            // Best effort: a leftover temp file is litter, not a lie.
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the file was committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
