//! Real lab hosts (`cmfleet::lab::real`): two booted Debian 12 systemd containers
//! answer ssh as root with systemd running, reach each other and the package registries,
//! and `down` leaves nothing behind, also after an `up` that failed halfway. Prints how
//! long the rootfs, each host's preparation and each boot took.
//!
//! Needs root and systemd-container, mmdebstrap and nftables (`./run-tests.sh` installs
//! them); the first run on a machine builds the rootfs from the Debian mirror (~40 s).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cmfleet::lab::real::{RealLab, RealLabOptions, RealNet, CACHE_DIR, UNBOUND_FORWARD};
use common::real::{require_real_lab_machine, reserve};

mod common;
use cmfleet::lab::LabError;

/// Takes the lab down if the test panics before it does.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = RealLab::down(&self.0);
    }
}

/// `ssh -F DIR/ssh_config root@ADDR -- CMD`: (exit success, stdout, stderr).
fn ssh(lab: &RealLab, addr: &str, cmd: &str) -> (bool, String, String) {
    let out = Command::new("ssh")
        .arg("-F")
        .arg(lab.ssh_config())
        .arg(format!("root@{addr}"))
        .arg("--")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Everything of network `net` or directory `dir` still on the machine, checked without
/// the lab's own code: namespaces, interfaces, NAT rules, processes, cgroups, layers.
fn leftovers(net: RealNet, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let id_prefix = format!("cmfleet{}-", net.x);
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    for l in String::from_utf8_lossy(&netns.stdout).lines() {
        if l.starts_with(&id_prefix) {
            out.push(format!("network namespace {l}"));
        }
    }
    for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == net.bridge() || name.starts_with(&id_prefix) {
            out.push(format!("interface {name}"));
        }
    }
    let rules = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    let needle = format!("198.18.{}.", net.x);
    for l in String::from_utf8_lossy(&rules.stdout).lines() {
        if l.contains(&needle) || l.contains(&format!("table ip {}", net.bridge())) {
            out.push(format!("nftables: {}", l.trim()));
        }
    }
    let dir_s = dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if read(&format!("/proc/{pid}/stat")).contains(") Z ") {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("systemd-nspawn")
            && (cmdline.contains(&dir_s) || cmdline.contains(&format!("={id_prefix}")))
        {
            out.push(format!("process {pid}: {cmdline}"));
        }
        if read(&format!("/proc/{pid}/cgroup")).contains(&format!("/{id_prefix}")) {
            out.push(format!("process {pid} in a lab cgroup: {cmdline}"));
        }
    }
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
    ] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&id_prefix) {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    if dir.join("hosts").exists() {
        out.push(format!("the hosts' layers in {}/hosts", dir.display()));
    }
    if read("/proc/self/mountinfo").contains(&dir_s) {
        out.push("a mount inside the lab dir".into());
    }
    out
}

