//! Real Postfix and Dovecot on lab hosts: Debian's own packages, run inside each host's
//! mount namespace with per-host configuration, queue and state, set up like a chatmail
//! relay where a migration can tell the difference: maildirs at
//! /home/vmail/mail/DOMAIN/ADDRESS (Dovecot's uidlist and indexes inside), a `password`
//! file per user in that directory (Dovecot's passdb), Postfix handing mail to Dovecot
//! over LMTP through a socket in its queue directory, the queue in /var/spool/postfix.
//!
//! Everything listens on the host's own address only: SMTP 25, submission 587, SMTPS 465,
//! IMAP 143 and IMAPS 993 (one self-signed certificate per lab). Postfix refuses an
//! `inet_interfaces` address that no interface carries, so the lab puts each host's
//! address on `lo` (as a /32; the rest of 127/8 stays as it was) and takes it off again
//! at `lab down`. There is no syslog in a lab host: both log to files in
//! /var/lib/chatmail-lab (`mail.log`, `dovecot.log`). Every master.cf service runs with
//! `chroot = n`: a chroot would need the machine's libraries copied into each queue.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::addr::Subnet;
use super::error::{LabError, Result};
use super::host::{LabHost, STATE_DIR};
use super::process::{self, run};
use super::users::LabUsers;

/// A destination that is down: mail to it waits in the sender's deferred queue (the
/// lab routes it to a port nobody listens on, see `later_addr`).
pub const LATER_DOMAIN: &str = "later.lab.test";

/// The port `LATER_DOMAIN`'s mail goes to; a test that wants it delivered listens there.
pub const LATER_PORT: u16 = 2525;

/// The queue directories Postfix needs, with owner ("postfix" or root), group
/// ("postdrop" or root) and mode, as `postfix set-permissions` leaves them.
const QUEUE_DIRS: [(&str, bool, bool, u32); 15] = [
    ("active", true, false, 0o700),
    ("bounce", true, false, 0o700),
    ("corrupt", true, false, 0o700),
    ("defer", true, false, 0o700),
    ("deferred", true, false, 0o700),
    ("flush", true, false, 0o700),
    ("hold", true, false, 0o700),
    ("incoming", true, false, 0o700),
    ("maildrop", true, true, 0o730),
    ("pid", false, false, 0o755),
    ("private", true, false, 0o700),
    ("public", true, true, 0o710),
    ("saved", true, false, 0o700),
    ("trace", true, false, 0o700),
    ("", false, false, 0o755),
];

/// The lab writes these in each host's /etc/postfix; the rest of the package's files
/// there (postfix-files, *.proto, ...) are copied: `postfix set-permissions` walks them.
const POSTFIX_OWN: [&str; 2] = ["main.cf", "master.cf"];

/// Where mail for `LATER_DOMAIN` goes: an address of the lab's /24 that no host has.
pub fn later_addr(subnet: Subnet) -> Ipv4Addr {
    subnet.host(255)
}

/// The lab's certificate and key (`DIR/tls/`), shared by every host's Postfix and
/// Dovecot: clients of the lab do not verify it.
fn tls_paths(lab_dir: &Path) -> (PathBuf, PathBuf) {
    let d = lab_dir.join("tls");
    (d.join("cert.pem"), d.join("key.pem"))
}

/// The lab-wide Postfix transport table (`DIR/mail/transport`): with no DNS in the lab,
/// it says where each relay's mail goes.
fn transport_path(lab_dir: &Path) -> PathBuf {
    lab_dir.join("mail").join("transport")
}

/// Writes the lab-wide mail files: the self-signed certificate (one openssl run) and
/// the transport table (relay domains to their OLD hosts, as public DNS says before the
/// cutover; `LATER_DOMAIN` to a closed port).
pub fn write_lab_files(lab_dir: &Path, subnet: Subnet, relays: &[(&str, Ipv4Addr)]) -> Result<()> {
    let (cert, key) = tls_paths(lab_dir);
    if let Some(d) = cert.parent() {
        fs::create_dir_all(d).map_err(LabError::io(format!("create {}", d.display())))?;
    }
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
        .args(["-subj", "/CN=cmfleet-lab", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null()))?;
    // Postfix's smtpd and Dovecot read the key as root before they drop privileges.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(LabError::io(format!("chmod {}", key.display())))?;
    write_transport(lab_dir, subnet, relays)
}

