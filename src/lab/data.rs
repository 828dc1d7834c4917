//! Synthetic relay data on OLD hosts, written straight into the host's directories from
//! the controller with the lab's vmail/opendkim owners: what a chatmail relay keeps and a
//! migration must move (mailboxes with their side files, ACME account and certificates,
//! the DKIM key). The Postfix queue is real: `lab up` fills it through Postfix (see
//! `seed`).

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::accounts;
use super::error::{LabError, Result};
use super::host::LabHost;
use super::users::LabUsers;

/// How much mail each OLD host gets. The default matches the peers' benchmark
/// (100 users x 30 messages of 4 KiB); tests and demos use less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataOptions {
    /// Mailboxes per relay.
    pub users: usize,
    /// Messages per mailbox (every fifth one still in new/).
    pub messages: usize,
    /// Bytes per message.
    pub message_size: usize,
    /// Seeds the message bodies; the same seed gives the same bytes.
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> DataOptions {
        DataOptions {
            users: 100,
            messages: 30,
            message_size: 4096,
            seed: 1,
        }
    }
}

/// Message timestamps start here (Nov 2023), so mtimes are old and distinct.
const BASE_TIME: u64 = 1_700_000_000;

/// An owner and mode for a created file or directory.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn io(what: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    LabError::io(format!("{what} {}", p.display()))
}

fn mkdir(p: &Path, o: Owner, mode: u32) -> Result<()> {
    fs::create_dir_all(p).map_err(io("create", p))?;
    chown(p, Some(o.uid), Some(o.gid)).map_err(io("chown", p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io("chmod", p))
}

fn file(p: &Path, data: &[u8], o: Owner, mode: u32, mtime: Option<u64>) -> Result<()> {
    fs::write(p, data).map_err(io("write", p))?;
    chown(p, Some(o.uid), Some(o.gid)).map_err(io("chown", p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io("chmod", p))?;
    if let Some(t) = mtime {
        set_mtime(p, t)?;
    }
    Ok(())
}

/// Sets a file's or directory's mtime (and atime) to `secs` since the epoch.
pub(crate) fn set_mtime(p: &Path, secs: u64) -> Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let f = File::open(p).map_err(io("open", p))?;
    f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .map_err(io("set the mtime of", p))
}

/// The mailbox directory name of user `u` (as dovecot names them: the full address).
pub fn user_address(u: usize, domain: &str) -> String {
    format!("user{u:03}@{domain}")
}

/// Message bodies: one random base64-looking pool per host, each message a slice of it
/// at a random offset. Drawing every byte from the generator made `lab up` take seconds
/// in debug builds; this keeps bodies distinct and deterministic at memcpy speed.
pub(crate) struct Bodies {
    pool: Vec<u8>,
}

impl Bodies {
    /// A fresh pool from `rng`.
    pub(crate) fn new(rng: &mut StdRng) -> Bodies {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut raw = vec![0u8; 16 * 1024];
        rng.fill(&mut raw[..]);
        let mut pool = Vec::with_capacity(raw.len() + raw.len() / 38);
        for (i, b) in raw.iter().enumerate() {
            pool.push(B64[usize::from(b & 63)]);
            if i % 76 == 75 {
                pool.extend_from_slice(b"\r\n");
            }
        }
        Bodies { pool }
    }

    /// A maildir message: headers, then body bytes from the pool, exactly `size` long.
    pub(crate) fn message(
        &self,
        rng: &mut StdRng,
        from: &str,
        to: &str,
        subject: &str,
        size: usize,
    ) -> Vec<u8> {
        let mut m = format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nContent-Type: multipart/encrypted\r\n\r\n"
        )
        .into_bytes();
        let mut at = rng.random_range(0..self.pool.len());
        while m.len() < size {
            let take = (self.pool.len() - at).min(size - m.len());
            m.extend_from_slice(&self.pool[at..at + take]);
            at = 0;
        }
        m.truncate(size);
        m
    }
}

