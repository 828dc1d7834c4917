//! The exact commands of each step, rendered from a relay's settings.
//!
//! Pure functions: `cmfleet plan` prints these and the executors run these, so the
//! plan can never differ from what runs. Every inventory value is shell-quoted.

use std::path::{Path, PathBuf};

use crate::infra::shell::{join, quote};
use crate::model::inventory::{Fleet, Host, Relay, TransferMode};

/// The maildir tree, mirrored exactly at the final sync.
pub const MAIL_DIR: &str = "/home/vmail/mail";
/// State moved at the final sync besides the mailboxes (the guide's tar list).
pub const STATE_DIRS: [&str; 3] = [ACME_DIR, "/etc/dkimkeys", "/var/spool/postfix"];
/// acmetool's certificates (Let's Encrypt), chatmail's default TLS.
pub const ACME_DIR: &str = "/var/lib/acme";
/// Moved when present: marks a relay that refuses new accounts.
pub const OPTIONAL_FILES: [&str; 1] = ["/etc/chatmail-nocreate"];
/// Legacy password database that must be gone before a move.
pub const LEGACY_PASSDB: &str = "/home/vmail/passdb.sqlite";
/// Where OLD keeps the one NEW host key cmfleet vouches for (inside root's .ssh,
/// which the guide already uses, so nothing else on OLD is touched).
pub const OLD_KNOWN_HOSTS: &str = "/root/.ssh/cmfleet_known_hosts";

