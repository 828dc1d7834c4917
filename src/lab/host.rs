//! One lab host: an sshd in its own private mount namespace, with the relay's state
//! directories bind-mounted from the host's directory in the lab (`hosts/<addr>/fs/...`),
//! so the guide's commands run unchanged and never touch the machine's directories.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::addr::Side;
use super::error::{LabError, Result};
use super::process::{log_tail, ProcRecord};
use super::sshd;
use super::users::{LabUsers, MachineTables};

/// Directories of a relay host that the lab replaces by per-host ones (the relay's state,
/// its mail system's configuration and state, root's ssh directory and the stand-in
/// cmdeploy's record).
pub const BIND_DIRS: &[&str] = &[
    "/home/vmail",
    "/var/lib/acme",
    "/etc/dkimkeys",
    "/var/spool/postfix",
    "/root/.ssh",
    "/var/lib/chatmail-lab",
    "/etc/postfix",
    "/var/lib/postfix",
    "/etc/dovecot",
    "/run/dovecot",
    "/var/lib/dovecot",
];

/// Where the stand-in cmdeploy records its effect on a host (inside the host).
pub const STATE_DIR: &str = "/var/lib/chatmail-lab";

/// One host of a lab, as the lab recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabHost {
    /// "relay3-old", also an alias in the lab's ssh_config.
    pub name: String,
    /// Its own loopback address; sshd listens on port 22 there.
    pub addr: Ipv4Addr,
    /// The relay it belongs to (1-based).
    pub relay: usize,
    /// OLD or NEW machine of that relay.
    pub side: Side,
    /// The host's directory in the lab (`DIR/hosts/<addr>`).
    pub dir: PathBuf,
    /// Size of a tmpfs mounted over /home/vmail instead of the bind mount (disk-full tests).
    pub vmail_tmpfs: Option<u64>,
    /// The running sshd, if the host is up.
    pub sshd: Option<ProcRecord>,
}

impl LabHost {
    /// The controller-side path of `abs` (an absolute path inside the host), for reading
    /// and writing the host's files directly. A tmpfs /home/vmail exists only inside the
    /// host's namespace, so it is reached through the sshd's /proc/PID/root.
    pub fn path(&self, abs: &str) -> PathBuf {
        let rel = abs.trim_start_matches('/');
        if self.vmail_tmpfs.is_some() && (abs == "/home/vmail" || abs.starts_with("/home/vmail/")) {
            if let Some(sshd) = self.sshd {
                return PathBuf::from(format!("/proc/{}/root", sshd.pid)).join(rel);
            }
        }
        self.dir.join("fs").join(rel)
    }

    /// The host's sshd log.
    pub fn sshd_log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    pub(crate) fn sshd_config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    pub(crate) fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    fn start_script(&self) -> PathBuf {
        self.dir.join("start.sh")
    }

    fn start_log(&self) -> PathBuf {
        self.dir.join("start.log")
    }
}

/// Creates the mount points on the machine (empty directories; bind mounts need a target)
/// and sshd's privilege separation directory.
pub fn prepare_machine() -> Result<()> {
    for d in BIND_DIRS.iter().chain(["/run/sshd"].iter()) {
        if Path::new(d).exists() {
            continue;
        }
        fs::create_dir_all(d).map_err(LabError::io(format!("create mount point {d}")))?;
        // An empty /root/.ssh we create must not loosen the machine's ssh setup.
        let mode = if *d == "/root/.ssh" { 0o700 } else { 0o755 };
        fs::set_permissions(d, fs::Permissions::from_mode(mode))
            .map_err(LabError::io(format!("chmod {d}")))?;
    }
    Ok(())
}

/// Lays out a host's directory: its filesystem tree, user tables, empty bashrc, sshd
/// config and authorized lab key. Host keys are generated separately (in parallel).
pub fn prepare(
    host: &LabHost,
    users: &LabUsers,
    tables: &MachineTables,
    authorized_key: &str,
) -> Result<()> {
    let io = |what: &str, p: &Path| LabError::io(format!("{what} {}", p.display()));
    fs::create_dir_all(&host.dir).map_err(io("create", &host.dir))?;
    let owners: [(&str, u32, u32, u32); 6] = [
        ("/home/vmail", users.vmail_uid, users.vmail_gid, 0o755),
        ("/var/lib/acme", 0, 0, 0o755),
        (
            "/etc/dkimkeys",
            users.opendkim_uid,
            users.opendkim_gid,
            0o700,
        ),
        ("/var/spool/postfix", 0, 0, 0o755),
        ("/root/.ssh", 0, 0, 0o700),
        (STATE_DIR, 0, 0, 0o755),
    ];
    for (abs, uid, gid, mode) in owners {
        let p = host.dir.join("fs").join(abs.trim_start_matches('/'));
        fs::create_dir_all(&p).map_err(io("create", &p))?;
        chown(&p, Some(uid), Some(gid)).map_err(io("chown", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))?;
    }
    let ak = host.path("/root/.ssh/authorized_keys");
    fs::write(&ak, authorized_key).map_err(io("write", &ak))?;
    fs::set_permissions(&ak, fs::Permissions::from_mode(0o600)).map_err(io("chmod", &ak))?;
    tables.write_host_tables(users, &host.dir.join("passwd"), &host.dir.join("group"))?;
    // The machine's root bashrc runs `pyenv init` (~100 ms per remote command): hosts get
    // an empty one.
    let bashrc = host.dir.join("bashrc");
    fs::write(&bashrc, "").map_err(io("write", &bashrc))?;
    let cfg = host.sshd_config();
    fs::write(&cfg, sshd::config(&host.name, host.addr, &host.dir)).map_err(io("write", &cfg))?;
    Ok(())
}

