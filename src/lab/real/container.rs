//! One real lab host's container: its own layer over the cached rootfs, booting it
//! with systemd-nspawn, waiting until it serves ssh with systemd up, and stopping it.
//!
//! Each host boots an overlay (lower: the cached rootfs, shared and never written;
//! upper: `DIR/hosts/NAME/upper`) instead of a copy: measured on this kind of machine
//! (ext4, 307 MiB and 12,000 files in the rootfs), `cp -a --reflink=auto` (ext4 cannot
//! reflink: a full copy) took 0.9 s per host with the cache warm and 2.4 s cold, the
//! overlay mount under 10 ms, and the overlay's layer holds only what the host changes.
//! The overlay is mounted by `assets/nspawn-boot` inside the container's own mount
//! namespace, so the machine never sees it and nothing stays mounted after the
//! container ends. Before boot, `up` writes the host's own files straight into its
//! upper layer (a file there hides the rootfs's file of the same path).

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{chown, Gid, Pid, Uid};

use super::super::error::{LabError, Result};
use super::super::process::{log_tail, run, show, ProcRecord, Stopped};
use super::net::RealNet;
use super::ssh;
use super::state::RealHost;

/// The boot script (shell, see its header).
pub const NSPAWN_BOOT: &str = include_str!("../assets/nspawn-boot");

/// The unbound drop-in: chatmail's deploy installs unbound and points resolv.conf at
/// it, but unbound cannot recurse from here (it answers SERVFAIL); forwarding every
/// zone to the machine's resolver makes it answer. Without DNSSEC validation: the
/// machine's resolver passes no DNSSEC records on (measured here: no DNSKEY for "."),
/// so Debian's validating unbound fails every answer, forwarded or not.
pub const UNBOUND_FORWARD: &str = "etc/unbound/unbound.conf.d/cmfleet-lab-forward.conf";

/// The files a host gets in its upper layer before it boots.
pub struct HostFiles<'a> {
    /// The rootfs, whose directories' owners and modes the layer's copy of them keep.
    pub lower: &'a Path,
    /// The line for root's authorized_keys (the lab key).
    pub authorized_key: &'a str,
    /// The nameservers for resolv.conf and unbound's forwarder.
    pub nameservers: &'a [Ipv4Addr],
}

/// Makes the host's directories and writes its own files into its upper layer: fresh
/// ssh host keys, a machine-id, hostname, root's authorized_keys, resolv.conf and the
/// unbound forwarder.
pub fn prepare(host: &RealHost, files: &HostFiles) -> Result<()> {
    let upper = host.upper();
    for d in [&upper, &host.work(), &host.root()] {
        fs::create_dir_all(d).map_err(LabError::io(format!("create {}", d.display())))?;
    }
    let write = |rel: &str, text: &str, mode: u32| write_file(files.lower, &upper, rel, text, mode);
    write("etc/hostname", &format!("{}\n", host.name), 0o644)?;
    // A machine-id of its own: journald, dbus and DHCP identify a machine by it, and
    // an empty one makes systemd run its first-boot wizard on the console.
    write("etc/machine-id", &format!("{}\n", machine_id()), 0o444)?;
    write(
        "root/.ssh/authorized_keys",
        &format!("{}\n", files.authorized_key.trim()),
        0o600,
    )?;
    let mut resolv = String::from("# The lab's resolver, written by cmfleet's lab\n");
    let mut forward = String::from(
        "# Written by cmfleet's lab: unbound cannot recurse from here, so it forwards\n\
         # every zone to the lab's resolver, which passes no DNSSEC records on:\n\
         # validation is off (it would fail every answer).\n\
         server:\n    module-config: \"iterator\"\n\
         forward-zone:\n    name: \".\"\n",
    );
    for ns in files.nameservers {
        resolv += &format!("nameserver {ns}\n");
        forward += &format!("    forward-addr: {ns}\n");
    }
    write("etc/resolv.conf", &resolv, 0o644)?;
    write(UNBOUND_FORWARD, &forward, 0o644)?;
    make_dirs_like(files.lower, &upper, Path::new("etc/ssh"))?;
    // `-A -f DIR` makes every key type sshd uses, under DIR/etc/ssh.
    run(Command::new("ssh-keygen")
        .args(["-q", "-A", "-f"])
        .arg(&upper))?;
    Ok(())
}

