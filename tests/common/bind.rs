//! A real BIND 9 (`named`) started per test on a free loopback port.
//!
//! Each server gets its own temp dir (config, fresh zone file, no journal), its own
//! TSIG key from `tsig-keygen`, `recursion no`, `session-keyfile none`, no control
//! channel (several servers must not fight over port 953), and is killed on drop.
//! [`Bind::pair`] starts a primary and a secondary that follows it by NOTIFY
//! (`notify-delay 0`) and IXFR.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The key name every test server grants updates to.
pub const KEY_NAME: &str = "cmfleet-test";

/// Ports handed out in this process: tests run in parallel threads and must not
/// get the same "free" port twice.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port free for both TCP and UDP on 127.0.0.1, never handed out before here.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a tcp port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// One running `named`.
pub struct Bind {
    child: Child,
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// The zone it serves.
    pub zone: String,
    /// Its TSIG key file (BIND `key` format), the one its update-policy grants.
    pub key_file: PathBuf,
    dir: TempDir,
}

impl Bind {
    /// A primary for `zone` with NS `ns1.<zone>` and the given extra zone-file
    /// lines (relative or absolute owner names), e.g. `"c1 300 IN A 192.0.2.1"`.
    pub fn primary(zone: &str, records: &[&str]) -> Bind {
        for _ in 0..5 {
            let port = free_port();
            if let Some(bind) = Self::start_primary(zone, records, port, &[], 1) {
                return bind;
            }
        }
        panic!("named did not start (see the logs above)");
    }

    /// A primary and a secondary (NS ns1 and ns2) on distinct ports; the primary
    /// NOTIFYs the secondary at once after every change.
    pub fn pair(zone: &str, records: &[&str]) -> (Bind, Bind) {
        for _ in 0..5 {
            let (p_port, s_port) = (free_port(), free_port());
            let Some(primary) = Self::start_primary(zone, records, p_port, &[s_port], 2) else {
                continue;
            };
            if let Some(secondary) = Self::start_secondary(zone, p_port, s_port, &primary) {
                return (primary, secondary);
            }
        }
        panic!("named pair did not start (see the logs above)");
    }

    /// The `nameservers` override map for a primary (ns1) and an optional secondary (ns2).
    pub fn nameservers(primary: &Bind, secondary: Option<&Bind>) -> BTreeMap<String, SocketAddr> {
        let mut map = BTreeMap::new();
        map.insert(format!("ns1.{}", primary.zone), primary.addr);
        if let Some(s) = secondary {
            map.insert(format!("ns2.{}", primary.zone), s.addr);
        }
        map
    }

    fn start_primary(
        zone: &str,
        records: &[&str],
        port: u16,
        notify: &[u16],
        ns_count: usize,
    ) -> Option<Bind> {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = write_key(dir.path());
        let mut zone_text =
            format!("$ORIGIN {zone}.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n");
        for i in 1..=ns_count {
            zone_text.push_str(&format!("@ IN NS ns{i}\nns{i} IN A 127.0.0.1\n"));
        }
        for r in records {
            zone_text.push_str(r);
            zone_text.push('\n');
        }
        let zone_file = dir.path().join("zone.db");
        fs::write(&zone_file, zone_text).expect("write zone");
        // A fresh zone: no journal from an earlier run may replay old updates.
        let _ = fs::remove_file(dir.path().join("zone.db.jnl"));
        let also_notify = if notify.is_empty() {
            String::new()
        } else {
            let list: String = notify
                .iter()
                .map(|p| format!("127.0.0.1 port {p}; "))
                .collect();
            format!("also-notify {{ {list}}};")
        };
        let zone_conf = format!(
            "zone \"{zone}\" {{\n  type primary;\n  file \"{}\";\n  update-policy {{ grant {KEY_NAME} zonesub ANY; }};\n  notify yes;\n  notify-delay 0;\n  {also_notify}\n  allow-transfer {{ any; }};\n}};\n",
            zone_file.display()
        );
        Self::launch(dir, key_file, zone, port, &zone_conf, false)
    }

    fn start_secondary(zone: &str, primary_port: u16, port: u16, primary: &Bind) -> Option<Bind> {
        let dir = tempfile::tempdir().expect("tempdir");
        // The secondary needs no key of its own for updates; share the primary's so
        // `key_file` means the same thing on both.
        let key_file = dir.path().join("tsig.key");
        fs::copy(&primary.key_file, &key_file).expect("copy key");
        let zone_conf = format!(
            "zone \"{zone}\" {{\n  type secondary;\n  file \"{}\";\n  primaries {{ 127.0.0.1 port {primary_port}; }};\n  allow-notify {{ any; }};\n  notify no;\n}};\n",
            dir.path().join("secondary.db").display()
        );
        Self::launch(dir, key_file, zone, port, &zone_conf, true)
    }

