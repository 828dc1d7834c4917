//! The pool of cmdeploy workspaces.
//!
//! Concurrent `cmdeploy run`s from one checkout corrupt each other: each deletes and
//! rebuilds `chatmaild/dist` relative to its working directory, and renders the
//! relay's website into `www/build` of the repository its imported `cmdeploy`
//! package lives in (`www.py`, `get_paths`). So cmfleet keeps K git worktrees of the
//! operator's checkout in its staging directory, each with a `venv` link to the
//! checkout's one venv, and each run borrows one for its duration, with the
//! workspace's own `cmdeploy/src` and `chatmaild/src` first on `PYTHONPATH` (the
//! venv's editable install points at the operator's checkout, so without it every
//! run would render into one `www/build`, from templates of whatever commit that
//! checkout has). K is the cmdeploy concurrency limit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::step::Commit;

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error("{} does not look like scripts/cmdeploy inside a chatmail relay checkout (hint: set fleet.cmdeploy to <checkout>/scripts/cmdeploy)", path.display())]
    NotACheckout { path: PathBuf },
    #[error("cannot create cmdeploy workspace {}: {reason}", path.display())]
    Create { path: PathBuf, reason: String },
    #[error("the chatmail relay checkout {} has uncommitted changes ({files}): cmfleet deploys what is committed, so they would be silently left out (hint: commit or stash them, then run again)", checkout.display())]
    Dirty { checkout: PathBuf, files: String },
    #[error("cannot read the commit of the chatmail relay checkout {}: {reason}", checkout.display())]
    Head { checkout: PathBuf, reason: String },
}

/// A borrowed workspace; returned to the pool on drop.
pub struct Workspace<'a> {
    pool: &'a WorkspacePool,
    dir: Option<PathBuf>,
    _permit: OwnedSemaphorePermit,
}

impl Workspace<'_> {
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new("."))
    }
}

impl Drop for Workspace<'_> {
    fn drop(&mut self) {
        if let (Some(dir), Ok(mut free)) = (self.dir.take(), self.pool.free.lock()) {
            free.push(dir);
        }
    }
}

pub struct WorkspacePool {
    free: Mutex<Vec<PathBuf>>,
    permits: std::sync::Arc<Semaphore>,
    /// Urgent borrowers waiting right now.
    urgent_waiting: AtomicUsize,
    /// `scripts/cmdeploy` relative to a workspace.
    pub script: PathBuf,
    /// The checkout's commit every workspace is at: what this run deploys.
    pub commit: Commit,
}

/// Counts an urgent borrower while it waits.
struct UrgentWait<'a>(&'a AtomicUsize);

impl<'a> UrgentWait<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        UrgentWait(counter)
    }
}

impl Drop for UrgentWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkspacePool {
    /// The checkout owning `cmdeploy` and the script's path inside it; checks only,
    /// creates nothing (so a run can refuse a wrong path before touching any state).
    pub fn checkout_of(cmdeploy: &Path) -> Result<(PathBuf, PathBuf), WorkspaceError> {
        let not_checkout = || WorkspaceError::NotACheckout {
            path: cmdeploy.to_path_buf(),
        };
        let checkout = cmdeploy
            .parent()
            .filter(|p| p.ends_with("scripts"))
            .and_then(Path::parent)
            .ok_or_else(not_checkout)?;
        if !cmdeploy.is_file() || !checkout.join(".git").exists() {
            return Err(not_checkout());
        }
        let script = cmdeploy
            .strip_prefix(checkout)
            .map_err(|_| not_checkout())?
            .to_path_buf();
        Ok((checkout.to_path_buf(), script))
    }

