//! `cmfleet rollback`: put DOWN relays back on their OLD machine.
//!
//! For a relay that is DOWN (OLD disabled at step 3, NEW not active): re-enable mail on
//! OLD the way step 3 disabled it, as the journal recorded (a full `cmdeploy run
//! --ssh-host OLD` without `--disable-mail`, or `systemctl enable --now` of dovecot and
//! postfix after a `disable_old = "systemctl"` step 3), check that OLD
//! accepts SMTP again, and if step 5 was attempted point DNS back to OLD. If step 6 was
//! attempted, mail is stopped on NEW first: a relay must never have two active sites.
//!
//! A relay whose NEW site is active (step 6 done) is refused unless `--force`: NEW may
//! have received mail since, and that mail would stay on NEW, invisible to users.
//!
//! The journal: a successful rollback appends its time to the relay's `rollbacks` and
//! resets all six steps to pending (and clears the downtime window), so the next
//! `migrate` starts the relay again from step 1 — with its preflight check, and a fresh
//! initial sync, since OLD has been receiving mail again. NEW keeps the data it got, so
//! that sync is a small delta. A failed rollback leaves the journal as it was (DOWN);
//! every part of a rollback is safe to re-run.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;

use crate::host::catalogue;
use crate::host::remote::LineSink;
use crate::infra::dns::{Dns, SwitchOutcome, SwitchRequest};
use crate::model::events::EventSink;
use crate::model::inventory::{DisableOld, DnsProviderKind, Inventory, MailDomain, Relay};
use crate::model::step::{Step, StepResult};
use crate::pipeline::journal::{
    now_ms, Journal, JournalError, RelayRecord, RelayState, StepStatus,
};
use crate::pipeline::steps::exec::{expect_port, Executor};

#[derive(Debug, Error)]
pub enum RollbackError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot prepare the rollback: {0}")]
    Setup(String),
}

/// What became of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackStatus {
    RolledBack,
    /// Not down: there was nothing to undo.
    NothingToDo,
    /// NEW is active and `--force` was not given.
    Refused,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackRow {
    pub relay: String,
    pub status: RollbackStatus,
    pub message: String,
}

/// What a rollback of one relay has to do, from its journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Nothing(String),
    Refuse(String),
    Go {
        stop_new: bool,
        dns: bool,
        /// How step 3 disabled OLD, undone the same way.
        via: DisableOld,
    },
}

fn touched(rec: &RelayRecord, s: Step) -> bool {
    rec.step(s).status != StepStatus::Pending || rec.step(s).attempts > 0
}

fn plan(rec: &RelayRecord, force: bool) -> Plan {
    let go = Plan::Go {
        stop_new: touched(rec, Step::Activate),
        dns: touched(rec, Step::Dns) && rec.step(Step::Dns).status != StepStatus::Skipped,
        via: rec.old_disabled_by,
    };
    match rec.state() {
        RelayState::NotStarted | RelayState::Staged => {
            Plan::Nothing("not down: mail on OLD was never disabled, nothing to roll back".into())
        }
        RelayState::Done if !force => Plan::Refuse(
            "refused: NEW is active (step 6 done) and may have received mail since; rolling back would leave that mail on NEW, where users no longer see it (hint: if you accept that, re-run with --force: cmfleet stops mail on NEW, re-enables OLD and points DNS back; copy NEW's new mail back by hand)".into(),
        ),
        _ => go,
    }
}

/// The journal after a successful rollback: see the module doc.
fn record_rollback(rec: &mut RelayRecord, at_ms: u64) {
    rec.steps = RelayRecord::default().steps;
    rec.down_since_ms = None;
    rec.up_again_ms = None;
    rec.old_may_be_disabled = false;
    rec.old_disabled_by = DisableOld::default();
    // The steps start over, and the rollback's own `--disable-mail` run deployed on
    // NEW too: what step 2 or 6 put there is no longer known.
    rec.deployed = Default::default();
    rec.rollbacks.push(at_ms);
}

