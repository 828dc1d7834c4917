//! The fleet benchmark (issue 10): cmfleet against the guide's shell script and Ansible on
//! the same lab fleet, in the same run, alternating; the transfer throughput of one relay
//! (`--throughput`: cmfleet's direct and staged step 1 against the raw `tar | ssh tar`
//! pipe, see fleet/throughput.rs); and the scheduler scale benchmark.
//!
//! ```sh
//! cargo bench --bench fleet -- [--relays 20] [--rounds 3] [--parallel N]
//!     [--only cmfleet,shell,ansible[,cmfleet-defaults]] [--data default|few-large|many-tiny|big]
//!     [--cold] [--throughput] [--size-mib 500] [--tp-subnet 127.79.2]
//!     [--scale] [--no-fleet] [--dir /dev/shm/cmfleet-bench] [--subnet 127.79.1]
//! ```
//!
//! Every contender run gets a fresh lab (`Lab::up` with the same seed: identical OLD
//! trees, empty NEW trees, fresh stand-in state), runs its pre-stage phase (steps 1-2),
//! then the benchmark applies the same mail activity to every OLD host (flag renames,
//! seen messages, new messages, deletions), then the contender runs its cutover phase
//! (steps 3-6). Wall and CPU cover the two phases, not the activity. `--data big` is
//! one relay of 20,000 accounts (560,017 files) with a busy day's activity instead
//! ([`busy_day`]); `--cold` drops the page cache right before every contender's
//! step 3. cmfleet runs the
//! split as operators do (`migrate --until-step 2`, then `migrate`); the peers' files
//! (benches/peers/) run the guide's commands verbatim, split by phase. See
//! docs/performance.md for what is measured and how.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cmfleet::lab::{Activity, CmdeployCost, DataOptions, Kind, Lab, LabOptions, Manifest, Subnet};

// Not benches/throughput.rs: Cargo would make every file in benches/ a bench target.
#[path = "fleet/by_command.rs"]
mod by_command;
#[path = "fleet/throughput.rs"]
mod throughput;

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers");
const CMFLEET: &str = env!("CARGO_BIN_EXE_cmfleet");
const TREES: [&str; 4] = [
    "/home/vmail/mail",
    "/var/lib/acme",
    "/etc/dkimkeys",
    "/var/spool/postfix",
];

/// Mail activity on every OLD host between the two phases (the peers' mutate.py did 150
/// flag renames and 10 new messages; this adds seen messages and deletions).
const ACTIVITY: Activity = Activity {
    new_messages: 10,
    seen: 10,
    flag_changes: 150,
    deletions: 10,
    message_size: 4096,
    seed: 7,
};

/// The mail activity a busy day brings to a relay of `data` (issue 27): a flag renamed
/// on every 17th message, a third of new/ moved to cur/ (every fifth message is in
/// new/), one message in 400 expunged, a few deliveries.
fn busy_day(data: &DataOptions) -> Activity {
    let messages = data.users * data.messages;
    Activity {
        new_messages: 100,
        seen: messages / 5 / 3,
        flag_changes: messages / 17,
        deletions: messages / 400,
        message_size: data.message_size,
        seed: 7,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    /// `cmfleet migrate` with every limit at the benchmark's parallelism.
    Cmfleet,
    /// `cmfleet migrate` with the inventory's default limits (forks 20, transfers 8,
    /// cmdeploy_runs 4, cutovers 4, 10 connects/s).
    CmfleetDefaults,
    /// As `cmfleet`, but pre-stage and cutover days apart: the masters the pre-stage
    /// kept are gone by the cutover (killed between the phases).
    CmfleetDaysApart,
    /// As `cmfleet`, with the fast step 3 (`disable_old = "systemctl"`).
    CmfleetSystemctl,
    /// The guide's relay.sh under `xargs -P N`.
    Shell,
    /// ansible-core, default ssh settings, linear strategy, forks N.
    Ansible,
    /// Not a migration, a measure: the guide's pre-stage, then only a mirroring rsync of
    /// the mailboxes (`rsync -aH --delete`, relay.sh's phase `final`). "The final rsync
    /// alone" that cmfleet's step 4 is held to (issue 27).
    FinalRsync,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Cmfleet => "cmfleet",
            Contender::CmfleetDefaults => "cmfleet-defaults",
            Contender::CmfleetDaysApart => "cmfleet-days-apart",
            Contender::CmfleetSystemctl => "cmfleet-systemctl",
            Contender::Shell => "shell",
            Contender::Ansible => "ansible",
            Contender::FinalRsync => "final-rsync",
        }
    }
    fn parse(s: &str) -> Result<Contender> {
        Ok(match s {
            "cmfleet" => Contender::Cmfleet,
            "cmfleet-defaults" => Contender::CmfleetDefaults,
            "cmfleet-days-apart" => Contender::CmfleetDaysApart,
            "cmfleet-systemctl" => Contender::CmfleetSystemctl,
            "shell" => Contender::Shell,
            "ansible" => Contender::Ansible,
            "final-rsync" => Contender::FinalRsync,
            _ => bail!("unknown contender {s} (cmfleet, cmfleet-defaults, cmfleet-days-apart, cmfleet-systemctl, shell, ansible, final-rsync)"),
        })
    }
}

struct Opts {
    relays: usize,
    rounds: usize,
    parallel: usize,
    only: Vec<Contender>,
    data: DataOptions,
    data_name: String,
    scale: bool,
    fleet: bool,
    throughput: bool,
    size_mib: u64,
    tp_subnet: Subnet,
    dir: PathBuf,
    subnet: Subnet,
    /// What each stand-in cmdeploy run costs (`None`: the stand-in's own ~0.3 s).
    cmdeploy_cost: Option<CmdeployCost>,
    /// `--cmdeploy-model` and `--cmdeploy-scale` as given, for the report.
    cmdeploy_model: String,
    /// `--by-command`: the machine's CPU per command name and phase (process accounting).
    by_command: bool,
    /// The activity between the phases.
    activity: Activity,
    /// `--cold`: drop the page cache right before step 3 (the cut phase).
    cold: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        relays: 20,
        rounds: 3,
        parallel: 0,
        only: vec![Contender::Cmfleet, Contender::Shell, Contender::Ansible],
        data: DataOptions::default(),
        data_name: "default".into(),
        scale: false,
        fleet: true,
        throughput: false,
        size_mib: 500,
        tp_subnet: Subnet::new(79, 2),
        dir: PathBuf::from("/dev/shm/cmfleet-bench"),
        subnet: Subnet::new(79, 1),
        cmdeploy_cost: None,
        cmdeploy_model: "fast (the stand-in's own cost)".into(),
        by_command: false,
        activity: ACTIVITY,
        cold: false,
    };
    let mut relays_given = false;
    let mut model = "fast".to_string();
    let mut model_scale: f64 = 0.1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--relays" => {
                o.relays = val()?.parse()?;
                relays_given = true;
            }
            "--cold" => o.cold = true,
            "--rounds" => o.rounds = val()?.parse()?,
            "--parallel" => o.parallel = val()?.parse()?,
            "--only" => {
                o.only = val()?
                    .split(',')
                    .map(Contender::parse)
                    .collect::<Result<_>>()?
            }
            "--data" => {
                let v = val()?;
                o.data = match v.as_str() {
                    "default" => DataOptions::default(),
                    "few-large" => DataOptions {
                        users: 10,
                        messages: 10,
                        message_size: 1 << 20,
                        seed: 1,
                    },
                    "many-tiny" => DataOptions {
                        users: 300,
                        messages: 50,
                        message_size: 256,
                        seed: 1,
                    },
                    "big" => DataOptions {
                        users: 20_000,
                        messages: 20,
                        message_size: 2048,
                        seed: 1,
                    },
                    _ => bail!("--data default|few-large|many-tiny|big"),
                };
                if v == "big" {
                    o.activity = busy_day(&o.data);
                }
                o.data_name = v;
            }
            "--scale" => o.scale = true,
            "--scale-config" => {
                scale::one(val()?.parse()?, 10_000)?;
                std::process::exit(0);
            }
            "--night" => {
                scale::night(val()?.parse()?)?;
                std::process::exit(0);
            }
            "--no-fleet" => o.fleet = false,
            "--by-command" => o.by_command = true,
            "--throughput" => o.throughput = true,
            "--size-mib" => o.size_mib = val()?.parse()?,
            "--tp-subnet" => o.tp_subnet = val()?.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            "--cmdeploy-model" => model = val()?,
            "--cmdeploy-scale" => model_scale = val()?.parse()?,
            "--dir" => o.dir = val()?.into(),
            "--subnet" => o.subnet = val()?.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            "-h" | "--help" => {
                println!("{}", HELP);
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{HELP}"),
        }
    }
    if o.data_name == "big" && !relays_given {
        o.relays = 1;
    }
    if o.parallel == 0 {
        o.parallel = o.relays;
    }
    match model.as_str() {
        "fast" => {}
        "real" => {
            if !(model_scale.is_finite() && model_scale >= 0.0) {
                bail!("--cmdeploy-scale must be >= 0");
            }
            let c = CmdeployCost::REAL.scaled(model_scale);
            o.cmdeploy_model = format!(
                "real x {model_scale} (wall / controller CPU per run: install,configure {:.1} / {:.1} s, --disable-mail {:.1} / {:.1} s, activate {:.1} / {:.1} s)",
                c.install_configure.wall.as_secs_f64(),
                c.install_configure.cpu.as_secs_f64(),
                c.disable_mail.wall.as_secs_f64(),
                c.disable_mail.cpu.as_secs_f64(),
                c.activate.wall.as_secs_f64(),
                c.activate.cpu.as_secs_f64(),
            );
            o.cmdeploy_cost = Some(c);
        }
        _ => bail!("--cmdeploy-model fast|real"),
    }
    Ok(o)
}

