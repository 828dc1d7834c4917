//! The lab as a whole: bring it up, find it again, take it down, inject faults.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::activity::{self, Activity, ActivityReport};
use super::addr::{Side, Subnet, MAX_RELAYS};
use super::data::{self, DataOptions};
use super::error::{LabError, Result};
use super::host::{self, LabHost, STATE_DIR};
use super::hoststate::{read_host_state, HostState};
use super::process::{self, ProcRecord, Stopped};
use super::state::{LabState, STATE_FILE};
use super::users::{LabUsers, MachineTables};
use super::{agent, cmdeploy, inventory_file, mail, sshd};

/// The lab directory `cmfleet lab` uses unless told otherwise.
pub const DEFAULT_DIR: &str = "/tmp/cmfleet-lab";

/// How long a host's sshd may take to listen.
const HOST_START_TIMEOUT: Duration = Duration::from_secs(15);

/// What lab to build.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The lab directory (made absolute; created; a previous stopped lab in it is replaced).
    pub dir: PathBuf,
    /// Number of relays: 2 hosts each (1..=127).
    pub relays: usize,
    /// The lab's 127.X.Y.0/24.
    pub subnet: Subnet,
    /// Mail data on OLD hosts.
    pub data: DataOptions,
    /// Relay i's mail_domain is `relay{i}.{domain_suffix}`.
    pub domain_suffix: String,
    /// What each stand-in cmdeploy run costs (`None`: its own fraction of a second).
    pub cmdeploy_cost: Option<super::cost::CmdeployCost>,
}

impl LabOptions {
    /// `relays` relays in `dir` on `subnet`, with the default data (100 users x 30
    /// messages of 4 KiB per relay).
    pub fn new(dir: impl Into<PathBuf>, relays: usize, subnet: Subnet) -> LabOptions {
        LabOptions {
            dir: dir.into(),
            relays,
            subnet,
            data: DataOptions::default(),
            domain_suffix: "lab.test".into(),
            cmdeploy_cost: None,
        }
    }
}

/// A relay of the lab: its domain, config and two hosts.
#[derive(Debug, Clone)]
pub struct LabRelay {
    /// 1-based index.
    pub index: usize,
    /// `relayN.lab.test`.
    pub mail_domain: String,
    /// Its chatmail.ini (`DIR/relays/<domain>/chatmail.ini`).
    pub config: PathBuf,
    /// The machine it leaves (holds the data).
    pub old: LabHost,
    /// The machine it moves to (empty).
    pub new: LabHost,
}

/// A host's state as `lab status` shows it.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// The host.
    pub host: LabHost,
    /// Its recorded sshd runs.
    pub sshd_running: bool,
    /// Port 22 accepts connections.
    pub ssh_open: bool,
    /// What cmdeploy recorded.
    pub state: HostState,
}

/// `lab status`.
#[derive(Debug, Clone)]
pub struct LabStatus {
    /// The lab directory.
    pub dir: PathBuf,
    /// The agent runs.
    pub agent_running: bool,
    /// Every host.
    pub hosts: Vec<HostStatus>,
}

/// A running (or stopped) lab, as recorded in its directory.
#[derive(Debug, Clone)]
pub struct Lab {
    pub(super) state: LabState,
}

/// Whether something accepts TCP connections on `addr:port` (within 1 s).
pub fn port_accepts(addr: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(1)).is_ok()
}

/// Finds `name` in PATH.
fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(LabError::io("find the current directory"))?
            .join(dir))
    }
}

