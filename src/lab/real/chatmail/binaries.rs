//! The binaries chatmail's deploy would download from GitHub, made from what this
//! machine reaches and cached in /var/cache/cmfleet-lab/bin/ (they never change, and a
//! cold build takes minutes):
//! - chatmail-turn: `cargo build --release` of the chatmail-turn bundle at the tag the
//!   relay downloads;
//! - iroh-relay: `cargo install iroh-relay --version V --features server --locked`
//!   from crates.io;
//! - mtail: Debian's `mtail` package (`apt-get download`, `dpkg-deb -x`).
//!
//! Each is built under a lock, in a build directory of its own (its own
//! CARGO_TARGET_DIR, never cmfleet's), copied to a temporary name and renamed into the
//! cache, so a cached file is always whole; one that is there is never rebuilt. The
//! build directory is deleted after a success and kept after a failure (its
//! `build.log`, and cargo's work so far for the next attempt).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::git::{clone, git, resolve};
use super::wanted::Wanted;
use crate::lab::error::{LabError, Result};
use crate::lab::process::{log_tail, show};

/// The machine-wide cache: `bin/` holds the binaries, `build/` the builds under way.
pub const DEFAULT_CACHE: &str = "/var/cache/cmfleet-lab";

/// A binary in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    /// The name the deploy installs it as (/usr/local/bin/NAME).
    pub name: &'static str,
    /// Its file in the cache's `bin/`, named with its version.
    pub path: PathBuf,
    /// How long this call took to build it; `None` if it was cached.
    pub built_in: Option<Duration>,
}

/// Makes sure every binary `wanted` names is in `cache`, building what is missing.
pub fn ensure(cache: &Path, turn_bundle: &Path, wanted: &Wanted) -> Result<Vec<Binary>> {
    let mut out = Vec::new();
    if let Some(tag) = &wanted.chatmail_turn {
        out.push(cached(cache, "chatmail-turn", tag, |build| {
            build_turn(build, turn_bundle, tag)
        })?);
    }
    if let Some(version) = &wanted.iroh_relay {
        out.push(cached(
            cache,
            "iroh-relay",
            &format!("v{version}"),
            |build| build_iroh(build, version),
        )?);
    }
    if wanted.mtail {
        out.push(cached(cache, "mtail", "debian", debian_mtail)?);
    }
    Ok(out)
}

/// The cached `NAME-VERSION`, made by `make` (which returns the file it produced
/// inside the build directory it is given) if it is not there yet.
fn cached(
    cache: &Path,
    name: &'static str,
    version: &str,
    make: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<Binary> {
    let key = format!("{name}-{version}");
    let bin = cache.join("bin");
    fs::create_dir_all(&bin).map_err(LabError::io(format!("create {}", bin.display())))?;
    let path = bin.join(&key);
    // Two labs starting at once must not build the same thing twice on a shared
    // 2-core machine: the second waits for the first and then finds it cached.
    let lock_path = bin.join(format!(".{key}.lock"));
    let lock = File::create(&lock_path)
        .map_err(LabError::io(format!("create {}", lock_path.display())))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, errno)| {
        LabError::io(format!("lock {}", lock_path.display()))(errno.into())
    })?;
    if path.is_file() {
        return Ok(Binary {
            name,
            path,
            built_in: None,
        });
    }
    let build = cache.join("build").join(&key);
    fs::create_dir_all(&build).map_err(LabError::io(format!("create {}", build.display())))?;
    eprintln!(
        "lab: building {key} into {} (once per machine; minutes; log: {})",
        path.display(),
        build.join("build.log").display()
    );
    let started = Instant::now();
    let produced = make(&build)?;
    let tmp = bin.join(format!(".{key}.tmp"));
    fs::copy(&produced, &tmp).map_err(LabError::io(format!(
        "copy {} to {}",
        produced.display(),
        tmp.display()
    )))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .map_err(LabError::io(format!("chmod {}", tmp.display())))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(LabError::io(format!("sync {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(LabError::io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    let built_in = started.elapsed();
    eprintln!("lab: built {key} in {:.0} s", built_in.as_secs_f64());
    fs::remove_dir_all(&build).map_err(LabError::io(format!("remove {}", build.display())))?;
    Ok(Binary {
        name,
        path,
        built_in: Some(built_in),
    })
}

/// chatmail-turn at `tag` from the bundle: `cargo build --release`, `--locked` only if
/// the lock file matches the manifest (v0.4's Cargo.lock still names version 0.1.0
/// while its Cargo.toml says 0.4.0, and `--locked` refuses that).
fn build_turn(build: &Path, bundle: &Path, tag: &str) -> Result<PathBuf> {
    let src = build.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).map_err(LabError::io(format!("remove {}", src.display())))?;
    }
    clone(bundle, &src)?;
    let commit = resolve(&src, tag).ok_or_else(|| LabError::UnknownRef {
        repo: bundle.to_path_buf(),
        reference: tag.to_string(),
    })?;
    git(&src, &["checkout", "-q", "--detach", &commit])?;
    let mut cargo = cargo(build);
    cargo.current_dir(&src).args(["build", "--release"]);
    if lock_matches_manifest(&src) {
        cargo.arg("--locked");
    }
    run_logged(&mut cargo, &build.join("build.log"))?;
    Ok(build.join("target/release/chatmail-turn"))
}

