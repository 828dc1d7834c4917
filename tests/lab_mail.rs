//! The lab's real mail system, judged by a mail client: SMTP in, IMAP out, the stand-in
//! cmdeploy stopping and starting Postfix and Dovecot, and a migration night after which
//! NEW serves every mailbox exactly as OLD did (UIDVALIDITY, UIDNEXT, UIDs, flags,
//! content), delivers OLD's deferred queue once, and receives the mail that was sent
//! while the relay was down.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmfleet::host::inspect::{RelayFindings, Status};
use cmfleet::lab::{later_addr, Account, Lab, DEFERRED_MESSAGES, LATER_DOMAIN, LATER_PORT};
use cmfleet::model::inventory::{self, Inventory};
use common::lab::{ok, TestLab};
use common::run::cmfleet;

/// Polls `pred` every 100 ms for up to `secs`, then fails with `what`.
fn wait_until(secs: u64, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The INBOX of `account` as a client sees it on `addr`.
fn inbox(lab: &Lab, addr: Ipv4Addr, account: &Account) -> cmfleet::lab::MailboxView {
    let view = lab
        .client_view(addr, std::slice::from_ref(account))
        .expect("IMAP view");
    view[&account.address]["INBOX"].clone()
}

fn relay_accounts(lab: &Lab, index: usize) -> Vec<Account> {
    let relay = lab.relay(index).expect("relay");
    lab.accounts()
        .into_iter()
        .filter(|a| a.old == relay.old.addr)
        .collect()
}

/// Deferred queue files on a host.
fn deferred_count(host: &cmfleet::lab::LabHost) -> usize {
    walkdir(&host.path("/var/spool/postfix/deferred"))
}

fn walkdir(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walkdir(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn smtp_to_old_is_readable_over_imap_and_disable_mail_closes_every_port() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let accounts = relay_accounts(&lab, 1);
    // accounts.txt lists every account with its password and both hosts.
    let listed = std::fs::read_to_string(lab.accounts_file()).unwrap();
    let first = &accounts[0];
    assert_eq!(listed.lines().count(), accounts.len());
    assert_eq!(
        listed.lines().next().unwrap(),
        format!(
            "{} {} {} {}",
            first.address, first.password, relay.old.addr, relay.new.addr
        )
    );
    // lab up delivered over SMTP and a client read one message and flagged another.
    let seeded = inbox(&lab, relay.old.addr, first);
    let flags: Vec<&Vec<String>> = seeded.messages.iter().map(|m| &m.1).collect();
    assert!(
        flags.iter().any(|f| f.contains(&"\\Flagged".to_string())),
        "{flags:?}"
    );
    assert!(
        flags.iter().any(|f| f.contains(&"\\Seen".to_string())),
        "{flags:?}"
    );
    // Mail sent to OLD now arrives in the INBOX, under the next UID.
    lab.send_mail(
        relay.old.addr,
        25,
        "someone@example.org",
        &first.address,
        "hello over smtp",
    )
    .unwrap();
    wait_until(20, "the message arrives over LMTP", || {
        inbox(&lab, relay.old.addr, first).messages.len() == seeded.messages.len() + 1
    });
    let after = inbox(&lab, relay.old.addr, first);
    assert_eq!(after.uidvalidity, seeded.uidvalidity);
    assert_eq!(after.messages.last().unwrap().0, seeded.uidnext);
    assert_eq!(after.uidnext, seeded.uidnext + 1);
    // --disable-mail stops the real daemons: every mail port closes.
    assert_eq!(Lab::mail_ports_open(relay.old.addr), [true; 5]);
    let ini = relay.config.to_str().unwrap().to_string();
    ok(std::process::Command::new(lab.cmdeploy())
        .current_dir(lab.checkout())
        .env_remove("CMDEPLOY_STAGES")
        .args(["run", "--disable-mail", "--config", &ini])
        .args(["--ssh-host", &relay.old.addr.to_string()]));
    assert_eq!(Lab::mail_ports_open(relay.old.addr), [false; 5]);
    let st = lab.host_state(relay.old.addr).unwrap();
    assert_eq!((st.postfix_pid, st.dovecot_pid), (None, None), "{st:?}");
}

/// A minimal SMTP server standing in for the down destination once it comes back:
/// records (client address, RCPT TO address) of every message it accepts. It stops
/// listening when dropped: a later lab on the same addresses must find the destination
/// down again.
struct Sink {
    got: Arc<Mutex<Vec<(Ipv4Addr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One SMTP session: accepts every message, records its recipients.
fn smtp_session(conn: TcpStream, seen: Arc<Mutex<Vec<(Ipv4Addr, String)>>>) {
    let peer = match conn.peer_addr() {
        Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let _ = w.write_all(b"220 sink ESMTP\r\n");
    let (mut rcpts, mut line) = (Vec::new(), String::new());
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let up = line.to_ascii_uppercase();
        let reply: &[u8] = if up.starts_with("EHLO") || up.starts_with("HELO") {
            b"250 sink\r\n"
        } else if up.starts_with("RCPT TO:") {
            let rcpt = line[8..].trim().trim_matches(['<', '>']).to_string();
            rcpts.push((peer, rcpt));
            b"250 ok\r\n"
        } else if up.starts_with("DATA") {
            let _ = w.write_all(b"354 go\r\n");
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
            }
            seen.lock().expect("sink").append(&mut rcpts);
            b"250 queued\r\n"
        } else if up.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        let _ = w.write_all(reply);
    }
}

fn smtp_sink(addr: Ipv4Addr, port: u16) -> Sink {
    let listener = TcpListener::bind((addr, port)).expect("bind the sink");
    listener.set_nonblocking(true).expect("nonblocking");
    let got = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, stopped) = (got.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            let Ok((conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let seen = seen.clone();
            std::thread::spawn(move || smtp_session(conn, seen));
        }
    });
    Sink {
        got,
        stop,
        thread: Some(thread),
    }
}

/// Every queue file on `host` is named after its inode, as `postsuper -s` leaves it
/// (Postfix's short queue IDs: 5 hex digits of microseconds, then the inode number
/// in hex). A queue file copied from OLD carries OLD's inode in its name until then.
fn queue_names_match_inodes(host: &cmfleet::lab::LabHost) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut wrong = Vec::new();
    for queue in ["incoming", "active", "deferred", "hold"] {
        let mut stack = vec![host.path(&format!("/var/spool/postfix/{queue}"))];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let meta = e.metadata().expect("stat a queue file");
                let name = e.file_name().to_string_lossy().into_owned();
                if meta.is_dir() {
                    stack.push(e.path());
                } else if name.get(5..).and_then(|i| u64::from_str_radix(i, 16).ok())
                    != Some(meta.ino())
                {
                    wrong.push(format!("{queue}/{name} (inode {:X})", meta.ino()));
                }
            }
        }
    }
    wrong
}