const HELP: &str = "cargo bench --bench fleet -- [--relays 20] [--rounds 3] [--parallel N (default: relays)] \
[--only cmfleet,shell,ansible[,cmfleet-defaults]] [--data default|few-large|many-tiny|big] [--cold] \
[--throughput [--size-mib 500] [--tp-subnet 127.79.2]] [--scale] [--no-fleet] \
[--dir /dev/shm/cmfleet-bench] [--subnet 127.79.1] [--cmdeploy-model fast|real [--cmdeploy-scale 0.1]] \
[--night N] [--by-command]

--cmdeploy-model real: every stand-in cmdeploy run costs the real one's estimated wall time and controller CPU \
(cmfleet::lab::CmdeployCost::REAL, docs/performance.md) times --cmdeploy-scale (default 0.1); fast (default): \
the stand-in's own fraction of a second.
--scale: also simulates nights of 200 and 2,000 relays with the cost model's unscaled durations (tokio's paused \
clock), reporting the makespan against its lower bound and the downtime distribution; --night N: one such night.
--throughput: one relay with --size-mib MiB of random mail; the raw pipe (ssh -A OLD \"tar c | ssh NEW tar x\"), \
cmfleet direct and cmfleet staged step 1, alternating for --rounds rounds, each with the default cipher and \
aes128-gcm; lab in DIR-tp on --tp-subnet. --no-fleet skips the fleet benchmark.
--data big: one relay (unless --relays) of 20,000 accounts x 20 messages of 2 KiB (560,017 files), with a busy \
day's activity between the phases; the report adds step 4's parts, the relay's log size and `cmfleet verify`'s \
wall, CPU and peak RSS.
--cold: sync and drop the page cache (echo 3 > /proc/sys/vm/drop_caches) right before every contender's step 3; \
put --dir on a disk, not tmpfs, for it to mean anything.
--by-command: BSD process accounting (accton, dump-acct: Debian's acct) during each phase, and the CPU of \
every command name on the machine (controller and lab hosts) printed per phase: where the wall time goes.";

fn main() -> Result<()> {
    let o = parse_args()?;
    if o.fleet {
        fleet(&o)?;
    }
    if o.throughput {
        throughput::run(&throughput::Opts {
            size_mib: o.size_mib,
            rounds: o.rounds,
            dir: PathBuf::from(format!("{}-tp", o.dir.display())),
            logs: PathBuf::from(format!("{}-logs", o.dir.display())),
            subnet: o.tp_subnet,
        })?;
    }
    if o.scale {
        scale::run(10_000)?;
        scale::nights(&[200, 2_000])?;
    }
    Ok(())
}

// ---------------------------------------------------------------- process accounting

/// user+sys seconds of this process's waited-for descendants.
fn children_cpu() -> f64 {
    rusage_secs(libc::RUSAGE_CHILDREN)
}

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one measured child process did.
struct ChildRun {
    ok: bool,
    code: i32,
    wall: f64,
    /// The main process's own peak RSS (VmHWM, polled every 10 ms), KiB.
    hwm_kib: u64,
    /// wait4's ru_maxrss: the largest process of the waited tree, KiB.
    tree_maxrss_kib: u64,
}

/// Runs `cmd` to completion with its output in `log`, measuring wall, peak RSS of the
/// main process and of its tree.
fn run_measured(cmd: &mut Command, log: &Path) -> Result<ChildRun> {
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let hwm = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, hwm) = (stop.clone(), hwm.clone());
        std::thread::spawn(move || {
            let p = pid.to_string();
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = status_kib(&p, "VmHWM:") {
                    hwm.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; std's Child is never waited afterwards.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    drop(child);
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    Ok(ChildRun {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        wall,
        hwm_kib: hwm.load(Ordering::Relaxed),
        tree_maxrss_kib: ru.ru_maxrss as u64,
    })
}

/// Children of this process (pid, comm).
fn my_children() -> Vec<(i32, String)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[l + 1..r].to_string();
            let ppid = stat[r + 2..].split_whitespace().nth(1).unwrap_or("");
            if ppid == me {
                out.push((pid, comm));
            }
        }
    }
    out
}

/// After a contender: waits (up to 3 s) for ssh processes it left behind (ControlPersist
/// masters reparented to us, the subreaper), kills what is still there, and reaps every
/// exited child so its CPU lands in RUSAGE_CHILDREN. Returns how many had to be killed.
fn settle() -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut killed = 0;
    loop {
        reap_zombies();
        let left: Vec<i32> = my_children()
            .into_iter()
            .filter(|(_, c)| c == "ssh")
            .map(|(p, _)| p)
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for p in &left {
                // SAFETY: signalling a child of ours.
                unsafe { libc::kill(*p, libc::SIGTERM) };
            }
            killed += left.len();
            std::thread::sleep(Duration::from_millis(200));
            reap_zombies();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

fn reap_zombies() {
    for (pid, _) in my_children() {
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|r| s[r + 2..].starts_with('Z')))
            .unwrap_or(false);
        if zombie {
            let mut st = 0;
            // SAFETY: reaping an exited child of ours.
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        }
    }
}

/// Parses the bash `times` output appended by the accounting wrapper (two lines per run:
/// the shell's own user/sys, its children's).
fn cmdeploy_cpu(acct: &Path) -> (f64, usize) {
    let text = fs::read_to_string(acct).unwrap_or_default();
    let mut total = 0.0;
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        for f in line.split_whitespace() {
            // "0m0.012s"
            if let Some((m, s)) = f.trim_end_matches('s').split_once('m') {
                total += m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    (total, lines / 2)
}

// ---------------------------------------------------------------- the lab

fn fresh_lab(o: &Opts) -> Result<Lab> {
    if o.dir.join("lab.json").exists() {
        let _ = Lab::down(&o.dir);
    }
    let mut opts = LabOptions::new(&o.dir, o.relays, o.subnet);
    opts.data = o.data;
    opts.cmdeploy_cost = o.cmdeploy_cost;
    let lab = Lab::up(opts).context("lab up")?;
    // The accounting wrapper around the stand-in, committed so cmfleet's worktrees see it.
    let acct = lab.dir().join("cmdeploy-cpu.log");
    let wrapper = fs::read_to_string(format!("{PEERS}/cmdeploy-acct"))?
        .replace("@ACCT@", &acct.to_string_lossy());
    fs::write(lab.cmdeploy(), wrapper)?;
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@cmfleet.invalid",
        ])
        .args([
            "commit",
            "-qam",
            "fleet benchmark: account the stand-in's CPU",
        ])
        .current_dir(lab.checkout())
        .status()?;
    if !st.success() {
        bail!("git commit of the accounting wrapper failed");
    }
    Ok(lab)
}

fn apply_activity(lab: &Lab, activity: &Activity) -> Result<()> {
    for r in lab.relays() {
        lab.simulate_activity(r.index, activity)?;
    }
    Ok(())
}