/// iroh-relay `version` from crates.io, with the dependency versions it was published
/// with (`--locked`), the relay server included (`--features server`).
fn build_iroh(build: &Path, version: &str) -> Result<PathBuf> {
    let root = build.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(LabError::io(format!("remove {}", root.display())))?;
    }
    let mut cargo = cargo(build);
    cargo
        .current_dir(build)
        .args(["install", "iroh-relay", "--version", version])
        .args(["--features", "server", "--locked", "--root"])
        .arg(&root);
    run_logged(&mut cargo, &build.join("build.log"))?;
    Ok(root.join("bin/iroh-relay"))
}

/// Debian's mtail binary (the Debian 12 hosts run Debian's libc, so a Debian build
/// fits; chatmail's is a static release from GitHub).
fn debian_mtail(build: &Path) -> Result<PathBuf> {
    let log = build.join("build.log");
    let download = || {
        let mut c = Command::new("apt-get");
        c.current_dir(build).args(["download", "mtail"]);
        run_logged(&mut c, &log)
    };
    if download().is_err() {
        // A fresh machine may have no package lists yet.
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        run_logged(&mut update, &log)?;
        download()?;
    }
    let deb = fs::read_dir(build)
        .map_err(LabError::io(format!("read {}", build.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mtail_") && n.ends_with(".deb"))
        })
        .ok_or_else(|| LabError::MissingTool {
            tool: "mtail_*.deb".into(),
            hint: "`apt-get download mtail` left no .deb; check the Debian mirror",
        })?;
    let tree = build.join("tree");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(&tree);
    run_logged(&mut extract, &log)?;
    Ok(tree.join("usr/bin/mtail"))
}

/// `cargo` with a target directory inside `build`, whatever the caller's is.
fn cargo(build: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.env("CARGO_TARGET_DIR", build.join("target"));
    c
}

/// Whether `Cargo.lock` pins the manifest's own package at the manifest's version.
/// Anything unreadable counts as no: cargo then updates the lock as it needs.
fn lock_matches_manifest(src: &Path) -> bool {
    let read = |name: &str| -> Option<toml::Table> {
        fs::read_to_string(src.join(name)).ok()?.parse().ok()
    };
    let (Some(manifest), Some(lock)) = (read("Cargo.toml"), read("Cargo.lock")) else {
        return false;
    };
    let Some(package) = manifest.get("package").and_then(|p| p.as_table()) else {
        return false;
    };
    let (name, version) = (package.get("name"), package.get("version"));
    lock.get("package")
        .and_then(|p| p.as_array())
        .is_some_and(|packages| {
            packages
                .iter()
                .any(|p| p.get("name") == name && p.get("version") == version && name.is_some())
        })
}

/// Runs `cmd` with stdout and stderr appended to `log`; a failure names the log.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let shown = show(cmd);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(LabError::io(format!("open {}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(LabError::io(format!("open {}", log.display())))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    if status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command: shown,
        status: status.to_string(),
        stderr: format!("{} (full log: {})", log_tail(log), log.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_naming_another_version_of_the_package_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "[package]\nname = \"chatmail-turn\"\nversion = \"0.4.0\"\n";
        fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        let lock = |v: &str| {
            format!("version = 4\n\n[[package]]\nname = \"anyhow\"\nversion = \"1.0.0\"\n\n[[package]]\nname = \"chatmail-turn\"\nversion = \"{v}\"\n")
        };
        fs::write(dir.path().join("Cargo.lock"), lock("0.1.0")).unwrap();
        assert!(!lock_matches_manifest(dir.path()));
        fs::write(dir.path().join("Cargo.lock"), lock("0.4.0")).unwrap();
        assert!(lock_matches_manifest(dir.path()));
        fs::remove_file(dir.path().join("Cargo.lock")).unwrap();
        assert!(!lock_matches_manifest(dir.path()));
    }
}
