//! The `command` provider with a small script.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmfleet::infra::dns::{
    Addrs, Dns, DnsAction, DnsError, DnsSettings, ProviderKind, SwitchOutcome, SwitchRequest,
};

fn script(dir: &Path, body: &str) -> PathBuf {
    // A space in the path: the program is never split into words or given to a shell.
    let dir = dir.join("dns hooks");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("dns-update");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn dns(command: PathBuf) -> Dns {
    Dns::from_settings(&DnsSettings {
        provider: ProviderKind::Command,
        command: Some(command),
        propagation_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .expect("settings")
}

fn request() -> SwitchRequest {
    SwitchRequest {
        domain: "c1.example.org".into(),
        old: Addrs {
            ip4: Ipv4Addr::new(203, 0, 113, 10),
            ip6: None,
        },
        new: Addrs {
            ip4: Ipv4Addr::new(198, 51, 100, 10),
            ip6: Some("2001:db8::10".parse().expect("ip6")),
        },
        ttl: 300,
    }
}

#[tokio::test]
async fn the_program_gets_the_relay_facts_in_its_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("facts");
    let cmd = script(
        dir.path(),
        &format!(
            "echo \"$CMFLEET_ACTION $CMFLEET_DOMAIN old=$CMFLEET_OLD_IP4/$CMFLEET_OLD_IP6 new=$CMFLEET_NEW_IP4/$CMFLEET_NEW_IP6 ttl=$CMFLEET_TTL\" >> '{}'",
            out.display()
        ),
    );
    let dns = dns(cmd);
    assert_eq!(
        dns.switch(&request()).await.expect("switch"),
        SwitchOutcome::Switched
    );
    let old = request().old;
    dns.set_ttl("c1.example.org", &old, 60, DnsAction::LowerTtl)
        .await
        .expect("lower");
    dns.rollback(&request()).await.expect("rollback");
    let facts = std::fs::read_to_string(&out).expect("facts");
    assert_eq!(
        facts.lines().collect::<Vec<_>>(),
        vec![
            "switch c1.example.org old=203.0.113.10/ new=198.51.100.10/2001:db8::10 ttl=300",
            "lower-ttl c1.example.org old=203.0.113.10/ new=203.0.113.10/ ttl=60",
            "rollback c1.example.org old=203.0.113.10/ new=198.51.100.10/2001:db8::10 ttl=300",
        ]
    );
}

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_stderr_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(
        dir.path(),
        "echo 'progress...'; echo 'api said: 403 forbidden' >&2; exit 3",
    );
    let err = dns(cmd).switch(&request()).await.expect_err("fails");
    let msg = err.to_string();
    assert!(
        msg.contains("exit code 3")
            && msg.contains("403 forbidden")
            && msg.contains("c1.example.org"),
        "{msg}"
    );
    assert!(!msg.contains("progress"), "{msg}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn exit_75_asks_for_a_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(dir.path(), "echo 'rate limited' >&2; exit 75");
    let err = dns(cmd).switch(&request()).await.expect_err("fails");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn a_missing_program_is_a_clear_permanent_error() {
    let err = dns(PathBuf::from("/nonexistent/dns-update"))
        .switch(&request())
        .await
        .expect_err("fails");
    assert!(matches!(err, DnsError::CommandSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/dns-update"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_hanging_program_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = script(dir.path(), "exec sleep 30");
    let dns = Dns::from_settings(&DnsSettings {
        provider: ProviderKind::Command,
        command: Some(cmd),
        propagation_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .expect("settings");
    let started = std::time::Instant::now();
    let err = dns.switch(&request()).await.expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.is_transient() && err.to_string().contains("killed after"),
        "{err}"
    );
}
