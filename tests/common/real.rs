//! Real lab hosts for tests: a check that the machine can run them, and a lab network
//! per test process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use cmfleet::lab::real::fleet::ChatmailLab;
use cmfleet::lab::real::{RealLab, RealNet, STATE_FILE};
use nix::fcntl::{Flock, FlockArg};

/// Where test labs reserve their networks (shared with the loopback labs' ranges dir).
const RANGES_DIR: &str = "/tmp/cmfleet-test-ranges";

/// Fails the test (never skips it) when this machine cannot run real lab hosts.
pub fn require_real_lab_machine() {
    if let Err(e) = RealLab::preflight() {
        panic!(
            "real lab tests cannot run here: {e}\n\
             They need root on a Linux VM with systemd-container, mmdebstrap, nftables, iproute2,\n\
             openssh-client and util-linux: apt-get install systemd-container mmdebstrap nftables\n\
             (./run-tests.sh installs them). Run as root, e.g.: sudo -E env PATH=\"$PATH\" cargo test --test real_lab"
        );
    }
}

/// A lab network no other test process uses while this one holds it (an exclusive
/// `flock` per network number, 198.18.200-254). The lock file names the lab dir of its
/// holder: a lab left running by a killed test process is taken down by the next test
/// that gets the network.
pub struct Reserved {
    pub net: RealNet,
    _lock: Flock<File>,
}

/// `CMFLEET_REAL_NET=X` pins the network to 198.18.X (still under its lock, so two
/// test processes never share it): for a run beside others that may hold 200-254 with
/// another copy of this file.
pub fn reserve(lab_dir: &Path) -> Reserved {
    std::fs::create_dir_all(RANGES_DIR).expect("create the test range lock dir");
    let nets: Vec<u8> = match std::env::var("CMFLEET_REAL_NET") {
        Ok(x) => vec![x
            .parse()
            .unwrap_or_else(|_| panic!("CMFLEET_REAL_NET={x:?} is not a number 0-255"))],
        Err(_) => (200..=254u8).collect(),
    };
    for x in nets {
        let path = Path::new(RANGES_DIR).join(format!("real-{x}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open a test network lock file");
        let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let mut previous = String::new();
        lock.read_to_string(&mut previous)
            .expect("read the lock file");
        let previous = Path::new(previous.trim());
        if previous.join(STATE_FILE).exists() {
            RealLab::down(previous).unwrap_or_else(|e| {
                panic!(
                    "cannot take down the lab a killed test left in {}: {e}",
                    previous.display()
                )
            });
        }
        lock.set_len(0).expect("truncate the lock file");
        lock.rewind().expect("rewind the lock file");
        write!(lock, "{}", lab_dir.display()).expect("write the lock file");
        return Reserved {
            net: RealNet::new(x),
            _lock: lock,
        };
    }
    panic!("every test lab network (198.18.200-254, or CMFLEET_REAL_NET's) is in use");
}

/// `ssh -F DIR/ssh_config root@ADDR -- CMD` into a host of a real-chatmail lab, stdin
/// closed; the caller picks what it wants of the output.
pub fn ssh_to(lab: &ChatmailLab, addr: &str, cmd: &str) -> std::process::Command {
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F")
        .arg(lab.dir.join("ssh_config"))
        .arg(format!("root@{addr}"))
        .arg("--")
        .arg(cmd)
        .stdin(std::process::Stdio::null());
    ssh
}
