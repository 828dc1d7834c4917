//! The lab's real mail system, judged by a mail client: SMTP in, IMAP out, the stand-in
//! cmdeploy stopping and starting Postfix and Dovecot, and a migration night after which
//! NEW serves every mailbox exactly as OLD did (UIDVALIDITY, UIDNEXT, UIDs, flags,
//! content), delivers OLD's deferred queue once, and receives the mail that was sent
//! while the relay was down.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmfleet::lab::{later_addr, Account, Lab, DEFERRED_MESSAGES, LATER_DOMAIN, LATER_PORT};
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
/// records the RCPT TO addresses of every message it accepts. It stops listening when
/// dropped: a later lab on the same addresses must find the destination down again.
struct Sink {
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn smtp_sink(addr: Ipv4Addr, port: u16) -> Sink {
    let listener = TcpListener::bind((addr, port)).expect("bind the sink");
    listener.set_nonblocking(true).expect("nonblocking");
    let got = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, stopped) = (got.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
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
                        rcpts.push(line[8..].trim().trim_matches(['<', '>']).to_string());
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
            });
        }
    });
    Sink {
        got,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn a_migration_night_judged_by_a_mail_client() {
    // relay1 migrates; relay2 stays and sends it mail while it is down.
    let lab = TestLab::start(2);
    let (r1, r2) = (lab.relay(1).unwrap(), lab.relay(2).unwrap());
    let accounts = relay_accounts(&lab, 1);
    let a = &accounts[0];
    let domain = r1.mail_domain.clone();
    let inventory = lab.inventory();
    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "migrate",
            "--yes",
            "--progress",
            "plain",
            "--limit",
            &domain,
        ];
        args.extend_from_slice(extra);
        let (code, out) = cmfleet(&args, &inventory);
        assert_eq!(code, Some(0), "{out}");
    };

    // Pre-stage (steps 1-2), then the relay lives on: new mail, a flag change.
    migrate(&["--until-step", "2"]);
    let before = inbox(&lab, r1.old.addr, a).messages.len();
    lab.send_mail(
        r1.old.addr,
        25,
        "late@example.org",
        &a.address,
        "after pre-stage",
    )
    .unwrap();
    wait_until(20, "mail after the pre-stage arrives", || {
        inbox(&lab, r1.old.addr, a).messages.len() == before + 1
    });
    lab.flag_newest(r1.old.addr, &accounts[1], "(\\Flagged)")
        .unwrap();

    // What a client sees on OLD just before the cutover: the reference for NEW.
    let reference = lab.client_view(r1.old.addr, &accounts).unwrap();
    assert_eq!(reference.len(), accounts.len());
    let ref_inbox = reference[&a.address]["INBOX"].clone();
    assert!(ref_inbox.messages.len() > before, "{ref_inbox:?}");

    // Step 3: OLD stops taking mail. relay2 sends to relay1 anyway: its Postfix defers.
    migrate(&["--until-step", "3"]);
    assert_eq!(Lab::mail_ports_open(r1.old.addr), [false; 5]);
    let sender = &relay_accounts(&lab, 2)[0];
    lab.send_mail(
        r2.old.addr,
        25,
        &sender.address,
        &a.address,
        "sent while down",
    )
    .unwrap();
    wait_until(30, "relay2 defers the mail for relay1", || {
        deferred_count(&r2.old) == DEFERRED_MESSAGES + 1
    });

    // Steps 4-6. NEW serves every mailbox exactly as OLD did at the cutover:
    // UIDVALIDITY, UIDNEXT, every UID with its flags and content.
    migrate(&[]);
    let on_new = lab.client_view(r1.new.addr, &accounts).unwrap();
    assert_eq!(on_new, reference, "NEW differs from OLD at the cutover");

    // Other mail servers learn the new address (the DNS switch); relay2 retries.
    // `postfix reload` is asynchronous: a retry right after it may still take the old
    // route (and then wait an hour), so relay2 retries until the mail is in.
    lab.route_mail(&domain, r1.new.addr).unwrap();
    ok(lab
        .ssh(r2.old.addr, &[])
        .arg("postfix reload >/dev/null 2>&1"));
    let mut last_flush: Option<Instant> = None;
    wait_until(
        30,
        "the mail sent during the downtime arrives on NEW",
        || {
            if last_flush.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                ok(lab.ssh(r2.old.addr, &[]).arg("postqueue -f"));
                last_flush = Some(Instant::now());
            }
            inbox(&lab, r1.new.addr, a).messages.len() > ref_inbox.messages.len()
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = inbox(&lab, r1.new.addr, a);
    assert_eq!(
        after.messages.len(),
        ref_inbox.messages.len() + 1,
        "exactly once"
    );
    assert_eq!(after.uidvalidity, ref_inbox.uidvalidity);
    assert_eq!(after.messages.last().map(|m| m.0), Some(ref_inbox.uidnext));
    assert_eq!(
        after.messages[..ref_inbox.messages.len()],
        ref_inbox.messages[..]
    );

    // The destination that was down comes back: OLD's deferred mail, taken over by
    // NEW's Postfix, is delivered from NEW, each message once.
    let sink = smtp_sink(later_addr(lab.subnet()), LATER_PORT);
    ok(lab.ssh(r1.new.addr, &[]).arg("postqueue -f"));
    wait_until(30, "OLD's deferred mail is delivered from NEW", || {
        sink.got.lock().expect("sink").len() >= DEFERRED_MESSAGES
    });
    wait_until(10, "NEW's queue empties", || deferred_count(&r1.new) == 0);
    std::thread::sleep(Duration::from_secs(1));
    let mut got = sink.got.lock().expect("sink").clone();
    drop(sink);
    got.sort();
    let want: Vec<String> = (0..DEFERRED_MESSAGES)
        .map(|i| format!("friend{i}@{LATER_DOMAIN}"))
        .collect();
    assert_eq!(got, want, "each deferred message delivered once");
    // OLD keeps its frozen copy and stays down: nothing is sent twice.
    assert_eq!(deferred_count(&r1.old), DEFERRED_MESSAGES);
    assert_eq!(Lab::mail_ports_open(r1.old.addr), [false; 5]);
}
