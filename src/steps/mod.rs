//! The six steps of the guide, what each runs, and their executors.

pub mod commands;
pub mod dns;
pub mod exec;
pub mod proof;

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
