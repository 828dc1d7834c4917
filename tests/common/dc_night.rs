//! The Delta Chat night (issue 26), shared by tests/deltachat_night.rs (nothing may go
//! wrong) and tests/deltachat_mutations.rs (NEW broken on purpose: Delta Chat must show
//! what broke).
//!
//! The lab is the real-chatmail lab: Debian 12 containers, OLD deployed by chatmail's own
//! cmdeploy, names served by the lab's BIND, which step 5 updates with RFC 2136. The users
//! are Delta Chat accounts (tests/common/deltachat.rs) in a network namespace whose
//! resolver is that BIND, so they find their relays by DNS, as a phone does.
//!
//! The night, in order:
//! 1. every account is made by its first login; accounts make contact by SecureJoin
//!    within their relay (a ring) and across relays (a ring of first accounts), and
//!    exchange messages ("before"), which the recipients read;
//! 2. the last account of each relay goes offline (a phone off the network) until the
//!    cutover is over; the pre-stage runs;
//! 3. a message back over every contact ("between"), read by the online recipients;
//! 4. the cutover, one relay at a time (`cutovers = 1`), while accounts on relays that
//!    are up send across relays every 3 s ("during"), to relays that are down too. OLD
//!    of relay 2 is "switched off" for the clients from its step 3 (their connection
//!    attempts are dropped, `dc-old-off.sh`); the other OLDs refuse, as stopped
//!    services do;
//! 5. the offline accounts come back; a message each way over every contact ("after"):
//!    sent and received through NEW.
//!
//! Judged from Delta Chat's own view, per account ([`judge`]). The views before the
//! pre-stage and after the night, what core cached about servers, the clients' outages
//! next to cmfleet's downtime, the mutations and the problems go to a JSON file in
//! Cargo's test tmp dir (`target/tmp/` by default).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmfleet::lab::real::chatmail::RelaySource;
use cmfleet::lab::real::fleet::{ChatmailLab, ChatmailLabOptions};
use cmfleet::model::inventory::Inventory;
use serde_json::{json, Value};

use super::deltachat::{venv, ClientNet, Clients};
use super::real::{require_real_lab_machine, reserve, ssh_to};
use super::run::{cmfleet, peek, PRE_STAGE};

/// What `dc-mutate-cmdeploy.sh` breaks on NEW right before step 6's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Dovecot's uidlists and indexes removed: new UIDVALIDITY, new UIDs.
    Uidlists,
    /// NEW signs with a key of its own instead of OLD's.
    Dkim,
    /// Postfix's queue emptied: OLD's deferred mail dropped.
    Queue,
}

impl Mutation {
    pub fn word(self) -> &'static str {
        match self {
            Mutation::Uidlists => "uidlists",
            Mutation::Dkim => "dkim",
            Mutation::Queue => "queue",
        }
    }
}

/// A mutation as the wrapper applied it: to which relay, and what it reported.
#[derive(Debug, Clone)]
pub struct Applied {
    pub mutation: String,
    /// 0-based relay index.
    pub relay: usize,
    pub did: String,
}

/// What Delta Chat shows wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Repeated(usize),
    UnreadAgain(u64),
    NoPadlock,
    Error(String),
    KeysChanged(String),
    NeverReachedNew(String),
}

/// One problem, in one account's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub account: String,
    /// The message's text (empty for problems of the account as a whole).
    pub text: String,
    pub kind: Kind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, t) = (&self.account, &self.text);
        match &self.kind {
            Kind::Missing => write!(f, "{a}: {t:?} is missing"),
            Kind::Repeated(n) => write!(f, "{a}: {t:?} is shown {n} times"),
            Kind::UnreadAgain(s) => {
                write!(f, "{a}: {t:?}, read before, is unread again (state {s})")
            }
            Kind::NoPadlock => write!(f, "{a}: {t:?} shows no padlock"),
            Kind::Error(e) => write!(f, "{a}: {t:?} has an error: {e}"),
            Kind::KeysChanged(d) => write!(f, "{a}: contacts' keys changed: {d}"),
            Kind::NeverReachedNew(d) => write!(f, "{a}: never connected to NEW: {d}"),
        }
    }
}