    fn launch(
        dir: TempDir,
        key_file: PathBuf,
        zone: &str,
        port: u16,
        zone_conf: &str,
        secondary: bool,
    ) -> Option<Bind> {
        let d = dir.path().display().to_string();
        let conf = format!(
            "include \"{key}\";\noptions {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile none;\n  managed-keys-directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n  allow-query {{ any; }};\n}};\ncontrols {{ }};\n{zone_conf}",
            key = key_file.display()
        );
        let conf_file = dir.path().join("named.conf");
        fs::write(&conf_file, conf).expect("write named.conf");
        let log = fs::File::create(dir.path().join("named.log")).expect("log file");
        let mut cmd = Command::new("named");
        cmd.args(["-g", "-4", "-n", "1", "-c"]).arg(&conf_file);
        // If the test binary is killed (timeout, ^C) Drop never runs: let the kernel
        // kill named with it instead of leaking servers on loopback ports. (The
        // signal follows the spawning *thread*: start servers from the test's own
        // thread or a runtime worker, never from a short-lived helper thread.)
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn named (is bind9 installed?)");
        let mut bind = Bind {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: zone.to_string(),
            key_file,
            dir,
        };
        // Ready = it answers the zone's SOA authoritatively (for a secondary: the
        // first transfer is done).
        let deadline = Instant::now() + Duration::from_secs(if secondary { 30 } else { 20 });
        while Instant::now() < deadline {
            if let Ok(Some(_)) = bind.child.try_wait() {
                eprintln!("named on port {port} exited:\n{}", bind.log());
                return None;
            }
            if !bind.dig(zone, "SOA").is_empty() {
                return Some(bind);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("named on port {port} never answered:\n{}", bind.log());
        None
    }

    /// rfc2136 settings pointing at this server with its key and `ns1` override.
    pub fn settings(&self) -> cmfleet::infra::dns::DnsSettings {
        cmfleet::infra::dns::DnsSettings {
            provider: cmfleet::infra::dns::ProviderKind::Rfc2136,
            server: Some(self.addr),
            zone: Some(self.zone.clone()),
            tsig_key_file: Some(self.key_file.clone()),
            nameservers: Bind::nameservers(self, None),
            ..Default::default()
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `(ttl, rdata)` of the records the server serves for `name`/`rtype`
    /// (non-recursive, straight from this server).
    pub fn records(&self, name: &str, rtype: &str) -> Vec<(u32, String)> {
        let out = Command::new("dig")
            .args(["+norec", "+noall", "+answer", "+time=1", "+tries=2", "-p"])
            .arg(self.addr.port().to_string())
            .arg(format!("@{}", self.addr.ip()))
            .args([name, rtype])
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() >= 5 && f[3].eq_ignore_ascii_case(rtype) {
                    Some((f[1].parse().ok()?, f[4..].join(" ")))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Just the rdata, sorted.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .records(name, rtype)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        v.sort();
        v
    }

    /// The zone's SOA serial on this server.
    pub fn serial(&self) -> Option<u32> {
        self.dig(&self.zone, "SOA")
            .first()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }

    /// Change the zone behind cmfleet's back: `nsupdate` with this server's key and
    /// the given commands (e.g. `update add c1.example.org. 300 A 192.0.2.9`).
    pub fn nsupdate(&self, commands: &[&str]) {
        let mut script = format!(
            "server {} {}\nzone {}\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        for c in commands {
            script.push_str(c);
            script.push('\n');
        }
        script.push_str("send\n");
        let script_file = self.dir.path().join("nsupdate.txt");
        fs::write(&script_file, script).expect("write nsupdate script");
        let out = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .arg(&script_file)
            .output()
            .expect("run nsupdate");
        assert!(
            out.status.success(),
            "nsupdate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stop serving (SIGKILL); the value stays usable for its address.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Generate a key with `tsig-keygen` into `dir/tsig.key`.
fn write_key(dir: &Path) -> PathBuf {
    let out = Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", KEY_NAME])
        .output()
        .expect("run tsig-keygen");
    assert!(out.status.success(), "tsig-keygen failed");
    let path = dir.join("tsig.key");
    fs::write(&path, &out.stdout).expect("write key");
    path
}

/// Write a key file with the same name as the server's but another secret (BADSIG).
pub fn wrong_secret_key(dir: &Path) -> PathBuf {
    let path = dir.join("wrong.key");
    let out = Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", KEY_NAME])
        .output()
        .expect("run tsig-keygen");
    fs::write(&path, &out.stdout).expect("write key");
    path
}

/// Write a key file with a name the server does not know (BADKEY).
pub fn unknown_key(dir: &Path) -> PathBuf {
    let path = dir.join("unknown.key");
    let out = Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", "nobody-knows-me"])
        .output()
        .expect("run tsig-keygen");
    fs::write(&path, &out.stdout).expect("write key");
    path
}
