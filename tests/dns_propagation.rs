//! The propagation wait against a real primary + secondary (NOTIFY, IXFR).

mod common;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmfleet::infra::dns::{
    Addrs, Dns, DnsError, DnsSettings, ProviderKind, SwitchOutcome, SwitchRequest,
};
use common::bind::Bind;

const ZONE: &str = "example.org";
const DOMAIN: &str = "c1.example.org";

fn addrs(last: u8) -> Addrs {
    Addrs {
        ip4: Ipv4Addr::new(198, 51, 100, last),
        ip6: None,
    }
}

#[tokio::test]
async fn switch_then_wait_sees_primary_and_secondary() {
    let (primary, secondary) = Bind::pair(ZONE, &["c1 3600 IN A 198.51.100.1"]);
    let settings = DnsSettings {
        nameservers: Bind::nameservers(&primary, Some(&secondary)),
        ..primary.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");

    let servers = dns.nameservers(DOMAIN).await.expect("nameservers");
    assert_eq!(servers.len(), 2, "{servers:?}");

    let req = SwitchRequest {
        domain: DOMAIN.into(),
        old: addrs(1),
        new: addrs(2),
        ttl: 300,
    };
    assert_eq!(
        dns.switch(&req).await.expect("switch"),
        SwitchOutcome::Switched
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let done = dns
        .wait_propagated(
            DOMAIN,
            &addrs(2),
            Duration::from_secs(20),
            move |ok, total| log.lock().expect("lock").push((ok, total)),
        )
        .await
        .expect("propagated");
    assert_eq!(done.servers.len(), 2);
    assert_eq!(done.serial, primary.serial());
    assert_eq!(secondary.dig(DOMAIN, "A"), vec!["198.51.100.2"]);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&(2, 2)), "{seen:?}");
    assert!(seen.iter().all(|(_, total)| *total == 2), "{seen:?}");
}

#[tokio::test]
async fn a_lagging_secondary_times_out_naming_it() {
    let (primary, mut secondary) = Bind::pair(ZONE, &["c1 3600 IN A 198.51.100.1"]);
    let settings = DnsSettings {
        nameservers: Bind::nameservers(&primary, Some(&secondary)),
        ..primary.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");
    // The secondary is gone: it can never catch up.
    secondary.kill();
    let req = SwitchRequest {
        domain: DOMAIN.into(),
        old: addrs(1),
        new: addrs(2),
        ttl: 300,
    };
    dns.switch(&req).await.expect("switch");

    let mut progress = Vec::new();
    let err = dns
        .wait_propagated(DOMAIN, &addrs(2), Duration::from_secs(2), |ok, total| {
            progress.push((ok, total))
        })
        .await
        .expect_err("must time out");
    assert!(
        matches!(err, DnsError::PropagationTimeout { .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("1 of 2 nameservers lag"), "{msg}");
    assert!(
        msg.contains(&format!("ns2.example.org ({})", secondary.addr)),
        "{msg}"
    );
    assert!(!msg.contains("ns1.example.org"), "{msg}");
    assert_eq!(progress, vec![(1, 2)]);
}

#[tokio::test]
async fn manual_provider_prints_the_lines_then_waits_for_the_operator() {
    let (primary, secondary) = Bind::pair(
        ZONE,
        &["c1 3600 IN A 198.51.100.1", "c1 3600 IN AAAA 2001:db8::1"],
    );
    let settings = DnsSettings {
        provider: ProviderKind::Manual,
        tsig_key_file: None,
        nameservers: Bind::nameservers(&primary, Some(&secondary)),
        ..primary.settings()
    };
    let dns = Dns::from_settings(&settings).expect("settings");
    let old = Addrs {
        ip6: Some("2001:db8::1".parse().expect("ip6")),
        ..addrs(1)
    };
    let req = SwitchRequest {
        domain: DOMAIN.into(),
        old,
        new: addrs(2),
        ttl: 300,
    };
    let outcome = dns.switch(&req).await.expect("switch");
    assert_eq!(
        outcome,
        SwitchOutcome::Manual {
            set: vec!["c1.example.org. 300 IN A 198.51.100.2".into()],
            remove: vec!["c1.example.org. IN AAAA 2001:db8::1".into()],
        }
    );

    // The "operator" applies the change a moment later, while we wait.
    let operator = {
        let addr = primary.addr;
        let key = primary.key_file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let script = format!(
                "server {} {}\nzone example.org\nupdate delete c1.example.org. A\nupdate delete c1.example.org. AAAA\nupdate add c1.example.org. 300 A 198.51.100.2\nsend\n",
                addr.ip(),
                addr.port()
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("u.txt");
            std::fs::write(&file, script).expect("script");
            let st = std::process::Command::new("nsupdate")
                .arg("-k")
                .arg(key)
                .arg(file)
                .status()
                .expect("nsupdate");
            assert!(st.success());
        })
    };
    let done = dns
        .wait_propagated(DOMAIN, &addrs(2), Duration::from_secs(20), |_, _| {})
        .await
        .expect("propagated");
    operator.join().expect("operator thread");
    assert_eq!(done.servers.len(), 2);
    assert!(secondary.dig(DOMAIN, "AAAA").is_empty());
}
