//! The plan: for each selected relay, its six steps with the exact commands and
//! where each runs. Pure: rendered from the inventory, no I/O.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::host::catalogue;
use crate::host::proof;
use crate::model::inventory::{
    DisableOld, DnsProviderKind, Fleet, MailDomain, Relay, TransferMode,
};
use crate::model::step::Step;

/// Where a planned command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Site {
    /// On the old host, with the controller's ssh-agent forwarded.
    OldForwarded,
    Old,
    New,
    /// On the controller (cmdeploy, staged rsync hops).
    Controller,
    /// At the DNS provider.
    Dns,
}

impl Site {
    fn label(self) -> &'static str {
        match self {
            Site::OldForwarded => "on old (agent forwarded)",
            Site::Old => "on old",
            Site::New => "on new",
            Site::Controller => "on the controller",
            Site::Dns => "at the DNS provider",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub site: Site,
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub step: Step,
    pub number: u8,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayPlan {
    pub relay: String,
    pub group: Option<String>,
    pub transfer: TransferMode,
    /// How step 3 disables OLD.
    pub disable_old: DisableOld,
    pub old: String,
    pub new: String,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub relays: Vec<RelayPlan>,
}

/// Stand-in for values only known while running (a host key, a control socket).
/// No apostrophe: the key is quoted twice in the push, and each quote of a quote
/// doubles what a reader has to untangle.
const NEW_HOST_KEY: &str = "<host key of NEW from the known_hosts of cmfleet>";
const OLD_MASTER: &str = "ssh -S <control socket of old>";
const NEW_MASTER: &str = "ssh -S <control socket of new>";

pub fn plan(fleet: &Fleet, relays: &[&Relay]) -> Plan {
    Plan {
        relays: relays.iter().map(|r| relay_plan(fleet, r)).collect(),
    }
}

fn relay_plan(fleet: &Fleet, r: &Relay) -> RelayPlan {
    let steps = Step::ALL
        .iter()
        .map(|&step| PlannedStep {
            step,
            number: step.number(),
            actions: actions(fleet, r, step),
        })
        .collect();
    RelayPlan {
        relay: r.name.clone(),
        group: r.group.clone(),
        transfer: r.settings.transfer,
        disable_old: r.settings.disable_old,
        old: r.old.destination(),
        new: r.new.destination(),
        steps,
    }
}

fn act(site: Site, command: String) -> Action {
    Action { site, command }
}

/// The commands of one step, in order.
pub fn actions(fleet: &Fleet, r: &Relay, step: Step) -> Vec<Action> {
    let cmdeploy = |run: catalogue::CmdeployRun| {
        vec![act(Site::Controller, run.render(&fleet.cmdeploy, fleet))]
    };
    let hooks = &r.settings.hooks;
    match step {
        Step::InitialSync => sync_actions(fleet, r, false),
        Step::Preconfigure => {
            let mut a = cmdeploy(catalogue::preconfigure(r));
            a.push(act(Site::New, catalogue::stop_package_services()));
            a
        }
        Step::DisableOld => {
            // The operator's hook runs first: a failing one leaves OLD untouched.
            let mut a: Vec<Action> = hook(hooks.pre_cutover.as_deref(), "pre_cutover")
                .into_iter()
                .collect();
            match r.settings.disable_old {
                DisableOld::Cmdeploy => a.extend(cmdeploy(catalogue::disable_old(r))),
                DisableOld::Systemctl => a.extend([
                    act(Site::Old, catalogue::systemctl_disable_mail()),
                    act(
                        Site::Old,
                        format!(
                            "{}   # must say closed, and the controller must not reach {}:25 either",
                            catalogue::smtp_probe(r.old.ip4),
                            r.old.ip4
                        ),
                    ),
                ]),
            }
            a
        }
        Step::FinalSync => {
            let mut a = vec![act(
                Site::New,
                format!(
                    "{}   # says vmail's uid:gid, the mailboxes' owner below",
                    catalogue::before_final_sync()
                ),
            )];
            // A direct copy's first pass prunes NEW from OLD's listing (the run
            // draws a random nonce per pass).
            let (site, listing, new_listing) = match r.settings.transfer {
                TransferMode::Direct => (
                    Site::OldForwarded,
                    proof::pruning_listing(
                        proof::Role::Old,
                        &proof::Handoff {
                            to_new: catalogue::to_new(r),
                            nonce: "NONCE".into(),
                        },
                    ),
                    "then the listing above, made for new: it first removes what old's paths do not hold, unless the early prune above did",
                ),
                TransferMode::Staged => (
                    Site::Old,
                    proof::listing(proof::Role::Old),
                    "then the listing above, made for new",
                ),
            };
            a.push(act(
                site,
                format!("{listing}   # while the sync below runs; its digest must match new's"),
            ));
            if r.settings.transfer == TransferMode::Direct {
                let handoff = proof::Handoff {
                    to_new: catalogue::to_new(r),
                    nonce: "NONCE".into(),
                };
                a.push(act(
                    Site::New,
                    format!(
                        "{}   # once old's digest is here, while the sync below runs: removes what old's paths do not hold from the list step 3's preflight made",
                        proof::early_prune(&handoff)
                    ),
                ));
            }
            a.extend(sync_actions(fleet, r, true));
            a.push(act(
                Site::New,
                format!(
                    "{}   # {new_listing}",
                    catalogue::fix_ownership(r.settings.transfer, catalogue::acme_required(r))
                ),
            ));
            a
        }
        Step::Dns => vec![act(Site::Dns, dns_description(r))],
        Step::Activate => {
            // After NEW accepts mail: a failing hook does not make the relay down.
            let mut a = cmdeploy(catalogue::activate(r));
            a.extend(hook(hooks.post_cutover.as_deref(), "post_cutover"));
            a
        }
    }
}

/// An operator's hook as it runs (`sh -c`), its credentials masked: the plan is
/// shown and saved like any other output.
fn hook(line: Option<&str>, name: &str) -> Option<Action> {
    line.map(|line| {
        act(
            Site::Controller,
            format!(
                "{}   # the {name} hook (sh -c), the relay's facts in CMFLEET_* variables",
                crate::infra::redact::scrub(line)
            ),
        )
    })
}

fn sync_actions(fleet: &Fleet, r: &Relay, last: bool) -> Vec<Action> {
    match r.settings.transfer {
        TransferMode::Direct if last => vec![act(
            Site::OldForwarded,
            catalogue::vouched_push(NEW_HOST_KEY, &catalogue::final_sync(r, None, false)),
        )],
        TransferMode::Direct => vec![
            act(
                Site::OldForwarded,
                format!(
                    "{}   # when new has no mail yet; else:",
                    catalogue::vouched_push(NEW_HOST_KEY, &catalogue::first_copy(r, None))
                ),
            ),
            act(
                Site::OldForwarded,
                format!(
                    "{}   # when new holds mail cmfleet did not copy; else:",
                    catalogue::vouched_push(NEW_HOST_KEY, &catalogue::initial_sync(r, false))
                ),
            ),
            act(
                Site::OldForwarded,
                catalogue::vouched_push(NEW_HOST_KEY, &catalogue::initial_sync(r, true)),
            ),
        ],
        TransferMode::Staged => staged_actions(&fleet.state_dir.join("staging"), r, last),
    }
}

/// A staged sync's hops as step 1 runs them again (mirroring what cmfleet copied)
/// and as step 4 runs them.
fn staged_actions(staging: &Path, r: &Relay, last: bool) -> Vec<Action> {
    let hops = catalogue::staged_hops(staging, r, last, true, OLD_MASTER, NEW_MASTER);
    vec![
        act(Site::Controller, crate::infra::shell::join(&hops.pull)),
        act(
            Site::Controller,
            format!(
                "cd {} && {}",
                crate::infra::shell::quote(&hops.dir.display().to_string()),
                crate::infra::shell::join(&hops.push)
            ),
        ),
    ]
}

fn dns_description(r: &Relay) -> String {
    let dns = &r.settings.dns;
    if let MailDomain::Ip(ip) = &r.mail_domain {
        return format!(
            "not applicable: the mail_domain is the address {ip}; that address itself must move to the new machine"
        );
    }
    let mut records = format!("{}. {} IN A {}", r.name, dns.ttl, r.new.ip4);
    match r.new.ip6 {
        Some(ip6) => write!(records, "; {}. {} IN AAAA {ip6}", r.name, dns.ttl).ok(),
        None => write!(records, "; no AAAA").ok(),
    };
    match dns.provider {
        DnsProviderKind::Rfc2136 => format!(
            "RFC 2136 update (TSIG) to {}: {records} (only if A is still {}), then wait for all authoritative servers",
            dns.server.map_or("?".to_string(), |s| s.to_string()),
            r.old.ip4
        ),
        DnsProviderKind::Command => format!(
            "run {} with the relay's facts in CMFLEET_* variables: {records}",
            dns.command.as_deref().map_or("?".to_string(), |c| c.display().to_string())
        ),
        DnsProviderKind::Manual => {
            format!("set by hand: {records}; cmfleet waits until the authoritative servers serve it")
        }
        DnsProviderKind::None => "skipped: dns provider \"none\" (the operator handles DNS)".to_string(),
    }
}

/// The plan as text for people.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    for r in &plan.relays {
        let group = r
            .group
            .as_deref()
            .map(|g| format!("group {g}, "))
            .unwrap_or_default();
        let mode = match r.transfer {
            TransferMode::Direct => "direct",
            TransferMode::Staged => "staged",
        };
        let _ = writeln!(out, "{}  ({group}{mode}: {} -> {})", r.relay, r.old, r.new);
        for s in &r.steps {
            for (i, a) in s.actions.iter().enumerate() {
                let head = if i == 0 {
                    s.step.to_string()
                } else {
                    String::new()
                };
                let _ = writeln!(out, "  {head:<16} {}", a.site.label());
                let _ = writeln!(out, "      $ {}", a.command);
            }
        }
        out.push('\n');
    }
    let _ = write!(out, "{} relay(s), 6 steps each", plan.relays.len());
    out.push('\n');
    out
}
