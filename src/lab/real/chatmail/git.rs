//! git as the real-chatmail lab runs it: with the lab's identity and none of the
//! operator's settings that would change what a commit is (signing, hooks).

use std::path::Path;
use std::process::Command;

use crate::lab::error::{LabError, Result};
use crate::lab::process::run;

/// The author and committer of the lab's overlay commit.
pub const LAB_NAME: &str = "cmfleet lab";
/// Their address (`.invalid`: never mail).
pub const LAB_EMAIL: &str = "lab@cmfleet.invalid";

/// `git ARGS` in `dir`; its stdout, trimmed at the end.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    run(command(dir).args(args)).map(|s| s.trim_end().to_string())
}

/// A `git` command in `dir` with the lab's identity; an operator's `commit.gpgsign`
/// would otherwise ask for a key in the middle of `lab up`.
pub fn command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(["-c", &format!("user.name={LAB_NAME}")])
        .args(["-c", &format!("user.email={LAB_EMAIL}")])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args([
            "-c",
            "advice.detachedHead=false",
            "-c",
            "init.defaultBranch=main",
        ])
        // The operator's environment must not redirect git to another repository.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    c
}

/// `git clone --no-checkout REPO DEST`, both made absolute first (git runs from `/`,
/// so a relative path given by the operator must not be read against another dir).
pub fn clone(repo: &Path, dest: &Path) -> Result<()> {
    let abs =
        |p: &Path| std::path::absolute(p).map_err(LabError::io(format!("resolve {}", p.display())));
    let (repo, dest) = (abs(repo)?, abs(dest)?);
    git(
        Path::new("/"),
        &[
            "clone",
            "-q",
            "--no-checkout",
            "--",
            &repo.to_string_lossy(),
            &dest.to_string_lossy(),
        ],
    )
    .map(|_| ())
}

/// The commit `reference` names in the repository at `dir` (a tag, a local or a
/// cloned branch, or a commit), or `None`.
pub fn resolve(dir: &Path, reference: &str) -> Option<String> {
    [reference.to_string(), format!("origin/{reference}")]
        .iter()
        .find_map(|r| {
            git(
                dir,
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{r}^{{commit}}"),
                ],
            )
            .ok()
            .filter(|s| !s.is_empty())
        })
}
