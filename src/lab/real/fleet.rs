//! A fleet of real chatmail relays: `cmfleet lab up --real-chatmail`.
//!
//! Every OLD and NEW is a booted Debian 12 container (this module's parent), chatmail's
//! own `cmdeploy run` deploys every OLD in full from the lab's checkout (`chatmail`),
//! and NEW hosts stay fresh Debian 12, as a migration finds them. The lab then writes
//! what the loopback lab writes, so every command works on either kind:
//!
//! `DIR/inventory.toml` (cmdeploy = the checkout's `scripts/cmdeploy`, run with
//! `cmdeploy_home` and `cmdeploy_env` = the overlay's switches and the ssh wrapper,
//! `skip_dns_check`: the lab has no public DNS), `DIR/ssh_config` (hosts `relayN-old`
//! and `relayN-new`), `DIR/id_ed25519` (the lab key, held by the lab's ssh-agent at
//! `DIR/agent.sock` for OLD -> NEW pushes), `DIR/relay` (the checkout),
//! `DIR/relays/DOMAIN/chatmail.ini`, `DIR/deploy/HOST.log` (each deploy's output),
//! `DIR/accounts.txt` (two accounts per relay, made by their first IMAP login),
//! `DIR/real/` (the containers' lab) and `DIR/chatmail-lab.json` (what runs besides).
//!
//! Relay i's mail_domain is `_relayI.lab.example`: a leading `_` gives it a self-signed
//! certificate (nothing to ask Let's Encrypt). OLD of relay i is host 2i-1 of the real
//! lab (198.18.X.2i), NEW is host 2i (198.18.X.2i+1).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::chatmail::{self, CmdeployHome, PrepareOptions, RealChatmail, RelaySource};
use super::{dns, RealLab, RealLabOptions, RealNet};
use crate::lab::error::{LabError, Result};
use crate::lab::process::{stop_all, ProcRecord, Stopped};

/// What this part of the lab records (the containers record themselves in `real/`).
pub const STATE_FILE: &str = crate::lab::state::CHATMAIL_STATE_FILE;

/// OLD deploys that run at once: each is a full chatmail install (apt, pip, builds).
const DEPLOYS_AT_ONCE: usize = 2;

/// A real-chatmail lab to bring up.
#[derive(Debug, Clone)]
pub struct ChatmailLabOptions {
    pub dir: PathBuf,
    pub relays: usize,
    pub net: RealNet,
    pub relay: RelaySource,
}

/// The record in `DIR/chatmail-lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChatmailLabState {
    agent: Option<ProcRecord>,
    /// The lab's BIND (`dns`), once it runs.
    #[serde(default)]
    named: Option<ProcRecord>,
    domains: Vec<String>,
}

/// How long the parts of `up` took (for the operator and docs/performance.md).
#[derive(Debug, Clone, Default)]
pub struct ChatmailLabTimings {
    pub hosts: Duration,
    pub chatmail: Duration,
    /// Per OLD host: its full `cmdeploy run`.
    pub deploys: Vec<(String, Duration)>,
}

/// A lab of real chatmail relays.
#[derive(Debug)]
pub struct ChatmailLab {
    pub dir: PathBuf,
    pub hosts: RealLab,
    pub chatmail: RealChatmail,
    pub domains: Vec<String>,
    pub timings: ChatmailLabTimings,
}

/// The mail_domain of relay `i` (1-based).
pub fn domain(i: usize) -> String {
    format!("_relay{i}.{}", dns::ZONE)
}