    /// Creates (or reuses) `k` worktrees of the checkout owning `cmdeploy` under `root`.
    pub fn prepare(
        cmdeploy: &Path,
        root: &Path,
        k: usize,
    ) -> Result<WorkspacePool, WorkspaceError> {
        let (checkout, script) = Self::checkout_of(cmdeploy)?;
        let checkout = checkout.as_path();
        // What the checkout holds now, not what it held when the worktrees were
        // made: after a `git pull` the next run deploys the new version.
        let commit = head_of(checkout)?;
        let mut dirs = Vec::with_capacity(k);
        // A cmdeploy left running by a controller that was killed (SIGKILL, a lost
        // terminal) still works in its worktree: sharing it would break both runs,
        // so such a worktree is passed over and the pool takes the next one.
        let busy = busy_dirs(root);
        for i in 0.. {
            if dirs.len() == k {
                break;
            }
            let dir = root.join(format!("w{i}"));
            if busy.iter().any(|b| b.starts_with(&dir)) {
                continue;
            }
            if !dir.join(&script).is_file() {
                add_worktree(checkout, &dir)?;
            }
            if git(&dir, &["rev-parse", "HEAD"]).ok().as_deref() != Some(commit.as_str()) {
                git(
                    &dir,
                    &[
                        "checkout",
                        "--quiet",
                        "--force",
                        "--detach",
                        commit.as_str(),
                    ],
                )
                .map_err(|reason| WorkspaceError::Create {
                    path: dir.clone(),
                    reason,
                })?;
            }
            link_venv(checkout, &dir)?;
            dirs.push(dir);
        }
        Ok(WorkspacePool {
            free: Mutex::new(dirs),
            permits: std::sync::Arc::new(Semaphore::new(k)),
            urgent_waiting: AtomicUsize::new(0),
            script,
            commit,
        })
    }

    /// Waits for a free workspace. `urgent` borrowers (a relay that is down) go
    /// first: the others give a workspace back while one of them waits.
    pub async fn borrow(&self, urgent: bool) -> Option<Workspace<'_>> {
        let _waiting = urgent.then(|| UrgentWait::new(&self.urgent_waiting));
        let permit = loop {
            let permit = self.permits.clone().acquire_owned().await.ok()?;
            if urgent || self.urgent_waiting.load(Ordering::SeqCst) == 0 {
                break permit;
            }
            drop(permit);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let dir = self.free.lock().ok()?.pop();
        Some(Workspace {
            pool: self,
            dir,
            _permit: permit,
        })
    }

    /// Whether a workspace is free right now (to report "waiting: cmdeploy limit").
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Working directories of running processes under `root` (Linux's /proc; a process
/// of another user that cannot be read is not ours to worry about).
fn busy_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|p| std::fs::read_link(p.path().join("cwd")).ok())
        .filter(|cwd| cwd.starts_with(root))
        .collect()
}

/// `git -C dir ARGS`, its trimmed stdout, or why it failed.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The checkout's HEAD commit, refusing uncommitted changes to tracked files
/// (untracked ones, like `venv/` and build outputs, are not deployed anyway).
fn head_of(checkout: &Path) -> Result<Commit, WorkspaceError> {
    let head = |reason| WorkspaceError::Head {
        checkout: checkout.to_path_buf(),
        reason,
    };
    let changed = git(checkout, &["diff", "--name-only", "HEAD"]).map_err(head)?;
    if !changed.is_empty() {
        let files: Vec<&str> = changed.lines().take(5).collect();
        return Err(WorkspaceError::Dirty {
            checkout: checkout.to_path_buf(),
            files: files.join(", "),
        });
    }
    let id = git(checkout, &["rev-parse", "HEAD"]).map_err(head)?;
    Commit::new(&id).map_err(|e| head(e.to_string()))
}

fn add_worktree(checkout: &Path, dir: &Path) -> Result<(), WorkspaceError> {
    let fail = |reason: String| WorkspaceError::Create {
        path: dir.to_path_buf(),
        reason,
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let _ = std::process::Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["worktree", "prune"])
        .output();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["worktree", "add", "--force", "--detach"])
        .arg(dir)
        .arg("HEAD")
        .output()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Every workspace uses the checkout's one venv (it is large and read-only here).