/// Writes one OLD host's relay data for `domain`.
pub fn write_old_host(
    host: &LabHost,
    domain: &str,
    users: &LabUsers,
    opts: &DataOptions,
) -> Result<()> {
    let root = Owner { uid: 0, gid: 0 };
    let vmail = Owner {
        uid: users.vmail_uid,
        gid: users.vmail_gid,
    };
    let dkim = Owner {
        uid: users.opendkim_uid,
        gid: users.opendkim_gid,
    };
    // One stream per relay, seeded by the seed and the relay, so relays differ but runs
    // repeat exactly.
    let mut rng =
        StdRng::seed_from_u64(opts.seed ^ (host.relay as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));

    let bodies = Bodies::new(&mut rng);
    let mail = host.path("/home/vmail/mail");
    mkdir(&mail, vmail, 0o700)?;
    let dom = mail.join(domain);
    mkdir(&dom, vmail, 0o700)?;
    for u in 0..opts.users {
        let addr = user_address(u, domain);
        let ud = dom.join(&addr);
        mkdir(&ud, vmail, 0o700)?;
        for sub in ["cur", "new", "tmp"] {
            mkdir(&ud.join(sub), vmail, 0o700)?;
        }
        for m in 0..opts.messages {
            let ts = BASE_TIME + (u as u64) * 1000 + m as u64;
            let body = bodies.message(
                &mut rng,
                &format!("sender{m}@example.org"),
                &addr,
                &format!("message {m}"),
                opts.message_size,
            );
            let base = format!(
                "{ts}.M{m}P{}.{domain},S={size},W={size}",
                4000 + u,
                size = opts.message_size
            );
            // Every fifth message has not been seen by a client yet: it stays in new/
            // without flags, as dovecot delivers it.
            let path = if m % 5 == 4 {
                ud.join("new").join(&base)
            } else {
                ud.join("cur").join(format!("{base}:2,"))
            };
            file(&path, &body, vmail, 0o600, Some(ts))?;
        }
        // The password file's mtime is the last login: a migration must keep it.
        let login = BASE_TIME - 86_400 - (u as u64) * 3_600;
        // Dovecot's passdb reads it (see `accounts`), as chatmail's reads its own.
        let line = accounts::passwd_line(&addr, &accounts::password(opts.seed, &addr));
        file(
            &ud.join("password"),
            line.as_bytes(),
            vmail,
            0o600,
            Some(login),
        )?;
        file(
            &ud.join("enforceE2EEincoming"),
            b"",
            vmail,
            0o600,
            Some(login + 60),
        )?;
        let meta = format!("{{\"devicetokens\": [\"lab-token-{u:03}\"]}}\n");
        file(
            &ud.join("metadata.json"),
            meta.as_bytes(),
            vmail,
            0o600,
            Some(login + 120),
        )?;
        file(
            &ud.join("dovecot-uidlist"),
            b"3 V1700000000 N1\n",
            vmail,
            0o600,
            None,
        )?;
    }

    let acme = host.path("/var/lib/acme");
    let live = acme.join("live").join(domain);
    mkdir(&acme.join("accounts"), root, 0o700)?;
    mkdir(&live, root, 0o755)?;
    file(
        &acme.join("accounts/account.json"),
        format!("{{\"lab-acme-account\": \"{domain}\"}}\n").as_bytes(),
        root,
        0o600,
        None,
    )?;
    for n in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
        let pem = format!("-----BEGIN LAB {n} FOR {domain}-----\n").repeat(20);
        file(&live.join(n), pem.as_bytes(), root, 0o600, None)?;
    }

    let dk = host.path("/etc/dkimkeys");
    file(
        &dk.join("opendkim.private"),
        format!("-----BEGIN LAB DKIM KEY OF {domain} (old host)-----\n").as_bytes(),
        dkim,
        0o600,
        None,
    )?;
    file(
        &dk.join("opendkim.txt"),
        format!("opendkim._domainkey.{domain} IN TXT \"v=DKIM1; k=rsa; p=LAB\"\n").as_bytes(),
        dkim,
        0o644,
        None,
    )?;

    Ok(())
}
