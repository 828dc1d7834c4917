//! The lab's mail as a whole: seeding the OLD hosts through their mail systems at `lab
//! up`, the accounts, a client's view of them, and the mail system's own fault.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::accounts::{self, Account};
use super::addr::Side;
use super::client::{self, AccountsView, SeedHost};
use super::data::user_address;
use super::error::{LabError, Result};
use super::fleet::{port_accepts, Lab};
use super::hoststate::read_host_state;
use super::mail::{self, LATER_DOMAIN};

/// The ports a lab host's mail system listens on: SMTP, SMTPS, submission, IMAP, IMAPS.
pub const MAIL_PORTS: [u16; 5] = [25, 465, 587, 143, 993];

impl Lab {
    /// Every host's address.
    pub(super) fn addrs(&self) -> Vec<Ipv4Addr> {
        self.state.hosts.iter().map(|h| h.addr).collect()
    }

    /// (mail_domain, OLD address) of every relay.
    pub(super) fn relays_old_addrs(&self) -> Vec<(&str, Ipv4Addr)> {
        self.state
            .hosts
            .iter()
            .filter(|h| h.side == Side::Old)
            .filter_map(|h| Some((self.state.domains.get(h.relay - 1)?.as_str(), h.addr)))
            .collect()
    }

    /// Sends part of each OLD host's mail through its Postfix into Dovecot, marks some
    /// of it read and flagged over IMAP, and queues mail for a down destination (see
    /// `client::seed`).
    pub(super) fn seed_mail(&self) -> Result<()> {
        let data = self.state.data;
        let hosts: Vec<SeedHost> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.side == Side::Old)
            .map(|h| {
                let domain = self.state.domains[h.relay - 1].clone();
                let accounts = (0..data.users.min(client::SMTP_ACCOUNTS))
                    .map(|u| {
                        let a = user_address(u, &domain);
                        let pw = accounts::password(data.seed, &a);
                        (a, pw, data.messages)
                    })
                    .collect();
                SeedHost {
                    addr: h.addr,
                    domain,
                    spool: h.path("/var/spool/postfix").display().to_string(),
                    accounts,
                    messages: client::SMTP_MESSAGES,
                    imap_accounts: client::IMAP_ACCOUNTS,
                    deferred: client::DEFERRED_MESSAGES,
                    later: LATER_DOMAIN.to_string(),
                }
            })
            .collect();
        client::seed(&self.bin_dir(), &hosts)
    }

    /// Every account of every relay, relay 1 first.
    pub fn accounts(&self) -> Vec<Account> {
        let mut out = Vec::new();
        for relay in self.relays() {
            for u in 0..self.state.data.users {
                let address = user_address(u, &relay.mail_domain);
                out.push(Account {
                    password: accounts::password(self.state.data.seed, &address),
                    address,
                    old: relay.old.addr,
                    new: relay.new.addr,
                });
            }
        }
        out
    }

    /// `DIR/accounts.txt`: `ADDRESS PASSWORD OLD_ADDR NEW_ADDR`, one account a line.
    pub fn accounts_file(&self) -> PathBuf {
        self.state.dir.join("accounts.txt")
    }

    pub(super) fn write_accounts(&self) -> Result<()> {
        accounts::write_file(&self.accounts_file(), &self.accounts())
    }

    /// What a mail client sees of `accounts` on the host at `addr` (IMAP): per mailbox
    /// UIDVALIDITY, UIDNEXT and each message's UID, flags and digest.
    pub fn client_view(&self, addr: Ipv4Addr, accounts: &[Account]) -> Result<AccountsView> {
        let creds: Vec<(String, String)> = accounts
            .iter()
            .map(|a| (a.address.clone(), a.password.clone()))
            .collect();
        client::snapshot(&self.bin_dir(), addr, &creds)
    }

    /// Sends one message over SMTP to `addr:port` (a relay's port 25, or a test's).
    pub fn send_mail(
        &self,
        addr: Ipv4Addr,
        port: u16,
        from: &str,
        to: &str,
        subject: &str,
    ) -> Result<()> {
        client::send(&self.bin_dir(), addr, port, from, to, subject)
    }

    /// A client opens the account's INBOX on the host at `addr` and adds `flags` (IMAP
    /// syntax, e.g. `(\\Flagged)`) to its newest message; returns that message's UID.
    pub fn flag_newest(&self, addr: Ipv4Addr, account: &Account, flags: &str) -> Result<u64> {
        client::flag(
            &self.bin_dir(),
            addr,
            (&account.address, &account.password),
            flags,
        )
    }

    /// Points the lab's mail for each `(domain, addr)` of `moved` at `addr` (what the
    /// DNS switch does for other mail servers), the other domains at their OLD hosts:
    /// rewrites the lab's transport table, which each Postfix reads when its processes
    /// start (`postfix reload` on a sender makes it take the change).
    pub fn route_mail(&self, moved: &[(&str, Ipv4Addr)]) -> Result<()> {
        let routes: Vec<(&str, Ipv4Addr)> = self
            .relays_old_addrs()
            .into_iter()
            .map(|(d, a)| match moved.iter().find(|(m, _)| *m == d) {
                Some((_, to)) => (d, *to),
                None => (d, a),
            })
            .collect();
        mail::write_transport(&self.state.dir, self.state.subnet, &routes)
    }

    /// Which of `MAIL_PORTS` accept connections on `addr`.
    pub fn mail_ports_open(addr: Ipv4Addr) -> [bool; 5] {
        MAIL_PORTS.map(|p| port_accepts(addr, p))
    }

    /// Crashes the host's mail system: SIGKILL to its Postfix and Dovecot masters (their
    /// children follow), as when the daemons die; returns once no mail port answers.
    /// The host's record still says active.
    pub fn crash_mail(&self, addr: Ipv4Addr) -> Result<()> {
        let st = read_host_state(self.host(addr)?);
        for pid in [st.postfix_pid, st.dovecot_pid].into_iter().flatten() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Lab::mail_ports_open(addr).iter().any(|o| *o) {
            if Instant::now() > deadline {
                return Err(LabError::Options(format!(
                    "the mail system of {addr} still answers 10 s after SIGKILL"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
