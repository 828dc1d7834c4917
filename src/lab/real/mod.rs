//! Real lab hosts: booted Debian 12 systemd containers, for running chatmail's own
//! deploy (which needs a whole machine: apt, systemd units, its own resolver) where the
//! loopback lab's hosts (an sshd in a mount namespace) cannot.
//!
//! Each host is `systemd-nspawn --boot` of an overlay over one cached rootfs
//! (`rootfs`: mmdebstrap from the machine's Debian mirror, in /var/cache/cmfleet-lab),
//! in a network namespace of its own on the lab's bridge (`net`: 198.18.X.N, NAT to the
//! machine's route, X chosen by the caller so parallel labs never collide), in cgroups
//! of its own (`cgroup`), detached from the process that started it (`container`). It
//! is reachable as root over ssh with the lab key, host keys checked (`ssh`). `down`
//! powers every container off (then kills what is left), removes the namespaces,
//! veths, bridge, NAT table, cgroups and the hosts' layers, and turns IP forwarding
//! back off if a lab turned it on: nothing is left but the cache. It works from any
//! process, from the record in the lab directory (`state`), also after a failed `up`.
//!
//! # Layout of a lab directory
//! `real-lab.json` (the record), `ssh_config` and `known_hosts` (`ssh -F
//! DIR/ssh_config NAME` or `root@ADDR`), `nat.nft` (the NAT rules loaded),
//! `nspawn-boot` (the boot script), and `hosts/NAME/` with `upper/` (everything the host
//! wrote or was given), `work/`, `root/` (its mount point, mounted only inside the
//! container) and `console.log` (its boot messages).
//!
//! Host i (0-based) of the list gets 198.18.X.(i+2); .1 is the machine on the bridge.

mod cgroup;
pub mod chatmail;
mod container;
pub mod dns;
pub mod fleet;
mod lock;
mod net;
mod rootfs;
mod sources;
mod ssh;
mod state;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::process::{ProcRecord, Stopped};

pub use container::UNBOUND_FORWARD;
pub use net::{RealNet, FIRST_HOST, LAST_HOST};
pub use rootfs::{PACKAGES, SUITE};
pub use state::{RealHost, STATE_FILE};

use state::RealLabState;

/// Where the rootfs is cached (and the machine-wide locks of real labs live).
pub const CACHE_DIR: &str = "/var/cache/cmfleet-lab";

/// How long a container may take from start to ssh and a finished boot (measured: under
/// 2 s on this kind of machine; generous for a loaded CI machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long `down` waits for the containers to power off before it kills them
/// (measured here: 0.7-2.6 s for idle ones; a signal sent while one still boots is
/// repeated, see `container::power_off`).
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// What real lab to bring up.
#[derive(Debug, Clone)]
pub struct RealLabOptions {
    /// The lab directory (absolute, or made so; created; a stopped real lab in it is
    /// replaced).
    pub dir: PathBuf,
    /// The lab's network, 198.18.X.0/24: distinct for labs running at once.
    pub net: RealNet,
    /// The hosts' names (hostnames inside; ssh_config `Host` names), in address order.
    pub hosts: Vec<String>,
    /// The lab key (private; `KEY.pub` beside it is authorized for root on every host).
    pub key: PathBuf,
    /// How long each host may take to boot.
    pub boot_timeout: Duration,
    /// The rootfs cache.
    pub cache: PathBuf,
    /// The hosts' resolver (their resolv.conf, and unbound's forwarder once chatmail's
    /// deploy installs it): `None` for the machine's own nameservers, or an address on
    /// the bridge where the lab runs one (the chatmail lab's BIND, `dns`).
    pub resolver: Option<std::net::Ipv4Addr>,
}

impl RealLabOptions {
    /// `hosts` in `dir` on `net`, reached with `key`; the default timeout and cache.
    pub fn new(
        dir: impl Into<PathBuf>,
        net: RealNet,
        hosts: Vec<String>,
        key: impl Into<PathBuf>,
    ) -> RealLabOptions {
        RealLabOptions {
            dir: dir.into(),
            net,
            hosts,
            key: key.into(),
            boot_timeout: BOOT_TIMEOUT,
            cache: PathBuf::from(CACHE_DIR),
            resolver: None,
        }
    }
}