/// The host's mounts as an fstab: `mount -a -T` applies them all in one process (ten
/// `mount` processes per host made 40 hosts start noticeably slower).
fn fstab(host: &LabHost, lab_bin: &Path) -> String {
    let d = host.dir.display();
    let mut s =
        String::from("# mounts of this lab host, applied inside its private mount namespace\n");
    for abs in BIND_DIRS {
        match host.vmail_tmpfs {
            Some(size) if *abs == "/home/vmail" => {
                s += &format!("lab-vmail /home/vmail tmpfs size={size},mode=0755 0 0\n");
            }
            _ => s += &format!("{d}/fs{abs} {abs} none bind 0 0\n"),
        }
    }
    s += &format!("{} /usr/local/sbin none bind 0 0\n", lab_bin.display());
    s += &format!("{d}/passwd /etc/passwd none bind 0 0\n{d}/group /etc/group none bind 0 0\n");
    // The machine's root bashrc runs `pyenv init`; hosts get an empty one.
    if Path::new("/root/.bashrc").exists() {
        s += &format!("{d}/bashrc /root/.bashrc none bind 0 0\n");
    }
    s
}

/// The script run inside the fresh namespace: mounts, the mail system if the host was
/// active (its boot, as systemd starts enabled units: a crashed and restarted OLD host
/// serves mail again), then exec sshd (so the PID we spawned is the sshd's). A mail
/// system that fails to start does not keep the host from booting.
fn start_script(host: &LabHost) -> String {
    let d = host.dir.display();
    format!(
        "#!/bin/sh\n# Runs inside `unshare -m --propagation private`: the mounts exist only in\n\
         # this host's namespace and vanish with its last process.\nset -e\n\
         mount -a -T {d}/fstab\n\
         if grep -qx active=1 {STATE_DIR}/state 2>/dev/null; then\n\
         \x20   /usr/local/sbin/chatmail-lab-mail start fast || echo \"mail did not start\" >&2\n\
         fi\n\
         exec /usr/sbin/sshd -D -f {d}/sshd_config -E {d}/sshd.log\n"
    )
}

/// Starts the host's sshd (not waiting for it to listen; see `wait_ready`).
pub fn spawn(host: &LabHost, lab_bin: &Path) -> Result<Child> {
    let tab = host.dir.join("fstab");
    fs::write(&tab, fstab(host, lab_bin))
        .map_err(LabError::io(format!("write {}", tab.display())))?;
    let script = host.start_script();
    fs::write(&script, start_script(host))
        .map_err(LabError::io(format!("write {}", script.display())))?;
    let log = append(&host.start_log())?;
    let log2 = append(&host.start_log())?;
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "/bin/sh"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: lab hosts end by `lab down`, not by the terminal's ^C.
        .process_group(0)
        .spawn()
        .map_err(LabError::io(format!("start lab host {}", host.addr)))
}

/// After spawning, the tmpfs /home/vmail (if any) needs the vmail owner; ownership of a
/// tmpfs root is set by mount options we avoid (uid= is not in every kernel), so chown it
/// through the namespace.
pub fn fix_tmpfs_owner(host: &LabHost, users: &LabUsers) -> Result<()> {
    if host.vmail_tmpfs.is_some() {
        let p = host.path("/home/vmail");
        chown(&p, Some(users.vmail_uid), Some(users.vmail_gid))
            .map_err(LabError::io(format!("chown {}", p.display())))?;
    }
    Ok(())
}

/// Waits until the host's sshd accepts connections on port 22.
pub fn wait_ready(host: &LabHost, child: &mut Child, timeout: Duration) -> Result<ProcRecord> {
    let deadline = Instant::now() + timeout;
    let sock = SocketAddr::from((host.addr, 22));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::HostStart {
                addr: host.addr,
                detail: format!(
                    "sshd exited ({status}): {} {}",
                    log_tail(&host.start_log()),
                    log_tail(&host.sshd_log())
                ),
                log: host.sshd_log(),
            });
        }
        // The banner, not just a TCP handshake: a dying predecessor's socket (held a
        // moment longer by one of its children) still completes handshakes from its backlog.
        if greets(&sock) {
            let pid = child.id() as i32;
            return ProcRecord::of(pid).ok_or_else(|| LabError::HostStart {
                addr: host.addr,
                detail: "sshd vanished right after it started".into(),
                log: host.sshd_log(),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::HostStart {
                addr: host.addr,
                detail: format!("port 22 not open after {timeout:?}"),
                log: host.sshd_log(),
            });
        }
        sleep(Duration::from_millis(5));
    }
}

/// Whether an ssh server answers on `sock` with its banner.
fn greets(sock: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(sock, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut banner = [0u8; 4];
    std::io::Read::read_exact(&mut stream, &mut banner).is_ok() && &banner == b"SSH-"
}

/// Opens (creating) a file for appending, for logs.
pub fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(LabError::io(format!("open {}", path.display())))
}
