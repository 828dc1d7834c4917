//! The checks of one relay: what `check` shows and what `migrate` demands before step 1.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::probe::{self, HostFacts};
use super::report::Finding;
use crate::host::catalogue;
use crate::host::remote::{
    CommandError, CommandKind, ConnectOptions, HostConn, LineSink, SshPool, Stdout,
};
use crate::infra::dns::{Dns, Rrsets};
use crate::infra::shell::quote;
use crate::model::inventory::{DnsProviderKind, Host, MailDomain, Relay, TransferMode};
use crate::model::step::ErrorKind;

/// TTLs above this make the cutover wait (the guide lowers them to 300 s).
pub const MAX_TTL: u32 = 300;
/// Free space NEW needs beyond the data: 10% plus this.
const DISK_MARGIN: u64 = 64 << 20;
/// The check of OLD's login to NEW (direct transfers).
const CHECK_OLD_TO_NEW: &str = "old -> new";

/// Connects to one host through cmfleet's pool, checking auth and the host key
/// against cmfleet's own known_hosts.
pub(crate) async fn ssh_host(
    ssh: &SshPool,
    relay: &Relay,
    host: &Host,
    check: &str,
    on_wait: impl Fn(),
) -> (Finding, Option<Arc<HostConn>>) {
    let known = !ssh.known_host_lines(host).is_empty();
    match ssh
        .connect(host, ConnectOptions::for_relay(relay), on_wait)
        .await
    {
        Ok(conn) => {
            let key = if known {
                "host key matches cmfleet's known_hosts"
            } else {
                "host key was unknown and is now in cmfleet's known_hosts (accept-new)"
            };
            (
                Finding::pass(check, format!("{}: logged in, {key}", conn.dest)),
                Some(conn),
            )
        }
        Err(e) => {
            let mut reason = e.to_string();
            if reason.to_ascii_lowercase().contains("host key") {
                reason.push_str(&format!(
                    " (hint: if the host was reinstalled, remove its line from {} after verifying the new key)",
                    ssh.known_hosts().display()
                ));
            }
            let mut f = Finding::fail(check, reason);
            f.transient = e.kind() == ErrorKind::Transient;
            (f, None)
        }
    }
}

