//! Delta Chat users for the real-chatmail tests: one `deltachat_client.py` process (the
//! Delta Chat core by `deltachat-rpc-server`, driven by `deltachat-rpc-client`, both
//! pinned) in a network namespace of its own on the lab's bridge, whose resolver is the
//! lab's BIND: the accounts find their relays as a user's phone does, by DNS.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use cmfleet::lab::real::RealNet;
use serde_json::{json, Value};

/// The pinned Delta Chat packages (PyPI).
const PACKAGES: [&str; 2] = [
    "deltachat-rpc-server==2.65.0",
    "deltachat-rpc-client==2.65.0",
];

/// Where the venv with them is kept on the machine (made once).
const VENV: &str = "/var/cache/cmfleet-lab/deltachat-2.65.0";

/// The lab host number the clients' namespace takes (the relays use the low ones).
const CLIENT_HOST: u8 = 250;

/// The venv with the pinned packages, made under a lock if missing.
pub fn venv() -> PathBuf {
    let venv = PathBuf::from(VENV);
    let python = venv.join("bin/python");
    std::fs::create_dir_all("/var/cache/cmfleet-lab").expect("create the cache dir");
    let lock = std::fs::File::create("/var/cache/cmfleet-lab/deltachat.lock").expect("lock file");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the deltachat venv");
    if !venv.join("bin/deltachat-rpc-server").exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let ok = Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "python3 -m venv {VENV}");
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(PACKAGES)
            .status()
            .expect("pip install")
            .success();
        assert!(ok, "pip install {PACKAGES:?}");
    }
    venv
}

/// The clients' namespace: `cmfleetX-250` on the lab's bridge, resolv.conf naming the
/// lab's BIND. Removed on drop.
pub struct ClientNet {
    net: RealNet,
    pub name: String,
}

impl ClientNet {
    pub fn up(net: RealNet) -> ClientNet {
        // One a killed test left behind would be in the way.
        let _ = net.remove_host(CLIENT_HOST);
        net.add_host(CLIENT_HOST).expect("the clients' namespace");
        let name = net.host_id(CLIENT_HOST);
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).expect("create /etc/netns/NAME");
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {}\n", net.gateway()),
        )
        .expect("write the namespace's resolv.conf");
        ClientNet { net, name }
    }
}

impl Drop for ClientNet {
    fn drop(&mut self) {
        let _ = self.net.remove_host(CLIENT_HOST);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// The running client process.
pub struct Clients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Clients {
    /// Starts the client in `ns` with its accounts in `dir`.
    pub fn start(ns: &ClientNet, venv: &Path, dir: &Path) -> Clients {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/deltachat_client.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(venv.join("bin/python"))
            .arg(script)
            .arg(dir)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", venv.join("bin").display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Delta Chat client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut clients = Clients {
            child,
            stdin,
            stdout,
        };
        let ready = clients.read();
        assert_eq!(ready["ok"], "ready", "the Delta Chat client: {ready}");
        clients
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the client");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the client said {line:?}: {e}"))
    }

    /// One request; its answer's `ok` part (panics on an error answer).
    pub fn ask(&mut self, request: Value) -> Value {
        let r = request.to_string();
        self.try_ask(request)
            .unwrap_or_else(|e| panic!("Delta Chat, {r}: {e}"))
    }

    /// One request; its answer's `ok` part, or the client's error text.
    fn try_ask(&mut self, request: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}").expect("write to the client");
        self.stdin.flush().expect("flush");
        let answer = self.read();
        match answer.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(answer["error"].as_str().unwrap_or("?").to_string()),
        }
    }

    pub fn add(&mut self, name: &str, addr: &str, password: &str) -> Value {
        self.ask(json!({"cmd": "add", "name": name, "addr": addr, "password": password}))
    }

    /// SecureJoin; at the client's deadline, its error with both cores' events.
    pub fn join(&mut self, inviter: &str, joiner: &str) -> Result<(), String> {
        self.try_ask(json!({"cmd": "join", "inviter": inviter, "joiner": joiner}))
            .map(|_| ())
    }

    pub fn send(&mut self, from: &str, to: &str, text: &str) {
        self.ask(json!({"cmd": "send", "from": from, "to": to, "text": text}));
    }

    /// The texts still missing from `name`'s chats after `timeout_s`.
    pub fn wait(&mut self, name: &str, texts: &[String], timeout_s: u64) -> Vec<String> {
        let ok =
            self.ask(json!({"cmd": "wait", "name": name, "texts": texts, "timeout": timeout_s}));
        ok["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    pub fn seen(&mut self, name: &str, texts: &[String]) {
        self.ask(json!({"cmd": "seen", "name": name, "texts": texts}));
    }

    pub fn view(&mut self, name: &str) -> Value {
        self.ask(json!({"cmd": "view", "name": name}))
    }

    pub fn net(&mut self, name: &str) -> Value {
        self.ask(json!({"cmd": "net", "name": name}))
    }

    /// Stops the account's IO: a phone off the network until `online`.
    pub fn offline(&mut self, name: &str) {
        self.ask(json!({"cmd": "offline", "name": name}));
    }

    pub fn online(&mut self, name: &str) {
        self.ask(json!({"cmd": "online", "name": name}));
    }

    /// Wakes the cores' IMAP as a push notification wakes a phone, unless an online
    /// account is not connected (see `nudge` in deltachat_client.py); whether it did.
    pub fn nudge(&mut self, name: &str) -> bool {
        self.ask(json!({"cmd": "nudge", "name": name}))["nudged"] == true
    }

    /// Every nudge so far: (unix time in ms, the account that waited).
    pub fn nudges(&mut self) -> Vec<(u64, String)> {
        let ok = self.ask(json!({"cmd": "nudges"}));
        ok["nudges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some(((n[0].as_f64()? * 1000.0) as u64, n[1].as_str()?.to_string())))
            .collect()
    }

    /// The account's core events since `since` (unix seconds), one line each.
    pub fn events(&mut self, name: &str, since: f64) -> Vec<String> {
        let ok = self.ask(json!({"cmd": "events", "name": name, "since": since}));
        ok["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Every change of the account's connectivity: (unix time in ms, core's value).
    pub fn connectivity(&mut self, name: &str) -> Vec<(u64, u64)> {
        let ok = self.ask(json!({"cmd": "connectivity", "name": name}));
        ok["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some(((c[0].as_f64()? * 1000.0) as u64, c[1].as_u64()?)))
            .collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
