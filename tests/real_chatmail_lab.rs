//! A migration night on real chatmail relays: every OLD a Debian 12 container that
//! chatmail's own `cmdeploy run` deployed, every NEW a fresh Debian 12 container, and
//! cmfleet driving the real cmdeploy for steps 2, 3 and 6.
//!
//! The relay version is the lab's default (tag 1.9.0 from the shared bundle, its Python
//! filtermail enforcing encryption: no stand-in in the mail path), or
//! `CMFLEET_CHATMAIL_REF` (1.12.0: the lab's pass-through filtermail, which enforces no
//! encryption, stands in for the Rust one). `CMFLEET_REAL_RELAYS` (default 2) sets the
//! number of relays, `CMFLEET_REAL_NET` pins the lab network (tests/common/real.rs).
//!
//! The relays' names resolve through the lab's BIND (`lab.example`, with the records
//! chatmail asks for, DKIM keys from OLD's own deploy), which step 5 updates with RFC
//! 2136 and TSIG. State on OLD is made through the relays themselves: accounts by their
//! first IMAP login (chatmail's doveauth), SecureJoin requests over SMTPS through
//! postfix, filtermail, opendkim and dovecot (the one unencrypted mail filtermail
//! passes), messages read and flagged over IMAP, mail to the other relay held in OLD's
//! deferred queue (relay 1's OLD defers its transport to other domains), and OLD's DKIM key. Between
//! the pre-stage and the cutover more mail arrives and more is read. Relay 1 is cut
//! over with cmdeploy's `--disable-mail`, relay 2 with `disable_old = "systemctl"`.
//!
//! Judged by: every unit active on OLD before the night is active on NEW after it;
//! NEW holds OLD's DKIM key and its opendkim started after the key was copied (an
//! activate-only run restarts nothing); mail sent from each NEW to another relay
//! arrives, which chatmail's receiving opendkim allows only with a signature that
//! verifies against the DKIM record published from OLD's key; the message OLD had
//! deferred arrives exactly once; DNS serves NEW; each NEW serves its own website; an
//! IMAP client sees on NEW exactly the mailbox (UIDs, flags) it saw on OLD at the
//! cutover; OLD's mail services stay stopped and its port 25 closed. Then relay 2 is
//! rolled back: DNS serves OLD again, OLD serves with the mailboxes as they were, and
//! NEW is stopped.
//!
//! With `CMFLEET_REAL_GUIDE=1` the lab has one relay more, which the guide's own
//! commands migrate (tests/common/real_guide.rs) with the same activity, right after
//! cmfleet's pre-stage and cutover: the test prints both downtimes, and what an IMAP
//! client finds on the guide's NEW.
//!
//! Minutes long (two full deploys of OLD, two of NEW); needs root, systemd-container,
//! mmdebstrap, nftables, gcc, python3-dev and python3-venv (`./run-tests.sh` installs
//! them) and the shared chatmail bundles beside the tree.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cmfleet::lab::real::chatmail::RelaySource;
use cmfleet::lab::real::fleet::{ChatmailLab, ChatmailLabOptions};
use common::real::{require_real_lab_machine, reserve};
use common::real_guide::{Cmdeploy, GuideRelay};
use common::run::cmfleet;

/// Takes the lab down however the test ends.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = ChatmailLab::down(&self.0);
    }
}