/// Runs the probe on a host; a failure becomes a finding.
async fn probe_host(
    ssh: &SshPool,
    conn: &HostConn,
    check: &str,
    sink: &LineSink,
) -> Result<HostFacts, Finding> {
    match ssh
        .run(
            conn,
            &probe::script(),
            false,
            CommandKind::Plain,
            sink,
            Stdout::Capture,
        )
        .await
    {
        Ok(out) => Ok(probe::parse(out.stdout.as_deref().unwrap_or(""))),
        Err(e) => {
            let mut f = Finding::fail(check, format!("cannot inspect the host: {}", e.message));
            f.transient = e.kind == ErrorKind::Transient;
            Err(f)
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// root, Debian 12, rsync and tar.
fn host_findings(side: &str, f: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    match f.uid {
        Some(0) => {}
        Some(uid) => out.push(Finding::fail(
            &format!("root {side}"),
            format!("logged in as uid {uid}: the guide's commands need root (chown, /etc, /var)"),
        )),
        None => out.push(Finding::fail(
            &format!("root {side}"),
            "cannot tell the remote user's uid",
        )),
    }
    out.push(match &f.os {
        Some((id, v)) if id == "debian" && v == "12" => {
            Finding::pass(&format!("os {side}"), "Debian 12")
        }
        Some((id, v)) => Finding::warn(
            &format!("os {side}"),
            format!("{id} {v}: chatmail relays are deployed on Debian 12; cmdeploy may fail here"),
        ),
        None => Finding::warn(
            &format!("os {side}"),
            "no /etc/os-release: cannot tell the system",
        ),
    });
    let missing: Vec<&str> = [("rsync", f.has_rsync), ("tar", f.has_tar)]
        .iter()
        .filter(|(_, has)| !has)
        .map(|(t, _)| *t)
        .collect();
    out.push(if missing.is_empty() {
        Finding::pass(&format!("tools {side}"), "rsync and tar present")
    } else {
        Finding::fail(
            &format!("tools {side}"),
            format!(
                "missing: {} (hint: apt install {})",
                missing.join(", "),
                missing.join(" ")
            ),
        )
    });
    out
}

/// NEW must hold what OLD has and NEW does not yet (step 1 may have run), plus a margin.
fn disk_finding(old: &HostFacts, new: &HostFacts) -> Finding {
    let (Some(used), Some(avail)) = (old.mail_used, new.avail) else {
        return Finding::fail(
            "disk new",
            "cannot measure OLD's mailboxes or NEW's free space",
        );
    };
    let held = new.mail_used.unwrap_or(0);
    let need = used.saturating_sub(held);
    let want = need + need / 10 + DISK_MARGIN;
    let detail = format!(
        "{} free; OLD's mailboxes use {}, NEW already holds {}; needed with margin: {}",
        mib(avail),
        mib(used),
        mib(held),
        mib(want)
    );
    if avail >= want {
        Finding::pass("disk new", detail)
    } else {
        Finding::fail(
            "disk new",
            format!("too small: {detail} (hint: grow NEW's /home)"),
        )
    }
}

/// NEW holds mail of no other relay: a NEW written as another relay's OLD (or
/// reused without being wiped) would have that mail mirrored away by step 1.
fn foreign_mail_finding(relay: &Relay, new: &HostFacts) -> Finding {
    const CHECK: &str = "mail new";
    let own = relay.mail_domain.to_string();
    let foreign: Vec<&str> = new
        .mail_names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != own)
        .collect();
    if foreign.is_empty() {
        return Finding::pass(
            CHECK,
            format!("no mail of another domain in {}", catalogue::MAIL_DIR),
        );
    }
    let shown: Vec<String> = foreign.iter().take(5).map(|n| format!("{n:?}")).collect();
    Finding::fail(
        CHECK,
        format!(
            "NEW's {} holds {} entr{} of another domain than {own}: {}{} (hint: is NEW really a fresh machine for this relay, and not another relay's host? empty it if it is)",
            catalogue::MAIL_DIR,
            foreign.len(),
            if foreign.len() == 1 { "y" } else { "ies" },
            shown.join(", "),
            if foreign.len() > shown.len() { ", ..." } else { "" },
        ),
    )
}

/// Whether to try OLD -> NEW now. Right before step 1 the push itself is that
/// test: an extra ssh handshake per relay only to learn what the push will tell,
/// and a failed push is diagnosed with the same test (`old_to_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Test,
    AtTransfer,
}

/// Why OLD cannot log in to NEW the way a direct transfer does.
pub(crate) enum Unreached {
    /// cmfleet holds no host key of NEW to vouch for it on OLD.
    NoHostKey,
    /// OLD's ssh never got to NEW's sshd (NEW down, or a link or firewall between
    /// them): ssh's words, `connect to host H port P: REASON`.
    NoConnection(String),
    /// It got there and failed otherwise (a refused key), or the check itself failed.
    Failed(CommandError),
}

/// In direct mode OLD pushes to NEW with the forwarded agent: try exactly that, with
/// NEW's host key installed on OLD the way step 1 does it.
pub(crate) async fn old_to_new(
    ssh: &SshPool,
    relay: &Relay,
    old: &HostConn,
    sink: &LineSink,
) -> Result<(), Unreached> {
    let lines = ssh.known_host_lines(&relay.new);
    if lines.is_empty() {
        return Err(Unreached::NoHostKey);
    }
    let script = old_to_new_script(relay, &lines);
    match ssh
        .run(old, &script, true, CommandKind::Plain, sink, Stdout::Sink)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(match crate::host::remote::connect_failure(&e.message) {
            Some(said) => Unreached::NoConnection(said.to_string()),
            None => Unreached::Failed(e),
        }),
    }
}

/// On OLD: install `known_hosts_lines` (NEW's keys as cmfleet holds them) and log in
/// to NEW the way a direct transfer does.
pub fn old_to_new_script(relay: &Relay, known_hosts_lines: &[String]) -> String {
    format!(
        "{} && {} -o ConnectTimeout=10 {} true",
        catalogue::install_known_host(&known_hosts_lines.join("\n")),
        catalogue::inner_ssh(relay),
        quote(&relay.new.ssh)
    )
}

