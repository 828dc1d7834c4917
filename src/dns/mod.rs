//! DNS: step 5 (switch A/AAAA), propagation wait, TTL management.
