//! `cmfleet check`: every inspection of every selected relay, plus what the journal
//! says of it (a relay that is DOWN is the one thing to act on first) and how long a
//! lowered TTL still holds its cutover.

use thiserror::Error;

use crate::host::inspect::{
    for_each_relay, quiet_sink, relay_findings, ssh_pool, Finding, Reach, RelayFindings,
};
use crate::host::remote::SshError;
use crate::model::inventory::{Inventory, Relay};
use crate::model::step::Step;
use crate::pipeline::journal::{Journal, JournalError, RelayRecord, RelayState, StepStatus};

#[derive(Debug, Error)]
pub enum CheckError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// `cmfleet check`: every check of every selected relay, concurrently.
pub async fn check(inv: &Inventory, relays: &[&Relay]) -> Result<Vec<RelayFindings>, CheckError> {
    let journal = Journal::peek(&inv.fleet.state_dir, &inv.path)?;
    let ssh = ssh_pool(inv)?;
    let results = for_each_relay(relays, inv.fleet.limits.forks, |r| {
        let (ssh, journal) = (&ssh, &journal);
        async move {
            let mut findings =
                relay_findings(ssh, &inv.fleet.cmdeploy, r, &quiet_sink(r), Reach::Test).await;
            let rec = journal.relays.get(&r.name);
            findings.push(journal_finding(rec));
            findings.extend(rec.and_then(ttl_wait_finding));
            RelayFindings::new(&r.name, findings)
        }
    })
    .await;
    ssh.close().await;
    Ok(with_same_machines(inv, ssh.known_hosts(), results))
}

/// After every host was reached (their keys are now in cmfleet's known_hosts): a
/// relay with a host that is also another entry's machine fails `one machine`.
fn with_same_machines(
    inv: &Inventory,
    known_hosts: &std::path::Path,
    mut results: Vec<RelayFindings>,
) -> Vec<RelayFindings> {
    let found = crate::host::identity::same_machines(inv, known_hosts);
    for r in &mut results {
        let mine: Vec<String> = found
            .iter()
            .filter(|s| {
                [&s.first, &s.second]
                    .iter()
                    .any(|e| e.ends_with(&format!("({})", r.relay)))
            })
            .map(ToString::to_string)
            .collect();
        let finding = if mine.is_empty() {
            Finding::pass(
                "one machine",
                "no host of this relay is another entry's machine",
            )
        } else {
            Finding::fail("one machine", mine.join("; "))
        };
        let mut findings = std::mem::take(&mut r.findings);
        findings.push(finding);
        *r = RelayFindings::new(&r.relay, findings);
    }
    results
}

/// The journal's view: a relay that is DOWN is the one thing to act on first.
pub fn journal_finding(rec: Option<&RelayRecord>) -> Finding {
    const CHECK: &str = "journal";
    let Some(rec) = rec else {
        return Finding::pass(CHECK, "not started");
    };
    let done: Vec<String> = Step::ALL
        .into_iter()
        .filter(|s| matches!(rec.step(*s).status, StepStatus::Done | StepStatus::Skipped))
        .map(|s| s.number().to_string())
        .collect();
    let rolled = match rec.rollbacks.len() {
        0 => String::new(),
        n => format!(" ({n} rollback(s) before)"),
    };
    match rec.state() {
        RelayState::NotStarted => Finding::pass(CHECK, format!("not started{rolled}")),
        RelayState::Staged => Finding::pass(
            CHECK,
            format!(
                "partly done (steps {} done, no downtime yet); migrate resumes at step {}{rolled}",
                done.join(","),
                rec.next_step().map_or("-".into(), |s| s.to_string())
            ),
        ),
        RelayState::Down => Finding::fail(
            CHECK,
            format!(
                "DOWN: OLD disabled and NEW not active (steps {} done){} (hint: finish it with `cmfleet migrate`, or undo with `cmfleet rollback --limit RELAY`)",
                done.join(","),
                rec.failed_step()
                    .map_or(String::new(), |s| format!(", step {s} failed"))
            ),
        ),
        RelayState::Done => Finding::pass(CHECK, "already migrated (step 6 done)"),
    }
}

/// A TTL lowered by `cmfleet dns lower-ttl`: how long until the cutover may start.
fn ttl_wait_finding(rec: &RelayRecord) -> Option<Finding> {
    let t = rec.dns_ttl?;
    let left = t.remaining(crate::pipeline::journal::now_ms());
    let what = format!("TTL lowered from {} s to {} s", t.original, t.lowered_to);
    Some(if left.is_zero() {
        Finding::pass(
            "ttl wait",
            format!("{what}; resolvers have forgotten the old TTL"),
        )
    } else {
        let left = std::time::Duration::from_secs(left.as_secs() + 1);
        Finding::warn(
            "ttl wait",
            format!(
                "{what}; cutover possible in {} (migrate holds it until then)",
                humantime::format_duration(left)
            ),
        )
    })
}