/// 32 hex digits, as /etc/machine-id holds.
fn machine_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `upper/rel` with `mode`, owned by root.
fn write_file(lower: &Path, upper: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    let rel = Path::new(rel);
    if let Some(parent) = rel.parent() {
        make_dirs_like(lower, upper, parent)?;
    }
    let path = upper.join(rel);
    // A file of the rootfs's in the way (a symlink for resolv.conf, say) is replaced.
    let _ = fs::remove_file(&path);
    fs::write(&path, text).map_err(LabError::io(format!("write {}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))
}

/// Creates each directory of `rel` under `upper` that is missing, with the owner and
/// mode of the same directory in `lower` (root 0755 where `lower` has none). Overlayfs
/// shows an upper directory's owner and mode, so a /root made 0755 here would make
/// the host's /root 0755, and sshd would refuse the authorized_keys below it.
fn make_dirs_like(lower: &Path, upper: &Path, rel: &Path) -> Result<()> {
    let mut sofar = std::path::PathBuf::new();
    for part in rel.components() {
        sofar.push(part);
        let dst = upper.join(&sofar);
        if dst.is_dir() {
            continue;
        }
        fs::create_dir(&dst).map_err(LabError::io(format!("create {}", dst.display())))?;
        let (uid, gid, mode) = match fs::metadata(lower.join(&sofar)) {
            Ok(m) if m.is_dir() => (m.uid(), m.gid(), m.mode() & 0o7777),
            // /root/.ssh is not in the rootfs; sshd wants it private.
            _ if sofar.ends_with(".ssh") => (0, 0, 0o700),
            _ => (0, 0, 0o755),
        };
        chown(&dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| LabError::io(format!("chown {}", dst.display()))(e.into()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
            .map_err(LabError::io(format!("chmod {}", dst.display())))?;
    }
    Ok(())
}

/// Starts the host's container, detached (a session of its own: the process that
/// calls `up` exits and the container runs on), with its console in `console.log`.
/// `boot_script` is `assets/nspawn-boot` written into the lab dir; `cgroups` the host's
/// cgroup directories, made before. Returns once systemd-nspawn runs, not booted.
pub fn spawn(
    host: &RealHost,
    net: RealNet,
    lower: &Path,
    boot_script: &Path,
    cgroups: &[std::path::PathBuf],
) -> Result<ProcRecord> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.console_log())
        .map_err(LabError::io(format!(
            "open {}",
            host.console_log().display()
        )))?;
    let log2 = log.try_clone().map_err(LabError::io(format!(
        "open {}",
        host.console_log().display()
    )))?;
    let mut cmd = Command::new("setsid");
    cmd.args(["unshare", "-m", "--propagation", "private", "--", "sh"])
        .arg(boot_script)
        .arg(lower)
        .arg(host.upper())
        .arg(host.work())
        .arg(host.root())
        .args(cgroups)
        .arg("--")
        .arg("--boot")
        // No systemd on the machine to register with or to ask for a scope.
        .arg("--register=no")
        .arg("--keep-unit")
        .arg(format!(
            "--network-namespace-path={}",
            net.netns_path(host.n()).display()
        ))
        // Unique on the machine: nspawn keeps per-machine files in /run by this name.
        .arg(format!("--machine={}", host.id))
        .arg(format!("--hostname={}", host.name))
        .arg("--console=read-only")
        // Nothing of the container in the machine's journal, resolv.conf or timezone.
        .arg("--link-journal=no")
        .arg("--resolv-conf=off")
        .arg("--timezone=off")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let shown = show(&cmd);
    let child = cmd
        .spawn()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    let pid = child.id() as i32;
    // The child is not waited for here: `down` reaps it if this process is still its
    // parent, init does otherwise.
    drop(child);
    ProcRecord::of(pid).ok_or_else(|| LabError::HostBoot {
        host: host.name.clone(),
        addr: host.addr,
        detail: format!(
            "`{shown}` exited at once: {}",
            log_tail(&host.console_log())
        ),
        log: host.console_log(),
    })
}

/// Waits until the host answers ssh and systemd says the boot is over
/// (`systemctl is-system-running`: running, or degraded when some unit failed).
pub fn wait_ready(
    dir: &Path,
    host: &RealHost,
    nspawn: ProcRecord,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let fail = |detail: String| LabError::HostBoot {
        host: host.name.clone(),
        addr: host.addr,
        detail,
        log: host.console_log(),
    };
    let mut last = String::from("port 22 never answered");
    loop {
        if !nspawn.alive() {
            return Err(fail(format!(
                "the container ended: {}",
                log_tail(&host.console_log())
            )));
        }
        if greets(SocketAddr::from((host.addr, 22))) {
            let out = ssh::command(dir, host, "systemctl is-system-running")
                .output()
                .map_err(LabError::io("run ssh"))?;
            // It exits non-zero for every state but running; the word is what counts.
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            last = if state.is_empty() {
                format!(
                    "ssh failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            } else {
                format!("systemd is {state}")
            };
        }
        if Instant::now() >= deadline {
            return Err(fail(format!("not ready after {timeout:?}: {last}")));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Whether an ssh server answers at `sock` with its banner (a TCP handshake alone
/// could be the kernel's, before sshd runs).
fn greets(sock: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&sock, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut banner = [0u8; 4];
    std::io::Read::read_exact(&mut stream, &mut banner).is_ok() && &banner == b"SSH-"
}

/// Powers containers off: SIGTERM to each systemd-nspawn, which passes it on as
/// systemd's poweroff signal (SIGRTMIN+3) to the container's init. Repeated every
/// second until `grace` is over: a signal that arrives while systemd is still starting
/// is lost (PID 1 ignores signals it has no handler for yet). Returns the containers
/// that ended and the nspawn processes still running (for the caller to kill).
pub fn power_off(
    targets: &[(ProcRecord, String)],
    grace: Duration,
) -> (Vec<Stopped>, Vec<ProcRecord>) {
    let deadline = Instant::now() + grace;
    let mut live: Vec<&(ProcRecord, String)> = targets.iter().filter(|t| t.0.alive()).collect();
    let stopped = live
        .iter()
        .map(|t| Stopped {
            pid: t.0.pid,
            what: t.1.clone(),
        })
        .collect();
    let mut next_signal = Instant::now();
    while !live.is_empty() && Instant::now() < deadline {
        if Instant::now() >= next_signal {
            for t in &live {
                let _ = kill(Pid::from_raw(t.0.pid), Signal::SIGTERM);
            }
            next_signal = Instant::now() + Duration::from_secs(1);
        }
        sleep(Duration::from_millis(50));
        live.retain(|t| {
            reap(t.0.pid);
            t.0.alive()
        });
    }
    (stopped, live.into_iter().map(|t| t.0).collect())
}

/// Reaps `pid` if it is this process's exited child (the process that ran `up` and
/// is still alive, a test say); harmless otherwise.
fn reap(pid: i32) {
    while let Err(Errno::EINTR) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {}
}

/// systemd-nspawn's own directories in /run (it makes them and leaves them, empty,
/// behind). Removed when empty: another nspawn's files keep them.
pub fn remove_nspawn_dirs() {
    let base = Path::new("/run/systemd/nspawn");
    for d in [
        base.join("propagate"),
        base.join("locks"),
        base.to_path_buf(),
    ] {
        let _ = fs::remove_dir(d);
    }
}
