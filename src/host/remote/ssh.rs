//! One multiplexed ssh connection per host, shared by every command for that host.
//!
//! The `openssh` crate owns the master connection (options, host key policy,
//! liveness). Commands run as channels on it, opened in-process over the mux
//! protocol (`channel.rs`): no process per command, and agent forwarding per
//! channel, which the crate's own `command()` never requests.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use openssh::{KnownHosts, Session, SessionBuilder};
use thiserror::Error;
use tokio::sync::{Mutex, Semaphore};

use super::channel::run_channel;
use super::classify::{classify_connect, classify_exit, CommandError, CommandKind};
use super::process::{LineSink, ProcessOutput, Stdout};
use crate::model::inventory::{Host, HostKeyPolicy, Relay};
use crate::model::step::ErrorKind;

/// Channels open at once per connection: sshd's MaxSessions defaults to 10.
const CHANNELS_PER_HOST: usize = 8;
/// A master idle this long exits by itself, so a crashed controller leaves none behind for long.
const MASTER_IDLE_SECS: usize = 600;

#[derive(Debug, Error)]
pub enum SshError {
    #[error("cannot prepare ssh files in {}: {source}", path.display())]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to {dest}: {message}")]
    Connect {
        dest: String,
        kind: ErrorKind,
        message: String,
    },
}

impl SshError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SshError::Setup { .. } => ErrorKind::Permanent,
            SshError::Connect { kind, .. } => *kind,
        }
    }
}

/// Settings shared by all connections of a run.
#[derive(Debug, Clone)]
pub struct SshPoolConfig {
    /// cmfleet's state directory: its known_hosts and ssh config live there.
    pub state_dir: PathBuf,
    /// The agent to authenticate with and forward (else `$SSH_AUTH_SOCK`).
    pub auth_sock: Option<PathBuf>,
    /// New connections per second, fleet-wide (sshd's MaxStartups, fail2ban).
    pub connects_per_sec: u32,
    /// Per-group connection rates (e.g. one datacenter's firewall), by group name.
    pub group_connects_per_sec: HashMap<String, u32>,
    /// Reuse masters the last run kept, and keep some at the end (`close_keeping`).
    /// Only for a run that holds the journal lock: no other run may close a master
    /// this one uses.
    pub keep_masters: bool,
}

/// How to connect to a relay's hosts: the relay's settings that shape a master.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions<'a> {
    /// Rate-limited with this group's connection rate too.
    pub group: Option<&'a str>,
    pub policy: HostKeyPolicy,
    pub timeout: Duration,
    /// KexAlgorithms for the master; `None` keeps OpenSSH's own.
    pub kex: Option<&'a str>,
    /// Ciphers for the master (staged transfers run over it); `None`: OpenSSH's.
    pub cipher: Option<&'a str>,
}

impl<'a> ConnectOptions<'a> {
    pub fn for_relay(relay: &'a Relay) -> Self {
        let s = &relay.settings;
        ConnectOptions {
            group: relay.group.as_deref(),
            policy: s.host_key_policy,
            timeout: s.connect_timeout,
            kex: s.kex.as_deref(),
            cipher: s.cipher.as_deref(),
        }
    }
}

/// An open master connection to one host.
pub struct HostConn {
    session: Session,
    /// `user@host:port`, for messages.
    pub dest: String,
    /// Bounds channels in flight on this master.
    channels: Semaphore,
    /// The ssh config the master was started with (a kept master is reused only
    /// with the same).
    config: PathBuf,
    /// A master resumed from an earlier run: its control directory, which is ours to
    /// remove once it is closed.
    resumed_dir: Option<PathBuf>,
}

impl HostConn {
    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
    }

    /// The `ssh` command that reuses this master (for rsync's `-e`).
    pub fn ssh_command(&self) -> String {
        master_ssh_command(self.control_socket())
    }
}