/// Writes the lab's transport table: each relay domain to `addr`, `LATER_DOMAIN` to a
/// closed port.
pub fn write_transport(lab_dir: &Path, subnet: Subnet, relays: &[(&str, Ipv4Addr)]) -> Result<()> {
    let mut table = String::from("# where mail goes in this lab (there is no DNS)\n");
    for (domain, addr) in relays {
        table += &format!("{domain} smtp:[{addr}]:25\n");
    }
    table += &format!(
        "{LATER_DOMAIN} smtp:[{}]:{LATER_PORT}\n",
        later_addr(subnet)
    );
    let t = transport_path(lab_dir);
    if let Some(d) = t.parent() {
        fs::create_dir_all(d).map_err(LabError::io(format!("create {}", d.display())))?;
    }
    // A Postfix process starting meanwhile must read the old table or the new one, not
    // half of one.
    let tmp = t.with_extension("tmp");
    fs::write(&tmp, table).map_err(LabError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &t).map_err(LabError::io(format!("rename {}", tmp.display())))
}

/// Lays out a host's mail system: Postfix and Dovecot configuration, an empty queue
/// with Postfix's owners, and the state directories.
pub fn prepare_host(host: &LabHost, domain: &str, users: &LabUsers, lab_dir: &Path) -> Result<()> {
    let mkdir = |abs: &str, uid: u32, gid: u32, mode: u32| -> Result<PathBuf> {
        let p = host.path(abs);
        fs::create_dir_all(&p).map_err(LabError::io(format!("create {}", p.display())))?;
        chown(&p, Some(uid), Some(gid)).map_err(LabError::io(format!("chown {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(LabError::io(format!("chmod {}", p.display())))?;
        Ok(p)
    };
    let etc_postfix = mkdir("/etc/postfix", 0, 0, 0o755)?;
    mkdir(
        "/var/lib/postfix",
        users.postfix_uid,
        users.postfix_gid,
        0o755,
    )?;
    let etc_dovecot = mkdir("/etc/dovecot", 0, 0, 0o755)?;
    mkdir("/run/dovecot", 0, 0, 0o755)?;
    mkdir("/var/lib/dovecot", 0, 0, 0o755)?;
    for (name, postfix_owned, postdrop, mode) in QUEUE_DIRS {
        let uid = if postfix_owned { users.postfix_uid } else { 0 };
        let gid = if postdrop { users.postdrop_gid } else { 0 };
        mkdir(&format!("/var/spool/postfix/{name}"), uid, gid, mode)?;
    }
    let pkg = Path::new("/etc/postfix");
    for e in fs::read_dir(pkg).map_err(LabError::io("list /etc/postfix"))? {
        let e = e.map_err(LabError::io("list /etc/postfix"))?;
        if !POSTFIX_OWN.iter().any(|n| e.file_name() == *n) {
            copy_tree(&e.path(), &etc_postfix.join(e.file_name()))?;
        }
    }
    let write = |p: PathBuf, text: String| {
        fs::write(&p, text).map_err(LabError::io(format!("write {}", p.display())))
    };
    // While Postfix is stopped (NEW before activate, OLD after --disable-mail) its
    // commands write the log themselves, some (postsuper) as the postfix user: without
    // a log file it may append to, `postsuper -s` fails ("cannot create file
    // exclusively"). On a real relay syslog takes their lines.
    let log = host.path(&format!("{STATE_DIR}/mail.log"));
    fs::write(&log, "").map_err(LabError::io(format!("write {}", log.display())))?;
    chown(&log, Some(users.postfix_uid), Some(users.postfix_gid))
        .map_err(LabError::io(format!("chown {}", log.display())))?;
    fs::set_permissions(&log, fs::Permissions::from_mode(0o640))
        .map_err(LabError::io(format!("chmod {}", log.display())))?;
    write(etc_postfix.join("main.cf"), main_cf(host, domain, lab_dir))?;
    write(etc_postfix.join("master.cf"), MASTER_CF.to_string())?;
    write(
        etc_dovecot.join("dovecot.conf"),
        dovecot_conf(host, lab_dir),
    )
}

/// Copies a file or a directory of plain files (the package's postfix-files.d and the
/// like), keeping modes (post-install, postfix-script are executable).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let Ok(md) = fs::metadata(from) else {
        return Ok(());
    };
    if md.is_dir() {
        fs::create_dir_all(to).map_err(LabError::io(format!("create {}", to.display())))?;
        for e in fs::read_dir(from).map_err(LabError::io(format!("list {}", from.display())))? {
            let e = e.map_err(LabError::io(format!("list {}", from.display())))?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        // fs::copy keeps the permission bits.
        fs::copy(from, to)
            .map(|_| ())
            .map_err(LabError::io(format!("copy {}", from.display())))
    }
}

/// A host's main.cf: the relay's domain is a virtual mailbox domain delivered to Dovecot
/// over LMTP; everything binds the host's address.
fn main_cf(host: &LabHost, domain: &str, lab_dir: &Path) -> String {
    let (cert, key) = tls_paths(lab_dir);
    format!(
        "# Postfix of lab host {name} ({addr}), written by cmfleet lab: a chatmail relay's\n\
         # mail path (SMTP in, LMTP to Dovecot) on the host's own address only.\n\
         compatibility_level = 3.6\n\
         myhostname = {domain}\n\
         mydomain = {domain}\n\
         myorigin = {domain}\n\
         mydestination =\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n\
         biff = no\n\
         append_dot_mydomain = no\n\
         inet_interfaces = {addr}\n\
         inet_protocols = ipv4\n\
         smtp_bind_address = {addr}\n\
         # The lab's clients (the controller, other lab relays) all come from 127/8.\n\
         mynetworks = 127.0.0.0/8\n\
         virtual_mailbox_domains = {domain}\n\
         virtual_transport = lmtp:unix:private/dovecot-lmtp\n\
         # No DNS in the lab: the lab's table says where each domain's mail goes; the\n\
         # relay's own domain, listed there too, stays here.\n\
         transport_maps = inline:{{ {domain}=lmtp:unix:private/dovecot-lmtp }}, texthash:{transport}\n\
         smtp_dns_support_level = disabled\n\
         smtp_host_lookup = native\n\
         smtpd_tls_cert_file = {cert}\n\
         smtpd_tls_key_file = {key}\n\
         smtpd_tls_security_level = may\n\
         smtp_tls_security_level = may\n\
         smtpd_sasl_type = dovecot\n\
         smtpd_sasl_path = private/auth\n\
         # No syslog in a lab host: without this Postfix fails silently.\n\
         maillog_file = {STATE_DIR}/mail.log\n\
         # Deferred mail waits for `postqueue -f` (or an hour): a lab test lasts minutes,\n\
         # and OLD's queue must hold still until the migration moves it.\n\
         queue_run_delay = 1h\n\
         minimal_backoff_time = 1h\n\
         maximal_backoff_time = 1h\n",
        name = host.name,
        addr = host.addr,
        transport = transport_path(lab_dir).display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// master.cf: Debian's services without chroot (a chroot would need a copy of the
/// machine's libraries in every queue), plus submission and SMTPS with SASL via Dovecot.
const MASTER_CF: &str = "\
# Postfix services of a cmfleet lab host: Debian's list with chroot = n everywhere.
smtp       inet  n - n - - smtpd
submission inet  n - n - - smtpd -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
smtps      inet  n - n - - smtpd -o syslog_name=postfix/smtps -o smtpd_tls_wrappermode=yes -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
lmtp       unix  - - n - - lmtp
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
";

/// A host's dovecot.conf, self-contained (no conf.d: one file parses fastest).
fn dovecot_conf(host: &LabHost, lab_dir: &Path) -> String {
    let (cert, key) = tls_paths(lab_dir);
    format!(
        "# Dovecot of lab host {name} ({addr}), written by cmfleet lab.\n\
         protocols = imap lmtp\n\
         listen = {addr}\n\
         base_dir = /run/dovecot\n\
         state_dir = /var/lib/dovecot\n\
         # No syslog in a lab host.\n\
         log_path = {STATE_DIR}/dovecot.log\n\
         ssl = yes\n\
         ssl_cert = <{cert}\n\
         ssl_key = <{key}\n\
         # Lab clients may log in on 143 without STARTTLS.\n\
         disable_plaintext_auth = no\n\
         auth_mechanisms = plain login\n\
         mail_location = maildir:/home/vmail/mail/%d/%u\n\
         mail_uid = vmail\n\
         mail_gid = vmail\n\
         first_valid_uid = 1\n\
         # As on a chatmail relay, each user's password lives in their mailbox directory.\n\
         passdb {{\n  driver = passwd-file\n  args = username_format=%u /home/vmail/mail/%d/%u/password\n}}\n\
         userdb {{\n  driver = static\n  args = uid=vmail gid=vmail home=/home/vmail/mail/%d/%u\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    port = 143\n  }}\n  inet_listener imaps {{\n    port = 993\n    ssl = yes\n  }}\n}}\n\
         service lmtp {{\n  unix_listener /var/spool/postfix/private/dovecot-lmtp {{\n    mode = 0600\n    user = postfix\n    group = postfix\n  }}\n}}\n\
         service auth {{\n  # passwd-file reads each user's password in their mailbox directory\n  user = vmail\n  unix_listener /var/spool/postfix/private/auth {{\n    mode = 0660\n    user = postfix\n    group = postfix\n  }}\n}}\n",
        name = host.name,
        addr = host.addr,
        cert = cert.display(),
        key = key.display(),
    )
}

/// Puts the hosts' addresses on `lo` (one `ip` run): Postfix binds only addresses an
/// interface carries. `replace` makes it idempotent after a crashed lab.
pub fn add_addresses(addrs: &[Ipv4Addr]) -> Result<()> {
    ip_batch(addrs, "replace", false)
}

/// Takes the hosts' addresses off `lo` again (the ones that are not there are skipped).
pub fn remove_addresses(addrs: &[Ipv4Addr]) -> Result<()> {
    ip_batch(addrs, "del", true)
}

fn ip_batch(addrs: &[Ipv4Addr], verb: &str, force: bool) -> Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let mut batch = String::new();
    for a in addrs {
        batch += &format!("address {verb} {a}/32 dev lo\n");
    }
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let shown = process::show(&cmd);
    let mut child = cmd
        .spawn()
        .map_err(LabError::io(format!("run `{shown}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, batch.as_bytes())
            .map_err(LabError::io(format!("feed `{shown}`")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("wait for `{shown}`")))?;
    // `del` of an address that is already gone fails; -force goes on and that is fine.
    if !out.status.success() && !force {
        return Err(LabError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: process::tail(&String::from_utf8_lossy(&out.stderr), 400),
        });
    }
    Ok(())
}

/// Stops a machine-wide Postfix or Dovecot (one in this process's mount namespace, e.g.
/// started by the packages' postinst): it would hold port 25 or 993 on every address,
/// and lab hosts could not bind theirs.
pub fn stop_machine_mail() -> Result<()> {
    let own_ns = fs::read_link("/proc/self/ns/mnt").ok();
    let mut postfix = false;
    let mut dovecot = false;
    for e in fs::read_dir("/proc")
        .map_err(LabError::io("list /proc"))?
        .flatten()
    {
        let pid = e.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != own_ns {
            continue;
        }
        match fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) if exe == Path::new("/usr/lib/postfix/sbin/master") => postfix = true,
            Ok(exe) if exe == Path::new("/usr/sbin/dovecot") => dovecot = true,
            _ => {}
        }
    }
    if postfix {
        run(Command::new("/usr/sbin/postfix").arg("stop"))?;
    }
    if dovecot {
        run(Command::new("doveadm").arg("stop"))?;
    }
    Ok(())
}