fn run_verify(inventory: &std::path::Path, limit: &str) -> Vec<RelayFindings> {
    let inv = Inventory::load(inventory).expect("inventory");
    let relays = inventory::select(&inv, Some(limit)).expect("select");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(cmfleet::commands::verify::verify(&inv, &relays))
        .expect("verify runs")
}

/// The reason of `relay`'s finding `check`, which must have `status`.
fn finding(results: &[RelayFindings], relay: &str, check: &str, status: Status) -> String {
    let r = results
        .iter()
        .find(|r| r.relay == relay)
        .expect("relay verified");
    let f = r
        .findings
        .iter()
        .find(|f| f.check == check)
        .expect("finding");
    assert_eq!(f.status, status, "{relay}: {f:?}");
    f.reason.clone()
}

#[test]
fn a_migration_night_judged_by_a_mail_client() {
    // relays 1-3 migrate; relay 4 stays and sends them mail while they are down.
    let lab = TestLab::start(4);
    let moving: Vec<_> = (1..=3).map(|i| lab.relay(i).unwrap()).collect();
    let r4 = lab.relay(4).unwrap();
    let accounts: Vec<Vec<Account>> = (1..=3).map(|i| relay_accounts(&lab, i)).collect();
    let domains: Vec<String> = moving.iter().map(|r| r.mail_domain.clone()).collect();
    let limit = domains.join(",");
    let inventory = lab.inventory();
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate", "--yes", "--progress", "plain", "--limit", &limit];
        args.extend_from_slice(extra);
        let (code, out) = cmfleet(&args, &inventory);
        assert_eq!(code, Some(0), "{out}");
    };

    // Pre-stage (steps 1-2), then the relays live on: new mail, a flag change.
    migrate(&["--until-step", "2"]);
    let mut before = Vec::new();
    for (r, acc) in moving.iter().zip(&accounts) {
        let n = inbox(&lab, r.old.addr, &acc[0]).messages.len();
        lab.send_mail(
            r.old.addr,
            25,
            "late@example.org",
            &acc[0].address,
            "after pre-stage",
        )
        .unwrap();
        lab.flag_newest(r.old.addr, &acc[1], "(\\Flagged)").unwrap();
        before.push(n);
    }
    for ((r, acc), n) in moving.iter().zip(&accounts).zip(&before) {
        wait_until(20, "mail after the pre-stage arrives", || {
            inbox(&lab, r.old.addr, &acc[0]).messages.len() == n + 1
        });
    }

    // What a client sees on OLD just before the cutover: the reference for NEW.
    let reference: Vec<_> = moving
        .iter()
        .zip(&accounts)
        .map(|(r, acc)| lab.client_view(r.old.addr, acc).unwrap())
        .collect();
    let ref_inboxes: Vec<_> = reference
        .iter()
        .zip(&accounts)
        .map(|(view, acc)| view[&acc[0].address]["INBOX"].clone())
        .collect();

    // Step 3: OLD stops taking mail. relay4 sends to each anyway: its Postfix defers.
    migrate(&["--until-step", "3"]);
    let sender = &relay_accounts(&lab, 4)[0];
    for (r, acc) in moving.iter().zip(&accounts) {
        assert_eq!(Lab::mail_ports_open(r.old.addr), [false; 5]);
        lab.send_mail(
            r4.old.addr,
            25,
            &sender.address,
            &acc[0].address,
            "sent while down",
        )
        .unwrap();
    }
    wait_until(
        30,
        "relay4 defers the mail for the relays that are down",
        || deferred_count(&r4.old) == DEFERRED_MESSAGES + moving.len(),
    );

    // Step 4: NEW holds OLD's queue under names of its own inodes (`postsuper -s`).
    migrate(&["--until-step", "4"]);
    for r in &moving {
        assert_eq!(deferred_count(&r.new), DEFERRED_MESSAGES);
        assert_eq!(queue_names_match_inodes(&r.new), Vec::<String>::new());
    }

    // Steps 5-6. NEW serves every mailbox exactly as OLD did at the cutover:
    // UIDVALIDITY, UIDNEXT, every UID with its flags and content.
    migrate(&[]);
    for ((r, acc), want) in moving.iter().zip(&accounts).zip(&reference) {
        let on_new = lab.client_view(r.new.addr, acc).unwrap();
        assert_eq!(&on_new, want, "NEW differs from OLD at the cutover");
    }
    // verify says so in numbers, from step 4's record; OLD's queue waits on NEW.
    let results = run_verify(&inventory, &limit);
    for d in &domains {
        let uids = finding(&results, d, "client view", Status::Pass);
        assert!(
            uids.contains("keep OLD's UIDVALIDITY and UIDNEXT (0 advanced"),
            "{uids}"
        );
        assert!(
            uids.contains("reference: step 4's cutover record"),
            "{uids}"
        );
        let queue = finding(&results, d, "queue", Status::Pass);
        let want = format!("{DEFERRED_MESSAGES} message(s); 0 delivered from NEW, {DEFERRED_MESSAGES} still queued on NEW");
        assert!(queue.contains(&want), "{queue}");
    }

    // Other mail servers learn the new addresses (the DNS switch); relay4 retries.
    // `postfix reload` is asynchronous: a retry right after it may still take the old
    // route (and then wait an hour), so relay4 retries until the mail is in.
    let moved: Vec<(&str, Ipv4Addr)> = moving
        .iter()
        .map(|r| (r.mail_domain.as_str(), r.new.addr))
        .collect();
    lab.route_mail(&moved).unwrap();
    ok(lab
        .ssh(r4.old.addr, &[])
        .arg("postfix reload >/dev/null 2>&1"));
    let mut last_flush: Option<Instant> = None;
    let arrived = |i: usize| {
        inbox(&lab, moving[i].new.addr, &accounts[i][0])
            .messages
            .len()
            > ref_inboxes[i].messages.len()
    };
    wait_until(
        30,
        "the mail sent during the downtime arrives on NEW",
        || {
            if last_flush.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                ok(lab.ssh(r4.old.addr, &[]).arg("postqueue -f"));
                last_flush = Some(Instant::now());
            }
            (0..moving.len()).all(arrived)
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    for (i, r) in moving.iter().enumerate() {
        let (after, was) = (inbox(&lab, r.new.addr, &accounts[i][0]), &ref_inboxes[i]);
        assert_eq!(after.messages.len(), was.messages.len() + 1, "exactly once");
        assert_eq!(after.uidvalidity, was.uidvalidity);
        assert_eq!(after.messages.last().map(|m| m.0), Some(was.uidnext));
        assert_eq!(after.messages[..was.messages.len()], was.messages[..]);
    }

    // The destination that was down comes back: OLD's deferred mail, taken over by
    // NEW's Postfix, is delivered from NEW, each message once.
    let sink = smtp_sink(later_addr(lab.subnet()), LATER_PORT);
    for r in &moving {
        ok(lab.ssh(r.new.addr, &[]).arg("postqueue -f"));
    }
    let want_total = DEFERRED_MESSAGES * moving.len();
    wait_until(30, "OLD's deferred mail is delivered from NEW", || {
        sink.got.lock().expect("sink").len() >= want_total
    });
    for r in &moving {
        wait_until(10, "NEW's queue empties", || deferred_count(&r.new) == 0);
    }
    std::thread::sleep(Duration::from_secs(1));
    let got = sink.got.lock().expect("sink").clone();
    drop(sink);
    let want: Vec<String> = (0..DEFERRED_MESSAGES)
        .map(|i| format!("friend{i}@{LATER_DOMAIN}"))
        .collect();
    for r in &moving {
        let mut from_new: Vec<String> = got
            .iter()
            .filter(|(peer, _)| *peer == r.new.addr)
            .map(|(_, rcpt)| rcpt.clone())
            .collect();
        from_new.sort();
        assert_eq!(
            from_new, want,
            "each deferred message delivered once, from NEW"
        );
        // OLD keeps its frozen copy and stays down: nothing is sent twice.
        assert_eq!(deferred_count(&r.old), DEFERRED_MESSAGES);
        assert_eq!(Lab::mail_ports_open(r.old.addr), [false; 5]);
    }
    assert_eq!(got.len(), want_total, "{got:?}");

    // verify now counts the queue as delivered from NEW (NEW's mail log says so), and
    // the downtime mail as UIDNEXT advanced on one mailbox per relay.
    let results = run_verify(&inventory, &limit);
    for d in &domains {
        let queue = finding(&results, d, "queue", Status::Pass);
        let want = format!("{DEFERRED_MESSAGES} message(s); {DEFERRED_MESSAGES} delivered from NEW, 0 still queued");
        assert!(queue.contains(&want), "{queue}");
        let uids = finding(&results, d, "client view", Status::Pass);
        assert!(uids.contains("(1 advanced since by new mail"), "{uids}");
    }
}

