//! The real lab's DNS: one BIND 9 primary for the zone `lab.example`, on the bridge.
//!
//! `DIR/dns/` holds `named.conf`, `tsig.key` (from `tsig-keygen`: the key the zone
//! grants dynamic updates to, the one cmfleet's step 5 signs its RFC 2136 updates
//! with), `lab.example.db` (the zone as `up` wrote it; BIND keeps its updates in
//! `lab.example.db.jnl`) and `named.log`. `named` listens on the bridge address
//! 198.18.X.1, port 53, in the machine's namespace: the containers reach it through
//! their default route, and the controller (cmfleet, tests) reaches it directly.
//!
//! It plays two parts a relay's provider plays: the zone's primary (authoritative for
//! `lab.example`, updated by RFC 2136) and the datacenter's resolver (the hosts'
//! resolv.conf and unbound's forwarder name it: `RealLabOptions::resolver`), which
//! recurses for the lab's /24 only, by forwarding to the machine's own nameservers.
//! So Postfix on every relay finds the other relays' MX, and after step 5 NEW's
//! address, through the same DNS the controller updates.
//!
//! It starts before the relays are deployed (their apt and pip need a resolver), with
//! every relay's records but DKIM; once OLD's deploy has made its key, [`LabDns::add`]
//! publishes it, as an operator publishes what `cmdeploy dns` prints.
//!
//! Every relay gets the records chatmail's own `cmdeploy dns --zonefile` asks for
//! (`cmdeploy/src/cmdeploy/chatmail.zone.j2`): A, MX, the www and mta-sts names, SPF,
//! DMARC, ADSP, the SRV records, and its DKIM key, taken from OLD the way chatmail's
//! `remote/rdns.py` does (`openssl rsa -pubout` of `/etc/dkimkeys/SELECTOR.private`).
//! Two are left out: `_mta-sts` TXT (no relay here can serve MTA-STS policy with a
//! certificate a sender would accept) and CAA (no ACME account). The TTL is short
//! ([`TTL`]) so that the containers' resolvers follow step 5 within seconds.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::super::error::{LabError, Result};
use super::super::process::{log_tail, run, ProcRecord};
use super::RealNet;

/// The lab's zone: `.example` is reserved (RFC 2606, RFC 6761), so no answer for it can
/// ever come from the real DNS. Not `.test`: libunbound, which opendkim resolves with,
/// answers every name under `.test` NXDOMAIN itself (one of its default local zones).
pub const ZONE: &str = "lab.example";

/// The TSIG key's name in `tsig.key` (and in the zone's update-policy).
pub const KEY_NAME: &str = "cmfleet-lab";

/// TTL of every record `up` writes (and of those step 5 writes: the inventory says the
/// same). Short, so a container's unbound asks again a few seconds after the switch.
pub const TTL: u32 = 10;

/// The directory under the lab's.
pub const DIR: &str = "dns";

/// One relay's facts for its records.
#[derive(Debug, Clone)]
pub struct RelayRecords {
    /// Its mail_domain, below [`ZONE`].
    pub domain: String,
    /// Where it serves mail now (OLD, before the migration).
    pub addr: Ipv4Addr,
    /// Its DKIM record's value without quotes (`v=DKIM1;k=rsa;p=...`), and its selector.
    pub dkim: Option<(String, String)>,
}

/// What `start` made.
#[derive(Debug, Clone)]
pub struct LabDns {
    /// The running `named`.
    pub named: ProcRecord,
    /// Where it answers, and takes updates.
    pub server: Ipv4Addr,
    /// The TSIG key file.
    pub key_file: PathBuf,
}

