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
