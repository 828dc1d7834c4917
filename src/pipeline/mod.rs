//! The migration itself, in the order data flows: `plan` -> `scheduler` -> `steps`
//! -> events -> `journal` and `report`; `migrate` is the loop that records before it
//! shows, `run` the command's whole run, `ttl` the TTL hold before a cutover.

pub mod journal;
pub mod migrate;
pub mod plan;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod steps;
pub mod ttl;
