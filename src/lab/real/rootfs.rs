//! The Debian 12 root filesystem every real lab host boots, built once by mmdebstrap
//! from the machine's Debian mirror and cached in `CACHE/<key>/rootfs`. The key hashes
//! everything the rootfs is made of (suite, variant, packages, apt sources, the
//! customize hook and the machine's CA certificates and pip.conf it copies in), so a
//! change to any of them builds a new one beside the old. A build runs in
//! `CACHE/.build-<key>-<pid>` and is renamed into place when complete: a killed build
//! never leaves a half rootfs under the key, and the next build clears it away. Hosts
//! never write to it: each boots an overlay of it (see `container`).
//!
//! The packages are what a chatmail deploy needs before it can start (cmdeploy opens
//! an ssh session, runs python3 and `dig`, reads DKIM keys with openssl, checks ports
//! with `ss`, and pyinfra uses apt, systemctl, curl and rsync) plus a booting systemd;
//! chatmail's deployers install everything else with apt themselves.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::super::error::{LabError, Result};
use super::super::process::{log_tail, show};
use super::lock;
use super::sources::debian_sources;

/// Debian 12.
pub const SUITE: &str = "bookworm";

/// mmdebstrap's variant: Essential packages and apt; the rest is listed explicitly so
/// the key says exactly what is in the rootfs.
const VARIANT: &str = "apt";

/// The packages on top of the variant.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "ca-certificates",
    "iproute2",
    "rsync",
    "curl",
    // chatmail's deploy makes sure of cron; a real VPS has it.
    "cron",
    // `dig`: cmdeploy's DNS check installs it otherwise (an apt run inside every deploy).
    "bind9-dnsutils",
    // cmdeploy reads a relay's DKIM key with openssl.
    "openssl",
    // ps, for pyinfra facts and operators.
    "procps",
    // /etc/services and /etc/protocols, which daemons and Python look up.
    "netbase",
];

/// The customize hook (shell, run by mmdebstrap with the rootfs as $1).
const CUSTOMIZE: &str = include_str!("../assets/rootfs-customize");

/// Where the machine's extra CA certificates are (copied in by the hook).
const LOCAL_CAS: &str = "/usr/local/share/ca-certificates";

/// The machine's pip configuration (copied in by the hook).
const PIP_CONF: &str = "/etc/pip.conf";

/// A cached rootfs, ready to boot.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The root directory (`CACHE/<key>/rootfs`).
    pub dir: PathBuf,
    /// How long the build took if this call built it; `None` if it was cached.
    pub built: Option<Duration>,
}

/// The rootfs for the current package list and machine, built now if the cache under
/// `cache` has none. Concurrent callers wait for one build.
pub fn ensure(cache: &Path) -> Result<Rootfs> {
    let sources = debian_sources(Path::new("/etc/apt"), SUITE);
    let key = key(&sources)?;
    fs::create_dir_all(cache).map_err(LabError::io(format!("create {}", cache.display())))?;
    let _lock = lock::exclusive(&cache.join(format!("{key}.lock")))?;
    let done = cache.join(&key);
    let dir = done.join("rootfs");
    if dir.is_dir() {
        return Ok(Rootfs { dir, built: None });
    }
    clear_stale_builds(cache, &key)?;
    let started = Instant::now();
    let build = cache.join(format!(".build-{key}-{}", std::process::id()));
    fs::create_dir(&build).map_err(LabError::io(format!("create {}", build.display())))?;
    let log = cache.join(format!("{key}.log"));
    match run_mmdebstrap(&build, &sources, &log) {
        Ok(()) => {}
        Err(e) => {
            let _ = fs::remove_dir_all(&build);
            return Err(e);
        }
    }
    fs::rename(&build, &done).map_err(LabError::io(format!(
        "rename {} to {}",
        build.display(),
        done.display()
    )))?;
    Ok(Rootfs {
        dir,
        built: Some(started.elapsed()),
    })
}

/// Builds into `build/rootfs`, with the hook and a list of what went in beside it.
fn run_mmdebstrap(build: &Path, sources: &[String], log: &Path) -> Result<()> {
    let hook = build.join("customize");
    fs::write(&hook, CUSTOMIZE).map_err(LabError::io(format!("write {}", hook.display())))?;
    let manifest = build.join("packages.txt");
    let text = format!(
        "# cmfleet real lab rootfs: mmdebstrap --variant={VARIANT} {SUITE}\n{}\n# sources\n{}\n",
        PACKAGES.join("\n"),
        sources.join("\n")
    );
    fs::write(&manifest, text).map_err(LabError::io(format!("write {}", manifest.display())))?;
    let out = File::create(log).map_err(LabError::io(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(LabError::io(format!("open {}", log.display())))?;
    let mut cmd = Command::new("unshare");
    // In a mount namespace of its own: the /proc, /sys and /dev that mmdebstrap mounts
    // into the build vanish with it even when it is killed, so removing a stale build
    // never descends into the machine's /dev.
    cmd.args(["-m", "--propagation", "private", "--", "mmdebstrap"])
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!(
            "--customize-hook=sh {} \"$1\"",
            hook.to_string_lossy()
        ))
        .arg(SUITE)
        .arg(build.join("rootfs"))
        .args(sources)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let shown = show(&cmd);
    let status = cmd
        .status()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    if status.success() {
        return Ok(());
    }
    Err(LabError::RootfsBuild {
        detail: format!("`{shown}` failed ({status}): {}", log_tail(log)),
        log: log.to_path_buf(),
    })
}

/// Removes what killed builds of `key` left (`.build-<key>-*`). Called with the key's
/// lock held, so no build of it runs. A build dir with something mounted inside is
/// refused rather than removed.
fn clear_stale_builds(cache: &Path, key: &str) -> Result<()> {
    let prefix = format!(".build-{key}-");
    let rd = fs::read_dir(cache).map_err(LabError::io(format!("list {}", cache.display())))?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let p = e.path();
        let inside = format!("{}/", p.to_string_lossy());
        if mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| m.starts_with(&inside))
        {
            return Err(LabError::RootfsBuild {
                detail: format!(
                    "a killed build left mounts inside {}; unmount them, then remove it",
                    p.display()
                ),
                log: cache.join(format!("{key}.log")),
            });
        }
        fs::remove_dir_all(&p).map_err(LabError::io(format!("remove {}", p.display())))?;
    }
    Ok(())
}

/// The cache key: the first 16 hex digits of a SHA-256 over what the rootfs is made of.
fn key(sources: &[String]) -> Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |name: &str, bytes: &[u8]| {
        // Length-prefixed, so no two different inputs hash the same way.
        ctx.update(format!("{name} {}\n", bytes.len()).as_bytes());
        ctx.update(bytes);
    };
    part("suite", SUITE.as_bytes());
    part("variant", VARIANT.as_bytes());
    part("packages", PACKAGES.join(",").as_bytes());
    part("sources", sources.join("\n").as_bytes());
    part("customize", CUSTOMIZE.as_bytes());
    let mut cas = Vec::new();
    files_under(Path::new(LOCAL_CAS), &mut cas)?;
    cas.sort();
    for p in cas {
        let bytes = fs::read(&p).map_err(LabError::io(format!("read {}", p.display())))?;
        part(&p.to_string_lossy(), &bytes);
    }
    match fs::read(PIP_CONF) {
        Ok(bytes) => part(PIP_CONF, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(LabError::io(format!("read {PIP_CONF}"))(e)),
    }
    let digest = ctx.finish();
    Ok(digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Every regular file below `dir` (none if it does not exist).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LabError::io(format!("list {}", dir.display()))(e)),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}
