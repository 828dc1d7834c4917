//! From the raw file to the checked [`Inventory`]: inheritance and validation.
//!
//! Problems are collected, not returned at the first one, so an operator fixes a
//! broken inventory in one round.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub(crate) use super::checker::Checker;
use super::model::*;
use super::raw::*;

pub(crate) fn resolve(path: &Path, raw: RawInventory, c: &mut Checker) -> Inventory {
    let fleet = fleet(&raw.fleet, c);
    let mut groups = BTreeMap::new();
    for (name, g) in &raw.groups {
        groups.insert(
            name.clone(),
            GroupLimits {
                max_transfers: g.max_transfers.as_ref().map(|v| *v.get_ref() as usize),
                ssh_connects_per_sec: g.ssh_connects_per_sec.as_ref().map(|v| *v.get_ref()),
            },
        );
    }
    let mut relays = Vec::new();
    let mut resolved = Vec::new();
    for (i, r) in raw.relay.iter().enumerate() {
        if let Some(relay) = relay(i, r, &raw, c) {
            resolved.push(i);
            relays.push(relay);
        }
    }
    check_unique(&raw.relay, c);
    let indexed: Vec<(usize, &Relay)> = resolved.into_iter().zip(relays.iter()).collect();
    super::roles::check_roles(&raw.relay, &indexed, c);
    Inventory {
        path: path.to_path_buf(),
        fleet,
        groups,
        relays,
    }
}

fn fleet(f: &RawFleet, c: &mut Checker) -> Fleet {
    let d = Limits::default();
    let count = |v: &Option<Spanned<u32>>, field: &str, default: usize, c: &mut Checker| match v {
        Some(n) if *n.get_ref() == 0 => {
            c.problem(n, field, "must be at least 1");
            default
        }
        Some(n) => *n.get_ref() as usize,
        None => default,
    };
    let limits = Limits {
        forks: count(&f.forks, "fleet.forks", d.forks, c),
        transfers: count(&f.transfers, "fleet.transfers", d.transfers, c),
        cmdeploy_runs: count(&f.cmdeploy_runs, "fleet.cmdeploy_runs", d.cmdeploy_runs, c),
        cutovers: count(&f.cutovers, "fleet.cutovers", d.cutovers, c),
        ssh_connects_per_sec: count(
            &f.ssh_connects_per_sec,
            "fleet.ssh_connects_per_sec",
            d.ssh_connects_per_sec as usize,
            c,
        ) as u32,
        dns_updates_per_sec: count(
            &f.dns_updates_per_sec,
            "fleet.dns_updates_per_sec",
            d.dns_updates_per_sec as usize,
            c,
        ) as u32,
        staging_budget: f
            .staging_budget
            .as_ref()
            .and_then(|t| c.parse(t, "fleet.staging_budget", parse_bytes))
            .unwrap_or(d.staging_budget),
        max_fail_percent: match &f.max_fail_percent {
            Some(p) if *p.get_ref() > 100 => {
                c.problem(p, "fleet.max_fail_percent", "must be between 0 and 100");
                100
            }
            Some(p) => *p.get_ref(),
            None => d.max_fail_percent,
        },
    };
    let waves = match &f.waves {
        None => vec![Wave::Percent(100)],
        Some(ws) if ws.is_empty() => vec![Wave::Percent(100)],
        Some(ws) => ws.iter().filter_map(|w| wave(w, c)).collect(),
    };
    Fleet {
        cmdeploy: c.path(f.cmdeploy.get_ref()),
        state_dir: c.path(f.state_dir.as_ref().map_or(".cmfleet", |s| s.get_ref())),
        ssh_auth_sock: f.ssh_auth_sock.as_ref().map(|s| c.path(s.get_ref())),
        cmdeploy_home: f.cmdeploy_home.as_ref().map(|s| c.path(s.get_ref())),
        cmdeploy_env: cmdeploy_env(f.cmdeploy_env.as_ref(), c),
        limits,
        waves,
    }
}

