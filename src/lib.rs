//! cmfleet: migrate a fleet of chatmail relays from old machines to new ones.
//!
//! Data flows one way (see `docs/how-it-works.md`): inventory -> plan -> scheduler ->
//! steps -> events -> journal and reporter. The modules are layers, each importing
//! only those below it: `commands` and `pipeline` on top, then `host` (what runs on
//! a relay's hosts), `model` (the basic types) and `infra`.

pub mod cli;
pub mod commands;
pub mod host;
pub mod infra;
pub mod lab;
pub mod model;
pub mod pipeline;