/// The ssh command OLD uses to reach NEW: batch mode, and strict checking against
/// the single key cmfleet installed — never the host's own known_hosts.
pub fn inner_ssh(relay: &Relay) -> String {
    let new = &relay.new;
    let mut words = vec![
        "ssh".to_string(),
        "-p".into(),
        new.port.to_string(),
        "-l".into(),
        new.user.clone(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={OLD_KNOWN_HOSTS}"),
    ];
    if let Some(c) = &relay.settings.cipher {
        words.push("-c".into());
        words.push(c.clone());
    }
    if let Some(k) = &relay.settings.kex {
        words.push("-o".into());
        words.push(format!("KexAlgorithms={k}"));
    }
    join(&words)
}

/// On OLD: install NEW's host key (as cmfleet verified it) for the inner ssh.
pub fn install_known_host(known_hosts_line: &str) -> String {
    // A subshell keeps the umask to this file, not to what follows.
    format!(
        "(umask 077 && printf '%s\\n' {} > {OLD_KNOWN_HOSTS})",
        quote(known_hosts_line)
    )
}

/// On OLD: the shell words that run a command on NEW, as the copy reaches it (the
/// command, quoted, follows).
pub fn to_new(relay: &Relay) -> String {
    format!("{} {}", inner_ssh(relay), quote(&relay.new.ssh))
}

/// On OLD, one command: vouch for NEW's host key, then push. One command, not two:
/// each costs an ssh client process and a round trip.
pub fn vouched_push(known_hosts_line: &str, sync: &str) -> String {
    stops_with_channel(&format!(
        "{} && {{ {sync}; }}",
        install_known_host(known_hosts_line)
    ))
}

/// Runs `script` so that it ends when cmfleet's channel does. sshd leaves a closed
/// channel's command running (a killed cmfleet would leave a copy going on OLD); the
/// channel's stdin, which cmfleet holds open and never writes, reaches EOF then, and
/// a watcher kills the script's whole process group (`setsid`: tar, rsync, ssh).
/// The watcher reads stdin through fd 3: a background job's own stdin is /dev/null.
/// The channel can end before `setsid` has made the group (a second Ctrl-C right
/// after the start, a loaded host): until the group exists the watcher kills the
/// job itself, and it keeps at it until nothing of either is left (KILL after 5 s).
pub fn stops_with_channel(script: &str) -> String {
    format!(
        "exec 3<&0\n\
         # shellcheck disable=SC2016 # the quoted program is setsid sh -c's own: its $ expand there, not here\n\
         setsid sh -c {} </dev/null & p=$!; \
         {{ cat <&3; n=0; while kill -0 -- -$p || kill -0 $p; do s=TERM; [ $n -ge 50 ] && s=KILL; \
         kill -$s -- -$p || kill -$s $p; n=$((n+1)); sleep 0.1; done; }} >/dev/null 2>&1 & w=$!; \
         wait $p; rc=$?; kill $w 2>/dev/null; exit $rc",
        quote(script)
    )
}

/// On a host, `awk` over rsync's `--info=progress2` output: at most one progress
/// line a second (`srand()` returns the previous seed, the time the one before
/// set), the last one held back passed on before any other line and at the end.
/// rsync writes a progress line per file it finishes, each its own write(2): on
/// the big relay of docs/performance.md, 125,000 of them, 9.5 MB through ssh to
/// the controller and 3 s of CPU inside the downtime. The controller samples
/// again for its log (`remote::process`).
const PROGRESS_SAMPLER: &str = r#"BEGIN { RS = "[\r\n]" }
/^ *[0-9][0-9,]* +[0-9]+% / { srand(); t = srand(); if (t == last) { held = $0; next } last = t; held = ""; print; fflush(); next }
{ if (held != "") print held; held = ""; print; fflush() }
END { if (held != "") print held }"#;

/// `sampled CMD...` runs CMD with its stdout through [`PROGRESS_SAMPLER`], and
/// returns CMD's status (sh has no `pipefail`: the status leaves the pipeline on
/// fd 3, into the command substitution; 70 if it never came).
fn sampled() -> String {
    format!(
        "sampled() {{ exec 5>&1; sm=$( {{ {{ \"$@\" 3>&- 5>&-; echo $? >&3; }} | awk {} >&5 3>&-; }} 3>&1 ); exec 5>&-; return \"${{sm:-70}}\"; }}; ",
        quote(PROGRESS_SAMPLER)
    )
}

/// rsync from OLD into NEW, as the copy reaches it, its progress sampled on OLD.
fn rsync_push(relay: &Relay, flags: &str, sources: &str, dest: &str) -> String {
    format!(
        "{}sampled rsync {flags} --info=progress2 -e {} {sources} {}",
        sampled(),
        quote(&inner_ssh(relay)),
        quote(&format!("{}:{dest}", relay.new.ssh)),
    )
}

/// Step 1 on OLD when NEW has no mail yet: the guide's `tar c | ssh NEW tar x`,
/// reporting progress every MiB as `tar: cmfleet-copied BYTES (..., RATE) of
/// TOTAL` (every 100 KiB cost ~2% of the copy's wall time: docs/performance.md).
/// A stream cut short fails `tar x` (no end-of-archive), so the pipe's status is
/// the copy's; tar c's own warnings about files that change under it (a live
/// maildir) are only that: step 4 mirrors exactly. `bytes` unknown (the plan)
/// renders as `?`.
pub fn first_copy(relay: &Relay, bytes: Option<u64>) -> String {
    let total = bytes.map_or("?".to_string(), |b| b.to_string());
    format!(
        "tar c -C / --checkpoint=100 --checkpoint-action={} {} | {} {} {}",
        quote(&format!(
            "echo={} %{{r}}T of {total}",
            crate::host::remote::TAR_PROGRESS
        )),
        MAIL_DIR.trim_start_matches('/'),
        inner_ssh(relay),
        quote(&relay.new.ssh),
        quote("tar x -C /"),
    )
}

/// Step 1 on OLD: copy the mailboxes to NEW again. Repeatable and resumable (rsync,
/// not the guide's one-shot tar). `mirror` adds `--delete`, and only data cmfleet
/// itself put on NEW may be deleted (the journal says a step 1 of this relay ran
/// before): a NEW that held mail of its own when cmfleet first came (another
/// relay's live host written into the inventory by mistake, a reused machine) only
/// gets files added. Step 4, inside the downtime and after its preflights, mirrors.
pub fn initial_sync(relay: &Relay, mirror: bool) -> String {
    // --whole-file: maildir messages never change in place, so rsync's delta
    // algorithm only costs time here (lab relay, 3000 messages: 1.3 s -> 1.0 s).
    let flags = if mirror {
        "-aH --whole-file --delete"
    } else {
        "-aH --whole-file"
    };
    rsync_push(
        relay,
        flags,
        &format!("{MAIL_DIR}/"),
        &format!("{MAIL_DIR}/"),
    )
}

/// Where the Postfix spool holds the running system's sockets and fifos, not mail:
/// Postfix's own (`private/`, `public/`) and opendkim's (chatmail's `opendkim.conf`:
/// `local:/var/spool/postfix/opendkim/opendkim.sock`).
pub const SPOOL_RUNTIME_DIRS: [&str; 3] = [
    "/var/spool/postfix/private",
    "/var/spool/postfix/public",
    "/var/spool/postfix/opendkim",
];

/// rsync options of every copy into NEW's spool: sockets and fifos are not copied
/// (a copy of OLD's would be a dead one; the guide's tar skips them too), and those of
/// NEW's running services are protected from `--delete` (NEW's Postfix and opendkim
/// made them at step 2; a service without its socket is down until restarted).
pub fn spool_runtime_filters() -> Vec<String> {
    let mut out = vec!["--no-specials".to_string()];
    out.extend(
        SPOOL_RUNTIME_DIRS
            .iter()
            .map(|d| format!("--filter=P {d}/***")),
    );
    out
}

/// Whether OLD must hold [`ACME_DIR`] for the final sync. chatmail gets certificates
/// from Let's Encrypt there, except for a mail_domain starting with `_` or an IP
/// address: those get a self-signed certificate, from relay 1.10 on at
/// /etc/ssl/certs/mailserver.pem (no /var/lib/acme at all), which NEW's own step 2
/// makes for the same names (nobody verifies such a relay's chain). For them the
/// directory is moved when OLD has it (1.9.0 and the lab's overlay keep it there).
pub fn acme_required(relay: &Relay) -> bool {
    match &relay.mail_domain {
        crate::model::inventory::MailDomain::Name(n) => !n.starts_with('_'),
        crate::model::inventory::MailDomain::Ip(_) => false,
    }
}

/// The state trees the final sync requires on OLD (see [`acme_required`]).
pub fn required_state(relay: &Relay) -> Vec<&'static str> {
    STATE_DIRS
        .into_iter()
        .filter(|d| *d != ACME_DIR || acme_required(relay))
        .collect()
}