fn wave(w: &Spanned<RawWave>, c: &mut Checker) -> Option<Wave> {
    let bad = "a wave is a relay count (e.g. 5) or a percentage (e.g. \"25%\")";
    match w.get_ref() {
        RawWave::Count(n) if *n >= 1 => Some(Wave::Count(*n as usize)),
        RawWave::Percent(p) => match p.strip_suffix('%').map(|n| n.trim().parse::<u32>()) {
            Some(Ok(n)) if (1..=100).contains(&n) => Some(Wave::Percent(n)),
            _ => {
                c.problem(w, "fleet.waves", format!("{p:?} is not valid: {bad}"));
                None
            }
        },
        RawWave::Count(n) => {
            c.problem(w, "fleet.waves", format!("{n} is not valid: {bad}"));
            None
        }
    }
}

/// Picks the most specific value: relay, then group, then defaults.
fn pick<'r, T>(
    relay: &'r Option<T>,
    group: Option<&'r Option<T>>,
    defaults: &'r Option<T>,
) -> Option<&'r T> {
    relay
        .as_ref()
        .or_else(|| group.and_then(Option::as_ref))
        .or(defaults.as_ref())
}

fn relay(i: usize, r: &RawRelay, raw: &RawInventory, c: &mut Checker) -> Option<Relay> {
    let at = |f: &str| format!("relay[{i}].{f}");
    let group = match &r.group {
        Some(g) if !raw.groups.contains_key(g.get_ref()) => {
            let known: Vec<&str> = raw.groups.keys().map(String::as_str).collect();
            c.problem(
                g,
                &at("group"),
                format!(
                    "no group {:?} is defined (known: {})",
                    g.get_ref(),
                    list_or_none(&known)
                ),
            );
            None
        }
        Some(g) => raw.groups.get(g.get_ref()),
        None => None,
    };
    let d = &raw.defaults;
    macro_rules! inherit {
        ($field:ident) => {
            pick(&r.$field, group.map(|g| &g.$field), &d.$field)
        };
    }
    let ssh_user = inherit!(ssh_user).map_or("root".to_string(), |u| u.get_ref().clone());
    let ssh_port = inherit!(ssh_port).map_or(22, |p| *p.get_ref());
    let ssh_key = inherit!(ssh_key).map(|k| c.path(k.get_ref()));
    let hosts = HostDefaults {
        user: ssh_user,
        port: ssh_port,
        key: ssh_key,
    };

    let mail_domain = c.parse(&r.mail_domain, &at("mail_domain"), parse_mail_domain);
    let config = c.path(r.config.get_ref());
    if !config.is_file() {
        c.problem(
            &r.config,
            &at("config"),
            format!("chatmail.ini {} does not exist", config.display()),
        );
    }
    let old = host(&r.old, &at("old"), &hosts, c);
    let new = host(&r.new, &at("new"), &hosts, c);
    let settings = settings(&at(""), r, group, d, c);
    let mail_domain = mail_domain?;
    Some(Relay {
        name: mail_domain.to_string(),
        mail_domain,
        config,
        group: r.group.as_ref().map(|g| g.get_ref().clone()),
        old: old?,
        new: new?,
        settings: settings?,
    })
}

struct HostDefaults {
    user: String,
    port: u16,
    key: Option<PathBuf>,
}

fn host(h: &RawHost, at: &str, d: &HostDefaults, c: &mut Checker) -> Option<Host> {
    let ssh = c.parse(&h.ssh, &format!("{at}.ssh"), parse_ssh_address);
    let ip4 = c.parse(&h.ip4, &format!("{at}.ip4"), |s| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    });
    // Every field is checked before giving up, so all problems are reported.
    let ip6 = h.ip6.as_ref().map(|t| {
        c.parse(t, &format!("{at}.ip6"), |s| {
            s.parse::<Ipv6Addr>()
                .map_err(|_| format!("{s:?} is not an IPv6 address"))
        })
    });
    let user = match &h.user {
        Some(u) => c.parse(u, &format!("{at}.user"), parse_user),
        None => Some(d.user.clone()),
    };
    Some(Host {
        ssh: ssh?,
        ip4: ip4?,
        ip6: ip6.map_or(Some(None), |v| v.map(Some))?,
        user: user?,
        port: h.port.as_ref().map_or(d.port, |p| *p.get_ref()),
        key: h
            .key
            .as_ref()
            .map(|k| c.path(k.get_ref()))
            .or_else(|| d.key.clone()),
    })
}