impl ChatmailLab {
    /// Boots the hosts, prepares the checkout, deploys every OLD with chatmail's own
    /// cmdeploy and writes the inventory. On failure the containers and the agent are
    /// taken down again; the directory keeps the logs.
    pub fn up(opts: ChatmailLabOptions) -> Result<ChatmailLab> {
        let dir = std::path::absolute(&opts.dir)
            .map_err(LabError::io(format!("resolve {}", opts.dir.display())))?;
        // A stopped lab there is replaced whole: its journal and cmfleet's known_hosts
        // name the old containers' host keys, which the new ones do not have.
        let running = |d: &Path| {
            load_state(d).is_ok_and(|st| {
                st.agent.is_some_and(|a| a.alive()) || st.named.is_some_and(|n| n.alive())
            })
        };
        crate::lab::state::clear_lab_dir(&dir, STATE_FILE, running, |d: &Path| {
            ChatmailLab::down(d)
        })?;
        let key = dir.join("id_ed25519");
        if !key.exists() {
            crate::lab::sshd::keygen_all(&[&key], "cmfleet-real-lab")?;
        }
        // Before anything is built: the lab's DNS comes last, after minutes of deploys.
        dns::preflight()?;
        let domains: Vec<String> = (1..=opts.relays).map(domain).collect();
        let names: Vec<String> = (1..=opts.relays)
            .flat_map(|i| [format!("relay{i}-old"), format!("relay{i}-new")])
            .collect();
        let started = Instant::now();
        let mut host_opts = RealLabOptions::new(dir.join("real"), opts.net, names, &key);
        host_opts.resolver = Some(opts.net.gateway());
        let hosts = RealLab::up(host_opts)?;
        let mut timings = ChatmailLabTimings {
            hosts: started.elapsed(),
            ..Default::default()
        };
        let up = (|| {
            let agent =
                crate::lab::agent::start(&dir.join("agent.sock"), &dir.join("agent.log"), &key)?;
            let mut state = ChatmailLabState {
                agent: Some(agent),
                named: None,
                domains: domains.clone(),
            };
            save_state(&dir, &state)?;
            let lab_dns = start_dns(&dir, &hosts, &domains)?;
            state.named = Some(lab_dns.named);
            save_state(&dir, &state)?;
            let started = Instant::now();
            let chatmail = chatmail::prepare(&dir, &PrepareOptions::new(opts.relay.clone())?)?;
            timings.chatmail = started.elapsed();
            let home = write_home(&dir, &key, &hosts)?;
            for d in &domains {
                chatmail::write_relay_ini(&dir, &chatmail.checkout, d)?;
            }
            fs::copy(hosts.ssh_config(), dir.join("ssh_config"))
                .map_err(LabError::io("copy the lab's ssh_config"))?;
            raise_inotify_limits()?;
            timings.deploys = deploy_olds(&dir, &chatmail, &home, &hosts, &domains)?;
            publish_dkim(&lab_dns, &hosts, &domains)?;
            make_accounts(&dir, &hosts, &domains)?;
            write_inventory(&dir, &chatmail, &home, &hosts, &domains, &lab_dns)?;
            Ok(chatmail)
        })();
        match up {
            Ok(chatmail) => Ok(ChatmailLab {
                dir,
                hosts,
                chatmail,
                domains,
                timings,
            }),
            Err(e) => {
                let _ = ChatmailLab::down(&dir);
                Err(e)
            }
        }
    }

    /// Stops the agent and BIND and takes the containers down (see `RealLab::down`).
    pub fn down(dir: impl AsRef<Path>) -> Result<Vec<Stopped>> {
        let dir = dir.as_ref();
        // The containers go down even when the agent cannot be stopped: they are what
        // holds the machine's namespaces, cgroups and NAT rules.
        let agent = match load_state(dir) {
            Ok(state) => {
                let agents: Vec<(ProcRecord, String)> = state
                    .agent
                    .into_iter()
                    .map(|a| (a, "ssh-agent".to_string()))
                    .chain(state.named.map(|n| (n, "named".to_string())))
                    .collect();
                stop_all(&agents, Duration::from_secs(2))
            }
            Err(_) => Ok(Vec::new()),
        };
        let hosts = if dir.join("real").join(super::STATE_FILE).exists() {
            RealLab::down(dir.join("real"))
        } else {
            Ok(Vec::new())
        };
        let mut stopped = hosts?;
        stopped.extend(agent?);
        Ok(stopped)
    }

    /// Whether `dir` holds a real-chatmail lab.
    pub fn is_one(dir: &Path) -> bool {
        dir.join(STATE_FILE).exists()
    }

    /// The lab's inventory.
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.toml")
    }
}

fn save_state(dir: &Path, state: &ChatmailLabState) -> Result<()> {
    crate::lab::state::save_record(dir, STATE_FILE, state)
}

fn load_state(dir: &Path) -> Result<ChatmailLabState> {
    crate::lab::state::load_record(dir, STATE_FILE)
}

/// Starts the lab's BIND with every relay's records, its name on OLD; DKIM comes once
/// the deploys have made the keys (`publish_dkim`).
fn start_dns(dir: &Path, hosts: &RealLab, domains: &[String]) -> Result<dns::LabDns> {
    let mut relays = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        relays.push(dns::RelayRecords {
            domain: d.clone(),
            addr: old_host(hosts, i)?.addr,
            dkim: None,
        });
    }
    let forwarders = super::net::nameservers(Path::new("/etc/resolv.conf"))?;
    dns::start(dir, hosts.net(), &forwarders, &relays)
}