/// What the final sync moves when OLD has it.
fn optional_state(relay: &Relay) -> Vec<&'static str> {
    let mut out = OPTIONAL_FILES.to_vec();
    if !acme_required(relay) {
        out.insert(0, ACME_DIR);
    }
    out
}

/// Step 4 on OLD: two rsyncs at once, one connection each. OLD is frozen and
/// authoritative now, so NEW mirrors it exactly: a message renamed or expired since
/// step 1 must not survive on NEW; the spool's runtime sockets excepted (see
/// [`spool_runtime_filters`]). `--no-implied-dirs` keeps rsync off `/etc` and `/var`
/// themselves.
///
/// - The state (acme, dkimkeys, the Postfix spool, the optional files): small; its
///   owners are set afterwards ([`fix_ownership`]).
/// - The mailboxes, with `--chown` to NEW's vmail (`vmail`, its `uid:gid` as NEW
///   said right before, [`before_final_sync`]; `None` for the plan). rsync sets the
///   owner of every entry it sends, transferred or skipped as up to date (an
///   unchanged file of another owner gets its owner fixed, itemized `.f....og...`),
///   and `--delete` removes the rest: every entry under /home/vmail/mail on NEW
///   ends up owned as `chown -R vmail:` would leave it, without a walk of its own
///   inside the downtime. The proof checks every owner anyway.
/// - `mirror`: the mailboxes' rsync deletes what OLD does not have (`--delete`).
///   Without it, NEW's proof listing removes that, from OLD's listing
///   (`proof::Handoff`): rsync's `--delete` walks NEW's whole tree a second time
///   inside the downtime. `--force` then lets a directory in the way of one of OLD's
///   files go, as `--delete` does.
/// - The mailboxes go `mail/` into `mail/`, not with `-R` as the state does, and
///   rsync's output is block-buffered (`--outbuf=B`): on the big relay of
///   docs/performance.md, `-R` cost this rsync about 0.8 s and a write(2) per
///   progress line about 1.5 s, inside the downtime. Block-buffered, the sampler
///   still sees every line, some 60 at a time.
///
/// The script's status is the mailboxes' rsync's, else the state's.
pub fn final_sync(relay: &Relay, vmail: Option<(u32, u32)>, mirror: bool) -> String {
    let state = required_state(relay);
    let mut required = state.clone();
    required.push(MAIL_DIR);
    let (required, state) = (required.join(" "), state.join(" "));
    // One test per optional file, not a loop: a loop over one word reads as a
    // mistake (shellcheck's SC2043).
    let optional: String = optional_state(relay)
        .iter()
        .map(|f| format!("if [ -e {f} ]; then set -- \"$@\" {f}; fi; "))
        .collect();
    let state_sync = format!(
        "rsync -aHR --delete --no-implied-dirs {} -e {} \"$@\" {}",
        join(&spool_runtime_filters()),
        quote(&inner_ssh(relay)),
        quote(&format!("{}:/", relay.new.ssh)),
    );
    let mail_sync = rsync_push(
        relay,
        &format!(
            "-aH {} --outbuf=B {}",
            if mirror { "--delete" } else { "--force" },
            quote(&match vmail {
                Some((u, g)) => format!("--chown={u}:{g}"),
                None => "--chown=VMAIL_UID:VMAIL_GID".to_string(),
            })
        ),
        &format!("{MAIL_DIR}/"),
        &format!("{MAIL_DIR}/"),
    );
    format!(
        "for p in {required}; do [ -e \"$p\" ] || {{ echo \"missing $p on old host\" >&2; exit 3; }}; done; \
         set -- {state}; {optional}\
         {state_sync} & s=$!; \
         {mail_sync}; m=$?; wait $s; st=$?; \
         if [ $m -ne 0 ]; then exit $m; fi; exit $st"
    )
}

