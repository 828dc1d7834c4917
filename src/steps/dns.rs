//! Step 5: point the relay's A/AAAA records at NEW (see `crate::dns`).

use super::exec::StepResult;
use crate::inventory::{DnsProviderKind, MailDomain, Relay};
use crate::remote::LineSink;

pub async fn switch(relay: &Relay, sink: &LineSink) -> StepResult {
    if let MailDomain::Ip(ip) = &relay.mail_domain {
        let note = format!("not applicable: the mail_domain is the address {ip}; that address itself must move to the new machine");
        sink.log(&note);
        return Ok(Some(note));
    }
    match relay.settings.dns.provider {
        DnsProviderKind::None => Ok(Some("skipped: dns provider \"none\"".into())),
        _ => Err(super::exec::StepError::permanent(
            "this DNS provider is not wired in yet",
        )),
    }
}
