//! Host inspection: is each relay ready to move? Facts and findings about its hosts,
//! its chatmail.ini and its DNS, and the preflights `migrate` runs before a relay's
//! step 1 and right before its step 3. `cmfleet check` (in `commands`) runs them.
//!
//! Most failed migrations are predictable (a full disk, an OLD that cannot reach NEW,
//! the wrong chatmail.ini, DNS that points elsewhere); finding them before step 3
//! means finding them before any downtime.

mod probe;
mod proof;
mod relay;
pub mod report;

use std::future::Future;
use std::path::Path;

use futures::StreamExt;

pub use probe::{script as probe_script, HostFacts};
pub use proof::{new_script as proof_new_script, old_script as proof_old_script};
pub use relay::{inspect, old_to_new_script, relay_findings, Inspection, Reach, MAX_TTL};
pub(crate) use relay::{old_to_new, unreached_finding, Unreached};
pub use report::{exit_code, render_json, render_text, Finding, RelayFindings, Status};

pub(crate) use relay::ssh_host;

use crate::host::remote::{LineSink, SshError, SshPool, SshPoolConfig};
use crate::model::events::EventSink;
use crate::model::inventory::{Inventory, Relay};
use crate::model::step::ErrorKind;
use crate::model::step::Step;
use crate::model::step::StepError;

/// A connection pool with the fleet's rate limits and cmfleet's own known_hosts.
pub(crate) fn ssh_pool(inv: &Inventory) -> Result<SshPool, SshError> {
    let fleet = &inv.fleet;
    SshPool::new(&SshPoolConfig {
        state_dir: fleet.state_dir.clone(),
        auth_sock: fleet.ssh_auth_sock.clone(),
        connects_per_sec: fleet.limits.ssh_connects_per_sec,
        group_connects_per_sec: inv
            .groups
            .iter()
            .filter_map(|(g, l)| l.ssh_connects_per_sec.map(|r| (g.clone(), r)))
            .collect(),
        keep_masters: false,
    })
}

/// A sink for commands whose output nobody watches (captured results only).
pub(crate) fn quiet_sink(relay: &Relay) -> LineSink {
    LineSink {
        relay: relay.name.clone(),
        step: Step::InitialSync,
        events: EventSink::discard(),
        log: None,
    }
}

/// Runs `f` for every relay, at most `limit` at once; results in the relays' order.
pub(crate) async fn for_each_relay<'a, T, F, Fut>(
    relays: &'a [&'a Relay],
    limit: usize,
    f: F,
) -> Vec<T>
where
    F: Fn(&'a Relay) -> Fut,
    Fut: Future<Output = T> + 'a,
{
    futures::stream::iter(relays.iter().map(|r| f(r)))
        .buffered(limit.max(1))
        .collect()
        .await
}

/// Before a relay's step 1 `migrate` runs the checks and refuses a relay that fails
/// one. Warnings pass (logged); failures that a retry may fix (a refused connection)
/// are transient, so the scheduler retries them like any step.
pub async fn preflight(
    ssh: &SshPool,
    cmdeploy: &Path,
    relay: &Relay,
    sink: &LineSink,
) -> Result<Inspection, StepError> {
    let inspection = inspect(ssh, cmdeploy, relay, sink, Reach::AtTransfer).await;
    refuse_on_failure(relay, &inspection.findings, sink)?;
    Ok(inspection)
}

/// Right before step 3, while OLD still serves: what would fail the copy proof
/// inside the downtime (OLD changed since step 1), whether NEW still has room for
/// what OLD gained since step 1, and NEW's DKIM owner recorded.
pub async fn cutover_preflight(
    ssh: &SshPool,
    relay: &Relay,
    sink: &LineSink,
) -> Result<(), StepError> {
    let ((f_old, old), (f_new, new)) = tokio::join!(
        ssh_host(ssh, relay, &relay.old, "ssh old", || {}),
        ssh_host(ssh, relay, &relay.new, "ssh new", || {})
    );
    let mut findings = vec![f_old, f_new];
    if let (Some(old), Some(new)) = (old, new) {
        let (o, n, disk) = tokio::join!(
            proof::old_finding(ssh, relay, &old, sink),
            proof::new_finding(ssh, relay, &new, sink),
            relay::disk_at_cutover(ssh, &old, &new, sink)
        );
        findings.extend([o, n, disk]);
    }
    refuse_on_failure(relay, &findings, sink)
}

/// Logs every finding; a failed one refuses the relay (transient when a retry may
/// fix every failure, like a refused connection).
fn refuse_on_failure(
    relay: &Relay,
    findings: &[Finding],
    sink: &LineSink,
) -> Result<(), StepError> {
    for f in findings {
        sink.log(&format!(
            "preflight {} {}: {}",
            f.status.label(),
            f.check,
            f.reason
        ));
    }
    let failed: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let kind = if failed.iter().all(|f| f.transient) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    };
    let reasons: Vec<String> = failed
        .iter()
        .map(|f| format!("{}: {}", f.check, f.reason))
        .collect();
    Err(StepError {
        kind,
        message: format!(
            "refused by the preflight check: {} (hint: `cmfleet check --limit {}` shows every check)",
            reasons.join("; "),
            relay.name
        ),
    })
}
