//! Running one step of one relay for real: over ssh, locally, at the DNS provider.
//!
//! The executor never prints: output goes to the relay's log and to events.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Step;
use crate::host::catalogue;
use crate::host::proof;
use crate::host::remote::{
    run_process, CommandError, CommandKind, HostConn, LineSink, SshPool, SshPoolConfig, Stdout,
    WorkspacePool,
};
use crate::model::events::{EventSink, ServingChange};
use crate::model::inventory::{DisableOld, Fleet, Host, Relay, TransferMode};
use crate::model::step::{ErrorKind, StepError, StepOutcome, StepResult, StepSuccess};

/// Listing records buffered between a host and the proof's merge, per side.
const LISTING_RECORDS_IN_FLIGHT: usize = 128;

/// Which copy a transfer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Step 1 into a NEW with no mail yet: the guide's tar pipe (`bytes` to copy,
    /// for progress). It costs half of rsync's CPU on both hosts (no file lists,
    /// no temp files), and anything it misses, step 4's exact mirror catches.
    FirstCopy { bytes: u64 },
    /// Step 1 again (a retry, `--refresh`), or into a NEW that holds mail: an rsync
    /// delta; `mirror` (with `--delete`) only over data cmfleet put there itself.
    Delta { mirror: bool },
    /// Step 4: the exact mirror of everything; the mailboxes owned by NEW's vmail
    /// (`uid`, `gid`) as they are copied. Without `mirror`, the mailboxes' rsync
    /// leaves what OLD does not have for NEW's proof listing to remove
    /// (`proof::Handoff`).
    Final { vmail: (u32, u32), mirror: bool },
}

/// About what `tar c` of OLD's mailboxes writes (its progress counts archive bytes):
/// the data, and per entry a 512-byte header plus on average half a block of padding.
fn tar_size(old: &crate::host::inspect::HostFacts) -> u64 {
    let (bytes, entries) = (old.mail_used.unwrap_or(0), old.mail_entries.unwrap_or(0));
    bytes.saturating_add(entries.saturating_mul(768))
}

impl Pass {
    /// Step 1's copy; `placed`: cmfleet's step 1 of this relay ran before (so what
    /// NEW holds is cmfleet's copy, which may be mirrored).
    fn initial(facts: &crate::host::inspect::Inspection, placed: bool) -> Pass {
        match (&facts.old, &facts.new) {
            (Some(old), Some(new)) if new.mail_empty => Pass::FirstCopy {
                bytes: tar_size(old),
            },
            _ => Pass::Delta { mirror: placed },
        }
    }
}

/// Everything steps share during one run.
pub struct Executor {
    fleet: Fleet,
    pub ssh: SshPool,
    workspaces: WorkspacePool,
    staging: PathBuf,
    /// The staging byte budget, in KiB permits, held per relay from its first
    /// staged hop to the end of its final sync.
    staging_budget: Arc<Semaphore>,
    staged: Mutex<HashMap<String, OwnedSemaphorePermit>>,
    /// Relays whose step 1 has run (in the journal before this run, or started in
    /// it): only what cmfleet put on a NEW may be deleted there by step 1.
    placed: Mutex<HashSet<String>>,
    /// DNS updates, fleet-wide: bounded in flight and rate limited.
    dns_gate: crate::infra::dns::DnsGate,
    events: EventSink,
}

/// Largest staging reservation expressible in semaphore permits.
const MAX_KIB: u64 = (u32::MAX >> 3) as u64;

impl Executor {
    pub fn new(
        fleet: &Fleet,
        groups: &std::collections::BTreeMap<String, crate::model::inventory::GroupLimits>,
        events: EventSink,
        keep_masters: bool,
    ) -> Result<Executor, StepError> {
        let state = &fleet.state_dir;
        let ssh = SshPool::new(&SshPoolConfig {
            state_dir: state.clone(),
            auth_sock: fleet.ssh_auth_sock.clone(),
            connects_per_sec: fleet.limits.ssh_connects_per_sec,
            group_connects_per_sec: groups
                .iter()
                .filter_map(|(g, l)| l.ssh_connects_per_sec.map(|r| (g.clone(), r)))
                .collect(),
            keep_masters,
        })?;
        let workspaces = WorkspacePool::prepare(
            &fleet.cmdeploy,
            &state.join("workspaces"),
            fleet.limits.cmdeploy_runs,
        )
        .map_err(|e| StepError::permanent(e.to_string()))?;
        let logs = crate::infra::state_dir::logs_dir(state);
        crate::infra::state_dir::ensure(&logs)
            .map_err(|e| StepError::permanent(format!("cannot create {}: {e}", logs.display())))?;
        let budget_kib = (fleet.limits.staging_budget / 1024).clamp(1, MAX_KIB);
        Ok(Executor {
            fleet: fleet.clone(),
            ssh,
            workspaces,
            staging: state.join("staging"),
            staging_budget: Arc::new(Semaphore::new(budget_kib as usize)),
            staged: Mutex::new(HashMap::new()),
            placed: Mutex::new(HashSet::new()),
            dns_gate: crate::infra::dns::DnsGate::with_rate(
                std::num::NonZeroU32::new(fleet.limits.dns_updates_per_sec)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            ),
            events,
        })
    }

