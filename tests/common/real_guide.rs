//! The guide's own sequence on one relay of a real-chatmail lab, for the night test to
//! set cmfleet's downtime against (`CMFLEET_REAL_GUIDE=1`).
//!
//! The commands are those of chatmail's "Migrating to a new machine" (and of
//! benches/peers/relay.sh, the benchmark's shell contender), run the way an operator
//! runs them from the lab's checkout: the real `scripts/cmdeploy` with the lab's
//! environment (the overlay's switches, the ssh home), `tar | ssh tar` and `rsync` from
//! OLD to NEW through the forwarded lab agent, `chown`, and for step 5 an RFC 2136
//! update of the lab's BIND with `nsupdate` (the guide leaves DNS to the operator; this
//! is the fastest an operator gets). Downtime is the guide's: from the start of step 3
//! to the end of step 6.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How the lab runs cmdeploy, read from its inventory's `[fleet]`.
pub struct Cmdeploy {
    pub program: PathBuf,
    pub home: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Cmdeploy {
    pub fn from_inventory(inventory: &Path) -> Cmdeploy {
        let text = std::fs::read_to_string(inventory).expect("read the inventory");
        let v: toml::Table = text.parse().expect("parse the inventory");
        let fleet = v["fleet"].as_table().expect("[fleet]");
        let s = |k: &str| fleet[k].as_str().expect(k).to_string();
        let env = fleet["cmdeploy_env"]
            .as_table()
            .expect("cmdeploy_env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_string()))
            .collect();
        Cmdeploy {
            program: PathBuf::from(s("cmdeploy")),
            home: PathBuf::from(s("cmdeploy_home")),
            env,
        }
    }

    /// `[CMDEPLOY_STAGES=stages] scripts/cmdeploy run --config INI --ssh-host ADDR
    /// --skip-dns-check [extra]`, from the checkout; panics when it fails.
    fn run(&self, stages: Option<&str>, ini: &Path, addr: &str, extra: &[&str]) {
        let checkout = self
            .program
            .parent()
            .and_then(Path::parent)
            .expect("the checkout");
        let mut cmd = Command::new(&self.program);
        cmd.args(["run", "--config"])
            .arg(ini)
            .args(["--ssh-host", addr, "--skip-dns-check"])
            .args(extra)
            .current_dir(checkout)
            .env("HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(stages) = stages {
            cmd.env("CMDEPLOY_STAGES", stages);
        }
        let out = cmd.output().expect("run cmdeploy");
        assert!(
            out.status.success(),
            "the guide's cmdeploy {stages:?} {extra:?} on {addr}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One relay migrated by the guide's commands.
pub struct GuideRelay<'a> {
    pub lab_dir: &'a Path,
    pub cmdeploy: Cmdeploy,
    pub ini: PathBuf,
    pub domain: String,
    pub old: String,
    pub new: String,
    pub dns_server: String,
    pub key_file: PathBuf,
}

impl GuideRelay<'_> {
    /// `ssh -F DIR/ssh_config [-A] root@ADDR -- CMD` with the lab's agent; panics when
    /// it fails.
    fn ssh(&self, forward: bool, addr: &str, cmd: &str) {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(self.lab_dir.join("ssh_config"));
        if forward {
            c.arg("-A");
        }
        let out = c
            .arg(format!("root@{addr}"))
            .arg("--")
            .arg(cmd)
            .env("SSH_AUTH_SOCK", self.lab_dir.join("agent.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert!(
            out.status.success(),
            "the guide's `{cmd}` on {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// OLD learns NEW's host key, as the operator's first `ssh` from OLD to NEW would
    /// ask them to (the guide's steps 1 and 4 ssh from OLD to NEW).
    pub fn introduce(&self) {
        let keys = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", &self.new])
            .output()
            .expect("ssh-keyscan");
        let line = String::from_utf8_lossy(&keys.stdout).trim().to_string();
        assert!(!line.is_empty(), "no host key from {}", self.new);
        self.ssh(
            false,
            &self.old,
            &format!("mkdir -p /root/.ssh && printf '%s\\n' '{line}' >> /root/.ssh/known_hosts"),
        );
    }

    /// Steps 1 and 2: no downtime.
    pub fn pre_stage(&self) -> Duration {
        let started = Instant::now();
        let new = &self.new;
        self.ssh(
            true,
            &self.old,
            &format!("tar c /home/vmail/mail | ssh root@{new} \"tar x -C /\""),
        );
        self.cmdeploy
            .run(Some("install,configure"), &self.ini, &self.new, &[]);
        started.elapsed()
    }

    /// Steps 3 to 6; returns the downtime (start of 3 to end of 6).
    pub fn cutover(&self) -> Duration {
        let new = &self.new;
        let started = Instant::now();
        // 3
        self.cmdeploy
            .run(None, &self.ini, &self.old, &["--disable-mail"]);
        // 4
        self.ssh(
            true,
            &self.old,
            &format!(
                "tar c /var/lib/acme /etc/dkimkeys /var/spool/postfix | ssh root@{new} \"tar x -C /\" && rsync -azH /home/vmail/mail root@{new}:/home/vmail/"
            ),
        );
        self.ssh(
            false,
            &self.new,
            "chown root: -R /var/lib/acme; chown opendkim: -R /etc/dkimkeys; chown vmail: -R /home/vmail/mail",
        );
        // 5
        let update = format!(
            "server {}\ncheck-names no\nupdate delete {}. A\nupdate add {}. 10 A {new}\nsend\n",
            self.dns_server, self.domain, self.domain
        );
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nsupdate");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), update.as_bytes())
            .expect("write the update");
        drop(child.stdin.take());
        assert!(child.wait().expect("nsupdate").success(), "nsupdate");
        // 6
        self.cmdeploy
            .run(Some("activate"), &self.ini, &self.new, &[]);
        started.elapsed()
    }
}
