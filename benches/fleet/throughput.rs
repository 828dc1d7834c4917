//! Transfer throughput (issue 10, part 3): cmfleet's step 1 in `direct` and `staged`
//! mode against the guide's raw pipe (`ssh -A OLD "tar c /home/vmail/mail | ssh NEW tar
//! x -C /"`) on one relay with N MiB of incompressible mail, in the same run, alternating
//! (raw direct staged raw direct staged ...), each with OpenSSH's default cipher and with
//! aes128-gcm. NEW's mailbox tree is emptied before every run (same data every time);
//! every result is checked file by file against OLD (count, bytes, content, size, mtime,
//! owner, mode): a wrong result does not count.
//!
//! Timed: the raw pipe by its process wall time (the copy and its two ssh handshakes);
//! cmfleet by step 1's duration in its journal (started_ms -> finished_ms: the step's
//! preflight checks and connections, then the copy), with the process wall time next to
//! it. "Copy only" is the copy's own time on the hosts, the same for every contender:
//! from the start of the first copying process (tar or rsync, on OLD or NEW) to the end
//! of the last one, as timing wrappers the benchmark puts around the lab hosts' rsync and
//! tar record them (like the fleet benchmark's cmdeploy accounting). For staged that
//! spans both hops (pull: the rsync server on OLD; push: the rsync server on NEW). The
//! difference is what a relay's step 1 costs besides the copy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, FileTimes};
use std::io::Write as _;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use cmfleet::lab::{
    user_address, DataOptions, Kind, Lab, LabHost, LabOptions, LabRelay, Manifest, Subnet,
    STATE_DIR,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{run_measured, stats, ChildRun, CMFLEET};

const MAIL: &str = "/home/vmail/mail";
/// Mailboxes of the relay (the lab's usual side files: password, metadata, uidlist).
const USERS: usize = 5;
/// Size of one large message.
const FILE_MIB: u64 = 10;
/// The fast cipher of the issue (AES-NI), as an inventory's `cipher` sets it.
const AES: &str = "aes128-gcm@openssh.com";
const CIPHERS: [Option<&str>; 2] = [None, Some(AES)];
/// Seeds the messages' bytes: every run of the benchmark copies the same data.
const SEED: u64 = 0x7407_7407;

pub struct Opts {
    pub size_mib: u64,
    pub rounds: usize,
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub subnet: Subnet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// The guide's `tar c | ssh tar x`, started on OLD with the forwarded agent.
    Raw,
    /// `cmfleet migrate --until-step 1`, `transfer = "direct"` (the default).
    Direct,
    /// The same with `transfer = "staged"` (two rsync hops through the controller,
    /// staging under the state dir on /dev/shm).
    Staged,
}

const MODES: [Mode; 3] = [Mode::Raw, Mode::Direct, Mode::Staged];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw pipe (tar, ssh, tar x)",
            Mode::Direct => "cmfleet direct",
            Mode::Staged => "cmfleet staged",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Direct => "direct",
            Mode::Staged => "staged",
        }
    }
}

fn cipher_name(c: Option<&str>) -> &str {
    c.unwrap_or("default")
}

/// One run of one contender.
#[derive(Debug, Clone)]
struct Sample {
    round: usize,
    mode: Mode,
    cipher: usize,
    /// The timed figure: raw = process wall, cmfleet = journal step 1, seconds.
    secs: f64,
    wall: f64,
    /// The copy's own time on the hosts, seconds (see the module doc).
    copy: Option<f64>,
    /// Staged: the two hops (pull, push), seconds.
    hops: Option<(f64, f64)>,
    /// None = exact copy; Some(why) = wrong or failed.
    wrong: Option<String>,
}

impl Sample {
    fn ok(&self) -> bool {
        self.wrong.is_none()
    }
}

/// OLD's mailbox tree, as the check compares it.
struct Reference {
    manifest: Manifest,
    files: usize,
    bytes: u64,
}

