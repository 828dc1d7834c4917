//! A real lab's network. Lab number X owns 198.18.X.0/24, inside 198.18.0.0/15, which
//! RFC 2544 sets aside for benchmarks: no real network uses it, so a lab never shadows
//! a route the machine needs. In the machine's namespace: a bridge `cmfleetX` with
//! 198.18.X.1/24, one veth per host plugged into it, and an nftables table `ip cmfleetX`
//! that masquerades the /24 so the hosts reach the package mirror and PyPI through the
//! machine's own route. Host N (2..=254) lives in the network namespace `cmfleetX-N`
//! (`ip netns`, so /run/netns/cmfleetX-N is what systemd-nspawn joins), where the other
//! end of its veth is `eth0` with 198.18.X.N/24 and a default route via .1.
//!
//! Every name derives from X and N, so `down` finds everything again without the state
//! file, and two labs with different X never touch each other's parts.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::error::{LabError, Result};
use super::super::process::run;
use super::lock;

/// The kernel's switch for routing between interfaces, machine-wide.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Present while some real lab has turned IP forwarding on that was off before: the last
/// lab to go down turns it off again. In /run so that a reboot (which resets forwarding)
/// forgets it too.
const FORWARD_MARKER: &str = "/run/cmfleet-lab-ip-forward";

/// Host addresses a lab hands out: .1 is the bridge, .255 the broadcast.
pub const FIRST_HOST: u8 = 2;
/// The last host address.
pub const LAST_HOST: u8 = 254;

/// A real lab's network: 198.18.X.0/24, with X its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RealNet {
    /// The X of 198.18.X.0/24.
    pub x: u8,
}

impl RealNet {
    /// Lab network number `x`: 198.18.`x`.0/24.
    pub const fn new(x: u8) -> RealNet {
        RealNet { x }
    }

    /// `198.18.X.0/24`, for messages.
    pub fn cidr(self) -> String {
        format!("198.18.{}.0/24", self.x)
    }

    /// The machine's address on the bridge (the hosts' gateway).
    pub fn gateway(self) -> Ipv4Addr {
        self.addr(1)
    }

