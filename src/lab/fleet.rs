//! The lab's lifecycle: bring it up, find it again, take it down. Where its files
//! and hosts are is in `layout`; faults and activity to inject in `faults`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::addr::{Side, Subnet, MAX_RELAYS};
use super::data::{self, DataOptions};
use super::error::{LabError, Result};
use super::host::{self, LabHost};
use super::hoststate::{read_host_state, HostState};
use super::process::{self, ProcRecord, Stopped};
use super::state::{LabState, STATE_FILE};
use super::users::MachineTables;
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
                    crate::infra::shell::quote(&self.state.dir.display().to_string())
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
    pub(super) fn start_hosts(&mut self, only: Option<Ipv4Addr>) -> Result<()> {
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

    /// `DIR/bin`, mounted over every host's /usr/local/sbin.
    pub(super) fn bin_dir(&self) -> PathBuf {
        self.state.dir.join("bin")
    }

    pub(super) fn index_of(&self, addr: Ipv4Addr) -> Result<usize> {
        self.state
            .hosts
            .iter()
            .position(|h| h.addr == addr)
            .ok_or(LabError::UnknownHost { addr })
    }
}

/// Empties `dir` for a new lab: a stopped lab is replaced, a running one or a directory
/// that is not a lab's is refused.
fn clear_dir(dir: &Path) -> Result<()> {
    let running = |dir: &Path| {
        LabState::load(dir).is_ok_and(|old| {
            old.agent.is_some_and(|r| r.alive())
                || old.hosts.iter().any(|h| h.sshd.is_some_and(|r| r.alive()))
        })
    };
    super::state::clear_lab_dir(dir, STATE_FILE, running, |d| Lab::down(d))
}