/// `--cold`: every contender's step 3 starts with nothing of the hosts' trees cached.
fn drop_caches() -> Result<()> {
    let st = Command::new("sync").status()?;
    if !st.success() {
        bail!("sync failed");
    }
    fs::write("/proc/sys/vm/drop_caches", "3").context("echo 3 > /proc/sys/vm/drop_caches")
}

/// One copy of the checkout per relay (scripts, www, chatmaild; the venv linked, as
/// cmfleet's workspaces do) with the relay's chatmail.ini, for the peers: concurrent
/// cmdeploy runs from one checkout race. Returns relays.txt ("OLD NEW CHECKOUT" lines).
fn peer_checkouts(lab: &Lab) -> Result<PathBuf> {
    let base = lab.dir().join("peers");
    let mut lines = String::new();
    for r in lab.relays() {
        let co = base.join("co").join(format!("relay{}", r.index));
        fs::create_dir_all(&co)?;
        for sub in ["scripts", "www", "chatmaild"] {
            let st = Command::new("cp")
                .arg("-a")
                .arg(lab.checkout().join(sub))
                .arg(&co)
                .status()?;
            if !st.success() {
                bail!("cp {sub} failed");
            }
        }
        std::os::unix::fs::symlink(lab.checkout().join("venv"), co.join("venv"))?;
        fs::copy(&r.config, co.join("chatmail.ini"))?;
        let _ = writeln!(lines, "{} {} {}", r.old.addr, r.new.addr, co.display());
    }
    let list = base.join("relays.txt");
    fs::write(&list, lines)?;
    Ok(list)
}

// ---------------------------------------------------------------- verification

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Verify {
    relays_ok: usize,
    files_old: usize,
    missing: usize,
    stale: usize,
    bad_owner: usize,
    differs: usize,
    bad_state: usize,
    example: Option<String>,
}

impl Verify {
    fn line(&self, relays: usize) -> String {
        format!(
            "{}/{relays} relays ok; missing {} stale {} bad-owner {} differs {} stand-in-state {}",
            self.relays_ok, self.missing, self.stale, self.bad_owner, self.differs, self.bad_state
        )
    }
}

/// NEW against OLD, tree by tree (the lab's Manifest): missing entries, stale (extra)
/// entries, wrong owner, other differences (kind, size, file mtime, mode); plus the
/// stand-in's record: OLD mail disabled, NEW configured and active.
/// A Postfix spool's queue directories (all but pid/) and the sorted contents of
/// their files (sockets left out).
fn queues(root: &Path) -> Result<BTreeMap<String, Vec<Vec<u8>>>> {
    fn contents(dir: &Path, out: &mut Vec<Vec<u8>>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                contents(&e.path(), out)?;
            } else if ft.is_file() {
                out.push(fs::read(e.path())?);
            }
        }
        Ok(())
    }
    let mut m = BTreeMap::new();
    for e in fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() && name != "pid" {
            let mut files = Vec::new();
            contents(&e.path(), &mut files)?;
            files.sort();
            m.insert(name, files);
        }
    }
    Ok(m)
}

fn verify(lab: &Lab) -> Result<Verify> {
    let mut v = Verify::default();
    for r in lab.relays() {
        let before = (v.missing, v.stale, v.bad_owner, v.differs, v.bad_state);
        for tree in TREES {
            if tree == "/var/spool/postfix" {
                // `postsuper -s` renames queue files after their inodes and the
                // daemons own their sockets and pid/: per queue, contents only.
                let (a, b) = (queues(&r.old.path(tree))?, queues(&r.new.path(tree))?);
                for (q, files) in &a {
                    if b.get(q) != Some(files) {
                        v.differs += 1;
                        if v.example.is_none() {
                            v.example = Some(format!("relay{} queue {q} differs", r.index));
                        }
                    }
                }
                continue;
            }
            let a = Manifest::of(&r.old.path(tree))?;
            let b = Manifest::of(&r.new.path(tree)).unwrap_or_default();
            v.files_old += a.files();
            for (p, ea) in &a.0 {
                let note = |what: &str, v: &mut Verify| {
                    if v.example.is_none() {
                        v.example = Some(format!("relay{} {what}: {tree}/{p}", r.index));
                    }
                };
                match b.0.get(p) {
                    None => {
                        v.missing += 1;
                        note("missing", &mut v);
                    }
                    Some(eb) if (ea.uid, ea.gid) != (eb.uid, eb.gid) => {
                        v.bad_owner += 1;
                        note(
                            &format!("owner {}:{} vs {}:{}", eb.uid, eb.gid, ea.uid, ea.gid),
                            &mut v,
                        );
                    }
                    Some(eb)
                        if ea.kind != eb.kind
                            || ea.mode != eb.mode
                            || (ea.kind != Kind::Dir
                                && (ea.size != eb.size || ea.mtime != eb.mtime)) =>
                    {
                        v.differs += 1;
                        note(&format!("differs ({ea} vs {eb})"), &mut v);
                    }
                    Some(_) => {}
                }
            }
            for p in b.0.keys().filter(|p| !a.0.contains_key(*p)) {
                v.stale += 1;
                if v.example.is_none() {
                    v.example = Some(format!("relay{} stale: {tree}/{p}", r.index));
                }
            }
        }
        let old = lab.host_state(r.old.addr)?;
        let new = lab.host_state(r.new.addr)?;
        if !(old.mail_disabled && !old.active && new.configured && new.active) {
            v.bad_state += 1;
        }
        if before == (v.missing, v.stale, v.bad_owner, v.differs, v.bad_state) {
            v.relays_ok += 1;
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------- contenders

#[derive(Debug, Default, Clone)]
struct RunResult {
    ok: bool,
    wall: f64,
    pre_wall: f64,
    cut_wall: f64,
    /// user+sys of the whole process tree (RUSAGE_CHILDREN delta), seconds.
    cpu: f64,
    /// Of which the stand-in cmdeploy (accounting wrapper), seconds, and its run count.
    cpu_cmdeploy: f64,
    cmdeploy_runs: usize,
    hwm_kib: u64,
    tree_maxrss_kib: u64,
    verify: Verify,
    /// Per-relay downtime, seconds (cmfleet: journal; shell: relay.sh timestamps).
    downtimes: Vec<f64>,
    /// cmfleet: per relay, sum of steps 3-6 durations (the commands back to back).
    busy: Vec<f64>,
    /// ssh processes still running 3 s after the contender ended.
    leftovers: usize,
    /// ssh handshakes per phase (pre, cut): (controller -> a host, OLD -> NEW).
    handshakes: [(usize, usize); 2],
    /// CPU seconds the whole machine was busy per phase (pre, cut).
    machine_cpu: [f64; 2],
    /// Non-zero exits, "PHASE exit CODE".
    codes: Vec<String>,
    /// Step 4's parts, the first relay's (seconds from the step's start).
    step4: Option<Step4>,
    /// Bytes of cmfleet's relay logs (all relays).
    log_bytes: u64,
    /// `cmfleet verify` after the migration: wall s, CPU s, peak RSS KiB.
    verify_run: Option<(f64, f64, u64)>,
}

/// Step 4 of one relay, in seconds from its start.
#[derive(Debug, Default, Clone, Copy)]
struct Step4 {
    total: f64,
    /// The copies ended (cmfleet: the final sync; shell: tar and rsync).
    copied: f64,
    /// cmfleet: OLD's listing sorted and sending (it runs with the copy).
    old_listed: Option<f64>,
    /// cmfleet: NEW settled and listed; shell: its chown done.
    new_settled: f64,
}

impl Step4 {
    fn line(&self) -> String {
        let old = self.old_listed.map_or(String::new(), |t| {
            format!(", OLD's listing ready at {t:.1} s")
        });
        format!(
            "step 4 {:.1} s: copy {:.1} s{old}, then NEW's settle and listing (shell: chown) {:.1} s, compare to the end {:.1} s",
            self.total,
            self.copied,
            self.new_settled - self.copied,
            self.total - self.new_settled
        )
    }
}

/// cmfleet's step 4 of the first relay with a "step 4 times" line in its log (the
/// last such line: the pass that ended the step), and the logs' total size.
fn cmfleet_step4(lab: &Lab) -> (Option<Step4>, u64) {
    let logs = lab.dir().join(".cmfleet/logs");
    let mut bytes = 0;
    let mut found = None;
    let mut paths: Vec<PathBuf> = fs::read_dir(&logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    for p in paths {
        bytes += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let text = fs::read_to_string(&p).unwrap_or_default();
        let Some(line) = text.lines().rev().find(|l| l.starts_with("step 4 times:")) else {
            continue;
        };
        // "step 4 times: copy done at 9.1 s, old's listing at 4.0 s, new's settle and
        // listing at 12.3 s, compared at 12.6 s"
        let secs: Vec<Option<f64>> = line
            .split(" at ")
            .skip(1)
            .map(|w| w.split(' ').next().and_then(|n| n.parse().ok()))
            .collect();
        if found.is_none() {
            if let [Some(copied), old, Some(new), Some(total)] = secs[..] {
                found = Some(Step4 {
                    total,
                    copied,
                    old_listed: old,
                    new_settled: new,
                });
            }
        }
    }
    (found, bytes)
}

/// The shell's step 4 of its first relay (relay.sh's peers/step4.txt).
fn shell_step4(lab: &Lab) -> Option<Step4> {
    let t = fs::read_to_string(lab.dir().join("peers/step4.txt")).ok()?;
    let f: Vec<f64> = t
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let [a, b, c] = f[..] else { return None };
    Some(Step4 {
        total: (c - a) / 1000.0,
        copied: (b - a) / 1000.0,
        old_listed: None,
        new_settled: (c - a) / 1000.0,
    })
}

/// `cmfleet verify` of the migrated lab: wall, CPU (its process tree) and peak RSS.
fn measure_verify(lab: &Lab, logs: &Path, round: usize) -> Result<(f64, f64, u64)> {
    let mut cmd = Command::new(CMFLEET);
    cmd.arg("verify").arg("-i").arg(lab.inventory());
    let cpu0 = children_cpu();
    let run = run_measured(&mut cmd, &logs.join(format!("{round}-cmfleet-verify.log")))?;
    Ok((run.wall, children_cpu() - cpu0, run.hwm_kib))
}

impl RunResult {
    /// Every relay reached the end state with all of OLD's files on NEW (stale files
    /// still make the result wrong, but the run is timed like the others).
    fn completed(&self) -> bool {
        self.verify.bad_state == 0 && self.verify.missing == 0
    }
}

struct Phase {
    cmd: Command,
    name: &'static str,
}

fn cmfleet_phases(lab: &Lab, o: &Opts, defaults: bool, systemctl: bool) -> Result<Vec<Phase>> {
    let inv = lab.inventory();
    if systemctl {
        let text = fs::read_to_string(&inv)?;
        let fast = "[defaults]\ndisable_old = \"systemctl\"\n";
        fs::write(&inv, text.replacen("[defaults]\n", fast, 1))?;
    }
    if !defaults {
        let text = fs::read_to_string(&inv)?;
        let p = o.parallel;
        let limits = format!(
            "[fleet]\nforks = {p}\ntransfers = {p}\ncmdeploy_runs = {p}\ncutovers = {p}\nssh_connects_per_sec = 1000\n"
        );
        fs::write(&inv, text.replacen("[fleet]\n", &limits, 1))?;
    }
    let mk = |until: Option<&str>| {
        let mut c = Command::new(CMFLEET);
        c.arg("migrate")
            .arg("-i")
            .arg(&inv)
            .args(["--yes", "--progress", "plain"]);
        if let Some(u) = until {
            c.args(["--until-step", u]);
        }
        c.env_remove("CMDEPLOY_STAGES");
        c
    };
    Ok(vec![
        Phase {
            cmd: mk(Some("2")),
            name: "pre",
        },
        Phase {
            cmd: mk(None),
            name: "cut",
        },
    ])
}

/// relay.sh under `xargs -P N`: phase `pre`, then `cut` (the guide's downtime) or
/// `final` (the final rsync alone).
fn shell_phases(lab: &Lab, o: &Opts, cut: &'static str) -> Result<Vec<Phase>> {
    let list = peer_checkouts(lab)?;
    let mk = |phase: &str| -> Result<Command> {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "exec xargs -P {} -L 1 {PEERS}/relay.sh {phase} < {}",
                o.parallel,
                list.display()
            ))
            .env("BENCH", lab.dir())
            .env("SSH_AUTH_SOCK", lab.agent_sock())
            .env_remove("CMDEPLOY_STAGES");
        Ok(c)
    };
    Ok(vec![
        Phase {
            cmd: mk("pre")?,
            name: "pre",
        },
        Phase {
            cmd: mk(cut)?,
            name: cut,
        },
    ])
}

fn ansible_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-ansible-venv")
}

/// Installs ansible-core into target/bench-ansible-venv with pip (once).
fn ensure_ansible() -> Result<()> {
    let venv = ansible_venv();
    if venv.join("bin/ansible-playbook").exists() {
        return Ok(());
    }
    eprintln!("installing ansible-core into {} ...", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "ansible-core"])
            .status()?
            .success();
    if !ok || !venv.join("bin/ansible-playbook").exists() {
        bail!("pip install ansible-core failed");
    }
    Ok(())
}