fn settings(
    at: &str,
    r: &RawRelay,
    group: Option<&RawGroup>,
    d: &RawSettings,
    c: &mut Checker,
) -> Option<RelaySettings> {
    macro_rules! inherit {
        ($field:ident) => {
            pick(&r.$field, group.map(|g| &g.$field), &d.$field)
        };
    }
    let transfer = match inherit!(transfer) {
        Some(t) => c.parse(t, &format!("{at}transfer"), |s| match s {
            "direct" => Ok(TransferMode::Direct),
            "staged" => Ok(TransferMode::Staged),
            _ => Err(format!(
                "{s:?} is not a transfer mode (expected \"direct\" or \"staged\")"
            )),
        })?,
        None => TransferMode::Direct,
    };
    let host_key_policy = match inherit!(host_key_policy) {
        Some(t) => c.parse(t, &format!("{at}host_key_policy"), |s| match s {
            "accept-new" => Ok(HostKeyPolicy::AcceptNew),
            "strict" => Ok(HostKeyPolicy::Strict),
            _ => Err(format!(
                "{s:?} is not a host key policy (expected \"accept-new\" or \"strict\")"
            )),
        })?,
        None => HostKeyPolicy::AcceptNew,
    };
    let connect_timeout = duration(
        inherit!(connect_timeout),
        &format!("{at}connect_timeout"),
        10,
        c,
    )?;
    let refresh_after = match inherit!(refresh_after) {
        Some(t) if t.get_ref() == "off" => None,
        t => Some(duration(t, &format!("{at}refresh_after"), 3600, c)?),
    };
    let cipher = match inherit!(cipher) {
        Some(t) => Some(c.parse(t, &format!("{at}cipher"), parse_cipher)?),
        None => None,
    };
    let kex = match inherit!(kex) {
        Some(t) => c.parse(t, &format!("{at}kex"), parse_kex)?,
        // OpenSSH's own order, post-quantum key exchange first: the stream carries
        // every user's mail and the relay's private keys, and recorded traffic must
        // stay safe. A faster kex is the operator's choice, not cmfleet's.
        None => None,
    };
    let disable_old = match inherit!(disable_old) {
        Some(t) => c.parse(t, &format!("{at}disable_old"), parse_disable_old)?,
        None => DisableOld::Cmdeploy,
    };
    // Nested tables merge key by key, so a group can set only `dns.server`.
    let dns = merge_dns([
        r.dns.as_ref(),
        group.and_then(|g| g.dns.as_ref()),
        d.dns.as_ref(),
    ]);
    let retry = merge_retry([
        r.retry.as_ref(),
        group.and_then(|g| g.retry.as_ref()),
        d.retry.as_ref(),
    ]);
    let hooks = merge_hooks([
        r.hooks.as_ref(),
        group.and_then(|g| g.hooks.as_ref()),
        d.hooks.as_ref(),
    ]);
    let dns = dns_config(&dns, &format!("{at}dns"), c);
    let retry = retry_policy(&retry, &format!("{at}retry"), c);
    Some(RelaySettings {
        transfer,
        connect_timeout,
        refresh_after,
        host_key_policy,
        cipher,
        kex,
        disable_old,
        skip_dns_check: inherit!(skip_dns_check).is_some_and(|b| *b.get_ref()),
        dns: dns?,
        retry: retry?,
        hooks: Hooks {
            pre_cutover: hooks.pre_cutover.map(|h| h.into_inner()),
            post_cutover: hooks.post_cutover.map(|h| h.into_inner()),
        },
    })
}

/// `[fleet] cmdeploy_env`: environment names as a shell takes them; the variables
/// cmfleet sets itself for every run are refused (it would overwrite them).
fn cmdeploy_env(env: Option<&BTreeMap<String, Text>>, c: &mut Checker) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in env.into_iter().flatten() {
        let field = format!("fleet.cmdeploy_env.{name}");
        let valid = name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid {
            c.problem(
                value,
                &field,
                format!("{name:?} is not an environment variable name"),
            );
        } else if ["CMDEPLOY_STAGES", "HOME", "PYTHONPATH"].contains(&name.as_str()) {
            c.problem(
                value,
                &field,
                format!("{name} is set by cmfleet for every cmdeploy run (HOME: use fleet.cmdeploy_home)"),
            );
        } else {
            out.insert(name.clone(), value.get_ref().clone());
        }
    }
    out
}

