//! 200 relays' updates through the DnsGate against one real BIND: none dropped.

mod common;

use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmfleet::infra::dns::{Addrs, Dns, DnsGate, SwitchOutcome, SwitchRequest};
use common::bind::Bind;

const RELAYS: usize = 200;

fn addrs(site: u8, i: usize) -> Addrs {
    Addrs {
        ip4: Ipv4Addr::new(10, site, (i / 256) as u8, (i % 256) as u8),
        ip6: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_updates_go_through_the_gate_without_a_drop() {
    let records: Vec<String> = (0..RELAYS)
        .map(|i| format!("r{i} 3600 IN A {}", addrs(1, i).ip4))
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let bind = Bind::primary("example.org", &refs);
    let dns = Arc::new(Dns::from_settings(&bind.settings()).expect("settings"));

    const MAX_IN_FLIGHT: usize = 32;
    const PER_SEC: u32 = 400;
    let gate = DnsGate::new(MAX_IN_FLIGHT, NonZeroU32::new(PER_SEC).expect("nonzero"));
    let peak = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..RELAYS)
        .map(|i| {
            let (dns, gate, peak) = (dns.clone(), gate.clone(), peak.clone());
            tokio::spawn(async move {
                let req = SwitchRequest {
                    domain: format!("r{i}.example.org"),
                    old: addrs(1, i),
                    new: addrs(2, i),
                    ttl: 300,
                };
                let _permit = gate.acquire().await;
                peak.fetch_max(gate.in_flight(), Ordering::SeqCst);
                dns.switch(&req).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("relay r{i}: {e}"));
        assert_eq!(outcome, SwitchOutcome::Switched, "relay r{i}");
    }
    let elapsed = started.elapsed();
    assert!(peak.load(Ordering::SeqCst) <= MAX_IN_FLIGHT);
    // Burst of PER_SEC, so 200 fit in the first second; the point is that none failed.
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    for i in [0, 57, 133, RELAYS - 1] {
        assert_eq!(
            bind.dig(&format!("r{i}.example.org"), "A"),
            vec![addrs(2, i).ip4.to_string()]
        );
    }
    assert_eq!(bind.serial(), Some(1 + RELAYS as u32));
}

#[tokio::test]
async fn the_gate_spaces_updates_at_its_rate() {
    // governor keeps its own clock, so this runs in real time.
    let gate = DnsGate::new(32, NonZeroU32::new(20).expect("nonzero"));
    let start = Instant::now();
    for _ in 0..30 {
        gate.run(async {}).await;
    }
    // 20 in the initial burst, then one every 50ms: 10 more take ~500ms.
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn the_gate_bounds_updates_in_flight() {
    let gate = DnsGate::new(3, NonZeroU32::new(1000).expect("nonzero"));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (gate, peak) = (gate.clone(), peak.clone());
            tokio::spawn(async move {
                gate.run(async {
                    peak.fetch_max(gate.in_flight(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}
