//! A lab per test, on its own 127.x.y.0/24, torn down on drop.
//!
//! Tests run in parallel threads and, under nextest, in parallel processes: each lab's
//! /24 is reserved with an exclusive `flock` on /tmp/cmfleet-test-ranges/<n>.lock
//! (range n = 127.78.n.0/24). The lock file names the lab dir of its holder, so a lab
//! left running by a killed test process is taken down by the next test that gets the
//! range.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use cmfleet::lab::{DataOptions, Lab, LabOptions, Subnet};
use nix::fcntl::{Flock, FlockArg};

/// Where the range locks live (shared by every test process on the machine).
const RANGES_DIR: &str = "/tmp/cmfleet-test-ranges";

/// Where test labs live: $CMFLEET_TEST_LAB_ROOT, else /dev/shm when it is a tmpfs (on
/// this kind of VM, creating a file on the ext4 root takes ~1 ms, on tmpfs ~50 us: a
/// lab's data and host trees are thousands of files), else /tmp.
pub fn lab_root() -> PathBuf {
    if let Some(root) = std::env::var_os("CMFLEET_TEST_LAB_ROOT") {
        return PathBuf::from(root);
    }
    let shm_is_tmpfs = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split(' ').nth(1) == Some("/dev/shm") && l.split(' ').nth(2) == Some("tmpfs")
        })
    });
    PathBuf::from(if shm_is_tmpfs { "/dev/shm" } else { "/tmp" })
}

/// Small data: tests want real trees, not benchmarks.
pub fn small_data() -> DataOptions {
    DataOptions {
        users: 3,
        messages: 5,
        message_size: 1500,
        seed: 7,
    }
}

/// Fails the test (never skips it) when this machine cannot run labs.
pub fn require_lab_machine() {
    if let Err(e) = Lab::preflight() {
        panic!(
            "lab tests cannot run here: {e}\n\
             They need root on Linux with util-linux, openssh-server, openssh-client, rsync, git, python3,\n\
             postfix, dovecot-imapd, dovecot-lmtpd, openssl and iproute2 (./run-tests.sh installs them).\n\
             Run them as root, e.g.: sudo -E env PATH=\"$PATH\" cargo test --test 'lab_*'"
        );
    }
}

/// A reserved 127.78.n.0/24 and a fresh lab directory for it.
pub struct Reservation {
    /// The reserved /24.
    pub subnet: Subnet,
    /// A fresh, empty temporary directory for the lab.
    pub dir: tempfile::TempDir,
    /// Held for the reservation's lifetime; dropping it frees the range.
    _lock: Flock<File>,
}

impl Reservation {
    /// Reserves a free range (blocks other tests, in any process, from using it).
    pub fn new() -> Reservation {
        require_lab_machine();
        std::fs::create_dir_all(RANGES_DIR).expect("create the test range lock dir");
        for n in 0..=255u8 {
            let path = Path::new(RANGES_DIR).join(format!("{n}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .expect("open a test range lock file");
            let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // A previous holder that died without its Drop may have left its lab running.
            let mut previous = String::new();
            let _ = lock.read_to_string(&mut previous);
            let previous = PathBuf::from(previous.trim());
            if previous.join("lab.json").exists() {
                let _ = Lab::down(&previous);
            }
            let dir = tempfile::Builder::new()
                .prefix("cmfleet-lab-")
                .tempdir_in(lab_root())
                .expect("create a lab temp dir");
            lock.set_len(0).expect("truncate a range lock file");
            lock.rewind().expect("rewind a range lock file");
            write!(lock, "{}", dir.path().display()).expect("write a range lock file");
            return Reservation {
                subnet: Subnet::new(78, n),
                dir,
                _lock: lock,
            };
        }
        panic!("all 256 test lab ranges 127.78.*.0/24 are in use ({RANGES_DIR})");
    }
}

/// A running lab for one test; `lab down` on drop, also when the test panics.
pub struct TestLab {
    lab: Lab,
    // Dropped after `drop` below ran `down`: the range is freed last.
    reservation: Reservation,
}

impl TestLab {
    /// A lab of `relays` relays with small data.
    pub fn start(relays: usize) -> TestLab {
        TestLab::start_with(relays, small_data())
    }

    /// A lab of `relays` relays with `data` on the OLD hosts.
    pub fn start_with(relays: usize, data: DataOptions) -> TestLab {
        let reservation = Reservation::new();
        let mut opts = LabOptions::new(reservation.dir.path(), relays, reservation.subnet);
        opts.data = data;
        let lab = match Lab::up(opts) {
            Ok(lab) => lab,
            Err(e) => panic!("lab up failed: {e}"),
        };
        TestLab { lab, reservation }
    }

    /// The lab's directory.
    pub fn path(&self) -> &Path {
        self.reservation.dir.path()
    }
}

impl Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(self.reservation.dir.path()) {
            eprintln!(
                "lab down of {} failed: {e}",
                self.reservation.dir.path().display()
            );
        }
    }
}

/// Runs a command, failing the test with its output if it fails; returns stdout.
pub fn ok(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A connection pool like a run's, on the lab inventory's state dir and agent.
pub fn ssh_pool(inv: &cmfleet::model::inventory::Inventory) -> cmfleet::host::remote::SshPool {
    cmfleet::host::remote::SshPool::new(&cmfleet::host::remote::SshPoolConfig {
        state_dir: inv.fleet.state_dir.clone(),
        auth_sock: inv.fleet.ssh_auth_sock.clone(),
        connects_per_sec: 10,
        group_connects_per_sec: Default::default(),
        keep_masters: false,
    })
    .expect("ssh pool")
}

/// A sink for a test's commands: no log file, events dropped.
pub fn quiet_sink(relay: &str) -> cmfleet::host::remote::LineSink {
    cmfleet::host::remote::LineSink {
        relay: relay.into(),
        step: cmfleet::model::step::Step::FinalSync,
        events: cmfleet::model::events::EventSink::discard(),
        log: None,
    }
}