fn ansible_phases(lab: &Lab, o: &Opts) -> Result<Vec<Phase>> {
    let list = peer_checkouts(lab)?;
    let _ = list;
    let ans = lab.dir().join("ans");
    fs::create_dir_all(&ans)?;
    fs::copy(format!("{PEERS}/ansible.cfg"), ans.join("ansible.cfg"))?;
    fs::copy(
        format!("{PEERS}/ansible-migrate.yml"),
        ans.join("migrate.yml"),
    )?;
    let mut inv = String::from("[relays]\n");
    for r in lab.relays() {
        let co = lab.dir().join("peers/co").join(format!("relay{}", r.index));
        let _ = writeln!(
            inv,
            "relay{i} ansible_host={o} old_ip={o} new_ip={n} new_host=relay{i}new checkout={c}",
            i = r.index,
            o = r.old.addr,
            n = r.new.addr,
            c = co.display()
        );
    }
    inv += "[news]\n";
    for r in lab.relays() {
        let _ = writeln!(inv, "relay{}new ansible_host={}", r.index, r.new.addr);
    }
    inv += "[all:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n";
    fs::write(ans.join("inventory.ini"), inv)?;
    let mk = |phase: &str| {
        let mut c = Command::new("bash");
        c.arg(format!("{PEERS}/ansible-run.sh"))
            .args([phase, "default", "linear", &o.parallel.to_string()])
            .env("BENCH", lab.dir())
            .env("ANSIBLE_VENV", ansible_venv())
            .env("SSH_AUTH_SOCK", lab.agent_sock())
            .env_remove("CMDEPLOY_STAGES");
        c
    };
    Ok(vec![
        Phase {
            cmd: mk("pre"),
            name: "pre",
        },
        Phase {
            cmd: mk("cut"),
            name: "cut",
        },
    ])
}

/// cmfleet's journal: per relay downtime and the sum of steps 3-6 durations.
fn cmfleet_journal(lab: &Lab) -> Result<(Vec<f64>, Vec<f64>)> {
    let state = lab.dir().join(".cmfleet");
    let path = fs::read_dir(&state)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".journal.json"))
        .context("no journal in the state dir")?;
    let j: serde_json::Value = serde_json::from_str(&fs::read_to_string(path)?)?;
    let mut down = Vec::new();
    let mut busy = Vec::new();
    if let Some(relays) = j["relays"].as_object() {
        for r in relays.values() {
            if let (Some(a), Some(b)) = (r["down_since_ms"].as_u64(), r["up_again_ms"].as_u64()) {
                down.push((b.saturating_sub(a)) as f64 / 1000.0);
            }
            let mut s = 0u64;
            for step in r["steps"].as_array().into_iter().flatten().skip(2) {
                if let (Some(a), Some(b)) =
                    (step["started_ms"].as_u64(), step["finished_ms"].as_u64())
                {
                    s += b.saturating_sub(a);
                }
            }
            busy.push(s as f64 / 1000.0);
        }
    }
    Ok((down, busy))
}

/// Every lab host's own ssh leaves from the host's address, so each NEW's sshd log
/// tells the controller's connections (from 127.0.0.1) from OLD's.
fn bind_outgoing_ssh(lab: &Lab) -> Result<()> {
    for h in lab.hosts() {
        fs::write(
            h.path("/root/.ssh/config"),
            format!("Host *\n  BindAddress {}\n", h.addr),
        )?;
    }
    Ok(())
}

