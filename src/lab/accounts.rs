//! The lab's mail accounts: deterministic passwords, the `password` file Dovecot reads
//! in each mailbox directory, and `DIR/accounts.txt` for tests and for people trying
//! the lab (`ADDRESS PASSWORD OLD_ADDR NEW_ADDR`, one account a line).

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use data_encoding::{BASE64, HEXLOWER};
use ring::digest::{digest, SHA512};

use super::error::{LabError, Result};

/// One account of a lab relay, with the two hosts that serve it before and after the
/// migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `user007@relay2.lab.test`.
    pub address: String,
    /// Its IMAP/SMTP password.
    pub password: String,
    /// The relay's OLD host.
    pub old: Ipv4Addr,
    /// The relay's NEW host.
    pub new: Ipv4Addr,
}

/// The account's password, derived from the lab's data seed and the address: the same
/// lab options give the same passwords, with nothing to store.
pub fn password(seed: u64, address: &str) -> String {
    let d = digest(
        &SHA512,
        format!("cmfleet-lab-password/{seed}/{address}").as_bytes(),
    );
    format!("lab-{}", HEXLOWER.encode(&d.as_ref()[..9]))
}

/// The line of the account's `password` file: Dovecot's passwd-file format with a
/// salted SHA-512 hash (`{SSHA512}`: base64 of sha512(password + salt) + salt). Cheap
/// to compute for thousands of accounts, unlike crypt's thousands of rounds.
pub fn passwd_line(address: &str, password: &str) -> String {
    let salted = digest(&SHA512, format!("cmfleet-lab-salt/{address}").as_bytes());
    let salt = &salted.as_ref()[..8];
    let mut input = password.as_bytes().to_vec();
    input.extend_from_slice(salt);
    let mut hashed = digest(&SHA512, &input).as_ref().to_vec();
    hashed.extend_from_slice(salt);
    format!("{address}:{{SSHA512}}{}\n", BASE64.encode(&hashed))
}

/// Writes `accounts.txt`.
pub fn write_file(path: &Path, accounts: &[Account]) -> Result<()> {
    let mut text = String::with_capacity(accounts.len() * 80);
    for a in accounts {
        text += &format!("{} {} {} {}\n", a.address, a.password, a.old, a.new);
    }
    fs::write(path, text).map_err(LabError::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_repeat_and_differ_per_account() {
        assert_eq!(password(1, "a@x"), password(1, "a@x"));
        assert_ne!(password(1, "a@x"), password(1, "b@x"));
        assert_ne!(password(1, "a@x"), password(2, "a@x"));
    }

    #[test]
    fn passwd_line_is_dovecots_ssha512() {
        let line = passwd_line("a@x", "pw");
        let hash = line.trim_end().strip_prefix("a@x:{SSHA512}").unwrap();
        let raw = BASE64.decode(hash.as_bytes()).unwrap();
        assert_eq!(raw.len(), 64 + 8);
        let mut input = b"pw".to_vec();
        input.extend_from_slice(&raw[64..]);
        assert_eq!(digest(&SHA512, &input).as_ref(), &raw[..64]);
    }
}