/// Stops the lab and removes its directory (1 GiB of /dev/shm) when dropped, also on
/// errors; BENCH_KEEP=1 leaves it running.
struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            if std::env::var_os("BENCH_KEEP").is_none() {
                if Lab::down(lab.dir()).is_ok() {
                    let _ = fs::remove_dir_all(lab.dir());
                }
            } else {
                eprintln!("BENCH_KEEP: lab left running in {}", lab.dir().display());
            }
        }
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn run(o: &Opts) -> Result<()> {
    if o.size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    fs::create_dir_all(&o.logs)?;
    let t = Instant::now();
    if o.dir.join("lab.json").exists() {
        let _ = Lab::down(&o.dir);
    }
    let mut opts = LabOptions::new(&o.dir, 1, o.subnet);
    // The lab's mailbox skeleton (side files, acme, DKIM, queue) without its generated
    // messages: those are a repeated base64 pool, compressible; the large messages below
    // are random bytes.
    opts.data = DataOptions {
        users: USERS,
        messages: 0,
        message_size: 4096,
        seed: 1,
    };
    let guard = LabGuard(Some(Lab::up(opts).context("lab up")?));
    let lab = guard.0.as_ref().context("lab")?;
    let relay = lab.relay(1).context("relay 1")?;
    time_copies(lab)?;
    let (n, bytes) = write_large(lab, &relay, o.size_mib)?;
    let reference = reference(&relay)?;
    eprintln!(
        "throughput benchmark: 1 relay, {} files / {:.1} MiB in {MAIL} ({n} random messages of <= {FILE_MIB} MiB, {:.1} MiB), {} rounds, lab in {} on 127.{}.{}.0/24, up in {:.1} s, load {}",
        reference.files,
        reference.bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0,
        o.rounds,
        o.dir.display(),
        o.subnet.octets[0],
        o.subnet.octets[1],
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    let mut samples = Vec::new();
    for round in 1..=o.rounds {
        for (ci, cipher) in CIPHERS.iter().enumerate() {
            for mode in MODES {
                let s = one(lab, &relay, &reference, o, round, mode, ci, *cipher)?;
                samples.push(s);
            }
        }
    }
    report(o, &reference, &samples);
    drop(guard);
    Ok(())
}

/// Writes `size_mib` MiB of random messages (FILE_MIB each, the last one smaller if
/// needed) into the mailboxes' cur/, as vmail, with dovecot-like names and old mtimes.
fn write_large(lab: &Lab, relay: &LabRelay, size_mib: u64) -> Result<(usize, u64)> {
    let users = lab.users();
    let domain = &relay.mail_domain;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut left = size_mib << 20;
    let mut buf = Vec::new();
    let mut i = 0usize;
    let mut total = 0;
    while left > 0 {
        let size = left.min(FILE_MIB << 20);
        buf.resize(size as usize, 0);
        rng.fill_bytes(&mut buf);
        let u = i % USERS;
        let ts = 1_700_000_000 + (u as u64) * 1000 + i as u64;
        let dir = relay
            .old
            .path(MAIL)
            .join(domain)
            .join(user_address(u, domain))
            .join("cur");
        let p = dir.join(format!(
            "{ts}.M{i}P{}.{domain},S={size},W={size}:2,S",
            7000 + u
        ));
        fs::write(&p, &buf).with_context(|| format!("write {}", p.display()))?;
        chown(&p, Some(users.vmail_uid), Some(users.vmail_gid))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(ts);
        File::options()
            .write(true)
            .open(&p)?
            .set_times(FileTimes::new().set_accessed(t).set_modified(t))?;
        left -= size;
        total += size;
        i += 1;
    }
    Ok((i, total))
}

/// The timing wrappers' log on a host: "START_MS END_MS TOOL ROLE" per finished process.
const COPY_TIMES: &str = "bench-copy-times";

/// Wraps the tools that copy (rsync, tar) on every lab host in a timing wrapper, as the
/// fleet benchmark wraps the stand-in cmdeploy: DIR/bin is every host's /usr/local/sbin,
/// first in PATH; a wrapper the lab already has there (its rsync, for slow links) is
/// kept as TOOL.lab and called by ours. Each run appends its start, end, tool and role
/// (rsync: client, server, server-sender; tar: c, x; other) to STATE_DIR/COPY_TIMES.
fn time_copies(lab: &Lab) -> Result<()> {
    let bin = lab.dir().join("bin");
    for tool in ["rsync", "tar"] {
        let path = bin.join(tool);
        let target = if path.exists() {
            fs::rename(&path, bin.join(format!("{tool}.lab")))?;
            format!("/usr/local/sbin/{tool}.lab")
        } else {
            format!("/usr/bin/{tool}")
        };
        let script = format!(
            r#"#!/bin/bash
# fleet benchmark (throughput): times every {tool} on this host
t0=$(date +%s%3N)
{target} "$@"; rc=$?
case "{tool} $1 $2" in
    "rsync --server --sender") role=server-sender ;;
    "rsync --server "*) role=server ;;
    *" --version"*) role=other ;;
    rsync*) role=client ;;
    "tar c"*|"tar -c"*|"tar --create"*) role=c ;;
    "tar x"*|"tar -x"*|"tar --extract"*) role=x ;;
    *) role=other ;;
