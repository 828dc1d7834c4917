//! Faults and activity a test or a rehearsal injects into a running lab: hosts that
//! stop or crash, slow links, a full disk, a cmdeploy that fails or costs what the
//! real one does, a Postfix that outlives its stop, mail activity on OLD.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::activity::{self, Activity, ActivityReport};
use super::error::{LabError, Result};
use super::fleet::{port_accepts, Lab};
use super::host::STATE_DIR;
use super::hoststate::{read_host_state, HostState};
use super::process;

/// How a lab host's `systemctl` stop leaves Postfix running (`Lab::set_smtp_stays_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopFault {
    /// The stop succeeds: a Postfix master that outlived its unit.
    Silent,
    /// The stop fails (exit 1) after Dovecot stopped: postfix's stop job failed.
    Fails,
}

impl Lab {
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
}
