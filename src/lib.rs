//! cmfleet: migrate a fleet of chatmail relays from old machines to new ones.
//!
//! Data flows one way (see `docs/how-it-works.md`):
//! inventory -> plan -> scheduler -> steps -> events -> reporter / journal.

pub mod atomic;
pub mod catalogue;
pub mod check;
pub mod cli;
pub mod dns;
pub mod events;
pub mod exit;
pub mod inventory;
pub mod journal;
pub mod lab;
pub mod migrate;
pub mod plan;
pub mod proof;
pub mod redact;
pub mod remote;
pub mod report;
pub mod rollback;
pub mod run;
pub mod scheduler;
pub mod shell;
pub mod state_dir;
pub mod step;
pub mod steps;
pub mod ttl;
pub mod verify;