/// Writes DIR/dns/ and starts `named` on the bridge address of `net`, forwarding what
/// is not its zone to `forwarders`; returns when it serves the zone.
pub fn start(
    dir: &Path,
    net: RealNet,
    forwarders: &[Ipv4Addr],
    relays: &[RelayRecords],
) -> Result<LabDns> {
    preflight()?;
    let dns = dir.join(DIR);
    fs::create_dir_all(&dns).map_err(LabError::io(format!("create {}", dns.display())))?;
    let server = net.gateway();
    let key_file = dns.join("tsig.key");
    let key = run(Command::new("tsig-keygen").args(["-a", "hmac-sha256", KEY_NAME]))?;
    write(&key_file, &key, 0o600)?;
    let zone_file = dns.join(format!("{ZONE}.db"));
    write(&zone_file, &zone_text(server, relays), 0o644)?;
    // A journal from an earlier lab in this directory would replay its updates.
    let _ = fs::remove_file(dns.join(format!("{ZONE}.db.jnl")));
    let conf_file = dns.join("named.conf");
    write(
        &conf_file,
        &named_conf(&dns, &key_file, &zone_file, net, forwarders),
        0o644,
    )?;
    let log = dns.join("named.log");
    let log_file =
        fs::File::create(&log).map_err(LabError::io(format!("create {}", log.display())))?;
    let err_file = log_file
        .try_clone()
        .map_err(LabError::io(format!("open {}", log.display())))?;
    // `-g`: in the foreground of its own process group, logging to the log file, so the
    // PID recorded is named's and `lab down` stops it like the agent.
    let mut child = Command::new("named")
        .args(["-g", "-4", "-n", "1", "-c"])
        .arg(&conf_file)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .process_group(0)
        .spawn()
        .map_err(LabError::io("start named (is bind9 installed?)"))?;
    let shown = format!("named -c {}", conf_file.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Command {
                command: shown,
                status: status.to_string(),
                stderr: log_tail(&log),
            });
        }
        if serves_zone(server) {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Command {
                command: shown,
                status: format!("did not answer for {ZONE} on {server} within 20s"),
                stderr: log_tail(&log),
            });
        }
        sleep(Duration::from_millis(100));
    }
    let named = ProcRecord::of(child.id() as i32).ok_or_else(|| LabError::Command {
        command: shown,
        status: "exited right after start".into(),
        stderr: log_tail(&log),
    })?;
    Ok(LabDns {
        named,
        server,
        key_file,
    })
}