/// Publishes every relay's DKIM key, read from OLD, where OLD's own deploy made it.
fn publish_dkim(lab_dns: &dns::LabDns, hosts: &RealLab, domains: &[String]) -> Result<()> {
    let mut records = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let value = dkim_value(hosts, old_host(hosts, i)?)?;
        records.push(dns::dkim_record(d, DKIM_SELECTOR, &value));
    }
    lab_dns.add(&records)
}

/// Accounts every OLD gets at `up`, so that it holds mail state as a relay in use does
/// (a relay without a single account has no /home/vmail/mail, which cmfleet's
/// preflight refuses: it cannot tell such a host from a wrong one).
const ACCOUNTS_PER_RELAY: usize = 2;

/// An IMAPS login, as a chatmail user's first one (doveauth makes the account, Dovecot
/// its INBOX); the password comes on stdin. The certificates are the lab's
/// self-signed ones.
const FIRST_LOGIN: &str = "import imaplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
c = imaplib.IMAP4_SSL(sys.argv[1], 993, ssl_context=ctx, timeout=60)
c.login(sys.argv[2], sys.stdin.readline().strip())
c.select('INBOX')
c.logout()
";

/// Makes [`ACCOUNTS_PER_RELAY`] accounts on every OLD through the relay itself and
/// writes DIR/accounts.txt (`ADDRESS PASSWORD OLD_ADDR NEW_ADDR`, as the loopback lab).
fn make_accounts(dir: &Path, hosts: &RealLab, domains: &[String]) -> Result<()> {
    use std::io::Write as _;
    let mut accounts = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let old = old_host(hosts, i)?;
        let new = hosts
            .host(&format!("relay{}-new", i + 1))
            .ok_or_else(|| LabError::Options(format!("the lab has no host relay{}-new", i + 1)))?;
        for n in 1..=ACCOUNTS_PER_RELAY {
            // chatmail's default localparts are 9 characters long, exactly.
            let address = format!("user{n:05}@{d}");
            let password = crate::lab::accounts::password(0, &address);
            let mut child = Command::new("python3")
                .args(["-c", FIRST_LOGIN, &old.addr.to_string(), &address])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(LabError::io("run python3 for a first login"))?;
            if let Some(mut stdin) = child.stdin.take() {
                writeln!(stdin, "{password}").map_err(LabError::io("write to python3"))?;
            }
            let out = child
                .wait_with_output()
                .map_err(LabError::io("wait for python3"))?;
            if !out.status.success() {
                return Err(LabError::Command {
                    command: format!("first IMAP login of {address} on {}", old.name),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            accounts.push(crate::lab::accounts::Account {
                address,
                password,
                old: old.addr,
                new: new.addr,
            });
        }
    }
    crate::lab::accounts::write_file(&dir.join("accounts.txt"), &accounts)
}

/// Relay `i`'s (0-based) OLD host.
fn old_host(hosts: &RealLab, i: usize) -> Result<&super::RealHost> {
    let name = format!("relay{}-old", i + 1);
    hosts
        .host(&name)
        .ok_or_else(|| LabError::Options(format!("the lab has no host {name}")))
}

/// chatmail's DKIM selector (fixed in `opendkim/deployer.py`).
const DKIM_SELECTOR: &str = "opendkim";

/// The DKIM record's value for the key on `host`, made as chatmail's `remote/rdns.py`
/// makes it.
fn dkim_value(hosts: &RealLab, host: &super::RealHost) -> Result<String> {
    let cmd = format!("openssl rsa -in /etc/dkimkeys/{DKIM_SELECTOR}.private -pubout 2>/dev/null");
    let pem = crate::lab::process::run(&mut hosts.ssh(host, &cmd))?;
    let key: String = pem
        .lines()
        .filter(|l| !l.starts_with('-'))
        .collect::<Vec<_>>()
        .concat();
    if key.is_empty() {
        return Err(LabError::Options(format!(
            "{} has no DKIM key in /etc/dkimkeys/{DKIM_SELECTOR}.private after its deploy",
            host.name
        )));
    }
    Ok(format!("v=DKIM1;k=rsa;p={key};s=email;t=s"))
}

/// DIR/cmdeploy-home for every host, with the host keys the containers' lab recorded
/// (`ADDR,NAME TYPE BASE64` lines of its known_hosts).
fn write_home(dir: &Path, key: &Path, hosts: &RealLab) -> Result<CmdeployHome> {
    let known = fs::read_to_string(hosts.known_hosts())
        .map_err(LabError::io("read the real lab's known_hosts"))?;
    let mut lines: Vec<(std::net::IpAddr, String)> = Vec::new();
    for h in hosts.hosts() {
        let prefix = format!("{},", h.addr);
        if let Some(line) = known
            .lines()
            .find(|l| l.starts_with(&prefix) && l.contains(" ssh-ed25519 "))
        {
            let key_part = line.split_once(' ').map(|(_, k)| k).unwrap_or_default();
            lines.push((std::net::IpAddr::V4(h.addr), key_part.to_string()));
        }
    }
    let refs: Vec<(std::net::IpAddr, &str)> = lines.iter().map(|(a, l)| (*a, l.as_str())).collect();
    chatmail::write_cmdeploy_home(dir, key, &refs)
}

/// chatmail's deploy raises the inotify limits for Dovecot unless they are above
/// 65535 already (`dovecot/deployer.py`: "enables running in incus containers where
/// sysctl readonly"). A container's /proc/sys is read-only and these limits are the
/// machine's, so the lab raises them on the machine, as an operator of such
/// containers does. They stay raised after `lab down` (a higher limit harms nothing).
fn raise_inotify_limits() -> Result<()> {
    for name in ["max_user_instances", "max_user_watches"] {
        let path = PathBuf::from(format!("/proc/sys/fs/inotify/{name}"));
        let now: u64 = fs::read_to_string(&path)
            .map_err(LabError::io(format!("read {}", path.display())))?
            .trim()
            .parse()
            .unwrap_or(0);
        if now <= 65535 {
            fs::write(&path, "65536").map_err(LabError::io(format!("raise {}", path.display())))?;
        }
    }
    Ok(())
}

/// The environment of every lab cmdeploy run: the overlay's switches (opendkim asks
/// the lab's resolver on the bridge) and the ssh wrapper first in PATH (HOME comes
/// from `cmdeploy_home`).
fn cmdeploy_env(
    chatmail: &RealChatmail,
    home: &CmdeployHome,
    hosts: &RealLab,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = chatmail
        .env(Some(hosts.net().gateway()))
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
        .collect();
    for (k, v) in home.env(std::env::var_os("PATH")) {
        if k != "HOME" {
            env.push((k.to_string(), v.to_string_lossy().into_owned()));
        }
    }
    env
}

/// Every OLD host gets a full `cmdeploy run`, `DEPLOYS_AT_ONCE` at a time, each
/// logged to DIR/deploy/HOST.log.
fn deploy_olds(
    dir: &Path,
    chatmail: &RealChatmail,
    home: &CmdeployHome,
    hosts: &RealLab,
    domains: &[String],
) -> Result<Vec<(String, Duration)>> {
    let logs = dir.join("deploy");
    fs::create_dir_all(&logs).map_err(LabError::io(format!("create {}", logs.display())))?;
    let env = cmdeploy_env(chatmail, home, hosts);
    let jobs: Vec<(String, String, PathBuf)> = domains
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let name = format!("relay{}-old", i + 1);
            let host = hosts.host(&name)?;
            Some((
                name,
                host.addr.to_string(),
                dir.join("relays").join(d).join("chatmail.ini"),
            ))
        })
        .collect();
    let mut timings = Vec::new();
    for batch in jobs.chunks(DEPLOYS_AT_ONCE) {
        let results: Vec<Result<(String, Duration)>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(name, addr, ini)| {
                    let (env, logs) = (&env, &logs);
                    s.spawn(move || {
                        deploy(
                            chatmail,
                            home,
                            env,
                            name,
                            addr,
                            ini,
                            &logs.join(format!("{name}.log")),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(LabError::Options("a deploy thread panicked".into()))
                    })
                })
                .collect()
        });
        for r in results {
            timings.push(r?);
        }
    }
    Ok(timings)
}

