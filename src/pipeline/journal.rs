//! The journal: the single source of truth for where every relay stands.
//!
//! One JSON file per inventory in the state directory, rewritten atomically (temp
//! file, fsync, rename, fsync of the directory) after every change, and guarded by
//! an advisory lock so two runs cannot drive one fleet.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::events::Event;
use crate::model::step::ErrorKind;
use crate::model::step::{Commit, Step};

const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another cmfleet run holds the journal lock {} (hint: wait for it to finish; if none is running, the lock is released automatically)", path.display())]
    Locked { path: PathBuf },
    #[error("cannot read the journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal {} is corrupt: {reason} (hint: it is never reset silently; move it away to start over, losing the record of what was done)", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("the journal {} belongs to the inventory {}, not {} (hint: use that inventory, or another state_dir)", path.display(), recorded.display(), given.display())]
    Foreign {
        path: PathBuf,
        recorded: PathBuf,
        given: PathBuf,
    },
    #[error("cannot write the journal {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Status of one step of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub note: Option<String>,
}

/// Everything known about one relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// Steps 1 to 6, in order.
    pub steps: Vec<StepRecord>,
    /// Step 3 start: the relay went down.
    pub down_since_ms: Option<u64>,
    /// Step 6 end: the relay is back, on NEW.
    pub up_again_ms: Option<u64>,
    /// Rollbacks done by `cmfleet rollback`.
    #[serde(default)]
    pub rollbacks: Vec<u64>,
    /// Set by `cmfleet dns lower-ttl`: what to restore, and when the cutover may start.
    #[serde(default)]
    pub dns_ttl: Option<TtlRecord>,
    /// Step 3 failed and OLD was seen still accepting mail afterwards: not down.
    #[serde(default)]
    pub old_still_serving: bool,
    /// Step 3's change on OLD (`cmdeploy --disable-mail`, or `systemctl disable
    /// --now`) was about to start (recorded before it did): OLD may be disabled, whatever happened to the controller since.
    /// Cleared only when OLD is seen serving again. Journals from before this
    /// field assume it for a relay that started step 3 (the safe side).
    #[serde(default = "assume_disabled")]
    pub old_may_be_disabled: bool,
    /// How step 3 last set out to disable OLD, so that a rollback undoes that way.
    /// Journals from before `disable_old` existed only knew cmdeploy's.
    #[serde(default)]
    pub old_disabled_by: crate::model::inventory::DisableOld,
    /// The chatmail relay commits deployed on NEW. Journals from before this field
    /// read as unknown (`None`), not as "nothing deployed".
    #[serde(default)]
    pub deployed: Deployed,
}

/// What cmdeploy put on a relay's NEW, by the step that ran it: the checkout may
/// move between pre-staging and the cutover (an operator pulls a release), so the
/// two can differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// Step 2 (install and configure), at its last success.
    #[serde(default)]
    pub preconfigure: Option<Commit>,
    /// Step 6 (activate), at its last success.
    #[serde(default)]
    pub activate: Option<Commit>,
}

fn assume_disabled() -> bool {
    true
}

/// A TTL lowered ahead of the migration (the guide's advice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlRecord {
    /// The TTL served before lowering: resolvers may cache the old address this long.
    pub original: u32,
    pub lowered_to: u32,
    pub lowered_at_ms: u64,
}

impl TtlRecord {
    /// How long until every resolver has forgotten the records served with the
    /// original TTL; zero when the cutover may start.
    pub fn remaining(&self, now_ms: u64) -> Duration {
        let ready = self
            .lowered_at_ms
            .saturating_add(u64::from(self.original) * 1000);
        Duration::from_millis(ready.saturating_sub(now_ms))
    }
}

/// Where a relay stands, derived from its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayState {
    NotStarted,
    /// Some steps done, not yet down (pre-staged).
    Staged,
    /// Old disabled, new not active: users cannot get mail.
    Down,
    Done,
}

impl Default for RelayRecord {
    /// A relay nothing was done to yet: six pending steps.
    fn default() -> Self {
        RelayRecord {
            steps: vec![StepRecord::default(); 6],
            down_since_ms: None,
            up_again_ms: None,
            rollbacks: Vec::new(),
            dns_ttl: None,
            old_may_be_disabled: false,
            old_still_serving: false,
            old_disabled_by: crate::model::inventory::DisableOld::Cmdeploy,
            deployed: Deployed::default(),
        }
    }
}