/// On NEW before the final sync: record /etc/dkimkeys' owner ([`record_dkim_owner`]),
/// then say vmail's `uid:gid`, which the mailboxes' copy gives every entry.
pub fn before_final_sync() -> String {
    format!(
        "{}\nif u=$(id -u vmail) && g=$(id -g vmail); then echo \"$u:$g\"; else echo 'no vmail user on the new host (step 2 creates it)' >&2; exit 3; fi",
        record_dkim_owner()
    )
}

/// A `uid:gid` pair (what [`before_final_sync`] says), `None` if `s` is not one.
pub fn parse_uid_gid(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Step 4 on NEW: the ownerships of the guide (the DKIM keys' owner is the one step
/// 2 gave /etc/dkimkeys on NEW, recorded by [`record_dkim_owner`]), then
/// Postfix's queue repair (queue file names follow inode numbers, which changed).
///
/// The spool's owners: a direct rsync (as root, without `--numeric-ids`) gives every
/// file the owner and group of the same *name* on NEW, so Postfix's `postfix` and
/// `postdrop` come out right whatever their numbers. A staged copy carries OLD's
/// numbers (the controller has none of these users), so there `postfix
/// set-permissions` restores them. It is not run after a direct copy: it has nothing
/// to fix there and is the heaviest command of the downtime (~300 chown/chmod and
/// ~50 postconf processes, 0.6 s of CPU per relay: docs/performance.md).
/// `acme`: [`acme_required`]; when not, /var/lib/acme is chowned only if it is there.
///
/// The mailboxes: a direct copy set their owner as it went ([`final_sync`]'s
/// `--chown`); a staged one carries OLD's numbers, so there `chown -R` walks them.
pub fn fix_ownership(transfer: TransferMode, acme: bool) -> String {
    let rest = match transfer {
        TransferMode::Direct => "",
        TransferMode::Staged => "chown vmail: -R /home/vmail/mail && postfix set-permissions && ",
    };
    let acme = match acme {
        true => format!("chown root: -R {ACME_DIR}"),
        false => format!("{{ [ ! -e {ACME_DIR} ] || chown root: -R {ACME_DIR}; }}"),
    };
    format!("{acme} && {} && {rest}postsuper -s", dkim_chown())
}

/// On NEW: the owner (`uid:gid`) of /etc/dkimkeys as step 2's cmdeploy made it,
/// recorded before the final sync copies OLD's over it. The DKIM signer's user is
/// not a constant: chatmail is moving DKIM signing away from opendkim.
pub const DKIM_OWNER_FILE: &str = "/root/.ssh/cmfleet_dkim_owner";
/// On NEW before the final sync: record /etc/dkimkeys' owner once (a retried
/// step 4 finds OLD's copy there, whose owner may be OLD's numbering).
pub fn record_dkim_owner() -> String {
    format!(
        "[ -s {DKIM_OWNER_FILE} ] || {{ [ -d /etc/dkimkeys ] && (umask 077 && stat -c %u:%g /etc/dkimkeys > {DKIM_OWNER_FILE}.tmp && mv {DKIM_OWNER_FILE}.tmp {DKIM_OWNER_FILE}); }} || {{ echo 'no /etc/dkimkeys on the new host (step 2 creates it)' >&2; exit 3; }}"
    )
}

/// On NEW after the final sync: DKIM keys to the recorded owner.
pub fn dkim_chown() -> String {
    format!("chown -R \"$(cat {DKIM_OWNER_FILE})\" /etc/dkimkeys")
}

/// On OLD before a staged transfer: bytes the relay will occupy in staging.
pub fn disk_usage() -> String {
    let mut paths = STATE_DIRS.to_vec();
    paths.push(MAIL_DIR);
    format!("du -sbc {} | tail -n 1 | cut -f1", paths.join(" "))
}

/// On OLD: KiB used by the mailboxes.
pub fn used_kib() -> String {
    format!("du -sk {MAIL_DIR} | cut -f1")
}

/// On NEW: KiB free on the mailboxes' filesystem, then KiB they use so far.
pub fn free_and_used_kib() -> String {
    format!(
        "df -Pk /home/vmail | awk 'NR==2 {{print $4}}'; u=$(du -sk {MAIL_DIR} 2>/dev/null | cut -f1); echo \"${{u:-0}}\""
    )
}

/// One cmdeploy invocation on the controller (argv and the stages it must see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdeployRun {
    /// Value for `CMDEPLOY_STAGES`; `None` means the variable is removed so the
    /// default (all stages) applies and nothing stale from the operator's shell leaks in.
    pub stages: Option<&'static str>,
    pub args: Vec<String>,
    /// Runs while a relay is down (or to bring it back): it goes before pre-staging
    /// runs in the queue for a workspace.
    pub urgent: bool,
}

impl CmdeployRun {
    /// The run as a shell line, with the environment the fleet gives every run
    /// (`cmdeploy_home`, `cmdeploy_env`).
    pub fn render(&self, cmdeploy: &Path, fleet: &Fleet) -> String {
        let mut env = match self.stages {
            Some(s) => format!("CMDEPLOY_STAGES={s}"),
            None => "env -u CMDEPLOY_STAGES".to_string(),
        };
        if let Some(h) = &fleet.cmdeploy_home {
            env = format!("{env} HOME={}", quote(&h.display().to_string()));
        }
        for (name, value) in &fleet.cmdeploy_env {
            env = format!("{env} {name}={}", quote(value));
        }
        let mut words = vec![cmdeploy.display().to_string()];
        words.extend(self.args.iter().cloned());
        format!("{env} {}", join(&words))
    }
}

fn cmdeploy(
    relay: &Relay,
    host: &Host,
    stages: Option<&'static str>,
    disable: bool,
) -> CmdeployRun {
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        relay.config.display().to_string(),
    ];
    if disable {
        args.push("--disable-mail".into());
    }
    if relay.settings.skip_dns_check {
        args.push("--skip-dns-check".into());
    }
    args.extend(["--ssh-host".to_string(), host.ssh.clone()]);
    CmdeployRun {
        stages,
        args,
        urgent: true,
    }
}