/// Whether some other real lab (a `cmfleetN` bridge) runs on the machine.
fn other_lab_bridges(net: RealNet) -> bool {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n != net.bridge()
                && n.strip_prefix("cmfleet")
                    .is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[test]
fn two_real_hosts_boot_answer_ssh_reach_each_other_and_down_leaves_nothing() {
    require_real_lab_machine();
    let tmp = tempfile::Builder::new()
        .prefix("cmfleet-real-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let dir = tmp.path().join("lab");
    let reserved = reserve(&dir);
    let net = reserved.net;
    let key = tmp.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "cmfleet-real-lab-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(st.success());
    let forward_before = read("/proc/sys/net/ipv4/ip_forward");
    let cached_before = Path::new(CACHE_DIR).exists();

    let names = vec!["relay1-old".to_string(), "relay1-new".to_string()];
    let guard = DownOnDrop(dir.clone());
    let lab = RealLab::up(RealLabOptions::new(&dir, net, names.clone(), &key))
        .unwrap_or_else(|e| panic!("real lab up failed: {e}"));
    let t = lab.timings().expect("up measures itself");
    match t.rootfs_built {
        Some(d) => eprintln!("rootfs: built (cold) in {d:.2?}"),
        None => eprintln!(
            "rootfs: cached in {} (built by an earlier run{})",
            CACHE_DIR,
            if cached_before { "" } else { "?" }
        ),
    }
    for (name, d) in &t.prepare {
        eprintln!("host {name}: layer, keys and network prepared in {d:.2?}");
    }
    for (name, d) in &t.boot {
        eprintln!("host {name}: booted to ssh-ready (systemd running) in {d:.2?}");
    }
    eprintln!("lab up: {:.2?} in all", t.total);

    let hosts = lab.hosts().to_vec();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].addr.to_string(), format!("198.18.{}.2", net.x));
    assert_eq!(hosts[1].addr.to_string(), format!("198.18.{}.3", net.x));
    for h in &hosts {
        let addr = h.addr.to_string();
        let (ok, state, err) = ssh(&lab, &addr, "systemctl is-system-running");
        assert!(
            state == "running" || state == "degraded",
            "{}: systemd is {state:?} (ssh ok: {ok}, stderr: {err})",
            h.name
        );
        let (ok, out, err) = ssh(
            &lab,
            &addr,
            &format!(
                "hostname; id -u; test -s /etc/machine-id && cat /etc/machine-id; \
                 grep -c nameserver /etc/resolv.conf; grep -c forward-addr /{UNBOUND_FORWARD}; \
                 stat -c %a /root /root/.ssh"
            ),
        );
        assert!(ok, "{}: {err}", h.name);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], h.name, "hostname: {out}");
        assert_eq!(lines[1], "0", "ssh logs in as root: {out}");
        assert_eq!(lines[2].len(), 32, "a machine-id of its own: {out}");
        assert_ne!(
            lines[3], "0",
            "resolv.conf names the machine's resolver: {out}"
        );
        assert_ne!(
            lines[4], "0",
            "unbound forwards to the machine's resolver: {out}"
        );
        assert_eq!(
            &lines[5..],
            ["700", "700"],
            "root's dirs keep their modes: {out}"
        );
        // The machine's CAs and NAT: PyPI over the machine's TLS-intercepting proxy.
        let (ok, code, err) = ssh(
            &lab,
            &addr,
            "curl -sS -o /dev/null -w '%{http_code}' --max-time 30 https://pypi.org/simple/pip/",
        );
        assert!(ok && code == "200", "{} reaches PyPI: {code} {err}", h.name);
    }
    // The mirror through apt, and the unbound forwarder chatmail's deploy relies on:
    // unbound installed from the mirror answers through it.
    let (ok, out, err) = ssh(
        &lab,
        &hosts[0].addr.to_string(),
        "export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && \
         apt-get install -y -q --no-install-recommends unbound >/dev/null && \
         systemctl is-active unbound && dig +short @127.0.0.1 pypi.org",
    );
    assert!(
        ok && out.lines().count() >= 2,
        "apt from the mirror, then unbound resolving through the forwarder: {out} {err}"
    );
    // Different machines: their own machine-ids and host keys.
    let ids: Vec<String> = hosts
        .iter()
        .map(|h| ssh(&lab, &h.addr.to_string(), "cat /etc/machine-id").1)
        .collect();
    assert_ne!(ids[0], ids[1]);
    let known = std::fs::read_to_string(lab.known_hosts()).unwrap();
    let ed: Vec<&str> = known
        .lines()
        .filter(|l| l.contains("ssh-ed25519"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(ed.len(), 2, "{known}");
    assert_ne!(ed[0], ed[1], "each host has its own host key");
    // By name too, as the ssh_config says.
    let by_name = Command::new("ssh")
        .arg("-F")
        .arg(lab.ssh_config())
        .args(["relay1-new", "--", "hostname"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&by_name.stdout).trim(),
        "relay1-new"
    );
    // Over the bridge: relay1-old reaches relay1-new's sshd.
    let (ok, banner, err) = ssh(
        &lab,
        &hosts[0].addr.to_string(),
        &format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/22 && head -c 4 <&3'",
            hosts[1].addr
        ),
    );
    assert!(
        ok && banner == "SSH-",
        "relay1-old -> relay1-new:22: {banner:?} {err}"
    );
    // Each container runs in cgroups of its own, made for it.
    for h in &hosts {
        let pid = h
            .nspawn
            .expect("a running host has its nspawn recorded")
            .pid;
        let cg = read(&format!("/proc/{pid}/cgroup"));
        assert!(
            cg.contains(&format!("/{}/", h.id)) || cg.contains(&format!("/{}\n", h.id)),
            "{}'s nspawn is not in its cgroup {}: {cg}",
            h.name,
            h.id
        );
    }

    // A second lab on the same network is refused, and the first one is left alone.
    let other = tmp.path().join("other");
    match RealLab::up(RealLabOptions::new(
        &other,
        net,
        vec!["x1".to_string()],
        &key,
    )) {
        Err(LabError::NetBusy { .. }) => {}
        Err(e) => panic!("expected NetBusy, got: {e}"),
        Ok(_) => panic!("a second lab came up on a busy network"),
    }
    let (_, state, _) = ssh(
        &lab,
        &hosts[0].addr.to_string(),
        "systemctl is-system-running",
    );
    assert!(
        state == "running" || state == "degraded",
        "after the refused lab: {state}"
    );

    // Down, from the record (as another process would).
    let started = Instant::now();
    let stopped = RealLab::down(&dir).unwrap_or_else(|e| panic!("down failed: {e}"));
    eprintln!(
        "lab down: {:.2?} ({} processes ended)",
        started.elapsed(),
        stopped.len()
    );
    let left = leftovers(net, &dir);
    assert!(
        left.is_empty(),
        "left behind after down:\n{}",
        left.join("\n")
    );
    if !other_lab_bridges(net) {
        if forward_before.trim() == "0" {
            assert_eq!(read("/proc/sys/net/ipv4/ip_forward").trim(), "0");
        }
        assert!(
            !Path::new("/run/systemd/nspawn").exists(),
            "systemd-nspawn's /run dirs are left"
        );
    }
    RealLab::down(&dir).expect("a second down is harmless");
    assert!(leftovers(net, &dir).is_empty());
    drop(guard);

    // An up that fails halfway (no time to boot) takes down what it made.
    let mut opts = RealLabOptions::new(&dir, net, names, &key);
    opts.boot_timeout = Duration::ZERO;
    match RealLab::up(opts) {
        Err(LabError::HostBoot { host, .. }) => assert_eq!(host, "relay1-old"),
        Err(e) => panic!("expected HostBoot, got: {e}"),
        Ok(_) => panic!("a lab booted in no time"),
    }
    let left = leftovers(net, &dir);
    assert!(
        left.is_empty(),
        "left behind after a failed up:\n{}",
        left.join("\n")
    );
    RealLab::down(&dir).expect("down after a failed up");
}