/// First `Some` of a field across the layers, most specific first.
macro_rules! merge_layers {
    ($name:ident, $ty:ident { $($field:ident),* }) => {
        fn $name(layers: [Option<&$ty>; 3]) -> $ty {
            $ty {
                $($field: layers.iter().flatten().find_map(|l| l.$field.clone()),)*
            }
        }
    };
}
merge_layers!(
    merge_dns,
    RawDns {
        provider,
        server,
        zone,
        tsig_key_file,
        command,
        ttl,
        propagation_timeout,
        nameservers
    }
);
merge_layers!(
    merge_retry,
    RawRetry {
        attempts,
        backoff,
        max_backoff
    }
);
merge_layers!(
    merge_hooks,
    RawHooks {
        pre_cutover,
        post_cutover
    }
);

fn dns_config(d: &RawDns, at: &str, c: &mut Checker) -> Option<DnsConfig> {
    let provider = match &d.provider {
        Some(p) => c.parse(p, &format!("{at}.provider"), |s| match s {
            "rfc2136" => Ok(DnsProviderKind::Rfc2136),
            "command" => Ok(DnsProviderKind::Command),
            "manual" => Ok(DnsProviderKind::Manual),
            "none" => Ok(DnsProviderKind::None),
            _ => Err(format!(
                "{s:?} is not a DNS provider (expected \"rfc2136\", \"command\", \"manual\" or \"none\")"
            )),
        })?,
        None => DnsProviderKind::Manual,
    };
    let server = d
        .server
        .as_ref()
        .map(|s| c.parse(s, &format!("{at}.server"), parse_socket_addr));
    let mut nameservers = BTreeMap::new();
    let mut ok = true;
    for (name, addr) in d.nameservers.iter().flatten() {
        match c.parse(addr, &format!("{at}.nameservers.{name}"), parse_socket_addr) {
            Some(a) => {
                nameservers.insert(name.trim_end_matches('.').to_string(), a);
            }
            None => ok = false,
        }
    }
    let propagation_timeout = duration(
        d.propagation_timeout.as_ref(),
        &format!("{at}.propagation_timeout"),
        600,
        c,
    );
    let config = DnsConfig {
        provider,
        server: server.flatten(),
        zone: d
            .zone
            .as_ref()
            .map(|z| z.get_ref().trim_end_matches('.').to_string()),
        tsig_key_file: d.tsig_key_file.as_ref().map(|k| c.path(k.get_ref())),
        command: d.command.as_ref().map(|k| c.path(k.get_ref())),
        ttl: d.ttl.as_ref().map_or(300, |t| *t.get_ref()),
        propagation_timeout: propagation_timeout.unwrap_or_default(),
        nameservers,
    };
    let complete = require_for_provider(&config, d, at, c);
    let parsed = ok && propagation_timeout.is_some() && server.is_none_or(|s| s.is_some());
    (complete.is_some() && parsed).then_some(config)
}

/// Each provider needs some keys; say which one is missing, at the provider key.
fn require_for_provider(cfg: &DnsConfig, d: &RawDns, at: &str, c: &mut Checker) -> Option<()> {
    let missing: &[(&str, bool)] = match cfg.provider {
        DnsProviderKind::Rfc2136 => &[
            ("server", cfg.server.is_some()),
            ("tsig_key_file", cfg.tsig_key_file.is_some()),
        ],
        DnsProviderKind::Command => &[("command", cfg.command.is_some())],
        _ => &[],
    };
    let mut ok = true;
    for (key, present) in missing {
        if !present {
            let msg = format!(
                "the {:?} DNS provider needs `{key}`",
                provider_name(cfg.provider)
            );
            match &d.provider {
                Some(p) => c.problem(p, &format!("{at}.{key}"), msg),
                None => c.problem_at(0, &format!("{at}.{key}"), msg),
            }
            ok = false;
        }
    }
    ok.then_some(())
}

fn provider_name(p: DnsProviderKind) -> &'static str {
    match p {
        DnsProviderKind::Rfc2136 => "rfc2136",
        DnsProviderKind::Command => "command",
        DnsProviderKind::Manual => "manual",
        DnsProviderKind::None => "none",
    }
}

fn retry_policy(r: &RawRetry, at: &str, c: &mut Checker) -> Option<RetryPolicy> {
    let attempts = match &r.attempts {
        Some(a) if *a.get_ref() == 0 => {
            c.problem(
                a,
                &format!("{at}.attempts"),
                "must be at least 1 (1 = no retry)",
            );
            return None;
        }
        Some(a) => *a.get_ref(),
        None => 3,
    };
    Some(RetryPolicy {
        attempts,
        backoff: duration(r.backoff.as_ref(), &format!("{at}.backoff"), 2, c)?,
        max_backoff: duration(r.max_backoff.as_ref(), &format!("{at}.max_backoff"), 60, c)?,
    })
}