/// Step 2: install and configure NEW, keep it inactive.
pub fn preconfigure(relay: &Relay) -> CmdeployRun {
    CmdeployRun {
        urgent: false,
        ..cmdeploy(relay, &relay.new, Some("install,configure"), false)
    }
}

/// The services Debian's package scripts start when step 2 installs them (postfix,
/// dovecot, opendkim; nginx where it starts): NEW must not run them before step 6.
pub const STARTED_BY_PACKAGES: [&str; 4] = ["postfix", "dovecot", "opendkim", "nginx"];

/// Step 2 on NEW, after cmdeploy's install and configure: stop what the package
/// scripts started. Left running they serve with the setup they had before step 4:
/// chatmail's activate-only run restarts nothing that runs (measured on a real 1.9.0
/// relay: dovecot still authenticating with Debian's PAM default, so no user could log
/// in on NEW, and opendkim signing with step 2's throwaway key instead of OLD's). NEW
/// also takes no mail before its cutover, and Postfix is not running while step 4
/// renames its queue. Step 6's activation starts them with the final state.
pub fn stop_package_services() -> String {
    let units = STARTED_BY_PACKAGES.join(" ");
    format!(
        "for u in {units}; do if systemctl is-active --quiet \"$u.service\"; then set -- \"$@\" \"$u.service\"; fi; done; \
         if [ $# -gt 0 ]; then systemctl stop \"$@\"; fi"
    )
}