/// One full `cmdeploy run` of `ini` onto `addr`, as an operator deploys a relay.
fn deploy(
    chatmail: &RealChatmail,
    home: &CmdeployHome,
    env: &[(String, String)],
    name: &str,
    addr: &str,
    ini: &Path,
    log: &Path,
) -> Result<(String, Duration)> {
    let out = fs::File::create(log).map_err(LabError::io(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(LabError::io(format!("open {}", log.display())))?;
    // Runs from one checkout at once race: each rebuilds `chatmaild/dist` and renders
    // the website in the repository its imported package lives in. So each deploy
    // gets a worktree of its own, its packages first on PYTHONPATH, as cmfleet's
    // workspaces do.
    let worktree = log.with_extension("worktree");
    add_worktree(&chatmail.checkout, &worktree)?;
    let python_path = std::env::join_paths([
        worktree.join("cmdeploy/src"),
        worktree.join("chatmaild/src"),
    ])
    .map_err(|e| LabError::Options(format!("PYTHONPATH for {}: {e}", worktree.display())))?;
    let mut cmd = Command::new(worktree.join("scripts/cmdeploy"));
    cmd.args(["run", "--config"])
        .arg(ini)
        .args(["--ssh-host", addr, "--skip-dns-check"])
        .current_dir(&worktree)
        .env("PYTHONPATH", python_path)
        .env_remove("CMDEPLOY_STAGES")
        .env("HOME", &home.home)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(LabError::io(format!("run cmdeploy for {name}")));
    let _ = chatmail::git::git(
        &chatmail.checkout,
        &["worktree", "remove", "--force", &worktree.to_string_lossy()],
    );
    let status = status?;
    if !status.success() {
        return Err(LabError::Command {
            command: format!(
                "cmdeploy run --config {} --ssh-host {addr} (deploying {name})",
                ini.display()
            ),
            status: status.to_string(),
            stderr: crate::lab::process::log_tail(log),
        });
    }
    Ok((name.to_string(), started.elapsed()))
}

/// A detached worktree of `checkout` at `dir`, with a link to the checkout's venv
/// (untracked, so not in the worktree; `scripts/cmdeploy` sources it from there).
fn add_worktree(checkout: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let _ = chatmail::git::git(
            checkout,
            &["worktree", "remove", "--force", &dir.to_string_lossy()],
        );
    }
    chatmail::git::git(checkout, &["worktree", "prune"])?;
    chatmail::git::git(
        checkout,
        &[
            "worktree",
            "add",
            "--force",
            "--detach",
            &dir.to_string_lossy(),
            "HEAD",
        ],
    )?;
    std::os::unix::fs::symlink(checkout.join("venv"), dir.join("venv")).map_err(LabError::io(
        format!("link the venv into {}", dir.display()),
    ))
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// DIR/inventory.toml for the deployed fleet.
fn write_inventory(
    dir: &Path,
    chatmail: &RealChatmail,
    home: &CmdeployHome,
    hosts: &RealLab,
    domains: &[String],
    lab_dns: &dns::LabDns,
) -> Result<()> {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `cmfleet lab up --real-chatmail`: {} real chatmail relays on {}.\n",
        domains.len(),
        hosts.net().cidr()
    );
    let _ = writeln!(s, "[fleet]");
    let _ = writeln!(
        s,
        "cmdeploy = {}",
        q(&chatmail.cmdeploy().to_string_lossy())
    );
    let _ = writeln!(s, "ssh_auth_sock = {}", q("agent.sock"));
    let _ = writeln!(s, "cmdeploy_home = {}", q(&home.home.to_string_lossy()));
    let env: Vec<String> = cmdeploy_env(chatmail, home, hosts)
        .iter()
        .map(|(k, v)| format!("{k} = {}", q(v)))
        .collect();
    let _ = writeln!(s, "cmdeploy_env = {{ {} }}\n", env.join(", "));
    let _ = writeln!(s, "[defaults]");
    let _ = writeln!(s, "ssh_key = {}", q("id_ed25519"));
    let _ = writeln!(s, "skip_dns_check = true");
    // Step 5 updates the lab's BIND as an operator's would update their provider's
    // primary: RFC 2136, signed with the zone's TSIG key. The controller cannot
    // resolve `ns1.lab.example` itself, hence `nameservers`.
    let _ = writeln!(
        s,
        "dns = {{ provider = \"rfc2136\", server = {server}, zone = {zone}, tsig_key_file = {key}, ttl = {ttl}, nameservers = {{ {ns} = {server} }} }}",
        server = q(&lab_dns.server.to_string()),
        zone = q(dns::ZONE),
        key = q(&lab_dns.key_file.to_string_lossy()),
        ttl = dns::TTL,
        ns = q(&format!("ns1.{}", dns::ZONE)),
    );
    for (i, d) in domains.iter().enumerate() {
        let addr = |side: &str| {
            hosts
                .host(&format!("relay{}-{side}", i + 1))
                .map(|h| h.addr.to_string())
                .unwrap_or_default()
        };
        let (old, new) = (addr("old"), addr("new"));
        let _ = writeln!(s, "\n[[relay]]");
        let _ = writeln!(s, "mail_domain = {}", q(d));
        let _ = writeln!(s, "config = {}", q(&format!("relays/{d}/chatmail.ini")));
        let _ = writeln!(s, "old = {{ ssh = {}, ip4 = {} }}", q(&old), q(&old));
        let _ = writeln!(s, "new = {{ ssh = {}, ip4 = {} }}", q(&new), q(&new));
    }
    let path = dir.join("inventory.toml");
    fs::write(&path, s).map_err(LabError::io(format!("write {}", path.display())))
}
