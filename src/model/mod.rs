//! The basic types every layer speaks: the six steps and how a step fails, exit
//! codes, the checked inventory, the events executors send, and which cmfleet this is.

pub mod events;
pub mod exit;
pub mod inventory;
pub mod step;
pub mod version;
