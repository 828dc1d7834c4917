//! The `command` provider: an operator program that talks to its DNS provider's
//! API, given the relay's facts in environment variables.
//!
//! The program runs directly, without arguments and without `sh -c`: the relay's
//! facts travel only in the environment, so nothing from the inventory is ever
//! parsed by a shell (and a path with spaces just works). An operator who needs
//! arguments or a pipeline writes a small script.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::error::DnsError;
use super::records::Addrs;

/// Why the program is run; passed as `CMFLEET_ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAction {
    /// Point the records at the new site.
    Switch,
    /// Lower the TTL ahead of a migration.
    LowerTtl,
    /// Put the TTL back after a migration.
    RestoreTtl,
    /// Point the records back at the old site.
    Rollback,
}

impl DnsAction {
    /// The value of `CMFLEET_ACTION`.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsAction::Switch => "switch",
            DnsAction::LowerTtl => "lower-ttl",
            DnsAction::RestoreTtl => "restore-ttl",
            DnsAction::Rollback => "rollback",
        }
    }
}

/// Exit code by which a program asks for a retry (sysexits EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// How much of the program's stderr ends up in the error.
const STDERR_TAIL_LINES: usize = 10;
const STDERR_TAIL_CHARS: usize = 2000;

/// An operator-supplied program.
#[derive(Debug, Clone)]
pub struct CommandProvider {
    /// The program (the inventory's `command`, already resolved to a path).
    program: PathBuf,
    /// The program is killed after this long (and the failure is transient).
    timeout: Duration,
}

impl CommandProvider {
    /// Run `program` (a path, or a name looked up in PATH) for each change.
    pub fn new(program: PathBuf, timeout: Duration) -> Result<Self, DnsError> {
        if program.as_os_str().is_empty() {
            return Err(DnsError::Config("dns command is empty".to_string()));
        }
        Ok(CommandProvider { program, timeout })
    }

    /// Run the program once for `domain`; `Ok` iff it exits 0.
    pub async fn run(
        &self,
        action: DnsAction,
        domain: &str,
        old: &Addrs,
        new: &Addrs,
        ttl: u32,
    ) -> Result<(), DnsError> {
        let program = self.program.display().to_string();
        let opt = |ip: Option<std::net::Ipv6Addr>| ip.map(|i| i.to_string()).unwrap_or_default();
        let mut cmd = Command::new(&self.program);
        cmd.env("CMFLEET_ACTION", action.as_str())
            .env("CMFLEET_DOMAIN", domain)
            .env("CMFLEET_OLD_IP4", old.ip4.to_string())
            .env("CMFLEET_OLD_IP6", opt(old.ip6))
            .env("CMFLEET_NEW_IP4", new.ip4.to_string())
            .env("CMFLEET_NEW_IP6", opt(new.ip6))
            .env("CMFLEET_TTL", ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A timed-out program must not linger after we give up on it.
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| DnsError::CommandSpawn {
            domain: domain.to_string(),
            program: program.clone(),
            source,
        })?;
        let failed = |status: String, stderr: &[u8], transient: bool| DnsError::CommandFailed {
            domain: domain.to_string(),
            program: program.clone(),
            status,
            stderr_tail: tail(stderr),
            transient,
        };
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(failed(
                    format!("killed after {}", humantime::format_duration(self.timeout)),
                    b"",
                    true,
                ))
            }
            Ok(Err(source)) => {
                return Err(DnsError::CommandSpawn {
                    domain: domain.to_string(),
                    program,
                    source,
                })
            }
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(());
        }
        let code = output.status.code();
        let status = match code {
            Some(c) => format!("exit code {c}"),
            None => output.status.to_string(),
        };
        Err(failed(status, &output.stderr, code == Some(EXIT_TEMPFAIL)))
    }
}

/// The last lines of the program's stderr, bounded, for the error message.
fn tail(stderr: &[u8]) -> String {
    // The program may print its API token (a verbose curl, a failed login): the
    // error goes to the terminal, the journal and the reports. Known secrets and
    // credentials by their shape (one the program fetched itself) are masked.
    let text = crate::infra::redact::scrubbed(String::from_utf8_lossy(stderr).into_owned());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let joined = lines[start..].join(" | ");
    let chars: Vec<char> = joined.chars().collect();
    let from = chars.len().saturating_sub(STDERR_TAIL_CHARS);
    let s: String = chars[from..].iter().collect();
    if s.is_empty() {
        "no output on stderr".to_string()
    } else {
        s
    }
}