impl LabDns {
    /// Adds `records` (zone-file lines below the zone, absolute names) with one RFC 2136
    /// update signed by the zone's key: `nsupdate`, as an operator would.
    pub fn add(&self, records: &[String]) -> Result<()> {
        // nsupdate checks host names itself too: the relays' start with `_`.
        let mut script = format!("server {}\ncheck-names no\nzone {ZONE}\n", self.server);
        for r in records {
            let _ = writeln!(script, "update add {r}");
        }
        script.push_str("send\n");
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(LabError::io(
                "start nsupdate (is bind9-dnsutils installed?)",
            ))?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, script.as_bytes())
                .map_err(LabError::io("write to nsupdate"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(LabError::io("wait for nsupdate"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("nsupdate -k {}", self.key_file.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

/// A relay's DKIM record as a zone-file line: TXT strings hold at most 255 bytes, so the
/// value is split as chatmail's rdns.py splits it.
pub fn dkim_record(domain: &str, selector: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. {TTL} IN TXT {}",
        parts.join(" ")
    )
}

/// The tools this module runs, with how to get them.
pub fn preflight() -> Result<()> {
    for (tool, hint) in [
        ("named", "apt-get install bind9"),
        ("tsig-keygen", "apt-get install bind9"),
        ("dig", "apt-get install bind9-dnsutils"),
        ("nsupdate", "apt-get install bind9-dnsutils"),
    ] {
        if !super::in_path(tool) {
            return Err(LabError::MissingTool {
                tool: tool.into(),
                hint,
            });
        }
    }
    Ok(())
}

/// Whether `named` on `server` answers the zone's SOA with authority.
fn serves_zone(server: Ipv4Addr) -> bool {
    Command::new("dig")
        .args(["+norec", "+short", "+time=1", "+tries=1"])
        .arg(format!("@{server}"))
        .args([ZONE, "SOA"])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

/// The zone file (a relay's name starts with `_`, which BIND's `check-names` refuses
/// in a host name by default: the zone ignores it, as a provider serving such names
/// must): SOA, NS `ns1` on the bridge, and every relay's records.
pub fn zone_text(server: Ipv4Addr, relays: &[RelayRecords]) -> String {
    let mut z = format!(
        "; Written by cmfleet's lab (src/lab/real/dns.rs)\n\
         $ORIGIN {ZONE}.\n$TTL {TTL}\n\
         @ IN SOA ns1 hostmaster 1 3600 600 86400 {TTL}\n\
         @ IN NS ns1\nns1 IN A {server}\n"
    );
    for r in relays {
        let d = format!("{}.", r.domain);
        let _ = writeln!(z, "\n; {}", r.domain);
        let _ = writeln!(z, "{d} IN A {}", r.addr);
        let _ = writeln!(z, "{d} IN MX 10 {d}");
        let _ = writeln!(z, "mta-sts.{d} IN CNAME {d}");
        let _ = writeln!(z, "www.{d} IN CNAME {d}");
        let _ = writeln!(z, "{d} IN TXT \"v=spf1 a ~all\"");
        let _ = writeln!(z, "_dmarc.{d} IN TXT \"v=DMARC1;p=reject;adkim=s;aspf=s\"");
        let _ = writeln!(z, "_adsp._domainkey.{d} IN TXT \"dkim=discardable\"");
        for (service, port) in [
            ("_submission._tcp", 587),
            ("_submissions._tcp", 465),
            ("_imap._tcp", 143),
            ("_imaps._tcp", 993),
        ] {
            let _ = writeln!(z, "{service}.{d} IN SRV 0 1 {port} {d}");
        }
        if let Some((selector, value)) = &r.dkim {
            let _ = writeln!(z, "{}", dkim_record(&r.domain, selector, value));
        }
    }
    z
}

fn named_conf(
    dir: &Path,
    key: &Path,
    zone: &Path,
    net: RealNet,
    forwarders: &[Ipv4Addr],
) -> String {
    let d = dir.display();
    let server = net.gateway();
    let forwarders: String = forwarders.iter().map(|f| format!("{f}; ")).collect();
    format!(
        "# Written by cmfleet's lab (src/lab/real/dns.rs)\n\
         include \"{key}\";\n\
         options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
         session-keyfile none;\n  managed-keys-directory \"{d}\";\n  \
         listen-on port 53 {{ {server}; }};\n  listen-on-v6 {{ none; }};\n  \
         recursion yes;\n  allow-recursion {{ {cidr}; }};\n  \
         forwarders {{ {forwarders}}};\n  forward only;\n  \
         dnssec-validation no;\n  allow-query {{ any; }};\n}};\n\
         controls {{ }};\n\
         zone \"{ZONE}\" {{\n  type primary;\n  file \"{zone}\";\n  \
         check-names ignore;\n  \
         update-policy {{ grant {KEY_NAME} zonesub ANY; }};\n  allow-transfer {{ none; }};\n}};\n",
        key = key.display(),
        zone = zone.display(),
        cidr = net.cidr(),
    )
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).map_err(LabError::io(format!("write {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_holds_chatmails_records_and_splits_long_dkim_keys() {
        let value = format!("v=DKIM1;k=rsa;p={};s=email;t=s", "A".repeat(300));
        let z = zone_text(
            Ipv4Addr::new(198, 18, 5, 1),
            &[RelayRecords {
                domain: "_relay1.lab.example".into(),
                addr: Ipv4Addr::new(198, 18, 5, 2),
                dkim: Some(("opendkim".into(), value.clone())),
            }],
        );
        assert!(z.contains("ns1 IN A 198.18.5.1\n"));
        assert!(z.contains("_relay1.lab.example. IN A 198.18.5.2\n"));
        assert!(z.contains("_relay1.lab.example. IN MX 10 _relay1.lab.example.\n"));
        assert!(z.contains(
            "_submissions._tcp._relay1.lab.example. IN SRV 0 1 465 _relay1.lab.example.\n"
        ));
        let dkim = z
            .lines()
            .find(|l| l.starts_with("opendkim._domainkey._relay1.lab.example. 10 IN TXT "))
            .expect("the DKIM record");
        let strings: Vec<&str> = dkim.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|s| s.len() <= 255), "{dkim}");
        assert_eq!(strings.concat(), value);
        assert!(!z.contains("_mta-sts"), "no MTA-STS policy record: {z}");
    }
}