/// ssh logins so far over every lab host: (from the controller, from another host).
/// Another host's ssh leaves from its own address (`bind_outgoing_ssh`); the
/// controller's from 127.0.0.1, or from the host's own address once the lab puts
/// that on `lo` (Postfix needs it there).
fn handshakes(lab: &Lab) -> (usize, usize) {
    let mut n = (0, 0);
    for h in lab.hosts() {
        let log = fs::read_to_string(h.sshd_log()).unwrap_or_default();
        let own = format!(" from {} ", h.addr);
        for l in log.lines().filter(|l| l.contains("Accepted publickey")) {
            if l.contains(" from 127.0.0.1 ") || l.contains(&own) {
                n.0 += 1;
            } else {
                n.1 += 1;
            }
        }
    }
    n
}

/// CPU seconds the whole machine spent busy so far (/proc/stat: user, nice, system,
/// irq, softirq, steal; USER_HZ is 100 on Linux). In the lab the hosts are on the
/// controller's machine: this counts their work too, which the controller's own CPU
/// (its children) does not.
fn machine_cpu() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum::<f64>();
    busy / 100.0
}

fn run_contender(c: Contender, o: &Opts, round: usize) -> Result<RunResult> {
    let t = Instant::now();
    let lab = fresh_lab(o)?;
    let phases = match c {
        Contender::Cmfleet => cmfleet_phases(&lab, o, false, false)?,
        Contender::CmfleetDefaults => cmfleet_phases(&lab, o, true, false)?,
        Contender::CmfleetDaysApart => cmfleet_phases(&lab, o, false, false)?,
        Contender::CmfleetSystemctl => cmfleet_phases(&lab, o, false, true)?,
        Contender::Shell => shell_phases(&lab, o, "cut")?,
        Contender::FinalRsync => shell_phases(&lab, o, "final")?,
        Contender::Ansible => ansible_phases(&lab, o)?,
    };
    eprintln!(
        "  [{round}] {:<16} lab up in {:.1} s",
        c.name(),
        t.elapsed().as_secs_f64()
    );
    let mut res = RunResult {
        ok: true,
        ..Default::default()
    };
    let logs = PathBuf::from(format!("{}-logs", o.dir.display()));
    fs::create_dir_all(&logs)?;
    let acct = lab.dir().join("cmdeploy-cpu.log");
    bind_outgoing_ssh(&lab)?;
    let phase_count = phases.len();
    for (i, mut ph) in phases.into_iter().enumerate() {
        if i == 1 {
            apply_activity(&lab, &o.activity)?;
            if o.cold {
                drop_caches()?;
            }
        }
        let seen = handshakes(&lab);
        let cpu0 = children_cpu();
        let machine0 = machine_cpu();
        let log = logs.join(format!("{round}-{}-{}.log", c.name(), ph.name));
        let acct = o
            .by_command
            .then(|| by_command::Recording::start(&logs.join("pacct")))
            .transpose()?;
        let run = run_measured(&mut ph.cmd, &log)?;
        if i + 1 == phase_count || c == Contender::CmfleetDaysApart {
            res.leftovers += settle();
        } else {
            // The same night: what the pre-stage kept (cmfleet's masters) stays
            // for the cutover; their CPU is counted when they are reaped at the end.
            reap_zombies();
        }
        // After the settle: kept masters and their sshd count where they end (a
        // pre-stage's in the cutover).
        if let Some(rec) = acct {
            eprintln!(
                "  [{round}] {:<16} {} machine CPU by command: {}",
                c.name(),
                ph.name,
                by_command::line(&rec.stop()?, 14)
            );
        }
        let now = handshakes(&lab);
        res.handshakes[i.min(1)] = (now.0 - seen.0, now.1 - seen.1);
        res.machine_cpu[i.min(1)] = machine_cpu() - machine0;
        res.cpu += children_cpu() - cpu0;
        res.wall += run.wall;
        if i == 0 {
            res.pre_wall = run.wall;
        } else {
            res.cut_wall = run.wall;
        }
        res.hwm_kib = res.hwm_kib.max(run.hwm_kib);
        res.tree_maxrss_kib = res.tree_maxrss_kib.max(run.tree_maxrss_kib);
        if !run.ok {
            res.ok = false;
            res.codes.push(format!("{} exit {}", ph.name, run.code));
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!(
                "  {} phase {} FAILED; log {} ends:",
                c.name(),
                ph.name,
                log.display()
            );
            for l in tail.iter().rev() {
                eprintln!("    {l}");
            }
        }
    }
    (res.cpu_cmdeploy, res.cmdeploy_runs) = cmdeploy_cpu(&acct);
    // The final rsync alone leaves NEW unactivated and without the state: nothing to
    // check, and checking would only slow the round.
    if c != Contender::FinalRsync {
        res.verify = verify(&lab)?;
    }
    match c {
        Contender::Cmfleet
        | Contender::CmfleetDefaults
        | Contender::CmfleetDaysApart
        | Contender::CmfleetSystemctl => {
            (res.downtimes, res.busy) = cmfleet_journal(&lab).unwrap_or_default();
            (res.step4, res.log_bytes) = cmfleet_step4(&lab);
            if c == Contender::Cmfleet {
                res.verify_run = Some(measure_verify(&lab, &logs, round)?);
            }
        }
        Contender::Shell => {
            let t = fs::read_to_string(lab.dir().join("peers/downtime.txt")).unwrap_or_default();
            res.downtimes = t
                .lines()
                .filter_map(|l| {
                    let f: Vec<u64> = l
                        .split_whitespace()
                        .skip(1)
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (f.len() == 2).then(|| (f[1] - f[0]) as f64 / 1000.0)
                })
                .collect();
            res.step4 = shell_step4(&lab);
        }
        Contender::FinalRsync => res.step4 = shell_step4(&lab),
        Contender::Ansible => {}
    }
    let [(pre_c, pre_o), (cut_c, cut_o)] = res.handshakes;
    eprintln!(
        "  [{round}] {:<16} ssh handshakes per relay: pre {:.1} controller + {:.1} old->new, cut {:.1} + {:.1} (the stand-in cmdeploy's own included: 1 per run)",
        c.name(),
        pre_c as f64 / o.relays as f64,
        pre_o as f64 / o.relays as f64,
        cut_c as f64 / o.relays as f64,
        cut_o as f64 / o.relays as f64,
    );
    eprintln!(
        "  [{round}] {:<16} wall {:.1} s (pre {:.1} + cut {:.1}), cpu {:.1} s (stand-in {:.1} s, {} runs), rss {:.1} MiB, {}{}",
        c.name(),
        res.wall,
        res.pre_wall,
        res.cut_wall,
        res.cpu,
        res.cpu_cmdeploy,
        res.cmdeploy_runs,
        res.hwm_kib as f64 / 1024.0,
        res.verify.line(o.relays),
        if res.ok {
            String::new()
        } else {
            format!(" ({})", res.codes.join(", "))
        }
    );
    eprintln!(
        "  [{round}] {:<16} machine CPU (controller and every lab host): pre {:.1} s, cut {:.1} s",
        c.name(),
        res.machine_cpu[0],
        res.machine_cpu[1]
    );
    if let Some(e) = &res.verify.example {
        eprintln!("      e.g. {e}");
    }
    if let Some(s4) = &res.step4 {
        eprintln!("  [{round}] {:<16} {}", c.name(), s4.line());
    }
    if let Some((wall, cpu, hwm)) = res.verify_run {
        eprintln!(
            "  [{round}] {:<16} verify: wall {wall:.1} s, CPU {cpu:.1} s, peak RSS {:.1} MiB; relay logs {:.2} MB",
            c.name(),
            hwm as f64 / 1024.0,
            res.log_bytes as f64 / 1e6
        );
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        Lab::down(lab.dir())?;
    }
    reap_zombies();
    Ok(res)
}

// ---------------------------------------------------------------- report

fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s[0], s[s.len() - 1])
}

/// What every contender's ssh offers: none of them sets KexAlgorithms or Ciphers
/// (cmfleet's default, the shell's and ansible's), so OpenSSH's own lists apply.
fn ssh_algorithms() -> String {
    let out = std::process::Command::new("ssh")
        .args(["-G", "-F", "/dev/null", "lab-host"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().split(',').next())
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "OpenSSH's defaults (kex {} first, cipher {} first)",
        first("kexalgorithms "),
        first("ciphers ")
    )
}