/// `old_to_new` as `check` shows it.
async fn reach_finding(ssh: &SshPool, relay: &Relay, old: &HostConn, sink: &LineSink) -> Finding {
    match old_to_new(ssh, relay, old, sink).await {
        Ok(()) => Finding::pass(
            CHECK_OLD_TO_NEW,
            format!(
                "OLD logs in to {} with the forwarded agent",
                relay.new.destination()
            ),
        ),
        Err(e) => unreached_finding(ssh, relay, e),
    }
}

/// The failing `old -> new` finding for `e`; transient when a retry may help.
pub(crate) fn unreached_finding(ssh: &SshPool, relay: &Relay, e: Unreached) -> Finding {
    match e {
        Unreached::NoHostKey => Finding::fail(
            CHECK_OLD_TO_NEW,
            format!(
                "no host key of {} in {} to vouch for it on OLD",
                relay.new.ssh,
                ssh.known_hosts().display()
            ),
        ),
        // Not a question of keys: the agent hint would send the operator the wrong way.
        Unreached::NoConnection(said) => {
            let mut f = Finding::fail(
                CHECK_OLD_TO_NEW,
                format!(
                    "OLD cannot connect to {}: ssh: {said} (hint: is NEW up, and may OLD reach its port {}?)",
                    relay.new.destination(),
                    relay.new.port
                ),
            );
            f.transient = true;
            f
        }
        Unreached::Failed(e) => {
            let mut f = Finding::fail(
                CHECK_OLD_TO_NEW,
                format!(
                    "OLD cannot log in to {} with the forwarded agent: {} (hint: the agent's key must be authorized on NEW; or use transfer = \"staged\")",
                    relay.new.destination(),
                    e.message
                ),
            );
            // The inner ssh exits 255 for a NEW that is merely down, too: judge by
            // what it said (a refused key is permanent, a refused connection is not).
            f.transient = e.kind == ErrorKind::Transient
                || crate::host::remote::classify_connect(&e.message) == ErrorKind::Transient;
            f
        }
    }
}

/// cmdeploy exists and runs; the relay's chatmail.ini names this relay.
pub(crate) fn config_findings(cmdeploy: &Path, relay: &Relay) -> Vec<Finding> {
    let exe = std::fs::metadata(cmdeploy)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut out = vec![if exe {
        Finding::pass("cmdeploy", format!("{} is executable", cmdeploy.display()))
    } else {
        Finding::fail(
            "cmdeploy",
            format!("{} is not an executable file (hint: [fleet] cmdeploy = the checkout's scripts/cmdeploy)", cmdeploy.display()),
        )
    }];
    let ini = &relay.config;
    out.push(match std::fs::read_to_string(ini) {
        Err(e) => Finding::fail("chatmail.ini", format!("cannot read {}: {e}", ini.display())),
        Ok(text) => match ini_mail_domain(&text) {
            None => Finding::fail("chatmail.ini", format!("{} has no mail_domain line", ini.display())),
            Some(d) if d == relay.mail_domain.to_string() => {
                Finding::pass("chatmail.ini", format!("{} names {d}", ini.display()))
            }
            Some(d) => Finding::fail(
                "chatmail.ini",
                format!(
                    "{} names mail_domain {d}, not this relay's {} (hint: the wrong file? cmdeploy would deploy {d})",
                    ini.display(),
                    relay.mail_domain
                ),
            ),
        },
    });
    out
}

/// The value of the first `mail_domain = ...` line (cmdeploy's ini has one).
fn ini_mail_domain(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "mail_domain").then(|| v.trim().to_string())
    })
}