/// Rolls back the selected relays. Holds the journal lock throughout, so no
/// `migrate` can drive these relays meanwhile.
pub async fn rollback(
    inv: &Inventory,
    relays: &[&Relay],
    force: bool,
) -> Result<Vec<RollbackRow>, RollbackError> {
    let mut journal = Journal::open(&inv.fleet.state_dir, &inv.path)?;
    let plans: Vec<Plan> = relays
        .iter()
        .map(|r| {
            plan(
                &journal
                    .data
                    .relays
                    .get(&r.name)
                    .cloned()
                    .unwrap_or_default(),
                force,
            )
        })
        .collect();
    let executor = if plans.iter().any(|p| matches!(p, Plan::Go { .. })) {
        Some(
            Executor::new(&inv.fleet, &inv.groups, EventSink::discard(), false)
                .map_err(|e| RollbackError::Setup(e.message))?,
        )
    } else {
        None
    };
    let rows: Vec<RollbackRow> = futures::stream::iter(relays.iter().zip(&plans).map(|(r, p)| {
        let executor = executor.as_ref();
        async move {
            let (status, message) = match (p, executor) {
                (Plan::Nothing(m), _) => (RollbackStatus::NothingToDo, m.clone()),
                (Plan::Refuse(m), _) => (RollbackStatus::Refused, m.clone()),
                (Plan::Go { stop_new, dns, via }, Some(x)) => {
                    match roll_back(x, r, *stop_new, *dns, *via).await {
                        Ok(m) => (RollbackStatus::RolledBack, m),
                        Err(m) => (RollbackStatus::Failed, m),
                    }
                }
                (Plan::Go { .. }, None) => (RollbackStatus::Failed, "no executor".into()),
            };
            RollbackRow {
                relay: r.name.clone(),
                status,
                message,
            }
        }
    }))
    .buffered(inv.fleet.limits.forks.max(1))
    .collect()
    .await;
    if let Some(x) = &executor {
        x.close().await;
    }
    let now = now_ms();
    for row in rows
        .iter()
        .filter(|r| r.status == RollbackStatus::RolledBack)
    {
        record_rollback(journal.relay(&row.relay), now);
    }
    journal.save()?;
    Ok(rows)
}

async fn roll_back(
    x: &Executor,
    relay: &Relay,
    stop_new: bool,
    dns: bool,
    via: DisableOld,
) -> Result<String, String> {
    let sink = x.sink(relay, Step::DisableOld);
    sink.log(&format!("== {} rollback", now_ms()));
    let mut done = Vec::new();
    if stop_new {
        x.cmdeploy(catalogue::disable_new(relay), &sink)
            .await
            .and(expect_port(&relay.new, false).await)
            .map_err(|e| format!("cannot stop mail on NEW: {}", e.message))?;
        done.push("mail stopped on NEW".to_string());
    }
    reenable_old(x, relay, via, &sink)
        .await
        .map_err(|e| format!("cannot re-enable mail on OLD: {}", e.message))?;
    expect_port(&relay.old, true)
        .await
        .map_err(|e| format!("mail on OLD did not come back: {}", e.message))?;
    done.push(format!(
        "mail re-enabled on OLD ({} accepts SMTP)",
        relay.old.ip4
    ));
    if dns {
        let note = dns_back(relay, &sink).await.map_err(|e| {
            format!(
                "{} but DNS still points to NEW: {e} (hint: re-run the rollback)",
                done.join(", ")
            )
        })?;
        done.push(note);
    }
    sink.log(&format!("rollback done: {}", done.join(", ")));
    Ok(done.join(", "))
}

/// Undoes step 3 the way it ran: a systemctl stop is undone by its inverse (a whole
/// deploy would also do, but takes minutes while the relay is down).
async fn reenable_old(x: &Executor, relay: &Relay, via: DisableOld, sink: &LineSink) -> StepResult {
    match via {
        DisableOld::Cmdeploy => x.cmdeploy(catalogue::reenable_old(relay), sink).await,
        DisableOld::Systemctl => {
            x.on_old(relay, &catalogue::systemctl_enable_mail(), sink)
                .await
        }
    }
}

/// Points the relay's A/AAAA back to OLD and waits until the authoritative servers
/// serve them (manual provider: the records to set are returned, not awaited).
async fn dns_back(relay: &Relay, sink: &LineSink) -> Result<String, String> {
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        return Ok(format!(
            "DNS not applicable: the address {ip} itself must move back to OLD"
        ));
    }
    if relay.settings.dns.provider == DnsProviderKind::None {
        return Ok("DNS not changed (provider \"none\"): point it back to OLD yourself".into());
    }
    let dns = Dns::from_settings(&relay.settings.dns).map_err(|e| e.to_string())?;
    let req = SwitchRequest {
        domain: relay.name.clone(),
        old: relay.old.addrs(),
        new: relay.new.addrs(),
        ttl: relay.settings.dns.ttl,
    };
    match dns.rollback(&req).await.map_err(|e| e.to_string())? {
        SwitchOutcome::Manual { set, remove } => {
            let mut lines: Vec<String> = set.iter().map(|l| format!("set {l}")).collect();
            lines.extend(remove.iter().map(|l| format!("remove {l}")));
            sink.log(&lines.join("\n"));
            return Ok(format!("DNS is manual: {}", lines.join("; ")));
        }
        SwitchOutcome::NotApplicable { reason } => return Ok(reason),
        SwitchOutcome::Switched | SwitchOutcome::AlreadySwitched => {}
    }
    let timeout = dns.propagation_timeout().min(Duration::from_secs(600));
    let p = dns
        .wait_propagated(&relay.name, &req.old, timeout, |_, _| {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "DNS points to OLD again ({} server(s))",
        p.servers.len()
    ))
}