impl Lab {
    /// Checks that this machine can run a lab: Linux, root, the programs it needs, and
    /// that `unshare -m` works. The error says what is missing and how to fix it.
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
            ("unshare", "apt-get install util-linux"),
            ("mount", "apt-get install mount"),
            ("setsid", "apt-get install util-linux"),
            ("ssh", "apt-get install openssh-client"),
            ("ssh-keygen", "apt-get install openssh-client"),
            ("ssh-agent", "apt-get install openssh-client"),
            ("ssh-add", "apt-get install openssh-client"),
            ("git", "apt-get install git"),
            ("rsync", "apt-get install rsync"),
        ];
        for (tool, hint) in tools {
            if !in_path(tool) {
                return Err(LabError::MissingTool {
                    tool: tool.into(),
                    hint,
                });
            }
        }
        for (path, hint) in [
            ("/usr/sbin/sshd", "apt-get install openssh-server"),
            ("/usr/sbin/postfix", "apt-get install postfix"),
            (
                "/usr/sbin/dovecot",
                "apt-get install dovecot-imapd dovecot-lmtpd",
            ),
            ("/usr/lib/dovecot/imap", "apt-get install dovecot-imapd"),
            ("/usr/lib/dovecot/lmtp", "apt-get install dovecot-lmtpd"),
            ("/usr/bin/openssl", "apt-get install openssl"),
            ("/usr/sbin/ip", "apt-get install iproute2"),
            ("/usr/bin/python3", "apt-get install python3"),
            ("/bin/bash", "apt-get install bash"),
        ] {
            if !Path::new(path).is_file() {
                return Err(LabError::MissingTool {
                    tool: path.into(),
                    hint,
                });
            }
        }
        let missing = MachineTables::read()?.missing_mail_users();
        if !missing.is_empty() {
            return Err(LabError::MissingTool {
                tool: format!("the users and groups {}", missing.join(", ")),
                hint: "apt-get install postfix dovecot-imapd dovecot-lmtpd",
            });
        }
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "true"])
            .output()
            .map_err(LabError::io("run unshare"))?;
        if !out.status.success() {
            return Err(LabError::NoUnshare {
                detail: process::tail(&String::from_utf8_lossy(&out.stderr), 300),
            });
        }
        Ok(())
    }

    /// Builds and starts a lab: 2 hosts per relay, the agent, the checkout with the
    /// stand-in cmdeploy, per-relay chatmail.ini files, data on OLD hosts and
    /// `DIR/inventory.toml`. On failure everything started so far is stopped.
    pub fn up(opts: LabOptions) -> Result<Lab> {
        Lab::preflight()?;
        let dir = absolute(&opts.dir)?;
        let dir_s = dir
            .to_str()
            .ok_or_else(|| LabError::Options("the lab dir must be valid UTF-8".into()))?;
        if dir_s
            .chars()
            .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
        {
            return Err(LabError::Options(format!(
                "the lab dir {dir_s} must not contain whitespace or shell quoting characters"
            )));
        }
        // ssh-agent's socket path must fit a sockaddr_un (108 bytes).
        if dir_s.len() > 80 {
            return Err(LabError::Options(format!(
                "the lab dir path {dir_s} is too long (max 80 bytes)"
            )));
        }
        if !(1..=MAX_RELAYS).contains(&opts.relays) {
            return Err(LabError::Options(format!(
                "--relays must be between 1 and {MAX_RELAYS} (one /24 per lab), not {}",
                opts.relays
            )));
        }
        clear_dir(&dir)?;
        let tables = MachineTables::read()?;
        let users = tables.choose_ids();
        let mut state = LabState {
            version: 1,
            dir: dir.clone(),
            subnet: opts.subnet,
            users,
            data: opts.data,
            agent: None,
            domains: (1..=opts.relays)
                .map(|i| format!("relay{i}.{}", opts.domain_suffix))
                .collect(),
            hosts: Vec::new(),
        };
        for i in 1..=opts.relays {
            for side in [Side::Old, Side::New] {
                let addr = opts.subnet.relay_host(i, side);
                state.hosts.push(LabHost {
                    name: format!("relay{i}-{}", side.as_str()),
                    addr,
                    relay: i,
                    side,
                    dir: dir.join("hosts").join(addr.to_string()),
                    vmail_tmpfs: None,
                    sshd: None,
                });
            }
        }
        // Marks the directory as a lab's before anything else is created in it.
        state.save()?;
        let mut lab = Lab { state };
        match lab
            .build(&tables)
            .and_then(|()| lab.set_cmdeploy_cost(opts.cmdeploy_cost.as_ref()))
        {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = Lab::down(&dir);
                Err(e)
            }
        }
    }

    fn build(&mut self, tables: &MachineTables) -> Result<()> {
        // CMFLEET_LAB_TIMING=1 prints how long each phase of `lab up` took (stderr).
        let started = std::time::Instant::now();
        let timing = std::env::var_os("CMFLEET_LAB_TIMING").is_some();
        let phase = |what: &str| {
            if timing {
                eprintln!("lab up: {:>6.2} s {what}", started.elapsed().as_secs_f64());
            }
        };
        host::prepare_machine()?;
        let dir = self.state.dir.clone();
        let users = self.state.users;
        sshd::keygen_all(&[&self.key()], "cmfleet-lab")?;
        let lab_pub = sshd::public_key(&self.key())?;
        let relays: Vec<(&str, Ipv4Addr)> = self.relays_old_addrs().into_iter().collect();
        mail::write_lab_files(&dir, self.state.subnet, &relays)?;
        for h in &self.state.hosts {
            host::prepare(h, &users, tables, &format!("{lab_pub} cmfleet-lab\n"))?;
            mail::prepare_host(h, &self.state.domains[h.relay - 1], &users, &dir)?;
        }
        let keys: Vec<PathBuf> = self.state.hosts.iter().map(LabHost::host_key).collect();
        sshd::keygen_all(
            &keys.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            "cmfleet-lab-host",
        )?;
        if let Some(first) = self.state.hosts.first() {
            sshd::check_config(&first.sshd_config())?;
        }
        let mut known = String::new();
        for h in &self.state.hosts {
            known += &format!("{} {}\n", h.addr, sshd::public_key(&h.host_key())?);
        }
        let write = |p: &Path, text: &str| {
            fs::write(p, text).map_err(LabError::io(format!("write {}", p.display())))
        };
        write(&self.known_hosts(), &known)?;
        // OLD reaches NEW with the guide's plain `ssh root@NEW`: the hosts know each other.
        for h in &self.state.hosts {
            write(&h.path("/root/.ssh/known_hosts"), &known)?;
        }
        write(&self.ssh_config(), &self.render_ssh_config())?;
        cmdeploy::write_host_bin(&self.bin_dir())?;
        cmdeploy::create_checkout(&self.checkout(), &dir)?;
        for (i, domain) in self.state.domains.iter().enumerate() {
            let ini = self.relay_config(i + 1);
            if let Some(parent) = ini.parent() {
                fs::create_dir_all(parent)
                    .map_err(LabError::io(format!("create {}", parent.display())))?;
            }
            write(&ini, &inventory_file::chatmail_ini(domain))?;
        }
        fs::create_dir_all(self.faults_dir()).map_err(LabError::io("create the faults dir"))?;
        self.write_data()?;
        self.state.agent = Some(agent::start(
            &self.agent_sock(),
            &dir.join("agent.log"),
            &self.key(),
        )?);
        self.state.save()?;
        phase("prepared (keys, trees, data)");
        mail::stop_machine_mail()?;
        mail::add_addresses(&self.addrs())?;
        self.start_hosts(None)?;
        phase("sshds up");
        self.serve_mail_on_old_hosts()?;
        phase("OLD hosts' mail started");
        self.seed_mail()?;
        phase("mail seeded over SMTP/IMAP");
        self.write_accounts()?;
        write(&self.inventory(), &inventory_file::render(&self.state))?;
        self.state.save()
    }

    /// OLD hosts are production relays: configured, active, their Postfix and Dovecot
    /// running, so that disabling mail at step 3 is a real, checkable change. Done with
    /// the stand-in's host side directly, all hosts at once.
    fn serve_mail_on_old_hosts(&self) -> Result<()> {
        let script = self.checkout().join("venv/lib/cmdeploy-lab/remote.sh");
        let mut children = Vec::new();
        for h in self.state.hosts.iter().filter(|h| h.side == Side::Old) {
            let stdin = fs::File::open(&script)
                .map_err(LabError::io(format!("open {}", script.display())))?;
            let child = self
                .ssh(h.addr, &["-o", "BatchMode=yes"])
                .arg(format!(
                    "bash -s -- 0 0 install,configure,activate {} 'lab up'",
                    crate::shell::quote(&self.state.dir.display().to_string())
                ))
                .stdin(stdin)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(LabError::io("run ssh"))?;
            children.push((h.addr, child));
        }
        for (addr, child) in children {
            super::process::wait(format!("activate the old host {addr}"), child)?;
        }
        Ok(())
    }

    /// Writes the OLD hosts' data, spread over the machine's cores.
    fn write_data(&self) -> Result<()> {
        let olds: Vec<&LabHost> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.side == Side::Old)
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(1);
        let chunk = olds.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = olds
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || -> Result<()> {
                        for h in part {
                            let domain = &self.state.domains[h.relay - 1];
                            data::write_old_host(h, domain, &self.state.users, &self.state.data)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| LabError::Options("a data writer thread panicked".into()))??;
            }
            Ok(())
        })
    }

    /// Starts the sshd of every host (or only `only`), all at once, then waits for each.
    fn start_hosts(&mut self, only: Option<Ipv4Addr>) -> Result<()> {
        let bin = self.bin_dir();
        let mut children = Vec::new();
        for (i, h) in self.state.hosts.iter().enumerate() {
            if only.is_none_or(|a| a == h.addr) {
                children.push((i, host::spawn(h, &bin)?));
            }
        }
        let mut first_err = None;
        for (i, mut child) in children {
            match host::wait_ready(&self.state.hosts[i], &mut child, HOST_START_TIMEOUT) {
                Ok(rec) => {
                    self.state.hosts[i].sshd = Some(rec);
                    host::fix_tmpfs_owner(&self.state.hosts[i], &self.state.users)?;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    first_err.get_or_insert(e);
                }
            }
        }
        self.state.save()?;
        first_err.map_or(Ok(()), Err)
    }

    /// Finds the lab recorded in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Lab> {
        Ok(Lab {
            state: LabState::load(&absolute(dir.as_ref())?)?,
        })
    }

    /// Stops everything the lab in `dir` started, by recorded PID (sshds, the agent), then
    /// anything else still living inside one of its hosts (Postfix and Dovecot, a crashed
    /// lab, sessions left behind), and takes the hosts' addresses off lo. Works without
    /// the state file too.
    pub fn down(dir: impl AsRef<Path>) -> Result<Vec<Stopped>> {
        let dir = absolute(dir.as_ref())?;
        let mut targets: Vec<(ProcRecord, String)> = Vec::new();
        let mut state = LabState::load(&dir).ok();
        if let Some(state) = &state {
            for h in &state.hosts {
                if let Some(rec) = h.sshd {
                    targets.push((rec, format!("sshd of {} ({})", h.addr, h.name)));
                }
            }
            if let Some(rec) = state.agent {
                targets.push((rec, "ssh-agent".into()));
            }
        }
        let mut stopped = process::stop_all(&targets, Duration::from_secs(5))?;
        // What the record does not know: strays of a crashed lab, sessions and their
        // children inside hosts. Their namespaces (and mounts) end with them.
        let strays = process::lab_processes(&dir);
        stopped.extend(process::stop_all(&strays, Duration::from_secs(2))?);
        if let Some(state) = &mut state {
            // Postfix needed the hosts' addresses on lo; nothing does now.
            let addrs: Vec<Ipv4Addr> = state.hosts.iter().map(|h| h.addr).collect();
            mail::remove_addresses(&addrs)?;
            state.agent = None;
            for h in &mut state.hosts {
                h.sshd = None;
            }
            state.save()?;
        }
        let _ = fs::remove_file(dir.join("agent.sock"));
        Ok(stopped)
    }

    /// What runs in the lab in `dir`.
    pub fn status(dir: impl AsRef<Path>) -> Result<LabStatus> {
        let lab = Lab::open(dir)?;
        let hosts = lab
            .state
            .hosts
            .iter()
            .map(|h| HostStatus {
                host: h.clone(),
                sshd_running: h.sshd.is_some_and(|r| r.alive()),
                ssh_open: port_accepts(h.addr, 22),
                state: read_host_state(h),
            })
            .collect();
        Ok(LabStatus {
            dir: lab.state.dir.clone(),
            agent_running: lab.state.agent.is_some_and(|r| r.alive()),
            hosts,
        })
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }
    /// `DIR/inventory.toml`.
    pub fn inventory(&self) -> PathBuf {
        self.state.dir.join("inventory.toml")
    }
    /// `DIR/ssh_config`: `ssh -F` it to reach any host by address or name (relay1-old).
    pub fn ssh_config(&self) -> PathBuf {
        self.state.dir.join("ssh_config")
    }
    /// `DIR/known_hosts`: every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.state.dir.join("known_hosts")
    }
    /// `DIR/id_ed25519`: the lab key, authorized on every host and held by the agent.
    pub fn key(&self) -> PathBuf {
        self.state.dir.join("id_ed25519")
    }
    /// `DIR/agent.sock`: the lab's ssh-agent.
    pub fn agent_sock(&self) -> PathBuf {
        self.state.dir.join("agent.sock")
    }
    /// `DIR/relay`: the chatmail relay checkout (run cmdeploy from here).
    pub fn checkout(&self) -> PathBuf {
        self.state.dir.join("relay")
    }
    /// `DIR/relay/scripts/cmdeploy`.
    pub fn cmdeploy(&self) -> PathBuf {
        self.checkout().join("scripts/cmdeploy")
    }
    /// `DIR/bin`, mounted over every host's /usr/local/sbin.
    pub(super) fn bin_dir(&self) -> PathBuf {
        self.state.dir.join("bin")
    }
    fn faults_dir(&self) -> PathBuf {
        self.state.dir.join("faults")
    }
    /// Relay `index`'s chatmail.ini.
    pub fn relay_config(&self, index: usize) -> PathBuf {
        let domain = self
            .state
            .domains
            .get(index.wrapping_sub(1))
            .cloned()
            .unwrap_or_default();
        self.state
            .dir
            .join("relays")
            .join(domain)
            .join("chatmail.ini")
    }
    /// The lab's /24.
    pub fn subnet(&self) -> Subnet {
        self.state.subnet
    }
    /// The vmail/opendkim ids on every host.
    pub fn users(&self) -> LabUsers {
        self.state.users
    }
    /// The data OLD hosts got.
    pub fn data(&self) -> DataOptions {
        self.state.data
    }
    /// Every host.
    pub fn hosts(&self) -> &[LabHost] {
        &self.state.hosts
    }

    /// The host at `addr`.
    pub fn host(&self, addr: Ipv4Addr) -> Result<&LabHost> {
        self.state
            .hosts
            .iter()
            .find(|h| h.addr == addr)
            .ok_or(LabError::UnknownHost { addr })
    }

    /// All relays, relay 1 first.
    pub fn relays(&self) -> Vec<LabRelay> {
        (1..=self.state.domains.len())
            .filter_map(|i| self.relay(i))
            .collect()
    }

    /// Relay `index` (1-based).
    pub fn relay(&self, index: usize) -> Option<LabRelay> {
        let find = |side| {
            self.state
                .hosts
                .iter()
                .find(|h| h.relay == index && h.side == side)
                .cloned()
        };
        Some(LabRelay {
            index,
            mail_domain: self.state.domains.get(index.checked_sub(1)?)?.clone(),
            config: self.relay_config(index),
            old: find(Side::Old)?,
            new: find(Side::New)?,
        })
    }

    /// `ssh -F DIR/ssh_config [opts] root@ADDR` with the lab agent in SSH_AUTH_SOCK; add
    /// the remote command with `.arg()`.
    pub fn ssh(&self, addr: Ipv4Addr, opts: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.ssh_config())
            .args(opts)
            .arg(format!("root@{addr}"))
            .env("SSH_AUTH_SOCK", self.agent_sock());
        c
    }

    /// Stops a host's sshd (the host becomes unreachable; its data stays).
    pub fn stop_host(&mut self, addr: Ipv4Addr) -> Result<()> {
        let i = self.index_of(addr)?;
        if let Some(rec) = self.state.hosts[i].sshd.take() {
            process::stop_all(&[(rec, format!("sshd of {addr}"))], Duration::from_secs(5))?;
        }
        // A child of the old sshd may hold the listening socket a moment longer; a new
        // sshd started meanwhile could not bind the address.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while port_accepts(addr, 22) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state.save()
    }

    /// Crashes a host: SIGKILL to its sshd and everything running inside it (sessions,
    /// transfers), as a machine crash or a cut link does to open connections, which
    /// `stop_host` (sshd only) leaves running. Start it again with `start_host`; a tmpfs
    /// /home/vmail loses its content.
    pub fn crash_host(&mut self, addr: Ipv4Addr) -> Result<()> {
        let i = self.index_of(addr)?;
        if let Some(rec) = self.state.hosts[i].sshd.filter(|r| r.alive()) {
            let inside = process::namespace_processes(rec.pid);
            for (p, _) in &inside {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            process::stop_all(&inside, Duration::from_secs(5))?;
        }
        self.stop_host(addr)
    }

    /// Makes the host's rsync send at most `kib_per_sec` KiB/s (a slow link), or at full
    /// speed again (`None`). Takes effect for the next rsync started on the host.
    pub fn set_link_limit(&self, addr: Ipv4Addr, kib_per_sec: Option<u32>) -> Result<()> {
        let p = self.host(addr)?.path(&format!("{STATE_DIR}/bwlimit"));
        match kib_per_sec {
            Some(k) => fs::write(&p, format!("{k}\n"))
                .map_err(LabError::io(format!("write {}", p.display()))),
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(LabError::io(format!("remove {}", p.display()))(e))
                }
                _ => Ok(()),
            },
        }
    }

    /// Makes the host's `systemctl stop` (and `disable --now`) of postfix and dovecot
    /// stop Dovecot only: port 25 keeps taking mail (`None` undoes it).
    pub fn set_smtp_stays_open(&self, addr: Ipv4Addr, fault: Option<StopFault>) -> Result<()> {
        let p = self
            .host(addr)?
            .path(&format!("{STATE_DIR}/smtp-stays-open"));
        let done = if let Some(f) = fault {
            let word = match f {
                StopFault::Silent => "silent",
                StopFault::Fails => "fails",
            };
            fs::write(&p, word)
        } else {
            fs::remove_file(&p).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        };
        done.map_err(LabError::io(format!("set {}", p.display())))
    }

    /// Makes every later stand-in cmdeploy run cost `cost` (wall slept, controller CPU
    /// burned), or only its own fraction of a second again (`None`).
    pub fn set_cmdeploy_cost(&self, cost: Option<&super::cost::CmdeployCost>) -> Result<()> {
        let p = self.dir().join("cmdeploy-cost");
        match cost {
            Some(c) => {
                fs::write(&p, c.to_string()).map_err(LabError::io(format!("write {}", p.display())))
            }
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(LabError::io(format!("remove {}", p.display()))(e))
                }
                _ => Ok(()),
            },
        }
    }

    /// Starts a host's sshd again (after `stop_host`).
    pub fn start_host(&mut self, addr: Ipv4Addr) -> Result<()> {
        let i = self.index_of(addr)?;
        if self.state.hosts[i].sshd.is_some_and(|r| r.alive()) {
            return Ok(());
        }
        self.start_hosts(Some(addr))
    }

    /// Restarts a host with a tmpfs of `bytes` over /home/vmail (so its disk fills), or
    /// with the normal bind mount again (`None`). A tmpfs's content is lost when the host
    /// stops; reach it meanwhile with `LabHost::path`.
    pub fn set_vmail_tmpfs(&mut self, addr: Ipv4Addr, bytes: Option<u64>) -> Result<()> {
        // A new disk means a restart: open sessions (a controller's kept master among
        // them) must not go on seeing the old one.
        self.crash_host(addr)?;
        let i = self.index_of(addr)?;
        self.state.hosts[i].vmail_tmpfs = bytes;
        self.start_host(addr)
    }

    /// Makes the stand-in cmdeploy fail (exit 1 with `message`) when run against `host`
    /// (the `--ssh-host` value: an address or name).
    pub fn set_cmdeploy_fault(&self, host: &str, message: &str) -> Result<()> {
        let d = self.faults_dir().join(host);
        fs::create_dir_all(&d).map_err(LabError::io(format!("create {}", d.display())))?;
        fs::write(d.join("cmdeploy-fail"), message)
            .map_err(LabError::io("write a cmdeploy fault file"))
    }

    /// Undoes `set_cmdeploy_fault`.
    pub fn clear_cmdeploy_fault(&self, host: &str) -> Result<()> {
        match fs::remove_file(self.faults_dir().join(host).join("cmdeploy-fail")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io("remove a cmdeploy fault file")(e))
            }
            _ => Ok(()),
        }
    }

    /// What the stand-in cmdeploy recorded on the host at `addr`.
    pub fn host_state(&self, addr: Ipv4Addr) -> Result<HostState> {
        Ok(read_host_state(self.host(addr)?))
    }

    /// Simulates mail activity on relay `index`'s OLD host (see `activity::simulate`).
    pub fn simulate_activity(&self, index: usize, activity: &Activity) -> Result<ActivityReport> {
        let relay = self
            .relay(index)
            .ok_or_else(|| LabError::Options(format!("no relay {index} in this lab")))?;
        activity::simulate(
            &relay.old.path("/home/vmail/mail"),
            &self.state.users,
            activity,
        )
    }

    fn index_of(&self, addr: Ipv4Addr) -> Result<usize> {
        self.state
            .hosts
            .iter()
            .position(|h| h.addr == addr)
            .ok_or(LabError::UnknownHost { addr })
    }

    fn render_ssh_config(&self) -> String {
        let d = self.state.dir.display();
        let mut s = format!(
            "# ssh config of the lab in {d} (cmfleet lab): ssh -F {d}/ssh_config relay1-old\n"
        );
        // A relay's mail_domain resolves to its OLD host, as public DNS does before the
        // cutover: cmdeploy without --ssh-host hits OLD.
        for h in &self.state.hosts {
            let domain = match h.side {
                Side::Old => self
                    .state
                    .domains
                    .get(h.relay - 1)
                    .map_or("", String::as_str),
                Side::New => "",
            };
            s += &format!("Host {} {domain}\n    HostName {}\n", h.name, h.addr);
        }
        s += &format!(
            "Host *\n    User root\n    IdentityFile {d}/id_ed25519\n    IdentitiesOnly yes\n    \
             IdentityAgent {d}/agent.sock\n    UserKnownHostsFile {d}/known_hosts\n    \
             GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n    \
             ConnectTimeout 5\n    LogLevel ERROR\n"
        );
        s
    }
}

/// How a lab host's `systemctl` stop leaves Postfix running (`Lab::set_smtp_stays_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopFault {
    /// The stop succeeds: a Postfix master that outlived its unit.
    Silent,
    /// The stop fails (exit 1) after Dovecot stopped: postfix's stop job failed.
    Fails,
}

/// Empties `dir` for a new lab: a stopped lab is replaced, a running one or a directory
/// that is not a lab's is refused.
fn clear_dir(dir: &Path) -> Result<()> {
    if dir.join(STATE_FILE).exists() {
        if let Ok(old) = LabState::load(dir) {
            let running = old.agent.is_some_and(|r| r.alive())
                || old.hosts.iter().any(|h| h.sshd.is_some_and(|r| r.alive()));
            if running {
                return Err(LabError::AlreadyRunning {
                    dir: dir.to_path_buf(),
                });
            }
        }
        Lab::down(dir)?;
        fs::remove_dir_all(dir).map_err(LabError::io(format!(
            "remove the old lab {}",
            dir.display()
        )))?;
    } else if dir.exists() {
        let empty = fs::read_dir(dir)
            .map_err(LabError::io(format!("list {}", dir.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(LabError::NotALabDir {
                dir: dir.to_path_buf(),
            });
        }
    }
    fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))
}