#[test]
fn verify_names_a_mailbox_whose_uids_a_client_would_see_change() {
    let lab = TestLab::start(1);
    let relay = lab.relay(1).unwrap();
    let accounts = relay_accounts(&lab, 1);
    let domain = relay.mail_domain.clone();
    let (code, out) = cmfleet(
        &["migrate", "--yes", "--progress", "plain"],
        &lab.inventory(),
    );
    assert_eq!(code, Some(0), "{out}");
    let results = run_verify(&lab.inventory(), &domain);
    finding(&results, &domain, "client view", Status::Pass);

    // Dovecot on NEW loses the first account's uidlist (say, a copy that left it out)
    // and builds a new one when the client next looks: same messages, new UIDs.
    let a = &accounts[0];
    let uidlist = relay.new.path(&format!(
        "/home/vmail/mail/{domain}/{}/dovecot-uidlist",
        a.address
    ));
    std::fs::remove_file(&uidlist).expect("remove NEW's uidlist");
    inbox(&lab, relay.new.addr, a);
    let results = run_verify(&lab.inventory(), &domain);
    let why = finding(&results, &domain, "client view", Status::Fail);
    let mailbox = format!("{}/INBOX: ", a.address);
    assert!(why.contains(&mailbox), "{why}");
    assert!(why.contains("message(s) with another UID on NEW"), "{why}");
}