/// Step 3: stop and disable postfix and dovecot on OLD.
pub fn disable_old(relay: &Relay) -> CmdeployRun {
    cmdeploy(relay, &relay.old, None, true)
}

/// Step 6: activate NEW.
pub fn activate(relay: &Relay) -> CmdeployRun {
    cmdeploy(relay, &relay.new, Some("activate"), false)
}

/// What `cmdeploy run --disable-mail` does to mail, and nothing else: its dovecot and
/// postfix deployers end in pyinfra's `systemd.service(running=False, enabled=False)`
/// for these units (chatmail relay, `cmdeploy/src/cmdeploy/{dovecot,postfix}/deployer.py`),
/// dovecot first, which runs `systemctl stop` and `systemctl disable` (pyinfra,
/// `operations/systemd.py`). Stopped and disabled, not masked.
pub const MAIL_UNITS: [&str; 2] = ["dovecot.service", "postfix.service"];

/// Step 3 with `disable_old = "systemctl"`, on OLD: stop mail and keep it off across
/// a reboot, as `--disable-mail` does, without the whole deploy around it.
pub fn systemctl_disable_mail() -> String {
    format!("systemctl disable --now {}", MAIL_UNITS.join(" "))
}

/// Rollback of a systemctl step 3, on OLD: exactly its inverse.
pub fn systemctl_enable_mail() -> String {
    format!("systemctl enable --now {}", MAIL_UNITS.join(" "))
}

/// What [`smtp_probe`] prints.
pub const PROBE_OPEN: &str = "open";
pub const PROBE_CLOSED: &str = "closed";
pub const PROBE_UNKNOWN: &str = "unknown";

/// On OLD: does its own public address take SMTP? Asked from OLD itself so that a
/// firewall between the controller and OLD cannot pass for a closed port; a connect
/// that hangs (`timeout`) is neither answer.
pub fn smtp_probe(ip4: std::net::Ipv4Addr) -> String {
    format!(
        "timeout 5 bash -c {} 2>/dev/null; \
         case $? in 0) echo {PROBE_OPEN} ;; 124) echo {PROBE_UNKNOWN} ;; *) echo {PROBE_CLOSED} ;; esac",
        quote(&smtp_connect(ip4))
    )
}

/// The bash program [`smtp_probe`] runs: connect to port 25 of `ip4` (bash's
/// `/dev/tcp`), exit 0 when that succeeds. The address is written into it: an
/// `Ipv4Addr` is digits and dots, nothing a shell reads as code.
pub fn smtp_connect(ip4: std::net::Ipv4Addr) -> String {
    format!("exec 3<>/dev/tcp/{ip4}/25")
}

/// Rollback: a full run against OLD without `--disable-mail` re-enables mail there.
pub fn reenable_old(relay: &Relay) -> CmdeployRun {
    cmdeploy(relay, &relay.old, None, false)
}

