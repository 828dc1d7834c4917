//! The lab's chatmail relay checkout, DIR/relay: a clone of the relay repository at
//! the chosen ref on a branch `cmfleet-lab`, plus the lab's overlay commit. It is
//! cloned and patched in a partial directory and renamed into place, so a checkout
//! at DIR/relay is always whole; one already there is reused only if it is the same.

use std::fs;
use std::path::Path;

use super::git::{clone, git, resolve, LAB_NAME};
use super::overlay::{self, Overlay, COMMIT_SUBJECT, OVERLAYS};
use super::source::RelaySource;
use crate::lab::error::{LabError, Result};

/// The branch holding the overlay commit.
pub const BRANCH: &str = "cmfleet-lab";

/// Makes `dest` the lab's checkout of `source` (or checks that it already is).
pub fn ensure(source: &RelaySource, dest: &Path) -> Result<&'static Overlay> {
    if dest.exists() {
        return existing(source, dest);
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = dest.with_file_name(format!(".{name}.partial"));
    if partial.exists() {
        // Left by an interrupted run: nothing in it is worth keeping.
        fs::remove_dir_all(&partial)
            .map_err(LabError::io(format!("remove {}", partial.display())))?;
    }
    let made = clone_and_patch(source, &partial);
    if made.is_err() {
        // Best effort: a partial directory is replaced by the next attempt anyway.
        let _ = fs::remove_dir_all(&partial);
    }
    let applied = made?;
    fs::rename(&partial, dest).map_err(LabError::io(format!(
        "rename {} to {}",
        partial.display(),
        dest.display()
    )))?;
    Ok(applied)
}

/// Clones `source` into `partial`, checks out its ref on `BRANCH` and commits the overlay.
fn clone_and_patch(source: &RelaySource, partial: &Path) -> Result<&'static Overlay> {
    let parent = partial.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(LabError::io(format!("create {}", parent.display())))?;
    clone(&source.repo, partial)?;
    let commit = resolve(partial, &source.reference).ok_or_else(|| LabError::UnknownRef {
        repo: source.repo.clone(),
        reference: source.reference.clone(),
    })?;
    git(partial, &["checkout", "-q", "-b", BRANCH, &commit])?;
    overlay::apply(partial, &source.reference)
}

/// The overlay of a checkout already at `dest`, if it is the lab's checkout of
/// `source`: HEAD is an overlay commit by the lab whose parent is the ref's commit.
fn existing(source: &RelaySource, dest: &Path) -> Result<&'static Overlay> {
    let mismatch = |detail: String| LabError::CheckoutMismatch {
        path: dest.to_path_buf(),
        reference: source.reference.clone(),
        detail,
    };
    let head = git(dest, &["log", "-1", "--format=%an%x00%s"])
        .map_err(|e| mismatch(format!("not a git checkout ({e})")))?;
    let (author, subject) = head.split_once('\0').unwrap_or((&head, ""));
    if author != LAB_NAME || !subject.starts_with(COMMIT_SUBJECT) {
        return Err(mismatch(format!(
            "HEAD is {subject:?} by {author}, not the lab's overlay commit"
        )));
    }
    let parent = git(dest, &["rev-parse", "HEAD^"])?;
    if resolve(dest, &source.reference).as_deref() != Some(parent.as_str()) {
        return Err(mismatch(format!(
            "the overlay sits on {parent}, not on `{}`",
            source.reference
        )));
    }
    OVERLAYS
        .iter()
        .find(|o| subject.contains(o.name))
        .ok_or_else(|| mismatch(format!("unknown overlay in {subject:?}")))
}
