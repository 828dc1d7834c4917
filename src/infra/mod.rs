//! Infrastructure, below everything: DNS (RFC 2136, propagation), shell quoting,
//! masking secrets, whole-file writes, the state directory's paths. Imports nothing
//! else of cmfleet.

pub mod atomic;
pub mod dns;
pub mod redact;
pub mod shell;
pub mod state_dir;
