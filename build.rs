//! Records the git commit cmfleet is built from (`cmfleet --version`, the reports)
//! as `CMFLEET_BUILD_COMMIT`: `git rev-parse --short=12 HEAD` in a checkout, and
//! "unknown" where there is none (a source tarball) or git cannot say.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = if root.join(".git").exists() {
        watch_head(&root);
        git(&root, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
    } else {
        "unknown".into()
    };
    println!("cargo:rustc-env=CMFLEET_BUILD_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
}

/// `git -C root ARGS`'s trimmed output, or `None` when git is missing or fails.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// Reruns this script when HEAD moves: HEAD itself (a checkout of another branch or
/// commit) and the ref it points to (a commit on the branch). `--git-path` finds
/// both in a linked worktree too, where `.git` is a file and the refs are shared.
/// A ref that is packed has no file of its own: then the folder it would appear in
/// and `packed-refs` are watched (a missing file would rerun the script every build).
fn watch_head(root: &Path) {
    let path = |name: &str| git(root, &["rev-parse", "--git-path", name]).map(|p| root.join(p));
    if let Some(head) = path("HEAD") {
        println!("cargo:rerun-if-changed={}", head.display());
    }
    let Some(reference) = git(root, &["symbolic-ref", "-q", "HEAD"]) else {
        return; // A detached HEAD: the HEAD file holds the commit.
    };
    match path(&reference) {
        Some(file) if file.exists() => println!("cargo:rerun-if-changed={}", file.display()),
        Some(file) => {
            if let Some(dir) = file.parent().filter(|d| d.exists()) {
                println!("cargo:rerun-if-changed={}", dir.display());
            }
            if let Some(packed) = path("packed-refs").filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", packed.display());
            }
        }
        None => {}
    }
}
