//! Delta Chat judges a migration night on real chatmail relays (issue 26).
//!
//! The lab is the real-chatmail lab (tests/real_chatmail_lab.rs): Debian 12 containers,
//! OLD deployed by chatmail's own cmdeploy, names served by the lab's BIND, which step 5
//! updates with RFC 2136. The users are Delta Chat accounts (the core of
//! `deltachat-rpc-server` 2.65.0, tests/common/deltachat_client.py) in a network
//! namespace whose resolver is that BIND, so they find their relays by DNS, before and
//! after the switch, as a phone does.
//!
//! The night: every account is made by its first login; accounts make contact by
//! SecureJoin within their relay and across relays, and exchange messages, some read.
//! Then the pre-stage, more messages (some read), and the cutover, one relay at a time
//! (`cutovers = 1`), while accounts on relays that are up keep sending to accounts on
//! every relay, the one that is down included.
//!
//! Judged from Delta Chat's own view, per account: every message sent to it, before,
//! between or during the downtime, is in its chat exactly once; nothing it had read
//! comes back as unread; every message shows the padlock and none has an error; every
//! contact keeps its key (fingerprint); and the account's connection history shows it
//! reached its relay at NEW's address. Both views, before the pre-stage and after the
//! night, are written to `deltachat-night.json` in Cargo's test tmp dir
//! (`target/tmp/` by default).
//!
//! `CMFLEET_DC_RELAYS` (default 3) and `CMFLEET_DC_ACCOUNTS` per relay (default 4).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmfleet::lab::real::chatmail::RelaySource;
use cmfleet::lab::real::fleet::{ChatmailLab, ChatmailLabOptions};
use common::deltachat::{venv, ClientNet, Clients};
use common::real::{require_real_lab_machine, reserve};
use common::run::cmfleet;
use serde_json::{json, Value};

struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = ChatmailLab::down(&self.0);
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `postqueue -f` on every relay host that runs Postfix: mail to a relay that was down
/// waits for the queue's next run otherwise (minutes).
fn flush_queues(lab: &ChatmailLab) {
    for h in lab.hosts.hosts() {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(lab.dir.join("ssh_config"))
            .arg(format!("root@{}", h.addr))
            .arg("--")
            .arg("systemctl is-active --quiet postfix && postqueue -f || true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One account: its name in the client, its relay (0-based), address and password.
struct User {
    name: String,
    relay: usize,
    addr: String,
    password: String,
}

/// Texts each account should hold, by recipient name.
type Expected = BTreeMap<String, Vec<String>>;

fn send(c: &mut Clients, expected: &mut Expected, from: &User, to: &User, text: String) {
    c.send(&from.name, &to.name, &text);
    expected
        .entry(to.name.clone())
        .or_default()
        .push(text.clone());
    expected.entry(from.name.clone()).or_default().push(text);
}

/// Waits until every account holds what it should, flushing the relays' queues.
fn wait_all(
    c: &mut Clients,
    lab: &ChatmailLab,
    users: &[User],
    expected: &Expected,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    for u in users {
        let texts = expected.get(&u.name).cloned().unwrap_or_default();
        loop {
            let missing = c.wait(&u.name, &texts, 5);
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never arrived: {missing:?}\n{}",
                u.name,
                c.view(&u.name)
            );
            flush_queues(lab);
        }
    }
}

/// Every text's count in the account's chats, and the problems Delta Chat shows.
fn judge(
    u: &User,
    view: &Value,
    expected: &[String],
    read_before: &[String],
    keys_before: &Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for chat in view["chats"].as_array().into_iter().flatten() {
        for m in chat["messages"].as_array().into_iter().flatten() {
            if m["info"].as_bool() == Some(true) {
                continue;
            }
            let text = m["text"].as_str().unwrap_or("").to_string();
            if m["padlock"].as_bool() != Some(true) {
                problems.push(format!("{}: {text:?} shows no padlock", u.name));
            }
            if !m["error"].is_null() {
                problems.push(format!("{}: {text:?} has an error: {}", u.name, m["error"]));
            }
            // InFresh (10) or InNoticed (13): shown as new again.
            if read_before.contains(&text) && m["state"].as_u64().is_some_and(|s| s < 16) {
                problems.push(format!(
                    "{}: {text:?}, read before, is unread again (state {})",
                    u.name, m["state"]
                ));
            }
            *counts.entry(text).or_default() += 1;
        }
    }
    for t in expected {
        match counts.get(t).copied().unwrap_or(0) {
            1 => {}
            0 => problems.push(format!("{}: {t:?} is missing", u.name)),
            n => problems.push(format!("{}: {t:?} is shown {n} times", u.name)),
        }
    }
    let keys_after = keys(view);
    if &keys_after != keys_before {
        problems.push(format!(
            "{}: contacts' keys changed: {keys_before} -> {keys_after}",
            u.name
        ));
    }
    problems
}

/// Contact address -> fingerprint, over the account's chats.
fn keys(view: &Value) -> Value {
    let mut map = serde_json::Map::new();
    for chat in view["chats"].as_array().into_iter().flatten() {
        for c in chat["contacts"].as_array().into_iter().flatten() {
            if let Some(addr) = c["addr"].as_str() {
                map.insert(addr.to_string(), c["keys"].clone());
            }
        }
    }
    Value::Object(map)
}

#[test]
fn delta_chat_sees_every_message_once_across_a_night() {
    require_real_lab_machine();
    let relays = env_count("CMFLEET_DC_RELAYS", 3).max(2);
    let per_relay = env_count("CMFLEET_DC_ACCOUNTS", 4).max(2);
    let venv = venv();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("lab");
    let reserved = reserve(&dir.join("real"));
    let _down = DownOnDrop(dir.clone());
    let lab = ChatmailLab::up(ChatmailLabOptions {
        dir: dir.clone(),
        relays,
        net: reserved.net,
        relay: RelaySource::shared_default().expect("the shared relay bundle"),
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let inventory = lab.inventory();
    // One relay down at a time, so the others send to it while it is.
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    let text = text.replacen("[fleet]\n", "[fleet]\ncutovers = 1\n", 1);
    std::fs::write(&inventory, text).expect("write inventory");

    let net = ClientNet::up(lab.hosts.net());
    let mut c = Clients::start(&net, &venv, &tmp.path().join("accounts"));
    let users: Vec<User> = (0..relays)
        .flat_map(|r| (0..per_relay).map(move |a| (r, a)))
        .map(|(r, a)| User {
            name: format!("r{}a{}", r + 1, a + 1),
            relay: r,
            addr: format!("dc{:07}@{}", r * 100 + a, lab.domains[r]),
            password: format!("dc-password-{r}-{a}-long"),
        })
        .collect();
    for u in &users {
        c.add(&u.name, &u.addr, &u.password);
    }
    // Contacts: within each relay a ring, and across relays a ring of first accounts.
    let at = |r: usize, a: usize| &users[r * per_relay + a];
    let mut pairs: Vec<(&User, &User)> = Vec::new();
    for r in 0..relays {
        for a in 0..per_relay {
            pairs.push((at(r, a), at(r, (a + 1) % per_relay)));
        }
        pairs.push((at(r, 0), at((r + 1) % relays, 1)));
    }
    for (x, y) in &pairs {
        c.join(&x.name, &y.name);
    }
    let mut expected = Expected::new();
    for (i, (x, y)) in pairs.iter().enumerate() {
        send(
            &mut c,
            &mut expected,
            x,
            y,
            format!("before {i}: {} to {}", x.name, y.name),
        );
        send(
            &mut c,
            &mut expected,
            y,
            x,
            format!("before {i}: {} to {}", y.name, x.name),
        );
    }
    wait_all(&mut c, &lab, &users, &expected, Duration::from_secs(180));
    // Every account reads what it got before the night.
    let mut read: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in &users {
        let got: Vec<String> = expected[&u.name]
            .iter()
            .filter(|t| t.ends_with(&format!("to {}", u.name)))
            .cloned()
            .collect();
        c.seen(&u.name, &got);
        read.insert(u.name.clone(), got);
    }
    let views_before: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.view(&u.name)))
        .collect();

    let (code, out) = cmfleet(&common::run::PRE_STAGE, &inventory);
    assert_eq!(code, Some(0), "pre-stage:\n{out}");
    for (i, (x, y)) in pairs.iter().enumerate() {
        send(
            &mut c,
            &mut expected,
            y,
            x,
            format!("between {i}: {} to {}", y.name, x.name),
        );
    }
    wait_all(&mut c, &lab, &users, &expected, Duration::from_secs(180));
    for u in &users {
        let got: Vec<String> = expected[&u.name]
            .iter()
            .filter(|t| t.starts_with("between") && t.ends_with(&format!("to {}", u.name)))
            .cloned()
            .collect();
        c.seen(&u.name, &got);
        read.get_mut(&u.name).expect("user").extend(got);
    }

    // The cutover, in a thread; meanwhile, every few seconds, a message across relays.
    let cutover = {
        let inventory = inventory.clone();
        std::thread::spawn(move || {
            cmfleet(&["migrate", "--yes", "--progress", "plain"], &inventory)
        })
    };
    let mut n = 0;
    while !cutover.is_finished() {
        for (x, y) in pairs.iter().filter(|(x, y)| x.relay != y.relay) {
            send(
                &mut c,
                &mut expected,
                x,
                y,
                format!("during {n}: {} to {}", x.name, y.name),
            );
        }
        n += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    let (code, out) = cutover.join().expect("the cutover thread");
    assert_eq!(code, Some(0), "cutover:\n{out}");
    eprintln!("{n} rounds of messages during the cutover");
    wait_all(&mut c, &lab, &users, &expected, Duration::from_secs(600));

    let views_after: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.view(&u.name)))
        .collect();
    let nets: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.net(&u.name)))
        .collect();
    let record = json!({"before": views_before, "after": views_after, "net": nets});
    // Beside the other tests' files in the target directory, wherever that is.
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deltachat-night.json");
    std::fs::write(&file, serde_json::to_string_pretty(&record).expect("json"))
        .expect("write the views");
    eprintln!("Delta Chat's views: {}", file.display());

    let mut problems = Vec::new();
    for u in &users {
        problems.extend(judge(
            u,
            &views_after[&u.name],
            &expected[&u.name],
            &read[&u.name],
            &keys(&views_before[&u.name]),
        ));
        // The account reached its relay at NEW's address since the switch.
        let new_addr = lab
            .hosts
            .host(&format!("relay{}-new", u.relay + 1))
            .expect("NEW")
            .addr
            .to_string();
        let history = nets[&u.name]["connection_history"].to_string();
        if !history.contains(&new_addr) {
            problems.push(format!(
                "{}: never connected to NEW ({new_addr}): {history}",
                u.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "Delta Chat after the night:\n{}",
        problems.join("\n")
    );
}