/// `ssh -F DIR/ssh_config root@ADDR -- CMD`: its stdout; panics when it fails.
fn on(lab: &ChatmailLab, addr: &str, cmd: &str) -> String {
    let out = common::real::ssh_to(lab, addr, cmd)
        .output()
        .expect("run ssh");
    assert!(
        out.status.success(),
        "{addr}: `{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's chatmail user (tests/common/real_client.py).
fn client(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/real_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An account of relay `domain`: 9-character localparts are chatmail's default.
fn account(n: usize, domain: &str) -> (String, String) {
    (
        format!("lab{n:06}@{domain}"),
        format!("password-{n:06}-long"),
    )
}

/// What the lab's BIND serves for `domain`'s A record, asked directly.
fn served_a(lab: &ChatmailLab, domain: &str) -> String {
    let out = Command::new("dig")
        .args(["+norec", "+short", "+time=2", "+tries=2"])
        .arg(format!("@{}", lab.hosts.net().gateway()))
        .args([domain, "A"])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until the message `id` is in `user`'s INBOX on `host`, flushing the queues of
/// `senders` meanwhile (a retry after a refused connection, or a resolver's cache of the
/// old address, waits for the queue's next run otherwise). Fails if it is there twice.
fn wait_for_mail(
    lab: &ChatmailLab,
    user: &(String, String, usize),
    host: &str,
    id: &str,
    senders: &[String],
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let view = client(&["view", &user.0, host, &user.1]);
        match view.matches(id).count() {
            1 => return,
            0 => {}
            n => panic!("{}: {id} arrived {n} times: {view}", user.0),
        }
        if std::time::Instant::now() >= deadline {
            let queues: Vec<String> = senders
                .iter()
                .map(|s| format!("{s}:\n{}", on(lab, s, "postqueue -p || true")))
                .collect();
            panic!(
                "{}: {id} did not arrive on {host} in 180 s: {view}\nqueues:\n{}",
                user.0,
                queues.join("\n")
            );
        }
        for s in senders {
            on(lab, s, "postqueue -f");
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// CPU seconds (user + system) of this process's waited-for children so far: cmfleet
/// and, through it, every cmdeploy it ran.
fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// `cmfleet ARGS -i INVENTORY`, printing its wall time, the controller CPU it took
/// (cmfleet and the cmdeploy runs) and the lines with each step's duration.
fn measured(what: &str, args: &[&str], inventory: &Path) -> (Option<i32>, String) {
    let (cpu, started) = (children_cpu(), std::time::Instant::now());
    let (code, out) = cmfleet(args, inventory);
    eprintln!(
        "{what}: {:.1} s wall, {:.1} s controller CPU",
        started.elapsed().as_secs_f64(),
        children_cpu() - cpu
    );
    for line in out
        .lines()
        .filter(|l| l.contains("done in") || l.contains("down for"))
    {
        eprintln!("  {line}");
    }
    (code, out)
}

/// Waits until OLD's queue has settled: nothing in flight (incoming, active), and
/// either nothing deferred either (a deferral a busy machine made, such as a local
/// delivery that met a starting Dovecot, is retried with `postqueue -f`), or, with
/// `deferred`, the message to the other relay waiting there. No flush then: it would
/// deliver mail for `defer_transports` too, and that message would bounce.
fn settle_queue(lab: &ChatmailLab, old: &str, deferred: bool) {
    let count = "find /var/spool/postfix/incoming /var/spool/postfix/active -type f | wc -l; \
                 find /var/spool/postfix/deferred -type f | wc -l";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let cmd = if deferred {
            count.to_string()
        } else {
            format!("postqueue -f; sleep 1; {count}")
        };
        let out = on(lab, old, &cmd);
        let n: Vec<u64> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let settled = match (n.first(), n.get(1)) {
            (Some(0), Some(d)) if deferred => *d >= 1,
            (Some(0), Some(0)) => true,
            _ => false,
        };
        if settled {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{old}: the queue did not settle (in flight, deferred: {n:?}):\n{}",
            on(lab, old, "postqueue -p || true")
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// NEW's view of a mailbox (real_client.py's JSON) against OLD's at the cutover.
fn assert_same_mailbox(who: &str, at_cutover: &str, on_new: &str) {
    let old: serde_json::Value = serde_json::from_str(at_cutover).expect("OLD's view");
    let new: serde_json::Value = serde_json::from_str(on_new).expect("NEW's view");
    assert_eq!(
        old["uidvalidity"], new["uidvalidity"],
        "{who}: UIDVALIDITY changed"
    );
    let messages = |v: &serde_json::Value| -> Vec<(u64, String, String)> {
        v["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["uid"].as_u64().unwrap_or(0),
                    m["message_id"].as_str().unwrap_or("").to_string(),
                    m["flags"].to_string(),
                )
            })
            .collect()
    };
    let (before, after) = (messages(&old), messages(&new));
    let uidnext = old["uidnext"].as_u64().unwrap_or(0);
    let kept: Vec<&(u64, String, String)> =
        after.iter().filter(|(uid, _, _)| *uid < uidnext).collect();
    assert_eq!(
        kept,
        before.iter().collect::<Vec<_>>(),
        "{who}: the messages OLD had at the cutover (UIDs, Message-IDs, flags) differ on NEW\nOLD: {at_cutover}NEW: {on_new}"
    );
    let flagged = before.iter().filter(|m| m.2.contains("Flagged")).count();
    assert!(
        flagged > 0 || before.is_empty(),
        "{who}: nothing was flagged on OLD: {at_cutover}"
    );
    let mut ids: Vec<&String> = after.iter().map(|(_, id, _)| id).collect();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "{who}: a message twice on NEW: {on_new}");
}

fn active_services(lab: &ChatmailLab, addr: &str) -> BTreeSet<String> {
    on(
        lab,
        addr,
        "systemctl list-units --type=service --state=active --no-legend --plain | awk '{print $1}'",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_night_on_real_chatmail_relays() {
    require_real_lab_machine();
    // CMFLEET_REAL_RELAYS=4 for the 4-relay night (cmdeploy_runs = 4 at once).
    let relays: usize = std::env::var("CMFLEET_REAL_RELAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(2);
    let guide = std::env::var("CMFLEET_REAL_GUIDE").is_ok_and(|v| v == "1");
    let total = relays + usize::from(guide);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("lab");
    let reserved = reserve(&dir.join("real"));
    let _down = DownOnDrop(dir.clone());
    let relay = match std::env::var("CMFLEET_CHATMAIL_REF") {
        Ok(reference) => RelaySource::shared(&reference),
        Err(_) => RelaySource::shared_default(),
    }
    .expect("the shared relay bundle");
    eprintln!(
        "chatmail relay {} on {}",
        relay.reference,
        reserved.net.cidr()
    );
    let lab = ChatmailLab::up(ChatmailLabOptions {
        dir: dir.clone(),
        relays: total,
        net: reserved.net,
        relay,
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    for (host, took) in &lab.timings.deploys {
        eprintln!("deployed {host} in {took:.1?}");
    }
    let addr = |relay: usize, side: &str| {
        lab.hosts
            .host(&format!("relay{relay}-{side}"))
            .expect("host")
            .addr
            .to_string()
    };
    // Accounts and mail through the relays themselves: two accounts per relay.
    let users: Vec<(String, String, usize)> = (1..=2 * total)
        .map(|n| {
            let relay = 1 + (n - 1) / 2;
            let (a, p) = account(n, &lab.domains[relay - 1]);
            (a, p, relay)
        })
        .collect();
    for (a, p, relay) in &users {
        client(&["login", a, &addr(*relay, "old"), p]);
    }
    let send_via = |side: &str, from: usize, to: usize, subject: &str| -> String {
        let (a, p, relay) = &users[from];
        let id = client(&["send", a, &addr(*relay, side), p, &users[to].0, subject]);
        id.trim().to_string()
    };
    let send = |from: usize, to: usize, subject: &str| send_via("old", from, to, subject);
    let mark = |user: usize| {
        let (a, p, relay) = &users[user];
        client(&["mark", a, &addr(*relay, "old"), p]);
    };
    for r in 0..total {
        send(2 * r, 2 * r + 1, "before");
    }
    for r in 1..=total {
        settle_queue(&lab, &addr(r, "old"), false);
    }
    for r in 0..total {
        mark(2 * r + 1);
    }
    // To the other relay, held in OLD's deferred queue: relay 1's OLD defers its
    // transport to other domains, as Postfix does for a destination it cannot reach
    // for a while. That is default_transport's master.cf service: `smtp` up to 1.9.0,
    // `lmtp-filtermail` (filtermail's transport mode, which delivers over SMTP itself)
    // from 1.10 on.
    let old1 = addr(1, "old");
    on(
        &lab,
        &old1,
        "t=$(postconf -h default_transport) && postconf -e \"defer_transports=${t%%:*}\" && postfix reload",
    );
    let deferred_id = send(0, 2, "deferred 1");
    settle_queue(&lab, &old1, true);

    let inventory = lab.inventory();
    // Even relays are cut over with systemctl, odd ones with cmdeploy --disable-mail.
    let mut text = std::fs::read_to_string(&inventory).expect("inventory");
    for d in lab.domains.iter().skip(1).step_by(2) {
        text = text.replace(
            &format!("mail_domain = \"{d}\"\n"),
            &format!("mail_domain = \"{d}\"\ndisable_old = \"systemctl\"\n"),
        );
    }
    // The guide's relay is the last one: not cmfleet's.
    let guide_relay = guide.then(|| {
        let d = &lab.domains[total - 1];
        let start = text
            .find(&format!("[[relay]]\nmail_domain = \"{d}\""))
            .expect("the guide relay's block");
        text.truncate(start);
        let dns_dir = dir.join("dns");
        GuideRelay {
            lab_dir: &dir,
            cmdeploy: Cmdeploy::from_inventory(&inventory),
            ini: dir.join("relays").join(d).join("chatmail.ini"),
            domain: d.clone(),
            old: addr(total, "old"),
            new: addr(total, "new"),
            dns_server: lab.hosts.net().gateway().to_string(),
            key_file: dns_dir.join("tsig.key"),
        }
    });
    std::fs::write(&inventory, text).expect("write inventory");
    let services_before: Vec<BTreeSet<String>> = (1..=relays)
        .map(|r| active_services(&lab, &addr(r, "old")))
        .collect();

    let (code, out) = measured("pre-stage", &common::run::PRE_STAGE, &inventory);
    assert_eq!(code, Some(0), "pre-stage:\n{out}");
    if let Some(g) = &guide_relay {
        g.introduce();
        eprintln!("the guide's pre-stage: {:.1?}", g.pre_stage());
    }

    // Mail activity between the pre-stage and the cutover.
    for r in 0..total {
        send(2 * r + 1, 2 * r, "between");
    }
    for r in 1..=total {
        settle_queue(&lab, &addr(r, "old"), r == 1);
    }
    for r in 0..total {
        mark(2 * r);
    }
    let views_at_cutover: Vec<String> = users
        .iter()
        .map(|(a, p, r)| client(&["view", a, &addr(*r, "old"), p]))
        .collect();

    let (code, out) = measured(
        "cutover",
        &["migrate", "--yes", "--progress", "plain"],
        &inventory,
    );
    assert_eq!(code, Some(0), "cutover:\n{out}");
    // Step 5 moved every name to NEW on the lab's BIND.
    for r in 1..=relays {
        assert_eq!(
            served_a(&lab, &lab.domains[r - 1]),
            addr(r, "new"),
            "relay {r}: DNS after the cutover"
        );
    }
    // OLD's deferred message left from NEW (NEW has no `defer_transports`), and
    // arrived once.
    let news: Vec<String> = (1..=relays).map(|r| addr(r, "new")).collect();
    wait_for_mail(&lab, &users[2], &addr(2, "new"), &deferred_id, &news);
    // Each NEW signs with OLD's key: chatmail's receiving opendkim (final.lua) rejects
    // mail from another domain without a signature that verifies against the record
    // published from OLD's key, so mail from NEW arriving at the other relay is the
    // proof. Relay 1 sends to relay 2 and back.
    let one_to_two = send_via("new", 0, 2, "from NEW 1");
    let two_to_one = send_via("new", 2, 0, "from NEW 2");
    wait_for_mail(&lab, &users[2], &addr(2, "new"), &one_to_two, &news);
    wait_for_mail(&lab, &users[0], &addr(1, "new"), &two_to_one, &news);
    // An IMAP client sees on NEW what it saw on OLD at the cutover: the same
    // UIDVALIDITY, every message under its UID with its flags, nothing twice. Mail has
    // arrived since, under UIDs from OLD's UIDNEXT on.
    for (i, (a, p, r)) in users.iter().enumerate().filter(|(_, u)| u.2 <= relays) {
        let on_new = client(&["view", a, &addr(*r, "new"), p]);
        assert_same_mailbox(a, &views_at_cutover[i], &on_new);
    }
    // The guide's relay, now that cmfleet's are judged.
    if let Some(g) = &guide_relay {
        let down = g.cutover();
        eprintln!("the guide's downtime (start of step 3 to end of step 6): {down:.1?}");
        // What its users find (printed, not judged: the guide is not under test).
        for (i, (a, p, _)) in users.iter().enumerate().filter(|(_, u)| u.2 == total) {
            let out = Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/real_client.py"))
                .args(["view", a, &g.new, p])
                .output()
                .expect("run the client");
            let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let same = seen == views_at_cutover[i].trim();
            eprintln!(
                "the guide's NEW, {a}: {}",
                if !out.status.success() {
                    format!(
                        "IMAP fails: {}",
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    )
                } else if same {
                    "the same mailbox as on OLD at the cutover".to_string()
                } else {
                    format!("a different mailbox: {seen}")
                }
            );
        }
    }

    for r in 1..=relays {
        let (old, new) = (addr(r, "old"), addr(r, "new"));
        let domain = &lab.domains[r - 1];
        // Every unit OLD ran before the night runs on NEW.
        let after = active_services(&lab, &new);
        let missing: Vec<&String> = services_before[r - 1].difference(&after).collect();
        assert!(
            missing.is_empty(),
            "relay {r}: not active on NEW: {missing:?}"
        );
        // NEW signs with OLD's key, loaded after the copy.
        let key = "sha256sum < /etc/dkimkeys/opendkim.private";
        assert_eq!(
            on(&lab, &old, key),
            on(&lab, &new, key),
            "relay {r}: DKIM key"
        );
        let loaded = on(
            &lab,
            &new,
            "echo $(( $(date +%s -d \"$(systemctl show -p ActiveEnterTimestamp --value opendkim)\") - $(stat -c %Z /etc/dkimkeys/opendkim.private) ))",
        );
        let after_copy: i64 = loaded.trim().parse().expect("seconds");
        assert!(
            after_copy >= 0,
            "relay {r}: opendkim on NEW runs with a key older than OLD's copy ({after_copy} s)"
        );
        // Its own website.
        let page = on(&lab, &new, "cat /var/www/html/index.html");
        assert!(
            page.contains(domain.as_str()),
            "relay {r}: NEW's page does not name {domain}"
        );
        for other in lab.domains.iter().filter(|d| *d != domain) {
            assert!(
                !page.contains(other.as_str()),
                "relay {r}: NEW serves {other}'s page"
            );
        }
        // OLD stays frozen.
        let states = on(&lab, &old, "systemctl is-active postfix dovecot || true");
        assert!(
            states.lines().all(|l| l.trim() != "active"),
            "relay {r}: OLD still runs: {states}"
        );
        assert!(!cmfleet::lab::port_accepts(old.parse().expect("addr"), 25));
    }
    // One rollback: relay 2 (cut over with systemctl) goes back to OLD, NEW's mail is
    // stopped by cmdeploy, and OLD's users find their mailboxes as they left them.
    let d2 = lab.domains[1].clone();
    let (code, out) = measured(
        "rollback",
        &["rollback", "--force", "--limit", &d2],
        &inventory,
    );
    assert_eq!(code, Some(0), "rollback:\n{out}");
    let (old2, new2) = (addr(2, "old"), addr(2, "new"));
    assert_eq!(served_a(&lab, &d2), old2, "DNS after the rollback");
    assert!(
        cmfleet::lab::port_accepts(old2.parse().expect("addr"), 25),
        "OLD serves again"
    );
    assert!(
        !cmfleet::lab::port_accepts(new2.parse().expect("addr"), 25),
        "NEW stopped"
    );
    for (i, (a, p, r)) in users.iter().enumerate().filter(|(_, u)| u.2 == 2) {
        let on_old = client(&["view", a, &addr(*r, "old"), p]);
        assert_eq!(
            on_old, views_at_cutover[i],
            "{a}: the mailbox on OLD after the rollback"
        );
    }
    eprintln!("views at the cutover: {views_at_cutover:#?}");
}