/// The message texts say when and between whom: "PHASE N: FROM to TO".
pub fn parse_text(text: &str) -> Option<(&str, &str, &str)> {
    let (phase, rest) = text.split_once(' ')?;
    let (_, pair) = rest.split_once(": ")?;
    let (from, to) = pair.split_once(" to ")?;
    Some((phase, from, to))
}

/// The relay (0-based) of an account name "rRaA".
pub fn relay_of(account: &str) -> Option<usize> {
    let r: usize = account.strip_prefix('r')?.split_once('a')?.0.parse().ok()?;
    r.checked_sub(1)
}

/// The night's outcome.
pub struct Night {
    pub problems: Vec<Problem>,
    pub applied: Vec<Applied>,
    /// The migrate run's exit code and output.
    pub cutover: (Option<i32>, String),
    /// Where the views and figures were written.
    pub record: PathBuf,
    /// When each text was sent (unix ms).
    pub sent_ms: BTreeMap<String, u64>,
    /// Each relay's downtime as cmfleet's journal has it (unix ms), by relay index.
    pub windows: Vec<Option<(u64, u64)>>,
}

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
        let _ = ssh_to(
            lab,
            &h.addr.to_string(),
            "systemctl is-active --quiet postfix && postqueue -f || true",
        )
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

/// Texts each account should hold, by account name.
type Expected = BTreeMap<String, Vec<String>>;