/// Where the relay's A/AAAA point now, and the TTL resolvers may cache them for.
pub(crate) async fn dns_findings(relay: &Relay) -> Vec<Finding> {
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        return vec![Finding::warn(
            "dns",
            format!("mail_domain is the address {ip}: no DNS change can move it; the address itself must move to the new machine during the cutover"),
        )];
    }
    if relay.settings.dns.provider == DnsProviderKind::None {
        return vec![Finding::pass(
            "dns",
            "skipped: dns provider \"none\" (DNS is handled outside cmfleet)",
        )];
    }
    let dns = match Dns::from_settings(&relay.settings.dns) {
        Ok(d) => d,
        Err(e) => return vec![Finding::fail("dns", e.to_string())],
    };
    let (served, ttl) = match dns.current_records(&relay.name).await {
        Ok(r) => r,
        Err(crate::infra::dns::DnsError::Config(_)) => match resolve(&relay.name).await {
            Ok(sets) => (sets, None),
            Err(e) => {
                return vec![Finding::fail(
                    "dns",
                    format!("cannot resolve {}: {e}", relay.name),
                )]
            }
        },
        Err(e) => {
            let mut f = Finding::fail("dns", e.to_string());
            f.transient = e.is_transient();
            return vec![f];
        }
    };
    let served = served.normalized();
    let old = relay.old.addrs().to_rrsets().normalized();
    let new = relay.new.addrs().to_rrsets().normalized();
    let mut out = vec![if served == old {
        Finding::pass("dns", format!("{} points to OLD ({served})", relay.name))
    } else if served == new {
        Finding::pass(
            "dns",
            format!(
                "{} already points to NEW ({served}); step 5 will have nothing to change",
                relay.name
            ),
        )
    } else if served.a.is_empty() && served.aaaa.is_empty() {
        Finding::fail("dns", format!("{} has no A/AAAA records", relay.name))
    } else {
        Finding::fail(
            "dns",
            format!(
                "{} points to {served}, neither OLD ({old}) nor NEW ({new}) (hint: fix the records or the inventory; step 5 would refuse to overwrite them)",
                relay.name
            ),
        )
    }];
    out.push(match ttl {
        None => Finding::pass("dns ttl", "not known (no `server` to ask; a resolver only shows a cached, decreasing TTL)"),
        Some(t) if t <= MAX_TTL => Finding::pass("dns ttl", format!("{t} s")),
        Some(t) => Finding::warn(
            "dns ttl",
            format!(
                "{t} s: resolvers may keep sending users to OLD for up to {wait} after step 5 (hint: `cmfleet dns lower-ttl` lowers it to {MAX_TTL} s; migrate then holds the cutover for {wait})",
                wait = humantime::format_duration(std::time::Duration::from_secs(u64::from(t))),
            ),
        ),
    });
    out
}

/// The system resolver's view (providers without a `server` to ask).
async fn resolve(name: &str) -> std::io::Result<Rrsets> {
    let mut sets = Rrsets::default();
    for a in tokio::net::lookup_host((name, 0)).await? {
        match a.ip() {
            IpAddr::V4(v4) => sets.a.push(v4),
            IpAddr::V6(v6) => sets.aaaa.push(v6),
        }
    }
    Ok(sets)
}

/// Every check of one relay except the journal's view: what `migrate` runs before
/// step 1, and the bulk of `check`.
/// The checks of one relay, and what the probes learned of its hosts (step 1 uses
/// the facts: the size to copy, whether NEW is still empty).
pub struct Inspection {
    pub findings: Vec<Finding>,
    pub old: Option<HostFacts>,
    pub new: Option<HostFacts>,
}

pub async fn relay_findings(
    ssh: &SshPool,
    cmdeploy: &Path,
    relay: &Relay,
    sink: &LineSink,
    reach: Reach,
) -> Vec<Finding> {
    inspect(ssh, cmdeploy, relay, sink, reach).await.findings
}

