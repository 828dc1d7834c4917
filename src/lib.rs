//! cmfleet: migrate a fleet of chatmail relays from old machines to new ones.
//!
//! Data flows one way (see `docs/how-it-works.md`):
//! inventory -> plan -> scheduler -> steps -> events -> reporter / journal.

pub mod dns;
pub mod inventory;
pub mod lab;