/// What was sent: the texts each account should hold, and when each text was sent
/// (unix ms).
#[derive(Default)]
struct Ledger {
    expected: Expected,
    sent_ms: BTreeMap<String, u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn send(c: &mut Clients, ledger: &mut Ledger, from: &User, to: &User, text: String) {
    ledger.sent_ms.insert(text.clone(), now_ms());
    c.send(&from.name, &to.name, &text);
    let expected = &mut ledger.expected;
    expected
        .entry(to.name.clone())
        .or_default()
        .push(text.clone());
    expected.entry(from.name.clone()).or_default().push(text);
}

/// A message each way over every contact: "PHASE N: FROM to TO".
fn send_both_ways(c: &mut Clients, ledger: &mut Ledger, pairs: &[(&User, &User)], phase: &str) {
    for (i, (x, y)) in pairs.iter().enumerate() {
        send(
            c,
            ledger,
            x,
            y,
            format!("{phase} {i}: {} to {}", x.name, y.name),
        );
        send(
            c,
            ledger,
            y,
            x,
            format!("{phase} {i}: {} to {}", y.name, x.name),
        );
    }
}

/// Waits until every listed account holds what it should, flushing the relays' queues.
/// Prints how long that took. At the deadline answers false, and if `explain` (the
/// caller fails on it) first prints what is still missing, how each missing message
/// stands at its sender, and each relay's queue and journal.
fn wait_all(
    c: &mut Clients,
    lab: &ChatmailLab,
    users: &[&User],
    expected: &Expected,
    limit: Duration,
    what: &str,
    explain: bool,
) -> bool {
    let start = Instant::now();
    let deadline = start + limit;
    for u in users {
        let texts = expected.get(&u.name).cloned().unwrap_or_default();
        let mut waited = Instant::now();
        while !c.wait(&u.name, &texts, 5).is_empty() {
            if Instant::now() >= deadline {
                eprintln!("{what}: not every message arrived in {} s", limit.as_secs());
                if explain {
                    eprintln!("{}", why_missing(c, lab, users, expected));
                }
                return false;
            }
            flush_queues(lab);
            // Dovecot's hibernation can keep a delivery from an idle client: wake it as
            // a push notification would (every nudge is in the night's record).
            if waited.elapsed() >= NUDGE_EVERY && c.nudge(&u.name) {
                waited = Instant::now();
            }
        }
    }
    eprintln!(
        "{what}: every message arrived after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    true
}

/// What is missing where, how each missing message stands in its sender's view, and
/// each relay host's mail queue and the tail of its journal.
fn why_missing(c: &mut Clients, lab: &ChatmailLab, users: &[&User], expected: &Expected) -> String {
    let mut out = String::new();
    let mut senders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lacking: Vec<&str> = Vec::new();
    for u in users {
        let texts = expected.get(&u.name).cloned().unwrap_or_default();
        let missing = c.wait(&u.name, &texts, 0);
        for t in &missing {
            out.push_str(&format!("  {} lacks {t:?}\n", u.name));
            if let Some((_, from, _)) = parse_text(t) {
                senders.entry(from.to_string()).or_default().push(t.clone());
            }
        }
        if missing.is_empty() {
            continue;
        }
        lacking.push(&u.addr);
        // What its core did: the last of its events (its IMAP loop says whether it
        // was connected and idle, or waiting to reconnect).
        let events = c.events(&u.name, 0.0);
        for line in &events[events.len().saturating_sub(150)..] {
            out.push_str(&format!("  {} core: {line}\n", u.name));
        }
        // What it shows instead: a message it could not decrypt has another text.
        let view = c.view(&u.name);
        for m in messages(&view) {
            let text = m["text"].as_str().unwrap_or("");
            if !texts.iter().any(|t| t == text) {
                out.push_str(&format!(
                    "  {} shows {:?} (info {}, state {}, error {})\n",
                    u.name, text, m["info"], m["state"], m["error"]
                ));
            }
        }
    }
    for (from, texts) in &senders {
        let view = c.view(from);
        for m in messages(&view) {
            if m["text"]
                .as_str()
                .is_some_and(|t| texts.iter().any(|x| x == t))
            {
                out.push_str(&format!(
                    "  at its sender {from}: {} state {} error {}\n",
                    m["text"], m["state"], m["error"]
                ));
            }
        }
    }
    out + &relay_reports(lab, &lacking)
}

/// Each relay host's mail queue and the tail of its journal, and the journal's last
/// lines about each of `addrs`.
fn relay_reports(lab: &ChatmailLab, addrs: &[&str]) -> String {
    let mut script = "systemctl is-active --quiet postfix || exit 0; postqueue -p | tail -n 20; \
                      journalctl --no-pager -q --since=-5min | tail -n 60; \
                      echo '--- IMAP sessions:'; doveadm who; ps -eo pid,comm | grep imap; \
                      doveadm log errors | tail -n 20"
        .to_string();
    for a in addrs {
        // Lab addresses hold no quote (dcNNNNNNN@ a lab domain).
        script.push_str(&format!(
            "; echo '--- about {a}:'; journalctl --no-pager -q --since=-10min | grep -F '{a}' | tail -n 40"
        ));
    }
    let mut out = String::new();
    for h in lab.hosts.hosts() {
        let report = ssh_to(lab, &h.addr.to_string(), &script).output();
        let text = report.map_or_else(
            |e| format!("ssh: {e}"),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        );
        if !text.trim().is_empty() {
            out.push_str(&format!("--- {} ({}):\n{text}", h.name, h.addr));
        }
    }
    out
}

/// Every message of every chat in a view from [`Clients::view`].
fn messages(view: &Value) -> impl Iterator<Item = &Value> {
    view["chats"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|chat| chat["messages"].as_array().into_iter().flatten())
}

/// The problems in one account's view: every expected text exactly once, nothing read
/// before unread again, the padlock on every message and no error, contacts' keys as
/// before.
pub fn judge(
    account: &str,
    view: &Value,
    expected: &[String],
    read_before: &[String],
    keys_before: &Value,
) -> Vec<Problem> {
    let problem = |text: &str, kind| Problem {
        account: account.to_string(),
        text: text.to_string(),
        kind,
    };
    let mut problems = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in messages(view) {
        if m["info"].as_bool() == Some(true) {
            continue;
        }
        let text = m["text"].as_str().unwrap_or("").to_string();
        if m["padlock"].as_bool() != Some(true) {
            problems.push(problem(&text, Kind::NoPadlock));
        }
        match &m["error"] {
            Value::Null => {}
            Value::String(e) => problems.push(problem(&text, Kind::Error(e.clone()))),
            other => problems.push(problem(&text, Kind::Error(other.to_string()))),
        }
        // InFresh (10) or InNoticed (13): shown as new again.
        if let Some(s) = m["state"].as_u64().filter(|s| *s < 16) {
            if read_before.contains(&text) {
                problems.push(problem(&text, Kind::UnreadAgain(s)));
            }
        }
        *counts.entry(text).or_default() += 1;
    }
    for t in expected {
        match counts.get(t).copied().unwrap_or(0) {
            1 => {}
            0 => problems.push(problem(t, Kind::Missing)),
            n => problems.push(problem(t, Kind::Repeated(n))),
        }
    }
    let keys_after = keys(view);
    if &keys_after != keys_before {
        problems.push(problem(
            "",
            Kind::KeysChanged(format!("{keys_before} -> {keys_after}")),
        ));
    }
    problems
}

/// Contact address -> encryption info (names the keys), over the account's chats.
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

/// How long an account waits for its messages before the night nudges the cores (as
/// the client's joins do; see `nudge` in deltachat_client.py).
const NUDGE_EVERY: Duration = Duration::from_secs(20);

/// Core's connectivity at or above this is a working connection (3000 working, 4000
/// connected); below it, not connected or still connecting.
const UP: u64 = 3000;

/// A client's outage around its relay's downtime `[down, up]` (unix ms): from the first
/// moment at or after `down` that it was not connected to the first moment after that
/// it was again. `None` parts: it never lost its relay, or never had it back.
fn outage(changes: &[(u64, u64)], down: u64) -> (Option<u64>, Option<u64>) {
    let state_at = |t: u64| {
        changes
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|c| c.1)
    };
    let lost = if state_at(down).is_some_and(|v| v < UP) {
        Some(down)
    } else {
        changes
            .iter()
            .find(|(at, v)| *at > down && *v < UP)
            .map(|c| c.0)
    };
    let back = lost.and_then(|l| {
        changes
            .iter()
            .find(|(at, v)| *at > l && *v >= UP)
            .map(|c| c.0)
    });
    (lost, back)
}

fn secs(ms: u64) -> f64 {
    (ms as f64 / 100.0).round() / 10.0
}

/// Commits the mutating wrapper into the lab's checkout (cmfleet's workspaces check
/// out the commit), with the plan: one mutation per activation, in cutover order.
fn install_mutations(lab: &ChatmailLab, plan: &[Mutation]) -> PathBuf {
    let dir = lab.dir.join("mutations");
    std::fs::create_dir_all(&dir).expect("create the mutations dir");
    let lines: String = plan.iter().map(|m| format!("{}\n", m.word())).collect();
    std::fs::write(dir.join("plan"), lines).expect("write the plan");
    std::fs::copy(lab.dir.join("ssh_config"), dir.join("ssh_config")).expect("ssh_config");
    let checkout = &lab.chatmail.checkout;
    let script = checkout.join("scripts/cmdeploy");
    std::fs::rename(&script, checkout.join("scripts/cmdeploy-unmutated")).expect("rename");
    let wrapper =
        include_str!("dc-mutate-cmdeploy.sh").replace("@MUTATIONS@", &dir.to_string_lossy());
    std::fs::write(&script, wrapper).expect("write the wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(checkout)
            .args(args)
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?} in the lab's checkout");
    };
    git(&["add", "-A", "scripts"]);
    git(&[
        "-c",
        "user.name=cmfleet tests",
        "-c",
        "user.email=tests@cmfleet.invalid",
        "commit",
        "-qm",
        "tests: break NEW before step 6 (tests/common/dc-mutate-cmdeploy.sh)",
    ]);
    dir
}