/// The `ssh` command that reuses the master listening on `control`.
pub fn master_ssh_command(control: &Path) -> String {
    format!(
        "ssh -F /dev/null -o ControlMaster=no -S {}",
        crate::infra::shell::quote(&control.display().to_string())
    )
}

type Slot = Arc<Mutex<Option<Arc<HostConn>>>>;

/// A master left running by an earlier run, as recorded in `state_dir/masters`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptMaster {
    config: PathBuf,
    ctl: PathBuf,
    /// The agent the master forwards (fixed when it started; empty: none). A new
    /// agent since (another login) would leave the push at step 4 without a key.
    agent: String,
}

/// A master's (KexAlgorithms, Ciphers); `None`s keep OpenSSH's own.
type Algorithms = (Option<String>, Option<String>);

/// All master connections of a run.
pub struct SshPool {
    state_dir: PathBuf,
    /// The masters' ssh config files, one per (key exchange, cipher) in use.
    config_files: std::sync::Mutex<HashMap<Algorithms, PathBuf>>,
    known_hosts: PathBuf,
    /// `known_hosts` through a link in `control_dir`, a path ssh cannot misparse.
    known_hosts_link: PathBuf,
    /// Held for its lifetime: the known_hosts link lives there.
    _control_dir: tempfile::TempDir,
    /// Where masters put their control sockets: a per-user directory that outlives
    /// the run when masters are kept, else `control_dir`.
    masters_dir: PathBuf,
    /// Masters the last run kept (by dest), not yet resumed; `None`: not keeping.
    kept: Option<std::sync::Mutex<HashMap<String, KeptMaster>>>,
    auth_sock: Option<PathBuf>,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    limiter: DefaultDirectRateLimiter,
    group_limiters: HashMap<String, DefaultDirectRateLimiter>,
}

fn per_second(rate: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN),
    ))
}