fn fleet(o: &Opts) -> Result<()> {
    // Orphaned ssh masters (ControlPersist, `ssh -f`) are reparented to us, so their CPU
    // is counted once we reap them.
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut only = o.only.clone();
    if only.contains(&Contender::Ansible) {
        if let Err(e) = ensure_ansible() {
            eprintln!("ansible unavailable: {e:#}; continuing without it");
            only.retain(|c| *c != Contender::Ansible);
        }
    }
    eprintln!(
        "fleet benchmark: {} relays, parallelism {}, {} rounds, data {} ({} users x {} messages x {} B), lab in {}",
        o.relays,
        o.parallel,
        o.rounds,
        o.data_name,
        o.data.users,
        o.data.messages,
        o.data.message_size,
        o.dir.display()
    );
    eprintln!(
        "ssh algorithms, the same for every contender: {}",
        ssh_algorithms()
    );
    eprintln!("cmdeploy cost model: {}", o.cmdeploy_model);
    let mut results: BTreeMap<Contender, Vec<RunResult>> = BTreeMap::new();
    for round in 1..=o.rounds {
        for &c in &only {
            let r = run_contender(c, o, round)?;
            results.entry(c).or_default().push(r);
        }
    }
    report(o, &only, &results);
    Ok(())
}

fn report(o: &Opts, only: &[Contender], results: &BTreeMap<Contender, Vec<RunResult>>) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## fleet: {} relays, parallelism {}, {} rounds, data {} ({}x{}x{} B per relay){}\n",
        o.relays,
        o.parallel,
        o.rounds,
        o.data_name,
        o.data.users,
        o.data.messages,
        o.data.message_size,
        if o.cold {
            ", cold (page cache dropped before step 3)"
        } else {
            ", warm"
        }
    );
    let a = &o.activity;
    let _ = writeln!(
        out,
        "activity between the phases, per relay: {} flag changes, {} new/ -> cur/, {} deletions, {} deliveries\n",
        a.flag_changes, a.seen, a.deletions, a.new_messages
    );
    let _ = writeln!(out, "cmdeploy cost model: {}\n", o.cmdeploy_model);
    let _ = writeln!(
        out,
        "| contender | wall median (min-max) | pre / cut phase | controller CPU | CPU w/o stand-in | peak RSS main | largest process | downtime median / max | result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    // The final rsync alone migrates nothing (NEW is never activated): it is reported
    // under step 4's parts, not as a contender.
    for &c in only.iter().filter(|c| **c != Contender::FinalRsync) {
        let Some(all) = results.get(&c) else { continue };
        let rs: Vec<RunResult> = all.iter().filter(|r| r.completed()).cloned().collect();
        if rs.is_empty() {
            let _ = writeln!(out, "| {} | no run completed | | | | | | | |", c.name());
            continue;
        }
        let incomplete = all.len() - rs.len();
        let f = |g: fn(&RunResult) -> f64| stats(&rs.iter().map(g).collect::<Vec<_>>());
        let (w, wmin, wmax) = f(|r| r.wall);
        let (pre, _, _) = f(|r| r.pre_wall);
        let (cut, _, _) = f(|r| r.cut_wall);
        let (cpu, _, _) = f(|r| r.cpu);
        let (cpux, _, _) = f(|r| r.cpu - r.cpu_cmdeploy);
        let hwm = rs.iter().map(|r| r.hwm_kib).max().unwrap_or(0) as f64 / 1024.0;
        let tree = rs.iter().map(|r| r.tree_maxrss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let all_down: Vec<f64> = rs.iter().flat_map(|r| r.downtimes.clone()).collect();
        let down = if all_down.is_empty() {
            format!("~{cut:.1} s (cut phase)")
        } else {
            let (m, _, mx) = stats(&all_down);
            format!("{m:.2} s / {mx:.2} s")
        };
        let v = &rs[rs.len() - 1].verify;
        let same = rs.iter().all(|r| r.verify == *v);
        let fails: Vec<String> = rs.iter().flat_map(|r| r.codes.clone()).collect();
        let _ = writeln!(
            out,
            "| {} | {w:.1} s ({wmin:.1}-{wmax:.1}) | {pre:.1} / {cut:.1} s | {cpu:.1} s | {cpux:.1} s | {hwm:.1} MiB | {tree:.1} MiB | {down} | {}{}{}{} |",
            c.name(),
            v.line(o.relays),
            if same { "" } else { " (varied by round)" },
            if incomplete > 0 {
                format!("; {incomplete} of {} runs did not complete (left out)", all.len())
            } else {
                String::new()
            },
            if fails.is_empty() {
                String::new()
            } else {
                format!("; non-zero exits: {}", fails.join(", "))
            },
        );
    }
    let cm = results.get(&Contender::Cmfleet);
    for other in [Contender::Shell, Contender::Ansible] {
        let (Some(a), Some(b)) = (cm, results.get(&other)) else {
            continue;
        };
        // Pairs of the same round where both completed.
        let pairs: Vec<usize> = (0..a.len().min(b.len()))
            .filter(|&i| a[i].completed() && b[i].completed())
            .collect();
        let ratio = |g: fn(&RunResult) -> f64| {
            let v: Vec<f64> = pairs.iter().map(|&i| g(&a[i]) / g(&b[i])).collect();
            let (m, lo, hi) = stats(&v);
            format!(
                "{m:.2} ({lo:.2}-{hi:.2}; {})",
                v.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let _ = writeln!(
            out,
            "\ncmfleet/{} per round: wall {}, CPU {}, CPU w/o stand-in {}",
            other.name(),
            ratio(|r| r.wall),
            ratio(|r| r.cpu),
            ratio(|r| r.cpu - r.cpu_cmdeploy)
        );
    }
    if let Some(a) = cm {
        let a: Vec<RunResult> = a.iter().filter(|r| r.completed()).cloned().collect();
        let down: Vec<f64> = a.iter().flat_map(|r| r.downtimes.clone()).collect();
        let busy: Vec<f64> = a.iter().flat_map(|r| r.busy.clone()).collect();
        let ratio: Vec<f64> = down.iter().zip(&busy).map(|(d, b)| d / b).collect();
        let (dm, _, dx) = stats(&down);
        let (bm, _, _) = stats(&busy);
        let (rm, _, rx) = stats(&ratio);
        let _ = writeln!(
            out,
            "cmfleet downtime per relay: median {dm:.2} s, max {dx:.2} s; its steps 3-6 back to back (sum of step durations): median {bm:.2} s; downtime/steps median {rm:.2}, max {rx:.2}"
        );
        let left: usize = a.iter().map(|r| r.leftovers).sum();
        if left > 0 {
            let _ = writeln!(
                out,
                "cmfleet left {left} ssh processes running after exit (killed by the benchmark)"
            );
        }
    }
    if let Some(s) = results.get(&Contender::Shell) {
        let down: Vec<f64> = s.iter().flat_map(|r| r.downtimes.clone()).collect();
        let (m, _, x) = stats(&down);
        let _ = writeln!(out, "shell downtime per relay (relay.sh step 3 start -> step 6 end): median {m:.2} s, max {x:.2} s");
        // The guide's sequence is the baseline every downtime change is measured by.
        for c in only.iter().filter(|c| **c != Contender::Shell) {
            let Some(rs) = results.get(c) else { continue };
            let d: Vec<f64> = rs
                .iter()
                .filter(|r| r.completed())
                .flat_map(|r| r.downtimes.clone())
                .collect();
            if d.is_empty() || down.is_empty() {
                continue;
            }
            let (cm, _, cx) = stats(&d);
            let _ = writeln!(
                out,
                "downtime {} / the guide's sequence (shell): median {:.2}, max {:.2}",
                c.name(),
                cm / m,
                cx / x
            );
        }
    }
    let parts: Vec<(Contender, Vec<Step4>)> = only
        .iter()
        .filter_map(|c| {
            let rs = results.get(c)?;
            let v: Vec<Step4> = rs
                .iter()
                .filter(|r| r.completed() || *c == Contender::FinalRsync)
                .filter_map(|r| r.step4)
                .collect();
            (!v.is_empty()).then_some((*c, v))
        })
        .collect();
    if !parts.is_empty() {
        let _ = writeln!(
            out,
            "\nstep 4's parts (first relay, median over rounds, seconds from the step's start):\n"
        );
        let _ = writeln!(
            out,
            "| contender | step 4 | copy | OLD's listing ready | NEW's settle + listing (shell: chown) | compare to the end | step 4 / its copy |\n|---|---|---|---|---|---|---|"
        );
        for (c, v) in &parts {
            let m = |g: fn(&Step4) -> f64| stats(&v.iter().map(g).collect::<Vec<_>>()).0;
            let old: Vec<f64> = v.iter().filter_map(|s| s.old_listed).collect();
            let old = if old.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1}", stats(&old).0)
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {old} | {:.1} | {:.1} | {:.2} |",
                c.name(),
                m(|s| s.total),
                m(|s| s.copied),
                m(|s| s.new_settled - s.copied),
                m(|s| s.total - s.new_settled),
                m(|s| s.total / s.copied),
            );
        }
    }
    // Issue 27's target: cmfleet's step 4 against the final rsync alone, round by round
    // (each round's two labs were made, pre-staged and changed the same way).
    if let (Some(a), Some(b)) = (cm, results.get(&Contender::FinalRsync)) {
        let v: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(a, _)| a.completed())
            .filter_map(|(a, b)| Some(a.step4?.total / b.step4?.total))
            .collect();
        if !v.is_empty() {
            let (m, lo, hi) = stats(&v);
            let _ = writeln!(
                out,
                "
step 4 cmfleet / the final rsync alone (final-rsync: `rsync -aH --delete` of the mailboxes, OLD -> NEW), per round: median {m:.2} ({lo:.2}-{hi:.2})"
            );
        }
    }
    if let Some(rs) = cm {
        let v: Vec<(f64, f64, u64)> = rs.iter().filter_map(|r| r.verify_run).collect();
        if !v.is_empty() {
            let (w, _, _) = stats(&v.iter().map(|x| x.0).collect::<Vec<_>>());
            let (c, _, _) = stats(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let rss = v.iter().map(|x| x.2).max().unwrap_or(0) as f64 / 1024.0;
            let logs = rs.iter().map(|r| r.log_bytes).max().unwrap_or(0) as f64 / 1e6;
            let _ = writeln!(
                out,
                "\ncmfleet verify after the migration: wall {w:.1} s, CPU {c:.1} s (median), peak RSS {rss:.1} MiB (max); relay logs {logs:.2} MB (max)"
            );
        }
    }
    let _ = writeln!(out, "\nssh handshakes per relay, median over rounds (controller -> hosts + OLD -> NEW; the stand-in cmdeploy's own ssh, 1 per run, included):\n");
    let _ = writeln!(out, "| contender | pre-stage | cutover |\n|---|---|---|");
    for c in only {
        let Some(rs) = results.get(c) else { continue };
        let per = |phase: usize, side: usize| {
            let v: Vec<f64> = rs
                .iter()
                .map(|r| {
                    let (a, b) = r.handshakes[phase];
                    [a, b][side] as f64 / o.relays as f64
                })
                .collect();
            stats(&v).0
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} + {:.1} | {:.1} + {:.1} |",
            c.name(),
            per(0, 0),
            per(0, 1),
            per(1, 0),
            per(1, 1)
        );
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- scheduler scale

mod scale {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::{bail, Result};
    use cmfleet::model::events::EventSink;
    use cmfleet::model::inventory::{Inventory, Limits, Relay, Wave};
    use cmfleet::model::step::Step;
    use cmfleet::model::step::{StepOutcome, StepSuccess};
    use cmfleet::pipeline::scheduler::{Cancel, Job, Scheduler, StepRunner};

    /// Zero-duration steps.
    struct Nop;

    impl StepRunner for Nop {
        fn run<'a>(
            &'a self,
            _relay: &'a Relay,
            _step: Step,
        ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>> {
            Box::pin(async { Ok(StepSuccess::default()) })
        }
    }

    fn fleet(n: usize) -> Result<(tempfile::TempDir, Vec<Relay>)> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("c.ini"), "mail_domain = x\n")?;
        let mut toml = String::from("[fleet]\ncmdeploy = \"x\"\n");
        for i in 0..n {
            let (a, b) = (i / 250, i % 250 + 1);
            toml.push_str(&format!(
                "[[relay]]\nmail_domain = \"r{i}.example.org\"\nconfig = \"c.ini\"\n\
                 old = {{ ssh = \"10.1.{a}.{b}\", ip4 = \"10.1.{a}.{b}\" }}\nnew = {{ ssh = \"10.2.{a}.{b}\", ip4 = \"10.2.{a}.{b}\" }}\n"
            ));
        }
        let path = dir.path().join("f.toml");
        std::fs::write(&path, toml)?;
        let inv = Inventory::load(&path)?;
        Ok((dir, inv.relays))
    }

    fn kib(field: &str) -> u64 {
        super::status_kib("self", field).unwrap_or(0)
    }

    /// Each configuration in a fresh process, so one run's freed memory does not hide
    /// the next one's peak.
    /// Runs this benchmark again as `OPTION N` in a fresh process (its peak RSS is
    /// its own) and prints the table row it prints.
    fn print_row_of(option: &str, n: usize) -> Result<()> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([option, &n.to_string()])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!("{option} {n}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn run(n: usize) -> Result<()> {
        println!("\n## scheduler scale: {n} simulated relays x 6 zero-duration steps, 2 worker threads\n");
        println!("| limits | wall | CPU | CPU per relay-step | peak RSS of the process | of which the inventory and jobs | scheduler's peak increase per relay | done |");
        println!("|---|---|---|---|---|---|---|---|");
        for i in 0..CONFIGS {
            print_row_of("--scale-config", i)?;
        }
        println!("\ntargets: < 20 µs CPU per relay-step, < 4 KiB per relay");
        Ok(())
    }

    // ------------------------------------------------------------ simulated nights

    /// A relay's step durations in the model, seconds.
    #[derive(Clone, Copy)]
    struct Durations {
        initial_sync: f64,
        preconfigure: f64,
        disable_old: f64,
        final_sync: f64,
        dns: f64,
        activate: f64,
    }

    impl Durations {
        fn of(&self, step: Step) -> f64 {
            match step {
                Step::InitialSync => self.initial_sync,
                Step::Preconfigure => self.preconfigure,
                Step::DisableOld => self.disable_old,
                Step::FinalSync => self.final_sync,
                Step::Dns => self.dns,
                Step::Activate => self.activate,
            }
        }
        /// The relay's own shortest sequence (steps 5 and 6 side by side).
        fn sequence(&self) -> f64 {
            self.initial_sync + self.preconfigure + self.cutover()
        }
        /// Its shortest downtime: step 3 to the later of 5 and 6.
        fn cutover(&self) -> f64 {
            self.disable_old + self.final_sync + self.dns.max(self.activate)
        }
        /// The guide's downtime for the same relay: steps 3 to 6 one after another.
        fn guide(&self) -> f64 {
            self.disable_old + self.final_sync + self.dns + self.activate
        }
        fn cmdeploy(&self) -> f64 {
            self.preconfigure + self.disable_old + self.activate
        }
        fn transfers(&self) -> f64 {
            self.initial_sync + self.final_sync
        }
    }

    /// Nominal transfer and DNS durations of the model (cmdeploy's are
    /// `CmdeployCost::REAL`): a relay of ~20 GiB of mail copied at ~40 MiB/s between
    /// datacenters (step 1: 10 min), a final sync of the delta since then plus the
    /// state and the proof's two listings (step 4: 30 s), and the DNS switch until
    /// the authoritative servers serve the new address (step 5: 60 s).
    const INITIAL_SYNC_S: f64 = 600.0;
    const FINAL_SYNC_S: f64 = 30.0;
    const DNS_S: f64 = 60.0;

    /// Relay `i`'s durations: relays differ in size (transfers x 0.25..1.75) and
    /// in latency to the controller (cmdeploy runs x 0.9..1.1), deterministically.
    fn durations(i: usize) -> Durations {
        let c = cmfleet::lab::CmdeployCost::REAL;
        // A fixed pseudo-random sequence (splitmix64): the same night every run.
        let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let size = 0.25 + 1.5 * next();
        let mut latency = || 0.9 + 0.2 * next();
        Durations {
            initial_sync: INITIAL_SYNC_S * size,
            preconfigure: c.install_configure.wall.as_secs_f64() * latency(),
            disable_old: c.disable_mail.wall.as_secs_f64() * latency(),
            final_sync: FINAL_SYNC_S * size,
            dns: DNS_S,
            activate: c.activate.wall.as_secs_f64() * latency(),
        }
    }

    /// Sleeps each step's model duration on the paused clock and records when each
    /// relay went down (step 3 started) and came back (both 5 and 6 done).
    struct Night {
        durations: std::collections::HashMap<String, Durations>,
        marks: std::sync::Mutex<std::collections::HashMap<String, [f64; 3]>>,
        start: tokio::time::Instant,
    }

    impl StepRunner for Night {
        fn run<'a>(
            &'a self,
            relay: &'a Relay,
            step: Step,
        ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>> {
            Box::pin(async move {
                let d = self.durations.get(&relay.name).map_or(0.0, |d| d.of(step));
                let now = || self.start.elapsed().as_secs_f64();
                if step == Step::DisableOld {
                    self.mark(&relay.name, 0, now());
                }
                tokio::time::sleep(std::time::Duration::from_secs_f64(d)).await;
                match step {
                    Step::Dns => self.mark(&relay.name, 1, now()),
                    Step::Activate => self.mark(&relay.name, 2, now()),
                    _ => {}
                }
                Ok(StepSuccess::default())
            })
        }
    }

    impl Night {
        fn mark(&self, relay: &str, i: usize, t: f64) {
            if let Ok(mut m) = self.marks.lock() {
                m.entry(relay.to_string()).or_default()[i] = t;
            }
        }
    }

    fn percentile(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    /// Each night in a fresh process (its own peak RSS).
    pub fn nights(sizes: &[usize]) -> Result<()> {
        let c = cmfleet::lab::CmdeployCost::REAL;
        println!(
            "\n## simulated nights: default limits (forks 20, transfers 8, cmdeploy_runs 4, cutovers 4), tokio's paused clock\n"
        );
        println!(
            "model per relay: step 1 {INITIAL_SYNC_S:.0} s and step 4 {FINAL_SYNC_S:.0} s x size 0.25-1.75; step 2 {:.0} s, step 3 {:.0} s, step 6 {:.0} s x latency 0.9-1.1 (cmdeploy: CmdeployCost::REAL); step 5 {DNS_S:.0} s beside step 6\n",
            c.install_configure.wall.as_secs_f64(),
            c.disable_mail.wall.as_secs_f64(),
            c.activate.wall.as_secs_f64(),
        );
        println!("lower bound = max(first step 1 + cmdeploy time / cmdeploy_runs, transfer time / transfers, cutover windows / cutovers, relay sequences / forks, longest relay sequence)\n");
        println!("| relays | makespan | lower bound (binding term) | makespan / bound | cmdeploy slots busy | downtime median / p95 / max | shortest possible downtime median | the guide's sequence median (downtime / guide) | sim wall | peak RSS | done |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for n in sizes {
            print_row_of("--night", *n)?;
        }
        println!("\ntarget: makespan <= 1.1 x the lower bound");
        Ok(())
    }

    /// One simulated night of `n` relays with the default limits: one table row.
    pub fn night(n: usize) -> Result<()> {
        let (_dir, relays) = fleet(n)?;
        let limits = Limits::default();
        let d: Vec<Durations> = (0..n).map(durations).collect();
        let sum = |f: fn(&Durations) -> f64| d.iter().map(f).sum::<f64>();
        let max = |f: fn(&Durations) -> f64| d.iter().map(f).fold(0.0, f64::max);
        let first_copy = d
            .iter()
            .map(|x| x.initial_sync)
            .fold(f64::INFINITY, f64::min);
        let bounds = [
            (
                "cmdeploy",
                first_copy + sum(Durations::cmdeploy) / limits.cmdeploy_runs as f64,
            ),
            (
                "transfers",
                sum(Durations::transfers) / limits.transfers as f64,
            ),
            ("cutovers", sum(Durations::cutover) / limits.cutovers as f64),
            ("forks", sum(Durations::sequence) / limits.forks as f64),
            ("longest relay", max(Durations::sequence)),
        ];
        let (which, bound) = bounds
            .iter()
            .copied()
            .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let night = Arc::new(Night {
            durations: relays
                .iter()
                .zip(&d)
                .map(|(r, x)| (r.name.clone(), *x))
                .collect(),
            marks: Default::default(),
            start: tokio::time::Instant::now(),
        });
        let jobs = all_steps(relays);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        let (_tx, cancel) = tokio::sync::watch::channel(Cancel::None);
        let scheduler = Scheduler {
            limits: limits.clone(),
            groups: Default::default(),
            waves: vec![Wave::Percent(100)],
            events: EventSink::discard(),
            cancel,
        };
        let t0 = Instant::now();
        let (outcome, makespan) = rt.block_on(async {
            let start = tokio::time::Instant::now();
            let runner: Arc<dyn StepRunner> = night.clone();
            let outcome = scheduler.run(jobs, runner).await;
            (outcome, start.elapsed().as_secs_f64())
        });
        let wall = t0.elapsed().as_secs_f64();
        if outcome.done.len() != n {
            bail!("night: only {} of {n} relays done", outcome.done.len());
        }
        let marks = night.marks.lock().map(|m| m.clone()).unwrap_or_default();
        let mut down: Vec<f64> = marks.values().map(|m| m[1].max(m[2]) - m[0]).collect();
        down.sort_by(f64::total_cmp);
        let mut shortest: Vec<f64> = d.iter().map(Durations::cutover).collect();
        shortest.sort_by(f64::total_cmp);
        let mut guide: Vec<f64> = d.iter().map(Durations::guide).collect();
        guide.sort_by(f64::total_cmp);
        let busy = sum(Durations::cmdeploy) / (limits.cmdeploy_runs as f64 * makespan);
        let h = |s: f64| format!("{:.2} h", s / 3600.0);
        println!(
            "| {n} | {} | {} ({which}) | **{:.3}** | {:.1}% | {:.0} / {:.0} / {:.0} s | {:.0} s | {:.0} s ({:.2}) | {wall:.2} s | {:.1} MiB | {} |",
            h(makespan),
            h(bound),
            makespan / bound,
            busy * 100.0,
            percentile(&down, 0.5),
            percentile(&down, 0.95),
            percentile(&down, 1.0),
            percentile(&shortest, 0.5),
            percentile(&guide, 0.5),
            percentile(&down, 0.5) / percentile(&guide, 0.5),
            kib("VmHWM:") as f64 / 1024.0,
            outcome.done.len()
        );
        Ok(())
    }

    /// One job per relay with all six steps (the relays are dropped: their memory is
    /// the jobs' now).
    fn all_steps(relays: Vec<Relay>) -> Vec<Job> {
        relays
            .into_iter()
            .map(|relay| Job {
                relay,
                steps: Step::ALL.to_vec(),
            })
            .collect()
    }

    const CONFIGS: usize = 2;

    /// One configuration: prints one table row.
    pub fn one(config: usize, n: usize) -> Result<()> {
        let rss_start = kib("VmRSS:");
        let (_dir, relays) = fleet(n)?;
        let (name, limits) = match config {
            0 => (
                "defaults (forks 20, transfers 8, cutovers 4)",
                Limits::default(),
            ),
            _ => (
                "all at 10,000",
                Limits {
                    forks: n,
                    transfers: n,
                    cutovers: n,
                    cmdeploy_runs: n,
                    ..Limits::default()
                },
            ),
        };
        let jobs = all_steps(relays);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (_tx, cancel) = tokio::sync::watch::channel(Cancel::None);
        let scheduler = Scheduler {
            limits,
            groups: Default::default(),
            waves: vec![Wave::Percent(100)],
            events: EventSink::discard(),
            cancel,
        };
        // Free memory back to the OS (so the scheduler cannot hide in memory the inventory
        // parse freed), then peak RSS from here on (clear_refs 5 resets VmHWM).
        // SAFETY: glibc's malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss0 = kib("VmRSS:");
        let cpu0 = super::rusage_secs(libc::RUSAGE_SELF);
        let t0 = Instant::now();
        let outcome = rt.block_on(scheduler.run(jobs, Arc::new(Nop)));
        let wall = t0.elapsed().as_secs_f64();
        let cpu = super::rusage_secs(libc::RUSAGE_SELF) - cpu0;
        let hwm = kib("VmHWM:");
        if outcome.done.len() != n {
            bail!("scale: only {} of {n} relays done", outcome.done.len());
        }
        println!(
            "| {name} | {:.3} s | {:.3} s | {:.2} µs | {:.1} MiB | {:.1} MiB | {:.2} KiB | {} |",
            wall,
            cpu,
            cpu * 1e6 / (n * 6) as f64,
            hwm as f64 / 1024.0,
            rss0.saturating_sub(rss_start) as f64 / 1024.0,
            hwm.saturating_sub(rss0) as f64 / n as f64,
            outcome.done.len()
        );
        Ok(())
    }
}