/// The mutations the wrapper applied, from its log.
fn applied(lab: &ChatmailLab, dir: &Path) -> Vec<Applied> {
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            let (mutation, host, did) = (w.next()?, w.next()?, w.next().unwrap_or(""));
            let relay = (0..lab.domains.len()).find(|i| {
                lab.hosts
                    .host(&format!("relay{}-new", i + 1))
                    .is_some_and(|h| h.addr.to_string() == host)
            })?;
            Some(Applied {
                mutation: mutation.to_string(),
                relay,
                did: did.trim().to_string(),
            })
        })
        .collect()
}

/// The whole night; `mutations` (possibly empty) break NEW at the 1st, 2nd, ...
/// activation. `record`: the file name for the views and figures.
pub fn run_night(mutations: &[Mutation], record: &str) -> Night {
    require_real_lab_machine();
    let relays = env_count("CMFLEET_DC_RELAYS", 3).max(2);
    let per_relay = env_count("CMFLEET_DC_ACCOUNTS", 4).max(3);
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
    let mutations_dir = (!mutations.is_empty()).then(|| install_mutations(&lab, mutations));

    let net = ClientNet::up(lab.hosts.net());
    // One relay down at a time, so the others send to it while it is; relay 2's OLD
    // switched off for the clients at its step 3.
    let switched_off = 1;
    let hook_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/dc-old-off.sh");
    let hook = format!(
        "sh {} {} {}",
        hook_script.display(),
        lab.domains[switched_off],
        net.name
    );
    let inventory = lab.inventory();
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    let text = text
        .replacen("[fleet]\n", "[fleet]\ncutovers = 1\n", 1)
        .replacen(
            "[defaults]\n",
            &format!("[defaults]\nhooks = {{ pre_cutover = {hook:?} }}\n"),
            1,
        );
    std::fs::write(&inventory, text).expect("write inventory");
    let inv = Inventory::load(&inventory).unwrap_or_else(|e| panic!("the inventory: {e}"));

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
    let all: Vec<&User> = users.iter().collect();
    // Contacts: within each relay a ring, and across relays a ring of first accounts
    // (the first joins the second account of the next relay).
    let at = |r: usize, a: usize| &users[r * per_relay + a];
    let mut pairs: Vec<(&User, &User)> = Vec::new();
    for r in 0..relays {
        for a in 0..per_relay {
            pairs.push((at(r, a), at(r, (a + 1) % per_relay)));
        }
        pairs.push((at(r, 0), at((r + 1) % relays, 1)));
    }
    for (x, y) in &pairs {
        let start = Instant::now();
        if let Err(e) = c.join(&x.name, &y.name) {
            panic!(
                "{} did not join {}: {e}\n{}",
                y.name,
                x.name,
                relay_reports(&lab, &[&x.addr, &y.addr])
            );
        }
        eprintln!(
            "{} joined {} in {:.1} s",
            y.name,
            x.name,
            start.elapsed().as_secs_f64()
        );
    }
    let mut ledger = Ledger::default();
    send_both_ways(&mut c, &mut ledger, &pairs, "before");
    assert!(
        wait_all(
            &mut c,
            &lab,
            &all,
            &ledger.expected,
            Duration::from_secs(180),
            "before the night",
            true
        ),
        "before the night, messages did not arrive"
    );
    // Every account reads what it got so far.
    let mut read: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut read_now = |c: &mut Clients, who: &[&User], phase: &str, expected: &Expected| {
        for u in who {
            let got: Vec<String> = expected[&u.name]
                .iter()
                .filter(|t| t.starts_with(phase) && t.ends_with(&format!(" to {}", u.name)))
                .cloned()
                .collect();
            c.seen(&u.name, &got);
            read.entry(u.name.clone()).or_default().extend(got);
        }
    };
    read_now(&mut c, &all, "before", &ledger.expected);
    let views_before: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.view(&u.name)))
        .collect();

    // The last account of each relay is off the network until the cutover is over: what
    // was delivered to it meanwhile, it fetches from NEW.
    let offline: Vec<&User> = (0..relays).map(|r| at(r, per_relay - 1)).collect();
    let online: Vec<&User> = users
        .iter()
        .filter(|u| !offline.iter().any(|o| o.name == u.name))
        .collect();
    for u in &offline {
        c.offline(&u.name);
    }

    let (code, out) = cmfleet(&PRE_STAGE, &inventory);
    assert_eq!(code, Some(0), "pre-stage:\n{out}");
    for (i, (x, y)) in pairs.iter().enumerate() {
        // An offline account sends nothing until it is back.
        if !offline.iter().any(|o| o.name == y.name) {
            send(
                &mut c,
                &mut ledger,
                y,
                x,
                format!("between {i}: {} to {}", y.name, x.name),
            );
        }
    }
    assert!(
        wait_all(
            &mut c,
            &lab,
            &online,
            &ledger.expected,
            Duration::from_secs(180),
            "between the pre-stage and the cutover",
            true
        ),
        "between the pre-stage and the cutover, messages did not arrive"
    );
    read_now(&mut c, &online, "between", &ledger.expected);

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
                &mut ledger,
                x,
                y,
                format!("during {n}: {} to {}", x.name, y.name),
            );
        }
        n += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    let cutover = cutover.join().expect("the cutover thread");
    eprintln!(
        "{n} rounds of messages during the cutover; migrate exited {:?}",
        cutover.0
    );
    for u in &offline {
        c.online(&u.name);
    }
    send_both_ways(&mut c, &mut ledger, &pairs, "after");
    // A clean night gets all the time mail may need; a broken one stops waiting sooner
    // (what is missing then stays missing).
    let limit = if mutations.is_empty() { 600 } else { 240 };
    let complete = wait_all(
        &mut c,
        &lab,
        &all,
        &ledger.expected,
        Duration::from_secs(limit),
        "after the night",
        mutations.is_empty(),
    );
    eprintln!("every message arrived: {complete}");

    let views_after: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.view(&u.name)))
        .collect();
    let nets: BTreeMap<String, Value> = users
        .iter()
        .map(|u| (u.name.clone(), c.net(&u.name)))
        .collect();

    let mut problems = Vec::new();
    for u in &users {
        problems.extend(judge(
            &u.name,
            &views_after[&u.name],
            &ledger.expected[&u.name],
            &read[&u.name],
            &keys(&views_before[&u.name]),
        ));
        // The account reached its relay at NEW's address since the switch.
        let new_addr = new_addr(&lab, u.relay);
        let history = nets[&u.name]["connection_history"].to_string();
        if !history.contains(&new_addr) {
            problems.push(Problem {
                account: u.name.clone(),
                text: String::new(),
                kind: Kind::NeverReachedNew(format!("{new_addr} is not in {history}")),
            });
        }
    }

    let windows = windows(&lab, &inv);
    let downtime = downtime_table(&lab, &windows, &mut c, &users, &offline, switched_off);
    let applied = mutations_dir
        .as_deref()
        .map(|d| applied(&lab, d))
        .unwrap_or_default();
    // Every nudge, for the reader of the outages: the client nudges only while no
    // online account is reconnecting, so none shortened an outage.
    let nudges = c.nudges();
    eprintln!(
        "nudges (a waiting account's IMAP woken, as a push notification would): {}",
        nudges.len()
    );
    for (at, who) in &nudges {
        eprintln!("  {who} at {at} ms");
    }
    let record_json = json!({
        "nudges": nudges.iter().map(|(at, who)| json!({"at_ms": at, "account": who})).collect::<Vec<_>>(),
        "before": views_before,
        "after": views_after,
        "net": nets,
        "downtime": downtime,
        "mutations": applied.iter().map(|a| json!({
            "mutation": a.mutation, "relay": lab.domains[a.relay], "did": a.did,
        })).collect::<Vec<_>>(),
        "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    });
    // Beside the other tests' files in the target directory, wherever that is.
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(record);
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&record_json).expect("json"),
    )
    .expect("write the views");
    eprintln!("Delta Chat's views: {}", file.display());
    Night {
        problems,
        applied,
        cutover,
        record: file,
        sent_ms: ledger.sent_ms,
        windows,
    }
}