impl RelayRecord {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn step(&self, step: Step) -> &StepRecord {
        &self.steps[usize::from(step.number() - 1)]
    }

    pub fn step_mut(&mut self, step: Step) -> &mut StepRecord {
        &mut self.steps[usize::from(step.number() - 1)]
    }

    fn finished(&self, step: Step) -> bool {
        matches!(
            self.step(step).status,
            StepStatus::Done | StepStatus::Skipped
        )
    }

    /// The first step not yet done, or `None` when the relay is migrated.
    pub fn next_step(&self) -> Option<Step> {
        Step::ALL.into_iter().find(|s| !self.finished(*s))
    }

    pub fn state(&self) -> RelayState {
        let touched =
            |s: Step| self.step(s).status != StepStatus::Pending || self.step(s).attempts > 0;
        if self.finished(Step::Activate) && self.finished(Step::Dns) {
            RelayState::Done
        } else if touched(Step::DisableOld)
            && self.may_be_disabled()
            && !self.failed_before_disabling()
        {
            RelayState::Down
        } else if Step::ALL.iter().any(|s| touched(*s)) {
            RelayState::Staged
        } else {
            RelayState::NotStarted
        }
    }

    /// Whether cmdeploy may have disabled OLD: it was recorded as about to start,
    /// or step 3 finished.
    fn may_be_disabled(&self) -> bool {
        self.old_may_be_disabled || self.finished(Step::DisableOld)
    }

    /// Step 3 failed and left OLD serving mail: the relay is staged, not down.
    fn failed_before_disabling(&self) -> bool {
        self.old_still_serving && self.step(Step::DisableOld).status == StepStatus::Failed
    }

    /// The failed step, if the relay's last attempt failed.
    pub fn failed_step(&self) -> Option<Step> {
        Step::ALL
            .into_iter()
            .find(|s| self.step(*s).status == StepStatus::Failed)
    }

    pub fn downtime(&self) -> Option<Duration> {
        let start = self.down_since_ms?;
        let end = self.up_again_ms.unwrap_or_else(now_ms);
        Some(Duration::from_millis(end.saturating_sub(start)))
    }
}

/// The journal's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalData {
    pub version: u32,
    /// The inventory this journal belongs to (absolute).
    pub inventory: PathBuf,
    pub relays: BTreeMap<String, RelayRecord>,
}

/// An open, locked journal. Only one exists per fleet at a time.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub data: JournalData,
    /// Held for the journal's lifetime: the advisory lock.
    _lock: File,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where the journal of `inventory` lives inside `state_dir`.
pub fn journal_path(state_dir: &Path, inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map_or("fleet".into(), |s| s.to_string_lossy());
    state_dir.join(format!("{stem}.journal.json"))
}

/// Creates the state directory 0700: logs and the journal are nobody else's business.
pub fn ensure_state_dir(dir: &Path) -> Result<(), JournalError> {
    crate::infra::state_dir::ensure(dir).map_err(|source| JournalError::StateDir {
        path: dir.to_path_buf(),
        source,
    })
}