    pub fn log_path(&self, relay: &str) -> PathBuf {
        crate::infra::state_dir::log_path(&self.fleet.state_dir, relay)
    }

    /// The relay's log and event stream for `step` (also for rollback).
    pub fn sink(&self, relay: &Relay, step: Step) -> LineSink {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path(&relay.name))
            .ok()
            .map(|f| Arc::new(Mutex::new(f)));
        LineSink {
            relay: relay.name.clone(),
            step,
            events: self.events.clone(),
            log,
        }
    }

    /// Runs one step. Every step is idempotent: re-running a finished one is safe.
    pub async fn run(&self, relay: &Relay, step: Step) -> StepOutcome {
        let sink = self.sink(relay, step);
        sink.log(&format!(
            "== {} step {step}",
            crate::pipeline::journal::now_ms()
        ));
        let result = match step {
            Step::InitialSync => {
                // Refuse a relay that would fail later (full disk, wrong config, DNS
                // elsewhere) before any of its work starts.
                let facts =
                    crate::host::inspect::preflight(&self.ssh, &self.fleet.cmdeploy, relay, &sink)
                        .await?;
                // From the moment a copy starts, NEW may hold cmfleet's data.
                let placed = !self.placed_mut().insert(relay.name.clone());
                self.sync(relay, Pass::initial(&facts, placed), &sink)
                    .await
                    .map(StepSuccess::noted)
            }
            Step::Preconfigure => {
                self.cmdeploy(catalogue::preconfigure(relay), &sink).await?;
                // NEW stays inactive until step 6 (see the catalogue).
                self.on_host(
                    relay,
                    &relay.new,
                    &catalogue::stop_package_services(),
                    &sink,
                )
                .await?;
                Ok(self.deployed(None))
            }
            Step::DisableOld => {
                // OLD has served mail since step 1: what would fail the proof inside
                // the downtime is found now, while refusing costs nothing. Then the
                // operator's hook, then cmdeploy: a failure of any of the three leaves
                // OLD serving, and the relay must not be reported DOWN for it. OLD's
                // port decides rather than which part failed: an earlier attempt (a
                // retry, or a run killed inside cmdeploy) may have disabled it already.
                let disabled = async {
                    crate::host::inspect::cutover_preflight(&self.ssh, relay, &sink).await?;
                    self.hook(
                        relay,
                        relay.settings.hooks.pre_cutover.as_deref(),
                        "pre_cutover",
                        &sink,
                    )
                    .await?;
                    self.disable_old(relay, &sink).await
                }
                .await;
                if let Err(e) = disabled {
                    self.still_serving(relay, &sink).await;
                    return Err(e);
                }
                match relay.settings.disable_old {
                    DisableOld::Cmdeploy => expect_port(&relay.old, false).await,
                    DisableOld::Systemctl => self.expect_old_refuses_smtp(relay, &sink).await,
                }
                .map(StepSuccess::noted)
            }
            Step::FinalSync => self.final_sync(relay, &sink).await.map(StepSuccess::noted),
            Step::Dns => super::dns::switch(relay, &self.dns_gate, &sink)
                .await
                .map(StepSuccess::noted),
            Step::Activate => {
                // Unlike step 3, an activation the journal could not record first
                // leaves it on the safe side (DOWN while NEW may serve, and a run
                // re-activates: it is idempotent); not activating would leave the
                // relay down for users. In-flight cutovers finish (see migrate).
                if self
                    .record_first(relay, ServingChange::ActivateNew)
                    .await
                    .is_err()
                {
                    sink.log("the journal could not record the activation first; activating anyway (the journal says DOWN until a run records it)");
                }
                self.cmdeploy(catalogue::activate(relay), &sink).await?;
                expect_port(&relay.new, true).await?;
                // The relay is up: a failing notification hook must not make it look down.
                match self
                    .hook(
                        relay,
                        relay.settings.hooks.post_cutover.as_deref(),
                        "post_cutover",
                        &sink,
                    )
                    .await
                {
                    Ok(_) => Ok(self.deployed(None)),
                    Err(e) => Ok(self.deployed(Some(&format!("relay active; {}", e.message)))),
                }
            }
        };
        if let Err(e) = &result {
            sink.log(&format!("step failed ({}): {}", e.kind, e.message));
        }
        result
    }

    /// Vouches that cmfleet's step 1 ran for these relays before this run (the
    /// journal says so): their NEW holds cmfleet's copy.
    pub fn vouch_placed(&self, relays: impl IntoIterator<Item = String>) {
        self.placed_mut().extend(relays);
    }

    fn placed_mut(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.placed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What steps 2 and 6 deployed, for the journal and the reports: the commit as
    /// data, and in the note for the live lines (with `more` after it).
    fn deployed(&self, more: Option<&str>) -> StepSuccess {
        let commit = &self.workspaces.commit;
        let mut note = format!("deployed chatmail relay commit {}", commit.short());
        if let Some(more) = more {
            note = format!("{note}; {more}");
        }
        StepSuccess {
            note: Some(note),
            deployed: Some(commit.clone()),
        }
    }

    /// Write-ahead: `change` is on disk before it starts, so a controller killed at
    /// any point leaves a journal that knows what may have happened to the relay.
    async fn record_first(&self, relay: &Relay, change: ServingChange) -> Result<(), StepError> {
        let event = crate::model::events::Event::ServingChange {
            relay: relay.name.clone(),
            change,
        };
        if self.events.record_first(event).await {
            return Ok(());
        }
        Err(StepError::permanent(format!(
            "not started: the journal could not record it first ({change:?}); nothing was changed on the hosts"
        )))
    }

    /// Step 3's change itself, write-ahead recorded with the way it takes.
    async fn disable_old(&self, relay: &Relay, sink: &LineSink) -> StepResult {
        match relay.settings.disable_old {
            DisableOld::Cmdeploy => {
                self.record_first(relay, ServingChange::DisableOld).await?;
                self.cmdeploy(catalogue::disable_old(relay), sink).await
            }
            DisableOld::Systemctl => {
                self.record_first(relay, ServingChange::StopOldUnits)
                    .await?;
                self.on_old(relay, &catalogue::systemctl_disable_mail(), sink)
                    .await
            }
        }
    }

    /// One command on OLD over cmfleet's own connection (also for rollback).
    pub async fn on_old(&self, relay: &Relay, script: &str, sink: &LineSink) -> StepResult {
        self.on_host(relay, &relay.old, script, sink).await
    }

    /// One command on one of the relay's hosts over cmfleet's own connection.
    async fn on_host(
        &self,
        relay: &Relay,
        host: &Host,
        script: &str,
        sink: &LineSink,
    ) -> StepResult {
        let conn = self.connect(relay, host).await?;
        self.ssh
            .run(&conn, script, false, CommandKind::Plain, sink, Stdout::Sink)
            .await?;
        Ok(None)
    }

    /// After `systemctl disable --now`: OLD's port 25 must refuse, seen from OLD itself
    /// (a firewall cannot fake that) and not open from the controller. Until it does
    /// OLD still takes mail, yet it may be half stopped (dovecot down): the relay is
    /// not reported as serving, it stays recorded as possibly disabled.
    async fn expect_old_refuses_smtp(&self, relay: &Relay, sink: &LineSink) -> StepResult {
        let deadline = tokio::time::Instant::now() + PORT_SETTLE;
        loop {
            let seen = self.smtp_seen(relay, sink).await?;
            if seen.refused() {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(seen.error(relay));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One look at OLD's port 25 from both sides, logged.
    async fn smtp_seen(&self, relay: &Relay, sink: &LineSink) -> Result<SmtpSeen, StepError> {
        let old = self.connect(relay, &relay.old).await?;
        let probe = catalogue::smtp_probe(relay.old.ip4);
        let (on_old, from_controller) = tokio::join!(
            self.ssh.run(
                &old,
                &probe,
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture
            ),
            smtp_state(&relay.old)
        );
        let seen = SmtpSeen {
            from_old: on_old?.stdout.unwrap_or_default().trim().to_string(),
            from_controller,
        };
        sink.log(&format!(
            "port 25 of {}: {} from the old host, {} from the controller",
            relay.old.ip4, seen.from_old, seen.from_controller
        ));
        Ok(seen)
    }

    /// After a failed step 3: say whether the relay is down (users care). OLD that
    /// still accepts mail was not disabled, or not for good. Both daemons must answer:
    /// a run stopped between them (cmdeploy and systemctl stop dovecot first) leaves
    /// SMTP open and users without their mail.
    async fn still_serving(&self, relay: &Relay, sink: &LineSink) {
        let (smtp, imap) = tokio::join!(port_open(&relay.old, 25), port_open(&relay.old, IMAP));
        if smtp && imap {
            sink.log("step 3 failed, but the old host still accepts mail: the relay is not down");
            self.events
                .send(crate::model::events::Event::OldStillServing {
                    relay: relay.name.clone(),
                });
        }
    }

    async fn connect(&self, relay: &Relay, host: &Host) -> Result<Arc<HostConn>, StepError> {
        let wait = || {
            self.events.send(crate::model::events::Event::Waiting {
                relay: relay.name.clone(),
                reason: crate::model::events::WaitReason::ConnectRate,
            })
        };
        let opts = crate::host::remote::ConnectOptions::for_relay(relay);
        Ok(self.ssh.connect(host, opts, wait).await?)
    }

    async fn sync(&self, relay: &Relay, pass: Pass, sink: &LineSink) -> StepResult {
        let result = match relay.settings.transfer {
            TransferMode::Direct => self.direct_sync(relay, pass, sink).await,
            TransferMode::Staged => self.staged_sync(relay, pass, sink).await,
        };
        match result {
            Err(e) if e.kind != ErrorKind::Interrupted => {
                if let Some(why) = self.out_of_space(relay, sink).await {
                    return Err(StepError::permanent(format!("{}: {why}", e.message)));
                }
                Err(self.unreachable(relay, sink).await.unwrap_or(e))
            }
            other => other,
        }
    }

    /// After a failed direct transfer: can OLD log in to NEW at all? If it never
    /// can (a refused key), that is the cause to report, with its hint, rather than
    /// rsync's last words. If OLD cannot connect to NEW right now, NEW is named with
    /// ssh's words: the transfer ran on OLD, so its own error names OLD and ends in
    /// rsync's "code 255". That stays transient (NEW may be back for a retry). A NEW
    /// that answers again, or a check that fails otherwise, keeps the transfer's error.
    async fn unreachable(&self, relay: &Relay, sink: &LineSink) -> Option<StepError> {
        if relay.settings.transfer != TransferMode::Direct {
            return None;
        }
        let old = self.connect(relay, &relay.old).await.ok()?;
        let e = crate::host::inspect::old_to_new(&self.ssh, relay, &old, sink)
            .await
            .err()?;
        if let crate::host::inspect::Unreached::NoConnection(said) = &e {
            return Some(StepError {
                kind: ErrorKind::Transient,
                message: format!(
                    "the new host {} cannot be reached from the old host: ssh: {said} (a retry may help once it answers)",
                    relay.new.destination()
                ),
            });
        }
        let finding = crate::host::inspect::unreached_finding(&self.ssh, relay, e);
        (!finding.transient)
            .then(|| StepError::permanent(format!("{}: {}", finding.check, finding.reason)))
    }

    /// After a failed transfer: is NEW simply full? rsync's own "No space left on
    /// device" does not always make it back through two ssh hops, and the operator
    /// must not have to guess (and a retry cannot help).
    async fn out_of_space(&self, relay: &Relay, sink: &LineSink) -> Option<String> {
        let old = self.connect(relay, &relay.old).await.ok()?;
        let new = self.connect(relay, &relay.new).await.ok()?;
        let kib =
            |out: Result<crate::host::remote::ProcessOutput, CommandError>| -> Option<Vec<u64>> {
                let text = out.ok()?.stdout?;
                text.split_whitespace().map(|w| w.parse().ok()).collect()
            };
        let (used, free_and_used) = (catalogue::used_kib(), catalogue::free_and_used_kib());
        let (on_old, on_new) = tokio::join!(
            self.ssh.run(
                &old,
                &used,
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture
            ),
            self.ssh.run(
                &new,
                &free_and_used,
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture
            ),
        );
        let (old_used, new) = (kib(on_old)?, kib(on_new)?);
        let (old_used, free, new_used) = (*old_used.first()?, *new.first()?, *new.get(1)?);
        let missing = old_used.saturating_sub(new_used);
        (free < missing).then(|| {
            format!(
                "No space left on device on the new host: {missing} KiB of mail still to copy, {free} KiB free on its /home/vmail"
            )
        })
    }

    /// OLD pushes to NEW with the forwarded agent; NEW's host key, as cmfleet
    /// verified it, is installed on OLD first so the inner ssh checks it strictly.
    async fn direct_sync(&self, relay: &Relay, pass: Pass, sink: &LineSink) -> StepResult {
        let new = self.connect(relay, &relay.new).await?;
        drop(new);
        let lines = self.ssh.known_host_lines(&relay.new);
        if lines.is_empty() {
            return Err(StepError::permanent(format!(
                "no host key of {} in {} to vouch for it on the old host",
                relay.new.ssh,
                self.ssh.known_hosts().display()
            )));
        }
        let old = self.connect(relay, &relay.old).await?;
        let sync = match pass {
            Pass::FirstCopy { bytes } => catalogue::first_copy(relay, Some(bytes)),
            Pass::Delta { mirror } => catalogue::initial_sync(relay, mirror),
            Pass::Final { vmail, mirror } => catalogue::final_sync(relay, Some(vmail), mirror),
        };
        let script = catalogue::vouched_push(&lines.join("\n"), &sync);
        self.ssh
            .run(
                &old,
                &script,
                true,
                CommandKind::Transfer,
                sink,
                Stdout::Sink,
            )
            .await?;
        Ok(None)
    }

    /// Two rsync hops through the controller's staging directory, each a delta.
    async fn staged_sync(&self, relay: &Relay, pass: Pass, sink: &LineSink) -> StepResult {
        let last = matches!(pass, Pass::Final { .. });
        // A first copy goes into an empty NEW: nothing there to delete.
        let mirror_new = !matches!(pass, Pass::Delta { mirror: false });
        let old = self.connect(relay, &relay.old).await?;
        let new = self.connect(relay, &relay.new).await?;
        self.reserve_staging(relay, &old, sink).await?;
        let hops = catalogue::staged_hops(
            &self.staging,
            relay,
            last,
            mirror_new,
            &old.ssh_command(),
            &new.ssh_command(),
        );
        let dir = &hops.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::permanent(format!("cannot create {}: {e}", dir.display())))?;
        self.local(&hops.pull, None, sink).await?;
        self.local(&hops.push, Some(dir), sink).await?;
        Ok(None)
    }

    /// Holds staging room for the relay's whole tree until its final sync is verified.
    async fn reserve_staging(
        &self,
        relay: &Relay,
        old: &HostConn,
        sink: &LineSink,
    ) -> Result<(), StepError> {
        if self
            .staged
            .lock()
            .map(|m| m.contains_key(&relay.name))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let out = self
            .ssh
            .run(
                old,
                &catalogue::disk_usage(),
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture,
            )
            .await?;
        let bytes: u64 = out
            .stdout
            .as_deref()
            .unwrap_or("")
            .trim()
            .parse()
            .map_err(|_| {
                StepError::permanent(format!(
                    "cannot read the size of the relay's data on {}",
                    old.dest
                ))
            })?;
        let kib = (bytes / 1024 + 1).min(MAX_KIB) as u32;
        if u64::from(kib) > (self.fleet.limits.staging_budget / 1024).max(1) {
            return Err(StepError::permanent(format!(
                "the relay's data ({bytes} bytes) is larger than the whole staging budget"
            )));
        }
        if self.staging_budget.available_permits() < kib as usize {
            self.events.send(crate::model::events::Event::Waiting {
                relay: relay.name.clone(),
                reason: crate::model::events::WaitReason::StagingBudget,
            });
        }
        let permit = self
            .staging_budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| StepError {
                kind: ErrorKind::Interrupted,
                message: "staging closed".into(),
            })?;
        if let Ok(mut m) = self.staged.lock() {
            m.insert(relay.name.clone(), permit);
        }
        Ok(())
    }

    fn release_staging(&self, relay: &Relay) {
        let _ = std::fs::remove_dir_all(catalogue::staging_dir(&self.staging, relay));
        if let Ok(mut m) = self.staged.lock() {
            m.remove(&relay.name);
        }
    }

    async fn local(
        &self,
        argv: &[String],
        cwd: Option<&Path>,
        sink: &LineSink,
    ) -> Result<(), StepError> {
        let Some((program, args)) = argv.split_first() else {
            return Ok(());
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if let Some(sock) = &self.fleet.ssh_auth_sock {
            cmd.env("SSH_AUTH_SOCK", sock);
        }
        sink.log(&format!(
            "$ [controller] {}",
            crate::infra::shell::join(argv)
        ));
        let out = run_process(cmd, sink)
            .await
            .map_err(|e| StepError::permanent(format!("cannot run {program}: {e}")))?;
        if out.code == Some(0) {
            return Ok(());
        }
        Err(StepError {
            kind: crate::host::remote::classify_exit(CommandKind::Transfer, out.code, &out.tail),
            message: out.failure(&format!("{program} on the controller")),
        })
    }

    /// The final mirror, then the proof. A difference gets one more mirror and
    /// proof before it is final: OLD is frozen, so a second pass converges unless
    /// something is really wrong, and a relay left DOWN for a fluke is an outage.
    async fn final_sync(&self, relay: &Relay, sink: &LineSink) -> StepResult {
        let new = self.connect(relay, &relay.new).await?;
        let out = self
            .ssh
            .run(
                &new,
                &catalogue::before_final_sync(),
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture,
            )
            .await?;
        drop(new);
        let said = out.stdout.unwrap_or_default();
        let vmail = catalogue::parse_uid_gid(&said).ok_or_else(|| {
            StepError::permanent(format!(
                "the new host gave no uid:gid of vmail (it said {:?})",
                said.trim()
            ))
        })?;
        for pass in 1..=2 {
            // The cutover record is written as the proof goes; it replaces the
            // relay's record only once the proof passed.
            let mut record = match proof::Writer::create(&self.fleet.state_dir, &relay.name) {
                Ok(w) => Some(w),
                Err(e) => {
                    sink.log(&format!("warning: {e} (verify will read the old host)"));
                    None
                }
            };
            // The first pass prunes NEW from OLD's listing instead of rsync's
            // `--delete` walk (direct copies only: OLD reaches NEW); the second
            // mirrors with `--delete` whatever the first left.
            let handoff = (pass == 1 && relay.settings.transfer == TransferMode::Direct)
                .then(|| proof::Handoff::new(catalogue::to_new(relay)));
            let differences = match &mut record {
                Some(w) => self.sync_and_prove(relay, vmail, handoff, w, sink).await?,
                None => {
                    self.sync_and_prove(relay, vmail, handoff, &mut proof::Discard, sink)
                        .await?
                }
            };
            if differences.is_empty() {
                if relay.settings.transfer == TransferMode::Staged {
                    self.release_staging(relay);
                }
                if let Some(w) = record {
                    record_cutover(w, sink);
                }
                return Ok(None);
            }
            let total = differences.total();
            let lines = differences.into_lines();
            for d in &lines {
                sink.log(&format!("proof: {d}"));
            }
            if pass == 2 {
                return Err(StepError::permanent(format!(
                    "the copy on new differs from old after two final syncs ({total} differences): {}",
                    lines.join("; ")
                )));
            }
            sink.log(&format!(
                "proof: {total} differences; the old host is frozen, so one more final sync and proof"
            ));
        }
        Err(StepError::permanent("unreachable: the proof loop ended"))
    }

    /// The final mirror and the proof, on the shortest path through the downtime:
    /// OLD's listing runs while the copy does (OLD is frozen since step 3; the listing
    /// sorts and digests on OLD, sends its digest and waits for the answer), NEW's
    /// settles and lists once the copy is done, and the two digests are compared:
    /// equal, no listing crosses the network (only the queue and the uidlists, for
    /// the cutover record); different, both listings are merged as they arrive
    /// (nothing of a relay's millions of files is held whole). A listing that is not
    /// complete is a transient error. The relay's log gets the parts' times.
    ///
    /// With a `handoff`, OLD's listing hands its mailbox paths to NEW before its
    /// digest, the mailboxes' rsync runs without `--delete`, and once that digest is
    /// here NEW removes what OLD does not have while the copy runs (the early prune)
    /// or, when that did not happen, in its listing after the copy.
    async fn sync_and_prove(
        &self,
        relay: &Relay,
        vmail: (u32, u32),
        handoff: Option<proof::Handoff>,
        keep: &mut (dyn proof::Keep + Send),
        sink: &LineSink,
    ) -> Result<proof::Differences, StepError> {
        let started = tokio::time::Instant::now();
        let old = self.connect(relay, &relay.old).await?;
        let acme = catalogue::acme_required(relay);
        let on_old = match &handoff {
            Some(h) => proof::pruning_listing(proof::Role::Old, h),
            None => proof::listing(proof::Role::Old),
        };
        let mirror = handoff.is_none();
        let (mut old_listing, old_tx, old_asked) = proof::Side::channel(LISTING_RECORDS_IN_FLIGHT);
        // Fires when OLD's digest is here (dropped unfired if its listing ends
        // before): by then OLD's paths are on NEW.
        let old_digested = old_listing.when_digested();
        let (new_listing, new_tx, new_asked) = proof::Side::channel(LISTING_RECORDS_IN_FLIGHT);
        // Each host asks, after its digest, for what to send (the proof answers).
        let records = |to, answer| Stdout::Dialogue { to, end: 0, answer };
        let plain = CommandKind::Plain;
        // Boxed: the copy's future is large, and three of them side by side overflow a
        // worker's stack in a debug build.
        let old_side = Box::pin(async {
            self.ssh
                .run(
                    &old,
                    &on_old,
                    !mirror,
                    plain,
                    sink,
                    records(old_tx, old_asked),
                )
                .await
                .map_err(StepError::from)
        });
        let synced = std::sync::OnceLock::new();
        let new_side = Box::pin(async {
            let copy = async {
                self.sync(relay, Pass::Final { vmail, mirror }, sink)
                    .await?;
                let _ = synced.set(started.elapsed());
                Ok::<_, StepError>(())
            };
            // With a handoff, NEW prunes while the copy runs once OLD's paths are
            // there (unfired: OLD's listing failed, and the step with it).
            let early = async {
                match &handoff {
                    Some(h) if old_digested.await.is_ok() => {
                        Ok(self.early_prune(relay, h, sink).await)
                    }
                    _ => Ok(false),
                }
            };
            let ((), pruned) = tokio::try_join!(copy, early)?;
            // NEW's listing prunes itself when the early prune did not.
            let on_new = proof::settle_new(
                relay.settings.transfer,
                acme,
                handoff.as_ref().filter(|_| !pruned),
            );
            let new = self.connect(relay, &relay.new).await?;
            self.ssh
                .run(
                    &new,
                    &on_new,
                    false,
                    plain,
                    sink,
                    records(new_tx, new_asked),
                )
                .await
                .map_err(StepError::from)
        });
        // A failed copy ends the step at once: the listings are dropped with it.
        let both = async { tokio::try_join!(old_side, new_side) };
        let proof = proof::compare(old_listing, new_listing, keep);
        let (ran, compared) = tokio::join!(both, Box::pin(proof));
        ran?;
        let differences = compared.map_err(|e| StepError {
            kind: ErrorKind::Transient,
            message: e.to_string(),
        })?;
        let at = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        sink.log(&format!(
            "step 4 times: copy done at {}, old's listing at {}, new's settle and listing at {}, compared at {}",
            at(synced.get().copied()),
            at(differences.old_ready.map(|t| t.duration_since(started))),
            at(differences.new_ready.map(|t| t.duration_since(started))),
            at(Some(started.elapsed())),
        ));
        match (differences.is_empty(), differences.by_digest) {
            (true, Some(n)) => sink.log(&format!(
                "proof: {n} records identical on old and new (by their digests; {} queue and uidlist records merged for the cutover record)",
                differences.entries
            )),
            (true, None) => sink.log(&format!(
                "proof: {} records identical on old and new (merged: their digests differ)",
                differences.entries
            )),
            (false, _) => {}
        }
        Ok(differences)
    }

    /// The early prune on NEW, beside the copy (`proof::early_prune`): whether it
    /// removed what it should. Not done is not a failure: NEW's listing after the
    /// copy prunes instead, and the host said why on stderr, into the relay's log.
    async fn early_prune(&self, relay: &Relay, h: &proof::Handoff, sink: &LineSink) -> bool {
        let new = match self.connect(relay, &relay.new).await {
            Ok(new) => new,
            Err(e) => {
                sink.log(&format!("early prune not run: {}", e.message));
                return false;
            }
        };
        match self
            .ssh
            .run(
                &new,
                &proof::early_prune(h),
                false,
                CommandKind::Plain,
                sink,
                Stdout::Capture,
            )
            .await
        {
            Ok(out) => out.stdout.unwrap_or_default().trim() == proof::PRUNED,
            Err(e) => {
                sink.log(&format!("early prune failed: {}", e.message));
                false
            }
        }
    }

    /// One cmdeploy run in a borrowed workspace (also for rollback).
    pub async fn cmdeploy(&self, run: catalogue::CmdeployRun, sink: &LineSink) -> StepResult {
        let ws = self
            .workspaces
            .borrow(run.urgent)
            .await
            .ok_or_else(|| StepError {
                kind: ErrorKind::Interrupted,
                message: "no cmdeploy workspace (shutting down)".into(),
            })?;
        let mut cmd = Command::new(ws.dir().join(&self.workspaces.script));
        cmd.args(&run.args).current_dir(ws.dir());
        match run.stages {
            Some(s) => cmd.env("CMDEPLOY_STAGES", s),
            None => cmd.env_remove("CMDEPLOY_STAGES"),
        };
        if let Some(sock) = &self.fleet.ssh_auth_sock {
            cmd.env("SSH_AUTH_SOCK", sock);
        }
        cmd.envs(&self.fleet.cmdeploy_env);
        if let Some(home) = &self.fleet.cmdeploy_home {
            cmd.env("HOME", home);
        }
        // cmdeploy renders the relay's website from and into the repository its
        // imported package lives in (www.py, get_paths), and the shared venv's
        // editable install points at the operator's checkout: concurrent runs would
        // render into one www/build and upload each other's pages, from templates the
        // workspace's commit does not pin. The workspace's own packages come first.
        let mut python_path = vec![
            ws.dir().join("cmdeploy/src"),
            ws.dir().join("chatmaild/src"),
        ];
        if let Some(inherited) = std::env::var_os("PYTHONPATH") {
            python_path.extend(std::env::split_paths(&inherited));
        }
        let python_path = std::env::join_paths(python_path).map_err(|e| {
            StepError::permanent(format!(
                "cannot set PYTHONPATH for the workspace {}: {e}",
                ws.dir().display()
            ))
        })?;
        cmd.env("PYTHONPATH", &python_path);
        sink.log(&format!(
            "$ [controller {}] PYTHONPATH={} {}",
            ws.dir().display(),
            python_path.to_string_lossy(),
            run.render(&self.workspaces.script, &self.fleet)
        ));
        let out = run_process(cmd, sink)
            .await
            .map_err(|e| StepError::permanent(format!("cannot run cmdeploy: {e}")))?;
        if out.code == Some(0) {
            return Ok(None);
        }
        let message = out.failure("cmdeploy");
        // Killed by a signal is not cmdeploy's verdict on the relay (an operator's
        // kill, the OOM killer): the step is interrupted and a run re-runs it (every
        // step is idempotent), rather than "fix the cause".
        Err(match out.signal {
            Some(_) => StepError {
                kind: ErrorKind::Interrupted,
                message,
            },
            None => StepError::permanent(message),
        })
    }

    /// Runs an operator hook with the relay's facts in the environment (never
    /// interpolated into the command line).
    async fn hook(
        &self,
        relay: &Relay,
        hook: Option<&str>,
        name: &str,
        sink: &LineSink,
    ) -> StepResult {
        let Some(hook) = hook else { return Ok(None) };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(hook);
        cmd.env("CMFLEET_RELAY", &relay.name)
            .env("CMFLEET_HOOK", name)
            .env("CMFLEET_OLD_SSH", &relay.old.ssh)
            .env("CMFLEET_OLD_IP4", relay.old.ip4.to_string())
            .env("CMFLEET_NEW_SSH", &relay.new.ssh)
            .env("CMFLEET_NEW_IP4", relay.new.ip4.to_string());
        // Its credentials were registered with the inventory; the shapes catch one
        // the registration could not tell from the words around it.
        sink.log(&format!(
            "$ [hook {name}] {}",
            crate::infra::redact::scrub(hook)
        ));
        let out = run_process(cmd, sink)
            .await
            .map_err(|e| StepError::permanent(format!("cannot run the {name} hook: {e}")))?;
        match out.code {
            Some(0) => Ok(None),
            _ => Err(StepError::permanent(
                out.failure(&format!("the {name} hook")),
            )),
        }
    }

    pub async fn close(&self) {
        self.ssh.close().await;
    }

    /// Closes the connections, keeping the masters of `keep`'s hosts for the next run.
    pub async fn close_keeping(&self, keep: &[&Relay]) {
        let hosts: Vec<&Host> = keep.iter().flat_map(|r| [&r.old, &r.new]).collect();
        self.ssh.close_keeping(&hosts).await;
    }
}

/// How long OLD's listeners may take to close after their units stopped.
const PORT_SETTLE: Duration = Duration::from_secs(5);

/// Keeps what OLD served for `verify`. Not worth failing the step over (this is
/// inside the downtime, and the copy is proven): `verify` then reads OLD itself.
fn record_cutover(record: proof::Writer, sink: &LineSink) {
    let (mailboxes, queued) = (record.mailboxes, record.queued);
    match record.commit() {
        Ok(()) => sink.log(&format!(
            "proof: recorded {mailboxes} mailbox(es) and {queued} queued message(s) for verify"
        )),
        Err(e) => sink.log(&format!("warning: {e} (verify will read the old host)")),
    }
}

/// What the controller sees at `host`'s port 25: a refusal is the only "closed"; a
/// connect that hangs may be a firewall and says nothing.
async fn smtp_state(host: &Host) -> &'static str {
    let addr = std::net::SocketAddr::from((host.ip4, 25));
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => catalogue::PROBE_OPEN,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => catalogue::PROBE_CLOSED,
        _ => catalogue::PROBE_UNKNOWN,
    }
}