/// Each relay's downtime from cmfleet's journal (a relay's name there is its
/// mail_domain): from the start of step 3 to the end of step 6, unix ms.
fn windows(lab: &ChatmailLab, inv: &Inventory) -> Vec<Option<(u64, u64)>> {
    let journal = peek(inv);
    lab.domains
        .iter()
        .map(|d| {
            let rec = journal.relays.get(d)?;
            rec.down_since_ms.zip(rec.up_again_ms)
        })
        .collect()
}

fn new_addr(lab: &ChatmailLab, relay: usize) -> String {
    lab.hosts
        .host(&format!("relay{}-new", relay + 1))
        .expect("NEW")
        .addr
        .to_string()
}

/// Per relay: cmfleet's downtime (journal) and each online client's outage, printed
/// and returned for the record.
fn downtime_table(
    lab: &ChatmailLab,
    windows: &[Option<(u64, u64)>],
    c: &mut Clients,
    users: &[User],
    offline: &[&User],
    switched_off: usize,
) -> Value {
    let mut rows = Vec::new();
    eprintln!("relay | OLD for clients | cmfleet's downtime | client: lost at, back at (s after the downtime began), outage");
    for (r, domain) in lab.domains.iter().enumerate() {
        let Some((down, up)) = windows.get(r).copied().flatten() else {
            rows.push(json!({"relay": domain, "cmfleet_downtime_s": null}));
            continue;
        };
        let old = if r == switched_off {
            "switched off"
        } else {
            "refusing"
        };
        let mut clients = serde_json::Map::new();
        let mut cells = Vec::new();
        for u in users.iter().filter(|u| u.relay == r) {
            if offline.iter().any(|o| o.name == u.name) {
                clients.insert(u.name.clone(), json!("offline during the cutover"));
                continue;
            }
            let changes = c.connectivity(&u.name);
            let (lost, back) = outage(&changes, down);
            let rel = |t: Option<u64>| t.map(|t| secs(t.saturating_sub(down)));
            let span = lost.zip(back).map(|(l, b)| secs(b - l));
            let at = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t} s"));
            cells.push(format!(
                "{} lost at {}, back at {} ({})",
                u.name,
                at(rel(lost)),
                at(rel(back)),
                match (lost, span) {
                    (_, Some(s)) => format!("{s} s out"),
                    (Some(_), None) => "still out".to_string(),
                    (None, None) => "no outage".to_string(),
                }
            ));
            clients.insert(
                u.name.clone(),
                json!({"lost_at_s": rel(lost), "back_at_s": rel(back), "outage_s": span,
                       "changes": changes.iter().filter(|(t, _)| *t + 60_000 >= down && *t <= up + 600_000)
                           .map(|(t, v)| json!([secs(t.saturating_sub(down)), v])).collect::<Vec<_>>()}),
            );
        }
        eprintln!(
            "{domain} | {old} | {} s | {}",
            secs(up - down),
            cells.join("; ")
        );
        rows.push(json!({"relay": domain, "old_for_clients": old,
                         "cmfleet_downtime_s": secs(up - down), "clients": clients}));
    }
    Value::Array(rows)
}
