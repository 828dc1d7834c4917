//! Fleet-wide bounds on DNS updates: at most N in flight and at most R per second.
//!
//! BIND serves at most 100 updates at once (`update-quota`) and answers the rest
//! with SERVFAIL; a provider's API has its own rate limits. Every caller that
//! changes DNS goes through one shared gate.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default bound on updates in flight: below BIND's update quota (100) and
/// hickory's per-connection multiplexer limit (32), in case a caller uses it.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// A shared in-flight + rate bound. Cloning shares the bounds.
#[derive(Clone)]
pub struct DnsGate {
    /// One permit per update in flight.
    in_flight: Arc<Semaphore>,
    /// Updates started per second, fleet-wide.
    rate: Arc<DefaultDirectRateLimiter>,
    /// The in-flight bound, to report usage.
    max_in_flight: usize,
}

/// Held while one update is in flight; dropping it frees the slot.
pub struct GatePermit {
    _permit: OwnedSemaphorePermit,
}

impl DnsGate {
    /// At most `max_in_flight` (at least 1) updates at once, `per_sec` starts per
    /// second, with bursts up to `per_sec`.
    pub fn new(max_in_flight: usize, per_sec: NonZeroU32) -> Self {
        let max_in_flight = max_in_flight.max(1);
        DnsGate {
            max_in_flight,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            rate: Arc::new(RateLimiter::direct(Quota::per_second(per_sec))),
        }
    }

    /// The default in-flight bound with the given rate (the inventory's
    /// `dns_updates_per_sec`).
    pub fn with_rate(per_sec: NonZeroU32) -> Self {
        Self::new(DEFAULT_MAX_IN_FLIGHT, per_sec)
    }

    /// Wait for a free slot, then for the rate limiter.
    pub async fn acquire(&self) -> GatePermit {
        // The semaphore is never closed, so acquiring cannot fail; if it ever
        // were, running unbounded would be worse than waiting forever, so we wait.
        let permit = loop {
            match self.in_flight.clone().acquire_owned().await {
                Ok(p) => break p,
                Err(_) => std::future::pending::<()>().await,
            }
        };
        self.rate.until_ready().await;
        GatePermit { _permit: permit }
    }

    /// Run `op` inside the gate.
    pub async fn run<F: Future>(&self, op: F) -> F::Output {
        let _permit = self.acquire().await;
        op.await
    }

    /// Updates in flight right now (for progress and tests).
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.in_flight.available_permits())
    }
}

impl std::fmt::Debug for DnsGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsGate")
            .field("available", &self.in_flight.available_permits())
            .finish()
    }
}