pub async fn inspect(
    ssh: &SshPool,
    cmdeploy: &Path,
    relay: &Relay,
    sink: &LineSink,
    reach: Reach,
) -> Inspection {
    let mut out = config_findings(cmdeploy, relay);
    // Held back by the connection rate: say so, the relay is waiting, not stuck.
    let wait = || sink.waiting(crate::model::events::WaitReason::ConnectRate);
    let ((f_old, old), (f_new, new), dns) = tokio::join!(
        ssh_host(ssh, relay, &relay.old, "ssh old", wait),
        ssh_host(ssh, relay, &relay.new, "ssh new", wait),
        dns_findings(relay),
    );
    out.push(f_old);
    out.push(f_new);
    let probe = |conn: Option<Arc<HostConn>>, check: &'static str| async move {
        match conn {
            Some(c) => Some(probe_host(ssh, &c, check, sink).await),
            None => None,
        }
    };
    let (facts_old, facts_new) = tokio::join!(
        probe(old.clone(), "probe old"),
        probe(new.clone(), "probe new")
    );
    for (side, facts) in [("old", &facts_old), ("new", &facts_new)] {
        match facts {
            Some(Ok(f)) => out.extend(host_findings(side, f)),
            Some(Err(finding)) => out.push(finding.clone()),
            None => {}
        }
    }
    if let Some(o) = &old {
        out.push(super::proof::old_finding(ssh, relay, o, sink).await);
    }
    if let Some(Ok(f)) = &facts_old {
        out.push(if f.passdb {
            Finding::fail(
                "passdb",
                format!("{} exists on OLD: chatmail migrates it into the maildirs when it starts; this relay is not ready to move (hint: update and restart the relay on OLD first)", catalogue::LEGACY_PASSDB),
            )
        } else {
            Finding::pass("passdb", "no legacy passdb.sqlite on OLD")
        });
    }
    out.push(match (&facts_old, &facts_new) {
        (Some(Ok(o)), Some(Ok(n))) => disk_finding(o, n),
        _ => Finding::warn("disk new", "not checked: needs OLD and NEW"),
    });
    if let Some(Ok(n)) = &facts_new {
        out.push(foreign_mail_finding(relay, n));
    }
    if relay.settings.transfer == TransferMode::Direct && reach == Reach::Test {
        match (&old, &new) {
            (Some(o), Some(_)) => out.push(reach_finding(ssh, relay, o, sink).await),
            _ => out.push(Finding::warn(
                "old -> new",
                "not checked: needs ssh to OLD and NEW",
            )),
        }
    } else if relay.settings.transfer == TransferMode::Staged {
        out.push(Finding::pass(
            "old -> new",
            "not needed: staged transfer through the controller",
        ));
    }
    out.extend(dns);
    out.sort_by_key(|f| order(&f.check));
    Inspection {
        findings: out,
        old: facts_old.and_then(Result::ok),
        new: facts_new.and_then(Result::ok),
    }
}

/// Right before step 3: NEW must hold what OLD gained since step 1, plus the
/// margin. A NEW filled up after the pre-stage would otherwise fail step 4 inside
/// the downtime with "No space left on device", leaving the relay DOWN.
pub(crate) async fn disk_at_cutover(
    ssh: &SshPool,
    old: &HostConn,
    new: &HostConn,
    sink: &LineSink,
) -> Finding {
    let (o, n) = tokio::join!(
        probe_host(ssh, old, "probe old", sink),
        probe_host(ssh, new, "probe new", sink)
    );
    match (o, n) {
        (Ok(o), Ok(n)) => disk_finding(&o, &n),
        (Err(f), _) | (_, Err(f)) => f,
    }
}

/// A stable reading order: connectivity, hosts, data, config, DNS.
fn order(check: &str) -> usize {
    const ORDER: [&str; 20] = [
        "ssh old",
        "ssh new",
        "root old",
        "root new",
        "probe old",
        "probe new",
        "os old",
        "os new",
        "tools old",
        "tools new",
        "disk new",
        "mail new",
        "old -> new",
        "passdb",
        super::proof::CHECK_OLD,
        super::proof::CHECK_NEW,
        "cmdeploy",
        "chatmail.ini",
        "dns",
        "dns ttl",
    ];
    ORDER
        .iter()
        .position(|c| *c == check)
        .unwrap_or(ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::inspect::Status;

    #[test]
    fn finds_the_ini_mail_domain() {
        let ini =
            "[params]\n# comment\nmail_domain = c1.example.org\nmax_user_send_per_minute = 60\n";
        assert_eq!(ini_mail_domain(ini).as_deref(), Some("c1.example.org"));
        assert_eq!(ini_mail_domain("[params]\n"), None);
    }

    #[test]
    fn disk_needs_the_missing_data_plus_margin() {
        let old = HostFacts {
            mail_used: Some(100 << 20),
            ..Default::default()
        };
        let mut new = HostFacts {
            avail: Some(150 << 20),
            mail_used: Some(0),
            ..Default::default()
        };
        assert_eq!(disk_finding(&old, &new).status, Status::Fail);
        new.mail_used = Some(90 << 20);
        assert_eq!(disk_finding(&old, &new).status, Status::Pass);
    }
}
