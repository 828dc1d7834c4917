//! Step 5 with the rfc2136 provider against a real BIND.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use cmfleet::infra::dns::{
    Addrs, Dns, DnsAction, DnsError, DnsSettings, SwitchOutcome, SwitchRequest, TsigKey,
};
use common::bind::{self, Bind};

const ZONE: &str = "example.org";
const DOMAIN: &str = "c1.example.org";

fn old() -> Addrs {
    Addrs {
        ip4: Ipv4Addr::new(203, 0, 113, 10),
        ip6: Some("2001:db8::a".parse::<Ipv6Addr>().expect("ipv6")),
    }
}

fn new() -> Addrs {
    Addrs {
        ip4: Ipv4Addr::new(198, 51, 100, 10),
        ip6: Some("2001:db8::10".parse::<Ipv6Addr>().expect("ipv6")),
    }
}

fn request(old: Addrs, new: Addrs) -> SwitchRequest {
    SwitchRequest {
        domain: DOMAIN.to_string(),
        old,
        new,
        ttl: 300,
    }
}

fn old_records() -> [&'static str; 2] {
    ["c1 3600 IN A 203.0.113.10", "c1 3600 IN AAAA 2001:db8::a"]
}

#[tokio::test]
async fn switch_replaces_a_and_aaaa_in_one_update_and_is_idempotent() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    let serial_before = bind.serial().expect("serial");

    let outcome = dns.switch(&request(old(), new())).await.expect("switch");
    assert_eq!(outcome, SwitchOutcome::Switched);
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["198.51.100.10"]);
    assert_eq!(bind.dig(DOMAIN, "AAAA"), vec!["2001:db8::10"]);
    assert_eq!(bind.records(DOMAIN, "A")[0].0, 300);
    // One message = one serial increment: A and AAAA changed together.
    assert_eq!(bind.serial(), Some(serial_before + 1));

    // A re-run (e.g. after a lost answer) is a no-op success.
    let again = dns.switch(&request(old(), new())).await.expect("re-run");
    assert_eq!(again, SwitchOutcome::AlreadySwitched);
    assert_eq!(bind.serial(), Some(serial_before + 1));
}

#[tokio::test]
async fn switch_adds_aaaa_when_the_old_site_had_none() {
    let bind = Bind::primary(ZONE, &["c1 3600 IN A 203.0.113.10"]);
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    let old = Addrs { ip6: None, ..old() };
    let outcome = dns.switch(&request(old, new())).await.expect("switch");
    assert_eq!(outcome, SwitchOutcome::Switched);
    assert_eq!(bind.dig(DOMAIN, "AAAA"), vec!["2001:db8::10"]);
}

#[tokio::test]
async fn switch_removes_aaaa_when_the_new_site_has_none() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    let new = Addrs { ip6: None, ..new() };
    dns.switch(&request(old(), new)).await.expect("switch");
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["198.51.100.10"]);
    assert!(bind.dig(DOMAIN, "AAAA").is_empty());
}

#[tokio::test]
async fn records_changed_behind_our_back_are_reported_and_never_overwritten() {
    let bind = Bind::primary(ZONE, &old_records());
    bind.nsupdate(&[
        "update delete c1.example.org. A",
        "update add c1.example.org. 600 A 192.0.2.99",
    ]);
    let dns = Dns::from_settings(&bind.settings()).expect("settings");

    let err = dns
        .switch(&request(old(), new()))
        .await
        .expect_err("must refuse");
    assert!(matches!(err, DnsError::UnexpectedRecords { .. }), "{err:?}");
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(
        msg.contains(DOMAIN) && msg.contains(&bind.addr.to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("192.0.2.99") && msg.contains("203.0.113.10"),
        "{msg}"
    );
    assert!(msg.contains("nothing was overwritten"), "{msg}");
    // Nothing changed: the foreign A and the old AAAA are still there.
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["192.0.2.99"]);
    assert_eq!(bind.dig(DOMAIN, "AAAA"), vec!["2001:db8::a"]);
}

#[tokio::test]
async fn an_unexpected_aaaa_fails_the_no_aaaa_prerequisite() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    // The inventory says the old site has no IPv6, but DNS has an AAAA.
    let old = Addrs { ip6: None, ..old() };
    let err = dns
        .switch(&request(old, new()))
        .await
        .expect_err("must refuse");
    assert!(matches!(err, DnsError::UnexpectedRecords { .. }), "{err}");
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["203.0.113.10"]);
}

#[tokio::test]
async fn wrong_secret_is_reported_as_badsig_without_the_secret() {
    let bind = Bind::primary(ZONE, &old_records());
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = bind::wrong_secret_key(dir.path());
    let settings = DnsSettings {
        tsig_key_file: Some(key_file.clone()),
        ..bind.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");

    let err = dns
        .switch(&request(old(), new()))
        .await
        .expect_err("bad key");
    assert!(matches!(err, DnsError::Auth { .. }), "{err:?}");
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("BADSIG"), "{msg}");
    assert!(
        msg.contains(DOMAIN) && msg.contains(&bind.addr.to_string()),
        "{msg}"
    );
    assert_no_secret(&key_file, &[msg, format!("{err:?}"), format!("{dns:?}")]);
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["203.0.113.10"]);
}