esac
echo "$t0 $(date +%s%3N) {tool} $role" >> {STATE_DIR}/{COPY_TIMES}
exit $rc
"#
        );
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// One timed process: start and end (ms), tool, role.
struct Timed {
    start: u64,
    end: u64,
    role: String,
}

fn copies(host: &LabHost) -> Vec<Timed> {
    let text = fs::read_to_string(host.path(STATE_DIR).join(COPY_TIMES)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let t = Timed {
                start: f.first()?.parse().ok()?,
                end: f.get(1)?.parse().ok()?,
                role: format!("{} {}", f.get(2)?, f.get(3)?),
            };
            (!t.role.ends_with(" other")).then_some(t)
        })
        .collect()
}

/// The copy's span on the hosts: from the first copying process's start to the last
/// one's end, over OLD and NEW (None unless both took part); and the staged hops.
fn copy_span(relay: &LabRelay) -> (Option<f64>, Option<(f64, f64)>) {
    let (old, new) = (copies(&relay.old), copies(&relay.new));
    if old.is_empty() || new.is_empty() {
        return (None, None);
    }
    let all = || old.iter().chain(&new);
    let start = all().map(|t| t.start).min().unwrap_or(0);
    let end = all().map(|t| t.end).max().unwrap_or(0);
    let secs = |t: &Timed| t.end.saturating_sub(t.start) as f64 / 1000.0;
    let hop = |v: &[Timed], role: &str| {
        let m: Vec<&Timed> = v.iter().filter(|t| t.role == role).collect();
        (m.len() == 1).then(|| secs(m[0]))
    };
    let hops = hop(&old, "rsync server-sender").zip(hop(&new, "rsync server"));
    (Some(end.saturating_sub(start) as f64 / 1000.0), hops)
}

fn reference(relay: &LabRelay) -> Result<Reference> {
    let manifest = Manifest::of(&relay.old.path(MAIL))?;
    let files = manifest.files();
    let bytes = manifest
        .0
        .values()
        .filter(|e| e.kind == Kind::File)
        .map(|e| e.size)
        .sum();
    Ok(Reference {
        manifest,
        files,
        bytes,
    })
}