/// OLD's port 25 as seen from OLD itself and from the controller.
struct SmtpSeen {
    from_old: String,
    from_controller: &'static str,
}

impl SmtpSeen {
    /// OLD itself is refused and the controller does not get in: the controller alone
    /// may stand behind a firewall, OLD's own view decides.
    fn refused(&self) -> bool {
        self.from_old == catalogue::PROBE_CLOSED && self.from_controller != catalogue::PROBE_OPEN
    }

    fn error(&self, relay: &Relay) -> StepError {
        let addr = format!("{}:25", relay.old.ip4);
        let why = if self.from_old == catalogue::PROBE_OPEN
            || self.from_controller == catalogue::PROBE_OPEN
        {
            format!(
                "port 25 of the old host ({addr}) still accepts connections after `{}` ({} from the old host, {} from the controller): the old host still takes mail, and it may be partly stopped, so the relay counts as down",
                catalogue::systemctl_disable_mail(),
                self.from_old,
                self.from_controller
            )
        } else {
            format!(
                "cannot tell whether port 25 of the old host ({addr}) refuses connections ({} from the old host, {} from the controller); the relay counts as down",
                self.from_old, self.from_controller
            )
        };
        StepError::permanent(format!(
            "{why} (hint: see what listens there on the old host with `ss -ltnp 'sport = :25'` and stop it, then run migrate again; or `cmfleet rollback` brings mail back on the old host)"
        ))
    }
}

/// Dovecot's IMAP port on a relay.
const IMAP: u16 = 143;

/// Whether `host` accepts connections on `port` right now.
async fn port_open(host: &Host, port: u16) -> bool {
    let addr = std::net::SocketAddr::from((host.ip4, port));
    tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// cmdeploy exits 0 even when things went wrong, so the effect is checked: after
/// step 3 OLD must refuse SMTP, after step 6 NEW must accept it.
pub async fn expect_port(host: &Host, open: bool) -> StepResult {
    let addr = std::net::SocketAddr::from((host.ip4, 25));
    for _ in 0..20 {
        let ok = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok == open {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(StepError::permanent(if open {
        format!("cmdeploy reported success but {addr} does not accept SMTP connections")
    } else {
        format!("cmdeploy reported success but {addr} still accepts SMTP connections")
    }))
}

/// The scheduler drives the real executor through its trait (tests drive mocks).
impl crate::pipeline::scheduler::StepRunner for Executor {
    fn run<'a>(
        &'a self,
        relay: &'a Relay,
        step: Step,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StepOutcome> + Send + 'a>> {
        Box::pin(Executor::run(self, relay, step))
    }
}