fn link_venv(checkout: &Path, dir: &Path) -> Result<(), WorkspaceError> {
    let venv = checkout.join("venv");
    let link = dir.join("venv");
    if venv.exists() && std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&venv, &link).map_err(|e| WorkspaceError::Create {
            path: link.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WorkspacePool;
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    /// Runs git in `dir`; the test fails if git does.
    fn git(dir: &std::path::Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .expect("git")
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    /// A minimal chatmail relay checkout: a git repository with scripts/cmdeploy.
    fn checkout(dir: &std::path::Path) -> std::path::PathBuf {
        let scripts = dir.join("scripts");
        std::fs::create_dir_all(&scripts).expect("mkdir");
        std::fs::write(scripts.join("cmdeploy"), "#!/bin/sh\n").expect("write");
        git(dir, &["init", "-q"]);
        git(dir, &["add", "."]);
        git(dir, &["commit", "-qm", "x"]);
        scripts.join("cmdeploy")
    }

    /// A worktree where a process still works (a cmdeploy orphaned by a killed
    /// controller) is passed over: the pool uses the next one.
    #[test]
    fn a_worktree_in_use_by_a_leftover_process_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmdeploy = checkout(&dir.path().join("relay"));
        let root = dir.path().join("ws");
        drop(WorkspacePool::prepare(&cmdeploy, &root, 2).expect("pool"));
        let mut leftover = Command::new("sleep")
            .arg("30")
            .current_dir(root.join("w0"))
            .spawn()
            .expect("sleep");
        let pool = WorkspacePool::prepare(&cmdeploy, &root, 2);
        let _ = leftover.kill();
        let _ = leftover.wait();
        let free = pool.expect("pool").free.into_inner().expect("lock");
        assert_eq!(free, [root.join("w1"), root.join("w2")]);
    }

    /// After the operator updates the checkout (a new commit), the next run's
    /// workspaces are at that commit; uncommitted changes are refused, not ignored.
    #[test]
    fn workspaces_follow_the_checkout_and_a_dirty_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = dir.path().join("relay");
        let cmdeploy = checkout(&relay);
        let root = dir.path().join("ws");
        let first = WorkspacePool::prepare(&cmdeploy, &root, 2).expect("pool");
        std::fs::write(relay.join("scripts/cmdeploy"), "#!/bin/sh\necho v2\n").expect("edit");
        let dirty = WorkspacePool::prepare(&cmdeploy, &root, 2)
            .err()
            .map(|e| e.to_string());
        assert!(
            dirty
                .as_deref()
                .is_some_and(|e| e.contains("uncommitted changes (scripts/cmdeploy)")),
            "{dirty:?}"
        );
        git(&relay, &["commit", "-qam", "v2"]);
        let second = WorkspacePool::prepare(&cmdeploy, &root, 2).expect("pool");
        assert_ne!(first.commit, second.commit);
        for w in ["w0", "w1"] {
            let text =
                std::fs::read_to_string(root.join(w).join("scripts/cmdeploy")).expect("read");
            assert!(text.contains("v2"), "{w} still deploys the old version");
        }
    }

    /// A relay that is down gets the next workspace before pre-staging runs that
    /// queued earlier.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_borrowers_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmdeploy = checkout(&dir.path().join("relay"));
        let pool =
            Arc::new(WorkspacePool::prepare(&cmdeploy, &dir.path().join("ws"), 1).expect("pool"));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = pool.borrow(false).await.expect("first");
        let spawn = |name: &'static str, urgent: bool| {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                let _ws = pool.borrow(urgent).await.expect("workspace");
                order.lock().expect("lock").push(name);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            })
        };
        let prestage = spawn("pre-staging", false);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let cutover = spawn("cutover", true);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        let _ = tokio::join!(prestage, cutover);
        assert_eq!(*order.lock().expect("lock"), ["cutover", "pre-staging"]);
    }
}