impl Journal {
    /// Opens (or creates) and locks the journal for `inventory`.
    pub fn open(state_dir: &Path, inventory: &Path) -> Result<Journal, JournalError> {
        ensure_state_dir(state_dir)?;
        let path = journal_path(state_dir, inventory);
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| JournalError::Write {
                path: lock_path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked { path: lock_path });
        }
        let inventory = std::path::absolute(inventory).unwrap_or_else(|_| inventory.to_path_buf());
        let data = Self::read(&path, &inventory)?;
        Ok(Journal {
            path,
            data,
            _lock: lock,
        })
    }

    /// Reads the journal without locking it (for `status`).
    pub fn peek(state_dir: &Path, inventory: &Path) -> Result<JournalData, JournalError> {
        let path = journal_path(state_dir, inventory);
        let inventory = std::path::absolute(inventory).unwrap_or_else(|_| inventory.to_path_buf());
        Self::read(&path, &inventory)
    }

    fn read(path: &Path, inventory: &Path) -> Result<JournalData, JournalError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(JournalData {
                    version: VERSION,
                    inventory: inventory.to_path_buf(),
                    relays: BTreeMap::new(),
                })
            }
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let data: JournalData = serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if data.version != VERSION {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "version {} is not the supported version {VERSION}",
                    data.version
                ),
            });
        }
        if data.relays.values().any(|r| r.steps.len() != 6) {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                reason: "a relay does not have six steps".into(),
            });
        }
        if data.inventory != inventory {
            return Err(JournalError::Foreign {
                path: path.to_path_buf(),
                recorded: data.inventory,
                given: inventory.to_path_buf(),
            });
        }
        Ok(data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn relay(&mut self, name: &str) -> &mut RelayRecord {
        self.data.relays.entry(name.to_string()).or_default()
    }

    /// A step marked running when a run starts was interrupted by a dead controller:
    /// it goes back to pending and is re-run (every step is idempotent).
    pub fn recover_interrupted(&mut self) -> Vec<(String, Step)> {
        let mut found = Vec::new();
        for (name, r) in &mut self.data.relays {
            for step in Step::ALL {
                let s = r.step_mut(step);
                if s.status == StepStatus::Running {
                    s.status = StepStatus::Pending;
                    s.note = Some("interrupted (the controller stopped); re-run".into());
                    found.push((name.clone(), step));
                }
            }
        }
        found
    }

    /// Records an event; returns whether the journal changed (and must be saved).
    pub fn apply(&mut self, event: &Event) -> bool {
        let now = now_ms();
        match event {
            Event::StepStarted {
                relay,
                step,
                attempt,
            } => {
                let r = self.relay(relay);
                if *step == Step::DisableOld {
                    r.old_still_serving = false;
                }
                let s = r.step_mut(*step);
                s.status = StepStatus::Running;
                s.attempts = s.attempts.max(*attempt);
                s.started_ms = Some(now);
                s.finished_ms = None;
                true
            }
            Event::StepDone {
                relay,
                step,
                note,
                deployed,
                ..
            } => {
                let r = self.relay(relay);
                // What the step says it deployed, also nothing: a stale commit from
                // an earlier success would name a version NEW may no longer run.
                match step {
                    Step::Preconfigure => r.deployed.preconfigure = deployed.clone(),
                    Step::Activate => r.deployed.activate = deployed.clone(),
                    _ => {}
                }
                let s = r.step_mut(*step);
                // Step 5 reports a note exactly when it changed nothing (an IP
                // mail_domain, provider "none"): that is a skip, not a switch.
                s.status = if note.is_some() && *step == Step::Dns {
                    StepStatus::Skipped
                } else {
                    StepStatus::Done
                };
                s.finished_ms = Some(now);
                s.error = None;
                s.error_kind = None;
                s.note = note.clone();
                // Steps 5 and 6 run side by side: up when the later one is done.
                if matches!(step, Step::Dns | Step::Activate) && r.state() == RelayState::Done {
                    r.up_again_ms = Some(now);
                }
                true
            }
            Event::OldStillServing { relay } => {
                let r = self.relay(relay);
                r.old_still_serving = true;
                r.old_may_be_disabled = false;
                r.down_since_ms = None;
                true
            }
            Event::ServingChange { relay, change } => {
                let r = self.relay(relay);
                if let Some(way) = change.disables_old() {
                    r.old_may_be_disabled = true;
                    r.old_disabled_by = way;
                    // The downtime starts here, not at step 3's preflight.
                    r.down_since_ms.get_or_insert(now);
                }
                true
            }
            Event::StepFailed {
                relay,
                step,
                kind,
                error,
                ..
            } => {
                let s = self.relay(relay).step_mut(*step);
                s.status = StepStatus::Failed;
                s.finished_ms = Some(now);
                s.error = Some(error.clone());
                s.error_kind = Some(*kind);
                true
            }
            _ => false,
        }
    }

    /// Forgets the selected relays (for `--restart`).
    pub fn forget(&mut self, names: &[String]) {
        for n in names {
            self.data.relays.remove(n);
        }
    }

    /// Writes the journal atomically: readers see the old or the new file, never half.
    pub fn save(&self) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(&self.data).map_err(|e| err(std::io::Error::other(e)))?;
        crate::infra::atomic::write(&self.path, &json).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::events::ServingChange;

    fn started(step: Step) -> Event {
        Event::StepStarted {
            relay: "r".into(),
            step,
            attempt: 1,
        }
    }

    /// A controller killed inside step 3 leaves a journal that knows whether
    /// OLD may be disabled: killed before the write-ahead record (in the preflight
    /// or the hook), the relay is staged and serving; killed after it (cmdeploy
    /// may have started), it is DOWN.
    #[test]
    fn a_kill_before_the_record_is_staged_after_it_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = dir.path().join("fleet.toml");
        std::fs::write(&inventory, "").expect("inventory");
        let mut journal = Journal::open(dir.path(), &inventory).expect("journal");
        for step in [Step::InitialSync, Step::Preconfigure] {
            journal.apply(&started(step));
            journal.apply(&Event::StepDone {
                relay: "r".into(),
                step,
                elapsed: Duration::ZERO,
                note: None,
                deployed: None,
            });
        }
        journal.apply(&started(Step::DisableOld));
        let mut killed = journal.data.clone();
        if let Some(r) = killed.relays.get_mut("r") {
            r.step_mut(Step::DisableOld).status = StepStatus::Pending;
        }
        assert_eq!(killed.relays["r"].state(), RelayState::Staged);
        assert!(killed.relays["r"].down_since_ms.is_none());

        journal.apply(&Event::ServingChange {
            relay: "r".into(),
            change: ServingChange::DisableOld,
        });
        let rec = journal.relay("r");
        rec.step_mut(Step::DisableOld).status = StepStatus::Pending;
        assert_eq!(rec.state(), RelayState::Down);
        assert!(rec.down_since_ms.is_some());
    }

    /// A journal written before the record existed knows nothing of it: a relay
    /// that started step 3 there is taken as possibly disabled (the safe side).
    #[test]
    fn an_older_journal_is_read_on_the_safe_side() {
        let mut rec = RelayRecord::default();
        rec.step_mut(Step::DisableOld).attempts = 1;
        let mut json = serde_json::to_value(&rec).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("old_may_be_disabled");
        let old: RelayRecord = serde_json::from_value(json).expect("read");
        assert_eq!(old.state(), RelayState::Down);
        assert_eq!(rec.state(), RelayState::Staged);
    }

    /// Steps 2 and 6 record what they deployed, each its own; a journal from
    /// before the field reads as unknown.
    #[test]
    fn deployed_commits_are_recorded_per_step_and_unknown_in_older_journals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = dir.path().join("fleet.toml");
        std::fs::write(&inventory, "").expect("inventory");
        let mut journal = Journal::open(dir.path(), &inventory).expect("journal");
        let commit = |c: char| Commit::new(&c.to_string().repeat(40)).expect("commit");
        for (step, deployed) in [
            (Step::Preconfigure, Some(commit('a'))),
            (Step::FinalSync, None),
            (Step::Activate, Some(commit('b'))),
        ] {
            journal.apply(&Event::StepDone {
                relay: "r".into(),
                step,
                elapsed: Duration::ZERO,
                note: None,
                deployed,
            });
        }
        let rec = journal.relay("r").clone();
        assert_eq!(rec.deployed.preconfigure, Some(commit('a')));
        assert_eq!(rec.deployed.activate, Some(commit('b')));
        let mut json = serde_json::to_value(&rec).expect("json");
        assert_eq!(json["deployed"]["activate"], "b".repeat(40));
        json.as_object_mut().expect("object").remove("deployed");
        let old: RelayRecord = serde_json::from_value(json).expect("read");
        assert_eq!(old.deployed, Deployed::default());
    }

    /// Before `disable_old` there was only cmdeploy's way: an older journal's relay
    /// is rolled back with cmdeploy; a newer one keeps the way it recorded.
    #[test]
    fn the_way_step_3_disabled_old_survives_and_defaults_to_cmdeploy() {
        use crate::model::inventory::DisableOld;
        let rec = RelayRecord {
            old_disabled_by: DisableOld::Systemctl,
            ..RelayRecord::default()
        };
        let mut json = serde_json::to_value(&rec).expect("json");
        let back: RelayRecord = serde_json::from_value(json.clone()).expect("read");
        assert_eq!(back.old_disabled_by, DisableOld::Systemctl);
        assert_eq!(json["old_disabled_by"], "systemctl");
        json.as_object_mut()
            .expect("object")
            .remove("old_disabled_by");
        let old: RelayRecord = serde_json::from_value(json).expect("read");
        assert_eq!(old.old_disabled_by, DisableOld::Cmdeploy);
    }
}
