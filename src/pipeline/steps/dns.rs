//! Step 5: point the relay's A/AAAA records at NEW, then wait until every
//! authoritative server serves them. Step 6 only runs after that.

use crate::host::remote::LineSink;
use crate::infra::dns::{Dns, DnsError, DnsGate, SwitchOutcome, SwitchRequest};
use crate::model::events::Event;
use crate::model::inventory::{DnsProviderKind, MailDomain, Relay};
use crate::model::step::ErrorKind;
use crate::model::step::{StepError, StepResult};

fn step_error(e: DnsError) -> StepError {
    StepError {
        kind: if e.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        },
        message: e.to_string(),
    }
}

pub async fn switch(relay: &Relay, gate: &DnsGate, sink: &LineSink) -> StepResult {
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        let note = format!(
            "not applicable: the mail_domain is the address {ip}; that address itself must move to the new machine"
        );
        sink.log(&note);
        return Ok(Some(note));
    }
    if relay.settings.dns.provider == DnsProviderKind::None {
        return Ok(Some(
            "skipped: dns provider \"none\" (DNS is handled outside cmfleet)".into(),
        ));
    }
    let dns = Dns::from_settings(&relay.settings.dns).map_err(step_error)?;
    let req = SwitchRequest {
        domain: relay.name.clone(),
        old: relay.old.addrs(),
        new: relay.new.addrs(),
        ttl: relay.settings.dns.ttl,
    };
    let outcome = gate.run(dns.switch(&req)).await.map_err(step_error)?;
    match &outcome {
        SwitchOutcome::Manual { set, remove } => {
            for line in set
                .iter()
                .map(|l| format!("set:    {l}"))
                .chain(remove.iter().map(|l| format!("remove: {l}")))
            {
                sink.log(&line);
                sink.events.send(Event::Output {
                    relay: relay.name.clone(),
                    step: sink.step,
                    line,
                });
            }
        }
        SwitchOutcome::NotApplicable { reason } => return Ok(Some(reason.clone())),
        SwitchOutcome::Switched => sink.log("DNS updated"),
        SwitchOutcome::AlreadySwitched => sink.log("DNS already pointed at the new site"),
    }
    let progress = |ok: usize, total: usize| {
        sink.events.send(Event::Output {
            relay: relay.name.clone(),
            step: sink.step,
            line: format!("{ok} of {total} nameservers serve the new records"),
        });
    };
    let done = dns
        .wait_propagated(&relay.name, &req.new, dns.propagation_timeout(), progress)
        .await
        .map_err(step_error)?;
    sink.log(&format!("propagated to {} nameservers", done.servers.len()));
    Ok(None)
}