/// Empties NEW's mailbox tree (keeps the directory itself, as vmail 0700).
fn empty_new(lab: &Lab, relay: &LabRelay) -> Result<()> {
    for h in [&relay.old, &relay.new] {
        let _ = fs::remove_file(h.path(STATE_DIR).join(COPY_TIMES));
    }
    let mail = relay.new.path(MAIL);
    if mail.exists() {
        for e in fs::read_dir(&mail)? {
            let p = e?.path();
            if p.is_dir() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
    } else {
        fs::create_dir_all(&mail)?;
    }
    let u = lab.users();
    chown(&mail, Some(u.vmail_uid), Some(u.vmail_gid))?;
    fs::set_permissions(&mail, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// NEW's tree against OLD's: every entry present, no extra ones; files equal in size,
/// mtime, owner, mode and content; directories in owner and mode.
fn check(reference: &Reference, relay: &LabRelay) -> Option<String> {
    let new_root = relay.new.path(MAIL);
    let new = match Manifest::of(&new_root) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot read NEW's tree: {e}")),
    };
    let files = new.files();
    let bytes: u64 = new
        .0
        .values()
        .filter(|e| e.kind == Kind::File)
        .map(|e| e.size)
        .sum();
    if files != reference.files || bytes != reference.bytes {
        return Some(format!(
            "NEW has {files} files / {bytes} B, OLD {} / {} B",
            reference.files, reference.bytes
        ));
    }
    let old_root = relay.old.path(MAIL);
    for (p, a) in &reference.manifest.0 {
        let Some(b) = new.0.get(p) else {
            return Some(format!("missing /{p}"));
        };
        let same = a.kind == b.kind
            && (a.uid, a.gid, a.mode) == (b.uid, b.gid, b.mode)
            && (a.kind == Kind::Dir || (a.size == b.size && a.mtime == b.mtime));
        if !same {
            return Some(format!("differs /{p}: {a} vs {b}"));
        }
        if a.kind == Kind::File {
            let (x, y) = (fs::read(old_root.join(p)), fs::read(new_root.join(p)));
            match (x, y) {
                (Ok(x), Ok(y)) if x == y => {}
                _ => return Some(format!("content differs: /{p}")),
            }
        }
    }
    if let Some(p) = new
        .0
        .keys()
        .find(|p| !reference.manifest.0.contains_key(*p))
    {
        return Some(format!("extra /{p}"));
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn one(
    lab: &Lab,
    relay: &LabRelay,
    reference: &Reference,
    o: &Opts,
    round: usize,
    mode: Mode,
    ci: usize,
    cipher: Option<&str>,
) -> Result<Sample> {
    empty_new(lab, relay)?;
    let tag = format!(
        "{round}-{}-{}",
        mode.tag(),
        cipher_name(cipher).split('@').next().unwrap_or("x")
    );
    let log = o.logs.join(format!("tp-{tag}.log"));
    let load0 = loadavg();
    let mut sample = Sample {
        round,
        mode,
        cipher: ci,
        secs: f64::NAN,
        wall: f64::NAN,
        copy: None,
        hops: None,
        wrong: None,
    };
    let run: ChildRun;
    match mode {
        Mode::Raw => {
            let inner = match cipher {
                Some(c) => format!("ssh -c {c}"),
                None => "ssh".into(),
            };
            let mut cmd = lab.ssh(relay.old.addr, &["-A"]);
            cmd.arg(format!(
                "tar c {MAIL} | {inner} root@{} tar x -C /",
                relay.new.addr
            ));
            run = run_measured(&mut cmd, &log)?;
            sample.secs = run.wall;
        }
        Mode::Direct | Mode::Staged => {
            let state = lab.dir().join(format!("tp-state-{tag}"));
            let _ = fs::remove_dir_all(&state);
            let inv = lab.dir().join(format!("tp-{tag}.toml"));
            let text = fs::read_to_string(lab.inventory())?;
            let mut defaults = format!("[defaults]\ntransfer = \"{}\"\n", mode.tag());
            if let Some(c) = cipher {
                let _ = writeln!(defaults, "cipher = \"{c}\"");
            }
            let text = text
                .replacen(
                    "[fleet]\n",
                    &format!("[fleet]\nstate_dir = \"{}\"\n", state.display()),
                    1,
                )
                .replacen("[defaults]\n", &defaults, 1);
            fs::write(&inv, text)?;
            let mut cmd = Command::new(CMFLEET);
            cmd.arg("migrate")
                .arg("-i")
                .arg(&inv)
                .args(["--yes", "--progress", "plain", "--until-step", "1"])
                .env_remove("CMFLEET_INVENTORY")
                .env_remove("CMFLEET_LIMIT");
            run = run_measured(&mut cmd, &log)?;
            match step1(&state) {
                Ok((start, end)) => sample.secs = end.saturating_sub(start) as f64 / 1000.0,
                Err(e) => sample.wrong = Some(format!("no step 1 times in the journal: {e:#}")),
            }
            // cmfleet's own log of the relay (its commands and their output), for reading.
            if let Ok(rd) = fs::read_dir(state.join("logs")) {
                for e in rd.flatten() {
                    let _ = fs::copy(e.path(), o.logs.join(format!("tp-{tag}-relay.log")));
                }
            }
            let _ = fs::remove_dir_all(&state);
            let _ = fs::remove_file(&inv);
        }
    }
    sample.wall = run.wall;
    (sample.copy, sample.hops) = copy_span(relay);
    if !run.ok {
        sample.wrong = Some(format!("exit {} (log {})", run.code, log.display()));
    }
    if sample.wrong.is_none() {
        sample.wrong = check(reference, relay);
    }
    let mibs = reference.bytes as f64 / 1048576.0 / sample.secs;
    eprintln!(
        "  [{round}] {:<26} {:<23} {:6.1} MiB/s  timed {:5.2} s, wall {:5.2} s, copy only {}  load {load0} -> {}  {}",
        mode.name(),
        cipher_name(cipher),
        mibs,
        sample.secs,
        sample.wall,
        sample
            .copy
            .map(|c| format!("{c:.2} s ({:.1} MiB/s)", reference.bytes as f64 / 1048576.0 / c))
            .unwrap_or_else(|| "?".into())
            + &sample
                .hops
                .map(|(a, b)| format!(" = pull {a:.2} s + push {b:.2} s"))
                .unwrap_or_default(),
        loadavg(),
        match &sample.wrong {
            None => "exact".to_string(),
            Some(w) => format!("WRONG: {w}"),
        }
    );
    Ok(sample)
}

/// Step 1's started_ms and finished_ms from the journal in `state`.
fn step1(state: &Path) -> Result<(u64, u64)> {
    let path = fs::read_dir(state)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".journal.json"))
        .context("no journal in the state dir")?;
    let j: serde_json::Value = serde_json::from_str(&fs::read_to_string(path)?)?;
    let r = j["relays"]
        .as_object()
        .and_then(|m| m.values().next())
        .context("no relay in the journal")?;
    let s = &r["steps"][0];
    match (s["started_ms"].as_u64(), s["finished_ms"].as_u64()) {
        (Some(a), Some(b)) if s["status"] == "done" => Ok((a, b)),
        _ => bail!("step 1 is {}", s["status"]),
    }
}

fn report(o: &Opts, reference: &Reference, samples: &[Sample]) {
    let mib = reference.bytes as f64 / 1048576.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## transfer throughput: 1 relay, {mib:.1} MiB in {} files (random), {} rounds\n",
        reference.files, o.rounds
    );
    let _ = writeln!(
        out,
        "| contender | cipher | MiB/s median (min-max) | ratio to the raw pipe (same cipher, same round): median (per round) | copy only: MiB/s median | copy only: ratio median (per round) | timed s median | process wall s median | besides the copy s median | result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    // (round, cipher) -> the raw pipe's sample, when its copy was exact.
    let raw: BTreeMap<(usize, usize), &Sample> = samples
        .iter()
        .filter(|s| s.mode == Mode::Raw && s.ok())
        .map(|s| ((s.round, s.cipher), s))
        .collect();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (ci, cipher) in CIPHERS.iter().enumerate() {
        for mode in MODES {
            let all: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.mode == mode && s.cipher == ci)
                .collect();
            let good: Vec<&Sample> = all.iter().copied().filter(|s| s.ok()).collect();
            let result = if good.len() == all.len() {
                format!("{}/{} exact", good.len(), all.len())
            } else {
                let why: Vec<String> = all
                    .iter()
                    .filter_map(|s| s.wrong.as_ref().map(|w| format!("round {}: {w}", s.round)))
                    .collect();
                format!("{}/{} exact; {}", good.len(), all.len(), why.join("; "))
            };
            if good.is_empty() {
                let _ = writeln!(
                    out,
                    "| {} | {} | - | - | - | - | - | - | - | {result} |",
                    mode.name(),
                    cipher_name(*cipher)
                );
                continue;
            }
            let (m, lo, hi) = stats(&good.iter().map(|s| mib / s.secs).collect::<Vec<_>>());
            let ratios: Vec<f64> = good
                .iter()
                .filter_map(|s| raw.get(&(s.round, ci)).map(|r| r.secs / s.secs))
                .collect();
            let copy_rates: Vec<f64> = good
                .iter()
                .filter_map(|s| s.copy.map(|c| mib / c))
                .collect();
            let copy_ratios: Vec<f64> = good
                .iter()
                .filter_map(|s| {
                    let r = raw.get(&(s.round, ci))?;
                    Some(r.copy? / s.copy?)
                })
                .collect();
            let besides: Vec<f64> = good
                .iter()
                .filter_map(|s| s.copy.map(|c| s.secs - c))
                .collect();
            let fmt_ratio = |v: &[f64]| {
                if mode == Mode::Raw {
                    "1.00".to_string()
                } else if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("**{:.2}** ({})", stats(v).0, list(v))
                }
            };
            let med = |v: &[f64], digits: usize| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.*}", digits, stats(v).0)
                }
            };
            let secs: Vec<f64> = good.iter().map(|s| s.secs).collect();
            let wall: Vec<f64> = good.iter().map(|s| s.wall).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {m:.0} ({lo:.0}-{hi:.0}) | {} | {} | {} | {} ({}) | {} | {} | {result} |",
                mode.name(),
                cipher_name(*cipher),
                fmt_ratio(&ratios),
                med(&copy_rates, 0),
                fmt_ratio(&copy_ratios),
                med(&secs, 2),
                if mode == Mode::Raw {
                    "process wall"
                } else {
                    "journal step 1"
                },
                med(&wall, 2),
                med(&besides, 2),
            );
        }
    }
    let _ = writeln!(
        out,
        "\ntarget: cmfleet >= 0.9 x the raw pipe. Timed: raw pipe = its process wall time; cmfleet = step 1 in its journal (preflight checks, connections, copy). Copy only: first start to last end of the copying processes (tar, rsync) on OLD and NEW. Logs: {}/tp-*.log",
        o.logs.display()
    );
    print!("{out}");
    let _ = std::io::stdout().flush();
}