impl SshPool {
    pub fn new(cfg: &SshPoolConfig) -> Result<SshPool, SshError> {
        let setup = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SshError::Setup { path, source }
        };
        crate::infra::state_dir::ensure(&cfg.state_dir).map_err(setup(&cfg.state_dir))?;
        // Control sockets need a short path (at most ~100 bytes in total).
        let control_dir = tempfile::Builder::new()
            .prefix("cmf-")
            .tempdir_in("/tmp")
            .map_err(setup(Path::new("/tmp")))?;
        // ssh splits `-o UserKnownHostsFile=PATH` (all the crate can pass) at spaces
        // and quotes: it gets a link with a plain path to the state dir's file.
        let known_hosts = cfg.state_dir.join("known_hosts");
        let known_hosts_link = control_dir.path().join("known_hosts");
        std::os::unix::fs::symlink(&known_hosts, &known_hosts_link)
            .map_err(setup(&known_hosts_link))?;
        let masters_dir = match cfg.keep_masters {
            true => per_user_dir().unwrap_or_else(|| control_dir.path().to_path_buf()),
            false => control_dir.path().to_path_buf(),
        };
        let kept = cfg
            .keep_masters
            .then(|| std::sync::Mutex::new(read_kept(&cfg.state_dir)));
        Ok(SshPool {
            masters_dir,
            kept,
            state_dir: cfg.state_dir.clone(),
            config_files: std::sync::Mutex::new(HashMap::new()),
            known_hosts,
            known_hosts_link,
            _control_dir: control_dir,
            auth_sock: cfg.auth_sock.clone(),
            slots: std::sync::Mutex::new(HashMap::new()),
            limiter: per_second(cfg.connects_per_sec),
            group_limiters: cfg
                .group_connects_per_sec
                .iter()
                .map(|(g, r)| (g.clone(), per_second(*r)))
                .collect(),
        })
    }

    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(key.to_string()).or_default().clone()
    }

    /// The live master for `host`, connecting (rate limited, fleet-wide and for
    /// `group`) if there is none. `on_wait` is told when a rate limit holds it back.
    pub async fn connect(
        &self,
        host: &Host,
        opts: ConnectOptions<'_>,
        on_wait: impl Fn(),
    ) -> Result<Arc<HostConn>, SshError> {
        let dest = dest_of(host);
        let slot = self.slot(&dest);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.session.check().await.is_ok() {
                return Ok(conn.clone());
            }
            tracing::debug!(%dest, "master gone; connecting again");
        }
        let config = self.config_file(opts)?;
        if let Some(conn) = self.resume(&dest, &config).await {
            tracing::debug!(%dest, "reusing the master an earlier run kept");
            let conn = Arc::new(conn);
            *guard = Some(conn.clone());
            return Ok(conn);
        }
        let group_limiter = opts.group.and_then(|g| self.group_limiters.get(g));
        for limiter in std::iter::once(&self.limiter).chain(group_limiter) {
            if limiter.check().is_err() {
                tracing::debug!(%dest, "held back by the connection rate limit");
                on_wait();
                limiter.until_ready().await;
            }
        }
        tracing::debug!(%dest, kex = ?opts.kex, cipher = ?opts.cipher, "new master connection");
        let builder = self.builder(host, opts, &config);
        let session = builder.connect_mux(&host.ssh).await;
        let session = session.map_err(|e| connect_error(&dest, e, &self.known_hosts))?;
        let conn = Arc::new(HostConn {
            session,
            dest,
            channels: Semaphore::new(CHANNELS_PER_HOST),
            config,
            resumed_dir: None,
        });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// The ssh config file for masters with these algorithms (the crate has no way
    /// to pass `-o`, so options beyond its own go through `-F`).
    fn config_file(&self, opts: ConnectOptions<'_>) -> Result<PathBuf, SshError> {
        let mut files = match self.config_files.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (
            opts.kex.map(str::to_string),
            opts.cipher.map(str::to_string),
        );
        if let Some(path) = files.get(&key) {
            return Ok(path.clone());
        }
        let mut text = SSH_CONFIG.to_string();
        if let Some(k) = opts.kex {
            text.push_str(&format!("  KexAlgorithms {k}\n"));
        }
        if let Some(c) = opts.cipher {
            text.push_str(&format!("  Ciphers {c}\n"));
        }
        // Named by content and written whole (temp file, then rename): a `check` or
        // `verify` beside a running `migrate` writes the very same file, never a
        // half-written one under a master that starts, and a kept master is reused
        // only with a config of the same content (same name).
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let name = data_encoding::HEXLOWER.encode(&digest.as_ref()[..6]);
        let path = self.state_dir.join(format!("ssh_config-{name}"));
        let setup = |source| SshError::Setup {
            path: path.clone(),
            source,
        };
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            crate::infra::atomic::write(&path, text.as_bytes()).map_err(setup)?;
        }
        files.insert(key, path.clone());
        Ok(path)
    }

    /// The agent masters forward: the inventory's, else the environment's.
    fn agent_sock(&self) -> String {
        self.auth_sock
            .clone()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Whether a kept master fits this run: same ssh config, same agent, and that
    /// agent still answers.
    fn usable(&self, kept: &KeptMaster, config: &Path) -> bool {
        let agent = self.agent_sock();
        let agent_alive =
            agent.is_empty() || std::os::unix::net::UnixStream::connect(&agent).is_ok();
        kept.config == config && kept.agent == agent && agent_alive
    }

    /// A master the last run kept for `dest`, if it is alive and was started with
    /// the same settings and the same, still running, agent (else it is told to
    /// stop; it would idle out anyway).
    async fn resume(&self, dest: &str, config: &Path) -> Option<HostConn> {
        let kept = self.kept.as_ref()?.lock().ok()?.remove(dest)?;
        let session = Session::resume_mux(kept.ctl.clone().into_boxed_path(), None);
        let resumed_dir = kept.ctl.parent().map(Path::to_path_buf);
        if !self.usable(&kept, config) || session.check().await.is_err() {
            let _ = session.close().await;
            if let Some(dir) = resumed_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return None;
        }
        Some(HostConn {
            session,
            dest: dest.to_string(),
            channels: Semaphore::new(CHANNELS_PER_HOST),
            config: config.to_path_buf(),
            resumed_dir,
        })
    }

    fn builder(&self, host: &Host, opts: ConnectOptions<'_>, config: &Path) -> SessionBuilder {
        let mut b = SessionBuilder::default();
        b.user(host.user.clone())
            .port(host.port)
            .config_file(config)
            .user_known_hosts_file(&self.known_hosts_link)
            .known_hosts_check(match opts.policy {
                HostKeyPolicy::AcceptNew => KnownHosts::Add,
                HostKeyPolicy::Strict => KnownHosts::Strict,
            })
            .connect_timeout(opts.timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&self.masters_dir)
            .control_persist(openssh::ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(MASTER_IDLE_SECS)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            ));
        if let Some(key) = &host.key {
            b.keyfile(key);
        }
        if let Some(sock) = &self.auth_sock {
            b.ssh_auth_sock(sock);
        }
        b
    }

    /// Runs `script` on the host through its master, stdout going where `to` says.
    /// With `forward_agent`, the controller's agent is forwarded (OLD pushing to NEW,
    /// as in the guide).
    pub async fn run(
        &self,
        conn: &HostConn,
        script: &str,
        forward_agent: bool,
        kind: CommandKind,
        sink: &LineSink,
        to: Stdout,
    ) -> Result<ProcessOutput, CommandError> {
        let _channel = conn.channels.acquire().await.map_err(|_| CommandError {
            kind: ErrorKind::Interrupted,
            message: "the connection pool is shutting down".into(),
        })?;
        sink.log(&format!("$ [{}] {script}", conn.dest));
        let out = run_channel(conn.control_socket(), script, forward_agent, sink, to)
            .await
            .map_err(|e| CommandError {
                // A master that will not open a channel is gone or overloaded: the
                // next attempt reconnects.
                kind: match e {
                    super::channel::ChannelError::NulByte => ErrorKind::Permanent,
                    _ => ErrorKind::Transient,
                },
                message: format!("command on {} did not run: {e}", conn.dest),
            })?;
        if out.code == Some(0) {
            return Ok(out);
        }
        let mut kind = classify_exit(kind, out.code, &out.tail);
        if out.code == Some(255) && conn.session.check().await.is_err() {
            kind = ErrorKind::Transient;
        }
        sink.log(&format!("the command {}", out.ended()));
        Err(CommandError {
            kind,
            message: out.failure(&format!("the command on {}", conn.dest)),
        })
    }

    /// Known-hosts lines cmfleet holds for `host` (to vouch for NEW on OLD).
    pub fn known_host_lines(&self, host: &Host) -> Vec<String> {
        let pattern = if host.port == 22 {
            host.ssh.clone()
        } else {
            format!("[{}]:{}", host.ssh, host.port)
        };
        std::fs::read_to_string(&self.known_hosts)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|names| names.split(',').any(|n| n == pattern))
            })
            .map(str::to_string)
            .collect()
    }

    /// Closes every master (the crate's Drop would block a tokio worker).
    pub async fn close(&self) {
        self.close_keeping(&[]).await;
    }

    /// Closes every master except those of `keep` (relays pre-staged by this run:
    /// their cutover run reuses them instead of two new handshakes per relay). Kept
    /// masters are recorded in `state_dir/masters` for the next run; they exit by
    /// themselves after `MASTER_IDLE_SECS` without a channel (ControlPersist).
    pub async fn close_keeping(&self, keep: &[&Host]) {
        let keep: Vec<String> = keep.iter().map(|h| dest_of(h)).collect();
        let slots: Vec<Slot> = match self.slots.lock() {
            Ok(mut s) => s.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        let mut kept = Vec::new();
        for slot in slots {
            let Some(conn) = slot.lock().await.take() else {
                continue;
            };
            let Ok(conn) = Arc::try_unwrap(conn) else {
                continue;
            };
            if self.kept.is_some() && keep.contains(&conn.dest) {
                let (ctl, _) = conn.session.detach();
                kept.push((
                    conn.dest,
                    KeptMaster {
                        config: conn.config,
                        ctl: ctl.into(),
                        agent: self.agent_sock(),
                    },
                ));
                continue;
            }
            let _ = conn.session.close().await;
            if let Some(dir) = conn.resumed_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        if let Some(earlier) = self.kept.as_ref().and_then(|k| k.lock().ok()) {
            // Kept by an earlier run and not touched by this one: still recorded.
            kept.extend(earlier.iter().map(|(d, k)| (d.clone(), k.clone())));
            let _ = write_kept(&self.state_dir, &kept);
        }
    }
}

fn dest_of(host: &Host) -> String {
    format!("{}@{}:{}", host.user, host.ssh, host.port)
}

/// `/tmp/cmfleet-UID`, private to this user (kept masters' sockets outlive a run, so
/// they cannot live in the run's temporary directory). `None` when it exists but is
/// not a private directory of ours: then nothing is kept across runs.
fn per_user_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::getuid().as_raw();
    let dir = PathBuf::from(format!("/tmp/cmfleet-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(dir)
}

const KEPT_FILE: &str = "masters";

/// `dest TAB config TAB control-socket` lines; anything unreadable is ignored (a
/// master not found is only a fresh connection).
fn read_kept(state_dir: &Path) -> HashMap<String, KeptMaster> {
    let text = std::fs::read_to_string(state_dir.join(KEPT_FILE)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (dest, config, ctl) = (f.next()?, f.next()?, f.next()?);
            let kept = KeptMaster {
                config: PathBuf::from(config),
                ctl: PathBuf::from(ctl),
                agent: f.next().unwrap_or("").to_string(),
            };
            Some((dest.to_string(), kept))
        })
        .collect()
}

fn write_kept(state_dir: &Path, kept: &[(String, KeptMaster)]) -> std::io::Result<()> {
    let text: String = kept
        .iter()
        .map(|(d, k)| {
            let (config, ctl) = (k.config.display(), k.ctl.display());
            format!("{d}\t{config}\t{ctl}\t{}\n", k.agent)
        })
        .collect();
    let path = state_dir.join(KEPT_FILE);
    let tmp = state_dir.join(format!("{KEPT_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

fn connect_error(dest: &str, e: openssh::Error, known_hosts: &Path) -> SshError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    if let Some(changed) = changed_host_key(dest, &message, known_hosts) {
        return SshError::Connect {
            dest: dest.to_string(),
            kind: ErrorKind::Permanent,
            message: changed,
        };
    }
    let kind = match &e {
        openssh::Error::Connect(io) => match io.kind() {
            std::io::ErrorKind::PermissionDenied => ErrorKind::Permanent,
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut => {
                ErrorKind::Transient
            }
            _ => classify_connect(&message),
        },
        _ => classify_connect(&message),
    };
    SshError::Connect {
        dest: dest.to_string(),
        kind,
        message,
    }
}

/// ssh's many-line "REMOTE HOST IDENTIFICATION HAS CHANGED" banner, said in one line
/// that names the host and the key it offers now (reports cut long lines: the banner's
/// @@@ would hide both).
fn changed_host_key(dest: &str, message: &str, known_hosts: &Path) -> Option<String> {
    if !message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return None;
    }
    let words: Vec<&str> = message.split_whitespace().collect();
    let fingerprint = words
        .iter()
        .find(|w| w.starts_with("SHA256:") || w.starts_with("MD5:"))
        .map_or("(not shown by ssh)", |w| w.trim_end_matches('.'));
    let key_type = words
        .windows(4)
        .find(|w| w[0] == "for" && w[1] == "the" && w[3] == "key")
        .map_or("the offered key", |w| w[2]);
    let host = dest.split('@').nth(1).unwrap_or(dest);
    let host = host.strip_suffix(":22").unwrap_or(host);
    Some(format!(
        "host key changed, refused: {key_type} {fingerprint} is not the key of {host} in {} \
         (hint: if the machine was reinstalled, check that fingerprint on its console, then \
         remove the old key with `ssh-keygen -R {host} -f {}`; otherwise someone may be \
         intercepting the connection)",
        known_hosts.display(),
        crate::infra::shell::quote(&known_hosts.display().to_string())
    ))
}

/// The master's ssh options beyond what the builder sets. Agent forwarding must be
/// allowed on the master for `-A` channels to get it; never the user's own config.
const SSH_CONFIG: &str = "\
Host *
  ForwardAgent yes
  BatchMode yes
  HashKnownHosts no
  GlobalKnownHostsFile /dev/null
  ServerAliveCountMax 3
  LogLevel ERROR
";

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool on `state_dir`, forwarding `agent`, keeping masters or not.
    fn pool_in(state_dir: &Path, agent: Option<PathBuf>, keep_masters: bool) -> SshPool {
        SshPool::new(&SshPoolConfig {
            state_dir: state_dir.to_path_buf(),
            auth_sock: agent,
            connects_per_sec: 1,
            group_connects_per_sec: HashMap::new(),
            keep_masters,
        })
        .expect("pool")
    }

    /// A relay's kex and cipher reach its masters (staged transfers run over them),
    /// each distinct pair in its own config file.
    #[test]
    fn masters_get_the_relays_algorithms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool_in(&dir.path().join("state"), None, false);
        let opts = |kex, cipher| ConnectOptions {
            group: None,
            policy: HostKeyPolicy::Strict,
            timeout: Duration::from_secs(1),
            kex,
            cipher,
        };
        let fast = pool
            .config_file(opts(
                Some("^curve25519-sha256"),
                Some("aes128-gcm@openssh.com"),
            ))
            .expect("config");
        let plain = pool.config_file(opts(None, None)).expect("config");
        assert_ne!(fast, plain);
        let text = std::fs::read_to_string(&fast).expect("read");
        assert!(
            text.contains("KexAlgorithms ^curve25519-sha256\n"),
            "{text}"
        );
        assert!(text.contains("Ciphers aes128-gcm@openssh.com\n"), "{text}");
        let text_plain = std::fs::read_to_string(&plain).expect("read");
        assert!(
            !text_plain.contains("Kex") && !text_plain.contains("Ciphers"),
            "{text_plain}"
        );
        let again = pool.config_file(opts(None, None)).expect("config");
        assert_eq!(again, plain);
        // A second pool on the same state dir (`check` beside `migrate`) names the
        // same settings the same file, with the same content.
        let beside = pool_in(&dir.path().join("state"), None, false);
        assert_eq!(beside.config_file(opts(None, None)).expect("config"), plain);
        assert_eq!(std::fs::read_to_string(&plain).expect("read"), text_plain);
    }

    /// A kept master forwards the agent it started with: after a new login (another
    /// agent) or with that agent gone, it is not reused.
    #[test]
    fn a_kept_master_needs_the_same_live_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let pool = pool_in(&dir.path().join("state"), Some(sock.clone()), true);
        let config = dir.path().join("state/ssh_config-0123456789ab");
        let kept = |agent: &Path| KeptMaster {
            config: config.clone(),
            ctl: dir.path().join("ctl"),
            agent: agent.display().to_string(),
        };
        assert!(pool.usable(&kept(&sock), &config));
        assert!(!pool.usable(&kept(&dir.path().join("other.sock")), &config));
        assert!(!pool.usable(
            &kept(&sock),
            &dir.path().join("state/ssh_config-ba9876543210")
        ));
        drop(listener);
        std::fs::remove_file(&sock).expect("rm");
        assert!(!pool.usable(&kept(&sock), &config), "the agent is gone");
    }
}