/// The rows as a table, failures named.
pub fn render_text(rows: &[RollbackRow]) -> String {
    let width = rows.iter().map(|r| r.relay.len()).max().unwrap_or(5);
    let mut s = String::new();
    for r in rows {
        let status = match r.status {
            RollbackStatus::RolledBack => "rolled back",
            RollbackStatus::NothingToDo => "nothing to do",
            RollbackStatus::Refused => "REFUSED",
            RollbackStatus::Failed => "FAILED",
        };
        s.push_str(&format!(
            "{:<width$}  {status:<13}  {}\n",
            r.relay, r.message
        ));
    }
    let back = rows
        .iter()
        .filter(|r| r.status == RollbackStatus::RolledBack)
        .count();
    s.push_str(&format!(
        "\nrollback: {back} of {} relay(s) back on OLD; `cmfleet migrate` starts them again from step 1\n",
        rows.len()
    ));
    s
}

/// 0 unless a relay was refused or failed.
pub fn exit_code(rows: &[RollbackRow]) -> i32 {
    if rows
        .iter()
        .any(|r| matches!(r.status, RollbackStatus::Refused | RollbackStatus::Failed))
    {
        crate::model::exit::RELAYS_FAILED
    } else {
        crate::model::exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(done: &[Step], failed: Option<Step>) -> RelayRecord {
        let mut r = RelayRecord::default();
        for s in done {
            r.step_mut(*s).status = StepStatus::Done;
            r.step_mut(*s).attempts = 1;
        }
        if let Some(s) = failed {
            r.step_mut(s).status = StepStatus::Failed;
            r.step_mut(s).attempts = 1;
        }
        r
    }

    #[test]
    fn plans_follow_the_journal() {
        use Step::*;
        assert!(matches!(
            plan(&rec(&[InitialSync, Preconfigure], None), false),
            Plan::Nothing(_)
        ));
        assert_eq!(
            plan(
                &rec(&[InitialSync, Preconfigure, DisableOld], Some(FinalSync)),
                false
            ),
            Plan::Go {
                stop_new: false,
                dns: false,
                via: crate::model::inventory::DisableOld::Cmdeploy
            }
        );
        assert_eq!(
            plan(
                &rec(
                    &[InitialSync, Preconfigure, DisableOld, FinalSync, Dns],
                    Some(Activate)
                ),
                false
            ),
            Plan::Go {
                stop_new: true,
                dns: true,
                via: crate::model::inventory::DisableOld::Cmdeploy
            }
        );
        let done = rec(&Step::ALL, None);
        assert!(matches!(plan(&done, false), Plan::Refuse(m) if m.contains("--force")));
        assert_eq!(
            plan(&done, true),
            Plan::Go {
                stop_new: true,
                dns: true,
                via: crate::model::inventory::DisableOld::Cmdeploy
            }
        );
    }

    /// A relay whose step 3 stopped OLD's units is brought back by starting them, not
    /// by a deploy: the journal, not today's inventory, says how OLD was disabled.
    #[test]
    fn a_systemctl_step_3_is_undone_by_systemctl() {
        use crate::model::events::{Event, ServingChange};
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = dir.path().join("fleet.toml");
        std::fs::write(&inventory, "").expect("inventory");
        let mut journal = Journal::open(dir.path(), &inventory).expect("journal");
        for s in [Step::InitialSync, Step::Preconfigure] {
            let r = journal.relay("r");
            r.step_mut(s).status = StepStatus::Done;
            r.step_mut(s).attempts = 1;
        }
        journal.relay("r").step_mut(Step::DisableOld).attempts = 1;
        journal.apply(&Event::ServingChange {
            relay: "r".into(),
            change: ServingChange::StopOldUnits,
        });
        let rec = journal.relay("r").clone();
        assert_eq!(
            plan(&rec, false),
            Plan::Go {
                stop_new: false,
                dns: false,
                via: DisableOld::Systemctl
            }
        );
        let mut rec = rec;
        record_rollback(&mut rec, 1);
        assert_eq!(rec.old_disabled_by, DisableOld::Cmdeploy);
    }

    #[test]
    fn a_rollback_resets_the_relay_to_step_1() {
        let mut r = rec(
            &[Step::InitialSync, Step::Preconfigure, Step::DisableOld],
            Some(Step::FinalSync),
        );
        r.down_since_ms = Some(5);
        record_rollback(&mut r, 42);
        assert_eq!(r.state(), RelayState::NotStarted);
        assert_eq!(r.next_step(), Some(Step::InitialSync));
        assert_eq!(r.rollbacks, vec![42]);
        assert_eq!(r.down_since_ms, None);
    }
}