    /// 198.18.X.`n`.
    pub fn addr(self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.x, n)
    }

    /// The bridge, also the nftables table: `cmfleetX` (at most 10 characters; Linux
    /// allows 15 for an interface name).
    pub fn bridge(self) -> String {
        format!("cmfleet{}", self.x)
    }

    /// Host `n`'s id: its network namespace, its veth on the machine's side, its
    /// systemd-nspawn machine name and its cgroup (`cmfleetX-N`, at most 14 characters).
    /// One name for all four, so each is found from the others.
    pub fn host_id(self, n: u8) -> String {
        format!("cmfleet{}-{n}", self.x)
    }

    /// The network namespace's file, for `systemd-nspawn --network-namespace-path`.
    pub fn netns_path(self, n: u8) -> PathBuf {
        Path::new("/run/netns").join(self.host_id(n))
    }

    /// Fails when the bridge or the NAT table of this network exists: another lab runs
    /// on it (or a crashed one left it; its `down` removes it).
    pub fn check_free(self) -> Result<()> {
        let busy = |detail: String| LabError::NetBusy {
            net: self.cidr(),
            detail,
        };
        if link_exists(&self.bridge()) {
            return Err(busy(format!("the bridge {} exists", self.bridge())));
        }
        if self.nat_exists()? {
            return Err(busy(format!(
                "the nftables table ip {} exists",
                self.bridge()
            )));
        }
        Ok(())
    }

    /// Creates the bridge with the gateway address, the NAT table (its rules in
    /// `rules_file`, kept for the operator to read) and turns on forwarding.
    pub fn create(self, rules_file: &Path, lock_dir: &Path) -> Result<()> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        fs::write(rules_file, self.nat_rules())
            .map_err(LabError::io(format!("write {}", rules_file.display())))?;
        run(Command::new("nft").arg("-f").arg(rules_file))?;
        forwarding_on(lock_dir)
    }

    /// The nftables table: masquerade what leaves the /24 for anywhere else. Nothing
    /// else: the containers' own traffic to each other stays on the bridge.
    fn nat_rules(self) -> String {
        let (t, net) = (self.bridge(), self.cidr());
        format!(
            "# NAT of the cmfleet real lab on {net}: its hosts reach the package mirror\n\
             # through the machine's route. Removed by `down` with the table.\n\
             table ip {t} {{\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority srcnat; policy accept;\n\
             \x20       ip saddr {net} ip daddr != {net} masquerade comment \"cmfleet lab {net}\"\n\
             \x20   }}\n\
             }}\n"
        )
    }

    /// Host `n`'s namespace and veth: `eth0` inside with 198.18.X.N/24 and the default
    /// route, the machine's end in the bridge.
    pub fn add_host(self, n: u8) -> Result<()> {
        let id = self.host_id(n);
        ip(&["netns", "add", &id])?;
        ip(&["-n", &id, "link", "set", "lo", "up"])?;
        // Created in place: the peer is born inside the namespace, already named eth0.
        ip(&[
            "link", "add", &id, "type", "veth", "peer", "name", "eth0", "netns", &id,
        ])?;
        ip(&["link", "set", &id, "master", &self.bridge(), "up"])?;
        let cidr = format!("{}/24", self.addr(n));
        ip(&["-n", &id, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &id, "link", "set", "eth0", "up"])?;
        let gw = self.gateway().to_string();
        ip(&["-n", &id, "route", "add", "default", "via", &gw])?;
        Ok(())
    }

    /// Removes host `n`'s namespace and veth if they exist. The veth goes explicitly: a
    /// namespace that some other mount namespace still pins (a loopback lab host made
    /// while this lab ran copies /run/netns) outlives `ip netns delete`, and so would
    /// the veth pair inside it.
    pub fn remove_host(self, n: u8) -> Result<()> {
        let id = self.host_id(n);
        if link_exists(&id) {
            ip(&["link", "delete", &id])?;
        }
        if self.netns_path(n).exists() {
            ip(&["netns", "delete", &id])?;
        }
        Ok(())
    }

    /// Removes the bridge, every veth and namespace of this network (also hosts the
    /// state file does not know of), the NAT table, and turns forwarding off if this was
    /// the last lab that needed it. Safe to repeat.
    pub fn remove(self, lock_dir: &Path) -> Result<()> {
        for n in FIRST_HOST..=LAST_HOST {
            self.remove_host(n)?;
        }
        if link_exists(&self.bridge()) {
            ip(&["link", "delete", &self.bridge()])?;
        }
        if self.nat_exists()? {
            run(Command::new("nft").args(["delete", "table", "ip", &self.bridge()]))?;
        }
        forwarding_off(lock_dir)
    }

    fn nat_exists(self) -> Result<bool> {
        let out = run(Command::new("nft").args(["list", "tables", "ip"]))?;
        let want = format!("table ip {}", self.bridge());
        Ok(out.lines().any(|l| l.trim() == want))
    }
}

/// The IPv4 nameservers in a resolv.conf that a container can use: loopback ones (a
/// local stub resolver) are the machine's own and unreachable from the lab's bridge.
pub fn nameservers(resolv_conf: &Path) -> Result<Vec<Ipv4Addr>> {
    let text = fs::read_to_string(resolv_conf)
        .map_err(LabError::io(format!("read {}", resolv_conf.display())))?;
    let found: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next()?.parse::<Ipv4Addr>().ok())
                .flatten()
        })
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect();
    if found.is_empty() {
        return Err(LabError::NoNameserver {
            path: resolv_conf.to_path_buf(),
        });
    }
    Ok(found)
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Whether a network interface of that name exists in the machine's namespace.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether any real lab's bridge exists (their names are `cmfleet` and a number).
pub fn any_lab_bridge() -> Result<bool> {
    let rd = fs::read_dir("/sys/class/net").map_err(LabError::io("list /sys/class/net"))?;
    Ok(rd.flatten().any(|e| {
        e.file_name().to_str().is_some_and(|n| {
            n.strip_prefix("cmfleet")
                .is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        })
    }))
}