/// Rollback: make sure NEW does not serve mail (the relay must have one active site).
pub fn disable_new(relay: &Relay) -> CmdeployRun {
    cmdeploy(relay, &relay.new, None, true)
}

/// Staged mode: where a relay's data waits on the controller between the two hops.
pub fn staging_dir(staging_root: &Path, relay: &Relay) -> PathBuf {
    staging_root.join(&relay.name)
}

/// Staged mode, one hop: rsync on the controller between a host and the staging
/// directory, with `-R` so each source keeps its absolute path under the staging
/// directory (and `--delete` only ever reaches into the listed trees, never `/`).
/// `ssh` is the remote shell (reusing the host's master connection);
/// `--numeric-ids` because the controller has no vmail or opendkim users —
/// ownership is set on NEW afterwards anyway.
fn staged_rsync(
    ssh: &str,
    sources: &[String],
    dest: &str,
    delete: bool,
    missing_ok: bool,
) -> Vec<String> {
    let mut argv: Vec<String> = ["rsync", "-aHR", "--numeric-ids", "--no-implied-dirs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if delete {
        argv.push("--delete".into());
    }
    if missing_ok {
        argv.push("--ignore-missing-args".into());
    }
    argv.extend(spool_runtime_filters());
    argv.extend(["--info=progress2", "-e", ssh].map(str::to_string));
    argv.extend(sources.iter().cloned());
    argv.push(dest.to_string());
    argv
}

/// A staged sync's two hops, run on the controller: OLD -> staging, then staging ->
/// NEW from inside the staging directory (relative paths keep `-R`'s layout).
pub struct StagedHops {
    pub dir: PathBuf,
    pub pull: Vec<String>,
    /// Runs in `dir`.
    pub push: Vec<String>,
}

/// The hops of a staged sync of `relay` (`last`: the final sync, with the state);
/// `old_ssh` and `new_ssh` are the remote shells (the hosts' master connections).
/// The staging copy always mirrors OLD (it is cmfleet's own); NEW is mirrored at
/// the final sync, or when `mirror_new` (see [`initial_sync`]).
pub fn staged_hops(
    staging_root: &Path,
    relay: &Relay,
    last: bool,
    mirror_new: bool,
    old_ssh: &str,
    new_ssh: &str,
) -> StagedHops {
    let dir = staging_dir(staging_root, relay);
    let trees = sync_trees(last);
    // A tree OLD need not have (acme, for a self-signed relay) may be missing.
    let missing_ok = last && !acme_required(relay);
    let from_old: Vec<String> = trees
        .iter()
        .map(|p| format!("{}:{p}", relay.old.ssh))
        .collect();
    let relative: Vec<String> = trees.iter().map(|p| format!(".{p}")).collect();
    StagedHops {
        pull: staged_rsync(
            old_ssh,
            &from_old,
            &format!("{}/", dir.display()),
            true,
            missing_ok,
        ),
        push: staged_rsync(
            new_ssh,
            &relative,
            &format!("{}:/", relay.new.ssh),
            last || mirror_new,
            missing_ok,
        ),
        dir,
    }
}

/// The trees a sync moves: the mailboxes, and at the final sync the state too.
fn sync_trees(last: bool) -> Vec<&'static str> {
    let mut trees = if last {
        STATE_DIRS.to_vec()
    } else {
        Vec::new()
    };
    trees.push(MAIL_DIR);
    trees
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// The channel may end before the script's `setsid` has made its process group
    /// (a second Ctrl-C right after the copy started, on a loaded host): the
    /// watcher must still stop it. A `setsid` that takes half a second to start
    /// opens that window every time.
    #[test]
    fn a_channel_that_ends_before_setsid_still_stops_the_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let setsid = dir.path().join("setsid");
        std::fs::write(
            &setsid,
            "#!/bin/sh\nsleep 0.5\nexec /usr/bin/setsid \"$@\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&setsid, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let marker = dir.path().join("copied");
        let script = format!("sleep 1; touch {}", marker.display());
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let started = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(super::stops_with_channel(&script))
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run sh");
        std::thread::sleep(Duration::from_millis(2000));
        assert!(
            !marker.exists(),
            "the script ran on after the channel ended ({status:?})"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
