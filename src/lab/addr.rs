//! Lab addresses: every lab owns one 127.X.Y.0/24; relay i's OLD host is .(2i-1) and its
//! NEW host .(2i), so 127 relays fit and a glance at an address tells the relay.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::error::LabError;

/// The most relays one /24 holds (254 usable addresses, two per relay).
pub const MAX_RELAYS: usize = 127;

/// A loopback /24, written `127.X.Y` (the `.0/24` suffix is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subnet {
    /// The X and Y of 127.X.Y.0/24.
    pub octets: [u8; 2],
}

/// Which machine of a relay's migration a host plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The machine the relay moves away from; it holds the data.
    Old,
    /// The machine the relay moves to; empty at first.
    New,
}

impl Side {
    /// "old" or "new".
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

impl Subnet {
    /// 127.X.Y.0/24.
    pub const fn new(x: u8, y: u8) -> Subnet {
        Subnet { octets: [x, y] }
    }

    /// The host address 127.X.Y.`last`.
    pub fn host(self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octets[0], self.octets[1], last)
    }

    /// The address of relay `relay` (1-based) on `side`.
    pub fn relay_host(self, relay: usize, side: Side) -> Ipv4Addr {
        assert!(
            (1..=MAX_RELAYS).contains(&relay),
            "relay index out of range"
        );
        // In range by the assert: 2 * 127 = 254.
        let old = (2 * relay - 1) as u8;
        match side {
            Side::Old => self.host(old),
            Side::New => self.host(old + 1),
        }
    }

    /// Whether `addr` lies in this /24.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        let o = addr.octets();
        o[0] == 127 && o[1] == self.octets[0] && o[2] == self.octets[1]
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "127.{}.{}", self.octets[0], self.octets[1])
    }
}

impl FromStr for Subnet {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Subnet, LabError> {
        let bad = || {
            LabError::Options(format!(
                "subnet `{s}` is not of the form 127.X.Y (a loopback /24, e.g. 127.77.0)"
            ))
        };
        let trimmed = s.strip_suffix(".0/24").unwrap_or(s);
        let parts: Vec<&str> = trimmed.split('.').collect();
        let [first, x, y] = parts.as_slice() else {
            return Err(bad());
        };
        if *first != "127" {
            return Err(bad());
        }
        let x: u8 = x.parse().map_err(|_| bad())?;
        let y: u8 = y.parse().map_err(|_| bad())?;
        if x == 0 && y == 0 {
            // 127.0.0.1 is the machine's own localhost: its services would collide.
            return Err(LabError::Options(
                "subnet 127.0.0 holds the machine's localhost; pick another, e.g. 127.77.0".into(),
            ));
        }
        Ok(Subnet::new(x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_interleave_old_and_new() {
        let s: Subnet = "127.77.0".parse().unwrap();
        assert_eq!(s.relay_host(1, Side::Old), Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(s.relay_host(1, Side::New), Ipv4Addr::new(127, 77, 0, 2));
        assert_eq!(s.relay_host(127, Side::New), Ipv4Addr::new(127, 77, 0, 254));
        assert_eq!(
            "127.78.3.0/24".parse::<Subnet>().unwrap(),
            Subnet::new(78, 3)
        );
        assert!("10.0.0".parse::<Subnet>().is_err());
        assert!("127.0.0".parse::<Subnet>().is_err());
        assert!("127.300.0".parse::<Subnet>().is_err());
    }
}