/// Turns IP forwarding on (the NAT needs it), remembering that it was off.
fn forwarding_on(lock_dir: &Path) -> Result<()> {
    // One lab's `up` must not turn it on while another's `down` turns it off.
    let _lock = lock::exclusive(&lock_dir.join("net.lock"))?;
    let now = fs::read_to_string(IP_FORWARD).map_err(LabError::io(format!("read {IP_FORWARD}")))?;
    if now.trim() == "1" {
        return Ok(());
    }
    fs::write(
        FORWARD_MARKER,
        "ip_forward was 0 before a cmfleet real lab turned it on\n",
    )
    .map_err(LabError::io(format!("write {FORWARD_MARKER}")))?;
    fs::write(IP_FORWARD, "1").map_err(LabError::io(format!("write {IP_FORWARD}")))
}

/// When no lab's bridge is left: turns IP forwarding off again if a lab turned it on,
/// and takes away the /run/netns mount if no namespace is left in it.
fn forwarding_off(lock_dir: &Path) -> Result<()> {
    // One lab's `up` must not turn it on while another's `down` turns it off.
    let _lock = lock::exclusive(&lock_dir.join("net.lock"))?;
    if any_lab_bridge()? {
        return Ok(());
    }
    remove_netns_dir();
    if !Path::new(FORWARD_MARKER).exists() {
        return Ok(());
    }
    fs::write(IP_FORWARD, "0").map_err(LabError::io(format!("write {IP_FORWARD}")))?;
    fs::remove_file(FORWARD_MARKER).map_err(LabError::io(format!("remove {FORWARD_MARKER}")))
}

/// `ip netns add` makes /run/netns a mount (bound onto itself, shared, so namespaces
/// made later show in other mount namespaces). With no namespace left in it, it goes;
/// the next `ip netns add` makes it again. Best effort: anything in it (someone else's
/// namespace) keeps it, and so does an unmount that fails.
fn remove_netns_dir() {
    let dir = Path::new("/run/netns");
    let empty = fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_none());
    if !empty {
        return;
    }
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some("/run/netns")));
    if mounted && run(Command::new("umount").arg(dir)).is_err() {
        return;
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names() {
        let net = RealNet::new(255);
        assert_eq!(net.bridge(), "cmfleet255");
        assert_eq!(net.host_id(LAST_HOST), "cmfleet255-254");
        // IFNAMSIZ is 16 with the NUL.
        assert!(net.host_id(LAST_HOST).len() <= 15);
        assert_eq!(net.addr(7), Ipv4Addr::new(198, 18, 255, 7));
        assert_eq!(net.cidr(), "198.18.255.0/24");
    }

    #[test]
    fn nameservers_skip_loopback_and_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        fs::write(
            &p,
            "# c\nnameserver 127.0.0.53\nnameserver fd00::1\nnameserver 10.255.255.53\nsearch x\n",
        )
        .unwrap();
        assert_eq!(nameservers(&p).unwrap(), [Ipv4Addr::new(10, 255, 255, 53)]);
        fs::write(&p, "nameserver 127.0.0.1\n").unwrap();
        assert!(matches!(
            nameservers(&p),
            Err(LabError::NoNameserver { .. })
        ));
    }

    #[test]
    fn nat_rules_name_only_the_lab_net() {
        let rules = RealNet::new(3).nat_rules();
        assert!(rules.contains("table ip cmfleet3 {"));
        assert!(rules.contains("ip saddr 198.18.3.0/24 ip daddr != 198.18.3.0/24 masquerade"));
    }
}