fn duration(t: Option<&Text>, field: &str, default_secs: u64, c: &mut Checker) -> Option<Duration> {
    match t {
        Some(t) => c.parse(t, field, |s| {
            humantime::parse_duration(s)
                .map_err(|e| format!("{s:?} is not a duration like \"10s\" or \"5m\" ({e})"))
        }),
        None => Some(Duration::from_secs(default_secs)),
    }
}

/// Rejects duplicate mail domains (hosts in two roles: `roles`).
fn check_unique(relays: &[RawRelay], c: &mut Checker) {
    let mut domains: HashMap<String, usize> = HashMap::new();
    for (i, r) in relays.iter().enumerate() {
        let d = r
            .mail_domain
            .get_ref()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some(first) = domains.insert(d.clone(), i) {
            c.problem(
                &r.mail_domain,
                &format!("relay[{i}].mail_domain"),
                format!("{d:?} is already the mail_domain of relay[{first}]"),
            );
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

pub(crate) fn parse_mail_domain(s: &str) -> Result<MailDomain, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(MailDomain::Ip(ip));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    // chatmail's own convention: a mail_domain that starts with `_` gets a
    // self-signed certificate instead of ACME (chatmaild's config.py).
    let host = name.strip_prefix('_').unwrap_or(name);
    if is_dns_name(host) && !host.starts_with('.') {
        Ok(MailDomain::Name(name.to_ascii_lowercase()))
    } else {
        Err(format!(
            "{s:?} is not a valid domain name (letters, digits and hyphens in dot-separated labels of at most 63 characters; a leading `_` for chatmail's self-signed relays) nor an IP address"
        ))
    }
}

/// A hostname as DNS allows for a mail server: LDH labels, at least two of them.
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|ch| ch.is_ascii_digit()))
}

/// An ssh address is an IP or a hostname; anything else (spaces, a leading `-`
/// that ssh would read as an option) is refused here, before it reaches a shell.
fn parse_ssh_address(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() || (is_dns_name(s) || is_single_label(s)) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an IP address or host name"))
    }
}

fn is_single_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
}

fn parse_user(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a valid user name"))
    }
}

/// An ssh cipher list (`ssh -c`), e.g. "aes128-gcm@openssh.com,aes128-ctr". It reaches
/// OLD's shell inside rsync's `-e` (which splits on spaces and quotes): only cipher
/// name characters, and no leading `-` that ssh could read as an option.
fn parse_cipher(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars().all(|ch| {
            ch.is_ascii_alphanumeric() || matches!(ch, '@' | '.' | ',' | '+' | '-' | '_')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an ssh cipher list (names like \"aes128-gcm@openssh.com\", comma-separated)"
        ))
    }
}

/// `kex`: "openssh" keeps OpenSSH's own order (`None`), anything else is a
/// KexAlgorithms list (a leading `^`, `+` or `-` edits OpenSSH's default list).
/// It reaches OLD's shell like the cipher does, so the same characters only.
fn parse_kex(s: &str) -> Result<Option<String>, String> {
    if s == "openssh" {
        return Ok(None);
    }
    let names = s.strip_prefix(['^', '+', '-']).unwrap_or(s);
    match parse_cipher(names) {
        Ok(_) => Ok(Some(s.to_string())),
        Err(_) => Err(format!(
            "{s:?} is not an ssh key exchange list (names like \"curve25519-sha256\", comma-separated, optionally after ^, + or -; or \"openssh\" for OpenSSH's own order)"
        )),
    }
}

fn parse_disable_old(s: &str) -> Result<DisableOld, String> {
    match s {
        "cmdeploy" => Ok(DisableOld::Cmdeploy),
        "systemctl" => Ok(DisableOld::Systemctl),
        _ => Err(format!(
            "{s:?} is not a way to disable mail on the old host (expected \"cmdeploy\" or \"systemctl\")"
        )),
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address like \"192.0.2.53\" or \"192.0.2.53:5353\""))
}

/// `"20GiB"`, `"500MB"`, `"1048576"`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"20GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