#[tokio::test]
async fn unknown_key_is_reported_as_badkey() {
    let bind = Bind::primary(ZONE, &old_records());
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = bind::unknown_key(dir.path());
    let settings = DnsSettings {
        tsig_key_file: Some(key_file.clone()),
        ..bind.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");

    let err = dns
        .switch(&request(old(), new()))
        .await
        .expect_err("bad key");
    let msg = err.to_string();
    assert!(
        msg.contains("BADKEY") && msg.contains("nobody-knows-me"),
        "{msg}"
    );
    assert_no_secret(&key_file, &[msg, format!("{err:?}")]);
}

#[tokio::test]
async fn the_right_key_never_shows_its_secret() {
    let bind = Bind::primary(ZONE, &old_records());
    let key = TsigKey::from_bind_file(&bind.key_file).expect("key");
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    assert_no_secret(
        &bind.key_file,
        &[format!("{key:?}"), format!("{key}"), format!("{dns:?}")],
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // A port nobody listens on: bind it, learn it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let bind = Bind::primary(ZONE, &old_records());
    let settings = DnsSettings {
        server: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        ..bind.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");
    let err = dns
        .switch(&request(old(), new()))
        .await
        .expect_err("refused");
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_transiently() {
    // The kernel accepts the connection into the backlog; nobody ever reads it.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let bind = Bind::primary(ZONE, &old_records());
    let key = TsigKey::from_bind_file(&bind.key_file).expect("key");
    let provider = cmfleet::infra::dns::Rfc2136::new(addr, Some(ZONE), key)
        .expect("provider")
        .with_timeout(Duration::from_millis(300));
    let err = provider
        .switch(DOMAIN, &old(), &new(), 300)
        .await
        .expect_err("timeout");
    assert!(matches!(err, DnsError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn lower_ttl_then_restore_ttl_round_trip() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");

    let recorded = dns.current_ttl(DOMAIN).await.expect("ttl");
    assert_eq!(recorded, Some(3600));
    let out = dns
        .set_ttl(DOMAIN, &old(), 60, DnsAction::LowerTtl)
        .await
        .expect("lower");
    assert_eq!(out, SwitchOutcome::Switched);
    assert_eq!(dns.current_ttl(DOMAIN).await.expect("ttl"), Some(60));
    assert!(bind
        .records(DOMAIN, "AAAA")
        .iter()
        .all(|(ttl, _)| *ttl == 60));
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["203.0.113.10"]);

    let restore = recorded.expect("had a ttl");
    dns.set_ttl(DOMAIN, &old(), restore, DnsAction::RestoreTtl)
        .await
        .expect("restore");
    assert_eq!(dns.current_ttl(DOMAIN).await.expect("ttl"), Some(3600));
    assert_eq!(bind.dig(DOMAIN, "AAAA"), vec!["2001:db8::a"]);
}

#[tokio::test]
async fn set_ttl_refuses_when_the_records_are_not_the_expected_ones() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    let err = dns
        .set_ttl(DOMAIN, &new(), 60, DnsAction::LowerTtl)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, DnsError::UnexpectedRecords { .. }), "{err}");
    assert_eq!(
        bind.records(DOMAIN, "A"),
        vec![(3600, "203.0.113.10".to_string())]
    );
}

#[tokio::test]
async fn rollback_points_back_at_the_old_site() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    dns.switch(&request(old(), new())).await.expect("switch");
    let out = dns
        .rollback(&request(old(), new()))
        .await
        .expect("rollback");
    assert_eq!(out, SwitchOutcome::Switched);
    assert_eq!(bind.dig(DOMAIN, "A"), vec!["203.0.113.10"]);
    assert_eq!(bind.dig(DOMAIN, "AAAA"), vec!["2001:db8::a"]);
}

#[tokio::test]
async fn an_ip_mail_domain_has_no_dns_step() {
    let bind = Bind::primary(ZONE, &old_records());
    let dns = Dns::from_settings(&bind.settings()).expect("settings");
    let req = SwitchRequest {
        domain: "203.0.113.10".into(),
        ..request(old(), new())
    };
    match dns.switch(&req).await.expect("switch") {
        SwitchOutcome::NotApplicable { reason } => {
            assert!(reason.contains("address itself must move"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

fn assert_no_secret(key_file: &std::path::Path, texts: &[String]) {
    let key_text = std::fs::read_to_string(key_file).expect("key file");
    let secret = key_text
        .split('"')
        .nth(3)
        .expect("tsig-keygen format: key \"name\" { ... secret \"...\" }");
    assert!(secret.len() > 20);
    for t in texts {
        assert!(!t.contains(secret), "secret leaked: {t}");
        assert!(!t.contains(&secret[..16]), "secret prefix leaked: {t}");
    }
}

#[tokio::test]
async fn a_zone_the_server_does_not_serve_is_notauth_in_words() {
    let bind = Bind::primary(ZONE, &old_records());
    let settings = DnsSettings {
        zone: Some("nope.org".into()),
        ..bind.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");
    let req = SwitchRequest {
        domain: "c1.nope.org".into(),
        ..request(old(), new())
    };
    let err = dns.switch(&req).await.expect_err("not our zone");
    let msg = err.to_string();
    assert!(msg.contains("NOTAUTH") && msg.contains("nope.org"), "{msg}");
    assert!(!err.is_transient());
}
