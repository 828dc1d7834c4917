//! The real-chatmail lab's pass-through filtermail (`src/lab/assets/filtermail-passthrough`,
//! what a 1.12.0 lab relay runs instead of the Rust filtermail), run here as chatmail's
//! units run it (`filtermail-passthrough CHATMAIL_INI MODE`) against a stand-in postfix:
//! `outgoing` passes a transaction to the reinject port command by command, unchanged
//! (ESMTP parameters and dot-stuffing included), and passes postfix's refusals back;
//! `transport` answers each LMTP recipient, 4xx when its domain cannot be reached.
//! Needs /usr/bin/python3 (its shebang), as on a chatmail relay.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stand-in, killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `filtermail-passthrough INI MODE` with the ports of `ini`.
fn start(dir: &Path, ini: &str, mode: &str) -> Running {
    let path = dir.join("chatmail.ini");
    std::fs::write(&path, ini).expect("write the ini");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab/assets/filtermail-passthrough");
    Running(
        Command::new(script)
            .arg(&path)
            .arg(mode)
            .stdin(Stdio::null())
            .spawn()
            .expect("run filtermail-passthrough (needs /usr/bin/python3)"),
    )
}

/// A connection to 127.0.0.1:`port`, waiting for the stand-in to listen.
fn connect(port: u16) -> (BufReader<TcpStream>, TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            return (BufReader::new(s.try_clone().unwrap()), s);
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One (possibly multi-line) reply: its last line.
fn reply(r: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("read a reply");
        assert!(line.len() >= 4, "short reply {line:?}");
        if line.as_bytes()[3] == b' ' {
            return line.trim_end().to_string();
        }
    }
}

fn say(w: &mut TcpStream, line: &str) {
    w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
}

/// A stand-in postfix reinject port for one session: what it was sent, refusing
/// recipients whose address contains "refuse".
fn postfix(listener: TcpListener) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut seen = Vec::new();
        say(&mut w, "220 postfix");
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let l = line.trim_end().to_string();
            line.clear();
            let verb = l.get(..4).unwrap_or("").to_ascii_uppercase();
            seen.push(l.clone());
            match verb.as_str() {
                "EHLO" => say(&mut w, "250-postfix\r\n250 8BITMIME"),
                "RCPT" if l.contains("refuse") => say(&mut w, "554 5.7.1 refused here"),
                "DATA" => {
                    say(&mut w, "354 go on");
                    loop {
                        r.read_line(&mut line).unwrap();
                        let d = line.trim_end().to_string();
                        line.clear();
                        if d == "." {
                            break;
                        }
                        seen.push(format!("data: {d}"));
                    }
                    say(&mut w, "250 2.0.0 queued as ABC");
                }
                "QUIT" => {
                    say(&mut w, "221 bye");
                    break;
                }
                _ => say(&mut w, "250 ok"),
            }
        }
        seen
    })
}

#[test]
fn outgoing_passes_every_command_and_the_message_unchanged_to_postfix() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let reinject = upstream.local_addr().unwrap().port();
    let listen = free_port();
    let postfix = postfix(upstream);
    let _filter = start(
        dir.path(),
        &format!("[params]\nmail_domain = _x.lab.test\nfiltermail_smtp_port = {listen}\npostfix_reinject_port = {reinject}\n"),
        "outgoing",
    );
    let (mut r, mut w) = connect(listen);
    assert!(reply(&mut r).starts_with("220 "));
    say(&mut w, "EHLO postfix.proxy");
    assert!(reply(&mut r).starts_with("250 "));
    for (cmd, want) in [
        ("MAIL FROM:<a@_x.lab.test> SIZE=120 BODY=8BITMIME", "250"),
        ("RCPT TO:<b@_y.lab.test>", "250"),
        ("RCPT TO:<refuse@_y.lab.test>", "554 5.7.1 refused here"),
        ("DATA", "354"),
    ] {
        say(&mut w, cmd);
        let got = reply(&mut r);
        assert!(got.starts_with(want), "{cmd}: {got}");
    }
    for line in ["Subject: hi", "", "..a line that starts with a dot", "body"] {
        say(&mut w, line);
    }
    say(&mut w, ".");
    assert_eq!(reply(&mut r), "250 2.0.0 queued as ABC");
    say(&mut w, "QUIT");
    assert!(reply(&mut r).starts_with("221"));
    let seen = postfix.join().unwrap();
    assert_eq!(
        seen[1..],
        [
            "MAIL FROM:<a@_x.lab.test> SIZE=120 BODY=8BITMIME",
            "RCPT TO:<b@_y.lab.test>",
            "RCPT TO:<refuse@_y.lab.test>",
            "DATA",
            "data: Subject: hi",
            "data: ",
            "data: ..a line that starts with a dot",
            "data: body",
            "quit",
        ],
        "{seen:?}"
    );
}

#[test]
fn transport_answers_each_recipient_and_defers_what_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let _filter = start(
        dir.path(),
        &format!(
            "[params]\nmail_domain = _x.lab.test\nfiltermail_lmtp_port_transport = {listen}\n"
        ),
        "transport",
    );
    let (mut r, mut w) = connect(listen);
    assert!(reply(&mut r).starts_with("220 "));
    say(&mut w, "LHLO postfix");
    assert!(reply(&mut r).starts_with("250 "));
    say(&mut w, "MAIL FROM:<a@_x.lab.test> BODY=8BITMIME");
    assert!(reply(&mut r).starts_with("250 "));
    for to in ["b@nowhere.invalid", "c@nowhere.invalid"] {
        say(&mut w, &format!("RCPT TO:<{to}>"));
        assert!(reply(&mut r).starts_with("250 "));
    }
    say(&mut w, "DATA");
    assert!(reply(&mut r).starts_with("354"));
    say(&mut w, "Subject: hi\r\n\r\nbody\r\n.");
    // LMTP: one answer per recipient, temporary so postfix keeps the mail deferred.
    for _ in 0..2 {
        let got = reply(&mut r);
        assert!(got.starts_with("451 4.4.1 "), "{got}");
    }
    say(&mut w, "QUIT");
    assert!(reply(&mut r).starts_with("221"));
}
