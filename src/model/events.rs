//! Events: what the engine tells the world. Executors and the scheduler send
//! these; the reporter draws them and the journal records them. Nobody else prints.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::model::step::{Commit, ErrorKind, Step};

/// An action that changes whether a relay serves mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServingChange {
    /// `cmdeploy --disable-mail` on OLD (step 3).
    DisableOld,
    /// `systemctl disable --now` of dovecot and postfix on OLD (step 3 with
    /// `disable_old = "systemctl"`).
    StopOldUnits,
    /// The activate stage on NEW (step 6).
    ActivateNew,
}

impl ServingChange {
    /// How this change disables OLD, if it does.
    pub fn disables_old(self) -> Option<crate::model::inventory::DisableOld> {
        match self {
            ServingChange::DisableOld => Some(crate::model::inventory::DisableOld::Cmdeploy),
            ServingChange::StopOldUnits => Some(crate::model::inventory::DisableOld::Systemctl),
            ServingChange::ActivateNew => None,
        }
    }
}

/// Why a relay is not running right now although it could.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitReason {
    Forks,
    TransferLimit,
    GroupTransferLimit(String),
    CmdeployLimit,
    CutoverLimit,
    StagingBudget,
    ConnectRate,
    DnsRate,
    Backoff(Duration),
    Wave(usize),
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitReason::Forks => f.write_str("fork limit"),
            WaitReason::TransferLimit => f.write_str("transfer limit"),
            WaitReason::GroupTransferLimit(g) => write!(f, "transfer limit of group {g}"),
            WaitReason::CmdeployLimit => f.write_str("cmdeploy limit"),
            WaitReason::CutoverLimit => f.write_str("cutover limit"),
            WaitReason::StagingBudget => f.write_str("staging budget"),
            WaitReason::ConnectRate => f.write_str("ssh connection rate"),
            WaitReason::DnsRate => f.write_str("DNS update rate"),
            WaitReason::Backoff(d) => write!(f, "retry in {}s", d.as_secs()),
            WaitReason::Wave(n) => write!(f, "wave {n}"),
        }
    }
}

/// One thing that happened during a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        relays: usize,
    },
    Waiting {
        relay: String,
        reason: WaitReason,
    },
    StepStarted {
        relay: String,
        step: Step,
        attempt: u32,
    },
    /// A line of a command's output (stdout or stderr; rsync's `\r` updates split).
    Output {
        relay: String,
        step: Step,
        line: String,
    },
    /// Transfer progress parsed from rsync's `--info=progress2`.
    Progress {
        relay: String,
        step: Step,
        bytes: u64,
        percent: u8,
        rate: String,
    },
    StepDone {
        relay: String,
        step: Step,
        elapsed: Duration,
        /// Set when the step did nothing, with the reason (e.g. DNS not applicable).
        note: Option<String>,
        /// The chatmail relay commit the step deployed on NEW (steps 2 and 6): the
        /// journal keeps it, so that the reports can say what each NEW runs.
        deployed: Option<Commit>,
    },
    StepFailed {
        relay: String,
        step: Step,
        attempt: u32,
        kind: ErrorKind,
        error: String,
        /// Whether the scheduler will try again after a backoff.
        will_retry: bool,
    },
    /// Step 3 failed but OLD still accepts mail: the relay is not down.
    OldStillServing {
        relay: String,
    },
    /// About to change whether a relay serves mail: recorded (on disk) before the
    /// action starts, so a controller killed at any point leaves a journal that
    /// knows whether OLD may already be disabled.
    ServingChange {
        relay: String,
        change: ServingChange,
    },
    /// The run stopped starting relays (max_fail_percent, Ctrl-C), and why.
    Halted {
        reason: String,
    },
    RunFinished {
        elapsed: Duration,
    },
}

impl Event {
    pub fn relay(&self) -> Option<&str> {
        match self {
            Event::Waiting { relay, .. }
            | Event::StepStarted { relay, .. }
            | Event::Output { relay, .. }
            | Event::Progress { relay, .. }
            | Event::StepDone { relay, .. }
            | Event::StepFailed { relay, .. }
            | Event::OldStillServing { relay }
            | Event::ServingChange { relay, .. } => Some(relay),
            _ => None,
        }
    }
}

impl Event {
    /// The event with every known secret masked in its text: every event reaches
    /// the journal, the reports and the terminal, so this is the one place where
    /// command output and error messages (a hook's, a DNS program's) are cleaned.
    fn redacted(self) -> Event {
        use crate::infra::redact::cleaned;
        match self {
            Event::Output { relay, step, line } => Event::Output {
                relay,
                step,
                line: cleaned(line),
            },
            Event::StepDone {
                relay,
                step,
                elapsed,
                note,
                deployed,
            } => Event::StepDone {
                relay,
                step,
                elapsed,
                note: note.map(cleaned),
                deployed,
            },
            Event::StepFailed {
                relay,
                step,
                attempt,
                kind,
                error,
                will_retry,
            } => Event::StepFailed {
                relay,
                step,
                attempt,
                kind,
                error: cleaned(error),
                will_retry,
            },
            Event::Halted { reason } => Event::Halted {
                reason: cleaned(reason),
            },
            other => other,
        }
    }
}

/// An event on its way to the journal, and who waits until it is saved.
#[derive(Debug)]
pub struct Envelope {
    pub event: Event,
    /// Told whether the journal saved the event (write-ahead: see
    /// [`EventSink::record_first`]).
    pub recorded: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// Where events go. Cloned freely; sending never blocks the engine on the display.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Envelope>,
}

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx }, rx)
    }

    /// A sink that drops everything (for commands that do not report progress).
    pub fn discard() -> EventSink {
        let (tx, _rx) = mpsc::unbounded_channel();
        EventSink { tx }
    }

    pub fn send(&self, event: Event) {
        // The receiver only goes away when the run is over; late events are moot then.
        let _ = self.tx.send(Envelope {
            event: event.redacted(),
            recorded: None,
        });
    }

    /// Sends `event` and waits until the run's journal has saved it, and every
    /// event sent before it: for what must be on disk before an action that
    /// changes whether a relay serves mail. `false` when it was not saved (the
    /// journal could not be written, or nothing records this sink's events).
    pub async fn record_first(&self, event: Event) -> bool {
        let (done, saved) = tokio::sync::oneshot::channel();
        let envelope = Envelope {
            event: event.redacted(),
            recorded: Some(done),
        };
        self.tx.send(envelope).is_ok() && saved.await.unwrap_or(false)
    }
}