/// How long the parts of `up` took.
#[derive(Debug, Clone)]
pub struct UpTimings {
    /// The rootfs build, if this `up` built it (`None`: it was cached).
    pub rootfs_built: Option<Duration>,
    /// Per host: its layer, files and keys, its namespace and veth.
    pub prepare: Vec<(String, Duration)>,
    /// Per host: from starting systemd-nspawn to ssh answering with systemd up.
    pub boot: Vec<(String, Duration)>,
    /// The whole `up`.
    pub total: Duration,
}

/// A real lab, as recorded in its directory.
#[derive(Debug, Clone)]
pub struct RealLab {
    state: RealLabState,
    timings: Option<UpTimings>,
}

impl RealLab {
    /// Checks that this machine can run real lab hosts: Linux, root, the programs, and
    /// cgroups as systemd-nspawn needs them. The error says how to install what is missing.
    pub fn preflight() -> Result<()> {
        if !cfg!(target_os = "linux") {
            return Err(LabError::NotLinux {
                os: std::env::consts::OS,
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Err(LabError::NotRoot { euid });
        }
        let tools: [(&str, &'static str); 9] = [
            ("systemd-nspawn", "apt-get install systemd-container"),
            ("mmdebstrap", "apt-get install mmdebstrap"),
            ("nft", "apt-get install nftables"),
            ("ip", "apt-get install iproute2"),
            ("ssh", "apt-get install openssh-client"),
            ("ssh-keygen", "apt-get install openssh-client"),
            ("unshare", "apt-get install util-linux"),
            ("setsid", "apt-get install util-linux"),
            ("mount", "apt-get install mount"),
        ];
        for (tool, hint) in tools {
            if !in_path(tool) {
                return Err(LabError::MissingTool {
                    tool: tool.into(),
                    hint,
                });
            }
        }
        if cgroup::hierarchies().is_empty() {
            return Err(LabError::MissingTool {
                tool: "a cgroup hierarchy for systemd-nspawn (/sys/fs/cgroup as cgroup2, or /sys/fs/cgroup/systemd)".into(),
                hint: "mount cgroups as a systemd machine does; the real lab needs a Linux VM, not an unprivileged container",
            });
        }
        Ok(())
    }

    /// Builds (or reuses) the rootfs, makes the network, prepares and boots every host
    /// and waits until each answers ssh with systemd up. On failure everything made so
    /// far is taken down again.
    pub fn up(opts: RealLabOptions) -> Result<RealLab> {
        let started = Instant::now();
        RealLab::preflight()?;
        let dir = absolute(&opts.dir)?;
        check_options(&dir, &opts)?;
        let authorized = read_public_key(&opts.key)?;
        clear_dir(&dir)?;
        // Before the directory records this network: a lab that finds its network busy
        // must not take the other lab's parts down when it cleans up after itself.
        opts.net.check_free()?;
        if !cgroup::ids_with_prefix(&format!("{}-", opts.net.bridge())).is_empty() {
            return Err(LabError::NetBusy {
                net: opts.net.cidr(),
                detail: format!("cgroups named {}-* exist", opts.net.bridge()),
            });
        }
        let hosts = opts
            .hosts
            .iter()
            .enumerate()
            .map(|(i, name)| {
                // In range: check_options allows at most LAST_HOST - FIRST_HOST + 1 hosts.
                let n = FIRST_HOST + i as u8;
                RealHost {
                    name: name.clone(),
                    addr: opts.net.addr(n),
                    id: opts.net.host_id(n),
                    dir: dir.join("hosts").join(name),
                    nspawn: None,
                }
            })
            .collect();
        let state = RealLabState {
            version: 1,
            dir: dir.clone(),
            net: opts.net,
            owns_net: false,
            cache: opts.cache.clone(),
            rootfs: None,
            hosts,
        };
        state.save()?;
        let mut lab = RealLab {
            state,
            timings: None,
        };
        match lab.build(&opts, &authorized, started) {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = RealLab::down(&dir);
                Err(e)
            }
        }
    }

    fn build(&mut self, opts: &RealLabOptions, authorized: &str, started: Instant) -> Result<()> {
        let dir = self.state.dir.clone();
        let net = self.state.net;
        let rootfs = rootfs::ensure(&opts.cache)?;
        self.state.rootfs = Some(rootfs.dir.clone());
        let nameservers = match opts.resolver {
            Some(r) => vec![r],
            None => net::nameservers(Path::new("/etc/resolv.conf"))?,
        };
        self.state.owns_net = true;
        self.state.save()?;
        net.create(&dir.join("nat.nft"), &opts.cache)?;
        let boot_script = dir.join("nspawn-boot");
        fs::write(&boot_script, container::NSPAWN_BOOT)
            .map_err(LabError::io(format!("write {}", boot_script.display())))?;

        let files = container::HostFiles {
            lower: &rootfs.dir,
            authorized_key: authorized,
            nameservers: &nameservers,
        };
        // Hosts are independent: ssh-keygen (RSA, ~0.25 s) and `ip` run side by side.
        let prepared: Vec<Result<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .state
                .hosts
                .iter()
                .map(|h| {
                    let files = &files;
                    s.spawn(move || {
                        let t = Instant::now();
                        container::prepare(h, files)?;
                        net.add_host(h.n())?;
                        Ok(t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        let mut prepare = Vec::new();
        for (h, r) in self.state.hosts.iter().zip(prepared) {
            prepare.push((h.name.clone(), r?));
        }
        ssh::write_files(&dir, &self.state.hosts, &opts.key)?;

        let mut spawned = Vec::new();
        for i in 0..self.state.hosts.len() {
            let h = &self.state.hosts[i];
            let cgroups = cgroup::create(&h.id)?;
            let t = Instant::now();
            let rec = container::spawn(h, net, &rootfs.dir, &boot_script, &cgroups)?;
            self.state.hosts[i].nspawn = Some(rec);
            self.state.save()?;
            spawned.push((rec, t));
        }
        let booted: Vec<Result<Duration>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .state
                .hosts
                .iter()
                .zip(&spawned)
                .map(|(h, (rec, t))| {
                    let dir = &dir;
                    s.spawn(move || {
                        container::wait_ready(dir, h, *rec, opts.boot_timeout)?;
                        Ok(t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        let mut boot = Vec::new();
        for (h, r) in self.state.hosts.iter().zip(booted) {
            boot.push((h.name.clone(), r?));
        }
        self.timings = Some(UpTimings {
            rootfs_built: rootfs.built,
            prepare,
            boot,
            total: started.elapsed(),
        });
        Ok(())
    }

    /// Finds the real lab recorded in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<RealLab> {
        Ok(RealLab {
            state: RealLabState::load(&absolute(dir.as_ref())?)?,
            timings: None,
        })
    }

    /// Takes the real lab in `dir` down: powers every container off (SIGTERM to
    /// systemd-nspawn, which turns it into systemd's poweroff), kills what has not
    /// ended after a grace period, then every process left in the hosts' cgroups, and
    /// removes the cgroups, namespaces, veths, bridge, NAT table and the hosts' layers.
    /// Safe to repeat, and after an `up` that failed halfway.
    pub fn down(dir: impl AsRef<Path>) -> Result<Vec<Stopped>> {
        let dir = absolute(dir.as_ref())?;
        let mut state = RealLabState::load(&dir)?;
        let targets: Vec<(ProcRecord, String)> = state
            .hosts
            .iter()
            .filter_map(|h| {
                let rec = h.nspawn?;
                Some((rec, format!("systemd-nspawn of {} ({})", h.name, h.addr)))
            })
            .collect();
        // What does not power off in time is killed with its cgroup below.
        let (mut stopped, _late) = container::power_off(&targets, POWEROFF_GRACE);
        if state.owns_net {
            let net = state.net;
            // Also hosts the record does not know (a crash between making a cgroup and
            // saving the record): every cgroup of this network is this lab's.
            let mut ids = cgroup::ids_with_prefix(&format!("{}-", net.bridge()));
            for h in &state.hosts {
                if !ids.contains(&h.id) {
                    ids.push(h.id.clone());
                }
            }
            for id in &ids {
                let left = cgroup::processes(id);
                let survivors = cgroup::kill_all(id, Duration::from_secs(10));
                if !survivors.is_empty() {
                    return Err(LabError::Survivors { pids: survivors });
                }
                stopped.extend(left.into_iter().map(|pid| Stopped {
                    pid,
                    what: format!("process in container {id}"),
                }));
                cgroup::remove(id)?;
            }
            net.remove(&state.cache)?;
            if !net::any_lab_bridge()? {
                container::remove_nspawn_dirs();
            }
        }
        for h in &state.hosts {
            remove_host_dir(h)?;
        }
        // Empty now, unless someone put something there: then it stays.
        let _ = fs::remove_dir(dir.join("hosts"));
        state.owns_net = false;
        for h in &mut state.hosts {
            h.nspawn = None;
        }
        state.save()?;
        Ok(stopped)
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The lab's network.
    pub fn net(&self) -> RealNet {
        self.state.net
    }

    /// Every host, in the order asked for.
    pub fn hosts(&self) -> &[RealHost] {
        &self.state.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&RealHost> {
        self.state.hosts.iter().find(|h| h.name == name)
    }

    /// The cached rootfs the hosts boot (their overlays' lower layer).
    pub fn rootfs(&self) -> Option<&Path> {
        self.state.rootfs.as_deref()
    }

    /// `DIR/ssh_config`: `ssh -F` it to reach a host by name or address.
    pub fn ssh_config(&self) -> PathBuf {
        self.state.dir.join("ssh_config")
    }

    /// `DIR/known_hosts`: every host's keys.
    pub fn known_hosts(&self) -> PathBuf {
        self.state.dir.join("known_hosts")
    }

    /// `ssh -F DIR/ssh_config NAME -- REMOTE` (stdin closed).
    pub fn ssh(&self, host: &RealHost, remote: &str) -> Command {
        ssh::command(&self.state.dir, host, remote)
    }

    /// What the `up` that returned this lab measured (`None` for `open`).
    pub fn timings(&self) -> Option<&UpTimings> {
        self.timings.as_ref()
    }
}

/// A thread's result; a panicked thread becomes an error rather than a second panic.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(LabError::Options("a lab thread panicked".into())))
}

/// Checks names, the directory and the host count.
fn check_options(dir: &Path, opts: &RealLabOptions) -> Result<()> {
    let bad = |m: String| Err(LabError::Options(m));
    let dir_s = dir
        .to_str()
        .ok_or_else(|| LabError::Options("the lab dir must be valid UTF-8".into()))?;
    // Paths go into overlayfs mount options, where ',' and ':' separate, and into
    // ssh_config, where whitespace does.
    if dir_s
        .chars()
        .any(|c| c.is_whitespace() || ",:'\"\\$`".contains(c))
    {
        return bad(format!(
            "the lab dir {dir_s} must not contain whitespace, ',', ':' or shell quoting characters"
        ));
    }
    let max = usize::from(LAST_HOST - FIRST_HOST) + 1;
    if opts.hosts.is_empty() || opts.hosts.len() > max {
        return bad(format!(
            "a real lab has 1 to {max} hosts, not {}",
            opts.hosts.len()
        ));
    }
    for (i, name) in opts.hosts.iter().enumerate() {
        let label_ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label_ok {
            return bad(format!(
                "host name {name:?} is not a hostname (lowercase letters, digits and '-', at most 63)"
            ));
        }
        if opts.hosts[..i].contains(name) {
            return bad(format!("host name {name} is given twice"));
        }
    }
    Ok(())
}

/// The lab key's public half (`KEY.pub`), as one authorized_keys line.
fn read_public_key(key: &Path) -> Result<String> {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    let p = PathBuf::from(p);
    let text = fs::read_to_string(&p).map_err(LabError::io(format!(
        "read the lab key's public half {}",
        p.display()
    )))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.split_whitespace().count() < 2 {
        return Err(LabError::Options(format!(
            "{} is not an ssh public key",
            p.display()
        )));
    }
    Ok(line)
}

/// Empties `dir` for a new real lab: a stopped one is replaced, a running one or a
/// directory that is not a real lab's is refused.
fn clear_dir(dir: &Path) -> Result<()> {
    let running = |dir: &Path| {
        RealLabState::load(dir).is_ok_and(|old| {
            old.hosts
                .iter()
                .any(|h| h.nspawn.is_some_and(|r| r.alive()))
        })
    };
    crate::lab::state::clear_lab_dir(dir, STATE_FILE, running, |d| RealLab::down(d))
}

/// Removes a host's directory (its layer: the rootfs copy-on-write), unless something
/// is mounted inside it (then removing would reach into that mount).
fn remove_host_dir(h: &RealHost) -> Result<()> {
    if !h.dir.exists() {
        return Ok(());
    }
    let inside = format!("{}/", h.dir.to_string_lossy());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|m| m.starts_with(&inside))
    {
        return Err(LabError::Options(format!(
            "{m} is mounted inside the lab host {}'s directory; unmount it, then run down again",
            h.name
        )));
    }
    fs::remove_dir_all(&h.dir).map_err(LabError::io(format!("remove {}", h.dir.display())))
}

/// Finds `name` in PATH (the lab runs its programs by name).
pub(super) fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(LabError::io("read the current directory"))?
            .join(dir))
    }
}
