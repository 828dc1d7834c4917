//! The basic types of a migration: the six steps, and how a step fails. A leaf:
//! every part of the pipeline speaks these, and they depend on nothing of cmfleet.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One step of a relay's migration, in the guide's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    InitialSync,
    Preconfigure,
    DisableOld,
    FinalSync,
    Dns,
    Activate,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::InitialSync,
        Step::Preconfigure,
        Step::DisableOld,
        Step::FinalSync,
        Step::Dns,
        Step::Activate,
    ];

    /// The guide's step number, 1 to 6.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    pub fn from_number(n: u8) -> Option<Step> {
        Step::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::InitialSync => "initial-sync",
            Step::Preconfigure => "preconfigure",
            Step::DisableOld => "disable-old",
            Step::FinalSync => "final-sync",
            Step::Dns => "dns",
            Step::Activate => "activate",
        }
    }

    /// Steps 3 to 6 happen while the relay is down: old disabled, new not active.
    pub fn in_cutover(self) -> bool {
        self >= Step::DisableOld
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// Why a step failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Worth retrying: connection refused or reset, timeouts, rsync partial transfers.
    Transient,
    /// Retrying will not help: auth failure, host key mismatch, a command that failed.
    Permanent,
    /// Stopped by the operator (second Ctrl-C).
    Interrupted,
}

impl fmt::Display for ErrorKind {
    /// As the JSON names it: "transient", "permanent", "interrupted".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Interrupted => "interrupted",
        })
    }
}

/// A failed step, classified for the scheduler.
#[derive(Debug, Clone)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// What a successful step reports: `Some(note)` when it had nothing to do.
pub type StepResult = Result<Option<String>, StepError>;

/// A commit of the chatmail relay checkout, in full as `git rev-parse HEAD` prints
/// it: the version a cmdeploy run put on a host. Checked when read (a journal edited
/// by hand must not carry anything else into a report).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Commit(String);

/// Text that is not a full git commit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a full git commit id (40 or 64 lowercase hex digits)")]
pub struct NotACommit(pub String);

impl Commit {
    /// The commit, if `id` is one in full: SHA-1 (40 hex digits) or SHA-256 (64).
    pub fn new(id: &str) -> Result<Commit, NotACommit> {
        let hex = id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex && matches!(id.len(), 40 | 64) {
            Ok(Commit(id.to_string()))
        } else {
            Err(NotACommit(id.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as people quote a commit (git's `--short=12`).
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for Commit {
    type Error = NotACommit;
    fn try_from(id: String) -> Result<Commit, NotACommit> {
        Commit::new(&id)
    }
}

impl From<Commit> for String {
    fn from(c: Commit) -> String {
        c.0
    }
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step that succeeded tells the journal and the reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepSuccess {
    /// Set when the step did nothing, or has something to say (e.g. DNS not
    /// applicable, a failed post_cutover hook on an active relay).
    pub note: Option<String>,
    /// The chatmail relay commit the step deployed on NEW (steps 2 and 6).
    pub deployed: Option<Commit>,
}

impl StepSuccess {
    /// A success with at most a note, deploying nothing.
    pub fn noted(note: Option<String>) -> StepSuccess {
        StepSuccess {
            note,
            deployed: None,
        }
    }
}

/// How a whole step ends, as the scheduler sees it.
pub type StepOutcome = Result<StepSuccess, StepError>;

#[cfg(test)]
mod tests {
    use super::Commit;

    #[test]
    fn only_full_lowercase_commit_ids_are_commits() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            Commit::new(sha1).map(|c| c.short().to_string()),
            Ok("0123456789ab".into())
        );
        assert!(Commit::new(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "0123456789ab",
            &sha1.to_uppercase(),
            &format!("{sha1}\n"),
            &"g".repeat(40),
        ] {
            assert!(Commit::new(bad).is_err(), "{bad:?}");
        }
        let json: Result<Commit, _> = serde_json::from_str("\"not a commit\"");
        assert!(json.is_err());
        assert_eq!(
            serde_json::to_string(&Commit::new(sha1).expect("commit")).ok(),
            Some(format!("\"{sha1}\""))
        );
    }
}
